"""Installed: the console scripts tf-score-train and tf-score-sample, and python -m tf_score,
are the two command lines (the install is `pip install -e .`, as `make install` does)."""

import os
import subprocess
import sys

import numpy as np

from tf_score import api

TOY = ["--dataset=two_mode", "--hidden_units=16", "--num_steps=20", "--batch_size=32",
       "--log_every=10", "--checkpoint_every=20", "--steps_per_loop=10", "--n_steps_each=5",
       "--noprogress"]  # fmt: skip


def _run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, cwd="/")


def _script(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.exists(path), f"{name} is not installed beside {sys.executable}"
    return path


def test_the_console_scripts_and_python_m_train_and_sample(tmp_path):
    """From another directory: python -m tf_score train trains a workdir, tf-score-sample draws
    from it; the samples are api.generate's."""
    workdir = str(tmp_path / "toy")
    done = _run(sys.executable, "-m", "tf_score", "train", f"--workdir={workdir}", *TOY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training score (mlp) on two_mode for 20 steps" in done.stdout
    done = _run(_script("tf-score-sample"), f"--workdir={workdir}", "--num_samples=16",
                "--seed=4")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(os.path.join(workdir, "samples.npz")) as f:
        samples = f["samples"]
    want = api.generate(api.load(workdir), 16, seed=4).samples
    np.testing.assert_allclose(samples, want, rtol=1e-6, atol=1e-6)


def test_each_command_s_help_and_a_wrong_command():
    """--helpshort (absl exits 1 after it) shows the command's text and the flags it reads."""
    helped = _run(_script("tf-score-train"), "--helpshort")
    assert "Train a model: flags -> ExperimentConfig" in helped.stdout
    assert "--workdir:" in helped.stdout and "--learning_rate:" in helped.stdout
    helped = _run(sys.executable, "-m", "tf_score", "sample", "--helpshort")
    assert "Sample a trained run" in helped.stdout
    assert "--num_samples:" in helped.stdout and "--learning_rate:" not in helped.stdout
    wrong = _run(sys.executable, "-m", "tf_score", "trian")
    assert wrong.returncode == 2 and "{train,sample}" in wrong.stderr and "'trian'" in wrong.stderr
