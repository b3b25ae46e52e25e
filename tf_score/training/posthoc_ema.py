"""Post-hoc EMA (Karras et al. 2024, EDM2, section 3): train once, choose the EMA length after.

A power-function EMA of exponent gamma averages the weights theta(tau) of training steps
tau in [0, t] with the density p_(t, gamma)(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),
kept in training by theta_hat <- beta_t theta_hat + (1 - beta_t) theta, beta_t =
(1 - 1/t)^(gamma + 1) at the t-th update. Its relative width is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))

(0.05 and 0.10 are EDM2's two stored profiles). Snapshots of two profiles at several steps
span any other profile: the coefficients x of sum_i x_i p_i closest to the target in L2 over
tau solve A x = b with A_ij = <p_i, p_j> and b_i = <p_i, p_target>, closed forms below; the
reconstructed weights are sum_i x_i theta_hat_i.

In training (``TrainConfig.posthoc_ema``), ``TrainStep`` keeps one copy of the models per
profile, updated after every step with ``power_beta``, and saves a snapshot of them with
every checkpoint (``save_snapshot``: workdir/posthoc_ema/snapshot-STEP.npz);
``reconstruct_models`` builds the models of any width from those files (``api.load(workdir,
posthoc_sigma_rel=...)``, ``run_sample.py --posthoc_sigma_rel``).
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import tensorflow as tf

from tf_score import atomic
from tf_score.config import MAX_SIGMA_REL

#: the snapshots' directory in a workdir
SNAPSHOT_DIR = "posthoc_ema"


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of a power-function profile of relative width ``sigma_rel``: the
    largest real root of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s), s = sigma_rel^-2."""
    if not 0.0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(
            f"sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}) (a uniform average), got {sigma_rel}"
        )
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))."""
    return float(np.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0))))


def power_beta(step, gamma: float) -> tf.Tensor:
    """beta_t = (1 - 1/t)^(gamma + 1) at the ``step``-th update (1-based; beta_1 = 0, so the
    first update copies the weights)."""
    t = tf.cast(step, tf.float64)
    return tf.cast(tf.pow(1.0 - 1.0 / t, gamma + 1.0), tf.float32)


def profile_inner(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_(t_a, gamma_a), p_(t_b, gamma_b)> = (g_a + 1)(g_b + 1) m^(g_a + g_b + 1) /
    ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1)), m = min(t_a, t_b); written with the ratio
    of the two ends so that large steps and exponents do not overflow (broadcasts)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    ratio = np.where(t_a < t_b, t_a / t_b, t_b / t_a)  # m / max(t_a, t_b), in (0, 1]
    power = np.where(t_a < t_b, g_b, g_a)  # the exponent of the longer profile
    return (g_a + 1.0) * (g_b + 1.0) * ratio**power / ((g_a + g_b + 1.0) * np.maximum(t_a, t_b))


def solve_coefficients(steps, gammas, target_step: float, target_gamma: float) -> np.ndarray:
    """Least-squares coefficients x [K] with sum_k x_k p_(steps_k, gammas_k) ~ p_(target) in
    L2, constrained to sum to 1: the result is an average of weights, so a profile that
    misses the target does not rescale them (unconstrained, 3 snapshots per profile summed
    to 1.022, an error of 2% of the weights themselves). Solves the KKT system
    [[A, 1], [1^T, 0]] [x, lambda] = [b, 1], A = [<p_i, p_j>], b = [<p_i, p_target>]
    (lstsq: snapshots may be near-collinear)."""
    steps, gammas = np.asarray(steps, np.float64), np.asarray(gammas, np.float64)
    k = len(steps)
    kkt = np.ones((k + 1, k + 1))
    kkt[:k, :k] = profile_inner(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    kkt[k, k] = 0.0
    rhs = np.append(profile_inner(steps, gammas, target_step, target_gamma), 1.0)
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]


def reconstruct(snapshots, target_step: float, sigma_rel: float) -> list[np.ndarray]:
    """The weights of the power-function EMA of width ``sigma_rel`` at ``target_step`` from
    ``snapshots``, a list of (step, gamma, [arrays]) with every array list in one order; only
    snapshots at or before ``target_step`` are used (later ones average weights it never had)."""
    usable = [s for s in snapshots if s[0] <= target_step]
    if not usable:
        raise ValueError(f"no post-hoc EMA snapshot at or before step {target_step}")
    x = solve_coefficients(
        [s[0] for s in usable], [s[1] for s in usable], target_step, sigma_rel_to_gamma(sigma_rel)
    )
    return [
        sum(
            float(c) * np.asarray(s[2][k], np.float64) for c, s in zip(x, usable, strict=True)
        ).astype(np.asarray(usable[0][2][k]).dtype)
        for k in range(len(usable[0][2]))
    ]


# --- snapshots in a workdir ------------------------------------------------------------------


def _key(profile: int, name: str, index: int) -> str:
    return f"p{profile}.{name}.{index}"


def save_snapshot(workdir: str, step: int, sigma_rels, profiles: list[dict]) -> str:
    """Write the weights of every profile (``profiles[k]``: {name: model} of width
    ``sigma_rels[k]``) at ``step`` to workdir/posthoc_ema/snapshot-STEP.npz, atomically."""
    arrays = {
        _key(k, name, i): np.asarray(w.numpy())
        for k, models in enumerate(profiles)
        for name, model in models.items()
        for i, w in enumerate(model.weights)
    }
    directory = os.path.join(workdir, SNAPSHOT_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"snapshot-{int(step)}.npz")
    atomic.save_npz(path, step=np.int64(step), sigma_rels=np.asarray(sigma_rels), **arrays)
    return path


def _snapshot_paths(workdir: str) -> dict[int, str]:
    """{step: path} of the snapshots (not an interrupted write's temporary file), by step."""
    found = {}
    for path in glob.glob(os.path.join(workdir, SNAPSHOT_DIR, "snapshot-*.npz")):
        match = re.fullmatch(r"snapshot-(\d+)\.npz", os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def set_aside_later(workdir: str, start_step: int) -> list[str]:
    """Move the snapshots after ``start_step`` (left by a run that went further before a
    restart, e.g. from scratch) into posthoc_ema/superseded/: this run writes its own, and a
    reconstruction must not mix two runs. Returns the moved paths (kept, not deleted)."""
    directory = os.path.join(workdir, SNAPSHOT_DIR)
    later = [path for step, path in _snapshot_paths(workdir).items() if step > start_step]
    if later:
        os.makedirs(os.path.join(directory, "superseded"), exist_ok=True)
    for path in later:
        os.replace(path, os.path.join(directory, "superseded", os.path.basename(path)))
    return later


def load_snapshots(workdir: str, model_fns: dict) -> list[tuple[int, float, list[np.ndarray]]]:
    """Every snapshot of ``workdir`` as (step, gamma, [arrays]), the arrays in the order of
    the weights of ``model_fns``' models (by name); ``ValueError`` if there is none or one
    holds another model's weights."""
    paths = list(_snapshot_paths(workdir).values())
    if not paths:
        raise ValueError(
            f"no post-hoc EMA snapshots in {os.path.join(workdir, SNAPSHOT_DIR)}: train with "
            "--posthoc_ema (e.g. 0.05,0.10)"
        )
    counts = {name: len(fn().weights) for name, fn in model_fns.items()}
    snapshots = []
    for path in paths:
        with np.load(path) as z:
            for k, sigma_rel in enumerate(z["sigma_rels"]):
                keys = [_key(k, n, i) for n, c in sorted(counts.items()) for i in range(c)]
                if any(key not in z for key in keys) or len(z.files) != 2 + len(keys) * len(
                    z["sigma_rels"]
                ):
                    raise ValueError(f"{path} holds the weights of another model")
                arrays = [z[key] for key in keys]
                snapshots.append((int(z["step"]), sigma_rel_to_gamma(float(sigma_rel)), arrays))
    return snapshots


def reconstruct_models(model_fns: dict, workdir: str, sigma_rel: float, step: int | None = None):
    """(models, step): ``model_fns``' models holding the power-function EMA of width
    ``sigma_rel`` at ``step`` (default: the newest snapshot's), from ``workdir``'s snapshots."""
    snapshots = load_snapshots(workdir, model_fns)
    target = max(s[0] for s in snapshots) if step is None else int(step)
    weights = iter(reconstruct(snapshots, target, sigma_rel))
    models = {name: fn() for name, fn in model_fns.items()}
    for name in sorted(models):
        for w in models[name].weights:
            w.assign(next(weights))
    return models, target
