/* exchange.c: the HTTP/1.1 exchange's request side, sans-I/O. It parses
 * the client's bytes with llhttp through http_reader (limits, judging),
 * asks the engine and acts on its decision (forward, replay, refuse), ends
 * each request, and takes the client's events and deadlines. The upstream
 * side is exchange_response.c; a tunnel after a 101, exchange_tunnel.c. */
#include "exchange.h"

#include <string.h>

#include "exchange_internal.h"
#include "forward.h"
#include "log.h"
#include "metrics.h"

static struct exchange *ex_of(llhttp_t *p)
{
    return http_reader_of(p)->data;
}

/* How much a client may send ahead of the request being answered. */
static size_t input_bound(const struct config *cfg)
{
    return cfg->max_header_bytes + cfg->max_body + 65536;
}

/* -- Logging ---------------------------------------------------------- */

/* The request is answered (outcome: enum idem_outcome, or
 * METRICS_OUTCOME_ERROR when the proxy answered by itself): its duration
 * into the metrics, its line into the log. */
void ex_log_request(struct exchange *ex, int outcome, unsigned status)
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
        .total_us = ex_now_us() - ex->t_start_us,
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
    ex_log_request(ex, outcome, status);
    ex_finish_request(ex);
}

void ex_refuse(struct exchange *ex, unsigned status, const char *detail,
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
    ex_log_request(ex, IDEM_OUTCOME_REPLAY, r->status);
    ex_finish_request(ex);
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
    ex_set_timer(ex, EX_TIMER_RENEW, ex->ctx->cfg->lease_ms / 2);
}

/* -- Deciding ----------------------------------------------------------- */

/* The store is down and --store-failure is open: forward the request as
 * if no key came, counted, and said in the log at most once a second a
 * worker. */
static void bypass(struct exchange *ex)
{
    uint64_t now = ex_now_us();

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
        ex_set_timer(ex, EX_TIMER_RENEW, ex->ctx->cfg->lease_ms / 2);
        ex->capture = EX_CAPTURE_KEEP;
        /* fall through */
    case IDEM_OUTCOME_PASS:
        ex->phase = EX_UPSTREAM;
        ex_set_timer(ex, EX_TIMER_CLIENT, -1); /* the upstream deadline rules */
        if (ex_resp_forward(ex) != 0)
            ex_resp_upstream_failed(ex, 502, false); /* nothing was sent */
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
    ex_parse(ex);
}

/* The whole request is in: decide, then act (later, if it must wait). */
static void dispatch(struct exchange *ex)
{
    int rc;

    if (ex->body_mode == EX_BODY_STREAMED) { /* forwarded: end the body */
        if (ex->up != EX_UP_NONE && (ex->rd.parser.flags & F_CHUNKED) &&
            buf_addl(&ex->up_out, "0\r\n\r\n") != 0) {
            /* a cut body: it may have run */
            ex_resp_upstream_failed(ex, 502, true);
            return;
        }
        if (ex->phase == EX_BODY) {
            ex->phase = EX_UPSTREAM;
            ex_set_timer(ex, EX_TIMER_CLIENT, -1);
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

    ex->t_start_us = ex_now_us();
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
    /* a streamed head goes upstream before its body: ex_parse() forwards */
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
        ex_refuse(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
    else if (err == HPE_USER && ex->rd.head.full)
        ex_refuse(ex, 431, "the request head is too large",
                  METRICS_OUTCOME_ERROR);
    else
        ex_refuse(ex, 400, "the request is not valid HTTP/1.1",
                  METRICS_OUTCOME_ERROR);
}

/* The head of a streamed request goes upstream now; its body follows as
 * the parser delivers it. Never retried: the body is not kept. */
static void start_stream(struct exchange *ex)
{
    ex->retried = true;
    if (ex_resp_forward(ex) != 0) {
        ex_refuse(ex, 502, "the upstream could not be reached",
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
void ex_parse(struct exchange *ex)
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
            ex_refuse(ex, ex->refusal, ex->refusal_detail, ex->refusal_outcome);
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

/* -- The request's end and the connection's ----------------------------- */

/* The request is answered: reset for the next, or close. */
void ex_finish_request(struct exchange *ex)
{
    /* a streamed request refused mid-body: its upstream goes with it */
    ex_resp_release_upstream(ex, false);
    ex_set_timer(ex, EX_TIMER_UPSTREAM, -1);
    ex_set_timer(ex, EX_TIMER_RENEW, -1);
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
        ex_set_timer(ex, EX_TIMER_CLIENT,
                     ex->phase == EX_LINGER ? EX_LINGER_IDLE_MS : -1);
        return;
    }
    ex->phase = EX_HEAD;
    ex_set_timer(ex, EX_TIMER_CLIENT, ex->ctx->cfg->client_timeout_ms);
    llhttp_resume(&ex->rd.parser);
}

void ex_client_data(struct exchange *ex, const char *p, size_t n)
{
    if (ex->phase == EX_TUNNEL) {
        ex_tunnel_to_upstream(ex, p, n);
        return;
    }
    if (ex->phase == EX_LINGER) {
        ex->lingered += n;
        if (ex->lingered > EX_LINGER_MAX)
            ex->phase = EX_DONE;
        else
            ex_set_timer(ex, EX_TIMER_CLIENT, EX_LINGER_IDLE_MS);
        return;
    }
    if (ex->phase == EX_DRAINING || ex->phase == EX_LATE ||
        ex->phase == EX_DONE || n == 0)
        return; /* the answer is out or going: what follows is ignored */
    if (ex->phase == EX_HEAD || ex->phase == EX_BODY) /* an idle deadline */
        ex_set_timer(ex, EX_TIMER_CLIENT, ex->ctx->cfg->client_timeout_ms);
    if (buf_add(&ex->in, p, n) != 0) {
        ex->close_after = true;
        if (ex->phase == EX_HEAD || ex->phase == EX_BODY)
            ex_refuse(ex, 503, "out of memory", METRICS_OUTCOME_ERROR);
        else
            ex->client_gone = true; /* cannot keep up: stop reading */
        return;
    }
    ex_parse(ex);
}

void ex_client_drained(struct exchange *ex)
{
    if (ex->phase == EX_TUNNEL)
        ex->up_paused = false; /* no upstream deadline in a tunnel */
    else if (ex->up_paused)
        ex_resp_pause_upstream(ex, false);
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
            ex_resp_upstream_failed(ex, 408, true);
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
        ex_tunnel_end(ex);
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
            ex_tunnel_end(ex);
            return;
        }
        if (ex->decision.outcome == IDEM_OUTCOME_PROCEED &&
            ex->phase == EX_UPSTREAM && ex->response == EX_RESP_NONE &&
            ex->ctx->cfg->unknown_outcome == IDEM_UNKNOWN_HOLD) {
            ex_resp_wait_late(ex);
            return;
        }
        ex_resp_upstream_failed(ex, 504, true); /* it may have run */
        ex_parse(ex);
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
            ex_resp_pause_upstream(ex, false); /* read on, for the store */
        return;
    case EX_DECIDING:
        atomic_fetch_add(&metrics.results[METRICS_CLIENT_GONE], 1);
        if (idem_call_cancel(ex->call) == IDEM_OK)
            ex->phase = EX_DONE;
        return; /* otherwise the wake finishes it */
    case EX_LATE:
        return; /* the late response is awaited for the store */
    case EX_TUNNEL:
        ex_tunnel_end(ex);
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
    ex_resp_release_upstream(ex, false);
    idem_call_free(ex->call);
    http_reader_deinit(&ex->rd);
    http_head_deinit(&ex->resp.head);
    buf_free(&ex->in);
    buf_free(&ex->body);
    buf_free(&ex->stored);
    buf_free(&ex->client_out);
    buf_free(&ex->up_out);
}
