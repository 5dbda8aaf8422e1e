#!/bin/sh
# run.sh - the d3po benchmarks against the PyTorch yardstick (make bench).
#
#   B=build THREADS=N [CASES="sample d3po pretrain"] [DEVICES="cpu cuda"] sh bench/run.sh
#
# For each case runs $B/bench/bench and then bench/bench_torch.py, one after
# the other, with the same thread count and the same thread environment,
# and prints
#   bench <case>: d3po <value> <unit>, pytorch <value> <unit>, ratio <r>
#   bench <case> peak memory: d3po <MB> MB, pytorch <MB> MB
# ratio = pytorch_time / d3po_time (> 1: d3po is faster). Then, when
# `bench --probe` opens the CUDA backend, the same cases on the GPU (both
# programs with --device cuda, TF32 off on both sides):
#   bench gpu-<case>: d3po <value> <unit>, pytorch <value> <unit>, ratio <r>
#   bench gpu-<case> peak device memory: d3po <MB> MB, pytorch <MB> MB
# and otherwise one line `bench gpu: skipped (<reason>)`. The same lines,
# with the machine, thread count, GPU and git commit, go to
# bench/results/latest.txt.
# Exits non-zero when a program fails or prints nothing usable; never on
# the ratio (benchmarks do not assert on time).
#
# Overrides: PY (the Python with torch; on a GPU machine the one whose torch
# has CUDA), BENCH (the bench binary, default $B/bench/bench), DEVICES
# ("cpu cuda", "cpu" or "cuda"), RESULTS_FILE (default
# bench/results/latest.txt), LOGS (default $B/bench/logs), CASES_ONLY=1
# (skip the terminal-latency benchmark).
cd "$(dirname "$0")/.." || exit 1
LC_ALL=C
export LC_ALL
B=${B:-build}
THREADS=${THREADS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}
CASES=${CASES:-sample d3po pretrain sd-unet}
DEVICES=${DEVICES:-cpu cuda}
PY=${PY:-/usr/bin/python3}
BENCH=${BENCH:-$B/bench/bench}
RESULTS_FILE=${RESULTS_FILE:-bench/results/latest.txt}
LOGS=${LOGS:-$B/bench/logs}

if [ ! -x "$BENCH" ]; then
    echo "bench: $BENCH not built (run make bench)" >&2
    exit 1
fi
mkdir -p "$(dirname "$RESULTS_FILE")" "$LOGS" || exit 1

# Both programs get the same thread budget. d3po pins OpenBLAS to one
# thread itself (it parallelises around it with OpenMP); PyTorch may use
# its OpenMP pool and its BLAS threads.
OMP_NUM_THREADS=$THREADS
OPENBLAS_NUM_THREADS=$THREADS
MKL_NUM_THREADS=$THREADS
export OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS

out="$LOGS/latest.txt.tmp"
cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
[ -n "$cpu" ] || cpu=$(uname -p 2>/dev/null)
commit=$(git rev-parse --short HEAD 2>/dev/null) || commit="none (no commits)"
[ -n "$commit" ] || commit="none (no commits)"
if [ -n "$(git status --porcelain 2>/dev/null | head -n 1)" ]; then commit="$commit (dirty tree)"; fi
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine: $(uname -m)"
    echo "cpu: ${cpu:-unknown}"
    echo "threads: $THREADS"
    echo "commit: $commit"
} >"$out"

case " $DEVICES " in *" cuda "*)
    if gpu=$("$BENCH" --probe 2>"$LOGS/probe.err"); then
        gpu=$(printf '%s\n' "$gpu" | head -n 1)
        [ -n "$gpu" ] || gpu="cuda"
    else
        gpu=""
        why=$(head -n 1 "$LOGS/probe.err")
        [ -n "$why" ] || why="bench --probe failed"
    fi
    echo "gpu: ${gpu:-none ($why)}" >>"$out"
    ;;
esac

# $1 = log file, $2 = expected first word, $3 = case: prints "<seconds> <MB>"
# from the program's one result line, or nothing.
result() {
    awk -v w="$2" -v c="$3" '$1 == w && $2 == c && NF == 4 && $3 + 0 > 0 { r = $3 " " $4 } END { if (r != "") print r }' "$1"
}

fail=0
# $1 = case, $2 = why; the details are already on stderr
failed() {
    echo "bench $1: FAILED ($2)" | tee -a "$out" >&2
    fail=1
}

# $1 = device (cpu|cuda), $2 = case
run_case() {
    rdev=$1 c=$2
    if [ "$rdev" = cuda ]; then name="gpu-$c" mem="peak device memory" digits=4
    else name="$c" mem="peak memory" digits=3; fi
    case "$c" in sample|d3po|pretrain) ;; *) failed "$name" "unknown case"; return;; esac
    dlog="$LOGS/$name.d3po.log"
    tlog="$LOGS/$name.torch.log"
    if ! "$BENCH" --case "$c" --threads "$THREADS" --device "$rdev" >"$dlog" 2>"$dlog.err"; then
        cat "$dlog.err" >&2
        failed "$name" "$BENCH exited non-zero"
        return
    fi
    if ! "$PY" bench/bench_torch.py --threads "$THREADS" --case "$c" --device "$rdev" >"$tlog" 2>"$tlog.err"; then
        tail -n 20 "$tlog.err" >&2
        failed "$name" "bench_torch.py exited non-zero"
        return
    fi
    d=$(result "$dlog" d3po "$c")
    t=$(result "$tlog" torch "$c")
    if [ -z "$d" ] || [ -z "$t" ]; then
        echo "d3po printed: $(cat "$dlog")" >&2
        echo "torch printed: $(cat "$tlog")" >&2
        failed "$name" "no result line"
        return
    fi
    echo "$d $t" | awk -v c="$c" -v name="$name" -v mem="$mem" -v dg="$digits" '{
        ds = $1; dm = $2; ts = $3; tm = $4
        f = "%." dg "f"
        if (c == "pretrain") { unit = "images/s"; dv = sprintf("%.1f", 64 / ds); tv = sprintf("%.1f", 64 / ts) }
        else { unit = (c == "sample") ? "s/pair" : "s/update"; dv = sprintf(f, ds); tv = sprintf(f, ts) }
        printf "bench %s: d3po %s %s, pytorch %s %s, ratio %.2f\n", name, dv, unit, tv, unit, ts / ds
        printf "bench %s %s: d3po %.1f MB, pytorch %.1f MB\n", name, mem, dm, tm
    }' | tee -a "$out"
}

# The SD UNet (issue 14): $B/tests/tool_sdunet bench against diffusers'
# UNet2DConditionModel of the same config (bench/sd_unet_mid.json), random
# weights, 16x16 latents, batch 2, in the reference venv (tests/sd/venv.sh;
# $SD_VENV, else $B/sd-venv). CPU only for now.
run_sd_unet() {
    tool=$B/tests/tool_sdunet
    dlog="$LOGS/sd-unet.d3po.log" tlog="$LOGS/sd-unet.torch.log"
    [ -x "$tool" ] || { failed sd-unet "$tool not built"; return; }
    venv=$(B=$B sh tests/sd/venv.sh 2>"$tlog.err" | tail -n 1) ||
        { cat "$tlog.err" >&2; failed sd-unet "no diffusers venv (tests/sd/venv.sh)"; return; }
    set -- bench/sd_unet_mid.json --size 16 --batch 2 --threads "$THREADS"
    "$tool" bench "$@" >"$dlog" 2>"$dlog.err" ||
        { cat "$dlog.err" >&2; failed sd-unet "$tool exited non-zero"; return; }
    "$venv/bin/python" bench/sd_unet_torch.py "$@" >"$tlog" 2>"$tlog.err" ||
        { tail -n 20 "$tlog.err" >&2; failed sd-unet "sd_unet_torch.py exited non-zero"; return; }
    d=$(awk '$1 == "d3po" && $2 == "sd-unet" && NF == 5 { print $3, $4, $5 }' "$dlog")
    t=$(awk '$1 == "torch" && $2 == "sd-unet" && NF == 5 { print $3, $4, $5 }' "$tlog")
    [ -n "$d" ] && [ -n "$t" ] || { failed sd-unet "no result line"; return; }
    echo "$d $t" | awk '{
        printf "bench sd-unet-forward: d3po %.3f s, pytorch %.3f s, ratio %.2f\n", $1, $4, $4 / $1
        printf "bench sd-unet-fwdbwd: d3po %.3f s, pytorch %.3f s, ratio %.2f\n", $2, $5, $5 / $2
        printf "bench sd-unet peak memory: d3po %.1f MB, pytorch %.1f MB\n", $3, $6
    }' | tee -a "$out"
}

for dv in $DEVICES; do
    case "$dv" in
    cpu)
        for c in $CASES; do
            if [ "$c" = sd-unet ]; then run_sd_unet; else run_case cpu "$c"; fi
        done ;;
    cuda)
        if [ -z "$gpu" ]; then
            echo "bench gpu: skipped ($why)" | tee -a "$out"
        else
            for c in $CASES; do [ "$c" = sd-unet ] || run_case cuda "$c"; done
        fi ;;
    *) failed "$dv" "unknown device (expected cpu or cuda)" ;;
    esac
done

# the labeling screen's responsiveness (no PyTorch counterpart): keypress to
# the next pair fully drawn, through a pty, on the yardstick architecture
if [ -z "$CASES_ONLY" ]; then
    for g in blocks sixel; do
        if "$PY" bench/tui_latency.py "$B/d3po" --keys 8 --graphics $g >"$LOGS/tui-$g.log" 2>&1; then
            grep '^bench tui-latency' "$LOGS/tui-$g.log" | tee -a "$out"
        else
            tail -n 5 "$LOGS/tui-$g.log" >&2
            echo "bench tui-latency-$g: FAILED" | tee -a "$out"
            fail=1
        fi
    done
fi

mv "$out" "$RESULTS_FILE" || fail=1
exit $fail
