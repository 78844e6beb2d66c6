/* Memory store snapshots. Format, little-endian:
 *   "IDEMSNAP" u32 version(1)
 *   { u32 klen, key, u32 rlen, record } for each completed record
 *   "IDEMEND!" u64 count u64 XXH64(every byte before this field, seed 0)
 * A load checks the whole file (trailer, hash, every record decodes)
 * before it stores anything: a damaged snapshot loads nothing. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"
#include "internal.h"
#include "record.h"
#include "store_memory.h"

#define SNAP_MAGIC "IDEMSNAP"
#define SNAP_END "IDEMEND!"
#define SNAP_VERSION 1u
#define HEAD_LEN 12u
#define TRAILER_LEN 24u

struct writer {
    FILE *f;
    XXH64_state_t hash;
    uint64_t count;
    int err; /* errno of the first failure, or 0 */
};

static void put(struct writer *w, const void *p, size_t len)
{
    if (w->err || len == 0)
        return;
    if (fwrite(p, 1, len, w->f) != len)
        w->err = errno ? errno : EIO;
    else
        XXH64_update(&w->hash, p, len);
}

static void put_u32(struct writer *w, uint32_t v)
{
    uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16),
                     (uint8_t)(v >> 24) };
    put(w, b, sizeof(b));
}

static void put_u64(struct writer *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

/* foreach callback: write each completed record. */
static int save_one(const void *key, size_t klen, struct idem_cache_value *v,
                    void *ud)
{
    struct writer *w = ud;
    struct idem__record_view view;
    const void *data = idem_cache_value_data(v);
    size_t len = idem_cache_value_len(v);

    if (idem__record_decode(data, len, &view) != IDEM_OK ||
        view.rec.state == IDEM__REC_INFLIGHT || klen > UINT32_MAX ||
        len > UINT32_MAX)
        return 0;
    put_u32(w, (uint32_t)klen);
    put(w, key, klen);
    put_u32(w, (uint32_t)len);
    put(w, data, len);
    w->count++;
    return w->err;
}

/* Make a rename in path's directory durable. Best effort. */
static void fsync_parent(const char *path)
{
    char dir[4096];
    char *slash;
    int fd;

    if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
        return;
    slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else
        slash[slash == dir] = '\0'; /* "/x" keeps "/" */
    fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int finish_file(struct writer *w, const char *tmp, const char *path)
{
    uint8_t digest[8];
    uint64_t h;

    put(w, SNAP_END, 8);
    put_u64(w, w->count);
    h = XXH64_digest(&w->hash);
    for (int i = 0; i < 8; i++)
        digest[i] = (uint8_t)(h >> (8 * i));
    if (!w->err && fwrite(digest, 1, 8, w->f) != 8)
        w->err = EIO;
    if (!w->err && (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0))
        w->err = errno;
    if (fclose(w->f) != 0 && !w->err)
        w->err = errno;
    if (!w->err && rename(tmp, path) != 0)
        w->err = errno;
    if (w->err)
        return IDEM_EIO;
    fsync_parent(path);
    return IDEM_OK;
}

int idem_store_memory_save(struct idem_store *s, const char *path,
                           struct idem_snapshot_stats *stats_out)
{
    struct idem__memory_store *ms = (struct idem__memory_store *)s;
    struct writer w = { .f = NULL };
    char tmp[4096];
    int fd, rc, saved_errno;

    if (!idem__store_is_memory(s) || !path ||
        snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp))
        return IDEM_EINVAL;
    fd = mkstemp(tmp);
    if (fd < 0)
        return IDEM_EIO;
    w.f = fdopen(fd, "wb");
    if (!w.f) {
        close(fd);
        unlink(tmp);
        return IDEM_EIO;
    }
    XXH64_reset(&w.hash, 0);
    put(&w, SNAP_MAGIC, 8);
    put_u32(&w, SNAP_VERSION);
    rc = idem_cache_foreach(ms->cache, save_one, &w);
    if (rc != IDEM_OK && !w.err)
        w.err = rc == IDEM_ENOMEM ? ENOMEM : EIO;
    rc = finish_file(&w, tmp, path);
    if (rc != IDEM_OK) {
        saved_errno = w.err;
        unlink(tmp);
        errno = saved_errno;
        return saved_errno == ENOMEM ? IDEM_ENOMEM : IDEM_EIO;
    }
    if (stats_out)
        *stats_out = (struct idem_snapshot_stats){ .saved = w.count };
    return IDEM_OK;
}

/* -- Loading ---------------------------------------------------------- */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* The whole file in a fresh heap buffer. */
static int read_file(const char *path, uint8_t **buf_out, size_t *len_out)
{
    struct stat st;
    uint8_t *buf;
    FILE *f = fopen(path, "rb");
    int rc = IDEM_EIO;

    if (!f)
        return errno == ENOENT ? IDEM_ENOTFOUND : IDEM_EIO;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0)
        goto out_close;
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        rc = IDEM_ENOMEM;
        goto out_close;
    }
    if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        free(buf);
        goto out_close;
    }
    *buf_out = buf;
    *len_out = (size_t)st.st_size;
    rc = IDEM_OK;
out_close:
    fclose(f);
    return rc;
}

/* Walk the entries of a checked body: call fn for each. A malformed entry
 * stops the walk with IDEM_EIO. */
static int walk(const uint8_t *p, const uint8_t *end,
                int (*fn)(const uint8_t *key, size_t klen, const uint8_t *rec,
                          size_t rlen, const struct idem__record_view *v,
                          void *ud),
                void *ud, uint64_t *count)
{
    struct idem__record_view v;
    uint32_t klen, rlen;
    int rc = IDEM_OK;

    for (*count = 0; rc == IDEM_OK && p < end; (*count)++) {
        /* room for both lengths, then for the key, then the record */
        if (end - p < 8 || (klen = get_u32(p)) > (size_t)(end - p) - 8)
            return IDEM_EIO;
        p += 4 + klen;
        rlen = get_u32(p);
        if (rlen > (size_t)(end - p) - 4 ||
            idem__record_decode(p + 4, rlen, &v) != IDEM_OK ||
            v.rec.state == IDEM__REC_INFLIGHT)
            return IDEM_EIO;
        if (fn)
            rc = fn(p - klen, klen, p + 4, rlen, &v, ud);
        p += 4 + rlen;
    }
    return rc;
}

/* Check magic, version, trailer and hash, then every entry. */
static int check(const uint8_t *buf, size_t len, const uint8_t **body,
                 const uint8_t **body_end)
{
    const uint8_t *trailer;
    uint64_t count;

    if (len < HEAD_LEN + TRAILER_LEN || memcmp(buf, SNAP_MAGIC, 8) != 0 ||
        get_u32(buf + 8) != SNAP_VERSION)
        return IDEM_EIO;
    trailer = buf + len - TRAILER_LEN;
    if (memcmp(trailer, SNAP_END, 8) != 0 ||
        XXH64(buf, len - 8, 0) != get_u64(trailer + 16))
        return IDEM_EIO;
    *body = buf + HEAD_LEN;
    *body_end = trailer;
    if (walk(*body, trailer, NULL, NULL, &count) != IDEM_OK ||
        count != get_u64(trailer + 8))
        return IDEM_EIO;
    return IDEM_OK;
}

struct loader {
    struct idem__memory_store *ms;
    uint64_t now;
    struct idem_snapshot_stats st;
};

static int load_one(const uint8_t *key, size_t klen, const uint8_t *rec,
                    size_t rlen, const struct idem__record_view *v, void *ud)
{
    struct loader *l = ud;
    int rc;

    if (v->rec.expires_ms <= l->now) {
        l->st.expired++;
        return IDEM_OK;
    }
    rc = idem_cache_set(l->ms->cache, key, klen, rec, rlen,
                        (int64_t)(v->rec.expires_ms - l->now));
    if (rc == IDEM_OK)
        l->st.loaded++;
    return rc == IDEM_E2BIG || rc == IDEM_EBUSY ? IDEM_E2BIG : rc;
}

static int unload_one(const uint8_t *key, size_t klen, const uint8_t *rec,
                      size_t rlen, const struct idem__record_view *v, void *ud)
{
    struct loader *l = ud;

    (void)rec;
    (void)rlen;
    if (v->rec.expires_ms > l->now) {
        idem_cache_remove(l->ms->cache, key, klen);
        l->st.refused++;
    }
    return IDEM_OK;
}

static uint64_t evictions(struct idem__memory_store *ms)
{
    struct idem_cache_stats cs;

    idem_cache_stats(ms->cache, &cs);
    return cs.evicted;
}

/* Load every live record of a checked body, or none: a record the cache
 * had no room for, or one that pushed another out, undoes the load. */
static int load_all(struct loader *l, const uint8_t *body,
                    const uint8_t *body_end)
{
    uint64_t count, evicted = evictions(l->ms);
    int rc = walk(body, body_end, load_one, l, &count);

    if (rc == IDEM_OK && evictions(l->ms) != evicted)
        rc = IDEM_E2BIG;
    if (rc != IDEM_OK) {
        l->st.refused = 0;
        walk(body, body_end, unload_one, l, &count);
        l->st.loaded = 0;
    }
    return rc;
}

int idem_store_memory_load(struct idem_store *s, const char *path,
                           struct idem_snapshot_stats *stats_out)
{
    struct loader l = { .ms = (struct idem__memory_store *)s };
    const uint8_t *body, *body_end;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (!idem__store_is_memory(s) || !path)
        return IDEM_EINVAL;
    rc = read_file(path, &buf, &len);
    if (rc != IDEM_OK)
        return rc;
    rc = check(buf, len, &body, &body_end);
    if (rc == IDEM_OK) {
        l.now = idem_env_wall_ms(&l.ms->env);
        rc = load_all(&l, body, body_end);
    }
    free(buf);
    if (stats_out)
        *stats_out = l.st;
    return rc;
}
