#!/bin/sh
# Install the Debian packages idem needs, only those that are missing.
#   scripts/deps.sh          build + test dependencies (make test)
#   scripts/deps.sh run      what building and running needs (make run)
#   scripts/deps.sh bench    also what benchmarks and soaks use
# Quiet when everything is present. Not root and something missing: says
# exactly what to install and exits 1.
set -eu

# Building (the configure step wants cmocka too) and running idemproxy.
BUILD="cmake make pkg-config gcc libevent-dev libhiredis-dev libinih-dev
node-llhttp libxxhash-dev libssl-dev libcmocka-dev libsystemd-dev
libnghttp2-dev curl"
# The tests: sanitizers, the servers and clients they start, the package
# build and its checks.
TEST="clang libclang-rt-14-dev redis-server valgrind openssl
python3-websockets nghttp2-client debhelper lintian dpkg-dev systemd"
BENCH="wrk nginx-light gnuplot-nox"

want="$BUILD $TEST"
case "${1:-}" in
"") ;;
run) want=$BUILD ;;
bench) want="$BUILD $TEST $BENCH" ;;
-h|--help) sed -n '2,7p' "$0"; exit 0 ;;
*) echo "deps.sh: unknown group '$1' (try: run, bench)" >&2; exit 2 ;;
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
