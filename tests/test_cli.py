"""Command line: bad flags fail at start naming the flag; a short train + evaluate run works."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags as absl_flags
from absl.testing import flagsaver
from matplotlib import image as plt_image

import tf_score.cli.definitions as F


def _run(repo_root, script, *args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, os.path.join(repo_root, script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=repo_root,
        env=env,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num_steps=-5"], "num_steps must be an integer >= 1 and <= 2147483647, got -5"),
        (
            ["--sigma_max=0.5", "--sigma_min=1"],
            "for a decreasing schedule, got sigma_max=0.5, sigma_min=1.0",
        ),
        (["--dataset=imagenet"], "flag --dataset=imagenet: value should be one of"),
        (["--loss=mle"], "flag --loss=mle: value should be one of"),
        (["--loss=dsm"], "loss=dsm is single-level"),
        (["--ema_rate=1.5"], "ema_rate must be < 1.0"),
        (["--learning_rate=inf"], "learning_rate must be finite"),
        (["--dataset=mnist"], "network=mlp does not fit dataset=mnist"),
        (["--dataset=folder", "--network=resnet"], "dataset=folder needs data_path"),
        (["--network=resnet", "--channel_mults=1,x"], "--channel_mults must be"),
        (
            ["--model=vae", "--dataset=mnist", "--network=refinenet"],
            "model=vae takes network=mlp or conv, not refinenet",
        ),
        (["--strategy=tpu"], "tpu (a Cloud TPU name, grpc://host:port or local) is needed by"),
        (["--devices=/gpu:0"], "devices is for strategy=mirrored"),
        (["--batch_size=100", "--grad_accum_steps=3"], "replica(s) x grad_accum_steps (3)"),
        (["--sampler=heun", "--heun_steps=1"], "heun_steps must be 0 (all levels) or >= 2"),
        (["--export_model_name=../../x"], "is not a TF Serving model name"),
        (["--export_model_name=a/b"], "is not a TF Serving model name"),
        (
            ["--export_max_evaluations=0"],
            "export_max_evaluations must be an integer >= 1 and <= 2147483647, got 0",
        ),
        (["--predictor=euler"], "flag --predictor=euler: value should be one of"),
        (["--anneal_power=nan"], "anneal_power must be finite"),
    ],
)
def test_bad_settings_are_rejected_before_any_work(args, message):
    """Flag-level checks run as the flags are parsed (absl); the run's settings are checked
    by the library when the flags become an ExperimentConfig, before run_*.py does any work
    (in-process here; the CLIs parse the same way, see the next test)."""
    from tf_score.config import ConfigError

    with flagsaver.flagsaver():
        with pytest.raises((absl_flags.IllegalFlagValueError, ConfigError)) as err:
            absl_flags.FLAGS(["run_train.py", "--workdir=/nonexistent", *args])
            F.experiment_config()
        assert message in str(err.value), str(err.value)
    absl_flags.FLAGS.mark_as_parsed()


def test_bad_flags_fail_before_any_work(repo_root, tmp_path):
    workdir = tmp_path / "w"
    proc = _run(repo_root, "run_train.py", f"--workdir={workdir}", "--num_steps=-5", timeout=120)
    assert proc.returncode != 0
    assert "num_steps must be an integer >= 1" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_missing_image_data_fails_before_writing(repo_root, tmp_path):
    workdir = tmp_path / "w"
    proc = _run(
        repo_root,
        "run_train.py",
        f"--workdir={workdir}",
        "--dataset=fashion_mnist",
        "--network=resnet",
        f"--data_dir={tmp_path / 'empty'}",
        "--nodownload",
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not prepared" in proc.stderr and "--data_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_a_download_that_cannot_reach_its_server_fails_at_once(tmp_path, monkeypatch):
    """With downloads allowed but the server unreachable (checked first, not contacted here),
    a missing data set is a message within seconds, not minutes of tfds retries."""
    import time

    from tf_score import data

    monkeypatch.setattr(data.pipelines, "download_host_reachable", lambda timeout=5.0: False)
    t0 = time.time()
    with pytest.raises(data.DataUnavailableError, match="cannot be reached from here"):
        data.load_tfds_images("fashion_mnist", "train", str(tmp_path / "empty"), download=True)
    assert time.time() - t0 < 10


def test_missing_workdir(repo_root):
    proc = _run(repo_root, "run_train.py", timeout=120)
    assert proc.returncode != 0 and "--workdir" in proc.stderr
    proc = _run(repo_root, "run_sample.py", timeout=120)
    assert proc.returncode != 0 and "--workdir is required (or --pretrained=NAME" in proc.stderr


def test_experiment_config_follows_flags_and_round_trips():
    from tf_score.config import ExperimentConfig

    with flagsaver.flagsaver(num_levels=5, sigma_max=3.0, hidden_units=["8", "4"], seed=7):
        cfg = F.experiment_config()
    assert cfg.noise.num_levels == 5 and cfg.noise.sigma_max == 3.0 and cfg.seed == 7
    assert cfg.network.hidden_units == (8, 4) and cfg.network.network == "mlp"
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg
    assert absl_flags.FLAGS.num_levels == 10  # restored
    # run_sample.py keeps the workdir's sampler settings except those on its command line
    with flagsaver.flagsaver():
        absl_flags.FLAGS(["run_sample.py", "--sampler=heun", "--heun_steps=4"])
        assert F.sampler_overrides() == {"sampler": "heun", "heun_steps": 4}
    absl_flags.FLAGS.mark_as_parsed()


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(repo_root, tmp_path):
    workdir = str(tmp_path / "toy")
    common = ["--flagfile=flags/presets/toy_mixture.cfg", f"--workdir={workdir}", "--noprogress"]
    proc = _run(
        repo_root,
        "run_train.py",
        *common,
        "--num_steps=400",
        "--checkpoint_every=200",
        "--sample_every=400",
        "--hidden_units=32,32",
        f"--export_dir={tmp_path / 'export'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained to step 400" in proc.stdout
    # The export at the end of training: EXPORT_DIR/<workdir name>/<step>/, servable.
    version = tmp_path / "export" / "toy" / "400"
    assert (version / "saved_model.pb").exists(), proc.stdout
    # ... and again from the checkpoint, under another name, with run_sample.py.
    proc = _run(
        repo_root,
        "run_sample.py",
        f"--workdir={workdir}",
        f"--export_dir={tmp_path / 'e2'}",
        "--export_model_name=two_mode",
        "--export_max_samples=8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "e2" / "two_mode" / "400"))
    out = loaded.signatures["serving_default"](num_samples=tf.constant(8), seed=tf.constant([0, 1]))
    assert out["samples"].shape == (8, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be <= 8"):
        loaded.signatures["serving_default"](num_samples=tf.constant(9), seed=tf.constant([0, 1]))
    # Resuming with different model settings is refused, naming the setting (the check
    # run_train.py makes before any work).
    from tf_score import api

    run = api.load(workdir)  # a workdir trained by run_train.py, loaded from Python
    with pytest.raises(api.RunError, match=r"hidden_units \(was \(32, 32\), now \(64, 64\)\)"):
        api.check_resume(workdir, run.config.replace(network={"hidden_units": (64, 64)}))
    # One seeding convention: the same seed gives the same samples from the Python API,
    # run_sample.py and the exported serving_default (served seed (s, 0) = batch 0 of s).
    proc = _run(repo_root, "run_sample.py", f"--workdir={workdir}", "--num_samples=8", "--seed=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(os.path.join(workdir, "samples.npz")) as f:
        cli = f["samples"]
    api = api.generate(run, 8, seed=3).samples
    served = loaded.signatures["serving_default"](
        num_samples=tf.constant(8), seed=tf.constant([3, 0])
    )["samples"].numpy()
    np.testing.assert_allclose(api, cli, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(api, served, rtol=1e-5, atol=1e-5)
    proc = _run(
        repo_root,
        "run_sample.py",
        *common,
        "--evaluate",
        "--num_samples=200",
        "--eval_repeats=1",
        "--n_steps_each=10",
        "--langevin_steps=50",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.json")) as f:
        m = json.load(f)
    for key in [
        "plain_langevin_mode_weight",
        "annealed_langevin_mode_weight",
        "exact_annealed_langevin_mode_weight",
        "annealed_langevin_mmd",
        "plain_langevin_mmd",
        "annealed_langevin_two_sample_p",
        "exact_annealed_langevin_two_sample_p",
        "train_seconds",
        "sample_seconds",
    ]:
        assert isinstance(m[key], float), key
    assert m["checkpoint_step"] == 400
    with open(os.path.join(workdir, "samples.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the newcomer's picture of evaluated toys (one row per workdir), and where to look next
    proc = _run(repo_root, "run_sample.py", f"--overview={workdir},{workdir}",
                f"--output_dir={tmp_path / 'overview'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = plt_image.imread(str(tmp_path / "overview" / "overview.png"))
    one_row = plt_image.imread(os.path.join(workdir, "samples.png"))
    assert png.shape[0] > 1.8 * one_row.shape[0]  # two rows of the same four panels
    assert "tensorboard --logdir_spec=" in proc.stdout and "the picture:" in proc.stdout
    proc = _run(repo_root, "run_sample.py", f"--overview={tmp_path}",
                f"--output_dir={tmp_path / 'overview'}")  # fmt: skip
    assert proc.returncode != 0 and "config.json" in proc.stderr, proc.stderr[-2000:]
    proc = _run(
        repo_root,
        "run_sample.py",
        f"--workdir={workdir}",
        "--sampler=langevin",
        "--num_samples=100",
        "--langevin_steps=20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "samples.npz"))


def test_vae_rejects_a_conv_arch_for_28_pixel_images(repo_root, tmp_path):
    from conftest import MNIST_DATA_DIR

    proc = _run(
        repo_root,
        "run_train.py",
        "--flagfile=flags/presets/mnist_vae_ssm.cfg",
        f"--workdir={tmp_path / 'w'}",
        f"--data_dir={MNIST_DATA_DIR}",
        "--nodownload",
        "--network=conv",
    )
    assert proc.returncode == 2
    assert "divisible by 8" in proc.stderr
    assert not os.path.exists(tmp_path / "w")


def test_image_quality_reference_fails_early_caches_and_reports_the_floor(tmp_path):
    """The plumbing of run_sample.py --metrics (``evaluate.quality_reference`` and
    ``image_quality``), with a saved random-weight classifier (the values mean nothing;
    test_metrics checks the metrics): every error before any sampling, the training-set
    features cached, and the result with n, the floor and label histograms."""
    from conftest import MNIST_DATA_DIR

    from tf_score import api, config
    from tf_score.families import classifier, evaluate

    net = classifier.DigitClassifier()
    net.build()
    os.makedirs(tmp_path / "clf")
    net.save(str(tmp_path / "clf" / "classifier.keras"))
    cfg = config.from_flat(
        dict(dataset="mnist", network="resnet", data_dir=MNIST_DATA_DIR, download=False)
    ).replace(data={"data_shape": (28, 28, 1)})
    run = api.Run(str(tmp_path), cfg, {}, 3)
    clf = str(tmp_path / "clf")
    with pytest.raises(evaluate.EvaluationError, match="need a trained classifier"):
        evaluate.quality_reference(run, 50)
    with pytest.raises(evaluate.EvaluationError, match="no classifier at"):
        evaluate.quality_reference(run, 50, classifier=str(tmp_path / "none"))
    wrong = api.Run(str(tmp_path), cfg.replace(data={"data_shape": (32, 32, 3)}), {}, 3)
    with pytest.raises(evaluate.EvaluationError, match="takes images"):
        evaluate.quality_reference(wrong, 50, classifier=clf)
    with pytest.raises(evaluate.EvaluationError, match="more than the 10000 test images"):
        evaluate.quality_reference(run, 10001, classifier=clf)
    ref = evaluate.quality_reference(run, 50, classifier=clf)
    cache = tmp_path / "reference_features_classifier.npz"
    stamp = os.path.getmtime(cache)
    ref = evaluate.quality_reference(run, 50, classifier=clf)  # reused, not recomputed
    assert os.path.getmtime(cache) == stamp
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    q = evaluate.image_quality(images, ref)
    assert q["n"] == 50 and q["n_reference"] == 60000 and q["feature_extractor"] == "classifier"
    assert q["fid"] > q["fid_floor"] > 0 and len(q["label_histogram"]) == 10
    assert sum(q["label_histogram_floor"]) == pytest.approx(1.0)
    assert q["classifier_test_accuracy"] is None  # no classifier.json beside this one


def _tiny_toy_run(workdir):
    """A two-mode NCSN MLP (16, 16) trained 20 steps into ``workdir``."""
    from tf_score import api, config

    cfg = config.ExperimentConfig(
        network=config.NetworkConfig(network="mlp", hidden_units=(16, 16)),
        train=config.TrainConfig(num_steps=20, checkpoint_every=20, log_every=20),
    )
    api.train(cfg, str(workdir), progress=False)
    return workdir


def _make_read_only(path):
    """Read-only for this process: chmod, or as root (who ignores modes) the immutable flag.
    Returns the undo function, or None where neither is possible."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return lambda: os.chmod(path, 0o755)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        return None
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_workdir_is_refused_before_sampling_and_output_dir_works(repo_root, tmp_path):
    """Another user's run: run_sample.py stops before sampling with a message naming
    --output_dir (no traceback, the workdir untouched); with --output_dir it writes there."""
    workdir = _tiny_toy_run(tmp_path / "theirs")
    before = sorted(os.listdir(workdir))
    undo = _make_read_only(workdir)
    if undo is None:
        pytest.skip("cannot make a directory read-only here (no chattr as root)")
    try:
        proc = _run(repo_root, "run_sample.py", f"--workdir={workdir}", "--num_samples=16")
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert f"cannot write to {workdir} (" in proc.stderr, proc.stderr[-2000:]
        assert "pass --output_dir=DIR" in proc.stderr and "Traceback" not in proc.stderr
        assert "samples" not in proc.stdout
        # an export into the read-only place is the same message, for --export_dir (#8)
        proc = _run(repo_root, "run_sample.py", f"--workdir={workdir}",
                    f"--export_dir={workdir / 'export'}")  # fmt: skip
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "pass --export_dir=DIR" in proc.stderr, proc.stderr[-2000:]
        mine = tmp_path / "mine"
        proc = _run(
            repo_root,
            "run_sample.py",
            f"--workdir={workdir}",
            f"--output_dir={mine}",
            "--num_samples=16",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        with np.load(mine / "samples.npz") as f:
            assert f["samples"].shape == (16, 2)
    finally:
        undo()
    assert sorted(os.listdir(workdir)) == before


def test_sampling_that_cannot_fit_or_is_over_the_work_cap_is_one_line_before_any_work(
    repo_root, tmp_path
):
    """Issue 29 #13: run_sample.py --num_samples=1000000000 on the toy grew to 24 GB and was
    killed (rc 137, no message). Now the memory it needs is compared with what is available
    first (2**31 - 1, the most a count may be, needs hundreds of GB here); a count above that
    is refused as out of range (issue 41); --max_evaluations caps the work (#15) in the
    export's unit. Nothing is written."""
    workdir = _tiny_toy_run(tmp_path / "toy")
    before = sorted(os.listdir(workdir))
    proc = _run(repo_root, "run_sample.py", f"--workdir={workdir}", f"--num_samples={10**12}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "num_samples must be an integer >= 1 and <= 2147483647" in proc.stderr
    proc = _run(repo_root, "run_sample.py", f"--workdir={workdir}", f"--num_samples={2**31 - 1}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = [ln for ln in proc.stderr.splitlines() if "--num_samples=" in ln]
    assert len(line) == 1 and "needs about" in line[0] and "GB available here" in line[0], line
    assert "ask for at most --num_samples=" in line[0]
    proc = _run(repo_root, "run_sample.py", f"--workdir={workdir}", "--num_samples=16",
                "--max_evaluations=5000")  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--num_samples=16 x 1001 network evaluations is 16016 units of work" in proc.stderr
    assert "must be <= 5000 (--max_evaluations): ask for at most --num_samples=4" in proc.stderr
    assert sorted(os.listdir(workdir)) == before
