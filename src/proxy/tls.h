/* tls: TLS for the driver layer, with OpenSSL. The listener's context
 * (--tls-cert, --tls-key; TLS 1.2 and later), re-read by tls_reload on
 * SIGHUP, and the upstream's (--upstream-tls: verified against the
 * system CAs or --upstream-ca, SNI, an optional client certificate). And
 * the transport calls conn.c and upstream.c make on their non-blocking
 * sockets: recv/send, or SSL_read/SSL_write with the handshake going on
 * inside them, driven by the same edge-triggered events. The exchange
 * knows none of it but the fact ex->tls. */
#ifndef IDEMPROXY_TLS_H
#define IDEMPROXY_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <sys/types.h>

#include "config.h"

struct tls;

/* The contexts cfg asks for: *tls_out is NULL when neither side speaks
 * TLS. 0, or -1 after logging why (a file that does not load, a key that
 * does not match its certificate). */
int tls_new(const struct config *cfg, struct tls **tls_out);
void tls_free(struct tls *t);

/* Re-read the listener's certificate and key from cfg (SIGHUP). New
 * connections get them; open ones keep theirs. 0, or -1 when they do not
 * load: the old ones keep serving, and the log says why. 0 with no TLS
 * listener. Thread-safe. */
int tls_reload(struct tls *t, const struct config *cfg);

/* Whether the listener, the upstream, speaks TLS. t may be NULL. */
bool tls_listener(const struct tls *t);
bool tls_upstream(const struct tls *t);

/* A server-side SSL on fd (accepted, non-blocking), the handshake to
 * come in its first reads; NULL out of memory. */
SSL *tls_accept_new(struct tls *t, int fd);
/* A client-side SSL on fd (connecting, non-blocking) with SNI and the
 * name to verify; the handshake comes in its first write. NULL out of
 * memory. */
SSL *tls_connect_new(struct tls *t, int fd);

/* What a transport call returns besides bytes: nothing now, go on at the
 * socket's next readable (TPORT_WANT_READ) or writable edge. */
#define TPORT_WANT_READ (-2)
#define TPORT_WANT_WRITE (-3)

/* Read up to n bytes from fd (ssl NULL) or ssl: the bytes, 0 at the end,
 * -1 on an error, or a TPORT_WANT_*. TLS reads record after record until
 * buf is full or the socket is empty. *empty_out: the socket is known
 * empty (its next bytes bring an edge); false when more may be there. */
ssize_t tls_io_read(int fd, SSL *ssl, char *buf, size_t n, bool *empty_out);
/* Write up to n (> 0) bytes: how many went, -1 on an error, or a
 * TPORT_WANT_*. A plain write short of n filled the socket. */
ssize_t tls_io_write(int fd, SSL *ssl, const char *p, size_t n);

/* Whether ssl's handshake is over (application bytes may have left). */
bool tls_handshake_done(const SSL *ssl);
/* Say close_notify (best effort, never waiting) and free ssl. NULL is
 * harmless. */
void tls_close(SSL *ssl);
/* Say close_notify (best effort) before a shutdown(SHUT_WR). */
void tls_shutdown(SSL *ssl);

#endif
