"""half_ref.py - reference conversions for tests/test_half.c, from numpy
(float16) and PyTorch (bfloat16), written to stdout as little-endian binary:

  65536 x u32   float32 bits of every half bit pattern (numpy astype)
  u32 N
  N x u32       float32 inputs: every half and bfloat16 value, the midpoints
                between neighbours and one float32 ulp either side, the
                overflow and underflow edges, inf, NaN, random bit patterns
  N x u16       numpy's float16 of each input
  N x u16       PyTorch's bfloat16 of each input

Run with Debian's /usr/bin/python3 (numpy, torch)."""
import sys

import numpy as np
import torch

halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
f16_to_32 = halves.astype(np.float32)

ins = [f16_to_32.view(np.uint32)]
# midpoints between neighbouring finite halves (exact in float32), and a
# float32 ulp either side: the ties and the nearest non-ties
fin = np.sort(np.unique(f16_to_32[np.isfinite(f16_to_32)].astype(np.float64)))
mid = ((fin[1:] + fin[:-1]) / 2).astype(np.float32)
ins += [mid.view(np.uint32), np.nextafter(mid, np.float32(np.inf)).view(np.uint32),
        np.nextafter(mid, np.float32(-np.inf)).view(np.uint32)]
# bfloat16: every pattern, the tie above it, and either side of the tie
b = np.arange(65536, dtype=np.uint32) << 16
ins += [b, b | 0x8000, b | 0x7FFF, b | 0x8001]
edges = np.array([65504.0, 65519.99, 65520.0, 65536.0, 1e30, 2.0**-24, 2.0**-25, 2.0**-26,
                  1.5 * 2.0**-25, 2.0**-14, 3.4028235e38, np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0],
                 dtype=np.float32)
ins += [edges.view(np.uint32), np.array([0x7F7FFFFF, 0x7F7F8000, 0xFF7F8000, 0x00000001, 0x807FFFFF,
                                        0x7FC00000, 0x7F800001, 0xFFFFFFFF], dtype=np.uint32)]
ins.append(np.random.default_rng(1).integers(0, 2**32, size=300000, dtype=np.uint64).astype(np.uint32))
x = np.concatenate(ins).astype("<u4")

with np.errstate(over="ignore", invalid="ignore"):
    f16 = x.view(np.float32).astype(np.float16).view("<u2")
bf16 = torch.from_numpy(x.view(np.float32).copy()).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")

out = sys.stdout.buffer
out.write(f16_to_32.view("<u4").tobytes())
out.write(np.array([x.size], dtype="<u4").tobytes())
out.write(x.tobytes())
out.write(f16.tobytes())
out.write(bf16.tobytes())
