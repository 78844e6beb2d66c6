/* keylock across threads: mutual exclusion shown by counters (never by
 * timing), blocking hand-off, callbacks on the releasing thread, timed
 * waits under contention. Run under TSan by `make tsan`. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "helpers.h"
#include "idem/keylock.h"

#define K(s) (s), (sizeof(s) - 1)
#define NKEYS 4

static struct idem_keylock *new_table(unsigned stripes)
{
    struct idem_keylock_opts o = { .stripes = stripes };
    struct idem_keylock *t = NULL;

    assert_int_equal(idem_keylock_new(&o, &t), IDEM_OK);
    return t;
}

static uint64_t waiters_of(struct idem_keylock *t)
{
    struct idem_keylock_stats st;

    idem_keylock_stats(t, &st);
    return st.waiters;
}

/* Spin (yielding) until the table shows n waiters; bounded. */
static void await_waiters(struct idem_keylock *t, uint64_t n)
{
    long spins;

    for (spins = 0; waiters_of(t) != n; spins++) {
        assert_true(spins < 100000000L);
        sched_yield();
    }
}

/* -- Mutual exclusion ------------------------------------------------- */

struct excl {
    struct idem_keylock *t;
    long iters;
    long counter[NKEYS]; /* plain longs: only the lock protects them */
    atomic_int inside[NKEYS];
    atomic_long violations;
    atomic_long errors;
    int mode; /* 0 lock, 1 trylock spin, 2 async spin */
};

struct async_flag {
    struct idem_lock_req req;
    atomic_int granted;
};

static void flag_cb(struct idem_lock_req *req, int status)
{
    struct async_flag *f = req->data;

    if (status == IDEM_OK)
        atomic_store(&f->granted, 1);
}

static int take(struct excl *x, const char *key, struct async_flag *f)
{
    int rc;

    switch (x->mode) {
    case 0:
        return idem_keylock_lock(x->t, key, 2);
    case 1:
        while ((rc = idem_keylock_trylock(x->t, key, 2)) == IDEM_EBUSY)
            sched_yield();
        return rc;
    default:
        atomic_store(&f->granted, 0);
        rc = idem_keylock_acquire(x->t, &f->req, key, 2);
        if (rc == IDEM_EINPROGRESS) {
            while (!atomic_load(&f->granted))
                sched_yield();
            rc = IDEM_OK;
        }
        return rc;
    }
}

static int give(struct excl *x, const char *key, struct async_flag *f)
{
    if (x->mode == 2)
        return idem_keylock_release(x->t, &f->req);
    return idem_keylock_unlock(x->t, key, 2);
}

static void *excl_worker(void *arg)
{
    struct excl *x = arg;
    struct async_flag f;
    char key[3] = "k0";
    long i;

    idem_lock_req_init(&f.req, flag_cb, &f);
    for (i = 0; i < x->iters; i++) {
        int k = (int)(i % NKEYS);

        key[1] = (char)('0' + k);
        if (take(x, key, &f) != IDEM_OK) {
            atomic_fetch_add(&x->errors, 1);
            continue;
        }
        if (atomic_exchange(&x->inside[k], 1) != 0)
            atomic_fetch_add(&x->violations, 1);
        x->counter[k]++;
        atomic_store(&x->inside[k], 0);
        if (give(x, key, &f) != IDEM_OK)
            atomic_fetch_add(&x->errors, 1);
    }
    return NULL;
}

static void run_exclusion(int mode)
{
    struct excl x = { .iters = 100000, .mode = mode };
    pthread_t th[2];
    long total = 0;
    int i;

    x.t = new_table(1); /* one stripe: every key contends on one mutex */
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, excl_worker, &x), 0);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < NKEYS; i++)
        total += x.counter[i];
    assert_int_equal(atomic_load(&x.errors), 0);
    assert_int_equal(atomic_load(&x.violations), 0);
    assert_int_equal(total, 2 * x.iters);
    assert_int_equal(idem_keylock_count(x.t), 0);
    idem_keylock_free(x.t);
}

static void test_exclusion_lock(void **state)
{
    (void)state;
    run_exclusion(0);
}

static void test_exclusion_trylock(void **state)
{
    (void)state;
    run_exclusion(1);
}

static void test_exclusion_async(void **state)
{
    (void)state;
    run_exclusion(2);
}

/* -- Blocking hand-off ---------------------------------------------- */

struct blocker {
    struct idem_keylock *t;
    atomic_int got;
    int rc_lock, rc_unlock, rc_foreign_unlock;
    uint64_t timeout_ms; /* 0: lock(), else timedlock() */
};

static void *blocker_main(void *arg)
{
    struct blocker *b = arg;

    /* the key is the main thread's: this thread may not unlock it */
    b->rc_foreign_unlock = idem_keylock_unlock(b->t, K("k"));
    b->rc_lock = b->timeout_ms
                     ? idem_keylock_timedlock(b->t, K("k"), b->timeout_ms)
                     : idem_keylock_lock(b->t, K("k"));
    atomic_store(&b->got, 1);
    b->rc_unlock = idem_keylock_unlock(b->t, K("k"));
    return NULL;
}

static void run_blocking_handoff(uint64_t timeout_ms)
{
    struct blocker b = { .timeout_ms = timeout_ms };
    pthread_t th;

    b.t = new_table(0);
    assert_int_equal(idem_keylock_lock(b.t, K("k")), IDEM_OK);
    assert_int_equal(pthread_create(&th, NULL, blocker_main, &b), 0);
    await_waiters(b.t, 1);
    assert_int_equal(atomic_load(&b.got), 0); /* still waiting */
    assert_int_equal(idem_keylock_unlock(b.t, K("k")), IDEM_OK);
    pthread_join(th, NULL);
    assert_int_equal(b.rc_foreign_unlock, IDEM_EPERM);
    assert_int_equal(b.rc_lock, IDEM_OK);
    assert_int_equal(b.rc_unlock, IDEM_OK);
    assert_int_equal(idem_keylock_count(b.t), 0);
    idem_keylock_free(b.t);
}

static void test_blocking_handoff(void **state)
{
    (void)state;
    run_blocking_handoff(0);
}

static void test_timedlock_granted_before_deadline(void **state)
{
    (void)state;
    run_blocking_handoff(600000); /* a deadline that never comes */
}

/* A thread granted the key by a hand-off holds it: the key's slot is not
 * left free for anyone else's lock while it sleeps and wakes. */
struct holder {
    struct idem_keylock *t;
    atomic_int got, let_go;
    int rc_lock, rc_unlock;
};

static void *holder_main(void *arg)
{
    struct holder *h = arg;

    h->rc_lock = idem_keylock_lock(h->t, K("k"));
    atomic_store(&h->got, 1);
    while (!atomic_load(&h->let_go))
        sched_yield();
    h->rc_unlock = idem_keylock_unlock(h->t, K("k"));
    return NULL;
}

static void test_handoff_keeps_key_held(void **state)
{
    struct holder h = { 0 };
    pthread_t th;

    (void)state;
    h.t = new_table(1);
    assert_int_equal(idem_keylock_lock(h.t, K("k")), IDEM_OK);
    assert_int_equal(pthread_create(&th, NULL, holder_main, &h), 0);
    await_waiters(h.t, 1);
    assert_int_equal(idem_keylock_unlock(h.t, K("k")), IDEM_OK);
    while (!atomic_load(&h.got))
        sched_yield();
    assert_int_equal(idem_keylock_trylock(h.t, K("k")), IDEM_EBUSY);
    assert_int_equal(idem_keylock_count(h.t), 1);
    atomic_store(&h.let_go, 1);
    pthread_join(th, NULL);
    assert_int_equal(h.rc_lock, IDEM_OK);
    assert_int_equal(h.rc_unlock, IDEM_OK);
    assert_int_equal(idem_keylock_trylock(h.t, K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_unlock(h.t, K("k")), IDEM_OK);
    assert_int_equal(idem_keylock_count(h.t), 0);
    idem_keylock_free(h.t);
}

/* -- Callbacks run on the releasing thread --------------------------- */

struct cross {
    struct idem_keylock *t;
    struct idem_lock_req holder;
    struct idem_lock_req waiter;
    atomic_int release_now;
    pthread_t releaser;
    atomic_int cb_calls;
    atomic_int cb_on_releaser;
};

static void cross_cb(struct idem_lock_req *req, int status)
{
    struct cross *c = req->data;

    if (status == IDEM_OK)
        atomic_fetch_add(&c->cb_calls, 1);
    if (pthread_equal(pthread_self(), c->releaser))
        atomic_store(&c->cb_on_releaser, 1);
}

static void *releaser_main(void *arg)
{
    struct cross *c = arg;

    while (!atomic_load(&c->release_now))
        sched_yield();
    idem_keylock_release(c->t, &c->holder);
    return NULL;
}

static void test_callback_on_releasing_thread(void **state)
{
    struct cross c = { 0 };

    (void)state;
    c.t = new_table(0);
    idem_lock_req_init(&c.holder, cross_cb, &c);
    idem_lock_req_init(&c.waiter, cross_cb, &c);
    assert_int_equal(idem_keylock_acquire(c.t, &c.holder, K("k")), IDEM_OK);
    assert_int_equal(pthread_create(&c.releaser, NULL, releaser_main, &c), 0);
    assert_int_equal(idem_keylock_acquire(c.t, &c.waiter, K("k")),
                     IDEM_EINPROGRESS);
    atomic_store(&c.release_now, 1);
    pthread_join(c.releaser, NULL);
    assert_int_equal(atomic_load(&c.cb_calls), 1);
    assert_int_equal(atomic_load(&c.cb_on_releaser), 1);
    assert_int_equal(idem_keylock_cancel(c.t, &c.waiter), IDEM_EALREADY);
    assert_int_equal(idem_keylock_release(c.t, &c.waiter), IDEM_OK);
    assert_int_equal(idem_keylock_count(c.t), 0);
    idem_keylock_free(c.t);
}

/* -- Timed waits under contention ------------------------------------ */

struct timed {
    struct idem_keylock *t;
    atomic_long ok, timedout, other;
};

static void *timed_worker(void *arg)
{
    struct timed *x = arg;
    int i, rc;

    for (i = 0; i < 2000; i++) {
        rc = idem_keylock_timedlock(x->t, K("hot"), (uint64_t)(i % 3));
        if (rc == IDEM_OK) {
            atomic_fetch_add(&x->ok, 1);
            sched_yield();
            if (idem_keylock_unlock(x->t, K("hot")) != IDEM_OK)
                atomic_fetch_add(&x->other, 1);
        } else if (rc == IDEM_ETIMEDOUT) {
            atomic_fetch_add(&x->timedout, 1);
        } else {
            atomic_fetch_add(&x->other, 1);
        }
    }
    return NULL;
}

static void test_timedlock_contention(void **state)
{
    struct timed x = { 0 };
    pthread_t th[2];
    struct idem_keylock_stats st;
    int i;

    (void)state;
    x.t = new_table(0);
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, timed_worker, &x), 0);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&x.other), 0);
    assert_int_equal(atomic_load(&x.ok) + atomic_load(&x.timedout), 4000);
    idem_keylock_stats(x.t, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.waiters, 0);
    assert_int_equal(st.acquired, (uint64_t)atomic_load(&x.ok));
    assert_int_equal(st.created, st.freed);
    idem_keylock_free(x.t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exclusion_lock),
        cmocka_unit_test(test_exclusion_trylock),
        cmocka_unit_test(test_exclusion_async),
        cmocka_unit_test(test_blocking_handoff),
        cmocka_unit_test(test_timedlock_granted_before_deadline),
        cmocka_unit_test(test_handoff_keeps_key_held),
        cmocka_unit_test(test_callback_on_releasing_thread),
        cmocka_unit_test(test_timedlock_contention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
