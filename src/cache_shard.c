/* cache shards: the table (src/table.c), the SIEVE eviction queue, the
 * glue to the expiry wheel, and the limbo where unlinked entries wait for
 * lock-free readers to move on. Every function runs under the shard lock;
 * what the limbo gives up is freed after it is dropped.
 * docs/internals/cache.md. */
#include <string.h>

#include "cache_internal.h"
#include "hash.h"

#define ROOM_BUDGET 64u  /* wheel work per round before evicting live ones */
#define EVICT_ASKS 64u   /* refusals of the evict hook before giving up */
#define TABLE_STEP 16u   /* slots of a resize moved per write */
#define LIMBO_BATCH 128u /* unlinked entries aged together */
#define LIMBO_BYTES (256u << 10)

static struct idem__cache_entry *entry_of_node(struct idem__list *n)
{
    return idem__list_entry(n, struct idem__cache_entry, u.q);
}

/* -- Table glue ------------------------------------------------------ */

static uint64_t entry_hash(const void *item, void *ud)
{
    const struct idem__cache_entry *e = item;
    const struct idem__cache_shard *s = ud;

    return idem__hash(e->data, e->klen, s->seed);
}

static void retire_array(struct idem__table_array *a, void *ud)
{
    struct idem__cache_limbo *l = &((struct idem__cache_shard *)ud)->limbo;

    idem__list_push_back(&l->fresh_arrays, &a->retired);
    l->fresh_n++;
    l->fresh_bytes += (a->mask + 1) * sizeof(uint64_t);
}

void idem__cache_table_ops(struct idem_cache *c, struct idem__cache_shard *s,
                           struct idem__table_ops *ops_out)
{
    s->seed = c->seed;
    *ops_out = (struct idem__table_ops){ .hash = entry_hash,
                                         .retire = retire_array,
                                         .ud = s };
}

void idem__cache_table_work_locked(struct idem_cache *c,
                                   struct idem__cache_shard *s)
{
    size_t due = idem__table_due(&s->table);

    /* a new array is charged from the start: begin only if it fits */
    if (due && idem__cache_shard_bytes(s) + due * sizeof(uint64_t) >
                   c->shard_max_bytes)
        return;
    idem__table_step(&s->table, TABLE_STEP);
}

struct idem__cache_entry *
idem__cache_find_locked(struct idem_cache *c, struct idem__cache_shard *s,
                        uint64_t h, const void *key, size_t klen,
                        struct idem__cache_now *t,
                        struct idem__table_pos *pos_out)
{
    struct idem__cache_key k = { key, klen };
    struct idem__cache_entry *e =
        idem__table_find_pos(&s->table, h, idem__cache_entry_eq, &k, pos_out);

    if (e && idem__cache_past(t, idem__cache_expires(e))) {
        s->expired++;
        idem__cache_unlink_locked(c, s, e, *pos_out);
        e = NULL;
    }
    return e;
}

/* -- Linking and unlinking ------------------------------------------- */

static void queue_unlink(struct idem__cache_shard *s,
                         struct idem__cache_entry *e)
{
    if (s->hand == e) { /* the hand moves on towards newer entries */
        struct idem__list *newer = e->u.q.prev;

        s->hand = newer == &s->queue ? NULL : entry_of_node(newer);
    }
    idem__list_remove(&e->u.q);
}

void idem__cache_link_locked(struct idem_cache *c, struct idem__cache_shard *s,
                             struct idem__cache_entry *e, uint64_t h,
                             uint64_t expires, struct idem__cache_entry *old,
                             struct idem__table_pos pos)
{
    idem__list_push_front(&s->queue, &e->u.q);
    atomic_store_explicit(&e->visited, 0, memory_order_relaxed);
    e->linked = 1;
    atomic_store_explicit(&e->ttl.expires, 0, memory_order_relaxed);
    if (expires)
        idem__ttl_insert(&s->wheel, &e->ttl, expires);
    s->count++;
    s->entry_bytes += idem__cache_entry_bytes(e);
    s->pinned += e->pins != 0;
    if (old) { /* same slot: a reader sees the old entry or the new one */
        idem__table_replace(&s->table, pos, e);
        old->linked = 0;
        queue_unlink(s, old);
        idem__ttl_remove(&s->wheel, &old->ttl);
        s->count--;
        s->entry_bytes -= idem__cache_entry_bytes(old);
        s->pinned -= old->pins != 0;
        idem__list_push_back(&s->limbo.fresh, &old->u.q);
        s->limbo.fresh_n++;
        s->limbo.fresh_bytes += idem__cache_entry_bytes(old);
    } else {
        idem__table_insert(&s->table, h, e);
    }
    (void)c;
}

void idem__cache_unlink_locked(struct idem_cache *c,
                               struct idem__cache_shard *s,
                               struct idem__cache_entry *e,
                               struct idem__table_pos pos)
{
    assert(e->linked);
    idem__table_remove(&s->table, pos);
    queue_unlink(s, e);
    idem__ttl_remove(&s->wheel, &e->ttl);
    s->count--;
    s->entry_bytes -= idem__cache_entry_bytes(e);
    s->pinned -= e->pins != 0;
    e->linked = 0;
    idem__list_push_back(&s->limbo.fresh, &e->u.q);
    s->limbo.fresh_n++;
    s->limbo.fresh_bytes += idem__cache_entry_bytes(e);
    if (s->count == 0) /* back to the smallest array at once */
        idem__table_clear(&s->table);
    (void)c;
}

/* Unlink e, found by its node in the wheel or the queue. */
static void unlink_entry_locked(struct idem_cache *c,
                                struct idem__cache_shard *s,
                                struct idem__cache_entry *e)
{
    struct idem__cache_key k = { e->data, e->klen };
    struct idem__table_pos pos;
    void *found = idem__table_find_pos(&s->table, entry_hash(e, s),
                                       idem__cache_entry_eq, &k, &pos);

    assert(found == e);
    (void)found;
    idem__cache_unlink_locked(c, s, e, pos);
}

bool idem__cache_reclaim_locked(struct idem_cache *c,
                                struct idem__cache_shard *s, uint64_t now,
                                size_t budget)
{
    struct idem__ttl_node *due = NULL, *n;
    bool done = idem__ttl_advance(&s->wheel, now, &budget, &due);

    while ((n = due) != NULL) {
        due = n->next;
        n->next = NULL;
        s->expired++;
        unlink_entry_locked(
            c, s, IDEM_CONTAINER_OF(n, struct idem__cache_entry, ttl));
    }
    return done;
}

/* -- Eviction -------------------------------------------------------- */

/* Whether the cache's evict hook lets e go (live entries only). */
static bool may_evict(const struct idem_cache *c,
                      const struct idem__cache_entry *e,
                      struct idem__cache_now *t)
{
    return !c->evict || idem__cache_past(t, idem__cache_expires(e)) ||
           c->evict(e->data + e->klen, e->vlen, c->evict_ud);
}

/* The entry after e towards newer ones, wrapping to the oldest. */
static struct idem__cache_entry *newer_of(struct idem__cache_shard *s,
                                          struct idem__cache_entry *e)
{
    struct idem__list *n = e->u.q.prev;

    return entry_of_node(n == &s->queue ? s->queue.prev : n);
}

/* SIEVE: from the hand towards newer entries (wrapping to the oldest),
 * clear the visited bit of each evictable entry until one without it turns
 * up that the evict hook lets go; the hand stays just past it. Without a
 * hook, two rounds at most, since the first clears every bit it passes;
 * with one, at most EVICT_ASKS refusals. NULL when nothing is evictable. */
static struct idem__cache_entry *
victim_locked(const struct idem_cache *c, struct idem__cache_shard *s,
              const struct idem__cache_entry *keep, struct idem__cache_now *t)
{
    size_t protected = s->pinned + (keep && !keep->pins);
    size_t asks = 0, steps = 0, bound = 2 * s->count + 1;
    struct idem__cache_entry *e =
        s->hand ? s->hand : entry_of_node(s->queue.prev);

    if (s->count <= protected)
        return NULL;
    for (;; e = newer_of(s, e)) {
        if (++steps > bound && asks)
            return NULL; /* every candidate was kept */
        if (e->pins || e == keep)
            continue;
        if (atomic_load_explicit(&e->visited, memory_order_relaxed)) {
            atomic_store_explicit(&e->visited, 0, memory_order_relaxed);
            continue;
        }
        if (may_evict(c, e, t))
            break;
        if (++asks >= EVICT_ASKS)
            return NULL;
    }
    s->hand = e->u.q.prev == &s->queue ? NULL : entry_of_node(e->u.q.prev);
    return e;
}

/* Whether an entry of new_bytes fits, replacing keep, counting the table
 * array that a new key would make the table allocate. */
static bool fits_locked(const struct idem_cache *c,
                        const struct idem__cache_shard *s,
                        const struct idem__cache_entry *keep, size_t new_bytes)
{
    size_t count = s->count + !keep;
    size_t bytes = idem__cache_shard_bytes(s) + new_bytes;

    if (keep)
        bytes -= idem__cache_entry_bytes(keep);
    else
        bytes += idem__table_insert_cost(&s->table) * sizeof(uint64_t);
    return count <= c->shard_max_entries && bytes <= c->shard_max_bytes;
}

int idem__cache_make_room_locked(struct idem_cache *c,
                                 struct idem__cache_shard *s,
                                 struct idem__cache_now *t,
                                 const struct idem__cache_entry *keep,
                                 size_t new_bytes, bool caught_up)
{
    struct idem__cache_entry *v;

    while (!fits_locked(c, s, keep, new_bytes)) {
        if (!caught_up) { /* expired entries go before live ones */
            caught_up = idem__cache_reclaim_locked(c, s, t->lo, ROOM_BUDGET);
            continue;
        }
        v = victim_locked(c, s, keep, t);
        if (!v)
            return IDEM_EBUSY;
        if (idem__cache_past(t, idem__cache_expires(v)))
            s->expired++;
        else
            s->evicted++;
        unlink_entry_locked(c, s, v);
    }
    return IDEM_OK;
}

size_t idem__cache_clear_locked(struct idem_cache *c,
                                struct idem__cache_shard *s)
{
    struct idem__cache_entry *e;
    size_t n = s->count;

    while (!idem__list_empty(&s->queue)) {
        e = entry_of_node(s->queue.next);
        idem__list_remove(&e->u.q);
        idem__ttl_remove(&s->wheel, &e->ttl);
        e->linked = 0;
        idem__list_push_back(&s->limbo.fresh, &e->u.q);
        s->limbo.fresh_n++;
        s->limbo.fresh_bytes += idem__cache_entry_bytes(e);
    }
    idem__table_clear(&s->table);
    s->hand = NULL;
    s->count = 0;
    s->pinned = 0;
    s->entry_bytes = 0;
    (void)c;
    return n;
}

/* -- Limbo ----------------------------------------------------------- */

/* One round: give up the aging batch once the epoch is two past its
 * stamp, then age the fresh one. Unforced, it waits for a full fresh
 * batch, so the epoch (and with it, a membarrier) moves a few times per
 * batch rather than per write. Retired arrays, being large, go at once. */
static void collect_once(struct idem_cache *c, struct idem__cache_shard *s,
                         struct idem__cache_ready *r, bool force)
{
    struct idem__cache_limbo *l = &s->limbo;
    bool aging =
        !idem__list_empty(&l->aging) || !idem__list_empty(&l->aging_arrays);
    uint64_t now;

    if (!force && l->fresh_n < LIMBO_BATCH && l->fresh_bytes < LIMBO_BYTES &&
        idem__list_empty(&l->fresh_arrays) &&
        idem__list_empty(&l->aging_arrays))
        return;
    if (!aging && !l->fresh_n)
        return;
    now = idem__epoch_advance(c->epoch);
    if (aging && !force && now < l->at + 2)
        now = idem__epoch_advance(c->epoch);
    if (aging && now >= l->at + 2) {
        idem__list_splice_back(&r->entries, &l->aging);
        idem__list_splice_back(&r->arrays, &l->aging_arrays);
        aging = false;
    }
    if (aging || !l->fresh_n)
        return;
    idem__list_splice_back(&l->aging, &l->fresh);
    idem__list_splice_back(&l->aging_arrays, &l->fresh_arrays);
    l->fresh_n = l->fresh_bytes = 0;
    l->at = atomic_load(&c->epoch->now); /* after every unlink of the batch */
    idem__epoch_advance(c->epoch);
}

/* Forced (tick, size, clear), as many rounds as it takes to empty the
 * limbo when no reader is inside: three. */
void idem__cache_collect_locked(struct idem_cache *c,
                                struct idem__cache_shard *s,
                                struct idem__cache_ready *r, bool force)
{
    int rounds = force ? 3 : 1;

    while (rounds-- > 0)
        collect_once(c, s, r, force);
}

/* -- Introspection --------------------------------------------------- */

static int count_item(void *item, void *ud)
{
    (void)item;
    (*(size_t *)ud)++;
    return 0;
}

static void count_shard_locked(struct idem__cache_shard *s,
                               struct idem__cache_counts *n)
{
    struct idem__list *q;

    idem__table_foreach(&s->table, count_item, &n->table);
    for (q = s->queue.next; q != &s->queue; q = q->next) {
        n->queue++;
        n->pinned += entry_of_node(q)->pins != 0;
    }
    for (q = s->limbo.fresh.next; q != &s->limbo.fresh; q = q->next)
        n->limbo++;
    for (q = s->limbo.aging.next; q != &s->limbo.aging; q = q->next)
        n->limbo++;
    n->wheel += idem__ttl_walk_count(&s->wheel);
    n->bytes += idem__cache_shard_bytes(s);
    n->buckets += idem__table_slots(&s->table);
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
    for (i = 0; i < IDEM__EPOCH_SLOTS; i++)
        n.readers += atomic_load(&c->epoch->slot[i].owner) != 0;
    *counts_out = n;
}
