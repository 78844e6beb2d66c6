/* Wait mode with a synchronous store (idem__list_waiting): a call whose key
 * is in flight waits for the owner to finish. Waiting calls sit on one
 * list per engine (src/list.h), bounded by max_waiters: there is no
 * per-key structure to leak. A wake scans the list for the key
 * (O(waiting calls), and only when some call waits). Lost wake-ups cannot
 * happen: a call's last look at the store and its listing happen under
 * wait_mu, and an owner wakes under wait_mu after its store write. */
#include <string.h>

#include "engine_internal.h"
#include "internal.h"

static void list_add_locked(struct idem_engine *e, struct idem_call *c)
{
    idem__list_push_back(&e->waiting, &c->wlink);
    e->nwaiting++;
    atomic_store(&e->nwaiting_hint, e->nwaiting);
}

static void list_del_locked(struct idem_engine *e, struct idem_call *c)
{
    idem__list_remove(&c->wlink);
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

/* Put call on the wait list unless a retry under the list's lock decides
 * it. IDEM_EINPROGRESS (waiting) or IDEM_OK (call->d). */
static int wait_begin(struct idem_call *call)
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

/* Move to taken the calls on the list for which pick() holds. */
static void take_locked(struct idem_engine *e,
                        bool (*pick)(const struct idem_call *c,
                                     const void *arg),
                        const void *arg, struct idem__list *taken)
{
    struct idem__list *n, *tmp;
    struct idem_call *c;

    idem__list_foreach_safe(n, tmp, &e->waiting)
    {
        c = idem__list_entry(n, struct idem_call, wlink);
        if (pick(c, arg)) {
            list_del_locked(e, c);
            idem__list_push_back(taken, &c->wlink);
        }
    }
}

/* The next call of taken, off it; NULL once it is empty. */
static struct idem_call *next_taken(struct idem__list *taken)
{
    struct idem__list *n = idem__list_first(taken);

    if (!n)
        return NULL;
    idem__list_remove(n);
    return idem__list_entry(n, struct idem_call, wlink);
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

static void list_left(struct idem_engine *e, const uint8_t *skey, size_t klen)
{
    struct key_ref k = { skey, klen };
    struct idem__list taken;
    struct idem_call *c;

    if (atomic_load(&e->nwaiting_hint) == 0)
        return;
    idem__list_init(&taken);
    pthread_mutex_lock(&e->wait_mu);
    take_locked(e, same_key, &k, &taken);
    pthread_mutex_unlock(&e->wait_mu);
    while ((c = next_taken(&taken)) != NULL) {
        /* still in flight (an abort let another call in): wait again */
        if (wait_begin(c) == IDEM_EINPROGRESS)
            continue;
        idem__engine_deliver(c);
    }
}

static int list_cancel(struct idem_call *call)
{
    struct idem_engine *e = call->e;
    bool listed;

    if (call->state != CALL_WAITING)
        return IDEM_ENOTFOUND;
    pthread_mutex_lock(&e->wait_mu);
    listed = idem__list_linked(&call->wlink);
    if (listed)
        list_del_locked(e, call);
    pthread_mutex_unlock(&e->wait_mu);
    if (!listed)
        return IDEM_EALREADY; /* a wake or a timeout took it first */
    call->state = CALL_FINISHED;
    return IDEM_OK;
}

static bool overdue(const struct idem_call *c, const void *arg)
{
    return c->deadline_ms <= *(const uint64_t *)arg;
}

static size_t list_expire(struct idem_engine *e)
{
    uint64_t now = e->env.now_ms(e->env.ud);
    struct idem__list taken;
    struct idem_call *c;
    size_t n = 0;

    if (atomic_load(&e->nwaiting_hint) == 0)
        return 0;
    idem__list_init(&taken);
    pthread_mutex_lock(&e->wait_mu);
    take_locked(e, overdue, &now, &taken);
    pthread_mutex_unlock(&e->wait_mu);
    while ((c = next_taken(&taken)) != NULL) {
        idem__engine_set_conflict(
            c, "a request with this key is still in progress");
        atomic_fetch_add(&e->wait_timeouts, 1);
        idem__engine_deliver(c);
        n++;
    }
    return n;
}

/* A synchronous store answers the begin at once; in wait mode a key in
 * flight puts the call on the list. */
static int list_decide(struct idem_call *call)
{
    call->state = CALL_FINISHED;
    if (idem__engine_try_begin(call) && call->e->conflict == IDEM_CONFLICT_WAIT)
        return wait_begin(call);
    return IDEM_OK;
}

const struct idem__waiting idem__list_waiting = {
    .decide = list_decide,
    .cancel = list_cancel,
    .left = list_left,
    .expire = list_expire,
};
