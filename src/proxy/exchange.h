/* exchange: one client connection's HTTP/1.1 exchanges with no sockets
 * in it (sans-I/O, as the cores of h2o and nghttp2 are). Bytes and events
 * go in through the ex_* calls; bytes come out in two buffers (for the
 * client, for the upstream) and what the driver should do next is read
 * from ex_wants(). The few things only a driver can do (get an upstream
 * connection, arm a timer, wake the loop from another thread) it asks
 * through struct exchange_io.
 *
 * A connection handles one request at a time: the parser pauses after
 * each, so pipelined requests wait, parsed no further, and their answers
 * leave in order. For each request: the head is parsed within the limits
 * and judged (target.h), the engine decides, and the request is
 * forwarded, its response relayed (and captured for the engine), or a
 * stored response replayed, or the request refused. A request that asks
 * to switch protocols (Upgrade) and that the engine does not cover goes
 * up with its Upgrade; a 101 turns the connection into a tunnel (EX_TUNNEL:
 * raw bytes both ways, under an idle and a total bound).
 *
 * The exchange never frees itself: after each ex_* call the driver
 * flushes the buffers, applies ex_wants(), and frees the exchange once
 * it says EX_END_FREE. docs/internals/proxy.md draws the states. */
#ifndef IDEMPROXY_EXCHANGE_H
#define IDEMPROXY_EXCHANGE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "http.h"
#include "idem/engine.h"

/* Backpressure, both ways: bytes queued for the slower side past
 * EX_HIGH stop reading from the faster one until they drain to EX_LOW. */
#define EX_HIGH (256 * 1024)
#define EX_LOW (64 * 1024)

/* Retry-After on a 503 the store caused (outcome unavailable). */
#define EX_STORE_RETRY_AFTER_S 1

/* The longest X-Request-ID kept from a client (a longer one, or one with
 * other than visible ASCII, is replaced by a fresh one). */
#define EX_REQUEST_ID_MAX 200

/* The upstream's response head: bytes and fields at most (502 past). */
#define EX_RESPONSE_HEAD_MAX (64 * 1024)
#define EX_RESPONSE_FIELDS_MAX 256

/* After answering a request before reading all of it, the connection
 * reads and discards for up to EX_LINGER_IDLE_MS idle and EX_LINGER_MAX
 * bytes before closing, so the client reads the answer instead of a
 * reset (what nginx calls a lingering close). */
#define EX_LINGER_IDLE_MS 2000
#define EX_LINGER_MAX (64u << 20)

/* Where the exchange is with its client. */
enum ex_phase {
    EX_HEAD,     /* reading a request head (idle when none began) */
    EX_BODY,     /* reading a body (buffered, or streaming upstream) */
    EX_DECIDING, /* the engine decides (wait mode) */
    EX_UPSTREAM, /* forwarded; relaying the response */
    EX_LATE,     /* answered 504; waiting for the late response, for the
                  * store only */
    EX_DRAINING, /* the last response is queued; close once it is out */
    EX_LINGER,   /* answered early: discard what the client still sends */
    EX_TUNNEL,   /* switched protocols (101): bytes relayed raw both ways */
    EX_DONE,     /* nothing left to do: the driver frees it */
};

/* Where the request's response is. */
enum ex_response {
    EX_RESP_NONE,    /* nothing sent to the client yet */
    EX_RESP_RELAYED, /* the upstream's head went out; body follows */
    EX_RESP_ANSWERED /* the proxy's own answer, or the whole response */
};

/* How the relayed body is framed for the client. */
enum ex_framing {
    EX_FRAME_LENGTH,  /* the upstream's Content-Length (or no body) */
    EX_FRAME_CHUNKED, /* chunked again: no length, HTTP/1.1 client */
    EX_FRAME_CLOSE    /* ends with the connection (HTTP/1.0 client) */
};

/* What is kept of the response for the engine. */
enum ex_capture {
    EX_CAPTURE_NONE,   /* not a request the engine covers */
    EX_CAPTURE_KEEP,   /* kept whole so far */
    EX_CAPTURE_OVER,   /* passed max_stored_body: cut, the engine knows */
    EX_CAPTURE_FAILED, /* out of memory: do not store */
};

/* The request's body. */
enum ex_body {
    EX_BODY_BUFFERED, /* kept, up to max_body, for the engine and upstream */
    EX_BODY_STREAMED, /* not covered: goes upstream as it arrives */
};

/* Where the upstream exchange is. */
enum ex_up {
    EX_UP_NONE,    /* no upstream connection */
    EX_UP_WAITING, /* the request is queued or sent; no final head yet */
    EX_UP_BODY,    /* the final head arrived; reading the body */
};

/* The exchange's timers. */
enum ex_timer {
    EX_TIMER_CLIENT,   /* the client's deadline: a request in time, or
                        * the linger's idle bound, or a tunnel's */
    EX_TIMER_UPSTREAM, /* the upstream's (idle once the response flows),
                        * then a late wait's bound, or a tunnel's total
                        * bound */
    EX_TIMER_RENEW,    /* the next lease renewal */
    EX_TIMERS
};

/* How the upstream connection ended, as its driver saw it. */
struct ex_up_end {
    bool connected; /* the connection had been made */
    bool reused;    /* it served a request before this one */
    bool sent;      /* a byte of this request left for the upstream */
};

struct exchange;

/* What the exchange asks of its driver. */
struct exchange_io {
    /* Send the request queued in up_out on an upstream connection (a
     * pooled one, or a new one). 0, or -1: none to be had, nothing
     * sent. */
    int (*upstream_open)(struct exchange *ex);
    /* Done with the upstream connection: to the pool when reusable
     * (the response was whole, nothing followed it), else close it. */
    void (*upstream_release)(struct exchange *ex, bool reusable);
    /* Arm timer t to fire in ms milliseconds, or (ms < 0) stop it. */
    void (*timer)(struct exchange *ex, enum ex_timer t, int64_t ms);
    /* From any thread: have ex_decided(ex) called on the exchange's. */
    void (*wake)(struct exchange *ex);
};

/* What the driver should do after an ex_* call. */
enum ex_end {
    EX_END_NONE,   /* go on */
    EX_END_CLOSE,  /* close the client once client_out is written */
    EX_END_LINGER, /* once written: shut down writing, read and drop */
    EX_END_DROP,   /* the client is gone or to be let go: close it now,
                    * discarding client_out; the exchange may go on for
                    * the store (EX_LATE) */
    EX_END_FREE,   /* free the exchange (and close all it has) */
};

struct ex_wants {
    bool read_client;   /* read from the client */
    bool read_upstream; /* read from the upstream */
    enum ex_end end;
};

/* What the exchange shares with the others of its worker. */
struct ex_ctx {
    const struct config *cfg;
    struct idem_engine *engine; /* outside every route */
    /* route_engines[i] for cfg->routes[i]; NULL: engine for all */
    struct idem_engine *const *route_engines;
    uint64_t bypass_logged_us; /* the last --store-failure open warning */
};

struct exchange {
    const struct exchange_io *io;
    struct ex_ctx *ctx;
    void *data;      /* the driver's */
    char client[64]; /* "ip:port" */
    /* The client's address, parsed once (forward_peer_init): without its
     * port, as 16 bytes (IPv4 as ::ffff:a.b.c.d; peer_is_ip false for a
     * name) and as Forwarded's node ("[v6]"). */
    char peer_ip[64];
    unsigned char peer_bin[16];
    bool peer_is_ip;
    char peer_node[66];
    bool tls; /* the client's connection is TLS (set by the driver
               * before the first byte; X-Forwarded-Proto's fact) */
    /* The client's protocol for the log when the driver translates it
     * ("HTTP/2"), or NULL: the request line's. */
    const char *protocol;

    enum ex_phase phase;
    enum ex_response response;
    enum ex_framing framing;
    enum ex_capture capture;
    enum ex_body body_mode;
    enum ex_up up;
    bool close_after;   /* Connection: close, HTTP/1.0, or an error */
    bool request_done;  /* the whole request has been read */
    bool client_gone;   /* the client left; finish for the store only */
    bool retried;       /* sent again once on a fresh upstream */
    bool kick;          /* run the resumed parser even on no input */
    bool in_paused;     /* the upstream is behind: the client waits */
    bool up_paused;     /* the client is behind: the upstream waits */
    bool up_got_bytes;  /* a response byte arrived for this request */
    bool up_keep_alive; /* the response allows the connection's reuse */
    bool up_head_only;  /* the request was HEAD: no body follows */
    bool upgrade;       /* the request asks to switch protocols and goes
                         * up with its Upgrade (a 101 makes a tunnel) */

    struct http_reader rd; /* the request parser and head */
    struct buf in;         /* client bytes not yet parsed */
    struct buf body;       /* a buffered request body */
    size_t lingered;       /* bytes discarded while lingering */
    unsigned refusal;      /* decided inside a parser callback */
    const char *refusal_detail;
    int refusal_outcome; /* enum idem_outcome, or METRICS_OUTCOME_ERROR */

    struct idem_call *call;
    struct idem_decision decision;
    size_t max_stored_body; /* the request's route's */
    struct buf stored;      /* the response body kept for the engine */

    struct http_response resp; /* the upstream's response */
    size_t up_queued;          /* request bytes queued when it was sent */

    struct buf client_out; /* for the client */
    struct buf up_out;     /* for the upstream */

    char request_id[EX_REQUEST_ID_MAX + 1]; /* "": not chosen yet */
    uint64_t t_start_us, t_upstream_us;
    uint64_t out_mark; /* client_out.added when the request began */
    char up_addr[72];  /* the upstream's "ip:port" as the driver said it
                        * (kept past the connection, for the log); "": not
                        * asked */
    unsigned status_sent;
};

/* Set up ex for a new client connection (client: its "ip:port"). */
void ex_init(struct exchange *ex, const struct exchange_io *io,
             struct ex_ctx *ctx, const char *client, void *data);
/* Free what ex holds (an unfinished call is settled as the engine's
 * free does: released if not forwarded, else by the unknown-outcome
 * policy). The driver has closed its sockets. */
void ex_deinit(struct exchange *ex);

/* Inputs. */
void ex_client_data(struct exchange *ex, const char *p, size_t n);
/* The client closed, failed, or a write to it failed or timed out. */
void ex_client_gone(struct exchange *ex);
/* client_out drained to EX_LOW or below. */
void ex_client_drained(struct exchange *ex);
void ex_upstream_data(struct exchange *ex, const char *p, size_t n);
/* The upstream connection ended (EOF, error, or failed to connect). */
void ex_upstream_closed(struct exchange *ex, struct ex_up_end how);
/* up_out drained to EX_LOW or below. */
void ex_upstream_drained(struct exchange *ex);
void ex_timeout(struct exchange *ex, enum ex_timer t);
/* The engine decided (after io->wake). */
void ex_decided(struct exchange *ex);
/* Shutdown: an idle connection closes now, a busy one after its answer.
 * True if it was idle. */
bool ex_shutdown(struct exchange *ex);

/* What the driver should do now. */
struct ex_wants ex_wants(const struct exchange *ex);

/* Whether no request has begun on ex since its last answer. */
bool ex_idle(const struct exchange *ex);

#endif
