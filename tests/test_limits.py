"""Every count and seed has a stated range, checked in the type it is computed in, and a run
whose files no longer match what it depends on is refused naming the field (issue 41's probe
rows: each silently wrong result or traceback found there is a test here)."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config, sampling
from tf_score.training import loop

A4AC31D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "a4ac31d")
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def ncsn(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits") / "toy_ncsn"
    shutil.copytree(os.path.join(A4AC31D, "toy_ncsn"), workdir)
    return api.load(str(workdir))


def test_a_served_step_count_that_overflowed_int32_is_refused_before_any_work(ncsn, tmp_path):
    """The probe: sample_annealed_langevin with num_samples 1 and n_steps_each 2**31 - 1 passed
    the cap (the work N T + 1 wrapped in int32) and ran for days. Now the work is float64: the
    request is refused by the cap, naming it, and nothing is sampled."""
    path = api.export(ncsn, str(tmp_path / "export"), samplers=("annealed_langevin",))
    sig = tf.saved_model.load(path).signatures["sample_annealed_langevin"]
    request = dict(num_samples=tf.constant(1), seed=tf.constant([0, 0]),
                   step_lr=tf.constant(0.05), n_steps_each=tf.constant(INT32_MAX))  # fmt: skip
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be <= (1000000|2147483647)"):
        sig(**request)
    ok = sig(**{**request, "n_steps_each": tf.constant(2)})
    assert int(ok["num_evals"]) == 6 * 2 + 0  # the run's denoise is off


@pytest.mark.parametrize(
    "options, message",
    [
        ({"n_steps_each": 10**12}, "n_steps_each must be an integer >= 1 and <= 2147483647"),
        ({"sampler": "langevin", "langevin_steps": 2**32 + 1}, "langevin_steps must be an integer"),
        ({"n_steps_each": INT32_MAX}, "at most 2147483647 are allowed"),
    ],
)
def test_step_counts_past_int32_are_refused_not_wrapped(ncsn, options, message):
    """n_steps_each 10**12 returned the uniform start with rc 0, langevin_steps 2**32 + 1 the
    samples of 1 step: the counts wrapped in int32. Now each is out of its range, and so is a
    draw whose evaluations per sample (N T + 1 on 6 levels) would pass 2**31 - 1."""
    with pytest.raises(sampling.SamplerError, match=message):
        api.generate(ncsn, 2, seed=0, **options)
    cfg = config.from_flat(options)
    if "at most" not in message:  # the same values in a config: refused when checked
        with pytest.raises(config.ConfigError, match=message.split(" must")[0]):
            api.check(cfg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*31\), got 4294967296"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*31\), got -1"),
        ({"seed": "0"}, r"seed must be an integer in \[0, 2\*\*31\), got '0'"),
        ({"num_samples": 2.5}, r"num_samples must be an integer in \[1, 2147483647\], got 2.5"),
        ({"batch_size": -1}, r"batch_size must be an integer in \[0, 2147483647\], got -1"),
    ],
)
def test_api_seeds_and_counts_are_checked_not_wrapped(ncsn, kwargs, message):
    """api.generate's seed wrapped modulo 2**32 (2**32 gave seed 0's samples); a num_samples
    of 2.5 or a seed of '0' were raw TypeError / ValueError. The CLI's rule, in the API."""
    call = {"num_samples": 2, "seed": 0, **kwargs}
    with pytest.raises(config.ConfigError, match=message):
        api.generate(ncsn, call.pop("num_samples"), **call)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(num_steps=10**19), "num_steps must be an integer >= 1 and <= 2147483647"),
        (dict(batch_size=10**12), "batch_size must be an integer >= 1 and <= 2147483647"),
        (dict(learning_rate=1e39), "learning_rate must be finite in float32"),
        (dict(num_levels=10**6), "num_levels must be an integer >= 1 and <= 100000"),
    ],
)
def test_config_counts_and_floats_have_ranges(values, message):
    """--num_steps=10**19 was written to config.json; --batch_size=10**12 was a traceback
    after it; --learning_rate=1e39 (inf in float32) stopped training at step 2."""
    with pytest.raises(config.ConfigError, match=message):
        config.from_flat(values)


def _toy_config(steps: int = 20) -> config.ExperimentConfig:
    return config.ExperimentConfig(
        network=config.NetworkConfig(network="mlp", hidden_units=(8, 8)),
        train=config.TrainConfig(num_steps=steps, checkpoint_every=10, log_every=10),
    )


def _files(root) -> dict:
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


def test_a_finished_run_rerun_changes_nothing(tmp_path):
    """Rerunning a finished run wrote final_loss NaN into train_summary.json (and new events);
    now it writes nothing and returns the recorded loss."""
    workdir = str(tmp_path / "toy")
    first = api.train(_toy_config(), workdir, progress=False)
    before = _files(workdir)
    again = api.train(_toy_config(), workdir, progress=False)
    assert _files(workdir) == before
    assert again.step == 20 and again.loss == pytest.approx(first.loss)
    with open(os.path.join(workdir, "train_summary.json")) as f:
        assert np.isfinite(json.load(f)["final_loss"])


def test_a_config_json_without_the_data_mean_is_refused_naming_it(ncsn, tmp_path):
    """Without data_mean the deterministic solvers started elsewhere (samples up to 0.19
    off) with rc 0; now loading names the field and the way back."""
    workdir = tmp_path / "toy_ncsn"
    shutil.copytree(ncsn.workdir, workdir)
    with open(workdir / "config.json") as f:
        d = json.load(f)
    del d["data"]["data_mean"]
    (workdir / "config.json").write_text(json.dumps(d))
    with pytest.raises(api.RunError, match="lacks data_mean, which training records"):
        api.load(str(workdir))


def test_a_config_json_of_a_newer_version_is_refused():
    d = config.ExperimentConfig().to_dict()
    assert d["version"] == config.CONFIG_VERSION
    with pytest.raises(config.ConfigError, match="written by a newer tf_score"):
        config.ExperimentConfig.from_dict({**d, "version": config.CONFIG_VERSION + 1})


def test_resuming_on_data_of_another_shape_is_refused_naming_both(tmp_path):
    """An 8x8 npz run resumed with 16x16 images trained on and rewrote data_shape."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "images.npz"
    np.savez(npz, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    cfg = config.from_flat(dict(
        dataset="npz", data_path=str(npz), network="resnet", ngf=4, channel_mults=[1],
        num_res_blocks=1, num_steps=2, checkpoint_every=2, log_every=2, batch_size=8,
        sigma_max=1.0, sigma_min=0.1, num_levels=2,
    ))  # fmt: skip
    workdir = str(tmp_path / "run")
    api.train(cfg, workdir, progress=False)
    before = _files(workdir)
    np.savez(npz, images=rng.integers(0, 256, (64, 16, 16, 1), dtype=np.uint8))
    with pytest.raises(api.RunError, match=r"shape \(8, 8, 1\); the data given now have shape "
                                           r"\(16, 16, 1\)"):  # fmt: skip
        api.train(cfg.replace(train={"num_steps": 4}), workdir, progress=False)
    assert _files(workdir) == before


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A full disk was a 93-line ResourceExhaustedError [Op:SaveV2]. Now the save of step 20
    fails as one line naming ckpt-10, which stays, and the run resumes from it."""
    workdir = str(tmp_path / "toy")
    save = tf.train.CheckpointManager.save

    def full(self, checkpoint_number=None, **kw):
        if checkpoint_number == 20:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return save(self, checkpoint_number=checkpoint_number, **kw)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    with pytest.raises(loop.DiskFullError) as err:
        api.train(_toy_config(), workdir, progress=False)
    message = str(err.value)
    assert "\n" not in message and "no space left to write the checkpoint of step 20" in message
    assert "ckpt-10, is kept" in message
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    resumed = api.train(_toy_config(), workdir, progress=False)
    assert resumed.step == 20


def test_sampler_flags_on_a_run_without_solvers_are_refused_naming_the_flag():
    """--sampler=heun on a VAE workdir was ignored with rc 0; run_sample.py now asks the
    run's family what it answers (``Family.refuse``) before any work."""
    cfg = config.from_flat(dict(model="vae", dataset="mnist"))
    with pytest.raises(config.ConfigError, match="--sampler does not apply to a vae run"):
        api.of(cfg).refuse(cfg, "solvers", "--sampler")
    api.of(cfg).refuse(cfg, "evaluate", "--evaluate")  # what a VAE answers passes


def test_a_misspelt_setting_is_refused_for_every_family():
    """A name that is no field goes to the sampler's values (the config is data); the check
    refuses it for a family without solvers too, naming it (it was accepted for a VAE)."""
    for family in ("vae", "score"):
        net = "conv" if family == "vae" else "resnet"
        cfg = config.from_flat(dict(model=family, network=net, dataset="mnist", num_stpes=500))
        with pytest.raises(config.ConfigError, match="'num_stpes' is neither a config field"):
            api.check(cfg)
