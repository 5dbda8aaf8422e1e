#!/bin/sh
# test_interop.sh - our safetensors files against the reference Python
# package, both ways. Run by tests/run.sh with B = the build directory.
#
# Sets up (or reuses) a venv in $B/interop-venv with `safetensors` and numpy
# from PyPI, then:
#   1. C writes (tool_st write); Python loads it and compares exactly
#      (interop.py check); both programs' dumps of that file must match.
#   2. Python writes (save_file); C loads it and compares exactly
#      (tool_st check); both programs' dumps of that file must match.
#   3. The dumps of the C-written and Python-written files must match.
# Under D3PO_ASAN=1 (make check-asan) only the C side runs: this test checks
# numbers, the sanitizers check memory, and the build-asan dir gets no venv.
# Exits nonzero on any failure, including a failed pip install.
B=${B:-build}
TOOL=$B/tests/tool_st
HERE=$(dirname "$0")

fail() { echo "test_interop: FAIL: $*"; exit 1; }

[ -x "$TOOL" ] || fail "$TOOL is not built (run make $TOOL)"
T=$(mktemp -d "${TMPDIR:-/tmp}/d3po-interop.XXXXXX") || fail "mktemp -d failed"
trap 'rm -rf "$T"' EXIT

if [ "${D3PO_ASAN:-0}" = 1 ]; then
    "$TOOL" write "$T/c.safetensors" || fail "tool_st write failed"
    "$TOOL" check "$T/c.safetensors" || fail "tool_st check of its own file failed"
    "$TOOL" dump "$T/c.safetensors" >"$T/c.dump" || fail "tool_st dump failed"
    echo "test_interop: D3PO_ASAN=1: C write/check/dump only; Python side skipped"
    exit 0
fi

VENV=$B/interop-venv
PY=$VENV/bin/python
if ! "$PY" -c 'import safetensors, numpy' 2>/dev/null; then
    echo "test_interop: setting up $VENV (pip install safetensors numpy)"
    python3 -m venv "$VENV" ||
        fail "python3 -m venv $VENV failed (is python3-venv installed?)"
    "$PY" -m pip install -q safetensors numpy ||
        fail "pip install safetensors numpy into $VENV failed (is PyPI reachable?)"
    "$PY" -c 'import safetensors, numpy' ||
        fail "safetensors/numpy still not importable in $VENV"
fi
VERSIONS=$("$PY" -c 'import safetensors, numpy; print("safetensors", safetensors.__version__, "numpy", numpy.__version__)')
echo "test_interop: reference: $VERSIONS"

# 1. C -> Python
"$TOOL" write "$T/c.safetensors" || fail "tool_st write failed"
"$PY" "$HERE/interop.py" check "$T/c.safetensors" ||
    fail "the reference package rejected or misread the C-written file"
"$TOOL" dump "$T/c.safetensors" >"$T/c.by-c" || fail "tool_st dump of the C file failed"
"$PY" "$HERE/interop.py" dump "$T/c.safetensors" >"$T/c.by-py" || fail "interop.py dump of the C file failed"
diff "$T/c.by-c" "$T/c.by-py" >"$T/diff1" ||
    { cat "$T/diff1"; fail "dumps of the C-written file differ (< tool_st, > python)"; }
echo "test_interop: C-written file: tool_st dump == python dump ($(grep -c '^tensor' "$T/c.by-c") tensors, $(grep -c '^meta' "$T/c.by-c") metadata)"

# 2. Python -> C
"$PY" "$HERE/interop.py" write "$T/py.safetensors" >"$T/py.by-py" || fail "interop.py write failed"
"$TOOL" check "$T/py.safetensors" || fail "our parser rejected or misread the Python-written file"
"$TOOL" dump "$T/py.safetensors" >"$T/py.by-c" || fail "tool_st dump of the Python file failed"
diff "$T/py.by-py" "$T/py.by-c" >"$T/diff2" ||
    { cat "$T/diff2"; fail "dumps of the Python-written file differ (< python, > tool_st)"; }
echo "test_interop: Python-written file: python dump == tool_st dump"

# 3. Both writers, same contents.
diff "$T/c.by-c" "$T/py.by-c" >"$T/diff3" ||
    { cat "$T/diff3"; fail "C-written and Python-written files hold different contents"; }
echo "test_interop: C-written and Python-written files dump identically"
echo "test_interop: ok"
