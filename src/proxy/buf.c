/* buf.h: growth doubles (at least 1 KiB), and consumed space at the
 * front is reused before growing. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#define BUF_MIN 1024u

char *buf_reserve_slow(struct buf *b, size_t n)
{
    size_t cap;
    char *p;

    if (b->data && b->cap - b->off - b->len >= n)
        return b->data + b->off + b->len;
    if (b->data && b->cap - b->len >= n && b->off >= b->len) {
        /* the consumed front is at least as large as what is live: move
         * it down rather than grow (so a buffer never grows forever under
         * a steady stream, and each byte moves at most once per lap) */
        memcpy(b->data, b->data + b->off, b->len);
        b->off = 0;
        return b->data + b->len;
    }
    if (n > SIZE_MAX / 2 - b->len)
        return NULL;
    cap = b->cap ? b->cap : BUF_MIN;
    while (cap < b->len + n)
        cap *= 2;
    if (b->off == 0) {
        if (!(p = realloc(b->data, cap)))
            return NULL;
    } else {
        if (!(p = malloc(cap)))
            return NULL;
        if (b->len)
            memcpy(p, b->data + b->off, b->len);
        free(b->data);
    }
    b->data = p;
    b->cap = cap;
    b->off = 0;
    return p + b->len;
}

int buf_adds(struct buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

static int add_digits(struct buf *b, uint64_t v, unsigned base)
{
    static const char digit[] = "0123456789abcdef";
    char tmp[20];
    size_t i = sizeof(tmp);

    do {
        tmp[--i] = digit[v % base];
        v /= base;
    } while (v);
    return buf_add(b, tmp + i, sizeof(tmp) - i);
}

int buf_add_u64(struct buf *b, uint64_t v)
{
    return add_digits(b, v, 10);
}

int buf_add_hex(struct buf *b, uint64_t v)
{
    return add_digits(b, v, 16);
}

int buf_add_field(struct buf *b, const char *name, size_t name_len,
                  const char *value, size_t value_len)
{
    char *at = buf_reserve(b, name_len + value_len + 4);

    if (!at)
        return -1;
    memcpy(at, name, name_len);
    at += name_len;
    *at++ = ':';
    *at++ = ' ';
    memcpy(at, value, value_len);
    at += value_len;
    *at++ = '\r';
    *at = '\n';
    buf_commit(b, name_len + value_len + 4);
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

void buf_trim(struct buf *b)
{
    buf_clear(b);
    if (b->cap > BUF_KEEP)
        buf_free(b);
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0; /* added goes on counting */
}
