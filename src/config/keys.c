/*
 * The top-level key tables: listeners, admin, workers, limits, timeouts and logging, plus the
 * rows that hand `upstreams` and `routes` to their own files. A key of a later feature is a row
 * of type SL__CT_UNSUPPORTED, so a config using it fails loudly instead of being half-applied.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "config/internal.h"

/* The walker stores enums through an int pointer. */
_Static_assert(sizeof(enum sl_access_log_format) == sizeof(int), "enum fields are read as int");

#define DURATION_MAX (24ull * 60 * 60 * 1000) /* 24h: longer is a typo, not a timeout */

/* ---- addresses ---------------------------------------------------------------------------- */

/* A numeric "IP:port" for something we bind: no name resolution at load time. */
static int read_bind_address(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, sl_str_t *address,
                             struct sockaddr_storage *addr, socklen_t *addrlen)
{
    sl_str_t s;
    if (sl__config_read_str(ctx, name, v, &s) != 0)
        return -1;
    char q[80];
    sl_str_t host;
    uint16_t port;
    bool bracketed;
    int rc = sl__config_split_hostport(s, &host, &port, &bracketed);
    if (rc != SL__HP_OK) {
        sl__config_error(ctx, v, "%s: %s is not a valid address: %s", name, sl__config_quote(q, sizeof(q), s),
                         sl__config_hostport_reason(rc));
        return -1;
    }
    if (sl_config_parse_sockaddr(s, addr, addrlen) != 0) {
        sl__config_error(ctx, v, "%s: %s is not a numeric IP address and port (e.g. 0.0.0.0:8080, [::]:8080, :8080)",
                         name, sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    *address = s;
    return 0;
}

static int parse_listen_address(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field)
{
    sl_listen_conf_t *l = field;
    return read_bind_address(ctx, k->name, v, &l->address, &l->addr, &l->addrlen);
}

static const sl__config_key_t listen_keys[] = {
    {.name = "address", .type = SL__CT_CUSTOM, .required = true, .parse = parse_listen_address},
    {.name = "tls",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_listen_conf_t, tls),
     .parse = sl__config_parse_listen_tls},
    {.name = "http2", .type = SL__CT_BOOL, .offset = offsetof(sl_listen_conf_t, http2), .dflt = "true"},
};

static const sl__config_section_t listen_section = {
    .what = "listen entry",
    .keys = listen_keys,
    .nkeys = sizeof(listen_keys) / sizeof(listen_keys[0]),
    .pos_offset = offsetof(sl_listen_conf_t, pos),
};

static int parse_listens(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_config_t *cfg = field;
    void *items;
    int rc = sl__config_walk_seq(ctx, &listen_section, k->name, v, sizeof(sl_listen_conf_t), &items, &cfg->nlistens);
    cfg->listens = items;
    if (rc == 0 && cfg->nlistens == 0) {
        sl__config_error(ctx, sl__config_node_deref(v), "listen: needs at least one address");
        return -1;
    }
    return rc;
}

/* ---- admin -------------------------------------------------------------------------------- */

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}

static int parse_admin_address(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field)
{
    sl_config_t *cfg = field;
    return read_bind_address(ctx, k->name, v, &cfg->admin.address, &cfg->admin.addr, &cfg->admin.addrlen);
}

static int parse_token_env(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    if (!sl__config_is_env_name(*out)) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v), "%s: %s is not an environment variable name", k->name,
                         sl__config_quote(q, sizeof(q), *out));
        return -1;
    }
    return 0;
}

static void admin_init(void *base)
{
    ((sl_config_t *)base)->admin.enabled = true;
}

static int admin_scalar(sl__config_ctx_t *ctx, const sl__config_node_t *v, void *base)
{
    if (v->plain && sl_str_eq(v->text, SL_STR_LIT("off"))) {
        sl_config_t *cfg = base;
        cfg->admin.enabled = false;
        cfg->admin.address = SL_STR_NULL;
        memset(&cfg->admin.addr, 0, sizeof(cfg->admin.addr));
        cfg->admin.addrlen = 0;
        return 0;
    }
    char got[80];
    sl__config_error(ctx, v, "admin: expected a mapping or off, got %s", sl__config_describe(got, sizeof(got), v));
    return -1;
}

static void admin_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_config_t *cfg = base;
    if (!clean || cfg->admin.token_env.len > 0 || is_loopback(&cfg->admin.addr))
        return;
    const sl__config_node_t *where = sl__config_node_map_get(map, "address");
    char q[80];
    sl__config_error(ctx, where != NULL ? where : map,
                     "admin: address %s is not loopback, so token_env is required (the admin API must not be "
                     "open without a bearer token)",
                     sl__config_quote(q, sizeof(q), cfg->admin.address));
}

static const sl__config_key_t admin_keys[] = {
    {.name = "address", .type = SL__CT_CUSTOM, .dflt = "127.0.0.1:8001", .parse = parse_admin_address},
    {.name = "token_env",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_config_t, admin.token_env),
     .parse = parse_token_env},
};

static const sl__config_section_t admin_section = {
    .what = "admin",
    .keys = admin_keys,
    .nkeys = sizeof(admin_keys) / sizeof(admin_keys[0]),
    .pos_offset = SL__NO_POS,
    .init = admin_init,
    .scalar = admin_scalar,
    .check = admin_check,
};

/* ---- workers, limits, timeouts ------------------------------------------------------------ */

enum { MAX_WORKERS = 256 };

static int parse_workers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    uint32_t *workers = field;
    const sl__config_node_t *d = sl__config_node_deref(v);
    if (d != NULL && d->kind == SL__CONFIG_NODE_SCALAR && sl_str_eq(d->text, SL_STR_LIT("auto"))) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        *workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (uint32_t)n;
        return 0;
    }
    uint64_t n;
    if (d != NULL && d->kind == SL__CONFIG_NODE_SCALAR && d->text.len > 0 && d->text.ptr[0] >= '0' &&
        d->text.ptr[0] <= '9') {
        if (sl__config_read_u64(ctx, k->name, d, 1, MAX_WORKERS, &n) != 0)
            return -1;
        *workers = (uint32_t)n;
        return 0;
    }
    char got[80];
    sl__config_error(ctx, d, "workers: expected auto or an integer from 1 to %d, got %s", MAX_WORKERS,
                     sl__config_describe(got, sizeof(got), d));
    return -1;
}

static void limits_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_config_t *cfg = base;
    if (!clean || cfg->limits.max_uri_bytes <= cfg->limits.max_header_bytes)
        return;
    const sl__config_node_t *where = sl__config_node_map_get(map, "max_uri_bytes");
    char a[32], b[32];
    sl__config_error(ctx, where != NULL ? where : map,
                     "limits: max_uri_bytes (%s) cannot exceed max_header_bytes (%s): the request line is part of "
                     "the header section",
                     sl__config_format_size(a, sizeof(a), cfg->limits.max_uri_bytes),
                     sl__config_format_size(b, sizeof(b), cfg->limits.max_header_bytes));
}

static const sl__config_key_t limits_keys[] = {
    {.name = "max_connections",
     .type = SL__CT_U64,
     .offset = offsetof(sl_config_t, limits.max_connections),
     .dflt = "100000",
     .min = 1,
     .max = 10000000},
    {.name = "max_header_bytes",
     .type = SL__CT_SIZE,
     .offset = offsetof(sl_config_t, limits.max_header_bytes),
     .dflt = "16kb",
     .min = 1024,
     .max = 1 << 20},
    {.name = "max_uri_bytes",
     .type = SL__CT_SIZE,
     .offset = offsetof(sl_config_t, limits.max_uri_bytes),
     .dflt = "8kb",
     .min = 256,
     .max = 1 << 20},
    {.name = "max_body_bytes",
     .type = SL__CT_SIZE,
     .offset = offsetof(sl_config_t, limits.max_body_bytes),
     .dflt = "10mb",
     .min = 0,
     .max = UINT64_MAX},
    {.name = "max_inflight",
     .type = SL__CT_U64,
     .offset = offsetof(sl_config_t, limits.max_inflight),
     .min = 0,
     .max = 100000000},
    {.name = "max_loop_lag",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_config_t, limits.max_loop_lag_ms),
     .min = 0,
     .max = 60000},
    {.name = "cache_memory",
     .type = SL__CT_SIZE,
     .offset = offsetof(sl_config_t, limits.cache_memory),
     .dflt = "64mb",
     .min = 0,
     .max = 1ull << 40},
    {.name = "max_concurrent_streams",
     .type = SL__CT_U32,
     .offset = offsetof(sl_config_t, limits.max_concurrent_streams),
     .dflt = "128",
     .min = 1,
     .max = 100000},
};

static const sl__config_section_t limits_section = {
    .what = "limits",
    .keys = limits_keys,
    .nkeys = sizeof(limits_keys) / sizeof(limits_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = limits_check,
};

static const sl__config_key_t timeouts_keys[] = {
    {.name = "client_header",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_config_t, timeouts.client_header_ms),
     .dflt = "10s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "client_idle",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_config_t, timeouts.client_idle_ms),
     .dflt = "60s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "client_body",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_config_t, timeouts.client_body_ms),
     .dflt = "60s",
     .min = 1,
     .max = DURATION_MAX},
    {.name = "drain",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_config_t, timeouts.drain_ms),
     .dflt = "30s",
     .min = 0,
     .max = DURATION_MAX},
    {.name = "tunnel_idle",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_config_t, timeouts.tunnel_idle_ms),
     .dflt = "1h",
     .min = 1,
     .max = DURATION_MAX},
};

static const sl__config_section_t timeouts_section = {
    .what = "timeouts",
    .keys = timeouts_keys,
    .nkeys = sizeof(timeouts_keys) / sizeof(timeouts_keys[0]),
    .pos_offset = SL__NO_POS,
};

/* ---- logging ------------------------------------------------------------------------------ */

static int parse_access_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *path = field;
    if (sl__config_read_str(ctx, k->name, v, path) != 0)
        return -1;
    if (path->len == 0) {
        sl__config_error(ctx, sl__config_node_deref(v), "path: expected stdout, off or a file path, got ''");
        return -1;
    }
    return 0;
}

static const sl__config_enum_t access_formats[] = {
    {"json", SL_ACCESS_LOG_JSON, false},
    {NULL, 0, false},
};

static const sl__config_key_t access_keys[] = {
    {.name = "path",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_config_t, logging.access_path),
     .dflt = "stdout",
     .parse = parse_access_path},
    {.name = "format",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_config_t, logging.access_format),
     .dflt = "json",
     .enums = access_formats},
};

static const sl__config_section_t access_section = {
    .what = "logging.access",
    .keys = access_keys,
    .nkeys = sizeof(access_keys) / sizeof(access_keys[0]),
    .pos_offset = SL__NO_POS,
};

static const sl__config_enum_t log_levels[] = {
    {"debug", SL_LOG_DEBUG, false},
    {"info", SL_LOG_INFO, false},
    {"warn", SL_LOG_WARN, false},
    {"error", SL_LOG_ERROR, false},
    {NULL, 0, false},
};

static const sl__config_key_t logging_keys[] = {
    {.name = "access", .type = SL__CT_SECTION, .section = &access_section},
    {.name = "level",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_config_t, logging.level),
     .dflt = "info",
     .enums = log_levels},
};

static const sl__config_section_t logging_section = {
    .what = "logging",
    .keys = logging_keys,
    .nkeys = sizeof(logging_keys) / sizeof(logging_keys[0]),
    .pos_offset = SL__NO_POS,
};

/* ---- the top level ------------------------------------------------------------------------ */

static const sl__config_key_t top_keys[] = {
    {.name = "listen", .type = SL__CT_CUSTOM, .required = true, .parse = parse_listens},
    {.name = "admin", .type = SL__CT_SECTION, .section = &admin_section},
    {.name = "workers",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_config_t, workers),
     .dflt = "auto",
     .parse = parse_workers},
    {.name = "limits", .type = SL__CT_SECTION, .section = &limits_section},
    {.name = "timeouts", .type = SL__CT_SECTION, .section = &timeouts_section},
    {.name = "upstreams", .type = SL__CT_CUSTOM, .parse = sl__config_parse_upstreams},
    {.name = "routes", .type = SL__CT_CUSTOM, .parse = sl__config_parse_routes},
    {.name = "logging", .type = SL__CT_SECTION, .section = &logging_section},
    /* `stores.redis` is still a later feature: a row of its own in ratelimit.c. */
    {.name = "stores", .type = SL__CT_SECTION, .section = &sl__config_stores_section},
    {.name = "rate_limit", .type = SL__CT_CUSTOM, .parse = sl__config_parse_global_rate_limits},
    {.name = "consumers", .type = SL__CT_CUSTOM, .parse = sl__config_parse_consumers},
    {.name = "jwt_issuers", .type = SL__CT_CUSTOM, .parse = sl__config_parse_jwt_issuers},
    {.name = "introspection", .type = SL__CT_CUSTOM, .parse = sl__config_parse_introspection},
    {.name = "trusted_proxies", .type = SL__CT_CUSTOM, .parse = sl__config_parse_trusted_proxies},
    {.name = "ip_rules",
     .type = SL__CT_SECTION,
     .offset = offsetof(sl_config_t, ip_rules),
     .section = &sl__config_ip_rules_section},
};

const sl__config_section_t sl__config_top = {
    .what = "the top level",
    .keys = top_keys,
    .nkeys = sizeof(top_keys) / sizeof(top_keys[0]),
    .pos_offset = SL__NO_POS,
    .extension_keys = true,
};
