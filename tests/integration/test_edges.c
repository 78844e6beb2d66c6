/* idemproxy at the edges of HTTP and of the process: header names that
 * are not tokens, request targets that would slip past --require-key,
 * the Host rules, running out of file descriptors, the Date on the
 * proxy's own answers, and SIGUSR1. Each test starts its own
 * demo_upstream and idemproxy on loopback; "executed" is read from the
 * upstream's GET /count. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "proxy_helpers.h"

/* The EMFILE test: idemproxy's descriptor limit (prlimit's flag), the
 * connections opened against it, and how long it is watched. */
#define FD_LIMIT "--nofile=40:40"
#define FLOOD_CONNS 80
#define WATCH_MS 2000

/* idemproxy (one worker) in front of up, with extra flags (or NULL),
 * started through the command words pre (e.g. prlimit ...; NULL: none). */
static struct h_proc *proxy_via(const char *const *pre, struct h_proc *up,
                                const char *const *extra)
{
    char addr[32];

    snprintf(addr, sizeof(addr), "127.0.0.1:%u", up->http_port);
    return proxy_start(pre, FLAGS("--workers", "1", "--upstream", addr), extra);
}

/* A fresh demo_upstream (*up) and one-worker idemproxy in front of it. */
static struct h_proc *pair_one_worker(struct h_proc **up,
                                      const char *const *extra)
{
    *up = upstream_on("127.0.0.1:0");
    return proxy_via(NULL, *up, extra);
}

/* Send raw on a fresh connection: the status, and the connection must be
 * closed after it when want_closed. */
static int raw_status(struct h_proc *px, const char *raw, bool want_closed)
{
    struct h_resp r;
    bool closed = false;
    int status;

    assert_int_equal(
        h_exchange_raw(px->http_port, raw, &r, want_closed ? &closed : NULL),
        0);
    status = r.status;
    if (want_closed && !closed)
        fail_msg("not closed after %d to: %s", status, raw);
    h_resp_free(&r);
    return status;
}

/* -- Header names (RFC 9112 §5.1) --------------------------------------- */

static void test_space_before_colon_is_400(void **state)
{
    static const char *const raws[] = {
        "POST /s HTTP/1.1\r\nHost: x\r\nX-Foo : bar\r\n"
        "Content-Length: 1\r\n\r\nx",
        "POST /s HTTP/1.1\r\nHost: x\r\nX-Foo\t: bar\r\n"
        "Content-Length: 1\r\n\r\nx",
        "POST /s HTTP/1.1\r\nHost: x\r\nIdempotency-Key : k-1\r\n"
        "Content-Length: 1\r\n\r\nx",
        "POST /s HTTP/1.1\r\nHost: x\r\nIdempotency-Key : k-1\r\n"
        "Content-Length: 1\r\n\r\nx",
        "GET /s HTTP/1.1\r\nHost : x\r\n\r\n",
    };
    struct h_proc *up, *px = pair_one_worker(&up, NULL);

    (void)state;
    for (size_t i = 0; i < sizeof(raws) / sizeof(raws[0]); i++)
        assert_int_equal(raw_status(px, raws[i], true), 400);
    assert_int_equal(h_upstream_count(up->http_port), 0);
}

/* -- Request targets and --require-key ------------------------------- */

static void test_require_key_not_bypassed(void **state)
{
    static const char *const targets[] = {
        "http://example.com/payments/charge",
        "HTTP://example.com/payments",
        "https://example.com/pay%6dents",
        "/pay%6dents/charge",
        "/pay%6Dents",
        "/%70ayments",
        "/x/../payments",
        "/./payments",
        "/x/%2e%2e/payments",
        "/%2e/payments",
        "/x/.%2e/payments",
        "//payments",
        "/x%2f..%2fpayments",
        "/x%2F..%2Fpayments",
        "/x%5c..%5cpayments",
        "/x\\..\\payments",
        "/..;/payments",
        "/x/;/../payments",
        "/pay%",
    };
    struct h_proc *up,
        *px = pair_one_worker(&up, FLAGS("--require-key", "/payments"));
    char *raw;

    (void)state;
    for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
        raw = h_format("POST %s HTTP/1.1\r\nHost: x\r\n"
                       "Content-Length: 2\r\n\r\n{}",
                       targets[i]);
        if (raw_status(px, raw, true) != 400)
            fail_msg("POST %s without a key was not refused", targets[i]);
        free(raw);
    }
    assert_int_equal(h_upstream_count(up->http_port), 0);
}

/* An absolute-form goes upstream as its path and query, with its
 * authority as the Host; with a key it is the same request as its
 * origin-form. */
static void test_absolute_form_forwarded_as_origin(void **state)
{
    struct h_proc *up,
        *px = pair_one_worker(&up, FLAGS("--require-key", "/payments"));
    struct h_req q = { .method = "POST",
                       .target = "http://Example.com:81/payments/c?echo=1",
                       .key = "k-abs",
                       .body = "{}" };
    struct h_resp r;

    (void)state;
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"path\":\"/payments/c\""));
    assert_non_null(strstr(r.body, "[\"Host\",\"Example.com:81\"]"));
    assert_null(strstr(r.body, "[\"Host\",\"127.0.0.1")); /* the client's */
    assert_null(h_header(&r, "Idempotent-Replayed"));
    h_resp_free(&r);
    q.target = "/payments/c?echo=1";
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(h_header(&r, "Idempotent-Replayed"), "true");
    h_resp_free(&r);
    assert_int_equal(
        raw_status(px, "GET http://h HTTP/1.1\r\nHost: x\r\n\r\n", false), 200);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

/* -- Host (RFC 9112 §3.2) ----------------------------------------------- */

static void test_host_rules(void **state)
{
    static const char *const refused[] = {
        "GET /h HTTP/1.1\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        "GET /h HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET http:///h HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST http://?x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    };
    struct h_proc *up, *px = pair_one_worker(&up, NULL);

    (void)state;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (raw_status(px, refused[i], true) != 400)
            fail_msg("not refused: %s", refused[i]);
    assert_int_equal(h_upstream_count(up->http_port), 0);
    assert_int_equal(raw_status(px, "GET /h HTTP/1.0\r\n\r\n", true), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* -- Out of file descriptors -------------------------------------------- */

/* utime + stime of pid, in clock ticks. */
static long cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;
    const char *s;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    s = strrchr(buf, ')'); /* the command name may hold spaces */
    assert_non_null(s);
    /* after ")": state and fields 4..13, then utime (14), stime (15) */
    assert_int_equal(sscanf(s + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
                            "%*u %lu %lu",
                            &ut, &st),
                     2);
    return (long)(ut + st);
}

/* The lines p wrote on stderr so far (all of them: a spinning proxy
 * writes far more than h_stderr's buffer holds). */
static long stderr_lines(struct h_proc *p)
{
    static char buf[1 << 16];
    off_t off = 0;
    ssize_t n;
    long lines = 0;

    while ((n = pread(p->err_fd, buf, sizeof(buf), off)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
        off += n;
    }
    return lines;
}

/* The proxy answers a GET with 200 within about 3 s. */
static void assert_serves_again(struct h_proc *px)
{
    struct h_req get = { .method = "GET", .target = "/again" };
    struct h_resp r;
    int status = -1;

    for (int i = 0; i < 30 && status != 200; i++) {
        if (i)
            h_sleep_ms(100);
        if (h_exchange(px->http_port, &get, &r) == 0) {
            status = r.status;
            h_resp_free(&r);
        }
    }
    assert_int_equal(status, 200);
}

/* With accept() failing on EMFILE, the proxy neither spins nor floods its
 * log, and serves again once descriptors are free. */
static void test_out_of_fds_backs_off(void **state)
{
    static const char *const pre[] = { "prlimit", FD_LIMIT, NULL };
    struct h_proc *up = upstream_on("127.0.0.1:0"), *px;
    struct h_conn *c[FLOOD_CONNS];
    long lines, ticks, tps = sysconf(_SC_CLK_TCK);
    char err[4096];

    (void)state;
    px = proxy_via(pre, up, NULL);
    for (int i = 0; i < FLOOD_CONNS; i++)
        assert_non_null(c[i] = h_connect(px->http_port));
    h_sleep_ms(200); /* the flood reaches the proxy */
    lines = stderr_lines(px);
    ticks = cpu_ticks(px->pid);
    h_sleep_ms(WATCH_MS);
    lines = stderr_lines(px) - lines;
    ticks = cpu_ticks(px->pid) - ticks;
    print_message("out of descriptors for %d ms: %ld stderr lines, %ld ms "
                  "of CPU\n",
                  WATCH_MS, lines, ticks * 1000 / tps);
    h_stderr(px, err, sizeof(err));
    if (lines >= 10 || ticks * 1000 / tps >= WATCH_MS / 4)
        fail_msg("the proxy spins; its stderr begins:\n%s", err);
    assert_non_null(strstr(err, "Too many open files"));
    for (int i = 0; i < FLOOD_CONNS; i++)
        h_close(c[i]);
    assert_serves_again(px);
}

/* -- Date (RFC 9110 §6.6.1) ------------------------------------------- */

/* r carries an IMF-fixdate Date within 5 s of now. */
static void assert_fresh_date(const struct h_resp *r)
{
    const char *d = h_header(r, "Date");
    struct tm tm = { 0 };
    const char *end;
    time_t t;

    if (!d)
        fail_msg("no Date on a %d", r->status);
    end = strptime(d, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    assert_non_null(end);
    assert_int_equal(*end, '\0');
    assert_int_equal(strlen(d), 29);
    t = timegm(&tm);
    assert_true(labs((long)(t - time(NULL))) <= 5);
}

/* POST: status, and (an answer of the proxy's own: not one relayed
 * from demo_upstream, which sends no Date) a fresh Date when dated. */
static void post_expect(struct h_proc *px, const char *target, const char *key,
                        const char *body, int status, bool dated)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = body
    };
    struct h_resp r;

    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, status);
    if (dated)
        assert_fresh_date(&r);
    h_resp_free(&r);
}

static void test_date_on_every_answer(void **state)
{
    struct h_proc *up, *px = pair_one_worker(&up, NULL);
    struct h_req slow = { .method = "POST",
                          .target = "/slow?delay_ms=1500",
                          .key = "k-slow",
                          .body = "s" };
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp r;
    size_t len;
    char *raw = h_build(&slow, &len);

    (void)state;
    /* relayed: demo_upstream sends no Date, so the proxy adds one */
    post_expect(px, "/d?status=201", "k-d", "a", 201, true);
    post_expect(px, "/d?status=201", "k-d", "a", 201, true); /* a replay */
    post_expect(px, "/d?status=201", "k-d", "b", 422, true);
    assert_non_null(c);
    assert_int_equal(h_send(c, raw, len), 0);
    assert_int_equal(h_upstream_wait_count(up->http_port, 2), 2);
    post_expect(px, "/slow?delay_ms=1500", "k-slow", "s", 409, true);
    post_expect(px, "/d", "", "a", 400, true); /* an empty key */
    assert_int_equal(h_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_close(c);
    free(raw);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

/* -- Signals ------------------------------------------------------------ */

/* Whether path exists and holds needle. */
static bool file_has(const char *path, const char *needle)
{
    static char buf[1 << 16];
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* file_has, waiting up to a second: a worker writes its decision lines
 * at the end of its loop's pass, just after the answer left. */
static bool file_gets(const char *path, const char *needle)
{
    for (int i = 0; i < 100; i++) {
        if (file_has(path, needle))
            return true;
        h_sleep_ms(10);
    }
    return false;
}

static void get_ok(struct h_proc *px, const char *target)
{
    struct h_req get = { .method = "GET", .target = target };
    struct h_resp r;

    assert_int_equal(h_exchange(px->http_port, &get, &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
}

static void test_sigusr1_reopens_log(void **state)
{
    char *log = h_tmp_path("proxy.log");
    char *moved = h_tmp_path("proxy.log.1");
    struct h_proc *up, *px = pair_one_worker(&up, FLAGS("--log-file", log));
    bool reopened = false;

    (void)state;
    get_ok(px, "/before");
    assert_true(file_gets(log, "target=/before"));
    assert_int_equal(rename(log, moved), 0);
    /* not h_signal: it marks the proxy signalled, and teardown would not
     * stop it; teardown checks that it exits 0 */
    assert_int_equal(kill(px->pid, SIGUSR1), 0);
    for (int i = 0; i < 40 && !reopened; i++) {
        h_sleep_ms(50);
        get_ok(px, "/after");
        reopened = file_gets(log, "target=/after");
    }
    assert_true(reopened);
    assert_false(file_has(log, "target=/before"));
    assert_true(file_has(moved, "target=/before"));
    assert_int_equal(kill(px->pid, 0), 0); /* still running */
    free(log);
    free(moved);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_space_before_colon_is_400),
        T(test_require_key_not_bypassed),
        T(test_absolute_form_forwarded_as_origin),
        T(test_host_rules),
        T(test_out_of_fds_backs_off),
        T(test_date_on_every_answer),
        T(test_sigusr1_reopens_log),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
