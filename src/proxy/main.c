/* idemproxy: flags, start-up, signals and graceful shutdown. The main
 * thread owns the engine, the admin listener, the engine's timer and the
 * signals; workers own client traffic. */
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "idem/idem.h"
#include "idem/redis.h"
#include "log.h"
#include "admin.h"
#include "service.h"
#include "tls.h"
#include "worker.h"

#define TICK_MS 100
#define TRIM_TICKS 50        /* every 5 s: return freed heap to the kernel */
#define EVICT_CHECK_TICKS 10 /* every 1 s: young records evicted? */

struct app {
    const struct config *cfg; /* gen's */
    struct gen *gen;          /* the newest generation */
    int argc;                 /* the flags, parsed again at a reload */
    char **argv;
    struct engines *engines;
    struct idem_store *store;
    struct idem_env env; /* the engine's: timers on the workers' loops */
    struct worker *workers;
    unsigned nworkers;
    struct event_base *base;
    struct admin *admin;
    struct tls *tls;       /* TLS contexts, or NULL */
    struct upaddrs *first; /* the upstream's addresses at start */
    struct resolver *resolver;
    uint16_t port, admin_port; /* bound (the flags may say 0) */
};

/* A listening TCP socket on a; port 0 picks one. *port_out: the port. */
static int listen_on(const struct addr *a, bool reuseport, uint16_t *port_out)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    struct addrinfo *res;
    char port[8];
    int fd = -1, one = 1;

    snprintf(port, sizeof(port), "%u", a->port);
    if (getaddrinfo(a->host, port, &hints, &res) != 0)
        return -1;
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 &&
        (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
         (reuseport &&
          setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
         bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) ||
         getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0)
        *port_out = ntohs(ss.ss_family == AF_INET6
                              ? ((struct sockaddr_in6 *)&ss)->sin6_port
                              : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static void log_store(void *ud, bool trouble, const char *msg)
{
    (void)ud;
    log_msg(trouble ? LOG_WARN : LOG_INFO, "%s", msg);
}

/* The longest body any route stores. */
static size_t max_stored_body(const struct config *c)
{
    size_t most = c->max_stored_body, i;

    for (i = 0; i < c->nroutes; i++)
        if (c->routes[i].max_stored_body > most)
            most = c->routes[i].max_stored_body;
    return most;
}

/* The largest record a response may need: its stored body, its head as
 * upstream.c reads it, the key, and the record's own bytes. */
static size_t record_need(const struct config *c)
{
    return max_stored_body(c) + EX_RESPONSE_HEAD_MAX +
           (size_t)EX_RESPONSE_FIELDS_MAX * 8 + IDEM_KEY_MAX_LEN + 512;
}

static int make_store(struct app *app, const struct config *c)
{
    struct idem_store_memory_opts mo = {
        .max_memory = c->max_memory,
        .max_record = record_need(c),
        .min_retention_ms =
            c->when_full == WHEN_FULL_REFUSE ? c->min_retention_ms : 0,
    };
    struct idem_store_redis_opts ro = {
        .url = c->store,
        .prefix = c->redis_prefix,
        .connect_timeout_ms = c->redis_timeout_ms,
        .command_timeout_ms = c->redis_timeout_ms,
        .replicas = (int)c->redis_replicas,
        .log = log_store,
    };

    if (config_store_is_memory(c))
        return idem_store_memory_new(&mo, &app->store);
    return idem_store_redis_new(&ro, &app->store);
}

/* Whether the store takes the largest record c may store; if not, says
 * so on stderr. */
static bool record_fits(const struct app *app, const struct config *c)
{
    if (idem_store_max_record(app->store) >= record_need(c))
        return true;
    fprintf(stderr,
            "idemproxy: --max-stored-body %zu does not fit in "
            "--max-memory %zu: a record may take %zu bytes, the store "
            "holds %zu (raise --max-memory or lower --max-stored-body)\n",
            max_stored_body(c), c->max_memory, record_need(c),
            idem_store_max_record(app->store));
    return false;
}

/* The store, the engine registry and the first generation, of cfg
 * (taken). 0, -1, or -2 (the configuration cannot work: exit 2). */
static int make_engines(struct app *app, struct config *cfg)
{
    bool redis = !config_store_is_memory(cfg);
    int rc = make_store(app, cfg);

    if (redis) /* waits poll Redis on the workers' loops */
        idem_store_redis_timers(&app->env);
    if (rc == IDEM_OK && !record_fits(app, cfg)) {
        config_free(cfg);
        return -2;
    }
    if (rc == IDEM_OK &&
        !(app->engines = gen_engines_new(app->store, redis ? &app->env : NULL)))
        rc = IDEM_ENOMEM;
    if (rc == IDEM_OK)
        rc = gen_new(app->engines, cfg, &app->gen);
    else
        config_free(cfg);
    if (rc != IDEM_OK) {
        log_msg(LOG_ERROR, "cannot create the engine: %s", idem_strerror(rc));
        return -1;
    }
    app->cfg = &app->gen->cfg;
    return 0;
}

/* A snapshot that could not be loaded is kept beside, as FILE.rejected,
 * so the one saved at exit does not overwrite the records it holds. */
static void keep_rejected(const char *path)
{
    size_t n = strlen(path) + sizeof(".rejected");
    char *kept = malloc(n);

    if (!kept)
        return;
    snprintf(kept, n, "%s.rejected", path);
    if (rename(path, kept) == 0)
        log_msg(LOG_ERROR, "snapshot %s kept as %s", path, kept);
    free(kept);
}

static void load_snapshot(struct app *app)
{
    struct idem_snapshot_stats st = { 0 };
    const char *path = app->cfg->snapshot;
    int rc;

    if (!path)
        return;
    rc = idem_store_memory_load(app->store, path, &st);
    if (rc == IDEM_OK)
        log_msg(LOG_INFO, "snapshot %s: %llu records loaded, %llu expired",
                path, (unsigned long long)st.loaded,
                (unsigned long long)st.expired);
    else if (rc == IDEM_E2BIG)
        log_msg(LOG_ERROR,
                "snapshot %s not loaded: its %llu live records do not fit "
                "--max-memory %zu; nothing was loaded (raise --max-memory)",
                path, (unsigned long long)st.refused, app->cfg->max_memory);
    else if (rc != IDEM_ENOTFOUND)
        log_msg(LOG_ERROR, "snapshot %s not loaded: %s; nothing was loaded",
                path,
                rc == IDEM_EIO ? "damaged or unreadable" : idem_strerror(rc));
    if (rc != IDEM_OK && rc != IDEM_ENOTFOUND)
        keep_rejected(path);
}

static void save_snapshot(struct app *app)
{
    struct idem_snapshot_stats st = { 0 };
    int rc;

    if (!app->cfg->snapshot)
        return;
    rc = idem_store_memory_save(app->store, app->cfg->snapshot, &st);
    if (rc == IDEM_OK)
        log_msg(LOG_INFO, "snapshot %s: %llu records saved", app->cfg->snapshot,
                (unsigned long long)st.saved);
    else
        log_msg(LOG_ERROR, "snapshot %s not saved: %s (%s)", app->cfg->snapshot,
                idem_strerror(rc), strerror(errno));
}

/* Bind every worker's listener (SO_REUSEPORT, one port: the first socket
 * picks it when the flag said 0) and the admin one. */
static int start_listening(struct app *app, int *fds, int *admin_fd)
{
    struct addr a = app->cfg->listen;
    uint16_t port = 0, admin_port = 0;
    unsigned i;

    for (i = 0; i < app->nworkers; i++) {
        fds[i] = listen_on(&a, true, &port);
        if (fds[i] < 0) {
            log_msg(LOG_ERROR, "cannot listen on %s:%u: %s", a.host, a.port,
                    strerror(errno));
            return -1;
        }
        a.port = port;
    }
    *admin_fd = -1;
    if (app->cfg->admin_enabled &&
        (*admin_fd = listen_on(&app->cfg->admin, false, &admin_port)) < 0) {
        log_msg(LOG_ERROR, "cannot listen on %s:%u (admin): %s",
                app->cfg->admin.host, app->cfg->admin.port, strerror(errno));
        return -1;
    }
    app->port = port;
    app->admin_port = admin_port;
    return 0;
}

/* Say where, once everything runs: whoever waits for this line may send
 * requests and signals at once. */
static void announce(const struct app *app)
{
    if (app->cfg->admin_enabled)
        printf("listening http=%s:%u admin=%s:%u\n", app->cfg->listen.host,
               app->port, app->cfg->admin.host, app->admin_port);
    else
        printf("listening http=%s:%u admin=off\n", app->cfg->listen.host,
               app->port);
    fflush(stdout);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    unsigned i;

    (void)what;
    log_msg(LOG_INFO, "signal %d: finishing in-flight requests", (int)sig);
    service_stopping();
    for (i = 0; i < app->nworkers; i++)
        worker_stop(&app->workers[i]);
    loop_exit(app->base);
}

/* SIGUSR1 (nginx's signal for it) and SIGHUP: reopen the log. */
static void reopen_log(void)
{
    if (log_reopen() != 0)
        log_msg(LOG_ERROR, "cannot reopen the log: %s", strerror(errno));
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    reopen_log();
}

/* systemd's watchdog: alive while the main loop turns and every worker's
 * loop has turned within half the period (worker.h's heartbeat). */
static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    int64_t now = worker_now_ms();
    int64_t half = (int64_t)(service_watchdog_ms() / 2);
    bool alive = true;
    unsigned i;

    (void)fd;
    (void)what;
    for (i = 0; i < app->nworkers; i++)
        alive = alive && now - atomic_load(&app->workers[i].beat_ms) < half;
    service_watchdog(alive);
}

/* What a reload cannot change, said once per option that changed. */
static void warn_fixed(const struct config *old, const struct config *c)
{
    static const char *const later = "changes at the next restart only";

    if (memcmp(&old->listen, &c->listen, sizeof(c->listen)) != 0)
        log_msg(LOG_WARN, "reload: --listen %s", later);
    if (memcmp(&old->admin, &c->admin, sizeof(c->admin)) != 0 ||
        old->admin_enabled != c->admin_enabled)
        log_msg(LOG_WARN, "reload: --admin-listen %s", later);
    if (old->workers != c->workers)
        log_msg(LOG_WARN, "reload: --workers %s", later);
    if (strcmp(old->store, c->store) != 0 ||
        strcmp(old->redis_prefix, c->redis_prefix) != 0 ||
        old->max_memory != c->max_memory)
        log_msg(LOG_WARN, "reload: the store's options %s", later);
}

/* Whether every route prefix of a is one of b's. */
static bool prefixes_within(const struct config *a, const struct config *b)
{
    size_t i;

    for (i = 0; i < a->nroutes; i++)
        if (!config_route_at(b, a->routes[i].prefix))
            return false;
    return true;
}

static bool same_scope_headers(const struct config *a, const struct config *b)
{
    size_t i;

    if (a->nscope_headers != b->nscope_headers)
        return false;
    for (i = 0; i < a->nscope_headers; i++)
        if (strcasecmp(a->scope_headers[i], b->scope_headers[i]) != 0)
            return false;
    return true;
}

/* Whether every name of list a (n of them) is in list b (m), any case. */
static bool names_within(char *const *a, size_t n, char *const *b, size_t m)
{
    size_t i, j;

    for (i = 0; i < n; i++) {
        for (j = 0; j < m && strcasecmp(a[i], b[j]) != 0; j++)
            ;
        if (j == m)
            return false;
    }
    return true;
}

/* Whether c honours every method old did, globally and on each route
 * both have (a route without its own list follows the global one). */
static bool methods_kept(const struct config *old, const struct config *c)
{
    const struct route *r, *s;
    size_t i;

    if (!names_within(old->methods, old->nmethods, c->methods, c->nmethods))
        return false;
    for (i = 0; i < old->nroutes; i++) {
        r = &old->routes[i];
        s = config_route_at(c, r->prefix);
        if (s && !names_within(r->methods ? r->methods : old->methods,
                               r->methods ? r->nmethods : old->nmethods,
                               s->methods ? s->methods : c->methods,
                               s->methods ? s->nmethods : c->nmethods))
            return false;
    }
    return true;
}

/* Whether c takes the key from every header old did. */
static bool key_headers_kept(const struct config *old, const struct config *c)
{
    char *was[2] = { old->key_header, old->alt_key_header };
    char *now[2] = { c->key_header, c->alt_key_header };

    return names_within(was, was[1] ? 2 : 1, now, now[1] ? 2 : 1);
}

/* What a reload can do to requests made before it. A key's scope is its
 * route's prefix and the scope headers' values: changing either moves
 * keys stored before out of reach of their retries. A key header or a
 * method no longer honoured sends such a retry on without the guarantee.
 * Either way the retry runs again. Said, so an operator knows. */
static void warn_rescoped(const struct config *old, const struct config *c)
{
    if (!prefixes_within(old, c) || !prefixes_within(c, old))
        log_msg(LOG_WARN,
                "reload: the route prefixes changed; a key's scope holds its "
                "route's prefix, so a retry of a request made before the "
                "reload whose route changed is not recognized, and runs "
                "again");
    if (!same_scope_headers(old, c))
        log_msg(LOG_WARN,
                "reload: --scope-headers changed; every key's scope did, so "
                "a retry of a request made before the reload is not "
                "recognized, and runs again");
    if (!key_headers_kept(old, c))
        log_msg(LOG_WARN,
                "reload: a key header is no longer honoured; a retry of a "
                "request made before the reload that sends it is forwarded "
                "without the guarantee, and runs again (keep the old name "
                "as --alt-key-header while retries may come)");
    if (!methods_kept(old, c))
        log_msg(LOG_WARN,
                "reload: a method no longer honours keys; a retry of a "
                "request made before the reload with that method is "
                "forwarded without the guarantee, and runs again");
}

/* The configuration as SIGHUP reads it again, into *cfg: true, or false
 * after logging why it is refused (the running one is kept). */
static bool reparse(struct app *app, struct config *cfg)
{
    char *msg = NULL;
    size_t len = 0;
    FILE *err = open_memstream(&msg, &len);
    int rc =
        config_parse(cfg, app->argc, app->argv, stdout, err ? err : stderr);

    if (err)
        fclose(err);
    if (rc == 0 && !record_fits(app, cfg)) {
        config_free(cfg);
        rc = 2;
    }
    if (rc != 0)
        log_msg(LOG_ERROR,
                "reload refused: %.*s; the running configuration "
                "is kept",
                (int)(len && msg[len - 1] == '\n' ? len - 1 : len),
                msg ? msg : "");
    free(msg);
    return rc == 0;
}

/* Parse the flags and the config file again, then serve with them: a new
 * generation for the workers (each takes it at its next wake). A bad
 * file is refused and the running configuration kept. */
static void reload(struct app *app)
{
    struct config cfg;
    struct gen *g;
    size_t i;
    int rc;

    if (!reparse(app, &cfg))
        return;
    warn_fixed(app->cfg, &cfg);
    warn_rescoped(app->cfg, &cfg);
    rc = gen_new(app->engines, &cfg, &g);
    if (rc != IDEM_OK) {
        log_msg(LOG_ERROR,
                "reload refused: %s; the running configuration "
                "is kept",
                idem_strerror(rc));
        return;
    }
    log_settings(&g->cfg);
    for (i = 0; i < app->nworkers; i++)
        worker_set_gen(&app->workers[i], g);
    resolver_set(app->resolver, &g->cfg);
    tls_reload(app->tls, &g->cfg); /* a bad one keeps the old serving */
    gen_unref(app->gen);
    app->gen = g;
    app->cfg = &g->cfg;
    log_msg(LOG_INFO, "reloaded the configuration");
}

static void on_hangup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    service_reloading();
    reopen_log();
    reload(arg);
    service_ready("reloaded");
}

/* Say, at most once a minute, that records younger than an hour were
 * evicted since the last look: a promise forgotten, the key's retry runs
 * again (--when-full evict, or a store full of in-flight requests). */
static void warn_young_evictions(struct app *app)
{
    static uint64_t seen, said_ms;
    struct idem_store_stats st;
    uint64_t young, now = (uint64_t)time(NULL) * 1000;

    idem_store_stats(app->store, &st);
    young = st.evicted_by_age[0] + st.evicted_by_age[1] + st.evicted_by_age[2];
    if (young == seen || now - said_ms < 60000)
        return;
    log_msg(LOG_WARN,
            "%llu records younger than an hour evicted for room (the "
            "youngest %llus old): a retry of their keys runs again; raise "
            "--max-memory, or use --when-full refuse",
            (unsigned long long)(young - seen),
            (unsigned long long)(st.youngest_evicted_ms / 1000));
    seen = young;
    said_ms = now;
}

/* The engine's timer: expire waits and records. Every TRIM_TICKS, give
 * the heap that expired records freed back to the kernel: glibc keeps it
 * in the workers' arenas otherwise, and resident memory would stay at its
 * peak after a burst. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    static unsigned ticks;
    struct app *app = arg;
    size_t n, i;
    struct idem_engine *const *all = gen_engines_all(app->engines, &n);

    (void)fd;
    (void)what;
    for (i = 0; i < n; i++)
        idem_engine_tick(all[i]);
    if (++ticks % TRIM_TICKS == 0)
        malloc_trim(0);
    if (ticks % EVICT_CHECK_TICKS == 0)
        warn_young_evictions(arg);
}

/* Wait for the workers, at most the shutdown timeout; then cut. */
static void join_workers(struct app *app)
{
    struct timespec deadline =
        worker_deadline(CLOCK_REALTIME, app->cfg->shutdown_timeout_ms);
    unsigned i;

    for (i = 0; i < app->nworkers; i++)
        if (app->workers[i].started)
            worker_stop(&app->workers[i]); /* again is harmless */
    for (i = 0; i < app->nworkers; i++) {
        if (!app->workers[i].started ||
            pthread_timedjoin_np(app->workers[i].thread, NULL, &deadline) == 0)
            continue;
        log_msg(LOG_WARN,
                "worker %u: shutdown timeout, closing its "
                "connections",
                i);
        worker_break(&app->workers[i]);
        worker_join(&app->workers[i]);
    }
}

/* Stop the resolver (it hands the workers address sets), then free what
 * each worker holds. Again is harmless. */
static void release_workers(struct app *app)
{
    unsigned i;

    resolver_stop(app->resolver);
    app->resolver = NULL;
    for (i = 0; app->workers && i < app->nworkers; i++)
        worker_deinit(&app->workers[i]);
}

/* Join the workers, then release them: a request a forced stop cut in
 * flight is recorded as "outcome unknown" then (idem_call_free), before
 * the snapshot is saved, so that its retry after a restart is not run
 * again. */
static void stop_workers(struct app *app)
{
    join_workers(app);
    release_workers(app);
}

/* The main loop's events: signals, the watchdog's (if systemd wants one)
 * and the engine's tick (the last). */
static int run(struct app *app)
{
    enum { NEVS = 6 };
    struct event *evs[NEVS];
    struct timeval tick = { 0, TICK_MS * 1000 };
    uint64_t dog_ms = service_watchdog_ms() / 2;
    struct timeval dog = { dog_ms / 1000, (dog_ms % 1000) * 1000 };
    int i, rc = 0;

    evs[0] = evsignal_new(app->base, SIGTERM, on_stop, app);
    evs[1] = evsignal_new(app->base, SIGINT, on_stop, app);
    evs[2] = evsignal_new(app->base, SIGHUP, on_hangup, app);
    evs[3] = evsignal_new(app->base, SIGUSR1, on_reopen, app);
    evs[4] = event_new(app->base, -1, EV_PERSIST, on_watchdog, app);
    evs[NEVS - 1] = event_new(app->base, -1, EV_PERSIST, on_tick, app);
    for (i = 0; i < NEVS; i++)
        if (!evs[i] ||
            (i != 4 && event_add(evs[i], i == NEVS - 1 ? &tick : NULL) != 0))
            rc = -1;
    if (evs[4] && dog_ms && event_add(evs[4], &dog) != 0)
        rc = -1;
    if (rc == 0) {
        announce(app);
        service_ready("accepting requests");
        event_base_dispatch(app->base);
    } else {
        log_msg(LOG_ERROR, "cannot set up the main loop's events");
    }
    for (i = 0; i < NEVS; i++)
        if (evs[i])
            event_free(evs[i]);
    return rc;
}

static int start(struct app *app)
{
    struct idem_store *redis =
        config_store_is_memory(app->cfg) ? NULL : app->store;
    int *fds = calloc(app->nworkers, sizeof(int)), admin_fd;
    unsigned i;
    int rc = -1;

    if (!fds || start_listening(app, fds, &admin_fd) != 0)
        goto out;
    if (admin_fd >= 0 &&
        !(app->admin = admin_listen(app->base, admin_fd, app->engines,
                                    app->store, &app->cfg)))
        goto out;
    for (i = 0; i < app->nworkers; i++) {
        if (worker_init(&app->workers[i], i, fds[i], app->gen, redis,
                        app->first) != 0) {
            log_msg(LOG_ERROR, "cannot start worker %u", i);
            goto out; /* a real deployment gets all workers or none */
        }
    }
    app->resolver =
        resolver_start(app->cfg, app->first, app->workers, app->nworkers);
    if (!app->resolver) {
        log_msg(LOG_ERROR, "cannot start the resolver");
        goto out;
    }
    for (i = 0; i < app->nworkers; i++) {
        app->workers[i].resolver = app->resolver;
        app->workers[i].tls = app->tls;
        if (worker_start(&app->workers[i]) != 0) {
            log_msg(LOG_ERROR, "cannot start worker %u", i);
            goto out;
        }
    }
    rc = 0;
out:
    free(fds);
    return rc;
}

/* libevent's own messages, through the log: each severity at most once a
 * second (a loop can repeat one endlessly). */
static void on_libevent_log(int severity, const char *msg)
{
    static struct log_limit limits[4];
    static const enum log_level levels[4] = {
        [EVENT_LOG_DEBUG] = LOG_DEBUG,
        [EVENT_LOG_MSG] = LOG_INFO,
        [EVENT_LOG_WARN] = LOG_WARN,
        [EVENT_LOG_ERR] = LOG_ERROR,
    };

    if (severity < 0 || severity > 3)
        severity = EVENT_LOG_ERR;
    log_limited(&limits[severity], levels[severity], "libevent: %s", msg);
}

/* The app around a parsed cfg (which it takes): its arguments for
 * reloads, the workers' array, the loop and the engines. 0, or -1 (-2:
 * a record cannot fit, as make_engines says). */
static int app_init(struct app *app, int argc, char **argv, struct config *cfg)
{
    app->argc = argc;
    app->argv = argv;
    app->nworkers = cfg->workers;
    app->workers = calloc(app->nworkers, sizeof(*app->workers));
    app->base = event_base_new();
    if (app->workers && app->base)
        return make_engines(app, cfg);
    config_free(cfg);
    return -1;
}

/* Everything app_init and the run made, in reverse order of need. */
static void app_free(struct app *app)
{
    release_workers(app);
    resolver_addrs_unref(app->first);
    admin_close(app->admin);
    if (app->base)
        event_base_free(app->base);
    gen_unref(app->gen);
    gen_engines_free(app->engines);
    idem_store_free(app->store);
    tls_free(app->tls);
    free(app->workers);
}

int main(int argc, char **argv)
{
    struct app app = { .nworkers = 0 };
    struct config cfg;
    int rc = config_parse(&cfg, argc - 1, argv + 1, stdout, stderr);

    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (log_open(&cfg) != 0) {
        fprintf(stderr, "idemproxy: cannot open the log: %s\n",
                strerror(errno));
        config_free(&cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    event_set_log_callback(on_libevent_log);
    rc = app_init(&app, argc - 1, argv + 1, &cfg);
    if (rc == 0 && !(app.first = resolve_first(app.cfg)))
        rc = -1;
    if (rc == 0 && tls_new(app.cfg, &app.tls) != 0) {
        log_msg(LOG_ERROR, "cannot set up TLS");
        rc = 1;
    }
    if (rc == 0) {
        rc = 1;
        load_snapshot(&app);
        if (start(&app) == 0 && run(&app) == 0)
            rc = 0;
        stop_workers(&app);
        save_snapshot(&app);
    }
    app_free(&app);
    log_msg(LOG_INFO, "stopped");
    log_close();
    return rc == -2 ? 2 : rc != 0;
}
