/* idemproxy on the Redis store, end to end: two instances sharing one
 * Redis execute a request once; Redis stopped under load gives 503
 * (closed) or pass-through (open) and service comes back with Redis;
 * lease renewal keeps a slow request single. Each test starts its own
 * redis-server, demo_upstream and proxies on free loopback ports. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "redis_server.h"

#define ARGS_MAX 32
#define CONCURRENT 200

static struct test_redis server;

static struct h_proc *upstream(void)
{
    const char *argv[] = { DEMO_UPSTREAM_PATH, "--listen", "127.0.0.1:0",
                           NULL };

    return h_start(DEMO_UPSTREAM_PATH, argv);
}

/* idemproxy on the test's Redis in front of up, with extra flags. */
static struct h_proc *proxy(const struct h_proc *up, const char *const *extra)
{
    const char *argv[ARGS_MAX] = {
        IDEMPROXY_PATH, "--listen",  "127.0.0.1:0", "--admin-listen",
        "127.0.0.1:0",  "--workers", "2",           "--redis-timeout",
        "300ms",        "--upstream"
    };
    char up_addr[32], store[64];
    size_t n = 10;

    snprintf(up_addr, sizeof(up_addr), "127.0.0.1:%u", up->http_port);
    snprintf(store, sizeof(store), "redis://127.0.0.1:%u", server.port);
    argv[n++] = up_addr;
    argv[n++] = "--store";
    argv[n++] = store;
    while (extra && *extra && n + 1 < ARGS_MAX)
        argv[n++] = *extra++;
    argv[n] = NULL;
    return h_start(IDEMPROXY_PATH, argv);
}

/* The value of an unlabelled metric on px's admin port, or -1. */
static long metric(const struct h_proc *px, const char *name)
{
    return h_metric(px->admin_port, name);
}

static int post(const struct h_proc *px, const char *target, const char *key,
                struct h_resp *r)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "{\"n\":1}"
    };

    return h_exchange(px->http_port, &q, r);
}

/* A connection to px on which the same POST as post() has been sent; its
 * answer is read later (h_read), so many can be in flight at once. */
static struct h_conn *send_post(const struct h_proc *px, const char *target,
                                const char *key)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "{\"n\":1}"
    };
    struct h_conn *c = h_connect(px->http_port);
    size_t len;
    char *raw = h_build(&q, &len);

    assert_non_null(c);
    assert_int_equal(h_send(c, raw, len), 0);
    free(raw);
    return c;
}

static int post_status(const struct h_proc *px, const char *target,
                       const char *key)
{
    struct h_resp r;
    int status;

    if (post(px, target, key, &r) != 0)
        return -1;
    status = r.status;
    h_resp_free(&r);
    return status;
}

/* A retry of a request that was answered: the answer's record may still
 * be on its way to Redis (the client hears first), so 409 may come before
 * the replay. Asserts the replay comes. */
static void assert_replays(const struct h_proc *px, const char *target,
                           const char *key)
{
    struct h_resp r;
    int i;

    for (i = 0; i < 250; i++) {
        assert_int_equal(post(px, target, key, &r), 0);
        if (r.status != 409)
            break;
        h_resp_free(&r);
        test_redis_sleep_ms(20);
    }
    assert_int_equal(r.status, 200);
    assert_non_null(h_header(&r, "Idempotent-Replayed"));
    h_resp_free(&r);
}

static int setup(void **state)
{
    if (h_setup(state) != 0 || test_redis_start(&server) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    test_redis_stop(&server);
    return h_teardown(state);
}

/* -- One truth across instances ----------------------------------------- */

/* 200 concurrent requests with one key, spread over two proxies with
 * extra flags: the upstream runs it once; every other answer is its
 * replay or a 409. Returns the replays. */
static int two_proxies_once(const char *const *extra)
{
    struct h_proc *up = upstream(), *px[2];
    struct h_conn *c[CONCURRENT];
    struct h_resp r;
    int i, first = 0, replays = 0, conflicts = 0;

    px[0] = proxy(up, extra);
    px[1] = proxy(up, extra);
    for (i = 0; i < CONCURRENT; i++)
        c[i] = send_post(px[i % 2], "/orders?delay_ms=300", "pay-1");
    for (i = 0; i < CONCURRENT; i++) {
        assert_int_equal(h_read(c[i], &r, false), 0);
        if (r.status == 409) {
            conflicts++;
        } else {
            assert_int_equal(r.status, 200);
            if (h_header(&r, "Idempotent-Replayed"))
                replays++;
            else
                first++;
        }
        h_resp_free(&r);
        h_close(c[i]);
    }
    assert_int_equal(first, 1);
    assert_int_equal(first + replays + conflicts, CONCURRENT);
    assert_int_equal(h_upstream_count(up->http_port), 1);
    /* and afterwards, either instance replays */
    assert_replays(px[0], "/orders?delay_ms=300", "pay-1");
    assert_replays(px[1], "/orders?delay_ms=300", "pay-1");
    assert_int_equal(h_upstream_count(up->http_port), 1);
    return replays;
}

static void test_two_proxies_execute_once(void **state)
{
    (void)state;
    two_proxies_once(NULL);
}

/* In wait mode the others poll Redis until the first is stored: every
 * one of them gets the replay. */
static void test_two_proxies_wait_mode_all_replay(void **state)
{
    (void)state;
    assert_int_equal(two_proxies_once((const char *const[]){ "--conflict",
                                                             "wait:5s", NULL }),
                     CONCURRENT - 1);
}

/* -- Redis stopped and started under load -------------------------------- */

#define UNDER_LOAD 40

/* Requests in flight (some deciding, most at a slow upstream) when Redis
 * stops: each gets an answer, 200 or 503, and the proxy lives on. */
static void stop_redis_under_load(const struct h_proc *px)
{
    struct h_conn *c[UNDER_LOAD];
    struct h_resp r;
    char key[32];
    int i;

    for (i = 0; i < UNDER_LOAD; i++) {
        snprintf(key, sizeof(key), "load-%d", i);
        c[i] = send_post(px, "/o?delay_ms=200", key);
        if (i == UNDER_LOAD / 2)
            test_redis_stop(&server);
    }
    for (i = 0; i < UNDER_LOAD; i++) {
        assert_int_equal(h_read(c[i], &r, false), 0);
        assert_true(r.status == 200 || r.status == 503);
        h_resp_free(&r);
        h_close(c[i]);
    }
}

static void test_redis_down_closed_then_back(void **state)
{
    struct h_proc *up = upstream(), *px = proxy(up, NULL);
    struct h_resp r;
    char key[32];
    int i, status = 0;
    long ran;

    (void)state;
    assert_int_equal(post_status(px, "/o", "before"), 200);
    stop_redis_under_load(px);
    ran = h_upstream_count(up->http_port);
    for (i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "down-%d", i);
        assert_int_equal(post(px, "/o", key, &r), 0);
        assert_int_equal(r.status, 503);
        assert_string_equal(h_header(&r, "Content-Type"),
                            "application/problem+json");
        h_resp_free(&r);
    }
    assert_int_equal(h_upstream_count(up->http_port), ran);
    /* a request without a key never needed the store */
    assert_int_equal(post_status(px, "/o", NULL), 200);
    assert_int_equal(test_redis_start_on(&server), 0);
    for (i = 0; i < 300 && status != 200; i++) {
        status = post_status(px, "/o", "after");
        if (status != 200)
            test_redis_sleep_ms(20);
    }
    assert_int_equal(status, 200);
    /* both workers' connections back (each reconnects on its own backoff;
     * a worker still waiting answers 503): the store is back */
    for (i = 0; i < 500 && metric(px, "idem_redis_connections") != 2; i++)
        test_redis_sleep_ms(20);
    assert_int_equal(metric(px, "idem_redis_connections"), 2);
    assert_replays(px, "/o", "after");
    assert_true(metric(px, "idem_redis_errors_total") >= 20);
}

static void test_redis_down_open_passes(void **state)
{
    struct h_proc *up = upstream(),
                  *px = proxy(up, (const char *const[]){ "--store-failure",
                                                         "open", NULL });
    int i;

    (void)state;
    test_redis_stop(&server);
    for (i = 0; i < 5; i++)
        assert_int_equal(post_status(px, "/o", "same"), 200);
    /* no guarantee while the store is down: each one ran */
    assert_int_equal(h_upstream_count(up->http_port), 5);
    assert_int_equal(metric(px, "idem_store_bypass_total"), 5);
}

/* -- Shutdown ------------------------------------------------------------ */

#define AT_SIGTERM 20

/* SIGTERM with requests at the upstream: each is answered, its record
 * reaches Redis before the proxy exits, and another instance replays
 * every one at once. */
static void test_sigterm_under_load_loses_nothing(void **state)
{
    struct h_proc *up = upstream(), *a = proxy(up, NULL), *b;
    struct h_conn *c[AT_SIGTERM];
    struct h_resp r;
    char key[32];
    int i;

    (void)state;
    for (i = 0; i < AT_SIGTERM; i++) {
        snprintf(key, sizeof(key), "term-%d", i);
        c[i] = send_post(a, "/o?delay_ms=300", key);
    }
    assert_int_equal(h_upstream_wait_count(up->http_port, AT_SIGTERM),
                     AT_SIGTERM);
    h_signal(a, SIGTERM);
    for (i = 0; i < AT_SIGTERM; i++) {
        assert_int_equal(h_read(c[i], &r, false), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
        h_close(c[i]);
    }
    assert_int_equal(h_stop(a), 0);
    b = proxy(up, NULL);
    for (i = 0; i < AT_SIGTERM; i++) {
        snprintf(key, sizeof(key), "term-%d", i);
        assert_int_equal(post(b, "/o?delay_ms=300", key, &r), 0);
        assert_int_equal(r.status, 200);
        assert_non_null(h_header(&r, "Idempotent-Replayed"));
        h_resp_free(&r);
    }
    assert_int_equal(h_upstream_count(up->http_port), AT_SIGTERM);
}

/* -- Leases --------------------------------------------------------------- */

/* The upstream takes 1.2 s, the lease is 400 ms: renewed every 200 ms,
 * the key stays in flight, so a retry meanwhile gets 409, not a second
 * execution. */
static void test_renewal_keeps_slow_request_single(void **state)
{
    struct h_proc *up = upstream(),
                  *px = proxy(
                      up, (const char *const[]){ "--lease", "400ms", NULL });
    struct h_conn *first;
    struct h_resp r;

    (void)state;
    first = send_post(px, "/slow?delay_ms=1200", "slow-1");
    test_redis_sleep_ms(800); /* two leases */
    assert_int_equal(post_status(px, "/slow?delay_ms=1200", "slow-1"), 409);
    assert_int_equal(h_read(first, &r, false), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_close(first);
    assert_replays(px, "/slow?delay_ms=1200", "slow-1");
    assert_int_equal(h_upstream_count(up->http_port), 1);
    assert_true(metric(px, "idem_lease_renewals_total") >= 2);
}

/* A dead owner: the instance running a request is killed, its lease runs
 * out, and another instance finds the outcome unknown (502), never
 * running the request a second time. */
static void test_dead_owner_is_unknown(void **state)
{
    const char *const lease[] = { "--lease", "400ms", NULL };
    struct h_proc *up = upstream(), *a = proxy(up, lease), *b;
    struct h_conn *c;
    struct h_resp r;

    (void)state;
    c = send_post(a, "/o?delay_ms=3000", "dead-1");
    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    h_signal(a, SIGKILL);
    assert_int_equal(h_stop(a), 128 + SIGKILL);
    h_close(c);
    b = proxy(up, lease);
    test_redis_sleep_ms(600); /* the lease, renewed until the kill, ends */
    assert_int_equal(post(b, "/o?delay_ms=3000", "dead-1", &r), 0);
    assert_int_equal(r.status, 502);
    assert_non_null(strstr(r.body, "outcome-unknown"));
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* A Redis that may evict records is said loudly, and in a metric. */
static void test_evicting_policy_is_said(void **state)
{
    struct h_proc *up, *px;
    char err[4096];
    int i;

    (void)state;
    assert_int_equal(
        test_redis_cmd(&server, "CONFIG SET maxmemory-policy allkeys-lru"), 0);
    up = upstream();
    px = proxy(up, NULL);
    for (i = 0; i < 100 && metric(px, "idem_redis_may_evict") != 1; i++)
        test_redis_sleep_ms(20);
    assert_int_equal(metric(px, "idem_redis_may_evict"), 1);
    assert_true(h_stderr_await(px, err, sizeof(err),
                               "warn redis: maxmemory-policy is allkeys-lru",
                               1));
    assert_int_equal(h_stop(px), 0);
    assert_int_equal(
        test_redis_cmd(&server, "CONFIG SET maxmemory-policy noeviction"), 0);
    px = proxy(up, NULL);
    for (i = 0; i < 100 && metric(px, "idem_redis_may_evict") != 0; i++)
        test_redis_sleep_ms(20);
    assert_int_equal(metric(px, "idem_redis_may_evict"), 0);
}

/* Bad store flags are refused at start with a message. */
static void test_store_flags_refused(void **state)
{
    static const char *const bad[][4] = {
        { "--store", "redis://", NULL },
        { "--store", "mysql://x", NULL },
        { "--redis-prefix", "a b", NULL },
        { "--store-failure", "maybe", NULL },
        { "--store", "redis://h", "--snapshot", "/tmp/x" },
    };
    char err[512];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *argv[] = { IDEMPROXY_PATH, "--upstream", "127.0.0.1:1",
                               bad[i][0],      bad[i][1],    bad[i][2],
                               bad[i][3],      NULL };

        assert_int_equal(h_run(IDEMPROXY_PATH, argv, err, sizeof(err)), 2);
        assert_non_null(strstr(err, "idemproxy: "));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_two_proxies_execute_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_two_proxies_wait_mode_all_replay,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_closed_then_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_open_passes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_under_load_loses_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_owner_is_unknown, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_evicting_policy_is_said, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_renewal_keeps_slow_request_single,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_flags_refused, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
