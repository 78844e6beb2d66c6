/* cache: the public calls. Each hashes the key once, takes the shard its
 * hash's top bits name, and works under that one lock: a write first
 * reclaims a bounded number of expired entries, and whatever is unlinked is
 * freed after the lock is dropped. docs/internals/cache.md. */
#include <string.h>

#include "cache_internal.h"
#include "hash.h"

#define MAX_SHARDS 1024u
#define DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define MIN_SHARE_ENTRIES 64u
#define MIN_SHARE_BYTES ((size_t)1 << 20)
#define WRITE_BUDGET 64u    /* slots swept per write, if any may be due */
#define TABLE_STEP 16u      /* slots of a resize moved per write */
#define SETTLE_BUDGET 4096u /* slots per lock hold in tick, size, bytes */

/* One keyed call: the key's hash and shard, its view of the clock, where
 * the key was found, and what the limbo gave up, to free once the lock is
 * dropped. */
struct op {
    struct idem_cache *c;
    struct idem__cache_shard *s;
    uint64_t h;
    struct idem__cache_now t;
    struct idem__table_pos pos;
    struct idem__cache_ready ready;
};

static bool bytes_ok(const void *p, size_t n)
{
    return (p || n == 0) && n <= UINT32_MAX;
}

/* exact: the call will need the precise time (it sets a TTL), so that is
 * read at once, before the lock, and serves as both bounds. */
static void op_begin_hashed(struct op *op, struct idem_cache *c, uint64_t h,
                            bool exact)
{
    op->c = c;
    op->h = h;
    op->s = &c->shards[idem__stripe_of(h, c->shift)];
    idem__cache_ready_init(&op->ready);
    if (exact)
        idem__cache_now_init_exact(&op->t, &c->env);
    pthread_mutex_lock(&op->s->mu);
    if (!exact)
        idem__cache_now_init(&op->t, &c->env);
}

static void op_begin(struct op *op, struct idem_cache *c, const void *key,
                     size_t klen)
{
    op_begin_hashed(op, c, idem__hash(key, klen, c->seed), false);
}

/* op_begin for a write: also move a table resize on and reclaim expired
 * entries, boundedly. True if none is left. */
static bool write_begin_hashed(struct op *op, struct idem_cache *c, uint64_t h,
                               bool exact)
{
    op_begin_hashed(op, c, h, exact);
    idem__cache_table_work_locked(c, op->s, TABLE_STEP);
    return idem__cache_reclaim_locked(c, op->s, op->t.lo, WRITE_BUDGET);
}

static bool write_begin(struct op *op, struct idem_cache *c, const void *key,
                        size_t klen, bool exact)
{
    return write_begin_hashed(op, c, idem__hash(key, klen, c->seed), exact);
}

static void op_end(struct op *op)
{
    idem__cache_collect_locked(op->c, op->s, &op->ready, false);
    pthread_mutex_unlock(&op->s->mu);
    idem__cache_bury(op->c, &op->ready);
}

static struct idem__cache_entry *op_find(struct op *op, const void *key,
                                         size_t klen)
{
    return idem__cache_find_locked(op->c, op->s, op->h, key, klen, &op->t,
                                   &op->pos);
}

/* The expiry of an entry stored now with ttl_ms: the precise clock is read
 * only here, for entries with a TTL. */
static uint64_t expiry(struct idem__cache_now *t, int64_t ttl_ms)
{
    uint64_t now;

    if (ttl_ms == 0)
        return 0;
    now = idem__cache_now_exact(t);
    if (now > UINT64_MAX - (uint64_t)ttl_ms)
        return UINT64_MAX;
    return now + (uint64_t)ttl_ms;
}

/* Start loading the table slot where a write with hash h will probe, so
 * that the miss overlaps building the entry and taking the lock (a new
 * key's probe was most of a set). */
static void warm(struct idem_cache *c, uint64_t h)
{
    __builtin_prefetch(
        idem__table_hint(&c->shards[idem__stripe_of(h, c->shift)].table, h), 1);
}

/* -- Lifecycle ------------------------------------------------------- */

/* Shard count and shares: an even split, halving the shard count while a
 * share would be smaller than MIN_SHARE_*. */
static void configure_bounds(struct idem_cache *c,
                             const struct idem_cache_opts *o)
{
    size_t max_bytes = o->max_bytes ? o->max_bytes : DEFAULT_MAX_BYTES;
    unsigned n =
        idem__pow2_ceil(o->shards ? o->shards : IDEM_CACHE_DEFAULT_SHARDS);

    while (n > 1 &&
           ((o->max_entries && o->max_entries / n < MIN_SHARE_ENTRIES) ||
            max_bytes / n < MIN_SHARE_BYTES))
        n /= 2;
    c->nshards = n;
    c->shift = 64u - (unsigned)__builtin_ctz(n);
    c->shard_max_entries = o->max_entries ? o->max_entries / n : SIZE_MAX;
    c->shard_max_bytes = max_bytes / n;
}

static int shard_init(struct idem_cache *c, struct idem__cache_shard *s)
{
    struct idem__table_ops ops;
    struct idem__cache_limbo *l = &s->limbo;

    idem__cache_table_ops(c, s, &ops);
    if (idem__table_init(&s->table, &c->env, &ops) != IDEM_OK)
        return IDEM_ENOMEM;
    idem__list_init(&l->fresh_arrays);
    idem__list_init(&l->aging_arrays);
    s->sweep = (struct idem__cache_sweep){ .next_due = UINT64_MAX,
                                           .lap_min = UINT64_MAX,
                                           .lap_clean = true };
    pthread_mutex_init(&s->mu, NULL);
    return IDEM_OK;
}

/* One allocation: the epoch, then the shards, cache-line aligned. */
static int shards_init(struct idem_cache *c)
{
    size_t head = sizeof(struct idem__epoch);
    size_t bytes = head + (size_t)c->nshards * sizeof(struct idem__cache_shard);
    unsigned i, n = c->nshards;
    uintptr_t base;

    c->nshards = 0; /* counts the shards that exist, for a failed init */
    c->shards_mem = idem__alloc(&c->env, bytes + IDEM_CACHELINE - 1);
    if (!c->shards_mem)
        return IDEM_ENOMEM;
    base = ((uintptr_t)c->shards_mem + IDEM_CACHELINE - 1) &
           ~(uintptr_t)(IDEM_CACHELINE - 1);
    memset((void *)base, 0, bytes);
    c->epoch = (struct idem__epoch *)base;
    idem__epoch_init(c->epoch);
    c->shards = (struct idem__cache_shard *)(base + head);
    for (i = 0; i < n; i++) {
        if (shard_init(c, &c->shards[i]) != IDEM_OK)
            return IDEM_ENOMEM;
        c->nshards++;
    }
    return IDEM_OK;
}

static int cache_init(struct idem_cache *c)
{
    struct idem_keylock_opts ko = { .stripes = c->nshards, .env = &c->env };
    int rc;

    c->home = idem__cache_home_new(&c->env);
    if (!c->home)
        return IDEM_ENOMEM;
    rc = shards_init(c);
    if (rc != IDEM_OK)
        return rc;
    return idem_keylock_new(&ko, &c->flights);
}

int idem_cache_new(const struct idem_cache_opts *opts,
                   struct idem_cache **cache_out)
{
    struct idem_cache_opts o = opts ? *opts : (struct idem_cache_opts){ 0 };
    struct idem_env env;
    struct idem_cache *c;
    int rc;

    if (!cache_out || o.shards > MAX_SHARDS)
        return IDEM_EINVAL;
    idem_env_resolve(o.env, &env);
    c = idem__alloc(&env, sizeof(*c));
    if (!c)
        return IDEM_ENOMEM;
    *c = (struct idem_cache){ .env = env,
                              .seed = idem__random_seed(),
                              .evict = o.evict,
                              .evict_ud = o.evict_ud };
    atomic_init(&c->computes, 0);
    c->coarse_slack_ns = idem__cache_coarse_slack(&env);
    configure_bounds(c, &o);
    rc = cache_init(c);
    if (rc != IDEM_OK) {
        idem_cache_free(c);
        return rc;
    }
    *cache_out = c;
    return IDEM_OK;
}

/* Put every entry of s, linked or in limbo, and free its arrays. */
static void shard_free(struct idem_cache *c, struct idem__cache_shard *s)
{
    struct idem__cache_ready r;

    idem__cache_ready_init(&r);
    idem__cache_clear_locked(c, s); /* the table's entries into the limbo */
    idem__cache_chain_splice(&r.entries, &s->limbo.fresh);
    idem__cache_chain_splice(&r.entries, &s->limbo.aging);
    idem__list_splice_back(&r.arrays, &s->limbo.fresh_arrays);
    idem__list_splice_back(&r.arrays, &s->limbo.aging_arrays);
    idem__cache_bury(c, &r);
    idem__table_deinit(&s->table);
    pthread_mutex_destroy(&s->mu);
}

void idem_cache_free(struct idem_cache *c)
{
    struct idem__cache_home *home;
    struct idem_env env;
    unsigned i;

    if (!c)
        return;
    for (i = 0; c->shards && i < c->nshards; i++)
        shard_free(c, &c->shards[i]);
    idem_keylock_free(c->flights);
    if (c->epoch)
        idem__epoch_deinit(c->epoch);
    idem__free(&c->env, c->shards_mem);
    home = c->home;
    env = c->env;
    idem__free(&env, c);
    if (home)
        idem__cache_home_put(home);
}

/* -- Writes ---------------------------------------------------------- */

/* What a conditional store asks of the key's live entry: check(value)
 * must hold (replace_if), and existing_out takes a handle to it when it
 * blocks an IDEM_CACHE_NX store (get_or_insert). */
struct cond {
    bool (*check)(const void *cur, size_t curlen, void *ud);
    void *ud;
    struct idem_cache_value **existing_out;
};

static int store_check(const struct idem__cache_entry *old, unsigned flags,
                       const struct cond *cond)
{
    if ((flags & IDEM_CACHE_NX) && old)
        return IDEM_EEXIST;
    if ((flags & IDEM__CACHE_UPDATE) && !old)
        return IDEM_ENOTFOUND;
    if (cond && cond->check &&
        (!old || !cond->check(old->data + old->klen, old->vlen, cond->ud)))
        return IDEM_ESTALE;
    if ((flags & IDEM_CACHE_PIN) && old && old->pins == UINT16_MAX)
        return IDEM_EBUSY;
    if ((flags & IDEM_CACHE_UNPIN) && (!old || !old->pins))
        return IDEM_EPERM;
    return IDEM_OK;
}

/* Put e in old's place (old NULL: a new key), once room is made. */
static void replace_locked(struct op *op, struct idem__cache_entry *old,
                           struct idem__cache_entry *e, int64_t ttl_ms,
                           unsigned flags)
{
    uint64_t expires = (flags & IDEM__CACHE_UPDATE) ? idem__cache_expires(old)
                                                    : expiry(&op->t, ttl_ms);
    int pins = old ? old->pins : 0;

    pins += !!(flags & IDEM_CACHE_PIN) - !!(flags & IDEM_CACHE_UNPIN);
    e->pins = (uint16_t)pins;
    idem__cache_link_locked(op->c, op->s, e, op->h, expires, old, op->pos);
    op->s->sets++;
}

/* Under the lock: check, make room, link. IDEM_EEXIST with cond's
 * existing_out takes a handle to the entry found. */
static int store_locked(struct op *op, struct idem__cache_entry *e,
                        int64_t ttl_ms, unsigned flags, const struct cond *cond,
                        bool caught_up)
{
    struct idem__cache_entry *old = op_find(op, e->data, e->klen);
    int rc = store_check(old, flags, cond);

    if (rc == IDEM_EEXIST && cond && cond->existing_out) {
        atomic_fetch_add_explicit(&old->refs, 1, memory_order_relaxed);
        *cond->existing_out = (struct idem_cache_value *)(void *)old;
    }
    if (rc == IDEM_OK)
        rc = idem__cache_make_room_locked(
            op->c, op->s, &op->t, old, idem__cache_entry_bytes(e), caught_up);
    if (rc == IDEM_OK && !old)
        rc = idem__table_reserve(&op->s->table);
    if (rc == IDEM_OK)
        replace_locked(op, old, e, ttl_ms, flags);
    return rc;
}

static int store_cond(struct idem_cache *c, struct idem__cache_entry *e,
                      uint64_t h, int64_t ttl_ms, unsigned flags,
                      const struct cond *cond,
                      struct idem_cache_value **ref_out)
{
    struct op op;
    /* an NX store often finds the key (a replay's begin), and then needs
     * no precise time */
    bool caught_up = write_begin_hashed(
        &op, c, h,
        ttl_ms > 0 && !(flags & (IDEM__CACHE_UPDATE | IDEM_CACHE_NX)));
    int rc;

    if (ref_out) /* before it is published */
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    rc = store_locked(&op, e, ttl_ms, flags, cond, caught_up);
    op_end(&op);
    if (rc != IDEM_OK) /* never published: nobody else has seen it */
        idem__free(&c->env, e);
    else if (ref_out)
        *ref_out = (struct idem_cache_value *)(void *)e;
    return rc;
}

int idem__cache_store(struct idem_cache *c, struct idem__cache_entry *e,
                      int64_t ttl_ms, unsigned flags,
                      struct idem_cache_value **ref_out)
{
    return store_cond(c, e, idem__hash(e->data, e->klen, c->seed), ttl_ms,
                      flags, NULL, ref_out);
}

/* Copy key and value into a new entry and store it. */
static int store_copy(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen, int64_t ttl_ms,
                      unsigned flags, const struct cond *cond)
{
    struct idem__cache_entry *e;
    uint64_t h;

    if (!idem__cache_entry_fits(c, klen, vlen))
        return IDEM_E2BIG;
    h = idem__hash(key, klen, c->seed);
    warm(c, h);
    e = idem__cache_entry_new(c, key, klen, value, vlen);
    if (!e)
        return IDEM_ENOMEM;
    return store_cond(c, e, h, ttl_ms, flags, cond, NULL);
}

int idem_cache_set_ex(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen, int64_t ttl_ms,
                      unsigned flags)
{
    if (!c || !bytes_ok(key, klen) || !bytes_ok(value, vlen) || ttl_ms < 0 ||
        (flags & ~(IDEM_CACHE_NX | IDEM_CACHE_PIN)))
        return IDEM_EINVAL;
    return store_copy(c, key, klen, value, vlen, ttl_ms, flags, NULL);
}

int idem_cache_set(struct idem_cache *c, const void *key, size_t klen,
                   const void *value, size_t vlen, int64_t ttl_ms)
{
    return idem_cache_set_ex(c, key, klen, value, vlen, ttl_ms, 0);
}

int idem_cache_set_nx(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen, int64_t ttl_ms)
{
    return idem_cache_set_ex(c, key, klen, value, vlen, ttl_ms, IDEM_CACHE_NX);
}

int idem_cache_get_or_insert(struct idem_cache *c, const void *key, size_t klen,
                             const void *value, size_t vlen, int64_t ttl_ms,
                             unsigned flags,
                             struct idem_cache_value **existing_out)
{
    struct cond cond = { .existing_out = existing_out };

    if (!c || !bytes_ok(key, klen) || !bytes_ok(value, vlen) || ttl_ms < 0 ||
        !existing_out || (flags & ~IDEM_CACHE_PIN))
        return IDEM_EINVAL;
    return store_copy(c, key, klen, value, vlen, ttl_ms, flags | IDEM_CACHE_NX,
                      &cond);
}

/* replace_if with value NULL: remove under the same conditions. */
static int remove_if(struct idem_cache *c, const void *key, size_t klen,
                     const struct cond *cond, unsigned flags)
{
    struct idem__cache_entry *e;
    struct op op;
    int rc;

    write_begin(&op, c, key, klen, false);
    e = op_find(&op, key, klen);
    rc = store_check(e, flags, cond);
    if (rc == IDEM_OK) {
        idem__cache_unlink_locked(c, op.s, e, op.pos);
        op.s->removes++;
    }
    op_end(&op);
    return rc;
}

int idem_cache_replace_if(struct idem_cache *c, const void *key, size_t klen,
                          bool (*check)(const void *cur, size_t curlen,
                                        void *ud),
                          void *ud, const void *value, size_t vlen,
                          int64_t ttl_ms, unsigned flags)
{
    struct cond cond = { .check = check, .ud = ud };

    if (!c || !check || !bytes_ok(key, klen) || (!value && vlen) ||
        vlen > UINT32_MAX || ttl_ms < 0 || (flags & ~IDEM_CACHE_UNPIN))
        return IDEM_EINVAL;
    if (!value)
        return remove_if(c, key, klen, &cond, flags);
    return store_copy(c, key, klen, value, vlen, ttl_ms, flags, &cond);
}

int idem_cache_update(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen)
{
    if (!c || !bytes_ok(key, klen) || !bytes_ok(value, vlen))
        return IDEM_EINVAL;
    return store_copy(c, key, klen, value, vlen, 0, IDEM__CACHE_UPDATE, NULL);
}

int idem_cache_update_ttl(struct idem_cache *c, const void *key, size_t klen,
                          int64_t ttl_ms)
{
    struct idem__cache_entry *e;
    struct op op;
    int rc = IDEM_ENOTFOUND;

    if (!c || !bytes_ok(key, klen) || ttl_ms < 0)
        return IDEM_EINVAL;
    write_begin(&op, c, key, klen, ttl_ms > 0);
    e = op_find(&op, key, klen);
    if (e) {
        idem__cache_set_expiry_locked(op.s, e, expiry(&op.t, ttl_ms));
        rc = IDEM_OK;
    }
    op_end(&op);
    return rc;
}

int idem_cache_remove(struct idem_cache *c, const void *key, size_t klen)
{
    struct idem__cache_entry *e;
    struct op op;
    int rc = IDEM_ENOTFOUND;

    if (!c || !bytes_ok(key, klen))
        return IDEM_EINVAL;
    write_begin(&op, c, key, klen, false);
    e = op_find(&op, key, klen);
    if (e) {
        idem__cache_unlink_locked(c, op.s, e, op.pos);
        op.s->removes++;
        rc = IDEM_OK;
    }
    op_end(&op);
    return rc;
}

void idem_cache_clear(struct idem_cache *c)
{
    struct idem__cache_ready r;
    unsigned i;

    for (i = 0; c && i < c->nshards; i++) {
        struct idem__cache_shard *s = &c->shards[i];

        idem__cache_ready_init(&r);
        pthread_mutex_lock(&s->mu);
        s->removes += idem__cache_clear_locked(c, s);
        idem__cache_collect_locked(c, s, &r, true);
        pthread_mutex_unlock(&s->mu);
        idem__cache_bury(c, &r);
    }
}

/* pin (delta 1) or unpin (delta -1) key's entry. */
static int pin_by(struct idem_cache *c, const void *key, size_t klen, int delta)
{
    struct idem__cache_entry *e;
    struct op op;
    int rc = IDEM_ENOTFOUND;

    if (!c || !bytes_ok(key, klen))
        return IDEM_EINVAL;
    op_begin(&op, c, key, klen);
    e = op_find(&op, key, klen);
    if (e && delta > 0)
        rc = e->pins == UINT16_MAX ? IDEM_EBUSY : IDEM_OK;
    else if (e)
        rc = e->pins == 0 ? IDEM_EPERM : IDEM_OK;
    if (rc == IDEM_OK) {
        op.s->pinned -= e->pins != 0;
        e->pins = (uint16_t)(e->pins + delta);
        op.s->pinned += e->pins != 0;
    }
    op_end(&op);
    return rc;
}

int idem_cache_pin(struct idem_cache *c, const void *key, size_t klen)
{
    return pin_by(c, key, klen, 1);
}

int idem_cache_unpin(struct idem_cache *c, const void *key, size_t klen)
{
    return pin_by(c, key, klen, -1);
}

/* -- Reads ----------------------------------------------------------- */

/* get under the shard lock: after the lock-free probe met an expired
 * entry, which this reclaims. */
static int get_locked(struct idem_cache *c, const void *key, size_t klen,
                      bool counted, struct idem_cache_value **value_out)
{
    struct idem__cache_entry *e;
    struct op op;

    op_begin(&op, c, key, klen);
    e = op_find(&op, key, klen);
    if (e) {
        atomic_store_explicit(&e->visited, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    }
    if (counted && e)
        op.s->hits++;
    else if (counted)
        op.s->misses++;
    op_end(&op);
    if (!e)
        return IDEM_ENOTFOUND;
    *value_out = (struct idem_cache_value *)(void *)e;
    return IDEM_OK;
}

/* Count one hit or miss in the epoch slot this thread holds. */
static void count_read(atomic_uint_fast64_t *n)
{
    atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* A hit inside the epoch section in slot: the table's reference keeps
 * refs above 0, so a plain increment takes a handle. */
static IDEM_ALWAYS_INLINE int get_hit(struct idem_cache *c,
                                      struct idem__cache_entry *e,
                                      unsigned slot, bool counted,
                                      struct idem_cache_value **value_out)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    if (!atomic_load_explicit(&e->visited, memory_order_relaxed))
        atomic_store_explicit(&e->visited, 1, memory_order_relaxed);
    if (counted)
        count_read(&c->epoch->slot[slot].hits);
    idem__epoch_exit(c->epoch, slot);
    *value_out = (struct idem_cache_value *)(void *)e;
    return IDEM_OK;
}

/* The probe found e, which has a TTL: the coarse clock, else (near the
 * expiry, or for any other clock) the precise time decides whether it is
 * live; past it, the locked path answers (and reclaims e). The thread is
 * still inside the section the probe entered, in its memo's slot. */
static IDEM_NOINLINE int get_timed(struct idem_cache *c, const void *key,
                                   size_t klen, struct idem__cache_entry *e,
                                   bool counted,
                                   struct idem_cache_value **value_out)
{
    unsigned slot = idem__epoch_memo.slot;
    uint64_t expires = idem__cache_expires(e);
    struct idem__cache_now t;

    if (!idem__cache_surely_live(c, expires)) {
        idem__cache_now_init(&t, &c->env);
        if (idem__cache_past(&t, expires)) {
            idem__epoch_exit(c->epoch, slot);
            return get_locked(c, key, klen, counted, value_out);
        }
    }
    return get_hit(c, e, slot, counted, value_out);
}

static IDEM_NOINLINE int get_first(struct idem_cache *c, const void *key,
                                   size_t klen, bool counted,
                                   struct idem_cache_value **value_out);

/* The lock-free probe: inside an epoch section no entry the table held
 * at any moment of it is freed. The clock is read only for an entry with
 * a TTL, and precisely only near its expiry. An entry marked gone was
 * unlinked after the probe found it, and its `expires` is a link now,
 * not a time: the locked path answers instead (acquire: it then sees the
 * table without the entry). The probe itself calls nothing: every other
 * case leaves it by a tail call, so a hit on an entry with no TTL spills
 * nothing and keeps only what the probe's registers need (166
 * instructions and 11 stores for a get and its release, against 200 and
 * 18 when it was one function with calls inside; docs/internals/cache.md
 * has the figures). Inlined for 16-byte keys (hash and compare unrolled)
 * and for any other length, each counted or not. */
static IDEM_ALWAYS_INLINE int probe(struct idem_cache *c, const void *key,
                                    size_t klen, bool counted,
                                    struct idem_cache_value **value_out)
{
    struct idem__cache_entry *e;
    uint64_t h, expires;
    unsigned slot = idem__epoch_mine(c->epoch);

    if (slot == IDEM__EPOCH_SLOTS)
        return get_first(c, key, klen, counted, value_out);
    h = idem__hash(key, klen, c->seed);
    idem__epoch_enter(c->epoch, slot);
    e = idem__cache_lookup(&c->shards[idem__stripe_of(h, c->shift)], h, key,
                           klen);
    if (!e) {
        if (counted)
            count_read(&c->epoch->slot[slot].misses);
        idem__epoch_exit(c->epoch, slot);
        return IDEM_ENOTFOUND;
    }
    expires = atomic_load_explicit(&e->expires, memory_order_acquire);
    if (expires & IDEM__CACHE_GONE) {
        idem__epoch_exit(c->epoch, slot);
        return get_locked(c, key, klen, counted, value_out);
    }
    if (expires)
        return get_timed(c, key, klen, e, counted, value_out);
    return get_hit(c, e, slot, counted, value_out);
}

static IDEM_NOINLINE int get_any(struct idem_cache *c, const void *key,
                                 size_t klen, bool counted,
                                 struct idem_cache_value **value_out)
{
    return probe(c, key, klen, counted, value_out);
}

/* This thread's first read of c: claim a slot, or read under the lock
 * when every slot is another thread's. */
static IDEM_NOINLINE int get_first(struct idem_cache *c, const void *key,
                                   size_t klen, bool counted,
                                   struct idem_cache_value **value_out)
{
    if (idem__epoch_claim(c->epoch) == IDEM__EPOCH_SLOTS)
        return get_locked(c, key, klen, counted, value_out);
    return get_any(c, key, klen, counted, value_out);
}

int idem__cache_get(struct idem_cache *c, const void *key, size_t klen,
                    bool counted, struct idem_cache_value **value_out)
{
    if (!c || !bytes_ok(key, klen) || !value_out)
        return IDEM_EINVAL;
    if (klen != 16)
        return get_any(c, key, klen, counted, value_out);
    if (counted)
        return probe(c, key, 16, true, value_out);
    return probe(c, key, 16, false, value_out);
}

int idem_cache_get(struct idem_cache *c, const void *key, size_t klen,
                   struct idem_cache_value **value_out)
{
    return idem__cache_get(c, key, klen, true, value_out);
}

bool idem_cache_contains(struct idem_cache *c, const void *key, size_t klen)
{
    struct op op;
    bool found;

    if (!c || !bytes_ok(key, klen))
        return false;
    op_begin(&op, c, key, klen);
    found = op_find(&op, key, klen) != NULL;
    op_end(&op);
    return found;
}

int idem_cache_ttl_left(struct idem_cache *c, const void *key, size_t klen,
                        int64_t *ttl_ms_out)
{
    struct idem__cache_entry *e;
    struct op op;
    uint64_t left = 0;

    if (!c || !bytes_ok(key, klen) || !ttl_ms_out)
        return IDEM_EINVAL;
    op_begin(&op, c, key, klen);
    e = op_find(&op, key, klen);
    if (e && idem__cache_expires(e))
        left = idem__cache_expires(e) - idem__cache_now_exact(&op.t);
    op_end(&op);
    if (!e)
        return IDEM_ENOTFOUND;
    *ttl_ms_out = left > INT64_MAX ? INT64_MAX : (int64_t)left;
    return IDEM_OK;
}

/* -- Whole-cache reclaim and totals ---------------------------------- */

/* Reclaim every expired entry of s, a batch of slots per lock hold, until
 * a lap of the sweep during which nothing moved shows none is left (a
 * resize under way is moved on as fast), then add its count and bytes to
 * the totals. Returns the entries reclaimed. */
static size_t shard_settle(struct idem_cache *c, struct idem__cache_shard *s,
                           uint64_t now, size_t *count, size_t *bytes)
{
    struct idem__cache_ready r;
    uint64_t expired;
    size_t reclaimed = 0;
    bool done;

    do {
        idem__cache_ready_init(&r);
        pthread_mutex_lock(&s->mu);
        expired = s->expired;
        done = idem__cache_reclaim_locked(c, s, now, SETTLE_BUDGET);
        reclaimed += (size_t)(s->expired - expired);
        idem__cache_table_work_locked(c, s, SETTLE_BUDGET);
        idem__cache_collect_locked(c, s, &r, true);
        if (done) {
            *count += s->count;
            *bytes += idem__cache_shard_bytes(s);
        }
        pthread_mutex_unlock(&s->mu);
        idem__cache_bury(c, &r);
    } while (!done);
    return reclaimed;
}

/* Settle every shard. Returns the entries reclaimed. */
static size_t settle(struct idem_cache *c, size_t *count, size_t *bytes)
{
    uint64_t now = c->env.now_ms(c->env.ud);
    size_t reclaimed = 0;
    unsigned i;

    *count = *bytes = 0;
    for (i = 0; i < c->nshards; i++)
        reclaimed += shard_settle(c, &c->shards[i], now, count, bytes);
    return reclaimed;
}

size_t idem_cache_tick(struct idem_cache *c)
{
    size_t count, bytes;

    return c ? settle(c, &count, &bytes) : 0;
}

size_t idem_cache_size(struct idem_cache *c)
{
    size_t count = 0, bytes = 0;

    if (c)
        settle(c, &count, &bytes);
    return count;
}

size_t idem_cache_bytes(struct idem_cache *c)
{
    size_t count = 0, bytes = 0;

    if (c)
        settle(c, &count, &bytes);
    return bytes;
}

static void add_shard_stats(struct idem__cache_shard *s,
                            struct idem_cache_stats *st)
{
    pthread_mutex_lock(&s->mu);
    st->entries += s->count;
    st->bytes += idem__cache_shard_bytes(s);
    st->pinned += s->pinned;
    st->hits += s->hits;
    st->misses += s->misses;
    st->sets += s->sets;
    st->removes += s->removes;
    st->expired += s->expired;
    st->evicted += s->evicted;
    pthread_mutex_unlock(&s->mu);
}

/* What the empty cache holds: itself, its home, the single-flight table
 * (with its spare entries), and each shard with its minimum bucket
 * array. */
static uint64_t fixed_bytes(struct idem_cache *c)
{
    struct idem_keylock_stats ks;
    size_t shard = sizeof(struct idem__cache_shard) +
                   sizeof(struct idem__table_array) +
                   IDEM__CACHE_MIN_BUCKETS * sizeof(uint64_t);

    idem_keylock_stats(c->flights, &ks);
    return sizeof(*c) + sizeof(*c->home) + ks.table_bytes + ks.spare_bytes +
           IDEM_CACHELINE - 1 + sizeof(struct idem__epoch) +
           (uint64_t)c->nshards * shard;
}

void idem_cache_stats(struct idem_cache *c, struct idem_cache_stats *stats_out)
{
    struct idem_cache_stats st = { 0 };
    unsigned i;

    if (!stats_out)
        return;
    for (i = 0; c && i < c->nshards; i++)
        add_shard_stats(&c->shards[i], &st);
    for (i = 0; c && i < IDEM__EPOCH_SLOTS; i++) {
        st.hits += atomic_load(&c->epoch->slot[i].hits);
        st.misses += atomic_load(&c->epoch->slot[i].misses);
    }
    if (c) {
        st.computes = atomic_load(&c->computes);
        st.shards = c->nshards;
        st.shard_max_entries = c->shard_max_entries;
        st.shard_max_bytes = c->shard_max_bytes;
        st.fixed_bytes = fixed_bytes(c);
    }
    *stats_out = st;
}
