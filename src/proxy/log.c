/* idemproxy's log: each line is built in a buffer of at most PIPE_BUF
 * bytes and written with one write(2), so lines from threads never mix.
 * A worker thread collects its lines and writes them together (log_flush):
 * to a pipe or socket in writes of at most PIPE_BUF bytes at the end of
 * its loop's pass; to a regular file, where a write of any size lands
 * whole, in writes of up to LOG_BATCH_BYTES when half of that is
 * collected or LOG_BATCH_MS after the first line (worker.c). Every byte a
 * client chose is escaped: a line is always one line. */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init: no provider lookup */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

#define LINE_MAX_BYTES PIPE_BUF
#define DIGEST_BYTES 6 /* 12 hex digits */

/* Escaped bytes of each string at most; past it a value ends in "...".
 * With the fixed parts (time, names, numbers) a line always fits. */
#define MSG_MAX 3000
#define SHORT_MAX 64 /* client, method, protocol, outcome, upstream */
#define AGENT_MAX 256
#define TARGET_MAX 1664
#define KEY_MAX 1024
#define RID_MAX 256 /* request_id */
#define FIXED_MAX 512
_Static_assert(MSG_MAX + FIXED_MAX <= LINE_MAX_BYTES, "a message fits");
_Static_assert(5 * SHORT_MAX + AGENT_MAX + TARGET_MAX + KEY_MAX + RID_MAX +
                       FIXED_MAX <=
                   LINE_MAX_BYTES,
               "a decision fits");

/* Set by log_open before the workers start; the fd number never changes
 * after that (log_reopen dup2()s over it), so writers need no lock. */
static int log_fd = STDERR_FILENO;
static char *log_path;
/* Whether log_fd takes a batch of lines of any size in one write: a
 * regular file. A pipe or socket (journald's stderr) splits writes past
 * PIPE_BUF, and another thread's line could land inside ours. */
static _Atomic bool log_batch;
/* set at start and by a reload while workers log: atomic */
static _Atomic enum log_level log_max = LOG_INFO;
static _Atomic enum log_format log_fmt = LOG_TEXT;
static _Atomic bool log_clear_keys;

static const char *const level_names[] = {
    [LOG_ERROR] = "error",
    [LOG_WARN] = "warn",
    [LOG_INFO] = "info",
    [LOG_DEBUG] = "debug",
};

static int open_path(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static void note_kind(int fd)
{
    struct stat st;

    log_batch = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

int log_open(const struct config *c)
{
    char *path = NULL;
    int fd = STDERR_FILENO;

    if (c->log_file) {
        path = strdup(c->log_file);
        if (!path)
            return -1;
        fd = open_path(path);
        if (fd < 0) {
            free(path);
            return -1;
        }
    }
    log_close();
    log_fd = fd;
    log_path = path;
    note_kind(fd);
    log_max = c->log_level;
    log_fmt = c->log_format;
    log_clear_keys = c->log_keys;
    return 0;
}

void log_settings(const struct config *c)
{
    log_max = c->log_level;
    log_fmt = c->log_format;
    log_clear_keys = c->log_keys;
}

int log_reopen(void)
{
    int fd, rc;

    if (!log_path)
        return 0;
    fd = open_path(log_path);
    if (fd < 0)
        return -1;
    rc = dup2(fd, log_fd) < 0 ? -1 : 0;
    close(fd);
    note_kind(log_fd);
    return rc;
}

void log_close(void)
{
    if (log_path)
        close(log_fd);
    free(log_path);
    log_path = NULL;
    log_fd = STDERR_FILENO;
}

/* -- This thread's pending lines --------------------------------------- */

struct pending {
    char b[LOG_BATCH_BYTES];
    size_t n;
    bool on; /* log_buffer_lines(true) */
};
_Static_assert(LOG_BATCH_BYTES >= LINE_MAX_BYTES, "a line fits a batch");

static _Thread_local struct pending pending;

static void write_all(const char *p, size_t n)
{
    size_t off = 0;
    ssize_t w;

    while (off < n) {
        w = write(log_fd, p + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

/* The most one write may carry now. */
static size_t batch_cap(void)
{
    return log_batch ? sizeof(pending.b) : LINE_MAX_BYTES;
}

void log_flush(void)
{
    size_t off = 0, n, cap = batch_cap();

    /* whole lines, at most cap bytes a write: a line is never longer
     * than LINE_MAX_BYTES, so each window ends a line (more than cap
     * lines were collected only if the log became a pipe since) */
    while (off < pending.n) {
        n = pending.n - off;
        if (n > cap)
            for (n = cap; pending.b[off + n - 1] != '\n';)
                n--;
        write_all(pending.b + off, n);
        off += n;
    }
    pending.n = 0;
}

bool log_pending(void)
{
    return pending.n != 0;
}

bool log_flush_due(void)
{
    return pending.n != 0 && (!log_batch || pending.n >= sizeof(pending.b) / 2);
}

void log_buffer_lines(bool on)
{
    if (!on)
        log_flush();
    pending.on = on;
}

/* -- Building a line -------------------------------------------------- */

struct line {
    char b[LINE_MAX_BYTES];
    size_t n;
};

/* Append n bytes. The budgets above keep them in bounds; past them the
 * rest of the line would be dropped, never overrun. */
static void put(struct line *l, const char *s, size_t n)
{
    if (n > sizeof(l->b) - 2 - l->n)
        return;
    memcpy(l->b + l->n, s, n);
    l->n += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Append v in decimal. */
static void put_int(struct line *l, int64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;

    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--i] = '-';
    put(l, tmp + i, sizeof(tmp) - i);
}

/* Append ' name=' (text) or ',"name":' (JSON). */
static void put_name(struct line *l, const char *name, size_t len)
{
    if (log_fmt == LOG_JSON) {
        put(l, ",\"", 2);
        put(l, name, len);
        put(l, "\":", 2);
        return;
    }
    if (len + 2 > sizeof(l->b) - 2 - l->n)
        return;
    l->b[l->n] = ' ';
    memcpy(l->b + l->n + 1, name, len);
    l->b[l->n + 1 + len] = '=';
    l->n += len + 2;
}

/* What a byte needs in a value: PLAIN, written as it is (printable ASCII
 * but '"' and '\\'), and BARE, also needing no quotes in text (and not
 * ' ' or '='). */
enum { PLAIN = 1, BARE = 2 };
static const unsigned char byte_kind[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* The escape for one byte, in buf: quotes, backslashes, \n \r \t, and
 * any other byte outside printable ASCII as \xNN (text) or \u00NN (JSON,
 * which has no \x: the line stays plain ASCII). Its length. */
static size_t escape(unsigned char ch, char buf[6])
{
    static const char shorts[] = {
        ['"'] = '"', ['\\'] = '\\', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'
    };
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;

    if (ch < sizeof(shorts) && shorts[ch]) {
        buf[0] = '\\';
        buf[1] = shorts[ch];
        return 2;
    }
    if (ch >= 0x20 && ch <= 0x7e) {
        buf[0] = (char)ch;
        return 1;
    }
    buf[n++] = '\\';
    if (log_fmt == LOG_JSON) {
        memcpy(buf + n, "u00", 3);
        n += 3;
    } else {
        buf[n++] = 'x';
    }
    buf[n++] = hex[ch >> 4];
    buf[n++] = hex[ch & 15];
    return n;
}

/* Append s escaped, at most max bytes of it and then "...". */
static void put_escaped(struct line *l, const char *s, size_t n, size_t max)
{
    size_t i = 0, used = 0, run, len;
    char buf[6];

    while (i < n) {
        /* a run of bytes written as they are, copied at once */
        for (run = 0;
             i + run < n && (byte_kind[(unsigned char)s[i + run]] & PLAIN);
             run++)
            ;
        if (run > max - used) {
            put(l, s + i, max - used);
            put(l, "...", 3);
            return;
        }
        put(l, s + i, run);
        used += run;
        i += run;
        if (i == n)
            return;
        len = escape((unsigned char)s[i++], buf);
        if (used + len > max) {
            put(l, "...", 3);
            return;
        }
        put(l, buf, len);
        used += len;
    }
}

/* Whether a text value must be quoted to stay one field. */
static bool needs_quotes(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!(byte_kind[(unsigned char)s[i]] & BARE))
            return true;
    }
    return n == 0;
}

/* Whether every byte of s[0..n) is PLAIN and BARE: the kinds of four
 * bytes are AND-ed per step, with no branch per byte. */
static bool all_bare(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    unsigned kind = PLAIN | BARE;
    size_t i = 0;

    for (; i + 4 <= n; i += 4)
        kind &= byte_kind[p[i]] & byte_kind[p[i + 1]] & byte_kind[p[i + 2]] &
                byte_kind[p[i + 3]];
    for (; i < n; i++)
        kind &= byte_kind[p[i]];
    return kind == (PLAIN | BARE);
}

/* Append a string field: ' name=value' (quoted if need be) in text,
 * ',"name":"value"' in JSON. */
static void field_str(struct line *l, const char *name, size_t name_len,
                      const char *s, size_t n, size_t max)
{
    bool quote;

    put_name(l, name, name_len);
    if (log_fmt == LOG_TEXT && n > 0 && n <= max && all_bare(s, n)) {
        put(l, s, n); /* the usual value: nothing to quote or escape */
        return;
    }
    quote = log_fmt == LOG_JSON || needs_quotes(s, n);
    if (quote)
        put(l, "\"", 1);
    put_escaped(l, s, n, max);
    if (quote)
        put(l, "\"", 1);
}

static void field_int(struct line *l, const char *name, size_t name_len,
                      int64_t v)
{
    put_name(l, name, name_len);
    put_int(l, v);
}

/* field_str and field_int with a literal name. */
#define FIELD_STR(l, lit, s, n, max)                                           \
    field_str((l), "" lit, sizeof(lit) - 1, (s), (n), (max))
#define FIELD_INT(l, lit, v) field_int((l), "" lit, sizeof(lit) - 1, (v))

/* The line's start: the time (UTC, milliseconds), level and message. */
static void start(struct line *l, enum log_level level, const char *msg,
                  size_t msg_len)
{
    static _Thread_local char when[32];
    static _Thread_local time_t when_s = -1;
    char ms[4]; /* ".mmm" */
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != when_s && gmtime_r(&ts.tv_sec, &tm)) {
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        when_s = ts.tv_sec;
    }
    l->n = 0;
    ms[0] = '.';
    ms[1] = (char)('0' + ts.tv_nsec / 100000000);
    ms[2] = (char)('0' + ts.tv_nsec / 10000000 % 10);
    ms[3] = (char)('0' + ts.tv_nsec / 1000000 % 10);
    if (log_fmt == LOG_JSON) {
        put(l, "{\"ts\":\"", 7);
        puts_(l, when);
        put(l, ms, sizeof(ms));
        put(l, "Z\",\"level\":\"", 12);
        puts_(l, level_names[level]);
        put(l, "\",\"msg\":\"", 9);
        put_escaped(l, msg, msg_len, MSG_MAX);
        put(l, "\"", 1);
        return;
    }
    puts_(l, when);
    put(l, ms, sizeof(ms));
    put(l, "Z ", 2);
    puts_(l, level_names[level]);
    put(l, " ", 1);
    put_escaped(l, msg, msg_len, MSG_MAX);
}

/* End the line (put() kept 2 bytes for the end) and write it whole, or
 * add it to this thread's pending lines. Never more than PIPE_BUF bytes
 * in one write: lines from threads never mix. */
static void end_line(struct line *l)
{
    if (log_fmt == LOG_JSON)
        l->b[l->n++] = '}';
    l->b[l->n++] = '\n';
}

static void finish(struct line *l)
{
    end_line(l);
    if (!pending.on) {
        write_all(l->b, l->n);
        return;
    }
    if (pending.n + l->n > batch_cap())
        log_flush();
    memcpy(pending.b + pending.n, l->b, l->n);
    pending.n += l->n;
}

/* -- Lines ------------------------------------------------------------ */

static bool enabled(enum log_level level)
{
    return level <= log_max;
}

bool log_enabled(enum log_level level)
{
    return enabled(level);
}

static void log_vmsg(enum log_level level, uint64_t suppressed, const char *fmt,
                     va_list ap) __attribute__((format(printf, 3, 0)));

/* Write a message line; with "(N similar lines suppressed)" at its end
 * when suppressed is not 0. */
static void log_vmsg(enum log_level level, uint64_t suppressed, const char *fmt,
                     va_list ap)
{
    char msg[LINE_MAX_BYTES];
    size_t len;
    struct line l;
    int n;

    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    len = n < 0 ? 0 : (size_t)n < sizeof(msg) ? (size_t)n : strlen(msg);
    if (suppressed) {
        n = snprintf(msg + len, sizeof(msg) - len,
                     " (%" PRIu64 " similar lines suppressed)", suppressed);
        if (n > 0)
            len += strlen(msg + len); /* cut at the buffer's end */
    }
    start(&l, level, msg, len);
    end_line(&l);
    log_flush(); /* in order, and at once: an operator's line never waits */
    write_all(l.b, l.n);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;

    if (!enabled(level) || level > LOG_DEBUG)
        return;
    va_start(ap, fmt);
    log_vmsg(level, 0, fmt, ap);
    va_end(ap);
}

void log_limited(struct log_limit *lim, enum log_level level, const char *fmt,
                 ...)
{
    struct timespec ts;
    int64_t now, last = atomic_load(&lim->last_ms);
    va_list ap;

    if (!enabled(level) || level > LOG_DEBUG)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    /* a second after the last line, one thread wins; the others count */
    if (now - last < 1000 ||
        !atomic_compare_exchange_strong(&lim->last_ms, &last, now)) {
        atomic_fetch_add(&lim->suppressed, 1);
        return;
    }
    va_start(ap, fmt);
    log_vmsg(level, atomic_exchange(&lim->suppressed, 0), fmt, ap);
    va_end(ap);
}

/* "k:" and the first 12 hex digits of the key's SHA-256, in out[16]. */
static void key_digest(const char *key, size_t len, char out[16])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256_CTX ctx;
    int i;

    /* not SHA256(): in OpenSSL 3 it fetches the algorithm and allocates */
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, key, len);
    SHA256_Final(md, &ctx);
    memcpy(out, "k:", 2);
    for (i = 0; i < DIGEST_BYTES; i++) {
        out[2 + 2 * i] = hex[md[i] >> 4];
        out[3 + 2 * i] = hex[md[i] & 15];
    }
    out[2 + 2 * DIGEST_BYTES] = '\0';
}

void log_decision(const struct log_decision *d)
{
    const char *client = d->client ? d->client : "-";
    const char *outcome = d->outcome ? d->outcome : "-";
    char digest[16];
    struct line l;

    if (!enabled(LOG_INFO))
        return;
    start(&l, LOG_INFO, "decision", 8);
    FIELD_STR(&l, "client", client, strlen(client), SHORT_MAX);
    FIELD_STR(&l, "method", d->method, d->method ? d->method_len : 0,
              SHORT_MAX);
    FIELD_STR(&l, "target", d->target, d->target ? d->target_len : 0,
              TARGET_MAX);
    if (d->protocol)
        FIELD_STR(&l, "protocol", d->protocol, strlen(d->protocol), SHORT_MAX);
    if (d->key && log_clear_keys) {
        FIELD_STR(&l, "key", d->key, d->key_len, KEY_MAX);
    } else if (d->key) {
        key_digest(d->key, d->key_len, digest);
        FIELD_STR(&l, "key", digest, strlen(digest), KEY_MAX);
    }
    if (d->request_id)
        FIELD_STR(&l, "request_id", d->request_id, d->request_id_len, RID_MAX);
    FIELD_STR(&l, "outcome", outcome, strlen(outcome), SHORT_MAX);
    FIELD_INT(&l, "status", d->status);
    FIELD_INT(&l, "bytes_sent", (int64_t)d->bytes_sent);
    if (d->upstream)
        FIELD_STR(&l, "upstream", d->upstream, strlen(d->upstream), SHORT_MAX);
    FIELD_INT(&l, "upstream_us", d->upstream_us);
    FIELD_INT(&l, "total_us", (int64_t)d->total_us);
    if (d->user_agent)
        FIELD_STR(&l, "user_agent", d->user_agent, d->user_agent_len,
                  AGENT_MAX);
    finish(&l);
}
