/* "A key is released only when the request provably did not execute",
 * end to end: upstream timeouts wait for the late response, cuts and
 * protocol errors after the request went out hold the key as "outcome
 * unknown", and the store's bounds never release a key whose request ran
 * (docs/semantics.md, "Failures"). Each test starts its own demo_upstream
 * (or a raw listener) and idemproxy on loopback ports. */
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy_helpers.h"

#define UNKNOWN_TYPE "tag:idem,2026:problem:outcome-unknown"

/* A retry's answer: the 502 problem whose type says the request may have
 * executed. */
static void assert_unknown(struct h_proc *px, const char *target,
                           const char *key)
{
    struct h_resp r;

    post(px, target, key, "x", &r);
    assert_problem(&r, 502);
    assert_non_null(strstr(r.body, UNKNOWN_TYPE));
    assert_null(h_header(&r, "Idempotent-Replayed"));
    h_resp_free(&r);
}

/* The client gets 504 at --upstream-timeout, but the exchange stays open:
 * a retry meanwhile gets 409, and after the late response, its replay.
 * The upstream ran once. */
static void test_timeout_then_late_response_replays(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--upstream-timeout", "400ms"));
    const char *target = "/t?delay_ms=1500";
    struct h_resp r;

    (void)state;
    assert_int_equal(post_status(px, target, "k-late", "x"), 504);
    post(px, target, "k-late", "x", &r);
    assert_problem(&r, 409);
    assert_non_null(h_header(&r, "Retry-After"));
    h_resp_free(&r);
    h_sleep_ms(1500); /* the late response has come and been stored */
    post(px, target, "k-late", "x", &r);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* In wait mode the retry waits for the late response and gets it. */
static void test_timeout_wait_mode_gets_late_response(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--upstream-timeout", "300ms",
                                             "--conflict", "wait:5s"));
    const char *target = "/t?delay_ms=1000";
    struct h_resp r;

    (void)state;
    assert_int_equal(post_status(px, target, "k-wait", "x"), 504);
    post(px, target, "k-wait", "x", &r);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* No answer within a lease after the timeout: the outcome is unknown and
 * the key keeps it; retries get 502 outcome-unknown, never a run. */
static void test_no_late_answer_is_unknown(void **state)
{
    struct h_proc *up,
        *px =
            pair(&up, FLAGS("--upstream-timeout", "300ms", "--lease", "600ms"));
    const char *target = "/t?delay_ms=4000";

    (void)state;
    assert_int_equal(post_status(px, target, "k-none", "x"), 504);
    h_sleep_ms(1200); /* 300 ms, then a lease of waiting, ended */
    assert_unknown(px, target, "k-none");
    assert_unknown(px, target, "k-none");
    assert_int_equal(h_upstream_count(up->http_port), 1);
    assert_int_equal(
        h_metric(px->admin_port, "idem_requests_total{outcome=\"unknown\"}"),
        2);
    assert_int_equal(
        h_metric(px->admin_port, "idem_completions_total{result=\"unknown\"}"),
        1);
}

/* The upstream dies in the middle of its answer: the request ran, its
 * response is lost. The client sees the cut; the key holds. */
static void test_cut_mid_body_is_unknown(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    const char *target = "/cut?size=100000&cut=1000";
    struct h_req q = {
        .method = "POST", .target = target, .key = "k-cut", .body = "x"
    };
    struct h_resp r = { 0 };

    (void)state;
    assert_int_not_equal(h_exchange(px->http_port, &q, &r), 0);
    h_resp_free(&r);
    assert_unknown(px, target, "k-cut");
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* -- An upstream that reads the request and closes without a word ------ */

struct mute {
    int fd;
    uint16_t port;
    atomic_int requests; /* requests read whole */
    pthread_t thread;
};

/* Read one request head and its Content-Length body from fd. */
static bool read_request(int fd)
{
    char buf[4096];
    size_t len = 0;
    ssize_t n;
    char *end, *cl;

    while (len < sizeof(buf) - 1 &&
           (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) {
        len += (size_t)n;
        buf[len] = '\0';
        if (!(end = strstr(buf, "\r\n\r\n")))
            continue;
        cl = strcasestr(buf, "Content-Length:");
        if (!cl || (size_t)(end + 4 - buf) + strtoul(cl + 15, NULL, 10) <= len)
            return true;
    }
    return false;
}

static void *mute_run(void *arg)
{
    struct mute *m = arg;
    int fd;

    while ((fd = accept(m->fd, NULL, NULL)) >= 0) {
        if (read_request(fd))
            atomic_fetch_add(&m->requests, 1);
        close(fd); /* ran it, and said nothing */
    }
    return NULL;
}

static void mute_start(struct mute *m)
{
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);

    m->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(m->fd >= 0);
    assert_int_equal(bind(m->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(m->fd, 16), 0);
    assert_int_equal(getsockname(m->fd, (struct sockaddr *)&sa, &len), 0);
    m->port = ntohs(sa.sin_port);
    atomic_store(&m->requests, 0);
    assert_int_equal(pthread_create(&m->thread, NULL, mute_run, m), 0);
}

static void mute_stop(struct mute *m)
{
    shutdown(m->fd, SHUT_RDWR); /* wakes accept */
    pthread_join(m->thread, NULL);
    close(m->fd);
}

/* The request went out and the connection closed with no answer: 502,
 * and the key holds (retries never reach the upstream again). */
static void test_closed_without_answer_is_unknown(void **state)
{
    struct mute m;
    struct h_proc *px;
    struct h_resp r;

    (void)state;
    mute_start(&m);
    px = proxy(m.port, NULL);
    post(px, "/m", "k-mute", "x", &r);
    assert_problem(&r, 502);
    assert_non_null(strstr(r.body, "may have executed"));
    h_resp_free(&r);
    assert_unknown(px, "/m", "k-mute");
    assert_int_equal(atomic_load(&m.requests), 1);
    /* a request without a key is not held: it reaches the upstream */
    assert_int_equal(post_status(px, "/m", NULL, "x"), 502);
    assert_int_equal(atomic_load(&m.requests), 2);
    h_stop(px);
    mute_stop(&m);
}

/* -- Store bounds -------------------------------------------------------- */

/* A response at the stored-body limit fits a small --max-memory: it is
 * replayed whole, never released for want of room. */
static void check_big_replay(const char *const *flags, long size)
{
    struct h_proc *up, *px = pair(&up, flags);
    char *target = h_format("/big?size=%ld", size);
    struct h_resp r;

    post(px, target, "k-big", "x", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal((long)r.body_len, size);
    h_resp_free(&r);
    post(px, target, "k-big", "x", &r);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    assert_null(h_header(&r, "Idempotent-Body-Omitted"));
    assert_int_equal((long)r.body_len, size);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
    free(target);
}

static void test_big_bodies_fit_their_bound(void **state)
{
    (void)state;
    check_big_replay(FLAGS("--max-memory", "16M"), 1048400);
    check_big_replay(FLAGS("--max-memory", "64M", "--max-stored-body", "8M"),
                     5000000);
}

/* A --max-stored-body the store could never hold is refused at start. */
static void test_unfit_stored_body_refused_at_start(void **state)
{
    const char *const argv[] = {
        IDEMPROXY_PATH, "--upstream",        "127.0.0.1:1", "--listen",
        "127.0.0.1:0",  "--admin-listen",    "off",         "--max-memory",
        "1M",           "--max-stored-body", "1M",          NULL
    };
    char err[1024];

    (void)state;
    assert_int_equal(h_run(IDEMPROXY_PATH, argv, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "--max-stored-body"));
    assert_non_null(strstr(err, "--max-memory"));
}

/* A snapshot that does not fit a smaller --max-memory loads nothing, and
 * the log says so exactly: never half of it. */
static void test_snapshot_all_or_nothing(void **state)
{
    char *file = h_tmp_path("snapshot");
    char *rejected = h_format("%s.rejected", file);
    struct h_proc *up, *px = pair(&up, FLAGS("--snapshot", file));
    char err[8192], key[16];
    int i;

    (void)state;
    for (i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "k-%d", i);
        assert_int_equal(post_status(px, "/s?size=60000", key, "x"), 200);
    }
    assert_int_equal(h_stop(px), 0);
    px = proxy(up->http_port, FLAGS("--snapshot", file, "--max-memory", "1M",
                                    "--max-stored-body", "64K"));
    h_stderr(px, err, sizeof(err));
    assert_non_null(strstr(err, "its 40 live records do not fit"));
    assert_non_null(strstr(err, "nothing was loaded"));
    assert_non_null(strstr(err, "kept as"));
    assert_int_equal(h_metric(px->admin_port, "idem_store_entries"), 0);
    assert_int_equal(h_stop(px), 0);
    /* kept whole beside; with room, it loads whole */
    assert_int_equal(rename(rejected, file), 0);
    px = proxy(up->http_port, FLAGS("--snapshot", file));
    h_stderr(px, err, sizeof(err));
    assert_non_null(strstr(err, "40 records loaded"));
    assert_int_equal(h_metric(px->admin_port, "idem_store_entries"), 40);
    free(rejected);
    free(file);
}

/* -- Memory pressure ------------------------------------------------------ */

#define PRESSURE_KEYS 200

/* POST distinct keys with 20 KB answers until one is not 200: its index
 * (PRESSURE_KEYS if none); *r holds that answer. */
static int press(struct h_proc *px, struct h_resp *r)
{
    char key[16];
    int i;

    for (i = 0; i < PRESSURE_KEYS; i++) {
        snprintf(key, sizeof(key), "p-%d", i);
        post(px, "/p?size=20000", key, "x", r);
        if (r->status != 200)
            return i;
        h_resp_free(r);
    }
    return i;
}

/* Full of records younger than --min-retention: a new key gets 503 with
 * Retry-After, and no record is forgotten. */
static void test_full_store_refuses_new_keys(void **state)
{
    struct h_proc *up,
        *px =
            pair(&up, FLAGS("--max-memory", "1M", "--max-stored-body", "64K"));
    struct h_resp r;
    int n;

    (void)state;
    n = press(px, &r);
    assert_true(n > 5 && n < PRESSURE_KEYS);
    assert_problem(&r, 503);
    assert_non_null(h_header(&r, "Retry-After"));
    h_resp_free(&r);
    assert_int_equal(h_metric(px->admin_port, "idem_store_evictions_total"), 0);
    assert_int_equal(
        h_metric(px->admin_port, "idem_requests_total{outcome=\"full\"}"), 1);
    post(px, "/p?size=20000", "p-0", "x", &r); /* the first is kept */
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), n);
}

/* --when-full evict: young records go, and metrics and log say so. */
static void test_when_full_evict_says_so(void **state)
{
    struct h_proc *up,
        *px = pair(&up, FLAGS("--max-memory", "1M", "--max-stored-body", "64K",
                              "--when-full", "evict", "--log-level", "warn"));
    char err[8192];
    struct h_resp r;

    (void)state;
    assert_int_equal(press(px, &r), PRESSURE_KEYS);
    assert_true(h_metric(px->admin_port, "idem_store_evictions_total") > 0);
    assert_true(h_metric(px->admin_port,
                         "idem_store_eviction_age_seconds_bucket{le=\"60\"}") >
                0);
    assert_int_equal(
        h_metric(px->admin_port, "idem_store_youngest_eviction_age_seconds"),
        0);
    /* the check runs every second */
    assert_true(h_stderr_await(px, err, sizeof(err),
                               "younger than an hour evicted", 1));
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_timeout_then_late_response_replays),
        T(test_timeout_wait_mode_gets_late_response),
        T(test_no_late_answer_is_unknown),
        T(test_cut_mid_body_is_unknown),
        T(test_closed_without_answer_is_unknown),
        T(test_big_bodies_fit_their_bound),
        T(test_unfit_stored_body_refused_at_start),
        T(test_snapshot_all_or_nothing),
        T(test_full_store_refuses_new_keys),
        T(test_when_full_evict_says_so),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
