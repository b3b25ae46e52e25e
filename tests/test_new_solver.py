"""A solver registered here, in this file only, is usable through the API, run_sample.py (which
loads this file with --plugins) and an export, with no other file edited: the registry entry
is the whole solver.

The solver is Euler's method on the probability-flow ODE dx/dsigma = -sigma s(x, sigma) with
a step-size multiplier, ``euler_scale`` (1: plain Euler): N network evaluations."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, sampling
from tf_score.sampling import solvers

EULER_SCALE = sampling.Option(
    "euler_scale", float, 1.0, "test_euler: step-size multiplier", 0.0, 2.0
)


def euler(model, x, sigmas, *, seed, callback=None, euler_scale=1.0):
    """x <- x + c (sigma_(i+1) - sigma_i) (-sigma_i s(x, sigma_i)), sigma_(N+1) = 0."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), solvers.as_grid(sigmas)
    nxt, c = solvers.next_sigmas(sigmas), tf.cast(euler_scale, tf.float32)

    def body(i, x):
        d = -sigmas[i] * solvers.score_at(model, x, sigmas[i])
        x = x + c * (nxt[i] - sigmas[i]) * d
        return i + 1, solvers.after_step(callback, i, sigmas[i], x)

    _, x = tf.while_loop(lambda i, _: i < tf.shape(sigmas)[0], body, (tf.constant(0), x))
    return sampling.SamplerOutput(x, tf.shape(sigmas)[0])


sampling.register(
    sampling.Sampler(
        "test_euler", euler, (EULER_SCALE,), "perturbed", lambda n, o: n, False,
        "Euler on the probability-flow ODE: N evaluations",
    ),
    replace=True,
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _registered_only_here():
    """The solver is this module's: other tests in the process must not see it."""
    yield
    sampling.unregister("test_euler")


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
         f"--plugins={os.path.abspath(__file__)}", f"--output_dir={tmp_path}"],
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
