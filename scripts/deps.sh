#!/bin/sh
# Install the Debian packages idem needs, only those that are missing.
#   scripts/deps.sh          build + test dependencies
#   scripts/deps.sh bench    also what benchmarks and soaks use
# Quiet when everything is present. Not root and something missing: says
# exactly what to install and exits 1.
set -eu

BUILD="cmake make pkg-config gcc clang libclang-rt-14-dev libevent-dev
libhiredis-dev libinih-dev node-llhttp libxxhash-dev libssl-dev openssl
libcmocka-dev libsystemd-dev libnghttp2-dev nghttp2-client redis-server
valgrind curl python3-websockets
debhelper lintian dpkg-dev systemd"
BENCH="wrk nginx-light gnuplot-nox"

want=$BUILD
case "${1:-}" in
"") ;;
bench) want="$BUILD $BENCH" ;;
-h|--help) sed -n '2,6p' "$0"; exit 0 ;;
*) echo "deps.sh: unknown group '$1' (try: bench)" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$s" = "install ok installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: missing Debian packages:$missing" >&2
    echo "deps.sh: install them with: sudo apt-get install$missing" >&2
    exit 1
fi
echo "deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps.sh: done"
