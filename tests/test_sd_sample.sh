#!/bin/sh
# test_sd_sample.sh - `d3po sample --model SD` (engine/sd/sdsample.c: latent
# DDIM, guidance, VAE decode) against diffusers' StableDiffusionPipeline on
# tiny random SD1 (epsilon) and SD2 (v-prediction) pipelines built at test
# time (tests/sd/sample_ref.py; venv of tests/sd/venv.sh), from the same
# latents, prompt "a photo of a cat", negative "", 10 steps, cfg 7.5:
#   - the eta-0 image: every pixel within 2/255 (the issue's bound: two
#     float32 implementations can round a pixel differently);
#   - one DDIM step (eta 0): within 1e-4 + 1e-3 |ref| (float32 UNet and
#     CLIP with other summation orders: ~1e-6 relative measured);
#   - the per-step log-probs of an eta-1 trajectory drawn by diffusers'
#     scheduler.step, teacher-forced through our model: within 1e-4 +
#     1e-4 |ref| (measured ~1e-6; a log-prob is a mean over 256 elements
#     of squared differences scaled by 1/sigma^2);
# and the command line: a single-file checkpoint samples, two runs give
# byte-identical PNGs, --count, bad --latents, --size and model errors.
# Under D3PO_ASAN=1 the Python side is skipped. Exits nonzero on failure.
. "$(dirname "$0")/lib.sh"
TOOL=$B/tests/tool_sdload
HERE=$(dirname "$0")
[ -x "$TOOL" ] || { echo "test_sd_sample: $TOOL is not built"; exit 1; }

expect 1 "--size with a d3po model is a usage error" "$D3" sample --model "$T/none.safetensors" --prompt x --out "$T/o" --size 16x16
grep_err "  ...says SD only" "Stable Diffusion models only"
sd_python test_sd_sample

REF=$HERE/sd/sample_ref.py
M=$T/m
mkdir -p "$M"
P="a photo of a cat"
if "$PY" "$REF" make "$M" "$P" 10 7.5 >"$T/make.log" 2>&1; then ok "tiny sd1/sd2 pipelines and diffusers' references built"; else no "sample_ref.py make"; tail -n 5 "$T/make.log"; exit 1; fi
cmp_ok() { # NAME A B ATOL RTOL NA NB
    name=$1; shift
    if "$PY" "$REF" cmp "$@" >"$T/cmp" 2>&1; then ok "$name"; else no "$name"; fi
    cat "$T/cmp"
}
for m in sd1 sd2; do
    expect 0 "d3po sample $m from the latents, eta 0" "$D3" sample --model "$M/$m" --prompt "$P" \
        --latents "$M/latents.safetensors" --steps 10 --eta 0 --cfg 7.5 --out "$M/out-$m"
    cmp_ok "  ...the image within 2/255 of diffusers' ($m)" "$M/out-$m/a_photo_of_a_cat-0-0.png" \
        "$M/ref-$m/image.png" 0.00785 0 png png
    expect 0 "tool_sdload sample $m" "$TOOL" sample "$M/$m" "$P" "$M/latents.safetensors" 10 0 7.5 "$M/c-$m.st"
    cmp_ok "  ...one DDIM step equals diffusers' ($m)" "$M/c-$m.st" "$M/ref-$m/step.safetensors" 1e-4 1e-3 "traj[1]" x1
    "$TOOL" logp "$M/$m" "$P" "$M/ref-$m/eta1.safetensors" 10 1 7.5 >"$T/lp" 2>"$T/err" || { no "tool_sdload logp $m"; cat "$T/err"; }
    "$PY" -c 'import sys, numpy as np
from safetensors.numpy import load_file
a = np.loadtxt(sys.argv[1]); b = load_file(sys.argv[2])["logp"].astype(np.float64)
d = np.abs(a - b)
print("    log-probs %s..%s, max |d3po - diffusers| = %.3g" % (b[0], b[-1], d.max()))
sys.exit(1 if a.shape != b.shape or (~(d <= 1e-4 + 1e-4 * np.abs(b))).any() else 0)' "$T/lp" "$M/ref-$m/eta1.safetensors" >"$T/cmp" 2>&1 &&
        ok "  ...log-probs of diffusers' eta-1 trajectory ($m)" || no "  ...log-probs of the eta-1 trajectory ($m)"
    cat "$T/cmp"
done

# the log-probs recorded while sampling (eta 1) are the teacher-forced ones
# of the same trajectory (what D3PO caches for the reference): same model,
# same states, same float32 arithmetic, so within 1e-6
expect 0 "tool_sdload sample sd2, eta 1" "$TOOL" sample "$M/sd2" "$P" "$M/latents.safetensors" 6 1 3 "$M/e1.st"
"$TOOL" logp "$M/sd2" "$P" "$M/e1.st" 6 1 3 >"$T/lp" 2>"$T/err" || { no "tool_sdload logp of our trajectory"; cat "$T/err"; }
"$PY" -c 'import sys, numpy as np
from safetensors.numpy import load_file
a = np.loadtxt(sys.argv[1]); b = load_file(sys.argv[2])["logp"].astype(np.float64)
print("    sampled %s, teacher-forced %s" % (np.array2string(b[:3], precision=6), np.array2string(a[:3], precision=6)))
sys.exit(1 if a.shape != b.shape or (~(np.abs(a - b) <= 1e-6 + 1e-6 * np.abs(b))).any() else 0)' "$T/lp" "$M/e1.st" >"$T/cmp" 2>&1 &&
    ok "  ...teacher-forced log-probs equal the sampled ones" || no "  ...teacher-forced log-probs differ from the sampled ones"
cat "$T/cmp"

cp -r "$M/sd1" "$M/sd1-a1"
sed -i 's/"set_alpha_to_one": false/"set_alpha_to_one": true/' "$M/sd1-a1/scheduler/scheduler_config.json"
expect 2 "log-probs with set_alpha_to_one true" "$TOOL" sample "$M/sd1-a1" "$P" "$M/latents.safetensors" 4 1 3 "$M/a1.st"
grep_err "  ...says the last step has sigma 0" "scheduler_config.json: step 3 (t=1) has sigma 0 (set_alpha_to_one true)"
expect 0 "  ...sampling without log-probs works" "$D3" sample --model "$M/sd1-a1" --prompt "$P" --steps 4 --out "$M/a1"

# the command line
expect 0 "eta 1, two images" "$D3" sample --model "$M/sd1" --prompt "$P" --count 2 --steps 4 --seed 3 --out "$M/a"
[ -f "$M/a/a_photo_of_a_cat-3-0.png" ] && [ -f "$M/a/a_photo_of_a_cat-3-1.png" ] && ok "  ...two PNGs" || no "  ...two PNGs"
"$D3" sample --model "$M/sd1" --prompt "$P" --count 2 --steps 4 --seed 3 --out "$M/b" >/dev/null 2>&1
cmp -s "$M/a/a_photo_of_a_cat-3-1.png" "$M/b/a_photo_of_a_cat-3-1.png" && ok "  ...byte-identical on a second run" || no "  ...second run differs"
cmp -s "$M/a/a_photo_of_a_cat-3-0.png" "$M/a/a_photo_of_a_cat-3-1.png" && no "  ...the two images are equal" || ok "  ...the two images differ"
expect 0 "--size 32x16 and --negative" "$D3" sample --model "$M/sd2" --prompt "$P" --negative "blurry" --size 32x16 --steps 2 --out "$M/c"
"$PY" -c 'import sys; from PIL import Image; sys.exit(Image.open(sys.argv[1]).size != (32, 16))' "$M/c/a_photo_of_a_cat-0-0.png" &&
    ok "  ...a 32x16 PNG" || no "  ...a 32x16 PNG"
expect 1 "--size not a multiple of the UNet's factor" "$D3" sample --model "$M/sd1" --prompt x --size 18x16 --out "$M/d"
grep_err "  ...says what is expected" "multiple"
expect 1 "--size malformed" "$D3" sample --model "$M/sd1" --prompt x --size 16 --out "$M/d"
"$PY" -c 'import torch; from safetensors.torch import save_file
save_file({"a": torch.zeros(1, 3, 8, 8)}, "'"$M"'/c3.safetensors")
save_file({"a": torch.zeros(1, 4, 8, 8), "b": torch.zeros(1)}, "'"$M"'/two.safetensors")'
expect 2 "--latents with 3 channels" "$D3" sample --model "$M/sd1" --prompt x --latents "$M/c3.safetensors" --out "$M/d"
grep_err "  ...names the file and the shape" "c3.safetensors: tensor 'a' has the wrong shape: expected \[1,4,h,w\]"
expect 2 "--latents with two tensors" "$D3" sample --model "$M/sd1" --prompt x --latents "$M/two.safetensors" --out "$M/d"
grep_err "  ...says one tensor" "holds 2 tensors, expected one"
expect 2 "a folder that is not a pipeline" "$D3" sample --model "$M" --prompt x --out "$M/d"
grep_err "  ...names model_index.json" "model_index.json: missing"
finish test_sd_sample
