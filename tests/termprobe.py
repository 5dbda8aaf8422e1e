"""termprobe.py - asks the terminal it runs in for the state of the sixel
modes d3po sets (DECRQM of private modes 80 and 1070) and writes the replies
to FILE as "80=N 1070=N" (N: 1 set, 2 reset, 0 unknown to the terminal, -
no reply). tests/xshot.sh runs it before and after d3po to check that the
modes are put back. Usage: termprobe.py FILE"""
import os
import re
import select
import sys
import termios
import time
import tty

fd = sys.stdin.fileno()
old = termios.tcgetattr(fd)
tty.setraw(fd)
try:
    os.write(1, b"\033[?80$p\033[?1070$p\033[c")
    buf, end = b"", time.time() + 5
    while time.time() < end and not re.search(rb"\033\[\?[0-9;]*c", buf):
        if select.select([fd], [], [], 0.2)[0]:
            buf += os.read(fd, 4096)
finally:
    termios.tcsetattr(fd, termios.TCSANOW, old)
state = {m.group(1).decode(): m.group(2).decode() for m in re.finditer(rb"\033\[\?(\d+);(\d)\$y", buf)}
with open(sys.argv[1], "w") as f:
    f.write("80=%s 1070=%s\n" % (state.get("80", "-"), state.get("1070", "-")))
