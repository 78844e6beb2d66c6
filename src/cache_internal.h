/* The cache's shared internals: entry and shard layout and the shard-level
 * operations (cache_shard.c) that cache.c and cache_value.c build on.
 * Tests include it to count what every index holds. Never installed. */
#ifndef IDEM_CACHE_INTERNAL_H
#define IDEM_CACHE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idem/cache.h"
#include "idem/keylock.h"
#include "internal.h"
#include "ttl.h"

#define IDEM__CACHE_MIN_BUCKETS 16u

/* What removed entries still held by readers need to free themselves once
 * the cache is gone: its allocator. Its references are the cache's and
 * one per such entry. */
struct idem__cache_home {
    struct idem_env env;
    atomic_size_t refs;
};

/* One entry, in one allocation with its key and value. A value handle is
 * a pointer to it: references are the table's (while linked) plus one per
 * handle, and the last one frees it. Everything but refs is guarded by the
 * shard lock while linked and never changes after. */
struct idem__cache_entry {
    struct idem__cache_entry *newer; /* eviction queue (SIEVE) */
    struct idem__cache_entry *older;
    struct idem__ttl_node ttl; /* expires 0: never */
    atomic_uint refs;
    uint32_t vlen;
    uint16_t pins;
    uint8_t visited; /* read since the hand passed */
    uint8_t linked;  /* in the table */
    /* What a lookup reads, next to the key, to share its cache line. */
    uint32_t klen;
    union {
        struct idem__cache_entry *next; /* bucket chain; once unlinked,
                                         * the list of entries to put */
        struct idem__cache_home *home;  /* once the table let go while
                                         * handles remain */
    } u;
    unsigned char data[]; /* key, then value */
};

_Static_assert(offsetof(struct idem__cache_entry, data) ==
                   IDEM_CACHE_ENTRY_OVERHEAD,
               "IDEM_CACHE_ENTRY_OVERHEAD is the entry header");

/* A shard: a chained hash table that grows past load 1 and shrinks below
 * 1/4, a SIEVE queue (newest ... oldest) with its hand, an expiry wheel,
 * and counters; all under mu. bytes = entries charged + buckets beyond
 * IDEM__CACHE_MIN_BUCKETS. */
struct idem__cache_shard {
    _Alignas(IDEM_CACHELINE) pthread_mutex_t mu;
    struct idem__cache_entry **buckets;
    size_t mask; /* buckets - 1 */
    size_t count;
    size_t bytes;
    size_t pinned; /* entries with pins */
    struct idem__cache_entry *newest, *oldest, *hand;
    uint64_t hits, misses, sets, removes, expired, evicted;
    struct idem__ttl_wheel wheel;
};

struct idem_cache {
    struct idem_env env;
    struct idem__cache_home *home;
    uint64_t seed;
    unsigned shift; /* 64 - log2(nshards) */
    unsigned nshards;
    size_t shard_max_entries; /* SIZE_MAX: no bound */
    size_t shard_max_bytes;
    bool (*evict)(const void *value, size_t vlen, void *ud); /* or NULL */
    void *evict_ud;
    struct idem_keylock *flights; /* get_or_compute's single flight */
    atomic_uint_fast64_t computes;
    void *shards_mem; /* as allocated; shards is it, cache-line aligned */
    struct idem__cache_shard *shards;
};

/* What each index holds, counted by walking it (tests; O(entries)). */
struct idem__cache_counts {
    size_t table;   /* entries in bucket chains */
    size_t queue;   /* entries in eviction queues */
    size_t wheel;   /* nodes in expiry wheels */
    size_t pinned;  /* entries with pins */
    size_t bytes;   /* bytes charged */
    size_t buckets; /* bucket slots, all shards */
};

void idem__cache_index_counts(struct idem_cache *c,
                              struct idem__cache_counts *counts_out);

static inline size_t idem__cache_entry_bytes(const struct idem__cache_entry *e)
{
    return IDEM_CACHE_ENTRY_OVERHEAD + (size_t)e->klen + e->vlen;
}

static inline bool idem__cache_expired(const struct idem__cache_entry *e,
                                       uint64_t now)
{
    return e->ttl.expires != 0 && now >= e->ttl.expires;
}

/* Whether an entry of these lengths fits a shard's share of max_bytes. */
static inline bool idem__cache_entry_fits(const struct idem_cache *c,
                                          size_t klen, size_t vlen)
{
    return klen <= UINT32_MAX && vlen <= UINT32_MAX &&
           IDEM_CACHE_ENTRY_OVERHEAD + klen + vlen <= c->shard_max_bytes;
}

/* A home holding a copy of env, with the caller's reference; NULL: no
 * memory. */
struct idem__cache_home *idem__cache_home_new(const struct idem_env *env);

/* Drop a reference to h; the last frees it. */
void idem__cache_home_put(struct idem__cache_home *h);

/* An allocated, unlinked entry holding a copy of key and vlen bytes of
 * room for the value (copied from value unless it is NULL). refs 1. */
struct idem__cache_entry *idem__cache_entry_new(struct idem_cache *c,
                                                const void *key, size_t klen,
                                                const void *value, size_t vlen);

/* Drop the table's reference to an unlinked entry (no lock needed). */
void idem__cache_entry_put(struct idem_cache *c, struct idem__cache_entry *e);

/* Put every entry of a list built by the _locked calls below; returns how
 * many. Call with no lock held. */
size_t idem__cache_bury(struct idem_cache *c, struct idem__cache_entry *grave);

/* -- Shard operations: the caller holds s->mu. Unlinked entries go on
 * *grave, to be put by idem__cache_bury() once the lock is dropped. --- */

/* key's entry if it is live; an expired one is reclaimed (counted). */
struct idem__cache_entry *
idem__cache_find_locked(struct idem_cache *c, struct idem__cache_shard *s,
                        uint64_t h, const void *key, size_t klen, uint64_t now,
                        struct idem__cache_entry **grave);

/* Link e (hash h) into the table, the queue and, if expires, the wheel. */
void idem__cache_link_locked(struct idem_cache *c, struct idem__cache_shard *s,
                             struct idem__cache_entry *e, uint64_t h,
                             uint64_t expires);

/* Take e out of every index and put it on *grave. Counts nothing. */
void idem__cache_unlink_locked(struct idem_cache *c,
                               struct idem__cache_shard *s,
                               struct idem__cache_entry *e,
                               struct idem__cache_entry **grave);

/* Reclaim expired entries with at most budget units of wheel work. True
 * when none is left. */
bool idem__cache_reclaim_locked(struct idem_cache *c,
                                struct idem__cache_shard *s, uint64_t now,
                                size_t budget,
                                struct idem__cache_entry **grave);

/* Evict until an entry of new_bytes fits the shard's shares, replacing
 * keep (NULL: a new key), which is never evicted. caught_up: no expired
 * entry is left to reclaim first. IDEM_OK or IDEM_EBUSY (all pinned). */
int idem__cache_make_room_locked(struct idem_cache *c,
                                 struct idem__cache_shard *s, uint64_t now,
                                 const struct idem__cache_entry *keep,
                                 size_t new_bytes, bool caught_up,
                                 struct idem__cache_entry **grave);

/* Unlink every entry at once, pinned ones too; returns how many. */
size_t idem__cache_clear_locked(struct idem_cache *c,
                                struct idem__cache_shard *s,
                                struct idem__cache_entry **grave);

/* Shrink the bucket array if the load fell below 1/4. */
void idem__cache_maybe_shrink_locked(struct idem_cache *c,
                                     struct idem__cache_shard *s);

/* Internal store behind set, update and get_or_compute. */
#define IDEM__CACHE_UPDATE 0x100u /* the key must be live; keep its expiry */

/* Link the prepared entry e under flags (IDEM_CACHE_NX, IDEM_CACHE_PIN,
 * IDEM__CACHE_UPDATE). Consumes e whatever the answer. On IDEM_OK with
 * ref_out, *ref_out is a new handle to e. */
int idem__cache_store(struct idem_cache *c, struct idem__cache_entry *e,
                      int64_t ttl_ms, unsigned flags,
                      struct idem_cache_value **ref_out);

/* idem_cache_get, counting a hit or miss only if counted. */
int idem__cache_get(struct idem_cache *c, const void *key, size_t klen,
                    bool counted, struct idem_cache_value **value_out);

#endif
