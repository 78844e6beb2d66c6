/* hiredis async connections on the caller's loop (struct idem_redis_loop).
 * hiredis's own adapters (hiredis/adapters/libevent.h) abort when they
 * cannot allocate, and
 * hiredis 0.14's write (redisBufferWrite), once it has written all, puts
 * a new empty buffer in place of the old one without checking that it
 * was allocated, then dereferences it. So the output is written here,
 * the buffer emptied in place; hiredis is left only the connect, the
 * reading, and the errors. Sends are checked for the allocations hiredis
 * 0.14 does not check (idem__redis_send_*). */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "event.h"
#include "internal.h"

struct revents {
    redisAsyncContext *ac;
    void *rd, *wr; /* one-shot watches, as in hiredis's adapters */
    const struct idem_redis_loop *loop;
    const struct idem_env *env;
    bool connecting; /* in on_writable's connect step: cleanup defers */
    bool gone;       /* hiredis freed ac then: on_writable frees e */
};

static void arm(struct revents *e, void *ev)
{
    e->loop->add(e->loop->loop, ev, 0);
}

static void add_read(void *p)
{
    arm(p, ((struct revents *)p)->rd);
}

static void del_read(void *p)
{
    struct revents *e = p;

    e->loop->del(e->loop->loop, e->rd);
}

static void add_write(void *p)
{
    arm(p, ((struct revents *)p)->wr);
}

static void del_write(void *p)
{
    struct revents *e = p;

    e->loop->del(e->loop->loop, e->wr);
}

static void cleanup(void *p)
{
    struct revents *e = p;

    if (e->rd)
        e->loop->free(e->loop->loop, e->rd);
    if (e->wr)
        e->loop->free(e->loop->loop, e->wr);
    e->rd = e->wr = NULL;
    if (e->connecting)
        e->gone = true;
    else
        idem__free(e->env, e);
}

/* Write what hiredis queued on c; drop what went from the buffer, in
 * place. The bytes left, or -1 on an error. MSG_NOSIGNAL: a Redis that
 * has just gone away makes it EPIPE, not SIGPIPE. */
static ssize_t write_out(redisContext *c)
{
    size_t len = sdslen(c->obuf);
    ssize_t n;

    if (len == 0)
        return 0;
    n = send(c->fd, c->obuf, len, MSG_NOSIGNAL);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
                   ? (ssize_t)len
                   : -1;
    memmove(c->obuf, c->obuf + n, len - (size_t)n);
    sdssetlen(c->obuf, len - (size_t)n);
    c->obuf[len - (size_t)n] = '\0';
    return (ssize_t)(len - (size_t)n);
}

static void on_readable(void *arg)
{
    redisAsyncHandleRead(((struct revents *)arg)->ac);
}

/* While connecting, hiredis judges the connect by its socket's error
 * (which only it reads: reading SO_ERROR clears it, and a refused connect
 * would then pass for one made) and runs the connect callback; if it
 * failed, it frees ac, and cleanup leaves e to be freed here. Either way
 * it would then write: it is shown an empty buffer. */
static void on_writable(void *arg)
{
    struct revents *e = arg;
    redisContext *c = &e->ac->c;
    size_t len = sdslen(c->obuf);
    ssize_t left;

    if (!(c->flags & REDIS_CONNECTED)) {
        sdssetlen(c->obuf, 0);
        e->connecting = true;
        redisAsyncHandleWrite(e->ac);
        e->connecting = false;
        if (e->gone) {
            idem__free(e->env, e);
            return;
        }
        sdssetlen(c->obuf, len);
    }
    left = c->err ? -1 : write_out(c);
    if (left < 0) {
        /* hiredis meets the error reading, not by writing again (which
         * would raise SIGPIPE): what was answered is read, then the end
         * of the stream takes the connection down (may free e) */
        shutdown(c->fd, SHUT_RDWR);
        redisAsyncHandleRead(e->ac);
        return;
    }
    if (left > 0)
        arm(e, e->wr);
    arm(e, e->rd);
}

int idem__redis_event_attach(redisAsyncContext *ac,
                             const struct idem_redis_loop *loop,
                             const struct idem_env *env)
{
    struct revents *e;
    int fd = ac->c.fd;

    if (ac->ev.data || !(e = idem__alloc(env, sizeof(*e))))
        return REDIS_ERR;
    *e = (struct revents){ .ac = ac, .loop = loop, .env = env };
    e->rd = loop->watch_new(loop->loop, fd, false, on_readable, e);
    e->wr = loop->watch_new(loop->loop, fd, true, on_writable, e);
    if (!e->rd || !e->wr) {
        cleanup(e);
        return REDIS_ERR;
    }
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    arm(e, e->rd);
    arm(e, e->wr);
    return REDIS_OK;
}

/* -- Sending --------------------------------------------------------- */

/* hiredis 0.14 ignores two allocation failures in a send: of the reply's
 * callback (the command goes out, and hiredis aborts when its reply
 * comes) and of the command's bytes (the callback waits for a reply that
 * never comes, and would take the next command's). After a send, given
 * the reply queue's tail and the output's length before it: true if both
 * went in. A command without its callback is taken back out of the
 * output, unsent (false). A callback without its command cannot be taken
 * back: the connection takes no more commands, and its deadline drops it,
 * failing that callback with the others (true: the callback will come). */
static bool queued(redisAsyncContext *ac, const redisCallback *tail,
                   size_t olen)
{
    bool pushed = ac->replies.tail != tail;
    bool appended = ac->c.obuf && sdslen(ac->c.obuf) > olen;

    if (pushed && !appended)
        redisAsyncDisconnect(ac);
    if (!pushed && appended) {
        sdssetlen(ac->c.obuf, olen);
        ac->c.obuf[olen] = '\0';
    }
    return pushed;
}

/* Send the formatted command cmd on ac, fn to get its reply. REDIS_OK, or
 * REDIS_ERR: fn will not be called. */
int idem__redis_send_formatted(redisAsyncContext *ac, redisCallbackFn *fn,
                               void *privdata, const char *cmd, size_t len)
{
    redisCallback *tail = ac->replies.tail;
    size_t olen = ac->c.obuf ? sdslen(ac->c.obuf) : 0;

    if (redisAsyncFormattedCommand(ac, fn, privdata, cmd, len) != REDIS_OK)
        return REDIS_ERR;
    return queued(ac, tail, olen) ? REDIS_OK : REDIS_ERR;
}

/* redisAsyncCommand, checked likewise. */
int idem__redis_send_command(redisAsyncContext *ac, redisCallbackFn *fn,
                             void *privdata, const char *fmt, ...)
{
    redisCallback *tail = ac->replies.tail;
    size_t olen = ac->c.obuf ? sdslen(ac->c.obuf) : 0;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = redisvAsyncCommand(ac, fn, privdata, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK)
        return REDIS_ERR;
    return queued(ac, tail, olen) ? REDIS_OK : REDIS_ERR;
}

/* -- Timers for an engine's env ------------------------------------------ */

/* The loop the calling thread attached a Redis store to (the last one). */
static _Thread_local const struct idem_redis_loop *timer_loop;

struct rtimer {
    void *ev;
    const struct idem_redis_loop *loop;
    void (*fn)(void *arg);
    void *arg;
};

void idem__redis_timers_use(const struct idem_redis_loop *loop)
{
    timer_loop = loop;
}

static void on_rtimer(void *p)
{
    struct rtimer *t = p;
    void (*fn)(void *arg) = t->fn;
    void *arg = t->arg;

    t->loop->free(t->loop->loop, t->ev);
    free(t);
    fn(arg);
}

static void *rtimer_after(void *ud, int64_t ms, void (*fn)(void *arg),
                          void *arg)
{
    const struct idem_redis_loop *loop = timer_loop;
    struct rtimer *t;

    (void)ud;
    if (!loop || !(t = malloc(sizeof(*t))))
        return NULL;
    *t = (struct rtimer){ .loop = loop, .fn = fn, .arg = arg };
    if (!(t->ev = loop->timer_new(loop->loop, on_rtimer, t)) ||
        loop->add(loop->loop, t->ev, ms) != 0) {
        if (t->ev)
            loop->free(loop->loop, t->ev);
        free(t);
        return NULL;
    }
    return t;
}

static void rtimer_cancel(void *ud, void *timer)
{
    struct rtimer *t = timer;

    (void)ud;
    t->loop->free(t->loop->loop, t->ev);
    free(t);
}

void idem_store_redis_timers(struct idem_env *env)
{
    if (!env)
        return;
    env->after = rtimer_after;
    env->cancel = rtimer_cancel;
}
