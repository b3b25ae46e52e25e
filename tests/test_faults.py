"""Runs that are killed, interrupted or lose a worker resume to the uninterrupted result.

Each test drives ``run_train.py`` processes (the toy preset) and compares the finished run
with an uninterrupted in-process run of the same flags: the same step, and the same loss
and weights within rtol 1e-5 (float summation order only; resuming replays data and noise).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api
from tf_score.config import TrainConfig
from tf_score.families import score_model
from tf_score.training import loop

pytestmark = pytest.mark.slow

TOY = ["--flagfile=flags/presets/toy_mixture.cfg", "--noprogress", "--n_steps_each=1"]


# run_train.py with a SIGUSR1 handler that blocks its Python thread for good: the process
# stays alive and its coordination heartbeats go on, but it never joins another collective.
_STALLABLE = (
    "import runpy, signal, sys, time; "
    "signal.signal(signal.SIGUSR1, lambda *a: time.sleep(10**6)); "
    "sys.argv[0] = 'run_train.py'; runpy.run_path('run_train.py', run_name='__main__')"
)


def _start(repo_root, workdir, *args, log, env=None, stallable=False):
    out = open(log, "w")  # closed when the process ends (_finish)
    script = ["-c", _STALLABLE] if stallable else ["run_train.py"]
    proc = subprocess.Popen(
        [sys.executable, *script, *TOY, f"--workdir={workdir}", *args],
        cwd=repo_root,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    proc.log = log
    return proc


def _finish(proc, timeout=240):
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"process did not finish in {timeout} s:\n{_tail(_text(proc))}")
    return proc.returncode, _text(proc)


def _text(proc):
    with open(proc.log) as f:
        return f.read()


def _tail(text, n=3000):
    """The end of a process's log for a failure message; for a crash, what it printed before
    Python's dump of its threads (the dump alone would fill the message and hide the cause)."""
    before, crash, dump = text.partition("Fatal Python error")
    if crash:
        return before[-n:] + crash + dump.split("\n", 1)[0]
    return text[-n:]


def _wait_for(predicate, procs, timeout=240, poll=0.0005):
    """Poll ``predicate`` until true; fail if it never is or a process exits first."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"process exited ({p.returncode}) early:\n{_tail(_text(p))}")
        time.sleep(poll)
    pytest.fail("timed out")


def _recorded_step(ckpt_dir):
    """Step of the checkpoint the state file records (-1: none yet)."""
    path = tf.train.latest_checkpoint(ckpt_dir)
    return int(path.rsplit("-", 1)[1]) if path else -1


def _reference(workdir, num_steps, **kw):
    """The uninterrupted run, in-process, from the config.json the CLI wrote."""
    cfg = api.read_config(str(workdir)).replace(sampler={"n_steps_each": 1})
    bundle, _ = score_model.bundle(cfg)
    base = dict(num_steps=num_steps, batch_size=128, ema_rate=0.999)
    return loop.train(bundle, TrainConfig(**{**base, **kw}), str(workdir) + "_reference")


def _final_weights(workdir, model_fns):
    model = model_fns["score"]()
    ckpt = tf.train.Checkpoint(model_score=model)
    ckpt.restore(tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))).expect_partial()
    return [w.numpy() for w in model.weights]


def _compare(workdir, text, ref, num_steps):
    printed = re.search(rf"trained to step {num_steps}: loss (\S+) ", text)
    assert printed, _tail(text)
    assert float(printed.group(1)) == pytest.approx(ref.loss, abs=1e-4)  # printed to 4 places
    with open(os.path.join(workdir, "train_summary.json")) as f:
        summary = json.load(f)
    assert summary["step"] == num_steps
    assert summary["final_loss"] == pytest.approx(ref.loss, rel=1e-5)
    weights = _final_weights(workdir, {"score": lambda: _clone(ref.models["score"])})
    for a, b in zip(weights, [w.numpy() for w in ref.models["score"].weights], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _clone(model):
    copy = model.__class__.from_config(model.get_config())
    copy.build()
    return copy


def test_sigkill_during_a_checkpoint_write_then_ctrl_c_resume_exactly(repo_root, tmp_path):
    workdir = tmp_path / "run"
    ckpt_dir = str(workdir / "checkpoints")
    # A 270k-parameter MLP: its checkpoints (4 copies of the weights: live, EMA, Adam's two
    # moments; 4.3 MB) take milliseconds to write, long enough to kill the process inside.
    args = [
        "--hidden_units=512,512",
        "--num_steps=250",
        "--checkpoint_every=50",
        "--log_every=50",
        "--steps_per_loop=25",
    ]

    # 1. SIGKILL while a checkpoint after ckpt-50 is being written (its temporary files
    #    exist). The write takes milliseconds: if the kill lands just after it, try again
    #    from the resumed run (at most 3 times).
    def temp_step():
        names = [n for n in os.listdir(ckpt_dir) if n.endswith("_temp")]
        return int(names[0].removesuffix("_temp").rsplit("-", 1)[1]) if names else None

    for attempt in range(3):
        p = _start(repo_root, workdir, *args, log=tmp_path / f"1.{attempt}.log")
        _wait_for(lambda: _recorded_step(ckpt_dir) >= 50, [p])
        _wait_for(lambda: temp_step() is not None, [p])
        p.send_signal(signal.SIGKILL)
        assert _finish(p)[0] == -signal.SIGKILL
        being_written = temp_step()
        if being_written is not None:
            break
    assert being_written is not None, "3 kills all landed outside a checkpoint write"
    recorded = _recorded_step(ckpt_dir)
    # The half-written checkpoint was never recorded; the last complete one is.
    assert recorded == being_written - 50
    tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))  # complete and readable

    # 2. Resume; Ctrl-C (SIGINT) stops at the end of a loop of steps, saving a checkpoint.
    p = _start(repo_root, workdir, *args, log=tmp_path / "2.log")
    _wait_for(lambda: _recorded_step(ckpt_dir) > recorded, [p])
    p.send_signal(signal.SIGINT)
    code, text = _finish(p)
    assert f"ckpt-{recorded} at step {recorded}" in text, _tail(text)
    assert code == 128 + signal.SIGINT, _tail(text)
    stopped = _recorded_step(ckpt_dir)
    assert f"SIGINT at step {stopped}: saved checkpoint" in text, _tail(text)
    assert recorded < stopped < 250

    # 3. Resume to the end: the same step, loss and weights as the uninterrupted run.
    p = _start(repo_root, workdir, *args, log=tmp_path / "3.log")
    code, text = _finish(p)
    assert code == 0, _tail(text)
    assert f"at step {stopped}" in text
    ref = _reference(workdir, 250, checkpoint_every=50, log_every=50, steps_per_loop=25)
    _compare(workdir, text, ref, 250)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_cluster(repo_root, workdir, tmp_path, tag, *args, stallable=()):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        tmp = tmp_path / f"{tag}tmp{i}"
        tmp.mkdir(exist_ok=True)
        procs.append(
            _start(
                repo_root,
                workdir,
                "--strategy=multi_worker_mirrored",
                *args,
                log=tmp_path / f"{tag}{i}.log",
                env={"TF_CONFIG": tf_config, "TMPDIR": str(tmp)},
                stallable=i in stallable,
            )
        )
    return procs


def test_ctrl_c_stops_a_long_sampling_run_within_seconds(repo_root, tmp_path):
    """run_sample.py inside a compiled loop of 10^8 Langevin steps: one Ctrl-C ends it within
    seconds with a message and exit code 130, and the workdir's earlier samples are kept."""
    workdir = tmp_path / "run"
    code, text = _finish(_start(repo_root, workdir, "--num_steps=20", log=tmp_path / "t.log"))
    assert code == 0, _tail(text)
    (workdir / "samples.npz").write_bytes(b"earlier samples")
    log = open(tmp_path / "s.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "run_sample.py", f"--workdir={workdir}", "--sampler=langevin",
         "--langevin_steps=100000000", "--num_samples=64"],
        cwd=repo_root, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    time.sleep(20)  # imports, load, and well into the loop (which would run for hours)
    assert proc.poll() is None, open(tmp_path / "s.log").read()[-2000:]
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    log.close()
    text = open(tmp_path / "s.log").read()
    assert time.time() - t0 < 5, _tail(text)
    assert proc.returncode == 128 + signal.SIGINT, _tail(text)
    assert "SIGINT: stopped (results are written only when complete)" in text
    assert (workdir / "samples.npz").read_bytes() == b"earlier samples"


def test_a_second_run_train_on_the_same_workdir_stops_at_once(repo_root, tmp_path):
    workdir = tmp_path / "run"
    first = _start(repo_root, workdir, "--num_steps=100000000", log=tmp_path / "a.log")
    try:
        _wait_for(lambda: (workdir / "LOCK").exists(), [first], poll=0.05)
        t0 = time.time()
        code, text = _finish(_start(repo_root, workdir, "--num_steps=10", log=tmp_path / "b.log"))
        assert code == 2 and "in use by another training process (host " in text, _tail(text)
        assert f"PID {first.pid}, started" in text and time.time() - t0 < 60
    finally:
        first.send_signal(signal.SIGINT)
        code, text = _finish(first)
    assert code == 128 + signal.SIGINT, _tail(text)
    assert not (workdir / "LOCK").exists()
