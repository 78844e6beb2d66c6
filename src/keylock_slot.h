/* keylock's inline slots: the lock-free half of src/keylock.c, which alone
 * includes this file. A slot holds one entry with its key; an uncontended
 * lock claims it and its unlock frees it with one atomic each, and the
 * stripe mutex takes it over ("freezes" it) whenever anything more is
 * needed. docs/internals/keylock.md. */
#ifndef IDEM_KEYLOCK_SLOT_H
#define IDEM_KEYLOCK_SLOT_H

#include <assert.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "idem/keylock.h"

/* Inline slots per stripe (a power of two) and the bytes of each. */
#define SLOTS 4u
#define SLOT_BYTES 128u

/* A slot's word is (generation << STATE_BITS) | state. The generation
 * counts the entries ever created in the slot. Only FREE may be claimed
 * without the stripe mutex, and only FAST freed without it (by its
 * holder); the mutex freezes a slot into a SLOW state before it looks at
 * the slot or at any allocated entry homed there, and settles it after. */
enum slot_state {
    SLOT_FREE = 0,   /* empty; no allocated entry homed here */
    SLOT_CLAIMING,   /* a lock without the mutex is filling it in */
    SLOT_FAST,       /* held; no waiter; no allocated entry homed here */
    SLOT_SLOW_EMPTY, /* the mutex's: empty */
    SLOT_SLOW_USED,  /* the mutex's: holds an entry */
};
#define STATE_BITS 3u
#define STATE_MASK ((uint64_t)7u)
#define GEN_ONE ((uint64_t)1u << STATE_BITS)

/* What every entry has, in a slot or allocated; its key bytes follow it
 * in memory. */
struct entry {
    const void *owner;          /* holder: a request or a thread token */
    struct idem_lock_req *head; /* waiters, first in first out */
    struct idem_lock_req *tail;
    uint64_t hash;
    uint32_t nwaiters;
    uint32_t klen;
};

struct slot {
    _Alignas(SLOT_BYTES) _Atomic uint64_t word;
    struct entry e;
    unsigned char key[SLOT_BYTES - sizeof(uint64_t) - sizeof(struct entry)];
};

#define INLINE_KEY sizeof(((struct slot *)0)->key)
_Static_assert(offsetof(struct slot, key) ==
                   offsetof(struct slot, e) + sizeof(struct entry),
               "a slot's key follows its entry");
_Static_assert(sizeof(struct slot) == SLOT_BYTES, "one slot, 128 bytes");
_Static_assert((SLOTS & (SLOTS - 1)) == 0, "SLOTS is a power of two");

/* Keys of 8 to 16 bytes (a UUID's 16, a hash's) are compared and copied
 * as two overlapping words, without a call. */
static inline bool bytes_equal(const void *a, const void *b, size_t n)
{
    uint64_t a0, a1, b0, b1;

    if (n < 8 || n > 16)
        return n == 0 || memcmp(a, b, n) == 0;
    memcpy(&a0, a, 8);
    memcpy(&b0, b, 8);
    memcpy(&a1, (const char *)a + n - 8, 8);
    memcpy(&b1, (const char *)b + n - 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
}

static inline void bytes_copy(void *dst, const void *src, size_t n)
{
    if (n < 8 || n > 16) {
        if (n)
            memcpy(dst, src, n);
        return;
    }
    memcpy(dst, src, 8);
    memcpy((char *)dst + n - 8, (const char *)src + n - 8, 8);
}

static inline unsigned state_of(uint64_t w)
{
    return (unsigned)(w & STATE_MASK);
}

static inline uint64_t with_state(uint64_t w, unsigned state)
{
    return (w & ~STATE_MASK) | state;
}

/* Take sl for key if it is FREE. The CLAIMING step keeps anyone from
 * reading the entry before it is filled in. true: owner holds the key. */
__attribute__((always_inline)) static inline bool
slot_claim(struct slot *sl, uint64_t h, const void *key, size_t klen,
           const void *owner)
{
    uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);

    if (state_of(w) != SLOT_FREE || klen > INLINE_KEY ||
        !atomic_compare_exchange_strong_explicit(
            &sl->word, &w, w + GEN_ONE + SLOT_CLAIMING, memory_order_acquire,
            memory_order_relaxed))
        return false;
    sl->e.owner = owner;
    sl->e.hash = h;
    sl->e.klen = (uint32_t)klen;
    bytes_copy(sl->key, key, klen);
    atomic_store_explicit(&sl->word, w + GEN_ONE + SLOT_FAST,
                          memory_order_release);
    return true;
}

/* Free sl, which the caller holds, if it is FAST. false: the mutex has it
 * (waiters, or a neighbour's entry homed here); release under the mutex. */
static inline bool slot_release(struct slot *sl)
{
    uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);

    return state_of(w) == SLOT_FAST &&
           atomic_compare_exchange_strong_explicit(
               &sl->word, &w, with_state(w, SLOT_FREE), memory_order_release,
               memory_order_relaxed);
}

/* Make sl the mutex's, which the caller holds: no claim or release
 * without it can change sl until slot_settle(). A CLAIMING slot is a few
 * stores from FAST: wait for them. */
static inline void slot_freeze(struct slot *sl)
{
    uint64_t w = atomic_load_explicit(&sl->word, memory_order_acquire);
    unsigned st;

    for (;;) {
        st = state_of(w);
        if (st >= SLOT_SLOW_EMPTY)
            return;
        if (st == SLOT_CLAIMING) {
            sched_yield();
            w = atomic_load_explicit(&sl->word, memory_order_acquire);
            continue;
        }
        st = st == SLOT_FREE ? SLOT_SLOW_EMPTY : SLOT_SLOW_USED;
        if (atomic_compare_exchange_weak_explicit(
                &sl->word, &w, with_state(w, st), memory_order_acquire,
                memory_order_acquire))
            return;
    }
}

/* Hand frozen sl back to the lock-free path where it allows: no waiter
 * and no allocated entry homed here (homed). Under the mutex. */
static inline void slot_settle(struct slot *sl, uint32_t homed)
{
    uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);
    unsigned st;

    assert(state_of(w) >= SLOT_SLOW_EMPTY);
    if (state_of(w) == SLOT_SLOW_USED)
        st = sl->e.nwaiters || homed ? SLOT_SLOW_USED : SLOT_FAST;
    else
        st = homed ? SLOT_SLOW_EMPTY : SLOT_FREE;
    atomic_store_explicit(&sl->word, with_state(w, st), memory_order_release);
}

/* Move frozen sl between SLOW_EMPTY and SLOW_USED; a new entry counts one
 * more generation. Under the mutex. */
static inline void slot_set_used(struct slot *sl, bool used)
{
    uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);

    w = used ? with_state(w + GEN_ONE, SLOT_SLOW_USED)
             : with_state(w, SLOT_SLOW_EMPTY);
    atomic_store_explicit(&sl->word, w, memory_order_relaxed);
}

/* Add sl's live entry (0 or 1) and the entries ever created in it. */
static inline void slot_census(struct slot *sl, uint64_t *live,
                               uint64_t *created)
{
    uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);
    unsigned st = state_of(w);

    *live += st == SLOT_CLAIMING || st == SLOT_FAST || st == SLOT_SLOW_USED;
    *created += w >> STATE_BITS;
}

static inline bool slot_used(struct slot *sl)
{
    return state_of(atomic_load_explicit(&sl->word, memory_order_relaxed)) ==
           SLOT_SLOW_USED;
}

#endif
