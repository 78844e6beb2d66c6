/* idemproxy over HTTP/2 with prior knowledge (h2c): the keyed-request
 * rules of test_proxy.c, asserted the same way, through curl
 * --http2-prior-knowledge, nghttp and a small client on nghttp2's client
 * session (concurrent streams on one connection); and the bounds: the
 * rapid-reset attack (CVE-2023-44487) and a CONTINUATION flood end the
 * attacker's connection while the proxy goes on serving. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "proxy_helpers.h"

#define H2_PREFACE_BYTES "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

/* -- curl and nghttp --------------------------------------------------- */

struct h2_resp {
    int status;
    char head[4096]; /* the response head as curl -D wrote it */
    char body[8192];
};

static void slurp(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;

    if (f) {
        n = fread(out, 1, cap - 1, f);
        fclose(f);
    }
    out[n] = '\0';
}

/* curl --http2-prior-knowledge: METHOD target with key (or none) and
 * body (or none). curl's exit status; *r the response. */
static int curl_h2(struct h_proc *px, const char *method, const char *target,
                   const char *key, const char *body, struct h2_resp *r)
{
    const char *dir = h_tmpdir();
    char *url = h_format("http://127.0.0.1:%u%s", px->http_port, target);
    char *hdr = h_format("%s/head", dir), *out = h_format("%s/body", dir);
    char *in = h_format("%s/in", dir), *data = h_format("@%s", in);
    char *keyh = h_format("Idempotency-Key: %s", key ? key : "");
    const char *argv[24] = { "curl", "-sS", "--http2-prior-knowledge",
                             "-m",   "20",  "-X",
                             method, "-D",  hdr,
                             "-o",   out,   url };
    size_t n = 12;
    FILE *f;
    int rc;

    if (key) {
        argv[n++] = "-H";
        argv[n++] = keyh;
    }
    if (body) {
        f = fopen(in, "w");
        assert_non_null(f);
        fputs(body, f);
        fclose(f);
        argv[n++] = "--data-binary";
        argv[n++] = data;
    }
    argv[n] = NULL;
    unlink(hdr);
    unlink(out);
    rc = h_run("/usr/bin/curl", argv, NULL, 0);
    memset(r, 0, sizeof(*r));
    slurp(hdr, r->head, sizeof(r->head));
    slurp(out, r->body, sizeof(r->body));
    if (strncmp(r->head, "HTTP/2 ", 7) == 0)
        r->status = (int)strtol(r->head + 7, NULL, 10);
    free(url);
    free(hdr);
    free(out);
    free(in);
    free(data);
    free(keyh);
    return rc;
}

static bool has_line(const struct h2_resp *r, const char *line)
{
    return strcasestr(r->head, line) != NULL;
}

static long json_long(const char *body, const char *field)
{
    char *pat = h_format("\"%s\":", field);
    const char *p = strstr(body, pat);

    free(pat);
    return p ? strtol(strchr(p, ':') + 1, NULL, 10) : -1;
}

/* POST over h2: its status. */
static int post_h2(struct h_proc *px, const char *target, const char *key,
                   const char *body)
{
    struct h2_resp r;

    assert_int_equal(curl_h2(px, "POST", target, key, body, &r), 0);
    return r.status;
}

static void assert_h2_problem(const struct h2_resp *r, int status)
{
    assert_int_equal(r->status, status);
    assert_true(has_line(r, "content-type: application/problem+json"));
}

/* -- A client on nghttp2's session: streams on one connection ---------- */

#define RAW_STREAMS 64

struct raw {
    int fd;
    nghttp2_session *s;
    int status[RAW_STREAMS]; /* by stream id / 2 */
    bool done[RAW_STREAMS];
    bool goaway;
    uint32_t goaway_code;
    bool closed;      /* the server closed the connection */
    bool send_failed; /* a send failed: what came before is still read */
};

static int parse_status(const uint8_t *v, size_t len)
{
    int n = 0;
    size_t i;

    for (i = 0; i < len && v[i] >= '0' && v[i] <= '9'; i++)
        n = n * 10 + (v[i] - '0');
    return n;
}

static int raw_header(nghttp2_session *s, const nghttp2_frame *f,
                      const uint8_t *name, size_t nlen, const uint8_t *value,
                      size_t vlen, uint8_t flags, void *ud)
{
    struct raw *c = ud;
    int32_t id = f->hd.stream_id;

    (void)s;
    (void)flags;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0 && id / 2 < RAW_STREAMS)
        c->status[id / 2] = parse_status(value, vlen);
    return 0;
}

static int raw_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct raw *c = ud;

    (void)s;
    (void)code;
    if (id / 2 < RAW_STREAMS)
        c->done[id / 2] = true;
    return 0;
}

static int raw_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct raw *c = ud;

    (void)s;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        c->goaway = true;
        c->goaway_code = f->goaway.error_code;
    }
    return 0;
}

static int raw_connect(uint16_t port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void raw_open(struct raw *c, uint16_t port)
{
    nghttp2_session_callbacks *cb;

    memset(c, 0, sizeof(*c));
    c->fd = raw_connect(port);
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_header_callback(cb, raw_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, raw_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, raw_frame);
    assert_int_equal(nghttp2_session_client_new(&c->s, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    assert_int_equal(nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0),
                     0);
}

static void raw_free(struct raw *c)
{
    nghttp2_session_del(c->s);
    close(c->fd);
}

/* A bodyless request on a new stream: its id. */
static int32_t raw_request(struct raw *c, const char *method, const char *path,
                           const char *key)
{
#define NV(n, v)                                                               \
    { (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v),                    \
      NGHTTP2_NV_FLAG_NONE }
    nghttp2_nv nva[] = { NV(":method", method), NV(":path", path),
                         NV(":scheme", "http"), NV(":authority", "localhost"),
                         NV("idempotency-key", key ? key : "") };
#undef NV
    int32_t id =
        nghttp2_submit_request(c->s, NULL, nva, key ? 5 : 4, NULL, NULL);

    assert_true(id > 0);
    return id;
}

/* Send what is queued. A failed send (the server closed: a reset) ends
 * sending, not reading: the server's last frames, a GOAWAY, may still be
 * waiting to be read. */
static void raw_flush(struct raw *c)
{
    const uint8_t *p;
    ssize_t n;

    while (!c->closed && !c->send_failed &&
           (n = nghttp2_session_mem_send(c->s, &p)) > 0)
        if (send(c->fd, p, (size_t)n, MSG_NOSIGNAL) != n)
            c->send_failed = true;
}

/* Send what is queued and read what comes, until done() or the server
 * closes or ms pass. Whether done() became true. */
static bool raw_run(struct raw *c, bool (*done)(const struct raw *), int ms)
{
    uint8_t buf[16384];
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    ssize_t n;

    while (!done(c) && !c->closed && ms > 0) {
        raw_flush(c);
        if (poll(&pfd, 1, 50) <= 0) {
            ms -= 50;
            continue;
        }
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n <= 0 || nghttp2_session_mem_recv(c->s, buf, (size_t)n) < 0)
            c->closed = true;
    }
    return done(c);
}

static bool streams_1_3_done(const struct raw *c)
{
    return c->done[0] && c->done[1];
}

/* -- Keys, replays, refusals over h2 ------------------------------------ */

static void test_h2_first_then_replay(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h2_resp first, again;

    (void)state;
    assert_int_equal(
        curl_h2(px, "POST", "/orders?status=201", "k-1", "{}", &first), 0);
    assert_int_equal(first.status, 201);
    assert_false(has_line(&first, "idempotent-replayed"));
    assert_int_equal(json_long(first.body, "execution"), 1);
    assert_int_equal(
        curl_h2(px, "POST", "/orders?status=201", "k-1", "{}", &again), 0);
    assert_int_equal(again.status, 201);
    assert_true(has_line(&again, "idempotent-replayed: true"));
    assert_string_equal(again.body, first.body);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* The same key over HTTP/1.1 and HTTP/2 is the same request. */
static void test_h2_and_http11_share_keys(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_req q = { .method = "POST",
                       .target = "/x",
                       .key = "k-both",
                       .headers = "Content-Type: "
                                  "application/x-www-form-urlencoded\r\n",
                       .body = "same" }; /* as curl sends it */
    struct h_resp r;

    (void)state;
    assert_int_equal(post_h2(px, "/x", "k-both", "same"), 200);
    assert_int_equal(h_exchange(px->http_port, &q, &r), 0);
    assert_int_equal(r.status, 200);
    assert_replayed(&r, true);
    h_resp_free(&r);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_h2_mismatch_is_422(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h2_resp r;

    (void)state;
    assert_int_equal(post_h2(px, "/m", "k-m", "a"), 200);
    assert_int_equal(curl_h2(px, "POST", "/m", "k-m", "b", &r), 0);
    assert_h2_problem(&r, 422);
    assert_int_equal(curl_h2(px, "PATCH", "/m", "k-m", "a", &r), 0);
    assert_h2_problem(&r, 422);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_h2_required_key_is_400(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--require-key", "/pay"));
    struct h2_resp r;

    (void)state;
    assert_int_equal(curl_h2(px, "POST", "/pay/1", NULL, "x", &r), 0);
    assert_h2_problem(&r, 400);
    assert_int_equal(h_upstream_count(up->http_port), 0);
    assert_int_equal(post_h2(px, "/pay/1", "k-p", "x"), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* Two streams of one connection with one key, at once: one runs, the
 * other gets 409. */
static void test_h2_conflict_409_on_concurrent_streams(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct raw c;

    (void)state;
    raw_open(&c, px->http_port);
    assert_int_equal(raw_request(&c, "POST", "/slow?delay_ms=1500", "k-c"), 1);
    assert_int_equal(raw_request(&c, "POST", "/slow?delay_ms=1500", "k-c"), 3);
    assert_true(raw_run(&c, streams_1_3_done, 10000));
    assert_int_equal(c.status[0] + c.status[1], 200 + 409);
    raw_free(&c);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* The upstream cuts the response after the request reached it: the
 * stream is reset, and the key is held (502 outcome-unknown to a retry,
 * never run again). */
static void test_h2_upstream_cut_is_held(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    const char *target = "/cut?size=100000&cut=1000";
    struct h2_resp r;

    (void)state;
    assert_int_not_equal(curl_h2(px, "POST", target, "k-cut", "x", &r), 0);
    assert_int_equal(curl_h2(px, "POST", target, "k-cut", "x", &r), 0);
    assert_h2_problem(&r, 502);
    assert_non_null(strstr(r.body, "outcome-unknown"));
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

static void test_h2_body_too_large_413(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--max-body", "1K"));
    char *body = calloc(1, 4001);
    struct h2_resp r;

    (void)state;
    assert_non_null(body);
    memset(body, 'b', 4000);
    assert_int_equal(curl_h2(px, "POST", "/big", "k-413", body, &r), 0);
    assert_h2_problem(&r, 413);
    free(body);
    assert_int_equal(post_h2(px, "/small", "k-small", "fits"), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* Large bodies both ways, chunked and sized, through the windows. */
static void test_h2_large_bodies(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    char *body = calloc(1, 200001);
    struct h2_resp r;

    (void)state;
    assert_non_null(body);
    memset(body, 'b', 200000);
    assert_int_equal(curl_h2(px, "POST", "/up", NULL, body, &r), 0);
    assert_int_equal(json_long(r.body, "body_bytes"), 200000);
    assert_int_equal(curl_h2(px, "POST", "/up", "k-up", body, &r), 0);
    assert_int_equal(json_long(r.body, "body_bytes"), 200000);
    free(body);
    assert_int_equal(curl_h2(px, "GET", "/down?size=3000000", NULL, NULL, &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_true(has_line(&r, "content-length: 3000000"));
    assert_int_equal(
        curl_h2(px, "GET", "/down?size=3000000&chunked=1", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
}

/* nghttp, and the decision log line says HTTP/2. */
static void test_h2_nghttp_and_log_line(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    char *cmd = h_format("nghttp -H 'idempotency-key: k-ng' -d /dev/null "
                         "http://127.0.0.1:%u/ng > %s/ng && grep -q "
                         "'\"execution\":1' %s/ng",
                         px->http_port, h_tmpdir(), h_tmpdir());
    char err[8192];

    (void)state;
    assert_int_equal(h_run("/bin/sh",
                           (const char *const[]){ "sh", "-c", cmd, NULL }, NULL,
                           0),
                     0);
    free(cmd);
    assert_true(h_stderr_await(px, err, sizeof(err),
                               "method=POST target=/ng protocol=HTTP/2", 1));
}

/* -- Bounds --------------------------------------------------------------- */

static bool never(const struct raw *c)
{
    (void)c;
    return false;
}

/* CVE-2023-44487: streams opened and reset at once, thousands of them.
 * Past --h2-max-resets the connection ends with GOAWAY
 * ENHANCE_YOUR_CALM; the proxy still serves. */
static void test_h2_rapid_reset_gets_goaway(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--h2-max-resets", "50"));
    struct raw c;
    int32_t id;
    int i;

    (void)state;
    raw_open(&c, px->http_port);
    for (i = 0; i < 2000 && !c.closed && !c.send_failed && !c.goaway; i++) {
        id = raw_request(&c, "GET", "/r", NULL);
        raw_flush(&c); /* the HEADERS go before their RST_STREAM */
        nghttp2_submit_rst_stream(c.s, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
        if (i % 50 == 49)
            raw_run(&c, never, 50);
    }
    raw_run(&c, never, 2000);
    assert_true(c.goaway);
    assert_int_equal(c.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
    raw_free(&c);
    assert_true(h_upstream_count(up->http_port) < 200);
    assert_int_equal(post_h2(px, "/after", "k-after", "x"), 200);
}

/* A client that never opens its stream windows (SETTINGS_INITIAL_WINDOW
 * _SIZE 0) for a large response: after --client-timeout without a
 * response byte leaving, the connection is closed; the proxy still
 * serves. */
static void test_h2_stalled_window_is_closed(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--client-timeout", "1s"));
    nghttp2_settings_entry shut = { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0 };
    struct raw c;

    (void)state;
    raw_open(&c, px->http_port);
    assert_int_equal(nghttp2_submit_settings(c.s, NGHTTP2_FLAG_NONE, &shut, 1),
                     0);
    raw_request(&c, "GET", "/big?size=1000000", NULL);
    raw_run(&c, never, 6000);
    assert_true(c.closed); /* cut, not left to hold the stream */
    raw_free(&c);
    assert_int_equal(post_h2(px, "/after-stall", "k-after-stall", "x"), 200);
}

static void put_frame(uint8_t *p, size_t len, uint8_t type, uint8_t flags,
                      uint32_t id)
{
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    p[5] = (uint8_t)(id >> 24);
    p[6] = (uint8_t)(id >> 16);
    p[7] = (uint8_t)(id >> 8);
    p[8] = (uint8_t)id;
}

/* A header block that never ends: HEADERS without END_HEADERS, then
 * CONTINUATION frames without end. The connection is ended (GOAWAY or
 * closed) after a few; the proxy still serves. */
static void test_h2_continuation_flood_is_cut(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    /* :method GET, :path /, :scheme http (HPACK static table) */
    static const uint8_t block[] = { 0x82, 0x84, 0x86 };
    uint8_t f[64], buf[4096];
    int fd = raw_connect(px->http_port), i, sent = 0;
    bool ended = false;
    ssize_t n;

    (void)state;
    assert_int_equal(send(fd, H2_PREFACE_BYTES, 24, MSG_NOSIGNAL), 24);
    put_frame(f, 0, 4, 0, 0); /* SETTINGS */
    assert_int_equal(send(fd, f, 9, MSG_NOSIGNAL), 9);
    put_frame(f, sizeof(block), 1, 0, 1); /* HEADERS, no END_HEADERS */
    memcpy(f + 9, block, sizeof(block));
    assert_int_equal(send(fd, f, 9 + sizeof(block), MSG_NOSIGNAL),
                     (ssize_t)(9 + sizeof(block)));
    f[9] = 0x00; /* literal, new name: "x" = "y" */
    f[10] = 1;
    f[11] = 'x';
    f[12] = 1;
    f[13] = 'y';
    for (i = 0; i < 100000; i++) {
        put_frame(f, 5, 9, 0, 1); /* CONTINUATION */
        if (send(fd, f, 14, MSG_NOSIGNAL) != 14)
            break;
        sent++;
    }
    /* read to the end: a GOAWAY, then the close */
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
        ;
    ended = n == 0 || (n < 0 && errno == ECONNRESET);
    close(fd);
    assert_true(ended || sent < 100000);
    assert_int_equal(post_h2(px, "/after", "k-after", "x"), 200);
    assert_int_equal(h_upstream_count(up->http_port), 1);
}

/* A connection that is not h2 after all: the preface split across reads
 * is still h2, and HTTP/1.1 still works on the same port. */
static void test_h2_and_http11_on_one_port(void **state)
{
    struct h_proc *up, *px = pair(&up, NULL);
    struct h_conn *c = h_connect(px->http_port);
    struct h_resp r;

    (void)state;
    assert_non_null(c);
    assert_int_equal(h_send_str(c, "P"), 0); /* "P" could be POST */
    h_sleep_ms(50);
    assert_int_equal(h_send_str(c, "OST /p HTTP/1.1\r\nHost: a\r\n"
                                   "Content-Length: 1\r\n\r\nx"),
                     0);
    assert_int_equal(h_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_close(c);
    assert_int_equal(post_h2(px, "/q", NULL, "x"), 200);
}

/* --h2-max-streams 0: no HTTP/2; the preface is a bad HTTP/1.1 request. */
static void test_h2_off(void **state)
{
    struct h_proc *up, *px = pair(&up, FLAGS("--h2-max-streams", "0"));
    struct h2_resp r;

    (void)state;
    assert_int_not_equal(curl_h2(px, "GET", "/", NULL, NULL, &r), 0);
    assert_int_equal(h_upstream_count(up->http_port), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_h2_first_then_replay),
        T(test_h2_and_http11_share_keys),
        T(test_h2_mismatch_is_422),
        T(test_h2_required_key_is_400),
        T(test_h2_conflict_409_on_concurrent_streams),
        T(test_h2_upstream_cut_is_held),
        T(test_h2_body_too_large_413),
        T(test_h2_large_bodies),
        T(test_h2_nghttp_and_log_line),
        T(test_h2_rapid_reset_gets_goaway),
        T(test_h2_continuation_flood_is_cut),
        T(test_h2_stalled_window_is_closed),
        T(test_h2_and_http11_on_one_port),
        T(test_h2_off),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
