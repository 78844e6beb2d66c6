/* idemproxy's contract end to end: each test starts its own demo_upstream
 * and idemproxy on ephemeral loopback ports, checks one rule (what the
 * client gets, and how often the upstream executed, from GET /count) and
 * stops both. docs/semantics.md states the rules. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "proxy_helpers.h"
#include "statm.h"

/* Read c's answer: status 200, executed not replayed. */
static void read_executed(struct h_conn *c)
{
    struct h_resp r;

    assert_int_equal(h_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, false);
    h_resp_free(&r);
    h_close(c);
}

/* -- Keys, replays, mismatches ----------------------------------------- */

static void test_replay_with_same_key(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_resp first, again;

    (void)state;
    post(px, "/orders?status=201", "k-1", "{\"a\":1}", &first);
    assert_int_equal(first.status, 201);
    assert_replayed(&first, false);
    assert_int_equal(h_json_long(&first, "execution"), 1);
    post(px, "/orders?status=201", "k-1", "{\"a\":1}", &again);
    assert_int_equal(again.status, 201);
    assert_replayed(&again, true);
    assert_string_equal(again.body, first.body);
    assert_int_equal(h_upstream_count(up->http_port), 1);
    h_resp_free(&first);
    h_resp_free(&again);
}

static void test_mismatch_is_422(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req patch = {
        .method = "PATCH", .target = "/m", .key = "k-m", .body = "a"
    };
    struct h_resp r;

    (void)state;
    assert_int_equal(post_status(px, "/m", "k-m", "a"), 200);
    post_problem(px, "/m", "k-m", "b", 422);  /* another body */
    post_problem(px, "/m2", "k-m", "a", 422); /* another path */
    assert_int_equal(h_exchange(px->http_port, &patch, &r), 0);
    assert_problem(&r, 422); /* another method */
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_bad_key_is_400(void **state)
{
    static const char *const keys[] = { "", "a,b", "\"unterminated",
                                        "\"k\";a=1" };
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req twice = { .method = "POST",
                           .target = "/k",
                           .key = "one",
                           .headers = "Idempotency-Key: two\r\n",
                           .body = "" };
    char *longkey = calloc(1, 301);
    struct h_resp r;

    (void)state;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        post_problem(px, "/k", keys[i], "", 400);
    assert_non_null(longkey);
    memset(longkey, 'k', 300);
    post_problem(px, "/k", longkey, "", 400);
    free(longkey);
    assert_int_equal(h_exchange(px->http_port, &twice, &r), 0);
    assert_problem(&r, 400);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 0);
}

static void test_required_key_is_400(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--require-key", "/pay"));

    (void)state;
    post_problem(px, "/pay/1", NULL, "x", 400);
    assert_int_equal(h_upstream_count(up->http_port), 0);
    assert_int_equal(post_status(px, "/pay/1", "k-p", "x"), 200);
    /* Outside the prefix, no key is needed. */
    assert_int_equal(post_status(px, "/other", NULL, "x"), 200);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

/* POST /scoped with key k-scope and body "same" as the client auth (an
 * Authorization line): 201, replayed or not, carrying the upstream's
 * execution number. */
static void post_as(struct h_proc *px, const char *auth, bool replayed,
                    long execution)
{
    struct h_req q = { .method = "POST",
                       .target = "/scoped?status=201",
                       .key = "k-scope",
                       .headers = auth,
                       .body = "same" };
    struct h_resp r;

    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 201);
    assert_replayed(&r, replayed);
    assert_int_equal(h_json_long(&r, "execution"), execution);
    h_resp_free(&r);
}

/* A key belongs to its client (Authorization): another client's same key,
 * path and body is another request, executed, and each client's retry
 * replays its own response, never the other's. */
static void test_same_key_other_client_is_separate(void **state)
{
    const char *alice = "Authorization: Bearer alice\r\n";
    const char *bob = "Authorization: Bearer bob\r\n";
    struct h_proc *up, *px = pair(&up, NULL);

    (void)state;
    post_as(px, alice, false, 1);
    post_as(px, bob, false, 2);
    assert_int_equal(h_upstream_count(up->http_port), 2);
    post_as(px, bob, true, 2);
    post_as(px, alice, true, 1);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

/* -- Concurrency ------------------------------------------------------- */

/* POST target with key, and once the upstream has it, the same again on
 * another connection: that answer into *r. The first then completes,
 * executed; the upstream executed once. */
static void post_twice_in_flight(struct h_proc *up, struct h_proc *px,
                                 const char *target, const char *key,
                                 struct h_resp *r)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "x"
    };
    struct h_conn *first = send_only(px, &q);

    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    assert_int_equal(h_exchange(px->http_port, &q, r), 0);
    read_executed(first);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_conflict_409_while_in_flight(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_resp r;

    (void)state;
    post_twice_in_flight(up, px, "/slow?delay_ms=2000", "k-c", &r);
    assert_problem(&r, 409);
    assert_non_null(h_header(&r, "Retry-After"));
    h_resp_free(&r);
}

static void test_conflict_wait_gets_replay(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--conflict", "wait:5s"));
    struct h_resp r;

    (void)state;
    post_twice_in_flight(up, px, "/slow?delay_ms=1000", "k-w", &r);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
}

#define RACERS 50

struct racer {
    uint16_t port;
    pthread_barrier_t *go;
    int status; /* -1: no answer */
    bool replayed;
};

/* One client: connect, wait for the others, send the same keyed POST. */
static void *race(void *arg)
{
    struct racer *rc = arg;
    struct h_req q = { .method = "POST",
                       .target = "/race?delay_ms=500",
                       .key = "k-race",
                       .body = "same" };
    struct h_conn *c = h_connect(rc->port);
    size_t len;
    char *raw = h_build(&q, &len);
    struct h_resp r;

    rc->status = -1;
    pthread_barrier_wait(rc->go);
    if (c && h_send(c, raw, len) == 0 && h_read(c, &r, false) == 0) {
        const char *v = h_header(&r, "Idempotent-Replayed");

        rc->status = r.status;
        rc->replayed = v && strcmp(v, "true") == 0;
        h_resp_free(&r);
    }
    free(raw);
    h_close(c);
    return NULL;
}

/* RACERS clients at once, each on its own connection, through px. */
static void run_racers(struct h_proc *px, struct racer *racers)
{
    pthread_t threads[RACERS];
    pthread_barrier_t go;

    pthread_barrier_init(&go, NULL, RACERS);
    for (int i = 0; i < RACERS; i++) {
        racers[i] = (struct racer){ .port = px->http_port, .go = &go };
        assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]),
                         0);
    }
    for (int i = 0; i < RACERS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&go);
}

static void test_parallel_same_key_executes_once(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    static struct racer racers[RACERS];
    int executed = 0;

    (void)state;
    run_racers(px, racers);
    for (int i = 0; i < RACERS; i++) {
        if (racers[i].status == 200 && !racers[i].replayed)
            executed++;
        else if (racers[i].status != 409 && !racers[i].replayed)
            fail_msg("client %d: status %d, not a replay", i, racers[i].status);
    }
    assert_int_equal(executed, 1);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* In wait mode every racer but the one that executes waits and gets the
 * replay. Their 50 connections spread over both workers, so most of the
 * waiters are woken by the other worker's thread (its eventfd). */
static void test_wait_wakes_across_workers(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--conflict", "wait:10s"));
    static struct racer racers[RACERS];
    int executed = 0;

    (void)state;
    run_racers(px, racers);
    for (int i = 0; i < RACERS; i++) {
        if (racers[i].status != 200)
            fail_msg("client %d: status %d", i, racers[i].status);
        executed += !racers[i].replayed;
    }
    assert_int_equal(executed, 1);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_client_abort_then_replay(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--conflict", "wait:5s"));
    struct h_req q = { .method = "POST",
                       .target = "/slow?delay_ms=800",
                       .key = "k-abort",
                       .body = "x" };
    struct h_resp r;

    (void)state;
    h_close(send_only(px, &q)); /* leaves while the upstream works */
    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* -- Upstream failures and what is not stored -------------------------- */

static void test_upstream_down_502_releases_key(void **state)
{
    uint16_t port = h_free_port();
    struct h_proc *px = proxy(port, NULL), *up;
    char listen[32];
    struct h_resp r;

    (void)state;
    assert_int_equal(post_status(px, "/d", "k-down", "x"), 502);
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
    up = upstream_on(listen);
    post(px, "/d", "k-down", "x", &r);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, false);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* --unknown-outcome release: the behaviour before "hold" became the
 * default (tests/integration/test_outcomes.c has hold's). */
static void test_upstream_timeout_504_releases_key(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--upstream-timeout", "500ms",
                                             "--unknown-outcome", "release"));

    (void)state;
    assert_int_equal(post_status(px, "/t?delay_ms=3000", "k-to", "x"), 504);
    /* Released: the retry executes again (and times out again). */
    assert_int_equal(post_status(px, "/t?delay_ms=3000", "k-to", "x"), 504);
    assert_int_equal(h_upstream_wait_count(up->http_port, 2), 2);
}

static void test_failures_are_not_stored(void **state)
{
    static const int statuses[] = { 500, 503, 408, 425, 429 };
    const size_t n = sizeof(statuses) / sizeof(statuses[0]);
    struct h_proc *up, *px = pair(&up, NULL);

    (void)state;
    for (size_t i = 0; i < n; i++) {
        char *target = h_format("/f?status=%d", statuses[i]);

        assert_executes_each_time(px, target, "k-fail", statuses[i],
                                  2 * (long)i + 1, 2);
        free(target);
    }
    assert_int_equal(h_upstream_count(up->http_port), 2 * (long)n);
}

static void test_no_store_policy_is_not_stored(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);

    (void)state;
    assert_executes_each_time(px, "/ns?no_store=1&status=201", "k-ns", 201, 1,
                              2);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

/* -- HTTP/1.1 mechanics ------------------------------------------------ */

static void test_chunked_request_body(void **state)
{
    static const char raw[] = "POST /ch HTTP/1.1\r\nHost: x\r\n"
                              "Idempotency-Key: k-chunk\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n"
                              "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_resp r;

    (void)state;
    assert_int_equal(h_exchange_raw(px->http_port, raw, &r, NULL), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(h_json_long(&r, "body_bytes"), 11);
    h_resp_free(&r);
    assert_int_equal(h_exchange_raw(px->http_port, raw, &r, NULL), 0);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_chunked_response(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req get = { .method = "GET",
                         .target = "/cr?chunked=1&size=30000" };
    struct h_resp r, first;

    (void)state;
    assert_int_equal(h_exchange(px->http_port, &get, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 30000);
    assert_int_equal(h_json_long(&r, "execution"), 1);
    h_resp_free(&r);
    post(px, "/cr?chunked=1&size=30000", "k-cr", "x", &first);
    assert_int_equal(first.body_len, 30000);
    post(px, "/cr?chunked=1&size=30000", "k-cr", "x", &r);
    assert_replayed(&r, true);
    assert_int_equal(r.body_len, 30000);
    assert_memory_equal(r.body, first.body, 30000);
    h_resp_free(&r);
    h_resp_free(&first);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

static void test_pipelining_in_order(void **state)
{
    static const char *const paths[] = { "/a", "/b", "/c" };
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp r[3];

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_send_str(c, "GET /a?delay_ms=300 HTTP/1.1\r\n"
                                   "Host: x\r\n\r\n"
                                   "POST /b HTTP/1.1\r\nHost: x\r\n"
                                   "Idempotency-Key: k-pipe\r\n"
                                   "Content-Length: 2\r\n\r\nhi"
                                   "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"),
                     0);
    assert_int_equal(h_read_n(c, r, 3), 0);
    for (int i = 0; i < 3; i++) {
        char *want = h_format("\"path\":\"%s\"", paths[i]);

        assert_int_equal(r[i].status, 200);
        assert_non_null(strstr(r[i].body, want));
        free(want);
        h_resp_free(&r[i]);
    }
    h_close(c);
    assert_int_equal(h_upstream_count(up->http_port), 3);
}

static void test_expect_continue(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp interim, final;

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_expect_continue(c,
                                       "POST /e HTTP/1.1\r\nHost: x\r\n"
                                       "Idempotency-Key: k-expect\r\n"
                                       "Expect: 100-continue\r\n"
                                       "Content-Length: 4\r\n\r\n",
                                       "body", &interim, &final),
                     0);
    assert_int_equal(interim.status, 100);
    assert_int_equal(final.status, 200);
    assert_int_equal(h_json_long(&final, "body_bytes"), 4);
    h_resp_free(&interim);
    h_resp_free(&final);
    h_close(c);
}

/* An upstream's 103 Early Hints reaches an HTTP/1.1 client ahead of the
 * response; the replay has only the response. */
static void test_early_hints_relayed_not_stored(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req q = { .method = "POST",
                       .target = "/o?early_hints=1",
                       .key = "k-hints",
                       .body = "{}" };
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp hints, final;
    size_t len;
    char *raw = h_build(&q, &len);

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_send(c, raw, len), 0);
    assert_int_equal(h_read(c, &hints, false), 0);
    assert_int_equal(hints.status, 103);
    assert_string_equal(h_header(&hints, "Link"), "</style.css>; rel=preload");
    assert_int_equal(h_read(c, &final, false), 0);
    assert_int_equal(final.status, 200);
    assert_int_equal(h_json_long(&final, "execution"), 1);
    h_resp_free(&hints);
    h_resp_free(&final);
    /* the replay, on the same connection: the response alone */
    assert_int_equal(h_send(c, raw, len), 0);
    assert_int_equal(h_read(c, &final, false), 0);
    assert_int_equal(final.status, 200);
    assert_replayed(&final, true);
    h_resp_free(&final);
    free(raw);
    h_close(c);
}

static void test_head_and_keep_alive(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp r;

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_send_str(c, "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_int_equal(h_read(c, &r, true), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(h_header(&r, "Content-Length"));
    h_resp_free(&r);
    for (int i = 2; i <= 3; i++) { /* the same connection, twice more */
        assert_int_equal(h_send_str(c, "GET /g HTTP/1.1\r\nHost: x\r\n\r\n"),
                         0);
        assert_int_equal(h_read(c, &r, false), 0);
        assert_int_equal(h_json_long(&r, "execution"), i);
        assert_replayed(&r, false);
        h_resp_free(&r);
    }
    h_close(c);
}

static void test_keyless_requests_pass_through(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);

    (void)state;
    assert_executes_each_time(px, "/free", NULL, 200, 1, 2);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

static void test_connection_close(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_resp r;
    bool closed = false;

    (void)state;
    assert_int_equal(h_exchange_raw(px->http_port,
                                    "GET /cc HTTP/1.1\r\nHost: x\r\n"
                                    "Connection: close\r\n\r\n",
                                    &r, &closed),
                     0);
    assert_int_equal(r.status, 200);
    assert_false(r.keep_alive);
    assert_true(closed);
    h_resp_free(&r);
}

static void test_forwarded_and_hop_by_hop_headers(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req q = { .method = "GET",
                       .target = "/fw?echo=1",
                       .headers = "Connection: keep-alive, X-Hop\r\n"
                                  "X-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                                  "X-Kept: 2\r\n" };
    struct h_resp r;

    (void)state;
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strcasestr(r.body, "[\"X-Forwarded-For\",\"127.0.0.1"));
    assert_non_null(strcasestr(r.body, "[\"X-Forwarded-Proto\",\"http\"]"));
    assert_non_null(strcasestr(r.body, "[\"X-Kept\",\"2\"]"));
    assert_null(strcasestr(r.body, "[\"X-Hop\""));
    assert_null(strcasestr(r.body, "[\"Keep-Alive\""));
    h_resp_free(&r);
}

/* -- Limits and malformed requests ------------------------------------- */

static void test_body_too_large_413(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--max-body", "1K"));
    char *body = calloc(1, 4001);

    (void)state;
    assert_non_null(body);
    memset(body, 'b', 4000);
    assert_int_equal(post_status(px, "/big", "k-413", body), 413);
    free(body);
    assert_int_equal(post_status(px, "/small", "k-small", "fits"), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* A request without a key streams: its body goes upstream as it comes,
 * so --max-body does not bound it (it bounds what is buffered). */
static void test_keyless_bodies_stream(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--max-body", "1K"));
    size_t big = 5u << 20, i, n = 0;
    char *body = malloc(big + 1), *raw = malloc(big + 4096);
    struct h_resp r;

    (void)state;
    assert_non_null(body);
    assert_non_null(raw);
    memset(body, 'b', big);
    body[big] = '\0';
    post(px, "/upload", NULL, body, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(h_json_long(&r, "body_bytes"), (long)big);
    h_resp_free(&r);
    /* chunked, 2 MiB in 64 KiB chunks: forwarded chunked */
    n = (size_t)snprintf(raw, 4096,
                         "POST /upload-chunked HTTP/1.1\r\n"
                         "Host: x\r\nTransfer-Encoding: chunked"
                         "\r\n\r\n");
    for (i = 0; i < 32; i++) {
        n += (size_t)snprintf(raw + n, 16, "10000\r\n");
        memset(raw + n, 'c', 65536);
        n += 65536;
        memcpy(raw + n, "\r\n", 2);
        n += 2;
    }
    memcpy(raw + n, "0\r\n\r\n", 6);
    raw[n + 5] = '\0';
    assert_int_equal(h_exchange_raw(px->http_port, raw, &r, NULL), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(h_json_long(&r, "body_bytes"), 32 * 65536);
    h_resp_free(&r);
    /* with a key the body is buffered for the fingerprint: bounded */
    assert_int_equal(post_status(px, "/upload", "k-big", body), 413);
    assert_int_equal(h_upstream_count(up->http_port), 2);
    free(body);
    free(raw);
}

/* Whether the proxy's resident memory can be bounded: not under a wrapper
 * (valgrind counts its own heap, and holds 20 MB of freed blocks back). */
static bool rss_is_the_proxys(void)
{
    return !h_proxy_wrapped();
}

/* A client that does not read holds the upstream back: a 64 MiB response
 * is not buffered in the proxy, and arrives whole once the client reads. */
static void test_slow_reader_backpressure(void **state)
{
    const size_t size = 64u << 20;
    struct h_proc *up, *px = pair(&up, NULL);
    char *get = h_format("GET /big?size=%zu HTTP/1.1\r\nHost: x\r\n\r\n", size);
    struct h_conn *c = h_connect(px->http_port);
    size_t before = statm_resident_bytes(px->pid), during;
    struct h_resp r;

    (void)state;
    assert_non_null(c);
    assert_true(before > 0);
    assert_int_equal(h_send_str(c, get), 0);
    free(get);
    sleep(1); /* the upstream has long sent it all; the client reads none */
    during = statm_resident_bytes(px->pid);
    if (rss_is_the_proxys())
        assert_true(during < before + (16u << 20)); /* not 64 MiB */
    h_set_timeout(c, 30000);
    assert_int_equal(h_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, size);
    h_resp_free(&r);
    h_close(c);
}

/* Slowloris: 1,000 connections that send half a head and stop are all
 * closed once --client-timeout passes, the proxy's memory stays bounded,
 * and it serves others meanwhile. */
static void test_idle_half_heads_are_dropped(void **state)
{
    enum { N = 1000 };
    struct h_proc *up, *px = pair(&up, FLAGS("--client-timeout", "1s"));
    struct h_conn **c = calloc(N, sizeof(*c));
    size_t before = statm_resident_bytes(px->pid);
    int i, closed = 0;

    (void)state;
    assert_non_null(c);
    for (i = 0; i < N; i++) {
        c[i] = h_connect(px->http_port);
        assert_non_null(c[i]);
        assert_int_equal(h_send_str(c[i], "POST / HTTP/1.1\r\nHost: x\r\n"), 0);
    }
    assert_int_equal(post_status(px, "/alive", NULL, "x"), 200);
    if (rss_is_the_proxys())
        assert_true(statm_resident_bytes(px->pid) < before + (16u << 20));
    for (i = 0; i < N; i++) { /* a 408, then the close */
        struct h_resp r = { 0 };

        h_set_timeout(c[i], 5000); /* well past the 1 s client timeout */
        if (h_read(c[i], &r, false) == 0 && r.status == 408 && h_closed(c[i]))
            closed++;
        h_resp_free(&r);
        h_close(c[i]);
    }
    free(c);
    assert_int_equal(closed, N);
}

/* The idle timeout counts from a connection's last request, not from its
 * accept: requests 0.6 s apart on one connection with --client-timeout
 * 1s all pass (the deadline set at accept moved later each time), and
 * once idle the connection is closed after the timeout, not before. */
static void test_idle_timeout_counts_from_last_request(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--client-timeout", "1s"));
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp r = { 0 };
    int i;

    (void)state;
    assert_non_null(c);
    for (i = 0; i < 4; i++) {
        if (i)
            h_sleep_ms(600);
        assert_int_equal(h_send_str(c, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"),
                         0);
        assert_int_equal(h_read(c, &r, false), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
    }
    h_set_timeout(c, 500); /* open half a second into the idle second */
    assert_false(h_closed(c));
    h_set_timeout(c, 3000); /* and closed well before 3 s more */
    assert_true(h_closed(c));
    h_close(c);
}

/* The upstream dies in the middle of the body: the client sees the cut
 * (the response was already on its way). With --unknown-outcome release
 * the key is released, so the retry executes again rather than replaying
 * half a response (the default, hold: test_outcomes.c). */
static void test_upstream_cut_mid_body_releases_key(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--unknown-outcome", "release"));
    struct h_req q = { .method = "POST",
                       .target = "/cut?size=100000&cut=1000",
                       .key = "k-cut",
                       .body = "x" };
    struct h_resp r = { 0 };

    (void)state;
    assert_int_not_equal(h_exchange(px->http_port, &q, &r), 0);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
    q.target = "/cut?size=100000&cut=1000"; /* the same request again */
    assert_int_not_equal(h_exchange(px->http_port, &q, &r), 0);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 2);
}

static void test_headers_too_large_431(void **state)
{
    struct h_proc *up,
        *px =
            pair(&up, FLAGS("--max-header-bytes", "1K", "--max-headers", "10"));
    struct h_req q = { .method = "POST", .target = "/hd", .body = "x" };
    char *big = calloc(1, 2100), *many = calloc(1, 20 * 16 + 1);
    struct h_resp r;

    (void)state;
    assert_non_null(big);
    assert_non_null(many);
    memcpy(big, "X-Big: ", 7);
    memset(big + 7, 'v', 2000);
    memcpy(big + 2007, "\r\n", 2);
    for (int i = 0; i < 20; i++)
        snprintf(many + strlen(many), 17, "X-H%02d: value\r\n", i);
    q.headers = big;
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 431);
    h_resp_free(&r);
    q.headers = many;
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 431);
    h_resp_free(&r);
    free(big);
    free(many);
    assert_int_equal(h_upstream_count(up->http_port), 0);
}

static void test_smuggling_is_400_and_closed(void **state)
{
    static const struct {
        const char *name, *raw;
    } cases[] = {
        { "Content-Length with Transfer-Encoding",
          "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
          "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
        { "two different Content-Length",
          "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
          "Content-Length: 6\r\n\r\nhello!" },
        { "invalid chunk size",
          "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
          "\r\nzz\r\nhello\r\n0\r\n\r\n" },
        { "bare LF line endings", "GET /s HTTP/1.1\nHost: x\n\n" },
        { "obs-fold continuation",
          "GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" },
        { "spaces in the target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n" },
    };
    struct h_proc *up, *px = pair(&up, NULL);

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct h_resp r;
        bool closed = false;
        int rc = h_exchange_raw(px->http_port, cases[i].raw, &r, &closed);

        if (rc != 0 || r.status != 400 || !closed)
            fail_msg("%s: read %d, status %d, closed %d", cases[i].name, rc,
                     r.status, closed);
        h_resp_free(&r);
    }
}

/* -- Admin, shutdown, restart ------------------------------------------ */

static void test_admin_healthz_and_metrics(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req health = { .method = "GET", .target = "/healthz" };
    struct h_req metrics = { .method = "GET", .target = "/metrics" };
    struct h_resp r;

    (void)state;
    assert_true(px->admin_port != 0);
    assert_int_equal(h_exchange(px->admin_port, &health, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(strncmp(r.body, "ok", 2), 0);
    h_resp_free(&r);
    assert_int_equal(post_status(px, "/mt", "k-metrics", "x"), 200);
    assert_int_equal(post_status(px, "/mt", "k-metrics", "x"), 200);
    assert_int_equal(post_status(px, "/mt", "bad key", "x"), 400);
    assert_int_equal(h_exchange_raw(px->http_port,
                                    "GET / HTTP/1.1\r\nHost: x\r\n"
                                    "X: a\r\n b\r\n\r\n",
                                    &r, NULL),
                     0); /* obs-fold: the proxy's own 400 */
    assert_int_equal(r.status, 400);
    h_resp_free(&r);
    assert_int_equal(h_exchange(px->admin_port, &metrics, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(
        strstr(r.body, "idem_requests_total{outcome=\"proceed\"} 1\n"));
    assert_non_null(
        strstr(r.body, "idem_requests_total{outcome=\"replay\"} 1\n"));
    assert_non_null(
        strstr(r.body, "idem_requests_total{outcome=\"invalid\"} 1\n"));
    assert_non_null(
        strstr(r.body, "idem_requests_total{outcome=\"error\"} 1\n"));
    assert_non_null(strstr(r.body, "idem_store_entries 1\n"));
    assert_non_null(strstr(r.body, "process_resident_memory_bytes "));
    h_resp_free(&r);
}

static void test_graceful_shutdown_finishes_in_flight(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req q = { .method = "POST",
                       .target = "/g?delay_ms=1500",
                       .key = "k-grace",
                       .body = "x" };
    struct h_conn *c = send_only(px, &q);

    (void)state;
    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    h_signal(px, SIGTERM);
    read_executed(c);
    assert_int_equal(h_stop(px), 0);
}

/* A request still in flight when the shutdown timeout ends is cut: the
 * process leaves after the timeout (not the upstream's 10 s), exits 0,
 * and the client's connection is closed unanswered. */
static void test_shutdown_timeout_cuts(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--shutdown-timeout", "1900ms"));
    struct h_req q = { .method = "POST",
                       .target = "/cut?delay_ms=10000",
                       .key = "k-cut",
                       .body = "x" };
    struct h_conn *c = send_only(px, &q);
    struct h_resp r;
    long ms;

    (void)state;
    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    ms = h_now_ms();
    assert_int_equal(h_stop(px), 0);
    ms = h_now_ms() - ms;
    assert_true(ms >= 1800); /* the timeout's 900 ms count too */
    assert_true(ms < 8000);
    assert_int_not_equal(h_read(c, &r, false), 0);
    h_close(c);
}

/* SIGTERM with 20 requests in flight: every one completes, the process
 * exits 0, and the snapshot it writes replays every one after a restart. */
static void test_graceful_shutdown_under_load(void **state)
{
    enum { N = 20 };
    char *file = h_tmp_path("snapshot");
    struct h_proc *up, *px = pair(&up, FLAGS("--snapshot", file));
    struct h_conn *c[N];
    char key[N][16];
    struct h_resp r;
    int i;

    (void)state;
    for (i = 0; i < N; i++) {
        struct h_req q = { .method = "POST",
                           .target = "/load?delay_ms=800",
                           .key = key[i],
                           .body = "x" };

        snprintf(key[i], sizeof(key[i]), "k-load-%d", i);
        c[i] = send_only(px, &q);
    }
    assert_int_equal(h_upstream_wait_count(up->http_port, N), N);
    h_signal(px, SIGTERM);
    for (i = 0; i < N; i++)
        read_executed(c[i]); /* closes it */
    assert_int_equal(h_stop(px), 0);
    px = proxy(up->http_port, FLAGS("--snapshot", file));
    for (i = 0; i < N; i++) {
        post(px, "/load?delay_ms=800", key[i], "x", &r);
        assert_int_equal(r.status, 200);
        assert_replayed(&r, true);
        h_resp_free(&r);
    }
    assert_int_equal(h_upstream_count(up->http_port), N);
    free(file);
}

/* A response over --max-stored-body ran once: the retry gets its status
 * and headers, an empty body and Idempotent-Body-Omitted, and does not
 * execute again. */
static void test_large_response_replays_without_body(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--max-stored-body", "1K"));
    struct h_resp r;

    (void)state;
    post(px, "/big?size=5000&status=201", "k-omit", "x", &r);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.body_len, 5000);
    h_resp_free(&r);
    post(px, "/big?size=5000&status=201", "k-omit", "x", &r);
    assert_int_equal(r.status, 201);
    assert_replayed(&r, true);
    assert_string_equal(h_header(&r, "Idempotent-Body-Omitted"), "true");
    assert_int_equal(r.body_len, 0);
    assert_string_equal(h_header(&r, "Content-Type"), "application/json");
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* A request cut by the shutdown timeout may have run: the snapshot saved
 * at exit holds its key as "outcome unknown", so after a restart its
 * retry gets the 502 that says so and never reaches the upstream. */
static void test_cut_request_unknown_after_restart(void **state)
{
    char *file = h_tmp_path("snapshot");
    struct h_proc *up,
        *px =
            pair(&up, FLAGS("--snapshot", file, "--shutdown-timeout", "500ms"));
    struct h_req q = { .method = "POST",
                       .target = "/cut?delay_ms=3000",
                       .key = "k-cut-snap",
                       .body = "x" };
    struct h_conn *c = send_only(px, &q);
    struct h_resp r;

    (void)state;
    assert_int_equal(h_upstream_wait_count(up->http_port, 1), 1);
    assert_int_equal(h_stop(px), 0);
    h_close(c);
    px = proxy(up->http_port, FLAGS("--snapshot", file));
    post(px, "/cut?delay_ms=3000", "k-cut-snap", "x", &r);
    assert_problem(&r, 502);
    assert_non_null(strstr(r.body, "outcome-unknown"));
    h_resp_free(&r);
    h_sleep_ms(3200); /* past the first execution's end */
    assert_int_equal(h_upstream_count(up->http_port), 1);
    free(file);
}

static void test_snapshot_survives_restart(void **state)
{
    char *file = h_tmp_path("snapshot");
    struct h_proc *up, *px = pair(&up, FLAGS("--snapshot", file));
    struct h_resp first, r;

    (void)state;
    post(px, "/snap?status=201", "k-snap", "x", &first);
    assert_int_equal(first.status, 201);
    assert_int_equal(h_stop(px), 0);
    px = proxy(up->http_port, FLAGS("--snapshot", file));
    post(px, "/snap?status=201", "k-snap", "x", &r);
    assert_int_equal(r.status, 201);
    assert_replayed(&r, true);
    assert_string_equal(r.body, first.body);
    assert_int_equal(h_upstream_count(up->http_port), 1);
    h_resp_free(&first);
    h_resp_free(&r);
    free(file);
}

static void test_bad_flags_exit_2(void **state)
{
    const char *const *const cases[] = {
        FLAGS(IDEMPROXY_PATH, "--listen", "127.0.0.1:0"), /* no upstream */
        FLAGS(IDEMPROXY_PATH, "--upstream", "127.0.0.1:1", "--max-body",
              "banana"),
        FLAGS(IDEMPROXY_PATH, "--upstream", "127.0.0.1:1", "--no-such-flag"),
    };
    char err[1024];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(h_run(IDEMPROXY_PATH, cases[i], err, sizeof(err)), 2);
        assert_true(strlen(err) > 0);
    }
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_replay_with_same_key),
        T(test_mismatch_is_422),
        T(test_bad_key_is_400),
        T(test_required_key_is_400),
        T(test_same_key_other_client_is_separate),
        T(test_conflict_409_while_in_flight),
        T(test_conflict_wait_gets_replay),
        T(test_parallel_same_key_executes_once),
        T(test_wait_wakes_across_workers),
        T(test_client_abort_then_replay),
        T(test_upstream_down_502_releases_key),
        T(test_upstream_timeout_504_releases_key),
        T(test_failures_are_not_stored),
        T(test_no_store_policy_is_not_stored),
        T(test_chunked_request_body),
        T(test_chunked_response),
        T(test_pipelining_in_order),
        T(test_expect_continue),
        T(test_early_hints_relayed_not_stored),
        T(test_head_and_keep_alive),
        T(test_keyless_requests_pass_through),
        T(test_connection_close),
        T(test_forwarded_and_hop_by_hop_headers),
        T(test_body_too_large_413),
        T(test_keyless_bodies_stream),
        T(test_slow_reader_backpressure),
        T(test_idle_half_heads_are_dropped),
        T(test_idle_timeout_counts_from_last_request),
        T(test_upstream_cut_mid_body_releases_key),
        T(test_headers_too_large_431),
        T(test_smuggling_is_400_and_closed),
        T(test_admin_healthz_and_metrics),
        T(test_graceful_shutdown_finishes_in_flight),
        T(test_graceful_shutdown_under_load),
        T(test_shutdown_timeout_cuts),
        T(test_large_response_replays_without_body),
        T(test_snapshot_survives_restart),
        T(test_cut_request_unknown_after_restart),
        T(test_bad_flags_exit_2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
