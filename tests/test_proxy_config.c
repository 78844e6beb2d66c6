/* idemproxy's configuration: every option from a flag and from a file,
 * the defaults, every refusal and its message, --help against the docs,
 * and the duration, size and address parsers at their edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "idem/idem.h"

#define ARGV(...) ((char *[]){ __VA_ARGS__, NULL })

static const char *docs_path;
static char *out_text, *err_text;

/* config_parse on a NULL-terminated argv, with out and err captured in
 * out_text and err_text. */
static int parse(struct config *c, char **argv)
{
    size_t out_len, err_len;
    FILE *out, *err;
    int argc = 0, rc;

    free(out_text);
    free(err_text);
    out = open_memstream(&out_text, &out_len);
    err = open_memstream(&err_text, &err_len);
    assert_non_null(out);
    assert_non_null(err);
    while (argv[argc])
        argc++;
    rc = config_parse(c, argc, argv, out, err);
    fclose(out);
    fclose(err);
    return rc;
}

/* A temporary file holding text; the caller unlinks it. */
static char *temp_file(const char *text)
{
    static char path[64];
    int fd;

    snprintf(path, sizeof(path), "/tmp/idem_config_XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void expect_error(char **argv, const char *message)
{
    struct config c;

    assert_int_equal(parse(&c, argv), 2);
    assert_string_equal(err_text, message);
    assert_string_equal(out_text, "");
    config_free(&c); /* harmless after a failed parse */
}

static int teardown(void **state)
{
    (void)state;
    free(out_text);
    free(err_text);
    out_text = err_text = NULL;
    return 0;
}

/* -- Defaults and every option ---------------------------------------- */

static void test_defaults(void **state)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    struct config c;

    (void)state;
    assert_int_equal(parse(&c, ARGV("--upstream", "127.0.0.1:3000")), 0);
    assert_string_equal(err_text, "");
    assert_string_equal(c.listen.host, "127.0.0.1");
    assert_int_equal(c.listen.port, 8080);
    assert_string_equal(c.upstreams[0].addr.host, "127.0.0.1");
    assert_int_equal(c.upstreams[0].addr.port, 3000);
    assert_true(c.admin_enabled);
    assert_string_equal(c.admin.host, "127.0.0.1");
    assert_int_equal(c.admin.port, 9090);
    assert_int_equal(c.workers, cores < 1 ? 1 : cores > 256 ? 256 : cores);
    assert_string_equal(c.store, "memory");
    assert_int_equal(c.lifetime_ms, 24 * 3600 * 1000);
    assert_int_equal(c.lease_ms, 60000);
    assert_int_equal(c.max_memory, 64 << 20);
    assert_int_equal(c.max_body, 1 << 20);
    assert_int_equal(c.max_stored_body, 1 << 20);
    assert_int_equal(c.max_header_bytes, 16 << 10);
    assert_int_equal(c.max_headers, 100);
    assert_int_equal(c.conflict, IDEM_CONFLICT_REJECT);
    assert_int_equal(c.wait_ms, 10000);
    assert_int_equal(c.nmethods, 2);
    assert_string_equal(c.methods[0], "POST");
    assert_string_equal(c.methods[1], "PATCH");
    assert_string_equal(c.key_header, "Idempotency-Key");
    assert_null(c.alt_key_header);
    assert_int_equal(c.nscope_headers, 1);
    assert_string_equal(c.scope_headers[0], "Authorization");
    assert_int_equal(c.nrequire_key, 0);
    assert_null(c.snapshot);
    assert_int_equal(c.client_timeout_ms, 60000);
    assert_int_equal(c.upstream_timeout_ms, 60000);
    assert_int_equal(c.connect_timeout_ms, 5000);
    assert_int_equal(c.shutdown_timeout_ms, 30000);
    assert_int_equal(c.upstream_idle, 64);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.log_format, LOG_TEXT);
    assert_null(c.log_file);
    assert_false(c.log_keys);
    config_free(&c);
}

/* Every option, set away from its default: as flags, and as file lines. */
static const char *const every_option[][2] = {
    { "listen", "0.0.0.0:80" },
    { "upstream", "[::1]:3000" },
    { "resolve-interval", "2s" },
    { "trusted-proxies", "10.0.0.0/8,::1" },
    { "admin-listen", "off" },
    { "workers", "3" },
    { "store", "memory" },
    { "lifetime", "2h" },
    { "lease", "90s" },
    { "max-memory", "1G" },
    { "max-body", "512K" },
    { "max-stored-body", "2048" },
    { "max-header-bytes", "8K" },
    { "max-headers", "50" },
    { "conflict", "wait:5s" },
    { "methods", "POST, PUT ,PATCH" },
    { "key-header", "X-Key" },
    { "alt-key-header", "X-Idempotency-Key" },
    { "scope-headers", "Authorization,X-Tenant" },
    { "require-key", "/payments" },
    { "require-key", "/orders" },
    { "snapshot", "/var/lib/idem/snap" },
    { "client-timeout", "10s" },
    { "upstream-timeout", "2m" },
    { "connect-timeout", "250ms" },
    { "shutdown-timeout", "0" },
    { "upstream-idle", "0" },
    { "log-level", "debug" },
    { "log-format", "json" },
    { "log-file", "/var/log/idem.log" },
    { "log-keys", NULL },
};

#define NEVERY (sizeof(every_option) / sizeof(every_option[0]))

static void check_every_option(const struct config *c)
{
    assert_string_equal(c->listen.host, "0.0.0.0");
    assert_int_equal(c->listen.port, 80);
    assert_string_equal(c->upstreams[0].addr.host, "::1");
    assert_int_equal(c->upstreams[0].addr.port, 3000);
    assert_int_equal(c->nupstreams, 1);
    assert_int_equal(c->resolve_interval_ms, 2000);
    assert_int_equal(c->ntrusted, 2);
    assert_int_equal(c->trusted[0].bits, 96 + 8);
    assert_int_equal(c->trusted[1].bits, 128);
    assert_false(c->admin_enabled);
    assert_int_equal(c->workers, 3);
    assert_string_equal(c->store, "memory");
    assert_int_equal(c->lifetime_ms, 2 * 3600 * 1000);
    assert_int_equal(c->lease_ms, 90000);
    assert_int_equal(c->max_memory, 1 << 30);
    assert_int_equal(c->max_body, 512 << 10);
    assert_int_equal(c->max_stored_body, 2048);
    assert_int_equal(c->max_header_bytes, 8 << 10);
    assert_int_equal(c->max_headers, 50);
    assert_int_equal(c->conflict, IDEM_CONFLICT_WAIT);
    assert_int_equal(c->wait_ms, 5000);
    assert_int_equal(c->nmethods, 3);
    assert_string_equal(c->methods[0], "POST");
    assert_string_equal(c->methods[1], "PUT");
    assert_string_equal(c->methods[2], "PATCH");
    assert_string_equal(c->key_header, "X-Key");
    assert_string_equal(c->alt_key_header, "X-Idempotency-Key");
    assert_int_equal(c->nscope_headers, 2);
    assert_string_equal(c->scope_headers[1], "X-Tenant");
    assert_int_equal(c->nrequire_key, 2);
    assert_string_equal(c->require_key[0], "/payments");
    assert_string_equal(c->require_key[1], "/orders");
    assert_string_equal(c->snapshot, "/var/lib/idem/snap");
    assert_int_equal(c->client_timeout_ms, 10000);
    assert_int_equal(c->upstream_timeout_ms, 120000);
    assert_int_equal(c->connect_timeout_ms, 250);
    assert_int_equal(c->shutdown_timeout_ms, 0);
    assert_int_equal(c->upstream_idle, 0);
    assert_int_equal(c->log_level, LOG_DEBUG);
    assert_int_equal(c->log_format, LOG_JSON);
    assert_string_equal(c->log_file, "/var/log/idem.log");
    assert_true(c->log_keys);
}

static void test_every_flag(void **state)
{
    char *argv[2 * NEVERY + 1], flags[NEVERY][64];
    struct config c;
    size_t i, n = 0;

    (void)state;
    for (i = 0; i < NEVERY; i++) {
        const char *v = every_option[i][1];

        /* Alternate "--name value" and "--name=value". */
        if (v && i % 2 == 0) {
            snprintf(flags[i], sizeof(flags[i]), "--%s", every_option[i][0]);
            argv[n++] = flags[i];
            argv[n++] = (char *)v;
        } else {
            snprintf(flags[i], sizeof(flags[i]), "--%s%s%s", every_option[i][0],
                     v ? "=" : "", v ? v : "");
            argv[n++] = flags[i];
        }
    }
    argv[n] = NULL;
    assert_int_equal(parse(&c, argv), 0);
    assert_string_equal(err_text, "");
    check_every_option(&c);
    config_free(&c);
    assert_null(c.methods);
    assert_null(c.store);
}

static void test_every_key_in_a_file(void **state)
{
    char text[4096] = "# idemproxy\n\n   \t\n";
    struct config c;
    size_t i, n = strlen(text);
    char *path;

    (void)state;
    for (i = 0; i < NEVERY; i++) {
        const char *v = every_option[i][1];

        /* Some lines indented, some with CRLF or trailing blanks. */
        n += (size_t)snprintf(text + n, sizeof(text) - n, "%s%s %s%s",
                              i % 3 == 0 ? "  " : "", every_option[i][0],
                              v ? v : "", i % 2 ? " \t\r\n" : "\n");
    }
    path = temp_file(text);
    assert_int_equal(parse(&c, ARGV("--config", path)), 0);
    assert_string_equal(err_text, "");
    check_every_option(&c);
    config_free(&c);
    unlink(path);
}

static void test_flags_after_a_file_override_it(void **state)
{
    char *path = temp_file("lifetime 1h\nupstream example.com:80\n"
                           "require-key /a\nmethods POST\n");
    struct config c;

    (void)state;
    assert_int_equal(
        parse(&c,
              ARGV("--lifetime", "5m", "--methods=PUT", "--config", path,
                   "--lease=5s", "--require-key", "/b", "--methods", "PATCH")),
        0);
    assert_int_equal(c.lifetime_ms, 3600 * 1000); /* the file won */
    assert_int_equal(c.lease_ms, 5000);           /* the flag after it */
    assert_string_equal(c.upstreams[0].addr.host, "example.com");
    assert_int_equal(c.nmethods, 1);
    assert_string_equal(c.methods[0], "PATCH");
    assert_int_equal(c.nrequire_key, 2); /* repeatable: both kept */
    assert_string_equal(c.require_key[0], "/a");
    assert_string_equal(c.require_key[1], "/b");
    config_free(&c);
    unlink(path);
}

static void test_values_in_a_file(void **state)
{
    char *path = temp_file("upstream localhost:1\nscope-headers \"\"\n"
                           "log-keys true\nlog-keys false\n"
                           "key-header \"X-Key\"\nconflict wait\n");
    struct config c;

    (void)state;
    assert_int_equal(parse(&c, ARGV("--config", path)), 0);
    assert_int_equal(c.nscope_headers, 0); /* "" is none */
    assert_non_null(c.scope_headers);
    assert_false(c.log_keys);
    assert_string_equal(c.key_header, "X-Key");
    assert_int_equal(c.conflict, IDEM_CONFLICT_WAIT);
    assert_int_equal(c.wait_ms, 10000);
    config_free(&c);
    unlink(path);
}

static void test_lists_and_flags(void **state)
{
    struct config c;

    (void)state;
    assert_int_equal(
        parse(&c, ARGV("--upstream=h:1", "--scope-headers", "", "--methods",
                       "POST", "--methods", "PUT,DELETE", "--log-keys=true",
                       "--log-keys=false", "--conflict", "wait:1s",
                       "--conflict", "reject", "--admin-listen", "off",
                       "--admin-listen", "[::]:9")),
        0);
    assert_int_equal(c.nscope_headers, 0);
    assert_non_null(c.scope_headers);
    assert_int_equal(c.nmethods, 2); /* the last list replaces */
    assert_string_equal(c.methods[1], "DELETE");
    assert_false(c.log_keys);
    assert_int_equal(c.conflict, IDEM_CONFLICT_REJECT);
    assert_true(c.admin_enabled);
    assert_string_equal(c.admin.host, "::");
    assert_int_equal(c.workers > 0, 1);
    config_free(&c);
}

/* -- Refusals --------------------------------------------------------- */

/* Each refusal: exit status 2 and exactly this line on err. */
static const struct {
    const char *argv[5];
    const char *message;
} refusals[] = {
    { { "--listen", "a:1" }, "idemproxy: --upstream is required\n" },
    { { "--upstream", "h:1", "--lifetime", "5x" },
      "idemproxy: --lifetime: \"5x\" is not a duration (e.g. 30s, 5m, 24h)\n" },
    { { "--foo" }, "idemproxy: unknown option --foo (see --help)\n" },
    { { "--foo=1" }, "idemproxy: unknown option --foo (see --help)\n" },
    { { "-x" }, "idemproxy: unknown option -x (see --help)\n" },
    { { "--" }, "idemproxy: unknown option -- (see --help)\n" },
    { { "serve" }, "idemproxy: unexpected argument \"serve\" (see --help)\n" },
    { { "--upstream" }, "idemproxy: --upstream needs a value\n" },
    { { "--version=2" }, "idemproxy: --version takes no value\n" },
    { { "--help=x" }, "idemproxy: --help takes no value\n" },
    { { "--upstream", "localhost" },
      "idemproxy: --upstream: \"localhost\" is not an upstream (host:port, "
      "http://host:port, https://host:port or unix:/path)\n" },
    { { "--upstream", "ftp://h:1" },
      "idemproxy: --upstream: \"ftp://h:1\" is not an upstream (host:port, "
      "http://host:port, https://host:port or unix:/path)\n" },
    { { "--upstream", "http://h:1/x" },
      "idemproxy: --upstream: \"http://h:1/x\" is not an upstream "
      "(host:port, http://host:port, https://host:port or unix:/path)\n" },
    { { "--upstream", "unix:rel" },
      "idemproxy: --upstream: \"unix:rel\" is not an upstream (host:port, "
      "http://host:port, https://host:port or unix:/path)\n" },
    { { "--upstream", "http://a:1", "--upstream", "https://b:2" },
      "idemproxy: --upstream: http and https upstreams cannot be mixed\n" },
    { { "--upstream", "h:1", "--trusted-proxies", "10.0.0.0/33" },
      "idemproxy: --trusted-proxies: \"10.0.0.0/33\" is not a "
      "comma-separated list of networks (e.g. 10.0.0.0/8,::1/128)\n" },
    { { "--upstream", "h:1", "--trusted-proxies", "10.0.0.1,foo" },
      "idemproxy: --trusted-proxies: \"10.0.0.1,foo\" is not a "
      "comma-separated list of networks (e.g. 10.0.0.0/8,::1/128)\n" },
    { { "--listen=", "--upstream", "h:1" },
      "idemproxy: --listen: \"\" is not an address (host:port, [v6]:port)\n" },
    { { "--admin-listen", "of" },
      "idemproxy: --admin-listen: \"of\" is not an address (host:port, "
      "[v6]:port) or off\n" },
    { { "--workers", "0" }, "idemproxy: --workers: \"0\" is not in 1..256\n" },
    { { "--workers", "257" },
      "idemproxy: --workers: \"257\" is not in 1..256\n" },
    { { "--workers", "-1" },
      "idemproxy: --workers: \"-1\" is not a number or auto\n" },
    { { "--max-headers", "99999999999" },
      "idemproxy: --max-headers: \"99999999999\" is too large\n" },
    { { "--max-headers", "1x" },
      "idemproxy: --max-headers: \"1x\" is not a number\n" },
    { { "--lease", "106751991168d" },
      "idemproxy: --lease: \"106751991168d\" is too large\n" },
    { { "--upstream-idle", "100001" },
      "idemproxy: --upstream-idle: \"100001\" is not in 0..100000\n" },
    { { "--store", "redis://localhost:0" },
      "idemproxy: --store: \"redis://localhost:0\" is not memory, "
      "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix:///PATH[?db=N]\n" },
    { { "--redis-prefix", "a{b" },
      "idemproxy: --redis-prefix: \"a{b\" must be 1-256 printable "
      "characters without spaces or braces\n" },
    { { "--store-failure", "half" },
      "idemproxy: --store-failure: \"half\" is not one of closed, open\n" },
    { { "--lifetime", "0" },
      "idemproxy: --lifetime: \"0\" must be more than zero\n" },
    { { "--max-memory", "0K" },
      "idemproxy: --max-memory: \"0K\" must be more than zero\n" },
    { { "--max-body", "1T" },
      "idemproxy: --max-body: \"1T\" is not a size (e.g. 512K, 64M, 1G)\n" },
    { { "--conflict", "wait:0s" },
      "idemproxy: --conflict: \"wait:0s\" is not reject, wait or wait:DURATION "
      "(e.g. wait:5s)\n" },
    { { "--conflict", "wait:5x" },
      "idemproxy: --conflict: \"wait:5x\" is not reject, wait or wait:DURATION "
      "(e.g. wait:5s)\n" },
    { { "--methods", "" },
      "idemproxy: --methods: \"\" is not a comma-separated list of HTTP tokens "
      "(e.g. POST,PATCH)\n" },
    { { "--methods", "POST," },
      "idemproxy: --methods: \"POST,\" is not a comma-separated list of HTTP "
      "tokens (e.g. POST,PATCH)\n" },
    { { "--scope-headers", "A,,B" },
      "idemproxy: --scope-headers: \"A,,B\" is not a comma-separated list of "
      "HTTP tokens (e.g. POST,PATCH)\n" },
    { { "--methods", "PO ST" },
      "idemproxy: --methods: \"PO ST\" is not a comma-separated list of HTTP "
      "tokens (e.g. POST,PATCH)\n" },
    { { "--key-header", "Bad:Name" },
      "idemproxy: --key-header: \"Bad:Name\" is not a header name\n" },
    { { "--alt-key-header", "" },
      "idemproxy: --alt-key-header: \"\" is not a header name\n" },
    { { "--require-key", "payments" },
      "idemproxy: --require-key: \"payments\" is not a path prefix (e.g. "
      "/payments)\n" },
    { { "--snapshot", "" },
      "idemproxy: --snapshot: \"\" is not a file name\n" },
    { { "--log-level", "loud" },
      "idemproxy: --log-level: \"loud\" is not one of error, warn, info, "
      "debug\n" },
    { { "--log-format", "xml" },
      "idemproxy: --log-format: \"xml\" is not one of text, json\n" },
    { { "--log-keys=yes" },
      "idemproxy: --log-keys: \"yes\" is not true or false\n" },
};

static void test_refusals(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
        expect_error((char **)refusals[i].argv, refusals[i].message);
}

/* A value is quoted on one line: escaped, and cut if long. */
static void test_bad_values_stay_on_one_line(void **state)
{
    char long_value[200];

    (void)state;
    expect_error(ARGV("--lifetime", "1\n\"s\\\x80"),
                 "idemproxy: --lifetime: \"1\\x0a\\\"s\\\\\\x80\" is not a "
                 "duration (e.g. 30s, 5m, 24h)\n");
    memset(long_value, 'x', sizeof(long_value) - 1);
    long_value[sizeof(long_value) - 1] = '\0';
    expect_error(ARGV("--lease", long_value),
                 "idemproxy: --lease: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                 "xxxxxxxxxxxxxxxxxxxxxxxxxxxx...\" is not a duration (e.g. "
                 "30s, 5m, 24h)\n");
    expect_error(ARGV("--fo\no"),
                 "idemproxy: unknown option --fo\\x0ao (see --help)\n");
}

static void test_file_errors(void **state)
{
    char *path = temp_file("# comment\nupstream h:1\n\nlifetim 1h\n");
    char want[256];

    (void)state;
    snprintf(want, sizeof(want), "idemproxy: %s:4: unknown key \"lifetim\"\n",
             path);
    expect_error(ARGV("--config", path), want);
    unlink(path);

    path = temp_file("upstream h:1\nlifetime 5x\n");
    snprintf(want, sizeof(want),
             "idemproxy: %s:2: lifetime: \"5x\" is not a duration (e.g. 30s, "
             "5m, 24h)\n",
             path);
    expect_error(ARGV("--config", path), want);
    unlink(path);

    path = temp_file("lease\n");
    snprintf(want, sizeof(want), "idemproxy: %s:1: lease needs a value\n",
             path);
    expect_error(ARGV("--config", path), want);
    unlink(path);

    path = temp_file("config /etc/other.conf\n");
    snprintf(want, sizeof(want),
             "idemproxy: %s:1: config is not a config file key\n", path);
    expect_error(ARGV("--config", path), want);
    unlink(path);

    path = temp_file("--lifetime 1h\n");
    snprintf(want, sizeof(want),
             "idemproxy: %s:1: unknown key \"--lifetime\"\n", path);
    expect_error(ARGV("--config", path), want);
    unlink(path);

    expect_error(ARGV("--config", "/nonexistent/idem.conf"),
                 "idemproxy: --config: cannot open "
                 "\"/nonexistent/idem.conf\": No such file or directory\n");
    expect_error(ARGV("--config", "/"), "idemproxy: /:1: read error: Is a "
                                        "directory\n");
}

/* No input crashes or leaks (ASan): each option gets garbage. */
static void test_garbage_never_crashes(void **state)
{
    static const char *const junk[] = {
        "",      " ",   ",",    "\"", "[",     "[]:1",
        "[::1]", ":",   "0",    "-0", "1e3",   "\x01\xff",
        "wait:", "off", "auto", "/",  "a,b,,", "999999999999999999999",
    };
    char flag[64];
    struct config c;
    size_t i, j;

    (void)state;
    for (i = 0; i < NEVERY; i++) {
        snprintf(flag, sizeof(flag), "--%s", every_option[i][0]);
        for (j = 0; j < sizeof(junk) / sizeof(junk[0]); j++) {
            int rc = parse(&c, ARGV("--upstream=h:1", flag, (char *)junk[j]));

            if (rc == 2) {
                assert_int_equal(strncmp(err_text, "idemproxy: ", 11), 0);
                assert_ptr_equal(strchr(err_text, '\n'),
                                 err_text + strlen(err_text) - 1);
            } else {
                assert_int_equal(rc, 0);
            }
            config_free(&c);
        }
    }
}

/* -- --help and --version --------------------------------------------- */

static void test_help_and_version(void **state)
{
    struct config c;
    size_t i;
    char want[64];

    (void)state;
    assert_int_equal(parse(&c, ARGV("--version")), 1);
    assert_string_equal(out_text, "idemproxy " IDEM_VERSION_STRING "\n");
    assert_string_equal(err_text, "");
    config_free(&c);

    assert_int_equal(parse(&c, ARGV("--lease", "1s", "--help", "--foo")), 1);
    assert_string_equal(err_text, "");
    assert_int_equal(strncmp(out_text, "usage: idemproxy", 16), 0);
    for (i = 0; i < NEVERY; i++) {
        snprintf(want, sizeof(want), "\n  --%s ", every_option[i][0]);
        assert_non_null(strstr(out_text, want));
    }
    assert_non_null(strstr(out_text, "(default: 24h)"));
    config_free(&c);
}

/* Each --help line is a row of docs/idemproxy.md's table, word for word:
 * | `--flag ARG` | `key` | default | meaning |, "-" for no default. */
static void check_doc_row(const char *doc, const char *line, size_t len)
{
    static const char *const flag_only[] = { "config", "help", "version" };
    char flag[32], key[40] = "(flag only)", row[512];
    const char *meaning = line + 30, *def = "-", *paren;
    int mlen = (int)len - 30, dlen = 1;
    size_t i, n = 27;

    assert_true(len > 30 && line[29] == ' ' && line[30] != ' ');
    memcpy(flag, line + 2, n);
    while (n > 0 && flag[n - 1] == ' ')
        n--;
    flag[n] = '\0';
    paren = memmem(meaning, (size_t)mlen, " (default: ", 11);
    if (paren) {
        def = paren + 11;
        dlen = (int)(line + len - 1 - def);
        mlen = (int)(paren - meaning);
    }
    n = strcspn(flag + 2, " ");
    snprintf(key, sizeof(key), "`%.*s`", (int)n, flag + 2);
    for (i = 0; i < sizeof(flag_only) / sizeof(flag_only[0]); i++) {
        if (strlen(flag_only[i]) == n && !memcmp(flag + 2, flag_only[i], n))
            snprintf(key, sizeof(key), "(flag only)");
    }
    snprintf(row, sizeof(row), "| `%s` | %s | %.*s | %.*s |", flag, key, dlen,
             def, mlen, meaning);
    if (!strstr(doc, row))
        fail_msg("docs/idemproxy.md lacks the row\n%s", row);
}

static void test_help_matches_the_docs(void **state)
{
    struct config c;
    char *doc = NULL, *p, *nl;
    size_t cap = 0;
    FILE *f;

    (void)state;
    assert_non_null(docs_path);
    f = fopen(docs_path, "r");
    assert_non_null(f);
    assert_true(getdelim(&doc, &cap, '\0', f) > 0);
    fclose(f);
    assert_int_equal(parse(&c, ARGV("--help")), 1);
    for (p = out_text; (nl = strchr(p, '\n')); p = nl + 1) {
        if (strncmp(p, "  --", 4) == 0)
            check_doc_row(doc, p, (size_t)(nl - p));
    }
    free(doc);
}

/* -- Durations, sizes, addresses -------------------------------------- */

static void test_durations(void **state)
{
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {
        { "30s", 30000 },
        { "500ms", 500 },
        { "2m", 120000 },
        { "1h", 3600000 },
        { "1d", 86400000 },
        { "15", 15000 },
        { "0", 0 },
        { "007s", 7000 },
        { "0ms", 0 },
        { "9223372036854775807ms", INT64_MAX },
        { "106751991167d", 106751991167 * 86400000LL },
    };
    static const char *const bad[] = {
        "",
        "s",
        "-1s",
        "1.5h",
        " 1s",
        "1s ",
        "1 s",
        "1S",
        "1sec",
        "1x",
        "1msx",
        "h1",
        "+1s",
        "0x1s",
        "9223372036854775808ms",
        "106751991168d",
        "99999999999999999999",
        "9223372036854776s",
    };
    int64_t ms;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ms = -1;
        assert_int_equal(config_duration_ms(good[i].s, &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ms = 42;
        if (config_duration_ms(bad[i], &ms) != -1)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(ms, 42); /* untouched */
    }
    assert_int_equal(config_duration_ms(NULL, &ms), -1);
}

static void test_sizes(void **state)
{
    static const struct {
        const char *s;
        size_t n;
    } good[] = {
        { "0", 0 },
        { "1000", 1000 },
        { "512K", 512 << 10 },
        { "512k", 512 << 10 },
        { "64M", 64 << 20 },
        { "1G", 1 << 30 },
        { "18446744073709551615", SIZE_MAX },
        { "17179869183G", (size_t)17179869183 << 30 },
    };
    static const char *const bad[] = {
        "",
        "K",
        "1KB",
        "-1",
        "1.5M",
        " 1",
        "1 ",
        "1T",
        "0x10",
        "1KiB",
        "18446744073709551616",
        "17179869184G",
        "18014398509481984K",
    };
    size_t n, i;

    (void)state;
    _Static_assert(sizeof(size_t) == 8, "the figures assume 64 bits");
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        n = 1;
        assert_int_equal(config_size(good[i].s, &n), 0);
        assert_int_equal(n, good[i].n);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = 42;
        if (config_size(bad[i], &n) != -1)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(n, 42);
    }
}

static void test_addresses(void **state)
{
    static const struct {
        const char *s, *host;
        unsigned port;
    } good[] = {
        { "127.0.0.1:8080", "127.0.0.1", 8080 },
        { "localhost:0", "localhost", 0 },
        { "[::1]:8080", "::1", 8080 },
        { "[2001:db8::1]:443", "2001:db8::1", 443 },
        { "[::ffff:10.0.0.1]:1", "::ffff:10.0.0.1", 1 },
        { "my-host.example_1.com:65535", "my-host.example_1.com", 65535 },
    };
    static const char *const bad[] = {
        "",
        ":80",
        "host",
        "host:",
        "host:65536",
        "host:-1",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[zz]:80",
        "[]:80",
        "http://x:80",
        "host :80",
        "host: 80",
        "[::1]:",
        "h:0x50",
        "[::1]:80:1",
        "h/x:1",
        "1.2.3.4:99999999999999999999",
    };
    char host[300];
    struct addr a;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        memset(&a, 0, sizeof(a));
        assert_int_equal(config_addr(good[i].s, &a), 0);
        assert_string_equal(a.host, good[i].host);
        assert_int_equal(a.port, good[i].port);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&a, 0, sizeof(a));
        a.port = 42;
        if (config_addr(bad[i], &a) != -1)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(a.port, 42); /* untouched */
        assert_string_equal(a.host, "");
    }
    /* The longest name that fits, and one byte more. */
    memset(host, 'a', 255);
    snprintf(host + 255, sizeof(host) - 255, ":1");
    assert_int_equal(config_addr(host, &a), 0);
    assert_int_equal(strlen(a.host), 255);
    memset(host, 'a', 256);
    snprintf(host + 256, sizeof(host) - 256, ":1");
    assert_int_equal(config_addr(host, &a), -1);
    assert_int_equal(config_addr(NULL, &a), -1);
}

/* -- INI files ----------------------------------------------------------- */

/* Parse a file holding text (and flags after it); 0 or 2. */
static int parse_text(struct config *c, const char *text)
{
    char *path = temp_file(text);
    int rc = parse(c, ARGV("--config", path));

    unlink(path);
    return rc;
}

static void test_ini_comments_and_spaces(void **state)
{
    struct config c;

    (void)state;
    assert_int_equal(
        parse_text(&c, "; an INI comment\n"
                       "# another\n"
                       "upstream = h:1 # the application\n"
                       "  lifetime=1h\n"
                       "lease   =   5s   ; trailing\n"
                       "methods: POST, PUT\n"
                       "log-file = /var/log/a#b.log # # is a comment only "
                       "after a blank\n"
                       "key-header \"X-Key\"\n" /* the older flat form */
                       "log-keys\n"),
        0);
    assert_string_equal(err_text, "");
    assert_string_equal(c.upstreams[0].addr.host, "h");
    assert_int_equal(c.lifetime_ms, 3600 * 1000);
    assert_int_equal(c.lease_ms, 5000);
    assert_int_equal(c.nmethods, 2);
    assert_string_equal(c.methods[1], "PUT");
    assert_string_equal(c.log_file, "/var/log/a#b.log");
    assert_string_equal(c.key_header, "X-Key");
    assert_true(c.log_keys);
    config_free(&c);
}

static void test_ini_routes(void **state)
{
    const char *t = "/payments/slow/x";
    const struct route *r;
    struct config c;

    (void)state;
    assert_int_equal(parse_text(&c, "upstream = h:1\n"
                                    "require-key = /orders\n"
                                    "[route /payments]\n"
                                    "methods = POST,PUT\n"
                                    "lifetime = 1h\n"
                                    "require-key = true\n"
                                    "conflict = wait:2s\n"
                                    "max-stored-body = 4K\n"
                                    "\n"
                                    "[route /payments/slow]  # nested\n"
                                    "conflict = reject\n"),
                     0);
    assert_string_equal(err_text, "");
    assert_int_equal(c.nroutes, 3);
    r = config_route(&c, "/payments/1", 11);
    assert_non_null(r);
    assert_string_equal(r->prefix, "/payments");
    assert_true(r->require_key);
    assert_int_equal(r->nmethods, 2);
    assert_int_equal(r->lifetime_ms, 3600 * 1000);
    assert_int_equal(r->conflict, IDEM_CONFLICT_WAIT);
    assert_int_equal(r->wait_ms, 2000);
    assert_int_equal(r->max_stored_body, 4096);
    r = config_route(&c, t, strlen(t)); /* the longest prefix */
    assert_string_equal(r->prefix, "/payments/slow");
    assert_false(r->require_key);
    assert_null(r->methods); /* the global rules */
    assert_int_equal(r->lifetime_ms, 0);
    assert_int_equal(r->conflict, IDEM_CONFLICT_REJECT);
    r = config_route(&c, "/orders?x", 7); /* from require-key */
    assert_true(r->require_key);
    assert_int_equal(r->conflict, -1);
    assert_null(config_route(&c, "/other", 6));
    assert_null(config_route(&c, "/Payments", 9));
    config_free(&c);
}

static void expect_file_error(const char *text, unsigned line, const char *msg)
{
    char *path = temp_file(text), want[512];

    snprintf(want, sizeof(want), "idemproxy: %s:%u: %s\n", path, line, msg);
    expect_error(ARGV("--config", path), want);
    unlink(path);
}

static void test_ini_errors(void **state)
{
    char longline[400];

    (void)state;
    expect_file_error("upstream = h:1\n[route payments]\nlifetime = 1h\n", 3,
                      "unknown section [route payments] (sections are "
                      "[route PREFIX], PREFIX a path)");
    expect_file_error("upstream = h:1\n[other]\nlifetime = 1h\n", 3,
                      "unknown section [other] (sections are [route "
                      "PREFIX], PREFIX a path)");
    expect_file_error("upstream = h:1\n[route /a]\nlisten = h:2\n", 3,
                      "unknown key \"listen\"");
    expect_file_error("upstream = h:1\n\n[route /a\n", 3,
                      "a section is written [route PREFIX]");
    expect_file_error("[route /a]\n# c\nlifetime = 5x # why\n", 3,
                      "lifetime: \"5x\" is not a duration (e.g. 30s, 5m, "
                      "24h)");
    expect_file_error("[route /a]\nrequire-key = maybe\n", 2,
                      "require-key: \"maybe\" is not true or false");
    expect_file_error("upstream = h:1\nlifetime =\n", 2,
                      "lifetime needs a value");
    memset(longline, 'a', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = '\0';
    memcpy(longline, "log-file = /", 12);
    expect_file_error(longline, 1, "the line is longer than 199 bytes");
}

static void test_upstreams(void **state)
{
    static const struct {
        const char *s, *host, *path;
        unsigned port;
        bool tls;
    } good[] = {
        { "h:1", "h", "", 1, false },
        { "http://app.internal:8080", "app.internal", "", 8080, false },
        { "http://app/", "app", "", 80, false },
        { "https://app", "app", "", 443, true },
        { "https://[::1]:8443", "::1", "", 8443, true },
        { "http://[::1]", "::1", "", 80, false },
        { "unix:/run/app.sock", "", "/run/app.sock", 0, false },
    };
    static const char *const bad[] = { "http://", "http://:1", "unix:",
                                       "unix:/",  "tcp://h:1", "http://h:x" };
    struct upstream_url u;
    struct config c;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_int_equal(config_upstream(good[i].s, &u), 0);
        assert_string_equal(u.addr.host, good[i].host);
        assert_string_equal(u.path, good[i].path);
        assert_int_equal(u.addr.port, good[i].port);
        assert_int_equal(u.tls, good[i].tls);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(config_upstream(bad[i], &u), -1);
    /* repeated in one place they add up; a later place replaces them */
    assert_int_equal(parse(&c, ARGV("--upstream", "a:1", "--upstream=b:2")), 0);
    assert_int_equal(c.nupstreams, 2);
    assert_string_equal(c.upstreams[1].addr.host, "b");
    config_free(&c);
    assert_int_equal(parse_text(&c, "upstream = a:1\nupstream = b:2\n"), 0);
    assert_int_equal(c.nupstreams, 2);
    config_free(&c);
    assert_int_equal(parse(&c, ARGV("--upstream", "https://api.example:8443")),
                     0);
    assert_true(c.upstream_tls);
    assert_string_equal(c.upstream_sni, "api.example");
    config_free(&c);
}

static void test_trusted_networks(void **state)
{
    static const unsigned char v4[16] = {
        [10] = 0xff, [11] = 0xff, 10, 1, 2, 3
    };
    static const unsigned char v6[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 1 };
    static const unsigned char lo[16] = { [15] = 1 };
    struct config c;

    (void)state;
    assert_int_equal(parse(&c, ARGV("--upstream", "h:1", "--trusted-proxies",
                                    "10.0.0.0/8, 2001:db8::/32")),
                     0);
    assert_true(config_trusted(&c, v4));
    assert_true(config_trusted(&c, v6));
    assert_false(config_trusted(&c, lo));
    config_free(&c);
    assert_int_equal(parse(&c, ARGV("--upstream", "h:1", "--trusted-proxies",
                                    "10.1.2.3,::1")),
                     0);
    assert_true(config_trusted(&c, v4));
    assert_true(config_trusted(&c, lo));
    assert_false(config_trusted(&c, v6));
    config_free(&c);
    assert_int_equal(parse(&c, ARGV("--upstream", "h:1", "-h")), 1);
    assert_int_equal(strncmp(out_text, "usage: idemproxy", 16), 0);
    assert_non_null(strstr(out_text, "[route PREFIX]"));
    config_free(&c);
    assert_int_equal(parse(&c, ARGV("-V")), 1);
    assert_string_equal(out_text, "idemproxy " IDEM_VERSION_STRING "\n");
    config_free(&c);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_defaults, teardown),
        cmocka_unit_test_teardown(test_every_flag, teardown),
        cmocka_unit_test_teardown(test_every_key_in_a_file, teardown),
        cmocka_unit_test_teardown(test_flags_after_a_file_override_it,
                                  teardown),
        cmocka_unit_test_teardown(test_values_in_a_file, teardown),
        cmocka_unit_test_teardown(test_lists_and_flags, teardown),
        cmocka_unit_test_teardown(test_refusals, teardown),
        cmocka_unit_test_teardown(test_bad_values_stay_on_one_line, teardown),
        cmocka_unit_test_teardown(test_file_errors, teardown),
        cmocka_unit_test_teardown(test_garbage_never_crashes, teardown),
        cmocka_unit_test_teardown(test_help_and_version, teardown),
        cmocka_unit_test_teardown(test_help_matches_the_docs, teardown),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test_teardown(test_ini_comments_and_spaces, teardown),
        cmocka_unit_test_teardown(test_ini_routes, teardown),
        cmocka_unit_test_teardown(test_ini_errors, teardown),
        cmocka_unit_test_teardown(test_upstreams, teardown),
        cmocka_unit_test_teardown(test_trusted_networks, teardown),
    };

    docs_path = argc > 1 ? argv[1] : NULL;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
