/* Record encoding, version 1:
 *   "IK" version state flags fingerprint[32] token[16]
 *   created expires status nheaders {name_len name value_len value}*
 *   body_len body
 * Numbers are unsigned LEB128 varints in their shortest form, so a valid
 * record has exactly one encoding and decode(encode(r)) == r byte for byte. */
#include <string.h>

#include "internal.h"
#include "record.h"

#define TOKEN_OFF IDEM__RECORD_TOKEN_OFF
#define FIXED_LEN (TOKEN_OFF + IDEM__TOKEN_LEN)
#define VARINT_MAX 10

static const uint8_t magic[2] = { 'I', 'K' };

/* Byte classes, by table: one load per byte, and a run of bytes is
 * checked four at a time by AND-ing their classes, with no branch per
 * byte (names and values are checked on every stored response). */
enum {
    TCHAR = 1, /* RFC 9110 tchar: digits, letters and !#$%&'*+-.^_`|~ */
    VCHAR = 2  /* allowed in a stored value: all but NUL, LF and CR */
};

/* A row per 16 bytes. */
/* clang-format off */
static const unsigned char byte_class[256] = {
    0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 2, 2, 0, 2, 2, /* NUL LF CR */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 3, 2, 3, 3, 3, 3, 3, 2, 2, 3, 3, 2, 3, 3, 2, /*  !"#$%&'()*+,-./ */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, /* 0-9 :;<=>? */
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* @ A-O */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 3, 3, /* P-Z [\]^_ */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* ` a-o */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 2, 3, 2, /* p-z {|}~ DEL */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x80-0xff: values only */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};
/* clang-format on */

/* Whether every byte of s[0..len) is in class cls. */
static bool all_in(const char *s, size_t len, unsigned cls)
{
    const unsigned char *p = (const unsigned char *)s;
    unsigned in = cls;
    size_t i = 0;

    for (; i + 4 <= len; i += 4)
        in &= byte_class[p[i]] & byte_class[p[i + 1]] & byte_class[p[i + 2]] &
              byte_class[p[i + 3]];
    for (; i < len; i++)
        in &= byte_class[p[i]];
    return in == cls;
}

bool idem__is_token(const char *s, size_t len)
{
    return all_in(s, len, TCHAR);
}

bool idem__record_header_ok(const struct idem_header *h)
{
    if (!h->name || h->name_len == 0 || (!h->value && h->value_len))
        return false;
    return all_in(h->name, h->name_len, TCHAR) &&
           all_in(h->value, h->value_len, VCHAR);
}

static bool shape_ok(uint8_t state, uint8_t flags, uint64_t status,
                     uint64_t nheaders, uint64_t body_len)
{
    if (state == IDEM__REC_INFLIGHT || state == IDEM__REC_UNKNOWN)
        return flags == 0 && status == 0 && nheaders == 0 && body_len == 0;
    return state == IDEM__REC_DONE && (flags & ~IDEM__REC_BODY_OMITTED) == 0 &&
           status >= 100 && status <= 999 &&
           nheaders <= IDEM__RECORD_MAX_HEADERS &&
           !((flags & IDEM__REC_BODY_OMITTED) && body_len);
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *varint_put(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Read a shortest-form varint; false if truncated, too long or padded. */
static bool varint_get(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t x = 0;
    unsigned shift = 0;

    for (;;) {
        if (p == end || shift >= 7 * VARINT_MAX)
            return false;
        if (shift == 63 && *p > 1)
            return false; /* more than 64 bits */
        x |= (uint64_t)(*p & 0x7f) << shift;
        shift += 7;
        if (!(*p++ & 0x80))
            break;
    }
    if (p - *pp > 1 && p[-1] == 0)
        return false; /* a trailing zero group: not the shortest form */
    *pp = p;
    *v = x;
    return true;
}

/* The encoded size, checking each header if check_headers. */
static size_t size_of(const struct idem__record *r, bool check_headers)
{
    size_t n, i;

    if (!r ||
        !shape_ok(r->state, r->flags, r->status, r->nheaders, r->body_len) ||
        (!r->headers && r->nheaders) || (!r->body && r->body_len))
        return 0;
    n = FIXED_LEN + varint_len(r->created_ms) + varint_len(r->expires_ms) +
        varint_len(r->status) + varint_len(r->nheaders);
    for (i = 0; i < r->nheaders; i++) {
        const struct idem_header *h = &r->headers[i];

        if (check_headers && !idem__record_header_ok(h))
            return 0;
        n += varint_len(h->name_len) + h->name_len + varint_len(h->value_len) +
             h->value_len;
    }
    return n + varint_len(r->body_len) + r->body_len;
}

size_t idem__record_size(const struct idem__record *r)
{
    return size_of(r, true);
}

size_t idem__record_size_checked(const struct idem__record *r)
{
    return size_of(r, false);
}

static uint8_t *put_bytes(uint8_t *p, const void *src, size_t len)
{
    if (len)
        memcpy(p, src, len);
    return p + len;
}

void idem__record_write(const struct idem__record *r, uint8_t *buf, size_t need)
{
    uint8_t *p = buf;
    size_t i;

    p = put_bytes(p, magic, sizeof(magic));
    *p++ = IDEM__RECORD_VERSION;
    *p++ = r->state;
    *p++ = r->flags;
    p = put_bytes(p, r->fingerprint, IDEM_FP_LEN);
    p = put_bytes(p, r->token, IDEM__TOKEN_LEN);
    p = varint_put(p, r->created_ms);
    p = varint_put(p, r->expires_ms);
    p = varint_put(p, r->status);
    p = varint_put(p, r->nheaders);
    for (i = 0; i < r->nheaders; i++) {
        p = varint_put(p, r->headers[i].name_len);
        p = put_bytes(p, r->headers[i].name, r->headers[i].name_len);
        p = varint_put(p, r->headers[i].value_len);
        p = put_bytes(p, r->headers[i].value, r->headers[i].value_len);
    }
    p = varint_put(p, r->body_len);
    p = put_bytes(p, r->body, r->body_len);
    assert((size_t)(p - buf) == need);
    (void)need;
}

int idem__record_encode(const struct idem__record *r, uint8_t *buf, size_t cap,
                        size_t *len_out)
{
    size_t need = idem__record_size(r);

    if (need == 0 || !buf || cap < need || !len_out)
        return IDEM_EINVAL;
    idem__record_write(r, buf, need);
    *len_out = need;
    return IDEM_OK;
}

/* A length-prefixed byte string within [*pp, end). */
static bool take_bytes(const uint8_t **pp, const uint8_t *end, const char **s,
                       size_t *len)
{
    uint64_t n;

    if (!varint_get(pp, end, &n) || n > (uint64_t)(end - *pp))
        return false;
    *s = (const char *)*pp;
    *len = (size_t)n;
    *pp += n;
    return true;
}

/* Validate n headers from *pp on; leave *pp after them. */
static bool take_headers(const uint8_t **pp, const uint8_t *end, uint64_t n)
{
    struct idem_header h;

    while (n--) {
        if (!take_bytes(pp, end, &h.name, &h.name_len) ||
            !take_bytes(pp, end, &h.value, &h.value_len) ||
            !idem__record_header_ok(&h))
            return false;
    }
    return true;
}

int idem__record_decode(const void *buf, size_t len,
                        struct idem__record_view *view_out)
{
    const uint8_t *p = buf, *end, *hblock;
    struct idem__record_view v = { .rec.state = 0 };
    uint64_t status, nheaders, body_len;

    if (!buf || !view_out || len < FIXED_LEN ||
        memcmp(p, magic, sizeof(magic)) != 0 ||
        p[IDEM__RECORD_VERSION_OFF] != IDEM__RECORD_VERSION)
        return IDEM_EINVAL;
    end = p + len;
    v.rec.state = p[IDEM__RECORD_STATE_OFF];
    v.rec.flags = p[4];
    memcpy(v.rec.fingerprint, p + 5, IDEM_FP_LEN);
    memcpy(v.rec.token, p + TOKEN_OFF, IDEM__TOKEN_LEN);
    p += FIXED_LEN;
    if (!varint_get(&p, end, &v.rec.created_ms) ||
        !varint_get(&p, end, &v.rec.expires_ms) ||
        !varint_get(&p, end, &status) || !varint_get(&p, end, &nheaders) ||
        !shape_ok(v.rec.state, v.rec.flags, status, nheaders, 0))
        return IDEM_EINVAL;
    hblock = p;
    if (!take_headers(&p, end, nheaders))
        return IDEM_EINVAL;
    v.hblock = hblock;
    v.hblock_len = (size_t)(p - hblock);
    if (!varint_get(&p, end, &body_len) || body_len != (uint64_t)(end - p) ||
        !shape_ok(v.rec.state, v.rec.flags, status, nheaders, body_len))
        return IDEM_EINVAL;
    v.rec.status = (unsigned)status;
    v.rec.nheaders = (size_t)nheaders;
    v.rec.body = body_len ? p : NULL;
    v.rec.body_len = (size_t)body_len;
    *view_out = v;
    return IDEM_OK;
}

const uint8_t *idem__record_token(const void *buf, size_t len)
{
    return buf && len >= FIXED_LEN ? (const uint8_t *)buf + TOKEN_OFF : NULL;
}

void idem__record_headers(const struct idem__record_view *v,
                          struct idem__header_iter *it)
{
    it->p = v->hblock;
    it->end = v->hblock + v->hblock_len;
}

bool idem__header_next(struct idem__header_iter *it, struct idem_header *h)
{
    if (it->p == it->end)
        return false;
    /* decode validated the block: these cannot fail */
    return take_bytes(&it->p, it->end, &h->name, &h->name_len) &&
           take_bytes(&it->p, it->end, &h->value, &h->value_len);
}
