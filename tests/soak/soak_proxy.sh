#!/bin/sh
# Bounded memory through idemproxy (make soak): SOAK_KEYS distinct keys
# (default 10,000,000) from wrk on 127.0.0.1 through idemproxy (memory
# store, --lifetime 5s, --max-memory 64M) to the demo upstream. Resident
# memory is sampled every second into build/soak/rss.csv (and drawn into
# rss.png with gnuplot). It fails (exit 1) unless:
#   - resident memory never exceeds max-memory + 32 MiB,
#   - after the last lifetime /metrics shows 0 store entries and 0 keys in
#     flight, and
#   - resident memory is back within 16 MiB of its post-warm-up baseline.
# SOAK_STORE=redis runs the same on the Redis store (a redis-server of its
# own on a free loopback port): the proxy's memory must stay as bounded,
# and after the last lifetime Redis must hold no key (SCAN, which skips
# expired ones) and the proxy no key in flight. Files get a "-redis"
# suffix. Needs wrk and gnuplot: scripts/deps.sh bench.
set -eu
cd "$(dirname "$0")/../.."

KEYS=${SOAK_KEYS:-10000000}
BUILD=${BUILD_DIR:-build}
STORE=${SOAK_STORE:-memory}
OUT=$BUILD/soak
SUFFIX=""
[ "$STORE" = memory ] || SUFFIX="-$STORE"
MAX_MEMORY_MIB=64
PEAK_SLACK_MIB=32
END_SLACK_MIB=16
LIFETIME_S=5

for tool in wrk gnuplot; do
    command -v "$tool" >/dev/null 2>&1 ||
        { echo "soak_proxy: $tool missing (scripts/deps.sh bench)" >&2; exit 2; }
done
mkdir -p "$OUT"
tmp=$(mktemp -d /tmp/soak_proxy.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# start NAME CMD...: run CMD in the background, wait for its listening line.
start() {
    name=$1
    shift
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids="$pids $!"
    eval "${name}_pid=$!"
    i=0
    until grep -q listening "$tmp/$name.out" 2>/dev/null; do
        i=$((i + 1))
        [ $i -le 100 ] || { echo "soak_proxy: $name did not start" >&2; cat "$tmp/$name.err" >&2; exit 1; }
        sleep 0.1
    done
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
metric() { # metric NAME: its value from /metrics (0 if absent)
    wrk_url="http://$admin/metrics"
    curl -s "$wrk_url" | awk -v m="$1" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
}

# Records left: the memory store's entries, or Redis's live keys.
records() {
    if [ "$STORE" = redis ]; then
        redis-cli -p "$rport" --scan | wc -l
    else
        metric idem_store_entries
    fi
}

store_flags=""
if [ "$STORE" = redis ]; then
    rport=$(awk 'BEGIN { srand(); print 20000 + int(rand() * 30000) }')
    while [ -n "$(ss -Hltn "sport = :$rport")" ]; do rport=$((rport + 1)); done
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
        --loglevel warning >"$tmp/redis.log" 2>&1 &
    pids="$pids $!"
    i=0
    until redis-cli -p "$rport" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -le 100 ] || { echo "soak_proxy: redis-server did not start" >&2; exit 1; }
        sleep 0.1
    done
    store_flags="--store redis://127.0.0.1:$rport"
elif [ "$STORE" != memory ]; then
    echo "soak_proxy: SOAK_STORE is memory or redis" >&2
    exit 2
fi

start up "$BUILD/demo_upstream" --listen 127.0.0.1:0
upstream=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/up.out")
# shellcheck disable=SC2086
start px "$BUILD/idemproxy" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --upstream "$upstream" --workers 2 --lifetime ${LIFETIME_S}s \
    --max-memory ${MAX_MEMORY_MIB}M --log-level error $store_flags
proxy=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/px.out")
admin=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$tmp/px.out")

echo "seconds,rss_kib" >"$OUT/rss$SUFFIX.csv"
(t=0; while kill -0 "$px_pid" 2>/dev/null; do
     echo "$t,$(rss_kib "$px_pid")" >>"$OUT/rss$SUFFIX.csv"
     t=$((t + 1)); sleep 1
 done) &
pids="$pids $!"

# wrk RUN SECONDS: unique keys for SECONDS (a nonce per run keeps keys
# distinct across runs).
load() {
    BENCH_NONCE="s$1" wrk -t2 -c64 -d"$2"s -s bench/wrk_keys.lua \
        "http://$proxy/orders" >"$tmp/wrk.$1" 2>&1
}

load warm 3
sleep $((LIFETIME_S + 6)) # the warm-up's records expire, a trim passes
baseline=$(rss_kib "$px_pid")
run=0
while [ "$(metric 'idem_requests_total{outcome="proceed"}')" -lt "$KEYS" ]; do
    run=$((run + 1))
    load "$run" 20
done
held=$(records)
# every record expires; then one more heap trim (the proxy trims every
# 5 s) must pass before resident memory can show it
i=0
until [ "$(records)" = 0 ] || [ $i -ge 60 ]; do
    i=$((i + 1))
    sleep 1
done
sleep 6
entries=$(records)
inflight=$(metric idem_keys_in_flight)
end=$(rss_kib "$px_pid")
peak=$(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "$OUT/rss$SUFFIX.csv")
requests=$(metric 'idem_requests_total{outcome="proceed"}')
evicted=$(metric idem_store_evictions_total)
evicted_1m=$(metric 'idem_store_eviction_age_seconds_bucket{le="60"}')
evicted_1h=$(metric 'idem_store_eviction_age_seconds_bucket{le="3600"}')
full=$(metric 'idem_requests_total{outcome="full"}')

gnuplot <<EOF || echo "soak_proxy: gnuplot failed; rss.csv is there" >&2
set terminal png size 900,400
set output "$OUT/rss$SUFFIX.png"
set datafile separator ","
set title "idemproxy resident memory, $STORE store, $requests distinct keys, lifetime ${LIFETIME_S}s"
set xlabel "seconds"; set ylabel "MiB"; set key off
plot "$OUT/rss$SUFFIX.csv" using 1:(\$2/1024) every ::1 with lines lw 2, \
     $((MAX_MEMORY_MIB + PEAK_SLACK_MIB)) with lines dt 2
EOF

echo "soak.proxy$SUFFIX.requests $requests"
echo "soak.proxy$SUFFIX.evictions $evicted"
echo "soak.proxy$SUFFIX.evictions_under_1m $evicted_1m"
echo "soak.proxy$SUFFIX.evictions_under_1h $evicted_1h"
echo "soak.proxy$SUFFIX.full_refusals $full"
echo "soak.proxy$SUFFIX.rss_baseline $((baseline / 1024)) MiB"
echo "soak.proxy$SUFFIX.rss_peak $((peak / 1024)) MiB"
echo "soak.proxy$SUFFIX.rss_end $((end / 1024)) MiB"
echo "soak.proxy$SUFFIX.entries_at_end_of_load $held"
echo "soak.proxy$SUFFIX.entries_after_expiry $entries"
echo "soak.proxy$SUFFIX.in_flight_after $inflight"
fail=0
[ "$peak" -le $(((MAX_MEMORY_MIB + PEAK_SLACK_MIB) * 1024)) ] ||
    { echo "soak_proxy: FAIL: peak over max-memory + ${PEAK_SLACK_MIB} MiB"; fail=1; }
[ "$held" -gt 0 ] ||
    { echo "soak_proxy: FAIL: no records held at the end of the load"; fail=1; }
[ "$entries" = 0 ] && [ "$inflight" = 0 ] ||
    { echo "soak_proxy: FAIL: entries or keys in flight left after expiry"; fail=1; }
[ "$end" -le $((baseline + END_SLACK_MIB * 1024)) ] ||
    { echo "soak_proxy: FAIL: resident memory not back near the baseline"; fail=1; }
[ $fail = 0 ] && echo "soak_proxy: 1 passed, 0 failed" || echo "soak_proxy: 0 passed, 1 failed"
exit $fail
