"""Post-hoc EMA (EDM2): the profile widths, the inner products, the in-training update and the
reconstruction of an EMA length that was never tracked."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_score.training import posthoc_ema as P


def test_gamma_of_edm2_widths_and_round_trip():
    """EDM2 stores sigma_rel 0.05 and 0.10, gamma 16.97 and 6.94 (its section 3.1); sigma_rel
    of gamma inverts it to 1e-12; widths outside (0, 1/sqrt(12)) are refused."""
    assert P.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert P.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert P.gamma_to_sigma_rel(P.sigma_rel_to_gamma(s)) == pytest.approx(s, abs=1e-12)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ValueError, match="sigma_rel must be in"):
            P.sigma_rel_to_gamma(bad)


def test_profile_inner_matches_quadrature():
    """<p_a, p_b> against a midpoint sum over 200,000 cells of [0, min(t_a, t_b)], both
    orders of the ends (relative 1e-6)."""
    for t_a, g_a, t_b, g_b in [
        (1000, 6.94, 2500, 16.97),
        (2500, 6.94, 1000, 16.97),
        (7, 2, 7, 0.5),
    ]:
        m = min(t_a, t_b)
        tau = (np.arange(200_000) + 0.5) * m / 200_000
        pa = (g_a + 1) * tau**g_a / t_a ** (g_a + 1)
        pb = (g_b + 1) * tau**g_b / t_b ** (g_b + 1)
        want = np.sum(pa * pb) * m / 200_000
        assert P.profile_inner(t_a, g_a, t_b, g_b) == pytest.approx(want, rel=1e-6)


def test_power_beta_updates_average_with_the_power_profile():
    """theta(t) = t tracked with beta_t for 3,000 updates: the continuous profile's mean is
    (gamma + 1) / (gamma + 2) t; the discrete sum is within 0.1% of it (its offset is
    O(1/t)); the first update copies the weights (beta_1 = 0)."""
    gamma = P.sigma_rel_to_gamma(0.1)
    assert float(P.power_beta(1, gamma)) == 0.0
    avg = 0.0
    betas = P.power_beta(tf.range(1, 3001), gamma).numpy()
    for t, beta in enumerate(betas, start=1):
        avg = beta * avg + (1 - beta) * t
    assert avg == pytest.approx((gamma + 1) / (gamma + 2) * 3000, rel=1e-3)


def _tracked(gamma: float, steps: int, every: int):
    """The power EMA of a two-parameter 'training' path, and its snapshots every ``every``."""
    avg, snaps = np.zeros(2), []
    for t in range(1, steps + 1):
        theta = np.array([np.sin(t / 300.0) + t / 1000.0, np.cos(t / 77.0)])
        beta = (1 - 1 / t) ** (gamma + 1)
        avg = beta * avg + (1 - beta) * theta
        if t % every == 0:
            snaps.append((t, gamma, [avg.copy()]))
    return avg, snaps


def test_reconstruction_matches_an_ema_that_was_tracked():
    """Snapshots of the 0.05 and 0.10 profiles every 200 of 4,000 steps rebuild the 0.07 and
    0.15 profiles at step 4,000 (measured errors 1.3e-4 and 3.6e-4 on values of 0.1-4;
    tolerance 1e-3); asking for a stored profile gives that snapshot's weights (1e-6);
    a target before every snapshot is refused."""
    g1, g2 = P.sigma_rel_to_gamma(0.05), P.sigma_rel_to_gamma(0.10)
    snaps = _tracked(g1, 4000, 200)[1] + _tracked(g2, 4000, 200)[1]
    for sigma_rel in (0.07, 0.15):
        want = _tracked(P.sigma_rel_to_gamma(sigma_rel), 4000, 4000)[0]
        got = P.reconstruct(snaps, 4000, sigma_rel)[0]
        np.testing.assert_allclose(got, want, atol=1e-3)
    stored = next(s for s in snaps if s[0] == 3000 and s[1] == g2)[2][0]
    np.testing.assert_allclose(P.reconstruct(snaps, 3000, 0.10)[0], stored, atol=1e-6)
    with pytest.raises(ValueError, match="no post-hoc EMA snapshot"):
        P.reconstruct(snaps, 100, 0.1)


def test_coefficients_are_an_average():
    """With 3 snapshots per profile (steps 20, 40, 60) the unconstrained fit sums to 1.022,
    which would scale the weights by 2%; the constrained one sums to 1 (1e-9)."""
    g1, g2 = P.sigma_rel_to_gamma(0.05), P.sigma_rel_to_gamma(0.10)
    x = P.solve_coefficients([20, 40, 60] * 2, [g1] * 3 + [g2] * 3, 60, P.sigma_rel_to_gamma(0.07))
    assert x.sum() == pytest.approx(1.0, abs=1e-9)


# --- in training: the profiles, their snapshots, a resume, the reconstruction ---------------


def _toy_bundle():
    from tf_score import config
    from tf_score.families import score_model

    cfg = config.from_flat(dict(hidden_units=(16, 16), n_steps_each=2, denoise=False))
    return score_model.toy_bundle(cfg)


def _train_config(num_steps, **kw):
    from tf_score.config import TrainConfig

    base = dict(num_steps=num_steps, batch_size=32, log_every=20, checkpoint_every=20,
                steps_per_loop=10, ema_rate=0.9, posthoc_ema=(0.05, 0.10))  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _flat(models):
    return [w.numpy().astype(np.float64) for m in models.values() for w in m.weights]


def test_each_profile_is_the_power_ema_of_the_live_weights():
    """25 steps one at a time: each profile's weights equal the power-function EMA of the live
    weights after each step, computed here in float64 with beta_t = (1 - 1/t)^(gamma + 1)
    (float32 accumulation: 1e-5); the usual EMA is untouched by them."""
    from tf_score.training.step import TrainStep

    bundle = _toy_bundle()
    step = TrainStep(bundle, _train_config(25), seed=0)
    it = iter(tf.distribute.get_strategy().distribute_datasets_from_function(
        lambda ctx: bundle.dataset_fn(32, ctx, 0)))  # fmt: skip
    train_loop = step.make_train_loop(it)
    gammas = [P.sigma_rel_to_gamma(s) for s in (0.05, 0.10)]
    want = [None, None]
    for t in range(1, 26):
        train_loop(tf.constant(1, tf.int64))
        live = _flat(step.models)
        for k, g in enumerate(gammas):
            beta = (1.0 - 1.0 / t) ** (g + 1.0)
            want[k] = (
                live
                if t == 1
                else [beta * a + (1 - beta) * w for a, w in zip(want[k], live, strict=True)]
            )
    for k in range(2):
        for got, w in zip(_flat(step.profiles[k]), want[k], strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    assert not np.allclose(_flat(step.profiles[0])[0], _flat(step.ema_models)[0])


def test_snapshots_resume_and_reconstruction(tmp_path):
    """Snapshots with every checkpoint (steps 20, 40, 60); a run stopped at 40 and resumed
    writes the same step-60 snapshot as one straight run (the profiles are in the
    checkpoint); ``api.load(posthoc_sigma_rel=0.10)`` gives the stored 0.10 profile (1e-5);
    a width never tracked (0.07) rebuilt from the 0.05 and 0.10 snapshots lands on the 0.07
    profile tracked beside them; a run without snapshots, a width out of range are refused."""
    from tf_score import api, config
    from tf_score.families import score_model

    cfg = config.from_flat(
        dict(hidden_units=(16, 16), n_steps_each=2, denoise=False, num_steps=60, batch_size=32,
             log_every=20, checkpoint_every=20, steps_per_loop=10, ema_rate=0.9,
             posthoc_ema=(0.05, 0.10, 0.07))
    )  # fmt: skip
    api.train(cfg, str(tmp_path / "full"), progress=False)
    api.train(cfg.replace(train={"num_steps": 40}), str(tmp_path / "part"), progress=False)
    api.train(cfg, str(tmp_path / "part"), progress=False)
    names = sorted(os.listdir(tmp_path / "full" / P.SNAPSHOT_DIR))
    assert names == ["snapshot-20.npz", "snapshot-40.npz", "snapshot-60.npz"]
    full, resumed = (tmp_path / d / P.SNAPSHOT_DIR / "snapshot-60.npz" for d in ("full", "part"))
    with np.load(full) as a, np.load(resumed) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    model_fns = score_model.toy_bundle(cfg).model_fns
    snaps = P.load_snapshots(str(tmp_path / "full"), model_fns)
    by_width = {}
    for s, g, arrays in snaps:
        by_width.setdefault(round(P.gamma_to_sigma_rel(g), 6), []).append((s, g, arrays))
    run = api.load(str(tmp_path / "full"), posthoc_sigma_rel=0.10)
    assert run.step == 60
    for got, w in zip(_flat(run.models), by_width[0.1][-1][2], strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    rebuilt = P.reconstruct(by_width[0.05] + by_width[0.1], 60, 0.07)
    tracked, a, b = by_width[0.07][-1][2], by_width[0.05][-1][2], by_width[0.1][-1][2]
    error = np.sqrt(sum(np.sum((r - t) ** 2) for r, t in zip(rebuilt, tracked, strict=True)))
    apart = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True)))
    assert error < 0.1 * apart, (error, apart)
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots"):
        P.load_snapshots(str(tmp_path / "nothing"), model_fns)
    with pytest.raises(api.RunError, match="posthoc_sigma_rel"):
        api.load(str(tmp_path / "full"), posthoc_sigma_rel=0.5)
    # an interrupted write's temporary file is not a snapshot; a run started again from
    # scratch sets the old run's later snapshots aside (kept) instead of mixing them in
    (tmp_path / "part" / P.SNAPSHOT_DIR / "snapshot-60.npz.tmp-1.npz").write_bytes(b"partial")
    shutil.rmtree(tmp_path / "part" / "checkpoints")
    api.train(cfg.replace(train={"num_steps": 40}), str(tmp_path / "part"), progress=False)
    assert P.reconstruct_models(model_fns, str(tmp_path / "part"), 0.1)[1] == 40
    superseded = sorted(os.listdir(tmp_path / "part" / P.SNAPSHOT_DIR / "superseded"))
    assert superseded == ["snapshot-20.npz", "snapshot-40.npz", "snapshot-60.npz"]
