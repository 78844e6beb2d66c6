/* libidem-redis: the Redis (or Valkey) store, a library of its own so that
 * libidem links no event loop and no hiredis. Records live in Redis (one
 * server, a Cluster, or the primary Sentinels name) under a lease or their
 * lifetime; every operation is one Lua script on one key (atomic, one
 * round trip, fenced by the owner's token). The store is asynchronous
 * and, like hiredis, brings no event loop: each thread that makes engine
 * calls attaches its own loop through struct idem_redis_loop (libevent's:
 * idem/redis_libevent.h) and gets a connection of its own; answers come on
 * that loop. It never raises SIGPIPE (its writes use MSG_NOSIGNAL), so
 * a process need not ignore it. docs/internals/redis.md. */
#ifndef IDEM_REDIS_H
#define IDEM_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "env.h"
#include "status.h"
#include "store.h"

/* An event loop, as the Redis store uses it: one-shot events, each run
 * once per add, on the thread that attached. A watch fires when fd is
 * readable (or writable, with write); a timer ms after its add. Every
 * function is called on that thread; loop is passed to each. */
struct idem_redis_loop {
    void *(*watch_new)(void *loop, int fd, bool write, void (*cb)(void *ud),
                       void *ud);
    void *(*timer_new)(void *loop, void (*cb)(void *ud), void *ud);
    /* Arm ev (ms: a timer's delay; ignored for a watch). 0 or -1. */
    int (*add)(void *loop, void *ev, int64_t ms);
    /* Disarm ev; it does not fire until added again. */
    void (*del)(void *loop, void *ev);
    /* Disarm and free ev; allowed from inside its own callback. */
    void (*free)(void *loop, void *ev);
    /* Handle what is ready or due, waiting for the next event if nothing
     * is: a detaching store drains its commands with it. */
    void (*run_once)(void *loop);
    void *loop;
};

struct idem_store_redis_opts {
    /* Required. One server: "redis://[[user]:password@]host[:port][/db]"
     * (port 6379, db 0) or "unix:///path/to/socket[?db=N]". A Cluster:
     * "redis-cluster://[[user]:password@]host:port[,host:port...]", seed
     * nodes (the map comes from CLUSTER SLOTS; MOVED and ASK are
     * followed). Sentinels: "redis-sentinel://[[user]:password@]host:port
     * [,host:port...]/MASTER" (port 26379): the primary of MASTER, asked
     * of the Sentinels and followed across failovers; the password is
     * the primary's (the Sentinels take none). */
    const char *url;
    /* Keys are "<prefix>:{<scope>:<key>}". NULL: "idem". */
    const char *prefix;
    int64_t connect_timeout_ms; /* 0: 1000 */
    int64_t command_timeout_ms; /* 0: 1000 */
    /* Connection news for an operator's log, called on the attached
     * thread: trouble (lost, refused, timed out, an evicting
     * maxmemory-policy) or not (up). NULL: silent. */
    void (*log)(void *ud, bool trouble, const char *msg);
    void *log_ud;
    const struct idem_env *env; /* copied. NULL: idem_env_default() */
    /* 0..16. N > 0: a begin, complete or renewal that wrote is answered
     * only once N replicas acknowledge it (WAIT N, within the command
     * timeout); fewer in time is IDEM_EIO, and a begin's record is then
     * deleted again. So a failover to such a replica keeps what was
     * answered. 0: answered once the primary has it (replication is
     * asynchronous: a failover may lose the last writes). */
    int replicas;
};

/* What Redis answered for maxmemory-policy, asked on every connection. */
#define IDEM_REDIS_POLICY_UNKNOWN 0    /* not asked yet, or CONFIG refused */
#define IDEM_REDIS_POLICY_NOEVICTION 1 /* records are never evicted */
#define IDEM_REDIS_POLICY_EVICTS 2     /* Redis may evict records */

struct idem_store_redis_stats {
    uint64_t connections; /* connections up now */
    uint64_t connects;    /* connections made, first ones included */
    uint64_t commands;    /* commands sent */
    uint64_t errors;      /* commands failed: error reply, lost link, timeout */
    uint64_t timeouts;    /* commands or connects past their deadline */
    uint64_t pending;     /* commands awaiting their answer now */
    uint64_t policy;      /* maxmemory-policy: IDEM_REDIS_POLICY_* */
    uint64_t redirects;   /* Cluster MOVED and ASK answers followed */
    /* Primaries replaced, as each thread saw them: a Sentinel naming a
     * new primary, or a Cluster map where a primary serves no more. */
    uint64_t failovers;
    uint64_t wait_timeouts; /* WAITs with fewer replicas than asked */
    uint64_t refreshes;     /* Cluster maps (CLUSTER SLOTS) taken */
};

/* One node's connections, for idem_store_redis_nodes(). */
struct idem_store_redis_node {
    char addr[72];        /* "host:port" ("unix:0" for a Unix socket) */
    uint64_t connections; /* connections up to it now, all threads */
};

/* A Redis store. IDEM_OK; IDEM_EINVAL (a bad url or option); IDEM_ENOMEM.
 * It connects on attach, not here. Free it with idem_store_free() once
 * every thread has detached. */
IDEM_API int idem_store_redis_new(const struct idem_store_redis_opts *opts,
                                  struct idem_store **store_out);

/* Give the calling thread a connection on loop (copied), made now and
 * remade (with capped backoff) whenever it is lost. Until it is up, calls
 * answer UNAVAILABLE. IDEM_OK, IDEM_EINVAL (not a Redis store, a loop
 * missing a function, or attached already), IDEM_ENOMEM. */
IDEM_API int idem_store_redis_attach(struct idem_store *s,
                                     const struct idem_redis_loop *loop);

/* Fill env's timer hooks (after, cancel) with timers on the loop the
 * calling thread attached a Redis store to: what an engine over the Redis
 * store needs for wait mode, where a waiting call polls the store. Each
 * thread's timers run on its own loop. */
IDEM_API void idem_store_redis_timers(struct idem_env *env);

/* Close the calling thread's connection: run its loop until the commands
 * in flight are answered or their deadline passes (the rest fail with
 * IDEM_EIO), then free it. Call it before the loop and the store go. */
IDEM_API void idem_store_redis_detach(struct idem_store *s);

/* The Redis store's own counters. IDEM_OK, or IDEM_EINVAL (not a Redis
 * store: *stats_out zeroed). Thread-safe. */
IDEM_API int idem_store_redis_stats(struct idem_store *s,
                                    struct idem_store_redis_stats *stats_out);

/* The nodes the store has connected to (up to 64 are counted), their
 * connections up now, into out[0..cap); how many there are into *n_out
 * (may exceed cap: then only cap are written). IDEM_OK, or IDEM_EINVAL
 * (not a Redis store, out NULL with cap > 0, n_out NULL). Thread-safe. */
IDEM_API int idem_store_redis_nodes(struct idem_store *s,
                                    struct idem_store_redis_node *out,
                                    size_t cap, size_t *n_out);

#endif
