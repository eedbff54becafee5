/*
 * Key table of a route's `cache` (docs/cache.md): the RFC 9111 shared cache in front of the
 * route's upstream. Everything the cache would otherwise have to guard against at request time
 * (an object limit of zero, a coalescing wait of zero) is rejected here, with a position; the
 * gateway-wide byte budget is `limits.cache_memory` (keys.c).
 */
#include <stddef.h>

#include "config/internal.h"

/* Longer than a year is a typo: HTTP caches cap freshness there too (RFC 9111 §1.2.2). */
#define CACHE_DURATION_MAX (365ull * 24 * 60 * 60 * 1000)

static const sl__config_key_t cache_keys[] = {
    {.name = "ttl",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_cache_conf_t, ttl_ms),
     .min = 0,
     .max = CACHE_DURATION_MAX},
    {.name = "max_object_size",
     .type = SL__CT_SIZE,
     .offset = offsetof(sl_cache_conf_t, max_object_size),
     .dflt = "1mb",
     .min = 1,
     .max = 1ull << 30},
    {.name = "stale_if_error",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_cache_conf_t, stale_if_error_ms),
     .min = 0,
     .max = CACHE_DURATION_MAX},
    {.name = "stale_while_revalidate",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_cache_conf_t, stale_while_revalidate_ms),
     .min = 0,
     .max = CACHE_DURATION_MAX},
    {.name = "max_variants",
     .type = SL__CT_U32,
     .offset = offsetof(sl_cache_conf_t, max_variants),
     .dflt = "8",
     .min = 1,
     .max = 64},
    {.name = "per_consumer", .type = SL__CT_BOOL, .offset = offsetof(sl_cache_conf_t, per_consumer)},
    {.name = "lock_timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_cache_conf_t, lock_timeout_ms),
     .dflt = "5s",
     .min = 1,
     .max = 60000},
};

static const sl__config_section_t cache_section = {
    .what = "cache",
    .keys = cache_keys,
    .nkeys = sizeof(cache_keys) / sizeof(cache_keys[0]),
    .pos_offset = offsetof(sl_cache_conf_t, pos),
};

int sl__config_parse_route_cache(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field)
{
    sl_route_conf_t *r = field;
    r->cache.enabled = true;
    sl__config_defaults(ctx, &cache_section, &r->cache);
    return sl__config_walk(ctx, &cache_section, k->name, v, &r->cache);
}
