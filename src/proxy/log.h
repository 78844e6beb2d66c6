/* idemproxy's log: one line per decision and a few lines of operations,
 * as text or JSON, to stderr or a file reopened on SIGHUP. Thread-safe:
 * each line is one write(2). */
#ifndef IDEMPROXY_LOG_H
#define IDEMPROXY_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Open the log per c (file or stderr). 0, or -1 with errno. */
int log_open(const struct config *c);

/* Reopen the log file (after rotation). Safe to call from the main loop
 * after SIGHUP. 0 or -1. */
int log_reopen(void);

void log_close(void);

/* An operational message at level: printf-style. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* One request's decision. Strings are (pointer, length), may hold any
 * bytes (escaped on output); key may be NULL. */
struct log_decision {
    const char *client; /* client address, "ip:port" */
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    const char *key;
    size_t key_len;
    const char *outcome; /* idem_outcome_name(), or "error" */
    unsigned status;     /* status sent to the client */
    int64_t upstream_us; /* -1 if the upstream was not asked */
    uint64_t total_us;
};

/* Log a decision at LOG_INFO. The key is logged as "k:" and the first 12
 * hex digits of its SHA-256 unless the config said log_keys. */
void log_decision(const struct log_decision *d);

#endif
