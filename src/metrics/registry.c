/*
 * The metrics registry and schemas, on the control (main) thread: the append-only name tables
 * that give every route, upstream and target a stable slot for the life of the process, the
 * per-snapshot schema that maps a config's indices to those slots, and the per-worker storage
 * that the slots index. Workers only ever see finished schemas and pre-allocated storage.
 */
#include "metrics/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/bug.h"
#include "common/log.h"
#include "common/time.h"
#include "metrics/internal.h"

#define NO_SLOT UINT32_MAX

uint64_t sl__metrics_hash(uint32_t scope, sl_str_t name)
{
    /* FNV-1a, then the scope mixed in: names are short config identifiers, not attacker input. */
    uint64_t h = 1469598103934665603ull ^ ((uint64_t)scope * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < name.len; i++) {
        h ^= (unsigned char)name.ptr[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* ---- name tables -------------------------------------------------------------------------- */

static size_t pow2_at_least(size_t n)
{
    size_t p = 2;
    while (p < n)
        p <<= 1;
    return p;
}

static void names_init(sl__metrics_names_t *t, size_t cap)
{
    t->names = sl_xcalloc(cap, sizeof(*t->names));
    t->scope = sl_xcalloc(cap, sizeof(*t->scope));
    t->mask = pow2_at_least(2 * cap) - 1;
    t->index = sl_xcalloc(t->mask + 1, sizeof(*t->index));
    t->len = 0;
    t->cap = cap;
}

static void names_dispose(sl__metrics_names_t *t)
{
    free(t->names);
    free(t->scope);
    free(t->index);
}

/* The slot of (scope, name), added when new; NO_SLOT when the table is full. */
static uint32_t names_intern(sl_metrics_t *m, sl__metrics_names_t *t, uint32_t scope, sl_str_t name)
{
    size_t i = (size_t)sl__metrics_hash(scope, name) & t->mask;
    for (;; i = (i + 1) & t->mask) {
        uint32_t e = t->index[i];
        if (e == 0)
            break;
        if (t->scope[e - 1] == scope && sl_str_eq(t->names[e - 1], name))
            return e - 1;
    }
    if (t->len == t->cap)
        return NO_SLOT;
    /* The index is twice the capacity, so an empty entry was found above. */
    uint32_t slot = (uint32_t)t->len++;
    t->names[slot] = sl_arena_str_dup(&m->arena, name);
    t->scope[slot] = scope;
    t->index[i] = slot + 1;
    return slot;
}

/* ---- per-worker storage ------------------------------------------------------------------- */

static void storage_alloc(sl_metrics_worker_t *w, size_t route_from, size_t route_to, size_t tgt_from, size_t tgt_to)
{
    /* Release: a worker that later receives a schema naming these slots sees zeroed storage. */
    for (size_t i = route_from; i < route_to; i++)
        atomic_store_explicit(&w->routes[i], sl_xcalloc(1, sizeof(sl__metrics_route_t)), memory_order_release);
    for (size_t i = tgt_from; i < tgt_to; i++)
        atomic_store_explicit(&w->targets[i], sl_xcalloc(1, sizeof(sl__metrics_target_t)), memory_order_release);
}

static void storage_grow(sl_metrics_t *m)
{
    for (size_t i = 0; i < m->nworkers; i++)
        storage_alloc(m->workers[i], m->routes_allocated, m->routes.len, m->targets_allocated, m->targets.len);
    m->routes_allocated = m->routes.len;
    m->targets_allocated = m->targets.len;
}

static sl_metrics_worker_t *worker_new(sl_metrics_t *m)
{
    sl_metrics_worker_t *w = sl_xcalloc(1, sizeof(*w));
    w->m = m;
    storage_alloc(w, 0, m->routes_allocated, 0, m->targets_allocated);
    return w;
}

static void worker_free(sl_metrics_worker_t *w)
{
    for (size_t i = 0; i < SL__METRICS_ROUTE_SLOTS; i++)
        free(atomic_load_explicit(&w->routes[i], memory_order_relaxed));
    for (size_t i = 0; i < SL__METRICS_TGT_SLOTS; i++)
        free(atomic_load_explicit(&w->targets[i], memory_order_relaxed));
    free(w);
}

static void hist_fold(sl__metrics_hist_t *dst, sl__metrics_hist_t *src)
{
    for (size_t b = 0; b <= SL__METRICS_NBUCKETS; b++)
        sl__metrics_add(&dst->buckets[b], sl__metrics_load(&src->buckets[b]));
    sl__metrics_add(&dst->sum_ns, sl__metrics_load(&src->sum_ns));
}

/* Adds a finished worker's counters to `retired`, so no exported counter goes down when a
 * worker goes away. Gauges are not folded: its connections are gone. */
static void worker_fold(sl_metrics_worker_t *dst, sl_metrics_worker_t *src, const sl_metrics_t *m)
{
    sl__metrics_add(&dst->bytes_in, sl__metrics_load(&src->bytes_in));
    sl__metrics_add(&dst->bytes_out, sl__metrics_load(&src->bytes_out));
    sl__metrics_add(&dst->accepted, sl__metrics_load(&src->accepted));
    for (size_t i = 0; i < m->routes_allocated; i++) {
        sl__metrics_route_t *s = atomic_load_explicit(&src->routes[i], memory_order_acquire);
        sl__metrics_route_t *d = atomic_load_explicit(&dst->routes[i], memory_order_relaxed);
        for (size_t k = 0; k < SL_METRICS_ROUTE_KEYS; k++) {
            uint32_t key = atomic_load_explicit(&s->keys[k], memory_order_acquire);
            uint64_t n = sl__metrics_load(&s->counts[k]);
            if (key != 0 && n != 0)
                sl__metrics_route_count(d, key, n);
        }
        sl__metrics_add(&d->overflow, sl__metrics_load(&s->overflow));
        hist_fold(&d->duration, &s->duration);
        for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++)
            sl__metrics_add(&d->auth[k], sl__metrics_load(&s->auth[k]));
        for (size_t k = 0; k < SL_METRICS_RATE_LIMITS; k++)
            sl__metrics_add(&d->rate_limited[k], sl__metrics_load(&s->rate_limited[k]));
        for (size_t k = 0; k < SL_METRICS_CACHE__COUNT; k++)
            sl__metrics_add(&d->cache[k], sl__metrics_load(&s->cache[k]));
    }
    for (size_t i = 0; i < m->targets_allocated; i++) {
        sl__metrics_target_t *d = atomic_load_explicit(&dst->targets[i], memory_order_relaxed);
        sl__metrics_target_t *s = atomic_load_explicit(&src->targets[i], memory_order_acquire);
        hist_fold(&d->first_byte, &s->first_byte);
        for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
            sl__metrics_add(&d->errors[k], sl__metrics_load(&s->errors[k]));
    }
}

/* ---- the registry ------------------------------------------------------------------------- */

/* Process start as Unix seconds: boot time (/proc/stat btime) plus the process' start in clock
 * ticks since boot (/proc/self/stat field 22). 0 when either cannot be read. */
static uint64_t read_start_time(void)
{
    char buf[1024];
    unsigned long long btime = 0, start_ticks = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return 0;
    while (fgets(buf, sizeof(buf), f) != NULL)
        if (sscanf(buf, "btime %llu", &btime) == 1)
            break;
    fclose(f);
    f = fopen("/proc/self/stat", "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: count fields after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL || btime == 0)
        return 0;
    p++;
    /* p is at the space before field 3; step to the space before field 22 */
    for (int field = 3; field < 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    long hz = sysconf(_SC_CLK_TCK);
    if (p == NULL || sscanf(p, " %llu", &start_ticks) != 1 || hz <= 0)
        return 0;
    return btime + start_ticks / (unsigned long long)hz;
}

void sl_metrics_create(sl_metrics_t **out)
{
    sl_metrics_t *m = sl_xcalloc(1, sizeof(*m));
    sl_arena_init(&m->arena, 4096);
    names_init(&m->routes, SL__METRICS_ROUTE_SLOTS);
    names_init(&m->upstreams, SL__METRICS_UP_SLOTS);
    names_init(&m->targets, SL__METRICS_TGT_SLOTS);
    /* The reserved slots first, so their numbers are the SL__METRICS_* constants. */
    SL_BUG_ON(names_intern(m, &m->routes, 0, SL_STR_LIT(SL_METRICS_ROUTE_NONE)) != SL__METRICS_ROUTE_NONE);
    SL_BUG_ON(names_intern(m, &m->routes, 0, SL_STR_LIT(SL_METRICS_OVERFLOW)) != SL__METRICS_ROUTE_OVERFLOW);
    SL_BUG_ON(names_intern(m, &m->upstreams, 0, SL_STR_LIT(SL_METRICS_OVERFLOW)) != SL__METRICS_UP_OVERFLOW);
    SL_BUG_ON(names_intern(m, &m->targets, SL__METRICS_UP_OVERFLOW, SL_STR_LIT(SL_METRICS_OVERFLOW)) !=
              SL__METRICS_TGT_OVERFLOW);
    m->capworkers = 8;
    m->workers = sl_xcalloc(m->capworkers, sizeof(*m->workers));
    m->workers[m->nworkers++] = worker_new(m);
    storage_grow(m);
    /* The initial load counts as the last successful one: the gauge then says how old the
     * running config is from the start. */
    atomic_store_explicit(&m->last_reload_wall_ms, sl_time_wall_ms(), memory_order_relaxed);
    m->start_time_s = read_start_time();
    *out = m;
}

void sl_metrics_destroy(sl_metrics_t *m)
{
    if (m == NULL)
        return;
    SL_BUG_ON(m->nworkers != 1); /* only `retired` may be left */
    worker_free(m->workers[0]);
    free(m->workers);
    names_dispose(&m->routes);
    names_dispose(&m->upstreams);
    names_dispose(&m->targets);
    sl_arena_dispose(&m->arena);
    free(m);
}

void sl_metrics_worker_create(sl_metrics_t *m, sl_metrics_worker_t **out)
{
    if (m->nworkers == m->capworkers) {
        m->capworkers *= 2;
        m->workers = sl_xrealloc(m->workers, m->capworkers * sizeof(*m->workers));
    }
    sl_metrics_worker_t *w = worker_new(m);
    m->workers[m->nworkers++] = w;
    *out = w;
}

void sl_metrics_worker_destroy(sl_metrics_worker_t *w)
{
    if (w == NULL)
        return;
    sl_metrics_t *m = w->m;
    size_t i = 1;
    while (i < m->nworkers && m->workers[i] != w)
        i++;
    SL_BUG_ON(i == m->nworkers);
    worker_fold(m->workers[0], w, m);
    memmove(&m->workers[i], &m->workers[i + 1], (m->nworkers - i - 1) * sizeof(*m->workers));
    m->nworkers--;
    worker_free(w);
}

void sl_metrics_reload_result(sl_metrics_t *m, bool ok)
{
    if (ok) {
        atomic_fetch_add_explicit(&m->reloads_ok, 1, memory_order_relaxed);
        atomic_store_explicit(&m->last_reload_wall_ms, sl_time_wall_ms(), memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&m->reloads_failed, 1, memory_order_relaxed);
    }
}

sl_str_t sl__metrics_target_upstream(const sl_metrics_t *m, uint32_t target_slot)
{
    return m->upstreams.names[m->targets.scope[target_slot]];
}

/* ---- schemas ------------------------------------------------------------------------------ */

typedef struct order_item {
    sl_str_t a, b;
    uint32_t slot;
    uint32_t cfg; /* flat config index, SL__METRICS_NO_CFG for reserved entries */
} order_item_t;

static int cmp_str(sl_str_t x, sl_str_t y)
{
    size_t n = SL_MIN(x.len, y.len);
    int c = n != 0 ? memcmp(x.ptr, y.ptr, n) : 0;
    return c != 0 ? c : (x.len > y.len) - (x.len < y.len);
}

static int cmp_order(const void *pa, const void *pb)
{
    const order_item_t *x = pa, *y = pb;
    int c = cmp_str(x->a, y->a);
    return c != 0 ? c : cmp_str(x->b, y->b);
}

static int cmp_order_cfg(const void *pa, const void *pb)
{
    const order_item_t *x = pa, *y = pb;
    int c = cmp_order(pa, pb);
    return c != 0 ? c : (x->cfg > y->cfg) - (x->cfg < y->cfg);
}

/* Sorts by label values and drops repeated slots (two config entries with one name, e.g. a
 * target listed twice): a series must appear once in the exposition. */
static uint32_t *sorted_unique(order_item_t *items, size_t n, size_t *nout, uint32_t **cfg_out)
{
    /* Ties broken by config index: the first config entry of a repeated target names its gauges. */
    qsort(items, n, sizeof(*items), cmp_order_cfg);
    uint32_t *slots = sl_xmalloc((n ? n : 1) * sizeof(*slots));
    uint32_t *cfg = cfg_out != NULL ? sl_xmalloc((n ? n : 1) * sizeof(*cfg)) : NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || cmp_order(&items[i], &items[i - 1]) != 0) {
            if (cfg != NULL)
                cfg[k] = items[i].cfg;
            slots[k++] = items[i].slot;
        }
    *nout = k;
    if (cfg_out != NULL)
        *cfg_out = cfg;
    return slots;
}

static uint32_t intern_or_overflow(sl_metrics_t *m, sl__metrics_names_t *t, uint32_t scope, sl_str_t name,
                                   uint32_t overflow, size_t *lost)
{
    uint32_t slot = names_intern(m, t, scope, name);
    if (slot != NO_SLOT)
        return slot;
    (*lost)++;
    return overflow;
}

void sl_metrics_set_rate_limit_source(sl_metrics_t *m, uint64_t (*full_total)(const void *ctx), const void *ctx)
{
    m->rate_full_total = full_total;
    m->rate_full_ctx = ctx;
}

void sl_metrics_set_access_log_source(sl_metrics_t *m, uint64_t (*dropped_total)(void))
{
    m->access_log_dropped = dropped_total;
}

void sl_metrics_set_store_source(sl_metrics_t *m, void (*get)(const void *ctx, sl_metrics_store_figures_t *out),
                                 const void *ctx)
{
    m->store_get = get;
    m->store_ctx = ctx;
}

/* The limit labels of every route, so a refusal's detail ("rate_limit:<label>") maps back to
 * its limit's counter and the exposition names it. Bounded: labels come from the config. */
static void rate_limit_labels(sl_metrics_schema_t *s, const sl_config_t *cfg)
{
    size_t nlabels = 0;
    for (size_t i = 0; i < cfg->nroutes; i++)
        nlabels += cfg->nrate_limits + cfg->routes[i].nrate_limits;
    enum { LABEL_MAX = 136 };
    s->rl_base = sl_xmalloc((cfg->nroutes + 1) * sizeof(*s->rl_base));
    s->rl_labels = sl_xmalloc((nlabels ? nlabels : 1) * sizeof(*s->rl_labels));
    s->rl_text = sl_xmalloc((nlabels ? nlabels : 1) * LABEL_MAX);
    size_t k = 0;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        s->rl_base[i] = (uint32_t)k;
        const sl_route_conf_t *r = &cfg->routes[i];
        for (size_t j = 0; j < cfg->nrate_limits + r->nrate_limits; j++, k++) {
            bool global = j < cfg->nrate_limits;
            const sl_rate_limit_conf_t *l = global ? &cfg->rate_limits[j] : &r->rate_limits[j - cfg->nrate_limits];
            char *text = s->rl_text + k * LABEL_MAX;
            sl_rate_limit_label(l, global ? j : j - cfg->nrate_limits, global, text, LABEL_MAX);
            s->rl_labels[k] = sl_str_from_cstr(text);
        }
    }
    s->rl_base[cfg->nroutes] = (uint32_t)k;
}

int sl_metrics_schema_create(sl_metrics_t *m, const sl_config_t *cfg, sl_metrics_schema_t **out)
{
    sl_metrics_schema_t *s = sl_xcalloc(1, sizeof(*s));
    size_t lost_routes = 0, lost_upstreams = 0, lost_targets = 0;
    rate_limit_labels(s, cfg);

    s->nroutes = cfg->nroutes;
    s->route_slot = sl_xmalloc((cfg->nroutes ? cfg->nroutes : 1) * sizeof(*s->route_slot));
    s->route_name = m->routes.names;
    s->route_mask = pow2_at_least(2 * cfg->nroutes) - 1;
    s->route_index = sl_xcalloc(s->route_mask + 1, sizeof(*s->route_index));
    for (size_t i = 0; i < cfg->nroutes; i++) {
        sl_str_t name = cfg->routes[i].name;
        s->route_slot[i] = intern_or_overflow(m, &m->routes, 0, name, SL__METRICS_ROUTE_OVERFLOW, &lost_routes);
        size_t h = (size_t)sl__metrics_hash(0, name) & s->route_mask;
        while (s->route_index[h] != 0 && !sl_str_eq(cfg->routes[s->route_index[h] - 1].name, name))
            h = (h + 1) & s->route_mask;
        if (s->route_index[h] == 0)
            s->route_index[h] = (uint32_t)i + 1;
    }

    size_t ntargets = 0;
    for (size_t u = 0; u < cfg->nupstreams; u++)
        ntargets += cfg->upstreams[u].ntargets;
    s->nupstreams = cfg->nupstreams;
    s->target_base = sl_xmalloc((cfg->nupstreams + 1) * sizeof(*s->target_base));
    s->target_slot = sl_xmalloc((ntargets ? ntargets : 1) * sizeof(*s->target_slot));
    size_t t = 0;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const sl_upstream_conf_t *uc = &cfg->upstreams[u];
        uint32_t us = intern_or_overflow(m, &m->upstreams, 0, uc->name, SL__METRICS_UP_OVERFLOW, &lost_upstreams);
        s->target_base[u] = (uint32_t)t;
        for (size_t j = 0; j < uc->ntargets; j++, t++) {
            if (us == SL__METRICS_UP_OVERFLOW) {
                s->target_slot[t] = SL__METRICS_TGT_OVERFLOW;
                lost_targets++;
                continue;
            }
            s->target_slot[t] =
                intern_or_overflow(m, &m->targets, us, uc->targets[j].address, SL__METRICS_TGT_OVERFLOW, &lost_targets);
        }
    }
    s->target_base[cfg->nupstreams] = (uint32_t)t;

    if (lost_routes + lost_upstreams + lost_targets != 0)
        sl_log_warn("metrics: the name tables are full (%d routes, %d upstreams, %d targets per process): "
                    "%zu routes, %zu upstreams and %zu targets of this config are counted as \"%s\"",
                    SL_METRICS_MAX_ROUTES, SL_METRICS_MAX_UPSTREAMS, SL_METRICS_MAX_TARGETS, lost_routes,
                    lost_upstreams, lost_targets, SL_METRICS_OVERFLOW);

    /* Export order. The reserved slots are always listed; the renderer skips overflow series
     * that never counted anything. */
    order_item_t *items = sl_xmalloc((cfg->nroutes + ntargets + 2) * sizeof(*items));
    size_t n = 0;
    items[n++] = (order_item_t){m->routes.names[SL__METRICS_ROUTE_NONE], SL_STR_NULL, SL__METRICS_ROUTE_NONE,
                                SL__METRICS_NO_CFG};
    items[n++] = (order_item_t){m->routes.names[SL__METRICS_ROUTE_OVERFLOW], SL_STR_NULL, SL__METRICS_ROUTE_OVERFLOW,
                                SL__METRICS_NO_CFG};
    for (size_t i = 0; i < cfg->nroutes; i++)
        items[n++] = (order_item_t){m->routes.names[s->route_slot[i]], SL_STR_NULL, s->route_slot[i], (uint32_t)i};
    s->route_order = sorted_unique(items, n, &s->nroute_order, &s->route_order_cfg);
    n = 0;
    items[n++] = (order_item_t){m->upstreams.names[SL__METRICS_UP_OVERFLOW], m->targets.names[SL__METRICS_TGT_OVERFLOW],
                                SL__METRICS_TGT_OVERFLOW, SL__METRICS_NO_CFG};
    for (size_t i = 0; i < ntargets; i++) {
        uint32_t slot = s->target_slot[i];
        /* Targets counted as overflow stand for no one config target. */
        uint32_t ci = slot == SL__METRICS_TGT_OVERFLOW ? SL__METRICS_NO_CFG : (uint32_t)i;
        items[n++] = (order_item_t){sl__metrics_target_upstream(m, slot), m->targets.names[slot], slot, ci};
    }
    s->target_order = sorted_unique(items, n, &s->ntarget_order, &s->target_order_cfg);
    free(items);

    storage_grow(m);
    *out = s;
    return 0;
}

void sl_metrics_schema_destroy(sl_metrics_schema_t *s)
{
    if (s == NULL)
        return;
    free(s->route_slot);
    free(s->route_index);
    free(s->target_base);
    free(s->target_slot);
    free(s->route_order);
    free(s->route_order_cfg);
    free(s->rl_base);
    free(s->rl_labels);
    free(s->rl_text);
    free(s->target_order);
    free(s->target_order_cfg);
    free(s);
}
