#!/bin/sh
# learning.sh OUTDIR ORACLE SEED [CHUNKS] [ROUNDS] [PAIRS] [EVAL_PAIRS]
#
# One learning curve of `d3po auto` on the default model: CHUNKS times
# (default 3) ROUNDS rounds (default 4) of PAIRS pairs (default 8) judged
# by ORACLE with training pairs from --seed SEED, and after each chunk a
# blind `d3po eval` of EVAL_PAIRS pairs (default 32, eval seed 1000, the
# same for every chunk and run) against the base model. Writes the session
# to OUTDIR/ORACLE-sSEED/ (its metrics.jsonl: oracle score and drift per
# round) and one JSON line per chunk to OUTDIR/ORACLE-sSEED.evals.jsonl:
#   {"labels":N, ...the eval --json object...}
# Settings come from the config (D3PO_CONFIG=FILE to use another). Run it
# again on the same OUTDIR to extend a curve: the session resumes and the
# eval lines are appended. A control run trains on one judge and is
# evaluated by another: EVAL_ORACLE=NAME (default ORACLE) judges the evals,
# RUN=NAME (default ORACLE) names the session, e.g. random labels:
#   RUN=random EVAL_ORACLE=jpeg-compressibility \
#       bench/learning.sh OUT noisy:jpeg-compressibility:1e9 1
set -u
OUT=${1:?usage: learning.sh OUTDIR ORACLE SEED [CHUNKS] [ROUNDS] [PAIRS] [EVAL_PAIRS]}
ORACLE=${2:?oracle}
SEED=${3:?seed}
CHUNKS=${4:-3}
ROUNDS=${5:-4}
PAIRS=${6:-8}
EVAL=${7:-32}
D3=${D3:-build/d3po}
CONF=${D3PO_CONFIG:+--config $D3PO_CONFIG}
EVAL_ORACLE=${EVAL_ORACLE:-$ORACLE}
RUN=${RUN:-$ORACLE}
DIR="$OUT/$RUN-s$SEED"
EV="$OUT/$RUN-s$SEED.evals.jsonl"
mkdir -p "$OUT" || exit 1
c=1
while [ "$c" -le "$CHUNKS" ]; do
    # shellcheck disable=SC2086
    "$D3" auto --session "$DIR" --oracle "$ORACLE" --rounds "$ROUNDS" --pairs "$PAIRS" \
        --seed "$SEED" --eval-seeds 8 $CONF || exit 1
    labels=$(tail -n 1 "$DIR/metrics.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["total_labels"])') || exit 1
    # shellcheck disable=SC2086
    j=$("$D3" eval --session "$DIR" --oracle "$EVAL_ORACLE" --pairs "$EVAL" --seed 1000 --json $CONF) || exit 1
    echo "{\"labels\":$labels,\"seed\":$SEED,\"eval\":$j}" >>"$EV"
    echo "learning: $RUN seed $SEED after $labels labels: $j" >&2
    c=$((c + 1))
done
