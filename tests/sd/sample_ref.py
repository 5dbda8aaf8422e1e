"""sample_ref.py - the diffusers side of tests/test_sd_sample.sh.

  python sample_ref.py make DIR PROMPT K CFG
      tiny sd1 (epsilon) and sd2 (v-prediction) pipelines,
      DIR/latents.safetensors: one tensor "latents" [1,4,8,8] (seed 0), and
      each model's references (below) in DIR/ref-sd1, DIR/ref-sd2: one
      Python process for all of it
  python sample_ref.py ref MODEL PROMPT LATENTS K CFG OUT
      with diffusers' StableDiffusionPipeline (DDIMScheduler from the
      folder's config, negative prompt ""):
        OUT/image.png    the eta-0 image from LATENTS (output_type "pil")
        OUT/step.safetensors  "x1": one DDIM step (eta 0) from LATENTS
        OUT/eta1.safetensors  "traj" [K+1,4,8,8]: an eta-1 trajectory made
             by scheduler.step with our own noise draws, and "logp" [K]:
             its per-step log-probs computed here from the step's mean
             (step with zero noise) and std (eta * sqrt(_get_variance)):
             MEAN over elements of the Gaussian log-density, in float64
  python sample_ref.py cmp A B ATOL RTOL NAME_A NAME_B
      max |a - b| of two tensors (NAME or NAME[i], row i; two PNGs when
      NAME_A is "png"),
      fails when any |a - b| > ATOL + RTOL |b|
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make(d, prompt, K, cfg):
    import torch
    import make_tiny
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    lat = os.path.join(d, "latents.safetensors")
    save_file({"latents": torch.randn(1, 4, 8, 8, generator=g)}, lat)
    for m in ("sd1", "sd2"):
        make_tiny.build(m, os.path.join(d, m), 0, "fp32", 8)
        ref(os.path.join(d, m), prompt, lat, K, cfg, os.path.join(d, "ref-" + m))
    print(d)


def patch_baddbmm(torch):
    """diffusers' attention calls torch.baddbmm(torch.empty(...), q, k^T,
    beta=0); torch 1.13 on the CPU sometimes lets NaN in the uninitialised
    input through (0 * NaN), which made whole SD2 reference runs NaN. With
    beta 0 the input is meant to be ignored: compute alpha * (q @ k^T)."""
    orig = torch.baddbmm

    def baddbmm(inp, b1, b2, *, beta=1, alpha=1, out=None):
        if beta == 0 and out is None:
            return torch.bmm(b1, b2) * alpha
        return orig(inp, b1, b2, beta=beta, alpha=alpha, out=out)
    torch.baddbmm = baddbmm


def ref(model, prompt, latents, K, cfg, out):
    import torch
    patch_baddbmm(torch)
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    lat = load_file(latents)["latents"]
    os.makedirs(out, exist_ok=True)
    img = pipe(prompt, negative_prompt="", latents=lat.clone(), num_inference_steps=K,
               guidance_scale=cfg, eta=0.0, output_type="pil").images[0]
    img.save(os.path.join(out, "image.png"))

    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="")
    ctx = torch.cat([uncond, cond])
    s = pipe.scheduler
    s.set_timesteps(K)

    def guided(x, t):
        o = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
        u, c = o.chunk(2)
        return u + cfg * (c - u)

    t0 = s.timesteps[0]
    x1 = s.step(guided(lat, t0), t0, lat, eta=0.0).prev_sample
    save_file({"x1": x1.contiguous()}, os.path.join(out, "step.safetensors"))

    g = torch.Generator().manual_seed(1)
    x = lat.clone()
    traj, logp = [x], []
    ratio = s.config.num_train_timesteps // K
    for t in s.timesteps:
        e = guided(x, t)
        z = torch.randn(x.shape, generator=g)
        mean = s.step(e, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        xn = s.step(e, t, x, eta=1.0, variance_noise=z).prev_sample
        std = float(s._get_variance(t, t - ratio)) ** 0.5
        d = (xn.double() - mean.double())
        lp = (-(d * d) / (2 * std * std) - math.log(std) - 0.5 * math.log(2 * math.pi)).mean()
        logp.append(float(lp))
        traj.append(xn)
        x = xn
    save_file({"traj": torch.cat(traj).contiguous(), "logp": torch.tensor(logp, dtype=torch.float32)},
              os.path.join(out, "eta1.safetensors"))


def cmp(a, b, atol, rtol, na, nb):
    import numpy as np
    if na == "png":
        from PIL import Image
        x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64) / 255
        y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64) / 255
    else:
        from safetensors.numpy import load_file

        def get(path, name):  # "name" or "name[i]": row i of the tensor
            i = None
            if name.endswith("]"):
                name, i = name[:-1].split("[")
            v = load_file(path)[name].astype(np.float64)
            return v if i is None else v[int(i)]
        x = get(a, na)
        y = get(b, nb)
        if x.size == y.size:
            x = x.reshape(y.shape)
    if x.shape != y.shape:
        print("    shapes differ: %s vs %s" % (x.shape, y.shape))
        return 1
    d = np.abs(x - y)
    bad = ~(d <= atol + rtol * np.abs(y))  # NaN on either side fails too
    print("    max |d3po - diffusers| = %.3g (%s), %d of %d beyond %.3g + %.3g |ref|; first values %s vs %s"
          % (d.max(), "x255 = %.2f" % (d.max() * 255) if na == "png" else "abs",
             int(bad.sum()), d.size, atol, rtol,
             np.array2string(x.ravel()[:3], precision=5), np.array2string(y.ravel()[:3], precision=5)))
    return 1 if bad.any() else 0


if __name__ == "__main__":
    c = sys.argv[1]
    if c == "make":
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif c == "ref":
        ref(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7])
    elif c == "cmp":
        sys.exit(cmp(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]))
    else:
        sys.exit("usage: sample_ref.py make DIR PROMPT K CFG | ref MODEL PROMPT LATENTS K CFG OUT | cmp A B ATOL RTOL NA NB")
