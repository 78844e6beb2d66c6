/* table: linear probing over tagged pointers, tombstones, and a resize
 * spread over writes: a resize allocates the next array, points the old
 * one's `next` at it, and each write moves a few slots (insert into the
 * next array first, then a tombstone in the old slot), so a reader that
 * probes the old array, then the next, finds every item present all
 * along. docs/internals/table.md. */
#include <string.h>

#include "idem/status.h"
#include "internal.h"
#include "table.h"

#define STEP_SLOTS 16u /* slots moved per write while resizing */

static struct idem__table_array *array_new(const struct idem_env *env,
                                           size_t slots)
{
    struct idem__table_array *a =
        idem__alloc(env, sizeof(*a) + slots * sizeof(a->slots[0]));
    size_t i;

    if (!a)
        return NULL;
    idem__list_init(&a->retired);
    a->n = slots;
    a->used = 0;
    atomic_init(&a->next, NULL);
    for (i = 0; i < slots; i++)
        atomic_init(&a->slots[i], IDEM__TABLE_EMPTY);
    return a;
}

void idem__table_array_free(const struct idem_env *env,
                            struct idem__table_array *a)
{
    idem__free(env, a);
}

static struct idem__table_array *head_of(const struct idem__table *t)
{
    return atomic_load_explicit(&t->head, memory_order_relaxed);
}

static void retire(struct idem__table *t, struct idem__table_array *a)
{
    if (t->ops.retire)
        t->ops.retire(a, t->ops.ud);
    else
        idem__table_array_free(&t->env, a);
}

int idem__table_init(struct idem__table *t, const struct idem_env *env,
                     const struct idem__table_ops *ops)
{
    struct idem__table_array *a = array_new(env, IDEM__TABLE_MIN);

    if (!a)
        return IDEM_ENOMEM;
    atomic_init(&t->head, a);
    atomic_init(&t->head_n, a->n);
    t->to = NULL;
    t->moved = 0;
    t->count = 0;
    t->gen = 0;
    t->env = *env;
    t->ops = *ops;
    return IDEM_OK;
}

void idem__table_deinit(struct idem__table *t)
{
    struct idem__table_array *a = head_of(t);

    if (!a)
        return;
    if (t->to)
        idem__table_array_free(&t->env, t->to);
    idem__table_array_free(&t->env, a);
    atomic_store_explicit(&t->head, NULL, memory_order_relaxed);
}

/* Probe a for key; on a match set *pos_out. */
static void *probe(struct idem__table_array *a, uint64_t hash,
                   bool (*eq)(const void *item, const void *key),
                   const void *key, struct idem__table_pos *pos_out)
{
    uint64_t tag = idem__table_tag(hash), s;
    size_t i;

    for (i = idem__table_index(hash, a->n);; i = i + 1 < a->n ? i + 1 : 0) {
        s = atomic_load_explicit(&a->slots[i], memory_order_relaxed);
        if (s == IDEM__TABLE_EMPTY)
            return NULL;
        if (idem__table_slot_is(s, tag) && eq(idem__table_item(s), key)) {
            *pos_out = (struct idem__table_pos){ a, i };
            return idem__table_item(s);
        }
    }
}

void *idem__table_find_pos(const struct idem__table *t, uint64_t hash,
                           bool (*eq)(const void *item, const void *key),
                           const void *key, struct idem__table_pos *pos_out)
{
    void *item = probe(head_of(t), hash, eq, key, pos_out);

    if (!item && t->to)
        item = probe(t->to, hash, eq, key, pos_out);
    return item;
}

/* Put item in a's first free slot on its probe path (a has room). */
static void place(struct idem__table_array *a, uint64_t hash, void *item)
{
    uint64_t v = (uint64_t)(uintptr_t)item | idem__table_tag(hash)
                                                 << IDEM__TABLE_PTR_BITS;
    uint64_t s;
    size_t i;

    assert(((uintptr_t)item >> IDEM__TABLE_PTR_BITS) == 0);
    assert(((uintptr_t)item & 3u) == 0);
    for (i = idem__table_index(hash, a->n);; i = i + 1 < a->n ? i + 1 : 0) {
        s = atomic_load_explicit(&a->slots[i], memory_order_relaxed);
        if (s <= IDEM__TABLE_TOMB)
            break;
    }
    a->used += s == IDEM__TABLE_EMPTY;
    atomic_store_explicit(&a->slots[i], v, memory_order_release);
}

/* The array inserts go to: the next one while resizing. */
static struct idem__table_array *insert_array(const struct idem__table *t)
{
    return t->to ? t->to : head_of(t);
}

void idem__table_insert(struct idem__table *t, uint64_t hash, void *item)
{
    place(insert_array(t), hash, item);
    t->count++;
}

void idem__table_replace(struct idem__table *t, struct idem__table_pos pos,
                         void *item)
{
    uint64_t s =
        atomic_load_explicit(&pos.a->slots[pos.i], memory_order_relaxed);

    (void)t;
    atomic_store_explicit(&pos.a->slots[pos.i],
                          (s & ~(((uint64_t)1 << 48) - 1)) |
                              (uint64_t)(uintptr_t)item,
                          memory_order_release);
}

void idem__table_remove(struct idem__table *t, struct idem__table_pos pos)
{
    atomic_store_explicit(&pos.a->slots[pos.i], IDEM__TABLE_TOMB,
                          memory_order_release);
    t->count--;
}

/* -- Resizing -------------------------------------------------------- */

/* The sizes: IDEM__TABLE_MIN, then 3 * 2^k from 24, each twice the one
 * before (but the first step, 16 to 24). */
static size_t size_up(size_t n)
{
    return n == IDEM__TABLE_MIN ? 24 : 2 * n;
}

static size_t size_down(size_t n)
{
    return n == 24 ? IDEM__TABLE_MIN : n / 2;
}

/* The size the table should move to, or 0 to stay: past 3/4 full (with
 * tombstones) the next size up, or a rebuild at the same size if
 * tombstones are most of it; under 1/4 full the next size down. Each
 * target keeps the next array under 3/4 full when the move ends, counting
 * one insert per write while STEP_SLOTS move (n/16 writes). */
static size_t target_size(const struct idem__table *t)
{
    const struct idem__table_array *a = head_of(t);
    size_t n = a->n;

    if (a->used * 4 > n * 3)
        return t->count * 2 > n ? size_up(n) : n;
    if (n > IDEM__TABLE_MIN && t->count * 4 < n)
        return size_down(n);
    return 0;
}

size_t idem__table_due(const struct idem__table *t)
{
    return t->to ? 0 : target_size(t);
}

static bool start_resize(struct idem__table *t, size_t n)
{
    struct idem__table_array *to = array_new(&t->env, n);

    if (!to)
        return false;
    t->to = to;
    t->moved = 0;
    t->gen++;
    atomic_store_explicit(&head_of(t)->next, to, memory_order_release);
    return true;
}

/* Load up to STEP_SLOTS items of head's slots [from, from + n) into items
 * (their slots into where), prefetching each item's first 128 bytes, where
 * an owner's hash reads. Returns how many. */
static size_t gather(struct idem__table_array *a, size_t from, size_t n,
                     void **items, size_t *where)
{
    uint64_t s;
    size_t i, k = 0;

    for (i = from; i < from + n; i++) {
        s = atomic_load_explicit(&a->slots[i], memory_order_relaxed);
        if (s <= IDEM__TABLE_TOMB)
            continue;
        items[k] = idem__table_item(s);
        __builtin_prefetch(items[k]);
        __builtin_prefetch((const char *)items[k] + 64);
        where[k++] = i;
    }
    return k;
}

/* Move head's slots [from, from + n), n <= STEP_SLOTS, to the next array:
 * in three passes (load and prefetch the items, hash them and prefetch
 * their new slots, place them), so that a batch's cache misses overlap.
 * Each item is placed in the next array before its old slot becomes a
 * tombstone, as lock-free readers need. */
static void move_batch(struct idem__table *t, struct idem__table_array *a,
                       size_t from, size_t n)
{
    void *items[STEP_SLOTS];
    size_t where[STEP_SLOTS], i, k = gather(a, from, n, items, where);
    uint64_t hashes[STEP_SLOTS];

    for (i = 0; i < k; i++) {
        hashes[i] = t->ops.hash(items[i], t->ops.ud);
        __builtin_prefetch(
            &t->to->slots[idem__table_index(hashes[i], t->to->n)], 1);
    }
    for (i = 0; i < k; i++) {
        place(t->to, hashes[i], items[i]);
        atomic_store_explicit(&a->slots[where[i]], IDEM__TABLE_TOMB,
                              memory_order_release);
    }
}

static void finish_resize(struct idem__table *t)
{
    struct idem__table_array *old = head_of(t);

    atomic_store_explicit(&t->head, t->to, memory_order_release);
    atomic_store_explicit(&t->head_n, t->to->n, memory_order_relaxed);
    t->to = NULL;
    t->gen++;
    retire(t, old);
}

bool idem__table_step(struct idem__table *t, size_t budget)
{
    struct idem__table_array *a = head_of(t);
    size_t n;

    if (!t->to) {
        n = target_size(t);
        if (!n || !start_resize(t, n))
            return false;
    }
    while (budget > 0 && t->moved < a->n) {
        n = budget < STEP_SLOTS ? budget : STEP_SLOTS;
        n = n < a->n - t->moved ? n : a->n - t->moved;
        move_batch(t, a, t->moved, n);
        t->moved += n;
        budget -= n;
    }
    if (t->moved == a->n)
        finish_resize(t);
    return t->to != NULL;
}

int idem__table_reserve(struct idem__table *t)
{
    struct idem__table_array *a = head_of(t);

    if (t->to && t->to->used * 4 >= t->to->n * 3)
        idem__table_step(t, SIZE_MAX); /* never expected: finish it */
    if (!t->to && (a->used + 1) * 4 > a->n * 3)
        idem__table_step(t, STEP_SLOTS);
    a = insert_array(t);
    return a->used + 1 < a->n ? IDEM_OK : IDEM_ENOMEM;
}

size_t idem__table_insert_cost(const struct idem__table *t)
{
    const struct idem__table_array *a = head_of(t);
    size_t n = a->n;

    if (t->to || (a->used + 1) * 4 <= n * 3)
        return 0;
    return (t->count + 1) * 2 > n ? size_up(n) : n;
}

size_t idem__table_slots(const struct idem__table *t)
{
    return head_of(t)->n + (t->to ? t->to->n : 0);
}

/* Empty every slot of a, for clear when no smaller array can be had. */
static void wipe(struct idem__table_array *a)
{
    size_t i;

    for (i = 0; i < a->n; i++)
        atomic_store_explicit(&a->slots[i], IDEM__TABLE_EMPTY,
                              memory_order_release);
    a->used = 0;
}

void idem__table_clear(struct idem__table *t)
{
    struct idem__table_array *a = head_of(t), *fresh = NULL;

    if (t->to || a->n > IDEM__TABLE_MIN)
        fresh = array_new(&t->env, IDEM__TABLE_MIN);
    t->count = 0;
    t->gen++;
    if (!fresh) {
        wipe(a);
        if (t->to)
            wipe(t->to);
        return;
    }
    if (t->to)
        retire(t, t->to);
    t->to = NULL;
    atomic_store_explicit(&t->head, fresh, memory_order_release);
    atomic_store_explicit(&t->head_n, fresh->n, memory_order_relaxed);
    retire(t, a);
}

static int foreach_array(struct idem__table_array *a,
                         int (*fn)(void *item, void *ud), void *ud)
{
    uint64_t s;
    size_t i;
    int rc;

    for (i = 0; i < a->n; i++) {
        s = atomic_load_explicit(&a->slots[i], memory_order_relaxed);
        if (s > IDEM__TABLE_TOMB && (rc = fn(idem__table_item(s), ud)) != 0)
            return rc;
    }
    return 0;
}

int idem__table_foreach(const struct idem__table *t,
                        int (*fn)(void *item, void *ud), void *ud)
{
    int rc = foreach_array(head_of(t), fn, ud);

    if (rc == 0 && t->to)
        rc = foreach_array(t->to, fn, ud);
    return rc;
}

double idem__table_mean_miss(const struct idem__table *t)
{
    const struct idem__table_array *a = head_of(t);
    size_t i, k, run = 0, sum = 0, empty = a->n;

    for (i = 0; i < a->n; i++) /* an empty slot to start behind */
        if (atomic_load_explicit(&a->slots[i], memory_order_relaxed) ==
            IDEM__TABLE_EMPTY)
            empty = i;
    if (empty == a->n)
        return (double)a->n; /* never: an array keeps a free slot */
    /* backwards from there, each slot's distance to the next empty one */
    for (k = 1; k <= a->n; k++) {
        i = (empty + a->n - k) % a->n;
        if (atomic_load_explicit(&a->slots[i], memory_order_relaxed) ==
            IDEM__TABLE_EMPTY)
            run = 0;
        else
            run++;
        sum += run;
    }
    return (double)sum / (double)a->n;
}
