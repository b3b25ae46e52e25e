#!/usr/bin/env bash
# Presets' training steps side by side on one machine: each preset trains STEPS steps with
# oneDNN's default kernels, then all again held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2), one after
# another; prints the CPU flags, then each run's progress-bar rate and wall time at the end.
#
#   benchmarks/side_by_side_steps.sh DATA_DIR mnist_edm_avx2_90 mnist_edm_cond_avx2_90
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=$1; shift
steps=${STEPS:-400}
grep -o -E 'avx512[a-z_0-9]*|avx2|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for isa in default AVX2; do
  for preset in "$@"; do
    workdir=$(mktemp -d) && rmdir "$workdir"  # a fresh path for run_train.py to create
    log="$workdir.log"
    if [ "$isa" = AVX2 ]; then export ONEDNN_MAX_CPU_ISA=AVX2; else unset ONEDNN_MAX_CPU_ISA; fi
    .venv/bin/python run_train.py --flagfile="flags/presets/$preset.cfg" --data_dir="$data_dir" \
      --workdir="$workdir" --num_steps="$steps" --checkpoint_every="$steps" > "$log" 2>&1
    echo "$isa $preset: $(tr '\r' '\n' < "$log" | grep -o "$steps/$steps \[[^]]*" | head -1)"
    rm -rf "$workdir" "$log"
  done
done
