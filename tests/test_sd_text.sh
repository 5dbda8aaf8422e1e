#!/bin/sh
# test_sd_text.sh - the CLIP tokenizer (engine/sd/tokenizer.c) and text
# encoder (engine/sd/clip.c) against transformers, through the pinned venv
# of tests/sd/venv.sh, on tiny random pipelines built here
# (tests/sd/make_tiny.py: CLIP's real vocabulary, random weights):
#   1. token ids identical to CLIPTokenizer (slow, as diffusers loads it) on
#      tests/sd/prompts.jsonl (awkward prompts) and 400 random prompts of
#      awkward characters plus 3 of 10k characters, with SD 1's pad token
#      (<|endoftext|>), SD 2's ("!", id 0), and SD 1.5's older
#      tokenizer_config.json; CLIPTokenizerFast is compared too and only
#      reported: it differs from the slow one itself (final sigma, the long
#      s in contractions, CJK spacing, control and format characters, emoji
#      with joiners: 10 of the 48 corpus prompts);
#   2. the text encoder's last hidden state against CLIPTextModel on the
#      sd1 (quick_gelu) and sd2 (gelu) pipelines, for every prompt of the
#      corpus (tool_sdtext states: tokenizer + sd_clip_encode);
#   3. hostile prompts and files (tool_sdtext hostile; no Python).
# Under D3PO_ASAN=1 only the C side runs (the hostile checks), as in
# tests/test_interop.sh: the sanitizers check memory, not numbers.
B=${B:-build}
TOOL=$B/tests/tool_sdtext
HERE=$(dirname "$0")
fail() { echo "test_sd_text: FAIL: $*"; exit 1; }

[ -x "$TOOL" ] || fail "$TOOL is not built (make $TOOL)"
T=$(mktemp -d "${TMPDIR:-/tmp}/d3po-sdtext.XXXXXX") || fail "mktemp -d failed"
trap 'rm -rf "$T"' EXIT

if [ "${D3PO_ASAN:-0}" = 1 ]; then
    # a tokenizer folder without Python: three tokens, one merge
    mkdir -p "$T/tok"
    printf '{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6}' >"$T/tok/vocab.json"
    printf '#version: 0.2\na b</w>\n' >"$T/tok/merges.txt"
    "$TOOL" hostile "$T/tok" "$T" || fail "hostile inputs"
    "$TOOL" ids "$T/tok" "$HERE/sd/prompts.jsonl" >/dev/null || fail "tool_sdtext ids on the prompt corpus"
    echo "test_sd_text: D3PO_ASAN=1: hostile inputs and the corpus through the C side only; Python side skipped"
    exit 0
fi

VENV=$(sh "$HERE/sd/venv.sh" | tail -n 1) || fail "tests/sd/venv.sh failed"
PY=$VENV/bin/python
for k in sd1 sd2; do
    "$PY" "$HERE/sd/make_tiny.py" --kind "$k" --out "$T/$k" >/dev/null 2>"$T/make.err" ||
        { cat "$T/make.err"; fail "make_tiny.py --kind $k"; }
done
# SD 1.5's own tokenizer_config.json is older: AddedToken objects with
# "__type", no added_tokens_decoder, do_lower_case (which CLIPTokenizer
# ignores); its vocabulary with such a config, as a third tokenizer
mkdir -p "$T/sd15cfg/tokenizer"
cp "$T/sd1/tokenizer/vocab.json" "$T/sd1/tokenizer/merges.txt" "$T/sd15cfg/tokenizer/"
A='{"__type": "AddedToken", "content": "<|CONTENT|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}'
cat >"$T/sd15cfg/tokenizer/tokenizer_config.json" <<EOF
{"add_prefix_space": false, "bos_token": $(echo "$A" | sed s/CONTENT/startoftext/), "do_lower_case": true,
 "eos_token": $(echo "$A" | sed s/CONTENT/endoftext/), "errors": "replace", "model_max_length": 77,
 "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": $(echo "$A" | sed s/CONTENT/endoftext/)}
EOF
cp "$HERE/sd/prompts.jsonl" "$T/prompts.jsonl"
"$PY" "$HERE/sd/text_ref.py" random 400 7 "$T/random.jsonl" || fail "text_ref.py random"
"$PY" "$HERE/sd/text_ref.py" refs "$T" sd1,sd2,sd15cfg "$T/prompts.jsonl" "$T/random.jsonl" 2>"$T/py.err" ||
    { cat "$T/py.err"; fail "text_ref.py refs"; }

for k in sd1 sd2 sd15cfg; do
    for name in prompts random; do
        "$TOOL" ids "$T/$k/tokenizer" "$T/$name.jsonl" >"$T/c.ids" || fail "tool_sdtext ids $k $name"
        ref=$T/$k.$name.slow.ids
        n=$(wc -l <"$ref")
        [ "$n" -gt 0 ] && [ "$(wc -l <"$T/c.ids")" -eq "$n" ] || fail "$k $name: $n reference lines, $(wc -l <"$T/c.ids") from C"
        if ! cmp -s "$T/c.ids" "$ref"; then
            diff "$T/c.ids" "$ref" | head -n 6
            fail "$k $name: token ids differ from CLIPTokenizer (< C, > transformers) on $(diff "$T/c.ids" "$ref" | grep -c '^<') of $n prompts"
        fi
        nf=$(diff "$ref" "$T/$k.$name.fast.ids" | grep -c '^<')
        echo "test_sd_text: $k $name: $n prompts, ids identical to CLIPTokenizer; CLIPTokenizerFast differs on $nf"
    done
done

# Hidden states: float32 on both sides with different reduction orders
# over D = 32 and I = 37 and different erf/exp code; measured max error
# 2e-6 on |states| <= 4. Tolerance |c - ref| <= 1e-5 + 1e-5 |ref|.
for k in sd1 sd2; do
    "$TOOL" states "$T/$k" "$T/prompts.jsonl" "$T/c.bin" || fail "tool_sdtext states $k"
    "$PY" "$HERE/sd/text_ref.py" compare "$T/c.bin" "$T/$k.states.bin" "$k" ||
        fail "$k: text-encoder states differ from CLIPTextModel"
done
"$TOOL" hostile "$T/sd1/tokenizer" "$T" >"$T/hostile.out" || { cat "$T/hostile.out"; fail "hostile inputs"; }
echo "test_sd_text: hostile prompts and files: $(grep -c '' "$T/hostile.out") checks printed, all clean"
