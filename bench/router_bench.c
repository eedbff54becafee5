/*
 * Router benchmark: compiles tables of 10, 1,000 and 10,000 generated routes (exact and wildcard
 * hosts, exact paths, prefixes, a header match, regexes behind their own hosts) and reports the
 * median ns per sl_router_match over 5 runs of 1M matches, for hits and for misses. The point is
 * the shape: the cost must not grow with the number of routes. No assertion on time.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/arena.h"
#include "common/bug.h"
#include "router/router.h"

#define NREQ   4096 /* distinct requests, cycled; a power of two */
#define NKINDS 10
/* Overridable (-DNMATCH=...) for runs under callgrind, which counts instructions, not time. */
#ifndef NMATCH
#define NMATCH 1000000
#endif
#ifndef NRUNS
#define NRUNS 5
#endif

static sl_str_t fmt(sl_arena_t *a, const char *f, ...) __attribute__((format(printf, 2, 3)));
static sl_str_t fmt(sl_arena_t *a, const char *f, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return (sl_str_t){sl_arena_strndup(a, buf, (size_t)n), (size_t)n};
}

static sl_str_t *one_host(sl_arena_t *a, sl_str_t h)
{
    sl_str_t *hosts = sl_arena_alloc(a, sizeof(*hosts));
    hosts[0] = h;
    return hosts;
}

static const sl_header_match_conf_t tenant_present = {
    .name = SL_STR_LIT("X-Tenant"), .kind = SL_HEADER_MATCH_PRESENT, .value = SL_STR_LIT("")};
static const sl_header_t tenant_header = {SL_STR_LIT("x-tenant"), SL_STR_LIT("acme")};

/* Route i is of kind i % NKINDS, so even 10 routes hold every kind. */
static void make_route(sl_arena_t *a, sl_route_conf_t *rc, size_t i)
{
    sl_route_match_conf_t *m = &rc->match;
    rc->name = fmt(a, "route-%zu", i);
    switch (i % NKINDS) {
    case 0:
    case 1:
    case 2:
        m->hosts = one_host(a, fmt(a, "svc%zu.example.com", i));
        m->nhosts = 1;
        m->path_prefix = fmt(a, "/api/v%zu/", i % 7);
        break;
    case 3:
        m->hosts = one_host(a, fmt(a, "svc%zu.example.com", i));
        m->nhosts = 1;
        m->path_exact = fmt(a, "/orders/%zu", i);
        m->methods = SL_METHOD_BIT(SL_METHOD_GET) | SL_METHOD_BIT(SL_METHOD_POST);
        m->headers = (sl_header_match_conf_t *)&tenant_present;
        m->nheaders = 1;
        break;
    case 4:
        m->hosts = one_host(a, fmt(a, "*.t%zu.example.org", i));
        m->nhosts = 1;
        m->path_prefix = SL_STR_LIT("/");
        break;
    case 5:
        m->hosts = one_host(a, fmt(a, "*.w%zu.example.org", i));
        m->nhosts = 1;
        m->path_exact = fmt(a, "/status/%zu", i);
        break;
    case 6:
    case 7:
        m->path_exact = fmt(a, "/exact/%zu/info", i);
        break;
    case 8:
        m->path_prefix = fmt(a, "/pre/%zu/", i);
        break;
    case 9:
        m->hosts = one_host(a, fmt(a, "re%zu.example.net", i));
        m->nhosts = 1;
        m->path_regex = SL_STR_LIT("^/items/[0-9]+/detail$");
        break;
    }
}

/* A request that route i (and no earlier route) answers. */
static void make_hit(sl_arena_t *a, sl_router_input_t *in, size_t i)
{
    memset(in, 0, sizeof(*in));
    in->method = SL_METHOD_GET;
    switch (i % NKINDS) {
    case 0:
    case 1:
    case 2:
        in->host = fmt(a, "svc%zu.example.com", i);
        in->path = fmt(a, "/api/v%zu/users/%zu", i % 7, i * 31);
        break;
    case 3:
        in->host = fmt(a, "svc%zu.example.com", i);
        in->path = fmt(a, "/orders/%zu", i);
        in->headers = &tenant_header;
        in->nheaders = 1;
        break;
    case 4:
        in->host = fmt(a, "app.eu.t%zu.example.org", i);
        in->path = fmt(a, "/dashboard/%zu", i);
        break;
    case 5:
        in->host = fmt(a, "node%zu.w%zu.example.org", i % 13, i);
        in->path = fmt(a, "/status/%zu", i);
        break;
    case 6:
    case 7:
        in->host = fmt(a, "gateway.internal");
        in->path = fmt(a, "/exact/%zu/info", i);
        break;
    case 8:
        in->host = fmt(a, "gateway.internal");
        in->path = fmt(a, "/pre/%zu/some/deeper/path", i);
        break;
    case 9:
        in->host = fmt(a, "re%zu.example.net", i);
        in->path = fmt(a, "/items/%zu/detail", i * 7);
        break;
    }
}

/* Half unknown hosts, half known hosts with a path no group has: both walk every group. */
static void make_miss(sl_arena_t *a, sl_router_input_t *in, size_t k, size_t nroutes)
{
    memset(in, 0, sizeof(*in));
    in->method = SL_METHOD_GET;
    if (k % 2 == 0)
        in->host = fmt(a, "unknown%zu.example.com", k);
    else
        in->host = fmt(a, "svc%zu.example.com", (k * 10) % nroutes / NKINDS * NKINDS);
    in->path = fmt(a, "/nothing/here/%zu", k);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static volatile size_t sink;

static double median_ns(const sl_router_t *r, const sl_router_input_t *reqs)
{
    double runs[NRUNS];
    for (int run = 0; run < NRUNS; run++) {
        size_t acc = 0;
        uint64_t t0 = now_ns();
        for (size_t j = 0; j < NMATCH; j++) {
            sl_router_result_t res;
            sl_router_match(r, &reqs[j & (NREQ - 1)], &res);
            acc += res.route_index + (size_t)res.status;
        }
        runs[run] = (double)(now_ns() - t0) / NMATCH;
        sink += acc;
    }
    qsort(runs, NRUNS, sizeof(runs[0]), cmp_double);
    return runs[NRUNS / 2];
}

int main(void)
{
    static const size_t sizes[] = {10, 1000, 10000};
    printf("%8s %10s %14s %14s\n", "routes", "build ms", "hit ns/match", "miss ns/match");
    for (size_t s = 0; s < SL_ARRAY_SIZE(sizes); s++) {
        size_t n = sizes[s];
        sl_arena_t a;
        sl_arena_init(&a, 64 * 1024);
        sl_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.path = SL_STR_LIT("<bench>");
        cfg.routes = sl_xcalloc(n, sizeof(*cfg.routes));
        cfg.nroutes = n;
        for (size_t i = 0; i < n; i++)
            make_route(&a, &cfg.routes[i], i);

        sl_router_t *r = NULL;
        sl_config_errors_t errs;
        memset(&errs, 0, sizeof(errs));
        uint64_t t0 = now_ns();
        if (sl_router_create(&cfg, &r, &errs) != 0) {
            fprintf(stderr, "router_bench: compile failed: %s\n", errs.count ? errs.items[0].message : "?");
            return 1;
        }
        double build_ms = (double)(now_ns() - t0) / 1e6;

        sl_router_input_t *hits = sl_xcalloc(NREQ, sizeof(*hits));
        sl_router_input_t *misses = sl_xcalloc(NREQ, sizeof(*misses));
        uint64_t lcg = 0x2545f4914f6cdd1dull;
        for (size_t k = 0; k < NREQ; k++) {
            lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
            size_t i = (size_t)(lcg >> 33) % n;
            make_hit(&a, &hits[k], i);
            make_miss(&a, &misses[k], k, n);
            /* Check the workload before timing it: a bench of wrong answers measures nothing. */
            sl_router_result_t res;
            sl_router_match(r, &hits[k], &res);
            if (res.status != SL_ROUTER_MATCHED || res.route_index != i) {
                fprintf(stderr, "router_bench: request for route %zu got status %d route %zu\n", i, res.status,
                        res.route_index);
                return 1;
            }
            sl_router_match(r, &misses[k], &res);
            if (res.status != SL_ROUTER_NOT_FOUND) {
                fprintf(stderr, "router_bench: miss %zu matched route %zu\n", k, res.route_index);
                return 1;
            }
        }
        double hit = median_ns(r, hits);
        double miss = median_ns(r, misses);
        printf("%8zu %10.2f %14.1f %14.1f\n", n, build_ms, hit, miss);

        free(hits);
        free(misses);
        sl_router_destroy(r);
        free(cfg.routes);
        sl_arena_dispose(&a);
    }
    return 0;
}
