/* Redis Cluster arithmetic without I/O: slots, redirections, CLUSTER
 * SLOTS. The proxy's keys carry their whole "{scope:key}" as the hash
 * tag, so a key's three scripts always meet the same node. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "slots.h"

uint16_t idem__redis_crc16(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint16_t crc = 0;
    size_t i;
    int b;

    for (i = 0; i < len; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021)
                               : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned idem__redis_keyslot(const void *key, size_t len)
{
    const char *k = key, *open = memchr(k, '{', len), *close;

    if (open) {
        close = memchr(open + 1, '}', len - (size_t)(open + 1 - k));
        if (close && close > open + 1) {
            k = open + 1;
            len = (size_t)(close - k);
        }
    }
    return idem__redis_crc16(k, len) & (IDEM__REDIS_SLOTS - 1);
}

/* A decimal of at most 5 digits at s[0..n), up to hi. */
static bool small_uint(const char *s, size_t n, long hi, long *out)
{
    long v = 0;
    size_t i;

    if (n == 0 || n > 5)
        return false;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > hi)
        return false;
    *out = v;
    return true;
}

bool idem__redis_redirect_parse(const char *err, size_t len,
                                struct idem__redis_redirect *out)
{
    const char *end = err + len, *sp, *colon;
    size_t skip = len > 6 && memcmp(err, "MOVED ", 6) == 0 ? 6
                  : len > 4 && memcmp(err, "ASK ", 4) == 0 ? 4
                                                           : 0;
    long slot, port;

    if (!skip)
        return false;
    err += skip;
    sp = memchr(err, ' ', (size_t)(end - err));
    if (!sp ||
        !small_uint(err, (size_t)(sp - err), IDEM__REDIS_SLOTS - 1, &slot))
        return false;
    colon = NULL;
    for (const char *p = sp + 1; p < end; p++)
        if (*p == ':')
            colon = p; /* the last one: v6 addresses have colons */
    if (!colon || (size_t)(colon - (sp + 1)) >= IDEM__REDIS_HOST_MAX ||
        !small_uint(colon + 1, (size_t)(end - colon - 1), 65535, &port) ||
        port == 0)
        return false;
    out->ask = skip == 4;
    out->slot = (unsigned)slot;
    memcpy(out->host, sp + 1, (size_t)(colon - (sp + 1)));
    out->host[colon - (sp + 1)] = '\0';
    out->port = (int)port;
    return true;
}

/* One CLUSTER SLOTS element: [start, end, [host, port, ...], ...]. 1 (a
 * range filled), 0 (a range without a usable primary) or -1 (malformed). */
static int one_range(const redisReply *e, struct idem__redis_range *r)
{
    const redisReply *m;

    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER ||
        e->element[1]->type != REDIS_REPLY_INTEGER)
        return -1;
    m = e->element[2];
    if (e->element[0]->integer < 0 || e->element[1]->integer >= 16384 ||
        e->element[0]->integer > e->element[1]->integer ||
        m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
        m->element[0]->type != REDIS_REPLY_STRING ||
        m->element[1]->type != REDIS_REPLY_INTEGER ||
        m->element[1]->integer <= 0 || m->element[1]->integer > 65535)
        return -1;
    if (m->element[0]->len == 0 || m->element[0]->len >= IDEM__REDIS_HOST_MAX ||
        strcmp(m->element[0]->str, "?") == 0)
        return 0;
    r->start = (unsigned)e->element[0]->integer;
    r->end = (unsigned)e->element[1]->integer;
    memcpy(r->host, m->element[0]->str, (size_t)m->element[0]->len + 1);
    r->port = (int)m->element[1]->integer;
    return 1;
}

int idem__redis_slots_parse(const struct idem_env *env, const redisReply *r,
                            struct idem__redis_range **ranges_out,
                            size_t *n_out)
{
    struct idem__redis_range *out;
    size_t i, n = 0;
    int got;

    if (!r || r->type != REDIS_REPLY_ARRAY)
        return IDEM_EINVAL;
    out = idem__alloc(env, (r->elements ? r->elements : 1) * sizeof(*out));
    if (!out)
        return IDEM_ENOMEM;
    for (i = 0; i < r->elements; i++) {
        got = one_range(r->element[i], &out[n]);
        if (got < 0) {
            idem__free(env, out);
            return IDEM_EINVAL;
        }
        n += (size_t)got;
    }
    *ranges_out = out;
    *n_out = n;
    return IDEM_OK;
}
