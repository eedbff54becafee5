/*
 * The /stats view (stats.h): the dashboard's one poll. It folds the per-worker sums of
 * src/metrics (read.c's readers) into totals by cause, joins them to the route table view and
 * the upstream health view the other endpoints already serve, and adds the gauges and the
 * doctor's report. It computes no rate and keeps no history: the page does that from two polls.
 */
#include "admin/stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "admin/routes_view.h"
#include "admin/views.h"
#include "common/bug.h"
#include "common/time.h"
#include "http/cause.h"
#include "metrics/summary.h"
#include "router/router.h"

/* jansson returns NULL only when malloc fails; internal allocation failure aborts (STYLE.md). */
static json_t *checked(json_t *j)
{
    SL_BUG_ON(j == NULL);
    return j;
}

static json_t *count(uint64_t n)
{
    return checked(json_integer(n > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)n));
}

/* Failed exchanges of a route sum: every gateway cause, plus upstream answers >= 500. */
static uint64_t route_errors(const sl_metrics_route_sum_t *s)
{
    uint64_t n = s->status_5xx;
    for (size_t c = SL_CAUSE_NONE + 1; c < SL_CAUSE__COUNT; c++)
        n += s->causes[c];
    return n;
}

/* Errors grouped the way the doctor names them: the six failure causes, `other` for gateway
 * causes outside them (bad_request, ...), `upstream_5xx` for an upstream's own 5xx. Every key
 * is present, so the page's charts have fixed series. */
static void add_by_failure(uint64_t out[SL_FAILURE__COUNT + 1], const sl_metrics_route_sum_t *s)
{
    for (size_t c = SL_CAUSE_NONE + 1; c < SL_CAUSE__COUNT; c++)
        out[sl_cause_info((enum sl_cause)c)->failure] += s->causes[c];
    out[SL_FAILURE__COUNT] += s->status_5xx;
}

static json_t *by_failure_json(const uint64_t v[SL_FAILURE__COUNT + 1])
{
    json_t *o = checked(json_object());
    for (size_t f = SL_FAILURE_NONE + 1; f < SL_FAILURE__COUNT; f++)
        json_object_set_new(o, sl_failure_name((enum sl_failure)f), count(v[f]));
    json_object_set_new(o, "other", count(v[SL_FAILURE_NONE]));
    json_object_set_new(o, "upstream_5xx", count(v[SL_FAILURE__COUNT]));
    return o;
}

static void hist_add(sl_metrics_hist_sum_t *to, const sl_metrics_hist_sum_t *h)
{
    for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++)
        to->buckets[b] += h->buckets[b];
    to->sum_ns += h->sum_ns;
    to->count += h->count;
}

/* Cumulative buckets as counts per bucket (not cumulative), bounds in latency_buckets_ms. */
static json_t *hist_json(const sl_metrics_hist_sum_t *h)
{
    json_t *b = checked(json_array());
    for (size_t i = 0; i < SL_METRICS_HIST_BUCKETS; i++)
        json_array_append_new(b, count(h->buckets[i]));
    return checked(
        json_pack("{s:o, s:o, s:f}", "buckets", b, "count", count(h->count), "sum_ms", (double)h->sum_ns / 1e6));
}

static json_t *bounds_json(void)
{
    json_t *a = checked(json_array());
    for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++) {
        uint64_t ns = sl_metrics_hist_bound_ns(b);
        json_array_append_new(a, ns == UINT64_MAX ? json_null() : checked(json_real((double)ns / 1e6)));
    }
    return a;
}

static void target_window(void *arg, size_t upstream_index, size_t target_index, uint64_t *requests, uint64_t *errors)
{
    const sl_admin_stats_source_t *src = arg;
    sl_doctor_target_window(src->doctor, src->snap, upstream_index, target_index, 60, requests, errors);
}

/* The upstream health view of each upstream, plus its cumulative tries, failed tries and
 * time-to-first-byte histogram summed over its targets. Adds the histograms to `all`. */
static json_t *upstreams_json(const sl_admin_stats_source_t *src, sl_metrics_hist_sum_t *all)
{
    const sl_snapshot_t *snap = src->snap;
    json_t *a = checked(json_array());
    for (size_t u = 0; u < snap->cfg->nupstreams; u++) {
        json_t *o =
            sl_admin_upstream_health(snap, u, src->health, src->doctor != NULL ? target_window : NULL, (void *)src);
        sl_metrics_hist_sum_t ttfb = {0};
        uint64_t failed = 0, answered_5xx = 0;
        for (size_t t = 0; snap->metrics != NULL && t < snap->cfg->upstreams[u].ntargets; t++) {
            sl_metrics_target_sum_t ts;
            sl_metrics_read_target(src->metrics, sl_metrics_target_id(snap->metrics, u, t), &ts);
            hist_add(&ttfb, &ts.first_byte);
            for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++) {
                if (k == SL_METRICS_UPSTREAM_ERR_5XX)
                    answered_5xx += ts.errors[k];
                else
                    failed += ts.errors[k];
            }
        }
        hist_add(all, &ttfb);
        /* A try either got a response head (counted in the histogram) or failed before one. */
        json_object_set_new(o, "tries", count(ttfb.count + failed));
        json_object_set_new(o, "errors", count(failed + answered_5xx));
        json_object_set_new(o, "ttfb", hist_json(&ttfb));
        json_array_append_new(a, o);
    }
    return a;
}

/* A cached route's sluice_cache_requests_total by result, keyed in lower case. */
static json_t *cache_json(const sl_metrics_route_sum_t *s)
{
    json_t *o = checked(json_object());
    for (size_t k = 0; k < SL_METRICS_CACHE__COUNT; k++) {
        char name[16];
        const char *n = sl_metrics_cache_result_name((enum sl_metrics_cache_result)k);
        size_t j = 0;
        for (; n[j] && j < sizeof(name) - 1; j++)
            name[j] = (char)(n[j] | 0x20); /* the dashboard's keys are lower case */
        name[j] = 0;
        json_object_set_new(o, name, count(s->cache[k]));
    }
    return o;
}

/* The route table view (match order) with each route's cumulative counts. */
static json_t *routes_json(const sl_admin_stats_source_t *src, sl_metrics_route_sum_t *total,
                           uint64_t by_failure[SL_FAILURE__COUNT + 1])
{
    const sl_snapshot_t *snap = src->snap;
    json_t *table = sl_admin_routes_table(snap);
    json_t *routes = json_incref(json_object_get(table, "routes"));
    json_decref(table);
    size_t n = snap->cfg->nroutes;
    size_t *order = sl_xmalloc((n ? n : 1) * sizeof(*order));
    n = sl_router_match_order(snap->router, order, n);
    SL_BUG_ON(n != json_array_size(routes)); /* the view walks the same order */
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(routes, i);
        sl_metrics_route_sum_t s = {0};
        sl_metrics_hist_sum_t dur = {0};
        if (snap->metrics != NULL) {
            uint32_t id = sl_metrics_route_id(snap->metrics, (long)order[i]);
            sl_metrics_read_route(src->metrics, id, &s);
            sl_metrics_read_route_duration(src->metrics, id, &dur);
        }
        uint64_t mine[SL_FAILURE__COUNT + 1] = {0};
        add_by_failure(mine, &s);
        add_by_failure(by_failure, &s);
        total->requests += s.requests;
        total->status_5xx += s.status_5xx;
        for (size_t c = 0; c < SL_CAUSE__COUNT; c++)
            total->causes[c] += s.causes[c];
        json_object_set_new(r, "requests", count(s.requests));
        json_object_set_new(r, "errors", count(route_errors(&s)));
        json_object_set_new(r, "errors_by_cause", by_failure_json(mine));
        json_object_set_new(r, "rate_limited",
                            count(s.causes[SL_CAUSE_RATE_LIMITED] + s.causes[SL_CAUSE_QUOTA_EXCEEDED]));
        /* sluice_cache_requests_total by result; null (never a made-up 0) without a cache. */
        json_object_set_new(r, "cache", snap->cfg->routes[order[i]].cache.enabled ? cache_json(&s) : json_null());
        json_object_set_new(r, "latency", hist_json(&dur));
    }
    free(order);
    return routes;
}

static json_t *resources_json(void)
{
    uint64_t fds_limit = 0, rss = 0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        fds_limit = (uint64_t)rl.rlim_cur;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp != NULL) {
        unsigned long long size, resident;
        long page = sysconf(_SC_PAGESIZE);
        if (fscanf(fp, "%llu %llu", &size, &resident) == 2 && page > 0)
            rss = (uint64_t)resident * (uint64_t)page;
        fclose(fp);
    }
    json_t *o =
        checked(json_pack("{s:o, s:o}", "fds_open", count(sl_metrics_read_open_fds()), "rss_bytes", count(rss)));
    json_object_set_new(o, "fds_limit", fds_limit ? count(fds_limit) : json_null());
    return o;
}

json_t *sl_admin_stats(const sl_admin_stats_source_t *src)
{
    const sl_snapshot_t *snap = src->snap;
    char now[40];
    sl_time_format_iso8601(now, sizeof(now), src->now_ms);

    sl_metrics_route_sum_t total = {0}, unrouted = {0};
    uint64_t by_failure[SL_FAILURE__COUNT + 1] = {0};
    json_t *routes = routes_json(src, &total, by_failure);
    /* Requests that matched no route (400s before routing, route_not_found) count in the
     * totals but belong to no route of the table. */
    if (snap->metrics != NULL)
        sl_metrics_read_route(src->metrics, sl_metrics_route_id(snap->metrics, -1), &unrouted);
    add_by_failure(by_failure, &unrouted);
    total.requests += unrouted.requests;
    total.status_5xx += unrouted.status_5xx;
    json_t *causes = checked(json_object());
    for (size_t c = SL_CAUSE_NONE + 1; c < SL_CAUSE__COUNT; c++) {
        uint64_t v = total.causes[c] + unrouted.causes[c];
        if (v != 0)
            json_object_set_new(causes, sl_cause_info((enum sl_cause)c)->name, count(v));
    }
    for (size_t c = 0; c < SL_CAUSE__COUNT; c++)
        total.causes[c] += unrouted.causes[c];

    sl_metrics_hist_sum_t ttfb = {0};
    json_t *upstreams = upstreams_json(src, &ttfb);

    json_t *totals = checked(json_pack("{s:o, s:o, s:o, s:o, s:o}", "requests", count(total.requests), "errors",
                                       count(route_errors(&total)), "errors_by_cause", by_failure_json(by_failure),
                                       "causes", causes, "ttfb", hist_json(&ttfb)));
    json_t *unrouted_j = checked(
        json_pack("{s:o, s:o}", "requests", count(unrouted.requests), "errors", count(route_errors(&unrouted))));

    sl_metrics_summary_t sum;
    sl_metrics_summary(src->metrics, &sum);
    json_t *conns = checked(json_pack(
        "{s:o, s:o, s:o, s:o}", "active", count(sum.connections_active), "idle", count(sum.connections_idle),
        "accepted_total", count(sum.connections_accepted_total), "max", count(snap->cfg->limits.max_connections)));

    json_t *config = checked(json_pack("{s:s, s:o}", "path", src->config_path ? src->config_path : "", "generation",
                                       count(src->generation)));
    json_object_set_new(config, "last_reload",
                        src->last_reload != NULL ? json_deep_copy(src->last_reload) : json_null());

    json_t *doctor = src->doctor != NULL ? sl_doctor_report(src->doctor, snap, 60)
                                         : checked(json_pack("{s:i, s:[]}", "window_seconds", 60, "findings"));

    uint64_t up_ms = src->now_ms > src->started_ms ? src->now_ms - src->started_ms : 0;
    json_t *j = checked(json_pack("{s:s, s:o, s:s, s:i, s:o, s:o}", "time", now, "time_ms", count(src->now_ms),
                                  "version", SLUICE_VERSION, "pid", (int)getpid(), "uptime_seconds",
                                  count(up_ms / 1000), "workers", count(src->workers)));
    json_object_set_new(j, "config", config);
    json_object_set_new(j, "latency_buckets_ms", bounds_json());
    json_object_set_new(j, "totals", totals);
    json_object_set_new(j, "unrouted", unrouted_j);
    json_object_set_new(j, "routes", routes);
    json_object_set_new(j, "upstreams", upstreams);
    json_object_set_new(j, "connections", conns);
    json_object_set_new(j, "resources", resources_json());
    json_object_set_new(j, "doctor", doctor);
    return j;
}
