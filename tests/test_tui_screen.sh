#!/bin/sh
# test_tui_screen.sh - the labeling screen's views and messages, in tmux
# (half blocks): the stats view (i) with the balance and per-prompt counts,
# the message log (m), Escape closing views, decision keys that do nothing
# (with a message) while a view hides the pair or the terminal is too small,
# zoom labelled with the image's number, start-up warnings (a torn journal
# line, a bad LATEST) in the message line and the log, the status line cut
# on a word boundary, the summary on quit, and the d3po messages for an
# unset, unknown or dumb TERM.
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
command -v script >/dev/null || { echo "  script (bsdutils) missing"; exit 1; }
printf 'smiling face\nred apple\nflag\n' >"$T/names"
$D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=16 --class-names "$T/names" >/dev/null
S="$T/session"
CMD="cd $PWD && $D3 label --session $S --model $T/m.st --graphics blocks --round-size 4"
labels() { $D3 session info "$S" --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)["labels"]; print(d["A"]+d["B"]+d["tie"]+d["skip"])'; }
# tm_stop: end the tmux server and wait until it is gone, so the next
# new-session does not meet a server still shutting down on the socket
tm_stop() {
    tm kill-server 2>/dev/null
    i=0
    while [ $i -lt 50 ] && tm has-session 2>/dev/null; do sleep 0.1; i=$((i+1)); done
    rm -f "$SOCK"
}
# gone PATTERN: poll until the screen no longer shows PATTERN (~30 s)
gone() {
    i=0
    while [ $i -lt 150 ]; do
        tm capture-pane -p -t t >"$T/screen" 2>/dev/null
        grep -q -- "$1" "$T/screen" || return 0
        sleep 0.2; i=$((i+1))
    done
    echo "  (screen still shows '$1'):"; cat "$T/screen"; return 1
}

tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "pair 0  seed" && ok "screen opens" || no "screen opens"
tm send-keys -t t 1
wait_for "pair 0: A saved" || no "first label"
wait_for "pair 1  seed" || no "pair 1 shown"

# stats: balance and per-prompt counts
tm send-keys -t t i
wait_for "statistics (i or Escape closes)" && ok "i opens the statistics" || no "i opens the statistics"
wait_for "1 decided pair: A 1 (100%), B 0 (0%), tie 0 (0%), skip 0 (0%)" && ok "stats: balance" || no "stats: balance"
wait_for "this sitting  1 label in" && ok "stats: this sitting" || no "stats: this sitting"
wait_for "0 labels trained, 1 pending; round 1 has 1 of 4" && ok "stats: labels waiting for training" || no "stats: waiting"
wait_for "(1 of 3 prompts labeled)" && ok "stats: per-prompt count" || no "stats: per-prompt count"
# a decision key under the view: nothing decided, a message says why
tm send-keys -t t 2
wait_for "the pair is hidden by the statistics: key 2 did nothing" && ok "hidden pair: 2 refused under stats" \
    || no "hidden pair under stats"
[ "$(labels)" = 1 ] && ok "hidden pair: no label written" || no "hidden pair: a label was written ($(labels))"
tm send-keys -t t Escape
gone "statistics (i or Escape closes)" && ok "Escape closes the statistics" || no "Escape closes the statistics"
wait_for "pair 1  seed" || no "pair back after Escape"

# help: decision keys refused, Escape closes
tm send-keys -t t '?'
wait_for "keys (remap them" || no "? opens help"
wait_for "drift: the mean per-step log-probability ratio" && ok "help explains the drift" || no "help explains the drift"
tm send-keys -t t t
wait_for "the pair is hidden by the help: key t did nothing" && ok "hidden pair: t refused under help" || no "t under help"
tm send-keys -t t Escape
gone "keys (remap them" && ok "Escape closes the help" || no "Escape closes the help"
[ "$(labels)" = 1 ] && ok "still one label" || no "labels after help: $(labels)"

# zoom: labelled with its image's number
tm send-keys -t t z
wait_for "image 1 of 2 \[1\]" && ok "zoom labels image 1" || no "zoom image 1"
tm send-keys -t t z
wait_for "image 2 of 2 \[2\]" && ok "zoom labels image 2" || no "zoom image 2"
tm send-keys -t t Escape
gone "image 2 of 2" && ok "Escape leaves the zoom" || no "Escape leaves zoom"

# too small: keys do nothing and say so
tm resize-window -t t -x 36 -y 10 2>/dev/null || tm resize-pane -t t -x 36 -y 10
wait_for "enlarge the terminal" && ok "small terminal asks to enlarge" || no "enlarge message"
tm send-keys -t t 1
wait_for "the pair is not shown" && ok "small terminal: 1 refused with a message" || no "small terminal message"
[ "$(labels)" = 1 ] && ok "small terminal: no label written" || no "small terminal wrote a label"
tm resize-window -t t -x 60 -y 30 2>/dev/null || tm resize-pane -t t -x 60 -y 30
wait_for "pair 1  seed" || no "pair back after enlarging"
# the status line, 60 columns wide: cut on a word boundary, whole in the log
tm capture-pane -p -t t >"$T/narrow"
tm send-keys -t t m
wait_for "messages: " && ok "m opens the message log" || no "m opens the log"
wait_for "the pair is not shown" && ok "log keeps this sitting's messages" || no "log keeps messages"
tm capture-pane -p -t t >"$T/log"
python3 - "$T/narrow" "$T/log" <<'PY' && ok "status line cut on a word boundary" || no "status line cut mid-word"
import sys
status = [l for l in open(sys.argv[1], encoding="utf-8").read().split("\n") if "graphics:" in l][-1].strip()
full = open(sys.argv[2], encoding="utf-8").read().split()
assert len(status) < 60, status
if status.endswith("..."):
    last = status[:-3].split()[-1]
    assert last in full, (last, status)
print("   ", status)
PY
tm send-keys -t t Escape
gone "messages: " || no "Escape closes the log"
tm send-keys -t t q
wait_for "EXITED 0" && ok "q quits" || no "q quits"
grep -q "this sitting: 1 label in" "$T/screen" && ok "summary on quit" || { no "summary on quit"; cat "$T/screen"; }
grep -q "1 label not trained yet" "$T/screen" && ok "summary names untrained labels" || no "summary: untrained"
tm_stop

# start-up warnings: a torn journal line and a bad LATEST, on screen and in the log
printf '{"pair":1,"cho' >>"$S/labels.jsonl"
printf 'round banana\n' >"$S/LATEST"
tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "start-up warnings (m shows all): " && ok "start-up warnings in the message line" \
    || no "start-up warnings in the message line"
tm send-keys -t t m
wait_for "start-up warning: .*LATEST" && ok "log: the LATEST warning" || no "log: LATEST warning"
wait_for "start-up warning: .*torn last line" && ok "log: the torn journal line" || no "log: torn line"
tm send-keys -t t Escape q
wait_for "EXITED 0" || no "quit after warnings"
grep -q "start-up warnings (shown in the screen.s log)" "$T/screen" && grep -q "torn last line" "$T/screen" && ok "summary repeats the warnings" || no "summary: warnings"
tm_stop

# TERM unset, unknown, dumb: a d3po message, status 2, no curses error
for term in unset nosuch-terminal dumb; do
    if [ "$term" = unset ]; then pre="env -u TERM"; else pre="env TERM=$term"; fi
    script -qec "$pre $D3 label --session $S --graphics blocks" /dev/null </dev/null >"$T/term.out" 2>&1
    rc=$?
    case $term in
    unset) want="TERM is not set" ;;
    dumb) want="TERM=dumb cannot move the cursor" ;;
    *) want="TERM=$term is not in the terminfo database" ;;
    esac
    if [ $rc -eq 2 ] && grep -q "$want" "$T/term.out" && grep -q -- "--graphics blocks" "$T/term.out" \
        && grep -q "d3po auto" "$T/term.out" && ! grep -q "Error opening terminal" "$T/term.out"; then
        ok "TERM $term: d3po says what to do (status 2)"
    else
        no "TERM $term (status $rc)"; cat "$T/term.out"
    fi
done
finish test_tui_screen.sh
