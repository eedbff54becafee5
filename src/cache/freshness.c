/*
 * RFC 9111 arithmetic: Cache-Control directives, HTTP-dates, whether a response may be stored,
 * its freshness lifetime and its current age. Pure functions of header lists and clocks, so the
 * unit tests (tests/unit/cache/) pin every rule without a socket; the proxy applies them.
 */
#include <string.h>
#include <time.h>

#include "cache/cache.h"
#include "common/str.h"

static bool is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* delta-seconds (RFC 9111 §1.2.2): digits only; past 2^31 it is 2^31. */
static bool parse_delta(sl_str_t v, int64_t *out)
{
    if (v.len >= 2 && v.ptr[0] == '"' && v.ptr[v.len - 1] == '"') /* tolerated quoted form, §5.2 */
        v = (sl_str_t){v.ptr + 1, v.len - 2};
    if (v.len == 0)
        return false;
    int64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return false;
        if (n < 2147483648)
            n = n * 10 + (v.ptr[i] - '0');
    }
    *out = n > 2147483648 ? 2147483648 : n;
    return true;
}

void sl_cache_control_parse(sl_str_t value, sl_cache_control_t *cc)
{
    size_t p = 0;
    while (p < value.len) {
        while (p < value.len && (is_ws(value.ptr[p]) || value.ptr[p] == ','))
            p++;
        size_t ns = p;
        while (p < value.len && value.ptr[p] != '=' && value.ptr[p] != ',' && !is_ws(value.ptr[p]))
            p++;
        sl_str_t name = {value.ptr + ns, p - ns};
        while (p < value.len && is_ws(value.ptr[p]))
            p++;
        sl_str_t arg = SL_STR_NULL;
        bool has_arg = false;
        if (p < value.len && value.ptr[p] == '=') {
            has_arg = true;
            p++;
            while (p < value.len && is_ws(value.ptr[p]))
                p++;
            size_t as = p;
            if (p < value.len && value.ptr[p] == '"') {
                p++;
                while (p < value.len && value.ptr[p] != '"')
                    p += value.ptr[p] == '\\' && p + 1 < value.len ? 2 : 1;
                if (p < value.len)
                    p++;
            } else {
                while (p < value.len && value.ptr[p] != ',' && !is_ws(value.ptr[p]))
                    p++;
            }
            arg = (sl_str_t){value.ptr + as, p - as};
        }
        while (p < value.len && value.ptr[p] != ',')
            p++;
        if (name.len == 0)
            continue;
        int64_t n = 0;
        bool ok = has_arg && parse_delta(arg, &n);
        if (sl_str_caseeq(name, SL_STR_LIT("no-store")))
            cc->flags |= SL_CC_NO_STORE;
        else if (sl_str_caseeq(name, SL_STR_LIT("no-cache")))
            cc->flags |= SL_CC_NO_CACHE;
        else if (sl_str_caseeq(name, SL_STR_LIT("private")))
            cc->flags |= SL_CC_PRIVATE;
        else if (sl_str_caseeq(name, SL_STR_LIT("public")))
            cc->flags |= SL_CC_PUBLIC;
        else if (sl_str_caseeq(name, SL_STR_LIT("must-revalidate")))
            cc->flags |= SL_CC_MUST_REVALIDATE;
        else if (sl_str_caseeq(name, SL_STR_LIT("proxy-revalidate")))
            cc->flags |= SL_CC_PROXY_REVALIDATE;
        else if (sl_str_caseeq(name, SL_STR_LIT("only-if-cached")))
            cc->flags |= SL_CC_ONLY_IF_CACHED;
        else if (sl_str_caseeq(name, SL_STR_LIT("max-age"))) {
            /* RFC 9111 §4.2.1: an invalid value means stale; of several, the smallest wins. */
            int64_t v = ok ? n : 0;
            if (!(cc->flags & SL_CC_MAX_AGE) || v < cc->max_age)
                cc->max_age = v;
            cc->flags |= SL_CC_MAX_AGE;
        } else if (sl_str_caseeq(name, SL_STR_LIT("s-maxage"))) {
            int64_t v = ok ? n : 0;
            if (!(cc->flags & SL_CC_S_MAXAGE) || v < cc->s_maxage)
                cc->s_maxage = v;
            cc->flags |= SL_CC_S_MAXAGE;
        } else if (sl_str_caseeq(name, SL_STR_LIT("stale-if-error"))) {
            if (ok) {
                cc->stale_if_error = n;
                cc->flags |= SL_CC_STALE_IF_ERROR;
            }
        } else if (sl_str_caseeq(name, SL_STR_LIT("stale-while-revalidate"))) {
            if (ok) {
                cc->stale_while_revalidate = n;
                cc->flags |= SL_CC_STALE_WHILE_REVALIDATE;
            }
        }
    }
}

void sl_cache_control_of(const sl_headers_t *h, sl_cache_control_t *cc)
{
    bool any = false;
    for (size_t i = 0; i < h->len; i++)
        if (sl_str_caseeq(h->items[i].name, SL_STR_LIT("Cache-Control"))) {
            sl_cache_control_parse(h->items[i].value, cc);
            any = true;
        }
    if (any)
        return;
    for (size_t i = 0; i < h->len; i++)
        if (sl_str_caseeq(h->items[i].name, SL_STR_LIT("Pragma"))) {
            sl_cache_control_t p = {0};
            sl_cache_control_parse(h->items[i].value, &p);
            cc->flags |= p.flags & SL_CC_NO_CACHE;
        }
}

/* ---- HTTP-date ----------------------------------------------------------------------------- */

static int month_of(const char *s)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (int i = 0; i < 12; i++)
        if (memcmp(s, months + 3 * i, 3) == 0)
            return i;
    return -1;
}

static bool digits(const char *s, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static bool hms(const char *s, int *h, int *m, int *sec)
{
    return s[2] == ':' && s[5] == ':' && digits(s, 2, h) && digits(s + 3, 2, m) && digits(s + 6, 2, sec) && *h < 24 &&
           *m < 60 && *sec < 61;
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm): no timegm, no TZ. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

bool sl_http_date_parse(sl_str_t s, int64_t *out)
{
    char b[40];
    if (s.len < 24 || s.len >= sizeof(b))
        return false;
    memcpy(b, s.ptr, s.len);
    b[s.len] = 0;
    int day, mon, year, h, m, sec;
    const char *comma = memchr(b, ',', s.len);
    if (comma != NULL && comma - b == 3 && s.len == 29) {
        /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
        if (b[4] != ' ' || b[7] != ' ' || b[11] != ' ' || b[16] != ' ' || memcmp(b + 26, "GMT", 3) != 0 ||
            !digits(b + 5, 2, &day) || (mon = month_of(b + 8)) < 0 || !digits(b + 12, 4, &year) ||
            !hms(b + 17, &h, &m, &sec))
            return false;
    } else if (comma != NULL) {
        /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (two-digit years: RFC 9110 §5.6.7, 50-year rule
         * simplified to 19xx for 50..99 and 20xx below) */
        const char *d = comma + 2;
        if (comma[1] != ' ' || (size_t)(d - b) + 22 != s.len || d[2] != '-' || d[6] != '-' || d[9] != ' ' ||
            memcmp(d + 19, "GMT", 3) != 0 || !digits(d, 2, &day) || (mon = month_of(d + 3)) < 0 ||
            !digits(d + 7, 2, &year) || !hms(d + 10, &h, &m, &sec))
            return false;
        year += year < 50 ? 2000 : 1900;
    } else if (s.len == 24) {
        /* asctime: Sun Nov  6 08:49:37 1994 */
        if (b[3] != ' ' || b[7] != ' ' || b[10] != ' ' || b[19] != ' ' || (mon = month_of(b + 4)) < 0 ||
            !hms(b + 11, &h, &m, &sec) || !digits(b + 20, 4, &year))
            return false;
        if (b[8] == ' ') {
            if (!digits(b + 9, 1, &day))
                return false;
        } else if (!digits(b + 8, 2, &day))
            return false;
    } else {
        return false;
    }
    if (day < 1 || day > 31)
        return false;
    *out = days_from_civil(year, mon + 1, day) * 86400 + h * 3600 + m * 60 + sec;
    return true;
}

/* ---- storing and freshness ------------------------------------------------------------------ */

/* RFC 9110 §15.1: statuses cacheable by default (heuristically); the route's ttl applies to
 * these only. Others need explicit freshness. */
static bool default_cacheable(int status)
{
    switch (status) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501:
        return true;
    default:
        return false;
    }
}

enum sl_cache_verdict sl_cache_response_analyze(const sl_cache_conf_t *conf, int status, const sl_headers_t *resp,
                                                bool req_has_auth, int64_t request_time, int64_t response_time,
                                                sl_cache_meta_t *out)
{
    sl_cache_control_t cc = {0};
    sl_cache_control_of(resp, &cc);
    sl_cache_meta_t m = {0};
    m.status = status;
    m.request_time = request_time;
    m.response_time = response_time;
    m.date_value = response_time;
    const sl_header_t *h = sl_headers_find(resp, SL_STR_LIT("Date"));
    if (h != NULL)
        sl_http_date_parse(h->value, &m.date_value);
    h = sl_headers_find(resp, SL_STR_LIT("Age"));
    if (h != NULL && !parse_delta(h->value, &m.age_value))
        m.age_value = 0;
    m.has_validator =
        sl_headers_find(resp, SL_STR_LIT("ETag")) != NULL || sl_headers_find(resp, SL_STR_LIT("Last-Modified")) != NULL;
    m.no_cache = (cc.flags & SL_CC_NO_CACHE) != 0;
    /* §4.2.4 / §5.2.2.8: s-maxage brings proxy-revalidate's meaning with it. */
    m.no_stale = (cc.flags & (SL_CC_MUST_REVALIDATE | SL_CC_PROXY_REVALIDATE | SL_CC_S_MAXAGE)) != 0;
    /* §3.5: a response to a request with Authorization is shared only when it says so. */
    m.auth_ok = (cc.flags & (SL_CC_PUBLIC | SL_CC_S_MAXAGE | SL_CC_MUST_REVALIDATE)) != 0;

    bool explicit_fresh = true;
    const sl_header_t *expires = sl_headers_find(resp, SL_STR_LIT("Expires"));
    if (cc.flags & SL_CC_S_MAXAGE) {
        m.lifetime = cc.s_maxage;
    } else if (cc.flags & SL_CC_MAX_AGE) {
        m.lifetime = cc.max_age;
    } else if (expires != NULL) {
        int64_t e;
        /* §5.3: an invalid Expires (e.g. "0") means already expired. */
        m.lifetime = sl_http_date_parse(expires->value, &e) && e > m.date_value ? e - m.date_value : 0;
    } else {
        explicit_fresh = false;
        m.lifetime = default_cacheable(status) ? (int64_t)(conf->ttl_ms / 1000) : 0;
    }
    if (m.no_cache)
        m.lifetime = 0;
    m.stale_if_error =
        (cc.flags & SL_CC_STALE_IF_ERROR) ? cc.stale_if_error : (int64_t)(conf->stale_if_error_ms / 1000);
    m.stale_while_revalidate = (cc.flags & SL_CC_STALE_WHILE_REVALIDATE)
                                   ? cc.stale_while_revalidate
                                   : (int64_t)(conf->stale_while_revalidate_ms / 1000);
    if (m.no_stale)
        m.stale_if_error = m.stale_while_revalidate = 0;
    *out = m;

    /* §3: a final status this cache understands; 206 and 304 are never stored as entries. */
    if (status < 200 || status == 206 || status == 304 || (!default_cacheable(status) && !explicit_fresh))
        return SL_CACHE_NO_STATUS;
    if (cc.flags & SL_CC_NO_STORE)
        return SL_CACHE_NO_STORE;
    if (cc.flags & SL_CC_PRIVATE)
        return SL_CACHE_NO_PRIVATE;
    if (req_has_auth && !m.auth_ok)
        return SL_CACHE_NO_AUTH;
    if (sl_headers_find(resp, SL_STR_LIT("Set-Cookie")) != NULL)
        return SL_CACHE_NO_COOKIE;
    for (size_t i = 0; i < resp->len; i++)
        if (sl_str_caseeq(resp->items[i].name, SL_STR_LIT("Vary")) &&
            memchr(resp->items[i].value.ptr, '*', resp->items[i].value.len) != NULL)
            return SL_CACHE_NO_VARY_STAR;
    if (m.lifetime <= 0 && !m.has_validator && m.stale_if_error <= 0)
        return SL_CACHE_NO_FRESHNESS;
    return SL_CACHE_STORE;
}

int64_t sl_cache_current_age(const sl_cache_meta_t *m, int64_t now)
{
    int64_t apparent = m->response_time - m->date_value;
    if (apparent < 0)
        apparent = 0;
    int64_t delay = m->response_time - m->request_time;
    if (delay < 0)
        delay = 0;
    int64_t corrected_age = m->age_value + delay;
    int64_t initial = apparent > corrected_age ? apparent : corrected_age;
    int64_t resident = now - m->response_time;
    if (resident < 0)
        resident = 0;
    return initial + resident;
}
