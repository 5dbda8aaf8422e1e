#!/usr/bin/env python3
"""learning_report.py OUTDIR... - the learning curves that bench/learning.sh
wrote, as text: per run, the blind eval win rate (with its 95% Wilson
interval) after each chunk of labels, and the per-round oracle score and
drift from the session's metrics.jsonl; then, per directory and oracle, the
curve over seeds: at each label count the win rate of every seed, their
mean, the pooled win rate of all seeds' pairs with its 95% Wilson interval,
and the labels each seed needed to reach a 70% win rate. Standard library
only."""
import glob
import json
import math
import os
import re
import sys


def wilson(wins, n, z=1.959964):
    """95% Wilson score interval of a proportion wins/n (ties counted half)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def summary(dirs):
    for d in dirs:
        runs = {}
        for ev in sorted(glob.glob(os.path.join(d, "*.evals.jsonl"))):
            m = re.match(r"(.*)-s(\d+)$", os.path.basename(ev)[: -len(".evals.jsonl")])
            if not m:
                continue
            rows = [json.loads(l) for l in open(ev)]
            runs.setdefault(m.group(1), {})[int(m.group(2))] = {r["labels"]: r["eval"] for r in rows}
        for oracle, seeds in sorted(runs.items()):
            print(f"curve {os.path.join(d, oracle)} (seeds {', '.join(map(str, sorted(seeds)))})")
            print("  labels  win rate per seed          mean   pooled [95% Wilson]")
            for lab in sorted({l for s in seeds.values() for l in s}):
                have = [(sd, seeds[sd][lab]) for sd in sorted(seeds) if lab in seeds[sd]]
                rates = [e["win_rate"] for _, e in have]
                w = sum(e["wins"] + 0.5 * e["ties"] for _, e in have)
                n = sum(e["pairs"] for _, e in have)
                lo, hi = wilson(w, n)
                per = " ".join(f"s{sd}:{e['win_rate']:.2f}" for sd, e in have)
                print(f"  {lab:6d}  {per:26s} {sum(rates) / len(rates):.3f}  "
                      f"{w / n:.3f} [{lo:.3f}, {hi:.3f}]")
            reach = []
            for sd in sorted(seeds):
                hit = [l for l in sorted(seeds[sd]) if seeds[sd][l]["win_rate"] >= 0.7]
                reach.append(f"s{sd}: {hit[0] if hit else 'not within ' + str(max(seeds[sd]))}")
            print("  labels to a 70% win rate: " + ", ".join(reach))
            print()


def main(dirs):
    for d in dirs:
        for ev in sorted(glob.glob(os.path.join(d, "*.evals.jsonl"))):
            run = os.path.basename(ev)[: -len(".evals.jsonl")]
            print(f"run {os.path.join(d, run)}")
            for line in open(ev):
                r = json.loads(line)
                e = r["eval"]
                print(f"  after {r['labels']:3d} labels: win rate {e['win_rate']:.3f} "
                      f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]  "
                      f"({e['wins']}-{e['losses']}-{e['ties']} of {e['pairs']}; "
                      f"score base {e.get('score_base', float('nan')):.1f}, "
                      f"tuned {e.get('score_tuned', float('nan')):.1f})")
            mf = os.path.join(d, run, "metrics.jsonl")
            if os.path.exists(mf):
                rows = [json.loads(l) for l in open(mf)]
                print("  round labels   score    drift")
                for m in rows:
                    s = m.get("score")
                    dr = m.get("drift_logratio")
                    print(f"  {m['round']:5d} {m.get('total_labels', 0):6d} "
                          f"{s if s is None else round(s, 1)!s:>8} "
                          f"{'-' if dr is None else f'{dr:.3f}':>8}")
            print()
    summary(dirs)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: learning_report.py OUTDIR...")
    main(sys.argv[1:])
