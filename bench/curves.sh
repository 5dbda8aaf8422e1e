#!/bin/sh
# curves.sh OUTDIR SETTING JUDGE SEED [control]
#
# One learning curve of issue 17 item 4 on the default model, with an eval
# after 16, 32, 64 and 96 labels: bench/learning.sh in rounds of 8 pairs,
# 32 blind eval pairs against the base (eval seed 1000), the 4 prompts of
# the earlier curves (smiling face, fruit, flower, country flag), one CPU
# thread. SETTING names the training settings, written to
# OUTDIR/SETTING/settings.conf (a config file with only the changed keys):
#   dpo-lr1e-5   train.objective "diffusion-dpo", d3po.lr 1e-5 (other keys
#                at their defaults: epochs 2, dpo_beta 2.5, dpo_draws 16)
#   dpo-lr3e-5   the same with d3po.lr 3e-5
#   dpo-lr1e-5-all  dpo-lr1e-5 with train.all_labels true (every label
#                revisited each round with fresh draws)
#   d3po         the defaults (objective "d3po", lr 1e-4, kl 0.3, base)
# JUDGE is the oracle that labels the pairs and judges the evals; with
# "control" as the fifth argument the pairs are labeled by coin flips
# (noisy:JUDGE:1e9) and the evals still by JUDGE: the random-label control.
# The coin flips do not depend on JUDGE: two judges' controls of one SETTING
# and SEED train the same model (byte-identical checkpoints), so a control
# seed evaluated by a second judge costs only its evals.
# The session goes to OUTDIR/SETTING/JUDGE-sSEED (or random-JUDGE-sSEED),
# the evals to the .evals.jsonl beside it. Running it again resumes: the
# chunks already evaluated (by their label counts) are skipped.
# Realism needs the data set: D3PO_DATASET=DIR (d3po dataset emoji --out DIR).
# CURVE_TO=128 or 256 (default 96) extends the curve with evals after 128
# and 256 labels (rounds 4 and 16 more); an existing 96-label curve is
# extended in place.
# Report: python3 bench/learning_report.py OUTDIR/SETTING
set -u
CURVE_TO=${CURVE_TO:-96}
case "$CURVE_TO" in
96) CHUNKS="2 2 4 4" ;;
128) CHUNKS="2 2 4 4 4" ;;
256) CHUNKS="2 2 4 4 4 16" ;;
*)
    echo "curves.sh: CURVE_TO '$CURVE_TO' is not 96, 128 or 256" >&2
    exit 2
    ;;
esac
OUT=${1:?usage: curves.sh OUTDIR SETTING JUDGE SEED [control]}
SETTING=${2:?setting}
JUDGE=${3:?judge}
SEED=${4:?seed}
MODE=${5:-}
DIR="$OUT/$SETTING"
mkdir -p "$DIR" || exit 1
CONF="$DIR/settings.conf"
{
    echo 'session = { prompts = ["smiling face", "fruit", "flower", "country flag"]; };'
    echo 'engine = { threads = 1; device = "cpu"; };'
    case "$SETTING" in
    dpo-lr1e-5)
        echo 'd3po = { lr = 1e-5; };'
        echo 'train = { objective = "diffusion-dpo"; };'
        ;;
    dpo-lr3e-5)
        echo 'd3po = { lr = 3e-5; };'
        echo 'train = { objective = "diffusion-dpo"; };'
        ;;
    dpo-lr1e-5-all)
        echo 'd3po = { lr = 1e-5; };'
        echo 'train = { objective = "diffusion-dpo"; all_labels = true; };'
        ;;
    d3po) ;;
    *)
        echo "curves.sh: unknown SETTING '$SETTING' (dpo-lr1e-5, dpo-lr3e-5, dpo-lr1e-5-all or d3po)" >&2
        exit 2
        ;;
    esac
} >"$CONF.$$" && mv "$CONF.$$" "$CONF" || exit 1
ORACLE=$JUDGE
RUN=$JUDGE
if [ "$MODE" = control ]; then
    ORACLE="noisy:$JUDGE:1e9"
    RUN="random-$JUDGE"
elif [ -n "$MODE" ]; then
    echo "curves.sh: fifth argument '$MODE' is not 'control'" >&2
    exit 2
fi
EV="$DIR/$RUN-s$SEED.evals.jsonl"
# chunk i (rounds 2, 2, 4, 4[, 4, 16]: evals after 16, 32, 64, 96[, 128,
# 256] labels) is done
# when the evals file has i lines; a chunk cut before its eval reruns (its
# eval line then names the labels the session really has)
i=0
for rounds in $CHUNKS; do
    i=$((i + 1))
    n=0
    [ -f "$EV" ] && n=$(grep -c . "$EV")
    [ "$n" -ge "$i" ] && continue
    D3PO_CONFIG="$CONF" RUN=$RUN EVAL_ORACLE=$JUDGE \
        sh "$(dirname "$0")/learning.sh" "$DIR" "$ORACLE" "$SEED" 1 "$rounds" 8 32 || exit 1
done
