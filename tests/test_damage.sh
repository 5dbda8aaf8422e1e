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
CN=$($D3 info --model "$M" 2>/dev/null | sed -n 's/^classes: *//p' | head -1)
printf 'class_1\t3\n# a comment\nclass_2\n' >"$T/prompts"
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
info "$S" 'd["prompts"] == [{"prompt": "class_1", "weight": 3}, {"prompt": "class_2", "weight": 1}]' \
    && ok "prompt set stored in the session" || no "prompt set stored"
expect 0 "auto resume keeps the prompt set" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --pairs 4 --config "$C" --eval-seeds 0
python3 - "$S" <<'PY' && ok "resumed pairs use the stored set" || no "resumed prompt set"
import struct, sys, glob
c = set(struct.unpack_from("<I", open(f, "rb").read(64), 24)[0] for f in glob.glob(sys.argv[1] + "/pairs/*.traj"))
assert c == {1, 2}, c
PY
printf 'class_1\tlots\n' >"$T/badprompts"
expect 1 "bad weight is a usage error" $D3 auto --session "$S" --oracle brightness --rounds 1 \
    --config "$C" --prompts "$T/badprompts"
grep_err "bad weight names file:line" "badprompts:1: weight 'lots': expected an integer 1..100"

# -- a half round journaled before a kill trains with the next round
S="$T/half"
expect 2 "labeler stops after 2 answers" $D3 auto --session "$S" --labeler "sh $L/exits.sh" \
    --rounds 1 --pairs 4 --model "$M" --config "$C" --eval-seeds 0
