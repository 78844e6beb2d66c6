/* demo_upstream on its own, through the harness: what it counts, how its
 * query parameters shape answers, keep-alive and pipelining. This tests
 * the harness as much as the server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "harness.h"

static struct h_proc *upstream(void)
{
    const char *argv[] = { DEMO_UPSTREAM_PATH, "--listen", "127.0.0.1:0",
                           NULL };

    return h_start(DEMO_UPSTREAM_PATH, argv);
}

/* One request through a fresh connection; fails the test on no answer. */
static void call(uint16_t port, const struct h_req *q, struct h_resp *r)
{
    assert_int_equal(h_exchange(port, q, r), 0);
}

static void test_counts_executions(void **state)
{
    struct h_proc *up = upstream();
    struct h_req q = { .method = "POST", .target = "/x", .body = "abc" };
    struct h_resp r;

    (void)state;
    call(up->http_port, &q, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(h_header(&r, "Content-Type"), "application/json");
    assert_string_equal(r.body, "{\"execution\":1,\"method\":\"POST\","
                                "\"path\":\"/x\",\"body_bytes\":3}");
    h_resp_free(&r);
    q = (struct h_req){ .method = "GET", .target = "/y?k=1" };
    call(up->http_port, &q, &r);
    assert_int_equal(h_json_long(&r, "execution"), 2);
    assert_non_null(strstr(r.body, "\"path\":\"/y\""));
    h_resp_free(&r);
    /* GET /count reports without counting itself. */
    assert_int_equal(h_upstream_count(up->http_port), 2);
    assert_int_equal(h_upstream_count(up->http_port), 2);
    assert_int_equal(h_stop(up), 0);
}

static void test_status_parameter(void **state)
{
    struct h_proc *up = upstream();
    struct h_req q = { .method = "POST", .target = "/s?status=201" };
    struct h_resp r;

    (void)state;
    call(up->http_port, &q, &r);
    assert_int_equal(r.status, 201);
    h_resp_free(&r);
    q.target = "/s?status=503";
    call(up->http_port, &q, &r);
    assert_int_equal(r.status, 503);
    assert_int_equal(h_json_long(&r, "execution"), 2);
    h_resp_free(&r);
    q.target = "/s?status=204";
    call(up->http_port, &q, &r);
    assert_int_equal(r.status, 204);
    assert_int_equal(r.body_len, 0);
    h_resp_free(&r);
    q.target = "/s?status=abc";
    call(up->http_port, &q, &r);
    assert_int_equal(r.status, 400);
    h_resp_free(&r);
}

static void test_delay_counts_on_receipt(void **state)
{
    struct h_proc *up = upstream();
    struct h_conn *c = h_connect(up->http_port);
    struct h_resp r;

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_send_str(c, "POST /slow?delay_ms=1500 HTTP/1.1\r\n"
                                   "Host: x\r\nContent-Length: 0\r\n\r\n"),
                     0);
    /* Counted while its answer is still being delayed. */
    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    assert_int_equal(h_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    h_close(c);
}

static void test_size_and_chunked(void **state)
{
    struct h_proc *up = upstream();
    struct h_req q = { .method = "GET", .target = "/big?size=10000" };
    struct h_resp r;

    (void)state;
    call(up->http_port, &q, &r);
    assert_int_equal(r.body_len, 10000);
    assert_string_equal(h_header(&r, "Content-Length"), "10000");
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    q.target = "/big?chunked=1&size=30000";
    call(up->http_port, &q, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(h_header(&r, "Transfer-Encoding"), "chunked");
    assert_null(h_header(&r, "Content-Length"));
    assert_int_equal(r.body_len, 30000);
    assert_int_equal(h_json_long(&r, "execution"), 2);
    h_resp_free(&r);
}

static void test_pipelining_in_order(void **state)
{
    static const char *const paths[] = { "/a", "/b", "/c" };
    struct h_proc *up = upstream();
    struct h_conn *c = h_connect(up->http_port);
    struct h_resp r[3];

    (void)state;
    assert_non_null(c);
    /* The first answer is delayed: the others must wait behind it. */
    assert_int_equal(h_send_str(c, "GET /a?delay_ms=300 HTTP/1.1\r\nHost: x"
                                   "\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                                   "POST /c HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Length: 2\r\n\r\nhi"),
                     0);
    assert_int_equal(h_read_n(c, r, 3), 0);
    for (int i = 0; i < 3; i++) {
        char *want = h_format("\"path\":\"%s\"", paths[i]);

        assert_non_null(strstr(r[i].body, want));
        assert_int_equal(h_json_long(&r[i], "execution"), i + 1);
        free(want);
        h_resp_free(&r[i]);
    }
    h_close(c);
}

static void test_keep_alive_and_close(void **state)
{
    struct h_proc *up = upstream();
    struct h_conn *c = h_connect(up->http_port);
    struct h_req q = { .method = "GET", .target = "/k" };
    size_t len;
    char *raw = h_build(&q, &len);
    struct h_resp r;

    (void)state;
    assert_non_null(c);
    for (int i = 1; i <= 2; i++) {
        assert_int_equal(h_send(c, raw, len), 0);
        assert_int_equal(h_read(c, &r, false), 0);
        assert_int_equal(h_json_long(&r, "execution"), i);
        assert_true(r.keep_alive);
        h_resp_free(&r);
    }
    free(raw);
    h_set_timeout(c, 300);
    assert_false(h_closed(c)); /* open, idle: the read times out */
    h_set_timeout(c, H_IO_TIMEOUT_MS);
    assert_int_equal(h_send_str(c, "GET /k?close=1 HTTP/1.1\r\nHost: x\r\n"
                                   "\r\n"),
                     0);
    assert_int_equal(h_read(c, &r, false), 0);
    assert_string_equal(h_header(&r, "Connection"), "close");
    assert_false(r.keep_alive);
    assert_true(h_closed(c));
    h_resp_free(&r);
    h_close(c);
}

static void test_request_bodies(void **state)
{
    struct h_proc *up = upstream();
    struct h_req q = { .method = "PATCH", .target = "/b", .body = "12345" };
    struct h_resp r;

    (void)state;
    call(up->http_port, &q, &r);
    assert_int_equal(h_json_long(&r, "body_bytes"), 5);
    assert_non_null(strstr(r.body, "\"method\":\"PATCH\""));
    h_resp_free(&r);
    assert_int_equal(h_exchange_raw(up->http_port,
                                    "POST /c HTTP/1.1\r\nHost: x\r\n"
                                    "Transfer-Encoding: chunked\r\n\r\n"
                                    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                                    &r, NULL),
                     0);
    assert_int_equal(r.status, 200);
    assert_int_equal(h_json_long(&r, "body_bytes"), 11);
    assert_true(r.keep_alive);
    h_resp_free(&r);
}

static void test_head(void **state)
{
    struct h_proc *up = upstream();
    struct h_conn *c = h_connect(up->http_port);
    struct h_resp r;

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_send_str(c, "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
                                   "GET /g HTTP/1.1\r\nHost: x\r\n\r\n"),
                     0);
    assert_int_equal(h_read(c, &r, true), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(h_header(&r, "Content-Length"));
    assert_true(strtol(h_header(&r, "Content-Length"), NULL, 10) > 0);
    h_resp_free(&r);
    assert_int_equal(h_read(c, &r, false), 0);
    assert_int_equal(h_json_long(&r, "execution"), 2);
    h_resp_free(&r);
    h_close(c);
}

static void test_expect_continue(void **state)
{
    struct h_proc *up = upstream();
    struct h_conn *c = h_connect(up->http_port);
    struct h_resp interim, final;

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_expect_continue(c,
                                       "PATCH /e HTTP/1.1\r\nHost: x\r\n"
                                       "Expect: 100-continue\r\n"
                                       "Content-Length: 6\r\n\r\n",
                                       "a body", &interim, &final),
                     0);
    assert_int_equal(interim.status, 100);
    assert_int_equal(final.status, 200);
    assert_int_equal(h_json_long(&final, "body_bytes"), 6);
    h_resp_free(&interim);
    h_resp_free(&final);
    h_close(c);
}

static void test_echo_and_no_store(void **state)
{
    struct h_proc *up = upstream();
    struct h_req q = { .method = "POST",
                       .target = "/n?no_store=1&echo=1",
                       .headers = "X-Test: \"yes\"\r\n" };
    struct h_resp r;

    (void)state;
    call(up->http_port, &q, &r);
    assert_string_equal(h_header(&r, "Idempotency-Policy"), "no-store");
    assert_non_null(strstr(r.body, "[\"X-Test\",\"\\\"yes\\\"\"]"));
    h_resp_free(&r);
}

static void test_malformed_is_400_and_closed(void **state)
{
    struct h_proc *up = upstream();
    struct h_resp r;
    bool closed = false;

    (void)state;
    assert_int_equal(h_exchange_raw(up->http_port,
                                    "POST / HTTP/1.1\r\nHost: x\r\n"
                                    "Content-Length: 1\r\n"
                                    "Transfer-Encoding: chunked\r\n\r\n",
                                    &r, &closed),
                     0);
    assert_int_equal(r.status, 400);
    assert_true(closed);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 0);
}

static void test_exit_status_and_flags(void **state)
{
    const char *bad[] = { DEMO_UPSTREAM_PATH, "--bogus", NULL };
    const char *help[] = { DEMO_UPSTREAM_PATH, "--help", NULL };
    struct h_proc *up = upstream();
    char err[512];

    (void)state;
    assert_int_equal(h_stop(up), 0);
    assert_int_equal(h_run(DEMO_UPSTREAM_PATH, bad, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "usage"));
    assert_int_equal(h_run(DEMO_UPSTREAM_PATH, help, NULL, 0), 0);
}

/* The harness reads a close-delimited body (no length, no chunks). */
static void test_harness_close_delimited(void **state)
{
    static const char raw[] = "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello";
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), sfd;
    struct h_conn *c;
    struct h_resp r;

    (void)state;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 1), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    c = h_connect(ntohs(sa.sin_port));
    assert_non_null(c);
    sfd = accept(lfd, NULL, NULL);
    assert_true(sfd >= 0);
    assert_int_equal(write(sfd, raw, sizeof(raw) - 1), sizeof(raw) - 1);
    close(sfd);
    close(lfd);
    assert_int_equal(h_read(c, &r, false), 0);
    assert_string_equal(r.body, "hello");
    assert_string_equal(h_header(&r, "x-a"), "1");
    assert_true(h_closed(c));
    h_resp_free(&r);
    assert_int_equal(h_read(c, &r, false), -1); /* nothing more */
    h_resp_free(&r);
    h_close(c);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_counts_executions),
        T(test_status_parameter),
        T(test_delay_counts_on_receipt),
        T(test_size_and_chunked),
        T(test_pipelining_in_order),
        T(test_keep_alive_and_close),
        T(test_request_bodies),
        T(test_head),
        T(test_expect_continue),
        T(test_echo_and_no_store),
        T(test_malformed_is_400_and_closed),
        T(test_exit_status_and_flags),
        T(test_harness_close_delimited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
