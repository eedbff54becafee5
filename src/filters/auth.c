/*
 * The auth filter: identifies the consumer of a request by the route's methods, in the order
 * listed; the first method whose credential the request carries decides (valid: identified;
 * invalid: 401 with the reason), none carried: 401 auth_missing, or through when the route
 * allows anonymous. Then X-Consumer-Id / X-Consumer-Groups (and chosen JWT claims) go upstream.
 *
 * Costs on the hot path: an API key is one SHA-256 and a hash lookup; a JWT or Basic credential
 * seen before is one SHA-256 and a lookup in the worker's verified-credential cache; a client
 * certificate (mtls) is a few hash lookups, its facts worked out once per connection. The cold
 * paths are a signature verification (JWT, on the worker: tens of microseconds) and a password
 * hash (Basic: bcrypt/yescrypt take milliseconds by design, so it runs on libuv's thread pool
 * and the exchange pauses).
 */
#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/time.h"
#include "filters/filters.h"
#include "filters/internal.h"
#include "filters/jwks_store.h"
#include "filters/jwt.h"
#include "http/fetch.h"
#include "http/reply.h"
#include "pipeline/pipeline.h"
#include "pipeline/snapshot.h"
#include "tls/peer.h"

/* The config's bit set is the JWT core's enum, shifted: keep the two in step. */
_Static_assert(SL_JWT_SET_HS256 == SL_JWT_ALG_BIT(SL_JWT_HS256) && SL_JWT_SET_EDDSA == SL_JWT_ALG_BIT(SL_JWT_EDDSA) &&
                   SL_JWT_SET_ES384 == SL_JWT_ALG_BIT(SL_JWT_ES384) && SL_JWT_SET_PS512 == SL_JWT_ALG_BIT(SL_JWT_PS512),
               "config JWT algorithm bits differ from src/filters/jwt.h");

#define MAX_GROUPS      32
#define MAX_CLAIM_BYTES 256
#define CACHE_ENTRIES   4096
#define CACHE_VALUE_MAX 1024
#define BASIC_TTL_S     300 /* a changed password in the config invalidates at once (it is in the key) */

/* ---- per-worker caches ------------------------------------------------------------------------ */

static _Thread_local sl_jwt_cache_t *jwt_cache;
static _Thread_local sl_jwt_cache_t *basic_cache;
static _Thread_local sl_jwt_cache_t *intro_cache;
/* OpenSSL 3's one-shot SHA256() looks the digest up on every call (~0.8 us for a short key);
 * one fetched digest per thread and a reused context make it ~0.2 us. */
static _Thread_local EVP_MD *sha256_md;
static _Thread_local EVP_MD_CTX *sha256_ctx;

/* SHA-256 of the concatenation of `n` pieces, with the thread's reused context. */
static void sha256_parts(const sl_str_t *parts, size_t n, uint8_t out[SHA256_DIGEST_LENGTH])
{
    if (sha256_ctx == NULL) {
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
        sha256_ctx = EVP_MD_CTX_new();
        SL_BUG_ON(sha256_md == NULL || sha256_ctx == NULL);
    }
    unsigned int len = 0;
    SL_BUG_ON(EVP_DigestInit_ex2(sha256_ctx, sha256_md, NULL) != 1);
    for (size_t i = 0; i < n; i++)
        SL_BUG_ON(EVP_DigestUpdate(sha256_ctx, parts[i].ptr, parts[i].len) != 1);
    SL_BUG_ON(EVP_DigestFinal_ex(sha256_ctx, out, &len) != 1);
}

static sl_jwt_cache_t *cache_of(sl_jwt_cache_t **slot, uint64_t ttl_s)
{
    if (*slot == NULL && sl_jwt_cache_create(CACHE_ENTRIES, CACHE_VALUE_MAX, ttl_s, slot) != 0)
        *slot = NULL;
    return *slot;
}

void sl_filters_thread_exit(void)
{
    sl_jwt_cache_destroy(jwt_cache);
    sl_jwt_cache_destroy(basic_cache);
    sl_jwt_cache_destroy(intro_cache);
    jwt_cache = basic_cache = intro_cache = NULL;
    EVP_MD_CTX_free(sha256_ctx);
    EVP_MD_free(sha256_md);
    sha256_ctx = NULL;
    sha256_md = NULL;
}

/* ---- state ---------------------------------------------------------------------------------- */

typedef struct jwt_method {
    const sl_jwt_issuer_conf_t *issuer;
    sl_jwt_policy_t policy;
    const char **audiences;
    const char **required;
} jwt_method_t;

typedef struct intro_method {
    const sl_introspection_conf_t *conf;
    char *authorization; /* "Basic base64(client_id:secret)" (RFC 6749 §2.3.1); wiped on destroy */
    uint64_t cache_tag;  /* keeps this endpoint's cached verdicts apart from others' */
} intro_method_t;

typedef struct auth {
    const sl_route_auth_conf_t *conf;
    const sl__consumers_t *consumers;
    sl_jwks_store_t *jwks;
    const sl_fetcher_t *fetcher;
    jwt_method_t *jwt;     /* [conf->nmethods], filled for JWT methods */
    intro_method_t *intro; /* [conf->nmethods], filled for introspection methods */
} auth_t;

/* What a paused exchange waits on (x->handler_data): the tag tells on_abort which. */
enum wait_kind {
    WAIT_BASIC = 1,
    WAIT_INTROSPECTION,
};

/* application/x-www-form-urlencoded (RFC 6749 appendix B), into `out` (3x + 1 bytes). */
static size_t form_encode(char *out, sl_str_t in)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (size_t i = 0; i < in.len; i++) {
        unsigned char c = (unsigned char)in.ptr[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '*') {
            out[n++] = (char)c;
        } else if (c == ' ') {
            out[n++] = '+';
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
    return n;
}

static int intro_init(intro_method_t *im, const sl_introspection_conf_t *conf, const sl_fetcher_t *fetcher,
                      const sl_config_t *cfg, const sl_auth_method_conf_t *m, const sl_route_conf_t *route,
                      sl_config_errors_t *errs)
{
    if (fetcher == NULL) {
        sl_config_errors_add(errs, cfg->path, m->pos.line, m->pos.col,
                             "route '%s': auth: introspection needs the gateway's HTTP client", route->name.ptr);
        return SL_ECONFIG;
    }
    const char *secret = getenv(conf->client_secret_env.ptr);
    if (secret == NULL || secret[0] == '\0') {
        sl_config_errors_add(errs, cfg->path, conf->pos.line, conf->pos.col,
                             "introspection '%s': client_secret_env %s is not set or empty", conf->name.ptr,
                             conf->client_secret_env.ptr);
        return SL_ECONFIG;
    }
    size_t slen = strlen(secret);
    char *plain = sl_xmalloc(3 * (conf->client_id.len + slen) + 2);
    size_t n = form_encode(plain, conf->client_id);
    plain[n++] = ':';
    n += form_encode(plain + n, (sl_str_t){secret, slen});
    im->authorization = sl_xmalloc(6 + 4 * (n / 3 + 1) + 1);
    memcpy(im->authorization, "Basic ", 6);
    EVP_EncodeBlock((unsigned char *)im->authorization + 6, (const unsigned char *)plain, (int)n);
    OPENSSL_cleanse(plain, n);
    free(plain);
    im->conf = conf;
    uint8_t d[SHA256_DIGEST_LENGTH];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, conf->name.ptr, conf->name.len + 1);
    EVP_DigestUpdate(md, conf->url.ptr, conf->url.len);
    EVP_DigestFinal_ex(md, d, NULL);
    EVP_MD_CTX_free(md);
    memcpy(&im->cache_tag, d, sizeof(im->cache_tag));
    im->cache_tag |= 1; /* never 0 */
    return 0;
}

static int auth_create(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                       sl_config_errors_t *errs)
{
    const sl_route_auth_conf_t *a = &route->auth;
    *state = NULL;
    if (a->nmethods == 0)
        return 0;
    const sl_config_t *cfg = snap->cfg;
    auth_t *st = sl_xcalloc(1, sizeof(*st));
    st->conf = a;
    st->consumers = sl__filters_shared_consumers(shared);
    st->jwks = sl__filters_shared_jwks(shared);
    st->jwt = sl_xcalloc(a->nmethods, sizeof(*st->jwt));
    st->intro = sl_xcalloc(a->nmethods, sizeof(*st->intro));
    st->fetcher = sl__filters_shared_fetcher(shared);
    int rc = 0;
    for (size_t i = 0; i < a->nmethods; i++) {
        const sl_auth_method_conf_t *m = &a->methods[i];
        if (m->kind == SL_AUTH_INTROSPECTION) {
            if (intro_init(&st->intro[i], &cfg->introspection[m->ref_index], st->fetcher, cfg, m, route, errs) != 0)
                rc = SL_ECONFIG;
            continue;
        }
        if (m->kind != SL_AUTH_JWT)
            continue;
        if (st->jwks == NULL) {
            sl_config_errors_add(errs, cfg->path, m->pos.line, m->pos.col,
                                 "route '%s': auth: jwt needs the gateway's key store", route->name.ptr);
            rc = SL_ECONFIG;
            continue;
        }
        const sl_jwt_issuer_conf_t *is = &cfg->jwt_issuers[m->ref_index];
        jwt_method_t *j = &st->jwt[i];
        j->issuer = is;
        j->audiences = sl_xcalloc(is->naudiences + 1, sizeof(char *));
        for (size_t k = 0; k < is->naudiences; k++)
            j->audiences[k] = is->audiences[k].ptr;
        j->required = sl_xcalloc(is->nrequired_claims + 1, sizeof(char *));
        for (size_t k = 0; k < is->nrequired_claims; k++)
            j->required[k] = is->required_claims[k].ptr;
        j->policy = (sl_jwt_policy_t){
            .issuer = is->issuer.ptr,
            .audiences = j->audiences,
            .naudiences = is->naudiences,
            .allowed_algs = is->algorithms,
            .leeway_s = is->leeway_ms / 1000,
            .required_claims = j->required,
            .nrequired = is->nrequired_claims,
        };
    }
    *state = st;
    if (rc != 0) {
        sl_filter_auth.destroy(st);
        *state = NULL;
    }
    return rc;
}

static void auth_destroy(void *state)
{
    auth_t *st = state;
    for (size_t i = 0; i < st->conf->nmethods; i++) {
        free(st->jwt[i].audiences);
        free(st->jwt[i].required);
        if (st->intro[i].authorization != NULL) {
            OPENSSL_cleanse(st->intro[i].authorization, strlen(st->intro[i].authorization));
            free(st->intro[i].authorization);
        }
    }
    free(st->jwt);
    free(st->intro);
    free(st);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static bool safe_value(sl_str_t v)
{
    if (v.len == 0 || v.len > MAX_CLAIM_BYTES)
        return false;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.ptr[i];
        if (c < 0x20 || c == 0x7f || c == ',')
            return false;
    }
    return true;
}

static sl_str_t bearer_token(const sl_exchange_t *x, const char *scheme, size_t slen)
{
    const sl_header_t *h = sl_headers_find(&x->req_headers, SL_STR_LIT("Authorization"));
    if (h == NULL || h->value.len <= slen + 1 ||
        !sl_str_caseeq((sl_str_t){h->value.ptr, slen}, (sl_str_t){scheme, slen}) || h->value.ptr[slen] != ' ')
        return SL_STR_NULL;
    sl_str_t t = {h->value.ptr + slen + 1, h->value.len - slen - 1};
    while (t.len > 0 && t.ptr[0] == ' ')
        t.ptr++, t.len--;
    return t;
}

/* The `name` parameter of the query, raw (keys are URL-safe tokens; no percent-decoding). */
static bool query_param(sl_str_t query, sl_str_t name, sl_str_t *value, size_t *start, size_t *end)
{
    size_t i = 0;
    while (i < query.len) {
        size_t j = i;
        while (j < query.len && query.ptr[j] != '&')
            j++;
        if (j - i > name.len && query.ptr[i + name.len] == '=' && memcmp(query.ptr + i, name.ptr, name.len) == 0) {
            *value = (sl_str_t){query.ptr + i + name.len + 1, j - i - name.len - 1};
            *start = i;
            *end = j;
            return true;
        }
        i = j + 1;
    }
    return false;
}

static void remove_query_param(sl_exchange_t *x, size_t start, size_t end)
{
    /* Drop "name=value" and one '&' next to it. */
    if (end < x->query.len)
        end++;
    else if (start > 0)
        start--;
    char *q = sl_arena_alloc(&x->arena, x->query.len + 1);
    memcpy(q, x->query.ptr, start);
    memcpy(q + start, x->query.ptr + end, x->query.len - end);
    x->query = (sl_str_t){q, x->query.len - (end - start)};
}

static enum sl_filter_status fail(sl_exchange_t *x, enum sl_cause cause, const char *detail)
{
    x->cause = cause;
    x->cause_detail = detail;
    return SL_FILTER_ERROR;
}

static void challenge(sl_exchange_t *x, const auth_t *st)
{
    for (size_t i = 0; i < st->conf->nmethods; i++) {
        enum sl_auth_kind k = st->conf->methods[i].kind;
        if (k == SL_AUTH_BASIC) {
            size_t cap = st->conf->realm.len + 32;
            char *v = sl_arena_alloc(&x->arena, cap);
            int n = snprintf(v, cap, "Basic realm=\"%s\", charset=\"UTF-8\"", st->conf->realm.ptr);
            sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("WWW-Authenticate"), (sl_str_t){v, (size_t)n});
        } else if (k == SL_AUTH_JWT || k == SL_AUTH_INTROSPECTION) {
            sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("WWW-Authenticate"), SL_STR_LIT("Bearer"));
            break;
        }
    }
}

static void identify_consumer(sl_exchange_t *x, const sl_consumer_conf_t *c)
{
    sl__identify(x, c->name, c->groups, c->ngroups);
}

/* ---- API keys ------------------------------------------------------------------------------- */

static enum sl_filter_status check_api_key(sl_exchange_t *x, const auth_t *st, sl_str_t key, bool from_query, size_t qs,
                                           size_t qe)
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    sha256_parts(&key, 1, d);
    const sl_consumer_conf_t *c = sl__consumers_by_key(st->consumers, d);
    if (c == NULL)
        return fail(x, SL_CAUSE_AUTH_INVALID, "api_key_unknown");
    if (st->conf->hide_credentials) {
        if (from_query)
            remove_query_param(x, qs, qe);
        else
            sl_headers_remove(&x->req_headers, st->conf->api_key_header);
    }
    identify_consumer(x, c);
    return SL_FILTER_CONTINUE;
}

/* ---- Basic ---------------------------------------------------------------------------------- */

typedef struct basic_job {
    enum wait_kind kind; /* WAIT_BASIC: first, like every waiter */
    uv_work_t work;
    sl_exchange_t *x; /* NULL once the client left: the result is then dropped */
    const sl_consumer_conf_t *consumer;
    const auth_t *st;
    uint8_t key[SHA256_DIGEST_LENGTH]; /* of user \0 password \0 stored hash: the cache key */
    char *password;                    /* NUL-terminated copy, wiped after use */
    const char *hash;
    bool ok;
} basic_job_t;

static void basic_work(uv_work_t *w)
{
    basic_job_t *j = w->data;
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    if (cd == NULL)
        return;
    const char *out = crypt_rn(j->password, j->hash, cd, (int)sizeof(*cd));
    size_t hl = strlen(j->hash);
    j->ok = out != NULL && out[0] != '*' && strlen(out) == hl && CRYPTO_memcmp(out, j->hash, hl) == 0;
    OPENSSL_cleanse(cd, sizeof(*cd));
    free(cd);
}

static void basic_job_free(basic_job_t *j)
{
    OPENSSL_cleanse(j->password, strlen(j->password));
    free(j->password);
    free(j);
}

static void basic_after(uv_work_t *w, int status)
{
    basic_job_t *j = w->data;
    sl_exchange_t *x = j->x;
    if (x == NULL) { /* the client left while the hash ran */
        basic_job_free(j);
        return;
    }
    x->handler_data = NULL;
    if (status != 0 || !j->ok) {
        challenge(x, j->st);
        basic_job_free(j);
        sl_filter_fail(x, SL_CAUSE_AUTH_INVALID, "basic_bad_password");
        return;
    }
    sl_jwt_cache_t *cache = cache_of(&basic_cache, BASIC_TTL_S);
    if (cache != NULL)
        sl_jwt_cache_put(cache, (sl_str_t){(const char *)j->key, sizeof(j->key)}, 0, 0, (uint64_t)time(NULL), "", 0);
    const auth_t *st = j->st;
    if (st->conf->hide_credentials)
        sl_headers_remove(&x->req_headers, SL_STR_LIT("Authorization"));
    identify_consumer(x, j->consumer);
    basic_job_free(j);
    sl_filter_resume(x);
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard base64 with padding (RFC 7617 uses RFC 4648 §4). Returns the length or -1. */
static long b64_decode(sl_str_t in, char *out, size_t cap)
{
    if (in.len % 4 != 0 || in.len == 0)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < in.len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in.ptr[i + (size_t)k];
            if (c == '=' && i + 4 == in.len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0 || (v[k] = b64_value(c)) < 0) {
                return -1;
            }
        }
        uint32_t t = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        if (n + 3 - (size_t)pad > cap)
            return -1;
        out[n++] = (char)(t >> 16);
        if (pad < 2)
            out[n++] = (char)(t >> 8);
        if (pad < 1)
            out[n++] = (char)t;
    }
    return (long)n;
}

static enum sl_filter_status check_basic(sl_exchange_t *x, const auth_t *st, sl_str_t cred)
{
    char buf[512];
    long n = b64_decode(cred, buf, sizeof(buf));
    const char *colon = n > 0 ? memchr(buf, ':', (size_t)n) : NULL;
    if (colon == NULL)
        return fail(x, SL_CAUSE_AUTH_INVALID, "basic_malformed");
    sl_str_t user = {buf, (size_t)(colon - buf)};
    sl_str_t pass = {colon + 1, (size_t)n - user.len - 1};
    const sl_basic_cred_conf_t *cred_conf = NULL;
    const sl_consumer_conf_t *c = sl__consumers_by_user(st->consumers, user, &cred_conf);
    if (c == NULL || memchr(pass.ptr, '\0', pass.len) != NULL) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return fail(x, SL_CAUSE_AUTH_INVALID, c == NULL ? "basic_unknown_user" : "basic_bad_password");
    }
    /* The cache key: user \0 password \0 stored hash (a changed hash in the config misses). */
    uint8_t key[SHA256_DIGEST_LENGTH];
    const sl_str_t parts[] = {user, {"", 1}, pass, {"", 1}, cred_conf->password_hash};
    sha256_parts(parts, sizeof(parts) / sizeof(parts[0]), key);
    const void *val;
    size_t vlen;
    sl_jwt_cache_t *cache = cache_of(&basic_cache, BASIC_TTL_S);
    if (cache != NULL && sl_jwt_cache_get(cache, (sl_str_t){(const char *)key, sizeof(key)}, 0, (uint64_t)time(NULL),
                                          &val, &vlen) == 0) {
        OPENSSL_cleanse(buf, sizeof(buf));
        if (st->conf->hide_credentials)
            sl_headers_remove(&x->req_headers, SL_STR_LIT("Authorization"));
        identify_consumer(x, c);
        return SL_FILTER_CONTINUE;
    }
    basic_job_t *j = sl_xcalloc(1, sizeof(*j));
    j->kind = WAIT_BASIC;
    j->work.data = j;
    j->x = x;
    j->consumer = c;
    j->st = st;
    memcpy(j->key, key, sizeof(key));
    j->password = sl_xmalloc(pass.len + 1);
    memcpy(j->password, pass.ptr, pass.len);
    j->password[pass.len] = '\0';
    j->hash = cred_conf->password_hash.ptr;
    OPENSSL_cleanse(buf, sizeof(buf));
    if (uv_queue_work(sl_exchange_loop(x), &j->work, basic_work, basic_after) != 0) {
        basic_job_free(j);
        return fail(x, SL_CAUSE_INTERNAL_ERROR, "basic_queue_failed");
    }
    /* handler_data is free until the route's answer runs; the paused job lives there so
     * on_abort can find it. */
    x->handler_data = j;
    return SL_FILTER_PAUSE;
}

/* ---- JWT ------------------------------------------------------------------------------------ */

/* The cached verdict of a token: consumer, groups and claim-header values, packed as
 * u16 length + bytes each, in this order: consumer, ngroups (u16), groups..., nheaders (u16),
 * header values... (in claims_to_headers order; an empty value means "claim absent"). */
typedef struct packer {
    uint8_t buf[CACHE_VALUE_MAX];
    size_t n;
    bool overflow;
} packer_t;

static void pack_str(packer_t *p, sl_str_t s)
{
    if (p->n + 2 + s.len > sizeof(p->buf)) {
        p->overflow = true;
        return;
    }
    p->buf[p->n++] = (uint8_t)(s.len >> 8);
    p->buf[p->n++] = (uint8_t)s.len;
    memcpy(p->buf + p->n, s.ptr, s.len);
    p->n += s.len;
}

static void pack_u16(packer_t *p, size_t v)
{
    if (p->n + 2 > sizeof(p->buf)) {
        p->overflow = true;
        return;
    }
    p->buf[p->n++] = (uint8_t)(v >> 8);
    p->buf[p->n++] = (uint8_t)v;
}

typedef struct unpacker {
    const uint8_t *p, *end;
} unpacker_t;

static bool unpack_u16(unpacker_t *u, size_t *v)
{
    if (u->end - u->p < 2)
        return false;
    *v = (size_t)u->p[0] << 8 | u->p[1];
    u->p += 2;
    return true;
}

static bool unpack_str(unpacker_t *u, sl_arena_t *a, sl_str_t *s)
{
    size_t len;
    if (!unpack_u16(u, &len) || (size_t)(u->end - u->p) < len)
        return false;
    *s = sl_arena_str_dup(a, (sl_str_t){(const char *)u->p, len});
    u->p += len;
    return true;
}

/* Applies a verdict (fresh or cached) to the exchange. */
static bool apply_packed(sl_exchange_t *x, const sl_header_kv_conf_t *claim_headers, size_t nclaim_headers,
                         const void *val, size_t len)
{
    unpacker_t u = {val, (const uint8_t *)val + len};
    sl_str_t consumer, groups[MAX_GROUPS];
    size_t ng, nh;
    if (!unpack_str(&u, &x->arena, &consumer) || !unpack_u16(&u, &ng) || ng > MAX_GROUPS)
        return false;
    for (size_t i = 0; i < ng; i++)
        if (!unpack_str(&u, &x->arena, &groups[i]))
            return false;
    if (!unpack_u16(&u, &nh) || nh != nclaim_headers)
        return false;
    for (size_t i = 0; i < nh; i++) {
        sl_str_t v;
        if (!unpack_str(&u, &x->arena, &v))
            return false;
        sl_str_t name = claim_headers[i].name;
        /* A client's copy of a claim header never passes, whether or not the token has it. */
        sl_headers_remove(&x->req_headers, name);
        if (v.len > 0)
            sl_headers_add(&x->arena, &x->req_headers, name, v);
    }
    sl__identify(x, consumer, groups, ng);
    return true;
}

/* Builds the packed verdict from verified claims; false with a detail when the claims cannot
 * name a consumer we can pass on safely. */
static bool pack_verdict(const auth_t *st, const jwt_method_t *j, const json_t *claims, packer_t *p,
                         const char **detail)
{
    sl_str_t consumer;
    if (sl_jwt_claim_str(claims, j->issuer->consumer_claim.ptr, &consumer) != 0 || !safe_value(consumer)) {
        *detail = "jwt_bad_consumer_claim";
        return false;
    }
    sl_str_t groups[MAX_GROUPS];
    size_t ng = 0;
    const sl_consumer_conf_t *known = sl__consumers_by_name(st->consumers, consumer);
    if (known != NULL)
        for (size_t i = 0; i < known->ngroups && ng < MAX_GROUPS; i++)
            groups[ng++] = known->groups[i];
    if (j->issuer->groups_claim.len > 0) {
        sl_str_t g[MAX_GROUPS];
        size_t n = 0;
        int rc = sl_jwt_claim_strs(claims, j->issuer->groups_claim.ptr, g, MAX_GROUPS, &n);
        if (rc != 0 && rc != SL_ENOTFOUND) {
            *detail = "jwt_bad_groups_claim";
            return false;
        }
        for (size_t i = 0; i < n && ng < MAX_GROUPS; i++)
            if (safe_value(g[i]))
                groups[ng++] = g[i];
    }
    pack_str(p, consumer);
    pack_u16(p, ng);
    for (size_t i = 0; i < ng; i++)
        pack_str(p, groups[i]);
    pack_u16(p, j->issuer->nclaims_to_headers);
    for (size_t i = 0; i < j->issuer->nclaims_to_headers; i++) {
        sl_str_t v = SL_STR_NULL;
        if (sl_jwt_claim_str(claims, j->issuer->claims_to_headers[i].value.ptr, &v) != 0 || !safe_value(v))
            v = SL_STR_NULL;
        pack_str(p, v);
    }
    if (p->overflow) {
        *detail = "jwt_claims_too_large";
        return false;
    }
    return true;
}

static enum sl_filter_status check_jwt(sl_exchange_t *x, const auth_t *st, const jwt_method_t *j, sl_str_t token)
{
    uint64_t now = (uint64_t)time(NULL);
    sl_jwt_cache_t *cache = cache_of(&jwt_cache, 3600);
    /* A hit needs only the key set's generation, not a reference to it: no shared write. */
    uint64_t generation = sl_jwks_store_generation(st->jwks, j->issuer->name);
    const void *val;
    size_t vlen;
    if (generation != 0 && cache != NULL && sl_jwt_cache_get(cache, token, generation, now, &val, &vlen) == 0) {
        if (!apply_packed(x, j->issuer->claims_to_headers, j->issuer->nclaims_to_headers, val, vlen))
            return fail(x, SL_CAUSE_INTERNAL_ERROR, "jwt_cache_corrupt");
        if (st->conf->hide_credentials)
            sl_headers_remove(&x->req_headers, SL_STR_LIT("Authorization"));
        return SL_FILTER_CONTINUE;
    }
    sl_jwks_t *keys = sl_jwks_store_get(st->jwks, j->issuer->name, &generation);
    if (keys == NULL)
        return fail(x, SL_CAUSE_AUTH_INVALID, "jwt_no_keys");
    sl_jwt_result_t res;
    int rc = sl_jwt_verify(keys, &j->policy, token, now, &res);
    sl_jwks_unref(keys);
    if (rc != 0) {
        if (res.verdict == SL_JWT_UNKNOWN_KID)
            sl_jwks_store_request_refresh(st->jwks, j->issuer->name);
        return fail(x, sl_jwt_verdict_cause(res.verdict), res.detail);
    }
    packer_t p = {.n = 0};
    const char *detail = NULL;
    bool ok = pack_verdict(st, j, res.claims, &p, &detail);
    /* Cache only while the claims are still held: slices point into them. */
    if (ok && cache != NULL)
        sl_jwt_cache_put(cache, token, generation, res.exp, now, p.buf, p.n);
    sl_jwt_result_dispose(&res);
    if (!ok)
        return fail(x, SL_CAUSE_AUTH_INVALID, detail);
    if (!apply_packed(x, j->issuer->claims_to_headers, j->issuer->nclaims_to_headers, p.buf, p.n))
        return fail(x, SL_CAUSE_INTERNAL_ERROR, "jwt_pack");
    if (st->conf->hide_credentials)
        sl_headers_remove(&x->req_headers, SL_STR_LIT("Authorization"));
    return SL_FILTER_CONTINUE;
}

/* ---- OAuth2 token introspection (RFC 7662) ------------------------------------------------------ */

typedef struct intro_wait {
    enum wait_kind kind; /* WAIT_INTROSPECTION */
    sl_exchange_t *x;
    const auth_t *st;
    const intro_method_t *im;
    sl_str_t token;
    sl_fetch_t *fetch;
} intro_wait_t;

static sl_jwt_cache_t *intro_cache_of(void)
{
    return cache_of(&intro_cache, 86400);
}

/* Answers from a verdict blob: 0x00 = inactive, else 0x01 + the packed identity. */
static enum sl_filter_status intro_apply(sl_exchange_t *x, const auth_t *st, const uint8_t *val, size_t len)
{
    if (len < 1 || val[0] == 0) {
        challenge(x, st);
        return fail(x, SL_CAUSE_AUTH_INVALID, "token_inactive");
    }
    if (!apply_packed(x, NULL, 0, val + 1, len - 1))
        return fail(x, SL_CAUSE_INTERNAL_ERROR, "introspection_cache_corrupt");
    if (st->conf->hide_credentials)
        sl_headers_remove(&x->req_headers, SL_STR_LIT("Authorization"));
    return SL_FILTER_CONTINUE;
}

/* The verdict of an introspection answer; false with a cause and detail when the endpoint's
 * answer is unusable. `exp` 0 when the answer has none. */
static bool intro_verdict(const auth_t *st, const intro_method_t *im, const sl_fetch_response_t *res, packer_t *p,
                          uint64_t *exp, enum sl_cause *cause, const char **detail)
{
    json_error_t jerr;
    json_t *j = json_loadb(res->body.ptr, res->body.len, 0, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        *cause = SL_CAUSE_UPSTREAM_BAD_RESPONSE;
        *detail = "introspection_bad_response";
        return false;
    }
    p->n = 0;
    if (!json_is_true(json_object_get(j, "active"))) {
        p->buf[p->n++] = 0;
        json_decref(j);
        return true;
    }
    json_t *e = json_object_get(j, "exp");
    *exp = json_is_integer(e) && json_integer_value(e) > 0 ? (uint64_t)json_integer_value(e) : 0;
    sl_str_t consumer;
    if (sl_jwt_claim_str(j, im->conf->consumer_field.ptr, &consumer) != 0 || !safe_value(consumer)) {
        json_decref(j);
        *cause = SL_CAUSE_AUTH_INVALID;
        *detail = "introspection_no_consumer";
        return false;
    }
    p->buf[p->n++] = 1;
    const sl_consumer_conf_t *known = sl__consumers_by_name(st->consumers, consumer);
    pack_str(p, consumer);
    pack_u16(p, known != NULL ? known->ngroups : 0);
    for (size_t i = 0; known != NULL && i < known->ngroups; i++)
        pack_str(p, known->groups[i]);
    pack_u16(p, 0);
    json_decref(j);
    if (p->overflow) {
        *cause = SL_CAUSE_AUTH_INVALID;
        *detail = "introspection_too_large";
        return false;
    }
    return true;
}

static void intro_done(void *arg, int status, const sl_fetch_response_t *res)
{
    intro_wait_t *w = arg;
    sl_exchange_t *x = w->x;
    x->handler_data = NULL;
    const auth_t *st = w->st;
    enum sl_cause cause = SL_CAUSE_NONE;
    const char *detail = NULL;
    if (status == SL_EFETCH_TIMEOUT) {
        cause = SL_CAUSE_UPSTREAM_TIMEOUT;
        detail = "introspection_timeout";
    } else if (status < 0) {
        cause = status == SL_EFETCH_BAD_RESPONSE || status == SL_EFETCH_TOO_LARGE ? SL_CAUSE_UPSTREAM_BAD_RESPONSE
                                                                                  : SL_CAUSE_UPSTREAM_CONNECT_FAILED;
        detail = status == SL_EFETCH_TLS ? "introspection_tls_failed" : "introspection_unavailable";
    } else if (status == 401 || status == 403) {
        /* The endpoint refused sluice itself: wrong client_id or secret, not the caller's token. */
        cause = SL_CAUSE_UPSTREAM_BAD_RESPONSE;
        detail = "introspection_client_rejected";
    } else if (status != 200) {
        cause = SL_CAUSE_UPSTREAM_BAD_RESPONSE;
        detail = "introspection_status";
    }
    if (cause != SL_CAUSE_NONE) {
        sl_filter_fail(x, cause, detail);
        return;
    }
    packer_t p = {.n = 0};
    uint64_t exp = 0;
    if (!intro_verdict(st, w->im, res, &p, &exp, &cause, &detail)) {
        if (cause == SL_CAUSE_AUTH_INVALID)
            challenge(x, st);
        sl_filter_fail(x, cause, detail);
        return;
    }
    uint64_t now = (uint64_t)time(NULL);
    if (p.buf[0] == 1 && exp != 0 && exp <= now) {
        challenge(x, st);
        sl_filter_fail(x, SL_CAUSE_AUTH_EXPIRED, "token_expired");
        return;
    }
    sl_jwt_cache_t *cache = intro_cache_of();
    uint64_t ttl = w->im->conf->cache_ttl_ms / 1000;
    if (cache != NULL && ttl > 0) {
        uint64_t until = now + ttl;
        if (exp != 0 && exp < until)
            until = exp;
        sl_jwt_cache_put(cache, w->token, w->im->cache_tag, until, now, p.buf, p.n);
    }
    enum sl_filter_status r = intro_apply(x, st, p.buf, p.n);
    if (r == SL_FILTER_CONTINUE)
        sl_filter_resume(x);
    else
        sl_filter_fail(x, x->cause, x->cause_detail);
}

static enum sl_filter_status check_introspection(sl_exchange_t *x, const auth_t *st, const intro_method_t *im,
                                                 sl_str_t token)
{
    uint64_t now = (uint64_t)time(NULL);
    sl_jwt_cache_t *cache = intro_cache_of();
    const void *val;
    size_t vlen;
    if (cache != NULL && sl_jwt_cache_get(cache, token, im->cache_tag, now, &val, &vlen) == 0)
        return intro_apply(x, st, val, vlen);
    if (token.len > SL_JWT_MAX_TOKEN)
        return fail(x, SL_CAUSE_AUTH_INVALID, "token_too_large");
    char *body = sl_arena_alloc(&x->arena, 3 * token.len + 64);
    size_t n = (size_t)snprintf(body, 7, "token=");
    n += form_encode(body + n, token);
    n += (size_t)snprintf(body + n, 40, "&token_type_hint=access_token");
    sl_header_t hdrs[] = {
        {SL_STR_LIT("Authorization"), sl_str_from_cstr(im->authorization)},
        {SL_STR_LIT("Content-Type"), SL_STR_LIT("application/x-www-form-urlencoded")},
        {SL_STR_LIT("Accept"), SL_STR_LIT("application/json")},
    };
    sl_fetch_request_t req = {
        .method = SL_STR_LIT("POST"),
        .url = im->conf->url.ptr,
        .headers = hdrs,
        .nheaders = sizeof(hdrs) / sizeof(hdrs[0]),
        .body = {body, n},
        .timeout_ms = im->conf->timeout_ms,
        .max_body = 64 * 1024,
    };
    intro_wait_t *w = sl_arena_alloc(&x->arena, sizeof(*w));
    *w = (intro_wait_t){.kind = WAIT_INTROSPECTION, .x = x, .st = st, .im = im, .token = token};
    int rc = st->fetcher->start(sl_exchange_loop(x), &req, intro_done, w, &w->fetch);
    if (rc != 0)
        return fail(x, SL_CAUSE_UPSTREAM_CONNECT_FAILED, "introspection_unavailable");
    x->handler_data = w;
    return SL_FILTER_PAUSE;
}

/* ---- mTLS ------------------------------------------------------------------------------------ */

/* The consumer of the connection's client certificate, which the caller saw is present. The
 * certificate's facts are worked out once per connection (tls/peer.c); here it is at most
 * 2 + nsans hash lookups: the fingerprint first, then the subject, then each SAN in the
 * certificate's order, the first match deciding. */
static enum sl_filter_status check_mtls(sl_exchange_t *x, const auth_t *st)
{
    sl_tls_conn_t *t = x->tls_conn;
    /* With client_ca the handshake already refuses a certificate that does not verify; this
     * catches the rest: a resumed session whose certificate no longer chains to this
     * listener's client_ca, or a listener without client_ca. */
    if (!sl_tls_peer_verified(t))
        return fail(x, SL_CAUSE_AUTH_INVALID, "mtls_unverified");
    const sl_consumer_conf_t *c = NULL;
    uint8_t fp[SL_TLS_FINGERPRINT_LEN];
    if (sl_tls_peer_fingerprint(t, fp))
        c = sl__consumers_by_fingerprint(st->consumers, fp);
    const char *s;
    size_t len;
    if (c == NULL && sl_tls_peer_subject(t, &s, &len))
        c = sl__consumers_by_cert_name(st->consumers, SL_MTLS_SUBJECT, (sl_str_t){s, len});
    for (size_t i = 0, n = sl_tls_peer_nsans(t); c == NULL && i < n; i++) {
        enum sl_tls_san_kind kind;
        s = sl_tls_peer_san(t, i, &len, &kind);
        c = sl__consumers_by_cert_name(st->consumers, SL_MTLS_SAN, (sl_str_t){s, len});
    }
    if (c == NULL)
        return fail(x, SL_CAUSE_AUTH_INVALID, "mtls_unknown_certificate");
    identify_consumer(x, c);
    return SL_FILTER_CONTINUE;
}

/* ---- the filter ----------------------------------------------------------------------------- */

static enum sl_filter_status auth_on_request(sl_exchange_t *x, void *state)
{
    const auth_t *st = state;
    const sl_route_auth_conf_t *a = st->conf;
    enum sl_filter_status r;
    const char *mtls_missing = NULL; /* why an mtls method found no certificate */
    for (size_t i = 0; i < a->nmethods; i++) {
        switch (a->methods[i].kind) {
        case SL_AUTH_MTLS:
            if (x->tls_conn == NULL) {
                mtls_missing = "mtls_no_tls";
                continue;
            }
            if (!sl_tls_peer_has_cert(x->tls_conn)) {
                mtls_missing = "mtls_no_certificate";
                continue;
            }
            r = check_mtls(x, st);
            break;
        case SL_AUTH_API_KEY: {
            const sl_header_t *h = sl_headers_find(&x->req_headers, a->api_key_header);
            if (h != NULL && h->value.len > 0)
                r = check_api_key(x, st, h->value, false, 0, 0);
            else {
                sl_str_t v;
                size_t qs, qe;
                if (a->api_key_query.len == 0 || !query_param(x->query, a->api_key_query, &v, &qs, &qe) || v.len == 0)
                    continue;
                r = check_api_key(x, st, v, true, qs, qe);
            }
            break;
        }
        case SL_AUTH_BASIC: {
            sl_str_t cred = bearer_token(x, "Basic", 5);
            if (cred.len == 0)
                continue;
            r = check_basic(x, st, cred);
            break;
        }
        case SL_AUTH_JWT: {
            sl_str_t token = bearer_token(x, "Bearer", 6);
            if (token.len == 0)
                continue;
            r = check_jwt(x, st, &st->jwt[i], token);
            break;
        }
        case SL_AUTH_INTROSPECTION: {
            sl_str_t token = bearer_token(x, "Bearer", 6);
            if (token.len == 0)
                continue;
            r = check_introspection(x, st, &st->intro[i], token);
            break;
        }
        default:
            continue;
        }
        if (r == SL_FILTER_ERROR && (x->cause == SL_CAUSE_AUTH_INVALID || x->cause == SL_CAUSE_AUTH_EXPIRED))
            challenge(x, st);
        return r;
    }
    if (a->anonymous)
        return SL_FILTER_CONTINUE;
    challenge(x, st);
    /* A route whose only method is mtls says why there was no certificate; with other methods
     * too, any of them could have been used, so the request simply carried none. */
    if (mtls_missing != NULL && a->nmethods == 1)
        return fail(x, SL_CAUSE_AUTH_MISSING, mtls_missing);
    return fail(x, SL_CAUSE_AUTH_MISSING, "no_credentials");
}

static void auth_on_abort(sl_exchange_t *x, void *state)
{
    const auth_t *st = state;
    enum wait_kind *kind = x->handler_data;
    if (kind == NULL)
        return;
    if (*kind == WAIT_BASIC) {
        ((basic_job_t *)kind)->x = NULL; /* the hash may be running: its completion frees the job */
    } else {
        intro_wait_t *w = (intro_wait_t *)kind;
        st->fetcher->cancel(w->fetch); /* its callback will not run */
    }
    x->handler_data = NULL;
}

const sl_filter_type_t sl_filter_auth = {
    .name = "auth",
    .create = auth_create,
    .destroy = auth_destroy,
    .on_request = auth_on_request,
    .on_abort = auth_on_abort,
};
