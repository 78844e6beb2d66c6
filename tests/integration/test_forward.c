/* The forwarding headers through a real idemproxy: what the upstream
 * (demo_upstream ?echo=1) sees from a peer that --trusted-proxies trusts
 * and from one it does not, the RFC 7239 Forwarded header, and the
 * X-Request-ID generated (or kept), passed upstream and logged. */
#include "proxy_helpers.h"

static const char sent[] = "X-Forwarded-For: 192.0.2.1\r\n"
                           "X-Forwarded-Proto: https\r\n"
                           "X-Forwarded-Host: shop.example\r\n"
                           "Forwarded: for=192.0.2.1;proto=https\r\n";

/* GET /echo?echo=1 with headers; the upstream's body in *r. */
static void echo(struct h_proc *px, const char *headers, struct h_resp *r)
{
    struct h_req q = { .method = "GET",
                       .target = "/echo?echo=1",
                       .headers = headers };

    assert_int_equal(h_exchange(px->http_port, &q, r), 0);
    assert_int_equal(r->status, 200);
}

/* Whether the upstream saw header name with value. */
static bool saw(const struct h_resp *r, const char *name, const char *value)
{
    char *want = h_format("[\"%s\",\"%s\"]", name, value);
    bool found = strstr(r->body, want) != NULL;

    if (!found)
        print_message("no %s in %s\n", want, r->body);
    free(want);
    return found;
}

static void test_untrusted_peer_is_replaced(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_resp r;

    (void)state;
    echo(px, sent, &r);
    assert_true(saw(&r, "X-Forwarded-For", "127.0.0.1"));
    assert_true(saw(&r, "X-Forwarded-Proto", "http"));
    assert_true(saw(&r, "X-Forwarded-Host", "127.0.0.1"));
    assert_true(
        saw(&r, "Forwarded", "for=127.0.0.1;proto=http;host=127.0.0.1"));
    assert_null(strstr(r.body, "192.0.2.1"));
    assert_null(strstr(r.body, "shop.example"));
    h_resp_free(&r);
}

static void test_trusted_peer_is_extended(void **state)
{
    struct h_proc *up,
        *px = pair(&up, FLAGS("--trusted-proxies", "10.0.0.0/8,127.0.0.1"));
    struct h_resp r;

    (void)state;
    echo(px, sent, &r);
    assert_true(saw(&r, "X-Forwarded-For", "192.0.2.1, 127.0.0.1"));
    assert_true(saw(&r, "X-Forwarded-Proto", "https"));
    assert_true(saw(&r, "X-Forwarded-Host", "shop.example"));
    assert_true(saw(&r, "Forwarded",
                    "for=192.0.2.1;proto=https, "
                    "for=127.0.0.1;proto=http;host=127.0.0.1"));
    h_resp_free(&r);
}

static void test_request_id(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--log-format", "json"));
    struct h_resp r;
    char err[16384], id[33], *want;
    const char *at;

    (void)state;
    echo(px, NULL, &r); /* none sent: a fresh one */
    at = strstr(r.body, "[\"X-Request-ID\",\"");
    assert_non_null(at);
    at += 17;
    assert_int_equal(strcspn(at, "\""), 32);
    memcpy(id, at, 32);
    id[32] = '\0';
    h_resp_free(&r);
    echo(px, "X-Request-ID: trace-42\r\n", &r); /* one sent: kept */
    assert_true(saw(&r, "X-Request-ID", "trace-42"));
    h_resp_free(&r);
    /* both in the decision lines (each worker writes its own lines, so
     * the second may land first) */
    want = h_format("\"request_id\":\"%s\"", id);
    assert_true(h_stderr_await(px, err, sizeof(err), want, 1));
    assert_true(
        h_stderr_await(px, err, sizeof(err), "\"request_id\":\"trace-42\"", 1));
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_untrusted_peer_is_replaced,
                                        h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_trusted_peer_is_extended, h_setup,
                                        h_teardown),
        cmocka_unit_test_setup_teardown(test_request_id, h_setup, h_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
