#!/bin/sh
# test_parity.sh - the C engine against its PyTorch twin (bench/twin.py).
# Run by tests/run.sh with B = the build directory.
#
# For two architectures (the 2-level tiny one and a 3-level one with two
# residual blocks per level and attention at the lowest resolution),
# tests/tool_parity dumps a random model, a forward + MSE + every parameter
# gradient, a DDIM sample with its noise and log-probs, a D3PO pair
# update and a Diffusion-DPO pair update at fixed (t, eps) draws against a
# perturbed reference model; bench/parity.py recomputes each in float64 with the twin and
# compares (tolerances and their reasons are in parity.py). Every comparison
# line is printed; any FAIL fails the test.
#
# Under D3PO_ASAN=1 (make check-asan) only the C dump runs: this test checks
# numbers, the sanitizers check memory.
#
# OMP_WAIT_POLICY=PASSIVE: on a loaded 2-core machine, spinning OpenMP
# threads (libgomp, in both the engine and torch) slow these small problems
# down 10-40x; sleeping waits keep the whole test well under a minute.
B=${B:-build}
TOOL=$B/tests/tool_parity
HERE=$(dirname "$0")
PARITY=$HERE/../bench/parity.py
PY=/usr/bin/python3
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export OMP_WAIT_POLICY

ARCH1="base=16,mult=1.2,res=1,attn=8,size=16,classes=3"
ARCH2="base=8,mult=1.2.2,res=2,attn=4,size=16,classes=5"

fail() { echo "test_parity: FAIL: $*"; exit 1; }

[ -x "$TOOL" ] || fail "$TOOL is not built (run make $TOOL)"
T=$(mktemp -d "${TMPDIR:-/tmp}/d3po-parity.XXXXXX") || fail "mktemp -d failed"
trap 'rm -rf "$T"' EXIT

ASAN=${D3PO_ASAN:-0}
if [ "$ASAN" != 1 ]; then
    "$PY" -c 'import torch' 2>/dev/null ||
        fail "$PY cannot import torch (apt-get install python3-torch; make test does it)"
fi

rc=0
n=0
for spec in "1 $ARCH1 1" "2 $ARCH2 7"; do
    set -- $spec
    d=$T/a$1
    n=$((n + 1))
    echo "test_parity: arch $2 (seed $3)"
    "$TOOL" "$d" --arch "$2" --seed "$3" || fail "tool_parity --arch $2 failed"
    [ "$ASAN" = 1 ] && continue
    if "$PY" "$PARITY" "$d"; then :; else
        echo "test_parity: FAIL: parity.py found differences for arch $2"
        rc=1
    fi
done
if [ "$ASAN" = 1 ]; then
    echo "test_parity: D3PO_ASAN=1: C dumps only; the comparison with the twin skipped"
elif [ "$rc" -eq 0 ]; then
    echo "test_parity: ok ($n architectures)"
fi
exit "$rc"
