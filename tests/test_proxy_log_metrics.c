/* idemproxy's log lines (format, escaping, key digests, levels, rate limits,
 * reopen) and its Prometheus text (every family, histogram arithmetic,
 * figures read from a real engine). */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "config.h"
#include "engine_helpers.h"
#include "log.h"
#include "metrics.h"

#define TS_LEN 24 /* "2026-11-23T16:30:00.123Z" */

static char log_path[64];

/* Log to a fresh temporary file with the given extra flags. */
static void open_log(const char *format, const char *level, bool keys)
{
    char *argv[] = { "--upstream=h:1",
                     "--log-file",
                     log_path,
                     "--log-format",
                     (char *)format,
                     "--log-level",
                     (char *)level,
                     keys ? "--log-keys" : NULL,
                     NULL };
    struct config c;
    int fd;

    snprintf(log_path, sizeof(log_path), "/tmp/idem_log_XXXXXX");
    fd = mkstemp(log_path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(config_parse(&c, keys ? 8 : 7, argv, stdout, stderr), 0);
    assert_int_equal(log_open(&c), 0);
    config_free(&c);
}

/* Everything logged so far; closes the log and removes the file. */
static char *close_log(void)
{
    char *text = NULL;
    size_t cap = 0;
    FILE *f;

    log_close();
    f = fopen(log_path, "r");
    assert_non_null(f);
    if (getdelim(&text, &cap, '\0', f) < 0) {
        free(text);
        text = strdup("");
    }
    fclose(f);
    unlink(log_path);
    return text;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* "k:" and 12 hex digits of SHA-256(key), computed here independently. */
static void digest_of(const char *key, char out[16])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    int i;

    assert_true(EVP_Digest(key, strlen(key), md, &len, EVP_sha256(), NULL));
    memcpy(out, "k:", 3);
    for (i = 0; i < 6; i++)
        snprintf(out + 2 + 2 * i, 3, "%02x", md[i]);
}

static struct log_decision decision(const char *target, size_t target_len,
                                    const char *key)
{
    return (struct log_decision){
        .client = "127.0.0.1:5555",
        .method = "POST",
        .method_len = 4,
        .target = target,
        .target_len = target_len,
        .key = key,
        .key_len = key ? strlen(key) : 0,
        .outcome = "replay",
        .status = 201,
        .upstream_us = -1,
        .total_us = 85,
    };
}

/* -- A small JSON reader: one flat object of strings, integers, null ---- */

static int hex(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* A JSON string at *p into out, NUL-terminated (\u00XX as one byte).
 * Its length, or -1 if it is not valid JSON or does not fit. */
static int json_string(const char **p, char *out, size_t cap)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *s = *p, *e;
    size_t n = 0;

    if (*s++ != '"')
        return -1;
    for (; *s != '"'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e ||
            n + 1 >= cap)
            return -1; /* raw control, not ASCII, or too long */
        if (*s != '\\') {
            out[n++] = *s;
        } else if (*++s == 'u') {
            if (s[1] != '0' || s[2] != '0' || hex(s[3]) < 0 || hex(s[4]) < 0)
                return -1; /* the log only writes \u00XX */
            out[n++] = (char)(hex(s[3]) * 16 + hex(s[4]));
            s += 4;
        } else if (*s && (e = strchr(from, *s))) {
            out[n++] = to[e - from];
        } else {
            return -1;
        }
    }
    out[n] = '\0';
    *p = s + 1;
    return (int)n;
}

/* Whether line is one JSON object of strings and integers, then "\n",
 * holding a string field name; its value goes to value. */
static bool json_field(const char *line, const char *name, char *value,
                       size_t cap)
{
    char key[64], buf[8192];
    const char *p = line;
    bool found = false;
    int n;

    if (*p++ != '{')
        return false;
    do {
        if (json_string(&p, key, sizeof(key)) < 0 || *p++ != ':')
            return false;
        if (*p == '"') {
            if ((n = json_string(&p, buf, sizeof(buf))) < 0)
                return false;
            if (strcmp(key, name) == 0 && (size_t)n < cap) {
                memcpy(value, buf, (size_t)n + 1);
                found = true;
            }
        } else {
            p += *p == '-';
            if (*p < '0' || *p > '9')
                return false;
            p += strspn(p, "0123456789");
        }
    } while (*p++ == ',');
    return p[-1] == '}' && strcmp(p, "\n") == 0 && found;
}

/* -- Log -------------------------------------------------------------- */

static void test_text_line(void **state)
{
    static const char target[] = "/orders?x=1 2\n\"q\"\\";
    struct log_decision d = decision(target, sizeof(target) - 1, "secret-1");
    char digest[16], want[256];
    char *text;

    (void)state;
    digest_of("secret-1", digest);
    open_log("text", "info", false);
    log_decision(&d);
    d.key = NULL;
    d.target = "/orders";
    d.target_len = 7;
    log_decision(&d);
    d.method = "P\x01\x7f\xff=";
    d.method_len = 5;
    d.client = NULL;
    log_decision(&d);
    text = close_log();
    assert_int_equal(count_lines(text), 3);
    assert_non_null(strstr(text, " info decision client=- "
                                 "method=\"P\\x01\\x7f\\xff=\" target="));
    assert_true(strlen(text) > TS_LEN && text[4] == '-' && text[10] == 'T' &&
                text[TS_LEN - 1] == 'Z');
    snprintf(want, sizeof(want),
             " info decision client=127.0.0.1:5555 method=POST "
             "target=\"/orders?x=1 2\\n\\\"q\\\"\\\\\" key=%s outcome=replay "
             "status=201 bytes_sent=0 upstream_us=-1 total_us=85\n",
             digest);
    assert_int_equal(strncmp(text + TS_LEN, want, strlen(want)), 0);
    assert_null(strstr(text, "secret-1"));
    assert_non_null(strstr(text, " info decision client=127.0.0.1:5555 "
                                 "method=POST target=/orders "
                                 "outcome=replay status=201"));
    free(text);
}

/* The access fields: protocol, bytes sent, upstream (IPv6 in brackets),
 * user agent (escaped and quoted like any client bytes). */
static void test_access_fields(void **state)
{
    struct log_decision d = decision("/a", 2, NULL);
    char *text;

    (void)state;
    d.protocol = "HTTP/1.1";
    d.bytes_sent = 1234;
    d.upstream = "[::1]:3000";
    d.user_agent = "curl/8.0 \"x\"";
    d.user_agent_len = strlen(d.user_agent);
    open_log("text", "info", false);
    log_decision(&d);
    text = close_log();
    assert_non_null(strstr(text, " target=/a protocol=HTTP/1.1 "));
    assert_non_null(strstr(text, " status=201 bytes_sent=1234 "
                                 "upstream=[::1]:3000 upstream_us=-1 "));
    assert_non_null(strstr(text, " user_agent=\"curl/8.0 \\\"x\\\"\"\n"));
    free(text);
}

static void test_json_line_round_trips_every_byte(void **state)
{
    char target[256], got[1024], digest[16];
    struct log_decision d;
    char *text;
    int i;

    (void)state;
    for (i = 0; i < 255; i++)
        target[i] = (char)(i + 1);
    d = decision(target, 255, "k\"ey");
    open_log("json", "info", false);
    log_decision(&d);
    text = close_log();
    assert_int_equal(count_lines(text), 1);
    assert_true(json_field(text, "target", got, sizeof(got)));
    assert_memory_equal(got, target, 255);
    assert_int_equal(strlen(got), 255);
    digest_of("k\"ey", digest);
    assert_true(json_field(text, "key", got, sizeof(got)));
    assert_string_equal(got, digest);
    assert_true(json_field(text, "msg", got, sizeof(got)));
    assert_string_equal(got, "decision");
    assert_true(json_field(text, "level", got, sizeof(got)));
    assert_string_equal(got, "info");
    assert_true(json_field(text, "ts", got, sizeof(got)));
    assert_int_equal(strlen(got), TS_LEN);
    assert_non_null(strstr(text, ",\"status\":201,\"bytes_sent\":0,"
                                 "\"upstream_us\":-1,\"total_us\":85}\n"));
    free(text);
}

static void test_keys_in_clear_when_asked(void **state)
{
    struct log_decision d = decision("/", 1, "order-42");
    char got[64];
    char *text;

    (void)state;
    open_log("json", "info", true);
    log_decision(&d);
    text = close_log();
    assert_true(json_field(text, "key", got, sizeof(got)));
    assert_string_equal(got, "order-42");
    free(text);
}

/* A huge target is cut, the line stays whole, one write, valid JSON. */
static void test_long_values_are_cut(void **state)
{
    size_t len = 20000;
    char *target = malloc(len), got[8192];
    struct log_decision d;
    char *text;

    (void)state;
    assert_non_null(target);
    memset(target, '\n', len);
    d = decision(target, len, NULL);
    open_log("json", "info", false);
    log_decision(&d);
    log_msg(LOG_WARN, "%s", "after");
    text = close_log();
    assert_int_equal(count_lines(text), 2);
    assert_true(strchr(text, '\n') - text < 4096);
    *(strchr(text, '\n') + 1) = '\0';
    assert_true(json_field(text, "target", got, sizeof(got)));
    assert_int_equal(strspn(got, "\n"), strlen(got) - 3);
    assert_string_equal(got + strlen(got) - 3, "...");
    free(text);
    free(target);
}

static void test_levels_filter(void **state)
{
    struct log_decision d = decision("/", 1, NULL);
    char *text;

    (void)state;
    open_log("text", "warn", false);
    log_msg(LOG_DEBUG, "debug %d", 1);
    log_msg(LOG_INFO, "info %d", 2);
    log_decision(&d);
    log_msg(LOG_WARN, "warn %d: a\nb", 3);
    log_msg(LOG_ERROR, "error %s", "4");
    text = close_log();
    assert_int_equal(count_lines(text), 2);
    assert_non_null(strstr(text, "Z warn warn 3: a\\nb\n"));
    assert_non_null(strstr(text, "Z error error 4\n"));
    assert_null(strstr(text, "info"));
    assert_null(strstr(text, "debug"));
    free(text);
}

/* log_limited: a line a second per limit, then the count of the rest. */
static void test_limited_lines(void **state)
{
    static struct log_limit spin, other;
    char *text;

    (void)state;
    open_log("text", "info", false);
    for (int i = 0; i < 5; i++)
        log_limited(&spin, LOG_WARN, "spin %d", i);
    log_limited(&other, LOG_WARN, "other");
    log_limited(&spin, LOG_DEBUG, "below the level: not counted");
    atomic_fetch_sub(&spin.last_ms, 1000); /* a second passes */
    log_limited(&spin, LOG_WARN, "spin %d", 5);
    log_limited(&spin, LOG_WARN, "spin %d", 6);
    text = close_log();
    assert_int_equal(count_lines(text), 3);
    assert_non_null(strstr(text, " warn spin 0\n"));
    assert_non_null(strstr(text, " warn other\n"));
    assert_non_null(
        strstr(text, " warn spin 5 (4 similar lines suppressed)\n"));
    assert_null(strstr(text, "spin 1"));
    assert_null(strstr(text, "spin 6"));
    free(text);
}

/* After a rotation (rename), log_reopen writes to a new file. */
static void test_reopen_after_rotation(void **state)
{
    char rotated[80], *text;
    FILE *f;
    char old[512] = "";

    (void)state;
    open_log("text", "info", false);
    log_msg(LOG_INFO, "before");
    snprintf(rotated, sizeof(rotated), "%s.1", log_path);
    assert_int_equal(rename(log_path, rotated), 0);
    log_msg(LOG_INFO, "between");
    assert_int_equal(log_reopen(), 0);
    log_msg(LOG_INFO, "after");
    text = close_log();
    f = fopen(rotated, "r");
    assert_non_null(f);
    assert_true(fread(old, 1, sizeof(old) - 1, f) > 0);
    fclose(f);
    unlink(rotated);
    assert_int_equal(count_lines(old), 2);
    assert_non_null(strstr(old, " info before\n"));
    assert_non_null(strstr(old, " info between\n"));
    assert_int_equal(count_lines(text), 1);
    assert_non_null(strstr(text, " info after\n"));
    free(text);
}

/* Collected lines: to a regular file they wait until half of
 * LOG_BATCH_BYTES is collected, then go out whole in one write; to a pipe
 * they are due at once, and go out in writes of at most PIPE_BUF bytes
 * that hold whole lines. */
static void test_batched_lines(void **state)
{
    struct log_decision d = decision("/batch", 6, "k");
    static char buf[1 << 16];
    size_t lines = 0;
    struct stat st;
    char *text;
    int fds[2], saved;
    ssize_t got;

    (void)state;
    open_log("text", "info", false);
    log_buffer_lines(true);
    log_decision(&d);
    assert_true(log_pending());
    assert_false(log_flush_due());
    assert_int_equal(stat(log_path, &st), 0);
    assert_int_equal(st.st_size, 0); /* nothing written yet */
    for (lines = 1; !log_flush_due(); lines++)
        log_decision(&d);
    assert_true(lines > LOG_BATCH_BYTES / 2 / PIPE_BUF);
    log_flush();
    assert_false(log_pending());
    log_buffer_lines(false);
    text = close_log();
    assert_int_equal(count_lines(text), lines);
    free(text);

    /* stderr made a pipe: due after one line, written in PIPE_BUF windows */
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
    assert_int_equal(log_open(&(struct config){ .log_level = LOG_INFO }), 0);
    log_buffer_lines(true);
    log_decision(&d);
    assert_true(log_flush_due());
    for (int i = 0; i < 40; i++)
        log_decision(&d); /* some flushed as the window fills */
    log_buffer_lines(false);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    close(fds[1]);
    got = read(fds[0], buf, sizeof(buf) - 1); /* all of it: < 64 KiB */
    close(fds[0]);
    assert_true(got > PIPE_BUF); /* more than one write */
    buf[got] = '\0';
    assert_int_equal(buf[got - 1], '\n');
    assert_int_equal(count_lines(buf), 41);
    for (char *line = buf; *line; line = strchr(line, '\n') + 1)
        assert_non_null(strstr(line, " info decision ")); /* each whole */
}

static void test_open_failure_keeps_the_log(void **state)
{
    struct config c = { .log_file = "/nonexistent/dir/idem.log" };

    (void)state;
    assert_int_equal(log_open(&c), -1);
    assert_int_equal(log_reopen(), 0); /* stderr: nothing to reopen */
    log_close();
}

/* -- Metrics ---------------------------------------------------------- */

static void reset_metrics(void)
{
    int i;

    for (i = 0; i < METRICS_RESULTS; i++)
        atomic_store(&metrics.results[i], 0);
    for (i = 0; i <= METRICS_LATENCY_BUCKETS; i++)
        atomic_store(&metrics.latency_bucket[i], 0);
    memset(metrics.request_bucket, 0, sizeof(metrics.request_bucket));
    memset(metrics.request_sum_us, 0, sizeof(metrics.request_sum_us));
    atomic_store(&metrics.latency_sum_us, 0);
    atomic_store(&metrics.latency_count, 0);
    atomic_store(&metrics.connections_accepted, 0);
    atomic_store(&metrics.connections_open, 0);
    atomic_store(&metrics.upstream_connects, 0);
}

/* The value of the sample named exactly name (with labels); fails if
 * absent. */
static unsigned long long sample(const char *text, const char *name)
{
    char want[160];
    const char *at;

    snprintf(want, sizeof(want), "\n%s ", name);
    at = strstr(text, want);
    if (!at)
        fail_msg("no sample %s", name);
    return strtoull(at + strlen(want), NULL, 10);
}

static char *render(struct idem_engine *e)
{
    size_t len = 0;
    char *text = metrics_render(&e, 1, &len);

    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_true(len > 0 && text[len - 1] == '\n');
    return text;
}

/* The Prometheus text format (0.0.4), checked strictly: every line is
 * "# HELP name text", "# TYPE name type" or "name[{labels}] value"; names
 * and label names are valid, label values quoted; each sample belongs to
 * a family whose TYPE came first (a histogram's by its _bucket, _sum and
 * _count); no series twice; a histogram's buckets, per label set, are
 * cumulative and end in +Inf equal to its _count. */
#define MAX_SERIES 2048

struct series {
    char name[96];
    char labels[160]; /* as written, le included */
    double value;
};

static bool name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           c == ':' || (!first && c >= '0' && c <= '9');
}

/* The family a sample name belongs to, given the declared types. */
static const char *family_of(const char *name, char types[][2][64],
                             size_t ntypes, const char **type_out)
{
    static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
    size_t i, j, n = strlen(name), len;

    for (i = 0; i < ntypes; i++) {
        if (strcmp(types[i][0], name) == 0) {
            *type_out = types[i][1];
            return types[i][0];
        }
        for (j = 0; j < 3; j++) {
            len = strlen(suffixes[j]);
            if (n > len && strcmp(name + n - len, suffixes[j]) == 0 &&
                strncmp(types[i][0], name, n - len) == 0 &&
                types[i][0][n - len] == '\0' &&
                strcmp(types[i][1], "histogram") == 0) {
                *type_out = types[i][1];
                return types[i][0];
            }
        }
    }
    return NULL;
}

static void check_exposition(const char *text)
{
    static char types[256][2][64];
    static struct series all[MAX_SERIES];
    size_t ntypes = 0, nseries = 0, i, j;
    const char *p, *q, *nl, *fam, *type = NULL;

    for (p = text; (nl = strchr(p, '\n')); p = nl + 1) {
        struct series *s;
        char *end;

        if (!strncmp(p, "# HELP ", 7)) {
            assert_true(name_char(p[7], true));
            continue;
        }
        if (!strncmp(p, "# TYPE ", 7)) {
            assert_true(ntypes < 256);
            assert_int_equal(sscanf(p, "# TYPE %63s %63s", types[ntypes][0],
                                    types[ntypes][1]),
                             2);
            assert_true(!strcmp(types[ntypes][1], "counter") ||
                        !strcmp(types[ntypes][1], "gauge") ||
                        !strcmp(types[ntypes][1], "histogram"));
            for (i = 0; i < ntypes; i++) /* one TYPE per family */
                assert_string_not_equal(types[i][0], types[ntypes][0]);
            ntypes++;
            continue;
        }
        assert_true(nseries < MAX_SERIES);
        s = &all[nseries++];
        assert_true(name_char(*p, true));
        for (q = p; name_char(*q, q == p); q++)
            ;
        assert_true((size_t)(q - p) < sizeof(s->name));
        memcpy(s->name, p, (size_t)(q - p));
        s->name[q - p] = '\0';
        s->labels[0] = '\0';
        if (*q == '{') {
            const char *l = q + 1;

            while (*l != '}') { /* name="value", ... */
                assert_true(name_char(*l, true));
                while (name_char(*l, false))
                    l++;
                assert_int_equal(*l++, '=');
                assert_int_equal(*l++, '"');
                while (*l != '"') {
                    assert_true(l < nl);
                    l += *l == '\\' ? 2 : 1;
                }
                l++;
                if (*l == ',')
                    l++;
                else
                    assert_int_equal(*l, '}');
            }
            assert_true((size_t)(l - q) < sizeof(s->labels));
            memcpy(s->labels, q + 1, (size_t)(l - q - 1));
            s->labels[l - q - 1] = '\0';
            q = l + 1;
        }
        assert_int_equal(*q++, ' ');
        s->value = strtod(q, &end);
        assert_ptr_equal(end, nl);
        fam = family_of(s->name, types, ntypes, &type);
        assert_non_null(fam);             /* its TYPE came first */
        for (i = 0; i + 1 < nseries; i++) /* no series twice */
            assert_false(!strcmp(all[i].name, s->name) &&
                         !strcmp(all[i].labels, s->labels));
        if (!strcmp(type, "counter"))
            assert_true(s->value >= 0);
    }
    assert_int_equal(*p, '\0');
    /* histograms: per name and label set without le, cumulative buckets
     * ending in +Inf == _count */
    for (i = 0; i < nseries; i++) {
        size_t n = strlen(all[i].name);
        const char *inf = strstr(all[i].labels, "le=\"+Inf\"");
        char count_name[112], rest[160];
        double last = 0;
        bool found = false;

        if (n < 7 || strcmp(all[i].name + n - 7, "_bucket") || !inf)
            continue;
        /* the labels besides le (le is written last) */
        snprintf(rest, sizeof(rest), "%.*s",
                 (int)(inf - all[i].labels - (inf > all[i].labels)),
                 all[i].labels);
        for (j = 0; j <= i; j++) {
            const char *le = strstr(all[j].labels, "le=\"");

            if (strcmp(all[j].name, all[i].name) || !le ||
                strncmp(all[j].labels, rest, strlen(rest)))
                continue;
            assert_true(all[j].value >= last);
            last = all[j].value;
        }
        snprintf(count_name, sizeof(count_name), "%.*s_count", (int)(n - 7),
                 all[i].name);
        for (j = 0; j < nseries; j++)
            if (!strcmp(all[j].name, count_name) &&
                !strcmp(all[j].labels, rest)) {
                assert_true(all[j].value == all[i].value);
                found = true;
            }
        assert_true(found);
    }
}

static void test_every_family(void **state)
{
    static const char *const families[][2] = {
        { "idem_requests_total", "counter" },
        { "idem_proxy_errors_total", "counter" },
        { "idem_completions_total", "counter" },
        { "idem_wait_timeouts_total", "counter" },
        { "idem_store_entries", "gauge" },
        { "idem_store_bytes", "gauge" },
        { "idem_keys_in_flight", "gauge" },
        { "idem_lock_entries", "gauge" },
        { "idem_store_evictions_total", "counter" },
        { "idem_store_expirations_total", "counter" },
        { "idem_waiting_requests", "gauge" },
        { "idem_upstream_latency_seconds", "histogram" },
        { "idem_connections_open", "gauge" },
        { "idem_connections_total", "counter" },
        { "idem_upstream_connects_total", "counter" },
        { "idem_received_bytes_total", "counter" },
        { "idem_sent_bytes_total", "counter" },
        { "idem_build_info", "gauge" },
        { "process_cpu_seconds_total", "counter" },
        { "process_open_fds", "gauge" },
        { "process_max_fds", "gauge" },
        { "process_start_time_seconds", "gauge" },
        { "process_resident_memory_bytes", "gauge" },
        { "process_virtual_memory_bytes", "gauge" },
    };
    char want[128], *text;
    size_t i;

    (void)state;
    reset_metrics();
    text = render(NULL);
    check_exposition(text);
    for (i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        snprintf(want, sizeof(want), "\n# TYPE %s %s\n", families[i][0],
                 families[i][1]);
        assert_non_null(strstr(text, want));
        snprintf(want, sizeof(want), "# HELP %s ", families[i][0]);
        assert_non_null(strstr(text, want));
    }
    assert_true(sample(text, "process_resident_memory_bytes") > 0);
    assert_true(sample(text, "process_open_fds") >= 3); /* stdio at least */
    assert_true(sample(text, "process_start_time_seconds") > 1.7e9);
    assert_null(strstr(text, "idem_request_duration_seconds_count"));
    assert_int_equal(sample(text, "idem_store_entries"), 0);
    free(text);
}

/* Client requests by outcome and status class: only the pairs seen,
 * each a whole histogram; 70 s lands under 120, not +Inf. */
static void test_request_duration(void **state)
{
    char *text;

    (void)state;
    reset_metrics();
    metrics_observe_request(IDEM_OUTCOME_REPLAY, 201, 300);
    metrics_observe_request(IDEM_OUTCOME_REPLAY, 201, 700);
    metrics_observe_request(METRICS_OUTCOME_ERROR, 413, 5000);
    metrics_observe_request(IDEM_OUTCOME_PROCEED, 502, 70000000);
    text = render(NULL);
    check_exposition(text);
    assert_int_equal(sample(text, "idem_request_duration_seconds_count{"
                                  "outcome=\"replay\",class=\"2xx\"}"),
                     2);
    assert_int_equal(sample(text, "idem_request_duration_seconds_bucket{"
                                  "outcome=\"replay\",class=\"2xx\",le="
                                  "\"0.0005\"}"),
                     1);
    assert_int_equal(sample(text, "idem_request_duration_seconds_bucket{"
                                  "outcome=\"error\",class=\"4xx\",le="
                                  "\"0.005\"}"),
                     1);
    assert_int_equal(sample(text, "idem_request_duration_seconds_bucket{"
                                  "outcome=\"proceed\",class=\"5xx\",le="
                                  "\"60\"}"),
                     0);
    assert_int_equal(sample(text, "idem_request_duration_seconds_bucket{"
                                  "outcome=\"proceed\",class=\"5xx\",le="
                                  "\"120\"}"),
                     1);
    assert_null(strstr(text, "outcome=\"conflict\",class="));
    free(text);
}

static void test_histogram(void **state)
{
    static const uint64_t observed_us[] = { 100,     500, 501,  2500000,
                                            3000000, 0,   24999 };
    static const struct {
        const char *le;
        unsigned long long count;
    } want[] = {
        { "0.0005", 3 }, { "0.001", 4 }, { "0.0025", 4 }, { "0.005", 4 },
        { "0.01", 4 },   { "0.025", 5 }, { "0.05", 5 },   { "0.1", 5 },
        { "0.25", 5 },   { "0.5", 5 },   { "1", 5 },      { "2.5", 6 },
        { "5", 7 },      { "10", 7 },    { "30", 7 },     { "60", 7 },
        { "120", 7 },    { "+Inf", 7 },
    };
    char name[96], *text, *sum;
    unsigned long long last = 0;
    size_t i;

    (void)state;
    reset_metrics();
    for (i = 0; i < sizeof(observed_us) / sizeof(observed_us[0]); i++)
        metrics_observe_upstream(observed_us[i]);
    text = render(NULL);
    check_exposition(text);
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        snprintf(name, sizeof(name),
                 "idem_upstream_latency_seconds_bucket{le=\"%s\"}", want[i].le);
        assert_int_equal(sample(text, name), want[i].count);
        assert_true(want[i].count >= last); /* cumulative */
        last = want[i].count;
    }
    assert_int_equal(sample(text, "idem_upstream_latency_seconds_count"), 7);
    assert_int_equal(atomic_load(&metrics.latency_count), 7);
    sum = strstr(text, "\nidem_upstream_latency_seconds_sum ");
    assert_non_null(sum);
    /* 100 + 500 + 501 + 2500000 + 3000000 + 0 + 24999 us */
    assert_int_equal(strncmp(sum + 35, "5.526100\n", 9), 0);
    free(text);
}

/* Figures from a real engine and store, and the proxy's own counters. */
static void test_engine_and_proxy_figures(void **state)
{
    struct idem_engine_opts opts = { 0 };
    struct idem_response resp = { .status = 201, .body = "ok", .body_len = 2 };
    struct idem_engine *e = NULL;
    struct idem_call *call;
    struct idem_decision d;
    struct treq t;
    char *text;

    (void)state;
    reset_metrics();
    assert_int_equal(idem_engine_new(&opts, &e), IDEM_OK);
    treq_init(&t, "POST", "/orders", "order-1", NULL, "{}");
    assert_int_equal(run_call(e, &t, &call, &d), IDEM_OUTCOME_PROCEED);
    assert_int_equal(idem_call_complete(call, &resp, NULL, NULL), IDEM_OK);
    idem_call_free(call);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_REPLAY);
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_REPLAY);
    treq_init(&t, "GET", "/orders", NULL, NULL, "");
    assert_int_equal(outcome_of(e, &t), IDEM_OUTCOME_PASS);
    atomic_fetch_add(&metrics.results[METRICS_CLIENT_ERROR], 2);
    atomic_fetch_add(&metrics.results[METRICS_UPSTREAM_TIMEOUT], 3);
    atomic_fetch_add(&metrics.connections_accepted, 9);
    atomic_fetch_add(&metrics.connections_open, 4);
    atomic_fetch_add(&metrics.upstream_connects, 5);

    text = render(e);
    check_exposition(text);
    assert_int_equal(sample(text, "idem_requests_total{outcome=\"proceed\"}"),
                     1);
    assert_int_equal(sample(text, "idem_requests_total{outcome=\"replay\"}"),
                     2);
    assert_int_equal(sample(text, "idem_requests_total{outcome=\"pass\"}"), 1);
    assert_int_equal(sample(text, "idem_requests_total{outcome=\"conflict\"}"),
                     0);
    assert_int_equal(sample(text, "idem_requests_total{outcome=\"error\"}"), 2);
    assert_null(strstr(text, "pending"));
    assert_int_equal(
        sample(text, "idem_proxy_errors_total{kind=\"upstream_timeout\"}"), 3);
    assert_int_equal(
        sample(text, "idem_proxy_errors_total{kind=\"client_error\"}"), 2);
    assert_int_equal(sample(text, "idem_completions_total{result=\"stored\"}"),
                     1);
    assert_int_equal(sample(text, "idem_store_entries"), 1);
    assert_true(sample(text, "idem_store_bytes") > 0);
    assert_int_equal(sample(text, "idem_keys_in_flight"), 0);
    assert_int_equal(sample(text, "idem_lock_entries"), 0);
    assert_int_equal(sample(text, "idem_connections_total"), 9);
    assert_int_equal(sample(text, "idem_connections_open"), 4);
    assert_int_equal(sample(text, "idem_upstream_connects_total"), 5);
    free(text);
    idem_engine_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_line),
        cmocka_unit_test(test_json_line_round_trips_every_byte),
        cmocka_unit_test(test_keys_in_clear_when_asked),
        cmocka_unit_test(test_long_values_are_cut),
        cmocka_unit_test(test_levels_filter),
        cmocka_unit_test(test_limited_lines),
        cmocka_unit_test(test_reopen_after_rotation),
        cmocka_unit_test(test_batched_lines),
        cmocka_unit_test(test_open_failure_keeps_the_log),
        cmocka_unit_test(test_every_family),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_access_fields),
        cmocka_unit_test(test_request_duration),
        cmocka_unit_test(test_engine_and_proxy_figures),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
