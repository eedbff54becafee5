/*
 * RFC 9111 arithmetic (src/cache/freshness.c): Cache-Control parsing, HTTP-dates in their three
 * forms, which responses may be stored and for how long (s-maxage > max-age > Expires > the
 * route's ttl), the Authorization rule, the stale-* windows and the current-age formula.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cache/cache.h"

#define NOW 1700000000 /* 2023-11-14T22:13:20Z */

static sl_cache_conf_t conf(uint64_t ttl_ms)
{
    sl_cache_conf_t c = {.enabled = true, .ttl_ms = ttl_ms, .max_object_size = 1 << 20, .max_variants = 8};
    return c;
}

/* Headers from "Name: value" strings, NULL-terminated. */
static sl_headers_t headers(sl_header_t *store, const char *const *lines)
{
    size_t n = 0;
    for (; lines[n] != NULL; n++) {
        const char *colon = strchr(lines[n], ':');
        store[n].name = (sl_str_t){lines[n], (size_t)(colon - lines[n])};
        store[n].value = sl_str_from_cstr(colon + 2);
    }
    return (sl_headers_t){store, n, n};
}

static enum sl_cache_verdict analyze(uint64_t ttl_ms, int status, bool auth, sl_cache_meta_t *m,
                                     const char *const *lines)
{
    sl_header_t store[16];
    sl_headers_t h = headers(store, lines);
    sl_cache_conf_t c = conf(ttl_ms);
    return sl_cache_response_analyze(&c, status, &h, auth, NOW, NOW, m);
}

static void test_cache_control_parse(void **state)
{
    (void)state;
    sl_cache_control_t cc = {0};
    sl_cache_control_parse(SL_STR_LIT("public, max-age=60, S-MAXAGE=\"30\", stale-if-error=5"), &cc);
    assert_true(cc.flags & SL_CC_PUBLIC);
    assert_true(cc.flags & SL_CC_MAX_AGE);
    assert_int_equal(cc.max_age, 60);
    assert_int_equal(cc.s_maxage, 30);
    assert_int_equal(cc.stale_if_error, 5);
    /* several fields add up; the smallest max-age wins; an invalid one means stale */
    sl_cache_control_parse(SL_STR_LIT("max-age=10,no-cache=\"Set-Cookie, X\",private"), &cc);
    assert_int_equal(cc.max_age, 10);
    assert_true(cc.flags & SL_CC_NO_CACHE);
    assert_true(cc.flags & SL_CC_PRIVATE);
    sl_cache_control_t bad = {0};
    sl_cache_control_parse(SL_STR_LIT("max-age=abc, stale-while-revalidate=-1"), &bad);
    assert_true(bad.flags & SL_CC_MAX_AGE);
    assert_int_equal(bad.max_age, 0);
    assert_false(bad.flags & SL_CC_STALE_WHILE_REVALIDATE);
    /* a huge value saturates instead of wrapping */
    sl_cache_control_t big = {0};
    sl_cache_control_parse(SL_STR_LIT("max-age=99999999999999999999"), &big);
    assert_int_equal(big.max_age, 2147483648);
    /* Pragma: no-cache counts only without Cache-Control */
    sl_header_t st[4];
    const char *const l1[] = {"Pragma: no-cache", NULL};
    sl_headers_t h = headers(st, l1);
    sl_cache_control_t p = {0};
    sl_cache_control_of(&h, &p);
    assert_true(p.flags & SL_CC_NO_CACHE);
    const char *const l2[] = {"Pragma: no-cache", "Cache-Control: max-age=5", NULL};
    h = headers(st, l2);
    sl_cache_control_t q = {0};
    sl_cache_control_of(&h, &q);
    assert_false(q.flags & SL_CC_NO_CACHE);
}

static void test_http_dates(void **state)
{
    (void)state;
    int64_t t = 0;
    assert_true(sl_http_date_parse(SL_STR_LIT("Sun, 06 Nov 1994 08:49:37 GMT"), &t));
    assert_int_equal(t, 784111777);
    assert_true(sl_http_date_parse(SL_STR_LIT("Sunday, 06-Nov-94 08:49:37 GMT"), &t));
    assert_int_equal(t, 784111777);
    assert_true(sl_http_date_parse(SL_STR_LIT("Sun Nov  6 08:49:37 1994"), &t));
    assert_int_equal(t, 784111777);
    assert_true(sl_http_date_parse(SL_STR_LIT("Tue, 14 Nov 2023 22:13:20 GMT"), &t));
    assert_int_equal(t, NOW);
    t = 42;
    assert_false(sl_http_date_parse(SL_STR_LIT("0"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun, 06 Nov 1994 08:49:37 PST"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun, 06 Foo 1994 08:49:37 GMT"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun, 06 Nov 1994 28:49:37 GMT"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun, 00 Nov 1994 08:49:37 GMT"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sunday, 06-Nov-94 08:49:37 UTC"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sunday, 06 Nov 94 08:49:37 GMT"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun Nov  x 08:49:37 1994"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun Nov 6 08:49:37 1994"), &t));
    assert_false(sl_http_date_parse(SL_STR_LIT("Sun, 06 Nov 1994 08:49:37 GMT and more"), &t));
    assert_int_equal(t, 42); /* untouched on failure */
}

static void test_lifetime_precedence(void **state)
{
    (void)state;
    sl_cache_meta_t m;
    const char *const a[] = {"Cache-Control: max-age=60, s-maxage=10", NULL};
    assert_int_equal(analyze(0, 200, false, &m, a), SL_CACHE_STORE);
    assert_int_equal(m.lifetime, 10);
    assert_true(m.no_stale); /* s-maxage implies proxy-revalidate */
    const char *const b[] = {"Cache-Control: max-age=60", "Expires: Tue, 14 Nov 2023 23:13:20 GMT", NULL};
    analyze(0, 200, false, &m, b);
    assert_int_equal(m.lifetime, 60);
    const char *const c[] = {"Date: Tue, 14 Nov 2023 22:13:20 GMT", "Expires: Tue, 14 Nov 2023 22:15:20 GMT", NULL};
    assert_int_equal(analyze(0, 200, false, &m, c), SL_CACHE_STORE);
    assert_int_equal(m.lifetime, 120);
    /* an invalid Expires means already expired: nothing to keep without a validator */
    const char *const d[] = {"Expires: 0", NULL};
    assert_int_equal(analyze(0, 200, false, &m, d), SL_CACHE_NO_FRESHNESS);
    assert_int_equal(m.lifetime, 0);
    /* the route's ttl when the origin is silent, for heuristically cacheable statuses only */
    const char *const none[] = {NULL};
    assert_int_equal(analyze(30000, 200, false, &m, none), SL_CACHE_STORE);
    assert_int_equal(m.lifetime, 30);
    assert_int_equal(analyze(30000, 404, false, &m, none), SL_CACHE_STORE);
    assert_int_equal(analyze(30000, 302, false, &m, none), SL_CACHE_NO_STATUS);
    assert_int_equal(analyze(30000, 500, false, &m, none), SL_CACHE_NO_STATUS);
    assert_int_equal(analyze(0, 200, false, &m, none), SL_CACHE_NO_FRESHNESS);
    /* no heuristic freshness from Last-Modified: stored for revalidation only */
    const char *const lm[] = {"Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT", NULL};
    assert_int_equal(analyze(0, 200, false, &m, lm), SL_CACHE_STORE);
    assert_int_equal(m.lifetime, 0);
    assert_true(m.has_validator);
    /* explicit freshness makes other statuses storable; 206 and 304 never are */
    const char *const e[] = {"Cache-Control: max-age=5", NULL};
    assert_int_equal(analyze(0, 302, false, &m, e), SL_CACHE_STORE);
    assert_int_equal(analyze(0, 206, false, &m, e), SL_CACHE_NO_STATUS);
    assert_int_equal(analyze(0, 304, false, &m, e), SL_CACHE_NO_STATUS);
}

static void test_not_storable(void **state)
{
    (void)state;
    sl_cache_meta_t m;
    const char *const ns[] = {"Cache-Control: no-store, max-age=60", NULL};
    assert_int_equal(analyze(60000, 200, false, &m, ns), SL_CACHE_NO_STORE);
    const char *const pv[] = {"Cache-Control: private, max-age=60", NULL};
    assert_int_equal(analyze(60000, 200, false, &m, pv), SL_CACHE_NO_PRIVATE);
    const char *const ck[] = {"Cache-Control: max-age=60", "Set-Cookie: a=1", NULL};
    assert_int_equal(analyze(0, 200, false, &m, ck), SL_CACHE_NO_COOKIE);
    const char *const vs[] = {"Cache-Control: max-age=60", "Vary: Accept, *", NULL};
    assert_int_equal(analyze(0, 200, false, &m, vs), SL_CACHE_NO_VARY_STAR);
    /* no-cache: stored, but always revalidated */
    const char *const nc[] = {"Cache-Control: no-cache, max-age=60", "ETag: \"x\"", NULL};
    assert_int_equal(analyze(0, 200, false, &m, nc), SL_CACHE_STORE);
    assert_true(m.no_cache);
    assert_int_equal(m.lifetime, 0);
}

static void test_authorization_rule(void **state)
{
    (void)state;
    sl_cache_meta_t m;
    const char *const plain[] = {"Cache-Control: max-age=60", NULL};
    assert_int_equal(analyze(0, 200, true, &m, plain), SL_CACHE_NO_AUTH);
    assert_false(m.auth_ok);
    assert_int_equal(analyze(0, 200, false, &m, plain), SL_CACHE_STORE);
    assert_false(m.auth_ok); /* stored, but never served to a request with credentials */
    const char *const pub[] = {"Cache-Control: public, max-age=60", NULL};
    assert_int_equal(analyze(0, 200, true, &m, pub), SL_CACHE_STORE);
    assert_true(m.auth_ok);
    const char *const sm[] = {"Cache-Control: s-maxage=60", NULL};
    assert_int_equal(analyze(0, 200, true, &m, sm), SL_CACHE_STORE);
    const char *const mr[] = {"Cache-Control: max-age=60, must-revalidate", NULL};
    assert_int_equal(analyze(0, 200, true, &m, mr), SL_CACHE_STORE);
    assert_true(m.no_stale);
}

static void test_stale_windows(void **state)
{
    (void)state;
    sl_header_t st[4];
    const char *const l[] = {"Cache-Control: max-age=10, stale-if-error=300", NULL};
    sl_headers_t h = headers(st, l);
    sl_cache_conf_t c = conf(0);
    c.stale_if_error_ms = 60000;
    c.stale_while_revalidate_ms = 5000;
    sl_cache_meta_t m;
    sl_cache_response_analyze(&c, 200, &h, false, NOW, NOW, &m);
    assert_int_equal(m.stale_if_error, 300);       /* the response's own wins */
    assert_int_equal(m.stale_while_revalidate, 5); /* the route's when it says nothing */
    const char *const l2[] = {"Cache-Control: max-age=10, proxy-revalidate, stale-if-error=300", NULL};
    h = headers(st, l2);
    sl_cache_response_analyze(&c, 200, &h, false, NOW, NOW, &m);
    assert_int_equal(m.stale_if_error, 0); /* must not be served stale */
    assert_int_equal(m.stale_while_revalidate, 0);
}

static void test_current_age(void **state)
{
    (void)state;
    /* RFC 9111 §4.2.3 */
    sl_cache_meta_t m = {.request_time = NOW - 2, .response_time = NOW, .date_value = NOW - 5, .age_value = 1};
    /* apparent 5; corrected age 1 + delay 2 = 3; initial max(5, 3) = 5; resident 10 */
    assert_int_equal(sl_cache_current_age(&m, NOW + 10), 15);
    m.date_value = NOW + 100; /* a clock ahead of ours: apparent age is 0, not negative */
    m.age_value = 7;
    assert_int_equal(sl_cache_current_age(&m, NOW), 9);
    /* Age from the origin is counted */
    sl_cache_meta_t a;
    const char *const l[] = {"Cache-Control: max-age=60", "Age: 50", NULL};
    analyze(0, 200, false, &a, l);
    assert_int_equal(a.age_value, 50);
    assert_int_equal(sl_cache_current_age(&a, NOW + 5), 55);
    assert_true(a.lifetime > sl_cache_current_age(&a, NOW + 9));
    assert_false(a.lifetime > sl_cache_current_age(&a, NOW + 10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_control_parse), cmocka_unit_test(test_http_dates),
        cmocka_unit_test(test_lifetime_precedence), cmocka_unit_test(test_not_storable),
        cmocka_unit_test(test_authorization_rule),  cmocka_unit_test(test_stale_windows),
        cmocka_unit_test(test_current_age),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
