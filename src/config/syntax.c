/*
 * Lexical checks on config values (header tokens, field values, hostnames, names) and the
 * small formatters that make error messages show exactly what the file said. Pure functions:
 * the key tables call them after the walker has found a scalar of the right shape.
 */
#include <stdio.h>
#include <string.h>

#include "config/internal.h"

bool sl__config_is_token(sl_str_t s)
{
    /* RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
     * "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (c == '\0' || strchr(extra, c) == NULL))
            return false;
    }
    return true;
}

bool sl__config_is_field_value(sl_str_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.ptr[i] == '\r' || s.ptr[i] == '\n' || s.ptr[i] == '\0')
            return false;
    return true;
}

bool sl__config_is_hop_by_hop(sl_str_t name)
{
    /* RFC 9110 §7.6.1 connection options plus the framing and Host fields: the gateway writes
     * these itself on each hop, so an edit would either be lost or break framing. */
    static const char *const names[] = {"connection", "keep-alive",       "transfer-encoding", "te",
                                        "upgrade",    "proxy-connection", "content-length",    "host"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (sl_str_caseeq_cstr(name, names[i]))
            return true;
    return false;
}

bool sl__config_is_hostname(sl_str_t s)
{
    if (s.len > 0 && s.ptr[s.len - 1] == '.')
        s.len--;
    if (s.len == 0 || s.len > 253)
        return false;
    size_t label = 0;
    bool all_digits = true;
    for (size_t i = 0; i <= s.len; i++) {
        if (i == s.len || s.ptr[i] == '.') {
            if (label == 0 || label > 63 || s.ptr[i - 1] == '-' || s.ptr[i - label] == '-')
                return false;
            if (i < s.len) {
                label = 0;
                all_digits = true;
            }
            continue;
        }
        char c = s.ptr[i];
        bool digit = c >= '0' && c <= '9';
        /* '_' is not RFC 1123, but container and service-discovery names use it. */
        if (!digit && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && c != '-' && c != '_')
            return false;
        all_digits = all_digits && digit;
        label++;
    }
    /* RFC 3696 §2: a top-level label is never all-numeric, so "1.2.3.999" is a bad IP. */
    return !all_digits;
}

bool sl__config_is_name(sl_str_t s)
{
    if (s.len == 0 || s.len > 128)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && c != '-' && c != '_' &&
            c != '.')
            return false;
    }
    return true;
}

bool sl__config_is_env_name(sl_str_t s)
{
    if (s.len == 0 || (s.ptr[0] >= '0' && s.ptr[0] <= '9'))
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && c != '_')
            return false;
    }
    return true;
}

const char *sl__config_quote(char *buf, size_t size, sl_str_t s)
{
    enum { SHOWN = 48 };
    size_t n = 0;
    if (size < 16) {
        if (size > 0)
            buf[0] = '\0';
        return buf;
    }
    buf[n++] = '\'';
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (i == SHOWN || n + 8 >= size) {
            memcpy(buf + n, "...", 3);
            n += 3;
            break;
        }
        if (c < 0x20 || c == 0x7f) {
            n += (size_t)snprintf(buf + n, size - n, "\\x%02x", c);
        } else {
            buf[n++] = (char)c;
        }
    }
    buf[n++] = '\'';
    buf[n] = '\0';
    return buf;
}

const char *sl__config_describe(char *buf, size_t size, const sl__config_node_t *n)
{
    n = sl__config_node_deref(n);
    if (n == NULL || sl__config_node_is_null(n))
        snprintf(buf, size, "nothing");
    else if (n->kind == SL__CONFIG_NODE_MAP)
        snprintf(buf, size, "a mapping");
    else if (n->kind == SL__CONFIG_NODE_SEQ)
        snprintf(buf, size, "a list");
    else
        sl__config_quote(buf, size, n->text);
    return buf;
}

typedef struct unit_name {
    const char *name;
    uint64_t factor;
} unit_name_t;

static const char *format_units(char *buf, size_t size, uint64_t v, const unit_name_t *units, size_t n)
{
    for (size_t i = n; i > 0; i--)
        if (v != 0 && v % units[i - 1].factor == 0) {
            snprintf(buf, size, "%llu%s", (unsigned long long)(v / units[i - 1].factor), units[i - 1].name);
            return buf;
        }
    snprintf(buf, size, "%llu%s", (unsigned long long)v, units[0].name);
    return buf;
}

const char *sl__config_format_duration(char *buf, size_t size, uint64_t ms)
{
    static const unit_name_t units[] = {
        {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
    };
    return format_units(buf, size, ms, units, sizeof(units) / sizeof(units[0]));
}

const char *sl__config_format_size(char *buf, size_t size, uint64_t bytes)
{
    static const unit_name_t units[] = {
        {"", 1},
        {"kb", 1ull << 10},
        {"mb", 1ull << 20},
        {"gb", 1ull << 30},
    };
    return format_units(buf, size, bytes, units, sizeof(units) / sizeof(units[0]));
}

int sl__config_parse_request_key(sl__config_ctx_t *ctx, const char *key, const sl__config_node_t *v, sl_str_t s,
                                 bool allow_path, enum sl_hash_on *on, sl_str_t *name)
{
    char q[80];
    static const struct {
        const char *prefix;
        enum sl_hash_on on;
        const char *noun;
    } named[] = {{"header:", SL_HASH_ON_HEADER, "header"}, {"cookie:", SL_HASH_ON_COOKIE, "cookie"}};
    if (sl_str_eq(s, SL_STR_LIT("ip"))) {
        *on = SL_HASH_ON_IP;
        return 0;
    }
    if (allow_path && sl_str_eq(s, SL_STR_LIT("path"))) {
        *on = SL_HASH_ON_PATH;
        return 0;
    }
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        sl_str_t prefix = sl_str_from_cstr(named[i].prefix);
        if (!sl_str_has_prefix(s, prefix))
            continue;
        sl_str_t n = {s.ptr + prefix.len, s.len - prefix.len};
        if (n.len == 0) {
            sl__config_error(ctx, v, "%s: %s needs a %s name (%sNAME)", key, sl__config_quote(q, sizeof(q), s),
                             named[i].noun, named[i].prefix);
            return -1;
        }
        if (!sl__config_is_token(n)) {
            sl__config_error(ctx, v, "%s: %s is not a valid %s name", key, sl__config_quote(q, sizeof(q), n),
                             named[i].noun);
            return -1;
        }
        *on = named[i].on;
        *name = n; /* a suffix of the arena copy, so still NUL-terminated */
        return 0;
    }
    if (allow_path)
        sl__config_error(ctx, v, "%s: expected ip, path, header:NAME or cookie:NAME, got %s", key,
                         sl__config_quote(q, sizeof(q), s));
    else
        sl__config_error(ctx, v, "%s: expected ip, header:NAME or cookie:NAME, got %s%s", key,
                         sl__config_quote(q, sizeof(q), s),
                         sl_str_eq(s, SL_STR_LIT("path")) ? " (a split keeps clients, not paths, together)" : "");
    return -1;
}
