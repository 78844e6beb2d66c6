/* The memory store: records live in an idem_cache, in-flight ones pinned
 * so that eviction takes only completed records. Each operation is one
 * or two cache steps, each atomic under the key's shard lock
 * (get-or-insert, replace-if): no per-key lock. */
#include <string.h>

#include "cache_internal.h"
#include "idem/cache.h"
#include "internal.h"
#include "record.h"
#include "store_internal.h"
#include "store_memory.h"

#define DEFAULT_MAX_MEMORY (64u << 20)

static void value_release(void *ctx)
{
    idem_cache_value_release(ctx);
}

/* Whether rec (rlen bytes) is in flight, by its state byte alone. */
static bool in_flight(const void *rec, size_t rlen)
{
    return rlen > IDEM__RECORD_STATE_OFF &&
           ((const uint8_t *)rec)[IDEM__RECORD_STATE_OFF] == IDEM__REC_INFLIGHT;
}

/* Whether rec (rlen bytes) is an in-flight record whose lease ended by
 * wall_ms. */
static bool lapsed(const void *rec, size_t rlen, uint64_t wall_ms)
{
    struct idem__record_view view;

    if (!in_flight(rec, rlen))
        return false; /* done or unknown: no lease; spare the decode */
    return idem__record_decode(rec, rlen, &view) == IDEM_OK &&
           view.rec.state == IDEM__REC_INFLIGHT &&
           view.rec.expires_ms <= wall_ms;
}

/* replace_if checks, run under the shard's lock. */
struct same_bytes {
    const void *data;
    size_t len;
};

static bool is_same(const void *cur, size_t len, void *ud)
{
    const struct same_bytes *b = ud;

    return len == b->len && memcmp(cur, b->data, len) == 0;
}

static bool is_owned(const void *cur, size_t len, void *ud)
{
    const uint8_t *token = idem__record_token(cur, len);

    return token && in_flight(cur, len) &&
           memcmp(token, ud, IDEM__TOKEN_LEN) == 0;
}

/* The in-flight record cur (its lease ran out on its owner) becomes an
 * "outcome unknown" record, evictable, unless the key changed meanwhile.
 * IDEM_OK (it is the key's record now), IDEM_ESTALE, or a cache failure. */
static int hold_unknown(struct idem__memory_store *ms, const void *key,
                        size_t klen, struct idem_cache_value *cur,
                        int64_t ttl_ms)
{
    struct same_bytes was = { idem_cache_value_data(cur),
                              idem_cache_value_len(cur) };
    uint8_t buf[256];

    if (!ALWAYS(was.len <= sizeof(buf)))
        return IDEM_EINVAL;
    memcpy(buf, was.data, was.len);
    buf[IDEM__RECORD_STATE_OFF] = IDEM__REC_UNKNOWN;
    return idem_cache_replace_if(ms->cache, key, klen, is_same, &was, buf,
                                 was.len, ttl_ms, IDEM_CACHE_UNPIN);
}

/* A record found under the key, as begin answers it: the lapsed lease
 * judged first. IDEM_EEXIST with *existing_out; IDEM_OK (taken over);
 * IDEM_ESTALE (the key changed meanwhile: look again); a cache failure. */
static int found(struct idem__memory_store *ms, const void *key, size_t klen,
                 const void *rec, size_t rlen, const struct idem__begin_args *a,
                 struct idem_cache_value *v, struct idem__blob *existing_out)
{
    struct same_bytes was = { idem_cache_value_data(v),
                              idem_cache_value_len(v) };
    int rc;

    if (!lapsed(was.data, was.len, a->wall_ms)) {
        *existing_out =
            (struct idem__blob){ was.data, was.len, value_release, v };
        return IDEM_EEXIST;
    }
    if (a->hold)
        rc = hold_unknown(ms, key, klen, v, a->unknown_ttl_ms);
    else /* take the key over; its pin carries over */
        rc = idem_cache_replace_if(ms->cache, key, klen, is_same, &was, rec,
                                   rlen, a->ttl_ms, 0);
    idem_cache_value_release(v);
    if (rc == IDEM_OK && a->hold)
        return IDEM_ESTALE; /* look again: the unknown record is found */
    return rc;
}

/* begin: a settled record (done or unknown) is answered from a lock-free
 * get, since nothing but a write can change it and begin writes nothing
 * then; otherwise in two steps at most, each atomic under the cache's
 * shard lock: get-or-insert the pinned in-flight record; a lapsed lease
 * found is replaced if it is still the key's record. No keylock. */
static int ms_begin(struct idem_store *s, const void *key, size_t klen,
                    const void *rec, size_t rlen,
                    const struct idem__begin_args *args,
                    struct idem__blob *existing_out, idem__store_done done,
                    void *ud)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    struct idem_cache_value *v;
    int rc, tries = 0;

    (void)done;
    (void)ud;
    /* a replay's usual case first: a completed (or unknown) record, read
     * with no lock and nothing allocated (uncounted: the cache's hit and
     * miss figures stay those of get_or_insert) */
    if (idem__cache_get(ms->cache, key, klen, false, &v) == IDEM_OK) {
        if (idem_cache_value_len(v) > IDEM__RECORD_STATE_OFF &&
            !in_flight(idem_cache_value_data(v), idem_cache_value_len(v))) {
            *existing_out = (struct idem__blob){ idem_cache_value_data(v),
                                                 idem_cache_value_len(v),
                                                 value_release, v };
            return IDEM_EEXIST;
        }
        idem_cache_value_release(v);
    }
    do {
        rc = idem_cache_get_or_insert(ms->cache, key, klen, rec, rlen,
                                      args->ttl_ms, IDEM_CACHE_PIN, &v);
        if (rc == IDEM_EEXIST)
            rc = found(ms, key, klen, rec, rlen, args, v, existing_out);
    } while (rc == IDEM_ESTALE && ++tries < 8);
    if (rc == IDEM_ESTALE)
        rc = IDEM_EBUSY; /* the key keeps changing under us: say busy */
    return rc == IDEM_EBUSY ? IDEM_ENOSPC : rc; /* nothing may go for it */
}

/* If key's record is in flight under token, replace it with rec for
 * ttl_ms (rec NULL: remove it), atomically under the shard's lock; a
 * record that leaves flight loses its pin. IDEM_OK, IDEM_ESTALE, a cache
 * failure. */
static int settle(struct idem_store *s, const void *key, size_t klen,
                  const uint8_t *token, const uint8_t *rec, size_t rlen,
                  int64_t ttl_ms)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    bool leaves = !rec || !in_flight(rec, rlen);

    return idem_cache_replace_if(ms->cache, key, klen, is_owned, (void *)token,
                                 rec, rlen, ttl_ms,
                                 leaves && rec ? IDEM_CACHE_UNPIN : 0);
}

static int ms_complete(struct idem_store *s, const void *key, size_t klen,
                       const uint8_t *token, const void *rec, size_t rlen,
                       int64_t ttl_ms, idem__store_done done, void *ud)
{
    (void)done;
    (void)ud;
    if (!ALWAYS(rec && rlen > IDEM__RECORD_STATE_OFF))
        return IDEM_EINVAL;
    return settle(s, key, klen, token, rec, rlen, ttl_ms);
}

static int ms_abort(struct idem_store *s, const void *key, size_t klen,
                    const uint8_t *token, idem__store_done done, void *ud)
{
    (void)done;
    (void)ud;
    return settle(s, key, klen, token, NULL, 0, 0);
}

static size_t ms_max_record(struct idem_store *s)
{
    return ((struct idem__memory_store *)s)->max_record;
}

/* The largest record one shard's share of the cache holds (fixed once
 * the cache exists). */
static size_t room_of(struct idem_cache *c)
{
    struct idem_cache_stats cs;

    idem_cache_stats(c, &cs);
    return cs.shard_max_bytes > IDEM_CACHE_ENTRY_OVERHEAD
               ? (size_t)cs.shard_max_bytes - IDEM_CACHE_ENTRY_OVERHEAD
               : 0;
}

/* Count an eviction of a record age_ms old. */
static void count_eviction(struct idem__memory_store *ms, uint64_t age_ms)
{
    static const uint64_t bounds[] = IDEM_EVICT_AGE_BOUNDS_MS;
    uint64_t young = atomic_load(&ms->youngest_evicted);
    size_t i = 0;

    while (i < sizeof(bounds) / sizeof(bounds[0]) && age_ms >= bounds[i])
        i++;
    atomic_fetch_add(&ms->evicted_by_age[i], 1);
    atomic_fetch_add(&ms->evicted_age_sum, age_ms);
    while (age_ms < young &&
           !atomic_compare_exchange_weak(&ms->youngest_evicted, &young, age_ms))
        ;
}

/* The cache's evict hook: a record younger than the minimum retention
 * stays; one let go is counted by its age (since it was completed). */
static bool may_evict(const void *value, size_t vlen, void *ud)
{
    struct idem__memory_store *ms = ud;
    struct idem__record_view v;
    uint64_t now, age;

    if (idem__record_decode(value, vlen, &v) != IDEM_OK)
        return true; /* unreadable: worth nothing */
    now = ms->env.wall_ms(ms->env.ud);
    age = now > v.rec.created_ms ? now - v.rec.created_ms : 0;
    if (age < (uint64_t)ms->min_retention_ms)
        return false;
    count_eviction(ms, age);
    return true;
}

static void ms_tick(struct idem_store *s)
{
    idem_cache_tick(((struct idem__memory_store *)s)->cache);
}

static void ms_stats(struct idem_store *s, struct idem_store_stats *out)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    struct idem_cache_stats cs;

    idem_cache_stats(ms->cache, &cs);
    *out = (struct idem_store_stats){
        .records = cs.entries,
        .bytes = cs.bytes,
        .in_flight = cs.pinned,
        .evicted = cs.evicted,
        .evicted_age_ms_sum = atomic_load(&ms->evicted_age_sum),
        .youngest_evicted_ms = atomic_load(&ms->youngest_evicted),
        .expired = cs.expired,
    };
    for (int i = 0; i < IDEM_EVICT_AGE_BUCKETS; i++)
        out->evicted_by_age[i] = atomic_load(&ms->evicted_by_age[i]);
}

static void ms_free(struct idem_store *s)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;

    idem_cache_free(ms->cache);
    idem__free(&ms->env, ms);
}

static const struct idem__store_ops memory_ops = {
    .begin = ms_begin,
    .complete = ms_complete,
    .abort = ms_abort,
    .max_record = ms_max_record,
    .tick = ms_tick,
    .stats = ms_stats,
    .free = ms_free,
};

/* Shards for the cache: as asked, but fewer while one shard's share of
 * max_bytes could not hold two records of max_record bytes. */
static unsigned shards_for(const struct idem_store_memory_opts *o,
                           size_t max_bytes)
{
    unsigned n = o->shards ? o->shards : IDEM_CACHE_DEFAULT_SHARDS;
    size_t need = o->max_record + IDEM_CACHE_ENTRY_OVERHEAD;

    while (o->max_record && n > 1 && max_bytes / n / 2 < need)
        n /= 2;
    return n;
}

int idem_store_memory_new(const struct idem_store_memory_opts *opts,
                          struct idem_store **store_out)
{
    struct idem_store_memory_opts o =
        opts ? *opts : (struct idem_store_memory_opts){ 0 };
    struct idem_cache_opts co = { 0 };
    struct idem__memory_store *ms;
    struct idem_env env;
    int rc;

    if (!store_out || o.min_retention_ms < 0)
        return IDEM_EINVAL;
    idem_env_resolve(o.env, &env);
    ms = idem__alloc(&env, sizeof(*ms));
    if (!ms)
        return IDEM_ENOMEM;
    *ms = (struct idem__memory_store){ .base.ops = &memory_ops,
                                       .env = env,
                                       .min_retention_ms = o.min_retention_ms };
    atomic_init(&ms->youngest_evicted, UINT64_MAX);
    co.max_bytes = o.max_memory ? o.max_memory : DEFAULT_MAX_MEMORY;
    co.shards = shards_for(&o, co.max_bytes);
    co.env = &ms->env;
    co.evict = may_evict;
    co.evict_ud = ms;
    rc = idem_cache_new(&co, &ms->cache);
    if (rc == IDEM_OK)
        ms->max_record = room_of(ms->cache);
    if (rc != IDEM_OK) {
        ms_free(&ms->base);
        return rc;
    }
    *store_out = &ms->base;
    return IDEM_OK;
}

bool idem__store_is_memory(const struct idem_store *s)
{
    return s && s->ops == &memory_ops;
}

void idem_store_free(struct idem_store *s)
{
    if (s)
        s->ops->free(s);
}

size_t idem_store_max_record(struct idem_store *s)
{
    return s && s->ops->max_record ? s->ops->max_record(s) : 0;
}

void idem_store_stats(struct idem_store *s, struct idem_store_stats *out)
{
    if (!out)
        return;
    *out = (struct idem_store_stats){ 0 };
    if (s)
        s->ops->stats(s, out);
}
