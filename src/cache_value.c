/* cache values: entries as refcounted value handles (key and value live in
 * the entry's one allocation), the home that lets a held value outlive
 * its cache, foreach, and get_or_compute with the buffer its function
 * fills. docs/internals/cache.md. */
#include <string.h>

#include "cache_internal.h"

static struct idem__cache_entry *entry_of(const struct idem_cache_value *v)
{
    return (struct idem__cache_entry *)(void *)v;
}

/* -- Homes and entries ----------------------------------------------- */

struct idem__cache_home *idem__cache_home_new(const struct idem_env *env)
{
    struct idem__cache_home *h = idem__alloc(env, sizeof(*h));

    if (!h)
        return NULL;
    h->env = *env;
    atomic_init(&h->refs, 1);
    return h;
}

void idem__cache_home_put(struct idem__cache_home *h)
{
    struct idem_env env;

    if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
        return;
    env = h->env;
    idem__free(&env, h);
}

struct idem__cache_entry *idem__cache_entry_new(struct idem_cache *c,
                                                const void *key, size_t klen,
                                                const void *value, size_t vlen)
{
    struct idem__cache_entry *e;

    e = idem__alloc(&c->env, IDEM__CACHE_HEADER + klen + vlen);
    if (!e)
        return NULL;
    memset(e, 0, IDEM__CACHE_HEADER);
    atomic_init(&e->expires, 0);
    atomic_init(&e->refs, 1);
    atomic_init(&e->visited, 0);
    e->klen = (uint32_t)klen;
    e->vlen = (uint32_t)vlen;
    if (klen)
        memcpy(e->data, key, klen);
    if (value && vlen)
        memcpy(e->data + klen, value, vlen);
    return e;
}

/* With only the table's reference left nobody else can take one (no
 * reader can find the entry any more), so it goes at once; otherwise the
 * last handle frees it, through the home it is given (in `expires`, which
 * nobody reads any more) before the table lets go. */
void idem__cache_entry_put(struct idem_cache *c, struct idem__cache_entry *e)
{
    assert(!e->linked);
    if (atomic_load_explicit(&e->refs, memory_order_acquire) == 1) {
        idem__free(&c->env, e);
        return;
    }
    atomic_fetch_add_explicit(&c->home->refs, 1, memory_order_relaxed);
    atomic_store_explicit(&e->expires,
                          IDEM__CACHE_GONE | (uint64_t)(uintptr_t)c->home,
                          memory_order_relaxed);
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
        idem__free(&c->env, e);
        idem__cache_home_put(c->home);
    }
}

void idem__cache_ready_init(struct idem__cache_ready *r)
{
    r->entries.head = r->entries.tail = NULL;
    idem__list_init(&r->arrays);
}

size_t idem__cache_bury(struct idem_cache *c, struct idem__cache_ready *r)
{
    struct idem__cache_entry *e = r->entries.head, *next;
    struct idem__list *n, *tmp;
    size_t count = 0;

    for (; e; e = next, count++) {
        next = e == r->entries.tail ? NULL : idem__cache_chain_next(e);
        idem__cache_entry_put(c, e);
    }
    r->entries.head = r->entries.tail = NULL;
    idem__list_foreach_safe(n, tmp, &r->arrays)
    {
        idem__list_remove(n);
        idem__table_array_free(
            &c->env, idem__list_entry(n, struct idem__table_array, retired));
    }
    return count;
}

/* -- Value handles --------------------------------------------------- */

const void *idem_cache_value_data(const struct idem_cache_value *v)
{
    const struct idem__cache_entry *e = entry_of(v);

    return e->data + e->klen;
}

size_t idem_cache_value_len(const struct idem_cache_value *v)
{
    return entry_of(v)->vlen;
}

struct idem_cache_value *idem_cache_value_ref(struct idem_cache_value *v)
{
    atomic_fetch_add_explicit(&entry_of(v)->refs, 1, memory_order_relaxed);
    return v;
}

void idem_cache_value_release(struct idem_cache_value *v)
{
    struct idem__cache_entry *e = entry_of(v);
    struct idem__cache_home *home;
    uint64_t x;

    if (!v || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* the table let go first, or the count could not reach 0 here */
    x = atomic_load_explicit(&e->expires, memory_order_relaxed);
    home = (struct idem__cache_home *)(uintptr_t)(x & ~IDEM__CACHE_GONE);
    idem__free(&home->env, e);
    idem__cache_home_put(home);
}

/* -- foreach --------------------------------------------------------- */

struct snapshot {
    struct idem__cache_now *t;
    struct idem__cache_entry **arr;
    size_t n;
};

static int snapshot_item(void *item, void *ud)
{
    struct idem__cache_entry *e = item;
    struct snapshot *sn = ud;

    if (!idem__cache_past(sn->t, idem__cache_expires(e))) {
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
        sn->arr[sn->n++] = e;
    }
    return 0;
}

/* References to s's live entries, in table order, in a new array. */
static int snapshot_shard(struct idem_cache *c, struct idem__cache_shard *s,
                          struct idem__cache_now *t,
                          struct idem__cache_entry ***arr_out, size_t *n_out)
{
    struct snapshot sn = { t, NULL, 0 };
    struct idem__cache_entry **arr = NULL;

    pthread_mutex_lock(&s->mu);
    if (s->count) {
        arr = idem__alloc(&c->env, s->count * sizeof(*arr));
        if (!arr) {
            pthread_mutex_unlock(&s->mu);
            return IDEM_ENOMEM;
        }
    }
    sn.arr = arr;
    idem__table_foreach(&s->table, snapshot_item, &sn);
    pthread_mutex_unlock(&s->mu);
    *arr_out = arr;
    *n_out = sn.n;
    return IDEM_OK;
}

int idem_cache_foreach(struct idem_cache *c, idem_cache_foreach_fn fn, void *ud)
{
    struct idem__cache_entry **arr = NULL;
    struct idem__cache_now t;
    size_t n = 0, i;
    unsigned sh;
    int rc = IDEM_OK;

    if (!c || !fn)
        return IDEM_EINVAL;
    idem__cache_now_init(&t, &c->env);
    for (sh = 0; rc == IDEM_OK && sh < c->nshards; sh++) {
        rc = snapshot_shard(c, &c->shards[sh], &t, &arr, &n);
        for (i = 0; rc == IDEM_OK && i < n; i++)
            rc = fn(arr[i]->data, arr[i]->klen,
                    (struct idem_cache_value *)(void *)arr[i], ud);
        for (i = 0; arr && i < n; i++)
            idem_cache_value_release((struct idem_cache_value *)(void *)arr[i]);
        idem__free(&c->env, arr);
        arr = NULL;
        n = 0;
    }
    return rc;
}

/* -- get_or_compute -------------------------------------------------- */

/* An entry under construction: its value grows as fn appends. */
struct idem_cache_buf {
    struct idem_cache *c;
    struct idem__cache_entry *e;
    size_t cap; /* value bytes e has room for */
    int err;    /* first failure, sticky */
};

/* Resize the entry to room for cap value bytes. */
static int buf_resize(struct idem_cache_buf *b, size_t cap)
{
    const struct idem_env *env = &b->c->env;
    void *p = env->alloc(env->ud, b->e, IDEM__CACHE_HEADER + b->e->klen + cap);

    if (!p)
        return IDEM_ENOMEM;
    b->e = p;
    b->cap = cap;
    return IDEM_OK;
}

/* Room for need value bytes: doubling, but never past what can fit. */
static int buf_reserve(struct idem_cache_buf *b, size_t need)
{
    size_t most =
        b->c->shard_max_bytes - IDEM_CACHE_ENTRY_OVERHEAD - b->e->klen;
    size_t cap = b->cap < 64 ? 64 : 2 * b->cap;

    if (need <= b->cap)
        return IDEM_OK;
    if (cap < need)
        cap = need;
    return buf_resize(b, cap < most ? cap : most);
}

int idem_cache_buf_append(struct idem_cache_buf *b, const void *data,
                          size_t len)
{
    size_t need;

    if (!b || (!data && len))
        return IDEM_EINVAL;
    if (b->err)
        return b->err;
    need = b->e->vlen + len;
    if (len > UINT32_MAX || !idem__cache_entry_fits(b->c, b->e->klen, need))
        b->err = IDEM_E2BIG;
    else
        b->err = buf_reserve(b, need);
    if (b->err)
        return b->err;
    if (len)
        memcpy(b->e->data + b->e->klen + b->e->vlen, data, len);
    b->e->vlen = (uint32_t)need;
    return IDEM_OK;
}

/* Run fn into a new entry and store it, with a handle for the caller. */
static int compute_and_store(struct idem_cache *c, const void *key, size_t klen,
                             idem_cache_compute_fn fn, void *ud, int64_t ttl_ms,
                             struct idem_cache_value **out)
{
    struct idem_cache_buf b = { .c = c };
    int rc;

    if (!idem__cache_entry_fits(c, klen, 0))
        return IDEM_E2BIG;
    b.e = idem__cache_entry_new(c, key, klen, NULL, 0);
    if (!b.e)
        return IDEM_ENOMEM;
    atomic_fetch_add(&c->computes, 1);
    rc = fn(key, klen, &b, ud);
    if (b.err)
        rc = b.err;
    if (rc == IDEM_OK && b.cap > b.e->vlen)
        rc = buf_resize(&b, b.e->vlen); /* give back the slack */
    if (rc != IDEM_OK) {
        idem__free(&c->env, b.e);
        return rc;
    }
    return idem__cache_store(c, b.e, ttl_ms, 0, out);
}

int idem_cache_get_or_compute(struct idem_cache *c, const void *key,
                              size_t klen, idem_cache_compute_fn fn, void *ud,
                              int64_t ttl_ms,
                              struct idem_cache_value **value_out)
{
    int rc;

    if (!c || !fn || !value_out || (!key && klen) || klen > UINT32_MAX ||
        ttl_ms < 0)
        return IDEM_EINVAL;
    rc = idem_cache_get(c, key, klen, value_out);
    if (rc != IDEM_ENOTFOUND)
        return rc;
    rc = idem_keylock_lock(c->flights, key, klen);
    if (rc != IDEM_OK)
        return rc;
    /* whoever held the key's lock before us may have stored it */
    rc = idem__cache_get(c, key, klen, false, value_out);
    if (rc == IDEM_ENOTFOUND)
        rc = compute_and_store(c, key, klen, fn, ud, ttl_ms, value_out);
    idem_keylock_unlock(c->flights, key, klen);
    return rc;
}
