/* Finishing a call that proceeded: complete (the storage policy and the
 * stored record), abort and lease renewal, against either kind of store.
 * With an asynchronous store the answer comes to an op (struct idem__op)
 * holding copies of what the accounting needs, so the call may be freed
 * while the store works. */
#include <string.h>

#include "engine_internal.h"
#include "internal.h"

static bool default_storable(unsigned status)
{
    return status < 500 && status != 408 && status != 425 && status != 429;
}

static bool said_no_store(const struct idem_response *resp)
{
    size_t i;

    for (i = 0; i < resp->nheaders; i++) {
        const struct idem_header *h = &resp->headers[i];

        if (IDEM__NAME_IS(h->name, h->name_len, "Idempotency-Policy") &&
            idem__list_has(h->value, h->value_len, "no-store", 8))
            return true;
    }
    return false;
}

/* Whether h is kept in a stored response: not hop-by-hop, not named by a
 * Connection field (resp's from the first, conn), not one the replay
 * writes afresh, and encodable. */
static bool keep_header(const struct idem_response *resp, size_t conn,
                        const struct idem_header *h)
{
    struct idem_header probe = *h;
    size_t i;

    if (idem_header_is_hop_by_hop(h->name, h->name_len) ||
        IDEM__NAME_IS(h->name, h->name_len, "Content-Length") ||
        IDEM__NAME_IS(h->name, h->name_len, "Date") ||
        IDEM__NAME_IS(h->name, h->name_len, "Idempotency-Policy"))
        return false;
    for (i = conn; i < resp->nheaders; i++) {
        const struct idem_header *c = &resp->headers[i];

        if (IDEM__NAME_IS(c->name, c->name_len, "Connection") &&
            idem__list_has(c->value, c->value_len, h->name, h->name_len))
            return false;
    }
    probe.value_len = h->value ? h->value_len : 0;
    return idem__record_header_ok(&probe);
}

/* The index of resp's first Connection field that may name a field not
 * hop-by-hop anyway (not only "keep-alive"), or nheaders. */
static size_t first_connection(const struct idem_response *resp)
{
    size_t i;

    for (i = 0; i < resp->nheaders; i++) {
        const struct idem_header *c = &resp->headers[i];

        if (IDEM__NAME_IS(c->name, c->name_len, "Connection") &&
            !idem__list_only(c->value, c->value_len, "keep-alive", 10))
            break;
    }
    return i;
}

#define KEPT_INLINE 32     /* headers sorted on the stack */
#define RECORD_INLINE 1024 /* records encoded on the stack */

/* Encode resp as a completed record into *buf_out: stack (RECORD_INLINE
 * bytes) when it fits, else a fresh buffer; its body left out if omit or
 * longer than max_stored_body. */
static int encode_done(struct idem_call *call, const struct idem_response *resp,
                       bool omit, uint8_t *stack, uint8_t **buf_out,
                       size_t *len_out)
{
    struct idem_engine *e = call->e;
    uint64_t wall = e->env.wall_ms(e->env.ud);
    struct idem__record r = { .state = IDEM__REC_DONE,
                              .status = resp->status,
                              .created_ms = wall,
                              .expires_ms = wall + (uint64_t)e->lifetime_ms };
    struct idem_header inline_kept[KEPT_INLINE], *kept = inline_kept;
    size_t i, n = 0, size, conn = first_connection(resp);
    int rc = IDEM_ENOMEM;

    if (resp->nheaders > KEPT_INLINE &&
        !(kept = idem__alloc(&e->env, resp->nheaders * sizeof(*kept))))
        return IDEM_ENOMEM;
    for (i = 0; i < resp->nheaders; i++)
        if (keep_header(resp, conn, &resp->headers[i]))
            kept[n++] = resp->headers[i];
    memcpy(r.fingerprint, call->fingerprint, IDEM_FP_LEN);
    r.headers = kept;
    r.nheaders = n;
    if (omit || resp->body_len > e->max_stored_body)
        r.flags = IDEM__REC_BODY_OMITTED;
    else
        r.body = resp->body, r.body_len = resp->body_len;
    size = idem__record_size_checked(&r); /* keep_header checked each */
    *buf_out = size <= RECORD_INLINE ? stack : idem__alloc(&e->env, size);
    if (size == 0) {
        rc = IDEM_EINVAL;
    } else if (*buf_out) {
        idem__record_write(&r, *buf_out, size);
        *len_out = size;
        rc = IDEM_OK;
    }
    if (kept != inline_kept)
        idem__free(&e->env, kept);
    return rc;
}

/* -- Ops -------------------------------------------------------------- */

static struct idem__op *op_alloc(struct idem_engine *e, enum idem__op_kind kind,
                                 const uint8_t *skey, size_t klen,
                                 const uint8_t *token)
{
    struct idem__op *op = idem__alloc(&e->env, sizeof(*op) + klen);

    if (!op)
        return NULL;
    *op = (struct idem__op){ .e = e, .kind = kind, .klen = klen };
    memcpy(op->token, token, IDEM__TOKEN_LEN);
    memcpy(op->skey, skey, klen);
    return op;
}

struct idem__op *idem__op_new(struct idem_call *call, enum idem__op_kind kind,
                              idem_finish_cb cb, void *ud)
{
    struct idem__op *op =
        op_alloc(call->e, kind, call->skey, call->klen, call->token);

    if (op) {
        op->cb = cb;
        op->ud = ud;
    }
    return op;
}

void idem__op_free(struct idem__op *op)
{
    if (op)
        idem__free(&op->e->env, op);
}

static int settled(struct idem_engine *e, enum idem__op_kind kind, int rc,
                   const uint8_t *skey, size_t klen);

void idem__op_done(void *ud, int rc, struct idem__blob *blob)
{
    struct idem__op *op = ud;

    if (blob)
        idem__blob_release(blob);
    settled(op->e, op->kind, rc, op->skey, op->klen);
    if (op->cb)
        op->cb(rc, op->kind == IDEM__OP_COMPLETE && rc == IDEM_OK, op->ud);
    idem__op_free(op);
}

/* Release a key whose owner has nothing to wait for (a complete that
 * could not store, a cancelled begin that won). If even that fails, the
 * lease ends it. */
void idem__release_key(struct idem_engine *e, const uint8_t *skey, size_t klen,
                       const uint8_t *token)
{
    struct idem_store *s = e->store;
    struct idem__op *op = NULL;

    if (s->ops->async &&
        !(op = op_alloc(e, IDEM__OP_RELEASE, skey, klen, token)))
        return;
    if (s->ops->abort(s, skey, klen, token, op ? idem__op_done : NULL, op) !=
        IDEM_EINPROGRESS)
        idem__op_free(op);
}

/* The store answered op kind for a key: count, and for a key that left
 * flight, decide its waiters. A completion the store could not take
 * leaves the key in flight: its lease ends it, and the unknown-outcome
 * policy then decides (the request executed). Returns rc. */
static int settled(struct idem_engine *e, enum idem__op_kind kind, int rc,
                   const uint8_t *skey, size_t klen)
{
    if (rc == IDEM_ESTALE)
        atomic_fetch_add(&e->stale, 1);
    switch (kind) {
    case IDEM__OP_RENEW:
        if (rc == IDEM_OK)
            atomic_fetch_add(&e->renewed, 1);
        return rc;
    case IDEM__OP_RELEASE:
    case IDEM__OP_BEGIN:
        return rc;
    case IDEM__OP_COMPLETE:
        if (rc == IDEM_OK)
            atomic_fetch_add(&e->stored, 1);
        break;
    case IDEM__OP_UNKNOWN:
        if (rc == IDEM_OK)
            atomic_fetch_add(&e->unknown, 1);
        break;
    case IDEM__OP_NOSTORE:
        if (rc == IDEM_OK)
            atomic_fetch_add(&e->not_stored, 1);
        break;
    case IDEM__OP_ABORT:
        break;
    }
    atomic_fetch_sub(&e->in_flight, 1);
    e->wait_ops->left(e, skey, klen);
    return rc;
}

/* Whether a synchronous store's answer means it had no room for a record
 * (the key is still in flight: another, smaller record may follow). */
static bool no_room(int rc)
{
    return rc == IDEM_E2BIG || rc == IDEM_EBUSY;
}

/* Send op kind for call's key to the store (rec: the record to replace
 * the in-flight one with, for ttl_ms; NULL: delete it): its answer, or
 * IDEM_EINPROGRESS with the answer to come to cb. With smaller_next, an
 * answer of no room is returned unsettled: the caller sends another. */
static int store_op(struct idem_call *call, enum idem__op_kind kind,
                    const void *rec, size_t rlen, int64_t ttl_ms,
                    idem_finish_cb cb, void *ud, bool smaller_next)
{
    struct idem_engine *e = call->e;
    struct idem_store *s = e->store;
    struct idem__op *op = NULL;
    idem__store_done done = NULL;
    int rc;

    if (s->ops->async) {
        if (!(op = idem__op_new(call, kind, cb, ud)))
            return settled(e, kind, IDEM_ENOMEM, call->skey, call->klen);
        done = idem__op_done;
    }
    if (rec)
        rc = s->ops->complete(s, call->skey, call->klen, call->token, rec, rlen,
                              ttl_ms, done, op);
    else
        rc = s->ops->abort(s, call->skey, call->klen, call->token, done, op);
    if (rc == IDEM_EINPROGRESS)
        return rc;
    idem__op_free(op);
    if (smaller_next && no_room(rc))
        return rc;
    return settled(e, kind, rc, call->skey, call->klen);
}

/* -- The calls -------------------------------------------------------- */

/* Encode resp and store it: without its body when the record would be
 * larger than the store holds, or when a synchronous store had no room
 * for it whole. The request executed: a lack of room never releases. */
static int store_done(struct idem_call *call, const struct idem_response *resp,
                      idem_finish_cb cb, void *ud)
{
    struct idem_engine *e = call->e;
    size_t room = idem_store_max_record(e->store), len = 0;
    uint8_t stack[RECORD_INLINE], *buf;
    bool omit = false, retry;
    int rc;

    do {
        buf = NULL;
        rc = encode_done(call, resp, omit, stack, &buf, &len);
        if (rc == IDEM_OK && !omit && resp->body_len &&
            len + call->klen > room) {
            if (buf != stack)
                idem__free(&e->env, buf);
            omit = retry = true;
            continue;
        }
        if (rc != IDEM_OK) {
            if (buf != stack)
                idem__free(&e->env, buf);
            return settled(e, IDEM__OP_COMPLETE, rc, call->skey, call->klen);
        }
        retry = !omit && resp->body_len;
        rc = store_op(call, IDEM__OP_COMPLETE, buf, len, e->lifetime_ms, cb, ud,
                      retry);
        if (buf != stack)
            idem__free(&e->env, buf);
        retry = retry && no_room(rc);
        omit = omit || retry;
    } while (retry);
    if ((omit || resp->body_len > e->max_stored_body) &&
        (rc == IDEM_OK || rc == IDEM_EINPROGRESS))
        atomic_fetch_add(&e->body_omitted, 1);
    return rc;
}

/* Hand an op's answer to its caller (STYLE §18): without cb, rc itself
 * (IDEM_EINPROGRESS: the answer will only be counted); with cb, an answer
 * that came at once goes to cb now, and the caller gets IDEM_OK. */
static int answer(int rc, bool stored, idem_finish_cb cb, void *ud)
{
    if (!cb)
        return rc;
    if (rc != IDEM_EINPROGRESS)
        cb(rc, stored, ud);
    return IDEM_OK;
}

static bool response_ok(const struct idem_response *resp)
{
    return resp && (resp->headers || !resp->nheaders) &&
           (resp->body || !resp->body_len);
}

int idem_call_complete(struct idem_call *call, const struct idem_response *resp,
                       idem_finish_cb cb, void *ud)
{
    struct idem_engine *e;
    int rc;

    if (!call || call->state != CALL_PROCEEDING || !response_ok(resp))
        return IDEM_EINVAL;
    e = call->e;
    call->state = CALL_FINISHED;
    if (resp->status < 100 || resp->status > 999 || said_no_store(resp) ||
        !(e->storable ? e->storable(resp->status, e->storable_ud)
                      : default_storable(resp->status))) {
        rc = store_op(call, IDEM__OP_NOSTORE, NULL, 0, 0, cb, ud, false);
        return answer(rc, false, cb, ud);
    }
    rc = store_done(call, resp, cb, ud);
    return answer(rc, rc == IDEM_OK, cb, ud);
}

int idem_call_abort(struct idem_call *call, idem_finish_cb cb, void *ud)
{
    if (!call || call->state != CALL_PROCEEDING)
        return IDEM_EINVAL;
    call->state = CALL_FINISHED;
    return answer(store_op(call, IDEM__OP_ABORT, NULL, 0, 0, cb, ud, false),
                  false, cb, ud);
}

int idem_call_unknown(struct idem_call *call, idem_finish_cb cb, void *ud)
{
    struct idem__record r = { .state = IDEM__REC_UNKNOWN };
    uint8_t buf[IDEM__INFLIGHT_MAX];
    struct idem_engine *e;
    size_t len = 0;

    if (!call || call->state != CALL_PROCEEDING)
        return IDEM_EINVAL;
    e = call->e;
    if (!e->hold_unknown)
        return idem_call_abort(call, cb, ud);
    call->state = CALL_FINISHED;
    r.created_ms = e->env.wall_ms(e->env.ud);
    r.expires_ms = r.created_ms + (uint64_t)e->lifetime_ms;
    memcpy(r.fingerprint, call->fingerprint, IDEM_FP_LEN);
    memcpy(r.token, call->token, IDEM__TOKEN_LEN);
    if (!ALWAYS(idem__record_encode(&r, buf, sizeof(buf), &len) == IDEM_OK))
        return IDEM_EINVAL;
    return answer(store_op(call, IDEM__OP_UNKNOWN, buf, len, e->lifetime_ms, cb,
                           ud, false),
                  false, cb, ud);
}

int idem_call_renew(struct idem_call *call, idem_finish_cb cb, void *ud)
{
    uint8_t buf[IDEM__INFLIGHT_MAX];
    const struct idem_env *env;
    size_t len = 0;

    if (!call || call->state != CALL_PROCEEDING)
        return IDEM_EINVAL;
    env = &call->e->env;
    if (!ALWAYS(idem__engine_encode_inflight(call, env->wall_ms(env->ud), buf,
                                             sizeof(buf), &len) == IDEM_OK))
        return IDEM_EINVAL;
    return answer(store_op(call, IDEM__OP_RENEW, buf, len,
                           idem__engine_inflight_ttl(call->e), cb, ud, false),
                  false, cb, ud);
}
