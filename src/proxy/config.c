/* idemproxy's configuration: one table of options drives the flags, the
 * config file keys, the defaults and --help. Each option names a kind of
 * value (duration, size, address, list, ...) whose parser fills a field
 * of struct config; every refusal is one "idemproxy: ..." line on err.
 * Here: the messages, the kinds, the table and config_parse; reading argv
 * and files is config_read.c, --help and the manual pages config_doc.c. */
#include "config_internal.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idem/idem.h"
#include "idem/redis.h"
#include "target.h"

#define MAX_WORKERS 256
#define DEFAULT_WAIT_MS 10000
#define QUOTE_MAX 64 /* bytes of a bad value quoted in a message */

/* -- Messages --------------------------------------------------------- */

/* Write n bytes of s with quotes, backslashes and every byte outside
 * printable ASCII escaped, so a message stays one line. */
void config_put_escaped(FILE *f, const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n && i < QUOTE_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch > 0x7e)
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
    if (n > QUOTE_MAX)
        fputs("...", f);
}

/* "idemproxy: ", and "FILE:LINE: " while a config file is read. */
void config_prefix(struct parse *p)
{
    fputs("idemproxy: ", p->err);
    if (p->file)
        fprintf(p->err, "%s:%u: ", p->file, p->line);
}

int config_fail(struct parse *p, const char *fmt, ...)
{
    va_list ap;

    config_prefix(p);
    va_start(ap, fmt);
    vfprintf(p->err, fmt, ap);
    va_end(ap);
    fputc('\n', p->err);
    return -1;
}

/* "--name" on the command line, "name" in a file. */
const char *config_dashes(const struct parse *p)
{
    return p->file ? "" : "--";
}

/* 'idemproxy: --name: "value" <why>'. -1. */
static int bad(struct parse *p, const struct option *o, const char *v,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int bad(struct parse *p, const struct option *o, const char *v,
               const char *fmt, ...)
{
    va_list ap;

    config_prefix(p);
    fprintf(p->err, "%s%s: \"", config_dashes(p), o->name);
    config_put_escaped(p->err, v, strlen(v));
    fputs("\" ", p->err);
    va_start(ap, fmt);
    vfprintf(p->err, fmt, ap);
    va_end(ap);
    fputc('\n', p->err);
    return -1;
}

static int malformed(struct parse *p, const struct option *o, const char *v)
{
    return bad(p, o, v, "is not %s", o->kind->what);
}

int config_out_of_memory(struct parse *p)
{
    return config_fail(p, "out of memory");
}

/* -- Kinds ------------------------------------------------------------ */

/* o's field in base: the struct config, or a struct route. */
static void *field(void *base, const struct option *o)
{
    return (char *)base + o->off;
}

static int in_range(struct parse *p, const struct option *o, const char *v,
                    uint64_t x)
{
    if (o->max && (x < o->min || x > o->max))
        return bad(p, o, v, "is not in %" PRIu64 "..%" PRIu64, o->min, o->max);
    if (x < o->min)
        return bad(p, o, v, "must be more than zero");
    return 0;
}

/* A number in the kind's units, within the kind's limit and o's bounds,
 * stored as the kind's type. */
static int parse_number(struct parse *p, const struct option *o, const char *v)
{
    const struct kind *k = o->kind;
    void *f = field(p->base, o);
    uint64_t x;
    int rc = config_scaled(v, k->units, k->limit, &x);

    if (rc == -2)
        return bad(p, o, v, "is too large");
    if (rc != 0)
        return malformed(p, o, v);
    if (in_range(p, o, v, x) != 0)
        return -1;
    if (k->type == NUMBER_UNSIGNED)
        *(unsigned *)f = (unsigned)x;
    else if (k->type == NUMBER_INT64)
        *(int64_t *)f = (int64_t)x;
    else
        *(size_t *)f = (size_t)x;
    return 0;
}

/* A count, or "auto": the online cores, within the bounds. */
static int parse_workers(struct parse *p, const struct option *o, const char *v)
{
    long cores;

    if (strcmp(v, "auto") != 0)
        return parse_number(p, o, v);
    cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < (long)o->min)
        cores = (long)o->min;
    if (cores > (long)o->max)
        cores = (long)o->max;
    *(unsigned *)field(p->base, o) = (unsigned)cores;
    return 0;
}

static int parse_addr(struct parse *p, const struct option *o, const char *v)
{
    if (config_addr(v, field(p->base, o)) != 0)
        return malformed(p, o, v);
    return 0;
}

static int parse_admin(struct parse *p, const struct option *o, const char *v)
{
    p->c->admin_enabled = strcmp(v, "off") != 0;
    if (p->c->admin_enabled)
        return parse_addr(p, o, v);
    return 0;
}

/* Replace the string field with a copy of v. */
static int keep_string(struct parse *p, const struct option *o, const char *v)
{
    char **s = field(p->base, o);
    char *copy = strdup(v);

    if (!copy)
        return config_out_of_memory(p);
    free(*s);
    *s = copy;
    return 0;
}

static int parse_path(struct parse *p, const struct option *o, const char *v)
{
    return *v ? keep_string(p, o, v) : malformed(p, o, v);
}

static int parse_host(struct parse *p, const struct option *o, const char *v)
{
    return config_is_hostname(v, strlen(v)) ? keep_string(p, o, v)
                                            : malformed(p, o, v);
}

static int parse_token(struct parse *p, const struct option *o, const char *v)
{
    return config_is_token(v, strlen(v)) ? keep_string(p, o, v)
                                         : malformed(p, o, v);
}

/* "memory", or a Redis URL the Redis store accepts. */
static int parse_store(struct parse *p, const struct option *o, const char *v)
{
    struct idem_store_redis_opts ro = { .url = v };
    struct idem_store *s = NULL;
    int rc;

    if (strcmp(v, "memory") == 0)
        return keep_string(p, o, v);
    rc = idem_store_redis_new(&ro, &s);
    idem_store_free(s);
    if (rc == IDEM_EINVAL && strncmp(v, "redis-", 6) == 0)
        return bad(p, o, v,
                   "is not redis-cluster://HOST:PORT[,HOST:PORT...] or "
                   "redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTER");
    if (rc == IDEM_EINVAL)
        return bad(p, o, v,
                   "is not memory, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] "
                   "or unix:///PATH[?db=N]");
    if (rc != IDEM_OK)
        return config_fail(p, "--store: %s", idem_strerror(rc));
    return keep_string(p, o, v);
}

/* A Redis key prefix: printable, no spaces or braces (they would move
 * the hash tag), at most 256 bytes. */
static int parse_redis_prefix(struct parse *p, const struct option *o,
                              const char *v)
{
    size_t i, n = strlen(v);

    for (i = 0; i < n; i++)
        if (v[i] <= ' ' || v[i] > '~' || v[i] == '{' || v[i] == '}')
            break;
    if (n == 0 || n > 256 || i < n)
        return bad(p, o, v,
                   "must be 1-256 printable characters without spaces or "
                   "braces");
    return keep_string(p, o, v);
}

static void release_string(void *base, const struct option *o)
{
    char **s = field(base, o);

    free(*s);
    *s = NULL;
}

static int parse_list(struct parse *p, const struct option *o, const char *v)
{
    char ***items = field(p->base, o);
    size_t *n = (size_t *)((char *)p->base + o->count_off);
    char **fresh;
    size_t nfresh;
    int rc = config_split_list(v, &fresh, &nfresh);

    if (rc == -2)
        return config_out_of_memory(p);
    if (rc != 0 || nfresh < o->min) {
        if (rc == 0)
            config_free_list(fresh, nfresh);
        return malformed(p, o, v);
    }
    config_free_list(*items, *n);
    *items = fresh;
    *n = nfresh;
    return 0;
}

/* A repeatable path prefix ("/payments"): each one adds to the list. */
static int parse_prefix(struct parse *p, const struct option *o, const char *v)
{
    char ***items = field(p->base, o);
    size_t *n = (size_t *)((char *)p->base + o->count_off);
    char **grown = NULL, *copy;

    if (v[0] != '/' || !config_is_visible(v))
        return malformed(p, o, v);
    copy = strdup(v);
    if (copy)
        grown = realloc(*items, (*n + 1) * sizeof(**items));
    if (!grown) {
        free(copy);
        return config_out_of_memory(p);
    }
    grown[(*n)++] = copy;
    *items = grown;
    return 0;
}

/* An --upstream. Repeated in one place (the flags, or one file) they add
 * up; a later place replaces the list. */
static int parse_upstream(struct parse *p, const struct option *o,
                          const char *v)
{
    struct config *c = p->c;
    struct upstream_url u, *grown;

    if (config_upstream(v, &u) != 0)
        return malformed(p, o, v);
    if (p->up_any && p->up_src != p->file)
        c->nupstreams = 0;
    p->up_any = true;
    p->up_src = p->file;
    grown = realloc(c->upstreams, (c->nupstreams + 1) * sizeof(*grown));
    if (!grown)
        return config_out_of_memory(p);
    grown[c->nupstreams++] = u;
    c->upstreams = grown;
    return 0;
}

static void release_upstreams(void *base, const struct option *o)
{
    struct config *c = base;

    (void)o;
    free(c->upstreams);
    c->upstreams = NULL;
    c->nupstreams = 0;
    free(c->upstream_sni);
    c->upstream_sni = NULL;
}

/* CIDR,CIDR,...: replaces the list ("" empties it). */
static int parse_cidrs(struct parse *p, const struct option *o, const char *v)
{
    struct cidr *list = calloc(strlen(v) / 2 + 1, sizeof(*list));
    size_t n = 0, len;
    char item[64];
    const char *q;

    if (!list)
        return config_out_of_memory(p);
    for (q = v + strspn(v, " \t"); *q; q += strspn(q, ", \t")) {
        len = strcspn(q, ", \t");
        if (len >= sizeof(item) ||
            (snprintf(item, sizeof(item), "%.*s", (int)len, q),
             config_cidr(item, &list[n++]) != 0)) {
            free(list);
            return malformed(p, o, v);
        }
        q += len;
    }
    free(p->c->trusted);
    p->c->trusted = list;
    p->c->ntrusted = n;
    return 0;
}

static void release_cidrs(void *base, const struct option *o)
{
    struct config *c = base;

    (void)o;
    free(c->trusted);
    c->trusted = NULL;
    c->ntrusted = 0;
}

static void release_list(void *base, const struct option *o)
{
    char ***items = field(base, o);
    size_t *n = (size_t *)((char *)base + o->count_off);

    config_free_list(*items, *n);
    *items = NULL;
    *n = 0;
}

/* One of o->names, stored as its index in an enum field. */
static int parse_enum(struct parse *p, const struct option *o, const char *v)
{
    char all[128] = "";
    size_t len = 0;
    int i;

    for (i = 0; o->names[i]; i++) {
        if (strcmp(v, o->names[i]) == 0) {
            *(int *)field(p->base, o) = i;
            return 0;
        }
        if (len < sizeof(all))
            len += (size_t)snprintf(all + len, sizeof(all) - len, "%s%s",
                                    i ? ", " : "", o->names[i]);
    }
    return bad(p, o, v, "is not one of %s", all);
}

/* "reject", "wait" (for the default bound) or "wait:DURATION". */
static int parse_conflict(struct parse *p, const struct option *o,
                          const char *v)
{
    int64_t ms = DEFAULT_WAIT_MS;

    if (strcmp(v, "reject") == 0) {
        *(int *)field(p->base, o) = IDEM_CONFLICT_REJECT;
    } else if (strcmp(v, "wait") == 0 ||
               (strncmp(v, "wait:", 5) == 0 &&
                config_duration_ms(v + 5, &ms) == 0 && ms > 0)) {
        *(int *)field(p->base, o) = IDEM_CONFLICT_WAIT;
    } else {
        return malformed(p, o, v);
    }
    *(int64_t *)((char *)p->base + o->count_off) = ms; /* the wait's bound */
    return 0;
}

/* Bare (a flag, or a key alone on its line): true. */
static int parse_bool(struct parse *p, const struct option *o, const char *v)
{
    bool *b = field(p->base, o);

    if (!v || strcmp(v, "true") == 0)
        *b = true;
    else if (strcmp(v, "false") == 0)
        *b = false;
    else
        return malformed(p, o, v);
    return 0;
}

static int print_version(struct parse *p, const struct option *o, const char *v)
{
    (void)o;
    (void)v;
    fprintf(p->out, "idemproxy %s\n", IDEM_VERSION_STRING);
    return 1;
}

/* clang-format off */
static const struct kind
    k_duration = { .parse = parse_number, .units = config_duration_units,
                   .limit = INT64_MAX, .type = NUMBER_INT64,
                   .what = "a duration (e.g. 30s, 5m, 24h)" },
    k_size = { .parse = parse_number, .units = config_size_units, .limit = SIZE_MAX,
               .type = NUMBER_SIZE, .what = "a size (e.g. 512K, 64M, 1G)" },
    k_uint = { .parse = parse_number, .units = config_plain_units, .limit = UINT_MAX,
               .type = NUMBER_UNSIGNED, .what = "a number" },
    k_workers = { .parse = parse_workers, .units = config_plain_units, .limit = UINT_MAX,
                  .type = NUMBER_UNSIGNED, .what = "a number or auto" },
    k_addr = { .parse = parse_addr,
               .what = "an address (host:port, [v6]:port)" },
    k_upstream = { .parse = parse_upstream, .release = release_upstreams,
                   .what = "an upstream (host:port, http://host:port, "
                           "https://host:port or unix:/path)" },
    k_cidrs = { .parse = parse_cidrs, .release = release_cidrs,
                .what = "a comma-separated list of networks (e.g. "
                        "10.0.0.0/8,::1/128)" },
    k_admin = { .parse = parse_admin,
                .what = "an address (host:port, [v6]:port) or off" },
    k_store = { .parse = parse_store, .release = release_string },
    k_redis_prefix = { .parse = parse_redis_prefix, .release = release_string },
    k_path = { .parse = parse_path, .release = release_string,
               .what = "a file name" },
    k_host = { .parse = parse_host, .release = release_string,
               .what = "a host name" },
    k_token = { .parse = parse_token, .release = release_string,
                .what = "a header name" },
    k_list = { .parse = parse_list, .release = release_list,
               .what = "a comma-separated list of HTTP tokens (e.g. "
                       "POST,PATCH)" },
    k_prefix = { .parse = parse_prefix, .release = release_list,
                 .what = "a path prefix (e.g. /payments)" },
    k_enum = { .parse = parse_enum },
    k_conflict = { .parse = parse_conflict,
                   .what = "reject, wait or wait:DURATION (e.g. wait:5s)" },
    k_bool = { .parse = parse_bool, .value = VALUE_OPTIONAL,
               .what = "true or false" },
    k_help = { .parse = config_print_help, .value = VALUE_NONE },
    k_version = { .parse = print_version, .value = VALUE_NONE },
    k_config = { .parse = config_read_file };
/* clang-format on */

/* -- The options ------------------------------------------------------ */

#define AT(f) offsetof(struct config, f)

static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
static const char *const formats[] = { "text", "json", NULL };
static const char *const failures[] = { "closed", "open", NULL };
static const char *const unknowns[] = { "hold", "release", NULL };
static const char *const fulls[] = { "refuse", "evict", NULL };

/* The options, in --help's order. Kept one per two lines by hand. */
/* clang-format off */
const struct option config_options[] = {
    { .name = "listen", .kind = &k_addr, .off = AT(listen), .arg = "HOST:PORT",
      .def = "127.0.0.1:8080", .help = "where clients connect" },
    { .name = "upstream", .kind = &k_upstream, .arg = "URL",
      .help = "the application (required, repeatable)" },
    { .name = "resolve-interval", .kind = &k_duration,
      .off = AT(resolve_interval_ms), .min = 1, .arg = "DURATION",
      .def = "5s", .help = "upstream names looked up again" },
    { .name = "trusted-proxies", .kind = &k_cidrs, .arg = "CIDR,...",
      .unset = "none", .help = "peers whose X-Forwarded-* are kept" },
    { .name = "admin-listen", .kind = &k_admin, .off = AT(admin),
      .arg = "HOST:PORT", .def = "127.0.0.1:9090",
      .help = "admin endpoints, or off" },
    { .name = "workers", .kind = &k_workers, .off = AT(workers), .min = 1,
      .max = MAX_WORKERS, .arg = "N", .def = "auto",
      .help = "worker threads, 1..256, or auto" },
    { .name = "store", .kind = &k_store, .off = AT(store), .arg = "STORE",
      .def = "memory", .help = "memory, redis://, redis-cluster://, redis-sentinel://, "
              "unix://" },
    { .name = "redis-prefix", .kind = &k_redis_prefix, .off = AT(redis_prefix),
      .arg = "PREFIX", .def = "idem", .help = "Redis keys: PREFIX:{scope:key}" },
    { .name = "redis-timeout", .kind = &k_duration, .off = AT(redis_timeout_ms),
      .min = 1, .arg = "DURATION", .def = "1s",
      .help = "to connect to Redis, and per command" },
    { .name = "redis-replicas", .kind = &k_uint, .off = AT(redis_replicas),
      .max = 16, .arg = "N", .def = "0",
      .help = "replicas each write waits for (WAIT), 0..16" },
    { .name = "store-failure", .kind = &k_enum, .off = AT(store_failure),
      .names = failures, .arg = "MODE", .def = "closed",
      .help = "store down: closed (503) or open (pass)" },
    { .name = "lifetime", .kind = &k_duration, .off = AT(lifetime_ms),
      .min = 1, .arg = "DURATION", .def = "24h",
      .help = "how long a response is replayed" },
    { .name = "lease", .kind = &k_duration, .off = AT(lease_ms), .min = 1,
      .arg = "DURATION", .def = "60s",
      .help = "longest a key is held in flight" },
    { .name = "unknown-outcome", .kind = &k_enum, .off = AT(unknown_outcome),
      .names = unknowns, .arg = "MODE", .def = "hold",
      .help = "may have run, no answer: hold or release" },
    { .name = "max-memory", .kind = &k_size, .off = AT(max_memory), .min = 1,
      .arg = "SIZE", .def = "64M", .help = "memory for stored records" },
    { .name = "min-retention", .kind = &k_duration,
      .off = AT(min_retention_ms), .arg = "DURATION", .def = "10m",
      .help = "records never evicted younger" },
    { .name = "when-full", .kind = &k_enum, .off = AT(when_full),
      .names = fulls, .arg = "MODE", .def = "refuse",
      .help = "no room: refuse (503) or evict" },
    { .name = "max-body", .kind = &k_size, .off = AT(max_body), .min = 1,
      .arg = "SIZE", .def = "1M", .help = "longest request body (413)" },
    { .name = "max-stored-body", .kind = &k_size, .off = AT(max_stored_body),
      .min = 1, .arg = "SIZE", .def = "1M",
      .help = "longest response body stored" },
    { .name = "max-header-bytes", .kind = &k_size,
      .off = AT(max_header_bytes), .min = 1, .arg = "SIZE", .def = "16K",
      .help = "request header bytes (431)" },
    { .name = "max-headers", .kind = &k_uint, .off = AT(max_headers),
      .min = 1, .max = 10000, .arg = "N", .def = "100",
      .help = "request header fields (431)" },
    { .name = "conflict", .kind = &k_conflict, .off = AT(conflict),
      .count_off = AT(wait_ms),
      .arg = "MODE", .def = "reject", .help = "reject (409) or wait:DURATION" },
    { .name = "methods", .kind = &k_list, .off = AT(methods),
      .count_off = AT(nmethods), .min = 1, .arg = "LIST", .def = "POST,PATCH",
      .help = "methods that honour keys" },
    { .name = "key-header", .kind = &k_token, .off = AT(key_header),
      .arg = "NAME", .def = "Idempotency-Key", .help = "the key's header" },
    { .name = "alt-key-header", .kind = &k_token, .off = AT(alt_key_header),
      .arg = "NAME", .unset = "none", .help = "a second name for it" },
    { .name = "scope-headers", .kind = &k_list, .off = AT(scope_headers),
      .count_off = AT(nscope_headers), .arg = "LIST", .def = "Authorization",
      .help = "headers scoping keys" },
    { .name = "require-key", .kind = &k_prefix, .off = AT(require_key),
      .count_off = AT(nrequire_key), .arg = "PREFIX", .unset = "none",
      .help = "paths needing a key (repeatable)" },
    { .name = "snapshot", .kind = &k_path, .off = AT(snapshot), .arg = "FILE",
      .unset = "none", .help = "saved at exit, loaded at start" },
    { .name = "client-timeout", .kind = &k_duration,
      .off = AT(client_timeout_ms), .min = 1, .arg = "DURATION", .def = "60s",
      .help = "to receive a request" },
    { .name = "upstream-timeout", .kind = &k_duration,
      .off = AT(upstream_timeout_ms), .min = 1, .arg = "DURATION",
      .def = "60s", .help = "for the upstream's answer (504)" },
    { .name = "connect-timeout", .kind = &k_duration,
      .off = AT(connect_timeout_ms), .min = 1, .arg = "DURATION", .def = "5s",
      .help = "to connect to the upstream (502)" },
    { .name = "shutdown-timeout", .kind = &k_duration,
      .off = AT(shutdown_timeout_ms), .arg = "DURATION", .def = "30s",
      .help = "to finish requests at shutdown" },
    { .name = "upstream-idle", .kind = &k_uint, .off = AT(upstream_idle),
      .min = 0, .max = 100000, .arg = "N", .def = "64",
      .help = "idle upstream connections/worker" },
    { .name = "h2-max-streams", .kind = &k_uint, .off = AT(h2_max_streams),
      .min = 0, .max = 100000, .arg = "N", .def = "128",
      .help = "HTTP/2 streams/connection, 0: off" },
    { .name = "h2-max-resets", .kind = &k_uint, .off = AT(h2_max_resets),
      .min = 1, .max = 1000000, .arg = "N", .def = "100",
      .help = "HTTP/2 client resets/s (GOAWAY)" },
    { .name = "log-level", .kind = &k_enum, .off = AT(log_level),
      .names = levels, .arg = "LEVEL", .def = "info",
      .help = "error, warn, info or debug" },
    { .name = "log-format", .kind = &k_enum, .off = AT(log_format),
      .names = formats, .arg = "FORMAT", .def = "text",
      .help = "text or json" },
    { .name = "log-file", .kind = &k_path, .off = AT(log_file), .arg = "FILE",
      .unset = "stderr", .help = "log here; reopened on SIGHUP" },
    { .name = "log-keys", .kind = &k_bool, .off = AT(log_keys),
      .unset = "off", .help = "log keys, not their digests" },
    { .name = "tls-cert", .kind = &k_path, .off = AT(tls_cert), .arg = "FILE",
      .unset = "none", .help = "listen with TLS: certificate chain" },
    { .name = "tls-key", .kind = &k_path, .off = AT(tls_key), .arg = "FILE",
      .unset = "none", .help = "its private key" },
    { .name = "upstream-tls", .kind = &k_bool, .off = AT(upstream_tls),
      .unset = "off", .help = "speak TLS to the upstream" },
    { .name = "upstream-ca", .kind = &k_path, .off = AT(upstream_ca),
      .arg = "FILE", .unset = "system CAs",
      .help = "CAs that verify the upstream" },
    { .name = "upstream-sni", .kind = &k_host, .off = AT(upstream_sni),
      .arg = "NAME", .unset = "upstream host",
      .help = "name sent and verified" },
    { .name = "upstream-cert", .kind = &k_path, .off = AT(upstream_cert),
      .arg = "FILE", .unset = "none", .help = "client certificate, for mTLS" },
    { .name = "upstream-key", .kind = &k_path, .off = AT(upstream_key),
      .arg = "FILE", .unset = "none", .help = "its private key" },
    { .name = "tunnel-idle", .kind = &k_duration,
      .off = AT(tunnel_idle_ms), .min = 1, .arg = "DURATION", .def = "60s",
      .help = "an upgraded connection idle" },
    { .name = "tunnel-max", .kind = &k_duration,
      .off = AT(tunnel_max_ms), .min = 1, .arg = "DURATION", .def = "1h",
      .help = "an upgraded connection at most" },
    { .name = "config", .kind = &k_config, .arg = "FILE",
      .help = "read options from FILE", .flag_only = true },
    { .name = "help", .kind = &k_help, .help = "print this and exit",
      .flag_only = true },
    { .name = "version", .kind = &k_version, .help = "print the version",
      .flag_only = true },
};
/* clang-format on */

const size_t config_noptions =
    sizeof(config_options) / sizeof(config_options[0]);

#define IN_ROUTE(f) offsetof(struct route, f)

/* The keys of a [route PREFIX] section: each one a rule of the global
 * option of the same name, for the paths under PREFIX. */
/* clang-format off */
const struct option config_route_options[] = {
    { .name = "methods", .kind = &k_list, .off = IN_ROUTE(methods),
      .count_off = IN_ROUTE(nmethods), .min = 1, .arg = "LIST",
      .help = "methods that honour keys here" },
    { .name = "lifetime", .kind = &k_duration, .off = IN_ROUTE(lifetime_ms),
      .min = 1, .arg = "DURATION", .help = "how long a response is replayed" },
    { .name = "require-key", .kind = &k_bool, .off = IN_ROUTE(require_key),
      .arg = "BOOL", .help = "refuse requests without a key (400)" },
    { .name = "conflict", .kind = &k_conflict, .off = IN_ROUTE(conflict),
      .count_off = IN_ROUTE(wait_ms), .arg = "MODE",
      .help = "reject (409) or wait:DURATION" },
    { .name = "max-stored-body", .kind = &k_size,
      .off = IN_ROUTE(max_stored_body), .min = 1, .arg = "SIZE",
      .help = "longest response body stored" },
};
/* clang-format on */

const size_t config_nroute_options =
    sizeof(config_route_options) / sizeof(config_route_options[0]);

_Static_assert(sizeof(enum log_level) == sizeof(int), "enum fields as int");
_Static_assert(sizeof(enum log_format) == sizeof(int), "enum fields as int");
_Static_assert(sizeof(enum store_failure) == sizeof(int), "enum fields as int");
_Static_assert(sizeof(enum when_full) == sizeof(int), "enum fields as int");
_Static_assert(sizeof(enum idem_conflict_mode) == sizeof(int),
               "enum fields as int");
_Static_assert(sizeof(enum idem_unknown_policy) == sizeof(int) &&
                   IDEM_UNKNOWN_HOLD == 0 && IDEM_UNKNOWN_RELEASE == 1,
               "enum fields as int, in the order of unknowns[]");

/* After every flag and file: each --require-key prefix is a route that
 * requires a key; the https:// upstream's name is the TLS server name. */
static int finish(struct parse *p)
{
    struct config *c = p->c;
    struct route *r;
    size_t i;

    if (c->nupstreams == 0)
        return config_fail(p, "--upstream is required");
    if (c->snapshot && !config_store_is_memory(c))
        return config_fail(p, "--snapshot applies to the memory store only");
    if (!c->tls_cert != !c->tls_key)
        return config_fail(p, "--tls-cert and --tls-key go together");
    if (!c->upstream_cert != !c->upstream_key)
        return config_fail(p, "--upstream-cert and --upstream-key go together");
    for (i = 0; i < c->nrequire_key; i++) {
        if (!(r = config_route_for(c, c->require_key[i])))
            return config_out_of_memory(p);
        r->require_key = true;
    }
    for (i = 0; i < c->nupstreams; i++) {
        if (c->upstreams[i].tls != c->upstreams[0].tls)
            return config_fail(p,
                               "--upstream: http and https upstreams cannot be "
                               "mixed");
    }
    /* https:// (or --upstream-tls); the name checked is --upstream-sni or
     * the first upstream's host (tls.c: an IP literal is checked against
     * the certificate's addresses and sends no SNI) */
    c->upstream_tls = c->upstream_tls || c->upstreams[0].tls;
    if (c->upstream_tls && !c->upstream_sni &&
        !config_is_ipv6(c->upstreams[0].addr.host,
                        strlen(c->upstreams[0].addr.host)) &&
        !(c->upstream_sni = strdup(c->upstreams[0].addr.host)))
        return config_out_of_memory(p);
    if (c->min_retention_ms > c->lifetime_ms) /* a record lives no longer */
        c->min_retention_ms = c->lifetime_ms;
    return 0;
}

const struct route *config_route(const struct config *c, const char *path,
                                 size_t len)
{
    const struct route *best = NULL;
    size_t i, n, best_len = 0;

    for (i = 0; i < c->nroutes; i++) {
        n = strlen(c->routes[i].prefix);
        if ((!best || n > best_len) &&
            target_has_prefix(path, len, c->routes[i].prefix, n)) {
            best = &c->routes[i];
            best_len = n;
        }
    }
    return best;
}

const struct route *config_route_at(const struct config *c, const char *prefix)
{
    size_t i;

    for (i = 0; i < c->nroutes; i++)
        if (strcmp(c->routes[i].prefix, prefix) == 0)
            return &c->routes[i];
    return NULL;
}

int config_parse(struct config *c, int argc, char **argv, FILE *out, FILE *err)
{
    struct parse p = { .c = c, .base = c, .out = out, .err = err };
    int rc = 0, i;
    size_t k;

    memset(c, 0, sizeof(*c));
    for (k = 0; rc == 0 && k < config_noptions; k++) {
        if (config_options[k].def)
            rc = config_options[k].kind->parse(&p, &config_options[k],
                                               config_options[k].def);
    }
    for (i = 0; rc == 0 && i < argc && argv[i]; i++)
        rc = config_read_flag(&p, argc, argv, &i);
    if (rc == 0)
        rc = finish(&p);
    free(p.section);
    if (rc != 0)
        config_free(c);
    return rc < 0 ? 2 : rc;
}

void config_free(struct config *c)
{
    size_t i;

    for (i = 0; i < config_noptions; i++) {
        if (config_options[i].kind->release)
            config_options[i].kind->release(c, &config_options[i]);
    }
    for (i = 0; i < c->nroutes; i++) {
        free(c->routes[i].prefix);
        config_free_list(c->routes[i].methods, c->routes[i].nmethods);
    }
    free(c->routes);
    c->routes = NULL;
    c->nroutes = 0;
}
