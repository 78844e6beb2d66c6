/* An LD_PRELOAD shim that fails one allocation of a running program, for
 * tests/integration/test_failalloc.c. It counts the allocations made after
 * the program accepted its first connection (IDEM_FAIL_ALLOC_ACCEPTS'th,
 * default 1: start-up is never failed), makes the IDEM_FAIL_ALLOC_AT'th
 * return NULL, and writes what it saw to IDEM_FAIL_ALLOC_REPORT at exit:
 * "counted=K failed=F live=L marks=M1,M2,...", marks being the count at
 * each accept since arming. All else goes to libc unchanged. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define AT_ENV "IDEM_FAIL_ALLOC_AT"
#define ACCEPTS_ENV "IDEM_FAIL_ALLOC_ACCEPTS"
#define REPORT_ENV "IDEM_FAIL_ALLOC_REPORT"
#define BOOT_BYTES 8192 /* dlsym needs a few dozen bytes */
#define MAX_MARKS 16

struct real_fns {
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    int (*accept)(int, struct sockaddr *, socklen_t *);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
};

static struct real_fns real;
static bool resolving;

/* Allocations made while dlsym runs come from here and are never freed. */
static alignas(max_align_t) unsigned char boot[BOOT_BYTES];
static size_t boot_used;

static atomic_bool armed;
static unsigned long fail_at;          /* 0: fail none */
static atomic_ulong counted;           /* allocations since arming */
static atomic_ulong failed;            /* allocations failed (0 or 1) */
static atomic_long live;               /* blocks allocated and not yet freed */
static atomic_ulong accepts;           /* connections accepted */
static unsigned long marks[MAX_MARKS]; /* counted at each armed accept */
static atomic_ulong nmarks;
static char report_path[4096]; /* "" when no report is wanted */

/* -- Resolving libc's functions --------------------------------------- */

static void *boot_alloc(size_t n)
{
    size_t step = sizeof(max_align_t);
    size_t size = (n + step - 1) / step * step;
    void *p;

    if (n > BOOT_BYTES || size > BOOT_BYTES - boot_used)
        return NULL; /* dlsym sees an ordinary ENOMEM */
    p = boot + boot_used;
    boot_used += size;
    return p;
}

static bool is_boot(const void *p)
{
    const unsigned char *b = p;

    return b >= boot && b < boot + BOOT_BYTES;
}

#define RESOLVE(name)                                                          \
    (real.name = (__typeof__(real.name))dlsym(RTLD_NEXT, #name))

/* Look up the next definitions once, before any thread exists (the first
 * allocation of the process comes first). */
static void resolve(void)
{
    resolving = true;
    RESOLVE(malloc);
    RESOLVE(calloc);
    RESOLVE(realloc);
    RESOLVE(free);
    RESOLVE(posix_memalign);
    RESOLVE(aligned_alloc);
    RESOLVE(memalign);
    RESOLVE(accept);
    RESOLVE(accept4);
    resolving = false;
    if (!real.malloc || !real.calloc || !real.realloc || !real.free)
        abort(); /* no libc to forward to: nothing can work */
}

/* Whether to resolve now (false while resolving: use boot memory). */
static bool ready(void)
{
    if (resolving)
        return false;
    if (!real.malloc)
        resolve();
    return true;
}

/* -- Counting ---------------------------------------------------------- */

/* Called as the chosen allocation fails: a debugger's breakpoint
 * ("break failalloc_hit", then "bt") shows the failing call site. */
__attribute__((noinline)) void failalloc_hit(void);

__attribute__((noinline)) void failalloc_hit(void)
{
    __asm__ volatile(""); /* keep the call: it exists to be stopped at */
}

/* Whether this allocation is the one to fail. Counts it when armed. */
static bool should_fail(void)
{
    unsigned long n;

    if (!atomic_load_explicit(&armed, memory_order_acquire))
        return false; /* acquire: fail_at, written before arming, is set */
    n = atomic_fetch_add(&counted, 1) + 1;
    if (n != fail_at)
        return false;
    atomic_fetch_add(&failed, 1);
    failalloc_hit();
    errno = ENOMEM;
    return true;
}

static void *track(void *p)
{
    if (p)
        atomic_fetch_add(&live, 1);
    return p;
}

static unsigned long env_ulong(const char *name, unsigned long dflt)
{
    const char *v = getenv(name);

    return v && *v ? strtoul(v, NULL, 10) : dflt;
}

/* A connection was accepted: start counting at the chosen one, and note
 * where the count stands at each one from then on. */
static void on_accept(void)
{
    unsigned long n = atomic_fetch_add(&accepts, 1) + 1, i;

    if (!atomic_load(&armed) && n == env_ulong(ACCEPTS_ENV, 1)) {
        fail_at = env_ulong(AT_ENV, 0);
        atomic_store(&armed, true);
    }
    if (atomic_load(&armed) && (i = atomic_fetch_add(&nmarks, 1)) < MAX_MARKS)
        marks[i] = atomic_load(&counted);
}

/* -- The interposed functions ------------------------------------------ */

void *malloc(size_t n)
{
    if (!ready())
        return boot_alloc(n);
    return should_fail() ? NULL : track(real.malloc(n));
}

void *calloc(size_t n, size_t size)
{
    if (!ready())
        return boot_alloc(size && n > SIZE_MAX / size ? SIZE_MAX : n * size);
    return should_fail() ? NULL : track(real.calloc(n, size));
}

void free(void *p)
{
    if (!p || is_boot(p))
        return;
    if (!ready())
        return; /* cannot happen: only boot memory exists while resolving */
    atomic_fetch_sub(&live, 1);
    real.free(p);
}

/* A boot block moved to the real heap: its old size is unknown, but no
 * boot block is bigger than what is left of boot after it. */
static void *from_boot(void *p, size_t n)
{
    size_t most = (size_t)(boot + BOOT_BYTES - (unsigned char *)p);
    void *q = malloc(n);

    if (q)
        memcpy(q, p, n < most ? n : most);
    return q;
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (is_boot(p))
        return from_boot(p, n);
    if (!ready())
        return NULL;
    if (n == 0) { /* glibc frees p and returns NULL */
        atomic_fetch_sub(&live, 1);
        return real.realloc(p, 0);
    }
    return should_fail() ? NULL : real.realloc(p, n);
}

void *reallocarray(void *p, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n * size);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    int rc;

    if (!ready() || !real.posix_memalign)
        return ENOMEM;
    if (should_fail())
        return ENOMEM;
    rc = real.posix_memalign(out, align, n);
    if (rc == 0)
        track(*out);
    return rc;
}

void *aligned_alloc(size_t align, size_t n)
{
    if (!ready() || !real.aligned_alloc)
        return NULL;
    return should_fail() ? NULL : track(real.aligned_alloc(align, n));
}

void *memalign(size_t align, size_t n)
{
    if (!ready() || !real.memalign)
        return NULL;
    return should_fail() ? NULL : track(real.memalign(align, n));
}

int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
    int rc;

    if (!ready() || !real.accept)
        return -1;
    rc = real.accept(fd, sa, len);
    if (rc >= 0)
        on_accept();
    return rc;
}

int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    int rc;

    if (!ready() || !real.accept4)
        return -1;
    rc = real.accept4(fd, sa, len, flags);
    if (rc >= 0)
        on_accept();
    return rc;
}

/* -- The report ---------------------------------------------------------- */

/* The report line into buf; its length, or -1 if it does not fit. */
static int format_report(char *buf, size_t cap)
{
    unsigned long i, n = atomic_load(&nmarks);
    int len, k;

    len = snprintf(buf, cap, "counted=%lu failed=%lu live=%ld marks=",
                   atomic_load(&counted), atomic_load(&failed),
                   atomic_load(&live));
    for (i = 0; len >= 0 && i < n && i < MAX_MARKS; i++) {
        k = snprintf(buf + len, cap - (size_t)len, "%s%lu", i ? "," : "",
                     marks[i]);
        len = k < 0 || (size_t)k >= cap - (size_t)len ? -1 : len + k;
    }
    if (len < 0 || (size_t)len + 1 >= cap)
        return -1;
    buf[len++] = '\n';
    return len;
}

/* Write the report with write(2), not stdio: stdio may be gone. */
static void write_report(void)
{
    char line[512];
    int fd, n = format_report(line, sizeof(line));

    if (!report_path[0] || n < 0)
        return;
    fd = open(report_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) != n)
        unlink(report_path); /* a short report would mislead: none */
    close(fd);
}

__attribute__((constructor)) static void init(void)
{
    const char *path = getenv(REPORT_ENV);

    ready();
    if (path && strlen(path) < sizeof(report_path))
        memcpy(report_path, path, strlen(path) + 1);
}

/* A destructor runs after main has returned and after the atexit
 * handlers (OpenSSL frees its state in one): the live count is what the
 * program kept to its end. */
__attribute__((destructor)) static void fini(void)
{
    write_report();
}
