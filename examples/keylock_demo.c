/* A tour of keylock for `make run` (until idemproxy exists): two threads
 * race for one key, then a million distinct keys come and go and the table
 * ends as empty as it began. */
#include <pthread.h>
#include <stdio.h>

#include "idem/idem.h"

static struct idem_keylock *table;
static int executions;

/* What an idempotent handler does: lock the key, do the work once. */
static void *client(void *name)
{
    static int done; /* protected by the key's lock */

    if (idem_keylock_lock(table, "order-42", 8) != IDEM_OK)
        return NULL;
    if (!done) {
        done = 1;
        executions++;
        printf("  %s: executed order-42\n", (const char *)name);
    } else {
        printf("  %s: order-42 already done, replaying\n", (const char *)name);
    }
    idem_keylock_unlock(table, "order-42", 8);
    return NULL;
}

int main(void)
{
    struct idem_keylock_stats st;
    pthread_t a, b;
    char key[32];
    int i, rc;

    printf("libidem %s: keylock demo\n", idem_version());
    rc = idem_keylock_new(NULL, &table);
    if (rc != IDEM_OK) {
        fprintf(stderr, "keylock_demo: %s\n", idem_strerror(rc));
        return 1;
    }
    printf("two clients retry the same request at once:\n");
    pthread_create(&a, NULL, client, "client A");
    pthread_create(&b, NULL, client, "client B");
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("executions: %d, live lock entries: %zu\n", executions,
           idem_keylock_count(table));

    printf("1,000,000 distinct keys locked and unlocked...\n");
    for (i = 0; i < 1000000; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);

        idem_keylock_lock(table, key, (size_t)len);
        idem_keylock_unlock(table, key, (size_t)len);
    }
    idem_keylock_stats(table, &st);
    printf("entries created %llu, freed %llu, live %llu, table bytes %llu\n",
           (unsigned long long)st.created, (unsigned long long)st.freed,
           (unsigned long long)st.entries, (unsigned long long)st.table_bytes);
    printf("(GoFiber's lock map would now hold 1,000,000 mutexes forever.)\n");
    idem_keylock_free(table);
    return 0;
}
