#!/usr/bin/python3
"""bench_torch.py - the PyTorch yardstick for the d3po benchmarks.

  /usr/bin/python3 bench/bench_torch.py --threads N --case sample|d3po|pretrain
                                        [--arch ARCH] [--reps R] [--seed S]

Builds the twin (bench/twin.py; default arch = the DESIGN.md yardstick, PyTorch
default random init) and times one unit of work:
  sample    one pair: 20 DDIM steps with CFG (batch 4 per step = 2 images x
            cond/uncond), torch.no_grad, keeping the trajectory and logp
  d3po      one D3PO pair update over 20 timesteps: per timestep a forward with
            grad on batch 4 + logp + loss + backward (gradients accumulate),
            then clip_grad_norm_(1.0) and an AdamW step (lr 3e-5, betas .9/.999,
            wd 1e-4, eps 1e-8)
  pretrain  one training step at batch 64: x0 in [-1,1], t uniform int,
            eps-MSE, backward, AdamW
One warm-up run, then the median of R reps (default 5; 3 for d3po).
stdout: exactly one line  `torch <case> <median_seconds> <peak_rss_MB>`
stderr: parameter count, per-rep times.
"""

import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402

K = 20
CFG = 5.0
ETA = 1.0


def make_opt(model):
    return torch.optim.AdamW(model.parameters(), lr=3e-5, betas=(0.9, 0.999), weight_decay=1e-4,
                             eps=1e-8)


def case_sample(model, S, ncls, g):
    def run():
        xT = torch.randn(1, 3, S, S, generator=g).expand(2, 3, S, S).contiguous()
        cls = torch.full((2,), 7 % ncls, dtype=torch.long)
        noises = torch.randn(K, 2, 3, S, S, generator=g)
        with torch.no_grad():
            traj, logp, _ = twin.sample(model, xT, cls, noises, K, CFG, ETA)
        return traj, logp
    return run


def case_d3po(model, S, ncls, g):
    opt = make_opt(model)
    # a stored pair: sampled once by the model itself (not timed)
    xT = torch.randn(1, 3, S, S, generator=g).expand(2, 3, S, S).contiguous()
    cls = torch.full((2,), 7 % ncls, dtype=torch.long)
    with torch.no_grad():
        traj, logp, ts = twin.sample(model, xT, cls, torch.randn(K, 2, 3, S, S, generator=g), K, CFG, ETA)
    traj0, traj1 = traj[:, 0:1], traj[:, 1:2]
    # reference log-probs near the policy's, so the clamp lets gradients through
    ref0 = logp[:, 0] + 0.01
    ref1 = logp[:, 1] - 0.01

    def run():
        opt.zero_grad(set_to_none=True)
        twin.d3po_pair_loss(model, traj0, traj1, ts, cls[:1], CFG, ETA, ref0, ref1, 1.0, -1.0,
                            beta=0.1, clip_eps=0.1, backward=True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return run


def case_pretrain(model, S, ncls, g, batch=64):
    opt = make_opt(model)
    abar = torch.tensor(twin.Schedule().alphas_cumprod, dtype=torch.float32)

    def run():
        x0 = torch.rand(batch, 3, S, S, generator=g) * 2 - 1
        t = torch.randint(0, twin.T_TRAIN, (batch,), generator=g)
        y = torch.randint(0, ncls + 1, (batch,), generator=g)
        noise = torch.randn(batch, 3, S, S, generator=g)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(xt, t.float(), y), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as d3po's step does
        opt.step()
    return run


def main():
    ap = argparse.ArgumentParser(description="PyTorch yardstick for d3po")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", choices=["sample", "d3po", "pretrain"], required=True)
    ap.add_argument("--arch", default=twin.DEFAULT_ARCH)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    arch = twin.parse_arch(a.arch)
    model = twin.init_params(twin.UNet(arch), seed=a.seed)
    print("arch %s: %d parameters; torch %s, %d threads" % (
        twin.format_arch(arch), twin.param_count(model), torch.__version__,
        torch.get_num_threads()), file=sys.stderr)
    g = torch.Generator().manual_seed(a.seed + 1)
    S, ncls = arch["size"], arch["classes"]
    run = {"sample": case_sample, "d3po": case_d3po, "pretrain": case_pretrain}[a.case](model, S, ncls, g)
    reps = a.reps if a.reps is not None else (3 if a.case == "d3po" else 5)
    run()  # warm-up
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print("times: " + " ".join("%.4f" % t for t in times), file=sys.stderr)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print("torch %s %.6f %.1f" % (a.case, statistics.median(times), rss_mb))


if __name__ == "__main__":
    main()
