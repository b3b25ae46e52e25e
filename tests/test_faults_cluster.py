"""Multi-worker faults, each a real cluster of run_train.py processes on localhost: a worker lost
and the run resumed exactly, the chief killed, a stalled worker timed out. (Apart from
test_faults.py so that the two pytest-xdist workers share the long files evenly; the helpers
are test_faults.py's.)"""

import os
import signal
import time

import tensorflow as tf
from test_faults import (
    _compare,
    _finish,
    _recorded_step,
    _reference,
    _start_cluster,
    _tail,
    _wait_for,
)


def test_two_workers_train_checkpoint_lose_a_worker_and_resume(repo_root, tmp_path):
    """Two local processes on loopback ports (TF_CONFIG): worker 0 is the chief. The run
    equals one device with two micro-batches (same global batch, same per-shard seeds)."""
    workdir = tmp_path / "run"
    ckpt_dir = str(workdir / "checkpoints")
    args = ["--checkpoint_every=100", "--log_every=100", "--steps_per_loop=50"]

    # 1. Train towards 400 and SIGKILL worker 1 after the checkpoint at 300: the chief stops
    #    with an error that says how to resume (it cannot continue without its peer).
    procs = _start_cluster(repo_root, workdir, tmp_path, "a", "--num_steps=400", *args)
    _wait_for(lambda: _recorded_step(ckpt_dir) == 300, procs)
    procs[1].send_signal(signal.SIGKILL)
    assert _finish(procs[1])[0] == -signal.SIGKILL
    code, text = _finish(procs[0], timeout=180)
    assert code == 4, _tail(text)
    assert "lost contact with another worker" in text and "Restart all workers" in text
    resume_from = _recorded_step(ckpt_dir)
    assert resume_from >= 300

    # 2. Restart both: they resume from the chief's checkpoint and finish.
    procs = _start_cluster(repo_root, workdir, tmp_path, "b", "--num_steps=400", *args)
    results = [_finish(p) for p in procs]
    for code, text in results:
        assert code == 0, _tail(text)
        assert f"at step {resume_from}" in text and "trained to step 400" in text
    assert "worker0" in results[0][1] and "worker1" in results[1][1]
    # Only the chief wrote: one TensorBoard event file per launch (the chief's), and the
    # other worker's temporary checkpoints were deleted.
    assert len(os.listdir(workdir / "tb")) == 2
    assert not [n for n in os.listdir(tmp_path / "btmp1") if n.startswith("tf_score_")]
    ref = _reference(
        workdir,
        400,
        grad_accum_steps=2,
        checkpoint_every=100,
        log_every=100,
        steps_per_loop=50,
    )
    _compare(workdir, results[0][1], ref, 400)


def test_killing_the_chief_stops_the_other_worker_with_how_to_resume(repo_root, tmp_path):
    """The chief hosts the coordination service: SIGKILL it after a checkpoint and the other
    worker ends (no hang) with the lost-worker message, exit code 4; the chief's checkpoint
    is intact and a restart of both resumes from it to the uninterrupted result."""
    workdir = tmp_path / "run"
    ckpt_dir = str(workdir / "checkpoints")
    args = ["--checkpoint_every=100", "--log_every=100", "--steps_per_loop=50"]
    procs = _start_cluster(repo_root, workdir, tmp_path, "a", "--num_steps=400", *args)
    _wait_for(lambda: _recorded_step(ckpt_dir) == 200, procs)
    procs[0].send_signal(signal.SIGKILL)
    assert _finish(procs[0])[0] == -signal.SIGKILL
    t0 = time.time()
    code, text = _finish(procs[1], timeout=180)
    assert code == 4, _tail(text)
    assert "lost contact with another worker" in text and "Restart all workers" in text
    print(f"worker 1 stopped {time.time() - t0:.1f} s after the chief was killed")
    resume_from = _recorded_step(ckpt_dir)
    assert resume_from >= 200
    procs = _start_cluster(repo_root, workdir, tmp_path, "b", "--num_steps=400", *args)
    results = [_finish(p) for p in procs]
    for code, text in results:
        assert code == 0, _tail(text)
        assert f"at step {resume_from}" in text and "trained to step 400" in text


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("Threads:")[1].split()[0])


def test_a_stalled_worker_ends_the_run_after_the_collective_timeout(repo_root, tmp_path):
    """A worker that is alive and heartbeating but never joins the next collective (its
    Python thread blocked) is not waited for forever: after --collective_timeout seconds
    without a step the chief stops with the lost-worker message, exit code 4, its last
    checkpoint intact. (A frozen process, SIGSTOP, is caught sooner by the coordination
    service's missed heartbeats, about 10 s; the first test covers a dead one.) The limit is
    one watchdog thread: TensorFlow's own per-collective timeout started a thread for each of
    the toy step's collectives, 14,450 threads after 15 s, and the process aborted."""
    workdir = tmp_path / "run"
    ckpt_dir = str(workdir / "checkpoints")
    args = ["--checkpoint_every=100", "--log_every=100", "--steps_per_loop=50"]
    procs = _start_cluster(
        repo_root, workdir, tmp_path, "a", "--num_steps=100000", "--collective_timeout=5", *args,
        stallable=(1,),
    )  # fmt: skip
    try:
        _wait_for(lambda: _recorded_step(ckpt_dir) >= 200, procs)
        threads = _threads(procs[0].pid)
        procs[1].send_signal(signal.SIGUSR1)
        t0 = time.time()
        code, text = _finish(procs[0], timeout=180)
        waited = time.time() - t0
        assert code == 4, _tail(text)
        assert "lost contact with another worker" in text and "Restart all workers" in text
        assert "no answer within --collective_timeout" in text, _tail(text)
        assert 4 < waited < 60, waited  # about the timeout, not forever
        # 129 measured on 2 cores (TF's pools grow with the cores); a thread per collective
        # was thousands, at any core count
        assert threads < 400 + 8 * len(os.sched_getaffinity(0)), threads
        step = _recorded_step(ckpt_dir)
        assert step >= 200
        assert tf.train.load_checkpoint(os.path.join(ckpt_dir, f"ckpt-{step}")) is not None
        assert procs[1].poll() is None  # the stalled worker was alive all along
    finally:
        procs[1].kill()
        procs[1].wait()
