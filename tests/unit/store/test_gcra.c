/*
 * GCRA: the arithmetic (burst, steady rate, cost > 1, clocks going back, huge gaps, 1/day and
 * 1,000,000/s) and the shared table: 8 threads on one key admit exactly burst + rate x time,
 * many keys, a full bucket (SL_ETOOBIG counted), and slots reused across threads while every
 * key's decisions match a private single-threaded model (no key ever sees another's state).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/error.h"
#include "store/gcra.h"

#define MS  UINT64_C(1000000)
#define SEC UINT64_C(1000000000)

static sl_gcra_params_t params(uint64_t T, uint64_t burst)
{
    return (sl_gcra_params_t){.emission_ns = T, .tolerance_ns = (burst - 1) * T};
}

static void test_burst(void **state)
{
    (void)state;
    sl_gcra_params_t p = params(MS, 5);
    sl_gcra_result_t r;
    uint64_t tat = 0, now = 1000 * MS;
    for (uint64_t i = 0; i < 5; i++) {
        assert_true(sl_gcra_decide(&p, tat, now, 1, &tat, &r));
        assert_int_equal(r.limit, 5);
        assert_int_equal(r.remaining, 4 - i);
        assert_int_equal(r.reset_ns, (i + 1) * MS);
    }
    uint64_t before = tat;
    assert_false(sl_gcra_decide(&p, tat, now, 1, &tat, &r));
    assert_int_equal(tat, before); /* a refusal changes nothing */
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_ns, MS);
    /* Honest retry_after: exactly then, admitted; a nanosecond earlier, not. */
    assert_false(sl_gcra_decide(&p, tat, now + MS - 1, 1, &tat, &r));
    assert_true(sl_gcra_decide(&p, tat, now + MS, 1, &tat, &r));
}

static void test_steady(void **state)
{
    (void)state;
    sl_gcra_params_t p = params(10 * MS, 1); /* 100/s, no burst */
    sl_gcra_result_t r;
    uint64_t tat = 0, admitted = 0;
    /* One attempt per ms for 10 s: exactly 1 + 10 s / 10 ms. */
    for (uint64_t now = SEC; now <= 11 * SEC; now += MS)
        admitted += sl_gcra_decide(&p, tat, now, 1, &tat, &r);
    assert_int_equal(admitted, 1 + 1000);
}

static void test_cost(void **state)
{
    (void)state;
    sl_gcra_params_t p = params(MS, 5);
    sl_gcra_result_t r;
    uint64_t tat = 0, now = SEC;
    assert_true(sl_gcra_decide(&p, tat, now, 3, &tat, &r));
    assert_int_equal(r.remaining, 2);
    assert_false(sl_gcra_decide(&p, tat, now, 3, &tat, &r));
    assert_int_equal(r.remaining, 2);
    assert_int_equal(r.retry_after_ns, MS);
    assert_true(sl_gcra_decide(&p, tat, now, 2, &tat, &r));
    /* More than the whole budget: never, and said so. */
    assert_false(sl_gcra_decide(&p, 0, now, 6, &tat, &r));
    assert_int_equal(r.retry_after_ns, UINT64_MAX);
    assert_false(sl_gcra_decide(&p, 0, now, UINT32_MAX, &tat, &r));
}

static void test_clock_edges(void **state)
{
    (void)state;
    sl_gcra_params_t p = params(MS, 2);
    sl_gcra_result_t r;
    uint64_t tat = 0;
    assert_true(sl_gcra_decide(&p, tat, 100 * MS, 1, &tat, &r));
    assert_true(sl_gcra_decide(&p, tat, 100 * MS, 1, &tat, &r));
    /* An earlier now (another thread's older clock read) is judged against the same TAT: it
     * must not refill anything. */
    assert_false(sl_gcra_decide(&p, tat, 50 * MS, 1, &tat, &r));
    assert_int_equal(r.retry_after_ns, 51 * MS); /* TAT 102 ms, next 103 ms, window 2 ms */
    /* A huge gap: back to the full budget, never more. */
    uint64_t far = UINT64_C(1) << 62;
    assert_true(sl_gcra_decide(&p, tat, far, 1, &tat, &r));
    assert_int_equal(r.remaining, 1);
    assert_true(sl_gcra_decide(&p, tat, far, 1, &tat, &r));
    assert_false(sl_gcra_decide(&p, tat, far, 1, &tat, &r));
    /* At the end of the clock a TAT past 2^63 cannot be stored: refused, no overflow. */
    assert_false(sl_gcra_decide(&p, 0, UINT64_MAX - 10, 1, &tat, &r));
}

static void test_rate_per_day(void **state)
{
    (void)state;
    uint64_t day = 86400 * SEC;
    sl_gcra_params_t p = params(day, 1);
    sl_gcra_result_t r;
    uint64_t tat = 0, now = SEC;
    assert_true(sl_gcra_decide(&p, tat, now, 1, &tat, &r));
    assert_int_equal(r.reset_ns, day);
    assert_false(sl_gcra_decide(&p, tat, now + 3600 * SEC, 1, &tat, &r));
    assert_int_equal(r.retry_after_ns, day - 3600 * SEC);
    assert_true(sl_gcra_decide(&p, tat, now + day, 1, &tat, &r));
}

static void test_rate_million(void **state)
{
    (void)state;
    sl_gcra_params_t p = params(1000, 1000); /* 1,000,000/s, burst 1000 */
    sl_gcra_result_t r;
    uint64_t tat = 0, admitted = 0;
    for (uint64_t now = SEC; now <= SEC + MS; now += 100)
        for (int k = 0; k < 300; k++)
            admitted += sl_gcra_decide(&p, tat, now, 1, &tat, &r);
    assert_int_equal(admitted, 1000 + 1000); /* burst + 1 ms at 1/us */
}

static sl_gcra_key_t key_of(unsigned i)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "k%u", i);
    return sl_gcra_key_digest(SL_STR_LIT("route:0:abc"), (sl_str_t){buf, (size_t)n});
}

static void test_digest(void **state)
{
    (void)state;
    sl_gcra_key_t a = sl_gcra_key_digest(SL_STR_LIT("ab"), SL_STR_LIT("c"));
    sl_gcra_key_t b = sl_gcra_key_digest(SL_STR_LIT("a"), SL_STR_LIT("bc"));
    sl_gcra_key_t c = sl_gcra_key_digest(SL_STR_LIT("ab"), SL_STR_LIT("c"));
    assert_true(a.hi != b.hi || a.lo != b.lo);
    assert_true(a.hi == c.hi && a.lo == c.lo);
    assert_true(a.hi != 0 || a.lo != 0);
}

/* The per-limit prefix gives the digest of the whole, for identities and values of every length
 * around the 8-byte word boundaries (the word-at-a-time and byte paths of the hash meet there);
 * and a value moved across the identity/value boundary never collides. */
static void test_digest_prefixed(void **state)
{
    (void)state;
    char text[41] = "0123456789abcdefghijklmnopqrstuvwxyzABCD";
    for (size_t n = 0; n <= 24; n++)
        for (size_t m = 0; m <= 16; m++) {
            sl_str_t id = {text, n}, value = {text + n, m};
            sl_gcra_key_prefix_t p;
            sl_gcra_key_prefix(id, &p);
            sl_gcra_key_t a = sl_gcra_key_digest(id, value), b = sl_gcra_key_digest_prefixed(&p, value);
            assert_true(a.hi == b.hi && a.lo == b.lo);
            if (n > 0) {
                sl_gcra_key_t c = sl_gcra_key_digest((sl_str_t){text, n - 1}, (sl_str_t){text + n - 1, m + 1});
                assert_true(a.hi != c.hi || a.lo != c.lo);
            }
        }
}

static void test_table_full_and_reuse(void **state)
{
    (void)state;
    sl_gcra_table_t *t;
    assert_int_equal(sl_gcra_table_create(0, &t), SL_EINVALID);
    assert_int_equal(sl_gcra_table_create(1, &t), 0); /* one bucket of 16 */
    sl_gcra_params_t p = params(MS, 1);
    sl_gcra_result_t r;
    uint64_t now = SEC;
    for (unsigned i = 0; i < 16; i++) {
        assert_int_equal(sl_gcra_admit(t, key_of(i), &p, now, 1, &r), 0);
        assert_true(r.allowed);
    }
    assert_int_equal(sl_gcra_table_live(t, now), 16);
    assert_int_equal(sl_gcra_admit(t, key_of(16), &p, now, 1, &r), SL_ETOOBIG);
    assert_int_equal(sl_gcra_table_full_total(t), 1);
    /* Known keys still work when the table is full. */
    assert_int_equal(sl_gcra_admit(t, key_of(3), &p, now, 1, &r), 0);
    assert_false(r.allowed);
    assert_int_equal(sl_gcra_admit(t, key_of(16), &p, now, 0, &r), SL_EINVALID);
    /* Once expired, a slot is free for any key, and the old key starts fresh. */
    now += MS;
    assert_int_equal(sl_gcra_table_live(t, now), 0);
    assert_int_equal(sl_gcra_admit(t, key_of(16), &p, now, 1, &r), 0);
    assert_true(r.allowed);
    assert_int_equal(sl_gcra_admit(t, key_of(16), &p, now, 1, &r), 0);
    assert_false(r.allowed);
    assert_int_equal(sl_gcra_admit(t, key_of(3), &p, now, 1, &r), 0);
    assert_true(r.allowed);
    sl_gcra_table_destroy(t);
}

/* sl_gcra_peek (the admin API's usage read): the figures admit gives, and no change of state. */
static void test_peek(void **state)
{
    (void)state;
    sl_gcra_table_t *t;
    assert_int_equal(sl_gcra_table_create(64, &t), 0);
    sl_gcra_params_t p = params(10 * MS, 5);
    sl_gcra_result_t r, a;
    uint64_t now = SEC;
    /* Unknown key (and a NULL table): a full budget, SL_ENOTFOUND. */
    assert_int_equal(sl_gcra_peek(t, key_of(1), &p, now, &r), SL_ENOTFOUND);
    assert_true(r.allowed);
    assert_int_equal(r.limit, 5);
    assert_int_equal(r.remaining, 5);
    assert_int_equal(r.reset_ns, 0);
    assert_int_equal(sl_gcra_peek(NULL, key_of(1), &p, now, &r), SL_ENOTFOUND);
    assert_int_equal(r.remaining, 5);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sl_gcra_admit(t, key_of(1), &p, now, 1, &a), 0);
    assert_int_equal(sl_gcra_peek(t, key_of(1), &p, now, &r), 0);
    assert_int_equal(r.remaining, a.remaining); /* what the last admit said was left */
    assert_int_equal(r.remaining, 2);
    assert_int_equal(r.reset_ns, a.reset_ns);
    assert_int_equal(r.retry_after_ns, 0);
    /* Peeking changes nothing: two more are admitted, then a refusal whose retry_after the
     * peek announced. */
    assert_int_equal(sl_gcra_peek(t, key_of(1), &p, now, &r), 0);
    assert_int_equal(sl_gcra_admit(t, key_of(1), &p, now, 1, &a), 0);
    assert_int_equal(sl_gcra_admit(t, key_of(1), &p, now, 1, &a), 0);
    assert_true(a.allowed);
    assert_int_equal(sl_gcra_peek(t, key_of(1), &p, now, &r), 0);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(sl_gcra_admit(t, key_of(1), &p, now, 1, &a), 0);
    assert_false(a.allowed);
    assert_int_equal(r.retry_after_ns, a.retry_after_ns);
    /* Earned back over time, and expired entirely after reset_ns. */
    assert_int_equal(sl_gcra_peek(t, key_of(1), &p, now + 10 * MS, &r), 0);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(sl_gcra_peek(t, key_of(1), &p, now + 50 * MS, &r), SL_ENOTFOUND);
    assert_int_equal(r.remaining, 5);
    /* Another key is untouched. */
    assert_int_equal(sl_gcra_peek(t, key_of(2), &p, now, &r), SL_ENOTFOUND);
    sl_gcra_table_destroy(t);
}

static void test_many_keys(void **state)
{
    (void)state;
    sl_gcra_table_t *t;
    assert_int_equal(sl_gcra_table_create(100000, &t), 0);
    sl_gcra_params_t p = params(SEC, 1);
    sl_gcra_result_t r;
    size_t ok = 0, full = 0;
    for (unsigned i = 0; i < 20000; i++) {
        int rc = sl_gcra_admit(t, key_of(i), &p, SEC, 1, &r);
        ok += rc == 0 && r.allowed;
        full += rc == SL_ETOOBIG;
    }
    assert_int_equal(ok + full, 20000);
    assert_int_equal(full, 0); /* 20k keys in 128k slots: no bucket of 16 overflows */
    assert_int_equal(sl_gcra_table_live(t, SEC), ok);
    for (unsigned i = 0; i < 20000; i++) {
        assert_int_equal(sl_gcra_admit(t, key_of(i), &p, SEC, 1, &r), 0);
        assert_false(r.allowed);
    }
    sl_gcra_table_destroy(t);
}

/* ---- threads ------------------------------------------------------------------------------ */

#define NTHREADS 8

typedef struct hammer {
    sl_gcra_table_t *t;
    sl_gcra_params_t p;
    sl_gcra_key_t key;
    uint64_t step, nsteps;
    uint64_t admitted;
} hammer_t;

/* Each thread walks the same simulated clock from 1 s in steps no longer than the tolerance,
 * and at each step asks until refused, so the key is never idle and nothing is lost. */
static void *hammer_main(void *arg)
{
    hammer_t *h = arg;
    sl_gcra_result_t r;
    for (uint64_t s = 0; s <= h->nsteps; s++) {
        uint64_t now = SEC + s * h->step;
        for (;;) {
            assert_int_equal(sl_gcra_admit(h->t, h->key, &h->p, now, 1, &r), 0);
            if (!r.allowed)
                break;
            h->admitted++;
        }
    }
    return NULL;
}

static void test_threads_one_key_exact(void **state)
{
    (void)state;
    sl_gcra_table_t *t;
    assert_int_equal(sl_gcra_table_create(1024, &t), 0);
    uint64_t T = 1000, burst = 50, step = 10 * T, nsteps = 20000; /* 1,000,000/s for 200 ms */
    hammer_t h[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        h[i] = (hammer_t){t, params(T, burst), key_of(7), step, nsteps, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &h[i]), 0);
    }
    uint64_t total = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        total += h[i].admitted;
    }
    uint64_t bound = burst + nsteps * step / T; /* burst + rate x time */
    printf("    8 threads, one key: admitted %llu, bound %llu\n", (unsigned long long)total, (unsigned long long)bound);
    assert_int_equal(total, bound);
    sl_gcra_table_destroy(t);
}

#define REUSE_KEYS_PER_THREAD 4
#define REUSE_PHASES          3000

typedef struct reuse {
    sl_gcra_table_t *t;
    pthread_barrier_t *barrier;
    unsigned id;
    uint64_t admitted, full, mismatches;
} reuse_t;

/* 32 keys (4 per thread, each used by one thread only) in one bucket of 16 slots: slots are
 * claimed and reclaimed across threads all the time. Every phase uses one clock value for all
 * threads, so each thread can predict its keys exactly with a private model: any difference
 * would be another key's state leaking in. */
static void *reuse_main(void *arg)
{
    reuse_t *u = arg;
    sl_gcra_params_t p = params(3, 2); /* expires 3 to 6 phases after a use */
    uint64_t model[REUSE_KEYS_PER_THREAD] = {0};
    sl_gcra_result_t r, m;
    for (uint64_t phase = 1; phase <= REUSE_PHASES; phase++) {
        uint64_t now = phase;
        for (unsigned k = 0; k < REUSE_KEYS_PER_THREAD; k++) {
            if ((phase + k + u->id) % 3 == 0)
                continue; /* leave keys idle now and then so their slots expire */
            sl_gcra_key_t key = key_of(u->id * REUSE_KEYS_PER_THREAD + k);
            for (int n = 0; n < 2; n++) {
                int rc = sl_gcra_admit(u->t, key, &p, now, 1, &r);
                if (rc == SL_ETOOBIG) {
                    u->full++;
                    continue;
                }
                uint64_t tat = model[k];
                sl_gcra_decide(&p, tat, now, 1, &model[k], &m);
                u->mismatches += r.allowed != m.allowed || r.remaining != m.remaining;
                u->admitted += r.allowed;
            }
        }
        pthread_barrier_wait(u->barrier);
    }
    return NULL;
}

static void test_threads_reuse(void **state)
{
    (void)state;
    sl_gcra_table_t *t;
    assert_int_equal(sl_gcra_table_create(16, &t), 0);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, NTHREADS);
    reuse_t u[NTHREADS];
    pthread_t th[NTHREADS];
    for (unsigned i = 0; i < NTHREADS; i++) {
        u[i] = (reuse_t){t, &barrier, i, 0, 0, 0};
        assert_int_equal(pthread_create(&th[i], NULL, reuse_main, &u[i]), 0);
    }
    uint64_t admitted = 0, full = 0, mismatches = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        admitted += u[i].admitted;
        full += u[i].full;
        mismatches += u[i].mismatches;
    }
    pthread_barrier_destroy(&barrier);
    printf("    reuse: admitted %llu, table full %llu, mismatches %llu\n", (unsigned long long)admitted,
           (unsigned long long)full, (unsigned long long)mismatches);
    assert_int_equal(mismatches, 0);
    assert_true(full > 0); /* the bucket really was contended */
    assert_int_equal(sl_gcra_table_full_total(t), full);
    assert_true(admitted > 0);
    sl_gcra_table_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst),
        cmocka_unit_test(test_steady),
        cmocka_unit_test(test_cost),
        cmocka_unit_test(test_clock_edges),
        cmocka_unit_test(test_rate_per_day),
        cmocka_unit_test(test_rate_million),
        cmocka_unit_test(test_digest),
        cmocka_unit_test(test_digest_prefixed),
        cmocka_unit_test(test_table_full_and_reuse),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_threads_one_key_exact),
        cmocka_unit_test(test_threads_reuse),
        cmocka_unit_test(test_peek),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
