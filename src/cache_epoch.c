/* cache epochs: what lets a get probe a shard's table with no lock.
 * A reader stamps its thread's slot with the epoch it saw; a writer that
 * unlinks an entry keeps it in its shard's limbo until the epoch has
 * moved on twice, which needs every reader inside to have seen the
 * epoch in between: none of them can still hold the entry. Also the
 * cache's view of the clock. docs/internals/cache.md. */
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cache_internal.h"

IDEM_TLS_FAST _Thread_local struct idem__epoch_memo idem__epoch_memo;
static atomic_uint_fast64_t next_uid;

/* Live epochs, so that an exiting thread can give back its slots. */
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct idem__list registry = { &registry, &registry };
static pthread_key_t exit_key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
atomic_bool idem__epoch_asym;

/* This thread's token: the address of its memo, unique among live
 * threads. */
static uintptr_t token(void)
{
    return (uintptr_t)&idem__epoch_memo;
}

static int membarrier(int cmd)
{
    return (int)syscall(__NR_membarrier, cmd, 0, 0);
}

/* At thread exit: free every slot the thread owns in a live cache. */
static void release_slots(void *tok)
{
    struct idem__list *n;
    unsigned i;

    pthread_mutex_lock(&registry_mu);
    for (n = registry.next; n != &registry; n = n->next) {
        struct idem__epoch *ep = IDEM_CONTAINER_OF(n, struct idem__epoch, live);

        for (i = 0; i < IDEM__EPOCH_SLOTS; i++)
            if (atomic_load(&ep->slot[i].owner) == (uintptr_t)tok)
                atomic_store(&ep->slot[i].owner, 0);
    }
    pthread_mutex_unlock(&registry_mu);
}

static void setup(void)
{
    pthread_key_create(&exit_key, release_slots);
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0)
        atomic_store(&idem__epoch_asym, true);
}

void idem__epoch_init(struct idem__epoch *ep)
{
    pthread_once(&once, setup);
    atomic_init(&ep->now, 2);
    ep->uid = atomic_fetch_add(&next_uid, 1) + 1;
    pthread_mutex_lock(&registry_mu);
    idem__list_push_back(&registry, &ep->live);
    pthread_mutex_unlock(&registry_mu);
}

void idem__epoch_deinit(struct idem__epoch *ep)
{
    pthread_mutex_lock(&registry_mu);
    idem__list_remove(&ep->live);
    pthread_mutex_unlock(&registry_mu);
}

/* `used` covers the slot before it is ever stamped, so a scan never
 * stops short of one. */
unsigned idem__epoch_claim(struct idem__epoch *ep)
{
    unsigned i, used;
    uintptr_t free_, me = token();

    for (i = 0; i < IDEM__EPOCH_SLOTS; i++)
        if (atomic_load(&ep->slot[i].owner) == me)
            goto out;
    for (i = 0; i < IDEM__EPOCH_SLOTS; i++) {
        free_ = 0;
        if (atomic_compare_exchange_strong(&ep->slot[i].owner, &free_, me))
            break;
    }
    if (i == IDEM__EPOCH_SLOTS)
        return i;
    pthread_setspecific(exit_key, (void *)me);
    used = atomic_load(&ep->used);
    while (used <= i && !atomic_compare_exchange_weak(&ep->used, &used, i + 1))
        ;
out:
    idem__epoch_memo = (struct idem__epoch_memo){ ep->uid, i };
    return i;
}

uint64_t idem__epoch_advance(struct idem__epoch *ep)
{
    uint_fast64_t e = atomic_load(&ep->now), s;
    unsigned i, used;

    /* Registered, it cannot fail (membarrier(2)). */
    if (atomic_load_explicit(&idem__epoch_asym, memory_order_relaxed))
        membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
    used = atomic_load(&ep->used);
    for (i = 0; i < used; i++) {
        s = atomic_load(&ep->slot[i].state);
        if ((s & 1) && (s >> 1) != e)
            return e; /* a reader has not seen e yet */
    }
    if (atomic_compare_exchange_strong(&ep->now, &e, e + 1))
        return e + 1;
    return e; /* another writer moved it: e now holds the new epoch */
}
/* -- Time ------------------------------------------------------------ */

void idem__cache_now_init_exact(struct idem__cache_now *t,
                                const struct idem_env *env)
{
    t->env = env;
    t->now = env->now_ms(env->ud);
    t->lo = t->hi = t->now;
}

void idem__cache_now_init(struct idem__cache_now *t, const struct idem_env *env)
{
    t->env = env;
    t->now = 0;
    if (!idem__env_now_bounds(env, &t->lo, &t->hi))
        idem__cache_now_init_exact(t, env); /* any other clock: read it */
}

uint64_t idem__cache_coarse_slack(const struct idem_env *env)
{
    struct timespec res;
    uint64_t lo, hi;

    if (!idem__env_now_bounds(env, &lo, &hi))
        return 0;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) != 0)
        return 2 * 10000000u; /* as env.c: 10 ms a tick */
    return 2 * ((uint64_t)res.tv_sec * 1000000000u + (uint64_t)res.tv_nsec);
}

uint64_t idem__cache_now_exact(struct idem__cache_now *t)
{
    if (t->lo != t->hi) /* only bounds so far: read it, once */
        idem__cache_now_init_exact(t, t->env);
    return t->lo;
}
