#!/bin/sh
# test_lora.sh - LoRA files between d3po and diffusers 0.31 + peft 0.17 on
# a tiny random SD1 pipeline (tests/sd/make_tiny.py; venv of
# tests/sd/venv.sh), from the same latents, prompt "a photo of a cat",
# negative "", 10 DDIM steps, eta 0, cfg 7.5; every image within 2/255 of
# diffusers' (the issue's bound: two float32 implementations may round a
# pixel differently; measured: identical):
#   - `d3po lora --up-std` writes random non-zero adapters (kohya naming);
#     diffusers' load_lora_weights(..., low_cpu_mem_usage=False) gives the
#     image `d3po sample --lora` gives; the same in the diffusers naming
#     (made by `d3po lora --from` from the kohya file);
#   - alpha 2 at rank 4 with --lora FILE:0.5 against set_adapters(0.5);
#   - a LoRA made by peft and saved by save_lora_weights (lora_A/lora_B
#     naming) loads in d3po with diffusers' image;
#   - the adapters matter: the base image is beyond 2/255 of the LoRA one;
#   - the adapter gradients of sum(eps * r) through the UNet (tool_sdunet
#     lora) against autograd through diffusers' UNet with peft's layers
#     (lora_ref.py grad), for our alpha-2 file and peft's: eps within
#     5e-5 + 1e-3 |ref|, every adapter gradient within 1e-4 + 1e-3 |ref|
#     (float32 on both sides, other summation orders; measured ~5e-6);
# and the command line's errors. Under D3PO_ASAN=1 the Python side is
# skipped. Exits nonzero on failure.
. "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")

expect 1 "d3po lora without --out is a usage error" "$D3" lora --model "$T/none"
grep_err "  ...says what is required" "--model and --out are required"
expect 1 "--format other is a usage error" "$D3" lora --model "$T/none" --out "$T/x" --format ckpt
grep_err "  ...names the format" "--format 'ckpt': expected lora or lora-diffusers"
sd_python test_lora

REF=$HERE/sd/lora_ref.py
M=$T/sd1
P="a photo of a cat"
if "$PY" "$HERE/sd/make_tiny.py" --kind sd1 --out "$M" >"$T/make.log" 2>&1 &&
    "$PY" -c 'import sys, torch
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
save_file({"latents": torch.randn(1, 4, 8, 8, generator=g)}, sys.argv[1])' "$T/lat.safetensors" >>"$T/make.log" 2>&1
then ok "tiny sd1 pipeline and latents built"; else no "make_tiny.py"; tail -n 5 "$T/make.log"; exit 1; fi

ours() { # OUTDIR [--lora SPEC]: d3po's image
    o=$1; shift
    "$D3" sample --model "$M" --prompt "$P" --latents "$T/lat.safetensors" --steps 10 --eta 0 \
        --cfg 7.5 --out "$T/$o" "$@" >"$T/out" 2>"$T/err" || { no "d3po sample $*"; cat "$T/err"; }
}
theirs() { # OUT.png [LORA[:SCALE]]: diffusers' image
    "$PY" "$REF" image "$M" "$T/lat.safetensors" "$P" 10 7.5 "$T/$1" $2 >"$T/ref.log" 2>&1 ||
        { no "lora_ref.py image $2"; tail -n 5 "$T/ref.log"; }
}
same() { # NAME OURDIR REF.png
    if "$PY" "$HERE/sd/sample_ref.py" cmp "$T/$2/a_photo_of_a_cat-0-0.png" "$T/$3" 0.00785 0 png png >"$T/cmp" 2>&1
    then ok "$1"; else no "$1"; fi
    cat "$T/cmp"
}

expect 0 "d3po lora: random adapters, kohya naming" "$D3" lora --model "$M" --out "$T/k.safetensors" --up-std 0.3 --seed 3
expect 0 "d3po lora --from: the same in the diffusers naming" "$D3" lora --model "$M" --from "$T/k.safetensors" --format lora-diffusers --out "$T/d.safetensors"
expect 0 "d3po lora: alpha 2, rank 4" "$D3" lora --model "$M" --out "$T/a.safetensors" --up-std 0.3 --seed 4 --alpha 2
ours ok --lora "$T/k.safetensors"; theirs rk.png "$T/k.safetensors"
same "our kohya file in diffusers: the same image" ok rk.png
ours od --lora "$T/d.safetensors"; theirs rd.png "$T/d.safetensors"
same "our diffusers-naming file in diffusers: the same image" od rd.png
ours oa --lora "$T/a.safetensors:0.5"; theirs ra.png "$T/a.safetensors:0.5"
same "alpha 2 of rank 4 at scale 0.5: the same image" oa ra.png
if "$PY" "$REF" make "$M" "$T/peft" 5 >"$T/ref.log" 2>&1; then ok "peft LoRA saved by save_lora_weights"; else no "lora_ref.py make"; tail -n 5 "$T/ref.log"; fi
ours op --lora "$T/peft/pytorch_lora_weights.safetensors"; theirs rp.png "$T/peft/pytorch_lora_weights.safetensors"
same "diffusers/peft's file in d3po: the same image" op rp.png
ours ob
if "$PY" "$HERE/sd/sample_ref.py" cmp "$T/ob/a_photo_of_a_cat-0-0.png" "$T/rk.png" 0.00785 0 png png >"$T/cmp" 2>&1
then no "the base image equals the LoRA one: the adapters do nothing"; else ok "the adapters change the image (base vs LoRA beyond 2/255)"; fi

for f in a.safetensors peft/pytorch_lora_weights.safetensors; do
    if "$PY" "$REF" grad "$M" "$T/$f" "$T/g.safetensors" >"$T/ref.log" 2>&1 &&
        "$B/tests/tool_sdunet" lora "$M" "$T/$f" "$T/g.safetensors" >"$T/cmp" 2>&1
    then ok "adapter gradients equal diffusers + peft's ($f)"; else no "adapter gradients ($f)"; tail -n 3 "$T/ref.log"; fi
    cat "$T/cmp"
done

# errors: one line naming the file
expect 2 "a LoRA of another model is refused" "$D3" sample --model "$M" --prompt "$P" --out "$T/e" --lora "$T/lat.safetensors"
grep_err "  ...names the file and the tensor" "lat.safetensors: tensor 'latents': not a LoRA tensor"
expect 2 "a missing LoRA file" "$D3" sample --model "$M" --prompt "$P" --out "$T/e" --lora "$T/none.safetensors:0.5"
grep_err "  ...names it" "none.safetensors"
expect 2 "an unknown target" "$D3" lora --model "$M" --out "$T/x" --targets to_q,conv1
grep_err "  ...names it" "LoRA target 'conv1'"
[ "$(wc -l <"$T/err")" -eq 1 ] && ok "  ...in one line" || no "  ...in one line"
finish test_lora
