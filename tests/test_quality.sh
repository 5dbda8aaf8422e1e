#!/bin/sh
# test_quality.sh - the sample-quality measure: `d3po classifier` trains on
# a tiny synthetic image folder (three classes of 8x8 images), then
# `d3po eval-model` scores (1) the same folder: the Frechet distance of a
# set with the statistics of itself is ~0 and the accuracy is high;
# (2) a folder of noise under the same class names: lower accuracy and a
# larger distance; (3) a tiny model's samples: the run completes with sane
# numbers. Usage and file errors exit 1 and 2 with one-line messages.
. tests/lib.sh

python3 - "$T/data" "$T/noise" <<'PY'
import os, struct, sys, zlib, random
random.seed(1)
def png(path, rows):
    raw = b"".join(b"\0" + bytes(r) for r in rows)
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(data)
names = ["light square", "dark square", "stripes"]
for root, noise in ((sys.argv[1], False), (sys.argv[2], True)):
    for c, name in enumerate(names):
        d = os.path.join(root, name)
        os.makedirs(d)
        for i in range(15):
            col = [random.randint(150, 255), random.randint(0, 120), random.randint(0, 255)]
            ox, oy = random.randint(1, 3), random.randint(1, 3)
            rows = []
            for y in range(8):
                r = []
                for x in range(8):
                    if noise: v = [random.randint(0, 255) for _ in range(3)]
                    elif c == 2: v = col if (x + ox) % 2 else [240, 240, 240]
                    else:
                        inside = ox <= x < ox + 4 and oy <= y < oy + 4
                        v = col if inside != (c == 1) else [20, 20, 20]
                    r += v
                rows.append(r)
            png(os.path.join(d, "%02d.png" % i), rows)
PY

$D3 classifier --data "$T/data" --out "$T/c.st" --base 4 --size 8 --steps 300 --batch 16 \
    --lr 5e-3 --threads 2 2>"$T/log"; rc=$?
[ $rc -eq 0 ] && ok "classifier trains" || { no "classifier trains (exit $rc)"; cat "$T/log"; }
grep -q "45 images in 3 classes (36 train, 9 held out)" "$T/log" && ok "every fifth image held out" \
    || { no "every fifth image held out"; cat "$T/log"; }

expect 0 "eval-model --images runs" $D3 eval-model --images "$T/data" --classifier "$T/c.st" --json
cp "$T/out" "$T/real.json"
expect 0 "eval-model on noise runs" $D3 eval-model --images "$T/noise" --classifier "$T/c.st" --json
cp "$T/out" "$T/noise.json"
$D3 pretrain --data "$T/data" --arch base=8,mult=1.2,res=1,attn=none,size=8 --batch 8 \
    --steps 20 --seed 3 --threads 2 --out "$T/m.st" 2>/dev/null
expect 0 "eval-model --model runs" $D3 eval-model --model "$T/m.st" --classifier "$T/c.st" \
    --samples 3 --steps 4 --seed 2 --json
cp "$T/out" "$T/model.json"
$D3 eval-model --model "$T/m.st" --classifier "$T/c.st" --samples 3 --steps 4 --seed 2 >"$T/table" 2>"$T/err"
grep -q "^OVERALL " "$T/table" && grep -q "^stripes " "$T/table" && ok "table has the prompts and the overall row" \
    || { no "table"; cat "$T/table"; }

python3 - "$T/real.json" "$T/noise.json" "$T/model.json" <<'PY' && ok "numbers are sane" || no "numbers are sane"
import json, math, sys
real, noise, model = (json.load(open(p)) for p in sys.argv[1:])
o, n, m = real["overall"], noise["overall"], model["overall"]
print("  real: acc %.3f held-out %.3f fd %.3g; noise: acc %.3f fd %.3g; model: acc %.3f fd %.3g"
      % (o["accuracy"], o["holdout_accuracy"], o["fd"], n["accuracy"], n["fd"], m["accuracy"], m["fd"]))
ok = True
def need(c, what):
    global ok
    if not c: print("  FAIL", what); ok = False
# the data set against its own stored statistics: only float32 storage of
# the covariances differs; the features are O(1): 1e-3 absolute
need(o["fd"] < 1e-3 and all(c["fd"] < 1e-3 for c in real["classes"]), "FD of the data with itself ~0")
need(o["accuracy"] >= 0.8, "real images classified (%.3f)" % o["accuracy"])
need(n["accuracy"] < o["accuracy"], "noise scores lower than real images")
need(n["fd"] > 100 * max(o["fd"], 1e-6), "noise is farther than the data")
need(len(model["classes"]) == 3 and all(c["images"] == 3 for c in model["classes"]), "3 samples of 3 prompts")
need(m["images"] == 9 and 0 <= m["accuracy"] <= 1 and math.isfinite(m["fd"]) and m["fd"] >= 0, "model numbers finite")
need(abs(m["relative"] - m["accuracy"] / m["holdout_accuracy"]) < 1e-9, "relative = accuracy / held-out")
sys.exit(0 if ok else 1)
PY

expect 1 "no --model nor --images: usage" $D3 eval-model --classifier "$T/c.st"
expect 2 "missing classifier" $D3 eval-model --images "$T/data" --classifier "$T/none.st"
grep_err "error names the file" "$T/none.st"
expect 2 "a diffusion model is not a classifier" $D3 eval-model --images "$T/data" --classifier "$T/m.st"
grep_err "error says what is wrong" "not a d3po classifier"
finish test_quality.sh
