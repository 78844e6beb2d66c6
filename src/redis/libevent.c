/* libidem-redis's libevent adapter: one-shot events on an event_base, as
 * struct idem_redis_loop asks. Each event carries its callback in a small
 * box beside it, freed with it. */
#include <stdlib.h>

#include "idem/redis_libevent.h"

struct box {
    struct event *ev;
    void (*cb)(void *ud);
    void *ud;
};

/* The callback may free the box (and the event): nothing after it. */
static void fire(evutil_socket_t fd, short what, void *p)
{
    struct box *b = p;

    (void)fd;
    (void)what;
    b->cb(b->ud);
}

static struct box *box_new(struct event_base *base, int fd, short what,
                           void (*cb)(void *ud), void *ud)
{
    struct box *b = malloc(sizeof(*b));

    if (!b)
        return NULL;
    *b = (struct box){ .cb = cb, .ud = ud };
    b->ev = event_new(base, fd, what, fire, b);
    if (!b->ev) {
        free(b);
        return NULL;
    }
    return b;
}

static void *watch_new(void *loop, int fd, bool write, void (*cb)(void *ud),
                       void *ud)
{
    return box_new(loop, fd, write ? EV_WRITE : EV_READ, cb, ud);
}

static void *timer_new(void *loop, void (*cb)(void *ud), void *ud)
{
    return box_new(loop, -1, 0, cb, ud);
}

static int add(void *loop, void *ev, int64_t ms)
{
    struct box *b = ev;
    struct timeval tv = { (time_t)(ms / 1000),
                          (suseconds_t)(ms % 1000) * 1000 };

    (void)loop;
    if (event_get_fd(b->ev) >= 0)
        return event_add(b->ev, NULL);
    return event_add(b->ev, &tv);
}

static void del(void *loop, void *ev)
{
    (void)loop;
    event_del(((struct box *)ev)->ev);
}

static void box_free(void *loop, void *ev)
{
    struct box *b = ev;

    (void)loop;
    event_free(b->ev);
    free(b);
}

static void run_once(void *loop)
{
    event_base_loop(loop, EVLOOP_ONCE);
}

void idem_redis_libevent(struct event_base *base,
                         struct idem_redis_loop *loop_out)
{
    *loop_out = (struct idem_redis_loop){ .watch_new = watch_new,
                                          .timer_new = timer_new,
                                          .add = add,
                                          .del = del,
                                          .free = box_free,
                                          .run_once = run_once,
                                          .loop = base };
}
