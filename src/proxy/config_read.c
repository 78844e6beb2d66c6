/* Reading the configuration: flags from argv and keys from config files
 * (INI, read by libinih), each applied through the options table. */
#include <errno.h>
#include <ini.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

/* -- Walking argv and files ------------------------------------------- */

static const struct option *find_in(const struct option *table, size_t n,
                                    const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (strlen(table[i].name) == len &&
            memcmp(table[i].name, name, len) == 0)
            return &table[i];
    }
    return NULL;
}

/* -h and -V: --help and --version. */
static const struct option *find_short(const char *arg)
{
    if (strcmp(arg, "-h") == 0)
        return find_in(config_options, config_noptions, "help", 4);
    if (strcmp(arg, "-V") == 0)
        return find_in(config_options, config_noptions, "version", 7);
    return NULL;
}

/* Parse v (NULL: none given) for o. */
static int apply(struct parse *p, const struct option *o, const char *v)
{
    if (p->file && o->flag_only)
        return config_fail(p, "%s is not a config file key", o->name);
    if (v && o->kind->value == VALUE_NONE)
        return config_fail(p, "%s%s takes no value", config_dashes(p), o->name);
    if (!v && o->kind->value == VALUE_REQUIRED)
        return config_fail(p, "%s%s needs a value", config_dashes(p), o->name);
    return o->kind->parse(p, o, v);
}

/* "unknown option --name" or, in a file, "unknown key "name"". */
static int unknown(struct parse *p, const char *name, size_t len)
{
    config_prefix(p);
    fputs(p->file ? "unknown key \"" : "unknown option ", p->err);
    config_put_escaped(p->err, name, len);
    fputs(p->file ? "\"\n" : " (see --help)\n", p->err);
    return -1;
}

/* "--name VALUE", "--name=VALUE" or "--name"; *i moves past what it
 * took. */
int config_read_flag(struct parse *p, int argc, char **argv, int *i)
{
    const char *arg = argv[*i], *v = NULL;
    size_t len = strcspn(arg, "=");
    const struct option *o;

    if (arg[0] != '-') {
        config_prefix(p);
        fputs("unexpected argument \"", p->err);
        config_put_escaped(p->err, arg, strlen(arg));
        fputs("\" (see --help)\n", p->err);
        return -1;
    }
    o = strncmp(arg, "--", 2) == 0
            ? find_in(config_options, config_noptions, arg + 2, len - 2)
            : find_short(arg);
    if (!o)
        return unknown(p, arg, len);
    if (arg[len] == '=')
        v = arg + len + 1;
    else if (o->kind->value == VALUE_REQUIRED && *i + 1 < argc)
        v = argv[++*i]; /* NULL if argv ends early: "needs a value" */
    return apply(p, o, v);
}

/* -- Config files (INI, read by libinih) ------------------------------ */

/* A config file as libinih reads it, one line per ini_reader call. */
struct ini_src {
    struct parse *p;
    FILE *f;
    char *line;
    size_t cap;
};

/* Cut a comment (" #" or " ;" outside double quotes, or # or ; first)
 * and the blanks around what is left; returns its start. */
static char *strip_line(char *s)
{
    bool quoted = false;
    char *q, *end;

    s += strspn(s, " \t");
    for (q = s; *q; q++) {
        if (*q == '"')
            quoted = !quoted;
        else if (!quoted && (*q == '#' || *q == ';') &&
                 (q == s || q[-1] == ' ' || q[-1] == '\t'))
            break;
    }
    end = q;
    while (end > s && strchr(" \t\r\n", end[-1]))
        end--;
    *end = '\0';
    return s;
}

/* Write the line for libinih into out[0..cap): a section as it is, and
 * "key = value" for "key = value", "key: value", the flat "key value"
 * of older files, and a key alone ("key =": no value). 0, or -1 (too
 * long, or a section not closed) after a message. */
static int ini_line(struct parse *p, const char *s, char *out, size_t cap)
{
    size_t klen = strcspn(s, " \t=:");
    const char *rest = s + klen + strspn(s + klen, " \t");
    int n;

    if (*s == '[' && s[strlen(s) - 1] != ']')
        return config_fail(p, "a section is written [route PREFIX]");
    if (*s == '\0' || *s == '[' || *rest == '=' || *rest == ':')
        n = snprintf(out, cap, "%s", s);
    else
        n = snprintf(out, cap, "%.*s = %s", (int)klen, s, rest);
    if (n < 0 || (size_t)n >= cap)
        return config_fail(p, "the line is longer than %zu bytes", cap - 1);
    return 0;
}

static char *read_ini_line(char *out, int num, void *stream)
{
    struct ini_src *src = stream;
    struct parse *p = src->p;

    if (p->stop || getline(&src->line, &src->cap, src->f) < 0)
        return NULL;
    p->line++;
    if (ini_line(p, strip_line(src->line), out, (size_t)num) != 0) {
        p->stop = true;
        return NULL;
    }
    return out;
}

/* The route for prefix, added (its rules unset) if new; NULL out of
 * memory. */
struct route *config_route_for(struct config *c, const char *prefix)
{
    const struct route *had = config_route_at(c, prefix);
    struct route *grown, *r;

    if (had)
        return &c->routes[had - c->routes];
    grown = realloc(c->routes, (c->nroutes + 1) * sizeof(*grown));
    if (!grown)
        return NULL;
    c->routes = grown;
    r = &grown[c->nroutes];
    memset(r, 0, sizeof(*r));
    r->conflict = -1;
    r->prefix = strdup(prefix);
    if (!r->prefix)
        return NULL;
    c->nroutes++;
    return r;
}

/* Enter section ("" or "route PREFIX"): where the keys that follow go. */
static int enter_section(struct parse *p, const char *section)
{
    const char *path = section + 6;
    struct route *r;
    char *copy;

    if (*section == '\0') {
        p->base = p->c;
    } else if (strncmp(section, "route ", 6) != 0 || path[0] != '/' ||
               !config_is_visible(path)) {
        config_prefix(p);
        fputs("unknown section [", p->err);
        config_put_escaped(p->err, section, strlen(section));
        fputs("] (sections are [route PREFIX], PREFIX a path)\n", p->err);
        return -1;
    } else if (!(r = config_route_for(p->c, path))) {
        return config_out_of_memory(p);
    } else {
        p->base = r;
    }
    copy = strdup(section);
    if (!copy)
        return config_out_of_memory(p);
    free(p->section);
    p->section = copy;
    return 0;
}

/* One "key = value" of section. A value in double quotes loses them
 * ("" is the empty value); no value at all is none. */
static int on_ini(void *user, const char *section, const char *name,
                  const char *value)
{
    struct parse *p = user;
    const struct option *o;
    char *v = NULL;
    size_t n = strlen(value);
    int rc;

    if (p->stop)
        return 0;
    rc = strcmp(section, p->section) ? enter_section(p, section) : 0;
    o = p->base == p->c
            ? find_in(config_options, config_noptions, name, strlen(name))
            : find_in(config_route_options, config_nroute_options, name,
                      strlen(name));
    if (rc == 0 && !o)
        rc = unknown(p, name, strlen(name));
    if (rc == 0 && n && !(v = strdup(value)))
        rc = config_out_of_memory(p);
    if (rc == 0 && n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        memmove(v, v + 1, n - 2);
        v[n - 2] = '\0';
    }
    if (rc == 0)
        rc = apply(p, o, v);
    free(v);
    p->stop = rc != 0;
    return rc == 0;
}

/* --config FILE: read as if its global keys were flags given here; its
 * sections add routes. */
int config_read_file(struct parse *p, const struct option *o, const char *path)
{
    struct ini_src src = { .p = p };
    int rc;

    (void)o;
    src.f = fopen(path, "r");
    if (!src.f)
        return config_fail(p, "--config: cannot open \"%s\": %s", path,
                           strerror(errno));
    p->file = path;
    p->line = 0;
    p->stop = false;
    rc = enter_section(p, "");
    if (rc == 0)
        rc = ini_parse_stream(read_ini_line, &src, on_ini, p);
    if (rc > 0 && !p->stop)
        rc = config_fail(p, "not a key = value line, a [section] or a comment");
    else if (rc == 0 && ferror(src.f) && ++p->line)
        rc = config_fail(p, "read error: %s", strerror(errno));
    else if (p->stop)
        rc = -1;
    p->file = NULL;
    p->base = p->c;
    free(src.line);
    fclose(src.f);
    return rc;
}
