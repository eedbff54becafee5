/*
 * sl_upstream_conf_t.fingerprint: equal for the same upstream written differently (key order,
 * block or flow style, whitespace, comments, anchors, quoting), different for any change of a value,
 * and independent of the rest of the document.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"

#define LISTEN "listen: [ { address: 127.0.0.1:8080 } ]\n"
#define ROUTES "routes: [ { name: r, match: { path_prefix: / }, upstream: a } ]\n"

static uint64_t fp_of(const char *yaml, const char *upstream)
{
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    int rc = sl_config_load_buffer("t.yaml", yaml, strlen(yaml), &c, &errs);
    if (rc != 0) {
        sl_config_errors_print(&errs, stderr);
        fail_msg("load failed: %d", rc);
    }
    sl_config_errors_dispose(&errs);
    long i = sl_config_find_upstream(c, sl_str_from_cstr(upstream));
    assert_true(i >= 0);
    uint64_t fp = c->upstreams[i].fingerprint;
    sl_config_unref(c);
    return fp;
}

static const char base[] =
    LISTEN ROUTES "upstreams:\n"
                  "  a:\n"
                  "    targets: [ { address: 127.0.0.1:9001, weight: 2 }, { address: 127.0.0.1:9002 } ]\n"
                  "    balance: least_conn\n"
                  "    timeouts: { connect: 1s, read: 5s }\n"
                  "    circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n";

static void test_layout_order_and_comments_do_not_count(void **state)
{
    (void)state;
    uint64_t fp = fp_of(base, "a");
    const char reordered[] = "# a comment\n" LISTEN "upstreams:\n"
                             "  a:   # the same upstream, written another way\n"
                             "    circuit_breaker:\n"
                             "      min_requests: 5\n"
                             "      failure_ratio: 0.5\n"
                             "    timeouts:   {read: 5s,    connect: 1s}\n"
                             "    balance: least_conn\n"
                             "    targets:\n"
                             "      - weight: 2\n"
                             "        address: 127.0.0.1:9001\n"
                             "      - address: 127.0.0.1:9002   # second\n"
                             "  b:\n"
                             "    targets: [ { address: 127.0.0.1:9009 } ]\n" ROUTES;
    assert_true(fp_of(reordered, "a") == fp);
    const char anchored[] =
        LISTEN ROUTES "x-targets: &t [ { address: 127.0.0.1:9001, weight: 2 }, "
                      "{ address: 127.0.0.1:9002 } ]\n"
                      "upstreams:\n"
                      "  a: { targets: *t, balance: least_conn, timeouts: { connect: 1s, read: 5s },\n"
                      "       circuit_breaker: { failure_ratio: 0.5, min_requests: 5 } }\n";
    assert_true(fp_of(anchored, "a") == fp);
    const char quoted[] = LISTEN ROUTES "upstreams:\n"
                                        "  \"a\":\n"
                                        "    \"targets\": [ { \"address\": \"127.0.0.1:9001\", \"weight\": 2 },\n"
                                        "                 { address: '127.0.0.1:9002' } ]\n"
                                        "    balance: \"least_conn\"\n"
                                        "    timeouts: { connect: \"1s\", read: 5s }\n"
                                        "    circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n";
    assert_true(fp_of(quoted, "a") == fp);
}

static void test_any_value_change_counts(void **state)
{
    (void)state;
    uint64_t fp = fp_of(base, "a");
    const char *variants[] = {
        /* a target added, removed, reordered, re-weighted */
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9001, weight: 2 }, { address: "
                      "127.0.0.1:9002 }, { address: 127.0.0.1:9003 } ]\n    balance: least_conn\n    timeouts: { "
                      "connect: 1s, read: 5s }\n    circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n",
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9001, weight: 2 } ]\n    balance: "
                      "least_conn\n    timeouts: { connect: 1s, read: 5s }\n    circuit_breaker: { failure_ratio: "
                      "0.5, min_requests: 5 }\n",
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9002 }, { address: 127.0.0.1:9001, "
                      "weight: 2 } ]\n    balance: least_conn\n    timeouts: { connect: 1s, read: 5s }\n    "
                      "circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n",
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9001, weight: 3 }, { address: "
                      "127.0.0.1:9002 } ]\n    balance: least_conn\n    timeouts: { connect: 1s, read: 5s }\n    "
                      "circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n",
        /* a nested value, a key added with its default value, a section removed */
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9001, weight: 2 }, { address: "
                      "127.0.0.1:9002 } ]\n    balance: least_conn\n    timeouts: { connect: 1s, read: 6s }\n    "
                      "circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n",
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9001, weight: 2 }, { address: "
                      "127.0.0.1:9002 } ]\n    balance: least_conn\n    timeouts: { connect: 1s, read: 5s, send: "
                      "30s }\n    circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n",
        LISTEN ROUTES "upstreams:\n  a:\n    targets: [ { address: 127.0.0.1:9001, weight: 2 }, { address: "
                      "127.0.0.1:9002 } ]\n    balance: least_conn\n    timeouts: { connect: 1s, read: 5s }\n",
    };
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        uint64_t v = fp_of(variants[i], "a");
        if (v == fp)
            fail_msg("variant %zu has the base's fingerprint", i);
        for (size_t j = 0; j < i; j++)
            if (fp_of(variants[j], "a") == v)
                fail_msg("variants %zu and %zu share a fingerprint", j, i);
    }
}

static void test_rest_of_document_does_not_count(void **state)
{
    (void)state;
    uint64_t fp = fp_of(base, "a");
    const char other[] = LISTEN "workers: 3\n"
                                "routes: [ { name: r2, match: { path_prefix: /x }, upstream: a } ]\n"
                                "upstreams:\n"
                                "  z: { targets: [ { address: 127.0.0.1:9100 } ] }\n"
                                "  a:\n"
                                "    targets: [ { address: 127.0.0.1:9001, weight: 2 }, { address: 127.0.0.1:9002 } ]\n"
                                "    balance: least_conn\n"
                                "    timeouts: { connect: 1s, read: 5s }\n"
                                "    circuit_breaker: { failure_ratio: 0.5, min_requests: 5 }\n";
    assert_true(fp_of(other, "a") == fp);
    /* Two upstreams with the same body: the same fingerprint (the proxy matches names too). */
    const char twins[] = LISTEN ROUTES "upstreams:\n  a: { targets: [ { address: 127.0.0.1:9001 } ] }\n"
                                       "  b: { targets: [ { address: 127.0.0.1:9001 } ] }\n";
    assert_true(fp_of(twins, "a") == fp_of(twins, "b"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_order_and_comments_do_not_count),
        cmocka_unit_test(test_any_value_change_counts),
        cmocka_unit_test(test_rest_of_document_does_not_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
