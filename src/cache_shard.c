/* cache shards: the table (src/table.c), the one index of a shard's
 * entries; CLOCK eviction and the expiry sweep, both walking its slots;
 * and the limbo where unlinked entries wait for lock-free readers to move
 * on. Every function runs under the shard lock; what the limbo gives up is
 * freed after it is dropped. docs/internals/cache.md. */
#include <string.h>

#include "cache_internal.h"
#include "hash.h"

#define ROOM_SLOTS 256u  /* swept before a live entry is evicted */
#define EVICT_ASKS 64u   /* refusals of the evict hook before giving up */
#define SWEEP_BATCH 16u  /* slots whose entries are prefetched together */
#define LIMBO_BATCH 128u /* unlinked entries aged together */
#define HAND_BLOCK 4u    /* slots the hand looks at in a row */
#define HAND_STEP 7919u  /* a prime: see hand_at */
#define LIMBO_BYTES (256u << 10)

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
    l->fresh_bytes += a->n * sizeof(uint64_t);
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
                                   struct idem__cache_shard *s, size_t budget)
{
    size_t due = idem__table_due(&s->table);

    /* a new array is charged from the start: begin only if it fits */
    if (due && idem__cache_shard_bytes(s) + due * sizeof(uint64_t) >
                   c->shard_max_bytes)
        return;
    idem__table_step(&s->table, budget);
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

/* Start the sweep's lap over (the table changed under it, or it ended). */
static void lap_begin(struct idem__cache_shard *s)
{
    s->sweep.at = 0;
    s->sweep.lap_min = UINT64_MAX;
    s->sweep.lap_gen = s->table.gen;
    s->sweep.lap_clean = s->table.to == NULL;
}

void idem__cache_set_expiry_locked(struct idem__cache_shard *s,
                                   struct idem__cache_entry *e,
                                   uint64_t expires)
{
    atomic_store_explicit(&e->expires, expires, memory_order_relaxed);
    if (!expires)
        return;
    if (expires < s->sweep.next_due)
        s->sweep.next_due = expires;
    if (expires < s->sweep.lap_min)
        s->sweep.lap_min = expires;
}

/* Count e out of the shard and into the limbo. */
static void retire_entry(struct idem__cache_shard *s,
                         struct idem__cache_entry *e)
{
    s->count--;
    s->entry_bytes -= idem__cache_entry_bytes(e);
    s->pinned -= e->pins != 0;
    e->linked = 0;
    idem__cache_chain_push(&s->limbo.fresh, e);
    s->limbo.fresh_n++;
    s->limbo.fresh_bytes += idem__cache_entry_bytes(e);
}

void idem__cache_link_locked(struct idem_cache *c, struct idem__cache_shard *s,
                             struct idem__cache_entry *e, uint64_t h,
                             uint64_t expires, struct idem__cache_entry *old,
                             struct idem__table_pos pos)
{
    atomic_store_explicit(&e->visited, 0, memory_order_relaxed);
    e->linked = 1;
    idem__cache_set_expiry_locked(s, e, expires);
    s->count++;
    s->entry_bytes += idem__cache_entry_bytes(e);
    s->pinned += e->pins != 0;
    if (old) { /* same slot: a reader sees the old entry or the new one */
        idem__table_replace(&s->table, pos, e);
        retire_entry(s, old);
    } else {
        idem__table_insert(&s->table, h, e);
    }
    (void)c;
}

/* Empty shard: the table is back at its smallest array; nothing expires. */
static void reset_walks(struct idem__cache_shard *s)
{
    s->hand = 0;
    s->sweep.next_due = UINT64_MAX;
    lap_begin(s);
}

void idem__cache_unlink_locked(struct idem_cache *c,
                               struct idem__cache_shard *s,
                               struct idem__cache_entry *e,
                               struct idem__table_pos pos)
{
    assert(e->linked);
    idem__table_remove(&s->table, pos);
    retire_entry(s, e);
    if (s->count == 0) { /* back to the smallest array at once */
        idem__table_clear(&s->table);
        reset_walks(s);
    }
    (void)c;
}

/* -- Expiry: the sweep ----------------------------------------------- */

/* The lap is over: if no item moved during it, it saw every entry, and
 * its earliest expiry is exact. */
static void lap_end(struct idem__cache_shard *s)
{
    if (s->sweep.lap_clean && s->sweep.lap_gen == s->table.gen)
        s->sweep.next_due = s->sweep.lap_min;
    lap_begin(s);
}

/* Look at up to n slots from the cursor: load their entries, prefetching
 * each, then reclaim those expired at now, so that the cache misses of a
 * batch overlap. */
static void sweep_batch(struct idem_cache *c, struct idem__cache_shard *s,
                        uint64_t now, size_t n)
{
    struct idem__cache_entry *items[SWEEP_BATCH];
    struct idem__table_pos where[SWEEP_BATCH];
    size_t span = idem__table_span(&s->table), i, k = 0;
    uint64_t x;

    for (; n > 0 && s->sweep.at < span; n--, s->sweep.at++) {
        items[k] = idem__table_at(&s->table, s->sweep.at, &where[k]);
        if (items[k])
            __builtin_prefetch(items[k++]);
    }
    for (i = 0; i < k; i++) {
        x = idem__cache_expires(items[i]);
        if (x && x <= now) {
            s->expired++;
            idem__cache_unlink_locked(c, s, items[i], where[i]);
        } else if (x && x < s->sweep.lap_min) {
            s->sweep.lap_min = x;
        }
    }
    if (s->sweep.at >= idem__table_span(&s->table))
        lap_end(s);
}

bool idem__cache_reclaim_locked(struct idem_cache *c,
                                struct idem__cache_shard *s, uint64_t now,
                                size_t budget)
{
    size_t n;

    while (budget > 0 && s->sweep.next_due <= now) {
        n = budget < SWEEP_BATCH ? budget : SWEEP_BATCH;
        sweep_batch(c, s, now, n);
        budget -= n;
    }
    return s->sweep.next_due > now;
}

/* -- Eviction: CLOCK over the table's slots -------------------------- */

/* Whether the cache's evict hook lets e go (live entries only). */
static bool may_evict(const struct idem_cache *c,
                      const struct idem__cache_entry *e)
{
    return !c->evict || c->evict(e->data + e->klen, e->vlen, c->evict_ud);
}

/* The position the hand's count k names, of span: the table's slots in a
 * scrambled order, HAND_BLOCK at a time. In slot order, eviction would
 * empty one stretch of the table while the stretch ahead of the hand
 * filled, and linear probing there ran on for hundreds of slots (the
 * engine benchmark measured 500 a probe, 4 once scrambled). span is a
 * multiple of 8 (each array size is) and its blocks' count has no prime
 * factor but 2, 3 and 5, so block b -> b * HAND_STEP mod blocks is one to
 * one: a lap of span counts visits every position once. */
static size_t hand_at(size_t k, size_t span)
{
    size_t blocks = span / HAND_BLOCK;

    return (size_t)(((uint64_t)(k / HAND_BLOCK) * HAND_STEP) % blocks) *
               HAND_BLOCK +
           k % HAND_BLOCK;
}

_Static_assert(IDEM__TABLE_MIN % 8 == 0 && 8 % HAND_BLOCK == 0,
               "every span is a whole number of hand blocks");

/* From the hand, over the table's slots (wrapping): an expired entry is
 * taken at once; a visited one loses its bit and stays; the first other
 * one the evict hook lets go is the victim, and the hand stays just past
 * it. Never a pinned entry or keep. Two laps at most without a hook (the
 * first clears every bit it passes); with one, at most EVICT_ASKS
 * refusals. NULL when nothing is evictable. */
static struct idem__cache_entry *
victim_locked(const struct idem_cache *c, struct idem__cache_shard *s,
              const struct idem__cache_entry *keep, struct idem__cache_now *t,
              struct idem__table_pos *pos_out)
{
    size_t protected = s->pinned + (keep && !keep->pins);
    size_t span = idem__table_span(&s->table), steps = 0, asks = 0;
    struct idem__cache_entry *e;

    if (s->count <= protected)
        return NULL;
    for (;; s->hand++) {
        if (s->hand >= span)
            s->hand = 0;
        if (++steps > 2 * span + 1)
            return NULL; /* every candidate was kept */
        e = idem__table_at(&s->table, hand_at(s->hand, span), pos_out);
        if (!e || e->pins || e == keep)
            continue;
        if (idem__cache_past(t, idem__cache_expires(e)))
            break;
        if (atomic_load_explicit(&e->visited, memory_order_relaxed)) {
            atomic_store_explicit(&e->visited, 0, memory_order_relaxed);
            continue;
        }
        if (may_evict(c, e))
            break;
        if (++asks >= EVICT_ASKS)
            return NULL;
    }
    s->hand++;
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

/* Expired entries go before live ones: first the sweep, for up to
 * ROOM_SLOTS slots (a whole small shard), then the hand, which takes an
 * expired entry it meets before any live one. */
int idem__cache_make_room_locked(struct idem_cache *c,
                                 struct idem__cache_shard *s,
                                 struct idem__cache_now *t,
                                 const struct idem__cache_entry *keep,
                                 size_t new_bytes, bool caught_up)
{
    struct idem__cache_entry *v;
    struct idem__table_pos pos;
    size_t swept = 0;

    while (!fits_locked(c, s, keep, new_bytes)) {
        if (!caught_up && swept < ROOM_SLOTS) {
            caught_up = idem__cache_reclaim_locked(c, s, t->lo, SWEEP_BATCH);
            swept += SWEEP_BATCH;
            continue;
        }
        v = victim_locked(c, s, keep, t, &pos);
        if (!v)
            return IDEM_EBUSY;
        if (idem__cache_past(t, idem__cache_expires(v)))
            s->expired++;
        else
            s->evicted++;
        idem__cache_unlink_locked(c, s, v, pos);
    }
    return IDEM_OK;
}

static int retire_item(void *item, void *ud)
{
    struct idem__cache_shard *s = ud;
    struct idem__cache_entry *e = item;

    e->linked = 0;
    idem__cache_chain_push(&s->limbo.fresh, e);
    s->limbo.fresh_n++;
    s->limbo.fresh_bytes += idem__cache_entry_bytes(e);
    return 0;
}

size_t idem__cache_clear_locked(struct idem_cache *c,
                                struct idem__cache_shard *s)
{
    size_t n = s->count;

    /* a reader meeting a marked entry still in the table reads under
     * the lock, and so waits for the clear to end */
    idem__table_foreach(&s->table, retire_item, s);
    idem__table_clear(&s->table);
    reset_walks(s);
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
    bool aging = l->aging.head || !idem__list_empty(&l->aging_arrays);
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
        idem__cache_chain_splice(&r->entries, &l->aging);
        idem__list_splice_back(&r->arrays, &l->aging_arrays);
        aging = false;
    }
    if (aging || !l->fresh_n)
        return;
    idem__cache_chain_splice(&l->aging, &l->fresh);
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
    const struct idem__cache_entry *e = item;
    struct idem__cache_counts *n = ud;

    n->table++;
    n->timed += idem__cache_expires(e) != 0;
    n->pinned += e->pins != 0;
    return 0;
}

static size_t chain_len(const struct idem__cache_chain *ch)
{
    const struct idem__cache_entry *e;
    size_t n = 0;

    for (e = ch->head; e; e = idem__cache_chain_next(e))
        n++;
    return n;
}

static void count_shard_locked(struct idem__cache_shard *s,
                               struct idem__cache_counts *n)
{
    idem__table_foreach(&s->table, count_item, n);
    n->limbo += chain_len(&s->limbo.fresh) + chain_len(&s->limbo.aging);
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
