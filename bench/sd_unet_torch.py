"""sd_unet_torch.py - the yardstick of the SD UNet benchmark: diffusers'
UNet2DConditionModel of a config.json with random weights, timed like
`tool_sdunet bench` (tests/tool_sdunet.c) on the same config, batch,
latent size and threads.

  python sd_unet_torch.py CONFIG.json [--size S] [--batch N] [--threads T] [--iters K]
  python sd_unet_torch.py --vae VAE_CONFIG.json [same options]
      (AutoencoderKL.decode of S x S latents, no gradients, like
      `tool_sdunet vaebench`; last line "torch sd-vae DEC_S MB")

Prints forward (no_grad) and forward+backward (loss = mean of the output,
gradients to every parameter) in ms, the medians of K after one warm-up,
and the process's peak resident memory (and the resident memory before the
model was built: Python + torch + diffusers themselves); last line, for
bench/run.sh: "torch sd-unet FWD_S FB_S MB".
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tests/sd")
import torch_fix  # noqa: E402,F401  (torch 1.13's baddbmm with beta=0)


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--vae", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.vae:
        return vae_bench(a)
    from diffusers import UNet2DConditionModel
    base = rss_mib()
    cfg = json.load(open(a.config))
    unet = UNet2DConditionModel.from_config(cfg).float()
    unet.train()  # dropout is 0: train mode only keeps autograd's usual path
    n, s = a.batch, a.size
    x = torch.randn(n, unet.config.in_channels, s, s)
    ctx = torch.randn(n, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500.0 + i for i in range(n)])
    tf, tb = [], []
    for it in range(a.iters + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
        dt = time.perf_counter() - t0
        if it:
            tf.append(dt)
        unet.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = unet(x, t, encoder_hidden_states=ctx).sample
        out.mean().backward()
        dt = time.perf_counter() - t0
        if it:
            tb.append(dt)
    fwd, fb = statistics.median(tf), statistics.median(tb)
    nparams = sum(p.numel() for p in unet.parameters())
    print("pytorch unet bench: params %d, batch %d, latent %dx%d, threads %d: forward %.1f ms, "
          "forward+backward %.1f ms (medians of %d), peak rss %.0f MiB, before the model %.0f MiB "
          "(torch %s)" % (nparams, n, s, s, a.threads, fwd * 1e3, fb * 1e3, a.iters, rss_mib(), base,
                          torch.__version__))
    print("torch sd-unet %.6f %.6f %.1f" % (fwd, fb, rss_mib()))


def vae_bench(a):
    from diffusers import AutoencoderKL
    base = rss_mib()
    vae = AutoencoderKL.from_config(json.load(open(a.config))).float().eval()
    z = torch.randn(a.batch, vae.config.latent_channels, a.size, a.size) * 0.18215
    td = []
    for it in range(a.iters + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            img = vae.decode(z / vae.config.scaling_factor).sample
        if it:
            td.append(time.perf_counter() - t0)
    dec = statistics.median(td)
    print("pytorch vae bench: batch %d, latent %dx%d -> %dx%d, threads %d: decode %.1f ms (median "
          "of %d), peak rss %.0f MiB, before the model %.0f MiB" % (a.batch, a.size, a.size,
          img.shape[2], img.shape[3], a.threads, dec * 1e3, a.iters, rss_mib(), base))
    print("torch sd-vae %.6f %.1f" % (dec, rss_mib()))


if __name__ == "__main__":
    main()
