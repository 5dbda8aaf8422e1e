#!/bin/sh
# test_tui_sd.sh - the labeling screen on a Stable Diffusion-family model,
# in tmux: `d3po label --model SD_DIR` on a tiny random sd1 pipeline
# (tests/sd/make_tiny.py) makes an sd session and shows its decoded images
# (64x64, scaled into half-block panels) with the prompt (UTF-8, escaped);
# a label goes to the journal; `p` opens a prompt line where a typed
# UTF-8 prompt (with a Backspace) becomes the prompt of the next pairs,
# shows up above the panels and is saved in prompts.json; Escape cancels
# the line; `i` shows the statistics with labeled pairs per prompt (the
# typed UTF-8 prompt among them; a long one cut at a character boundary
# on a narrow screen); q quits cleanly. Grid mode (--grid 4) on an sd
# session: a group of 4 decoded images, marked, submitted, journaled in
# groups.jsonl; `d3po train` then trains a round on its pair. Waits for screen text or the journal only (no
# timing). Under D3PO_ASAN=1 skipped (the pipeline needs the venv).
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
sd_python test_tui_sd
M=$T/sd1
"$VENV/bin/python" tests/sd/make_tiny.py --kind sd1 --out "$M" >"$T/make.log" 2>&1 ||
    { no "make_tiny.py"; tail -n 5 "$T/make.log"; finish test_tui_sd; exit 1; }
S="$T/session"
printf 'a red cat\n' >"$T/prompts"
printf 'sampler = { steps = 3; };\nengine = { threads = 1; };\n' >"$T/c.conf"
CMD="cd $PWD && LANG=C.UTF-8 LC_ALL=C.UTF-8 $D3 label --session $S --model $M --prompts $T/prompts --size 64x64 --config $T/c.conf --graphics blocks --round-size 4"
tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "pair 0  seed" && ok "label --model SD_DIR: the screen shows a pair" || no "screen shows a pair"
grep -q '\[1\] a red cat .*\[2\] a red cat' "$T/screen" && ok "  ...with its prompt above both panels" || no "  ...prompt shown"
grep -q '▀▀▀▀▀▀▀▀▀▀' "$T/screen" && ok "  ...and the decoded images as half blocks" || no "  ...images drawn"
grep -q '"family": "sd"' "$S/session.json" && ok "  ...in a new sd session" || no "  ...sd session"
tm send-keys -t t 1
i=0
while [ $i -lt 150 ] && ! grep -q '"pair":0,"choice":"A"' "$S/labels.jsonl" 2>/dev/null; do sleep 0.2; i=$((i+1)); done
grep -q '"pair":0,"choice":"A"' "$S/labels.jsonl" && ok "a label goes to the journal" || no "label journaled"
tm send-keys -t t p
wait_for "new prompt (Enter" && ok "p opens the prompt line" || no "p opens the prompt line"
tm send-keys -t t -l 'nope'
tm send-keys -t t Escape
wait_for "prompt not changed" && ok "  ...Escape cancels it" || no "  ...Escape cancels"
tm send-keys -t t p
wait_for "new prompt (Enter" || no "p again"
tm send-keys -t t -l 'un chat vert ✓x'
tm send-keys -t t BSpace
wait_for "cancel): un chat vert ✓_" && ok "  ...UTF-8 typed, Backspace removes the last character" || no "  ...typing"
tm send-keys -t t Enter
wait_for "new pairs: un chat vert ✓ (saved" && ok "  ...Enter makes it the prompt of new pairs" || no "  ...Enter"
grep -qi '"prompt": "un chat vert \\u2713"' "$S/prompts.json" && grep -qi '"fixed": "un chat vert \\u2713"' "$S/prompts.json" &&
    ok "  ...saved in the session's prompts.json" || { no "  ...prompts.json"; cat "$S/prompts.json"; }
# the queued pairs stay; label until a pair of the new prompt shows
k=1
while [ $k -lt 8 ] && ! grep -q '\[1\] un chat vert ✓' "$T/screen"; do
    wait_for "pair $k  seed" >/dev/null || break
    grep -q '\[1\] un chat vert ✓' "$T/screen" && break
    tm send-keys -t t 2
    k=$((k+1))
    sleep 0.3
    tm capture-pane -p -t t >"$T/screen"
done
grep -q '\[1\] un chat vert ✓ .*\[2\] un chat vert ✓' "$T/screen" && ok "  ...and the next pairs show it" || { no "  ...new pairs use it"; cat "$T/screen"; }
tm send-keys -t t p
wait_for "new prompt (Enter" || no "p once more"
tm send-keys -t t Enter
wait_for "new pairs: every prompt of the set in turn" && ok "  ...an empty line goes back to the set in turn" || no "  ...empty line"
grep -q '"fixed": null' "$S/prompts.json" && ok "  ...saved (no fixed prompt)" || { no "  ...fixed null"; cat "$S/prompts.json"; }
# the statistics view counts labeled pairs per prompt (from the pairs'
# headers: the prompt text, UTF-8 kept); first a label for the pair of the
# typed prompt on screen
n0=$(grep -c '"choice"' "$S/labels.jsonl")
tm send-keys -t t 1
i=0
while [ $i -lt 150 ] && [ "$(grep -c '"choice"' "$S/labels.jsonl")" -le "$n0" ]; do sleep 0.2; i=$((i+1)); done
tm send-keys -t t i
wait_for "per prompt    labeled pairs" && ok "i shows the statistics" || no "i: statistics"
nlab=$(grep -c '"choice"' "$S/labels.jsonl") # no undo here: one record per labeled pair
sum=$(sed -n 's/^ *\([0-9][0-9]*\)  \(a red cat\|un chat vert ✓\) *$/\1/p' "$T/screen" | awk '{ s += $1; n++ } END { print n, s }')
[ "$sum" = "2 $nlab" ] && grep -q "(2 of 2 prompts labeled)" "$T/screen" &&
    ok "  ...labeled pairs per prompt, UTF-8 kept (2 prompts, $nlab labels)" || { no "  ...per-prompt counts ($sum, $nlab labels)"; cat "$T/screen"; }
tm send-keys -t t Escape
tm send-keys -t t q
wait_for "EXITED 0" && ok "q quits cleanly" || no "q"
tm kill-server 2>/dev/null
expect 0 "the session checks clean after" "$D3" session check "$S"
# a long UTF-8 prompt in the statistics of a narrow screen: cut at a
# character boundary, marked "...", never wider than the screen
LONG="une très longue invite, répétée: $(printf 'chat è ✓ %.0s' 1 2 3 4 5 6 7 8 9 10 11 12)fin"
printf '%s\n' "$LONG" >"$T/long"
SOCK="$T/tmux-narrow.sock" # a fresh server: the last one may still be exiting
CMD="cd $PWD && LANG=C.UTF-8 LC_ALL=C.UTF-8 $D3 label --session $T/s2 --model $M --prompts $T/long --size 64x64 --config $T/c.conf --graphics blocks --round-size 8"
tm new-session -d -s t -x 60 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for "pair 0  seed" || no "label on a long prompt"
tm send-keys -t t 1
i=0
while [ $i -lt 150 ] && ! grep -q '"choice"' "$T/s2/labels.jsonl" 2>/dev/null; do sleep 0.2; i=$((i+1)); done
tm send-keys -t t i
wait_for "per prompt" >/dev/null || no "i on the narrow screen"
row=$(grep '^ *1  une très' "$T/screen")
[ -n "$row" ] && printf '%s' "$row" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1 && case "$row" in *"..."*) true;; *) false;; esac &&
    [ "$(printf '%s' "$row" | sed 's/ *$//' | wc -m)" -le 60 ] &&
    ok "  ...a long UTF-8 prompt is cut at a character boundary to the screen's width" || { no "  ...long prompt cut"; cat "$T/screen"; }
tm send-keys -t t Escape q
wait_for "EXITED 0" >/dev/null || no "q on the narrow screen"
tm kill-server 2>/dev/null
# grid mode on an sd session: a group of 4 decoded images of one prompt
# from one x_T; marks, Enter submits, the group lands in groups.jsonl
SOCK="$T/tmux-grid.sock" # a fresh server: the last one may still be exiting
CMD="cd $PWD && LANG=C.UTF-8 LC_ALL=C.UTF-8 $D3 label --session $T/s3 --model $M --prompts $T/prompts --size 64x64 --config $T/c.conf --graphics blocks --round-size 8 --grid 4"
tm new-session -d -s t -x 100 -y 30 "$CMD; echo EXITED \$?; sleep 60"
wait_for 'group 0: 4 images of "a red cat"' && ok "label --model SD --grid 4: a group of 4 images of the prompt" || no "grid on an sd session"
wait_for "\[1\] - <  *\[2\] -  *\[3\] -  *\[4\] -" && grep -q '▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀  ▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀▀' "$T/screen" &&
    ok "  ...4 tiles, decoded images side by side" || no "  ...grid tiles"
tm send-keys -t t 1 2 2
wait_for "\[1\] good  *\[2\] BAD <" && ok "  ...1 marks good, 2 twice bad" || no "  ...grid marks"
tm send-keys -t t Enter
wait_for "group 0: gb-- saved, 1 pair for training" && ok "  ...Enter submits: 1 pair" || no "  ...grid submit"
grep -q '^{"group":0,"marks":"gb--",' "$T/s3/groups.jsonl" && [ -s "$T/s3/groups/000000.traj" ] && [ -s "$T/s3/groups/000000-3.png" ] &&
    ok "  ...in the session's groups journal, with its trajectories and images" || { no "  ...groups.jsonl"; cat "$T/s3/groups.jsonl"; }
tm send-keys -t t q
wait_for "EXITED 0" && ok "  ...q quits cleanly" || no "  ...q in grid mode"
tm kill-server 2>/dev/null
expect 0 "  ...the session checks clean" "$D3" session check "$T/s3"
# d3po train takes the marked group: a LoRA round on its pair
expect 0 "train on the sd session's group" "$D3" train --session "$T/s3" --config "$T/c.conf"
grep -q "^round 1: trained on 1 pairs (0 from labels, 0 from scores, 1 from groups)" "$T/out" &&
    grep -q '^{"group":0,"marks":"gb--"}' "$T/s3/rounds/0001.groups" && grep -q "^round 1 " "$T/s3/LATEST" &&
    ok "  ...round 1 from its 1 pair, rounds/0001.groups written" || { no "  ...train on groups"; cat "$T/out" "$T/err"; }
expect 0 "  ...session info counts the group's pair trained" "$D3" session info "$T/s3" --json
grep -q '"group_pairs_trained":1' "$T/out" && ok "  ...1 group pair trained" || { no "  ...groups trained in info"; cat "$T/out"; }
finish test_tui_sd
