#!/bin/sh
# The manual pages render without a groff warning, and every option that
# `idemproxy --help` lists is in idemproxy(1), every config file key in
# idemproxy.conf(5) (both come from the option table: this fails if the
# generator or the build stops following it).
# Usage: man_test.sh IDEMPROXY MAN_DIR
set -eu
proxy=$1
dir=$2
status=0
for page in "$dir/idemproxy.1" "$dir/idemproxy.conf.5"; do
    warnings=$(groff -man -ww -Tutf8 -z "$page" 2>&1)
    if [ -n "$warnings" ]; then
        echo "man_test: $page: $warnings" >&2
        status=1
    fi
done
one=$(groff -man -Tascii -P-c -P-b -P-u "$dir/idemproxy.1" 2>/dev/null)
five=$(groff -man -Tascii -P-c -P-b -P-u "$dir/idemproxy.conf.5" 2>/dev/null)
flags=$("$proxy" --help | sed -n 's/^  --\([a-z0-9-]*\).*/\1/p')
[ -n "$flags" ] || { echo "man_test: no options in --help" >&2; exit 1; }
for f in $flags; do
    if ! printf '%s\n' "$one" | grep -q -- "--$f"; then
        echo "man_test: --$f is missing from idemproxy(1)" >&2
        status=1
    fi
    case $f in config|help|version) continue ;; esac
    if ! printf '%s\n' "$five" | grep -qE "^ *$f( |$)"; then
        echo "man_test: $f is missing from idemproxy.conf(5)" >&2
        status=1
    fi
done
exit $status
