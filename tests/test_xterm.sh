#!/bin/sh
# test_xterm.sh - the labeling screen in a real sixel terminal: xterm -ti
# vt340 on a private Xvfb, with XTerm*sixelScrolling true and false. d3po runs
# with --graphics auto, so it has to detect sixel from xterm's DA1 reply
# itself, and it has to set the sixel modes its placement needs: with
# sixelScrolling false (DECSDM set) a sixel lands at the screen's top-left
# corner unless d3po resets it. Screenshots are checked pixel by pixel
# (tests/shot_check.py): each panel holds one square of SxS uniform tiles of
# many colours at the cell where the panel starts, the header rows hold no
# image pixel, the images have a gap between them; ? shows the help with no
# image left behind it; z zooms the left image alone, centred. Keys typed
# with xdotool label one round (1, Right), the round trains, the next pair is
# drawn, q quits, and `d3po session info` has the labels. After d3po exits
# (q, or SIGTERM in the second run) the terminal's modes 80 and 1070 are as
# they were before it started (tests/termprobe.py). The second run is
# 260x74 cells, the size where the panels once nearly touched. Screenshots
# stay in $B/xterm-shot.png, $B/xterm-help.png, $B/xterm-noscroll.png.
# Skips (and passes) only when the X tools are missing and installing them
# fails. Packages: xterm xvfb xdotool imagemagick x11-utils fonts-dejavu-core
# python3.
. tests/lib.sh
. tests/xshot.sh
PKGS="xterm xvfb xdotool imagemagick x11-utils fonts-dejavu-core python3"
if ! xs_tools "$PKGS" Xvfb xterm xdotool import convert xwininfo python3; then
    echo "  skipped: Xvfb/xterm/xdotool/ImageMagick missing and installing ($PKGS) failed"
    finish test_xterm.sh
    exit 0
fi
xs_start || { finish test_xterm.sh; exit 1; }

# xterm_run SCROLLING FONTSIZE: xterm on the session, not in tmux as far as
# d3po can tell (even when the tests run inside one)
xterm_run() {
    env -u TMUX -u TERM_PROGRAM -u TERM_PROGRAM_VERSION -u COLORTERM -u XTERM_VERSION \
        XENVIRONMENT=/dev/null \
        xterm -ti vt340 -xrm 'XTerm*decTerminalID: vt340' -xrm 'XTerm*numColorRegisters: 256' \
        -xrm "XTerm*sixelScrolling: $1" -xrm 'XTerm*toolBar: false' +sb -b 2 \
        -geometry ${COLS}x$ROWS+0+0 -fa 'DejaVu Sans Mono' -fs "$2" -e sh -c "$(xs_label_cmd "$SES")" \
        >"$T/xterm.log" 2>&1 &
    TERMPID=$!
    xs_window XTerm || { cat "$T/xterm.log"; return 1; }
}
xterm_stop() {
    kill "$TERMPID" 2>/dev/null; wait "$TERMPID" 2>/dev/null; TERMPID=""
    i=0
    while [ $i -lt 50 ] && [ -n "$(xdotool search --class XTerm 2>/dev/null)" ]; do sleep 0.1; i=$((i+1)); done
}
modes_back() { # NAME: the modes after d3po are those before it
    wait_file "$T/modes.after"
    b=$(cat "$T/modes.before" 2>/dev/null); a=$(cat "$T/modes.after" 2>/dev/null)
    [ -n "$b" ] && [ "$a" = "$b" ] && ok "$1: sixel modes put back ($a)" \
        || no "$1: sixel modes before '$b', after '$a'"
}

# ---- sixelScrolling true (DECSDM reset), 120x40 ----
COLS=120; ROWS=40; SES="$T/session"
xterm_run true 10 || { finish test_xterm.sh; exit 1; }
wait_file "$T/modes.before"
grep -q '^80=2 ' "$T/modes.before" && ok "sixelScrolling true: xterm starts with DECSDM reset" \
    || no "DECSDM before d3po: $(cat "$T/modes.before")"
wait_info sampled 1 && ok "first pair sampled" || no "first pair sampled"
settle
shot "$T/shot.png" images && checks_report
cp "$T/shot.png" "$B/xterm-shot.png" 2>/dev/null

# help: the images must give way to the help text (Escape closes it at once)
xdotool key question; sleep 1.5
shot "$T/help.png" help && checks_report
cp "$T/help.png" "$B/xterm-help.png" 2>/dev/null
xdotool key Escape; sleep 1
# zoom: z shows the left image alone, centred; Escape goes back to both
xdotool key z; sleep 1.5
shot "$T/zoom.png" zoom && checks_report
xdotool key Escape; sleep 1

xdotool type 1
wait_info A 1 && ok "key 1 labels left" || no "key 1 labels left"
xdotool key Right
wait_info B 1 && ok "Right labels right" || no "Right labels right"
wait_info version 1 && ok "round 1 trained after 2 labels" || no "round 1 trained"
settle
shot "$T/shot2.png" images && checks_report

xdotool key q
wait_file "$T/exited"
grep -q "EXITED 0" "$T/exited" 2>/dev/null && ok "q quits with status 0" || { no "q quits"; cat "$T/err"; }
modes_back "q"
info
python3 - "$T/info.json" <<'PY' && ok "session info: 2 labels (A, B), round 1, model v1" || no "session info after the round"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["labels"]["A"] == 1 and d["labels"]["B"] == 1, d["labels"]
assert d["pairs"]["labeled"] == 2, d["pairs"]
assert d["rounds"] == 1 and d["version"] == 1, (d["rounds"], d["version"])
PY
xterm_stop

# ---- sixelScrolling false (DECSDM set), 260x74: d3po must reset it ----
COLS=260; ROWS=74; SES="$T/session2"
xterm_run false 8 || { finish test_xterm.sh; exit 1; }
wait_file "$T/modes.before"
grep -q '^80=1 ' "$T/modes.before" && ok "sixelScrolling false: xterm starts with DECSDM set" \
    || no "DECSDM before d3po: $(cat "$T/modes.before")"
wait_info sampled 1 && ok "sixelScrolling false: first pair sampled" || no "first pair sampled (2)"
settle
shot "$T/noscroll.png" images && checks_report "sixelScrolling false, 260x74: "
cp "$T/noscroll.png" "$B/xterm-noscroll.png" 2>/dev/null
# killed by a signal: the handler still puts the modes back
kill -TERM "$(cat "$T/pid")" 2>/dev/null
wait_file "$T/exited"
modes_back "SIGTERM"
xterm_stop
finish test_xterm.sh
