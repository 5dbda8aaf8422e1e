"""ref_unet.py - diffusers' outputs of a tiny pipeline's UNet and VAE
decoder, for tests/tool_sdunet.c to compare against (tests/test_sd_unet.sh).

  python ref_unet.py [--seed N] [--batch N] [--make-tiny] PIPE_DIR OUT.safetensors [PIPE_DIR OUT ...]

--make-tiny first builds each PIPE_DIR with make_tiny.py's build() in this
process (one torch import instead of one per pipeline): the folder's name
says what, KIND-gGROUPS (e.g. sd2-g16: --kind sd2 --groups 16, fp32, seed 0).

Writes, all float32 unless said:
  x        [N, 4, s, s]    latents x_t (s = the UNet's sample_size)
  t        [N]             timesteps (801 and 1: both ends of the schedule)
  context  [N, 77, ctx]    encoder hidden states
  eps      [N, 4, s, s]    unet(x, t, context).sample
  latents  [N, 4, s, s]    scaled latents (N(0,1) * scaling_factor, as a sampler ends)
  image    [N, 3, 8s', 8s'] vae.decode(latents / scaling_factor).sample
  rgb8     [N, H, W, 3] U8 the pipeline's PIL output of that image
                           (VaeImageProcessor.postprocess(..., "pil"))
Inputs are drawn from torch's generator seeded with --seed; the models are
the pipeline's (random tiny weights from make_tiny.py).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch_fix  # noqa: F401  (torch 1.13's baddbmm with beta=0: see torch_fix.py)
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from safetensors.torch import save_file


def reference(pipe, out, seed, n):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(pipe, subfolder="unet").float().eval()
    vae = AutoencoderKL.from_pretrained(pipe, subfolder="vae").float().eval()
    s = unet.config.sample_size
    x = torch.randn(n, unet.config.in_channels, s, s)
    t = torch.tensor([801.0, 1.0] * n)[:n]
    ctx = torch.randn(n, 77, unet.config.cross_attention_dim)
    sf = vae.config.scaling_factor
    lat = torch.randn(n, vae.config.latent_channels, s, s) * sf
    with torch.no_grad():
        eps = unet(x, t, encoder_hidden_states=ctx).sample
        img = vae.decode(lat / sf).sample
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    proc = VaeImageProcessor(vae_scale_factor=scale)
    pil = proc.postprocess(img, output_type="pil")
    rgb8 = torch.from_numpy(np.stack([np.asarray(p, dtype=np.uint8) for p in pil]))
    save_file({"x": x, "t": t, "context": ctx, "eps": eps.contiguous(), "latents": lat,
               "image": img.contiguous(), "rgb8": rgb8.contiguous()}, out)
    print("ref_unet: %s: eps |max| %.4g, image |max| %.4g" % (out, eps.abs().max().item(),
                                                            img.abs().max().item()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="PIPE_DIR OUT.safetensors, repeated")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--make-tiny", action="store_true")
    a = ap.parse_args()
    if len(a.pairs) % 2:
        sys.exit("ref_unet.py: expected PIPE_DIR OUT pairs")
    for i in range(0, len(a.pairs), 2):
        if a.make_tiny:
            import make_tiny
            kind, _, groups = os.path.basename(a.pairs[i].rstrip("/")).rpartition("-g")
            if not kind or not groups.isdigit():
                sys.exit("ref_unet.py: --make-tiny: %r is not named KIND-gGROUPS" % a.pairs[i])
            make_tiny.build(kind, a.pairs[i], 0, "fp32", int(groups))
        reference(a.pairs[i], a.pairs[i + 1], a.seed, a.batch)


if __name__ == "__main__":
    main()
