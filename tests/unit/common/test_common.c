/*
 * Unit tests of common/: the arena (alignment, reset keeping the first chunk, oversized blocks,
 * cleanup order), strict number parsing, constant-time comparison, and error names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/str.h"
#include "common/time.h"

static void test_arena_alignment_and_reuse(void **state)
{
    (void)state;
    sl_arena_t a;
    sl_arena_init(&a, 1024);
    char *p1 = sl_arena_alloc(&a, 3);
    char *p2 = sl_arena_alloc(&a, 5);
    assert_int_equal((uintptr_t)p1 % 16, 0);
    assert_int_equal((uintptr_t)p2 % 16, 0);
    assert_true(p2 > p1);
    size_t fp = sl_arena_footprint(&a);
    for (int i = 0; i < 100; i++)
        sl_arena_alloc(&a, 100); /* spills into more chunks */
    assert_true(sl_arena_footprint(&a) > fp);
    sl_arena_reset(&a);
    assert_int_equal(sl_arena_footprint(&a), fp); /* only the first chunk is kept */
    char *p3 = sl_arena_alloc(&a, 3);
    assert_ptr_equal(p3, p1); /* a steady request stream reuses the same memory */
    sl_arena_dispose(&a);
    assert_int_equal(sl_arena_footprint(&a), 0);
}

static void test_arena_oversized_keeps_current_chunk(void **state)
{
    (void)state;
    sl_arena_t a;
    sl_arena_init(&a, 1024);
    char *small1 = sl_arena_alloc(&a, 16);
    char *big = sl_arena_alloc(&a, 100000);
    char *small2 = sl_arena_alloc(&a, 16);
    memset(big, 'x', 100000);
    /* the big block has its own chunk; the current chunk's free space is still used */
    assert_ptr_equal(small2, small1 + 16);
    sl_arena_dispose(&a);
}

static int order[4], norder;
static void cleanup(void *data)
{
    order[norder++] = (int)(intptr_t)data;
}

static void test_arena_cleanups_newest_first(void **state)
{
    (void)state;
    sl_arena_t a;
    sl_arena_init(&a, 256);
    norder = 0;
    sl_arena_on_dispose(&a, cleanup, (void *)1);
    sl_arena_on_dispose(&a, cleanup, (void *)2);
    sl_arena_reset(&a);
    assert_int_equal(norder, 2);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 1);
    sl_arena_on_dispose(&a, cleanup, (void *)3);
    sl_arena_dispose(&a);
    assert_int_equal(norder, 3);
    assert_int_equal(order[2], 3);
}

static void test_str_to_u64(void **state)
{
    (void)state;
    unsigned long long v = 7;
    assert_true(sl_str_to_u64(SL_STR_LIT("0"), &v));
    assert_int_equal(v, 0);
    assert_true(sl_str_to_u64(SL_STR_LIT("18446744073709551615"), &v));
    assert_true(v == 18446744073709551615ULL);
    v = 7;
    assert_false(sl_str_to_u64(SL_STR_LIT("18446744073709551616"), &v)); /* overflow */
    assert_false(sl_str_to_u64(SL_STR_LIT(""), &v));
    assert_false(sl_str_to_u64(SL_STR_LIT("+1"), &v));
    assert_false(sl_str_to_u64(SL_STR_LIT("1 "), &v));
    assert_false(sl_str_to_u64(SL_STR_LIT("0x10"), &v));
    assert_int_equal(v, 7); /* untouched on failure */
}

static void test_str_secret_eq(void **state)
{
    (void)state;
    assert_true(sl_str_secret_eq(SL_STR_LIT("s3cret"), SL_STR_LIT("s3cret")));
    assert_false(sl_str_secret_eq(SL_STR_LIT("s3cret"), SL_STR_LIT("s3cre")));
    assert_false(sl_str_secret_eq(SL_STR_LIT("s3cre"), SL_STR_LIT("s3cret")));
    assert_false(sl_str_secret_eq(SL_STR_LIT("s3cret"), SL_STR_LIT("s3creT")));
    assert_true(sl_str_caseeq(SL_STR_LIT("Content-Length"), SL_STR_LIT("content-LENGTH")));
}

static void test_strerror(void **state)
{
    (void)state;
    assert_string_equal(sl_strerror(SL_ETOOBIG), "size limit exceeded");
    assert_string_equal(sl_strerror(-2), "no such file or directory"); /* libuv's text for ENOENT */
    assert_string_equal(sl_strerror(-10999), "unknown error");
}

static void test_time_formats(void **state)
{
    (void)state;
    char buf[64];
    /* 2026-11-26T10:02:11.123Z */
    uint64_t ms = 1795687331123ULL;
    assert_int_equal(sl_time_format_iso8601(buf, sizeof(buf), ms), 24);
    assert_string_equal(buf, "2026-11-26T10:02:11.123Z");
    assert_int_equal(sl_time_format_http(buf, sizeof(buf), ms), 29);
    assert_string_equal(buf, "Thu, 26 Nov 2026 10:02:11 GMT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_alignment_and_reuse),
        cmocka_unit_test(test_arena_oversized_keeps_current_chunk),
        cmocka_unit_test(test_arena_cleanups_newest_first),
        cmocka_unit_test(test_str_to_u64),
        cmocka_unit_test(test_str_secret_eq),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_time_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
