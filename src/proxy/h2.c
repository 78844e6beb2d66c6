/* h2.h: HTTP/2 connections and their streams. The session (nghttp2, fed
 * and drained in memory) lives on the connection's conn; each stream is a
 * conn of its own (CONN_STREAM) whose exchange gets the request as
 * HTTP/1.1 bytes and whose HTTP/1.1 response is parsed back into frames.
 * nghttp2's callbacks only collect and mark streams dirty; the streams
 * run after nghttp2 returns, in session_sync, the one place that reads,
 * writes, closes and frees. */
#include "h2.h"
#include "h2_internal.h"

#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "conn.h"
#include "exchange.h"
#include "http.h"
#include "log.h"
#include "upstream.h"
#include "worker.h"

/* Reads one session_sync does before letting other connections run. */
#define H2_READS_PER_SYNC 16

static void session_sync(struct h2_session *s);

static void stream_free(struct h2_stream *st)
{
    struct h2_session *s = st->s;

    /* still open: a cut answer (or an exchange that gave up on it) */
    h2_stream_reset(st, st->complete ? NGHTTP2_CANCEL : NGHTTP2_INTERNAL_ERROR);
    if (st->dirty)
        TAILQ_REMOVE(&s->dirty, st, dirty_link);
    LIST_REMOVE(st, link);
    s->nstreams--;
    conn_stream_deinit(&st->c);
    buf_free(&st->pseudo);
    buf_free(&st->fields);
    buf_free(&st->in);
    buf_free(&st->out);
    http_head_deinit(&st->resp.head);
    free(st);
}

/* -- The response: HTTP/1.1 from the exchange, read back into frames ----- */

static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *dst,
                         size_t len, uint32_t *flags, nghttp2_data_source *src,
                         void *ud)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, id);
    size_t n;

    (void)src;
    (void)ud;
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    n = buf_len(&st->out) < len ? buf_len(&st->out) : len;
    memcpy(dst, buf_bytes(&st->out), n);
    buf_consume(&st->out, n);
    if (n) {
        h2_mark_dirty(st); /* room to read more of its response */
        st->s->progress_ms = worker_now_ms();
    }
    if (buf_len(&st->out) == 0 && st->complete) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    if (n == 0) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static void nv_set(nghttp2_nv *nv, const char *name, size_t nlen,
                   const char *value, size_t vlen)
{
    nv->name = (uint8_t *)(uintptr_t)name;
    nv->namelen = nlen;
    nv->value = (uint8_t *)(uintptr_t)value;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NONE; /* nghttp2 copies them */
}

/* HEADERS from the parsed response head: the status, then its fields
 * minus the connection-specific ones (RFC 9113 §8.2.2), names in lower
 * case; the body follows from st->out. */
static int submit_response(struct h2_stream *st)
{
    struct http_head *h = &st->resp.head;
    nghttp2_nv nva[EX_RESPONSE_FIELDS_MAX + 1];
    nghttp2_data_provider body = { .read_callback = read_body };
    char status[8];
    size_t n = 0, conn_len = 0, i, j;
    const char *conn = http_connection(h, &conn_len);
    const struct http_field *f;

    snprintf(status, sizeof(status), "%u", st->resp.parser.status_code % 1000);
    nv_set(&nva[n++], ":status", 7, status, strlen(status));
    for (i = 0; i < h->nfields && n < EX_RESPONSE_FIELDS_MAX + 1; i++) {
        f = &h->fields[i];
        if (http_hop_by_hop(h, f, conn, conn_len))
            continue;
        for (j = 0; j < f->name_len; j++)
            if (h->bytes[f->name_off + j] >= 'A' &&
                h->bytes[f->name_off + j] <= 'Z')
                h->bytes[f->name_off + j] += 'a' - 'A';
        nv_set(&nva[n++], h->bytes + f->name_off, f->name_len,
               h->bytes + f->value_off, f->value_len);
    }
    return nghttp2_submit_response(st->s->session, st->id, nva, n, &body);
}

static int on_rheaders_complete(llhttp_t *p)
{
    struct h2_stream *st = p->data;

    if (p->status_code < 200)
        return 0; /* interim (100, 103): not relayed over HTTP/2 */
    if (submit_response(st) != 0)
        return -1;
    return st->head_only ? 1 : 0; /* 1: a HEAD response has no body */
}

static int on_rbody(llhttp_t *p, const char *at, size_t len)
{
    struct h2_stream *st = p->data;

    return buf_add(&st->out, at, len) == 0 ? 0 : -1;
}

static int on_rmessage_complete(llhttp_t *p)
{
    struct h2_stream *st = p->data;

    if (p->status_code < 200) {
        http_head_reset(&st->resp.head);
        return 0; /* the final response follows */
    }
    st->complete = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t response_settings = {
    HTTP_RESPONSE_CALLBACKS,
    .on_headers_complete = on_rheaders_complete,
    .on_body = on_rbody,
    .on_message_complete = on_rmessage_complete,
};

/* Parse what the exchange wrote for the client into st's frames, while
 * st->out has room (so a client slower than the upstream leaves bytes in
 * client_out, and the exchange's own backpressure stops the upstream).
 * true if it did anything. */
static bool pump_response(struct h2_stream *st)
{
    struct buf *o = &st->c.ex.client_out;
    size_t n, room;
    enum llhttp_errno err;
    bool did = false;

    while (buf_len(o) && !st->complete && h2_attached(st) &&
           buf_len(&st->out) < H2_STREAM_OUT) {
        room = H2_STREAM_OUT - buf_len(&st->out);
        n = buf_len(o) < room ? buf_len(o) : room;
        err = llhttp_execute(&st->resp.parser, buf_bytes(o), n);
        did = true;
        if (err == HPE_PAUSED) {
            buf_clear(o); /* nothing follows the one response */
        } else if (err != HPE_OK) {
            log_msg(LOG_WARN, "HTTP/2: cannot relay a response: %s",
                    llhttp_errno_name(err));
            h2_stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        } else {
            buf_consume(o, n);
        }
    }
    if (st->complete && buf_len(o))
        buf_clear(o);
    if (did && st->deferred && h2_attached(st)) {
        st->deferred = false;
        nghttp2_session_resume_data(st->s->session, st->id);
    }
    return did;
}

/* A client reset: one token of the rapid-reset budget (CVE-2023-44487),
 * --h2-max-resets a second; spent, the connection ends with GOAWAY
 * ENHANCE_YOUR_CALM. */
static void count_reset(struct h2_session *s)
{
    unsigned rate = h2_cfg_of(s)->h2_max_resets;
    int64_t now = worker_now_ms();
    uint64_t add = (uint64_t)(now - s->reset_ms) * rate / 1000;

    if (add) {
        s->reset_tokens = s->reset_tokens + add > rate
                              ? rate
                              : s->reset_tokens + (unsigned)add;
        s->reset_ms = now;
    }
    if (s->reset_tokens > 0) {
        s->reset_tokens--;
        return;
    }
    log_msg(LOG_WARN,
            "HTTP/2 client %s: too many stream resets "
            "(--h2-max-resets): GOAWAY",
            s->conn->ex.client);
    nghttp2_session_terminate_session(s->session, NGHTTP2_ENHANCE_YOUR_CALM);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                         void *ud)
{
    struct h2_stream *st =
        nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    bool ended = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;

    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        count_reset(ud);
        return 0;
    }
    if (!st ||
        (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA))
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS &&
        frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        return h2_request_head(st, ended) == 0
                   ? 0
                   : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (ended)
        h2_end_body(st);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t code,
                           void *ud)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, id);

    (void)code;
    (void)ud;
    if (st) {
        st->id = 0; /* the exchange hears it, and may go on for the store */
        h2_mark_dirty(st);
    }
    return 0;
}

/* -- A stream's exchange ------------------------------------------------- */

/* conn_sync for a stream: act on what its exchange wants until nothing
 * moves. Frees st when the exchange is done. */
static void stream_run(struct h2_stream *st)
{
    struct conn *c = &st->c;
    struct ex_wants want;

    for (;;) {
        want = ex_wants(&c->ex);
        if (want.end == EX_END_FREE) {
            stream_free(st);
            return;
        }
        if (upstream_sync(c, want.read_upstream))
            continue;
        if (!h2_attached(st)) {
            if (c->ex.client_gone)
                return; /* it goes on for the store, or ends on its own */
            ex_client_gone(&c->ex);
            continue;
        }
        if (want.end == EX_END_DROP) {
            h2_stream_reset(st, NGHTTP2_INTERNAL_ERROR); /* a cut answer */
            continue;
        }
        if (pump_response(st))
            continue;
        if (c->ex.up_paused && buf_len(&c->ex.client_out) <= EX_LOW) {
            ex_client_drained(&c->ex); /* the upstream may go on */
            continue;
        }
        if (want.read_client && buf_len(&st->in)) {
            h2_feed_request(st);
            continue;
        }
        if (want.end != EX_END_NONE && buf_len(&c->ex.client_out) == 0 &&
            !st->complete) {
            h2_stream_reset(st, NGHTTP2_INTERNAL_ERROR); /* a cut answer */
            continue;
        }
        return;
    }
}

static bool run_dirty(struct h2_session *s)
{
    struct h2_stream *st;
    bool did = false;

    while ((st = TAILQ_FIRST(&s->dirty))) {
        TAILQ_REMOVE(&s->dirty, st, dirty_link);
        st->dirty = false;
        stream_run(st);
        did = true;
    }
    return did;
}

/* -- The connection ------------------------------------------------------ */

/* Frames into client_out, up to H2_CONN_OUT queued. */
static void produce(struct h2_session *s)
{
    struct buf *o = &s->conn->ex.client_out;
    const uint8_t *p;
    ssize_t n;

    while (s->session && buf_len(o) < H2_CONN_OUT) {
        n = nghttp2_session_mem_send(s->session, &p);
        if (n <= 0 || buf_add(o, p, (size_t)n) != 0) {
            if (n != 0)
                s->dead = true;
            return;
        }
    }
}

/* The client is gone (closed, failed, or the session ended): every
 * stream's exchange hears it, and the session goes. */
static void client_gone(struct h2_session *s)
{
    struct h2_stream *st;

    conn_close(s->conn);
    buf_clear(&s->conn->ex.client_out);
    LIST_FOREACH(st, &s->streams, link)
    {
        st->id = 0;
        h2_mark_dirty(st);
    }
    nghttp2_session_del(s->session);
    s->session = NULL;
    event_del(&s->idle);
    event_del(&s->stall);
}

static bool may_read(const struct h2_session *s)
{
    return s->session && !s->dead && nghttp2_session_want_read(s->session) &&
           buf_len(&s->conn->ex.client_out) < H2_CONN_OUT &&
           /* streams the client reset go on for the store: they count */
           s->nstreams < 2 * h2_cfg_of(s)->h2_max_streams;
}

static bool session_over(const struct h2_session *s)
{
    return s->dead || (!nghttp2_session_want_read(s->session) &&
                       !nghttp2_session_want_write(s->session));
}

static void idle_timer(struct h2_session *s)
{
    int64_t ms = h2_cfg_of(s)->client_timeout_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    bool pending = event_pending(&s->idle, EV_TIMEOUT, NULL);

    if (s->session && LIST_EMPTY(&s->streams) && !pending)
        event_add(&s->idle, &tv);
    else if ((!s->session || !LIST_EMPTY(&s->streams)) && pending)
        event_del(&s->idle);
}

/* Whether a response waits for the client: bytes its windows keep. */
static bool output_waits(const struct h2_session *s)
{
    const struct h2_stream *st;

    LIST_FOREACH(st, &s->streams, link)
    if (h2_attached(st) && buf_len(&st->out))
        return true;
    return false;
}

/* A client that keeps its flow-control windows shut holds its streams
 * and their upstream connections (paused: the backpressure) as long as
 * it likes; the socket's write deadline never runs, the socket is not
 * full. While responses wait, --client-timeout without a byte leaving
 * closes the connection (the exchanges go on for the store). */
static void stall_timer(struct h2_session *s)
{
    int64_t ms = h2_cfg_of(s)->client_timeout_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    bool pending = event_pending(&s->stall, EV_TIMEOUT, NULL);
    bool waits = s->session && output_waits(s);

    if (waits && !pending) {
        s->progress_ms = worker_now_ms();
        event_add(&s->stall, &tv);
    } else if (!waits && pending) {
        event_del(&s->stall);
    }
}

/* One step of session_sync: the client gone, frames produced and
 * written, the dirty streams run, the session over, or one read (at most
 * H2_READS_PER_SYNC a sync). true: something was done (look again). */
static bool session_step(struct h2_session *s, unsigned *reads)
{
    struct conn *c = s->conn;

    if (c->fd < 0 && s->session) {
        client_gone(s);
        return true;
    }
    if (c->fd >= 0) {
        produce(s);
        if (!conn_flush(c)) {
            client_gone(s);
            return true;
        }
    }
    if (run_dirty(s))
        return true;
    if (c->fd >= 0 && buf_len(&c->ex.client_out) == 0 && session_over(s)) {
        client_gone(s);
        return true;
    }
    if (c->fd < 0 || !c->readable || !may_read(s))
        return false;
    if (++*reads > H2_READS_PER_SYNC) {
        event_active(&c->ev, EV_READ, 0); /* the others' turn */
        return false;
    }
    if (!conn_read(c))
        client_gone(s);
    return true;
}

static void session_sync(struct h2_session *s)
{
    struct conn *c = s->conn;
    unsigned reads = 0;

    if (c->syncing)
        return; /* the running one looks again */
    c->syncing = true;
    while (session_step(s, &reads))
        continue;
    c->syncing = false;
    idle_timer(s);
    stall_timer(s);
    worker_log_pending(c->w);
    if (c->fd < 0 && LIST_EMPTY(&s->streams))
        conn_discard(c);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    struct h2_session *s = arg;

    (void)fd;
    (void)what;
    if (s->session)
        nghttp2_session_terminate_session(s->session, NGHTTP2_NO_ERROR);
    session_sync(s);
}

static void on_stall(evutil_socket_t fd, short what, void *arg)
{
    static struct log_limit limit;
    struct h2_session *s = arg;
    int64_t ms = h2_cfg_of(s)->client_timeout_ms;
    int64_t quiet = worker_now_ms() - s->progress_ms;
    struct timeval tv;

    (void)fd;
    (void)what;
    if (!s->session || !output_waits(s))
        return;
    if (quiet < ms) { /* bytes left meanwhile: wait the rest */
        tv.tv_sec = (ms - quiet) / 1000;
        tv.tv_usec = ((ms - quiet) % 1000) * 1000;
        event_add(&s->stall, &tv);
        return;
    }
    log_limited(&limit, LOG_WARN,
                "HTTP/2 client %s read no response for --client-timeout: "
                "closing its connection",
                s->conn->ex.client);
    client_gone(s);
    session_sync(s);
}

void h2_sync(struct conn *c)
{
    struct h2_stream *st;

    if (c->proto == CONN_STREAM) {
        st = (struct h2_stream *)(void *)c;
        h2_mark_dirty(st);
        session_sync(st->s); /* runs it (and may free it) */
        return;
    }
    if (!c->h2) { /* h2_start failed */
        conn_discard(c);
        return;
    }
    session_sync(c->h2);
}

/* A new request stream: a conn of its own, its response parser ready. */
static int on_begin_headers(nghttp2_session *session,
                            const nghttp2_frame *frame, void *ud)
{
    struct h2_session *s = ud;
    struct h2_stream *st;

    if (frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    st = calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    conn_stream_init(&st->c, s->conn);
    st->c.ex.protocol = "HTTP/2";
    st->s = s;
    st->id = frame->hd.stream_id;
    llhttp_init(&st->resp.parser, HTTP_RESPONSE, &response_settings);
    st->resp.parser.data = st;
    http_head_init(&st->resp.head, EX_RESPONSE_HEAD_MAX,
                   EX_RESPONSE_FIELDS_MAX);
    LIST_INSERT_HEAD(&s->streams, st, link);
    s->nstreams++;
    nghttp2_session_set_stream_user_data(session, st->id, st);
    return 0;
}

/* -- Starting and ending --------------------------------------------------- */

static nghttp2_session *session_new(struct h2_session *s)
{
    const struct config *cfg = h2_cfg_of(s);
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    nghttp2_session *session = NULL;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_max_streams },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_WINDOW - 1 },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
          (uint32_t)(cfg->max_header_bytes > UINT32_MAX
                         ? UINT32_MAX
                         : cfg->max_header_bytes) },
    };

    if (nghttp2_session_callbacks_new(&cb) != 0)
        return NULL;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb,
                                                            on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS);
    if (nghttp2_session_server_new2(&session, cb, s, opt) == 0 &&
        nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, iv,
                                sizeof(iv) / sizeof(iv[0])) != 0) {
        nghttp2_session_del(session);
        session = NULL;
    }
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    return session;
}

int h2_start(struct conn *c, const char *already_read, size_t n)
{
    struct h2_session *s = calloc(1, sizeof(*s));

    c->proto = CONN_HTTP2;
    conn_timer_stop(c, EX_TIMER_CLIENT); /* the session's idle rules */
    if (!s)
        return -1;
    s->conn = c;
    LIST_INIT(&s->streams);
    TAILQ_INIT(&s->dirty);
    s->reset_ms = worker_now_ms();
    s->reset_tokens = c->w->cfg->h2_max_resets;
    evtimer_assign(&s->idle, c->w->base, on_idle, s);
    evtimer_assign(&s->stall, c->w->base, on_stall, s);
    s->session = session_new(s);
    if (!s->session) {
        free(s);
        return -1;
    }
    c->h2 = s;
    h2_recv(c, already_read, n);
    return 0;
}

void h2_recv(struct conn *c, const char *p, size_t n)
{
    struct h2_session *s = c->h2;
    ssize_t rv;

    if (!s || !s->session || s->dead || n == 0)
        return;
    rv = nghttp2_session_mem_recv(s->session, (const uint8_t *)p, n);
    if (rv < 0) {
        log_msg(LOG_DEBUG, "HTTP/2 client %s: %s", c->ex.client,
                nghttp2_strerror((int)rv));
        s->dead = true;
    }
}

void h2_sniff(struct conn *c, const char *p, size_t n)
{
    size_t k = c->sniffed, m = n < H2_PREFACE_LEN - k ? n : H2_PREFACE_LEN - k;

    if (c->w->cfg->h2_max_streams == 0 || memcmp(p, &H2_PREFACE[k], m) != 0) {
        c->proto = CONN_HTTP1;
        if (k) /* the bytes held back */
            ex_client_data(&c->ex, H2_PREFACE, k);
        ex_client_data(&c->ex, p, n);
        return;
    }
    c->sniffed = (unsigned char)(k + m);
    if (c->sniffed < H2_PREFACE_LEN)
        return; /* the preface so far: wait for the rest */
    if (h2_start(c, H2_PREFACE, k) == 0)
        h2_recv(c, p, n);
}

void h2_shutdown(struct conn *c)
{
    struct h2_session *s = c->h2;

    if (s && s->session)
        nghttp2_submit_goaway(
            s->session, NGHTTP2_FLAG_NONE,
            nghttp2_session_get_last_proc_stream_id(s->session),
            NGHTTP2_NO_ERROR, NULL, 0);
    h2_sync(c);
}

void h2_free(struct conn *c)
{
    struct h2_session *s = c->h2;
    struct h2_stream *st;

    if (!s)
        return;
    while ((st = LIST_FIRST(&s->streams))) {
        st->id = 0;
        stream_free(st);
    }
    nghttp2_session_del(s->session);
    event_del(&s->idle);
    event_del(&s->stall);
    free(s);
    c->h2 = NULL;
}
