#!/bin/sh
# test_cli.sh - the d3po command line as a person uses it: init, sample,
# info, --help/--version, exit statuses (0 ok, 1 usage, 2 other errors),
# reproducible sampling, the compute device (--device, --tf32,
# engine.device, info --devices), and clear errors for bad model files.
. tests/lib.sh

expect 0 "version" $D3 --version
grep -q "^d3po [0-9]" "$T/out" && ok "version text" || no "version text"
expect 2 "no command, no terminal" $D3 </dev/null
grep_err "needs a terminal" "needs a terminal"
expect 1 "unknown command" $D3 frobnicate
for c in init sample info; do expect 0 "$c --help" $D3 $c --help; done
expect 1 "init without --out" $D3 init
expect 1 "init bad arch" $D3 init --out "$T/x" --arch base=0
grep_err "bad arch names field" "base=0"
expect 1 "sample bad number" $D3 sample --model x --prompt a --out y --count zz
grep_err "names option" "--count"

printf 'smiling face\nred apple\nflag: France\n' >"$T/names"
expect 0 "init tiny" $D3 init --out "$T/m.safetensors" --arch base=8,mult=1.2,res=1,attn=8,size=16 --class-names "$T/names" --seed 3
expect 0 "info" $D3 info "$T/m.safetensors"
grep -q "base=8,mult=1.2,res=1,attn=8,size=16,classes=3" "$T/out" && ok "info arch" || no "info arch"
grep -q "red apple" "$T/out" && ok "info classes" || no "info classes"
grep -q "^parameters: *[0-9]" "$T/out" && ok "info params" || no "info params"

expect 0 "sample" $D3 sample --model "$T/m.safetensors" --prompt "red apple" --seed 5 --count 3 --out "$T/a" --steps 5
expect 0 "sample again" $D3 sample --model "$T/m.safetensors" --prompt "red apple" --seed 5 --count 3 --out "$T/b" --steps 5
expect 0 "sample other seed" $D3 sample --model "$T/m.safetensors" --prompt "red apple" --seed 6 --count 1 --out "$T/c" --steps 5
[ -f "$T/a/red_apple-5-2.png" ] && ok "png names" || { no "png names"; ls "$T/a"; }
cmp -s "$T/a/red_apple-5-0.png" "$T/b/red_apple-5-0.png" && cmp -s "$T/a/red_apple-5-2.png" "$T/b/red_apple-5-2.png" \
    && ok "byte-identical" || no "byte-identical"
cmp -s "$T/a/red_apple-5-0.png" "$T/c/red_apple-6-0.png" && no "seeds differ" || ok "seeds differ"
cmp -s "$T/a/red_apple-5-0.png" "$T/a/red_apple-5-1.png" && no "images of a count differ" || ok "images of a count differ"
if command -v file >/dev/null; then file "$T/a/red_apple-5-0.png" | grep -q "16 x 16" && ok "png size" || no "png size"; fi

expect 1 "unknown prompt" $D3 sample --model "$T/m.safetensors" --prompt "blue banana" --out "$T/d"
grep_err "unknown prompt lists classes" "flag: France"

# the compute device: info --devices, --device, --tf32, engine.device
expect 0 "info --devices" $D3 info --devices
cp "$T/out" "$T/out_devices"
grep -q "^cpu: " "$T/out" && ok "info --devices: a cpu line" || { no "info --devices: a cpu line"; cat "$T/out"; }
grep -q "^auto: \(cpu\|cuda\)" "$T/out" && ok "info --devices: auto's choice" \
    || { no "info --devices: auto's choice"; cat "$T/out"; }
gpu=0; grep -q "^auto: cuda" "$T/out" && gpu=1
expect 1 "info without a file" $D3 info
printf 'engine = { device = "cpu"; };\n' >"$T/cpu.conf"
S5="--model $T/m.safetensors --prompt 1 --seed 5 --count 2 --steps 5"
expect 0 "sample --device cpu" $D3 sample $S5 --out "$T/dcpu" --device cpu
expect 0 "sample --device cpu --tf32" $D3 sample $S5 --out "$T/dtf32" --device cpu --tf32
expect 0 "sample, engine.device cpu" $D3 sample $S5 --out "$T/dconf" --config "$T/cpu.conf"
cmp -s "$T/dcpu/red_apple-5-1.png" "$T/dconf/red_apple-5-1.png" && cmp -s "$T/dcpu/red_apple-5-1.png" "$T/dtf32/red_apple-5-1.png" \
    && ok "--device cpu = engine.device cpu = with --tf32" || no "--device cpu = engine.device cpu = with --tf32"
if [ $gpu -eq 0 ]; then
    cmp -s "$T/dcpu/red_apple-5-0.png" "$T/a/red_apple-5-0.png" && cmp -s "$T/dcpu/red_apple-5-1.png" "$T/a/red_apple-5-1.png" \
        && ok "--device cpu: the same bytes as auto (cpu here)" || no "--device cpu: the same bytes as auto (cpu here)"
fi
expect 1 "sample --device bogus" $D3 sample $S5 --out "$T/dbogus" --device bogus
grep_err "bad device names option and value" "d3po sample: --device 'bogus': expected auto, cpu or cuda"
[ ! -e "$T/dbogus" ] && ok "bad device: nothing written" || no "bad device: nothing written"
for c in label auto train eval; do
    expect 1 "$c --device bogus" $D3 $c --session "$T/s-$c" --device bogus
    grep_err "$c: bad device named" "d3po $c: --device 'bogus'"
done
# --dtype / engine.dtype: checked everywhere; the CPU computes in fp32, so
# the bytes do not change; fp16/bf16 with CUDA is refused (cli.h)
grep -q "^dtype: fp32 " "$T/out_devices" && ok "info --devices: a dtype line" || { no "info --devices: a dtype line"; cat "$T/out_devices"; }
expect 0 "sample --device cpu --dtype fp16" $D3 sample $S5 --out "$T/dfp16" --device cpu --dtype fp16
printf 'engine = { device = "cpu"; dtype = "bf16"; };\n' >"$T/bf16.conf"
expect 0 "sample, engine.dtype bf16" $D3 sample $S5 --out "$T/dbf16" --config "$T/bf16.conf"
cmp -s "$T/dcpu/red_apple-5-1.png" "$T/dfp16/red_apple-5-1.png" && cmp -s "$T/dcpu/red_apple-5-1.png" "$T/dbf16/red_apple-5-1.png" \
    && ok "cpu: --dtype fp16 = engine.dtype bf16 = fp32 (fp32 compute)" || no "cpu: --dtype fp16 = engine.dtype bf16 = fp32 (fp32 compute)"
printf 'engine = { dtype = "fp8"; };\n' >"$T/fp8.conf"
expect 2 "engine.dtype fp8" $D3 sample $S5 --out "$T/dfp8" --config "$T/fp8.conf"
grep -q "dtype" "$T/err" && [ "$(wc -l <"$T/err")" -eq 1 ] && ok "engine.dtype fp8: one line naming the key" || { no "engine.dtype fp8: one line naming the key"; cat "$T/err"; }
for c in sample label auto train eval; do
    expect 1 "$c --dtype bogus" $D3 $c --session "$T/s-$c" --dtype "bo$(printf '\033')gus"
    grep_err "$c: bad dtype named, escaped" "d3po $c: --dtype 'bo.x1bgus': expected fp32, fp16 or bf16"
done
if [ $gpu -eq 1 ]; then
    echo "  skip --device cuda without a GPU: info --devices says CUDA works on this machine"
else
    expect 2 "sample --device cuda without a GPU" $D3 sample $S5 --out "$T/dcuda" --device cuda
    grep -q "^d3po sample: cuda: " "$T/err" && ok "no GPU: the message starts with cuda:" \
        || { no "no GPU: the message starts with cuda:"; cat "$T/err"; }
    [ "$(wc -l <"$T/err")" -eq 1 ] && ok "no GPU: one-line error" || { no "no GPU: one-line error"; cat "$T/err"; }
    [ ! -e "$T/dcuda" ] && ok "no GPU: nothing written" || no "no GPU: nothing written"
    expect 2 "auto --device cuda without a GPU" $D3 auto --session "$T/s-cuda" --oracle brightness \
        --rounds 1 --model "$T/m.safetensors" --device cuda
    grep_err "auto: cuda error" "d3po auto: cuda: "
    [ ! -e "$T/s-cuda" ] && ok "no GPU: no session created" || no "no GPU: no session created"
    printf 'engine = { device = "cuda"; };\n' >"$T/cuda.conf"
    expect 2 "engine.device cuda without a GPU" $D3 sample $S5 --out "$T/dcuda" --config "$T/cuda.conf"
    grep_err "config's cuda names the file" "(engine.device in $T/cuda.conf)"
    expect 0 "--device cpu overrides engine.device cuda" $D3 sample $S5 --out "$T/dover" --config "$T/cuda.conf" --device cpu
fi

# bad model files: clear one-line errors naming the file, exit 2
head -c 1000 "$T/m.safetensors" >"$T/trunc.safetensors"
expect 2 "truncated model" $D3 info "$T/trunc.safetensors"
grep_err "truncated names file" "trunc.safetensors"
expect 2 "missing model" $D3 info "$T/none.safetensors"
grep_err "missing names file" "none.safetensors"
printf 'not a model at all, just text' >"$T/text.safetensors"
expect 2 "garbage model" $D3 sample --model "$T/text.safetensors" --prompt 0 --out "$T/e"
[ "$(wc -l <"$T/err")" -eq 1 ] && ok "one-line error" || { no "one-line error"; cat "$T/err"; }

# a file whose metadata lies about the architecture is refused by name
LC_ALL=C sed 's/attn=8,size=16/attn=4,size=16/' "$T/m.safetensors" >"$T/lying.safetensors"
expect 2 "lying architecture" $D3 info "$T/lying.safetensors"
grep_err "lying arch names tensor" "tensor 'down.1.attn.0.norm.weight' does not belong"

finish test_cli.sh
