/* The configuration parser's shared parts: a parse run, kinds of
 * values, the options table (config.c), its messages, the walk over argv
 * and config files (config_read.c) and --help and the manual pages
 * (config_doc.c). Not used outside the config_*.c files. */
#ifndef IDEMPROXY_CONFIG_INTERNAL_H
#define IDEMPROXY_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "config_value.h"

/* One run of config_parse: where values come from, where messages go. */
struct parse {
    struct config *c;
    void *base; /* where fields are: c, or the section's struct route */
    FILE *out;
    FILE *err;
    const char *file; /* the config file being read; NULL: the flags */
    unsigned line;
    char *section;      /* the file's section being read ("": none) */
    const char *up_src; /* the file (or NULL: the flags) --upstream
                           values were last taken from */
    bool up_any;        /* an --upstream was given */
    bool stop;          /* a file line failed: read no further */
};

struct option;

/* A number's unit: "ms" scales by 1, "s" by 1000. */

/* Whether a kind of value needs one: "--log-keys" takes one only after
 * '=', "--help" never. */
enum value_rule { VALUE_REQUIRED = 0, VALUE_OPTIONAL, VALUE_NONE };

/* A kind of value. parse returns 0; -1 after a message on err; 1 after
 * --help or --version printed on out. release frees what parse kept. */
struct kind {
    int (*parse)(struct parse *p, const struct option *o, const char *v);
    void (*release)(void *base, const struct option *o);
    enum value_rule value;
    const char *what; /* "is not <what>" for malformed values */
    /* Numbers: their units, the most the field holds, its type. */
    const struct unit *units;
    uint64_t limit;
    enum number_type { NUMBER_UNSIGNED, NUMBER_INT64, NUMBER_SIZE } type;
};

struct option {
    const char *name; /* the flag without "--", and the file key */
    const struct kind *kind;
    size_t off;               /* the field in struct config */
    size_t count_off;         /* lists: their count field */
    uint64_t min, max;        /* numbers: bounds; max 0 needs min <= 1 */
    const char *const *names; /* enums: the values, in enum order */
    const char *arg;          /* the value's name in --help */
    const char *def;          /* the default, parsed as a value; or NULL */
    const char *unset;        /* what --help says when def is NULL */
    const char *help;
    bool flag_only; /* not a config file key */
};

/* The options of struct config, in --help's order, and those of a
 * [route PREFIX] section. */
extern const struct option config_options[];
extern const size_t config_noptions;
extern const struct option config_route_options[];
extern const size_t config_nroute_options;

/* -- Messages (config.c) ----------------------------------------------- */

/* Write n bytes of s escaped, so a message stays one line. */
void config_put_escaped(FILE *f, const char *s, size_t n);

/* "idemproxy: ", and "FILE:LINE: " while a config file is read. */
void config_prefix(struct parse *p);

/* One line on err after the prefix. -1. */
int config_fail(struct parse *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "--" on the command line, "" in a file. */
const char *config_dashes(const struct parse *p);

int config_out_of_memory(struct parse *p);

/* -- Reading flags and files (config_read.c) --------------------------- */

/* "--name VALUE", "--name=VALUE" or "--name" at argv[*i]; *i moves past
 * what it took. */
int config_read_flag(struct parse *p, int argc, char **argv, int *i);

/* --config FILE: its global keys as if given as flags here; its sections
 * add routes. */
int config_read_file(struct parse *p, const struct option *o, const char *path);

/* The route for prefix, added (its rules unset) if new; NULL out of
 * memory. */
struct route *config_route_for(struct config *c, const char *prefix);

/* -- --help (config_doc.c) --------------------------------------------- */

int config_print_help(struct parse *p, const struct option *o, const char *v);

#endif
