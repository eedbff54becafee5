/*
 * Passive outlier ejection with an injected clock: ejection after exactly N consecutive
 * failures, reset by a success, growing and capped ejection times with decay, the
 * max_ejected_percent cap (also under 4 threads), un-ejection by tick and lazily.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "upstream/outlier.h"

#define MAX_T 16

typedef struct fixture {
    sl_upstream_conf_t conf;
    sl_target_state_t *states;
    sl_outlier_t *o;
    size_t n;
} fixture_t;

static void setup(fixture_t *f, size_t n, uint32_t pct)
{
    memset(f, 0, sizeof(*f));
    f->n = n;
    f->conf.ntargets = n;
    f->conf.health_passive.enabled = true;
    f->conf.health_passive.consecutive_failures = 5;
    f->conf.health_passive.eject_for_ms = 30000;
    f->conf.health_passive.max_ejected_percent = pct;
    f->states = sl_balancer_states_create(n);
    f->o = sl_outlier_create(&f->conf, f->states, n, NULL);
}

static void teardown(fixture_t *f)
{
    sl_outlier_destroy(f->o);
    sl_balancer_states_destroy(f->states);
}

static bool ejected(fixture_t *f, size_t i)
{
    return (atomic_load(&f->states[i].flags) & SL_TARGET_EJECTED) != 0;
}

/* Reports `k` failures; returns the result of the last one. */
static enum sl_outlier_result fail_n(fixture_t *f, size_t i, int k, uint64_t now)
{
    enum sl_outlier_result r = SL_OUTLIER_NONE;
    for (int j = 0; j < k; j++)
        r = sl_outlier_report(f->o, i, true, now);
    return r;
}

static void test_exactly_n(void **state)
{
    fixture_t f;
    setup(&f, 4, 50);
    assert_int_equal(fail_n(&f, 0, 4, 1000), SL_OUTLIER_NONE);
    assert_false(ejected(&f, 0));
    assert_int_equal(sl_outlier_report(f.o, 0, true, 1000), SL_OUTLIER_EJECTED);
    assert_true(ejected(&f, 0));
    assert_int_equal(sl_outlier_ejected_until(f.o, 0), 31000);
    assert_int_equal(sl_outlier_ejected_count(f.o), 1);
    /* Failures while ejected are late ones: no second ejection, no count. */
    assert_int_equal(fail_n(&f, 0, 10, 2000), SL_OUTLIER_NONE);
    assert_int_equal(sl_outlier_ejected_count(f.o), 1);
    assert_false(ejected(&f, 1));
    teardown(&f);
}

static void test_success_resets(void **state)
{
    fixture_t f;
    setup(&f, 4, 50);
    fail_n(&f, 0, 4, 1000);
    assert_int_equal(sl_outlier_report(f.o, 0, false, 1000), SL_OUTLIER_NONE);
    assert_int_equal(fail_n(&f, 0, 4, 1000), SL_OUTLIER_NONE);
    assert_false(ejected(&f, 0));
    assert_int_equal(sl_outlier_report(f.o, 0, true, 1000), SL_OUTLIER_EJECTED);
    teardown(&f);
}

static void test_growth_cap_decay(void **state)
{
    fixture_t f;
    setup(&f, 2, 50);
    uint64_t now = 0;
    /* 30, 60, 120, 240, then the 300 s cap. */
    const uint64_t want[] = {30000, 60000, 120000, 240000, 300000, 300000};
    for (size_t k = 0; k < 6; k++) {
        assert_int_equal(fail_n(&f, 0, 5, now), SL_OUTLIER_EJECTED);
        assert_int_equal(sl_outlier_ejected_until(f.o, 0) - now, want[k]);
        now += want[k];
        assert_int_equal(sl_outlier_tick(f.o, now), 1);
        assert_false(ejected(&f, 0));
        now += 1000;
    }
    /* 10 × eject_for without an ejection: the streak starts over. */
    now += 300000;
    assert_int_equal(fail_n(&f, 0, 5, now), SL_OUTLIER_EJECTED);
    assert_int_equal(sl_outlier_ejected_until(f.o, 0) - now, 30000);
    teardown(&f);
}

static void test_cap(void **state)
{
    fixture_t f;
    /* Floor: 1 target at 50% may not be ejected at all. */
    setup(&f, 1, 50);
    assert_int_equal(sl_outlier_max_ejected(f.o), 0);
    assert_int_equal(fail_n(&f, 0, 5, 0), SL_OUTLIER_CAPPED);
    assert_false(ejected(&f, 0));
    teardown(&f);

    setup(&f, 5, 50);
    assert_int_equal(sl_outlier_max_ejected(f.o), 2);
    assert_int_equal(fail_n(&f, 0, 5, 0), SL_OUTLIER_EJECTED);
    assert_int_equal(fail_n(&f, 1, 5, 0), SL_OUTLIER_EJECTED);
    assert_int_equal(fail_n(&f, 2, 5, 0), SL_OUTLIER_CAPPED);
    assert_false(ejected(&f, 2));
    /* Once a slot frees, the next failure of the over-threshold target ejects it. */
    assert_int_equal(sl_outlier_tick(f.o, 30000), 2);
    assert_int_equal(sl_outlier_report(f.o, 2, true, 30000), SL_OUTLIER_EJECTED);
    teardown(&f);
}

static void test_lazy_unject(void **state)
{
    fixture_t f;
    setup(&f, 4, 50);
    fail_n(&f, 1, 5, 100);
    assert_true(ejected(&f, 1));
    assert_int_equal(sl_outlier_tick(f.o, 30099), 0);
    assert_true(ejected(&f, 1));
    /* No tick: the next report on the expired target clears it. */
    assert_int_equal(sl_outlier_report(f.o, 1, false, 30100), SL_OUTLIER_NONE);
    assert_false(ejected(&f, 1));
    assert_int_equal(sl_outlier_ejected_until(f.o, 1), 0);
    assert_int_equal(sl_outlier_ejected_count(f.o), 0);
    teardown(&f);
}

static void test_disabled(void **state)
{
    fixture_t f;
    setup(&f, 4, 50);
    sl_outlier_destroy(f.o);
    f.conf.health_passive.enabled = false;
    f.o = sl_outlier_create(&f.conf, f.states, 4, NULL);
    assert_int_equal(fail_n(&f, 0, 50, 0), SL_OUTLIER_NONE);
    assert_false(ejected(&f, 0));
    teardown(&f);
}

static void test_reload_keeps_state(void **state)
{
    fixture_t f;
    sl_outlier_target_t rt[4];
    memset(rt, 0, sizeof(rt));
    setup(&f, 4, 50);
    sl_outlier_destroy(f.o);
    f.o = sl_outlier_create(&f.conf, f.states, 4, rt);
    fail_n(&f, 0, 5, 0);
    fail_n(&f, 1, 5, 0);
    sl_outlier_destroy(f.o);
    /* A new generation over the same arrays counts the old ejections against the cap. */
    f.o = sl_outlier_create(&f.conf, f.states, 4, rt);
    assert_int_equal(sl_outlier_ejected_count(f.o), 2);
    assert_int_equal(fail_n(&f, 2, 5, 0), SL_OUTLIER_CAPPED);
    assert_int_equal(sl_outlier_tick(f.o, 30000), 2);
    assert_false(ejected(&f, 0));
    teardown(&f);
}

#define NTHREADS 4
#define ROUNDS   200

typedef struct worker {
    fixture_t *f;
    int id;
    pthread_barrier_t *bar;
    size_t max_seen;
    size_t ejections;
} worker_t;

static void *run_worker(void *arg)
{
    worker_t *w = arg;
    fixture_t *f = w->f;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_wait(w->bar);
        /* Each thread fails its own targets; rounds are far enough apart that ejections expire and
         * the streak decays, so every round can eject up to the cap again. */
        uint64_t now = (uint64_t)r * 1000000;
        for (size_t i = (size_t)w->id; i < f->n; i += NTHREADS) {
            for (int k = 0; k < 5; k++) {
                if (sl_outlier_report(f->o, i, true, now) == SL_OUTLIER_EJECTED)
                    w->ejections++;
                size_t flagged = 0;
                for (size_t j = 0; j < f->n; j++)
                    flagged += (atomic_load(&f->states[j].flags) & SL_TARGET_EJECTED) != 0;
                if (flagged > w->max_seen)
                    w->max_seen = flagged;
            }
        }
        pthread_barrier_wait(w->bar);
        if (w->id == 0)
            sl_outlier_tick(f->o, now + 500000); /* past the 300 s cap */
    }
    return NULL;
}

static void test_cap_concurrent(void **state)
{
    fixture_t f;
    setup(&f, 10, 30);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, NTHREADS);
    worker_t w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker_t){.f = &f, .id = i, .bar = &bar};
        pthread_create(&th[i], NULL, run_worker, &w[i]);
    }
    size_t total = 0, max_seen = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        total += w[i].ejections;
        max_seen = w[i].max_seen > max_seen ? w[i].max_seen : max_seen;
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(sl_outlier_max_ejected(f.o), 3);
    assert_true(max_seen <= 3);
    /* The cap was reached each round, and not exceeded in total either. */
    assert_int_equal(total, 3 * ROUNDS);
    assert_int_equal(sl_outlier_ejected_count(f.o), 0);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exactly_n),          cmocka_unit_test(test_success_resets),
        cmocka_unit_test(test_growth_cap_decay),   cmocka_unit_test(test_cap),
        cmocka_unit_test(test_lazy_unject),        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_reload_keeps_state), cmocka_unit_test(test_cap_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
