#!/bin/sh
# test_mlterm.sh - the labeling screen in mlterm, a second sixel terminal
# (its own sixel code, not xterm's), on a private Xvfb. d3po detects sixel
# from mlterm's DA1 reply. The shell sets DECSDM first (CSI ? 80 h: sixel
# display mode, images at the top-left corner, the state xterm's
# sixelScrolling false gives), so d3po has to reset it; the screenshot is
# checked like xterm's (tests/shot_check.py): both images in their panels,
# nothing over the header rows, a gap between them; z zooms the left image
# alone, centred; a key labels; q quits with status 0 and mlterm's sixel
# modes are as before (tests/termprobe.py). Screenshot: $B/mlterm-shot.png.
# Skips (and passes) only when mlterm or the X tools are missing and
# installing them fails. Packages: mlterm xvfb xdotool imagemagick x11-utils
# python3.
. tests/lib.sh
. tests/xshot.sh
PKGS="mlterm xvfb xdotool imagemagick x11-utils python3"
if ! xs_tools "$PKGS" Xvfb mlterm xdotool import convert xwininfo python3; then
    echo "  skipped: mlterm/Xvfb/xdotool/ImageMagick missing and installing ($PKGS) failed"
    finish test_mlterm.sh
    exit 0
fi
xs_start || { finish test_mlterm.sh; exit 1; }

COLS=110; ROWS=36; SES="$T/session"
# no scroll bar: the window is the cell grid and a margin; a private
# configuration folder so no user setting applies
mkdir -p "$T/home/.mlterm"
env -u TMUX -u TERM_PROGRAM -u TERM_PROGRAM_VERSION -u COLORTERM -u XTERM_VERSION HOME="$T/home" \
    mlterm --sb=false --geometry ${COLS}x$ROWS+0+0 -e sh -c "$(xs_label_cmd "$SES" "printf '\\033[?80h'")" \
    >"$T/mlterm.log" 2>&1 &
TERMPID=$!
xs_window mlterm || { cat "$T/mlterm.log"; finish test_mlterm.sh; exit 1; }

wait_file "$T/modes.before"
grep -q '^80=1 ' "$T/modes.before" && ok "mlterm: DECSDM set before d3po" || no "DECSDM before d3po: $(cat "$T/modes.before")"
wait_info sampled 1 && ok "first pair sampled" || no "first pair sampled"
settle
shot "$T/shot.png" images && checks_report "mlterm: "
cp "$T/shot.png" "$B/mlterm-shot.png" 2>/dev/null
xdotool key z; sleep 1.5
shot "$T/zoom.png" zoom && checks_report "mlterm: "
xdotool key Escape; sleep 1
xdotool type 1
wait_info A 1 && ok "mlterm: key 1 labels left" || no "mlterm: key 1 labels left"
xdotool key q
wait_file "$T/exited"
grep -q "EXITED 0" "$T/exited" 2>/dev/null && ok "mlterm: q quits with status 0" || { no "mlterm: q quits"; cat "$T/err"; }
wait_file "$T/modes.after"
b=$(cat "$T/modes.before" 2>/dev/null); a=$(cat "$T/modes.after" 2>/dev/null)
[ -n "$b" ] && [ "$a" = "$b" ] && ok "mlterm: sixel modes put back ($a)" || no "mlterm: modes before '$b', after '$a'"
finish test_mlterm.sh
