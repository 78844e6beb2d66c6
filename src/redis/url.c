/* Redis URLs: "redis://[[user]:password@]host[:port][/db]",
 * "unix:///path[?db=N]", "redis-cluster://[[user]:password@]host:port[,...]"
 * and "redis-sentinel://[[user]:password@]host:port[,...]/MASTER", parsed
 * strictly (a port in 1..65535, a database number, nothing left over). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "url.h"

#define DEFAULT_PORT 6379
#define SENTINEL_PORT 26379
#define SEEDS_MAX 64

char *idem__redis_strndup(const struct idem_env *env, const char *s, size_t n)
{
    char *d = idem__alloc(env, n + 1);

    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* A decimal in [lo, hi] spanning exactly s[0..n). */
static bool parse_int(const char *s, size_t n, long lo, long hi, int *out)
{
    char buf[16], *end;
    long v;

    if (n == 0 || n >= sizeof(buf) || s[0] < '0' || s[0] > '9')
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    v = strtol(buf, &end, 10);
    if (*end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

/* "[[user]:password@]" at *u: kept in a, *u moved past it. */
static int parse_auth(const struct idem_env *env, const char **u,
                      struct idem__redis_addr *a)
{
    const char *at = strchr(*u, '@'), *colon;

    if (!at)
        return IDEM_OK;
    colon = memchr(*u, ':', (size_t)(at - *u));
    if (!colon)
        return IDEM_EINVAL; /* a user without a password */
    if (colon > *u &&
        !(a->user = idem__redis_strndup(env, *u, (size_t)(colon - *u))))
        return IDEM_ENOMEM;
    if (!(a->password =
              idem__redis_strndup(env, colon + 1, (size_t)(at - colon - 1))))
        return IDEM_ENOMEM;
    *u = at + 1;
    return IDEM_OK;
}

/* "host[:port]" or "[v6][:port]" spanning exactly s[0..n). */
static int parse_hostport(const struct idem_env *env, const char *s, size_t n,
                          int def_port, struct idem__redis_hostport *hp)
{
    const char *end = s + n, *host = s, *hend = end, *port = NULL, *colon;

    if (n && *s == '[') {
        const char *close = memchr(s, ']', n);

        if (!close)
            return IDEM_EINVAL;
        host = s + 1;
        port = close + 1 < end && close[1] == ':' ? close + 2 : NULL;
        if (!port && close + 1 != end)
            return IDEM_EINVAL;
        hend = close;
    } else if ((colon = memchr(s, ':', n))) {
        port = colon + 1;
        hend = colon;
    }
    hp->port = def_port;
    if (hend == host ||
        (port && !parse_int(port, (size_t)(end - port), 1, 65535, &hp->port)))
        return IDEM_EINVAL;
    hp->host = idem__redis_strndup(env, host, (size_t)(hend - host));
    return hp->host ? IDEM_OK : IDEM_ENOMEM;
}

/* "host[:port][/db]" after "redis://" and the credentials. */
static int parse_tcp(const struct idem_env *env, const char *u,
                     struct idem__redis_addr *a)
{
    const char *slash = strchr(u, '/');
    size_t n = slash ? (size_t)(slash - u) : strlen(u);
    struct idem__redis_hostport hp = { NULL, 0 };
    int rc = parse_hostport(env, u, n, DEFAULT_PORT, &hp);

    a->host = hp.host;
    a->port = hp.port;
    if (rc == IDEM_OK && slash &&
        !parse_int(slash + 1, strlen(slash + 1), 0, 1000000, &a->db))
        rc = IDEM_EINVAL;
    return rc;
}

/* "host:port[,host:port...]" spanning exactly s[0..n): a's seeds. */
static int parse_seeds(const struct idem_env *env, const char *s, size_t n,
                       int def_port, struct idem__redis_addr *a)
{
    const char *end = s + n, *comma;
    size_t count = 1, i;
    int rc = IDEM_OK;

    for (i = 0; i < n; i++)
        count += s[i] == ',';
    if (n == 0 || count > SEEDS_MAX)
        return IDEM_EINVAL;
    if (!(a->seeds = idem__alloc(env, count * sizeof(*a->seeds))))
        return IDEM_ENOMEM;
    memset(a->seeds, 0, count * sizeof(*a->seeds));
    for (; rc == IDEM_OK && a->nseeds < count; s = comma + 1) {
        comma = memchr(s, ',', (size_t)(end - s));
        if (!comma)
            comma = end;
        rc = parse_hostport(env, s, (size_t)(comma - s), def_port,
                            &a->seeds[a->nseeds]);
        if (rc == IDEM_OK)
            a->nseeds++;
    }
    return rc;
}

/* A Sentinel master name: printable, no spaces. */
static bool name_ok(const char *s)
{
    size_t i, n = strlen(s);

    for (i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == '/' || s[i] == '?')
            return false;
    return n > 0 && n <= 128;
}

/* What follows "redis-cluster://" or "redis-sentinel://". */
static int parse_many(const struct idem_env *env, const char *u,
                      struct idem__redis_addr *a)
{
    int rc = parse_auth(env, &u, a);
    const char *slash = strchr(u, '/');

    if (rc != IDEM_OK)
        return rc;
    if (a->mode == IDEM__REDIS_CLUSTER)
        return slash ? IDEM_EINVAL
                     : parse_seeds(env, u, strlen(u), DEFAULT_PORT, a);
    if (!slash || !name_ok(slash + 1))
        return IDEM_EINVAL;
    rc = parse_seeds(env, u, (size_t)(slash - u), SENTINEL_PORT, a);
    if (rc == IDEM_OK &&
        !(a->master = idem__redis_strndup(env, slash + 1, strlen(slash + 1))))
        rc = IDEM_ENOMEM;
    return rc;
}

/* "/path[?db=N]" after "unix://". */
static int parse_unix(const struct idem_env *env, const char *u,
                      struct idem__redis_addr *a)
{
    const char *q = strchr(u, '?');
    size_t n = q ? (size_t)(q - u) : strlen(u);

    if (n == 0 || u[0] != '/' ||
        (q && (strncmp(q, "?db=", 4) != 0 ||
               !parse_int(q + 4, strlen(q + 4), 0, 1000000, &a->db))))
        return IDEM_EINVAL;
    return (a->path = idem__redis_strndup(env, u, n)) ? IDEM_OK : IDEM_ENOMEM;
}

int idem__redis_url_parse(const struct idem_env *env, const char *url,
                          struct idem__redis_addr *a)
{
    int rc = IDEM_EINVAL;

    *a = (struct idem__redis_addr){ .port = 0 };
    if (strncmp(url, "redis://", 8) == 0) {
        url += 8;
        rc = parse_auth(env, &url, a);
        if (rc == IDEM_OK)
            rc = parse_tcp(env, url, a);
    } else if (strncmp(url, "unix://", 7) == 0) {
        rc = parse_unix(env, url + 7, a);
    } else if (strncmp(url, "redis-cluster://", 16) == 0) {
        a->mode = IDEM__REDIS_CLUSTER;
        rc = parse_many(env, url + 16, a);
    } else if (strncmp(url, "redis-sentinel://", 17) == 0) {
        a->mode = IDEM__REDIS_SENTINEL;
        rc = parse_many(env, url + 17, a);
    }
    if (rc != IDEM_OK)
        idem__redis_addr_free(env, a);
    return rc;
}

void idem__redis_addr_free(const struct idem_env *env,
                           struct idem__redis_addr *a)
{
    size_t i;

    for (i = 0; i < a->nseeds; i++)
        idem__free(env, a->seeds[i].host);
    idem__free(env, a->seeds);
    idem__free(env, a->master);
    idem__free(env, a->host);
    idem__free(env, a->path);
    idem__free(env, a->user);
    idem__free(env, a->password);
    *a = (struct idem__redis_addr){ .port = 0 };
}
