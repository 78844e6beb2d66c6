/* keylock: per-key lock entries that free themselves. Each stripe has a few
 * inline slots that an uncontended lock claims and its unlock frees with one
 * atomic each, and libidem's one hash table (src/table.h) of allocated
 * entries under the stripe mutex for keys whose slot is taken, too long,
 * or contended. An entry exists only while held.
 * docs/internals/keylock.md. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "idem/keylock.h"
#include "internal.h"
#include "keylock_slot.h"
#include "table.h"

#define DEFAULT_STRIPES 64u
#define MAX_STRIPES 65536u
/* A freed allocated entry for a key this long or shorter may be kept. */
#define SPARE_MAX_KEY 256u
/* Slots a resize of a stripe's table moves per write (src/table.h: each
 * write must move some for the next array to stay under 3/4 full). */
#define TABLE_STEP 16u
/* Locks a thread remembers, to unlock them without hashing the key. */
#define HELD_MEMO 4u

enum req_state { REQ_IDLE = 0, REQ_WAITING, REQ_HOLDING };

/* An entry allocated for a key its slot could not take; an item of its
 * stripe's table. */
struct heap_entry {
    struct entry e;
};

_Static_assert(sizeof(struct heap_entry) ==
                   offsetof(struct heap_entry, e) + sizeof(struct entry),
               "an allocated entry's key follows its entry");

struct stripe {
    struct slot slots[SLOTS];
    _Alignas(IDEM_CACHELINE) pthread_mutex_t mu;
    struct idem__table table; /* allocated entries (struct heap_entry) */
    size_t count;             /* allocated entries */
    size_t bytes;             /* allocated entries */
    struct heap_entry *spare; /* one freed entry kept to spare a malloc */
    uint32_t homed[SLOTS];    /* allocated entries whose home is slot i */
    uint64_t waiters, created, handoffs, busy, timeouts, cancels;
};

struct idem_keylock {
    struct idem_env env;
    uint64_t seed;
    uint64_t id;    /* unique per table in this process */
    unsigned shift; /* 64 - log2(nstripes) */
    unsigned nstripes;
    unsigned max_waiters;
    void *stripes_mem; /* as allocated; stripes is it, aligned */
    struct stripe *stripes;
};

/* A key's stripe, and its home: the one slot it may occupy. */
struct place {
    struct stripe *s;
    struct slot *sl;
    uint32_t *homed; /* allocated entries homed at sl */
};

/* A thread blocked in lock()/timedlock(). Its request has no callback;
 * a release hands it the lock and signals cond under the stripe lock,
 * since both live on the waiting thread's stack. */
struct thread_waiter {
    struct idem_lock_req req;
    pthread_cond_t cond;
};

/* A lock this thread holds: unlock finds its entry here without hashing.
 * The array's address identifies the thread as an owner. */
struct held {
    uint64_t table;
    struct entry *e;
    struct slot *sl; /* e's slot; NULL: e was allocated */
};

static _Thread_local struct held held[HELD_MEMO] IDEM_TLS_FAST;
#define THREAD_TOKEN ((void *)held)

static atomic_uint_fast64_t table_ids;

static const unsigned char *entry_key(const struct entry *e)
{
    return (const unsigned char *)(e + 1);
}

/* Key storage is rounded up to 16 bytes, the size class a spare serves. */
static size_t entry_size(size_t klen)
{
    return sizeof(struct heap_entry) + ((klen + 15u) & ~(size_t)15u);
}

static bool key_ok(const void *key, size_t klen)
{
    return (key || klen == 0) && klen <= UINT32_MAX;
}

static bool key_is(const struct entry *e, uint64_t h, const void *key,
                   size_t klen)
{
    return e->hash == h && e->klen == klen &&
           bytes_equal(entry_key(e), key, klen);
}

static struct place place_of(struct idem_keylock *t, uint64_t h)
{
    struct stripe *s = &t->stripes[idem__stripe_of(h, t->shift)];
    size_t i = (size_t)(h >> 32) & (SLOTS - 1);

    return (struct place){ s, &s->slots[i], &s->homed[i] };
}

/* -- Without the mutex: one atomic to lock, one to unlock ------------- */

static void held_add(const struct idem_keylock *t, struct entry *e,
                     struct slot *sl)
{
    unsigned i = 0;

    while (i < HELD_MEMO - 1 && held[i].e)
        i++;
    held[i] = (struct held){ t->id, e, sl }; /* full: forget the last */
}

/* Whether this thread remembers holding key; if so *h_out is what it
 * remembers, forgotten here. */
static bool held_take(const struct idem_keylock *t, const void *key,
                      size_t klen, struct held *h_out)
{
    unsigned i;

    for (i = 0; i < HELD_MEMO; i++) {
        struct entry *e = held[i].e;

        if (e && held[i].table == t->id && e->klen == klen &&
            bytes_equal(entry_key(e), key, klen)) {
            *h_out = held[i];
            held[i].e = NULL;
            return true;
        }
    }
    return false;
}

/* -- Under the mutex ------------------------------------------------- */

/* Take p's stripe mutex and its home slot; leave() gives both back. */
static void enter(const struct place *p)
{
    pthread_mutex_lock(&p->s->mu);
    slot_freeze(p->sl);
}

static void leave(const struct place *p)
{
    slot_settle(p->sl, *p->homed);
    pthread_mutex_unlock(&p->s->mu);
}

/* The table's view of an allocated entry: its hash, and key equality. */
static uint64_t heap_hash(const void *item, void *ud)
{
    (void)ud;
    return ((const struct heap_entry *)item)->e.hash;
}

static const struct idem__table_ops heap_ops = { .hash = heap_hash };

struct probe {
    uint64_t h;
    const void *key;
    size_t klen;
};

static bool heap_eq(const void *item, const void *key)
{
    const struct probe *pr = key;

    return key_is(&((const struct heap_entry *)item)->e, pr->h, pr->key,
                  pr->klen);
}

static bool heap_is(const void *item, const void *key)
{
    return item == key;
}

static struct entry *lookup_locked(const struct place *p, uint64_t h,
                                   const void *key, size_t klen)
{
    struct probe pr = { h, key, klen };
    struct heap_entry *he;

    if (slot_used(p->sl) && key_is(&p->sl->e, h, key, klen))
        return &p->sl->e;
    if (*p->homed == 0)
        return NULL;
    he = idem__table_find(&p->s->table, h, heap_eq, &pr);
    return he ? &he->e : NULL;
}

static struct entry *heap_insert_locked(struct idem_keylock *t,
                                        const struct place *p, uint64_t h,
                                        const void *key, size_t klen)
{
    struct stripe *s = p->s;
    struct heap_entry *he = s->spare;

    if (idem__table_reserve(&s->table) != IDEM_OK)
        return NULL;
    if (he && entry_size(he->e.klen) == entry_size(klen))
        s->spare = NULL;
    else if (!(he = idem__alloc(&t->env, entry_size(klen))))
        return NULL;
    he->e = (struct entry){ .hash = h, .klen = (uint32_t)klen };
    bytes_copy(he + 1, key, klen);
    idem__table_insert(&s->table, h, he);
    idem__table_step(&s->table, TABLE_STEP); /* a resize moves on */
    s->count++;
    s->created++;
    s->bytes += entry_size(klen);
    (*p->homed)++;
    return &he->e;
}

/* A new entry for key: its home slot if free and the key fits, else an
 * allocated one. Its owner is the caller's to set. NULL: no memory. */
static struct entry *create_locked(struct idem_keylock *t,
                                   const struct place *p, uint64_t h,
                                   const void *key, size_t klen)
{
    if (!slot_used(p->sl) && klen <= INLINE_KEY) {
        p->sl->e = (struct entry){ .hash = h, .klen = (uint32_t)klen };
        bytes_copy(p->sl->key, key, klen);
        slot_set_used(p->sl, true);
        return &p->sl->e;
    }
    return heap_insert_locked(t, p, h, key, klen);
}

static void heap_delete_locked(struct idem_keylock *t, const struct place *p,
                               struct heap_entry *he)
{
    struct stripe *s = p->s;
    struct idem__table_pos pos;

    if (ALWAYS(idem__table_find_pos(&s->table, he->e.hash, heap_is, he, &pos)))
        idem__table_remove(&s->table, pos);
    s->count--;
    s->bytes -= entry_size(he->e.klen);
    (*p->homed)--;
    if (!s->spare && he->e.klen <= SPARE_MAX_KEY)
        s->spare = he;
    else
        idem__free(&t->env, he);
    /* shrink as entries go; the last one's going finishes it, so an idle
     * stripe is back to its smallest array */
    if (s->count == 0)
        while (idem__table_step(&s->table, SIZE_MAX))
            ;
    else
        idem__table_step(&s->table, TABLE_STEP);
}

static void entry_delete_locked(struct idem_keylock *t, const struct place *p,
                                struct entry *e)
{
    assert(!e->head && e->nwaiters == 0);
    if (e == &p->sl->e)
        slot_set_used(p->sl, false);
    else
        heap_delete_locked(t, p, IDEM_CONTAINER_OF(e, struct heap_entry, e));
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
static int take_or_queue_locked(struct idem_keylock *t, const struct place *p,
                                uint64_t h, const void *key, size_t klen,
                                const void *owner, struct idem_lock_req *w,
                                struct entry **e_out)
{
    struct entry *e = lookup_locked(p, h, key, klen);

    if (!e) {
        e = create_locked(t, p, h, key, klen);
        if (!e)
            return IDEM_ENOMEM;
        e->owner = owner;
        *e_out = e;
        return IDEM_OK;
    }
    assert(e->owner);
    if (e->owner == owner && w)
        return IDEM_EDEADLK;
    if (!w || (t->max_waiters && e->nwaiters >= t->max_waiters)) {
        p->s->busy++;
        return IDEM_EBUSY;
    }
    waiter_push(e, w);
    p->s->waiters++;
    *e_out = e;
    return IDEM_EINPROGRESS;
}

/* e's holder leaves: hand e to its first waiter, or delete it. Returns the
 * granted request whose callback the caller runs once the lock is dropped,
 * or NULL. A granted thread is signalled here, under the lock. */
static struct idem_lock_req *
release_locked(struct idem_keylock *t, const struct place *p, struct entry *e)
{
    struct idem_lock_req *w = e->head;
    struct thread_waiter *tw;

    if (!w) {
        entry_delete_locked(t, p, e);
        return NULL;
    }
    waiter_unlink(e, w);
    p->s->waiters--;
    p->s->handoffs++;
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

/* Release e, which owner holds, under the mutex; run a grant's callback. */
__attribute__((noinline)) static int release_slow(struct idem_keylock *t,
                                                  const struct place *p,
                                                  struct entry *e,
                                                  struct idem_lock_req *req)
{
    struct idem_lock_req *granted = NULL;
    idem_lock_cb cb = NULL;
    int rc = IDEM_EPERM;

    enter(p);
    if (!req || (req->state == REQ_HOLDING && ALWAYS(e->owner == req))) {
        if (req) {
            req->state = REQ_IDLE;
            req->entry = NULL;
        }
        granted = release_locked(t, p, e);
        cb = granted ? granted->cb : NULL;
        rc = IDEM_OK;
    }
    leave(p);
    if (granted)
        cb(granted, IDEM_OK);
    return rc;
}

/* -- Table lifecycle ------------------------------------------------- */

static int stripes_init(struct idem_keylock *t)
{
    size_t bytes = (size_t)t->nstripes * sizeof(struct stripe);
    size_t align = _Alignof(struct stripe);
    unsigned i, j;

    t->stripes_mem = idem__alloc(&t->env, bytes + align - 1);
    if (!t->stripes_mem)
        return IDEM_ENOMEM;
    t->stripes = (struct stripe *)(((uintptr_t)t->stripes_mem + align - 1) &
                                   ~(uintptr_t)(align - 1));
    memset(t->stripes, 0, bytes);
    for (i = 0; i < t->nstripes; i++) {
        struct stripe *s = &t->stripes[i];

        if (idem__table_init(&s->table, &t->env, &heap_ops) != IDEM_OK) {
            t->nstripes = i; /* free only what exists */
            return IDEM_ENOMEM;
        }
        for (j = 0; j < SLOTS; j++)
            atomic_init(&s->slots[j].word, SLOT_FREE);
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
    idem_env_resolve(o.env, &env);
    t = idem__alloc(&env, sizeof(*t));
    if (!t)
        return IDEM_ENOMEM;
    *t = (struct idem_keylock){ .env = env, .max_waiters = o.max_waiters };
    t->nstripes = idem__pow2_ceil(o.stripes ? o.stripes : DEFAULT_STRIPES);
    t->shift = 64u - (unsigned)__builtin_ctz(t->nstripes);
    t->seed = idem__random_seed();
    t->id = atomic_fetch_add(&table_ids, 1) + 1;
    rc = stripes_init(t);
    if (rc != IDEM_OK) {
        idem_keylock_free(t);
        return rc;
    }
    *table_out = t;
    return IDEM_OK;
}

static int free_item(void *item, void *ud)
{
    idem__free(ud, item);
    return 0;
}

void idem_keylock_free(struct idem_keylock *t)
{
    unsigned i;

    if (!t)
        return;
    for (i = 0; t->stripes && i < t->nstripes; i++) {
        struct stripe *s = &t->stripes[i];

        idem__table_foreach(&s->table, free_item, &t->env);
        idem__table_deinit(&s->table);
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

/* Sleep until tw is granted the lock or timeout_ms (NULL: none) passes; on
 * timeout, leave the queue. Called and returns with s->mu held. The clock
 * is read only here, when a thread must wait. */
static int wait_locked(struct stripe *s, struct thread_waiter *tw,
                       const uint64_t *timeout_ms)
{
    pthread_condattr_t attr;
    struct timespec deadline;
    int err = 0;

    if (timeout_ms)
        deadline_after(*timeout_ms, &deadline);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&tw->cond, &attr);
    pthread_condattr_destroy(&attr);
    while (tw->req.state == REQ_WAITING && err == 0) {
        if (timeout_ms)
            err = pthread_cond_timedwait(&tw->cond, &s->mu, &deadline);
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

/* The locking path once the key's slot was not free. */
__attribute__((noinline)) static int
lock_slow(struct idem_keylock *t, const struct place *p, uint64_t h,
          const void *key, size_t klen, bool wait, const uint64_t *timeout_ms)
{
    struct thread_waiter tw; /* the queue links are set if it waits */
    struct entry *e = NULL;
    int rc;

    tw.req.cb = NULL;
    tw.req.data = THREAD_TOKEN;
    enter(p);
    rc = take_or_queue_locked(t, p, h, key, klen, THREAD_TOKEN,
                              wait ? &tw.req : NULL, &e);
    if (rc == IDEM_EINPROGRESS) {
        rc = wait_locked(p->s, &tw, timeout_ms);
        /* others settled the slot while the mutex was dropped */
        slot_freeze(p->sl);
    }
    leave(p);
    if (rc == IDEM_OK)
        held_add(t, e, e == &p->sl->e ? p->sl : NULL);
    return rc;
}

/* wait: false for trylock; timeout_ms: NULL waits forever. */
static int lock_thread(struct idem_keylock *t, const void *key, size_t klen,
                       bool wait, const uint64_t *timeout_ms)
{
    struct place p;
    uint64_t h;

    if (!t || !key_ok(key, klen))
        return IDEM_EINVAL;
    h = idem__hash(key, klen, t->seed);
    p = place_of(t, h);
    if (slot_claim(p.sl, h, key, klen, THREAD_TOKEN)) {
        held_add(t, &p.sl->e, p.sl);
        return IDEM_OK;
    }
    return lock_slow(t, &p, h, key, klen, wait, timeout_ms);
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
    int rc;

    if (timeout_ms == 0) {
        rc = lock_thread(t, key, klen, false, NULL);
        return rc == IDEM_EBUSY ? IDEM_ETIMEDOUT : rc;
    }
    return lock_thread(t, key, klen, true, &timeout_ms);
}

/* Unlock a key this thread does not remember holding: hash and look. */
__attribute__((noinline)) static int unlock_hashed(struct idem_keylock *t,
                                                   const void *key, size_t klen)
{
    struct idem_lock_req *granted = NULL;
    idem_lock_cb cb = NULL;
    uint64_t h = idem__hash(key, klen, t->seed);
    struct place p = place_of(t, h);
    struct entry *e;
    int rc = IDEM_EPERM;

    enter(&p);
    e = lookup_locked(&p, h, key, klen);
    if (e && e->owner == THREAD_TOKEN) {
        granted = release_locked(t, &p, e);
        cb = granted ? granted->cb : NULL;
        rc = IDEM_OK;
    }
    leave(&p);
    if (granted)
        cb(granted, IDEM_OK);
    return rc;
}

int idem_keylock_unlock(struct idem_keylock *t, const void *key, size_t klen)
{
    struct held mine;
    struct place p;

    if (!t || !key_ok(key, klen))
        return IDEM_EINVAL;
    if (!held_take(t, key, klen, &mine))
        return unlock_hashed(t, key, klen);
    if (mine.sl && slot_release(mine.sl))
        return IDEM_OK;
    p = place_of(t, mine.e->hash);
    return release_slow(t, &p, mine.e, NULL);
}

/* -- Asynchronous API ------------------------------------------------ */

void idem_lock_req_init(struct idem_lock_req *req, idem_lock_cb cb, void *data)
{
    *req = (struct idem_lock_req){ .data = data, .cb = cb };
}

int idem_keylock_acquire(struct idem_keylock *t, struct idem_lock_req *req,
                         const void *key, size_t klen)
{
    struct entry *e = NULL;
    struct place p;
    uint64_t h;
    int rc;

    if (!t || !req || !req->cb || req->entry || !key_ok(key, klen))
        return IDEM_EINVAL;
    h = idem__hash(key, klen, t->seed);
    p = place_of(t, h);
    if (slot_claim(p.sl, h, key, klen, req)) {
        e = &p.sl->e;
        rc = IDEM_OK;
    } else {
        enter(&p);
        rc = take_or_queue_locked(t, &p, h, key, klen, req, req, &e);
        leave(&p);
    }
    if (rc == IDEM_OK) {
        req->entry = e;
        req->state = REQ_HOLDING;
    }
    return rc;
}

int idem_keylock_release(struct idem_keylock *t, struct idem_lock_req *req)
{
    struct entry *e;
    struct place p;

    if (!t || !req)
        return IDEM_EINVAL;
    if (!req->entry)
        return IDEM_EPERM;
    e = req->entry;
    p = place_of(t, e->hash);
    if (req->state == REQ_HOLDING && e == &p.sl->e && slot_release(p.sl)) {
        req->state = REQ_IDLE;
        req->entry = NULL;
        return IDEM_OK;
    }
    return release_slow(t, &p, e, req);
}

int idem_keylock_cancel(struct idem_keylock *t, struct idem_lock_req *req)
{
    struct place p;
    int rc = IDEM_EALREADY;

    if (!t || !req)
        return IDEM_EINVAL;
    if (!req->entry)
        return IDEM_ENOTFOUND;
    p = place_of(t, ((const struct entry *)req->entry)->hash);
    enter(&p);
    if (req->state == REQ_WAITING) {
        waiter_unlink(req->entry, req);
        req->state = REQ_IDLE;
        req->entry = NULL;
        p.s->waiters--;
        p.s->cancels++;
        rc = IDEM_OK;
    }
    leave(&p);
    return rc;
}

/* -- Introspection --------------------------------------------------- */

/* Entries live in s and entries ever created there. Called under s->mu;
 * slots still change under it, each one read once. */
static void census_locked(struct stripe *s, uint64_t *live, uint64_t *created)
{
    unsigned i;

    *live = s->count;
    *created = s->created;
    for (i = 0; i < SLOTS; i++)
        slot_census(&s->slots[i], live, created);
}

size_t idem_keylock_count(struct idem_keylock *t)
{
    uint64_t live, created;
    size_t n = 0;
    unsigned i;

    for (i = 0; t && i < t->nstripes; i++) {
        pthread_mutex_lock(&t->stripes[i].mu);
        census_locked(&t->stripes[i], &live, &created);
        pthread_mutex_unlock(&t->stripes[i].mu);
        n += (size_t)live;
    }
    return n;
}

/* Add s's counters to *st. Under s->mu. Every grant is a creation or a
 * hand-off, and every creation not live was freed. */
static void stripe_stats_locked(struct stripe *s, struct idem_keylock_stats *st)
{
    uint64_t live, created;

    census_locked(s, &live, &created);
    st->entries += live;
    st->created += created;
    st->freed += created - live;
    st->acquired += created + s->handoffs;
    st->waiters += s->waiters;
    st->handoffs += s->handoffs;
    st->busy += s->busy;
    st->timeouts += s->timeouts;
    st->cancels += s->cancels;
    st->table_bytes +=
        s->bytes + idem__table_slots(&s->table) * sizeof(uint64_t);
    st->spare_bytes += s->spare ? entry_size(s->spare->e.klen) : 0;
}

void idem_keylock_stats(struct idem_keylock *t,
                        struct idem_keylock_stats *stats_out)
{
    struct idem_keylock_stats st = { 0 };
    unsigned i;

    if (!stats_out)
        return;
    for (i = 0; t && i < t->nstripes; i++) {
        pthread_mutex_lock(&t->stripes[i].mu);
        stripe_stats_locked(&t->stripes[i], &st);
        pthread_mutex_unlock(&t->stripes[i].mu);
    }
    if (t)
        st.table_bytes += sizeof(*t) +
                          (size_t)t->nstripes * sizeof(struct stripe) +
                          _Alignof(struct stripe) - 1;
    *stats_out = st;
}
