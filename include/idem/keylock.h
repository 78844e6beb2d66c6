/* keylock: a table of per-key locks that free themselves.
 *
 * An entry exists exactly while some owner holds its key or some waiter
 * waits for it; the release that leaves it with neither deletes it in the
 * same critical section. Keys are bytes (pointer, length), copied in. */
#ifndef IDEM_KEYLOCK_H
#define IDEM_KEYLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "env.h"
#include "status.h"

struct idem_keylock;
struct idem_lock_req;

/* Called once when a queued request is granted the lock, with IDEM_OK.
 * It runs on the thread whose release handed the lock over, with no table
 * lock held, so it may release, acquire or cancel on the same table. An
 * event-loop user makes it a notifier: wake the request's own loop (for
 * libevent, event_active() on an event of that loop) and go on there. */
typedef void (*idem_lock_cb)(struct idem_lock_req *req, int status);

/* An asynchronous lock request, in the caller's memory: waiting allocates
 * nothing. Initialize with idem_lock_req_init(); only `data` is the
 * caller's, the rest is private to the table. A request is idle, waiting
 * or holding; it may be reused once idle again. */
struct idem_lock_req {
    void *data;
    /* private */
    struct idem_lock_req *next;
    struct idem_lock_req *prev;
    void *entry;
    idem_lock_cb cb;
    unsigned state;
};

struct idem_keylock_opts {
    /* Lock stripes, rounded up to a power of two, at most 65536.
     * 0: 64. More stripes, less contention between unrelated keys. */
    unsigned stripes;
    /* Waiters allowed per key; beyond it a request gets IDEM_EBUSY.
     * 0: no limit. */
    unsigned max_waiters;
    /* Clock and allocator; copied. NULL: idem_env_default(). */
    const struct idem_env *env;
};

struct idem_keylock_stats {
    uint64_t entries;     /* live entries: keys held or waited for */
    uint64_t waiters;     /* requests and threads waiting now */
    uint64_t created;     /* entries ever created */
    uint64_t freed;       /* entries ever freed; created - freed == entries */
    uint64_t acquired;    /* locks granted, at once or after waiting */
    uint64_t handoffs;    /* grants that went to a waiter on release */
    uint64_t busy;        /* IDEM_EBUSY answers */
    uint64_t timeouts;    /* timed locks that gave up */
    uint64_t cancels;     /* waiting requests cancelled */
    uint64_t table_bytes; /* memory the table holds: stripes with their
                             inline slots, buckets, allocated entries */
    uint64_t spare_bytes; /* freed allocated entries kept for reuse: at
                             most one per stripe, keys of at most 256 bytes */
};

/* Create a table. opts NULL: all defaults. On success *table_out is set.
 * IDEM_OK, IDEM_EINVAL (opts out of range), IDEM_ENOMEM. */
IDEM_API int idem_keylock_new(const struct idem_keylock_opts *opts,
                              struct idem_keylock **table_out);

/* Free a table and everything in it. NULL is harmless. The table should be
 * empty: entries still held or waited for are freed too, and their waiters
 * are never called back. Not thread-safe against other calls on t. */
IDEM_API void idem_keylock_free(struct idem_keylock *t);

/* -- Blocking API, for threads. Ownership is per thread, as with an
 * error-checking mutex: only the locking thread may unlock. All calls are
 * thread-safe. key may be NULL only when klen is 0. -------------------- */

/* Lock key, waiting as long as it takes. IDEM_OK; IDEM_EDEADLK if this
 * thread holds it already; IDEM_EBUSY if max_waiters are waiting;
 * IDEM_ENOMEM; IDEM_EINVAL. */
IDEM_API int idem_keylock_lock(struct idem_keylock *t, const void *key,
                               size_t klen);

/* Lock key if nobody holds it. IDEM_OK; IDEM_EBUSY if held (also by this
 * thread: a trylock never deadlocks); IDEM_ENOMEM; IDEM_EINVAL. */
IDEM_API int idem_keylock_trylock(struct idem_keylock *t, const void *key,
                                  size_t klen);

/* Lock key, waiting at most timeout_ms of real (CLOCK_MONOTONIC) time; a
 * blocked thread sleeps in the kernel, so the env clock cannot wake it.
 * timeout_ms 0 behaves as trylock but answers IDEM_ETIMEDOUT when held.
 * IDEM_OK, IDEM_ETIMEDOUT, or as idem_keylock_lock(). */
IDEM_API int idem_keylock_timedlock(struct idem_keylock *t, const void *key,
                                    size_t klen, uint64_t timeout_ms);

/* Unlock key, handing it to the first waiter if there is one, else
 * deleting its entry. IDEM_OK; IDEM_EPERM if this thread does not hold
 * it (the table is left as it was); IDEM_EINVAL. A key among the last
 * four this thread locked is found without hashing it again. */
IDEM_API int idem_keylock_unlock(struct idem_keylock *t, const void *key,
                                 size_t klen);

/* -- Asynchronous API, for event loops. Ownership is per request. ------ */

/* Make req idle, with its callback and the caller's data. */
IDEM_API void idem_lock_req_init(struct idem_lock_req *req, idem_lock_cb cb,
                                 void *data);

/* Ask for key on behalf of the idle request req.
 * IDEM_OK: req holds the lock now; no callback will come.
 * IDEM_EINPROGRESS: req waits, first in first out; its callback comes once
 *   it holds the lock, unless it is cancelled first.
 * IDEM_EBUSY: max_waiters are waiting already. IDEM_ENOMEM.
 * IDEM_EINVAL: req is not idle, or bad arguments.
 * req must stay in place until it is idle again. Thread-safe. */
IDEM_API int idem_keylock_acquire(struct idem_keylock *t,
                                  struct idem_lock_req *req, const void *key,
                                  size_t klen);

/* Release the lock req holds; req becomes idle and the key passes to its
 * first waiter or its entry is deleted. IDEM_OK; IDEM_EPERM if req does
 * not hold a lock (nothing changes). Thread-safe; for a request that
 * waited, call it once its callback has run. */
IDEM_API int idem_keylock_release(struct idem_keylock *t,
                                  struct idem_lock_req *req);

/* Withdraw a waiting request; it becomes idle and no callback comes.
 * IDEM_OK; IDEM_EALREADY if req was granted the lock (its callback has run
 * or is about to, exactly once, and req must be released as usual);
 * IDEM_ENOTFOUND if req is idle. Thread-safe. */
IDEM_API int idem_keylock_cancel(struct idem_keylock *t,
                                 struct idem_lock_req *req);

/* -- Introspection. Thread-safe; a snapshot, stale once it returns. ---- */

/* Live entries: keys held or waited for. 0 whenever nobody holds or waits. */
IDEM_API size_t idem_keylock_count(struct idem_keylock *t);

/* Fill *stats_out with counters summed over all stripes. */
IDEM_API void idem_keylock_stats(struct idem_keylock *t,
                                 struct idem_keylock_stats *stats_out);

#endif
