/* The engine's rules, one test each: what is subject, keys, scope,
 * fingerprints, conflicts, leases, what is stored and replayed, and the
 * memory it leaves behind. Time is the fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "engine_helpers.h"
#include "store_internal.h"

static struct test_env te;

static struct idem_engine *engine(struct idem_engine_opts *o)
{
    struct idem_engine_opts dflt = { 0 };
    struct idem_engine *e = NULL;

    if (!o)
        o = &dflt;
    test_env_init(&te, 1000);
    o->env = &te.env;
    assert_int_equal(idem_engine_new(o, &e), IDEM_OK);
    return e;
}

static struct idem_engine_stats stats(struct idem_engine *e)
{
    struct idem_engine_stats st;

    idem_engine_stats(e, &st);
    return st;
}

static void done(struct idem_engine *e)
{
    assert_int_equal(stats(e).in_flight, 0);
    idem_engine_free(e);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_what_is_subject(void **state)
{
    struct idem_engine *e = engine(NULL);
    struct treq t;

    (void)state;
    assert_int_equal(outcome_of(e, treq_init(&t, "GET", "/o", "k", NULL, "")),
                     IDEM_OUTCOME_PASS);
    assert_int_equal(outcome_of(e, treq_init(&t, "PUT", "/o", "k", NULL, "")),
                     IDEM_OUTCOME_PASS);
    assert_int_equal(outcome_of(e, treq_init(&t, "POST", "/o", NULL, NULL, "")),
                     IDEM_OUTCOME_PASS);
    assert_int_equal(outcome_of(e, treq_init(&t, "post", "/o", "k", NULL, "")),
                     IDEM_OUTCOME_PASS); /* methods are case-sensitive */
    assert_int_equal(stats(e).outcomes[IDEM_OUTCOME_PASS], 4);
    done(e);
}

static void test_invalid_keys(void **state)
{
    struct idem_engine *e = engine(NULL);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "a b", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_INVALID);
    assert_int_equal(d.status, 400);
    assert_string_equal(d.detail, "the key contains a space");
    idem_call_free(call);

    treq_init(&t, "POST", "/o", "k1", NULL, "{}");
    treq_header(&t, "idempotency-key", "k2");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_INVALID);
    assert_string_equal(d.detail, "more than one idempotency key header");
    idem_call_free(call);

    treq_init(&t, "POST", "/o", NULL, NULL, "{}");
    t.r.key_required = true;
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_INVALID);
    assert_string_equal(d.detail, "this route requires an idempotency key");
    idem_call_free(call);
    assert_int_equal(stats(e).outcomes[IDEM_OUTCOME_INVALID], 3);
    done(e);
}

static void test_alternative_key_header(void **state)
{
    struct idem_engine_opts o = { .alt_key_header = "X-Idempotency-Key" };
    struct idem_engine *e = engine(&o);
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", NULL, NULL, "{}");
    treq_header(&t, "X-Idempotency-Key", "k");
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PROCEED);
    /* both names at once: ambiguous */
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    treq_header(&t, "x-idempotency-key", "k");
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_INVALID);
    done(e);
}

static void test_proceed_complete_replay(void **state)
{
    static const struct idem_header hs[] = {
        { S("Content-Type"), S("application/json") },
        { S("Connection"), S("close, X-Private") },
        { S("X-Private"), S("hop") },
        { S("Transfer-Encoding"), S("chunked") },
        { S("Content-Length"), S("9") },
        { S("Date"), S("Mon, 23 Nov 2026 16:00:00 GMT") },
        { S("Set-Cookie"), S("a=1") },
        { S("Set-Cookie"), S("b=2") },
    };
    struct idem_response resp = { 201, hs, 8, "{\"id\":1}", 8 };
    struct idem_engine *e = engine(NULL);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    bool stored = false;

    (void)state;
    treq_init(&t, "POST", "/orders?x=1", "k", "Bearer a", "{\"n\":1}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(stats(e).in_flight, 1);
    assert_int_equal(complete_sync(call, &resp, &stored), IDEM_OK);
    assert_true(stored);
    assert_int_equal(idem_call_complete(call, &resp, NULL, NULL), IDEM_EINVAL);
    idem_call_free(call);

    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    assert_int_equal(d.status, 201);
    assert_false(d.body_omitted);
    assert_int_equal(d.replay.body_len, 8);
    assert_memory_equal(d.replay.body, "{\"id\":1}", 8);
    /* hop-by-hop, Connection-named, Content-Length and Date are gone;
     * the rest keep their order, repeats included */
    assert_int_equal(d.replay.nheaders, 3);
    assert_memory_equal(d.replay.headers[0].name, "Content-Type", 12);
    assert_memory_equal(d.replay.headers[1].value, "a=1", 3);
    assert_memory_equal(d.replay.headers[2].value, "b=2", 3);
    idem_call_free(call);
    assert_int_equal(stats(e).stored, 1);
    assert_int_equal(stats(e).outcomes[IDEM_OUTCOME_REPLAY], 1);
    done(e);
}

static void test_fingerprint_mismatch(void **state)
{
    struct idem_engine *e = engine(NULL);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/orders", "k", NULL, "{\"n\":1}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(call, 201, "{}", NULL), IDEM_OK);

    treq_init(&t, "POST", "/orders", "k", NULL, "{\"n\":2}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_MISMATCH);
    assert_int_equal(d.status, 422);
    assert_non_null(d.detail);
    idem_call_free(call);
    assert_int_equal(
        outcome_of(e, treq_init(&t, "POST", "/other", "k", NULL, "{\"n\":1}")),
        IDEM_OUTCOME_MISMATCH);
    assert_int_equal(outcome_of(e, treq_init(&t, "PATCH", "/orders", "k", NULL,
                                             "{\"n\":1}")),
                     IDEM_OUTCOME_MISMATCH);
    treq_init(&t, "POST", "/orders", "k", NULL, "{\"n\":1}");
    t.h[0].value = "text/plain", t.h[0].value_len = 10;
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_MISMATCH);
    /* the original still replays */
    assert_int_equal(
        outcome_of(e, treq_init(&t, "POST", "/orders", "k", NULL, "{\"n\":1}")),
        IDEM_OUTCOME_REPLAY);
    done(e);
}

static void test_conflict_while_in_flight(void **state)
{
    struct idem_engine_opts o = { .retry_after_s = 3 };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *first, *second;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &first, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(run_call(e, &t, &second, &d), IDEM_OUTCOME_CONFLICT);
    assert_int_equal(d.status, 409);
    assert_int_equal(d.retry_after_s, 3);
    idem_call_free(second);
    /* a different body under the same key is a mismatch even in flight */
    assert_int_equal(
        outcome_of(e, treq_init(&t, "POST", "/o", "k", NULL, "{\"x\":0}")),
        IDEM_OUTCOME_MISMATCH);
    assert_int_equal(complete_with(first, 200, "{}", NULL), IDEM_OK);
    done(e);
}

static void test_scopes_keep_clients_apart(void **state)
{
    struct idem_engine *e = engine(NULL);
    struct idem_decision d;
    struct idem_call *a, *b;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", "Bearer alice", "{}");
    assert_int_equal(run_call(e, &t, &a, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(a, 201, "alice's", NULL), IDEM_OK);
    /* bob, same key: his own request, never alice's response */
    treq_init(&t, "POST", "/o", "k", "Bearer bob", "{}");
    assert_int_equal(run_call(e, &t, &b, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(b, 201, "bob's", NULL), IDEM_OK);
    treq_init(&t, "POST", "/o", "k", "Bearer bob", "{}");
    assert_int_equal(run_call(e, &t, &b, &d), IDEM_OUTCOME_REPLAY);
    assert_memory_equal(d.replay.body, "bob's", 5);
    idem_call_free(b);
    /* no Authorization at all is a scope of its own */
    assert_int_equal(
        outcome_of(e, treq_init(&t, "POST", "/o", "k", NULL, "{}")),
        IDEM_OUTCOME_PROCEED);
    /* and so is a route */
    treq_init(&t, "POST", "/o", "k", "Bearer alice", "{}");
    t.r.route = "/payments", t.r.route_len = 9;
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PROCEED);
    done(e);
}

static void test_lease_expiry_and_stale_owner(void **state)
{
    struct idem_engine_opts o = { .lease_ms = 5000,
                                  .unknown_outcome = IDEM_UNKNOWN_RELEASE };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *old, *next;
    struct treq t;
    bool stored = true;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &old, &d), IDEM_OUTCOME_PROCEED);
    test_clock_advance(&te, 4999);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_CONFLICT);
    test_clock_advance(&te, 1);
    assert_int_equal(run_call(e, &t, &next, &d), IDEM_OUTCOME_PROCEED);
    /* the first owner's lease is gone: it may not write */
    assert_int_equal(complete_with(old, 201, "old", &stored), IDEM_ESTALE);
    assert_false(stored);
    assert_int_equal(stats(e).stale, 1);
    assert_int_equal(complete_with(next, 201, "new", &stored), IDEM_OK);
    assert_true(stored);
    assert_int_equal(run_call(e, &t, &next, &d), IDEM_OUTCOME_REPLAY);
    assert_memory_equal(d.replay.body, "new", 3);
    idem_call_free(next);
    done(e);
}

static void test_abort_and_free_release_the_key(void **state)
{
    struct idem_engine_opts o = { .unknown_outcome = IDEM_UNKNOWN_RELEASE };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_call_abort(call, NULL, NULL), IDEM_OK);
    assert_int_equal(idem_call_abort(call, NULL, NULL), IDEM_EINVAL);
    idem_call_free(call);
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    idem_call_free(call); /* never completed: freed = aborted */
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(call, 200, "{}", NULL), IDEM_OK);
    done(e);
}

/* The default: a request that may have run is never run again. A lapsed
 * lease, a call freed unfinished and idem_call_unknown() all leave an
 * "outcome unknown" record for the lifetime; only abort releases. */
static void test_unknown_outcomes_hold_the_key(void **state)
{
    struct idem_engine_opts o = { .lease_ms = 5000, .lifetime_ms = 60000 };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *call, *old;
    struct treq t, other;

    (void)state;
    treq_init(&t, "POST", "/o", "k1", NULL, "{}");
    assert_int_equal(run_call(e, &t, &old, &d), IDEM_OUTCOME_PROCEED);
    test_clock_advance(&te, 5000); /* its owner never came back */
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_UNKNOWN);
    assert_int_equal(d.status, 502);
    assert_non_null(d.detail);
    idem_call_free(call);
    assert_int_equal(complete_with(old, 201, "late", NULL), IDEM_ESTALE);
    /* another request under the key is still a mismatch */
    treq_init(&other, "POST", "/o", "k1", NULL, "{\"x\":1}");
    assert_int_equal(outcome_of(e, &other), IDEM_OUTCOME_MISMATCH);
    /* freed unfinished, and said unknown: both hold */
    treq_init(&t, "POST", "/o", "k2", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    idem_call_free(call);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_UNKNOWN);
    treq_init(&t, "POST", "/o", "k3", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_call_unknown(call, NULL, NULL), IDEM_OK);
    assert_int_equal(idem_call_unknown(call, NULL, NULL), IDEM_EINVAL);
    idem_call_free(call);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_UNKNOWN);
    assert_int_equal(stats(e).unknown, 2); /* settled so by their owner */
    assert_int_equal(stats(e).in_flight, 0);
    assert_int_equal(stats(e).outcomes[IDEM_OUTCOME_UNKNOWN], 3);
    /* abort: provably not run, released */
    treq_init(&t, "POST", "/o", "k4", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_call_abort(call, NULL, NULL), IDEM_OK);
    idem_call_free(call);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PROCEED);
    /* the unknown record lives for the lifetime, then the key is free */
    test_clock_advance(&te, 60000);
    treq_init(&t, "POST", "/o", "k3", NULL, "{}");
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PROCEED);
    done(e);
}

/* Renewal keeps a lease from lapsing into an unknown outcome. */
static void test_renewal_moves_the_lease(void **state)
{
    struct idem_engine_opts o = { .lease_ms = 5000 };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    int i;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    for (i = 0; i < 4; i++) {
        test_clock_advance(&te, 2500);
        assert_int_equal(idem_call_renew(call, NULL, NULL), IDEM_OK);
        assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_CONFLICT);
    }
    assert_int_equal(complete_with(call, 201, "ok", NULL), IDEM_OK);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_REPLAY);
    assert_int_equal(stats(e).renewed, 4);
    done(e);
}

static bool only_2xx(unsigned status, void *ud)
{
    (void)ud;
    return status >= 200 && status < 300;
}

/* Complete a fresh call under key with status; is the key free after? */
static bool released_after(struct idem_engine *e, const char *key,
                           unsigned status)
{
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    bool stored = true;

    treq_init(&t, "POST", "/o", key, NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(call, status, "x", &stored), IDEM_OK);
    return !stored && outcome_of(e, &t) == IDEM_OUTCOME_PROCEED;
}

static void test_storage_policy(void **state)
{
    struct idem_engine_opts o = { .storable = only_2xx };
    struct idem_engine *e = engine(NULL);

    (void)state;
    assert_true(released_after(e, "k500", 500));
    assert_true(released_after(e, "k503", 503));
    assert_true(released_after(e, "k408", 408));
    assert_true(released_after(e, "k425", 425));
    assert_true(released_after(e, "k429", 429));
    assert_false(released_after(e, "k404", 404)); /* stored, replays */
    assert_false(released_after(e, "k200", 200));
    assert_int_equal(stats(e).not_stored, 5);
    done(e);
    e = engine(&o);
    assert_true(released_after(e, "k404", 404));
    assert_false(released_after(e, "k201", 201));
    done(e);
}

static void test_no_store_policy_header(void **state)
{
    static const struct idem_header hs[] = {
        { S("Idempotency-Policy"), S("max-age=5, No-Store") },
    };
    struct idem_response resp = { 201, hs, 1, "x", 1 };
    struct idem_engine *e = engine(NULL);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    bool stored = true;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_sync(call, &resp, &stored), IDEM_OK);
    assert_false(stored);
    idem_call_free(call);
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(call, 201, "{}", NULL), IDEM_OK);
    done(e);
}

static void test_large_response_keeps_status_only(void **state)
{
    struct idem_engine_opts o = { .max_stored_body = 4 };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;
    bool stored = false;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(call, 201, "12345", &stored), IDEM_OK);
    assert_true(stored);
    /* the request ran once: a retry is never executed again */
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    assert_int_equal(d.status, 201);
    assert_true(d.body_omitted);
    assert_int_equal(d.replay.body_len, 0);
    assert_int_equal(d.replay.nheaders, 2);
    idem_call_free(call);
    done(e);
}

static void test_lifetime_ends(void **state)
{
    struct idem_engine_opts o = { .lifetime_ms = 60000 };
    struct idem_engine *e = engine(&o);
    struct idem_store_stats ss;
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(complete_with(call, 201, "{}", NULL), IDEM_OK);
    test_clock_advance(&te, 59999);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_REPLAY);
    test_clock_advance(&te, 1);
    idem_engine_tick(e);
    idem_store_stats(idem_engine_store(e), &ss);
    assert_int_equal(ss.records, 0);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PROCEED);
    done(e);
}

static void test_call_misuse(void **state)
{
    struct idem_engine *e = engine(NULL);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(idem_call_new(e, &call), IDEM_OK);
    assert_int_equal(idem_call_body(call, "x", 1), IDEM_EINVAL);
    assert_int_equal(idem_call_decide(call, NULL, NULL, &d), IDEM_EINVAL);
    assert_int_equal(idem_call_abort(call, NULL, NULL), IDEM_EINVAL);
    assert_int_equal(idem_call_cancel(call), IDEM_ENOTFOUND);
    assert_int_equal(idem_call_start(call, &t.r, &d), IDEM_OK);
    assert_int_equal(idem_call_start(call, &t.r, &d), IDEM_EINVAL);
    idem_call_free(call); /* pending: the fingerprint is freed */
    assert_int_equal(idem_call_new(NULL, &call), IDEM_EINVAL);
    assert_int_equal(idem_call_start(NULL, &t.r, &d), IDEM_EINVAL);
    idem_call_free(NULL);
    done(e);
}

static void test_bad_options(void **state)
{
    const char *bad[] = { "PO ST" };
    struct idem_engine_opts o = { .methods = bad, .nmethods = 1 };
    struct idem_engine *e = NULL;

    (void)state;
    assert_int_equal(idem_engine_new(&o, &e), IDEM_EINVAL);
    o = (struct idem_engine_opts){ .lease_ms = -1 };
    assert_int_equal(idem_engine_new(&o, &e), IDEM_EINVAL);
    o = (struct idem_engine_opts){ .key_header = "" };
    assert_int_equal(idem_engine_new(&o, &e), IDEM_EINVAL);
    o = (struct idem_engine_opts){ .conflict = 7 };
    assert_int_equal(idem_engine_new(&o, &e), IDEM_EINVAL);
    assert_int_equal(idem_engine_new(NULL, NULL), IDEM_EINVAL);
    assert_null(e);
    idem_engine_free(NULL);
}

/* -- A store that fails, and one that holds garbage ------------------- */

static int bad_begin(struct idem_store *s, const void *key, size_t klen,
                     const void *rec, size_t rlen,
                     const struct idem__begin_args *args,
                     struct idem__blob *existing_out, idem__store_done cb,
                     void *ud)
{
    static const char junk[] = "not a record";

    (void)s, (void)key, (void)klen, (void)rec, (void)rlen, (void)args;
    (void)cb, (void)ud;
    if (atomic_load(&te.now_ms) % 2)
        return IDEM_EIO;
    *existing_out = (struct idem__blob){ junk, sizeof(junk), NULL, NULL };
    return IDEM_EEXIST;
}

static void nothing(struct idem_store *s)
{
    (void)s;
}

static const struct idem__store_ops bad_ops = { .begin = bad_begin,
                                                .tick = nothing };

static void test_store_failures_are_unavailable(void **state)
{
    struct idem_store bad = { &bad_ops };
    struct idem_engine_opts o = { .store = &bad };
    struct idem_engine *e = engine(&o);
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    test_clock_advance(&te, 1); /* odd: EIO */
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_UNAVAILABLE);
    assert_int_equal(d.status, 503);
    idem_call_free(call);
    test_clock_advance(&te, 1); /* even: an unreadable record */
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_UNAVAILABLE);
    assert_string_equal(d.detail,
                        "the stored record for this key is unreadable");
    idem_call_free(call);
    idem_engine_tick(e);
    done(e);
}

/* -- Allocation failure ---------------------------------------------- */

/* A whole life with allocation n failing: each step either works or
 * fails cleanly, and nothing is left allocated. Returns the failures. */
static long failing_life(long n)
{
    struct idem_engine_opts o = { .env = &te.env };
    struct idem_engine *e = NULL;
    struct idem_decision d;
    struct idem_call *call = NULL;
    struct treq t;
    int i, rc;

    test_env_init(&te, 1000);
    test_env_fail_in(&te, n);
    if (idem_engine_new(&o, &e) != IDEM_OK)
        goto out;
    for (i = 0; i < 3; i++) {
        treq_init(&t, "POST", "/o", "k", NULL, "{}");
        if (idem_call_new(e, &call) != IDEM_OK)
            continue;
        rc = idem_call_start(call, &t.r, &d);
        if (rc == IDEM_OK &&
            idem_call_decide(call, NULL, NULL, &d) == IDEM_OK &&
            d.outcome == IDEM_OUTCOME_PROCEED) {
            rc = complete_with(call, 201, "{}", NULL);
            assert_true(rc == IDEM_OK || rc == IDEM_ENOMEM);
            continue;
        }
        idem_call_free(call);
    }
    idem_engine_free(e);
out:
    assert_int_equal(atomic_load(&te.live), 0);
    return atomic_load(&te.failures);
}

static void test_allocation_failure_sweep(void **state)
{
    long n;

    (void)state;
    n = test_alloc_sweep(failing_life, 10000);
    assert_true(n > 10);
}

/* The public header helpers idemproxy builds on. */
static void test_header_helpers(void **state)
{
    static const char *const hop[] = {
        "te",         "Trailer",          "UPGRADE",          "connection",
        "Keep-Alive", "Proxy-Connection", "transfer-encoding"
    };
    /* end-to-end, some of a hop-by-hop name's length */
    static const char *const end_to_end[] = {
        "Date",           "Tr", "Trailers", "User-Agent", "Keep-Alivf",
        "Content-Length", ""
    };
    size_t i;

    (void)state;
    assert_true(idem_header_name_is("content-LENGTH", 14, "Content-Length"));
    assert_false(idem_header_name_is("Content-Lengt", 13, "Content-Length"));
    assert_false(idem_header_name_is("Content-Lengths", 15, "Content-Length"));
    assert_false(idem_header_name_is("Content_Length", 14, "Content-Length"));
    assert_false(idem_header_name_is("X~", 2, "X^")); /* not letters */
    assert_false(idem_header_name_is(NULL, 0, "A"));
    assert_true(idem_header_name_is("", 0, ""));
    assert_true(idem_header_is_token("X-Request-ID", 12));
    assert_true(idem_header_is_token("!#$%&'*+-.^_`|~09azAZ", 21));
    assert_true(idem_header_is_token("", 0));
    assert_false(idem_header_is_token("Name ", 5));
    assert_false(idem_header_is_token("a:b", 3));
    assert_false(idem_header_is_token("\x80", 1));
    assert_false(idem_header_is_token(NULL, 1));
    for (i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        assert_true(idem_header_is_hop_by_hop(hop[i], strlen(hop[i])));
    for (i = 0; i < sizeof(end_to_end) / sizeof(end_to_end[0]); i++)
        assert_false(
            idem_header_is_hop_by_hop(end_to_end[i], strlen(end_to_end[i])));
    assert_false(idem_header_is_hop_by_hop(NULL, 2));
    assert_true(idem_header_list_has(" close ,Upgrade", 15, "upgrade", 7));
    assert_false(idem_header_list_has("keep-alive", 10, "keep", 4));
    assert_true(idem_header_list_only("Keep-Alive", 10, "keep-alive", 10));
    assert_true(idem_header_list_only(" keep-alive, ,keep-alive ", 25,
                                      "keep-alive", 10));
    assert_true(idem_header_list_only("", 0, "keep-alive", 10));
    assert_false(
        idem_header_list_only("keep-alive, X-Secret", 20, "keep-alive", 10));
    assert_false(idem_header_list_only("close", 5, "keep-alive", 10));
    assert_false(idem_header_list_only(NULL, 3, "keep-alive", 10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_what_is_subject),
        cmocka_unit_test(test_header_helpers),
        cmocka_unit_test(test_invalid_keys),
        cmocka_unit_test(test_alternative_key_header),
        cmocka_unit_test(test_proceed_complete_replay),
        cmocka_unit_test(test_fingerprint_mismatch),
        cmocka_unit_test(test_conflict_while_in_flight),
        cmocka_unit_test(test_scopes_keep_clients_apart),
        cmocka_unit_test(test_lease_expiry_and_stale_owner),
        cmocka_unit_test(test_abort_and_free_release_the_key),
        cmocka_unit_test(test_unknown_outcomes_hold_the_key),
        cmocka_unit_test(test_renewal_moves_the_lease),
        cmocka_unit_test(test_storage_policy),
        cmocka_unit_test(test_no_store_policy_header),
        cmocka_unit_test(test_large_response_keeps_status_only),
        cmocka_unit_test(test_lifetime_ends),
        cmocka_unit_test(test_call_misuse),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_store_failures_are_unavailable),
        cmocka_unit_test(test_allocation_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
