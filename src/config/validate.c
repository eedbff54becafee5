/*
 * Cross-checks that need the whole generation, run after every table has been walked: routes
 * (and split entries) naming upstreams that do not exist, duplicate route names, routes that can
 * never match because an earlier route has the same match, and listeners bound twice. Routes with
 * errors of their own are left out of the match comparison so one typo does not produce a cascade.
 */
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"

/* ---- a name → index table in the scratch arena -------------------------------------------- */

typedef struct slot {
    sl_str_t key; /* ptr NULL: empty */
    size_t value;
} slot_t;

typedef struct name_index {
    slot_t *slots;
    size_t mask;
} name_index_t;

static uint64_t hash_str(uint64_t h, sl_str_t s)
{
    for (size_t i = 0; i < s.len; i++)
        h = (h ^ (unsigned char)s.ptr[i]) * 1099511628211ull;
    return (h ^ s.len) * 1099511628211ull;
}

static uint64_t hash_u64(uint64_t h, uint64_t v)
{
    return (h ^ v) * 1099511628211ull;
}

#define HASH_SEED 1469598103934665603ull

static void index_init(name_index_t *ix, sl_arena_t *a, size_t n)
{
    size_t cap = 8;
    while (cap < n * 2)
        cap *= 2;
    ix->slots = sl_arena_alloc(a, cap * sizeof(*ix->slots));
    memset(ix->slots, 0, cap * sizeof(*ix->slots));
    ix->mask = cap - 1;
}

/* Returns the slot for `key`: a filled one if present, else the empty one to fill. */
static slot_t *index_slot(name_index_t *ix, sl_str_t key)
{
    for (size_t i = hash_str(HASH_SEED, key) & ix->mask;; i = (i + 1) & ix->mask)
        if (ix->slots[i].key.ptr == NULL || sl_str_eq(ix->slots[i].key, key))
            return &ix->slots[i];
}

/* ---- checks ------------------------------------------------------------------------------- */

static void check_listeners(sl__config_ctx_t *ctx)
{
    const sl_config_t *cfg = ctx->cfg;
    char q[80];
    /* Listener lists are a handful of entries; pairwise is simplest. */
    for (size_t i = 1; i < cfg->nlistens; i++) {
        const sl_listen_conf_t *b = &cfg->listens[i];
        for (size_t j = 0; j < i && b->addrlen > 0; j++) {
            const sl_listen_conf_t *a = &cfg->listens[j];
            if (a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0) {
                sl__config_error_at(ctx, b->pos, "listen: %s is already listed (first at %u:%u)",
                                    sl__config_quote(q, sizeof(q), b->address), a->pos.line, a->pos.col);
                break;
            }
        }
    }
}

static void report_undefined(sl__config_ctx_t *ctx, const sl__config_node_t *where, sl_str_t route, sl_str_t upstream)
{
    char q1[80], q2[80];
    sl__config_error(ctx, where, "route %s refers to upstream %s, which is not defined%s",
                     sl__config_quote(q1, sizeof(q1), route), sl__config_quote(q2, sizeof(q2), upstream),
                     ctx->cfg->nupstreams == 0 ? " (there is no upstreams section)" : "");
}

/* A split route's entries, in file order: parse_split made one entry per list item. */
static void resolve_split(sl__config_ctx_t *ctx, name_index_t *ix, const sl__config_route_aux_t *aux)
{
    sl_route_conf_t *r = aux->route;
    const sl__config_node_t *seq = sl__config_node_map_get(aux->node, "split");
    const sl__config_node_t *item = seq != NULL ? seq->first : NULL;
    for (size_t j = 0; j < r->nsplit; j++, item = item != NULL ? item->next : NULL) {
        sl_route_split_conf_t *e = &r->split[j];
        if (e->upstream.len == 0)
            continue; /* already reported by the entry's own parse */
        slot_t *s = index_slot(ix, e->upstream);
        if (s->key.ptr != NULL) {
            e->upstream_index = s->value;
            continue;
        }
        const sl__config_node_t *where = sl__config_node_map_get(sl__config_node_deref(item), "upstream");
        report_undefined(ctx, where != NULL ? where : item, r->name, e->upstream);
    }
    /* Code that knows one upstream per route reads upstream_index (see config.h). */
    r->upstream_index = r->split[0].upstream_index;
}

static void check_upstream_refs(sl__config_ctx_t *ctx)
{
    sl_config_t *cfg = ctx->cfg;
    name_index_t ix;
    index_init(&ix, &ctx->scratch, cfg->nupstreams);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        slot_t *s = index_slot(&ix, cfg->upstreams[i].name);
        s->key = cfg->upstreams[i].name;
        s->value = i;
    }
    for (size_t i = 0; i < ctx->nroute_aux; i++) {
        sl_route_conf_t *r = ctx->route_aux[i].route;
        if (r->nsplit > 0) {
            resolve_split(ctx, &ix, &ctx->route_aux[i]);
            continue;
        }
        if (r->upstream.len == 0)
            continue;
        slot_t *s = index_slot(&ix, r->upstream);
        if (s->key.ptr != NULL) {
            r->upstream_index = s->value;
            continue;
        }
        report_undefined(ctx, sl__config_node_map_get(ctx->route_aux[i].node, "upstream"), r->name, r->upstream);
    }
}

static void check_route_names(sl__config_ctx_t *ctx)
{
    name_index_t ix;
    index_init(&ix, &ctx->scratch, ctx->nroute_aux);
    char q[80];
    for (size_t i = 0; i < ctx->nroute_aux; i++) {
        const sl_route_conf_t *r = ctx->route_aux[i].route;
        if (r->name.len == 0)
            continue;
        slot_t *s = index_slot(&ix, r->name);
        if (s->key.ptr == NULL) {
            s->key = r->name;
            s->value = i;
            continue;
        }
        const sl__config_node_t *first = sl__config_node_map_get(ctx->route_aux[s->value].node, "name");
        sl__config_error(ctx, sl__config_node_map_get(ctx->route_aux[i].node, "name"),
                         "duplicate route name %s (first defined at %u:%u)", sl__config_quote(q, sizeof(q), r->name),
                         first->pos.line, first->pos.col);
    }
}

/* ---- unreachable routes ------------------------------------------------------------------- */

/* A route's match in canonical form: sets sorted, so order in the file does not matter. */
typedef struct canon {
    uint64_t hash;
    size_t aux;
    const sl_str_t **hosts;
    const sl_header_match_conf_t **headers;
} canon_t;

static int cmp_bytes(sl_str_t a, sl_str_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n > 0 ? memcmp(a.ptr, b.ptr, n) : 0;
    return c != 0 ? c : (a.len > b.len) - (a.len < b.len);
}

static int cmp_host_ptrs(const void *a, const void *b)
{
    return cmp_bytes(**(const sl_str_t *const *)a, **(const sl_str_t *const *)b);
}

static int cmp_nocase(sl_str_t a, sl_str_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)sl_ascii_lower(a.ptr[i]) - (unsigned char)sl_ascii_lower(b.ptr[i]);
        if (c != 0)
            return c;
    }
    return (a.len > b.len) - (a.len < b.len);
}

static int cmp_header_ptrs(const void *a, const void *b)
{
    const sl_header_match_conf_t *x = *(const sl_header_match_conf_t *const *)a;
    const sl_header_match_conf_t *y = *(const sl_header_match_conf_t *const *)b;
    int c = cmp_nocase(x->name, y->name);
    if (c != 0)
        return c;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return cmp_bytes(x->value, y->value);
}

static int path_kind(const sl_route_match_conf_t *m, sl_str_t *value)
{
    if (m->path_exact.len > 0)
        return *value = m->path_exact, 1;
    if (m->path_prefix.len > 0)
        return *value = m->path_prefix, 2;
    if (m->path_regex.len > 0)
        return *value = m->path_regex, 3;
    return *value = SL_STR_NULL, 0;
}

static void canonicalize(sl__config_ctx_t *ctx, canon_t *c, size_t aux)
{
    const sl_route_match_conf_t *m = &ctx->route_aux[aux].route->match;
    c->aux = aux;
    c->hosts = sl_arena_alloc(&ctx->scratch, (m->nhosts + 1) * sizeof(*c->hosts));
    for (size_t i = 0; i < m->nhosts; i++)
        c->hosts[i] = &m->hosts[i];
    qsort(c->hosts, m->nhosts, sizeof(*c->hosts), cmp_host_ptrs);
    c->headers = sl_arena_alloc(&ctx->scratch, (m->nheaders + 1) * sizeof(*c->headers));
    for (size_t i = 0; i < m->nheaders; i++)
        c->headers[i] = &m->headers[i];
    qsort(c->headers, m->nheaders, sizeof(*c->headers), cmp_header_ptrs);

    uint64_t h = hash_u64(HASH_SEED, m->nhosts);
    for (size_t i = 0; i < m->nhosts; i++)
        h = hash_str(h, *c->hosts[i]);
    sl_str_t path;
    h = hash_u64(h, (uint64_t)path_kind(m, &path));
    h = hash_str(h, path);
    h = hash_u64(h, m->methods);
    h = hash_u64(h, m->nheaders);
    for (size_t i = 0; i < m->nheaders; i++) {
        char lower[64];
        sl_str_t name = c->headers[i]->name;
        /* Hash a lowercased prefix: enough to spread, and equality is checked in full. */
        size_t n = name.len < sizeof(lower) ? name.len : sizeof(lower);
        for (size_t j = 0; j < n; j++)
            lower[j] = sl_ascii_lower(name.ptr[j]);
        h = hash_str(h, (sl_str_t){lower, n});
        h = hash_u64(h, (uint64_t)c->headers[i]->kind);
        h = hash_str(h, c->headers[i]->value);
    }
    c->hash = h;
}

static bool same_match(const sl__config_ctx_t *ctx, const canon_t *a, const canon_t *b)
{
    const sl_route_match_conf_t *x = &ctx->route_aux[a->aux].route->match;
    const sl_route_match_conf_t *y = &ctx->route_aux[b->aux].route->match;
    sl_str_t px, py;
    if (x->nhosts != y->nhosts || x->nheaders != y->nheaders || x->methods != y->methods ||
        path_kind(x, &px) != path_kind(y, &py) || !sl_str_eq(px, py))
        return false;
    for (size_t i = 0; i < x->nhosts; i++)
        if (!sl_str_eq(*a->hosts[i], *b->hosts[i]))
            return false;
    for (size_t i = 0; i < x->nheaders; i++)
        if (cmp_header_ptrs(&a->headers[i], &b->headers[i]) != 0)
            return false;
    return true;
}

static int cmp_canon(const void *a, const void *b)
{
    const canon_t *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return (x->aux > y->aux) - (x->aux < y->aux);
}

/* Identical matches make the later route dead: the router breaks ties by config order. Hash
 * and sort, so a config with thousands of routes is not compared pairwise. */
static void check_unreachable(sl__config_ctx_t *ctx)
{
    canon_t *cs = sl_arena_alloc(&ctx->scratch, (ctx->nroute_aux + 1) * sizeof(*cs));
    size_t n = 0;
    for (size_t i = 0; i < ctx->nroute_aux; i++)
        if (ctx->route_aux[i].clean)
            canonicalize(ctx, &cs[n++], i);
    qsort(cs, n, sizeof(*cs), cmp_canon);
    char q1[80], q2[80];
    for (size_t start = 0; start < n;) {
        size_t end = start + 1;
        while (end < n && cs[end].hash == cs[start].hash)
            end++;
        for (size_t j = start + 1; j < end; j++)
            for (size_t i = start; i < j; i++) {
                if (!same_match(ctx, &cs[i], &cs[j]))
                    continue;
                const sl__config_route_aux_t *a = &ctx->route_aux[cs[i].aux], *b = &ctx->route_aux[cs[j].aux];
                const sl__config_node_t *where = sl__config_node_map_get(b->node, "match");
                sl__config_error(ctx, where != NULL ? where : b->node,
                                 "route %s can never match: route %s (line %u) has the same match",
                                 sl__config_quote(q1, sizeof(q1), b->route->name),
                                 sl__config_quote(q2, sizeof(q2), a->route->name), a->route->pos.line);
                break;
            }
        start = end;
    }
}

void sl__config_validate(sl__config_ctx_t *ctx)
{
    check_listeners(ctx);
    sl__config_build_tls(ctx);
    check_upstream_refs(ctx);
    check_route_names(ctx);
    check_unreachable(ctx);
    sl__config_validate_auth(ctx);
}
