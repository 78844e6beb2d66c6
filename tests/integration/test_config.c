/* idemproxy's config file at work: the [route PREFIX] rules applied to
 * requests (methods, require-key, max-stored-body, the longest prefix
 * winning), and SIGHUP: a new file's routes applied without a restart, a
 * bad file refused with FILE:LINE while the old configuration serves. */
#include <signal.h>
#include <unistd.h>

#include "proxy_helpers.h"

/* Write text to the file path (replacing it). */
static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* idemproxy (one worker) before a fresh demo_upstream, reading the config
 * file at *path_out (written from text). */
static struct h_proc *proxy_with_file(struct h_proc **up, const char *text,
                                      char **path_out)
{
    char *path = h_tmp_path("idemproxy.conf");
    const char *argv[] = {
        IDEMPROXY_PATH,   "--config",    path,        "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--workers", "1",        NULL
    };
    char *full;

    *up = upstream_on("127.0.0.1:0");
    full = h_format("upstream = 127.0.0.1:%u # the demo\n%s", (*up)->http_port,
                    text);
    write_file(path, full);
    free(full);
    *path_out = path;
    return h_start(IDEMPROXY_PATH, argv);
}

/* A request with method and key to target; its response in *r. */
static void send_with(struct h_proc *px, const char *method, const char *target,
                      const char *key, struct h_resp *r)
{
    struct h_req q = {
        .method = method, .target = target, .key = key, .body = "x"
    };

    assert_int_equal(h_exchange(px->http_port, &q, r), 0);
}

/* Whether the second request with key replays the first. */
static bool replays(struct h_proc *px, const char *method, const char *target,
                    const char *key)
{
    struct h_resp r;
    bool replayed;

    send_with(px, method, target, key, &r);
    h_resp_free(&r);
    send_with(px, method, target, key, &r);
    replayed = h_header(&r, "Idempotent-Replayed") != NULL;
    h_resp_free(&r);
    return replayed;
}

static const char routes[] = "methods = POST\n"
                             "[route /strict]\n"
                             "require-key = true\n"
                             "methods = PUT ; only PUT here\n"
                             "[route /strict/small]\n"
                             "max-stored-body = 4\n";

static void test_route_rules(void **state)
{
    struct h_proc *up, *px;
    struct h_resp r;
    char *path;

    (void)state;
    px = proxy_with_file(&up, routes, &path);
    /* outside every route: the global rules */
    assert_true(replays(px, "POST", "/other", "k1"));
    assert_false(replays(px, "PUT", "/other", "k2"));
    /* /strict: PUT honours keys, POST does not; a key is required */
    assert_true(replays(px, "PUT", "/strict/a", "k3"));
    assert_false(replays(px, "POST", "/strict/a", "k4"));
    send_with(px, "PUT", "/strict/a", NULL, &r);
    assert_problem(&r, 400);
    h_resp_free(&r);
    /* /strict/small: the longest prefix; its own rules only (no key
     * required, the global methods), bodies over 4 bytes not stored */
    send_with(px, "PUT", "/strict/small", NULL, &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    send_with(px, "POST", "/strict/small/1", "k5", &r);
    h_resp_free(&r);
    send_with(px, "POST", "/strict/small/1", "k5", &r);
    assert_replayed(&r, true);
    assert_string_equal(h_header(&r, "Idempotent-Body-Omitted"), "true");
    h_resp_free(&r);
    free(path);
}

/* Rewrite the config file at path (the upstream up, then sections) and
 * have px reload it (teardown stops px). */
static void reload_with(struct h_proc *px, const struct h_proc *up,
                        const char *path, const char *sections)
{
    char *text =
        h_format("upstream = 127.0.0.1:%u\n%s", up->http_port, sections);

    write_file(path, text);
    free(text);
    assert_int_equal(kill(px->pid, SIGHUP), 0);
}

/* POST target (no key) every 100 ms, up to 5 s, until it answers status:
 * the reload has been taken. The last answer in *r. */
static void await_status(struct h_proc *px, const char *target, int status,
                         struct h_resp *r)
{
    for (int i = 0; i < 50; i++) {
        send_with(px, "POST", target, NULL, r);
        if (r->status == status)
            return;
        h_resp_free(r);
        h_sleep_ms(100);
    }
    send_with(px, "POST", target, NULL, r);
}

static const char reloaded[] = "reloaded the configuration";
static const char rescoped[] = "reload: the route prefixes changed";
static const char unkeyed[] = "reload: a key header is no longer honoured";
static const char unmethoded[] = "reload: a method no longer honours keys";

static void test_sighup_reload(void **state)
{
    struct h_proc *up, *px;
    struct h_resp r;
    char err[8192] = "", *path, *want;

    (void)state;
    px = proxy_with_file(&up, routes, &path);
    send_with(px, "PUT", "/new/a", NULL, &r);
    assert_int_equal(r.status, 200); /* no route yet */
    h_resp_free(&r);

    /* a new route, applied without a restart */
    reload_with(px, up, path, "[route /new]\nrequire-key = true\n");
    await_status(px, "/new/a", 400, &r);
    assert_problem(&r, 400);
    h_resp_free(&r);
    /* /strict is gone with the old file; keys under it are out of reach
     * of their retries now, and the log says so */
    send_with(px, "PUT", "/strict/a", NULL, &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_stderr(px, err, sizeof(err));
    assert_int_equal(h_count(err, rescoped), 1);

    /* a bad file: refused with FILE:LINE, the last good one serves */
    write_file(path, "[route /new]\nrequire-key = perhaps\n");
    assert_int_equal(kill(px->pid, SIGHUP), 0);
    want = h_format("%s:2: require-key: ", path); /* quotes escaped */
    h_stderr_await(px, err, sizeof(err), want, 1);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "the running configuration is kept"));
    send_with(px, "POST", "/new/a", NULL, &r);
    assert_problem(&r, 400);
    h_resp_free(&r);

    /* the same prefixes with another rule: applied, no word of scopes */
    reload_with(px, up, path, "[route /new]\nrequire-key = false\n");
    await_status(px, "/new/a", 200, &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_stderr(px, err, sizeof(err));
    assert_int_equal(h_count(err, reloaded), 2);
    assert_int_equal(h_count(err, rescoped), 1);
    assert_int_equal(h_count(err, unkeyed), 0);
    assert_int_equal(h_count(err, unmethoded), 0);

    /* another key header and PUT alone: each said once */
    reload_with(px, up, path,
                "key-header = X-Key\nmethods = PUT\n"
                "[route /new]\nrequire-key = false\n");
    h_stderr_await(px, err, sizeof(err), reloaded, 3);
    assert_int_equal(h_count(err, reloaded), 3);
    assert_int_equal(h_count(err, unkeyed), 1);
    assert_int_equal(h_count(err, unmethoded), 1);
    assert_int_equal(h_count(err, rescoped), 1);
    free(want);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_route_rules, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_sighup_reload, h_setup,
                                        h_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
