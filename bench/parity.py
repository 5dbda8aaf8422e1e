#!/usr/bin/python3
"""parity.py - compares a d3po C dump against the PyTorch twin (bench/twin.py).

  /usr/bin/python3 bench/parity.py DIR            compare the dump in DIR
  /usr/bin/python3 bench/parity.py --selftest DIR write a dump made by the twin (float32,
                                                  tiny arch) into DIR, check it PASSes,
                                                  then check that a perturbed gradient
                                                  FAILs (DIR/perturbed)

DIR holds (each file optional except model.safetensors):
  model.safetensors  weights, metadata "d3po.arch"
  fwd.safetensors    x [N,3,S,S], t F32 [N], y I32 [N], target, out, loss [],
                     grad.<param> (gradient of mean((out-target)^2))
  ddim.safetensors   xT [1,3,S,S], noise [K,1,3,S,S], y I32 [1], timesteps I32 [K],
                     traj [K+1,1,3,S,S], logp [K]; metadata cfg, eta, steps
  d3po.safetensors   traj0, traj1 [K+1,1,3,S,S], timesteps I32 [K], y I32 [1],
                     ref_logp0, ref_logp1 [K], ref_mean0, ref_mean1 [K,1,3,S,S] (the
                     KL penalty's reference means), h [2], loss [K] (per timestep, in
                     timestep order), grad.<param> (gradient of the SUM of the K losses,
                     before clipping); metadata cfg, eta, beta, clip_eps, kl
  dpo.safetensors    x0a, x0b [1,3,S,S], t I32 [n], eps [n,1,3,S,S], y I32 [1], h [2],
                     loss [n] (Diffusion-DPO per draw), grad.<param> (gradient of the MEAN
                     of the n losses); metadata beta; with dpo_ref.safetensors, the
                     reference model (weights, metadata "d3po.arch")

The reference is the twin in float64.  The twin in float32 is also run and its error
against float64 is printed as "f32twin": the error an honest float32 implementation
makes, so a C error far above it means a bug even when it passes.

Errors: abs = max|c - ref|; rel = max|c - ref| / max|ref| (normalized error: the
elementwise relative error is meaningless where ref crosses zero).
One line per comparison; exit status 1 if any comparison FAILs.
"""

import argparse
import math
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402

torch.set_num_threads(2)

# --------------------------------------------------------------------------
# tolerances (all on the normalized error max|c-ref|/max|ref| unless said otherwise)
# --------------------------------------------------------------------------
# UNet forward output. float32 has eps 6e-8; the net is ~30 layers of GEMMs with
# reductions of up to ~600 terms, GroupNorm and softmax; a different summation order
# gives ~1e-6 normalized error (the f32 twin shows the same). Any wrong op
# (layout, padding, group count, missing term) gives 1e-2..1.
TOL_FWD_OUT = 1e-4
# MSE loss: a sum of N*3*S*S squares in float32; relative error ~1e-6.
TOL_FWD_LOSS = 1e-4
# Parameter gradients: backward roughly doubles the depth and sums over N*H*W
# positions; cancellation makes small gradients (GroupNorm biases, deep biases)
# relatively noisier, so each tensor's error is normalized by
# max(max|ref|, GRAD_FLOOR * largest |ref| over all parameters).
# Expected ~1e-5; a wrong gradient formula gives >=1e-2.
TOL_GRAD = 2e-3
GRAD_FLOOR = 1e-2
# One DDIM step from the C x_t (teacher-forced), absolute error in pixel units
# (values O(1)).  CFG w=5 multiplies the eps error by ~2w+1=11 and x0 = (x_t -
# sqrt(1-abar) eps)/sqrt(abar) divides by sqrt(abar)~0.01 at t=951 (the sqrt(abar_prev)
# factor takes most of it back); float32 rounding of x (6e-8) is far below.
TOL_DDIM_STEP = 1e-4
# logp (absolute, nats per element): logp = mean(-z^2/2) - log sigma - c where
# z = (x_prev - mean)/sigma.  The smallest sigma (last step, ~0.0074) turns a mean
# error d into a z error d/sigma; with d ~1e-6 that is ~1e-4 per element, averaged.
TOL_LOGP = 1e-3
# D3PO per-timestep loss (absolute): the loss is -logsigmoid(beta*(...)) ~ 0.69 with
# beta=0.1 and |lr| <= 0.1, so it is insensitive; 1e-5 catches a wrong sign/scale.
TOL_D3PO_LOSS = 1e-5
# D3PO gradients: the gradient of logp w.r.t. the mean is (x_prev-mean)/sigma^2 /
# numel, so the small-sigma steps dominate and mean errors are magnified by
# 1/sigma relative to the fwd gradients; hence 2.5x the fwd gradient tolerance
# (the float32 twin shows ~1e-4 here against ~1e-5 for fwd).
TOL_D3PO_GRAD = 5e-3
# ...and their per-tensor floor. The error of a small tensor's D3PO gradient
# (a GroupNorm bias deep in the up path, summed over positions with cancelling
# signs) is the 1/sigma^2-amplified mean error of the last steps, and its size
# depends on the machine's summation order: on the same arch-2 model and seed
# the worst tensor read 6e-4 at floor 1e-2 on an AMD EPYC (Zen, AVX-512) and
# 1.3e-2 on an Intel Xeon (Sapphire Rapids, AVX-512/AMX; CI failed on it);
# the global error on the EPYC is 2e-4. The parameter backward below the model output is the one the
# fwd grads check already tests at floor 1e-2; what the D3PO check adds is the
# loss -> output chain (ratios, clamp, beta, signs, step weights), which a bug
# breaks for every tensor at once (global error ~1). So the D3PO gradient
# check floors each tensor at 10% of the largest gradient and also bounds the
# global error |dg|/|g| by the same tolerance. (Diffusion-DPO has no 1/sigma
# amplification: its check keeps the fwd floor.)
GRAD_FLOOR_PAIR = 1e-1
# A timestep whose ratio exp(logp-ref) lies within this (relative) distance of the
# clamp bounds 1 +- eps can legitimately have its gradient switched on in one
# implementation and off in the other: it is reported as a warning.
CLAMP_MARGIN = 1e-4
# Diffusion-DPO loss per draw (absolute): softplus of beta*T*s with beta*T = 50 and s a
# difference of mean squared errors (~1e-2): s has the fwd output's ~1e-6 relative error
# times the errors' size (~1): the loss is off by ~5e-5 at most (measured 2e-6);
# a wrong sign or scale gives >0.1.
TOL_DPO_LOSS = 1e-4
# Diffusion-DPO gradients: the fwd MSE gradient scaled per image by
# beta*T*sigmoid(...)*h_i: the same depth and reductions as the fwd gradients, with
# the two images' terms of opposite sign (some cancellation): 2.5x TOL_GRAD as for D3PO.
TOL_DPO_GRAD = 5e-3

RESULTS = []


def nrm_err(c, ref, floor=0.0):
    c = c.double()
    ref = ref.double()
    if c.shape != ref.shape:
        return float("inf"), float("inf")
    if not torch.isfinite(c).all():
        return float("inf"), float("inf")
    ab = (c - ref).abs().max().item() if c.numel() else 0.0
    den = max(ref.abs().max().item() if ref.numel() else 0.0, floor)
    rel = ab / den if den > 0 else (0.0 if ab == 0 else float("inf"))
    return ab, rel


def report(name, ab, rel, tol, on="rel", f32=None, info=False, extra=""):
    val = rel if on == "rel" else ab
    if info:
        verdict = "INFO"
    else:
        verdict = "PASS" if val <= tol else "FAIL"
        RESULTS.append(verdict == "PASS")
    f32s = "" if f32 is None else "  f32twin %s=%.2e" % (on, f32)
    tols = "" if info else "  tol(%s)=%.0e" % (on, tol)
    print("%-34s abs=%.3e rel=%.3e%s%s  %s%s" % (name, ab, rel, tols, f32s, verdict,
                                                 ("  " + extra) if extra else ""))
    sys.stdout.flush()


def compare_grads(label, c_grads, ref_grads, f32_grads, tol, floor_frac=GRAD_FLOOR, check_global=False):
    """c_grads/ref_grads/f32_grads: dict name -> tensor. One line for the worst tensor."""
    missing = sorted(set(ref_grads) - set(c_grads))
    unexpected = sorted(set(c_grads) - set(ref_grads))
    if missing or unexpected:
        print("%-34s missing %s unexpected %s  FAIL" % (label, missing[:5], unexpected[:5]))
        RESULTS.append(False)
        return
    gmax = max(g.abs().max().item() for g in ref_grads.values())
    floor = floor_frac * gmax
    worst = None
    worst_f32 = 0.0
    nfail = 0
    for name in ref_grads:
        ab, rel = nrm_err(c_grads[name], ref_grads[name], floor)
        if rel > tol:
            nfail += 1
        if worst is None or rel > worst[2]:
            worst = (name, ab, rel)
        if f32_grads is not None:
            worst_f32 = max(worst_f32, nrm_err(f32_grads[name], ref_grads[name], floor)[1])
    # global: all gradients as one vector
    num = math.sqrt(sum(((c_grads[n].double() - ref_grads[n]) ** 2).sum().item() for n in ref_grads))
    den = math.sqrt(sum((ref_grads[n] ** 2).sum().item() for n in ref_grads))
    glob = num / max(den, 1e-300)
    report(label + " (%d)" % len(ref_grads), worst[1], worst[2], tol,
           f32=worst_f32 if f32_grads is not None else None,
           extra="worst %s; %d over tol; floor %.0e*max|g|; global |dg|/|g|=%.1e; max|g|=%.2e"
           % (worst[0], nfail, floor_frac, glob, gmax))
    if check_global:
        report(label + " global |dg|/|g|", num, glob, tol)


def models(dirpath):
    path = os.path.join(dirpath, "model.safetensors")
    m32 = twin.load_model(path, torch.float32)  # strict names/shapes
    m64 = twin.load_model(path, torch.float64)
    print("model: %s, %d parameters (%d tensors), names and shapes match"
          % (m32.arch and twin.format_arch(m32.arch), twin.param_count(m32),
             len(list(m32.parameters()))))
    return {"f64": m64, "f32": m32}


# --------------------------------------------------------------------------
# fwd
# --------------------------------------------------------------------------

def fwd_reference(model, d):
    dt = next(model.parameters()).dtype
    model.zero_grad(set_to_none=True)
    out = model(d["x"].to(dt), d["t"].to(dt), d["y"].long())
    loss = ((out - d["target"].to(dt)) ** 2).mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), loss.detach(), grads


def check_fwd(dirpath, ms):
    d, _ = twin.load_safetensors(os.path.join(dirpath, "fwd.safetensors"))
    t0 = time.time()
    o64, l64, g64 = fwd_reference(ms["f64"], d)
    o32, l32, g32 = fwd_reference(ms["f32"], d)
    ab, rel = nrm_err(d["out"], o64)
    report("fwd out %s" % (tuple(d["out"].shape),), ab, rel, TOL_FWD_OUT, f32=nrm_err(o32, o64)[1])
    ab, rel = nrm_err(d["loss"].reshape(()), l64)
    report("fwd loss (%.6g)" % l64.item(), ab, rel, TOL_FWD_LOSS, f32=nrm_err(l32, l64)[1])
    cg = {k[5:]: v for k, v in d.items() if k.startswith("grad.")}
    compare_grads("fwd grads", cg, g64, g32, TOL_GRAD)
    print("  (fwd checks %.1f s)" % (time.time() - t0))


# --------------------------------------------------------------------------
# ddim
# --------------------------------------------------------------------------

def check_ddim(dirpath, ms):
    d, meta = twin.load_safetensors(os.path.join(dirpath, "ddim.safetensors"))
    cfg = float(meta.get("cfg", "5.0"))
    eta = float(meta.get("eta", "1.0"))
    ts = [int(v) for v in d["timesteps"].tolist()]
    K = len(ts)
    if "steps" in meta and int(meta["steps"]) != K:
        print("ddim: metadata steps=%s but %d timesteps  FAIL" % (meta["steps"], K))
        RESULTS.append(False)
    exp_ts = twin.ddim_timesteps(K)
    ok = ts == exp_ts
    print("%-34s %s  %s" % ("ddim timesteps (K=%d)" % K, ts if ok else "%s expected %s" % (ts, exp_ts),
                            "PASS" if ok else "FAIL"))
    RESULTS.append(ok)
    y = d["y"].long().reshape(-1)
    traj = d["traj"]
    noise = d["noise"]
    t0 = time.time()
    res = {}
    for key, m in ms.items():
        dt = next(m.parameters()).dtype
        steps, lps, free = [], [], []
        with torch.no_grad():
            xf = d["xT"].to(dt)
            for k, t in enumerate(ts):
                prev = twin.prev_t(t, K)
                # teacher-forced: from the C x_t
                xs, mean, sigma = twin.ddim_step(m, traj[k].to(dt), t, prev, y, cfg, eta,
                                                 noise[k].to(dt))
                steps.append(xs)
                # logp of the C x_prev under the twin's mean
                lps.append(twin.ddim_logprob(traj[k + 1].to(dt), mean, sigma)[0])
                # free-running
                xf, _, _ = twin.ddim_step(m, xf, t, prev, y, cfg, eta, noise[k].to(dt))
                free.append(xf)
        res[key] = (torch.stack(steps), torch.stack(lps), torch.stack(free))
    s64, lp64, f64 = res["f64"]
    s32, lp32, f32 = res["f32"]
    # per-step teacher-forced errors: worst step
    worst = max(range(K), key=lambda k: (traj[k + 1].double() - s64[k]).abs().max().item())
    ab, rel = nrm_err(traj[1:], s64)
    report("ddim step (teacher-forced)", ab, rel, TOL_DDIM_STEP, on="abs",
           f32=nrm_err(s32, s64)[0], extra="worst step k=%d (t=%d)" % (worst, ts[worst]))
    lp_c = d["logp"].reshape(-1)
    ab, rel = nrm_err(lp_c, lp64)
    wk = int((lp_c.double() - lp64).abs().argmax())
    report("ddim logp", ab, rel, TOL_LOGP, on="abs", f32=nrm_err(lp32, lp64)[0],
           extra="worst k=%d (t=%d, logp %.4f)" % (wk, ts[wk], lp64[wk].item()))
    drift = [(traj[k + 1].double() - f64[k]).abs().max().item() for k in range(K)]
    ab, rel = nrm_err(traj[-1], f64[-1])
    report("ddim free-running drift x_0", ab, rel, 0, on="abs", info=True,
           f32=nrm_err(f32[-1], f64[-1])[0],
           extra="per-step max abs: " + " ".join("%.0e" % v for v in drift[::max(1, K // 5)]))
    print("  (ddim checks %.1f s)" % (time.time() - t0))


# --------------------------------------------------------------------------
# d3po
# --------------------------------------------------------------------------

def d3po_reference(model, d, meta):
    cfg = float(meta.get("cfg", "5.0"))
    eta = float(meta.get("eta", "1.0"))
    beta = float(meta.get("beta", "0.1"))
    ce = float(meta.get("clip_eps", "0.1"))
    ts = [int(v) for v in d["timesteps"].tolist()]
    kl = float(meta.get("kl", "0"))
    h = d["h"].double().tolist()
    model.zero_grad(set_to_none=True)
    losses, lps = twin.d3po_pair_loss(model, d["traj0"], d["traj1"], ts, d["y"].long().reshape(-1),
                                      cfg, eta, d["ref_logp0"].reshape(-1), d["ref_logp1"].reshape(-1),
                                      h[0], h[1], beta=beta, clip_eps=ce, backward=True, kl=kl,
                                      ref_mean0=d.get("ref_mean0"), ref_mean1=d.get("ref_mean1"))
    grads = {}
    for n, p in model.named_parameters():
        grads[n] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    return losses, lps, grads, ce


def check_d3po(dirpath, ms):
    d, meta = twin.load_safetensors(os.path.join(dirpath, "d3po.safetensors"))
    t0 = time.time()
    l64, lp64, g64, ce = d3po_reference(ms["f64"], d, meta)
    l32, lp32, g32, _ = d3po_reference(ms["f32"], d, meta)
    ts = [int(v) for v in d["timesteps"].tolist()]
    ok = ts == twin.ddim_timesteps(len(ts))
    if not ok:
        print("d3po timesteps %s: not the DDIM timesteps for K=%d (checked as given)" % (ts, len(ts)))
    # clamp-boundary proximity
    ref = torch.stack([d["ref_logp0"].reshape(-1), d["ref_logp1"].reshape(-1)], 1).double()
    ratio = torch.exp(lp64 - ref)
    near = []
    inside = 0
    for k in range(ratio.shape[0]):
        for i in range(2):
            r = ratio[k, i].item()
            if min(abs(r - (1 - ce)), abs(r - (1 + ce))) < CLAMP_MARGIN:
                near.append((k, i, r))
            if 1 - ce < r < 1 + ce:
                inside += 1
    print("d3po: %d of %d ratios inside the clamp [%.3g, %.3g]%s" % (
        inside, ratio.numel(), 1 - ce, 1 + ce,
        ("; WARNING near the bound: %s" % near) if near else ""))
    ab, rel = nrm_err(d["loss"].reshape(-1), l64)
    wk = int((d["loss"].reshape(-1).double() - l64).abs().argmax())
    report("d3po loss per timestep (K=%d)" % len(ts), ab, rel, TOL_D3PO_LOSS, on="abs",
           f32=nrm_err(l32, l64)[0], extra="worst k=%d; sum %.6f" % (wk, l64.sum().item()))
    cg = {k[5:]: v for k, v in d.items() if k.startswith("grad.")}
    compare_grads("d3po grads", cg, g64, g32, TOL_D3PO_GRAD, GRAD_FLOOR_PAIR, check_global=True)
    print("  (d3po checks %.1f s)" % (time.time() - t0))


# --------------------------------------------------------------------------
# Diffusion-DPO
# --------------------------------------------------------------------------

def dpo_reference(model, ref_model, d, meta):
    beta = float(meta.get("beta", "2.5"))
    h = d["h"].double().tolist()
    model.zero_grad(set_to_none=True)
    losses = twin.dpo_pair_loss(model, ref_model, d["x0a"], d["x0b"], d["t"].tolist(), d["eps"],
                                d["y"].long().reshape(-1), h[0], h[1], beta)
    grads = {}
    for n, p in model.named_parameters():
        grads[n] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    return losses, grads


def check_dpo(dirpath, ms):
    d, meta = twin.load_safetensors(os.path.join(dirpath, "dpo.safetensors"))
    rpath = os.path.join(dirpath, "dpo_ref.safetensors")
    refs = {"f64": twin.load_model(rpath, torch.float64), "f32": twin.load_model(rpath, torch.float32)}
    t0 = time.time()
    l64, g64 = dpo_reference(ms["f64"], refs["f64"], d, meta)
    l32, g32 = dpo_reference(ms["f32"], refs["f32"], d, meta)
    ab, rel = nrm_err(d["loss"].reshape(-1), l64)
    report("dpo loss per draw (n=%d)" % l64.numel(), ab, rel, TOL_DPO_LOSS, on="abs",
           f32=nrm_err(l32, l64)[0],
           extra="t %s; losses %s" % (d["t"].tolist(), " ".join("%.4f" % v for v in l64.tolist())))
    cg = {k[5:]: v for k, v in d.items() if k.startswith("grad.")}
    compare_grads("dpo grads", cg, g64, g32, TOL_DPO_GRAD)
    print("  (dpo checks %.1f s)" % (time.time() - t0))


def run_compare(dirpath):
    RESULTS.clear()
    t0 = time.time()
    print("== parity: %s" % dirpath)
    try:
        ms = models(dirpath)
    except Exception as e:  # noqa: BLE001 - report any load problem as a FAIL
        print("model: %s  FAIL" % e)
        return 1
    found = False
    for fname, fn in (("fwd", check_fwd), ("ddim", check_ddim), ("d3po", check_d3po),
                      ("dpo", check_dpo)):
        if os.path.exists(os.path.join(dirpath, fname + ".safetensors")):
            found = True
            try:
                fn(dirpath, ms)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                print("%s: error %s  FAIL" % (fname, e))
                RESULTS.append(False)
        else:
            print("%s.safetensors: absent, skipped" % fname)
    if not found:
        print("no fwd/ddim/d3po dump in %s  FAIL" % dirpath)
        RESULTS.append(False)
    nf = RESULTS.count(False)
    print("== %s: %d checks, %d failed (%.1f s)" % ("PASS" if nf == 0 else "FAIL", len(RESULTS), nf,
                                                   time.time() - t0))
    return 1 if nf else 0


# --------------------------------------------------------------------------
# selftest: a dump written by the twin in float32 (standing in for the C side)
# --------------------------------------------------------------------------

SELFTEST_ARCH = "base=16,mult=1.2,res=1,attn=8,size=16,classes=3"


def write_selftest(dirpath, seed=1234):
    os.makedirs(dirpath, exist_ok=True)
    arch = twin.parse_arch(SELFTEST_ARCH)
    S, NC = arch["size"], arch["classes"]
    # random everything, no zero init: every gradient path must carry signal
    m = twin.init_params(twin.UNet(arch), seed=seed, random_norms=True)
    twin.save_safetensors(os.path.join(dirpath, "model.safetensors"), twin.model_state_f32(m),
                          {"d3po.arch": twin.format_arch(arch)})
    g = torch.Generator().manual_seed(seed + 1)
    # fwd
    N = 2
    x = torch.randn(N, 3, S, S, generator=g)
    t = torch.tensor([17.0, 733.0])
    y = torch.tensor([1, NC], dtype=torch.int32)  # one real class, one null
    target = torch.randn(N, 3, S, S, generator=g)
    m.zero_grad()
    out = m(x, t, y.long())
    loss = ((out - target) ** 2).mean()
    loss.backward()
    fd = {"x": x, "t": t, "y": y, "target": target, "out": out.detach(), "loss": loss.detach()}
    for n, p in m.named_parameters():
        fd["grad." + n] = p.grad.clone()
    twin.save_safetensors(os.path.join(dirpath, "fwd.safetensors"), fd)
    # ddim
    K, cfg, eta = 20, 5.0, 1.0
    xT = torch.randn(1, 3, S, S, generator=g)
    cls = torch.tensor([2], dtype=torch.int32)
    n0 = torch.randn(K, 1, 3, S, S, generator=g)
    n1 = torch.randn(K, 1, 3, S, S, generator=g)
    with torch.no_grad():
        tr0, lp0, ts = twin.sample(m, xT, cls.long(), n0, K, cfg, eta)
        tr1, lp1, _ = twin.sample(m, xT, cls.long(), n1, K, cfg, eta)
    twin.save_safetensors(os.path.join(dirpath, "ddim.safetensors"),
                          {"xT": xT, "noise": n0, "y": cls, "timesteps": torch.tensor(ts, dtype=torch.int32),
                           "traj": tr0, "logp": lp0[:, 0]},
                          {"cfg": repr(cfg), "eta": repr(eta), "steps": str(K)})
    # d3po: reference log-probs offset from the policy's so most ratios are inside the
    # clamp (gradient flows) and a few far outside (gradient zero)
    off0 = (torch.rand(K, generator=g) - 0.5) * 0.1
    off1 = (torch.rand(K, generator=g) - 0.5) * 0.1
    off0[3] = 0.4
    off1[7] = -0.4
    ref0 = lp0[:, 0] + off0
    ref1 = lp1[:, 0] + off1
    h = torch.tensor([1.0, -1.0])
    beta, ce = 0.1, 0.1
    m.zero_grad()
    losses, _ = twin.d3po_pair_loss(m, tr0, tr1, ts, cls.long(), cfg, eta, ref0, ref1, 1.0, -1.0,
                                    beta=beta, clip_eps=ce)
    dd = {"traj0": tr0, "traj1": tr1, "timesteps": torch.tensor(ts, dtype=torch.int32), "y": cls,
          "ref_logp0": ref0, "ref_logp1": ref1, "h": h, "loss": losses}
    for n, p in m.named_parameters():
        dd["grad." + n] = p.grad.clone()
    twin.save_safetensors(os.path.join(dirpath, "d3po.safetensors"), dd,
                          {"cfg": repr(cfg), "eta": repr(eta), "beta": repr(beta), "clip_eps": repr(ce)})


def selftest(dirpath):
    t0 = time.time()
    write_selftest(dirpath)
    print("selftest: wrote %s (%.1f s)" % (dirpath, time.time() - t0))
    rc_ok = run_compare(dirpath)
    # perturbed copy: one gradient element off by 1% of that tensor's largest gradient
    pdir = os.path.join(dirpath, "perturbed")
    os.makedirs(pdir, exist_ok=True)
    shutil.copy(os.path.join(dirpath, "model.safetensors"), pdir)
    fd, meta = twin.load_safetensors(os.path.join(dirpath, "fwd.safetensors"))
    gname = "grad.down.1.res.0.conv1.weight"
    gt = fd[gname]
    gt.view(-1)[5] += 0.01 * gt.abs().max()
    twin.save_safetensors(os.path.join(pdir, "fwd.safetensors"), fd, meta)
    print("selftest: perturbed %s[5] by 1%% of its max in %s" % (gname, pdir))
    rc_bad = run_compare(pdir)
    ok = rc_ok == 0 and rc_bad == 1
    print("SELFTEST %s: clean dump %s, perturbed dump %s (%.1f s total)" % (
        "PASS" if ok else "FAIL", "passed" if rc_ok == 0 else "FAILED",
        "failed as it must" if rc_bad == 1 else "PASSED (bad)", time.time() - t0))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--selftest", action="store_true",
                    help="write a twin-made dump into DIR and check the comparison itself")
    a = ap.parse_args()
    sys.exit(selftest(a.dir) if a.selftest else run_compare(a.dir))


if __name__ == "__main__":
    main()
