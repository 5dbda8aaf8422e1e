#!/usr/bin/env python3
"""curves_cost.py - what a learning curve's training cost the images: the
diversity and the realism of fresh samples of a tuned session against its
base model, and a grid of them to look at (issue 17 item 4).

usage: curves_cost.py [--d3po BIN] [--config FILE] [--count N] [--seed S]
                      [--grid FILE.png] [--jsonl FILE] PROMPTS SESSION...

PROMPTS is a comma-separated list of class names. For the base model of
the first SESSION (DIR/base.safetensors) and for every SESSION's latest
model, `d3po sample` draws COUNT images (default 8) of each prompt from
--seed S (default 2000; the same starting and step noise for every model),
and this prints per model:
  diversity  the mean RMS distance (0..255 units) between two different
             samples of one prompt, averaged over the prompts, and its
             ratio to the base's (the issue's bar: >= 0.8x);
  realism    `d3po eval --oracle realism --pairs 32 --seed 1000 --json`
             of the session (the project's realism oracle: mean RMS
             distance to the 5 nearest data set images of the prompt's
             class after a 3x3 blur, reported as a negative score, higher =
             more realistic): the base's and the tuned model's mean score
             over the same 32 pairs, and the blind win rate of the tuned
             model under that judge (the bar: realism no worse than the
             base, i.e. a win rate not clearly under 50%).
The data set folder for realism is $D3PO_DATASET (d3po dataset emoji).
--grid writes one PNG: a row per prompt, the base's COUNT samples on the
left, then each session's, in the order given, a gap between models,
every pixel drawn 2x2. --jsonl appends one JSON object per session.
Needs numpy and Pillow (any python that has them, e.g. the Stable
Diffusion reference venv); the d3po runs use --config FILE (default none).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"curves_cost: {' '.join(cmd)} failed ({r.returncode}): "
                 f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'no message'}")
    return r.stdout


def samples(args, src, prompt, tmp):
    """COUNT images of PROMPT from SRC (["--model", F] or ["--session", D]):
    float array [COUNT, H, W, 3] in 0..255, in file order (image index)."""
    out = tempfile.mkdtemp(dir=tmp)
    cmd = [args.d3po, "sample", *src, "--prompt", prompt, "--seed", str(args.seed),
           "--count", str(args.count), "--out", out, "--threads", "1"]
    if args.config:
        cmd += ["--config", args.config]
    run(cmd)
    files = glob.glob(os.path.join(out, "*.png"))
    # DIR/<prompt>-<seed>-<i>.png: order by i
    files.sort(key=lambda f: int(f.rsplit("-", 1)[1][: -len(".png")]))
    if len(files) != args.count:
        sys.exit(f"curves_cost: {out}: {len(files)} PNGs, expected {args.count}")
    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) for f in files])


def diversity(imgs):
    """Mean RMS distance between two different images of imgs [N, H, W, 3]."""
    n = len(imgs)
    flat = imgs.reshape(n, -1)
    d = [np.sqrt(np.mean((flat[i] - flat[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(d))


def realism(args, session):
    cmd = [args.d3po, "eval", "--session", session, "--oracle", "realism", "--pairs", "32",
           "--seed", "1000", "--json", "--threads", "1"]
    if args.config:
        cmd += ["--config", args.config]
    return json.loads(run(cmd))


def grid(blocks, path):
    """blocks: per model a list (per prompt) of [COUNT, H, W, 3] arrays."""
    rows = []
    gap = 6
    for p in range(len(blocks[0])):
        parts = []
        for m, b in enumerate(blocks):
            if m:
                parts.append(np.full((b[p].shape[1], gap, 3), 255.0))
            parts.append(np.concatenate(list(b[p]), axis=1))
        rows.append(np.concatenate(parts, axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255.0))
    img = np.concatenate(rows[:-1], axis=0).clip(0, 255).astype(np.uint8)
    img = img.repeat(2, axis=0).repeat(2, axis=1)
    Image.fromarray(img).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d3po", default="build/d3po")
    ap.add_argument("--config")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--grid")
    ap.add_argument("--jsonl")
    ap.add_argument("prompts")
    ap.add_argument("sessions", nargs="+")
    args = ap.parse_args()
    if args.count < 2:
        sys.exit("curves_cost: --count must be at least 2 (diversity compares two samples)")
    prompts = [p for p in args.prompts.split(",") if p]
    base = os.path.join(args.sessions[0], "base.safetensors")
    if not os.path.isfile(base):
        sys.exit(f"curves_cost: {base}: no base model (is {args.sessions[0]} a session?)")
    with tempfile.TemporaryDirectory() as tmp:
        blocks = [[samples(args, ["--model", base], p, tmp) for p in prompts]]
        div_base = float(np.mean([diversity(b) for b in blocks[0]]))
        print(f"base {base}: diversity {div_base:.2f}")
        for s in args.sessions:
            b = [samples(args, ["--session", s], p, tmp) for p in prompts]
            blocks.append(b)
            div = float(np.mean([diversity(x) for x in b]))
            r = realism(args, s)
            row = {"session": s, "diversity": div, "diversity_base": div_base,
                   "diversity_ratio": div / div_base,
                   "realism_base": r.get("score_base"), "realism_tuned": r.get("score_tuned"),
                   "realism_win_rate": r["win_rate"], "realism_ci95": r["ci95"],
                   "prompts": prompts, "count": args.count, "seed": args.seed}
            print(f"{s}: diversity {div:.2f} ({row['diversity_ratio']:.2f}x base); realism "
                  f"base {row['realism_base']:.2f} tuned {row['realism_tuned']:.2f}, "
                  f"win rate {r['win_rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if args.grid:
            grid(blocks, args.grid)
            print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
