"""Command line: bad flags fail at start naming the flag; a short train + evaluate run works."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags as absl_flags
from absl.testing import flagsaver

import flags.definitions as F


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
        (["--num_steps=-5"], "--num_steps must be >= 1"),
        (["--sigma_begin=0.5", "--sigma_end=1"], "--sigma_begin must be > --sigma_end"),
        (["--dataset=imagenet"], "flag --dataset=imagenet: value should be one of"),
        (["--loss=mle"], "flag --loss=mle: value should be one of"),
        (["--loss=dsm"], "--loss=dsm is single-level"),
        (["--ema_rate=1.5"], "--ema_rate must be in [0, 1)"),
        (["--dataset=mnist"], "--model=mlp is for the 2-D toys"),
        (["--dataset=folder", "--model=resnet"], "--dataset=folder / npz needs --data_path"),
        (["--model=resnet", "--channel_mults=1,x"], "--channel_mults must be"),
        (["--strategy=tpu"], "--tpu (a Cloud TPU name"),
        (["--devices=/gpu:0"], "--devices is for --strategy=mirrored"),
        (["--batch_size=100", "--grad_accum_steps=3"], "divisible by --grad_accum_steps"),
    ],
)
def test_bad_flags_are_rejected_when_parsed(args, message):
    """The validators run as the flags are parsed (in-process here; the CLI parses the same
    way before main() runs, see the next test)."""
    with flagsaver.flagsaver():
        with pytest.raises(absl_flags.IllegalFlagValueError) as err:
            absl_flags.FLAGS(["run_train.py", "--workdir=/nonexistent", *args])
        assert message in str(err.value), str(err.value)
    absl_flags.FLAGS.mark_as_parsed()


def test_bad_flags_fail_before_any_work(repo_root, tmp_path):
    workdir = tmp_path / "w"
    proc = _run(repo_root, "run_train.py", f"--workdir={workdir}", "--num_steps=-5", timeout=120)
    assert proc.returncode != 0
    assert "--num_steps must be >= 1" in proc.stderr, proc.stderr[-2000:]
    assert not workdir.exists()


def test_missing_image_data_fails_before_writing(repo_root, tmp_path):
    workdir = tmp_path / "w"
    proc = _run(
        repo_root,
        "run_train.py",
        f"--workdir={workdir}",
        "--dataset=fashion_mnist",
        "--model=resnet",
        f"--data_dir={tmp_path / 'empty'}",
        "--nodownload",
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not prepared" in proc.stderr and "--data_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_missing_workdir(repo_root):
    proc = _run(repo_root, "run_train.py", timeout=120)
    assert proc.returncode != 0 and "--workdir" in proc.stderr


def test_experiment_config_follows_flags():
    with flagsaver.flagsaver(num_levels=5, sigma_begin=3.0, hidden_units=["8", "4"]):
        cfg = F.experiment_config()
    assert cfg["num_levels"] == 5 and cfg["sigma_begin"] == 3.0 and cfg["hidden_units"] == [8, 4]
    assert absl_flags.FLAGS.num_levels == 10  # restored


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
    # Resuming with different model flags is refused, naming the flag (the check run_train
    # makes before any work, called directly).
    from absl import app

    import run_train

    with flagsaver.flagsaver(hidden_units=["64", "64"]):
        changed = F.experiment_config()
    with open(os.path.join(workdir, "config.json")) as f:
        changed = {**json.load(f), "hidden_units": changed["hidden_units"]}
    with pytest.raises(app.UsageError, match="--hidden_units"):
        run_train._check_resume(workdir, changed)
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


@pytest.mark.slow
def test_image_train_sample_snapshots_inpaint(repo_root, tmp_path):
    from conftest import MNIST_DATA_DIR

    workdir = str(tmp_path / "mnist")
    common = [
        "--flagfile=flags/presets/mnist_ncsn_cpu.cfg",
        f"--workdir={workdir}",
        f"--data_dir={MNIST_DATA_DIR}",
        "--nodownload",
        "--noprogress",
        "--ngf=8",
        "--channel_mults=1,2",
        "--num_res_blocks=1",
    ]
    proc = _run(
        repo_root,
        "run_train.py",
        *common,
        "--num_steps=20",
        "--checkpoint_every=10",
        "--sample_every=20",
        "--log_every=10",
        "--n_steps_each=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sample = [*common, "--num_samples=8", "--n_steps_each=2"]
    proc = _run(repo_root, "run_sample.py", *sample, "--snapshots")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "21 evaluations each" in proc.stdout
    for name in ["samples.png", "samples.npz", "snapshots.png", "snapshots.gif"]:
        assert os.path.exists(os.path.join(workdir, name)), name
    proc = _run(repo_root, "run_sample.py", *sample, "--inpaint")
    assert proc.returncode == 0, proc.stderr[-3000:]

    with np.load(os.path.join(workdir, "inpaint.npz")) as f:
        observed, mask, samples = f["observed"], f["mask"], f["samples"]
    assert samples.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(samples[..., :14, :], observed[..., :14, :])
    assert mask[:, :14].min() == 1 and mask[:, 14:].max() == 0


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["implicit"])
def test_vae_train_sample_evaluate(encoder, repo_root, tmp_path):
    """The VAE preset trains from flags; run_sample writes the figures and AIS metrics (and,
    for --encoder=gaussian, IWAE <= ELBO NLLs: the Gaussian variant is left out of the suite
    for time; tests/test_vae.py trains it and test_export checks its IWAE >= ELBO)."""
    from conftest import MNIST_DATA_DIR

    workdir = str(tmp_path / encoder)
    preset = {"implicit": "mnist_vae_ssm", "gaussian": "mnist_vae_gaussian"}[encoder]
    common = [
        f"--flagfile=flags/presets/{preset}.cfg",
        f"--workdir={workdir}",
        f"--data_dir={MNIST_DATA_DIR}",
        "--nodownload",
        "--noprogress",
    ]
    proc = _run(
        repo_root,
        "run_train.py",
        *common,
        "--num_steps=40",
        "--log_every=20",
        "--checkpoint_every=20",
        "--sample_every=40",
        "--steps_per_loop=20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"with the {encoder} encoder" in proc.stdout
    proc = _run(
        repo_root,
        "run_sample.py",
        *common,
        "--evaluate",
        "--eval_examples=8",
        "--eval_batch=4",
        "--ais_chains=2",
        "--ais_temperatures=10",
        "--iwae_samples=50",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["prior_samples.png", "reconstructions.png", "metrics.json"]:
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "metrics.json")) as f:
        m = json.load(f)
    assert m["encoder"] == encoder and m["n_examples"] == 8 and m["step"] == 40
    assert 50 < m["ais_nll"]["mean"] < 600 and m["ais_nll"]["se"] > 0
    with np.load(os.path.join(workdir, "nll_per_example.npz")) as f:
        assert f["ais_nll"].shape == (8,)
        assert np.isclose(f["ais_nll"].mean(), m["ais_nll"]["mean"], rtol=1e-6)
    if encoder == "gaussian":
        assert m["iwae_nll"]["mean"] <= m["neg_elbo"]["mean"] + 1e-3
    else:
        assert "iwae_nll" not in m
    assert "AIS NLL" in proc.stdout


def test_vae_rejects_a_conv_arch_for_28_pixel_images(repo_root, tmp_path):
    from conftest import MNIST_DATA_DIR

    proc = _run(
        repo_root,
        "run_train.py",
        "--flagfile=flags/presets/mnist_vae_ssm.cfg",
        f"--workdir={tmp_path / 'w'}",
        f"--data_dir={MNIST_DATA_DIR}",
        "--nodownload",
        "--vae_arch=conv",
    )
    assert proc.returncode == 2
    assert "divisible by 8" in proc.stderr
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize(
    "sampler, flags_, evals",
    [
        ("consistent_annealed", {}, 11),  # + the denoise step (--denoise is on by default)
        ("predictor_corrector", {"n_corrector": 2}, 30),
        ("heun", {"heun_steps": 4}, 7),
        ("ode", {"ode_tol": 1e-3}, None),  # adaptive: 2 network calls per solver call
    ],
)
def test_run_sample_picks_the_fast_samplers_from_flags(sampler, flags_, evals):
    import tensorflow as tf

    import run_sample
    from tf_score import data
    from tf_score.sigmas import geometric_sigmas

    sigmas = geometric_sigmas(20.0, 1.0, 10)
    score = data.get_toy("two_mode").conditional_score_fn(sigmas)
    x0 = tf.zeros([64, 2])
    with flagsaver.flagsaver(sampler=sampler, **flags_):
        out = run_sample._run_sampler(score, sigmas, x0, tf.constant([0, 1]))
    if evals is None:
        assert int(out.num_evals) % 2 == 0 and int(out.num_evals) > 10, int(out.num_evals)
    else:
        assert int(out.num_evals) == evals
    assert np.all(np.isfinite(out.samples.numpy()))
    from absl import app

    with flagsaver.flagsaver(sampler="consistent_annealed", cas_eta=0.01):
        with pytest.raises(app.UsageError, match=r"--cas_eta=0\.01 is too small"):
            run_sample._run_sampler(score, sigmas, x0, tf.constant([0, 1]))


def test_metrics_flags_report_fid_kid_floor_histogram_and_fail_early(tmp_path):
    """The plumbing of run_sample.py --metrics, with a saved random-weight classifier (the
    values mean nothing; test_metrics checks the metrics): every error before any sampling,
    the training-set features cached, and the JSON with n, the floor and label histograms."""
    from absl import app
    from conftest import MNIST_DATA_DIR

    import run_sample
    from tf_score import classifier

    if not os.path.isdir(MNIST_DATA_DIR):
        pytest.skip("needs the MNIST tfds data_dir")
    net = classifier.DigitClassifier()
    net.build()
    os.makedirs(tmp_path / "clf")
    net.save(str(tmp_path / "clf" / "classifier.keras"))
    cfg = {"dataset": "mnist", "data_dir": MNIST_DATA_DIR, "download": False}
    cfg["data_shape"] = [28, 28, 1]
    base = dict(metrics=["fid", "kid"], workdir=str(tmp_path))
    with flagsaver.flagsaver(**base):
        with pytest.raises(app.UsageError, match="needs --classifier=PATH"):
            run_sample._quality_setup(cfg, 50)
    with flagsaver.flagsaver(**base, classifier=str(tmp_path / "none")):
        with pytest.raises(app.UsageError, match="no classifier at"):
            run_sample._quality_setup(cfg, 50)
    with flagsaver.flagsaver(**base, classifier=str(tmp_path / "clf")):
        with pytest.raises(app.UsageError, match="takes images"):
            run_sample._quality_setup({**cfg, "data_shape": [32, 32, 3]}, 50)
        with pytest.raises(app.UsageError, match="more than the 10000 test images"):
            run_sample._quality_setup(cfg, 10001)
        setup = run_sample._quality_setup(cfg, 50)
        cache = tmp_path / "reference_features_classifier.npz"
        stamp = os.path.getmtime(cache)
        setup = run_sample._quality_setup(cfg, 50)  # reused, not recomputed
        assert os.path.getmtime(cache) == stamp
        images = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
        q = run_sample._report_quality(str(tmp_path), setup, images, 7, 1.5, 3)
    assert q["n"] == 50 and q["n_reference"] == 60000 and q["num_evals"] == 7
    assert q["checkpoint_step"] == 3 and q["feature_extractor"] == "classifier"
    assert q["fid"] > q["fid_floor"] > 0 and len(q["label_histogram"]) == 10
    assert sum(q["label_histogram_floor"]) == pytest.approx(1.0)
    assert q["classifier_test_accuracy"] is None  # no classifier.json beside this one
    with open(tmp_path / "quality_annealed_langevin.json") as f:
        assert json.load(f)["fid"] == q["fid"]
