"""A solver written in one plugin file of the tests (``plugins/scaled_euler.py``) is usable
through the API, run_sample.py (``--plugins``) and an export, with no library file edited:
the registry entry is the whole solver."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, sampling
from tf_score.cli import definitions

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "scaled_euler.py")


@pytest.fixture(scope="module", autouse=True)
def _registered_only_here():
    """The plugin is loaded as ``--plugins`` loads it, for this module's tests only: every
    other test in the process sees the built-in solvers alone, whatever the order."""
    definitions.load_plugin(PLUGIN)
    yield
    sampling.unregister("test_euler")
    sampling.unregister("test_eta_euler")


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "a4ac31d")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("solver") / "toy_edm"
    shutil.copytree(os.path.join(DATA, "toy_edm"), workdir)
    return api.load(str(workdir))


def test_the_api_runs_it_and_checks_its_options(run):
    out = api.generate(run, 64, seed=2, sampler="test_euler", euler_scale=0.5)
    assert out.samples.shape == (64, 2) and np.all(np.isfinite(out.samples))
    assert out.num_evals == len(run.sigmas)
    # its own arithmetic, one step by hand from the same start
    same = api.generate(run, 64, seed=2, sampler="test_euler", euler_scale=0.5)
    np.testing.assert_array_equal(out.samples, same.samples)
    with pytest.raises(Exception, match="euler_scale must be a finite number > 0 and <= 2"):
        api.generate(run, 8, seed=2, sampler="test_euler", euler_scale=3.0)
    with pytest.raises(Exception, match="takes options euler_scale; not step_lr"):
        sampling.draw("test_euler", run.model, run.sigmas, 8, 0, run.space, step_lr=0.1)


def test_it_moves_a_start_toward_the_data_like_heun(run):
    """On the learned toy, Euler on 8 levels and Heun end in the same mode for most points."""
    euler_x = api.generate(run, 512, seed=3, sampler="test_euler").samples
    heun_x = api.generate(run, 512, seed=3, sampler="heun").samples
    same_mode = np.mean((euler_x.sum(1) > 0) == (heun_x.sum(1) > 0))
    assert same_mode > 0.9, same_mode


@pytest.mark.slow
def test_run_sample_loads_it_as_a_plugin(run, repo_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "run_sample.py", f"--workdir={run.workdir}", "--num_samples=16",
         "--seed=4", "--sampler=test_euler", "--sampler_options=euler_scale=0.5",
         f"--plugins={PLUGIN}", f"--output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=repo_root,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "samples.npz") as f:
        cli = f["samples"]
    np.testing.assert_allclose(
        cli, api.generate(run, 16, seed=4, sampler="test_euler", euler_scale=0.5).samples,
        atol=1e-5,
    )  # fmt: skip


def test_an_export_serves_it_with_its_option_checked(run, tmp_path):
    path = api.export(run, str(tmp_path / "export"), model_name="toy", samplers=("test_euler",))
    sig = tf.saved_model.load(path).signatures["sample_test_euler"]
    served = sig(num_samples=tf.constant(8), seed=tf.constant([6, 0]),
                 euler_scale=tf.constant(0.5))["samples"].numpy()  # fmt: skip
    np.testing.assert_allclose(
        served, api.generate(run, 8, seed=6, sampler="test_euler", euler_scale=0.5).samples,
        atol=1e-5,
    )  # fmt: skip
    with pytest.raises(tf.errors.InvalidArgumentError, match="euler_scale must be"):
        sig(num_samples=tf.constant(8), seed=tf.constant([6, 0]), euler_scale=tf.constant(5.0))


def test_two_solvers_may_each_have_an_option_of_one_name(run):
    """``eta`` is the ancestral solvers' option in [0, 1] and the plugin's in [0, 3]: each
    solver checks the value by its own schema, in the API and in a config alike."""
    from tf_score import config

    out = api.generate(run, 8, seed=1, sampler="test_eta_euler", eta=2.5)
    same = api.generate(run, 8, seed=1, sampler="test_euler", euler_scale=1.25)
    np.testing.assert_allclose(out.samples, same.samples, atol=1e-5)  # float32 round-off
    with pytest.raises(sampling.SamplerError, match="eta must be a finite number >= 0 and <= 1"):
        api.generate(run, 8, seed=1, sampler="euler_ancestral", eta=2.5)
    api.check(config.from_flat(dict(dataset="two_mode", sampler="test_eta_euler", eta=2.5)))
    with pytest.raises(config.ConfigError, match="eta must be a finite number >= 0 and <= 1"):
        api.check(config.from_flat(dict(dataset="two_mode", sampler="euler_ancestral", eta=2.5)))
