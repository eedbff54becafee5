/*
 * Unit tests of the JWT core (filters/jwt.h): published vectors (RFC 7515 A.1-A.3, RFC 8037 A.4),
 * sign-then-verify for every algorithm with keys generated here, the attack cases of issue 4
 * (alg none, HS/RS confusion, kid, tampering, time claims, malformed encodings), JWKS parsing
 * with skipped keys, and the verified-token cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "common/error.h"
#include "filters/jwt.h"

/* ---------------------------------------------------------------------------------------------
 * Helpers: base64url, token assembly, signing with OpenSSL
 */

static char *b64url(const unsigned char *in, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(len / 3 * 4 + 5), *p = out;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = tab[v >> 18], *p++ = tab[(v >> 12) & 63], *p++ = tab[(v >> 6) & 63], *p++ = tab[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *p++ = tab[v >> 18], *p++ = tab[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *p++ = tab[v >> 18], *p++ = tab[(v >> 12) & 63], *p++ = tab[(v >> 6) & 63];
    }
    *p = '\0';
    return out;
}

static char *b64s(const char *s)
{
    return b64url((const unsigned char *)s, strlen(s));
}

/* "b64(header).b64(payload)" */
static char *signing_input(const char *header, const char *payload)
{
    char *h = b64s(header), *p = b64s(payload);
    char *out = malloc(strlen(h) + strlen(p) + 2);
    sprintf(out, "%s.%s", h, p);
    free(h);
    free(p);
    return out;
}

static char *join_sig(char *input, const unsigned char *sig, size_t siglen)
{
    char *s = b64url(sig, siglen);
    char *out = malloc(strlen(input) + strlen(s) + 2);
    sprintf(out, "%s.%s", input, s);
    free(s);
    free(input);
    return out;
}

static const EVP_MD *md_for(const char *alg)
{
    const char *bits = alg + 2;
    if (strcmp(alg, "EdDSA") == 0)
        return NULL;
    return strcmp(bits, "256") == 0 ? EVP_sha256() : strcmp(bits, "384") == 0 ? EVP_sha384() : EVP_sha512();
}

static char *sign_hmac(const char *header, const char *payload, const void *secret, size_t slen, const char *alg)
{
    char *in = signing_input(header, payload);
    unsigned char mac[64];
    unsigned int n = 0;
    HMAC(md_for(alg), secret, (int)slen, (unsigned char *)in, strlen(in), mac, &n);
    return join_sig(in, mac, n);
}

static char *sign_pkey(const char *header, const char *payload, EVP_PKEY *key, const char *alg)
{
    char *in = signing_input(header, payload);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(EVP_DigestSignInit(md, &pctx, md_for(alg), NULL, key), 1);
    if (alg[0] == 'P') {
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
    }
    size_t siglen = 0;
    assert_int_equal(EVP_DigestSign(md, NULL, &siglen, (unsigned char *)in, strlen(in)), 1);
    unsigned char *sig = malloc(siglen);
    assert_int_equal(EVP_DigestSign(md, sig, &siglen, (unsigned char *)in, strlen(in)), 1);
    EVP_MD_CTX_free(md);
    if (alg[0] == 'E' && alg[1] == 'S') {
        /* DER -> R || S, each left-padded to the curve size */
        size_t clen = strcmp(alg, "ES256") == 0 ? 32 : 48;
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
        unsigned char raw[96];
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)clen);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + clen, (int)clen);
        ECDSA_SIG_free(es);
        free(sig);
        return join_sig(in, raw, 2 * clen);
    }
    char *out = join_sig(in, sig, siglen);
    free(sig);
    return out;
}

static char *bn_b64(EVP_PKEY *k, const char *name)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(k, name, &bn), 1);
    unsigned char buf[1024];
    int n = BN_bn2bin(bn, buf);
    BN_free(bn);
    return b64url(buf, (size_t)n);
}

/* A one-key JWKS document for a generated public key. `extra` is spliced into the JWK. */
static char *jwk_json(EVP_PKEY *k, const char *kid, const char *extra)
{
    char *out = malloc(4096), *a = NULL, *b = NULL;
    if (EVP_PKEY_is_a(k, "RSA")) {
        a = bn_b64(k, OSSL_PKEY_PARAM_RSA_N);
        b = bn_b64(k, OSSL_PKEY_PARAM_RSA_E);
        snprintf(out, 4096, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"%s}]}", kid, a, b,
                 extra);
    } else if (EVP_PKEY_is_a(k, "EC")) {
        unsigned char pt[200];
        size_t n = 0;
        assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt, sizeof(pt), &n), 1);
        size_t c = (n - 1) / 2;
        a = b64url(pt + 1, c);
        b = b64url(pt + 1 + c, c);
        snprintf(out, 4096, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"%s\",\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}]}",
                 c == 32 ? "P-256" : "P-384", kid, a, b, extra);
    } else {
        unsigned char raw[32];
        size_t n = sizeof(raw);
        assert_int_equal(EVP_PKEY_get_raw_public_key(k, raw, &n), 1);
        a = b64url(raw, n);
        snprintf(out, 4096, "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"%s\",\"x\":\"%s\"%s}]}", kid, a,
                 extra);
    }
    free(a);
    free(b);
    return out;
}

static sl_jwks_t *jwks(const char *json)
{
    sl_jwks_t *k = NULL;
    char why[512];
    int rc = sl_jwks_parse(json, strlen(json), &k, why, sizeof(why));
    if (rc != 0)
        fprintf(stderr, "jwks: %s\n", why);
    assert_int_equal(rc, 0);
    return k;
}

static EVP_PKEY *rsa_key, *ec384_key, *ed_key, *ec256_key;

static int group_setup(void **state)
{
    (void)state;
    rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec384_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    ec256_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    return rsa_key && ec384_key && ec256_key && ed_key ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(ec384_key);
    EVP_PKEY_free(ec256_key);
    EVP_PKEY_free(ed_key);
    return 0;
}

static const sl_jwt_policy_t open_policy = {.allowed_algs = SL_JWT_ALGS_ALL, .exp_optional = true};

static enum sl_jwt_verdict verdict(const sl_jwks_t *k, const sl_jwt_policy_t *p, const char *token, uint64_t now)
{
    sl_jwt_result_t r;
    memset(&r, 0xab, sizeof(r));
    int rc = sl_jwt_verify(k, p, sl_str_from_cstr(token), now, &r);
    assert_int_equal(rc == 0, r.verdict == SL_JWT_OK);
    assert_string_equal(r.detail, sl_jwt_verdict_detail(r.verdict));
    if (rc == 0)
        sl_jwt_result_dispose(&r);
    else
        assert_null(r.claims);
    return r.verdict;
}

#define NOW 1800000000ull

/* ---------------------------------------------------------------------------------------------
 * Published vectors
 */

/* RFC 7515 A.1-A.3 share this payload: {"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true} */
#define RFC7515_PAYLOAD "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
#define RFC7515_EXP     1300819380ull

static const char rfc7515_a1_jwks[] = "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_"
                                      "T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"}]}";
static const char rfc7515_a1_token[] =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." RFC7515_PAYLOAD ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

static const char rfc7515_a2_jwks[] = "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"2010-12-29\",\"e\":\"AQAB\",\"n\":\""
                                      "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx"
                                      "HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs"
                                      "D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH"
                                      "SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV"
                                      "MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8"
                                      "NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ\"}]}";
static const char rfc7515_a2_token[] =
    "eyJhbGciOiJSUzI1NiJ9." RFC7515_PAYLOAD ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4"
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K"
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv"
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB"
    "p0igcN_IoypGlUPQGe77Rw";

static const char rfc7515_a3_jwks[] = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
                                      "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                      "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}";
static const char rfc7515_a3_token[] =
    "eyJhbGciOiJFUzI1NiJ9." RFC7515_PAYLOAD ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA"
    "pmWQxfKTUJqPP3-Kg6NU1Q";

static const char rfc8037_jwks[] =
    "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}";
static const char rfc8037_token[] =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

static void check_rfc7515(const char *jwks_json, const char *token, enum sl_jwt_alg alg)
{
    sl_jwks_t *k = jwks(jwks_json);
    sl_jwt_policy_t p = {.issuer = "joe", .allowed_algs = SL_JWT_ALG_BIT(alg)};
    sl_jwt_result_t r;
    assert_int_equal(sl_jwt_verify(k, &p, sl_str_from_cstr(token), RFC7515_EXP - 60, &r), 0);
    assert_int_equal(r.verdict, SL_JWT_OK);
    assert_int_equal(r.exp, RFC7515_EXP);
    assert_int_equal(r.alg, alg);
    assert_true(json_is_true(json_object_get(r.claims, "http://example.com/is_root")));
    sl_str_t iss;
    assert_int_equal(sl_jwt_claim_str(r.claims, "iss", &iss), 0);
    assert_true(sl_str_eq(iss, SL_STR_LIT("joe")));
    sl_jwt_result_dispose(&r);
    /* One second too late, no leeway: expired, and that is the auth_expired cause. */
    assert_int_equal(verdict(k, &p, token, RFC7515_EXP), SL_JWT_EXPIRED);
    assert_int_equal(sl_jwt_verdict_cause(SL_JWT_EXPIRED), SL_CAUSE_AUTH_EXPIRED);
    p.leeway_s = 30;
    assert_int_equal(verdict(k, &p, token, RFC7515_EXP + 29), SL_JWT_OK);
    /* The same token is refused when its algorithm is not the issuer's. */
    p.allowed_algs = SL_JWT_ALGS_ALL & ~SL_JWT_ALG_BIT(alg);
    assert_int_equal(verdict(k, &p, token, RFC7515_EXP - 60), SL_JWT_ALG_NOT_ALLOWED);
    /* One flipped signature bit. */
    char *bad = strdup(token);
    char *last = bad + strlen(bad) - 3;
    *last = *last == 'A' ? 'B' : 'A';
    p.allowed_algs = SL_JWT_ALG_BIT(alg);
    assert_int_equal(verdict(k, &p, bad, RFC7515_EXP - 60), SL_JWT_BAD_SIGNATURE);
    free(bad);
    sl_jwks_unref(k);
}

static void test_rfc7515_a1_hs256(void **state)
{
    (void)state;
    check_rfc7515(rfc7515_a1_jwks, rfc7515_a1_token, SL_JWT_HS256);
}

static void test_rfc7515_a2_rs256(void **state)
{
    (void)state;
    check_rfc7515(rfc7515_a2_jwks, rfc7515_a2_token, SL_JWT_RS256);
}

static void test_rfc7515_a3_es256(void **state)
{
    (void)state;
    check_rfc7515(rfc7515_a3_jwks, rfc7515_a3_token, SL_JWT_ES256);
}

static void test_rfc8037_a4_eddsa(void **state)
{
    (void)state;
    sl_jwks_t *k = jwks(rfc8037_jwks);
    enum sl_jwt_alg alg = SL_JWT_ALG_UNSET;
    enum sl_jwt_verdict v = SL_JWT_OK;
    assert_int_equal(sl_jws_verify(k, SL_JWT_ALG_BIT(SL_JWT_EDDSA), sl_str_from_cstr(rfc8037_token), &alg, &v), 0);
    assert_int_equal(alg, SL_JWT_EDDSA);
    /* The payload is "Example of Ed25519 signing", not claims: the signature passes, the JWT fails. */
    assert_int_equal(verdict(k, &open_policy, rfc8037_token, NOW), SL_JWT_MALFORMED);
    char *bad = strdup(rfc8037_token);
    bad[strlen(bad) - 5] ^= 1;
    assert_int_equal(sl_jws_verify(k, SL_JWT_ALGS_ALL, sl_str_from_cstr(bad), &alg, &v), SL_EINVALID);
    assert_int_equal(v, SL_JWT_BAD_SIGNATURE);
    free(bad);
    sl_jwks_unref(k);
}

/* ---------------------------------------------------------------------------------------------
 * Every algorithm, sign then verify
 */

static const char claims_ok[] = "{\"iss\":\"https://idp\",\"aud\":\"api\",\"sub\":\"alice\",\"exp\":1800000600,"
                                "\"iat\":1800000000,\"groups\":[\"a\",\"b\"]}";

static const sl_jwt_policy_t idp_policy = {
    .issuer = "https://idp",
    .audiences = (const char *const[]){"other", "api"},
    .naudiences = 2,
    .allowed_algs = SL_JWT_ALGS_ALL,
    .leeway_s = 30,
};

static void test_every_algorithm(void **state)
{
    (void)state;
    static const char *const rsa_algs[] = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"};
    char *doc = jwk_json(rsa_key, "r1", "");
    sl_jwks_t *k = jwks(doc);
    free(doc);
    for (size_t i = 0; i < 6; i++) {
        char hdr[64];
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"kid\":\"r1\"}", rsa_algs[i]);
        char *t = sign_pkey(hdr, claims_ok, rsa_key, rsa_algs[i]);
        assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_OK);
        /* An RSA key without alg verifies RS and PS only when the issuer allows the one used. */
        sl_jwt_policy_t p = idp_policy;
        p.allowed_algs = SL_JWT_ALGS_ALL & ~SL_JWT_ALGS_PS & ~SL_JWT_ALGS_RS;
        assert_int_equal(verdict(k, &p, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
        free(t);
    }
    sl_jwks_unref(k);

    /* Pinned by `alg`: PS256 with an RS256 key is refused before any signature work. */
    doc = jwk_json(rsa_key, "r1", ",\"alg\":\"RS256\",\"use\":\"sig\"");
    k = jwks(doc);
    free(doc);
    char *t = sign_pkey("{\"alg\":\"PS256\",\"kid\":\"r1\"}", claims_ok, rsa_key, "PS256");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
    free(t);
    sl_jwks_unref(k);

    struct {
        EVP_PKEY *key;
        const char *alg, *hdr;
    } asym[] = {
        {ec384_key, "ES384", "{\"alg\":\"ES384\",\"kid\":\"k\",\"typ\":\"JWT\"}"},
        {ec256_key, "ES256", "{\"alg\":\"ES256\",\"kid\":\"k\",\"typ\":\"at+JWT\"}"},
        {ed_key, "EdDSA", "{\"alg\":\"EdDSA\",\"kid\":\"k\",\"typ\":\"application/at+jwt\"}"},
    };
    for (size_t i = 0; i < 3; i++) {
        doc = jwk_json(asym[i].key, "k", "");
        k = jwks(doc);
        free(doc);
        t = sign_pkey(asym[i].hdr, claims_ok, asym[i].key, asym[i].alg);
        assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_OK);
        free(t);
        /* The algorithm is derived from the curve: ES256 on a P-384 key is not accepted. */
        const char *other = i == 0 ? "ES256" : "ES384";
        char hdr[64];
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"kid\":\"k\"}", other);
        t = sign_pkey(hdr, claims_ok, asym[i].key, i == 2 ? "EdDSA" : asym[i].alg);
        assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
        free(t);
        sl_jwks_unref(k);
    }

    static const unsigned char secret[64] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    static const char *const hs[] = {"HS256", "HS384", "HS512"};
    assert_int_equal(sl_jwks_from_secret(secret, sizeof(secret), NULL, NULL, &k), 0);
    for (size_t i = 0; i < 3; i++) {
        char hdr[32];
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\"}", hs[i]);
        t = sign_hmac(hdr, claims_ok, secret, sizeof(secret), hs[i]);
        assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_OK);
        free(t);
    }
    sl_jwks_unref(k);
    /* RFC 7518 §3.2: a 32-byte secret is too short for HS384/HS512. */
    assert_int_equal(sl_jwks_from_secret(secret, 32, "HS512", NULL, &k), SL_EINVALID);
    assert_int_equal(sl_jwks_from_secret(secret, 31, NULL, NULL, &k), SL_EINVALID);
    assert_int_equal(sl_jwks_from_secret(secret, 32, "RS256", NULL, &k), SL_EINVALID);
    assert_int_equal(sl_jwks_from_secret(secret, 32, NULL, "h1", &k), 0);
    t = sign_hmac("{\"alg\":\"HS384\",\"kid\":\"h1\"}", claims_ok, secret, 32, "HS384");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
    free(t);
    sl_jwks_unref(k);
}

static void test_pem_keys(void **state)
{
    (void)state;
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, rsa_key);
    char *pem = NULL;
    long n = BIO_get_mem_data(bio, &pem);
    sl_jwks_t *k = NULL;
    char why[128];
    assert_int_equal(sl_jwks_from_pem(pem, (size_t)n, "ES256", NULL, &k, why, sizeof(why)), SL_EINVALID);
    assert_true(strlen(why) > 0);
    assert_int_equal(sl_jwks_from_pem(pem, (size_t)n, "RS256", "pem1", &k, why, sizeof(why)), 0);
    assert_int_equal(sl_jwks_count(k), 1);
    assert_true(sl_jwks_has_kid(k, SL_STR_LIT("pem1")));
    char *t = sign_pkey("{\"alg\":\"RS256\"}", claims_ok, rsa_key, "RS256");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_OK);
    free(t);

    /* HS/RS confusion: an HMAC keyed with the RSA public key's own PEM bytes, with and without
     * the kid. A verifier that took `alg` from the token would accept this. */
    t = sign_hmac("{\"alg\":\"HS256\"}", claims_ok, pem, (size_t)n, "HS256");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
    free(t);
    t = sign_hmac("{\"alg\":\"HS256\",\"kid\":\"pem1\"}", claims_ok, pem, (size_t)n, "HS256");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
    free(t);
    unsigned char *der = NULL;
    int dlen = i2d_PUBKEY(rsa_key, &der);
    t = sign_hmac("{\"alg\":\"HS256\",\"kid\":\"pem1\"}", claims_ok, der, (size_t)dlen, "HS256");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_ALG_NOT_ALLOWED);
    free(t);
    OPENSSL_free(der);
    sl_jwks_unref(k);

    assert_int_equal(sl_jwks_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 58, NULL, NULL,
                                      &k, why, sizeof(why)),
                     SL_EINVALID);
    BIO_free(bio);

    bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, ec384_key);
    n = BIO_get_mem_data(bio, &pem);
    assert_int_equal(sl_jwks_from_pem(pem, (size_t)n, NULL, NULL, &k, why, sizeof(why)), 0);
    t = sign_pkey("{\"alg\":\"ES384\"}", claims_ok, ec384_key, "ES384");
    assert_int_equal(verdict(k, &idp_policy, t, NOW), SL_JWT_OK);
    free(t);
    sl_jwks_unref(k);
    BIO_free(bio);
}

/* ---------------------------------------------------------------------------------------------
 * Attacks and malformed tokens
 */

static char *es(const char *hdr, const char *claims)
{
    return sign_pkey(hdr, claims, ec256_key, "ES256");
}

static sl_jwks_t *ec_set(void)
{
    char *doc = jwk_json(ec256_key, "k1", ",\"alg\":\"ES256\"");
    sl_jwks_t *k = jwks(doc);
    free(doc);
    return k;
}

static void expect(sl_jwks_t *k, const sl_jwt_policy_t *p, char *token, enum sl_jwt_verdict want)
{
    enum sl_jwt_verdict got = verdict(k, p, token, NOW);
    if (got != want)
        fprintf(stderr, "token %.80s: got %s, want %s\n", token, sl_jwt_verdict_detail(got),
                sl_jwt_verdict_detail(want));
    assert_int_equal(got, want);
    free(token);
}

static void test_alg_none(void **state)
{
    (void)state;
    sl_jwks_t *k = ec_set();
    char *in = signing_input("{\"alg\":\"none\"}", claims_ok);
    char *t = malloc(strlen(in) + 2);
    sprintf(t, "%s.", in);
    expect(k, &idp_policy, t, SL_JWT_ALG_NOT_ALLOWED);
    /* With a signature made by the real key over the same input. */
    char *real = es("{\"alg\":\"none\"}", claims_ok);
    expect(k, &idp_policy, real, SL_JWT_ALG_NOT_ALLOWED);
    expect(k, &idp_policy, es("{\"alg\":\"None\",\"kid\":\"k1\"}", claims_ok), SL_JWT_ALG_NOT_ALLOWED);
    free(in);
    sl_jwks_unref(k);
}

static void test_kid_and_tampering(void **state)
{
    (void)state;
    sl_jwks_t *k = ec_set();
    expect(k, &idp_policy, es("{\"alg\":\"ES256\",\"kid\":\"k1\"}", claims_ok), SL_JWT_OK);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", claims_ok), SL_JWT_OK);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\",\"kid\":\"k2\"}", claims_ok), SL_JWT_UNKNOWN_KID);
    assert_false(sl_jwks_has_kid(k, SL_STR_LIT("k2")));
    assert_true(sl_jwks_has_kid(k, SL_STR_LIT("k1")));
    expect(k, &idp_policy, es("{\"alg\":\"ES256\",\"kid\":5}", claims_ok), SL_JWT_MALFORMED);

    char *good = es("{\"alg\":\"ES256\",\"kid\":\"k1\"}", claims_ok);
    char *dot2 = strrchr(good, '.');
    /* stripped signature: "h.p." */
    char *t = strndup(good, (size_t)(dot2 - good) + 1);
    expect(k, &idp_policy, t, SL_JWT_BAD_SIGNATURE);
    /* two segments: "h.p" */
    expect(k, &idp_policy, strndup(good, (size_t)(dot2 - good)), SL_JWT_MALFORMED);
    /* four segments */
    t = malloc(strlen(good) + 3);
    sprintf(t, "%s.x", good);
    expect(k, &idp_policy, t, SL_JWT_MALFORMED);
    /* duplicate dots */
    t = malloc(strlen(good) + 2);
    sprintf(t, "%.*s.%s", (int)(dot2 - good), good, dot2);
    expect(k, &idp_policy, t, SL_JWT_MALFORMED);

    /* modified payload: same header and signature, claims with another sub */
    char *other = es("{\"alg\":\"ES256\",\"kid\":\"k1\"}",
                     "{\"iss\":\"https://idp\",\"aud\":\"api\",\"sub\":\"mallory\",\"exp\":1800000600}");
    char *o1 = strchr(other, '.'), *o2 = strrchr(other, '.');
    char *g1 = strchr(good, '.');
    t = malloc(strlen(good) + strlen(other) + 1);
    sprintf(t, "%.*s%.*s%s", (int)(g1 - good), good, (int)(o2 - o1), o1, dot2);
    expect(k, &idp_policy, t, SL_JWT_BAD_SIGNATURE);
    /* modified header: another header with the original payload and signature */
    char *h2 = b64s("{\"alg\":\"ES256\",\"kid\":\"k1\",\"typ\":\"JWT\"}");
    t = malloc(strlen(good) + strlen(h2) + 1);
    sprintf(t, "%s%s", h2, g1);
    expect(k, &idp_policy, t, SL_JWT_BAD_SIGNATURE);
    /* a signature of the wrong length */
    t = malloc(strlen(good) + 3);
    sprintf(t, "%sAA", good);
    expect(k, &idp_policy, t, SL_JWT_BAD_SIGNATURE);
    free(h2);
    free(other);
    free(good);
    sl_jwks_unref(k);
}

static void test_time_and_identity_claims(void **state)
{
    (void)state;
    sl_jwks_t *k = ec_set();
    const char *h = "{\"alg\":\"ES256\",\"kid\":\"k1\"}";
    sl_jwt_policy_t p = idp_policy;
    /* exp is NOW-31, leeway 30 */
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1799999969}"), SL_JWT_EXPIRED);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1799999971}"), SL_JWT_OK);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"nbf\":1800000031}"),
           SL_JWT_NOT_YET_VALID);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"nbf\":1800000030}"), SL_JWT_OK);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"iat\":1800000031}"),
           SL_JWT_ISSUED_IN_FUTURE);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600.5,\"iat\":1.8e9}"), SL_JWT_OK);
    /* exp is required unless the policy says otherwise */
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\"}"), SL_JWT_MISSING_CLAIM);
    p.exp_optional = true;
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\"}"), SL_JWT_OK);
    p.exp_optional = false;
    /* numbers must be numbers, non-negative, and fit */
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":\"1800000600\"}"), SL_JWT_MALFORMED);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":-1}"), SL_JWT_MALFORMED);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1e400}"), SL_JWT_MALFORMED);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":99999999999999999999999}"), SL_JWT_MALFORMED);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1e300}"), SL_JWT_OK);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":9223372036854775807,\"nbf\":null}"),
           SL_JWT_MALFORMED);
    /* duplicate claims are ambiguous: refused */
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"iss\":\"https://evil\",\"aud\":\"api\",\"exp\":1800000600}"),
           SL_JWT_MALFORMED);
    /* issuer */
    expect(k, &p, es(h, "{\"iss\":\"https://evil\",\"aud\":\"api\",\"exp\":1800000600}"), SL_JWT_BAD_ISSUER);
    expect(k, &p, es(h, "{\"iss\":\"https://idp/\",\"aud\":\"api\",\"exp\":1800000600}"), SL_JWT_BAD_ISSUER);
    expect(k, &p, es(h, "{\"iss\":[\"https://idp\"],\"aud\":\"api\",\"exp\":1800000600}"), SL_JWT_BAD_ISSUER);
    expect(k, &p, es(h, "{\"aud\":\"api\",\"exp\":1800000600}"), SL_JWT_MISSING_CLAIM);
    /* audience: string or array */
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"web\",\"exp\":1800000600}"), SL_JWT_BAD_AUDIENCE);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":[\"web\",\"api\"],\"exp\":1800000600}"), SL_JWT_OK);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":[\"web\",\"mobile\"],\"exp\":1800000600}"),
           SL_JWT_BAD_AUDIENCE);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":[],\"exp\":1800000600}"), SL_JWT_BAD_AUDIENCE);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":[\"api\",7],\"exp\":1800000600}"), SL_JWT_MALFORMED);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"exp\":1800000600}"), SL_JWT_MISSING_CLAIM);
    /* required claims */
    p.required_claims = (const char *const[]){"sub", "scope"};
    p.nrequired = 2;
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"sub\":\"a\"}"),
           SL_JWT_MISSING_CLAIM);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"sub\":\"a\",\"scope\":null}"),
           SL_JWT_MISSING_CLAIM);
    expect(k, &p, es(h, "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"sub\":\"a\",\"scope\":\"x\"}"),
           SL_JWT_OK);
    sl_jwks_unref(k);
}

static void test_malformed(void **state)
{
    (void)state;
    sl_jwks_t *k = ec_set();
    char *good = es("{\"alg\":\"ES256\",\"kid\":\"k1\"}", claims_ok);
    char *t;
    /* padding in the header segment */
    t = malloc(strlen(good) + 3);
    char *d1 = strchr(good, '.');
    sprintf(t, "%.*s==%s", (int)(d1 - good), good, d1);
    expect(k, &idp_policy, t, SL_JWT_MALFORMED);
    /* illegal characters: standard base64 alphabet, whitespace */
    const char *bad_chars[] = {"+", "/", " ", "\n", "%"};
    for (size_t i = 0; i < 5; i++) {
        t = strdup(good);
        t[3] = bad_chars[i][0];
        expect(k, &idp_policy, t, SL_JWT_MALFORMED);
    }
    /* non-canonical trailing bits: "eyJ" + "9" ends a 2-char group with set low bits */
    expect(k, &idp_policy, strdup("e9.e30.AA"), SL_JWT_MALFORMED);
    /* an illegal character in the signature */
    t = strdup(good);
    t[strlen(t) - 2] = '=';
    expect(k, &idp_policy, t, SL_JWT_MALFORMED);
    free(good);

    /* header: not JSON, not an object, no alg, alg not a string, crit, typ */
    const char *bad_headers[] = {
        "{\"alg\":\"ES256\"",
        "[\"ES256\"]",
        "\"ES256\"",
        "{}",
        "{\"alg\":256}",
        "{\"alg\":\"ES256\",\"crit\":[\"exp\"]}",
        "{\"alg\":\"ES256\",\"crit\":\"b64\"}",
        "{\"alg\":\"ES256\",\"typ\":\"JOSE\"}",
        "{\"alg\":\"ES256\",\"typ\":7}",
        "{\"alg\":\"ES256\",\"alg\":\"ES256\"}",
    };
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++)
        expect(k, &idp_policy, es(bad_headers[i], claims_ok), SL_JWT_MALFORMED);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\",\"crit\":[]}", claims_ok), SL_JWT_OK);
    expect(k, &idp_policy, es("{\"alg\":\"HS257\"}", claims_ok), SL_JWT_ALG_NOT_ALLOWED);
    /* payload: signed but not a JSON object */
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", "[1,2]"), SL_JWT_MALFORMED);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", "{\"exp\":"), SL_JWT_MALFORMED);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", ""), SL_JWT_MALFORMED);
    expect(k, &idp_policy, strdup(""), SL_JWT_MALFORMED);
    expect(k, &idp_policy, strdup(".."), SL_JWT_MALFORMED);
    expect(k, &idp_policy, strdup("..."), SL_JWT_MALFORMED);

    /* 100 KB: refused by size before anything is decoded; 16 KiB + 1 too */
    t = malloc(100 * 1024 + 1);
    memset(t, 'A', 100 * 1024);
    t[100] = '.';
    t[200] = '.';
    t[100 * 1024] = '\0';
    expect(k, &idp_policy, t, SL_JWT_MALFORMED);
    char *big = malloc(SL_JWT_MAX_TOKEN);
    memset(big, 'a', SL_JWT_MAX_TOKEN - 1);
    big[SL_JWT_MAX_TOKEN - 1] = '\0';
    char claims[SL_JWT_MAX_TOKEN + 64];
    snprintf(claims, sizeof(claims),
             "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"pad\":\"%.11000s\"}", big);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", claims), SL_JWT_OK); /* ~14.9 KB: under the cap */
    snprintf(claims, sizeof(claims),
             "{\"iss\":\"https://idp\",\"aud\":\"api\",\"exp\":1800000600,\"pad\":\"%.12500s\"}", big);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", claims), SL_JWT_MALFORMED); /* ~16.8 KB */
    free(big);
    sl_jwks_unref(k);
}

/* ---------------------------------------------------------------------------------------------
 * JWKS parsing
 */

static void test_jwks_skips_and_errors(void **state)
{
    (void)state;
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    char *small_doc = jwk_json(small, "small", "");
    char *ec_doc = jwk_json(ec256_key, "ec", "");
    /* splice the single keys out of their {"keys":[...]} wrappers */
    small_doc[strlen(small_doc) - 2] = '\0';
    ec_doc[strlen(ec_doc) - 2] = '\0';
    char *doc = malloc(strlen(small_doc) + strlen(ec_doc) + 2048);
    sprintf(
        doc,
        "{\"keys\":[%s,%s,"
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"enc\",\"use\":\"enc\",\"x\":\"AA\",\"y\":\"AA\"},"
        "{\"kty\":\"EC\",\"crv\":\"P-521\",\"kid\":\"p521\",\"x\":\"AA\",\"y\":\"AA\"},"
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"off\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
        "\"y\":\"y_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"pad\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU=\","
        "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"es384\",\"alg\":\"ES384\","
        "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
        "{\"kty\":\"oct\",\"kid\":\"short\",\"k\":\"c2hvcnQ\"},"
        "{\"kty\":\"oct\",\"kid\":\"rsa-alg\",\"alg\":\"RS256\",\"k\":\"%s\"},"
        "{\"kty\":\"RSA\",\"kid\":\"none\",\"alg\":\"none\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
        "{\"kty\":\"XYZ\",\"kid\":\"xyz\"},"
        "{\"kid\":\"notype\"},"
        "\"string\","
        "{\"kty\":\"OKP\",\"crv\":\"X25519\",\"kid\":\"x25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}"
        "]}",
        small_doc + strlen("{\"keys\":["), ec_doc + strlen("{\"keys\":["),
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow");
    sl_jwks_t *k = NULL;
    char why[2048];
    assert_int_equal(sl_jwks_parse(doc, strlen(doc), &k, why, sizeof(why)), 0);
    assert_int_equal(sl_jwks_count(k), 1);
    assert_true(sl_jwks_has_kid(k, SL_STR_LIT("ec")));
    const char *reasons[] = {"\"small\"): RSA key below 2048 bits",
                             "\"enc\"): use is not sig",
                             "\"p521\"): unsupported or missing crv",
                             "\"off\"): the point is not on the curve",
                             "\"pad\"): bad base64url",
                             "\"es384\"): alg does not fit the curve",
                             "\"short\"): HMAC key shorter",
                             "\"rsa-alg\"): alg does not fit an oct key",
                             "\"none\"): unsupported alg",
                             "\"xyz\"): unsupported kty",
                             "\"notype\"): missing kty",
                             "key 12 (kid \"\"): not an object",
                             "\"x25519\"): unsupported or missing crv"};
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        if (!strstr(why, reasons[i]))
            fprintf(stderr, "missing \"%s\" in:\n%s\n", reasons[i], why);
        assert_non_null(strstr(why, reasons[i]));
    }
    uint64_t g1 = sl_jwks_generation(k);
    sl_jwks_unref(k);

    /* all keys unusable, not JSON, no keys array, too big */
    const char *bad[] = {
        "{\"keys\":[{\"kty\":\"XYZ\"}]}", "{\"keys\":[]}", "{\"keys\":", "{\"k\":[]}", "[]", "{\"keys\":{}}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        k = NULL;
        assert_int_equal(sl_jwks_parse(bad[i], strlen(bad[i]), &k, why, sizeof(why)), SL_EINVALID);
        assert_null(k);
        assert_true(strlen(why) > 0);
    }
    assert_int_equal(sl_jwks_parse(doc, SL_JWKS_MAX_BYTES + 1, &k, NULL, 0), SL_EINVALID);
    /* a set built later has a later generation */
    k = jwks(rfc7515_a3_jwks);
    assert_true(sl_jwks_generation(k) > g1);
    /* refcount: the set survives one unref of two */
    sl_jwks_t *k2 = sl_jwks_ref(k);
    sl_jwks_unref(k);
    assert_int_equal(sl_jwks_count(k2), 1);
    sl_jwks_unref(k2);
    sl_jwks_unref(NULL);
    /* a small why buffer is truncated, never overrun */
    char tiny[8];
    memset(tiny, 'x', sizeof(tiny));
    assert_int_equal(sl_jwks_parse(bad[0], strlen(bad[0]), &k, tiny, sizeof(tiny)), SL_EINVALID);
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    free(doc);
    free(small_doc);
    free(ec_doc);
    EVP_PKEY_free(small);
}

static void test_several_keys_without_kid(void **state)
{
    (void)state;
    /* An ES256 token without kid tries the ES256 keys in order: the second one verifies. */
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char *a = jwk_json(other, "a", ""), *b = jwk_json(ec256_key, "b", "");
    a[strlen(a) - 2] = '\0';
    char *doc = malloc(strlen(a) + strlen(b) + 8);
    sprintf(doc, "%s,%s", a, b + strlen("{\"keys\":["));
    sl_jwks_t *k = jwks(doc);
    assert_int_equal(sl_jwks_count(k), 2);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\"}", claims_ok), SL_JWT_OK);
    expect(k, &idp_policy, es("{\"alg\":\"ES256\",\"kid\":\"a\"}", claims_ok), SL_JWT_BAD_SIGNATURE);
    sl_jwks_unref(k);
    free(a);
    free(b);
    free(doc);
    EVP_PKEY_free(other);
}

static void test_claim_getters(void **state)
{
    (void)state;
    json_t *c = json_loads(
        "{\"sub\":\"alice\",\"groups\":[\"a\",\"b\"],\"role\":\"admin\",\"n\":1,\"mixed\":[\"a\",1]}", 0, NULL);
    sl_str_t s, arr[4];
    size_t n = 0;
    assert_int_equal(sl_jwt_claim_str(c, "sub", &s), 0);
    assert_true(sl_str_eq(s, SL_STR_LIT("alice")));
    assert_int_equal(sl_jwt_claim_str(c, "nope", &s), SL_ENOTFOUND);
    assert_int_equal(sl_jwt_claim_str(c, "n", &s), SL_EINVALID);
    assert_int_equal(sl_jwt_claim_strs(c, "groups", arr, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_true(sl_str_eq(arr[1], SL_STR_LIT("b")));
    assert_int_equal(sl_jwt_claim_strs(c, "role", arr, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(sl_jwt_claim_strs(c, "groups", arr, 1, &n), SL_ETOOBIG);
    assert_int_equal(sl_jwt_claim_strs(c, "mixed", arr, 4, &n), SL_EINVALID);
    assert_int_equal(sl_jwt_claim_strs(c, "n", arr, 4, &n), SL_EINVALID);
    assert_int_equal(sl_jwt_claim_strs(c, "nope", arr, 4, &n), SL_ENOTFOUND);
    json_decref(c);
    assert_string_equal(sl_jwt_alg_name(SL_JWT_EDDSA), "EdDSA");
    assert_null(sl_jwt_alg_name(SL_JWT_ALG_UNSET));
    enum sl_jwt_alg a;
    assert_int_equal(sl_jwt_alg_parse(SL_STR_LIT("none"), &a), SL_EINVALID);
    assert_int_equal(sl_jwt_alg_parse(SL_STR_LIT("rs256"), &a), SL_EINVALID);
    for (int v = SL_JWT_MALFORMED; v < SL_JWT_VERDICT__COUNT; v++)
        assert_int_equal(sl_jwt_verdict_cause(v), v == SL_JWT_EXPIRED ? SL_CAUSE_AUTH_EXPIRED : SL_CAUSE_AUTH_INVALID);
    assert_string_equal(sl_jwt_verdict_detail(SL_JWT_UNKNOWN_KID), "jwt_unknown_kid");
}

/* ---------------------------------------------------------------------------------------------
 * Cache
 */

static sl_str_t tok(int i, char *buf)
{
    snprintf(buf, 32, "token-%d", i);
    return sl_str_from_cstr(buf);
}

static void test_cache(void **state)
{
    (void)state;
    sl_jwt_cache_t *c = NULL;
    assert_int_equal(sl_jwt_cache_create(0, 16, 60, &c), SL_EINVALID);
    assert_int_equal(sl_jwt_cache_create(1, 16, 3600, &c), 0);
    assert_int_equal(sl_jwt_cache_capacity(c), SL_JWT_CACHE_WAYS); /* one set */
    char b[32];
    const void *v;
    size_t len;
    /* miss, then hit with the stored copy */
    assert_int_equal(sl_jwt_cache_get(c, tok(1, b), 7, 100, &v, &len), SL_ENOTFOUND);
    char val[16] = "alice";
    assert_int_equal(sl_jwt_cache_put(c, tok(1, b), 7, 1000, 100, val, 6), 0);
    memset(val, 0, sizeof(val));
    assert_int_equal(sl_jwt_cache_get(c, tok(1, b), 7, 101, &v, &len), 0);
    assert_int_equal(len, 6);
    assert_string_equal(v, "alice");
    assert_int_equal(sl_jwt_cache_count(c), 1);
    /* too big, already expired */
    assert_int_equal(sl_jwt_cache_put(c, tok(2, b), 7, 1000, 100, val, 17), SL_ETOOBIG);
    assert_int_equal(sl_jwt_cache_put(c, tok(2, b), 7, 100, 100, val, 1), SL_EINVALID);
    assert_int_equal(sl_jwt_cache_get(c, tok(2, b), 7, 100, &v, &len), SL_ENOTFOUND);
    /* expiry: the token's exp (1000) … */
    assert_int_equal(sl_jwt_cache_get(c, tok(1, b), 7, 999, &v, &len), 0);
    assert_int_equal(sl_jwt_cache_get(c, tok(1, b), 7, 1000, &v, &len), SL_ENOTFOUND);
    assert_int_equal(sl_jwt_cache_count(c), 0);
    /* … or now + max_ttl (3600), whichever is first; exp 0 means no token expiry */
    assert_int_equal(sl_jwt_cache_put(c, tok(3, b), 7, 0, 100, "x", 1), 0);
    assert_int_equal(sl_jwt_cache_put(c, tok(6, b), 7, 100000, 100, "z", 1), 0);
    assert_int_equal(sl_jwt_cache_get(c, tok(3, b), 7, 3699, &v, &len), 0);
    assert_int_equal(sl_jwt_cache_get(c, tok(6, b), 7, 3699, &v, &len), 0);
    assert_int_equal(sl_jwt_cache_get(c, tok(3, b), 7, 3700, &v, &len), SL_ENOTFOUND);
    assert_int_equal(sl_jwt_cache_get(c, tok(6, b), 7, 3700, &v, &len), SL_ENOTFOUND);
    /* generation change: a new key set invalidates the entry */
    assert_int_equal(sl_jwt_cache_put(c, tok(4, b), 7, 1000, 100, "y", 1), 0);
    assert_int_equal(sl_jwt_cache_get(c, tok(4, b), 8, 101, &v, &len), SL_ENOTFOUND);
    assert_int_equal(sl_jwt_cache_get(c, tok(4, b), 7, 101, &v, &len), SL_ENOTFOUND); /* freed on sight */
    /* replace in place */
    assert_int_equal(sl_jwt_cache_put(c, tok(5, b), 7, 1000, 100, "a", 1), 0);
    assert_int_equal(sl_jwt_cache_put(c, tok(5, b), 7, 1000, 100, "bb", 2), 0);
    assert_int_equal(sl_jwt_cache_count(c), 1);
    assert_int_equal(sl_jwt_cache_get(c, tok(5, b), 7, 101, &v, &len), 0);
    assert_int_equal(len, 2);
    sl_jwt_cache_destroy(c);

    /* eviction: one set of 8; fill it, touch token 0, add a 9th: the LRU (token 1) goes */
    assert_int_equal(sl_jwt_cache_create(8, 8, 3600, &c), 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(sl_jwt_cache_put(c, tok(i, b), 1, 0, 100, &i, sizeof(i)), 0);
    assert_int_equal(sl_jwt_cache_count(c), 8);
    assert_int_equal(sl_jwt_cache_get(c, tok(0, b), 1, 101, &v, &len), 0);
    int nine = 9;
    assert_int_equal(sl_jwt_cache_put(c, tok(9, b), 1, 0, 102, &nine, sizeof(nine)), 0);
    assert_int_equal(sl_jwt_cache_count(c), 8);
    assert_int_equal(sl_jwt_cache_get(c, tok(1, b), 1, 103, &v, &len), SL_ENOTFOUND);
    assert_int_equal(sl_jwt_cache_get(c, tok(0, b), 1, 103, &v, &len), 0);
    assert_int_equal(sl_jwt_cache_get(c, tok(9, b), 1, 103, &v, &len), 0);
    assert_int_equal(*(const int *)v, 9);
    /* a stale entry (other generation) is taken before the LRU one */
    assert_int_equal(sl_jwt_cache_put(c, tok(20, b), 2, 0, 104, "s", 1), 0);
    for (int i = 2; i < 8; i++)
        assert_int_equal(sl_jwt_cache_get(c, tok(i, b), 1, 105, &v, &len), 0);
    sl_jwt_cache_destroy(c);
    sl_jwt_cache_destroy(NULL);

    /* a larger cache keeps many distinct tokens */
    assert_int_equal(sl_jwt_cache_create(4096, 8, 3600, &c), 0);
    for (int i = 0; i < 2048; i++)
        assert_int_equal(sl_jwt_cache_put(c, tok(i, b), 1, 0, 100, &i, sizeof(i)), 0);
    int hits = 0;
    for (int i = 0; i < 2048; i++)
        hits += sl_jwt_cache_get(c, tok(i, b), 1, 101, &v, &len) == 0 && *(const int *)v == i;
    assert_true(hits > 2000); /* only full sets evict */
    sl_jwt_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7515_a1_hs256),
        cmocka_unit_test(test_rfc7515_a2_rs256),
        cmocka_unit_test(test_rfc7515_a3_es256),
        cmocka_unit_test(test_rfc8037_a4_eddsa),
        cmocka_unit_test(test_every_algorithm),
        cmocka_unit_test(test_pem_keys),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_kid_and_tampering),
        cmocka_unit_test(test_time_and_identity_claims),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_jwks_skips_and_errors),
        cmocka_unit_test(test_several_keys_without_kid),
        cmocka_unit_test(test_claim_getters),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
