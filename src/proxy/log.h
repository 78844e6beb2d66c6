/* idemproxy's log: one line per decision and a few lines of operations,
 * as text or JSON, to stderr or a file reopened on SIGHUP. Thread-safe:
 * lines are written whole, never mixed. */
#ifndef IDEMPROXY_LOG_H
#define IDEMPROXY_LOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Open the log per c (file or stderr). 0, or -1 with errno. */
int log_open(const struct config *c);

/* Take c's level, format and log_keys (a reload: the file stays).
 * Thread-safe. */
void log_settings(const struct config *c);

/* Reopen the log file (after rotation). Safe to call from the main loop
 * after SIGHUP. 0 or -1. */
int log_reopen(void);

void log_close(void);

/* Whether lines of level are written. */
bool log_enabled(enum log_level level);

/* What a thread collects for a regular file, at most: written when half
 * of it is, or LOG_BATCH_MS after the first line (for a pipe or socket:
 * PIPE_BUF, written at the end of each loop pass). */
#define LOG_BATCH_BYTES (32 * 1024)
#define LOG_BATCH_MS 100

/* Collect this thread's lines (on) and write them at log_flush, or (off:
 * flushing first) write each as it comes, the default. */
void log_buffer_lines(bool on);
/* Write this thread's collected lines; whether it has any; whether they
 * should be written at the end of this loop pass (else within
 * LOG_BATCH_MS). */
void log_flush(void);
bool log_pending(void);
bool log_flush_due(void);

/* An operational message at level: printf-style. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A rate limit for one kind of message, shared by threads: zeroed
 * (static) storage is ready to use. */
struct log_limit {
    _Atomic int64_t last_ms;     /* the last line out, CLOCK_MONOTONIC */
    _Atomic uint64_t suppressed; /* lines dropped since */
};

/* log_msg, at most once a second per lim: a line of the same kind in the
 * same second is only counted, and the next line that goes out ends in
 * "(N similar lines suppressed)". For messages a loop can repeat (accept
 * failures, libevent's own). Thread-safe, lock-free. */
void log_limited(struct log_limit *lim, enum log_level level, const char *fmt,
                 ...) __attribute__((format(printf, 3, 4)));

/* One request's decision. Strings are (pointer, length), may hold any
 * bytes (escaped on output); key may be NULL. */
struct log_decision {
    const char *client; /* client address, "ip:port" ("[v6]:port") */
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    const char *protocol; /* "HTTP/1.1", "HTTP/1.0" */
    const char *key;
    size_t key_len;
    const char *user_agent; /* or NULL */
    size_t user_agent_len;
    const char *request_id; /* X-Request-ID, or NULL */
    size_t request_id_len;
    const char *outcome;  /* idem_outcome_name(), or "error" */
    unsigned status;      /* status sent to the client */
    uint64_t bytes_sent;  /* to the client, head and body */
    const char *upstream; /* the upstream's address, or NULL: not asked */
    int64_t upstream_us;  /* -1 if the upstream was not asked */
    uint64_t total_us;
};

/* Log a decision at LOG_INFO. The key is logged as "k:" and the first 12
 * hex digits of its SHA-256 unless the config said log_keys. */
void log_decision(const struct log_decision *d);

#endif
