/* The memory store under the engine: eviction takes completed records
 * only, and snapshots survive a restart but never a damaged file. */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine_helpers.h"

static struct test_env te;
static char snap_path[64];

static int make_path(void **state)
{
    (void)state;
    snprintf(snap_path, sizeof(snap_path), "/tmp/idem-snap-%d", (int)getpid());
    return 0;
}

static int remove_path(void **state)
{
    (void)state;
    unlink(snap_path);
    return 0;
}

/* An engine over its own memory store, both on the fake clock. */
static struct idem_engine *engine_over(size_t max_memory,
                                       struct idem_store **store_out)
{
    struct idem_store_memory_opts mo = { .max_memory = max_memory,
                                         .shards = 1,
                                         .env = &te.env };
    struct idem_engine_opts o = { .env = &te.env };
    struct idem_engine *e = NULL;

    assert_int_equal(idem_store_memory_new(&mo, store_out), IDEM_OK);
    o.store = *store_out;
    assert_int_equal(idem_engine_new(&o, &e), IDEM_OK);
    return e;
}

static void finish(struct idem_engine *e, struct idem_store *s)
{
    idem_engine_free(e);
    idem_store_free(s);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* Run key through the engine: the outcome; PROCEED completes with body. */
static enum idem_outcome put(struct idem_engine *e, const char *key,
                             const char *body)
{
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    enum idem_outcome o;

    treq_init(&t, "POST", "/o", key, NULL, "{}");
    o = run_call(e, &t, &call, &d);
    if (o == IDEM_OUTCOME_PROCEED)
        assert_int_equal(complete_with(call, 201, body, NULL), IDEM_OK);
    else
        idem_call_free(call);
    return o;
}

static void test_eviction_spares_in_flight(void **state)
{
    struct idem_store *s;
    struct idem_engine *e;
    struct idem_store_stats st;
    struct idem_decision d;
    struct idem_call *held[8];
    struct treq t[8];
    char hkey[8][16], key[16], body[512];
    int i;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_over(64 * 1024, &s);
    memset(body, 'b', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    for (i = 0; i < 8; i++) { /* in flight, pinned */
        snprintf(hkey[i], sizeof(hkey[i]), "held-%d", i);
        treq_init(&t[i], "POST", "/o", hkey[i], NULL, "{}");
        assert_int_equal(run_call(e, &t[i], &held[i], &d),
                         IDEM_OUTCOME_PROCEED);
    }
    for (i = 0; i < 1000; i++) { /* far more than 64 KiB of responses */
        snprintf(key, sizeof(key), "done-%d", i);
        assert_int_equal(put(e, key, body), IDEM_OUTCOME_PROCEED);
        idem_store_stats(s, &st);
        assert_true(st.bytes <= 64 * 1024);
    }
    idem_store_stats(s, &st);
    assert_true(st.evicted > 0);
    assert_int_equal(st.in_flight, 8);
    for (i = 0; i < 8; i++) /* every held key is still in flight */
        assert_int_equal(outcome_of(e, &t[i]), IDEM_OUTCOME_CONFLICT);
    assert_int_equal(put(e, "done-999", body), IDEM_OUTCOME_REPLAY);
    for (i = 0; i < 8; i++)
        assert_int_equal(complete_with(held[i], 201, "ok", NULL), IDEM_OK);
    finish(e, s);
}

/* A response whose record is larger than the store can hold is kept as
 * status and headers: the request ran, and room never releases its key. */
static void test_no_room_keeps_status_and_headers(void **state)
{
    struct idem_store_memory_opts mo = { .max_memory = 64 * 1024,
                                         .shards = 1,
                                         .env = &te.env };
    struct idem_engine_opts o = { .env = &te.env, .max_stored_body = 1u << 20 };
    struct idem_engine_stats es;
    struct idem_engine *e;
    struct idem_store *s;
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    char *body = malloc(100 * 1024);

    (void)state;
    test_env_init(&te, 1000);
    assert_non_null(body);
    memset(body, 'b', 100 * 1024 - 1);
    body[100 * 1024 - 1] = '\0';
    assert_int_equal(idem_store_memory_new(&mo, &s), IDEM_OK);
    assert_true(idem_store_max_record(s) < 100 * 1024);
    o.store = s;
    assert_int_equal(idem_engine_new(&o, &e), IDEM_OK);
    assert_int_equal(put(e, "big", body), IDEM_OUTCOME_PROCEED);
    treq_init(&t, "POST", "/o", "big", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    assert_true(d.body_omitted);
    assert_int_equal(d.replay.status, 201);
    assert_int_equal(d.replay.body_len, 0);
    idem_call_free(call);
    idem_engine_stats(e, &es);
    assert_int_equal(es.body_omitted, 1);
    assert_int_equal(es.stored, 1);
    free(body);
    finish(e, s);
}

/* A completion the store cannot take leaves the key in flight; when its
 * lease ends, the outcome is unknown: never a second run. */
static void test_failed_completion_holds_the_key(void **state)
{
    struct idem_store *s;
    struct idem_engine *e;
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_over(0, &s);
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    test_env_fail_in(&te, 0);
    assert_int_equal(complete_with(call, 201, "ok", NULL), IDEM_ENOMEM);
    test_env_fail_never(&te);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_CONFLICT);
    test_clock_advance(&te, 60 * 1000); /* the default lease */
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_UNKNOWN);
    finish(e, s);
}

/* A snapshot too large for the store loads nothing, and says how much. */
static void test_snapshot_that_does_not_fit_loads_nothing(void **state)
{
    struct idem_snapshot_stats ss;
    struct idem_store_stats st;
    struct idem_store *s;
    struct idem_engine *e;
    char key[16], body[4096];
    int i;

    (void)state;
    test_env_init(&te, 1000);
    memset(body, 'b', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    e = engine_over(0, &s);
    for (i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "k-%d", i);
        assert_int_equal(put(e, key, body), IDEM_OUTCOME_PROCEED);
    }
    assert_int_equal(idem_store_memory_save(s, snap_path, &ss), IDEM_OK);
    assert_int_equal(ss.saved, 40);
    finish(e, s);

    e = engine_over(64 * 1024, &s); /* room for about 15 */
    assert_int_equal(idem_store_memory_load(s, snap_path, &ss), IDEM_E2BIG);
    assert_int_equal(ss.loaded, 0);
    assert_int_equal(ss.refused, 40);
    idem_store_stats(s, &st);
    assert_int_equal(st.records, 0);
    assert_int_equal(put(e, "k-0", "x"), IDEM_OUTCOME_PROCEED);
    finish(e, s);
}

/* An engine over a 64 KiB, one-shard memory store keeping records at
 * least min_retention_ms. */
static struct idem_engine *engine_retaining(int64_t min_retention_ms,
                                            struct idem_store **store_out)
{
    struct idem_store_memory_opts mo = { .max_memory = 64 * 1024,
                                         .shards = 1,
                                         .min_retention_ms = min_retention_ms,
                                         .env = &te.env };
    struct idem_engine_opts o = { .env = &te.env };
    struct idem_engine *e = NULL;

    assert_int_equal(idem_store_memory_new(&mo, store_out), IDEM_OK);
    o.store = *store_out;
    assert_int_equal(idem_engine_new(&o, &e), IDEM_OK);
    return e;
}

/* Put keys "k-0", "k-1", ... with a 1 KiB body until one is not PROCEED
 * (or max keys): how many proceeded. */
static int fill(struct idem_engine *e, int max, enum idem_outcome *last)
{
    char key[16], body[1024];
    int i;

    memset(body, 'b', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    for (i = 0; i < max; i++) {
        snprintf(key, sizeof(key), "k-%d", i);
        if ((*last = put(e, key, body)) != IDEM_OUTCOME_PROCEED)
            break;
    }
    return i;
}

/* Full of records younger than the minimum: a new key is refused (FULL,
 * with Retry-After) and no record is forgotten. Once they age past it,
 * eviction takes them again, counted by age. */
static void test_min_retention_refuses_when_full(void **state)
{
    struct idem_engine_stats es;
    struct idem_store_stats st;
    struct idem_decision d;
    struct idem_call *call;
    struct idem_store *s;
    struct idem_engine *e;
    enum idem_outcome last;
    struct treq t;
    int n;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_retaining(10 * 60000, &s);
    n = fill(e, 1000, &last);
    assert_int_equal(last, IDEM_OUTCOME_FULL);
    assert_true(n > 10);
    treq_init(&t, "POST", "/o", "another", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_FULL);
    assert_int_equal(d.status, 503);
    assert_true(d.retry_after_s > 0);
    idem_call_free(call);
    idem_store_stats(s, &st);
    assert_int_equal(st.evicted, 0);
    assert_int_equal(st.records, (uint64_t)n);
    assert_int_equal(st.youngest_evicted_ms, UINT64_MAX);
    assert_int_equal(put(e, "k-0", "x"), IDEM_OUTCOME_REPLAY); /* kept */
    idem_engine_stats(e, &es);
    assert_int_equal(es.outcomes[IDEM_OUTCOME_FULL], 2);
    test_clock_advance(&te, 10 * 60000); /* now old enough to go */
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PROCEED);
    idem_store_stats(s, &st);
    assert_true(st.evicted > 0);
    assert_int_equal(st.evicted_by_age[2], st.evicted); /* 10 min .. 1 h */
    assert_true(st.youngest_evicted_ms >= 10 * 60000);
    finish(e, s);
}

/* Without a minimum (--when-full evict), young records go, counted. */
static void test_no_min_retention_evicts_young(void **state)
{
    struct idem_store_stats st;
    struct idem_store *s;
    struct idem_engine *e;
    enum idem_outcome last;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_retaining(0, &s);
    assert_int_equal(fill(e, 200, &last), 200);
    idem_store_stats(s, &st);
    assert_true(st.evicted > 0);
    assert_int_equal(st.evicted_by_age[0], st.evicted); /* under 1 min */
    assert_true(st.youngest_evicted_ms < 60000);
    finish(e, s);
}

/* -- Atomicity without a per-key lock ------------------------------------ */

#define RACE_THREADS 4
#define RACE_KEYS 2000

struct race {
    struct idem_engine *e;
    atomic_int proceeded[RACE_KEYS];
};

/* Every thread runs every key: exactly one of them may proceed on each. */
static void *race_run(void *arg)
{
    struct race *r = arg;
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    char key[16];
    int i;

    for (i = 0; i < RACE_KEYS; i++) {
        snprintf(key, sizeof(key), "r-%d", i);
        treq_init(&t, "POST", "/o", key, NULL, "{}");
        if (run_call(r->e, &t, &call, &d) == IDEM_OUTCOME_PROCEED) {
            atomic_fetch_add(&r->proceeded[i], 1);
            complete_with(call, 201, "ok", NULL);
        } else {
            idem_call_free(call);
        }
    }
    return NULL;
}

static void test_one_proceeds_under_races(void **state)
{
    static struct race r;
    pthread_t th[RACE_THREADS];
    struct idem_store *s;
    int i;

    (void)state;
    test_env_init(&te, 1000);
    r.e = engine_over(0, &s);
    for (i = 0; i < RACE_KEYS; i++)
        atomic_init(&r.proceeded[i], 0);
    for (i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_run, &r), 0);
    for (i = 0; i < RACE_THREADS; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < RACE_KEYS; i++)
        assert_int_equal(atomic_load(&r.proceeded[i]), 1);
    finish(r.e, s);
}

static void test_snapshot_round_trip(void **state)
{
    struct idem_snapshot_stats ss;
    struct idem_store *s;
    struct idem_engine *e;
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_over(0, &s);
    assert_int_equal(put(e, "a", "alpha"), IDEM_OUTCOME_PROCEED);
    assert_int_equal(put(e, "b", "beta"), IDEM_OUTCOME_PROCEED);
    treq_init(&t, "POST", "/o", "flying", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_store_memory_save(s, snap_path, &ss), IDEM_OK);
    assert_int_equal(ss.saved, 2); /* in-flight records are not saved */
    idem_call_free(call);
    finish(e, s);

    test_env_init(&te, 5000); /* a new process, later */
    e = engine_over(0, &s);
    assert_int_equal(idem_store_memory_load(s, snap_path, &ss), IDEM_OK);
    assert_int_equal(ss.loaded, 2);
    assert_int_equal(ss.expired, 0);
    treq_init(&t, "POST", "/o", "b", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    assert_memory_equal(d.replay.body, "beta", 4);
    idem_call_free(call);
    assert_int_equal(put(e, "flying", "x"), IDEM_OUTCOME_PROCEED);
    finish(e, s);
}

static void test_snapshot_skips_expired(void **state)
{
    struct idem_snapshot_stats ss;
    struct idem_store *s;
    struct idem_engine *e;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_over(0, &s);
    assert_int_equal(put(e, "a", "alpha"), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_store_memory_save(s, snap_path, NULL), IDEM_OK);
    finish(e, s);
    test_env_init(&te, 1000 + 24 * 3600 * 1000); /* a day later */
    e = engine_over(0, &s);
    assert_int_equal(idem_store_memory_load(s, snap_path, &ss), IDEM_OK);
    assert_int_equal(ss.loaded, 0);
    assert_int_equal(ss.expired, 1);
    assert_int_equal(put(e, "a", "again"), IDEM_OUTCOME_PROCEED);
    finish(e, s);
}

static long file_size(const char *path)
{
    FILE *f = fopen(path, "rb");
    long n;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fclose(f);
    return n;
}

/* Change byte off of the snapshot, or cut it to off bytes. */
static void damage(long off, bool cut)
{
    FILE *f;
    int c;

    if (cut) {
        assert_int_equal(truncate(snap_path, off), 0);
        return;
    }
    f = fopen(snap_path, "r+b");
    assert_non_null(f);
    fseek(f, off, SEEK_SET);
    c = fgetc(f);
    fseek(f, off, SEEK_SET);
    fputc(c ^ 0x20, f);
    fclose(f);
}

static void test_damaged_snapshot_loads_nothing(void **state)
{
    struct idem_snapshot_stats ss;
    struct idem_store *s;
    struct idem_engine *e;
    long size, off;
    int i;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_over(0, &s);
    assert_int_equal(put(e, "a", "alpha"), IDEM_OUTCOME_PROCEED);
    assert_int_equal(put(e, "b", "beta"), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_store_memory_save(s, snap_path, NULL), IDEM_OK);
    finish(e, s);
    size = file_size(snap_path);
    for (i = 0; i < 2; i++) {
        for (off = 0; off < size; off += 7) {
            test_env_init(&te, 1000);
            e = engine_over(0, &s);
            assert_int_equal(idem_store_memory_save(s, snap_path, NULL),
                             IDEM_OK); /* an empty one, then refill */
            finish(e, s);
            e = engine_over(0, &s);
            put(e, "a", "alpha");
            put(e, "b", "beta");
            assert_int_equal(idem_store_memory_save(s, snap_path, NULL),
                             IDEM_OK);
            finish(e, s);
            damage(off, i == 1);
            e = engine_over(0, &s);
            assert_int_equal(idem_store_memory_load(s, snap_path, &ss),
                             IDEM_EIO);
            assert_int_equal(ss.loaded, 0);
            assert_int_equal(put(e, "a", "new"), IDEM_OUTCOME_PROCEED);
            finish(e, s);
        }
    }
}

static void test_snapshot_errors(void **state)
{
    struct idem_store *s;
    struct idem_engine *e;

    (void)state;
    test_env_init(&te, 1000);
    e = engine_over(0, &s);
    assert_int_equal(idem_store_memory_load(s, "/nonexistent/idem.snap", NULL),
                     IDEM_ENOTFOUND);
    assert_int_equal(idem_store_memory_save(s, "/nonexistent/idem.snap", NULL),
                     IDEM_EIO);
    assert_int_equal(idem_store_memory_save(NULL, snap_path, NULL),
                     IDEM_EINVAL);
    assert_int_equal(idem_store_memory_load(s, NULL, NULL), IDEM_EINVAL);
    finish(e, s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eviction_spares_in_flight),
        cmocka_unit_test(test_no_room_keeps_status_and_headers),
        cmocka_unit_test(test_failed_completion_holds_the_key),
        cmocka_unit_test(test_min_retention_refuses_when_full),
        cmocka_unit_test(test_one_proceeds_under_races),
        cmocka_unit_test(test_no_min_retention_evicts_young),
        cmocka_unit_test_setup_teardown(
            test_snapshot_that_does_not_fit_loads_nothing, make_path,
            remove_path),
        cmocka_unit_test_setup_teardown(test_snapshot_round_trip, make_path,
                                        remove_path),
        cmocka_unit_test_setup_teardown(test_snapshot_skips_expired, make_path,
                                        remove_path),
        cmocka_unit_test_setup_teardown(test_damaged_snapshot_loads_nothing,
                                        make_path, remove_path),
        cmocka_unit_test_setup_teardown(test_snapshot_errors, make_path,
                                        remove_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
