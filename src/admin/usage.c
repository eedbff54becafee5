/*
 * GET /consumers/NAME/usage (docs/admin.md, docs/ratelimit.md "Reading a consumer's usage"):
 * every rate limit and quota a request of the consumer meets, with what is left of it now.
 *
 * The limits come from the running snapshot's config (the `current` hook): the identities it
 * yields are the filters' own, so the keys read are exactly the keys admitted against. The
 * figures come from the process's limiter table through filters/usage.h, read without a write or a lock, so
 * the data path never notices. In cluster mode (stores.redis) the answer is this node's table
 * and says so (`"source": "local"`): Redis holds the cluster's figures, and reading them would
 * need an asynchronous answer the admin server does not have.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "admin/admin.h"
#include "common/error.h"
#include "common/time.h"
#include "filters/usage.h"
#include "pipeline/snapshot.h"

static json_t *error_json(const char *error, const char *message)
{
    return json_pack("{s:s, s:s}", "error", error, "message", message);
}

static json_t *iso_time(uint64_t wall_ms)
{
    char buf[40];
    sl_time_format_iso8601(buf, sizeof(buf), wall_ms);
    return json_string(buf);
}

static const char *period_name(uint64_t period_ms)
{
    switch (period_ms) {
    case 1000:
        return "second";
    case 60000:
        return "minute";
    case 3600000:
        return "hour";
    case 86400000:
        return "day";
    default:
        return "custom";
    }
}

/* Seconds, rounded up like Retry-After (a client waiting that long is admitted). */
static json_int_t ceil_s(uint64_t ns)
{
    if (ns == UINT64_MAX)
        return -1;
    return (json_int_t)(ns / 1000000000u + (ns % 1000000000u != 0));
}

typedef struct usage_ctx {
    json_t *items;
    uint64_t now_wall_ms;
    bool cluster;
} usage_ctx_t;

static void on_item(void *arg, const sl_filters_usage_item_t *it)
{
    usage_ctx_t *u = arg;
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(it->quota ? "quota" : "rate_limit"));
    json_object_set_new(o, "route", json_stringn(it->route.ptr, it->route.len));
    json_object_set_new(o, "name", json_string(it->label));
    json_object_set_new(o, "key", json_stringn(it->conf->key.ptr, it->conf->key.len));
    if (it->quota) {
        static const char *const periods[] = {
            [SL_QUOTA_HOUR] = "hour", [SL_QUOTA_DAY] = "day", [SL_QUOTA_MONTH] = "month"};
        json_object_set_new(o, "limit", json_integer((json_int_t)it->conf->rate));
        json_object_set_new(o, "period", json_string(periods[it->period]));
    } else {
        json_object_set_new(o, "rate", json_integer((json_int_t)it->conf->rate));
        json_object_set_new(o, "period", json_string(period_name(it->conf->period_ms)));
        json_object_set_new(o, "period_seconds", json_integer((json_int_t)(it->conf->period_ms / 1000)));
        json_object_set_new(o, "burst", json_integer((json_int_t)it->conf->burst));
    }
    json_object_set_new(o, "per_consumer", json_boolean(it->per_consumer));
    if (!it->per_consumer) {
        /* Per address or per header value: the budget is not this consumer's alone. */
        json_object_set_new(o, "usage", json_null());
        json_array_append_new(u->items, o);
        return;
    }
    json_t *g = json_object();
    if (it->quota) {
        json_object_set_new(g, "used", json_integer((json_int_t)it->used));
        json_object_set_new(g, "window_start", iso_time(it->window_start_ms));
        json_object_set_new(g, "window_end", iso_time(it->window_end_ms));
    } else {
        /* In requests: what the full budget is, what has been spent of it and not yet
         * earned back at the steady rate. */
        json_object_set_new(g, "used", json_integer((json_int_t)(it->r.limit - it->r.remaining)));
    }
    json_object_set_new(g, "limit", json_integer((json_int_t)it->r.limit));
    json_object_set_new(g, "remaining", json_integer((json_int_t)it->r.remaining));
    json_object_set_new(g, "reset_seconds", json_integer(ceil_s(it->r.reset_ns)));
    json_object_set_new(g, "reset", iso_time(u->now_wall_ms + (it->r.reset_ns + 999999) / 1000000));
    json_object_set_new(g, "retry_after_seconds", json_integer(it->r.allowed ? 0 : ceil_s(it->r.retry_after_ns)));
    json_object_set_new(g, "tracked", json_boolean(it->tracked));
    json_object_set_new(o, "usage", g);
    json_array_append_new(u->items, o);
}

json_t *sl_admin_usage(const sl_admin_hooks_t *h, const char *consumer, bool get, int *status)
{
    if (!get) {
        *status = 405;
        return error_json("method_not_allowed", "This endpoint does not take that method.");
    }
    /* The running snapshot's config: its limits are the ones the filters were built from, and
     * reading it parses nothing. */
    const struct sl_snapshot *snap = h->current != NULL ? h->current(h->ctx) : NULL;
    if (snap == NULL) {
        *status = 404;
        return error_json("not_found", "No such admin endpoint.");
    }
    const sl_config_t *cfg = snap->cfg;
    sl_str_t name = sl_str_from_cstr(consumer);
    bool known = false;
    for (size_t i = 0; i < cfg->nconsumers && !known; i++)
        known = sl_str_eq(cfg->consumers[i].name, name);
    if (!known) {
        char msg[320];
        snprintf(msg, sizeof(msg), "No consumer named '%.200s'.", consumer);
        *status = 404;
        return error_json("not_found", msg);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t wall_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    usage_ctx_t u = {.items = json_array(), .now_wall_ms = wall_ns / 1000000, .cluster = cfg->stores.redis.enabled};
    sl_filters_usage(cfg, name, sl_time_mono_ns(), wall_ns, on_item, &u);
    json_t *out = json_object();
    json_object_set_new(out, "consumer", json_string(consumer));
    json_object_set_new(out, "time", iso_time(u.now_wall_ms));
    json_object_set_new(out, "source", json_string("local"));
    json_object_set_new(out, "cluster", json_boolean(u.cluster));
    if (u.cluster)
        json_object_set_new(out, "note",
                            json_string("Cluster mode: limits are decided in Redis; these figures are this node's "
                                        "local table, which holds only what it decided while Redis was down."));
    json_object_set_new(out, "limits", u.items);
    *status = 200;
    return out;
}
