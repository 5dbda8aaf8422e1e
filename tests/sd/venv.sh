#!/bin/sh
# venv.sh - the reference stack for the Stable Diffusion-family tests: a
# throwaway venv over Debian's python3-torch 1.13 (--system-site-packages)
# with diffusers and transformers at versions that import on torch 1.13, and
# CLIP's real BPE vocabulary (a vocabulary, not weights) taken from the
# open_clip_torch wheel. Nothing here is a runtime dependency of d3po.
#
#   sh tests/sd/venv.sh [VENV]      (default: $SD_VENV, else $B/sd-venv)
#
# Idempotent: a venv that already imports everything is left alone. On
# success prints the venv path on stdout (last line). Exits non-zero with a
# one-line reason on failure.
B=${B:-build}
VENV=${1:-${SD_VENV:-$B/sd-venv}}
PY=$VENV/bin/python
fail() { echo "sd/venv.sh: $*" >&2; exit 1; }

check() {
    "$PY" - <<'PY' 2>/dev/null
import torch, diffusers, transformers, tokenizers, safetensors, peft, accelerate, os, sys
assert diffusers.__version__ == "0.31.0", diffusers.__version__
assert transformers.__version__ == "4.49.0", transformers.__version__
v = os.path.join(sys.prefix, "clip-vocab", "bpe_simple_vocab_16e6.txt.gz")
assert os.path.isfile(v), v
PY
}

if check; then echo "$VENV"; exit 0; fi
[ -x /usr/bin/python3 ] || fail "/usr/bin/python3 missing (apt-get install python3)"
/usr/bin/python3 -c 'import torch' 2>/dev/null ||
    fail "Debian's python3-torch is not importable by /usr/bin/python3 (apt-get install python3-torch)"
echo "sd/venv.sh: setting up $VENV (diffusers 0.31.0, transformers 4.49.0 over python3-torch)" >&2
/usr/bin/python3 -m venv --system-site-packages "$VENV" || fail "python3 -m venv $VENV failed (python3-venv?)"
"$PY" -m pip install -q --disable-pip-version-check \
    diffusers==0.31.0 transformers==4.49.0 tokenizers==0.21.4 \
    huggingface_hub==0.36.2 safetensors==0.8.0 >&2 ||
    fail "pip install of diffusers/transformers into $VENV failed (is PyPI reachable?)"
# Debian's torch says 1.13.0a0, which pip ranks below 1.13.0: no dependency
# resolution for these two.
"$PY" -m pip install -q --disable-pip-version-check --no-deps peft==0.17.1 accelerate==1.2.1 >&2 ||
    fail "pip install of peft/accelerate into $VENV failed"
mkdir -p "$VENV/clip-vocab" "$VENV/dl"
"$PY" -m pip download -q --disable-pip-version-check --no-deps open_clip_torch==3.3.0 -d "$VENV/dl" >&2 ||
    fail "pip download open_clip_torch==3.3.0 failed"
"$PY" - "$VENV" <<'PY' || fail "could not extract the CLIP vocabulary from the open_clip wheel"
import glob, os, sys, zipfile
venv = sys.argv[1]
whl = glob.glob(os.path.join(venv, "dl", "open_clip_torch-3.3.0-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
with open(os.path.join(venv, "clip-vocab", "bpe_simple_vocab_16e6.txt.gz"), "wb") as f:
    f.write(data)
PY
check || fail "the venv at $VENV still does not import diffusers/transformers at the pinned versions"
echo "$VENV"
