/* Idempotency records in a compact, versioned binary encoding, the same
 * for the memory store, snapshots and Redis. The decoder trusts nothing:
 * a shared Redis or a damaged snapshot may hand it anything. */
#ifndef IDEM_RECORD_H
#define IDEM_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idem/engine.h"

#define IDEM__RECORD_VERSION 1
#define IDEM__TOKEN_LEN 16
#define IDEM__RECORD_MAX_HEADERS 1024

/* Where an encoded record keeps its version, state and owner token (0-based
 * byte offsets), so a Redis script can fence without decoding. */
#define IDEM__RECORD_VERSION_OFF 2
#define IDEM__RECORD_STATE_OFF 3
#define IDEM__RECORD_TOKEN_OFF (5 + IDEM_FP_LEN)

enum idem__record_state {
    IDEM__REC_INFLIGHT = 1, /* a request holds the key; no response yet */
    IDEM__REC_DONE = 2,     /* the response is stored */
    /* the request may have executed, but no response will come: shaped as
     * in flight (no status, headers or body), never a lease */
    IDEM__REC_UNKNOWN = 3,
};

/* Record flags. */
#define IDEM__REC_BODY_OMITTED 1u /* done, but the body was over the limit */

struct idem__record {
    uint8_t state;
    uint8_t flags; /* IDEM__REC_*; 0 in flight */
    uint8_t fingerprint[IDEM_FP_LEN];
    uint8_t token[IDEM__TOKEN_LEN]; /* the owner's, while in flight */
    uint64_t created_ms;            /* Unix time */
    uint64_t expires_ms;            /* Unix time: lease or record end */
    unsigned status;                /* 100..999 when done, 0 in flight */
    size_t nheaders;
    const struct idem_header *headers; /* encode: the response headers */
    const void *body;
    size_t body_len;
};

/* A decoded record: views into the encoded bytes, valid while they are.
 * rec.headers is NULL; walk the headers with idem__record_headers(). */
struct idem__record_view {
    struct idem__record rec;
    const uint8_t *hblock;
    size_t hblock_len;
};

struct idem__header_iter {
    const uint8_t *p, *end;
};

/* Bytes r encodes to, or 0 if r cannot be encoded (bad state or status,
 * too many headers, a header name that is not an HTTP token, CR/LF/NUL in
 * a value, pointers missing). */
size_t idem__record_size(const struct idem__record *r);

/* Whether h can be in a record: a token for its name, no CR/LF/NUL in its
 * value. */
bool idem__record_header_ok(const struct idem_header *h);

/* idem__record_size for r whose headers each passed
 * idem__record_header_ok: only the rest is checked. */
size_t idem__record_size_checked(const struct idem__record *r);

/* Encode r into buf (cap bytes, at least idem__record_size(r)).
 * IDEM_OK and *len_out; IDEM_EINVAL as for size 0 or cap too small. */
int idem__record_encode(const struct idem__record *r, uint8_t *buf, size_t cap,
                        size_t *len_out);

/* Encode r, whose size is need (not 0, from idem__record_size*), into
 * buf[0..need). */
void idem__record_write(const struct idem__record *r, uint8_t *buf,
                        size_t need);

/* Decode len bytes: IDEM_OK and *view_out, or IDEM_EINVAL for anything
 * malformed (wrong magic or version, truncated, overlong or non-minimal
 * numbers, bad state, flags, status or header bytes, bytes left over).
 * Reads nothing outside buf[0..len). */
int idem__record_decode(const void *buf, size_t len,
                        struct idem__record_view *view_out);

/* Iterate a decoded record's headers in their stored order. */
void idem__record_headers(const struct idem__record_view *v,
                          struct idem__header_iter *it);
bool idem__header_next(struct idem__header_iter *it, struct idem_header *h);

/* The owner token of an encoded record, read in place (Redis scripts do
 * the same at this offset), or NULL if buf is too short. */
const uint8_t *idem__record_token(const void *buf, size_t len);

/* Whether s[0..len) is all RFC 9110 token (header name) characters; true
 * for len 0. */
bool idem__is_token(const char *s, size_t len);

#endif
