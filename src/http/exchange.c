/*
 * Header lists of an exchange: arena-backed arrays that grow by doubling. Request headers start
 * as the codec's parse array and are copied only if a filter adds to them.
 */
#include "http/exchange.h"

#include <string.h>

void sl_headers_add(sl_arena_t *a, sl_headers_t *h, sl_str_t name, sl_str_t value)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        sl_header_t *items = sl_arena_alloc(a, cap * sizeof(*items));
        if (h->len)
            memcpy(items, h->items, h->len * sizeof(*items));
        h->items = items;
        h->cap = cap;
    }
    h->items[h->len].name = name;
    h->items[h->len].value = value;
    h->len++;
}

size_t sl_headers_remove(sl_headers_t *h, sl_str_t name)
{
    size_t w = 0, removed = 0;
    for (size_t r = 0; r < h->len; r++) {
        if (sl_str_caseeq(h->items[r].name, name)) {
            removed++;
            continue;
        }
        h->items[w++] = h->items[r];
    }
    h->len = w;
    return removed;
}

const sl_header_t *sl_headers_find(const sl_headers_t *h, sl_str_t name)
{
    for (size_t i = 0; i < h->len; i++)
        if (sl_str_caseeq(h->items[i].name, name))
            return &h->items[i];
    return NULL;
}

sl_str_t sl_headers_cookie(const sl_headers_t *h, sl_str_t want)
{
    for (size_t i = 0; i < h->len; i++) {
        if (!sl_str_caseeq(h->items[i].name, SL_STR_LIT("Cookie")))
            continue;
        sl_str_t v = h->items[i].value;
        size_t p = 0;
        while (p < v.len) {
            while (p < v.len && (v.ptr[p] == ' ' || v.ptr[p] == ';'))
                p++;
            size_t name = p;
            while (p < v.len && v.ptr[p] != '=' && v.ptr[p] != ';')
                p++;
            sl_str_t n = {v.ptr + name, p - name};
            if (p >= v.len || v.ptr[p] != '=')
                continue;
            size_t val = ++p;
            while (p < v.len && v.ptr[p] != ';')
                p++;
            if (sl_str_eq(n, want))
                return (sl_str_t){v.ptr + val, p - val};
        }
    }
    return SL_STR_NULL;
}

sl_str_t sl_host_without_port(sl_str_t authority)
{
    if (authority.len == 0)
        return authority;
    if (authority.ptr[0] == '[') {
        const char *end = memchr(authority.ptr, ']', authority.len);
        return end ? (sl_str_t){authority.ptr + 1, (size_t)(end - authority.ptr - 1)} : authority;
    }
    const char *colon = memchr(authority.ptr, ':', authority.len);
    return colon ? (sl_str_t){authority.ptr, (size_t)(colon - authority.ptr)} : authority;
}
