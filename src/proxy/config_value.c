/* config_value.h: the syntax of option values. */
#include "config_value.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

const struct unit config_plain_units[] = { { "", 1 }, { NULL, 0 } };
const struct unit config_duration_units[] = {
    { "ms", 1 },        { "s", 1000 },        { "", 1000 },
    { "m", 60 * 1000 }, { "h", 3600 * 1000 }, { "d", 86400 * 1000 },
    { NULL, 0 },
};
const struct unit config_size_units[] = {
    { "", 1 },        { "K", 1 << 10 }, { "k", 1 << 10 }, { "M", 1 << 20 },
    { "m", 1 << 20 }, { "G", 1 << 30 }, { "g", 1 << 30 }, { NULL, 0 },
};

/* Digits, then one of units' suffixes; the product at most max. 0, -1
 * if malformed, -2 if too large. */
int config_scaled(const char *s, const struct unit *units, uint64_t max,
                  uint64_t *out)
{
    const char *d;
    uint64_t n = 0;

    for (d = s; *d >= '0' && *d <= '9'; d++) {
        uint64_t digit = (uint64_t)(*d - '0');

        if (n > (max - digit) / 10)
            return -2;
        n = n * 10 + digit;
    }
    if (d == s)
        return -1;
    for (; units->suffix; units++) {
        if (strcmp(d, units->suffix) == 0) {
            if (n > max / units->scale)
                return -2;
            *out = n * units->scale;
            return 0;
        }
    }
    return -1;
}

int config_duration_ms(const char *s, int64_t *ms_out)
{
    uint64_t ms;

    if (!s || config_scaled(s, config_duration_units, INT64_MAX, &ms) != 0)
        return -1;
    *ms_out = (int64_t)ms;
    return 0;
}

int config_size(const char *s, size_t *bytes_out)
{
    uint64_t n;

    if (!s || config_scaled(s, config_size_units, SIZE_MAX, &n) != 0)
        return -1;
    *bytes_out = (size_t)n;
    return 0;
}

static bool is_alnum(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
           (ch >= 'A' && ch <= 'Z');
}

/* A host name or IPv4 literal: letters, digits, '.', '-', '_'. */
bool config_is_hostname(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n >= sizeof(((struct addr *)0)->host))
        return false;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (!is_alnum(ch) && ch != '.' && ch != '-' && ch != '_')
            return false;
    }
    return true;
}

bool config_is_ipv6(const char *s, size_t n)
{
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr in6;

    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &in6) == 1;
}

int config_addr(const char *s, struct addr *a)
{
    const char *host = s, *colon;
    uint64_t port;
    size_t n;

    if (!s)
        return -1;
    if (*s == '[') {
        host = s + 1;
        colon = strchr(host, ']');
        if (!colon || colon[1] != ':' || !config_is_ipv6(host, colon - host))
            return -1;
        n = (size_t)(colon++ - host);
    } else {
        colon = strrchr(s, ':');
        if (!colon || !config_is_hostname(s, (size_t)(colon - s)))
            return -1;
        n = (size_t)(colon - s);
    }
    if (config_scaled(colon + 1, config_plain_units, UINT16_MAX, &port) != 0)
        return -1;
    memcpy(a->host, host, n);
    a->host[n] = '\0';
    a->port = (uint16_t)port;
    return 0;
}

/* "http://" or "https://" and a host with an optional port ("[v6]"
 * for IPv6), nothing after it but an optional "/". */
static int url_host(const char *s, struct upstream_url *u)
{
    char hp[300];
    size_t n = strcspn(s, "/");
    const char *close = memchr(s, ']', n);

    if (n == 0 || n + 8 > sizeof(hp) || (s[n] && strcmp(s + n, "/") != 0))
        return -1;
    if (memchr(close ? close : s, ':', n - (size_t)((close ? close : s) - s)))
        snprintf(hp, sizeof(hp), "%.*s", (int)n, s);
    else
        snprintf(hp, sizeof(hp), "%.*s:%u", (int)n, s, u->tls ? 443 : 80);
    return config_addr(hp, &u->addr);
}

int config_upstream(const char *s, struct upstream_url *u)
{
    memset(u, 0, sizeof(*u));
    if (!s)
        return -1;
    if (strncmp(s, "unix:", 5) == 0) {
        if (s[5] != '/' || strlen(s + 5) >= sizeof(u->path) || !s[6])
            return -1;
        memcpy(u->path, s + 5, strlen(s + 5) + 1);
        return 0;
    }
    if (strncmp(s, "http://", 7) == 0)
        return url_host(s + 7, u);
    if (strncmp(s, "https://", 8) == 0) {
        u->tls = true;
        return url_host(s + 8, u);
    }
    return config_addr(s, &u->addr);
}

int config_cidr(const char *s, struct cidr *c)
{
    char buf[INET6_ADDRSTRLEN];
    const char *slash;
    uint64_t bits;
    size_t n;
    bool v4;

    if (!s)
        return -1;
    slash = strchr(s, '/');
    n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    memset(c->addr, 0, sizeof(c->addr));
    v4 = inet_pton(AF_INET, buf, c->addr + 12) == 1;
    if (v4)
        c->addr[10] = c->addr[11] = 0xff; /* ::ffff:a.b.c.d */
    else if (inet_pton(AF_INET6, buf, c->addr) != 1)
        return -1;
    if (!slash)
        bits = v4 ? 32 : 128;
    else if (config_scaled(slash + 1, config_plain_units, v4 ? 32 : 128,
                           &bits) != 0)
        return -1;
    c->bits = (unsigned)bits + (v4 ? 96 : 0);
    return 0;
}

static bool cidr_has(const struct cidr *c, const unsigned char a[16])
{
    unsigned full = c->bits / 8, rest = c->bits % 8;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));

    return memcmp(c->addr, a, full) == 0 &&
           (rest == 0 || ((c->addr[full] ^ a[full]) & mask) == 0);
}

bool config_trusted(const struct config *c, const unsigned char addr[16])
{
    size_t i;

    for (i = 0; i < c->ntrusted; i++)
        if (cidr_has(&c->trusted[i], addr))
            return true;
    return false;
}

/* An HTTP token (RFC 9110 5.6.2): a method or a header name. */
bool config_is_token(const char *s, size_t n)
{
    size_t i;

    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (!is_alnum(ch) && (!ch || !strchr("!#$%&'*+-.^_`|~", ch)))
            return false;
    }
    return true;
}

/* Non-empty printable ASCII without spaces. */
bool config_is_visible(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s > 0x7e)
            return false;
    }
    return true;
}

void config_free_list(char **items, size_t n)
{
    while (n > 0)
        free(items[--n]);
    free(items);
}

/* Copy the item [q, end) of a list, spaces around it trimmed, into *out.
 * 0, -1 if it is not a token, -2 out of memory. */
static int take_item(const char *q, const char *end, char **out)
{
    q += strspn(q, " \t");
    while (end > q && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (!config_is_token(q, (size_t)(end - q)))
        return -1;
    *out = strndup(q, (size_t)(end - q));
    return *out ? 0 : -2;
}

/* Split v at commas into fresh tokens; an all-blank v is an empty list.
 * 0, -1 if an item is not a token, or -2 out of memory. The array is
 * never NULL on success. */
int config_split_list(const char *v, char ***items_out, size_t *n_out)
{
    size_t n = 0, cap = 1;
    const char *q, *end;
    char **items;
    int rc = 0;

    for (q = v; *q; q++)
        cap += *q == ',';
    items = calloc(cap, sizeof(*items));
    if (!items)
        return -2;
    for (q = v; rc == 0 && v[strspn(v, " \t")]; q = end + 1) {
        end = strchrnul(q, ',');
        rc = take_item(q, end, &items[n]);
        n += rc == 0;
        if (!*end)
            break;
    }
    if (rc != 0) {
        config_free_list(items, n);
        return rc;
    }
    *items_out = items;
    *n_out = n;
    return 0;
}
