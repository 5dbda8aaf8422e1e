#!/bin/sh
# test_pretrain.sh - `d3po pretrain` on a tiny synthetic image folder: the
# loss falls over a few hundred steps, --resume is bit-identical to an
# uninterrupted run, a corrupt PNG is skipped with a message naming it, an
# empty folder is a clear error, Ctrl-C saves a checkpoint that resumes,
# --cooldown decays the rate and survives a resume, --min-snr weights the
# loss.
. tests/lib.sh

# two classes of 8x8 PNGs: a bright square on dark, and its negative,
# with per-image jitter of position and colour (python3 stdlib only)
python3 - "$T/data" <<'PY'
import os, struct, sys, zlib, random
root = sys.argv[1]
random.seed(1)
def png(path, rows):
    raw = b"".join(b"\0" + bytes(r) for r in rows)
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(data)
for c, name in enumerate(["light square", "dark square"]):
    d = os.path.join(root, name)
    os.makedirs(d)
    for i in range(12):
        ox, oy = random.randint(1, 3), random.randint(1, 3)
        col = [random.randint(150, 255), random.randint(0, 120), random.randint(0, 255)]
        rows = []
        for y in range(8):
            r = []
            for x in range(8):
                inside = ox <= x < ox + 4 and oy <= y < oy + 4
                v = col if inside != (c == 1) else [20, 20, 20]
                r += v
            rows.append(r)
        png(os.path.join(d, "%02d.png" % i), rows)
PY
printf 'this is not a png' >"$T/data/light square/zz-corrupt.png"

# batch 16: two chunks of 8, so at --threads 2 the step runs data-parallel
# (two workers) and the resume checks below cover that path
A="--data $T/data --arch base=8,mult=1.2,res=1,attn=none,size=8 --batch 16 --lr 2e-3 --warmup 20 --seed 3 --threads 2"
$D3 pretrain $A --out "$T/full.st" --steps 300 --save-every 100 2>"$T/log"; rc=$?
[ $rc -eq 0 ] && ok "pretrain runs" || { no "pretrain runs (exit $rc)"; cat "$T/log"; }
grep -q "skipping $T/data/light square/zz-corrupt.png" "$T/log" && ok "corrupt png skipped by path" || no "corrupt png skipped by path"
grep -q "24 images in 2 classes (1 skipped)" "$T/log" && ok "images counted" || no "images counted"
first=$(grep -o 'loss [0-9.]*' "$T/log" | head -n 1 | cut -d' ' -f2)
last=$(grep -o 'wrote .* loss [0-9.]*' "$T/log" | grep -o 'loss [0-9.]*' | cut -d' ' -f2)
echo "  loss: first shown $first, final $last"
python3 -c "import sys; sys.exit(0 if float('$last') < 0.6 * float('$first') else 1)" && ok "loss falls" || no "loss falls ($first -> $last)"
$D3 info "$T/full.st" >"$T/info" 2>&1 && grep -q "light square" "$T/info" && ok "model has the class names" || no "model has the class names"

$D3 pretrain $A --out "$T/half.st" --steps 150 --save-every 100 2>/dev/null
$D3 pretrain $A --out "$T/res.st" --steps 300 --save-every 100 --resume "$T/half.st.ckpt" 2>"$T/log2"
cmp -s "$T/full.st" "$T/res.st" && ok "resume is bit-identical" || { no "resume is bit-identical"; tail -n 3 "$T/log2"; }
cmp -s "$T/full.st.ckpt" "$T/res.st.ckpt" && ok "checkpoints identical" || no "checkpoints identical"
# --lr on resume: a cool-down; the run's other settings stay
$D3 pretrain $A --out "$T/cool.st" --steps 160 --lr 1e-5 --resume "$T/half.st.ckpt" 2>"$T/log3"
grep -q "steps 150\.\.160, batch 16, lr 1e-05" "$T/log3" && $D3 info "$T/cool.st.ckpt" 2>&1 | grep -q "lr=1e-05" \
    && ok "resume with --lr lowers the learning rate" || { no "resume with --lr"; grep "steps" "$T/log3"; }

# --cooldown: the rate decays linearly to 0 over the last steps; set on a
# resume, it gives the same run as when set from the start
$D3 pretrain $A --out "$T/cd.st" --steps 300 --cooldown 100 --save-every 100 2>"$T/log4"
grep -q "decaying linearly to 0 from step 200" "$T/log4" && $D3 info "$T/cd.st.ckpt" 2>&1 | grep -q "cooldown=100" \
    && ok "--cooldown logged and kept in the checkpoint" || { no "--cooldown logged and kept"; grep steps "$T/log4"; }
cmp -s "$T/cd.st" "$T/full.st" && no "--cooldown changes the run" || ok "--cooldown changes the run"
$D3 pretrain $A --out "$T/cd1.st" --steps 180 --save-every 100 2>/dev/null
$D3 pretrain $A --out "$T/cd2.st" --steps 300 --cooldown 100 --resume "$T/cd1.st.ckpt" 2>/dev/null
cmp -s "$T/cd.st" "$T/cd2.st" && ok "--cooldown on resume is bit-identical" || no "--cooldown on resume is bit-identical"
$D3 pretrain $A --out "$T/cd3.st" --steps 300 --resume "$T/cd.st.ckpt" --ckpt "$T/cd3.ckpt" 2>/dev/null
$D3 info "$T/cd3.ckpt" 2>&1 | grep -q "cooldown=100" && ok "resume without --cooldown keeps the run's" \
    || no "resume without --cooldown keeps the run's"
$D3 pretrain $A --out "$T/x.st" --steps 300 --cooldown -5 2>"$T/err"; rc=$?
[ $rc -eq 1 ] && grep -q -- "--cooldown" "$T/err" && ok "bad --cooldown named" || { no "bad --cooldown (exit $rc)"; cat "$T/err"; }

# --min-snr: a weighted loss; the run differs, still learns, and keeps it
$D3 pretrain $A --out "$T/ms.st" --steps 300 --min-snr 5 --save-every 100 2>"$T/log5"
first=$(grep -o 'loss [0-9.]*' "$T/log5" | head -n 1 | cut -d' ' -f2)
last=$(grep -o 'wrote .* loss [0-9.]*' "$T/log5" | grep -o 'loss [0-9.]*' | cut -d' ' -f2)
grep -q "min-SNR weighting gamma 5" "$T/log5" && $D3 info "$T/ms.st.ckpt" 2>&1 | grep -q "min_snr=5" \
    && ok "--min-snr logged and kept in the checkpoint" || { no "--min-snr logged and kept"; grep steps "$T/log5"; }
cmp -s "$T/ms.st" "$T/full.st" && no "--min-snr changes the run" || ok "--min-snr changes the run"
python3 -c "import sys; sys.exit(0 if float('$last') < 0.6 * float('$first') else 1)" && ok "--min-snr loss falls ($first -> $last)" \
    || no "--min-snr loss falls ($first -> $last)"

# Ctrl-C: a checkpoint, status 130, and the run resumes to the same result
$D3 pretrain $A --out "$T/int.st" --steps 300000 --save-every 100000 2>"$T/log3" &
pid=$!
sleep 2
kill -INT $pid
wait $pid; rc=$?
[ $rc -eq 130 ] && ok "Ctrl-C exits 130" || no "Ctrl-C exits 130 (got $rc)"
grep -q "interrupted at step" "$T/log3" && [ -f "$T/int.st.ckpt" ] && ok "Ctrl-C saves a checkpoint" || { no "Ctrl-C saves a checkpoint"; tail -n 2 "$T/log3"; }
$D3 pretrain $A --out "$T/int.st" --steps 310000 --resume "$T/int.st.ckpt" 2>/dev/null &
pid=$!; sleep 1; kill -INT $pid; wait $pid
$D3 info "$T/int.st.ckpt" >/dev/null 2>&1 && ok "interrupted checkpoint loads" || no "interrupted checkpoint loads"

mkdir -p "$T/empty"
$D3 pretrain --data "$T/empty" --out "$T/e.st" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "no class folders" "$T/err" && ok "empty folder is a clear error" || { no "empty folder (exit $rc)"; cat "$T/err"; }
$D3 pretrain --data "$T/nonexistent" --out "$T/e.st" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "nonexistent" "$T/err" && ok "missing folder named" || { no "missing folder (exit $rc)"; cat "$T/err"; }
$D3 pretrain $A --out "$T/x.st" --resume "$T/full.st" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "not a pretraining checkpoint" "$T/err" && ok "resume from a plain model refused" || { no "resume from a plain model (exit $rc)"; cat "$T/err"; }

finish test_pretrain.sh
