#!/bin/sh
# test_tui_sd.sh - the labeling screen on a Stable Diffusion-family model,
# in tmux: `d3po label --model SD_DIR` on a tiny random sd1 pipeline
# (tests/sd/make_tiny.py) makes an sd session and shows its decoded images
# (64x64, scaled into half-block panels) with the prompt (UTF-8, escaped);
# a label goes to the journal; `p` opens a prompt line where a typed
# UTF-8 prompt (with a Backspace) becomes the prompt of the next pairs,
# shows up above the panels and is saved in prompts.json; Escape cancels
# the line; q quits cleanly. Waits for screen text or the journal only (no
# timing). Under D3PO_ASAN=1 skipped (the pipeline needs the venv).
. tests/lib.sh
command -v tmux >/dev/null || { echo "  tmux missing"; exit 1; }
if [ "${D3PO_ASAN:-0}" = 1 ]; then
    echo "test_tui_sd: D3PO_ASAN=1: the Python side (tiny pipeline) skipped"
    finish test_tui_sd
    exit $?
fi
VENV=$(sh tests/sd/venv.sh | tail -n 1) || { echo "test_tui_sd: FAIL: tests/sd/venv.sh failed"; exit 1; }
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
tm send-keys -t t q
wait_for "EXITED 0" && ok "q quits cleanly" || no "q"
tm kill-server 2>/dev/null
expect 0 "the session checks clean after" "$D3" session check "$S"
finish test_tui_sd
