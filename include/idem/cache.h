/* cache: an in-memory TTL cache, bytes in and bytes out, bounded by
 * entries and by bytes, with exact expiry: an entry whose time is up is
 * never returned, and a removed, replaced, evicted or expired entry leaves
 * every index at once. Thread-safe by sharding. docs/internals/cache.md. */
#ifndef IDEM_CACHE_H
#define IDEM_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "env.h"
#include "status.h"

struct idem_cache;
/* A read-only view of one stored value, with its own reference count. */
struct idem_cache_value;
/* Where a get_or_compute function writes the value it computes. */
struct idem_cache_buf;

/* Shards when idem_cache_opts.shards is 0. */
#define IDEM_CACHE_DEFAULT_SHARDS 16u

struct idem_cache_opts {
    /* Shards, each with its own lock and table (which the expiry sweep
     * and the eviction hand walk). Rounded up to a power of two, at most
     * 1024. 0: 16. Fewer are used when the bounds are small: each shard
     * gets an even share of them (at least 64 entries and 1 MiB, unless
     * the bound is smaller). */
    unsigned shards;
    /* Most entries held at once. 0: no bound but max_bytes. */
    size_t max_entries;
    /* Most bytes charged at once (idem_cache_bytes() says what counts).
     * 0: 64 MiB. SIZE_MAX: no bound. */
    size_t max_bytes;
    /* Clock and allocator; copied. NULL: idem_env_default(). */
    const struct idem_env *env;
    /* Asked, under the shard's lock, about the live entry eviction chose to
     * make room: true evicts it, false keeps it this time (as if it were
     * pinned). A set that finds only kept or pinned entries answers
     * IDEM_EBUSY. It sees the entry's value only and must call no cache
     * function. NULL: every choice is evicted. */
    bool (*evict)(const void *value, size_t vlen, void *ud);
    void *evict_ud;
};

struct idem_cache_stats {
    uint64_t entries;  /* in the table now, expired ones not yet reclaimed
                        * included (idem_cache_size() counts live ones) */
    uint64_t bytes;    /* charged now, as idem_cache_bytes() but without
                        * reclaiming first */
    uint64_t pinned;   /* entries pinned now */
    uint64_t hits;     /* get, get_or_compute: found */
    uint64_t misses;   /* get, get_or_compute: not found */
    uint64_t sets;     /* values stored: set, update, computed */
    uint64_t removes;  /* entries removed by idem_cache_remove() */
    uint64_t expired;  /* entries reclaimed because their time was up */
    uint64_t evicted;  /* live entries evicted to respect a bound */
    uint64_t computes; /* get_or_compute functions run */
    uint64_t shards;   /* shards in use */
    uint64_t shard_max_entries; /* each shard's share of max_entries */
    uint64_t shard_max_bytes;   /* each shard's share of max_bytes */
    uint64_t fixed_bytes;       /* held by the empty cache, never charged */
};

/* set_ex flags. */
#define IDEM_CACHE_NX 1u    /* store only if the key has no live entry */
#define IDEM_CACHE_PIN 2u   /* pin the entry in the same step */
#define IDEM_CACHE_UNPIN 4u /* replace_if: take one pin off, same step */

/* Create a cache. opts NULL: all defaults. On success *cache_out is set.
 * IDEM_OK, IDEM_EINVAL (opts out of range), IDEM_ENOMEM. */
IDEM_API int idem_cache_new(const struct idem_cache_opts *opts,
                            struct idem_cache **cache_out);

/* Free the cache and every entry. NULL is harmless. Value handles still
 * held stay valid until released. Not thread-safe against other calls on
 * c, including get_or_compute callers still waiting. */
IDEM_API void idem_cache_free(struct idem_cache *c);

/* -- Writes. All calls are thread-safe. A key or value pointer may be NULL
 * only when its length is 0. ttl_ms: 0 for no expiry, else the entry
 * lives while now < time of the call + ttl_ms; negative is IDEM_EINVAL.
 * Each write also reclaims a bounded number of expired entries. ------- */

/* Store a copy of value under a copy of key, replacing any entry (its pins
 * carry over: they belong to the key). Evicts before returning when a
 * bound would be passed. IDEM_OK; IDEM_E2BIG if the entry alone exceeds a
 * shard's share of max_bytes; IDEM_EBUSY if room cannot be made because
 * the shard's other entries are pinned (nothing changes); IDEM_ENOMEM;
 * IDEM_EINVAL. */
IDEM_API int idem_cache_set(struct idem_cache *c, const void *key, size_t klen,
                            const void *value, size_t vlen, int64_t ttl_ms);

/* As set, but only if key has no live entry: IDEM_EEXIST otherwise. */
IDEM_API int idem_cache_set_nx(struct idem_cache *c, const void *key,
                               size_t klen, const void *value, size_t vlen,
                               int64_t ttl_ms);

/* As set, with flags: IDEM_CACHE_NX as set_nx; IDEM_CACHE_PIN adds one
 * pin in the same step, so the entry is never evictable. Unknown flags:
 * IDEM_EINVAL. */
IDEM_API int idem_cache_set_ex(struct idem_cache *c, const void *key,
                               size_t klen, const void *value, size_t vlen,
                               int64_t ttl_ms, unsigned flags);

/* If key has a live entry: IDEM_EEXIST, and a handle to its value in
 * *existing_out (the caller releases it). Otherwise store a copy of value
 * as set_ex would (flags: IDEM_CACHE_PIN) and answer IDEM_OK. One step
 * under the shard's lock. Failures as set_ex; existing_out is written
 * only with IDEM_EEXIST. */
IDEM_API int idem_cache_get_or_insert(struct idem_cache *c, const void *key,
                                      size_t klen, const void *value,
                                      size_t vlen, int64_t ttl_ms,
                                      unsigned flags,
                                      struct idem_cache_value **existing_out);

/* If key has a live entry and check(its value, ud) is true, replace the
 * value with a copy of value (pins carry over) and its expiry with ttl_ms
 * (0: none), or, value NULL, remove the entry; IDEM_CACHE_UNPIN in flags
 * also takes one pin off, in the same step. All under the shard's lock:
 * check runs there and must not call the cache. IDEM_OK; IDEM_ESTALE when
 * the key has no live entry or check is false; IDEM_EPERM (UNPIN on an
 * entry without pins); as set: IDEM_E2BIG, IDEM_EBUSY, IDEM_ENOMEM,
 * IDEM_EINVAL. On any failure nothing changed. */
IDEM_API int
idem_cache_replace_if(struct idem_cache *c, const void *key, size_t klen,
                      bool (*check)(const void *cur, size_t curlen, void *ud),
                      void *ud, const void *value, size_t vlen, int64_t ttl_ms,
                      unsigned flags);

/* Replace the value of a live entry, keeping its expiry time and pins.
 * IDEM_OK; IDEM_ENOTFOUND; otherwise as set. */
IDEM_API int idem_cache_update(struct idem_cache *c, const void *key,
                               size_t klen, const void *value, size_t vlen);

/* Give a live entry a new ttl (0: no expiry), counted from now.
 * IDEM_OK, IDEM_ENOTFOUND, IDEM_EINVAL. Allocates nothing. */
IDEM_API int idem_cache_update_ttl(struct idem_cache *c, const void *key,
                                   size_t klen, int64_t ttl_ms);

/* Remove key's entry from every index now. Handles to its value stay
 * valid; from now on its bytes are no longer charged to the cache.
 * IDEM_OK; IDEM_ENOTFOUND (also if it had expired); IDEM_EINVAL. */
IDEM_API int idem_cache_remove(struct idem_cache *c, const void *key,
                               size_t klen);

/* Remove every entry, pinned ones too. */
IDEM_API void idem_cache_clear(struct idem_cache *c);

/* Reclaim every entry whose time is up, without waiting for a read or a
 * write: call it from a timer. Returns the entries reclaimed. Works in
 * batches, releasing each shard's lock between them. */
IDEM_API size_t idem_cache_tick(struct idem_cache *c);

/* Add one pin to a live entry: pinned entries are never evicted (they
 * still expire, and remove and clear still remove them). IDEM_OK;
 * IDEM_ENOTFOUND; IDEM_EBUSY if it has 65535 pins; IDEM_EINVAL. */
IDEM_API int idem_cache_pin(struct idem_cache *c, const void *key, size_t klen);

/* Take one pin off a live entry. IDEM_OK; IDEM_ENOTFOUND; IDEM_EPERM if
 * it has none; IDEM_EINVAL. */
IDEM_API int idem_cache_unpin(struct idem_cache *c, const void *key,
                              size_t klen);

/* -- Reads. Thread-safe. Never see an entry whose time is up: finding one
 * reclaims it and answers as if it were absent. ------------------------ */

/* A handle to key's value in *value_out: never copied, valid until
 * idem_cache_value_release() even if the entry is removed, replaced or
 * the cache freed meanwhile. IDEM_OK, IDEM_ENOTFOUND, IDEM_EINVAL. */
IDEM_API int idem_cache_get(struct idem_cache *c, const void *key, size_t klen,
                            struct idem_cache_value **value_out);

/* Whether key has a live entry. False on bad arguments. */
IDEM_API bool idem_cache_contains(struct idem_cache *c, const void *key,
                                  size_t klen);

/* Milliseconds key's entry has left in *ttl_ms_out (>= 1), or 0 if it
 * never expires. IDEM_OK, IDEM_ENOTFOUND, IDEM_EINVAL. */
IDEM_API int idem_cache_ttl_left(struct idem_cache *c, const void *key,
                                 size_t klen, int64_t *ttl_ms_out);

/* Live entries. Reclaims expired entries first, so it counts exactly what
 * a get could return at this moment. 0 for NULL. */
IDEM_API size_t idem_cache_size(struct idem_cache *c);

/* Bytes charged to the bounds, after reclaiming expired entries: for each
 * entry, IDEM_CACHE_ENTRY_OVERHEAD + key + value; plus each shard's table
 * slots beyond its minimum (16 slots of 8 bytes). An empty cache answers 0;
 * what it holds anyway is stats.fixed_bytes. 0 for NULL. */
IDEM_API size_t idem_cache_bytes(struct idem_cache *c);

/* The bytes charged per entry beyond its key and value: its 24-byte
 * header and the 8 bytes of the allocator's own block header (glibc's). */
#define IDEM_CACHE_ENTRY_OVERHEAD 32u

/* Called once per live entry, with the key (a view valid during the call)
 * and a borrowed value handle (idem_cache_value_ref() keeps it). Return 0
 * to go on; anything else stops the walk and foreach returns it. */
typedef int (*idem_cache_foreach_fn)(const void *key, size_t klen,
                                     struct idem_cache_value *value, void *ud);

/* Walk the live entries, shard by shard: under the shard's lock the walk
 * takes a reference to each entry, then calls fn for each with no lock
 * held, so fn may call the cache (even remove). An entry written during
 * the walk may or may not be seen; one removed after its shard was taken
 * is still seen. IDEM_OK; fn's nonzero answer; IDEM_ENOMEM (the walk
 * stops; shards already walked were seen); IDEM_EINVAL. */
IDEM_API int idem_cache_foreach(struct idem_cache *c, idem_cache_foreach_fn fn,
                                void *ud);

/* Computes key's value when it is missing: appends the bytes to out with
 * idem_cache_buf_append() and returns IDEM_OK, or returns a negative
 * status to store nothing. Runs with no cache lock held, but under key's
 * single-flight lock: it must not call get_or_compute for the same key
 * (that answers IDEM_EDEADLK). */
typedef int (*idem_cache_compute_fn)(const void *key, size_t klen,
                                     struct idem_cache_buf *out, void *ud);

/* Append len bytes to the value being computed. IDEM_OK; IDEM_ENOMEM;
 * IDEM_E2BIG past a shard's share of max_bytes. After a failure the
 * computation fails with that status whatever fn returns. */
IDEM_API int idem_cache_buf_append(struct idem_cache_buf *out, const void *data,
                                   size_t len);

/* Get key's value, or compute, store and return it: fn runs once per key
 * however many threads ask at once (the first runs it while the others
 * wait, then they read what it stored). The value is stored as by set
 * with ttl_ms, replacing any value set meanwhile. IDEM_OK with a handle in
 * *value_out; fn's status (nothing stored); a status of set (E2BIG, EBUSY,
 * ENOMEM: the computed value is dropped); IDEM_EDEADLK (see above);
 * IDEM_EINVAL. */
IDEM_API int idem_cache_get_or_compute(struct idem_cache *c, const void *key,
                                       size_t klen, idem_cache_compute_fn fn,
                                       void *ud, int64_t ttl_ms,
                                       struct idem_cache_value **value_out);

/* Counters summed over the shards, in *stats_out. A snapshot. */
IDEM_API void idem_cache_stats(struct idem_cache *c,
                               struct idem_cache_stats *stats_out);

/* -- Value handles. Thread-safe; the bytes never change. ------------- */

/* The value's bytes and length. */
IDEM_API const void *idem_cache_value_data(const struct idem_cache_value *v);
IDEM_API size_t idem_cache_value_len(const struct idem_cache_value *v);

/* Another reference to v, released separately. Returns v. */
IDEM_API struct idem_cache_value *
idem_cache_value_ref(struct idem_cache_value *v);

/* Drop a reference; the last one frees the value. NULL is harmless. */
IDEM_API void idem_cache_value_release(struct idem_cache_value *v);

#endif
