/* table (src/table.c): inserts, finds, replaces and removes against a
 * model; resizes that grow, shrink and rebuild a step at a time with every
 * item findable between steps; a full array refusing when it cannot grow;
 * clear; and a reader probing with no lock while a writer churns and
 * resizes (TSan: label threads). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "hash.h"
#include "helpers.h"
#include "idem/status.h"
#include "table.h"

#define N 5000

struct item {
    uint64_t key;
    uint64_t value;
};

static struct item items[N];
static struct test_env te;

static uint64_t item_hash(const void *item, void *ud)
{
    (void)ud;
    return idem__hash(&((const struct item *)item)->key, 8, 42);
}

static bool item_eq(const void *item, const void *key)
{
    return ((const struct item *)item)->key == *(const uint64_t *)key;
}

static uint64_t key_hash(uint64_t k)
{
    return idem__hash(&k, 8, 42);
}

static void new_table(struct idem__table *t)
{
    struct idem__table_ops ops = { .hash = item_hash };
    size_t i;

    test_env_init(&te, 0);
    for (i = 0; i < N; i++)
        items[i] = (struct item){ .key = i * 7919u + 1, .value = i };
    assert_int_equal(idem__table_init(t, &te.env, &ops), IDEM_OK);
}

static struct item *find(struct idem__table *t, uint64_t k)
{
    return idem__table_find(t, key_hash(k), item_eq, &k);
}

static void add(struct idem__table *t, struct item *it)
{
    assert_int_equal(idem__table_reserve(t), IDEM_OK);
    idem__table_insert(t, key_hash(it->key), it);
    idem__table_step(t, 16);
}

static void del(struct idem__table *t, uint64_t k)
{
    struct idem__table_pos pos;

    assert_non_null(idem__table_find_pos(t, key_hash(k), item_eq, &k, &pos));
    idem__table_remove(t, pos);
    idem__table_step(t, 16);
}

/* Run resizes until none is due. */
static void settle(struct idem__table *t)
{
    int i;

    for (i = 0; i < 10000; i++)
        idem__table_step(t, 16);
}

static int count_cb(void *item, void *ud)
{
    (void)item;
    (*(size_t *)ud)++;
    return 0;
}

static size_t walk_count(struct idem__table *t)
{
    size_t n = 0;

    idem__table_foreach(t, count_cb, &n);
    return n;
}

static void test_insert_find_remove(void **state)
{
    struct idem__table t;
    struct idem__table_pos pos;
    struct item other = { .key = 1, .value = 99 };
    size_t i;

    (void)state;
    new_table(&t);
    for (i = 0; i < N; i++) {
        add(&t, &items[i]);
        assert_ptr_equal(find(&t, items[i].key), &items[i]);
        if (i % 97 == 0) /* every earlier item, mid-resize included */
            for (size_t j = 0; j <= i; j++)
                assert_ptr_equal(find(&t, items[j].key), &items[j]);
    }
    assert_int_equal(t.count, N);
    assert_int_equal(walk_count(&t), N);
    assert_true(idem__table_slots(&t) >= N * 4 / 3);
    assert_null(find(&t, 0));
    /* replace keeps the slot and the tag */
    assert_ptr_equal(
        idem__table_find_pos(&t, key_hash(1), item_eq, &(uint64_t){ 1 }, &pos),
        &items[0]);
    idem__table_replace(&t, pos, &other);
    assert_ptr_equal(find(&t, 1), &other);
    for (i = 0; i < N; i++) {
        del(&t, items[i].key);
        assert_null(find(&t, items[i].key));
        if (i % 101 == 0)
            for (size_t j = i + 1; j < N; j++)
                assert_ptr_equal(find(&t, items[j].key), &items[j]);
    }
    settle(&t);
    assert_int_equal(t.count, 0);
    assert_int_equal(idem__table_slots(&t), IDEM__TABLE_MIN);
    idem__table_deinit(&t);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* Churn at a constant size: tombstones make the table rebuild in place
 * instead of growing without end. */
static void test_tombstones_rebuild(void **state)
{
    struct idem__table t;
    size_t i, most = 0;

    (void)state;
    new_table(&t);
    for (i = 0; i < 100000; i++) {
        struct item *it = &items[i % N];

        if (i >= 100)
            del(&t, items[(i - 100) % N].key);
        add(&t, it);
        if (idem__table_slots(&t) > most)
            most = idem__table_slots(&t);
    }
    assert_int_equal(t.count, 100);
    assert_true(most <= 1024);
    idem__table_deinit(&t);
}

static void test_full_array_refuses(void **state)
{
    struct idem__table t;
    size_t i;

    (void)state;
    new_table(&t);
    for (i = 0; i < IDEM__TABLE_MIN - 1; i++) {
        test_env_fail_in(&te, 0); /* no larger array, ever */
        assert_int_equal(idem__table_reserve(&t), IDEM_OK);
        idem__table_insert(&t, key_hash(items[i].key), &items[i]);
    }
    test_env_fail_in(&te, 0);
    assert_int_equal(idem__table_reserve(&t), IDEM_ENOMEM);
    for (i = 0; i < IDEM__TABLE_MIN - 1; i++)
        assert_ptr_equal(find(&t, items[i].key), &items[i]);
    test_env_fail_never(&te);
    assert_int_equal(idem__table_reserve(&t), IDEM_OK);
    settle(&t);
    assert_true(idem__table_slots(&t) > IDEM__TABLE_MIN);
    for (i = 0; i < IDEM__TABLE_MIN - 1; i++)
        assert_ptr_equal(find(&t, items[i].key), &items[i]);
    idem__table_deinit(&t);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_clear(void **state)
{
    struct idem__table t;
    size_t i;

    (void)state;
    new_table(&t);
    for (i = 0; i < 1000; i++)
        add(&t, &items[i]);
    idem__table_clear(&t);
    assert_int_equal(t.count, 0);
    assert_int_equal(walk_count(&t), 0);
    assert_int_equal(idem__table_slots(&t), IDEM__TABLE_MIN);
    assert_null(find(&t, items[5].key));
    add(&t, &items[5]);
    assert_ptr_equal(find(&t, items[5].key), &items[5]);
    idem__table_deinit(&t);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* -- A reader with no lock beside a writer --------------------------- */

#define STABLE 200 /* items 0..STABLE-1 stay in all along */

struct race {
    struct idem__table t;
    pthread_mutex_t mu; /* the writers' lock */
    struct idem__list retired;
    atomic_int stop;
    atomic_long lost;
};

/* Retired arrays wait until the test ends: the reader may be in them. */
static void keep_retired(struct idem__table_array *a, void *ud)
{
    struct race *r = ud;

    idem__list_push_back(&r->retired, &a->retired);
}

static void *reader_main(void *arg)
{
    struct race *r = arg;
    size_t i = 0;

    while (!atomic_load(&r->stop)) {
        if (find(&r->t, items[i].key) != &items[i])
            atomic_fetch_add(&r->lost, 1);
        i = (i + 1) % STABLE;
    }
    return NULL;
}

static void churn(struct race *r)
{
    size_t round, i;

    for (round = 0; round < 20; round++) {
        for (i = STABLE; i < N; i++) {
            pthread_mutex_lock(&r->mu);
            add(&r->t, &items[i]);
            pthread_mutex_unlock(&r->mu);
        }
        for (i = STABLE; i < N; i++) {
            pthread_mutex_lock(&r->mu);
            del(&r->t, items[i].key);
            pthread_mutex_unlock(&r->mu);
        }
    }
}

static void test_reader_beside_resizing_writer(void **state)
{
    struct race r = { .stop = 0, .lost = 0 };
    struct idem__table_ops ops = { .hash = item_hash,
                                   .retire = keep_retired,
                                   .ud = &r };
    struct idem__list *n, *tmp;
    pthread_t th;
    size_t i;

    (void)state;
    new_table(&r.t);
    r.t.ops = ops;
    idem__list_init(&r.retired);
    pthread_mutex_init(&r.mu, NULL);
    for (i = 0; i < STABLE; i++)
        add(&r.t, &items[i]);
    assert_int_equal(pthread_create(&th, NULL, reader_main, &r), 0);
    churn(&r);
    atomic_store(&r.stop, 1);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&r.lost), 0);
    assert_false(idem__list_empty(&r.retired)); /* it did resize */
    idem__list_foreach_safe(n, tmp, &r.retired)
    {
        idem__list_remove(n);
        idem__table_array_free(
            &te.env, idem__list_entry(n, struct idem__table_array, retired));
    }
    idem__table_deinit(&r.t);
    pthread_mutex_destroy(&r.mu);
    assert_int_equal(atomic_load(&te.live), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_find_remove),
        cmocka_unit_test(test_tombstones_rebuild),
        cmocka_unit_test(test_full_array_refuses),
        cmocka_unit_test(test_clear),
        cmocka_unit_test(test_reader_beside_resizing_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
