/* Redis URLs: "redis://[[user]:password@]host[:port][/db]" and
 * "unix:///path[?db=N]", parsed strictly (a port in 1..65535, a database
 * number, nothing left over). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "url.h"

#define DEFAULT_PORT 6379

static char *dup_n(const struct idem_env *env, const char *s, size_t n)
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

/* "[[user]:password@]host[:port][/db]" after "redis://". */
static int parse_tcp(const struct idem_env *env, const char *u,
                     struct idem__redis_addr *a)
{
    const char *at = strchr(u, '@'), *host, *hend, *port = NULL, *slash;
    const char *colon;

    if (at) {
        colon = memchr(u, ':', (size_t)(at - u));
        if (!colon)
            return IDEM_EINVAL; /* a user without a password */
        if (colon > u && !(a->user = dup_n(env, u, (size_t)(colon - u))))
            return IDEM_ENOMEM;
        if (!(a->password = dup_n(env, colon + 1, (size_t)(at - colon - 1))))
            return IDEM_ENOMEM;
        u = at + 1;
    }
    slash = strchr(u, '/');
    hend = slash ? slash : u + strlen(u);
    host = u;
    if (*u == '[') { /* [v6 address] */
        const char *close = memchr(u, ']', (size_t)(hend - u));

        if (!close)
            return IDEM_EINVAL;
        host = u + 1;
        port = close[1] == ':' ? close + 2 : NULL;
        if (!port && close + 1 != hend)
            return IDEM_EINVAL;
        hend = close;
    } else if ((colon = memchr(u, ':', (size_t)(hend - u)))) {
        port = colon + 1;
        hend = colon;
    }
    a->port = DEFAULT_PORT;
    if (hend == host ||
        (port &&
         !parse_int(port,
                    (size_t)((slash ? slash : port + strlen(port)) - port), 1,
                    65535, &a->port)) ||
        (slash && !parse_int(slash + 1, strlen(slash + 1), 0, 1000000, &a->db)))
        return IDEM_EINVAL;
    return (a->host = dup_n(env, host, (size_t)(hend - host))) ? IDEM_OK
                                                               : IDEM_ENOMEM;
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
    return (a->path = dup_n(env, u, n)) ? IDEM_OK : IDEM_ENOMEM;
}

int idem__redis_url_parse(const struct idem_env *env, const char *url,
                          struct idem__redis_addr *a)
{
    int rc = IDEM_EINVAL;

    *a = (struct idem__redis_addr){ .port = 0 };
    if (strncmp(url, "redis://", 8) == 0)
        rc = parse_tcp(env, url + 8, a);
    else if (strncmp(url, "unix://", 7) == 0)
        rc = parse_unix(env, url + 7, a);
    if (rc != IDEM_OK)
        idem__redis_addr_free(env, a);
    return rc;
}

void idem__redis_addr_free(const struct idem_env *env,
                           struct idem__redis_addr *a)
{
    idem__free(env, a->host);
    idem__free(env, a->path);
    idem__free(env, a->user);
    idem__free(env, a->password);
    *a = (struct idem__redis_addr){ .port = 0 };
}
