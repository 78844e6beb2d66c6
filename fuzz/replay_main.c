/* Replays fuzz inputs through LLVMFuzzerTestOneInput without libFuzzer, so
 * any compiler can run a committed corpus as a test. Arguments: files or
 * directories of files. Fails when it finds no input at all. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;

    if (!f)
        return -1;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0 || !(buf = malloc((size_t)n + 1)) ||
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static long replay_path(const char *path)
{
    struct stat st;
    struct dirent *de;
    char sub[4096];
    long n = 0;
    DIR *d;

    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode))
        return replay_file(path) == 0 ? 1 : -1;
    if (!(d = opendir(path)))
        return -1;
    while ((de = readdir(d)) && n >= 0) {
        if (de->d_name[0] == '.')
            continue;
        if (snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name) >=
            (int)sizeof(sub))
            n = -1;
        else if (replay_file(sub) != 0)
            n = -1;
        else
            n++;
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    long total = 0, n;
    int i;

    for (i = 1; i < argc; i++) {
        n = replay_path(argv[i]);
        if (n < 0) {
            fprintf(stderr, "replay: cannot read %s\n", argv[i]);
            return 1;
        }
        total += n;
    }
    printf("replayed %ld inputs\n", total);
    return total > 0 ? 0 : 1;
}
