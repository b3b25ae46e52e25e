"""Score-matching objectives as pure functions returning per-example losses: denoising
(single and multi-level), sliced (and variance-reduced), exact, and the EDM denoising loss of
continuous-sigma denoisers."""

from tf_score.losses.denoising import (
    denoising_loss,
    loss_weight,
)
from tf_score.losses.score_matching import (
    PROJECTIONS,
    anneal_dsm,
    anneal_ssm,
    anneal_ssm_vr,
    dsm,
    exact_sm,
    projections,
    sample_levels,
    ssm,
    ssm_vr,
)

__all__ = [
    "PROJECTIONS",
    "anneal_dsm",
    "anneal_ssm",
    "anneal_ssm_vr",
    "denoising_loss",
    "dsm",
    "exact_sm",
    "loss_weight",
    "projections",
    "sample_levels",
    "ssm",
    "ssm_vr",
]
