"""twin.py - the PyTorch twin of the d3po engine (yardstick and numerical reference).

Mirrors engine/unet.h (architecture, parameter names) and /work/shared/DESIGN.md
("Sampling and log-probabilities", "D3PO update").  Only torch and numpy are used;
run with /usr/bin/python3 (Debian python3-torch).

Contents
  load_safetensors / save_safetensors   small reader/writer of the safetensors format
  parse_arch / format_arch              "base=32,mult=1.2.2,res=2,attn=8,size=32,classes=100"
  UNet, load_model, init_params         the model
  Schedule, ddim_timesteps, prev_t      linear-beta DDPM schedule, DDIM K-step timesteps
  ddim_step, ddim_logprob, sample       DDIM with CFG and eta, per-step log-probabilities
  d3po_pair_loss                        per-timestep D3PO losses of one labelled pair
  dpo_pair_loss                         Diffusion-DPO losses of a pair at fixed (t, eps) draws
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

_ST_DTYPES = {
    "F32": (np.dtype("<f4"), torch.float32),
    "F64": (np.dtype("<f8"), torch.float64),
    "F16": (np.dtype("<f2"), torch.float16),
    "I32": (np.dtype("<i4"), torch.int32),
    "I64": (np.dtype("<i8"), torch.int64),
    "U8": (np.dtype("u1"), torch.uint8),
}
_TORCH_TO_ST = {tdt: name for name, (_, tdt) in _ST_DTYPES.items()}


class SafetensorsError(ValueError):
    pass


def load_safetensors(path):
    """Returns (dict name -> torch.Tensor, metadata dict str -> str).
    Every length, offset and dtype is checked; a bad file raises SafetensorsError."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise SafetensorsError("%s: file shorter than the 8-byte header length" % path)
    (hlen,) = struct.unpack("<Q", buf[:8])
    if hlen > len(buf) - 8:
        raise SafetensorsError("%s: header length %d exceeds file size %d" % (path, hlen, len(buf)))
    try:
        header = json.loads(buf[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError("%s: bad JSON header: %s" % (path, e))
    if not isinstance(header, dict):
        raise SafetensorsError("%s: header is not a JSON object" % path)
    data = memoryview(buf)[8 + hlen:]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise SafetensorsError("%s: __metadata__ must be a map of strings" % path)
    tensors = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError("%s: tensor %r: bad entry" % (path, name))
        dt = info.get("dtype")
        if dt not in _ST_DTYPES:
            raise SafetensorsError("%s: tensor %r: unsupported dtype %r" % (path, name, dt))
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise SafetensorsError("%s: tensor %r: bad shape %r" % (path, name, shape))
        offs = info.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= len(data)):
            raise SafetensorsError("%s: tensor %r: bad data_offsets %r" % (path, name, offs))
        npdt, _ = _ST_DTYPES[dt]
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if offs[1] - offs[0] != n * npdt.itemsize:
            raise SafetensorsError("%s: tensor %r: %d bytes for shape %r dtype %s"
                                   % (path, name, offs[1] - offs[0], shape, dt))
        arr = np.frombuffer(data[offs[0]:offs[1]], dtype=npdt).reshape(shape)
        tensors[name] = torch.from_numpy(arr.astype(npdt.newbyteorder("="), copy=True))
        if offs[1] > offs[0]:
            spans.append((offs[0], offs[1], name))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise SafetensorsError("%s: tensors %r and %r overlap" % (path, a[2], b[2]))
    return tensors, dict(meta)


def save_safetensors(path, tensors, metadata=None):
    """Writes tensors (dict name -> torch.Tensor or numpy array, in dict order) and
    metadata (dict str -> str) to path."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            if t.dtype not in _TORCH_TO_ST:
                raise SafetensorsError("tensor %r: unsupported dtype %s" % (name, t.dtype))
            dt = _TORCH_TO_ST[t.dtype]
            arr = t.contiguous().numpy()
        else:
            arr = np.asarray(t)
            dt = {v[0].newbyteorder("="): k for k, v in _ST_DTYPES.items()}.get(
                arr.dtype.newbyteorder("="))
            if dt is None:
                raise SafetensorsError("tensor %r: unsupported dtype %s" % (name, arr.dtype))
        npdt = _ST_DTYPES[dt][0]
        raw = np.ascontiguousarray(arr, dtype=npdt).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------
# architecture
# ---------------------------------------------------------------------------

DEFAULT_ARCH = "base=32,mult=1.2.2,res=2,attn=8,size=32,classes=100"


def parse_arch(s):
    """'base=32,mult=1.2.2,res=2,attn=8,size=32,classes=100' -> dict with int values
    except mult (list of int) and attn (list of int, [] for 'none')."""
    a = parse_arch_into({"base": 32, "mult": [1, 2, 2], "res": 2, "attn": [8], "size": 32,
                         "classes": 100}, s)
    return a


def parse_arch_into(a, s):
    a = dict(a)
    for item in s.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError("arch: %r is not key=value" % item)
        k, v = item.split("=", 1)
        k = k.strip()
        v = v.strip()
        if k in ("mult", "attn"):
            if k == "attn" and v == "none":
                a[k] = []
            else:
                a[k] = [int(p) for p in v.split(".")]
        elif k in ("base", "res", "size", "classes"):
            a[k] = int(v)
        else:
            raise ValueError("arch: unknown key %r" % k)
    return a


def format_arch(a):
    return "base=%d,mult=%s,res=%d,attn=%s,size=%d,classes=%d" % (
        a["base"], ".".join(str(m) for m in a["mult"]), a["res"],
        ".".join(str(r) for r in a["attn"]) if a["attn"] else "none", a["size"], a["classes"])


def gn_groups(c):
    for g in range(min(32, c), 0, -1):
        if c % g == 0:
            return g
    return 1


def GN(c):
    return nn.GroupNorm(gn_groups(c), c, eps=1e-5)


def timestep_embedding(t, dim):
    """[cos(t*f_i), sin(t*f_i)], f_i = exp(-ln(10000) * i / half), i < half = dim/2."""
    half = dim // 2
    i = torch.arange(half, dtype=t.dtype, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * i / half)
    a = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim):
        super().__init__()
        self.norm1 = GN(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = GN(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x, eact):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(eact)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = GN(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3 * c, hh * ww)
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        a = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(c), dim=2)
        o = torch.einsum("nij,ncj->nci", a, v).reshape(n, c, hh, ww)
        return x + self.proj(o)


class Level(nn.Module):
    """down.{i} / up.{i}: res.{j}, attn.{j} (if this resolution has attention),
    downsample / upsample (if present)."""

    def __init__(self):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = None


class Mid(nn.Module):
    def __init__(self, ch, emb_dim):
        super().__init__()
        self.res = nn.ModuleList([ResBlock(ch, ch, emb_dim), ResBlock(ch, ch, emb_dim)])
        self.attn = nn.ModuleList([AttnBlock(ch)])


class UNet(nn.Module):
    def __init__(self, arch):
        super().__init__()
        if isinstance(arch, str):
            arch = parse_arch(arch)
        self.arch = arch
        B, mult, R, S = arch["base"], arch["mult"], arch["res"], arch["size"]
        L = len(mult)
        E = 4 * B
        attn = set(arch["attn"])
        if S % (1 << (L - 1)):
            raise ValueError("arch: size %d not divisible by 2^%d" % (S, L - 1))
        self.time_embed = nn.Sequential(nn.Linear(B, E), nn.SiLU(), nn.Linear(E, E))
        self.class_embed = nn.Embedding(arch["classes"] + 1, E)
        self.conv_in = nn.Conv2d(3, B, 3, padding=1)
        skips = [B]
        ch, res = B, S
        self.down = nn.ModuleList()
        for i in range(L):
            lv = Level()
            out = B * mult[i]
            for j in range(R):
                lv.res.append(ResBlock(ch, out, E))
                ch = out
                skips.append(ch)
            if res in attn:
                lv.attn = nn.ModuleList([AttnBlock(ch) for _ in range(R)])
            if i != L - 1:
                lv.downsample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                res //= 2
                skips.append(ch)
            self.down.append(lv)
        self.mid = Mid(ch, E)
        ups = [None] * L
        for i in reversed(range(L)):
            lv = Level()
            out = B * mult[i]
            for j in range(R + 1):
                lv.res.append(ResBlock(ch + skips.pop(), out, E))
                ch = out
            if res in attn:
                lv.attn = nn.ModuleList([AttnBlock(ch) for _ in range(R + 1)])
            if i != 0:
                lv.upsample = nn.Conv2d(ch, ch, 3, padding=1)
                res *= 2
            ups[i] = lv
        assert not skips
        self.up = nn.ModuleList(ups)
        self.norm_out = GN(ch)
        self.conv_out = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x, t, y):
        B = self.arch["base"]
        L = len(self.arch["mult"])
        t = t.to(x.dtype)
        temb = self.time_embed(timestep_embedding(t, B))
        emb = temb + self.class_embed(y.long())
        eact = F.silu(emb)
        h = self.conv_in(x)
        hs = [h]
        for i in range(L):
            lv = self.down[i]
            for j, blk in enumerate(lv.res):
                h = blk(h, eact)
                if lv.attn is not None:
                    h = lv.attn[j](h)
                hs.append(h)
            if i != L - 1:
                h = lv.downsample(h)
                hs.append(h)
        h = self.mid.res[0](h, eact)
        h = self.mid.attn[0](h)
        h = self.mid.res[1](h, eact)
        for i in reversed(range(L)):
            lv = self.up[i]
            for j, blk in enumerate(lv.res):
                h = blk(torch.cat([h, hs.pop()], dim=1), eact)
                if lv.attn is not None:
                    h = lv.attn[j](h)
            if i != 0:
                h = lv.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def init_params(model, seed=None, zero_init=False, random_norms=False):
    """PyTorch default init (= engine/unet.h's U(+-1/sqrt(fan_in)), GN 1/0, class_embed
    N(0,1)).  zero_init: also zero conv_out, every ResBlock's conv2 and every AttnBlock's
    proj (the documented d3po init).  random_norms: random GroupNorm affine parameters
    (for parity tests, so every gradient path is exercised)."""
    if seed is not None:
        torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            m.reset_parameters()
        elif isinstance(m, nn.GroupNorm):
            if random_norms:
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
            else:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    if zero_init:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if (name.startswith("conv_out.") or ".conv2." in name or ".proj." in name):
                    p.zero_()
    return model


def load_model(path, dtype=torch.float32):
    """Loads a d3po model file: arch from metadata "d3po.arch", weights with strict
    name/shape matching."""
    tensors, meta = load_safetensors(path)
    if "d3po.arch" not in meta:
        raise ValueError("%s: no d3po.arch in __metadata__" % path)
    model = UNet(parse_arch(meta["d3po.arch"]))
    load_weights(model, tensors, what=path)
    return model.to(dtype)


def load_weights(model, tensors, what="weights"):
    sd = model.state_dict()
    missing = sorted(set(sd) - set(tensors))
    unexpected = sorted(set(tensors) - set(sd))
    if missing or unexpected:
        raise ValueError("%s: missing %s; unexpected %s" % (what, missing, unexpected))
    bad = ["%s %s vs %s" % (k, tuple(tensors[k].shape), tuple(v.shape))
           for k, v in sd.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError("%s: shape mismatch: %s" % (what, "; ".join(bad)))
    with torch.no_grad():
        for k, v in sd.items():
            v.copy_(tensors[k].to(v.dtype))


def model_state_f32(model):
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# schedule, DDIM, log-probabilities
# ---------------------------------------------------------------------------

T_TRAIN = 1000


class Schedule:
    """Linear betas 1e-4..0.02 over 1000 steps, computed in float64."""

    def __init__(self, beta_start=1e-4, beta_end=0.02, n=T_TRAIN):
        self.n = n
        self.betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)

    def abar(self, t):
        return float(self.alphas_cumprod[int(t)])


def ddim_timesteps(K, n=T_TRAIN):
    """t_k = k*(n//K) + 1 descending: 951, 901, ..., 1 for K=20."""
    step = n // K
    return [k * step + 1 for k in range(K - 1, -1, -1)]


def prev_t(t, K, n=T_TRAIN):
    """prev(t) = t - n//K clamped to 0 (the last step goes from t=1 to t=0)."""
    return max(int(t) - n // K, 0)


def ddim_coeffs(sched, t, prev, eta):
    """Scalar (python float64) coefficients of one DDIM step."""
    at = sched.abar(t)
    ap = sched.abar(prev)
    sigma = eta * math.sqrt((1 - ap) / (1 - at)) * math.sqrt(1 - at / ap)
    return dict(at=at, ap=ap, sigma=sigma, sqrt_at=math.sqrt(at), sqrt_1mat=math.sqrt(1 - at),
                sqrt_ap=math.sqrt(ap), dir_coef=math.sqrt(max(1 - ap - sigma * sigma, 0.0)))


def cfg_eps(model, x_t, t, cls, cfg, null_class):
    """Guided eps: the model runs on batch [x, x] with classes [y, null] (cond first),
    eps = eps_u + w*(eps_c - eps_u).  x_t [N,...], cls long [N]."""
    n = x_t.shape[0]
    tt = torch.full((2 * n,), float(t), dtype=x_t.dtype)
    yy = torch.cat([cls.long(), torch.full((n,), null_class, dtype=torch.long)])
    e = model(torch.cat([x_t, x_t]), tt, yy)
    e_c, e_u = e[:n], e[n:]
    return e_u + cfg * (e_c - e_u)


def ddim_mean(eps, x_t, c):
    x0 = ((x_t - c["sqrt_1mat"] * eps) / c["sqrt_at"]).clamp(-1.0, 1.0)
    return c["sqrt_ap"] * x0 + c["dir_coef"] * eps


def ddim_step(model_eps_fn, x_t, t, prev, cls, cfg, eta, noise, sched=None):
    """One DDIM step.  model_eps_fn(x_t, t, cls, cfg) -> guided eps (or a UNet, then
    CFG is applied here).  Returns (x_prev, mean, sigma) with sigma a python float."""
    sched = sched or _SCHED
    c = ddim_coeffs(sched, t, prev, eta)
    if isinstance(model_eps_fn, UNet):
        eps = cfg_eps(model_eps_fn, x_t, t, cls, cfg, model_eps_fn.arch["classes"])
    else:
        eps = model_eps_fn(x_t, t, cls, cfg)
    mean = ddim_mean(eps, x_t, c)
    x_prev = mean + c["sigma"] * noise if noise is not None else mean
    return x_prev, mean, c["sigma"]


LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def ddim_logprob(x_prev, mean, sigma):
    """Per-image MEAN over elements of -(x_prev-mean)^2/(2 sigma^2) - log sigma - log sqrt(2pi)."""
    lp = -((x_prev.detach() - mean) ** 2) / (2 * sigma * sigma) - math.log(sigma) - LOG_SQRT_2PI
    return lp.reshape(lp.shape[0], -1).mean(dim=1)


def sample(model, xT, cls, noises, K=20, cfg=5.0, eta=1.0, sched=None):
    """Runs K DDIM steps from xT with per-step noise noises[k] ([K, N, 3, S, S]).
    Returns (traj [K+1, N, 3, S, S], logp [K, N], timesteps)."""
    sched = sched or _SCHED
    ts = ddim_timesteps(K)
    x = xT
    traj = [x]
    logps = []
    for k, t in enumerate(ts):
        x, mean, sigma = ddim_step(model, x, t, prev_t(t, K), cls, cfg, eta, noises[k], sched)
        logps.append(ddim_logprob(x, mean, sigma))
        traj.append(x)
    return torch.stack(traj), torch.stack(logps), ts


_SCHED = Schedule()


# ---------------------------------------------------------------------------
# D3PO
# ---------------------------------------------------------------------------

def policy_logp_pair(model, x_t2, x_prev2, t, prev, cls, cfg, eta, sched=None):
    """logp of x_prev under the policy for a batch of images (a pair: N=2) at one step."""
    sched = sched or _SCHED
    c = ddim_coeffs(sched, t, prev, eta)
    eps = cfg_eps(model, x_t2, t, cls, cfg, model.arch["classes"])
    mean = ddim_mean(eps, x_t2, c)
    return ddim_logprob(x_prev2, mean, c["sigma"])


def policy_logp_mean_pair(model, x_t2, x_prev2, t, prev, cls, cfg, eta, sched=None):
    """(logp, mean, sigma) of one step for a batch of images (the KL penalty needs the mean)."""
    sched = sched or _SCHED
    c = ddim_coeffs(sched, t, prev, eta)
    eps = cfg_eps(model, x_t2, t, cls, cfg, model.arch["classes"])
    mean = ddim_mean(eps, x_t2, c)
    return ddim_logprob(x_prev2, mean, c["sigma"]), mean, c["sigma"]


def d3po_pair_loss(model, traj0, traj1, t_list, cls, cfg, eta, ref_logp0, ref_logp1, h0, h1,
                   beta=0.1, clip_eps=0.1, backward=True, sched=None, kl=0.0, ref_mean0=None,
                   ref_mean1=None):
    """Per-timestep D3PO losses of one pair.  traj0/traj1 [K+1, 1, 3, S, S] (traj[k] is x at
    t_list[k], traj[k+1] at prev(t_list[k])); ref_logp0/1 [K]; h0, h1 in {+1,-1,0}.
    For each k: lr_i = log(clamp(exp(logp_i - ref_i), 1-eps, 1+eps)),
    loss_k = -logsigmoid(beta*(h0*lr0 + h1*lr1)) + kl*(KL_0 + KL_1)/2 with
    KL_i = mean over elements of (mean_i - ref_mean_i[k])^2 / (2 sigma^2) (ref_mean0/1
    [K, 1, 3, S, S], only used when kl > 0).
    With backward=True, each loss_k is backpropagated as soon as it is computed, so the
    gradient of the SUM over k accumulates in the parameters' .grad (memory stays one
    timestep's graph); with backward=False the losses keep their graphs, so
    losses.sum().backward() gives the same gradient.  Returns (losses [K], logp [K, 2])."""
    K = len(t_list)
    dt = next(model.parameters()).dtype
    cls = cls.reshape(-1)[:1].long()
    cls2 = torch.cat([cls, cls])
    losses = []
    logps = []
    for k in range(K):
        t = int(t_list[k])
        prev = prev_t(t, K)
        x_t2 = torch.cat([traj0[k], traj1[k]]).to(dt)
        x_p2 = torch.cat([traj0[k + 1], traj1[k + 1]]).to(dt)
        lp, mean, sigma = policy_logp_mean_pair(model, x_t2, x_p2, t, prev, cls2, cfg, eta, sched)
        ref = torch.stack([ref_logp0[k], ref_logp1[k]]).to(dt)
        ratio = torch.exp(lp - ref).clamp(1 - clip_eps, 1 + clip_eps)
        lr = torch.log(ratio)
        loss = -F.logsigmoid(beta * (h0 * lr[0] + h1 * lr[1]))
        if kl > 0:
            rm = torch.cat([ref_mean0[k], ref_mean1[k]]).to(dt)
            div = ((mean - rm) ** 2 / (2 * sigma * sigma)).reshape(2, -1).mean(dim=1)
            loss = loss + kl * 0.5 * (div[0] + div[1])
        if backward:
            loss.backward()
        losses.append(loss.detach() if backward else loss)
        logps.append(lp.detach())
    return torch.stack(losses), torch.stack(logps)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Diffusion-DPO
# ---------------------------------------------------------------------------

def dpo_pair_loss(model, ref_model, x0a, x0b, t_list, eps, cls, h0, h1, beta, sched=None,
                  backward=True):
    """Diffusion-DPO losses of one pair at fixed draws (engine/diffusion.h, dpo_pair_backward).
    x0a/x0b [1, 3, S, S] the two final images; t_list [n] ints; eps [n, 1, 3, S, S]; for draw j:
    x_i = sqrt(abar_t) x0_i + sqrt(1 - abar_t) eps_j (the same t, eps for both images),
    err_i = mean over elements of (eps_j - model(x_i, t, cls))^2 (the conditional prediction,
    no guidance), rerr_i the same with ref_model, s = h0 (err_0 - rerr_0) + h1 (err_1 - rerr_1),
    loss_j = -logsigmoid(-beta * T * s) with T = 1000.  With backward=True the MEAN over the
    draws is backpropagated into model's .grad.  Returns the losses [n] (detached)."""
    sched = sched or _SCHED
    dt = next(model.parameters()).dtype
    cls = cls.reshape(-1)[:1].long()
    y = torch.cat([cls, cls])
    n = len(t_list)
    losses = []
    for j in range(n):
        t = int(t_list[j])
        a = math.sqrt(sched.abar(t))
        b = math.sqrt(1.0 - sched.abar(t))
        e = eps[j].to(dt)
        x = torch.cat([a * x0a.to(dt) + b * e, a * x0b.to(dt) + b * e])
        tt = torch.full((2,), float(t), dtype=dt)
        out = model(x, tt, y)
        with torch.no_grad():
            rout = ref_model(x, tt, y)
        err = ((torch.cat([e, e]) - out) ** 2).reshape(2, -1).mean(dim=1)
        rerr = ((torch.cat([e, e]) - rout) ** 2).reshape(2, -1).mean(dim=1)
        s = h0 * (err[0] - rerr[0]) + h1 * (err[1] - rerr[1])
        loss = -F.logsigmoid(-beta * T_TRAIN * s)
        if backward:
            (loss / n).backward()
        losses.append(loss.detach())
    return torch.stack(losses)
