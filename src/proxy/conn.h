/* conn: a client connection, the libevent layer that drives its
 * exchange (exchange.h): a non-blocking socket registered once,
 * edge-triggered for reading and writing, read into the worker's scratch
 * buffer and written straight from the exchange's output. */
#ifndef IDEMPROXY_CONN_H
#define IDEMPROXY_CONN_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "exchange.h"
#include "tls.h"

struct worker;
struct upstream;
struct h2_session;

/* What a conn speaks. A CONN_STREAM is an HTTP/2 stream (h2.h): no
 * socket, its exchange driven by its connection's session. */
enum conn_proto { CONN_SNIFF = 0, CONN_HTTP1, CONN_HTTP2, CONN_STREAM };

struct conn {
    struct exchange ex;
    LIST_ENTRY(conn) link;
    struct worker *w;
    struct upstream *up; /* the upstream connection of its request */
    int fd;              /* -1 once the client is closed */
    SSL *ssl;            /* TLS over fd, or NULL */
    struct event ev; /* fd: read, write, closed; edge-triggered, persistent */
    /* The exchange's timers, lazily: due is when each expires (0: not
     * set), armed when its event fires (0: not pending). Moving a
     * deadline later, or clearing it, leaves the event alone; it fires,
     * finds the deadline later or gone, and is armed again or dropped. */
    struct event timers[EX_TIMERS];
    int64_t timer_due[EX_TIMERS];
    int64_t timer_armed[EX_TIMERS];
    struct event write_deadline; /* output waiting on a stalled client */
    bool readable;               /* the socket may hold unread bytes */
    bool peer_closed;            /* a FIN came: read until recv says 0 */
    bool writable;               /* the socket may take more bytes */
    bool read_on_writable;       /* TLS: a read waits for a writable edge */
    bool write_on_readable;      /* TLS: a write waits for a readable edge */
    bool lingering;              /* writing is shut down; reading to drop */
    bool syncing;                /* inside conn_sync: it frees, not callees */
    struct conn *woken_next;     /* on its worker's wake queue */
    unsigned char proto;         /* enum conn_proto */
    unsigned char sniffed;       /* bytes of the HTTP/2 preface seen */
    struct h2_session *h2;       /* HTTP/2: the session (h2.c) */
};

/* Take a new client socket: a conn, or the socket closed. */
void conn_accept(struct worker *w, evutil_socket_t fd,
                 const struct sockaddr *sa, int salen);
/* The engine decided c's waiting request (wait mode), on c's thread. */
void conn_woken(struct conn *c);
/* Apply what c's exchange wants after an input: write, read, close,
 * free. Frees c when the exchange is done. */
void conn_sync(struct conn *c);
/* Shutdown: close idle connections; busy ones close after their answer. */
void conn_close_idle(struct worker *w);
/* Free c whatever it is doing (forced shutdown). */
void conn_discard(struct conn *c);

/* Stop c's timer t for good (its event too). */
void conn_timer_stop(struct conn *c, enum ex_timer t);

/* For h2.c, which drives HTTP/2 connections and streams itself. */
/* Write c's client_out: false if the client is gone. */
bool conn_flush(struct conn *c);
/* Read once and hand the bytes over: false if the client is gone. */
bool conn_read(struct conn *c);
/* Close c's socket (the conn stays). */
void conn_close(struct conn *c);
/* Set up stream, a CONN_STREAM of HTTP/2 connection parent: its exchange
 * and timers, no socket. conn_stream_deinit undoes it. */
void conn_stream_init(struct conn *stream, struct conn *parent);
void conn_stream_deinit(struct conn *stream);

#endif
