#!/bin/sh
# test_sd_unet.sh - the SD UNet and VAE decoder against diffusers (issue 14,
# item 6). Run by tests/run.sh with B = the build directory.
#
# Builds the reference venv (tests/sd/venv.sh; honours $SD_VENV), makes
# tiny random SD 1 / SD 2 / BK-SDM pipelines with 8- and 16-group norms
# (tests/sd/make_tiny.py's build, called by ref_unet.py --make-tiny), writes
# diffusers' UNet output for given (x_t, t, context) and VAE decode of given
# latents with its 8-bit pixels (tests/sd/ref_unet.py), and compares tool_sdunet's numbers with them at
# the tolerances it prints (float32 on both sides; the reasons are printed
# next to them). The gradients are checked by test_sdunet (C, finite
# differences). Under D3PO_ASAN=1 the Python side is skipped, as in
# test_interop.sh: only the C tool's usage path runs.
B=${B:-build}
TOOL=$B/tests/tool_sdunet
HERE=$(dirname "$0")

fail() { echo "test_sd_unet: FAIL: $*"; exit 1; }

[ -x "$TOOL" ] || fail "$TOOL is not built (run make $TOOL)"
if [ "${D3PO_ASAN:-0}" = 1 ]; then
    "$TOOL" >/dev/null 2>&1; [ $? -eq 1 ] || fail "tool_sdunet without arguments should exit 1"
    echo "test_sd_unet: D3PO_ASAN=1: Python side skipped (numbers are checked in the normal build)"
    exit 0
fi

VENV=$(B=$B sh "$HERE/sd/venv.sh" | tail -n 1) || fail "tests/sd/venv.sh failed"
PY=$VENV/bin/python
T=$(mktemp -d "${TMPDIR:-/tmp}/d3po-sdunet.XXXXXX") || fail "mktemp -d failed"
trap 'rm -rf "$T"' EXIT

# run CMD...: prints its output with the temp dir left out; fails with its status
run() { "$@" >"$T/out" 2>&1; rc=$?; sed "s|$T/||g" "$T/out"; return $rc; }
pairs=""
for kg in sd1-g8 sd1-g16 sd2-g8 sd2-g16 bksdm-g8 bksdm-g16; do
    pairs="$pairs $T/$kg $T/$kg.ref.safetensors"
done
# one Python process builds the six pipelines (make_tiny.py's build) and
# writes their references
# shellcheck disable=SC2086
if ! run "$PY" "$HERE/sd/ref_unet.py" --make-tiny $pairs >"$T/ref.log"; then
    tail -n 20 "$T/ref.log"
    fail "ref_unet.py --make-tiny failed"
fi
grep '^ref_unet:' "$T/ref.log"   # (the library warnings left out)

for kg in sd1-g8 sd1-g16 sd2-g8 sd2-g16 bksdm-g8 bksdm-g16; do
    run "$TOOL" unet "$T/$kg" "$T/$kg.ref.safetensors" || fail "$kg: UNet differs from diffusers"
    run "$TOOL" vae "$T/$kg" "$T/$kg.ref.safetensors" || fail "$kg: VAE decode differs from diffusers"
done
echo "test_sd_unet: ok"
