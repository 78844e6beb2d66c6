/* Prints idemproxy's manual pages from its option table (config.c), for
 * the build: gen_man 1 > idemproxy.1, gen_man 5 > idemproxy.conf.5. */
#include <stdio.h>
#include <string.h>

#include "config.h"

int main(int argc, char **argv)
{
    if (argc != 2 || (strcmp(argv[1], "1") != 0 && strcmp(argv[1], "5") != 0)) {
        fprintf(stderr, "usage: gen_man 1|5\n");
        return 2;
    }
    config_print_man(stdout, argv[1][0] - '0');
    return ferror(stdout) ? 1 : 0;
}
