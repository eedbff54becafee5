/*
 * Key tables for `upstreams:`, a mapping from name to a group of targets with its balancer,
 * timeouts, keep-alive pool, health checks and circuit breaker. Literal IP targets get their sockaddr here; host names
 * are only syntax-checked and left to the runtime resolver, so a load never blocks on DNS.
 * Each upstream also gets a fingerprint of its YAML subtree, by which a reload recognises an
 * unchanged upstream and keeps its runtime state (src/upstream/proxy.h).
 */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/bug.h"
#include "config/internal.h"
#include "tls/tls.h"

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
    /* `https://host:port` is `host:port` of an upstream with TLS (upstream_check turns it on). */
    if (s.len >= 8 && sl_str_caseeq((sl_str_t){s.ptr, 8}, SL_STR_LIT("https://")))
        s = (sl_str_t){s.ptr + 8, s.len - 8};
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

/* ---- tls (docs/tls.md "Upstream TLS") ------------------------------------------------------- */

/* A file path with its position, for the errors of loading the file at the end of the upstream. */
static int read_tls_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, sl_str_t *out,
                         sl_config_pos_t *pos)
{
    char name[64];
    snprintf(name, sizeof(name), "tls.%s", k->name);
    return sl__config_read_file_path(ctx, name, v, out, pos);
}

static int parse_tls_ca(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    return read_tls_path(ctx, k, v, &up->tls.ca, &up->tls.ca_pos);
}

static int parse_tls_cert(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    return read_tls_path(ctx, k, v, &up->tls.client_cert, &up->tls.cert_pos);
}

static int parse_tls_key(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    return read_tls_path(ctx, k, v, &up->tls.client_key, &up->tls.key_pos);
}

/* SNI carries a DNS name only (RFC 6066 §3); an IP literal is verified without `sni`. */
static int parse_tls_sni(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (sl__config_ip_to_sockaddr(s, 0, &ss, &sslen)) {
        sl__config_error(ctx, v,
                         "tls.sni: %s is an IP address; SNI carries host names only (leave sni out: the "
                         "certificate is then checked for the target's IP address)",
                         sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (!sl__config_is_hostname(s)) {
        sl__config_error(ctx, v, "tls.sni: %s is not a valid host name", sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    up->tls.sni = s;
    return 0;
}

static const sl__config_enum_t upstream_tls_versions[] = {
    {"1.2", SL_TLS_V1_2, false},
    {"1.3", SL_TLS_V1_3, false},
    {NULL, 0, false},
};

/* `tls: true` (defaults) or `tls: false` (off, as if absent). */
static int tls_scalar(sl__config_ctx_t *ctx, const sl__config_node_t *v, void *base)
{
    sl_upstream_conf_t *up = base;
    bool on;
    if (sl__config_read_bool(ctx, "tls", v, &on) != 0)
        return -1;
    up->tls.enabled = on;
    up->tls.pos = v->pos;
    return 0;
}

static void tls_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_upstream_conf_t *up = base;
    up->tls.enabled = true;
    (void)clean;
    bool cert = up->tls.client_cert.len > 0, key = up->tls.client_key.len > 0;
    if (cert && !key)
        sl__config_error(ctx, sl__config_node_map_key(map, "client_cert"),
                         "tls: client_cert needs client_key (the private key of that certificate)");
    if (key && !cert)
        sl__config_error(ctx, sl__config_node_map_key(map, "client_key"),
                         "tls: client_key needs client_cert (the certificate of that key)");
    if (!up->tls.verify && up->tls.ca.len > 0)
        sl__config_error(ctx, sl__config_node_map_key(map, "ca"),
                         "tls: ca is not used with verify: false (remove one of them)");
}

static const sl__config_key_t upstream_tls_keys[] = {
    {.name = "ca", .type = SL__CT_CUSTOM, .parse = parse_tls_ca},
    {.name = "verify", .type = SL__CT_BOOL, .offset = offsetof(sl_upstream_conf_t, tls.verify), .dflt = "true"},
    {.name = "sni", .type = SL__CT_CUSTOM, .parse = parse_tls_sni},
    {.name = "client_cert", .type = SL__CT_CUSTOM, .parse = parse_tls_cert},
    {.name = "client_key", .type = SL__CT_CUSTOM, .parse = parse_tls_key},
    {.name = "min_version",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_upstream_conf_t, tls.min_version),
     .dflt = "1.2",
     .enums = upstream_tls_versions},
};

static const sl__config_section_t upstream_tls_section = {
    .what = "upstream tls",
    .keys = upstream_tls_keys,
    .nkeys = sizeof(upstream_tls_keys) / sizeof(upstream_tls_keys[0]),
    .pos_offset = offsetof(sl_upstream_conf_t, tls.pos),
    .scalar = tls_scalar,
    .check = tls_check,
};

static void release_client_ctx(void *data)
{
    sl_tls_client_ctx_unref(data);
}

/* Loads the upstream's files and builds its client context, so `sluice check` and a reload
 * report a missing, malformed or mismatched file where it is named. */
static void tls_build(sl__config_ctx_t *ctx, sl_upstream_conf_t *up)
{
    char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], msg[512];
    if (up->tls.ca.len)
        sl__config_resolve_path(ctx, up->tls.ca, ca, sizeof(ca));
    if (up->tls.client_cert.len) {
        sl__config_resolve_path(ctx, up->tls.client_cert, cert, sizeof(cert));
        sl__config_resolve_path(ctx, up->tls.client_key, key, sizeof(key));
    }
    sl_tls_client_options_t o = {
        .ca = up->tls.ca.len ? ca : NULL,
        .verify = up->tls.verify,
        .client_cert = up->tls.client_cert.len ? cert : NULL,
        .client_key = up->tls.client_cert.len ? key : NULL,
        .min_version = (enum sl_tls_version)up->tls.min_version,
        .alpn_h2 = up->protocol == SL_UPSTREAM_H2,
    };
    enum sl_tls_client_part part;
    if (sl_tls_client_ctx_create(&o, &up->tls.ctx, &part, msg, sizeof(msg)) != 0) {
        sl_config_pos_t at = part == SL_TLS_CLIENT_PART_CA     ? up->tls.ca_pos
                             : part == SL_TLS_CLIENT_PART_CERT ? up->tls.cert_pos
                             : part == SL_TLS_CLIENT_PART_KEY  ? up->tls.key_pos
                                                               : up->tls.pos;
        sl__config_error_at(ctx, at, "tls: %s", msg);
        up->tls.ctx = NULL;
        return;
    }
    sl_arena_on_dispose(&ctx->cfg->arena, release_client_ctx, up->tls.ctx);
}

/* Targets written `https://host:port` make the upstream a TLS one (with the defaults when it has
 * no `tls`); an upstream is TLS or not as a whole, so such targets cannot sit beside plain ones
 * or `tls: false`. */
static void https_targets(sl__config_ctx_t *ctx, const sl__config_node_t *map, sl_upstream_conf_t *up)
{
    const sl__config_node_t *seq = sl__config_node_map_get(map, "targets");
    if (seq == NULL || seq->kind != SL__CONFIG_NODE_SEQ)
        return;
    const sl__config_node_t *first_https = NULL, *first_plain = NULL;
    for (const sl__config_node_t *item = seq->first; item != NULL; item = item->next) {
        const sl__config_node_t *d = sl__config_node_deref(item);
        const sl__config_node_t *a =
            d != NULL && d->kind == SL__CONFIG_NODE_MAP ? sl__config_node_map_get(d, "address") : NULL;
        if (a == NULL || a->kind != SL__CONFIG_NODE_SCALAR)
            continue;
        bool https = a->text.len >= 8 && sl_str_caseeq((sl_str_t){a->text.ptr, 8}, SL_STR_LIT("https://"));
        if (https && first_https == NULL)
            first_https = a;
        if (!https && first_plain == NULL)
            first_plain = a;
    }
    if (first_https == NULL)
        return;
    if (first_plain != NULL) {
        sl__config_error(ctx, first_plain,
                         "address: upstream %s mixes https:// (at %u:%u) and plain targets; an upstream is TLS "
                         "or not: write every target the same way",
                         up->name.ptr, first_https->pos.line, first_https->pos.col);
        return;
    }
    const sl__config_node_t *tls = sl__config_node_map_get(map, "tls");
    if (tls != NULL && !up->tls.enabled) {
        sl__config_error(ctx, tls, "tls: false contradicts the https:// targets of upstream %s", up->name.ptr);
        return;
    }
    if (!up->tls.enabled) {
        up->tls.enabled = true;
        up->tls.pos = first_https->pos;
    }
}

/* ---- one upstream ------------------------------------------------------------------------- */

static const sl__config_enum_t balances[] = {
    {"round_robin", SL_BALANCE_ROUND_ROBIN, false},
    {"least_conn", SL_BALANCE_LEAST_CONN, false},
    {"hash", SL_BALANCE_HASH, false},
    {"p2c_ewma", SL_BALANCE_P2C_EWMA, false},
    {NULL, 0, false},
};

static const sl__config_enum_t protocols[] = {
    {"http1", SL_UPSTREAM_HTTP1, false},
    {"h2", SL_UPSTREAM_H2, false},
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
    return sl__config_parse_request_key(ctx, "hash_on", v, s, true, &up->hash_on, &up->hash_on_name);
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
    /* Probes are HTTP/1.1 requests, which an h2-only server (gRPC) does not answer: they would
     * mark every target down. Passive health and the circuit breaker see h2 traffic. */
    if (up->protocol == SL_UPSTREAM_H2 && up->health_active.enabled)
        sl__config_error(ctx, sl__config_node_map_key(map, "health"),
                         "health.active is not supported with protocol: h2 (probes speak HTTP/1.1); use "
                         "health.passive and circuit_breaker for upstream %s",
                         sl__config_quote(q, sizeof(q), up->name));
    if (clean)
        https_targets(ctx, map, up);
    if (clean && up->tls.enabled)
        tls_build(ctx, up);
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

/* ---- health checks and circuit breaker ------------------------------------------------------ */

/* The probe path goes verbatim into a request line, so it must be an origin-form target
 * (RFC 9112 §3.2.1): a leading '/', and nothing a request line cannot carry (SP, CTLs). */
static int parse_health_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    if (s.len == 0 || s.ptr[0] != '/') {
        sl__config_error(ctx, v, "path: %s must start with '/'", sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] <= 0x20 || (unsigned char)s.ptr[i] >= 0x7f) {
            sl__config_error(ctx, v, "path: %s has a character not allowed in a request target",
                             sl__config_quote(q, sizeof(q), s));
            return -1;
        }
    up->health_active.path = s;
    return 0;
}

/* The Host header of probes: a header value we can send and a single authority, so no
 * whitespace either (RFC 9110 §7.2). */
static int parse_health_host(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_upstream_conf_t *up = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    bool ok = s.len > 0;
    for (size_t i = 0; ok && i < s.len; i++)
        ok = (unsigned char)s.ptr[i] > 0x20 && (unsigned char)s.ptr[i] < 0x7f;
    if (!ok) {
        sl__config_error(ctx, v, "host: %s is not a valid Host header value", sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    up->health_active.host = s;
    return 0;
}

static bool parse_status_code(sl_str_t s, uint16_t *out)
{
    unsigned long long v;
    for (size_t i = 0; i < s.len; i++)
        if (s.ptr[i] < '0' || s.ptr[i] > '9')
            return false;
    if (s.len == 0 || s.len > 3 || !sl_str_to_u64(s, &v))
        return false;
    *out = (uint16_t)v;
    return true;
}

/* `statuses: 200-399` or `statuses: 200`: the probe succeeds iff the status is in the range. */
static int parse_health_statuses(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field)
{
    sl_upstream_conf_t *up = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    const char *dash = memchr(s.ptr, '-', s.len);
    sl_str_t lo_s = dash != NULL ? (sl_str_t){s.ptr, (size_t)(dash - s.ptr)} : s;
    sl_str_t hi_s = dash != NULL ? (sl_str_t){dash + 1, s.len - (size_t)(dash - s.ptr) - 1} : s;
    uint16_t lo, hi;
    if (!parse_status_code(lo_s, &lo) || !parse_status_code(hi_s, &hi)) {
        sl__config_error(ctx, v, "statuses: expected a status code or a range like 200-399, got %s",
                         sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (lo < 100 || hi > 599 || lo > 599 || hi < 100) {
        sl__config_error(ctx, v, "statuses: %s is out of range (100..599)", sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (lo > hi) {
        sl__config_error(ctx, v, "statuses: %s is an empty range (the first code must not exceed the second)",
                         sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    up->health_active.status_min = lo;
    up->health_active.status_max = hi;
    return 0;
}

/* Presence of `active:` turns probing on, so `active: {}` means "probe with the defaults". A
 * timeout as long as the interval would let probes of one target overlap. */
static void health_active_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_upstream_conf_t *up = base;
    up->health_active.enabled = true;
    if (!clean || up->health_active.timeout_ms < up->health_active.interval_ms)
        return;
    char t[32], i[32];
    const sl__config_node_t *at = sl__config_node_map_get(map, "timeout");
    if (at == NULL)
        at = sl__config_node_map_get(map, "interval");
    sl__config_error(ctx, at != NULL ? at : map, "health.active: timeout (%s) must be shorter than interval (%s)",
                     sl__config_format_duration(t, sizeof(t), up->health_active.timeout_ms),
                     sl__config_format_duration(i, sizeof(i), up->health_active.interval_ms));
}

static const sl__config_key_t health_active_keys[] = {
    {.name = "path", .type = SL__CT_CUSTOM, .dflt = "/", .parse = parse_health_path},
    {.name = "host", .type = SL__CT_CUSTOM, .parse = parse_health_host},
    {.name = "interval",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, health_active.interval_ms),
     .dflt = "5s",
     .min = 100,
     .max = DURATION_MAX},
    {.name = "timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, health_active.timeout_ms),
     .dflt = "1s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "healthy",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, health_active.healthy),
     .dflt = "2",
     .min = 1,
     .max = 100},
    {.name = "unhealthy",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, health_active.unhealthy),
     .dflt = "3",
     .min = 1,
     .max = 100},
    {.name = "statuses", .type = SL__CT_CUSTOM, .dflt = "200-399", .parse = parse_health_statuses},
};

static const sl__config_section_t health_active_section = {
    .what = "health.active",
    .keys = health_active_keys,
    .nkeys = sizeof(health_active_keys) / sizeof(health_active_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = health_active_check,
};

static void health_passive_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    (void)ctx, (void)map, (void)clean;
    ((sl_upstream_conf_t *)base)->health_passive.enabled = true;
}

static const sl__config_key_t health_passive_keys[] = {
    {.name = "consecutive_failures",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, health_passive.consecutive_failures),
     .dflt = "5",
     .min = 1,
     .max = 1000},
    {.name = "eject_for",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, health_passive.eject_for_ms),
     .dflt = "30s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "max_ejected_percent",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, health_passive.max_ejected_percent),
     .dflt = "50",
     .min = 1,
     .max = 100},
};

static const sl__config_section_t health_passive_section = {
    .what = "health.passive",
    .keys = health_passive_keys,
    .nkeys = sizeof(health_passive_keys) / sizeof(health_passive_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = health_passive_check,
};

static const sl__config_key_t health_keys[] = {
    {.name = "active", .type = SL__CT_SECTION, .section = &health_active_section},
    {.name = "passive", .type = SL__CT_SECTION, .section = &health_passive_section},
};

static const sl__config_section_t health_section = {
    .what = "health",
    .keys = health_keys,
    .nkeys = sizeof(health_keys) / sizeof(health_keys[0]),
    .pos_offset = SL__NO_POS,
};

/* A plain decimal, "0.5", ".25", "1", "1.0": no sign, exponent, hex, inf or nan, so what the
 * operator reads is what the breaker uses. At most 9 fraction digits keeps the integer exact. */
static bool parse_decimal(sl_str_t s, double *out)
{
    uint64_t ip = 0, frac = 0, scale = 1;
    size_t i = 0, ndigits = 0;
    for (; i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9'; i++, ndigits++) {
        if (ip > 1000000)
            return false;
        ip = ip * 10 + (uint64_t)(s.ptr[i] - '0');
    }
    if (i < s.len && s.ptr[i] == '.') {
        for (i++; i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9'; i++, ndigits++) {
            if (scale >= 1000000000ull)
                return false;
            frac = frac * 10 + (uint64_t)(s.ptr[i] - '0');
            scale *= 10;
        }
    }
    if (i != s.len || ndigits == 0)
        return false;
    *out = (double)ip + (double)frac / (double)scale;
    return true;
}

static int parse_failure_ratio(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field)
{
    sl_upstream_conf_t *up = field;
    const sl__config_node_t *d = sl__config_node_deref(v);
    char q[80];
    if (d == NULL || d->kind != SL__CONFIG_NODE_SCALAR || sl__config_node_is_null(d)) {
        sl__config_error(ctx, d, "%s: expected a number like 0.5, got %s", k->name,
                         sl__config_describe(q, sizeof(q), d));
        return -1;
    }
    double r;
    if (!parse_decimal(d->text, &r)) {
        sl__config_error(ctx, d, "%s: expected a number like 0.5, got %s", k->name,
                         sl__config_quote(q, sizeof(q), d->text));
        return -1;
    }
    if (!(r > 0.0 && r <= 1.0)) {
        sl__config_error(ctx, d, "%s: %s is out of range (more than 0, at most 1)", k->name,
                         sl__config_quote(q, sizeof(q), d->text));
        return -1;
    }
    up->circuit_breaker.failure_ratio = r;
    return 0;
}

static void circuit_breaker_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    (void)ctx, (void)map, (void)clean;
    ((sl_upstream_conf_t *)base)->circuit_breaker.enabled = true;
}

static const sl__config_key_t circuit_breaker_keys[] = {
    {.name = "failure_ratio", .type = SL__CT_CUSTOM, .dflt = "0.5", .parse = parse_failure_ratio},
    {.name = "min_requests",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, circuit_breaker.min_requests),
     .dflt = "20",
     .min = 1,
     .max = 1000000},
    {.name = "window",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, circuit_breaker.window_ms),
     .dflt = "10s",
     .min = 100,
     .max = DURATION_MAX},
    {.name = "open_for",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, circuit_breaker.open_for_ms),
     .dflt = "30s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "half_open_requests",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, circuit_breaker.half_open_requests),
     .dflt = "3",
     .min = 1,
     .max = 1000},
};

static const sl__config_section_t circuit_breaker_section = {
    .what = "circuit_breaker",
    .keys = circuit_breaker_keys,
    .nkeys = sizeof(circuit_breaker_keys) / sizeof(circuit_breaker_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = circuit_breaker_check,
};

/* ---- retries ------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t bit;
} retry_ons[] = {
    {"connect_failure", SL_RETRY_ON_CONNECT_FAILURE},
    {"reset", SL_RETRY_ON_RESET},
    {"timeout", SL_RETRY_ON_TIMEOUT},
    {"502", SL_RETRY_ON_502},
    {"503", SL_RETRY_ON_503},
    {"504", SL_RETRY_ON_504},
};

static int retry_on_item(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *c, uint32_t *on)
{
    sl_str_t s;
    char q[80];
    if (sl__config_read_str(ctx, k->name, c, &s) != 0)
        return -1;
    for (size_t i = 0; i < sizeof(retry_ons) / sizeof(retry_ons[0]); i++)
        if (sl_str_eq(s, sl_str_from_cstr(retry_ons[i].name))) {
            *on |= retry_ons[i].bit;
            return 0;
        }
    sl__config_error(ctx, sl__config_node_deref(c),
                     "on: unknown retry condition %s (known: connect_failure, reset, timeout, 502, 503, 504)",
                     sl__config_quote(q, sizeof(q), s));
    return -1;
}

/* `on: [connect_failure, 503]`, or one condition without brackets (also how the default comes). */
static int parse_retry_on(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    uint32_t on = 0;
    v = sl__config_node_deref(v);
    if (v != NULL && v->kind == SL__CONFIG_NODE_SCALAR) {
        if (retry_on_item(ctx, k, v, &on) != 0)
            return -1;
    } else {
        if (sl__config_expect_seq(ctx, k->name, v) != 0)
            return -1;
        int rc = 0;
        for (const sl__config_node_t *c = v->first; c != NULL; c = c->next)
            if (retry_on_item(ctx, k, c, &on) != 0)
                rc = -1;
        if (rc != 0)
            return rc;
    }
    ((sl_upstream_conf_t *)field)->retries.on = on;
    return 0;
}

static const sl__config_key_t retries_keys[] = {
    {.name = "attempts",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, retries.attempts),
     .dflt = "2",
     .min = 1,
     .max = 10},
    {.name = "on", .type = SL__CT_CUSTOM, .dflt = "connect_failure", .parse = parse_retry_on},
    {.name = "budget_percent",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, retries.budget_percent),
     .dflt = "20",
     .min = 0,
     .max = 100},
    {.name = "per_try_timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, retries.per_try_timeout_ms),
     .dflt = "0ms",
     .min = 0,
     .max = DURATION_MAX},
    {.name = "backoff",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, retries.backoff_ms),
     .dflt = "25ms",
     .min = 0,
     .max = 10000},
    {.name = "non_idempotent",
     .type = SL__CT_BOOL,
     .offset = offsetof(sl_upstream_conf_t, retries.non_idempotent),
     .dflt = "false"},
};

static const sl__config_section_t retries_section = {
    .what = "retries",
    .keys = retries_keys,
    .nkeys = sizeof(retries_keys) / sizeof(retries_keys[0]),
    .pos_offset = SL__NO_POS,
};

/* ---- limits -------------------------------------------------------------------------------- */

static const sl__config_key_t upstream_limits_keys[] = {
    {.name = "max_connections",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, limits.max_connections),
     .dflt = "0",
     .min = 0,
     .max = 1000000},
    {.name = "max_pending",
     .type = SL__CT_U32,
     .offset = offsetof(sl_upstream_conf_t, limits.max_pending),
     .dflt = "0",
     .min = 0,
     .max = 1000000},
};

static const sl__config_section_t upstream_limits_section = {
    .what = "upstream limits",
    .keys = upstream_limits_keys,
    .nkeys = sizeof(upstream_limits_keys) / sizeof(upstream_limits_keys[0]),
    .pos_offset = SL__NO_POS,
};

static const sl__config_key_t upstream_keys[] = {
    {.name = "targets", .type = SL__CT_CUSTOM, .parse = parse_targets},
    {.name = "balance",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_upstream_conf_t, balance),
     .dflt = "round_robin",
     .enums = balances},
    {.name = "hash_on", .type = SL__CT_CUSTOM, .parse = parse_hash_on},
    {.name = "protocol",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_upstream_conf_t, protocol),
     .dflt = "http1",
     .enums = protocols},
    {.name = "timeouts", .type = SL__CT_SECTION, .section = &upstream_timeouts_section},
    {.name = "keepalive", .type = SL__CT_SECTION, .section = &keepalive_section},
    {.name = "dns_refresh",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_upstream_conf_t, dns_refresh_ms),
     .dflt = "30s",
     .min = 1000,
     .max = DURATION_MAX},
    {.name = "health", .type = SL__CT_SECTION, .section = &health_section},
    {.name = "circuit_breaker", .type = SL__CT_SECTION, .section = &circuit_breaker_section},
    {.name = "retries", .type = SL__CT_SECTION, .section = &retries_section},
    {.name = "limits", .type = SL__CT_SECTION, .section = &upstream_limits_section},
    {.name = "tls", .type = SL__CT_SECTION, .section = &upstream_tls_section},
};

static const sl__config_section_t upstream_section = {
    .what = "upstream",
    .keys = upstream_keys,
    .nkeys = sizeof(upstream_keys) / sizeof(upstream_keys[0]),
    .pos_offset = SL__NO_POS, /* the name's position, set by the caller */
    .check = upstream_check,
};

/* ---- fingerprint --------------------------------------------------------------------------- */

/* splitmix64's finaliser: every input bit moves about half the output bits, so sums and xors
 * of mixed values below do not cancel out in structured ways. */
static uint64_t fp_mix(uint64_t h)
{
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

static uint64_t fp_bytes(uint64_t h, const char *p, size_t n)
{
    /* FNV-1a, then mixed: the length goes in first so "ab"+"c" and "a"+"bc" differ. */
    h ^= n;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    return fp_mix(h);
}

/* Canonical: a mapping is the sum of its pairs' hashes, so key order does not count; a list is
 * ordered (target order is the balancers' order). Quoting does not count either (a document
 * rewritten by the admin API may quote what the file did not), except where it changes the
 * meaning: a plain null (`~`, `null`, nothing) is not the quoted text. Booleans must be plain
 * and numbers read the same quoted or not, so nothing else differs. Aliases are followed: the
 * loader already bounds their expansion (node weight). */
static uint64_t fp_node(const sl__config_node_t *n)
{
    n = sl__config_node_deref(n);
    if (n == NULL || sl__config_node_is_null(n))
        return fp_mix(0x6e756c6cull);
    switch (n->kind) {
    case SL__CONFIG_NODE_SCALAR:
        return fp_bytes(0xcbf29ce484222325ull, n->text.ptr, n->text.len);
    case SL__CONFIG_NODE_SEQ: {
        uint64_t h = fp_mix(0x736571ull ^ n->count);
        for (const sl__config_node_t *c = n->first; c != NULL; c = c->next)
            h = fp_mix(h ^ fp_node(c));
        return h;
    }
    case SL__CONFIG_NODE_MAP: {
        uint64_t sum = 0;
        for (const sl__config_node_t *k = n->first; k != NULL && k->next != NULL; k = k->next->next)
            if (!k->dup)
                sum += fp_mix(fp_node(k) * 0x9e3779b97f4a7c15ull ^ fp_node(k->next));
        return fp_mix(0x6d6170ull ^ sum);
    }
    default:
        return 0;
    }
}

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
        else
            up->fingerprint = fp_node(kn->next); /* only valid trees: their depth is bounded */
    }
    return rc;
}
