/* keylock, one thread: every API path, the async queue, allocation failure,
 * and the table returning to its empty size. Threads: test_keylock_threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "helpers.h"
#include "idem/keylock.h"

#define K(s) (s), (sizeof(s) - 1)

static struct idem_keylock *new_table(const struct idem_keylock_opts *o)
{
    struct idem_keylock *t = NULL;

    assert_int_equal(idem_keylock_new(o, &t), IDEM_OK);
    assert_non_null(t);
    return t;
}

static struct idem_keylock_stats stats_of(struct idem_keylock *t)
{
    struct idem_keylock_stats st;

    idem_keylock_stats(t, &st);
    return st;
}

/* Records the order in which callbacks arrive. */
struct cb_log {
    int order[16];
    int n;
};

/* A request that appends its index to a log when granted. */
struct logged_req {
    struct idem_lock_req req;
    struct cb_log *log;
    int index;
};

static void log_cb(struct idem_lock_req *req, int status)
{
    struct logged_req *r = req->data;

    assert_int_equal(status, IDEM_OK);
    r->log->order[r->log->n++] = r->index;
}

static void logged_init(struct logged_req *r, struct cb_log *log, int index)
{
    r->log = log;
    r->index = index;
    idem_lock_req_init(&r->req, log_cb, r);
}

static void test_new_free_and_bad_options(void **state)
{
    struct idem_keylock_opts o = { .stripes = 65537 };
    struct idem_keylock *t = NULL;

    (void)state;
    assert_int_equal(idem_keylock_new(NULL, NULL), IDEM_EINVAL);
    assert_int_equal(idem_keylock_new(&o, &t), IDEM_EINVAL);
    assert_null(t);
    o.stripes = 3; /* rounded up to 4 */
    t = new_table(&o);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
    idem_keylock_free(NULL);
    t = new_table(NULL);
    assert_int_equal(stats_of(t).entries, 0);
    idem_keylock_free(t);
}

static void test_lock_unlock_counts(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct idem_keylock_stats st;

    (void)state;
    assert_int_equal(idem_keylock_lock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 1);
    assert_int_equal(idem_keylock_lock(t, K("b")), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 2);
    assert_int_equal(idem_keylock_unlock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 1);
    assert_int_equal(idem_keylock_unlock(t, K("b")), IDEM_OK);
    st = stats_of(t);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.created, 2);
    assert_int_equal(st.freed, 2);
    assert_int_equal(st.acquired, 2);
    assert_int_equal(st.handoffs, 0);
    idem_keylock_free(t);
}

static void test_trylock(void **state)
{
    struct idem_keylock *t = new_table(NULL);

    (void)state;
    assert_int_equal(idem_keylock_trylock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_trylock(t, K("a")), IDEM_EBUSY);
    assert_int_equal(idem_keylock_count(t), 1);
    assert_int_equal(idem_keylock_unlock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_trylock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_unlock(t, K("a")), IDEM_OK);
    assert_int_equal(stats_of(t).busy, 1);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_relock_and_bad_unlock(void **state)
{
    struct idem_keylock *t = new_table(NULL);

    (void)state;
    assert_int_equal(idem_keylock_unlock(t, K("never")), IDEM_EPERM);
    assert_int_equal(idem_keylock_lock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_lock(t, K("a")), IDEM_EDEADLK);
    assert_int_equal(idem_keylock_timedlock(t, K("a"), 5), IDEM_EDEADLK);
    assert_int_equal(idem_keylock_count(t), 1);
    assert_int_equal(idem_keylock_unlock(t, K("a")), IDEM_OK);
    assert_int_equal(idem_keylock_unlock(t, K("a")), IDEM_EPERM);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_bad_arguments(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct idem_lock_req req;

    (void)state;
    idem_lock_req_init(&req, NULL, NULL);
    assert_int_equal(idem_keylock_lock(NULL, K("a")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_trylock(NULL, K("a")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_timedlock(NULL, K("a"), 1), IDEM_EINVAL);
    assert_int_equal(idem_keylock_unlock(NULL, K("a")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_lock(t, NULL, 3), IDEM_EINVAL);
    assert_int_equal(idem_keylock_unlock(t, NULL, 3), IDEM_EINVAL);
    /* a request without a callback could never be told it was granted */
    assert_int_equal(idem_keylock_acquire(t, &req, K("a")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_acquire(NULL, &req, K("a")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_acquire(t, NULL, K("a")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_release(NULL, &req), IDEM_EINVAL);
    assert_int_equal(idem_keylock_release(t, NULL), IDEM_EINVAL);
    assert_int_equal(idem_keylock_cancel(NULL, &req), IDEM_EINVAL);
    assert_int_equal(idem_keylock_cancel(t, NULL), IDEM_EINVAL);
    assert_int_equal(idem_keylock_count(NULL), 0);
    idem_keylock_stats(t, NULL);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_keys_are_bytes(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    const char nul[] = { 'a', '\0' };

    (void)state;
    assert_int_equal(idem_keylock_lock(t, "a", 1), IDEM_OK);
    assert_int_equal(idem_keylock_lock(t, nul, 2), IDEM_OK);
    assert_int_equal(idem_keylock_lock(t, NULL, 0), IDEM_OK);
    assert_int_equal(idem_keylock_trylock(t, "", 0), IDEM_EBUSY);
    assert_int_equal(idem_keylock_count(t), 3);
    assert_int_equal(idem_keylock_unlock(t, nul, 2), IDEM_OK);
    assert_int_equal(idem_keylock_unlock(t, "a", 1), IDEM_OK);
    assert_int_equal(idem_keylock_unlock(t, "", 0), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void never_cb(struct idem_lock_req *req, int status)
{
    (void)req;
    (void)status;
    fail_msg("callback of a request that should not be granted");
}

static uint64_t elapsed_ms(const struct timespec *a)
{
    struct timespec b;

    clock_gettime(CLOCK_MONOTONIC, &b);
    return (uint64_t)(b.tv_sec - a->tv_sec) * 1000u +
           (uint64_t)((b.tv_nsec - a->tv_nsec) / 1000000L);
}

static void test_timedlock(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct idem_lock_req holder;
    struct idem_keylock_stats st;
    struct timespec start;

    (void)state;
    assert_int_equal(idem_keylock_timedlock(t, K("free"), 1000), IDEM_OK);
    assert_int_equal(idem_keylock_unlock(t, K("free")), IDEM_OK);

    /* an async request owns the key, so this thread must wait and give up */
    idem_lock_req_init(&holder, never_cb, NULL);
    assert_int_equal(idem_keylock_acquire(t, &holder, K("k")), IDEM_OK);
    clock_gettime(CLOCK_MONOTONIC, &start);
    assert_int_equal(idem_keylock_timedlock(t, K("k"), 30), IDEM_ETIMEDOUT);
    assert_true(elapsed_ms(&start) >= 29);
    assert_int_equal(idem_keylock_timedlock(t, K("k"), 0), IDEM_ETIMEDOUT);
    assert_int_equal(idem_keylock_unlock(t, K("k")), IDEM_EPERM);
    st = stats_of(t);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.waiters, 0);
    assert_int_equal(st.entries, 1);
    assert_int_equal(idem_keylock_release(t, &holder), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_async_fifo_handoff(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct logged_req r[4];
    struct cb_log log = { .n = 0 };
    struct idem_keylock_stats st;
    int i;

    (void)state;
    for (i = 0; i < 4; i++)
        logged_init(&r[i], &log, i);
    assert_int_equal(idem_keylock_acquire(t, &r[0].req, K("k")), IDEM_OK);
    for (i = 1; i < 4; i++)
        assert_int_equal(idem_keylock_acquire(t, &r[i].req, K("k")),
                         IDEM_EINPROGRESS);
    st = stats_of(t);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.waiters, 3);
    assert_int_equal(log.n, 0);
    for (i = 0; i < 4; i++) {
        assert_int_equal(idem_keylock_release(t, &r[i].req), IDEM_OK);
        assert_int_equal(log.n, i < 3 ? i + 1 : 3);
        assert_int_equal(idem_keylock_count(t), i < 3 ? 1 : 0);
    }
    assert_int_equal(log.order[0], 1);
    assert_int_equal(log.order[1], 2);
    assert_int_equal(log.order[2], 3);
    st = stats_of(t);
    assert_int_equal(st.handoffs, 3);
    assert_int_equal(st.acquired, 4);
    assert_int_equal(st.created, 1);
    assert_int_equal(st.freed, 1);
    idem_keylock_free(t);
}

static void test_cancel(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct logged_req r[3];
    struct cb_log log = { .n = 0 };
    int i;

    (void)state;
    for (i = 0; i < 3; i++)
        logged_init(&r[i], &log, i);
    assert_int_equal(idem_keylock_cancel(t, &r[1].req), IDEM_ENOTFOUND);
    assert_int_equal(idem_keylock_acquire(t, &r[0].req, K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &r[1].req, K("k")),
                     IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_acquire(t, &r[2].req, K("k")),
                     IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_cancel(t, &r[0].req), IDEM_EALREADY);
    assert_int_equal(idem_keylock_cancel(t, &r[1].req), IDEM_OK);
    assert_int_equal(idem_keylock_cancel(t, &r[1].req), IDEM_ENOTFOUND);
    assert_int_equal(stats_of(t).waiters, 1);
    assert_int_equal(idem_keylock_release(t, &r[0].req), IDEM_OK);
    assert_int_equal(log.n, 1);
    assert_int_equal(log.order[0], 2); /* the cancelled one was skipped */
    assert_int_equal(idem_keylock_cancel(t, &r[2].req), IDEM_EALREADY);
    assert_int_equal(idem_keylock_release(t, &r[2].req), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 0);
    assert_int_equal(stats_of(t).cancels, 1);
    /* a cancelled request is idle and may be used again */
    assert_int_equal(idem_keylock_acquire(t, &r[1].req, K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_release(t, &r[1].req), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_release_and_acquire_misuse(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct idem_lock_req a, b;

    (void)state;
    idem_lock_req_init(&a, never_cb, NULL);
    idem_lock_req_init(&b, never_cb, NULL);
    assert_int_equal(idem_keylock_release(t, &a), IDEM_EPERM);
    assert_int_equal(idem_keylock_acquire(t, &a, K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &a, K("other")), IDEM_EINVAL);
    assert_int_equal(idem_keylock_acquire(t, &b, K("k")), IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_acquire(t, &b, K("k")), IDEM_EINVAL);
    /* a waiting request holds nothing to release; it keeps its place */
    assert_int_equal(idem_keylock_release(t, &b), IDEM_EPERM);
    assert_int_equal(stats_of(t).waiters, 1);
    /* a thread cannot unlock what a request holds */
    assert_int_equal(idem_keylock_unlock(t, K("k")), IDEM_EPERM);
    assert_int_equal(idem_keylock_cancel(t, &b), IDEM_OK);
    assert_int_equal(idem_keylock_release(t, &a), IDEM_OK);
    assert_int_equal(idem_keylock_release(t, &a), IDEM_EPERM);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_max_waiters(void **state)
{
    struct idem_keylock_opts o = { .max_waiters = 2 };
    struct idem_keylock *t = new_table(&o);
    struct idem_lock_req r[4];
    int i;

    (void)state;
    for (i = 0; i < 4; i++)
        idem_lock_req_init(&r[i], never_cb, NULL);
    assert_int_equal(idem_keylock_acquire(t, &r[0], K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &r[1], K("k")), IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_acquire(t, &r[2], K("k")), IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_acquire(t, &r[3], K("k")), IDEM_EBUSY);
    assert_int_equal(idem_keylock_lock(t, K("k")), IDEM_EBUSY);
    assert_int_equal(stats_of(t).busy, 2);
    assert_int_equal(idem_keylock_cancel(t, &r[2]), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &r[3], K("k")), IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_cancel(t, &r[1]), IDEM_OK);
    assert_int_equal(idem_keylock_cancel(t, &r[3]), IDEM_OK);
    assert_int_equal(idem_keylock_release(t, &r[0]), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

/* The callback may use the table: release at once, take another key. */
struct chain {
    struct idem_keylock *t;
    struct idem_lock_req other;
    int granted;
};

static void chain_cb(struct idem_lock_req *req, int status)
{
    struct chain *c = req->data;
    int nth = ++c->granted;

    assert_int_equal(status, IDEM_OK);
    /* the release grants the next waiter, whose callback runs nested */
    assert_int_equal(idem_keylock_release(c->t, req), IDEM_OK);
    if (nth == 1) {
        idem_lock_req_init(&c->other, never_cb, c);
        assert_int_equal(idem_keylock_acquire(c->t, &c->other, K("other")),
                         IDEM_OK);
    }
}

static void test_callback_reenters_table(void **state)
{
    struct idem_keylock *t = new_table(NULL);
    struct chain c = { .t = t };
    struct idem_lock_req first, second, third;

    (void)state;
    idem_lock_req_init(&first, never_cb, NULL);
    idem_lock_req_init(&second, chain_cb, &c);
    idem_lock_req_init(&third, chain_cb, &c);
    assert_int_equal(idem_keylock_acquire(t, &first, K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &second, K("k")),
                     IDEM_EINPROGRESS);
    assert_int_equal(idem_keylock_acquire(t, &third, K("k")), IDEM_EINPROGRESS);
    /* first -> second (releases in its callback) -> third (releases too) */
    assert_int_equal(idem_keylock_release(t, &first), IDEM_OK);
    assert_int_equal(c.granted, 2);
    assert_int_equal(idem_keylock_count(t), 1); /* "other" */
    assert_int_equal(idem_keylock_release(t, &c.other), IDEM_OK);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
}

static void test_table_shrinks_back(void **state)
{
    struct idem_keylock_opts o = { .stripes = 1 };
    struct idem_keylock *t = new_table(&o);
    uint64_t empty_bytes = stats_of(t).table_bytes;
    char key[32];
    int i, n = 20000;

    (void)state;
    for (i = 0; i < n; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(idem_keylock_lock(t, key, (size_t)len), IDEM_OK);
    }
    assert_int_equal(idem_keylock_count(t), n);
    assert_true(stats_of(t).table_bytes > empty_bytes + (uint64_t)n * 8);
    for (i = 0; i < n; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(idem_keylock_unlock(t, key, (size_t)len), IDEM_OK);
    }
    assert_int_equal(idem_keylock_count(t), 0);
    assert_int_equal(stats_of(t).table_bytes, empty_bytes);
    assert_true(stats_of(t).spare_bytes <= 64); /* one entry, short key */
    idem_keylock_free(t);
}

/* Lock and unlock key n times; every call must succeed. */
static void pairs(struct idem_keylock *t, const void *key, size_t klen, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        assert_int_equal(idem_keylock_lock(t, key, klen), IDEM_OK);
        assert_int_equal(idem_keylock_unlock(t, key, klen), IDEM_OK);
    }
}

/* An uncontended key fits its inline slot and allocates nothing; a key too
 * long for a slot reuses its stripe's spare entry. */
static void test_uncontended_allocates_nothing(void **state)
{
    struct test_env te;
    struct idem_keylock_opts o = { .stripes = 1, .env = &te.env };
    struct idem_keylock *t;
    char long_a[100], long_b[200];
    long before;

    (void)state;
    memset(long_a, 'a', sizeof(long_a));
    memset(long_b, 'b', sizeof(long_b));
    test_env_init(&te, 0);
    t = new_table(&o);
    before = atomic_load(&te.allocs);
    pairs(t, K("same"), 1000);
    assert_int_equal(atomic_load(&te.allocs) - before, 0);
    assert_int_equal(stats_of(t).spare_bytes, 0);
    pairs(t, long_a, sizeof(long_a), 1000);
    assert_int_equal(atomic_load(&te.allocs) - before, 1);
    assert_true(stats_of(t).spare_bytes > sizeof(long_a) &&
                stats_of(t).spare_bytes <= 256);
    /* a key of another size class cannot use it, and is freed */
    pairs(t, long_b, sizeof(long_b), 1);
    assert_int_equal(atomic_load(&te.allocs) - before, 2);
    /* the table, its stripes, their buckets, the spare */
    assert_int_equal(atomic_load(&te.live), 4);
    assert_int_equal(stats_of(t).created, 2001);
    assert_int_equal(stats_of(t).freed, 2001);
    idem_keylock_free(t);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* Keys sharing one slot: the first takes it, the others get allocated
 * entries, in any order of unlocking; and a thread holding more locks than
 * it remembers still unlocks them all. */
static void test_keys_sharing_slots(void **state)
{
    struct idem_keylock_opts o = { .stripes = 1 };
    struct idem_keylock *t = new_table(&o);
    char key[16];
    int i, len, n = 64;

    (void)state;
    for (i = 0; i < n; i++) {
        len = snprintf(key, sizeof(key), "s%d", i);
        assert_int_equal(idem_keylock_lock(t, key, (size_t)len), IDEM_OK);
        assert_int_equal(idem_keylock_trylock(t, key, (size_t)len), IDEM_EBUSY);
    }
    assert_int_equal(idem_keylock_count(t), n);
    for (i = 0; i < n; i += 2) { /* every other one, then the rest */
        len = snprintf(key, sizeof(key), "s%d", i);
        assert_int_equal(idem_keylock_unlock(t, key, (size_t)len), IDEM_OK);
    }
    for (i = n - 1; i > 0; i -= 2) {
        len = snprintf(key, sizeof(key), "s%d", i);
        assert_int_equal(idem_keylock_unlock(t, key, (size_t)len), IDEM_OK);
        assert_int_equal(idem_keylock_unlock(t, key, (size_t)len), IDEM_EPERM);
    }
    assert_int_equal(idem_keylock_count(t), 0);
    assert_int_equal(stats_of(t).created, (uint64_t)n);
    assert_int_equal(stats_of(t).freed, (uint64_t)n);
    pairs(t, K("again"), 10);
    idem_keylock_free(t);
}

/* Free a table that still holds and queues: nothing leaks. */
static void test_free_nonempty_table(void **state)
{
    struct test_env te;
    struct idem_keylock_opts o = { .env = &te.env };
    struct idem_keylock *t;
    struct idem_lock_req a, b;

    (void)state;
    test_env_init(&te, 0);
    t = new_table(&o);
    idem_lock_req_init(&a, never_cb, NULL);
    idem_lock_req_init(&b, never_cb, NULL);
    assert_int_equal(idem_keylock_lock(t, K("x")), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &a, K("y")), IDEM_OK);
    assert_int_equal(idem_keylock_acquire(t, &b, K("y")), IDEM_EINPROGRESS);
    assert_true(atomic_load(&te.live) > 0);
    idem_keylock_free(t);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* One scenario run with allocation n failing. Every call must answer
 * IDEM_OK or IDEM_ENOMEM, and the table must count what it holds. Returns
 * the allocation failures the run saw. */
static long failing_run(long n)
{
    struct test_env te;
    struct idem_keylock_opts o = { .stripes = 2, .env = &te.env };
    struct idem_keylock *t = NULL;
    struct idem_lock_req req, waiter;
    char key[16];
    int i, rc, held = 0;

    test_env_init(&te, 0);
    test_env_fail_in(&te, n);
    rc = idem_keylock_new(&o, &t);
    if (rc != IDEM_OK) {
        assert_int_equal(rc, IDEM_ENOMEM);
        assert_null(t);
        assert_int_equal(atomic_load(&te.live), 0);
        return atomic_load(&te.failures);
    }
    /* enough to fill the inline slots and grow the buckets */
    for (i = 0; i < 100; i++) {
        int len = snprintf(key, sizeof(key), "k%d", i);

        rc = idem_keylock_lock(t, key, (size_t)len);
        assert_true(rc == IDEM_OK || rc == IDEM_ENOMEM);
        held += rc == IDEM_OK;
        assert_int_equal(idem_keylock_count(t), held);
    }
    idem_lock_req_init(&req, never_cb, NULL);
    idem_lock_req_init(&waiter, never_cb, NULL);
    rc = idem_keylock_acquire(t, &req, K("async"));
    assert_true(rc == IDEM_OK || rc == IDEM_ENOMEM);
    if (rc == IDEM_OK) {
        /* queuing allocates nothing */
        assert_int_equal(idem_keylock_acquire(t, &waiter, K("async")),
                         IDEM_EINPROGRESS);
        assert_int_equal(idem_keylock_cancel(t, &waiter), IDEM_OK);
        assert_int_equal(idem_keylock_release(t, &req), IDEM_OK);
    }
    for (i = 0; i < 100; i++) {
        int len = snprintf(key, sizeof(key), "k%d", i);

        rc = idem_keylock_unlock(t, key, (size_t)len);
        assert_true(rc == IDEM_OK || rc == IDEM_EPERM);
        held -= rc == IDEM_OK;
    }
    assert_int_equal(held, 0);
    assert_int_equal(idem_keylock_count(t), 0);
    idem_keylock_free(t);
    assert_int_equal(atomic_load(&te.live), 0);
    return atomic_load(&te.failures);
}

static void test_allocation_failure_sweep(void **state)
{
    long n;

    (void)state;
    n = test_alloc_sweep(failing_run, 100000);
    assert_true(n > 80); /* the sweep reached every lock's allocation */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_free_and_bad_options),
        cmocka_unit_test(test_lock_unlock_counts),
        cmocka_unit_test(test_trylock),
        cmocka_unit_test(test_relock_and_bad_unlock),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_keys_are_bytes),
        cmocka_unit_test(test_timedlock),
        cmocka_unit_test(test_async_fifo_handoff),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_release_and_acquire_misuse),
        cmocka_unit_test(test_max_waiters),
        cmocka_unit_test(test_callback_reenters_table),
        cmocka_unit_test(test_table_shrinks_back),
        cmocka_unit_test(test_uncontended_allocates_nothing),
        cmocka_unit_test(test_keys_sharing_slots),
        cmocka_unit_test(test_free_nonempty_table),
        cmocka_unit_test(test_allocation_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
