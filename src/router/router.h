/*
 * The router: compiles a generation's routes into match tables once, then maps each request to
 * one route in time independent of the number of routes (hash of exact hosts, wildcard hosts by
 * suffix, per host a hash of exact paths and a prefix trie; regexes only where configured).
 *
 * Precedence (docs/routing.md): the most specific host group first (exact host, then wildcard
 * hosts longest suffix first, then routes without hosts), falling back to the next group when
 * nothing in a group matches the path; inside a group the path decides: exact path, then the
 * longest path_prefix, then path_regex routes in config order, then routes without a path; among
 * routes equal on host and path, config order, and the first whose methods and header matches
 * accept the request wins. When some route matched host and path but none accepted the method,
 * the answer is method_not_allowed with the allowed methods.
 *
 * A compiled router is immutable and owned by whoever created it (the runtime snapshot);
 * sl_router_match may be called from any thread at once.
 */
#ifndef SL_ROUTER_ROUTER_H
#define SL_ROUTER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "config/config.h"
#include "http/header.h"
#include "http/method.h"

typedef struct sl_router sl_router_t;

typedef struct sl_router_input {
    sl_str_t host; /* Host without the port, any case */
    sl_str_t path; /* without the query */
    enum sl_method method;
    sl_str_t method_token; /* for SL_METHOD_OTHER */
    const sl_header_t *headers;
    size_t nheaders;
} sl_router_input_t;

enum sl_router_status {
    SL_ROUTER_MATCHED = 1,
    SL_ROUTER_NOT_FOUND,
    SL_ROUTER_METHOD_NOT_ALLOWED,
};

typedef struct sl_router_result {
    enum sl_router_status status;
    size_t route_index;       /* into cfg->routes, when MATCHED */
    uint32_t allowed_methods; /* SL_METHOD_BIT set, when METHOD_NOT_ALLOWED (for the Allow header) */
} sl_router_result_t;

/**
 * Compiles `cfg->routes`. The router keeps a pointer to `cfg` and does not take a reference:
 * the caller keeps cfg alive longer than the router. On failure returns SL_ECONFIG with errors
 * (positions from the route) appended to `errs`, and `*out` is untouched.
 */
int sl_router_create(const sl_config_t *cfg, sl_router_t **out, sl_config_errors_t *errs);
void sl_router_destroy(sl_router_t *r);

/** Finds the route for a request. Allocation-free; thread-safe. */
void sl_router_match(const sl_router_t *r, const sl_router_input_t *in, sl_router_result_t *out);

/**
 * The routes in the order matching tries them, for display (`GET /routes?view=table`,
 * `sluice routes`): routes with an exact host first, then wildcard hosts by longest suffix,
 * then routes without hosts; inside each, exact paths, prefixes longest first, regexes, routes
 * without a path; ties in config order. Precedence is per request, so this is one total order
 * consistent with it: a route with several hosts is listed once, under its most specific host.
 * Writes min(cap, routes) indices into cfg->routes to `out_indices` and returns the number of
 * routes (call with cap 0 to size the array). Allocates scratch only; thread-safe.
 */
size_t sl_router_match_order(const sl_router_t *r, size_t *out_indices, size_t cap);

/**
 * The path to send upstream for route `route_index`: strip_prefix applied, then the rewrite
 * regex substituted. Returns `path` itself when the route changes nothing, otherwise a string in
 * `arena`. Returns 0, or SL_ETOOBIG if the result would exceed 8 KiB (then `*out` untouched).
 */
int sl_router_rewrite_path(const sl_router_t *r, size_t route_index, sl_str_t path, sl_arena_t *arena, sl_str_t *out);

#endif
