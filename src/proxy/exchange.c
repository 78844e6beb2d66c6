/* exchange.h: the HTTP/1.1 exchange, sans-I/O. The request side parses
 * with llhttp through http_reader (limits, judging), asks the engine, and
 * queues the upstream request or an answer of the proxy's own; the
 * response side parses the upstream's bytes, relays them (chunked again
 * for an HTTP/1.1 client when the upstream gave no length) and, for a
 * request that proceeded, keeps them for the engine. */
#include "exchange.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forward.h"
#include "log.h"
#include "metrics.h"
#include "target.h"

static void parse(struct exchange *ex);
static void finish_request(struct exchange *ex);
static void upstream_failed(struct exchange *ex, unsigned status,
                            bool maybe_run);
static void start_tunnel(struct exchange *ex, const char *at, size_t n);
static void tunnel_to_client(struct exchange *ex, const char *p, size_t n);
static void tunnel_closed(struct exchange *ex);

static uint64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static struct exchange *ex_of(llhttp_t *p)
{
    return http_reader_of(p)->data;
}

static void timer(struct exchange *ex, enum ex_timer t, int64_t ms)
{
    ex->io->timer(ex, t, ms);
}

/* How much a client may send ahead of the request being answered. */
static size_t input_bound(const struct config *cfg)
{
    return cfg->max_header_bytes + cfg->max_body + 65536;
}

static bool method_is(const struct exchange *ex, const char *m)
{
    const struct http_head *h = &ex->rd.head;

    return idem_header_name_is(h->bytes + h->method_off, h->method_len, m);
}

/* Whether what the upstream sends goes to the client: not once it left,
 * nor after its 504 (a late response is for the store only). */
static bool to_client(const struct exchange *ex)
{
    return !ex->client_gone && ex->phase != EX_LATE;
}

/* -- Logging ---------------------------------------------------------- */

/* The request is answered (outcome: enum idem_outcome, or
 * METRICS_OUTCOME_ERROR when the proxy answered by itself): its duration
 * into the metrics, its line into the log. */
static void log_request(struct exchange *ex, int outcome, unsigned status)
{
    const struct http_head *h = &ex->rd.head;
    const char *bytes = h->bytes ? h->bytes : ""; /* nothing was read */
    struct log_decision d = {
        .client = ex->client,
        .method = bytes + h->method_off,
        .method_len = h->method_len,
        .target = bytes + h->target_off,
        .target_len = h->target_len,
        .protocol = ex->protocol               ? ex->protocol
                    : ex->rd.parser.http_minor ? "HTTP/1.1"
                                               : "HTTP/1.0",
        .outcome = metrics_outcome_name(outcome),
        .status = status,
        .bytes_sent = ex->client_out.added - ex->out_mark,
        .upstream = ex->up_addr[0] ? ex->up_addr : NULL,
        .upstream_us = ex->t_upstream_us ? (int64_t)ex->t_upstream_us : -1,
        .total_us = now_us() - ex->t_start_us,
    };

    metrics_observe_request(outcome, status, d.total_us);
    if (!log_enabled(LOG_INFO))
        return;
    d.key = http_head_get(h, ex->ctx->cfg->key_header, &d.key_len);
    d.user_agent = http_head_get(h, "User-Agent", &d.user_agent_len);
    d.request_id = forward_request_id(ex);
    d.request_id_len = strlen(d.request_id);
    log_decision(&d);
}

/* -- Answers the proxy writes itself ---------------------------------- */

/* A refusal or error with problem+json; close when the request was not
 * read whole. type: the problem type (HTTP_PROBLEM_UNKNOWN or NULL). */
static void refuse_typed(struct exchange *ex, unsigned status, const char *type,
                         const char *detail, unsigned retry_after_s,
                         int outcome)
{
    if (!ex->request_done)
        ex->close_after = true;
    if (!ex->client_gone &&
        http_problem_typed(&ex->client_out, status, type ? type : "about:blank",
                           detail, retry_after_s, ex->close_after) != 0)
        ex->close_after = true; /* a cut answer: the client must see it end */
    if (status < 500 && outcome == METRICS_OUTCOME_ERROR) /* 408 413 431 400 */
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_ERROR], 1);
    ex->status_sent = status;
    ex->response = EX_RESP_ANSWERED;
    log_request(ex, outcome, status);
    finish_request(ex);
}

static void refuse(struct exchange *ex, unsigned status, const char *detail,
                   int outcome)
{
    refuse_typed(ex, status, NULL, detail, 0, outcome);
}

/* The stored response. The record keeps no Date: this one is written
 * afresh. */
static void replay(struct exchange *ex)
{
    const struct idem_response *r = &ex->decision.replay;
    struct buf *o = &ex->client_out;
    bool ok = http_status_line(o, r->status) == 0 && http_date_line(o) == 0;
    size_t i;

    for (i = 0; ok && i < r->nheaders; i++)
        ok = buf_add_field(o, r->headers[i].name, r->headers[i].name_len,
                           r->headers[i].value, r->headers[i].value_len) == 0;
    ok = ok && buf_addl(o, "Idempotent-Replayed: true\r\n") == 0 &&
         (!ex->decision.body_omitted ||
          buf_addl(o, "Idempotent-Body-Omitted: true\r\n") == 0) &&
         buf_addl(o, "Content-Length: ") == 0 &&
         buf_add_u64(o, r->body_len) == 0 &&
         buf_adds(o, ex->close_after ? "\r\nConnection: close\r\n\r\n"
                                     : "\r\n\r\n") == 0 &&
         buf_add(o, r->body, r->body_len) == 0;
    if (!ok)
        ex->close_after = true; /* a cut answer: the client must see it end */
    ex->status_sent = r->status;
    ex->response = EX_RESP_ANSWERED;
    log_request(ex, IDEM_OUTCOME_REPLAY, r->status);
    finish_request(ex);
}

/* -- The lease of a request that proceeded ----------------------------- */

static void on_renewed(int rc, bool stored, void *ud)
{
    (void)stored;
    (void)ud;
    if (rc == IDEM_ESTALE)
        log_msg(LOG_WARN, "the lease of a running request was lost");
}

/* Keep a proceeding request's lease while the upstream works: renew it
 * every half lease, so a slow request never runs twice. */
static void renew(struct exchange *ex)
{
    if (ex->call)
        idem_call_renew(ex->call, on_renewed, NULL);
    timer(ex, EX_TIMER_RENEW, ex->ctx->cfg->lease_ms / 2);
}

static const llhttp_settings_t response_settings;

/* Send the request upstream (a pooled or new connection): 0 or -1
 * (nothing was sent). */
static int forward(struct exchange *ex)
{
    buf_clear(&ex->up_out);
    llhttp_init(&ex->resp.parser, HTTP_RESPONSE, &response_settings);
    ex->resp.parser.data = ex;
    http_head_reset(&ex->resp.head);
    ex->up_got_bytes = ex->up_keep_alive = false;
    ex->up_head_only = method_is(ex, "HEAD");
    if (forward_write_request(ex) != 0) {
        buf_clear(&ex->up_out);
        return -1;
    }
    ex->up_queued = buf_len(&ex->up_out);
    ex->up = EX_UP_WAITING;
    if (ex->io->upstream_open(ex) != 0) {
        ex->up = EX_UP_NONE;
        buf_clear(&ex->up_out);
        return -1;
    }
    timer(ex, EX_TIMER_UPSTREAM, ex->ctx->cfg->upstream_timeout_ms);
    return 0;
}

/* Let the upstream connection go (to the pool when reusable). */
static void release_upstream(struct exchange *ex, bool reusable)
{
    if (ex->up == EX_UP_NONE)
        return;
    ex->up = EX_UP_NONE;
    ex->up_paused = false;
    ex->io->upstream_release(ex, reusable && buf_len(&ex->up_out) == 0);
    buf_clear(&ex->up_out);
}

/* The store is down and --store-failure is open: forward the request as
 * if no key came, counted, and said in the log at most once a second a
 * worker. */
static void bypass(struct exchange *ex)
{
    uint64_t now = now_us();

    atomic_fetch_add(&metrics.store_bypass, 1);
    if (now - ex->ctx->bypass_logged_us >= 1000000) {
        ex->ctx->bypass_logged_us = now;
        log_msg(LOG_WARN, "the idempotency store is unavailable: "
                          "forwarding without the guarantee "
                          "(--store-failure open)");
    }
    ex->decision.outcome = IDEM_OUTCOME_PASS;
}

/* Act on the engine's decision. */
static void act(struct exchange *ex)
{
    const struct idem_decision *d = &ex->decision;

    if (d->outcome == IDEM_OUTCOME_UNAVAILABLE &&
        ex->ctx->cfg->store_failure == STORE_FAIL_OPEN)
        bypass(ex);
    switch (d->outcome) {
    case IDEM_OUTCOME_PROCEED:
        timer(ex, EX_TIMER_RENEW, ex->ctx->cfg->lease_ms / 2);
        ex->capture = EX_CAPTURE_KEEP;
        /* fall through */
    case IDEM_OUTCOME_PASS:
        ex->phase = EX_UPSTREAM;
        timer(ex, EX_TIMER_CLIENT, -1); /* the upstream deadline rules */
        if (forward(ex) != 0)
            upstream_failed(ex, 502, false); /* nothing was sent */
        return;
    case IDEM_OUTCOME_REPLAY:
        replay(ex);
        return;
    default:
        /* the store down: try again in a second (the engine gives none) */
        refuse_typed(ex, d->status ? d->status : 503,
                     d->outcome == IDEM_OUTCOME_UNKNOWN ? HTTP_PROBLEM_UNKNOWN
                                                        : NULL,
                     d->detail,
                     d->outcome == IDEM_OUTCOME_UNAVAILABLE && !d->retry_after_s
                         ? EX_STORE_RETRY_AFTER_S
                         : d->retry_after_s,
                     (int)d->outcome);
    }
}

/* -- Deciding ----------------------------------------------------------- */

static void on_decided(struct idem_call *call, const struct idem_decision *d,
                       void *ud)
{
    struct exchange *ex = ud;

    (void)call;
    ex->decision = *d;
    ex->io->wake(ex);
}

void ex_decided(struct exchange *ex)
{
    if (ex->client_gone) {
        ex->phase = EX_DONE;
        return;
    }
    act(ex);
    parse(ex);
}

/* The whole request is in: decide, then act (later, if it must wait). */
static void dispatch(struct exchange *ex)
{
    int rc;

    if (ex->body_mode == EX_BODY_STREAMED) { /* forwarded: end the body */
        if (ex->up != EX_UP_NONE && (ex->rd.parser.flags & F_CHUNKED) &&
            buf_addl(&ex->up_out, "0\r\n\r\n") != 0) {
            upstream_failed(ex, 502, true); /* a cut body: it may have run */
            return;
        }
        if (ex->phase == EX_BODY) {
            ex->phase = EX_UPSTREAM;
            timer(ex, EX_TIMER_CLIENT, -1);
        }
        return;
    }
    if (ex->decision.outcome != IDEM_OUTCOME_PENDING) {
        act(ex);
        return;
    }
    rc = idem_call_decide(ex->call, on_decided, ex, &ex->decision);
    if (rc == IDEM_EINPROGRESS) {
        ex->phase = EX_DECIDING;
        return;
    }
    if (rc != IDEM_OK) {
        refuse_typed(ex, 503, NULL, "the idempotency engine failed",
                     EX_STORE_RETRY_AFTER_S, IDEM_OUTCOME_UNAVAILABLE);
        return;
    }
    act(ex);
}

/* -- Parsing the request ---------------------------------------------- */

static int on_message_begin(llhttp_t *p)
{
    struct exchange *ex = ex_of(p);

    ex->t_start_us = now_us();
    ex->t_upstream_us = 0;
    ex->out_mark = ex->client_out.added;
    ex->up_addr[0] = '\0'; /* not asked yet */
    ex->request_done = false;
    return 0;
}

/* The rules of the route with the longest prefix of req's path (if any)
 * into req and ex; the engine that applies them. */
static struct idem_engine *route_rules(struct exchange *ex,
                                       struct idem_request *req)
{
    const struct config *cfg = ex->ctx->cfg;
    const char *query = memchr(req->target, '?', req->target_len);
    const struct route *r =
        config_route(cfg, req->target,
                     query ? (size_t)(query - req->target) : req->target_len);

    ex->max_stored_body = cfg->max_stored_body;
    if (!r)
        return ex->ctx->engine;
    req->route = r->prefix;
    req->route_len = strlen(r->prefix);
    req->key_required = r->require_key;
    if (r->max_stored_body)
        ex->max_stored_body = r->max_stored_body;
    return ex->ctx->route_engines ? ex->ctx->route_engines[r - cfg->routes]
                                  : ex->ctx->engine;
}

/* Ask the engine about the judged head: PASS, INVALID or PENDING. Its
 * target is the origin-form the upstream gets, so an absolute-form and
 * the same request in origin-form share a fingerprint. */
static int start_call(struct exchange *ex)
{
    struct http_head *h = &ex->rd.head;
    struct idem_request req = {
        .method = h->bytes + h->method_off,
        .method_len = h->method_len,
        .target = h->bytes + h->origin_off,
        .target_len = h->origin_len,
        .headers = http_head_views(h),
        .nheaders = h->nfields,
    };
    struct idem_engine *engine = route_rules(ex, &req);

    if ((!req.headers && h->nfields) ||
        idem_call_new(engine, &ex->call) != IDEM_OK)
        return -1;
    return idem_call_start(ex->call, &req, &ex->decision) == IDEM_OK ? 0 : -1;
}

/* Refuse once llhttp has returned: never from inside its callbacks. */
static int defer_refusal(struct exchange *ex, unsigned status,
                         const char *detail, int outcome)
{
    ex->refusal = status;
    ex->refusal_detail = detail;
    ex->refusal_outcome = outcome;
    return HPE_PAUSED;
}

/* A request with Upgrade and Connection: upgrade. It switches only if the
 * engine does not cover it (never keyed, never stored) and it has no
 * body; otherwise it goes up without its Upgrade, as a plain request.
 * Either way the connection ends after it unless it switched: what
 * follows may be the new protocol's bytes, and llhttp parses no further. */
static void judge_upgrade(struct exchange *ex, const llhttp_t *p)
{
    ex->close_after = true;
    ex->upgrade = ex->decision.outcome == IDEM_OUTCOME_PASS &&
                  !(p->flags & F_CHUNKED) && p->content_length == 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct exchange *ex = ex_of(p);
    const struct config *cfg = ex->ctx->cfg;
    const char *expect, *why = NULL;
    unsigned status = http_reader_judge(&ex->rd, &why);
    size_t len;

    ex->close_after = ex->close_after || !llhttp_should_keep_alive(p);
    if (status)
        return defer_refusal(ex, status, why, METRICS_OUTCOME_ERROR);
    expect = http_head_get(&ex->rd.head, "Expect", &len); /* judged: moved */
    if (start_call(ex) != 0)
        return defer_refusal(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
    if (ex->decision.outcome == IDEM_OUTCOME_INVALID)
        return defer_refusal(ex, 400, ex->decision.detail,
                             IDEM_OUTCOME_INVALID);
    /* a request the engine does not cover streams: its body goes
     * upstream as it arrives, unbuffered and unbounded */
    ex->body_mode = ex->decision.outcome == IDEM_OUTCOME_PASS
                        ? EX_BODY_STREAMED
                        : EX_BODY_BUFFERED;
    if (p->upgrade)
        judge_upgrade(ex, p);
    if (ex->body_mode == EX_BODY_BUFFERED && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > cfg->max_body)
        return defer_refusal(ex, 413, "the request body is too large",
                             METRICS_OUTCOME_ERROR);
    ex->phase = EX_BODY;
    if (expect && idem_header_list_has(expect, len, "100-continue", 12) &&
        p->http_minor >= 1 &&
        buf_addl(&ex->client_out, "HTTP/1.1 100 Continue\r\n\r\n") != 0)
        return defer_refusal(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
    /* a streamed head goes upstream before its body: parse() forwards */
    return ex->body_mode == EX_BODY_STREAMED ? HPE_PAUSED : 0;
}

/* A streamed body's next piece, chunked again if it came chunked. While
 * the upstream is slower than the client, the client waits: reading stops
 * past EX_HIGH bytes queued (ex_upstream_drained resumes it). */
static int stream_body(struct exchange *ex, const char *at, size_t len)
{
    struct buf *o = &ex->up_out;
    bool chunked = (ex->rd.parser.flags & F_CHUNKED) != 0;

    if (ex->up == EX_UP_NONE || len == 0)
        return 0; /* the upstream failed: the rest is read and dropped */
    if ((chunked && (buf_add_hex(o, len) || buf_addl(o, "\r\n"))) ||
        buf_add(o, at, len) || (chunked && buf_addl(o, "\r\n")))
        return -1;
    if (buf_len(o) > EX_HIGH)
        ex->in_paused = true;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = ex_of(p);

    if (ex->body_mode == EX_BODY_STREAMED) {
        if (stream_body(ex, at, len) != 0)
            return defer_refusal(ex, 502, "out of memory",
                                 METRICS_OUTCOME_ERROR);
        return 0;
    }
    if (len > ex->ctx->cfg->max_body - buf_len(&ex->body))
        return defer_refusal(ex, 413, "the request body is too large",
                             METRICS_OUTCOME_ERROR);
    if (buf_add(&ex->body, at, len) != 0 ||
        (ex->decision.outcome == IDEM_OUTCOME_PENDING &&
         idem_call_body(ex->call, at, len) != IDEM_OK))
        return defer_refusal(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    ex_of(p)->request_done = true;
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
static void parse_error(struct exchange *ex, enum llhttp_errno err)
{
    ex->close_after = true;
    if (err == HPE_USER && ex->rd.oom)
        refuse(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
    else if (err == HPE_USER && ex->rd.head.full)
        refuse(ex, 431, "the request head is too large", METRICS_OUTCOME_ERROR);
    else
        refuse(ex, 400, "the request is not valid HTTP/1.1",
               METRICS_OUTCOME_ERROR);
}

/* The head of a streamed request goes upstream now; its body follows as
 * the parser delivers it. Never retried: the body is not kept. */
static void start_stream(struct exchange *ex)
{
    ex->retried = true;
    if (forward(ex) != 0) {
        refuse(ex, 502, "the upstream could not be reached",
               METRICS_OUTCOME_ERROR);
        return;
    }
    llhttp_resume(&ex->rd.parser);
    ex->kick = true;
}

static bool reading_requests(const struct exchange *ex)
{
    return (ex->phase == EX_HEAD || ex->phase == EX_BODY) && !ex->in_paused;
}

/* Feed buffered input to the parser while the connection reads requests:
 * each whole request is dispatched; one answered at once lets the loop
 * go on to the next pipelined one. */
static void parse(struct exchange *ex)
{
    enum llhttp_errno err;
    size_t used;

    while (reading_requests(ex) && (buf_len(&ex->in) || ex->kick)) {
        /* a resumed parser finishes a bodyless request on no input */
        ex->kick = false;
        err = http_reader_execute(&ex->rd, buf_bytes(&ex->in), buf_len(&ex->in),
                                  &used);
        buf_consume(&ex->in, used);
        if (ex->refusal)
            refuse(ex, ex->refusal, ex->refusal_detail, ex->refusal_outcome);
        else if (err == HPE_PAUSED && ex->body_mode == EX_BODY_STREAMED &&
                 ex->up == EX_UP_NONE && !ex->request_done &&
                 ex->phase == EX_BODY)
            start_stream(ex);
        else if (err == HPE_PAUSED)
            dispatch(ex);
        else if (err != HPE_OK)
            parse_error(ex, err);
    }
}

/* -- The response ------------------------------------------------------- */

/* Whether an upstream response header goes to the client. */
static bool relay_header(const struct http_head *h, const struct http_field *f,
                         const char *conn, size_t conn_len)
{
    const char *name = h->bytes + f->name_off;

    return !http_hop_by_hop(h, f, conn, conn_len) &&
           !HTTP_NAME_IS(name, f->name_len, "Content-Length") &&
           !HTTP_NAME_IS(name, f->name_len, "Idempotency-Policy");
}

/* The status line and the fields of the response head that go to the
 * client, with a Date when the upstream sent none (RFC 9110 6.6.1: a
 * proxy adds one). false: out of memory. */
static bool put_head(struct buf *o, const struct exchange *ex)
{
    const struct http_head *h = &ex->resp.head;
    bool ok = http_status_line(o, ex->resp.parser.status_code) == 0;
    size_t len, conn_len = 0;
    const char *conn = http_connection(h, &conn_len);
    unsigned i;

    for (i = 0; ok && i < h->nfields; i++)
        if (relay_header(h, &h->fields[i], conn, conn_len))
            ok = http_add_field(o, h, &h->fields[i]) == 0;
    if (ok && !http_head_get(h, "Date", &len))
        ok = http_date_line(o) == 0;
    return ok;
}

/* An interim response: 103 Early Hints goes to an HTTP/1.1 client ahead
 * of the final response (never stored: a replay has none); others stay
 * here (100 answered an Expect the proxy handled itself; an HTTP/1.0
 * client cannot read interim responses). */
static void relay_interim(struct exchange *ex)
{
    if (ex->resp.parser.status_code != 103 || !to_client(ex) ||
        ex->response != EX_RESP_NONE || ex->rd.parser.http_minor < 1)
        return;
    if (!put_head(&ex->client_out, ex) || buf_addl(&ex->client_out, "\r\n"))
        ex->close_after = true; /* a cut answer: the client must see it end */
}

static void relay_head(struct exchange *ex)
{
    struct buf *o = &ex->client_out;
    unsigned status = ex->resp.parser.status_code;
    bool sized = (ex->resp.parser.flags & F_CONTENT_LENGTH) != 0;
    bool no_body = ex->up_head_only || status == 204 || status == 304;
    bool ok;

    ex->status_sent = status;
    ex->response = EX_RESP_RELAYED;
    ex->up = EX_UP_BODY;
    if (!to_client(ex))
        return; /* the response is still read, for the store */
    /* a HEAD keeps its length; an HTTP/1.0 client gets a body that ends
     * with the connection instead of chunks it cannot read */
    ex->framing = sized || no_body           ? EX_FRAME_LENGTH
                  : ex->rd.parser.http_minor ? EX_FRAME_CHUNKED
                                             : EX_FRAME_CLOSE;
    if (ex->framing == EX_FRAME_CLOSE)
        ex->close_after = true;
    ok = put_head(o, ex);
    if (ok && sized)
        ok = buf_addl(o, "Content-Length: ") == 0 &&
             buf_add_u64(o, ex->resp.parser.content_length) == 0 &&
             buf_addl(o, "\r\n") == 0;
    if (ok && ex->framing == EX_FRAME_CHUNKED)
        ok = buf_addl(o, "Transfer-Encoding: chunked\r\n") == 0;
    ok = ok && buf_adds(o, ex->close_after ? "Connection: close\r\n\r\n"
                                           : "\r\n") == 0;
    if (!ok)
        ex->close_after = true; /* a cut answer: the client must see it end */
}

/* The client is behind (pause) or caught up: the upstream is read (and
 * its deadline runs) only while the client keeps up. The deadline is an
 * idle one once the response flows: it runs only while the proxy waits
 * for the upstream, not for the client. */
static void pause_upstream(struct exchange *ex, bool pause)
{
    if (ex->up == EX_UP_NONE || ex->up_paused == pause)
        return;
    ex->up_paused = pause;
    timer(ex, EX_TIMER_UPSTREAM,
          pause ? -1 : ex->ctx->cfg->upstream_timeout_ms);
}

static void relay_body(struct exchange *ex, const char *at, size_t len)
{
    struct buf *o = &ex->client_out;
    size_t keep;

    if (ex->capture == EX_CAPTURE_KEEP) {
        /* one byte past the limit tells the engine the body was cut */
        keep = ex->max_stored_body + 1 - buf_len(&ex->stored);
        if (len < keep)
            keep = len;
        if (buf_add(&ex->stored, at, keep) != 0)
            ex->capture = EX_CAPTURE_FAILED;
        else if (keep < len)
            ex->capture = EX_CAPTURE_OVER;
    }
    if (!to_client(ex) || len == 0)
        return;
    if ((ex->framing == EX_FRAME_CHUNKED &&
         (buf_add_hex(o, len) || buf_addl(o, "\r\n"))) ||
        buf_add(o, at, len) ||
        (ex->framing == EX_FRAME_CHUNKED && buf_addl(o, "\r\n")))
        ex->close_after = true; /* a cut answer: the client must see it end */
    if (buf_len(o) > EX_HIGH)
        pause_upstream(ex, true); /* ex_client_drained resumes it */
    else
        timer(ex, EX_TIMER_UPSTREAM, ex->ctx->cfg->upstream_timeout_ms);
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
static void complete_call(struct exchange *ex)
{
    struct idem_response resp = {
        .status = ex->status_sent,
        .headers = http_head_views(&ex->resp.head),
        .nheaders = ex->resp.head.nfields,
        .body = buf_bytes(&ex->stored),
        .body_len = buf_len(&ex->stored),
    };

    if (ex->capture == EX_CAPTURE_FAILED || (!resp.headers && resp.nheaders)) {
        /* a record missing part of what was sent would replay a lie; the
         * request ran, so its key is never simply released */
        log_msg(LOG_WARN, "out of memory keeping a response: not stored, "
                          "its outcome is unknown");
        idem_call_unknown(ex->call, NULL, NULL);
        return;
    }
    idem_call_complete(ex->call, &resp, on_completed, NULL);
}

/* The response is whole. */
static void upstream_done(struct exchange *ex)
{
    uint64_t us = now_us() - ex->t_start_us;

    if (!ex->request_done)
        ex->close_after = true; /* answered before the body ended */
    ex->t_upstream_us = us;
    metrics_observe_upstream(us);
    if (ex->framing == EX_FRAME_CHUNKED && to_client(ex) &&
        buf_addl(&ex->client_out, "0\r\n\r\n") != 0)
        ex->close_after = true;
    if (ex->decision.outcome == IDEM_OUTCOME_PROCEED)
        complete_call(ex);
    release_upstream(ex, ex->up_keep_alive);
    ex->response = EX_RESP_ANSWERED;
    if (ex->phase == EX_LATE) { /* the client had its 504 */
        ex->phase = ex->client_gone ? EX_DONE : EX_DRAINING;
        return;
    }
    log_request(ex, (int)ex->decision.outcome, ex->status_sent);
    finish_request(ex);
}

/* The detail a client gets for a failed exchange. */
static const char *failure_detail(const struct exchange *ex, unsigned status,
                                  bool maybe_run)
{
    if (status == 504)
        return "the upstream did not answer in time";
    if (maybe_run && ex->decision.outcome == IDEM_OUTCOME_PROCEED &&
        ex->ctx->cfg->unknown_outcome == IDEM_UNKNOWN_HOLD)
        return "the upstream failed after the request was sent: it may have "
               "executed, so its idempotency key is held (outcome unknown)";
    return "the upstream could not be reached";
}

/* The exchange with the upstream failed; maybe_run: the request may have
 * reached it (so a key is never simply released). */
static void upstream_failed(struct exchange *ex, unsigned status,
                            bool maybe_run)
{
    release_upstream(ex, false);
    if (ex->phase != EX_LATE) /* a late wait's end was counted at its 504 */
        atomic_fetch_add(
            &metrics.results[status == 504 ? METRICS_UPSTREAM_TIMEOUT
                                           : METRICS_UPSTREAM_ERROR],
            1);
    /* released only when the request provably did not reach the upstream;
     * otherwise the unknown-outcome policy decides */
    if (ex->decision.outcome == IDEM_OUTCOME_PROCEED && maybe_run)
        idem_call_unknown(ex->call, NULL, NULL);
    else if (ex->decision.outcome == IDEM_OUTCOME_PROCEED)
        idem_call_abort(ex->call, NULL, NULL);
    if (ex->phase == EX_LATE) {
        ex->phase = ex->client_gone ? EX_DONE : EX_DRAINING;
        return;
    }
    if (ex->response == EX_RESP_RELAYED) {
        /* a response is half sent: all the client can learn is a cut */
        ex->close_after = true;
        ex->client_gone = true;
        log_request(ex, METRICS_OUTCOME_ERROR, status);
        finish_request(ex);
        return;
    }
    refuse(ex, status, failure_detail(ex, status, maybe_run),
           METRICS_OUTCOME_ERROR);
}

static int on_rheaders_complete(llhttp_t *p)
{
    struct exchange *ex = p->data;

    if (p->status_code == 101 && ex->upgrade)
        return HPE_PAUSED; /* switched: ex_upstream_data starts the tunnel */
    if (p->status_code < 200) { /* interim: 103 is relayed, never stored */
        relay_interim(ex);
        return 0;
    }
    relay_head(ex);
    return ex->up_head_only ? 1 : 0; /* 1: a HEAD response has no body */
}

static int on_rbody(llhttp_t *p, const char *at, size_t len)
{
    relay_body(p->data, at, len);
    return 0;
}

static int on_rmessage_complete(llhttp_t *p)
{
    struct exchange *ex = p->data;

    if (p->status_code < 200) {
        http_head_reset(&ex->resp.head);
        return 0; /* the final response follows */
    }
    ex->up_keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static const llhttp_settings_t response_settings = {
    HTTP_RESPONSE_CALLBACKS,
    .on_headers_complete = on_rheaders_complete,
    .on_body = on_rbody,
    .on_message_complete = on_rmessage_complete,
};

void ex_upstream_data(struct exchange *ex, const char *p, size_t n)
{
    enum llhttp_errno err;
    const char *at;

    if (ex->up == EX_UP_NONE || n == 0)
        return;
    if (ex->phase == EX_TUNNEL) {
        tunnel_to_client(ex, p, n);
        return;
    }
    ex->up_got_bytes = true;
    err = llhttp_execute(&ex->resp.parser, p, n);
    if (err == HPE_PAUSED && ex->resp.parser.status_code == 101) {
        at = llhttp_get_error_pos(&ex->resp.parser); /* the tunnel's first */
        start_tunnel(ex, at, (size_t)(p + n - at));
        return;
    }
    if (err == HPE_PAUSED) {
        /* bytes after the response: the connection is not reusable */
        if (llhttp_get_error_pos(&ex->resp.parser) != p + n)
            ex->up_keep_alive = false;
        upstream_done(ex);
        parse(ex);
        return;
    }
    if (err != HPE_OK) {
        log_msg(LOG_WARN, "bad response from the upstream: %s",
                llhttp_errno_name(err));
        upstream_failed(ex, 502, true);
        parse(ex);
    }
}

/* A reused connection that closed before any answer may have been closed
 * by the upstream while idle: a safe method is sent once more on a fresh
 * connection. Anything else is never sent twice. */
static bool retry(struct exchange *ex, struct ex_up_end how)
{
    if (!how.reused || ex->up_got_bytes || ex->retried ||
        ex->decision.outcome == IDEM_OUTCOME_PROCEED ||
        !(method_is(ex, "GET") || method_is(ex, "HEAD") ||
          method_is(ex, "OPTIONS")))
        return false;
    ex->retried = true;
    release_upstream(ex, false);
    if (forward(ex) != 0)
        upstream_failed(ex, 502, false);
    return true;
}

void ex_upstream_closed(struct exchange *ex, struct ex_up_end how)
{
    if (ex->up == EX_UP_NONE)
        return;
    if (ex->phase == EX_TUNNEL) {
        tunnel_closed(ex);
        return;
    }
    if (ex->up_got_bytes && llhttp_finish(&ex->resp.parser) == HPE_OK &&
        ex->up == EX_UP_BODY) {
        ex->up_keep_alive = false; /* the body ended with the connection */
        upstream_done(ex);
    } else if (!retry(ex, how)) {
        upstream_failed(ex, 502,
                        ex->up_got_bytes || (how.connected && how.sent));
    }
    parse(ex);
}

void ex_upstream_drained(struct exchange *ex)
{
    if (ex->in_paused) {
        ex->in_paused = false;
        parse(ex);
    }
}

/* -- The tunnel ----------------------------------------------------------- */

/* Close both sides now (a bound passed, or out of memory). */
static void tunnel_end(struct exchange *ex)
{
    release_upstream(ex, false);
    timer(ex, EX_TIMER_CLIENT, -1);
    timer(ex, EX_TIMER_UPSTREAM, -1);
    ex->phase = EX_DONE;
}

/* Bytes for one side of the tunnel. A side that falls EX_HIGH behind
 * stops the other being read (the driver's drained calls resume it);
 * every byte either way restarts the idle bound. */
static void tunnel_add(struct exchange *ex, struct buf *o, bool *pause,
                       const char *p, size_t n)
{
    if (n == 0)
        return;
    if (buf_add(o, p, n) != 0) {
        tunnel_end(ex);
        return;
    }
    if (buf_len(o) > EX_HIGH)
        *pause = true;
    timer(ex, EX_TIMER_CLIENT, ex->ctx->cfg->tunnel_idle_ms);
}

static void tunnel_to_client(struct exchange *ex, const char *p, size_t n)
{
    tunnel_add(ex, &ex->client_out, &ex->up_paused, p, n);
}

static void tunnel_to_upstream(struct exchange *ex, const char *p, size_t n)
{
    tunnel_add(ex, &ex->up_out, &ex->in_paused, p, n);
}

/* The 101 for the client: the upstream's head with its Upgrade and
 * Connection: upgrade (hop-by-hop, so put back). false: out of memory. */
static bool put_switch(struct exchange *ex)
{
    struct buf *o = &ex->client_out;
    size_t len = 0;
    const char *up = http_head_get(&ex->resp.head, "Upgrade", &len);

    if (!up)
        up = http_head_get(&ex->rd.head, "Upgrade", &len);
    return put_head(o, ex) && buf_addl(o, "Upgrade: ") == 0 &&
           buf_add(o, up ? up : "", up ? len : 0) == 0 &&
           buf_addl(o, "\r\nConnection: upgrade\r\n\r\n") == 0;
}

/* The upstream switched protocols: relay its 101, then bytes both ways
 * as they come (at: what came after the head), under the idle and total
 * bounds. The request is over for the engine: never keyed, never
 * stored. What the client sent after its request goes up first. */
static void start_tunnel(struct exchange *ex, const char *at, size_t n)
{
    const struct config *cfg = ex->ctx->cfg;

    ex->status_sent = 101;
    ex->response = EX_RESP_ANSWERED;
    ex->up = EX_UP_BODY;
    ex->t_upstream_us = now_us() - ex->t_start_us;
    idem_call_free(ex->call);
    ex->call = NULL;
    timer(ex, EX_TIMER_RENEW, -1);
    if (ex->client_gone || !put_switch(ex)) {
        tunnel_end(ex);
        return;
    }
    log_request(ex, (int)ex->decision.outcome, 101);
    ex->phase = EX_TUNNEL;
    timer(ex, EX_TIMER_UPSTREAM, cfg->tunnel_max_ms);
    timer(ex, EX_TIMER_CLIENT, cfg->tunnel_idle_ms);
    if (buf_len(&ex->in)) {
        tunnel_to_upstream(ex, buf_bytes(&ex->in), buf_len(&ex->in));
        buf_clear(&ex->in);
    }
    if (ex->phase == EX_TUNNEL)
        tunnel_to_client(ex, at, n);
}

/* The upstream closed the tunnel: the client gets what is queued, then
 * the connection closes. */
static void tunnel_closed(struct exchange *ex)
{
    release_upstream(ex, false);
    timer(ex, EX_TIMER_UPSTREAM, -1);
    ex->close_after = true;
    ex->phase = ex->client_gone ? EX_DONE : EX_DRAINING;
}

/* -- The request's end and the connection's ----------------------------- */

/* The request is answered: reset for the next, or close. */
static void finish_request(struct exchange *ex)
{
    /* a streamed request refused mid-body: its upstream goes with it */
    release_upstream(ex, false);
    timer(ex, EX_TIMER_UPSTREAM, -1);
    timer(ex, EX_TIMER_RENEW, -1);
    idem_call_free(ex->call); /* a PROCEED left unfinished is aborted */
    ex->call = NULL;
    buf_trim(&ex->stored);
    buf_trim(&ex->body);
    http_head_reset(&ex->rd.head);
    memset(&ex->decision, 0, sizeof(ex->decision));
    ex->request_id[0] = '\0';
    ex->response = EX_RESP_NONE;
    ex->framing = EX_FRAME_LENGTH;
    ex->capture = EX_CAPTURE_NONE;
    ex->body_mode = EX_BODY_BUFFERED;
    ex->retried = ex->in_paused = ex->up_paused = ex->upgrade = false;
    ex->refusal = 0;
    ex->status_sent = 0;
    if (ex->client_gone) {
        ex->phase = EX_DONE;
        return;
    }
    if (ex->close_after) {
        /* the driver's write deadline bounds the drain */
        ex->phase = ex->request_done ? EX_DRAINING : EX_LINGER;
        ex->lingered = 0;
        timer(ex, EX_TIMER_CLIENT,
              ex->phase == EX_LINGER ? EX_LINGER_IDLE_MS : -1);
        return;
    }
    ex->phase = EX_HEAD;
    timer(ex, EX_TIMER_CLIENT, ex->ctx->cfg->client_timeout_ms);
    llhttp_resume(&ex->rd.parser);
}

void ex_client_data(struct exchange *ex, const char *p, size_t n)
{
    if (ex->phase == EX_TUNNEL) {
        tunnel_to_upstream(ex, p, n);
        return;
    }
    if (ex->phase == EX_LINGER) {
        ex->lingered += n;
        if (ex->lingered > EX_LINGER_MAX)
            ex->phase = EX_DONE;
        else
            timer(ex, EX_TIMER_CLIENT, EX_LINGER_IDLE_MS);
        return;
    }
    if (ex->phase == EX_DRAINING || ex->phase == EX_LATE ||
        ex->phase == EX_DONE || n == 0)
        return; /* the answer is out or going: what follows is ignored */
    if (ex->phase == EX_HEAD || ex->phase == EX_BODY) /* an idle deadline */
        timer(ex, EX_TIMER_CLIENT, ex->ctx->cfg->client_timeout_ms);
    if (buf_add(&ex->in, p, n) != 0) {
        ex->close_after = true;
        if (ex->phase == EX_HEAD || ex->phase == EX_BODY)
            refuse(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
        else
            ex->client_gone = true; /* cannot keep up: stop reading */
        return;
    }
    parse(ex);
}

void ex_client_drained(struct exchange *ex)
{
    if (ex->phase == EX_TUNNEL)
        ex->up_paused = false; /* no upstream deadline in a tunnel */
    else if (ex->up_paused)
        pause_upstream(ex, false);
}

/* A request that proceeded got no answer in time: the client gets its
 * 504 now, but the request may be running, so the exchange stays open
 * (the lease renewed) for up to one more lease, and a late response is
 * stored as any other. Retries meanwhile get 409 (or wait). */
static void wait_late(struct exchange *ex)
{
    atomic_fetch_add(&metrics.results[METRICS_UPSTREAM_TIMEOUT], 1);
    if (!ex->client_gone) {
        ex->close_after = true;
        if (http_problem(&ex->client_out, 504,
                         "the upstream did not answer in time; the request "
                         "may still complete, and a retry with the same "
                         "key will get its response",
                         0, true) != 0)
            buf_clear(&ex->client_out); /* the client sees a cut */
        ex->status_sent = 504;
        log_request(ex, METRICS_OUTCOME_ERROR, 504);
    }
    ex->phase = EX_LATE;
    timer(ex, EX_TIMER_CLIENT, -1);
    timer(ex, EX_TIMER_UPSTREAM, ex->ctx->cfg->lease_ms);
}

/* The client has not sent its request in time: 408 (an idle connection
 * just closes). */
static void client_timeout(struct exchange *ex)
{
    switch (ex->phase) {
    case EX_HEAD:
        if (ex->rd.head.len == 0 && buf_len(&ex->in) == 0) {
            ex->phase = EX_DONE; /* idle keep-alive: close */
            return;
        }
        /* fall through */
    case EX_BODY:
        ex->close_after = true;
        if (http_problem(&ex->client_out, 408,
                         "the request did not arrive in time", 0, true) != 0)
            buf_clear(&ex->client_out);
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_ERROR], 1);
        if (ex->up != EX_UP_NONE) { /* a streamed body, cut */
            upstream_failed(ex, 408, true);
            return;
        }
        idem_call_free(ex->call);
        ex->call = NULL;
        ex->phase = EX_DRAINING;
        return;
    case EX_DECIDING:
    case EX_UPSTREAM:
    case EX_LATE:
        ex_client_gone(ex);
        return;
    case EX_TUNNEL: /* idle too long */
        tunnel_end(ex);
        return;
    default: /* lingering too long */
        ex->phase = EX_DONE;
    }
}

void ex_timeout(struct exchange *ex, enum ex_timer t)
{
    switch (t) {
    case EX_TIMER_RENEW:
        renew(ex);
        return;
    case EX_TIMER_CLIENT:
        client_timeout(ex);
        return;
    case EX_TIMER_UPSTREAM:
    default:
        if (ex->up == EX_UP_NONE)
            return;
        if (ex->phase == EX_TUNNEL) { /* its total bound */
            tunnel_end(ex);
            return;
        }
        if (ex->decision.outcome == IDEM_OUTCOME_PROCEED &&
            ex->phase == EX_UPSTREAM && ex->response == EX_RESP_NONE &&
            ex->ctx->cfg->unknown_outcome == IDEM_UNKNOWN_HOLD) {
            wait_late(ex);
            return;
        }
        upstream_failed(ex, 504, true); /* it may have run */
        parse(ex);
    }
}

void ex_client_gone(struct exchange *ex)
{
    if (ex->client_gone)
        return;
    ex->client_gone = true;
    buf_clear(&ex->client_out);
    switch (ex->phase) {
    case EX_UPSTREAM:
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_GONE], 1);
        if (ex->up_paused)
            pause_upstream(ex, false); /* read on, for the store */
        return;
    case EX_DECIDING:
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_GONE], 1);
        if (idem_call_cancel(ex->call) == IDEM_OK)
            ex->phase = EX_DONE;
        return; /* otherwise the wake finishes it */
    case EX_LATE:
        return; /* the late response is awaited for the store */
    case EX_TUNNEL:
        tunnel_end(ex);
        return;
    default: /* a streamed body is cut: its upstream goes too */
        ex->phase = EX_DONE;
    }
}

bool ex_shutdown(struct exchange *ex)
{
    if (ex_idle(ex)) {
        ex->phase = EX_DONE;
        return true;
    }
    ex->close_after = true;
    return false;
}

bool ex_idle(const struct exchange *ex)
{
    return ex->phase == EX_HEAD && ex->rd.head.len == 0 &&
           buf_len(&ex->in) == 0;
}

struct ex_wants ex_wants(const struct exchange *ex)
{
    struct ex_wants w = { 0 };

    if (ex->phase == EX_DONE) {
        w.end = EX_END_FREE;
        return w;
    }
    w.read_upstream = ex->up != EX_UP_NONE && !ex->up_paused;
    if (ex->client_gone) {
        w.end = EX_END_DROP;
        return w;
    }
    switch (ex->phase) {
    case EX_LATE:
        w.end = EX_END_CLOSE; /* the 504 goes out, then the client goes */
        break;
    case EX_DRAINING:
        w.end = EX_END_CLOSE;
        break;
    case EX_LINGER:
        w.end = EX_END_LINGER;
        w.read_client = true;
        break;
    default:
        /* while a request is in flight, what follows waits, up to a
         * bound */
        w.read_client =
            !ex->in_paused && buf_len(&ex->in) <= input_bound(ex->ctx->cfg);
    }
    return w;
}

void ex_init(struct exchange *ex, const struct exchange_io *io,
             struct ex_ctx *ctx, const char *client, void *data)
{
    memset(ex, 0, sizeof(*ex));
    ex->io = io;
    ex->ctx = ctx;
    ex->data = data;
    strncpy(ex->client, client, sizeof(ex->client) - 1);
    forward_peer_init(ex);
    http_reader_init(&ex->rd, &request_settings, ctx->cfg->max_header_bytes,
                     ctx->cfg->max_headers, ex);
    http_head_init(&ex->resp.head, EX_RESPONSE_HEAD_MAX,
                   EX_RESPONSE_FIELDS_MAX);
    ex->phase = EX_HEAD;
}

void ex_deinit(struct exchange *ex)
{
    release_upstream(ex, false);
    idem_call_free(ex->call);
    http_reader_deinit(&ex->rd);
    http_head_deinit(&ex->resp.head);
    buf_free(&ex->in);
    buf_free(&ex->body);
    buf_free(&ex->stored);
    buf_free(&ex->client_out);
    buf_free(&ex->up_out);
}
