#!/usr/bin/env bash
# The score-entropy VAE against the Gaussian VAE on MNIST with the same training budget, then
# the AIS test NLL of both on the same binarised test subset. Prints and collects
# runs/vae_compare/compare.json.
#
#   STEPS=20000 DATA_DIR=/path/to/tfds bash benchmarks/vae_compare.sh     (or: make vae-compare)
#
# Settings: the presets (paper networks, RMSProp 1e-3, batch 128, latent 8); STEPS iterations
# (the paper: 100k); AIS with AIS_CHAINS chains x AIS_TEMPS temperatures on EVAL_N images.
set -euo pipefail
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-20000}
OUT=${OUT:-runs/vae_compare}
EVAL_N=${EVAL_N:-200}
AIS_CHAINS=${AIS_CHAINS:-16}
AIS_TEMPS=${AIS_TEMPS:-500}
LATENT=${LATENT:-8}
data_flag=()
[[ -n "${DATA_DIR:-}" ]] && data_flag=(--data_dir="$DATA_DIR")

for preset in mnist_vae_ssm mnist_vae_gaussian; do
  wd="$OUT/$preset"
  start=$(date +%s)
  "$PY" run_train.py --flagfile="flags/presets/$preset.cfg" --workdir="$wd" \
    --num_steps="$STEPS" --latent_dim="$LATENT" "${data_flag[@]}"
  echo "$(( $(date +%s) - start ))" > "$wd/train_wall_seconds"
  "$PY" run_sample.py --workdir="$wd" --evaluate --eval_examples="$EVAL_N" \
    --eval_batch="$EVAL_N" --ais_chains="$AIS_CHAINS" --ais_temperatures="$AIS_TEMPS"
done

"$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
rows = {}
for preset in ("mnist_vae_ssm", "mnist_vae_gaussian"):
    wd = os.path.join(out, preset)
    with open(os.path.join(wd, "metrics.json")) as f:
        m = json.load(f)
    with open(os.path.join(wd, "train_wall_seconds")) as f:
        m["train_wall_seconds"] = int(f.read())
    rows[preset] = m
with open(os.path.join(out, "compare.json"), "w") as f:
    json.dump(rows, f, indent=2)
print(f"{'model':22s} {'steps':>7s} {'train min':>9s} {'AIS NLL':>16s} {'IWAE NLL':>10s} {'-ELBO':>8s}")
for name, m in rows.items():
    a = m["ais_nll"]
    iw = f"{m['iwae_nll']['mean']:.2f}" if "iwae_nll" in m else "-"
    el = f"{m['neg_elbo']['mean']:.2f}" if "neg_elbo" in m else "-"
    print(f"{name:22s} {m['step']:7d} {m['train_wall_seconds'] / 60:9.1f} "
          f"{a['mean']:9.2f} ± {a['se']:.2f} {iw:>10s} {el:>8s}")
ssm, gau = rows["mnist_vae_ssm"]["ais_nll"], rows["mnist_vae_gaussian"]["ais_nll"]
print(f"score-entropy minus Gaussian AIS NLL: {ssm['mean'] - gau['mean']:+.2f} nats "
      f"(lower is better; SEs {ssm['se']:.2f} / {gau['se']:.2f})")
PYEOF
