/* cache shards: the chained table that grows and shrinks, the SIEVE
 * eviction queue, and the glue to the expiry wheel. Every function runs
 * under the shard lock; unlinked entries are handed back on a list so
 * that they are freed after it is dropped. docs/internals/cache.md. */
#include <string.h>

#include "cache_internal.h"
#include "hash.h"

#define ROOM_BUDGET 64u /* wheel work per round before evicting live ones */
#define EVICT_ASKS 64u  /* refusals of the evict hook before giving up */

static size_t bucket_of(const struct idem_cache *c,
                        const struct idem__cache_shard *s,
                        const struct idem__cache_entry *e)
{
    return (size_t)idem__hash(e->data, e->klen, c->seed) & s->mask;
}

/* Rebuild s's bucket array with n buckets. On allocation failure the old
 * array stays: chains get longer or the array stays larger, nothing
 * breaks, and a later call tries again. */
static void rehash_locked(struct idem_cache *c, struct idem__cache_shard *s,
                          size_t n)
{
    struct idem__cache_entry **nb = idem__alloc(&c->env, n * sizeof(*nb));
    struct idem__cache_entry *e, *next;
    size_t i, b, old = s->mask + 1;

    if (!nb)
        return;
    memset(nb, 0, n * sizeof(*nb));
    for (i = 0; i < old; i++) {
        for (e = s->buckets[i]; e; e = next) {
            next = e->u.next;
            b = (size_t)idem__hash(e->data, e->klen, c->seed) & (n - 1);
            e->u.next = nb[b];
            nb[b] = e;
        }
    }
    idem__free(&c->env, s->buckets);
    s->bytes = s->bytes - old * sizeof(*nb) + n * sizeof(*nb);
    s->buckets = nb;
    s->mask = n - 1;
}

void idem__cache_maybe_shrink_locked(struct idem_cache *c,
                                     struct idem__cache_shard *s)
{
    size_t n = s->mask + 1;

    while (n > IDEM__CACHE_MIN_BUCKETS && s->count < n / 4)
        n /= 2;
    if (n != s->mask + 1)
        rehash_locked(c, s, n);
}

static struct idem__cache_entry *lookup_locked(struct idem__cache_shard *s,
                                               uint64_t h, const void *key,
                                               size_t klen)
{
    struct idem__cache_entry *e = s->buckets[h & s->mask];

    while (e &&
           !(e->klen == klen && (klen == 0 || memcmp(e->data, key, klen) == 0)))
        e = e->u.next;
    return e;
}

struct idem__cache_entry *
idem__cache_find_locked(struct idem_cache *c, struct idem__cache_shard *s,
                        uint64_t h, const void *key, size_t klen, uint64_t now,
                        struct idem__cache_entry **grave)
{
    struct idem__cache_entry *e = lookup_locked(s, h, key, klen);

    if (e && idem__cache_expired(e, now)) {
        s->expired++;
        idem__cache_unlink_locked(c, s, e, grave);
        e = NULL;
    }
    return e;
}

void idem__cache_link_locked(struct idem_cache *c, struct idem__cache_shard *s,
                             struct idem__cache_entry *e, uint64_t h,
                             uint64_t expires)
{
    e->u.next = s->buckets[h & s->mask];
    s->buckets[h & s->mask] = e;
    e->newer = NULL;
    e->older = s->newest;
    if (s->newest)
        s->newest->newer = e;
    else
        s->oldest = e;
    s->newest = e;
    e->visited = 0;
    e->linked = 1;
    e->ttl.expires = 0;
    if (expires)
        idem__ttl_insert(&s->wheel, &e->ttl, expires);
    s->count++;
    s->bytes += idem__cache_entry_bytes(e);
    s->pinned += e->pins != 0;
    if (s->count > s->mask + 1)
        rehash_locked(c, s, 2 * (s->mask + 1));
}

static void queue_unlink(struct idem__cache_shard *s,
                         struct idem__cache_entry *e)
{
    if (s->hand == e)
        s->hand = e->newer;
    if (e->older)
        e->older->newer = e->newer;
    else
        s->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        s->newest = e->older;
    e->newer = e->older = NULL;
}

void idem__cache_unlink_locked(struct idem_cache *c,
                               struct idem__cache_shard *s,
                               struct idem__cache_entry *e,
                               struct idem__cache_entry **grave)
{
    struct idem__cache_entry **pp = &s->buckets[bucket_of(c, s, e)];

    assert(e->linked);
    while (*pp != e)
        pp = &(*pp)->u.next;
    *pp = e->u.next;
    queue_unlink(s, e);
    idem__ttl_remove(&s->wheel, &e->ttl);
    s->count--;
    s->bytes -= idem__cache_entry_bytes(e);
    s->pinned -= e->pins != 0;
    e->linked = 0;
    e->u.next = *grave;
    *grave = e;
    idem__cache_maybe_shrink_locked(c, s);
}

bool idem__cache_reclaim_locked(struct idem_cache *c,
                                struct idem__cache_shard *s, uint64_t now,
                                size_t budget, struct idem__cache_entry **grave)
{
    struct idem__ttl_node *due = NULL, *n;
    bool done = idem__ttl_advance(&s->wheel, now, &budget, &due);

    while ((n = due) != NULL) {
        due = n->next;
        n->next = NULL;
        s->expired++;
        idem__cache_unlink_locked(
            c, s, IDEM_CONTAINER_OF(n, struct idem__cache_entry, ttl), grave);
    }
    return done;
}

/* Whether the cache's evict hook lets e go (live entries only). */
static bool may_evict(const struct idem_cache *c,
                      const struct idem__cache_entry *e, uint64_t now)
{
    return !c->evict || idem__cache_expired(e, now) ||
           c->evict(e->data + e->klen, e->vlen, c->evict_ud);
}

/* SIEVE: from the hand towards newer entries (wrapping to the oldest),
 * clear the visited bit of each evictable entry until one without it turns
 * up that the evict hook lets go; the hand stays just past it. Without a
 * hook, two rounds at most, since the first clears every bit it passes;
 * with one, at most EVICT_ASKS refusals. NULL when nothing is evictable. */
static struct idem__cache_entry *
victim_locked(const struct idem_cache *c, struct idem__cache_shard *s,
              const struct idem__cache_entry *keep, uint64_t now)
{
    size_t protected = s->pinned + (keep && !keep->pins);
    size_t asks = 0, steps = 0, bound = 2 * s->count + 1;
    struct idem__cache_entry *e = s->hand ? s->hand : s->oldest;

    if (s->count <= protected)
        return NULL;
    for (;; e = e->newer ? e->newer : s->oldest) {
        if (++steps > bound && asks)
            return NULL; /* every candidate was kept */
        if (e->pins || e == keep)
            continue;
        if (e->visited) {
            e->visited = 0;
            continue;
        }
        if (may_evict(c, e, now))
            break;
        if (++asks >= EVICT_ASKS)
            return NULL;
    }
    s->hand = e->newer;
    return e;
}

/* Whether an entry of new_bytes fits, replacing keep, counting the bucket
 * array's doubling that a new key past load 1 brings. */
static bool fits_locked(const struct idem_cache *c,
                        const struct idem__cache_shard *s,
                        const struct idem__cache_entry *keep, size_t new_bytes)
{
    size_t count = s->count + !keep;
    size_t bytes = s->bytes + new_bytes;

    if (keep)
        bytes -= idem__cache_entry_bytes(keep);
    if (count > s->mask + 1)
        bytes += (s->mask + 1) * sizeof(*s->buckets);
    return count <= c->shard_max_entries && bytes <= c->shard_max_bytes;
}

int idem__cache_make_room_locked(struct idem_cache *c,
                                 struct idem__cache_shard *s, uint64_t now,
                                 const struct idem__cache_entry *keep,
                                 size_t new_bytes, bool caught_up,
                                 struct idem__cache_entry **grave)
{
    struct idem__cache_entry *v;

    while (!fits_locked(c, s, keep, new_bytes)) {
        if (!caught_up) { /* expired entries go before live ones */
            caught_up =
                idem__cache_reclaim_locked(c, s, now, ROOM_BUDGET, grave);
            continue;
        }
        v = victim_locked(c, s, keep, now);
        if (!v)
            return IDEM_EBUSY;
        if (idem__cache_expired(v, now))
            s->expired++;
        else
            s->evicted++;
        idem__cache_unlink_locked(c, s, v, grave);
    }
    return IDEM_OK;
}

size_t idem__cache_clear_locked(struct idem_cache *c,
                                struct idem__cache_shard *s,
                                struct idem__cache_entry **grave)
{
    struct idem__cache_entry *e;
    size_t n = s->count;

    while ((e = s->oldest) != NULL) {
        s->oldest = e->newer;
        e->newer = e->older = NULL;
        idem__ttl_remove(&s->wheel, &e->ttl);
        e->linked = 0;
        e->u.next = *grave;
        *grave = e;
    }
    memset(s->buckets, 0, (s->mask + 1) * sizeof(*s->buckets));
    s->newest = s->hand = NULL;
    s->count = 0;
    s->pinned = 0;
    s->bytes = (s->mask + 1 - IDEM__CACHE_MIN_BUCKETS) * sizeof(*s->buckets);
    idem__cache_maybe_shrink_locked(c, s);
    return n;
}

static void count_shard_locked(const struct idem__cache_shard *s,
                               struct idem__cache_counts *n)
{
    const struct idem__cache_entry *e;
    size_t b;

    for (b = 0; b <= s->mask; b++)
        for (e = s->buckets[b]; e; e = e->u.next)
            n->table++;
    for (e = s->oldest; e; e = e->newer) {
        n->queue++;
        n->pinned += e->pins != 0;
    }
    n->wheel += idem__ttl_walk_count(&s->wheel);
    n->bytes += s->bytes;
    n->buckets += s->mask + 1;
}

void idem__cache_index_counts(struct idem_cache *c,
                              struct idem__cache_counts *counts_out)
{
    struct idem__cache_counts n = { 0 };
    unsigned i;

    for (i = 0; i < c->nshards; i++) {
        pthread_mutex_lock(&c->shards[i].mu);
        count_shard_locked(&c->shards[i], &n);
        pthread_mutex_unlock(&c->shards[i].mu);
    }
    *counts_out = n;
}
