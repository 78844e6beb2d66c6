/* The seam between the engine and its stores: an ops table. Keys are the
 * engine's store keys (scope digest + key); records are src/record.h
 * encodings. Every op is thread-safe.
 *
 * A synchronous store (memory) answers every op at once. An asynchronous
 * one (Redis) may answer IDEM_EINPROGRESS instead and call done(ud, rc,
 * existing) later, exactly once, on the calling thread; it copies what it
 * needs before it returns, so the caller's buffers are free at once. An
 * answer other than IDEM_EINPROGRESS means done will not be called. */
#ifndef IDEM_STORE_INTERNAL_H
#define IDEM_STORE_INTERNAL_H

#include <stdbool.h>
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

/* An asynchronous answer. existing is begin's record on IDEM_EEXIST (the
 * callee takes it: release it or keep it), NULL otherwise. */
typedef void (*idem__store_done)(void *ud, int rc, struct idem__blob *existing);

/* How a begin treats the key it is asked for. */
struct idem__begin_args {
    int64_t ttl_ms;   /* the new in-flight record's life in the store */
    uint64_t wall_ms; /* now (Unix ms), to judge the lease of one found */
    /* An in-flight record found whose lease (its expires_ms) has passed:
     * hold: it becomes IDEM__REC_UNKNOWN for unknown_ttl_ms and is
     * returned as found; otherwise the begin takes the key over. */
    bool hold;
    int64_t unknown_ttl_ms;
};

struct idem__store_ops {
    /* Store rec (in flight) under key unless key has a record (a lapsed
     * lease is judged as args says). IDEM_OK: stored. IDEM_EEXIST:
     * *existing_out holds the record found. Otherwise a failure
     * (IDEM_ENOMEM, IDEM_EBUSY, IDEM_EIO). */
    int (*begin)(struct idem_store *s, const void *key, size_t klen,
                 const void *rec, size_t rlen,
                 const struct idem__begin_args *args,
                 struct idem__blob *existing_out, idem__store_done done,
                 void *ud);
    /* Replace key's in-flight record owned by token with rec for ttl_ms:
     * a completed or unknown record, or an in-flight one with a later
     * lease (renewal). IDEM_OK; IDEM_ESTALE (not in flight under token:
     * nothing written); IDEM_E2BIG (rec is larger than max_record). */
    int (*complete)(struct idem_store *s, const void *key, size_t klen,
                    const uint8_t *token, const void *rec, size_t rlen,
                    int64_t ttl_ms, idem__store_done done, void *ud);
    /* Delete key's in-flight record owned by token. IDEM_OK, IDEM_ESTALE. */
    int (*abort)(struct idem_store *s, const void *key, size_t klen,
                 const uint8_t *token, idem__store_done done, void *ud);
    /* The largest record (key included) the store can hold. */
    size_t (*max_record)(struct idem_store *s);
    /* Reclaim expired records now. */
    void (*tick)(struct idem_store *s);
    void (*stats)(struct idem_store *s, struct idem_store_stats *out);
    void (*free)(struct idem_store *s);
    bool async; /* ops may answer IDEM_EINPROGRESS */
};

struct idem_store {
    const struct idem__store_ops *ops;
};

#endif
