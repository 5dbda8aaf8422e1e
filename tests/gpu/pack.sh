#!/bin/sh
# pack.sh - builds d3po here and packs what a GPU machine needs to run it
# into .gpu/bundle.tar.xz (run on the build machine, from anywhere):
#
#   sh tests/gpu/pack.sh
#
# The GPU machine (see tests/gpu/README.md) has the NVIDIA driver, the CUDA
# toolkit and cuDNN/cuBLAS (toolkit or pip wheels) but none of the Debian
# libraries d3po links (OpenBLAS, jansson, libpng, ...) and no network. The
# bundle holds
#   bin/   d3po, test_cuda, bench and libd3po_cuda.so (beside the binaries:
#          engine/device.c looks for it there), MANIFEST
#   lib/   every shared library those four need according to ldd, except
#          - the glibc family (libc, libm, libdl, libpthread, librt,
#            libresolv, libmvec, ld-linux): the target's glibc is newer;
#          - libstdc++ and libgcc_s: the target's are newer, and cuDNN and
#            cuBLAS, loaded into the same process, must get the target's;
#          - the CUDA libraries (libcuda, libcudart, libcublas, libcublasLt,
#            libcudnn*, libnvrtc, libnvJitLink): they come from the target
#   share/ DejaVuSans.ttf (the font `d3po sample --grid` labels with)
# tests/gpu/run.sh unpacks it there and runs the checks. Exits non-zero,
# saying why, when the build or the CUDA backend is missing, a needed
# library cannot be found, or the bundle is over 30 MB.
set -eu
cd "$(dirname "$0")/../.."
# A build of its own, outside the tree (so it neither travels with the
# tree nor shows in git), for a portable CPU: the default OPT is
# -march=native, and this machine's (an AMD EPYC: SSE4a, CLZERO, ...) is
# not the GPU machine's. x86-64-v3 = AVX2 + FMA, on every x86 server CPU of
# the last ten years. OpenBLAS picks its kernels at run time.
B=${GPU_B:-${TMPDIR:-/tmp}/d3po-gpu-build}
GPU_OPT=${GPU_OPT:--O3 -march=x86-64-v3 -mtune=generic}
OUT=.gpu
LIMIT_MB=30

die() { echo "pack.sh: $*" >&2; exit 1; }

# .gpu/ is a build product: ignored by git (info/exclude and .gitignore)
gitdir=$(git rev-parse --git-dir 2>/dev/null || echo .git)
if [ -d "$gitdir" ]; then
    mkdir -p "$gitdir/info"
    grep -qxF '/.gpu/' "$gitdir/info/exclude" 2>/dev/null || echo '/.gpu/' >>"$gitdir/info/exclude"
fi
if [ -f .gitignore ] && ! grep -qxF '/.gpu/' .gitignore; then echo '/.gpu/' >>.gitignore; fi

echo "pack.sh: building in $B (make -j2 B=$B OPT='$GPU_OPT' all $B/tests/test_cuda $B/bench/bench)"
make -j2 B="$B" OPT="$GPU_OPT" all "$B/tests/test_cuda" "$B/bench/bench" || die "the build failed"
[ -f "$B/libd3po_cuda.so" ] || die "$B/libd3po_cuda.so is missing: the CUDA backend was not built (the Makefile builds it when nvcc is found in /usr/local/cuda/bin or on PATH; is engine/cuda/backend_cuda.cu there and does it compile?)"
for f in "$B/d3po" "$B/tests/test_cuda" "$B/bench/bench"; do
    [ -x "$f" ] || die "$f is missing after make"
done
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[ -f "$FONT" ] || die "$FONT is missing (apt-get install fonts-dejavu-core)"

stage="$OUT/stage"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/share"
cp "$B/d3po" "$B/tests/test_cuda" "$B/bench/bench" "$B/libd3po_cuda.so" "$stage/bin/"
cp "$FONT" "$stage/share/"
chmod 755 "$stage/bin/"*

# The libraries ldd resolves for the four files (transitively: ldd lists
# the whole closure), minus the excluded families.
excluded() {
    case "$1" in
    linux-vdso.so*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libresolv.so*|libmvec.so*|libutil.so*) return 0 ;;
    libstdc++.so*|libgcc_s.so*) return 0 ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libcudnn*|libnvrtc*|libnvJitLink*) return 0 ;;
    esac
    return 1
}
libs=""
for f in "$stage/bin/d3po" "$stage/bin/test_cuda" "$stage/bin/bench" "$stage/bin/libd3po_cuda.so"; do
    out=$(ldd "$f") || die "ldd $f failed"
    missing=$(printf '%s\n' "$out" | awk '/not found/ {print $1}')
    for m in $missing; do
        excluded "$m" || die "$f needs $m, which ldd cannot find here"
    done
    libs="$libs $(printf '%s\n' "$out" | awk '$2 == "=>" && $3 ~ /^\// {print $1 "=" $3}')"
done
n=0
for pair in $(printf '%s\n' $libs | sort -u); do
    name=${pair%%=*} path=${pair#*=}
    excluded "$name" && continue
    [ -f "$stage/lib/$name" ] && continue
    cp -L "$path" "$stage/lib/$name" # under its SONAME, the name the loader asks for
    n=$((n + 1))
done
[ "$n" -gt 0 ] || die "no libraries collected (ldd output unexpected)"

# Check: with only the bundle's lib/ added, nothing but the excluded
# families may be missing.
for f in "$stage/bin/d3po" "$stage/bin/test_cuda" "$stage/bin/bench" "$stage/bin/libd3po_cuda.so"; do
    for m in $(LD_LIBRARY_PATH="$stage/lib" ldd "$f" | awk '/not found/ {print $1}'); do
        excluded "$m" || die "$f: $m not found with the bundle's lib/"
    done
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)
[ -z "$(git status --porcelain 2>/dev/null | head -n 1)" ] || commit="$commit (dirty tree)"
{
    echo "d3po GPU bundle, packed $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -m), commit $commit"
    echo "built with: OPT=$GPU_OPT; $(ldd --version | head -n 1); $(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -n 1 || echo nvcc unknown)"
    echo "libd3po_cuda.so needs: $(ldd "$stage/bin/libd3po_cuda.so" | awk '{print $1}' | tr '\n' ' ')"
    echo
    (cd "$stage" && find bin lib share -type f | sort | while read -r f; do
        printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
    done)
} >"$stage/bin/MANIFEST"

echo "pack.sh: compressing $(du -sh "$stage" | cut -f1) with xz -9"
rm -f "$OUT/bundle.tar.xz"
XZ_OPT=-9 tar -C "$stage" --owner=0 --group=0 -cJf "$OUT/bundle.tar.xz" bin lib share
rm -rf "$stage"
bytes=$(stat -c %s "$OUT/bundle.tar.xz")
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "pack.sh: $OUT/bundle.tar.xz: $mb MB ($n libraries in lib/)"
tar -tJvf "$OUT/bundle.tar.xz" | awk '{printf "  %10d  %s\n", $3, $6}'
awk -v b="$bytes" -v l="$LIMIT_MB" 'BEGIN { exit !(b > l * 1048576) }' &&
    die "the bundle is $mb MB, over the $LIMIT_MB MB limit"
echo "pack.sh: done. On the GPU machine, from the repo root (carry .gpu): bash tests/gpu/run.sh \$OUT"
