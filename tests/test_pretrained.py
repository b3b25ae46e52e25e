"""Trained models in the box: pack and load round trip, checksums, the shipped models."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config
from tf_score.cli import console
from tf_score.families import pretrained

MiB = 1 << 20


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy"))
    cfg = config.from_flat(dict(dataset="two_mode", network="edm_mlp", loss="edm",
                                hidden_units=(32, 32), num_steps=60, batch_size=64,
                                sigma_max=80.0, sigma_min=0.01, schedule="karras",
                                log_every=60, checkpoint_every=60, sample_every=0))  # fmt: skip
    api.train(cfg, workdir, progress=False)
    return api.load(workdir)


def _denoised(run, x, sigma):
    return run.model.denoise(x, sigma).numpy()


def test_pack_then_load_gives_the_float16_rounded_weights(toy_run, tmp_path):
    """The packed model holds each weight rounded to float16 and nothing else: its denoiser
    equals that of the run with its weights so rounded (to float32 round-off), and the
    provenance records the step, the checksum and what the caller gave."""
    root = str(tmp_path / "box")
    pretrained.pack(toy_run, "toy", {"train_command": "python run_train.py ..."}, root=root)
    loaded = pretrained.load("toy", root=root)
    assert loaded.step == toy_run.step == 60
    record = pretrained.provenance("toy", root)
    assert record["train_command"] == "python run_train.py ..." and record["step"] == 60
    assert record["weights_sha256"] == pretrained.sha256(os.path.join(root, "toy", "weights.npz"))
    for w, v in zip(toy_run.models["score"].weights, loaded.models["score"].weights, strict=True):
        np.testing.assert_array_equal(v.numpy(), w.numpy().astype(np.float16).astype(np.float32))
    x = tf.random.stateless_normal([256, 2], seed=[0, 1]) * 5.0
    sigma = tf.fill([256], 0.7)
    rounded = api.load(toy_run.workdir)
    for w in rounded.models["score"].weights:
        w.assign(w.numpy().astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(_denoised(loaded, x, sigma), _denoised(rounded, x, sigma),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert pretrained.names(root) == ["toy"] and loaded.read_only and not toy_run.read_only


def test_a_damaged_or_missing_weights_file_is_named_with_how_to_get_it_back(toy_run, tmp_path):
    root = str(tmp_path / "box")
    pretrained.pack(toy_run, "toy", {}, root=root)
    path = os.path.join(root, "toy", "weights.npz")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(api.RunError, match=rf"{path} is damaged .*git checkout -- {path}"):
        pretrained.load("toy", root=root)
    os.remove(path)
    with pytest.raises(api.RunError, match=rf"weights file {path} is missing; restore it"):
        pretrained.load("toy", root=root)
    with pytest.raises(api.RunError, match=r"no pretrained model 'digits'; the choices: toy"):
        pretrained.load("digits", root=root)


def test_the_shipped_models_load_and_say_where_they_come_from():
    """Each shipped model is under 5 MB, its checksum holds, and its provenance names the
    command, commit and step that made it and what it measured."""
    names = api.pretrained_names()
    assert {"toy_edm", "mnist_edm_cond"} <= set(names)
    for name in names:
        record = pretrained.provenance(name)
        weights = os.path.join(pretrained.directory(name), "weights.npz")
        assert os.path.getsize(weights) < 5 * MiB
        assert record["weights_sha256"] == pretrained.sha256(weights)
        for key in ("train_command", "commit", "step", "measured"):
            assert record.get(key), (name, key)


def test_the_shipped_toy_draws_the_mixture_with_its_weights():
    """The shipped toy EDM under its own sampler (Heun, 40 karras levels): the heavy mode
    (at (5, 5)) holds 0.8 of 4,000 samples (4 standard errors: +-0.025)."""
    run = api.load_pretrained("toy_edm")
    x = api.generate(run, 4000, seed=0).samples
    heavy = float(np.mean(x.sum(axis=1) > 0))
    assert abs(heavy - 0.8) < 0.025, heavy


def test_the_shipped_digits_model_draws_the_asked_digits_as_images():
    run = api.load_pretrained("mnist_edm_cond")
    sigmas = run.config.noise.sigmas()[::4]
    out = api.generate(run, 20, seed=0, labels=np.repeat(np.arange(10), 2), sigmas=sigmas)
    assert out.samples.shape == (20, 28, 28, 1) and np.isfinite(out.samples).all()
    with open(os.path.join(pretrained.directory("mnist_edm_cond"), "config.json")) as f:
        assert json.load(f)["data"]["data_dir"] is None


def test_a_copy_of_a_model_elsewhere_loads_from_its_root(tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(pretrained.directory("toy_edm"), os.path.join(root, "toy_edm"))
    assert pretrained.load("toy_edm", root=root).step == pretrained.provenance("toy_edm")["step"]


def test_run_sample_draws_a_pretrained_model_and_exports_it(run_cli, tmp_path):
    """--pretrained=NAME samples a model shipped with tf_score (no workdir, no data) and
    exports it (here with --verbosity=0, which shows TensorFlow's logging again); a workdir
    beside it is one line saying what to give."""
    out = tmp_path / "toy"
    proc = run_cli("run_sample.py", "--pretrained=toy_edm", "--num_samples=200",
                   f"--output_dir={out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "samples.png").exists() and "wrote 200 samples" in proc.stdout
    proc = run_cli("run_sample.py", "--pretrained=toy_edm", f"--export_dir={tmp_path}",
                   "--verbosity=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "toy_edm" / "16000" / "saved_model.pb").exists(), proc.stdout
    assert any(console.from_tensorflow(line.encode()) for line in proc.stderr.splitlines())
    proc = run_cli("run_sample.py", "--pretrained=toy_edm", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "give no --workdir" in proc.stderr
