/* worker.h: the loop of each worker thread. */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "net.h"
#include "upstream.h"

#include "idem/redis_libevent.h"

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    conn_accept(arg, fd, sa, salen);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct worker *w = arg;

    net_accept_failed(l, w->accept_resume, "listener");
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;

    (void)fd;
    (void)what;
    if (w->listener)
        evconnlistener_enable(w->listener);
}

/* Stop taking requests: close the listener, idle upstream and client
 * connections; busy ones close after their response. */
static void begin_stop(struct worker *w)
{
    w->stopping = true;
    if (w->listener) {
        evconnlistener_free(w->listener);
        w->listener = NULL;
    }
    event_del(w->accept_resume);
    upstream_close_idle(w);
    conn_close_idle(w);
    if (w->nconns == 0)
        loop_exit(w->base);
}

int64_t worker_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct timespec worker_deadline(clockid_t clock, int64_t ms)
{
    struct timespec t;

    clock_gettime(clock, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += ms % 1000 * 1000000;
    if (t.tv_nsec >= 1000000000) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000;
    }
    return t;
}

static void on_beat(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;

    (void)fd;
    (void)what;
    atomic_store(&w->beat_ms, worker_now_ms());
}

static void on_log_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    log_flush();
}

void worker_log_pending(struct worker *w)
{
    static const struct timeval later = { 0, LOG_BATCH_MS * 1000 };

    if (!log_pending())
        return;
    if (log_flush_due() || (!evtimer_pending(w->log_later, NULL) &&
                            evtimer_add(w->log_later, &later) != 0))
        event_active(w->log_flush, 0, 0); /* after this pass's events */
}

/* Serve with g (the reference is the worker's) and let the old one go:
 * between callbacks, so no exchange is reading it. */
static void use_gen(struct worker *w, struct gen *g)
{
    struct gen *old = w->gen;

    w->gen = g;
    w->cfg = w->ctx.cfg = &g->cfg;
    w->ctx.engine = g->engine;
    w->ctx.route_engines = g->engines;
    gen_unref(old);
}

/* Connect to the addresses of s from now on (the reference is the
 * worker's); none is marked down. */
static void use_addrs(struct worker *w, struct upaddrs *s)
{
    int64_t *down = s && s->n ? calloc(s->n, sizeof(*down)) : NULL;

    if (s && s->n && !down) { /* out of memory: keep the old set */
        resolver_addrs_unref(s);
        return;
    }
    resolver_addrs_unref(w->addrs);
    free(w->down_until);
    w->addrs = s;
    w->down_until = down;
}

/* The worker whose loop this thread runs (NULL: not a worker's). */
static _Thread_local struct worker *worker_self;

/* Called with w->mu held, after news was queued: drop the lock and have
 * the worker look. Its own thread makes the wake event active (no system
 * call); another thread writes the eventfd, once until the worker has
 * read it (after dropping the lock: the worker's reader takes it). */
static void wake_unlock(struct worker *w)
{
    uint64_t one = 1;
    bool write_efd = false;

    if (worker_self == w)
        event_active(w->wake, 0, 0);
    else if (!w->signalled)
        write_efd = w->signalled = true;
    pthread_mutex_unlock(&w->mu);
    /* it cannot fail: the counter would have to reach 2^64 - 1 */
    if (write_efd && write(w->wake_efd, &one, sizeof(one)) != sizeof(one))
        log_msg(LOG_ERROR, "worker %u: cannot wake it: %s", w->id,
                strerror(errno));
}

void worker_set_addrs(struct worker *w, struct upaddrs *s)
{
    struct upaddrs *old;

    pthread_mutex_lock(&w->mu);
    old = w->next_addrs;
    w->next_addrs = resolver_addrs_ref(s);
    wake_unlock(w);
    resolver_addrs_unref(old);
}

void worker_set_gen(struct worker *w, struct gen *gen)
{
    struct gen *old;

    pthread_mutex_lock(&w->mu);
    old = w->next_gen;
    w->next_gen = gen_ref(gen);
    wake_unlock(w);
    gen_unref(old);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct conn *c, *next;
    struct gen *g;
    struct upaddrs *a;
    bool stop, leave;

    (void)fd;
    (void)what;
    pthread_mutex_lock(&w->mu);
    c = w->woken;
    w->woken = w->woken_tail = NULL;
    stop = w->stop_requested && !w->stopping;
    leave = w->break_requested;
    g = w->next_gen;
    w->next_gen = NULL;
    a = w->next_addrs;
    w->next_addrs = NULL;
    pthread_mutex_unlock(&w->mu);
    if (g)
        use_gen(w, g);
    if (a)
        use_addrs(w, a);
    for (; c; c = next) {
        next = c->woken_next;
        c->woken_next = NULL;
        conn_woken(c);
    }
    if (stop)
        begin_stop(w);
    if (leave)
        event_base_loopbreak(w->base);
}

/* The eventfd is readable: read it first, then clear `signalled`, so
 * news queued after the read writes it again; then look at the queue. */
static void on_wake_fd(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;

    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        log_msg(LOG_ERROR, "worker %u: reading its eventfd: %s", w->id,
                strerror(errno));
    pthread_mutex_lock(&w->mu);
    w->signalled = false;
    pthread_mutex_unlock(&w->mu);
    on_wake(fd, what, arg);
}

/* The queue is intrusive (each conn is on it at most once: one decision
 * per request), so waking allocates nothing and cannot fail. */
void worker_wake_conn(struct worker *w, struct conn *c)
{
    pthread_mutex_lock(&w->mu);
    c->woken_next = NULL;
    if (w->woken_tail)
        w->woken_tail->woken_next = c;
    else
        w->woken = c;
    w->woken_tail = c;
    wake_unlock(w);
}

int worker_init(struct worker *w, unsigned id, int fd, struct gen *gen,
                struct idem_store *redis, struct upaddrs *addrs)
{
    struct event_config *ec = event_config_new();

    memset(w, 0, sizeof(*w));
    w->inited = true;
    w->wake_efd = -1;
    w->id = id;
    use_gen(w, gen_ref(gen));
    w->redis = redis;
    if (addrs)
        use_addrs(w, resolver_addrs_ref(addrs));
    LIST_INIT(&w->conns);
    TAILQ_INIT(&w->idle);
    pthread_mutex_init(&w->mu, NULL);
    if (ec)
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST |
                                      EVENT_BASE_FLAG_NOLOCK);
    w->base = ec ? event_base_new_with_config(ec) : NULL;
    if (ec)
        event_config_free(ec);
    w->wake_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!w->base || w->wake_efd < 0 ||
        !(w->wake = event_new(w->base, -1, 0, on_wake, w)) ||
        !(w->wake_fd = event_new(w->base, w->wake_efd, EV_READ | EV_PERSIST,
                                 on_wake_fd, w)) ||
        event_add(w->wake_fd, NULL) != 0 ||
        !(w->accept_resume = evtimer_new(w->base, on_accept_resume, w)) ||
        !(w->log_flush = event_new(w->base, -1, 0, on_log_flush, w)) ||
        !(w->log_later = evtimer_new(w->base, on_log_flush, w)) ||
        !(w->beat = event_new(w->base, -1, EV_PERSIST, on_beat, w)))
        return -1;
    w->listener = evconnlistener_new(w->base, on_accept, w,
                                     LEV_OPT_CLOSE_ON_FREE, -1, fd);
    if (!w->listener)
        return -1;
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    return 0;
}

/* The loop. A Redis store gets this thread's connection first; at the
 * end, its commands in flight (completions of the last requests) land
 * before it closes. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct idem_redis_loop loop;
    struct timeval beat = { WORKER_BEAT_MS / 1000,
                            (WORKER_BEAT_MS % 1000) * 1000 };

    worker_self = w;
    idem_redis_libevent(w->base, &loop);
    if (w->redis && idem_store_redis_attach(w->redis, &loop) != IDEM_OK)
        log_msg(LOG_ERROR, "worker %u: cannot attach to Redis", w->id);

    atomic_store(&w->beat_ms, worker_now_ms());
    if (event_add(w->beat, &beat) != 0) /* allocates nothing: a timer */
        log_msg(LOG_WARN, "worker %u: no heartbeat", w->id);
    log_buffer_lines(true);
    event_base_dispatch(w->base);
    if (w->redis)
        idem_store_redis_detach(w->redis);
    log_buffer_lines(false); /* and flush */
    return NULL;
}

int worker_start(struct worker *w)
{
    w->started = pthread_create(&w->thread, NULL, worker_main, w) == 0;
    return w->started ? 0 : -1;
}

void worker_stop(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->stop_requested = true;
    wake_unlock(w);
}

void worker_break(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->break_requested = true;
    wake_unlock(w);
}

void worker_join(struct worker *w)
{
    pthread_join(w->thread, NULL);
}

/* After the thread is gone: free what is left (a forced shutdown leaves
 * connections open). */
void worker_deinit(struct worker *w)
{
    if (!w->inited)
        return;
    w->stopping = false; /* conn_free must not touch the dead loop */
    while (!LIST_EMPTY(&w->conns))
        conn_discard(LIST_FIRST(&w->conns));
    upstream_close_idle(w);
    if (w->listener)
        evconnlistener_free(w->listener);
    if (w->accept_resume)
        event_free(w->accept_resume);
    if (w->log_flush)
        event_free(w->log_flush);
    if (w->log_later)
        event_free(w->log_later);
    if (w->beat)
        event_free(w->beat);
    if (w->wake)
        event_free(w->wake);
    if (w->wake_fd)
        event_free(w->wake_fd);
    if (w->wake_efd >= 0)
        close(w->wake_efd);
    if (w->base)
        event_base_free(w->base);
    gen_unref(w->next_gen);
    gen_unref(w->gen);
    resolver_addrs_unref(w->next_addrs);
    resolver_addrs_unref(w->addrs);
    free(w->down_until);
    pthread_mutex_destroy(&w->mu);
    w->inited = false; /* a second call does nothing */
}
