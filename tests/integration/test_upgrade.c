/* Upgrade pass-through end to end: a WebSocket echo server and client
 * (tests/integration/ws_echo.py, Debian's python3-websockets) talk
 * through idemproxy; the tunnel's idle bound closes a silent one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "proxy_helpers.h"

#define PYTHON "/usr/bin/python3" /* the one python3-websockets is for */

static struct h_proc *ws_server(void)
{
    const char *argv[] = { PYTHON, WS_ECHO_PATH, "server", NULL };

    return h_start(PYTHON, argv);
}

/* Run ws_echo.py with args (NULL-terminated, at most 6); its exit status,
 * its stderr shown when it fails. */
static int ws_client(const char *const *args)
{
    const char *argv[10] = { PYTHON, WS_ECHO_PATH };
    char err[4096] = "";
    size_t n = 2;
    int status;

    while (*args && n < 9)
        argv[n++] = *args++;
    argv[n] = NULL;
    status = h_run(PYTHON, argv, err, sizeof(err));
    if (status != 0)
        fprintf(stderr, "ws_echo.py: exit %d: %s\n", status, err);
    return status;
}

static void test_websocket_echo(void **state)
{
    struct h_proc *up = ws_server();
    struct h_proc *px = proxy(up->http_port, NULL);
    char *url = h_format("ws://127.0.0.1:%u/chat", px->http_port);
    char log[16384];

    (void)state;
    assert_int_equal(ws_client(FLAGS("echo", url, "12")), 0);
    assert_int_equal(ws_client(FLAGS("echo", url, "3")), 0);
    /* one decision line per tunnel */
    assert_true(h_stderr_await(px, log, sizeof(log), "status=101", 2));
    free(url);
}

static void test_websocket_idle_bound(void **state)
{
    struct h_proc *up = ws_server();
    struct h_proc *px = proxy(up->http_port, FLAGS("--tunnel-idle", "1s"));
    char *url = h_format("ws://127.0.0.1:%u/chat", px->http_port);

    (void)state;
    assert_int_equal(ws_client(FLAGS("idle", url, "0.8", "3")), 0);
    free(url);
}

static void test_websocket_total_bound(void **state)
{
    struct h_proc *up = ws_server();
    struct h_proc *px = proxy(
        up->http_port, FLAGS("--tunnel-idle", "10s", "--tunnel-max", "1500ms"));
    char *url = h_format("ws://127.0.0.1:%u/chat", px->http_port);

    (void)state;
    assert_int_equal(ws_client(FLAGS("idle", url, "1", "3")), 0);
    free(url);
}

/* A plain request to the echo server (no Upgrade) is answered by it and
 * relayed; an Upgrade it declines likewise, and the connection closes. */
static void test_upgrade_declined_is_relayed(void **state)
{
    struct h_proc *up = ws_server();
    struct h_proc *px = proxy(up->http_port, NULL);
    struct h_resp r;
    bool closed;

    (void)state;
    assert_int_equal(
        h_exchange_raw(px->http_port,
                       "GET /chat HTTP/1.1\r\nHost: a\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                       &r, &closed),
        0);
    assert_int_equal(r.status / 100, 4); /* no Sec-WebSocket-Key */
    assert_true(closed);
    h_resp_free(&r);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_websocket_echo),
        T(test_websocket_idle_bound),
        T(test_websocket_total_bound),
        T(test_upgrade_declined_is_relayed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
