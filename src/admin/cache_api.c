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

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The decoded value of `key` in a query string; false when absent, badly escaped or too long. */
static bool query_value(sl_str_t q, const char *key, char *out, size_t cap, bool *bad)
{
    size_t klen = strlen(key);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t n = 0;
            for (const char *s = p + klen + 1; s < stop; s++) {
                char ch = *s;
                if (ch == '%') {
                    int hi = s + 2 < stop ? hexval(s[1]) : -1, lo = s + 2 < stop ? hexval(s[2]) : -1;
                    if (hi < 0 || lo < 0) {
                        *bad = true;
                        return false;
                    }
                    ch = (char)(hi << 4 | lo);
                    s += 2;
                } else if (ch == '+') {
                    ch = ' ';
                }
                if (n + 1 >= cap || ch == 0) {
                    *bad = true;
                    return false;
                }
                out[n++] = ch;
            }
            out[n] = 0;
            return true;
        }
        p = stop + 1;
    }
    return false;
}

json_t *sl_admin_cache(const sl_admin_hooks_t *h, sl_str_t query, bool del, int *status)
{
    if (!del) {
        *status = 405;
        return error_json("method_not_allowed", "Use DELETE /cache[?route=NAME&path=/target] to purge.");
    }
    sl_snapshot_t *snap = h->current != NULL ? h->current(h->ctx) : NULL;
    char route[256] = "", path[4096] = "";
    bool bad = false;
    bool has_route = query_value(query, "route", route, sizeof(route), &bad);
    bool has_path = query_value(query, "path", path, sizeof(path), &bad);
    if (bad || (has_route && route[0] == 0) || (has_path && path[0] != '/')) {
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
