#!/bin/sh
# test_tui_rounds.sh - the round flow on the labeling screen, in tmux
# (issue 13): new pairs cycle through the prompts, and labels of a half
# round left by `q` count toward the round after a resume and train with
# it. Waits for screen text only (no timing). (wait_for uses $i: loops
# here count with $k.)
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
printf 'smiling face\nred apple\nflag\n' >"$T/names"
$D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=16 --class-names "$T/names" >/dev/null
printf 'sampler = { steps = 3; };\nengine = { threads = 1; };\n' >"$T/c.conf"
S="$T/session"
# journaled K CHOICE: wait (~30 s) until the journal holds pair K's label.
# The durable record, not the message line: "pair K: X saved" is replaced
# as soon as the next event (a round trained) arrives, so a loaded machine
# could miss it on screen.
journaled() {
    i=0
    while [ $i -lt 150 ]; do
        grep -q "\"pair\":$1,\"choice\":\"$2\"" "$S/labels.jsonl" 2>/dev/null && return 0
        sleep 0.2; i=$((i+1))
    done
    echo "  (journal lacks pair $1: $2)"; cat "$S/labels.jsonl" 2>/dev/null; return 1
}
CMD="cd $PWD && $D3 label --session $S --model $T/m.st --config $T/c.conf --graphics blocks --round-size 4"
tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "round 1  labels 0/4  model v0" && ok "screen opens" || no "screen opens"
: >"$T/prompts"
for k in 0 1; do
    wait_for "pair $k  seed" || no "pair $k shown"
    sed -n 's/^ *\[1\] \(.*[a-z]\) *\[2\].*/\1/p' "$T/screen" | head -1 >>"$T/prompts"
    tm send-keys -t t 1
    journaled $k A || no "pair $k labeled"
done
wait_for "labels 2/4" && ok "two labels of the round counted" || no "labels 2/4"
tm send-keys -t t q
wait_for "EXITED 0" && ok "q in the middle of a round" || no "q"
tm kill-server 2>/dev/null
$D3 session info "$S" --json >"$T/info.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["labels"]["untrained"] == 2 and d["rounds"] == 0 else 1)' "$T/info.json" \
    && ok "session info: 2 labels not trained" || { no "2 untrained"; cat "$T/info.json"; }

tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "round 1  labels 2/4  model v0" && ok "resume: the half round's labels count" || no "resume counts 2/4"
for k in 2 3 4 5; do
    wait_for "pair $k  seed" || no "pair $k shown"
    sed -n 's/^ *\[1\] \(.*[a-z]\) *\[2\].*/\1/p' "$T/screen" | head -1 >>"$T/prompts"
    tm send-keys -t t 2
    journaled $k B || no "pair $k labeled"
done
wait_for "model v1" && ok "round 1 trained after the resume" || no "round 1 trained"
python3 - "$S/rounds/0001.labels" <<'PY' && ok "round 1 trained the 2 labels from before the quit" || no "round 1 labels"
import json, sys
ids = [json.loads(l)["pair"] for l in open(sys.argv[1])]
print("    round 1 trained pairs", ids)
assert 0 in ids and 1 in ids and len(ids) >= 4, ids
PY
sort -u "$T/prompts" >"$T/distinct"
echo "    prompts shown: $(tr '\n' ',' <"$T/prompts")"
[ "$(wc -l <"$T/distinct")" -eq 3 ] && ok "6 pairs showed all 3 prompts" || { no "prompts cycle"; cat "$T/prompts"; }
tm send-keys -t t q
wait_for "EXITED 0" && ok "quit" || no "quit"
tm kill-server 2>/dev/null
finish test_tui_rounds.sh
