"""d3po_ref.py - the D3PO loss and its adapter gradients on diffusers + peft,
the reference for tests/tool_sdtrain.c d3po (tests/test_lora_d3po.sh).

  python d3po_ref.py PIPE LORA TRAJ OUT

PIPE: a tiny pipeline (make_tiny.py); LORA: a LoRA file loaded with
diffusers' load_lora_weights (peft layers on the UNet); TRAJ: the pair
written by `tool_sdtrain traj` (traj0, traj1 [K+1, C, h, w], the text
states cond and uncond [77, D], metadata K, cfg, eta).

The loss is the D3PO paper's, written here from its definition on
diffusers' DDIMScheduler (the official code's ddim_step_with_logprob):
for step k at timestep t = scheduler.timesteps[k], prev = t - T/K,
  out = unet([x0, x1, x0, x1], t, [cond, cond, uncond, uncond])
  guided = out_u + cfg (out_c - out_u)           (eps, or v on v-prediction)
  x0_pred, eps from guided as DDIMScheduler.step computes them
  sigma^2 = (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev) eta^2
  mean = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps
  logp = mean over elements of log N(x_next; mean, sigma^2)
  ref = the same with the adapters disabled (no gradient)
  lr_i = log clamp(exp(logp_i - ref_i), 0.9, 1.1)
  loss_k = -log sigmoid(0.1 (lr_0 - lr_1))       (image 0 preferred)
one backward per step, gradients summed over the K steps.

OUT (safetensors, float32): ref [2K] and logp [2K] (image 0's steps, then
image 1's), loss [K], and grad.<module path>.down / .up of every adapter
(peft's lora_A / lora_B gradients).

  python d3po_ref.py --dpo PIPE LORA TRAJ OUT

Diffusion-DPO (Wallace et al. 2024, as its official train script computes
it on diffusers) on the pair's final latents x0_i = traj_i[K], image 0
preferred, beta = 0.5 (beta T = 500 at T = 1000), for N = 3 draws (t_j,
eps_j) made here (t = 7, 480, 950; eps ~ N(0, I) of torch seed 11), the
same for both images:
  x_i = scheduler.add_noise(x0_i, eps, t)
  target_i = eps, or scheduler.get_velocity(x0_i, eps, t) on v-prediction
  err_i = mean over elements of (target_i - unet(x_i, t, cond))^2,
          one conditional pass (no guidance); rerr_i with adapters disabled
  loss_j = -log sigmoid(-beta T ((err_0 - rerr_0) - (err_1 - rerr_1)))
one backward of loss_j / N per draw. OUT: t [N] (as float), eps [N, C, h,
w], loss [N], grad.<module>.down / .up of the mean loss; metadata beta.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch_fix  # noqa: E402,F401  (torch 1.13's baddbmm with beta=0)
import torch.nn.functional as F  # noqa: E402


DPO_BETA = 0.5
DPO_T = (7, 480, 950)


def load(pipe_dir, lora, traj):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(load_file(lora), low_cpu_mem_usage=False, adapter_name="a")
    unet = pipe.unet
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    from peft.tuners.tuners_utils import BaseTunerLayer
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers, "no peft layers on the UNet"
    with safe_open(traj, "pt") as f:
        meta = f.metadata()
    return unet, DDIMScheduler.from_config(pipe.scheduler.config), layers, load_file(traj), meta


def adapter_grads(unet, res):
    for n, p in unet.named_parameters():
        if "lora_A" in n or "lora_B" in n:
            mod = n.split(".lora_")[0]
            res["grad.%s.%s" % (mod, "down" if "lora_A" in n else "up")] = p.grad.detach().clone()


def main(pipe_dir, lora, traj, out):
    from safetensors.torch import save_file
    unet, sched, layers, tr, meta = load(pipe_dir, lora, traj)
    K, cfg, eta = int(meta["K"]), float(meta["cfg"]), float(meta["eta"])
    sched.set_timesteps(K)
    T = sched.config.num_train_timesteps
    ac = sched.alphas_cumprod.to(torch.float64)
    final = sched.final_alpha_cumprod.to(torch.float64)
    vpred = sched.config.prediction_type == "v_prediction"
    trajs = torch.stack([tr["traj0"], tr["traj1"]])          # [2, K+1, C, h, w]
    ctx = torch.stack([tr["cond"], tr["cond"], tr["uncond"], tr["uncond"]])

    def adapters(on):
        for m in layers:
            m.enable_adapters(on)

    def logp_of(x, t, xn, prev):
        out = unet(torch.cat([x, x]), torch.tensor([float(t)] * 4), encoder_hidden_states=ctx).sample
        g = out[2:] + cfg * (out[:2] - out[2:])
        a_t = ac[t].float()
        a_p = (ac[prev] if prev >= 0 else final).float()
        if vpred:
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * g
            eps = a_t.sqrt() * g + (1 - a_t).sqrt() * x
        else:
            x0 = (x - (1 - a_t).sqrt() * g) / a_t.sqrt()
            eps = g
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        std = eta * var.sqrt()
        mean = a_p.sqrt() * x0 + (1 - a_p - std ** 2).sqrt() * eps
        lp = (-(xn.double() - mean.double()) ** 2 / (2 * std.double() ** 2) - torch.log(std.double())
              - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64)))
        return lp.mean(dim=(1, 2, 3))

    ref, logp, loss = torch.zeros(2, K), torch.zeros(2, K), torch.zeros(K)
    for k in range(K):
        t = int(sched.timesteps[k])
        prev = t - T // K
        x, xn = trajs[:, k], trajs[:, k + 1]
        with torch.no_grad():
            adapters(False)
            r = logp_of(x, t, xn, prev)
            adapters(True)
        lp = logp_of(x, t, xn, prev)
        ratio = torch.clamp(torch.exp(lp - r), 0.9, 1.1)
        lk = -F.logsigmoid(0.1 * (torch.log(ratio[0]) - torch.log(ratio[1])))
        lk.backward()
        ref[:, k], logp[:, k], loss[k] = r.float(), lp.detach().float(), lk.detach().float()
    res = {"ref": ref.reshape(-1), "logp": logp.reshape(-1), "loss": loss}
    adapter_grads(unet, res)
    save_file({k: v.contiguous() for k, v in res.items()}, out)
    print("d3po_ref: %d steps, loss %.9g" % (K, float(loss.sum())))


def main_dpo(pipe_dir, lora, traj, out):
    from safetensors.torch import save_file
    unet, sched, layers, tr, meta = load(pipe_dir, lora, traj)
    K = int(meta["K"])
    T = sched.config.num_train_timesteps
    vpred = sched.config.prediction_type == "v_prediction"
    x0 = torch.stack([tr["traj0"][K], tr["traj1"][K]])       # [2, C, h, w]
    ctx = torch.stack([tr["cond"], tr["cond"]])
    n = len(DPO_T)
    eps = torch.randn((n,) + tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(11))
    losses = torch.zeros(n)
    for j, t in enumerate(DPO_T):
        tt = torch.tensor([t, t])
        e2 = torch.stack([eps[j], eps[j]])
        x = sched.add_noise(x0, e2, tt)
        target = sched.get_velocity(x0, e2, tt) if vpred else e2

        def errs():
            pred = unet(x, tt, encoder_hidden_states=ctx).sample
            return ((target.double() - pred.double()) ** 2).mean(dim=(1, 2, 3))
        with torch.no_grad():
            for m in layers:
                m.enable_adapters(False)
            rerr = errs()
            for m in layers:
                m.enable_adapters(True)
        err = errs()
        s = (err[0] - rerr[0]) - (err[1] - rerr[1])
        lj = -F.logsigmoid(-DPO_BETA * T * s)
        (lj / n).backward()
        losses[j] = float(lj)
    res = {"t": torch.tensor(DPO_T, dtype=torch.float32), "eps": eps, "loss": losses}
    adapter_grads(unet, res)
    save_file({k: v.contiguous() for k, v in res.items()}, out, metadata={"beta": repr(DPO_BETA)})
    print("d3po_ref --dpo: %d draws, loss per draw %s" % (n, " ".join("%.6f" % v for v in losses)))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--dpo":
        main_dpo(*sys.argv[2:])
    elif len(sys.argv) == 5:
        main(*sys.argv[1:])
    else:
        sys.exit("usage: d3po_ref.py [--dpo] PIPE LORA TRAJ OUT")
