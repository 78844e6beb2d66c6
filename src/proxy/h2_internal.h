/* HTTP/2's shared parts: a session and its streams (h2.c runs them; the
 * request side, frames into HTTP/1.1 bytes for the exchange, is
 * h2_request.c) and the small helpers both use. Not used outside h2*.c. */
#ifndef IDEMPROXY_H2_INTERNAL_H
#define IDEMPROXY_H2_INTERNAL_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "buf.h"
#include "conn.h"
#include "http.h"
#include "worker.h"

struct h2_stream;

struct h2_session {
    struct conn *conn;              /* the client connection */
    nghttp2_session *session;       /* NULL once the client is gone */
    LIST_HEAD(, h2_stream) streams; /* every live stream */
    TAILQ_HEAD(, h2_stream) dirty;  /* streams to run */
    unsigned nstreams;
    struct event idle;     /* no stream for --client-timeout: GOAWAY */
    struct event stall;    /* responses waiting, none read: close */
    int64_t progress_ms;   /* when response bytes last left (or began
                            * to wait) */
    int64_t reset_ms;      /* when reset_tokens was last refilled */
    unsigned reset_tokens; /* client resets allowed before GOAWAY */
    bool dead;             /* a connection error: close once flushed */
};

struct h2_stream {
    struct conn c; /* first: its exchange, upstream and timers */
    struct h2_session *s;
    LIST_ENTRY(h2_stream) link;
    TAILQ_ENTRY(h2_stream) dirty_link;
    int32_t id; /* 0 once the stream is over for the client */
    bool dirty;
    /* The request. */
    struct buf pseudo; /* :method, :path, :authority values */
    size_t m_off, m_len, p_off, p_len, a_off, a_len;
    struct buf fields; /* "name: value\r\n" lines */
    size_t head_bytes; /* what the exchange will count of the head */
    unsigned nfields;
    bool has_length;   /* a content-length came */
    bool chunked;      /* the body goes to the exchange chunked */
    bool head_only;    /* HEAD: the response has no body */
    struct buf in;     /* HTTP/1.1 bytes for the exchange */
    size_t unconsumed; /* DATA bytes in `in`: window to give back */
    /* The response. */
    struct http_response resp; /* the exchange's HTTP/1.1 answer */
    struct buf out;            /* body bytes for DATA frames */
    bool complete;             /* the response was parsed whole */
    bool deferred;             /* the data source waits for bytes */
};

static inline const struct config *h2_cfg_of(const struct h2_session *s)
{
    return s->conn->w->cfg;
}

static inline void h2_mark_dirty(struct h2_stream *st)
{
    if (st->dirty)
        return;
    st->dirty = true;
    TAILQ_INSERT_TAIL(&st->s->dirty, st, dirty_link);
}

/* Whether the client can still be sent frames on st. */
static inline bool h2_attached(const struct h2_stream *st)
{
    return st->id != 0 && st->s->session;
}

/* End st for the client with an RST_STREAM. */
static inline void h2_stream_reset(struct h2_stream *st, uint32_t code)
{
    if (!h2_attached(st))
        return;
    nghttp2_submit_rst_stream(st->s->session, NGHTTP2_FLAG_NONE, st->id, code);
    nghttp2_session_set_stream_user_data(st->s->session, st->id, NULL);
    st->id = 0;
}

/* -- The request (h2_request.c) ---------------------------------------- */

/* Give the exchange the request bytes waiting, and the client the window
 * they took. */
void h2_feed_request(struct h2_stream *st);

/* The header block is whole: the request's HTTP/1.1 head into st->in
 * (ended: the stream ended with it). 0, or -1 out of memory. */
int h2_request_head(struct h2_stream *st, bool ended);

/* The request's body ended (END_STREAM on DATA). */
void h2_end_body(struct h2_stream *st);

/* nghttp2's receive callbacks for the request. */
int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame,
                 const uint8_t *name, size_t nlen, const uint8_t *value,
                 size_t vlen, uint8_t flags, void *ud);
int h2_on_data(nghttp2_session *session, uint8_t flags, int32_t id,
               const uint8_t *data, size_t len, void *ud);

#endif
