#!/bin/sh
# test_xterm.sh - the labeling screen in a real sixel terminal: xterm -ti
# vt340 on a private Xvfb. d3po runs with --graphics auto, so it has to detect
# sixel from xterm's DA1 reply itself. Screenshots (ImageMagick's import) are
# checked pixel by pixel: each panel holds one S*f pixel square made of SxS
# uniform f*f tiles of many colours at the cell where the panel starts (only a
# sixel image can be that; half blocks are cell-aligned and not square), the
# cells below are background; ? shows the help with no image left behind it;
# z zooms the left image alone. Keys typed with xdotool label one round (1,
# Right), the round trains, the next pair is drawn, q quits, and `d3po
# session info` has the labels. Screenshots stay in $B/xterm-shot.png (the
# two panels) and $B/xterm-help.png. Skips (and passes) only when the X
# tools are missing and installing them fails. Packages: xterm xvfb xdotool
# imagemagick x11-utils fonts-dejavu-core python3.
. tests/lib.sh
PKGS="xterm xvfb xdotool imagemagick x11-utils fonts-dejavu-core python3"
have_tools() {
    for c in Xvfb xterm xdotool import convert xwininfo python3; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
}
if ! have_tools; then
    sh tests/deps.sh $PKGS >/dev/null 2>&1
    if ! have_tools; then
        echo "  skipped: Xvfb/xterm/xdotool/ImageMagick missing and installing ($PKGS) failed"
        finish test_xterm.sh
        exit 0
    fi
fi

XVFB=""; XTERM=""
cleanup() {
    [ -n "$XTERM" ] && kill "$XTERM" 2>/dev/null
    [ -n "$XVFB" ] && kill "$XVFB" 2>/dev/null
    [ -n "$XVFB" ] && wait "$XVFB" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

COLS=120; ROWS=40; BORDER=2; S=16
printf 'smiling face\nred apple\nflag\n' >"$T/names"
$D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=$S --class-names "$T/names" >/dev/null \
    || { no "tiny model"; finish test_xterm.sh; exit 1; }
SES="$T/session"

# Xvfb picks a free display itself and writes its number once it is ready.
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$T/dpy" 2>"$T/xvfb.log" &
XVFB=$!
i=0
while [ $i -lt 100 ] && ! grep -q '[0-9]' "$T/dpy" 2>/dev/null; do
    kill -0 "$XVFB" 2>/dev/null || break
    sleep 0.1; i=$((i+1))
done
if ! grep -q '[0-9]' "$T/dpy" 2>/dev/null; then
    no "Xvfb starts"; cat "$T/xvfb.log"; finish test_xterm.sh; exit 1
fi
DISPLAY=:$(tr -dc 0-9 <"$T/dpy"); export DISPLAY
ok "Xvfb on $DISPLAY"

# Not in tmux as far as d3po can tell, even when the tests run inside one.
CMD="cd $PWD && $D3 label --session $SES --model $T/m.st --graphics auto --round-size 2 2>$T/err; echo EXITED \$? >$T/exited"
env -u TMUX -u TERM_PROGRAM -u TERM_PROGRAM_VERSION -u COLORTERM XENVIRONMENT=/dev/null \
    xterm -ti vt340 -xrm 'XTerm*decTerminalID: vt340' -xrm 'XTerm*numColorRegisters: 256' \
    -xrm 'XTerm*sixelScrolling: true' -xrm 'XTerm*toolBar: false' +sb -b $BORDER \
    -geometry ${COLS}x$ROWS+0+0 -fa 'DejaVu Sans Mono' -fs 10 -e sh -c "$CMD" \
    >"$T/xterm.log" 2>&1 &
XTERM=$!

WID=""
i=0
while [ $i -lt 100 ] && [ -z "$WID" ]; do
    WID=$(xdotool search --class XTerm 2>/dev/null | head -n 1)
    [ -z "$WID" ] && { sleep 0.1; i=$((i+1)); }
done
[ -n "$WID" ] && ok "xterm window" || { no "xterm window"; cat "$T/xterm.log"; finish test_xterm.sh; exit 1; }
geom() { sed -n "s/^ *$1: *\(-*[0-9]*\).*/\1/p" "$T/win"; }
# xdotool can find the window before xterm has mapped it and set its size
# (1x1 until then): wait up to ~10 s for it to be viewable and sized
i=0
while :; do
    xwininfo -id "$WID" >"$T/win" 2>/dev/null
    grep -q 'Map State: IsViewable' "$T/win" && [ "$(geom Width)" -gt 1 ] 2>/dev/null && break
    [ $i -ge 100 ] && { echo "  (xterm window not viewable and sized after 10 s)"; cat "$T/win"; break; }
    sleep 0.1; i=$((i+1))
done
WX=$(geom 'Absolute upper-left X'); WY=$(geom 'Absolute upper-left Y')
WW=$(geom Width); WH=$(geom Height)
# xwininfo gives the corner outside the window's X border; the inside starts
# Border width pixels further
WBW=$(geom 'Border width'); WX=$((WX + WBW)); WY=$((WY + WBW))
# keys go by XTEST to the window under the pointer (no window manager here)
xdotool mousemove $((WX + WW / 2)) $((WY + WH / 2))

# json_num KEY: a number from the last `session info --json`
info() { $D3 session info "$SES" --json >"$T/info.json" 2>/dev/null; }
json_num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" "$T/info.json"; }
# wait_info KEY MIN: poll up to ~30 s until KEY >= MIN
wait_info() {
    i=0
    while [ $i -lt 150 ]; do
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
    while [ $i -lt 20 ]; do
        info; v=$(json_num sampled)
        [ "$v" = "$last" ] && break
        last=$v; sleep 1; i=$((i+1))
    done
    sleep 1
}
# shot FILE MODE: screenshot, then the pixel checks of MODE (images|zoom|help)
shot() {
    import -window root "$1" 2>"$T/import.err" || { no "screenshot $1"; cat "$T/import.err"; return 1; }
    convert "$1" -depth 8 "$T/shot.ppm" || { no "convert $1"; return 1; }
    python3 - "$T/shot.ppm" "$2" "$WX" "$WY" "$WW" "$WH" $COLS $ROWS $BORDER $S >"$T/checks" 2>&1 <<'PY'
import sys
path, mode = sys.argv[1], sys.argv[2]
wx, wy, ww, wh, cols, rows, border, S = map(int, sys.argv[3:])
data = open(path, "rb").read()
# P6 header: magic, width, height, maxval, then one whitespace byte
fields, pos = [], 0
while len(fields) < 4:
    while data[pos:pos + 1].isspace(): pos += 1
    if data[pos:pos + 1] == b"#":
        pos = data.index(b"\n", pos); continue
    start = pos
    while not data[pos:pos + 1].isspace(): pos += 1
    fields.append(data[start:pos])
W, H = int(fields[1]), int(fields[2])
px = data[pos + 1:]
def at(x, y): return px[(y * W + x) * 3:(y * W + x) * 3 + 3]
def row(x, y, n): return px[(y * W + x) * 3:(y * W + x + n) * 3]
def report(ok, name, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (": " + detail if detail and not ok else ""))
iw, ih = ww - 2 * border, wh - 2 * border
if iw % cols or ih % rows:
    report(False, "cell size", "window %dx%d is not %d x %d cells plus a %d px border" % (ww, wh, cols, rows, border))
    sys.exit(0)
cw, ch = iw // cols, ih // rows
# ui/label.c panel_geom and draw_images
top, ph, pw, lefts = 3, rows - 6, (cols - 3) // 2, (1, 2 + (cols - 3) // 2)
ox, oy = wx + border, wy + border
bg = at(ox + (cols - 1) * cw + cw // 2, oy + 10 * ch + ch // 2)  # a blank cell right of the panels
def bgshare(x0, y0, w, h):
    n = same = 0
    for y in range(y0, y0 + h):
        r = row(x0, y, w)
        for k in range(0, len(r), 3):
            n += 1; same += r[k:k + 3] == bg
    return same / n if n else 1.0
def colourful(x0, y0, w, h):
    """pixels of clear colour: images are colourful noise, text is grey"""
    n = 0
    for y in range(y0, y0 + h):
        r = row(x0, y, w)
        for k in range(0, len(r), 3):
            n += max(r[k:k + 3]) - min(r[k:k + 3]) > 48
    return n
def image(name, col, top, wcells, hcells):
    """checks one image drawn by ui/label.c put_image for wcells x hcells
    cells at (top, col); returns its right and bottom pixel edges"""
    f = min(wcells * cw, hcells * ch) // S
    side = S * f
    X0, Y0 = ox + col * cw, oy + top * ch
    colours, uniform, notbg = set(), 0, 0
    for ty in range(S):
        for tx in range(S):
            c = at(X0 + tx * f, Y0 + ty * f)
            want = c * f
            if all(row(X0 + tx * f, Y0 + ty * f + k, f) == want for k in range(f)):
                uniform += 1
            colours.add(c); notbg += c != bg
    report(uniform == S * S, "%s: %dx%d tiles of %d px, each one colour" % (name, S, S, f),
           "%d of %d tiles uniform (cell %dx%d)" % (uniform, S * S, cw, ch))
    report(len(colours) >= 48 and notbg >= S * S // 2, "%s: many colours (%d)" % (name, len(colours)),
           "%d colours, %d tiles not background" % (len(colours), notbg))
    below, right = bgshare(X0, Y0 + side, side, 1), bgshare(X0 + side, Y0, 1, side)
    report(below > 0.97 and right > 0.97, "%s: image is exactly %d px square at row %d col %d" % (name, side, top, col),
           "background share of the pixel row below %.2f, column right %.2f" % (below, right))
    return X0 + side, Y0 + side
if mode == "images":
    for i, name in enumerate(("left panel", "right panel")):
        _, bottom = image(name, lefts[i], top, pw, ph)
    # blank cells between the images' bottom and the pair line
    r0 = -(-(bottom - oy) // ch)
    if r0 < rows - 3:
        s = bgshare(ox, oy + r0 * ch, cols * cw, (rows - 3 - r0) * ch)
        report(s > 0.99, "blank rows under the images", "background share %.3f" % s)
    s = bgshare(ox, oy + (rows - 2) * ch, cols * cw, ch)
    report(0.6 < s < 0.99, "footer row is text on background", "background share %.3f" % s)
elif mode == "zoom":  # z: the left image alone on the rows between header and footer
    right, _ = image("zoomed image", 1, 1, cols - 2, rows - 4)
    n = colourful(right + 1, oy + ch, ox + cols * cw - right - 1, (rows - 4) * ch)
    report(n == 0, "zoom: nothing else drawn beside the image", "%d colourful pixels right of it" % n)
else:  # help: the help text replaces the images, no pixel of them is left
    n = colourful(ox, oy + top * ch, cols * cw, (rows - 3 - top) * ch)
    report(n == 0, "help screen: no image left behind the help text", "%d colourful pixels" % n)
PY
    [ -s "$T/checks" ] || { no "pixel checks ran"; return 1; }
    grep -v '^PASS \|^FAIL ' "$T/checks"
    return 0
}
# checks_report: turn the pixel checks' lines into ok/no
checks_report() {
    while IFS= read -r line; do
        case "$line" in
        "PASS "*) ok "${line#PASS }" ;;
        "FAIL "*) no "${line#FAIL }" ;;
        esac
    done <"$T/checks"
}

wait_info sampled 1 && ok "first pair sampled" || no "first pair sampled"
settle
shot "$T/shot.png" images && checks_report
cp "$T/shot.png" "$B/xterm-shot.png" 2>/dev/null

# help: the images must give way to the help text (any key closes it)
xdotool key question; sleep 1.5
shot "$T/help.png" help && checks_report
cp "$T/help.png" "$B/xterm-help.png" 2>/dev/null
xdotool key space; sleep 1
# zoom: z shows the left image alone and bigger; z z goes back to both
xdotool key z; sleep 1.5
shot "$T/zoom.png" zoom && checks_report
xdotool key z; sleep 0.3; xdotool key z; sleep 1

xdotool type 1
wait_info A 1 && ok "key 1 labels left" || no "key 1 labels left"
xdotool key Right
wait_info B 1 && ok "Right labels right" || no "Right labels right"
wait_info version 1 && ok "round 1 trained after 2 labels" || no "round 1 trained"
settle
shot "$T/shot2.png" images && checks_report

xdotool key q
i=0
while [ $i -lt 50 ] && ! [ -s "$T/exited" ]; do sleep 0.2; i=$((i+1)); done
grep -q "EXITED 0" "$T/exited" 2>/dev/null && ok "q quits with status 0" || { no "q quits"; cat "$T/err"; }
info
python3 - "$T/info.json" <<'PY' && ok "session info: 2 labels (A, B), round 1, model v1" || no "session info after the round"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["labels"]["A"] == 1 and d["labels"]["B"] == 1, d["labels"]
assert d["pairs"]["labeled"] == 2, d["pairs"]
assert d["rounds"] == 1 and d["version"] == 1, (d["rounds"], d["version"])
PY
finish test_xterm.sh
