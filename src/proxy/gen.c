/* gen.h: generations of the configuration and the engine registry. An
 * engine's options are written out as a string (methods, headers,
 * durations, sizes, modes): two routes whose strings match share it. */
#include "gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idem/idem.h"

struct engine_entry {
    char *sig; /* the options, written out */
    struct idem_engine *engine;
};

struct engines {
    struct idem_store *store;
    struct idem_env env;
    bool has_env;
    struct engine_entry *list;
    struct idem_engine **all; /* list's engines, for gen_engines_all */
    size_t n;
};

struct engines *gen_engines_new(struct idem_store *store,
                                const struct idem_env *env)
{
    struct engines *es = calloc(1, sizeof(*es));

    if (!es)
        return NULL;
    es->store = store;
    if (env) {
        es->env = *env;
        es->has_env = true;
    }
    return es;
}

void gen_engines_free(struct engines *es)
{
    size_t i;

    if (!es)
        return;
    for (i = 0; i < es->n; i++) {
        idem_engine_free(es->list[i].engine);
        free(es->list[i].sig);
    }
    free(es->list);
    free(es->all);
    free(es);
}

struct idem_engine *const *gen_engines_all(const struct engines *es,
                                           size_t *n_out)
{
    *n_out = es->n;
    return es->all;
}

/* The engine options of route r (NULL: outside every route) in c. */
static struct idem_engine_opts opts_of(const struct config *c,
                                       const struct route *r)
{
    struct idem_engine_opts eo = {
        .methods = (const char *const *)c->methods,
        .nmethods = c->nmethods,
        .key_header = c->key_header,
        .alt_key_header = c->alt_key_header,
        .scope_headers = (const char *const *)c->scope_headers,
        .nscope_headers = c->nscope_headers,
        .lease_ms = c->lease_ms,
        .lifetime_ms = c->lifetime_ms,
        .conflict = c->conflict,
        .wait_ms = c->wait_ms,
        .max_stored_body = c->max_stored_body,
        .unknown_outcome = c->unknown_outcome,
    };

    if (r && r->methods) {
        eo.methods = (const char *const *)r->methods;
        eo.nmethods = r->nmethods;
    }
    if (r && r->lifetime_ms)
        eo.lifetime_ms = r->lifetime_ms;
    if (r && r->conflict >= 0) {
        eo.conflict = (enum idem_conflict_mode)r->conflict;
        eo.wait_ms = r->wait_ms;
    }
    if (r && r->max_stored_body)
        eo.max_stored_body = r->max_stored_body;
    return eo;
}

static void put_list(FILE *f, const char *const *items, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        fprintf(f, "%s,", items[i]);
    fputc('\n', f);
}

/* The options written out, or NULL out of memory. */
static char *signature(const struct idem_engine_opts *o)
{
    char *s = NULL;
    size_t len;
    FILE *f = open_memstream(&s, &len);

    if (!f)
        return NULL;
    put_list(f, o->methods, o->nmethods);
    put_list(f, o->scope_headers, o->nscope_headers);
    fprintf(f, "%s\n%s\n%lld %lld %d %lld %zu %d\n", o->key_header,
            o->alt_key_header ? o->alt_key_header : "", (long long)o->lease_ms,
            (long long)o->lifetime_ms, (int)o->conflict, (long long)o->wait_ms,
            o->max_stored_body, (int)o->unknown_outcome);
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* Add an engine made with eo, known by sig (taken). */
static int add_engine(struct engines *es, struct idem_engine_opts *eo,
                      char *sig, struct idem_engine **engine_out)
{
    struct engine_entry *list;
    struct idem_engine **all;
    int rc = IDEM_ENOMEM;

    list = realloc(es->list, (es->n + 1) * sizeof(*list));
    if (list)
        es->list = list;
    all = list ? realloc(es->all, (es->n + 1) * sizeof(*all)) : NULL;
    if (all)
        es->all = all;
    eo->store = es->store;
    eo->env = es->has_env ? &es->env : NULL;
    if (all)
        rc = idem_engine_new(eo, &all[es->n]);
    if (rc != IDEM_OK) {
        free(sig);
        return rc;
    }
    list[es->n].sig = sig;
    list[es->n].engine = all[es->n];
    *engine_out = all[es->n++];
    return IDEM_OK;
}

/* The engine for route r of c: the registry's, or a new one. */
static int engine_for(struct engines *es, const struct config *c,
                      const struct route *r, struct idem_engine **engine_out)
{
    struct idem_engine_opts eo = opts_of(c, r);
    char *sig = signature(&eo);
    size_t i;

    if (!sig)
        return IDEM_ENOMEM;
    for (i = 0; i < es->n; i++) {
        if (strcmp(es->list[i].sig, sig) == 0) {
            free(sig);
            *engine_out = es->list[i].engine;
            return IDEM_OK;
        }
    }
    return add_engine(es, &eo, sig, engine_out);
}

int gen_new(struct engines *es, struct config *cfg, struct gen **gen_out)
{
    struct gen *g = calloc(1, sizeof(*g));
    int rc = IDEM_ENOMEM;
    size_t i;

    if (g && (g->engines = calloc(cfg->nroutes + 1, sizeof(*g->engines))))
        rc = engine_for(es, cfg, NULL, &g->engine);
    for (i = 0; rc == IDEM_OK && i < cfg->nroutes; i++)
        rc = engine_for(es, cfg, &cfg->routes[i], &g->engines[i]);
    if (rc != IDEM_OK) {
        config_free(cfg);
        if (g)
            free(g->engines);
        free(g);
        return rc;
    }
    g->cfg = *cfg;
    atomic_init(&g->refs, 1);
    *gen_out = g;
    return IDEM_OK;
}

struct gen *gen_ref(struct gen *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

void gen_unref(struct gen *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    config_free(&g->cfg);
    free(g->engines);
    free(g);
}
