"""Pack a trained workdir as a pretrained model shipped in tf_score/pretrained/NAME/, and
measure what the packed (float16) weights give, into its provenance.

    python benchmarks/make_pretrained.py --workdir=runs/mnist_cond --name=mnist_edm_cond \\
        --train_command="python run_train.py --flagfile=... --workdir=..." --commit=1078c5a \\
        --classifier=runs/mnist_classifier --data_dir=DIR --guidance=1

For an image model: FID at n = --num_samples (class-balanced and guided with --guidance for
a class-conditional model) against the real-vs-real floor at the same n, with the project's
digit classifier, and the share of samples the classifier reads as the asked digit. For a
2-D toy: the solver comparison of ``run_sample.py --evaluate`` (mode weights and widths
against exact samples). The measured values and the command that measures them again go
into provenance.json.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

WORKDIR = flags.DEFINE_string("workdir", None, "The trained run (not with --measure_only).")
NAME = flags.DEFINE_string("name", None, "Name of the pretrained model.", required=True)
COMMAND = flags.DEFINE_string("train_command", None, "The command that trained it.")
COMMIT = flags.DEFINE_string("commit", None, "The commit that trained it.")
CLASSIFIER = flags.DEFINE_string("classifier", None, "Digit classifier for FID (images).")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (images).")
NUM = flags.DEFINE_integer("num_samples", 2000, "FID's n.")
BATCH = flags.DEFINE_integer("sample_batch_size", 500, "Chains run at once.")
SAMPLER = flags.DEFINE_string("sampler", "dpmpp_2s_ancestral", "Solver of the FID samples.")
LEVELS = flags.DEFINE_integer("num_levels", 10, "Levels of the karras grid sampled on.")
GUIDANCE = flags.DEFINE_float("guidance", 1.0, "Guidance weight (conditional models).")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
SKIP_PACK = flags.DEFINE_boolean("measure_only", False, "Measure the packed model again.")


def _image_quality(run) -> dict:
    from tf_score import api
    from tf_score.families import evaluate, score_model

    ref = evaluate.quality_reference(run, NUM.value, classifier=CLASSIFIER.value)
    given, labels = {}, None
    if run.config.data.num_classes and score_model.conditional(run.config):
        classes = run.config.data.num_classes
        labels = score_model.class_labels(classes, NUM.value // classes)
        given = {"labels": labels, "guidance": GUIDANCE.value}
    sigmas = dataclasses.replace(run.config.noise, num_levels=LEVELS.value).sigmas()
    out = api.generate(run, NUM.value, seed=SEED.value, batch_size=BATCH.value,
                       sampler=SAMPLER.value, sigmas=sigmas, **given)  # fmt: skip
    q = evaluate.image_quality(evaluate.to_uint8(out.samples), ref, seed=SEED.value,
                               labels=labels)  # fmt: skip
    measured = {k: float(v) for k, v in q.items() if isinstance(v, (int, float))}
    return {**measured, "num_samples": NUM.value, "sampler": SAMPLER.value,
            "num_levels": LEVELS.value, "guidance": GUIDANCE.value if labels is not None
            else None, "num_evals": int(out.num_evals), "seed": SEED.value,
            "measure_command": shlex.join([
                "python", "benchmarks/make_pretrained.py", f"--name={NAME.value}",
                "--measure_only", "--classifier=CLASSIFIER_WORKDIR", "--data_dir=DIR",
                f"--num_samples={NUM.value}", f"--sampler={SAMPLER.value}",
                f"--num_levels={LEVELS.value}", f"--guidance={GUIDANCE.value}",
                f"--seed={SEED.value}"])}  # fmt: skip


def _toy_quality(run) -> dict:
    """``run_sample.py --evaluate`` with the toy presets' evaluation: 5 seeds of 1,280."""
    import tempfile

    from tf_score import api

    settings = {"num_samples": 1280, "eval_repeats": 5}
    run = dataclasses.replace(run, config=run.config.replace(evaluation=settings))
    with tempfile.TemporaryDirectory() as tmp:
        metrics = api.evaluate(run, tmp, seed=SEED.value)
    command = (f"python run_sample.py --pretrained={NAME.value} --evaluate "
               "--num_samples=1280 --eval_repeats=5")  # fmt: skip
    return {"toy_evaluation": metrics, "measure_command": command}


def main(argv):
    del argv
    from tf_score import api
    from tf_score.families import pretrained

    if not SKIP_PACK.value:
        if not WORKDIR.value:
            raise app.UsageError("--workdir: the run to pack (or --measure_only)")
        run = api.load(WORKDIR.value)
        record = {"name": NAME.value, "train_command": COMMAND.value, "commit": COMMIT.value,
                  "workdir": WORKDIR.value, "checkpoint": run.checkpoint}  # fmt: skip
        path = pretrained.pack(run, NAME.value, record)
        print(f"packed step {run.step} of {WORKDIR.value} into {path}")
    run = api.load_pretrained(NAME.value, DATA_DIR.value)
    measured = _image_quality(run) if run.config.is_image else _toy_quality(run)
    record = pretrained.update_provenance(NAME.value, {"measured": measured})
    print({k: v for k, v in record.items() if k != "measured"})
    print(measured)


if __name__ == "__main__":
    app.run(main)
