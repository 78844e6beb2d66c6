/* The admin listener: GET /healthz and GET /metrics, one request per
 * connection, on the main thread, apart from client traffic. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "http.h"
#include "metrics.h"
#include "worker.h"

#define ADMIN_MAX_HEAD 8192

struct admin {
    struct evconnlistener *listener;
    struct event *resume; /* after an accept pause */
    struct engines *engines;
};

struct admin_conn {
    struct bufferevent *bev;
    struct admin *ad;
};

static void admin_conn_free(struct admin_conn *a)
{
    bufferevent_free(a->bev);
    free(a);
}

static void on_written(struct bufferevent *bev, void *arg)
{
    (void)bev;
    admin_conn_free(arg);
}

static void answer(struct admin_conn *a, const char *line, size_t len)
{
    struct buf o = { 0 };
    size_t mlen = 0, n;
    struct idem_engine *const *all = engines_all(a->ad->engines, &n);
    char *text;

    if (len >= 13 && memcmp(line, "GET /healthz ", 13) == 0) {
        http_respond(&o, 200, "text/plain", NULL, "ok\n", 3, true);
    } else if (len >= 13 && memcmp(line, "GET /metrics ", 13) == 0 &&
               (text = metrics_render(all, n, &mlen))) {
        http_respond(&o, 200, "text/plain; version=0.0.4", NULL, text, mlen,
                     true);
        free(text);
    } else if (len >= 13 && memcmp(line, "GET /metrics ", 13) == 0) {
        http_respond(&o, 503, "text/plain", NULL, "out of memory\n", 14, true);
    } else {
        http_respond(&o, 404, "text/plain", NULL, "not found\n", 10, true);
    }
    /* a cut answer (out of memory) still ends with the connection */
    evbuffer_add(bufferevent_get_output(a->bev), buf_bytes(&o), buf_len(&o));
    buf_free(&o);
    bufferevent_disable(a->bev, EV_READ);
    bufferevent_setcb(a->bev, NULL, on_written, NULL, a);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct admin_conn *a = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    size_t len;
    char *line;

    if (end.pos < 0) {
        if (evbuffer_get_length(in) > ADMIN_MAX_HEAD)
            admin_conn_free(a);
        return;
    }
    line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
    answer(a, line ? line : "", line ? len : 0);
    free(line);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    admin_conn_free(arg);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct admin_conn *a = calloc(1, sizeof(*a));
    struct timeval tv = { 10, 0 };

    (void)sa;
    (void)salen;
    if (!a || !(a->bev = proxy_bev_new(evconnlistener_get_base(l), fd))) {
        free(a);
        evutil_closesocket(fd);
        return;
    }
    a->ad = arg;
    bufferevent_setcb(a->bev, on_read, NULL, on_event, a);
    bufferevent_set_timeouts(a->bev, &tv, &tv);
    if (bufferevent_enable(a->bev, EV_READ | EV_WRITE) != 0)
        admin_conn_free(a); /* it could never read */
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    proxy_accept_failed(l, ((struct admin *)arg)->resume, "admin listener");
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evconnlistener_enable(((struct admin *)arg)->listener);
}

struct admin *admin_listen(struct event_base *base, int fd, struct engines *es)
{
    struct admin *ad = calloc(1, sizeof(*ad));

    if (!ad || !(ad->resume = evtimer_new(base, on_resume, ad)) ||
        !(ad->listener = evconnlistener_new(base, on_accept, ad,
                                            LEV_OPT_CLOSE_ON_FREE, -1, fd))) {
        admin_close(ad);
        return NULL;
    }
    ad->engines = es;
    evconnlistener_set_error_cb(ad->listener, on_accept_error);
    return ad;
}

void admin_close(struct admin *ad)
{
    if (!ad)
        return;
    if (ad->listener)
        evconnlistener_free(ad->listener);
    if (ad->resume)
        event_free(ad->resume);
    free(ad);
}
