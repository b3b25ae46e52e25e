"""Command line, the longer runs: an NCSN and a VAE preset trained and sampled from flags on
real MNIST (snapshots, inpainting, AIS), and run_train.py --evaluate against run_sample.py
--evaluate on the toy, each in fresh processes (apart from test_cli.py, so that the two
pytest-xdist workers share the long files evenly)."""

import json
import os

import numpy as np
import pytest


@pytest.mark.slow
def test_image_train_sample_snapshots_inpaint(run_cli, tmp_path):
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
    proc = run_cli(
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
    proc = run_cli("run_sample.py", *sample, "--snapshots")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "21 evaluations each" in proc.stdout
    for name in ["samples.png", "samples.npz", "snapshots.png", "snapshots.gif"]:
        assert os.path.exists(os.path.join(workdir, name)), name
    proc = run_cli("run_sample.py", *sample, "--inpaint")
    assert proc.returncode == 0, proc.stderr[-3000:]

    with np.load(os.path.join(workdir, "inpaint.npz")) as f:
        observed, mask, samples = f["observed"], f["mask"], f["samples"]
    assert samples.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(samples[..., :14, :], observed[..., :14, :])
    assert mask[:, :14].min() == 1 and mask[:, 14:].max() == 0


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["implicit"])
def test_vae_train_sample_evaluate(encoder, run_cli, tmp_path):
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
    proc = run_cli(
        "run_train.py",
        *common,
        "--num_steps=40",
        "--log_every=20",
        "--checkpoint_every=20",
        "--sample_every=40",
        "--steps_per_loop=20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training vae (mlp)" in proc.stdout
    proc = run_cli(
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


@pytest.mark.slow
def test_run_train_evaluate_writes_what_run_sample_evaluate_writes(run_cli, tmp_path):
    """run_train.py --evaluate (make demo's one process per toy): after the training and the
    export, the trained run's evaluation with this command's evaluation flags, into the
    workdir; run_sample.py --evaluate of the workdir afterwards writes the same metrics.json
    (sampling times aside)."""
    workdir, again = tmp_path / "edm", tmp_path / "again"
    preset = "--flagfile=flags/presets/toy_edm.cfg"
    small = ["--num_samples=64", "--eval_repeats=2", "--num_permutations=20", "--noprogress"]
    proc = run_cli("run_train.py", preset, f"--workdir={workdir}", "--num_steps=200",
                "--checkpoint_every=200", "--sample_every=0", "--hidden_units=16,16",
                f"--export_dir={tmp_path / 'export'}", "--evaluate", *small)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "export" / "edm" / "200" / "saved_model.pb").exists()
    assert "evaluated in" in proc.stdout and "2 sampling seeds x 64" in proc.stdout, proc.stdout
    proc = run_cli("run_sample.py", preset, f"--workdir={workdir}", "--evaluate",
                f"--output_dir={again}", *small)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (workdir, again))
    for m in (first, second):
        for row in m["samplers"].values():
            row.pop("sample_seconds")
            row.update(zip(("sd_light", "sd_heavy"), row.pop("mode_sd"), strict=True))
            row.update(enumerate(row.pop("two_sample_p")))
    for name, row in first.pop("samplers").items():  # float32 sampling: rounding may differ
        assert row == pytest.approx(second["samplers"][name], rel=1e-5), name
    assert first == {k: v for k, v in second.items() if k != "samplers"}
    assert first["num_seeds"] == 2 and first["checkpoint_step"] == 200
    assert list(second["samplers"]) == ["heun", "edm", "dpmpp_2m", "dpmpp_3m_sde", "dpm_adaptive"]
