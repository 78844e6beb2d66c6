/* HTTP heads and small responses; see http.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "target.h"

void http_head_init(struct http_head *h, size_t max_bytes, unsigned max_fields)
{
    memset(h, 0, sizeof(*h));
    h->max_bytes = max_bytes;
    h->max_fields = max_fields;
}

void http_head_reset(struct http_head *h)
{
    h->len = 0;
    h->method_off = h->method_len = 0;
    h->target_off = h->target_len = 0;
    h->nfields = 0;
    h->in_value = false;
    h->full = false;
    h->bad_name = false;
    h->name_lens = 0;
    h->origin_off = h->origin_len = 0;
    h->authority_off = h->authority_len = 0;
}

void http_head_deinit(struct http_head *h)
{
    free(h->bytes);
    free(h->fields);
    free(h->views);
    memset(h, 0, sizeof(*h));
}

/* Room for len more bytes; -1 past max_bytes or without memory. */
static int reserve(struct http_head *h, size_t len)
{
    size_t cap;
    char *p;

    if (len > h->max_bytes - h->len) {
        h->full = true;
        return -1;
    }
    if (h->len + len > h->cap) {
        cap = h->cap ? h->cap : 512;
        while (cap < h->len + len)
            cap *= 2;
        p = realloc(h->bytes, cap);
        if (!p)
            return -1;
        h->bytes = p;
        h->cap = cap;
    }
    return 0;
}

/* Append bytes; -1 past max_bytes or without memory. */
static int append(struct http_head *h, const char *at, size_t len)
{
    if (reserve(h, len) != 0)
        return -1;
    memcpy(h->bytes + h->len, at, len);
    h->len += len;
    return 0;
}

int http_head_method(struct http_head *h, const char *at, size_t len)
{
    if (h->method_len == 0)
        h->method_off = h->len;
    if (append(h, at, len) != 0)
        return -1;
    h->method_len += len;
    return 0;
}

int http_head_target(struct http_head *h, const char *at, size_t len)
{
    if (h->target_len == 0)
        h->target_off = h->len;
    if (append(h, at, len) != 0)
        return -1;
    h->target_len += len;
    return 0;
}

/* A name length's bit in name_lens. */
static uint64_t len_bit(size_t len)
{
    return (uint64_t)1 << (len & 63);
}

/* Start a new field: -1 past max_fields or without memory. */
static int new_field(struct http_head *h)
{
    struct http_field *f;
    unsigned cap;

    if (h->nfields == h->max_fields) {
        h->full = true;
        return -1;
    }
    if (h->nfields == h->fields_cap) {
        cap = h->fields_cap ? 2 * h->fields_cap : 16;
        f = realloc(h->fields, cap * sizeof(*f));
        if (!f)
            return -1;
        h->fields = f;
        h->fields_cap = cap;
    }
    h->fields[h->nfields++] = (struct http_field){ h->len, 0, h->len, 0 };
    return 0;
}

int http_head_field(struct http_head *h, const char *at, size_t len)
{
    if (!idem_header_is_token(at, len)) {
        h->bad_name = true;
        return -1;
    }
    if ((h->in_value || h->nfields == 0) && new_field(h) != 0)
        return -1;
    h->in_value = false;
    if (append(h, at, len) != 0)
        return -1;
    h->fields[h->nfields - 1].name_len += len;
    h->fields[h->nfields - 1].value_off = h->len;
    h->name_lens |= len_bit(h->fields[h->nfields - 1].name_len);
    return 0;
}

int http_head_value(struct http_head *h, const char *at, size_t len)
{
    if (h->nfields == 0)
        return -1;
    h->in_value = true;
    if (append(h, at, len) != 0)
        return -1;
    h->fields[h->nfields - 1].value_len += len;
    return 0;
}

/* -- Reading requests --------------------------------------------------- */

static int head_piece(llhttp_t *p, int rc)
{
    struct http_reader *r = http_reader_of(p);

    if (rc == 0)
        return 0;
    r->oom = !r->head.full && !r->head.bad_name;
    llhttp_set_error_reason(p, r->oom             ? "out of memory"
                               : r->head.bad_name ? "invalid header name"
                                                  : "head too large");
    return HPE_USER;
}

int http_on_method(llhttp_t *p, const char *at, size_t len)
{
    return head_piece(p, http_head_method(&http_reader_of(p)->head, at, len));
}

int http_on_url(llhttp_t *p, const char *at, size_t len)
{
    return head_piece(p, http_head_target(&http_reader_of(p)->head, at, len));
}

int http_on_field(llhttp_t *p, const char *at, size_t len)
{
    return head_piece(p, http_head_field(&http_reader_of(p)->head, at, len));
}

/* llhttp joins an obs-fold continuation ("X-A: a CRLF SP b") into one
 * value. A second piece of one value that follows a line feed in the input
 * is a fold, while one that merely starts a new input chunk is not. */
static bool folded(const struct http_reader *r, const char *at)
{
    if (!r->value_started)
        return false;
    return at > r->chunk ? at[-1] == '\n' : r->chunk_ended_lf;
}

int http_on_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_reader *r = http_reader_of(p);

    if (folded(r, at)) {
        llhttp_set_error_reason(p, "obs-fold in a header");
        return HPE_USER;
    }
    r->value_started = true;
    return head_piece(p, http_head_value(&r->head, at, len));
}

int http_on_value_complete(llhttp_t *p)
{
    http_reader_of(p)->value_started = false;
    return 0;
}

void http_reader_init(struct http_reader *r, const llhttp_settings_t *s,
                      size_t max_head_bytes, unsigned max_fields, void *data)
{
    memset(r, 0, sizeof(*r));
    llhttp_init(&r->parser, HTTP_REQUEST, s);
    http_head_init(&r->head, max_head_bytes, max_fields);
    r->data = data;
}

void http_reader_deinit(struct http_reader *r)
{
    http_head_deinit(&r->head);
}

enum llhttp_errno http_reader_execute(struct http_reader *r, const char *data,
                                      size_t len, size_t *used_out)
{
    enum llhttp_errno err;
    size_t used;

    r->chunk = data;
    err = llhttp_execute(&r->parser, data, len);
    used =
        err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&r->parser) - data);
    if (used)
        r->chunk_ended_lf = data[used - 1] == '\n';
    *used_out = used;
    return err;
}

/* Why the head's Host fields are refused, or NULL: none in HTTP/1.1
 * (HTTP/1.0 may leave it out), more than one, or a value that is not a
 * host[:port] (RFC 9112 §3.2). */
static const char *host_refusal(const struct http_reader *r)
{
    const struct http_head *h = &r->head;
    bool http11 = r->parser.http_major > 1 ||
                  (r->parser.http_major == 1 && r->parser.http_minor >= 1);
    unsigned n = http_head_count(h, "Host");
    size_t len = 0;
    const char *v = http_head_get(h, "Host", &len);

    if (n > 1)
        return "the request has more than one Host header";
    if (n == 0)
        return http11 ? "the request has no Host header" : NULL;
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--; /* llhttp keeps trailing white space */
    return target_authority_ok(v, len) ? NULL : "the Host header is not valid";
}

/* Point the head's origin_* and authority_* at what t judged: inside the
 * target, except an empty path's "/" and query, written after the head's
 * bytes (never in place: the log shows the target as it came). */
static int set_origin(struct http_head *h, const struct target *t)
{
    size_t from = h->target_off + t->path_off;
    size_t rest = h->target_len - t->path_off;

    h->authority_off = h->target_off + t->authority_off;
    h->authority_len = t->authority_len;
    h->origin_off = from;
    h->origin_len = rest;
    if (!t->slash)
        return 0;
    if (reserve(h, 1 + rest) != 0)
        return -1;
    h->origin_off = h->len;
    h->origin_len = 1 + rest;
    h->bytes[h->len] = '/';
    memcpy(h->bytes + h->len + 1, h->bytes + from, rest);
    h->len += 1 + rest;
    return 0;
}

unsigned http_reader_judge(struct http_reader *r, const char **why_out)
{
    struct http_head *h = &r->head;
    const char *why = NULL;
    struct target t;

    if (r->parser.method == HTTP_CONNECT)
        why = "CONNECT is not supported"; /* no tunnels */
    else if (target_parse(h->bytes + h->target_off, h->target_len,
                          r->parser.method == HTTP_OPTIONS, &t, &why) == 0)
        why = host_refusal(r);
    if (why) {
        *why_out = why;
        return 400;
    }
    if (set_origin(h, &t) == 0)
        return 0;
    *why_out = h->full ? "the request head is too large" : "out of memory";
    return h->full ? 431 : 503;
}

int http_on_response_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_response *r = (struct http_response *)(void *)p;

    return http_head_field(&r->head, at, len) == 0 ? 0 : HPE_USER;
}

int http_on_response_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_response *r = (struct http_response *)(void *)p;

    return http_head_value(&r->head, at, len) == 0 ? 0 : HPE_USER;
}

const struct idem_header *http_head_views(struct http_head *h)
{
    struct idem_header *v;
    unsigned i;

    if (h->nfields == 0)
        return NULL;
    if (h->nfields > h->views_cap) {
        v = realloc(h->views, h->fields_cap * sizeof(*v));
        if (!v)
            return NULL;
        h->views = v;
        h->views_cap = h->fields_cap;
    }
    v = h->views;
    for (i = 0; i < h->nfields; i++) {
        const struct http_field *f = &h->fields[i];

        v[i] = (struct idem_header){ h->bytes + f->name_off, f->name_len,
                                     h->bytes + f->value_off, f->value_len };
    }
    return v;
}

const char *http_head_getn(const struct http_head *h, const char *name,
                           size_t len, size_t *len_out)
{
    unsigned i;

    if (!(h->name_lens & len_bit(len)))
        return NULL;
    for (i = 0; i < h->nfields; i++) {
        const struct http_field *f = &h->fields[i];

        if (http_name_is(h->bytes + f->name_off, f->name_len, name, len)) {
            *len_out = f->value_len;
            return h->bytes + f->value_off;
        }
    }
    return NULL;
}

unsigned http_head_count(const struct http_head *h, const char *name)
{
    size_t len = strlen(name);
    unsigned i, n = 0;

    if (!(h->name_lens & len_bit(len)))
        return 0;
    for (i = 0; i < h->nfields; i++)
        n += http_name_is(h->bytes + h->fields[i].name_off,
                          h->fields[i].name_len, name, len);
    return n;
}

const char *http_connection(const struct http_head *h, size_t *len_out)
{
    const char *v = http_head_get(h, "Connection", len_out);

    return v && idem_header_list_only(v, *len_out, "keep-alive", 10) ? NULL : v;
}

bool http_hop_by_hop(const struct http_head *h, const struct http_field *f,
                     const char *conn, size_t conn_len)
{
    const char *name = h->bytes + f->name_off;

    if (idem_header_is_hop_by_hop(name, f->name_len))
        return true;
    return conn && idem_header_list_has(conn, conn_len, name, f->name_len);
}

int http_add_field(struct buf *out, const struct http_head *h,
                   const struct http_field *f)
{
    return buf_add_field(out, h->bytes + f->name_off, f->name_len,
                         h->bytes + f->value_off, f->value_len);
}

const char *http_reason(unsigned status)
{
    static const struct {
        unsigned status;
        const char *reason;
    } reasons[] = {
        { 100, "Continue" },
        { 101, "Switching Protocols" },
        { 103, "Early Hints" },
        { 200, "OK" },
        { 201, "Created" },
        { 202, "Accepted" },
        { 204, "No Content" },
        { 301, "Moved Permanently" },
        { 302, "Found" },
        { 304, "Not Modified" },
        { 400, "Bad Request" },
        { 401, "Unauthorized" },
        { 403, "Forbidden" },
        { 404, "Not Found" },
        { 405, "Method Not Allowed" },
        { 408, "Request Timeout" },
        { 409, "Conflict" },
        { 413, "Content Too Large" },
        { 422, "Unprocessable Content" },
        { 425, "Too Early" },
        { 429, "Too Many Requests" },
        { 431, "Request Header Fields Too Large" },
        { 500, "Internal Server Error" },
        { 502, "Bad Gateway" },
        { 503, "Service Unavailable" },
        { 504, "Gateway Timeout" },
    };
    size_t i;

    for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].status == status)
            return reasons[i].reason;
    return "Unknown";
}

int http_status_line(struct buf *out, unsigned status)
{
    return buf_addl(out, "HTTP/1.1 ") || buf_add_u64(out, status) ||
                   buf_addl(out, " ") || buf_adds(out, http_reason(status)) ||
                   buf_addl(out, "\r\n")
               ? -1
               : 0;
}

const char *http_date(void)
{
    static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed",
                                     "Thu", "Fri", "Sat" };
    static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr",
                                        "May", "Jun", "Jul", "Aug",
                                        "Sep", "Oct", "Nov", "Dec" };
    static _Thread_local char buf[64] = "Thu, 01 Jan 1970 00:00:00 GMT";
    static _Thread_local time_t cached = -1;
    time_t now = time(NULL);
    struct tm tm;

    if (now == cached || !gmtime_r(&now, &tm))
        return buf;
    /* not strftime: %a and %b follow the locale */
    snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT",
             days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached = now;
    return buf;
}

int http_date_line(struct buf *out)
{
    return buf_addl(out, "Date: ") || buf_adds(out, http_date()) ||
                   buf_addl(out, "\r\n")
               ? -1
               : 0;
}

int http_respond(struct buf *out, unsigned status, const char *ctype,
                 const char *extra, const void *body, size_t len, bool close)
{
    bool ok = http_status_line(out, status) == 0 && http_date_line(out) == 0;

    if (ok && ctype)
        ok = buf_add_field(out, "Content-Type", 12, ctype, strlen(ctype)) == 0;
    ok = ok && buf_addl(out, "Content-Length: ") == 0 &&
         buf_add_u64(out, len) == 0 && buf_addl(out, "\r\n") == 0 &&
         (!close || buf_addl(out, "Connection: close\r\n") == 0) &&
         (!extra || buf_adds(out, extra) == 0) && buf_addl(out, "\r\n") == 0;
    return ok && buf_add(out, body, len) == 0 ? 0 : -1;
}

/* Append s to out as the inside of a JSON string. */
static int json_escape(struct buf *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char esc[6] = { '\\', 'u', '0', '0' };
    int rc = 0;

    for (; *s && rc == 0; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            rc = buf_add(out, esc, 2);
        } else if (c < 0x20) {
            esc[1] = 'u';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            rc = buf_add(out, esc, 6);
        } else {
            rc = buf_add(out, s, 1);
        }
    }
    return rc;
}

int http_problem(struct buf *out, unsigned status, const char *detail,
                 unsigned retry_after_s, bool close)
{
    return http_problem_typed(out, status, "about:blank", detail, retry_after_s,
                              close);
}

int http_problem_typed(struct buf *out, unsigned status, const char *type,
                       const char *detail, unsigned retry_after_s, bool close)
{
    struct buf body = { 0 };
    char extra[64] = "";
    int rc = buf_addl(&body, "{\"type\":\"") || buf_adds(&body, type) ||
             buf_addl(&body, "\",\"title\":\"") ||
             buf_adds(&body, http_reason(status)) ||
             buf_addl(&body, "\",\"status\":") || buf_add_u64(&body, status);

    if (rc == 0 && detail)
        rc = buf_addl(&body, ",\"detail\":\"") || json_escape(&body, detail) ||
             buf_addl(&body, "\"");
    rc = rc || buf_addl(&body, "}\n");
    if (retry_after_s)
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", retry_after_s);
    if (rc == 0)
        rc = http_respond(out, status, "application/problem+json", extra,
                          buf_bytes(&body), buf_len(&body), close);
    buf_free(&body);
    return rc;
}
