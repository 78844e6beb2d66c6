/* forward.h: what an exchange sends upstream. */
#include "forward.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* Whether v (len bytes) is kept as an X-Request-ID: 1..EX_REQUEST_ID_MAX
 * visible ASCII characters. */
static bool good_request_id(const char *v, size_t len)
{
    size_t i;

    if (len == 0 || len > EX_REQUEST_ID_MAX)
        return false;
    for (i = 0; i < len; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] > 0x7e)
            return false;
    return true;
}

/* v's 16 hex digits into out. */
static void hex16(uint64_t v, char out[16])
{
    static const char hex[] = "0123456789abcdef";
    int i;

    for (i = 15; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
}

/* 32 hex digits: this thread's random 64 bits (written out once), then a
 * count. */
static void fresh_request_id(char out[33])
{
    static _Thread_local char seed_hex[16];
    static _Thread_local uint64_t count;
    uint64_t seed;

    if (!seed_hex[0]) {
        if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
            seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&count;
        hex16(seed, seed_hex);
    }
    memcpy(out, seed_hex, 16);
    hex16(++count, out + 16);
    out[32] = '\0';
}

/* The request's ID: the client's X-Request-ID if it is a good one, else
 * a fresh one (chosen once per request). */
const char *forward_request_id(struct exchange *ex)
{
    const struct http_head *h = &ex->rd.head;
    const char *v = NULL;
    size_t len = 0;

    if (ex->request_id[0])
        return ex->request_id;
    if (h->bytes)
        v = http_head_get(h, "X-Request-ID", &len);
    if (v && good_request_id(v, len)) {
        memcpy(ex->request_id, v, len);
        ex->request_id[len] = '\0';
    } else {
        fresh_request_id(ex->request_id);
    }
    return ex->request_id;
}

/* Whether a request header goes upstream: not hop-by-hop, and not one
 * the proxy writes itself (Host too, for an absolute-form: its authority
 * is the Host, RFC 9112 §3.2.2). */
static bool forward_header(const struct http_head *h,
                           const struct http_field *f, const char *conn,
                           size_t conn_len)
{
#define OWN(lit)                                                               \
    {                                                                          \
        "" lit, sizeof(lit) - 1                                                \
    }
    static const struct {
        const char *name;
        size_t len;
    } own[] = {
        OWN("Content-Length"),   OWN("Expect"),
        OWN("X-Forwarded-For"),  OWN("X-Forwarded-Proto"),
        OWN("X-Forwarded-Host"), OWN("Forwarded"),
        OWN("X-Request-ID"),
    };
#undef OWN
    const char *name = h->bytes + f->name_off;
    size_t i;

    if (h->authority_len && HTTP_NAME_IS(name, f->name_len, "Host"))
        return false;
    for (i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (http_name_is(name, f->name_len, own[i].name, own[i].len))
            return false;
    return !http_hop_by_hop(h, f, conn, conn_len);
}

/* The header that frames the body as it goes upstream, if any. */
static int add_framing(struct exchange *ex, struct buf *o)
{
    unsigned flags = ex->rd.parser.flags;

    if (ex->body_mode == EX_BODY_STREAMED && (flags & F_CHUNKED))
        return buf_addl(o, "Transfer-Encoding: chunked\r\n");
    if (ex->body_mode == EX_BODY_STREAMED && (flags & F_CONTENT_LENGTH))
        return buf_addl(o, "Content-Length: ") ||
               buf_add_u64(o, ex->rd.parser.content_length) ||
               buf_addl(o, "\r\n");
    if (ex->body_mode == EX_BODY_BUFFERED &&
        (buf_len(&ex->body) || (flags & (F_CONTENT_LENGTH | F_CHUNKED))))
        return buf_addl(o, "Content-Length: ") ||
               buf_add_u64(o, buf_len(&ex->body)) || buf_addl(o, "\r\n");
    return 0;
}

/* An upgrade request keeps its Upgrade (hop-by-hop: stripped with the
 * others) and says so in its Connection. */
static int add_upgrade(struct exchange *ex, struct buf *o)
{
    size_t len = 0;
    const char *up = http_head_get(&ex->rd.head, "Upgrade", &len);

    if (!ex->upgrade || !up)
        return 0;
    return buf_addl(o, "Upgrade: ") || buf_add(o, up, len) ||
           buf_addl(o, "\r\nConnection: upgrade\r\n");
}

/* A Forwarded parameter value (RFC 7239 4): a token as it is, anything
 * else quoted (an IPv6 node "[...]" always is). */
static int add_forwarded_value(struct buf *o, const char *v, size_t n)
{
    size_t i;
    int rc;

    if (n > 0 && idem_header_is_token(v, n))
        return buf_add(o, v, n);
    rc = buf_addl(o, "\"");
    for (i = 0; rc == 0 && i < n; i++)
        rc = (v[i] == '"' || v[i] == '\\' ? buf_addl(o, "\\") : 0) ||
             buf_add(o, v + i, 1);
    return rc || buf_addl(o, "\"");
}

/* The client's address without its port ("[v6]" loses its brackets),
 * into ip; its 16 bytes (IPv4 as ::ffff:a.b.c.d) into bin. false if it
 * is not an IP address (a test's name). */
static bool client_ip(const char *c, char ip[64], unsigned char *bin)
{
    const char *end;
    bool v6 = *c == '[';
    size_t n;

    c += v6;
    end = v6 ? strchr(c, ']') : strrchr(c, ':');
    n = end ? (size_t)(end - c) : strlen(c);
    if (n >= INET6_ADDRSTRLEN)
        n = INET6_ADDRSTRLEN - 1;
    memcpy(ip, c, n);
    ip[n] = '\0';
    memset(bin, 0, 16);
    if (!v6 && inet_pton(AF_INET, ip, bin + 12) == 1) {
        bin[10] = bin[11] = 0xff;
        return true;
    }
    return v6 && inet_pton(AF_INET6, ip, bin) == 1;
}

void forward_peer_init(struct exchange *ex)
{
    ex->peer_is_ip = client_ip(ex->client, ex->peer_ip, ex->peer_bin);
    snprintf(ex->peer_node, sizeof(ex->peer_node),
             strchr(ex->peer_ip, ':') ? "[%s]" : "%s", ex->peer_ip);
}

/* One header: "Name: " and, from a trusted peer, what it sent, then
 * sep and ours (or ours alone). */
static int add_chained(struct buf *o, const char *name, const char *prev,
                       size_t prev_len, const char *sep)
{
    return buf_adds(o, name) || buf_addl(o, ": ") ||
           (prev && (buf_add(o, prev, prev_len) || buf_adds(o, sep)));
}

/* The forwarding headers (docs/idemproxy.md, "Forwarding headers"): from
 * a --trusted-proxies peer X-Forwarded-For and Forwarded are extended
 * and X-Forwarded-Proto and -Host kept; from any other they are
 * replaced. X-Request-ID: the request's. */
static int add_forwarding(struct exchange *ex, struct buf *o)
{
    const struct http_head *h = &ex->rd.head;
    const char *proto = ex->tls ? "https" : "http", *host, *v;
    bool trusted = ex->peer_is_ip && config_trusted(ex->ctx->cfg, ex->peer_bin);
    size_t host_len = h->authority_len, len = 0;
    const char *id = forward_request_id(ex);

    host = h->authority_len ? h->bytes + h->authority_off
                            : http_head_get(h, "Host", &host_len);
    v = trusted ? http_head_get(h, "X-Forwarded-For", &len) : NULL;
    if (add_chained(o, "X-Forwarded-For", v, len, ", ") ||
        buf_adds(o, ex->peer_ip) || buf_addl(o, "\r\n"))
        return -1;
    v = trusted ? http_head_get(h, "X-Forwarded-Proto", &len) : NULL;
    if (v ? buf_add_field(o, "X-Forwarded-Proto", 17, v, len)
          : buf_add_field(o, "X-Forwarded-Proto", 17, proto, strlen(proto)))
        return -1;
    v = trusted ? http_head_get(h, "X-Forwarded-Host", &len) : NULL;
    if (v ? buf_add_field(o, "X-Forwarded-Host", 16, v, len)
          : host && buf_add_field(o, "X-Forwarded-Host", 16, host, host_len))
        return -1;
    v = trusted ? http_head_get(h, "Forwarded", &len) : NULL;
    if (add_chained(o, "Forwarded", v, len, ", ") || buf_addl(o, "for=") ||
        add_forwarded_value(o, ex->peer_node, strlen(ex->peer_node)) ||
        buf_addl(o, ";proto=") || buf_adds(o, proto) ||
        (host &&
         (buf_addl(o, ";host=") || add_forwarded_value(o, host, host_len))) ||
        buf_addl(o, "\r\n"))
        return -1;
    return buf_add_field(o, "X-Request-ID", 12, id, strlen(id));
}

int forward_write_request(struct exchange *ex)
{
    const struct http_head *h = &ex->rd.head;
    struct buf *o = &ex->up_out;
    const char *conn;
    size_t conn_len = 0;
    unsigned i;
    bool ok;

    ok = buf_add(o, h->bytes + h->method_off, h->method_len) == 0 &&
         buf_addl(o, " ") == 0 &&
         buf_add(o, h->bytes + h->origin_off, h->origin_len) == 0 &&
         buf_addl(o, " HTTP/1.1\r\n") == 0;
    if (ok && h->authority_len)
        ok = buf_add_field(o, "Host", 4, h->bytes + h->authority_off,
                           h->authority_len) == 0;
    conn = http_connection(h, &conn_len);
    for (i = 0; ok && i < h->nfields; i++)
        if (forward_header(h, &h->fields[i], conn, conn_len))
            ok = http_add_field(o, h, &h->fields[i]) == 0;
    ok = ok && add_forwarding(ex, o) == 0 && add_framing(ex, o) == 0 &&
         add_upgrade(ex, o) == 0 && buf_addl(o, "\r\n") == 0;
    if (ok && ex->body_mode == EX_BODY_BUFFERED)
        ok = buf_add(o, buf_bytes(&ex->body), buf_len(&ex->body)) == 0;
    return ok ? 0 : -1;
}
