/* net: what idemproxy's listeners and sockets share, on any thread's
 * loop: an address written out, the answer to a failed accept(), and a
 * socket bufferevent that can write. */
#ifndef IDEMPROXY_NET_H
#define IDEMPROXY_NET_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stddef.h>
#include <sys/socket.h>

/* An address as "ip:port", IPv6 in brackets ("[::1]:8080"). */
void net_address(const struct sockaddr *sa, char *out, size_t size);

/* A socket bufferevent on base that can write, or NULL (out of memory);
 * the admin listener's. */
struct bufferevent *net_bev_new(struct event_base *base, evutil_socket_t fd);

/* How long a listener stops accepting when out of descriptors. */
#define ACCEPT_PAUSE_MS 100

/* For a listener's error callback (name: which listener, for the log):
 * accept() failed. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM), the socket stays readable and the loop would spin on it, so l
 * is disabled and resume (a timer whose callback re-enables it) armed
 * for ACCEPT_PAUSE_MS. Logged at most once a second, all listeners
 * together. */
void net_accept_failed(struct evconnlistener *l, struct event *resume,
                       const char *name);

#endif
