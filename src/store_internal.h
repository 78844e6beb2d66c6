/* The seam between the engine and its stores: an ops table. Keys are the
 * engine's store keys (scope digest + key); records are src/record.h
 * encodings. Every op is thread-safe. */
#ifndef IDEM_STORE_INTERNAL_H
#define IDEM_STORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "idem/store.h"

/* Bytes a store hands out, kept alive until release(ctx). */
struct idem__blob {
    const void *data;
    size_t len;
    void (*release)(void *ctx);
    void *ctx;
};

static inline void idem__blob_release(struct idem__blob *b)
{
    if (b->release)
        b->release(b->ctx);
    *b = (struct idem__blob){ NULL, 0, NULL, NULL };
}

struct idem__store_ops {
    /* Store rec (in flight) under key for lease_ms unless key has a record.
     * IDEM_OK: stored. IDEM_EEXIST: *existing_out holds the record found.
     * Otherwise a failure (IDEM_ENOMEM, IDEM_EBUSY, IDEM_EIO). */
    int (*begin)(struct idem_store *s, const void *key, size_t klen,
                 const void *rec, size_t rlen, int64_t lease_ms,
                 struct idem__blob *existing_out);
    /* Replace key's in-flight record owned by token with rec for ttl_ms.
     * IDEM_OK; IDEM_ESTALE (not in flight under token: nothing written). */
    int (*complete)(struct idem_store *s, const void *key, size_t klen,
                    const uint8_t *token, const void *rec, size_t rlen,
                    int64_t ttl_ms);
    /* Delete key's in-flight record owned by token. IDEM_OK, IDEM_ESTALE. */
    int (*abort)(struct idem_store *s, const void *key, size_t klen,
                 const uint8_t *token);
    /* Reclaim expired records now. */
    void (*tick)(struct idem_store *s);
    void (*stats)(struct idem_store *s, struct idem_store_stats *out);
    void (*free)(struct idem_store *s);
};

struct idem_store {
    const struct idem__store_ops *ops;
};

#endif
