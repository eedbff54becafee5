/*
 * The consumer index of one snapshot: API-key digests, Basic usernames, client-certificate
 * fingerprints, subjects and SANs (mtls) and consumer names to consumers, each an
 * open-addressed table built once (main thread) and read by every worker.
 * A lookup is O(1); the final key comparison is constant-time so the index never tells an
 * attacker how close a guess came.
 */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "filters/internal.h"

typedef struct slot {
    const void *item; /* NULL: empty */
    const sl_consumer_conf_t *consumer;
} slot_t;

typedef struct table {
    slot_t *slots;
    size_t mask;
} table_t;

struct sl__consumers {
    table_t keys;      /* item: sl_api_key_conf_t */
    table_t users;     /* item: sl_basic_cred_conf_t */
    table_t names;     /* item: sl_consumer_conf_t */
    table_t certs;     /* item: sl_mtls_cred_conf_t, SL_MTLS_FINGERPRINT */
    table_t certnames; /* item: sl_mtls_cred_conf_t, SL_MTLS_SUBJECT and SL_MTLS_SAN */
};

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Subjects and SANs share a table: the kind is part of the hash and of the comparison. */
static uint64_t name_hash(enum sl_mtls_match match, sl_str_t v)
{
    return fnv1a(v.ptr, v.len) ^ (uint64_t)match * 0x9e3779b97f4a7c15ull;
}

static void table_init(table_t *t, size_t n)
{
    size_t cap = 8;
    while (cap < n * 2)
        cap *= 2;
    t->slots = sl_xcalloc(cap, sizeof(slot_t));
    t->mask = cap - 1;
}

static void table_put(table_t *t, uint64_t h, const void *item, const sl_consumer_conf_t *c)
{
    size_t i = h & t->mask;
    while (t->slots[i].item != NULL)
        i = (i + 1) & t->mask;
    t->slots[i] = (slot_t){item, c};
}

sl__consumers_t *sl__consumers_create(const sl_config_t *cfg)
{
    sl__consumers_t *ix = sl_xcalloc(1, sizeof(*ix));
    size_t nkeys = 0, nusers = 0, ncerts = 0;
    for (size_t i = 0; i < cfg->nconsumers; i++) {
        nkeys += cfg->consumers[i].napi_keys;
        nusers += cfg->consumers[i].nbasic;
        ncerts += cfg->consumers[i].nmtls;
    }
    table_init(&ix->keys, nkeys);
    table_init(&ix->users, nusers);
    table_init(&ix->names, cfg->nconsumers);
    table_init(&ix->certs, ncerts);
    table_init(&ix->certnames, ncerts);
    for (size_t i = 0; i < cfg->nconsumers; i++) {
        const sl_consumer_conf_t *c = &cfg->consumers[i];
        /* A SHA-256 digest is already uniformly spread: its first bytes are the hash. */
        for (size_t k = 0; k < c->napi_keys; k++) {
            uint64_t h;
            memcpy(&h, c->api_keys[k].sha256, sizeof(h));
            table_put(&ix->keys, h, &c->api_keys[k], c);
        }
        for (size_t k = 0; k < c->nbasic; k++)
            table_put(&ix->users, fnv1a(c->basic[k].username.ptr, c->basic[k].username.len), &c->basic[k], c);
        table_put(&ix->names, fnv1a(c->name.ptr, c->name.len), c, c);
        for (size_t k = 0; k < c->nmtls; k++) {
            const sl_mtls_cred_conf_t *m = &c->mtls[k];
            if (m->match == SL_MTLS_FINGERPRINT) {
                uint64_t h;
                memcpy(&h, m->fingerprint, sizeof(h));
                table_put(&ix->certs, h, m, c);
            } else {
                table_put(&ix->certnames, name_hash(m->match, m->value), m, c);
            }
        }
    }
    return ix;
}

void sl__consumers_destroy(sl__consumers_t *ix)
{
    if (ix == NULL)
        return;
    free(ix->keys.slots);
    free(ix->users.slots);
    free(ix->names.slots);
    free(ix->certs.slots);
    free(ix->certnames.slots);
    free(ix);
}

const sl_consumer_conf_t *sl__consumers_by_key(const sl__consumers_t *ix, const uint8_t sha256[32])
{
    uint64_t h;
    memcpy(&h, sha256, sizeof(h));
    for (size_t i = h & ix->keys.mask; ix->keys.slots[i].item != NULL; i = (i + 1) & ix->keys.mask) {
        const sl_api_key_conf_t *k = ix->keys.slots[i].item;
        if (CRYPTO_memcmp(k->sha256, sha256, 32) == 0)
            return ix->keys.slots[i].consumer;
    }
    return NULL;
}

const sl_consumer_conf_t *sl__consumers_by_user(const sl__consumers_t *ix, sl_str_t username,
                                                const sl_basic_cred_conf_t **cred)
{
    uint64_t h = fnv1a(username.ptr, username.len);
    for (size_t i = h & ix->users.mask; ix->users.slots[i].item != NULL; i = (i + 1) & ix->users.mask) {
        const sl_basic_cred_conf_t *b = ix->users.slots[i].item;
        if (sl_str_eq(b->username, username)) {
            *cred = b;
            return ix->users.slots[i].consumer;
        }
    }
    return NULL;
}

const sl_consumer_conf_t *sl__consumers_by_name(const sl__consumers_t *ix, sl_str_t name)
{
    uint64_t h = fnv1a(name.ptr, name.len);
    for (size_t i = h & ix->names.mask; ix->names.slots[i].item != NULL; i = (i + 1) & ix->names.mask) {
        const sl_consumer_conf_t *c = ix->names.slots[i].item;
        if (sl_str_eq(c->name, name))
            return c;
    }
    return NULL;
}

const sl_consumer_conf_t *sl__consumers_by_fingerprint(const sl__consumers_t *ix, const uint8_t sha256[32])
{
    uint64_t h;
    memcpy(&h, sha256, sizeof(h));
    for (size_t i = h & ix->certs.mask; ix->certs.slots[i].item != NULL; i = (i + 1) & ix->certs.mask) {
        const sl_mtls_cred_conf_t *m = ix->certs.slots[i].item;
        if (CRYPTO_memcmp(m->fingerprint, sha256, 32) == 0)
            return ix->certs.slots[i].consumer;
    }
    return NULL;
}

const sl_consumer_conf_t *sl__consumers_by_cert_name(const sl__consumers_t *ix, enum sl_mtls_match match,
                                                     sl_str_t value)
{
    uint64_t h = name_hash(match, value);
    for (size_t i = h & ix->certnames.mask; ix->certnames.slots[i].item != NULL; i = (i + 1) & ix->certnames.mask) {
        const sl_mtls_cred_conf_t *m = ix->certnames.slots[i].item;
        if (m->match == match && m->value.len == value.len && CRYPTO_memcmp(m->value.ptr, value.ptr, value.len) == 0)
            return ix->certnames.slots[i].consumer;
    }
    return NULL;
}
