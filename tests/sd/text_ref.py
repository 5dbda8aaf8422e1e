"""text_ref.py - the reference side of tests/test_sd_text.sh: token ids from
transformers' CLIPTokenizer (the slow one, as diffusers' pipeline loads it)
or CLIPTokenizerFast, and CLIPTextModel's last hidden state, in the plain
text formats the C tool (tests/tool_sdtext.c) prints.

  python text_ref.py ids slow|fast TOKDIR PROMPTS.jsonl   one line of ids per prompt
  python text_ref.py states PIPE PROMPTS.jsonl OUT.bin    float32 [P, 77, D], little endian
  python text_ref.py random N SEED OUT.jsonl              N random prompts from awkward characters

PROMPTS.jsonl holds one JSON string per line. The ids are what diffusers'
StableDiffusionPipeline.encode_prompt asks for: padding="max_length",
max_length=model_max_length, truncation=True.
"""
import json
import sys


def prompts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def tokenizer(kind, d):
    from transformers import CLIPTokenizer, CLIPTokenizerFast
    return (CLIPTokenizer if kind == "slow" else CLIPTokenizerFast).from_pretrained(d)


def ids(tok, ps):
    return tok(ps, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids


def main():
    mode = sys.argv[1]
    if mode == "ids":
        tok = tokenizer(sys.argv[2], sys.argv[3])
        for row in ids(tok, prompts(sys.argv[4])):
            print(" ".join(map(str, row)))
    elif mode == "states":
        import numpy as np
        import torch
        from transformers import CLIPTextModel
        pipe, ps, out = sys.argv[2], prompts(sys.argv[3]), sys.argv[4]
        tok = tokenizer("slow", pipe + "/tokenizer")
        model = CLIPTextModel.from_pretrained(pipe + "/text_encoder").eval()
        x = torch.tensor(ids(tok, ps))
        with torch.no_grad():
            # diffusers passes attention_mask only when the text encoder's
            # config sets use_attention_mask (never for SD 1.x/2.x): none here
            h = model(x)[0]
        np.asarray(h.numpy(), dtype="<f4").tofile(out)
    elif mode == "random":
        import random
        rng = random.Random(int(sys.argv[3]))
        # letters, digits, accents (composed and combining), Greek sigma,
        # the long s, CJK, Hangul jamo, emoji and joiners, punctuation,
        # apostrophes, spaces of every kind, controls, special-token text
        pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                + list(".,;:!?'\"()[]{}<>|/\\-_+=*&^%$#@~`") + ["'s", "'T", "'ll", "'Re"]
                + list("\u00e9\u00c5\u00df\u0130\u0301\u0308\u0345\u03a3\u03c3\u017f\u212a\u00bd\u2167\u0663")
                + list("\u65e5\u672c\u4e2d\u3042\u30c6\uac00\u1100\u1161\u11a8\uf900")
                + ["\U0001f642", "\U0001f3fd", "\u200d", "\ufe0f", "\u2764"]
                + list(" \t\n\r\u00a0\u3000\u2028\x01\x1b\x7f\u200b\ufffd")
                + ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", " ", " ", " "])
        with open(sys.argv[4], "w", encoding="utf-8") as f:
            for _ in range(int(sys.argv[2])):
                n = rng.choice([1, 3, 8, 20, 60, 150])
                f.write(json.dumps("".join(rng.choice(pool) for _ in range(n))) + "\n")
    else:
        sys.exit("text_ref.py: unknown mode %r" % mode)


if __name__ == "__main__":
    main()
