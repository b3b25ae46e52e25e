"""The order-of-convergence table: each deterministic solver on the exact denoiser of
N(0.7, 1.3^2 I) in 4 dimensions, where the probability-flow ODE from sigma_max = 10 is solved
in closed form (x_0 - mu = C / sqrt(C^2 + sigma_max^2) (x - mu)). RMS error of 256 samples
against that solution on 10, 20, 40, 80 and 160 karras sigmas (10 -> 0.002), the slope of
log error against log N fitted over the last four, beside the published order.

    python benchmarks/solver_order.py [--out=runs/bench/solver_order.json]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

OUT = flags.DEFINE_string("out", "runs/bench/solver_order.json", "Output JSON.")

MU, C, SMAX, SMIN = 0.7, 1.3, 10.0, 0.002
NS = (10, 20, 40, 80, 160)
#: name -> (published order of the method, options that make it a deterministic ODE solver)
SOLVERS = {
    "euler": (1, {}),
    "heun": (2, {}),
    "dpm2": (2, {}),
    "dpmpp_2m": (2, {}),
    "lms": (4, {}),
    "dpmpp_2m_sde": (2, {"sde_eta": 0.0}),
    "dpmpp_3m_sde": (3, {"sde_eta": 0.0}),
    "euler_ancestral": (1, {"eta": 0.0}),
    "dpmpp_2s_ancestral": (2, {"eta": 0.0}),
}


def _error(name: str, n: int, options: dict) -> float:

    from tf_score import noise, sampling
    from tf_score.networks import contract

    def score(x, sigma):
        return -(x - MU) / (C**2 + contract.expand_like(sigma, x) ** 2)

    space = sampling.SampleSpace((4,), (0.0, 1.0), (MU,))
    sig = noise.karras_sigmas(SMAX, SMIN, n)
    out = sampling.draw(name, contract.ScoreFunction(score), sig, 256, 0, space, **options)
    x0 = (
        sampling.plan(name, contract.ScoreFunction(score), sig, options)
        .start([256, 4], 0, space)
        .numpy()
    )
    exact = MU + C / np.sqrt(C**2 + SMAX**2) * (x0.astype(np.float64) - MU)
    return float(np.sqrt(np.mean((out.samples.numpy() - exact) ** 2)))


def main(argv):
    del argv
    rows = []
    print(f"{'solver':<20}{'order':>6}{'slope':>7}  " + "".join(f"{'N=' + str(n):>10}" for n in NS))
    for name, (order, options) in SOLVERS.items():
        errors = [_error(name, n, options) for n in NS]
        slope = float(-np.polyfit(np.log(NS[1:]), np.log(errors[1:]), 1)[0])
        rows.append(dict(solver=name, options=options, published_order=order, slope=slope,
                         num_sigmas=list(NS), rms_error=errors))  # fmt: skip
        print(f"{name:<20}{order:>6}{slope:>7.2f}  " + "".join(f"{e:>10.2e}" for e in errors))
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump({"gaussian": {"mu": MU, "c": C, "sigma_max": SMAX, "sigma_min": SMIN},
                   "rows": rows}, f, indent=2)  # fmt: skip
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
