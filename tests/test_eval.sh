#!/bin/sh
# test_eval.sh - the headless session commands on a tiny session made by
# tests/tool_evalfix (real sampled pairs, labels A, B, tie, skip, ...):
# `d3po export` (both formats round-trip through python3's json, reference
# existing PNGs, labels match the journal), `d3po eval` (oracle counts sum
# to --pairs, the Wilson interval contains the rate, same seed = same
# result, --plot writes a PNG, an external labeler sees only A/B paths in a
# temp dir removed afterwards), `d3po train` (labels and --scores each bump
# the round), `d3po sample --session`, and a bad session dir (exit 2 naming
# it). Models are tiny (base=8, size 16, 5 steps) and threads are capped.
. tests/lib.sh
if ! $D3 --help | grep -q '^  eval '; then
    echo "  SKIP: eval/train/export are not registered in src/main.c"
    finish test_eval.sh; exit
fi
export OMP_NUM_THREADS=2 XDG_CONFIG_HOME="$T/xdg"
mkdir -p "$XDG_CONFIG_HOME"
TH="--threads 2"
M=$T/tiny.safetensors
S=$T/s
expect 0 "init tiny model" $D3 init --out $M --arch base=8,mult=1.2,res=1,attn=none,size=16,classes=3
if ! $B/tests/tool_evalfix $S $M 6 5 >$T/fix.txt 2>$T/err; then no "tool_evalfix"; cat $T/err; fi

# ---- export ----
expect 0 "export pickapic" $D3 export --session $S --format pickapic --out $T/pk
if python3 - $T/pk $T/fix.txt <<'PY'
import json, os, sys
out, fix = sys.argv[1], sys.argv[2]
want = {int(l.split()[0]): l.split()[1] for l in open(fix)}
want = {i: c for i, c in want.items() if c in ("A", "B", "tie")}
lab = {"A": (1, 0), "B": (0, 1), "tie": (0.5, 0.5)}
rows = [json.loads(l) for l in open(os.path.join(out, "data.jsonl"))]
assert len(rows) == len(want), (len(rows), want)
for r in rows:
    assert set(r) >= {"caption", "image_0", "image_1", "label_0", "label_1"}, r
    assert r["caption"].startswith("class"), r
    for k in ("image_0", "image_1"):
        p = os.path.join(out, r[k])
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n", p
    assert (r["label_0"], r["label_1"]) == lab[want[r["pair"]]], (r, want[r["pair"]])
PY
then ok "pickapic lines parse, PNGs exist, labels match the journal"; else no "pickapic content"; fi
expect 0 "export scores" $D3 export --session $S --format scores --out $T/sc
if python3 - $T/sc $T/fix.txt <<'PY'
import json, os, sys
out, fix = sys.argv[1], sys.argv[2]
want = {int(l.split()[0]): l.split()[1] for l in open(fix)}
want = {i: c for i, c in want.items() if c in ("A", "B", "tie")}
sc = {"A": {"A": 1, "B": 0}, "B": {"A": 0, "B": 1}, "tie": {"A": 0.5, "B": 0.5}}
rows = [json.loads(l) for l in open(os.path.join(out, "scores.jsonl"))]
assert len(rows) == 2 * len(want), len(rows)
for r in rows:
    assert r["score"] == sc[want[r["pair"]]][r["image"]], r
    assert os.path.isfile(os.path.join(out, r["png"])), r
PY
then ok "scores lines parse, one per image, scores match"; else no "scores content"; fi
expect 1 "export --format bad" $D3 export --session $S --format csv --out $T/x
grep_err "names the format" "csv"

# ---- eval ----
expect 0 "eval --oracle brightness --json" $D3 eval --session $S --oracle brightness --pairs 6 --steps 5 --seed 3 --json $TH
cp $T/out $T/eval1.json
if python3 - $T/eval1.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["wins"] + r["losses"] + r["ties"]
assert n + r["skips"] == 6 == r["pairs"], r
assert abs(r["win_rate"] - (r["wins"] + r["ties"] / 2) / n) < 1e-6, r
lo, hi = r["ci95"]
assert 0 <= lo <= r["win_rate"] <= hi <= 1, r
assert r["round"] == 0 and r["judge"] == "brightness", r
PY
then ok "counts sum to --pairs, interval contains the rate"; else no "eval JSON"; cat $T/eval1.json; fi
expect 0 "eval again, same seed" $D3 eval --session $S --oracle brightness --pairs 6 --steps 5 --seed 3 --json $TH
if cmp -s $T/out $T/eval1.json; then ok "same seed, same result"; else no "eval not reproducible"; fi
expect 0 "eval text + --plot" $D3 eval --session $S --oracle noisy:brightness --pairs 4 --steps 5 --plot $T/chart.png $TH
if grep -q "Wilson" $T/out && grep -q "win rate" $T/out; then ok "text printout"; else no "text printout"; cat $T/out; fi
if [ "$(head -c 4 $T/chart.png | tail -c 3)" = "PNG" ]; then ok "--plot writes a PNG"; else no "--plot PNG"; fi
printf '{"round":0,"score":1}\n{"round":1,"score":3}\n' >$S/metrics.jsonl
expect 0 "eval with metrics.jsonl" $D3 eval --session $S --oracle brightness --pairs 2 --steps 5 $TH
if grep -q "▁█" $T/out; then ok "sparkline of metrics scores"; else no "sparkline"; cat $T/out; fi
rm -f $S/metrics.jsonl
cat >$T/lab.sh <<'SH'
#!/bin/sh
while IFS="$(printf '\t')" read -r id prompt a b; do
    printf '%s\t%s\t%s\n' "$id" "$a" "$b" >>"$LABLOG"
    [ -f "$a" ] && [ -f "$b" ] && echo A || echo bad
done
SH
chmod +x $T/lab.sh
LABLOG=$T/lab.log expect 0 "eval --labeler" env LABLOG=$T/lab.log $D3 eval --session $S --labeler $T/lab.sh --pairs 4 --steps 5 --json $TH
if python3 - $T/out $T/lab.log <<'PY'
import json, os, re, sys
r = json.load(open(sys.argv[1]))
assert r["wins"] + r["losses"] == 4 and r["ties"] == 0, r
lines = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
assert len(lines) == 4, lines
dirs = set()
for i, a, b in lines:
    assert re.fullmatch(r".*/\d{4}-A\.png", a) and re.fullmatch(r".*/\d{4}-B\.png", b), (a, b)
    dirs.add(os.path.dirname(a))
assert len(dirs) == 1 and not os.path.exists(dirs.pop()), "temp dir left behind"
PY
then ok "labeler sees only A/B paths in a temp dir, removed after"; else no "labeler eval"; cat $T/out; fi
expect 1 "eval --tui without a terminal" setsid -w $D3 eval --session $S --tui </dev/null
grep_err "--tui names the need for a terminal" "needs a terminal"
# eval --tui as a person uses it (tmux, half blocks): judge, undo, judge,
# the result page reveals the sides only at the end, the text result
if command -v tmux >/dev/null; then
    tm new-session -d -s t -x 100 -y 30 "cd $PWD && $D3 eval --session $S --tui --pairs 3 --seed 4 --steps 2 $TH >$T/tui.out 2>$T/tui.err; echo EXITED \$?; sleep 30"
    wait_for "pair 1/3  judged 0" && ok "eval --tui opens on pair 1" || no "eval --tui opens"
    grep -q "tuned=" "$T/screen" && no "sides hidden while judging" || ok "sides hidden while judging"
    tm send-keys -t t 1
    wait_for "pair 2/3  judged 1" && ok "eval --tui: 1 judges and moves on" || no "eval --tui: 1"
    tm send-keys -t t u
    wait_for "pair 1/3  judged 0" && ok "eval --tui: u undoes" || no "eval --tui: undo"
    tm send-keys -t t Left
    wait_for "pair 2/3  judged 1" || no "eval --tui: Left"
    tm send-keys -t t 2
    wait_for "pair 3/3  judged 2" || no "eval --tui: 2"
    tm send-keys -t t t
    wait_for "result after 3 of 3 pairs" && ok "eval --tui: result page after the last pair" || no "eval --tui: result page"
    grep -q "  3: tuned=" "$T/screen" && ok "eval --tui: sides revealed on the result page" || no "sides revealed"
    tm send-keys -t t x
    wait_for "EXITED 0" && ok "eval --tui exits 0" || { no "eval --tui exit"; cat $T/tui.err; }
    grep -q "judge person (--tui)" $T/tui.out && grep -q " 1 ties, 0 skipped" $T/tui.out \
        && ok "eval --tui prints the result (1 tie, 2 decided)" || { no "eval --tui result"; cat $T/tui.out; }
    tm kill-server 2>/dev/null
else
    no "tmux missing"
fi
expect 1 "eval without a judge" $D3 eval --session $S
expect 1 "eval --oracle unknown" $D3 eval --session $S --oracle nope --pairs 1 --steps 1 $TH

# ---- train ----
expect 0 "train on the labels" $D3 train --session $S --epochs 1 $TH
if grep -q "^round 1 version 1" $S/LATEST && [ -f $S/rounds/0001.safetensors ]; then ok "train bumps the round"; else no "round 1"; cat $S/LATEST; fi
printf '{"pair":0,"image":"A","score":3}\n{"pair":0,"image":"B","score":1}\n{"pair":1,"image":"A","score":2}\n{"pair":1,"image":"B","score":2}\n' >$T/scores.jsonl
expect 0 "train --scores (group of pairs 0 and 1)" $D3 train --session $S --scores $T/scores.jsonl --no-labels --epochs 1 $TH
if grep -q "5 from scores" $T/out && grep -q "^round 2 " $S/LATEST; then ok "scores expand to 5 pairs, round 2"; else no "train --scores"; cat $T/out; fi
printf '{"pair":0,"image":"C","score":3}\n' >$T/bad.jsonl
expect 2 "train --scores bad line" $D3 train --session $S --scores $T/bad.jsonl $TH
grep_err "names file:line" "bad.jsonl:1:"
expect 0 "eval after training" $D3 eval --session $S --oracle brightness --pairs 2 --steps 5 --json $TH
if grep -q '"round":2' $T/out; then ok "eval uses the latest round"; else no "eval round"; cat $T/out; fi

# ---- sample --session ----
expect 0 "sample --session" $D3 sample --session $S --prompt class1 --count 2 --steps 5 --out $T/smp --threads 2
if [ -f $T/smp/class1-0-0.png ] && [ -f $T/smp/class1-0-1.png ]; then ok "sample --session writes PNGs"; else no "sample PNGs"; ls $T/smp; fi
expect 1 "sample --model and --session" $D3 sample --session $S --model $M --prompt class1 --out $T/smp

# ---- a bad session dir ----
for c in "eval --oracle brightness" "train" "export --format scores --out $T/x2" "sample --prompt 0 --out $T/x3"; do
    expect 2 "${c%% *} --session missing dir" $D3 $c --session $T/nosuch
    grep_err "${c%% *} names the dir" "$T/nosuch"
done
finish test_eval.sh
