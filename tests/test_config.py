"""The typed experiment config: defaults, validation before any work, JSON round trip, and
the flat config.json of workdirs written before it."""

import json

import pytest

from tf_score import config, sampling
from tf_score.config import ConfigError, ExperimentConfig


def _checked(values: dict) -> ExperimentConfig:
    """``config.from_flat`` and the registries' check of it (family, network, sampler), as the
    flags and ``api.train`` make them."""
    from tf_score import api

    return api.check(config.from_flat(values))


def test_defaults_round_trip_and_replace():
    cfg = ExperimentConfig()
    assert cfg.network.network == "mlp"  # the family's first network
    assert config.ExperimentConfig.from_json(cfg.to_json()) == cfg
    other = cfg.replace(noise={"num_levels": 5}, seed=3)
    assert other.noise.num_levels == 5 and other.seed == 3 and other.noise.sigma_max == 20.0
    assert [d[0] for d in cfg.model_differences(other)] == ["num_levels", "seed"]
    # where the data live may change between a run and its resumption; the sampler too
    moved = cfg.replace(data={"data_dir": "/elsewhere"}, sampler={"sampler": "heun"})
    assert cfg.model_differences(moved) == []
    assert json.loads(cfg.to_json())["network"]["hidden_units"] == [128, 128]


def test_every_field_name_is_unique_and_from_flat_sets_it():
    owner = config.field_names()
    assert owner["sigma_max"] == "noise" and owner["sampler"] == "sampler"
    cfg = config.from_flat(dict(dataset="mnist", network="resnet", channel_mults=["1", "2"]))
    assert cfg.network.channel_mults == (1, 2) and cfg.is_image
    # a name that is no field is a sampler option value, checked against the registry
    assert _checked(dict(step_lr=0.01)).sampler.given() == {"step_lr": 0.01}
    with pytest.raises(ValueError, match="'sigma_begin' is neither a config field nor an option"):
        _checked(dict(sigma_begin=1.0))


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(num_steps=0), "num_steps must be an integer >= 1 and <= 2147483647, got 0"),
        (dict(seed=-1), "seed must be an integer in [0, 2**31), got -1"),
        (dict(learning_rate=float("nan")), "learning_rate must be finite"),
        (dict(step_lr=-1.0), "sampler option step_lr must be a finite number > 0, got -1.0"),
        (dict(sigma_min=0.0), "sigma_min must be > 0.0"),
        (dict(num_levels=1), "with num_levels=1, sigma_max (20.0) must equal sigma_min (1.0)"),
        (dict(model="vae"), "model=vae needs image data, not dataset=two_mode"),
        (dict(model="classifier", dataset="npz", data_path="x.npz"), "needs labelled images"),
        (dict(sampler="leapfrog"), "unknown sampler 'leapfrog'; choose one of annealed_langevin"),
        (dict(cas_eta=1.5), "cas_eta must be a finite number >= 0 and <= 1, got 1.5"),
        (dict(predictor="euler"), "predictor must be one of reverse_diffusion, ancestral"),
        (dict(batch_size=10, grad_accum_steps=3), "replica(s) x grad_accum_steps (3)"),
        (dict(network="edm_mlp"), "network=edm_mlp needs loss=edm"),
        (dict(loss="edm"), "network=mlp needs loss=anneal_dsm"),
        (dict(schedule="karras"), "network=mlp is trained on its levels: schedule=geometric"),
        (dict(network="edm_mlp", loss="edm", parameterization="vp"), "parameterization must"),
        (dict(collective_timeout=20.0), "collective_timeout is for strategy=multi_worker_mirrored"),
    ],
)
def test_invalid_settings_name_the_field(values, message):
    with pytest.raises((ConfigError, sampling.SamplerError)) as err:
        _checked(values)
    assert message in str(err.value)


def test_unknown_json_keys_are_refused():
    d = ExperimentConfig().to_dict()
    d["noise"]["sigma_begin"] = 1.0
    with pytest.raises(ConfigError, match="unknown fields in config section 'noise'"):
        ExperimentConfig.from_dict(d)


@pytest.mark.parametrize(
    "old, model, network",
    [
        ({"model": "mlp"}, "score", "mlp"),
        ({"model": "resnet", "dataset": "mnist"}, "score", "resnet"),
        ({"model": "vae", "dataset": "mnist", "vae_arch": "conv"}, "vae", "conv"),
    ],
)
def test_flat_config_json_of_older_workdirs_is_read(old, model, network):
    flat = {"dataset": "two_mode", "sigma_begin": 5.0, "sigma_end": 0.5, "num_levels": 4,
            "loss": "anneal_dsm", "vae_optimizer": "rmsprop", "data_shape": [2], **old}  # fmt: skip
    cfg = ExperimentConfig.from_dict(flat)
    assert (cfg.network.model, cfg.network.network) == (model, network)
    assert (cfg.noise.sigma_max, cfg.noise.sigma_min) == (5.0, 0.5)
    assert cfg.optimizer.optimizer == ("rmsprop" if model == "vae" else "adam")


def test_emulated_bfloat16_is_warned_about(monkeypatch):
    """mixed_bfloat16 on a CPU without AVX512_BF16 / AMX (emulated, slower than float32)
    logs a warning that names the remedy; float32 and native bfloat16 do not."""
    import keras
    from absl import logging

    from tf_score.families import workdir

    warned = []
    monkeypatch.setattr(logging, "warning", lambda msg, *a: warned.append(msg % a))
    for native, precision, warns in [(False, "mixed_bfloat16", True), (True, "mixed_bfloat16",
                                      False), (False, "float32", False)]:  # fmt: skip
        monkeypatch.setattr(workdir, "native_bfloat16", lambda native=native: native)
        warned.clear()
        workdir.set_precision(precision)
        assert bool(warned) == warns and (not warns or "use --precision=float32" in warned[0])
    keras.mixed_precision.set_global_policy("float32")
