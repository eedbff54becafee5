/*
 * DELETE /cache[?route=NAME&path=TARGET] (docs/cache.md "Purging", docs/admin.md): removes
 * stored responses from the response cache of the running gateway: all of them, a route's, or
 * one URL target ("/a/b?x=1") across hosts, in every route or in one. The store is reached
 * through the current snapshot (the `current` hook); the purge takes one shard lock at a time,
 * so the data path waits at most for one shard's sweep.
 */
#include <stdio.h>
#include <string.h>

#include "admin/admin.h"
#include "cache/cache.h"
#include "pipeline/snapshot.h"
#include "upstream/proxy.h"

static json_t *error_json(const char *error, const char *message)
{
    return json_pack("{s:s, s:s}", "error", error, "message", message);
}

json_t *sl_admin_cache(const sl_admin_hooks_t *h, sl_str_t query, bool del, int *status)
{
    if (!del) {
        *status = 405;
        return error_json("method_not_allowed", "Use DELETE /cache[?route=NAME&path=/target] to purge.");
    }
    sl_snapshot_t *snap = h->current != NULL ? h->current(h->ctx) : NULL;
    char route[256] = "", path[4096] = "";
    int rr = sl__admin_query_get(query, "route", route, sizeof(route));
    int rp = sl__admin_query_get(query, "path", path, sizeof(path));
    bool has_route = rr == 1, has_path = rp == 1;
    if (rr < 0 || rp < 0 || (has_route && route[0] == 0) || (has_path && path[0] != '/')) {
        *status = 400;
        return error_json("bad_request", "route must be a route name and path a target starting with '/'.");
    }
    if (has_route) {
        bool found = false, cached = false;
        for (size_t i = 0; snap != NULL && i < snap->cfg->nroutes; i++)
            if (sl_str_eq(snap->cfg->routes[i].name, sl_str_from_cstr(route))) {
                found = true;
                cached = snap->cfg->routes[i].cache.enabled;
            }
        if (!found || !cached) {
            char msg[400];
            snprintf(msg, sizeof(msg), found ? "Route '%s' has no cache." : "No route named '%s'.", route);
            *status = 404;
            return error_json("not_found", msg);
        }
    }
    sl_cache_t *cache = snap != NULL ? sl_proxy_cache(snap) : NULL;
    size_t n = cache != NULL ? sl_cache_purge(cache, sl_str_from_cstr(route), sl_str_from_cstr(path)) : 0;
    *status = 200;
    json_t *j = json_pack("{s:I}", "purged", (json_int_t)n);
    if (has_route)
        json_object_set_new(j, "route", json_string(route));
    if (has_path)
        json_object_set_new(j, "path", json_string(path));
    return j;
}
