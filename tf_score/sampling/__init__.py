"""Sampling: the solver registry (``registry``: one signature, one option schema per solver),
the built-in solvers (``solvers``: Langevin, annealed Langevin, consistent annealed,
predictor-corrector, Heun, EDM, the adaptive ODE) and conditioning wrappers
(``conditioning``: inpainting around any solver)."""

from tf_score.sampling import denoiser_solvers, solvers  # noqa: F401  (register the built-ins)
from tf_score.sampling.conditioning import inpaint
from tf_score.sampling.registry import (
    SAMPLERS,
    Option,
    Plan,
    Sampler,
    SamplerError,
    SamplerOutput,
    SampleSpace,
    batch_seeds,
    builtin_names,
    check_config,
    draw,
    get,
    options_of,
    plan,
    py_callback,
    register,
    unregister,
)

__all__ = [
    "SAMPLERS",
    "Option",
    "Plan",
    "SampleSpace",
    "Sampler",
    "SamplerError",
    "SamplerOutput",
    "batch_seeds",
    "builtin_names",
    "check_config",
    "draw",
    "get",
    "inpaint",
    "options_of",
    "plan",
    "py_callback",
    "register",
    "unregister",
]
