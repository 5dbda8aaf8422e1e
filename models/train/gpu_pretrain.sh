#!/bin/bash
# gpu_pretrain.sh OUTDIR SECONDS [CKPT] - continues the default model's
# pretraining (models/README.md) from the resumable checkpoint CKPT
# (default models/train/emoji48.ckpt.safetensors, the base-48 run; the
# base-32 run's is models/train/emoji32.ckpt.safetensors) on a GPU with our
# own CUDA backend, for SECONDS of training, then exports the EMA weights.
# Run from the repository root on the GPU machine after tests/gpu/run.sh
# has unpacked the bundle (/tmp/d3po-gpu, its wrappers in
# /tmp/d3po-gpu/wrap) and with the
# data set tarball .gpu/emoji.tar.xz made here by
#   build/d3po dataset emoji --out emoji && tar -cJf .gpu/emoji.tar.xz emoji
# Writes OUTDIR/pretrain.log, OUTDIR/default.safetensors (EMA weights) and
# the resumable checkpoint split in 15 MB parts OUTDIR/ckpt.part.aa, ...
# (reassemble with cat).
set -u
OUT=${1:?usage: gpu_pretrain.sh OUTDIR SECONDS [CKPT]}
SECS=${2:-200}
SRC=${3:-models/train/emoji48.ckpt.safetensors}
[ -f "$SRC" ] || { echo "gpu_pretrain: no checkpoint $SRC" >&2; exit 1; }
[ -x /tmp/d3po-gpu/wrap/d3po ] || { echo "gpu_pretrain: run tests/gpu/run.sh first" >&2; exit 1; }
PATH=/tmp/d3po-gpu/wrap:$PATH
LOG=$OUT/pretrain.log
tar -xJf .gpu/emoji.tar.xz -C /tmp || exit 1
CK=/tmp/pretrain.ckpt
echo "gpu_pretrain: resuming $SRC for ${SECS}s" | tee "$LOG"
timeout -s INT "$SECS" d3po pretrain --device cuda --data /tmp/emoji --out /tmp/pretrain.safetensors \
    --resume "$SRC" --ckpt "$CK" --steps 1000000 --save-every 2000 \
    >>"$LOG" 2>&1
rc=$?
echo "gpu_pretrain: pretrain exit $rc" >>"$LOG"
step=$(sed -n 's/.*interrupted at step \([0-9]*\).*/\1/p' "$LOG" | tail -1)
if [ -z "$step" ]; then echo "gpu_pretrain: no checkpoint step in the log" >>"$LOG"; exit 1; fi
# --steps equal to the checkpoint's step: no training, just the EMA export
d3po pretrain --device cuda --data /tmp/emoji --out "$OUT/default.safetensors" --resume "$CK" \
    --steps "$step" --ckpt /tmp/export.ckpt >>"$LOG" 2>&1 || exit 1
split -b 15M "$CK" "$OUT/ckpt.part."
sha256sum "$CK" >>"$LOG"
echo "gpu_pretrain: done at step $step" >>"$LOG"
