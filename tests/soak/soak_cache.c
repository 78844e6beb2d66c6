/* Leak proofs for cache, at scale N (argv[1], default 10,000; `make soak`
 * runs 100,000):
 * - the gcache reproduction: N times set(unique key, 1 MiB, 30 min) then
 *   remove; every index empty and resident growth under 8 MiB;
 * - sustained unique keys with TTL 1 s, 20 N keys from 2 threads on a fake
 *   clock: at every fake second expired entries awaiting reclaim stay few
 *   without any read, and after expiry and one tick size, bytes and every
 *   index are 0 and resident memory is back. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache_internal.h"
#include "helpers.h"
#include "idem/cache.h"

#define MIB (1u << 20)
#define RSS_BOUND (8u * MIB)
#define THREADS 2
#define KEYS_PER_MS 20 /* both threads together */
#define TTL_MS 1000
#define GARBAGE_BOUND 1024 /* expired, not yet reclaimed, at a checkpoint */

static long scale = 10000;

static void assert_all_empty(struct idem_cache *c)
{
    struct idem__cache_counts k;

    idem__cache_index_counts(c, &k);
    assert_int_equal(k.table, 0);
    assert_int_equal(k.timed, 0);
    assert_int_equal(k.bytes, 0);
    assert_int_equal(idem_cache_size(c), 0);
    assert_int_equal(idem_cache_bytes(c), 0);
}

static long long kib(size_t to, size_t from)
{
    return ((long long)to - (long long)from) / 1024;
}

/* -- The gcache reproduction ----------------------------------------- */

static void set_remove(struct idem_cache *c, const char *value, long from,
                       long to)
{
    char key[32];
    long i;

    for (i = from; i < to; i++) {
        int len = snprintf(key, sizeof(key), "seed-%ld", i);

        assert_int_equal(
            idem_cache_set(c, key, (size_t)len, value, MIB, 30 * 60 * 1000),
            IDEM_OK);
        assert_int_equal(idem_cache_remove(c, key, (size_t)len), IDEM_OK);
    }
}

static void test_seed_reproduction(void **state)
{
    struct idem_cache *c = NULL;
    struct idem_cache_stats st;
    char *value = malloc(MIB);
    long warm = scale / 100 + 1;
    size_t rss0, rss1;

    (void)state;
    assert_non_null(value);
    memset(value, 'v', MIB);
    assert_int_equal(idem_cache_new(NULL, &c), IDEM_OK);
    set_remove(c, value, 0, warm); /* let the allocator settle */
    rss0 = test_rss_after_trim();
    set_remove(c, value, warm, scale);
    rss1 = test_rss_after_trim();
    idem_cache_stats(c, &st);
    printf("seed_repro sets %llu removes %llu entries %llu "
           "rss_growth_kib %lld\n",
           (unsigned long long)st.sets, (unsigned long long)st.removes,
           (unsigned long long)st.entries, kib(rss1, rss0));
    assert_int_equal(st.sets, (uint64_t)scale);
    assert_int_equal(st.removes, (uint64_t)scale);
    assert_all_empty(c);
    if (test_rss_meaningful())
        assert_true(rss1 < rss0 + RSS_BOUND);
    idem_cache_free(c);
    free(value);
}

/* -- Sustained unique keys with TTL 1 s ------------------------------ */

struct sustained {
    struct idem_cache *c;
    struct test_env *te;
    pthread_barrier_t *barrier;
    atomic_long *sets; /* by both threads: every KEYS_PER_MS moves time */
    long seconds;
    int id;
    long errors;
    long max_garbage; /* thread 0: worst seen at a checkpoint */
};

static int count_live(const void *key, size_t klen, struct idem_cache_value *v,
                      void *ud)
{
    (void)key;
    (void)klen;
    (void)v;
    (*(size_t *)ud)++;
    return 0;
}

/* Entries still in the table whose time is up: the table's count less
 * the live ones, which foreach sees without reclaiming anything. */
static long garbage(struct idem_cache *c)
{
    struct idem_cache_stats st;
    size_t live = 0;

    idem_cache_stats(c, &st);
    if (idem_cache_foreach(c, count_live, &live) != IDEM_OK)
        return -1;
    return (long)st.entries - (long)live;
}

/* This thread's share of one fake second of keys. The clock follows the
 * sets of both threads, KEYS_PER_MS to a millisecond, so the keys' times
 * do not depend on how the threads are scheduled. */
static void one_second(struct sustained *w, long second)
{
    unsigned char value[64] = { 0 };
    char key[40];
    long i;

    for (i = 0; i < 1000 * KEYS_PER_MS / THREADS; i++) {
        int len =
            snprintf(key, sizeof(key), "sus-%d-%ld-%ld", w->id, second, i);

        if (idem_cache_set(w->c, key, (size_t)len, value, sizeof(value),
                           TTL_MS) != IDEM_OK)
            w->errors++;
        if (atomic_fetch_add(w->sets, 1) % KEYS_PER_MS == KEYS_PER_MS - 1)
            test_clock_advance(w->te, 1);
    }
}

static void *sustained_main(void *arg)
{
    struct sustained *w = arg;
    long s, g;

    for (s = 0; s < w->seconds; s++) {
        one_second(w, s);
        pthread_barrier_wait(w->barrier); /* both done with second s */
        if (w->id == 0) {
            g = garbage(w->c);
            if (g < 0)
                w->errors++;
            if (g > w->max_garbage)
                w->max_garbage = g;
        }
        pthread_barrier_wait(w->barrier);
    }
    return NULL;
}

static void run_sustained(struct idem_cache *c, struct test_env *te,
                          long seconds, long *max_garbage)
{
    struct sustained w[THREADS];
    pthread_barrier_t barrier;
    pthread_t th[THREADS];
    atomic_long sets = 0;
    int i;

    pthread_barrier_init(&barrier, NULL, THREADS);
    for (i = 0; i < THREADS; i++) {
        w[i] = (struct sustained){ .c = c,
                                   .te = te,
                                   .barrier = &barrier,
                                   .sets = &sets,
                                   .seconds = seconds,
                                   .id = i };
        assert_int_equal(pthread_create(&th[i], NULL, sustained_main, &w[i]),
                         0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].errors, 0);
    }
    pthread_barrier_destroy(&barrier);
    *max_garbage = w[0].max_garbage;
}

static void test_sustained_unique_keys_with_ttl(void **state)
{
    struct test_env te;
    struct idem_cache_opts o = { .env = &te.env };
    struct idem_cache *c = NULL;
    struct idem_cache_stats st;
    long seconds = scale * 20 / (KEYS_PER_MS * 1000), max_garbage;
    uint64_t keys = (uint64_t)seconds * KEYS_PER_MS * 1000;
    size_t rss0, rss1;

    (void)state;
    test_env_init(&te, 1000000);
    assert_int_equal(idem_cache_new(&o, &c), IDEM_OK);
    rss0 = test_rss_after_trim();
    run_sustained(c, &te, seconds, &max_garbage);
    test_clock_advance(&te, 2 * TTL_MS);
    idem_cache_tick(c); /* the timer a server runs */
    rss1 = test_rss_after_trim();
    idem_cache_stats(c, &st);
    printf("sustained keys %llu seconds %ld max_garbage %ld entries %llu "
           "expired %llu rss_growth_kib %lld\n",
           (unsigned long long)keys, seconds, max_garbage,
           (unsigned long long)st.entries, (unsigned long long)st.expired,
           kib(rss1, rss0));
    assert_true(max_garbage <= GARBAGE_BOUND);
    assert_int_equal(st.sets, keys);
    assert_int_equal(st.expired, keys);
    assert_all_empty(c);
    if (test_rss_meaningful())
        assert_true(rss1 < rss0 + RSS_BOUND);
    idem_cache_free(c);
    assert_int_equal(atomic_load(&te.live), 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_reproduction),
        cmocka_unit_test(test_sustained_unique_keys_with_ttl),
    };

    if (test_parse_count(argc, argv, &scale, 3000) != 0)
        return 2;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
