#!/bin/sh
# test_tui_grid.sh - grid mode of the labeling screen in tmux (half blocks):
# `d3po label --grid 4` on a tiny model shows 4 images of one prompt from
# one x_T; keys mark them (1..4 cycle, arrows + g/b, B best), Enter
# submits, u undoes, s skips, z zooms one image, G switches to pairs and
# back, h lists the groups (with the selected group's images), i counts
# them; a round trains on the groups' (good, bad) pairs; kill -9 right
# after a submit loses nothing (the group is in groups.jsonl and in
# `session info` after resume); `export --format scores` has the marks;
# `session check` names a bad journal line or group file, --repair sets
# them aside; `d3po train` trains on the groups' pairs too.
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
printf 'smiling face\nred apple\nflag\n' >"$T/names"
$D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=16 --class-names "$T/names" >/dev/null
S="$T/session"
# exec: the pane's pid is d3po itself, for the kill -9 below
CMD="cd $PWD && exec $D3 label --session $S --model $T/m.st --graphics blocks --round-size 4 --grid 4"
tm new-session -d -s t -x 100 -y 30 "$CMD"
wait_for "group 0: 4 images of \"smiling face\"" && ok "grid opens with a group of 4" || no "grid opens"
wait_for "\[1\] - <  *\[2\] -  *\[3\] -  *\[4\] -" && ok "4 tiles in one row (100x30 fits them largest)" \
    || no "4 tiles in a row"
wait_for "▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀" && ok "half-block images drawn" || no "half-block images"
# an image is as large as the layout allows: 4 tiles of 23 columns
tm capture-pane -p -t t >"$T/grid"
python3 - "$T/grid" <<'PY' && ok "4 images side by side, 23 columns each" || { no "image sizes"; cat "$T/grid"; }
import sys
rows = [r for r in open(sys.argv[1], encoding='utf-8').read().split('\n') if '▀' in r]
runs = [len(x) for x in rows[0].split() if set(x) == {'▀'}] if rows else []
print("   image widths", runs, "rows", len(rows))
sys.exit(0 if len(runs) == 4 and min(runs) >= 20 and len(rows) >= 10 else 1)
PY
tm send-keys -t t Enter
wait_for "nothing marked" && ok "Enter with nothing marked is refused" || no "empty submit refused"
tm send-keys -t t 1 2 2
wait_for "\[1\] good  *\[2\] BAD <" && ok "1 marks good, 2 twice marks bad" || no "digit marks"
tm send-keys -t t Enter
wait_for "group 0: gb-- saved, 1 pair for training" && ok "Enter submits: 1 pair" || no "submit"
wait_for "labels 1/4" && ok "the group's pair counts toward the round" || no "pair counted"
tm send-keys -t t u
wait_for "undid the decision on group 0" && ok "u undoes the group" || no "u undoes"
wait_for "\[1\] good.*\[2\] BAD" && ok "the group is back with its marks" || no "group back"
tm send-keys -t t Enter
wait_for "group 0: gb-- saved" || no "resubmit"
wait_for "group 1: 4 images" || no "group 1 shown"
tm send-keys -t t s
wait_for "group 1 skipped" && ok "s skips a group" || no "s skips"
wait_for "group 2: 4 images" || no "group 2 shown"
tm send-keys -t t Right Right B
wait_for "image 3 is the best" && ok "B: the selected image is the best" || no "B best"
wait_for "\[1\] BAD  *\[2\] BAD  *\[3\] good <  *\[4\] BAD" && ok "best: the rest bad" || no "best marks"
tm send-keys -t t Enter
wait_for "group 2: bbgb saved, 3 pairs" && ok "best makes 3 pairs" || no "best submit"
wait_for "model v1" && ok "a round trains on the groups' 4 pairs" || no "round 1 trained"
wait_for "round 1 trained on 4 labels" && ok "round 1 had the 4 group pairs" || no "round 1 pair count"
tm send-keys -t t G
wait_for "pair 0  seed" && ok "G switches to pairs" || no "G to pairs"
tm send-keys -t t G
wait_for "group 3: 4 images" && ok "G switches back to the grid" || no "G back"
tm send-keys -t t h
wait_for "group history: 3 decided groups" && ok "h lists the groups" || no "h history"
wait_for "group  *2  bbgb  *3 pairs  trained" && ok "history marks a trained group" || no "history trained"
tm send-keys -t t Escape
wait_for "group 3: 4 images" || no "history closes"
tm send-keys -t t i
wait_for "groups  *[0-9]* sampled, 2 marked, 1 skipped; 4 pairs" && ok "i: statistics count the groups" || no "stats groups"
tm send-keys -t t Escape
wait_for "group 3: 4 images" || no "stats close"
tm send-keys -t t z
sleep 1
tm capture-pane -p -t t >"$T/zoom"
python3 - "$T/zoom" <<'PY' && ok "z zooms the selected image (44 columns)" || { no "z zooms"; cat "$T/zoom"; }
import sys
t = open(sys.argv[1], encoding='utf-8').read()
rows = [r for r in t.split('\n') if '▀' in r]
runs = [len(x) for x in rows[0].split() if set(x) == {'▀'}] if rows else []
print("   zoomed widths", runs)
sys.exit(0 if runs == [44] and '[1] - <' in t and '[2] -' not in t else 1)
PY
tm send-keys -t t z
wait_for "\[1\] - <  *\[2\] -  *\[3\] -  *\[4\] -" && ok "z again: the grid" || no "unzoom"
tm send-keys -t t g g b
wait_for "\[1\] good  *\[2\] good  *\[3\] BAD" || no "arrow marks"
tm send-keys -t t Enter
wait_for "group 3: ggb- saved, 2 pairs" && ok "g/b mark and advance" || no "g/b submit"
pid=$(tm list-panes -t t -F '#{pane_pid}' 2>/dev/null)
kill -9 "$pid" 2>/dev/null
tm kill-server 2>/dev/null
grep -q '"group":3,"marks":"ggb-"' "$S/groups.jsonl" && ok "kill -9 after the submit: group 3 is journaled" \
    || { no "group 3 journaled"; cat "$S/groups.jsonl"; }
$D3 session info "$S" --json >"$T/info.json" 2>"$T/info.err" || cat "$T/info.err"
python3 - "$T/info.json" <<'PY' && ok "session info: 3 marked groups, 1 skipped, 6 pairs, 4 trained" || no "session info groups"
import json, sys
g = json.load(open(sys.argv[1]))["groups"]
print("  ", g)
sys.exit(0 if g["count"] >= 4 and g["marked"] == 3 and g["skipped_groups"] == 1 and g["group_pairs"] == 6
         and g["group_pairs_trained"] == 4 and g["group_pairs_pending"] == 2 and g["group_undos"] == 1
         else 1)
PY
$D3 session info "$S" | grep -q "^groups: .* 3 decided, 1 skipped" && ok "session info text shows groups" || no "info text"
$D3 session check "$S" >"$T/check" && ok "session check: no problems" || { no "session check"; cat "$T/check"; }
# resume: the decided groups do not come back; a round trains on the rest
tm new-session -d -s t -x 100 -y 30 "$CMD"
wait_for "group [4-9]: 4 images" && ok "resume shows an undecided group" || no "resume"
wait_for "labels 2/4" && ok "resume: group 3's 2 pairs wait for the next round" || no "resume pending"
tm send-keys -t t T
wait_for "model v2" && ok "T trains group 3's pairs" || no "round 2"
# history: change the marks of a trained group (a new journal line)
tm send-keys -t t h
wait_for "group history: 4 decided groups" || no "history after resume"
tm send-keys -t t Down Down Down 3 Enter
wait_for "group 0 changed to gbg- (trained before: the new marks go into the next round)" \
    && ok "history: a group's marks changed" || no "history edit"
wait_for "group  *0  gbg-  *2 pairs  next round" && ok "history: the changed group waits for the next round" \
    || no "history edit pending"
tm send-keys -t t Escape
tm send-keys -t t q
sleep 1
tm kill-server 2>/dev/null
grep -q '"group":3,"marks":"ggb-"' "$S/rounds/0002.groups" && ok "rounds/0002.groups lists group 3" || no "round 2 groups"
expect 0 "export scores" $D3 export --session "$S" --format scores --out "$T/sc"
python3 - "$T/sc/scores.jsonl" "$T/sc" <<'PY' && ok "scores: per-image marks of the groups" || no "scores marks"
import json, os, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
g = [l for l in lines if "group" in l]
marks = {(l["group"], l["image"]): l["mark"] for l in g}
ok = marks.get((2, 2)) == "good" and marks.get((2, 0)) == "bad" and marks.get((0, 3)) == "unmarked"
ok = ok and all(os.path.exists(os.path.join(sys.argv[2], l["png"])) for l in g)
ok = ok and not any(l["group"] == 1 for l in g)  # skipped
sys.exit(0 if ok and len(g) == 12 else 1)
PY
# a damaged journal line is named by the check
echo '{"group":9,"marks":"zz"}' >>"$S/groups.jsonl"
$D3 session check "$S" >"$T/check2"
grep -q "groups.jsonl:[0-9]*: \"marks\"" "$T/check2" && ok "check names a bad groups.jsonl line" || { no "check bad line"; cat "$T/check2"; }
$D3 session check "$S" --repair >"$T/check3" && grep -q "moved 1 line to .*groups.jsonl.bad" "$T/check3" \
    && ok "check --repair moves it to groups.jsonl.bad" || { no "check --repair"; cat "$T/check3"; }
$D3 session check "$S" >"$T/check4" && ok "no problem after the repair" || { no "after repair"; cat "$T/check4"; }
# a damaged group file is named, and set aside by a repair (with its line)
head -c 100 "$S/groups/000001.traj" >"$T/cut" && cp "$T/cut" "$S/groups/000001.traj"
$D3 session check "$S" >"$T/check5"; st=$?
[ $st -ne 0 ] && grep -q "groups/000001.traj" "$T/check5" && ok "check names a damaged group file" \
    || { no "damaged group file"; cat "$T/check5"; }
$D3 session check "$S" --repair >"$T/check6" && [ -f "$S/groups/000001.traj.bad" ] \
    && ok "check --repair sets the damaged group aside" || { no "repair group file"; cat "$T/check6"; }
$D3 session check "$S" >"$T/check7" && ok "no problem after setting it aside" || { no "after set aside"; cat "$T/check7"; }
# offline training takes the groups' pairs too: 0 (gbg-) 2, 2 (bbgb) 3, 3 (ggb-) 2
expect 0 "d3po train on the session" $D3 train --session "$S"
grep -q "trained on 7 pairs (0 from labels, 0 from scores, 7 from groups)" "$T/out" \
    && ok "train: the 7 pairs of the marked groups" || { no "train groups"; cat "$T/out"; }
expect 1 "--grid 2 refused" $D3 label --session "$S" --grid 2
grep_err "--grid 2 named" "expected 0 (pairs) or 3 to 8"
finish test_tui_grid.sh
