#!/bin/sh
# test_auto.sh - `d3po auto` end to end on a tiny model (16x16, 3 classes,
# 5 DDIM steps, one thread): two rounds judged by the brightness oracle
# write metrics.jsonl (baseline + one line per round, with every field)
# and a session that `d3po session info --json` shows with 2 rounds and
# its labels; a resumed run adds a round; an external labeler script
# judges a round; a garbage labeler exits 2 naming what it said, with the
# labels it gave kept, and a resumed run trains on them; Ctrl-C exits 130
# with the journal intact; usage errors exit 1; Diffusion-DPO over every
# label so far records its settings and takes a resumed session's earlier
# labels; realism names its missing data set; 1 + 1 rounds give the
# checkpoint of 2 rounds bit for bit; grid mode (--grid 4): groups marked by
# brightness, on-policy, an undecided group marked on resume; bench/step_snr and
# bench/pair_snr run on the tiny model (same gradient norms under two
# judges, every row).
. tests/lib.sh

M="$T/tiny.safetensors"
C="$T/tiny.conf"
L=tests/data/labelers
expect 0 "tiny model" $D3 init --out "$M" --arch base=8,mult=1.2,res=1,attn=none,size=16,classes=3 --seed 1
printf 'sampler = { steps = 5; };\nengine = { threads = 1; };\n' >"$C"

# info FIELD... : python expressions over the session info JSON d
info() {
    dir=$1; shift
    $D3 session info "$dir" --json >"$T/info.json" 2>"$T/info.err" || { cat "$T/info.err"; return 1; }
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for e in sys.argv[2:]:
    assert eval(e), (e, d)
' "$T/info.json" "$@"
}

# -- resume is bit-identical: 1 round + 1 round gives the checkpoint of 2
# rounds in one run (the checkpoint's RNG continues the round shuffles;
# before the fix the engine restarted it from the model version)
for r in "2" "1 1"; do
    for n in $r; do
        $D3 auto --session "$T/bit$r" --oracle brightness --rounds $n --pairs 3 --model "$M" \
            --config "$C" --eval-seeds 0 2>"$T/err" || { no "auto --rounds $n"; cat "$T/err"; }
    done
done
cmp -s "$T/bit2/rounds/0002.safetensors" "$T/bit1 1/rounds/0002.safetensors" &&
    ok "resume after a round is bit-identical (round 2's checkpoint)" || no "resume after a round changes round 2"

# -- two rounds with the brightness oracle
S="$T/bright"
expect 0 "auto: 2 rounds, oracle brightness" $D3 auto --session "$S" --oracle brightness --rounds 2 \
    --pairs 3 --model "$M" --config "$C" --eval-seeds 4
grep_err "new session announced" "new session"
grep_err "a line per pair" "round 1 pair 3/3"
grep_err "a line per round" "round 2 done"
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 3, lines
for l in lines:
    for k in ("round", "labels", "loss", "oracle", "score", "time"):
        assert k in l, (k, l)
    assert l["oracle"] == "brightness" and isinstance(l["score"], float), l
    assert 0 <= l["score"] <= 255 and l["time"] >= 0, l
assert [l["round"] for l in lines] == [0, 1, 2], lines
assert [l["labels"] for l in lines] == [0, 3, 3], lines
assert lines[0]["loss"] is None and all(isinstance(l["loss"], float) for l in lines[1:]), lines
# drift: the round-0 samples come from the base itself (log-ratio ~ 0, up to
# batch rounding); a trained policy has moved away from it
assert abs(lines[0]["drift_logratio"]) < 1e-3, lines[0]
assert all(isinstance(l["drift_logratio"], float) for l in lines), lines
assert abs(lines[2]["drift_logratio"]) > abs(lines[0]["drift_logratio"]), lines
# the settings in force (the built-in defaults: the test config sets none)
for l in lines:
    t = l["train"]
    assert t["lr"] == 1e-4 and t["epochs"] == 2 and t["beta"] == 0.1, t
    assert t["reference"] in ("base", "round") and t["kl"] >= 0 and t["clip_eps"] == 0.1, t
    # guidance not in the config: the pixel family default, 2.0
    assert l["sampler"] == {"steps": 5, "eta": 1.0, "cfg": 2.0}, l["sampler"]
' "$S/metrics.jsonl" && ok "metrics.jsonl: baseline + 2 rounds with every field" \
    || { no "metrics.jsonl: baseline + 2 rounds with every field"; cat "$S/metrics.jsonl"; }

# -- a session keeps the guidance its pairs were sampled with when the
# config does not set one (begun with cfg 3.5, resumed without)
printf 'sampler = { steps = 5; cfg = 3.5; };\nengine = { threads = 1; };\n' >"$T/cfg35.conf"
expect 0 "auto: a round at cfg 3.5" $D3 auto --session "$T/g35" --oracle brightness --rounds 1 \
    --pairs 2 --model "$M" --config "$T/cfg35.conf" --eval-seeds 0
expect 0 "auto: resumed without sampler.cfg" $D3 auto --session "$T/g35" --oracle brightness \
    --rounds 1 --pairs 2 --config "$C" --eval-seeds 0
python3 -c '
import json, sys
cfgs = [json.loads(l)["sampler"]["cfg"] for l in open(sys.argv[1])]
assert cfgs == [3.5, 3.5], cfgs  # round 1 sampled at 3.5, round 2 resumed
' "$T/g35/metrics.jsonl" && ok "a resumed session keeps its pairs' guidance" \
    || { no "a resumed session keeps its pairs' guidance"; cat "$T/g35/metrics.jsonl"; }
info "$S" 'd["rounds"] == 2 and d["version"] == 2' \
    'd["pairs"] == {"sampled": 6, "labeled": 6, "unlabeled": 0}' \
    'd["labels"]["A"] + d["labels"]["B"] + d["labels"]["tie"] == 6' \
    'd["settings"]["oracle"] == "brightness"' \
    && ok "session info: 2 rounds, 6 labels" || no "session info: 2 rounds, 6 labels"
[ -f "$S/rounds/0002.safetensors" ] && [ "$(ls "$S"/pairs/*-a.png | wc -l)" -eq 6 ] \
    && ok "checkpoints and PNGs on disk" || no "checkpoints and PNGs on disk"

# the same seeds every round: a second run of the same command on a new
# session gives the same baseline score (and the same labels)
expect 0 "auto: same run again" $D3 auto --session "$T/bright2" --oracle brightness --rounds 1 \
    --pairs 3 --model "$M" --config "$C" --eval-seeds 4
[ "$(head -n 1 "$S/metrics.jsonl" | sed 's/"time".*//')" = \
  "$(head -n 1 "$T/bright2/metrics.jsonl" | sed 's/"time".*//')" ] \
    && ok "baseline reproducible" || no "baseline reproducible"

# resume: one more round, no second baseline
expect 0 "auto: resume for 1 round" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --pairs 2 --config "$C" --eval-seeds 4
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["round"] for l in lines] == [0, 1, 2, 3] and lines[3]["labels"] == 2, lines
' "$S/metrics.jsonl" && ok "resumed round appended" || { no "resumed round appended"; cat "$S/metrics.jsonl"; }
info "$S" 'd["rounds"] == 3' 'd["pairs"]["labeled"] == 8' && ok "session at round 3" || no "session at round 3"

# -- Diffusion-DPO over every label so far (train.all_labels), 2 draws
S="$T/dpo"
printf 'sampler = { steps = 5; };\nengine = { threads = 1; };\ntrain = { all_labels = true; dpo_draws = 2; };\n' >"$T/dpo.conf"
expect 0 "auto: --objective diffusion-dpo, all_labels" $D3 auto --session "$S" --oracle brightness \
    --rounds 2 --pairs 2 --model "$M" --config "$T/dpo.conf" --eval-seeds 2 --objective diffusion-dpo
grep_err "the objective announced" "objective diffusion-dpo over every label so far"
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["round"] for l in lines] == [0, 1, 2], lines
for l in lines:
    t = l["train"]
    assert t["objective"] == "diffusion-dpo" and t["all_labels"] is True, t
    assert t["dpo_draws"] == 2 and t["dpo_beta"] == 2.5, t
assert all(isinstance(l["loss"], float) and l["loss"] > 0 for l in lines[1:]), lines
assert json.load(open(sys.argv[2]))["objective"] == "diffusion-dpo"
' "$S/metrics.jsonl" "$S/session.json" && ok "metrics and session.json record the objective" \
    || { no "metrics and session.json record the objective"; cat "$S/metrics.jsonl"; }
expect 0 "auto: resume with all_labels" $D3 auto --session "$S" --oracle brightness \
    --rounds 1 --pairs 2 --config "$T/dpo.conf" --eval-seeds 0 --objective diffusion-dpo
grep_err "the earlier labels join the pool" "all_labels: 4 labels of earlier rounds join every round"
expect 0 "auto: d3po is the default objective" $D3 auto --session "$T/d3po-obj" --oracle brightness \
    --rounds 0 --model "$M" --config "$C" --eval-seeds 0
grep_err "d3po announced" "objective d3po;"
expect 1 "bad --objective" $D3 auto --session "$T/u" --oracle brightness --rounds 1 --model "$M" \
    --objective "dpo$(printf '\033')[2J"
grep_err "bad objective named" "expected d3po or diffusion-dpo"
grep -q "$(printf '\033')" "$T/err" && no "the escape byte reached stderr raw" || ok "the bad value escaped"
expect 1 "train: bad --objective" $D3 train --session "$S" --objective nope
# realism needs its data set folder: a missing one is named
export D3PO_DATASET="$T/no-such-data"
expect 1 "realism without a data set" $D3 auto --session "$T/u" --oracle realism --rounds 1 --model "$M"
unset D3PO_DATASET
grep_err "the folder named" "data set folder '$T/no-such-data' not found"
# offline training with the other objective on the same labels
expect 0 "train --objective diffusion-dpo" $D3 train --session "$S" --objective diffusion-dpo --config "$T/dpo.conf"
grep_err "train announces the objective" "objective diffusion-dpo"

# -- an external labeler
S="$T/lab"
expect 0 "auto: labeler script" $D3 auto --session "$S" --labeler "sh $L/always_a.sh" --rounds 1 \
    --pairs 2 --model "$M" --config "$C"
info "$S" 'd["rounds"] == 1' 'd["labels"]["A"] == 2 and d["pairs"]["labeled"] == 2' \
    && ok "labeler's answers journaled" || no "labeler's answers journaled"
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 1 and lines[0]["round"] == 1 and lines[0]["labels"] == 2, lines
assert lines[0]["score"] is None and lines[0]["oracle"] is None, lines
' "$S/metrics.jsonl" && ok "labeler alone: a line without score" || { no "labeler alone: a line without score"; cat "$S/metrics.jsonl"; }
S="$T/lab2"
expect 0 "auto: labeler judges, oracle scores" $D3 auto --session "$S" --labeler "sh $L/always_a.sh" \
    --oracle jpeg-compressibility --rounds 1 --pairs 2 --model "$M" --config "$C" --eval-seeds 2
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 2 and lines[1]["oracle"] == "jpeg-compressibility" and lines[1]["score"] < 0, lines
' "$S/metrics.jsonl" && ok "labeler with an eval oracle" || { no "labeler with an eval oracle"; cat "$S/metrics.jsonl"; }

# -- a garbage labeler: exit 2, the two labels before it kept
S="$T/garbage"
expect 2 "auto: garbage labeler exits 2" $D3 auto --session "$S" --labeler "sh $L/garbage.sh" \
    --rounds 2 --pairs 3 --model "$M" --config "$C" --eval-seeds 0
grep_err "garbage quoted" "answered 'maybe?\[31m red' for pair 2; expected A, B, tie or skip"
info "$S" 'd["labels"]["A"] == 2 and d["pairs"]["labeled"] == 2' 'd["pairs"]["unlabeled"] == 1' \
    'd["rounds"] == 0' && ok "labels before the garbage kept" || no "labels before the garbage kept"
# resuming judges the queued pair and trains on all three
expect 0 "auto: resume after the garbage" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --pairs 3 --config "$C" --eval-seeds 0
info "$S" 'd["rounds"] == 1' 'd["pairs"] == {"sampled": 3, "labeled": 3, "unlabeled": 0}' \
    && ok "resume judged the queued pair, no new pairs needed" || no "resume judged the queued pair"
grep_err "resume reported" "not trained yet"

expect 2 "auto: labeler that exits" $D3 auto --session "$T/exits" --labeler "sh $L/exits.sh" \
    --rounds 1 --pairs 3 --model "$M" --config "$C"
grep_err "exit status named" "exited with status 3 before answering pair 1"
expect 2 "auto: labeler that hangs" $D3 auto --session "$T/hang" --labeler "sh $L/hang.sh" \
    --rounds 1 --pairs 2 --model "$M" --config "$C" --timeout 1
grep_err "timeout named" "gave no answer within 1 s for pair 0"

# -- Ctrl-C: exit 130, the journal intact, the session opens again
S="$T/int"
$D3 auto --session "$S" --oracle noisy:brightness --rounds 500 --pairs 3 --model "$M" --config "$C" \
    --eval-seeds 2 >"$T/int.out" 2>"$T/int.err" &
pid=$!
i=0
while [ $i -lt 300 ] && ! [ -s "$S/labels.jsonl" ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.3
kill -INT $pid
wait $pid
st=$?
[ $st -eq 130 ] && ok "Ctrl-C exits 130" || { no "Ctrl-C exits 130 (got $st)"; cat "$T/int.err"; }
grep -q "interrupted" "$T/int.err" && ok "interruption reported" || no "interruption reported"
info "$S" 'd["pairs"]["labeled"] >= 1' 'd["warnings"] == []' \
    && ok "labels kept after Ctrl-C" || no "labels kept after Ctrl-C"

# -- grid mode: groups of 4 marked by the oracle (the 2 brightest good, the
# 2 darkest bad), on-policy (round 2's groups come from round 1's model),
# their pairs trained; a group left undecided by a crash (on disk, no
# journal line) is marked when the session resumes and trains next round
S="$T/grid"
expect 0 "auto --grid 4: 2 rounds" $D3 auto --session "$S" --oracle brightness --rounds 2 --pairs 4 \
    --grid 4 --model "$M" --config "$C" --eval-seeds 2
grep_err "a line per group" "group #1 ("
# marks DIR: every decided group's good images are brighter than its bad ones
marks_ok() {
    python3 - "$1" <<'PY'
import json, subprocess, sys
d = sys.argv[1]
def mean(path):  # ImageMagick's mean of the channels, 0..1
    return float(subprocess.run(['identify', '-format', '%[fx:mean]', path], check=True,
                                capture_output=True, text=True).stdout)
marks = {}
for l in open(d + '/groups.jsonl'):
    o = json.loads(l)
    if 'marks' in o: marks[o['group']] = (o['marks'], o['version'])
assert marks, 'no decided group'
for g, (m, v) in marks.items():
    assert len(m) == 4 and sorted(m) == ['b', 'b', 'g', 'g'], (g, m)
    br = [mean('%s/groups/%06d-%d.png' % (d, g, i)) for i in range(4)]
    good = [br[i] for i in range(4) if m[i] == 'g']; bad = [br[i] for i in range(4) if m[i] == 'b']
    assert min(good) >= max(bad) - 1e-5, (g, m, br)
print(json.dumps({g: v for g, (m, v) in marks.items()}))
PY
}
marks_ok "$S" >"$T/gv.json" && ok "grid: the brighter half of each group marked good" || no "grid marks"
python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
assert v["0"] == 0 and v["1"] == 1, v   # one group (4 pairs) a round, on-policy
' "$T/gv.json" && ok "grid: round 2 judged round 1's model" || { no "grid on-policy"; cat "$T/gv.json"; }
info "$S" 'd["rounds"] == 2' 'd["groups"]["group_pairs_trained"] == 8' 'd["groups"]["undecided"] == 0' \
    'd["warnings"] == []' && ok "grid: 8 group pairs trained in 2 rounds" || no "grid: session info"
python3 -c '
import json, sys
ls = [json.loads(l) for l in open(sys.argv[1])]
assert len(ls) == 3 and ls[-1]["grid"] == 4 and ls[-1]["total_group_pairs"] == 8 and ls[-1]["labels"] == 4, ls[-1]
' "$S/metrics.jsonl" && ok "grid: metrics lines name the grid and its pairs" || no "grid metrics"
# the state a crash leaves between a group's files and its decision
cp "$S/groups/000001.traj" "$S/groups/000002.traj"
for i in 0 1 2 3; do cp "$S/groups/000001-$i.png" "$S/groups/000002-$i.png"; done
expect 0 "auto --grid: resume" $D3 auto --session "$S" --oracle brightness --rounds 1 --pairs 4 \
    --grid 4 --config "$C" --eval-seeds 2
grep_err "the undecided group marked first" "marked 1 groups from before"
marks_ok "$S" >/dev/null && ok "grid: the resumed group marked like the rest" || no "grid: resumed marks"
info "$S" 'd["rounds"] == 3' 'd["groups"]["count"] == 3' 'd["groups"]["undecided"] == 0' \
    'd["groups"]["group_pairs_trained"] == 12' && ok "grid: the resumed group trained round 3" || no "grid: resume"
expect 1 "grid with a labeler" $D3 auto --session "$T/u" --labeler "sh $L/always_a.sh" --rounds 1 --grid 4 --model "$M"
grep_err "grid needs an oracle" "grid needs --oracle"
expect 1 "grid of 9" $D3 auto --session "$T/u" --oracle brightness --rounds 1 --grid 9 --model "$M"

# -- usage
expect 1 "no --rounds" $D3 auto --session "$T/u" --oracle brightness --model "$M"
expect 1 "no judge" $D3 auto --session "$T/u" --rounds 1 --model "$M"
expect 1 "unknown oracle" $D3 auto --session "$T/u" --oracle sharpness --rounds 1 --model "$M"
grep_err "known oracles listed" "known oracles: jpeg-compressibility, jpeg-incompressibility, brightness"
expect 1 "bad --pairs" $D3 auto --session "$T/u" --oracle brightness --rounds 1 --pairs 0 --model "$M"
expect 0 "help" $D3 auto --help

# roll back a round: round 1's model becomes the newest round again
R="$T/bright"
rounds=$($D3 session info "$R" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rounds"])')
expect 0 "session rollback" $D3 session rollback "$R" --to-round 1
$D3 session info "$R" --json | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if d['rounds'] == $rounds + 1 and d['version'] == $rounds + 1 else 1)" \
    && ok "rollback is a new round (versions keep rising)" || no "rollback is a new round"
$D3 sample --session "$R" --prompt 0 --seed 4 --count 1 --steps 5 --out "$T/rb1" >/dev/null 2>&1
$D3 sample --model "$R/rounds/0001.safetensors" --prompt 0 --seed 4 --count 1 --steps 5 --out "$T/rb2" >/dev/null 2>&1
cmp -s "$T/rb1/"*.png "$T/rb2/"*.png && ok "the session now samples with round 1's model" || no "rollback model differs"
expect 1 "rollback to a future round" $D3 session rollback "$R" --to-round 99
# bench/step_snr (the learning measurement) on the tiny model: the same
# pairs judged by two judges give the same gradient norms (labels only flip
# signs), every row is there, and a bad class name is an error.
SNR=$B/bench/step_snr
if [ -x "$SNR" ]; then
    expect 0 "step_snr brightness" $SNR "$M" brightness 12 "" 5 1
    $SNR "$M" brightness 12 "" 5 1 >"$T/snr1.txt" 2>/dev/null
    $SNR "$M" noisy:brightness:1e9 12 "" 5 1 >"$T/snr2.txt" 2>/dev/null
    python3 - "$T/snr1.txt" "$T/snr2.txt" <<'PY' && ok "step_snr: 5 step rows, 3 totals, 11 parts, 3 weightings; norms agree across judges" || no "step_snr output"
import math, sys
def rows(f):
    return {l.split()[0]: l.split() for l in open(f)
            if l.strip() and not l.startswith(("#", "step(t)", "part ", "weights", "  w:", "best-"))}
a, b = rows(sys.argv[1]), rows(sys.argv[2])
steps = [k for k in a if "(" in k]
assert len(steps) == 5 and all(k in a for k in ("all", "high-half", "low-half")), list(a)
assert len(a) == 5 + 3 + 11 + 3 and a.keys() == b.keys(), (list(a), list(b))
# the weighting "ones" is the paper's update: the same numbers as "all"
assert a["ones"][1:4] == a["all"][1:4] and b["ones"][1:4] == b["all"][1:4], (a["ones"], a["all"])
for k in a:
    x, y = float(a[k][1]), float(b[k][1])
    # a fresh model's output layer is zero, so only it has gradients
    assert math.isfinite(x) and x >= 0 and abs(x - y) <= 1e-6 * x, (k, x, y)
    assert x > 0 or k not in ("all", "conv_out", "ones", "sigma", "equal"), (k, x)
    assert a[k][4] == "n/a" if x == 0 else abs(float(a[k][4])) <= 1.0, a[k]
# equal norms: every step weighted to E|w_k g_k|^2 = 1, so E|g|^2 >= 5 - cross terms
assert float(a["equal"][1]) > 0.5, a["equal"]
PY
    expect 2 "step_snr unknown class" $SNR "$M" brightness 2 "no such class" 5 1
else
    no "step_snr not built ($SNR)"
fi
# bench/pair_snr: D3PO and Diffusion-DPO (K = 1, 4, 16, 64) on the same
# pairs; judges only flip signs, so the mean squared norms agree
PS=$B/bench/pair_snr
if [ -x "$PS" ]; then
    expect 0 "pair_snr" $PS "$M" 4 "" "brightness,noisy:brightness:1e9" 1
    $PS "$M" 4 "" "brightness,noisy:brightness:1e9" 1 >"$T/ps.txt" 2>/dev/null
    python3 - "$T/ps.txt" <<'PY' && ok "pair_snr: 5 objectives per judge, norms agree across judges" || { no "pair_snr output"; cat "$T/ps.txt"; }
import math, sys
tabs, cur = [], None
for l in open(sys.argv[1]):
    if l.startswith("# judge"):
        cur = {}
        tabs.append(cur)
    elif cur is not None and l.strip() and not l.startswith(("#", "objective")):
        f = l.split()
        cur[f[0]] = f
assert len(tabs) == 2, tabs
names = ["d3po", "dpo-K1", "dpo-K4", "dpo-K16", "dpo-K64"]
for t in tabs:
    assert list(t) == names, list(t)
for k in names:
    x, y = float(tabs[0][k][1]), float(tabs[1][k][1])
    assert math.isfinite(x) and x > 0 and abs(x - y) <= 1e-6 * x, (k, x, y)
# the mean of more draws has a smaller norm (independent draws average)
assert float(tabs[0]["dpo-K64"][1]) < float(tabs[0]["dpo-K1"][1]), tabs[0]
PY
    expect 2 "pair_snr unknown class" $PS "$M" 2 "no such class"
else
    no "pair_snr not built ($PS)"
fi
finish test_auto.sh
