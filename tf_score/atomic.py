"""Files written whole or not at all: a temporary name, then a rename over the target, so an
interrupted write leaves the previous file (local paths, GCS, HDFS)."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def save_npz(path: str, **arrays) -> None:
    """``np.savez`` to ``path`` atomically."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
