#!/bin/sh
# wheels.sh [DIR] - what the SD bench of tests/gpu/run.sh needs on the GPU
# machine (no network there) beyond what its image holds. Its python3
# (3.12, /opt/torch/.venv: /work/.library/device/KINDS.md) has torch with
# CUDA, transformers, tokenizers, huggingface_hub, safetensors, numpy,
# Pillow, regex, requests and filelock, but not diffusers: this fetches
# diffusers (a release that works with that huggingface_hub 1.x and
# transformers 5.x) and importlib_metadata as wheels without dependencies,
# plus CLIP's BPE vocabulary (a vocabulary, not weights) for
# tests/sd/make_tiny.py. No torch: a CUDA torch wheel (~900 MB) would not
# fit the 64 MiB a device call carries, and the machine has one.
#
#   sh tests/gpu/wheels.sh        (default DIR: build/gpu-wheels, ignored by git; ~8 MB)
#
# Then carry DIR with .gpu (tests/gpu/README.md). Needs PyPI here.
set -u
DIR=${1:-build/gpu-wheels}
VOCAB=${SD_VENV:-/work/sd-venv}/clip-vocab/bpe_simple_vocab_16e6.txt.gz
fail() { echo "gpu/wheels.sh: $*" >&2; exit 1; }
mkdir -p "$DIR" || fail "cannot create $DIR"
rm -f "$DIR"/*.whl
/usr/bin/python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --dest "$DIR" \
    diffusers==0.42.1 importlib_metadata==10.2.0 >&2 || fail "pip download failed (is PyPI reachable?)"
[ -f "$VOCAB" ] || fail "$VOCAB missing (run sh tests/sd/venv.sh)"
cp "$VOCAB" "$DIR/" || fail "cannot copy $VOCAB"
echo "$DIR: $(ls "$DIR" | wc -l) files, $(du -sm "$DIR" | cut -f1) MB"
