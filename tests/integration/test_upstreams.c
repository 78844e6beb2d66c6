/* Upstreams that move: round robin over repeated --upstream, a dead
 * address skipped (the request goes to the next one), an upstream that
 * starts after idemproxy, and a name whose address
 * changes while idemproxy runs (idemproxy in a private mount namespace,
 * `unshare -m`, with its own /etc/hosts bind-mounted from a file the test
 * rewrites). Each request opens a new upstream connection
 * (--upstream-idle 0), so each one picks an address. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy_helpers.h"

/* idemproxy (one worker, no idle pool) with extra flags, under the
 * command words pre (NULL: none). */
static struct h_proc *start_proxy(const char *const *pre,
                                  const char *const *extra)
{
    return proxy_start(pre, FLAGS("--workers", "1", "--upstream-idle", "0"),
                       extra);
}

/* POST / with no key (forwarded as it is): the status. */
static int post_any(struct h_proc *px)
{
    return post_status(px, "/", NULL, "x");
}

static void test_round_robin(void **state)
{
    struct h_proc *a = upstream_on("127.0.0.1:0"),
                  *b = upstream_on("127.0.0.1:0");
    char *ua = h_format("127.0.0.1:%u", a->http_port);
    char *ub = h_format("http://127.0.0.1:%u", b->http_port);
    struct h_proc *px =
        start_proxy(NULL, FLAGS("--upstream", ua, "--upstream", ub));

    (void)state;
    for (int i = 0; i < 6; i++)
        assert_int_equal(post_any(px), 200);
    assert_int_equal(h_upstream_count(a->http_port), 3);
    assert_int_equal(h_upstream_count(b->http_port), 3);
    free(ua);
    free(ub);
}

static void test_dead_address_is_skipped(void **state)
{
    struct h_proc *a = upstream_on("127.0.0.1:0");
    char *dead = h_format("127.0.0.1:%u", h_free_port());
    char *ua = h_format("127.0.0.1:%u", a->http_port);
    struct h_proc *px =
        start_proxy(NULL, FLAGS("--upstream", dead, "--upstream", ua));

    (void)state;
    /* the dead one is tried once, fails to connect, and the request goes
     * on to the live one; then it is skipped */
    for (int i = 0; i < 5; i++)
        assert_int_equal(post_status(px, "/", i == 0 ? "k0" : NULL, "x"), 200);
    assert_int_equal(h_upstream_count(a->http_port), 5);
    assert_int_equal(h_metric(px->admin_port, "idem_upstream_connects_total"),
                     5);
    free(dead);
    free(ua);
}

static void test_upstream_starts_later(void **state)
{
    uint16_t port = h_free_port();
    char *where = h_format("127.0.0.1:%u", port);
    struct h_proc *px = start_proxy(NULL, FLAGS("--upstream", where)), *a;

    (void)state;
    assert_int_equal(post_status(px, "/", "k1", "x"), 502);
    a = upstream_on(where);
    /* the only address, marked down, is still tried: nothing else is */
    assert_int_equal(post_status(px, "/", "k1", "x"), 200);
    assert_int_equal(h_upstream_count(a->http_port), 1);
    free(where);
}

/* GET /count from demo_upstream on ip:port (h_upstream_count knows
 * 127.0.0.1 only): its executions, or -1. */
static long count_at(const char *ip, uint16_t port)
{
    static const char req[] = "GET /count HTTP/1.1\r\nHost: x\r\n"
                              "Connection: close\r\n\r\n";
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
    char buf[1024];
    size_t got = 0;
    ssize_t n;
    const char *at;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    inet_pton(AF_INET, ip, &sin.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        write(fd, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    while (got < sizeof(buf) - 1 &&
           (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
        got += (size_t)n;
    close(fd);
    buf[got] = '\0';
    at = strstr(buf, "\"executions\":");
    return at ? strtol(at + 13, NULL, 10) : -1;
}

static void write_hosts(const char *path, const char *ip)
{
    FILE *f = fopen(path, "r+"); /* the same inode: it is bind-mounted */

    assert_non_null(f);
    assert_true(ftruncate(fileno(f), 0) == 0);
    fprintf(f, "127.0.0.1 localhost\n%s movingup\n", ip);
    assert_int_equal(fclose(f), 0);
}

static void test_name_moves(void **state)
{
    uint16_t port = h_free_port();
    char *hosts = h_tmp_path("hosts");
    char *l2 = h_format("127.0.0.2:%u", port),
         *l3 = h_format("127.0.0.3:%u", port);
    char *up = h_format("movingup:%u", port);
    char *script =
        h_format("mount --bind %s /etc/hosts && exec \"$0\" \"$@\"", hosts);
    const char *pre[] = {
        "/usr/bin/unshare", "-m", "/bin/sh", "-c", script, NULL
    };
    struct h_proc *px;
    FILE *f = fopen(hosts, "w");

    (void)state;
    if (geteuid() != 0 || access("/usr/bin/unshare", X_OK) != 0)
        skip();
    assert_non_null(f);
    fclose(f);
    write_hosts(hosts, "127.0.0.2");
    upstream_on(l2);
    upstream_on(l3);
    px = start_proxy(pre,
                     FLAGS("--upstream", up, "--resolve-interval", "200ms"));
    assert_int_equal(post_any(px), 200);
    assert_int_equal(count_at("127.0.0.2", port), 1);
    assert_int_equal(count_at("127.0.0.3", port), 0);
    write_hosts(hosts, "127.0.0.3");
    for (int i = 0; i < 50 && count_at("127.0.0.3", port) == 0; i++) {
        h_sleep_ms(100);
        assert_int_equal(post_any(px), 200);
    }
    assert_true(count_at("127.0.0.3", port) >= 1);
    /* the old address is gone: what follows goes to the new one */
    long before = count_at("127.0.0.2", port);
    for (int i = 0; i < 3; i++)
        assert_int_equal(post_any(px), 200);
    assert_int_equal(count_at("127.0.0.2", port), before);
    free(hosts);
    free(l2);
    free(l3);
    free(up);
    free(script);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_robin, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_dead_address_is_skipped, h_setup,
                                        h_teardown),
        cmocka_unit_test_setup_teardown(test_upstream_starts_later, h_setup,
                                        h_teardown),
        cmocka_unit_test_setup_teardown(test_name_moves, h_setup, h_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
