#!/usr/bin/env python3
"""learning_report.py OUTDIR... - the learning curves that bench/learning.sh
wrote, as text: per run, the blind eval win rate (with its 95% Wilson
interval) after each chunk of labels, and the per-round oracle score and
drift from the session's metrics.jsonl. Standard library only."""
import glob
import json
import os
import sys


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


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: learning_report.py OUTDIR...")
    main(sys.argv[1:])
