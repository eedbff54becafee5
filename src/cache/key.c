/*
 * Cache keys (RFC 9111 §2, §4.1): the primary key of a request (host and target, HEAD sharing
 * GET's entries), a route's identity across reloads, and Vary's secondary keys (the request's
 * selecting header values, normalised so equivalent requests match).
 */
#include <string.h>

#include "cache/cache.h"

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_BASIS 0xcbf29ce484222325ull

sl_str_t sl_cache_key(sl_arena_t *a, sl_str_t host, sl_str_t path, sl_str_t query)
{
    size_t n = host.len + 1 + path.len + (query.len ? 1 + query.len : 0);
    char *k = sl_arena_alloc(a, n + 1);
    for (size_t i = 0; i < host.len; i++)
        k[i] = sl_ascii_lower(host.ptr[i]);
    char *p = k + host.len;
    *p++ = '\n';
    p = sl_put(p, path.ptr, path.len);
    if (query.len) {
        *p++ = '?';
        p = sl_put(p, query.ptr, query.len);
    }
    *p = 0;
    return (sl_str_t){k, n};
}

uint64_t sl_cache_hash(uint64_t tag, sl_str_t key)
{
    uint64_t h = fnv(FNV_BASIS, &tag, sizeof(tag));
    h = fnv(h, key.ptr, key.len);
    /* fmix64: the low bits pick the bucket, the high ones the shard. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t mix_str(uint64_t h, sl_str_t s)
{
    h = fnv(h, &s.len, sizeof(s.len));
    return fnv(h, s.ptr, s.len);
}

uint64_t sl_cache_route_tag(const sl_route_conf_t *r)
{
    uint64_t h = FNV_BASIS;
    h = mix_str(h, r->name);
    h = mix_str(h, r->upstream);
    for (size_t i = 0; i < r->nsplit; i++)
        h = mix_str(h, r->split[i].upstream);
    h = fnv(h, &r->strip_prefix, sizeof(r->strip_prefix));
    h = mix_str(h, r->match.path_prefix);
    h = mix_str(h, r->rewrite_regex);
    h = mix_str(h, r->rewrite_replacement);
    uint64_t fields[] = {
        r->cache.ttl_ms,       r->cache.max_object_size, r->cache.stale_if_error_ms, r->cache.stale_while_revalidate_ms,
        r->cache.max_variants, r->cache.per_consumer};
    h = fnv(h, fields, sizeof(fields));
    /* Request header edits change what the origin is asked, so they are part of the identity. */
    const sl_header_edits_conf_t *e = &r->request_headers;
    for (size_t i = 0; i < e->nset; i++)
        h = mix_str(mix_str(h, e->set[i].name), e->set[i].value);
    for (size_t i = 0; i < e->nadd; i++)
        h = mix_str(mix_str(h, e->add[i].name), e->add[i].value);
    for (size_t i = 0; i < e->nremove; i++)
        h = mix_str(h, e->remove[i]);
    return h ? h : 1;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t';
}

sl_str_t sl_cache_vary_names(sl_arena_t *a, const sl_headers_t *h, bool *star)
{
    size_t total = 0;
    *star = false;
    for (size_t i = 0; i < h->len; i++)
        if (sl_str_caseeq(h->items[i].name, SL_STR_LIT("Vary")))
            total += h->items[i].value.len + 1;
    if (total == 0)
        return SL_STR_NULL;
    char *out = sl_arena_alloc(a, total + 1);
    size_t n = 0;
    for (size_t i = 0; i < h->len; i++) {
        if (!sl_str_caseeq(h->items[i].name, SL_STR_LIT("Vary")))
            continue;
        sl_str_t v = h->items[i].value;
        size_t p = 0;
        while (p < v.len) {
            while (p < v.len && (is_ws(v.ptr[p]) || v.ptr[p] == ','))
                p++;
            size_t s = p;
            while (p < v.len && v.ptr[p] != ',' && !is_ws(v.ptr[p]))
                p++;
            if (p == s)
                continue;
            if (p - s == 1 && v.ptr[s] == '*')
                *star = true;
            if (n)
                out[n++] = '\n';
            for (size_t j = s; j < p; j++)
                out[n++] = sl_ascii_lower(v.ptr[j]);
        }
    }
    out[n] = 0;
    return (sl_str_t){out, n};
}

sl_str_t sl_cache_vary_values(sl_arena_t *a, sl_str_t names, const sl_headers_t *h)
{
    if (names.len == 0)
        return SL_STR_NULL;
    size_t cap = names.len + 1;
    for (size_t i = 0; i < h->len; i++)
        cap += h->items[i].value.len + 2;
    char *out = sl_arena_alloc(a, cap);
    size_t n = 0, p = 0;
    while (p <= names.len) {
        const char *nl = memchr(names.ptr + p, '\n', names.len - p);
        size_t e = nl ? (size_t)(nl - names.ptr) : names.len;
        sl_str_t name = {names.ptr + p, e - p};
        if (p)
            out[n++] = '\n';
        bool first = true;
        for (size_t i = 0; i < h->len; i++) {
            if (!sl_str_caseeq(h->items[i].name, name))
                continue;
            sl_str_t v = h->items[i].value;
            while (v.len && is_ws(v.ptr[0]))
                v.ptr++, v.len--;
            while (v.len && is_ws(v.ptr[v.len - 1]))
                v.len--;
            if (!first) {
                out[n++] = ',';
                out[n++] = ' ';
            }
            first = false;
            memcpy(out + n, v.ptr, v.len);
            n += v.len;
        }
        /* An absent field and an empty one select differently (RFC 9111 §4.1). */
        if (first)
            out[n++] = '\x01';
        p = e + 1;
    }
    return (sl_str_t){out, n};
}
