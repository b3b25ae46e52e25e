#!/usr/bin/env bash
# FID of the MNIST preset's U-Net trained in float32 (two seeds: the seed-to-seed spread) and
# in mixed_bfloat16 (seed 0), each for STEPS steps (the preset's schedule compressed to them),
# one training after another on this machine, then FID at n = 2000 with the preset's
# sampler (DPM2 ancestral, 10 levels) against the floor.
#   benchmarks/precision_quality.sh DATA_DIR CLASSIFIER_WORKDIR OUT_DIR [STEPS]
set -euo pipefail
data_dir=$1 classifier=$2 out=$3 steps=${4:-2000}
py=${PYTHON:-.venv/bin/python}
grep -o -E 'avx512[a-z_0-9]*|avx2|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for run in float32:0 float32:1 mixed_bfloat16:0; do
  precision=${run%%:*} seed=${run##*:}
  wd=$out/${precision}_seed$seed
  start=$(date +%s)
  $py run_train.py --flagfile=flags/presets/mnist_edm_avx2_90.cfg --workdir="$wd" \
    --data_dir="$data_dir" --precision="$precision" --seed="$seed" --num_steps="$steps" \
    --checkpoint_every="$steps" --sample_every=0 --noprogress
  echo "$precision seed $seed: trained $steps steps in $(( $(date +%s) - start )) s"
  $py run_sample.py --workdir="$wd" --data_dir="$data_dir" --metrics=fid --num_samples=2000 \
    --classifier="$classifier" --sampler=dpm2_ancestral --num_levels=10 \
    --metrics_file="$wd/fid.json" --output_dir="$wd"
done
