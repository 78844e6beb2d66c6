#!/bin/sh
# Allocation-failure sweep over idemproxy's HTTP/2 and TLS paths, the
# shell twin of test_failalloc.c's windows. MODE: h2c (the default),
# HTTP/2 with prior knowledge; tls, HTTP/1.1 over TLS; h2tls, HTTP/2 over
# TLS by ALPN (TLS with a self-signed certificate made here by openssl).
# For each allocation N counted from the first accepted connection (at
# most FAILALLOC_PROTO_SITES of them, at an even stride), a proxy of its
# own with tests/failalloc_shim.c preloaded to fail its Nth allocation
# serves three requests with curl: a keyed POST (A), its retry (A') and a
# POST with a fresh key (R). Every answer must be 200, a 5xx or a closed
# connection (curl's 000; A' may also be 409), never a hang; the proxy
# must exit 0 on SIGTERM, holding no more blocks at exit than a run
# without a failure; and R must succeed when the failure came before R's
# connection. FAILALLOC_PROTO_ONLY=N runs site N alone, with its log.
# Usage: failalloc_proto.sh BUILD_DIR [h2c|tls|h2tls]
set -eu
build=$1
mode=${2:-h2c}
shim=$build/libfailalloc_shim.so
max_sites=${FAILALLOC_PROTO_SITES:-200}
only=${FAILALLOC_PROTO_ONLY:-}
# shellcheck disable=SC1091 # tests/lib.sh, beside this directory
. "$(dirname "$0")/../lib.sh"
tmp=$(mktemp -d /tmp/idem-h2fa.XXXXXX)
up_pid=""
px_pid=""
cleanup() {
    # shellcheck disable=SC2086
    stop_pids $px_pid $up_pid
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "failalloc_proto: $*" >&2
    exit 1
}
[ -f "$shim" ] || fail "no $shim"
command -v curl >/dev/null || fail "curl missing"

case $mode in
h2c) scheme=http curl_proto=--http2-prior-knowledge tls_flags="" ;;
tls | h2tls)
    command -v openssl >/dev/null || fail "openssl missing"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -nodes -keyout "$tmp/k.pem" -out "$tmp/c.pem" -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        >/dev/null 2>&1 || fail "openssl could not make a certificate"
    scheme=https
    curl_proto="--cacert $tmp/c.pem $([ "$mode" = tls ] && echo --http1.1 ||
        echo --http2)"
    tls_flags="--tls-cert $tmp/c.pem --tls-key $tmp/k.pem"
    ;;
*) fail "unknown mode $mode" ;;
esac

"$build/demo_upstream" --listen 127.0.0.1:0 >"$tmp/up" &
up_pid=$!
wait_line "$tmp/up" listening 100 0.05 ||
    fail "the demo upstream did not start"
upstream=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/up")

# One keyed POST: its status (000: closed, or no answer in 3 s).
post() { # $1 port, $2 key, $3 path
    # shellcheck disable=SC2086
    curl -s -m 3 $curl_proto -o /dev/null -w '%{http_code}' \
        -X POST -H "Idempotency-Key: $2" -d x "$scheme://localhost:$1$3" ||
        true
}

# One run failing allocation $1 (0: none): sets a a2 r rc counted live
# r_at (allocations before R's connection).
run() {
    rm -f "$tmp/px" "$tmp/rep"
    IDEM_FAIL_ALLOC_AT=$1 IDEM_FAIL_ALLOC_REPORT=$tmp/rep LD_PRELOAD=$shim \
        "$build/idemproxy" --listen 127.0.0.1:0 --admin-listen off \
        --upstream "$upstream" --workers 1 --log-level error $tls_flags \
        >"$tmp/px" 2>"$tmp/err" &
    px_pid=$!
    wait_line "$tmp/px" '^listening ' 200 0.02 ||
        fail "site $1: idemproxy did not start"
    port=$(listening_port "$tmp/px")
    t0=$(date +%s)
    a=$(post "$port" "a-$1" /a)
    a2=$(post "$port" "a-$1" /a)
    r=$(post "$port" "r-$1" /r)
    t1=$(date +%s)
    kill "$px_pid"
    rc=0
    wait "$px_pid" || rc=$?
    px_pid=""
    [ $((t1 - t0)) -lt 9 ] || fail "site $1: a hang ($((t1 - t0)) s)"
    counted=$(sed -n 's/.*counted=\([0-9]*\).*/\1/p' "$tmp/rep")
    live=$(sed -n 's/.*live=\([0-9-]*\).*/\1/p' "$tmp/rep")
    # marks: the count at each accept (A, A', R)
    r_at=$(sed -n 's/.*marks=[0-9]*,[0-9]*,\([0-9]*\).*/\1/p' "$tmp/rep")
}

ok_status() {
    case $1 in
    200 | 5?? | 000) return 0 ;;
    *) return 1 ;;
    esac
}

run 0
[ "$a" = 200 ] && [ "$a2" = 200 ] && [ "$r" = 200 ] && [ "$rc" = 0 ] ||
    fail "a run without failure: A $a, A' $a2, R $r, exit $rc"
sites=$counted
base_live=$live
[ -n "$sites" ] && [ "$sites" -gt 0 ] || fail "no allocations counted"
stride=$(((sites + max_sites - 1) / max_sites))
site=1
swept=0
[ -n "$only" ] && site=$only && sites=$only # one site, to reproduce it
while [ "$site" -le "$sites" ]; do
    run "$site"
    # A' may also be 409: a completion the store could not take keeps
    # the key in flight (never released: A ran)
    for s in "$a" "$r" "$([ "$a2" = 409 ] && echo 200 || echo "$a2")"; do
        ok_status "$s" || fail "site $site: answer $s (A $a, A' $a2, R $r)"
    done
    [ -z "$only" ] || { echo "site $site: A $a A' $a2 R $r exit $rc counted $counted r_at $r_at"; cat "$tmp/err" >&2; }
    [ "$rc" = 0 ] || {
        tail -5 "$tmp/err" >&2
        fail "site $site: exit status $rc"
    }
    [ "$live" -le "$base_live" ] ||
        fail "site $site: $live blocks live at exit (without failure: $base_live)"
    # (a margin of 4: a connection's close and the next accept may swap)
    if [ -n "$r_at" ] && [ $((site + 4)) -le "$r_at" ] && [ "$r" != 200 ]; then
        fail "site $site: R got $r although the failure came before it"
    fi
    swept=$((swept + 1))
    site=$((site + stride))
done
echo "failalloc_proto $mode: $swept of $sites sites swept: no crash, hang or leak"
