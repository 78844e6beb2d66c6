/* idemproxy's core: workers (one event loop per thread), client
 * connections, and each worker's pool of keep-alive upstream connections.
 * A client connection handles one request at a time; pipelined requests
 * wait, parsed no further, in its input buffer, so answers go out in
 * order. docs/idemproxy.md describes the behaviour. */
#ifndef IDEMPROXY_PROXY_H
#define IDEMPROXY_PROXY_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <llhttp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include "config.h"
#include "http.h"
#include "idem/engine.h"
#include "idem/redis_libevent.h"
#include "idem/store.h"

struct worker;
struct conn;

/* Backpressure, both ways: a body queued for the slower side past
 * UPSTREAM_HIGH bytes stops reading from the faster one until it drains to
 * UPSTREAM_LOW. */
#define UPSTREAM_HIGH (256 * 1024)
#define UPSTREAM_LOW (64 * 1024)

/* The upstream's response head: bytes and fields at most (502 past). */
#define RESPONSE_HEAD_MAX (64 * 1024)
#define RESPONSE_FIELDS_MAX 256

/* An upstream connection: idle in its worker's pool, or serving one
 * client connection's request. */
struct upstream {
    TAILQ_ENTRY(upstream) link; /* in the pool while idle */
    struct worker *w;
    struct bufferevent *bev;
    struct conn *conn; /* the request it serves; NULL when idle */
    llhttp_t parser;
    struct http_head head; /* the response's */
    bool connected;
    bool pooled;     /* in the idle pool */
    bool done;       /* the response is whole */
    bool reused;     /* served a request before this one */
    bool got_bytes;  /* a response byte arrived for this request */
    bool keep_alive; /* the response allows reuse */
    bool head_only;  /* the request was HEAD: no body follows */
    size_t queued;   /* the request's bytes queued when it was sent */
};

TAILQ_HEAD(upstream_list, upstream);

enum conn_state {
    CS_HEAD,     /* reading a request head */
    CS_BODY,     /* reading its body */
    CS_DECIDING, /* waiting for the engine (wait mode) */
    CS_UPSTREAM, /* forwarded; relaying the response */
    CS_DRAINING, /* the last response is written; close after */
    CS_LINGER,   /* answered early: discard what the client still sends */
};

/* After answering a request before reading all of it, the connection
 * reads and discards for up to LINGER_IDLE_S idle seconds and LINGER_MAX
 * bytes before closing, so the client reads the answer instead of a
 * reset (what nginx calls a lingering close). */
#define LINGER_IDLE_S 2
#define LINGER_MAX (64u << 20)

struct conn {
    LIST_ENTRY(conn) link;
    struct worker *w;
    struct bufferevent *bev;
    char client[64];       /* "ip:port" */
    struct http_reader rd; /* the request parser and head */
    struct evbuffer *body; /* the request body, up to max_body */
    enum conn_state state;
    bool close_after;  /* Connection: close, HTTP/1.0, or an error */
    bool expect_100;   /* 100-continue is owed before the body */
    bool request_done; /* the whole request has been read */
    bool chunked_out;  /* the response goes to the client chunked */
    bool responded;    /* a response head went to the client */
    unsigned refusal;  /* a refusal decided inside a parser callback */
    const char *refusal_detail;
    const char *refusal_outcome;
    bool gone;        /* the client left; finish for the store only */
    bool late;        /* answered 504: waiting on for the late response */
    bool retried;     /* sent again once on a fresh upstream */
    bool streaming;   /* not covered: the body streams upstream */
    bool read_paused; /* the upstream is behind: reading stopped */
    bool kick;        /* run the resumed parser even on no input */
    bool up_paused;   /* the client is behind: upstream reading stopped */
    size_t lingered;  /* bytes discarded while lingering */
    bool parsing;     /* inside conn_parse: it frees, not callees */
    bool dead;        /* to be freed when conn_parse returns */
    struct idem_call *call;
    struct conn *woken_next; /* on its worker's wake queue */
    struct idem_decision decision;
    struct evbuffer *stored; /* response body kept for complete() */
    bool stored_over;        /* it passed max_stored_body */
    bool store_failed;       /* out of memory keeping it: do not store */
    struct upstream *up;
    struct event *timer; /* client or upstream deadline */
    struct event *renew; /* lease renewal while proceeding; made lazily */
    uint64_t t_start_us, t_upstream_us;
    unsigned status_sent;
};

struct worker {
    unsigned id;
    pthread_t thread;
    bool started; /* the thread runs (worker_start succeeded) */
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *accept_resume; /* re-enables it after an accept pause */
    struct event *wake; /* other threads' news: wait-mode decisions, stop */
    pthread_mutex_t mu; /* guards the wake queue and stopping */
    struct conn *woken, *woken_tail; /* decided, to act on (FIFO) */
    bool stop_requested; /* under mu: another thread asked to stop */
    bool stopping;       /* the worker's own: no more requests */
    LIST_HEAD(, conn) conns;
    unsigned nconns;
    struct upstream_list idle;
    unsigned nidle;
    const struct config *cfg;
    struct idem_engine *engine;
    struct idem_store *redis; /* the Redis store to attach, or NULL */
    struct sockaddr_storage upstream_addr;
    int upstream_addrlen;
    uint64_t bypass_logged_us; /* the last --store-failure open warning */
};

/* -- worker.c --------------------------------------------------------- */

/* Leave base's loop once its active events have run. loopexit allocates
 * (an event_base_once) and can fail; loopbreak cannot. */
static inline void loop_exit(struct event_base *base)
{
    if (event_base_loopexit(base, NULL) != 0)
        event_base_loopbreak(base);
}

/* A socket bufferevent on base that can write, or NULL (out of
 * memory). */
struct bufferevent *proxy_bev_new(struct event_base *base, evutil_socket_t fd);

/* How long a listener stops accepting when out of descriptors. */
#define ACCEPT_PAUSE_MS 100

/* For a listener's error callback (name: which listener, for the log):
 * accept() failed. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM), the socket stays readable and the loop would spin on it, so l
 * is disabled and resume (a timer whose callback re-enables it) armed
 * for ACCEPT_PAUSE_MS. Logged at most once a second, all listeners
 * together. */
void proxy_accept_failed(struct evconnlistener *l, struct event *resume,
                         const char *name);

/* Create worker w bound to fd (a listening socket it takes over). redis:
 * the engine's store if it is Redis (the worker's thread attaches its
 * loop to it), else NULL. */
int worker_init(struct worker *w, unsigned id, int fd, const struct config *cfg,
                struct idem_engine *engine, struct idem_store *redis,
                const struct sockaddr_storage *up, int uplen);
int worker_start(struct worker *w);
/* From any thread: stop accepting, finish open connections, then leave. */
void worker_stop(struct worker *w);
void worker_join(struct worker *w);
void worker_deinit(struct worker *w);
/* From any thread: run conn_woken(c) on c's worker. */
void worker_wake_conn(struct worker *w, struct conn *c);

/* -- conn.c ----------------------------------------------------------- */

static inline uint64_t proxy_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* What goes to c's client. */
static inline struct evbuffer *conn_out(struct conn *c)
{
    return bufferevent_get_output(c->bev);
}

/* Shared with relay.c: refuse with problem+json (and close when the
 * request was not read whole); the request's log line; the request is
 * answered: reset for the next, or close; the upstream waits for the
 * client (pause) or may go on; (re)arm the upstream's idle deadline. */
void conn_refuse(struct conn *c, unsigned status, const char *detail,
                 unsigned retry_after_s, const char *outcome);
void conn_log_request(struct conn *c, const char *outcome, unsigned status);
void conn_finish_request(struct conn *c);
void conn_pause_upstream(struct conn *c, bool pause);
void conn_arm_deadline(struct conn *c);

void conn_accept(struct worker *w, evutil_socket_t fd,
                 const struct sockaddr *sa, int salen);
/* The engine decided a waiting request (wait mode), on this thread. */
void conn_woken(struct conn *c);
/* Upstream events, on the conn's thread (relay.c). */
/* An interim response: 103 Early Hints goes to an HTTP/1.1 client ahead
 * of the final response (never stored: a replay has none); others stay
 * here. */
void conn_upstream_interim(struct conn *c, struct upstream *u);
void conn_upstream_head(struct conn *c, struct upstream *u);
void conn_upstream_body(struct conn *c, const char *at, size_t len);
void conn_upstream_done(struct conn *c, struct upstream *u);
/* The exchange failed; maybe_run: the request may have reached the
 * upstream (so a key is never simply released). */
void conn_upstream_failed(struct conn *c, unsigned status, bool maybe_run);
/* The upstream took most of a streamed body: read the client again. */
void conn_upstream_drained(struct conn *c);
/* Close every idle client connection (shutdown). */
void conn_close_idle(struct worker *w);
/* Free c whatever it is doing (forced shutdown). */
void conn_discard(struct conn *c);

/* -- admin.c ---------------------------------------------------------- */

struct admin;

/* Serve /healthz and /metrics on fd, in base (the main thread's). NULL
 * if out of memory. */
struct admin *admin_listen(struct event_base *base, int fd,
                           struct idem_engine *engine);
/* Close the listener (not the connections it serves). NULL is fine. */
void admin_close(struct admin *a);

/* -- upstream.c ------------------------------------------------------- */

/* Send c's request upstream on a pooled or new connection. 0 or -1. */
int upstream_forward(struct conn *c);
/* Return u to the pool, or close it. */
void upstream_release(struct upstream *u, bool reusable);
void upstream_close_idle(struct worker *w);

#endif
