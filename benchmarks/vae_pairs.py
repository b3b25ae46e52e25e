"""The paired VAE comparison of benchmarks/vae_compare.sh: for each latent size, the AIS NLL of
the score-entropy VAE minus the Gaussian VAE's on the same test images (metrics.paired_difference:
mean, standard error, t, p). Reads OUT/latent<L>/<preset>/{metrics.json, nll_per_example.npz,
train_wall_seconds}; writes OUT/compare.json and prints the table.

    python benchmarks/vae_pairs.py --out=runs/vae_compare --latents=8,32
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUT = flags.DEFINE_string("out", "runs/vae_compare", "Where vae_compare.sh left the runs.")
LATENTS = flags.DEFINE_list("latents", ["8", "32"], "Latent sizes, one pair each.")
PRESETS = ("mnist_vae_ssm", "mnist_vae_gaussian")


def _model(wd: str) -> dict:
    with open(os.path.join(wd, "metrics.json")) as f:
        m = json.load(f)
    with open(os.path.join(wd, "train_wall_seconds")) as f:
        m["train_wall_seconds"] = int(f.read())
    with np.load(os.path.join(wd, "nll_per_example.npz")) as z:
        m["per_example"] = z["ais_nll"]
    return m


def main(argv):
    del argv
    from tf_score.evaluation import metrics

    rows = {}
    print(f"{'latent':>6s} {'model':20s} {'steps':>6s} {'train min':>9s} {'AIS NLL':>16s}")
    for latent in LATENTS.value:
        models = {p: _model(os.path.join(OUT.value, f"latent{latent}", p)) for p in PRESETS}
        for p, m in models.items():
            a = m["ais_nll"]
            print(f"{latent:>6s} {p:20s} {m['step']:6d} {m['train_wall_seconds'] / 60:9.1f} "
                  f"{a['mean']:9.2f} ± {a['se']:.2f}")  # fmt: skip
        ssm, gau = (models[p]["per_example"] for p in PRESETS)
        diff = metrics.paired_difference(ssm, gau)
        verdict = "significant" if diff["p"] < 0.05 else "not significant"
        print(f"{latent:>6s} score-entropy minus Gaussian, paired over {diff['n']} images: "
              f"{diff['mean']:+.2f} ± {diff['se']:.2f} nats (t {diff['t']:.2f}, p {diff['p']:.3g}, "
              f"{verdict} at 5%)")  # fmt: skip
        rows[f"latent{latent}"] = {
            "paired_difference_ssm_minus_gaussian": diff,
            **{p: {k: v for k, v in m.items() if k != "per_example"} for p, m in models.items()},
        }
    with open(os.path.join(OUT.value, "compare.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {os.path.join(OUT.value, 'compare.json')}")


if __name__ == "__main__":
    app.run(main)
