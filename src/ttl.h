/* ttl: the cache's expiry index, a hierarchical timer wheel over 64-bit
 * millisecond times with intrusive nodes: O(1) insert and remove, and an
 * advance that skips empty time by per-level bitmaps. Not thread-safe: the
 * owner (a cache shard) serializes calls. docs/internals/cache.md. */
#ifndef IDEM_TTL_H
#define IDEM_TTL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDEM__TTL_BITS 6u
#define IDEM__TTL_SLOTS (1u << IDEM__TTL_BITS)
/* 11 levels of 6 bits cover every bit of a 64-bit time. */
#define IDEM__TTL_LEVELS 11u

/* Lives inside the timed object. pprev is NULL while the node is in no
 * wheel; expires is the node's time, kept exact (the wheel rounds nothing).
 * expires is atomic so that an owner's lock-free readers may load it
 * (relaxed) while the owner's writer moves it. */
struct idem__ttl_node {
    struct idem__ttl_node *next;
    struct idem__ttl_node **pprev;
    _Atomic uint64_t expires;
};

/* Level l slot s holds nodes whose time agrees with `now` above bit
 * 6(l+1), has digit s at level l, and differs from `now` first there.
 * Occupied slots of level l have s >= digit_l(now); those with equality
 * are due for processing and are drained before `now` moves on. A set bit
 * in occupied[l] means the slot may hold nodes (removal leaves it set). */
struct idem__ttl_wheel {
    uint64_t now;
    size_t count;
    uint64_t occupied[IDEM__TTL_LEVELS];
    struct idem__ttl_node *slot[IDEM__TTL_LEVELS][IDEM__TTL_SLOTS];
};

/* An empty wheel whose time is now. */
void idem__ttl_init(struct idem__ttl_wheel *w, uint64_t now);

/* Add the unlinked node n, due at expires. A time at or before the wheel's
 * own is due at the next advance. */
void idem__ttl_insert(struct idem__ttl_wheel *w, struct idem__ttl_node *n,
                      uint64_t expires);

/* Take n out of the wheel at once; harmless if it is in none. */
void idem__ttl_remove(struct idem__ttl_wheel *w, struct idem__ttl_node *n);

static inline bool idem__ttl_linked(const struct idem__ttl_node *n)
{
    return n->pprev != NULL;
}

/* Move the wheel's time towards `to`, unlinking every node due at or before
 * it and pushing it on *due (a list through next). Does at most *budget
 * units of work (a node moved or handed out, a step in time), subtracting
 * what it did. True when the wheel reached `to` with nothing left due;
 * false when the budget ran out first (call again to go on). */
bool idem__ttl_advance(struct idem__ttl_wheel *w, uint64_t to, size_t *budget,
                       struct idem__ttl_node **due);

/* Nodes in the wheel, by walking every slot (for tests; O(nodes)). */
size_t idem__ttl_walk_count(const struct idem__ttl_wheel *w);

#endif
