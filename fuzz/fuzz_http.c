/* libFuzzer target: request bytes through what idemproxy does with them,
 * without sockets. llhttp (strict, as conn.c sets it up) fills an
 * http_head through the http_head_* calls under small limits; each head
 * is judged (http_reader_judge: target, Host) and each whole request then
 * goes through the engine as conn.c takes it: start, body, decide,
 * complete, free. Checks the head's bounds, every decision, and
 * that no record stays in flight. Any disagreement aborts. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "http.h"
#include "target.h"
#include "idem/engine.h"
#include "idem/store.h"

#define MAX_HEAD 512  /* --max-header-bytes: past it, 431 */
#define MAX_FIELDS 8  /* --max-headers: past it, 431 */
#define MAX_BODY 1024 /* --max-body: past it, 413 */
#define MAX_MEMORY (1u << 20)
#define STORED_BODY "{\"stored\":1}"

/* The first input byte: bits 0-4 the size of the pieces the input is fed
 * in (0: whole), bit 5 whether a key is required on "/p", bit 6 whether a
 * call that proceeds completes only after the next request is decided
 * (another client, so 409 is reachable), bit 7 whether it completes with
 * a 500 (not stored) rather than a 201. The rest is the request stream. */
#define CTL_PIECE 0x1f
#define CTL_REQUIRE 0x20
#define CTL_DEFER 0x40
#define CTL_FAIL 0x80

/* One client connection, as far as conn.c's parsing goes. */
struct client {
    struct http_reader rd;  /* parser and head, as conn.c reads them */
    struct idem_call *call; /* the request being read */
    struct idem_call *held; /* CTL_DEFER: proceeded, not yet completed */
    uint8_t ctl;
    bool streaming; /* PASS: the body is not the engine's */
    bool refused;   /* answered 400 or 413 from a callback: closes */
    bool close_after;
    size_t body_len;
};

static struct idem_engine *engine;
static struct idem_store *store;
static unsigned long input_no; /* each input is its own client scope */

static const struct idem_header stored_headers[] = {
    { "Content-Type", 12, "application/json", 16 },
    { "X-Fuzz", 6, "stored", 6 },
};

static struct client *client_of(llhttp_t *p)
{
    return http_reader_of(p)->data;
}

/* What conn.c and log.c read of a head lies inside its bytes. */
static void check_head(const struct http_head *h)
{
    unsigned i;

    CHECK(h->len <= h->max_bytes && h->len <= h->cap);
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

static void check_started(const struct idem_decision *d)
{
    switch (d->outcome) {
    case IDEM_OUTCOME_PASS:
    case IDEM_OUTCOME_PENDING:
        CHECK(d->status == 0);
        break;
    case IDEM_OUTCOME_INVALID:
        CHECK(d->status == 400 && d->detail != NULL);
        break;
    default:
        CHECK(false);
    }
}

/* conn.c's route_of() for the one route "/p": the judged origin-form's
 * path, percent-decoded, starts with it. */
static bool on_route(const char *target, size_t len)
{
    const char *query = memchr(target, '?', len);

    return target_has_prefix(target, query ? (size_t)(query - target) : len,
                             "/p", 2);
}

/* conn.c's start_call(), with one more header first: this input's
 * scope, so no input sees another's records. */
static void start_call(struct client *c, struct idem_decision *d)
{
    struct http_head *h = &c->rd.head;
    const struct idem_header *views = http_head_views(h);
    struct idem_header hdrs[MAX_FIELDS + 1];
    char scope[24];
    int slen = snprintf(scope, sizeof(scope), "%lu", input_no);
    struct idem_request req = {
        .method = h->bytes + h->method_off,
        .method_len = h->method_len,
        .target = h->bytes + h->origin_off,
        .target_len = h->origin_len,
        .headers = hdrs,
        .nheaders = h->nfields + 1u,
    };

    CHECK(views || h->nfields == 0);
    hdrs[0] = (struct idem_header){ "X-Fuzz-Input", 12, scope, (size_t)slen };
    if (h->nfields)
        memcpy(hdrs + 1, views, h->nfields * sizeof(*views));
    req.key_required =
        (c->ctl & CTL_REQUIRE) && on_route(req.target, req.target_len);
    req.route = req.key_required ? "/p" : NULL;
    req.route_len = req.key_required ? 2 : 0;
    CHECK(idem_call_new(engine, &c->call) == IDEM_OK);
    CHECK(idem_call_start(c->call, &req, d) == IDEM_OK);
    check_started(d);
}

static int on_headers_complete(llhttp_t *p)
{
    struct client *c = client_of(p);
    struct http_head *h = &c->rd.head;
    struct idem_decision d;
    const char *why = NULL;
    unsigned status;

    check_head(h);
    c->close_after = c->close_after || !llhttp_should_keep_alive(p);
    status = http_reader_judge(&c->rd, &why);
    CHECK(status == 0 || (status == 400 && why) || (status == 431 && h->full));
    if (status != 0) {
        c->refused = true;
        return HPE_PAUSED;
    }
    check_head(h);
    /* what goes upstream is an origin-form (or "*") */
    CHECK(h->origin_len > 0 &&
          (h->bytes[h->origin_off] == '/' ||
           (h->origin_len == 1 && h->bytes[h->origin_off] == '*')));
    start_call(c, &d);
    c->streaming = d.outcome == IDEM_OUTCOME_PASS;
    c->body_len = 0;
    if (d.outcome == IDEM_OUTCOME_INVALID ||
        (!c->streaming && (p->flags & F_CONTENT_LENGTH) &&
         p->content_length > MAX_BODY)) {
        c->refused = true;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = client_of(p);

    if (c->streaming)
        return 0;
    if (len > MAX_BODY - c->body_len) {
        c->refused = true;
        return HPE_PAUSED;
    }
    c->body_len += len;
    CHECK(idem_call_body(c->call, at, len) == IDEM_OK);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED; /* one request at a time */
}

static const llhttp_settings_t request_settings = {
    HTTP_READER_CALLBACKS,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* A replay is what this input stored: its scope is its own. */
static void check_replay(const struct idem_decision *d)
{
    const struct idem_response *r = &d->replay;
    size_t i;

    CHECK(d->status == 201 && r->status == 201 && !d->body_omitted);
    CHECK(r->body_len == strlen(STORED_BODY) &&
          memcmp(r->body, STORED_BODY, r->body_len) == 0);
    CHECK(r->nheaders == 2);
    for (i = 0; i < r->nheaders; i++) {
        const struct idem_header *want = &stored_headers[i];

        CHECK(r->headers[i].name_len == want->name_len &&
              r->headers[i].value_len == want->value_len);
        CHECK(memcmp(r->headers[i].name, want->name, want->name_len) == 0 &&
              memcmp(r->headers[i].value, want->value, want->value_len) == 0);
    }
}

static void check_decided(const struct idem_decision *d)
{
    switch (d->outcome) {
    case IDEM_OUTCOME_PROCEED:
        CHECK(d->status == 0);
        break;
    case IDEM_OUTCOME_REPLAY:
        check_replay(d);
        break;
    case IDEM_OUTCOME_CONFLICT:
        CHECK(d->status == 409 && d->retry_after_s > 0);
        break;
    case IDEM_OUTCOME_MISMATCH:
        CHECK(d->status == 422);
        break;
    case IDEM_OUTCOME_UNAVAILABLE:
        CHECK(d->status == 503);
        break;
    default:
        CHECK(false);
    }
}

struct finished {
    int rc;
    bool stored;
};

static void on_finished(int rc, bool stored, void *ud)
{
    struct finished *f = ud;

    f->rc = rc;
    f->stored = stored;
}

/* Complete a call that proceeded with the fixed response, and free it. */
static void complete(struct idem_call *call, bool fail)
{
    struct idem_response resp = {
        .status = fail ? 500 : 201,
        .headers = stored_headers,
        .nheaders = 2,
        .body = STORED_BODY,
        .body_len = strlen(STORED_BODY),
    };
    struct finished f = { .rc = IDEM_EINPROGRESS };

    if (!call)
        return;
    /* the memory store answers before idem_call_complete returns */
    CHECK(idem_call_complete(call, &resp, on_finished, &f) == IDEM_OK);
    CHECK(f.rc == IDEM_OK && f.stored == !fail);
    idem_call_free(call);
}

/* conn.c's dispatch() and finish_request(): decide a whole request, act. */
static void dispatch(struct client *c)
{
    bool fail = c->ctl & CTL_FAIL;
    struct idem_decision d;

    if (!c->streaming) {
        CHECK(idem_call_decide(c->call, NULL, NULL, &d) == IDEM_OK);
        check_decided(&d);
    }
    if (!c->streaming && d.outcome == IDEM_OUTCOME_PROCEED) {
        complete(c->held, fail);
        c->held = NULL;
        if (c->ctl & CTL_DEFER)
            c->held = c->call;
        else
            complete(c->call, fail);
        c->call = NULL;
    }
    idem_call_free(c->call); /* PASS, or answered */
    c->call = NULL;
    http_head_reset(&c->rd.head);
}

/* conn_parse(): feed the stream in pieces; pause after each request,
 * dispatch it, resume. A refusal, an error or Connection: close ends it. */
static void parse(struct client *c, const uint8_t *data, size_t size)
{
    size_t piece = c->ctl & CTL_PIECE, off = 0, n, used;
    enum llhttp_errno err;

    while (off < size) {
        n = piece && piece < size - off ? piece : size - off;
        err = http_reader_execute(&c->rd, (const char *)data + off, n, &used);
        CHECK(used <= n);
        off += used;
        check_head(&c->rd.head);
        if (c->refused || (err != HPE_OK && err != HPE_PAUSED))
            return; /* 400, 413 or 431, then close */
        if (err == HPE_OK)
            continue;
        dispatch(c);
        if (c->close_after)
            return;
        llhttp_resume(&c->rd.parser);
    }
}

static void cleanup(void)
{
    idem_engine_free(engine);
    idem_store_free(store);
}

static void setup(void)
{
    struct idem_store_memory_opts so = { .max_memory = MAX_MEMORY };
    static const char *const scope[] = { "Authorization", "X-Fuzz-Input" };
    struct idem_engine_opts eo = {
        .scope_headers = scope,
        .nscope_headers = 2,
        .lifetime_ms = 1000,
    };

    CHECK(idem_store_memory_new(&so, &store) == IDEM_OK);
    eo.store = store;
    CHECK(idem_engine_new(&eo, &engine) == IDEM_OK);
    atexit(cleanup);
}

/* Nothing is left in flight; memory stays within its bound. */
static void check_idle(void)
{
    struct idem_engine_stats es;
    struct idem_store_stats ss;

    idem_engine_stats(engine, &es);
    idem_store_stats(store, &ss);
    CHECK(es.in_flight == 0 && es.waiting == 0);
    CHECK(ss.in_flight == 0 && ss.lock_entries == 0);
    CHECK(ss.bytes <= MAX_MEMORY);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct client c;

    if (size == 0)
        return 0;
    if (!engine)
        setup();
    input_no++;
    memset(&c, 0, sizeof(c));
    c.ctl = data[0];
    http_reader_init(&c.rd, &request_settings, MAX_HEAD, MAX_FIELDS, &c);
    parse(&c, data + 1, size - 1);
    idem_call_free(c.call); /* a request cut short */
    complete(c.held, c.ctl & CTL_FAIL);
    http_reader_deinit(&c.rd);
    idem_engine_tick(engine);
    check_idle();
    return 0;
}
