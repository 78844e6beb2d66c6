/* A client connection: parse a request with llhttp, ask the engine, then
 * forward it upstream, replay a stored response, or refuse. One request
 * at a time: the parser pauses after each, so pipelined requests wait in
 * the input buffer and their answers leave in order. */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "target.h"

static void conn_free(struct conn *c);
static void conn_parse(struct conn *c);
static void set_client_timeout(struct conn *c, bool on);

static struct conn *conn_of(llhttp_t *p)
{
    return http_reader_of(p)->data;
}

/* -- Logging ---------------------------------------------------------- */

void conn_log_request(struct conn *c, const char *outcome, unsigned status)
{
    struct log_decision d = {
        .client = c->client,
        .method = c->rd.head.bytes + c->rd.head.method_off,
        .method_len = c->rd.head.method_len,
        .target = c->rd.head.bytes + c->rd.head.target_off,
        .target_len = c->rd.head.target_len,
        .outcome = outcome,
        .status = status,
        .upstream_us = c->t_upstream_us ? (int64_t)c->t_upstream_us : -1,
        .total_us = proxy_now_us() - c->t_start_us,
    };
    size_t klen = 0;
    const char *key = http_head_get(&c->rd.head, c->w->cfg->key_header, &klen);

    d.key = key;
    d.key_len = klen;
    log_decision(&d);
}

/* -- Answers the proxy writes itself ---------------------------------- */

/* A refusal or error with problem+json; close when the request was not
 * read whole. */
void conn_refuse(struct conn *c, unsigned status, const char *detail,
                 unsigned retry_after_s, const char *outcome)
{
    if (!c->request_done)
        c->close_after = true;
    if (!c->gone && http_problem_typed(conn_out(c), status,
                                       strcmp(outcome, "unknown") == 0
                                           ? HTTP_PROBLEM_UNKNOWN
                                           : "about:blank",
                                       detail, retry_after_s, c->close_after))
        c->close_after = true; /* a cut answer: the client must see it end */
    if (status < 500 && strcmp(outcome, "error") == 0) /* 408 413 431 400 */
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_ERROR], 1);
    c->status_sent = status;
    conn_log_request(c, outcome, status);
    conn_finish_request(c);
}

static void release_call(const void *data, size_t len, void *extra)
{
    (void)data;
    (void)len;
    idem_call_free(extra);
}

/* The stored response, its body referenced in place, not copied: the
 * call (which holds the record) is freed once the body has been sent. The
 * record keeps no Date: this one is written afresh. */
static void replay(struct conn *c)
{
    const struct idem_response *r = &c->decision.replay;
    struct evbuffer *o = conn_out(c);
    bool ok = http_status_line(o, r->status) == 0 && http_date_line(o) == 0;
    size_t i;

    for (i = 0; ok && i < r->nheaders; i++)
        ok = evbuffer_add_printf(
                 o, "%.*s: %.*s\r\n", (int)r->headers[i].name_len,
                 r->headers[i].name, (int)r->headers[i].value_len,
                 r->headers[i].value) >= 0;
    ok =
        ok &&
        evbuffer_add_printf(
            o,
            "Idempotent-Replayed: true\r\n%s"
            "Content-Length: %zu\r\n%s\r\n",
            c->decision.body_omitted ? "Idempotent-Body-Omitted: true\r\n" : "",
            r->body_len, c->close_after ? "Connection: close\r\n" : "") >= 0;
    if (ok && r->body_len)
        ok = evbuffer_add_reference(o, r->body, r->body_len, release_call,
                                    c->call) == 0;
    if (ok && r->body_len)
        c->call = NULL; /* the output buffer owns it now */
    if (!ok)
        c->close_after = true; /* a cut answer: the client must see it end */
    c->status_sent = r->status;
    conn_log_request(c, "replay", r->status);
    conn_finish_request(c);
}

static void on_renewed(int rc, bool stored, void *ud)
{
    (void)stored;
    (void)ud;
    if (rc == IDEM_ESTALE)
        log_msg(LOG_WARN, "the lease of a running request was lost");
}

/* Keep a proceeding request's lease while the upstream works: renew it
 * every half lease, so a slow request never runs twice. */
static void on_renew(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    if (c->call)
        idem_call_renew(c->call, on_renewed, NULL);
}

static void start_renewal(struct conn *c)
{
    int64_t ms = c->w->cfg->lease_ms / 2;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    if (!c->renew &&
        !(c->renew = event_new(c->w->base, -1, EV_PERSIST, on_renew, c)))
        return; /* the lease alone bounds it, as without renewal */
    event_add(c->renew, &tv);
}

/* The store is down and --store-failure is open: forward the request as
 * if no key came, counted, and said in the log at most once a second a
 * worker. */
static void bypass(struct conn *c)
{
    uint64_t now = proxy_now_us();

    atomic_fetch_add(&metrics.store_bypass, 1);
    if (now - c->w->bypass_logged_us >= 1000000) {
        c->w->bypass_logged_us = now;
        log_msg(LOG_WARN, "the idempotency store is unavailable: "
                          "forwarding without the guarantee "
                          "(--store-failure open)");
    }
    c->decision.outcome = IDEM_OUTCOME_PASS;
}

/* Act on the engine's decision. */
static void act(struct conn *c)
{
    const struct idem_decision *d = &c->decision;

    if (d->outcome == IDEM_OUTCOME_UNAVAILABLE &&
        c->w->cfg->store_failure == STORE_FAIL_OPEN)
        bypass(c);
    switch (d->outcome) {
    case IDEM_OUTCOME_PROCEED:
        start_renewal(c);
        /* fall through */
    case IDEM_OUTCOME_PASS:
        c->state = CS_UPSTREAM;
        set_client_timeout(c, false); /* the upstream deadline rules now */
        if (upstream_forward(c) != 0)
            conn_upstream_failed(c, 502, false); /* nothing was sent */
        return;
    case IDEM_OUTCOME_REPLAY:
        replay(c);
        return;
    default:
        conn_refuse(c, d->status ? d->status : 503, d->detail, d->retry_after_s,
                    idem_outcome_name(d->outcome));
    }
}

/* -- Deciding ----------------------------------------------------------- */

static void on_decided(struct idem_call *call, const struct idem_decision *d,
                       void *ud)
{
    struct conn *c = ud;

    (void)call;
    c->decision = *d;
    worker_wake_conn(c->w, c);
}

void conn_woken(struct conn *c)
{
    if (c->gone) {
        conn_free(c);
        return;
    }
    act(c);
}

/* The whole request is in: decide, then act (later, if it must wait). */
static void dispatch(struct conn *c)
{
    int rc;

    if (c->streaming) { /* forwarded already: end the body, await */
        if (c->up && (c->rd.parser.flags & F_CHUNKED))
            evbuffer_add(bufferevent_get_output(c->up->bev), "0\r\n\r\n", 5);
        if (c->state == CS_BODY) {
            c->state = CS_UPSTREAM;
            set_client_timeout(c, false);
        }
        return;
    }
    if (c->decision.outcome != IDEM_OUTCOME_PENDING) {
        act(c);
        return;
    }
    rc = idem_call_decide(c->call, on_decided, c, &c->decision);
    if (rc == IDEM_EINPROGRESS) {
        c->state = CS_DECIDING;
        return;
    }
    if (rc != IDEM_OK) {
        conn_refuse(c, 503, "the idempotency engine failed", 0, "unavailable");
        return;
    }
    act(c);
}

/* -- Parsing the request ---------------------------------------------- */

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = conn_of(p);

    c->t_start_us = proxy_now_us();
    c->t_upstream_us = 0;
    c->request_done = false; /* close_or_linger reads the last one's */
    return 0;
}

/* Whether the path of target (an origin-form judged unambiguous by
 * http_reader_judge), percent-decoded, starts with one of the routes that
 * require a key; *route gets the matched prefix. */
static bool route_of(const struct config *cfg, const char *target, size_t len,
                     const char **route, size_t *route_len)
{
    const char *query = memchr(target, '?', len);
    size_t i, n;

    if (query)
        len = (size_t)(query - target);
    for (i = 0; i < cfg->nrequire_key; i++) {
        n = strlen(cfg->require_key[i]);
        if (target_has_prefix(target, len, cfg->require_key[i], n)) {
            *route = cfg->require_key[i];
            *route_len = n;
            return true;
        }
    }
    return false;
}

/* Ask the engine about the judged head: PASS, INVALID or PENDING. Its
 * target is the origin-form the upstream gets, so an absolute-form and
 * the same request in origin-form share a fingerprint. */
static int start_call(struct conn *c)
{
    struct http_head *h = &c->rd.head;
    struct idem_request req = {
        .method = h->bytes + h->method_off,
        .method_len = h->method_len,
        .target = h->bytes + h->origin_off,
        .target_len = h->origin_len,
        .headers = http_head_views(h),
        .nheaders = h->nfields,
    };

    req.key_required = route_of(c->w->cfg, req.target, req.target_len,
                                &req.route, &req.route_len);
    if ((!req.headers && h->nfields) ||
        idem_call_new(c->w->engine, &c->call) != IDEM_OK)
        return -1;
    return idem_call_start(c->call, &req, &c->decision) == IDEM_OK ? 0 : -1;
}

/* Refuse once llhttp has returned: never from inside its callbacks. */
static int defer_refusal(struct conn *c, unsigned status, const char *detail,
                         const char *outcome)
{
    c->refusal = status;
    c->refusal_detail = detail;
    c->refusal_outcome = outcome;
    return HPE_PAUSED;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    const struct config *cfg = c->w->cfg;
    const char *expect, *why = NULL;
    unsigned status = http_reader_judge(&c->rd, &why);
    size_t len;

    c->close_after = c->close_after || !llhttp_should_keep_alive(p);
    if (status)
        return defer_refusal(c, status, why, "error");
    expect = http_head_get(&c->rd.head, "Expect", &len); /* judged: moved */
    if (start_call(c) != 0)
        return defer_refusal(c, 503, "out of memory", "error");
    if (c->decision.outcome == IDEM_OUTCOME_INVALID)
        return defer_refusal(c, 400, c->decision.detail, "invalid");
    /* a request the engine does not cover streams: its body goes
     * upstream as it arrives, unbuffered and unbounded */
    c->streaming = c->decision.outcome == IDEM_OUTCOME_PASS;
    if (!c->streaming && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > cfg->max_body)
        return defer_refusal(c, 413, "the request body is too large", "error");
    c->state = CS_BODY;
    if (expect && idem_header_list_has(expect, len, "100-continue", 12) &&
        p->http_minor >= 1)
        evbuffer_add_printf(conn_out(c), "HTTP/1.1 100 Continue\r\n\r\n");
    return c->streaming ? HPE_PAUSED : 0; /* conn_parse forwards the head */
}

/* A streamed body's next piece, chunked again if it came chunked. While
 * the upstream is slower than the client, the client waits: reading stops
 * past UPSTREAM_HIGH bytes queued (upstream.c resumes it). */
static void stream_body(struct conn *c, const char *at, size_t len)
{
    struct evbuffer *o;

    if (!c->up || len == 0)
        return; /* the upstream failed: the rest is read and dropped */
    o = bufferevent_get_output(c->up->bev);
    if (c->rd.parser.flags & F_CHUNKED)
        evbuffer_add_printf(o, "%zx\r\n", len);
    evbuffer_add(o, at, len);
    if (c->rd.parser.flags & F_CHUNKED)
        evbuffer_add(o, "\r\n", 2);
    if (evbuffer_get_length(o) > UPSTREAM_HIGH && c->bev) {
        bufferevent_disable(c->bev, EV_READ);
        c->read_paused = true;
    }
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of(p);

    if (c->streaming) {
        stream_body(c, at, len);
        return 0;
    }
    if (len > c->w->cfg->max_body - evbuffer_get_length(c->body))
        return defer_refusal(c, 413, "the request body is too large", "error");
    if (evbuffer_add(c->body, at, len) != 0 ||
        (c->decision.outcome == IDEM_OUTCOME_PENDING &&
         idem_call_body(c->call, at, len) != IDEM_OK))
        return defer_refusal(c, 503, "out of memory", "error");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);

    c->request_done = true;
    return HPE_PAUSED; /* one request at a time */
}

static const llhttp_settings_t request_settings = {
    HTTP_READER_CALLBACKS,
    .on_message_begin = on_message_begin,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* A malformed request: 400 (431 for a head over the limits, 503 when
 * the proxy ran out of memory reading it), close. */
static void parse_error(struct conn *c, enum llhttp_errno err)
{
    c->close_after = true;
    if (err == HPE_USER && c->rd.oom)
        conn_refuse(c, 503, "out of memory", 0, "error");
    else if (err == HPE_USER && c->rd.head.full)
        conn_refuse(c, 431, "the request head is too large", 0, "error");
    else
        conn_refuse(c, 400, "the request is not valid HTTP/1.1", 0, "error");
}

/* The head of a streamed request goes upstream now; its body follows as
 * the parser delivers it. Never retried: the body is not kept. */
static void start_stream(struct conn *c)
{
    c->retried = true;
    if (upstream_forward(c) != 0) {
        conn_refuse(c, 502, "the upstream could not be reached", 0, "error");
        return;
    }
    llhttp_resume(&c->rd.parser);
    c->kick = true;
}

/* Feed buffered input to the parser while the connection reads requests:
 * each whole request is dispatched; one answered at once lets the loop
 * go on to the next pipelined one. Frees the connection if it died. */
static void conn_parse(struct conn *c)
{
    static char nothing[1];
    struct evbuffer_iovec v;
    enum llhttp_errno err;
    size_t used;

    c->parsing = true;
    while (!c->dead && (c->state == CS_HEAD || c->state == CS_BODY)) {
        if (evbuffer_peek(bufferevent_get_input(c->bev), -1, NULL, &v, 1) <=
            0) {
            if (!c->kick)
                break;
            /* a resumed parser finishes a bodyless request on no input */
            v.iov_base = nothing;
            v.iov_len = 0;
        }
        c->kick = false;
        err = http_reader_execute(&c->rd, v.iov_base, v.iov_len, &used);
        evbuffer_drain(bufferevent_get_input(c->bev), used);
        if (c->refusal)
            conn_refuse(c, c->refusal, c->refusal_detail, 0,
                        c->refusal_outcome);
        else if (err == HPE_PAUSED && c->streaming && !c->up &&
                 !c->request_done)
            start_stream(c);
        else if (err == HPE_PAUSED)
            dispatch(c);
        else if (err != HPE_OK)
            parse_error(c, err);
    }
    c->parsing = false;
    if (c->dead)
        conn_free(c);
}

/* -- The connection's life ---------------------------------------------- */

static void set_client_timeout(struct conn *c, bool on)
{
    struct timeval tv = { c->w->cfg->client_timeout_ms / 1000,
                          (c->w->cfg->client_timeout_ms % 1000) * 1000 };

    /* writes always have a deadline: a client that stops reading its
     * response is dropped, not buffered for */
    if (c->bev)
        bufferevent_set_timeouts(c->bev, on ? &tv : NULL, &tv);
}

/* The upstream waits for the client to read (pause) or may go on. The
 * upstream deadline is an idle one once the response flows: it runs only
 * while the proxy waits for the upstream, not for the client. */
void conn_arm_deadline(struct conn *c)
{
    int64_t ms = c->w->cfg->upstream_timeout_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    evtimer_add(c->timer, &tv);
}

void conn_pause_upstream(struct conn *c, bool pause)
{
    c->up_paused = pause && c->up;
    if (!c->up)
        return;
    if (pause) {
        bufferevent_disable(c->up->bev, EV_READ);
        evtimer_del(c->timer);
    } else {
        bufferevent_enable(c->up->bev, EV_READ);
        conn_arm_deadline(c);
    }
}

/* Free c now, or when the conn_parse running for it returns. */
static void conn_kill(struct conn *c)
{
    if (c->parsing)
        c->dead = true;
    else
        conn_free(c);
}

/* The last response is out. A client whose request was not read whole
 * may still be sending: stop writing, read and drop the rest for a
 * while, then close. Otherwise close now. */
static void close_or_linger(struct conn *c)
{
    struct timeval idle = { LINGER_IDLE_S, 0 };

    if (c->request_done || !c->bev) {
        conn_kill(c);
        return;
    }
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    c->state = CS_LINGER;
    c->lingered = 0;
    bufferevent_set_timeouts(c->bev, &idle, NULL);
    bufferevent_enable(c->bev, EV_READ);
}

/* The request is answered: reset for the next, or close. */
void conn_finish_request(struct conn *c)
{
    if (c->timer)
        evtimer_del(c->timer);
    if (c->renew)
        event_del(c->renew);
    idem_call_free(c->call); /* a PROCEED left unfinished is aborted */
    c->call = NULL;
    if (c->stored)
        evbuffer_free(c->stored);
    c->stored = NULL;
    evbuffer_drain(c->body, evbuffer_get_length(c->body));
    http_head_reset(&c->rd.head);
    memset(&c->decision, 0, sizeof(c->decision));
    c->chunked_out = c->responded = false; /* request_done: next begin */
    c->stored_over = c->store_failed = c->retried = c->streaming = false;
    if (c->read_paused && c->bev)
        bufferevent_enable(c->bev, EV_READ);
    c->read_paused = false;
    c->up_paused = false;
    c->refusal = 0;
    c->status_sent = 0;
    if (c->gone) {
        conn_kill(c);
        return;
    }
    if (c->close_after || c->w->stopping) {
        c->state = CS_DRAINING;
        bufferevent_disable(c->bev, EV_READ);
        if (evbuffer_get_length(conn_out(c)) == 0)
            close_or_linger(c);
        return;
    }
    c->state = CS_HEAD;
    set_client_timeout(c, true);
    llhttp_resume(&c->rd.parser);
    if (!c->parsing)
        conn_parse(c);
}

/* How much a client may send ahead of the request being answered. */
static size_t input_bound(const struct config *cfg)
{
    return cfg->max_header_bytes + cfg->max_body + 65536;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (c->state == CS_LINGER) {
        c->lingered += evbuffer_get_length(in);
        evbuffer_drain(in, evbuffer_get_length(in));
        if (c->lingered > LINGER_MAX)
            conn_free(c);
        return;
    }
    if (c->state == CS_HEAD || c->state == CS_BODY) {
        conn_parse(c);
        return;
    }
    /* a request is in flight: what follows waits, up to a bound, until
     * finish_request reads on. (Not a read high-watermark: libevent
     * crashes setting one when out of memory.) */
    if (evbuffer_get_length(in) > input_bound(c->w->cfg)) {
        bufferevent_disable(bev, EV_READ);
        c->read_paused = true;
    }
}

/* A client answered 504 while its request still runs (wait_late) is
 * let go once the answer is out; the connection lives on for the late
 * response. */
static void drop_client(struct conn *c)
{
    if (c->bev)
        bufferevent_free(c->bev);
    c->bev = NULL;
}

/* The output drained to UPSTREAM_LOW (the write low watermark) or
 * further. */
static void on_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    size_t left = evbuffer_get_length(bufferevent_get_output(bev));

    if (c->late) {
        if (left == 0)
            drop_client(c);
        return;
    }
    if (c->up_paused)
        conn_pause_upstream(c, false);
    if (c->state == CS_DRAINING && left == 0)
        close_or_linger(c);
}

/* The client left (or timed out) while its request is elsewhere. */
static void client_gone(struct conn *c)
{
    atomic_fetch_add(&metrics.results[METRICS_CLIENT_GONE], 1);
    if (c->up_paused)
        conn_pause_upstream(c, false); /* read on, for the store */
    c->gone = true;
    bufferevent_free(c->bev);
    c->bev = NULL;
    if (c->state == CS_DECIDING && idem_call_cancel(c->call) == IDEM_OK)
        conn_free(c);
    /* otherwise the upstream's response, or the wake, finishes it */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    bool idle = c->state == CS_HEAD && c->rd.head.len == 0;

    (void)bev;
    if (c->late) {
        drop_client(c);
        return;
    }
    if (c->state == CS_UPSTREAM || c->state == CS_DECIDING) {
        client_gone(c);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && !idle &&
        c->state != CS_DRAINING && c->state != CS_LINGER) {
        c->close_after = true;
        bufferevent_enable(c->bev, EV_WRITE);
        http_problem(conn_out(c), 408, "the request did not arrive in time", 0,
                     true);
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_ERROR], 1);
        c->state = CS_DRAINING;
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    conn_free(c);
}

/* A request that proceeded got no answer in time: the client gets its
 * 504 now, but the request may be running, so the exchange stays open
 * (the lease renewed) for up to one more lease, and a late response is
 * stored as any other. Retries meanwhile get 409 (or wait). */
static void wait_late(struct conn *c)
{
    int64_t ms = c->w->cfg->lease_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    atomic_fetch_add(&metrics.results[METRICS_UPSTREAM_TIMEOUT], 1);
    c->late = true;
    if (!c->gone) {
        c->close_after = true;
        if (http_problem(conn_out(c), 504,
                         "the upstream did not answer in time; the request "
                         "may still complete, and a retry with the same "
                         "key will get its response",
                         0, true) == 0 &&
            evbuffer_get_length(conn_out(c)) > 0)
            bufferevent_disable(c->bev, EV_READ);
        else
            drop_client(c);
        c->status_sent = 504;
        conn_log_request(c, "error", 504);
        c->gone = true;
    }
    evtimer_add(c->timer, &tv);
}

static void on_upstream_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct upstream *u = c->up;

    (void)fd;
    (void)what;
    if (!u)
        return;
    if (c->decision.outcome == IDEM_OUTCOME_PROCEED && !c->late &&
        !c->responded && c->w->cfg->unknown_outcome == IDEM_UNKNOWN_HOLD) {
        wait_late(c);
        return;
    }
    u->conn = NULL;
    upstream_release(u, false);
    conn_upstream_failed(c, 504, true); /* it may have run */
}

void conn_accept(struct worker *w, evutil_socket_t fd,
                 const struct sockaddr *sa, int salen)
{
    const struct config *cfg = w->cfg;
    struct conn *c = calloc(1, sizeof(*c));
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *a =
        sa->sa_family == AF_INET6
            ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
            : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    unsigned port = ntohs(((const struct sockaddr_in *)sa)->sin_port);

    (void)salen;
    if (!c || !(c->body = evbuffer_new()) ||
        !(c->timer = evtimer_new(w->base, on_upstream_deadline, c)) ||
        !(c->bev = proxy_bev_new(w->base, fd))) {
        if (c && c->body)
            evbuffer_free(c->body);
        if (c && c->timer)
            event_free(c->timer);
        free(c);
        evutil_closesocket(fd);
        return;
    }
    inet_ntop(sa->sa_family, a, ip, sizeof(ip));
    snprintf(c->client, sizeof(c->client), "%s:%u", ip, port);
    c->w = w;
    http_reader_init(&c->rd, &request_settings, cfg->max_header_bytes,
                     cfg->max_headers, c);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, UPSTREAM_LOW, 0);
    set_client_timeout(c, true);
    LIST_INSERT_HEAD(&w->conns, c, link);
    w->nconns++;
    atomic_fetch_add(&metrics.connections_accepted, 1);
    atomic_fetch_add(&metrics.connections_open, 1);
    if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) != 0)
        conn_free(c); /* it could never read (event_add allocates) */
}

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;

    if (c->up) {
        c->up->conn = NULL;
        upstream_release(c->up, false);
    }
    if (c->bev)
        bufferevent_free(c->bev);
    idem_call_free(c->call);
    event_free(c->timer);
    if (c->renew)
        event_free(c->renew);
    evbuffer_free(c->body);
    if (c->stored)
        evbuffer_free(c->stored);
    http_reader_deinit(&c->rd);
    LIST_REMOVE(c, link);
    w->nconns--;
    atomic_fetch_sub(&metrics.connections_open, 1);
    free(c);
    if (w->stopping && w->nconns == 0)
        loop_exit(w->base);
}

void conn_close_idle(struct worker *w)
{
    struct conn *c, *next;

    for (c = LIST_FIRST(&w->conns); c; c = next) {
        next = LIST_NEXT(c, link);
        if (c->state == CS_HEAD && c->rd.head.len == 0)
            conn_free(c);
        else
            c->close_after = true;
    }
}

void conn_discard(struct conn *c)
{
    conn_free(c);
}

void conn_upstream_drained(struct conn *c)
{
    if (c->read_paused && c->bev) {
        c->read_paused = false;
        bufferevent_enable(c->bev, EV_READ);
    }
}
