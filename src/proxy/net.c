/* net.h: addresses, failed accepts and writable bufferevents. */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent_struct.h> /* ev_write: see net_bev_new */

#include "log.h"

void net_address(const struct sockaddr *sa, char *out, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

    if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

void net_accept_failed(struct evconnlistener *l, struct event *resume,
                       const char *name)
{
    static struct log_limit limit;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };

    if ((err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) &&
        evtimer_add(resume, &tv) == 0) {
        evconnlistener_disable(l);
        log_limited(&limit, LOG_WARN, "%s: accept: %s: pausing accepts", name,
                    strerror(err));
        return;
    }
    log_limited(&limit, LOG_WARN, "%s: accept: %s", name, strerror(err));
}

/* libevent (2.1 and master) ignores a failed evbuffer_add_cb() inside
 * bufferevent_socket_new(): such a bufferevent queues output and never
 * writes it. A hooked one makes its write event pending as a byte is
 * queued; the probe byte is then taken back. */
struct bufferevent *net_bev_new(struct event_base *base, evutil_socket_t fd)
{
    struct bufferevent *bev =
        bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    struct evbuffer *o;
    bool hooked;

    if (!bev)
        return NULL;
    o = bufferevent_get_output(bev);
    hooked = evbuffer_add(o, "", 1) == 0 &&
             event_pending(&bev->ev_write, EV_WRITE, NULL);
    evbuffer_unfreeze(o, 1);
    evbuffer_drain(o, evbuffer_get_length(o));
    evbuffer_freeze(o, 1);
    event_del(&bev->ev_write);
    if (hooked)
        return bev;
    bufferevent_setfd(bev, -1); /* the caller still owns fd */
    bufferevent_free(bev);
    return NULL;
}
