"""A checkpoint records the noise grid its weights were trained on (issue 29 #16): a resume
after config.json was deleted (its recovery advice) or a load of a config.json that says
another grid is refused, naming the settings and both values. a4ac31d compared shapes only,
so a sigma_max=20 run resumed as sigma_max=50 and was sampled on the wrong levels.
Checkpoints written before the record load as before (tests/test_a4ac31d.py)."""

import dataclasses
import json
import os

import pytest

from tf_score import api, config
from tf_score.training import checkpoints


def test_a_checkpoint_refuses_another_noise_grid(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = config.from_flat(
        dict(hidden_units=(16, 16), num_steps=20, checkpoint_every=20, log_every=20)
    )
    api.train(cfg, workdir, progress=False)
    os.remove(api.config_path(workdir))  # "delete it and rerun with the original flags"
    longer = {"num_steps": 40}
    with pytest.raises(checkpoints.CheckpointError, match=r"ckpt-20 was trained with "
                       r"sigma_max=20.0 \(not 50.0\): "):  # fmt: skip
        api.train(cfg.replace(noise={"sigma_max": 50.0}, train=longer), workdir, progress=False)
    both = r"trained with sigma_min=1.0 \(not 0.5\), num_levels=10 \(not 5\)"
    with pytest.raises(checkpoints.CheckpointError, match=both):
        api.train(cfg.replace(noise={"num_levels": 5, "sigma_min": 0.5}, train=longer), workdir,
                  progress=False)  # fmt: skip
    assert not os.path.exists(api.config_path(workdir))  # nothing written by the refusals
    assert api.train(cfg.replace(train=longer), workdir, progress=False).step == 40
    ckpt = os.path.join(workdir, "checkpoints", "ckpt-40")
    assert checkpoints.recorded_settings(ckpt) == dataclasses.asdict(cfg.noise)
    # a config.json that says another grid (edited, or written by a run before the record)
    with open(api.config_path(workdir)) as f:
        d = json.load(f)
    d["noise"]["sigma_max"] = 50.0
    with open(api.config_path(workdir), "w") as f:
        json.dump(d, f)
    with pytest.raises(api.RunError, match=r"ckpt-40 was trained with sigma_max=20.0 \(not 50.0\)"):
        api.load(workdir)
