#!/bin/sh
# mha.sh - multi-head attention forward + backward, d3po's memory-efficient
# CPU op (build/bench/bench_mha) against PyTorch's explicit softmax
# attention (bench/mha_torch.py) at the same shape and thread count, run one
# after the other; prints
#   bench mha: d3po <ms> ms, pytorch <ms> ms, ratio <pytorch/d3po>
# Usage: B=build [N=1 T=1024 DH=64 HEADS=8 THREADS=2 REPS=5] sh bench/mha.sh
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
N=${N:-1} T=${T:-1024} DH=${DH:-64} HEADS=${HEADS:-8} THREADS=${THREADS:-2} REPS=${REPS:-5}
PY=${PY:-/usr/bin/python3}
OMP_NUM_THREADS=$THREADS
export OMP_NUM_THREADS
a=$("$B/bench/bench_mha" "$N" "$T" "$DH" "$HEADS" "$THREADS" "$REPS") || exit 2
b=$("$PY" bench/mha_torch.py "$N" "$T" "$DH" "$HEADS" "$THREADS" "$REPS") || exit 2
echo "$a"
echo "$b"
da=$(echo "$a" | sed -n 's/.*: \([0-9.]*\) ms.*/\1/p')
db=$(echo "$b" | sed -n 's/.*: \([0-9.]*\) ms.*/\1/p')
[ -n "$da" ] && [ -n "$db" ] || { echo "mha.sh: no time in the output" >&2; exit 2; }
awk -v a="$da" -v b="$db" 'BEGIN { printf "bench mha: d3po %.2f ms, pytorch %.2f ms, ratio %.2f\n", a, b, b / a }'
