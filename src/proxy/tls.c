/* tls.h: OpenSSL contexts and the transport calls. The listener's
 * context is swapped whole on reload (under a mutex, taken only to make
 * an SSL from it: an SSL holds a reference to its context, so open
 * connections keep the old one until they close). */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"

struct tls {
    pthread_mutex_t mu; /* guards server */
    SSL_CTX *server;    /* the listener's; NULL without TLS there */
    SSL_CTX *client;    /* the upstream's; NULL without TLS there */
    char *name;         /* verified, and the SNI unless an IP literal */
    bool name_is_ip;
};

/* The first queued OpenSSL error as text (the queue is cleared). */
static const char *ssl_error(char *buf, size_t size)
{
    unsigned long e = ERR_get_error();

    ERR_clear_error();
    if (!e)
        return "unknown error";
    ERR_error_string_n(e, buf, size);
    return buf;
}

/* Settings both sides share: TLS 1.2 and later, partial writes from a
 * buffer that moves (struct buf grows), and an end without close_notify
 * taken as an end (HTTP frames its own bodies). */
static SSL_CTX *ctx_new(const SSL_METHOD *method)
{
    SSL_CTX *ctx = SSL_CTX_new(method);

    if (!ctx)
        return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* read what the socket holds, not one record header at a time: a
     * short read then says the socket is empty (see read_seen) */
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

/* Load a certificate chain and its key into ctx. 0, or -1 logged. */
static int load_pair(SSL_CTX *ctx, const char *cert, const char *key,
                     const char *what)
{
    char err[256];

    if (SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 &&
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 &&
        SSL_CTX_check_private_key(ctx) == 1)
        return 0;
    log_msg(LOG_ERROR, "%s %s / %s: %s", what, cert, key,
            ssl_error(err, sizeof(err)));
    return -1;
}

/* ALPN (RFC 7301): "h2" when the client offers it and HTTP/2 is on,
 * else "http/1.1"; a client offering neither goes on without ALPN. The
 * connection then speaks what it chose: h2.c's sniffing sees the h2
 * preface after the handshake as it does on plaintext. */
static int select_alpn(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg)
{
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    static const unsigned char h1[] = "\x08http/1.1";
    bool h2 = (uintptr_t)arg != 0;

    (void)ssl;
    if (SSL_select_next_proto((unsigned char **)out, outlen, h2 ? both : h1,
                              h2 ? sizeof(both) - 1 : sizeof(h1) - 1, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

/* What the socket reads inside one SSL_read did, on this thread: how
 * many, and whether the last one got less than it asked for (the socket
 * is empty: with edge triggering, no read that only says EAGAIN is
 * needed to know it). */
static _Thread_local unsigned reads_seen;
static _Thread_local bool read_was_short;

static long read_seen(BIO *b, int oper, const char *argp, size_t len, int argi,
                      long argl, int ret, size_t *processed)
{
    (void)b;
    (void)argp;
    (void)argi;
    (void)argl;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN)) {
        reads_seen++;
        read_was_short = ret > 0 && processed && *processed < len;
    }
    return ret;
}

/* Watch ssl's socket reads (read_seen). */
static void watch_reads(SSL *ssl)
{
    BIO_set_callback_ex(SSL_get_rbio(ssl), read_seen);
}

/* The listener's context from cfg's files, or NULL (logged). */
static SSL_CTX *server_ctx(const struct config *cfg)
{
    SSL_CTX *ctx = ctx_new(TLS_server_method());

    if (!ctx) {
        log_msg(LOG_ERROR, "TLS: out of memory");
        return NULL;
    }
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn,
                               (void *)(uintptr_t)(cfg->h2_max_streams > 0));
    if (load_pair(ctx, cfg->tls_cert, cfg->tls_key, "--tls-cert") != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The upstream's context: peers verified against --upstream-ca or the
 * system's CAs, and a client certificate if one is given. NULL (logged). */
static SSL_CTX *client_ctx(const struct config *cfg)
{
    SSL_CTX *ctx = ctx_new(TLS_client_method());
    char err[256];
    int ok;

    if (!ctx) {
        log_msg(LOG_ERROR, "TLS: out of memory");
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    ok = cfg->upstream_ca
             ? SSL_CTX_load_verify_locations(ctx, cfg->upstream_ca, NULL)
             : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        log_msg(LOG_ERROR, "--upstream-ca %s: %s",
                cfg->upstream_ca ? cfg->upstream_ca : "(the system's)",
                ssl_error(err, sizeof(err)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (cfg->upstream_cert &&
        load_pair(ctx, cfg->upstream_cert, cfg->upstream_key,
                  "--upstream-cert") != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static bool is_ip(const char *s)
{
    unsigned char a[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* One handshake with server through a BIO pair, in memory, then a byte
 * each way, at version (TLS1_2_VERSION or TLS1_3_VERSION). */
static void warm_once(SSL_CTX *server, int version)
{
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    SSL *c = cctx ? SSL_new(cctx) : NULL, *s = SSL_new(server);
    BIO *cb = NULL, *sb = NULL;
    char byte = 'x';
    int i, done = 0;

    if (!c || !s || BIO_new_bio_pair(&cb, 0, &sb, 0) != 1 ||
        SSL_set_max_proto_version(c, version) != 1)
        goto out;
    SSL_set_bio(c, cb, cb);
    SSL_set_bio(s, sb, sb);
    cb = sb = NULL;
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    for (i = 0; i < 32 && done != 3; i++) {
        if (!(done & 1) && SSL_do_handshake(c) == 1)
            done |= 1;
        if (!(done & 2) && SSL_do_handshake(s) == 1)
            done |= 2;
    }
    if (done == 3 && SSL_write(c, &byte, 1) == 1)
        (void)SSL_read(s, &byte, 1);
out:
    BIO_free(cb);
    BIO_free(sb);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    ERR_clear_error();
}

/* OpenSSL 3 fetches its algorithms lazily, at the first handshake, and
 * a fetch that fails for want of memory stays failed: every later
 * handshake then fails "unsupported" (found by h2_failalloc.sh's tls
 * mode). Handshaking with ourselves at start, TLS 1.3 and 1.2, fetches
 * them while nothing else runs. */
static void warm_up(SSL_CTX *server)
{
    warm_once(server, TLS1_3_VERSION);
    warm_once(server, TLS1_2_VERSION);
}

int tls_new(const struct config *cfg, struct tls **tls_out)
{
    struct tls *t;
    /* the first upstream's host: with several, they share a certificate
     * name (or --upstream-sni says which) */
    const char *name = cfg->upstream_sni ? cfg->upstream_sni
                       : cfg->nupstreams ? cfg->upstreams[0].addr.host
                                         : "";

    *tls_out = NULL;
    if (!cfg->tls_cert && !cfg->upstream_tls)
        return 0;
    t = calloc(1, sizeof(*t));
    if (!t || !(t->name = strdup(name))) {
        free(t);
        log_msg(LOG_ERROR, "TLS: out of memory");
        return -1;
    }
    pthread_mutex_init(&t->mu, NULL);
    t->name_is_ip = is_ip(name);
    if ((cfg->tls_cert && !(t->server = server_ctx(cfg))) ||
        (cfg->upstream_tls && !(t->client = client_ctx(cfg)))) {
        tls_free(t);
        return -1;
    }
    if (t->server)
        warm_up(t->server);
    *tls_out = t;
    return 0;
}

void tls_free(struct tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->server);
    SSL_CTX_free(t->client);
    pthread_mutex_destroy(&t->mu);
    free(t->name);
    free(t);
}

int tls_reload(struct tls *t, const struct config *cfg)
{
    SSL_CTX *fresh, *old;

    if (!tls_listener(t) || !cfg->tls_cert)
        return 0;
    fresh = server_ctx(cfg);
    if (!fresh) {
        log_msg(LOG_ERROR, "TLS: the new certificate does not load: the "
                           "old one keeps serving");
        return -1;
    }
    pthread_mutex_lock(&t->mu);
    old = t->server;
    t->server = fresh;
    pthread_mutex_unlock(&t->mu);
    SSL_CTX_free(old);
    log_msg(LOG_INFO, "TLS: certificate %s reloaded", cfg->tls_cert);
    return 0;
}

bool tls_listener(const struct tls *t)
{
    return t && t->server;
}

bool tls_upstream(const struct tls *t)
{
    return t && t->client;
}

SSL *tls_accept_new(struct tls *t, int fd)
{
    SSL *ssl;

    pthread_mutex_lock(&t->mu);
    ssl = SSL_new(t->server);
    pthread_mutex_unlock(&t->mu);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    watch_reads(ssl);
    return ssl;
}

SSL *tls_connect_new(struct tls *t, int fd)
{
    SSL *ssl = SSL_new(t->client);
    bool ok = ssl && SSL_set_fd(ssl, fd) == 1;

    if (ok)
        watch_reads(ssl);
    /* RFC 6066 3: no IP literal in SNI; the certificate names the IP */
    if (ok && t->name_is_ip)
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), t->name) == 1;
    else if (ok)
        ok = SSL_set_tlsext_host_name(ssl, t->name) == 1 &&
             SSL_set1_host(ssl, t->name) == 1;
    if (!ok) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

/* -- The transport ------------------------------------------------------ */

/* A failed handshake, said once a second: a client's at debug (scanners,
 * plain HTTP on the TLS port), the upstream's as a warning with the
 * verification's verdict. */
static void log_failure(SSL *ssl)
{
    static struct log_limit client_limit, upstream_limit;
    long verify = SSL_get_verify_result(ssl);
    char err[256];
    const char *why = ssl_error(err, sizeof(err));

    if (SSL_is_server(ssl)) {
        log_limited(&client_limit, LOG_DEBUG, "TLS from a client: %s", why);
        return;
    }
    if (verify != X509_V_OK)
        why = X509_verify_cert_error_string(verify);
    log_limited(&upstream_limit, LOG_WARN, "TLS to the upstream: %s", why);
}

/* The result of an SSL call that moved no bytes. */
static ssize_t ssl_result(SSL *ssl, int rc)
{
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return TPORT_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TPORT_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        if (!SSL_is_init_finished(ssl))
            log_failure(ssl);
        ERR_clear_error();
        /* a fatal error: no close_notify may follow (tls_close) */
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        return -1;
    }
}

static ssize_t plain_read(int fd, char *buf, size_t n, bool *empty_out)
{
    ssize_t got;

    do
        got = recv(fd, buf, n, 0);
    while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return TPORT_WANT_READ;
    *empty_out = got >= 0 && (size_t)got < n;
    return got < 0 ? -1 : got;
}

ssize_t tls_io_read(int fd, SSL *ssl, char *buf, size_t n, bool *empty_out)
{
    size_t got = 0;
    ssize_t rc;
    int r;

    *empty_out = false;
    if (!ssl)
        return plain_read(fd, buf, n, empty_out);
    /* a record at a time: after one, more may wait in the socket with no
     * new edge to say so, so read until full, told to wait, or a socket
     * read came back short with nothing left in OpenSSL's buffers */
    while (got < n) {
        ERR_clear_error();
        reads_seen = 0;
        r = SSL_read(ssl, buf + got,
                     n - got > INT_MAX ? INT_MAX : (int)(n - got));
        if (r > 0) {
            got += (size_t)r;
            if (reads_seen && read_was_short && !SSL_has_pending(ssl)) {
                *empty_out = true;
                break;
            }
            continue;
        }
        rc = ssl_result(ssl, r);
        if (got == 0)
            return rc;
        *empty_out = rc == TPORT_WANT_READ;
        break; /* an end or error comes again on the next read */
    }
    return (ssize_t)got;
}

ssize_t tls_io_write(int fd, SSL *ssl, const char *p, size_t n)
{
    ssize_t sent;
    int r;

    if (!ssl) {
        do
            sent = send(fd, p, n, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return TPORT_WANT_WRITE;
        return sent <= 0 ? -1 : sent;
    }
    ERR_clear_error();
    r = SSL_write(ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    sent = ssl_result(ssl, r);
    return sent == 0 ? -1 : sent;
}

bool tls_handshake_done(const SSL *ssl)
{
    return SSL_is_init_finished(ssl);
}

void tls_shutdown(SSL *ssl)
{
    if (!ssl || !SSL_is_init_finished(ssl) ||
        (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        return;
    ERR_clear_error();
    SSL_shutdown(ssl); /* sends close_notify; does not wait for the peer's */
    ERR_clear_error();
}

void tls_close(SSL *ssl)
{
    if (!ssl)
        return;
    tls_shutdown(ssl);
    SSL_free(ssl);
}
