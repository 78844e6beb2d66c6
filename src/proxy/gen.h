/* gen: one generation of the running configuration, the parsed config
 * and the engine of each of its routes. A generation never changes once
 * made and is reference counted: the main thread makes one at start and
 * one per reload (SIGHUP); each worker holds the one it serves with and
 * takes the newest at its next wake, so the last worker to let go of an
 * old one frees it, never while a loop pass reads it.
 *
 * Engines live in a registry (struct engines) keyed by their options:
 * routes with the same rules, and generations that keep them, share one
 * engine, so a reload that does not change a route's rules keeps its
 * waits and in-flight counts. Engines are freed with the registry. */
#ifndef IDEMPROXY_GEN_H
#define IDEMPROXY_GEN_H

#include <stdatomic.h>
#include <stddef.h>

#include "config.h"
#include "idem/engine.h"
#include "idem/env.h"
#include "idem/store.h"

struct engines;

struct gen {
    atomic_uint refs;
    struct config cfg;
    struct idem_engine *engine; /* for paths outside every route */
    /* engines[i] for cfg.routes[i] */
    struct idem_engine **engines;
};

/* A registry of engines over store (not owned), with env (copied; NULL:
 * the default). NULL out of memory. */
struct engines *gen_engines_new(struct idem_store *store,
                                const struct idem_env *env);
/* Free every engine (their calls all freed) and the registry. NULL is
 * harmless. */
void gen_engines_free(struct engines *es);
/* The engines made so far: *n_out of them. Main thread only (engines are
 * added there). */
struct idem_engine *const *gen_engines_all(const struct engines *es,
                                           size_t *n_out);

/* A generation of cfg (taken: freed with the generation, or at once on
 * failure), one reference held, its engines from es (made when new).
 * IDEM_OK, IDEM_ENOMEM, or the engine's refusal. Main thread only. */
int gen_new(struct engines *es, struct config *cfg, struct gen **gen_out);
/* Another reference to g. Thread-safe. */
struct gen *gen_ref(struct gen *g);
/* Drop a reference; the last frees g. NULL is harmless. Thread-safe. */
void gen_unref(struct gen *g);

#endif
