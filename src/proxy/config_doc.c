/* --help and the manual pages idemproxy(1) and idemproxy.conf(5), both
 * written from the options table. */
#include <stdio.h>

#include "config_internal.h"
#include "idem/idem.h"

int config_print_help(struct parse *p, const struct option *o, const char *v)
{
    char flag[40];
    size_t i;

    (void)o;
    (void)v;
    fprintf(p->out, "usage: idemproxy --upstream URL [OPTION...]\n"
                    "Every option is also a config file key (no \"--\").\n");
    for (i = 0; i < config_noptions; i++) {
        o = &config_options[i];
        snprintf(flag, sizeof(flag), "--%s%s%s", o->name, o->arg ? " " : "",
                 o->arg ? o->arg : "");
        fprintf(p->out, "  %-27s %s", flag, o->help);
        if (o->def || o->unset)
            fprintf(p->out, " (default: %s)", o->def ? o->def : o->unset);
        fputc('\n', p->out);
    }
    fprintf(p->out, "In a config file, a [route PREFIX] section sets for "
                    "the paths under PREFIX:\n");
    for (i = 0; i < config_nroute_options; i++) {
        o = &config_route_options[i];
        snprintf(flag, sizeof(flag), "%s %s", o->name, o->arg);
        fprintf(p->out, "    %-25s %s\n", flag, o->help);
    }
    return 1;
}

/* -- Manual pages ------------------------------------------------------ */

/* s with roff's special characters escaped: a leading dot or quote, and
 * backslashes and hyphens (which man would otherwise break or render as
 * typographic dashes). */
static void man_text(FILE *out, const char *s)
{
    if (*s == '.' || *s == '\'')
        fputs("\\&", out);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-')
            fputs("\\-", out);
        else
            fputc(*s, out);
    }
}

/* One option as a tagged paragraph: "--name ARG" (section 1) or "name
 * ARG" (section 5), its help and default. */
static void man_option(FILE *out, const struct option *o, int section)
{
    fputs(".TP\n\\fB", out);
    if (section == 1)
        fputs("\\-\\-", out);
    man_text(out, o->name);
    fputs("\\fR", out);
    if (o->arg) {
        fputs(" \\fI", out);
        man_text(out, o->arg);
        fputs("\\fR", out);
    }
    fputc('\n', out);
    man_text(out, o->help);
    if (o->def || o->unset) {
        fputs(" (default: ", out);
        man_text(out, o->def ? o->def : o->unset);
        fputc(')', out);
    }
    fputs(".\n", out);
}

/* The pages' fixed text: idemproxy(1)'s name, synopsis and description,
 * idemproxy.conf(5)'s, and idemproxy(1)'s signals and exit status. */
static const char man_intro_1[] =
    ".SH NAME\nidemproxy \\- a reverse proxy that executes each "
    "HTTP request once\n"
    ".SH SYNOPSIS\n\\fBidemproxy\\fR \\-\\-upstream "
    "\\fIHOST:PORT\\fR [\\fIOPTION\\fR...]\n"
    ".SH DESCRIPTION\nidemproxy sits in front of an HTTP API and "
    "honours the Idempotency\\-Key header: the first request with "
    "a key is forwarded, its response stored, and a retry with the "
    "same key and the same request gets the stored response instead "
    "of a second execution. A key is released only when the request "
    "provably did not execute. Every option is also a key of the "
    "configuration file, idemproxy.conf(5).\n"
    ".SH OPTIONS\n";
static const char man_intro_5[] =
    ".SH NAME\nidemproxy.conf \\- idemproxy configuration file\n"
    ".SH DESCRIPTION\nRead with \\fB\\-\\-config\\fR "
    "\\fIFILE\\fR, an INI file: \\fIkey\\fR = \\fIvalue\\fR "
    "lines, where each key is an option of idemproxy(1) without "
    "its leading dashes, then \\fB[route\\fR \\fIPREFIX\\fB]"
    "\\fR sections whose keys are rules for the paths under "
    "PREFIX (the longest matching prefix wins). A line whose first "
    "non-blank character is # or ; is a comment, as is anything "
    "from a # or ; after a blank. Flags and files are read from "
    "left to right, a later setting overriding an earlier one. "
    "An unknown key or section, or a bad value, stops idemproxy "
    "with FILE:LINE in the message; on SIGHUP, the file is read "
    "again and a bad one is refused, the running configuration "
    "kept.\n"
    ".SH KEYS\n";
static const char man_signals[] =
    ".SH SIGNALS\n"
    ".TP\nSIGTERM, SIGINT\nStop accepting, let requests in flight "
    "finish (up to \\-\\-shutdown\\-timeout), save the snapshot, "
    "exit 0.\n"
    ".TP\nSIGUSR1\nReopen the log file (after rotation).\n"
    ".TP\nSIGHUP\nReopen the log file, then read the flags and "
    "\\-\\-config file again and serve with the result, the TLS "
    "certificates included; a bad configuration is refused and "
    "the running one kept. A reload that changes the route prefixes "
    "or \\-\\-scope\\-headers, or stops honouring a key header or a "
    "method, is applied with a warning: retries of requests made "
    "before it are not recognized, and run again.\n"
    ".SH EXIT STATUS\n0 after a clean stop; 1 when it cannot run "
    "(no memory, cannot listen); 2 for a bad option or "
    "configuration.\n";

void config_print_man(FILE *out, int section)
{
    size_t i;

    fprintf(out, ".TH %s %d \"\" \"idemproxy %s\" \"idem\"\n",
            section == 1 ? "IDEMPROXY" : "IDEMPROXY.CONF", section,
            IDEM_VERSION_STRING);
    fputs(section == 1 ? man_intro_1 : man_intro_5, out);
    for (i = 0; i < config_noptions; i++)
        if (section == 1 || !config_options[i].flag_only)
            man_option(out, &config_options[i], section);
    if (section == 5) {
        fputs(".SH ROUTE KEYS\nIn a \\fB[route\\fR \\fIPREFIX\\fB]\\fR "
              "section; a rule a route does not set is the global "
              "option's.\n",
              out);
        for (i = 0; i < config_nroute_options; i++)
            man_option(out, &config_route_options[i], section);
    }
    if (section == 1)
        fputs(man_signals, out);
    fputs(".SH SEE ALSO\n", out);
    fputs(section == 1 ? "idemproxy.conf(5)" : "idemproxy(1)", out);
    fputs(", /usr/share/doc/idemproxy/\n", out);
}
