"""One checkpoint inventory for every entry point (issue 29 #1-#5): a refusal stays a refusal
until --restart_from_scratch, orphaned data files are reported and never deleted or
overwritten, a fall-back to an older checkpoint is always announced, retention holds exactly
across restarts, and a reader racing a trainer that rotates its checkpoints takes the next
newest good one. Last, random damage between short resumes: no good checkpoint is ever lost
and the step never goes back without a message."""

import glob
import json
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from test_checkpoints import _toy_cfg, _truncate
from test_train import _bundle, _config

from tf_score import api
from tf_score.training import checkpoints, loop


def _snapshot(directory) -> dict:
    """{relative path: bytes} of every file under ``directory``."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = fh.read()
    return out


def _start_step(workdir) -> int:
    with open(os.path.join(workdir, "train_summary.json")) as f:
        return json.load(f)["start_step"]


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def _index_steps(ckpt_dir) -> list[int]:
    names = glob.glob(os.path.join(ckpt_dir, "ckpt-*.index"))
    return sorted(int(os.path.basename(n)[5:-6]) for n in names)


# --- 1. every checkpoint damaged: refused, nothing moved, until --restart_from_scratch ----------


def test_a_workdir_without_a_good_checkpoint_is_refused_until_restart_from_scratch(tmp_path):
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    loop.train(_bundle(), _config(80), workdir)  # ckpt-40, ckpt-80
    for step in (40, 80):
        _truncate(ckpt_dir, step)
    before = _snapshot(ckpt_dir)
    for _ in range(2):  # the second identical run refuses too: the first moved nothing
        with pytest.raises(checkpoints.CheckpointError) as err:
            loop.train(_bundle(), _config(120), workdir)
        assert _snapshot(ckpt_dir) == before  # nothing moved, nothing written
        message = str(err.value)
        assert "no usable checkpoint" in message and "ckpt-80: unreadable" in message
        assert "--restart_from_scratch" in message
    # files set aside earlier (as a4ac31d did before refusing) still make it a refusal
    checkpoints.set_aside(checkpoints.inventory(ckpt_dir).entries[0])  # ckpt-80
    with pytest.raises(checkpoints.CheckpointError, match=r"set aside before: damaged/ckpt-80"):
        loop.train(_bundle(), _config(120), workdir)
    damaged = _snapshot(ckpt_dir)
    result = loop.train(_bundle(), _config(120), workdir, restart_from_scratch=True)
    assert result.step == 120 and _start_step(workdir) == 0
    aside = _snapshot(os.path.join(ckpt_dir, checkpoints.DAMAGED_DIR))
    assert sorted(aside.values()) == sorted(damaged[k] for k in damaged if "ckpt-" in k)  # kept
    # with a good checkpoint the flag resumes as usual (the same command reruns after a stop)
    assert loop.train(_bundle(), _config(160), workdir, restart_from_scratch=True).step == 160
    assert _start_step(workdir) == 120


def test_run_train_refuses_with_one_message_and_restarts_only_when_asked(repo_root, tmp_path):
    from test_cli import _run

    workdir = tmp_path / "run"
    api.train(_toy_cfg(num_steps=20, checkpoint_every=10, log_every=10), str(workdir))
    args = ["--hidden_units=32,32", "--num_steps=20", "--checkpoint_every=10",
            "--log_every=10", "--noprogress", f"--workdir={workdir}"]  # fmt: skip
    ckpt_dir = str(workdir / "checkpoints")
    for step in (10, 20):
        _truncate(ckpt_dir, step)
    before = _snapshot(ckpt_dir)
    proc = _run(repo_root, "run_train.py", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert _snapshot(ckpt_dir) == before  # nothing moved
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--restart_from_scratch" in errors[0], proc.stderr[-2000:]
    assert ckpt_dir in errors[0] and "Traceback" not in proc.stderr
    proc = _run(repo_root, "run_train.py", *args, "--restart_from_scratch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained to step 20" in proc.stdout and "training from step 0" in proc.stderr
    kept = sorted(os.listdir(os.path.join(ckpt_dir, checkpoints.DAMAGED_DIR)))
    assert kept == sorted(k for k in before if k.startswith("ckpt-"))


# --- 2. and 3. orphaned data files ------------------------------------------------------------


def test_orphaned_data_files_are_refused_then_kept_never_deleted_or_overwritten(tmp_path):
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    loop.train(_bundle(), _config(120, keep_checkpoints=3), workdir)  # ckpt-40, 80, 120
    for index in glob.glob(os.path.join(ckpt_dir, "*.index")):
        os.remove(index)
    data = {k: v for k, v in _snapshot(ckpt_dir).items() if ".data-" in k}
    with pytest.raises(checkpoints.CheckpointError, match=r"ckpt-120: orphaned: ckpt-120\.data"):
        loop.train(_bundle(), _config(160, keep_checkpoints=3), workdir)
    assert {k: v for k, v in _snapshot(ckpt_dir).items() if ".data-" in k} == data
    result = loop.train(_bundle(), _config(160, keep_checkpoints=3), workdir,
                        restart_from_scratch=True)  # fmt: skip
    assert result.step == 160 and _start_step(workdir) == 0
    # the new run wrote ckpt-40 ... ckpt-160 beside them, the orphans are untouched
    assert _snapshot(os.path.join(ckpt_dir, checkpoints.ORPHANED_DIR)) == data
    assert _index_steps(ckpt_dir) == [80, 120, 160]


def test_a_lost_newest_index_is_announced_and_its_data_kept_aside(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    api.train(_toy_cfg(num_steps=80), workdir, progress=False)  # ckpt-40, ckpt-80
    os.remove(os.path.join(ckpt_dir, "ckpt-80.index"))
    (orphan,) = glob.glob(os.path.join(ckpt_dir, "ckpt-80.data-*"))
    orphan_bytes = open(orphan, "rb").read()
    caplog.clear()
    run = api.load(workdir)  # sampling and export load this way
    assert run.step == 40
    assert "ckpt-80.data-00000-of-00001 has no ckpt-80.index; loading ckpt-40" in _warnings(caplog)
    assert os.path.exists(orphan)  # a reader moves nothing
    caplog.clear()
    assert api.train(_toy_cfg(num_steps=120), workdir, progress=False).step == 120
    said = _warnings(caplog)
    assert "ckpt-80.data-00000-of-00001 has no ckpt-80.index" in said
    assert "resuming from ckpt-40 (step 40)" in said
    kept = os.path.join(ckpt_dir, checkpoints.ORPHANED_DIR, os.path.basename(orphan))
    assert open(kept, "rb").read() == orphan_bytes  # not overwritten by the new ckpt-80
    assert _index_steps(ckpt_dir) == [40, 80, 120]


# --- 4. retention -------------------------------------------------------------------------------


def test_retention_holds_exactly_across_restarts(tmp_path):
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    kw = dict(keep_checkpoints=3, checkpoint_every=20, steps_per_loop=10)
    for session in range(1, 7):  # 2 checkpoints a session, 5 restarts
        loop.train(_bundle(), _config(40 * session, **kw), workdir)
        want = [s for s in range(20, 40 * session + 1, 20)][-3:]
        assert _index_steps(ckpt_dir) == want, session
        state = tf.train.get_checkpoint_state(ckpt_dir)
        assert [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] == want


# --- 5. a reader against a trainer --------------------------------------------------------------


def test_a_reader_whose_checkpoint_is_removed_meanwhile_takes_the_next(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    api.train(_toy_cfg(num_steps=80), workdir, progress=False)  # ckpt-40, ckpt-80
    restore = tf.train.Checkpoint.restore
    removed = []

    def rotated_meanwhile(self, path, *args, **kwargs):
        # the trainer's manager deletes the checkpoint between the reader's choice and restore
        if not removed:
            removed.extend(glob.glob(path + ".*"))
            for f in removed:
                os.remove(f)
        return restore(self, path, *args, **kwargs)

    monkeypatch.setattr(tf.train.Checkpoint, "restore", rotated_meanwhile)
    run = api.load(workdir)
    assert run.step == 40 and run.checkpoint.endswith("ckpt-40")
    assert [os.path.basename(f) for f in sorted(removed)] == [
        "ckpt-80.data-00000-of-00001", "ckpt-80.index"
    ]  # fmt: skip


def test_a_reader_loads_while_a_trainer_rotates_its_checkpoints(tmp_path):
    """api.load (what run_sample.py and the export use) in a thread, again and again, while
    the trainer saves after every step and keeps one: every load succeeds."""
    workdir = str(tmp_path / "run")
    kw = dict(checkpoint_every=1, keep_checkpoints=1, steps_per_loop=1, log_every=50)
    api.train(_toy_cfg(num_steps=1, **kw), workdir, progress=False)
    done, loads, errors = threading.Event(), [], []

    def reader():
        while not done.is_set():
            try:
                loads.append(api.load(workdir).step)
            except Exception as e:  # any error is the failure to report
                errors.append(f"{type(e).__name__}: {str(e)[:300]}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        api.train(_toy_cfg(num_steps=80, **kw), workdir, progress=False)
    finally:
        done.set()
        thread.join()
    assert not errors, (len(errors), len(loads), errors[:3])
    assert len(loads) >= 3 and loads == sorted(loads) and loads[-1] > 1


# --- random damage between resumes -------------------------------------------------------------

OPS = ("truncate", "delete_index", "delete_data", "flip", "delete_state")
KEEP, EVERY = 3, 10


def cfg(num_steps):
    return _config(num_steps, keep_checkpoints=KEEP, checkpoint_every=EVERY, steps_per_loop=EVERY)


def _damage(ckpt_dir, op, step) -> bool:
    """Apply ``op`` to checkpoint ``step`` (True: its files changed)."""
    prefix = os.path.join(ckpt_dir, f"ckpt-{step}")
    data = glob.glob(prefix + ".data-*")
    if op == "delete_state":
        state = os.path.join(ckpt_dir, "checkpoint")
        if os.path.exists(state):
            os.remove(state)
        return False
    if op == "delete_index":
        os.remove(prefix + ".index")
    elif op == "delete_data":
        for f in data:
            os.remove(f)
    elif op == "truncate":
        with open(data[0], "r+b") as f:
            f.truncate(os.path.getsize(data[0]) // 2)
    else:  # flip bytes in the middle
        with open(data[0], "r+b") as f:
            f.seek(os.path.getsize(data[0]) // 2)
            chunk = f.read(16)
            f.seek(-len(chunk), 1)
            f.write(bytes(b ^ 0xFF for b in chunk))
    return True


def _snapshot_of(prefix) -> dict:
    return {os.path.basename(f): open(f, "rb").read() for f in glob.glob(prefix + ".*")}


def _damage_some(ckpt_dir, rng) -> set[int]:
    """One or two random operations on random checkpoints; the steps whose files changed."""
    hit = set()
    for _ in range(int(rng.integers(1, 3))):
        op = OPS[int(rng.integers(len(OPS)))]
        pattern = "ckpt-*.index" if op == "delete_index" else "ckpt-*.data-*"
        steps = sorted(
            {int(os.path.basename(f).split(".")[0][5:])
             for f in glob.glob(os.path.join(ckpt_dir, pattern))}
        )  # fmt: skip
        if steps:
            step = steps[int(rng.integers(len(steps)))]
            if _damage(ckpt_dir, op, step):
                hit.add(step)
    return hit


@pytest.mark.parametrize("seed", [0, 1])
def test_random_damage_between_resumes_never_loses_a_good_checkpoint(tmp_path, caplog, seed):
    rng = np.random.default_rng(seed)
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    reached = 20
    loop.train(_bundle(), cfg(reached), workdir)
    for _ in range(5):
        prefixes = {s: os.path.join(ckpt_dir, f"ckpt-{s}") for s in _index_steps(ckpt_dir)}
        good = {s: p for s, p in prefixes.items() if checkpoints.problem(p) is None}
        files = {s: _snapshot_of(p) for s, p in good.items()}
        hit = _damage_some(ckpt_dir, rng)
        survivors = set(good) - hit
        damaged_files = sorted(v for s in hit for v in _snapshot_of(good[s]).values())
        target = reached + 20
        caplog.clear()
        before = _snapshot(ckpt_dir)
        try:
            loop.train(_bundle(), cfg(target), workdir)
        except checkpoints.CheckpointError as e:
            assert _snapshot(ckpt_dir) == before  # a refusal changes nothing
            assert not survivors and "--restart_from_scratch" in str(e)
            loop.train(_bundle(), cfg(target), workdir, restart_from_scratch=True)
        start = _start_step(workdir)
        assert start == max(survivors, default=0)
        if start < reached:  # the step went back: said so, naming the newest
            assert f"ckpt-{reached}" in _warnings(caplog), (start, reached)
        # no good checkpoint lost: the survivors are there, byte for byte, unless retention
        # dropped them for newer ones; retention is exact
        new = set(range(start + EVERY, target + 1, EVERY))
        kept = sorted(survivors | new)[-KEEP:]
        assert _index_steps(ckpt_dir) == kept
        for s in survivors & set(kept):
            assert _snapshot_of(good[s]) == files[s]
        # what was damaged is kept aside, byte for byte
        aside = [v for k, v in _snapshot(ckpt_dir).items() if os.sep in k]
        for content in damaged_files:
            assert content in aside
        reached = target


def test_the_state_file_names_checkpoints_relative_to_it_with_timestamps(tmp_path):
    """``write_state`` goes through TF's public v1 ``update_checkpoint_state``, which writes the
    names as given: relative (the workdir may move) and with deletable timestamps."""
    checkpoints.write_state(str(tmp_path), [str(tmp_path / "ckpt-1"), str(tmp_path / "ckpt-2")])
    text = (tmp_path / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-2"' in text and str(tmp_path) not in text
    assert text.count("all_model_checkpoint_timestamps") == 2
    assert "last_preserved_timestamp" in text
