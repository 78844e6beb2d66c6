/* worker: one thread, one event loop, one SO_REUSEPORT listener each.
 * Other threads talk to a worker only through its wake queue and eventfd:
 * wait-mode decisions for its connections, new generations and upstream
 * addresses, and the requests to stop. The loop itself is the worker's
 * alone, so it takes no locks (EVENT_BASE_FLAG_NOLOCK). */
#ifndef IDEMPROXY_WORKER_H
#define IDEMPROXY_WORKER_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#include "config.h"
#include "exchange.h"
#include "gen.h"
#include "resolver.h"
#include "idem/engine.h"
#include "idem/store.h"

struct conn;
struct upstream;

/* How often a worker says its loop turns (the watchdog's heartbeat). */
#define WORKER_BEAT_MS 1000

/* The proxy's monotonic millisecond clock (coarse: cheap enough per
 * read): heartbeats, upstream health, HTTP/2's budgets and deadlines. */
int64_t worker_now_ms(void);

/* clock's time ms milliseconds from now, as pthread's timed waits want
 * it (pthread_cond_timedwait, pthread_timedjoin_np). */
struct timespec worker_deadline(clockid_t clock, int64_t ms);

/* What one read takes at most: the worker's scratch buffer. */
#define WORKER_READ_MAX (64u * 1024)

TAILQ_HEAD(upstream_list, upstream);
LIST_HEAD(conn_list, conn);

struct worker {
    unsigned id;
    bool inited; /* worker_init ran (a zeroed worker has nothing to free) */
    pthread_t thread;
    bool started; /* the thread runs (worker_start succeeded) */
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *accept_resume; /* re-enables it after an accept pause */
    struct event *wake;          /* the queue's news, raised by this thread */
    struct event *wake_fd;       /* the same, raised by others: wake_efd */
    int wake_efd;                /* eventfd; -1 before worker_init */
    struct event *log_flush;     /* writes this thread's buffered log lines */
    struct event *log_later;     /* the same, LOG_BATCH_MS after the first */
    pthread_mutex_t mu;          /* guards the wake queue and stopping */
    struct conn *woken, *woken_tail; /* decided, to act on (FIFO) */
    bool signalled;                  /* under mu: wake_efd written, not read */
    bool stop_requested;        /* under mu: another thread asked to stop */
    bool break_requested;       /* under mu: leave the loop now */
    struct gen *next_gen;       /* under mu: the generation to take next */
    struct gen *gen;            /* the worker's: the one it serves with */
    struct upaddrs *next_addrs; /* under mu: the addresses to take next */
    struct upaddrs *addrs;      /* the worker's: the upstream's addresses */
    int64_t *down_until;        /* per addrs->a[i]: skipped until then */
    size_t rr;                  /* the next address in turn */
    struct resolver *resolver;  /* poked when a connect fails */
    bool stopping;              /* the worker's own: no more requests */
    struct event *beat;         /* every WORKER_BEAT_MS: the loop turns */
    _Atomic int64_t beat_ms;    /* when it last did (worker_now_ms) */
    struct conn_list conns;
    unsigned nconns;
    struct upstream_list idle;
    unsigned nidle;
    const struct config *cfg;      /* gen's */
    struct ex_ctx ctx;             /* what its exchanges share */
    struct idem_store *redis;      /* the Redis store to attach, or NULL */
    struct tls *tls;               /* TLS contexts (main's), or NULL: none */
    char scratch[WORKER_READ_MAX]; /* every read lands here first */
};

/* Leave base's loop once its active events have run. loopexit allocates
 * (an event_base_once) and can fail; loopbreak cannot. */
static inline void loop_exit(struct event_base *base)
{
    if (event_base_loopexit(base, NULL) != 0)
        event_base_loopbreak(base);
}

/* Create worker w bound to fd (a listening socket it takes over),
 * serving with gen (it takes a reference) and the upstream's addresses
 * addrs (NULL: none yet; a reference is taken). redis: the engines' store
 * if it is Redis (the worker's thread attaches its loop to it), else
 * NULL. */
int worker_init(struct worker *w, unsigned id, int fd, struct gen *gen,
                struct idem_store *redis, struct upaddrs *addrs);
/* From any thread: connect to the addresses of s (a reference is taken)
 * from the worker's next wake on. */
void worker_set_addrs(struct worker *w, struct upaddrs *s);
/* From any thread: serve with gen (a reference is taken) from the
 * worker's next wake on; the one it held is let go then. */
void worker_set_gen(struct worker *w, struct gen *gen);
int worker_start(struct worker *w);
/* From any thread: stop accepting, finish open connections, then leave. */
void worker_stop(struct worker *w);
/* From any thread: leave the loop now, open connections or not (a
 * shutdown past its timeout); worker_deinit() closes what is left. */
void worker_break(struct worker *w);
void worker_join(struct worker *w);
void worker_deinit(struct worker *w);
/* From any thread: have conn_woken(c) run on c's worker. */
void worker_wake_conn(struct worker *w, struct conn *c);
/* Buffered log lines wait for the end of this loop pass. */
void worker_log_pending(struct worker *w);

#endif
