/* Allocation-failure sweep over idemproxy's request path (issue 7). For
 * each allocation N of a window, a proxy of its own, with
 * tests/failalloc_shim.c preloaded to fail its Nth allocation, serves a
 * keyed POST (A), its replay (A') and a POST with a fresh key (R). Each
 * answer must be the upstream's 200, a 500/502/503 or a closed
 * connection; R must succeed when the failure came before it; the proxy
 * must exit 0 on SIGTERM leaving no more blocks live than a run without
 * a failure does.
 *
 * Windows: "cold" counts from the first connection (a fresh process: the
 * first request also pays for one-time initialisation); "warm" counts
 * from the second, after a warm-up request. "redis-warm" is "warm" on the
 * Redis store (one redis-server per group of tests; skipped without
 * TEST_REDIS_BIN): A' may also be 409 there, R may fail while the store's
 * connection is down if a request after it succeeds, and a stop request
 * marks where the shutdown begins. "redis-noscript" makes Redis forget
 * the scripts after the warm-up (the EVAL retry) and sweeps A alone.
 * "tls-warm" is "warm" with the upstream over TLS (https to a second
 * idemproxy, not failed, terminating TLS in front of demo_upstream; a CA
 * and its certificate made with the openssl command) and no idle upstream
 * connections kept, so that A and R each make a TLS handshake.
 * "tunnel-warm" sweeps Upgrade: A, A' and R are each a WebSocket tunnel
 * to an echo server (tests/integration/ws_echo.py; skipped without
 * python3-websockets), one masked frame sent and its echo read; a tunnel
 * whose echo came back whole counts as a 200, one whose bytes came back
 * wrong is never allowed.
 *
 * Runs with no failure first count the window's allocations (K). Windows
 * of more than MAX_SITES are swept at an even stride unless
 * IDEM_FAILALLOC_ALL=1 (every site); IDEM_FAILALLOC_ONLY=N sweeps site N
 * alone (to reproduce a finding; set "break failalloc_hit" in a debugger
 * to see the site); IDEM_FAILALLOC_WINDOW=NAME[,NAME...] runs those
 * windows only. */
#include <ctype.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "redis_server.h"

#define MAX_SITES 400       /* sites swept per window by default (~7 s) */
#define BATCH 10            /* proxies per cmocka test (harness: 16 slots) */
#define REQ_TIMEOUT_MS 3000 /* an answer slower than this is a hang */
#define ERR_TAIL 300        /* bytes of the proxy's stderr shown */
#define COUNT_RUNS 3        /* runs without failure per window */

/* R must succeed when the failure came before it, R_MARGIN allocations
 * or more: a connection's close and the next one's accept may swap from
 * run to run, moving R's start by an allocation or two. */
#define R_MARGIN 4
#define ALL_ENV "IDEM_FAILALLOC_ALL"
#define ONLY_ENV "IDEM_FAILALLOC_ONLY"
#define WINDOW_ENV "IDEM_FAILALLOC_WINDOW"

/* Blocks live at exit beyond the run without failure. 0: the proxy frees
 * all it allocates, and what stays allocated for the whole process (in
 * libc and libevent) is the same whether an allocation failed or not. */
#define LIVE_SLACK 0

/* The Redis store writes a record after its answer went out: A' (and
 * the stop) wait until it is there (or gone), at most this long (in a run
 * without failure: COUNT_WAIT_MS). A record whose completion failed stays
 * in flight (until its lease ends). */
#define STORE_WAIT_MS 200
#define COUNT_WAIT_MS 3000
#define REDIS_TIMEOUT "500ms" /* --redis-timeout: a lost reply ends soon */

/* On Redis, a failed allocation may take the store's connection down
 * (hiredis then fails every command in flight): requests get 503 until
 * it is back, after a backoff. R may fail then, but a request with a
 * fresh key must succeed within RECOVER_MS. Another accept order moves
 * R's start by a few allocations more than without Redis. */
#define RECOVER_MS 2000
#define RECOVER_PAUSE_MS 50
#define REDIS_R_MARGIN 8

/* hiredis before 1.0 aborts (hi_malloc) when it cannot allocate as it
 * frees a connection (the dict iterators of __redisAsyncFree), which the
 * proxy does at its end: a silent SIGABRT after the stop request began
 * is that, not the proxy's fault, and is tolerated (and listed). */
#define HIREDIS_ABORTS_AT_FREE (HIREDIS_MAJOR < 1)

enum { CLOSED = -1, HUNG = -2, REFUSED = -3 }; /* no response */
enum { BAD_ECHO = -4 }; /* a tunnel's bytes came back wrong */

#define PYTHON "/usr/bin/python3" /* the one python3-websockets is for */

struct window {
    const char *name;
    unsigned long accepts; /* the shim counts from this connection on */
    bool warm_up;          /* a request before counting starts */
    bool redis;            /* on the Redis store */
    bool flush;            /* Redis forgets the scripts after the warm-up */
    bool a_only;           /* sweep A alone (to the replay's connection) */
    bool tls;              /* the upstream over TLS, a handshake each */
    bool tunnel;           /* A, A' and R are WebSocket tunnels */
    unsigned long count;   /* K: allocations of a run without failure */
    unsigned long least;   /* the fewest of those runs (K's variation) */
    unsigned long sites;   /* swept: K, or A's allocations (a_only) */
    unsigned long r_at;    /* allocations made before R's connection */
    unsigned long r_last;  /* the most of those (its variation) */
    unsigned long stop_at; /* ... before the stop request's (Redis) */
    long live;             /* blocks live at exit of that run */
    bool counted;          /* the runs without failure passed */
    char title[48];        /* of its counting test */
};

static struct window windows[] = {
    { .name = "cold", .accepts = 1 },
    { .name = "warm", .accepts = 2, .warm_up = true },
    { .name = "redis-warm", .accepts = 2, .warm_up = true, .redis = true },
    { .name = "redis-noscript",
      .accepts = 2,
      .warm_up = true,
      .redis = true,
      .flush = true,
      .a_only = true },
    { .name = "tls-warm", .accepts = 2, .warm_up = true, .tls = true },
    { .name = "tunnel-warm", .accepts = 2, .warm_up = true, .tunnel = true },
};

#define NWINDOWS (sizeof(windows) / sizeof(windows[0]))

/* What a run saw: the three answers and the shim's report. */
struct run {
    struct h_resp a, a2, r;
    int sa, sa2, sr; /* status, CLOSED, HUNG or REFUSED */
    bool stored;     /* A's record left flight before A' (Redis) */
    int tries;       /* requests after R until one succeeded (Redis) */
    bool recovered;  /* one did */
    int exit_status;
    unsigned long counted, failed, marks[8];
    size_t nmarks;
    long live;
    bool reported;
    char err[16384]; /* the proxy's stderr, from its start */
};

/* A cmocka test: sites first, first + step, ... (n of them). */
struct batch {
    struct window *w;
    unsigned long first, step, n;
    char name[80];
};

static struct test_redis redis; /* the group's redis-server; pid 0: none */
static bool redis_wanted;       /* a window of the group runs on Redis */
static unsigned long serial;    /* runs so far: keys are unique per run */

/* -- Processes --------------------------------------------------------- */

/* What w's proxies forward to: demo_upstream, or for a TLS window an
 * idemproxy (never failed) terminating TLS in front of it, with a CA and
 * a certificate it signed for 127.0.0.1 made here. */
static struct h_proc *start_upstream(const struct window *w)
{
    const char *argv[] = { DEMO_UPSTREAM_PATH, "--listen", "127.0.0.1:0",
                           NULL };
    struct h_proc *demo, *back;
    char *cert, *key, upstream[32];

    if (w->tunnel)
        return h_start(PYTHON, (const char *const[]){ PYTHON, WS_ECHO_PATH,
                                                      "server", NULL });
    demo = h_start(DEMO_UPSTREAM_PATH, argv);
    if (!w->tls)
        return demo;
    h_make_certs("ca ca\nsrv srv localhost IP:127.0.0.1 2\n");
    cert = h_tmp_path("srv.pem");
    key = h_tmp_path("srv.key");
    snprintf(upstream, sizeof(upstream), "127.0.0.1:%u", demo->http_port);
    back = h_start(IDEMPROXY_PATH,
                   (const char *const[]){
                       IDEMPROXY_PATH, "--listen", "127.0.0.1:0", "--workers",
                       "1", "--admin-listen", "off", "--upstream", upstream,
                       "--tls-cert", cert, "--tls-key", key, NULL });
    free(cert);
    free(key);
    return back;
}

/* The shim's settings, for the next child only: it inherits them at
 * fork (report NULL: clear them). */
static void shim_env(const struct window *w, unsigned long n,
                     const char *report)
{
    static const char *const names[] = { "LD_PRELOAD", "IDEM_FAIL_ALLOC_AT",
                                         "IDEM_FAIL_ALLOC_ACCEPTS",
                                         "IDEM_FAIL_ALLOC_REPORT" };
    char at[24], accepts[24];
    const char *values[] = { FAILALLOC_SHIM_PATH, at, accepts, report };
    size_t i;

    snprintf(at, sizeof(at), "%lu", n);
    snprintf(accepts, sizeof(accepts), "%lu", w->accepts);
    for (i = 0; i < 4; i++)
        report ? setenv(names[i], values[i], 1) : unsetenv(names[i]);
}

/* idemproxy with the shim preloaded: one worker, so that the order of
 * allocations, and so N, is the same from run to run. */
static struct h_proc *start_proxy(const struct window *w, uint16_t up,
                                  unsigned long n, const char *report)
{
    char upstream[32], store[48], *ca = NULL;
    const char *argv[16] = {
        IDEMPROXY_PATH,   "--listen", "127.0.0.1:0", "--workers", "1",
        "--admin-listen", "off",      "--upstream",  upstream,    NULL
    };
    size_t k = 9;
    struct h_proc *px;

    snprintf(upstream, sizeof(upstream), "127.0.0.1:%u", up);
    if (w->redis) {
        snprintf(store, sizeof(store), "redis://127.0.0.1:%u", redis.port);
        argv[k++] = "--store";
        argv[k++] = store;
        argv[k++] = "--redis-timeout";
        argv[k++] = REDIS_TIMEOUT;
    }
    if (w->tls) {
        ca = h_tmp_path("ca.pem");
        argv[k++] = "--upstream-tls";
        argv[k++] = "--upstream-ca";
        argv[k++] = ca;
        argv[k++] = "--upstream-idle";
        argv[k++] = "0";
    }
    argv[k] = NULL;
    shim_env(w, n, report);
    px = h_start(IDEMPROXY_PATH, argv);
    shim_env(w, n, NULL);
    free(ca);
    return px;
}

/* -- Redis --------------------------------------------------------------- */

static bool have_redis(void)
{
    return access(TEST_REDIS_BIN, X_OK) == 0;
}

/* Whether python3 can import websockets (for the tunnel window). */
static bool have_websockets(void)
{
    const char *argv[] = { PYTHON, "-c", "import websockets", NULL };
    char err[256];

    return access(PYTHON, X_OK) == 0 &&
           h_run(PYTHON, argv, err, sizeof(err)) == 0;
}

/* Start the group's redis-server if one of its windows needs it. A
 * server that does not start fails those windows' tests, not the group. */
static int group_setup(void **state)
{
    (void)state;
    if (redis_wanted && have_redis() && test_redis_start(&redis) != 0)
        redis.pid = 0;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    test_redis_stop(&redis);
    return 0;
}

/* The state byte of the record of key (any scope) in Redis: 0 if there
 * is none, -1 if Redis did not say. */
static long record_state(redisContext *c, const char *key)
{
    static const char script[] = "local k = redis.call('KEYS', ARGV[1]) "
                                 "if #k == 0 then return 0 end "
                                 "local v = redis.call('GET', k[1]) "
                                 "if not v then return 0 end "
                                 "return string.byte(v, 4)";
    char *pattern = h_format("*:%s}", key);
    redisReply *rep = redisCommand(c, "EVAL %s 0 %s", script, pattern);
    long state = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;

    if (rep)
        freeReplyObject(rep);
    free(pattern);
    return state;
}

/* Wait up to ms for key's record to leave flight (stored or released).
 * Whether it did. */
static bool wait_stored(const char *key, long ms)
{
    redisContext *c = test_redis_client(&redis);
    long end = h_now_ms() + ms, state = -1;

    while (c && (state = record_state(c, key)) == 1 && h_now_ms() < end)
        test_redis_sleep_ms(1);
    if (c)
        redisFree(c);
    return state == 0 || state > 1;
}

/* -- Requests ---------------------------------------------------------- */

/* What an answer that did not come was, asked at start: HUNG if
 * REQ_TIMEOUT_MS passed, else CLOSED (the proxy closed the connection). */
static int no_answer(long start)
{
    return h_now_ms() - start >= REQ_TIMEOUT_MS ? HUNG : CLOSED;
}

/* Send raw (len bytes) on a fresh connection and read the answer into
 * *r: its status, CLOSED if the proxy closed the connection without a
 * whole response, HUNG if none came in REQ_TIMEOUT_MS, REFUSED if it
 * could not be connected to (the proxy is gone). */
static int ask_raw(uint16_t port, const char *raw, size_t len, struct h_resp *r)
{
    struct h_conn *c = h_connect(port);
    long start = h_now_ms();
    int rc = -1;

    *r = (struct h_resp){ 0 };
    if (!c)
        return REFUSED;
    h_set_timeout(c, REQ_TIMEOUT_MS);
    if (h_send(c, raw, len) == 0)
        rc = h_read(c, r, false);
    h_close(c);
    return rc == 0 ? r->status : no_answer(start);
}

static int post(uint16_t port, const char *target, const char *key,
                struct h_resp *r)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "x"
    };
    size_t len;
    char *raw = h_build(&q, &len);
    int status = ask_raw(port, raw, len, r);

    free(raw);
    return status;
}

/* A WebSocket tunnel through the proxy on a fresh connection: the
 * Upgrade, then one masked text frame, whose echo is read. 200 if the
 * echo came back whole; the proxy's status if it answered other than
 * 101; BAD_ECHO if other bytes came back; else as ask_raw. */
static int tunnel(uint16_t port)
{
    static const char upgrade[] =
        "GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";
    /* "hello" in a final text frame, masked with 1 2 3 4 (RFC 6455) */
    static const unsigned char frame[] = { 0x81,    0x85,    1,       2,
                                           3,       4,       'h' ^ 1, 'e' ^ 2,
                                           'l' ^ 3, 'l' ^ 4, 'o' ^ 1 };
    static const unsigned char echo[] = { 0x81, 5, 'h', 'e', 'l', 'l', 'o' };
    unsigned char got[sizeof(echo)];
    struct h_conn *c = h_connect(port);
    long start = h_now_ms();
    struct h_resp r = { 0 };
    int status = CLOSED;

    if (!c)
        return REFUSED;
    h_set_timeout(c, REQ_TIMEOUT_MS);
    if (h_send(c, upgrade, sizeof(upgrade) - 1) == 0 &&
        h_read(c, &r, false) == 0) {
        status = r.status;
        if (status == 101)
            status = h_send(c, frame, sizeof(frame)) != 0 ||
                             h_recv_raw(c, got, sizeof(got)) != 0
                         ? CLOSED
                     : memcmp(got, echo, sizeof(echo)) == 0 ? 200
                                                            : BAD_ECHO;
    }
    h_resp_free(&r);
    h_close(c);
    return status == CLOSED ? no_answer(start) : status;
}

/* A key unique to this run: "<what>-<window>-<N>-<serial>". */
static char *run_key(char what, const struct window *w, unsigned long n)
{
    return h_format("%c-%s-%lu-%lu", what, w->name, n, serial);
}

/* The warm-up: a keyed POST whose upstream connection is not kept, so
 * that A opens one as in the cold window. On Redis, its 200 also proves
 * the worker's connection up (and its record stored) before counting. */
static bool warm_up(const struct window *w, uint16_t port, unsigned long n)
{
    char *key;
    struct h_resp r;
    bool ok;

    if (w->tunnel)
        return tunnel(port) == 200;
    key = run_key('w', w, n);
    ok = post(port, "/w?close=1", key, &r) == 200;

    if (ok && w->redis)
        ok = wait_stored(key, COUNT_WAIT_MS);
    h_resp_free(&r);
    free(key);
    return ok;
}

/* After R failed on Redis: requests with fresh keys, RECOVER_PAUSE_MS
 * apart, until one succeeds or RECOVER_MS has passed (or the proxy is
 * gone: its exit status tells why). */
static void recover(const struct window *w, uint16_t port, unsigned long n,
                    struct run *run)
{
    long end = h_now_ms() + RECOVER_MS;
    char *base = run_key('t', w, n), *key;
    struct h_resp r;
    int status;

    do {
        test_redis_sleep_ms(RECOVER_PAUSE_MS);
        key = h_format("%s-%d", base, ++run->tries);
        status = post(port, "/t", key, &r);
        h_resp_free(&r);
        free(key);
    } while (status != 200 && status != REFUSED && h_now_ms() < end);
    run->recovered = status == 200;
    free(base);
}

/* The stop request (Redis): a bad one, answered by the proxy alone, whose
 * connection marks where the requests end and the shutdown begins. */
static void stop_request(uint16_t port)
{
    static const char bad[] = "BAD\r\n\r\n";
    struct h_resp r;

    ask_raw(port, bad, sizeof(bad) - 1, &r);
    h_resp_free(&r);
}

/* A, A' (the same key: a replay) and R (a fresh key); on Redis, R's
 * recovery if it failed, then the stop request. */
static void exercise(const struct window *w, uint16_t port, unsigned long n,
                     struct run *run)
{
    char *ka, *kr;
    long wait = n ? STORE_WAIT_MS : COUNT_WAIT_MS;

    if (w->tunnel) {
        run->sa = tunnel(port);
        run->sa2 = tunnel(port);
        run->sr = tunnel(port);
        return;
    }
    ka = run_key('a', w, n);
    kr = run_key('r', w, n);
    run->sa = post(port, "/a", ka, &run->a);
    if (w->redis && run->sa == 200)
        run->stored = wait_stored(ka, wait);
    run->sa2 = post(port, "/a", ka, &run->a2);
    run->sr = post(port, "/r", kr, &run->r);
    if (w->redis && run->sr == 200)
        wait_stored(kr, wait);
    else if (w->redis)
        recover(w, port, n, run);
    if (w->redis)
        stop_request(port);
    free(ka);
    free(kr);
}

static void run_free(struct run *run)
{
    h_resp_free(&run->a);
    h_resp_free(&run->a2);
    h_resp_free(&run->r);
}

/* -- The shim's report ------------------------------------------------- */

/* Parse "counted=K failed=F live=L marks=M1,M2,..." into run. */
static void read_report(const char *path, struct run *run)
{
    FILE *f = fopen(path, "r");
    char marks[256] = "", *s = marks, *end;

    run->reported =
        f && fscanf(f, "counted=%lu failed=%lu live=%ld marks=%255s",
                    &run->counted, &run->failed, &run->live, marks) >= 3;
    if (f)
        fclose(f);
    for (run->nmarks = 0; run->nmarks < 8 && *s; s = end) {
        run->marks[run->nmarks++] = strtoul(s, &end, 10);
        if (*end != ',')
            break;
        end++;
    }
}

/* -- One run ----------------------------------------------------------- */

/* Run a proxy failing allocation n (0: none) through the window. False if
 * the warm-up failed (the run says nothing then). */
static bool run_window(const struct window *w, uint16_t up, unsigned long n,
                       struct run *run)
{
    char *report = h_format("%s/report-%s-%lu", h_tmpdir(), w->name, n);
    struct h_proc *px = start_proxy(w, up, n, report);
    bool warm;

    serial++;
    warm = !w->warm_up || warm_up(w, px->http_port, n);
    if (warm && w->flush) /* EVALSHA gets NOSCRIPT: the EVAL retry */
        warm = test_redis_cmd(&redis, "SCRIPT FLUSH") == 0;
    *run = (struct run){ .sa = CLOSED, .sa2 = CLOSED, .sr = CLOSED };
    if (warm)
        exercise(w, px->http_port, n, run);
    run->exit_status = h_stop(px);
    h_stderr(px, run->err, sizeof(run->err));
    read_report(report, run);
    unlink(report);
    free(report);
    return warm;
}

static const char *answer(int status, char *buf, size_t cap)
{
    if (status == CLOSED)
        return "closed";
    if (status == HUNG)
        return "hung";
    if (status == REFUSED)
        return "refused";
    if (status == BAD_ECHO)
        return "bad echo";
    snprintf(buf, cap, "%d", status);
    return buf;
}

static bool allowed(int status)
{
    return status == 200 || status == 500 || status == 502 || status == 503 ||
           status == CLOSED || status == REFUSED;
}

/* A' may also be 409: on Redis, A's record not stored yet (see
 * STORE_WAIT_MS); with either store, never, A's completion having failed:
 * the request ran, so the key is held in flight until its lease ends (and
 * then answers "outcome unknown"), never released to run again. */
static bool allowed_replay(const struct window *w, int status)
{
    (void)w;
    return allowed(status) || status == 409;
}

static bool same_header(const struct h_resp *a, const struct h_resp *b,
                        const char *name)
{
    const char *va = h_header(a, name), *vb = h_header(b, name);

    return va && vb && strcmp(va, vb) == 0;
}

/* A replayed answer must be the stored response whole: A's body and
 * Content-Type when A got it, else at least the upstream's JSON. */
static bool replay_intact(const struct run *run)
{
    const char *v = h_header(&run->a2, "Idempotent-Replayed");

    if (run->sa2 != 200 || !v || strcmp(v, "true") != 0)
        return true;
    if (run->sa == 200)
        return strcmp(run->a2.body, run->a.body) == 0 &&
               same_header(&run->a, &run->a2, "Content-Type");
    return h_json_long(&run->a2, "execution") > 0 &&
           h_header(&run->a2, "Content-Type") != NULL;
}

/* Whether the proxy said its connection to Redis went down. */
static bool store_lost(const struct run *run)
{
    return strstr(run->err, "redis: connection lost") ||
           strstr(run->err, "redis: a command timed out");
}

/* What is wrong with R, failing allocation n of w: R must succeed when
 * the failure came before it (on Redis, unless the store's connection
 * went down); a failed R on Redis must be followed by a success. */
static const char *r_problem(const struct window *w, unsigned long n,
                             const struct run *run)
{
    if (run->sr == 200)
        return NULL;
    if (w->redis && !run->recovered)
        return "R failed, and no request after it succeeded: the proxy "
               "did not recover";
    if (n + (w->redis ? REDIS_R_MARGIN : R_MARGIN) > w->r_at)
        return NULL;
    if (!w->redis)
        return "R failed: the proxy did not recover";
    return store_lost(run) ? NULL : "R failed, the store's connection up";
}

/* Whether the last line of err is one of the proxy's log lines (in the
 * text format, they start with a timestamp): no message from an assert
 * or from libc came last. */
static bool ends_in_log_line(const char *err)
{
    size_t len = strlen(err);
    const char *line;

    while (len && err[len - 1] == '\n')
        len--;
    for (line = err + len; line > err && line[-1] != '\n'; line--)
        ;
    return (size_t)(err + len - line) > 20 && isdigit((unsigned char)line[0]) &&
           line[4] == '-' && line[10] == 'T';
}

/* Whether run died of HIREDIS_ABORTS_AT_FREE: a silent SIGABRT once the
 * stop request (the shutdown) had begun (its whole stderr seen). */
static bool hiredis_free_abort(const struct window *w, unsigned long n,
                               const struct run *run)
{
    return HIREDIS_ABORTS_AT_FREE && w->redis && n > w->stop_at &&
           run->exit_status == 128 + SIGABRT &&
           strlen(run->err) + 1 < sizeof(run->err) &&
           ends_in_log_line(run->err);
}

/* What is wrong with run, failing allocation n of w, into why; false if
 * nothing. A run may count one allocation fewer than K (libevent grows
 * its change list when two connections' events share a loop turn): then
 * the last site goes unfailed, and that is not the proxy's fault. */
static bool judge(const struct window *w, unsigned long n,
                  const struct run *run, char *why, size_t cap)
{
    const char *r = r_problem(w, n, run);

    if (run->exit_status != 0)
        snprintf(why, cap, "exit status %d after SIGTERM", run->exit_status);
    else if (run->sa == HUNG || run->sa2 == HUNG || run->sr == HUNG)
        snprintf(why, cap, "no answer in %d ms: a hang", REQ_TIMEOUT_MS);
    else if (!allowed(run->sa) || !allowed_replay(w, run->sa2) ||
             !allowed(run->sr))
        snprintf(why, cap,
                 "an answer outside 200/500/502/503/closed (409 for A')");
    else if (!replay_intact(run))
        snprintf(why, cap, "A' replayed a response that is not A's");
    else if (r)
        snprintf(why, cap, "%s", r);
    else if (!run->reported || (run->failed != 1 && run->counted >= n))
        snprintf(why, cap, "allocation %lu was not failed (%lu counted)", n,
                 run->counted);
    else if (run->live > w->live + LIVE_SLACK)
        snprintf(why, cap, "%ld blocks live at exit, %ld without failure",
                 run->live, w->live);
    else
        return false;
    return true;
}

/* Print what is wrong with run; true if something is. */
static bool report_problem(const struct window *w, unsigned long n,
                           const struct run *run)
{
    char why[160], b1[16], b2[16], b3[16];
    size_t len = strlen(run->err);

    if (hiredis_free_abort(w, n, run)) {
        print_message("%s N=%lu: tolerated: hiredis %d.%d aborted as it "
                      "freed a connection\n",
                      w->name, n, HIREDIS_MAJOR, HIREDIS_MINOR);
        return false;
    }
    if (!judge(w, n, run, why, sizeof(why)))
        return false;
    print_error("%s N=%lu: %s (A=%s A'=%s R=%s); idemproxy's stderr ends:\n"
                "%s\n",
                w->name, n, why, answer(run->sa, b1, sizeof(b1)),
                answer(run->sa2, b2, sizeof(b2)),
                answer(run->sr, b3, sizeof(b3)),
                run->err + (len > ERR_TAIL ? len - ERR_TAIL : 0));
    return true;
}

/* -- Tests ------------------------------------------------------------- */

/* A run without failure: every answer right, A' a replay. */
static void assert_clean(const struct window *w, const struct run *run)
{
    assert_int_equal(run->exit_status, 0);
    assert_int_equal(run->sa, 200);
    assert_true(!w->redis || run->stored);
    assert_int_equal(run->sa2, 200);
    assert_true(w->tunnel || h_header(&run->a2, "Idempotent-Replayed"));
    assert_int_equal(run->sr, 200);
    assert_true(run->reported);
    assert_int_equal(run->failed, 0);
    assert_int_equal(run->tries, 0);
    assert_int_equal(run->nmarks, w->redis ? 4 : 3); /* A, A', R, stop */
}

#define MIN_INTO(x, v, first) ((x) = (first) || (v) < (x) ? (v) : (x))
#define MAX_INTO(x, v, first) ((x) = (first) || (v) > (x) ? (v) : (x))

/* Fold a run without failure into w: the window's size (the most any run
 * counted), R's start and the stop's (the earliest), the blocks live at
 * exit (the most); the sites to sweep: K, or A's (before A' in every
 * run). */
static void note_run(struct window *w, const struct run *run, bool first)
{
    MAX_INTO(w->count, run->counted, first);
    MIN_INTO(w->least, run->counted, first);
    if (w->a_only)
        MIN_INTO(w->sites, run->marks[1], first);
    else
        MAX_INTO(w->sites, run->counted, first);
    MIN_INTO(w->r_at, run->marks[2], first);
    MAX_INTO(w->r_last, run->marks[2], first);
    if (w->redis)
        MIN_INTO(w->stop_at, run->marks[3], first);
    MAX_INTO(w->live, run->live, first);
}

/* Runs without failure: every answer right, and the window's figures. */
static void count_window(struct window *w)
{
    struct h_proc *up = start_upstream(w);
    struct run run;
    int i;

    for (i = 0; i < COUNT_RUNS; i++) {
        assert_true(run_window(w, up->http_port, 0, &run));
        assert_clean(w, &run);
        note_run(w, &run, i == 0);
        run_free(&run);
    }
    w->counted = true;
    print_message("%s window: %lu allocations (%lu..%lu in %d runs; R from "
                  "%lu..%lu), %ld live at exit\n",
                  w->name, w->count, w->least, w->count, COUNT_RUNS, w->r_at,
                  w->r_last, w->live);
    if (w->a_only)
        print_message("%s window: A's %lu swept\n", w->name, w->sites);
}

static void test_count(void **state)
{
    struct window *w = *state;

    if (w->redis && !have_redis()) {
        print_message("%s window: skipped (no %s)\n", w->name, TEST_REDIS_BIN);
        skip();
    }
    if (w->tunnel && !have_websockets()) {
        print_message("%s window: skipped (no python3-websockets)\n", w->name);
        skip();
    }
    if (w->redis && !redis.pid)
        fail_msg("%s window: redis-server did not start", w->name);
    count_window(w);
}

static void test_sweep(void **state)
{
    const struct batch *b = *state;
    struct h_proc *up = start_upstream(b->w);
    unsigned long i, n, bad = 0;
    struct run run;

    if (b->w->redis && !redis.pid)
        fail_msg("%s: redis-server did not start", b->name);
    for (i = 0; i < b->n; i++) {
        n = b->first + i * b->step;
        if (!run_window(b->w, up->http_port, n, &run))
            fail_msg("%s N=%lu: the warm-up request failed", b->w->name, n);
        bad += report_problem(b->w, n, &run);
        run_free(&run);
    }
    if (bad)
        fail_msg("%lu of %lu failed allocations went wrong", bad, b->n);
}

/* -- Running ----------------------------------------------------------- */

/* Whether w is among IDEM_FAILALLOC_WINDOW's names (all when unset). */
static bool selected(const struct window *w)
{
    const char *list = getenv(WINDOW_ENV), *p, *end;
    size_t len = strlen(w->name);

    if (!list || !*list)
        return true;
    for (p = list; *p; p = *end ? end + 1 : end) {
        end = strchr(p, ',');
        end = end ? end : p + strlen(p);
        if ((size_t)(end - p) == len && strncmp(p, w->name, len) == 0)
            return true;
    }
    return false;
}

/* The stride for w: 1, or what keeps it within MAX_SITES. */
static unsigned long stride(const struct window *w)
{
    const char *all = getenv(ALL_ENV);

    if ((all && strcmp(all, "1") == 0) || w->sites <= MAX_SITES)
        return 1;
    return (w->sites + MAX_SITES - 1) / MAX_SITES;
}

/* Append w's batches to tests[*n...]. */
static void add_batches(struct window *w, struct CMUnitTest *tests,
                        struct batch *batches, size_t *n)
{
    unsigned long step = stride(w), sites = (w->sites + step - 1) / step, i;
    unsigned long first = 1;
    const char *only = getenv(ONLY_ENV);
    struct batch *b;

    if (only && *only) { /* one site, if the window has it */
        first = strtoul(only, NULL, 10);
        step = 1;
        sites = first >= 1 && first <= w->sites;
    }
    if (step > 1)
        print_message("%s window: every %luth of %lu allocations (%s=1: "
                      "all)\n",
                      w->name, step, w->sites, ALL_ENV);
    for (i = 0; i < sites; i += BATCH, (*n)++) {
        b = &batches[*n];
        *b = (struct batch){ .w = w, .first = first + i * step, .step = step };
        b->n = sites - i < BATCH ? sites - i : BATCH;
        snprintf(b->name, sizeof(b->name), "%s N=%lu..%lu", w->name, b->first,
                 b->first + (b->n - 1) * step);
        tests[*n] =
            (struct CMUnitTest){ b->name, test_sweep, h_setup, h_teardown, b };
    }
}

/* The sweep's tests, one per BATCH sites of each counted window. */
static int run_sweep(void)
{
    size_t cap = 0, n = 0, i;
    struct CMUnitTest *tests;
    struct batch *batches;
    int failed;

    redis_wanted = false;
    for (i = 0; i < NWINDOWS; i++)
        if (windows[i].counted) {
            cap += (windows[i].sites + BATCH - 1) / BATCH;
            redis_wanted |= windows[i].redis;
        }
    tests = calloc(cap ? cap : 1, sizeof(*tests));
    batches = calloc(cap ? cap : 1, sizeof(*batches));
    if (!tests || !batches)
        abort(); /* a test program out of memory has nothing to report */
    for (i = 0; i < NWINDOWS; i++)
        if (windows[i].counted)
            add_batches(&windows[i], tests, batches, &n);
    failed = _cmocka_run_group_tests("failalloc sweep", tests, n, group_setup,
                                     group_teardown);
    free(tests);
    free(batches);
    return failed;
}

/* The counting tests of the selected windows. */
static int run_counts(void)
{
    struct CMUnitTest counts[NWINDOWS];
    size_t n = 0, i;

    redis_wanted = false;
    for (i = 0; i < NWINDOWS; i++) {
        if (!selected(&windows[i]))
            continue;
        snprintf(windows[i].title, sizeof(windows[i].title), "count %s",
                 windows[i].name);
        counts[n++] = (struct CMUnitTest){ windows[i].title, test_count,
                                           h_setup, h_teardown, &windows[i] };
        redis_wanted |= windows[i].redis;
    }
    return _cmocka_run_group_tests("failalloc windows", counts, n, group_setup,
                                   group_teardown);
}

int main(void)
{
    const char *valgrind = getenv("IDEM_UNDER_VALGRIND");

    /* valgrind (and a proxy wrapper) replace malloc: the shim would
     * fight them */
    if ((valgrind && strcmp(valgrind, "1") == 0) || h_proxy_wrapped()) {
        print_message("test_failalloc: skipped under valgrind\n");
        return 0;
    }
    return run_counts() + run_sweep();
}
