/* keylock: striped hash tables of per-key lock entries. An entry's
 * references are its holder and its waiters; it exists only while it has a
 * holder (waiters queue behind one), and the release that finds no waiter
 * unlinks and frees it under the stripe lock. docs/internals/keylock.md. */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "idem/keylock.h"
#include "internal.h"

#define DEFAULT_STRIPES 64u
#define MAX_STRIPES 65536u
#define MIN_BUCKETS 16u
/* A freed entry for a key this long or shorter may be kept for reuse. */
#define SPARE_MAX_KEY 256u

enum req_state { REQ_IDLE = 0, REQ_WAITING, REQ_HOLDING };

struct entry {
    struct entry *next; /* bucket chain */
    uint64_t hash;
    const void *owner;          /* holder: a request or a thread token */
    struct idem_lock_req *head; /* waiters, first in first out */
    struct idem_lock_req *tail;
    uint32_t nwaiters;
    uint32_t klen;
    unsigned char key[];
};

struct stripe {
    _Alignas(IDEM_CACHELINE) pthread_mutex_t mu;
    struct entry **buckets;
    size_t mask; /* buckets - 1 */
    size_t count;
    size_t bytes;        /* bucket array + live entries */
    struct entry *spare; /* one freed entry kept to spare a malloc+free */
    uint64_t waiters, created, freed, acquired, handoffs, busy, timeouts,
        cancels;
};

struct idem_keylock {
    struct idem_env env;
    uint64_t seed;
    unsigned shift; /* 64 - log2(nstripes) */
    unsigned nstripes;
    unsigned max_waiters;
    void *stripes_mem; /* as allocated; stripes is it, cache-line aligned */
    struct stripe *stripes;
};

/* A thread blocked in lock()/timedlock(). Its request has no callback;
 * a release hands it the lock and signals cond under the stripe lock,
 * since both live on the waiting thread's stack. */
struct thread_waiter {
    struct idem_lock_req req;
    pthread_cond_t cond;
};

/* Identifies the calling thread as a lock owner: its address differs
 * between live threads. */
static _Thread_local char thread_token IDEM_TLS_FAST;

/* Key storage is rounded up to 16 bytes, the size class a spare serves. */
static size_t entry_size(size_t klen)
{
    return sizeof(struct entry) + ((klen + 15u) & ~(size_t)15u);
}

static bool key_ok(const void *key, size_t klen)
{
    return (key || klen == 0) && klen <= UINT32_MAX;
}

static struct stripe *stripe_for(struct idem_keylock *t, uint64_t h)
{
    return &t->stripes[idem__stripe_of(h, t->shift)];
}

static struct entry *lookup_locked(struct stripe *s, uint64_t h,
                                   const void *key, size_t klen)
{
    struct entry *e = s->buckets[h & s->mask];

    while (e && !(e->hash == h && e->klen == klen &&
                  (klen == 0 || memcmp(e->key, key, klen) == 0)))
        e = e->next;
    return e;
}

/* Rebuild s's bucket array with n buckets. On allocation failure the old
 * array stays: chains get longer, nothing breaks. */
static void rehash_locked(struct idem_keylock *t, struct stripe *s, size_t n)
{
    struct entry **nb = idem__alloc(&t->env, n * sizeof(*nb));
    size_t i;

    if (!nb)
        return;
    memset(nb, 0, n * sizeof(*nb));
    for (i = 0; i <= s->mask; i++) {
        struct entry *e = s->buckets[i], *next;

        for (; e; e = next) {
            next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
        }
    }
    idem__free(&t->env, s->buckets);
    s->bytes += (n - (s->mask + 1)) * sizeof(*nb);
    s->buckets = nb;
    s->mask = n - 1;
}

static struct entry *entry_insert_locked(struct idem_keylock *t,
                                         struct stripe *s, uint64_t h,
                                         const void *key, size_t klen)
{
    struct entry *e = s->spare;

    if (e && entry_size(e->klen) == entry_size(klen))
        s->spare = NULL;
    else if (!(e = idem__alloc(&t->env, entry_size(klen)))) {
        return NULL;
    }
    *e = (struct entry){ .hash = h, .klen = (uint32_t)klen };
    if (klen)
        memcpy(e->key, key, klen);
    e->next = s->buckets[h & s->mask];
    s->buckets[h & s->mask] = e;
    s->count++;
    s->created++;
    s->bytes += entry_size(klen);
    if (s->count > s->mask + 1)
        rehash_locked(t, s, 2 * (s->mask + 1));
    return e;
}

static void entry_delete_locked(struct idem_keylock *t, struct stripe *s,
                                struct entry *e)
{
    struct entry **pp = &s->buckets[e->hash & s->mask];

    assert(!e->head && e->nwaiters == 0);
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    s->count--;
    s->freed++;
    s->bytes -= entry_size(e->klen);
    if (!s->spare && e->klen <= SPARE_MAX_KEY)
        s->spare = e;
    else
        idem__free(&t->env, e);
    if (s->mask + 1 > MIN_BUCKETS && s->count < (s->mask + 1) / 4)
        rehash_locked(t, s, (s->mask + 1) / 2);
}

static void waiter_push(struct entry *e, struct idem_lock_req *w)
{
    w->next = NULL;
    w->prev = e->tail;
    if (e->tail)
        e->tail->next = w;
    else
        e->head = w;
    e->tail = w;
    e->nwaiters++;
    w->entry = e;
    w->state = REQ_WAITING;
}

static void waiter_unlink(struct entry *e, struct idem_lock_req *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        e->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        e->tail = w->prev;
    w->next = w->prev = NULL;
    e->nwaiters--;
}

/* Find or create key's entry and make owner its holder, or queue w behind
 * the holder (w NULL: do not wait). *e_out is the entry when the answer is
 * IDEM_OK or IDEM_EINPROGRESS. */
static int take_or_queue_locked(struct idem_keylock *t, struct stripe *s,
                                uint64_t h, const void *key, size_t klen,
                                const void *owner, struct idem_lock_req *w,
                                struct entry **e_out)
{
    struct entry *e = lookup_locked(s, h, key, klen);

    if (!e) {
        e = entry_insert_locked(t, s, h, key, klen);
        if (!e)
            return IDEM_ENOMEM;
        e->owner = owner;
        s->acquired++;
        *e_out = e;
        return IDEM_OK;
    }
    assert(e->owner);
    if (e->owner == owner && w)
        return IDEM_EDEADLK;
    if (!w || (t->max_waiters && e->nwaiters >= t->max_waiters)) {
        s->busy++;
        return IDEM_EBUSY;
    }
    waiter_push(e, w);
    s->waiters++;
    *e_out = e;
    return IDEM_EINPROGRESS;
}

/* e's holder leaves: hand e to its first waiter, or delete it. Returns the
 * granted request whose callback the caller runs once the lock is dropped,
 * or NULL. A granted thread is signalled here, under the lock. */
static struct idem_lock_req *release_locked(struct idem_keylock *t,
                                            struct stripe *s, struct entry *e)
{
    struct idem_lock_req *w = e->head;
    struct thread_waiter *tw;

    if (!w) {
        entry_delete_locked(t, s, e);
        return NULL;
    }
    waiter_unlink(e, w);
    s->waiters--;
    s->acquired++;
    s->handoffs++;
    w->state = REQ_HOLDING;
    if (w->cb) {
        e->owner = w;
        return w;
    }
    tw = IDEM_CONTAINER_OF(w, struct thread_waiter, req);
    e->owner = tw->req.data; /* the waiting thread's token */
    pthread_cond_signal(&tw->cond);
    return NULL;
}

static void run_granted(struct idem_lock_req *w, idem_lock_cb cb)
{
    if (w)
        cb(w, IDEM_OK);
}

/* -- Table lifecycle ------------------------------------------------- */

static int stripes_init(struct idem_keylock *t)
{
    size_t bytes = (size_t)t->nstripes * sizeof(struct stripe);
    unsigned i;

    t->stripes_mem = idem__alloc(&t->env, bytes + IDEM_CACHELINE - 1);
    if (!t->stripes_mem)
        return IDEM_ENOMEM;
    t->stripes =
        (struct stripe *)(((uintptr_t)t->stripes_mem + IDEM_CACHELINE - 1) &
                          ~(uintptr_t)(IDEM_CACHELINE - 1));
    memset(t->stripes, 0, bytes);
    for (i = 0; i < t->nstripes; i++) {
        struct stripe *s = &t->stripes[i];

        s->buckets = idem__alloc(&t->env, MIN_BUCKETS * sizeof(*s->buckets));
        if (!s->buckets) {
            t->nstripes = i; /* free only what exists */
            return IDEM_ENOMEM;
        }
        memset(s->buckets, 0, MIN_BUCKETS * sizeof(*s->buckets));
        s->mask = MIN_BUCKETS - 1;
        s->bytes = MIN_BUCKETS * sizeof(*s->buckets);
        pthread_mutex_init(&s->mu, NULL);
    }
    return IDEM_OK;
}

int idem_keylock_new(const struct idem_keylock_opts *opts,
                     struct idem_keylock **table_out)
{
    struct idem_keylock_opts o = opts ? *opts : (struct idem_keylock_opts){ 0 };
    struct idem_env env;
    struct idem_keylock *t;
    int rc;

    if (!table_out || o.stripes > MAX_STRIPES)
        return IDEM_EINVAL;
    idem__env_resolve(o.env, &env);
    t = idem__alloc(&env, sizeof(*t));
    if (!t)
        return IDEM_ENOMEM;
    *t = (struct idem_keylock){ .env = env, .max_waiters = o.max_waiters };
    t->nstripes = idem__pow2_ceil(o.stripes ? o.stripes : DEFAULT_STRIPES);
    t->shift = 64u - (unsigned)__builtin_ctz(t->nstripes);
    t->seed = idem__random_seed();
    rc = stripes_init(t);
    if (rc != IDEM_OK) {
        idem_keylock_free(t);
        return rc;
    }
    *table_out = t;
    return IDEM_OK;
}

void idem_keylock_free(struct idem_keylock *t)
{
    unsigned i;
    size_t b;

    if (!t)
        return;
    for (i = 0; t->stripes && i < t->nstripes; i++) {
        struct stripe *s = &t->stripes[i];

        for (b = 0; b <= s->mask; b++) {
            struct entry *e = s->buckets[b], *next;

            for (; e; e = next) {
                next = e->next;
                idem__free(&t->env, e);
            }
        }
        idem__free(&t->env, s->buckets);
        idem__free(&t->env, s->spare);
        pthread_mutex_destroy(&s->mu);
    }
    idem__free(&t->env, t->stripes_mem);
    idem__free(&t->env, t);
}

/* -- Blocking API ---------------------------------------------------- */

static void deadline_after(uint64_t ms, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000u);
    ts->tv_nsec += (long)(ms % 1000u) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Sleep until tw is granted the lock or the deadline (NULL: none) passes;
 * on timeout, leave the queue. Called and returns with s->mu held. */
static int wait_locked(struct stripe *s, struct thread_waiter *tw,
                       const struct timespec *deadline)
{
    pthread_condattr_t attr;
    int err = 0;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&tw->cond, &attr);
    pthread_condattr_destroy(&attr);
    while (tw->req.state == REQ_WAITING && err == 0) {
        if (deadline)
            err = pthread_cond_timedwait(&tw->cond, &s->mu, deadline);
        else
            pthread_cond_wait(&tw->cond, &s->mu);
    }
    pthread_cond_destroy(&tw->cond);
    if (tw->req.state == REQ_HOLDING)
        return IDEM_OK;
    waiter_unlink(tw->req.entry, &tw->req);
    s->waiters--;
    s->timeouts++;
    return IDEM_ETIMEDOUT;
}

/* wait: false for trylock; deadline: NULL waits forever. */
static int lock_thread(struct idem_keylock *t, const void *key, size_t klen,
                       bool wait, const struct timespec *deadline)
{
    struct thread_waiter tw; /* the queue links are set if it waits */
    struct entry *e;
    struct stripe *s;
    uint64_t h;
    int rc;

    if (!t || !key_ok(key, klen))
        return IDEM_EINVAL;
    tw.req.cb = NULL;
    tw.req.data = &thread_token;
    h = idem__hash(key, klen, t->seed);
    s = stripe_for(t, h);
    pthread_mutex_lock(&s->mu);
    rc = take_or_queue_locked(t, s, h, key, klen, &thread_token,
                              wait ? &tw.req : NULL, &e);
    if (rc == IDEM_EINPROGRESS)
        rc = wait_locked(s, &tw, deadline);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int idem_keylock_lock(struct idem_keylock *t, const void *key, size_t klen)
{
    return lock_thread(t, key, klen, true, NULL);
}

int idem_keylock_trylock(struct idem_keylock *t, const void *key, size_t klen)
{
    return lock_thread(t, key, klen, false, NULL);
}

int idem_keylock_timedlock(struct idem_keylock *t, const void *key, size_t klen,
                           uint64_t timeout_ms)
{
    struct timespec deadline;
    int rc;

    if (timeout_ms == 0) {
        rc = lock_thread(t, key, klen, false, NULL);
        return rc == IDEM_EBUSY ? IDEM_ETIMEDOUT : rc;
    }
    deadline_after(timeout_ms, &deadline);
    return lock_thread(t, key, klen, true, &deadline);
}

int idem_keylock_unlock(struct idem_keylock *t, const void *key, size_t klen)
{
    struct idem_lock_req *granted = NULL;
    idem_lock_cb cb = NULL;
    struct entry *e;
    struct stripe *s;
    uint64_t h;
    int rc = IDEM_EPERM;

    if (!t || !key_ok(key, klen))
        return IDEM_EINVAL;
    h = idem__hash(key, klen, t->seed);
    s = stripe_for(t, h);
    pthread_mutex_lock(&s->mu);
    e = lookup_locked(s, h, key, klen);
    if (e && e->owner == &thread_token) {
        granted = release_locked(t, s, e);
        cb = granted ? granted->cb : NULL;
        rc = IDEM_OK;
    }
    pthread_mutex_unlock(&s->mu);
    run_granted(granted, cb);
    return rc;
}

/* -- Asynchronous API ------------------------------------------------ */

void idem_lock_req_init(struct idem_lock_req *req, idem_lock_cb cb, void *data)
{
    *req = (struct idem_lock_req){ .data = data, .cb = cb };
}

int idem_keylock_acquire(struct idem_keylock *t, struct idem_lock_req *req,
                         const void *key, size_t klen)
{
    struct entry *e;
    struct stripe *s;
    uint64_t h;
    int rc;

    if (!t || !req || !req->cb || req->entry || !key_ok(key, klen))
        return IDEM_EINVAL;
    h = idem__hash(key, klen, t->seed);
    s = stripe_for(t, h);
    pthread_mutex_lock(&s->mu);
    rc = take_or_queue_locked(t, s, h, key, klen, req, req, &e);
    if (rc == IDEM_OK) {
        req->entry = e;
        req->state = REQ_HOLDING;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* The stripe of a request that waits or holds: its entry cannot die
 * meanwhile, and req->entry is written only by the request's own user. */
static struct stripe *req_stripe(struct idem_keylock *t,
                                 const struct idem_lock_req *req)
{
    return stripe_for(t, ((const struct entry *)req->entry)->hash);
}

int idem_keylock_release(struct idem_keylock *t, struct idem_lock_req *req)
{
    struct idem_lock_req *granted = NULL;
    idem_lock_cb cb = NULL;
    struct stripe *s;
    struct entry *e;
    int rc = IDEM_EPERM;

    if (!t || !req)
        return IDEM_EINVAL;
    if (!req->entry)
        return IDEM_EPERM;
    e = req->entry;
    s = req_stripe(t, req);
    pthread_mutex_lock(&s->mu);
    if (req->state == REQ_HOLDING && ALWAYS(e->owner == req)) {
        req->state = REQ_IDLE;
        req->entry = NULL;
        granted = release_locked(t, s, e);
        cb = granted ? granted->cb : NULL;
        rc = IDEM_OK;
    }
    pthread_mutex_unlock(&s->mu);
    run_granted(granted, cb);
    return rc;
}

int idem_keylock_cancel(struct idem_keylock *t, struct idem_lock_req *req)
{
    struct stripe *s;
    int rc = IDEM_EALREADY;

    if (!t || !req)
        return IDEM_EINVAL;
    if (!req->entry)
        return IDEM_ENOTFOUND;
    s = req_stripe(t, req);
    pthread_mutex_lock(&s->mu);
    if (req->state == REQ_WAITING) {
        waiter_unlink(req->entry, req);
        req->state = REQ_IDLE;
        req->entry = NULL;
        s->waiters--;
        s->cancels++;
        rc = IDEM_OK;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* -- Introspection --------------------------------------------------- */

size_t idem_keylock_count(struct idem_keylock *t)
{
    size_t n = 0;
    unsigned i;

    for (i = 0; t && i < t->nstripes; i++) {
        pthread_mutex_lock(&t->stripes[i].mu);
        n += t->stripes[i].count;
        pthread_mutex_unlock(&t->stripes[i].mu);
    }
    return n;
}

void idem_keylock_stats(struct idem_keylock *t,
                        struct idem_keylock_stats *stats_out)
{
    struct idem_keylock_stats st = { 0 };
    unsigned i;

    if (!stats_out)
        return;
    for (i = 0; t && i < t->nstripes; i++) {
        struct stripe *s = &t->stripes[i];

        pthread_mutex_lock(&s->mu);
        st.entries += s->count;
        st.waiters += s->waiters;
        st.created += s->created;
        st.freed += s->freed;
        st.acquired += s->acquired;
        st.handoffs += s->handoffs;
        st.busy += s->busy;
        st.timeouts += s->timeouts;
        st.cancels += s->cancels;
        st.table_bytes += s->bytes;
        st.spare_bytes += s->spare ? entry_size(s->spare->klen) : 0;
        pthread_mutex_unlock(&s->mu);
    }
    if (t)
        st.table_bytes += sizeof(*t) +
                          (size_t)t->nstripes * sizeof(struct stripe) +
                          IDEM_CACHELINE - 1;
    *stats_out = st;
}
