/* upstream: connections to the upstream. Each worker keeps a bounded
 * pool of idle keep-alive connections; a request takes the most recently
 * used one or opens a new one. Like a client connection, a socket is
 * registered once, edge-triggered both ways; what it reads goes to the
 * exchange of the request it serves. */
#ifndef IDEMPROXY_UPSTREAM_H
#define IDEMPROXY_UPSTREAM_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <sys/queue.h>

#include "exchange.h"
#include "resolver.h"
#include "tls.h"

/* How long an address that failed to connect is skipped. */
#define UPSTREAM_DOWN_MS 5000

struct worker;
struct conn;

struct upstream {
    TAILQ_ENTRY(upstream) link; /* in the pool while idle */
    struct worker *w;
    struct conn *conn; /* the request it serves; NULL when idle */
    int fd;
    SSL *ssl;             /* TLS over fd, or NULL */
    struct upaddr addr;   /* where it connects */
    char name[72];        /* addr as "ip:port" ("[v6]:port"), for logs */
    unsigned tries;       /* addresses tried for this request before it */
    struct event ev;      /* as a client conn's */
    struct event connect; /* the connect deadline (and the handshake's) */
    bool connected;
    bool pooled;           /* in the idle pool */
    bool reused;           /* served a request before this one */
    bool sent;             /* a byte of this request was written */
    bool readable;         /* the socket may hold unread bytes */
    bool peer_closed;      /* a FIN came: read until recv says 0 */
    bool writable;         /* the socket may take more bytes */
    bool read_on_writable; /* as a client conn's */
    bool write_on_readable;
};

/* c's exchange asks for an upstream connection for its queued request
 * (exchange_io.upstream_open): a pooled one, or a new one to the next
 * address in turn that is not marked down. A connect that fails marks
 * its address down for UPSTREAM_DOWN_MS and moves to the next address,
 * unseen by the exchange (nothing was sent), until each was tried once.
 * 0 or -1. */
int upstream_open(struct conn *c);
/* Return c's upstream connection to the pool, or close it. */
void upstream_release(struct conn *c, bool reusable);
/* Write what c's exchange queued for its upstream, and read what the
 * upstream sent while the exchange wants it, feeding it to the exchange.
 * Reports a closed connection to the exchange. Returns true if it did
 * anything (the caller looks at the exchange again). */
bool upstream_sync(struct conn *c, bool read);
void upstream_close_idle(struct worker *w);

#endif
