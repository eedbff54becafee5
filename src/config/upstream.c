/*
 * Key tables for `upstreams:`, a mapping from name to a group of targets with its balancer,
 * timeouts and keep-alive pool. Literal IP targets get their sockaddr here; host names are only
 * syntax-checked and left to the runtime resolver, so a load never blocks on DNS.
 */
#include <stddef.h>
#include <string.h>

#include "config/internal.h"

_Static_assert(sizeof(enum sl_balance) == sizeof(int), "enum fields are read as int");

#define DURATION_MAX (24ull * 60 * 60 * 1000)

/* ---- targets ------------------------------------------------------------------------------ */

static int parse_target_address(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field)
{
    sl_target_conf_t *t = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    sl_str_t host;
    uint16_t port;
    bool bracketed;
    int rc = sl__config_split_hostport(s, &host, &port, &bracketed);
    if (rc == SL__HP_OK && host.len == 0)
        rc = SL__HP_NO_PORT;
    if (rc != SL__HP_OK) {
        const char *why = host.len == 0 && rc == SL__HP_NO_PORT && s.len > 0 && s.ptr[0] == ':'
                              ? "a target needs a host before the port"
                              : sl__config_hostport_reason(rc);
        sl__config_error(ctx, v, "address: %s is not a valid target: %s", sl__config_quote(q, sizeof(q), s), why);
        return -1;
    }
    t->address = s;
    t->host = sl_arena_str_dup(&ctx->cfg->arena, host);
    t->port = port;
    t->host_is_ip = sl__config_ip_to_sockaddr(host, port, &t->addr, &t->addrlen);
    if (bracketed && (!t->host_is_ip || t->addr.ss_family != AF_INET6)) {
        sl__config_error(ctx, v, "address: %s: brackets must hold an IPv6 address", sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (!t->host_is_ip && !sl__config_is_hostname(host)) {
        sl__config_error(ctx, v, "address: %s is neither an IP address nor a valid host name",
                         sl__config_quote(q, sizeof(q), host));
        return -1;
    }
    return 0;
}

static const sl__config_key_t target_keys[] = {
    {.name = "address", .type = SL__CT_CUSTOM, .required = true, .parse = parse_target_address},
    {.name = "weight",
     .type = SL__CT_U32,
     .offset = offsetof(sl_target_conf_t, weight),
     .dflt = "1",
     .min = 1,
     .max = 1000},
};

static const sl__config_section_t target_section = {
    .what = "target",
    .keys = target_keys,
    .nkeys = sizeof(target_keys) / sizeof(target_keys[0]),
    .pos_offset = offsetof(sl_target_conf_t, pos),
};

static int parse_targets(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    void *items;
    int rc = sl__config_walk_seq(ctx, &target_section, k->name, v, sizeof(sl_target_conf_t), &items, &up->ntargets);
    up->targets = items;
    return rc;
}

/* ---- one upstream ------------------------------------------------------------------------- */

static const sl__config_enum_t balances[] = {
    {"round_robin", SL_BALANCE_ROUND_ROBIN, false},
    {"least_conn", SL_BALANCE_LEAST_CONN, false},
    {"hash", SL_BALANCE_HASH, false},
    {"p2c_ewma", SL_BALANCE_P2C_EWMA, false},
    {NULL, 0, false},
};

static const char *balance_name(enum sl_balance b)
{
    for (const sl__config_enum_t *e = balances; e->name != NULL; e++)
        if (e->value == (int)b)
            return e->name;
    return "?";
}

/* `hash_on: ip | path | header:NAME | cookie:NAME`. NAME must be a token: header field names
 * are (RFC 9110 §5.1) and so are cookie names (RFC 6265 §4.1.1). */
static int parse_hash_on(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    static const struct {
        const char *prefix;
        enum sl_hash_on on;
        const char *noun;
    } named[] = {{"header:", SL_HASH_ON_HEADER, "header"}, {"cookie:", SL_HASH_ON_COOKIE, "cookie"}};
    if (sl_str_eq(s, SL_STR_LIT("ip"))) {
        up->hash_on = SL_HASH_ON_IP;
        return 0;
    }
    if (sl_str_eq(s, SL_STR_LIT("path"))) {
        up->hash_on = SL_HASH_ON_PATH;
        return 0;
    }
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        sl_str_t prefix = sl_str_from_cstr(named[i].prefix);
        if (!sl_str_has_prefix(s, prefix))
            continue;
        sl_str_t name = {s.ptr + prefix.len, s.len - prefix.len};
        if (name.len == 0) {
            sl__config_error(ctx, v, "hash_on: %s needs a %s name (%sNAME)", sl__config_quote(q, sizeof(q), s),
                             named[i].noun, named[i].prefix);
            return -1;
        }
        if (!sl__config_is_token(name)) {
            sl__config_error(ctx, v, "hash_on: %s is not a valid %s name", sl__config_quote(q, sizeof(q), name),
                             named[i].noun);
            return -1;
        }
        up->hash_on = named[i].on;
        up->hash_on_name = name; /* a suffix of the arena copy, so still NUL-terminated */
        return 0;
    }
    sl__config_error(ctx, v, "hash_on: expected ip, path, header:NAME or cookie:NAME, got %s",
                     sl__config_quote(q, sizeof(q), s));
    return -1;
}

static const sl__config_key_t upstream_timeout_keys[] = {
    {.name = "connect",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, connect_timeout_ms),
     .dflt = "1s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "read",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, read_timeout_ms),
     .dflt = "30s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "send",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, send_timeout_ms),
     .dflt = "30s",
     .min = 1,
     .max = DURATION_MAX},
};

static const sl__config_section_t upstream_timeouts_section = {
    .what = "upstream timeouts",
    .keys = upstream_timeout_keys,
    .nkeys = sizeof(upstream_timeout_keys) / sizeof(upstream_timeout_keys[0]),
    .pos_offset = SL__NO_POS,
};

static const sl__config_key_t keepalive_keys[] = {
    {.name = "max_idle",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, keepalive_max_idle),
     .dflt = "64",
     .min = 0,
     .max = 100000},
    {.name = "idle_timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, keepalive_idle_timeout_ms),
     .dflt = "60s",
     .min = 1,
     .max = DURATION_MAX},
};

static const sl__config_section_t keepalive_section = {
    .what = "keepalive",
    .keys = keepalive_keys,
    .nkeys = sizeof(keepalive_keys) / sizeof(keepalive_keys[0]),
    .pos_offset = SL__NO_POS,
};

static void upstream_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_upstream_conf_t *up = base;
    char q[80];
    /* hash_on elsewhere would be silently ignored; judged only once `balance` itself was read
     * (a bad balance value has its own error and leaves the default in the field). */
    const sl__config_node_t *balance = sl__config_node_map_get(map, "balance");
    bool balance_read = balance == NULL || (balance->kind == SL__CONFIG_NODE_SCALAR &&
                                            sl_str_eq(balance->text, sl_str_from_cstr(balance_name(up->balance))));
    if (up->hash_on != SL_HASH_ON_NONE && up->balance != SL_BALANCE_HASH && balance_read)
        sl__config_error(ctx, sl__config_node_map_key(map, "hash_on"),
                         "hash_on is only used with balance: hash (this upstream has balance: %s)",
                         balance_name(up->balance));
    if (up->balance == SL_BALANCE_HASH && up->hash_on == SL_HASH_ON_NONE)
        up->hash_on = SL_HASH_ON_IP;
    const sl__config_node_t *targets = sl__config_node_map_get(map, "targets");
    if (up->ntargets == 0 && (targets == NULL || targets->kind == SL__CONFIG_NODE_SEQ)) {
        sl__config_error(ctx, targets != NULL ? targets : map, "upstream %s has no targets",
                         sl__config_quote(q, sizeof(q), up->name));
        return;
    }
    /* The same target twice would silently double its share of traffic. Lists are short. */
    for (size_t i = 1; clean && i < up->ntargets; i++)
        for (size_t j = 0; j < i; j++)
            if (sl_str_caseeq(up->targets[i].host, up->targets[j].host) && up->targets[i].port == up->targets[j].port) {
                sl__config_error_at(ctx, up->targets[i].pos, "duplicate target %s in upstream '%s' (first at %u:%u)",
                                    sl__config_quote(q, sizeof(q), up->targets[i].address), up->name.ptr,
                                    up->targets[j].pos.line, up->targets[j].pos.col);
                break;
            }
}

static const sl__config_key_t upstream_keys[] = {
    {.name = "targets", .type = SL__CT_CUSTOM, .parse = parse_targets},
    {.name = "balance",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_upstream_conf_t, balance),
     .dflt = "round_robin",
     .enums = balances},
    {.name = "hash_on", .type = SL__CT_CUSTOM, .parse = parse_hash_on},
    {.name = "timeouts", .type = SL__CT_SECTION, .section = &upstream_timeouts_section},
    {.name = "keepalive", .type = SL__CT_SECTION, .section = &keepalive_section},
    /* Later issue (health checks, breaker, retries): give each a type and a table to enable it. */
    {.name = "health", .type = SL__CT_UNSUPPORTED},
    {.name = "circuit_breaker", .type = SL__CT_UNSUPPORTED},
    {.name = "retries", .type = SL__CT_UNSUPPORTED},
    {.name = "limits", .type = SL__CT_UNSUPPORTED},
};

static const sl__config_section_t upstream_section = {
    .what = "upstream",
    .keys = upstream_keys,
    .nkeys = sizeof(upstream_keys) / sizeof(upstream_keys[0]),
    .pos_offset = SL__NO_POS, /* the name's position, set by the caller */
    .check = upstream_check,
};

int sl__config_parse_upstreams(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field)
{
    sl_config_t *cfg = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_map(ctx, k->name, v) != 0)
        return -1;
    size_t n = 0;
    for (const sl__config_node_t *kn = v->first; kn != NULL && kn->next != NULL; kn = kn->next->next)
        n += !kn->dup;
    if (n == 0)
        return 0;
    cfg->upstreams = sl_arena_alloc(&cfg->arena, n * sizeof(*cfg->upstreams));
    memset(cfg->upstreams, 0, n * sizeof(*cfg->upstreams));
    int rc = 0;
    for (const sl__config_node_t *kn = v->first; kn != NULL && kn->next != NULL; kn = kn->next->next) {
        if (kn->dup)
            continue;
        const sl__config_node_t *key = sl__config_node_deref(kn);
        sl_upstream_conf_t *up = &cfg->upstreams[cfg->nupstreams];
        char q[80];
        if (key->kind != SL__CONFIG_NODE_SCALAR) {
            sl__config_error(ctx, kn, "upstreams: upstream names must be strings");
            rc = -1;
            continue;
        }
        if (!sl__config_is_name(key->text)) {
            sl__config_error(ctx, kn,
                             "upstreams: %s is not a valid upstream name (letters, digits, '.', '_', '-'; at most "
                             "128)",
                             sl__config_quote(q, sizeof(q), key->text));
            rc = -1;
            /* Still read the body, into a throwaway, so its own errors are reported too. */
            up = sl_arena_alloc(&ctx->scratch, sizeof(*up));
            memset(up, 0, sizeof(*up));
            up->name = sl_arena_str_dup(&ctx->scratch, key->text);
        } else {
            up->name = sl_arena_str_dup(&cfg->arena, key->text);
            cfg->nupstreams++;
        }
        up->pos = kn->pos;
        sl__config_defaults(ctx, &upstream_section, up);
        if (sl__config_walk(ctx, &upstream_section, "upstream", kn->next, up) != 0)
            rc = -1;
    }
    return rc;
}
