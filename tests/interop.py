"""interop.py - the Python side of the safetensors interop test
(tests/test_interop.sh, with tests/tool_st.c as the C side).

Runs inside a venv holding the reference `safetensors` package and numpy:

  interop.py check FILE   load FILE with safetensors.numpy and compare it
                          exactly with the fixed tensor set below
  interop.py write FILE   save the fixed set with safetensors.numpy.save_file,
                          then print the dump of FILE
  interop.py dump FILE    print the dump of FILE

The tensor set and the dump format mirror tool_st.c exactly (see the comment
at its top); the shell script diffs the two programs' dumps.
"""
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

META = {
    "d3po.arch": "base=32,levels=2",
    "format": "np",
    "note": 'héllo "wörld" \u2713 \u65e5\u672c \\ back\nline\ttab',
}

# safetensors dtype name, and the integer view that prints a value's bits
# (floats) or the value (integers) exactly.
DTYPES = {
    np.dtype(np.bool_): ("BOOL", np.uint8, "d"),
    np.dtype(np.uint8): ("U8", np.uint8, "d"),
    np.dtype(np.int8): ("I8", np.int8, "d"),
    np.dtype(np.int16): ("I16", np.int16, "d"),
    np.dtype(np.uint16): ("U16", np.uint16, "d"),
    np.dtype(np.float16): ("F16", np.uint16, "04x"),
    np.dtype(np.int32): ("I32", np.int32, "d"),
    np.dtype(np.uint32): ("U32", np.uint32, "d"),
    np.dtype(np.float32): ("F32", np.uint32, "08x"),
    np.dtype(np.float64): ("F64", np.uint64, "016x"),
    np.dtype(np.int64): ("I64", np.int64, "d"),
    np.dtype(np.uint64): ("U64", np.uint64, "d"),
}


def make_tensors():
    """The fixed set, element for element as in tool_st.c make_tensors."""
    i24 = np.arange(24)
    w = (((i24 * 37) % 101 - 50).astype(np.float32) / np.float32(8)).reshape(2, 3, 2, 2)
    b = (np.arange(5) - 2).astype(np.float32) * np.float32(0.5)
    counts = (np.arange(12, dtype=np.int64) * 1000003 - 7000000).astype(np.int32).reshape(3, 4)
    steps = np.array([((i + 1) << 40) + i for i in range(4)], dtype=np.int64)
    steps[1::2] *= -1
    mask = ((np.arange(7) * 53 + 11) & 0xFF).astype(np.uint8)
    half = (0x3C00 + np.arange(6) * 0x111).astype(np.uint16).view(np.float16).reshape(2, 3)
    return {
        "unet.conv_in.weight": w,
        "unet.conv_in.bias": b,
        "counts": counts,
        "steps": steps,
        "mask": mask,
        "half.bits": half,
        "scalar": np.array(42.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def quoted(s):
    """Per character; the same as tool_st.c's per byte, since UTF-8 encodes
    every non-ASCII character with bytes >= 0x80 only."""
    out = []
    for ch in s:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def dump(path):
    tensors = load_file(path)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    lines = []
    for name in sorted(tensors, key=lambda s: s.encode("utf-8")):
        a = tensors[name]  # (not ascontiguousarray: it turns shape () into (1,))
        dname, view, fmt = DTYPES[a.dtype]
        raw = a.tobytes()  # C order
        lines.append("tensor %s dtype=%s shape=[%s] nbytes=%d fnv1a64=%016x"
                     % (quoted(name), dname, ",".join(str(d) for d in a.shape), len(raw),
                        fnv1a64(raw)))
        vals = np.frombuffer(raw, dtype=view)
        lines.append("  values:" + "".join(" " + format(int(v), fmt) for v in vals))
    for key in sorted(meta, key=lambda s: s.encode("utf-8")):
        lines.append("meta %s = %s" % (quoted(key), quoted(meta[key])))
    return "\n".join(lines) + "\n"


def check(path):
    got = load_file(path)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    want = make_tensors()
    bad = []
    if set(got) != set(want):
        bad.append("names %s, expected %s" % (sorted(got), sorted(want)))
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            continue
        if g.dtype != w.dtype or g.shape != w.shape or g.tobytes() != w.tobytes():
            bad.append("tensor %r: got %s %s, expected %s %s (or bytes differ)"
                       % (name, g.dtype, g.shape, w.dtype, w.shape))
    if meta != META:
        bad.append("metadata %r, expected %r" % (meta, META))
    for b in bad:
        print("interop.py check: %s: %s" % (path, b), file=sys.stderr)
    if not bad:
        print("interop.py check: %s: %d tensors and %d metadata entries match"
              % (path, len(want), len(META)))
    return 1 if bad else 0


def main(argv):
    if len(argv) != 3 or argv[1] not in ("check", "write", "dump"):
        print("usage: interop.py check|write|dump FILE", file=sys.stderr)
        return 2
    mode, path = argv[1], argv[2]
    if mode == "check":
        return check(path)
    if mode == "write":
        save_file(make_tensors(), path, metadata=META)
    sys.stdout.write(dump(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
