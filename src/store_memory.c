/* The memory store: records live in an idem_cache (in-flight ones pinned,
 * so eviction takes only completed records), and a keylock makes each
 * read-check-write on one key atomic. Lease and lifetime are cache TTLs,
 * so an abandoned lease frees its key at its exact end. */
#include <string.h>

#include "idem/cache.h"
#include "idem/keylock.h"
#include "internal.h"
#include "record.h"
#include "store_internal.h"
#include "store_memory.h"

#define DEFAULT_MAX_MEMORY (64u << 20)
#define DEFAULT_SHARDS 16u /* the cache's own default */

static void value_release(void *ctx)
{
    idem_cache_value_release(ctx);
}

/* Key's record, decoded, with its handle in *v (caller releases).
 * IDEM_OK, IDEM_ENOTFOUND, IDEM_EINVAL (undecodable). */
static int get_record(struct idem__memory_store *ms, const void *key,
                      size_t klen, struct idem_cache_value **v,
                      struct idem__record_view *view)
{
    int rc = idem_cache_get(ms->cache, key, klen, v);

    if (rc != IDEM_OK)
        return rc;
    rc = idem__record_decode(idem_cache_value_data(*v),
                             idem_cache_value_len(*v), view);
    if (rc != IDEM_OK) {
        idem_cache_value_release(*v);
        *v = NULL;
    }
    return rc;
}

/* Whether v holds an in-flight record whose lease ended by wall_ms. */
static bool lapsed(struct idem_cache_value *v, uint64_t wall_ms)
{
    struct idem__record_view view;

    return idem__record_decode(idem_cache_value_data(v),
                               idem_cache_value_len(v), &view) == IDEM_OK &&
           view.rec.state == IDEM__REC_INFLIGHT &&
           view.rec.expires_ms <= wall_ms;
}

/* Under key's lock: the in-flight record in *v, whose owner's lease ran
 * out, becomes an "outcome unknown" record for ttl_ms, evictable; *v is
 * then that record. IDEM_OK or a cache failure (*v released). */
static int hold_unknown_locked(struct idem__memory_store *ms, const void *key,
                               size_t klen, struct idem_cache_value **v,
                               int64_t ttl_ms)
{
    uint8_t buf[256];
    size_t len = idem_cache_value_len(*v);
    int rc = IDEM_EINVAL;

    if (ALWAYS(len <= sizeof(buf))) {
        memcpy(buf, idem_cache_value_data(*v), len);
        buf[IDEM__RECORD_STATE_OFF] = IDEM__REC_UNKNOWN;
        rc = idem_cache_set(ms->cache, key, klen, buf, len, ttl_ms);
    }
    idem_cache_value_release(*v);
    *v = NULL;
    if (rc == IDEM_OK) {
        idem_cache_unpin(ms->cache, key, klen);
        rc = idem_cache_get(ms->cache, key, klen, v);
    }
    return rc;
}

/* Under key's lock: begin, as the ops table says. */
static int begin_locked(struct idem__memory_store *ms, const void *key,
                        size_t klen, const void *rec, size_t rlen,
                        const struct idem__begin_args *a,
                        struct idem__blob *existing_out)
{
    struct idem_cache_value *v;
    int rc = idem_cache_get(ms->cache, key, klen, &v);

    if (rc == IDEM_OK && lapsed(v, a->wall_ms)) {
        if (a->hold)
            rc = hold_unknown_locked(ms, key, klen, &v, a->unknown_ttl_ms);
        else { /* take the key over; its pin carries over */
            idem_cache_value_release(v);
            return idem_cache_set(ms->cache, key, klen, rec, rlen, a->ttl_ms);
        }
    }
    if (rc == IDEM_OK) {
        *existing_out =
            (struct idem__blob){ idem_cache_value_data(v),
                                 idem_cache_value_len(v), value_release, v };
        return IDEM_EEXIST;
    }
    if (rc == IDEM_ENOTFOUND)
        rc = idem_cache_set_ex(ms->cache, key, klen, rec, rlen, a->ttl_ms,
                               IDEM_CACHE_PIN);
    return rc == IDEM_EBUSY ? IDEM_ENOSPC : rc; /* nothing may go for it */
}

static int ms_begin(struct idem_store *s, const void *key, size_t klen,
                    const void *rec, size_t rlen,
                    const struct idem__begin_args *args,
                    struct idem__blob *existing_out, idem__store_done done,
                    void *ud)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    int rc = idem_keylock_lock(ms->locks, key, klen);

    (void)done;
    (void)ud;
    if (rc != IDEM_OK)
        return rc;
    rc = begin_locked(ms, key, klen, rec, rlen, args, existing_out);
    idem_keylock_unlock(ms->locks, key, klen);
    return rc;
}

/* Whether key holds an in-flight record owned by token. */
static bool owned_locked(struct idem__memory_store *ms, const void *key,
                         size_t klen, const uint8_t *token)
{
    struct idem__record_view view;
    struct idem_cache_value *v;
    bool owned;

    if (get_record(ms, key, klen, &v, &view) != IDEM_OK)
        return false;
    owned = view.rec.state == IDEM__REC_INFLIGHT &&
            memcmp(view.rec.token, token, IDEM__TOKEN_LEN) == 0;
    idem_cache_value_release(v);
    return owned;
}

/* Under key's lock: if its record is in flight under token, replace it
 * with rec for ttl_ms (rec NULL: remove it). A record that leaves flight
 * becomes evictable. IDEM_OK, IDEM_ESTALE, a cache failure. */
static int settle(struct idem_store *s, const void *key, size_t klen,
                  const uint8_t *token, const uint8_t *rec, size_t rlen,
                  int64_t ttl_ms)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    int rc = idem_keylock_lock(ms->locks, key, klen);

    if (rc != IDEM_OK)
        return rc;
    if (!owned_locked(ms, key, klen, token))
        rc = IDEM_ESTALE;
    else if (!rec)
        rc = idem_cache_remove(ms->cache, key, klen);
    else if ((rc = idem_cache_set(ms->cache, key, klen, rec, rlen, ttl_ms)) ==
                 IDEM_OK &&
             rec[IDEM__RECORD_STATE_OFF] != IDEM__REC_INFLIGHT)
        idem_cache_unpin(ms->cache, key, klen);
    idem_keylock_unlock(ms->locks, key, klen);
    return rc;
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
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    struct idem_cache_stats cs;

    idem_cache_stats(ms->cache, &cs);
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
        .lock_entries = idem_keylock_count(ms->locks),
    };
    for (int i = 0; i < IDEM_EVICT_AGE_BUCKETS; i++)
        out->evicted_by_age[i] = atomic_load(&ms->evicted_by_age[i]);
}

static void ms_free(struct idem_store *s)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;

    idem_cache_free(ms->cache);
    idem_keylock_free(ms->locks);
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
    unsigned n = o->shards ? o->shards : DEFAULT_SHARDS;
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
    struct idem_keylock_opts ko = { 0 };
    struct idem__memory_store *ms;
    struct idem_env env;
    int rc;

    if (!store_out || o.min_retention_ms < 0)
        return IDEM_EINVAL;
    idem__env_resolve(o.env, &env);
    ms = idem__alloc(&env, sizeof(*ms));
    if (!ms)
        return IDEM_ENOMEM;
    *ms = (struct idem__memory_store){ .base.ops = &memory_ops,
                                       .env = env,
                                       .min_retention_ms = o.min_retention_ms };
    atomic_init(&ms->youngest_evicted, UINT64_MAX);
    co.max_bytes = o.max_memory ? o.max_memory : DEFAULT_MAX_MEMORY;
    co.shards = shards_for(&o, co.max_bytes);
    co.env = ko.env = &ms->env;
    co.evict = may_evict;
    co.evict_ud = ms;
    rc = idem_cache_new(&co, &ms->cache);
    if (rc == IDEM_OK)
        rc = idem_keylock_new(&ko, &ms->locks);
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
