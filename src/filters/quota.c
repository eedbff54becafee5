/*
 * The quota filter (docs/ratelimit.md "Quotas"): after rate limits, `limit` requests per key per
 * calendar window (hour, day or month, UTC), refused with 429 quota_exceeded and a Retry-After
 * that runs to the window's end. Locally the count lives in the same limiter table as the rate
 * limits (gcra.h), as a GCRA key whose clock is pinned to the window's start: with T = window /
 * limit and tolerance (limit - 1) * T, admitting at "now = window start" is exactly a counter
 * that allows `limit` requests, and the count is void as soon as the next window starts (its
 * TAT is then in the past, so the slot is free). Counts do not survive a restart.
 *
 * In cluster mode (`stores.redis`) the count lives in Redis (store/store.h, script mode `q`),
 * keyed by the quota's identity and the key value, with Redis' own UTC clock choosing the
 * window: it survives restarts and is shared by every node. Redis down: `allow` counts on
 * the local table as above (per node), `deny` answers 503 gateway_overloaded.
 */
#include <inttypes.h>
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

#define NS_PER_S    UINT64_C(1000000000)
#define NS_PER_HOUR (3600 * NS_PER_S)
#define NS_PER_DAY  (86400 * NS_PER_S)

typedef struct quota {
    sl_gcra_table_t *table;
    sl_store_t *store; /* cluster mode; NULL: local */
    const sl__ip_trust_t *trust;
    const sl_quota_conf_t *conf;
    int64_t wall_minus_mono_ns; /* read once per snapshot: windows are UTC, the table monotonic */
    sl_str_t id;
    char id_buf[176];
    char detail_buf[148];
} quota_t;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The quota's identity (route, fingerprint of its limit, period and key): kept across reloads
 * while the definition is unchanged, like a rate limit's. */
static sl_str_t quota_id(const sl_route_conf_t *route, char *buf, size_t size)
{
    const sl_rate_limit_conf_t *l = &route->quota.l;
    uint64_t fp = 1469598103934665603ull;
    fp = fnv(fp, &l->rate, sizeof(l->rate));
    fp = fnv(fp, &route->quota.period, sizeof(route->quota.period));
    fp = fnv(fp, l->key.ptr, l->key.len);
    int n = snprintf(buf, size, "%.*s%cquota%c%016" PRIx64, SL_STR_FMT(route->name), 0, 0, fp);
    return (sl_str_t){buf, (size_t)n};
}

static int quota_create(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                        sl_config_errors_t *errs)
{
    *state = NULL;
    if (!route->quota.enabled)
        return 0;
    sl_gcra_table_t *table = sl__filters_shared_rate_table(shared);
    if (table == NULL) {
        sl_config_errors_add(errs, snap->cfg->path, route->pos.line, route->pos.col,
                             "route '%s': a quota needs the limiter table, which this process has not created",
                             route->name.ptr);
        return SL_ECONFIG;
    }
    quota_t *q = sl_xcalloc(1, sizeof(*q));
    q->table = table;
    q->store = snap->cfg->stores.redis.enabled ? sl__filters_shared_store(shared) : NULL;
    q->trust = sl__filters_shared_trust(shared);
    q->conf = &route->quota;
    q->wall_minus_mono_ns = (int64_t)(sl_time_wall_ms() * 1000000ull) - (int64_t)sl_time_mono_ns();
    const sl_rate_limit_conf_t *l = &route->quota.l;
    q->id = quota_id(route, q->id_buf, sizeof(q->id_buf));
    sl__rate_note_table(table);
    snprintf(q->detail_buf, sizeof(q->detail_buf), "quota:%s", l->name.len ? l->name.ptr : "0");
    *state = q;
    return 0;
}

static void quota_destroy(void *state)
{
    free(state);
}

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (H. Hinnant's algorithms). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* The UTC window holding `wall_ns`: [start, end) in ns since the epoch. */
static void window_of(enum sl_quota_period p, uint64_t wall_ns, uint64_t *start, uint64_t *end)
{
    if (p == SL_QUOTA_HOUR || p == SL_QUOTA_DAY) {
        uint64_t len = p == SL_QUOTA_HOUR ? NS_PER_HOUR : NS_PER_DAY;
        *start = wall_ns - wall_ns % len;
        *end = *start + len;
        return;
    }
    int64_t y;
    unsigned m;
    civil_from_days((int64_t)(wall_ns / NS_PER_DAY), &y, &m);
    *start = (uint64_t)days_from_civil(y, m, 1) * NS_PER_DAY;
    *end = (uint64_t)(m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1)) * NS_PER_DAY;
}

static uint64_t ceil_s(uint64_t ns)
{
    return ns / NS_PER_S + (ns % NS_PER_S != 0);
}

static enum sl_filter_status refuse(sl_exchange_t *x, const quota_t *q, uint64_t retry_s)
{
    char *ra = sl_arena_alloc(&x->arena, 24);
    int n = snprintf(ra, 24, "%" PRIu64, retry_s ? retry_s : 1);
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Retry-After"), (sl_str_t){ra, (size_t)n});
    x->cause = SL_CAUSE_QUOTA_EXCEEDED;
    x->cause_detail = q->detail_buf;
    return SL_FILTER_ERROR;
}

/* The local count (the limiter table): CONTINUE or ERROR with Retry-After set. */
static enum sl_filter_status local_decide(sl_exchange_t *x, const quota_t *q, sl_gcra_key_t key)
{
    const sl_rate_limit_conf_t *l = &q->conf->l;
    /* The request's start time, not another clock read: a request begun before midnight counts
     * for the day it began. */
    uint64_t wall_ns = (uint64_t)((int64_t)x->start_ns + q->wall_minus_mono_ns);
    uint64_t start, end;
    window_of(q->conf->period, wall_ns, &start, &end);
    uint64_t T = (end - start) / l->rate;
    sl_gcra_params_t p = {.emission_ns = T, .tolerance_ns = (l->rate - 1) * T};
    uint64_t pinned = (uint64_t)((int64_t)start - q->wall_minus_mono_ns) + SL__TABLE_TIME_BIAS;
    sl_gcra_result_t r;
    if (sl_gcra_admit(q->table, key, &p, pinned, 1, &r) != 0 || r.allowed)
        return SL_FILTER_CONTINUE; /* a full table admits (and is counted), as for rate limits */
    return refuse(x, q, ceil_s(end - wall_ns));
}

void sl__quota_usage(const sl_route_conf_t *route, const sl_gcra_table_t *t, const uint8_t *val, size_t len,
                     uint64_t now_mono_ns, uint64_t now_wall_ns, sl_filters_usage_item_t *it)
{
    const sl_rate_limit_conf_t *l = &route->quota.l;
    uint64_t start, end;
    window_of(route->quota.period, now_wall_ns, &start, &end);
    it->window_start_ms = start / 1000000;
    it->window_end_ms = end / 1000000;
    it->r = (sl_gcra_result_t){.allowed = true, .limit = l->rate, .remaining = l->rate, .reset_ns = end - now_wall_ns};
    if (val == NULL)
        return;
    char idb[176];
    sl_str_t id = quota_id(route, idb, sizeof(idb));
    sl_gcra_key_t key = sl_gcra_key_digest(id, (sl_str_t){(const char *)val, len});
    uint64_t T = (end - start) / l->rate;
    sl_gcra_params_t p = {.emission_ns = T, .tolerance_ns = (l->rate - 1) * T};
    /* The filter pins its clock to the window's start (see the top); so does this read. Its
     * wall-to-monotonic offset was taken at its create, this one now: they may differ by a clock
     * step, far below T (a window over its limit), hence the rounding of the count. */
    int64_t wall_minus_mono = (int64_t)now_wall_ns - (int64_t)now_mono_ns;
    uint64_t pinned = (uint64_t)((int64_t)start - wall_minus_mono) + SL__TABLE_TIME_BIAS;
    sl_gcra_result_t r;
    it->tracked = sl_gcra_peek(t, key, &p, pinned, &r) == 0;
    if (!it->tracked)
        return;
    uint64_t used = (r.reset_ns + T / 2) / T;
    it->used = used < l->rate ? used : l->rate;
    it->r.remaining = l->rate - it->used;
    it->r.allowed = it->r.remaining > 0;
    /* Exhausted: the next request is admitted when the next window starts. */
    it->r.retry_after_ns = it->r.allowed ? 0 : end - now_wall_ns;
}

/* A paused exchange's wait for Redis (x->handler_data until the answer). */
typedef struct quota_wait {
    sl_exchange_t *x;
    const quota_t *q;
    sl_gcra_key_t key;
    sl_store_req_t *req;
} quota_wait_t;

static enum sl_filter_status store_decided(sl_exchange_t *x, const quota_t *q, sl_gcra_key_t key,
                                           const sl_store_quota_result_t *res)
{
    if (res->local) /* Redis down, on_failure allow: count on this node */
        return local_decide(x, q, key);
    if (res->allowed)
        return SL_FILTER_CONTINUE;
    return refuse(x, q, ceil_s(res->reset_ns));
}

static void quota_answered(void *arg, int status, const sl_store_quota_result_t *res)
{
    quota_wait_t *w = arg;
    sl_exchange_t *x = w->x;
    x->handler_data = NULL;
    if (status != 0) {
        sl_filter_fail(x, SL_CAUSE_GATEWAY_OVERLOADED, "redis_unavailable");
        return;
    }
    if (store_decided(x, w->q, w->key, res) == SL_FILTER_CONTINUE)
        sl_filter_resume(x);
    else
        sl_filter_fail(x, x->cause, x->cause_detail);
}

static void quota_on_abort(sl_exchange_t *x, void *state)
{
    (void)state;
    quota_wait_t *w = x->handler_data;
    if (w != NULL) {
        sl_store_cancel(w->req);
        x->handler_data = NULL;
    }
}

static enum sl_filter_status quota_on_request(sl_exchange_t *x, void *state)
{
    const quota_t *q = state;
    const sl_rate_limit_conf_t *l = &q->conf->l;
    uint8_t buf[SL__RATE_KEY_BUF];
    size_t len;
    if (!sl__rate_key_value(x, q->trust, l, buf, &len))
        return SL_FILTER_CONTINUE;
    sl_gcra_key_t key = sl_gcra_key_digest(q->id, (sl_str_t){(const char *)buf, len});
    sl_store_worker_t *sw = q->store != NULL ? sl__rate_thread_store() : NULL;
    if (sw == NULL)
        return local_decide(x, q, key);
    static const enum sl_store_window windows[] = {
        [SL_QUOTA_HOUR] = SL_STORE_HOUR, [SL_QUOTA_DAY] = SL_STORE_DAY, [SL_QUOTA_MONTH] = SL_STORE_MONTH};
    char text[SL__RATE_KEY_TEXT_BUF];
    size_t tlen = sl__rate_key_text(q->id, buf, len, text);
    quota_wait_t *w = sl_arena_alloc(&x->arena, sizeof(*w));
    *w = (quota_wait_t){.x = x, .q = q, .key = key};
    sl_store_quota_result_t res;
    int rc = sl_store_quota(sw, (sl_str_t){text, tlen}, windows[q->conf->period], l->rate, 1, &res, quota_answered, w,
                            &w->req);
    if (rc == 0) {
        /* handler_data is free until the route's answer runs (auth's pauses use it likewise). */
        x->handler_data = w;
        return SL_FILTER_PAUSE;
    }
    if (rc < 0) {
        x->cause = SL_CAUSE_GATEWAY_OVERLOADED;
        x->cause_detail = "redis_unavailable";
        return SL_FILTER_ERROR;
    }
    return store_decided(x, q, key, &res);
}

const sl_filter_type_t sl_filter_quota = {
    .name = "quota",
    .create = quota_create,
    .destroy = quota_destroy,
    .on_request = quota_on_request,
    .on_abort = quota_on_abort,
};
