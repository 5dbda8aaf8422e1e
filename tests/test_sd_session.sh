#!/bin/sh
# test_sd_session.sh - sessions on a Stable Diffusion-family model (a tiny
# random sd1 pipeline from tests/sd/make_tiny.py; venv of tests/sd/venv.sh):
#   - `d3po auto --model SD --prompts F --size 32x32 --steps 4 --oracle ...
#     --rounds 2` trains two LoRA D3PO rounds; the session refers to the
#     model (path + content hash), keeps no copy of it, and each round file
#     holds only the adapters (lora.params) and their AdamW moments;
#   - resume is bit-identical on the CPU: 1 round + 1 round gives the
#     checkpoints and pairs of 2 rounds in one run; so does a run killed
#     with -9 at some moment of its first round and resumed;
#   - session info/check describe it, rollback copies a round's adapters,
#     a changed model is a one-line hash error (D3PO_IGNORE_MODEL_HASH=1
#     overrides); a Diffusion-DPO round trains the adapters too;
#   - export --format lora (kohya) and lora-diffusers; the kohya file in
#     diffusers' load_lora_weights(low_cpu_mem_usage=False) gives the eta-0
#     image `d3po sample --lora` gives from the same latents, within 2/255,
#     and the trained adapters change that image (lr 0.05 here, so two
#     rounds move them visibly);
#   - sample --session gives sample --model --lora EXPORTED's image; eval
#     judges the adapters against the base with an oracle and a labeler;
#   - `d3po train` on it: offline LoRA rounds (D3PO, Diffusion-DPO) over its
#     labels, saved like auto's (adapters only, LATEST, metrics.jsonl); the
#     export of the last one loads in sample --lora.
# Under D3PO_ASAN=1 the Python side is skipped. Exits nonzero on failure.
. "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")
sd_python test_sd_session
M=$T/sd1
sd_tiny test_sd_session sd1 "$M"
printf 'a red cat\nune tête bleue ✓\n' >"$T/prompts"
printf 'd3po = { lr = 0.05; };\n' >"$T/conf"
RUN="--model $M --prompts $T/prompts --size 32x32 --steps 4 --oracle jpeg-compressibility --pairs 2 --eval-seeds 0 --config $T/conf"

# two rounds in one run
expect 0 "auto: 2 LoRA D3PO rounds on the tiny pipeline" "$D3" auto --session "$T/a" $RUN --rounds 2
grep_err "  ...trains round 2" "round 2 done (2/2): 2 labels"
[ -f "$T/a/rounds/0002.safetensors" ] && [ ! -e "$T/a/base.safetensors" ] &&
    ok "  ...round checkpoints written, no copy of the model" || no "  ...round files / base copy"
grep -q '"family": "sd"' "$T/a/session.json" && grep -q '"model_hash": "fnv1a64:' "$T/a/session.json" &&
    ok "  ...session.json records the family and the model's content hash" || no "  ...session.json"
grep -qi '"prompt": "une t\\u00eate bleue \\u2713"' "$T/a/prompts.json" &&
    ok "  ...the UTF-8 prompts are the session's (prompts.json)" || { no "  ...prompts.json"; cat "$T/a/prompts.json"; }
if "$PY" - "$T/a/rounds/0002.safetensors" "$T/a/rounds/0000.safetensors" >"$T/keys" 2>&1 <<'PY'
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "pt") as f:
    keys = sorted(f.keys())
    assert keys == ["adam.m", "adam.v", "lora.params"], keys
    n = f.get_tensor("lora.params").numel()
    m = f.metadata()
    assert m["d3po.lora_layout"].split()[1] == str(n), m
    assert "d3po.rng" in m and "d3po.adam" in m, m
with safe_open(sys.argv[2], "pt") as f:
    assert sorted(f.keys()) == ["lora.params"], list(f.keys())
print("round 2:", n, "adapter floats + AdamW m, v")
PY
then ok "  ...a round holds only the adapters and their AdamW state (round 0: the adapters)"; else no "  ...round file keys"; fi
cat "$T/keys"

# resume: 1 + 1 rounds, bit for bit
"$D3" auto --session "$T/b" $RUN --rounds 1 2>"$T/err1" && "$D3" auto --session "$T/b" $RUN --rounds 1 2>"$T/err2" &&
    ok "auto 1 round, then 1 more" || { no "auto 1 + 1"; cat "$T/err1" "$T/err2"; }
same=1
for f in rounds/0001.safetensors rounds/0002.safetensors pairs/000003.traj pairs/000003-b.png rounds/0002.labels; do
    cmp -s "$T/a/$f" "$T/b/$f" || { same=0; echo "  $f differs"; }
done
[ $same = 1 ] && ok "  ...resume is bit-identical (checkpoints, pairs, images, round labels)" || no "  ...resume bit-identical"

# kill -9 at some moment of the first round, then resume to round 2
"$D3" auto --session "$T/c" $RUN --rounds 2 2>"$T/kerr" &
pid=$!
i=0
while [ $i -lt 600 ] && ! grep -q "round 1: training" "$T/kerr" 2>/dev/null; do sleep 0.05; i=$((i+1)); done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
done_rounds=$(sed -n 's/^round \([0-9]*\) .*/\1/p' "$T/c/LATEST")
echo "  killed with round $done_rounds saved"
"$D3" auto --session "$T/c" $RUN --rounds $((2 - done_rounds)) 2>"$T/err" && ok "resumed after kill -9" || { no "resume after kill -9"; cat "$T/err"; }
cmp -s "$T/a/rounds/0002.safetensors" "$T/c/rounds/0002.safetensors" && cmp -s "$T/a/pairs/000003.traj" "$T/c/pairs/000003.traj" &&
    ok "  ...round 2 bit-identical to the uninterrupted run's" || no "  ...round 2 after kill -9 differs"

# info, check, rollback
expect 0 "session info" "$D3" session info "$T/a"
grep -q "Stable Diffusion family, fnv1a64:" "$T/out" && grep -q "rounds:       2 trained" "$T/out" &&
    ok "  ...names the model, its hash and the rounds" || { no "  ...info text"; cat "$T/out"; }
expect 0 "session info --json" "$D3" session info "$T/a" --json
grep -q '"family":"sd"' "$T/out" && ok "  ...family in the JSON" || no "  ...family in the JSON"
expect 0 "session check: no problems" "$D3" session check "$T/a"
cp -r "$T/a" "$T/r"
expect 0 "session rollback --to-round 1" "$D3" session rollback "$T/r" --to-round 1
cmp -s "$T/r/rounds/0003.safetensors" "$T/a/rounds/0001.safetensors" && grep -q "^round 3 version 3" "$T/r/LATEST" &&
    ok "  ...round 3 holds round 1's adapters, LATEST points at it" || no "  ...rollback"

# the model changed: one-line error; the override
cp -r "$M" "$T/sd1b"
"$D3" auto --session "$T/h" --model "$T/sd1b" --prompts "$T/prompts" --size 32x32 --steps 4 --oracle brightness --pairs 1 --eval-seeds 0 --rounds 0 2>/dev/null
printf ' \n' >>"$T/sd1b/unet/config.json"
expect 2 "a changed model is refused" "$D3" auto --session "$T/h" --oracle brightness --eval-seeds 0 --rounds 0
grep_err "  ...naming both hashes" "content hash fnv1a64:[0-9a-f]* differs from .*'s fnv1a64:"
[ "$(grep -c "content hash" "$T/err")" -eq 1 ] && grep "content hash" "$T/err" | grep -q "D3PO_IGNORE_MODEL_HASH=1 uses it anyway)$" &&
    ok "  ...in one line" || { no "  ...in one line"; cat "$T/err"; }
expect 2 "session check reports it" "$D3" session check "$T/h"
export D3PO_IGNORE_MODEL_HASH=1
expect 0 "D3PO_IGNORE_MODEL_HASH=1 uses it anyway" "$D3" auto --session "$T/h" --oracle brightness --eval-seeds 0 --rounds 0
unset D3PO_IGNORE_MODEL_HASH
# Diffusion-DPO on a copy of the session: a LoRA round on the pairs' final
# latents (reference = the adapters off); the adapters move
cp -r "$T/a" "$T/dpo"
expect 0 "auto --objective diffusion-dpo: a round on an sd session" "$D3" auto --session "$T/dpo" --oracle jpeg-compressibility --eval-seeds 0 --rounds 1 --objective diffusion-dpo
grep -q '"objective": *"diffusion-dpo"' "$T/dpo/metrics.jsonl" && ok "  ...metrics.jsonl records the objective" || { no "  ...objective in metrics.jsonl"; tail -n 1 "$T/dpo/metrics.jsonl"; }
if "$PY" - "$T/dpo/rounds/0003.safetensors" "$T/dpo/rounds/0002.safetensors" >"$T/keys" 2>&1 <<'PY'
import sys
from safetensors import safe_open
p = [safe_open(f, "pt").get_tensor("lora.params") for f in sys.argv[1:3]]
d = (p[0] - p[1]).abs().max().item()
assert d > 0 and bool(p[0].isfinite().all()), d
print("max change %.3g" % d)
PY
then ok "  ...round 3's adapters moved and are finite ($(cat "$T/keys"))"; else no "  ...round 3 adapters"; cat "$T/keys"; fi
expect 1 "--size on a pixel model is a usage error" "$D3" auto --session "$T/px" --oracle brightness --rounds 0 --size 64x64
expect 1 "--size not a multiple of the VAE factor" "$D3" auto --session "$T/bad" --model "$M" --prompts "$T/prompts" --oracle brightness --rounds 0 --size 33x32

# export both namings; the kohya file in diffusers
expect 0 "export --format lora" "$D3" export --session "$T/a" --format lora --out "$T/k.safetensors"
expect 0 "export --format lora-diffusers" "$D3" export --session "$T/a" --format lora-diffusers --out "$T/d.safetensors"
expect 1 "export --round past the session's rounds is a usage error" "$D3" export --session "$T/a" --format lora --out "$T/x.safetensors" --round 7
"$PY" -c 'import sys, torch
from safetensors.torch import save_file
g = torch.Generator().manual_seed(1)
save_file({"latents": torch.randn(1, 4, 16, 16, generator=g)}, sys.argv[1])' "$T/lat.safetensors"
P="a red cat"
ours() { # OUTDIR [--lora FILE]
    o=$1; shift
    "$D3" sample --model "$M" --prompt "$P" --latents "$T/lat.safetensors" --steps 10 --eta 0 \
        --cfg 7.5 --out "$T/$o" "$@" >/dev/null 2>"$T/err" || { no "d3po sample $*"; cat "$T/err"; }
}
close() { # NAME A.png B.png: within 2/255
    if "$PY" "$HERE/sd/sample_ref.py" cmp "$2" "$3" 0.00785 0 png png >"$T/cmp" 2>&1
    then ok "$1"; else no "$1"; fi
    cat "$T/cmp"
}
ours ok --lora "$T/k.safetensors"
ours od --lora "$T/d.safetensors"
ours ob
"$PY" "$HERE/sd/lora_ref.py" image "$M" "$T/lat.safetensors" "$P" 10 7.5 "$T/rk.png" "$T/k.safetensors" >"$T/ref.log" 2>&1 ||
    { no "lora_ref.py image"; tail -n 5 "$T/ref.log"; }
close "the exported kohya file in diffusers: d3po sample --lora's image" "$T/ok/a_red_cat-0-0.png" "$T/rk.png"
close "the diffusers-naming export gives the same image in d3po" "$T/od/a_red_cat-0-0.png" "$T/ok/a_red_cat-0-0.png"
if "$PY" "$HERE/sd/sample_ref.py" cmp "$T/ob/a_red_cat-0-0.png" "$T/ok/a_red_cat-0-0.png" 0.00785 0 png png >/dev/null 2>&1
then no "the trained adapters do not change the image"; else ok "the trained adapters change the image (beyond 2/255 of the base's)"; fi
# --lora FILE: the adapters start as an existing LoRA file (copied in)
expect 0 "d3po lora: random adapters to start from" "$D3" lora --model "$M" --out "$T/start.safetensors" --up-std 0.3 --seed 9
expect 0 "auto --lora FILE: a session whose adapters start from it" "$D3" auto --session "$T/l" --model "$M" --prompts "$T/prompts" --size 32x32 --steps 4 --oracle brightness --eval-seeds 0 --rounds 0 --lora "$T/start.safetensors"
cmp -s "$T/l/lora_start.safetensors" "$T/start.safetensors" && ok "  ...copied into the session" || no "  ...lora_start.safetensors"
expect 0 "  ...round 0 exports" "$D3" export --session "$T/l" --format lora --round 0 --out "$T/l0.safetensors"
ours s0 --lora "$T/start.safetensors"
ours s1 --lora "$T/l0.safetensors"
cmp -s "$T/s0/a_red_cat-0-0.png" "$T/s1/a_red_cat-0-0.png" && ok "  ...as the file it started from (same image)" || no "  ...round 0 differs from the start file"
expect 2 "an sd session without prompts is refused" "$D3" auto --session "$T/np" --model "$M" --size 32x32 --oracle brightness --eval-seeds 0 --rounds 0
grep_err "  ...naming --prompts" "no prompts (give --prompts FILE"
# sample --session: the session's model with its latest adapters
expect 0 "sample --session on an sd session" "$D3" sample --session "$T/a" --prompt "$P" --steps 4 --seed 5 --out "$T/ss"
expect 0 "  ...the same as sample --model with the exported LoRA" "$D3" sample --model "$M" --lora "$T/k.safetensors" --size 32x32 --prompt "$P" --steps 4 --seed 5 --out "$T/sm"
cmp -s "$T/ss/a_red_cat-5-0.png" "$T/sm/a_red_cat-5-0.png" && ok "  ...identical image" || no "  ...images differ"
# eval: the latest adapters against the base (adapters off), blind
expect 0 "eval --oracle on an sd session" "$D3" eval --session "$T/a" --oracle jpeg-compressibility --pairs 4 --steps 4 --json
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["pairs"] == 4 and d["round"] == 2 and d["wins"] + d["losses"] + d["ties"] + d["skips"] == 4, d' "$T/out" &&
    ok "  ...4 pairs judged, round 2 against the base" || { no "  ...eval JSON"; cat "$T/out"; }
expect 0 "eval --labeler on an sd session (the prompt and PNGs reach the labeler)" "$D3" eval --session "$T/a" --labeler "while IFS='	' read i p a b; do [ -s \"\$a\" ] && [ \"\$p\" = 'a red cat' -o \"\$p\" = 'une tête bleue ✓' ] && echo A || echo skip; done" --pairs 2 --steps 4 --json
grep -q '"skips":0' "$T/out" && ok "  ...every answer given" || { no "  ...labeler answers"; cat "$T/out"; }
# d3po train: an offline LoRA round over the session's labels (D3PO, then
# Diffusion-DPO), saved as auto saves a round; its export loads in sample
cp -r "$T/a" "$T/t"
cp -r "$T/a" "$T/t2"
expect 0 "train --session on an sd session: an offline LoRA D3PO round" "$D3" train --session "$T/t" --config "$T/conf"
"$D3" train --session "$T/t2" --config "$T/conf" >/dev/null 2>&1 && cmp -s "$T/t/rounds/0003.safetensors" "$T/t2/rounds/0003.safetensors" &&
    ok "  ...the same round from a copy of the session, bit for bit (CPU)" || no "  ...train is not reproducible"
grep -q "^round 3 version 3" "$T/t/LATEST" && [ -f "$T/t/rounds/0003.safetensors" ] && [ -f "$T/t/rounds/0003.labels" ] &&
    ok "  ...round 3 saved, LATEST points at it" || { no "  ...round 3 / LATEST"; cat "$T/t/LATEST"; }
tail -n 1 "$T/t/metrics.jsonl" | grep -q '^{"round":3,"labels":4,.*"source":"train",.*"objective":"d3po"' &&
    ok "  ...one metrics.jsonl line for it" || { no "  ...metrics.jsonl line"; tail -n 1 "$T/t/metrics.jsonl"; }
expect 0 "train --objective diffusion-dpo on it: round 4" "$D3" train --session "$T/t" --config "$T/conf" --objective diffusion-dpo
tail -n 1 "$T/t/metrics.jsonl" | grep -q '"round":4,.*"objective":"diffusion-dpo"' && ok "  ...its metrics line names the objective" || { no "  ...round 4 metrics"; tail -n 1 "$T/t/metrics.jsonl"; }
if "$PY" - "$T/t/rounds" >"$T/keys" 2>&1 <<'PY'
import sys
from safetensors import safe_open
p = []
for r in (2, 3, 4):
    with safe_open("%s/%04d.safetensors" % (sys.argv[1], r), "pt") as f:
        assert sorted(f.keys()) == ["adam.m", "adam.v", "lora.params"], list(f.keys())
        p.append(f.get_tensor("lora.params"))
d = [(p[i + 1] - p[i]).abs().max().item() for i in range(2)]
assert all(x > 0 for x in d) and all(bool(t.isfinite().all()) for t in p), d
print("max change %.3g (d3po), %.3g (diffusion-dpo)" % tuple(d))
PY
then ok "  ...rounds 3 and 4 hold only the adapters, moved and finite ($(cat "$T/keys"))"; else no "  ...round 3/4 adapters"; cat "$T/keys"; fi
expect 0 "session info sees round 4" "$D3" session info "$T/t"
grep -q "rounds:       4 trained" "$T/out" && ok "  ...4 rounds" || { no "  ...session info rounds"; cat "$T/out"; }
expect 0 "export --format lora of the trained round" "$D3" export --session "$T/t" --format lora --out "$T/t4.safetensors"
ours t4 --lora "$T/t4.safetensors"
[ -s "$T/t4/a_red_cat-0-0.png" ] && ! cmp -s "$T/t4/a_red_cat-0-0.png" "$T/ok/a_red_cat-0-0.png" &&
    ok "  ...loads in d3po sample --lora, and the image is not round 2's" || no "  ...sample --lora with the trained round"
expect 0 "sample --session after train" "$D3" sample --session "$T/t" --prompt "$P" --steps 4 --seed 5 --out "$T/ts"
expect 0 "  ...the same as sample --model --lora with its export" "$D3" sample --model "$M" --lora "$T/t4.safetensors" --size 32x32 --prompt "$P" --steps 4 --seed 5 --out "$T/tm"
cmp -s "$T/ts/a_red_cat-5-0.png" "$T/tm/a_red_cat-5-0.png" && ok "  ...identical image" || no "  ...images differ"
expect 2 "train on an sd session without labels: one line" "$D3" train --session "$T/l" --config "$T/conf"
grep_err "  ...saying why" "nothing to train on (no A/B decisions or marked groups)"
finish test_sd_session
