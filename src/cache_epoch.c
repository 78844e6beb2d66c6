/* cache epochs: what lets a get probe a shard's table with no lock.
 * A reader takes a slot stamped with the epoch it saw; a writer that
 * unlinks an entry keeps it in its shard's limbo until the epoch has
 * moved on twice, which needs every reader inside to have seen the
 * epoch in between: none of them can still hold the entry. Also the
 * cache's view of the clock. docs/internals/cache.md. */
#include "cache_internal.h"

/* Where this thread looks for a free slot first: spread by thread. */
static IDEM_TLS_FAST _Thread_local unsigned slot_hint;
static atomic_uint next_hint;

static unsigned first_slot(void)
{
    if (!slot_hint)
        slot_hint =
            atomic_fetch_add_explicit(&next_hint, 1, memory_order_relaxed) + 1;
    return (slot_hint - 1) % IDEM__EPOCH_SLOTS;
}

/* Record that slots up to i are in use, for the writers' scan. */
static void note_used(struct idem__epoch *ep, unsigned i)
{
    unsigned used = atomic_load_explicit(&ep->used, memory_order_relaxed);

    while (used <= i && !atomic_compare_exchange_weak(&ep->used, &used, i + 1))
        ;
}

/* The slot's stamp is published with a sequentially consistent CAS, so a
 * writer's later scan sees it, or this reader's probe sees the writer's
 * unlink: never neither. `used` covers the slot before the stamp is
 * published, so a scan never stops short of a stamped slot. */
unsigned idem__epoch_enter(struct idem__epoch *ep)
{
    unsigned i = first_slot();
    uint_fast64_t idle, stamp;

    for (;; i = (i + 1) % IDEM__EPOCH_SLOTS) {
        if (i >= atomic_load_explicit(&ep->used, memory_order_relaxed))
            note_used(ep, i);
        idle = 0;
        stamp = atomic_load_explicit(&ep->now, memory_order_relaxed) << 1 | 1;
        if (atomic_compare_exchange_strong(&ep->slot[i].state, &idle, stamp))
            return i;
    }
}

void idem__epoch_exit(struct idem__epoch *ep, unsigned slot)
{
    atomic_store_explicit(&ep->slot[slot].state, 0, memory_order_release);
}

uint64_t idem__epoch_advance(struct idem__epoch *ep)
{
    uint_fast64_t e = atomic_load(&ep->now), s;
    unsigned i, used = atomic_load(&ep->used);

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

void idem__cache_now_init(struct idem__cache_now *t, const struct idem_env *env)
{
    t->env = env;
    t->now = 0;
    if (idem__env_now_bounds(env, &t->lo, &t->hi))
        return;
    t->now = env->now_ms(env->ud);
    t->lo = t->hi = t->now;
}

uint64_t idem__cache_now_exact(struct idem__cache_now *t)
{
    if (t->lo == t->hi)
        return t->lo;
    if (!t->now) {
        t->now = t->env->now_ms(t->env->ud);
        t->lo = t->hi = t->now;
    }
    return t->now;
}
