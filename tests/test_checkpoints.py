"""Damaged or lost checkpoint files never restart a run from step 0 over the good ones: a
resume or a load takes the newest checkpoint that reads back whole and finite, sets a damaged
newer one aside (training) and reaches the state of an uninterrupted run from the older one."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from test_train import _bundle, _config, _weights

from tf_score import api, config
from tf_score.training import checkpoints, loop


def _files(ckpt_dir, step):
    return sorted(glob.glob(os.path.join(ckpt_dir, f"ckpt-{step}.*")))


def _truncate(ckpt_dir, step):
    (data,) = glob.glob(os.path.join(ckpt_dir, f"ckpt-{step}.data-*"))
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)


def _overwrite(ckpt_dir, step):
    (data,) = glob.glob(os.path.join(ckpt_dir, f"ckpt-{step}.data-*"))
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 3)
        f.write(b"\x5a" * 64)


def _nan(ckpt_dir, step):
    """Rewrite checkpoint ``step`` with the same keys, one float tensor set to NaN."""
    prefix = os.path.join(ckpt_dir, f"ckpt-{step}")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_dtype_map())
    tensors = [reader.get_tensor(n) for n in names]
    k = next(i for i, n in enumerate(names) if "model_score" in n and tensors[i].dtype.kind == "f")
    tensors[k] = np.full_like(tensors[k], np.nan)
    for path in _files(ckpt_dir, step):
        os.remove(path)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)  # fmt: skip


def _lose_state(ckpt_dir, step):
    del step
    os.remove(os.path.join(ckpt_dir, "checkpoint"))


def _lose_index(ckpt_dir, step):
    os.remove(os.path.join(ckpt_dir, f"ckpt-{step}.index"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return loop.train(_bundle(), _config(120), str(tmp_path_factory.mktemp("full")))


@pytest.mark.parametrize(
    "damage, falls_back",
    [
        (_truncate, True),
        (_overwrite, True),
        (_nan, True),
        (_lose_index, True),
        (_lose_state, False),
    ],
)
def test_resume_skips_a_damaged_newest_checkpoint_to_the_uninterrupted_state(
    tmp_path, uninterrupted, damage, falls_back
):
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    loop.train(_bundle(), _config(80), workdir)  # ckpt-40, ckpt-80
    older = {p: open(p, "rb").read() for p in _files(ckpt_dir, 40)}
    damage(ckpt_dir, 80)
    # loading for sampling falls back too, and moves nothing (the workdir may be read-only)
    _, step = checkpoints.load_ema_models(_bundle().model_fns, ckpt_dir)
    assert step == (40 if falls_back else 80)
    resumed = loop.train(_bundle(), _config(120), workdir)
    assert resumed.step == 120
    for a, b in zip(_weights(uninterrupted.models), _weights(resumed.models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert {p: open(p, "rb").read() for p in _files(ckpt_dir, 40)} == older  # untouched
    if damage in (_truncate, _overwrite, _nan):  # set aside, kept for inspection
        moved = sorted(os.listdir(os.path.join(ckpt_dir, checkpoints.DAMAGED_DIR)))
        assert moved == ["ckpt-80.data-00000-of-00001", "ckpt-80.index"]
    # the manager knows every checkpoint on disk again
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-120")


def test_every_checkpoint_damaged_stops_with_a_message_and_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    loop.train(_bundle(), _config(80), workdir)
    for step in (40, 80):
        _truncate(ckpt_dir, step)
    before = sorted(os.listdir(ckpt_dir))
    with pytest.raises(
        checkpoints.CheckpointError, match=r"no usable checkpoint .*ckpt-80: unread"
    ):
        checkpoints.load_ema_models(_bundle().model_fns, ckpt_dir)
    assert sorted(os.listdir(ckpt_dir)) == before
    with pytest.raises(checkpoints.CheckpointError, match="no usable checkpoint"):
        loop.train(_bundle(), _config(120), workdir)
    assert not glob.glob(os.path.join(ckpt_dir, "ckpt-12*"))  # nothing trained from step 0


def test_an_explicit_damaged_checkpoint_is_refused(tmp_path):
    loop.train(_bundle(), _config(80), str(tmp_path))
    ckpt_dir = str(tmp_path / "checkpoints")
    _overwrite(ckpt_dir, 40)
    with pytest.raises(checkpoints.CheckpointError, match="ckpt-40 is damaged: unreadable"):
        checkpoints.load_ema_models(
            _bundle().model_fns, ckpt_dir, os.path.join(ckpt_dir, "ckpt-40")
        )
    # a prefix that does not exist is "not found", not "damaged" (issue 29 #6)
    with pytest.raises(checkpoints.CheckpointError, match="ckpt-999 not found"):
        checkpoints.load_ema_models(
            _bundle().model_fns, ckpt_dir, os.path.join(ckpt_dir, "ckpt-999")
        )


def _toy_cfg(**kw):
    base = dict(hidden_units=(32, 32), num_steps=40, batch_size=64, checkpoint_every=40,
                log_every=20, steps_per_loop=20, n_steps_each=2)  # fmt: skip
    return config.from_flat({**base, **kw})


def test_config_json_is_written_only_for_settings_the_checkpoint_holds(tmp_path):
    workdir = str(tmp_path / "run")
    api.train(_toy_cfg(), workdir, progress=False)
    os.remove(api.config_path(workdir))
    with pytest.raises(checkpoints.CheckpointError, match="does not hold this model's variables"):
        api.train(_toy_cfg(hidden_units=(16, 16), num_steps=80), workdir, progress=False)
    assert not os.path.exists(api.config_path(workdir))  # not rewritten with other settings
    result = api.train(_toy_cfg(num_steps=80), workdir, progress=False)  # the original ones
    assert result.step == 80 and api.read_config(workdir).network.hidden_units == (32, 32)


def test_a_workdir_without_checkpoints_takes_new_settings(tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(loop.NonFiniteLossError):
        api.train(_toy_cfg(learning_rate=1e30), workdir, progress=False)
    assert not checkpoints.candidates(os.path.join(workdir, "checkpoints"))
    assert api.train(_toy_cfg(learning_rate=1e-3), workdir, progress=False).step == 40
    assert api.read_config(workdir).optimizer.learning_rate == 1e-3
    with pytest.raises(api.RunError, match="different settings for: learning_rate"):
        api.check_resume(workdir, _toy_cfg(learning_rate=2e-3))
    open(tmp_path / "afile", "w").close()
    with pytest.raises(api.RunError, match="is a file, not a directory"):
        api.check_resume(str(tmp_path / "afile"), _toy_cfg())


def _holder(proc) -> dict:
    import socket

    import psutil

    return {"host": socket.gethostname(), "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time()}  # fmt: skip


def test_a_workdir_held_by_a_live_process_is_refused_and_a_stale_lock_taken_over(tmp_path):
    import json
    import subprocess
    import sys

    from tf_score.training import workdir_lock

    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_lock.LOCK_FILE
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(json.dumps(_holder(live)))
        with pytest.raises(api.RunError, match=rf"in use by another .*PID {live.pid}, started"):
            api.train(_toy_cfg(), str(workdir), progress=False)
        assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]  # nothing written
    finally:
        live.kill()
        live.wait()
    # the holder is gone: its lock is stale, taken over, and released at the end
    assert api.train(_toy_cfg(), str(workdir), progress=False).step == 40
    assert not lock.exists()


def test_a_truncated_config_json_is_a_message_with_the_way_back(tmp_path):
    workdir = str(tmp_path / "run")
    api.train(_toy_cfg(), workdir, progress=False)
    good = open(api.config_path(workdir)).read()
    for text in (good[: len(good) // 2], "", "[]"):
        with open(api.config_path(workdir), "w") as f:
            f.write(text)
        with pytest.raises(api.RunError, match=r"cannot be read as a tf_score config .*delete it"):
            api.load(workdir)
    os.remove(api.config_path(workdir))
    assert api.train(_toy_cfg(num_steps=80), workdir, progress=False).step == 80


def test_an_unwritable_workdir_is_a_message_not_a_traceback(tmp_path):
    """A workdir that cannot be created (here under a regular file; a read-only mount gives
    the same OSError) is a RunError naming it and the flag (issue 29 #7), and the lock
    helper's error does not swallow errors raised while the lock is held."""
    from tf_score import api, config
    from tf_score.training import workdir_lock

    (tmp_path / "file").write_text("x")
    bad = str(tmp_path / "file" / "w")
    with pytest.raises(workdir_lock.WorkdirUnwritableError, match="pass --workdir=DIR"):
        workdir_lock.acquire(bad)
    cfg = config.from_flat(dict(hidden_units=(8,), num_steps=2, log_every=1, checkpoint_every=1))
    with pytest.raises(api.RunError, match=f"cannot write to workdir {bad}"):
        api.train(cfg, bad, progress=False)
    with pytest.raises(PermissionError):  # raised inside the block: not turned into a message
        with workdir_lock.held(str(tmp_path / "ok")):
            raise PermissionError("from the training loop")


def test_a_refused_restore_leaves_no_warnings_for_when_it_is_deleted(tmp_path):
    """A checkpoint of another model is a CheckpointError at once; TF's restore status then
    no longer warns about unrestored values when it is collected (before: a page of warnings
    at interpreter exit, 'I/O operation on closed file' under pytest)."""
    import gc
    import logging

    path = tf.train.Checkpoint(a=tf.Variable(1.0), b=tf.Variable(2.0)).save(str(tmp_path / "c"))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tf.get_logger().addHandler(handler)
    try:
        other = tf.train.Checkpoint(a=tf.Variable(0.0), d=tf.Variable(0.0))
        with pytest.raises(checkpoints.CheckpointError, match="does not hold this model"):
            checkpoints.restore(checkpoints.Restorable(other), path)
        del other
        gc.collect()
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [r.getMessage() for r in records if "restore" in r.getMessage()], records
