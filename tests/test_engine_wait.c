/* Wait mode, and two threads racing for one key: waiters get the replay,
 * an abort passes the key on, the bound turns a wait into 409, a cancel
 * silences it, and of many racers exactly one proceeds. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "engine_helpers.h"

static struct test_env te;

struct waiter {
    struct idem_call *call;
    int calls; /* callbacks received */
    struct idem_decision d;
};

static void on_decided(struct idem_call *call, const struct idem_decision *d,
                       void *ud)
{
    struct waiter *w = ud;

    assert_ptr_equal(call, w->call);
    w->calls++;
    w->d = *d;
}

static struct idem_engine *wait_engine(unsigned max_waiters)
{
    struct idem_engine_opts o = { .conflict = IDEM_CONFLICT_WAIT,
                                  .wait_ms = 2000,
                                  .max_waiters = max_waiters };
    struct idem_engine *e = NULL;

    test_env_init(&te, 1000);
    o.env = &te.env;
    assert_int_equal(idem_engine_new(&o, &e), IDEM_OK);
    return e;
}

/* Start a call that must wait; returns the decide status. */
static int start_waiting(struct idem_engine *e, const struct treq *t,
                         struct waiter *w)
{
    struct idem_decision d;

    *w = (struct waiter){ NULL, 0, { 0 } };
    assert_int_equal(idem_call_new(e, &w->call), IDEM_OK);
    assert_int_equal(idem_call_start(w->call, &t->r, &d), IDEM_OK);
    assert_int_equal(idem_call_body(w->call, t->body, strlen(t->body)),
                     IDEM_OK);
    return idem_call_decide(w->call, on_decided, w, &w->d);
}

static uint64_t waiting(struct idem_engine *e)
{
    struct idem_engine_stats st;

    idem_engine_stats(e, &st);
    return st.waiting;
}

static void test_waiters_get_the_replay(void **state)
{
    struct idem_engine *e = wait_engine(0);
    struct idem_call *owner;
    struct idem_decision d;
    struct waiter a, b;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(idem_call_new(e, &owner), IDEM_OK);
    assert_int_equal(idem_call_start(owner, &t.r, &d), IDEM_OK);
    assert_int_equal(idem_call_decide(owner, NULL, NULL, &d), IDEM_EINVAL);
    idem_call_free(owner);
    assert_int_equal(start_waiting(e, &t, &a), IDEM_OK); /* the owner */
    assert_int_equal(a.d.outcome, IDEM_OUTCOME_PROCEED);
    owner = a.call;
    assert_int_equal(start_waiting(e, &t, &a), IDEM_EINPROGRESS);
    assert_int_equal(start_waiting(e, &t, &b), IDEM_EINPROGRESS);
    assert_int_equal(waiting(e), 2);
    assert_int_equal(complete_with(owner, 201, "done", NULL), IDEM_OK);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(a.d.outcome, IDEM_OUTCOME_REPLAY);
    assert_int_equal(b.d.outcome, IDEM_OUTCOME_REPLAY);
    assert_memory_equal(b.d.replay.body, "done", 4);
    assert_int_equal(waiting(e), 0);
    idem_call_free(a.call);
    idem_call_free(b.call);
    idem_engine_free(e);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_abort_passes_the_key_on(void **state)
{
    struct idem_engine *e = wait_engine(0);
    struct waiter owner, a, b, *next, *other;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(start_waiting(e, &t, &owner), IDEM_OK);
    assert_int_equal(start_waiting(e, &t, &a), IDEM_EINPROGRESS);
    assert_int_equal(start_waiting(e, &t, &b), IDEM_EINPROGRESS);
    assert_int_equal(idem_call_abort(owner.call, NULL, NULL), IDEM_OK);
    idem_call_free(owner.call);
    /* one waiter now owns the key; the other waits on */
    assert_int_equal(a.calls + b.calls, 1);
    next = a.calls ? &a : &b;
    other = a.calls ? &b : &a;
    assert_int_equal(next->d.outcome, IDEM_OUTCOME_PROCEED);
    assert_int_equal(waiting(e), 1);
    assert_int_equal(complete_with(next->call, 201, "x", NULL), IDEM_OK);
    assert_int_equal(other->calls, 1);
    assert_int_equal(other->d.outcome, IDEM_OUTCOME_REPLAY);
    idem_call_free(other->call);
    idem_engine_free(e);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_wait_bound_gives_conflict(void **state)
{
    struct idem_engine *e = wait_engine(0);
    struct idem_engine_stats st;
    struct waiter owner, a;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(start_waiting(e, &t, &owner), IDEM_OK);
    assert_int_equal(start_waiting(e, &t, &a), IDEM_EINPROGRESS);
    test_clock_advance(&te, 1999);
    assert_int_equal(idem_engine_tick(e), 0);
    test_clock_advance(&te, 1);
    assert_int_equal(idem_engine_tick(e), 1);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.d.outcome, IDEM_OUTCOME_CONFLICT);
    assert_int_equal(a.d.status, 409);
    idem_engine_stats(e, &st);
    assert_int_equal(st.wait_timeouts, 1);
    assert_int_equal(st.outcomes[IDEM_OUTCOME_CONFLICT], 1);
    idem_call_free(a.call);
    assert_int_equal(complete_with(owner.call, 200, "x", NULL), IDEM_OK);
    idem_engine_free(e);
}

static void test_cancel_silences_a_wait(void **state)
{
    struct idem_engine *e = wait_engine(0);
    struct waiter owner, a, b;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(start_waiting(e, &t, &owner), IDEM_OK);
    assert_int_equal(start_waiting(e, &t, &a), IDEM_EINPROGRESS);
    assert_int_equal(start_waiting(e, &t, &b), IDEM_EINPROGRESS);
    assert_int_equal(idem_call_cancel(a.call), IDEM_OK);
    assert_int_equal(idem_call_cancel(a.call), IDEM_ENOTFOUND);
    idem_call_free(a.call);
    idem_call_free(b.call); /* free cancels too */
    assert_int_equal(waiting(e), 0);
    assert_int_equal(complete_with(owner.call, 200, "x", NULL), IDEM_OK);
    assert_int_equal(a.calls + b.calls, 0);
    idem_engine_free(e);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_max_waiters(void **state)
{
    struct idem_engine *e = wait_engine(1);
    struct waiter owner, a, b;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(start_waiting(e, &t, &owner), IDEM_OK);
    assert_int_equal(start_waiting(e, &t, &a), IDEM_EINPROGRESS);
    assert_int_equal(start_waiting(e, &t, &b), IDEM_OK);
    assert_int_equal(b.d.outcome, IDEM_OUTCOME_CONFLICT);
    idem_call_free(b.call);
    assert_int_equal(complete_with(owner.call, 200, "x", NULL), IDEM_OK);
    assert_int_equal(a.d.outcome, IDEM_OUTCOME_REPLAY);
    idem_call_free(a.call);
    idem_engine_free(e);
}

/* -- Threads ---------------------------------------------------------- */

struct race {
    struct idem_engine *e;
    atomic_int go;
    atomic_int proceeded, replayed, conflicted, other;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    struct idem_decision d;
    struct idem_call *call = NULL;
    struct treq t;
    int i;

    while (!atomic_load(&r->go))
        ;
    for (i = 0; i < 200; i++) {
        treq_init(&t, "POST", "/pay", "same-key", "Bearer x", "{\"a\":1}");
        if (idem_call_new(r->e, &call) != IDEM_OK ||
            idem_call_start(call, &t.r, &d) != IDEM_OK ||
            idem_call_body(call, t.body, strlen(t.body)) != IDEM_OK ||
            idem_call_decide(call, NULL, NULL, &d) != IDEM_OK) {
            atomic_fetch_add(&r->other, 1);
        } else if (d.outcome == IDEM_OUTCOME_PROCEED) {
            struct idem_response resp = { 201, NULL, 0, "paid", 4 };

            atomic_fetch_add(&r->proceeded, 1);
            if (idem_call_complete(call, &resp, NULL, NULL) != IDEM_OK)
                atomic_fetch_add(&r->other, 1);
        } else if (d.outcome == IDEM_OUTCOME_REPLAY) {
            atomic_fetch_add(&r->replayed, 1);
        } else if (d.outcome == IDEM_OUTCOME_CONFLICT) {
            atomic_fetch_add(&r->conflicted, 1);
        } else {
            atomic_fetch_add(&r->other, 1);
        }
        idem_call_free(call);
    }
    return NULL;
}

static void test_two_threads_one_proceeds(void **state)
{
    struct race r = { 0 };
    pthread_t th[2];
    int i;

    (void)state;
    assert_int_equal(idem_engine_new(NULL, &r.e), IDEM_OK);
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, racer, &r), 0);
    atomic_store(&r.go, 1);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&r.other), 0);
    assert_int_equal(atomic_load(&r.proceeded), 1);
    assert_int_equal(atomic_load(&r.proceeded) + atomic_load(&r.replayed) +
                         atomic_load(&r.conflicted),
                     400);
    idem_engine_free(r.e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_waiters_get_the_replay),
        cmocka_unit_test(test_abort_passes_the_key_on),
        cmocka_unit_test(test_wait_bound_gives_conflict),
        cmocka_unit_test(test_cancel_silences_a_wait),
        cmocka_unit_test(test_max_waiters),
        cmocka_unit_test(test_two_threads_one_proceeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
