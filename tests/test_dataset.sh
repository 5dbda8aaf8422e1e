#!/bin/sh
# test_dataset.sh - `d3po dataset emoji` on a handful of emoji: a face, a
# flag, a keycap and a ZWJ family must each shape to one glyph and come out
# as SIZE x SIZE RGB PNGs named by their codepoints, in the right colours
# (the font's bitmaps are BGRA), with classes.tsv counting them; reruns are
# byte-identical; bad lists, fonts and options give exit 1 or 2 with the
# file named. Needs fonts-noto-color-emoji, unicode-data and python3.
. tests/lib.sh

# png.py FILE [X,Y ...]: prints "W H" (RGB8 only, else exits 1), then the
# "R G B" of each pixel asked for; "blank" when every pixel is white.
cat >"$T/png.py" <<'PY'
import struct, sys, zlib
d = open(sys.argv[1], "rb").read()
assert d[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, ihdr = 8, b"", None
while pos < len(d):
    n, t = struct.unpack(">I4s", d[pos:pos + 8])
    body = d[pos + 8:pos + 8 + n]
    if t == b"IHDR": ihdr = struct.unpack(">IIBBBBB", body)
    if t == b"IDAT": idat += body
    pos += 12 + n
w, h, depth, ctype, _, _, interlace = ihdr
if depth != 8 or ctype != 2 or interlace: sys.exit("not RGB8 non-interlaced")
raw, stride, prev, rows, p = zlib.decompress(idat), w * 3, bytearray(w * 3), [], 0
for y in range(h):
    f, line = raw[p], bytearray(raw[p + 1:p + 1 + stride]); p += 1 + stride
    for i in range(stride):
        a = line[i - 3] if i >= 3 else 0; b = prev[i]; c = prev[i - 3] if i >= 3 else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line); prev = line
print(w, h)
for xy in sys.argv[2:]:
    x, y = map(int, xy.split(","))
    print(*rows[y][3 * x:3 * x + 3])
if all(v == 255 for r in rows for v in r): print("blank")
PY
png() { python3 "$T/png.py" "$@"; }

expect 0 "dataset --help" $D3 dataset --help
grep -q "emoji" "$T/out" && ok "help text" || no "help text"
expect 1 "no dataset name" $D3 dataset --out "$T/x"
expect 1 "unknown dataset" $D3 dataset fonts --out "$T/x"
expect 1 "no --out" $D3 dataset emoji
expect 1 "bad --size" $D3 dataset emoji --out "$T/x" --size 3
grep_err "bad size names option" "--size"
expect 1 "unknown option" $D3 dataset emoji --out "$T/x" --colour
expect 1 "bad --only" $D3 dataset emoji --out "$T/x" --only 1f600,zz
expect 1 "--only not an emoji" $D3 dataset emoji --out "$T/x" --only 1f600-1f603
grep_err "--only names sequence" "1f600-1f603"

SET=1f600,1f1eb-1f1f7,0023-fe0f-20e3,1f468-200d-1f469-200d-1f467
expect 0 "render four" $D3 dataset emoji --out "$T/a" --only $SET
grep_err "reports count" "4 of 4 emoji rendered, 0 skipped"
for f in face-smiling/1f600 country-flag/1f1eb-1f1f7 keycap/0023-fe0f-20e3 family/1f468-200d-1f469-200d-1f467; do
    if [ -f "$T/a/$f.png" ] && [ "$(png "$T/a/$f.png" | head -1)" = "32 32" ]; then ok "$f.png 32x32 RGB"
    else no "$f.png 32x32 RGB"; ls -R "$T/a"; fi
done
printf 'id\tsubgroup\tprompt\tcount\n0\tface-smiling\tsmiling face\t1\n1\tfamily\tfamily\t1\n2\tkeycap\tkeycap\t1\n3\tcountry-flag\tcountry flag\t1\n' >"$T/want.tsv"
cmp -s "$T/want.tsv" "$T/a/classes.tsv" && ok "classes.tsv" || { no "classes.tsv"; cat "$T/a/classes.tsv"; }
[ "$(find "$T/a" -type f | wc -l)" -eq 5 ] && ok "nothing else written" || { no "nothing else written"; find "$T/a"; }

# colours: the face is yellow in the middle of its cheek, the French flag
# blue on the left and red on the right (swapped if BGRA were read as RGBA)
png "$T/a/face-smiling/1f600.png" 8,12 >"$T/face"
grep -q blank "$T/face" && no "face not blank" || ok "face not blank"
set -- $(sed -n 2p "$T/face")
[ "$1" -gt 200 ] && [ "$2" -gt 150 ] && [ "$3" -lt 100 ] && ok "face is yellow ($*)" || no "face is yellow ($*)"
png "$T/a/country-flag/1f1eb-1f1f7.png" 6,16 26,16 >"$T/flag"
set -- $(sed -n 2p "$T/flag")
[ "$3" -gt "$1" ] && ok "flag blue on the left ($*)" || no "flag blue on the left ($*)"
set -- $(sed -n 3p "$T/flag")
[ "$1" -gt "$3" ] && ok "flag red on the right ($*)" || no "flag red on the right ($*)"

expect 0 "rerun" $D3 dataset emoji --out "$T/b" --only $SET
diff -r "$T/a" "$T/b" >/dev/null && ok "rerun byte-identical" || no "rerun byte-identical"
expect 0 "non-integer ratio" $D3 dataset emoji --out "$T/c" --only 1f600 --size 17
[ "$(png "$T/c/face-smiling/1f600.png" | head -1)" = "17 17" ] && ok "size 17" || no "size 17"

# skips: a sequence the font has no ligature for, a codepoint it lacks
cat >"$T/list.txt" <<'L'
# group: Smileys & Emotion

# subgroup: face-smiling
1F600 ; fully-qualified # 😀 E1.0 grinning face
1F600 1F603 ; fully-qualified # 😀😃 E1.0 two faces
E000 ; fully-qualified # ? E1.0 private use
# subgroup: sky & weather
2600 ; unqualified # ☀ E0.6 sun
2600 FE0F ; fully-qualified # ☀️ E0.6 sun
L
expect 0 "own list" $D3 dataset emoji --out "$T/d" --emoji-test "$T/list.txt"
grep_err "skips counted" "2 of 4 emoji rendered, 2 skipped"
grep_err "multi-glyph reason" "1f600-1f603 two faces (2 glyphs)"
grep_err "notdef reason" "e000 private use"
[ -f "$T/d/sky-weather/2600-fe0f.png" ] && ok "subgroup directory name" || { no "subgroup directory name"; ls "$T/d"; }
grep -q "^1	sky-weather	sky and weather	1$" "$T/d/classes.tsv" && ok "prompt" || { no "prompt"; cat "$T/d/classes.tsv"; }

# bad inputs: exit 2, the file (and line) named
expect 2 "missing list" $D3 dataset emoji --out "$T/e" --emoji-test "$T/none.txt"
grep_err "missing list named" "none.txt"
sed '5s/.*/1F60Z ; fully-qualified # x E1.0 broken/' "$T/list.txt" >"$T/bad.txt"
expect 2 "bad codepoint" $D3 dataset emoji --out "$T/e" --emoji-test "$T/bad.txt"
grep_err "bad codepoint at path:line" "bad.txt:5:"
sed '4s/;/:/' "$T/list.txt" >"$T/bad2.txt"
expect 2 "no separator" $D3 dataset emoji --out "$T/e" --emoji-test "$T/bad2.txt"
grep_err "no separator at path:line" "bad2.txt:4:"
sed '4s/fully-qualified/fully-qualifed/' "$T/list.txt" >"$T/bad3.txt"
expect 2 "bad status" $D3 dataset emoji --out "$T/e" --emoji-test "$T/bad3.txt"
grep_err "bad status at path:line" "bad3.txt:4:"
printf '# just a comment\n' >"$T/empty.txt"
expect 2 "no emoji in list" $D3 dataset emoji --out "$T/e" --emoji-test "$T/empty.txt"
grep_err "empty list named" "empty.txt"
expect 2 "missing font" $D3 dataset emoji --out "$T/e" --only 1f600 --font "$T/none.ttf"
grep_err "missing font named" "none.ttf"
[ "$(wc -l <"$T/err")" -eq 1 ] && ok "one-line error" || { no "one-line error"; cat "$T/err"; }
expect 2 "not a font" $D3 dataset emoji --out "$T/e" --only 1f600 --font "$T/list.txt"
grep_err "bad font named" "list.txt"

finish test_dataset.sh
