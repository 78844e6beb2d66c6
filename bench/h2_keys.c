/* h2_keys: h2load's job with an Idempotency-Key of its own on every
 * request (h2load sends the same headers each time, so every keyed POST
 * after the first would be a replay). bench/bench_proxy.sh drives idemproxy
 * and nginx with it for the HTTP/2 "first execution" figures.
 *   h2_keys PORT SECONDS CONNECTIONS STREAMS NONCE
 * Prints "requests N errors E" (errors: answers not 2xx, resets). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define BODY "{\"amount\":100,\"currency\":\"EUR\"}"

struct client {
    int fd;
    nghttp2_session *s;
    unsigned inflight;
    unsigned long n; /* requests sent: the key's counter */
};

static const char *nonce;
static unsigned long done, errors;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf,
                         size_t len, uint32_t *flags, nghttp2_data_source *src,
                         void *ud)
{
    (void)s;
    (void)id;
    (void)src;
    (void)ud;
    if (len < sizeof(BODY) - 1)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    memcpy(buf, BODY, sizeof(BODY) - 1);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return sizeof(BODY) - 1;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f,
                     const uint8_t *name, size_t nlen, const uint8_t *value,
                     size_t vlen, uint8_t flags, void *ud)
{
    (void)s;
    (void)f;
    (void)flags;
    (void)ud;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0 &&
        (vlen != 3 || value[0] != '2'))
        errors++;
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct client *c = ud;

    (void)s;
    (void)id;
    if (code != NGHTTP2_NO_ERROR)
        errors++;
    c->inflight--;
    done++;
    return 0;
}

static int request(struct client *c, const char *authority)
{
    char key[96];
    nghttp2_data_provider body = { .read_callback = body_read };
    nghttp2_nv nva[] = {
#define NV(n, v, l) { (uint8_t *)(n), (uint8_t *)(v), strlen(n), l, 0 }
        NV(":method", "POST", 4),
        NV(":path", "/pay", 4),
        NV(":scheme", "http", 4),
        NV(":authority", authority, strlen(authority)),
        NV("content-type", "application/json", 16),
        NV("idempotency-key", key, 0),
#undef NV
    };

    nva[5].valuelen =
        (size_t)snprintf(key, sizeof(key), "%s-%d-%lu", nonce, c->fd, ++c->n);
    if (nghttp2_submit_request(c->s, NULL, nva, 6, &body, NULL) < 0)
        return -1;
    c->inflight++;
    return 0;
}

static int client_open(struct client *c, int port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port) };
    nghttp2_session_callbacks *cb;
    int one = 1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    if (nghttp2_session_client_new(&c->s, cb, c) != 0)
        return -1;
    nghttp2_session_callbacks_del(cb);
    return nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0);
}

/* Send what c has queued. -1: the connection failed. */
static int flush(struct client *c)
{
    const uint8_t *p;
    ssize_t n;

    while ((n = nghttp2_session_mem_send(c->s, &p)) > 0)
        if (send(c->fd, p, (size_t)n, MSG_NOSIGNAL) != n)
            return -1;
    return n < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
    static struct client cl[MAX_CONNS];
    static struct pollfd pfd[MAX_CONNS];
    uint8_t buf[65536];
    char authority[32];
    double end;
    int port, nconns, streams, i;
    ssize_t n;

    if (argc != 6) {
        fprintf(stderr, "usage: h2_keys PORT SECONDS CONNS STREAMS NONCE\n");
        return 2;
    }
    port = (int)strtol(argv[1], NULL, 10);
    end = now_s() + strtod(argv[2], NULL);
    nconns = (int)strtol(argv[3], NULL, 10);
    streams = (int)strtol(argv[4], NULL, 10);
    nonce = argv[5];
    if (nconns < 1 || nconns > MAX_CONNS || streams < 1)
        return 2;
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", port);
    for (i = 0; i < nconns; i++) {
        if (client_open(&cl[i], port) != 0) {
            perror("h2_keys: connect");
            return 1;
        }
        pfd[i] = (struct pollfd){ .fd = cl[i].fd, .events = POLLIN };
    }
    while (now_s() < end) {
        for (i = 0; i < nconns; i++) {
            while (cl[i].inflight < (unsigned)streams)
                if (request(&cl[i], authority) != 0)
                    return 1;
            if (flush(&cl[i]) != 0)
                return 1;
        }
        if (poll(pfd, (nfds_t)nconns, 100) <= 0)
            continue;
        for (i = 0; i < nconns; i++) {
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            n = recv(cl[i].fd, buf, sizeof(buf), 0);
            if (n <= 0 ||
                nghttp2_session_mem_recv(cl[i].s, buf, (size_t)n) < 0) {
                fprintf(stderr, "h2_keys: connection %d ended\n", i);
                return 1;
            }
        }
    }
    printf("requests %lu errors %lu\n", done, errors);
    for (i = 0; i < nconns; i++) {
        nghttp2_session_del(cl[i].s);
        close(cl[i].fd);
    }
    return 0;
}
