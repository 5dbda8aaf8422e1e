#!/usr/bin/python3
"""tui_latency.py - keypress-to-next-pair latency of the labeling screen.

Runs `d3po label` in a pseudo-terminal (120x40, half-block graphics) on a
session of the yardstick architecture, waits until pairs are queued ahead,
then presses the "left is better" key repeatedly and measures the time from
the key to the next pair fully drawn: its text (doupdate) and both images
(each image placement ends with ESC 8). Prints

  bench tui-latency-<graphics>: d3po <median> ms keypress to next pair drawn (max <max> ms, n <N>), target < 100 ms

With --pace SEC it labels at a steady pace instead, the way a person does:
a key every SEC seconds (or as soon as the next pair is drawn, when it was
late), with the config's round size (default 8, --round-size N) so rounds
train while labeling goes on; each key's latency is keypress to the next
pair drawn, and the keys pressed while the status line said "training
round" are counted apart:

  bench tui-pace-<graphics>: d3po median <m> ms, max <max> ms over <n> keys (<t> keys while a round trained: median <m2> ms, max <max2> ms, <w> waits over 1 s); <r> rounds trained

usage: tui_latency.py D3PO_BINARY [--keys N] [--graphics blocks|sixel]
                      [--pace SEC [--round-size N]]
"""
import fcntl, json, os, pty, re, select, shutil, statistics, struct, subprocess, sys, tempfile, termios, time


def main():
    d3 = sys.argv[1]
    nkeys = int(sys.argv[sys.argv.index("--keys") + 1]) if "--keys" in sys.argv else 8
    gfx = sys.argv[sys.argv.index("--graphics") + 1] if "--graphics" in sys.argv else "blocks"
    pace = float(sys.argv[sys.argv.index("--pace") + 1]) if "--pace" in sys.argv else 0
    rsize = int(sys.argv[sys.argv.index("--round-size") + 1]) if "--round-size" in sys.argv else 8
    tmp = tempfile.mkdtemp(prefix="d3po-lat-")
    try:
        model = os.path.join(tmp, "m.safetensors")
        subprocess.run([d3, "init", "--out", model, "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
        conf = os.path.join(tmp, "d3po.conf")
        with open(conf, "w") as f:
            f.write("session = { queue_depth = 4; round_size = %d; };\n" % (rsize if pace else 1000))
        sess = os.path.join(tmp, "s")
        pid, fd = pty.fork()
        if pid == 0:
            os.environ["TERM"] = "xterm-256color"
            os.execv(d3, [d3, "label", "--session", sess, "--model", model, "--config", conf,
                          "--graphics", gfx])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        buf = bytearray()

        def read_until(pred, timeout):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                r, _, _ = select.select([fd], [], [], 0.01)
                if r:
                    try:
                        buf.extend(os.read(fd, 1 << 16))
                    except OSError:
                        return False
                    if pred():
                        return True
            return False

        # answer the start-up query burst like a terminal without sixel
        read_until(lambda: b"\x1b[c" in buf, 5)
        os.write(fd, b"\x1b[?62;22c")
        lat = []
        if pace:
            return paced(d3, fd, pid, buf, read_until, nkeys, pace, gfx)
        for k in range(nkeys):
            # wait for pair k drawn and at least one more pair queued ahead
            # curses may replace runs of blanks by cursor moves: match "pair N"
            # followed by a non-digit
            want = re.compile(rb"pair %d\D" % k)
            ok = read_until(lambda: (m := list(want.finditer(buf))) and buf.rfind(b"\x1b8") > m[-1].start(), 300)
            if not ok:
                print("tui_latency: pair %d never showed" % k, file=sys.stderr)
                break
            # at least one more pair queued on disk (curses redraws only the
            # header digits that change, so the screen text is no guide)
            for _ in range(3000):
                info = json.loads(subprocess.run([d3, "session", "info", sess, "--json"],
                                                 capture_output=True, text=True).stdout)
                if info["pairs"]["unlabeled"] >= 2:
                    break
                read_until(lambda: False, 0.1)
            read_until(lambda: False, 0.05)
            buf.clear()
            nxt = re.compile(rb"pair %d\D" % (k + 1))
            t0 = time.monotonic()
            os.write(fd, b"1")
            done = read_until(lambda: (m := nxt.search(buf)) is not None and buf.count(b"\x1b8", m.start()) >= 2, 30)
            if done:
                lat.append((time.monotonic() - t0) * 1000)
            # keep the pair's text in the buffer for the next wait
        os.write(fd, b"q")
        read_until(lambda: False, 2)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        if not lat:
            print("bench tui-latency-%s: FAILED (no measurement)" % gfx)
            sys.exit(1)
        print("bench tui-latency-%s: d3po %.1f ms keypress to next pair drawn (max %.1f ms, n %d), target < 100 ms"
              % (gfx, statistics.median(lat), max(lat), len(lat)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def paced(d3, fd, pid, buf, read_until, nkeys, pace, gfx):
    """A key every `pace` seconds; latency = key to the next pair drawn."""
    first = re.compile(rb"pair 0\D")
    if not read_until(lambda: (m := first.search(buf)) and buf.rfind(b"\x1b8") > m.start(), 600):
        print("tui_latency: the first pair never showed", file=sys.stderr)
        sys.exit(1)
    lat, during, marks = [], [], []
    rounds = 0
    training = False
    next_key = time.monotonic() + pace
    for k in range(nkeys):
        read_until(lambda: False, max(0.0, next_key - time.monotonic()))
        text = bytes(buf)
        # the status line in force when the key goes: training or not
        ti, td = text.rfind(b"training round"), text.rfind(b" trained")
        training = ti >= 0 and ti > td
        rounds += text.count(b"trained on")
        buf.clear()
        nxt = re.compile(rb"pair %d\D" % (k + 1))
        t0 = time.monotonic()
        os.write(fd, b"1")
        done = read_until(lambda: (m := nxt.search(buf)) is not None and buf.count(b"\x1b8", m.start()) >= 2, 300)
        t1 = time.monotonic()
        if not done:
            print("tui_latency: pair %d never showed" % (k + 1), file=sys.stderr)
            break
        ms = (t1 - t0) * 1000
        lat.append(ms)
        marks.append("%.0f%s" % (ms, "*" if training else ""))
        if training:
            during.append(ms)
        next_key = max(t0 + pace, t1)
    rounds += bytes(buf).count(b"trained on")
    os.write(fd, b"q")
    read_until(lambda: False, 2)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if not lat:
        print("bench tui-pace-%s: FAILED (no measurement)" % gfx)
        sys.exit(1)
    slow = sum(1 for x in during if x > 1000)
    print("bench tui-pace-%s: d3po median %.0f ms, max %.0f ms over %d keys at 1 per %g s "
          "(%d keys while a round trained: median %s ms, max %s ms, %d waits over 1 s); "
          "%d rounds trained"
          % (gfx, statistics.median(lat), max(lat), len(lat), pace, len(during),
             "%.0f" % statistics.median(during) if during else "-",
             "%.0f" % max(during) if during else "-", slow, rounds))
    print("latencies ms (* while a round trained): " + " ".join(marks))


if __name__ == "__main__":
    main()
