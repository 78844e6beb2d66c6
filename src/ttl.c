/* ttl: a hierarchical timer wheel of 11 levels x 64 slots over 64-bit
 * millisecond times. A node sits at the level of the highest 6-bit digit
 * in which its time differs from the wheel's; when the wheel's time reaches
 * its slot it falls a level, until it is due. docs/internals/cache.md. */
#include "ttl.h"

#include "internal.h"

#define SLOT_MASK (IDEM__TTL_SLOTS - 1u)

static unsigned digit(uint64_t t, unsigned level)
{
    return (unsigned)(t >> (level * IDEM__TTL_BITS)) & SLOT_MASK;
}

/* t with the digits of levels 0..level cleared: where the current round
 * of that level's slots began. */
static uint64_t round_start(uint64_t t, unsigned level)
{
    unsigned shift = (level + 1) * IDEM__TTL_BITS;

    return shift >= 64 ? 0 : t >> shift << shift;
}

static unsigned level_for(uint64_t now, uint64_t t)
{
    uint64_t diff = now ^ t;

    if (!diff)
        return 0;
    return (unsigned)(63 - __builtin_clzll(diff)) / IDEM__TTL_BITS;
}

static void unlink_node(struct idem__ttl_node *n)
{
    *n->pprev = n->next;
    if (n->next)
        n->next->pprev = n->pprev;
    n->next = NULL;
    n->pprev = NULL;
}

/* Put n in its slot for the wheel's time; a time already past counts as
 * now, which is the due slot of level 0. Returns the level chosen. */
static uint64_t time_of(const struct idem__ttl_node *n)
{
    return atomic_load_explicit(&n->expires, memory_order_relaxed);
}

static unsigned place(struct idem__ttl_wheel *w, struct idem__ttl_node *n)
{
    uint64_t t = time_of(n) > w->now ? time_of(n) : w->now;
    unsigned l = level_for(w->now, t), s = digit(t, l);
    struct idem__ttl_node **head = &w->slot[l][s];

    n->next = *head;
    if (n->next)
        n->next->pprev = &n->next;
    *head = n;
    n->pprev = head;
    w->occupied[l] |= (uint64_t)1 << s;
    return l;
}

void idem__ttl_init(struct idem__ttl_wheel *w, uint64_t now)
{
    *w = (struct idem__ttl_wheel){ .now = now };
}

void idem__ttl_insert(struct idem__ttl_wheel *w, struct idem__ttl_node *n,
                      uint64_t expires)
{
    assert(!n->pprev);
    atomic_store_explicit(&n->expires, expires, memory_order_relaxed);
    place(w, n);
    w->count++;
}

void idem__ttl_remove(struct idem__ttl_wheel *w, struct idem__ttl_node *n)
{
    if (!n->pprev)
        return;
    unlink_node(n);
    w->count--;
}

/* Empty the due slot of every level, highest first: a node whose time has
 * come goes on *due, any other drops to a lower level (its time agrees
 * with the wheel's down to this level's digit). False: out of budget. */
static bool drain_due(struct idem__ttl_wheel *w, size_t *budget,
                      struct idem__ttl_node **due)
{
    unsigned l = IDEM__TTL_LEVELS, s;
    struct idem__ttl_node *n;

    while (l-- > 0) {
        s = digit(w->now, l);
        if (!(w->occupied[l] >> s & 1))
            continue;
        while ((n = w->slot[l][s]) != NULL) {
            if (*budget == 0)
                return false;
            (*budget)--;
            unlink_node(n);
            if (time_of(n) <= w->now) {
                n->next = *due;
                *due = n;
                w->count--;
            } else {
                unsigned lower = place(w, n);

                assert(lower < l);
                (void)lower;
            }
        }
        w->occupied[l] &= ~((uint64_t)1 << s);
    }
    return true;
}

/* The earliest time after the wheel's at which a slot falls due, or
 * UINT64_MAX. Every slot of a lower level falls due before any slot of a
 * higher one, so the lowest level with a later slot decides. */
static uint64_t next_due(const struct idem__ttl_wheel *w)
{
    unsigned l, d;
    uint64_t later;

    for (l = 0; l < IDEM__TTL_LEVELS; l++) {
        d = digit(w->now, l);
        later = d == SLOT_MASK ? 0 : w->occupied[l] & (~(uint64_t)0 << (d + 1));
        if (later)
            return round_start(w->now, l) | (uint64_t)__builtin_ctzll(later)
                                                << (l * IDEM__TTL_BITS);
    }
    return UINT64_MAX;
}

bool idem__ttl_advance(struct idem__ttl_wheel *w, uint64_t to, size_t *budget,
                       struct idem__ttl_node **due)
{
    uint64_t t;

    for (;;) {
        if (!drain_due(w, budget, due))
            return false;
        if (w->now >= to)
            return true;
        if (*budget == 0)
            return false;
        (*budget)--;
        t = next_due(w);
        w->now = t < to ? t : to;
    }
}

size_t idem__ttl_walk_count(const struct idem__ttl_wheel *w)
{
    const struct idem__ttl_node *n;
    size_t total = 0;
    unsigned l, s;

    for (l = 0; l < IDEM__TTL_LEVELS; l++)
        for (s = 0; s < IDEM__TTL_SLOTS; s++)
            for (n = w->slot[l][s]; n; n = n->next)
                total++;
    return total;
}
