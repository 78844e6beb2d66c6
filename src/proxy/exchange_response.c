/* exchange_response.c: the exchange's upstream side. It forwards the
 * request, parses the upstream's response with llhttp and relays it
 * (chunked again for an HTTP/1.1 client when the upstream gave no length),
 * keeps it for the engine and completes the call, and meets the upstream's
 * failures: a retry, a 502 or 504, the late wait after a 504. */
#include "exchange.h"

#include "exchange_internal.h"
#include "forward.h"
#include "log.h"
#include "metrics.h"

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

/* -- Forwarding ------------------------------------------------------- */

static const llhttp_settings_t response_settings;

/* Send the request upstream (a pooled or new connection): 0 or -1
 * (nothing was sent). */
int ex_resp_forward(struct exchange *ex)
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
    ex_set_timer(ex, EX_TIMER_UPSTREAM, ex->ctx->cfg->upstream_timeout_ms);
    return 0;
}

/* Let the upstream connection go (to the pool when reusable). */
void ex_resp_release_upstream(struct exchange *ex, bool reusable)
{
    if (ex->up == EX_UP_NONE)
        return;
    ex->up = EX_UP_NONE;
    ex->up_paused = false;
    ex->io->upstream_release(ex, reusable && buf_len(&ex->up_out) == 0);
    buf_clear(&ex->up_out);
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
bool ex_resp_put_head(struct buf *o, const struct exchange *ex)
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
    if (!ex_resp_put_head(&ex->client_out, ex) ||
        buf_addl(&ex->client_out, "\r\n"))
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
    ok = ex_resp_put_head(o, ex);
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
void ex_resp_pause_upstream(struct exchange *ex, bool pause)
{
    if (ex->up == EX_UP_NONE || ex->up_paused == pause)
        return;
    ex->up_paused = pause;
    ex_set_timer(ex, EX_TIMER_UPSTREAM,
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
        ex_resp_pause_upstream(ex, true); /* ex_client_drained resumes it */
    else
        ex_set_timer(ex, EX_TIMER_UPSTREAM, ex->ctx->cfg->upstream_timeout_ms);
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
    uint64_t us = ex_now_us() - ex->t_start_us;

    if (!ex->request_done)
        ex->close_after = true; /* answered before the body ended */
    ex->t_upstream_us = us;
    metrics_observe_upstream(us);
    if (ex->framing == EX_FRAME_CHUNKED && to_client(ex) &&
        buf_addl(&ex->client_out, "0\r\n\r\n") != 0)
        ex->close_after = true;
    if (ex->decision.outcome == IDEM_OUTCOME_PROCEED)
        complete_call(ex);
    ex_resp_release_upstream(ex, ex->up_keep_alive);
    ex->response = EX_RESP_ANSWERED;
    if (ex->phase == EX_LATE) { /* the client had its 504 */
        ex->phase = ex->client_gone ? EX_DONE : EX_DRAINING;
        return;
    }
    ex_log_request(ex, (int)ex->decision.outcome, ex->status_sent);
    ex_finish_request(ex);
}

/* -- The upstream's failures, and the late wait ----------------------- */

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
void ex_resp_upstream_failed(struct exchange *ex, unsigned status,
                             bool maybe_run)
{
    ex_resp_release_upstream(ex, false);
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
        ex_log_request(ex, METRICS_OUTCOME_ERROR, status);
        ex_finish_request(ex);
        return;
    }
    ex_refuse(ex, status, failure_detail(ex, status, maybe_run),
              METRICS_OUTCOME_ERROR);
}

/* A request that proceeded got no answer in time: the client gets its
 * 504 now, but the request may be running, so the exchange stays open
 * (the lease renewed) for up to one more lease, and a late response is
 * stored as any other. Retries meanwhile get 409 (or wait). */
void ex_resp_wait_late(struct exchange *ex)
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
        ex_log_request(ex, METRICS_OUTCOME_ERROR, 504);
    }
    ex->phase = EX_LATE;
    ex_set_timer(ex, EX_TIMER_CLIENT, -1);
    ex_set_timer(ex, EX_TIMER_UPSTREAM, ex->ctx->cfg->lease_ms);
}

/* -- Parsing the response; the upstream's events ---------------------- */

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
        ex_tunnel_to_client(ex, p, n);
        return;
    }
    ex->up_got_bytes = true;
    err = llhttp_execute(&ex->resp.parser, p, n);
    if (err == HPE_PAUSED && ex->resp.parser.status_code == 101) {
        at = llhttp_get_error_pos(&ex->resp.parser); /* the tunnel's first */
        ex_tunnel_start(ex, at, (size_t)(p + n - at));
        return;
    }
    if (err == HPE_PAUSED) {
        /* bytes after the response: the connection is not reusable */
        if (llhttp_get_error_pos(&ex->resp.parser) != p + n)
            ex->up_keep_alive = false;
        upstream_done(ex);
        ex_parse(ex);
        return;
    }
    if (err != HPE_OK) {
        log_msg(LOG_WARN, "bad response from the upstream: %s",
                llhttp_errno_name(err));
        ex_resp_upstream_failed(ex, 502, true);
        ex_parse(ex);
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
    ex_resp_release_upstream(ex, false);
    if (ex_resp_forward(ex) != 0)
        ex_resp_upstream_failed(ex, 502, false);
    return true;
}

void ex_upstream_closed(struct exchange *ex, struct ex_up_end how)
{
    if (ex->up == EX_UP_NONE)
        return;
    if (ex->phase == EX_TUNNEL) {
        ex_tunnel_closed(ex);
        return;
    }
    if (ex->up_got_bytes && llhttp_finish(&ex->resp.parser) == HPE_OK &&
        ex->up == EX_UP_BODY) {
        ex->up_keep_alive = false; /* the body ended with the connection */
        upstream_done(ex);
    } else if (!retry(ex, how)) {
        ex_resp_upstream_failed(
            ex, 502, ex->up_got_bytes || (how.connected && how.sent));
    }
    ex_parse(ex);
}

void ex_upstream_drained(struct exchange *ex)
{
    if (ex->in_paused) {
        ex->in_paused = false;
        ex_parse(ex);
    }
}
