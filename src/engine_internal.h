/* The engine's insides, shared by engine.c (the rules) and engine_wait.c
 * (calls waiting on a key in flight). */
#ifndef IDEM_ENGINE_INTERNAL_H
#define IDEM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "fingerprint.h"
#include "idem/engine.h"
#include "record.h"
#include "store_internal.h"

#define IDEM__MAX_SCOPE_HEADERS 16
#define IDEM__MAX_FP_HEADERS 16

enum call_state {
    CALL_NEW = 0,
    CALL_PASSED,     /* PASS or INVALID: nothing more to do */
    CALL_PENDING,    /* subject: fingerprinting the body */
    CALL_WAITING,    /* in wait mode, on the wait list */
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
    bool (*storable)(unsigned status, void *ud);
    void *storable_ud;
    uint64_t token_seed;
    atomic_uint_fast64_t token_next;
    /* counters */
    atomic_uint_fast64_t outcomes[IDEM_OUTCOME_UNAVAILABLE + 1];
    atomic_uint_fast64_t stored, not_stored, stale, wait_timeouts, in_flight;
    /* calls waiting in wait mode: one list, bounded by max_waiters */
    pthread_mutex_t wait_mu;
    struct idem_call *waiting;
    size_t nwaiting;
    atomic_size_t nwaiting_hint; /* read without the lock: 0 skips wakes */
};

struct idem_call {
    struct idem_engine *e;
    enum call_state state;
    struct idem__fp fp;
    uint8_t fingerprint[IDEM_FP_LEN];
    uint8_t token[IDEM__TOKEN_LEN];
    struct idem_decision d;
    struct idem__blob blob;          /* REPLAY: the record's bytes */
    struct idem_header *replay_hdrs; /* REPLAY: views into blob */
    /* wait mode; the links and `listed` are guarded by e->wait_mu */
    idem_decide_cb cb;
    void *cb_ud;
    uint64_t deadline_ms;
    struct idem_call *wnext, *wprev;
    bool listed;
    size_t klen;
    uint8_t skey[]; /* store key: scope digest, then the key */
};

/* Try to own call's key (store begin). Sets call->d to PROCEED, REPLAY,
 * CONFLICT, MISMATCH or UNAVAILABLE. Returns true when the key is in
 * flight under another owner (the decision is CONFLICT). */
bool idem__engine_try_begin(struct idem_call *call);

/* Count an outcome delivered to the caller. */
void idem__engine_count(struct idem_engine *e, enum idem_outcome o);

/* Wait mode: put call on the wait list unless a retry under the list's
 * lock decides it. IDEM_EINPROGRESS (waiting) or IDEM_OK (call->d). */
int idem__wait_begin(struct idem_call *call);

/* The key of call finished (completed or aborted): decide its waiters. */
void idem__wait_wake(struct idem_engine *e, const struct idem_call *owner);

/* Take call off the wait list. true if it was on it (no callback will
 * come); false if a wake or a timeout took it first. */
bool idem__wait_cancel(struct idem_call *call);

/* Decide, as CONFLICT, the waits whose bound has passed. */
size_t idem__wait_expire(struct idem_engine *e);

#endif
