/*
 * Key tables for `routes:`, the list the router compiles: a match (hosts, one path form,
 * methods, header conditions), a destination (an upstream, a weighted `split` over several, or
 * a local `respond`), path rewriting and header edits. Everything the router would otherwise
 * discover at request time (a bad regex, a wildcard in the middle of a host, an edit of a framing
 * header) is rejected here, with a position.
 */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "config/internal.h"

#define DURATION_MAX (24ull * 60 * 60 * 1000)

static const char name_rule[] = "letters, digits, '.', '_', '-'; at most 128";

static int parse_name(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    if (!sl__config_is_name(*out)) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v), "%s: %s is not a valid name (%s)", k->name,
                         sl__config_quote(q, sizeof(q), *out), name_rule);
        *out = SL_STR_NULL;
        return -1;
    }
    return 0;
}

static int parse_regex(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    if (sl__config_check_regex(ctx, k->name, sl__config_node_deref(v), *out, NULL) != 0) {
        *out = SL_STR_NULL;
        return -1;
    }
    return 0;
}

/* ---- match -------------------------------------------------------------------------------- */

static const char *host_problem(sl_str_t h)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (h.len > 0 && h.ptr[0] == '[') {
        if (h.ptr[h.len - 1] != ']')
            return "hosts are matched without the port";
        sl_str_t inner = {h.ptr + 1, h.len - 2};
        if (!sl__config_ip_to_sockaddr(inner, 0, &ss, &len) || ss.ss_family != AF_INET6)
            return "brackets must hold an IPv6 address";
        return NULL;
    }
    if (memchr(h.ptr, ':', h.len) != NULL)
        return "hosts are matched without the port";
    sl_str_t name = h;
    if (h.len >= 2 && h.ptr[0] == '*' && h.ptr[1] == '.')
        name = (sl_str_t){h.ptr + 2, h.len - 2};
    if (memchr(name.ptr, '*', name.len) != NULL)
        return "'*' is only allowed as the whole leading label, as in *.example.com";
    if (name.len == h.len && sl__config_ip_to_sockaddr(h, 0, &ss, &len) && ss.ss_family == AF_INET)
        return NULL;
    return sl__config_is_hostname(name) ? NULL : "not a valid host name";
}

static int parse_hosts(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_route_match_conf_t *m = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, k->name, v) != 0)
        return -1;
    if (v->count == 0) {
        sl__config_error(ctx, v, "hosts: the list is empty (leave hosts out to match any host)");
        return -1;
    }
    m->hosts = sl_arena_alloc(&ctx->cfg->arena, v->count * sizeof(*m->hosts));
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next) {
        sl_str_t h;
        if (sl__config_read_str(ctx, k->name, c, &h) != 0) {
            rc = -1;
            continue;
        }
        /* DNS names are case-insensitive; the router compares bytes. */
        for (size_t i = 0; i < h.len; i++)
            ((char *)h.ptr)[i] = sl_ascii_lower(h.ptr[i]);
        const char *why = host_problem(h);
        if (why != NULL) {
            sl__config_error(ctx, sl__config_node_deref(c), "hosts: %s: %s", sl__config_quote(q, sizeof(q), h), why);
            rc = -1;
            continue;
        }
        bool dup = false;
        for (size_t i = 0; i < m->nhosts && !dup; i++)
            dup = sl_str_eq(m->hosts[i], h);
        if (dup) {
            sl__config_error(ctx, sl__config_node_deref(c), "hosts: duplicate host %s",
                             sl__config_quote(q, sizeof(q), h));
            rc = -1;
            continue;
        }
        m->hosts[m->nhosts++] = h;
    }
    return rc;
}

static int parse_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field, p;
    if (sl__config_read_str(ctx, k->name, v, &p) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    if (p.len == 0 || p.ptr[0] != '/') {
        sl__config_error(ctx, v, "%s: must start with '/', got %s", k->name, sl__config_quote(q, sizeof(q), p));
        return -1;
    }
    for (size_t i = 0; i < p.len; i++) {
        unsigned char c = (unsigned char)p.ptr[i];
        const char *why = c <= 0x20 || c == 0x7f ? "a space or control character cannot appear in a request path"
                          : c == '?'             ? "'?' starts the query, which is not part of the path"
                          : c == '#'             ? "'#' starts a fragment, which clients never send"
                                                 : NULL;
        if (why != NULL) {
            sl__config_error(ctx, v, "%s: %s: %s", k->name, sl__config_quote(q, sizeof(q), p), why);
            return -1;
        }
    }
    *out = p;
    return 0;
}

int sl__config_parse_methods(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    uint32_t *methods = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, k->name, v) != 0)
        return -1;
    if (v->count == 0) {
        sl__config_error(ctx, v, "methods: the list is empty (leave methods out to match any method)");
        return -1;
    }
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next) {
        sl_str_t s;
        if (sl__config_read_str(ctx, k->name, c, &s) != 0) {
            rc = -1;
            continue;
        }
        enum sl_method m = sl_method_from_str(s);
        if (m == SL_METHOD_OTHER) {
            sl__config_error(ctx, sl__config_node_deref(c),
                             "methods: unknown method %s (known: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, "
                             "CONNECT, TRACE; names are case-sensitive)",
                             sl__config_quote(q, sizeof(q), s));
            rc = -1;
        } else if (*methods & SL_METHOD_BIT(m)) {
            sl__config_error(ctx, sl__config_node_deref(c), "methods: duplicate method %s",
                             sl__config_quote(q, sizeof(q), s));
            rc = -1;
        }
        if (m != SL_METHOD_OTHER)
            *methods |= SL_METHOD_BIT(m);
    }
    return rc;
}

int sl__config_parse_header_name(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    if (!sl__config_is_token(*out)) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v), "%s: %s is not a valid header name", k->name,
                         sl__config_quote(q, sizeof(q), *out));
        return -1;
    }
    return 0;
}

static int parse_field_value(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, sl_str_t *out)
{
    if (sl__config_read_str(ctx, name, v, out) != 0)
        return -1;
    if (!sl__config_is_field_value(*out)) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v), "%s: %s: header values cannot contain CR or LF", name,
                         sl__config_quote(q, sizeof(q), *out));
        return -1;
    }
    return 0;
}

static int parse_hm_value(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_header_match_conf_t *hm = field;
    hm->kind = SL_HEADER_MATCH_EXACT;
    return parse_field_value(ctx, k->name, v, &hm->value);
}

static int parse_hm_present(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_header_match_conf_t *hm = field;
    bool present;
    if (sl__config_read_bool(ctx, k->name, v, &present) != 0)
        return -1;
    hm->kind = present ? SL_HEADER_MATCH_PRESENT : SL_HEADER_MATCH_ABSENT;
    return 0;
}

static int parse_hm_regex(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_header_match_conf_t *hm = field;
    hm->kind = SL_HEADER_MATCH_REGEX;
    return parse_regex(ctx, k, v, &hm->value);
}

static void header_match_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    static const char *const forms[] = {"value", "present", "regex"};
    const sl__config_node_t *second = NULL;
    int n = 0;
    for (size_t i = 0; i < 3; i++) {
        const sl__config_node_t *key = sl__config_node_map_key(map, forms[i]);
        if (key != NULL && ++n == 2)
            second = key;
    }
    if (n != 1)
        sl__config_error(ctx, second != NULL ? second : map,
                         "headers: a header match needs exactly one of value, "
                         "present, regex");
}

static const sl__config_key_t header_match_keys[] = {
    {.name = "name",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_header_match_conf_t, name),
     .required = true,
     .parse = sl__config_parse_header_name},
    {.name = "value", .type = SL__CT_CUSTOM, .parse = parse_hm_value},
    {.name = "present", .type = SL__CT_CUSTOM, .parse = parse_hm_present},
    {.name = "regex", .type = SL__CT_CUSTOM, .parse = parse_hm_regex},
};

static const sl__config_section_t header_match_section = {
    .what = "header match",
    .keys = header_match_keys,
    .nkeys = sizeof(header_match_keys) / sizeof(header_match_keys[0]),
    .pos_offset = offsetof(sl_header_match_conf_t, pos),
    .check = header_match_check,
};

static int parse_header_matches(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field)
{
    sl_route_match_conf_t *m = field;
    void *items;
    int rc = sl__config_walk_seq(ctx, &header_match_section, k->name, v, sizeof(sl_header_match_conf_t), &items,
                                 &m->nheaders);
    m->headers = items;
    return rc;
}

static void match_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    static const char *const forms[] = {"path", "path_prefix", "path_regex"};
    int n = 0;
    for (size_t i = 0; i < 3; i++) {
        const sl__config_node_t *key = sl__config_node_map_key(map, forms[i]);
        if (key != NULL && ++n >= 2)
            sl__config_error(ctx, key, "match: only one of path, path_prefix, path_regex may be set");
    }
}

static const sl__config_key_t match_keys[] = {
    {.name = "hosts", .type = SL__CT_CUSTOM, .parse = parse_hosts},
    {.name = "path", .type = SL__CT_CUSTOM, .offset = offsetof(sl_route_match_conf_t, path_exact), .parse = parse_path},
    {.name = "path_prefix",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_match_conf_t, path_prefix),
     .parse = parse_path},
    {.name = "path_regex",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_match_conf_t, path_regex),
     .parse = parse_regex},
    {.name = "methods",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_match_conf_t, methods),
     .parse = sl__config_parse_methods},
    {.name = "headers", .type = SL__CT_CUSTOM, .parse = parse_header_matches},
};

static const sl__config_section_t match_section = {
    .what = "route match",
    .keys = match_keys,
    .nkeys = sizeof(match_keys) / sizeof(match_keys[0]),
    .pos_offset = offsetof(sl_route_match_conf_t, pos),
    .check = match_check,
};

/* ---- header edits ------------------------------------------------------------------------- */

static int check_edit_name(sl__config_ctx_t *ctx, const char *what, const sl__config_node_t *n, sl_str_t name)
{
    char q[80];
    if (!sl__config_is_token(name)) {
        sl__config_error(ctx, n, "%s: %s is not a valid header name", what, sl__config_quote(q, sizeof(q), name));
        return -1;
    }
    if (sl__config_is_hop_by_hop(name)) {
        sl__config_error(ctx, n, "%s: %s is managed by the gateway on each hop and cannot be edited", what,
                         sl__config_quote(q, sizeof(q), name));
        return -1;
    }
    return 0;
}

/* `set` and `add`: a mapping from header name to value. */
static int parse_edit_pairs(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_header_edits_conf_t *e = field;
    bool is_set = strcmp(k->name, "set") == 0;
    v = sl__config_node_deref(v);
    if (sl__config_expect_map(ctx, k->name, v) != 0)
        return -1;
    size_t n = v->count / 2;
    if (n == 0)
        return 0;
    sl_header_kv_conf_t *kvs = sl_arena_alloc(&ctx->cfg->arena, n * sizeof(*kvs));
    const sl__config_node_t **keys = sl_arena_alloc(&ctx->scratch, n * sizeof(*keys));
    size_t count = 0;
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *kn = v->first; kn != NULL && kn->next != NULL; kn = kn->next->next) {
        const sl__config_node_t *key = sl__config_node_deref(kn);
        if (kn->dup)
            continue;
        if (key->kind != SL__CONFIG_NODE_SCALAR) {
            sl__config_error(ctx, kn, "%s: header names must be strings", k->name);
            rc = -1;
            continue;
        }
        sl_header_kv_conf_t kv;
        if (check_edit_name(ctx, k->name, kn, key->text) != 0 ||
            parse_field_value(ctx, k->name, kn->next, &kv.value) != 0) {
            rc = -1;
            continue;
        }
        kv.name = sl_arena_str_dup(&ctx->cfg->arena, key->text);
        /* `set` replaces by name, and names are case-insensitive: two spellings would fight. */
        for (size_t i = 0; is_set && i < count; i++)
            if (sl_str_caseeq(kvs[i].name, kv.name)) {
                sl__config_error(ctx, kn, "set: header %s is set twice (first at %u:%u)",
                                 sl__config_quote(q, sizeof(q), kv.name), keys[i]->pos.line, keys[i]->pos.col);
                rc = -1;
                goto next;
            }
        keys[count] = kn;
        kvs[count++] = kv;
    next:;
    }
    if (is_set) {
        e->set = kvs;
        e->nset = count;
    } else {
        e->add = kvs;
        e->nadd = count;
    }
    return rc;
}

static int parse_edit_remove(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_header_edits_conf_t *e = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, k->name, v) != 0)
        return -1;
    if (v->count == 0)
        return 0;
    e->remove = sl_arena_alloc(&ctx->cfg->arena, v->count * sizeof(*e->remove));
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next) {
        sl_str_t name;
        if (sl__config_read_str(ctx, k->name, c, &name) != 0 ||
            check_edit_name(ctx, k->name, sl__config_node_deref(c), name) != 0) {
            rc = -1;
            continue;
        }
        bool dup = false;
        for (size_t i = 0; i < e->nremove && !dup; i++)
            dup = sl_str_caseeq(e->remove[i], name);
        if (dup) {
            sl__config_error(ctx, sl__config_node_deref(c), "remove: duplicate header %s",
                             sl__config_quote(q, sizeof(q), name));
            rc = -1;
            continue;
        }
        e->remove[e->nremove++] = name;
    }
    return rc;
}

static const sl__config_key_t edits_keys[] = {
    {.name = "set", .type = SL__CT_CUSTOM, .parse = parse_edit_pairs},
    {.name = "add", .type = SL__CT_CUSTOM, .parse = parse_edit_pairs},
    {.name = "remove", .type = SL__CT_CUSTOM, .parse = parse_edit_remove},
};

static const sl__config_section_t edits_section = {
    .what = "header edits",
    .keys = edits_keys,
    .nkeys = sizeof(edits_keys) / sizeof(edits_keys[0]),
    .pos_offset = SL__NO_POS,
};

/* ---- respond, rewrite --------------------------------------------------------------------- */

static int parse_status(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    uint64_t status;
    if (sl__config_read_u64(ctx, k->name, v, 100, 599, &status) != 0)
        return -1;
    *(uint16_t *)field = (uint16_t)status;
    return 0;
}

static int parse_content_type(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (parse_field_value(ctx, k->name, v, out) != 0)
        return -1;
    if (out->len == 0) {
        sl__config_error(ctx, sl__config_node_deref(v), "content_type: must not be empty");
        return -1;
    }
    return 0;
}

static void respond_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_respond_conf_t *r = base;
    /* Set even when broken, so the route check does not add "needs upstream or respond". */
    r->enabled = true;
    const sl__config_node_t *body = sl__config_node_map_key(map, "body");
    if (r->echo && body != NULL)
        sl__config_error(ctx, body, "respond: echo and body cannot be combined");
    /* RFC 9110 §15.3.5, §15.4.5: these responses never carry content. */
    if (body != NULL && r->body.len > 0 && (r->status < 200 || r->status == 204 || r->status == 304))
        sl__config_error(ctx, body, "respond: a %u response cannot have a body", r->status);
    if (sl__config_node_map_key(map, "content_type") == NULL)
        r->content_type = r->echo ? SL_STR_LIT("application/json") : SL_STR_LIT("text/plain; charset=utf-8");
}

static const sl__config_key_t respond_keys[] = {
    {.name = "status",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_respond_conf_t, status),
     .dflt = "200",
     .parse = parse_status},
    {.name = "body", .type = SL__CT_STR, .offset = offsetof(sl_respond_conf_t, body)},
    {.name = "content_type",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_respond_conf_t, content_type),
     .parse = parse_content_type},
    {.name = "echo", .type = SL__CT_BOOL, .offset = offsetof(sl_respond_conf_t, echo)},
};

static const sl__config_section_t respond_section = {
    .what = "respond",
    .keys = respond_keys,
    .nkeys = sizeof(respond_keys) / sizeof(respond_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = respond_check,
};

/* pcre2_substitute's default syntax: $$, $n, ${n}, $name, ${name}. Only numbers are checked:
 * a group the regex does not have fails every request at run time otherwise. */
static void rewrite_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_route_conf_t *r = base;
    uint32_t ncaptures;
    if (!clean || sl__config_check_regex(ctx, "regex", map, r->rewrite_regex, &ncaptures) != 0)
        return;
    const sl__config_node_t *where = sl__config_node_map_get(map, "replacement");
    sl_str_t s = r->rewrite_replacement;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] != '$')
            continue;
        size_t j = i + 1;
        if (j < s.len && s.ptr[j] == '$') {
            i = j;
            continue;
        }
        bool brace = j < s.len && s.ptr[j] == '{';
        j += brace;
        unsigned long long group = 0;
        size_t digits = 0;
        while (j < s.len && s.ptr[j] >= '0' && s.ptr[j] <= '9' && digits < 10) {
            group = group * 10 + (unsigned)(s.ptr[j++] - '0');
            digits++;
        }
        if (digits == 0) {
            bool name = j < s.len && (s.ptr[j] == '_' || ((s.ptr[j] | 0x20) >= 'a' && (s.ptr[j] | 0x20) <= 'z'));
            if (!name && !(j < s.len && s.ptr[j] == '*')) {
                sl__config_error(ctx, where,
                                 "replacement: '$' must be followed by a group number, {group}, a "
                                 "group name or another '$'");
                return;
            }
            continue;
        }
        if (group > ncaptures) {
            sl__config_error(ctx, where, "replacement: $%llu refers to a group the regex does not have (it has %u)",
                             group, ncaptures);
            return;
        }
        i = j - 1;
    }
}

static const sl__config_key_t rewrite_keys[] = {
    {.name = "regex",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_conf_t, rewrite_regex),
     .required = true,
     .parse = parse_regex},
    {.name = "replacement",
     .type = SL__CT_STR,
     .offset = offsetof(sl_route_conf_t, rewrite_replacement),
     .required = true},
};

static const sl__config_section_t rewrite_section = {
    .what = "rewrite",
    .keys = rewrite_keys,
    .nkeys = sizeof(rewrite_keys) / sizeof(rewrite_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = rewrite_check,
};

/* ---- split, sticky ------------------------------------------------------------------------ */

static const sl__config_key_t split_keys[] = {
    {.name = "upstream",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_split_conf_t, upstream),
     .required = true,
     .parse = parse_name},
    /* Required: a canary share is a decision, not something to inherit from a default. */
    {.name = "weight",
     .type = SL__CT_U32,
     .offset = offsetof(sl_route_split_conf_t, weight),
     .required = true,
     .min = 0,
     .max = 1000},
};

static const sl__config_section_t split_section = {
    .what = "split entry",
    .keys = split_keys,
    .nkeys = sizeof(split_keys) / sizeof(split_keys[0]),
    .pos_offset = offsetof(sl_route_split_conf_t, pos),
};

/* Whether an upstream exists is judged in validate.c, once every upstream has been read. */
static int parse_split(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_route_conf_t *r = field;
    const sl__config_node_t *seq = sl__config_node_deref(v);
    void *items;
    size_t n;
    int rc = sl__config_walk_seq(ctx, &split_section, k->name, v, sizeof(sl_route_split_conf_t), &items, &n);
    if (seq == NULL || seq->kind != SL__CONFIG_NODE_SEQ)
        return -1;
    if (n == 0) {
        sl__config_error(ctx, seq, "split: the list is empty (it needs 1 to %d upstreams)", SL_ROUTE_SPLIT_MAX);
        return -1;
    }
    if (n > SL_ROUTE_SPLIT_MAX) {
        sl__config_error(ctx, seq, "split: at most %d upstreams, got %zu", SL_ROUTE_SPLIT_MAX, n);
        return -1;
    }
    sl_route_split_conf_t *e = items;
    r->split = e;
    r->nsplit = n;
    if (rc != 0)
        return rc;
    char q[80];
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += e[i].weight;
        for (size_t j = 0; j < i; j++)
            if (sl_str_eq(e[i].upstream, e[j].upstream)) {
                sl__config_error_at(ctx, e[i].pos, "split: upstream %s is listed twice (first at %u:%u)",
                                    sl__config_quote(q, sizeof(q), e[i].upstream), e[j].pos.line, e[j].pos.col);
                rc = -1;
                break;
            }
    }
    /* Weight 0 drains one upstream; all of them at 0 would leave the route nowhere to go. */
    if (total == 0) {
        sl__config_error(ctx, seq, "split: every weight is 0; at least one upstream must take traffic");
        rc = -1;
    }
    return rc;
}

/* `sticky: ip | header:NAME | cookie:NAME`, like an upstream's `hash_on` minus `path`: a
 * split keyed on the path would send whole URLs, not clients, to the canary. NAME must be a
 * token (RFC 9110 §5.1, RFC 6265 §4.1.1). */
static int parse_sticky(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_route_conf_t *r = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    return sl__config_parse_request_key(ctx, "sticky", v, s, false, &r->sticky, &r->sticky_name);
}

/* ---- one route ---------------------------------------------------------------------------- */

static void route_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_route_conf_t *r = base;
    size_t before = ctx->nerrors;

    char label[120], q[80];
    if (r->name.len > 0)
        snprintf(label, sizeof(label), "route %s", sl__config_quote(q, sizeof(q), r->name));
    else
        snprintf(label, sizeof(label), "route");
    /* Exactly one destination; each extra one is reported against the first, at its own key. */
    static const char *const dests[] = {"upstream", "split", "respond"};
    const sl__config_node_t *first = NULL;
    const char *first_name = NULL;
    for (size_t i = 0; i < sizeof(dests) / sizeof(dests[0]); i++) {
        const sl__config_node_t *key = sl__config_node_map_key(map, dests[i]);
        if (key == NULL)
            continue;
        if (first == NULL) {
            first = key;
            first_name = dests[i];
        } else {
            sl__config_error(ctx, key, "%s has both %s and %s; keep one", label, first_name, dests[i]);
        }
    }
    if (first == NULL)
        sl__config_error(ctx, map, "%s needs one of upstream, split, respond", label);
    const sl__config_node_t *upstream = sl__config_node_map_key(map, "upstream");
    const sl__config_node_t *split = sl__config_node_map_key(map, "split");
    const sl__config_node_t *respond = sl__config_node_map_key(map, "respond");
    const sl__config_node_t *sticky = sl__config_node_map_key(map, "sticky");
    if (sticky != NULL && split == NULL)
        sl__config_error(ctx, sticky, "sticky only applies to routes with split");

    const sl__config_node_t *strip = sl__config_node_map_key(map, "strip_prefix");
    if (r->strip_prefix && r->match.path_prefix.len == 0)
        sl__config_error(ctx, strip, "strip_prefix needs match.path_prefix");
    if (respond != NULL && upstream == NULL && split == NULL) {
        const sl__config_node_t *rewrite = sl__config_node_map_key(map, "rewrite");
        if (r->strip_prefix)
            sl__config_error(ctx, strip, "strip_prefix only applies to routes with an upstream");
        if (rewrite != NULL)
            sl__config_error(ctx, rewrite, "rewrite only applies to routes with an upstream");
        const sl__config_node_t *cache = sl__config_node_map_key(map, "cache");
        if (cache != NULL)
            sl__config_error(ctx, cache, "cache only applies to routes with an upstream");
    }
    ctx->route_aux[ctx->nroute_aux++] = (sl__config_route_aux_t){r, map, clean && ctx->nerrors == before};
}

static int parse_acl(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_route_conf_t *r = field;
    r->has_acl = true;
    return sl__config_walk(ctx, &sl__config_acl_section, k->name, v, &r->acl);
}

static int parse_route_ip_rules(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field)
{
    sl_route_conf_t *r = field;
    r->has_ip_rules = true;
    return sl__config_walk(ctx, &sl__config_ip_rules_section, k->name, v, &r->ip_rules);
}

static const sl__config_key_t route_keys[] = {
    {.name = "name",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_conf_t, name),
     .required = true,
     .parse = parse_name},
    {.name = "match", .type = SL__CT_SECTION, .offset = offsetof(sl_route_conf_t, match), .section = &match_section},
    {.name = "upstream", .type = SL__CT_CUSTOM, .offset = offsetof(sl_route_conf_t, upstream), .parse = parse_name},
    {.name = "split", .type = SL__CT_CUSTOM, .parse = parse_split},
    {.name = "sticky", .type = SL__CT_CUSTOM, .parse = parse_sticky},
    {.name = "strip_prefix", .type = SL__CT_BOOL, .offset = offsetof(sl_route_conf_t, strip_prefix)},
    {.name = "rewrite", .type = SL__CT_SECTION, .section = &rewrite_section},
    {.name = "timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_route_conf_t, timeout_ms),
     .min = 0,
     .max = DURATION_MAX},
    {.name = "priority",
     .type = SL__CT_U32,
     .offset = offsetof(sl_route_conf_t, priority),
     .dflt = "5",
     .min = 0,
     .max = 9},
    {.name = "respond",
     .type = SL__CT_SECTION,
     .offset = offsetof(sl_route_conf_t, respond),
     .section = &respond_section},
    {.name = "request_headers",
     .type = SL__CT_SECTION,
     .offset = offsetof(sl_route_conf_t, request_headers),
     .section = &edits_section},
    {.name = "response_headers",
     .type = SL__CT_SECTION,
     .offset = offsetof(sl_route_conf_t, response_headers),
     .section = &edits_section},
    /* Later issues (filters): give each a type and a table when its filter lands. */
    {.name = "auth",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_conf_t, auth),
     .parse = sl__config_parse_route_auth},
    {.name = "acl", .type = SL__CT_CUSTOM, .parse = parse_acl},
    {.name = "ip_rules", .type = SL__CT_CUSTOM, .parse = parse_route_ip_rules},
    {.name = "cors", .type = SL__CT_CUSTOM, .offset = offsetof(sl_route_conf_t, cors), .parse = sl__config_parse_cors},
    {.name = "rate_limit", .type = SL__CT_CUSTOM, .parse = sl__config_parse_route_rate_limits},
    {.name = "rate_limit_headers",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_route_conf_t, rate_limit_headers),
     .dflt = "both",
     .enums = sl__config_rate_limit_headers},
    {.name = "quota", .type = SL__CT_CUSTOM, .parse = sl__config_parse_route_quota},
    {.name = "cache", .type = SL__CT_CUSTOM, .parse = sl__config_parse_route_cache},
};

static const sl__config_section_t route_section = {
    .what = "route",
    .keys = route_keys,
    .nkeys = sizeof(route_keys) / sizeof(route_keys[0]),
    .pos_offset = offsetof(sl_route_conf_t, pos),
    .check = route_check,
};

int sl__config_parse_routes(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_config_t *cfg = field;
    const sl__config_node_t *seq = sl__config_node_deref(v);
    if (seq != NULL && seq->kind == SL__CONFIG_NODE_SEQ && seq->count > 0) {
        ctx->route_aux = sl_arena_alloc(&ctx->scratch, seq->count * sizeof(*ctx->route_aux));
        memset(ctx->route_aux, 0, seq->count * sizeof(*ctx->route_aux));
    }
    void *items;
    int rc = sl__config_walk_seq(ctx, &route_section, k->name, v, sizeof(sl_route_conf_t), &items, &cfg->nroutes);
    cfg->routes = items;
    return rc;
}
