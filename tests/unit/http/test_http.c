/*
 * Unit tests of http/: every cause has a name, status and category; header lists; methods; JSON
 * escaping used by error bodies and the access log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "http/cause.h"
#include "http/exchange.h"
#include "http/method.h"
#include "http/reply.h"

static void test_causes_complete(void **state)
{
    (void)state;
    for (int c = SL_CAUSE_BAD_REQUEST; c < SL_CAUSE__COUNT; c++) {
        const sl_cause_info_t *i = sl_cause_info((enum sl_cause)c);
        assert_non_null(i->name);
        assert_true(strlen(i->name) > 0);
        assert_true(i->status >= 400 && i->status <= 504);
        assert_true(strlen(i->message) > 0);
    }
    assert_string_equal(sl_cause_info(SL_CAUSE_ROUTE_NOT_FOUND)->name, "route_not_found");
    assert_int_equal(sl_cause_info(SL_CAUSE_UPSTREAM_TIMEOUT)->status, 504);
    assert_string_equal(sl_failure_name(sl_cause_info(SL_CAUSE_UPSTREAM_CONNECT_FAILED)->failure), "connectivity");
    assert_string_equal(sl_failure_name(sl_cause_info(SL_CAUSE_RATE_LIMITED)->failure), "rate_limit");
}

static void test_headers(void **state)
{
    (void)state;
    sl_arena_t a;
    sl_arena_init(&a, 512);
    sl_headers_t h = {0};
    for (int i = 0; i < 40; i++)
        sl_headers_add(&a, &h, SL_STR_LIT("X-N"), SL_STR_LIT("v"));
    sl_headers_add(&a, &h, SL_STR_LIT("Host"), SL_STR_LIT("a"));
    assert_int_equal(h.len, 41);
    assert_non_null(sl_headers_find(&h, SL_STR_LIT("host")));
    assert_int_equal(sl_headers_remove(&h, SL_STR_LIT("x-n")), 40);
    assert_int_equal(h.len, 1);
    assert_true(sl_str_eq(h.items[0].value, SL_STR_LIT("a")));
    assert_null(sl_headers_find(&h, SL_STR_LIT("X-N")));
    sl_arena_dispose(&a);
}

static void test_methods(void **state)
{
    (void)state;
    assert_int_equal(sl_method_from_str(SL_STR_LIT("GET")), SL_METHOD_GET);
    assert_int_equal(sl_method_from_str(SL_STR_LIT("get")), SL_METHOD_OTHER); /* case-sensitive */
    assert_int_equal(sl_method_from_str(SL_STR_LIT("OPTIONS")), SL_METHOD_OPTIONS);
    assert_int_equal(sl_method_from_str(SL_STR_LIT("PROPFIND")), SL_METHOD_OTHER);
    for (int m = SL_METHOD_GET; m < SL_METHOD__COUNT; m++)
        assert_int_equal(sl_method_from_str(sl_str_from_cstr(sl_method_name((enum sl_method)m))), m);
}

static void test_json_escape(void **state)
{
    (void)state;
    char out[64];
    size_t n = sl_json_escape(out, SL_STR_LIT("a\"b\\c\n\x01"));
    assert_int_equal(n, strlen("a\\\"b\\\\c\\u000a\\u0001"));
    assert_memory_equal(out, "a\\\"b\\\\c\\u000a\\u0001", n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_causes_complete),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_json_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
