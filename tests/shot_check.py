"""shot_check.py - pixel checks of a screenshot of the labeling screen in a
sixel terminal (tests/xshot.sh runs it). Usage:
  shot_check.py SHOT.ppm MODE WX WY WW WH COLS ROWS S
MODE: images (both panels), zoom (the left image alone, centred), help (no
image left behind the help text). WX..WH: the terminal window's inside in
the screenshot; the cell grid is found from its size (COLS x ROWS cells and
an equal margin on each side, as xterm's border or mlterm's margin). Prints
one "PASS name" or "FAIL name: detail" line per check.

Each image is S x S model pixels shown as uniform f x f tiles (ui/label.c:
nearest-neighbour upscale by f = min(w*cw, h*ch) // S), so a panel holds a
square of many colours starting exactly at its cell; half blocks cannot
look like that. The geometry mirrors ui/label.c panel_geom and zoom_geom."""
import sys

path, mode = sys.argv[1], sys.argv[2]
wx, wy, ww, wh, cols, rows, S = map(int, sys.argv[3:])
data = open(path, "rb").read()
# P6 header: magic, width, height, maxval, then one whitespace byte
fields, pos = [], 0
while len(fields) < 4:
    while data[pos:pos + 1].isspace():
        pos += 1
    if data[pos:pos + 1] == b"#":
        pos = data.index(b"\n", pos)
        continue
    start = pos
    while not data[pos:pos + 1].isspace():
        pos += 1
    fields.append(data[start:pos])
W, H = int(fields[1]), int(fields[2])
px = data[pos + 1:]


def at(x, y):
    return px[(y * W + x) * 3:(y * W + x) * 3 + 3]


def row(x, y, n):
    return px[(y * W + x) * 3:(y * W + x + n) * 3]


def report(ok, name, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (": " + detail if detail and not ok else ""))


margin = next((m for m in range(0, 16) if (ww - 2 * m) % cols == 0 and (wh - 2 * m) % rows == 0), None)
if margin is None:
    report(False, "cell size", "window %dx%d is not %d x %d cells plus a margin" % (ww, wh, cols, rows))
    sys.exit(0)
cw, ch = (ww - 2 * margin) // cols, (wh - 2 * margin) // rows
ox, oy = wx + margin, wy + margin
# ui/label.c panel_geom
gap = 2 + cols // 50
top, ph, pw = 3, rows - 7, (cols - 2 - gap) // 2
lefts = (1, 1 + pw + gap)
bg = at(ox + (cols - 1) * cw + cw // 2, oy + 10 * ch + ch // 2)  # a blank cell right of the panels


def bgshare(x0, y0, w, h):
    n = same = 0
    for y in range(y0, y0 + h):
        r = row(x0, y, w)
        for k in range(0, len(r), 3):
            n += 1
            same += r[k:k + 3] == bg
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
    """checks one image drawn for wcells x hcells cells at (top, col);
    returns its right and bottom pixel edges"""
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
            colours.add(c)
            notbg += c != bg
    report(uniform == S * S, "%s: %dx%d tiles of %d px, each one colour" % (name, S, S, f),
           "%d of %d tiles uniform (cell %dx%d)" % (uniform, S * S, cw, ch))
    report(len(colours) >= 48 and notbg >= S * S // 2, "%s: many colours (%d)" % (name, len(colours)),
           "%d colours, %d tiles not background" % (len(colours), notbg))
    below, right = bgshare(X0, Y0 + side, side, 1), bgshare(X0 + side, Y0, 1, side)
    report(below > 0.97 and right > 0.97,
           "%s: image is exactly %d px square at row %d col %d" % (name, side, top, col),
           "background share of the pixel row below %.2f, column right %.2f" % (below, right))
    return X0 + side, Y0 + side


if mode == "images":
    edges = [image(name, lefts[i], top, pw, ph) for i, name in enumerate(("left panel", "right panel"))]
    # nothing drawn over the header and prompt rows (a sixel at the screen's
    # top-left corner, as with DECSDM set, would be)
    n = colourful(ox, oy, cols * cw, top * ch)
    report(n == 0, "header rows free of image pixels", "%d colourful pixels in rows 0-%d" % (n, top - 1))
    g = (lefts[1] - lefts[0] - pw) * cw
    gap_px = ox + lefts[1] * cw - edges[0][0]
    report(gap_px >= 2 * cw and gap_px >= g, "a gap of %d px between the images" % gap_px,
           "gap %d px, wanted at least %d" % (gap_px, max(2 * cw, g)))
    # blank cells between the images' bottom and the pair line
    r0 = -(-(max(e[1] for e in edges) - oy) // ch)
    if r0 < rows - 4:
        s = bgshare(ox, oy + r0 * ch, cols * cw, (rows - 4 - r0) * ch)
        report(s > 0.99, "blank rows under the images", "background share %.3f" % s)
    s = bgshare(ox, oy + (rows - 2) * ch, cols * cw, ch)
    report(0.6 < s < 0.99, "footer row is text on background", "background share %.3f" % s)
elif mode == "zoom":  # z: the left image alone, centred on rows 1 .. rows-5
    zt, zh, zw = 1, rows - 5, cols - 2
    f = min(zw * cw, zh * ch) // S
    used = -(-(S * f) // cw)
    zl = 1 + (zw - used) // 2
    right, _ = image("zoomed image", zl, zt, zw, zh)
    n = colourful(right + 1, oy + zt * ch, ox + cols * cw - right - 1, zh * ch)
    n += colourful(ox, oy + zt * ch, zl * cw, zh * ch)
    report(n == 0, "zoom: nothing else drawn beside the image", "%d colourful pixels beside it" % n)
else:  # help: the help text replaces the images, no pixel of them is left
    n = colourful(ox, oy + top * ch, cols * cw, (rows - 4 - top) * ch)
    report(n == 0, "help screen: no image left behind the help text", "%d colourful pixels" % n)
