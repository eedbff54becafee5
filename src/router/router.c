/*
 * Route compilation and matching, the "route" step of every request. sl_router_create sorts the
 * config's routes into host groups (a hash of exact hosts, a hash of wildcard suffixes, one group
 * for routes without hosts), each with a hash of exact paths, a prefix trie, its regex routes and
 * its path-less routes; sl_router_match walks them most specific first (precedence in router.h).
 * Regexes are compiled once here and run with a per-thread match block, so matching never allocates.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "router/router.h"

#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "router/internal.h"

/* The bound on a path built by sl_router_rewrite_path (router.h). */
#define REWRITE_MAX 8192

/* Budgets of one match against request bytes (pcre2's defaults are ten million steps and 20 MiB
 * of backtracking frames, kept per thread): a pathological pattern then fails closed, as "no
 * match", instead of stalling a worker or growing its memory. */
#define REGEX_MATCH_LIMIT    1000000
#define REGEX_HEAP_LIMIT_KIB 1024

typedef struct header_matcher {
    sl_str_t name;
    enum sl_header_match_kind kind;
    sl_str_t value;
    pcre2_code *re;
} header_matcher_t;

typedef struct route {
    uint32_t methods; /* 0 = any */
    pcre2_code *path_re;
    header_matcher_t *headers;
    size_t nheaders;
    pcre2_code *rewrite_re;
} route_t;

typedef struct group {
    sl__router_table_t paths; /* exact path → sl__router_list_t */
    sl__router_trie_t prefixes;
    sl__router_list_t regexes;  /* config order */
    sl__router_list_t any_path; /* config order */
} group_t;

struct sl_router {
    sl_arena_t arena; /* everything below; pcre2 objects are freed by its cleanups */
    const sl_config_t *cfg;
    route_t *routes; /* parallel to cfg->routes */
    size_t nroutes;
    sl__router_table_t exact_hosts; /* lowercase host → group_t */
    sl__router_table_t wild_hosts;  /* ".example.com" for "*.example.com" → group_t */
    size_t *wild_lens;              /* the distinct suffix lengths, longest first */
    size_t nwild_lens;
    group_t any_host;
    pcre2_match_context *mctx;
    uint32_t max_pairs; /* the largest ovector any regex here needs */
};

/* ---- per-thread match block ---------------------------------------------------------------- */

static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static pthread_key_t tls_key;
static _Thread_local pcre2_match_data *tls_md;
static _Thread_local uint32_t tls_md_pairs;

static void tls_md_free(void *md)
{
    pcre2_match_data_free(md);
}

static void tls_key_create(void)
{
    SL_BUG_ON(pthread_key_create(&tls_key, tls_md_free) != 0);
}

/*
 * The calling thread's match block, with room for `pairs` ovector pairs. A match block is written
 * by every match, so threads cannot share one; it is made on a thread's first regex match (again
 * only if a later router needs more pairs) and freed by the key destructor when the thread exits.
 */
static pcre2_match_data *thread_match_data(uint32_t pairs)
{
    if (tls_md != NULL && tls_md_pairs >= pairs)
        return tls_md;
    pthread_once(&tls_once, tls_key_create);
    pcre2_match_data *md = pcre2_match_data_create(pairs, NULL);
    SL_BUG_ON(md == NULL);
    pcre2_match_data_free(tls_md);
    tls_md = md;
    tls_md_pairs = pairs;
    SL_BUG_ON(pthread_setspecific(tls_key, md) != 0);
    return md;
}

static bool regex_hit(const sl_router_t *r, const pcre2_code *re, sl_str_t s)
{
    pcre2_match_data *md = thread_match_data(r->max_pairs);
    int rc = pcre2_match(re, (PCRE2_SPTR)(s.ptr != NULL ? s.ptr : ""), s.len, 0, 0, md, r->mctx);
    /* 0 is a match whose captures did not fit; errors (match limit) count as no match. */
    return rc >= 0;
}

/* ---- compilation --------------------------------------------------------------------------- */

static void add_error(sl_config_errors_t *errs, const sl_config_t *cfg, size_t i, sl_config_pos_t pos, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));

static void add_error(sl_config_errors_t *errs, const sl_config_t *cfg, size_t i, sl_config_pos_t pos, const char *fmt,
                      ...)
{
    if (errs == NULL)
        return;
    if (errs->count == errs->cap) {
        errs->cap = errs->cap ? errs->cap * 2 : 8;
        errs->items = sl_xrealloc(errs->items, errs->cap * sizeof(*errs->items));
    }
    sl_config_error_t *e = &errs->items[errs->count++];
    memset(e, 0, sizeof(*e));
    /* The errors outlive a config that failed to compile, so they keep their own copy of the file
     * name, in `errs->strings` like sl_config_errors_add does (config.h). */
    if (errs->strings.chunk_size == 0)
        sl_arena_init(&errs->strings, 1024);
    e->file = sl_arena_str_dup(&errs->strings, cfg->path);
    e->line = pos.line;
    e->col = pos.col;

    sl_str_t name = cfg->routes[i].name;
    int n = name.len > 0
                ? snprintf(e->message, sizeof(e->message), "route \"%.*s\": ", (int)SL_MIN(name.len, 64), name.ptr)
                : snprintf(e->message, sizeof(e->message), "routes[%zu]: ", i);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message + n, sizeof(e->message) - (size_t)n, fmt, ap);
    va_end(ap);
}

static sl_config_pos_t pos_or(sl_config_pos_t pos, sl_config_pos_t fallback)
{
    return pos.line != 0 ? pos : fallback;
}

static void code_free(void *re)
{
    pcre2_code_free(re);
}

static void mctx_free(void *mctx)
{
    pcre2_match_context_free(mctx);
}

static pcre2_code *compile_regex(sl_router_t *r, size_t i, sl_str_t src, const char *what, sl_config_pos_t pos,
                                 sl_config_errors_t *errs)
{
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(src.ptr != NULL ? src.ptr : ""), src.len, 0, &err, &off, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof(msg));
        add_error(errs, r->cfg, i, pos, "%s: %s at offset %zu", what, (const char *)msg, (size_t)off);
        return NULL;
    }
    sl_arena_on_dispose(&r->arena, code_free, re);
    /* Without JIT support the interpreter runs the same pattern, only slower. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    uint32_t ncaptures = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncaptures);
    r->max_pairs = SL_MAX(r->max_pairs, ncaptures + 1);
    return re;
}

static bool is_word(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/*
 * pcre2_substitute parses the replacement only when the regex matches, so a bad reference would
 * surface on some request much later; check the syntax once here. Without
 * PCRE2_SUBSTITUTE_EXTENDED it is: $$, $n, ${n}, $name, ${name}, $*MARK, ${*MARK}.
 */
static bool check_replacement(const pcre2_code *re, sl_str_t rep, char *why, size_t whylen)
{
    uint32_t ncaptures = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncaptures);
    const char *s = rep.ptr;
    size_t len = rep.len, i = 0;
    while (i < len) {
        if (s[i++] != '$')
            continue;
        if (i < len && s[i] == '$') {
            i++;
            continue;
        }
        bool brace = i < len && s[i] == '{';
        if (brace)
            i++;
        bool mark = i < len && s[i] == '*';
        if (mark)
            i++;
        size_t start = i;
        while (i < len && is_word(s[i]))
            i++;
        size_t nlen = i - start;
        if (nlen == 0) {
            snprintf(why, whylen, "'$' at offset %zu must be followed by a group number or name, or by '$'", start);
            return false;
        }
        if (mark) {
            if (nlen != 4 || memcmp(s + start, "MARK", 4) != 0) {
                snprintf(why, whylen, "unknown '$*%.*s' at offset %zu", (int)SL_MIN(nlen, 32), s + start, start);
                return false;
            }
        } else if (s[start] >= '0' && s[start] <= '9') {
            /* pcre2 reads only the digits as the number; letters after them are literal text. */
            unsigned long n = 0;
            size_t j = start;
            for (; j < i && s[j] >= '0' && s[j] <= '9' && n <= ncaptures; j++)
                n = n * 10 + (unsigned long)(s[j] - '0');
            if (n > ncaptures) {
                snprintf(why, whylen, "'$%.*s' refers to a group the regex does not have (it has %u)",
                         (int)SL_MIN(nlen, 32), s + start, ncaptures);
                return false;
            }
            while (j < i && s[j] >= '0' && s[j] <= '9')
                j++;
            if (brace && j != i) {
                snprintf(why, whylen, "missing '}' at offset %zu", j);
                return false;
            }
            i = j;
        } else {
            char name[64];
            int num = PCRE2_ERROR_NOSUBSTRING;
            if (nlen < sizeof(name)) {
                memcpy(name, s + start, nlen);
                name[nlen] = '\0';
                num = pcre2_substring_number_from_name(re, (PCRE2_SPTR)name);
            }
            if (num == PCRE2_ERROR_NOSUBSTRING) {
                snprintf(why, whylen, "'$%.*s' refers to a group name the regex does not have", (int)SL_MIN(nlen, 32),
                         s + start);
                return false;
            }
        }
        if (brace) {
            if (i >= len || s[i] != '}') {
                snprintf(why, whylen, "missing '}' at offset %zu", i);
                return false;
            }
            i++;
        }
    }
    return true;
}

/* A host is "name" or "*.suffix"; a '*' anywhere else cannot be matched and is a config error. */
static bool host_valid(sl_str_t host)
{
    if (host.len == 0)
        return false;
    size_t from = (host.len > 2 && host.ptr[0] == '*' && host.ptr[1] == '.') ? 1 : 0;
    return memchr(host.ptr + from, '*', host.len - from) == NULL;
}

static bool compile_route(sl_router_t *r, size_t i, sl_config_errors_t *errs)
{
    const sl_route_conf_t *rc = &r->cfg->routes[i];
    const sl_route_match_conf_t *m = &rc->match;
    sl_config_pos_t mpos = pos_or(m->pos, rc->pos);
    route_t *rt = &r->routes[i];
    size_t nerrs = errs != NULL ? errs->count : 0;
    bool ok = true;

    rt->methods = m->methods;
    /* A route that serves GET serves HEAD too (RFC 9110 §9.3.2: same response without a body). */
    if (rt->methods & SL_METHOD_BIT(SL_METHOD_GET))
        rt->methods |= SL_METHOD_BIT(SL_METHOD_HEAD);
    if ((m->path_exact.len > 0) + (m->path_prefix.len > 0) + (m->path_regex.len > 0) > 1) {
        add_error(errs, r->cfg, i, mpos, "match: only one of path, path_prefix and path_regex may be set");
        ok = false;
    }
    if (m->path_regex.len > 0 && (rt->path_re = compile_regex(r, i, m->path_regex, "path_regex", mpos, errs)) == NULL)
        ok = false;
    for (size_t h = 0; h < m->nhosts; h++) {
        if (!host_valid(m->hosts[h])) {
            add_error(errs, r->cfg, i, mpos, "host \"%.*s\": expected a name or \"*.\" followed by a domain",
                      (int)SL_MIN(m->hosts[h].len, 128), m->hosts[h].ptr);
            ok = false;
        }
    }

    rt->nheaders = m->nheaders;
    rt->headers = m->nheaders > 0 ? sl_arena_alloc(&r->arena, m->nheaders * sizeof(*rt->headers)) : NULL;
    for (size_t h = 0; h < m->nheaders; h++) {
        const sl_header_match_conf_t *hc = &m->headers[h];
        header_matcher_t *hm = &rt->headers[h];
        sl_config_pos_t hpos = pos_or(hc->pos, mpos);
        hm->name = hc->name;
        hm->kind = hc->kind;
        hm->value = hc->value;
        hm->re = NULL;
        if (hc->name.len == 0) {
            add_error(errs, r->cfg, i, hpos, "header match without a name");
            ok = false;
        }
        switch (hc->kind) {
        case SL_HEADER_MATCH_EXACT:
        case SL_HEADER_MATCH_PRESENT:
        case SL_HEADER_MATCH_ABSENT:
            break;
        case SL_HEADER_MATCH_REGEX:
            if ((hm->re = compile_regex(r, i, hc->value, "header regex", hpos, errs)) == NULL)
                ok = false;
            break;
        default:
            add_error(errs, r->cfg, i, hpos, "header \"%.*s\": unknown match kind %d", (int)SL_MIN(hc->name.len, 64),
                      hc->name.ptr, (int)hc->kind);
            ok = false;
        }
    }

    if (rc->rewrite_regex.len > 0) {
        rt->rewrite_re = compile_regex(r, i, rc->rewrite_regex, "rewrite regex", rc->pos, errs);
        char why[160];
        if (rt->rewrite_re == NULL) {
            ok = false;
        } else if (!check_replacement(rt->rewrite_re, rc->rewrite_replacement, why, sizeof(why))) {
            add_error(errs, r->cfg, i, rc->pos, "rewrite replacement: %s", why);
            ok = false;
        }
    } else if (rc->rewrite_replacement.len > 0) {
        add_error(errs, r->cfg, i, rc->pos, "rewrite replacement without a regex");
        ok = false;
    }
    SL_BUG_ON(!ok && errs != NULL && errs->count == nerrs);
    return ok;
}

static group_t *group_new(sl_router_t *r)
{
    group_t *g = sl_arena_alloc(&r->arena, sizeof(*g));
    memset(g, 0, sizeof(*g));
    sl__router_table_init(&g->paths, false);
    return g;
}

static void group_add(sl_router_t *r, group_t *g, uint32_t idx)
{
    const sl_route_match_conf_t *m = &r->cfg->routes[idx].match;
    sl__router_list_t *l;
    if (m->path_exact.len > 0) {
        void **slot = sl__router_table_upsert(&g->paths, m->path_exact, &r->arena);
        if (*slot == NULL) {
            l = sl_arena_alloc(&r->arena, sizeof(*l));
            memset(l, 0, sizeof(*l));
            *slot = l;
        }
        l = *slot;
    } else if (m->path_prefix.len > 0) {
        l = sl__router_trie_insert(&g->prefixes, m->path_prefix, &r->arena);
    } else if (m->path_regex.len > 0) {
        l = &g->regexes;
    } else {
        l = &g->any_path;
    }
    sl__router_list_push(l, idx, &r->arena);
}

static sl_str_t lower_dup(sl_arena_t *a, sl_str_t s)
{
    char *p = sl_arena_strndup(a, s.ptr, s.len);
    for (size_t i = 0; i < s.len; i++)
        p[i] = sl_ascii_lower(p[i]);
    return (sl_str_t){p, s.len};
}

static void place_route(sl_router_t *r, uint32_t idx)
{
    const sl_route_match_conf_t *m = &r->cfg->routes[idx].match;
    if (m->nhosts == 0) {
        group_add(r, &r->any_host, idx);
        return;
    }
    for (size_t h = 0; h < m->nhosts; h++) {
        sl_str_t host = m->hosts[h];
        bool wild = host.ptr[0] == '*';
        /* A wildcard is keyed by its suffix with the dot, the exact bytes a request host ends with. */
        sl_str_t key = lower_dup(&r->arena, wild ? (sl_str_t){host.ptr + 1, host.len - 1} : host);
        void **slot = sl__router_table_upsert(wild ? &r->wild_hosts : &r->exact_hosts, key, &r->arena);
        if (*slot == NULL)
            *slot = group_new(r);
        group_add(r, *slot, idx);
    }
}

static int cmp_len_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x < y) - (x > y);
}

/* Distinct wildcard suffix lengths, longest first: matching checks a host only at those offsets. */
static void collect_wild_lens(sl_router_t *r)
{
    const sl__router_table_t *t = &r->wild_hosts;
    r->wild_lens = sl_arena_alloc(&r->arena, (t->count ? t->count : 1) * sizeof(*r->wild_lens));
    for (size_t i = 0; t->slots != NULL && i <= t->mask; i++)
        if (t->slots[i].key.ptr != NULL)
            r->wild_lens[r->nwild_lens++] = t->slots[i].key.len;
    qsort(r->wild_lens, r->nwild_lens, sizeof(*r->wild_lens), cmp_len_desc);
    size_t n = 0;
    for (size_t i = 0; i < r->nwild_lens; i++)
        if (n == 0 || r->wild_lens[n - 1] != r->wild_lens[i])
            r->wild_lens[n++] = r->wild_lens[i];
    r->nwild_lens = n;
}

static void finish_groups(sl__router_table_t *t)
{
    for (size_t i = 0; t->slots != NULL && i <= t->mask; i++)
        if (t->slots[i].key.ptr != NULL)
            sl__router_trie_finish(&((group_t *)t->slots[i].value)->prefixes);
}

int sl_router_create(const sl_config_t *cfg, sl_router_t **out, sl_config_errors_t *errs)
{
    sl_router_t *r = sl_xcalloc(1, sizeof(*r));
    sl_arena_init(&r->arena, 64 * 1024);
    r->cfg = cfg;
    r->nroutes = cfg->nroutes;
    r->max_pairs = 1;
    sl__router_table_init(&r->exact_hosts, true);
    sl__router_table_init(&r->wild_hosts, true);
    sl__router_table_init(&r->any_host.paths, false);
    r->mctx = pcre2_match_context_create(NULL);
    SL_BUG_ON(r->mctx == NULL);
    sl_arena_on_dispose(&r->arena, mctx_free, r->mctx);
    pcre2_set_match_limit(r->mctx, REGEX_MATCH_LIMIT);
    pcre2_set_heap_limit(r->mctx, REGEX_HEAP_LIMIT_KIB);

    /* Route indices are 32-bit in the tables; no real config comes near. */
    SL_BUG_ON(cfg->nroutes >= UINT32_MAX);
    r->routes = sl_arena_alloc(&r->arena, cfg->nroutes * sizeof(*r->routes));
    memset(r->routes, 0, cfg->nroutes * sizeof(*r->routes));
    bool ok = true;
    for (size_t i = 0; i < cfg->nroutes; i++)
        ok &= compile_route(r, i, errs);
    if (!ok) {
        sl_router_destroy(r);
        return SL_ECONFIG;
    }

    /* In config order, so every list of routes sharing a key is in config order too. */
    for (size_t i = 0; i < cfg->nroutes; i++)
        place_route(r, (uint32_t)i);
    finish_groups(&r->exact_hosts);
    finish_groups(&r->wild_hosts);
    sl__router_trie_finish(&r->any_host.prefixes);
    collect_wild_lens(r);
    *out = r;
    return 0;
}

void sl_router_destroy(sl_router_t *r)
{
    if (r == NULL)
        return;
    sl_arena_dispose(&r->arena);
    free(r);
}

/* ---- matching ------------------------------------------------------------------------------ */

typedef struct matcher {
    const sl_router_t *r;
    const sl_router_input_t *in;
    uint32_t method_bit;
    uint32_t allowed; /* methods of routes that accepted everything but the method */
    uint32_t hit;
} matcher_t;

/* EXACT and REGEX pass when any occurrence of a repeated header passes. */
static bool header_ok(const sl_router_t *r, const header_matcher_t *hm, const sl_router_input_t *in)
{
    for (size_t i = 0; i < in->nheaders; i++) {
        const sl_header_t *h = &in->headers[i];
        if (!sl_str_caseeq(h->name, hm->name))
            continue;
        switch (hm->kind) {
        case SL_HEADER_MATCH_EXACT:
            if (sl_str_eq(h->value, hm->value))
                return true;
            break;
        case SL_HEADER_MATCH_REGEX:
            if (regex_hit(r, hm->re, h->value))
                return true;
            break;
        case SL_HEADER_MATCH_PRESENT:
            return true;
        case SL_HEADER_MATCH_ABSENT:
            return false;
        }
    }
    return hm->kind == SL_HEADER_MATCH_ABSENT;
}

/* Host and path (except a regex path) already matched when a route gets here. */
static bool try_route(matcher_t *m, uint32_t idx)
{
    const route_t *rt = &m->r->routes[idx];
    bool method_ok = rt->methods == 0 || (rt->methods & m->method_bit) != 0;
    /* A route refusing the method counts only for the Allow set: skip the rest of its checks
     * (regexes included) when it would add nothing there. */
    if (!method_ok && (rt->methods & ~m->allowed) == 0)
        return false;
    for (size_t h = 0; h < rt->nheaders; h++)
        if (!header_ok(m->r, &rt->headers[h], m->in))
            return false;
    if (rt->path_re != NULL && !regex_hit(m->r, rt->path_re, m->in->path))
        return false;
    if (!method_ok) {
        m->allowed |= rt->methods;
        return false;
    }
    m->hit = idx;
    return true;
}

static bool try_list(matcher_t *m, const sl__router_list_t *l)
{
    const uint32_t *items = sl__router_list_items(l);
    for (uint32_t i = 0; i < l->n; i++)
        if (try_route(m, items[i]))
            return true;
    return false;
}

/* Inside a group the path decides: exact, longest prefix down to the shortest, regexes, none. */
static bool try_group(matcher_t *m, const group_t *g)
{
    sl_str_t path = m->in->path;
    const sl__router_list_t *exact = sl__router_table_get(&g->paths, path.ptr, path.len);
    if (exact != NULL && try_list(m, exact))
        return true;
    for (const sl__router_trie_node_t *n = sl__router_trie_longest(&g->prefixes, path.ptr, path.len); n != NULL;
         n = n->up)
        if (try_list(m, &n->routes))
            return true;
    return try_list(m, &g->regexes) || try_list(m, &g->any_path);
}

static bool try_hosts(matcher_t *m)
{
    const sl_router_t *r = m->r;
    const char *host = m->in->host.ptr;
    size_t len = m->in->host.len;
    if (len == 0)
        return false;
    const group_t *g = sl__router_table_get(&r->exact_hosts, host, len);
    if (g != NULL && try_group(m, g))
        return true;
    /* Longest suffix first. A suffix starts with its dot and must leave at least one byte of
     * label in front of it, so "*.example.com" never matches "example.com" itself. */
    for (size_t i = 0; i < r->nwild_lens; i++) {
        size_t slen = r->wild_lens[i];
        if (slen >= len || host[len - slen] != '.')
            continue;
        g = sl__router_table_get(&r->wild_hosts, host + len - slen, slen);
        if (g != NULL && try_group(m, g))
            return true;
    }
    return false;
}

void sl_router_match(const sl_router_t *r, const sl_router_input_t *in, sl_router_result_t *out)
{
    matcher_t m = {
        .r = r,
        .in = in,
        .method_bit = SL_METHOD_BIT((unsigned)in->method < SL_METHOD__COUNT ? in->method : SL_METHOD_OTHER),
    };
    /* Less specific groups are tried whenever a more specific one accepts nothing, also when its
     * path matched but its method did not: a catch-all route still serves such a request, and
     * 405 is the answer only when no route at all accepts it. */
    if (try_hosts(&m) || try_group(&m, &r->any_host)) {
        *out = (sl_router_result_t){.status = SL_ROUTER_MATCHED, .route_index = m.hit};
    } else if (m.allowed != 0) {
        *out = (sl_router_result_t){.status = SL_ROUTER_METHOD_NOT_ALLOWED, .allowed_methods = m.allowed};
    } else {
        *out = (sl_router_result_t){.status = SL_ROUTER_NOT_FOUND};
    }
}

/* ---- rewriting ----------------------------------------------------------------------------- */

int sl_router_rewrite_path(const sl_router_t *r, size_t route_index, sl_str_t path, sl_arena_t *arena, sl_str_t *out)
{
    SL_BUG_ON(route_index >= r->nroutes);
    const sl_route_conf_t *rc = &r->cfg->routes[route_index];
    const route_t *rt = &r->routes[route_index];
    sl_str_t prefix = rc->match.path_prefix;
    sl_str_t cur = path;

    if (rc->strip_prefix && prefix.len > 0 && sl_str_has_prefix(path, prefix)) {
        sl_str_t rest = {path.ptr + prefix.len, path.len - prefix.len};
        if (rest.len == 0) {
            cur = SL_STR_LIT("/");
        } else if (rest.ptr[0] == '/') {
            cur = rest;
        } else {
            /* The prefix is a byte prefix and may end inside a segment ("/api" of "/apix"); the
             * upstream still needs an absolute path. */
            if (rest.len + 1 > REWRITE_MAX)
                return SL_ETOOBIG;
            char *p = sl_arena_alloc(arena, rest.len + 2);
            p[0] = '/';
            memcpy(p + 1, rest.ptr, rest.len);
            p[rest.len + 1] = '\0';
            cur = (sl_str_t){p, rest.len + 1};
        }
    }

    if (rt->rewrite_re != NULL) {
        /* One byte in front for a '/' the replacement may leave out, one behind for pcre2's NUL. */
        char buf[REWRITE_MAX + 2];
        PCRE2_SIZE outlen = REWRITE_MAX + 1;
        sl_str_t rep = rc->rewrite_replacement;
        int n =
            pcre2_substitute(rt->rewrite_re, (PCRE2_SPTR)(cur.ptr != NULL ? cur.ptr : ""), cur.len, 0,
                             PCRE2_SUBSTITUTE_UNSET_EMPTY, thread_match_data(r->max_pairs), r->mctx,
                             (PCRE2_SPTR)(rep.ptr != NULL ? rep.ptr : ""), rep.len, (PCRE2_UCHAR *)buf + 1, &outlen);
        if (n == PCRE2_ERROR_NOMEMORY)
            return SL_ETOOBIG;
        if (n < 0)
            return SL_EINVALID; /* the match limit was hit: refuse rather than forward unrewritten */
        if (n > 0) {
            /* Like stripping, a rewrite must leave an absolute path (origin-form, RFC 9112 §3.2.1). */
            sl_str_t res = {buf + 1, outlen};
            if (outlen == 0) {
                res = SL_STR_LIT("/");
            } else if (buf[1] != '/') {
                buf[0] = '/';
                res = (sl_str_t){buf, outlen + 1};
            }
            if (res.len > REWRITE_MAX)
                return SL_ETOOBIG;
            if (!sl_str_eq(res, cur))
                cur = res.ptr == buf || res.ptr == buf + 1 ? sl_arena_str_dup(arena, res) : res;
        }
    }

    if (sl_str_eq(cur, path)) {
        *out = path;
        return 0;
    }
    if (cur.len > REWRITE_MAX)
        return SL_ETOOBIG;
    *out = cur;
    return 0;
}

/* ---- match order --------------------------------------------------------------------------- */

/* Sort key of one route: smaller is tried earlier (sl_router_match_order in router.h). */
typedef struct order_key {
    int host_class;    /* 0 exact host, 1 wildcard host, 2 any host */
    size_t suffix_len; /* wildcard: the longest suffix of the route, longer first */
    int path_class;    /* 0 exact, 1 prefix, 2 regex, 3 any */
    size_t prefix_len; /* prefix: longer first */
    size_t index;      /* config order */
} order_key_t;

static order_key_t order_key_of(const sl_route_conf_t *rc, size_t index)
{
    const sl_route_match_conf_t *m = &rc->match;
    order_key_t k = {.host_class = m->nhosts == 0 ? 2 : 1, .index = index};
    for (size_t h = 0; h < m->nhosts; h++) {
        if (m->hosts[h].len > 0 && m->hosts[h].ptr[0] != '*')
            k.host_class = 0;
        else if (m->hosts[h].len > 1)
            k.suffix_len = SL_MAX(k.suffix_len, m->hosts[h].len - 1);
    }
    if (k.host_class == 0)
        k.suffix_len = 0;
    if (m->path_exact.len > 0) {
        k.path_class = 0;
    } else if (m->path_prefix.len > 0) {
        k.path_class = 1;
        k.prefix_len = m->path_prefix.len;
    } else {
        k.path_class = m->path_regex.len > 0 ? 2 : 3;
    }
    return k;
}

static int cmp_size_desc(size_t a, size_t b)
{
    return (a < b) - (a > b);
}

static int cmp_order_key(const void *pa, const void *pb)
{
    const order_key_t *a = pa, *b = pb;
    int c;
    if (a->host_class != b->host_class)
        return a->host_class - b->host_class;
    if ((c = cmp_size_desc(a->suffix_len, b->suffix_len)) != 0)
        return c;
    if (a->path_class != b->path_class)
        return a->path_class - b->path_class;
    if ((c = cmp_size_desc(a->prefix_len, b->prefix_len)) != 0)
        return c;
    return (a->index > b->index) - (a->index < b->index);
}

size_t sl_router_match_order(const sl_router_t *r, size_t *out_indices, size_t cap)
{
    size_t n = r->nroutes;
    if (cap == 0 || n == 0)
        return n;
    order_key_t *keys = sl_xmalloc(n * sizeof(*keys));
    for (size_t i = 0; i < n; i++)
        keys[i] = order_key_of(&r->cfg->routes[i], i);
    qsort(keys, n, sizeof(*keys), cmp_order_key);
    for (size_t i = 0; i < n && i < cap; i++)
        out_indices[i] = keys[i].index;
    free(keys);
    return n;
}
