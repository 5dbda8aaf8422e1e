"""make_tiny.py - tiny random Stable Diffusion-family pipelines for tests.

Builds, with diffusers and transformers (the venv of tests/sd/venv.sh), a
pipeline folder with random weights in the shapes of one of three families,
so that d3po's loader, tokenizer, text encoder, UNet, VAE and sampler can be
compared with the reference implementation. No weights are downloaded: every
tensor is drawn here from a seeded generator. The tokenizer is CLIP's real
BPE vocabulary (tests/sd/venv.sh extracts it from the open_clip wheel),
written as vocab.json + merges.txt the way transformers' CLIPTokenizer reads
them.

  python make_tiny.py --kind sd1|sd2|bksdm --out DIR [--seed N]
                      [--dtype fp32|fp16|bf16] [--groups 8|16]
  python make_tiny.py --kind vocab --out DIR      (only tokenizer/)

Kinds (the configs the families use, at toy sizes):
  sd1    conv proj_in/proj_out, attention_head_dim an int (legacy: heads),
         quick_gelu CLIP, epsilon prediction, pad token <|endoftext|>
  sd2    linear projections, per-block head counts, gelu CLIP,
         v-prediction, upcast_attention, pad token "!"
  bksdm  no mid block (mid_block_type null), one layer per block
  mid    a mid-size SD 1.x-shaped UNet (channels 64/128/256, 2 layers per
         block, context 256, 19M parameters) with a 4-layer width-256 CLIP
         and the tiny VAE (factor 2): what 2 CPU cores can still train, for
         the cost measurements of `d3po info --train` (bench/results)
  sd15   Stable Diffusion 1.5's configs at full size (UNet 860M, VAE 84M,
         CLIP ViT-L/14 text 123M parameters), random: the GPU bench
         (tests/gpu/run.sh); a few GB and a minute or two to build
The vocabulary file is $D3PO_CLIP_VOCAB when set (the GPU machine: from
build/gpu-wheels), else the venv's.
Prints the folder on success.
"""
import argparse
import gzip
import json
import os
import sys


def bytes_to_unicode():
    """CLIP's reversible byte -> printable-character table (as in GPT-2)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(out, pad_token):
    """vocab.json, merges.txt and the tokenizer config from CLIP's BPE file."""
    vocab_gz = os.environ.get("D3PO_CLIP_VOCAB") or os.path.join(
        sys.prefix, "clip-vocab", "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(vocab_gz):
        sys.exit("make_tiny.py: %s missing (run tests/sd/venv.sh)" % vocab_gz)
    lines = gzip.open(vocab_gz).read().decode("utf-8").split("\n")
    # line 0 is a version header; CLIP keeps 49152 - 256 - 2 merges
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    d = os.path.join(out, "tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                        pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(d)
    return tok


def build(kind, out, seed, dtype, groups):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    ctx = 32
    if kind == "sd1":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64), norm_num_groups=groups,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=ctx, attention_head_dim=4, use_linear_projection=False)
        act, pad, pred = "quick_gelu", "<|endoftext|>", "epsilon"
    elif kind == "sd2":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64, 64), norm_num_groups=groups,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=ctx, attention_head_dim=(2, 4, 4), use_linear_projection=True,
            upcast_attention=True)
        act, pad, pred = "gelu", "!", "v_prediction"
    elif kind == "bksdm":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=groups,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            mid_block_type=None, cross_attention_dim=ctx, attention_head_dim=8)
        act, pad, pred = "quick_gelu", "<|endoftext|>", "epsilon"
    elif kind == "mid":
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(64, 128, 256), norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=256, attention_head_dim=8, use_linear_projection=False)
        act, pad, pred = "quick_gelu", "<|endoftext|>", "epsilon"
    elif kind == "sd15":
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)
        act, pad, pred = "quick_gelu", "<|endoftext|>", "epsilon"
    else:
        sys.exit("make_tiny.py: unknown --kind %r" % kind)
    if kind == "sd15":
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=512)
        width, inter, layers, heads = 768, 3072, 12, 12
    else:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            layers_per_block=1, norm_num_groups=groups, sample_size=16)
        width, inter, layers, heads = ctx, 37, 2, 4
        if kind == "mid":
            width, inter, layers, heads = 256, 1024, 4, 4
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
        layer_norm_eps=1e-5, projection_dim=width, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=1))
    # random weights everywhere, not the zero-initialised outputs diffusers uses
    for mod in (unet, vae, text):
        for p in mod.parameters():
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.02)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, steps_offset=1, set_alpha_to_one=False,
                          clip_sample=False, prediction_type=pred)
    os.makedirs(out, exist_ok=True)
    tok = write_tokenizer(out, pad)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    pipe.to(dtype=tdt)
    pipe.save_pretrained(out, safe_serialization=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--groups", type=int, default=8)
    a = ap.parse_args()
    if a.kind == "vocab":
        write_tokenizer(a.out, "<|endoftext|>")
    else:
        build(a.kind, a.out, a.seed, a.dtype, a.groups)
    print(a.out)


if __name__ == "__main__":
    main()
