/* table: the one hash table of libidem (STYLE §19). Open addressing with
 * linear probing over 8-byte slots; a slot holds a pointer to the owner's
 * item with 16 bits of the item's hash (its tag) in the pointer's unused
 * top bits, so a probe reads the item only when the tag matches. Arrays
 * hold 16 or 3 * 2^k slots (k >= 3), so a table runs between 3/8 and 3/4
 * full; the slot index is the hash's low 32 bits scaled to the size. Removal
 * leaves a tombstone, so an item never moves inside an array, and resizing
 * is incremental: each write moves a few slots into the next array.
 * Writers are serialized by the owner (a lock); readers may probe with no
 * lock at all provided the owner frees neither items nor retired arrays
 * while they could be probing (idem__table_find). docs/internals/table.md. */
#ifndef IDEM_TABLE_H
#define IDEM_TABLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idem/env.h"
#include "list.h"

#define IDEM__TABLE_MIN 16u /* the smallest array; then 24, 48, 96, ... */
#define IDEM__TABLE_EMPTY 0u
#define IDEM__TABLE_TOMB 1u     /* removed, or moved to the next array */
#define IDEM__TABLE_PTR_BITS 48 /* items live below 2^48 */

/* One array of slots. While the table is resized, `next` is the array its
 * items are moving to; readers look there after this one. */
struct idem__table_array {
    struct idem__list retired; /* the owner's, once the array is retired */
    size_t n;                  /* slots */
    size_t used;               /* items + tombstones, for writers */
    _Atomic(struct idem__table_array *) next;
    _Atomic uint64_t slots[];
};

struct idem__table_ops {
    /* The full hash of an item, as given to insert (resizing needs it). */
    uint64_t (*hash)(const void *item, void *ud);
    /* Takes an array the table no longer uses: free it with
     * idem__table_array_free() once no reader can probe it. NULL: freed
     * at once (no lock-free readers). */
    void (*retire)(struct idem__table_array *a, void *ud);
    void *ud;
};

/* Readers start at `head`: the only array, or while resizing the one
 * being emptied (whose `next` is `to`). Everything else is for writers. */
struct idem__table {
    _Atomic(struct idem__table_array *) head;
    _Atomic size_t head_n;        /* head's n, for idem__table_hint */
    struct idem__table_array *to; /* NULL unless resizing */
    size_t moved;                 /* slots of head already moved */
    size_t count;                 /* items */
    uint64_t gen; /* + 1 whenever items may move: a resize starts or
                   * ends, or a clear (see idem__table_at) */
    struct idem_env env;
    struct idem__table_ops ops;
};

/* Where a writer found a key: its array and slot. Valid until the next
 * write to the table. */
struct idem__table_pos {
    struct idem__table_array *a;
    size_t i;
};

static inline uint64_t idem__table_tag(uint64_t hash)
{
    return (hash >> 32) & 0xffffu;
}

/* The first slot of hash's probe in an array of n slots. */
static inline size_t idem__table_index(uint64_t hash, size_t n)
{
    return (size_t)(((hash & 0xffffffffu) * (uint64_t)n) >> 32);
}

static inline void *idem__table_item(uint64_t slot)
{
    return (void *)(uintptr_t)(slot & (((uint64_t)1 << 48) - 1));
}

/* Whether slot holds an item whose tag is tag. */
static inline bool idem__table_slot_is(uint64_t slot, uint64_t tag)
{
    return slot > IDEM__TABLE_TOMB && (slot >> IDEM__TABLE_PTR_BITS) == tag;
}

/* The item with this hash for which eq(item, key) holds, or NULL. Safe
 * with no lock: each array is probed from its slot until an empty one,
 * then its successor. A writer's change is seen or not, never half; an
 * item present throughout the call is found. eq is inlined when it is a
 * known static function. */
static inline void *
idem__table_find(const struct idem__table *t, uint64_t hash,
                 bool (*eq)(const void *item, const void *key), const void *key)
{
    struct idem__table_array *a =
        atomic_load_explicit(&t->head, memory_order_acquire);
    uint64_t tag = idem__table_tag(hash), s;
    size_t i;

    for (; a; a = atomic_load_explicit(&a->next, memory_order_acquire)) {
        for (i = idem__table_index(hash, a->n);; i = i + 1 < a->n ? i + 1 : 0) {
            s = atomic_load_explicit(&a->slots[i], memory_order_acquire);
            if (s == IDEM__TABLE_EMPTY)
                break;
            if (idem__table_slot_is(s, tag) && eq(idem__table_item(s), key))
                return idem__table_item(s);
        }
    }
    return NULL;
}

/* The address of the slot where a probe for hash will start, to
 * prefetch before taking the owner's lock: with no lock and no epoch, so
 * computed from head's address and head_n as integers, never read
 * through. A head retired meanwhile (or a size not yet its own) costs a
 * wasted prefetch, never a read. */
static inline const void *idem__table_hint(const struct idem__table *t,
                                           uint64_t hash)
{
    uintptr_t a =
        (uintptr_t)atomic_load_explicit(&t->head, memory_order_relaxed);
    size_t n = atomic_load_explicit(&t->head_n, memory_order_relaxed);

    return (const void *)(a + offsetof(struct idem__table_array, slots) +
                          idem__table_index(hash, n) * sizeof(uint64_t));
}

/* An empty table of IDEM__TABLE_MIN slots. IDEM_OK or IDEM_ENOMEM. */
int idem__table_init(struct idem__table *t, const struct idem_env *env,
                     const struct idem__table_ops *ops);

/* Free the arrays (not the items). The table must be idle. */
void idem__table_deinit(struct idem__table *t);

void idem__table_array_free(const struct idem_env *env,
                            struct idem__table_array *a);

/* -- Writers: the owner serializes these. ---------------------------- */

/* As idem__table_find, also saying where the item is (*pos_out). */
void *idem__table_find_pos(const struct idem__table *t, uint64_t hash,
                           bool (*eq)(const void *item, const void *key),
                           const void *key, struct idem__table_pos *pos_out);

/* Make sure the next insert has room: may start (or finish) a resize.
 * IDEM_OK; IDEM_ENOMEM when the array is full and no larger one can be
 * allocated (nothing changed). A resize that cannot be allocated before
 * then is tried again later; the table just runs at a higher load. */
int idem__table_reserve(struct idem__table *t);

/* Add item (aligned to 4, below 2^48) under hash, after a successful
 * reserve; the caller knows no item with its key is present. While a
 * resize is under way the owner must move it on with every write
 * (idem__table_step, some STEP slots), or the next array fills before the
 * move ends. */
void idem__table_insert(struct idem__table *t, uint64_t hash, void *item);

/* Put item (same key and hash) in place of the one at pos. */
void idem__table_replace(struct idem__table *t, struct idem__table_pos pos,
                         void *item);

/* Remove the item at pos. */
void idem__table_remove(struct idem__table *t, struct idem__table_pos pos);

/* Remove every item, and go back to the smallest array if possible. */
void idem__table_clear(struct idem__table *t);

/* Move up to budget slots of a resize in progress; start one if the
 * table is too full or too empty. Returns whether a resize is left. */
bool idem__table_step(struct idem__table *t, size_t budget);

/* The slots of the array a step would allocate now to start a resize, or
 * 0 (none due, or one is in progress). */
size_t idem__table_due(const struct idem__table *t);

/* Slots an insert of one more item would allocate (a resize it would
 * start), so a caller bounded in bytes can count them first. */
size_t idem__table_insert_cost(const struct idem__table *t);

/* Slots held now, all arrays. */
size_t idem__table_slots(const struct idem__table *t);

/* -- Walking the slots (a cursor for the owner's sweeps): positions
 * 0 .. span - 1 are head's slots, then, while resizing, the next
 * array's. Every item is at exactly one position; while gen stays the
 * same, none moves. -------------------------------------------------- */

static inline size_t idem__table_span(const struct idem__table *t)
{
    const struct idem__table_array *a =
        atomic_load_explicit(&t->head, memory_order_relaxed);

    return a->n + (t->to ? t->to->n : 0);
}

/* The item at position p < span, and where it is; NULL if none. */
static inline void *idem__table_at(const struct idem__table *t, size_t p,
                                   struct idem__table_pos *pos_out)
{
    struct idem__table_array *a =
        atomic_load_explicit(&t->head, memory_order_relaxed);
    uint64_t s;

    if (p >= a->n) {
        p -= a->n;
        a = t->to;
    }
    s = atomic_load_explicit(&a->slots[p], memory_order_relaxed);
    if (s <= IDEM__TABLE_TOMB)
        return NULL;
    *pos_out = (struct idem__table_pos){ a, p };
    return idem__table_item(s);
}

/* The mean length, in slots past the first, of a probe for a key that is
 * absent (an insert's): from each slot of head's array, the slots to the
 * next empty one (tests; O(slots)). */
double idem__table_mean_miss(const struct idem__table *t);

/* Call fn for each item (under the owner's lock); stops at fn's first
 * nonzero answer and returns it. fn must not change the table. */
int idem__table_foreach(const struct idem__table *t,
                        int (*fn)(void *item, void *ud), void *ud);

#endif
