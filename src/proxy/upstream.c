/* upstream.h: the upstream side's I/O and the pool of idle connections. */
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "worker.h"

static void upstream_free(struct upstream *u)
{
    if (u->pooled) {
        TAILQ_REMOVE(&u->w->idle, u, link);
        u->w->nidle--;
    }
    event_del(&u->ev);
    event_del(&u->connect);
    tls_close(u->ssl);
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

/* An upstream failure, at warn, at most once a second (all workers
 * together; the rest are counted in the line that goes out next). */
static void say_failed(const struct upstream *u, const char *what, int err)
{
    static struct log_limit limit;

    log_limited(&limit, LOG_WARN, "upstream %s: %s%s%s", u->name, what,
                err ? ": " : "", err ? strerror(err) : "");
}

static bool connect_done(struct upstream *u)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err) {
        say_failed(u, "connect", err ? err : errno);
        return false;
    }
    u->connected = true;
    if (!u->ssl) /* TLS: the deadline bounds the handshake too */
        event_del(&u->connect);
    atomic_fetch_add(&metrics.upstream_connects, 1);
    upstream_ok_ms = worker_now_ms();
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
            w->down_until[i] = worker_now_ms() + UPSTREAM_DOWN_MS;
    if (w->resolver)
        resolver_poke(w->resolver);
}

/* The next address in turn not marked down (all down: the next one). -1:
 * there is none. */
static ssize_t pick(struct worker *w)
{
    size_t n = w->addrs ? w->addrs->n : 0, k, i;
    int64_t now = worker_now_ms();

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
    memcpy(c->ex.up_addr, next->name, sizeof(c->ex.up_addr));
    u->conn = NULL;
    upstream_free(u);
    return true;
}

/* An idle connection became readable: whether it only said TLS things
 * (a TLS 1.3 session ticket) and can stay in the pool. */
static bool idle_quiet(struct upstream *u)
{
    bool empty;

    if (!u->ssl || tls_io_read(u->fd, u->ssl, u->w->scratch, WORKER_READ_MAX,
                               &empty) != TPORT_WANT_READ)
        return false;
    u->readable = false;
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
    if ((what & EV_WRITE) && u->read_on_writable) { /* as conn.c's */
        u->readable = true;
        u->read_on_writable = false;
    }
    if ((what & EV_READ) && u->write_on_readable) {
        u->writable = true;
        u->write_on_readable = false;
    }
    if (!c) { /* an idle connection does not speak first: it closed */
        if (u->readable && !idle_quiet(u))
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
    say_failed(u, "connect timed out (--connect-timeout)", 0);
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
    net_address(sa, u->name, sizeof(u->name));
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
    if ((tls_upstream(w->tls) && !(u->ssl = tls_connect_new(w->tls, u->fd))) ||
        (connect(u->fd, sa, a->len) != 0 && errno != EINPROGRESS &&
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
    memcpy(c->ex.up_addr, u->name, sizeof(c->ex.up_addr));
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

/* The TLS handshake is over: its deadline ends, and from here a write of
 * the request may leave a part of it (a record cut by a full socket), so
 * the request counts as sent whatever the write says. Before, nothing of
 * it left: a failed handshake (a certificate refused) releases its key. */
static void handshaken(struct upstream *u)
{
    u->sent = true;
    if (event_pending(&u->connect, EV_TIMEOUT, NULL))
        event_del(&u->connect);
}

/* Write the queued request bytes: 1 progress, 0 none, -1 failed. */
static int flush_upstream(struct conn *c, struct upstream *u)
{
    struct buf *o = &c->ex.up_out;
    bool progress = false;
    ssize_t n;

    while (buf_len(o) && u->writable) {
        n = tls_io_write(u->fd, u->ssl, buf_bytes(o), buf_len(o));
        if (u->ssl && tls_handshake_done(u->ssl))
            handshaken(u);
        if (n == TPORT_WANT_WRITE || n == TPORT_WANT_READ) {
            u->writable = false;
            u->write_on_readable = n == TPORT_WANT_READ;
            break;
        }
        if (n < 0) {
            say_failed(u, "write", errno);
            return -1;
        }
        if (!u->ssl && (size_t)n < buf_len(o))
            u->writable = false; /* as conn.c's flush_client */
        buf_consume(o, (size_t)n);
        metrics_bytes(&metrics.upstream_bytes_out, (size_t)n);
        u->sent = true;
        progress = true;
    }
    return progress;
}

bool upstream_sync(struct conn *c, bool read)
{
    struct upstream *u = c->up;
    char *scratch = c->w->scratch;
    bool empty;
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
    n = tls_io_read(u->fd, u->ssl, scratch, WORKER_READ_MAX, &empty);
    if (n == TPORT_WANT_READ || n == TPORT_WANT_WRITE) {
        u->readable = false;
        u->read_on_writable = n == TPORT_WANT_WRITE;
        return rc > 0;
    }
    if (n <= 0) {
        if (n < 0)
            say_failed(u, "read", errno);
        u->readable = false;
        closed(c, u);
        return true;
    }
    if (empty && !u->peer_closed)
        u->readable = false; /* as conn.c's read_client */
    metrics_bytes(&metrics.upstream_bytes_in, (size_t)n);
    upstream_ok_ms = worker_now_ms(); /* for /readyz */
    ex_upstream_data(&c->ex, scratch, (size_t)n);
    return true;
}

void upstream_close_idle(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->idle))
        upstream_free(TAILQ_FIRST(&w->idle));
}
