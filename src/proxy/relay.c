/* The upstream's response, relayed to the client as it comes (chunked
 * for an HTTP/1.1 client when the upstream gave no length) and, for a
 * request that proceeded, kept for the engine to store. */
#include <event2/buffer.h>

#include "log.h"
#include "metrics.h"
#include "proxy.h"

/* Whether an upstream response header goes to the client. */
static bool relay_header(const struct http_head *h, const struct http_field *f)
{
    const char *name = h->bytes + f->name_off;

    return !http_hop_by_hop(h, f) &&
           !idem_header_name_is(name, f->name_len, "Content-Length") &&
           !idem_header_name_is(name, f->name_len, "Idempotency-Policy");
}

/* The status line and the fields of u's head that go to the client, with
 * a Date when the upstream sent none (RFC 9110 6.6.1: a proxy adds one).
 * false: out of memory. */
static bool put_head(struct evbuffer *o, const struct upstream *u)
{
    const struct http_head *h = &u->head;
    bool ok = http_status_line(o, u->parser.status_code) == 0;
    size_t len;
    unsigned i;

    for (i = 0; ok && i < h->nfields; i++)
        if (relay_header(h, &h->fields[i]))
            ok = http_add_field(o, h, &h->fields[i]) == 0;
    if (ok && !http_head_get(h, "Date", &len))
        ok = http_date_line(o) == 0;
    return ok;
}

/* The response's head to the client: 0, or -1 out of memory. */
static int relay_head(struct conn *c, const struct upstream *u, bool sized)
{
    struct evbuffer *o = conn_out(c);
    bool ok = put_head(o, u);

    if (ok && sized)
        ok = evbuffer_add_printf(
                 o, "Content-Length: %llu\r\n",
                 (unsigned long long)u->parser.content_length) >= 0;
    if (ok && c->chunked_out)
        ok = evbuffer_add_printf(o, "Transfer-Encoding: chunked\r\n") >= 0;
    ok = ok && evbuffer_add_printf(o, "%s\r\n",
                                   c->close_after ? "Connection: close\r\n"
                                                  : "") >= 0;
    return ok ? 0 : -1;
}

void conn_upstream_interim(struct conn *c, struct upstream *u)
{
    /* 100 answered an Expect the proxy handled itself; an HTTP/1.0 client
     * cannot read interim responses */
    if (u->parser.status_code != 103 || c->gone || c->responded ||
        c->rd.parser.http_minor < 1)
        return;
    if (!put_head(conn_out(c), u) || evbuffer_add(conn_out(c), "\r\n", 2) != 0)
        c->close_after = true; /* a cut answer: the client must see it end */
}

void conn_upstream_head(struct conn *c, struct upstream *u)
{
    unsigned status = u->parser.status_code;
    bool sized = (u->parser.flags & F_CONTENT_LENGTH) != 0;
    bool no_body = u->head_only || status == 204 || status == 304;

    c->status_sent = status;
    c->responded = true;
    if (c->decision.outcome == IDEM_OUTCOME_PROCEED) {
        c->stored = evbuffer_new();
        c->store_failed = !c->stored;
    }
    if (c->gone)
        return; /* the response is still read, for the store */
    /* a HEAD keeps its length; an HTTP/1.0 client gets a body that ends
     * with the connection instead of chunks it cannot read */
    c->chunked_out = !sized && !no_body && c->rd.parser.http_minor >= 1;
    if (!sized && !no_body && !c->chunked_out)
        c->close_after = true;
    if (relay_head(c, u, sized) != 0)
        c->close_after = true; /* a cut answer: the client must see it end */
}

void conn_upstream_body(struct conn *c, const char *at, size_t len)
{
    size_t keep;

    if (c->stored && !c->stored_over && !c->store_failed) {
        /* one byte past the limit tells the engine the body was cut */
        keep = c->w->cfg->max_stored_body + 1 - evbuffer_get_length(c->stored);
        if (len < keep)
            keep = len;
        c->store_failed = evbuffer_add(c->stored, at, keep) != 0;
        c->stored_over = keep < len;
    }
    if (c->gone || len == 0)
        return;
    if ((c->chunked_out &&
         evbuffer_add_printf(conn_out(c), "%zx\r\n", len) < 0) ||
        evbuffer_add(conn_out(c), at, len) != 0 ||
        (c->chunked_out && evbuffer_add(conn_out(c), "\r\n", 2) != 0))
        c->close_after = true; /* a cut answer: the client must see it end */
    if (evbuffer_get_length(conn_out(c)) > UPSTREAM_HIGH)
        conn_pause_upstream(c, true); /* on_write resumes it */
    else
        conn_arm_deadline(c);
}

static void on_completed(int rc, bool stored, void *ud)
{
    (void)stored;
    (void)ud;
    if (rc != IDEM_OK && rc != IDEM_ESTALE)
        log_msg(LOG_WARN, "could not store a response: %s", idem_strerror(rc));
}

/* Complete the engine's call with the response just relayed. An
 * asynchronous store answers later, when the call may be gone. */
static void complete_call(struct conn *c, struct upstream *u)
{
    struct idem_response resp = {
        .status = c->status_sent,
        .headers = http_head_views(&u->head),
        .nheaders = u->head.nfields,
        .body_len = c->stored ? evbuffer_get_length(c->stored) : 0,
    };

    resp.body = resp.body_len ? evbuffer_pullup(c->stored, -1) : NULL;
    if (c->store_failed || (!resp.headers && resp.nheaders) ||
        (!resp.body && resp.body_len)) {
        /* a record missing part of what was sent would replay a lie; the
         * request ran, so its key is never simply released */
        log_msg(LOG_WARN, "out of memory keeping a response: not stored, "
                          "its outcome is unknown");
        idem_call_unknown(c->call, NULL, NULL);
        return;
    }
    idem_call_complete(c->call, &resp, on_completed, NULL);
}

void conn_upstream_done(struct conn *c, struct upstream *u)
{
    uint64_t us = proxy_now_us() - c->t_start_us;

    if (!c->request_done)
        c->close_after = true; /* answered before the body ended */
    c->t_upstream_us = us;
    metrics_observe_upstream(us);
    if (c->chunked_out && !c->gone)
        evbuffer_add(conn_out(c), "0\r\n\r\n", 5);
    if (c->decision.outcome == IDEM_OUTCOME_PROCEED)
        complete_call(c, u);
    upstream_release(u, u->keep_alive);
    c->up = NULL;
    conn_log_request(c, idem_outcome_name(c->decision.outcome), c->status_sent);
    conn_finish_request(c);
}

/* The detail a client gets for a failed exchange. */
static const char *failure_detail(const struct conn *c, unsigned status,
                                  bool maybe_run)
{
    if (status == 504)
        return "the upstream did not answer in time";
    if (maybe_run && c->decision.outcome == IDEM_OUTCOME_PROCEED &&
        c->w->cfg->unknown_outcome == IDEM_UNKNOWN_HOLD)
        return "the upstream failed after the request was sent: it may have "
               "executed, so its idempotency key is held (outcome unknown)";
    return "the upstream could not be reached";
}

void conn_upstream_failed(struct conn *c, unsigned status, bool maybe_run)
{
    c->up = NULL;
    if (!c->late) /* a late wait's end was counted at its 504 */
        atomic_fetch_add(
            &metrics.results[status == 504 ? METRICS_UPSTREAM_TIMEOUT
                                           : METRICS_UPSTREAM_ERROR],
            1);
    /* released only when the request provably did not reach the upstream;
     * otherwise the unknown-outcome policy decides */
    if (c->decision.outcome == IDEM_OUTCOME_PROCEED && maybe_run)
        idem_call_unknown(c->call, NULL, NULL);
    else if (c->decision.outcome == IDEM_OUTCOME_PROCEED)
        idem_call_abort(c->call, NULL, NULL);
    if (c->responded || c->late) {
        /* a response is half sent, or the client had its 504: all it can
         * learn now is a cut */
        c->close_after = true;
        c->gone = true;
        conn_log_request(c, "error", status);
        conn_finish_request(c);
        return;
    }
    conn_refuse(c, status, failure_detail(c, status, maybe_run), 0, "error");
}
