/*
 * sl_proxy_attach across a reload: an upstream whose name and fingerprint are unchanged keeps
 * its runtime state object (the same target states, so ejections, open circuits, EWMAs and
 * in-flight counts survive), even when its index in the config moves; a changed upstream gets
 * a fresh one; the shared state outlives the snapshot that built it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "router/router.h"
#include "upstream/balancer.h"
#include "upstream/breaker.h"
#include "upstream/proxy.h"

static sl_snapshot_t *snap_of(const char *yaml, const sl_snapshot_t *prev)
{
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    sl_router_t *r = NULL;
    int rc = sl_config_load_buffer("t.yaml", yaml, strlen(yaml), &c, &errs);
    if (rc == 0)
        rc = sl_router_create(c, &r, &errs);
    if (rc != 0) {
        sl_config_errors_print(&errs, stderr);
        fail_msg("load failed: %d", rc);
    }
    sl_config_errors_dispose(&errs);
    sl_snapshot_t *s = sl_snapshot_create(c, r);
    sl_proxy_attach(s, NULL, prev);
    return s;
}

static sl_target_state_t *states(const sl_snapshot_t *s, const char *name)
{
    long i = sl_config_find_upstream(s->cfg, sl_str_from_cstr(name));
    assert_true(i >= 0);
    return sl_proxy_target_states(s, (size_t)i);
}

#define HEAD                                                                                                           \
    "listen: [ { address: 127.0.0.1:8080 } ]\n"                                                                        \
    "routes:\n"                                                                                                        \
    "  - { name: ra, match: { path_prefix: /a }, upstream: a }\n"                                                      \
    "  - { name: rb, match: { path_prefix: /b }, upstream: b }\n"

static void test_unchanged_upstream_keeps_its_state(void **state)
{
    (void)state;
    sl_snapshot_t *s1 = snap_of(HEAD "upstreams:\n"
                                     "  a: { targets: [ { address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002 } ],\n"
                                     "       health: { passive: { consecutive_failures: 2 } } }\n"
                                     "  b: { targets: [ { address: 127.0.0.1:9003 } ] }\n",
                                NULL);
    sl_target_state_t *a1 = states(s1, "a"), *b1 = states(s1, "b");
    atomic_fetch_or(&a1[1].flags, SL_TARGET_EJECTED);
    atomic_store(&a1[0].inflight, 3);
    sl_balancer_observe(&a1[0], 5000000);

    /* Reordered upstreams, a reformatted `a`, a changed `b`, another route. */
    sl_snapshot_t *s2 = snap_of("listen: [ { address: 127.0.0.1:8080 } ]\n"
                                "routes:\n"
                                "  - { name: rb, match: { path_prefix: /b }, upstream: b }\n"
                                "  - { name: ra2, match: { path_prefix: /a }, upstream: a }\n"
                                "upstreams:\n"
                                "  b: { targets: [ { address: 127.0.0.1:9003 }, { address: 127.0.0.1:9004 } ] }\n"
                                "  a:\n"
                                "    health:\n"
                                "      passive: { consecutive_failures: 2 }   # unchanged\n"
                                "    targets:\n"
                                "      - address: 127.0.0.1:9001\n"
                                "      - address: 127.0.0.1:9002\n",
                                s1);
    sl_target_state_t *a2 = states(s2, "a"), *b2 = states(s2, "b");
    assert_ptr_equal(a2, a1);
    assert_ptr_not_equal(b2, b1);
    assert_true(atomic_load(&a2[1].flags) & SL_TARGET_EJECTED);
    assert_int_equal(atomic_load(&a2[0].inflight), 3);
    assert_int_equal(atomic_load(&b2[0].flags), 0);
    /* The shared state outlives the snapshot (and the config) that built it. */
    sl_snapshot_unref(s1);
    atomic_fetch_sub(&a2[0].inflight, 3);
    assert_int_equal(atomic_load(&a2[0].ewma_ns), 5000000);

    /* A third generation changing `a`'s target list: fresh state; `b` kept from s2. */
    sl_snapshot_t *s3 = snap_of(HEAD "upstreams:\n"
                                     "  a: { targets: [ { address: 127.0.0.1:9001 } ],\n"
                                     "       health: { passive: { consecutive_failures: 2 } } }\n"
                                     "  b: { targets: [ { address: 127.0.0.1:9003 }, { address: 127.0.0.1:9004 } ] }\n",
                                s2);
    assert_ptr_not_equal(states(s3, "a"), a2);
    assert_ptr_equal(states(s3, "b"), b2);
    assert_int_equal(atomic_load(&states(s3, "a")[0].flags), 0);
    sl_snapshot_unref(s2);
    sl_snapshot_unref(s3);
}

static void test_no_previous_snapshot_or_renamed_upstream_starts_fresh(void **state)
{
    (void)state;
    const char *y = HEAD "upstreams:\n  a: { targets: [ { address: 127.0.0.1:9001 } ] }\n"
                         "  b: { targets: [ { address: 127.0.0.1:9001 } ] }\n";
    sl_snapshot_t *s1 = snap_of(y, NULL);
    sl_snapshot_t *s2 = snap_of(y, NULL);
    assert_ptr_not_equal(states(s1, "a"), states(s2, "a"));
    /* Same body under another name (b has a's body): never confused. */
    assert_ptr_not_equal(states(s1, "a"), states(s1, "b"));
    sl_snapshot_t *s3 = snap_of("listen: [ { address: 127.0.0.1:8080 } ]\n"
                                "routes: [ { name: r, match: { path_prefix: / }, upstream: c } ]\n"
                                "upstreams:\n  c: { targets: [ { address: 127.0.0.1:9001 } ] }\n",
                                s1);
    assert_ptr_not_equal(states(s3, "c"), states(s1, "a"));
    assert_ptr_not_equal(states(s3, "c"), states(s1, "b"));
    sl_snapshot_unref(s1);
    sl_snapshot_unref(s2);
    sl_snapshot_unref(s3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unchanged_upstream_keeps_its_state),
        cmocka_unit_test(test_no_previous_snapshot_or_renamed_upstream_starts_fresh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
