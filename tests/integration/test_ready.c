/* Readiness: /healthz answers while the process lives; /readyz is 503
 * while the Redis store is stopped or the upstream unreachable, and 200
 * once both are back, GET and HEAD alike; a request the stopped store
 * cannot serve gets 503 with Retry-After. */
#include "proxy_helpers.h"
#include "redis_server.h"

/* GET (or HEAD) path on the admin port: the status. */
static int admin_status(struct h_proc *px, const char *method, const char *path)
{
    struct h_req q = { .method = method, .target = path };
    struct h_resp r;
    int status;

    assert_int_equal(h_exchange(px->admin_port, &q, &r), 0);
    status = r.status;
    if (strcmp(method, "HEAD") == 0)
        assert_int_equal(r.body_len, 0);
    else
        assert_true(r.body_len > 0);
    h_resp_free(&r);
    return status;
}

/* Poll /readyz (GET, then HEAD) until it says want, up to 10 s. */
static void wait_ready(struct h_proc *px, int want)
{
    int got = 0;

    for (int i = 0; i < 100; i++) {
        got = admin_status(px, i % 2 ? "HEAD" : "GET", "/readyz");
        if (got == want)
            break;
        h_sleep_ms(100);
    }
    assert_int_equal(got, want);
}

static void test_ready_with_redis(void **state)
{
    struct test_redis server = { 0 };
    struct h_proc *up, *px;
    struct h_resp r;
    char *store;

    (void)state;
    if (test_redis_start(&server) != 0)
        skip();
    store = h_format("redis://127.0.0.1:%u", server.port);
    px = pair(&up, FLAGS("--store", store, "--redis-timeout", "200ms",
                         "--resolve-interval", "1s"));
    wait_ready(px, 200);
    assert_int_equal(admin_status(px, "HEAD", "/readyz"), 200);
    assert_int_equal(admin_status(px, "HEAD", "/healthz"), 200);

    test_redis_stop(&server);
    wait_ready(px, 503);
    assert_int_equal(admin_status(px, "GET", "/healthz"), 200); /* alive */
    post(px, "/", "k1", "x", &r);
    assert_problem(&r, 503);
    assert_string_equal(h_header(&r, "Retry-After"), "1");
    h_resp_free(&r);

    assert_int_equal(test_redis_start_on(&server), 0);
    wait_ready(px, 200);
    assert_int_equal(post_status(px, "/", "k2", "x"), 200);
    test_redis_stop(&server);
    free(store);
}

static void test_ready_needs_the_upstream(void **state)
{
    uint16_t port = h_free_port();
    char *where = h_format("127.0.0.1:%u", port);
    const char *argv[] = {
        IDEMPROXY_PATH, "--listen",           "127.0.0.1:0", "--admin-listen",
        "127.0.0.1:0",  "--workers",          "1",           "--upstream",
        where,          "--resolve-interval", "300ms",       NULL
    };
    struct h_proc *px = h_start(IDEMPROXY_PATH, argv);

    (void)state;
    assert_int_equal(admin_status(px, "GET", "/readyz"), 503);
    assert_int_equal(admin_status(px, "HEAD", "/readyz"), 503);
    upstream_on(where); /* the resolver's probe finds it */
    wait_ready(px, 200);
    assert_int_equal(admin_status(px, "GET", "/nothing"), 404);
    free(where);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ready_with_redis, h_setup,
                                        h_teardown),
        cmocka_unit_test_setup_teardown(test_ready_needs_the_upstream, h_setup,
                                        h_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
