/*
 * An upstream's `tls` (docs/tls.md "Upstream TLS"): the forms (`true`, `false`, a mapping), the
 * defaults, the client context built at load (its id equal for equal settings, different
 * otherwise), and each error with its exact position and message. Certificate files are
 * covered end to end by tests/integration/test_67_upstream_tls.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/error.h"
#include "config/config.h"
#include "tls/tls.h"

#define HEAD                                                                                                           \
    "listen: [ { address: 127.0.0.1:8080 } ]\n"                                                                        \
    "routes: [ { name: r, match: { path_prefix: / }, upstream: u } ]\n"                                                \
    "upstreams:\n"                                                                                                     \
    "  u:\n"                                                                                                           \
    "    targets: [ { address: 127.0.0.1:9001 } ]\n"

static sl_config_t *load_ok(const char *yaml)
{
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    int rc = sl_config_load_buffer("t.yaml", yaml, strlen(yaml), &c, &errs);
    if (rc != 0) {
        sl_config_errors_print(&errs, stderr);
        fail_msg("load failed: %d", rc);
    }
    sl_config_errors_dispose(&errs);
    return c;
}

/* The load fails with exactly one error, `want` ("line:col: message"). */
static void expect_error(const char *yaml, const char *want)
{
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    int rc = sl_config_load_buffer("t.yaml", yaml, strlen(yaml), &c, &errs);
    assert_int_equal(rc, SL_ECONFIG);
    assert_null(c);
    char got[400] = "";
    if (errs.count > 0)
        snprintf(got, sizeof(got), "%u:%u: %s", errs.items[0].line, errs.items[0].col, errs.items[0].message);
    if (errs.count != 1 || strcmp(got, want) != 0) {
        fprintf(stderr, "expected: %s\ngot %zu:\n", want, errs.count);
        sl_config_errors_print(&errs, stderr);
        fail();
    }
    sl_config_errors_dispose(&errs);
}

static void test_absent_and_false(void **state)
{
    (void)state;
    sl_config_t *c = load_ok(HEAD);
    assert_false(c->upstreams[0].tls.enabled);
    assert_null(c->upstreams[0].tls.ctx);
    sl_config_unref(c);
    c = load_ok(HEAD "    tls: false\n");
    assert_false(c->upstreams[0].tls.enabled);
    assert_null(c->upstreams[0].tls.ctx);
    sl_config_unref(c);
}

static void test_true_means_defaults(void **state)
{
    (void)state;
    sl_config_t *c = load_ok(HEAD "    tls: true\n");
    const sl_upstream_conf_t *u = &c->upstreams[0];
    assert_true(u->tls.enabled);
    assert_true(u->tls.verify);
    assert_int_equal(u->tls.min_version, SL_TLS_V1_2);
    assert_int_equal(u->tls.ca.len, 0);
    assert_int_equal(u->tls.sni.len, 0);
    assert_non_null(u->tls.ctx);
    assert_int_equal(u->tls.pos.line, 6);
    sl_config_unref(c);
    c = load_ok(HEAD "    tls: {}\n");
    assert_true(c->upstreams[0].tls.enabled && c->upstreams[0].tls.verify);
    assert_non_null(c->upstreams[0].tls.ctx);
    sl_config_unref(c);
}

static void test_mapping(void **state)
{
    (void)state;
    sl_config_t *c = load_ok(HEAD "    tls: { verify: false, sni: api.internal, min_version: \"1.3\" }\n");
    const sl_upstream_conf_t *u = &c->upstreams[0];
    assert_true(u->tls.enabled);
    assert_false(u->tls.verify);
    assert_string_equal(u->tls.sni.ptr, "api.internal");
    assert_int_equal(u->tls.min_version, SL_TLS_V1_3);
    assert_non_null(u->tls.ctx);
    sl_config_unref(c);
}

/* Equal settings give equal ids (pools survive a reload); any difference gives another one. */
static void test_context_ids(void **state)
{
    (void)state;
    sl_config_t *a = load_ok(HEAD "    tls: true\n");
    sl_config_t *b = load_ok(HEAD "    tls: { verify: true }\n");
    sl_config_t *n = load_ok(HEAD "    tls: { verify: false }\n");
    sl_config_t *v = load_ok(HEAD "    tls: { min_version: \"1.3\" }\n");
    uint64_t ia = sl_tls_client_ctx_id(a->upstreams[0].tls.ctx), ib = sl_tls_client_ctx_id(b->upstreams[0].tls.ctx);
    uint64_t in = sl_tls_client_ctx_id(n->upstreams[0].tls.ctx), iv = sl_tls_client_ctx_id(v->upstreams[0].tls.ctx);
    assert_true(ia != 0);
    assert_true(ia == ib);
    assert_true(ia != in && ia != iv && in != iv);
    /* the context lives on with a reference after its generation is gone */
    sl_tls_client_ctx_t *keep = sl_tls_client_ctx_ref(a->upstreams[0].tls.ctx);
    sl_config_unref(a);
    assert_true(sl_tls_client_ctx_id(keep) == ib);
    sl_tls_client_ctx_unref(keep);
    sl_config_unref(b);
    sl_config_unref(n);
    sl_config_unref(v);
}

static void test_fingerprint_covers_tls(void **state)
{
    (void)state;
    sl_config_t *a = load_ok(HEAD);
    sl_config_t *b = load_ok(HEAD "    tls: true\n");
    assert_true(a->upstreams[0].fingerprint != b->upstreams[0].fingerprint);
    sl_config_unref(a);
    sl_config_unref(b);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error(HEAD "    tls: { client_cert: c.pem }\n",
                 "6:12: tls: client_cert needs client_key (the private key of that certificate)");
    expect_error(HEAD "    tls: { client_key: k.pem }\n",
                 "6:12: tls: client_key needs client_cert (the certificate of that key)");
    expect_error(HEAD "    tls: { verify: false, ca: ca.pem }\n",
                 "6:27: tls: ca is not used with verify: false (remove one of them)");
    expect_error(HEAD "    tls: { sni: 10.0.0.1 }\n",
                 "6:17: tls.sni: '10.0.0.1' is an IP address; SNI carries host names only (leave sni out: the "
                 "certificate is then checked for the target's IP address)");
    expect_error(HEAD "    tls: { sni: \"bad name\" }\n", "6:17: tls.sni: 'bad name' is not a valid host name");
    expect_error(HEAD "    tls: { ca: \"\" }\n", "6:16: tls.ca: expected a file path");
    expect_error(HEAD "    tls: { ca: /nonexistent/ca.pem }\n",
                 "6:16: tls: cannot read ca file '/nonexistent/ca.pem': No such file or directory");
    expect_error(HEAD "    tls: { client_cert: /nonexistent/c.pem, client_key: /nonexistent/k.pem }\n",
                 "6:25: tls: cannot read client_cert file '/nonexistent/c.pem': No such file or directory");
    expect_error(HEAD "    tls: maybe\n", "6:10: tls: expected true or false, got 'maybe'");
}

#define HEAD_NO_TARGETS                                                                                                \
    "listen: [ { address: 127.0.0.1:8080 } ]\n"                                                                        \
    "routes: [ { name: r, match: { path_prefix: / }, upstream: u } ]\n"                                                \
    "upstreams:\n"                                                                                                     \
    "  u:\n"

/* `https://host:port` targets: the address without the scheme, and TLS on with the defaults. */
static void test_https_targets(void **state)
{
    (void)state;
    sl_config_t *c = load_ok(HEAD_NO_TARGETS "    targets: [ { address: \"https://127.0.0.1:9001\" }, { address: "
                                             "\"HTTPS://api.internal:443\" } ]\n");
    const sl_upstream_conf_t *u = &c->upstreams[0];
    assert_true(u->tls.enabled && u->tls.verify);
    assert_non_null(u->tls.ctx);
    assert_int_equal(u->targets[0].address.len, strlen("127.0.0.1:9001"));
    assert_memory_equal(u->targets[0].address.ptr, "127.0.0.1:9001", 14);
    assert_true(u->targets[0].host_is_ip);
    assert_string_equal(u->targets[1].host.ptr, "api.internal");
    assert_int_equal(u->targets[1].port, 443);
    sl_config_unref(c);
    /* with a `tls` mapping, that one's settings */
    c = load_ok(HEAD_NO_TARGETS
                "    targets: [ { address: \"https://127.0.0.1:9001\" } ]\n    tls: { verify: false }\n");
    assert_true(c->upstreams[0].tls.enabled);
    assert_false(c->upstreams[0].tls.verify);
    sl_config_unref(c);
    expect_error(HEAD_NO_TARGETS
                 "    targets: [ { address: \"https://127.0.0.1:9001\" }, { address: 127.0.0.1:9002 } ]\n",
                 "5:66: address: upstream u mixes https:// (at 5:27) and plain targets; an upstream is TLS or not: "
                 "write every target the same way");
    expect_error(HEAD_NO_TARGETS "    targets: [ { address: \"https://127.0.0.1:9001\" } ]\n    tls: false\n",
                 "6:10: tls: false contradicts the https:// targets of upstream u");
}

/* `protocol` (docs/grpc.md): the default, h2, its ALPN-only context, and the errors. */
static void test_protocol(void **state)
{
    (void)state;
    sl_config_t *h1 = load_ok(HEAD "    tls: true\n");
    sl_config_t *h2 = load_ok(HEAD "    protocol: h2\n    tls: true\n");
    sl_config_t *plain = load_ok(HEAD "    protocol: h2\n");
    assert_int_equal(h1->upstreams[0].protocol, SL_UPSTREAM_HTTP1);
    assert_int_equal(h2->upstreams[0].protocol, SL_UPSTREAM_H2);
    assert_int_equal(plain->upstreams[0].protocol, SL_UPSTREAM_H2);
    assert_null(plain->upstreams[0].tls.ctx);
    /* ALPN h2 alone is another context: pools never mix h2 and HTTP/1.1 connections. */
    assert_true(sl_tls_client_ctx_id(h1->upstreams[0].tls.ctx) != sl_tls_client_ctx_id(h2->upstreams[0].tls.ctx));
    assert_true(h1->upstreams[0].fingerprint != h2->upstreams[0].fingerprint);
    sl_config_unref(h1);
    sl_config_unref(h2);
    sl_config_unref(plain);
    expect_error(HEAD "    protocol: h3\n", "6:15: protocol: expected one of http1, h2, got 'h3'");
    expect_error(HEAD "    protocol: h2\n    health: { active: { path: /healthz } }\n",
                 "7:5: health.active is not supported with protocol: h2 (probes speak HTTP/1.1); use "
                 "health.passive and circuit_breaker for upstream 'u'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_absent_and_false),
        cmocka_unit_test(test_true_means_defaults),
        cmocka_unit_test(test_mapping),
        cmocka_unit_test(test_context_ids),
        cmocka_unit_test(test_fingerprint_covers_tls),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_https_targets),
        cmocka_unit_test(test_protocol),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
