/* Integration-test harness: processes (fork/exec, a "listening" line on
 * stdout, stop by PID) and a blocking HTTP/1.1 client parsed by llhttp.
 * The contracts are in harness.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <llhttp.h>

#include "free_port.h"
#include "harness.h"

#define MAX_PROCS 16
#define MAX_ARGS 64

/* A growing byte string, always NUL-terminated. */
struct dbuf {
    char *p;
    size_t len, cap;
};

struct h_conn {
    int fd;
    llhttp_t parser;
    struct dbuf in; /* received, not yet parsed: the next responses */
    bool eof;
    bool finished;            /* llhttp_finish ran: no response can follow */
    bool head;                /* the response being read answers a HEAD */
    bool done;                /* the response being read is complete */
    struct h_resp *resp;      /* the response being read */
    struct dbuf field, value; /* the header being read */
    struct dbuf body;
};

static struct h_proc procs[MAX_PROCS];
static bool in_use[MAX_PROCS];
static char tmpdir[64]; /* h_tmpdir(), or "" */

/* -- Small utilities --------------------------------------------------- */

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        abort(); /* a test harness out of memory has nothing to report */
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = xrealloc(NULL, n + 1);

    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *h_format(const char *fmt, ...)
{
    va_list ap;
    int n;
    char *s;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    s = xrealloc(NULL, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

long h_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

void h_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* -- Processes --------------------------------------------------------- */

static const char *wrapper(void)
{
    const char *w = getenv(H_WRAPPER_ENV);

    return w && *w ? w : NULL;
}

bool h_proxy_wrapped(void)
{
    return wrapper() != NULL;
}

/* A time limit, stretched when idemproxy runs under a wrapper. */
static long limit(long ms)
{
    return wrapper() ? ms * H_WRAPPED_FACTOR : ms;
}

static bool is_proxy(const char *path)
{
    static const char name[] = "/idemproxy";
    size_t n = strlen(path), k = sizeof(name) - 1;

    return n >= k && strcmp(path + n - k, name) == 0;
}

/* What to exec for path: argv itself, or for idemproxy under a wrapper,
 * the wrapper's words, path and argv[1...] (static storage; *file is the
 * first word, looked up in PATH). */
static const char *const *command(const char *path, const char *const *argv,
                                  const char **file)
{
    static char words[1024];
    static const char *cmd[MAX_ARGS];
    char *save = NULL, *w;
    size_t n = 0, i;

    *file = path;
    if (!wrapper() || !is_proxy(path))
        return argv;
    if (snprintf(words, sizeof(words), "%s", wrapper()) >= (int)sizeof(words))
        fail_msg("harness: %s is too long", H_WRAPPER_ENV);
    for (w = strtok_r(words, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        if (n == MAX_ARGS / 2)
            fail_msg("harness: %s has too many words", H_WRAPPER_ENV);
        cmd[n++] = w;
    }
    cmd[n++] = path;
    for (i = 1; argv[i] && n + 1 < MAX_ARGS; i++)
        cmd[n++] = argv[i];
    if (argv[i])
        fail_msg("harness: more than %d arguments", MAX_ARGS);
    cmd[n] = NULL;
    *file = cmd[0];
    return cmd;
}

/* In the child: stdout to out_w, stderr to err_fd, die with the parent. */
static void exec_child(pid_t parent, const char *file, const char *const *argv,
                       int out_w, int err_fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (dup2(out_w, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
        _exit(127);
    execvp(file, (char *const *)argv);
    dprintf(STDERR_FILENO, "exec %s: %s\n", file, strerror(errno));
    _exit(127);
}

/* Fork and exec into slot p (pid, out_fd, err_fd set). 0 or -1. */
static int spawn(struct h_proc *p, const char *path, const char *const *argv)
{
    char tmpl[] = "/tmp/idem-harness-XXXXXX";
    pid_t parent = getpid();
    const char *file;
    int out[2];

    p->err_fd = mkostemp(tmpl, O_CLOEXEC);
    if (p->err_fd < 0)
        return -1;
    unlink(tmpl);
    if (pipe2(out, O_CLOEXEC) < 0)
        return -1;
    argv = command(path, argv, &file);
    fflush(NULL);
    p->pid = fork();
    if (p->pid == 0)
        exec_child(parent, file, argv, out[1], p->err_fd);
    close(out[1]);
    p->out_fd = out[0];
    return p->pid < 0 ? -1 : 0;
}

/* Wait up to ms for pid to exit; its decoded status, or -1 if running. */
static int wait_exit(pid_t pid, long ms)
{
    long end = h_now_ms() + ms;
    int st;

    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);

        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 && errno != EINTR)
            return -1;
        if (h_now_ms() >= end)
            return -1;
        h_sleep_ms(10);
    }
}

/* Reap p: wait up to ms, then SIGKILL. The decoded exit status. */
static int reap(struct h_proc *p, long ms)
{
    int st = wait_exit(p->pid, ms);

    if (st < 0) {
        kill(p->pid, SIGKILL);
        st = wait_exit(p->pid, limit(H_STOP_TIMEOUT_MS));
    }
    p->pid = 0;
    if (p->out_fd >= 0)
        close(p->out_fd);
    p->out_fd = -1;
    return st;
}

void h_stderr(struct h_proc *p, char *buf, size_t cap)
{
    ssize_t n = p->err_fd >= 0 ? pread(p->err_fd, buf, cap - 1, 0) : 0;

    buf[n > 0 ? n : 0] = '\0';
}

int h_count(const char *s, const char *needle)
{
    int n = 0;

    while ((s = strstr(s, needle)) != NULL) {
        n++;
        s += strlen(needle);
    }
    return n;
}

bool h_stderr_await(struct h_proc *p, char *buf, size_t cap, const char *needle,
                    int n)
{
    long end = h_now_ms() + H_IO_TIMEOUT_MS;

    h_stderr(p, buf, cap);
    while (h_count(buf, needle) < n && h_now_ms() < end) {
        h_sleep_ms(20);
        h_stderr(p, buf, cap);
    }
    return h_count(buf, needle) >= n;
}

/* The last cap - 1 bytes of p's stderr into buf, NUL-terminated: where a
 * wrapper's report (valgrind's) is, after the program's own lines. */
static void stderr_tail(struct h_proc *p, char *buf, size_t cap)
{
    off_t end = p->err_fd >= 0 ? lseek(p->err_fd, 0, SEEK_END) : 0;
    off_t from = end > (off_t)(cap - 1) ? end - (off_t)(cap - 1) : 0;
    ssize_t n = p->err_fd >= 0 ? pread(p->err_fd, buf, cap - 1, from) : 0;

    buf[n > 0 ? n : 0] = '\0';
}

/* Read one line from p's stdout within ms. 0, or -1 at EOF or timeout. */
static int read_line(struct h_proc *p, char *line, size_t cap, long ms)
{
    long end = h_now_ms() + ms;
    size_t n = 0;

    while (n + 1 < cap) {
        struct pollfd pfd = { .fd = p->out_fd, .events = POLLIN };
        long left = end - h_now_ms();

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return -1;
        if (read(p->out_fd, line + n, 1) != 1)
            return -1;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    return 0;
}

/* The port after the last ':' of "key=HOST:PORT" in line; 0 if absent. */
static uint16_t line_port(const char *line, const char *key)
{
    const char *s = strstr(line, key), *colon = NULL;
    long port;

    if (!s)
        return 0;
    for (s += strlen(key); *s && *s != ' '; s++)
        if (*s == ':')
            colon = s;
    if (!colon)
        return 0;
    port = strtol(colon + 1, NULL, 10);
    return port > 0 && port < 65536 ? (uint16_t)port : 0;
}

static struct h_proc *slot(const char *path)
{
    const char *base = strrchr(path, '/');

    for (int i = 0; i < MAX_PROCS; i++) {
        if (!in_use[i]) {
            in_use[i] = true;
            procs[i] = (struct h_proc){ .out_fd = -1, .err_fd = -1 };
            snprintf(procs[i].name, sizeof(procs[i].name), "%s",
                     base ? base + 1 : path);
            return &procs[i];
        }
    }
    fail_msg("harness: more than %d processes in one test", MAX_PROCS);
    return NULL;
}

struct h_proc *h_start(const char *path, const char *const *argv)
{
    struct h_proc *p = slot(path);
    char line[512], err[4096];
    int st;

    if (spawn(p, path, argv) < 0)
        fail_msg("%s: cannot start: %s", p->name, strerror(errno));
    if (read_line(p, line, sizeof(line), limit(H_START_TIMEOUT_MS)) == 0 &&
        strncmp(line, "listening ", 10) == 0) {
        p->http_port = line_port(line, "http=");
        p->admin_port = line_port(line, "admin=");
        if (p->http_port)
            return p;
    }
    st = reap(p, 1000);
    h_stderr(p, err, sizeof(err));
    fail_msg("%s: no \"listening http=...\" line (exit status %d); "
             "stderr:\n%s",
             p->name, st, err);
    return NULL;
}

int h_run(const char *path, const char *const *argv, char *err, size_t cap)
{
    struct h_proc *p = slot(path);
    int st;

    if (spawn(p, path, argv) < 0)
        fail_msg("%s: cannot start: %s", p->name, strerror(errno));
    st = reap(p, limit(H_STOP_TIMEOUT_MS));
    if (err)
        h_stderr(p, err, cap);
    return st;
}

void h_signal(struct h_proc *p, int sig)
{
    if (p->pid > 0 && kill(p->pid, sig) == 0)
        p->signalled = true;
}

int h_stop(struct h_proc *p)
{
    if (p->pid <= 0)
        return -1;
    if (!p->signalled)
        kill(p->pid, SIGTERM);
    return reap(p, limit(H_STOP_TIMEOUT_MS));
}

static void on_watchdog(int sig)
{
    static const char msg[] = "harness: test ran past H_TEST_SECONDS\n";

    (void)sig;
    if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
        _exit(124);
    _exit(124); /* the children die with us (PR_SET_PDEATHSIG) */
}

int h_setup(void **state)
{
    struct sigaction sa = { .sa_handler = on_watchdog };

    (void)state;
    sigaction(SIGALRM, &sa, NULL);
    alarm((unsigned)limit(H_TEST_SECONDS));
    return 0;
}

const char *h_tmpdir(void)
{
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/idem-test-XXXXXX");
        if (!mkdtemp(tmpdir)) {
            tmpdir[0] = '\0';
            fail_msg("harness: mkdtemp: %s", strerror(errno));
        }
    }
    return tmpdir;
}

char *h_tmp_path(const char *name)
{
    return h_format("%s/%s", h_tmpdir(), name);
}

void h_make_certs(const char *script)
{
    static const char fns[] =
        "set -e\n"
        "key() { openssl genpkey -algorithm EC -pkeyopt "
        "ec_paramgen_curve:prime256v1 -out $1.key 2>/dev/null; }\n"
        "ca() { key $1; openssl req -x509 -key $1.key -out $1.pem -days 2 "
        "-subj /CN=$1 2>/dev/null; }\n"
        "srv() { key $1; openssl req -new -key $1.key -out $1.csr "
        "-subj /CN=$2 2>/dev/null; printf 'subjectAltName=%s\\n' $3 "
        ">$1.ext; openssl x509 -req -in $1.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -out $1.pem -days $4 -extfile $1.ext "
        "2>/dev/null; }\n";
    char *all = h_format("cd %s && %s%s", h_tmpdir(), fns, script);
    const char *argv[] = { "sh", "-c", all, NULL };
    char err[1024];

    if (h_run("/bin/sh", argv, err, sizeof(err)) != 0)
        fail_msg("harness: making certificates: %s", err);
    free(all);
}

/* Remove h_tmpdir() and the files in it. */
static void remove_tmpdir(void)
{
    DIR *d = tmpdir[0] ? opendir(tmpdir) : NULL;
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    rmdir(tmpdir);
    tmpdir[0] = '\0';
}

/* Stop slot i if it still runs and free it. 0, or -1 (after saying so
 * with its stderr) if it had to be stopped and did not exit 0. */
static int release(int i)
{
    struct h_proc *p = &procs[i];
    char err[4096];
    int rc = 0, st;

    if (p->pid > 0 && (st = h_stop(p)) != 0) {
        stderr_tail(p, err, sizeof(err));
        print_error("%s: exit status %d when stopped; stderr (end):\n%s\n",
                    p->name, st, err);
        rc = -1;
    }
    if (p->err_fd >= 0)
        close(p->err_fd);
    in_use[i] = false;
    return rc;
}

int h_teardown(void **state)
{
    int rc = 0;

    (void)state;
    alarm(0);
    for (int i = 0; i < MAX_PROCS; i++)
        if (in_use[i] && release(i) < 0)
            rc = -1;
    remove_tmpdir(); /* after the processes that may write there */
    return rc;
}

uint16_t h_free_port(void)
{
    return test_free_port();
}

/* -- HTTP client ------------------------------------------------------- */

static void dbuf_add(struct dbuf *b, const char *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Take b's string (an empty one if none); b is empty after. */
static char *dbuf_take(struct dbuf *b)
{
    char *s = b->p ? b->p : xstrndup("", 0);

    *b = (struct dbuf){ 0 };
    return s;
}

static struct h_conn *conn_of(llhttp_t *p)
{
    return p->data;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    dbuf_add(&conn_of(p)->field, at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    dbuf_add(&conn_of(p)->value, at, n);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct h_conn *c = conn_of(p);
    struct h_resp *r = c->resp;

    r->headers = xrealloc(r->headers, (r->nheaders + 1) * sizeof(*r->headers));
    r->headers[r->nheaders].name = dbuf_take(&c->field);
    r->headers[r->nheaders].value = dbuf_take(&c->value);
    r->nheaders++;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct h_conn *c = conn_of(p);

    c->resp->status = llhttp_get_status_code(p);
    return c->head ? 1 : 0; /* 1: no body follows */
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    dbuf_add(&conn_of(p)->body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct h_conn *c = conn_of(p);

    c->resp->keep_alive = llhttp_should_keep_alive(p);
    c->resp->body_len = c->body.len;
    c->resp->body = dbuf_take(&c->body);
    c->done = true;
    return HPE_PAUSED; /* stop at the end of this response */
}

static const llhttp_settings_t settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

struct h_conn *h_connect(uint16_t port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    struct h_conn *c = xrealloc(NULL, sizeof(*c));
    int one = 1;

    *c =
        (struct h_conn){ .fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (c->fd >= 0)
            close(c->fd);
        free(c);
        return NULL;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    h_set_timeout(c, H_IO_TIMEOUT_MS);
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    return c;
}

void h_set_timeout(struct h_conn *c, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int h_send(struct h_conn *c, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int h_send_str(struct h_conn *c, const char *s)
{
    return h_send(c, s, strlen(s));
}

/* Receive more bytes into c->in. 1, 0 at EOF or reset, -1 on timeout. */
static int recv_more(struct h_conn *c)
{
    char buf[16384];
    ssize_t n;

    do
        n = recv(c->fd, buf, sizeof(buf), 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        dbuf_add(&c->in, buf, (size_t)n);
        return 1;
    }
    if (n == 0 || errno == ECONNRESET || errno == EPIPE) {
        c->eof = true;
        return 0;
    }
    return -1;
}

/* Feed the buffered bytes to the parser up to the end of one response.
 * 0, or -1 if they are not HTTP. */
static int parse_buffered(struct h_conn *c)
{
    llhttp_errno_t err = llhttp_execute(&c->parser, c->in.p, c->in.len);
    size_t used = c->in.len;

    if (err == HPE_PAUSED) {
        used = (size_t)(llhttp_get_error_pos(&c->parser) - c->in.p);
        llhttp_resume(&c->parser);
    } else if (err != HPE_OK) {
        return -1;
    }
    memmove(c->in.p, c->in.p + used, c->in.len - used);
    c->in.len -= used;
    return 0;
}

/* At EOF: end a close-delimited body. 0 if that completed a response. */
static int finish(struct h_conn *c)
{
    c->finished = true;
    return llhttp_finish(&c->parser) == HPE_PAUSED && c->done ? 0 : -1;
}

int h_read(struct h_conn *c, struct h_resp *r, bool head)
{
    int rc = 0;

    *r = (struct h_resp){ 0 };
    c->resp = r;
    c->head = head;
    c->done = false;
    while (!c->done && rc == 0) {
        if (c->in.len > 0)
            rc = parse_buffered(c);
        else if (c->eof && !c->finished)
            rc = finish(c);
        else if (c->eof)
            rc = -1;
        else if (recv_more(c) < 0)
            rc = -1;
    }
    c->resp = NULL;
    c->field.len = c->value.len = c->body.len = 0;
    return rc;
}

int h_read_n(struct h_conn *c, struct h_resp *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (h_read(c, &r[i], false) < 0)
            return -1;
    return 0;
}

int h_expect_continue(struct h_conn *c, const char *head, const char *body,
                      struct h_resp *interim, struct h_resp *final)
{
    *final = (struct h_resp){ 0 };
    if (h_send_str(c, head) < 0 || h_read(c, interim, false) < 0)
        return -1;
    if (interim->status != 100)
        return 0;
    if (h_send_str(c, body) < 0)
        return -1;
    return h_read(c, final, false);
}

int h_recv_raw(struct h_conn *c, void *buf, size_t n)
{
    while (c->in.len < n && !c->eof)
        if (recv_more(c) <= 0)
            break;
    if (c->in.len < n)
        return -1;
    memcpy(buf, c->in.p, n);
    memmove(c->in.p, c->in.p + n, c->in.len - n);
    c->in.len -= n;
    return 0;
}

bool h_closed(struct h_conn *c)
{
    if (c->in.len > 0)
        return false;
    return c->eof || recv_more(c) == 0;
}

void h_close(struct h_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c->in.p);
    free(c->field.p);
    free(c->value.p);
    free(c->body.p);
    free(c);
}

void h_resp_free(struct h_resp *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->body);
    *r = (struct h_resp){ 0 };
}

const char *h_header(const struct h_resp *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

long h_json_long(const struct h_resp *r, const char *field)
{
    char *pat = h_format("\"%s\":", field);
    const char *at = r->body ? strstr(r->body, pat) : NULL;
    long v = -1;

    if (at)
        v = strtol(at + strlen(pat), NULL, 10);
    free(pat);
    return v;
}

/* -- Requests ---------------------------------------------------------- */

char *h_build(const struct h_req *q, size_t *len_out)
{
    size_t blen = q->body && !q->body_len ? strlen(q->body) : q->body_len;
    char *key =
        q->key ? h_format("Idempotency-Key: %s\r\n", q->key) : xstrndup("", 0);
    char *cl =
        q->body ? h_format("Content-Length: %zu\r\n", blen) : xstrndup("", 0);
    char *head =
        h_format("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s%s\r\n", q->method,
                 q->target, key, q->headers ? q->headers : "", cl);
    size_t hlen = strlen(head);

    head = xrealloc(head, hlen + blen + 1);
    if (blen)
        memcpy(head + hlen, q->body, blen);
    head[hlen + blen] = '\0';
    free(key);
    free(cl);
    *len_out = hlen + blen;
    return head;
}

/* Send raw[0..len) on a fresh connection to port and read one response. */
static int exchange(uint16_t port, const char *raw, size_t len, bool head,
                    struct h_resp *r, bool *closed)
{
    struct h_conn *c = h_connect(port);
    int rc = -1;

    *r = (struct h_resp){ 0 };
    if (c && h_send(c, raw, len) == 0)
        rc = h_read(c, r, head);
    if (closed)
        *closed = c && rc == 0 && h_closed(c);
    h_close(c);
    return rc;
}

int h_exchange(uint16_t port, const struct h_req *q, struct h_resp *r)
{
    size_t len;
    char *raw = h_build(q, &len);
    int rc = exchange(port, raw, len, strcmp(q->method, "HEAD") == 0, r, NULL);

    free(raw);
    return rc;
}

int h_exchange_raw(uint16_t port, const char *raw, struct h_resp *r,
                   bool *closed)
{
    return exchange(port, raw, strlen(raw), false, r, closed);
}

long h_upstream_count(uint16_t port)
{
    struct h_req q = { .method = "GET", .target = "/count" };
    struct h_resp r;
    long n = -1;

    if (h_exchange(port, &q, &r) == 0 && r.status == 200)
        n = h_json_long(&r, "executions");
    h_resp_free(&r);
    return n;
}

long h_upstream_wait_count(uint16_t port, long want)
{
    long end = h_now_ms() + H_IO_TIMEOUT_MS;
    long n;

    while ((n = h_upstream_count(port)) != want && h_now_ms() < end)
        h_sleep_ms(20);
    return n;
}

long h_metric(uint16_t admin_port, const char *name)
{
    struct h_req q = { .method = "GET", .target = "/metrics" };
    struct h_resp r;
    const char *p;
    size_t n = strlen(name);
    long v = -1;

    if (h_exchange(admin_port, &q, &r) != 0)
        return -1;
    for (p = r.body; p && (p = strstr(p, name)); p += n)
        if ((p == r.body || p[-1] == '\n') && (p[n] == ' ' || p[n] == '{')) {
            p = strchr(p, ' ');
            v = p ? strtol(p + 1, NULL, 10) : -1;
            break;
        }
    h_resp_free(&r);
    return v;
}
