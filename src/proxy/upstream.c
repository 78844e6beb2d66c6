/* upstream.h: the upstream side's I/O and the pool of idle connections. */
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "metrics.h"
#include "worker.h"

static void upstream_free(struct upstream *u)
{
    if (u->pooled) {
        TAILQ_REMOVE(&u->w->idle, u, link);
        u->w->nidle--;
    }
    event_del(&u->ev);
    event_del(&u->connect);
    close(u->fd);
    free(u);
}

/* How the connection ended, for the exchange. */
static struct ex_up_end end_of(const struct upstream *u)
{
    struct ex_up_end how = {
        .connected = u->connected,
        .reused = u->reused,
        .sent = u->sent,
    };

    return how;
}

/* The connection failed or closed under c's request. The exchange lets
 * it go (upstream_release) before this returns. */
static void closed(struct conn *c, struct upstream *u)
{
    ex_upstream_closed(&c->ex, end_of(u));
    if (c->up == u) /* the exchange did not let go: never happens */
        upstream_release(c, false);
}

static bool connect_done(struct upstream *u)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err)
        return false;
    u->connected = true;
    event_del(&u->connect);
    atomic_fetch_add(&metrics.upstream_connects, 1);
    upstream_ok_ms = resolve_now_ms();
    return true;
}

/* a failed to connect: skip it for a while, and have the names looked
 * up again (the upstream may have moved). */
static void mark_down(struct worker *w, const struct upaddr *a)
{
    size_t i, n = w->addrs ? w->addrs->n : 0;

    for (i = 0; i < n; i++)
        if (w->addrs->a[i].len == a->len &&
            memcmp(&w->addrs->a[i].sa, &a->sa, a->len) == 0)
            w->down_until[i] = resolve_now_ms() + UPSTREAM_DOWN_MS;
    if (w->resolver)
        resolver_poke(w->resolver);
}

/* The next address in turn not marked down (all down: the next one). -1:
 * there is none. */
static ssize_t pick(struct worker *w)
{
    size_t n = w->addrs ? w->addrs->n : 0, k, i;
    int64_t now = resolve_now_ms();

    if (n == 0)
        return -1;
    for (k = 0; k < n; k++) {
        i = (w->rr + k) % n;
        if (w->down_until[i] <= now) {
            w->rr = i + 1;
            return (ssize_t)i;
        }
    }
    i = w->rr++ % n;
    return (ssize_t)i;
}

static struct upstream *upstream_new(struct worker *w, unsigned tries);

/* u's connect failed under c's request: try the next address if one is
 * left (nothing was sent, so the request may go there). Whether it did. */
static bool reconnect(struct conn *c, struct upstream *u)
{
    struct worker *w = u->w;
    struct upstream *next;

    mark_down(w, &u->addr);
    if (u->connected || u->tries + 1 >= (w->addrs ? w->addrs->n : 0) ||
        !(next = upstream_new(w, u->tries + 1)))
        return false;
    next->conn = c;
    next->reused = false;
    c->up = next;
    u->conn = NULL;
    upstream_free(u);
    return true;
}

static void on_upstream(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    struct conn *c = u->conn;

    (void)fd;
    if (what & EV_CLOSED)
        u->peer_closed = true;
    if (what & (EV_READ | EV_CLOSED))
        u->readable = true;
    if (what & EV_WRITE)
        u->writable = true;
    if (!c) { /* an idle connection does not speak first: it closed */
        if (u->readable)
            upstream_free(u);
        return;
    }
    if (!u->connected && !connect_done(u)) {
        if (!reconnect(c, u))
            closed(c, u);
        conn_sync(c);
        return;
    }
    conn_sync(c);
}

static void on_connect_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    struct conn *c = u->conn;

    (void)fd;
    (void)what;
    if (!c) {
        upstream_free(u);
        return;
    }
    if (!reconnect(c, u))
        closed(c, u);
    conn_sync(c);
}

/* A socket connecting to a; NULL if it failed at once. */
static struct upstream *connect_to(struct worker *w, const struct upaddr *a)
{
    const struct sockaddr *sa = (const struct sockaddr *)&a->sa;
    struct upstream *u = calloc(1, sizeof(*u));
    int64_t ms = w->cfg->connect_timeout_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    if (!u)
        return NULL;
    u->w = w;
    u->addr = *a;
    u->fd =
        socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->fd < 0) {
        free(u);
        return NULL;
    }
    event_assign(&u->ev, w->base, u->fd,
                 EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET,
                 on_upstream, u);
    event_assign(&u->connect, w->base, -1, 0, on_connect_deadline, u);
    if ((connect(u->fd, sa, a->len) != 0 && errno != EINPROGRESS &&
         errno != EAGAIN) ||
        event_add(&u->ev, NULL) != 0 || event_add(&u->connect, &tv) != 0) {
        upstream_free(u);
        return NULL;
    }
    return u;
}

/* A new connection to the next address in turn, tries made already for
 * this request: one that fails at once is marked down and the next one
 * tried. */
static struct upstream *upstream_new(struct worker *w, unsigned tries)
{
    size_t n = w->addrs ? w->addrs->n : 0;
    struct upstream *u;
    ssize_t i;

    for (; tries < (n ? n : 1); tries++) {
        i = pick(w);
        if (i < 0)
            return NULL;
        u = connect_to(w, &w->addrs->a[i]);
        if (u) {
            u->tries = tries;
            return u;
        }
        mark_down(w, &w->addrs->a[i]);
    }
    return NULL;
}

int upstream_open(struct conn *c)
{
    struct worker *w = c->w;
    struct upstream *u = TAILQ_FIRST(&w->idle);

    if (u) {
        TAILQ_REMOVE(&w->idle, u, link);
        w->nidle--;
        u->pooled = false;
        u->reused = true;
    } else if (!(u = upstream_new(w, 0))) {
        return -1;
    }
    u->conn = c;
    u->sent = false;
    c->up = u;
    return 0;
}

void upstream_release(struct conn *c, bool reusable)
{
    struct upstream *u = c->up;
    struct worker *w = c->w;

    if (!u)
        return;
    c->up = NULL;
    u->conn = NULL;
    if (!reusable || !u->connected || w->stopping ||
        w->nidle >= w->cfg->upstream_idle) {
        upstream_free(u);
        return;
    }
    TAILQ_INSERT_HEAD(&w->idle, u, link);
    u->pooled = true;
    w->nidle++;
}

/* Write the queued request bytes: 1 progress, 0 none, -1 failed. */
static int flush_upstream(struct conn *c, struct upstream *u)
{
    struct buf *o = &c->ex.up_out;
    bool progress = false;
    ssize_t n;

    while (buf_len(o) && u->writable) {
        n = send(u->fd, buf_bytes(o), buf_len(o), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            u->writable = false;
            break;
        }
        if (n <= 0)
            return -1;
        if ((size_t)n < buf_len(o))
            u->writable = false;
        buf_consume(o, (size_t)n);
        u->sent = true;
        progress = true;
    }
    return progress;
}

bool upstream_sync(struct conn *c, bool read)
{
    struct upstream *u = c->up;
    char *scratch = c->w->scratch;
    ssize_t n;
    int rc;

    if (!u || !u->connected)
        return false;
    rc = flush_upstream(c, u);
    if (rc < 0) {
        closed(c, u);
        return true;
    }
    if (rc > 0 && c->ex.in_paused && buf_len(&c->ex.up_out) <= EX_LOW) {
        ex_upstream_drained(&c->ex); /* the client may send more */
        return true;
    }
    if (!read || !u->readable)
        return rc > 0;
    do
        n = recv(u->fd, scratch, WORKER_READ_MAX, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        u->readable = false;
        return rc > 0;
    }
    if (n <= 0) {
        u->readable = false;
        closed(c, u);
        return true;
    }
    if ((size_t)n < WORKER_READ_MAX && !u->peer_closed)
        u->readable = false;           /* as conn.c's read_client */
    upstream_ok_ms = resolve_now_ms(); /* for /readyz */
    ex_upstream_data(&c->ex, scratch, (size_t)n);
    return true;
}

void upstream_close_idle(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->idle))
        upstream_free(TAILQ_FIRST(&w->idle));
}
