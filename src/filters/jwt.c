/*
 * JWS compact verification (RFC 7515) and JWT claim checks (RFC 7519) against a key set from
 * jwks.c. Called by the auth_jwt filter on a token-cache miss, from any worker thread. Every
 * rejection maps to one static detail code; the token's `alg` is only ever compared with the
 * algorithms its key was pinned to when the key set was built, never used to choose a verifier.
 */
#include <math.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>

#include "common/bug.h"
#include "common/error.h"
#include "filters/jwt_internal.h"

enum alg_kind {
    KIND_HMAC = 1,
    KIND_RSA_PKCS1,
    KIND_RSA_PSS,
    KIND_ECDSA,
    KIND_EDDSA,
};

typedef struct alg_info {
    const char *name;
    enum alg_kind kind;
    const EVP_MD *(*md)(void); /* NULL for EdDSA: one-shot, the curve fixes the hash */
    size_t ec_len;             /* ECDSA: bytes of R and of S (RFC 7518 §3.4) */
} alg_info_t;

static const alg_info_t alg_table[SL_JWT_ALG__COUNT] = {
    [SL_JWT_HS256] = {"HS256", KIND_HMAC, EVP_sha256, 0},
    [SL_JWT_HS384] = {"HS384", KIND_HMAC, EVP_sha384, 0},
    [SL_JWT_HS512] = {"HS512", KIND_HMAC, EVP_sha512, 0},
    [SL_JWT_RS256] = {"RS256", KIND_RSA_PKCS1, EVP_sha256, 0},
    [SL_JWT_RS384] = {"RS384", KIND_RSA_PKCS1, EVP_sha384, 0},
    [SL_JWT_RS512] = {"RS512", KIND_RSA_PKCS1, EVP_sha512, 0},
    [SL_JWT_PS256] = {"PS256", KIND_RSA_PSS, EVP_sha256, 0},
    [SL_JWT_PS384] = {"PS384", KIND_RSA_PSS, EVP_sha384, 0},
    [SL_JWT_PS512] = {"PS512", KIND_RSA_PSS, EVP_sha512, 0},
    [SL_JWT_ES256] = {"ES256", KIND_ECDSA, EVP_sha256, 32},
    [SL_JWT_ES384] = {"ES384", KIND_ECDSA, EVP_sha384, 48},
    [SL_JWT_EDDSA] = {"EdDSA", KIND_EDDSA, NULL, 0},
};

static const char *const verdict_details[SL_JWT_VERDICT__COUNT] = {
    [SL_JWT_OK] = "ok",
    [SL_JWT_MALFORMED] = "jwt_malformed",
    [SL_JWT_ALG_NOT_ALLOWED] = "jwt_alg_not_allowed",
    [SL_JWT_UNKNOWN_KID] = "jwt_unknown_kid",
    [SL_JWT_BAD_SIGNATURE] = "jwt_bad_signature",
    [SL_JWT_EXPIRED] = "jwt_expired",
    [SL_JWT_NOT_YET_VALID] = "jwt_not_yet_valid",
    [SL_JWT_ISSUED_IN_FUTURE] = "jwt_issued_in_future",
    [SL_JWT_BAD_ISSUER] = "jwt_bad_issuer",
    [SL_JWT_BAD_AUDIENCE] = "jwt_bad_audience",
    [SL_JWT_MISSING_CLAIM] = "jwt_missing_claim",
};

const char *sl_jwt_alg_name(enum sl_jwt_alg alg)
{
    return (alg > SL_JWT_ALG_UNSET && alg < SL_JWT_ALG__COUNT) ? alg_table[alg].name : NULL;
}

int sl_jwt_alg_parse(sl_str_t name, enum sl_jwt_alg *out)
{
    for (enum sl_jwt_alg a = SL_JWT_ALG_UNSET + 1; a < SL_JWT_ALG__COUNT; a++)
        if (sl_str_eq(name, sl_str_from_cstr(alg_table[a].name))) {
            *out = a;
            return 0;
        }
    return SL_EINVALID;
}

const char *sl_jwt_verdict_detail(enum sl_jwt_verdict v)
{
    return (v >= SL_JWT_OK && v < SL_JWT_VERDICT__COUNT) ? verdict_details[v] : "jwt_malformed";
}

enum sl_cause sl_jwt_verdict_cause(enum sl_jwt_verdict v)
{
    if (v == SL_JWT_OK)
        return SL_CAUSE_NONE;
    return v == SL_JWT_EXPIRED ? SL_CAUSE_AUTH_EXPIRED : SL_CAUSE_AUTH_INVALID;
}

/* -1 for characters outside the base64url alphabet (RFC 4648 §5). */
static signed char b64_lookup(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (signed char)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (signed char)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (signed char)(c - '0' + 52);
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long sl__b64url_decode(const char *in, size_t len, unsigned char *out)
{
    /* A remainder of one character cannot carry a whole byte. */
    if (len % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        signed char v = b64_lookup((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Non-zero leftover bits would give one value several encodings (RFC 4648 §3.5). */
    if (acc != 0)
        return -1;
    return (long)o;
}

/* ---------------------------------------------------------------------------------------------
 * Signatures
 */

static bool verify_hmac(const sl__jwk_t *k, const alg_info_t *ai, const unsigned char *sig, size_t siglen,
                        const unsigned char *tbs, size_t tbslen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(ai->md(), k->secret, (int)k->secret_len, tbs, tbslen, mac, &maclen))
        return false;
    /* The length is public (it follows from alg); only the bytes must be compared in constant time. */
    bool ok = siglen == maclen && CRYPTO_memcmp(mac, sig, maclen) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

/* JWS carries ECDSA signatures as fixed-size R || S (RFC 7518 §3.4); OpenSSL verifies DER. */
static int ecdsa_raw_to_der(const unsigned char *sig, size_t clen, unsigned char **der)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)clen, NULL), *s = BN_bin2bn(sig + clen, (int)clen, NULL);
    if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return -1;
    }
    int n = i2d_ECDSA_SIG(es, der);
    ECDSA_SIG_free(es);
    return n;
}

static bool verify_pkey(const sl__jwk_t *k, const alg_info_t *ai, const unsigned char *sig, size_t siglen,
                        const unsigned char *tbs, size_t tbslen)
{
    unsigned char *der = NULL;
    if (ai->kind == KIND_ECDSA) {
        if (siglen != 2 * ai->ec_len)
            return false;
        int n = ecdsa_raw_to_der(sig, ai->ec_len, &der);
        if (n <= 0)
            return false;
        sig = der;
        siglen = (size_t)n;
    } else if (ai->kind == KIND_RSA_PKCS1 || ai->kind == KIND_RSA_PSS) {
        /* RFC 7518 §3.3: the signature is exactly as long as the modulus. */
        if (siglen != (size_t)EVP_PKEY_get_size(k->pkey))
            return false;
    } else if (siglen != 64) {
        return false;
    }
    bool ok = false;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    if (md && EVP_DigestVerifyInit(md, &pctx, ai->md ? ai->md() : NULL, NULL, k->pkey) == 1) {
        bool ready = true;
        if (ai->kind == KIND_RSA_PSS)
            /* RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash. */
            ready = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
                    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
                    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, ai->md()) == 1;
        else if (ai->kind == KIND_RSA_PKCS1)
            ready = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
        ok = ready && EVP_DigestVerify(md, sig, siglen, tbs, tbslen) == 1;
    }
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return ok;
}

static bool key_verifies(const sl__jwk_t *k, enum sl_jwt_alg alg, const unsigned char *sig, size_t siglen,
                         const unsigned char *tbs, size_t tbslen)
{
    const alg_info_t *ai = &alg_table[alg];
    if (ai->kind == KIND_HMAC)
        return k->kty == SL__JWK_OCT && verify_hmac(k, ai, sig, siglen, tbs, tbslen);
    return k->kty != SL__JWK_OCT && verify_pkey(k, ai, sig, siglen, tbs, tbslen);
}

/* ---------------------------------------------------------------------------------------------
 * JWS layer
 */

typedef struct jws_parts {
    sl_str_t header, payload, signature, signing_input;
} jws_parts_t;

static bool split(sl_str_t token, jws_parts_t *p)
{
    const char *d1 = memchr(token.ptr, '.', token.len);
    if (!d1)
        return false;
    const char *end = token.ptr + token.len;
    const char *d2 = memchr(d1 + 1, '.', (size_t)(end - d1 - 1));
    if (!d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
        return false;
    p->header = (sl_str_t){token.ptr, (size_t)(d1 - token.ptr)};
    p->payload = (sl_str_t){d1 + 1, (size_t)(d2 - d1 - 1)};
    p->signature = (sl_str_t){d2 + 1, (size_t)(end - d2 - 1)};
    p->signing_input = (sl_str_t){token.ptr, (size_t)(d2 - token.ptr)};
    return p->header.len > 0;
}

/* RFC 7519 §5.1 and RFC 9068 §2.1: `JWT` and `at+jwt`, with the optional `application/`. */
static bool typ_ok(json_t *typ)
{
    if (!json_is_string(typ))
        return false;
    sl_str_t t = {json_string_value(typ), json_string_length(typ)};
    if (t.len > 12 && sl_str_caseeq((sl_str_t){t.ptr, 12}, SL_STR_LIT("application/"))) {
        t.ptr += 12;
        t.len -= 12;
    }
    return sl_str_caseeq_cstr(t, "JWT") || sl_str_caseeq_cstr(t, "at+jwt");
}

static enum sl_jwt_verdict parse_header(sl_str_t b64, unsigned char *buf, uint32_t allowed, enum sl_jwt_alg *alg,
                                        char *kid, size_t *kid_len, bool *has_kid)
{
    long n = sl__b64url_decode(b64.ptr, b64.len, buf);
    if (n <= 0)
        return SL_JWT_MALFORMED;
    json_t *h = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    enum sl_jwt_verdict v = SL_JWT_OK;
    json_t *a = json_object_get(h, "alg"), *crit = json_object_get(h, "crit"), *typ = json_object_get(h, "typ");
    json_t *k = json_object_get(h, "kid");
    if (!json_is_object(h) || !json_is_string(a)) {
        v = SL_JWT_MALFORMED;
    } else if (sl_jwt_alg_parse((sl_str_t){json_string_value(a), json_string_length(a)}, alg) != 0 ||
               !(allowed & SL_JWT_ALG_BIT(*alg))) {
        /* `none` never parses: an unsecured JWS is refused before any key is looked at. */
        v = SL_JWT_ALG_NOT_ALLOWED;
    } else if (crit && !(json_is_array(crit) && json_array_size(crit) == 0)) {
        /* RFC 7515 §4.1.11: we understand no extension, so any listed one must fail. */
        v = SL_JWT_MALFORMED;
    } else if (typ && !typ_ok(typ)) {
        v = SL_JWT_MALFORMED;
    } else if (k && (!json_is_string(k) || json_string_length(k) > 255)) {
        v = SL_JWT_MALFORMED;
    } else if (k) {
        *has_kid = true;
        *kid_len = json_string_length(k);
        memcpy(kid, json_string_value(k), *kid_len);
    }
    json_decref(h);
    return v;
}

/* The whole JWS layer; on success `*payload` is the still-encoded payload segment. */
static enum sl_jwt_verdict jws_verify(const sl_jwks_t *keys, uint32_t allowed, sl_str_t token, enum sl_jwt_alg *alg_out,
                                      sl_str_t *payload)
{
    if (token.len == 0 || token.len > SL_JWT_MAX_TOKEN)
        return SL_JWT_MALFORMED;
    jws_parts_t p;
    if (!split(token, &p))
        return SL_JWT_MALFORMED;
    unsigned char buf[SL__B64URL_DECODED_MAX(SL_JWT_MAX_TOKEN)];
    enum sl_jwt_alg alg = SL_JWT_ALG_UNSET;
    char kid[256];
    size_t kid_len = 0;
    bool has_kid = false;
    enum sl_jwt_verdict v = parse_header(p.header, buf, allowed, &alg, kid, &kid_len, &has_kid);
    if (v != SL_JWT_OK)
        return v;
    long siglen = sl__b64url_decode(p.signature.ptr, p.signature.len, buf);
    if (siglen < 0)
        return SL_JWT_MALFORMED;

    const sl__jwk_t *cand[SL_JWT_MAX_TRIES];
    size_t ncand = 0;
    bool kid_seen = false;
    for (size_t i = 0; i < keys->nkeys && ncand < SL_JWT_MAX_TRIES; i++) {
        const sl__jwk_t *k = &keys->keys[i];
        if (has_kid) {
            if (!k->kid || !sl_str_eq((sl_str_t){k->kid, k->kid_len}, (sl_str_t){kid, kid_len}))
                continue;
            kid_seen = true;
        }
        if (k->algs & SL_JWT_ALG_BIT(alg))
            cand[ncand++] = k;
    }
    if (has_kid && !kid_seen)
        return SL_JWT_UNKNOWN_KID;
    /* The key exists but is pinned to another algorithm: HS/RS confusion ends here. */
    if (ncand == 0)
        return SL_JWT_ALG_NOT_ALLOWED;
    bool ok = false;
    for (size_t i = 0; i < ncand && !ok; i++)
        ok = key_verifies(cand[i], alg, buf, (size_t)siglen, (const unsigned char *)p.signing_input.ptr,
                          p.signing_input.len);
    /* Failed verifications leave entries in this thread's OpenSSL error queue. */
    ERR_clear_error();
    if (!ok)
        return SL_JWT_BAD_SIGNATURE;
    *alg_out = alg;
    *payload = p.payload;
    return SL_JWT_OK;
}

int sl_jws_verify(const sl_jwks_t *keys, uint32_t allowed_algs, sl_str_t token, enum sl_jwt_alg *alg,
                  enum sl_jwt_verdict *verdict)
{
    sl_str_t payload;
    enum sl_jwt_alg a = SL_JWT_ALG_UNSET;
    enum sl_jwt_verdict v = jws_verify(keys, allowed_algs, token, &a, &payload);
    if (v != SL_JWT_OK) {
        *verdict = v;
        return SL_EINVALID;
    }
    *alg = a;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Claims
 */

/* A NumericDate (RFC 7519 §2): a non-negative JSON number; fractions are dropped. Returns 1 when
 * present, 0 when absent, -1 when of another type or negative. */
static int numeric_date(json_t *claims, const char *name, uint64_t *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0)
            return -1;
        *out = (uint64_t)i;
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= 0))
            return -1;
        *out = d >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)floor(d);
        return 1;
    }
    return -1;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static bool string_is(json_t *v, const char *want)
{
    return json_is_string(v) &&
           sl_str_eq((sl_str_t){json_string_value(v), json_string_length(v)}, sl_str_from_cstr(want));
}

static enum sl_jwt_verdict check_audience(json_t *aud, const sl_jwt_policy_t *policy)
{
    if (!aud)
        return SL_JWT_MISSING_CLAIM;
    if (!json_is_string(aud) && !json_is_array(aud))
        return SL_JWT_MALFORMED;
    size_t n = json_is_array(aud) ? json_array_size(aud) : 1;
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_is_array(aud) ? json_array_get(aud, i) : aud;
        if (!json_is_string(a))
            return SL_JWT_MALFORMED;
        for (size_t j = 0; j < policy->naudiences && !found; j++)
            found = string_is(a, policy->audiences[j]);
    }
    return found ? SL_JWT_OK : SL_JWT_BAD_AUDIENCE;
}

static enum sl_jwt_verdict check_claims(json_t *c, const sl_jwt_policy_t *policy, uint64_t now, uint64_t *exp_out)
{
    uint64_t exp = 0, nbf = 0, iat = 0;
    int has_exp = numeric_date(c, "exp", &exp), has_nbf = numeric_date(c, "nbf", &nbf);
    int has_iat = numeric_date(c, "iat", &iat);
    if (has_exp < 0 || has_nbf < 0 || has_iat < 0)
        return SL_JWT_MALFORMED;
    if (!has_exp && !policy->exp_optional)
        return SL_JWT_MISSING_CLAIM;
    /* RFC 7519 §4.1.4: the current time must be before exp. */
    if (has_exp && now >= sat_add(exp, policy->leeway_s))
        return SL_JWT_EXPIRED;
    if (has_nbf && sat_add(now, policy->leeway_s) < nbf)
        return SL_JWT_NOT_YET_VALID;
    if (has_iat && iat > sat_add(now, policy->leeway_s))
        return SL_JWT_ISSUED_IN_FUTURE;
    if (policy->issuer) {
        json_t *iss = json_object_get(c, "iss");
        if (!iss)
            return SL_JWT_MISSING_CLAIM;
        if (!string_is(iss, policy->issuer))
            return SL_JWT_BAD_ISSUER;
    }
    if (policy->naudiences) {
        enum sl_jwt_verdict v = check_audience(json_object_get(c, "aud"), policy);
        if (v != SL_JWT_OK)
            return v;
    }
    for (size_t i = 0; i < policy->nrequired; i++) {
        json_t *v = json_object_get(c, policy->required_claims[i]);
        if (!v || json_is_null(v))
            return SL_JWT_MISSING_CLAIM;
    }
    *exp_out = has_exp ? exp : 0;
    return SL_JWT_OK;
}

int sl_jwt_verify(const sl_jwks_t *keys, const sl_jwt_policy_t *policy, sl_str_t token, uint64_t now_s,
                  sl_jwt_result_t *out)
{
    sl_str_t payload;
    enum sl_jwt_alg alg = SL_JWT_ALG_UNSET;
    json_t *claims = NULL;
    uint64_t exp = 0;
    enum sl_jwt_verdict v = jws_verify(keys, policy->allowed_algs, token, &alg, &payload);
    if (v == SL_JWT_OK) {
        /* Claims are read only from a signed payload: nothing unsigned reaches json_loadb. */
        unsigned char *buf = sl_xmalloc(SL__B64URL_DECODED_MAX(payload.len));
        long n = sl__b64url_decode(payload.ptr, payload.len, buf);
        claims = n > 0 ? json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL) : NULL;
        free(buf);
        v = json_is_object(claims) ? check_claims(claims, policy, now_s, &exp) : SL_JWT_MALFORMED;
    }
    if (v != SL_JWT_OK) {
        json_decref(claims);
        out->verdict = v;
        out->detail = verdict_details[v];
        out->claims = NULL;
        return SL_EINVALID;
    }
    out->verdict = SL_JWT_OK;
    out->detail = verdict_details[SL_JWT_OK];
    out->claims = claims;
    out->exp = exp;
    out->alg = alg;
    return 0;
}

void sl_jwt_result_dispose(sl_jwt_result_t *r)
{
    json_decref(r->claims);
    r->claims = NULL;
}

int sl_jwt_claim_str(const json_t *claims, const char *name, sl_str_t *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return SL_ENOTFOUND;
    if (!json_is_string(v))
        return SL_EINVALID;
    *out = (sl_str_t){json_string_value(v), json_string_length(v)};
    return 0;
}

int sl_jwt_claim_strs(const json_t *claims, const char *name, sl_str_t *out, size_t max, size_t *n)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return SL_ENOTFOUND;
    if (json_is_string(v)) {
        if (max < 1)
            return SL_ETOOBIG;
        out[0] = (sl_str_t){json_string_value(v), json_string_length(v)};
        *n = 1;
        return 0;
    }
    if (!json_is_array(v))
        return SL_EINVALID;
    size_t count = json_array_size(v);
    for (size_t i = 0; i < count; i++)
        if (!json_is_string(json_array_get(v, i)))
            return SL_EINVALID;
    if (count > max)
        return SL_ETOOBIG;
    for (size_t i = 0; i < count; i++) {
        json_t *s = json_array_get(v, i);
        out[i] = (sl_str_t){json_string_value(s), json_string_length(s)};
    }
    *n = count;
    return 0;
}
