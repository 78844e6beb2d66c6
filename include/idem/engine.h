/* The idempotency engine: IETF Idempotency-Key rules (draft-ietf-httpapi-
 * idempotency-key-header) as an HTTP-agnostic state machine. A request
 * comes in as method, target, headers and body; a decision comes out:
 * pass, proceed (then complete or abort), replay, or refuse with a reason.
 * docs/semantics.md is the specification this code keeps. */
#ifndef IDEM_ENGINE_H
#define IDEM_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "env.h"
#include "status.h"

#define IDEM_KEY_MAX_LEN 255  /* default longest key, in characters */
#define IDEM_KEY_MAX_CAP 4096 /* the most a deployment may allow */
#define IDEM_FP_LEN 32        /* SHA-256 fingerprint */

/* A header as bytes: neither part is NUL-terminated. */
struct idem_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct idem_key_rules {
    /* Longest key accepted, in characters, at most IDEM_KEY_MAX_CAP.
     * 0: IDEM_KEY_MAX_LEN. */
    size_t max_len;
    /* Accept only RFC 8941 sf-strings ("abc"). false: also a bare value
     * (abc), as most clients send. */
    bool sf_string_only;
};

/* Parse an Idempotency-Key field value into the key it names: an sf-string
 * (quotes removed, \" and \\ unescaped) or a bare value, surrounded by
 * optional spaces and tabs. The key is 1..max_len visible ASCII characters
 * (0x21-0x7E); a bare value may not hold '"', '\' or ','. Parameters after
 * an sf-string are refused. key_out must have room for max_len bytes.
 * IDEM_OK: *klen_out is set. IDEM_EINVAL: the value is refused and, if
 * reason_out is not NULL, *reason_out is a static sentence saying why, fit
 * for a problem+json "detail" (it never quotes the input). Thread-safe. */
IDEM_API int idem_key_parse(const char *field, size_t flen,
                            const struct idem_key_rules *rules, char *key_out,
                            size_t *klen_out, const char **reason_out);

/* -- The engine ------------------------------------------------------ */

struct idem_engine;
struct idem_call;
struct idem_store;

enum idem_outcome {
    IDEM_OUTCOME_PASS = 1,    /* not subject to idempotency: forward as is */
    IDEM_OUTCOME_PENDING,     /* subject: feed the body, then decide */
    IDEM_OUTCOME_PROCEED,     /* execute it, then complete or abort */
    IDEM_OUTCOME_REPLAY,      /* answer with the stored response */
    IDEM_OUTCOME_CONFLICT,    /* 409: the key is in flight */
    IDEM_OUTCOME_MISMATCH,    /* 422: the key was used for another request */
    IDEM_OUTCOME_INVALID,     /* 400: bad key, or missing where required */
    IDEM_OUTCOME_UNAVAILABLE, /* 503: the store failed */
    /* 502: the request with this key may have executed, but its outcome
     * is unknown (no usable response came); it is not run again */
    IDEM_OUTCOME_UNKNOWN,
    /* 503: the store has no room for a new key (every record it holds is
     * in flight or younger than its minimum retention); retry later */
    IDEM_OUTCOME_FULL,
};

#define IDEM_OUTCOME_COUNT (IDEM_OUTCOME_FULL + 1)

/* What a key keeps when its request may have executed but no usable
 * response came (idem_call_unknown, a call freed unfinished, a lease that
 * ran out on its owner). */
enum idem_unknown_policy {
    /* an "outcome unknown" record for the lifetime: retries get UNKNOWN
     * (502), never a second execution */
    IDEM_UNKNOWN_HOLD = 0,
    /* the key is released: a retry executes again */
    IDEM_UNKNOWN_RELEASE,
};

enum idem_conflict_mode {
    IDEM_CONFLICT_REJECT = 0, /* 409 with Retry-After at once */
    IDEM_CONFLICT_WAIT,       /* wait up to wait_ms, then replay or 409 */
};

struct idem_engine_opts {
    /* Methods subject to idempotency. nmethods 0: POST and PATCH. */
    const char *const *methods;
    size_t nmethods;
    /* The key's header. NULL: "Idempotency-Key". */
    const char *key_header;
    /* A second accepted name, e.g. "X-Idempotency-Key". NULL: none. */
    const char *alt_key_header;
    struct idem_key_rules key_rules;
    /* Headers whose values make the client's key space. NULL:
     * Authorization. Not NULL with nscope_headers 0: one space for all. */
    const char *const *scope_headers;
    size_t nscope_headers;
    /* Request headers the fingerprint covers beyond method, target,
     * Content-Type and body. */
    const char *const *fingerprint_headers;
    size_t nfingerprint_headers;
    /* In-flight lease. 0: 60 s. One that runs out before its owner
     * completes or renews it follows unknown_outcome when the key is
     * next asked for: the owner may have executed the request. */
    int64_t lease_ms;
    int64_t lifetime_ms;    /* stored responses. 0: 24 h */
    uint32_t retry_after_s; /* on 409. 0: 1 */
    enum idem_conflict_mode conflict;
    int64_t wait_ms;        /* bound of a wait. 0: 10 s */
    unsigned max_waiters;   /* waiting calls at once. 0: 10,000 */
    size_t max_stored_body; /* longest body stored. 0: 1 MiB */
    enum idem_unknown_policy unknown_outcome; /* 0: IDEM_UNKNOWN_HOLD */
    /* Whether a response status is stored. NULL: every status below 500
     * but 408, 425 and 429. */
    bool (*storable)(unsigned status, void *ud);
    void *storable_ud;
    /* The store; the engine does not own it. NULL: the engine makes a
     * memory store with default options and frees it with itself. */
    struct idem_store *store;
    const struct idem_env *env; /* copied. NULL: idem_env_default() */
};

/* A request as the engine sees it: views, read during the call only. */
struct idem_request {
    const char *method;
    size_t method_len;
    const char *target; /* path and query */
    size_t target_len;
    const char *route; /* the matched route prefix, or NULL */
    size_t route_len;
    bool key_required; /* the route refuses requests without a key */
    const struct idem_header *headers;
    size_t nheaders;
};

struct idem_response {
    unsigned status;
    const struct idem_header *headers;
    size_t nheaders;
    const void *body;
    size_t body_len;
};

/* What to do with a request. Views stay valid until idem_call_free(). */
struct idem_decision {
    enum idem_outcome outcome;
    /* The status to answer with: 400, 409, 422 or 503 for refusals, the
     * stored status for REPLAY, 0 for PASS, PENDING and PROCEED. */
    unsigned status;
    /* Why, for a problem+json "detail": static text, never client input. */
    const char *detail;
    uint32_t retry_after_s; /* CONFLICT */
    /* REPLAY: the stored response. body_omitted: it was longer than
     * max_stored_body, so only status and headers were kept. */
    struct idem_response replay;
    bool body_omitted;
};

struct idem_engine_stats {
    uint64_t outcomes[IDEM_OUTCOME_COUNT]; /* by enum idem_outcome */
    uint64_t stored;                       /* responses stored */
    /* of those, stored as status and headers only: the body was over
     * max_stored_body or more than the store holds in one record */
    uint64_t body_omitted;
    /* calls settled as "outcome unknown" by their owner (idem_call_unknown
     * or freed unfinished) in IDEM_UNKNOWN_HOLD; a lease found run out
     * shows as outcomes[IDEM_OUTCOME_UNKNOWN] of the retry instead */
    uint64_t unknown;
    uint64_t not_stored; /* completions released by policy */
    uint64_t stale;      /* completions or renewals refused: lease lost */
    uint64_t renewed;    /* leases extended */
    uint64_t waiting;    /* calls waiting now */
    uint64_t wait_timeouts;
    uint64_t in_flight; /* calls that proceeded and have not finished */
};

/* Called when a waiting call is decided, with no engine lock held: with
 * a synchronous store (memory), on the thread whose complete or abort (or
 * tick, for a timeout) decided it; with an asynchronous store (Redis), on
 * the thread that called idem_call_decide(). */
typedef void (*idem_decide_cb)(struct idem_call *call,
                               const struct idem_decision *d, void *ud);

/* The answer to a complete, abort, unknown or renewal (one completion
 * model, STYLE §18): rc as the call without a callback returns; stored:
 * the response was stored. Exactly once: before the call returns with a
 * synchronous store (memory), later on the calling thread with an
 * asynchronous one (Redis), when the call may have been freed. */
typedef void (*idem_finish_cb)(int rc, bool stored, void *ud);

/* Create an engine. IDEM_OK, IDEM_EINVAL, IDEM_ENOMEM. */
IDEM_API int idem_engine_new(const struct idem_engine_opts *opts,
                             struct idem_engine **engine_out);

/* Free an engine whose calls are all freed. With an asynchronous store,
 * completions may still be on their way after their calls are freed:
 * detach the store on every thread first (idem_store_redis_detach), which
 * answers them all. NULL is harmless. */
IDEM_API void idem_engine_free(struct idem_engine *e);

/* Time out waits past their bound (their callbacks get CONFLICT) and
 * reclaim the store's expired records. Call it from a timer, e.g. every
 * 100 ms in wait mode. Returns the waits timed out. Thread-safe. */
IDEM_API size_t idem_engine_tick(struct idem_engine *e);

IDEM_API void idem_engine_stats(struct idem_engine *e,
                                struct idem_engine_stats *stats_out);

/* The engine's store (for idem_store_stats() and snapshots). */
IDEM_API struct idem_store *idem_engine_store(struct idem_engine *e);

/* One request's passage through the engine. A call is used by one thread
 * at a time. IDEM_OK, IDEM_ENOMEM, IDEM_EINVAL. */
IDEM_API int idem_call_new(struct idem_engine *e, struct idem_call **call_out);

/* Free a call. One that proceeded and was neither completed nor aborted
 * is settled as idem_call_unknown() (the caller cannot say it did not
 * run); a waiting one is cancelled. A call whose
 * callback may still come (idem_call_cancel() said IDEM_EALREADY) must
 * not be freed until it has. NULL is harmless. */
IDEM_API void idem_call_free(struct idem_call *call);

/* Look at method and headers: *out is PASS, INVALID (with detail) or
 * PENDING. IDEM_OK; IDEM_EINVAL if the call was started already. */
IDEM_API int idem_call_start(struct idem_call *call,
                             const struct idem_request *req,
                             struct idem_decision *out);

/* Feed the next piece of a PENDING call's body to its fingerprint.
 * IDEM_OK, IDEM_EINVAL (not pending), IDEM_ENOMEM. */
IDEM_API int idem_call_body(struct idem_call *call, const void *data,
                            size_t len);

/* Decide a PENDING call whose body is complete. IDEM_OK: *out is PROCEED,
 * REPLAY, CONFLICT, MISMATCH, UNKNOWN, FULL or UNAVAILABLE. IDEM_EINPROGRESS:
 * in wait mode the key is in flight, or the store is asynchronous; cb(call,
 * decision, ud) comes once it is decided (in wait mode: REPLAY, PROCEED
 * after an abort, or CONFLICT at the bound). cb is required in wait mode
 * and with an asynchronous store. IDEM_EINVAL: the call is not pending. */
IDEM_API int idem_call_decide(struct idem_call *call, idem_decide_cb cb,
                              void *ud, struct idem_decision *out);

/* Finish a call that PROCEEDed with its response. A storable response is
 * stored for lifetime_ms (stored); any other releases the key so a retry
 * executes again: the storage policy says the application did not
 * complete it. A body longer than max_stored_body, or a record larger
 * than the store holds, is stored as status and headers only
 * (IDEM_OUTCOME_REPLAY's body_omitted): an executed request is never
 * released for want of room. If the store cannot take the record at all
 * (it failed), the key stays in flight until its lease ends and then
 * follows the unknown-outcome policy. A response carrying
 * "Idempotency-Policy: no-store" is never stored. Hop-by-hop headers,
 * Content-Length, Date and Idempotency-Policy are not stored.
 *
 * The answer: IDEM_OK; IDEM_ESTALE if the lease was lost (nothing
 * written: the key's record changed meanwhile); IDEM_ENOMEM and store
 * errors (the key held, as above). cb NULL: the answer is returned, or
 * IDEM_EINPROGRESS when the store answers later (it is then only
 * counted). cb set: cb(answer, stored, ud) comes exactly once (see
 * idem_finish_cb) and the call returns IDEM_OK. Either way IDEM_EINVAL,
 * with no callback, for a call that did not PROCEED or a bad resp. The
 * call may be freed once this returns. */
IDEM_API int idem_call_complete(struct idem_call *call,
                                const struct idem_response *resp,
                                idem_finish_cb cb, void *ud);

/* Stop a call waiting or deciding, e.g. because its client left. IDEM_OK:
 * no callback will come (with an asynchronous store, a begin already sent
 * is undone when it answers). IDEM_EALREADY (synchronous store): it was
 * decided first; its callback has run or is about to, exactly once, and
 * the call must not be freed before it has. IDEM_ENOTFOUND: the call is
 * not waiting. */
IDEM_API int idem_call_cancel(struct idem_call *call);

/* Release the key of a call that PROCEEDed and provably did not execute
 * (e.g. the upstream refused the connection before a byte of the request
 * was sent): a retry executes. Answers IDEM_OK or IDEM_ESTALE, delivered
 * as for idem_call_complete(); IDEM_EINVAL if the call did not PROCEED. */
IDEM_API int idem_call_abort(struct idem_call *call, idem_finish_cb cb,
                             void *ud);

/* Settle a call that PROCEEDed whose request may have executed but whose
 * outcome will never be known (a connection cut after the request went
 * out, a protocol error, no answer in time). IDEM_UNKNOWN_HOLD: the key
 * keeps an "outcome unknown" record for lifetime_ms, and retries are
 * decided UNKNOWN (502), never executed; IDEM_UNKNOWN_RELEASE: as
 * idem_call_abort(). Answers IDEM_OK or IDEM_ESTALE, delivered as for
 * idem_call_complete(); IDEM_EINVAL if the call did not PROCEED. */
IDEM_API int idem_call_unknown(struct idem_call *call, idem_finish_cb cb,
                               void *ud);

/* Extend the lease of a call that PROCEEDed to lease_ms from now, so a
 * request that works longer than its lease keeps its key (call it every
 * lease_ms / 2 while it works). Answers IDEM_OK or IDEM_ESTALE (the lease
 * was lost: the key's record changed), delivered as for
 * idem_call_complete(); IDEM_EINVAL if the call is not proceeding. */
IDEM_API int idem_call_renew(struct idem_call *call, idem_finish_cb cb,
                             void *ud);

/* Whether a response header is hop-by-hop (RFC 9110 7.6.1) and so is never
 * forwarded or stored: Connection, Keep-Alive, Proxy-Connection, TE,
 * Trailer, Transfer-Encoding, Upgrade. Case-insensitive. */
IDEM_API bool idem_header_is_hop_by_hop(const char *name, size_t len);

/* Whether s (len bytes) is all token characters (RFC 9110 5.6.2: what a
 * header name is made of); true for len 0. */
IDEM_API bool idem_header_is_token(const char *s, size_t len);

/* Whether the header name (len bytes) is want, ignoring ASCII case, as
 * HTTP field names compare (RFC 9110 5.1). want is NUL-terminated. */
IDEM_API bool idem_header_name_is(const char *name, size_t len,
                                  const char *want);

/* Whether a comma-separated field value (len bytes) lists token (tlen
 * bytes), ignoring ASCII case; elements are trimmed of spaces and tabs
 * (e.g. "Connection: keep-alive, Upgrade" lists "upgrade"). */
IDEM_API bool idem_header_list_has(const char *value, size_t len,
                                   const char *token, size_t tlen);

/* Whether every element of such a value is token, ignoring ASCII case
 * and empty elements (true for an empty value): e.g. whether a
 * Connection value names nothing but "keep-alive". */
IDEM_API bool idem_header_list_only(const char *value, size_t len,
                                    const char *token, size_t tlen);

/* The name of an outcome ("proceed", "replay", ...), for logs and metrics. */
IDEM_API const char *idem_outcome_name(enum idem_outcome o);

#endif
