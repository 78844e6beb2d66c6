/* Resident memory as /proc/PID/statm tells it: header-only, for the test
 * helpers, the integration tests (of another process) and the benchmarks.
 * (src/proxy/metrics.c keeps its own: sources do not include tests.) */
#ifndef IDEM_TEST_STATM_H
#define IDEM_TEST_STATM_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

/* Resident bytes of pid (0: this process); 0 if unreadable. */
static inline size_t statm_resident_bytes(pid_t pid)
{
    char path[64];
    unsigned long pages = 0, resident = 0;
    FILE *f;

    if (pid)
        snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/statm");
    if (!(f = fopen(path, "r")))
        return 0;
    if (fscanf(f, "%lu %lu", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

#endif
