/* idemproxy with TLS, end to end: a CA and certificates made at test time
 * with the openssl command in the test's directory; a TLS listener (a
 * keyed POST replayed over it, a plaintext client turned away, a new
 * certificate taken on SIGHUP and a bad one refused); and https to the
 * upstream, here a second idemproxy with a TLS listener in front of
 * demo_upstream: verified with --upstream-ca, and refused (502, the key
 * released: nothing was sent) for another CA, an expired certificate and
 * a name that does not match; a client certificate (mTLS) to a WebSocket
 * server over TLS that requires one. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "proxy_helpers.h"

#define RESP_MAX 65536

/* The certificates, in h_tmpdir(): a CA and another; server certificates
 * for localhost and 127.0.0.1 signed by the CA (srv, and srv2 with
 * another subject), one expired, one for another name. */
static void certs(void)
{
    h_make_certs("ca ca; ca other\n"
                 "srv srv localhost DNS:localhost,IP:127.0.0.1 2\n"
                 "srv srv2 reloaded DNS:localhost,IP:127.0.0.1 2\n"
                 "srv expired localhost DNS:localhost,IP:127.0.0.1 0\n"
                 "srv wrong wrong.example DNS:wrong.example 2\n");
    sleep(1); /* "expired" is valid for its first second only */
}

/* An idemproxy with a TLS listener (certificate name.pem, key name.key)
 * in front of 127.0.0.1:up_port, with extra flags. */
static struct h_proc *tls_proxy(uint16_t up_port, const char *name,
                                const char *const *extra)
{
    char *cert = h_format("%s/%s.pem", h_tmpdir(), name);
    char *key = h_format("%s/%s.key", h_tmpdir(), name);
    const char *flags[ARGS_MAX] = { "--tls-cert", cert, "--tls-key", key };
    size_t n = 4;
    struct h_proc *p;

    while (extra && *extra && n + 1 < ARGS_MAX)
        flags[n++] = *extra++;
    flags[n] = NULL;
    p = proxy(up_port, flags);
    free(cert);
    free(key);
    return p;
}

/* -- A TLS client --------------------------------------------------------- */

/* Send raw on a TLS connection to 127.0.0.1:port (verified against ca,
 * for the name localhost) and read until the server closes, into
 * out[0..RESP_MAX). The peer certificate's subject CN into cn if not
 * NULL. 0, or -1 (no connection, handshake refused). */
static int tls_request(uint16_t port, const char *ca, const char *raw,
                       char *out, char *cn)
{
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int fd = socket(AF_INET, SOCK_STREAM, 0), rc = -1, n;
    struct timeval tv = { 10, 0 };
    size_t got = 0;
    SSL *ssl = NULL;
    X509 *peer;

    assert_non_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        goto out;
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    if (SSL_connect(ssl) != 1 ||
        SSL_write(ssl, raw, (int)strlen(raw)) != (int)strlen(raw))
        goto out;
    while (got < RESP_MAX - 1 &&
           (n = SSL_read(ssl, out + got, (int)(RESP_MAX - 1 - got))) > 0)
        got += (size_t)n;
    out[got] = '\0';
    peer = SSL_get1_peer_certificate(ssl);
    if (cn && peer)
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName,
                                  cn, 64);
    X509_free(peer);
    rc = got ? 0 : -1;
out:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    close(fd);
    return rc;
}

/* A keyed POST over TLS (Connection: close): its status, and whether it
 * was a replay. */
static int tls_post(uint16_t port, const char *key, bool *replayed)
{
    char *ca = h_tmp_path("ca.pem");
    char *raw = h_format("POST /orders HTTP/1.1\r\nHost: localhost\r\n"
                         "Idempotency-Key: %s\r\nContent-Length: 2\r\n"
                         "Connection: close\r\n\r\nhi",
                         key);
    char *out = malloc(RESP_MAX);
    int status = -1;

    assert_non_null(out);
    if (tls_request(port, ca, raw, out, NULL) == 0)
        sscanf(out, "HTTP/1.1 %d", &status);
    *replayed = strstr(out, "Idempotent-Replayed: true") != NULL;
    free(out);
    free(raw);
    free(ca);
    return status;
}

/* The subject CN of the certificate the listener on port serves. */
static void served_cn(uint16_t port, char cn[64])
{
    char *ca = h_tmp_path("ca.pem");
    char *out = malloc(RESP_MAX);

    assert_non_null(out);
    cn[0] = '\0';
    assert_int_equal(tls_request(port, ca,
                                 "GET / HTTP/1.1\r\nHost: localhost\r\n"
                                 "Connection: close\r\n\r\n",
                                 out, cn),
                     0);
    free(out);
    free(ca);
}

/* -- The listener --------------------------------------------------------- */

static void test_tls_listener_replays(void **state)
{
    struct h_proc *up = upstream_on("127.0.0.1:0"), *px;
    bool replayed;

    (void)state;
    certs();
    px = tls_proxy(up->http_port, "srv", NULL);
    assert_int_equal(tls_post(px->http_port, "k-tls", &replayed), 200);
    assert_false(replayed);
    assert_int_equal(tls_post(px->http_port, "k-tls", &replayed), 200);
    assert_true(replayed);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* A keyed POST with curl over TLS (--http2: ALPN offers h2 first, or
 * --http1.1): the protocol curl says was used, in proto[16]; its status
 * and whether it was a replay from the headers it wrote. */
static int curl_post(uint16_t port, const char *version, const char *key,
                     char proto[16], bool *replayed)
{
    char *ca = h_tmp_path("ca.pem"), *hdr = h_tmp_path("curl.hdr");
    char *url = h_format("https://localhost:%u/orders", port);
    char *keyh = h_format("Idempotency-Key: %s", key);
    char *script =
        h_format("/usr/bin/curl -s -o /dev/null -D %s -w '%%{http_version}' "
                 "%s --cacert %s -X POST -H '%s' -d hi %s > %s/curl.ver",
                 hdr, version, ca, keyh, url, h_tmpdir());
    const char *argv[] = { "sh", "-c", script, NULL };
    char *ver = h_tmp_path("curl.ver"), buf[4096] = "";
    int status = -1;
    size_t n;
    FILE *f;

    assert_int_equal(h_run("/bin/sh", argv, NULL, 0), 0);
    f = fopen(ver, "r");
    assert_non_null(f);
    n = fread(proto, 1, 15, f);
    proto[n] = '\0';
    fclose(f);
    f = fopen(hdr, "r");
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    sscanf(buf, "HTTP/%*s %d", &status);
    *replayed = strcasestr(buf, "idempotent-replayed: true") != NULL;
    free(ca);
    free(hdr);
    free(url);
    free(keyh);
    free(script);
    free(ver);
    return status;
}

/* ALPN: a client offering h2 gets HTTP/2 over TLS, with the same rules
 * (the retry of a keyed POST is replayed, whichever protocol it comes
 * over); one offering http/1.1 gets HTTP/1.1 on the same port. */
static void test_alpn_h2_and_http11(void **state)
{
    struct h_proc *up = upstream_on("127.0.0.1:0"), *px;
    char proto[16];
    bool replayed;

    (void)state;
    certs();
    px = tls_proxy(up->http_port, "srv", NULL);
    assert_int_equal(
        curl_post(px->http_port, "--http2", "k-alpn", proto, &replayed), 200);
    assert_string_equal(proto, "2");
    assert_false(replayed);
    assert_int_equal(
        curl_post(px->http_port, "--http1.1", "k-alpn", proto, &replayed), 200);
    assert_string_equal(proto, "1.1");
    assert_true(replayed);
    assert_int_equal(
        curl_post(px->http_port, "--http2", "k-alpn", proto, &replayed), 200);
    assert_string_equal(proto, "2");
    assert_true(replayed);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* Plain HTTP to the TLS port: the connection closes, the proxy goes on. */
static void test_plaintext_client_closed(void **state)
{
    struct h_proc *up = upstream_on("127.0.0.1:0"), *px;
    struct h_resp r;
    bool replayed;

    (void)state;
    certs();
    px = tls_proxy(up->http_port, "srv", NULL);
    assert_int_equal(h_exchange_raw(px->http_port,
                                    "GET / HTTP/1.1\r\nHost: x\r\n\r\n", &r,
                                    NULL),
                     -1);
    assert_int_equal(tls_post(px->http_port, "k-after", &replayed), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void copy_file(const char *from, const char *to)
{
    char *script = h_format("cd %s && cp %s %s", h_tmpdir(), from, to);
    const char *argv[] = { "sh", "-c", script, NULL };

    assert_int_equal(h_run("/bin/sh", argv, NULL, 0), 0);
    free(script);
}

/* Wait up to 5 s for the listener to serve the certificate called cn. */
static void wait_cn(uint16_t port, const char *want)
{
    char cn[64] = "";

    for (int i = 0; i < 100; i++) {
        served_cn(port, cn);
        if (strcmp(cn, want) == 0)
            return;
        h_sleep_ms(50);
    }
    assert_string_equal(cn, want);
}

/* SIGHUP reads the certificate again; one that does not load leaves the
 * last good one serving, and says so. */
static void test_sighup_reloads_certificate(void **state)
{
    struct h_proc *up = upstream_on("127.0.0.1:0"), *px;
    char cn[64], err[8192];

    (void)state;
    certs();
    copy_file("srv.pem", "live.pem");
    copy_file("srv.key", "live.key");
    px = tls_proxy(up->http_port, "live", NULL);
    served_cn(px->http_port, cn);
    assert_string_equal(cn, "localhost");
    copy_file("srv2.pem", "live.pem");
    copy_file("srv2.key", "live.key");
    assert_int_equal(kill(px->pid, SIGHUP), 0);
    wait_cn(px->http_port, "reloaded");
    copy_file("ca.key", "live.key"); /* does not match the certificate */
    assert_int_equal(kill(px->pid, SIGHUP), 0);
    h_sleep_ms(300);
    served_cn(px->http_port, cn);
    assert_string_equal(cn, "reloaded");
    assert_true(
        h_stderr_await(px, err, sizeof(err), "the old one keeps serving", 1));
}

/* A WebSocket over the TLS listener (wss://): the tunnel under TLS, with
 * messages past the proxy's buffers. */
static void test_websocket_over_tls(void **state)
{
    const char *server[] = { "/usr/bin/python3", WS_ECHO_PATH, "server", NULL };
    struct h_proc *up, *px;
    char *ca, *url, err[4096] = "";

    (void)state;
    certs();
    up = h_start("/usr/bin/python3", server);
    px = tls_proxy(up->http_port, "srv", NULL);
    ca = h_tmp_path("ca.pem");
    url = h_format("wss://127.0.0.1:%u/chat", px->http_port);
    {
        const char *client[] = {
            "/usr/bin/python3", WS_ECHO_PATH, "echo", url, "10", ca, NULL
        };

        if (h_run("/usr/bin/python3", client, err, sizeof(err)) != 0)
            fail_msg("ws_echo.py over TLS: %s", err);
    }
    free(url);
    free(ca);
}

/* -- https to the upstream ------------------------------------------------ */

/* demo_upstream behind an idemproxy serving certificate name over TLS
 * (*up: demo_upstream), and an idemproxy in front of that one speaking
 * TLS to it with extra flags. */
static struct h_proc *https_chain(struct h_proc **up, const char *name,
                                  const char *const *extra)
{
    struct h_proc *back;
    const char *flags[ARGS_MAX] = { "--upstream-tls" };
    size_t n = 1;

    *up = upstream_on("127.0.0.1:0");
    back = tls_proxy((*up)->http_port, name, NULL);
    while (extra && *extra && n + 1 < ARGS_MAX)
        flags[n++] = *extra++;
    flags[n] = NULL;
    return proxy(back->http_port, flags);
}

static void test_https_upstream_verified(void **state)
{
    char *ca;
    struct h_proc *up, *px;
    struct h_resp r;

    (void)state;
    certs();
    ca = h_tmp_path("ca.pem");
    px = https_chain(&up, "srv", FLAGS("--upstream-ca", ca));
    post(px, "/orders?status=201", "k-up", "x", &r);
    assert_int_equal(r.status, 201);
    assert_replayed(&r, false);
    h_resp_free(&r);
    post(px, "/orders?status=201", "k-up", "x", &r);
    assert_int_equal(r.status, 201);
    assert_replayed(&r, true);
    h_resp_free(&r);
    for (int i = 0; i < 3; i++) { /* pooled TLS connections */
        struct h_req q = { .method = "GET", .target = "/g" };

        assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
    }
    assert_int_equal(h_upstream_count(up->http_port), 4);
    free(ca);
}

/* The name verified is --upstream-sni's, and the SNI sent. */
static void test_https_upstream_sni(void **state)
{
    char *ca;
    struct h_proc *up, *px;

    (void)state;
    certs();
    ca = h_tmp_path("ca.pem");
    px = https_chain(
        &up, "wrong",
        FLAGS("--upstream-ca", ca, "--upstream-sni", "wrong.example"));
    assert_int_equal(post_status(px, "/o", "k-sni", "x"), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
    free(ca);
}

/* A refused upstream certificate: 502, the key released (nothing was
 * sent: the detail says so, and the retry is refused the same way, not
 * held), the upstream never asked, the reason in the log. */
static void assert_refused(const char *cert, const char *ca_name,
                           const char *why)
{
    char *ca = h_tmp_path(ca_name), err[16384];
    struct h_proc *up, *px = https_chain(&up, cert, FLAGS("--upstream-ca", ca));
    struct h_resp r;

    for (int i = 0; i < 2; i++) {
        post(px, "/o", "k-refused", "x", &r);
        assert_problem(&r, 502);
        assert_non_null(strstr(r.body, "could not be reached"));
        h_resp_free(&r);
    }
    assert_int_equal(h_upstream_count(up->http_port), 0);
    if (!h_stderr_await(px, err, sizeof(err), why, 1))
        fail_msg("no \"%s\" in the log:\n%s", why, err);
    free(ca);
}

static void test_https_upstream_other_ca_refused(void **state)
{
    (void)state;
    certs();
    assert_refused("srv", "other.pem", "unable to get local issuer");
}

static void test_https_upstream_expired_refused(void **state)
{
    (void)state;
    certs();
    assert_refused("expired", "ca.pem", "certificate has expired");
}

static void test_https_upstream_name_mismatch_refused(void **state)
{
    (void)state;
    certs();
    assert_refused("wrong", "ca.pem", "IP address mismatch");
}

/* A client certificate to the upstream (mTLS): a WebSocket echo server
 * over TLS that requires one from the CA. With it, the tunnel works over
 * the upstream's TLS; without it, the handshake fails and the upgrade
 * gets 502. */
static void test_https_upstream_client_certificate(void **state)
{
    char *ca = NULL, *cert = NULL, *key = NULL, *url, err[4096] = "";
    struct h_proc *up, *with, *without;

    (void)state;
    certs();
    ca = h_tmp_path("ca.pem");
    cert = h_tmp_path("srv.pem");
    key = h_tmp_path("srv.key");
    {
        const char *server[] = {
            "/usr/bin/python3", WS_ECHO_PATH, "server", cert, key, ca, NULL
        };

        up = h_start("/usr/bin/python3", server);
    }
    with = proxy(up->http_port,
                 FLAGS("--upstream-tls", "--upstream-ca", ca, "--upstream-sni",
                       "localhost", "--upstream-cert", cert, "--upstream-key",
                       key));
    without = proxy(up->http_port, FLAGS("--upstream-tls", "--upstream-ca", ca,
                                         "--upstream-sni", "localhost"));
    url = h_format("ws://127.0.0.1:%u/chat", with->http_port);
    {
        const char *client[] = {
            "/usr/bin/python3", WS_ECHO_PATH, "echo", url, "5", NULL
        };

        if (h_run("/usr/bin/python3", client, err, sizeof(err)) != 0)
            fail_msg("ws_echo.py through mTLS: %s", err);
    }
    free(url);
    url = h_format("ws://127.0.0.1:%u/chat", without->http_port);
    {
        const char *client[] = {
            "/usr/bin/python3", WS_ECHO_PATH, "echo", url, "1", NULL
        };

        assert_int_not_equal(
            h_run("/usr/bin/python3", client, err, sizeof(err)), 0);
        assert_non_null(strstr(err, "502"));
    }
    free(url);
    free(ca);
    free(cert);
    free(key);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_tls_listener_replays),
        T(test_alpn_h2_and_http11),
        T(test_plaintext_client_closed),
        T(test_sighup_reloads_certificate),
        T(test_websocket_over_tls),
        T(test_https_upstream_verified),
        T(test_https_upstream_sni),
        T(test_https_upstream_other_ca_refused),
        T(test_https_upstream_expired_refused),
        T(test_https_upstream_name_mismatch_refused),
        T(test_https_upstream_client_certificate),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
