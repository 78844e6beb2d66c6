/* conn.h: the client side's I/O. The socket's one event is edge-triggered
 * and persistent, so the kernel is told about it once (no epoll_ctl per
 * request); the driver remembers whether the socket may be readable or
 * writable and acts on the exchange's wants in conn_sync, the one place
 * that reads, writes, closes and frees. */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "h2.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"
#include "net.h"
#include "worker.h"

/* Reads one conn_sync does before letting other connections run. */
#define READS_PER_SYNC 16

static struct conn *conn_of(struct exchange *ex)
{
    return ex->data;
}

static struct timeval tv_of(int64_t ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    return tv;
}

/* -- What the exchange asks for ------------------------------------------ */

static int io_upstream_open(struct exchange *ex)
{
    return upstream_open(conn_of(ex));
}

static void io_upstream_release(struct exchange *ex, bool reusable)
{
    upstream_release(conn_of(ex), reusable);
}

/* Have timer t's event fire at due (now is the worker's clock). false:
 * event_add failed (its heap could not grow). */
static bool arm(struct conn *c, enum ex_timer t, int64_t due, int64_t now)
{
    struct timeval tv = tv_of(due > now ? due - now : 0);

    if (event_add(&c->timers[t], &tv) != 0)
        return false;
    c->timer_armed[t] = due;
    return true;
}

/* A request sets and clears its deadlines several times; each used to be
 * an event_add or event_del (a heap operation, a sixth of the driver's
 * instructions per request). Now only a deadline earlier than the armed
 * one touches the event. */
static void io_timer(struct exchange *ex, enum ex_timer t, int64_t ms)
{
    struct conn *c = conn_of(ex);
    int64_t now;

    if (ms < 0) {
        c->timer_due[t] = 0;
        return;
    }
    now = worker_now_ms();
    c->timer_due[t] = now + ms;
    if (!c->timer_armed[t] || c->timer_armed[t] > now + ms)
        arm(c, t, now + ms, now);
}

void conn_timer_stop(struct conn *c, enum ex_timer t)
{
    c->timer_due[t] = 0;
    c->timer_armed[t] = 0;
    event_del(&c->timers[t]);
}

static void io_wake(struct exchange *ex)
{
    struct conn *c = conn_of(ex);

    worker_wake_conn(c->w, c);
}

static const struct exchange_io conn_io = {
    .upstream_open = io_upstream_open,
    .upstream_release = io_upstream_release,
    .timer = io_timer,
    .wake = io_wake,
};

/* -- Freeing ------------------------------------------------------------ */

static void close_client(struct conn *c)
{
    if (c->fd < 0)
        return;
    event_del(&c->ev);
    event_del(&c->write_deadline);
    tls_close(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
}

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    unsigned i;

    close_client(c);
    if (c->h2)
        h2_free(c);    /* and its streams */
    ex_deinit(&c->ex); /* releases the upstream connection */
    for (i = 0; i < EX_TIMERS; i++)
        event_del(&c->timers[i]);
    LIST_REMOVE(c, link);
    w->nconns--;
    atomic_fetch_sub(&metrics.connections_open, 1);
    free(c);
    if (w->stopping && w->nconns == 0)
        loop_exit(w->base);
}

/* -- Reading and writing -------------------------------------------------- */

/* Write what the exchange queued for the client. false: the client is
 * gone (an error). Output the socket cannot take now waits for the next
 * writable edge, under the write deadline: a client that stops reading
 * its response is dropped, not buffered for. */
static bool flush_client(struct conn *c)
{
    struct buf *o = &c->ex.client_out;
    struct timeval tv;
    ssize_t n;

    while (buf_len(o) && c->writable) {
        n = tls_io_write(c->fd, c->ssl, buf_bytes(o), buf_len(o));
        if (n == TPORT_WANT_WRITE || n == TPORT_WANT_READ) {
            c->writable = false;
            c->write_on_readable = n == TPORT_WANT_READ;
            break;
        }
        if (n < 0)
            return false;
        /* a short plain write filled the socket: wait for the edge (TLS
         * writes a record at a time, and says when to wait) */
        if (!c->ssl && (size_t)n < buf_len(o))
            c->writable = false;
        buf_consume(o, (size_t)n);
        metrics_bytes(&metrics.client_bytes_out, (size_t)n);
    }
    if (buf_len(o) == 0) {
        if (event_pending(&c->write_deadline, EV_TIMEOUT, NULL))
            event_del(&c->write_deadline);
        return true;
    }
    if (!event_pending(&c->write_deadline, EV_TIMEOUT, NULL)) {
        tv = tv_of(c->w->cfg->client_timeout_ms);
        event_add(&c->write_deadline, &tv);
    }
    return true;
}

/* Read once into the worker's scratch and hand it over (or drop it when
 * lingering). false: nothing came (EOF or error: the client is gone). */
static bool read_client(struct conn *c)
{
    char *scratch = c->w->scratch;
    bool empty;
    ssize_t n = tls_io_read(c->fd, c->ssl, scratch, WORKER_READ_MAX, &empty);

    if (n == TPORT_WANT_READ || n == TPORT_WANT_WRITE) {
        c->readable = false;
        c->read_on_writable = n == TPORT_WANT_WRITE;
        return true;
    }
    if (n <= 0) {
        c->readable = false;
        return false;
    }
    /* a short read emptied the socket: the next bytes bring an edge (a
     * FIN that came with these bytes brought its own, EV_CLOSED) */
    if (empty && !c->peer_closed)
        c->readable = false;
    metrics_bytes(&metrics.client_bytes_in, (size_t)n);
    if (c->proto == CONN_HTTP2)
        h2_recv(c, scratch, (size_t)n);
    else if (c->proto == CONN_SNIFF)
        h2_sniff(c, scratch, (size_t)n); /* HTTP/1.1 or the h2c preface */
    else
        ex_client_data(&c->ex, scratch, (size_t)n);
    return true;
}

/* The client's answer is out: close, or (a request not read whole) stop
 * writing and read on to drop what it still sends, so that it reads the
 * answer instead of a reset. */
static void end_client(struct conn *c, enum ex_end end)
{
    if (end == EX_END_LINGER && !c->lingering) {
        tls_shutdown(c->ssl);
        shutdown(c->fd, SHUT_WR);
        c->lingering = true;
        return;
    }
    if (end == EX_END_CLOSE) {
        close_client(c);
        ex_client_gone(&c->ex);
    }
}

/* The client's side of a conn_sync step: write its output; then, once
 * written, let a paused upstream go on, or close or start lingering as
 * the exchange says. true: something was done (look again). */
static bool sync_client_out(struct conn *c, enum ex_end end)
{
    if (!flush_client(c)) {
        close_client(c);
        ex_client_gone(&c->ex);
        return true;
    }
    if (c->ex.up_paused && buf_len(&c->ex.client_out) <= EX_LOW) {
        ex_client_drained(&c->ex); /* the upstream may go on */
        return true;
    }
    if (buf_len(&c->ex.client_out) == 0 &&
        (end == EX_END_CLOSE || (end == EX_END_LINGER && !c->lingering))) {
        end_client(c, end);
        return true;
    }
    return false;
}

/* Read the client once, at most READS_PER_SYNC times a conn_sync (then
 * the event is made active again: the other connections' turn). true:
 * look again; false: stop (the turn is over, or the HTTP/2 preface came
 * and h2.c takes over). */
static bool sync_client_in(struct conn *c, unsigned *reads)
{
    if (++*reads > READS_PER_SYNC) {
        event_active(&c->ev, EV_READ, 0);
        return false;
    }
    if (!read_client(c)) {
        close_client(c);
        ex_client_gone(&c->ex);
    }
    return c->proto != CONN_HTTP2;
}

/* One step of conn_sync for what the exchange wants: true if something
 * was done (its wants may have changed), false when nothing can be. */
static bool sync_step(struct conn *c, struct ex_wants want, unsigned *reads)
{
    if (upstream_sync(c, want.read_upstream))
        return true;
    if (c->fd >= 0 && want.end == EX_END_DROP) {
        close_client(c);
        return true;
    }
    if (c->fd < 0)
        return false;
    if (sync_client_out(c, want.end))
        return true;
    return want.read_client && c->readable && sync_client_in(c, reads);
}

void conn_sync(struct conn *c)
{
    struct ex_wants want;
    unsigned reads = 0;

    if (c->proto >= CONN_HTTP2) {
        h2_sync(c); /* h2.c drives HTTP/2 connections and streams */
        return;
    }
    if (c->syncing)
        return; /* the running conn_sync looks again */
    c->syncing = true;
    do {
        want = ex_wants(&c->ex);
    } while (want.end != EX_END_FREE && sync_step(c, want, &reads));
    c->syncing = false;
    if (c->proto == CONN_HTTP2) {
        h2_sync(c);
        return;
    }
    worker_log_pending(c->w);
    if (want.end == EX_END_FREE)
        conn_free(c);
}

/* -- Events ----------------------------------------------------------- */

static void on_client(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    if (what & EV_CLOSED)
        c->peer_closed = true;
    if (what & (EV_READ | EV_CLOSED))
        c->readable = true;
    if (what & EV_WRITE)
        c->writable = true;
    /* TLS: a read that had to write first, or the other way round */
    if ((what & EV_WRITE) && c->read_on_writable) {
        c->readable = true;
        c->read_on_writable = false;
    }
    if ((what & EV_READ) && c->write_on_readable) {
        c->writable = true;
        c->write_on_readable = false;
    }
    conn_sync(c);
}

static void on_write_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    close_client(c);
    ex_client_gone(&c->ex);
    conn_sync(c);
}

static void on_timer(struct conn *c, enum ex_timer t)
{
    int64_t now = worker_now_ms(), due = c->timer_due[t];

    c->timer_armed[t] = 0;
    if (!due)
        return; /* cleared since it was armed */
    if (now < due) {
        arm(c, t, due, now); /* moved later since */
        return;
    }
    c->timer_due[t] = 0;
    ex_timeout(&c->ex, t);
    conn_sync(c);
}

static void on_client_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    on_timer(arg, EX_TIMER_CLIENT);
}

static void on_upstream_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    on_timer(arg, EX_TIMER_UPSTREAM);
}

static void on_renew_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    on_timer(arg, EX_TIMER_RENEW);
}

void conn_woken(struct conn *c)
{
    ex_decided(&c->ex);
    conn_sync(c);
}

static void (*const timer_cb[EX_TIMERS])(evutil_socket_t, short, void *) = {
    [EX_TIMER_CLIENT] = on_client_timer,
    [EX_TIMER_UPSTREAM] = on_upstream_timer,
    [EX_TIMER_RENEW] = on_renew_timer,
};

void conn_accept(struct worker *w, evutil_socket_t fd,
                 const struct sockaddr *sa, int salen)
{
    struct conn *c = calloc(1, sizeof(*c));
    char client[64];
    int64_t now = worker_now_ms();
    unsigned i;

    (void)salen;
    if (!c || evutil_make_socket_nonblocking(fd) != 0 ||
        (tls_listener(w->tls) && !(c->ssl = tls_accept_new(w->tls, fd)))) {
        free(c);
        evutil_closesocket(fd);
        return;
    }
    net_address(sa, client, sizeof(client));
    c->w = w;
    c->fd = fd;
    c->writable = true;
    ex_init(&c->ex, &conn_io, &w->ctx, client, c);
    c->ex.tls = c->ssl != NULL;
    event_assign(&c->ev, w->base, fd,
                 EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET, on_client,
                 c);
    event_assign(&c->write_deadline, w->base, -1, 0, on_write_deadline, c);
    for (i = 0; i < EX_TIMERS; i++)
        event_assign(&c->timers[i], w->base, -1, 0, timer_cb[i], c);
    LIST_INSERT_HEAD(&w->conns, c, link);
    w->nconns++;
    atomic_fetch_add(&metrics.connections_accepted, 1);
    atomic_fetch_add(&metrics.connections_open, 1);
    c->timer_due[EX_TIMER_CLIENT] = now + w->cfg->client_timeout_ms;
    if (event_add(&c->ev, NULL) != 0 ||
        !arm(c, EX_TIMER_CLIENT, c->timer_due[EX_TIMER_CLIENT], now)) {
        /* it could never read (event_add allocates) */
        c->ex.phase = EX_DONE;
        conn_free(c);
    }
}

void conn_close_idle(struct worker *w)
{
    struct conn *c, *next;

    for (c = LIST_FIRST(&w->conns); c; c = next) {
        next = LIST_NEXT(c, link);
        if (c->proto == CONN_HTTP2)
            h2_shutdown(c);
        else if (ex_shutdown(&c->ex))
            conn_sync(c);
    }
}

void conn_discard(struct conn *c)
{
    conn_free(c);
}

/* -- For h2.c ------------------------------------------------------------ */

bool conn_flush(struct conn *c)
{
    return flush_client(c);
}

bool conn_read(struct conn *c)
{
    return read_client(c);
}

void conn_close(struct conn *c)
{
    close_client(c);
}

void conn_stream_init(struct conn *stream, struct conn *parent)
{
    struct worker *w = parent->w;
    unsigned i;

    stream->w = w;
    stream->fd = -1;
    stream->proto = CONN_STREAM;
    ex_init(&stream->ex, &conn_io, &w->ctx, parent->ex.client, stream);
    for (i = 0; i < EX_TIMERS; i++) {
        event_assign(&stream->timers[i], w->base, -1, 0, timer_cb[i], stream);
        stream->timer_due[i] = stream->timer_armed[i] = 0;
    }
}

void conn_stream_deinit(struct conn *stream)
{
    unsigned i;

    ex_deinit(&stream->ex); /* releases the upstream connection */
    for (i = 0; i < EX_TIMERS; i++)
        event_del(&stream->timers[i]);
}
