"""load_ref.py - the Python side of tests/test_sd_load.sh.

  python load_ref.py make DIR     tiny pipelines and their variants in DIR:
      sd1 (fp32), sd1-fp16, sd1-bf16, sd2 (fp32, v-prediction), bksdm,
      sd15 (SD 1.5's structure at toy widths: four levels, upsamplers after
      transformers, 32 groups) and its single file single15/sd15.safetensors;
      sd1-shards (the UNet split into two shards with an index we write),
      sd1-oldvae (the VAE's attention under the old query/key/value/
      proj_attn names), sd1.safetensors (a single-file LDM checkpoint made
      by OUR inverse mapping diffusers -> LDM, with 1x1-conv VAE attention
      weights, a position_ids buffer, EMA and schedule tensors beside it,
      and a tokenizer/ folder next to it)
  python load_ref.py check MODEL DUMP [MODEL DUMP ...]
      compares every tensor d3po loaded (DUMP/<part>.safetensors from
      tool_sdload dump) with what diffusers/transformers load from MODEL;
      for a single file (MODEL a file) the reference is diffusers' own LDM conversion
      (convert_ldm_unet/vae/clip_checkpoint), not our inverse mapping.
      Exact equality: F16/BF16 -> F32 is exact, renaming moves no bits.
  python load_ref.py plan MODEL K   diffusers' DDIMScheduler plan, as
      tool_sdload plan prints it
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load_st(path):
    from safetensors.torch import load_file
    return load_file(path)


def save_st(sd, path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, path)


# ---- our inverse mapping: diffusers -> LDM names --------------------------

def unet_to_ldm(sd, cfg):
    lpb = cfg["layers_per_block"]
    att_up = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        stem, leaf = ".".join(p[:-1]), p[-1]
        if stem in fixed:
            n = fixed[stem] + "." + leaf
        elif p[0] == "down_blocks":
            b, kind = int(p[1]), p[2]
            if kind == "resnets":
                n = "input_blocks.%d.0.%s.%s" % (1 + b * (lpb + 1) + int(p[3]), res[p[4]], ".".join(p[5:]))
            elif kind == "attentions":
                n = "input_blocks.%d.1.%s" % (1 + b * (lpb + 1) + int(p[3]), ".".join(p[4:]))
            else:  # downsamplers.0.conv.X
                n = "input_blocks.%d.0.op.%s" % (1 + b * (lpb + 1) + lpb, leaf)
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                n = "middle_block.%d.%s.%s" % (2 * int(p[2]), res[p[3]], ".".join(p[4:]))
            else:
                n = "middle_block.1.%s" % ".".join(p[3:])
        elif p[0] == "up_blocks":
            b, kind = int(p[1]), p[2]
            if kind == "resnets":
                n = "output_blocks.%d.0.%s.%s" % (b * (lpb + 1) + int(p[3]), res[p[4]], ".".join(p[5:]))
            elif kind == "attentions":
                n = "output_blocks.%d.1.%s" % (b * (lpb + 1) + int(p[3]), ".".join(p[4:]))
            else:
                n = "output_blocks.%d.%d.conv.%s" % (b * (lpb + 1) + lpb, 2 if att_up[b] else 1, leaf)
        else:
            raise SystemExit("load_ref.py: no LDM name for unet tensor %s" % k)
        out["model.diffusion_model." + n] = v
    return out


def vae_to_ldm(sd, cfg):
    nup = len(cfg["up_block_types"])
    att = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            n = k
        elif p[1] in ("conv_in", "conv_out"):
            n = k
        elif p[1] == "conv_norm_out":
            n = "%s.norm_out.%s" % (p[0], p[2])
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2])
            lvl = i if p[1] == "down_blocks" else nup - 1 - i
            side = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                sub = "nin_shortcut" if p[5] == "conv_shortcut" else p[5]
                n = "%s.%s.%d.block.%s.%s.%s" % (p[0], side, lvl, p[4], sub, p[6])
            else:
                n = "%s.%s.%d.%ssample.conv.%s" % (p[0], side, lvl, side, p[-1])
        elif p[1] == "mid_block" and p[2] == "resnets":
            sub = "nin_shortcut" if p[4] == "conv_shortcut" else p[4]
            n = "%s.mid.block_%d.%s.%s" % (p[0], int(p[3]) + 1, sub, p[-1])
        elif p[1] == "mid_block":
            n = "%s.mid.attn_1.%s.%s" % (p[0], att[p[4]], p[-1])
            if p[4] != "group_norm" and p[-1] == "weight":
                v = v.reshape(v.shape[0], v.shape[1], 1, 1)  # LDM's 1x1 convolutions
        else:
            raise SystemExit("load_ref.py: no LDM name for vae tensor %s" % k)
        out["first_stage_model." + n] = v
    return out


def build_sd15(out):
    """SD 1.5's structure at toy widths: four levels (three cross-attention
    down blocks, a plain one; upsamplers after transformers), two layers per
    block, a four-level VAE with two resnets per level, 32 groups as SD."""
    import torch
    import make_tiny
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 32, 64, 64), norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, norm_num_groups=32, sample_size=64)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    for mod in (unet, vae, text):
        for p in mod.parameters():
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.02)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    os.makedirs(out, exist_ok=True)
    tok = make_tiny.write_tokenizer(out, "<|endoftext|>")
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out, safe_serialization=True)


def single_file(src, out):
    """A single-file LDM checkpoint of folder src by our inverse mapping,
    with a tokenizer/ folder beside it."""
    import torch
    cfg = {c: json.load(open(os.path.join(src, c, "config.json"))) for c in ("unet", "vae")}
    ck = {}
    ck.update(unet_to_ldm(load_st(os.path.join(src, "unet", "diffusion_pytorch_model.safetensors")), cfg["unet"]))
    ck.update(vae_to_ldm(load_st(os.path.join(src, "vae", "diffusion_pytorch_model.safetensors")), cfg["vae"]))
    for k, v in load_st(os.path.join(src, "text_encoder", "model.safetensors")).items():
        ck["cond_stage_model.transformer." + k] = v
    ck["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).reshape(1, 77)
    ck["betas"] = torch.linspace(0.00085, 0.012, 1000)
    ck["model_ema.decay"] = torch.tensor(0.9999)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_st(ck, out)
    tk = os.path.join(os.path.dirname(out), "tokenizer")
    if not os.path.isdir(tk):
        shutil.copytree(os.path.join(src, "tokenizer"), tk)
    return ck


def make(d):
    import make_tiny
    for name, kind, dtype in (("sd1", "sd1", "fp32"), ("sd1-fp16", "sd1", "fp16"),
                              ("sd1-bf16", "sd1", "bf16"), ("sd2", "sd2", "fp32"),
                              ("bksdm", "bksdm", "fp32")):
        make_tiny.build(kind, os.path.join(d, name), 0, dtype, 8)
    build_sd15(os.path.join(d, "sd15"))
    single_file(os.path.join(d, "sd15"), os.path.join(d, "single15", "sd15.safetensors"))
    src = os.path.join(d, "sd1")

    # the UNet in two shards with an index (diffusers' sharded layout)
    sh = os.path.join(d, "sd1-shards")
    shutil.copytree(src, sh)
    up = os.path.join(sh, "unet", "diffusion_pytorch_model.safetensors")
    sd = load_st(up)
    os.remove(up)
    keys = sorted(sd)
    wm = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        fn = "diffusion_pytorch_model-%05d-of-00002.safetensors" % (i + 1)
        from safetensors.torch import save_file
        save_file({k: sd[k].contiguous() for k in part}, os.path.join(sh, "unet", fn), metadata={"format": "pt"})
        wm.update({k: fn for k in part})
    with open(up + ".index.json", "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * 4 for v in sd.values())},
                   "weight_map": wm}, f)

    # the old diffusers VAE attention names
    ov = os.path.join(d, "sd1-oldvae")
    shutil.copytree(src, ov)
    vp = os.path.join(ov, "vae", "diffusion_pytorch_model.safetensors")
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    vs = {}
    for k, v in load_st(vp).items():
        for a, b in old.items():
            if ".attentions." in k and "." + a + "." in k:
                k = k.replace("." + a + ".", "." + b + ".")
        vs[k] = v
    save_st(vs, vp)

    # a single-file SD 1.x checkpoint by our inverse mapping
    ck = single_file(src, os.path.join(d, "single", "sd1.safetensors"))
    broken(d, src, ck)
    print(d)


def broken(d, src, ck):
    """Copies of sd1 with one thing wrong each (the error cases)."""
    import torch
    b = os.path.join(d, "bad")
    os.makedirs(b)

    def cp(name):
        out = os.path.join(b, name)
        shutil.copytree(src, out)
        return out
    os.remove(os.path.join(cp("noconfig"), "unet", "config.json"))
    up = os.path.join(cp("shape"), "unet", "diffusion_pytorch_model.safetensors")
    sd = load_st(up)
    sd["conv_in.weight"] = sd["conv_in.weight"][:, :3].contiguous()
    save_st(sd, up)
    up = os.path.join(cp("extra"), "unet", "diffusion_pytorch_model.safetensors")
    sd = load_st(up)
    sd["add_embedding.linear_1.weight"] = torch.zeros(4, 4)
    save_st(sd, up)
    up = os.path.join(cp("missing"), "unet", "diffusion_pytorch_model.safetensors")
    sd = load_st(up)
    del sd["mid_block.resnets.1.conv2.bias"]
    save_st(sd, up)
    vp = os.path.join(cp("inf"), "vae", "diffusion_pytorch_model.safetensors")
    sd = load_st(vp)
    sd = {k: v.half() for k, v in sd.items()}
    sd["decoder.conv_out.bias"][1] = float("inf")
    save_st(sd, vp)
    mi = os.path.join(cp("sdxl"), "model_index.json")
    j = json.load(open(mi))
    j["_class_name"] = "StableDiffusionXLPipeline"
    j["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    json.dump(j, open(mi, "w"))
    sc = os.path.join(cp("sched"), "scheduler", "scheduler_config.json")
    j = json.load(open(sc))
    j["prediction_type"] = "sample"
    json.dump(j, open(sc, "w"))
    up = os.path.join(cp("trunc"), "unet", "diffusion_pytorch_model.safetensors")
    data = open(up, "rb").read()
    open(up, "wb").write(data[:-100])
    up = os.path.join(cp("lying"), "unet", "diffusion_pytorch_model.safetensors")
    data = bytearray(open(up, "rb").read())
    n = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + n])
    k = sorted(hdr)[1]  # a tensor, not __metadata__ (sorted first)
    hdr[k]["data_offsets"][1] += 4
    h = json.dumps(hdr).encode()
    h += b" " * (n - len(h)) if len(h) <= n else b""
    open(up, "wb").write(len(h).to_bytes(8, "little") + h + bytes(data[8 + n:]))
    ud = os.path.join(cp("pickle"), "unet")
    os.rename(os.path.join(ud, "diffusion_pytorch_model.safetensors"),
              os.path.join(ud, "diffusion_pytorch_model.bin"))
    sh = os.path.join(d, "sd1-shards", "unet", "diffusion_pytorch_model.safetensors.index.json")
    ud = os.path.join(b, "hostile-index", "unet")
    shutil.copytree(os.path.join(d, "sd1-shards"), os.path.join(b, "hostile-index"))
    j = json.load(open(sh))
    j["weight_map"]["conv_in.weight"] = "../../sd1/unet/diffusion_pytorch_model.safetensors"
    json.dump(j, open(os.path.join(ud, os.path.basename(sh)), "w"))
    # single files: SD 2.x (OpenCLIP), SDXL, and no tokenizer beside the file
    one = {"model.diffusion_model.conv_in.weight": torch.zeros(1)}
    save_st(dict(one, **{"cond_stage_model.model.token_embedding.weight": torch.zeros(1)}),
            os.path.join(b, "sd2-single.safetensors"))
    save_st(dict(one, **{"conditioner.embedders.0.transformer.x": torch.zeros(1)}),
            os.path.join(b, "sdxl-single.safetensors"))
    save_st(ck, os.path.join(b, "notok.safetensors"))


# ---- comparison ------------------------------------------------------------

def ignorable(part, name):
    if part == "vae":
        return name.startswith("encoder.") or name.startswith("quant_conv.")
    return part == "text_encoder" and name == "text_model.embeddings.position_ids"


def reference(model, single):
    import torch
    if single:
        from diffusers.loaders import single_file_utils as su
        ck = load_st(model)
        folder = os.path.join(os.path.dirname(os.path.dirname(model)),
                              "sd15" if "sd15" in os.path.basename(model) else "sd1")
        cfg = {c: json.load(open(os.path.join(folder, c, "config.json"))) for c in ("unet", "vae")}
        return {"unet": su.convert_ldm_unet_checkpoint(ck, cfg["unet"]),
                "vae": su.convert_ldm_vae_checkpoint(ck, cfg["vae"]),
                "text_encoder": su.convert_ldm_clip_checkpoint(ck)}
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    return {"unet": UNet2DConditionModel.from_pretrained(os.path.join(model, "unet")).state_dict(),
            "vae": AutoencoderKL.from_pretrained(os.path.join(model, "vae")).state_dict(),
            "text_encoder": CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder")).state_dict()}


def check(model, dump, single):
    import torch
    ref = reference(model, single)
    bad = 0
    total = 0
    for part, rsd in ref.items():
        got = load_st(os.path.join(dump, part + ".safetensors"))
        want = {k: v for k, v in rsd.items() if not ignorable(part, k)}
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        if missing or extra:
            print("  %s: names differ: missing %s, extra %s" % (part, missing[:4], extra[:4]))
            bad += 1
            continue
        for k, v in want.items():
            r = v.float().reshape(got[k].shape) if v.numel() == got[k].numel() else None
            if r is None or not torch.equal(got[k], r):
                print("  %s: tensor %s differs (shape %s vs %s)" % (part, k, tuple(got[k].shape), tuple(v.shape)))
                bad += 1
                break
        total += len(want)
    print("  %s: %d tensors compared exactly with %s%s" % (
        os.path.basename(model), total, "diffusers' LDM conversion" if single else "diffusers/transformers",
        "" if not bad else ", %d MISMATCHES" % bad))
    return 1 if bad else 0


def plan(model, K):
    from diffusers import DDIMScheduler
    s = DDIMScheduler.from_pretrained(os.path.join(model, "scheduler"))
    s.set_timesteps(K)
    ac = s.alphas_cumprod
    ratio = s.config.num_train_timesteps // K
    for t in s.timesteps.tolist():
        pt = t - ratio
        ap = ac[pt] if pt >= 0 else s.final_alpha_cumprod
        print("%d %.9g %.9g" % (t, float(ac[t]), float(ap)))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "check":
        a = sys.argv[2:]
        sys.exit(max(check(a[i], a[i + 1], os.path.isfile(a[i])) for i in range(0, len(a) - 1, 2)))
    elif cmd == "plan":
        plan(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: load_ref.py make DIR | check MODEL DUMP [MODEL DUMP ...] | plan MODEL K")
