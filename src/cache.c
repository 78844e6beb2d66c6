/* cache: the public calls. Each hashes the key once, takes the shard its
 * hash's top bits name, and works under that one lock: a write first
 * reclaims a bounded number of expired entries, and whatever is unlinked is
 * freed after the lock is dropped. docs/internals/cache.md. */
#include <string.h>

#include "cache_internal.h"
#include "hash.h"

#define DEFAULT_SHARDS 16u
#define MAX_SHARDS 1024u
#define DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define MIN_SHARE_ENTRIES 64u
#define MIN_SHARE_BYTES ((size_t)1 << 20)
#define WRITE_BUDGET 64u    /* wheel work per write */
#define SETTLE_BUDGET 4096u /* per lock hold in tick, size, bytes */

/* One keyed call: the key's hash and shard, the time, and the entries to
 * put once the lock is dropped. */
struct op {
    struct idem_cache *c;
    struct idem__cache_shard *s;
    uint64_t h;
    uint64_t now;
    struct idem__cache_entry *grave;
};

static bool bytes_ok(const void *p, size_t n)
{
    return (p || n == 0) && n <= UINT32_MAX;
}

static void op_begin(struct op *op, struct idem_cache *c, const void *key,
                     size_t klen)
{
    op->c = c;
    op->h = idem__hash(key, klen, c->seed);
    op->s = &c->shards[idem__stripe_of(op->h, c->shift)];
    op->now = c->env.now_ms(c->env.ud);
    op->grave = NULL;
    pthread_mutex_lock(&op->s->mu);
}

/* op_begin for a write: also reclaim expired entries, boundedly. True if
 * none is left. */
static bool write_begin(struct op *op, struct idem_cache *c, const void *key,
                        size_t klen)
{
    op_begin(op, c, key, klen);
    return idem__cache_reclaim_locked(c, op->s, op->now, WRITE_BUDGET,
                                      &op->grave);
}

static void op_end(struct op *op)
{
    pthread_mutex_unlock(&op->s->mu);
    idem__cache_bury(op->c, op->grave);
}

static struct idem__cache_entry *op_find(struct op *op, const void *key,
                                         size_t klen)
{
    return idem__cache_find_locked(op->c, op->s, op->h, key, klen, op->now,
                                   &op->grave);
}

static uint64_t expiry(uint64_t now, int64_t ttl_ms)
{
    if (ttl_ms == 0)
        return 0;
    if (now > UINT64_MAX - (uint64_t)ttl_ms)
        return UINT64_MAX;
    return now + (uint64_t)ttl_ms;
}

/* -- Lifecycle ------------------------------------------------------- */

/* Shard count and shares: an even split, halving the shard count while a
 * share would be smaller than MIN_SHARE_*. */
static void configure_bounds(struct idem_cache *c,
                             const struct idem_cache_opts *o)
{
    size_t max_bytes = o->max_bytes ? o->max_bytes : DEFAULT_MAX_BYTES;
    unsigned n = idem__pow2_ceil(o->shards ? o->shards : DEFAULT_SHARDS);

    while (n > 1 &&
           ((o->max_entries && o->max_entries / n < MIN_SHARE_ENTRIES) ||
            max_bytes / n < MIN_SHARE_BYTES))
        n /= 2;
    c->nshards = n;
    c->shift = 64u - (unsigned)__builtin_ctz(n);
    c->shard_max_entries = o->max_entries ? o->max_entries / n : SIZE_MAX;
    c->shard_max_bytes = max_bytes / n;
}

static int shards_init(struct idem_cache *c, uint64_t now)
{
    size_t bytes = (size_t)c->nshards * sizeof(struct idem__cache_shard);
    unsigned i, n = c->nshards;

    c->nshards = 0; /* counts the shards that exist, for a failed init */
    c->shards_mem = idem__alloc(&c->env, bytes + IDEM_CACHELINE - 1);
    if (!c->shards_mem)
        return IDEM_ENOMEM;
    c->shards = (struct idem__cache_shard *)(((uintptr_t)c->shards_mem +
                                              IDEM_CACHELINE - 1) &
                                             ~(uintptr_t)(IDEM_CACHELINE - 1));
    memset(c->shards, 0, bytes);
    for (i = 0; i < n; i++) {
        struct idem__cache_shard *s = &c->shards[i];

        s->buckets =
            idem__alloc(&c->env, IDEM__CACHE_MIN_BUCKETS * sizeof(*s->buckets));
        if (!s->buckets)
            return IDEM_ENOMEM;
        memset(s->buckets, 0, IDEM__CACHE_MIN_BUCKETS * sizeof(*s->buckets));
        s->mask = IDEM__CACHE_MIN_BUCKETS - 1;
        idem__ttl_init(&s->wheel, now);
        pthread_mutex_init(&s->mu, NULL);
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
    rc = shards_init(c, c->env.now_ms(c->env.ud));
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
    idem__env_resolve(o.env, &env);
    c = idem__alloc(&env, sizeof(*c));
    if (!c)
        return IDEM_ENOMEM;
    *c = (struct idem_cache){ .env = env,
                              .seed = idem__random_seed(),
                              .evict = o.evict,
                              .evict_ud = o.evict_ud };
    atomic_init(&c->computes, 0);
    configure_bounds(c, &o);
    rc = cache_init(c);
    if (rc != IDEM_OK) {
        idem_cache_free(c);
        return rc;
    }
    *cache_out = c;
    return IDEM_OK;
}

void idem_cache_free(struct idem_cache *c)
{
    struct idem__cache_home *home;
    struct idem__cache_entry *e, *next;
    struct idem_env env;
    unsigned i;

    if (!c)
        return;
    for (i = 0; c->shards && i < c->nshards; i++) {
        struct idem__cache_shard *s = &c->shards[i];

        for (e = s->oldest; e; e = next) {
            next = e->newer;
            e->linked = 0;
            idem__cache_entry_put(c, e);
        }
        idem__free(&c->env, s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    idem_keylock_free(c->flights);
    idem__free(&c->env, c->shards_mem);
    home = c->home;
    env = c->env;
    idem__free(&env, c);
    if (home)
        idem__cache_home_put(home);
}

/* -- Writes ---------------------------------------------------------- */

static int store_check(const struct idem__cache_entry *old, unsigned flags)
{
    if ((flags & IDEM_CACHE_NX) && old)
        return IDEM_EEXIST;
    if ((flags & IDEM__CACHE_UPDATE) && !old)
        return IDEM_ENOTFOUND;
    if ((flags & IDEM_CACHE_PIN) && old && old->pins == UINT16_MAX)
        return IDEM_EBUSY;
    return IDEM_OK;
}

/* Put e in old's place (old NULL: a new key), once room is made. */
static void replace_locked(struct op *op, struct idem__cache_entry *old,
                           struct idem__cache_entry *e, int64_t ttl_ms,
                           unsigned flags)
{
    uint64_t expires = expiry(op->now, ttl_ms);

    if (flags & IDEM__CACHE_UPDATE)
        expires = old->ttl.expires;
    e->pins = (uint16_t)((old ? old->pins : 0) + !!(flags & IDEM_CACHE_PIN));
    if (old)
        idem__cache_unlink_locked(op->c, op->s, old, &op->grave);
    idem__cache_link_locked(op->c, op->s, e, op->h, expires);
    op->s->sets++;
}

int idem__cache_store(struct idem_cache *c, struct idem__cache_entry *e,
                      int64_t ttl_ms, unsigned flags,
                      struct idem_cache_value **ref_out)
{
    struct idem__cache_entry *old;
    struct op op;
    bool caught_up = write_begin(&op, c, e->data, e->klen);
    int rc;

    old = op_find(&op, e->data, e->klen);
    rc = store_check(old, flags);
    if (rc == IDEM_OK)
        rc = idem__cache_make_room_locked(c, op.s, op.now, old,
                                          idem__cache_entry_bytes(e), caught_up,
                                          &op.grave);
    if (rc == IDEM_OK) {
        if (ref_out)
            atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
        replace_locked(&op, old, e, ttl_ms, flags);
    } else {
        e->u.next = op.grave; /* never linked: the put frees it */
        op.grave = e;
    }
    op_end(&op);
    if (rc == IDEM_OK && ref_out)
        *ref_out = (struct idem_cache_value *)(void *)e;
    return rc;
}

/* Copy key and value into a new entry and store it. */
static int store_copy(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen, int64_t ttl_ms,
                      unsigned flags)
{
    struct idem__cache_entry *e;

    if (!idem__cache_entry_fits(c, klen, vlen))
        return IDEM_E2BIG;
    e = idem__cache_entry_new(c, key, klen, value, vlen);
    if (!e)
        return IDEM_ENOMEM;
    return idem__cache_store(c, e, ttl_ms, flags, NULL);
}

int idem_cache_set_ex(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen, int64_t ttl_ms,
                      unsigned flags)
{
    if (!c || !bytes_ok(key, klen) || !bytes_ok(value, vlen) || ttl_ms < 0 ||
        (flags & ~(IDEM_CACHE_NX | IDEM_CACHE_PIN)))
        return IDEM_EINVAL;
    return store_copy(c, key, klen, value, vlen, ttl_ms, flags);
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

int idem_cache_update(struct idem_cache *c, const void *key, size_t klen,
                      const void *value, size_t vlen)
{
    if (!c || !bytes_ok(key, klen) || !bytes_ok(value, vlen))
        return IDEM_EINVAL;
    return store_copy(c, key, klen, value, vlen, 0, IDEM__CACHE_UPDATE);
}

int idem_cache_update_ttl(struct idem_cache *c, const void *key, size_t klen,
                          int64_t ttl_ms)
{
    struct idem__cache_entry *e;
    struct op op;
    int rc = IDEM_ENOTFOUND;

    if (!c || !bytes_ok(key, klen) || ttl_ms < 0)
        return IDEM_EINVAL;
    write_begin(&op, c, key, klen);
    e = op_find(&op, key, klen);
    if (e) {
        idem__ttl_remove(&op.s->wheel, &e->ttl);
        e->ttl.expires = 0;
        if (ttl_ms)
            idem__ttl_insert(&op.s->wheel, &e->ttl, expiry(op.now, ttl_ms));
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
    write_begin(&op, c, key, klen);
    e = op_find(&op, key, klen);
    if (e) {
        idem__cache_unlink_locked(c, op.s, e, &op.grave);
        op.s->removes++;
        rc = IDEM_OK;
    }
    op_end(&op);
    return rc;
}

void idem_cache_clear(struct idem_cache *c)
{
    struct idem__cache_entry *grave;
    unsigned i;

    for (i = 0; c && i < c->nshards; i++) {
        struct idem__cache_shard *s = &c->shards[i];

        grave = NULL;
        pthread_mutex_lock(&s->mu);
        s->removes += idem__cache_clear_locked(c, s, &grave);
        pthread_mutex_unlock(&s->mu);
        idem__cache_bury(c, grave);
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

int idem__cache_get(struct idem_cache *c, const void *key, size_t klen,
                    bool counted, struct idem_cache_value **value_out)
{
    struct idem__cache_entry *e;
    struct op op;

    if (!c || !bytes_ok(key, klen) || !value_out)
        return IDEM_EINVAL;
    op_begin(&op, c, key, klen);
    e = op_find(&op, key, klen);
    if (e) {
        e->visited = 1;
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
    if (e && e->ttl.expires)
        left = e->ttl.expires - op.now;
    op_end(&op);
    if (!e)
        return IDEM_ENOTFOUND;
    *ttl_ms_out = left > INT64_MAX ? INT64_MAX : (int64_t)left;
    return IDEM_OK;
}

/* -- Whole-cache reclaim and totals ---------------------------------- */

/* Reclaim every expired entry of s, a batch per lock hold, then add its
 * count and bytes to the totals. Returns the entries reclaimed. */
static size_t shard_settle(struct idem_cache *c, struct idem__cache_shard *s,
                           uint64_t now, size_t *count, size_t *bytes)
{
    struct idem__cache_entry *grave;
    size_t reclaimed = 0;
    bool done;

    do {
        grave = NULL;
        pthread_mutex_lock(&s->mu);
        done = idem__cache_reclaim_locked(c, s, now, SETTLE_BUDGET, &grave);
        if (done) {
            idem__cache_maybe_shrink_locked(c, s);
            *count += s->count;
            *bytes += s->bytes;
        }
        pthread_mutex_unlock(&s->mu);
        reclaimed += idem__cache_bury(c, grave);
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
    st->bytes += s->bytes;
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
 * (with its spare entries), and each shard with its wheel and minimum
 * bucket array. */
static uint64_t fixed_bytes(struct idem_cache *c)
{
    struct idem_keylock_stats ks;
    size_t shard = sizeof(struct idem__cache_shard) +
                   IDEM__CACHE_MIN_BUCKETS * sizeof(void *);

    idem_keylock_stats(c->flights, &ks);
    return sizeof(*c) + sizeof(*c->home) + ks.table_bytes + ks.spare_bytes +
           IDEM_CACHELINE - 1 + (uint64_t)c->nshards * shard;
}

void idem_cache_stats(struct idem_cache *c, struct idem_cache_stats *stats_out)
{
    struct idem_cache_stats st = { 0 };
    unsigned i;

    if (!stats_out)
        return;
    for (i = 0; c && i < c->nshards; i++)
        add_shard_stats(&c->shards[i], &st);
    if (c) {
        st.computes = atomic_load(&c->computes);
        st.shards = c->nshards;
        st.shard_max_entries = c->shard_max_entries;
        st.shard_max_bytes = c->shard_max_bytes;
        st.fixed_bytes = fixed_bytes(c);
    }
    *stats_out = st;
}
