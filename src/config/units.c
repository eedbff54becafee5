/*
 * Units of the config language: durations, sizes, rates and numeric socket addresses. They are public
 * because the admin API and the CLI read the same forms. Strict on purpose: a duration without
 * a unit, a sign, a fraction or an overflow is an error, never a guess.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "common/error.h"
#include "config/config.h"
#include "config/internal.h"

typedef struct unit {
    const char *name;
    uint64_t factor;
} unit_t;

/* Durations keep lowercase units only: "M" could be read as months. */
static const unit_t duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000}, {"d", 24 * 60 * 60 * 1000},
};

static const unit_t size_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1ull << 10},
    {"kb", 1ull << 10},
    {"kib", 1ull << 10},
    {"m", 1ull << 20},
    {"mb", 1ull << 20},
    {"mib", 1ull << 20},
    {"g", 1ull << 30},
    {"gb", 1ull << 30},
    {"gib", 1ull << 30},
};

/* Splits the leading digits from the unit; the number is converted only once the unit is known
 * to be valid, so "99999999999999999999xyz" is a syntax error rather than an overflow. */
static int parse_with_units(sl_str_t s, const unit_t *units, size_t nunits, bool nocase, uint64_t *out)
{
    size_t ndigits = 0;
    while (ndigits < s.len && s.ptr[ndigits] >= '0' && s.ptr[ndigits] <= '9')
        ndigits++;
    if (ndigits == 0)
        return SL_EINVALID;
    sl_str_t unit = {s.ptr + ndigits, s.len - ndigits};
    for (size_t i = 0; i < nunits; i++) {
        sl_str_t name = sl_str_from_cstr(units[i].name);
        if (!(nocase ? sl_str_caseeq(unit, name) : sl_str_eq(unit, name)))
            continue;
        unsigned long long v;
        if (!sl_str_to_u64((sl_str_t){s.ptr, ndigits}, &v) || v > UINT64_MAX / units[i].factor)
            return SL_ETOOBIG;
        *out = (uint64_t)v * units[i].factor;
        return 0;
    }
    return SL_EINVALID;
}

int sl_config_parse_duration(sl_str_t s, uint64_t *ms)
{
    return parse_with_units(s, duration_units, sizeof(duration_units) / sizeof(duration_units[0]), false, ms);
}

int sl_config_parse_size(sl_str_t s, uint64_t *bytes)
{
    return parse_with_units(s, size_units, sizeof(size_units) / sizeof(size_units[0]), true, bytes);
}

static const unit_t rate_units[] = {
    {"s", 1000},           {"sec", 1000},      {"second", 1000},      {"m", 60 * 1000},    {"min", 60 * 1000},
    {"minute", 60 * 1000}, {"h", 3600 * 1000}, {"hour", 3600 * 1000}, {"d", 86400 * 1000}, {"day", 86400 * 1000},
};

int sl_config_parse_rate(sl_str_t s, uint64_t *count, uint64_t *period_ms)
{
    const char *slash = memchr(s.ptr, '/', s.len);
    if (slash == NULL || slash == s.ptr)
        return SL_EINVALID;
    sl_str_t num = {s.ptr, (size_t)(slash - s.ptr)}, unit = {slash + 1, s.len - num.len - 1};
    for (size_t i = 0; i < num.len; i++)
        if (num.ptr[i] < '0' || num.ptr[i] > '9')
            return SL_EINVALID;
    for (size_t i = 0; i < sizeof(rate_units) / sizeof(rate_units[0]); i++) {
        if (!sl_str_eq(unit, sl_str_from_cstr(rate_units[i].name)))
            continue;
        unsigned long long v;
        if (!sl_str_to_u64(num, &v) || v > INT64_MAX)
            return SL_ETOOBIG;
        *count = v;
        *period_ms = rate_units[i].factor;
        return 0;
    }
    return SL_EINVALID;
}

int sl__config_split_hostport(sl_str_t s, sl_str_t *host, uint16_t *port, bool *bracketed)
{
    sl_str_t p;
    *bracketed = false;
    if (s.len > 0 && s.ptr[0] == '[') {
        const char *close = memchr(s.ptr, ']', s.len);
        if (close == NULL)
            return SL__HP_BAD_BRACKETS;
        *host = (sl_str_t){s.ptr + 1, (size_t)(close - s.ptr - 1)};
        size_t rest = s.len - (size_t)(close - s.ptr) - 1;
        if (rest == 0)
            return SL__HP_NO_PORT;
        if (close[1] != ':' || host->len == 0)
            return SL__HP_BAD_BRACKETS;
        p = (sl_str_t){close + 2, rest - 1};
        *bracketed = true;
    } else {
        const char *colon = NULL;
        for (size_t i = s.len; i > 0; i--)
            if (s.ptr[i - 1] == ':') {
                colon = s.ptr + i - 1;
                break;
            }
        if (colon == NULL)
            return SL__HP_NO_PORT;
        *host = (sl_str_t){s.ptr, (size_t)(colon - s.ptr)};
        if (memchr(host->ptr, ':', host->len) != NULL)
            return SL__HP_BARE_IPV6;
        if (memchr(host->ptr, ']', host->len) != NULL)
            return SL__HP_BAD_BRACKETS;
        p = (sl_str_t){colon + 1, s.len - (size_t)(colon - s.ptr) - 1};
    }
    unsigned long long v;
    if (!sl_str_to_u64(p, &v) || v == 0 || v > 65535)
        return p.len == 0 ? SL__HP_NO_PORT : SL__HP_BAD_PORT;
    *port = (uint16_t)v;
    return SL__HP_OK;
}

const char *sl__config_hostport_reason(int err)
{
    switch (err) {
    case SL__HP_NO_PORT:
        return "missing port (expected host:port)";
    case SL__HP_BAD_PORT:
        return "the port must be a number from 1 to 65535";
    case SL__HP_BARE_IPV6:
        return "an IPv6 address needs brackets, as in [::1]:8080";
    case SL__HP_BAD_BRACKETS:
        return "unbalanced brackets (expected [IPv6]:port)";
    }
    return "invalid address";
}

bool sl__config_ip_to_sockaddr(sl_str_t host, uint16_t port, struct sockaddr_storage *addr, socklen_t *len)
{
    char buf[INET6_ADDRSTRLEN];
    if (host.len >= sizeof(buf) || memchr(host.ptr, '\0', host.len) != NULL)
        return false;
    memcpy(buf, host.ptr, host.len);
    buf[host.len] = '\0';
    memset(addr, 0, sizeof(*addr));
    struct sockaddr_in *sin = (struct sockaddr_in *)addr;
    if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *len = sizeof(*sin);
        return true;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)addr;
    if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *len = sizeof(*sin6);
        return true;
    }
    memset(addr, 0, sizeof(*addr));
    return false;
}

int sl_config_parse_sockaddr(sl_str_t s, struct sockaddr_storage *addr, socklen_t *len)
{
    sl_str_t host;
    uint16_t port;
    bool bracketed;
    if (sl__config_split_hostport(s, &host, &port, &bracketed) != SL__HP_OK)
        return SL_EINVALID;
    if (host.len == 0 && !bracketed)
        host = SL_STR_LIT("0.0.0.0");
    /* The brackets must hold IPv6 and only IPv6 brackets are allowed, so "[1.2.3.4]:1" fails. */
    if (bracketed != (memchr(host.ptr, ':', host.len) != NULL))
        return SL_EINVALID;
    struct sockaddr_storage tmp;
    socklen_t tmplen;
    if (!sl__config_ip_to_sockaddr(host, port, &tmp, &tmplen))
        return SL_EINVALID;
    *addr = tmp;
    *len = tmplen;
    return 0;
}
