/*
 * Circuit breakers with an injected clock: closed below min_requests, opening at the ratio,
 * Retry-After, half-open admitting exactly half_open_requests probes (also concurrently),
 * closing and re-opening (with growth), the sliding window forgetting, and threads reporting
 * while another ticks.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "upstream/breaker.h"

typedef struct fixture {
    sl_upstream_conf_t conf;
    sl_target_state_t *states;
    sl_breaker_t *b;
    size_t n;
} fixture_t;

static void setup(fixture_t *f, size_t n)
{
    memset(f, 0, sizeof(*f));
    f->n = n;
    f->conf.ntargets = n;
    f->conf.circuit_breaker.enabled = true;
    f->conf.circuit_breaker.failure_ratio = 0.5;
    f->conf.circuit_breaker.min_requests = 20;
    f->conf.circuit_breaker.window_ms = 10000;
    f->conf.circuit_breaker.open_for_ms = 30000;
    f->conf.circuit_breaker.half_open_requests = 3;
    f->states = sl_balancer_states_create(n);
    f->b = sl_breaker_create(&f->conf, f->states, n, NULL);
}

static void teardown(fixture_t *f)
{
    sl_breaker_destroy(f->b);
    sl_balancer_states_destroy(f->states);
}

static bool flagged(fixture_t *f, size_t i)
{
    return (atomic_load(&f->states[i].flags) & SL_TARGET_CIRCUIT_OPEN) != 0;
}

static int report_n(fixture_t *f, size_t i, bool failure, int k, uint64_t now)
{
    int opened = 0;
    for (int j = 0; j < k; j++)
        opened += sl_breaker_report(f->b, i, failure, now);
    return opened;
}

/* Opens target i at `now` with 20 failures. */
static void open_it(fixture_t *f, size_t i, uint64_t now)
{
    assert_int_equal(report_n(f, i, true, 20, now), 1);
    assert_int_equal(sl_breaker_state(f->b, i), SL_BREAKER_OPEN);
}

static void test_min_requests(void **state)
{
    fixture_t f;
    setup(&f, 2);
    assert_int_equal(report_n(&f, 0, true, 19, 1000), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    assert_true(sl_breaker_allow(f.b, 0, 1000));
    assert_false(sl_breaker_any_open(f.b));
    assert_int_equal(sl_breaker_report(f.b, 0, true, 1000), 1);
    assert_true(flagged(&f, 0));
    assert_false(flagged(&f, 1));
    teardown(&f);
}

static void test_ratio(void **state)
{
    fixture_t f;
    setup(&f, 1);
    /* 11 ok + 9 failures = 45%: stays closed; the 10th failure makes 10/21 < 50%, the 11th
     * 11/22 = 50% opens. */
    report_n(&f, 0, false, 11, 0);
    assert_int_equal(report_n(&f, 0, true, 9, 0), 0);
    assert_int_equal(report_n(&f, 0, true, 1, 0), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    assert_int_equal(report_n(&f, 0, true, 1, 0), 1);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_OPEN);
    teardown(&f);
}

static void test_retry_after(void **state)
{
    fixture_t f;
    setup(&f, 2);
    open_it(&f, 0, 5000);
    assert_false(sl_breaker_allow(f.b, 0, 5000));
    assert_int_equal(sl_breaker_retry_after_s(f.b, 0, 5000), 30);
    assert_int_equal(sl_breaker_retry_after_s(f.b, 0, 5001), 30); /* rounded up */
    assert_int_equal(sl_breaker_retry_after_s(f.b, 0, 34001), 1);
    assert_int_equal(sl_breaker_retry_after_s(f.b, 1, 5000), 0);
    assert_true(sl_breaker_any_open(f.b));
    assert_int_equal(sl_breaker_min_retry_after_s(f.b, 15000), 20);
    /* Reports while open are late ones and change nothing. */
    assert_int_equal(report_n(&f, 0, false, 100, 6000), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_OPEN);
    teardown(&f);
}

static void test_half_open_close(void **state)
{
    fixture_t f;
    setup(&f, 1);
    open_it(&f, 0, 0);
    assert_false(sl_breaker_allow(f.b, 0, 29999));
    /* allow itself turns it half-open and takes the first probe. */
    assert_true(sl_breaker_allow(f.b, 0, 30000));
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_HALF_OPEN);
    assert_false(flagged(&f, 0));
    assert_true(sl_breaker_allow(f.b, 0, 30000));
    assert_true(sl_breaker_allow(f.b, 0, 30000));
    assert_true(flagged(&f, 0)); /* all probes out: balancers stop picking it */
    assert_false(sl_breaker_allow(f.b, 0, 30000));
    assert_int_equal(sl_breaker_retry_after_s(f.b, 0, 30000), 1);
    assert_int_equal(report_n(&f, 0, false, 2, 30100), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_HALF_OPEN);
    assert_int_equal(report_n(&f, 0, false, 1, 30100), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    assert_false(flagged(&f, 0));
    /* Closed again: it takes a full min_requests of failures to open it anew. */
    assert_int_equal(report_n(&f, 0, true, 19, 30200), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    teardown(&f);
}

static void test_reset_on_close(void **state)
{
    fixture_t f;
    setup(&f, 1);
    f.conf.circuit_breaker.open_for_ms = 1000; /* shorter than the window */
    sl_breaker_destroy(f.b);
    f.b = sl_breaker_create(&f.conf, f.states, 1, NULL);
    open_it(&f, 0, 0);
    sl_breaker_tick(f.b, 1000);
    for (int k = 0; k < 3; k++)
        assert_true(sl_breaker_allow(f.b, 0, 1000));
    report_n(&f, 0, false, 3, 1000);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    /* Without the reset the 20 old failures, still in the window, would re-open at once. */
    assert_int_equal(sl_breaker_report(f.b, 0, true, 1000), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    teardown(&f);
}

static void test_reopen_grows(void **state)
{
    fixture_t f;
    setup(&f, 1);
    open_it(&f, 0, 0);
    uint64_t now = 30000;
    /* Re-opens: 60, 120, 240, then the 300 s cap. */
    const uint32_t want[] = {60, 120, 240, 300, 300};
    for (size_t k = 0; k < 5; k++) {
        sl_breaker_tick(f.b, now);
        assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_HALF_OPEN);
        assert_false(flagged(&f, 0));
        assert_true(sl_breaker_allow(f.b, 0, now));
        assert_int_equal(sl_breaker_report(f.b, 0, true, now), 1);
        assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_OPEN);
        assert_true(flagged(&f, 0));
        assert_int_equal(sl_breaker_retry_after_s(f.b, 0, now), want[k]);
        now += (uint64_t)want[k] * 1000;
    }
    /* Closing resets the growth. */
    sl_breaker_tick(f.b, now);
    report_n(&f, 0, false, 3, now);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    open_it(&f, 0, now);
    assert_int_equal(sl_breaker_retry_after_s(f.b, 0, now), 30);
    teardown(&f);
}

static void test_window_forgets(void **state)
{
    fixture_t f;
    setup(&f, 1);
    assert_int_equal(report_n(&f, 0, true, 19, 0), 0);
    /* 10 s later the 19 failures left the window: 19 more do not open. */
    assert_int_equal(report_n(&f, 0, true, 19, 10000), 0);
    assert_int_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    /* But inside the window they add up: 9 s later, 19 + 1 = 20. */
    assert_int_equal(report_n(&f, 0, true, 1, 19000), 1);
    teardown(&f);
}

#define NPROBERS 8

typedef struct prober {
    fixture_t *f;
    pthread_barrier_t *bar;
    int allowed;
} prober_t;

static void *run_prober(void *arg)
{
    prober_t *p = arg;
    pthread_barrier_wait(p->bar);
    for (int k = 0; k < 100; k++)
        p->allowed += sl_breaker_allow(p->f->b, 0, 40000);
    return NULL;
}

static void test_half_open_concurrent(void **state)
{
    for (int round = 0; round < 50; round++) {
        fixture_t f;
        setup(&f, 1);
        open_it(&f, 0, 0);
        /* Odd rounds let a racing allow do the open -> half-open step itself. */
        if (round % 2 == 0)
            sl_breaker_tick(f.b, 40000);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, NPROBERS);
        prober_t p[NPROBERS];
        pthread_t th[NPROBERS];
        for (int i = 0; i < NPROBERS; i++) {
            p[i] = (prober_t){.f = &f, .bar = &bar};
            pthread_create(&th[i], NULL, run_prober, &p[i]);
        }
        int allowed = 0;
        for (int i = 0; i < NPROBERS; i++) {
            pthread_join(th[i], NULL);
            allowed += p[i].allowed;
        }
        pthread_barrier_destroy(&bar);
        assert_int_equal(allowed, 3);
        assert_true(flagged(&f, 0));
        teardown(&f);
    }
}

#define NREPORTERS 4
#define NTARGETS   4

typedef struct reporter {
    fixture_t *f;
    int id;
    atomic_uint_fast64_t *clock;
    atomic_bool *stop;
} reporter_t;

static void *run_reporter(void *arg)
{
    reporter_t *r = arg;
    uint64_t rng = (uint64_t)r->id * 7919 + 1;
    for (int k = 0; k < 200000; k++) {
        rng = rng * 6364136223846793005u + 1442695040888963407u;
        size_t i = (size_t)(rng >> 33) % NTARGETS;
        uint64_t now = atomic_load(r->clock);
        /* Target 0 always fails, the others mostly succeed. */
        bool failure = i == 0 || (rng >> 20) % 10 == 0;
        if (sl_breaker_allow(r->f->b, i, now))
            sl_breaker_report(r->f->b, i, failure, now);
    }
    return NULL;
}

static void *run_ticker(void *arg)
{
    reporter_t *r = arg;
    while (!atomic_load(r->stop)) {
        atomic_fetch_add(r->clock, 1000);
        sl_breaker_tick(r->f->b, atomic_load(r->clock));
        (void)sl_breaker_any_open(r->f->b);
    }
    return NULL;
}

static void test_concurrent_tick(void **state)
{
    fixture_t f;
    setup(&f, NTARGETS);
    atomic_uint_fast64_t clock = 0;
    atomic_bool stop = false;
    reporter_t r[NREPORTERS + 1];
    pthread_t th[NREPORTERS + 1];
    for (int i = 0; i <= NREPORTERS; i++) {
        r[i] = (reporter_t){.f = &f, .id = i, .clock = &clock, .stop = &stop};
        pthread_create(&th[i], NULL, i == NREPORTERS ? run_ticker : run_reporter, &r[i]);
    }
    for (int i = 0; i < NREPORTERS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&stop, true);
    pthread_join(th[NREPORTERS], NULL);
    /* Whatever the interleaving, each flag must agree with its target's state. */
    for (size_t i = 0; i < NTARGETS; i++) {
        int st = sl_breaker_state(f.b, i);
        if (st == SL_BREAKER_OPEN)
            assert_true(flagged(&f, i));
        if (st == SL_BREAKER_CLOSED)
            assert_false(flagged(&f, i));
    }
    /* The always-failing target can never close (its probes fail). */
    assert_int_not_equal(sl_breaker_state(f.b, 0), SL_BREAKER_CLOSED);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_min_requests),    cmocka_unit_test(test_ratio),
        cmocka_unit_test(test_retry_after),     cmocka_unit_test(test_half_open_close),
        cmocka_unit_test(test_reset_on_close),  cmocka_unit_test(test_reopen_grows),
        cmocka_unit_test(test_window_forgets),  cmocka_unit_test(test_half_open_concurrent),
        cmocka_unit_test(test_concurrent_tick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
