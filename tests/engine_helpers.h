/* Shared by the engine tests: build requests, run a call to its decision,
 * complete it with a response. */
#ifndef IDEM_TEST_ENGINE_HELPERS_H
#define IDEM_TEST_ENGINE_HELPERS_H

#include <string.h>

#include "helpers.h"
#include "idem/engine.h"
#include "idem/store.h"

#define S(s) (s), (sizeof(s) - 1)

/* A request and the storage for its headers. */
struct treq {
    struct idem_header h[8];
    struct idem_request r;
    const char *body;
};

static inline void treq_header(struct treq *t, const char *name,
                               const char *value)
{
    t->h[t->r.nheaders++] =
        (struct idem_header){ name, strlen(name), value, strlen(value) };
}

/* method target; key and auth may be NULL (no such header). */
static inline struct treq *treq_init(struct treq *t, const char *method,
                                     const char *target, const char *key,
                                     const char *auth, const char *body)
{
    memset(t, 0, sizeof(*t));
    t->r.method = method;
    t->r.method_len = strlen(method);
    t->r.target = target;
    t->r.target_len = strlen(target);
    t->r.headers = t->h;
    t->body = body;
    treq_header(t, "Content-Type", "application/json");
    if (key)
        treq_header(t, "Idempotency-Key", key);
    if (auth)
        treq_header(t, "Authorization", auth);
    return t;
}

/* Start t on a fresh call (*call_out, for the caller to free) and feed
 * its body. true: PENDING, ready to decide; false: *d is PASS/INVALID. */
static inline bool start_call(struct idem_engine *e, const struct treq *t,
                              struct idem_call **call_out,
                              struct idem_decision *d)
{
    struct idem_call *call = NULL;

    assert_int_equal(idem_call_new(e, &call), IDEM_OK);
    *call_out = call;
    assert_int_equal(idem_call_start(call, &t->r, d), IDEM_OK);
    if (d->outcome != IDEM_OUTCOME_PENDING)
        return false;
    if (t->body)
        assert_int_equal(idem_call_body(call, t->body, strlen(t->body)),
                         IDEM_OK);
    return true;
}

/* Start, feed the body, decide. *call_out keeps the call for the caller
 * to complete and free. Returns the outcome (PASS/INVALID stop early). */
static inline enum idem_outcome run_call(struct idem_engine *e,
                                         const struct treq *t,
                                         struct idem_call **call_out,
                                         struct idem_decision *d)
{
    if (start_call(e, t, call_out, d))
        assert_int_equal(idem_call_decide(*call_out, NULL, NULL, d), IDEM_OK);
    return d->outcome;
}

/* run_call and free the call at once. */
static inline enum idem_outcome outcome_of(struct idem_engine *e,
                                           const struct treq *t)
{
    struct idem_decision d;
    struct idem_call *call;
    enum idem_outcome o = run_call(e, t, &call, &d);

    idem_call_free(call);
    return o;
}

struct finish_answer {
    int rc;
    bool stored;
    bool done;
};

static inline void finish_answered(int rc, bool stored, void *ud)
{
    struct finish_answer *a = ud;

    a->rc = rc;
    a->stored = stored;
    a->done = true;
}

/* idem_call_complete on a synchronous store, with *stored (if not NULL)
 * from the callback, which has run when it returns. */
static inline int complete_sync(struct idem_call *call,
                                const struct idem_response *resp, bool *stored)
{
    struct finish_answer a = { .rc = IDEM_EINPROGRESS };
    int rc = idem_call_complete(call, resp, finish_answered, &a);

    if (rc != IDEM_OK)
        return rc;
    if (stored)
        *stored = a.stored;
    return a.done ? a.rc : IDEM_EINPROGRESS;
}

/* Complete call with status and body and free it; returns the status. */
static inline int complete_with(struct idem_call *call, unsigned status,
                                const char *body, bool *stored)
{
    static const struct idem_header hs[] = {
        { S("Content-Type"), S("application/json") },
        { S("Location"), S("/orders/42") },
    };
    struct idem_response resp = { status, hs, 2, body, strlen(body) };
    int rc = complete_sync(call, &resp, stored);

    idem_call_free(call);
    return rc;
}

#endif
