/* Redis Cluster arithmetic, sans I/O: the key's slot (CRC16-XMODEM of its
 * hash tag, mod 16384), MOVED and ASK errors, and CLUSTER SLOTS answers
 * (src/redis/slots.c). */
#ifndef IDEM_REDIS_SLOTS_H
#define IDEM_REDIS_SLOTS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idem/env.h"

#define IDEM__REDIS_SLOTS 16384
#define IDEM__REDIS_HOST_MAX 256

/* CRC16-XMODEM (poly 0x1021, init 0) of buf[0..len), as Redis Cluster. */
uint16_t idem__redis_crc16(const void *buf, size_t len);

/* The slot of key[0..len): of the bytes between the first '{' and the
 * next '}' after it if they are not empty (the hash tag), else of all. */
unsigned idem__redis_keyslot(const void *key, size_t len);

/* A redirection: "MOVED <slot> <host>:<port>" or "ASK ...". An empty
 * host (Redis 7 may send ":port") means the node that answered. */
struct idem__redis_redirect {
    bool ask;
    unsigned slot;
    char host[IDEM__REDIS_HOST_MAX];
    int port;
};

/* Parse the error text err[0..len) as a redirection into *out. true if it
 * is one (*out filled), false otherwise (*out untouched). */
bool idem__redis_redirect_parse(const char *err, size_t len,
                                struct idem__redis_redirect *out);

/* One range of a CLUSTER SLOTS answer and its primary. */
struct idem__redis_range {
    unsigned start, end; /* inclusive */
    char host[IDEM__REDIS_HOST_MAX];
    int port;
};

/* The ranges of a CLUSTER SLOTS reply, in a fresh array from env (free
 * with idem__free) into *ranges_out, their count in *n_out. A range whose
 * primary has no usable address ("" or "?") is left out. IDEM_OK;
 * IDEM_EINVAL (not a CLUSTER SLOTS answer); IDEM_ENOMEM. */
int idem__redis_slots_parse(const struct idem_env *env, const redisReply *r,
                            struct idem__redis_range **ranges_out,
                            size_t *n_out);

#endif
