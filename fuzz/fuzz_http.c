/* libFuzzer target: request bytes through idemproxy's real exchange
 * (src/proxy/exchange*.c), with no sockets: a driver of its own feeds the
 * input in pieces, plays the upstream (a fixed response, a timeout or a
 * cut), fires the timers the exchange armed, and collects what the
 * exchange writes. Each input has an engine and memory store of its own.
 *
 * Checked: the request head stays within its bytes and limits; what goes
 * upstream is one request head (and body) per exchange, starting with a
 * method and an origin-form; what the client gets is a sequence of whole
 * HTTP/1.1 responses (parsed back with llhttp) with statuses from the
 * set the proxy may send; the exchange stops reading when it says so;
 * and at the end nothing is left in flight, memory within its bound.
 * Any disagreement aborts. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exchange.h"
#include "fuzz.h"
#include "http.h"
#include "idem/engine.h"
#include "log.h"
#include "idem/store.h"

#define MAX_HEAD 512  /* --max-header-bytes: past it, 431 */
#define MAX_FIELDS 8  /* --max-headers: past it, 431 */
#define MAX_BODY 1024 /* --max-body: past it, 413 */
#define MAX_MEMORY (1u << 20)
#define MAX_STEPS 10000

/* The first input byte: bits 0-4 the size of the pieces the input is fed
 * in (0: whole), bit 5 whether a key is required on "/p", bit 6 whether
 * the upstream times out (the deadline fires) instead of answering, bit
 * 7 whether it answers 500 (not stored) rather than 201, or, with bit 6,
 * cuts the connection. The rest is the request stream. */
#define CTL_PIECE 0x1f
#define CTL_REQUIRE 0x20
#define CTL_STALL 0x40
#define CTL_FAIL 0x80

static const char answer_201[] = "HTTP/1.1 201 Created\r\n"
                                 "Content-Type: application/json\r\n"
                                 "X-Fuzz: stored\r\n"
                                 "Content-Length: 12\r\n\r\n"
                                 "{\"stored\":1}";
static const char answer_500[] = "HTTP/1.1 500 Internal Server Error\r\n"
                                 "Transfer-Encoding: chunked\r\n\r\n"
                                 "3\r\nno!\r\n0\r\n\r\n";

struct driver {
    struct exchange ex;
    struct ex_ctx ctx;
    struct config cfg;
    uint8_t ctl;
    bool up_open;           /* an upstream connection is attached */
    bool armed[EX_TIMERS];  /* timers the exchange armed */
    unsigned requests_sent; /* request heads that went upstream */
    struct buf to_client;   /* everything the client got */
};

static struct driver *driver_of(struct exchange *ex)
{
    return ex->data;
}

static int io_upstream_open(struct exchange *ex)
{
    struct driver *d = driver_of(ex);

    CHECK(!d->up_open);
    /* a request head, then its body: a method token and an origin-form */
    CHECK(buf_len(&ex->up_out) > 0);
    CHECK(memchr(buf_bytes(&ex->up_out), ' ', buf_len(&ex->up_out)) != NULL);
    d->up_open = true;
    d->requests_sent++;
    return 0;
}

static void io_upstream_release(struct exchange *ex, bool reusable)
{
    struct driver *d = driver_of(ex);

    (void)reusable;
    CHECK(d->up_open);
    d->up_open = false;
}

static void io_timer(struct exchange *ex, enum ex_timer t, int64_t ms)
{
    CHECK(t < EX_TIMERS);
    driver_of(ex)->armed[t] = ms >= 0;
}

static void io_wake(struct exchange *ex)
{
    (void)ex;
    CHECK(false); /* the memory store decides at once */
}

static const struct exchange_io fuzz_io = {
    .upstream_open = io_upstream_open,
    .upstream_release = io_upstream_release,
    .timer = io_timer,
    .wake = io_wake,
};

/* What the exchange reads of its head lies inside its bytes. */
static void check_head(const struct http_head *h)
{
    unsigned i;

    CHECK(h->len <= h->max_bytes + 1 && h->len <= h->cap); /* "/" added */
    CHECK(h->nfields <= h->max_fields && h->nfields <= h->fields_cap);
    CHECK(h->method_off + h->method_len <= h->len);
    CHECK(h->target_off + h->target_len <= h->len);
    CHECK(h->origin_off + h->origin_len <= h->len);
    CHECK(h->authority_off + h->authority_len <= h->len);
    for (i = 0; i < h->nfields; i++) {
        const struct http_field *f = &h->fields[i];

        CHECK(f->name_off + f->name_len <= f->value_off);
        CHECK(f->value_off + f->value_len <= h->len);
    }
}

/* Play the upstream while the exchange has one: take the request, then
 * answer, stall (the deadline fires) or cut. An answer may let the next
 * pipelined request go upstream: play that one too. */
static void play_upstream(struct driver *d)
{
    struct exchange *ex = &d->ex;
    const char *answer = d->ctl & CTL_FAIL ? answer_500 : answer_201;
    struct ex_up_end cut = { .connected = true, .sent = true };
    unsigned before, plays = 0;

    while (d->up_open && ex->phase != EX_BODY) {
        CHECK(plays++ < MAX_STEPS);
        before = d->requests_sent;
        buf_clear(&ex->up_out); /* sent */
        if (!(d->ctl & CTL_STALL)) {
            ex_upstream_data(ex, answer, strlen(answer));
        } else if (d->ctl & CTL_FAIL) {
            ex_upstream_closed(ex, cut);
        } else {
            CHECK(d->armed[EX_TIMER_UPSTREAM]);
            ex_timeout(ex, EX_TIMER_UPSTREAM);
            if (d->up_open && d->requests_sent == before) /* a late answer */
                ex_upstream_data(ex, answer_201, strlen(answer_201));
        }
        /* done with it, or on to the next request */
        CHECK(!d->up_open || d->requests_sent > before || ex->phase == EX_BODY);
    }
}

/* Move the client's bytes to what it got. */
static void collect(struct driver *d)
{
    struct buf *o = &d->ex.client_out;

    CHECK(buf_add(&d->to_client, buf_bytes(o), buf_len(o)) == 0);
    buf_clear(o);
}

/* Feed the stream in pieces while the exchange reads. */
static void feed(struct driver *d, const uint8_t *data, size_t size)
{
    size_t piece = d->ctl & CTL_PIECE, off = 0, n;
    unsigned steps = 0;
    struct ex_wants w;

    while (off < size && steps++ < MAX_STEPS) {
        w = ex_wants(&d->ex);
        if (w.end != EX_END_NONE && w.end != EX_END_LINGER)
            break;
        if (!w.read_client) {
            play_upstream(d);
            collect(d);
            if (!ex_wants(&d->ex).read_client)
                break; /* nothing would let it read again */
            continue;
        }
        n = piece && piece < size - off ? piece : size - off;
        ex_client_data(&d->ex, (const char *)data + off, n);
        off += n;
        check_head(&d->ex.rd.head);
        play_upstream(d);
        collect(d);
    }
    play_upstream(d);
    collect(d);
}

/* -- Reading back what the client got ------------------------------------ */

struct reader {
    unsigned responses;
    bool bad_status;
};

static int on_status_complete(llhttp_t *p)
{
    struct reader *r = p->data;
    static const unsigned ok[] = { 100, 201, 400, 408, 409, 413,
                                   422, 431, 500, 502, 503, 504 };
    size_t i;

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (ok[i] == p->status_code)
            return 0;
    r->bad_status = true;
    return 0;
}

static int on_response_complete(llhttp_t *p)
{
    ((struct reader *)p->data)->responses++;
    return 0;
}

/* The client's bytes are whole responses (a HEAD's carry no body: when
 * the input has one, the framing is not checked). */
static void check_client_bytes(const struct buf *b, bool has_head)
{
    static const llhttp_settings_t s = {
        .on_status_complete = on_status_complete,
        .on_message_complete = on_response_complete,
    };
    struct reader r = { 0 };
    llhttp_t p;
    enum llhttp_errno err;

    if (buf_len(b) == 0)
        return;
    CHECK(buf_len(b) > 9 && memcmp(buf_bytes(b), "HTTP/1.1 ", 9) == 0);
    if (has_head)
        return;
    llhttp_init(&p, HTTP_RESPONSE, &s);
    p.data = &r;
    err = llhttp_execute(&p, buf_bytes(b), buf_len(b));
    CHECK(err == HPE_OK);
    CHECK(llhttp_finish(&p) == HPE_OK); /* a body that ends with the close */
    CHECK(!r.bad_status);
    CHECK(r.responses >= 1);
}

static bool contains(const uint8_t *data, size_t size, const char *s)
{
    size_t n = strlen(s), i;

    for (i = 0; i + n <= size; i++)
        if (memcmp(data + i, s, n) == 0)
            return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct route require[] = {
        { .prefix = (char *)"/p", .require_key = true, .conflict = -1 },
    };
    static const char *const scope[] = { "Authorization" };
    struct idem_store_memory_opts so = { .max_memory = MAX_MEMORY };
    struct idem_engine_opts eo = {
        .scope_headers = scope,
        .nscope_headers = 1,
        .lifetime_ms = 1000,
    };
    struct idem_store *store;
    struct idem_engine *engine;
    struct idem_engine_stats es;
    struct idem_store_stats ss;
    struct driver *d;
    static bool quiet;
    unsigned t;

    if (size == 0)
        return 0;
    if (!quiet) { /* decision lines would drown the fuzzer's own */
        struct config lc = { .log_level = LOG_ERROR };

        CHECK(log_open(&lc) == 0);
        quiet = true;
    }
    CHECK(idem_store_memory_new(&so, &store) == IDEM_OK);
    eo.store = store;
    CHECK(idem_engine_new(&eo, &engine) == IDEM_OK);
    CHECK((d = calloc(1, sizeof(*d))) != NULL);
    d->ctl = data[0];
    d->cfg.max_header_bytes = MAX_HEAD;
    d->cfg.max_headers = MAX_FIELDS;
    d->cfg.max_body = MAX_BODY;
    d->cfg.max_stored_body = 1024;
    d->cfg.key_header = (char *)"Idempotency-Key";
    d->cfg.lease_ms = 1000;
    d->cfg.client_timeout_ms = 1000;
    d->cfg.upstream_timeout_ms = 1000;
    d->cfg.unknown_outcome = IDEM_UNKNOWN_HOLD;
    d->cfg.routes = (d->ctl & CTL_REQUIRE) ? require : NULL;
    d->cfg.nroutes = (d->ctl & CTL_REQUIRE) ? 1 : 0;
    d->ctx.cfg = &d->cfg;
    d->ctx.engine = engine;
    ex_init(&d->ex, &fuzz_io, &d->ctx, "192.0.2.1:4242", d);

    feed(d, data + 1, size - 1);
    /* the client stops sending: the deadlines the exchange armed fire */
    for (t = 0; t < EX_TIMERS; t++)
        if (d->armed[t] && ex_wants(&d->ex).end != EX_END_FREE) {
            ex_timeout(&d->ex, (enum ex_timer)t);
            play_upstream(d);
            collect(d);
        }
    check_client_bytes(&d->to_client, contains(data, size, "HEAD"));
    ex_client_gone(&d->ex);
    ex_deinit(&d->ex);
    CHECK(!d->up_open);
    buf_free(&d->to_client);
    free(d);

    idem_engine_tick(engine);
    idem_engine_stats(engine, &es);
    idem_store_stats(store, &ss);
    CHECK(es.waiting == 0 && ss.lock_entries == 0);
    CHECK(ss.bytes <= MAX_MEMORY);
    idem_engine_free(engine);
    idem_store_free(store);
    return 0;
}
