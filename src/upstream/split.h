/*
 * Traffic splitting: which upstream of a route's `split` an exchange goes to (canary,
 * blue-green). The proxy calls sl_split_pick once per exchange on routes with nsplit > 0,
 * before the upstream's own balancer picks a target.
 *
 * Memory: nothing is allocated or kept; `r` and `x` are only read during the call.
 * Threads: any thread; the only state written is the caller's `rng`.
 */
#ifndef SL_UPSTREAM_SPLIT_H
#define SL_UPSTREAM_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "http/exchange.h"

/**
 * Returns the index into sl_config_t.upstreams of the upstream for `x`, one of
 * r->split[].upstream_index, chosen in proportion to the weights; an entry of weight 0 is never
 * returned. Without r->sticky the choice is weighted random from `rng` (the calling thread's
 * state, updated in place; any initial value, 0 included). With r->sticky the key (client IP,
 * header or cookie r->sticky_name) is hashed onto the weights, so the same key always gets the
 * same upstream for one set of weights; a request without the key falls back to random.
 * Raising one weight only moves keys towards that upstream. r->nsplit must be > 0 (the config
 * guarantees a positive total weight there). Allocation-free, lock-free.
 */
size_t sl_split_pick(const sl_route_conf_t *r, const sl_exchange_t *x, uint64_t *rng);

/** The sticky key of `x` for route `r` ({NULL, 0} when absent or when `r` is not sticky);
 * slices into x's request. Exposed for tests and for logging. */
sl_str_t sl_split_key(const sl_route_conf_t *r, const sl_exchange_t *x);

#endif
