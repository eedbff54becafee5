/*
 * The health checker's state machine: thresholds of consecutive successes and failures, one
 * change reported per crossing, a success resetting the failure run and vice versa.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "upstream/health.h"

static void test_starts_healthy_and_needs_unhealthy_failures(void **state)
{
    (void)state;
    sl_health_counts_t c = {.healthy = true};
    assert_int_equal(sl_health_record(&c, false, 2, 3), SL_HEALTH_SAME);
    assert_int_equal(sl_health_record(&c, false, 2, 3), SL_HEALTH_SAME);
    assert_int_equal(sl_health_record(&c, false, 2, 3), SL_HEALTH_BECAME_UNHEALTHY);
    assert_false(c.healthy);
    assert_int_equal(c.failures, 3);
    assert_int_equal(sl_health_record(&c, false, 2, 3), SL_HEALTH_SAME);
}

static void test_success_resets_failure_run(void **state)
{
    (void)state;
    sl_health_counts_t c = {.healthy = true};
    sl_health_record(&c, false, 2, 2);
    assert_int_equal(sl_health_record(&c, true, 2, 2), SL_HEALTH_SAME);
    assert_int_equal(c.failures, 0);
    assert_int_equal(sl_health_record(&c, false, 2, 2), SL_HEALTH_SAME);
    assert_true(c.healthy);
}

static void test_recovers_after_healthy_successes(void **state)
{
    (void)state;
    sl_health_counts_t c = {.healthy = false};
    assert_int_equal(sl_health_record(&c, true, 2, 1), SL_HEALTH_SAME);
    assert_int_equal(sl_health_record(&c, false, 2, 1), SL_HEALTH_SAME); /* already down */
    assert_int_equal(sl_health_record(&c, true, 2, 1), SL_HEALTH_SAME);
    assert_int_equal(sl_health_record(&c, true, 2, 1), SL_HEALTH_BECAME_HEALTHY);
    assert_true(c.healthy);
    assert_int_equal(sl_health_record(&c, false, 2, 1), SL_HEALTH_BECAME_UNHEALTHY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starts_healthy_and_needs_unhealthy_failures),
        cmocka_unit_test(test_success_resets_failure_run),
        cmocka_unit_test(test_recovers_after_healthy_successes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
