/*
 * Unit tests of the route table view (admin/routes_view.h): a config with every kind of match,
 * action and filter, loaded by the real loader and compiled by the real router, must come out
 * in match order with the wording of docs/admin.md.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/routes_view.h"
#include "pipeline/snapshot.h"

static const char YAML[] = "listen: [ { address: 127.0.0.1:8080 } ]\n"
                           "upstreams:\n"
                           "  users: { targets: [ { address: 127.0.0.1:9001 } ] }\n"
                           "  orders: { targets: [ { address: 127.0.0.1:9002 } ] }\n"
                           "routes:\n"
                           "  - name: hello\n"
                           "    match: { path_prefix: / }\n"
                           "    respond: { status: 200, body: hi }\n"
                           "  - name: echo\n"
                           "    match: { path: /echo }\n"
                           "    respond: { echo: true }\n"
                           "  - name: users-api\n"
                           "    match: { hosts: [ api.example.com ], path_prefix: /users, methods: [ POST, GET ] }\n"
                           "    upstream: users\n"
                           "    strip_prefix: true\n"
                           "    timeout: 30s\n"
                           "  - name: canary\n"
                           "    match:\n"
                           "      path_regex: ^/orders/[0-9]+$\n"
                           "      headers: [ { name: X-Canary, value: \"1\" }, { name: X-Debug, present: false } ]\n"
                           "    split: [ { upstream: orders, weight: 80 }, { upstream: users, weight: 20 } ]\n"
                           "    rewrite: { regex: ^/orders/(.*)$, replacement: /v2/orders/$1 }\n"
                           "    request_headers: { set: { X-A: a }, remove: [ X-B, X-C ] }\n"
                           "    response_headers: { add: { X-D: d } }\n"
                           "    timeout: 1500ms\n"
                           "  - name: wild\n"
                           "    match: { hosts: [ \"*.example.com\" ] }\n"
                           "    upstream: orders\n";

static void test_table_view(void **state)
{
    sl_config_t *cfg = NULL;
    sl_config_errors_t errs = {0};
    int rc = sl_config_load_buffer("view.yaml", YAML, sizeof(YAML) - 1, &cfg, &errs);
    for (size_t i = 0; i < errs.count; i++)
        fprintf(stderr, "%u:%u: %s\n", errs.items[i].line, errs.items[i].col, errs.items[i].message);
    assert_int_equal(rc, 0);
    sl_router_t *router = NULL;
    assert_int_equal(sl_router_create(cfg, &router, &errs), 0);
    sl_config_errors_dispose(&errs);
    sl_snapshot_t *snap = sl_snapshot_create(cfg, router);

    json_t *j = sl_admin_routes_table(snap);
    char *got = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    const char *want =
        "{\"routes\":["
        "{\"order\":1,\"name\":\"users-api\",\"hosts\":[\"api.example.com\"],\"path\":\"prefix /users\","
        "\"methods\":[\"GET\",\"POST\"],\"headers\":[],\"action\":\"upstream users\","
        "\"filters\":[\"strip_prefix\",\"timeout 30s\"]},"
        "{\"order\":2,\"name\":\"wild\",\"hosts\":[\"*.example.com\"],\"path\":\"any\",\"methods\":[],"
        "\"headers\":[],\"action\":\"upstream orders\",\"filters\":[]},"
        "{\"order\":3,\"name\":\"echo\",\"hosts\":[],\"path\":\"exact /echo\",\"methods\":[],\"headers\":[],"
        "\"action\":\"echo\",\"filters\":[]},"
        "{\"order\":4,\"name\":\"hello\",\"hosts\":[],\"path\":\"prefix /\",\"methods\":[],\"headers\":[],"
        "\"action\":\"respond 200\",\"filters\":[]},"
        "{\"order\":5,\"name\":\"canary\",\"hosts\":[],\"path\":\"regex ^/orders/[0-9]+$\",\"methods\":[],"
        "\"headers\":[\"X-Canary: 1\",\"X-Debug absent\"],\"action\":\"split orders 80%, users 20%\","
        "\"filters\":[\"request_headers: remove X-B, X-C; set X-A\",\"rewrite ^/orders/(.*)$ -> /v2/orders/$1\","
        "\"timeout 1500ms\",\"response_headers: add X-D\"]}"
        "]}";
    if (strcmp(got, want) != 0)
        fail_msg("got\n%s\nwant\n%s", got, want);
    free(got);
    json_decref(j);
    sl_snapshot_unref(snap);
}

static void test_empty(void **state)
{
    static const char yaml[] = "listen: [ { address: 127.0.0.1:8080 } ]\n";
    sl_config_t *cfg = NULL;
    sl_config_errors_t errs = {0};
    assert_int_equal(sl_config_load_buffer("empty.yaml", yaml, sizeof(yaml) - 1, &cfg, &errs), 0);
    sl_router_t *router = NULL;
    assert_int_equal(sl_router_create(cfg, &router, &errs), 0);
    sl_config_errors_dispose(&errs);
    sl_snapshot_t *snap = sl_snapshot_create(cfg, router);
    json_t *j = sl_admin_routes_table(snap);
    char *got = json_dumps(j, JSON_COMPACT);
    assert_string_equal(got, "{\"routes\":[]}");
    free(got);
    json_decref(j);
    sl_snapshot_unref(snap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_view),
        cmocka_unit_test(test_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
