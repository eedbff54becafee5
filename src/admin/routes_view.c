/*
 * The route table view of the admin API (routes_view.h): the router gives the match order, the
 * config each route's details, and this file words them the way docs/admin.md shows them
 * ("prefix /users", "upstream users", "timeout 30s").
 */
#include "admin/routes_view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "router/router.h"

/* jansson returns NULL only when malloc fails; internal allocation failure aborts (STYLE.md). */
static json_t *checked(json_t *j)
{
    SL_BUG_ON(j == NULL);
    return j;
}

static json_t *str_json(sl_str_t s)
{
    return checked(json_stringn(s.ptr != NULL ? s.ptr : "", s.len));
}

static json_t *fmt_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static json_t *fmt_json(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    SL_BUG_ON(n < 0);
    json_t *j = checked(json_stringn(s, (size_t)n));
    free(s);
    return j;
}

/* The largest unit that divides the duration, the way the config writes durations. */
static void duration_text(uint64_t ms, char *buf, size_t len)
{
    if (ms % 3600000 == 0 && ms > 0)
        snprintf(buf, len, "%lluh", (unsigned long long)(ms / 3600000));
    else if (ms % 60000 == 0 && ms > 0)
        snprintf(buf, len, "%llum", (unsigned long long)(ms / 60000));
    else if (ms % 1000 == 0 && ms > 0)
        snprintf(buf, len, "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(buf, len, "%llums", (unsigned long long)ms);
}

static json_t *path_json(const sl_route_match_conf_t *m)
{
    if (m->path_exact.len > 0)
        return fmt_json("exact %.*s", (int)m->path_exact.len, m->path_exact.ptr);
    if (m->path_prefix.len > 0)
        return fmt_json("prefix %.*s", (int)m->path_prefix.len, m->path_prefix.ptr);
    if (m->path_regex.len > 0)
        return fmt_json("regex %.*s", (int)m->path_regex.len, m->path_regex.ptr);
    return checked(json_string("any"));
}

static json_t *methods_json(uint32_t bits)
{
    json_t *a = checked(json_array());
    for (int m = SL_METHOD_GET; m < SL_METHOD__COUNT; m++)
        if (bits & SL_METHOD_BIT(m))
            json_array_append_new(a, checked(json_string(sl_method_name((enum sl_method)m))));
    return a;
}

static json_t *headers_json(const sl_route_match_conf_t *m)
{
    json_t *a = checked(json_array());
    for (size_t i = 0; i < m->nheaders; i++) {
        const sl_header_match_conf_t *h = &m->headers[i];
        int nl = (int)h->name.len, vl = (int)h->value.len;
        switch (h->kind) {
        case SL_HEADER_MATCH_EXACT:
            json_array_append_new(a, fmt_json("%.*s: %.*s", nl, h->name.ptr, vl, h->value.ptr));
            break;
        case SL_HEADER_MATCH_PRESENT:
            json_array_append_new(a, fmt_json("%.*s present", nl, h->name.ptr));
            break;
        case SL_HEADER_MATCH_ABSENT:
            json_array_append_new(a, fmt_json("%.*s absent", nl, h->name.ptr));
            break;
        case SL_HEADER_MATCH_REGEX:
            json_array_append_new(a, fmt_json("%.*s ~ %.*s", nl, h->name.ptr, vl, h->value.ptr));
            break;
        }
    }
    return a;
}

static json_t *action_json(const sl_route_conf_t *rc)
{
    if (rc->respond.enabled && rc->respond.echo)
        return checked(json_string("echo"));
    if (rc->respond.enabled)
        return fmt_json("respond %u", (unsigned)rc->respond.status);
    if (rc->nsplit > 0) {
        uint64_t total = 0;
        for (size_t i = 0; i < rc->nsplit; i++)
            total += rc->split[i].weight;
        char buf[1024];
        size_t n = 0;
        for (size_t i = 0; i < rc->nsplit && n < sizeof(buf); i++) {
            const sl_route_split_conf_t *s = &rc->split[i];
            double pct = total > 0 ? 100.0 * s->weight / (double)total : 0;
            /* Whole percents as written ("80%"); a third shows as "33.3%", not a rounded lie. */
            int w = pct == (double)(long)pct ? snprintf(buf + n, sizeof(buf) - n, "%s%.*s %ld%%", i ? ", " : "",
                                                        (int)s->upstream.len, s->upstream.ptr, (long)pct)
                                             : snprintf(buf + n, sizeof(buf) - n, "%s%.*s %.1f%%", i ? ", " : "",
                                                        (int)s->upstream.len, s->upstream.ptr, pct);
            n += w > 0 ? (size_t)w : 0;
        }
        return fmt_json("split %s", buf);
    }
    return fmt_json("upstream %.*s", (int)rc->upstream.len, rc->upstream.ptr);
}

/* "set A, B; add C; remove D" of one direction's header edits. */
static json_t *edits_json(const char *what, const sl_header_edits_conf_t *e)
{
    char buf[1024];
    size_t n = 0;
    const struct {
        const char *verb;
        const sl_header_kv_conf_t *kv;
        const sl_str_t *names;
        size_t count;
    } parts[] = {
        {"remove", NULL, e->remove, e->nremove},
        {"set", e->set, NULL, e->nset},
        {"add", e->add, NULL, e->nadd},
    };
    for (size_t p = 0; p < SL_ARRAY_SIZE(parts); p++) {
        for (size_t i = 0; i < parts[p].count && n < sizeof(buf); i++) {
            sl_str_t name = parts[p].kv != NULL ? parts[p].kv[i].name : parts[p].names[i];
            int w = snprintf(buf + n, sizeof(buf) - n, "%s%s%s%.*s", n ? (i ? ", " : "; ") : "", i ? "" : parts[p].verb,
                             i ? "" : " ", (int)name.len, name.ptr);
            n += w > 0 ? (size_t)w : 0;
        }
    }
    return fmt_json("%s: %s", what, buf);
}

/* In the order they act on a request: the request's headers are edited when the route is
 * chosen, the path when the upstream request is built, the timeout covers the tries, the
 * response's headers last. */
/* The filter chain first, in its fixed order (src/filters/registry.c). */
static void chain_json(json_t *a, const sl_route_conf_t *rc)
{
    if (rc->has_ip_rules)
        json_array_append_new(a, fmt_json("ip_rules allow %zu deny %zu", rc->ip_rules.nallow, rc->ip_rules.ndeny));
    if (rc->cors.enabled)
        json_array_append_new(a, checked(json_string("cors")));
    const sl_route_auth_conf_t *au = &rc->auth;
    if (au->nmethods > 0) {
        char buf[256];
        size_t n = (size_t)snprintf(buf, sizeof(buf), "auth");
        for (size_t i = 0; i < au->nmethods && n < sizeof(buf); i++) {
            const sl_auth_method_conf_t *m = &au->methods[i];
            static const char *const kinds[] = {"", "api_key", "basic", "jwt", "introspection", "mtls"};
            _Static_assert(sizeof(kinds) / sizeof(kinds[0]) == SL_AUTH_MTLS + 1, "a name for every auth kind");
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s %s%s%.*s", i ? "," : "", kinds[m->kind],
                                  m->ref.len ? " " : "", (int)m->ref.len, m->ref.ptr);
        }
        if (au->anonymous && n < sizeof(buf))
            snprintf(buf + n, sizeof(buf) - n, ", anonymous");
        json_array_append_new(a, checked(json_string(buf)));
    }
    if (rc->has_acl)
        json_array_append_new(a, checked(json_string("acl")));
}

static json_t *filters_json(const sl_route_conf_t *rc)
{
    json_t *a = checked(json_array());
    chain_json(a, rc);
    const sl_header_edits_conf_t *rq = &rc->request_headers, *rs = &rc->response_headers;
    if (rq->nremove + rq->nset + rq->nadd > 0)
        json_array_append_new(a, edits_json("request_headers", rq));
    if (!rc->respond.enabled) {
        if (rc->strip_prefix && rc->match.path_prefix.len > 0)
            json_array_append_new(a, checked(json_string("strip_prefix")));
        if (rc->rewrite_regex.len > 0)
            json_array_append_new(a, fmt_json("rewrite %.*s -> %.*s", (int)rc->rewrite_regex.len, rc->rewrite_regex.ptr,
                                              (int)rc->rewrite_replacement.len, rc->rewrite_replacement.ptr));
        if (rc->timeout_ms > 0) {
            char d[32];
            duration_text(rc->timeout_ms, d, sizeof(d));
            json_array_append_new(a, fmt_json("timeout %s", d));
        }
    }
    if (rs->nremove + rs->nset + rs->nadd > 0)
        json_array_append_new(a, edits_json("response_headers", rs));
    return a;
}

json_t *sl_admin_routes_table(const sl_snapshot_t *snap)
{
    const sl_config_t *cfg = snap->cfg;
    json_t *routes = checked(json_array());
    size_t n = cfg->nroutes;
    size_t *order = sl_xmalloc((n ? n : 1) * sizeof(*order));
    n = sl_router_match_order(snap->router, order, n);
    for (size_t i = 0; i < n; i++) {
        const sl_route_conf_t *rc = &cfg->routes[order[i]];
        json_t *hosts = checked(json_array());
        for (size_t h = 0; h < rc->match.nhosts; h++)
            json_array_append_new(hosts, str_json(rc->match.hosts[h]));
        json_t *r = json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "order", (json_int_t)(i + 1), "name",
                              str_json(rc->name), "hosts", hosts, "path", path_json(&rc->match), "methods",
                              methods_json(rc->match.methods), "headers", headers_json(&rc->match), "action",
                              action_json(rc), "filters", filters_json(rc));
        json_array_append_new(routes, checked(r));
    }
    free(order);
    return checked(json_pack("{s:o}", "routes", routes));
}
