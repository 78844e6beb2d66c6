/* Request digests. Every field is framed as a presence byte and a 32-bit
 * big-endian length before its bytes, after a domain tag, so no two
 * different requests share an encoding; the body comes last, unframed, so
 * it can stream. Header names are lower-cased (they are case-insensitive). */
/* SHA256_Init & co. are deprecated in OpenSSL 3 (see idem__fp_init): say
 * so before any OpenSSL header. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "fingerprint.h"
#include "internal.h"

static const char fp_tag[] = "idem-fingerprint/1";
static const char scope_tag[] = "idem-scope/1";

static int feed(SHA256_CTX *ctx, const void *p, size_t len)
{
    if (len == 0 || SHA256_Update(ctx, p, len) == 1)
        return IDEM_OK;
    return IDEM_EINVAL;
}

/* A field's frame: 0 if absent, else 1 and its length. */
static int feed_frame(SHA256_CTX *ctx, const void *p, size_t len)
{
    unsigned char head[5] = { p != NULL, (unsigned char)(len >> 24),
                              (unsigned char)(len >> 16),
                              (unsigned char)(len >> 8), (unsigned char)len };

    if (len > UINT32_MAX || (!p && len))
        return IDEM_EINVAL;
    return feed(ctx, head, p ? sizeof(head) : 1);
}

static int feed_field(SHA256_CTX *ctx, const void *p, size_t len)
{
    int rc = feed_frame(ctx, p, len);

    return rc == IDEM_OK ? feed(ctx, p, len) : rc;
}

static int feed_lower(SHA256_CTX *ctx, const char *name, size_t len)
{
    char buf[64];
    size_t i, n;
    int rc = feed_frame(ctx, name, len);

    for (; rc == IDEM_OK && len > 0; name += n, len -= n) {
        n = len < sizeof(buf) ? len : sizeof(buf);
        for (i = 0; i < n; i++)
            buf[i] =
                (name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i];
        rc = feed(ctx, buf, n);
    }
    return rc;
}

static int feed_headers(SHA256_CTX *ctx, const struct idem_header *h, size_t n)
{
    int rc = IDEM_OK;
    size_t i;

    for (i = 0; rc == IDEM_OK && i < n; i++) {
        rc = feed_lower(ctx, h[i].name, h[i].name_len);
        if (rc == IDEM_OK)
            rc = feed_field(ctx, h[i].value, h[i].value_len);
    }
    return rc;
}

/* OpenSSL's low-level SHA-256 (deprecated in OpenSSL 3, and still
 * shipped): the same assembly as EVP (SHA-NI where the CPU has it), but a
 * context is a plain struct, so a digest costs no allocation and no
 * provider dispatch; through EVP, each of the two digests of a request
 * cost two allocations and most of the engine's time per new key. */
static bool crypto_ready;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;

/* libcrypto's one-time set-up (its configuration, providers, CPU
 * features) makes thousands of allocations on first use, and a failed one
 * can leave it crashing later: take it now, at engine creation, by one
 * fetch and one digest, and never on a request. */
static void crypto_setup(void)
{
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    uint8_t out[SHA256_DIGEST_LENGTH];

    crypto_ready = md && SHA256((const uint8_t *)"", 0, out) != NULL;
    EVP_MD_free(md);
}

int idem__fp_init(void)
{
    pthread_once(&crypto_once, crypto_setup);
    return crypto_ready ? IDEM_OK : IDEM_ENOMEM;
}

/* Start a SHA-256 context with tag. */
static int digest_new(SHA256_CTX *ctx, const char *tag, size_t tag_len)
{
    if (SHA256_Init(ctx) != 1)
        return IDEM_EINVAL;
    return feed(ctx, tag, tag_len);
}

int idem__fp_begin(struct idem__fp *fp, const struct idem__fp_input *in)
{
    SHA256_CTX *ctx;
    int rc;

    if (!fp || !in || (!in->extra && in->nextra))
        return IDEM_EINVAL;
    ctx = &fp->sha;
    rc = digest_new(ctx, fp_tag, sizeof(fp_tag));
    if (rc == IDEM_OK)
        rc = feed_field(ctx, in->method, in->method_len);
    if (rc == IDEM_OK)
        rc = feed_field(ctx, in->target, in->target_len);
    if (rc == IDEM_OK)
        rc = feed_field(ctx, in->content_type, in->content_type_len);
    if (rc == IDEM_OK)
        rc = feed_headers(ctx, in->extra, in->nextra);
    if (rc != IDEM_OK)
        return rc;
    fp->ctx = &fp->sha;
    return IDEM_OK;
}

int idem__fp_update(struct idem__fp *fp, const void *body, size_t len)
{
    if (!fp || !fp->ctx || (!body && len))
        return IDEM_EINVAL;
    return feed(&fp->sha, body, len);
}

int idem__fp_final(struct idem__fp *fp, uint8_t *out)
{
    int ok;

    if (!fp || !fp->ctx || !out)
        return IDEM_EINVAL;
    _Static_assert(SHA256_DIGEST_LENGTH == IDEM_FP_LEN, "a SHA-256");
    ok = SHA256_Final(out, &fp->sha) == 1;
    idem__fp_cancel(fp);
    return ok ? IDEM_OK : IDEM_EINVAL;
}

void idem__fp_cancel(struct idem__fp *fp)
{
    if (fp)
        fp->ctx = NULL;
}

int idem__fp_digest(const struct idem__fp_input *in, const void *body,
                    size_t body_len, uint8_t *out)
{
    struct idem__fp fp;
    int rc;

    memset(&fp, 0, sizeof(fp));
    rc = idem__fp_begin(&fp, in);

    if (rc == IDEM_OK)
        rc = idem__fp_update(&fp, body, body_len);
    if (rc == IDEM_OK)
        return idem__fp_final(&fp, out);
    idem__fp_cancel(&fp);
    return rc;
}

/* The last scope this thread digested: a client's requests carry the same
 * credentials, so the second SHA-256 of a request is usually this one.
 * The memo is exact: its key is every input byte, framed. */
#define SCOPE_MEMO_MAX 512

static _Thread_local struct {
    size_t len; /* 0: empty */
    uint8_t in[SCOPE_MEMO_MAX];
    uint8_t out[IDEM__SCOPE_LEN];
} memo;

/* Append a framed piece (presence, length, bytes) at *off; false when it
 * does not fit. */
static bool put_piece(uint8_t *buf, size_t *off, const void *p, size_t len)
{
    uint8_t head[1 + sizeof(size_t)] = { p != NULL };

    if (*off + sizeof(head) > SCOPE_MEMO_MAX ||
        len > SCOPE_MEMO_MAX - *off - sizeof(head))
        return false;
    memcpy(head + 1, &len, sizeof(len));
    memcpy(buf + *off, head, sizeof(head));
    if (len)
        memcpy(buf + *off + sizeof(head), p, len);
    *off += sizeof(head) + len;
    return true;
}

/* The scope's inputs as one unambiguous byte string in buf: its length,
 * or 0 if it does not fit the memo. */
static size_t scope_key(const char *route, size_t route_len,
                        const struct idem_header *h, size_t n, uint8_t *buf)
{
    size_t off = 0, i;
    bool ok = put_piece(buf, &off, route, route_len);

    for (i = 0; ok && i < n; i++)
        ok = put_piece(buf, &off, h[i].name, h[i].name_len) &&
             put_piece(buf, &off, h[i].value, h[i].value_len);
    return ok ? off : 0;
}

static int scope_compute(const char *route, size_t route_len,
                         const struct idem_header *hdrs, size_t n, uint8_t *out)
{
    uint8_t full[SHA256_DIGEST_LENGTH];
    SHA256_CTX ctx;
    int rc = digest_new(&ctx, scope_tag, sizeof(scope_tag));

    if (rc == IDEM_OK)
        rc = feed_field(&ctx, route, route_len);
    if (rc == IDEM_OK)
        rc = feed_headers(&ctx, hdrs, n);
    if (rc == IDEM_OK && SHA256_Final(full, &ctx) != 1)
        rc = IDEM_EINVAL;
    if (rc == IDEM_OK)
        memcpy(out, full, IDEM__SCOPE_LEN);
    return rc;
}

int idem__scope_digest(const char *route, size_t route_len,
                       const struct idem_header *hdrs, size_t n, uint8_t *out)
{
    uint8_t key[SCOPE_MEMO_MAX];
    size_t klen;
    int rc;

    if ((!hdrs && n) || !out || (!route && route_len))
        return IDEM_EINVAL;
    klen = scope_key(route, route_len, hdrs, n, key);
    if (klen && klen == memo.len && memcmp(key, memo.in, klen) == 0) {
        memcpy(out, memo.out, IDEM__SCOPE_LEN);
        return IDEM_OK;
    }
    rc = scope_compute(route, route_len, hdrs, n, out);
    if (rc == IDEM_OK && klen) {
        memcpy(memo.in, key, klen);
        memcpy(memo.out, out, IDEM__SCOPE_LEN);
        memo.len = klen;
    }
    return rc;
}
