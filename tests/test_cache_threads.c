/* cache across threads, fake clock: get_or_compute runs fn once per key,
 * values stay intact while writers replace, remove and expire them under
 * readers, re-sets racing expiry lose no key, bounds hold, and foreach
 * runs beside writers; more reading threads than epoch slots read under
 * the lock and give their slots back at exit. Asserts by counters, never by
 * timing. Run under TSan by `make tsan`. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cache_helpers.h"

#define THREADS 2

/* The table (walked) and the stats (counted) agree. */
static void assert_consistent(struct idem_cache *c)
{
    struct idem__cache_counts k = counts_of(c);
    struct idem_cache_stats st = stats_of(c);

    assert_int_equal(k.table, st.entries);
    assert_true(k.timed <= st.entries);
    assert_int_equal(k.bytes, st.bytes);
}

static void run_threads(void *(*fn)(void *), void *arg[THREADS])
{
    pthread_t th[THREADS];
    int i;

    for (i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, fn, arg[i]), 0);
    for (i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
}

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* -- get_or_compute: one fn call per key ----------------------------- */

#define FLIGHT_KEYS 200

struct flight {
    struct idem_cache *c;
    atomic_int calls;
    atomic_int errors;
};

static uint64_t flight_waiters(struct idem_cache *c)
{
    struct idem_keylock_stats ks;

    idem_keylock_stats(c->flights, &ks);
    return ks.waiters;
}

/* Holds the key until the other thread waits for it, so every key is
 * really asked for twice at once. The value is the key. */
static int flight_fn(const void *key, size_t klen, struct idem_cache_buf *out,
                     void *ud)
{
    struct flight *f = ud;
    long spins;

    atomic_fetch_add(&f->calls, 1);
    for (spins = 0; flight_waiters(f->c) == 0; spins++) {
        if (spins > 100000000L) {
            atomic_fetch_add(&f->errors, 1);
            break;
        }
        sched_yield();
    }
    return idem_cache_buf_append(out, key, klen);
}

static void *flight_main(void *arg)
{
    struct flight *f = arg;
    struct idem_cache_value *v;
    char key[16];
    int i;

    for (i = 0; i < FLIGHT_KEYS; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);

        if (idem_cache_get_or_compute(f->c, key, (size_t)len, flight_fn, f, 0,
                                      &v) != IDEM_OK) {
            atomic_fetch_add(&f->errors, 1);
            continue;
        }
        if (idem_cache_value_len(v) != (size_t)len ||
            memcmp(idem_cache_value_data(v), key, (size_t)len) != 0)
            atomic_fetch_add(&f->errors, 1);
        idem_cache_value_release(v);
    }
    return NULL;
}

static void test_get_or_compute_runs_fn_once(void **state)
{
    struct flight f = { 0 };
    void *args[THREADS] = { &f, &f };
    struct idem_cache_stats st;
    struct idem_keylock_stats ks;

    (void)state;
    f.c = new_cache((struct idem_cache_opts){ 0 });
    run_threads(flight_main, args);
    assert_int_equal(atomic_load(&f.errors), 0);
    assert_int_equal(atomic_load(&f.calls), FLIGHT_KEYS);
    idem_cache_stats(f.c, &st);
    assert_int_equal(st.computes, FLIGHT_KEYS);
    assert_int_equal(st.entries, FLIGHT_KEYS);
    assert_int_equal(st.misses, 2 * FLIGHT_KEYS); /* both asked first */
    idem_keylock_stats(f.c->flights, &ks);
    assert_int_equal(ks.entries, 0); /* the locks freed themselves */
    assert_int_equal(ks.handoffs, FLIGHT_KEYS);
    idem_cache_free(f.c);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* -- Values intact under writers ------------------------------------- */

#define SHARED_KEYS 64
#define HELD 8

struct mixed {
    struct idem_cache *c;
    uint64_t seed;
    int iters;
    atomic_int *errors;
    struct idem_cache_value *held[HELD]; /* kept a while, and past the run */
    int held_key[HELD];
};

/* Key k's values are k's byte repeated, of varying length. */
static int write_one(struct mixed *m, uint64_t r)
{
    unsigned char val[80];
    int k = (int)(r % SHARED_KEYS), rc;
    size_t vlen = 1 + (size_t)(r >> 8) % sizeof(val);

    memset(val, k, vlen);
    switch ((r >> 16) % 5) {
    case 0:
        rc = idem_cache_set(m->c, &k, sizeof(k), val, vlen, (r >> 24) % 4);
        return rc == IDEM_OK || rc == IDEM_EBUSY ? IDEM_OK : rc;
    case 1:
        rc = idem_cache_remove(m->c, &k, sizeof(k));
        return rc == IDEM_ENOTFOUND ? IDEM_OK : rc;
    case 2:
        rc = idem_cache_update(m->c, &k, sizeof(k), val, vlen);
        return rc == IDEM_ENOTFOUND || rc == IDEM_EBUSY ? IDEM_OK : rc;
    case 3:
        rc = idem_cache_update_ttl(m->c, &k, sizeof(k), (r >> 24) % 3);
        return rc == IDEM_ENOTFOUND ? IDEM_OK : rc;
    default:
        test_clock_advance(&te, 1);
        return idem_cache_tick(m->c) <= SHARED_KEYS ? IDEM_OK : IDEM_EIO;
    }
}

static bool value_is(struct idem_cache_value *v, int k)
{
    const unsigned char *p = idem_cache_value_data(v);
    size_t i, n = idem_cache_value_len(v);

    for (i = 0; i < n; i++)
        if (p[i] != (unsigned char)k)
            return false;
    return n > 0;
}

/* Read key k and keep the handle a while; a handle kept must still show
 * its key's bytes when it is let go. */
static int read_one(struct mixed *m, uint64_t r, int i)
{
    struct idem_cache_value *v;
    int k = (int)(r % SHARED_KEYS), rc, slot = i % HELD;

    rc = idem_cache_get(m->c, &k, sizeof(k), &v);
    if (rc == IDEM_ENOTFOUND)
        return IDEM_OK;
    if (rc != IDEM_OK || !value_is(v, k))
        return IDEM_EIO;
    if (m->held[slot] && !value_is(m->held[slot], m->held_key[slot]))
        rc = IDEM_EIO;
    idem_cache_value_release(m->held[slot]);
    m->held[slot] = v;
    m->held_key[slot] = k;
    return rc;
}

static void *mixed_main(void *arg)
{
    struct mixed *m = arg;
    uint64_t x = m->seed;
    int i, rc;

    for (i = 0; i < m->iters; i++) {
        uint64_t r = xorshift(&x);

        rc = (r >> 40) % 2 ? write_one(m, r) : read_one(m, r, i);
        if (rc != IDEM_OK)
            atomic_fetch_add(m->errors, 1);
    }
    return NULL;
}

/* Two threads, each reading and writing the same 64 keys with small TTLs
 * and a moving clock. Handles kept by a thread outlive the cache. */
static void test_values_intact_under_writers(void **state)
{
    atomic_int errors = 0;
    struct mixed m[THREADS];
    void *args[THREADS] = { &m[0], &m[1] };
    int i, j;

    (void)state;
    for (i = 0; i < THREADS; i++)
        m[i] = (struct mixed){ .seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 1),
                               .iters = 40000,
                               .errors = &errors };
    m[0].c = m[1].c =
        new_cache((struct idem_cache_opts){ .shards = 2, .max_entries = 48 });
    run_threads(mixed_main, args);
    assert_int_equal(atomic_load(&errors), 0);
    assert_consistent(m[0].c);
    assert_true(idem_cache_size(m[0].c) <= 48);
    idem_cache_free(m[0].c);
    for (i = 0; i < THREADS; i++) {
        for (j = 0; j < HELD; j++) {
            if (m[i].held[j])
                assert_true(value_is(m[i].held[j], m[i].held_key[j]));
            idem_cache_value_release(m[i].held[j]);
        }
    }
    assert_int_equal(atomic_load(&te.live), 0);
}

/* -- Re-set racing expiry -------------------------------------------- */

#define RESET_KEYS 20000
#define HOUR_MS 3600000

struct reset {
    struct idem_cache *c;
    atomic_int errors;
    atomic_int done;
};

/* Re-set every key with an hour's TTL. */
static void *reset_main(void *arg)
{
    struct reset *r = arg;
    char key[16];
    int i;

    for (i = 0; i < RESET_KEYS; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);

        if (idem_cache_set(r->c, key, (size_t)len, "long", 4, HOUR_MS) !=
            IDEM_OK)
            atomic_fetch_add(&r->errors, 1);
    }
    atomic_store(&r->done, 1);
    return NULL;
}

/* Move the clock through the first expiries a millisecond at a time,
 * reclaiming at each step, while the re-sets go on. */
static void *expire_main(void *arg)
{
    struct reset *r = arg;
    int ms;

    for (ms = 0; ms < 1600; ms++) {
        test_clock_advance(&te, 1);
        idem_cache_tick(r->c);
        if (ms >= 1000 && atomic_load(&r->done))
            break;
    }
    return NULL;
}

static void test_reset_racing_expiry_loses_nothing(void **state)
{
    struct reset r = { 0 };
    struct idem_cache_value *v;
    pthread_t th[2];
    char key[16];
    int i;
    int64_t left;

    (void)state;
    r.c = new_cache((struct idem_cache_opts){ .shards = 4 });
    for (i = 0; i < RESET_KEYS; i++) {
        size_t len = key_n(key, sizeof(key), "key-", i);

        assert_int_equal(
            idem_cache_set(r.c, key, len, "short", 5, 1000 + i % 512), IDEM_OK);
    }
    assert_int_equal(pthread_create(&th[0], NULL, reset_main, &r), 0);
    assert_int_equal(pthread_create(&th[1], NULL, expire_main, &r), 0);
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
    assert_int_equal(atomic_load(&r.errors), 0);
    test_clock_advance(&te, 2000); /* every short TTL is long past */
    assert_int_equal(idem_cache_tick(r.c), 0);
    for (i = 0; i < RESET_KEYS; i++) {
        size_t len = key_n(key, sizeof(key), "key-", i);

        assert_int_equal(idem_cache_get(r.c, key, len, &v), IDEM_OK);
        assert_memory_equal(idem_cache_value_data(v), "long", 4);
        idem_cache_value_release(v);
        assert_int_equal(idem_cache_ttl_left(r.c, key, len, &left), IDEM_OK);
        assert_true(left > HOUR_MS - 4000);
    }
    assert_int_equal(idem_cache_size(r.c), RESET_KEYS);
    assert_consistent(r.c);
    idem_cache_free(r.c);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* -- Bounds under two writers ---------------------------------------- */

#define BOUND (2u << 20)

struct bounded {
    struct idem_cache *c;
    uint64_t seed;
    atomic_int *over;
    atomic_int *errors;
};

static void *bounded_main(void *arg)
{
    static const char value[4000];
    struct bounded *b = arg;
    struct idem_cache_stats st;
    uint64_t x = b->seed;
    int i;

    for (i = 0; i < 20000; i++) {
        uint64_t r = xorshift(&x);
        uint32_t k = (uint32_t)(r % 5000);

        if (idem_cache_set(b->c, &k, sizeof(k), value,
                           (size_t)(r >> 32) % sizeof(value), 0) != IDEM_OK)
            atomic_fetch_add(b->errors, 1);
        idem_cache_stats(b->c, &st);
        if (st.bytes > BOUND)
            atomic_fetch_add(b->over, 1);
    }
    return NULL;
}

static void test_bytes_bound_under_two_writers(void **state)
{
    atomic_int over = 0, errors = 0;
    struct bounded b[THREADS];
    void *args[THREADS] = { &b[0], &b[1] };
    int i;

    (void)state;
    for (i = 0; i < THREADS; i++)
        b[i] = (struct bounded){ .seed = 7919u * (uint64_t)(i + 3),
                                 .over = &over,
                                 .errors = &errors };
    b[0].c = b[1].c =
        new_cache((struct idem_cache_opts){ .max_bytes = BOUND, .shards = 2 });
    run_threads(bounded_main, args);
    assert_int_equal(atomic_load(&errors), 0);
    assert_int_equal(atomic_load(&over), 0);
    assert_true(idem_cache_bytes(b[0].c) <= BOUND);
    assert_consistent(b[0].c);
    idem_cache_free(b[0].c);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* -- foreach beside a writer ----------------------------------------- */

struct walker {
    struct idem_cache *c;
    atomic_int walked; /* the first walk is over: the writer may start */
    atomic_int stop;
    atomic_int errors;
    atomic_long visited;
};

static int walk_check(const void *key, size_t klen, struct idem_cache_value *v,
                      void *ud)
{
    struct walker *w = ud;
    int k;

    atomic_fetch_add(&w->visited, 1);
    if (klen != sizeof(k)) {
        atomic_fetch_add(&w->errors, 1);
        return 0;
    }
    memcpy(&k, key, sizeof(k));
    if (!value_is(v, k))
        atomic_fetch_add(&w->errors, 1);
    if (k % 7 == 0) /* the callback may write */
        idem_cache_remove(w->c, key, klen);
    return 0;
}

static void *walker_main(void *arg)
{
    struct walker *w = arg;
    int i;

    for (i = 0; i < 200; i++) {
        if (idem_cache_foreach(w->c, walk_check, w) != IDEM_OK)
            atomic_fetch_add(&w->errors, 1);
        atomic_store(&w->walked, 1);
    }
    atomic_store(&w->stop, 1);
    return NULL;
}

static void *writer_main(void *arg)
{
    struct walker *w = arg;
    atomic_int errors = 0;
    struct mixed m = { .c = w->c, .errors = &errors };
    uint64_t x = 12345;
    int i;

    while (!atomic_load(&w->walked))
        sched_yield();
    while (!atomic_load(&w->stop)) {
        if (write_one(&m, xorshift(&x)) != IDEM_OK)
            atomic_fetch_add(&w->errors, 1);
    }
    for (i = 0; i < HELD; i++)
        idem_cache_value_release(m.held[i]);
    return NULL;
}

static void test_foreach_beside_writer(void **state)
{
    struct walker w = { 0 };
    pthread_t th[2];
    int k;

    (void)state;
    w.c = new_cache((struct idem_cache_opts){ .shards = 4 });
    for (k = 0; k < SHARED_KEYS; k++) { /* the first walk sees them all */
        unsigned char val[8];

        memset(val, k, sizeof(val));
        assert_int_equal(
            idem_cache_set(w.c, &k, sizeof(k), val, sizeof(val), 0), IDEM_OK);
    }
    assert_int_equal(pthread_create(&th[0], NULL, writer_main, &w), 0);
    assert_int_equal(pthread_create(&th[1], NULL, walker_main, &w), 0);
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
    assert_int_equal(atomic_load(&w.errors), 0);
    assert_true(atomic_load(&w.visited) >= SHARED_KEYS);
    assert_consistent(w.c);
    idem_cache_free(w.c);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* -- More reading threads than epoch slots --------------------------- */

#define MANY_READERS ((int)IDEM__EPOCH_SLOTS + 6)

struct many {
    struct idem_cache *c;
    pthread_barrier_t all_read;
    atomic_int hits;
};

/* One get, then hold the thread (and its slot) until every reader has
 * read: the last few find every slot owned and read under the lock. */
static void *many_main(void *arg)
{
    struct many *m = arg;
    struct idem_cache_value *v = NULL;
    int k = 7;

    if (idem_cache_get(m->c, &k, sizeof(k), &v) == IDEM_OK &&
        idem_cache_value_len(v) == 8)
        atomic_fetch_add(&m->hits, 1);
    idem_cache_value_release(v);
    pthread_barrier_wait(&m->all_read);
    return NULL;
}

static void test_more_readers_than_slots(void **state)
{
    static pthread_t th[MANY_READERS];
    struct many m = { 0 };
    unsigned char val[8] = { 0 };
    int i, k = 7;

    (void)state;
    m.c = new_cache((struct idem_cache_opts){ 0 });
    assert_int_equal(idem_cache_set(m.c, &k, sizeof(k), val, 8, 0), IDEM_OK);
    pthread_barrier_init(&m.all_read, NULL, MANY_READERS);
    for (i = 0; i < MANY_READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, many_main, &m), 0);
    for (i = 0; i < MANY_READERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&m.all_read);
    assert_int_equal(atomic_load(&m.hits), MANY_READERS);
    assert_int_equal(stats_of(m.c).hits, MANY_READERS);
    assert_int_equal(counts_of(m.c).readers, 0); /* slots given back */
    idem_cache_free(m.c);
    assert_int_equal(atomic_load(&te.live), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_or_compute_runs_fn_once),
        cmocka_unit_test(test_values_intact_under_writers),
        cmocka_unit_test(test_reset_racing_expiry_loses_nothing),
        cmocka_unit_test(test_bytes_bound_under_two_writers),
        cmocka_unit_test(test_foreach_beside_writer),
        cmocka_unit_test(test_more_readers_than_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
