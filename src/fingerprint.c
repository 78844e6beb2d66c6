/* Request digests. Every field is framed as a presence byte and a 32-bit
 * big-endian length before its bytes, after a domain tag, so no two
 * different requests share an encoding; the body comes last, unframed, so
 * it can stream. Header names are lower-cased (they are case-insensitive). */
#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>

#include "fingerprint.h"
#include "internal.h"

static const char fp_tag[] = "idem-fingerprint/1";
static const char scope_tag[] = "idem-scope/1";

static int feed(EVP_MD_CTX *ctx, const void *p, size_t len)
{
    if (len == 0 || EVP_DigestUpdate(ctx, p, len) == 1)
        return IDEM_OK;
    return IDEM_EINVAL;
}

/* A field's frame: 0 if absent, else 1 and its length. */
static int feed_frame(EVP_MD_CTX *ctx, const void *p, size_t len)
{
    unsigned char head[5] = { p != NULL, (unsigned char)(len >> 24),
                              (unsigned char)(len >> 16),
                              (unsigned char)(len >> 8), (unsigned char)len };

    if (len > UINT32_MAX || (!p && len))
        return IDEM_EINVAL;
    return feed(ctx, head, p ? sizeof(head) : 1);
}

static int feed_field(EVP_MD_CTX *ctx, const void *p, size_t len)
{
    int rc = feed_frame(ctx, p, len);

    return rc == IDEM_OK ? feed(ctx, p, len) : rc;
}

static int feed_lower(EVP_MD_CTX *ctx, const char *name, size_t len)
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

static int feed_headers(EVP_MD_CTX *ctx, const struct idem_header *h, size_t n)
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

/* OpenSSL 3 looks an algorithm up (under locks) on every init unless it
 * was fetched once: fetch SHA-256 once per process, keep it for good. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256(void)
{
    pthread_once(&sha256_once, fetch_sha256);
    return sha256_md ? sha256_md : EVP_sha256();
}

int idem__fp_init(void)
{
    pthread_once(&sha256_once, fetch_sha256);
    return sha256_md ? IDEM_OK : IDEM_ENOMEM;
}

/* A new SHA-256 context that has taken tag; NULL on failure. */
static EVP_MD_CTX *digest_new(const char *tag, size_t tag_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    if (!ctx)
        return NULL;
    if (EVP_DigestInit_ex(ctx, sha256(), NULL) != 1 ||
        feed(ctx, tag, tag_len) != IDEM_OK) {
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int idem__fp_begin(struct idem__fp *fp, const struct idem__fp_input *in)
{
    EVP_MD_CTX *ctx;
    int rc;

    if (!fp || !in || (!in->extra && in->nextra))
        return IDEM_EINVAL;
    ctx = digest_new(fp_tag, sizeof(fp_tag));
    if (!ctx)
        return IDEM_ENOMEM;
    rc = feed_field(ctx, in->method, in->method_len);
    if (rc == IDEM_OK)
        rc = feed_field(ctx, in->target, in->target_len);
    if (rc == IDEM_OK)
        rc = feed_field(ctx, in->content_type, in->content_type_len);
    if (rc == IDEM_OK)
        rc = feed_headers(ctx, in->extra, in->nextra);
    if (rc != IDEM_OK) {
        EVP_MD_CTX_free(ctx);
        return rc;
    }
    fp->ctx = ctx;
    return IDEM_OK;
}

int idem__fp_update(struct idem__fp *fp, const void *body, size_t len)
{
    if (!fp || !fp->ctx || (!body && len))
        return IDEM_EINVAL;
    return feed(fp->ctx, body, len);
}

int idem__fp_final(struct idem__fp *fp, uint8_t *out)
{
    unsigned int n = 0;
    int ok;

    if (!fp || !fp->ctx || !out)
        return IDEM_EINVAL;
    ok = EVP_DigestFinal_ex(fp->ctx, out, &n) == 1 && n == IDEM_FP_LEN;
    idem__fp_cancel(fp);
    return ok ? IDEM_OK : IDEM_EINVAL;
}

void idem__fp_cancel(struct idem__fp *fp)
{
    if (fp && fp->ctx) {
        EVP_MD_CTX_free(fp->ctx);
        fp->ctx = NULL;
    }
}

int idem__fp_digest(const struct idem__fp_input *in, const void *body,
                    size_t body_len, uint8_t *out)
{
    struct idem__fp fp = { NULL };
    int rc = idem__fp_begin(&fp, in);

    if (rc == IDEM_OK)
        rc = idem__fp_update(&fp, body, body_len);
    if (rc == IDEM_OK)
        return idem__fp_final(&fp, out);
    idem__fp_cancel(&fp);
    return rc;
}

int idem__scope_digest(const char *route, size_t route_len,
                       const struct idem_header *hdrs, size_t n, uint8_t *out)
{
    uint8_t full[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *ctx;
    int rc;

    if ((!hdrs && n) || !out)
        return IDEM_EINVAL;
    ctx = digest_new(scope_tag, sizeof(scope_tag));
    if (!ctx)
        return IDEM_ENOMEM;
    rc = feed_field(ctx, route, route_len);
    if (rc == IDEM_OK)
        rc = feed_headers(ctx, hdrs, n);
    if (rc == IDEM_OK && EVP_DigestFinal_ex(ctx, full, &len) != 1)
        rc = IDEM_EINVAL;
    EVP_MD_CTX_free(ctx);
    if (rc == IDEM_OK)
        memcpy(out, full, IDEM__SCOPE_LEN);
    return rc;
}
