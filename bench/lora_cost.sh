#!/bin/sh
# lora_cost.sh - `d3po info MODEL --train` (predicted time per labeled pair
# and peak memory of LoRA training) against a measured labeling round of the
# same settings (tests/tool_sdtrain round: the default config's sampler and
# training settings, pairs sampled and decoded, then d3po_train_dm with
# the model as its own reference, adapters off), under /usr/bin/time -v, on
# the tiny sd1 pipeline and the mid-size one (tests/sd/make_tiny.py --kind
# sd1 | mid), 64x64 images (32x32 latents), the CPU.
#
#   sh bench/lora_cost.sh [OUTDIR] [PAIRS_TINY] [PAIRS_MID]    (after make, SD_VENV set)
#
# Prints each command and its output lines of interest.
B=${B:-build}
OUT=${1:-$B/lora-cost}
NT=${2:-8}
NM=${3:-2}
VENV=$(sh tests/sd/venv.sh | tail -n 1) || exit 1
mkdir -p "$OUT"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores; $(uptime)"
for kind in sd1 mid; do
    M=$OUT/$kind
    [ -d "$M" ] || "$VENV/bin/python" tests/sd/make_tiny.py --kind $kind --out "$M" >/dev/null || exit 1
    n=$NT; [ $kind = mid ] && n=$NM
    run() {
        echo "\$ $*"
        /usr/bin/time -v "$@" >"$OUT/out" 2>"$OUT/time" || { cat "$OUT/out" "$OUT/time"; exit 1; }
        grep -E '^(calibration|time/pair|memory|d3po |tool_sdtrain|  sampling)' "$OUT/out"
        grep -E 'Maximum resident|Elapsed' "$OUT/time"
    }
    run "$B/d3po" info "$M" --train --device cpu --size 64x64 --config /dev/null
    run "$B/tests/tool_sdtrain" round "$M" --size 32 --pairs $n --objective d3po
    run "$B/tests/tool_sdtrain" round "$M" --size 32 --pairs $n --objective diffusion-dpo
    echo "load after $kind: $(uptime)"
done
