/*
 * Request-side phases for every exchange: match a route, apply its request header edits, and
 * hand the exchange to the route's answer. Local answers (respond, echo, errors) are made here;
 * proxied routes go to the snapshot's proxy handler (src/upstream), which this module never
 * includes, so the pipeline stays below the upstream layer. Request ids and W3C trace context
 * spans are made here too, from one per-worker generator.
 */
#include "pipeline/pipeline.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "common/time.h"
#include "http/reply.h"
#include "net/worker.h"
#include "pipeline/filter.h"
#include "pipeline/internal.h"
#include "pipeline/snapshot.h"
#include "router/router.h"

struct uv_loop_s *sl_exchange_loop(const sl_exchange_t *x)
{
    return &x->worker->loop;
}

/* ---- request ids ------------------------------------------------------------------------- */

/* One generator per worker thread: ids and span ids cost no syscall and no shared write (the
 * seed is one getrandom per thread, ever). */
static _Thread_local uint64_t rng_state[2];

static uint64_t rng_next(void)
{
    /* xorshift128+: fast and good enough for ids (they are not secrets). */
    if (rng_state[0] == 0 && rng_state[1] == 0) {
        if (getrandom(rng_state, sizeof(rng_state), 0) != sizeof(rng_state)) {
            rng_state[0] = sl_time_mono_ns() | 1;
            rng_state[1] = (uint64_t)(uintptr_t)&rng_state ^ sl_time_wall_ms();
        }
    }
    uint64_t s1 = rng_state[0];
    const uint64_t s0 = rng_state[1];
    rng_state[0] = s0;
    s1 ^= s1 << 23;
    rng_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng_state[1] + s0;
}

void sl_request_id_generate(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = rng_next(), b = rng_next();
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (i * 4)) & 15];
        out[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    out[32] = '\0';
}

/* ---- trace context ------------------------------------------------------------------------ */

static bool is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Lowercase hex of `n` bytes, nonzero: W3C Trace Context §3.2.2.3/4 make all-zero ids invalid. */
static void random_hex_id(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t r = 0, any = 0;
    do {
        for (size_t i = 0; i < n; i++) {
            if (i % 8 == 0)
                r = rng_next();
            unsigned b = (unsigned)(r >> (i % 8) * 8) & 0xff;
            any |= b;
            out[2 * i] = hex[b >> 4];
            out[2 * i + 1] = hex[b & 15];
        }
    } while (any == 0);
}

bool sl_traceparent_parse(sl_str_t v, char trace_id[32], char parent_id[16], char flags[2])
{
    /* version 00 is exactly 55 bytes: 2 + 1 + 32 + 1 + 16 + 1 + 2. Uppercase hex is invalid
     * (§3.2.2: lowercase only), and an id of zeros marks a broken caller, not a trace. */
    if (v.len != 55 || v.ptr[0] != '0' || v.ptr[1] != '0' || v.ptr[2] != '-' || v.ptr[35] != '-' || v.ptr[52] != '-')
        return false;
    bool trace_nonzero = false, parent_nonzero = false;
    for (size_t i = 3; i < 35; i++) {
        if (!is_lower_hex(v.ptr[i]))
            return false;
        trace_nonzero |= v.ptr[i] != '0';
    }
    for (size_t i = 36; i < 52; i++) {
        if (!is_lower_hex(v.ptr[i]))
            return false;
        parent_nonzero |= v.ptr[i] != '0';
    }
    if (!is_lower_hex(v.ptr[53]) || !is_lower_hex(v.ptr[54]) || !trace_nonzero || !parent_nonzero)
        return false;
    memcpy(trace_id, v.ptr + 3, 32);
    memcpy(parent_id, v.ptr + 36, 16);
    memcpy(flags, v.ptr + 53, 2);
    return true;
}

void sl_trace_begin(sl_exchange_t *x)
{
    sl_trace_t *t = &x->trace;
    if (t->started)
        return;
    const sl_header_t *tp = NULL;
    size_t n = 0;
    for (size_t i = 0; i < x->req_headers.len; i++)
        if (x->req_headers.items[i].name.len == 11 &&
            sl_str_caseeq(x->req_headers.items[i].name, SL_STR_LIT("traceparent"))) {
            tp = &x->req_headers.items[i];
            n++;
        }
    char parent[16];
    if (n != 1 || !sl_traceparent_parse(tp->value, t->trace_id, parent, t->flags)) {
        random_hex_id(t->trace_id, 16);
        /* Sampled: sluice records every span it makes (the access log line carries trace_id
         * and span_id), and a tracer downstream that samples by its parent (OpenTelemetry's
         * default) would otherwise drop every trace that begins at the gateway. */
        memcpy(t->flags, "01", 2);
    }
    /* One span per exchange: retries to other targets are attempts within it. */
    random_hex_id(t->span_id, 8);
    t->started = true;
}

void sl_trace_format(const sl_trace_t *t, char out[55])
{
    memcpy(out, "00-", 3);
    memcpy(out + 3, t->trace_id, 32);
    out[35] = '-';
    memcpy(out + 36, t->span_id, 16);
    out[52] = '-';
    memcpy(out + 53, t->flags, 2);
}

bool sl_request_id_valid(sl_str_t id)
{
    if (id.len == 0 || id.len > 128)
        return false;
    for (size_t i = 0; i < id.len; i++) {
        char c = id.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

/* ---- header edits ------------------------------------------------------------------------ */

static void apply_edits(sl_exchange_t *x, sl_headers_t *h, const sl_header_edits_conf_t *e)
{
    for (size_t i = 0; i < e->nremove; i++)
        sl_headers_remove(h, e->remove[i]);
    for (size_t i = 0; i < e->nset; i++) {
        sl_headers_remove(h, e->set[i].name);
        sl_headers_add(&x->arena, h, e->set[i].name, e->set[i].value);
    }
    for (size_t i = 0; i < e->nadd; i++)
        sl_headers_add(&x->arena, h, e->add[i].name, e->add[i].value);
}

static const sl_route_conf_t *route_of(const sl_exchange_t *x)
{
    return x->route_index >= 0 ? &x->snap->cfg->routes[x->route_index] : NULL;
}

void sl_pipeline_response_headers(sl_exchange_t *x)
{
    sl__pipeline_chain_response_headers(x);
    const sl_route_conf_t *r = route_of(x);
    if (r != NULL) {
        const sl_header_edits_conf_t *e = &r->response_headers;
        if (e->nremove || e->nset || e->nadd)
            apply_edits(x, &x->resp_headers, e);
    }
}

/* ---- echo -------------------------------------------------------------------------------- */

typedef struct echo_state {
    uint64_t body_bytes;
} echo_state_t;

static void echo_reply(sl_exchange_t *x, uint64_t body_bytes)
{
    /* Size: every header escaped at worst 6x, plus fixed text. Bounded by max_header_bytes. */
    size_t cap = 512 + 6 * (x->path.len + x->query.len + x->route_name.len + x->request_id.len);
    for (size_t i = 0; i < x->req_headers.len; i++)
        cap += 16 + 6 * (x->req_headers.items[i].name.len + x->req_headers.items[i].value.len);
    char *out = sl_arena_alloc(&x->arena, cap);
    size_t n = 0;
    n += (size_t)snprintf(out + n, cap - n, "{\"method\":\"");
    n += sl_json_escape(out + n, x->method_token);
    n += (size_t)snprintf(out + n, cap - n, "\",\"path\":\"");
    n += sl_json_escape(out + n, x->path);
    n += (size_t)snprintf(out + n, cap - n, "\",\"query\":\"");
    n += sl_json_escape(out + n, x->query);
    if (x->minor_version == 2)
        n += (size_t)snprintf(out + n, cap - n, "\",\"http_version\":\"HTTP/2\",\"headers\":{");
    else
        n += (size_t)snprintf(out + n, cap - n, "\",\"http_version\":\"HTTP/1.%d\",\"headers\":{", x->minor_version);
    /* Repeated names are joined with ", " (RFC 9110 §5.3), lowercased like HTTP/2 would. */
    bool first = true;
    for (size_t i = 0; i < x->req_headers.len; i++) {
        sl_str_t name = x->req_headers.items[i].name;
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            if (sl_str_caseeq(x->req_headers.items[j].name, name)) {
                seen = true;
                break;
            }
        if (seen)
            continue;
        out[n++] = first ? '"' : ',';
        if (!first)
            out[n++] = '"';
        first = false;
        for (size_t k = 0; k < name.len; k++)
            out[n++] = sl_ascii_lower(name.ptr[k]);
        n += (size_t)snprintf(out + n, cap - n, "\":\"");
        bool firstval = true;
        for (size_t j = i; j < x->req_headers.len; j++) {
            if (!sl_str_caseeq(x->req_headers.items[j].name, name))
                continue;
            if (!firstval) {
                out[n++] = ',';
                out[n++] = ' ';
            }
            firstval = false;
            n += sl_json_escape(out + n, x->req_headers.items[j].value);
        }
        out[n++] = '"';
    }
    n += (size_t)snprintf(out + n, cap - n, "},\"body_bytes\":%llu,\"route\":\"", (unsigned long long)body_bytes);
    n += sl_json_escape(out + n, x->route_name);
    n += (size_t)snprintf(out + n, cap - n, "\",\"request_id\":\"");
    n += sl_json_escape(out + n, x->request_id);
    n += (size_t)snprintf(out + n, cap - n, "\"}\n");
    const sl_route_conf_t *r = route_of(x);
    sl_str_t ctype = r->respond.content_type.len ? r->respond.content_type : SL_STR_LIT("application/json");
    sl_reply(x, r->respond.status ? r->respond.status : 200, ctype, (sl_str_t){out, n});
}

static void echo_body(sl_exchange_t *x, int status, const char *data, size_t len)
{
    echo_state_t *st = x->handler_data;
    (void)data;
    if (status < 0) {
        if (x->cause != SL_CAUSE_NONE)
            sl_reply_error(x, x->cause, x->cause == SL_CAUSE_BAD_REQUEST ? x->cause_detail : NULL);
        else
            x->down->abort(x);
        return;
    }
    if (len == 0) {
        echo_reply(x, st->body_bytes);
        return;
    }
    st->body_bytes += len;
    x->down->body_resume(x);
}

static void respond(sl_exchange_t *x, const sl_route_conf_t *r)
{
    if (r->respond.echo) {
        if (x->req_body_kind == SL_BODY_NONE) {
            echo_reply(x, 0);
            return;
        }
        echo_state_t *st = sl_arena_alloc(&x->arena, sizeof(*st));
        st->body_bytes = 0;
        x->handler_data = st;
        x->down->body_start(x, echo_body);
        return;
    }
    sl_str_t ctype = r->respond.content_type.len ? r->respond.content_type : SL_STR_LIT("text/plain; charset=utf-8");
    sl_reply(x, r->respond.status ? r->respond.status : 200, ctype, r->respond.body);
}

/* ---- the request side -------------------------------------------------------------------- */

/* A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method, Fetch standard
 * §4.8) asks about the method it names, so it is routed as that method: a route that allows
 * only GET and POST can still answer its preflight. Only routes with `cors` take it; others see
 * a plain OPTIONS request. */
static bool preflight_route(sl_exchange_t *x, const sl_router_input_t *in, sl_router_result_t *res)
{
    const sl_header_t *origin = sl_headers_find(&x->req_headers, SL_STR_LIT("Origin"));
    const sl_header_t *acrm = sl_headers_find(&x->req_headers, SL_STR_LIT("Access-Control-Request-Method"));
    if (origin == NULL || acrm == NULL)
        return false;
    sl_router_input_t as = *in;
    as.method = sl_method_from_str(acrm->value);
    as.method_token = acrm->value;
    sl_router_match(x->snap->router, &as, res);
    return res->status == SL_ROUTER_MATCHED && x->snap->cfg->routes[res->route_index].cors.enabled;
}

/* Load shedding (limits.max_inflight, limits.max_loop_lag): past either limit the worker refuses
 * the lowest-priority routes first, one more priority level for every 10% over the limit, so
 * under overload the important routes keep their latency instead of everyone slowing down.
 * Per worker: the in-flight share is max_inflight / workers, which SO_REUSEPORT keeps even. */
static const char *shed_reason(const sl_exchange_t *x, const sl_route_conf_t *r)
{
    const sl_config_t *cfg = x->snap->cfg;
    const sl_worker_t *w = x->worker;
    if (w == NULL || (cfg->limits.max_inflight == 0 && cfg->limits.max_loop_lag_ms == 0))
        return NULL;
    uint64_t load = 0; /* per mille of the limit */
    const char *why = NULL;
    if (cfg->limits.max_inflight > 0) {
        uint64_t workers = cfg->workers ? cfg->workers : 1;
        uint64_t share = (cfg->limits.max_inflight + workers - 1) / workers;
        load = (uint64_t)w->inflight * 1000 / share;
        why = "shed_inflight";
    }
    if (cfg->limits.max_loop_lag_ms > 0) {
        uint64_t lag = w->last_lag_ns / (cfg->limits.max_loop_lag_ms * 1000u);
        if (lag > load) {
            load = lag;
            why = "shed_loop_lag";
        }
    }
    if (load < 1000 || r->priority >= (load - 1000) / 100 + 1)
        return NULL;
    return why;
}

void sl_pipeline_process(sl_exchange_t *x)
{
    if (x->worker != NULL) {
        x->worker->inflight++;
        x->counted_inflight = true;
    }
    sl_snapshot_t *snap = x->snap;
    sl_router_input_t in = {
        .host = x->host,
        .path = x->path,
        .method = x->method,
        .method_token = x->method_token,
        .headers = x->req_headers.items,
        .nheaders = x->req_headers.len,
    };
    sl_router_result_t res;
    if (x->method == SL_METHOD_OPTIONS && preflight_route(x, &in, &res)) {
        x->preflight = true;
    } else {
        sl_router_match(snap->router, &in, &res);
    }
    if (res.status == SL_ROUTER_NOT_FOUND) {
        /* Sampled for the doctor's routing finding (top unmatched host/path prefixes). */
        if (x->worker != NULL && x->worker->metrics != NULL)
            sl_metrics_observe_unmatched(x->worker->metrics, x->host, x->path);
        sl_reply_error(x, SL_CAUSE_ROUTE_NOT_FOUND, NULL);
        return;
    }
    if (res.status == SL_ROUTER_METHOD_NOT_ALLOWED) {
        char *allow = sl_arena_alloc(&x->arena, 128);
        size_t n = 0;
        for (int m = SL_METHOD_GET; m < SL_METHOD__COUNT; m++)
            if (res.allowed_methods & SL_METHOD_BIT(m))
                n += (size_t)snprintf(allow + n, 128 - n, "%s%s", n ? ", " : "", sl_method_name((enum sl_method)m));
        sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Allow"), (sl_str_t){allow, n});
        sl_reply_error(x, SL_CAUSE_METHOD_NOT_ALLOWED, NULL);
        return;
    }
    const sl_route_conf_t *r = &snap->cfg->routes[res.route_index];
    x->route_index = (long)res.route_index;
    x->route_name = r->name;
    const char *shed = shed_reason(x, r);
    if (shed != NULL) {
        x->cause_detail = shed;
        sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Retry-After"), SL_STR_LIT("1"));
        sl_reply_error(x, SL_CAUSE_GATEWAY_OVERLOADED, NULL);
        return;
    }
    /* Identity headers are the gateway's to set (auth filter): a client's copy never passes. */
    sl_headers_remove(&x->req_headers, SL_STR_LIT("X-Consumer-Id"));
    sl_headers_remove(&x->req_headers, SL_STR_LIT("X-Consumer-Groups"));
    x->chain = snap->chains != NULL && snap->chains[res.route_index].n > 0 ? &snap->chains[res.route_index] : NULL;
    sl__pipeline_chain_start(x);
}

void sl__pipeline_answer(sl_exchange_t *x)
{
    const sl_route_conf_t *r = route_of(x);
    const sl_header_edits_conf_t *e = &r->request_headers;
    if (e->nremove || e->nset || e->nadd)
        apply_edits(x, &x->req_headers, e);
    if (r->respond.enabled) {
        respond(x, r);
        return;
    }
    x->snap->proxy(x, r);
}
