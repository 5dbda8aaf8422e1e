#!/bin/sh
# test_session.sh - `d3po session info` on a small session written by the
# test binary (`test_session --make DIR`: 4 pairs, labels A, B, tie, skip
# then one undo, one trained round): the text form, the --json form (parsed
# by python3), a torn journal tail reported as a warning, and the errors:
# a missing or non-session directory exits 2 naming the path, bad usage 1.
. tests/lib.sh

S="$T/sess"
expect 0 "make a session" "$B/tests/test_session" --make "$S"
expect 0 "session info" $D3 session info "$S"
grep -q "4 sampled, 3 labeled, 1 unlabeled" "$T/out" && ok "pairs counted" || { no "pairs counted"; cat "$T/out"; }
grep -q "A 1, B 1, tie 1, skip 0, undone 1" "$T/out" && ok "labels by choice" || { no "labels by choice"; cat "$T/out"; }
grep -q "training: *3 labels trained, 0 not trained yet" "$T/out" && ok "trained labels counted" \
    || { no "trained labels counted"; cat "$T/out"; }
grep -q "rounds: *1 trained" "$T/out" && grep -q "version 1" "$T/out" && ok "rounds and version" || no "rounds and version"
grep -q "base=8,mult=1.2,res=1,attn=none,size=8,classes=3" "$T/out" && ok "base arch" || no "base arch"
grep -q "prompt *cat" "$T/out" && ok "settings shown" || no "settings shown"

expect 0 "session info --json" $D3 session info "$S" --json
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["pairs"] == {"sampled": 4, "labeled": 3, "unlabeled": 1}, d["pairs"]
# trained: the session was made before rounds recorded their labels, so a
# label of a pair sampled by an older model than the session'\''s counts
assert d["labels"] == {"A": 1, "B": 1, "tie": 1, "skip": 0, "undone": 1, "trained": 3,
                       "untrained": 0}, d["labels"]
assert d["rounds"] == 1 and d["version"] == 1 and d["classes"] == 3, d
assert d["settings"]["prompt"] == "cat" and d["settings"]["format"] == 1, d["settings"]
assert d["warnings"] == []
' "$T/out" && ok "json parses and matches" || { no "json parses and matches"; cat "$T/out"; }

printf '{"pair":1,"cho' >>"$S/labels.jsonl"
expect 0 "torn tail still opens" $D3 session info "$S" --json
grep_err "torn tail warned" "labels.jsonl:6: torn last line"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["warnings"]) == 1' "$T/out" \
    && ok "torn tail in json warnings" || no "torn tail in json warnings"

expect 2 "missing dir" $D3 session info "$T/nope"
grep_err "missing dir named" "$T/nope"
mkdir "$T/plain"
expect 2 "not a session" $D3 session info "$T/plain"
grep_err "not a session named" "$T/plain: not a d3po session"
printf 'x' >"$S/rounds/0001.safetensors"
printf 'x' >"$S/rounds/0000.safetensors"
expect 2 "no checkpoint loads" $D3 session info "$S"
grep_err "checkpoint error named" "rounds/0001.safetensors"
expect 1 "no subcommand" $D3 session
expect 1 "no dir" $D3 session info
expect 0 "help" $D3 session --help
finish test_session.sh
