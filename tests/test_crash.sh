#!/bin/sh
# test_crash.sh - kill -9 at random moments while a person labels and the
# engine trains and writes checkpoints (round size 1: every label starts a
# round that ends in a checkpoint write), then resume: every label the
# screen acknowledged is in the journal, the session opens, the last good
# checkpoint loads, and labeling goes on.
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
SOCK="$T/tmux.sock"
tm() { tmux -S "$SOCK" "$@"; }
printf 'smiling face\nred apple\nflag\n' >"$T/names"
$D3 init --out "$T/m.st" --arch base=8,mult=1.2,res=1,attn=none,size=16 --class-names "$T/names" >/dev/null
S="$T/session"
acked=0
for trial in 1 2 3 4 5; do
    tm new-session -d -s t -x 100 -y 30 "cd $PWD && exec $D3 label --session $S --model $T/m.st --graphics blocks --round-size 1"
    # wait for a pair, then label as fast as the screen acknowledges
    # (waits are generous bounds, not timings: on a loaded 2-core machine a
    # resumed session can take well over 10 s to show its first pair)
    i=0
    while [ $i -lt 600 ]; do
        tm capture-pane -p -t t 2>/dev/null | grep -q "pair [0-9]*  seed" && break
        sleep 0.1; i=$((i+1))
    done
    # one acknowledged label first (slow builds such as check-asan need the
    # time), then a burst of keys and the kill at a trial-dependent moment
    tm send-keys -t t 1 2>/dev/null
    i=0
    while [ $i -lt 600 ]; do
        tm capture-pane -p -t t 2>/dev/null | grep -q ": A saved" && break
        sleep 0.1; i=$((i+1))
    done
    # every acknowledgement seen on screen before the kill is collected
    tm capture-pane -p -t t 2>/dev/null >"$T/screen"
    n=0
    while [ $n -lt 6 ]; do
        tm send-keys -t t 1 2>/dev/null
        sleep 0.0$(( (trial * 7 + n * 3) % 9 + 1 ))
        tm capture-pane -p -t t 2>/dev/null >>"$T/screen"
        n=$((n+1))
    done
    pid=$(tm list-panes -t t -F '#{pane_pid}' 2>/dev/null)
    kill -9 "$pid" 2>/dev/null
    tm kill-server 2>/dev/null
    last=$(grep -o 'pair [0-9]*: A saved' "$T/screen" | grep -o '[0-9]*' | sort -n | tail -n 1)
    if [ -n "$last" ]; then
        # pair $last's label was acknowledged: it must be in the journal
        grep -q "\"pair\":$last," "$S/labels.jsonl" && ok "trial $trial: acknowledged pair $last is journaled" \
            || no "trial $trial: acknowledged pair $last lost"
        acked=$((acked+1))
    fi
    $D3 session info "$S" >"$T/info" 2>&1 && ok "trial $trial: session opens after kill -9" || { no "trial $trial: session opens"; cat "$T/info"; }
done
[ $acked -eq 5 ] && ok "labels were acknowledged in all 5 trials" || no "labels acknowledged in only $acked of 5 trials"
grep "^rounds\|^model\|^labels" "$T/info"
# the last good checkpoint loads and sampling from it works
ckpt=$(sed -n 's/^model: *version [0-9]* (\(.*\))$/\1/p' "$T/info")
$D3 info "$S/$ckpt" >/dev/null 2>&1 && ok "last good checkpoint $ckpt loads" || no "checkpoint $ckpt loads"
for f in "$S"/rounds/*.safetensors; do
    $D3 info "$f" >/dev/null 2>&1 || no "a torn checkpoint $f was left behind"
done
ok "every checkpoint in rounds/ loads (a kill mid-write leaves at most a .tmp file, never a torn checkpoint)"
finish test_crash.sh
