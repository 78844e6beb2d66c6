/* The engine's rules against the Redis store, and the store's own duties:
 * key layout, fencing, lease renewal, polling waits, cancel while a begin
 * is in flight, NOSCRIPT, Redis stopped, paused and back. Each test
 * group runs a redis-server of its own on a free loopback port. */
#include <event2/event.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "engine_helpers.h"
#include "idem/redis_libevent.h"
#include "redis_server.h"

#define LOOP_LIMIT_MS 5000

static struct test_redis server;
static struct event_base *base;
static struct idem_redis_loop loop; /* base's, for attach */

/* -- Running asynchronous calls to their answer ----------------------- */

struct answer {
    bool done;
    struct idem_decision d;
    int rc;
    bool stored;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Run the loop until *flag, failing the test after LOOP_LIMIT_MS. */
static void loop_until(const bool *flag)
{
    uint64_t end = mono_ms() + LOOP_LIMIT_MS;

    while (!*flag) {
        assert_true(mono_ms() < end);
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        if (!*flag)
            test_redis_sleep_ms(1);
    }
}

/* Run the loop for ms. */
static void loop_for(long ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;

    while (mono_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        test_redis_sleep_ms(1);
    }
}

static void on_decided(struct idem_call *call, const struct idem_decision *d,
                       void *ud)
{
    struct answer *a = ud;

    (void)call;
    a->d = *d;
    a->done = true;
}

static void on_finished(int rc, bool stored, void *ud)
{
    struct answer *a = ud;

    a->rc = rc;
    a->stored = stored;
    a->done = true;
}

/* Start t on a fresh call and decide it, the answer left to the loop:
 * a->done once it is in a->d (at once if the call needed no store, or
 * the store answered before returning). Whether the call was decided (not
 * PASS or INVALID at the start). */
static bool decide_async(struct idem_engine *e, const struct treq *t,
                         struct idem_call **call_out, struct answer *a)
{
    bool started = start_call(e, t, call_out, &a->d);
    int rc;

    a->done = !started;
    if (!started)
        return false;
    rc = idem_call_decide(*call_out, on_decided, a, &a->d);
    if (rc != IDEM_EINPROGRESS) {
        assert_int_equal(rc, IDEM_OK);
        a->done = true;
    }
    return true;
}

/* Start t on a fresh call and decide it, waiting for the answer. */
static enum idem_outcome decide(struct idem_engine *e, const struct treq *t,
                                struct idem_call **call_out,
                                struct idem_decision *d)
{
    struct answer a = { 0 };

    decide_async(e, t, call_out, &a);
    loop_until(&a.done);
    *d = a.d;
    return d->outcome;
}

static enum idem_outcome decide_free(struct idem_engine *e,
                                     const struct treq *t)
{
    struct idem_decision d;
    struct idem_call *call;
    enum idem_outcome o = decide(e, t, &call, &d);

    idem_call_free(call);
    return o;
}

/* Decide t every 20 ms until it proceeds: the store is back (fails the
 * test after LOOP_LIMIT_MS). */
static void proceeds_again(struct idem_engine *e, const struct treq *t)
{
    uint64_t end = mono_ms() + LOOP_LIMIT_MS;

    while (decide_free(e, t) != IDEM_OUTCOME_PROCEED) {
        assert_true(mono_ms() < end);
        loop_for(20);
    }
}

/* Wait for the answer of a call given a callback (it returned rc: IDEM_OK
 * when the callback is to come). */
static int settle(int rc, struct answer *a)
{
    if (rc != IDEM_OK)
        return rc;
    loop_until(&a->done);
    return a->rc;
}

/* Complete call with status and body, wait for Redis, free the call. */
static int finish(struct idem_call *call, unsigned status, const char *body,
                  bool *stored)
{
    static const struct idem_header hs[] = {
        { S("Content-Type"), S("application/json") },
        { S("Location"), S("/orders/42") },
    };
    struct idem_response resp = { status, hs, 2, body, strlen(body) };
    struct answer a = { 0 };
    int rc = settle(idem_call_complete(call, &resp, on_finished, &a), &a);

    idem_call_free(call);
    if (stored)
        *stored = a.stored;
    return rc;
}

static int renew(struct idem_call *call)
{
    struct answer a = { 0 };

    return settle(idem_call_renew(call, on_finished, &a), &a);
}

/* -- Fixtures ----------------------------------------------------------- */

struct fixture {
    struct idem_store *store;
    struct idem_engine *e;
};

static struct fixture fx;

static struct idem_store *redis_store(const char *prefix, int64_t timeout_ms)
{
    char url[64];
    struct idem_store_redis_opts o = { .url = url,
                                       .prefix = prefix,
                                       .command_timeout_ms = timeout_ms,
                                       .connect_timeout_ms = timeout_ms };
    struct idem_store *s = NULL;

    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", server.port);
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_OK);
    assert_int_equal(idem_store_redis_attach(s, &loop), IDEM_OK);
    return s;
}

static void wait_connected(struct idem_store *s)
{
    struct idem_store_redis_stats st;
    uint64_t end = mono_ms() + LOOP_LIMIT_MS;

    for (;;) {
        idem_store_redis_stats(s, &st);
        if (st.connections == 1)
            return;
        assert_true(mono_ms() < end);
        loop_for(5);
    }
}

/* An engine on a Redis store; opts may set anything but the store. */
static struct idem_engine *engine_on_redis(struct idem_engine_opts o)
{
    static struct idem_env env;

    fx.store = redis_store(NULL, 500);
    idem_store_redis_timers(&env); /* wait mode polls on base */
    o.env = &env;
    o.store = fx.store;
    assert_int_equal(idem_engine_new(&o, &fx.e), IDEM_OK);
    wait_connected(fx.store);
    return fx.e;
}

static int setup_group(void **state)
{
    (void)state;
    if (test_redis_start(&server) != 0)
        return -1;
    base = event_base_new();
    if (base)
        idem_redis_libevent(base, &loop);
    return base ? 0 : -1;
}

static int teardown_group(void **state)
{
    (void)state;
    test_redis_stop(&server);
    event_base_free(base);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    fx = (struct fixture){ NULL, NULL };
    return test_redis_cmd(&server, "FLUSHALL");
}

/* Nothing in flight, nothing pending, the connection gone. */
static int teardown(void **state)
{
    struct idem_engine_stats es;
    struct idem_store_redis_stats ss;

    (void)state;
    if (fx.store) {
        idem_store_redis_detach(fx.store);
        idem_store_redis_stats(fx.store, &ss);
        idem_engine_stats(fx.e, &es);
        assert_int_equal(ss.pending, 0);
        assert_int_equal(es.in_flight, 0);
        assert_int_equal(es.waiting, 0);
    }
    idem_engine_free(fx.e);
    idem_store_free(fx.store);
    return 0;
}

/* -- Options ------------------------------------------------------------ */

static void test_urls(void **state)
{
    static const char *const good[] = {
        "redis://localhost",           "redis://127.0.0.1:6380/2",
        "redis://:secret@host:1/0",    "redis://user:pw@host",
        "redis://[::1]:6379/1",        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=3",
    };
    static const char *const bad[] = {
        "",
        "http://host",
        "redis://",
        "redis://host:0",
        "redis://host:65536",
        "redis://host:12x",
        "redis://host/db",
        "redis://user@host",
        "redis://[::1",
        "unix://",
        "unix://relative",
        "unix:///s?db=x",
        "unix:///s?x=1",
    };
    struct idem_store_redis_opts o = { 0 };
    struct idem_store *s;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        o.url = good[i];
        s = NULL;
        assert_int_equal(idem_store_redis_new(&o, &s), IDEM_OK);
        idem_store_free(s);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.url = bad[i];
        s = NULL;
        assert_int_equal(idem_store_redis_new(&o, &s), IDEM_EINVAL);
        assert_null(s);
    }
    o = (struct idem_store_redis_opts){ .url = "redis://h", .prefix = "a{b" };
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_EINVAL);
    o.prefix = "";
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_EINVAL);
    assert_int_equal(idem_store_redis_new(NULL, &s), IDEM_EINVAL);
}

static void test_attach_rules(void **state)
{
    struct idem_store *mem = NULL, *s = redis_store(NULL, 500);

    (void)state;
    assert_int_equal(idem_store_redis_attach(s, &loop), IDEM_EINVAL);
    assert_int_equal(idem_store_memory_new(NULL, &mem), IDEM_OK);
    assert_int_equal(idem_store_redis_attach(mem, &loop), IDEM_EINVAL);
    idem_store_redis_detach(mem); /* harmless */
    idem_store_redis_detach(s);
    idem_store_redis_detach(s); /* twice: harmless */
    idem_store_free(mem);
    idem_store_free(s);
}

/* -- The rules ---------------------------------------------------------- */

static void test_proceed_store_replay(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_decision d;
    struct idem_call *call, *again;
    struct treq t;
    bool stored = false;

    (void)state;
    treq_init(&t, "POST", "/orders", "k1", "Bearer a", "{\"n\":1}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_CONFLICT);
    assert_int_equal(finish(call, 201, "{\"id\":42}", &stored), IDEM_OK);
    assert_true(stored);
    assert_int_equal(decide(e, &t, &again, &d), IDEM_OUTCOME_REPLAY);
    assert_int_equal(d.status, 201);
    assert_int_equal(d.replay.body_len, 9);
    assert_memory_equal(d.replay.body, "{\"id\":42}", 9);
    assert_int_equal(d.replay.nheaders, 2);
    assert_memory_equal(d.replay.headers[1].value, "/orders/42", 10);
    idem_call_free(again);
    treq_init(&t, "POST", "/orders", "k1", "Bearer a", "{\"n\":2}");
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_MISMATCH);
}

/* The record sits at "<prefix>:{<scope hex>:<key>}" with the lifetime. */
static void test_key_layout(void **state)
{
    struct idem_engine_opts o = { .lifetime_ms = 60000 };
    struct idem_engine *e;
    struct idem_decision d;
    struct idem_call *call;
    redisContext *c;
    redisReply *r;
    struct treq t;

    (void)state;
    fx.store = redis_store("shop", 500);
    o.store = fx.store;
    assert_int_equal(idem_engine_new(&o, &fx.e), IDEM_OK);
    e = fx.e;
    wait_connected(fx.store);
    treq_init(&t, "POST", "/o", "key-{x}", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(finish(call, 200, "ok", NULL), IDEM_OK);
    assert_non_null(c = test_redis_client(&server));
    r = redisCommand(c, "KEYS shop:*");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 1);
    assert_int_equal(r->element[0]->len, 4 + 2 + 32 + 1 + 7 + 1);
    assert_memory_equal(r->element[0]->str, "shop:{", 6);
    assert_memory_equal(r->element[0]->str + 38, ":key-{x}}", 9);
    freeReplyObject(r);
    r = redisCommand(c, "EVAL %s 0",
                     "local k = redis.call('KEYS', 'shop:*') "
                     "return redis.call('PTTL', k[1])");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_in_range(r->integer, 50000, 60000);
    freeReplyObject(r);
    redisFree(c);
}

/* replicas = 1 on a server with none: WAIT counts 0, so a begin is a
 * store failure (UNAVAILABLE, never PROCEED), its marker is deleted
 * again, and the WAIT timeout is counted. */
static void test_wait_without_replicas_is_unavailable(void **state)
{
    struct idem_store_redis_opts so = { .command_timeout_ms = 300,
                                        .replicas = 1 };
    struct idem_engine_opts o = { 0 };
    struct idem_store_redis_stats st;
    redisContext *c;
    redisReply *r;
    char url[64];
    struct treq t;

    (void)state;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", server.port);
    so.url = url;
    assert_int_equal(idem_store_redis_new(&so, &fx.store), IDEM_OK);
    assert_int_equal(idem_store_redis_attach(fx.store, &loop), IDEM_OK);
    o.store = fx.store;
    assert_int_equal(idem_engine_new(&o, &fx.e), IDEM_OK);
    wait_connected(fx.store);
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide_free(fx.e, &t), IDEM_OUTCOME_UNAVAILABLE);
    loop_for(100); /* the undo */
    assert_non_null(c = test_redis_client(&server));
    r = redisCommand(c, "DBSIZE");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    redisFree(c);
    idem_store_redis_stats(fx.store, &st);
    assert_true(st.wait_timeouts >= 1);
    assert_int_equal(st.redirects, 0);
}

static void test_abort_and_policy_release(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    static const struct idem_header no_store[] = {
        { S("Idempotency-Policy"), S("no-store") },
    };
    struct idem_response resp = { 200, no_store, 1, "x", 1 };
    struct idem_engine_stats st;
    struct idem_decision d;
    struct idem_call *call;
    struct answer a = { 0 };
    struct treq t;
    bool stored = true;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(settle(idem_call_abort(call, on_finished, &a), &a),
                     IDEM_OK);
    idem_call_free(call);
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(finish(call, 503, "busy", &stored), IDEM_OK);
    assert_false(stored);
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    a.done = false;
    assert_int_equal(
        settle(idem_call_complete(call, &resp, on_finished, &a), &a), IDEM_OK);
    assert_false(a.stored);
    idem_call_free(call);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_PROCEED);
    /* the proceed just freed was aborted: wait for it to land */
    loop_for(50);
    idem_engine_stats(e, &st);
    assert_int_equal(st.not_stored, 2);
    assert_int_equal(st.stored, 0);
}

static void test_scopes_are_apart(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_decision d;
    struct idem_call *a, *b;
    struct treq ta, tb;

    (void)state;
    treq_init(&ta, "POST", "/o", "same", "Bearer alice", "{}");
    treq_init(&tb, "POST", "/o", "same", "Bearer bob", "{}");
    assert_int_equal(decide(e, &ta, &a, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(decide(e, &tb, &b, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(finish(a, 200, "alice", NULL), IDEM_OK);
    assert_int_equal(finish(b, 200, "bob", NULL), IDEM_OK);
    assert_int_equal(decide(e, &ta, &a, &d), IDEM_OUTCOME_REPLAY);
    assert_memory_equal(d.replay.body, "alice", 5);
    idem_call_free(a);
}

/* A body over max_stored_body keeps status and headers only; a record
 * ends with its lifetime (Redis's TTL), and the key runs again. */
static void test_large_body_and_lifetime(void **state)
{
    struct idem_engine *e = engine_on_redis(
        (struct idem_engine_opts){ .max_stored_body = 4, .lifetime_ms = 200 });
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(finish(call, 201, "0123456789", NULL), IDEM_OK);
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    assert_int_equal(d.status, 201);
    assert_true(d.body_omitted);
    assert_int_equal(d.replay.body_len, 0);
    idem_call_free(call);
    test_redis_sleep_ms(300);
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(finish(call, 201, "{}", NULL), IDEM_OK);
}

/* unix:///path: the same store over a Unix socket, with a database. */
static void test_unix_socket(void **state)
{
    char path[64], url[96];
    struct test_redis local = { .unix_path = path };
    struct idem_store_redis_opts o = { .url = url };
    struct idem_engine_opts eo = { 0 };
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    snprintf(path, sizeof(path), "/tmp/idem-test-redis-%d.sock", (int)getpid());
    snprintf(url, sizeof(url), "unix://%s?db=3", path);
    assert_int_equal(test_redis_start_on(&local), 0);
    assert_int_equal(idem_store_redis_new(&o, &fx.store), IDEM_OK);
    assert_int_equal(idem_store_redis_attach(fx.store, &loop), IDEM_OK);
    eo.store = fx.store;
    assert_int_equal(idem_engine_new(&eo, &fx.e), IDEM_OK);
    wait_connected(fx.store);
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(fx.e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(finish(call, 200, "unix", NULL), IDEM_OK);
    assert_int_equal(decide(fx.e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    idem_call_free(call);
    assert_int_equal(test_redis_cmd(&local, "SELECT 3"), 0);
    test_redis_stop(&local);
    unlink(path);
}

/* A password in the URL is sent with AUTH; a wrong one leaves the store
 * unavailable (and says why), not hanging. */
static void test_password(void **state)
{
    char good[96], bad[96];
    struct idem_store_redis_opts o = { .url = good };
    struct idem_engine_opts eo = { 0 };
    struct idem_store *wrong = NULL;
    struct idem_engine *we = NULL;
    redisContext *c;
    redisReply *r;
    struct treq t;

    (void)state;
    snprintf(good, sizeof(good), "redis://:s3cret@127.0.0.1:%u", server.port);
    snprintf(bad, sizeof(bad), "redis://:nope@127.0.0.1:%u", server.port);
    assert_int_equal(test_redis_cmd(&server, "CONFIG SET requirepass s3cret"),
                     0);
    assert_int_equal(idem_store_redis_new(&o, &fx.store), IDEM_OK);
    assert_int_equal(idem_store_redis_attach(fx.store, &loop), IDEM_OK);
    o.url = bad;
    assert_int_equal(idem_store_redis_new(&o, &wrong), IDEM_OK);
    assert_int_equal(idem_store_redis_attach(wrong, &loop), IDEM_OK);
    eo.store = fx.store;
    assert_int_equal(idem_engine_new(&eo, &fx.e), IDEM_OK);
    eo.store = wrong;
    assert_int_equal(idem_engine_new(&eo, &we), IDEM_OK);
    wait_connected(fx.store);
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide_free(fx.e, &t), IDEM_OUTCOME_PROCEED);
    assert_int_equal(decide_free(we, &t), IDEM_OUTCOME_UNAVAILABLE);
    idem_store_redis_detach(wrong);
    idem_engine_free(we);
    idem_store_free(wrong);
    assert_non_null(c = test_redis_client(&server));
    freeReplyObject(redisCommand(c, "AUTH s3cret"));
    r = redisCommand(c, "CONFIG SET requirepass %s", "");
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(c);
}

/* -- Leases ------------------------------------------------------------- */

/* An owner whose lease ran out cannot overwrite the next owner. */
static void test_fencing(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){
        .lease_ms = 100, .unknown_outcome = IDEM_UNKNOWN_RELEASE });
    struct idem_engine_stats st;
    struct idem_decision d;
    struct idem_call *stale, *next;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &stale, &d), IDEM_OUTCOME_PROCEED);
    test_redis_sleep_ms(150);
    assert_int_equal(decide(e, &t, &next, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(renew(stale), IDEM_ESTALE);
    assert_int_equal(finish(stale, 200, "stale", NULL), IDEM_ESTALE);
    assert_int_equal(finish(next, 200, "next", NULL), IDEM_OK);
    assert_int_equal(decide(e, &t, &next, &d), IDEM_OUTCOME_REPLAY);
    assert_memory_equal(d.replay.body, "next", 4);
    idem_call_free(next);
    idem_engine_stats(e, &st);
    assert_int_equal(st.stale, 2);
}

/* Held (the default): a lease that ran out on its owner becomes "outcome
 * unknown" in the script, for the lifetime; so does a call said unknown.
 * The owner, back late, may not write. */
static void test_lapsed_lease_is_unknown(void **state)
{
    struct idem_engine *e = engine_on_redis(
        (struct idem_engine_opts){ .lease_ms = 100, .lifetime_ms = 60000 });
    struct idem_engine_stats st;
    struct idem_decision d;
    struct idem_call *stale, *call;
    struct answer a = { 0 };
    struct treq t, other;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &stale, &d), IDEM_OUTCOME_PROCEED);
    test_redis_sleep_ms(150);
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_UNKNOWN);
    assert_int_equal(d.status, 502);
    idem_call_free(call);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_UNKNOWN);
    treq_init(&other, "POST", "/o", "k", NULL, "{\"x\":1}");
    assert_int_equal(decide_free(e, &other), IDEM_OUTCOME_MISMATCH);
    assert_int_equal(renew(stale), IDEM_ESTALE);
    assert_int_equal(finish(stale, 200, "late", NULL), IDEM_ESTALE);
    /* said unknown by its owner */
    treq_init(&t, "POST", "/o", "k2", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(settle(idem_call_unknown(call, on_finished, &a), &a),
                     IDEM_OK);
    idem_call_free(call);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_UNKNOWN);
    idem_engine_stats(e, &st);
    assert_int_equal(st.unknown, 1);
    assert_int_equal(st.in_flight, 0);
}

/* Renewed every half lease, a slow request keeps its key past the lease. */
static void test_renewal_keeps_a_slow_request_single(void **state)
{
    struct idem_engine *e =
        engine_on_redis((struct idem_engine_opts){ .lease_ms = 200 });
    struct idem_engine_stats st;
    struct idem_decision d;
    struct idem_call *slow;
    struct treq t;
    int i;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &slow, &d), IDEM_OUTCOME_PROCEED);
    for (i = 0; i < 6; i++) { /* 600 ms: three leases */
        test_redis_sleep_ms(100);
        assert_int_equal(renew(slow), IDEM_OK);
        assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_CONFLICT);
    }
    assert_int_equal(finish(slow, 200, "once", NULL), IDEM_OK);
    idem_engine_stats(e, &st);
    assert_int_equal(st.renewed, 6);
    assert_int_equal(st.stale, 0);
}

/* -- Waiting and cancelling --------------------------------------------- */

static void test_wait_polls_to_the_replay(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){
        .conflict = IDEM_CONFLICT_WAIT, .wait_ms = 3000 });
    struct idem_engine_stats st;
    struct idem_decision d, wd;
    struct idem_call *owner, *waiter;
    struct answer a = { 0 };
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &owner, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_call_new(e, &waiter), IDEM_OK);
    assert_int_equal(idem_call_start(waiter, &t.r, &wd), IDEM_OK);
    assert_int_equal(idem_call_body(waiter, "{}", 2), IDEM_OK);
    assert_int_equal(idem_call_decide(waiter, on_decided, &a, &wd),
                     IDEM_EINPROGRESS);
    loop_for(100);
    assert_false(a.done);
    idem_engine_stats(e, &st);
    assert_int_equal(st.waiting, 1);
    assert_int_equal(finish(owner, 200, "done", NULL), IDEM_OK);
    loop_until(&a.done);
    assert_int_equal(a.d.outcome, IDEM_OUTCOME_REPLAY);
    assert_memory_equal(a.d.replay.body, "done", 4);
    idem_call_free(waiter);
}

static void test_wait_bound_is_a_conflict(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){
        .conflict = IDEM_CONFLICT_WAIT, .wait_ms = 150 });
    struct idem_engine_stats st;
    struct idem_decision d;
    struct idem_call *owner;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &owner, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_CONFLICT);
    idem_engine_stats(e, &st);
    assert_int_equal(st.wait_timeouts, 1);
    assert_int_equal(st.waiting, 0);
    assert_int_equal(finish(owner, 200, "x", NULL), IDEM_OK);
}

/* A call let go while its begin is in flight: the begin that won the key
 * gives it back; one waiting is simply forgotten. */
static void test_cancel_in_flight(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){
        .conflict = IDEM_CONFLICT_WAIT, .wait_ms = 3000 });
    struct idem_decision d;
    struct idem_call *call, *owner;
    struct answer a = { 0 };
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(idem_call_new(e, &call), IDEM_OK);
    assert_int_equal(idem_call_start(call, &t.r, &d), IDEM_OK);
    assert_int_equal(idem_call_body(call, "{}", 2), IDEM_OK);
    assert_int_equal(idem_call_decide(call, on_decided, &a, &d),
                     IDEM_EINPROGRESS);
    assert_int_equal(idem_call_cancel(call), IDEM_OK);
    assert_int_equal(idem_call_cancel(call), IDEM_ENOTFOUND);
    idem_call_free(call);
    loop_for(50);
    assert_false(a.done);
    assert_int_equal(decide(e, &t, &owner, &d), IDEM_OUTCOME_PROCEED);
    /* now one that polls, freed mid-wait */
    assert_int_equal(idem_call_new(e, &call), IDEM_OK);
    assert_int_equal(idem_call_start(call, &t.r, &d), IDEM_OK);
    assert_int_equal(idem_call_body(call, "{}", 2), IDEM_OK);
    assert_int_equal(idem_call_decide(call, on_decided, &a, &d),
                     IDEM_EINPROGRESS);
    loop_for(60);
    idem_call_free(call);
    loop_for(50);
    assert_false(a.done);
    assert_int_equal(finish(owner, 200, "x", NULL), IDEM_OK);
}

/* -- Redis misbehaving -------------------------------------------------- */

static void test_noscript_falls_back_to_eval(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    assert_int_equal(test_redis_cmd(&server, "SCRIPT FLUSH"), 0);
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(test_redis_cmd(&server, "SCRIPT FLUSH"), 0);
    assert_int_equal(finish(call, 200, "x", NULL), IDEM_OK);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_REPLAY);
}

/* Stopped: UNAVAILABLE at once, nothing hangs. Back on the same port:
 * the next calls work with no restart. */
static void test_redis_stopped_and_back(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_store_redis_stats st;
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    test_redis_stop(&server);
    /* the owner's completion fails; the key would be freed by its lease */
    assert_int_equal(finish(call, 200, "x", NULL), IDEM_EIO);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_UNAVAILABLE);
    assert_int_equal(test_redis_start_on(&server), 0);
    proceeds_again(e, &t);
    idem_store_redis_stats(fx.store, &st);
    assert_int_equal(st.connections, 1);
    assert_true(st.connects >= 2);
    assert_true(st.errors >= 2);
}

/* Away long enough for the backoff to grow (its attempts at 50, 150, 350,
 * 750 and 1550 ms; the next at 3150), each refused and none taken for a
 * connection made; then back: the first call that finds the link down
 * brings the attempt forward, so calls proceed again within a few of
 * proceeds_again's 20 ms steps, not 1.5 s later. */
static void test_redis_back_soon_after_long_absence(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_store_redis_stats st;
    struct treq t;
    uint64_t t0, connects;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    idem_store_redis_stats(fx.store, &st);
    connects = st.connects;
    test_redis_stop(&server);
    loop_for(1600);
    idem_store_redis_stats(fx.store, &st);
    assert_int_equal(st.connects, connects);
    assert_int_equal(st.connections, 0);
    assert_int_equal(test_redis_start_on(&server), 0);
    t0 = mono_ms();
    proceeds_again(e, &t);
    assert_true(mono_ms() - t0 < 800);
}

/* Decide wave calls with keys "<tag>-<i>" (kept in keys, the calls in
 * calls, their answers in a), leaving the answers to the loop. */
#define WAVE 16
static void decide_wave(struct idem_engine *e, const char *tag, char keys[][16],
                        struct treq *t, struct idem_call **calls,
                        struct answer *a)
{
    int i;

    for (i = 0; i < WAVE; i++) {
        snprintf(keys[i], 16, "%s-%d", tag, i);
        treq_init(&t[i], "POST", "/o", keys[i], NULL, "{}");
        a[i] = (struct answer){ 0 };
        assert_true(decide_async(e, &t[i], &calls[i], &a[i]));
    }
}

/* SIGKILLed with commands it has not read in its socket: the kernel
 * resets the connection, and writes after that fail with EPIPE. SIGPIPE
 * keeps its default action here (which ends the process; see main), yet
 * every call is answered, unavailable: the store never raises it. */
static void test_reset_raises_no_sigpipe(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_call *calls[2][WAVE];
    struct answer a[2][WAVE];
    char keys[2][WAVE][16];
    struct treq t[2][WAVE];
    int i, w, status;

    (void)state;
    assert_int_equal(kill(server.pid, SIGSTOP), 0);
    decide_wave(e, "unread", keys[0], t[0], calls[0], a[0]);
    loop_for(50); /* written, and never read */
    assert_int_equal(kill(server.pid, SIGKILL), 0);
    assert_int_equal(waitpid(server.pid, &status, 0), server.pid);
    server.pid = 0;
    decide_wave(e, "after", keys[1], t[1], calls[1], a[1]);
    for (w = 0; w < 2; w++)
        for (i = 0; i < WAVE; i++) {
            loop_until(&a[w][i].done);
            assert_int_equal(a[w][i].d.outcome, IDEM_OUTCOME_UNAVAILABLE);
            idem_call_free(calls[w][i]);
        }
    assert_int_equal(test_redis_start_on(&server), 0);
}

/* Paused (SIGSTOP): commands time out, fail, and the link is remade. The
 * begin that timed out may still run when Redis resumes (it was sent):
 * its key then waits for its lease, so the check after uses another. */
static void test_redis_paused_times_out(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_store_redis_stats st;
    struct treq t;
    uint64_t t0;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    kill(server.pid, SIGSTOP);
    t0 = mono_ms();
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_UNAVAILABLE);
    assert_true(mono_ms() - t0 >= 400); /* the 500 ms deadline, give or take */
    kill(server.pid, SIGCONT);
    treq_init(&t, "POST", "/o", "k2", NULL, "{}");
    proceeds_again(e, &t);
    idem_store_redis_stats(fx.store, &st);
    assert_true(st.timeouts >= 1);
}

/* The server turned into a read-only replica (as after a failover seen
 * through a fixed address): UNAVAILABLE, and the connection is remade,
 * so writes work again once the address leads to a primary. */
static void test_readonly_replica_reconnects(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_store_redis_stats st;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(test_redis_cmd(&server, "REPLICAOF 127.0.0.1 1"), 0);
    assert_int_equal(decide_free(e, &t), IDEM_OUTCOME_UNAVAILABLE);
    assert_int_equal(test_redis_cmd(&server, "REPLICAOF NO ONE"), 0);
    proceeds_again(e, &t);
    idem_store_redis_stats(fx.store, &st);
    assert_true(st.connects >= 2);
}

/* Detach lets a completion in flight land before it closes. */
static void test_detach_drains(void **state)
{
    struct idem_engine *e = engine_on_redis((struct idem_engine_opts){ 0 });
    struct idem_response resp = { 200, NULL, 0, "kept", 4 };
    struct idem_decision d;
    struct idem_call *call;
    struct treq t;

    (void)state;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_call_complete(call, &resp, NULL, NULL),
                     IDEM_EINPROGRESS);
    idem_call_free(call);
    idem_store_redis_detach(fx.store);
    assert_int_equal(idem_store_redis_attach(fx.store, &loop), IDEM_OK);
    wait_connected(fx.store);
    assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_REPLAY);
    assert_memory_equal(d.replay.body, "kept", 4);
    idem_call_free(call);
}

/* Many distinct keys: nothing left pending or in flight on our side, and
 * every record in Redis carries a TTL. */
static void test_many_keys_leave_nothing(void **state)
{
    struct idem_engine *e =
        engine_on_redis((struct idem_engine_opts){ .lifetime_ms = 2000 });
    struct idem_engine_stats st;
    struct idem_decision d;
    struct idem_call *call;
    redisContext *c;
    redisReply *r;
    struct treq t;
    char key[32];
    int i;

    (void)state;
    for (i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        treq_init(&t, "POST", "/o", key, NULL, "{}");
        assert_int_equal(decide(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
        assert_int_equal(finish(call, 200, "x", NULL), IDEM_OK);
    }
    idem_engine_stats(e, &st);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.stored, 2000);
    assert_non_null(c = test_redis_client(&server));
    r = redisCommand(c, "EVAL %s 0",
                     "local n = 0 for _, k in ipairs(redis.call('KEYS', "
                     "'idem:*')) do if redis.call('PTTL', k) < 0 then n = "
                     "n + 1 end end return n");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    redisFree(c);
}

/* -- Allocation failure ------------------------------------------------- */

static struct test_env te;

static uint64_t real_ms(void *ud)
{
    (void)ud;
    return mono_ms();
}

static uint64_t real_wall_ms(void *ud)
{
    struct timespec ts;

    (void)ud;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Decide t on a fresh call without asserting: its outcome and the call
 * in *out, or 0 (nothing in *out) if a step failed. */
static enum idem_outcome try_decide(struct idem_engine *e, const struct treq *t,
                                    struct idem_call **out)
{
    struct answer a = { 0 };
    struct idem_decision d;
    struct idem_call *call;
    int rc;

    *out = NULL;
    if (idem_call_new(e, &call) != IDEM_OK)
        return 0;
    rc = idem_call_start(call, &t->r, &d);
    if (rc == IDEM_OK)
        rc = idem_call_body(call, "{}", 2);
    if (rc == IDEM_OK)
        rc = idem_call_decide(call, on_decided, &a, &d);
    if (rc == IDEM_EINPROGRESS) {
        loop_until(&a.done);
        d = a.d;
    } else if (rc != IDEM_OK) {
        idem_call_free(call);
        return 0;
    }
    *out = call;
    return d.outcome;
}

/* A store's and an engine's whole life with our allocation n failing:
 * proceed, a conflict meanwhile, complete, a replay, a call freed while
 * its begin is in flight. Every step works or fails cleanly; nothing is
 * left allocated. Returns the failures. */
static long failing_life(long n)
{
    struct idem_engine_opts eo = { .env = &te.env };
    char url[64];
    struct idem_store_redis_opts ro = { .url = url, .env = &te.env };
    struct idem_store *s = NULL;
    struct idem_engine *e = NULL;
    struct idem_call *call, *other;
    struct treq t;
    int i;

    test_env_init(&te, 0);
    te.env.now_ms = real_ms;
    te.env.wall_ms = real_wall_ms;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", server.port);
    assert_int_equal(test_redis_cmd(&server, "FLUSHALL"), 0);
    test_env_fail_in(&te, n);
    if (idem_store_redis_new(&ro, &s) != IDEM_OK)
        goto out;
    if (idem_store_redis_attach(s, &loop) == IDEM_OK)
        loop_for(20); /* connected, most likely */
    eo.store = s;
    if (idem_engine_new(&eo, &e) != IDEM_OK)
        goto out;
    treq_init(&t, "POST", "/o", "k", NULL, "{}");
    for (i = 0; i < 2; i++) {
        if (try_decide(e, &t, &call) == IDEM_OUTCOME_PROCEED) {
            assert_int_not_equal(try_decide(e, &t, &other),
                                 IDEM_OUTCOME_PROCEED);
            idem_call_free(other);
            finish(call, 201, "{}", NULL);
        } else {
            idem_call_free(call);
        }
    }
    if (idem_call_new(e, &call) == IDEM_OK) {
        struct answer a = { 0 };
        struct idem_decision d;

        treq_init(&t, "POST", "/o", "orphan", NULL, "{}");
        if (idem_call_start(call, &t.r, &d) == IDEM_OK)
            idem_call_decide(call, on_decided, &a, &d);
        idem_call_free(call); /* its begin, if sent, is undone */
        loop_for(20);
        assert_false(a.done);
    }
out:
    idem_store_redis_detach(s);
    idem_engine_free(e);
    idem_store_free(s);
    assert_int_equal(atomic_load(&te.live), 0);
    return atomic_load(&te.failures);
}

static void test_allocation_failure_sweep(void **state)
{
    (void)state;
    assert_true(test_alloc_sweep(failing_life, 1000) > 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_attach_rules),
        cmocka_unit_test_setup_teardown(test_proceed_store_replay, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_key_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_wait_without_replicas_is_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lapsed_lease_is_unknown, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_abort_and_policy_release, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_scopes_are_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_body_and_lifetime, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fencing, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_renewal_keeps_a_slow_request_single, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_polls_to_the_replay, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wait_bound_is_a_conflict, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_noscript_falls_back_to_eval, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_back_soon_after_long_absence,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_raises_no_sigpipe, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_stopped_and_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_paused_times_out, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_readonly_replica_reconnects, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_detach_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_keys_leave_nothing, setup,
                                        teardown),
        cmocka_unit_test(test_allocation_failure_sweep),
    };

    /* SIGPIPE keeps its default action (which ends the process): the
     * store never raises it (test_reset_raises_no_sigpipe) */
    return cmocka_run_group_tests(tests, setup_group, teardown_group);
}
