"""The README's "Using the library" session runs as written (so it cannot drift), and the
workdir it trained from Python is then sampled by run_sample.py."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest


def _library_block(repo_root) -> str:
    with open(os.path.join(repo_root, "README.md")) as f:
        text = f.read()
    section = text.split("## Using the library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section has one Python session"
    return blocks[0]


@pytest.mark.slow
def test_readme_session_runs_and_its_workdir_is_sampled_by_the_cli(repo_root, capsys):
    namespace = {}
    exec(compile(_library_block(repo_root), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "annealed_langevin: 1000 evaluations" in printed, printed
    assert "heun: 19 evaluations" in printed and "predictor_corrector: 30 evaluations" in printed
    run = namespace["run"]
    assert run.step == 400 and run.config.train.num_steps == 400
    m = namespace["result"].metrics
    # the seed's demonstration, even after 400 steps: annealed beats plain, exact annealed ~0.8
    assert m["annealed_langevin_mode_weight"] > m["plain_langevin_mode_weight"]
    assert abs(m["exact_annealed_langevin_mode_weight"] - 0.8) < 0.05
    # a workdir trained through the Python API, sampled by run_sample.py: same seed, same
    # samples as the API
    workdir = namespace["workdir"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "run_sample.py", f"--workdir={workdir}", "--num_samples=16",
         "--seed=5", "--sampler=heun"],
        capture_output=True, text=True, timeout=300, cwd=repo_root, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(os.path.join(workdir, "samples.npz")) as f:
        cli = f["samples"]
    api = namespace["api"].generate(run, 16, seed=5, sampler="heun").samples
    np.testing.assert_allclose(cli, api, rtol=1e-5, atol=1e-5)
