/*
 * What jwks.c and jwt.c share: the key record and strict base64url. Not for other modules.
 */
#ifndef SL_FILTERS_JWT_INTERNAL_H
#define SL_FILTERS_JWT_INTERNAL_H

#include <stdatomic.h>

#include <openssl/evp.h>

#include "filters/jwt.h"

enum sl__jwk_kty {
    SL__JWK_RSA = 1,
    SL__JWK_EC,
    SL__JWK_OKP,
    SL__JWK_OCT,
};

typedef struct sl__jwk {
    char *kid; /* NUL-terminated copy; NULL when the JWK has none */
    size_t kid_len;
    enum sl__jwk_kty kty;
    uint32_t algs;         /* algorithms this key may verify: one bit when pinned */
    EVP_PKEY *pkey;        /* RSA, EC, OKP */
    unsigned char *secret; /* oct: wiped on free */
    size_t secret_len;
} sl__jwk_t;

struct sl_jwks {
    atomic_uint refs;
    uint64_t generation;
    size_t nkeys;
    sl__jwk_t keys[];
};

/* Strict RFC 7515 §2 base64url: no padding, no whitespace, alphabet A-Z a-z 0-9 - _, and the
 * unused low bits of the last character zero (so one value has one encoding). `out` holds at
 * least (len / 4 + 1) * 3 bytes. Returns the decoded length, or -1. */
long sl__b64url_decode(const char *in, size_t len, unsigned char *out);

#define SL__B64URL_DECODED_MAX(len) (((len) / 4 + 1) * 3)

#endif
