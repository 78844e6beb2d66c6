/* h2_request: an HTTP/2 request as the exchange reads it. HEADERS
 * become an HTTP/1.1 head (pseudo-headers checked and turned into the
 * request line and Host, fields joined into lines) and DATA its body,
 * chunked when no content-length came; each piece marks its stream dirty
 * for session_sync to run. */
#include <stdlib.h>
#include <string.h>

#include "exchange.h"
#include "h2_internal.h"

/* -- The request: frames into HTTP/1.1 bytes for the exchange ----------- */

/* Give the exchange the request bytes waiting, and the client the window
 * they took. */
void h2_feed_request(struct h2_stream *st)
{
    size_t n = st->unconsumed;

    ex_client_data(&st->c.ex, buf_bytes(&st->in), buf_len(&st->in));
    buf_trim(&st->in);
    st->unconsumed = 0;
    if (n && h2_attached(st))
        nghttp2_session_consume_stream(st->s->session, st->id, n);
}

/* The header block is whole: the request line, Host from :authority, the
 * fields, how the body is framed (chunked when it has no length), and
 * Connection: close (one request per stream: the exchange then ends it
 * after its answer). */
int h2_request_head(struct h2_stream *st, bool ended)
{
    const char *ps = buf_bytes(&st->pseudo);
    struct buf *in = &st->in;
    bool ok;

    st->head_only = st->m_len == 4 && memcmp(ps + st->m_off, "HEAD", 4) == 0;
    st->chunked = !ended && !st->has_length;
    ok = buf_add(in, ps + st->m_off, st->m_len) == 0 &&
         buf_addl(in, " ") == 0 &&
         buf_add(in, ps + st->p_off, st->p_len) == 0 &&
         buf_addl(in, " HTTP/1.1\r\n") == 0;
    if (ok && st->a_len)
        ok = buf_add_field(in, "Host", 4, ps + st->a_off, st->a_len) == 0;
    ok =
        ok && buf_add(in, buf_bytes(&st->fields), buf_len(&st->fields)) == 0 &&
        (!st->chunked || buf_addl(in, "Transfer-Encoding: chunked\r\n") == 0) &&
        buf_addl(in, "Connection: close\r\n\r\n") == 0;
    buf_free(&st->fields);
    buf_free(&st->pseudo);
    h2_mark_dirty(st);
    return ok ? 0 : -1;
}

void h2_end_body(struct h2_stream *st)
{
    if (st->chunked && buf_addl(&st->in, "0\r\n\r\n") != 0)
        h2_stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    h2_mark_dirty(st);
}

/* Whether a pseudo-header value can go into a request line: no control
 * bytes, no spaces (nghttp2 checks too; this keeps the line whole). */
static bool line_safe(const uint8_t *v, size_t len, bool space_ok)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (v[i] < 0x20 || v[i] == 0x7f || (v[i] == ' ' && !space_ok))
            return false;
    return true;
}

static int pseudo(struct h2_stream *st, const uint8_t *name, size_t nlen,
                  const uint8_t *value, size_t vlen)
{
    size_t off = buf_len(&st->pseudo);
    size_t *o = NULL, *l = NULL;

    if (nlen == 7 && memcmp(name, ":method", 7) == 0)
        o = &st->m_off, l = &st->m_len;
    else if (nlen == 5 && memcmp(name, ":path", 5) == 0)
        o = &st->p_off, l = &st->p_len;
    else if (nlen == 10 && memcmp(name, ":authority", 10) == 0)
        o = &st->a_off, l = &st->a_len;
    if (!o)
        return 0; /* :scheme */
    if (!line_safe(value, vlen, false) ||
        buf_add(&st->pseudo, value, vlen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    *o = off;
    *l = vlen;
    st->head_bytes += vlen + (o == &st->a_off ? 4 : 0); /* "Host" */
    return 0;
}

int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame,
                 const uint8_t *name, size_t nlen, const uint8_t *value,
                 size_t vlen, uint8_t flags, void *ud)
{
    struct h2_stream *st =
        nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    const struct config *cfg = h2_cfg_of(ud);

    (void)flags;
    if (!st || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers are not forwarded */
    /* past a limit the rest is dropped: what was kept already passes it,
     * and the exchange answers 431 as it does over HTTP/1.1 */
    if (st->head_bytes > cfg->max_header_bytes ||
        st->nfields > cfg->max_headers)
        return 0;
    if (nlen && name[0] == ':')
        return pseudo(st, name, nlen, value, vlen);
    if (st->a_len && nlen == 4 && memcmp(name, "host", 4) == 0)
        return 0; /* :authority is the Host (RFC 9113 §8.3.1) */
    st->has_length = st->has_length ||
                     (nlen == 14 && memcmp(name, "content-length", 14) == 0);
    st->head_bytes += nlen + vlen;
    st->nfields++;
    if (buf_add_field(&st->fields, (const char *)name, nlen,
                      (const char *)value, vlen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

int h2_on_data(nghttp2_session *session, uint8_t flags, int32_t id,
               const uint8_t *data, size_t len, void *ud)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, id);
    struct buf *in;

    (void)flags;
    (void)ud;
    /* the connection's window is given back at once: the streams' own
     * windows bound what waits for the exchanges */
    nghttp2_session_consume_connection(session, len);
    if (!st || len == 0)
        return 0;
    in = &st->in;
    if ((st->chunked && (buf_add_hex(in, len) || buf_addl(in, "\r\n"))) ||
        buf_add(in, data, len) || (st->chunked && buf_addl(in, "\r\n")))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->unconsumed += len;
    h2_mark_dirty(st);
    return 0;
}
