/* Leak proof for the engine over the memory store: N distinct keys
 * (argv[1], default 100,000) with a short lifetime, two thirds completed,
 * one third abandoned (freed in flight: "outcome unknown" records, held
 * for the lifetime). After the lifetime passes the store holds 0 records,
 * 0 bytes, 0 lock entries, the engine 0 calls in flight, and resident
 * memory is back near where it started.
 * `make soak` runs 10,000,000. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "engine_helpers.h"

#define RSS_BOUND (8u << 20)

static long nkeys = 100000;
static struct test_env te;

static void run_keys(struct idem_engine *e, long from, long to)
{
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    char key[32];
    long i;

    for (i = from; i < to; i++) {
        snprintf(key, sizeof(key), "key-%ld", i);
        treq_init(&t, "POST", "/orders", key, "Bearer soak", "{\"n\":1}");
        assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
        if (i % 3)
            assert_int_equal(complete_with(call, 201, "{\"id\":1}", NULL),
                             IDEM_OK);
        else
            idem_call_free(call);
        if (i % 256 == 0) { /* time moves; the store reclaims as it goes */
            test_clock_advance(&te, 1);
            idem_engine_tick(e);
        }
    }
}

static void test_distinct_keys_leave_nothing(void **state)
{
    struct idem_engine_opts o = { .lifetime_ms = 500, .lease_ms = 500 };
    struct idem_engine *e = NULL;
    struct idem_engine_stats es;
    struct idem_store_stats ss;
    long warm = nkeys / 100;
    size_t rss0, rss1;

    (void)state;
    test_env_init(&te, 1000);
    o.env = &te.env;
    assert_int_equal(idem_engine_new(&o, &e), IDEM_OK);
    run_keys(e, 0, warm);
    rss0 = test_rss_after_trim();
    run_keys(e, warm, nkeys);
    test_clock_advance(&te, 500);
    idem_engine_tick(e);
    rss1 = test_rss_after_trim();
    idem_engine_stats(e, &es);
    idem_store_stats(idem_engine_store(e), &ss);
    printf("keys %ld stored %llu records %llu bytes %llu lock_entries %llu "
           "evicted %llu rss_growth_kib %lld\n",
           nkeys, (unsigned long long)es.stored, (unsigned long long)ss.records,
           (unsigned long long)ss.bytes, (unsigned long long)ss.lock_entries,
           (unsigned long long)ss.evicted,
           ((long long)rss1 - (long long)rss0) / 1024);
    assert_int_equal(ss.records, 0);
    assert_int_equal(ss.bytes, 0);
    assert_int_equal(ss.in_flight, 0);
    assert_int_equal(ss.lock_entries, 0);
    assert_int_equal(ss.evicted, 0); /* sized so that expiry keeps up */
    assert_int_equal(es.in_flight, 0);
    assert_int_equal(es.stored, (uint64_t)(nkeys - (nkeys + 2) / 3));
    if (test_rss_meaningful())
        assert_true(rss1 < rss0 + RSS_BOUND);
    idem_engine_free(e);
    assert_int_equal(atomic_load(&te.live), 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distinct_keys_leave_nothing),
    };

    if (test_parse_count(argc, argv, &nkeys, 100) != 0)
        return 2;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
