/*
 * libFuzzer target for the router: the input bytes describe a handful of routes (hosts, path
 * kinds, methods, header matches, strip/rewrite) and one request. Compilation may fail (the bytes
 * make bad regexes); when it succeeds, matching must not crash and must give the same answer
 * twice, and the matched route's rewrite must be stable and bounded.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/bug.h"
#include "common/error.h"
#include "router/router.h"

#define MAX_ROUTES  8
#define MAX_HEADERS 3

typedef struct input {
    const uint8_t *p;
    size_t len;
} input_t;

static uint8_t take_byte(input_t *in)
{
    if (in->len == 0)
        return 0;
    in->len--;
    return *in->p++;
}

/* A slice of up to 15 bytes, copied NUL-terminated like the loader's strings. */
static sl_str_t take_str(input_t *in, sl_arena_t *a, const char *prefix)
{
    size_t n = take_byte(in) % 16;
    if (n > in->len)
        n = in->len;
    size_t plen = strlen(prefix);
    char *s = sl_arena_alloc(a, plen + n + 1);
    memcpy(s, prefix, plen);
    memcpy(s + plen, in->p, n);
    s[plen + n] = '\0';
    in->p += n;
    in->len -= n;
    return (sl_str_t){s, plen + n};
}

static void make_route(input_t *in, sl_arena_t *a, sl_route_conf_t *rc)
{
    uint8_t shape = take_byte(in);
    sl_route_match_conf_t *m = &rc->match;
    switch (shape & 3) {
    case 1:
        m->hosts = sl_arena_alloc(a, sizeof(*m->hosts));
        m->hosts[0] = take_str(in, a, "");
        m->nhosts = 1;
        break;
    case 2:
        m->hosts = sl_arena_alloc(a, sizeof(*m->hosts));
        m->hosts[0] = take_str(in, a, "*.");
        m->nhosts = 1;
        break;
    }
    switch ((shape >> 2) & 3) {
    case 1:
        m->path_exact = take_str(in, a, "/");
        break;
    case 2:
        m->path_prefix = take_str(in, a, "/");
        break;
    case 3:
        m->path_regex = take_str(in, a, "");
        break;
    }
    if (shape & 0x10)
        m->methods = take_byte(in) & ((1u << SL_METHOD__COUNT) - 1);
    if (shape & 0x20) {
        m->headers = sl_arena_alloc(a, sizeof(*m->headers));
        m->headers[0] = (sl_header_match_conf_t){
            .name = take_str(in, a, "x"),
            .kind = (enum sl_header_match_kind)(SL_HEADER_MATCH_EXACT + take_byte(in) % 4),
            .value = take_str(in, a, ""),
        };
        m->nheaders = 1;
    }
    rc->strip_prefix = (shape & 0x40) != 0;
    if (shape & 0x80) {
        rc->rewrite_regex = take_str(in, a, "");
        rc->rewrite_replacement = take_str(in, a, "");
    }
}

static void make_request(input_t *in, sl_arena_t *a, sl_router_input_t *req, sl_header_t *headers)
{
    req->method = (enum sl_method)(take_byte(in) % SL_METHOD__COUNT);
    req->method_token = SL_STR_LIT("PURGE");
    req->host = take_str(in, a, "");
    /* The path gets the rest, so long paths reach the rewrite bound. */
    size_t nh = take_byte(in) % (MAX_HEADERS + 1);
    for (size_t i = 0; i < nh; i++) {
        headers[i].name = take_str(in, a, "x");
        headers[i].value = take_str(in, a, "");
    }
    req->headers = headers;
    req->nheaders = nh;
    char *path = sl_arena_alloc(a, in->len + 2);
    path[0] = '/';
    memcpy(path + 1, in->p, in->len);
    req->path = (sl_str_t){path, in->len + 1};
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input_t in = {data, size};
    sl_arena_t a;
    sl_arena_init(&a, 4096);
    sl_route_conf_t routes[MAX_ROUTES];
    memset(routes, 0, sizeof(routes));
    size_t nroutes = take_byte(&in) % MAX_ROUTES + 1;
    for (size_t i = 0; i < nroutes; i++)
        make_route(&in, &a, &routes[i]);
    sl_router_input_t req;
    sl_header_t headers[MAX_HEADERS];
    memset(&req, 0, sizeof(req));
    make_request(&in, &a, &req, headers);

    sl_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.path = SL_STR_LIT("<fuzz>");
    cfg.routes = routes;
    cfg.nroutes = nroutes;
    sl_config_errors_t errs;
    memset(&errs, 0, sizeof(errs));
    sl_router_t *r = NULL;
    int rc = sl_router_create(&cfg, &r, &errs);
    SL_BUG_ON((rc == 0) != (errs.count == 0));
    if (rc == 0) {
        sl_router_result_t first, second;
        sl_router_match(r, &req, &first);
        sl_router_match(r, &req, &second);
        SL_BUG_ON(first.status != second.status);
        SL_BUG_ON(first.status == SL_ROUTER_MATCHED && first.route_index != second.route_index);
        SL_BUG_ON(first.status == SL_ROUTER_MATCHED && first.route_index >= nroutes);
        SL_BUG_ON(first.status == SL_ROUTER_METHOD_NOT_ALLOWED && first.allowed_methods == 0);
        SL_BUG_ON(first.status == SL_ROUTER_METHOD_NOT_ALLOWED && first.allowed_methods != second.allowed_methods);
        if (first.status == SL_ROUTER_MATCHED) {
            sl_str_t out1 = SL_STR_NULL, out2 = SL_STR_NULL;
            int rc1 = sl_router_rewrite_path(r, first.route_index, req.path, &a, &out1);
            int rc2 = sl_router_rewrite_path(r, first.route_index, req.path, &a, &out2);
            SL_BUG_ON(rc1 != rc2);
            SL_BUG_ON(rc1 == 0 && !sl_str_eq(out1, out2));
            SL_BUG_ON(rc1 == 0 && out1.len > 8192 && out1.ptr != req.path.ptr);
            SL_BUG_ON(rc1 == 0 && (out1.len == 0 || out1.ptr[0] != '/'));
        }
        sl_router_destroy(r);
    }
    free(errs.items);
    if (errs.strings.chunk_size != 0)
        sl_arena_dispose(&errs.strings);
    sl_arena_dispose(&a);
    return 0;
}
