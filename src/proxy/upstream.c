/* Upstream connections: each worker keeps a bounded pool of idle
 * keep-alive connections; a request takes the most recently used one or
 * opens a new one, writes the request, and parses the response with
 * llhttp, handing head and body to its client connection as they come. */
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "proxy.h"

static struct upstream *up_of(llhttp_t *p)
{
    return p->data;
}

static void upstream_free(struct upstream *u)
{
    if (u->pooled) {
        TAILQ_REMOVE(&u->w->idle, u, link);
        u->w->nidle--;
    }
    bufferevent_free(u->bev);
    http_head_deinit(&u->head);
    free(u);
}

/* -- Parsing the response --------------------------------------------- */

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    return http_head_field(&up_of(p)->head, at, len) == 0 ? 0 : HPE_USER;
}

static int on_value(llhttp_t *p, const char *at, size_t len)
{
    return http_head_value(&up_of(p)->head, at, len) == 0 ? 0 : HPE_USER;
}

static int on_headers_complete(llhttp_t *p)
{
    struct upstream *u = up_of(p);

    if (p->status_code < 200) { /* interim: 103 is relayed, never stored */
        if (u->conn)
            conn_upstream_interim(u->conn, u);
        return 0;
    }
    if (u->conn)
        conn_upstream_head(u->conn, u);
    return u->head_only ? 1 : 0; /* 1: a HEAD response has no body */
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = up_of(p);

    if (u->conn)
        conn_upstream_body(u->conn, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct upstream *u = up_of(p);

    if (p->status_code < 200) {
        http_head_reset(&u->head);
        return 0; /* the final response follows */
    }
    u->keep_alive = llhttp_should_keep_alive(p);
    u->done = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t response_settings = {
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* -- Events ----------------------------------------------------------- */

/* Whether a byte of the request may have reached the upstream: the
 * connection was made and the request's bytes began to leave. */
static bool maybe_sent(struct upstream *u)
{
    return u->connected &&
           evbuffer_get_length(bufferevent_get_output(u->bev)) < u->queued;
}

/* The request on u failed: tell its connection whether the request may
 * have run (maybe_run), drop u. */
static void fail(struct upstream *u, unsigned status, bool maybe_run)
{
    struct conn *c = u->conn;

    u->conn = NULL;
    upstream_free(u);
    if (c)
        conn_upstream_failed(c, status, maybe_run);
}

/* The response is whole: hand over; u goes back to the pool or away. */
static void done(struct upstream *u)
{
    struct conn *c = u->conn;

    if (evbuffer_get_length(bufferevent_get_input(u->bev)) != 0)
        u->keep_alive = false; /* bytes after the response: not reusable */
    if (c)
        conn_upstream_done(c, u);
    else
        upstream_release(u, false);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct upstream *u = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v;
    enum llhttp_errno err;

    if (!u->conn) { /* an idle connection does not speak first */
        upstream_free(u);
        return;
    }
    while (evbuffer_peek(in, -1, NULL, &v, 1) > 0) {
        u->got_bytes = true;
        err = llhttp_execute(&u->parser, v.iov_base, v.iov_len);
        evbuffer_drain(in, err == HPE_OK
                               ? v.iov_len
                               : (size_t)(llhttp_get_error_pos(&u->parser) -
                                          (const char *)v.iov_base));
        if (err == HPE_PAUSED && u->done) {
            done(u);
            return;
        }
        if (err != HPE_OK) {
            log_msg(LOG_WARN, "bad response from the upstream: %s",
                    llhttp_errno_name(err));
            fail(u, 502, true);
            return;
        }
    }
}

/* A reused connection that closed before any answer may have been closed
 * by the upstream while idle: a safe method is sent once more on a fresh
 * connection. Anything else is never sent twice. */
static bool retry(struct upstream *u)
{
    struct conn *c = u->conn;
    const char *m = c->rd.head.bytes + c->rd.head.method_off;
    size_t n = c->rd.head.method_len;

    if (!u->reused || u->got_bytes || c->retried ||
        c->decision.outcome == IDEM_OUTCOME_PROCEED ||
        !(idem_header_name_is(m, n, "GET") ||
          idem_header_name_is(m, n, "HEAD") ||
          idem_header_name_is(m, n, "OPTIONS")))
        return false;
    c->retried = true;
    u->conn = NULL;
    upstream_free(u);
    if (upstream_forward(c) != 0)
        conn_upstream_failed(c, 502, false);
    return true;
}

/* The output drained to UPSTREAM_LOW: a paused client may send more. */
static void on_write(struct bufferevent *bev, void *arg)
{
    struct upstream *u = arg;

    (void)bev;
    if (u->conn)
        conn_upstream_drained(u->conn);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct upstream *u = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        u->connected = true;
        bufferevent_set_timeouts(u->bev, NULL, NULL);
        atomic_fetch_add(&metrics.upstream_connects, 1);
        return;
    }
    if (!u->conn) {
        upstream_free(u);
        return;
    }
    if ((what & BEV_EVENT_EOF) && u->got_bytes &&
        llhttp_finish(&u->parser) != HPE_INVALID_EOF_STATE && u->done) {
        u->keep_alive = false; /* the body ended with the connection */
        done(u);
        return;
    }
    if (!retry(u))
        fail(u, 502, u->got_bytes || maybe_sent(u));
}

/* -- The pool --------------------------------------------------------- */

static struct upstream *upstream_new(struct worker *w)
{
    struct upstream *u = calloc(1, sizeof(*u));
    int64_t ms = w->cfg->connect_timeout_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    if (!u)
        return NULL;
    u->w = w;
    u->bev = proxy_bev_new(w->base, -1);
    if (!u->bev) {
        free(u);
        return NULL;
    }
    http_head_init(&u->head, RESPONSE_HEAD_MAX, RESPONSE_FIELDS_MAX);
    bufferevent_setcb(u->bev, on_read, on_write, on_event, u);
    bufferevent_setwatermark(u->bev, EV_WRITE, UPSTREAM_LOW, 0);
    bufferevent_set_timeouts(u->bev, NULL, &tv); /* the connect deadline */
    /* enabled after connect, checked: connect enables the new socket's
     * events itself, but does not say when that fails */
    if (bufferevent_socket_connect(u->bev, (struct sockaddr *)&w->upstream_addr,
                                   w->upstream_addrlen) != 0 ||
        bufferevent_enable(u->bev, EV_READ | EV_WRITE) != 0) {
        upstream_free(u);
        return NULL;
    }
    return u;
}

/* Whether a request header goes upstream: not hop-by-hop, and not one
 * the proxy writes itself (Host too, for an absolute-form: its authority
 * is the Host, RFC 9112 §3.2.2). */
static bool forward_header(const struct http_head *h,
                           const struct http_field *f)
{
    static const char *const own[] = { "Content-Length", "Expect",
                                       "X-Forwarded-For", "X-Forwarded-Proto" };
    size_t i;

    if (h->authority_len &&
        idem_header_name_is(h->bytes + f->name_off, f->name_len, "Host"))
        return false;
    for (i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (idem_header_name_is(h->bytes + f->name_off, f->name_len, own[i]))
            return false;
    return !http_hop_by_hop(h, f);
}

/* The header that frames the body as it goes upstream, if any. */
static int add_framing(struct conn *c, struct evbuffer *o)
{
    size_t body = evbuffer_get_length(c->body);
    unsigned flags = c->rd.parser.flags;

    if (c->streaming && (flags & F_CHUNKED))
        return evbuffer_add_printf(o, "Transfer-Encoding: chunked\r\n");
    if (c->streaming && (flags & F_CONTENT_LENGTH))
        return evbuffer_add_printf(
            o, "Content-Length: %llu\r\n",
            (unsigned long long)c->rd.parser.content_length);
    if (!c->streaming && (body || (flags & (F_CONTENT_LENGTH | F_CHUNKED))))
        return evbuffer_add_printf(o, "Content-Length: %zu\r\n", body);
    return 0;
}

/* Reference body from o: 0 or -1. libevent 2.1 reports success when it
 * could not allocate a reference (it only warns): check the length. */
static int add_body(struct evbuffer *o, struct evbuffer *body)
{
    size_t want = evbuffer_get_length(o) + evbuffer_get_length(body);

    return evbuffer_add_buffer_reference(o, body) == 0 &&
                   evbuffer_get_length(o) == want
               ? 0
               : -1;
}

/* Queue c's request on o: 0, or -1 out of memory (o then holds a part).
 * The target is the origin-form conn.c judged (an absolute-form's path
 * and query, its authority then the Host). */
static int write_request(struct conn *c, struct evbuffer *o)
{
    const struct http_head *h = &c->rd.head;
    const char *colon = strrchr(c->client, ':'), *xff;
    int iplen = colon ? (int)(colon - c->client) : (int)strlen(c->client);
    size_t xlen = 0;
    unsigned i;
    bool ok;

    ok = evbuffer_add_printf(o, "%.*s %.*s HTTP/1.1\r\n", (int)h->method_len,
                             h->bytes + h->method_off, (int)h->origin_len,
                             h->bytes + h->origin_off) >= 0;
    if (ok && h->authority_len)
        ok = evbuffer_add_printf(o, "Host: %.*s\r\n", (int)h->authority_len,
                                 h->bytes + h->authority_off) >= 0;
    for (i = 0; ok && i < h->nfields; i++)
        if (forward_header(h, &h->fields[i]))
            ok = http_add_field(o, h, &h->fields[i]) == 0;
    xff = http_head_get(h, "X-Forwarded-For", &xlen);
    ok = ok && evbuffer_add_printf(o,
                                   "X-Forwarded-For: %.*s%s%.*s\r\n"
                                   "X-Forwarded-Proto: http\r\n",
                                   (int)(xff ? xlen : 0), xff ? xff : "",
                                   xff ? ", " : "", iplen, c->client) >= 0;
    ok = ok && add_framing(c, o) >= 0 && evbuffer_add(o, "\r\n", 2) == 0;
    return ok && (c->streaming || add_body(o, c->body) == 0) ? 0 : -1;
}

int upstream_forward(struct conn *c)
{
    struct worker *w = c->w;
    struct upstream *u = TAILQ_FIRST(&w->idle);
    int64_t ms = w->cfg->upstream_timeout_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    if (u) {
        TAILQ_REMOVE(&w->idle, u, link);
        w->nidle--;
        u->pooled = false;
        u->reused = true;
    } else if (!(u = upstream_new(w))) {
        return -1;
    }
    u->conn = c;
    c->up = u;
    llhttp_init(&u->parser, HTTP_RESPONSE, &response_settings);
    u->parser.data = u;
    http_head_reset(&u->head);
    u->got_bytes = u->done = u->keep_alive = false;
    u->head_only = idem_header_name_is(c->rd.head.bytes + c->rd.head.method_off,
                                       c->rd.head.method_len, "HEAD");
    if (write_request(c, bufferevent_get_output(u->bev)) != 0 ||
        evtimer_add(c->timer, &tv) != 0) {
        u->conn = NULL; /* part of a request is queued: drop u */
        c->up = NULL;
        upstream_free(u);
        return -1;
    }
    u->queued = evbuffer_get_length(bufferevent_get_output(u->bev));
    return 0;
}

void upstream_release(struct upstream *u, bool reusable)
{
    struct worker *w = u->w;

    u->conn = NULL;
    if (!reusable || !u->connected || w->stopping ||
        w->nidle >= w->cfg->upstream_idle) {
        upstream_free(u);
        return;
    }
    TAILQ_INSERT_HEAD(&w->idle, u, link);
    u->pooled = true;
    w->nidle++;
}

void upstream_close_idle(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->idle))
        upstream_free(TAILQ_FIRST(&w->idle));
}
