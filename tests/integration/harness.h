/* Integration-test harness: start real programs on loopback ports and
 * talk HTTP/1.1 to them over blocking sockets. Failures to start or stop
 * a program fail the running cmocka test (with the program's stderr);
 * network calls return a status the test asserts on. Not thread-safe,
 * except the client calls (h_connect ... h_close) on distinct connections.
 * Every process h_start() started is stopped by h_teardown(). */
#ifndef IDEM_TEST_HARNESS_H
#define IDEM_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define H_START_TIMEOUT_MS 10000 /* for the "listening ..." line */
#define H_STOP_TIMEOUT_MS 10000  /* after SIGTERM, before SIGKILL */
#define H_IO_TIMEOUT_MS 10000    /* default per connection read/write */
#define H_TEST_SECONDS 90        /* a test still running after it: exit */

/* IDEM_PROXY_WRAPPER, when set, is a command prefix (words split on
 * spaces, e.g. "valgrind -q --error-exitcode=99") that h_start and h_run
 * put before a program whose path ends in "/idemproxy". The start, stop
 * and test time limits above are then H_WRAPPED_FACTOR times as long. */
#define H_WRAPPER_ENV "IDEM_PROXY_WRAPPER"
#define H_WRAPPED_FACTOR 6

/* -- Processes --------------------------------------------------------- */

struct h_proc {
    pid_t pid; /* 0 once stopped */
    char name[64];
    int out_fd; /* read end of the child's stdout */
    int err_fd; /* the child's stderr: an unlinked temporary file */
    bool signalled;
    uint16_t http_port;  /* from "http=HOST:PORT" */
    uint16_t admin_port; /* from "admin=HOST:PORT"; 0 if absent or off */
};

/* Run path with argv (argv[0] first, NULL-terminated) and wait for its
 * "listening http=HOST:PORT [admin=HOST:PORT|off]" line. Fails the test,
 * showing the program's stderr, if it exits first or stays silent for
 * H_START_TIMEOUT_MS. The process dies with the test process. */
struct h_proc *h_start(const char *path, const char *const *argv);

/* Run path with argv to its end (up to H_STOP_TIMEOUT_MS, then SIGKILL).
 * Its exit status (128 + signal if killed); its stderr into err[0..cap)
 * NUL-terminated if err is not NULL. */
int h_run(const char *path, const char *const *argv, char *err, size_t cap);

/* Whether IDEM_PROXY_WRAPPER is set: idemproxy runs under it, slowly. */
bool h_proxy_wrapped(void);

/* Send sig to p (not waiting). */
void h_signal(struct h_proc *p, int sig);

/* SIGTERM unless already signalled, wait up to H_STOP_TIMEOUT_MS, then
 * SIGKILL. Returns the exit status, 128 + signal if killed by one. */
int h_stop(struct h_proc *p);

/* Copy p's stderr so far into buf[0..cap), NUL-terminated. */
void h_stderr(struct h_proc *p, char *buf, size_t cap);

/* How many times needle occurs in s (not overlapping). */
int h_count(const char *s, const char *needle);

/* h_stderr, polled every 20 ms until needle occurs at least n times in
 * buf or H_IO_TIMEOUT_MS passes: idemproxy's workers write their lines
 * in batches, up to LOG_BATCH_MS after the event, and each worker on its
 * own, so lines need not land in the order of the events. Whether it
 * did; asserts nothing. */
bool h_stderr_await(struct h_proc *p, char *buf, size_t cap, const char *needle,
                    int n);

/* cmocka fixtures: h_setup arms a watchdog of H_TEST_SECONDS (past it the
 * test program prints a message and exits 124); h_teardown disarms it,
 * stops every process still running and removes h_tmpdir(). It fails
 * (-1) if a process it stopped did not exit 0 (a crash, a leak report). */
int h_setup(void **state);
int h_teardown(void **state);

/* A fresh temporary directory for this test, removed with the files in
 * it by h_teardown. Fails the test if it cannot be made. */
const char *h_tmpdir(void);

/* h_tmpdir()/name (free it). */
char *h_tmp_path(const char *name);

/* Make keys and certificates in h_tmpdir() with the openssl command (EC
 * P-256): script's lines may call "key NAME" (NAME.key), "ca NAME" (a
 * self-signed NAME.pem, valid 2 days) and "srv NAME CN SAN DAYS" (NAME.pem
 * for CN, with subjectAltName SAN, signed by ca.pem). Fails the test if
 * openssl does. */
void h_make_certs(const char *script);

/* Sleep ms milliseconds, whatever signals come. */
void h_sleep_ms(long ms);

/* CLOCK_MONOTONIC in milliseconds. */
long h_now_ms(void);

/* A port on 127.0.0.1 that was free a moment ago (bound, then closed). */
uint16_t h_free_port(void);

/* -- HTTP client ------------------------------------------------------- */

struct h_header {
    char *name;
    char *value;
};

/* A parsed response. Strings are NUL-terminated copies. */
struct h_resp {
    int status;
    struct h_header *headers;
    size_t nheaders;
    char *body; /* NUL-terminated (body_len excludes the NUL) */
    size_t body_len;
    bool keep_alive; /* false: the server said it closes */
};

/* A client connection; its bytes not yet read are kept for h_read. */
struct h_conn;

/* Connect to 127.0.0.1:port with H_IO_TIMEOUT_MS; NULL on failure. */
struct h_conn *h_connect(uint16_t port);

/* Change the read/write timeout of c. */
void h_set_timeout(struct h_conn *c, int ms);

/* Send all of data. 0, or -1 (timeout, reset). Never raises SIGPIPE. */
int h_send(struct h_conn *c, const void *data, size_t len);
int h_send_str(struct h_conn *c, const char *s);

/* Read the next response from c into *r (fresh; free with h_resp_free).
 * Handles Content-Length, chunked and close-delimited bodies and 1xx
 * interim responses (returned as responses of their own). Pass head=true
 * when it answers a HEAD. 0, or -1 on timeout, early close or bad bytes. */
int h_read(struct h_conn *c, struct h_resp *r, bool head);

/* Read n pipelined responses (none to a HEAD) into r[0..n). 0 or -1. */
int h_read_n(struct h_conn *c, struct h_resp *r, size_t n);

/* Send head (request line and headers through the blank line, with
 * "Expect: 100-continue") on c and read the interim answer into *interim;
 * if it is 100, send body and read the final answer into *final (else
 * *final stays empty). Free both with h_resp_free. 0 or -1. */
int h_expect_continue(struct h_conn *c, const char *head, const char *body,
                      struct h_resp *interim, struct h_resp *final);

/* Read exactly n raw bytes from c (what h_read left unparsed first), as
 * after a 101: 0, or -1 (timeout, close, reset). */
int h_recv_raw(struct h_conn *c, void *buf, size_t n);

/* Whether the server closed c (EOF or reset) within the timeout; false if
 * data arrived (kept for h_read) or the timeout passed. */
bool h_closed(struct h_conn *c);

void h_close(struct h_conn *c);
void h_resp_free(struct h_resp *r);

/* The value of the first header called name (any case), or NULL. */
const char *h_header(const struct h_resp *r, const char *name);

/* The integer after "\"field\":" in a JSON body, or -1. */
long h_json_long(const struct h_resp *r, const char *field);

/* -- Requests ---------------------------------------------------------- */

/* A request: "METHOD target HTTP/1.1", Host, the Idempotency-Key if key
 * is set, the raw header lines in headers ("Name: v\r\n" each) if set,
 * Content-Length if body is set (length body_len, or strlen(body) when
 * body_len is 0), then the body. */
struct h_req {
    const char *method;
    const char *target;
    const char *key;
    const char *headers;
    const char *body;
    size_t body_len;
};

/* The bytes of q, malloc'd and NUL-terminated; length in *len_out. */
char *h_build(const struct h_req *q, size_t *len_out);

/* printf into a fresh malloc'd string (never NULL: aborts if out of
 * memory). */
char *h_format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Connect, send q, read one response (HEAD-aware), close. 0 or -1. */
int h_exchange(uint16_t port, const struct h_req *q, struct h_resp *r);

/* Send raw bytes on a fresh connection and read one response; then, if
 * closed is not NULL, whether the server closed the connection (this
 * waits up to H_IO_TIMEOUT_MS for a server that keeps it open). */
int h_exchange_raw(uint16_t port, const char *raw, struct h_resp *r,
                   bool *closed);

/* The value of the first sample of metric name (a bare name, or a name
 * with its labels, e.g. "idem_requests_total{outcome=\"replay\"}") from
 * GET /metrics on admin_port, or -1. */
long h_metric(uint16_t admin_port, const char *name);

/* GET /count from demo_upstream on port: its executions, or -1. */
long h_upstream_count(uint16_t port);

/* Poll GET /count until it reaches want (or H_IO_TIMEOUT_MS passes);
 * returns the last count read. Creates situations; asserts nothing. */
long h_upstream_wait_count(uint16_t port, long want);

#endif
