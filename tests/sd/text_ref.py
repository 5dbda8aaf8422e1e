"""text_ref.py - the reference side of tests/test_sd_text.sh: token ids from
transformers' CLIPTokenizer (the slow one, as diffusers' pipeline loads it)
or CLIPTokenizerFast, and CLIPTextModel's last hidden state, in the plain
text formats the C tool (tests/tool_sdtext.c) prints.

  python text_ref.py ids slow|fast TOKDIR PROMPTS.jsonl   one line of ids per prompt
  python text_ref.py refs DIR sd1,sd2 PROMPTS.jsonl...    in DIR, for each pipeline DIR/K:
        K.NAME.slow.ids, K.NAME.fast.ids   one line of ids per prompt of NAME.jsonl
        K.states.bin                       float32 [P, 77, D] little endian, first corpus
                                           (when K has a text_encoder/)
  python text_ref.py random N SEED OUT.jsonl              N random prompts from awkward characters, 3 long ones
  python text_ref.py compare C.bin REF.bin NAME           states within 1e-5 + 1e-5 |ref|

PROMPTS.jsonl holds one JSON string per line. The ids are what diffusers'
StableDiffusionPipeline.encode_prompt asks for: padding="max_length",
max_length=model_max_length, truncation=True.
"""
import json
import os
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
    elif mode == "refs":
        # everything test_sd_text.sh compares, in one process (torch and
        # transformers take seconds to import): for each pipeline K and
        # corpus C, OUT/K.C.slow.ids, OUT/K.C.fast.ids; OUT/K.states.bin for the first corpus
        import numpy as np
        import torch
        from transformers import CLIPTextModel
        out, pipes, corpora = sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
        for k in pipes:
            pipe = os.path.join(out, k)
            for kind in ("slow", "fast"):
                tok = tokenizer(kind, pipe + "/tokenizer")
                for c in corpora:
                    name = os.path.basename(c).rsplit(".", 1)[0]
                    with open(os.path.join(out, "%s.%s.%s.ids" % (k, name, kind)), "w") as f:
                        for row in ids(tok, prompts(c)):
                            f.write(" ".join(map(str, row)) + "\n")
            if not os.path.isdir(pipe + "/text_encoder"):
                continue
            tok = tokenizer("slow", pipe + "/tokenizer")
            model = CLIPTextModel.from_pretrained(pipe + "/text_encoder").eval()
            with torch.no_grad():
                # diffusers passes attention_mask only when the text encoder's
                # config sets use_attention_mask (never for SD 1.x/2.x): none here
                h = model(torch.tensor(ids(tok, prompts(corpora[0]))))[0]
            np.asarray(h.numpy(), dtype="<f4").tofile(os.path.join(out, k + ".states.bin"))
    elif mode == "compare":
        # float32 states, C against transformers: |c - ref| <= 1e-5 + 1e-5 |ref|
        # (the reason is in tests/test_sd_text.sh)
        import numpy as np
        c, ref, what = np.fromfile(sys.argv[2], "<f4"), np.fromfile(sys.argv[3], "<f4"), sys.argv[4]
        if c.shape != ref.shape or c.size == 0:
            sys.exit("test_sd_text: %s: %d floats from C, %d from transformers" % (what, c.size, ref.size))
        err = np.abs(c.astype(np.float64) - ref)
        bad = ~(err <= 1e-5 + 1e-5 * np.abs(ref))
        print("test_sd_text: %s: text-encoder states (%d floats, max |ref| %.3g): max abs error %.3g, "
              "%d over 1e-5 + 1e-5|ref|" % (what, c.size, np.abs(ref).max(), err.max(), bad.sum()))
        if bad.any():
            i = int(np.argmax(np.where(np.isfinite(err), err, np.inf)))
            sys.exit("test_sd_text: %s: worst at float %d: C %.7g, transformers %.7g" % (what, i, c[i], ref[i]))
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
            # and long ones: truncation inside one 10k-letter word, 5000 words, 10k ideographs
            for p in ("x" * 10000, " ".join(["word"] * 5000), "".join(chr(0x4E00 + i) for i in range(10000))):
                f.write(json.dumps(p) + "\n")
    else:
        sys.exit("text_ref.py: unknown mode %r" % mode)


if __name__ == "__main__":
    main()
