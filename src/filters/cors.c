/*
 * The cors filter (Fetch standard, "CORS protocol"): a preflight routed here by the pipeline
 * (x->preflight) is answered at the gateway, never forwarded; an actual request from an allowed
 * origin gets the Access-Control-* response headers on its way back. A request from an origin
 * that is not allowed is still served, without those headers: the browser enforces CORS, and
 * non-browser clients are none of its business.
 */
#include <stdio.h>
#include <string.h>

#include "common/bug.h"
#include "filters/filters.h"
#include "http/method.h"
#include "http/reply.h"

static bool origin_allowed(const sl_cors_conf_t *c, sl_str_t origin)
{
    if (c->any_origin)
        return true;
    /* Origins compare as serialised (RFC 6454 §6.2): scheme and host case-insensitively. */
    for (size_t i = 0; i < c->norigins; i++)
        if (sl_str_caseeq(c->origins[i], origin))
            return true;
    return false;
}

static bool header_allowed(const sl_cors_conf_t *c, sl_str_t name)
{
    for (size_t i = 0; i < c->nheaders; i++)
        if (sl_str_caseeq(c->headers[i], name))
            return true;
    return false;
}

/* Every name of Access-Control-Request-Headers is allowed (a comma list, OWS around items). */
static bool request_headers_allowed(const sl_cors_conf_t *c, sl_str_t list)
{
    if (c->nheaders == 0)
        return true; /* none configured: reflect what the browser asks for */
    size_t i = 0;
    while (i < list.len) {
        while (i < list.len && (list.ptr[i] == ' ' || list.ptr[i] == '\t' || list.ptr[i] == ','))
            i++;
        size_t j = i;
        while (j < list.len && list.ptr[j] != ',' && list.ptr[j] != ' ' && list.ptr[j] != '\t')
            j++;
        if (j > i && !header_allowed(c, (sl_str_t){list.ptr + i, j - i}))
            return false;
        i = j;
    }
    return true;
}

static sl_str_t join(sl_arena_t *a, const sl_str_t *items, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += items[i].len + 2;
    char *out = sl_arena_alloc(a, len + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k) {
            out[k++] = ',';
            out[k++] = ' ';
        }
        memcpy(out + k, items[i].ptr, items[i].len);
        k += items[i].len;
    }
    return (sl_str_t){out, k};
}

static void add(sl_exchange_t *x, const char *name, sl_str_t value)
{
    sl_headers_add(&x->arena, &x->resp_headers, sl_str_from_cstr(name), value);
}

static void add_origin_headers(sl_exchange_t *x, const sl_cors_conf_t *c, sl_str_t origin)
{
    /* With credentials the origin must be echoed, never "*" (Fetch §3.2.5). */
    add(x, "Access-Control-Allow-Origin", c->any_origin && !c->credentials ? SL_STR_LIT("*") : origin);
    if (c->credentials)
        add(x, "Access-Control-Allow-Credentials", SL_STR_LIT("true"));
    if (!c->any_origin || c->credentials)
        add(x, "Vary", SL_STR_LIT("Origin"));
}

static int cors_create(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                       sl_config_errors_t *errs)
{
    (void)snap, (void)shared, (void)errs;
    *state = route->cors.enabled ? (void *)&route->cors : NULL;
    return 0;
}

static void cors_destroy(void *state)
{
    (void)state; /* the config owns it */
}

static enum sl_filter_status cors_on_request(sl_exchange_t *x, void *state)
{
    const sl_cors_conf_t *c = state;
    if (!x->preflight)
        return SL_FILTER_CONTINUE;
    const sl_header_t *origin = sl_headers_find(&x->req_headers, SL_STR_LIT("Origin"));
    const sl_header_t *acrm = sl_headers_find(&x->req_headers, SL_STR_LIT("Access-Control-Request-Method"));
    const sl_header_t *acrh = sl_headers_find(&x->req_headers, SL_STR_LIT("Access-Control-Request-Headers"));
    enum sl_method m = sl_method_from_str(acrm->value);
    const char *refused = NULL;
    if (!origin_allowed(c, origin->value))
        refused = "cors_origin";
    else if (m == SL_METHOD_OTHER || !(c->methods & SL_METHOD_BIT(m)))
        refused = "cors_method";
    else if (acrh != NULL && !request_headers_allowed(c, acrh->value))
        refused = "cors_headers";
    if (refused != NULL) {
        x->cause = SL_CAUSE_FORBIDDEN;
        x->cause_detail = refused;
        return SL_FILTER_ERROR;
    }
    add_origin_headers(x, c, origin->value);
    char *methods = sl_arena_alloc(&x->arena, 128);
    size_t n = 0;
    for (int i = SL_METHOD_GET; i < SL_METHOD__COUNT; i++)
        if (c->methods & SL_METHOD_BIT(i))
            n += (size_t)snprintf(methods + n, 128 - n, "%s%s", n ? ", " : "", sl_method_name((enum sl_method)i));
    add(x, "Access-Control-Allow-Methods", (sl_str_t){methods, n});
    if (c->nheaders > 0)
        add(x, "Access-Control-Allow-Headers", join(&x->arena, c->headers, c->nheaders));
    else if (acrh != NULL && acrh->value.len > 0)
        add(x, "Access-Control-Allow-Headers", acrh->value);
    char *age = sl_arena_alloc(&x->arena, 24);
    add(x, "Access-Control-Max-Age",
        (sl_str_t){age, (size_t)snprintf(age, 24, "%llu", (unsigned long long)(c->max_age_ms / 1000))});
    sl_reply(x, 204, SL_STR_NULL, SL_STR_NULL);
    return SL_FILTER_REPLIED;
}

static void cors_on_response_headers(sl_exchange_t *x, void *state)
{
    const sl_cors_conf_t *c = state;
    if (x->preflight)
        return; /* answered above, with its headers */
    const sl_header_t *origin = sl_headers_find(&x->req_headers, SL_STR_LIT("Origin"));
    if (origin == NULL || !origin_allowed(c, origin->value))
        return;
    add_origin_headers(x, c, origin->value);
    if (c->nexpose_headers > 0)
        add(x, "Access-Control-Expose-Headers", join(&x->arena, c->expose_headers, c->nexpose_headers));
}

const sl_filter_type_t sl_filter_cors = {
    .name = "cors",
    .create = cors_create,
    .destroy = cors_destroy,
    .on_request = cors_on_request,
    .on_response_headers = cors_on_response_headers,
};
