/* The Redis store's insides, shared by its files: the store (store.c),
 * a thread's connections to its nodes (conn.c), where a command goes and
 * what its answer means (route.c), and the Sentinels (sentinel.c). One
 * struct rthread per attached thread; one struct rconn per node it talks
 * to; one struct rop per command in flight. Nothing here is locked: a
 * thread's objects are touched by that thread only, and what the store
 * shares is atomic (the statistics) or behind nodes_lock. */
#ifndef IDEM_REDIS_RSTORE_H
#define IDEM_REDIS_RSTORE_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>

#include "idem/redis.h"
#include "list.h"
#include "store_internal.h"
#include "url.h"

#define IDEM__RS_NODE_STATS 64 /* nodes counted per store */
#define IDEM__RS_REDIRECTS 5   /* MOVED/ASK followed per command */

enum idem__rs_script { RS_BEGIN, RS_COMPLETE, RS_ABORT, RS_NSCRIPTS };

struct idem__rs_node_stat {
    char addr[72]; /* "host:port" */
    atomic_uint_fast64_t up;
};

struct idem__rs_store {
    struct idem_store base;
    struct idem_env env;
    struct idem__redis_addr addr;
    char *prefix;
    int64_t connect_timeout_ms, command_timeout_ms;
    int replicas; /* WAIT for this many after each write; 0: none */
    const char *const *scripts;
    char sha[RS_NSCRIPTS][41]; /* SHA-1 of each script, hex */
    void (*log)(void *ud, bool trouble, const char *msg);
    void *log_ud;
    atomic_uint_fast64_t connections, connects, commands, errors, timeouts,
        pending, policy, redirects, failovers, wait_timeouts, refreshes;
    pthread_mutex_t nodes_lock;
    size_t nnodes;
    struct idem__rs_node_stat nodes[IDEM__RS_NODE_STATS];
};

enum idem__rs_state { RC_DOWN, RC_CONNECTING, RC_UP };
enum idem__rs_kind { RK_DATA, RK_SENTINEL };

struct idem__rs_thread;

/* A connection to one node (or Sentinel), remade with backoff when lost. */
struct idem__rs_conn {
    struct idem__rs_thread *t;
    enum idem__rs_kind kind;
    char *host; /* NULL: the store's Unix socket */
    int port;
    redisAsyncContext *ac; /* NULL while down */
    enum idem__rs_state state;
    void *timer;
    int64_t backoff_ms;
    uint64_t tried_ms;     /* when the last connect began (idem__rs_now) */
    int setup_left;        /* setup replies to come; all well: backoff resets */
    bool quiet;            /* a failed connect was logged: not again until up */
    bool told_moved;       /* a redirection was logged (single mode) */
    bool was_up;           /* this ac connected (else nothing of it ran) */
    bool wait_sent;        /* a WAIT is in flight */
    struct idem__list ops; /* commands sent, oldest first (rop) */
    struct idem__list waiting; /* written, for the next WAIT (rop) */
    struct idem__rs_node_stat *stat;
    struct idem__list link; /* on t->nodes */
};

/* A thread's side of a store. */
struct idem__rs_thread {
    struct idem__rs_store *rs;
    struct idem_redis_loop loop;  /* the caller's, copied at attach */
    struct idem__list nodes;      /* struct idem__rs_conn, data ones */
    struct idem__rs_conn *main;   /* SINGLE, SENTINEL: the primary */
    struct idem__rs_conn **slots; /* CLUSTER: slot -> primary, or NULL */
    struct idem__list parked;     /* commands waiting to be (re)sent */
    void *tick;                   /* parked commands, map refreshes */
    bool tick_armed;
    bool want_refresh, refreshing;
    bool told_moved, told_ask; /* a redirection followed was logged */
    uint64_t refreshed_ms;
    struct idem__rs_conn *sentinel; /* SENTINEL: asks, then subscribes */
    size_t sentinel_next;           /* the Sentinel to ask next */
    uint64_t asked_ms;
    bool want_ask; /* an ask came too soon after the last: the tick asks */
    struct idem__list link; /* on the thread's list */
};

/* A command in flight: a script, or a WAIT for scripts that wrote. */
struct idem__rs_op {
    struct idem__rs_thread *t;
    struct idem__rs_conn *c; /* sent on; NULL while parked */
    struct idem__list link;  /* on c->ops, c->waiting, a group, or parked */
    enum idem__rs_script script;
    bool is_wait;
    bool retried;    /* sent again as EVAL */
    bool needs_wait; /* a write to be WAITed for */
    bool internal;   /* ours (an undo): done is not the engine's */
    uint64_t deadline_ms;
    idem__store_done done;
    void *ud;
    char *cmd; /* the EVALSHA command (hiredis-allocated) */
    int cmdlen;
    unsigned slot;
    int redirects;
    struct idem__rs_conn *ask; /* ASK: send there, after ASKING */
    struct idem__list group;   /* a WAIT: the scripts it waits for */
    uint8_t token[16];         /* begin: the owner, to undo */
};

/* -- store.c ------------------------------------------------------------ */
void idem__rs_say(struct idem__rs_store *rs, bool trouble, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
uint64_t idem__rs_now(const struct idem__rs_store *rs);
/* What reply means for op's script: IDEM_OK, EEXIST (*blob), ESTALE,
 * EIO, ENOMEM. */
int idem__rs_judge(struct idem__rs_op *op, const redisReply *reply,
                   struct idem__blob *blob);
/* Answer op (rc, and blob on IDEM_EEXIST) and free it. */
void idem__rs_finish(struct idem__rs_op *op, int rc, struct idem__blob *blob);
/* Undo begin op's record (a fire-and-forget abort under its token). */
void idem__rs_undo(struct idem__rs_op *op);

/* -- conn.c ------------------------------------------------------------- */
/* The data connection of t to host:port (NULL host: the Unix socket),
 * made (and connecting) if t has none. NULL if out of memory. */
struct idem__rs_conn *idem__rs_node(struct idem__rs_thread *t, const char *host,
                                    int port);
struct idem__rs_conn *idem__rs_conn_new(struct idem__rs_thread *t,
                                        enum idem__rs_kind kind,
                                        const char *host, int port);
void idem__rs_conn_start(struct idem__rs_conn *c);
/* Take c down now; its commands fail (with no reply). */
void idem__rs_conn_drop(struct idem__rs_conn *c);
/* Down, then free c. */
void idem__rs_conn_free(struct idem__rs_conn *c);
/* A command wants c, which is down: if connecting failed, connect again
 * now rather than when the backoff ends, unless the last attempt began
 * under HURRY_MS ago. */
void idem__rs_conn_hurry(struct idem__rs_conn *c);
/* Point c's timer at what its state waits for. */
void idem__rs_conn_arm(struct idem__rs_conn *c);
/* Move c to host:port and connect there now. 0, or -1 (no memory). */
int idem__rs_conn_move(struct idem__rs_conn *c, const char *host, int port);
struct idem__rs_op *idem__rs_oldest(const struct idem__rs_conn *c);

/* -- route.c ------------------------------------------------------------ */
/* Send op to where its key lives, or park it until there is somewhere.
 * 0, or -1: op could not be sent or parked (it is the caller's). */
int idem__rs_dispatch(struct idem__rs_op *op);
void idem__rs_on_reply(redisAsyncContext *ac, void *r, void *privdata);
/* Fail what c holds that hiredis no longer has (its ops, its WAIT). */
void idem__rs_fail_orphans(struct idem__rs_conn *c);
/* A data connection went down (or answered READONLY): find where to go. */
void idem__rs_lost(struct idem__rs_conn *c);
/* Ask for the Cluster's map soon. */
void idem__rs_want_refresh(struct idem__rs_thread *t);
void idem__rs_tick_arm(struct idem__rs_thread *t, int64_t ms);
void idem__rs_on_tick(void *arg);
/* The key of a command formatted as EVALSHA sha 1 KEY ...: *key_out and
 * its length, or 0. */
size_t idem__rs_cmd_key(const char *cmd, int cmdlen, const char **key_out);
/* Whether t has commands on any connection or parked. */
bool idem__rs_busy(const struct idem__rs_thread *t);

/* -- sentinel.c --------------------------------------------------------- */
/* Ask the next Sentinel where the primary is (again). */
void idem__rs_sentinel_ask(struct idem__rs_thread *t);
/* A Sentinel connection is made: ask, then subscribe. 0 or -1. */
int idem__rs_sentinel_setup(struct idem__rs_conn *c);
/* Sentinel connection c was lost: move it to the next Sentinel. */
void idem__rs_sentinel_lost(struct idem__rs_conn *c);

#endif
