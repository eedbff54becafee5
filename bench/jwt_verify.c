/*
 * Cold JWT verification cost per algorithm (sl_jwt_verify: decode, header, signature, claims)
 * and the cost of a verified-token cache hit (SHA-256 of the token + one set lookup).
 * Prints the median and p90 in microseconds over ROUNDS runs each. Not a test: no assertions.
 * Build on demand: cmake --build <dir> --target jwt_verify; run <dir>/bench/jwt_verify [rounds].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "filters/jwt.h"

static char *b64url(const unsigned char *in, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(len / 3 * 4 + 5), *p = out;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *p++ = tab[v >> 18], *p++ = tab[(v >> 12) & 63], *p++ = tab[(v >> 6) & 63], *p++ = tab[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        *p++ = tab[v >> 18], *p++ = tab[(v >> 12) & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        *p++ = tab[v >> 18], *p++ = tab[(v >> 12) & 63], *p++ = tab[(v >> 6) & 63];
    }
    *p = '\0';
    return out;
}

static const char claims[] = "{\"iss\":\"https://idp.example.com/realms/main\",\"aud\":\"api\",\"sub\":\"user-1234\","
                             "\"exp\":1800003600,\"iat\":1800000000,\"groups\":[\"partners\",\"staff\"],"
                             "\"scope\":\"read write\"}";

static char *make_token(const char *alg, EVP_PKEY *key, const unsigned char *secret, size_t slen)
{
    char hdr[64];
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"k1\"}", alg);
    char *h = b64url((const unsigned char *)hdr, strlen(hdr)),
         *p = b64url((const unsigned char *)claims, strlen(claims));
    char *in = malloc(strlen(h) + strlen(p) + 2);
    sprintf(in, "%s.%s", h, p);
    free(h);
    free(p);
    const EVP_MD *md = strcmp(alg, "EdDSA") == 0 ? NULL : EVP_sha256();
    unsigned char sig[512];
    size_t siglen = sizeof(sig);
    if (secret) {
        unsigned int n = 0;
        HMAC(md, secret, (int)slen, (unsigned char *)in, strlen(in), sig, &n);
        siglen = n;
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        EVP_DigestSignInit(ctx, &pctx, md, NULL, key);
        if (alg[0] == 'P') {
            EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
        }
        EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)in, strlen(in));
        EVP_MD_CTX_free(ctx);
        if (alg[0] == 'E' && alg[1] == 'S') {
            const unsigned char *q = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)siglen);
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
            ECDSA_SIG_free(es);
            siglen = 64;
        }
    }
    char *s = b64url(sig, siglen);
    char *tok = malloc(strlen(in) + strlen(s) + 2);
    sprintf(tok, "%s.%s", in, s);
    free(in);
    free(s);
    return tok;
}

static sl_jwks_t *set_of(EVP_PKEY *key, const char *alg)
{
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, key);
    char *pem = NULL;
    long n = BIO_get_mem_data(bio, &pem);
    sl_jwks_t *k = NULL;
    if (sl_jwks_from_pem(pem, (size_t)n, alg, "k1", &k, NULL, 0) != 0)
        abort();
    BIO_free(bio);
    return k;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *name, double *t, int rounds)
{
    qsort(t, (size_t)rounds, sizeof(double), cmp);
    printf("%-22s median %8.2f us   p90 %8.2f us\n", name, t[rounds / 2], t[rounds * 9 / 10]);
}

static const sl_jwt_policy_t policy = {
    .issuer = "https://idp.example.com/realms/main",
    .audiences = (const char *const[]){"api"},
    .naudiences = 1,
    .allowed_algs = SL_JWT_ALGS_ALL,
    .leeway_s = 30,
};

static void bench_verify(const char *name, sl_jwks_t *k, const char *tok, int rounds)
{
    double *t = malloc(sizeof(double) * (size_t)rounds);
    for (int i = 0; i < rounds; i++) {
        sl_jwt_result_t r;
        double a = now_us();
        int rc = sl_jwt_verify(k, &policy, sl_str_from_cstr(tok), 1800000100, &r);
        t[i] = now_us() - a;
        if (rc != 0) {
            fprintf(stderr, "%s: %s\n", name, r.detail);
            exit(1);
        }
        sl_jwt_result_dispose(&r);
    }
    report(name, t, rounds);
    free(t);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3000;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    static const unsigned char secret[32] = "bench-secret-bench-secret-bench!";
    sl_jwks_t *krs = set_of(rsa, "RS256"), *kps = set_of(rsa, "PS256"), *kec = set_of(ec, NULL),
              *ked = set_of(ed, NULL), *khs = NULL;
    sl_jwks_from_secret(secret, sizeof(secret), "HS256", "k1", &khs);
    char *trs = make_token("RS256", rsa, NULL, 0), *tps = make_token("PS256", rsa, NULL, 0),
         *tes = make_token("ES256", ec, NULL, 0), *ted = make_token("EdDSA", ed, NULL, 0),
         *ths = make_token("HS256", NULL, secret, sizeof(secret));
    printf("token bytes: RS256 %zu, ES256 %zu, EdDSA %zu, HS256 %zu; %d rounds each\n", strlen(trs), strlen(tes),
           strlen(ted), strlen(ths), rounds);
    bench_verify("RS256 (2048) verify", krs, trs, rounds);
    bench_verify("PS256 (2048) verify", kps, tps, rounds);
    bench_verify("ES256 verify", kec, tes, rounds);
    bench_verify("EdDSA verify", ked, ted, rounds);
    bench_verify("HS256 verify", khs, ths, rounds);

    sl_jwt_cache_t *c = NULL;
    sl_jwt_cache_create(10000, 256, 300, &c);
    char value[128] = "user-1234\npartners,staff";
    sl_jwt_cache_put(c, sl_str_from_cstr(trs), sl_jwks_generation(krs), 1800003600, 1800000100, value, 64);
    double *t = malloc(sizeof(double) * (size_t)rounds);
    for (int i = 0; i < rounds; i++) {
        const void *v;
        size_t len;
        double a = now_us();
        int rc = sl_jwt_cache_get(c, sl_str_from_cstr(trs), sl_jwks_generation(krs), 1800000100, &v, &len);
        t[i] = now_us() - a;
        if (rc != 0)
            abort();
    }
    report("cache hit (RS256 tok)", t, rounds);
    /* Many calls per clock read: the single-call figure above is near the clock's resolution. */
    int batch = rounds * 100;
    double a = now_us();
    for (int i = 0; i < batch; i++) {
        const void *v;
        size_t len;
        sl_jwt_cache_get(c, sl_str_from_cstr(trs), sl_jwks_generation(krs), 1800000100, &v, &len);
    }
    printf("%-22s mean   %8.3f us over %d calls\n", "cache hit (batched)", (now_us() - a) / batch, batch);
    free(t);
    sl_jwt_cache_destroy(c);
    free(trs), free(tps), free(tes), free(ted), free(ths);
    sl_jwks_unref(krs), sl_jwks_unref(kps), sl_jwks_unref(kec), sl_jwks_unref(ked), sl_jwks_unref(khs);
    EVP_PKEY_free(rsa), EVP_PKEY_free(ec), EVP_PKEY_free(ed);
    return 0;
}
