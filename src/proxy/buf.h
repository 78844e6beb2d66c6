/* buf: a flat, growable byte buffer with a read offset. What the proxy
 * queues for a socket and what it keeps of a request or response lives
 * in one: bytes are appended at the end and consumed from the front, and
 * the memory is kept across requests (so a connection's steady state
 * allocates nothing), down to BUF_KEEP once a request has passed. */
#ifndef IDEMPROXY_BUF_H
#define IDEMPROXY_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* What buf_trim keeps allocated: a connection idle after a large body
 * holds no more than this per buffer. */
#define BUF_KEEP (16u * 1024)

struct buf {
    char *data;
    size_t off; /* the first unconsumed byte */
    size_t len; /* unconsumed bytes, from off */
    size_t cap;
    uint64_t added; /* bytes ever appended (what a request wrote) */
};

static inline const char *buf_bytes(const struct buf *b)
{
    return b->data ? b->data + b->off : "";
}

static inline size_t buf_len(const struct buf *b)
{
    return b->len;
}

/* buf_reserve when the room is not there already. */
char *buf_reserve_slow(struct buf *b, size_t n);

/* Make room for n more bytes at the end (moving the unconsumed bytes to
 * the front or growing). Returns where they go, or NULL (out of memory,
 * nothing changed). buf_commit(b, k) then adds the k <= n written. */
static inline char *buf_reserve(struct buf *b, size_t n)
{
    if (b->data && b->cap - b->off - b->len >= n)
        return b->data + b->off + b->len;
    return buf_reserve_slow(b, n);
}

static inline void buf_commit(struct buf *b, size_t n)
{
    b->len += n;
    b->added += n;
}

/* Append n bytes: 0, or -1 out of memory (nothing appended). Inline: most
 * appends are a few bytes into room already there. */
static inline int buf_add(struct buf *b, const void *p, size_t n)
{
    char *at;

    if (n == 0)
        return 0;
    if (!(at = buf_reserve(b, n)))
        return -1;
    memcpy(at, p, n);
    buf_commit(b, n);
    return 0;
}
/* Append a NUL-terminated string; buf_addl a string literal (its length
 * known at compile time). */
int buf_adds(struct buf *b, const char *s);
#define buf_addl(b, lit) buf_add((b), "" lit, sizeof(lit) - 1)
/* Append v in decimal, or in lowercase hexadecimal. */
int buf_add_u64(struct buf *b, uint64_t v);
int buf_add_hex(struct buf *b, uint64_t v);
/* Append "name: value\r\n". */
int buf_add_field(struct buf *b, const char *name, size_t name_len,
                  const char *value, size_t value_len);

/* Drop n <= buf_len(b) bytes from the front. */
void buf_consume(struct buf *b, size_t n);

/* Drop everything, keeping the memory. */
static inline void buf_clear(struct buf *b)
{
    b->off = b->len = 0;
}

/* Drop everything; free the memory if more than BUF_KEEP is held. */
void buf_trim(struct buf *b);

void buf_free(struct buf *b);

#endif
