"""Direct tests of ``tf_score.api`` on copies of the committed tiny toy workdirs (a4ac31d):
load, generate (seeding convention, option overrides, snapshots, errors), inpaint, export,
and the workdir checks (resume, config.json, writability). Nothing here trains."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config, sampling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "a4ac31d")


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(os.path.join(DATA, name), dst)
    return str(dst)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return {name: api.load(_copy(root, name)) for name in ("toy_ncsn", "toy_edm")}


def test_load_gives_the_workdirs_config_step_and_ema_model(tmp_path):
    """api.load returns config.json's config, step 300, the ckpt-300 EMA weights and the
    6-level geometric grid 20 -> 1 (rtol 1e-6); an explicit checkpoint prefix gives the same
    weights; no config.json or no checkpoint is a RunError."""
    workdir = _copy(tmp_path, "toy_ncsn")
    run = api.load(workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert run.config == config.ExperimentConfig.from_dict(json.load(f))
    assert run.step == 300 and run.family == "score" and set(run.models) == {"score"}
    assert os.path.basename(run.checkpoint) == "ckpt-300" and run.data_shape == (2,)
    np.testing.assert_allclose(run.sigmas, np.geomspace(20.0, 1.0, 6), rtol=1e-6)
    again = api.load(workdir, checkpoint=run.checkpoint)
    for a, b in zip(run.models["score"].weights, again.models["score"].weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(api.RunError, match=r"has no config\.json"):
        api.load(str(tmp_path / "nothing"))
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    with pytest.raises(api.RunError):
        api.load(workdir)


def test_generate_seeds_each_sample_or_each_batch_and_same_seed_same_samples(runs):
    """Per sample (the default): generate(8, seed=s, batch_size=4) is [draw(4, (s, 0)),
    draw(4, (s, 4))] exactly, the batch from sample i seeded (s, i), and equals one batch of
    8 (float32 round-off); a ragged last batch is draw(2, (s, 4)). seeding="batch": batch b
    is draw(4, (s, b)), one batch of 4 its first half. A repeat is bit-identical; another seed
    differs."""
    run, s = runs["toy_ncsn"], 7
    opts, name = sampling.options_of(run.config.sampler), run.config.sampler.sampler
    for seeding, firsts in (("per_sample", (0, 4)), ("batch", (0, 1))):
        split = api.generate(run, 8, seed=s, batch_size=4, seeding=seeding)
        again = api.generate(run, 8, seed=s, batch_size=4, seeding=seeding)
        np.testing.assert_array_equal(split.samples, again.samples)
        first_half = api.generate(run, 4, seed=s, seeding=seeding).samples
        np.testing.assert_array_equal(split.samples[:4], first_half)
        for b, first in enumerate(firsts):
            want = sampling.draw(name, run.model, run.sigmas, 4, tf.constant([s, first]),
                                 run.space, seeding=seeding, **opts)  # fmt: skip
            np.testing.assert_array_equal(split.samples[4 * b : 4 * b + 4], want.samples.numpy())
        assert not np.allclose(split.samples[:4], split.samples[4:])
        ragged = api.generate(run, 6, seed=s, batch_size=4, seeding=seeding)
        last = sampling.draw(name, run.model, run.sigmas, 2, tf.constant([s, firsts[1]]),
                             run.space, seeding=seeding, **opts)  # fmt: skip
        np.testing.assert_array_equal(ragged.samples[4:], last.samples.numpy())
    whole = api.generate(run, 8, seed=s).samples
    split = api.generate(run, 8, seed=s, batch_size=4).samples
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-5)
    assert not np.allclose(api.generate(run, 4, seed=s + 1).samples, split[:4])


def test_options_override_the_runs_and_num_evals_follows_the_registry(runs):
    """Overrides change the count as each entry's evaluations() says: annealed Langevin on the
    6 levels 6 x 5 = 30 by the run's options, 6 x 2 + 1 = 13 with n_steps_each=2, denoise;
    Heun on 8 karras levels 2 x 8 - 1 = 15, heun_steps=3 gives 5. The run's config is kept."""
    ncsn, edm = runs["toy_ncsn"], runs["toy_edm"]
    assert api.generate(ncsn, 2, seed=0).num_evals == 30
    out = api.generate(ncsn, 2, seed=0, n_steps_each=2, denoise=True)
    entry = sampling.get("annealed_langevin")
    assert out.num_evals == 13 == entry.evaluations(6, {"n_steps_each": 2, "denoise": True})
    kept = sampling.options_of(ncsn.config.sampler)
    assert kept["n_steps_each"] == 5 and kept["denoise"] is False
    assert api.generate(edm, 2, seed=0).num_evals == 15
    assert api.generate(edm, 2, seed=0, heun_steps=3).num_evals == 5
    # a sampler other than the run's, with its own options
    assert api.generate(ncsn, 2, seed=0, sampler="langevin", langevin_steps=7).num_evals == 7


def test_snapshots_are_the_start_then_one_frame_per_step_ending_at_the_samples(runs):
    """Annealed Langevin (6 levels, no denoise): 7 frames of the first batch, the last equal to
    its samples and the first equal to the chain's start (= langevin with 0 steps, which
    returns its uniform start from the same seed); Heun on 8 sigmas: 9 frames, last = samples.
    Exact equality (the same float32 ops)."""
    ncsn, edm = runs["toy_ncsn"], runs["toy_edm"]
    out = api.generate(ncsn, 6, seed=3, batch_size=4, snapshots=True)
    assert out.snapshots.shape == (7, 4, 2)
    np.testing.assert_array_equal(out.snapshots[-1], out.samples[:4])
    start = api.generate(ncsn, 4, seed=3, sampler="langevin", langevin_steps=0)
    assert start.num_evals == 0
    np.testing.assert_array_equal(out.snapshots[0], start.samples)
    heun = api.generate(edm, 5, seed=1, snapshots=True)
    assert heun.snapshots.shape == (9, 5, 2)
    np.testing.assert_array_equal(heun.snapshots[-1], heun.samples)
    assert api.generate(edm, 5, seed=1).snapshots is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampler": "no_such_sampler"}, "no_such_sampler"),
        ({"n_steps_each": 0}, "n_steps_each must be an integer >= 1"),
        ({"step_lr": float("nan")}, "step_lr must be .*a finite number"),
        ({"bogus_option": 1}, "takes options step_lr, n_steps_each, denoise; not bogus_option"),
        ({"sampler": "heun", "heun_steps": 1}, "heun_steps must be 0 .all levels. or >= 2"),
    ],
)
def test_a_bad_sampler_or_option_is_an_error_naming_it(runs, kwargs, message):
    """Unknown samplers and invalid options stop before sampling with ConfigError/SamplerError
    naming the sampler or the option and what it allows."""
    with pytest.raises((config.ConfigError, sampling.SamplerError), match=message):
        api.generate(runs["toy_ncsn"], 2, seed=0, **kwargs)
    with pytest.raises(config.ConfigError, match=r"num_samples must be an integer in \[1, "):
        api.generate(runs["toy_ncsn"], 0)


def test_inpaint_keeps_observed_coordinates_exactly_and_is_seeded(runs):
    """With mask (1, 0) the observed x1 comes back bit-exact and x2 is sampled: the same seed
    gives identical samples, another seed other x2; a full mask returns x_obs exactly; the
    count is the sampler's (Heun on 8 sigmas: 15), and a request over the work cap is refused
    before any work."""
    run = runs["toy_edm"]
    x_obs = np.stack([np.linspace(-6, 6, 16), np.zeros(16)], 1).astype(np.float32)
    mask = np.array([1.0, 0.0], np.float32)
    out = api.inpaint(run, x_obs, mask, seed=4)
    x = out.samples.numpy()
    np.testing.assert_array_equal(x[:, 0], x_obs[:, 0])
    assert np.all(np.isfinite(x[:, 1])) and np.std(x[:, 1]) > 0.1
    np.testing.assert_array_equal(api.inpaint(run, x_obs, mask, seed=4).samples.numpy(), x)
    other = api.inpaint(run, x_obs, mask, seed=5).samples.numpy()
    assert np.max(np.abs(other[:, 1] - x[:, 1])) > 1e-3
    assert int(out.num_evals) == 15
    full = api.inpaint(run, x_obs, np.ones(2, np.float32), seed=4, sampler="annealed_langevin")
    np.testing.assert_array_equal(full.samples.numpy(), x_obs)
    # the work cap of generate: 16 x 15 evaluations of one unit is over 200, 13 would fit
    with pytest.raises(
        sampling.budget.BudgetError, match=r"must be <= 200 .*at most --num_samples=13\b"
    ):
        api.inpaint(run, x_obs, mask, seed=4, max_evaluations=200)
    api.inpaint(run, x_obs, mask, seed=4, max_evaluations=240)


def test_export_round_trip_serves_what_generate_draws(runs, tmp_path):
    """api.export writes export_dir/<workdir name>/<step>; serving_default at seed (s, i) is
    samples i, i + 1, ... of api.generate(seed=s) (per-sample seeding) and sample_heun is
    generate(sampler="heun") (atol 1e-5, float32 graph vs eager ordering); a model name with
    path parts is a RunError."""
    run, s = runs["toy_ncsn"], 11
    path = api.export(run, str(tmp_path / "export"), samplers=("annealed_langevin", "heun"))
    assert path == os.path.join(str(tmp_path / "export"), "toy_ncsn", "300")
    loaded = tf.saved_model.load(path)
    assert {"serving_default", "sample_annealed_langevin", "sample_heun"} <= set(loaded.signatures)
    want = api.generate(run, 6, seed=s, batch_size=3)
    for b in (0, 1):
        got = loaded.signatures["serving_default"](
            num_samples=tf.constant(3), seed=tf.constant([s, 3 * b])
        )
        np.testing.assert_allclose(got["samples"].numpy(), want.samples[3 * b : 3 * b + 3],
                                   atol=1e-5)  # fmt: skip
        assert int(got["num_evals"]) == want.num_evals == 30
    heun = loaded.signatures["sample_heun"](num_samples=tf.constant(4), seed=tf.constant([s, 0]))
    np.testing.assert_allclose(
        heun["samples"].numpy(), api.generate(run, 4, seed=s, sampler="heun").samples, atol=1e-5
    )
    with pytest.raises(config.ConfigError, match="not a TF Serving model name"):
        api.export(run, str(tmp_path / "export"), model_name="../escape")


def test_check_resume_refuses_changed_model_settings_naming_the_field(tmp_path):
    """The run's own config resumes; a moved data_dir or another sampler is allowed; changed
    hidden_units or seed are a RunError naming the field with both values."""
    workdir = _copy(tmp_path, "toy_ncsn")
    cfg = api.read_config(workdir)
    api.check_resume(workdir, cfg)
    api.check_resume(workdir, cfg.replace(data={"data_dir": "/elsewhere"}))
    api.check_resume(workdir, cfg.replace(sampler={"sampler": "heun"}))
    with pytest.raises(
        api.RunError, match=r"different settings for: hidden_units \(was \(32, 32\), now \(16,\)\)"
    ):
        api.check_resume(workdir, cfg.replace(network={"hidden_units": (16,)}))
    with pytest.raises(api.RunError, match=r"seed \(was 3, now 4\)"):
        api.check_resume(workdir, cfg.replace(seed=4))


@pytest.mark.parametrize(
    "text",
    [
        '{"data": 5}',
        '{"bogus_section": {}}',
        "nul",
        '{"network": {"hidden_units": "x"}}',
        '{"seed": "abc"}',
    ],
)
def test_read_config_of_a_garbage_config_json_says_how_to_recover(tmp_path, text):
    """A config.json that is JSON of the wrong shape (or no JSON) is a RunError naming the file
    and the way back ("To recover"), never a raw TypeError/KeyError."""
    workdir = _copy(tmp_path, "toy_ncsn")
    with open(api.config_path(workdir), "w") as f:
        f.write(text)
    with pytest.raises(api.RunError, match=r"(?s)config.json cannot be read.*To recover"):
        api.read_config(workdir)


def test_a_config_json_of_random_bytes_is_the_same_message(tmp_path):
    """Bytes that are not UTF-8 (issue 29 #9: a UnicodeDecodeError traceback before)."""
    workdir = _copy(tmp_path, "toy_ncsn")
    with open(api.config_path(workdir), "wb") as f:
        f.write(bytes(range(128, 256)) * 4)
    with pytest.raises(api.RunError, match=r"(?s)config.json cannot be read.*To recover"):
        api.read_config(workdir)


def test_read_config_with_a_moved_data_dir_changes_only_that(tmp_path):
    """read_config(data_dir=D) is the stored config with data.data_dir = D and nothing else."""
    workdir = _copy(tmp_path, "toy_edm")
    cfg = api.read_config(workdir)
    moved = api.read_config(workdir, data_dir="/data/moved")
    assert moved.data.data_dir == "/data/moved" and cfg.data.data_dir is None
    assert moved.replace(data={"data_dir": None}) == cfg


def test_check_writable_refuses_a_path_under_a_file_and_makes_a_missing_dir(tmp_path):
    """A directory under a regular file cannot be made: RunError naming the path and the flag
    to pass; a missing directory is created and left empty (the probe file is removed)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(api.RunError, match=r"cannot write to .*afile/sub .*--workdir=DIR"):
        api.check_writable(str(afile / "sub"))
    with pytest.raises(api.RunError, match="--output_dir=DIR"):
        api.check_writable(str(afile / "sub"), flag="--output_dir")
    new = tmp_path / "a" / "b"
    api.check_writable(str(new))
    assert new.is_dir() and os.listdir(new) == []
