/*
 * Request-side phases for every exchange: match a route, apply its request header edits, and
 * hand the exchange to the route's answer. Local answers (respond, echo, errors) are made here;
 * proxied routes go to the snapshot's proxy handler (src/upstream), which this module never
 * includes, so the pipeline stays below the upstream layer.
 */
#include "pipeline/pipeline.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "common/time.h"
#include "http/reply.h"
#include "pipeline/snapshot.h"
#include "router/router.h"

/* ---- request ids ------------------------------------------------------------------------- */

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
            sl_reply_error(x, x->cause, NULL);
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

void sl_pipeline_process(sl_exchange_t *x)
{
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
    sl_router_match(snap->router, &in, &res);
    if (res.status == SL_ROUTER_NOT_FOUND) {
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
    const sl_header_edits_conf_t *e = &r->request_headers;
    if (e->nremove || e->nset || e->nadd)
        apply_edits(x, &x->req_headers, e);
    if (r->respond.enabled) {
        respond(x, r);
        return;
    }
    snap->proxy(x, r);
}
