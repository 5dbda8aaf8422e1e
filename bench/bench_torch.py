#!/usr/bin/python3
"""bench_torch.py - the PyTorch yardstick for the d3po benchmarks.

  /usr/bin/python3 bench/bench_torch.py --threads N --case sample|d3po|pretrain
                                        [--device cpu|cuda] [--arch ARCH] [--reps R] [--seed S]

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
stdout: exactly one line  `torch <case> <median_seconds> <peak_MB>`
stderr: parameter count, per-rep times.

--device cuda: the model and every tensor on the GPU (random numbers from a
CUDA generator), TF32 off in cuBLAS and cuDNN (d3po's default), cuDNN
autotuning on (torch.backends.cudnn.benchmark), torch.cuda.synchronize()
around each timed run, 2 warm-up runs, default reps 10 (5 for d3po), and
peak_MB = torch.cuda.max_memory_allocated (the peak RSS goes to stderr).
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


DEV = torch.device("cpu")


def use_device(name):
    """Selects the device for every tensor the cases make.  twin.cfg_eps builds its
    timestep and null-class tensors on the CPU, so on CUDA it is replaced by the
    same computation with those tensors on the input's device."""
    global DEV
    DEV = torch.device(name)
    if DEV.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_torch.py: --device cuda: torch %s sees no CUDA device"
                         % torch.__version__)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    def cfg_eps(model, x_t, t, cls, cfg, null_class):
        n = x_t.shape[0]
        tt = torch.full((2 * n,), float(t), dtype=x_t.dtype, device=x_t.device)
        yy = torch.cat([cls.long(), torch.full((n,), null_class, dtype=torch.long,
                                               device=x_t.device)])
        e = model(torch.cat([x_t, x_t]), tt, yy)
        e_c, e_u = e[:n], e[n:]
        return e_u + cfg * (e_c - e_u)

    twin.cfg_eps = cfg_eps


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def case_sample(model, S, ncls, g):
    def run():
        xT = torch.randn(1, 3, S, S, generator=g, device=DEV).expand(2, 3, S, S).contiguous()
        cls = torch.full((2,), 7 % ncls, dtype=torch.long, device=DEV)
        noises = torch.randn(K, 2, 3, S, S, generator=g, device=DEV)
        with torch.no_grad():
            traj, logp, _ = twin.sample(model, xT, cls, noises, K, CFG, ETA)
        return traj, logp
    return run


def case_d3po(model, S, ncls, g):
    opt = make_opt(model)
    # a stored pair: sampled once by the model itself (not timed)
    xT = torch.randn(1, 3, S, S, generator=g, device=DEV).expand(2, 3, S, S).contiguous()
    cls = torch.full((2,), 7 % ncls, dtype=torch.long, device=DEV)
    with torch.no_grad():
        traj, logp, ts = twin.sample(model, xT, cls,
                                     torch.randn(K, 2, 3, S, S, generator=g, device=DEV), K, CFG,
                                     ETA)
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
    abar = torch.tensor(twin.Schedule().alphas_cumprod, dtype=torch.float32, device=DEV)

    def run():
        x0 = torch.rand(batch, 3, S, S, generator=g, device=DEV) * 2 - 1
        t = torch.randint(0, twin.T_TRAIN, (batch,), generator=g, device=DEV)
        y = torch.randint(0, ncls + 1, (batch,), generator=g, device=DEV)
        noise = torch.randn(batch, 3, S, S, generator=g, device=DEV)
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
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    use_device(a.device)
    cuda = DEV.type == "cuda"
    arch = twin.parse_arch(a.arch)
    model = twin.init_params(twin.UNet(arch), seed=a.seed).to(DEV)
    print("arch %s: %d parameters; torch %s, %d threads; device %s%s" % (
        twin.format_arch(arch), twin.param_count(model), torch.__version__,
        torch.get_num_threads(), DEV.type,
        " (%s, TF32 off, cudnn.benchmark)" % torch.cuda.get_device_name(DEV) if cuda else ""),
        file=sys.stderr)
    g = torch.Generator(device=DEV).manual_seed(a.seed + 1)
    S, ncls = arch["size"], arch["classes"]
    run = {"sample": case_sample, "d3po": case_d3po, "pretrain": case_pretrain}[a.case](model, S, ncls, g)
    if a.reps is not None:
        reps = a.reps
    elif cuda:
        reps = 5 if a.case == "d3po" else 10
    else:
        reps = 3 if a.case == "d3po" else 5
    for _ in range(2 if cuda else 1):  # warm-up (on CUDA also cuDNN's autotuning)
        run()
    sync()
    times, cpus = [], []
    for _ in range(max(1, reps)):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        sync()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    print("times: " + " ".join("%.4f" % t for t in times), file=sys.stderr)
    # process CPU seconds per rep (see bench.c)
    print("cpu times: " + " ".join("%.4f" % t for t in cpus), file=sys.stderr)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    if cuda:
        peak = torch.cuda.max_memory_allocated(DEV) / (1024.0 * 1024.0)
        print("peak RSS %.1f MB; torch.cuda.max_memory_allocated %.1f MB" % (rss_mb, peak),
              file=sys.stderr)
        print("torch %s %.6f %.1f" % (a.case, statistics.median(times), peak))
    else:
        print("torch %s %.6f %.1f" % (a.case, statistics.median(times), rss_mb))


if __name__ == "__main__":
    main()
