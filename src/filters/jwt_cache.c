/*
 * The verified-token cache: one per worker, so a hot token costs one SHA-256 and a lookup in
 * one set of SL_JWT_CACHE_WAYS entries instead of a signature verification. Set-associative with
 * LRU inside the set: O(1) lookups and evictions, no tombstones, no allocation after create.
 * Only the token's digest is kept; an entry remembers the key-set generation that verified it.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/bug.h"
#include "common/error.h"
#include "filters/jwt.h"

#define DIGEST_LEN      32
#define MAX_ENTRIES     (1u << 24)
#define MAX_VALUE_BYTES 65536

typedef struct entry {
    unsigned char digest[DIGEST_LEN];
    uint64_t expires; /* 0: free slot */
    uint64_t generation;
    uint64_t last_used;
    uint32_t len;
} entry_t;

struct sl_jwt_cache {
    size_t nsets; /* a power of two */
    size_t value_max;
    uint64_t max_ttl;
    uint64_t tick;
    size_t live;
    EVP_MD *sha256;        /* fetched once: implicit fetches per digest are measurably slower */
    EVP_MD_CTX *mdctx;     /* reused for every digest */
    entry_t *entries;      /* nsets * WAYS */
    unsigned char *values; /* value_max bytes per entry */
};

int sl_jwt_cache_create(size_t capacity, size_t value_max, uint64_t max_ttl_s, sl_jwt_cache_t **out)
{
    if (capacity == 0 || capacity > MAX_ENTRIES || value_max == 0 || value_max > MAX_VALUE_BYTES || max_ttl_s == 0)
        return SL_EINVALID;
    size_t nsets = 1;
    while (nsets * SL_JWT_CACHE_WAYS < capacity)
        nsets <<= 1;
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!md || !ctx) {
        EVP_MD_free(md);
        EVP_MD_CTX_free(ctx);
        return SL_EINVALID;
    }
    sl_jwt_cache_t *c = sl_xcalloc(1, sizeof(*c));
    c->nsets = nsets;
    c->value_max = value_max;
    c->max_ttl = max_ttl_s;
    c->sha256 = md;
    c->mdctx = ctx;
    c->entries = sl_xcalloc(nsets * SL_JWT_CACHE_WAYS, sizeof(entry_t));
    c->values = sl_xcalloc(nsets * SL_JWT_CACHE_WAYS, value_max);
    *out = c;
    return 0;
}

void sl_jwt_cache_destroy(sl_jwt_cache_t *c)
{
    if (!c)
        return;
    size_t n = c->nsets * SL_JWT_CACHE_WAYS;
    /* Values hold consumer ids and claims: do not leave them in freed memory. */
    OPENSSL_cleanse(c->values, n * c->value_max);
    free(c->values);
    free(c->entries);
    EVP_MD_CTX_free(c->mdctx);
    EVP_MD_free(c->sha256);
    free(c);
}

size_t sl_jwt_cache_count(const sl_jwt_cache_t *c)
{
    return c->live;
}

size_t sl_jwt_cache_capacity(const sl_jwt_cache_t *c)
{
    return c->nsets * SL_JWT_CACHE_WAYS;
}

static bool digest(sl_jwt_cache_t *c, sl_str_t token, unsigned char out[DIGEST_LEN])
{
    unsigned int n = 0;
    return EVP_DigestInit_ex2(c->mdctx, c->sha256, NULL) == 1 &&
           EVP_DigestUpdate(c->mdctx, token.ptr, token.len) == 1 && EVP_DigestFinal_ex(c->mdctx, out, &n) == 1 &&
           n == DIGEST_LEN;
}

static entry_t *set_of(sl_jwt_cache_t *c, const unsigned char d[DIGEST_LEN])
{
    uint64_t h;
    memcpy(&h, d, sizeof(h));
    return &c->entries[(h & (c->nsets - 1)) * SL_JWT_CACHE_WAYS];
}

static unsigned char *value_of(sl_jwt_cache_t *c, const entry_t *e)
{
    return c->values + (size_t)(e - c->entries) * c->value_max;
}

static void entry_free(sl_jwt_cache_t *c, entry_t *e)
{
    e->expires = 0;
    c->live--;
}

int sl_jwt_cache_get(sl_jwt_cache_t *c, sl_str_t token, uint64_t generation, uint64_t now_s, const void **value,
                     size_t *len)
{
    unsigned char d[DIGEST_LEN];
    if (!digest(c, token, d))
        return SL_ENOTFOUND;
    entry_t *set = set_of(c, d);
    for (size_t i = 0; i < SL_JWT_CACHE_WAYS; i++) {
        entry_t *e = &set[i];
        /* A digest is not a secret worth a constant-time compare: it reveals nothing of a token
         * an attacker does not already hold. */
        if (e->expires == 0 || memcmp(e->digest, d, DIGEST_LEN) != 0)
            continue;
        if (e->generation != generation || now_s >= e->expires) {
            entry_free(c, e);
            return SL_ENOTFOUND;
        }
        e->last_used = ++c->tick;
        *value = value_of(c, e);
        *len = e->len;
        return 0;
    }
    return SL_ENOTFOUND;
}

int sl_jwt_cache_put(sl_jwt_cache_t *c, sl_str_t token, uint64_t generation, uint64_t exp, uint64_t now_s,
                     const void *value, size_t len)
{
    if (len > c->value_max)
        return SL_ETOOBIG;
    uint64_t limit = now_s > UINT64_MAX - c->max_ttl ? UINT64_MAX : now_s + c->max_ttl;
    uint64_t expires = (exp != 0 && exp < limit) ? exp : limit;
    if (expires <= now_s)
        return SL_EINVALID;
    unsigned char d[DIGEST_LEN];
    if (!digest(c, token, d))
        return SL_EINVALID;
    entry_t *set = set_of(c, d), *slot = NULL, *free_slot = NULL, *stale = NULL, *lru = &set[0];
    for (size_t i = 0; i < SL_JWT_CACHE_WAYS; i++) {
        entry_t *e = &set[i];
        if (e->expires == 0) {
            if (!free_slot)
                free_slot = e;
            continue;
        }
        if (memcmp(e->digest, d, DIGEST_LEN) == 0) {
            slot = e;
            break;
        }
        if (!stale && (e->generation != generation || now_s >= e->expires))
            stale = e;
        if (e->last_used < lru->last_used || lru->expires == 0)
            lru = e;
    }
    if (!slot)
        slot = free_slot ? free_slot : stale ? stale : lru;
    if (slot->expires == 0)
        c->live++;
    memcpy(slot->digest, d, DIGEST_LEN);
    slot->expires = expires;
    slot->generation = generation;
    slot->last_used = ++c->tick;
    slot->len = (uint32_t)len;
    if (len)
        memcpy(value_of(c, slot), value, len);
    return 0;
}
