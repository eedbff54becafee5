/*
 * W3C trace context: the strict `traceparent` parser (version 00, lowercase hex, no all-zero
 * ids, exact length) and sl_trace_begin (continue a valid trace with a span of our own, start
 * one otherwise, once per exchange).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/pipeline.h"

#define TRACE  "4bf92f3577b34da6a3ce929d0e0e4736"
#define PARENT "00f067aa0ba902b7"
#define VALID  "00-" TRACE "-" PARENT "-01"

static bool parse(const char *v)
{
    char t[32], p[16], f[2];
    return sl_traceparent_parse(sl_str_from_cstr(v), t, p, f);
}

static void test_parse_valid(void **state)
{
    (void)state;
    char t[32], p[16], f[2];
    assert_true(sl_traceparent_parse(SL_STR_LIT(VALID), t, p, f));
    assert_memory_equal(t, TRACE, 32);
    assert_memory_equal(p, PARENT, 16);
    assert_memory_equal(f, "01", 2);
    assert_true(parse("00-" TRACE "-" PARENT "-00"));
    assert_true(parse("00-" TRACE "-" PARENT "-ff")); /* unknown flag bits are kept, not judged */
}

static void test_parse_invalid(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "00",
        "00-" TRACE "-" PARENT "-1",                         /* short flags */
        "00-" TRACE "-" PARENT "-01-",                       /* trailing */
        "00-" TRACE "-" PARENT "-01x",                       /* 56 bytes */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" PARENT "-01", /* uppercase trace-id */
        "00-" TRACE "-00F067AA0BA902B7-01",                  /* uppercase parent-id */
        "00-" TRACE "-" PARENT "-0A",                        /* uppercase flags */
        "00-00000000000000000000000000000000-" PARENT "-01", /* zero trace-id */
        "00-" TRACE "-0000000000000000-01",                  /* zero parent-id */
        "01-" TRACE "-" PARENT "-01",                        /* another version */
        "ff-" TRACE "-" PARENT "-01",                        /* the forbidden one */
        "0-0" TRACE "-" PARENT "-01",                        /* separators moved */
        "00_" TRACE "-" PARENT "-01",
        "00-" TRACE "_" PARENT "-01",
        "00-" TRACE "-" PARENT "_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" PARENT "-01", /* not hex */
        "00-" TRACE "-00f067aa0ba902b -01",                  /* a space */
        " 00-" TRACE "-" PARENT "-0",                        /* shifted */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parse(bad[i]))
            fail_msg("accepted %s", bad[i]);
    char t[32] = "x", p[16] = "y", f[2] = "z";
    assert_false(sl_traceparent_parse(SL_STR_LIT("01-" TRACE "-" PARENT "-01"), t, p, f));
    assert_int_equal(t[0], 'x'); /* outputs untouched on failure */
}

static void exchange_with(sl_exchange_t *x, sl_header_t *h, size_t n)
{
    memset(x, 0, sizeof(*x));
    x->req_headers.items = h;
    x->req_headers.len = x->req_headers.cap = n;
}

static void check_well_formed(const sl_trace_t *t)
{
    char out[55], tr[32], pa[16], fl[2];
    sl_trace_format(t, out);
    assert_true(sl_traceparent_parse((sl_str_t){out, 55}, tr, pa, fl));
    assert_memory_equal(pa, t->span_id, 16);
}

static void test_begin_continues_a_valid_trace(void **state)
{
    (void)state;
    sl_header_t h[] = {{SL_STR_LIT("Host"), SL_STR_LIT("a")},
                       {SL_STR_LIT("TraceParent"), SL_STR_LIT("00-" TRACE "-" PARENT "-00")},
                       {SL_STR_LIT("tracestate"), SL_STR_LIT("congo=t61rcWkgMzE")}};
    sl_exchange_t x;
    exchange_with(&x, h, 3);
    sl_trace_begin(&x);
    assert_true(x.trace.started);
    assert_memory_equal(x.trace.trace_id, TRACE, 32);
    assert_memory_equal(x.trace.flags, "00", 2);
    assert_memory_not_equal(x.trace.span_id, PARENT, 16);
    check_well_formed(&x.trace);
    char span[16];
    memcpy(span, x.trace.span_id, 16);
    sl_trace_begin(&x); /* once per exchange */
    assert_memory_equal(x.trace.span_id, span, 16);
}

static void test_begin_starts_a_trace_otherwise(void **state)
{
    (void)state;
    const char *values[] = {"00-4BF92F3577B34DA6A3CE929D0E0E4736-" PARENT "-01",
                            "00-00000000000000000000000000000000-" PARENT "-01", "garbage", NULL};
    char seen[4][32];
    for (size_t i = 0; i < 4; i++) {
        sl_header_t h[] = {{SL_STR_LIT("traceparent"), values[i] ? sl_str_from_cstr(values[i]) : SL_STR_NULL}};
        sl_exchange_t x;
        exchange_with(&x, h, values[i] ? 1 : 0);
        sl_trace_begin(&x);
        assert_true(x.trace.started);
        assert_memory_not_equal(x.trace.trace_id, TRACE, 32);
        assert_memory_equal(x.trace.flags, "01", 2);
        check_well_formed(&x.trace);
        memcpy(seen[i], x.trace.trace_id, 32);
        for (size_t j = 0; j < i; j++)
            assert_memory_not_equal(seen[j], seen[i], 32);
    }
    /* Two traceparent fields: ambiguous, so a new trace. */
    sl_header_t two[] = {{SL_STR_LIT("traceparent"), SL_STR_LIT(VALID)},
                         {SL_STR_LIT("traceparent"), SL_STR_LIT(VALID)}};
    sl_exchange_t x;
    exchange_with(&x, two, 2);
    sl_trace_begin(&x);
    assert_memory_not_equal(x.trace.trace_id, TRACE, 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_begin_continues_a_valid_trace),
        cmocka_unit_test(test_begin_starts_a_trace_otherwise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
