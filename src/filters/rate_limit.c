/*
 * The rate_limit filter (docs/ratelimit.md): after auth and ACL, every limit of the route (the
 * top-level ones first, then the route's own) must admit the request; the first that refuses
 * answers 429 rate_limited with Retry-After. Each limit is a GCRA key in the process-wide table
 * (gcra.h), keyed by a digest of the limit's identity and the request's key value; the identity
 * (scope, index, fingerprint of rate, burst and key) survives reloads unchanged, so a limit
 * whose definition did not change keeps its state. On the way back, every response of a limited
 * route carries the RateLimit headers (IETF draft -09 form) and/or X-RateLimit-*.
 *
 * One function, admit(), makes a limit's decision. In cluster mode (`stores.redis`) it asks the
 * Redis store through the worker's own connection (store/store.h): a decision known at once
 * (a lease, Redis down under `allow`) continues as locally; a pending one pauses the chain and
 * the store's callback resumes run() at the same limit; a refusal to decide (Redis down under
 * `deny`) answers 503 gateway_overloaded with detail redis_unavailable.
 */
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/time.h"
#include "filters/filters.h"
#include "filters/internal.h"
#include "filters/usage.h"
#include "pipeline/filter.h"
#include "store/gcra.h"
#include "store/store.h"

/* Header values longer than this enter the key as their own digest: the key buffer stays
 * small and fixed, and long values never collide by truncation. */
#define VALUE_INLINE_MAX 256
_Static_assert(SL__RATE_KEY_BUF >= SL_RATE_KEY_MAX_PARTS * (VALUE_INLINE_MAX + 3), "key buffer too small");

typedef struct limit {
    const sl_rate_limit_conf_t *conf;
    sl_gcra_params_t params;
    sl_str_t id;                    /* identity: scope, index, fingerprint (in `id_buf`) */
    sl_gcra_key_prefix_t id_prefix; /* the key digest's state after `id` */
    sl_str_t label;                 /* name, or index: RateLimit item keys */
    const char *detail;             /* "rate_limit:<label>" for the log and metrics */
    uint64_t period_s;              /* policy window */
    char id_buf[176];
    char label_buf[136];
    char detail_buf[148];
} limit_t;

typedef struct rl {
    sl_gcra_table_t *table;
    sl_store_t *store; /* cluster mode: decisions in Redis; NULL: local */
    const sl__ip_trust_t *trust;
    sl_str_t route_name;
    int headers; /* enum sl_rate_limit_headers */
    size_t n;
    limit_t limits[];
} rl_t;

enum verdict {
    VERDICT_ALLOWED = 1,
    VERDICT_REFUSED,
    VERDICT_SKIPPED,     /* the limit does not apply (its header is absent) */
    VERDICT_PENDING,     /* the store's answer is on its way; its callback resumes run() */
    VERDICT_UNAVAILABLE, /* Redis is down and on_failure is deny */
};

/* A route with more limits than this is a config nobody needs. */
#define MAX_LIMITS 64

/* Per exchange, in its arena: where run() is and what each limit said. */
typedef struct decisions {
    const rl_t *rl;
    sl_exchange_t *x;
    sl_store_req_t *req; /* the pending store request, for on_abort */
    uint64_t now_ns;
    size_t next;
    long refused; /* index of the refusing limit, or -1 */
    struct {
        bool applied; /* false: skipped (its header was absent) or not reached */
        sl_gcra_result_t r;
    } item[];
} decisions_t;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void limit_init(limit_t *l, const sl_rate_limit_conf_t *c, sl_str_t scope, size_t index, bool global)
{
    l->conf = c;
    uint64_t period_ns = c->period_ms * 1000000ull;
    /* Integer T rounds down: at most 1 ns per interval more permissive, never stricter. */
    l->params.emission_ns = period_ns / c->rate;
    l->params.tolerance_ns = (c->burst - 1) * l->params.emission_ns;
    l->period_s = c->period_ms / 1000;
    uint64_t fp = 1469598103934665603ull;
    fp = fnv(fp, &c->rate, sizeof(c->rate));
    fp = fnv(fp, &c->period_ms, sizeof(c->period_ms));
    fp = fnv(fp, &c->burst, sizeof(c->burst));
    fp = fnv(fp, c->key.ptr, c->key.len);
    int n = snprintf(l->id_buf, sizeof(l->id_buf), "%.*s%c%zu%c%016" PRIx64, SL_STR_FMT(scope), 0, index, 0, fp);
    l->id = (sl_str_t){l->id_buf, (size_t)n};
    sl_gcra_key_prefix(l->id, &l->id_prefix);
    l->label = sl_str_from_cstr(sl_rate_limit_label(c, index, global, l->label_buf, sizeof(l->label_buf)));
    snprintf(l->detail_buf, sizeof(l->detail_buf), "rate_limit:%s", l->label_buf);
    l->detail = l->detail_buf;
}

static int rl_create(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                     sl_config_errors_t *errs)
{
    const sl_config_t *cfg = snap->cfg;
    *state = NULL;
    size_t n = cfg->nrate_limits + route->nrate_limits;
    if (n == 0)
        return 0;
    sl_gcra_table_t *table = sl__filters_shared_rate_table(shared);
    if (table == NULL) {
        sl_config_errors_add(errs, cfg->path, route->pos.line, route->pos.col,
                             "route '%s': rate limits need the limiter table, which this process has not created",
                             route->name.ptr);
        return SL_ECONFIG;
    }
    if (n > MAX_LIMITS) {
        sl_config_errors_add(errs, cfg->path, route->pos.line, route->pos.col,
                             "route '%s': %zu rate limits (with the top-level ones); at most %d", route->name.ptr, n,
                             MAX_LIMITS);
        return SL_ECONFIG;
    }
    sl__rate_note_table(table);
    rl_t *rl = sl_xcalloc(1, sizeof(*rl) + n * sizeof(limit_t));
    rl->table = table;
    rl->store = snap->cfg->stores.redis.enabled ? sl__filters_shared_store(shared) : NULL;
    rl->trust = sl__filters_shared_trust(shared);
    rl->route_name = route->name;
    rl->headers = route->rate_limit_headers ? route->rate_limit_headers : SL_RATE_HEADERS_BOTH;
    rl->n = n;
    /* Global limits are scoped "*" (not a valid route name): one budget across every route. */
    for (size_t i = 0; i < cfg->nrate_limits; i++)
        limit_init(&rl->limits[i], &cfg->rate_limits[i], SL_STR_LIT("*"), i, true);
    for (size_t i = 0; i < route->nrate_limits; i++)
        limit_init(&rl->limits[cfg->nrate_limits + i], &route->rate_limits[i], route->name, i, false);
    *state = rl;
    return 0;
}

static void rl_destroy(void *state)
{
    free(state);
}

static size_t put_part(uint8_t *buf, size_t n, char tag, const void *p, size_t len)
{
    if (len > VALUE_INLINE_MAX) {
        /* An unkeyed digest (16 bytes of SHA-256), so the value's Redis key is the same on
         * every node; long values are rare, and SHA-256 keeps them from colliding. */
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        SL_BUG_ON(EVP_Digest(p, len, md, &mdlen, EVP_sha256(), NULL) != 1);
        buf[n++] = (uint8_t)(tag ^ 0x20);
        memcpy(buf + n, md, 16);
        return n + 16;
    }
    buf[n++] = (uint8_t)tag;
    buf[n++] = (uint8_t)(len >> 8);
    buf[n++] = (uint8_t)len;
    memcpy(buf + n, p, len);
    return n + len;
}

/* The key value of `l` for a request of `consumer` on `route`. `x` is the request, for the
 * parts only a request has (address, header); NULL for a usage read, which has no such parts
 * and gets false when the key needs one. */
static bool key_value(const sl_rate_limit_conf_t *l, sl_str_t consumer, sl_str_t route, const sl_exchange_t *x,
                      const sl__ip_trust_t *trust, uint8_t *buf, size_t *len)
{
    size_t n = 0;
    for (size_t i = 0; i < l->nparts; i++) {
        int family = 0;
        uint8_t addr[16] = {0};
        switch (l->parts[i]) {
        case SL_RATE_KEY_CONSUMER:
            if (consumer.len > 0) {
                n = put_part(buf, n, 'c', consumer.ptr, consumer.len);
                break;
            }
            if (x == NULL)
                return false;
            /* Anonymous: per client address, so anonymous callers do not share one budget. */
            sl__client_addr(x, trust, &family, addr);
            n = put_part(buf, n, 'a', addr, family == AF_INET6 ? 16 : 4);
            break;
        case SL_RATE_KEY_IP:
            if (x == NULL)
                return false;
            sl__client_addr(x, trust, &family, addr);
            n = put_part(buf, n, 'i', addr, family == AF_INET6 ? 16 : 4);
            break;
        case SL_RATE_KEY_ROUTE:
            /* The route is in a route limit's identity already; a global one needs its name. */
            n = put_part(buf, n, 'r', route.ptr, route.len);
            break;
        case SL_RATE_KEY_HEADER: {
            const sl_header_t *h = x != NULL ? sl_headers_find(&x->req_headers, l->headers[i]) : NULL;
            if (h == NULL)
                return false;
            n = put_part(buf, n, 'h', h->value.ptr, h->value.len);
            break;
        }
        }
    }
    *len = n;
    return true;
}

bool sl__rate_key_value(const sl_exchange_t *x, const sl__ip_trust_t *trust, const sl_rate_limit_conf_t *l,
                        uint8_t *buf, size_t *len)
{
    return key_value(l, x->consumer, x->route_name, x, trust, buf, len);
}

/* ---- cluster mode --------------------------------------------------------------------------- */

/* The worker's connection of the Redis store: set by the server on each worker thread. */
static _Thread_local sl_store_worker_t *thread_store;

void sl_filters_set_thread_store(struct sl_store_worker *w)
{
    thread_store = w;
}

sl_store_worker_t *sl__rate_thread_store(void)
{
    return thread_store;
}

size_t sl__rate_key_text(sl_str_t id, const uint8_t *value, size_t len, char *buf)
{
    buf[0] = (char)(id.len >> 8);
    buf[1] = (char)id.len;
    memcpy(buf + 2, id.ptr, id.len);
    memcpy(buf + 2 + id.len, value, len);
    return 2 + id.len + len;
}

static enum sl_filter_status run(sl_exchange_t *x, decisions_t *d);
static void store_answered(void *arg, int status, const sl_gcra_result_t *res);

/* The one decision point of a limit. A full table admits (and is counted by the table): an
 * overflowing limiter must not become an outage. */
static enum verdict admit(sl_exchange_t *x, decisions_t *d, size_t i)
{
    const rl_t *rl = d->rl;
    const limit_t *l = &rl->limits[i];
    sl_gcra_result_t *out = &d->item[i].r;
    uint64_t now_ns = d->now_ns;
    uint8_t buf[SL__RATE_KEY_BUF];
    size_t len;
    if (!sl__rate_key_value(x, rl->trust, l->conf, buf, &len))
        return VERDICT_SKIPPED;
    sl_gcra_key_t key = sl_gcra_key_digest_prefixed(&l->id_prefix, (sl_str_t){(const char *)buf, len});
    sl_store_worker_t *sw = rl->store != NULL ? thread_store : NULL;
    if (sw != NULL) {
        char text[SL__RATE_KEY_TEXT_BUF];
        size_t tlen = sl__rate_key_text(l->id, buf, len, text);
        int rc =
            sl_store_admit(sw, key, (sl_str_t){text, tlen}, &l->params, 1, now_ns, out, store_answered, d, &d->req);
        if (rc == 0)
            return VERDICT_PENDING;
        if (rc < 0)
            return VERDICT_UNAVAILABLE;
        return out->allowed ? VERDICT_ALLOWED : VERDICT_REFUSED;
    }
    if (sl_gcra_admit(rl->table, key, &l->params, now_ns + SL__TABLE_TIME_BIAS, 1, out) != 0) {
        *out = (sl_gcra_result_t){.allowed = true, .limit = l->conf->burst, .remaining = l->conf->burst - 1};
        return VERDICT_ALLOWED;
    }
    return out->allowed ? VERDICT_ALLOWED : VERDICT_REFUSED;
}

/* Runs the limits from d->next on. When the store's answer is pending, run() returns
 * SL_FILTER_PAUSE with d->next on that limit, and store_answered records the answer, advances
 * d->next and calls run() again, ending with sl_filter_resume or sl_filter_fail. */
static enum sl_filter_status run(sl_exchange_t *x, decisions_t *d)
{
    const rl_t *rl = d->rl;
    for (; d->next < rl->n; d->next++) {
        size_t i = d->next;
        enum verdict v = admit(x, d, i);
        if (v == VERDICT_PENDING)
            return SL_FILTER_PAUSE;
        if (v == VERDICT_UNAVAILABLE) {
            x->cause = SL_CAUSE_GATEWAY_OVERLOADED;
            x->cause_detail = "redis_unavailable";
            return SL_FILTER_ERROR;
        }
        d->item[i].applied = v != VERDICT_SKIPPED;
        if (v == VERDICT_REFUSED) {
            d->refused = (long)i;
            x->cause = SL_CAUSE_RATE_LIMITED;
            x->cause_detail = rl->limits[i].detail;
            return SL_FILTER_ERROR;
        }
    }
    return SL_FILTER_CONTINUE;
}

/* The store's answer for limit d->next of a paused exchange (never after rl_on_abort). */
static void store_answered(void *arg, int status, const sl_gcra_result_t *res)
{
    decisions_t *d = arg;
    sl_exchange_t *x = d->x;
    d->req = NULL;
    if (status != 0) { /* Redis failed under on_failure: deny */
        sl_filter_fail(x, SL_CAUSE_GATEWAY_OVERLOADED, "redis_unavailable");
        return;
    }
    size_t i = d->next;
    d->item[i].r = *res;
    d->item[i].applied = true;
    if (!res->allowed) {
        d->refused = (long)i;
        sl_filter_fail(x, SL_CAUSE_RATE_LIMITED, d->rl->limits[i].detail);
        return;
    }
    d->next++;
    switch (run(x, d)) {
    case SL_FILTER_CONTINUE:
        sl_filter_resume(x);
        break;
    case SL_FILTER_PAUSE:
        break;
    default:
        sl_filter_fail(x, x->cause, x->cause_detail);
        break;
    }
}

static void rl_on_abort(sl_exchange_t *x, void *state)
{
    (void)state;
    decisions_t *d = x->rate_limit;
    if (d != NULL && d->req != NULL) {
        sl_store_cancel(d->req);
        d->req = NULL;
    }
}

static enum sl_filter_status rl_on_request(sl_exchange_t *x, void *state)
{
    const rl_t *rl = state;
    decisions_t *d = sl_arena_alloc(&x->arena, sizeof(*d) + rl->n * sizeof(d->item[0]));
    memset(d, 0, sizeof(*d) + rl->n * sizeof(d->item[0]));
    d->rl = rl;
    d->x = x;
    d->refused = -1;
    d->now_ns = sl_time_mono_ns(); /* one clock read for every limit of the request */
    x->rate_limit = d;
    return run(x, d);
}

static uint64_t ceil_s(uint64_t ns)
{
    return ns / 1000000000ull + (ns % 1000000000ull != 0);
}

static void add_u64(sl_exchange_t *x, const char *name, uint64_t v)
{
    char *s = sl_arena_alloc(&x->arena, 20);
    char *e = sl_put_u64(s, v);
    sl_headers_add(&x->arena, &x->resp_headers, sl_str_from_cstr(name), (sl_str_t){s, (size_t)(e - s)});
}

static void rl_on_response_headers(sl_exchange_t *x, void *state)
{
    const rl_t *rl = state;
    const decisions_t *d = x->rate_limit;
    if (d == NULL || d->rl != rl)
        return;
    if (d->refused >= 0) {
        /* RFC 9110 §10.2.3 delay-seconds: whole seconds, rounded up so a retry then succeeds. */
        uint64_t ra = d->item[d->refused].r.retry_after_ns;
        add_u64(x, "Retry-After", ra == UINT64_MAX ? 86400 : (ceil_s(ra) ? ceil_s(ra) : 1));
    }
    if (rl->headers == SL_RATE_HEADERS_NONE)
        return;
    /* The legacy headers speak of one limit: the refusing one, else the closest to refusing. */
    long tight = d->refused;
    size_t nitems = 0;
    for (size_t i = 0; i < d->next + (d->refused >= 0) && i < rl->n; i++) {
        if (!d->item[i].applied)
            continue;
        nitems++;
        if (tight < 0 || (d->refused < 0 && d->item[i].r.remaining < d->item[tight].r.remaining))
            tight = (long)i;
    }
    if (nitems == 0)
        return;
    if (rl->headers == SL_RATE_HEADERS_BOTH || rl->headers == SL_RATE_HEADERS_IETF) {
        /* draft-ietf-httpapi-ratelimit-headers-09: List items keyed by policy name (sf-string),
         * RateLimit-Policy q (quota) per w (window, s); RateLimit r (remaining), t (s to reset). */
        /* Formatted by hand: snprintf was three quarters of the filter's cost per request. */
        size_t cap = 0;
        for (size_t i = 0; i < d->next + (d->refused >= 0) && i < rl->n; i++)
            cap += rl->limits[i].label.len + 2 * 20 + 16;
        char *pol = sl_arena_alloc(&x->arena, cap), *cur = sl_arena_alloc(&x->arena, cap);
        char *p = pol, *c = cur;
        for (size_t i = 0; i < d->next + (d->refused >= 0) && i < rl->n; i++) {
            if (!d->item[i].applied)
                continue;
            const limit_t *l = &rl->limits[i];
            if (p != pol) {
                p = sl_put(p, ", ", 2);
                c = sl_put(c, ", ", 2);
            }
            p = sl_put(p, "\"", 1);
            p = sl_put(p, l->label.ptr, l->label.len);
            p = sl_put_u64(sl_put(p, "\";q=", 4), l->conf->rate);
            p = sl_put_u64(sl_put(p, ";w=", 3), l->period_s);
            c = sl_put(c, "\"", 1);
            c = sl_put(c, l->label.ptr, l->label.len);
            c = sl_put_u64(sl_put(c, "\";r=", 4), d->item[i].r.remaining);
            c = sl_put_u64(sl_put(c, ";t=", 3), ceil_s(d->item[i].r.reset_ns));
        }
        size_t np = (size_t)(p - pol), nc = (size_t)(c - cur);
        sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("RateLimit-Policy"), (sl_str_t){pol, np});
        sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("RateLimit"), (sl_str_t){cur, nc});
    }
    if (rl->headers == SL_RATE_HEADERS_BOTH || rl->headers == SL_RATE_HEADERS_LEGACY) {
        const sl_gcra_result_t *r = &d->item[tight].r;
        add_u64(x, "X-RateLimit-Limit", r->limit);
        add_u64(x, "X-RateLimit-Remaining", r->remaining);
        add_u64(x, "X-RateLimit-Reset", ceil_s(r->reset_ns));
    }
}

/* ---- usage reads (filters/usage.h) ------------------------------------------------------------ */

/* The table every route's limits use (one per process, it outlives every snapshot); set at the
 * first create, read by the admin API. */
static _Atomic(sl_gcra_table_t *) usage_table;

void sl__rate_note_table(sl_gcra_table_t *t)
{
    atomic_store_explicit(&usage_table, t, memory_order_release);
}

bool sl__rate_usage_key(const sl_rate_limit_conf_t *l, sl_str_t consumer, sl_str_t route, uint8_t *buf, size_t *len)
{
    return key_value(l, consumer, route, NULL, NULL, buf, len);
}

static bool key_has(const sl_rate_limit_conf_t *c, enum sl_rate_key_part part)
{
    for (size_t i = 0; i < c->nparts; i++)
        if (c->parts[i] == part)
            return true;
    return false;
}

/* One rate limit's item for `consumer` on `route` (the scope is "*" for a global limit). */
static void usage_limit(const sl_rate_limit_conf_t *c, sl_str_t scope, size_t index, bool global, sl_str_t route,
                        sl_str_t consumer, sl_gcra_table_t *t, uint64_t now_ns, sl_filters_usage_cb cb, void *arg)
{
    limit_t l;
    limit_init(&l, c, scope, index, global);
    sl_filters_usage_item_t it = {.global = global, .route = route, .label = l.label_buf, .conf = c};
    uint8_t buf[SL__RATE_KEY_BUF];
    size_t len = 0;
    it.per_consumer = sl__rate_usage_key(c, consumer, route, buf, &len);
    if (it.per_consumer) {
        /* Peek with the filter's clock base, so the TAT compares with the same "now". */
        sl_gcra_key_t key = sl_gcra_key_digest_prefixed(&l.id_prefix, (sl_str_t){(const char *)buf, len});
        it.tracked = sl_gcra_peek(t, key, &l.params, now_ns + SL__TABLE_TIME_BIAS, &it.r) == 0;
    }
    cb(arg, &it);
}

int sl_filters_usage(const sl_config_t *cfg, sl_str_t consumer, uint64_t now_mono_ns, uint64_t now_wall_ns,
                     sl_filters_usage_cb cb, void *arg)
{
    sl_gcra_table_t *t = atomic_load_explicit(&usage_table, memory_order_acquire);
    int n = 0;
    for (size_t i = 0; i < cfg->nrate_limits; i++) {
        const sl_rate_limit_conf_t *c = &cfg->rate_limits[i];
        if (!key_has(c, SL_RATE_KEY_ROUTE)) {
            usage_limit(c, SL_STR_LIT("*"), i, true, SL_STR_LIT("*"), consumer, t, now_mono_ns, cb, arg);
            n++;
            continue;
        }
        for (size_t r = 0; r < cfg->nroutes; r++, n++)
            usage_limit(c, SL_STR_LIT("*"), i, true, cfg->routes[r].name, consumer, t, now_mono_ns, cb, arg);
    }
    for (size_t r = 0; r < cfg->nroutes; r++) {
        const sl_route_conf_t *route = &cfg->routes[r];
        for (size_t i = 0; i < route->nrate_limits; i++, n++)
            usage_limit(&route->rate_limits[i], route->name, i, false, route->name, consumer, t, now_mono_ns, cb, arg);
        if (!route->quota.enabled)
            continue;
        const sl_rate_limit_conf_t *c = &route->quota.l;
        sl_filters_usage_item_t it = {.quota = true,
                                      .route = route->name,
                                      .label = c->name.len ? c->name.ptr : "0",
                                      .conf = c,
                                      .period = route->quota.period};
        uint8_t buf[SL__RATE_KEY_BUF];
        size_t len = 0;
        it.per_consumer = sl__rate_usage_key(c, consumer, route->name, buf, &len);
        sl__quota_usage(route, t, it.per_consumer ? buf : NULL, len, now_mono_ns, now_wall_ns, &it);
        cb(arg, &it);
        n++;
    }
    return t != NULL ? n : SL_ENOTFOUND;
}

const sl_filter_type_t sl_filter_rate_limit = {
    .name = "rate_limit",
    .create = rl_create,
    .destroy = rl_destroy,
    .on_request = rl_on_request,
    .on_response_headers = rl_on_response_headers,
    .on_abort = rl_on_abort,
};
