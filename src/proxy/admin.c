/* The admin listener: /healthz, /readyz and /metrics, one request per
 * connection, on the main thread, apart from client traffic. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "http.h"
#include "metrics.h"
#include "resolver.h"
#include "net.h"
#include "worker.h"
#include "idem/redis.h"

#define ADMIN_MAX_HEAD 8192

struct admin {
    struct evconnlistener *listener;
    struct event *resume; /* after an accept pause */
    struct engines *engines;
    struct idem_store *store;
    const struct config *const *cfg; /* the running one, at each request */
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

/* Whether the line is "GET PATH " or "HEAD PATH " (*head: the latter). */
static bool is(const char *line, size_t len, const char *path, bool *head)
{
    size_t n = strlen(path), skip;

    *head = len >= 5 && memcmp(line, "HEAD ", 5) == 0;
    if (!*head && !(len >= 4 && memcmp(line, "GET ", 4) == 0))
        return false;
    skip = *head ? 5 : 4;
    return len - skip > n && memcmp(line + skip, path, n) == 0 &&
           line[skip + n] == ' ';
}

/* Why the proxy is not ready, or NULL: the store must be reachable (the
 * Redis store has a connection up; the memory store always is) and the
 * upstream must have answered (a connect or a response) within three
 * resolve intervals (the resolver probes an idle one every interval). */
static const char *not_ready(const struct admin *ad)
{
    struct idem_store_redis_stats rs;
    int64_t window = 3 * (*ad->cfg)->resolve_interval_ms;
    int64_t ok = upstream_ok_ms;

    if (!config_store_is_memory(*ad->cfg) &&
        (idem_store_redis_stats(ad->store, &rs) != IDEM_OK ||
         rs.connections == 0))
        return "the store is unreachable\n";
    if (window < 3000)
        window = 3000;
    if (!ok || worker_now_ms() - ok > window)
        return "the upstream is unreachable\n";
    return NULL;
}

/* /healthz, /readyz, /metrics (GET, and HEAD: the same head, no body). */
static void respond(struct admin_conn *a, struct buf *o, const char *line,
                    size_t len, bool *head)
{
    size_t mlen = 0, n;
    struct idem_engine *const *all = gen_engines_all(a->ad->engines, &n);
    const char *why;
    char *text;

    if (is(line, len, "/healthz", head)) {
        http_respond(o, 200, "text/plain", NULL, "ok\n", 3, true);
    } else if (is(line, len, "/readyz", head)) {
        why = not_ready(a->ad);
        http_respond(o, why ? 503 : 200, "text/plain", NULL,
                     why ? why : "ready\n", why ? strlen(why) : 6, true);
    } else if (is(line, len, "/metrics", head) &&
               (text = metrics_render(all, n, &mlen))) {
        http_respond(o, 200, "text/plain; version=0.0.4", NULL, text, mlen,
                     true);
        free(text);
    } else if (is(line, len, "/metrics", head)) {
        http_respond(o, 503, "text/plain", NULL, "out of memory\n", 14, true);
    } else {
        *head = len >= 5 && memcmp(line, "HEAD ", 5) == 0;
        http_respond(o, 404, "text/plain", NULL, "not found\n", 10, true);
    }
}

static void answer(struct admin_conn *a, const char *line, size_t len)
{
    struct buf o = { 0 };
    const char *end;
    bool head = false;

    respond(a, &o, line, len, &head);
    /* HEAD: the head alone (its Content-Length is the GET's) */
    end = head ? memmem(buf_bytes(&o), buf_len(&o), "\r\n\r\n", 4) : NULL;
    if (end)
        o.len = (size_t)(end + 4 - buf_bytes(&o));
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
    if (!a || !(a->bev = net_bev_new(evconnlistener_get_base(l), fd))) {
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
    net_accept_failed(l, ((struct admin *)arg)->resume, "admin listener");
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evconnlistener_enable(((struct admin *)arg)->listener);
}

struct admin *admin_listen(struct event_base *base, int fd, struct engines *es,
                           struct idem_store *store,
                           const struct config *const *cfg)
{
    struct admin *ad = calloc(1, sizeof(*ad));

    if (!ad || !(ad->resume = evtimer_new(base, on_resume, ad)) ||
        !(ad->listener = evconnlistener_new(base, on_accept, ad,
                                            LEV_OPT_CLOSE_ON_FREE, -1, fd))) {
        admin_close(ad);
        return NULL;
    }
    ad->engines = es;
    ad->store = store;
    ad->cfg = cfg;
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
