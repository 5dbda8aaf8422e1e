"""mha_torch.py - the PyTorch yardstick of bench_mha.c: multi-head attention
with the explicit softmax matrix (q k^T / sqrt(dh), softmax, @ v), forward
+ backward, fp32 on the CPU.

    /usr/bin/python3 bench/mha_torch.py N T dh heads threads reps

Prints `mha-torch ...: <ms> ms` (median of reps after one warm-up) and the
peak size of the probability matrix it holds."""
import sys
import time

import torch


def main():
    N, T, dh, H, threads, reps = (int(a) for a in sys.argv[1:7])
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    q, k, v, r = (torch.rand(N, H, T, dh, generator=g) - 0.5 for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        p = torch.softmax(q @ k.transpose(-1, -2) / dh ** 0.5, dim=-1)
        o = p @ v
        o.backward(r)
        times.append(time.perf_counter() - t0)
        q.grad = k.grad = v.grad = None
    times = sorted(times[1:])
    print("mha-torch N%d T%d dh%d heads%d threads%d: %.2f ms (holds %d MiB of probabilities)"
          % (N, T, dh, H, threads, 1e3 * times[len(times) // 2], N * H * T * T * 4 >> 20))


if __name__ == "__main__":
    main()
