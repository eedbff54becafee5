/*
 * JWK Sets (RFC 7517) and single keys (PEM, HMAC secret) turned into immutable, refcounted key
 * sets of OpenSSL 3 EVP_PKEYs built with EVP_PKEY_fromdata. Each key is pinned to the algorithms
 * it may verify when the set is built, so verification never trusts the token's `alg` alone.
 * Built on the main thread (config load, JWKS fetch), read by every worker.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "common/bug.h"
#include "common/error.h"
#include "filters/jwt_internal.h"

#define RSA_MIN_BITS  2048
#define RSA_MAX_BYTES 2048 /* 16384-bit modulus: bounds the cost of one verification */
#define RSA_MAX_E     8

static atomic_uint_fast64_t next_generation = 1;

typedef struct why_buf {
    char *p;
    size_t cap, len;
} why_buf_t;

static void why_add(why_buf_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void why_add(why_buf_t *w, const char *fmt, ...)
{
    if (!w->p || w->cap == 0 || w->len + 1 >= w->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->p + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        w->len = SL_MIN(w->len + (size_t)n, w->cap - 1);
}

static void key_dispose(sl__jwk_t *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    memset(k, 0, sizeof(*k));
}

static sl_jwks_t *set_new(size_t nkeys)
{
    sl_jwks_t *s = sl_xcalloc(1, sizeof(*s) + nkeys * sizeof(sl__jwk_t));
    atomic_init(&s->refs, 1);
    s->generation = atomic_fetch_add(&next_generation, 1);
    return s;
}

sl_jwks_t *sl_jwks_ref(sl_jwks_t *keys)
{
    atomic_fetch_add_explicit(&keys->refs, 1, memory_order_relaxed);
    return keys;
}

void sl_jwks_unref(sl_jwks_t *keys)
{
    if (!keys)
        return;
    /* acq_rel: the freeing thread must see every other holder's last use. */
    if (atomic_fetch_sub_explicit(&keys->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < keys->nkeys; i++)
        key_dispose(&keys->keys[i]);
    free(keys);
}

size_t sl_jwks_count(const sl_jwks_t *keys)
{
    return keys->nkeys;
}

uint64_t sl_jwks_generation(const sl_jwks_t *keys)
{
    return keys->generation;
}

bool sl_jwks_has_kid(const sl_jwks_t *keys, sl_str_t kid)
{
    for (size_t i = 0; i < keys->nkeys; i++)
        if (keys->keys[i].kid && sl_str_eq((sl_str_t){keys->keys[i].kid, keys->keys[i].kid_len}, kid))
            return true;
    return false;
}

/* Decodes a base64url member into a fresh buffer. NULL when absent, not a string or invalid. */
static unsigned char *member_b64(json_t *obj, const char *name, size_t *len, const char **err)
{
    json_t *v = json_object_get(obj, name);
    if (!v) {
        *err = "missing";
        return NULL;
    }
    if (!json_is_string(v)) {
        *err = "not a string";
        return NULL;
    }
    size_t n = json_string_length(v);
    unsigned char *buf = sl_xmalloc(SL__B64URL_DECODED_MAX(n));
    long d = sl__b64url_decode(json_string_value(v), n, buf);
    if (d <= 0) {
        free(buf);
        *err = "bad base64url";
        return NULL;
    }
    *len = (size_t)d;
    return buf;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1)
        if (EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
            pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

/* Invalid curve points must be refused when the key is loaded, not discovered per token. */
static bool pkey_public_ok(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    bool ok = ctx && EVP_PKEY_public_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static uint32_t rsa_algs_for(enum sl_jwt_alg pinned, const char **err)
{
    if (pinned == SL_JWT_ALG_UNSET)
        return SL_JWT_ALGS_RS | SL_JWT_ALGS_PS;
    if (SL_JWT_ALG_BIT(pinned) & (SL_JWT_ALGS_RS | SL_JWT_ALGS_PS))
        return SL_JWT_ALG_BIT(pinned);
    *err = "alg does not fit an RSA key";
    return 0;
}

static int rsa_check_size(EVP_PKEY *pkey, const char **err)
{
    int bits = EVP_PKEY_get_bits(pkey);
    if (bits < RSA_MIN_BITS) {
        *err = "RSA key below 2048 bits";
        return SL_EINVALID;
    }
    if (bits > RSA_MAX_BYTES * 8) {
        *err = "RSA key above 16384 bits";
        return SL_EINVALID;
    }
    return 0;
}

static int jwk_rsa(json_t *jwk, enum sl_jwt_alg pinned, sl__jwk_t *k, const char **err)
{
    uint32_t algs = rsa_algs_for(pinned, err);
    if (!algs)
        return SL_EINVALID;
    size_t nlen = 0, elen = 0;
    unsigned char *n = member_b64(jwk, "n", &nlen, err);
    if (!n)
        return SL_EINVALID;
    unsigned char *e = member_b64(jwk, "e", &elen, err);
    if (!e) {
        free(n);
        return SL_EINVALID;
    }
    int rc = SL_EINVALID;
    EVP_PKEY *pkey = NULL;
    if (nlen > RSA_MAX_BYTES || nlen * 8 < RSA_MIN_BITS) {
        *err = nlen > RSA_MAX_BYTES ? "RSA key above 16384 bits" : "RSA key below 2048 bits";
    } else if (elen > RSA_MAX_E || !(e[elen - 1] & 1) || (elen == 1 && e[0] == 1)) {
        *err = "bad RSA exponent";
    } else {
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        BIGNUM *bn_n = BN_bin2bn(n, (int)nlen, NULL), *bn_e = BN_bin2bn(e, (int)elen, NULL);
        if (bld && bn_n && bn_e && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) &&
            OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e))
            pkey = pkey_fromdata("RSA", bld);
        BN_free(bn_n);
        BN_free(bn_e);
        OSSL_PARAM_BLD_free(bld);
        if (pkey && !pkey_public_ok(pkey)) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        if (!pkey)
            *err = "OpenSSL refused the RSA key";
        else
            rc = rsa_check_size(pkey, err);
    }
    free(n);
    free(e);
    if (rc != 0) {
        EVP_PKEY_free(pkey);
        return rc;
    }
    k->kty = SL__JWK_RSA;
    k->algs = algs;
    k->pkey = pkey;
    return 0;
}

static int jwk_ec(json_t *jwk, enum sl_jwt_alg pinned, sl__jwk_t *k, const char **err)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    enum sl_jwt_alg alg;
    const char *group;
    size_t clen;
    if (crv && strcmp(crv, "P-256") == 0) {
        alg = SL_JWT_ES256, group = "P-256", clen = 32;
    } else if (crv && strcmp(crv, "P-384") == 0) {
        alg = SL_JWT_ES384, group = "P-384", clen = 48;
    } else {
        *err = "unsupported or missing crv";
        return SL_EINVALID;
    }
    if (pinned != SL_JWT_ALG_UNSET && pinned != alg) {
        *err = "alg does not fit the curve";
        return SL_EINVALID;
    }
    size_t xlen = 0, ylen = 0;
    unsigned char *x = member_b64(jwk, "x", &xlen, err);
    if (!x)
        return SL_EINVALID;
    unsigned char *y = member_b64(jwk, "y", &ylen, err);
    if (!y) {
        free(x);
        return SL_EINVALID;
    }
    EVP_PKEY *pkey = NULL;
    if (xlen != clen || ylen != clen) {
        *err = "x or y has the wrong size for the curve";
    } else {
        /* SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y */
        unsigned char point[1 + 2 * 48];
        point[0] = 0x04;
        memcpy(point + 1, x, clen);
        memcpy(point + 1 + clen, y, clen);
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * clen))
            pkey = pkey_fromdata("EC", bld);
        OSSL_PARAM_BLD_free(bld);
        if (pkey && !pkey_public_ok(pkey)) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        if (!pkey)
            *err = "the point is not on the curve";
    }
    free(x);
    free(y);
    if (!pkey)
        return SL_EINVALID;
    k->kty = SL__JWK_EC;
    k->algs = SL_JWT_ALG_BIT(alg);
    k->pkey = pkey;
    return 0;
}

static int jwk_okp(json_t *jwk, enum sl_jwt_alg pinned, sl__jwk_t *k, const char **err)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    if (!crv || strcmp(crv, "Ed25519") != 0) {
        *err = "unsupported or missing crv";
        return SL_EINVALID;
    }
    if (pinned != SL_JWT_ALG_UNSET && pinned != SL_JWT_EDDSA) {
        *err = "alg does not fit the curve";
        return SL_EINVALID;
    }
    size_t xlen = 0;
    unsigned char *x = member_b64(jwk, "x", &xlen, err);
    if (!x)
        return SL_EINVALID;
    EVP_PKEY *pkey = NULL;
    if (xlen != 32) {
        *err = "x has the wrong size for Ed25519";
    } else {
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        if (bld && OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, x, xlen))
            pkey = pkey_fromdata("ED25519", bld);
        OSSL_PARAM_BLD_free(bld);
        if (!pkey)
            *err = "OpenSSL refused the Ed25519 key";
    }
    free(x);
    if (!pkey)
        return SL_EINVALID;
    k->kty = SL__JWK_OKP;
    k->algs = SL_JWT_ALG_BIT(SL_JWT_EDDSA);
    k->pkey = pkey;
    return 0;
}

static size_t hs_hash_len(enum sl_jwt_alg alg)
{
    return alg == SL_JWT_HS256 ? 32 : alg == SL_JWT_HS384 ? 48 : 64;
}

/* RFC 7518 §3.2: an HMAC key is at least as long as the hash, so a pinned HS512 key needs 64
 * bytes and an unpinned key may verify only the HS variants its length allows. */
static uint32_t oct_algs_for(enum sl_jwt_alg pinned, size_t len, const char **err)
{
    if (pinned != SL_JWT_ALG_UNSET && !(SL_JWT_ALG_BIT(pinned) & SL_JWT_ALGS_HS)) {
        *err = "alg does not fit an oct key";
        return 0;
    }
    uint32_t algs = 0;
    for (enum sl_jwt_alg a = SL_JWT_HS256; a <= SL_JWT_HS512; a++)
        if ((pinned == SL_JWT_ALG_UNSET || pinned == a) && len >= hs_hash_len(a))
            algs |= SL_JWT_ALG_BIT(a);
    if (!algs)
        *err = "HMAC key shorter than its hash (RFC 7518 section 3.2)";
    return algs;
}

static int oct_key(const unsigned char *secret, size_t len, enum sl_jwt_alg pinned, sl__jwk_t *k, const char **err)
{
    uint32_t algs = oct_algs_for(pinned, len, err);
    if (!algs)
        return SL_EINVALID;
    k->kty = SL__JWK_OCT;
    k->algs = algs;
    k->secret = sl_xmalloc(len);
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    return 0;
}

static int jwk_oct(json_t *jwk, enum sl_jwt_alg pinned, sl__jwk_t *k, const char **err)
{
    size_t len = 0;
    unsigned char *secret = member_b64(jwk, "k", &len, err);
    if (!secret)
        return SL_EINVALID;
    int rc = oct_key(secret, len, pinned, k, err);
    OPENSSL_cleanse(secret, len);
    free(secret);
    return rc;
}

static void set_kid(sl__jwk_t *k, const char *kid, size_t len)
{
    if (!kid)
        return;
    k->kid = sl_xstrndup(kid, len);
    k->kid_len = len;
}

static int jwk_parse(json_t *jwk, sl__jwk_t *k, const char **err)
{
    if (!json_is_object(jwk)) {
        *err = "not an object";
        return SL_EINVALID;
    }
    json_t *use = json_object_get(jwk, "use");
    if (use && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0)) {
        *err = "use is not sig";
        return SL_EINVALID;
    }
    json_t *kid = json_object_get(jwk, "kid");
    if (kid && !json_is_string(kid)) {
        *err = "kid is not a string";
        return SL_EINVALID;
    }
    enum sl_jwt_alg pinned = SL_JWT_ALG_UNSET;
    json_t *alg = json_object_get(jwk, "alg");
    if (alg && (!json_is_string(alg) ||
                sl_jwt_alg_parse((sl_str_t){json_string_value(alg), json_string_length(alg)}, &pinned) != 0)) {
        *err = "unsupported alg";
        return SL_EINVALID;
    }
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    int rc;
    if (!kty) {
        *err = "missing kty";
        rc = SL_EINVALID;
    } else if (strcmp(kty, "RSA") == 0) {
        rc = jwk_rsa(jwk, pinned, k, err);
    } else if (strcmp(kty, "EC") == 0) {
        rc = jwk_ec(jwk, pinned, k, err);
    } else if (strcmp(kty, "OKP") == 0) {
        rc = jwk_okp(jwk, pinned, k, err);
    } else if (strcmp(kty, "oct") == 0) {
        rc = jwk_oct(jwk, pinned, k, err);
    } else {
        *err = "unsupported kty";
        rc = SL_EINVALID;
    }
    if (rc == 0 && kid)
        set_kid(k, json_string_value(kid), json_string_length(kid));
    return rc;
}

/* Printable, bounded kid for a warning: a kid is public, but it is still attacker-controlled
 * when the JWKS comes from a URL, so it must not inject lines into logs. */
static void kid_for_log(json_t *jwk, char *buf, size_t cap)
{
    const char *kid = json_is_object(jwk) ? json_string_value(json_object_get(jwk, "kid")) : NULL;
    size_t n = 0;
    for (; kid && kid[n] && n + 1 < cap; n++)
        buf[n] = (kid[n] >= 0x20 && kid[n] < 0x7f && kid[n] != '"') ? kid[n] : '?';
    buf[n] = '\0';
}

int sl_jwks_parse(const char *json, size_t len, sl_jwks_t **out, char *why, size_t why_len)
{
    why_buf_t w = {why, why_len, 0};
    if (why && why_len)
        why[0] = '\0';
    if (len > SL_JWKS_MAX_BYTES) {
        why_add(&w, "JWKS larger than %u bytes", SL_JWKS_MAX_BYTES);
        return SL_EINVALID;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        why_add(&w, "JWKS is not JSON (line %d column %d: %s)", jerr.line, jerr.column, jerr.text);
        return SL_EINVALID;
    }
    json_t *arr = json_object_get(doc, "keys");
    if (!json_is_array(arr)) {
        why_add(&w, "JWKS has no \"keys\" array");
        json_decref(doc);
        return SL_EINVALID;
    }
    size_t n = json_array_size(arr);
    sl_jwks_t *s = set_new(SL_MIN(n, (size_t)SL_JWKS_MAX_KEYS));
    for (size_t i = 0; i < n; i++) {
        json_t *jwk = json_array_get(arr, i);
        char kid[48];
        kid_for_log(jwk, kid, sizeof(kid));
        if (s->nkeys == SL_JWKS_MAX_KEYS) {
            why_add(&w, "keys after the first %d skipped\n", SL_JWKS_MAX_KEYS);
            break;
        }
        const char *err = "invalid";
        if (jwk_parse(jwk, &s->keys[s->nkeys], &err) == 0)
            s->nkeys++;
        else
            why_add(&w, "key %zu (kid \"%s\"): %s\n", i, kid, err);
    }
    json_decref(doc);
    /* Refused keys leave OpenSSL errors behind; the next TLS call on this thread must not see them. */
    ERR_clear_error();
    if (s->nkeys == 0) {
        why_add(&w, "JWKS has no usable key");
        sl_jwks_unref(s);
        return SL_EINVALID;
    }
    *out = s;
    return 0;
}

static enum sl_jwt_alg ec_alg_of(EVP_PKEY *pkey)
{
    char group[32];
    size_t glen = 0;
    if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &glen) != 1)
        return SL_JWT_ALG_UNSET;
    if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
        return SL_JWT_ES256;
    if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
        return SL_JWT_ES384;
    return SL_JWT_ALG_UNSET;
}

int sl_jwks_from_pem(const char *pem, size_t len, const char *alg, const char *kid, sl_jwks_t **out, char *why,
                     size_t why_len)
{
    why_buf_t w = {why, why_len, 0};
    if (why && why_len)
        why[0] = '\0';
    enum sl_jwt_alg pinned = SL_JWT_ALG_UNSET;
    if (alg && sl_jwt_alg_parse(sl_str_from_cstr(alg), &pinned) != 0) {
        why_add(&w, "unsupported algorithm");
        return SL_EINVALID;
    }
    if (len > INT32_MAX) {
        why_add(&w, "PEM too large");
        return SL_EINVALID;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    if (!pkey) {
        why_add(&w, "not a PEM public key (SubjectPublicKeyInfo)");
        return SL_EINVALID;
    }
    sl__jwk_t k;
    memset(&k, 0, sizeof(k));
    const char *err = NULL;
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        k.kty = SL__JWK_RSA;
        k.algs = rsa_algs_for(pinned, &err);
        if (k.algs && rsa_check_size(pkey, &err) != 0)
            k.algs = 0;
    } else if (EVP_PKEY_is_a(pkey, "EC")) {
        enum sl_jwt_alg ec = ec_alg_of(pkey);
        k.kty = SL__JWK_EC;
        if (ec == SL_JWT_ALG_UNSET)
            err = "unsupported curve";
        else if (pinned != SL_JWT_ALG_UNSET && pinned != ec)
            err = "algorithm does not fit the curve";
        else if (!pkey_public_ok(pkey))
            err = "the point is not on the curve";
        else
            k.algs = SL_JWT_ALG_BIT(ec);
    } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
        k.kty = SL__JWK_OKP;
        if (pinned != SL_JWT_ALG_UNSET && pinned != SL_JWT_EDDSA)
            err = "algorithm does not fit an Ed25519 key";
        else
            k.algs = SL_JWT_ALG_BIT(SL_JWT_EDDSA);
    } else {
        err = "unsupported key type";
    }
    ERR_clear_error();
    if (!k.algs) {
        why_add(&w, "%s", err ? err : "unusable key");
        EVP_PKEY_free(pkey);
        return SL_EINVALID;
    }
    k.pkey = pkey;
    if (kid)
        set_kid(&k, kid, strlen(kid));
    sl_jwks_t *s = set_new(1);
    s->keys[0] = k;
    s->nkeys = 1;
    *out = s;
    return 0;
}

int sl_jwks_from_secret(const unsigned char *secret, size_t len, const char *alg, const char *kid, sl_jwks_t **out)
{
    enum sl_jwt_alg pinned = SL_JWT_ALG_UNSET;
    if (alg && sl_jwt_alg_parse(sl_str_from_cstr(alg), &pinned) != 0)
        return SL_EINVALID;
    sl__jwk_t k;
    memset(&k, 0, sizeof(k));
    const char *err = NULL;
    if (oct_key(secret, len, pinned, &k, &err) != 0)
        return SL_EINVALID;
    if (kid)
        set_kid(&k, kid, strlen(kid));
    sl_jwks_t *s = set_new(1);
    s->keys[0] = k;
    s->nkeys = 1;
    *out = s;
    return 0;
}
