#!/bin/sh
# The Debian packages: build them (dpkg-buildpackage, from a copy of the
# source tree), check them with lintian (no error, no warning) and the
# service unit with systemd-analyze verify, unpack them into a throwaway
# root (dpkg -x: nothing is installed on this machine), and run the
# unpacked idemproxy, linked against the unpacked libraries, in front of
# the demo upstream: a keyed POST executes once and its retry is replayed.
# Usage: deb_test.sh SOURCE_DIR BUILD_DIR (for demo_upstream)
set -eu
src=$1
build=$2
. "$src/tests/lib.sh"
tmp=$(mktemp -d /tmp/idem-deb.XXXXXX)
pids=""
cleanup() {
    # shellcheck disable=SC2086
    stop_pids $pids
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "deb_test: $*" >&2
    exit 1
}

for tool in dpkg-buildpackage lintian systemd-analyze curl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool missing (scripts/deps.sh)"
done

# A copy of the tree (tracked and new files, not build directories):
# dpkg-buildpackage writes its packages next to the source directory.
mkdir "$tmp/idem"
(cd "$src" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 tar -cf -) | tar -xf - -C "$tmp/idem"
(cd "$tmp/idem" && DEB_BUILD_OPTIONS="nocheck parallel=2" \
    dpkg-buildpackage -us -uc -b >"$tmp/build.log" 2>&1) ||
    { tail -40 "$tmp/build.log" >&2; fail "dpkg-buildpackage failed"; }
for p in libidem0 libidem-dev libidem-redis0 libidem-redis-dev idemproxy; do
    ls "$tmp"/${p}_*.deb >/dev/null 2>&1 || fail "no $p package"
done

# lintian: errors and warnings fail (info and pedantic tags do not).
if ! lintian --fail-on error,warning "$tmp"/idem_*.changes >"$tmp/lintian.log" 2>&1; then
    cat "$tmp/lintian.log" >&2
    fail "lintian"
fi

mkdir "$tmp/root"
for deb in "$tmp"/*.deb; do
    dpkg -x "$deb" "$tmp/root"
done
proxy="$tmp/root/usr/bin/idemproxy"
libs=$(dirname "$(find "$tmp/root/usr/lib" -name 'libidem.so.0' | head -1)")
[ -x "$proxy" ] || fail "no /usr/bin/idemproxy in the package"
[ -f "$tmp/root/etc/idemproxy/idemproxy.conf" ] || fail "no default config"
[ -f "$tmp/root/usr/share/man/man1/idemproxy.1.gz" ] || fail "no idemproxy(1)"
[ -f "$tmp/root/usr/share/man/man5/idemproxy.conf.5.gz" ] ||
    fail "no idemproxy.conf(5)"
unit=$(find "$tmp/root" -name idemproxy.service | head -1)
[ -n "$unit" ] || fail "no idemproxy.service"
[ -f "$libs/libidem.so.0" ] && [ -f "$libs/libidem-redis.so.0" ] ||
    fail "no shared libraries"
for h in idem.h engine.h redis.h; do
    [ -f "$tmp/root/usr/include/idem/$h" ] || fail "no idem/$h"
done

# The unit as installed, pointed at the unpacked binary and manual pages.
mkdir "$tmp/unit"
sed "s|/usr/bin/idemproxy|$proxy|" "$unit" >"$tmp/unit/idemproxy.service"
if ! MANPATH="$tmp/root/usr/share/man" systemd-analyze verify \
    "$tmp/unit/idemproxy.service" >"$tmp/verify.log" 2>&1; then
    cat "$tmp/verify.log" >&2
    fail "systemd-analyze verify"
fi
if [ -s "$tmp/verify.log" ]; then
    cat "$tmp/verify.log" >&2
    fail "systemd-analyze verify said something"
fi

# The unpacked idemproxy, its libraries the unpacked ones.
LD_LIBRARY_PATH=$libs ldd "$proxy" | grep -q "$libs/libidem.so.0" ||
    fail "idemproxy does not link the packaged libidem"
"$build/demo_upstream" --listen 127.0.0.1:0 >"$tmp/up" &
pids="$pids $!"
LD_LIBRARY_PATH=$libs "$proxy" --version | grep -q '^idemproxy ' ||
    fail "idemproxy --version"
wait_line "$tmp/up" listening 100 0.05 ||
    fail "the demo upstream did not start"
upstream=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/up")
LD_LIBRARY_PATH=$libs "$proxy" --listen 127.0.0.1:0 --admin-listen off \
    --upstream "$upstream" >"$tmp/proxy.out" 2>"$tmp/proxy.err" &
pids="$pids $!"
wait_line "$tmp/proxy.out" '^listening ' 100 0.05 ||
    { cat "$tmp/proxy.err" >&2; fail "idemproxy did not start"; }
port=$(listening_port "$tmp/proxy.out")
for n in 1 2; do
    curl -s -D "$tmp/h$n" -o "$tmp/b$n" -X POST -H 'Idempotency-Key: deb-1' \
        -d '{"n":1}' "http://127.0.0.1:$port/orders" ||
        fail "request $n failed"
done
head -1 "$tmp/h1" | grep -q ' 20[01] ' || fail "first POST: $(head -1 "$tmp/h1")"
grep -qi '^Idempotent-Replayed: true' "$tmp/h2" || fail "the retry was not replayed"
cmp -s "$tmp/b1" "$tmp/b2" || fail "the replay's body differs"
count=$(curl -s "http://$upstream/count")
[ "$count" = '{"executions":1}' ] ||
    fail "the upstream's count is $count: not executed once"
echo "deb_test: packages built, lintian and systemd-analyze clean, the" \
    "unpacked idemproxy executed the request once"
