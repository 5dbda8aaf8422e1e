"""sd_pipe_torch.py - the yardstick of the SD pair-sampling bench of
tests/gpu/run.sh: diffusers' StableDiffusionPipeline on a pipeline folder
(random weights, tests/sd/make_tiny.py), sampling what `d3po sample
--count 2` samples: one prompt, 2 images from DDIM (eta 1, as d3po), STEPS
steps with classifier-free guidance CFG against the empty prompt, decoded
by the VAE to pixels.

  python sd_pipe_torch.py DIR [--size S] [--steps 20] [--cfg 5] [--iters 3]

On a GPU: float16 (the folder's weights as saved), eager, PyTorch's SDPA
attention (diffusers' default processor on torch 2), peak memory from
torch.cuda.max_memory_allocated. Without one (the dry run of run.sh):
float32 on the CPU, peak resident memory. Times are medians of ITERS after
one warm-up, the text encoder and VAE decode included, loading excluded.
Last line, for run.sh: "torch sd-pair DEVICE SECONDS PEAK_MIB".
"""
import argparse
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tests/sd")
import torch_fix  # noqa: E402,F401  (torch 1.13's baddbmm with beta=0)
from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev, dt = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(a.dir, torch_dtype=dt, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    print("torch %s, diffusers pipeline on %s (%s), attention %s" % (
        torch.__version__, torch.cuda.get_device_name(0) if cuda else "cpu", dt,
        type(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))]).__name__))

    def pair(seed):
        g = torch.Generator(device=dev).manual_seed(seed)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        pipe("a photo of a cat", height=a.size, width=a.size, num_inference_steps=a.steps,
             guidance_scale=a.cfg, negative_prompt="", num_images_per_prompt=2, eta=1.0,
             generator=g, output_type="np")
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    pair(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [pair(i + 1) for i in range(a.iters)]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = statistics.median(times)
    print("pair (%d steps, cfg %g, 2 images %dx%d, VAE decode): median %.3f s of %s" % (
        a.steps, a.cfg, a.size, a.size, med, " ".join("%.3f" % t for t in times)))
    print("torch sd-pair %s %.4f %.0f" % (dev, med, peak))


if __name__ == "__main__":
    main()
