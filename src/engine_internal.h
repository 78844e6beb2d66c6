/* The engine's insides, shared by engine.c (the rules), engine_finish.c
 * (complete, abort, renew), engine_wait.c (calls waiting on a key in
 * flight, synchronous stores) and engine_async.c (asynchronous stores:
 * store ops in flight, waits that poll). */
#ifndef IDEM_ENGINE_INTERNAL_H
#define IDEM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "fingerprint.h"
#include "idem/engine.h"
#include "list.h"
#include "record.h"
#include "store_internal.h"

#define IDEM__MAX_SCOPE_HEADERS 16
#define IDEM__MAX_FP_HEADERS 16
#define IDEM__INLINE_HEADERS 8 /* replayed headers kept in the call */

enum call_state {
    CALL_NEW = 0,
    CALL_PASSED,     /* PASS or INVALID: nothing more to do */
    CALL_PENDING,    /* subject: fingerprinting the body */
    CALL_DECIDING,   /* asynchronous store: its begin is in flight */
    CALL_WAITING,    /* in wait mode: listed, or polling (asynchronous) */
    CALL_PROCEEDING, /* owns the key's in-flight record */
    CALL_FINISHED,   /* decided or completed: only free is left */
};

struct idem_engine {
    struct idem_env env;
    struct idem_store *store;
    bool owns_store;
    char **methods; /* one allocation each: pointers, then the bytes */
    size_t nmethods;
    char **key_headers; /* key_header and, if set, alt_key_header */
    size_t nkey_headers;
    char **scope_headers;
    size_t nscope_headers;
    char **fp_headers;
    size_t nfp_headers;
    struct idem_key_rules key_rules;
    size_t max_key_len;
    int64_t lease_ms, lifetime_ms, wait_ms;
    uint32_t retry_after_s;
    enum idem_conflict_mode conflict;
    size_t max_waiters;
    size_t max_stored_body;
    bool hold_unknown; /* IDEM_UNKNOWN_HOLD */
    bool (*storable)(unsigned status, void *ud);
    void *storable_ud;
    uint64_t token_seed;
    atomic_uint_fast64_t token_next;
    /* counters */
    atomic_uint_fast64_t outcomes[IDEM_OUTCOME_COUNT];
    atomic_uint_fast64_t stored, not_stored, stale, wait_timeouts, in_flight;
    atomic_uint_fast64_t body_omitted, unknown;
    atomic_uint_fast64_t renewed;
    atomic_size_t polling;                /* asynchronous waits now */
    const struct idem__waiting *wait_ops; /* by the store's kind */
    /* calls waiting in wait mode (synchronous stores): one list, bounded
     * by max_waiters */
    pthread_mutex_t wait_mu;
    struct idem__list waiting;
    size_t nwaiting;
    atomic_size_t nwaiting_hint; /* read without the lock: 0 skips wakes */
};

struct idem_call {
    struct idem_engine *e;
    enum call_state state;
    struct idem__fp fp;
    uint8_t fingerprint[IDEM_FP_LEN];
    uint8_t token[IDEM__TOKEN_LEN];
    uint64_t created_ms; /* wall clock at its begin */
    struct idem_decision d;
    struct idem__blob blob;          /* REPLAY: the record's bytes */
    struct idem_header *replay_hdrs; /* REPLAY: views into blob */
    /* replay_hdrs when they are few, sparing an allocation per replay */
    struct idem_header inline_hdrs[IDEM__INLINE_HEADERS];
    /* wait mode; wlink (on e->waiting while listed) is guarded by
     * e->wait_mu */
    idem_decide_cb cb;
    void *cb_ud;
    uint64_t deadline_ms;
    struct idem__list wlink;
    /* asynchronous stores: the begin in flight, or the poll timer */
    struct idem__op *op;
    void *timer;
    int64_t poll_ms; /* the next poll's delay */
    bool polling;    /* counted in e->polling */
    size_t klen;
    uint8_t skey[]; /* store key: scope digest, then the key */
};

/* An encoded in-flight record's most bytes. */
#define IDEM__INFLIGHT_MAX 128

/* How long an in-flight record lives in the store. */
int64_t idem__engine_inflight_ttl(const struct idem_engine *e);

/* Encode call's in-flight record, its lease ending lease_ms after wall_ms
 * (now, read once by the caller). */
int idem__engine_encode_inflight(const struct idem_call *call, uint64_t wall_ms,
                                 uint8_t *buf, size_t cap, size_t *len_out);

/* Encode call's in-flight record and ask the store to begin: the store's
 * answer (IDEM_EINPROGRESS: done(ud, ...) comes later). */
int idem__engine_store_begin(struct idem_call *call, struct idem__blob *blob,
                             idem__store_done done, void *ud);

/* Set call->d from a begin's answer: PROCEED, REPLAY, CONFLICT, MISMATCH
 * or UNAVAILABLE; takes blob. Returns true when the key is in flight
 * under another owner (the decision is CONFLICT). */
bool idem__engine_begun(struct idem_call *call, int rc,
                        struct idem__blob *blob);

/* Both, for a synchronous store. */
bool idem__engine_try_begin(struct idem_call *call);

/* Hand a waiting or deciding call its decision (call->d) through its
 * callback, counted. */
void idem__engine_deliver(struct idem_call *call);

/* Set call->d to CONFLICT with detail. */
void idem__engine_set_conflict(struct idem_call *call, const char *detail);

/* Count an outcome delivered to the caller. */
void idem__engine_count(struct idem_engine *e, enum idem_outcome o);

/* How calls decide and wait for a key in flight, one interface for both
 * kinds of store, chosen by the store's kind: on the engine's list, woken
 * by the owner's complete or abort (synchronous stores, engine_wait.c), or
 * polling the store on the env's timers (asynchronous ones,
 * engine_async.c). */
struct idem__waiting {
    /* Decide call, its fingerprint and token set, cb and deadline too:
     * IDEM_OK with call->d, or IDEM_EINPROGRESS (call->cb comes later). */
    int (*decide)(struct idem_call *call);
    /* Stop a deciding or waiting call: IDEM_OK (no callback will come),
     * IDEM_EALREADY (it is on its way), IDEM_ENOTFOUND (not waiting). */
    int (*cancel)(struct idem_call *call);
    /* Key skey[0..klen) left flight: decide its waiters. */
    void (*left)(struct idem_engine *e, const uint8_t *skey, size_t klen);
    /* Decide, as CONFLICT, the waits whose bound passed: how many. */
    size_t (*expire)(struct idem_engine *e);
};

extern const struct idem__waiting idem__list_waiting, idem__poll_waiting;

/* An asynchronous store op the engine awaits, with copies of what its
 * answer needs: the call may be gone by then. */
enum idem__op_kind {
    IDEM__OP_BEGIN,    /* a deciding or polling call's begin */
    IDEM__OP_COMPLETE, /* storing a response */
    IDEM__OP_NOSTORE,  /* releasing a key: the response is not kept */
    IDEM__OP_ABORT,    /* releasing a key: the call aborted */
    IDEM__OP_RELEASE,  /* releasing a key nobody waits for */
    IDEM__OP_RENEW,    /* extending a lease */
    IDEM__OP_UNKNOWN,  /* holding a key whose outcome is unknown */
};

struct idem__op {
    struct idem_engine *e;
    struct idem_call *call; /* BEGIN: the call; NULL once it let go */
    enum idem__op_kind kind;
    idem_finish_cb cb;
    void *ud;
    uint8_t token[IDEM__TOKEN_LEN];
    size_t klen;
    uint8_t skey[]; /* the store key */
};

/* An op for call's key; NULL if out of memory. */
struct idem__op *idem__op_new(struct idem_call *call, enum idem__op_kind kind,
                              idem_finish_cb cb, void *ud);
void idem__op_free(struct idem__op *op);

/* An idem__store_done for ops: count the answer, tell op->cb, free op. */
void idem__op_done(void *ud, int rc, struct idem__blob *blob);

/* Release a key no call waits on (token's owner is gone or failed). */
void idem__release_key(struct idem_engine *e, const uint8_t *skey, size_t klen,
                       const uint8_t *token);

#endif
