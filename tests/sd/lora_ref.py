"""lora_ref.py - the diffusers/peft side of tests/test_lora.sh.

  python lora_ref.py image MODEL LATENTS PROMPT K CFG OUT.png [LORA]
      diffusers' StableDiffusionPipeline (DDIMScheduler from the folder's
      config, negative prompt "", eta 0) from LATENTS, with LORA loaded by
      pipe.load_lora_weights(state dict, low_cpu_mem_usage=False) when given
  python lora_ref.py make MODEL OUT_DIR SEED
      a random LoRA made by peft on the UNet (rank 4, alpha 4, to_q, to_k,
      to_v, to_out.0; lora_B drawn N(0, 0.3^2) so it is not zero), saved
      by StableDiffusionPipeline.save_lora_weights as
      OUT_DIR/pytorch_lora_weights.safetensors
  python lora_ref.py grad MODEL LORA OUT
      the adapter gradients of loss = sum(eps * r) through diffusers' UNet
      with LORA loaded (peft layers), by autograd in float32, on random x
      [2,4,8,8], t (801, 1), context [2,77,D], r: OUT holds x, t, context,
      r, eps and "grad.<module path>.down" / ".up" of every adapter
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pipeline(model):
    import torch
    from sample_ref import patch_baddbmm
    patch_baddbmm(torch)
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(model, latents, prompt, K, cfg, out, lora=None):
    from safetensors.torch import load_file
    pipe = pipeline(model)
    if lora:
        scale = 1.0
        if ":" in lora:
            lora, scale = lora.rsplit(":", 1)
        pipe.load_lora_weights(load_file(lora), low_cpu_mem_usage=False, adapter_name="a")
        pipe.set_adapters(["a"], [float(scale)])
    lat = load_file(latents)["latents"]
    img = pipe(prompt, negative_prompt="", latents=lat.clone(), num_inference_steps=K,
               guidance_scale=cfg, eta=0.0, output_type="pil").images[0]
    img.save(out)


def make(model, out, seed):
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from diffusers import StableDiffusionPipeline
    pipe = pipeline(model)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    for n, p in pipe.unet.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              safe_serialization=True)


def grad(model, lora, out):
    import torch
    from safetensors.torch import load_file, save_file
    pipe = pipeline(model)
    pipe.load_lora_weights(load_file(lora), low_cpu_mem_usage=False, adapter_name="a")
    torch.set_grad_enabled(True)
    unet = pipe.unet
    g = torch.Generator().manual_seed(11)
    D = unet.config.cross_attention_dim
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([801.0, 1.0])
    ctx = torch.randn(2, 77, D, generator=g)
    r = torch.randn(2, 4, 8, 8, generator=g)
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    eps = unet(x, t, encoder_hidden_states=ctx).sample
    (eps * r).sum().backward()
    res = {"x": x, "t": t, "context": ctx, "r": r, "eps": eps.detach()}
    for n, p in unet.named_parameters():
        if "lora_A" in n or "lora_B" in n:
            mod = n.split(".lora_")[0]
            res["grad.%s.%s" % (mod, "down" if "lora_A" in n else "up")] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in res.items()}, out)


if __name__ == "__main__":
    c = sys.argv[1]
    if c == "image":
        image(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7],
              sys.argv[8] if len(sys.argv) > 8 else None)
    elif c == "grad":
        grad(sys.argv[2], sys.argv[3], sys.argv[4])
    elif c == "make":
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: lora_ref.py image MODEL LATENTS PROMPT K CFG OUT [LORA] | make MODEL OUT_DIR SEED")
