/* h2: HTTP/2 on the client side (nghttp2 does the framing and HPACK).
 * Each stream is one exchange of the sans-I/O core (exchange.h), driven
 * as a connection of its own: its request is handed over as HTTP/1.1
 * bytes built from the decoded headers (the body chunked when it has no
 * length), and the HTTP/1.1 response the exchange writes is read back into
 * HEADERS and DATA frames. So every idempotency rule, limit and log line
 * is the HTTP/1.1 one. The upstream side stays on the HTTP/1.1 pool.
 * docs/internals/proxy.md draws the layer. */
#ifndef IDEMPROXY_H2_H
#define IDEMPROXY_H2_H

#include <stdbool.h>
#include <stddef.h>

struct conn;

/* The client connection preface (RFC 9113 §3.4). */
#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24

/* Bounds of an HTTP/2 connection. */
#define H2_WINDOW (64 * 1024)     /* each stream's receive window */
#define H2_STREAM_OUT (64 * 1024) /* response bytes read ahead per stream */
#define H2_CONN_OUT (64 * 1024)   /* frames queued for the socket */
#define H2_MAX_CONTINUATIONS 8    /* CONTINUATION frames per header block */

/* The first bytes p[0..n) of a plaintext connection c: the connection
 * preface (or the start of one, kept count of in c->sniffed) switches it
 * to HTTP/2 with prior knowledge (h2c); anything else is HTTP/1.1 and goes
 * to c's exchange. */
void h2_sniff(struct conn *c, const char *p, size_t n);

/* The entry point: c speaks HTTP/2 from now on. already_read[0..n) are
 * the bytes read from the client so far, which begin with the client's
 * preface (a TLS layer whose ALPN chose "h2" calls this with what it
 * decrypted, possibly nothing, and then conn_sync(c)). Queues the
 * server's SETTINGS. 0, or -1 out of memory: c is then closed at its
 * next conn_sync. */
int h2_start(struct conn *c, const char *already_read, size_t n);

/* Bytes read from HTTP/2 connection c (conn.c hands them over). */
void h2_recv(struct conn *c, const char *p, size_t n);

/* conn_sync for an HTTP/2 connection or one of its streams: move frames
 * and the streams' exchanges along, read, write, close, free. */
void h2_sync(struct conn *c);

/* Shutdown: GOAWAY; open streams finish, then the connection closes. */
void h2_shutdown(struct conn *c);

/* Free connection c's HTTP/2 state and every stream (conn_free). */
void h2_free(struct conn *c);

#endif
