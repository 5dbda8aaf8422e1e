#!/bin/sh
# test_damage.sh - damage is contained, never spread (issue 13, item 7):
# a garbage line in the middle of labels.jsonl is reported with file:line
# and skipped; `d3po session check` lists every problem and --repair sets
# bad records aside (nothing deleted); a truncated pair file is skipped by
# train and export with a warning naming it; stale temp files of dead PIDs
# are removed at open; out-of-range config integers are errors; control
# characters from files and prompts come out escaped; a labeler that hangs
# is killed with its whole process group. Prompts cycle, resumed labels
# train (the round driver, headless through auto).
. tests/lib.sh

M="$T/tiny.safetensors"
C="$T/tiny.conf"
L=tests/data/labelers
ESC=$(printf '\033')
expect 0 "tiny model" $D3 init --out "$M" --arch base=8,mult=1.2,res=1,attn=none,size=16,classes=3 --seed 1
printf 'sampler = { steps = 3; };\nengine = { threads = 1; };\n' >"$C"
info() { # info DIR EXPR...: python expressions over `session info --json` as d
    s=$1; shift
    $D3 session info "$s" --json >"$T/info.json" 2>"$T/info.err" || return 1
    python3 - "$T/info.json" "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for e in sys.argv[2:]:
    if not eval(e):
        print("    failed:", e, json.dumps(d)[:400]); sys.exit(1)
PY
}

# -- prompts cycle: 12 pairs over 3 classes show every class 4 times
S="$T/cycle"
expect 0 "auto: 12 pairs" $D3 auto --session "$S" --oracle brightness --rounds 2 --pairs 6 \
    --model "$M" --config "$C" --eval-seeds 0
python3 - "$S" <<'PY' && ok "12 pairs cycle through every prompt" || no "prompts cycle"
import struct, sys, glob, collections
c = collections.Counter()
for f in sorted(glob.glob(sys.argv[1] + "/pairs/*.traj")):
    c[struct.unpack_from("<I", open(f, "rb").read(64), 24)[0]] += 1
print("    classes:", dict(c))
assert sum(c.values()) == 12 and sorted(c) == [0, 1, 2] and set(c.values()) == {4}, c
PY
info "$S" 'd["labels"]["trained"] == 12 - d["labels"]["skip"]' 'd["labels"]["untrained"] == 0' \
    && ok "session info: every label trained" || no "session info trained count"

# -- weighted prompt file, kept in the session across resumes
printf 'class1\t3\n# a comment\nclass2\n' >"$T/prompts"
S="$T/weighted"
expect 0 "auto --prompts" $D3 auto --session "$S" --oracle brightness --rounds 1 --pairs 8 \
    --model "$M" --config "$C" --eval-seeds 0 --prompts "$T/prompts"
python3 - "$S" <<'PY' && ok "weights 3:1 over 8 pairs" || no "weighted prompts"
import struct, sys, glob, collections
c = collections.Counter(struct.unpack_from("<I", open(f, "rb").read(64), 24)[0]
                        for f in glob.glob(sys.argv[1] + "/pairs/*.traj"))
print("    classes:", dict(c))
assert c == {1: 6, 2: 2}, c
PY
info "$S" 'd["prompts"] == [{"prompt": "class1", "weight": 3}, {"prompt": "class2", "weight": 1}]' \
    && ok "prompt set stored in the session" || no "prompt set stored"
expect 0 "auto resume keeps the prompt set" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --pairs 4 --config "$C" --eval-seeds 0
python3 - "$S" <<'PY' && ok "resumed pairs use the stored set" || no "resumed prompt set"
import struct, sys, glob
c = set(struct.unpack_from("<I", open(f, "rb").read(64), 24)[0] for f in glob.glob(sys.argv[1] + "/pairs/*.traj"))
assert c == {1, 2}, c
PY
printf 'class1\tlots\n' >"$T/badprompts"
expect 1 "bad weight is a usage error" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --config "$C" --prompts "$T/badprompts"
grep_err "bad weight names file:line" "badprompts:1: weight 'lots': expected an integer 1..100"

# -- a half round journaled before a kill trains with the next round
S="$T/half"
expect 2 "labeler stops after 2 answers" $D3 auto --session "$S" --labeler "sh $L/exits.sh" \
    --rounds 1 --pairs 4 --model "$M" --config "$C" --eval-seeds 0
info "$S" 'd["labels"]["B"] == 1 and d["labels"]["untrained"] == 1 and d["rounds"] == 0' \
    && ok "one label journaled, not trained" || no "half round journaled"
expect 0 "auto resumes the half round" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --pairs 4 --config "$C" --eval-seeds 0
grep_err "resume names the untrained label" "resuming with 1 labeled pairs not trained yet"
info "$S" 'd["rounds"] == 1' 'd["labels"]["untrained"] == 0' \
    'd["labels"]["trained"] == d["labels"]["A"] + d["labels"]["B"] + d["labels"]["tie"]' \
    && ok "the resumed round trained every label" || no "resumed round trained all"
grep -q '"pair":0,"choice":"B"' "$S/rounds/0001.labels" \
    && ok "rounds/0001.labels holds the label from before the resume" \
    || { no "round labels list"; cat "$S/rounds/0001.labels"; }

# -- a garbage line in the middle of the journal: reported with file:line, skipped
S="$T/cycle"
cp "$S/labels.jsonl" "$T/journal.orig"
{ head -n 3 "$T/journal.orig"; printf '{"pair":1,"choice":"\033[31mZ"}\n'; tail -n +4 "$T/journal.orig"; } >"$S/labels.jsonl"
expect 0 "session info with a bad journal line" $D3 session info "$S"
grep_err "bad line named file:line" "labels.jsonl:4: .*line skipped"
grep -q "$ESC" "$T/err" && no "escape sequence reached the terminal" || ok "control characters escaped"
expect 0 "auto goes on past the bad line" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --pairs 2 --config "$C" --eval-seeds 0
expect 2 "session check finds it" $D3 session check "$S"
grep -q "problem: .*labels.jsonl:4:" "$T/out" && ok "check lists the journal line" || { no "check lists the line"; cat "$T/out"; }
# -- a truncated pair file: train and export skip it with a warning naming it
truncate -s 100 "$S/pairs/000002.traj"
expect 0 "export skips the damaged pair" $D3 export --session "$S" --format pickapic --out "$T/pk"
grep_err "export names the file" "000002.traj: 100 bytes"
python3 -c 'import sys; n = sum(1 for _ in open(sys.argv[1])); sys.exit(0 if n >= 10 else 1)' "$T/pk/data.jsonl" \
    && ok "export wrote the other pairs" || no "export wrote the other pairs"
expect 0 "train skips the damaged pair" $D3 train --session "$S" --config "$C" --epochs 1
grep_err "train names the file" "000002.traj"
# -- stale temp files (a dead writer) and a bad checkpoint
sh -c 'exit 0' & dead=$!; wait $dead
printf 'partial' >"$S/pairs/000099.traj.tmp.$dead"
printf 'partial' >"$S/LATEST.tmp.$dead"
expect 2 "check lists every problem" $D3 session check "$S"
for what in "labels.jsonl:4:" "000002.traj" "000099.traj.tmp.$dead" "LATEST.tmp.$dead"; do
    grep -q "problem: .*$what" "$T/out" && ok "check lists $what" || { no "check lists $what"; cat "$T/out"; }
done
lines_before=$(cat "$S/labels.jsonl" | wc -l)
expect 0 "check --repair" $D3 session check "$S" --repair
[ -f "$S/labels.jsonl.bad" ] && grep -q '"choice":"' "$S/labels.jsonl.bad" \
    && [ "$(cat "$S/labels.jsonl" | wc -l)" -lt "$lines_before" ] \
    && ok "bad journal lines moved into labels.jsonl.bad" || no "journal repair"
[ -f "$S/pairs/000002.traj.bad" ] && ! [ -f "$S/pairs/000002.traj" ] \
    && ok "damaged pair set aside, not deleted" || no "pair set aside"
! [ -e "$S/LATEST.tmp.$dead" ] && ok "stale temp files removed" || no "temp files removed"
expect 0 "check after repair: no problems" $D3 session check "$S"
expect 0 "session info after repair: no warning" $D3 session info "$S"
[ ! -s "$T/err" ] && ok "no warning left" || { no "no warning left"; cat "$T/err"; }
# temp files of a dead writer go at open too
printf 'partial' >"$S/rounds/0001.safetensors.tmp.$dead"
expect 0 "auto opens the session" $D3 auto --session "$S" --oracle brightness --rounds 0 --config "$C" --eval-seeds 0
! [ -e "$S/rounds/0001.safetensors.tmp.$dead" ] && ok "stale temp file removed at open" || no "temp removed at open"
grep_err "removal reported" "removed 1 temp file"

# -- out-of-range integers in the config are errors naming file:line:key
for kv in "session: { round_size = 4294967297; };" "sampler: { steps = 4294967316; };" \
          "engine: { threads = 0x100000001; };"; do
    printf '%s\n' "$kv" >"$T/big.conf"
    expect 2 "config: $kv" $D3 auto --session "$T/never" --oracle brightness --rounds 0 --config "$T/big.conf"
    grep_err "named: $kv" "big.conf:1: .*: integer .* is out of range"
done
! [ -e "$T/never" ] && ok "no session made with a bad config" || no "no session with a bad config"

# -- control characters in model metadata and prompts come out escaped
python3 - "$M" "$T/evil.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["__metadata__"]["note"] = "evil \x1b]0;owned\x07 \x1b[2J"
t = json.dumps(h).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])
PY
expect 0 "info on a model with hostile metadata" $D3 info "$T/evil.safetensors"
grep -q "$ESC" "$T/out" && no "info printed a raw escape" || ok "info escapes metadata"
grep -q 'evil \\x1b\]0;owned\\x07' "$T/out" && ok "the escaped text is readable" || { no "escaped text"; cat "$T/out"; }
expect 1 "sample with a hostile prompt" $D3 sample --model "$M" --prompt "$(printf 'x\033[2Jy')" --out "$T/o"
grep -q "$ESC" "$T/err" && no "sample printed a raw escape" || ok "sample escapes the prompt"

# -- a labeler that hangs is killed with its whole process group (no orphans)
cat >"$T/hang_child.sh" <<'SH'
read -r line
sleep 3171 &
wait
SH
expect 2 "auto: hanging labeler with a child" $D3 auto --session "$T/hangc" --labeler "sh $T/hang_child.sh" \
    --rounds 1 --pairs 2 --model "$M" --config "$C" --timeout 1 --eval-seeds 0
sleep 0.5
pgrep -f "sleep 3171" >/dev/null && { no "labeler's child left running"; pkill -f "sleep 3171"; } \
    || ok "the labeler's child was killed too"

finish test_damage.sh
