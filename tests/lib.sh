# lib.sh - shared helpers of the shell tests (sourced, not run):
#   ok NAME / no NAME     count a passing / failing check
#   expect STATUS NAME CMD...   run CMD, check its exit status; its stdout
#                         and stderr land in $T/out and $T/err
#   grep_err NAME PATTERN the last expect's stderr contains PATTERN
#   finish NAME           print "NAME: N passed, N failed", set the status
#   tm ARGS...            tmux on the test's own server ($SOCK, in $T)
#   wait_for PATTERN      poll tmux window t until it shows PATTERN (~30 s)
#   sd_python NAME        the Python side of a Stable Diffusion test: under
#                         D3PO_ASAN=1 skipped (finish NAME, exit); else VENV
#                         and PY of the reference venv (tests/sd/venv.sh),
#                         the script failing when it cannot be made
#   sd_tiny NAME KIND DIR a tiny random KIND pipeline (tests/sd/make_tiny.py)
#                         in DIR, a check; on failure finish NAME and exit 1
# Sets B (build dir), D3 (the binary) and T (a temp dir removed on exit).
B=${B:-build}
D3=$B/d3po
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); echo "  ok $1"; }
no() { fail=$((fail+1)); echo "  not ok $1"; }
expect() {
    want=$1; name=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"; got=$?
    if [ "$got" -eq "$want" ]; then ok "$name"; else no "$name (exit $got, wanted $want)"; cat "$T/err"; fi
}
grep_err() { if grep -q -- "$2" "$T/err"; then ok "$1"; else no "$1: stderr lacks '$2'"; cat "$T/err"; fi; }
finish() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
sd_python() {
    if [ "${D3PO_ASAN:-0}" = 1 ]; then
        echo "$1: D3PO_ASAN=1: the Python side (tiny pipelines) skipped"
        finish "$1"
        exit $?
    fi
    VENV=$(sh "$(dirname "$0")/sd/venv.sh" | tail -n 1) || { echo "$1: FAIL: tests/sd/venv.sh failed"; exit 1; }
    PY=$VENV/bin/python
}
sd_tiny() {
    if "$PY" "$(dirname "$0")/sd/make_tiny.py" --kind "$2" --out "$3" >"$T/make.log" 2>&1; then
        ok "tiny $2 pipeline built"
    else
        no "make_tiny.py --kind $2"; tail -n 5 "$T/make.log"; finish "$1"; exit 1
    fi
}
SOCK="$T/tmux.sock"
tm() { tmux -S "$SOCK" "$@"; }
wait_for() {
    i=0
    while [ $i -lt 150 ]; do
        tm capture-pane -p -t t >"$T/screen" 2>/dev/null
        grep -q -- "$1" "$T/screen" && return 0
        sleep 0.2; i=$((i+1))
    done
    echo "  (screen did not show '$1'):"; cat "$T/screen"; return 1
}
