/* Request digests (SHA-256, OpenSSL's): the fingerprint that tells a retry
 * from a different request under the same key, and the scope that keeps
 * one client's keys apart from another's. */
#ifndef IDEM_FINGERPRINT_H
#define IDEM_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

/* The SHA-256 context type of OpenSSL's low-level API: a plain struct, so
 * a digest allocates nothing (fingerprint.c says why it is used). */
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif
#include <openssl/sha.h>

#include "idem/engine.h"

#define IDEM__SCOPE_LEN 16 /* scope digest bytes kept: 128 bits */

/* What a fingerprint covers besides the body. A NULL pointer with length 0
 * means absent, which hashes differently from present and empty. */
struct idem__fp_input {
    const char *method;
    size_t method_len;
    const char *target; /* path and query, as sent */
    size_t target_len;
    const char *content_type;
    size_t content_type_len;
    const struct idem_header
        *extra; /* configured headers; value NULL: absent */
    size_t nextra;
};

/* An incremental fingerprint: begin, update with the body as it arrives,
 * final. Owned by one request; final or cancel ends it. No allocation. */
struct idem__fp {
    void *ctx; /* &sha while a digest is under way, else NULL */
    SHA256_CTX sha;
};

/* Load SHA-256 from OpenSSL now, not on the first request: OpenSSL's
 * one-time set-up makes thousands of allocations, and a failed one can
 * leave it crashing or refusing for good. IDEM_OK or IDEM_ENOMEM. */
int idem__fp_init(void);

/* IDEM_OK, IDEM_ENOMEM (OpenSSL could not allocate), IDEM_EINVAL. */
int idem__fp_begin(struct idem__fp *fp, const struct idem__fp_input *in);
int idem__fp_update(struct idem__fp *fp, const void *body, size_t len);
/* Writes IDEM_FP_LEN bytes and frees the context, on success or not. */
int idem__fp_final(struct idem__fp *fp, uint8_t *out);
/* Frees the context of a fingerprint that will not be finished. */
void idem__fp_cancel(struct idem__fp *fp);

/* One-shot: the fingerprint of a whole request. */
int idem__fp_digest(const struct idem__fp_input *in, const void *body,
                    size_t body_len, uint8_t *out);

/* The scope: a digest of the route prefix and the values of the scope
 * headers (value NULL: absent), IDEM__SCOPE_LEN bytes into out. */
int idem__scope_digest(const char *route, size_t route_len,
                       const struct idem_header *hdrs, size_t n, uint8_t *out);

#endif
