# xshot.sh - shared by the screenshot tests (test_xterm.sh, test_mlterm.sh;
# sourced after tests/lib.sh, not run): a private Xvfb, a sixel terminal
# running `d3po label` on a tiny model, keys by xdotool, screenshots by
# ImageMagick's import checked pixel by pixel with tests/shot_check.py, and
# the state of the terminal's sixel modes before and after d3po
# (tests/termprobe.py).
#   xs_tools PKGS CMD...   installs PKGS when a CMD is missing; returns 1
#                          (the caller skips) when that fails
#   xs_start               the tiny model ($T/m.st, side $S) and Xvfb
#   xs_label_cmd SESSION [PRE]  the shell command a terminal runs: PRE (e.g.
#                          a printf that sets a mode), probe, d3po label
#                          (its pid in $T/pid), probe again
#   xs_window CLASS        finds the terminal's window: WX WY WW WH
#   shot FILE MODE         screenshot + shot_check.py MODE, results in $T/checks
#   checks_report          turns the checks' lines into ok/no
#   info, json_num, wait_info KEY MIN, settle   `d3po session info` polling
# Needs: COLS ROWS (the terminal's size in cells), SES (the session).
S=16
XVFB=""; TERMPID=""
xs_cleanup() {
    [ -n "$TERMPID" ] && kill "$TERMPID" 2>/dev/null
    [ -n "$XVFB" ] && kill "$XVFB" 2>/dev/null
    [ -n "$XVFB" ] && wait "$XVFB" 2>/dev/null
    rm -rf "$T"
}
trap xs_cleanup EXIT
trap 'exit 1' INT TERM HUP

xs_tools() {
    pkgs=$1; shift
    xs_have() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 || return 1; done; }
    xs_have "$@" && return 0
    sh tests/deps.sh $pkgs >/dev/null 2>&1
    xs_have "$@"
}

xs_start() {
    printf 'smiling face\nred apple\nflag\n' >"$T/names"
    $D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=$S --class-names "$T/names" \
        >/dev/null || { no "tiny model"; return 1; }
    # Xvfb picks a free display itself and writes its number once it is ready.
    Xvfb -displayfd 3 -screen 0 2400x1300x24 -nolisten tcp 3>"$T/dpy" 2>"$T/xvfb.log" &
    XVFB=$!
    i=0
    while [ $i -lt 100 ] && ! grep -q '[0-9]' "$T/dpy" 2>/dev/null; do
        kill -0 "$XVFB" 2>/dev/null || break
        sleep 0.1; i=$((i+1))
    done
    if ! grep -q '[0-9]' "$T/dpy" 2>/dev/null; then
        no "Xvfb starts"; cat "$T/xvfb.log"; return 1
    fi
    DISPLAY=:$(tr -dc 0-9 <"$T/dpy"); export DISPLAY
    ok "Xvfb on $DISPLAY"
}

# The terminal runs: the modes before, d3po (exec'd by an inner shell so its
# pid is known), its exit status, the modes after, then waits to be killed.
xs_label_cmd() {
    rm -f "$T/exited" "$T/modes.before" "$T/modes.after" "$T/pid"
    echo "cd $PWD && ${2:-:}; python3 tests/termprobe.py $T/modes.before; sh -c 'echo \$\$ >$T/pid; exec $D3 label --session $1 --model $T/m.st --graphics auto --round-size 2 2>$T/err'; echo EXITED \$? >$T/exited; python3 tests/termprobe.py $T/modes.after; sleep 120"
}

xs_window() {
    WID=""
    i=0
    # up to 60 s: on a loaded 2-core machine mlterm took over 15 s to map
    while [ $i -lt 600 ] && [ -z "$WID" ]; do
        WID=$(xdotool search --class "$1" 2>/dev/null | head -n 1)
        [ -z "$WID" ] && { sleep 0.1; i=$((i+1)); }
    done
    [ -n "$WID" ] || { no "$1 window"; return 1; }
    ok "$1 window"
    # the window can be found before it is mapped and sized (1x1 until
    # then): wait up to ~10 s for it to be viewable and sized
    i=0
    while :; do
        xwininfo -id "$WID" >"$T/win" 2>/dev/null
        grep -q 'Map State: IsViewable' "$T/win" && [ "$(geom Width)" -gt 1 ] 2>/dev/null && break
        [ $i -ge 100 ] && { echo "  (window not viewable and sized after 10 s)"; cat "$T/win"; break; }
        sleep 0.1; i=$((i+1))
    done
    WX=$(geom 'Absolute upper-left X'); WY=$(geom 'Absolute upper-left Y')
    WW=$(geom Width); WH=$(geom Height)
    # xwininfo gives the corner outside the window's X border
    WBW=$(geom 'Border width'); WX=$((WX + WBW)); WY=$((WY + WBW))
    # keys go by XTEST to the window under the pointer (no window manager here)
    xdotool mousemove $((WX + WW / 2)) $((WY + WH / 2))
}
geom() { sed -n "s/^ *$1: *\(-*[0-9]*\).*/\1/p" "$T/win"; }

info() { $D3 session info "$SES" --json >"$T/info.json" 2>/dev/null; }
json_num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" "$T/info.json"; }
# wait_info KEY MIN: poll up to ~60 s until KEY >= MIN
wait_info() {
    i=0
    while [ $i -lt 300 ]; do
        info; v=$(json_num "$1")
        [ -n "$v" ] && [ "$v" -ge "$2" ] && return 0
        [ -f "$T/exited" ] && break
        sleep 0.2; i=$((i+1))
    done
    echo "  (session info: $1 did not reach $2):"; cat "$T/info.json" "$T/err" 2>/dev/null; return 1
}
# settle: wait until the sampled count holds still for a second (the queue is
# full, no redraws on the way), then a little longer
settle() {
    last=-1; i=0
    while [ $i -lt 30 ]; do
        info; v=$(json_num sampled)
        [ "$v" = "$last" ] && break
        last=$v; sleep 1; i=$((i+1))
    done
    sleep 1
}
# wait_file FILE: up to ~30 s
wait_file() {
    i=0
    while [ $i -lt 150 ] && ! [ -s "$1" ]; do sleep 0.2; i=$((i+1)); done
    [ -s "$1" ]
}

shot() {
    import -window root "$1" 2>"$T/import.err" || { no "screenshot $1"; cat "$T/import.err"; return 1; }
    convert "$1" -depth 8 "$T/shot.ppm" || { no "convert $1"; return 1; }
    python3 tests/shot_check.py "$T/shot.ppm" "$2" "$WX" "$WY" "$WW" "$WH" $COLS $ROWS $S \
        >"$T/checks" 2>&1
    [ -s "$T/checks" ] || { no "pixel checks ran"; return 1; }
    grep -v '^PASS \|^FAIL ' "$T/checks"
    return 0
}
checks_report() {
    while IFS= read -r line; do
        case "$line" in
        "PASS "*) ok "$1${line#PASS }" ;;
        "FAIL "*) no "$1${line#FAIL }" ;;
        esac
    done <"$T/checks"
}
