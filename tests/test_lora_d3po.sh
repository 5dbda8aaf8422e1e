#!/bin/sh
# test_lora_d3po.sh - LoRA D3PO on Stable Diffusion-family models against
# diffusers 0.31 + peft 0.17 (venv of tests/sd/venv.sh), on tiny random
# sd1 (epsilon) and sd2 (v-prediction, linear projections) pipelines
# (tests/sd/make_tiny.py):
#   - `d3po lora --up-std 0.05` writes random non-zero adapters (kohya
#     naming; alpha 2 of rank 4 on sd2); tool_sdtrain traj samples a pair
#     with them as the trainable set (4 steps, eta 1, cfg 7.5);
#   - tests/sd/d3po_ref.py computes the reference log-probs (peft adapters
#     disabled), the policy's, the D3PO loss per step (beta 0.1, clamp 0.1,
#     image 0 preferred) and every adapter gradient by autograd, one
#     backward per step; tool_sdtrain d3po computes them through the model
#     interface (dm_d3po_pair_backward with the adapters on, dm_traj_logp
#     with them off) and compares: log-probs within 5e-5 + 1e-5 |ref|, loss
#     per step within 1e-5, every adapter gradient within 1e-4 of the
#     largest + 2e-3 |ref| (float32 on both sides; measured ~7e-6 on
#     log-probs, ~1e-5 of the largest gradient);
#   - Diffusion-DPO on the pair's final latents: tests/sd/d3po_ref.py --dpo
#     draws 3 (t, eps) (t = 7, 480, 950), computes the loss per draw (beta
#     T = 500, image 0 preferred, reference = adapters disabled, target eps
#     on sd1 and v on sd2) and every adapter gradient; tool_sdtrain dpo
#     (dm_dpo_pair_backward) matches: loss per draw within 5e-4 + 1e-3
#     |ref| (measured <= 7e-5), gradients within 3e-4 of the largest + 3e-3
#     |ref| (measured ~6e-5); central differences (h 0.02) of the loss in
#     4 adapter entries within 3e-2 relative + 1e-3 max|g|; and 4
#     d3po_train_dm updates with the Diffusion-DPO objective lower the loss
#     on those draws;
#   - `d3po info PIPE --train`: the cost estimate is well-formed and
#     consistent: every number positive; time per pair = sample + reference
#     + update; reference = K x the guided forward, update = epochs x (K x
#     forward + backward + AdamW) (from the printed calibration); peak =
#     the larger of the sum of its parts and the calibration's peak RSS; weights = the parameters `d3po info` counts x 4
#     bytes; adapter state = 4 x the trainable floats x 4 bytes;
#     trajectories = (4K + 2) x the latent size x 4 bytes (no wall-clock
#     assertion: the timings are only checked against each other); on a
#     pixel model all weights train: state = 3 x the weights (gradients,
#     AdamW) + a reference copy; bad sizes, options without --train and
#     --size on a pixel model are one-line errors;
#   - one backward per timestep: the peak resident memory of one pair's
#     LoRA D3PO (tool_sdtrain pair, 32x32 latents) with K = 8 steps is
#     within 8 MB of K = 2's, and the tape's arena (one step's tensors) is
#     the same (memory, not time: no wall-clock assertion).
# Under D3PO_ASAN=1 the Python side is skipped. Exits nonzero on failure.
. "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")
TOOL=$B/tests/tool_sdtrain
[ -x "$TOOL" ] || { echo "test_lora_d3po: $TOOL is not built"; exit 1; }
sd_python test_lora_d3po

# parity KIND REFFLAG TOOLCMD WHAT: d3po_ref.py [REFFLAG] on the pair, then
# tool_sdtrain TOOLCMD against it (the tiny pipeline $T/KIND, the adapters
# $T/l.safetensors and the pair $T/tr.safetensors)
parity() {
    if "$PY" "$HERE/sd/d3po_ref.py" $2 "$T/$1" "$T/l.safetensors" "$T/tr.safetensors" "$T/ref.safetensors" >"$T/ref.log" 2>&1; then
        ok "$1: diffusers + peft reference ($3)"
    else
        no "$1: d3po_ref.py $2"; tail -n 5 "$T/ref.log"; return 1
    fi
    if "$TOOL" $3 "$T/$1" "$T/l.safetensors" "$T/tr.safetensors" "$T/ref.safetensors" >"$T/cmp" 2>&1
    then ok "$1: $4"
    else no "$1: $3 parity"; fi
    cat "$T/cmp"
}

for kind in sd1 sd2; do
    M=$T/$kind
    if "$PY" "$HERE/sd/make_tiny.py" --kind $kind --out "$M" >"$T/make.log" 2>&1; then
        ok "tiny $kind pipeline built"
    else
        no "make_tiny.py --kind $kind"; tail -n 5 "$T/make.log"; continue
    fi
    alpha=4; [ $kind = sd2 ] && alpha=2
    expect 0 "$kind: random adapters (alpha $alpha, rank 4)" "$D3" lora --model "$M" --out "$T/l.safetensors" --up-std 0.05 --seed 3 --alpha $alpha
    expect 0 "$kind: a pair sampled by the adapted model" "$TOOL" traj "$M" "$T/l.safetensors" 4 "$T/tr.safetensors"
    parity "$kind" "" d3po "D3PO loss, log-probs and adapter gradients equal diffusers + peft's" &&
        parity "$kind" --dpo dpo "Diffusion-DPO loss, adapter gradients, central differences and training"
done

# one backward per timestep: memory does not grow with the steps
peak() { # K -> "ARENA_MB PEAK_MB" of one pair's LoRA D3PO at 32x32 latents
    "$TOOL" pair "$T/sd1" "$1" --size 32 >"$T/pair$1" 2>&1 || { no "tool_sdtrain pair K=$1"; cat "$T/pair$1"; return; }
    awk '/^d3po lora-pair/ {print $9, $10}' "$T/pair$1"
}
a2=$(peak 2); a8=$(peak 8)
echo "  K=2: arena, peak RSS MB: $a2; K=8: $a8"
if [ -n "$a2" ] && [ -n "$a8" ] && echo "$a2 $a8" | awk '{exit !($1 == $3 && $4 <= $2 + 8)}'; then
    ok "one step's activations at a time: K=8's peak within 8 MB of K=2's, the same arena"
else
    no "memory grows with the steps: K=2 $a2, K=8 $a8"
fi
# d3po info --train: well-formed, positive, internally consistent
printf 'd3po = { epochs = 3; };\n' >"$T/c.conf"
if "$D3" info "$T/sd1" --train --device cpu --steps 4 --config "$T/c.conf" >"$T/cost" 2>"$T/err"; then
    ok "info --train runs"
else
    no "info --train"; cat "$T/err"
fi
cat "$T/cost"
"$D3" info "$T/sd1" >"$T/info" 2>&1
params=$(awk '/^(text encoder|unet|vae):/ && /parameters/ {
    if (match($0, /[0-9.]+ M used/)) s += substr($0, RSTART, RLENGTH - 7) + 0
    else if (match($0, /[0-9.]+ M parameters/)) s += substr($0, RSTART, RLENGTH - 13) + 0
} END {print s}' "$T/info")
echo "  parameters by d3po info: $params M"
if awk -v P="$params" '
    function near(a, b, tol) { return (a - b) <= tol && (b - a) <= tol }
    function after(s) { return substr($0, index($0, s) + length(s)) + 0 }
    /^train cost:/ { for (i = 1; i <= NF; i++) if ($i == "trainable") numel = $(i - 1) }
    /^settings:/ { for (i = 1; i <= NF; i++) if ($i == "epochs,") E = $(i - 1) }
    /^calibration:/ { fwd = after("of a pair "); fb = after("s, with backward "); opt = after("AdamW ") }
    /^d3po train-cost/ { for (i = 4; i <= NF; i++) { v[i] = $i + 0; if (!(v[i] > 0)) bad = bad " field " i " not positive" }
        K = v[4]; seen = 1 }
    END {
        if (!seen) { print "no train-cost line"; exit 1 }
        if ($3 != "cpu" || K != 4 || v[5] != 16 || v[6] != 16) bad = bad " device/K/size"
        if (E != 3) bad = bad " epochs " E
        if (!near(v[7], v[8] + v[9] + v[10], 2e-4)) bad = bad " time != sample+ref+update"
        if (!near(v[9], K * fwd, 3e-4)) bad = bad " reference != K x forward"
        if (!near(v[10], E * (K * fb + opt), E * (K + 1) * 1e-4)) bad = bad " update != E (K fwdbwd + AdamW)"
        parts = v[13] + v[14] + v[15] + v[16] + v[17] + v[18]
        if (!near(v[12], parts > v[19] ? parts : v[19], 0.4)) bad = bad " peak != max(its parts, calibration RSS)"
        if (!near(v[14], P * 1e6 * 4 / 1048576, 0.01 * v[14] + 0.1)) bad = bad " weights " v[14] " vs " P " M params"
        if (!near(v[16], numel * 16 / 1048576, 0.01)) bad = bad " adapter state vs " numel " floats"
        if (!near(v[18], (4 * K + 2) * 256 * 4 / 1048576, 0.01)) bad = bad " trajectories"
        if (bad != "") { print "inconsistent:" bad; exit 1 }
    }' "$T/cost"; then
    ok "info --train: every number positive, the sums and products consistent"
else
    no "info --train output"
fi
expect 1 "info --train: --size not a multiple of the VAE factor" "$D3" info "$T/sd1" --train --size 15x16
grep_err "the size error names the factor" "multiples of 2"
expect 1 "info: --steps without --train" "$D3" info "$T/sd1" --steps 4
grep_err "says --train" "go with --train"
expect 1 "info --train: --steps 0" "$D3" info "$T/sd1" --train --steps 0
"$D3" init --out "$T/px.safetensors" --seed 1 --arch "base=8,mult=1.2,res=1,attn=4,size=8,classes=3" >/dev/null 2>&1
expect 1 "info --train --size on a pixel model" "$D3" info "$T/px.safetensors" --train --size 16x16
grep_err "says --size is for SD models" "Stable Diffusion-family"
expect 0 "info --train on a pixel model" "$D3" info "$T/px.safetensors" --train --device cpu --steps 4
cat "$T/out"
if awk '
    function near(a, b, tol) { return (a - b) <= tol && (b - a) <= tol }
    /^train cost:/ { numel = $4 }
    /^d3po train-cost/ { for (i = 4; i <= NF; i++) v[i] = $i + 0; seen = 1 }
    END {
        if (!seen || !(numel > 0)) exit 1
        w = numel * 4 / 1048576
        parts = v[13] + v[14] + v[15] + v[16] + v[17] + v[18]
        exit !(v[5] == 8 && v[7] > 0 && near(v[7], v[8] + v[9] + v[10], 2e-4) && near(v[14], w, 0.06) &&
               near(v[16], 4 * w, 0.01) && v[15] > 0 && near(v[12], parts > v[19] ? parts : v[19], 0.4))
    }' "$T/out"; then
    ok "pixel model: all weights train; state = gradients + AdamW + the reference copy; sums consistent"
else
    no "pixel model's info --train output"
fi
finish test_lora_d3po
