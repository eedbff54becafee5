/*
 * libFuzzer target for the JWT core. The first byte picks a mode: 0 verifies the rest as a raw
 * token against the RFC 7515/8037 example keys; 1 parses the rest as a JWK Set and, when that
 * succeeds, verifies the example tokens with it; 2 splits the rest at the first NUL into a
 * header and a payload, signs them with the example HMAC key, so claim checking is reached with
 * arbitrary JSON. Invariants: the return code agrees with the verdict, claims only on success.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/bug.h"
#include "filters/jwt.h"

static const char example_jwks[] =
    "{\"keys\":["
    "{\"kty\":\"oct\",\"kid\":\"hs\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTw"
    "jAzZr1Z9CAow\"},"
    "{\"kty\":\"RSA\",\"kid\":\"2010-12-29\",\"e\":\"AQAB\",\"n\":\"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_"
    "wWJcyQoTbji9k0l8W2"
    "6mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bS"
    "f63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_"
    "I5IhlJH7aGhyxXFvUK-"
    "DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ\"},"
    "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"ec\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
    "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
    "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"ed\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}";

static const char *const example_tokens[] = {
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNv"
    "bS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
};

/* RFC 7515 A.1's HMAC key (the "k" above), decoded once at start. */
static const char hs_key_b64[] =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
static unsigned char hs_key[66];
static size_t hs_key_len;

static sl_jwks_t *keys;

static const char *const audiences[] = {"api", "joe"};
static const char *const required[] = {"sub"};

static sl_jwt_policy_t policy(uint8_t flags)
{
    return (sl_jwt_policy_t){
        .issuer = (flags & 1) ? "joe" : NULL,
        .audiences = audiences,
        .naudiences = (flags & 2) ? 2 : 0,
        .allowed_algs = SL_JWT_ALGS_ALL,
        .leeway_s = (flags & 4) ? 60 : 0,
        .required_claims = required,
        .nrequired = (flags & 8) ? 1 : 0,
        .exp_optional = (flags & 16) != 0,
    };
}

static void check(const sl_jwks_t *k, const sl_jwt_policy_t *p, const char *t, size_t len, uint64_t now)
{
    sl_jwt_result_t r;
    memset(&r, 0, sizeof(r));
    int rc = sl_jwt_verify(k, p, (sl_str_t){t, len}, now, &r);
    SL_BUG_ON((rc == 0) != (r.verdict == SL_JWT_OK));
    SL_BUG_ON(r.detail == NULL || strcmp(r.detail, sl_jwt_verdict_detail(r.verdict)) != 0);
    SL_BUG_ON(rc != 0 && r.claims != NULL);
    SL_BUG_ON(rc == 0 && !json_is_object(r.claims));
    /* accepted means now < exp + leeway (src/filters/jwt.c), so exp > now - leeway */
    SL_BUG_ON(rc == 0 && !p->exp_optional && r.exp <= now - p->leeway_s);
    if (rc == 0) {
        sl_str_t s;
        sl_jwt_claim_str(r.claims, "sub", &s);
        sl_str_t groups[4];
        size_t n;
        sl_jwt_claim_strs(r.claims, "aud", groups, 4, &n);
    }
    sl_jwt_result_dispose(&r);
}

static char *b64url(const unsigned char *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = tab[v >> 18], *out++ = tab[(v >> 12) & 63], *out++ = tab[(v >> 6) & 63], *out++ = tab[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *out++ = tab[v >> 18], *out++ = tab[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *out++ = tab[v >> 18], *out++ = tab[(v >> 12) & 63], *out++ = tab[(v >> 6) & 63];
    }
    return out;
}

static void signed_claims(const uint8_t *data, size_t size, uint8_t flags)
{
    if (size > 12000)
        return;
    const uint8_t *nul = memchr(data, 0, size);
    size_t hlen = nul ? (size_t)(nul - data) : size;
    const uint8_t *payload = nul ? nul + 1 : data + size;
    size_t plen = nul ? size - hlen - 1 : 0;
    char *tok = malloc(size / 3 * 4 + 128), *p = tok;
    p = b64url(data, hlen, p);
    *p++ = '.';
    p = b64url(payload, plen, p);
    unsigned char mac[32];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), hs_key, (int)hs_key_len, (unsigned char *)tok, (size_t)(p - tok), mac, &maclen);
    *p++ = '.';
    p = b64url(mac, maclen, p);
    sl_jwt_policy_t pol = policy(flags);
    check(keys, &pol, tok, (size_t)(p - tok), 1300819000);
    free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!keys) {
        SL_BUG_ON(sl_jwks_parse(example_jwks, strlen(example_jwks), &keys, NULL, 0) != 0);
        SL_BUG_ON(sl_jwks_count(keys) != 4);
        /* base64url -> base64 with padding, for EVP_DecodeBlock */
        char std[sizeof(hs_key_b64) + 2];
        size_t n = strlen(hs_key_b64);
        for (size_t i = 0; i < n; i++)
            std[i] = hs_key_b64[i] == '-' ? '+' : hs_key_b64[i] == '_' ? '/' : hs_key_b64[i];
        std[n] = std[n + 1] = '=';
        SL_BUG_ON(EVP_DecodeBlock(hs_key, (const unsigned char *)std, (int)n + 2) != 66);
        hs_key_len = 64; /* EVP_DecodeBlock counts the padding as bytes */
    }
    if (size < 2)
        return 0;
    uint8_t mode = data[0] % 3, flags = data[1];
    data += 2;
    size -= 2;
    if (mode == 0) {
        sl_jwt_policy_t p = policy(flags);
        check(keys, &p, (const char *)data, size, 1300819000);
    } else if (mode == 1) {
        sl_jwks_t *k = NULL;
        char why[256];
        if (sl_jwks_parse((const char *)data, size, &k, why, sizeof(why)) == 0) {
            SL_BUG_ON(sl_jwks_count(k) == 0);
            sl_jwt_policy_t p = policy(flags | 16);
            for (size_t i = 0; i < sizeof(example_tokens) / sizeof(example_tokens[0]); i++)
                check(k, &p, example_tokens[i], strlen(example_tokens[i]), 1300819000);
            sl_jwks_unref(k);
        } else {
            SL_BUG_ON(k != NULL);
            SL_BUG_ON(strnlen(why, sizeof(why)) >= sizeof(why));
        }
    } else {
        signed_claims(data, size, flags);
    }
    return 0;
}
