/* Admin views of runtime state; see views.h. */
#include "admin/views.h"

#include <string.h>

#include "common/time.h"
#include "upstream/balancer.h"
#include "upstream/breaker.h"
#include "upstream/proxy.h"

typedef struct check_lookup {
    const sl_upstream_conf_t *up;
    json_t *targets; /* array being filled, same order as conf targets */
} check_lookup_t;

static void on_health_target(void *arg, const sl_health_target_info_t *info)
{
    check_lookup_t *l = arg;
    if (strlen(info->upstream) != l->up->name.len || memcmp(info->upstream, l->up->name.ptr, l->up->name.len) != 0)
        return;
    for (size_t i = 0; i < l->up->ntargets; i++) {
        const sl_target_conf_t *t = &l->up->targets[i];
        if (strlen(info->target) != t->address.len || memcmp(info->target, t->address.ptr, t->address.len) != 0)
            continue;
        json_t *o = json_array_get(l->targets, i);
        if (info->last_check_ms == 0)
            continue;
        char when[40];
        sl_time_format_iso8601(when, sizeof(when), info->last_check_ms);
        json_object_set_new(
            o, "last_check",
            json_pack("{s:s, s:s, s:b}", "time", when, "result", info->last_result, "healthy", info->healthy));
    }
}

static const char *balance_name(enum sl_balance b)
{
    switch (b) {
    case SL_BALANCE_ROUND_ROBIN:
        return "round_robin";
    case SL_BALANCE_LEAST_CONN:
        return "least_conn";
    case SL_BALANCE_HASH:
        return "hash";
    case SL_BALANCE_P2C_EWMA:
        return "p2c_ewma";
    }
    return "unknown";
}

json_t *sl_admin_upstream_health(const sl_snapshot_t *snap, size_t upstream_index, sl_health_t *health,
                                 sl_admin_target_window_fn window, void *window_arg)
{
    const sl_upstream_conf_t *up = &snap->cfg->upstreams[upstream_index];
    sl_target_state_t *states = sl_proxy_target_states(snap, upstream_index);
    sl_breaker_t *breaker = sl_proxy_breaker(snap, upstream_index);
    json_t *targets = json_array();
    for (size_t i = 0; i < up->ntargets; i++) {
        const sl_target_conf_t *t = &up->targets[i];
        unsigned flags = states ? atomic_load_explicit(&states[i].flags, memory_order_relaxed) : 0;
        int inflight = states ? atomic_load_explicit(&states[i].inflight, memory_order_relaxed) : 0;
        uint64_t ewma = states ? atomic_load_explicit(&states[i].ewma_ns, memory_order_relaxed) : 0;
        int circuit = breaker ? sl_breaker_state(breaker, i) : SL_BREAKER_CLOSED;
        const char *health_s = (flags & SL_TARGET_UNRESOLVED)  ? "unresolved"
                               : (flags & SL_TARGET_UNHEALTHY) ? "unhealthy"
                               : up->health_active.enabled     ? "healthy"
                                                               : "unchecked";
        json_t *o = json_pack("{s:s%, s:I, s:b, s:s, s:b, s:s, s:i}", "address", t->address.ptr, t->address.len,
                              "weight", (json_int_t)t->weight, "available", (flags & SL_TARGET_UNAVAILABLE) == 0,
                              "health", health_s, "ejected", (flags & SL_TARGET_EJECTED) != 0, "circuit",
                              circuit == SL_BREAKER_OPEN        ? "open"
                              : circuit == SL_BREAKER_HALF_OPEN ? "half_open"
                                                                : "closed",
                              "inflight", inflight < 0 ? 0 : inflight);
        json_object_set_new(o, "ewma_ms", ewma ? json_real((double)ewma / 1e6) : json_null());
        json_object_set_new(o, "last_check", json_null());
        if (window != NULL) {
            uint64_t req = 0, err = 0;
            window(window_arg, upstream_index, i, &req, &err);
            json_object_set_new(o, "requests_1m", json_integer((json_int_t)req));
            json_object_set_new(o, "errors_1m", json_integer((json_int_t)err));
            json_object_set_new(o, "error_rate_1m", json_real(req ? (double)err / (double)req : 0.0));
        }
        json_array_append_new(targets, o);
    }
    if (health != NULL) {
        check_lookup_t l = {.up = up, .targets = targets};
        sl_health_each(health, on_health_target, &l);
    }
    json_t *j = json_pack("{s:s%, s:s}", "upstream", up->name.ptr, up->name.len, "balance", balance_name(up->balance));
    json_object_set_new(j, "targets", targets);
    return j;
}
