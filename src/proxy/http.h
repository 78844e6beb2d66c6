/* HTTP/1.1 pieces both sides of the proxy share: a message's head as
 * llhttp delivers it (method or status, target, headers, in one growable
 * byte buffer), and writing heads and small responses. */
#ifndef IDEMPROXY_HTTP_H
#define IDEMPROXY_HTTP_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "buf.h"
#include "idem/engine.h"

/* A header as offsets into its head's bytes. */
struct http_field {
    size_t name_off, name_len;
    size_t value_off, value_len;
};

/* A message head being parsed, then read. Bytes grow as llhttp hands
 * pieces over; limits are checked as they do. */
struct http_head {
    char *bytes;
    size_t len, cap;
    size_t max_bytes;    /* past it: full (431) */
    unsigned max_fields; /* past it: full (431) */
    size_t method_off, method_len;
    size_t target_off, target_len;
    struct http_field *fields;
    unsigned nfields, fields_cap;
    bool in_value;             /* the last piece was a value */
    bool full;                 /* a limit was passed */
    bool bad_name;             /* a field name is not a token */
    uint64_t name_lens;        /* bit len % 64 set for each name's length (and
                                * for each piece's, harmlessly): a lookup for a
                                * length no name has answers at once */
    struct idem_header *views; /* for the engine, built on demand */
    unsigned views_cap;        /* kept across requests, as fields are */
    /* A request's target as judged (http_reader_judge): what the engine
     * and the upstream get, and an absolute-form's authority (length 0
     * otherwise), the upstream's Host. */
    size_t origin_off, origin_len;
    size_t authority_off, authority_len;
};

void http_head_init(struct http_head *h, size_t max_bytes, unsigned max_fields);
void http_head_reset(struct http_head *h);
void http_head_deinit(struct http_head *h);

/* llhttp pieces: append to the method, target, a field name or value.
 * 0, or -1 when a limit is passed (h->full), a field name holds a byte
 * that is not a token's (h->bad_name: llhttp 8 lets "Name : v" through
 * as "Name "; RFC 9112 §5.1 refuses it) or memory runs out. */
int http_head_method(struct http_head *h, const char *at, size_t len);
int http_head_target(struct http_head *h, const char *at, size_t len);
int http_head_field(struct http_head *h, const char *at, size_t len);
int http_head_value(struct http_head *h, const char *at, size_t len);

/* A request reader: llhttp plus the head it fills. The caller's llhttp
 * settings take the head callbacks with HTTP_READER_CALLBACKS; its own
 * callbacks (headers complete, body, message complete) find their state
 * through reader->data. Strict: an obs-fold continuation is refused (llhttp
 * would join it into the value), a head past the limits fails with
 * head.full set. parser must stay the first member. */
struct http_reader {
    llhttp_t parser;
    struct http_head head;
    void *data;          /* the caller's */
    const char *chunk;   /* the input chunk being parsed */
    bool chunk_ended_lf; /* the previous chunk ended in a line feed */
    bool value_started;  /* a header value's first piece was seen */
    bool oom;            /* a callback failed for want of memory */
};

/* The reader's llhttp callbacks, for HTTP_READER_CALLBACKS. */
int http_on_method(llhttp_t *p, const char *at, size_t len);
int http_on_url(llhttp_t *p, const char *at, size_t len);
int http_on_field(llhttp_t *p, const char *at, size_t len);
int http_on_value(llhttp_t *p, const char *at, size_t len);
int http_on_value_complete(llhttp_t *p);

/* Designated initializers of the head callbacks, for a settings table:
 * static const llhttp_settings_t s = { HTTP_READER_CALLBACKS, ... }; */
#define HTTP_READER_CALLBACKS                                                  \
    .on_method = http_on_method, .on_url = http_on_url,                        \
    .on_header_field = http_on_field, .on_header_value = http_on_value,        \
    .on_header_value_complete = http_on_value_complete

/* Set up r to read requests with settings s (static: llhttp keeps the
 * pointer) and the head limits. */
void http_reader_init(struct http_reader *r, const llhttp_settings_t *s,
                      size_t max_head_bytes, unsigned max_fields, void *data);

void http_reader_deinit(struct http_reader *r);

/* The reader of a parser handed to a callback. */
static inline struct http_reader *http_reader_of(llhttp_t *p)
{
    return (struct http_reader *)(void *)p;
}

/* Parse len bytes (len 0 finishes what a resumed pause left). Returns
 * llhttp's answer; *used_out is how many bytes it consumed. */
enum llhttp_errno http_reader_execute(struct http_reader *r, const char *data,
                                      size_t len, size_t *used_out);

/* An HTTP/1.1 response being read: llhttp (HTTP_RESPONSE) and the head
 * its field callbacks fill (HTTP_RESPONSE_CALLBACKS). parser must stay
 * the first member; parser.data is the owner's, for its own callbacks
 * (headers complete, body, message complete). The exchange reads the
 * upstream's responses with one, h2.c the exchange's. */
struct http_response {
    llhttp_t parser;
    struct http_head head;
};

int http_on_response_field(llhttp_t *p, const char *at, size_t len);
int http_on_response_value(llhttp_t *p, const char *at, size_t len);

#define HTTP_RESPONSE_CALLBACKS                                                \
    .on_header_field = http_on_response_field,                                 \
    .on_header_value = http_on_response_value

/* Judge the head of the request the reader just read (after its
 * headers, before the engine sees it; target.h says what is refused):
 * CONNECT; the target; no Host in HTTP/1.1, more than one Host, or a Host
 * value that is not a host[:port]. Sets the head's origin_* (the target,
 * or an absolute-form's path and query; one whose path is empty is written
 * as "/" after the head's bytes) and authority_*. 0, or the status to
 * refuse with (400; 431 when that "/" passed the head's limit, 503 when
 * memory ran out) and *why_out a static sentence for its detail. */
unsigned http_reader_judge(struct http_reader *r, const char **why_out);

/* The head's headers as engine views (valid until the head changes).
 * NULL if out of memory (and nfields > 0). */
const struct idem_header *http_head_views(struct http_head *h);

/* Whether header name name[0..len) is want[0..want_len) (NUL-terminated),
 * ignoring ASCII case: the lengths first (most names differ in length). */
static inline bool http_name_is(const char *name, size_t len, const char *want,
                                size_t want_len)
{
    /* the same bytes (the usual spelling) first, inline for a literal */
    return len == want_len && (memcmp(name, want, len) == 0 ||
                               idem_header_name_is(name, len, want));
}

/* http_name_is against a string literal. */
#define HTTP_NAME_IS(name, len, lit)                                           \
    http_name_is((name), (len), "" lit, sizeof(lit) - 1)

/* The first value of header name (name_len bytes, then a NUL, as
 * http_name_is wants), or NULL. */
const char *http_head_getn(const struct http_head *h, const char *name,
                           size_t name_len, size_t *len_out);

/* http_head_getn for a NUL-terminated name (a literal's length is known
 * at compile time). */
static inline const char *http_head_get(const struct http_head *h,
                                        const char *name, size_t *len_out)
{
    return http_head_getn(h, name, strlen(name), len_out);
}

/* How many fields of h are called name. */
unsigned http_head_count(const struct http_head *h, const char *name);

/* h's Connection value as http_hop_by_hop's conn: NULL when it names no
 * field that is not hop-by-hop anyway (none, or only "keep-alive", which
 * names Keep-Alive), so that no field costs a scan of the list. */
const char *http_connection(const struct http_head *h, size_t *len_out);

/* Whether field f of h is hop-by-hop: a hop-by-hop name, or one the
 * head's Connection header (conn, conn_len: its value, looked up once
 * per head; NULL if none) names. */
bool http_hop_by_hop(const struct http_head *h, const struct http_field *f,
                     const char *conn, size_t conn_len);

/* Append "name: value\r\n" for field f of h to out. */
int http_add_field(struct buf *out, const struct http_head *h,
                   const struct http_field *f);

/* The standard reason phrase of a status, or "Unknown". */
const char *http_reason(unsigned status);

/* Append "HTTP/1.1 status reason\r\n" to out. */
int http_status_line(struct buf *out, unsigned status);

/* The time now as an RFC 9110 IMF-fixdate, "Sun, 06 Nov 1994 08:49:37
 * GMT": formatted at most once a second per thread, valid until the
 * thread's next call. */
const char *http_date(void);

/* Append "Date: <http_date()>\r\n" to out. 0 or -1. */
int http_date_line(struct buf *out);

/* Append a whole small response: status line, Date, Content-Type (if
 * ctype), Content-Length, Connection: close when close, extra header lines
 * (each ending in \r\n, may be NULL), the blank line and body. 0 or -1. */
int http_respond(struct buf *out, unsigned status, const char *ctype,
                 const char *extra, const void *body, size_t len, bool close);

/* An RFC 9457 problem+json response with status, its title and detail
 * (detail is escaped; may be NULL). Retry-After when retry_after_s > 0. */
int http_problem(struct buf *out, unsigned status, const char *detail,
                 unsigned retry_after_s, bool close);

/* http_problem with a problem type URI of its own (type is not escaped:
 * a constant). */
int http_problem_typed(struct buf *out, unsigned status, const char *type,
                       const char *detail, unsigned retry_after_s, bool close);

/* The problem type of a retry whose key holds an unknown outcome (502):
 * the request may have executed; docs/semantics.md says what to do. */
#define HTTP_PROBLEM_UNKNOWN "tag:idem,2026:problem:outcome-unknown"

#endif
