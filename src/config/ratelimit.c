/*
 * Key tables for rate limits (docs/ratelimit.md): a route's `rate_limit` list, the top-level
 * `rate_limit` list every route checks first, `rate_limit_headers`, and `stores` (the local
 * limiter's size; `stores.redis` is a row of a later feature). Everything the limiter would
 * otherwise have to guard against at request time (a zero rate, an emission interval below a
 * nanosecond, a burst window the table cannot represent) is rejected here, with a position.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "config/internal.h"

/* A burst window longer than this is a typo (and would not fit the limiter's clock word). */
#define BURST_WINDOW_MAX_MS (366ull * 24 * 60 * 60 * 1000)
/* One request per nanosecond: the limiter's clock cannot express a finer emission interval. */
#define RATE_PER_SECOND_MAX 1000000000ull

static const char key_forms[] = "consumer, ip, route, header:NAME, or parts joined with '+' like consumer+ip";

static int parse_key(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_rate_limit_conf_t *l = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80], p[80];
    if (s.len == 0) {
        sl__config_error(ctx, v, "key: expected %s, got ''", key_forms);
        return -1;
    }
    size_t i = 0;
    while (i <= s.len) {
        const char *plus = memchr(s.ptr + i, '+', s.len - i);
        size_t end = plus != NULL ? (size_t)(plus - s.ptr) : s.len;
        sl_str_t part = {s.ptr + i, end - i};
        enum sl_rate_key_part kind = 0;
        sl_str_t header = SL_STR_NULL;
        if (sl_str_eq(part, SL_STR_LIT("consumer")))
            kind = SL_RATE_KEY_CONSUMER;
        else if (sl_str_eq(part, SL_STR_LIT("ip")))
            kind = SL_RATE_KEY_IP;
        else if (sl_str_eq(part, SL_STR_LIT("route")))
            kind = SL_RATE_KEY_ROUTE;
        else if (part.len > 7 && memcmp(part.ptr, "header:", 7) == 0) {
            kind = SL_RATE_KEY_HEADER;
            header = sl_arena_str_dup(&ctx->cfg->arena, (sl_str_t){part.ptr + 7, part.len - 7});
            if (!sl__config_is_token(header)) {
                sl__config_error(ctx, v, "key: %s is not a valid header name", sl__config_quote(q, sizeof(q), header));
                return -1;
            }
        }
        if (kind == 0) {
            sl__config_error(ctx, v, "key: unknown part %s in %s (expected %s)", sl__config_quote(p, sizeof(p), part),
                             sl__config_quote(q, sizeof(q), s), key_forms);
            return -1;
        }
        for (size_t j = 0; j < l->nparts; j++)
            if (l->parts[j] == kind && (kind != SL_RATE_KEY_HEADER || sl_str_caseeq(l->headers[j], header))) {
                sl__config_error(ctx, v, "key: %s names %s twice", sl__config_quote(q, sizeof(q), s),
                                 sl__config_quote(p, sizeof(p), part));
                return -1;
            }
        if (l->nparts == SL_RATE_KEY_MAX_PARTS) {
            sl__config_error(ctx, v, "key: %s has more than %d parts", sl__config_quote(q, sizeof(q), s),
                             SL_RATE_KEY_MAX_PARTS);
            return -1;
        }
        l->headers[l->nparts] = header;
        l->parts[l->nparts++] = kind;
        i = end + 1;
    }
    l->key = s;
    return 0;
}

static int parse_rate(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_rate_limit_conf_t *l = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    uint64_t count, period_ms;
    int rc = sl_config_parse_rate(s, &count, &period_ms);
    if (rc != 0) {
        sl__config_error(ctx, v, "rate: expected a rate like 100/s, 1000/m, 50/h or 50000/day, got %s",
                         sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (count == 0) {
        sl__config_error(ctx, v,
                         "rate: %s admits nothing; the rate must be at least 1 per period (to block a route, "
                         "use ip_rules or acl)",
                         sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (count / (period_ms / 1000) > RATE_PER_SECOND_MAX) {
        sl__config_error(ctx, v, "rate: %s is above the limiter's 1000000000/s", sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    l->rate = count;
    l->period_ms = period_ms;
    return 0;
}

static int parse_limit_name(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    if (!sl__config_is_name(*out)) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v),
                         "name: %s is not a valid name (letters, digits, '.', '_', '-'; at most 128)",
                         sl__config_quote(q, sizeof(q), *out));
        *out = SL_STR_NULL;
        return -1;
    }
    return 0;
}

/* The default burst needs the rate, so it is filled after the keys; the window bound too. */
static void limit_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_rate_limit_conf_t *l = base;
    if (!clean || l->rate == 0)
        return;
    const sl__config_node_t *burst = sl__config_node_map_get(map, "burst");
    if (burst == NULL) {
        uint64_t per_second = l->rate * 1000 / l->period_ms;
        l->burst = per_second > 0 ? per_second : 1;
    }
    /* Whole-budget refill time: (burst - 1) emission intervals beyond the one in progress. */
    long double window_ms = (long double)(l->burst - 1) * (long double)l->period_ms / (long double)l->rate;
    if (window_ms > (long double)BURST_WINDOW_MAX_MS) {
        char q[80];
        sl__config_error(ctx, burst != NULL ? burst : map,
                         "burst: %llu at %s takes %.0Lf days to refill; at most 366 (lower burst or raise the rate)",
                         (unsigned long long)l->burst,
                         sl__config_quote(q, sizeof(q), sl__config_node_map_get(map, "rate")->text),
                         window_ms / 86400000.0L);
    }
}

static const sl__config_key_t limit_keys[] = {
    {.name = "key", .type = SL__CT_CUSTOM, .required = true, .parse = parse_key},
    {.name = "rate", .type = SL__CT_CUSTOM, .required = true, .parse = parse_rate},
    {.name = "burst", .type = SL__CT_U64, .offset = offsetof(sl_rate_limit_conf_t, burst), .min = 1, .max = 1000000000},
    {.name = "name", .type = SL__CT_CUSTOM, .offset = offsetof(sl_rate_limit_conf_t, name), .parse = parse_limit_name},
};

static const sl__config_section_t limit_section = {
    .what = "rate limit",
    .keys = limit_keys,
    .nkeys = sizeof(limit_keys) / sizeof(limit_keys[0]),
    .pos_offset = offsetof(sl_rate_limit_conf_t, pos),
    .check = limit_check,
};

static int parse_list(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                      sl_rate_limit_conf_t **out, size_t *nout)
{
    void *items;
    size_t n;
    int rc = sl__config_walk_seq(ctx, &limit_section, k->name, v, sizeof(sl_rate_limit_conf_t), &items, &n);
    sl_rate_limit_conf_t *l = items;
    char q[80];
    /* Names label metrics and 429 details: two limits of one list must not share one. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i && l[i].name.len > 0; j++)
            if (sl_str_eq(l[i].name, l[j].name)) {
                sl__config_error_at(ctx, l[i].pos, "rate_limit: name %s is used twice (first at %u:%u)",
                                    sl__config_quote(q, sizeof(q), l[i].name), l[j].pos.line, l[j].pos.col);
                rc = -1;
                break;
            }
    *out = l;
    *nout = n;
    return rc;
}

/* ---- quota ------------------------------------------------------------------------------- */

static int parse_quota_limit(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_quota_conf_t *quota = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    static const struct {
        const char *unit;
        enum sl_quota_period period;
    } units[] = {{"hour", SL_QUOTA_HOUR},
                 {"h", SL_QUOTA_HOUR},
                 {"day", SL_QUOTA_DAY},
                 {"d", SL_QUOTA_DAY},
                 {"month", SL_QUOTA_MONTH}};
    const char *slash = memchr(s.ptr, '/', s.len);
    char q[80];
    if (slash != NULL && slash > s.ptr) {
        sl_str_t num = {s.ptr, (size_t)(slash - s.ptr)}, unit = {slash + 1, s.len - num.len - 1};
        unsigned long long n;
        bool digits = true;
        for (size_t i = 0; i < num.len; i++)
            digits &= num.ptr[i] >= '0' && num.ptr[i] <= '9';
        for (size_t i = 0; digits && i < sizeof(units) / sizeof(units[0]); i++) {
            if (!sl_str_eq(unit, sl_str_from_cstr(units[i].unit)))
                continue;
            if (!sl_str_to_u64(num, &n) || n == 0 || n > 1000000000000ull) {
                sl__config_error(ctx, v, "limit: %s must allow 1 to 1000000000000 requests per window",
                                 sl__config_quote(q, sizeof(q), s));
                return -1;
            }
            quota->l.rate = n;
            quota->period = units[i].period;
            return 0;
        }
    }
    sl__config_error(ctx, v,
                     "limit: expected requests per calendar window like 1000/hour, 50000/day or 1000000/month, "
                     "got %s",
                     sl__config_quote(q, sizeof(q), s));
    return -1;
}

static int parse_quota_key(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    return parse_key(ctx, k, v, &((sl_quota_conf_t *)field)->l);
}

static int parse_quota_name(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    return parse_limit_name(ctx, k, v, &((sl_quota_conf_t *)field)->l.name);
}

static const sl__config_key_t quota_keys[] = {
    {.name = "key", .type = SL__CT_CUSTOM, .required = true, .parse = parse_quota_key},
    {.name = "limit", .type = SL__CT_CUSTOM, .required = true, .parse = parse_quota_limit},
    {.name = "name", .type = SL__CT_CUSTOM, .parse = parse_quota_name},
};

static const sl__config_section_t quota_section = {
    .what = "quota",
    .keys = quota_keys,
    .nkeys = sizeof(quota_keys) / sizeof(quota_keys[0]),
    .pos_offset = offsetof(sl_quota_conf_t, l.pos),
};

int sl__config_parse_route_quota(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field)
{
    sl_route_conf_t *r = field;
    r->quota.enabled = true;
    return sl__config_walk(ctx, &quota_section, k->name, v, &r->quota);
}

int sl__config_parse_route_rate_limits(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                       void *field)
{
    sl_route_conf_t *r = field;
    return parse_list(ctx, k, v, &r->rate_limits, &r->nrate_limits);
}

int sl__config_parse_global_rate_limits(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                        void *field)
{
    sl_config_t *cfg = field;
    return parse_list(ctx, k, v, &cfg->rate_limits, &cfg->nrate_limits);
}

const char *sl_rate_limit_label(const sl_rate_limit_conf_t *l, size_t index, bool global, char *buf, size_t size)
{
    if (l->name.len > 0)
        snprintf(buf, size, "%.*s", SL_STR_FMT(l->name));
    else
        snprintf(buf, size, global ? "global-%zu" : "%zu", index);
    return buf;
}

const sl__config_enum_t sl__config_rate_limit_headers[] = {
    {"both", SL_RATE_HEADERS_BOTH, false},
    {"ietf", SL_RATE_HEADERS_IETF, false},
    {"legacy", SL_RATE_HEADERS_LEGACY, false},
    {"none", SL_RATE_HEADERS_NONE, false},
    {NULL, 0, false},
};

/* ---- stores ------------------------------------------------------------------------------- */

static const sl__config_key_t local_keys[] = {
    {.name = "max_keys",
     .type = SL__CT_U64,
     .offset = offsetof(sl_config_t, stores.local_max_keys),
     .dflt = "1000000",
     .min = 16,
     .max = 1ull << 32},
};

static const sl__config_section_t local_section = {
    .what = "stores.local",
    .keys = local_keys,
    .nkeys = sizeof(local_keys) / sizeof(local_keys[0]),
    .pos_offset = SL__NO_POS,
};

/* stores.redis: cluster-wide limits (src/store/store.h). The address is checked for form here;
 * a host name is resolved when the gateway starts (an unresolvable one fails the start). */
#define REDIS_PREFIX_MAX 64

static const sl__config_enum_t on_failure_enum[] = {
    {"allow", 1, false},
    {"deny", 2, false},
    {NULL, 0, false},
};

static int parse_redis_address(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field)
{
    sl_str_t *out = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    v = sl__config_node_deref(v);
    char q[80];
    sl_str_t host = s;
    uint16_t port = 6379;
    bool bracketed = false;
    /* "host" alone means port 6379; anything with a ':' (or brackets) must be host:port. */
    if (memchr(s.ptr, ':', s.len) != NULL || (s.len > 0 && s.ptr[0] == '[')) {
        int err = sl__config_split_hostport(s, &host, &port, &bracketed);
        if (err != 0) {
            sl__config_error(ctx, v, "address: %s: %s", sl__config_quote(q, sizeof(q), s),
                             sl__config_hostport_reason(err));
            return -1;
        }
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    if (host.len == 0 || (!sl__config_ip_to_sockaddr(host, port, &ss, &sl) && !sl__config_is_hostname(host))) {
        sl__config_error(ctx, v, "address: expected host:port like 127.0.0.1:6379 or redis.internal:6379, got %s",
                         sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    *out = s;
    return 0;
}

static int parse_redis_prefix(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    bool ok = s.len > 0 && s.len <= REDIS_PREFIX_MAX;
    for (size_t i = 0; ok && i < s.len; i++)
        ok = (unsigned char)s.ptr[i] > 0x20 && (unsigned char)s.ptr[i] < 0x7f;
    if (!ok) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v),
                         "key_prefix: %s must be 1 to %d printable characters without spaces",
                         sl__config_quote(q, sizeof(q), s), REDIS_PREFIX_MAX);
        return -1;
    }
    *out = s;
    return 0;
}

static void redis_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    (void)map;
    (void)clean;
    (void)ctx;
    /* Present (a mapping was read): cluster mode is on. */
    ((sl_redis_store_conf_t *)base)->enabled = true;
}

#define REDIS_OFF(f) offsetof(sl_redis_store_conf_t, f)

static const sl__config_key_t redis_keys[] = {
    {.name = "address",
     .type = SL__CT_CUSTOM,
     .offset = REDIS_OFF(address),
     .required = true,
     .parse = parse_redis_address},
    {.name = "on_failure",
     .type = SL__CT_ENUM,
     .offset = REDIS_OFF(on_failure),
     .dflt = "allow",
     .enums = on_failure_enum},
    {.name = "connect_timeout",
     .type = SL__CT_DURATION,
     .offset = REDIS_OFF(connect_timeout_ms),
     .dflt = "1s",
     .min = 10,
     .max = 60000},
    {.name = "command_timeout",
     .type = SL__CT_DURATION,
     .offset = REDIS_OFF(command_timeout_ms),
     .dflt = "250ms",
     .min = 1,
     .max = 60000},
    {.name = "slice", .type = SL__CT_U32, .offset = REDIS_OFF(slice), .dflt = "0", .min = 0, .max = 1000},
    {.name = "key_prefix",
     .type = SL__CT_CUSTOM,
     .offset = REDIS_OFF(key_prefix),
     .dflt = "sluice:",
     .parse = parse_redis_prefix},
};

static const sl__config_section_t redis_section = {
    .what = "stores.redis",
    .keys = redis_keys,
    .nkeys = sizeof(redis_keys) / sizeof(redis_keys[0]),
    .pos_offset = REDIS_OFF(pos),
    .check = redis_check,
};

static const sl__config_key_t stores_keys[] = {
    {.name = "local", .type = SL__CT_SECTION, .section = &local_section},
    {.name = "redis", .type = SL__CT_SECTION, .offset = offsetof(sl_config_t, stores.redis), .section = &redis_section},
};

const sl__config_section_t sl__config_stores_section = {
    .what = "stores",
    .keys = stores_keys,
    .nkeys = sizeof(stores_keys) / sizeof(stores_keys[0]),
    .pos_offset = SL__NO_POS,
};
