#!/bin/sh
# test_sd_load.sh - loading Stable Diffusion-family models (engine/sd/
# weights.c, pipeline.c, `d3po info`) against diffusers/transformers.
#
# Builds tiny random pipelines with the reference venv (tests/sd/venv.sh;
# $SD_VENV or $B/sd-venv): SD1 in fp32, fp16 and bf16, SD2 (v-prediction,
# linear projections), BK-SDM (no mid block), the SD1 UNet in two shards
# with an index, the old VAE attention names, and a single-file SD 1.x
# checkpoint made by our own inverse mapping (tests/sd/load_ref.py), and
# SD 1.5's structure at toy widths (four levels, upsamplers after
# transformers, 32 groups) as a folder and as a single file. Then:
#   1. every tensor d3po loads (tool_sdload dump: the UNet and VAE through
#      their own config parsers and layouts) equals, exactly, what
#      diffusers/transformers load from the folder, or what diffusers' own
#      LDM conversion makes of the single file (tolerance 0: F16/BF16 ->
#      F32 is exact and renaming moves no bits);
#   2. the DDIM plan (timesteps, abar_t, abar_prev) of each scheduler config
#      equals DDIMScheduler's within 1e-6 relative (we compute the betas in
#      float32 as torch does; the remaining difference is the last digits
#      of a float32 cumulative product);
#   3. `d3po info` describes each model (family, sizes, dtype, prediction);
#   4. bad models are one-line errors naming the file and the key or tensor,
#      exit 2: missing unet/config.json, a wrong shape, a missing and an
#      extra tensor, an inf in fp16 weights, an SDXL pipeline, an SD 2.x and
#      an SDXL single file, a single file without a tokenizer, a truncated
#      file, a header lying about offsets, a hostile shard index, a
#      pickle-only folder, an unsupported prediction_type.
# Under D3PO_ASAN=1 the cases that need no Python run (no venv in
# build-asan). Exits nonzero on any failure.
. "$(dirname "$0")/lib.sh"
TOOL=$B/tests/tool_sdload
HERE=$(dirname "$0")
[ -x "$TOOL" ] || { echo "test_sd_load: $TOOL is not built"; exit 1; }

one_line() { # NAME: the last expect's stderr is one line naming $2
    if [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "$2" "$T/err"; then ok "$1"; else no "$1: stderr: $(cat "$T/err")"; fi
}

# Cases that need no Python.
mkdir -p "$T/x/xl"
printf '{"_class_name": "StableDiffusionXLPipeline"}' >"$T/x/xl/model_index.json"
expect 2 "info refuses an SDXL folder" "$D3" info "$T/x/xl"
one_line "  ...naming model_index.json and SDXL" "model_index.json: key '_class_name': 'StableDiffusionXLPipeline' is an SDXL pipeline"
mkdir -p "$T/x/empty"
expect 2 "info refuses a folder without model_index.json" "$D3" info "$T/x/empty"
one_line "  ...naming the file" "x/empty/model_index.json: missing"
printf '\033]0;evil\007{"_class_name": "Other\\u001b[2J"}' >"$T/x/empty/model_index.json"
expect 2 "info refuses a broken model_index.json" "$D3" info "$T/x/empty"
one_line "  ...with the JSON error" "model_index.json: not valid JSON"
printf '{"_class_name": "Other\\u001b[2J\\u009b"}' >"$T/x/empty/model_index.json"
expect 2 "info refuses an unknown pipeline" "$D3" info "$T/x/empty"
one_line "  ...escaping the class name" "'Other?\[2J?' is not supported"
expect 1 "info: --tokenizer without a folder is a usage error" "$D3" info "$T/x/xl" --tokenizer

sd_python test_sd_load

M=$T/m
mkdir -p "$M"
if "$PY" "$HERE/sd/load_ref.py" make "$M" >"$T/make.log" 2>&1; then ok "tiny pipelines and variants built"; else no "load_ref.py make"; tail -n 5 "$T/make.log"; exit 1; fi

# 1. tensors
MODELS="sd1 sd1-fp16 sd1-bf16 sd2 bksdm sd15 sd1-shards sd1-oldvae single/sd1.safetensors single15/sd15.safetensors"
PAIRS=""
for m in $MODELS; do
    mkdir -p "$T/dump/$m"
    expect 0 "tool_sdload dump $m" "$TOOL" dump "$M/$m" "$T/dump/$m"
    PAIRS="$PAIRS $M/$m $T/dump/$m"
done
# shellcheck disable=SC2086
if "$PY" "$HERE/sd/load_ref.py" check $PAIRS >"$T/check.log" 2>&1; then ok "every tensor equals diffusers'/transformers' (exactly)"; else no "tensor comparison"; fi
grep '^  ' "$T/check.log"

# 2. the DDIM plan
for m in sd1 sd2; do
    "$TOOL" plan "$M/$m" 20 >"$T/plan.c" 2>"$T/err" && "$PY" "$HERE/sd/load_ref.py" plan "$M/$m" 20 >"$T/plan.py" 2>>"$T/err"
    if awk 'NR==FNR { t[FNR]=$1; a[FNR]=$2; p[FNR]=$3; n=FNR; next }
            { if ($1 != t[FNR]) bad=1
              for (i = 2; i <= 3; i++) { x = i == 2 ? a[FNR] : p[FNR]; d = $i - x; if (d < 0) d = -d; if (d > 1e-6 * $i + 1e-9) bad = 1 } }
            END { exit bad || FNR != n || n != 20 }' "$T/plan.c" "$T/plan.py"; then
        ok "DDIM plan of $m (20 steps: $(head -n 1 "$T/plan.c" | cut -d' ' -f1)..$(tail -n 1 "$T/plan.c" | cut -d' ' -f1)) equals DDIMScheduler's"
    else
        no "DDIM plan of $m differs"; paste "$T/plan.c" "$T/plan.py" | head -n 5; cat "$T/err"
    fi
done

# 3. info
expect 0 "info on the fp16 folder" "$D3" info "$M/sd1-fp16"
grep -q "^family: *SD 1.x" "$T/out" && grep -q "F16 on disk" "$T/out" && grep -q "image size: *16x16" "$T/out" &&
    grep -q "^prediction: *epsilon" "$T/out" && ok "  ...family, dtype, image size, prediction" || { no "  ...info text"; cat "$T/out"; }
expect 0 "info on the SD2 folder" "$D3" info "$M/sd2"
grep -q "^family: *SD 2.x" "$T/out" && grep -q "v_prediction" "$T/out" && ok "  ...SD 2.x, v_prediction" || { no "  ...info text"; cat "$T/out"; }
expect 0 "info on BK-SDM" "$D3" info "$M/bksdm"
grep -q "^family: *BK-SDM" "$T/out" && grep -q "no mid block" "$T/out" && ok "  ...BK-SDM, no mid block" || { no "  ...info text"; cat "$T/out"; }
expect 0 "info on the sharded folder" "$D3" info "$M/sd1-shards"
grep -q "2 shards" "$T/out" && ok "  ...2 shards" || { no "  ...info text"; cat "$T/out"; }
expect 0 "SD 1.5-structured single file samples (derived configs)" "$D3" sample --model "$M/single15/sd15.safetensors" \
    --prompt "a cat" --size 64x64 --steps 2 --out "$T/s15"
expect 0 "info on the single file" "$D3" info "$M/single/sd1.safetensors"
grep -q "single-file checkpoint" "$T/out" && grep -q "image size: *512x512" "$T/out" && ok "  ...single file, 512x512" || { no "  ...info text"; cat "$T/out"; }
expect 0 "info on the single file with --tokenizer" "$D3" info "$M/bad/notok.safetensors" --tokenizer "$M/sd1/tokenizer"
expect 2 "--tokenizer naming a folder without vocab.json" "$D3" info "$M/sd1" --tokenizer "$M/bad"
one_line "  ...names it" "tokenizer folder .*/bad lacks vocab.json or merges.txt"

# 4. errors
B2=$M/bad
expect 2 "missing unet/config.json" "$D3" info "$B2/noconfig"
one_line "  ...names the file" "noconfig/unet/config.json: missing"
expect 2 "wrong shape" "$D3" info "$B2/shape"
one_line "  ...names the file and the tensor" "shape/unet/diffusion_pytorch_model.safetensors: tensor 'conv_in.weight' has shape \[32,3,3,3\], the unet config needs \[32,4,3,3\]"
expect 2 "missing tensor" "$D3" info "$B2/missing"
one_line "  ...names it" "tensor 'mid_block.resnets.1.conv2.bias' missing"
expect 2 "extra tensor" "$D3" info "$B2/extra"
one_line "  ...names it" "tensor 'add_embedding.linear_1.weight' is not part of the unet"
expect 0 "info does not read the data: an inf passes" "$D3" info "$B2/inf"
expect 2 "inf in an fp16 weight is found when it is read" "$TOOL" fill "$M/sd1" "$B2/inf"
one_line "  ...names the tensor and the index" "inf/vae/diffusion_pytorch_model.safetensors: tensor 'decoder.conv_out.bias' holds a non-finite value (inf) at index 1"
expect 2 "SDXL pipeline folder" "$D3" info "$B2/sdxl"
one_line "  ...says SDXL" "is an SDXL pipeline"
expect 2 "SD 2.x single file" "$D3" info "$B2/sd2-single.safetensors"
one_line "  ...says SD 2.x and what to do" "an SD 2.x checkpoint; d3po reads SD 2.x as a diffusers folder"
expect 2 "SDXL single file" "$D3" info "$B2/sdxl-single.safetensors"
one_line "  ...says SDXL" "an SDXL checkpoint"
expect 2 "single file without a tokenizer" "$D3" info "$B2/notok.safetensors"
one_line "  ...says what to do" "has no tokenizer: put CLIP's vocab.json and merges.txt in .*bad/tokenizer .* or pass --tokenizer DIR"
expect 2 "truncated file" "$D3" info "$B2/trunc"
one_line "  ...names the file and the tensor" "trunc/unet/diffusion_pytorch_model.safetensors: tensor '.*': data_offsets .* end beyond the data section"
expect 2 "header lying about offsets" "$D3" info "$B2/lying"
one_line "  ...names the file and the tensor" "lying/unet/diffusion_pytorch_model.safetensors: tensor '.*': data_offsets .* hold 132 bytes, shape \[32\] F32 needs 128"
expect 2 "index naming a file outside the folder" "$D3" info "$B2/hostile-index"
one_line "  ...names the index and the key" "diffusion_pytorch_model.safetensors.index.json: weight_map\['conv_in.weight'\]: expected a file name"
expect 2 "pickle-only folder" "$D3" info "$B2/pickle"
one_line "  ...says safetensors only" "pickle/unet: only diffusion_pytorch_model.bin (a pickle)"
expect 2 "prediction_type 'sample'" "$D3" info "$B2/sched"
one_line "  ...names the file and the key" "scheduler_config.json: key 'prediction_type': 'sample' is not supported"
finish test_sd_load
