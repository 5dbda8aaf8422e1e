#!/bin/sh
# test_tui.sh - the labeling screen as a person uses it, in tmux: start a
# session on a tiny model, label two rounds with keys (left, right, tie,
# undo), watch the engine train between rounds, quit, resume with the same
# model version and queue, and check `d3po session info`. A second d3po on
# the same session is refused. Graphics: the half-block fallback (tmux).
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
printf 'smiling face\nred apple\nflag\n' >"$T/names"
$D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=16 --class-names "$T/names" >/dev/null
S="$T/session"
CMD="cd $PWD && $D3 label --session $S --model $T/m.st --graphics blocks --round-size 2"
tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "round 1  labels 0/2  model v0" && ok "screen opens on a new session" || no "screen opens"
wait_for "pair 0 " && ok "first pair drawn" || no "first pair drawn"
# drift: the first pair (seed 0) is measured against the base; at v0 the
# policy is the base, so the log-ratio is exactly 0
wait_for "drift 0.000 (v0, 1 pair)" && ok "header shows the drift (0 at v0)" || no "header drift at v0"
wait_for "▀▀▀▀▀▀▀▀" && ok "half-block images drawn" || no "half-block images drawn"
tm send-keys -t t 1
wait_for "pair 0: A saved" && ok "key 1 labels left" || no "key 1"
tm send-keys -t t u
wait_for "undid the decision on pair 0" && ok "u undoes" || no "u undoes"
tm send-keys -t t Left
wait_for "pair 0: A saved" && ok "Left labels left" || no "Left"
wait_for "pair 1  seed" && ok "next pair shown" || no "next pair shown"
tm send-keys -t t 2
wait_for "model v1" && ok "round 1 trained after 2 labels" || no "round 1 trained"
wait_for "pair 2  seed" || no "pair 2 shown"
tm send-keys -t t t
wait_for "tie saved" && ok "t is a tie" || no "t tie"
wait_for "pair 3  seed" || no "pair 3 shown"
tm send-keys -t t s
wait_for "skip saved" && ok "s skips" || no "s skip"
wait_for "pair 4  seed" || no "pair 4 shown"
tm send-keys -t t Right
wait_for "model v2" && ok "round 2 trained" || no "round 2 trained"
# pairs keep coming from the model in force while a round trains, so the
# first pair measured from a trained model (pair 8) comes a few pairs later
wait_for "drift -*[0-9.]* (v[12], [0-9] pair" && ok "header drift measured on a trained model's pair" \
    || no "header drift of a trained model"
# history: change a past choice (a new journal line)
tm send-keys -t t h
wait_for "history: 5 decided pairs" && ok "h opens the history" || no "h history"
wait_for "pair *4  B *trained" && ok "history marks a trained pair" || no "history trained mark"
tm send-keys -t t Down
tm send-keys -t t t
wait_for "changed to tie" && ok "a past choice can be changed" || no "change a past choice"
wait_for "pair *3  tie *next round" && ok "history: the edited pair waits for the next round" \
    || no "history next-round mark"
tm send-keys -t t h
tm send-keys -t t p
wait_for "prompt of new pairs" && ok "p opens the prompt chooser" || no "p prompt chooser"
tm send-keys -t t Down Enter
wait_for "new pairs: smiling face" && ok "a prompt can be chosen" || no "choose a prompt"
tm send-keys -t t z
sleep 0.5
tm capture-pane -p -t t >"$T/zoom"
# the panels are 48 cells wide; the zoomed image spans 26 rows = 52 cells
python3 -c "import sys; t=open(sys.argv[1], encoding='utf-8').read(); sys.exit(0 if max(len(r) for r in t.replace(' ', '\n').split('\n') if set(r) == {'▀'}) >= 50 else 1)" "$T/zoom" \
    && ok "z zooms one image" || { no "z zooms"; cat "$T/zoom"; }
tm send-keys -t t z z '?'
wait_for "keys (remap them" && ok "? shows the keys" || no "? help"
wait_for "training objective: d3po (train.objective" && ok "? shows the objective" || no "? objective"
tm send-keys -t t Escape
# a second d3po on the same session is refused
script -qec "$D3 label --session $S --graphics blocks" /dev/null </dev/null >"$T/second" 2>&1
grep -q "in use by another d3po" "$T/second" && ok "second d3po refused (lock)" || { no "second d3po refused"; cat "$T/second"; }
tm send-keys -t t q
wait_for "EXITED 0" && ok "q quits with status 0" || no "q quits"
tm kill-server 2>/dev/null
$D3 session info "$S" --json >"$T/info.json" && ok "session info" || no "session info"
python3 - "$T/info.json" <<'PY' && ok "labels, rounds and version recorded" || no "labels, rounds and version recorded"
import json, sys
d = json.load(open(sys.argv[1]))
flat = json.dumps(d)
print("  ", flat[:300])
def find(o, k):
    if isinstance(o, dict):
        if k in o: return o[k]
        for v in o.values():
            r = find(v, k)
            if r is not None: return r
    return None
assert find(d, "version") == 2, "version"
assert find(d, "undone") == 1, "undone"
assert find(d, "tie") == 2, "changed choice counted"
PY
# resume: same model version, the queue comes back, and the history edit
# (pair 3: skip -> tie, after round 2) counts toward round 3
tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "round 3  labels 1/2  model v2" && ok "resume keeps the model version and the untrained label" \
    || no "resume"
tm send-keys -t t q
wait_for "EXITED 0" && ok "quit after resume" || no "quit after resume"
tm kill-server 2>/dev/null
finish test_tui.sh
