/* resolver.h: the resolver thread and the address sets. */
#include "resolver.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "worker.h"

#define MAX_ADDRS 64
#define POKE_MIN_MS 1000 /* between two look-ups asked by workers */

atomic_int_fast64_t upstream_ok_ms;

struct resolver {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop, poke, reload;    /* under mu */
    struct upstream_url *urls;  /* under mu: what to resolve */
    size_t nurls;               /* under mu */
    int64_t interval_ms;        /* under mu */
    int64_t connect_timeout_ms; /* under mu */
    struct worker *workers;
    unsigned nworkers;
    struct upaddrs *last; /* the resolver's: the set handed out last */
    int64_t looked_ms;    /* the last look-up */
};

struct upaddrs *resolver_addrs_ref(struct upaddrs *s)
{
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void resolver_addrs_unref(struct upaddrs *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        free(s);
}

/* Add u's addresses to s (room for MAX_ADDRS). false: a name that did
 * not resolve (logged at most once a second). */
static bool add_url(struct upaddrs *s, const struct upstream_url *u)
{
    static struct log_limit limit;
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV };
    struct addrinfo *res, *ai;
    struct sockaddr_un *sun;
    char port[8];
    int rc;

    if (u->path[0] && s->n < MAX_ADDRS) {
        sun = (struct sockaddr_un *)&s->a[s->n].sa;
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, u->path, strlen(u->path) + 1);
        s->a[s->n++].len = (socklen_t)sizeof(*sun);
        return true;
    }
    snprintf(port, sizeof(port), "%u", u->addr.port);
    rc = getaddrinfo(u->addr.host, port, &hints, &res);
    if (rc != 0) {
        log_limited(&limit, LOG_WARN, "cannot resolve the upstream %s: %s",
                    u->addr.host, gai_strerror(rc));
        return false;
    }
    for (ai = res; ai && s->n < MAX_ADDRS; ai = ai->ai_next) {
        memcpy(&s->a[s->n].sa, ai->ai_addr, ai->ai_addrlen);
        s->a[s->n++].len = (socklen_t)ai->ai_addrlen;
    }
    freeaddrinfo(res);
    return true;
}

/* Look up every url: a fresh set, or NULL (out of memory). *all_out:
 * every name resolved. */
static struct upaddrs *look_up(const struct upstream_url *urls, size_t n,
                               bool *all_out)
{
    struct upaddrs *s =
        calloc(1, sizeof(*s) + MAX_ADDRS * sizeof(struct upaddr));
    size_t i;

    *all_out = true;
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    for (i = 0; i < n; i++)
        *all_out = add_url(s, &urls[i]) && *all_out;
    return s;
}

static bool same(const struct upaddrs *a, const struct upaddrs *b)
{
    size_t i;

    if (!a || a->n != b->n)
        return false;
    for (i = 0; i < a->n; i++)
        if (a->a[i].len != b->a[i].len ||
            memcmp(&a->a[i].sa, &b->a[i].sa, a->a[i].len) != 0)
            return false;
    return true;
}

struct upaddrs *resolve_first(const struct config *c)
{
    bool all;
    struct upaddrs *s = look_up(c->upstreams, c->nupstreams, &all);

    if (s && !all)
        log_msg(LOG_WARN,
                "starting with %zu upstream addresses; the names "
                "are looked up again every --resolve-interval",
                s->n);
    return s;
}

/* Resolve and, when the set changed, hand it out. A name that failed
 * keeps the last set (a DNS hiccup must not take addresses away). */
static void refresh(struct resolver *r, const struct upstream_url *urls,
                    size_t n)
{
    bool all;
    struct upaddrs *s = look_up(urls, n, &all);
    unsigned i;

    r->looked_ms = worker_now_ms();
    if (!s || (!all && r->last) || same(r->last, s)) {
        resolver_addrs_unref(s);
        return;
    }
    for (i = 0; i < r->nworkers; i++)
        worker_set_addrs(&r->workers[i], s);
    resolver_addrs_unref(r->last);
    r->last = s;
}

/* A blocking connect to a, bounded by ms. */
static bool probe_one(const struct upaddr *a, int64_t ms)
{
    int fd =
        socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int err = 0;
    socklen_t len = sizeof(err);
    bool ok;

    if (fd < 0)
        return false;
    ok = connect(fd, (const struct sockaddr *)&a->sa, a->len) == 0;
    if (!ok && errno == EINPROGRESS && poll(&p, 1, (int)ms) == 1 &&
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
        ok = true;
    close(fd);
    return ok;
}

/* Nothing was heard from the upstream for an interval: is it there? */
static void probe(struct resolver *r, int64_t interval, int64_t timeout)
{
    size_t i;

    if (!r->last || worker_now_ms() - upstream_ok_ms < interval)
        return;
    for (i = 0; i < r->last->n; i++) {
        if (probe_one(&r->last->a[i], timeout)) {
            upstream_ok_ms = worker_now_ms();
            return;
        }
    }
}

/* Copy what to resolve, under mu. NULL out of memory. */
static struct upstream_url *take_urls(struct resolver *r, size_t *n,
                                      int64_t *interval, int64_t *timeout)
{
    struct upstream_url *copy = malloc(r->nurls * sizeof(*copy));

    if (copy)
        memcpy(copy, r->urls, r->nurls * sizeof(*copy));
    *n = r->nurls;
    *interval = r->interval_ms;
    *timeout = r->connect_timeout_ms;
    return copy;
}

/* Wait for the next look-up: the interval, a poke (not sooner than
 * POKE_MIN_MS after the last), or stop. Under mu. */
static void wait_next(struct resolver *r, int64_t interval)
{
    struct timespec until;
    int64_t due;

    for (;;) {
        due =
            r->looked_ms + (r->poke ? POKE_MIN_MS : interval) - worker_now_ms();
        if (r->stop || r->reload || due <= 0)
            break;
        until = worker_deadline(CLOCK_MONOTONIC, due);
        pthread_cond_timedwait(&r->cond, &r->mu, &until);
    }
    r->poke = r->reload = false;
}

static void *resolver_main(void *arg)
{
    struct resolver *r = arg;
    struct upstream_url *urls;
    int64_t interval, timeout;
    size_t n;

    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        urls = take_urls(r, &n, &interval, &timeout);
        pthread_mutex_unlock(&r->mu);
        if (urls)
            refresh(r, urls, n);
        free(urls);
        probe(r, interval, timeout);
        pthread_mutex_lock(&r->mu);
        wait_next(r, interval);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Copy c's upstreams into r. Under mu, or before the thread runs. */
static int set_urls(struct resolver *r, const struct config *c)
{
    struct upstream_url *copy = malloc(c->nupstreams * sizeof(*copy));

    if (!copy)
        return -1;
    memcpy(copy, c->upstreams, c->nupstreams * sizeof(*copy));
    free(r->urls);
    r->urls = copy;
    r->nurls = c->nupstreams;
    r->interval_ms = c->resolve_interval_ms;
    r->connect_timeout_ms = c->connect_timeout_ms;
    return 0;
}

struct resolver *resolver_start(const struct config *c, struct upaddrs *first,
                                struct worker *workers, unsigned n)
{
    struct resolver *r = calloc(1, sizeof(*r));
    pthread_condattr_t ca;

    if (!r || set_urls(r, c) != 0) {
        free(r);
        return NULL;
    }
    r->last = first ? resolver_addrs_ref(first) : NULL;
    r->looked_ms = worker_now_ms();
    r->workers = workers;
    r->nworkers = n;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&r->thread, NULL, resolver_main, r) != 0) {
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->mu);
        free(r->urls);
        free(r);
        return NULL;
    }
    return r;
}

void resolver_set(struct resolver *r, const struct config *c)
{
    pthread_mutex_lock(&r->mu);
    if (set_urls(r, c) == 0)
        r->reload = true; /* look up at once */
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

void resolver_poke(struct resolver *r)
{
    pthread_mutex_lock(&r->mu);
    if (!r->poke) {
        r->poke = true;
        pthread_cond_signal(&r->cond);
    }
    pthread_mutex_unlock(&r->mu);
}

void resolver_stop(struct resolver *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->mu);
    resolver_addrs_unref(r->last);
    free(r->urls);
    free(r);
}
