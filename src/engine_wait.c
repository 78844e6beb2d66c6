/* Wait mode: a call whose key is in flight waits for the owner to finish.
 * Waiting calls sit on one list per engine, bounded by max_waiters: there
 * is no per-key structure to leak. A wake scans the list for the key
 * (O(waiting calls), and only when some call waits). Lost wake-ups cannot
 * happen: a call's last look at the store and its listing happen under
 * wait_mu, and an owner wakes under wait_mu after its store write. */
#include <string.h>

#include "engine_internal.h"
#include "internal.h"

static void list_add_locked(struct idem_engine *e, struct idem_call *c)
{
    c->wprev = NULL;
    c->wnext = e->waiting;
    if (e->waiting)
        e->waiting->wprev = c;
    e->waiting = c;
    c->listed = true;
    e->nwaiting++;
    atomic_store(&e->nwaiting_hint, e->nwaiting);
}

static void list_del_locked(struct idem_engine *e, struct idem_call *c)
{
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        e->waiting = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    c->wnext = c->wprev = NULL;
    c->listed = false;
    e->nwaiting--;
    atomic_store(&e->nwaiting_hint, e->nwaiting);
}

void idem__engine_set_conflict(struct idem_call *c, const char *detail)
{
    c->d = (struct idem_decision){
        .outcome = IDEM_OUTCOME_CONFLICT,
        .status = 409,
        .detail = detail,
        .retry_after_s = c->e->retry_after_s,
    };
}

int idem__wait_begin(struct idem_call *call)
{
    struct idem_engine *e = call->e;
    int rc = IDEM_OK;

    pthread_mutex_lock(&e->wait_mu);
    if (idem__engine_try_begin(call)) {
        if (e->nwaiting >= e->max_waiters) {
            idem__engine_set_conflict(call,
                                      "a request with this key is in progress, "
                                      "and too many requests are waiting");
        } else {
            list_add_locked(e, call);
            call->state = CALL_WAITING;
            rc = IDEM_EINPROGRESS;
        }
    }
    pthread_mutex_unlock(&e->wait_mu);
    return rc;
}

void idem__engine_deliver(struct idem_call *c)
{
    idem__engine_count(c->e, c->d.outcome);
    if (c->d.outcome != IDEM_OUTCOME_PROCEED)
        c->state = CALL_FINISHED;
    c->cb(c, &c->d, c->cb_ud);
}

/* Take off the list the calls for which pick() holds, as a chain. */
static struct idem_call *take_locked(struct idem_engine *e,
                                     bool (*pick)(const struct idem_call *c,
                                                  const void *arg),
                                     const void *arg)
{
    struct idem_call *c = e->waiting, *next, *taken = NULL;

    for (; c; c = next) {
        next = c->wnext;
        if (pick(c, arg)) {
            list_del_locked(e, c);
            c->wnext = taken;
            taken = c;
        }
    }
    return taken;
}

struct key_ref {
    const uint8_t *skey;
    size_t klen;
};

static bool same_key(const struct idem_call *c, const void *arg)
{
    const struct key_ref *k = arg;

    return c->klen == k->klen && memcmp(c->skey, k->skey, c->klen) == 0;
}

void idem__wait_wake(struct idem_engine *e, const uint8_t *skey, size_t klen)
{
    struct key_ref k = { skey, klen };
    struct idem_call *c, *next;

    if (atomic_load(&e->nwaiting_hint) == 0)
        return;
    pthread_mutex_lock(&e->wait_mu);
    c = take_locked(e, same_key, &k);
    pthread_mutex_unlock(&e->wait_mu);
    for (; c; c = next) {
        next = c->wnext;
        c->wnext = NULL;
        /* still in flight (an abort let another call in): wait again */
        if (idem__wait_begin(c) == IDEM_EINPROGRESS)
            continue;
        idem__engine_deliver(c);
    }
}

bool idem__wait_cancel(struct idem_call *call)
{
    struct idem_engine *e = call->e;
    bool listed;

    pthread_mutex_lock(&e->wait_mu);
    listed = call->listed;
    if (listed)
        list_del_locked(e, call);
    pthread_mutex_unlock(&e->wait_mu);
    return listed;
}

static bool overdue(const struct idem_call *c, const void *arg)
{
    return c->deadline_ms <= *(const uint64_t *)arg;
}

size_t idem__wait_expire(struct idem_engine *e)
{
    uint64_t now = e->env.now_ms(e->env.ud);
    struct idem_call *c, *next;
    size_t n = 0;

    if (atomic_load(&e->nwaiting_hint) == 0)
        return 0;
    pthread_mutex_lock(&e->wait_mu);
    c = take_locked(e, overdue, &now);
    pthread_mutex_unlock(&e->wait_mu);
    for (; c; c = next, n++) {
        next = c->wnext;
        c->wnext = NULL;
        idem__engine_set_conflict(
            c, "a request with this key is still in progress");
        atomic_fetch_add(&e->wait_timeouts, 1);
        idem__engine_deliver(c);
    }
    return n;
}
