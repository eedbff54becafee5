/*
 * Private to src/filters: the per-snapshot data filters share (consumer indexes, trusted
 * proxies) and helpers used by more than one filter.
 */
#ifndef SL_FILTERS_INTERNAL_H
#define SL_FILTERS_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "filters/filters.h"
#include "http/exchange.h"

typedef struct sl__ip_trust sl__ip_trust_t;
typedef struct sl__consumers sl__consumers_t;
struct sl_jwks_store;

sl__ip_trust_t *sl__ip_trust_create(const sl_config_t *cfg);
void sl__ip_trust_destroy(sl__ip_trust_t *t);

/** The client address of `x`: the peer, or behind trusted proxies the right-most untrusted
 *  X-Forwarded-For entry. False when the exchange has no peer address. */
bool sl__client_addr(const sl_exchange_t *x, const sl__ip_trust_t *t, int *family, uint8_t addr[16]);

/* Accessors of the `shared` pointer given to every filter's create. */
const sl__ip_trust_t *sl__filters_shared_trust(void *shared);
const sl__consumers_t *sl__filters_shared_consumers(void *shared);
struct sl_jwks_store *sl__filters_shared_jwks(void *shared);
const struct sl_fetcher *sl__filters_shared_fetcher(void *shared);
struct sl_gcra_table *sl__filters_shared_rate_table(void *shared);
struct sl_store *sl__filters_shared_store(void *shared);

/* ---- rate limits and quotas (rate_limit.c, quota.c) ---- */

/* The limiter table's clock (gcra.h takes any ns clock): monotonic ns plus 2^62, so a quota can
 * name the start of a calendar window that began before the machine booted. 2^62 ns more is
 * still 146 years below the table's limit of 2^63. */
#define SL__TABLE_TIME_BIAS SL_FILTERS_RATE_TABLE_CLOCK_BIAS

/* The calling worker's Redis connection (sl_filters_set_thread_store), or NULL. */
struct sl_store_worker *sl__rate_thread_store(void);

/** The Redis key text of (limit identity, key value): the identity's length (2 bytes), the
 *  identity, then the value. Stable across nodes and restarts (unlike the digest, keyed per
 *  process). `buf` holds SL__RATE_KEY_TEXT_BUF bytes. */
#define SL__RATE_KEY_TEXT_BUF (SL__RATE_KEY_BUF + 2 + 256)
size_t sl__rate_key_text(sl_str_t id, const uint8_t *value, size_t len, char *buf);

/* Bytes sl__rate_key_value may write. */
#define SL__RATE_KEY_BUF (SL_RATE_KEY_MAX_PARTS * (256 + 3) + 64)

/** The request's value for the key of `l` (consumer, ip, route, header:NAME parts) into `buf`;
 *  false when the limit does not apply (a header part is absent). */
bool sl__rate_key_value(const sl_exchange_t *x, const sl__ip_trust_t *trust, const sl_rate_limit_conf_t *l,
                        uint8_t *buf, size_t *len);

/* ---- usage reads (filters/usage.h; rate_limit.c, quota.c) ---- */

/** Records the process's limiter table for usage reads (rate and quota creates call it). */
void sl__rate_note_table(struct sl_gcra_table *t);
/** The key value a request identified as `consumer` on `route` has for `l` (the bytes
 *  sl__rate_key_value would build); false when the key has an ip or header part. */
bool sl__rate_usage_key(const sl_rate_limit_conf_t *l, sl_str_t consumer, sl_str_t route, uint8_t *buf, size_t *len);
struct sl_filters_usage_item;
/** Fills `it` (figures only) with the quota of `route` for the key value `val` (quota.c). */
void sl__quota_usage(const sl_route_conf_t *route, const struct sl_gcra_table *t, const uint8_t *val, size_t len,
                     uint64_t now_mono_ns, uint64_t now_wall_ns, struct sl_filters_usage_item *it);

/* ---- consumer index (consumers.c) ---- */
sl__consumers_t *sl__consumers_create(const sl_config_t *cfg);
void sl__consumers_destroy(sl__consumers_t *c);
/** The consumer whose API key hashes to `sha256`, or NULL. Compared in constant time. */
const sl_consumer_conf_t *sl__consumers_by_key(const sl__consumers_t *c, const uint8_t sha256[32]);
/** The consumer and credential of a Basic username, or NULL. */
const sl_consumer_conf_t *sl__consumers_by_user(const sl__consumers_t *c, sl_str_t username,
                                                const sl_basic_cred_conf_t **cred);
/** The consumer named `name`, or NULL. */
const sl_consumer_conf_t *sl__consumers_by_name(const sl__consumers_t *c, sl_str_t name);
/** The consumer whose mtls credential is this certificate fingerprint (SHA-256 of the DER),
 *  or NULL. Compared in constant time. */
const sl_consumer_conf_t *sl__consumers_by_fingerprint(const sl__consumers_t *c, const uint8_t sha256[32]);
/** The consumer whose mtls credential is this subject (SL_MTLS_SUBJECT, RFC 4514 string) or
 *  SAN entry (SL_MTLS_SAN; DNS names lower-cased by the caller), or NULL. */
const sl_consumer_conf_t *sl__consumers_by_cert_name(const sl__consumers_t *c, enum sl_mtls_match match,
                                                     sl_str_t value);

/** Marks `x` as identified: X-Consumer-Id and X-Consumer-Groups go upstream. `groups` are
 *  joined with ','; slices must live as long as the exchange (config or arena). */
void sl__identify(sl_exchange_t *x, sl_str_t consumer, const sl_str_t *groups, size_t ngroups);

#endif
