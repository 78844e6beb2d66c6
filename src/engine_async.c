/* Deciding with an asynchronous store (Redis): idem__poll_waiting. A
 * call's begin is an op in flight (struct idem__op); its answer decides
 * the call or, in wait mode with the key in flight elsewhere, starts a
 * poll on the env's timers: the begin is sent again after 10, 20, 40 ...
 * ms (at most POLL_MAX_MS apart) until the key is free or done, or the
 * wait's bound passes. Polling, not pub/sub:
 * the owner may be another instance, or may die without a word, and a
 * poll needs no subscription per key (docs/internals/engine.md). A call
 * that lets go (cancel, free) while its begin is in flight orphans the
 * op; if that begin wins the key, the op releases it. */
#include "engine_internal.h"
#include "internal.h"

#define POLL_FIRST_MS 10
#define POLL_MAX_MS 200

static void begin_done(void *ud, int rc, struct idem__blob *blob);
static void poll_fire(void *ud);

static void unpoll(struct idem_call *call)
{
    if (call->polling) {
        call->polling = false;
        atomic_fetch_sub(&call->e->polling, 1);
    }
}

/* Judge a begin's answer. true: call->d is the decision; false: a poll
 * is armed. */
static bool answered(struct idem_call *call, int rc, struct idem__blob *blob)
{
    struct idem_engine *e = call->e;
    uint64_t now;
    int64_t delay;

    if (!idem__engine_begun(call, rc, blob) ||
        e->conflict != IDEM_CONFLICT_WAIT)
        return true;
    now = e->env.now_ms(e->env.ud);
    if (now >= call->deadline_ms) {
        if (call->polling) {
            idem__engine_set_conflict(
                call, "a request with this key is still in progress");
            atomic_fetch_add(&e->wait_timeouts, 1);
        }
        return true;
    }
    if (!call->polling && atomic_load(&e->polling) >= e->max_waiters) {
        idem__engine_set_conflict(call, "a request with this key is in "
                                        "progress, and too many requests "
                                        "are waiting");
        return true;
    }
    delay = call->poll_ms;
    if ((uint64_t)delay > call->deadline_ms - now)
        delay = (int64_t)(call->deadline_ms - now);
    call->poll_ms =
        call->poll_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : call->poll_ms * 2;
    call->timer =
        e->env.after ? e->env.after(e->env.ud, delay, poll_fire, call) : NULL;
    if (!call->timer)
        return true; /* no timer: the conflict stands */
    if (!call->polling) {
        call->polling = true;
        atomic_fetch_add(&e->polling, 1);
    }
    call->state = CALL_WAITING;
    return false;
}

/* Send call's begin. IDEM_EINPROGRESS (an answer or a poll is to come),
 * or IDEM_OK with call->d decided. */
static int send_begin(struct idem_call *call)
{
    struct idem__op *op = idem__op_new(call, IDEM__OP_BEGIN, NULL, NULL);
    struct idem__blob blob = { NULL, 0, NULL, NULL };
    int rc = IDEM_ENOMEM;

    if (op) {
        op->call = call;
        rc = idem__engine_store_begin(call, &blob, begin_done, op);
        if (rc == IDEM_EINPROGRESS) {
            call->op = op;
            return rc;
        }
        idem__op_free(op);
    }
    return answered(call, rc, &blob) ? IDEM_OK : IDEM_EINPROGRESS;
}

static void decided_later(struct idem_call *call)
{
    unpoll(call);
    idem__engine_deliver(call);
}

/* A begin whose call let go: undo it if it won the key. */
static void orphaned(struct idem__op *op, int rc, struct idem__blob *blob)
{
    if (rc == IDEM_EEXIST)
        idem__blob_release(blob);
    if (rc == IDEM_OK)
        idem__release_key(op->e, op->skey, op->klen, op->token);
    idem__op_free(op);
}

static void begin_done(void *ud, int rc, struct idem__blob *blob)
{
    struct idem__op *op = ud;
    struct idem_call *call = op->call;
    struct idem__blob none = { NULL, 0, NULL, NULL };

    if (!blob)
        blob = &none;
    if (!call) {
        orphaned(op, rc, blob);
        return;
    }
    call->op = NULL;
    idem__op_free(op);
    if (answered(call, rc, blob))
        decided_later(call);
}

static void poll_fire(void *ud)
{
    struct idem_call *call = ud;

    call->timer = NULL;
    if (send_begin(call) == IDEM_OK)
        decided_later(call);
}

static int poll_decide(struct idem_call *call)
{
    call->poll_ms = POLL_FIRST_MS;
    call->state = CALL_DECIDING;
    if (send_begin(call) == IDEM_EINPROGRESS)
        return IDEM_EINPROGRESS;
    unpoll(call);
    if (call->d.outcome != IDEM_OUTCOME_PROCEED)
        call->state = CALL_FINISHED;
    return IDEM_OK;
}

static int poll_cancel(struct idem_call *call)
{
    struct idem_engine *e = call->e;

    if (call->state != CALL_DECIDING && call->state != CALL_WAITING)
        return IDEM_ENOTFOUND;
    if (call->timer) {
        e->env.cancel(e->env.ud, call->timer);
        call->timer = NULL;
    }
    if (call->op) {
        call->op->call = NULL;
        call->op = NULL;
    }
    unpoll(call);
    call->state = CALL_FINISHED;
    return IDEM_OK;
}

/* Polling waits learn of a key leaving flight by asking, and time out on
 * their own timers. */
static void poll_left(struct idem_engine *e, const uint8_t *skey, size_t klen)
{
    (void)e;
    (void)skey;
    (void)klen;
}

static size_t poll_expire(struct idem_engine *e)
{
    (void)e;
    return 0;
}

const struct idem__waiting idem__poll_waiting = {
    .decide = poll_decide,
    .cancel = poll_cancel,
    .left = poll_left,
    .expire = poll_expire,
};
