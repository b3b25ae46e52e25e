#!/usr/bin/env bash
# The score-entropy VAE against the Gaussian VAE on MNIST, one pair per latent size, each pair
# with the same training budget, then the AIS test NLL of every model on the same binarised
# test images and the paired difference per pair. Prints and writes runs/vae_compare/compare.json.
#
#   STEPS=20000 LATENTS="8 32" DATA_DIR=/path/to/tfds bash benchmarks/vae_compare.sh
#   (or: make vae-compare)
#
# Settings: the presets (paper networks, RMSProp 1e-3, batch 128); STEPS iterations (the
# paper: 100k); AIS with AIS_CHAINS chains x AIS_TEMPS temperatures on the first EVAL_N test
# images (the same images, binarisation and AIS seeds for every model, so the per-image NLLs
# pair up: evaluate.vae_test_images, nll_per_example.npz).
set -euo pipefail
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-20000}
OUT=${OUT:-runs/vae_compare}
EVAL_N=${EVAL_N:-200}
AIS_CHAINS=${AIS_CHAINS:-16}
AIS_TEMPS=${AIS_TEMPS:-500}
LATENTS=${LATENTS:-8 32}
data_flag=()
[[ -n "${DATA_DIR:-}" ]] && data_flag=(--data_dir="$DATA_DIR")

for latent in $LATENTS; do
  for preset in mnist_vae_ssm mnist_vae_gaussian; do
    wd="$OUT/latent$latent/$preset"
    if [[ ! -f "$wd/metrics.json" ]]; then
      start=$(date +%s)
      "$PY" run_train.py --flagfile="flags/presets/$preset.cfg" --workdir="$wd" \
        --num_steps="$STEPS" --latent_dim="$latent" --noprogress "${data_flag[@]}"
      echo "$(( $(date +%s) - start ))" > "$wd/train_wall_seconds"
      "$PY" run_sample.py --workdir="$wd" --evaluate --eval_examples="$EVAL_N" \
        --eval_batch="$EVAL_N" --ais_chains="$AIS_CHAINS" --ais_temperatures="$AIS_TEMPS" \
        --noprogress
    fi
  done
done

"$PY" benchmarks/vae_pairs.py --out="$OUT" --latents="${LATENTS// /,}"
