/* Status codes shared by every libidem call: 0 is success, negatives are
 * errors. One X-macro generates the enum and idem_strerror()/idem_status_name()
 * so the two can never disagree. New codes are appended, never renumbered. */
#ifndef IDEM_STATUS_H
#define IDEM_STATUS_H

#if defined(IDEM_BUILDING) && defined(__GNUC__)
#define IDEM_API __attribute__((visibility("default")))
#else
#define IDEM_API
#endif

#define IDEM_STATUS_MAP(X)                                                     \
    X(OK, 0, "success")                                                        \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of memory")                                             \
    X(EBUSY, -3, "busy: held by another owner or a bound is reached")          \
    X(ETIMEDOUT, -4, "timed out")                                              \
    X(EPERM, -5, "not held by the caller")                                     \
    X(EDEADLK, -6, "already held by the caller")                               \
    X(EINPROGRESS, -7, "queued: the callback will follow")                     \
    X(EALREADY, -8, "already granted: the caller holds the lock")              \
    X(ENOTFOUND, -9, "not found")                                              \
    X(ESTALE, -10, "stale owner token")                                        \
    X(EIO, -11, "input/output error")                                          \
    X(EEXIST, -12, "already exists")                                           \
    X(E2BIG, -13, "too big for the bound")                                     \
    X(ENOSPC, -14, "no room: what is held may not be evicted yet")

enum idem_status {
#define IDEM_STATUS_ENUM(name, value, text) IDEM_##name = (value),
    IDEM_STATUS_MAP(IDEM_STATUS_ENUM)
#undef IDEM_STATUS_ENUM
};

/* Human-readable text for a status ("success", "out of memory", ...).
 * Never NULL: an unknown value gives "unknown status". Thread-safe. */
IDEM_API const char *idem_strerror(int status);

/* The status' symbol without prefix ("OK", "ENOMEM", ...), or "UNKNOWN".
 * Thread-safe. */
IDEM_API const char *idem_status_name(int status);

#endif
