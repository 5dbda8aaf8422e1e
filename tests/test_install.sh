#!/bin/sh
# test_install.sh - `make install PREFIX=DIR` puts the binary, both man pages,
# the default configuration and (when present) the default model in place,
# and the installed man pages render without warnings.
. tests/lib.sh
make --no-print-directory -s B="$B" install PREFIX="$T/p" >"$T/log" 2>&1 && ok "make install" || { no "make install"; cat "$T/log"; }
for f in bin/d3po share/man/man1/d3po.1 share/man/man5/d3po.conf.5 share/d3po/d3po.conf; do
    [ -f "$T/p/$f" ] && ok "installed $f" || no "installed $f"
done
if [ -f models/default.safetensors ]; then
    [ -f "$T/p/share/d3po/default.safetensors" ] && ok "installed the default model" || no "installed the default model"
fi
"$T/p/bin/d3po" --version >/dev/null && ok "installed binary runs" || no "installed binary runs"
out=$(groff -ww -man -Tutf8 "$T/p/share/man/man1/d3po.1" 2>&1 >/dev/null)
[ -z "$out" ] && ok "installed d3po.1 renders" || no "installed d3po.1 renders: $out"
finish test_install.sh
