#!/bin/sh
# curves_reeval.sh OUTDIR SETTING FROMJUDGE TOJUDGE SEED
#
# The random-label control of curves.sh judged by a second judge without
# training it again: the coin flips of a control do not depend on the judge
# (noisy:JUDGE:1e9 never looks at the images), so the control model of
# FROMJUDGE is the control model of TOJUDGE. For each eval line of
# OUTDIR/SETTING/random-FROMJUDGE-sSEED.evals.jsonl (labels 16, 32, 64, 96,
# 128, 256 = rounds of 8 pairs 2, 4, 8, 12, 16, 32) a copy of the session
# is rolled back to that round (`d3po session rollback`) and given the same
# blind eval as curves.sh (`d3po eval --oracle TOJUDGE --pairs 32 --seed
# 1000`); the lines go to OUTDIR/SETTING/random-TOJUDGE-sSEED.evals.jsonl.
# Rerunning skips the label counts already there. D3=BINARY (default
# build/d3po); realism needs D3PO_DATASET.
set -u
OUT=${1:?usage: curves_reeval.sh OUTDIR SETTING FROMJUDGE TOJUDGE SEED}
SETTING=${2:?setting}
FROM=${3:?fromjudge}
TO=${4:?tojudge}
SEED=${5:?seed}
D3=${D3:-build/d3po}
DIR="$OUT/$SETTING"
SRC="$DIR/random-$FROM-s$SEED"
SRCEV="$SRC.evals.jsonl"
EV="$DIR/random-$TO-s$SEED.evals.jsonl"
CONF="$DIR/settings.conf"
[ -d "$SRC" ] && [ -f "$SRCEV" ] || {
    echo "curves_reeval.sh: no control session $SRC with its $SRCEV" >&2
    exit 1
}
[ "$FROM" != "$TO" ] || {
    echo "curves_reeval.sh: FROMJUDGE and TOJUDGE are both '$FROM'" >&2
    exit 2
}
TMP=$(mktemp -d) || exit 1
trap 'rm -rf "$TMP"' EXIT
for labels in $(python3 -c 'import json, sys
for l in open(sys.argv[1]):
    if l.strip(): print(json.loads(l)["labels"])' "$SRCEV"); do
    if [ -f "$EV" ] && python3 -c 'import json, sys
sys.exit(0 if any(l.strip() and json.loads(l)["labels"] == int(sys.argv[2]) for l in open(sys.argv[1])) else 1)' "$EV" "$labels"; then
        continue
    fi
    case $((labels % 8)) in
    0) ;;
    *)
        echo "curves_reeval.sh: $labels labels is not a whole number of rounds of 8" >&2
        exit 1
        ;;
    esac
    round=$((labels / 8))
    rm -rf "$TMP/s" && cp -a "$SRC" "$TMP/s" || exit 1
    have=$("$D3" session info "$TMP/s" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["rounds"])') || exit 1
    if [ "$have" -lt "$round" ]; then
        echo "curves_reeval.sh: $SRC has $have rounds, fewer than the $round of its eval after $labels labels" >&2
        exit 1
    fi
    if [ "$have" -gt "$round" ]; then
        "$D3" session rollback "$TMP/s" --to-round "$round" >/dev/null || exit 1
    fi
    got=$("$D3" session info "$TMP/s" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["rounds"])') || exit 1
    # shellcheck disable=SC2086
    j=$("$D3" eval --session "$TMP/s" --oracle "$TO" --pairs 32 --seed 1000 --json --config "$CONF") || exit 1
    echo "{\"labels\":$labels,\"seed\":$SEED,\"round\":$round,\"rounds_after_rollback\":$got,\"eval\":$j}" >>"$EV"
    echo "reeval: random-$FROM-s$SEED after $labels labels (round $round) judged by $TO: $j" >&2
done
