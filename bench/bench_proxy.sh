#!/bin/sh
# idemproxy against nginx proxy_pass, both in front of the same nginx stub
# (return 201), all on 127.0.0.1. wrk drives POSTs with a unique
# Idempotency-Key each (first executions), 16 rotating keys (replays) and
# plain GETs (passthrough); nginx gets the unique-key POSTs. CPU per request
# is utime+stime (/proc/PID/stat) of nginx's one worker and of idemproxy
# (--workers 1, default log level, its log to a file) over each run, and
# its ratio to nginx's. Counted, not guessed: system calls per request
# (perf's raw_syscalls tracepoint, on a run of their own) and allocations
# per request (tests/failalloc_shim.c preloaded, failing none); and the
# first-execution rate with 2 workers over 1. nginx runs twice per pair:
# without an access log (the goal's baseline) and with one, buffered
# (proxy.nginx_log.*: idemproxy logs every request at its default level).
# Then the rates again with the client on cores of its own (*_pinned:
# the servers on CPU 0, wrk on the others; needs taskset and 2 CPUs).
# Then HTTP/2 (h2c): first
# executions (bench/h2_keys, a new key per request) and passthrough
# (h2load) against nginx's http2 on the same stub. Then idemproxy's first and
# replay runs again on the Redis store (a redis-server started here),
# with their ratio to the memory store's; then TLS: nginx and idemproxy
# each terminating TLS (one self-signed certificate made here with
# openssl) in front of the same stub, wrk over https with unique keys,
# and the CPU per request of each; last, a Redis Cluster. Prints "name
# value [unit]" lines, never pass/fail. Needs wrk, nginx and h2load:
# scripts/deps.sh bench;
# perf for the system call counts.
#   bench/bench_proxy.sh            5 s per run
#   BENCH_DURATION=2s bench/bench_proxy.sh
#   BENCH_PAIRS=5 bench/bench_proxy.sh   nginx and idemproxy's first
#                                         executions alternate 5 times
#                                         (default 3): medians, and the
#                                         ratio's lowest and highest
#   BENCH_CORE=1 bench/bench_proxy.sh     the HTTP/1.1 CPU figures only
#   BENCH_PERF=out.data bench/bench_proxy.sh  those, then a perf profile
#                                         of a first-execution run
set -eu
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-5s}
PAIRS=${BENCH_PAIRS:-3}
THREADS=2
CONNS=32
CLIENT_PIN="" # "taskset -c CPUS" while the client has cores of its own
BUILD=${BUILD_DIR:-build}

for tool in wrk nginx; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "bench_proxy: $tool missing (scripts/deps.sh bench)" >&2
        exit 2
    fi
done
if ! cmake --build "$BUILD" --target idemproxy demo_upstream failalloc_shim \
    >&2; then
    echo "bench_proxy: build failed; idemproxy runs skipped if absent" >&2
fi

. tests/lib.sh
tmp=$(mktemp -d /tmp/bench_proxy.XXXXXX)
pids=""
cleanup() {
    # shellcheck disable=SC2086
    stop_pids $pids
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ephemeral_low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range \
    2>/dev/null || echo 32768)
# A TCP port nothing listens on 127.0.0.1 right now.
free_port() {
    while :; do
        # below the kernel's ephemeral range (an outgoing connection's
        # local port is not a listener, yet takes the port), seeded by the
        # nanosecond: srand() alone seeds by the second, and ports picked
        # in one second (a Cluster's) would repeat
        p=$(awk -v s="$(date +%N)" -v top="$ephemeral_low" \
            'BEGIN { srand(s); print 10000 + int(rand() * (top - 10000)) }')
        [ -z "$(ss -Hltn "sport = :$p")" ] && echo "$p" && return
        sleep 0.01
    done
}

# Wait until something accepts on 127.0.0.1:$1 (up to 10 s).
wait_port() {
    i=0
    until [ -n "$(ss -Hltn "sport = :$1")" ]; do
        i=$((i + 1))
        if [ $i -gt 200 ]; then
            echo "bench_proxy: nothing listens on port $1" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# Start nginx with the server block $2 under $tmp/$1; sets nginx_pid.
start_nginx() {
    mkdir -p "$tmp/$1"
    cat >"$tmp/$1/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $tmp/$1/nginx.pid;
error_log $tmp/$1/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/$1;
    proxy_temp_path $tmp/$1;
    fastcgi_temp_path $tmp/$1;
    uwsgi_temp_path $tmp/$1;
    scgi_temp_path $tmp/$1;
    keepalive_requests 1000000;
    $2
}
EOF
    nginx -p "$tmp/$1" -c "$tmp/$1/nginx.conf" 2>>"$tmp/$1/error.log" &
    nginx_pid=$!
    pids="$pids $nginx_pid"
}

# The PID of nginx master $1's one worker.
nginx_worker() {
    i=0
    until w=$(cat "/proc/$1/task/$1/children" 2>/dev/null) && [ -n "$w" ]; do
        i=$((i + 1))
        [ $i -gt 200 ] && echo "bench_proxy: no nginx worker" >&2 && exit 1
        sleep 0.05
    done
    echo "$w" | awk '{ print $1 }'
}

# utime and stime of PID $1 in microseconds: "user sys".
cpu_us() {
    awk -v hz="$(getconf CLK_TCK)" '{
        sub(/^.*\) /, ""); print $12 * 1000000 / hz, $13 * 1000000 / hz }' \
        "/proc/$1/stat"
}

# CPU per request from "user0 sys0" $1, "user1 sys1" $2 over $3 requests:
# "total user sys" in microseconds.
per_req() {
    echo "$1 $2" | awk -v n="$3" '{
        if (!n) { print "0 0 0"; exit }
        printf "%.1f %.1f %.1f\n", ($3 + $4 - $1 - $2) / n, ($3 - $1) / n,
            ($4 - $2) / n }'
}


# Run wrk against port $1 (over $SCHEME, http unless set) as run $3: keyed POSTs (BENCH_KEYS=$2: unique or
# a count), or plain GETs if $2 is empty. Prints its requests and requests
# per second ("0 0" if it failed); error answers are told on stderr.
run_wrk() {
    script=""
    [ -n "$2" ] && script="-s bench/wrk_keys.lua"
    # shellcheck disable=SC2086
    if ! BENCH_KEYS="$2" BENCH_NONCE="$3-$$" $CLIENT_PIN wrk -t$THREADS -c$CONNS \
        -d"$DURATION" --timeout 10s $script "${SCHEME:-http}://127.0.0.1:$1/pay" \
        >"$tmp/$3.out"; then
        echo "bench_proxy: wrk failed in run $3" >&2
        echo "0 0"
        return
    fi
    grep -E 'Non-2xx|Socket errors' "$tmp/$3.out" |
        sed "s/^ */bench_proxy: run $3: /" >&2 || true
    awk '/ requests in / { n = $1 } /^Requests\/sec:/ { r = $2 }
         END { printf "%d %.0f\n", n, r }' "$tmp/$3.out"
}

stub=$(free_port)
start_nginx stub "server { listen 127.0.0.1:$stub; location / {
    default_type application/json; return 201 '{\"ok\":true}'; } }"
wait_port "$stub"

front=$(free_port)
start_nginx front "upstream stub { server 127.0.0.1:$stub; keepalive 64; }
    server { listen 127.0.0.1:$front; location / {
        proxy_pass http://stub; proxy_http_version 1.1;
        proxy_set_header Connection \"\"; } }"
front_master=$nginx_pid
wait_port "$front"
worker=$(nginx_worker "$front_master")

# The same proxy_pass with nginx's access log on, buffered as idemproxy's
# decision lines are (idemproxy logs every request at its default level;
# the front above logs none): a second baseline, printed beside the first.
logfront=$(free_port)
start_nginx logfront "upstream stub { server 127.0.0.1:$stub; keepalive 64; }
    server { listen 127.0.0.1:$logfront;
        access_log $tmp/logfront/access.log combined buffer=64k flush=1s;
        location / { proxy_pass http://stub; proxy_http_version 1.1;
        proxy_set_header Connection \"\"; } }"
wait_port "$logfront"
logworker=$(nginx_worker "$nginx_pid")

if [ ! -x "$BUILD/idemproxy" ]; then
    echo "bench_proxy: $BUILD/idemproxy missing" >&2
    exit 1
fi

# Start idemproxy (--workers 1 unless $@ says otherwise, default log
# level) in front of the stub with extra flags $@; sets idem_pid and idem
# (its port). IDEM_PRELOAD: a library to preload.
start_idem() {
    rm -f "$tmp/idem.out" # not the last instance's "listening" line
    LD_PRELOAD=${IDEM_PRELOAD:-} "$BUILD/idemproxy" --listen 127.0.0.1:0 \
        --admin-listen off --upstream "127.0.0.1:$stub" --workers 1 \
        --max-memory 1G --log-file "$tmp/idem.log" "$@" \
        >"$tmp/idem.out" 2>"$tmp/idem.err" &
    idem_pid=$!
    pids="$pids $idem_pid"
    if ! wait_line "$tmp/idem.out" '^listening ' 200 0.05 "$idem_pid"; then
        echo "bench_proxy: idemproxy did not start:" >&2
        cat "$tmp/idem.err" >&2
        exit 1
    fi
    idem=$(listening_port "$tmp/idem.out")
}

start_idem
# Say so if idemproxy died during run $1.
check_idem() {
    if ! kill -0 "$idem_pid" 2>/dev/null; then
        echo "bench_proxy: idemproxy exited during run $1; its stderr:" >&2
        tail -20 "$tmp/idem.err" >&2
    fi
}

# Run wrk as in run_wrk (port $1, keys $2, name $3) while measuring
# idemproxy's CPU; prints "requests rps cpu_us user_us sys_us" (CPU per
# request).
run_idem() {
    c0=$(cpu_us "$idem_pid")
    set -- $(run_wrk "$1" "$2" "$3") "$3"
    c1=$(cpu_us "$idem_pid" 2>/dev/null || echo "$c0")
    check_idem "$3"
    echo "$1 $2 $(per_req "$c0" "$c1" "$1")"
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'
}

# The median of the numbers $@.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR % 2) print a[(NR + 1) / 2]
        else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# nginx (without and with its access log) and idemproxy's first
# executions, alternated PAIRS times, so a
# change in the machine's speed falls on both (this VM's neighbours move
# a run's CPU per request by up to a fifth): the medians of each figure,
# and of the pairs' ratios.
n_rps="" n_cpu="" n_user="" n_sys="" f_rps="" f_cpu="" f_user="" f_sys=""
ratios="" l_cpu="" l_ratios=""
k=0
while [ $k -lt "$PAIRS" ]; do
    k=$((k + 1))
    c0=$(cpu_us "$worker")
    set -- $(run_wrk "$front" unique "nginx$k")
    c1=$(cpu_us "$worker")
    n_rps="$n_rps $2"
    set -- $(per_req "$c0" "$c1" "$1")
    n_cpu="$n_cpu $1" n_user="$n_user $2" n_sys="$n_sys $3"
    nginx_pair=$1
    c0=$(cpu_us "$logworker")
    set -- $(run_wrk "$logfront" unique "nginx_log$k")
    c1=$(cpu_us "$logworker")
    set -- $(per_req "$c0" "$c1" "$1")
    l_cpu="$l_cpu $1"
    log_pair=$1
    set -- $(run_idem "$idem" unique "first$k")
    f_rps="$f_rps $2" f_cpu="$f_cpu $3" f_user="$f_user $4" f_sys="$f_sys $5"
    ratios="$ratios $(ratio "$3" "$nginx_pair")"
    l_ratios="$l_ratios $(ratio "$3" "$log_pair")"
done
nginx_rps=$(median $n_rps)
nginx_cpu=$(median $n_cpu)
echo "proxy.nginx.rps $nginx_rps"
echo "proxy.nginx.cpu_us $nginx_cpu us/req"
echo "proxy.nginx.cpu_user_us $(median $n_user) us/req"
echo "proxy.nginx.cpu_sys_us $(median $n_sys) us/req"
mem_first=$(median $f_rps)
echo "proxy.idem.first.rps $mem_first"
echo "proxy.idem.first.cpu_us $(median $f_cpu) us/req"
echo "proxy.idem.first.cpu_user_us $(median $f_user) us/req"
echo "proxy.idem.first.cpu_sys_us $(median $f_sys) us/req"
echo "proxy.first.cpu_ratio $(median $ratios)"
set -- $(printf '%s\n' $ratios | sort -g)
echo "proxy.first.cpu_ratio_lo $1"
shift $(($# - 1))
echo "proxy.first.cpu_ratio_hi $1"
echo "proxy.nginx_log.cpu_us $(median $l_cpu) us/req"
echo "proxy.first.cpu_ratio_vs_nginx_log $(median $l_ratios)"
set -- $(run_idem "$idem" 16 replay)
mem_replay=$2
echo "proxy.idem.replay.rps $2"
echo "proxy.idem.replay.cpu_us $3 us/req"
echo "proxy.idem.replay.cpu_user_us $4 us/req"
echo "proxy.idem.replay.cpu_sys_us $5 us/req"
echo "proxy.replay.cpu_ratio $(ratio "$3" "$nginx_cpu")"
echo "proxy.idem.replay.rps_vs_nginx $(ratio "$mem_replay" "$nginx_rps")"
set -- $(run_idem "$idem" "" passthrough)
echo "proxy.idem.passthrough.rps $2"
echo "proxy.idem.passthrough.cpu_us $3 us/req"
echo "proxy.passthrough.cpu_ratio $(ratio "$3" "$nginx_cpu")"
# The request rates again with the client on cores of its own: every
# server (the stub, nginx, idemproxy) pinned to CPU 0 and wrk to the
# others. Above, wrk takes about half of the two cores' CPU, as much in
# nginx's run as in idemproxy's replay, so the rate ratio says more of
# wrk than of the servers; here each rate is what one server core gives.
# Pinning is undone after. Needs taskset (util-linux) and 2 CPUs.
ncpu=$(nproc 2>/dev/null || echo 1)
if [ "$ncpu" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    all_cpus="0-$((ncpu - 1))"
    servers=""
    for m in $pids; do # each server and its children (nginx's workers)
        servers="$servers $m $(pgrep -d ' ' -P "$m" || true)"
    done
    pin() {
        for p in $servers; do
            taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true
        done
    }
    pin 0
    CLIENT_PIN="taskset -c 1-$((ncpu - 1))"
    c0=$(cpu_us "$worker")
    set -- $(run_wrk "$front" unique nginx_pinned)
    c1=$(cpu_us "$worker")
    pinned_nginx=$2
    set -- $(per_req "$c0" "$c1" "$1")
    pinned_nginx_cpu=$1
    set -- $(run_idem "$idem" 16 replay_pinned)
    pinned_replay=$2
    set -- $(run_idem "$idem" unique first_pinned)
    pinned_first=$2 pinned_first_cpu=$3
    CLIENT_PIN=""
    pin "$all_cpus"
    echo "proxy.nginx.rps_pinned $pinned_nginx"
    echo "proxy.idem.first.rps_pinned $pinned_first"
    echo "proxy.idem.replay.rps_pinned $pinned_replay"
    echo "proxy.idem.first.rps_vs_nginx_pinned $(ratio "$pinned_first" "$pinned_nginx")"
    echo "proxy.first.cpu_ratio_pinned $(ratio "$pinned_first_cpu" "$pinned_nginx_cpu")"
    echo "proxy.idem.replay.rps_vs_nginx_pinned $(ratio "$pinned_replay" "$pinned_nginx")"
fi
# BENCH_CORE=1: only the CPU figures above (each change's quick check).
[ -n "${BENCH_CORE:-}" ] && exit 0
# BENCH_PERF=file: also profile a first-execution run (perf record).
if [ -n "${BENCH_PERF:-}" ] && command -v perf >/dev/null 2>&1; then
    perf record -g -o "$BENCH_PERF" -p "$idem_pid" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.2
    run_wrk "$idem" unique first_perf >/dev/null
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    exit 0
fi

# System calls per request, counted by perf on a run of their own (the
# tracepoint costs a little CPU: kept out of the runs above).
count_syscalls() { # $1 pid, $2 keys, $3 name, $4 port
    if ! command -v perf >/dev/null 2>&1; then
        echo "bench_proxy: perf missing: system calls not counted" >&2
        return
    fi
    out="$tmp/$3.perf"
    perf stat -x, -e raw_syscalls:sys_enter -p "$1" -o "$out" &
    perf_pid=$!
    sleep 0.2
    set -- $(run_wrk "$4" "$2" "$3")
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    awk -F, -v n="$1" '/raw_syscalls/ { printf "%.2f\n", n ? $1 / n : 0 }' \
        "$out"
}
echo "proxy.first.syscalls $(count_syscalls "$idem_pid" unique first_sys \
    "$idem") per_req"
echo "proxy.nginx.syscalls $(count_syscalls "$worker" unique nginx_sys \
    "$front") per_req"

# The 2-worker scaling factor: first executions, 2 workers over 1.
kill "$idem_pid"
wait "$idem_pid" 2>/dev/null || true
start_idem --workers 2
set -- $(run_wrk "$idem" unique first_2w)
check_idem first_2w
echo "proxy.idem.first_2workers.rps $2"
echo "proxy.idem.workers_scaling $(ratio "$2" "$mem_first") x"

# Allocations per request: the shim counts those after the first accept
# (the connections' own are a few per connection, over thousands of
# requests each) and reports at exit. Not in a $(...): it starts
# processes this shell must know to stop. Sets allocs.
count_allocs() { # $1 keys, $2 name
    allocs=""
    shim=$(ls "$BUILD"/*failalloc_shim*.so 2>/dev/null | head -1)
    if [ -z "$shim" ]; then
        echo "bench_proxy: no failalloc_shim: allocations not counted" >&2
        return
    fi
    kill "$idem_pid"
    wait "$idem_pid" 2>/dev/null || true
    report="$tmp/$2.allocs"
    export IDEM_FAIL_ALLOC_REPORT="$report" IDEM_FAIL_ALLOC_AT=0
    IDEM_PRELOAD=$shim
    start_idem
    unset IDEM_FAIL_ALLOC_REPORT IDEM_FAIL_ALLOC_AT IDEM_PRELOAD
    set -- $(run_wrk "$idem" "$1" "$2")
    kill "$idem_pid"
    wait "$idem_pid" 2>/dev/null || true
    allocs=$(sed -n 's/^counted=\([0-9]*\).*/\1/p' "$report" |
        awk -v n="$1" '{ printf "%.2f\n", n ? $1 / n : 0 }')
    start_idem
}
count_allocs unique first_allocs
echo "proxy.first.allocs $allocs per_req"
count_allocs "" pass_allocs
echo "proxy.passthrough.allocs $allocs per_req"
count_allocs 16 replay_allocs
echo "proxy.replay.allocs $allocs per_req"

# ---------------------------------------------------------------------------
# HTTP/2: clients speak h2c (prior knowledge) to idemproxy, whose upstream
# side stays HTTP/1.1 to the same stub, and to nginx (`listen ... http2`
# without ssl: h2c with prior knowledge on nginx 1.22), 32 connections of
# 10 streams each. First executions need a new key per request, which
# h2load cannot send: bench/h2_keys does (for both); h2load gives the
# passthrough (GET) figures. Placed before the Redis runs, which end the
# script early when their tools are missing.
h2_secs=$(echo "$DURATION" | sed 's/s$//')
h2_keys="$BUILD/bench/h2_keys"
cmake --build "$BUILD" --target h2_keys >&2 || true
# Run h2 load "$1" (keys or h2load) on port $2 as run $3: "requests rps".
run_h2() {
    if [ "$1" = keys ]; then
        "$h2_keys" "$2" "$h2_secs" 32 10 "$3-$$" >"$tmp/$3.out" 2>&1
        awk -v s="$h2_secs" '/^requests/ { printf "%d %.0f\n", $2, $2 / s
            if ($4 > 0) print "bench_proxy: run h2: " $4 " errors" > "/dev/stderr" }' \
            "$tmp/$3.out"
    else
        h2load -D "$h2_secs" -c 32 -m 10 -t $THREADS \
            "http://127.0.0.1:$2/pay" >"$tmp/$3.out" 2>&1
        awk -v s="$h2_secs" '/^requests:/ { printf "%d %.0f\n", $8, $8 / s }' \
            "$tmp/$3.out"
    fi
}
if command -v h2load >/dev/null 2>&1 && [ -x "$h2_keys" ]; then
    h2front=$(free_port)
    start_nginx h2front "upstream stub { server 127.0.0.1:$stub; keepalive 64; }
        server { listen 127.0.0.1:$h2front http2; location / {
            proxy_pass http://stub; proxy_http_version 1.1;
            proxy_set_header Connection \"\"; } }"
    wait_port "$h2front"
    h2worker=$(nginx_worker "$nginx_pid")
    for run in keys h2load; do
        c0=$(cpu_us "$h2worker")
        set -- $(run_h2 "$run" "$h2front" "h2_nginx_$run")
        c1=$(cpu_us "$h2worker")
        rps=$2
        set -- $(per_req "$c0" "$c1" "$1")
        eval "h2_nginx_$run=$1"
        [ "$run" = keys ] && echo "proxy.h2.nginx.rps $rps" &&
            echo "proxy.h2.nginx.cpu_us $1 us/req"
        [ "$run" = h2load ] && echo "proxy.h2.nginx.passthrough.cpu_us $1 us/req"
    done
    for run in keys h2load; do
        c0=$(cpu_us "$idem_pid")
        set -- $(run_h2 "$run" "$idem" "h2_idem_$run")
        c1=$(cpu_us "$idem_pid" 2>/dev/null || echo "$c0")
        check_idem "h2_idem_$run"
        rps=$2
        set -- $(per_req "$c0" "$c1" "$1")
        if [ "$run" = keys ]; then
            echo "proxy.h2.idem.first.rps $rps"
            echo "proxy.h2.idem.first.cpu_us $1 us/req"
            echo "proxy.h2.first.cpu_ratio $(ratio "$1" "$h2_nginx_keys")"
        else
            echo "proxy.h2.idem.passthrough.rps $rps"
            echo "proxy.h2.idem.passthrough.cpu_us $1 us/req"
            echo "proxy.h2.passthrough.cpu_ratio $(ratio "$1" "$h2_nginx_h2load")"
        fi
    done
else
    echo "bench_proxy: h2load (nghttp2-client) or h2_keys missing: HTTP/2 runs skipped" >&2
fi

# The same first and replay runs on the Redis store (a redis-server of our
# own, no persistence), against the memory store's figures of this run.
kill "$idem_pid"
wait "$idem_pid" 2>/dev/null || true
# idemproxy on store $2 (named $1 in the figures): first and replay runs,
# and their ratios to the memory store's.
store_runs() {
    start_idem --store "$2"
    set -- $(run_wrk "$idem" unique "$1_first") "$1"
    check_idem "$3_first"
    echo "proxy.idem_$3.first.rps $2"
    store_first=$2
    set -- $(run_wrk "$idem" 16 "$3_replay") "$3"
    check_idem "$3_replay"
    echo "proxy.idem_$3.replay.rps $2"
    awk -v n="$3" -v a="$store_first" -v b="$mem_first" -v c="$2" \
        -v d="$mem_replay" \
        'BEGIN { printf "proxy.idem_%s.first_ratio %.2f\n", n, (b > 0 ? a / b : 0)
                 printf "proxy.idem_%s.replay_ratio %.2f\n", n, (d > 0 ? c / d : 0) }'
}
redis_runs() {
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
        --loglevel warning >"$tmp/redis.log" 2>&1 &
    pids="$pids $!"
    wait_port "$rport"
    store_runs redis "redis://127.0.0.1:$rport"
}
if command -v redis-server >/dev/null 2>&1; then
    redis_runs
    kill "$idem_pid"
    wait "$idem_pid" 2>/dev/null || true
else
    echo "bench_proxy: redis-server missing: Redis runs skipped" >&2
fi

# TLS: nginx and idemproxy terminating it with the same certificate (EC
# P-256) in front of the same stub, unique-key POSTs over https.
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -nodes -keyout "$tmp/tls.key" -out "$tmp/tls.pem" -days 2 \
    -subj /CN=127.0.0.1 >/dev/null 2>&1; then
    echo "bench_proxy: openssl failed: TLS runs skipped" >&2
    exit 0
fi
tfront=$(free_port)
start_nginx tlsfront "upstream stub { server 127.0.0.1:$stub; keepalive 64; }
    server { listen 127.0.0.1:$tfront ssl;
        ssl_certificate $tmp/tls.pem; ssl_certificate_key $tmp/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { proxy_pass http://stub; proxy_http_version 1.1;
            proxy_set_header Connection \"\"; } }"
wait_port "$tfront"
tworker=$(nginx_worker "$nginx_pid")
c0=$(cpu_us "$tworker")
set -- $(SCHEME=https run_wrk "$tfront" unique tls_nginx)
c1=$(cpu_us "$tworker")
echo "proxy.tls.nginx.rps $2"
set -- $(per_req "$c0" "$c1" "$1")
tls_nginx_cpu=$1
echo "proxy.tls.nginx.cpu_us $tls_nginx_cpu us/req"
start_idem --tls-cert "$tmp/tls.pem" --tls-key "$tmp/tls.key"
set -- $(SCHEME=https run_idem "$idem" unique tls_first)
echo "proxy.tls.idem.first.rps $2"
echo "proxy.tls.idem.first.cpu_us $3 us/req"
echo "proxy.tls.first.cpu_ratio $(ratio "$3" "$tls_nginx_cpu")"

# ---------------------------------------------------------------------------
# Redis Cluster: the same first and replay runs on a Cluster of our own
# (3 primaries, no replicas, redis-cli --cluster create), keys spread over
# its slots by their hash tags; against the memory store's figures above.
if ! command -v redis-cli >/dev/null 2>&1; then
    echo "bench_proxy: redis-cli missing: Cluster runs skipped" >&2
    exit 0
fi
kill "$idem_pid"
wait "$idem_pid" 2>/dev/null || true
# Set p to a free port not handed out already: six are picked before the
# first server listens.
used=""
pick_port() {
    while :; do
        p=$(free_port)
        case " $used " in *" $p "*) continue ;; esac
        break
    done
    used="$used $p"
}
cluster_nodes=""
for i in 1 2 3; do
    pick_port
    cport=$p
    pick_port
    mkdir -p "$tmp/cluster$i"
    redis-server --port "$cport" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$tmp/cluster$i" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-port "$p" \
        --loglevel warning >"$tmp/cluster$i.log" 2>&1 &
    pids="$pids $!"
    wait_port "$cport"
    cluster_nodes="$cluster_nodes 127.0.0.1:$cport"
done
# shellcheck disable=SC2086
if ! redis-cli --cluster create $cluster_nodes --cluster-replicas 0 \
    --cluster-yes >"$tmp/cluster-create.log" 2>&1; then
    echo "bench_proxy: redis-cli --cluster create failed: Cluster runs skipped" >&2
    exit 0
fi
i=0
until redis-cli -p "$cport" cluster info | grep -q 'cluster_state:ok'; do
    i=$((i + 1))
    [ $i -gt 200 ] && echo "bench_proxy: the Cluster is not ok" >&2 && exit 1
    sleep 0.05
done
seeds=$(echo $cluster_nodes | tr ' ' ',')
store_runs cluster "redis-cluster://$seeds"
