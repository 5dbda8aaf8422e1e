#!/bin/bash
# run.sh OUTDIR - the GPU checks, on a machine with an NVIDIA GPU, from the
# repo root, with .gpu/bundle.tar.xz made by tests/gpu/pack.sh beside it:
#
#   bash tests/gpu/run.sh OUTDIR
#
# Unpacks the bundle into /tmp/d3po-gpu, finds the CUDA libraries (the
# toolkit's lib64, the nvidia-* pip wheels of the Python that holds torch,
# a search of / as a last resort), then runs, each step bounded by
# `timeout` and all within BUDGET seconds (default 560):
#   1. nvidia-smi, torch's view of the GPU, ldd of the bundle, d3po info --devices
#   2. test_cuda: every op, the whole model, D3PO and sampling, CUDA vs CPU
#   3. d3po sample --device cuda --grid on models/default.safetensors, and
#      the same grid on the CPU, compared pixel by pixel
#   4. d3po auto --device cuda: one short round (4 pairs, brightness oracle)
#   5. bench/run.sh on the GPU: sample, d3po, pretrain against PyTorch
#   6. SD bench: pair sampling of a random SD 1.5-shaped pipeline at 512x512,
#      d3po against diffusers (fp16, SDPA) on the same GPU, peak memory
#      (needs build/gpu-wheels from tests/gpu/wheels.sh; SKIP without it)
# OUTDIR gets at most 7 files: summary.txt (one line per step),
# test_cuda.log, gpu_samples.png, auto.log, bench.txt, bench_logs.txt and
# run.log (everything printed). Exit status: 0 when test_cuda passed, 1
# when it failed, was skipped or could not run (the other steps are
# reported in summary.txt, not in the status).
#
# Environment: PY (default python3: the one with torch), BUDGET, SETUP_ONLY=1,
# SD_KIND, SD_SIZE, SD_STEPS (the SD bench: sd15, 512, 20),
# (unpack and write the wrappers only), D3PO_GPU_DIR
# (default /tmp/d3po-gpu), DEV (default cuda: the device of the sample and
# auto steps; DEV=cpu dry-runs this script on a machine without a GPU).
set -u
if [ $# -ne 1 ]; then
    echo "usage: bash tests/gpu/run.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)
DIR=${D3PO_GPU_DIR:-/tmp/d3po-gpu}
PY=${PY:-python3}
BUDGET=${BUDGET:-560}
DEV=${DEV:-cuda}
START=$(date +%s)
LOG="$OUT/run.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1

declare -a STEPS=()
test_status=1 # 0 only when test_cuda passed
note() { STEPS+=("$1"); echo ">>> $1"; }
finish() {
    {
        echo "d3po GPU checks, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(( $(date +%s) - START )) s"
        for s in "${STEPS[@]}"; do echo "$s"; done
        if [ "$test_status" -eq 0 ]; then echo "RESULT: test_cuda passed"; else echo "RESULT: test_cuda FAILED or did not run"; fi
    } >"$SUMMARY"
    echo "=== summary ($SUMMARY)"
    cat "$SUMMARY"
}
trap finish EXIT

# seconds left for a step: min(step limit, budget left), at least 1
# (`timeout 0` would mean no limit at all)
left() {
    local rest=$(( BUDGET - ($(date +%s) - START) ))
    [ "$rest" -lt "$1" ] && echo $(( rest > 1 ? rest : 1 )) || echo "$1"
}
section() { echo; echo "=== $* ($(( $(date +%s) - START )) s)"; }

# ------------------------------------------------------------------ unpack
section "unpack .gpu/bundle.tar.xz into $DIR"
BUNDLE="$ROOT/.gpu/bundle.tar.xz"
if [ ! -f "$BUNDLE" ]; then
    note "FAIL unpack: $BUNDLE missing (run sh tests/gpu/pack.sh on the build machine and carry .gpu)"
    exit 1
fi
rm -rf "$DIR" && mkdir -p "$DIR" || { note "FAIL unpack: cannot create $DIR"; exit 1; }
if command -v xz >/dev/null 2>&1; then
    tar -xJf "$BUNDLE" -C "$DIR"
else
    echo "(no xz: unpacking with Python's tarfile)"
    "$PY" -c 'import sys, tarfile
t = tarfile.open(sys.argv[1], "r:xz")
t.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' "$BUNDLE" "$DIR"
fi
if [ $? -ne 0 ] || [ ! -x "$DIR/bin/test_cuda" ]; then
    note "FAIL unpack: could not unpack $BUNDLE"
    exit 1
fi
chmod 755 "$DIR"/bin/* 2>/dev/null
head -n 3 "$DIR/bin/MANIFEST"
note "PASS unpack: $(du -sh "$DIR" | cut -f1) in $DIR"

# ------------------------------------------------------- CUDA library dirs
section "CUDA libraries"
CUDA_DIRS=""
add_dir() {
    [ -d "$1" ] || return 0
    case ":$CUDA_DIRS:" in *":$1:"*) return 0 ;; esac
    CUDA_DIRS="${CUDA_DIRS:+$CUDA_DIRS:}$1"
}
# the toolkit (never lib64/stubs: its libcuda.so is a stub that fails)
add_dir /usr/local/cuda/lib64
# the pip wheels: nvidia.cudnn, nvidia.cublas, nvidia.cuda_runtime, ... are
# namespace packages in new wheels (__file__ None: use __path__), and CUDA
# 13 wheels put several libraries under nvidia/cu13/lib
pydirs=$(timeout 60 "$PY" - <<'EOF' 2>/dev/null
import importlib, os
dirs = []
def add(p):
    for sub in ("lib", "lib64"):
        d = os.path.join(p, sub)
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
for mod in ("nvidia.cudnn", "nvidia.cublas", "nvidia.cuda_runtime", "nvidia.cu13",
            "nvidia.cuda_nvrtc", "nvidia.nvjitlink"):
    try:
        m = importlib.import_module(mod)
    except Exception:
        continue
    paths = list(getattr(m, "__path__", None) or [])
    if getattr(m, "__file__", None):
        paths.append(os.path.dirname(m.__file__))
    for p in paths:
        add(p)
try:
    import nvidia
    for root in list(getattr(nvidia, "__path__", None) or []):
        for name in sorted(os.listdir(root)):
            add(os.path.join(root, name))
except Exception:
    pass
print(":".join(d for d in dirs
               if any(f.startswith(("libcudnn", "libcublas", "libcudart", "libnvrtc", "libnvJitLink"))
                      for f in os.listdir(d))))
EOF
)
IFS=: read -r -a pyarr <<<"$pydirs"
for d in "${pyarr[@]}"; do [ -n "$d" ] && add_dir "$d"; done
has_lib() { # $1 = file name pattern: found in CUDA_DIRS?
    local d
    IFS=: read -r -a arr <<<"$CUDA_DIRS"
    for d in "${arr[@]}"; do compgen -G "$d/$1" >/dev/null && return 0; done
    return 1
}
for lib in 'libcudnn.so.9*' 'libcublas.so.13*' 'libcublasLt.so.13*'; do
    if ! has_lib "$lib"; then
        echo "$lib not in $CUDA_DIRS: searching /"
        hit=$(timeout 60 find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name "$lib" -print 2>/dev/null | grep -v /stubs/ | head -n 1)
        [ -n "$hit" ] && add_dir "$(dirname "$hit")"
    fi
done
# the driver (libcuda.so.1): normally known to the loader already
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -e "$d/libcuda.so.1" ] && { add_dir "$d"; break; }
    done
fi
LIBPATH="$DIR/lib${CUDA_DIRS:+:$CUDA_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "CUDA library dirs: ${CUDA_DIRS:-none found}"
echo "LD_LIBRARY_PATH for d3po's binaries: $LIBPATH"
for lib in 'libcudnn.so.9*' 'libcublas.so.13*' 'libcublasLt.so.13*'; do
    has_lib "$lib" || echo "WARNING: $lib not found anywhere"
done

# Wrappers: the bundle's libraries for d3po's binaries only (PyTorch, run
# by the benchmark, keeps its own environment).
mkdir -p "$DIR/wrap"
for b in d3po test_cuda bench; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s/bin/%s" "$@"\n' "$LIBPATH" "$DIR" "$b" >"$DIR/wrap/$b"
    chmod 755 "$DIR/wrap/$b"
done
D3PO="$DIR/wrap/d3po"
# SETUP_ONLY=1: stop here (unpacked, wrappers in $DIR/wrap), e.g. before
# models/train/gpu_pretrain.sh
if [ "${SETUP_ONLY:-0}" = 1 ]; then
    note "PASS setup: wrappers in $DIR/wrap"
    test_status=0
    exit 0
fi

# ------------------------------------------------------------- diagnostics
section "the machine"
uname -a
grep -m1 'model name' /proc/cpuinfo
echo "cores: $(nproc)"
gpu_ok=1
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi -L || gpu_ok=0
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv
else
    echo "nvidia-smi: not found"
    gpu_ok=0
fi
timeout 90 "$PY" -c 'import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
if torch.cuda.is_available(): print("torch device:", torch.cuda.get_device_name(0))' 2>&1 | tail -n 3
[ "$gpu_ok" -eq 1 ] || echo "NOTE: no NVIDIA GPU visible here (nvidia-smi missing or failing): the CUDA steps below will fail"

section "ldd of the bundle (LD_LIBRARY_PATH as above)"
missing=""
for b in d3po test_cuda bench libd3po_cuda.so; do
    out=$(LD_LIBRARY_PATH="$LIBPATH" ldd "$DIR/bin/$b" 2>&1)
    echo "$b:"
    printf '%s\n' "$out" | sed 's/^/  /'
    m=$(printf '%s\n' "$out" | awk '/not found/ {print $1}' | tr '\n' ' ')
    [ -n "$m" ] && missing="$missing $b: $m;"
done
if [ -z "$missing" ]; then note "PASS ldd: every library of the bundle resolves"
else note "FAIL ldd: not found:$missing"; fi

section "d3po info --devices"
t=$(left 60)
timeout "$t" "$D3PO" info --devices
rc=$?
if [ $rc -eq 0 ]; then note "PASS info --devices: $(timeout 30 "$D3PO" info --devices 2>&1 | grep -i -m1 cuda | cut -c1-150)"
else note "FAIL info --devices: exit $rc"; fi

# -------------------------------------------------------------- test_cuda
section "test_cuda"
t=$(left 180)
if [ "$t" -lt 20 ]; then
    note "FAIL test_cuda: no time left"
else
    timeout "$t" "$DIR/wrap/test_cuda" >"$OUT/test_cuda.log" 2>&1
    rc=$?
    grep -E 'FAIL|not ok|^test_cuda|passed|SKIPPED' "$OUT/test_cuda.log" | head -n 60
    last=$(grep -E '^test_cuda: [0-9]+ checks' "$OUT/test_cuda.log" | tail -n 1 | cut -c1-200)
    if grep -q 'SKIPPED' "$OUT/test_cuda.log"; then
        note "FAIL test_cuda: skipped on the GPU machine: $(grep -m1 SKIPPED "$OUT/test_cuda.log" | cut -c1-200)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        note "FAIL test_cuda: timed out after $t s (${last:-no summary line})"
    elif [ $rc -eq 0 ]; then
        test_status=0
        note "PASS test_cuda: ${last:-exit 0}"
    else
        note "FAIL test_cuda: exit $rc (${last:-no summary line; see test_cuda.log})"
    fi
fi

# ----------------------------------------------------------------- sample
section "d3po sample --device $DEV --grid"
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$FONT" ] && [ -f "$DIR/share/DejaVuSans.ttf" ]; then
    # the grid's labels need DejaVu Sans at its Debian path
    mkdir -p "$(dirname "$FONT")" 2>/dev/null && cp "$DIR/share/DejaVuSans.ttf" "$FONT" 2>/dev/null &&
        echo "(installed the bundle's DejaVuSans.ttf at $FONT)"
fi
# $1 = device, $2 = out png, $3 = log: the grid of the default model
sample_grid() {
    local t=$(left 90)
    [ "$t" -ge 10 ] || return 124
    timeout "$t" "$D3PO" sample --device "$1" --grid --model models/default.safetensors --seed 1 --out "$2" >"$3" 2>&1
}
t0=$(date +%s)
sample_grid "$DEV" "$OUT/gpu_samples.png" "$DIR/sample_gpu.log"
rc=$?
t1=$(date +%s)
cat "$DIR/sample_gpu.log"
if [ $rc -eq 0 ] && [ -s "$OUT/gpu_samples.png" ]; then
    note "PASS sample --device $DEV --grid: gpu_samples.png in $((t1 - t0)) s"
    # the same grid on the CPU, compared (byte-identical PNGs are not
    # expected: fp32 differences over 20 steps; 8-bit pixels mostly agree)
    sample_grid cpu "$DIR/cpu_samples.png" "$DIR/sample_cpu.log"
    rc=$?
    t2=$(date +%s)
    if [ $rc -eq 0 ]; then
        cmp=$(timeout 60 "$PY" - "$OUT/gpu_samples.png" "$DIR/cpu_samples.png" <<'EOF' 2>&1
import sys
import numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1]).convert("RGB")).astype(np.int16)
b = np.asarray(Image.open(sys.argv[2]).convert("RGB")).astype(np.int16)
if a.shape != b.shape:
    print("shapes differ: %s vs %s" % (a.shape, b.shape)); sys.exit(1)
d = np.abs(a - b)
print("pixels (0..255): mean abs diff %.3f, max %d, %.2f%% differ by > 8" % (d.mean(), d.max(), 100.0 * (d > 8).mean()))
sys.exit(0 if d.mean() < 2.0 else 1)
EOF
)
        crc=$?
        echo "GPU grid vs CPU grid (CPU took $((t2 - t1)) s): $cmp"
        if [ $crc -eq 0 ]; then note "PASS sample gpu vs cpu grid: $cmp"
        else note "FAIL sample gpu vs cpu grid: $cmp"; fi
    else
        tail -n 5 "$DIR/sample_cpu.log"
        note "SKIP sample gpu vs cpu grid: the CPU grid did not finish (exit $rc)"
    fi
else
    note "FAIL sample --device $DEV --grid: exit $rc ($(tail -n 1 "$DIR/sample_gpu.log" | cut -c1-160))"
fi

# ------------------------------------------------------------------- auto
section "d3po auto --device $DEV (1 round, 4 pairs)"
t=$(left 120)
if [ "$t" -lt 20 ]; then
    note "SKIP auto: no time left"
else
    rm -rf "$DIR/session"
    args=(auto --session "$DIR/session" --oracle brightness --rounds 1 --pairs 4 --eval-seeds 2
          --model models/default.safetensors)
    t0=$(date +%s)
    timeout "$t" "$D3PO" "${args[@]}" --device "$DEV" >"$OUT/auto.log" 2>&1
    rc=$?
    t1=$(date +%s)
    if [ -f "$DIR/session/metrics.jsonl" ]; then
        echo "--- metrics.jsonl" >>"$OUT/auto.log"
        cat "$DIR/session/metrics.jsonl" >>"$OUT/auto.log"
    fi
    tail -n 12 "$OUT/auto.log"
    nl=0
    [ -f "$DIR/session/metrics.jsonl" ] && nl=$(wc -l <"$DIR/session/metrics.jsonl")
    if [ $rc -eq 0 ] && [ "$nl" -ge 2 ]; then
        note "PASS auto: 1 round in $((t1 - t0)) s, $nl metrics lines"
    else
        note "FAIL auto: exit $rc, $nl metrics lines ($(tail -n 1 "$OUT/auto.log" | cut -c1-160))"
    fi
fi

# ------------------------------------------------------------------ bench
section "bench on the GPU (sample, d3po, pretrain; d3po vs PyTorch)"
t=$(left 200)
if [ "$t" -lt 30 ]; then
    note "SKIP bench: no time left"
else
    rm -rf "$DIR/bench-logs"
    THREADS=$(nproc) B="$DIR" BENCH="$DIR/wrap/bench" PY="$PY" DEVICES=cuda CASES_ONLY=1 \
        RESULTS_FILE="$OUT/bench.txt" LOGS="$DIR/bench-logs" timeout "$t" sh bench/run.sh
    rc=$?
    for f in "$DIR"/bench-logs/*; do
        [ -f "$f" ] && { echo "--- $(basename "$f")"; cat "$f"; }
    done >"$OUT/bench_logs.txt" 2>/dev/null
    lines=$(grep -c '^bench gpu-.*ratio' "$OUT/bench.txt" 2>/dev/null)
    lines=${lines:-0}
    if [ $rc -eq 0 ] && [ "$lines" -ge 1 ]; then
        note "PASS bench: $(grep '^bench gpu-.*ratio' "$OUT/bench.txt" | sed 's/^bench //' | tr '\n' ';' | cut -c1-400)"
    elif [ $rc -eq 124 ]; then
        note "FAIL bench: timed out after $t s ($lines cases done)"
    else
        note "FAIL bench: exit $rc ($(grep -m1 -E 'FAILED|skipped' "$OUT/bench.txt" 2>/dev/null | cut -c1-200))"
    fi
fi


# --------------------------------------------------------------- SD bench
# A random-weight pipeline with SD 1.5's configs (tests/sd/make_tiny.py
# --kind sd15, saved in fp16), pair sampling as the issue defines it (one
# prompt, 2 images, SD_STEPS DDIM steps, CFG 5, VAE decode, SD_SIZE px):
# diffusers + PyTorch (fp16, eager, SDPA; bench/sd_pipe_torch.py) against
# `d3po sample --count 2` on $DEV. d3po's pair time is T(--count 4) -
# T(--count 2), so loading the model is not counted, as it is not for
# diffusers; d3po's peak is nvidia-smi's largest memory.used during the
# count-4 run. Needs build/gpu-wheels (tests/gpu/wheels.sh: diffusers for
# the machine's own torch, CLIP's vocabulary). SD_KIND=sd1 SD_SIZE=64
# SD_STEPS=4 with DEV=cpu dry-runs it on a CPU machine.
section "SD bench: pair sampling, d3po --device $DEV vs diffusers"
WHEELS="$ROOT/build/gpu-wheels"
SD_KIND=${SD_KIND:-sd15}
SD_SIZE=${SD_SIZE:-512}
SD_STEPS=${SD_STEPS:-20}
SD="$DIR/sd-$SD_KIND"
t=$(left 330)
# the Python of the SD steps (a script, for `timeout`): diffusers from $DIR/site
mkdir -p "$DIR/wrap"
printf '#!/bin/sh\nPYTHONPATH="%s/site${PYTHONPATH:+:$PYTHONPATH}" D3PO_CLIP_VOCAB="%s" exec "%s" "$@"\n' \
    "$DIR" "$WHEELS/bpe_simple_vocab_16e6.txt.gz" "$PY" >"$DIR/wrap/sdpy"
chmod 755 "$DIR/wrap/sdpy"
sdpy="$DIR/wrap/sdpy"
# $1 = count, $2 = out dir: wall seconds of d3po sample on stdout
d3po_pair() {
    local t0 t1
    t0=$(date +%s.%N)
    timeout "$(left 150)" "$D3PO" sample --model "$SD" --prompt "a photo of a cat" --seed 1 --count "$1" \
        --steps "$SD_STEPS" --cfg 5 --size "${SD_SIZE}x${SD_SIZE}" --device "$DEV" --out "$2" >"$2.log" 2>&1 || return 1
    t1=$(date +%s.%N)
    echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}'
}
if [ "$t" -lt 60 ]; then
    note "SKIP sd bench: no time left"
elif [ ! -f "$WHEELS/bpe_simple_vocab_16e6.txt.gz" ]; then
    note "SKIP sd bench: $WHEELS missing (sh tests/gpu/wheels.sh on the build machine; carry build/gpu-wheels)"
else
    if ! "$PY" -c 'import diffusers' 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$DIR/site" \
            "$WHEELS"/*.whl || echo "pip install of $WHEELS/*.whl failed"
    fi
    tcuda=$("$sdpy" -c 'import torch, diffusers; print(int(torch.cuda.is_available()), diffusers.__version__)' 2>&1 | tail -n 1)
    echo "torch cuda, diffusers: $tcuda"
    if ! echo "$tcuda" | grep -q '^[01] [0-9]'; then
        note "SKIP sd bench: $PY cannot import torch and diffusers ($tcuda)"
    elif [ "$DEV" = cuda ] && ! echo "$tcuda" | grep -q '^1 '; then
        note "SKIP sd bench: $PY's torch sees no CUDA GPU: the diffusers yardstick needs a CUDA torch"
    else
        rm -rf "$SD" "$DIR/sd-out2" "$DIR/sd-out4"
        t0=$(date +%s)
        timeout "$(left 180)" "$sdpy" tests/sd/make_tiny.py --kind "$SD_KIND" --dtype fp16 --out "$SD" >"$DIR/sd_build.log" 2>&1
        rc=$?
        echo "built $SD in $(( $(date +%s) - t0 )) s (exit $rc): $(du -sh "$SD" 2>/dev/null | cut -f1)"
        if [ $rc -ne 0 ]; then
            tail -n 5 "$DIR/sd_build.log"
            note "FAIL sd bench: make_tiny.py --kind $SD_KIND failed (exit $rc)"
        else
            timeout "$(left 200)" "$sdpy" bench/sd_pipe_torch.py "$SD" --size "$SD_SIZE" --steps "$SD_STEPS" \
                >"$DIR/sd_torch.log" 2>&1
            cat "$DIR/sd_torch.log" | tail -n 3
            tline=$(grep '^torch sd-pair ' "$DIR/sd_torch.log" | tail -n 1)
            poll=""
            if [ "$DEV" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
                nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$DIR/sd_mem.txt" 2>/dev/null &
                poll=$!
            fi
            s2=$(d3po_pair 2 "$DIR/sd-out2") && s4=$(d3po_pair 4 "$DIR/sd-out4")
            rc=$?
            [ -n "$poll" ] && kill "$poll" 2>/dev/null
            peak=$(sort -n "$DIR/sd_mem.txt" 2>/dev/null | tail -n 1)
            cat "$DIR/sd-out2.log" "$DIR/sd-out4.log" 2>/dev/null | tail -n 4
            if [ $rc -ne 0 ]; then
                note "FAIL sd bench: d3po sample on $DEV failed ($(tail -n 1 "$DIR/sd-out4.log" "$DIR/sd-out2.log" 2>/dev/null | grep -v '^==' | grep . | tail -n 1 | cut -c1-160))"
            else
                line=$(echo "$s2 $s4 ${peak:--} $tline" | awk -v k="$SD_KIND" -v sz="$SD_SIZE" -v st="$SD_STEPS" '{
                    d = $2 - $1; r = ($7 > 0 && d > 0) ? $7 / d : 0
                    printf "sd-pair %s %dpx %d steps: d3po %.3f s (load excluded; count 2 %.1f s, 4 %.1f s), peak %s MiB; diffusers %.3f s, peak %s MiB (%s); ratio diffusers/d3po %.2f",
                        k, sz, st, d, $1, $2, $3, $7, $8, $6, r }')
                echo "$line" | tee -a "$OUT/bench.txt"
                note "PASS sd bench: $line"
            fi
        fi
    fi
fi

exit $test_status
