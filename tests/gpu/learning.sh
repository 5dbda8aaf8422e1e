#!/bin/bash
# learning.sh OUTDIR - long D3PO learning curves on a GPU machine, from the
# repo root, with .gpu/bundle.tar.xz made by tests/gpu/pack.sh beside it:
#
#   bash tests/gpu/learning.sh OUTDIR
#
# Why: bench/step_snr measured that the signal in one label's D3PO
# gradient is below 1/2000 of its squared norm on the default model
# (bench/results/2026-11-26-step-snr-cpu.txt), so the paper's direction
# needs hundreds to thousands of labels per run, several seeds and a
# control beside each; a CPU here makes ~8 labels a minute, a GPU ~100.
#
# Unpacks the bundle with tests/gpu/run.sh (SETUP_ONLY=1), then runs the
# JOBS side by side, each a bench/learning.sh curve on the default model
# with the GPU (chunks of ROUNDS rounds of 8 pairs, then a blind 32-pair
# eval against the base), until BUDGET seconds have passed: each run is
# killed then, and the chunks it finished stay. Every run gets the settings
# of config/d3po.conf with the 4 prompts of the CPU curves, the device set
# to "cuda", one CPU thread, and its own overrides.
#
# JOBS: a file, one run per line, "NAME ORACLE EVAL_ORACLE SEED
# [KEY=VALUE ...]" (KEY a key of the d3po group, e.g. kl=0 lr=3e-5).
# Default: 9 runs: jpeg-compressibility, jpeg-incompressibility and random
# labels judged by jpeg-compressibility, at lr 1e-5 without KL and one
# epoch for seeds 1 and 2, and at the defaults (kl 0.3) for seed 1.
# OUTDIR gets, per run, NAME-sSEED.evals.jsonl (bench/learning.sh's lines)
# and NAME-sSEED.metrics.jsonl, a grid of its final samples
# NAME-sSEED.png, report.txt (bench/learning_report.py) and run.log.
#
# Environment: BUDGET (default 420), ROUNDS (default 8: an eval every 64
# labels), JOBS (a file), PY (default python3), D3PO_GPU_DIR (as run.sh),
# DEV (default cuda; cpu dry-runs it on a machine without a GPU).
set -u
if [ $# -ne 1 ]; then
    echo "usage: bash tests/gpu/learning.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/../.." || exit 2
DIR=${D3PO_GPU_DIR:-/tmp/d3po-gpu}
BUDGET=${BUDGET:-420}
ROUNDS=${ROUNDS:-8}
PY=${PY:-python3}
DEV=${DEV:-cuda}
START=$(date +%s)
exec > >(tee -a "$OUT/run.log") 2>&1

SETUP_ONLY=1 D3PO_GPU_DIR="$DIR" bash tests/gpu/run.sh "$DIR/setup" >/dev/null 2>&1 ||
    { echo "learning.sh: setup failed:"; cat "$DIR/setup/run.log"; exit 1; }
D3PO="$DIR/wrap/d3po"
"$D3PO" info --devices

jobs_file=${JOBS:-}
if [ -z "$jobs_file" ]; then
    jobs_file="$DIR/jobs.txt"
    : >"$jobs_file"
    # small steps over many labels (as the CPU runs of
    # bench/results/2026-11-26-learning-long-cpu.txt continue), seeds 1-2,
    # and the defaults (kl 0.3), seed 1
    small="lr=1e-5 kl=0 epochs=1"
    for s in 1 2; do
        echo "small-comp jpeg-compressibility jpeg-compressibility $s $small" >>"$jobs_file"
        echo "small-incomp jpeg-incompressibility jpeg-incompressibility $s $small" >>"$jobs_file"
        echo "small-random noisy:jpeg-compressibility:1e9 jpeg-compressibility $s $small" >>"$jobs_file"
    done
    echo "default-comp jpeg-compressibility jpeg-compressibility 1" >>"$jobs_file"
    echo "default-incomp jpeg-incompressibility jpeg-incompressibility 1" >>"$jobs_file"
    echo "default-random noisy:jpeg-compressibility:1e9 jpeg-compressibility 1" >>"$jobs_file"
fi

# $1 = file, $2... = KEY=VALUE: config/d3po.conf, 4 prompts, device, overrides
make_conf() {
    local f=$1
    shift
    sed -e 's/^    prompts = \[\];/    prompts = ["smiling face", "fruit", "flower", "country flag"];/' \
        -e "s/^    device = .*/    device = \"$DEV\";/" -e 's/^    threads = .*/    threads = 1;/' \
        config/d3po.conf >"$f"
    local kv k v
    for kv in "$@"; do
        k=${kv%%=*} v=${kv#*=}
        grep -q "^    $k = " "$f" || { echo "learning.sh: no key $k in config/d3po.conf" >&2; return 1; }
        sed -i "s|^    $k = .*|    $k = $v;|" "$f"
    done
}

rm -rf "$DIR/learn"
mkdir -p "$DIR/learn"
pids=()
names=()
while read -r name oracle eval_oracle seed rest; do
    [ -z "${name:-}" ] && continue
    case "$name" in \#*) continue ;; esac
    conf="$DIR/learn/$name-s$seed.conf"
    # shellcheck disable=SC2086
    make_conf "$conf" $rest || exit 1
    RUN=$name EVAL_ORACLE=$eval_oracle D3="$D3PO" D3PO_CONFIG="$conf" OMP_NUM_THREADS=1 \
        timeout $((BUDGET - ($(date +%s) - START))) sh bench/learning.sh "$DIR/learn" "$oracle" "$seed" 1000 "$ROUNDS" 8 32 \
        >"$DIR/learn/$name-s$seed.log" 2>&1 &
    pids+=($!)
    names+=("$name-s$seed")
    echo "started $name-s$seed: $oracle judged by $eval_oracle, seed $seed ${rest:+($rest)}"
done <"$jobs_file"
for p in "${pids[@]}"; do wait "$p"; done
echo "runs ended after $(( $(date +%s) - START )) s"

for n in "${names[@]}"; do
    cp "$DIR/learn/$n.evals.jsonl" "$OUT/" 2>/dev/null
    cp "$DIR/learn/$n/metrics.jsonl" "$OUT/$n.metrics.jsonl" 2>/dev/null
    tail -n 3 "$DIR/learn/$n.log" | cut -c1-300
    # the final model's samples, to look at (a few seconds each)
    timeout 60 "$D3PO" sample --session "$DIR/learn/$n" --grid --seed 1000 --device "$DEV" \
        --classes "smiling face,fruit,flower,country flag" \
        --out "$OUT/$n.png" >/dev/null 2>&1 || echo "no grid for $n"
done
"$PY" bench/learning_report.py "$DIR/learn" >"$OUT/report.txt" 2>&1
cat "$OUT/report.txt"
