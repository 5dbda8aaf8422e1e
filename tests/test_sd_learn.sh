#!/bin/sh
# test_sd_learn.sh - LoRA D3PO rounds on a Stable Diffusion-family model
# move the model the labels' way (issue 15 item 7). On a tiny random sd1
# pipeline (tests/sd/make_tiny.py; venv of tests/sd/venv.sh):
#   - `d3po auto --oracle jpeg-compressibility --pairs 4 --rounds 2` labels
#     and trains two on-policy rounds: lr 0.005 (a tiny model moves in a
#     few steps, yet not so far past the clamp that it stops learning:
#     0.01 and 0.05 gave rounds that lowered the margin), kl 0 (the
#     preference is the only force on the adapters), train.all_labels
#     (the last round trains on every labeled pair), epochs 4;
#   - tool_sdtrain logratio teacher-forces every trained pair (A or B)
#     through the model with round 0's, 1's and 2's adapters (reference:
#     the adapters off) and prints the mean over the pairs of the margin
#     (mean over steps of log p_theta - log p_ref of the preferred
#     trajectory, minus the same of the other) and of the D3PO loss
#     (beta 0.1, clamp 0.1, no KL term);
#   - round 0 is the reference (zero-initialised up matrices): margin ~0,
#     loss log 2; after round 1 and again after round 2 the margin is
#     larger, and after round 2 the loss is smaller, by amounts a
#     do-nothing update (margin ~3e-7, loss log 2: lr 1e-9 measured) or
#     the same rounds with the labels' signs flipped in the engine (margin
#     -0.058, loss +1.8e-4 measured) fail;
#   - printed, not asserted: the oracle's win rate of the last round over
#     the base on 8 fresh pairs (`d3po eval`), and how many trained pairs
#     gained;
#   - sampling while a round trains (engine overlap, what `d3po label`
#     uses): tool_sdtrain overlap queues an early pair behind a round; it
#     arrives before the round ends, from version 0, bit for bit the
#     untrained model's pair, and the round's adapters are bit for bit
#     those of the same run without overlap.
# Under D3PO_ASAN=1 the Python side is skipped. Exits nonzero on failure.
. "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")
sd_python test_sd_learn
TOOL=$B/tests/tool_sdtrain
M=$T/sd1
sd_tiny test_sd_learn sd1 "$M"
printf 'a red cat\na blue square\n' >"$T/prompts"
printf 'd3po = { lr = 0.005; kl = 0.0; epochs = 4; };\ntrain = { all_labels = true; };\n' >"$T/conf"
S=$T/s
expect 0 "auto: 2 on-policy LoRA D3PO rounds of 4 oracle-labeled pairs" "$D3" auto --session "$S" \
    --model "$M" --prompts "$T/prompts" --size 32x32 --steps 4 --oracle jpeg-compressibility \
    --pairs 4 --rounds 2 --eval-seeds 0 --config "$T/conf"
grep_err "  ...every round trains on every label so far" "objective d3po over every label so far"

if "$TOOL" logratio "$S" 0 1 2 >"$T/lr" 2>&1; then
    ok "tool_sdtrain logratio: the trained pairs under rounds 0, 1, 2"
else
    no "tool_sdtrain logratio"; cat "$T/lr"; finish test_sd_learn; exit 1
fi
grep "^  round 2 " "$T/lr"
# "d3po logratio ROUND NPAIRS MEAN_MARGIN MEAN_LOSS"
val() { awk -v r="$1" -v f="$2" '$1 == "d3po" && $2 == "logratio" && $3 == r { print $f }' "$T/lr"; }
n=$(val 0 4)
m0=$(val 0 5); m1=$(val 1 5); m2=$(val 2 5)
l0=$(val 0 6); l1=$(val 1 6); l2=$(val 2 6)
echo "  $n trained pairs: margin $m0 -> $m1 -> $m2; D3PO loss $l0 -> $l1 -> $l2"
# Which way the oracle labels each pair is up to the tiny model; a tie
# (equal JPEG sizes) trains nothing and is left out.
awk -v n="$n" 'BEGIN { exit !(n >= 4) }' && ok "  ...at least 4 of the 8 pairs labeled A or B" || no "  ...only $n pairs labeled A or B"
# round 0: the up matrices are zero, so the policy is the reference up to
# rounding (measured: |mean margin| < 2e-7, each pair's < 4e-6)
awk -v m="$m0" -v l="$l0" 'BEGIN { exit !(m < 1e-4 && m > -1e-4 && l - log(2) < 1e-5 && log(2) - l < 1e-5) }' &&
    ok "  ...round 0: margin 0, loss log 2 (policy = reference)" || no "  ...round 0 is not the reference: margin $m0, loss $l0"
# the labels' way: the margin rises from round 0 to round 1 and again to
# round 2, and the loss of round 2 is below log 2. Measured on this
# machine (d3po auto --seed 0, the test's run; seeds 1, 2, 3 alike):
#   margin 0 -> 0.027 -> 0.070 (seeds 1-3: 0.159 -> 0.192, 0.032 -> 0.052,
#   0.022 -> 0.052), loss 0.693147 -> 0.692607 -> 0.691670 (0.692890,
#   0.691403, 0.691527 at round 2);
#   the same run with the labels' signs flipped by hand in the engine (h
#   negated where engine.c queues the pairs): margin 0 -> -0.029 ->
#   -0.058, loss 0.693147 -> 0.693541 -> 0.693328 (both checks fail);
#   lr 1e-9 (no update): margin ~3e-7, loss log 2 at every round.
# The thresholds sit at about half of the worst seed's gains (the clamp
# makes the loss's gain small: its floor is 0.6836 per step).
awk -v a="$m0" -v b="$m1" -v c="$m2" 'BEGIN { exit !(b > a + 0.01 && c > b + 0.01) }' &&
    ok "  ...the preferred trajectories' log-ratio margin rises round after round" ||
    no "  ...margin $m0 -> $m1 -> $m2 (wanted +0.01 each round)"
awk -v a="$l0" -v c="$l2" 'BEGIN { exit !(c < a - 1.2e-4) }' &&
    ok "  ...the D3PO loss on the trained pairs falls (round 2 against round 0)" ||
    no "  ...loss $l0 -> $l1 -> $l2 (wanted round 2 below round 0 by 1.2e-4)"
up=$(grep -c "^  round 2 pair .* margin +" "$T/lr")
echo "  (not asserted) $up of $n trained pairs have a positive margin under round 2"

# held out, printed: the oracle's verdict of round 2 against the base
if "$D3" eval --session "$S" --oracle jpeg-compressibility --pairs 8 --steps 4 --json >"$T/ev" 2>"$T/err"; then
    ok "eval: round 2 against the base on 8 fresh pairs"
    echo "  (not asserted) $(cat "$T/ev")"
else
    no "eval --oracle jpeg-compressibility"; cat "$T/err"
fi

if "$TOOL" overlap "$M" --size 32 >"$T/ov" 2>&1 && grep -q "^d3po overlap ok" "$T/ov"; then
    ok "overlap: a pair sampled during a round, from the model in force, the round unchanged"
else
    no "tool_sdtrain overlap"; cat "$T/ov"
fi
finish test_sd_learn
