/* The HTTP/1.1 exchange (src/proxy/exchange*.c) without sockets: a test
 * driver feeds client and upstream bytes, fires timers, and reads what
 * the exchange writes and wants. Pipelining, 100-continue, early
 * refusals, backpressure both ways, an upstream cut, and the client and
 * upstream deadlines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exchange.h"
#include "idem/engine.h"
#include "idem/store.h"
#include "log.h"

static const char created[] = "HTTP/1.1 201 Created\r\n"
                              "Content-Length: 2\r\n\r\nok";

struct world {
    struct idem_store *store;
    struct idem_engine *engine;
    struct config cfg;
    struct ex_ctx ctx;
};

struct tdriver {
    struct exchange ex;
    unsigned opened, released, reusable;
    bool up_open;
    bool armed[EX_TIMERS];
    int64_t ms[EX_TIMERS];
};

static struct tdriver *td(struct exchange *ex)
{
    return ex->data;
}

static int io_open(struct exchange *ex)
{
    assert_false(td(ex)->up_open);
    td(ex)->up_open = true;
    td(ex)->opened++;
    return 0;
}

static void io_release(struct exchange *ex, bool reusable)
{
    assert_true(td(ex)->up_open);
    td(ex)->up_open = false;
    td(ex)->released++;
    td(ex)->reusable += reusable;
}

static void io_timer(struct exchange *ex, enum ex_timer t, int64_t ms)
{
    td(ex)->armed[t] = ms >= 0;
    td(ex)->ms[t] = ms;
}

static void io_wake(struct exchange *ex)
{
    (void)ex;
    fail_msg("the memory store decides at once");
}

static const struct exchange_io test_io = { io_open, io_release, io_timer,
                                            io_wake };

static int setup(void **state)
{
    static struct route require[] = {
        { .prefix = (char *)"/pay", .require_key = true, .conflict = -1 },
    };
    struct world *w = calloc(1, sizeof(*w));
    struct idem_store_memory_opts so = { .max_memory = 1 << 20 };
    struct idem_engine_opts eo = { .lifetime_ms = 60000 };
    struct config lc = { .log_level = LOG_ERROR };

    assert_non_null(w);
    assert_int_equal(log_open(&lc), 0);
    assert_int_equal(idem_store_memory_new(&so, &w->store), IDEM_OK);
    eo.store = w->store;
    assert_int_equal(idem_engine_new(&eo, &w->engine), IDEM_OK);
    w->cfg.max_header_bytes = 4096;
    w->cfg.max_headers = 32;
    w->cfg.max_body = 1024;
    w->cfg.max_stored_body = 1 << 20;
    w->cfg.key_header = (char *)"Idempotency-Key";
    w->cfg.lease_ms = 10000;
    w->cfg.client_timeout_ms = 5000;
    w->cfg.upstream_timeout_ms = 7000;
    w->cfg.tunnel_idle_ms = 3000;
    w->cfg.tunnel_max_ms = 9000;
    w->cfg.unknown_outcome = IDEM_UNKNOWN_HOLD;
    w->cfg.routes = require;
    w->cfg.nroutes = 1;
    w->ctx.cfg = &w->cfg;
    w->ctx.engine = w->engine;
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    struct world *w = *state;

    idem_engine_free(w->engine);
    idem_store_free(w->store);
    free(w);
    return 0;
}

static struct tdriver *start(struct world *w)
{
    struct tdriver *d = calloc(1, sizeof(*d));

    assert_non_null(d);
    ex_init(&d->ex, &test_io, &w->ctx, "198.51.100.7:5000", d);
    return d;
}

static void stop(struct tdriver *d)
{
    ex_deinit(&d->ex);
    assert_false(d->up_open);
    free(d);
}

static void send_client(struct tdriver *d, const char *s)
{
    ex_client_data(&d->ex, s, strlen(s));
}

static void send_upstream(struct tdriver *d, const char *s)
{
    ex_upstream_data(&d->ex, s, strlen(s));
}

/* What the client got since the last call, as a string (freed by the
 * next call). */
static const char *client_got(struct tdriver *d)
{
    static char *last;
    struct buf *o = &d->ex.client_out;

    free(last);
    last = calloc(1, buf_len(o) + 1);
    assert_non_null(last);
    memcpy(last, buf_bytes(o), buf_len(o));
    buf_clear(o);
    return last;
}

/* What went upstream since the last call: the request was sent. */
static size_t upstream_got(struct tdriver *d, char *out, size_t size)
{
    struct buf *o = &d->ex.up_out;
    size_t n = buf_len(o) < size - 1 ? buf_len(o) : size - 1;

    memcpy(out, buf_bytes(o), n);
    out[n] = '\0';
    buf_clear(o);
    return n;
}

static unsigned count(const char *s, const char *needle)
{
    unsigned n = 0;

    for (; (s = strstr(s, needle)); s++)
        n++;
    return n;
}

/* The forwarding headers: an IPv6 peer's Forwarded node quoted and
 * bracketed, a Host with a port quoted, TLS said as https; a trusted
 * peer's chain extended, another's replaced; the request's ID. */
static void test_forwarding_headers(void **state)
{
    static struct cidr v6_lo = { .addr = { [15] = 1 }, .bits = 128 };
    struct world *w = *state;
    struct tdriver *d = calloc(1, sizeof(*d));
    const char *req = "GET /x HTTP/1.1\r\nHost: a.example:8080\r\n"
                      "X-Forwarded-For: 192.0.2.1\r\n"
                      "X-Forwarded-Proto: http\r\n"
                      "Forwarded: for=192.0.2.1\r\n"
                      "X-Request-ID: abc-123\r\n\r\n";
    char up[2048];

    assert_non_null(d);
    ex_init(&d->ex, &test_io, &w->ctx, "[::1]:5000", d);
    d->ex.tls = true;
    send_client(d, req);
    upstream_got(d, up, sizeof(up));
    assert_non_null(strstr(up, "\r\nX-Forwarded-For: ::1\r\n"));
    assert_non_null(strstr(up, "\r\nX-Forwarded-Proto: https\r\n"));
    assert_non_null(strstr(up, "\r\nX-Forwarded-Host: a.example:8080\r\n"));
    assert_non_null(strstr(up, "\r\nForwarded: for=\"[::1]\";proto=https;"
                               "host=\"a.example:8080\"\r\n"));
    assert_non_null(strstr(up, "\r\nX-Request-ID: abc-123\r\n"));
    assert_int_equal(count(up, "X-Forwarded-For"), 1);
    assert_int_equal(count(up, "Forwarded:"), 1); /* the client's replaced */
    send_upstream(d, "HTTP/1.1 204 No Content\r\n\r\n");
    client_got(d);

    w->cfg.trusted = &v6_lo;
    w->cfg.ntrusted = 1;
    send_client(d, req);
    upstream_got(d, up, sizeof(up));
    assert_non_null(strstr(up, "\r\nX-Forwarded-For: 192.0.2.1, ::1\r\n"));
    assert_non_null(strstr(up, "\r\nX-Forwarded-Proto: http\r\n"));
    assert_non_null(strstr(up, "\r\nForwarded: for=192.0.2.1, "
                               "for=\"[::1]\";proto=https;"));
    send_upstream(d, "HTTP/1.1 204 No Content\r\n\r\n");
    client_got(d);
    w->cfg.trusted = NULL;
    w->cfg.ntrusted = 0;

    send_client(d, "GET /x HTTP/1.1\r\nHost: a\r\n"
                   "X-Request-ID: has space\r\n\r\n");
    upstream_got(d, up, sizeof(up));
    assert_null(strstr(up, "has space"));
    assert_non_null(strstr(up, "\r\nX-Request-ID: "));
    assert_int_equal(strcspn(strstr(up, "X-Request-ID: ") + 14, "\r"), 32);
    send_upstream(d, "HTTP/1.1 204 No Content\r\n\r\n");
    client_got(d);
    stop(d);
}

static void test_pipelined_requests_answer_in_order(void **state)
{
    struct tdriver *d = start(*state);
    char up[2048];

    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: p1\r\n"
                   "Content-Length: 1\r\n\r\nA"
                   "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: p2\r\n"
                   "Content-Length: 1\r\n\r\nB");
    /* one request at a time: the second is not even parsed */
    assert_int_equal(d->opened, 1);
    upstream_got(d, up, sizeof(up));
    assert_non_null(strstr(up, "Idempotency-Key: p1"));
    assert_null(strstr(up, "p2"));
    assert_int_equal(d->ex.phase, EX_UPSTREAM);
    send_upstream(d, created);
    /* the first answer out, the second forwarded on the same pass */
    assert_int_equal(count(client_got(d), "HTTP/1.1 201"), 1);
    assert_int_equal(d->opened, 2);
    assert_int_equal(d->reusable, 1);
    upstream_got(d, up, sizeof(up));
    assert_non_null(strstr(up, "Idempotency-Key: p2"));
    send_upstream(d, created);
    assert_int_equal(count(client_got(d), "HTTP/1.1 201"), 1);
    assert_true(ex_idle(&d->ex));
    assert_true(ex_wants(&d->ex).read_client);
    stop(d);
}

static void test_expect_100_continue(void **state)
{
    struct tdriver *d = start(*state);
    char up[2048];

    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: c1\r\n"
                   "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert_string_equal(client_got(d), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(d->opened, 0); /* the body first */
    send_client(d, "abc");
    assert_int_equal(d->opened, 1);
    upstream_got(d, up, sizeof(up));
    assert_null(strstr(up, "Expect")); /* the proxy answered it */
    assert_non_null(strstr(up, "\r\n\r\nabc"));
    send_upstream(d, created);
    assert_non_null(strstr(client_got(d), "HTTP/1.1 201"));
    stop(d);
}

static void test_early_refusal_closes_with_linger(void **state)
{
    struct tdriver *d = start(*state);
    struct ex_wants w;
    const char *got;

    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: e1\r\n"
                   "Content-Length: 5000\r\n\r\nxx");
    got = client_got(d);
    assert_non_null(strstr(got, "HTTP/1.1 413 "));
    assert_non_null(strstr(got, "Connection: close\r\n"));
    assert_int_equal(d->opened, 0);
    /* not read whole: the rest is read and dropped, then close */
    w = ex_wants(&d->ex);
    assert_int_equal(w.end, EX_END_LINGER);
    assert_true(w.read_client);
    assert_true(d->armed[EX_TIMER_CLIENT]);
    assert_int_equal(d->ms[EX_TIMER_CLIENT], EX_LINGER_IDLE_MS);
    send_client(d, "more body bytes");
    assert_string_equal(client_got(d), "");
    ex_timeout(&d->ex, EX_TIMER_CLIENT);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_FREE);
    stop(d);
}

static void test_missing_key_is_400(void **state)
{
    struct tdriver *d = start(*state);

    send_client(d,
                "POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_non_null(strstr(client_got(d), "HTTP/1.1 400 "));
    assert_int_equal(d->opened, 0);
    /* refused at its head: the connection closes after (lingering) */
    assert_int_equal(ex_wants(&d->ex).end, EX_END_LINGER);
    stop(d);
}

static void test_backpressure_both_ways(void **state)
{
    struct tdriver *d = start(*state);
    char head[256], *chunk = malloc(EX_HIGH);

    assert_non_null(chunk);
    memset(chunk, 'z', EX_HIGH);
    /* client -> upstream: an unkeyed body streams; past EX_HIGH queued
     * for the upstream, the client waits */
    snprintf(head, sizeof(head),
             "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %u\r\n\r\n",
             3u * EX_HIGH);
    send_client(d, head);
    assert_int_equal(d->opened, 1);
    ex_client_data(&d->ex, chunk, EX_HIGH);
    ex_client_data(&d->ex, chunk, 1024);
    assert_false(ex_wants(&d->ex).read_client);
    buf_clear(&d->ex.up_out); /* the upstream took it */
    ex_upstream_drained(&d->ex);
    assert_true(ex_wants(&d->ex).read_client);
    ex_client_data(&d->ex, chunk, EX_HIGH);
    buf_clear(&d->ex.up_out);
    ex_upstream_drained(&d->ex);
    ex_client_data(&d->ex, chunk, EX_HIGH - 1024);
    assert_int_equal(d->ex.phase, EX_UPSTREAM); /* the body is whole */
    /* upstream -> client: past EX_HIGH for the client, the upstream
     * waits, and its deadline with it */
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n", 2u * EX_HIGH);
    send_upstream(d, head);
    ex_upstream_data(&d->ex, chunk, EX_HIGH);
    ex_upstream_data(&d->ex, chunk, 10);
    assert_false(ex_wants(&d->ex).read_upstream);
    assert_false(d->armed[EX_TIMER_UPSTREAM]);
    buf_clear(&d->ex.client_out); /* the client read it */
    ex_client_drained(&d->ex);
    assert_true(ex_wants(&d->ex).read_upstream);
    assert_true(d->armed[EX_TIMER_UPSTREAM]);
    ex_upstream_data(&d->ex, chunk, EX_HIGH - 10);
    assert_true(ex_idle(&d->ex)); /* answered: ready for the next */
    free(chunk);
    stop(d);
}

static void test_upstream_cut_holds_the_key(void **state)
{
    struct tdriver *d = start(*state), *again;
    struct ex_up_end cut = { .connected = true, .sent = true };
    const char *got;

    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: u1\r\n"
                   "Content-Length: 1\r\n\r\nA");
    assert_int_equal(d->opened, 1);
    ex_upstream_closed(&d->ex, cut);
    got = client_got(d);
    assert_non_null(strstr(got, "HTTP/1.1 502 "));
    assert_non_null(strstr(got, "outcome unknown"));
    stop(d);
    /* it may have run: a retry is not executed again */
    again = start(*state);
    send_client(again,
                "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: u1\r\n"
                "Content-Length: 1\r\n\r\nA");
    got = client_got(again);
    assert_non_null(strstr(got, "HTTP/1.1 502 "));
    assert_non_null(strstr(got, "outcome-unknown"));
    assert_int_equal(again->opened, 0);
    stop(again);
}

static void test_connect_failure_releases_the_key(void **state)
{
    struct tdriver *d = start(*state), *again;
    struct ex_up_end refused = { 0 };

    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: r1\r\n"
                   "Content-Length: 1\r\n\r\nA");
    ex_upstream_closed(&d->ex, refused); /* nothing was sent */
    assert_non_null(strstr(client_got(d), "HTTP/1.1 502 "));
    stop(d);
    again = start(*state);
    send_client(again,
                "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: r1\r\n"
                "Content-Length: 1\r\n\r\nA");
    assert_int_equal(again->opened, 1); /* proceeds: the key was released */
    send_upstream(again, created);
    assert_non_null(strstr(client_got(again), "HTTP/1.1 201 "));
    stop(again);
}

static void test_client_deadlines(void **state)
{
    struct tdriver *d = start(*state);

    /* an idle keep-alive connection just closes */
    assert_true(ex_idle(&d->ex));
    ex_timeout(&d->ex, EX_TIMER_CLIENT);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_FREE);
    assert_string_equal(client_got(d), "");
    stop(d);
    /* a request that stalls mid-head gets 408 */
    d = start(*state);
    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\n");
    assert_true(d->armed[EX_TIMER_CLIENT]);
    assert_int_equal(d->ms[EX_TIMER_CLIENT], 5000);
    ex_timeout(&d->ex, EX_TIMER_CLIENT);
    assert_non_null(strstr(client_got(d), "HTTP/1.1 408 "));
    assert_int_equal(ex_wants(&d->ex).end, EX_END_CLOSE);
    stop(d);
}

static void test_upstream_deadline_waits_for_the_late_answer(void **state)
{
    struct tdriver *d = start(*state), *again;
    const char *got;

    send_client(d, "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: l1\r\n"
                   "Content-Length: 1\r\n\r\nA");
    assert_true(d->armed[EX_TIMER_UPSTREAM]);
    assert_int_equal(d->ms[EX_TIMER_UPSTREAM], 7000);
    ex_timeout(&d->ex, EX_TIMER_UPSTREAM);
    got = client_got(d);
    assert_non_null(strstr(got, "HTTP/1.1 504 "));
    assert_int_equal(d->ex.phase, EX_LATE);
    assert_true(d->up_open); /* still waiting for it */
    assert_int_equal(d->ms[EX_TIMER_UPSTREAM], 10000); /* one more lease */
    assert_true(ex_wants(&d->ex).read_upstream);
    send_upstream(d, created); /* late, stored, not sent to the client */
    assert_string_equal(client_got(d), "");
    assert_false(d->up_open);
    stop(d);
    again = start(*state);
    send_client(again,
                "POST /pay HTTP/1.1\r\nHost: a\r\nIdempotency-Key: l1\r\n"
                "Content-Length: 1\r\n\r\nA");
    got = client_got(again);
    assert_non_null(strstr(got, "HTTP/1.1 201 "));
    assert_non_null(strstr(got, "Idempotent-Replayed: true"));
    assert_int_equal(again->opened, 0);
    stop(again);
}

/* -- Upgrade and the tunnel ----------------------------------------------- */

static const char ws_request[] = "GET /ws HTTP/1.1\r\nHost: a\r\n"
                                 "Upgrade: websocket\r\n"
                                 "Connection: keep-alive, Upgrade\r\n"
                                 "Sec-WebSocket-Key: k\r\n\r\n";
static const char switched[] = "HTTP/1.1 101 Switching Protocols\r\n"
                               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: a\r\n\r\n";

/* ws_request (then early, bytes sent ahead of the answer) forwarded with
 * its Upgrade; the upstream switches, with first after its head. */
static struct tdriver *tunnel(struct world *w, const char *early,
                              const char *first)
{
    struct tdriver *d = start(w);
    size_t size = strlen(switched) + strlen(first) + 1;
    char up[2048], *resp = malloc(size);

    assert_non_null(resp);
    send_client(d, ws_request);
    send_client(d, early);
    assert_int_equal(d->opened, 1);
    upstream_got(d, up, sizeof(up));
    assert_non_null(strstr(up, "\r\nUpgrade: websocket\r\n"));
    assert_non_null(strstr(up, "\r\nConnection: upgrade\r\n"));
    assert_non_null(strstr(up, "Sec-WebSocket-Key: k\r\n"));
    assert_int_equal(count(up, "Upgrade:"), 1);
    assert_null(strstr(up, early[0] ? early : "(none)")); /* not yet */
    snprintf(resp, size, "%s%s", switched, first);
    send_upstream(d, resp);
    free(resp);
    assert_int_equal(d->ex.phase, EX_TUNNEL);
    return d;
}

static void test_upgrade_becomes_a_tunnel(void **state)
{
    struct tdriver *d = tunnel(*state, "early", "hello");
    const char *got = client_got(d);
    char up[256];

    assert_non_null(strstr(got, "HTTP/1.1 101 Switching Protocols\r\n"));
    assert_non_null(strstr(got, "\r\nUpgrade: websocket\r\n"));
    assert_non_null(strstr(got, "\r\nConnection: upgrade\r\n"));
    assert_non_null(strstr(got, "Sec-WebSocket-Accept: a\r\n"));
    assert_null(strstr(got, "Content-Length"));
    assert_non_null(strstr(got, "\r\n\r\nhello"));
    upstream_got(d, up, sizeof(up));
    assert_string_equal(up, "early"); /* sent ahead: it goes up first */
    assert_null(d->ex.call);          /* never keyed, never stored */
    assert_int_equal(d->ms[EX_TIMER_CLIENT], 3000);   /* idle bound */
    assert_int_equal(d->ms[EX_TIMER_UPSTREAM], 9000); /* total bound */
    /* raw bytes both ways, whatever they look like */
    send_client(d, "GET / HTTP/1.1\r\n\r\n\x81\x05");
    upstream_got(d, up, sizeof(up));
    assert_string_equal(up, "GET / HTTP/1.1\r\n\r\n\x81\x05");
    send_upstream(d, "HTTP/1.1 200 OK\r\n\r\n");
    assert_string_equal(client_got(d), "HTTP/1.1 200 OK\r\n\r\n");
    assert_true(ex_wants(&d->ex).read_client);
    assert_true(ex_wants(&d->ex).read_upstream);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_NONE);
    assert_false(ex_idle(&d->ex));
    /* the idle bound closes both sides */
    d->ms[EX_TIMER_CLIENT] = 0;
    send_upstream(d, "x");
    assert_int_equal(d->ms[EX_TIMER_CLIENT], 3000); /* restarted */
    ex_timeout(&d->ex, EX_TIMER_CLIENT);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_FREE);
    assert_false(d->up_open);
    assert_int_equal(d->reusable, 0);
    stop(d);
}

static void test_tunnel_backpressure_both_ways(void **state)
{
    struct tdriver *d = tunnel(*state, "", "");
    char *chunk = malloc(EX_HIGH);

    assert_non_null(chunk);
    memset(chunk, 'z', EX_HIGH);
    client_got(d);
    ex_upstream_data(&d->ex, chunk, EX_HIGH);
    ex_upstream_data(&d->ex, chunk, 1);
    assert_false(ex_wants(&d->ex).read_upstream);
    buf_clear(&d->ex.client_out);
    ex_client_drained(&d->ex);
    assert_true(ex_wants(&d->ex).read_upstream);
    assert_int_equal(d->ms[EX_TIMER_UPSTREAM], 9000); /* not the deadline */
    ex_client_data(&d->ex, chunk, EX_HIGH);
    ex_client_data(&d->ex, chunk, 1);
    assert_false(ex_wants(&d->ex).read_client);
    buf_clear(&d->ex.up_out);
    ex_upstream_drained(&d->ex);
    assert_true(ex_wants(&d->ex).read_client);
    /* the total bound ends it however busy */
    ex_timeout(&d->ex, EX_TIMER_UPSTREAM);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_FREE);
    free(chunk);
    stop(d);
}

/* The upstream closes: the client gets what is queued, then the close;
 * a client that leaves ends it at once. */
static void test_tunnel_ends_with_either_side(void **state)
{
    struct tdriver *d = tunnel(*state, "", "bye");

    ex_upstream_closed(&d->ex, (struct ex_up_end){ true, false, true });
    assert_false(d->up_open);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_CLOSE);
    assert_false(ex_wants(&d->ex).read_client);
    assert_non_null(strstr(client_got(d), "\r\n\r\nbye"));
    stop(d);
    d = tunnel(*state, "", "");
    ex_client_gone(&d->ex);
    assert_int_equal(ex_wants(&d->ex).end, EX_END_FREE);
    assert_false(d->up_open);
    stop(d);
}

/* An upgrade the upstream declines is relayed as any answer, and the
 * connection closes after it (what follows may be the other protocol). */
static void test_upgrade_declined_closes(void **state)
{
    struct tdriver *d = start(*state);
    const char *got;

    send_client(d, ws_request);
    send_upstream(d, "HTTP/1.1 426 Upgrade Required\r\n"
                     "Content-Length: 2\r\n\r\nno");
    got = client_got(d);
    assert_non_null(strstr(got, "HTTP/1.1 426 "));
    assert_non_null(strstr(got, "Connection: close\r\n"));
    assert_int_equal(ex_wants(&d->ex).end, EX_END_CLOSE);
    stop(d);
}

/* A keyed request never switches: it goes up without its Upgrade, runs
 * once, is stored, and a 101 to it is not a tunnel. */
static void test_keyed_upgrade_is_a_plain_request(void **state)
{
    struct tdriver *d = start(*state), *again;
    const char *req = "POST /pay HTTP/1.1\r\nHost: a\r\n"
                      "Idempotency-Key: u1\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nContent-Length: 1\r\n\r\nx";
    char up[2048];

    send_client(d, req);
    upstream_got(d, up, sizeof(up));
    assert_null(strstr(up, "Upgrade"));
    assert_null(strstr(up, "upgrade"));
    send_upstream(d, created);
    assert_non_null(strstr(client_got(d), "HTTP/1.1 201 "));
    assert_int_equal(ex_wants(&d->ex).end, EX_END_CLOSE);
    stop(d);
    again = start(*state);
    send_client(again, req);
    assert_non_null(strstr(client_got(again), "Idempotent-Replayed: true"));
    assert_int_equal(again->opened, 0);
    stop(again);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(test_forwarding_headers),
        T(test_pipelined_requests_answer_in_order),
        T(test_expect_100_continue),
        T(test_early_refusal_closes_with_linger),
        T(test_missing_key_is_400),
        T(test_backpressure_both_ways),
        T(test_upstream_cut_holds_the_key),
        T(test_connect_failure_releases_the_key),
        T(test_client_deadlines),
        T(test_upstream_deadline_waits_for_the_late_answer),
        T(test_upgrade_becomes_a_tunnel),
        T(test_tunnel_backpressure_both_ways),
        T(test_tunnel_ends_with_either_side),
        T(test_upgrade_declined_closes),
        T(test_keyed_upgrade_is_a_plain_request),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
