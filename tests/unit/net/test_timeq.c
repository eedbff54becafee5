/*
 * Unit tests of the timeout queues on a real libuv loop: entries fire in deadline order across
 * queues, re-adding postpones, cancelling prevents, and a callback may re-arm.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/bug.h"
#include "net/buf.h"
#include "net/timeq.h"

typedef struct probe {
    sl_timeq_entry_t e;
    int id;
    uint64_t fired_at;
} probe_t;

static int fired[16], nfired;
static uv_loop_t *loop_of;

static void on_fire(sl_timeq_entry_t *e)
{
    probe_t *p = SL_CONTAINER_OF(e, probe_t, e);
    p->fired_at = uv_now(loop_of);
    fired[nfired++] = p->id;
}

static void test_order_across_queues(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_of = &loop;
    sl_timeqs_t t;
    sl_timeqs_init(&t, &loop);
    nfired = 0;
    probe_t a = {.id = 1}, b = {.id = 2}, c = {.id = 3}, d = {.id = 4};
    uint64_t start = uv_now(&loop);
    sl_timeq_add(&t, sl_timeqs_get(&t, 60), &a.e, on_fire);
    sl_timeq_add(&t, sl_timeqs_get(&t, 20), &b.e, on_fire);
    sl_timeq_add(&t, sl_timeqs_get(&t, 40), &c.e, on_fire);
    sl_timeq_add_at(&t, &d.e, 30, on_fire);
    assert_ptr_equal(sl_timeqs_get(&t, 20), sl_timeqs_get(&t, 20)); /* one queue per duration */
    while (nfired < 4)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(fired[0], 2);
    assert_int_equal(fired[1], 4);
    assert_int_equal(fired[2], 3);
    assert_int_equal(fired[3], 1);
    assert_true(b.fired_at - start >= 20);
    assert_true(a.fired_at - start >= 60);
    assert_false(sl_timeq_linked(&a.e));
    sl_timeqs_close(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_readd_postpones_and_cancel_prevents(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_of = &loop;
    sl_timeqs_t t;
    sl_timeqs_init(&t, &loop);
    nfired = 0;
    probe_t a = {.id = 1}, b = {.id = 2}, c = {.id = 3};
    /* 500 ms against c's 10: the assertions hold unless the machine stalls the test for half a
     * second between two lines (30 ms did happen under a loaded 2-core CI box). */
    sl_timeq_t *q = sl_timeqs_get(&t, 500);
    sl_timeq_add(&t, q, &a.e, on_fire);
    sl_timeq_add(&t, q, &b.e, on_fire);
    sl_timeq_add(&t, sl_timeqs_get(&t, 10), &c.e, on_fire);
    sl_timeq_cancel(&b.e);
    sl_timeq_cancel(&b.e);      /* idempotent */
    uv_run(&loop, UV_RUN_ONCE); /* c fires at 10 ms */
    assert_int_equal(nfired, 1);
    sl_timeq_add(&t, q, &a.e, on_fire); /* postpone a by another 500 ms */
    uint64_t readded = uv_now(&loop);
    while (nfired < 2)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(fired[1], 1);
    assert_true(a.fired_at - readded >= 500);
    assert_false(sl_timeq_linked(&b.e));
    sl_timeqs_close(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_buf_pool_recycles(void **state)
{
    (void)state;
    sl_buf_pool_t p;
    sl_buf_pool_init(&p, 1024, 2);
    sl_buf_t *a = sl_buf_get(&p);
    a->len = 10;
    a->off = 4;
    memcpy(a->data, "0123456789", 10);
    sl_buf_compact(a);
    assert_int_equal(a->off, 0);
    assert_int_equal(a->len, 6);
    assert_memory_equal(a->data, "456789", 6);
    sl_buf_put(&p, a);
    sl_buf_t *b = sl_buf_get(&p);
    assert_int_equal(b->len, 0);
    assert_int_equal(b->cap, 1024);
#ifndef SLUICE_SANITIZE
    assert_ptr_equal(a, b);
#endif
    sl_buf_put(&p, b);
    sl_buf_pool_dispose(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_across_queues),
        cmocka_unit_test(test_readd_postpones_and_cancel_prevents),
        cmocka_unit_test(test_buf_pool_recycles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
