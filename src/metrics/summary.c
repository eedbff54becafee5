/* Totals for /status; see summary.h. */
#include "metrics/summary.h"

#include <string.h>

#include "metrics/internal.h"

static uint64_t hist_count(const sl__metrics_hist_t *h)
{
    uint64_t n = 0;
    for (size_t b = 0; b <= SL__METRICS_NBUCKETS; b++)
        n += atomic_load_explicit(&h->buckets[b], memory_order_relaxed);
    return n;
}

void sl_metrics_summary(const sl_metrics_t *m, sl_metrics_summary_t *out)
{
    memset(out, 0, sizeof(*out));
    int64_t active = 0, idle = 0;
    for (size_t i = 0; i < m->nworkers; i++) {
        sl_metrics_worker_t *w = m->workers[i];
        out->bytes_in += sl__metrics_load(&w->bytes_in);
        out->bytes_out += sl__metrics_load(&w->bytes_out);
        out->connections_accepted_total += sl__metrics_load(&w->accepted);
        active += atomic_load_explicit(&w->active, memory_order_relaxed);
        idle += atomic_load_explicit(&w->idle, memory_order_relaxed);
        for (size_t slot = 0; slot < m->routes_allocated && slot < SL__METRICS_ROUTE_SLOTS; slot++) {
            sl__metrics_route_t *r = atomic_load_explicit(&w->routes[slot], memory_order_acquire);
            if (r != NULL)
                out->requests_total += hist_count(&r->duration);
        }
    }
    out->connections_active = active > 0 ? (uint64_t)active : 0;
    out->connections_idle = idle > 0 ? (uint64_t)idle : 0;
}
