"""Does the served two-mode export draw p? The export's ``serving_default`` (the graph TF
Serving runs, loaded with tf.saved_model.load) is called as a client would for --num_samples
samples of seed s: requests of at most the export's cap (--request_size) with seeds (s, 0),
(s, 1), ... (batch b of seed s, as ``api.generate``). Per seed: heavy-mode weight (target
0.80), per-mode sd (target 1.0, light / heavy) and the unbiased energy distance to as many
exact samples, and the same three for a second set of exact samples: the targets' own
pass rate at this n (the light mode's ~410 samples give its sd a standard error of 0.035).

    python benchmarks/served_toy.py --export=runs/toy_edm/export/toy_edm/16000 \\
        [--seeds=0,1,2] [--num_samples=2048] [--out=runs/bench/served_toy.json]

Writes the JSON and prints a row per seed with the pass/fail of the targets: weight
0.80 +- 0.02, each mode's sd within 3% of 1, energy distance below 0.005.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

EXPORT = flags.DEFINE_string("export", None, "A SavedModel version directory.", required=True)
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Served seeds s of (s, 0).")
NUM = flags.DEFINE_integer("num_samples", 2048, "Samples per seed.")
REQUEST = flags.DEFINE_integer("request_size", 256, "Samples per request (the export's cap).")
OUT = flags.DEFINE_string("out", "runs/bench/served_toy.json", "Output JSON.")


def _row(samples, exact) -> dict:
    from tf_score.evaluation import metrics

    w, se = metrics.mode_weight(samples)
    sd = metrics.mode_sds(samples)
    ed = metrics.energy_distance(samples, exact)
    ok = abs(w - 0.8) <= 0.02 and all(abs(s - 1) <= 0.03 for s in sd) and ed < 0.005
    return dict(mode_weight=w, mode_weight_se=se, mode_sd=sd, energy_distance=ed, passes=ok)


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from tf_score import data

    served = tf.saved_model.load(EXPORT.value).signatures["serving_default"]
    toy = data.get_toy("two_mode")
    rows = []
    print(f"{'seed':>4} {'samples':<7}{'weight':>16}{'sd light/heavy':>16}{'energy':>9}  pass")
    for s in (int(v) for v in SEEDS.value):
        sizes = [REQUEST.value] * (NUM.value // REQUEST.value) + [NUM.value % REQUEST.value]
        samples = np.concatenate([
            served(num_samples=tf.constant(n), seed=tf.constant([s, b]))["samples"].numpy()
            for b, n in enumerate(sizes) if n
        ])  # fmt: skip
        exact = toy.sample(NUM.value, seed=tf.constant([s, 77])).numpy()
        exact2 = toy.sample(NUM.value, seed=tf.constant([s, 78])).numpy()
        r = {"seed": s, "served": _row(samples, exact), "exact": _row(exact2, exact)}
        rows.append(r)
        for who in ("served", "exact"):
            q = r[who]
            print(f"{s:>4} {who:<7}{q['mode_weight']:>9.3f} ± {q['mode_weight_se']:.3f}"
                  f"{q['mode_sd'][0]:>9.3f}/{q['mode_sd'][1]:.3f}{q['energy_distance']:>9.4f}"
                  f"  {'yes' if q['passes'] else 'NO'}")  # fmt: skip
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump({"export": EXPORT.value, "num_samples": NUM.value, "rows": rows}, f, indent=2)
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
