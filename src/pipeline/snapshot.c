/*
 * Snapshot lifetime. The refcount is touched twice per exchange (begin and end); that is the one
 * shared write on the plain request path, kept because it makes reload safety obvious.
 */
#include "pipeline/snapshot.h"

#include <stdlib.h>

#include "common/bug.h"

sl_snapshot_t *sl_snapshot_create(sl_config_t *cfg, sl_router_t *router)
{
    sl_snapshot_t *s = sl_xcalloc(1, sizeof(*s));
    atomic_init(&s->refcount, 1);
    s->cfg = cfg;
    s->router = router;
    s->generation = cfg->generation;
    return s;
}

sl_snapshot_t *sl_snapshot_ref(sl_snapshot_t *s)
{
    atomic_fetch_add_explicit(&s->refcount, 1, memory_order_relaxed);
    return s;
}

void sl_snapshot_unref(sl_snapshot_t *s)
{
    if (s == NULL || atomic_fetch_sub_explicit(&s->refcount, 1, memory_order_acq_rel) != 1)
        return;
    if (s->chains_release)
        s->chains_release(s->chains, s->cfg->nroutes);
    if (s->upstreams_release)
        s->upstreams_release(s->upstreams);
    sl_router_destroy(s->router);
    if (s->metrics)
        sl_metrics_schema_destroy(s->metrics);
    sl_config_unref(s->cfg);
    free(s);
}
