/*
 * The exposition: GET /metrics on the admin listener calls sl_metrics_render on the main thread,
 * which sums every worker's storage (relaxed loads; workers keep writing meanwhile) and writes
 * the Prometheus text format 0.0.4. One table row per metric family, each with its emit
 * function, so a new series is one row and one function. Families and series come out sorted,
 * so two scrapes of an idle gateway are byte-identical.
 */
#include "metrics/metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/bug.h"
#include "http/cause.h"
#include "http/method.h"
#include "metrics/internal.h"
#include "tls/tls.h"

/* Not a (method,status,cause) key: the per-route table's overflow counter while merging. */
#define OVERFLOW_KEY UINT32_MAX

typedef struct entry {
    uint32_t key;
    uint64_t count;
} entry_t;

typedef struct render {
    char *buf;
    size_t len, cap;
    sl_metrics_t *m;
    const uint32_t *route_order, *target_order;
    const uint32_t *target_order_cfg; /* NULL without a schema */
    const sl_metrics_schema_t *schema;
    const sl_metrics_status_source_t *status;
    size_t nroute_order, ntarget_order;
    entry_t *scratch; /* (SL_METRICS_ROUTE_KEYS + 1) per worker: one route's keys, all workers */
} render_t;

typedef struct hist_sum {
    uint64_t buckets[SL__METRICS_NBUCKETS + 1];
    uint64_t sum_ns, count;
} hist_sum_t;

/* ---- text output -------------------------------------------------------------------------- */

static void put(render_t *r, const char *s, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        while (r->len + n + 1 > r->cap)
            r->cap *= 2;
        r->buf = sl_xrealloc(r->buf, r->cap);
    }
    if (n != 0)
        memcpy(r->buf + r->len, s, n);
    r->len += n;
    r->buf[r->len] = '\0';
}

static void puts_(render_t *r, const char *s)
{
    put(r, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3))) putf(render_t *r, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    SL_BUG_ON(n < 0 || (size_t)n >= sizeof(tmp)); /* only numbers go through here */
    put(r, tmp, (size_t)n);
}

/* Label values escape backslash, double quote and line feed (text format 0.0.4). */
static void put_label_value(render_t *r, sl_str_t v)
{
    size_t start = 0;
    for (size_t i = 0; i < v.len; i++) {
        const char *esc = v.ptr[i] == '\\' ? "\\\\" : v.ptr[i] == '"' ? "\\\"" : v.ptr[i] == '\n' ? "\\n" : NULL;
        if (esc == NULL)
            continue;
        put(r, v.ptr + start, i - start);
        put(r, esc, 2);
        start = i + 1;
    }
    put(r, v.ptr + start, v.len - start);
}

typedef struct label {
    const char *name;
    sl_str_t value;
} label_t;

/* `name``suffix`{labels} where value is written by the caller, then "\n". */
static void sample_head(render_t *r, const char *name, const char *suffix, const label_t *labels, size_t nlabels)
{
    puts_(r, name);
    puts_(r, suffix);
    for (size_t i = 0; i < nlabels; i++) {
        put(r, i == 0 ? "{" : ",", 1);
        puts_(r, labels[i].name);
        put(r, "=\"", 2);
        put_label_value(r, labels[i].value);
        put(r, "\"", 1);
    }
    if (nlabels > 0)
        put(r, "}", 1);
    put(r, " ", 1);
}

static void sample_u64(render_t *r, const char *name, const label_t *labels, size_t nlabels, uint64_t v)
{
    sample_head(r, name, "", labels, nlabels);
    putf(r, "%" PRIu64 "\n", v);
}

static void put_seconds_ns(render_t *r, uint64_t ns)
{
    /* Integer arithmetic: exact, and the same bytes for the same value on every platform. */
    putf(r, "%" PRIu64 ".%09" PRIu64 "\n", ns / 1000000000u, ns % 1000000000u);
}

/* ---- summing the workers ------------------------------------------------------------------ */

static void hist_add(hist_sum_t *sum, sl__metrics_hist_t *h)
{
    if (h == NULL)
        return;
    for (size_t b = 0; b <= SL__METRICS_NBUCKETS; b++)
        sum->buckets[b] += sl__metrics_load(&h->buckets[b]);
    sum->sum_ns += sl__metrics_load(&h->sum_ns);
}

static void hist_finish(hist_sum_t *sum)
{
    /* _count is the +Inf bucket by definition: derive it from the same loads as the buckets. */
    sum->count = 0;
    for (size_t b = 0; b <= SL__METRICS_NBUCKETS; b++)
        sum->count += sum->buckets[b];
}

static void emit_hist(render_t *r, const char *name, const label_t *labels, size_t nlabels, const hist_sum_t *h)
{
    label_t l[4];
    SL_BUG_ON(nlabels + 1 > SL_ARRAY_SIZE(l));
    memcpy(l, labels, nlabels * sizeof(*l));
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= SL__METRICS_NBUCKETS; b++) {
        cumulative += h->buckets[b];
        l[nlabels] = (label_t){"le", sl_str_from_cstr(b < SL__METRICS_NBUCKETS ? sl__metrics_bounds_text[b] : "+Inf")};
        sample_head(r, name, "_bucket", l, nlabels + 1);
        putf(r, "%" PRIu64 "\n", cumulative);
    }
    sample_head(r, name, "_sum", labels, nlabels);
    put_seconds_ns(r, h->sum_ns);
    sample_head(r, name, "_count", labels, nlabels);
    putf(r, "%" PRIu64 "\n", h->count);
}

static sl__metrics_route_t *worker_route(sl_metrics_worker_t *w, uint32_t slot)
{
    return atomic_load_explicit(&w->routes[slot], memory_order_acquire);
}

/* ---- the families ------------------------------------------------------------------------- */

typedef struct family {
    const char *name;
    const char *type;
    const char *help;
    void (*emit)(render_t *r, const struct family *f);
} family_t;

static void emit_cpu(render_t *r, const family_t *f)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return;
    uint64_t us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
                  (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
    sample_head(r, f->name, "", NULL, 0);
    put_seconds_ns(r, us * 1000u);
}

static void emit_max_fds(render_t *r, const family_t *f)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        sample_u64(r, f->name, NULL, 0, rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur);
}

static void emit_open_fds(render_t *r, const family_t *f)
{
    uint64_t n = sl_metrics_read_open_fds();
    if (n != 0)
        sample_u64(r, f->name, NULL, 0, n);
}

static void emit_rss(render_t *r, const family_t *f)
{
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp == NULL)
        return;
    unsigned long long size, resident;
    int ok = fscanf(fp, "%llu %llu", &size, &resident) == 2;
    fclose(fp);
    long page = sysconf(_SC_PAGESIZE);
    if (ok && page > 0)
        sample_u64(r, f->name, NULL, 0, (uint64_t)resident * (uint64_t)page);
}

static void emit_start_time(render_t *r, const family_t *f)
{
    if (r->m->start_time_s != 0)
        sample_u64(r, f->name, NULL, 0, r->m->start_time_s);
}

static void emit_bytes(render_t *r, const family_t *f)
{
    uint64_t in = 0, out = 0;
    for (size_t i = 0; i < r->m->nworkers; i++) {
        in += sl__metrics_load(&r->m->workers[i]->bytes_in);
        out += sl__metrics_load(&r->m->workers[i]->bytes_out);
    }
    sample_u64(r, f->name, &(label_t){"direction", SL_STR_LIT("in")}, 1, in);
    sample_u64(r, f->name, &(label_t){"direction", SL_STR_LIT("out")}, 1, out);
}

static void emit_last_reload(render_t *r, const family_t *f)
{
    uint64_t ms = atomic_load_explicit(&r->m->last_reload_wall_ms, memory_order_relaxed);
    sample_head(r, f->name, "", NULL, 0);
    putf(r, "%" PRIu64 ".%03" PRIu64 "\n", ms / 1000u, ms % 1000u);
}

static void emit_reloads(render_t *r, const family_t *f)
{
    sample_u64(r, f->name, &(label_t){"result", SL_STR_LIT("failure")}, 1,
               atomic_load_explicit(&r->m->reloads_failed, memory_order_relaxed));
    sample_u64(r, f->name, &(label_t){"result", SL_STR_LIT("success")}, 1,
               atomic_load_explicit(&r->m->reloads_ok, memory_order_relaxed));
}

static void emit_connections(render_t *r, const family_t *f)
{
    int64_t active = 0, idle = 0;
    for (size_t i = 0; i < r->m->nworkers; i++) {
        active += atomic_load_explicit(&r->m->workers[i]->active, memory_order_relaxed);
        idle += atomic_load_explicit(&r->m->workers[i]->idle, memory_order_relaxed);
    }
    /* Loads from different workers are not one instant; never show a negative gauge. */
    sample_u64(r, f->name, &(label_t){"state", SL_STR_LIT("active")}, 1, active > 0 ? (uint64_t)active : 0);
    sample_u64(r, f->name, &(label_t){"state", SL_STR_LIT("idle")}, 1, idle > 0 ? (uint64_t)idle : 0);
}

static void emit_accepted(render_t *r, const family_t *f)
{
    uint64_t n = 0;
    for (size_t i = 0; i < r->m->nworkers; i++)
        n += sl__metrics_load(&r->m->workers[i]->accepted);
    sample_u64(r, f->name, NULL, 0, n);
}

static void emit_request_duration(render_t *r, const family_t *f)
{
    for (size_t i = 0; i < r->nroute_order; i++) {
        uint32_t slot = r->route_order[i];
        hist_sum_t h = {0};
        for (size_t w = 0; w < r->m->nworkers; w++) {
            sl__metrics_route_t *rt = worker_route(r->m->workers[w], slot);
            hist_add(&h, rt ? &rt->duration : NULL);
        }
        hist_finish(&h);
        if (slot == SL__METRICS_ROUTE_OVERFLOW && h.count == 0)
            continue;
        label_t l = {"route", r->m->routes.names[slot]};
        emit_hist(r, f->name, &l, 1, &h);
    }
}

typedef struct key_labels {
    const char *method;
    unsigned status; /* 0 = "other" */
    const char *cause;
} key_labels_t;

static key_labels_t key_labels(uint32_t key)
{
    if (key == OVERFLOW_KEY)
        return (key_labels_t){"OTHER", 0, "other"};
    unsigned m = sl__metrics_key_method(key);
    return (key_labels_t){m == SL_METHOD_OTHER ? "OTHER" : sl_method_name((enum sl_method)m),
                          sl__metrics_key_status(key), sl_cause_info((enum sl_cause)sl__metrics_key_cause(key))->name};
}

static int cmp_entry(const void *pa, const void *pb)
{
    key_labels_t a = key_labels(((const entry_t *)pa)->key), b = key_labels(((const entry_t *)pb)->key);
    int c = strcmp(a.method, b.method);
    if (c != 0)
        return c;
    /* Exact codes in numeric order (all three digits, so also label order), "other" last. */
    unsigned sa = a.status ? a.status : 1000, sb = b.status ? b.status : 1000;
    if (sa != sb)
        return sa < sb ? -1 : 1;
    return strcmp(a.cause, b.cause);
}

static void emit_requests(render_t *r, const family_t *f)
{
    for (size_t i = 0; i < r->nroute_order; i++) {
        uint32_t slot = r->route_order[i];
        size_t n = 0;
        for (size_t w = 0; w < r->m->nworkers; w++) {
            sl__metrics_route_t *rt = worker_route(r->m->workers[w], slot);
            if (rt == NULL)
                continue;
            for (size_t k = 0; k < SL_METRICS_ROUTE_KEYS; k++) {
                uint32_t key = atomic_load_explicit(&rt->keys[k], memory_order_acquire);
                if (key != 0)
                    r->scratch[n++] = (entry_t){key, sl__metrics_load(&rt->counts[k])};
            }
            uint64_t over = sl__metrics_load(&rt->overflow);
            if (over != 0)
                r->scratch[n++] = (entry_t){OVERFLOW_KEY, over};
        }
        qsort(r->scratch, n, sizeof(*r->scratch), cmp_entry);
        for (size_t j = 0; j < n;) {
            entry_t e = r->scratch[j++];
            while (j < n && r->scratch[j].key == e.key)
                e.count += r->scratch[j++].count;
            key_labels_t kl = key_labels(e.key);
            char status[12];
            if (kl.status != 0)
                snprintf(status, sizeof(status), "%u", kl.status);
            else
                memcpy(status, "other", 6);
            label_t l[4] = {
                {"route", r->m->routes.names[slot]},
                {"method", sl_str_from_cstr(kl.method)},
                {"status", sl_str_from_cstr(status)},
                {"cause", sl_str_from_cstr(kl.cause)},
            };
            sample_u64(r, f->name, l, 4, e.count);
        }
    }
}

/* Only the (route, detail) pairs that counted something: most routes have no auth at all,
 * and 32 zero series per route would be most of the exposition. */
static void emit_auth_failures(render_t *r, const family_t *f)
{
    for (size_t i = 0; i < r->nroute_order; i++) {
        uint32_t slot = r->route_order[i];
        uint64_t n[SL_METRICS_AUTH__COUNT] = {0};
        for (size_t w = 0; w < r->m->nworkers; w++) {
            sl__metrics_route_t *rt = worker_route(r->m->workers[w], slot);
            for (size_t k = 0; rt != NULL && k < SL_METRICS_AUTH__COUNT; k++)
                n[k] += sl__metrics_load(&rt->auth[k]);
        }
        /* The enum is in label order. */
        for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++) {
            if (n[k] == 0)
                continue;
            label_t l[2] = {
                {"route", r->m->routes.names[slot]},
                {"detail", sl_str_from_cstr(sl__metrics_auth_names[k])},
            };
            sample_u64(r, f->name, l, 2, n[k]);
        }
    }
}

/* Only the (route, limit) pairs that refused something; limits by their config label, the
 * ones past SL_METRICS_RATE_LIMITS as one overflow series. */
static void emit_rate_limited(render_t *r, const family_t *f)
{
    const sl_metrics_schema_t *s = r->schema;
    for (size_t i = 0; s != NULL && i < r->nroute_order; i++) {
        uint32_t slot = r->route_order[i], cfg = s->route_order_cfg[i];
        if (cfg == SL__METRICS_NO_CFG)
            continue;
        uint32_t nlimits = s->rl_base[cfg + 1] - s->rl_base[cfg];
        for (uint32_t k = 0; k < nlimits && k < SL_METRICS_RATE_LIMITS; k++) {
            uint64_t n = 0;
            for (size_t w = 0; w < r->m->nworkers; w++) {
                sl__metrics_route_t *rt = worker_route(r->m->workers[w], slot);
                n += rt != NULL ? sl__metrics_load(&rt->rate_limited[k]) : 0;
            }
            if (n == 0)
                continue;
            bool shared = k == SL_METRICS_RATE_LIMITS - 1 && nlimits > SL_METRICS_RATE_LIMITS;
            label_t l[2] = {
                {"route", r->m->routes.names[slot]},
                {"limit", shared ? sl_str_from_cstr(SL_METRICS_OVERFLOW) : s->rl_labels[s->rl_base[cfg] + k]},
            };
            sample_u64(r, f->name, l, 2, n);
        }
    }
}

/* Only the (route, result) pairs that happened. */
static void emit_cache_requests(render_t *r, const family_t *f)
{
    for (size_t i = 0; i < r->nroute_order; i++) {
        uint32_t slot = r->route_order[i];
        for (size_t k = 0; k < SL_METRICS_CACHE__COUNT; k++) {
            uint64_t n = 0;
            for (size_t w = 0; w < r->m->nworkers; w++) {
                sl__metrics_route_t *rt = worker_route(r->m->workers[w], slot);
                n += rt != NULL ? sl__metrics_load(&rt->cache[k]) : 0;
            }
            if (n == 0)
                continue;
            label_t l[2] = {
                {"route", r->m->routes.names[slot]},
                {"result", sl_str_from_cstr(sl_metrics_cache_result_name((enum sl_metrics_cache_result)k))},
            };
            sample_u64(r, f->name, l, 2, n);
        }
    }
}

static void emit_access_log_dropped(render_t *r, const family_t *f)
{
    if (r->m->access_log_dropped != NULL)
        sample_u64(r, f->name, NULL, 0, r->m->access_log_dropped());
}

static void emit_rate_table_full(render_t *r, const family_t *f)
{
    if (r->m->rate_full_total != NULL)
        sample_u64(r, f->name, NULL, 0, r->m->rate_full_total(r->m->rate_full_ctx));
}

/* The Redis store's figures: one sample each, only when the gateway runs in cluster mode. */
static void emit_store(render_t *r, const family_t *f)
{
    if (r->m->store_get == NULL)
        return;
    sl_metrics_store_figures_t s = {0};
    r->m->store_get(r->m->store_ctx, &s);
    const char *n = f->name + strlen("sluice_store_");
    uint64_t v = strcmp(n, "up") == 0                ? (uint64_t)s.up
                 : strcmp(n, "commands_total") == 0  ? s.commands
                 : strcmp(n, "failures_total") == 0  ? s.failures
                 : strcmp(n, "timeouts_total") == 0  ? s.timeouts
                 : strcmp(n, "fallbacks_total") == 0 ? s.fallbacks
                 : strcmp(n, "refusals_total") == 0  ? s.refusals
                                                     : s.lease_admits;
    sample_u64(r, f->name, NULL, 0, v);
}

static void emit_upstream_duration(render_t *r, const family_t *f)
{
    for (size_t i = 0; i < r->ntarget_order; i++) {
        uint32_t slot = r->target_order[i];
        hist_sum_t h = {0};
        for (size_t w = 0; w < r->m->nworkers; w++) {
            sl__metrics_target_t *t = atomic_load_explicit(&r->m->workers[w]->targets[slot], memory_order_acquire);
            hist_add(&h, t ? &t->first_byte : NULL);
        }
        hist_finish(&h);
        if (slot == SL__METRICS_TGT_OVERFLOW && h.count == 0)
            continue;
        label_t l[2] = {
            {"upstream", sl__metrics_target_upstream(r->m, slot)},
            {"target", r->m->targets.names[slot]},
        };
        emit_hist(r, f->name, l, 2, &h);
    }
}

static void emit_upstream_errors(render_t *r, const family_t *f)
{
    for (size_t i = 0; i < r->ntarget_order; i++) {
        uint32_t slot = r->target_order[i];
        uint64_t n[SL_METRICS_UPSTREAM_ERR__COUNT] = {0};
        uint64_t any = 0;
        for (size_t w = 0; w < r->m->nworkers; w++) {
            sl__metrics_target_t *t = atomic_load_explicit(&r->m->workers[w]->targets[slot], memory_order_acquire);
            for (size_t k = 0; t != NULL && k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
                n[k] += sl__metrics_load(&t->errors[k]);
        }
        for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
            any += n[k];
        if (slot == SL__METRICS_TGT_OVERFLOW && any == 0)
            continue;
        /* Every kind of a target that exists, zeros included: rate() needs the series before
         * its first failure, and the set is a fixed six per target. Label order is name order. */
        static const enum sl_metrics_upstream_error order[] = {
            SL_METRICS_UPSTREAM_ERR_OTHER,          SL_METRICS_UPSTREAM_ERR_5XX,   SL_METRICS_UPSTREAM_ERR_BAD_RESPONSE,
            SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED, SL_METRICS_UPSTREAM_ERR_RESET, SL_METRICS_UPSTREAM_ERR_TIMEOUT,
        };
        for (size_t k = 0; k < SL_ARRAY_SIZE(order); k++) {
            label_t l[3] = {
                {"upstream", sl__metrics_target_upstream(r->m, slot)},
                {"target", r->m->targets.names[slot]},
                {"cause", sl_str_from_cstr(sl_metrics_upstream_error_name(order[k]))},
            };
            sample_u64(r, f->name, l, 3, n[order[k]]);
        }
    }
}

/* The gauges of the current targets' state: asked from the status source at scrape time. */
static void emit_target_state(render_t *r, const family_t *f, bool circuit)
{
    if (r->status == NULL || r->status->get == NULL || r->target_order_cfg == NULL)
        return;
    for (size_t i = 0; i < r->ntarget_order; i++) {
        uint32_t cfg = r->target_order_cfg[i];
        if (cfg == SL__METRICS_NO_CFG)
            continue;
        /* The flat index back to (upstream, target): target_base is ascending. */
        size_t u = 0;
        while (u + 1 < r->schema->nupstreams && r->schema->target_base[u + 1] <= cfg)
            u++;
        sl_metrics_target_status_t st = {0};
        if (!r->status->get(r->status->ctx, u, cfg - r->schema->target_base[u], &st))
            continue;
        uint32_t slot = r->target_order[i];
        label_t l[2] = {
            {"upstream", sl__metrics_target_upstream(r->m, slot)},
            {"target", r->m->targets.names[slot]},
        };
        sample_u64(r, f->name, l, 2,
                   circuit ? (uint64_t)(st.circuit >= 0 && st.circuit <= 2 ? st.circuit : 0) : (uint64_t)st.healthy);
    }
}

static void emit_circuit_state(render_t *r, const family_t *f)
{
    emit_target_state(r, f, true);
}

static void emit_target_healthy(render_t *r, const family_t *f)
{
    emit_target_state(r, f, false);
}

/* ---- TLS (src/tls: process-wide counters, the current certificates) ----------------------- */

static void emit_tls_expiry(render_t *r, const family_t *f)
{
    sl_tls_listener_stats_t ls[SL_TLS_MAX_LISTENERS];
    sl_tls_cert_stats_t cs[SL_TLS_MAX_EXPORTED_CERTS];
    size_t nl, nc;
    sl_tls_stats_read(ls, SL_ARRAY_SIZE(ls), &nl, cs, SL_ARRAY_SIZE(cs), &nc);
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < nc; i++) {
        label_t l[2] = {{"listener", sl_str_from_cstr(cs[i].listener)}, {"name", sl_str_from_cstr(cs[i].name)}};
        sample_head(r, f->name, "", l, 2);
        putf(r, "%" PRId64 "\n", cs[i].not_after - now);
    }
}

static void emit_tls_failures(render_t *r, const family_t *f)
{
    sl_tls_listener_stats_t ls[SL_TLS_MAX_LISTENERS];
    size_t nl, nc;
    sl_tls_stats_read(ls, SL_ARRAY_SIZE(ls), &nl, NULL, 0, &nc);
    for (size_t i = 0; i < nl; i++)
        for (size_t k = 0; k < SL_TLS_FAIL__COUNT; k++) {
            label_t l[2] = {{"listener", sl_str_from_cstr(ls[i].name)},
                            {"reason", sl_str_from_cstr(sl_tls_failure_name((enum sl_tls_failure)k))}};
            sample_u64(r, f->name, l, 2, ls[i].failures[k]);
        }
}

static void emit_tls_handshakes(render_t *r, const family_t *f)
{
    sl_tls_listener_stats_t ls[SL_TLS_MAX_LISTENERS];
    size_t nl, nc;
    sl_tls_stats_read(ls, SL_ARRAY_SIZE(ls), &nl, NULL, 0, &nc);
    for (size_t i = 0; i < nl; i++) {
        label_t l[2] = {{"listener", sl_str_from_cstr(ls[i].name)}, {"resumed", SL_STR_LIT("false")}};
        sample_u64(r, f->name, l, 2, ls[i].handshakes - ls[i].resumed);
        l[1].value = SL_STR_LIT("true");
        sample_u64(r, f->name, l, 2, ls[i].resumed);
    }
}

/* Sorted by name. Later features add their row here. */
static const family_t families[] = {
    {"process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", emit_cpu},
    {"process_max_fds", "gauge", "Maximum number of open file descriptors.", emit_max_fds},
    {"process_open_fds", "gauge", "Number of open file descriptors.", emit_open_fds},
    {"process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", emit_rss},
    {"process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", emit_start_time},
    {"sluice_access_log_dropped_total", "counter",
     "Access log lines lost because the write failed (disk full, I/O error, a reader that stopped reading).",
     emit_access_log_dropped},
    {"sluice_auth_failures_total", "counter",
     "Requests refused by authentication or authorisation (auth_missing, auth_invalid, auth_expired, forbidden), by "
     "route and detail code.",
     emit_auth_failures},
    {"sluice_bytes_total", "counter", "Body and head bytes received from (in) and sent to (out) clients.", emit_bytes},
    {"sluice_cache_requests_total", "counter",
     "Responses of routes with a cache, by route and result (HIT, MISS, STALE, BYPASS, EXPIRED).", emit_cache_requests},
    {"sluice_circuit_state", "gauge", "Circuit breaker state of each target: 0 closed, 1 half-open, 2 open.",
     emit_circuit_state},
    {"sluice_config_last_reload_timestamp_seconds", "gauge",
     "Unix time of the last successful configuration load or reload.", emit_last_reload},
    {"sluice_config_reloads_total", "counter", "Configuration reload attempts, by result.", emit_reloads},
    {"sluice_connections", "gauge", "Client connections open now: active (a request in progress) or idle.",
     emit_connections},
    {"sluice_connections_accepted_total", "counter", "Client connections accepted.", emit_accepted},
    {"sluice_rate_limit_table_full_total", "counter",
     "Requests of a new rate-limit key admitted unchecked because its bucket of the limiter table was full.",
     emit_rate_table_full},
    {"sluice_rate_limited_total", "counter", "Requests refused with rate_limited, by route and limit.",
     emit_rate_limited},
    {"sluice_request_duration_seconds", "histogram",
     "Time from the first byte of a request to the end of its response, by route.", emit_request_duration},
    {"sluice_requests_total", "counter", "Finished exchanges by route, method, status and gateway cause.",
     emit_requests},
    {"sluice_store_commands_total", "counter", "Commands sent to the Redis store (cluster mode).", emit_store},
    {"sluice_store_failures_total", "counter",
     "Redis store commands without a usable reply (connection lost, error reply).", emit_store},
    {"sluice_store_fallbacks_total", "counter",
     "Rate-limit and quota decisions made on this node's table because Redis was down (on_failure allow).", emit_store},
    {"sluice_store_lease_admits_total", "counter",
     "Hot-key decisions made from a leased slice of the budget, without a Redis call.", emit_store},
    {"sluice_store_refusals_total", "counter",
     "Requests refused with gateway_overloaded because Redis was down (on_failure deny).", emit_store},
    {"sluice_store_timeouts_total", "counter", "Redis store commands past the command timeout.", emit_store},
    {"sluice_store_up", "gauge", "1 when every worker has a ready connection to the Redis store; else 0.", emit_store},
    {"sluice_tls_certificate_expiry_seconds", "gauge",
     "Seconds until each certificate of each TLS listener expires (negative: expired).", emit_tls_expiry},
    {"sluice_tls_handshake_failures_total", "counter", "TLS handshakes that failed, by listener and reason.",
     emit_tls_failures},
    {"sluice_tls_handshakes_total", "counter", "TLS handshakes completed, by listener and session resumption.",
     emit_tls_handshakes},
    {"sluice_upstream_duration_seconds", "histogram",
     "Time from sending a request upstream to the first byte of its response, by target.", emit_upstream_duration},
    {"sluice_upstream_errors_total", "counter",
     "Failed tries to each target, by gateway cause, or upstream_5xx for a 5xx status from the target.",
     emit_upstream_errors},
    {"sluice_upstream_target_healthy", "gauge",
     "1 when the target passes its health checks, is not ejected and resolves; else 0.", emit_target_healthy},
};

int sl_metrics_render(sl_metrics_t *m, const sl_metrics_schema_t *current, const sl_metrics_status_source_t *status,
                      char **out, size_t *len)
{
    static const uint32_t no_routes[] = {SL__METRICS_ROUTE_NONE, SL__METRICS_ROUTE_OVERFLOW};
    static const uint32_t no_targets[] = {SL__METRICS_TGT_OVERFLOW};
    render_t r = {.m = m, .cap = 16384};
    r.buf = sl_xmalloc(r.cap);
    r.buf[0] = '\0';
    if (current != NULL) {
        r.route_order = current->route_order;
        r.nroute_order = current->nroute_order;
        r.target_order = current->target_order;
        r.target_order_cfg = current->target_order_cfg;
        r.ntarget_order = current->ntarget_order;
        r.schema = current;
        r.status = status;
    } else {
        r.route_order = no_routes;
        r.nroute_order = SL_ARRAY_SIZE(no_routes);
        r.target_order = no_targets;
        r.ntarget_order = SL_ARRAY_SIZE(no_targets);
    }
    r.scratch = sl_xmalloc(m->nworkers * (SL_METRICS_ROUTE_KEYS + 1) * sizeof(*r.scratch));
    for (size_t i = 0; i < SL_ARRAY_SIZE(families); i++) {
        const family_t *f = &families[i];
        puts_(&r, "# HELP ");
        puts_(&r, f->name);
        put(&r, " ", 1);
        puts_(&r, f->help); /* static text without backslashes or line feeds: nothing to escape */
        puts_(&r, "\n# TYPE ");
        puts_(&r, f->name);
        put(&r, " ", 1);
        puts_(&r, f->type);
        put(&r, "\n", 1);
        f->emit(&r, f);
    }
    free(r.scratch);
    *out = r.buf;
    *len = r.len;
    return 0;
}
