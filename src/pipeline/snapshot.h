/*
 * The runtime snapshot: one config generation with everything compiled from it (the router,
 * the upstreams' runtime state). Immutable and reference-counted; the server publishes a new
 * one on reload and every exchange holds the one it started with until it ends, so a reload
 * never changes a request mid-flight.
 */
#ifndef SL_PIPELINE_SNAPSHOT_H
#define SL_PIPELINE_SNAPSHOT_H

#include <stdatomic.h>
#include <stdint.h>

#include "config/config.h"
#include "http/exchange.h"
#include "metrics/metrics.h"
#include "router/router.h"

typedef struct sl_snapshot sl_snapshot_t;

struct sl_snapshot {
    atomic_uint refcount;
    uint64_t generation;
    sl_config_t *cfg;             /* one reference owned by the snapshot */
    sl_router_t *router;          /* owned */
    sl_metrics_schema_t *metrics; /* owned; NULL when metrics are off (sluice check) */
    /* The proxy's runtime state, released through upstreams_release. Per upstream it may be
     * shared with the snapshots before and after this one (src/upstream/proxy.h). */
    void *upstreams;
    void (*upstreams_release)(void *upstreams);
    /* The filter chain of each route (cfg->routes' indices), built and released by the filters
     * module (src/filters/registry.c); NULL when no route has a filter. */
    struct sl_chain *chains;
    void (*chains_release)(struct sl_chain *chains, size_t n);
    /* The terminal handler of routes with an upstream. */
    void (*proxy)(sl_exchange_t *x, const sl_route_conf_t *route);
};

/** Takes ownership of `cfg` and `router`; refcount 1 for the caller. */
sl_snapshot_t *sl_snapshot_create(sl_config_t *cfg, sl_router_t *router);
sl_snapshot_t *sl_snapshot_ref(sl_snapshot_t *s);
/** Drops a reference; the last frees router, upstream state and the config reference. */
void sl_snapshot_unref(sl_snapshot_t *s);

#endif
