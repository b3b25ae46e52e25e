"""A model family written in one plugin file of the tests (``plugins/gaussian_family.py``) is
trained, sampled and exported through the API and both command lines (``--plugins``), with
no library file edited: its ``Family`` entry is the whole family."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config
from tf_score.cli import definitions
from tf_score.families import registry

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "gaussian_family.py")
FLAGS = dict(model="test_gaussian", network="moments", dataset="two_mode", num_steps=40,
             batch_size=256)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _registered_only_here():
    """Loaded as ``--plugins`` loads it, for this module's tests only."""
    definitions.load_plugin(PLUGIN)
    yield
    registry.unregister("test_gaussian")


def test_the_api_trains_samples_and_exports_it(tmp_path):
    """The fitted Gaussian of 10,240 two-mode points has the mixture's mean (3, 3) and
    variance 1 + 0.2 x 0.8 x 10^2 = 17 per coordinate (4 standard errors: 0.16 and 1.0); its
    samples are those moments; the export serves api.sample's draws."""
    workdir = str(tmp_path / "fit")
    fitted = api.train(config.from_flat(FLAGS), workdir, progress=False)
    np.testing.assert_allclose(fitted.mean, [3.0, 3.0], atol=0.16)
    np.testing.assert_allclose(np.diag(fitted.cov), [17.0, 17.0], atol=1.0)
    run = api.load(workdir)
    out = api.sample(run, str(tmp_path), seed=2)
    assert out.samples.shape == (64, 2) and out.num_evals == 0
    path = api.export(run, str(tmp_path / "export"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    got = served(num_samples=tf.constant(64), seed=tf.constant([2, 0]))["samples"].numpy()
    np.testing.assert_allclose(got, out.samples, atol=1e-5)


def test_what_it_does_not_answer_is_refused_naming_the_flag(tmp_path):
    cfg = config.from_flat(FLAGS)
    with pytest.raises(config.ConfigError, match="--evaluate does not apply to a test_gaussian"):
        api.of(cfg).refuse(cfg, "evaluate", "--evaluate")
    with pytest.raises(config.ConfigError, match="takes a 2-D toy and network=moments"):
        api.check(config.from_flat({**FLAGS, "network": "mlp"}))


@pytest.mark.slow
def test_both_command_lines_load_it_as_a_plugin(repo_root, tmp_path):
    workdir, out = tmp_path / "cli", tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = dict(capture_output=True, text=True, timeout=600, cwd=repo_root, env=env)
    flags = [f"--{k}={v}" for k, v in FLAGS.items()]
    train = subprocess.run([sys.executable, "run_train.py", f"--plugins={PLUGIN}",
                            f"--workdir={workdir}", *flags], **common)  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "fitted a Gaussian to 10240 points" in train.stdout
    sample = subprocess.run([sys.executable, "run_sample.py", f"--plugins={PLUGIN}",
                             f"--workdir={workdir}", f"--output_dir={out}", "--seed=5"],
                            **common)  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-3000:]
    with np.load(out / "samples.npz") as f:
        cli = f["samples"]
    run = api.load(str(workdir))
    np.testing.assert_allclose(cli, api.sample(run, str(tmp_path), seed=5).samples, atol=1e-6)
    export = subprocess.run([sys.executable, "run_sample.py", f"--plugins={PLUGIN}",
                             f"--workdir={workdir}", f"--export_dir={tmp_path / 'export'}"],
                            **common)  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    refused = subprocess.run([sys.executable, "run_sample.py", f"--plugins={PLUGIN}",
                              f"--workdir={workdir}", f"--output_dir={out}", "--sampler=heun"],
                             **common)  # fmt: skip
    assert refused.returncode != 0 and "--sampler does not apply" in refused.stderr
