/*
 * The load balancers: exact weighted round-robin cycles, least_conn steering by simulated
 * inflight counts, Maglev stability / spread / remapping, p2c_ewma steering away from a slow
 * target in a small discrete-event simulation, all-unavailable, and concurrent picking.
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "upstream/balancer.h"

#define MAX_T 16

typedef struct fixture {
    sl_upstream_conf_t conf;
    sl_target_conf_t targets[MAX_T];
    char addrs[MAX_T][32];
    sl_target_state_t *states;
    sl_balancer_t *b;
} fixture_t;

/* Targets 10.0.0.<first+i>:80 with the given weights (NULL: all 1). */
static void setup_first(fixture_t *f, enum sl_balance kind, size_t n, const uint32_t *weights, int first)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        snprintf(f->addrs[i], sizeof(f->addrs[i]), "10.0.0.%d:80", first + (int)i);
        f->targets[i].address = sl_str_from_cstr(f->addrs[i]);
        f->targets[i].weight = weights ? weights[i] : 1;
    }
    f->conf.name = SL_STR_LIT("u");
    f->conf.targets = f->targets;
    f->conf.ntargets = n;
    f->conf.balance = kind;
    f->states = sl_balancer_states_create(n);
    assert_int_equal(sl_balancer_create(&f->conf, f->states, &f->b), 0);
}

static void setup(fixture_t *f, enum sl_balance kind, size_t n, const uint32_t *weights)
{
    setup_first(f, kind, n, weights, 1);
}

static void teardown(fixture_t *f)
{
    sl_balancer_destroy(f->b);
    sl_balancer_states_destroy(f->states);
}

static void set_down(fixture_t *f, size_t i, bool down)
{
    if (down)
        atomic_fetch_or(&f->states[i].flags, SL_TARGET_EJECTED);
    else
        atomic_fetch_and(&f->states[i].flags, ~SL_TARGET_UNAVAILABLE);
}

static int pick_key(fixture_t *f, const char *key, uint64_t *rng)
{
    sl_balance_key_t k = {key, strlen(key)};
    return sl_balancer_pick(f->b, &k, rng);
}

/* ---- round robin ---------------------------------------------------------------------------- */

static void test_rr_exact_cycle(void **state)
{
    fixture_t f;
    uint64_t rng = 1;
    setup(&f, SL_BALANCE_ROUND_ROBIN, 3, (const uint32_t[]){5, 1, 1});
    /* nginx's smooth order for 5/1/1: a a b a c a a, so turns are spread, not bunched. */
    static const int want[] = {0, 0, 1, 0, 2, 0, 0};
    for (int cycle = 0; cycle < 10; cycle++)
        for (size_t k = 0; k < 7; k++)
            assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), want[k]);
    teardown(&f);

    /* Weights with a common divisor cycle like their reduced form. */
    setup(&f, SL_BALANCE_ROUND_ROBIN, 4, (const uint32_t[]){200, 400, 600, 1000});
    int counts[4] = {0};
    for (int k = 0; k < 11 * 3; k++)
        counts[sl_balancer_pick(f.b, NULL, &rng)]++;
    assert_int_equal(counts[0], 3);
    assert_int_equal(counts[1], 6);
    assert_int_equal(counts[2], 9);
    assert_int_equal(counts[3], 15);
    teardown(&f);
}

static void test_rr_skips_unavailable(void **state)
{
    fixture_t f;
    uint64_t rng = 1;
    setup(&f, SL_BALANCE_ROUND_ROBIN, 3, (const uint32_t[]){3, 2, 1});
    set_down(&f, 1, true);
    int counts[3] = {0};
    for (int k = 0; k < 600; k++) {
        int t = sl_balancer_pick(f.b, NULL, &rng);
        assert_true(t == 0 || t == 2);
        counts[t]++;
    }
    assert_int_equal(counts[1], 0);
    /* Each keeps at least its own turns (300 and 100); target 1's 200 go to the next in order. */
    assert_true(counts[0] >= 300);
    assert_true(counts[2] >= 100);
    assert_int_equal(counts[0] + counts[2], 600);

    /* One heavy target down: the others still alternate, whatever the run length. */
    teardown(&f);
    setup(&f, SL_BALANCE_ROUND_ROBIN, 3, (const uint32_t[]){1000, 1, 1});
    set_down(&f, 0, true);
    memset(counts, 0, sizeof(counts));
    for (int k = 0; k < 2000; k++)
        counts[sl_balancer_pick(f.b, NULL, &rng)]++;
    assert_int_equal(counts[0], 0);
    assert_true(counts[1] > 600 && counts[2] > 600);

    set_down(&f, 1, true);
    set_down(&f, 2, true);
    assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), -1);
    set_down(&f, 2, false);
    assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 2);
    teardown(&f);
}

/* ---- least connections ---------------------------------------------------------------------- */

static void test_least_conn(void **state)
{
    fixture_t f;
    uint64_t rng = 1;
    setup(&f, SL_BALANCE_LEAST_CONN, 3, NULL);
    atomic_store(&f.states[0].inflight, 5);
    atomic_store(&f.states[1].inflight, 2);
    atomic_store(&f.states[2].inflight, 7);
    for (int k = 0; k < 10; k++)
        assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 1);
    set_down(&f, 1, true);
    assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 0);
    set_down(&f, 1, false);

    /* Equal loads share: the rotating start gives each exactly a third. */
    int counts[3] = {0};
    for (int i = 0; i < 3; i++)
        atomic_store(&f.states[i].inflight, 4);
    for (int k = 0; k < 300; k++)
        counts[sl_balancer_pick(f.b, NULL, &rng)]++;
    assert_int_equal(counts[0], 100);
    assert_int_equal(counts[1], 100);
    assert_int_equal(counts[2], 100);
    teardown(&f);

    /* Weights: (inflight + 1) / weight. */
    setup(&f, SL_BALANCE_LEAST_CONN, 2, (const uint32_t[]){1, 3});
    atomic_store(&f.states[0].inflight, 1); /* 2/1 */
    atomic_store(&f.states[1].inflight, 3); /* 4/3 */
    assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 1);
    atomic_store(&f.states[1].inflight, 6); /* 7/3 */
    assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 0);
    /* Requests that never finish pile up 1:3. */
    atomic_store(&f.states[0].inflight, 0);
    atomic_store(&f.states[1].inflight, 0);
    for (int k = 0; k < 400; k++)
        atomic_fetch_add(&f.states[sl_balancer_pick(f.b, NULL, &rng)].inflight, 1);
    int a = atomic_load(&f.states[0].inflight), b = atomic_load(&f.states[1].inflight);
    assert_true(a >= 99 && a <= 101);
    assert_int_equal(a + b, 400);
    teardown(&f);
}

/* ---- hash (Maglev) -------------------------------------------------------------------------- */

#define NKEYS 100000

static void key_of(char *buf, size_t size, int i)
{
    snprintf(buf, size, "user-%d", i);
}

static void test_hash_stable_and_spread(void **state)
{
    fixture_t f, g;
    uint64_t rng = 1;
    setup(&f, SL_BALANCE_HASH, 10, NULL);
    setup(&g, SL_BALANCE_HASH, 10, NULL); /* a second build of the same config */
    int counts[10] = {0};
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        key_of(key, sizeof(key), i);
        int t = pick_key(&f, key, &rng);
        assert_true(t >= 0 && t < 10);
        assert_int_equal(pick_key(&f, key, &rng), t);
        assert_int_equal(pick_key(&g, key, &rng), t);
        counts[t]++;
    }
    for (int t = 0; t < 10; t++)
        assert_true(counts[t] > NKEYS / 10 * 9 / 10 && counts[t] < NKEYS / 10 * 11 / 10);
    teardown(&g);
    teardown(&f);

    /* Weights 1:2:3:4 get 10/20/30/40%, each within ±10% of its share. */
    setup(&f, SL_BALANCE_HASH, 4, (const uint32_t[]){1, 2, 3, 4});
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < NKEYS; i++) {
        key_of(key, sizeof(key), i);
        counts[pick_key(&f, key, &rng)]++;
    }
    for (int t = 0; t < 4; t++) {
        double want = NKEYS * (t + 1) / 10.0;
        print_message("weight %d: %d keys (ideal %.0f)\n", t + 1, counts[t], want);
        assert_true(counts[t] > want * 0.9 && counts[t] < want * 1.1);
    }

    /* An empty key falls back to round robin. */
    memset(counts, 0, sizeof(counts));
    sl_balance_key_t empty = {NULL, 0};
    for (int k = 0; k < 100; k++)
        counts[sl_balancer_pick(f.b, &empty, &rng)]++;
    for (int t = 0; t < 4; t++)
        assert_int_equal(counts[t], 10 * (t + 1));
    teardown(&f);
}

static void test_hash_remap_on_removal(void **state)
{
    /* 10 targets, then the same without the 5th: only keys are compared by address, since the
     * indices after the removed one shift. */
    fixture_t f, g;
    uint64_t rng = 1;
    setup(&f, SL_BALANCE_HASH, 10, NULL);
    memset(&g, 0, sizeof(g));
    size_t n = 0;
    for (size_t i = 0; i < 10; i++) {
        if (i == 4)
            continue;
        memcpy(g.addrs[n], f.addrs[i], sizeof(g.addrs[n]));
        g.targets[n].address = sl_str_from_cstr(g.addrs[n]);
        g.targets[n].weight = 1;
        n++;
    }
    g.conf.targets = g.targets;
    g.conf.ntargets = n;
    g.conf.balance = SL_BALANCE_HASH;
    g.states = sl_balancer_states_create(n);
    assert_int_equal(sl_balancer_create(&g.conf, g.states, &g.b), 0);

    int moved = 0, on_removed = 0;
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        key_of(key, sizeof(key), i);
        int a = pick_key(&f, key, &rng), b = pick_key(&g, key, &rng);
        on_removed += a == 4;
        moved += strcmp(f.addrs[a], g.addrs[b]) != 0;
    }
    double frac = (double)moved / NKEYS;
    print_message("maglev: removing 1 of 10 targets remapped %.2f%% of keys (%.2f%% were on it)\n", frac * 100,
                  on_removed * 100.0 / NKEYS);
    assert_true(moved >= on_removed); /* the removed target's keys must move */
    assert_true(frac <= 0.15);
    teardown(&g);
    teardown(&f);
}

static void test_hash_target_down(void **state)
{
    fixture_t f;
    uint64_t rng = 1;
    setup(&f, SL_BALANCE_HASH, 10, NULL);
    static int before[NKEYS];
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        key_of(key, sizeof(key), i);
        before[i] = pick_key(&f, key, &rng);
    }
    set_down(&f, 3, true);
    int spread[10] = {0};
    for (int i = 0; i < NKEYS; i++) {
        key_of(key, sizeof(key), i);
        int t = pick_key(&f, key, &rng);
        assert_int_not_equal(t, 3);
        if (before[i] != 3) {
            assert_int_equal(t, before[i]); /* other targets' keys stay */
        } else {
            assert_int_equal(pick_key(&f, key, &rng), t); /* a displaced key stays put too */
            spread[t]++;
        }
    }
    /* The displaced keys spread over the others instead of all landing on one neighbour. */
    int used = 0;
    for (int t = 0; t < 10; t++)
        used += spread[t] > 0;
    assert_true(used >= 8);
    /* And they come home when it is back. */
    set_down(&f, 3, false);
    for (int i = 0; i < NKEYS; i += 7) {
        key_of(key, sizeof(key), i);
        assert_int_equal(pick_key(&f, key, &rng), before[i]);
    }
    /* Most down: keys still map, only to the ones left, and stably. */
    for (int t = 0; t < 9; t++)
        set_down(&f, (size_t)t, true);
    for (int i = 0; i < 1000; i++) {
        key_of(key, sizeof(key), i);
        assert_int_equal(pick_key(&f, key, &rng), 9);
    }
    set_down(&f, 9, true);
    assert_int_equal(pick_key(&f, "user-1", &rng), -1);
    teardown(&f);
}

/* ---- p2c_ewma ------------------------------------------------------------------------------- */

#define SIM_MS      20000
#define MAX_PENDING 4096

typedef struct pending {
    int target;
    uint64_t start, done;
} pending_t;

/* One request per simulated 0.5 ms; target 0 answers in 20 ms, the others in 2 ms (±25%).
 * Returns target 0's share of the picks after the first simulated second. */
static double simulate_p2c(fixture_t *f, int slow)
{
    static pending_t pend[MAX_PENDING];
    size_t npend = 0;
    uint64_t rng = 42, jitter = 7;
    int picks = 0, slow_picks = 0;
    for (uint64_t now = 0; now < SIM_MS * 2; now++) { /* half-milliseconds */
        for (size_t i = 0; i < npend;) {
            if (pend[i].done <= now) {
                atomic_fetch_sub(&f->states[pend[i].target].inflight, 1);
                sl_balancer_observe(&f->states[pend[i].target], (pend[i].done - pend[i].start) * 500000);
                pend[i] = pend[--npend];
            } else {
                i++;
            }
        }
        int t = sl_balancer_pick(f->b, NULL, &rng);
        assert_true(t >= 0);
        atomic_fetch_add(&f->states[t].inflight, 1);
        jitter = jitter * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t base = t == slow ? 40 : 4;
        uint64_t lat = base * 3 / 4 + (jitter >> 33) % (base / 2 + 1);
        assert_true(npend < MAX_PENDING);
        pend[npend++] = (pending_t){t, now, now + lat};
        if (now >= 2000) {
            picks++;
            slow_picks += t == slow;
        }
    }
    for (size_t i = 0; i < npend; i++)
        atomic_fetch_sub(&f->states[pend[i].target].inflight, 1);
    return (double)slow_picks / picks;
}

static void test_p2c_ewma(void **state)
{
    fixture_t f;
    setup(&f, SL_BALANCE_P2C_EWMA, 5, NULL);
    double share = simulate_p2c(&f, 0);
    print_message("p2c_ewma: a 10x slower target got %.2f%% of picks (1/n = 20%%)\n", share * 100);
    assert_true(share < 0.05);
    for (int i = 0; i < 5; i++)
        assert_int_equal(atomic_load(&f.states[i].inflight), 0);
    teardown(&f);

    /* An unmeasured target is preferred over measured ones, so it gets tried. */
    setup(&f, SL_BALANCE_P2C_EWMA, 3, NULL);
    sl_balancer_observe(&f.states[0], 1000);
    sl_balancer_observe(&f.states[1], 1000);
    uint64_t rng = 3;
    int fresh = 0;
    for (int k = 0; k < 300; k++) {
        int t = sl_balancer_pick(f.b, NULL, &rng);
        assert_true(t >= 0 && t < 3);
        fresh += t == 2;
    }
    assert_true(fresh >= 150); /* it wins every pair it is in: 2 of 3 pairs */
    /* Weights: equal latency, weight 4 vs 1 with the same load, the heavier wins. */
    teardown(&f);
    setup(&f, SL_BALANCE_P2C_EWMA, 2, (const uint32_t[]){1, 4});
    sl_balancer_observe(&f.states[0], 1000);
    sl_balancer_observe(&f.states[1], 1000);
    atomic_store(&f.states[1].inflight, 2); /* 1000*3/4 < 1000*1/1 */
    for (int k = 0; k < 20; k++)
        assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 1);
    set_down(&f, 1, true);
    assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), 0);
    teardown(&f);
}

static void test_observe(void **state)
{
    sl_target_state_t *t = sl_balancer_states_create(1);
    assert_int_equal(atomic_load(&t->ewma_ns), 0);
    sl_balancer_observe(t, 8000);
    assert_int_equal(atomic_load(&t->ewma_ns), 8000);
    sl_balancer_observe(t, 16000); /* + (16000 - 8000) / 8 */
    assert_int_equal(atomic_load(&t->ewma_ns), 9000);
    for (int i = 0; i < 200; i++)
        sl_balancer_observe(t, 1000000);
    assert_true(atomic_load(&t->ewma_ns) > 990000);
    sl_balancer_observe(t, UINT64_MAX); /* no overflow */
    assert_true(atomic_load(&t->ewma_ns) > 1000000);
    sl_balancer_states_destroy(t);
    t = sl_balancer_states_create(1);
    sl_balancer_observe(t, 0); /* still counts as measured */
    assert_int_equal(atomic_load(&t->ewma_ns), 1);
    sl_balancer_states_destroy(t);
}

/* ---- every balancer ------------------------------------------------------------------------- */

static const enum sl_balance kinds[] = {SL_BALANCE_ROUND_ROBIN, SL_BALANCE_LEAST_CONN, SL_BALANCE_HASH,
                                        SL_BALANCE_P2C_EWMA};

static void test_all_unavailable(void **state)
{
    for (size_t k = 0; k < 4; k++) {
        fixture_t f;
        uint64_t rng = 9;
        setup(&f, kinds[k], 4, (const uint32_t[]){1, 2, 3, 4});
        for (size_t i = 0; i < 4; i++)
            set_down(&f, i, true);
        for (int n = 0; n < 50; n++) {
            assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), -1);
            assert_int_equal(pick_key(&f, "k", &rng), -1);
        }
        set_down(&f, 2, false);
        for (int n = 0; n < 50; n++)
            assert_int_equal(pick_key(&f, "k", &rng), 2);
        teardown(&f);

        setup(&f, kinds[k], 0, NULL); /* no targets at all */
        assert_int_equal(sl_balancer_pick(f.b, NULL, &rng), -1);
        teardown(&f);
    }
}

static void test_hash_function(void **state)
{
    assert_int_equal(sl_balancer_hash("abc", 3, 0), sl_balancer_hash("abc", 3, 0));
    assert_int_not_equal(sl_balancer_hash("abc", 3, 0), sl_balancer_hash("abc", 3, 1));
    assert_int_not_equal(sl_balancer_hash("a", 1, 0), sl_balancer_hash("a\0", 2, 0));
    assert_int_not_equal(sl_balancer_hash("", 0, 0), sl_balancer_hash("\0", 1, 0));
    /* One flipped bit in a long key flips about half the output bits. */
    char buf[40];
    memset(buf, 'x', sizeof(buf));
    int total = 0;
    for (size_t bit = 0; bit < sizeof(buf) * 8; bit++) {
        uint64_t a = sl_balancer_hash(buf, sizeof(buf), 0);
        buf[bit / 8] ^= (char)(1 << (bit % 8));
        total += __builtin_popcountll(a ^ sl_balancer_hash(buf, sizeof(buf), 0));
        buf[bit / 8] ^= (char)(1 << (bit % 8));
    }
    double avg = (double)total / (sizeof(buf) * 8);
    assert_true(avg > 28 && avg < 36);
}

/* ---- threads -------------------------------------------------------------------------------- */

#define THREADS 4
#define PICKS   200000

typedef struct thread_arg {
    fixture_t *f;
    uint64_t rng;
    atomic_int *bad;
    atomic_bool *stop;
} thread_arg_t;

static void *picker(void *p)
{
    thread_arg_t *a = p;
    char key[16];
    for (int i = 0; i < PICKS; i++) {
        snprintf(key, sizeof(key), "%d", i);
        sl_balance_key_t k = {key, strlen(key)};
        int t = sl_balancer_pick(a->f->b, &k, &a->rng);
        if (t < 0 || (size_t)t >= a->f->conf.ntargets) {
            atomic_fetch_add(a->bad, 1);
            continue;
        }
        atomic_fetch_add_explicit(&a->f->states[t].inflight, 1, memory_order_relaxed);
        sl_balancer_observe(&a->f->states[t], 1000 + (uint64_t)(i % 7) * 100);
        atomic_fetch_sub_explicit(&a->f->states[t].inflight, 1, memory_order_relaxed);
    }
    return NULL;
}

/* Flips one target's availability while the pickers run, as a health checker would. */
static void *flipper(void *p)
{
    thread_arg_t *a = p;
    while (!atomic_load(a->stop)) {
        atomic_fetch_xor(&a->f->states[0].flags, SL_TARGET_CIRCUIT_OPEN);
        sched_yield();
    }
    atomic_fetch_and(&a->f->states[0].flags, ~SL_TARGET_UNAVAILABLE);
    return NULL;
}

static void test_threads(void **state)
{
    for (size_t k = 0; k < 4; k++) {
        fixture_t f;
        setup(&f, kinds[k], 6, (const uint32_t[]){1, 2, 3, 1, 2, 3});
        atomic_int bad = 0;
        atomic_bool stop = false;
        pthread_t th[THREADS + 1];
        thread_arg_t args[THREADS + 1];
        for (int i = 0; i <= THREADS; i++) {
            args[i] = (thread_arg_t){&f, (uint64_t)i * 7919 + 1, &bad, &stop};
            assert_int_equal(pthread_create(&th[i], NULL, i == THREADS ? flipper : picker, &args[i]), 0);
        }
        for (int i = 0; i < THREADS; i++)
            pthread_join(th[i], NULL);
        atomic_store(&stop, true);
        pthread_join(th[THREADS], NULL);
        assert_int_equal(atomic_load(&bad), 0);
        for (int i = 0; i < 6; i++) {
            assert_int_equal(atomic_load(&f.states[i].inflight), 0);
            assert_int_equal(atomic_load(&f.states[i].flags), 0);
        }
        teardown(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rr_exact_cycle),
        cmocka_unit_test(test_rr_skips_unavailable),
        cmocka_unit_test(test_least_conn),
        cmocka_unit_test(test_hash_stable_and_spread),
        cmocka_unit_test(test_hash_remap_on_removal),
        cmocka_unit_test(test_hash_target_down),
        cmocka_unit_test(test_p2c_ewma),
        cmocka_unit_test(test_observe),
        cmocka_unit_test(test_all_unavailable),
        cmocka_unit_test(test_hash_function),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
