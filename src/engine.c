/* The idempotency engine: which requests are subject, their key, scope and
 * fingerprint, and the state machine over the store: begin (proceed,
 * replay, conflict, mismatch), then complete or abort. The rules are
 * docs/semantics.md; waiting calls are engine_wait.c. */
#include <string.h>
#include <strings.h>

#include "engine_internal.h"
#include "internal.h"

#define DEFAULT_LEASE_MS (60 * 1000)
#define DEFAULT_LIFETIME_MS (24 * 3600 * 1000)
#define DEFAULT_WAIT_MS (10 * 1000)
#define DEFAULT_MAX_WAITERS 10000
#define DEFAULT_MAX_STORED_BODY (1u << 20)

static const char *const default_methods[] = { "POST", "PATCH" };
static const char *const default_scope[] = { "Authorization" };

/* -- Options ---------------------------------------------------------- */

static bool is_token(const char *s)
{
    return s && *s && idem__is_token(s, strlen(s));
}

/* Copy n tokens into one allocation: the pointers, then the bytes. NULL
 * with *rc set on failure. n == 0 gives NULL with IDEM_OK. */
static char **strv_copy(const struct idem_env *env, const char *const *src,
                        size_t n, int *rc)
{
    size_t bytes = n * sizeof(char *), i, len;
    char **v, *p;

    *rc = IDEM_OK;
    for (i = 0; i < n; i++) {
        if (!is_token(src[i])) {
            *rc = IDEM_EINVAL;
            return NULL;
        }
        bytes += strlen(src[i]) + 1;
    }
    if (n == 0)
        return NULL;
    v = idem__alloc(env, bytes);
    if (!v) {
        *rc = IDEM_ENOMEM;
        return NULL;
    }
    p = (char *)(v + n);
    for (i = 0; i < n; i++) {
        len = strlen(src[i]) + 1;
        v[i] = memcpy(p, src[i], len);
        p += len;
    }
    return v;
}

static int copy_names(struct idem_engine *e, const struct idem_engine_opts *o)
{
    const char *keys[2] = { o->key_header ? o->key_header : "Idempotency-Key",
                            o->alt_key_header };
    const char *const *scope =
        o->scope_headers ? o->scope_headers : default_scope;
    int rc;

    e->nmethods = o->nmethods ? o->nmethods : 2;
    e->methods = strv_copy(&e->env, o->nmethods ? o->methods : default_methods,
                           e->nmethods, &rc);
    if (rc != IDEM_OK)
        return rc;
    e->nkey_headers = o->alt_key_header ? 2 : 1;
    e->key_headers = strv_copy(&e->env, keys, e->nkey_headers, &rc);
    if (rc != IDEM_OK)
        return rc;
    e->nscope_headers = o->scope_headers ? o->nscope_headers : 1;
    e->scope_headers = strv_copy(&e->env, scope, e->nscope_headers, &rc);
    if (rc != IDEM_OK)
        return rc;
    e->nfp_headers = o->nfingerprint_headers;
    e->fp_headers =
        strv_copy(&e->env, o->fingerprint_headers, e->nfp_headers, &rc);
    return rc;
}

static bool opts_ok(const struct idem_engine_opts *o)
{
    return o->lease_ms >= 0 && o->lifetime_ms >= 0 && o->wait_ms >= 0 &&
           (o->methods || !o->nmethods) &&
           (o->scope_headers || !o->nscope_headers) &&
           (o->fingerprint_headers || !o->nfingerprint_headers) &&
           o->nscope_headers <= IDEM__MAX_SCOPE_HEADERS &&
           o->nfingerprint_headers <= IDEM__MAX_FP_HEADERS &&
           o->key_rules.max_len <= IDEM_KEY_MAX_CAP &&
           (o->conflict == IDEM_CONFLICT_REJECT ||
            o->conflict == IDEM_CONFLICT_WAIT) &&
           (o->unknown_outcome == IDEM_UNKNOWN_HOLD ||
            o->unknown_outcome == IDEM_UNKNOWN_RELEASE);
}

static void apply_defaults(struct idem_engine *e,
                           const struct idem_engine_opts *o)
{
    e->key_rules = o->key_rules;
    e->max_key_len =
        o->key_rules.max_len ? o->key_rules.max_len : IDEM_KEY_MAX_LEN;
    e->lease_ms = o->lease_ms ? o->lease_ms : DEFAULT_LEASE_MS;
    e->lifetime_ms = o->lifetime_ms ? o->lifetime_ms : DEFAULT_LIFETIME_MS;
    e->wait_ms = o->wait_ms ? o->wait_ms : DEFAULT_WAIT_MS;
    e->retry_after_s = o->retry_after_s ? o->retry_after_s : 1;
    e->conflict = o->conflict;
    e->max_waiters = o->max_waiters ? o->max_waiters : DEFAULT_MAX_WAITERS;
    e->max_stored_body =
        o->max_stored_body ? o->max_stored_body : DEFAULT_MAX_STORED_BODY;
    e->hold_unknown = o->unknown_outcome == IDEM_UNKNOWN_HOLD;
    e->storable = o->storable;
    e->storable_ud = o->storable_ud;
    e->token_seed = idem__random_seed();
}

int idem_engine_new(const struct idem_engine_opts *opts,
                    struct idem_engine **engine_out)
{
    struct idem_engine_opts o = opts ? *opts : (struct idem_engine_opts){ 0 };
    struct idem_store_memory_opts mo = { .env = o.env };
    struct idem_engine *e;
    struct idem_env env;
    int rc;

    if (!engine_out || !opts_ok(&o))
        return IDEM_EINVAL;
    if (idem__fp_init() != IDEM_OK)
        return IDEM_ENOMEM;
    idem_env_resolve(o.env, &env);
    if (!env.after != !env.cancel) /* timers come in pairs */
        return IDEM_EINVAL;
    e = idem__alloc(&env, sizeof(*e));
    if (!e)
        return IDEM_ENOMEM;
    memset(e, 0, sizeof(*e));
    e->env = env;
    pthread_mutex_init(&e->wait_mu, NULL);
    apply_defaults(e, &o);
    e->store = o.store;
    idem__list_init(&e->waiting);
    rc = copy_names(e, &o);
    if (rc == IDEM_OK && !e->store) {
        rc = idem_store_memory_new(&mo, &e->store);
        e->owns_store = rc == IDEM_OK;
    }
    if (rc == IDEM_OK)
        e->wait_ops =
            e->store->ops->async ? &idem__poll_waiting : &idem__list_waiting;
    if (rc != IDEM_OK) {
        idem_engine_free(e);
        return rc;
    }
    *engine_out = e;
    return IDEM_OK;
}

void idem_engine_free(struct idem_engine *e)
{
    if (!e)
        return;
    if (e->owns_store)
        idem_store_free(e->store);
    idem__free(&e->env, e->methods);
    idem__free(&e->env, e->key_headers);
    idem__free(&e->env, e->scope_headers);
    idem__free(&e->env, e->fp_headers);
    pthread_mutex_destroy(&e->wait_mu);
    idem__free(&e->env, e);
}

size_t idem_engine_tick(struct idem_engine *e)
{
    size_t n;

    if (!e)
        return 0;
    n = e->wait_ops->expire(e);
    e->store->ops->tick(e->store);
    return n;
}

void idem_engine_stats(struct idem_engine *e, struct idem_engine_stats *out)
{
    int i;

    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!e)
        return;
    for (i = 0; i < IDEM_OUTCOME_COUNT; i++)
        out->outcomes[i] = atomic_load(&e->outcomes[i]);
    out->stored = atomic_load(&e->stored);
    out->body_omitted = atomic_load(&e->body_omitted);
    out->unknown = atomic_load(&e->unknown);
    out->not_stored = atomic_load(&e->not_stored);
    out->stale = atomic_load(&e->stale);
    out->wait_timeouts = atomic_load(&e->wait_timeouts);
    out->renewed = atomic_load(&e->renewed);
    out->in_flight = atomic_load(&e->in_flight);
    out->waiting = atomic_load(&e->nwaiting_hint) + atomic_load(&e->polling);
}

struct idem_store *idem_engine_store(struct idem_engine *e)
{
    return e ? e->store : NULL;
}

void idem__engine_count(struct idem_engine *e, enum idem_outcome o)
{
    atomic_fetch_add(&e->outcomes[o], 1);
}

/* -- Requests --------------------------------------------------------- */

/* The first header named name (nlen bytes), or NULL; *count (if set)
 * counts them. */
static const struct idem_header *find_header(const struct idem_request *r,
                                             const char *name, size_t nlen,
                                             size_t *count)
{
    const struct idem_header *first = NULL;
    size_t i;

    for (i = 0; i < r->nheaders; i++) {
        if (r->headers[i].name_len != nlen || !r->headers[i].name ||
            strncasecmp(r->headers[i].name, name, nlen) != 0)
            continue;
        if (!first)
            first = &r->headers[i];
        if (count)
            (*count)++;
    }
    return first;
}

/* The values of names in r (absent: NULL), for a digest. */
static void collect(const struct idem_request *r, char *const *names, size_t n,
                    struct idem_header *out)
{
    const struct idem_header *h;
    size_t i;

    for (i = 0; i < n; i++) {
        size_t len = strlen(names[i]);

        h = find_header(r, names[i], len, NULL);
        out[i] = (struct idem_header){ names[i], len, h ? h->value : NULL,
                                       h ? h->value_len : 0 };
    }
}

static bool method_covered(const struct idem_engine *e,
                           const struct idem_request *r)
{
    size_t i;

    /* strncmp stops at the method's end: no strlen per call */
    for (i = 0; i < e->nmethods; i++)
        if (strncmp(e->methods[i], r->method, r->method_len) == 0 &&
            e->methods[i][r->method_len] == '\0')
            return true;
    return false;
}

static bool request_ok(const struct idem_request *r)
{
    return (r->method || !r->method_len) && (r->target || !r->target_len) &&
           (r->route || !r->route_len) && (r->headers || !r->nheaders);
}

static int decided(struct idem_call *call, enum idem_outcome o,
                   const char *detail, struct idem_decision *out)
{
    call->d = (struct idem_decision){
        .outcome = o,
        .status = o == IDEM_OUTCOME_INVALID ? 400 : 0,
        .detail = detail,
    };
    call->state = o == IDEM_OUTCOME_PENDING ? CALL_PENDING : CALL_PASSED;
    if (o != IDEM_OUTCOME_PENDING)
        idem__engine_count(call->e, o);
    *out = call->d;
    return IDEM_OK;
}

/* The key header, parsed into call->skey after the scope. NULL, or the
 * reason the request is INVALID; *absent when there is no key at all. */
static const char *read_key(struct idem_call *call,
                            const struct idem_request *r, bool *absent)
{
    struct idem_engine *e = call->e;
    const struct idem_header *h = NULL, *x;
    const char *reason = NULL;
    size_t count = 0, i, klen;

    for (i = 0; i < e->nkey_headers; i++)
        if ((x = find_header(r, e->key_headers[i], strlen(e->key_headers[i]),
                             &count)) &&
            !h)
            h = x;
    *absent = count == 0;
    if (count == 0)
        return r->key_required ? "this route requires an idempotency key"
                               : NULL;
    if (count > 1)
        return "more than one idempotency key header";
    if (idem_key_parse(h->value, h->value_len, &e->key_rules,
                       (char *)call->skey + IDEM__SCOPE_LEN, &klen,
                       &reason) != IDEM_OK)
        return reason;
    call->klen = IDEM__SCOPE_LEN + klen;
    return NULL;
}

int idem_call_start(struct idem_call *call, const struct idem_request *req,
                    struct idem_decision *out)
{
    struct idem_header scope[IDEM__MAX_SCOPE_HEADERS],
        fph[IDEM__MAX_FP_HEADERS];
    struct idem__fp_input in;
    const struct idem_header *ct;
    struct idem_engine *e;
    const char *reason;
    bool absent;
    int rc;

    if (!call || !req || !out || call->state != CALL_NEW || !request_ok(req))
        return IDEM_EINVAL;
    e = call->e;
    if (!method_covered(e, req))
        return decided(call, IDEM_OUTCOME_PASS, NULL, out);
    if ((reason = read_key(call, req, &absent)) || absent)
        return decided(call, reason ? IDEM_OUTCOME_INVALID : IDEM_OUTCOME_PASS,
                       reason, out);
    collect(req, e->scope_headers, e->nscope_headers, scope);
    rc = idem__scope_digest(req->route, req->route_len, scope,
                            e->nscope_headers, call->skey);
    collect(req, e->fp_headers, e->nfp_headers, fph);
    ct = find_header(req, "Content-Type", sizeof("Content-Type") - 1, NULL);
    in = (struct idem__fp_input){ req->method,
                                  req->method_len,
                                  req->target,
                                  req->target_len,
                                  ct ? ct->value : NULL,
                                  ct ? ct->value_len : 0,
                                  fph,
                                  e->nfp_headers };
    if (rc == IDEM_OK)
        rc = idem__fp_begin(&call->fp, &in);
    if (rc != IDEM_OK)
        return rc;
    return decided(call, IDEM_OUTCOME_PENDING, NULL, out);
}

int idem_call_body(struct idem_call *call, const void *data, size_t len)
{
    if (!call || call->state != CALL_PENDING)
        return IDEM_EINVAL;
    return idem__fp_update(&call->fp, data, len);
}

/* -- Deciding --------------------------------------------------------- */

static void set_decision(struct idem_call *call, enum idem_outcome o,
                         unsigned status, const char *detail)
{
    call->d = (struct idem_decision){
        .outcome = o,
        .status = status,
        .detail = detail,
        .retry_after_s =
            o == IDEM_OUTCOME_CONFLICT ? call->e->retry_after_s : 0,
    };
}

/* A stored response: keep its bytes, lay out its headers. */
static void set_replay(struct idem_call *call, struct idem__blob *blob,
                       const struct idem__record_view *v)
{
    struct idem__header_iter it;
    size_t n = 0;

    call->replay_hdrs = call->inline_hdrs;
    if (v->rec.nheaders > IDEM__INLINE_HEADERS &&
        !(call->replay_hdrs = idem__alloc(
              &call->e->env, v->rec.nheaders * sizeof(struct idem_header)))) {
        idem__blob_release(blob);
        set_decision(call, IDEM_OUTCOME_UNAVAILABLE, 503, "out of memory");
        return;
    }
    idem__record_headers(v, &it);
    while (n < v->rec.nheaders && idem__header_next(&it, &call->replay_hdrs[n]))
        n++;
    call->blob = *blob;
    set_decision(call, IDEM_OUTCOME_REPLAY, v->rec.status, NULL);
    call->d.replay = (struct idem_response){ v->rec.status, call->replay_hdrs,
                                             n, v->rec.body, v->rec.body_len };
    call->d.body_omitted = v->rec.flags & IDEM__REC_BODY_OMITTED;
}

/* Judge the record another call left under our key. true: in flight. */
static bool judge_existing(struct idem_call *call, struct idem__blob *blob)
{
    struct idem__record_view v;

    if (idem__record_decode(blob->data, blob->len, &v) != IDEM_OK) {
        set_decision(call, IDEM_OUTCOME_UNAVAILABLE, 503,
                     "the stored record for this key is unreadable");
    } else if (memcmp(v.rec.fingerprint, call->fingerprint, IDEM_FP_LEN)) {
        set_decision(call, IDEM_OUTCOME_MISMATCH, 422,
                     "this idempotency key was used for a different request");
    } else if (v.rec.state == IDEM__REC_INFLIGHT) {
        set_decision(call, IDEM_OUTCOME_CONFLICT, 409,
                     "a request with this idempotency key is in progress");
    } else if (v.rec.state == IDEM__REC_UNKNOWN) {
        set_decision(call, IDEM_OUTCOME_UNKNOWN, 502,
                     "a request with this idempotency key may have "
                     "executed, but its outcome is unknown: it is not "
                     "executed again");
    } else {
        set_replay(call, blob, &v);
        return false;
    }
    idem__blob_release(blob);
    return call->d.outcome == IDEM_OUTCOME_CONFLICT;
}

int64_t idem__engine_inflight_ttl(const struct idem_engine *e)
{
    /* held: the record outlives its lease, so a lapsed one is found and
     * judged; released: it ends with its lease */
    return e->hold_unknown ? e->lease_ms + e->lifetime_ms : e->lease_ms;
}

int idem__engine_encode_inflight(const struct idem_call *call, uint64_t wall_ms,
                                 uint8_t *buf, size_t cap, size_t *len_out)
{
    struct idem__record r = {
        .state = IDEM__REC_INFLIGHT,
        .created_ms = call->created_ms,
        .expires_ms = wall_ms + (uint64_t)call->e->lease_ms,
    };

    memcpy(r.fingerprint, call->fingerprint, IDEM_FP_LEN);
    memcpy(r.token, call->token, IDEM__TOKEN_LEN);
    return idem__record_encode(&r, buf, cap, len_out);
}

int idem__engine_store_begin(struct idem_call *call, struct idem__blob *blob,
                             idem__store_done done, void *ud)
{
    struct idem_engine *e = call->e;
    struct idem__begin_args a = { .ttl_ms = idem__engine_inflight_ttl(e),
                                  .wall_ms = e->env.wall_ms(e->env.ud),
                                  .hold = e->hold_unknown,
                                  .unknown_ttl_ms = e->lifetime_ms };
    uint8_t buf[IDEM__INFLIGHT_MAX];
    size_t len = 0;
    int rc;

    *blob = (struct idem__blob){ NULL, 0, NULL, NULL };
    call->created_ms = a.wall_ms;
    rc = idem__engine_encode_inflight(call, a.wall_ms, buf, sizeof(buf), &len);
    if (!ALWAYS(rc == IDEM_OK))
        return rc;
    return e->store->ops->begin(e->store, call->skey, call->klen, buf, len, &a,
                                blob, done, ud);
}

bool idem__engine_begun(struct idem_call *call, int rc, struct idem__blob *blob)
{
    if (rc == IDEM_EEXIST)
        return judge_existing(call, blob);
    if (rc == IDEM_OK) {
        set_decision(call, IDEM_OUTCOME_PROCEED, 0, NULL);
        call->state = CALL_PROCEEDING;
        atomic_fetch_add(&call->e->in_flight, 1);
    } else if (rc == IDEM_ENOSPC) {
        set_decision(call, IDEM_OUTCOME_FULL, 503,
                     "the idempotency store has no room for a new key now");
        call->d.retry_after_s = call->e->retry_after_s;
    } else {
        set_decision(call, IDEM_OUTCOME_UNAVAILABLE, 503,
                     "the idempotency store is unavailable");
    }
    return false;
}

bool idem__engine_try_begin(struct idem_call *call)
{
    struct idem__blob blob;
    int rc = idem__engine_store_begin(call, &blob, NULL, NULL);

    return idem__engine_begun(call, rc, &blob);
}

static void new_token(struct idem_call *call)
{
    uint64_t n = atomic_fetch_add(&call->e->token_next, 1);

    memcpy(call->token, &call->e->token_seed, 8);
    memcpy(call->token + 8, &n, 8);
}

int idem_call_decide(struct idem_call *call, idem_decide_cb cb, void *ud,
                     struct idem_decision *out)
{
    struct idem_engine *e;
    int rc;

    if (!call || !out || call->state != CALL_PENDING)
        return IDEM_EINVAL;
    e = call->e;
    if ((e->conflict == IDEM_CONFLICT_WAIT || e->store->ops->async) && !cb)
        return IDEM_EINVAL;
    rc = idem__fp_final(&call->fp, call->fingerprint);
    if (rc != IDEM_OK)
        return rc;
    new_token(call);
    call->cb = cb;
    call->cb_ud = ud;
    /* a bound only a wait needs: no clock read otherwise */
    if (e->conflict == IDEM_CONFLICT_WAIT)
        call->deadline_ms = e->env.now_ms(e->env.ud) + (uint64_t)e->wait_ms;
    if (e->wait_ops->decide(call) == IDEM_EINPROGRESS)
        return IDEM_EINPROGRESS;
    idem__engine_count(e, call->d.outcome);
    *out = call->d;
    return IDEM_OK;
}

/* -- Calls ------------------------------------------------------------ */

int idem_call_new(struct idem_engine *e, struct idem_call **call_out)
{
    struct idem_call *call;

    if (!e || !call_out)
        return IDEM_EINVAL;
    call =
        idem__alloc(&e->env, sizeof(*call) + IDEM__SCOPE_LEN + e->max_key_len);
    if (!call)
        return IDEM_ENOMEM;
    memset(call, 0, sizeof(*call));
    call->e = e;
    idem__list_init(&call->wlink);
    *call_out = call;
    return IDEM_OK;
}

int idem_call_cancel(struct idem_call *call)
{
    if (!call)
        return IDEM_EINVAL;
    return call->e->wait_ops->cancel(call);
}

void idem_call_free(struct idem_call *call)
{
    if (!call)
        return;
    if (call->state == CALL_WAITING || call->state == CALL_DECIDING)
        idem_call_cancel(call);
    else if (call->state == CALL_PROCEEDING)
        idem_call_unknown(call, NULL, NULL); /* it may have run */
    idem__fp_cancel(&call->fp);
    idem__blob_release(&call->blob);
    if (call->replay_hdrs != call->inline_hdrs)
        idem__free(&call->e->env, call->replay_hdrs);
    idem__free(&call->e->env, call);
}

/* -- Names ------------------------------------------------------------ */

const char *idem_outcome_name(enum idem_outcome o)
{
    static const char *const names[] = {
        [IDEM_OUTCOME_PASS] = "pass",
        [IDEM_OUTCOME_PENDING] = "pending",
        [IDEM_OUTCOME_PROCEED] = "proceed",
        [IDEM_OUTCOME_REPLAY] = "replay",
        [IDEM_OUTCOME_CONFLICT] = "conflict",
        [IDEM_OUTCOME_MISMATCH] = "mismatch",
        [IDEM_OUTCOME_INVALID] = "invalid",
        [IDEM_OUTCOME_UNAVAILABLE] = "unavailable",
        [IDEM_OUTCOME_UNKNOWN] = "unknown",
        [IDEM_OUTCOME_FULL] = "full",
    };

    if ((int)o < IDEM_OUTCOME_PASS || o > IDEM_OUTCOME_FULL)
        return "unknown";
    return names[o];
}
