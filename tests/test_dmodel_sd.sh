#!/bin/sh
# test_dmodel_sd.sh - the sd family behind the model interface
# (engine/dmodel.h): builds tiny random sd1 and sd2 (v-prediction)
# pipelines (tests/sd/make_tiny.py, venv of tests/sd/venv.sh) and runs
# test_dmodel with D3PO_SD_TINY on each: dm_sample / dm_traj_logp /
# dm_decode give exactly sd_ddim_sample's, sd_traj_logp's and
# sd_model_decode's bits, the family reports no trainable set until
# LoRA adapters are attached, and D3PO then trains them (test_sd_train).
# Under D3PO_ASAN=1 the Python side is skipped. Exits nonzero on failure.
. "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")
BIN=$B/tests/test_dmodel
[ -x "$BIN" ] || { echo "test_dmodel_sd: $BIN is not built"; exit 1; }
sd_python test_dmodel_sd
for kind in sd1 sd2; do
    if "$VENV/bin/python" "$HERE/sd/make_tiny.py" --kind $kind --out "$T/$kind" >"$T/make.log" 2>&1; then
        ok "tiny $kind pipeline built"
    else
        no "make_tiny.py --kind $kind"; tail -n 5 "$T/make.log"; continue
    fi
    if D3PO_SD_TINY="$T/$kind" "$BIN" >"$T/run.log" 2>&1; then
        ok "$kind: the interface gives the sd sampler's bits"
    else
        no "$kind: test_dmodel with D3PO_SD_TINY"; cat "$T/run.log"
    fi
done
finish test_dmodel_sd
