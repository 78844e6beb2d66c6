/* Leak proof for keylock: N distinct keys (argv[1], default 1,000,000),
 * each locked and unlocked once, from 2 threads. Afterwards the table is
 * empty, created == freed, its bytes are back to the empty size, and
 * resident memory grew by less than 4 MiB. `make soak` runs 10,000,000. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "helpers.h"
#include "idem/keylock.h"

#define THREADS 2
#define RSS_BOUND (4u << 20)

static long nkeys = 1000000;

struct worker {
    struct idem_keylock *t;
    int id;
    long from, to;
    long errors;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char key[40];
    long i;

    for (i = w->from; i < w->to; i++) {
        int len = snprintf(key, sizeof(key), "idem-%d-%ld", w->id, i);

        if (idem_keylock_lock(w->t, key, (size_t)len) != IDEM_OK ||
            idem_keylock_unlock(w->t, key, (size_t)len) != IDEM_OK)
            w->errors++;
    }
    return NULL;
}

/* Lock and unlock keys [from, to) of every thread's range. */
static void run_keys(struct idem_keylock *t, long from, long to)
{
    struct worker w[THREADS];
    pthread_t th[THREADS];
    int i;

    for (i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .t = t, .id = i, .from = from, .to = to };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].errors, 0);
    }
}

static void test_distinct_keys_leave_nothing(void **state)
{
    struct idem_keylock *t = NULL;
    struct idem_keylock_stats empty, st;
    long per_thread = nkeys / THREADS, warm = per_thread / 100;
    size_t rss0, rss1;

    (void)state;
    assert_int_equal(idem_keylock_new(NULL, &t), IDEM_OK);
    idem_keylock_stats(t, &empty);
    run_keys(t, 0, warm); /* let the threads' arenas and stacks settle */
    rss0 = test_rss_after_trim();
    run_keys(t, warm, per_thread);
    rss1 = test_rss_after_trim();
    idem_keylock_stats(t, &st);
    printf("keys %ld entries %llu created %llu freed %llu "
           "table_bytes %llu rss_growth_kib %lld\n",
           per_thread * THREADS, (unsigned long long)st.entries,
           (unsigned long long)st.created, (unsigned long long)st.freed,
           (unsigned long long)st.table_bytes,
           ((long long)rss1 - (long long)rss0) / 1024);
    assert_int_equal(idem_keylock_count(t), 0);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.created, (uint64_t)(per_thread * THREADS));
    assert_int_equal(st.freed, st.created);
    assert_int_equal(st.waiters, 0);
    assert_int_equal(st.table_bytes, empty.table_bytes);
    if (test_rss_meaningful())
        assert_true(rss1 < rss0 + RSS_BOUND);
    idem_keylock_free(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distinct_keys_leave_nothing),
    };

    if (test_parse_count(argc, argv, &nkeys, 200) != 0)
        return 2;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
