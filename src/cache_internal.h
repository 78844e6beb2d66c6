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
#include <string.h>
#include <time.h>

#include "idem/cache.h"
#include "idem/keylock.h"
#include "internal.h"
#include "list.h"
#include "table.h"

#define IDEM__CACHE_MIN_BUCKETS IDEM__TABLE_MIN
#define IDEM__EPOCH_SLOTS 64u

/* What removed entries still held by readers need to free themselves once
 * the cache is gone: its allocator. Its references are the cache's and
 * one per such entry. */
struct idem__cache_home {
    struct idem_env env;
    atomic_size_t refs;
};

/* `expires` of an entry no longer in the table: the low bits are then a
 * pointer, the next entry in a limbo chain and later the home. No time of
 * expiry has this bit (2^63 ms is 292 million years). */
#define IDEM__CACHE_GONE ((uint64_t)1 << 63)

/* One entry, in one allocation with its key and value: a 24-byte header.
 * A value handle is a pointer to it: references are the table's (while
 * linked, and until no lock-free reader can still find it) plus one per
 * handle; the last one frees it. The table is its only index. A lock-free
 * get reads expires, refs, visited, klen and the key. Everything else is
 * guarded by the shard lock; klen, vlen and the bytes never change once
 * the entry is published. */
struct idem__cache_entry {
    _Atomic uint64_t expires; /* 0: never; with IDEM__CACHE_GONE, unlinked:
                               * a limbo link, then the home */
    atomic_uint refs;
    uint32_t klen;
    uint32_t vlen;
    uint16_t pins;
    atomic_uchar visited; /* read since the hand passed */
    uint8_t linked;       /* in the table */
    unsigned char data[]; /* key, then value */
};

/* The header, allocated with each entry (the charge adds the
 * allocator's block header). */
#define IDEM__CACHE_HEADER offsetof(struct idem__cache_entry, data)

_Static_assert(IDEM__CACHE_HEADER == 24, "the entry header is 24 bytes");
_Static_assert(IDEM_CACHE_ENTRY_OVERHEAD == IDEM__CACHE_HEADER + 8,
               "IDEM_CACHE_ENTRY_OVERHEAD is the header and a malloc block's");

/* Epoch-based reclamation for the lock-free get (cache_epoch.c). A slot
 * belongs to one thread (owner, from its first get until it exits); its
 * state is (epoch << 1) | 1 while the thread is inside a section, 0
 * otherwise. Its hits and misses are counted in the slot (written only by
 * the owner), so reads share no written line. */
struct idem__epoch_slot {
    _Alignas(IDEM_CACHELINE) atomic_uint_fast64_t state;
    atomic_uint_fast64_t hits, misses;
    atomic_uintptr_t owner; /* the owning thread's token, 0: free */
};

struct idem__epoch {
    _Alignas(IDEM_CACHELINE) atomic_uint_fast64_t now;
    atomic_uint used;       /* slots ever owned: the scan's end */
    uint64_t uid;           /* unique per cache, for threads' memos */
    struct idem__list live; /* in the registry of live epochs */
    struct idem__epoch_slot slot[IDEM__EPOCH_SLOTS];
};

/* Register a zeroed epoch (threads give their slots back at exit), and
 * unregister it before it is freed. */
void idem__epoch_init(struct idem__epoch *ep);
void idem__epoch_deinit(struct idem__epoch *ep);

/* This thread's slot in the cache it read last (uid 0: none). */
struct idem__epoch_memo {
    uint64_t uid;
    unsigned slot;
};

extern IDEM_TLS_FAST _Thread_local struct idem__epoch_memo idem__epoch_memo;
/* Whether writers issue membarrier() in idem__epoch_advance, so that a
 * reader's stamp is a plain store; set once, before any cache exists. */
extern atomic_bool idem__epoch_asym;

/* The slot this thread owns in ep, claiming a free one (and remembering
 * it in the memo); IDEM__EPOCH_SLOTS when every slot belongs to another
 * thread. */
unsigned idem__epoch_claim(struct idem__epoch *ep);

/* This thread's slot in ep when its memo names one (every read but the
 * thread's first on this cache), else IDEM__EPOCH_SLOTS: then
 * idem__epoch_claim. */
static inline unsigned idem__epoch_mine(const struct idem__epoch *ep)
{
    return idem__epoch_memo.uid == ep->uid ? idem__epoch_memo.slot
                                           : IDEM__EPOCH_SLOTS;
}

/* Enter a read-side section in this thread's slot i, without a locked
 * instruction. Never blocks. With the asymmetric fence, either the
 * writer's scan (after its membarrier) sees the stamp, or this reader's
 * probe, after the compiler barrier, sees the writer's unlink: never
 * neither. Otherwise a sequentially consistent store does the same. */
static inline void idem__epoch_enter(struct idem__epoch *ep, unsigned i)
{
    uint_fast64_t stamp =
        atomic_load_explicit(&ep->now, memory_order_relaxed) << 1 | 1;

    if (atomic_load_explicit(&idem__epoch_asym, memory_order_relaxed)) {
        atomic_store_explicit(&ep->slot[i].state, stamp, memory_order_release);
        atomic_signal_fence(memory_order_seq_cst);
    } else {
        atomic_store(&ep->slot[i].state, stamp);
    }
}

static inline void idem__epoch_exit(struct idem__epoch *ep, unsigned slot)
{
    atomic_store_explicit(&ep->slot[slot].state, 0, memory_order_release);
}
/* Move the epoch on if every reader inside has seen it; the new epoch. */
uint64_t idem__epoch_advance(struct idem__epoch *ep);

/* Unlinked entries in order, linked through their `expires` (an entry has
 * no other room for a link, and once unlinked no reader needs the time). */
struct idem__cache_chain {
    struct idem__cache_entry *head, *tail;
};

/* What unlinked entries and retired table arrays wait in until no reader
 * can hold them: `fresh` since the last look, `aging` since epoch `at`.
 * Aging ones are safe once the epoch is at + 2. */
struct idem__cache_limbo {
    struct idem__cache_chain fresh, aging;
    struct idem__list fresh_arrays, aging_arrays;
    size_t fresh_n, fresh_bytes;
    uint64_t at;
};

/* The expiry sweep's state: a cursor over the table's slots (positions as
 * idem__table_at), and a lower bound on the earliest expiry in the shard
 * (UINT64_MAX: no entry has a TTL), made exact again by each lap. */
struct idem__cache_sweep {
    size_t at;         /* the next position to look at */
    uint64_t next_due; /* no entry expires before it */
    uint64_t lap_min;  /* earliest expiry seen or linked this lap */
    uint64_t lap_gen;  /* the table's gen when the lap began */
    bool lap_clean;    /* no resize was under way when it began */
};

/* A shard: a table (src/table.c), the only index of its entries, with the
 * eviction hand and the expiry sweep both walking its slots, the limbo,
 * and counters; all under mu, except that gets probe the table with no
 * lock. bytes = entries charged, plus table slots beyond
 * IDEM__CACHE_MIN_BUCKETS (see shard_bytes). */
struct idem__cache_shard {
    _Alignas(IDEM_CACHELINE) pthread_mutex_t mu;
    uint64_t seed; /* the cache's, for the table's rehash */
    struct idem__table table;
    size_t hand; /* CLOCK: eviction's count; the next position is
                  * hand_at(hand, span) (cache_shard.c) */
    struct idem__cache_sweep sweep;
    size_t count;
    size_t entry_bytes;
    size_t pinned; /* entries with pins */
    uint64_t hits, misses, sets, removes, expired, evicted;
    struct idem__cache_limbo limbo;
};

struct idem_cache {
    struct idem_env env;
    struct idem__cache_home *home;
    uint64_t seed;
    unsigned shift; /* 64 - log2(nshards) */
    unsigned nshards;
    size_t shard_max_entries; /* SIZE_MAX: no bound */
    size_t shard_max_bytes;
    uint64_t coarse_slack_ns; /* 0, or how far CLOCK_MONOTONIC may be past
                               * CLOCK_MONOTONIC_COARSE (2 ticks): the
                               * env's clock is the default one */
    bool (*evict)(const void *value, size_t vlen, void *ud); /* or NULL */
    void *evict_ud;
    struct idem_keylock *flights; /* get_or_compute's single flight */
    atomic_uint_fast64_t computes;
    void *shards_mem; /* as allocated: epoch, then shards, aligned */
    struct idem__epoch *epoch;
    struct idem__cache_shard *shards;
};

/* What each index holds, counted by walking it (tests; O(entries)). */
struct idem__cache_counts {
    size_t table;   /* entries in the tables */
    size_t timed;   /* of those, entries with a TTL */
    size_t pinned;  /* entries with pins */
    size_t bytes;   /* bytes charged */
    size_t buckets; /* table slots, all shards */
    size_t limbo;   /* unlinked entries waiting for readers to move on */
    size_t readers; /* epoch slots owned by a thread */
};

void idem__cache_index_counts(struct idem_cache *c,
                              struct idem__cache_counts *counts_out);

static inline size_t idem__cache_entry_bytes(const struct idem__cache_entry *e)
{
    return IDEM_CACHE_ENTRY_OVERHEAD + (size_t)e->klen + e->vlen;
}

/* The expiry of a linked entry (under the shard lock). */
static inline uint64_t idem__cache_expires(const struct idem__cache_entry *e)
{
    return atomic_load_explicit(&e->expires, memory_order_relaxed);
}

/* The next entry of a chain after e. */
static inline struct idem__cache_entry *
idem__cache_chain_next(const struct idem__cache_entry *e)
{
    uint64_t x = atomic_load_explicit(&e->expires, memory_order_relaxed);

    return (struct idem__cache_entry *)(uintptr_t)(x & ~IDEM__CACHE_GONE);
}

/* Append the unlinked e to ch. Release: a reader that sees the mark sees
 * the table without e (cache.c, idem__cache_get). */
static inline void idem__cache_chain_push(struct idem__cache_chain *ch,
                                          struct idem__cache_entry *e)
{
    atomic_store_explicit(&e->expires, IDEM__CACHE_GONE, memory_order_release);
    if (ch->tail)
        atomic_store_explicit(&ch->tail->expires,
                              IDEM__CACHE_GONE | (uint64_t)(uintptr_t)e,
                              memory_order_release);
    else
        ch->head = e;
    ch->tail = e;
}

/* Move every entry of from to the end of to. */
static inline void idem__cache_chain_splice(struct idem__cache_chain *to,
                                            struct idem__cache_chain *from)
{
    if (!from->head)
        return;
    if (to->tail)
        atomic_store_explicit(&to->tail->expires,
                              IDEM__CACHE_GONE |
                                  (uint64_t)(uintptr_t)from->head,
                              memory_order_relaxed);
    else
        to->head = from->head;
    to->tail = from->tail;
    from->head = from->tail = NULL;
}

/* Bytes a shard charges: its entries and its table beyond the minimum. */
static inline size_t idem__cache_shard_bytes(const struct idem__cache_shard *s)
{
    return s->entry_bytes +
           (idem__table_slots(&s->table) - IDEM__CACHE_MIN_BUCKETS) *
               sizeof(uint64_t);
}

/* Whether an entry of these lengths fits a shard's share of max_bytes. */
static inline bool idem__cache_entry_fits(const struct idem_cache *c,
                                          size_t klen, size_t vlen)
{
    return klen <= UINT32_MAX && vlen <= UINT32_MAX &&
           IDEM_CACHE_ENTRY_OVERHEAD + klen + vlen <= c->shard_max_bytes;
}

/* -- Time. One call's view of the env's clock: lo <= now_ms() <= hi at
 * the moment it was taken, from the coarse clock when the env's clock is
 * the default one (env.c), otherwise lo = hi = now_ms(). The precise
 * time is read only when a bound cannot decide, and then once. ------- */

struct idem__cache_now {
    const struct idem_env *env;
    uint64_t lo, hi;
    uint64_t now; /* read precisely; 0: not yet */
};

bool idem__env_now_bounds(const struct idem_env *env, uint64_t *lo_out,
                          uint64_t *hi_out);

void idem__cache_now_init(struct idem__cache_now *t,
                          const struct idem_env *env);

/* As idem__cache_now_init for a call that will need the precise time
 * anyway (it sets a TTL): that one read, lo = hi = now. */
void idem__cache_now_init_exact(struct idem__cache_now *t,
                                const struct idem_env *env);

/* The precise time. */
uint64_t idem__cache_now_exact(struct idem__cache_now *t);

/* c->coarse_slack_ns for env. */
uint64_t idem__cache_coarse_slack(const struct idem_env *env);

/* Whether an entry expiring at expires (not 0) is surely live, from the
 * coarse clock alone: the lock-free get's one clock read, inline. False
 * when it cannot tell (then idem__cache_past decides). */
static inline bool idem__cache_surely_live(const struct idem_cache *c,
                                           uint64_t expires)
{
    struct timespec ts;
    uint64_t ns;

    if (!c->coarse_slack_ns)
        return false;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    return expires > (ns + c->coarse_slack_ns) / 1000000u + 1;
}

/* Whether a time of expiry (0: never) is past: exact. */
static inline bool idem__cache_past(struct idem__cache_now *t, uint64_t expires)
{
    if (expires == 0 || expires > t->hi)
        return false;
    if (expires <= t->lo)
        return true;
    return expires <= idem__cache_now_exact(t);
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

/* Drop the table's reference to an entry no reader can find any more. */
void idem__cache_entry_put(struct idem_cache *c, struct idem__cache_entry *e);

/* What a limbo gave up: safe to free once the shard lock is dropped. */
struct idem__cache_ready {
    struct idem__cache_chain entries;
    struct idem__list arrays;
};

void idem__cache_ready_init(struct idem__cache_ready *r);

/* Put every entry and free every array of r; returns the entries. Call
 * with no lock held. */
size_t idem__cache_bury(struct idem_cache *c, struct idem__cache_ready *r);

/* -- Shard operations: the caller holds s->mu. Unlinked entries go to
 * the shard's limbo; idem__cache_collect_locked() hands over what is safe
 * to free, for idem__cache_bury() once the lock is dropped. ---------- */

/* Table ops for a shard (hash of an entry, retire into the limbo). */
void idem__cache_table_ops(struct idem_cache *c, struct idem__cache_shard *s,
                           struct idem__table_ops *ops_out);

/* A key to look up, for the table's eq. */
struct idem__cache_key {
    const void *key;
    size_t klen;
};

/* Whether entry item holds key. Inline, and the common 16-byte key is
 * compared without a call: the lock-free get's path stays short enough
 * that one get's cache misses overlap the next one's. */
static inline bool idem__cache_entry_eq(const void *item, const void *key)
{
    const struct idem__cache_entry *e = item;
    const struct idem__cache_key *k = key;

    if (e->klen != k->klen)
        return false;
    if (k->klen == 16)
        return memcmp(e->data, k->key, 16) == 0;
    return k->klen == 0 || memcmp(e->data, k->key, k->klen) == 0;
}

/* key's entry as the table holds it, live or not, with no lock: the
 * caller is inside an epoch section (idem__epoch_enter). */
static inline struct idem__cache_entry *
idem__cache_lookup(struct idem__cache_shard *s, uint64_t h, const void *key,
                   size_t klen)
{
    struct idem__cache_key k = { key, klen };

    return idem__table_find(&s->table, h, idem__cache_entry_eq, &k);
}

/* key's entry if it is live; an expired one is reclaimed (counted). */
struct idem__cache_entry *
idem__cache_find_locked(struct idem_cache *c, struct idem__cache_shard *s,
                        uint64_t h, const void *key, size_t klen,
                        struct idem__cache_now *t,
                        struct idem__table_pos *pos_out);

/* Link e (hash h) into the table, expiring at expires (0: never). old (at
 * pos) is replaced in place; NULL: a new key (after idem__table_reserve). */
void idem__cache_link_locked(struct idem_cache *c, struct idem__cache_shard *s,
                             struct idem__cache_entry *e, uint64_t h,
                             uint64_t expires, struct idem__cache_entry *old,
                             struct idem__table_pos pos);

/* Take e (at pos) out of the table into the limbo. Counts nothing. */
void idem__cache_unlink_locked(struct idem_cache *c,
                               struct idem__cache_shard *s,
                               struct idem__cache_entry *e,
                               struct idem__table_pos pos);

/* Give e (linked) the expiry expires (0: never). */
void idem__cache_set_expiry_locked(struct idem__cache_shard *s,
                                   struct idem__cache_entry *e,
                                   uint64_t expires);

/* Sweep on for at most budget slots, reclaiming entries expired at now,
 * if any may be. True when none is left (a lap has shown it). */
bool idem__cache_reclaim_locked(struct idem_cache *c,
                                struct idem__cache_shard *s, uint64_t now,
                                size_t budget);

/* Evict until an entry of new_bytes fits the shard's shares, replacing
 * keep (NULL: a new key), which is never evicted. caught_up: no expired
 * entry is left to reclaim first. IDEM_OK or IDEM_EBUSY (all pinned). */
int idem__cache_make_room_locked(struct idem_cache *c,
                                 struct idem__cache_shard *s,
                                 struct idem__cache_now *t,
                                 const struct idem__cache_entry *keep,
                                 size_t new_bytes, bool caught_up);

/* Unlink every entry at once, pinned ones too; returns how many. */
size_t idem__cache_clear_locked(struct idem_cache *c,
                                struct idem__cache_shard *s);

/* Move a table resize on by budget slots, or start one if it is due and
 * fits. */
void idem__cache_table_work_locked(struct idem_cache *c,
                                   struct idem__cache_shard *s, size_t budget);

/* Move what the limbo holds on, and hand over to r what is safe to free.
 * force: age even a small batch (tick, size). */
void idem__cache_collect_locked(struct idem_cache *c,
                                struct idem__cache_shard *s,
                                struct idem__cache_ready *r, bool force);

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
