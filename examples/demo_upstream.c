/* demo_upstream: a small HTTP/1.1 server that counts what it executes, the
 * upstream of `make run` and of the integration tests. Every request is
 * answered {"execution":N,"method":M,"path":P,"body_bytes":B}, N counting
 * every request but GET /count; query parameters shape the answer (see
 * usage()). One thread: libevent core for I/O, llhttp for parsing. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <llhttp.h>

#define URL_MAX 8192    /* longer targets are refused with 400 */
#define HNAME_MAX 256   /* header names and values are kept truncated */
#define HVALUE_MAX 1024 /* (only echo=1 and Expect look at them) */

struct server {
    struct event_base *base;
    struct conn *conns; /* every open connection, freed at exit */
    unsigned long executions;
};

/* One response, queued in request order; sent once ready and first. */
struct reply {
    struct reply *next;
    struct conn *conn;
    struct event *timer;    /* delay_ms: marks the reply ready; or NULL */
    struct evbuffer *bytes; /* status line, headers and body */
    bool ready;
    bool close; /* Connection: close: the last reply of the connection */
};

/* The request being parsed. */
struct req {
    char url[URL_MAX];
    size_t url_len;
    char name[HNAME_MAX];
    size_t name_len;
    char value[HVALUE_MAX];
    size_t value_len;
    uint64_t body_bytes;
    bool expect_continue;
    struct evbuffer *headers; /* ["name","value"],... for echo=1 */
};

struct conn {
    struct server *srv;
    struct conn *prev, *next;
    struct bufferevent *bev;
    llhttp_t parser;
    struct req req;
    struct reply *head, *tail;
    bool stop_reading; /* a close reply is queued: parse nothing more */
    bool closing;      /* the close reply is written: free once flushed */
    bool peer_done;    /* the client sent EOF */
};

/* The query parameters that shape a reply. */
struct opts {
    unsigned long status, delay_ms, size, chunked, close, no_store, echo, cut;
    unsigned long early_hints;
};

struct param {
    const char *name;
    unsigned long min, max;
    size_t offset; /* of an unsigned long in struct opts */
};

static const struct param params[] = {
    { "status", 200, 599, offsetof(struct opts, status) },
    { "delay_ms", 0, 600000, offsetof(struct opts, delay_ms) },
    { "size", 0, 64ul << 20, offsetof(struct opts, size) },
    { "chunked", 0, 1, offsetof(struct opts, chunked) },
    { "close", 0, 1, offsetof(struct opts, close) },
    { "no_store", 0, 1, offsetof(struct opts, no_store) },
    { "echo", 0, 1, offsetof(struct opts, echo) },
    { "cut", 0, 64ul << 20, offsetof(struct opts, cut) },
    { "early_hints", 0, 1, offsetof(struct opts, early_hints) },
};

static void usage(FILE *f)
{
    fputs("usage: demo_upstream [--listen HOST:PORT]\n"
          "  An HTTP/1.1 server answering every request with\n"
          "  {\"execution\":N,\"method\":M,\"path\":P,\"body_bytes\":B}.\n"
          "  GET /count answers {\"executions\":N} and is not counted.\n"
          "  Query: status=NNN delay_ms=N size=N (pad the body to N bytes)\n"
          "  chunked=1 close=1 no_store=1 (Idempotency-Policy: no-store)\n"
          "  echo=1 (adds \"headers\":[[name,value],...]).\n"
          "  cut=N: send the head and N bytes of the body, then close\n"
          "  (an upstream that dies in the middle of a response).\n"
          "  early_hints=1: a 103 Early Hints (Link: </style.css>) first.\n"
          "  --listen default 127.0.0.1:8081; port 0 picks a free port.\n",
          f);
}

static const char *reason(unsigned long status)
{
    static const struct {
        unsigned long status;
        const char *text;
    } reasons[] = {
        { 200, "OK" },          { 201, "Created" },
        { 202, "Accepted" },    { 204, "No Content" },
        { 400, "Bad Request" }, { 404, "Not Found" },
        { 409, "Conflict" },    { 422, "Unprocessable Content" },
        { 429, "Too Many" },    { 500, "Internal Server Error" },
        { 502, "Bad Gateway" }, { 503, "Service Unavailable" },
    };

    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].status == status)
            return reasons[i].text;
    return "Demo";
}

/* -- Replies ----------------------------------------------------------- */

static void reply_free(struct reply *r)
{
    if (r->timer)
        event_free(r->timer);
    evbuffer_free(r->bytes);
    free(r);
}

static void conn_free(struct conn *c)
{
    struct reply *r, *next;

    for (r = c->head; r; r = next) {
        next = r->next;
        reply_free(r);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    evbuffer_free(c->req.headers);
    bufferevent_free(c->bev);
    free(c);
}

/* Write the ready replies at the head of the queue, in order. */
static void flush(struct conn *c)
{
    struct reply *r;

    while ((r = c->head) && r->ready && !c->closing) {
        c->head = r->next;
        if (!c->head)
            c->tail = NULL;
        bufferevent_write_buffer(c->bev, r->bytes);
        if (r->close) {
            c->closing = true;
            bufferevent_disable(c->bev, EV_READ);
        }
        reply_free(r);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct reply *r = arg;

    (void)fd;
    (void)what;
    r->ready = true;
    flush(r->conn);
}

/* Queue a reply with these bytes (taken on success), ready now or after
 * delay_ms. 0, or -1 if out of memory. */
static int enqueue(struct conn *c, struct evbuffer *bytes,
                   unsigned long delay_ms, bool close)
{
    struct reply *r = calloc(1, sizeof(*r));
    struct timeval tv = { (time_t)(delay_ms / 1000),
                          (suseconds_t)(delay_ms % 1000) * 1000 };

    if (!r)
        return -1;
    *r = (struct reply){ .conn = c, .close = close, .ready = !delay_ms };
    if (!r->ready) {
        r->timer = evtimer_new(c->srv->base, on_timer, r);
        if (!r->timer || evtimer_add(r->timer, &tv) < 0) {
            if (r->timer)
                event_free(r->timer);
            free(r);
            return -1;
        }
    }
    r->bytes = bytes;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    if (close)
        c->stop_reading = true;
    return 0;
}

/* -- Building a response ----------------------------------------------- */

/* Append s[0..n) as the inside of a JSON string. */
static void json_escape(struct evbuffer *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch == '"' || ch == '\\')
            evbuffer_add_printf(b, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            evbuffer_add_printf(b, "\\u%04x", ch);
        else
            evbuffer_add(b, s + i, 1);
    }
}

/* Parse one "name=value" of the query into o. -1 if the value is bad;
 * unknown names are ignored (tests use them to vary the target). */
static int parse_param(struct opts *o, const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    char num[24], *end;
    unsigned long v;

    if (!eq)
        return 0;
    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
        const struct param *p = &params[i];

        if (strlen(p->name) != (size_t)(eq - s) ||
            memcmp(p->name, s, (size_t)(eq - s)) != 0)
            continue;
        if ((size_t)(s + n - eq - 1) >= sizeof(num))
            return -1;
        memcpy(num, eq + 1, (size_t)(s + n - eq - 1));
        num[s + n - eq - 1] = '\0';
        errno = 0;
        v = strtoul(num, &end, 10);
        if (errno || end == num || *end || v < p->min || v > p->max)
            return -1;
        *(unsigned long *)((char *)o + p->offset) = v;
    }
    return 0;
}

/* Fill o from the query q[0..n) (what follows '?'). -1 if a value is
 * bad. */
static int parse_query(struct opts *o, const char *q, size_t n)
{
    *o = (struct opts){ .status = 200 };
    while (n > 0) {
        const char *amp = memchr(q, '&', n);
        size_t len = amp ? (size_t)(amp - q) : n;

        if (parse_param(o, q, len) < 0)
            return -1;
        q += len;
        n -= len;
        if (n > 0) {
            q++;
            n--;
        }
    }
    return 0;
}

/* Status line and headers; the body follows as chunks or at length. */
static void write_head(struct evbuffer *out, const struct opts *o,
                       size_t body_len)
{
    bool no_body = o->status == 204 || o->status == 304;

    if (o->early_hints)
        evbuffer_add_printf(out, "HTTP/1.1 103 Early Hints\r\n"
                                 "Link: </style.css>; rel=preload\r\n\r\n");
    evbuffer_add_printf(out, "HTTP/1.1 %lu %s\r\n", o->status,
                        reason(o->status));
    if (!no_body)
        evbuffer_add_printf(out, "Content-Type: application/json\r\n");
    if (o->chunked && !no_body)
        evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n");
    else if (!no_body)
        evbuffer_add_printf(out, "Content-Length: %zu\r\n", body_len);
    if (o->no_store)
        evbuffer_add_printf(out, "Idempotency-Policy: no-store\r\n");
    if (o->close)
        evbuffer_add_printf(out, "Connection: close\r\n");
    evbuffer_add(out, "\r\n", 2);
}

/* Move body into out, as two or more chunks if chunked. */
static void write_body(struct evbuffer *out, struct evbuffer *body,
                       bool chunked)
{
    size_t len = evbuffer_get_length(body);
    size_t step = len < 2 ? 1 : len / 2 < 8192 ? (len + 1) / 2 : 8192;

    if (!chunked) {
        evbuffer_add_buffer(out, body);
        return;
    }
    while (len > 0) {
        size_t n = len < step ? len : step;

        evbuffer_add_printf(out, "%zx\r\n", n);
        evbuffer_remove_buffer(body, out, n);
        evbuffer_add(out, "\r\n", 2);
        len -= n;
    }
    evbuffer_add(out, "0\r\n\r\n", 5);
}

/* The JSON answer to the request just parsed, padded to o->size. */
static void write_json(struct conn *c, struct evbuffer *body,
                       const struct opts *o, size_t path_len)
{
    struct req *q = &c->req;
    size_t len;

    evbuffer_add_printf(body, "{\"execution\":%lu,\"method\":\"%s\"",
                        c->srv->executions,
                        llhttp_method_name(llhttp_get_method(&c->parser)));
    evbuffer_add_printf(body, ",\"path\":\"");
    json_escape(body, q->url, path_len);
    evbuffer_add_printf(body, "\",\"body_bytes\":%" PRIu64, q->body_bytes);
    if (o->echo) {
        evbuffer_add_printf(body, ",\"headers\":[");
        evbuffer_add_buffer(body, q->headers);
        evbuffer_add_printf(body, "]");
    }
    evbuffer_add(body, "}", 1);
    for (len = evbuffer_get_length(body); len < o->size; len++)
        evbuffer_add(body, " ", 1);
}

/* The body for the request just parsed, and the options shaping it. */
static void write_answer(struct conn *c, struct evbuffer *body, struct opts *o)
{
    struct req *q = &c->req;
    const char *mark = memchr(q->url, '?', q->url_len);
    size_t path_len = mark ? (size_t)(mark - q->url) : q->url_len;

    *o = (struct opts){ .status = 200 };
    if (llhttp_get_method(&c->parser) == HTTP_GET && path_len == 6 &&
        memcmp(q->url, "/count", 6) == 0) {
        evbuffer_add_printf(body, "{\"executions\":%lu}", c->srv->executions);
        return;
    }
    c->srv->executions++;
    if (mark && parse_query(o, mark + 1, q->url_len - path_len - 1) < 0) {
        *o = (struct opts){ .status = 400 };
        evbuffer_add_printf(body, "{\"error\":\"bad query parameter\"}");
        return;
    }
    write_json(c, body, o, path_len);
}

/* Queue the response to the request just parsed. 0, or -1 if out of
 * memory. */
static int respond(struct conn *c)
{
    struct evbuffer *out = evbuffer_new(), *body = evbuffer_new();
    struct opts o;
    size_t head_len;
    int rc = -1;

    if (!out || !body)
        goto out;
    write_answer(c, body, &o);
    o.close |= !llhttp_should_keep_alive(&c->parser);
    write_head(out, &o, evbuffer_get_length(body));
    head_len = evbuffer_get_length(out);
    if (llhttp_get_method(&c->parser) != HTTP_HEAD && o.status != 204 &&
        o.status != 304)
        write_body(out, body, o.chunked);
    if (o.cut && head_len + o.cut < evbuffer_get_length(out)) {
        /* keep the head and cut bytes of the body, then hang up */
        evbuffer_free(body);
        body = out;
        out = evbuffer_new();
        if (!out)
            goto out;
        evbuffer_remove_buffer(body, out, head_len + o.cut);
        o.close = 1;
    }
    rc = enqueue(c, out, o.delay_ms, o.close);
out:
    if (rc < 0 && out)
        evbuffer_free(out);
    if (body)
        evbuffer_free(body);
    return rc;
}

/* 400 and close: the bytes are not HTTP we can follow. */
static void respond_bad_request(struct conn *c)
{
    static const char msg[] = "{\"error\":\"bad request\"}";
    struct evbuffer *out = evbuffer_new();

    if (!out)
        return;
    evbuffer_add_printf(out,
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: "
                        "application/json\r\nContent-Length: %zu\r\n"
                        "Connection: close\r\n\r\n%s",
                        sizeof(msg) - 1, msg);
    if (enqueue(c, out, 0, true) < 0)
        evbuffer_free(out);
    c->stop_reading = true;
}

/* -- llhttp callbacks -------------------------------------------------- */

/* Append at[0..n) to buf, keeping at most cap bytes. -1 if cut. */
static int append(char *buf, size_t *len, size_t cap, const char *at, size_t n)
{
    size_t room = cap - *len;

    memcpy(buf + *len, at, n < room ? n : room);
    *len += n < room ? n : room;
    return n <= room ? 0 : -1;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;

    c->req.url_len = c->req.name_len = c->req.value_len = 0;
    c->req.body_bytes = 0;
    c->req.expect_continue = false;
    evbuffer_drain(c->req.headers, evbuffer_get_length(c->req.headers));
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct req *q = &((struct conn *)p->data)->req;

    return append(q->url, &q->url_len, sizeof(q->url), at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct req *q = &((struct conn *)p->data)->req;

    append(q->name, &q->name_len, sizeof(q->name), at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct req *q = &((struct conn *)p->data)->req;

    append(q->value, &q->value_len, sizeof(q->value), at, n);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct req *q = &((struct conn *)p->data)->req;

    if (q->name_len == 6 && strncasecmp(q->name, "Expect", 6) == 0 &&
        q->value_len == 12 && strncasecmp(q->value, "100-continue", 12) == 0)
        q->expect_continue = true;
    if (evbuffer_get_length(q->headers) > 0)
        evbuffer_add(q->headers, ",", 1);
    evbuffer_add(q->headers, "[\"", 2);
    json_escape(q->headers, q->name, q->name_len);
    evbuffer_add(q->headers, "\",\"", 3);
    json_escape(q->headers, q->value, q->value_len);
    evbuffer_add(q->headers, "\"]", 2);
    q->name_len = q->value_len = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

    /* Only when it cannot overtake an earlier response. */
    if (c->req.expect_continue && !c->head)
        bufferevent_write(c->bev, cont, sizeof(cont) - 1);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    ((struct conn *)p->data)->req.body_bytes += n;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;

    if (respond(c) < 0)
        respond_bad_request(c);
    return c->stop_reading ? HPE_PAUSED : 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* -- Connections ------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    while (!c->stop_reading && evbuffer_get_length(in) > 0) {
        size_t n = evbuffer_get_contiguous_space(in);
        const char *data = (const char *)evbuffer_pullup(in, (ssize_t)n);
        llhttp_errno_t err = llhttp_execute(&c->parser, data, n);

        if (err != HPE_OK && err != HPE_PAUSED)
            respond_bad_request(c);
        evbuffer_drain(in, n);
    }
    evbuffer_drain(in, evbuffer_get_length(in));
    flush(c);
}

/* Free the connection once nothing is left to send. */
static void on_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    if (c->closing || (c->peer_done && !c->head))
        conn_free(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    if (what & BEV_EVENT_EOF) {
        c->peer_done = true;
        if (!c->head && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            conn_free(c);
    } else if (what & BEV_EVENT_ERROR) {
        conn_free(c);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct server *srv = arg;
    struct conn *c = calloc(1, sizeof(*c));
    int one = 1;

    (void)l;
    (void)sa;
    (void)salen;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (c)
        c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c && c->bev)
        c->req.headers = evbuffer_new();
    if (!c || !c->bev || !c->req.headers) {
        if (c && c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        free(c);
        return;
    }
    c->srv = srv;
    c->next = srv->conns;
    if (c->next)
        c->next->prev = c;
    srv->conns = c;
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
    c->parser.data = c;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* -- Startup ----------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

/* Print "listening http=HOST:PORT" for the bound socket fd. */
static int announce(evutil_socket_t fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[64];
    const void *ip;
    uint16_t port;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET6) {
        ip = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
        ip = &((struct sockaddr_in *)&ss)->sin_addr;
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    if (!evutil_inet_ntop(ss.ss_family, ip, host, sizeof(host)))
        return -1;
    printf(ss.ss_family == AF_INET6 ? "listening http=[%s]:%u\n"
                                    : "listening http=%s:%u\n",
           host, port);
    return fflush(stdout) == 0 ? 0 : -1;
}

/* Serve on sa until SIGTERM or SIGINT. The exit status. */
static int serve(struct server *srv, const struct sockaddr *sa, int salen)
{
    struct evconnlistener *l;
    struct event *term = NULL, *intr = NULL;
    int rc = 1;

    l = evconnlistener_new_bind(srv->base, on_accept, srv,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
                                sa, salen);
    if (!l) {
        fprintf(stderr, "demo_upstream: cannot listen: %s\n", strerror(errno));
        return 1;
    }
    term = evsignal_new(srv->base, SIGTERM, on_signal, srv->base);
    intr = evsignal_new(srv->base, SIGINT, on_signal, srv->base);
    if (term && intr && evsignal_add(term, NULL) == 0 &&
        evsignal_add(intr, NULL) == 0 &&
        announce(evconnlistener_get_fd(l)) == 0)
        rc = event_base_dispatch(srv->base) < 0;
    while (srv->conns)
        conn_free(srv->conns);
    if (term)
        event_free(term);
    if (intr)
        event_free(intr);
    evconnlistener_free(l);
    return rc;
}

/* "HOST:PORT" ("[v6]:PORT"), numeric host, port 0..65535, into ss. */
static int parse_addr(const char *s, struct sockaddr_storage *ss, int *len)
{
    const char *colon = strrchr(s, ':');
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    char host[64], *end;
    size_t hlen = colon ? (size_t)(colon - s) : 0;
    unsigned long port;

    if (!colon || hlen == 0 || hlen >= sizeof(host))
        return -1;
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port > 65535)
        return -1;
    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[' && s[hlen - 1] == ']') {
        memcpy(host, s + 1, hlen - 2);
        host[hlen - 2] = '\0';
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*in6);
        return evutil_inet_pton(AF_INET6, host, &in6->sin6_addr) == 1 ? 0 : -1;
    }
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    *len = sizeof(*in4);
    return evutil_inet_pton(AF_INET, host, &in4->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:8081";
    struct sockaddr_storage ss;
    int sslen, rc;
    struct server srv = { 0 };

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (parse_addr(listen, &ss, &sslen) < 0) {
        fprintf(stderr, "demo_upstream: bad --listen '%s'\n", listen);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    srv.base = event_base_new();
    if (!srv.base)
        return 1;
    rc = serve(&srv, (struct sockaddr *)&ss, sslen);
    event_base_free(srv.base);
    libevent_global_shutdown();
    return rc;
}
