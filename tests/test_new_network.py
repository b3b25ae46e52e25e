"""A score network written in one plugin file of the tests (``plugins/concat_denoiser.py``) is
trained, sampled and exported through the API and both command lines (``--plugins``), with no
library file edited: its ``NetworkSpec`` is the whole network."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config
from tf_score.cli import definitions
from tf_score.networks import registry as networks

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "concat_denoiser.py")
FLAGS = dict(
    dataset="two_mode", network="test_concat_mlp", loss="edm", hidden_units=["32", "32"],
    sigma_max=20.0, sigma_min=0.05, num_levels=10, schedule="karras", sampler="heun",
    num_steps=2000, batch_size=256, log_every=500, checkpoint_every=2000, learning_rate=5e-3,
    ema_rate=0.99,
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _registered_only_here():
    """Loaded as ``--plugins`` loads it, for this module's tests only."""
    definitions.load_plugin(PLUGIN)
    yield
    networks.unregister("test_concat_mlp")
    networks.unregister("test_listed_mlp")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("network") / "toy")
    api.train(config.from_flat(FLAGS), workdir, progress=False)
    return api.load(workdir)


def test_the_api_trains_samples_and_exports_it(run, tmp_path):
    """2000 steps on the two-mode mixture (3 s): Heun's samples put 0.8 in the heavy mode
    (measured 0.776 at n = 2000, whose standard error is 0.009; tolerance 0.05), and the
    export serves what api.generate draws with the same seed."""
    assert type(run.models["score"]).__name__ == "ConcatMLP"
    out = api.generate(run, 2000, seed=1)
    heavy = float(np.mean(out.samples.sum(1) > 0))
    assert abs(heavy - 0.8) < 0.05, heavy
    path = api.export(run, str(tmp_path / "export"), model_name="toy")
    served = tf.saved_model.load(path).signatures["serving_default"]
    got = served(num_samples=tf.constant(16), seed=tf.constant([4, 0]))["samples"].numpy()
    np.testing.assert_allclose(got, api.generate(run, 16, seed=4).samples, atol=1e-5)


def test_an_unregistered_network_is_refused_naming_it():
    with pytest.raises(config.ConfigError, match=r"unknown score network .no_such_net.; choose"):
        api.check(config.from_flat({**FLAGS, "network": "no_such_net"}))
    with pytest.raises(config.ConfigError, match="takes points; images need network="):
        api.check(config.from_flat({**FLAGS, "dataset": "mnist"}))


def test_a_network_whose_weights_a_checkpoint_would_miss_is_refused(tmp_path):
    """Keras layers kept in a plain list train, but tf.train.Checkpoint does not see them: such
    a run loaded as fresh random weights (found writing this plugin). Now it is refused when it
    is built, before any step, config.json or checkpoint, naming the weights."""
    cfg = config.from_flat({**FLAGS, "network": "test_listed_mlp"})
    with pytest.raises(config.ConfigError, match="has weights a checkpoint would not save"):
        api.train(cfg, str(tmp_path / "listed"), progress=False)
    workdir = tmp_path / "listed"
    assert not os.path.exists(workdir / "config.json")
    ckpts = workdir / "checkpoints"
    assert not (ckpts.is_dir() and os.listdir(ckpts))


@pytest.mark.slow
def test_both_command_lines_load_it_as_a_plugin(repo_root, tmp_path):
    workdir, out = tmp_path / "cli", tmp_path / "out"
    flags = [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in FLAGS.items()]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = dict(capture_output=True, text=True, timeout=600, cwd=repo_root, env=env)
    train = subprocess.run([sys.executable, "run_train.py", f"--plugins={PLUGIN}",
                            f"--workdir={workdir}", *flags, "--num_steps=20"],
                           **common)  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    with open(workdir / "config.json") as f:
        assert json.load(f)["network"]["network"] == "test_concat_mlp"
    sample = subprocess.run([sys.executable, "run_sample.py", f"--plugins={PLUGIN}",
                             f"--workdir={workdir}", f"--output_dir={out}", "--num_samples=8",
                             "--seed=3"], **common)  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-3000:]
    with np.load(out / "samples.npz") as f:
        cli = f["samples"]
    np.testing.assert_allclose(cli, api.generate(api.load(str(workdir)), 8, seed=3).samples,
                               atol=1e-5)  # fmt: skip
    refused = subprocess.run([sys.executable, "run_sample.py", f"--workdir={workdir}",
                              f"--output_dir={out}"], **common)  # fmt: skip
    assert refused.returncode != 0 and "load it with --plugins" in refused.stderr
