/* cache: the memory store's primitives, get_or_insert and replace_if
 * (every answer, pins, nothing changed on failure), and the lock-free get
 * beside writers that replace, remove, expire and resize (TSan: label
 * threads). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cache_helpers.h"

#define K(s) (s), (sizeof(s) - 1)

static void free_cache(struct idem_cache *c)
{
    idem_cache_free(c);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_get_or_insert(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_entries = 2 });
    struct idem_cache_value *v = NULL;
    int64_t left;

    (void)state;
    assert_int_equal(idem_cache_get_or_insert(c, K("k"), K("v"), 0, 0, NULL),
                     IDEM_EINVAL);
    assert_int_equal(
        idem_cache_get_or_insert(c, K("k"), K("v"), 0, IDEM_CACHE_NX, &v),
        IDEM_EINVAL);
    assert_int_equal(idem_cache_get_or_insert(c, K("k"), K("first"), 1000,
                                              IDEM_CACHE_PIN, &v),
                     IDEM_OK);
    assert_null(v); /* written only with IDEM_EEXIST */
    assert_int_equal(
        idem_cache_get_or_insert(c, K("k"), K("second"), 0, IDEM_CACHE_PIN, &v),
        IDEM_EEXIST);
    assert_memory_equal(idem_cache_value_data(v), "first", 5);
    idem_cache_value_release(v);
    assert_cache_value(c, "k", "first");
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_OK);
    assert_int_equal(left, 1000);
    assert_int_equal(stats_of(c).pinned, 1); /* the failed one added none */
    /* pinned: two more keys cannot evict it */
    assert_int_equal(idem_cache_set(c, K("a"), K("1"), 0), IDEM_OK);
    assert_int_equal(idem_cache_set(c, K("b"), K("2"), 0), IDEM_OK);
    assert_cache_value(c, "k", "first");
    /* an expired entry counts as absent */
    test_clock_advance(&te, 1000);
    v = NULL;
    assert_int_equal(idem_cache_get_or_insert(c, K("k"), K("third"), 0, 0, &v),
                     IDEM_OK);
    assert_null(v);
    assert_cache_value(c, "k", "third");
    free_cache(c);
}

static bool starts_with(const void *cur, size_t curlen, void *ud)
{
    const char *want = ud;

    return curlen >= strlen(want) && memcmp(cur, want, strlen(want)) == 0;
}

static bool never_called(const void *cur, size_t curlen, void *ud)
{
    (void)cur;
    (void)curlen;
    (void)ud;
    fail_msg("check called");
    return false;
}

static void test_replace_if(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_bytes = 1000 });
    char big[1000] = { 0 };
    int64_t left;

    (void)state;
    assert_int_equal(idem_cache_replace_if(c, K("k"), NULL, NULL, K("x"), 0, 0),
                     IDEM_EINVAL);
    assert_int_equal(
        idem_cache_replace_if(c, K("k"), never_called, NULL, K("x"), 0, 0),
        IDEM_ESTALE); /* absent: check is not asked */
    assert_int_equal(
        idem_cache_set_ex(c, K("k"), K("owner-1:pending"), 0, IDEM_CACHE_PIN),
        IDEM_OK);
    assert_int_equal(idem_cache_replace_if(c, K("k"), starts_with, "owner-2",
                                           K("owner-2:done"), 0, 0),
                     IDEM_ESTALE);
    assert_cache_value(c, "k", "owner-1:pending");
    /* too big: nothing changed */
    assert_int_equal(idem_cache_replace_if(c, K("k"), starts_with, "owner-1",
                                           big, sizeof(big), 0,
                                           IDEM_CACHE_UNPIN),
                     IDEM_E2BIG);
    assert_int_equal(stats_of(c).pinned, 1);
    /* replace and unpin in one step, with a new ttl */
    assert_int_equal(idem_cache_replace_if(c, K("k"), starts_with, "owner-1",
                                           K("owner-1:done"), 500,
                                           IDEM_CACHE_UNPIN),
                     IDEM_OK);
    assert_cache_value(c, "k", "owner-1:done");
    assert_int_equal(stats_of(c).pinned, 0);
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_OK);
    assert_int_equal(left, 500);
    /* no pin left to take off */
    assert_int_equal(idem_cache_replace_if(c, K("k"), starts_with, "owner-1",
                                           K("x"), 0, IDEM_CACHE_UNPIN),
                     IDEM_EPERM);
    assert_cache_value(c, "k", "owner-1:done");
    /* value NULL removes */
    assert_int_equal(
        idem_cache_replace_if(c, K("k"), starts_with, "owner-1", NULL, 0, 0, 0),
        IDEM_OK);
    assert_false(idem_cache_contains(c, K("k")));
    assert_int_equal(
        idem_cache_replace_if(c, K("k"), starts_with, "owner-1", NULL, 0, 0, 0),
        IDEM_ESTALE);
    assert_int_equal(counts_of(c).table, 0);
    free_cache(c);
}

/* A store full of pinned entries: replace_if that would need room answers
 * IDEM_EBUSY and changes nothing. */
static void test_replace_if_busy(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_bytes = 1000 });
    char v300[300] = { 'a' }, v700[700] = { 'b' };

    (void)state;
    assert_int_equal(
        idem_cache_set_ex(c, K("p"), v300, sizeof(v300), 0, IDEM_CACHE_PIN),
        IDEM_OK);
    assert_int_equal(
        idem_cache_set_ex(c, K("q"), v300, sizeof(v300), 0, IDEM_CACHE_PIN),
        IDEM_OK);
    assert_int_equal(idem_cache_replace_if(c, K("p"), starts_with, "a", v700,
                                           sizeof(v700), 0, 0),
                     IDEM_EBUSY);
    assert_int_equal(stats_of(c).entries, 2);
    assert_int_equal(stats_of(c).pinned, 2);
    free_cache(c);
}

/* -- The lock-free get beside writers -------------------------------- */

#define KEYS 512
#define ITERS 200000

struct churn {
    struct idem_cache *c;
    atomic_int stop;
    atomic_long bad;
    atomic_long hits;
};

/* Key k's value is k's byte repeated, 1..64 long. */
static void *reader_main(void *arg)
{
    struct churn *ch = arg;
    struct idem_cache_value *v;
    uint32_t k = 0;
    long hits = 0;

    while (!atomic_load(&ch->stop)) {
        k = (k * 1103515245u + 12345u) % KEYS;
        if (idem_cache_get(ch->c, &k, sizeof(k), &v) != IDEM_OK)
            continue;
        const unsigned char *p = idem_cache_value_data(v);
        size_t n = idem_cache_value_len(v), i;

        for (i = 0; i < n; i++)
            if (p[i] != (unsigned char)k)
                atomic_fetch_add(&ch->bad, 1);
        if (n == 0)
            atomic_fetch_add(&ch->bad, 1);
        idem_cache_value_release(v);
        hits++;
    }
    atomic_fetch_add(&ch->hits, hits);
    return NULL;
}

/* Sets with short TTLs, removes, and bursts that grow then empty the
 * table, so that gets meet every kind of change. */
static void writer_run(struct churn *ch)
{
    unsigned char val[64];
    uint64_t x = 88172645463325252u;
    long i;

    for (i = 0; i < ITERS; i++) {
        uint32_t k;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k = (uint32_t)(x % KEYS);
        memset(val, (int)k, sizeof(val));
        if (x >> 60 < 12)
            idem_cache_set(ch->c, &k, sizeof(k), val, 1 + (x >> 20) % 64,
                           (int64_t)((x >> 40) % 4));
        else
            idem_cache_remove(ch->c, &k, sizeof(k));
        if (i % 64 == 0)
            test_clock_advance(&te, 1);
        if (i % 50000 == 49999)
            idem_cache_clear(ch->c);
    }
}

static void test_lock_free_get_beside_writer(void **state)
{
    struct churn ch = { .stop = 0, .bad = 0, .hits = 0 };
    struct idem__cache_counts k;
    pthread_t th;

    (void)state;
    ch.c = new_cache((struct idem_cache_opts){ .shards = 2 });
    assert_int_equal(pthread_create(&th, NULL, reader_main, &ch), 0);
    writer_run(&ch);
    atomic_store(&ch.stop, 1);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&ch.bad), 0);
    idem_cache_clear(ch.c);
    idem_cache_tick(ch.c);
    k = counts_of(ch.c);
    assert_int_equal(k.table, 0);
    assert_int_equal(k.timed, 0);
    assert_int_equal(k.limbo, 0);
    assert_int_equal(k.buckets, 2 * IDEM__CACHE_MIN_BUCKETS);
    assert_true(stats_of(ch.c).hits >= (uint64_t)atomic_load(&ch.hits));
    free_cache(ch.c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_or_insert),
        cmocka_unit_test(test_replace_if),
        cmocka_unit_test(test_replace_if_busy),
        cmocka_unit_test(test_lock_free_get_beside_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
