"""Trained models in the box: EMA weights stored compactly, with their config and provenance.

A pretrained model NAME is the directory ``tf_score/pretrained/NAME/`` (installed with the
package), holding three files:

- ``weights.npz``: the EMA weights of the run's models in float16 (half the size of float32;
  the rounding is part of what the provenance's FID measured), one array per weight, named
  ``<model>/<index>`` in the order of the model's ``weights``;
- ``config.json``: the run's ``ExperimentConfig`` (no data directory);
- ``provenance.json``: how the weights were made (the command, the commit, the step) and what
  they measure (FID at n with its floor, by what command), with the SHA-256 of
  ``weights.npz``, which ``load`` checks before it reads a weight.

``pack`` writes a run's directory; ``load`` gives the ``Run`` of one, as ``api.load`` gives a
workdir's. A pretrained run has no checkpoint to resume: it is for sampling, evaluating and
exporting.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from tf_score import atomic
from tf_score.families import registry
from tf_score.families.run import Run, RunError
from tf_score.families.workdir import read_config, set_precision

#: where the pretrained models are, inside the installed package
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")
WEIGHTS, CONFIG, PROVENANCE = "weights.npz", "config.json", "provenance.json"
#: how to get a shipped file back, in every error about one
_RESTORE = (
    "restore it with `git checkout -- {path}` in a clone of tf_score, or reinstall the package "
    "(`pip install --force-reinstall .`)"
)


def names(root: str = ROOT) -> list[str]:
    """The pretrained models in ``root``, sorted."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, CONFIG)))


def directory(name: str, root: str = ROOT) -> str:
    """The directory of pretrained model ``name`` (RunError naming the choices otherwise)."""
    if name not in names(root):
        raise RunError(f"no pretrained model {name!r}; the choices: {', '.join(names(root))}")
    return os.path.join(root, name)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(name: str, root: str = ROOT) -> dict:
    """The provenance record of pretrained model ``name``."""
    path = os.path.join(directory(name, root), PROVENANCE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({e}); " + _RESTORE.format(path=path)) from e


def _weight_key(model: str, i: int) -> str:
    # by position: Keras numbers unnamed layers per process, so paths are not stable
    return f"{model}/{i}"


def pack(run: Run, name: str, record: dict, root: str = ROOT) -> str:
    """Write ``run``'s EMA weights (float16), config and ``record`` (the provenance: command,
    commit, step, ...) as pretrained model ``name`` in ``root``; returns its directory.
    ValueError if a weight does not fit float16."""
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    arrays = {}
    for model_name, model in run.models.items():
        for i, w in enumerate(model.weights):
            value = np.asarray(w.numpy(), np.float32)
            if np.abs(value).max(initial=0.0) > np.finfo(np.float16).max:
                raise ValueError(f"{w.path} of {model_name} does not fit float16")
            arrays[_weight_key(model_name, i)] = value.astype(np.float16)
    weights_path = os.path.join(out, WEIGHTS)
    tmp = f"{weights_path}.tmp-{os.getpid()}.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, weights_path)
    cfg = run.config.replace(data={"data_dir": None})
    atomic.write_json(os.path.join(out, CONFIG), cfg.to_dict())
    record = {**record, "step": run.step, "weights_sha256": sha256(weights_path),
              "weights_bytes": os.path.getsize(weights_path),
              "weights_dtype": "float16"}  # fmt: skip
    atomic.write_json(os.path.join(out, PROVENANCE), record)
    return out


def update_provenance(name: str, values: dict, root: str = ROOT) -> dict:
    """Add ``values`` (e.g. a measured FID) to the provenance of ``name``; returns it."""
    record = {**provenance(name, root), **values}
    atomic.write_json(os.path.join(directory(name, root), PROVENANCE), record)
    return record


def _checked_weights(name: str, root: str, record: dict):
    path = os.path.join(directory(name, root), WEIGHTS)
    if not os.path.isfile(path):
        raise RunError(f"pretrained model {name!r}: its weights file {path} is missing; "
                       + _RESTORE.format(path=path))  # fmt: skip
    if sha256(path) != record.get("weights_sha256"):
        raise RunError(f"pretrained model {name!r}: {path} is damaged (its SHA-256 is not the "
                       "one in provenance.json); " + _RESTORE.format(path=path))  # fmt: skip
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def load(name: str, data_dir: str | None = None, root: str = ROOT) -> Run:
    """The ``Run`` of pretrained model ``name``: its config, and models holding its weights
    once ``weights.npz`` matches the checksum in its provenance (RunError naming the file and
    how to get it back otherwise). ``data_dir``: where the data set lives, for evaluation."""
    record = provenance(name, root)
    where = directory(name, root)
    cfg = read_config(where, data_dir)
    family = registry.of(cfg)
    if family.model_fns is None:
        raise RunError(f"pretrained model {name!r}: {family.name} runs have no pretrained form")
    arrays = _checked_weights(name, root, record)
    set_precision(cfg.network.precision)
    models = {}
    for model_name, fn in family.model_fns(cfg).items():
        model = models[model_name] = fn()
        for i, w in enumerate(model.weights):
            key = _weight_key(model_name, i)
            if key not in arrays or arrays[key].shape != tuple(w.shape):
                raise RunError(f"pretrained model {name!r}: weight {key} ({w.path}, shape "
                               f"{tuple(w.shape)}) is not in its weights.npz; it was made by "
                               "another version of the network")  # fmt: skip
            w.assign(arrays[key].astype(w.dtype))
    return Run(
        where, cfg, models, int(record["step"]), os.path.join(where, WEIGHTS), read_only=True
    )
