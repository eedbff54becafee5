/*
 * src/tls without sockets: certificates made here with OpenSSL (SANs, wildcards, CN-only, an
 * expired one, a second key), SNI selection (exact, case, trailing dot, one-label wildcards,
 * default), certificate loading errors, and the listener `tls` config with its positioned
 * errors (missing file, mismatched key, expired, bad PEM, bad ciphers, bad min_version).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/error.h"
#include "config/config.h"
#include "tls/tls.h"

#include "certs.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    certs_mkdir(dir, sizeof(dir), "/tmp/sluice-unit-tls-XXXXXX");
    certs_make(dir, "a", "a.example", "DNS:a.example,DNS:alt.example", 30, NULL);
    certs_make(dir, "b", "b.example", "DNS:b.example", 30, NULL);
    certs_make(dir, "w", "wild", "DNS:*.w.example", 30, NULL);
    certs_make(dir, "cn", "cn-only.example", NULL, 30, NULL);
    certs_make(dir, "old", "old.example", "DNS:old.example", -1, NULL);
    certs_make(dir, "other", "a.example", "DNS:a.example", 30, NULL); /* another key for a.example */
    char path[512];
    snprintf(path, sizeof(path), "%s/garbage.crt", dir);
    FILE *f = fopen(path, "w");
    fputs("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return certs_rmdir(dir);
}

static size_t sel(const sl_tls_ctx_t *ctx, const char *name)
{
    return sl_tls_ctx_select(ctx, name, name ? strlen(name) : 0);
}

static void test_sni_selection(void **state)
{
    (void)state;
    sl_tls_cert_t *certs[] = {certs_load(dir, "a.crt", "a.key"), certs_load(dir, "b.crt", "b.key"),
                              certs_load(dir, "w.crt", "w.key"), certs_load(dir, "cn.crt", "cn.key")};
    assert_int_equal(sl_tls_cert_nnames(certs[0]), 2);
    assert_string_equal(sl_tls_cert_name(certs[0], 1), "alt.example");
    assert_string_equal(sl_tls_cert_name(certs[2], 0), "*.w.example");
    assert_string_equal(sl_tls_cert_name(certs[3], 0), "cn-only.example"); /* CN without SANs */
    sl_tls_ctx_t *ctx;
    char msg[256];
    sl_tls_options_t o = {.listener = 0, .listener_name = "unit"};
    assert_int_equal(sl_tls_ctx_create(certs, 4, &o, &ctx, msg, sizeof(msg)), 0);
    assert_int_equal(sel(ctx, "a.example"), 0);
    assert_int_equal(sel(ctx, "alt.example"), 0);
    assert_int_equal(sel(ctx, "b.example"), 1);
    assert_int_equal(sel(ctx, "B.EXAMPLE"), 1);
    assert_int_equal(sel(ctx, "b.example."), 1);
    assert_int_equal(sel(ctx, "x.w.example"), 2);
    assert_int_equal(sel(ctx, "X-1.W.Example"), 2);
    assert_int_equal(sel(ctx, "cn-only.example"), 3);
    /* a wildcard covers exactly one label; everything unknown gets the default */
    assert_int_equal(sel(ctx, "w.example"), 0);
    assert_int_equal(sel(ctx, "a.b.w.example"), 0);
    assert_int_equal(sel(ctx, ".w.example"), 0);
    assert_int_equal(sel(ctx, "unknown.example"), 0);
    assert_int_equal(sel(ctx, "example"), 0);
    assert_int_equal(sel(ctx, NULL), 0);
    assert_int_equal(sel(ctx, ""), 0);
    assert_int_equal(sel(ctx, "b.example.evil"), 0);
    assert_int_equal(sel(ctx, "xb.example"), 0);
    /* a shared reference outlives the creator's */
    sl_tls_ctx_t *r = sl_tls_ctx_ref(ctx);
    sl_tls_ctx_unref(ctx);
    assert_int_equal(sel(r, "b.example"), 1);
    sl_tls_ctx_unref(r);
}

static void expect_load_error(const char *cert, const char *key, enum sl_tls_cert_part want_part, const char *want)
{
    char c[512], k[512], msg[512];
    snprintf(c, sizeof(c), "%s/%s", dir, cert);
    snprintf(k, sizeof(k), "%s/%s", dir, key);
    enum sl_tls_cert_part part = 0;
    sl_tls_cert_t *out = (sl_tls_cert_t *)0x1;
    assert_int_equal(sl_tls_cert_load(c, k, &out, &part, msg, sizeof(msg)), SL_EINVALID);
    assert_ptr_equal(out, (sl_tls_cert_t *)0x1); /* untouched on failure */
    assert_int_equal(part, want_part);
    if (strstr(msg, want) == NULL)
        fail_msg("message %s lacks %s", msg, want);
}

static void test_cert_load_errors(void **state)
{
    (void)state;
    expect_load_error("nope.crt", "a.key", SL_TLS_PART_CERT, "cannot read certificate");
    expect_load_error("a.crt", "nope.key", SL_TLS_PART_KEY, "cannot read key");
    expect_load_error("garbage.crt", "a.key", SL_TLS_PART_CERT, "no PEM certificate");
    expect_load_error("a.crt", "a.crt", SL_TLS_PART_KEY, "no PEM private key");
    expect_load_error("a.crt", "other.key", SL_TLS_PART_KEY, "does not match");
    expect_load_error("old.crt", "old.key", SL_TLS_PART_CERT, "expired on");
}

static void test_bad_cipher_list(void **state)
{
    (void)state;
    sl_tls_cert_t *certs[] = {certs_load(dir, "a.crt", "a.key")};
    sl_tls_ctx_t *ctx = NULL;
    char msg[256];
    sl_tls_options_t o = {.ciphers = "NOT-A-CIPHER", .listener_name = "unit"};
    assert_int_equal(sl_tls_ctx_create(certs, 1, &o, &ctx, msg, sizeof(msg)), SL_EINVALID);
    assert_null(ctx);
    assert_non_null(strstr(msg, "ciphers"));
}

/* ---- the config ------------------------------------------------------------------------- */

static int load_config(const char *yaml, sl_config_t **cfg, sl_config_errors_t *errs)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/sluice.yaml", dir);
    FILE *f = fopen(path, "w");
    fputs(yaml, f);
    fclose(f);
    return sl_config_load_file(path, cfg, errs);
}

static void expect_config_error(const char *certs_yaml, uint32_t line, uint32_t col, const char *want)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "listen:\n"
             "  - address: 127.0.0.1:8443\n"
             "    tls:\n"
             "%s"
             "routes:\n"
             "  - name: r\n"
             "    match: { path_prefix: / }\n"
             "    respond: { status: 200 }\n",
             certs_yaml);
    sl_config_t *cfg = NULL;
    sl_config_errors_t errs = {0};
    assert_int_equal(load_config(yaml, &cfg, &errs), SL_ECONFIG);
    assert_null(cfg);
    bool found = false;
    for (size_t i = 0; i < errs.count; i++)
        if (strstr(errs.items[i].message, want) != NULL) {
            found = true;
            if (errs.items[i].line != line || errs.items[i].col != col)
                fail_msg("%s at %u:%u, expected %u:%u", errs.items[i].message, errs.items[i].line, errs.items[i].col,
                         line, col);
        }
    if (!found) {
        sl_config_errors_print(&errs, stderr);
        fail_msg("no error mentions %s", want);
    }
    sl_config_errors_dispose(&errs);
}

static void test_config_errors_have_positions(void **state)
{
    (void)state;
    /* relative paths are to the config file's directory */
    expect_config_error("      certificates:\n"
                        "        - { cert: a.crt, key: a.key }\n"
                        "        - { cert: missing.crt, key: b.key }\n",
                        6, 19, "cannot read certificate");
    expect_config_error("      certificates:\n"
                        "        - cert: a.crt\n"
                        "          key: other.key\n",
                        6, 16, "does not match");
    expect_config_error("      certificates: [ { cert: old.crt, key: old.key } ]\n", 4, 31, "expired on");
    expect_config_error("      certificates: [ { cert: garbage.crt, key: a.key } ]\n", 4, 31, "no PEM certificate");
    expect_config_error("      certificates: []\n", 4, 21, "needs at least one");
    expect_config_error("      certificates: [ { cert: a.crt } ]\n", 4, 23, "missing required key 'key'");
    /* an empty path is refused where it is written, for each key that names a file */
    expect_config_error("      certificates: [ { cert: '', key: a.key } ]\n", 4, 31, "cert: expected a file path");
    expect_config_error("      certificates: [ { cert: a.crt, key: '' } ]\n", 4, 43, "key: expected a file path");
    expect_config_error("      certificates: [ { cert: a.crt, key: a.key } ]\n"
                        "      client_ca: ''\n",
                        5, 18, "client_ca: expected a file path");
    expect_config_error("      certificates: [ { cert: a.crt, key: a.key } ]\n"
                        "      min_version: '1.1'\n",
                        5, 20, "min_version");
    expect_config_error("      certificates: [ { cert: a.crt, key: a.key } ]\n"
                        "      ciphers: RC4-MD5\n",
                        5, 16, "ciphers");
    expect_config_error("      certificates: [ { cert: a.crt, key: a.key } ]\n"
                        "      client_ca: a.key\n",
                        5, 18, "client_ca: ");
    expect_config_error("      certificates: [ { cert: a.crt, key: a.key } ]\n"
                        "      client_ca: a.crt\n"
                        "      client_auth: sometimes\n",
                        6, 20, "client_auth");
}

static void test_config_builds_context(void **state)
{
    (void)state;
    sl_config_t *cfg = NULL;
    sl_config_errors_t errs = {0};
    int rc = load_config("listen:\n"
                         "  - address: 127.0.0.1:8080\n"
                         "  - address: 127.0.0.1:8443\n"
                         "    tls: { certificates: [ { cert: a.crt, key: a.key }, { cert: w.crt, key: w.key } ],"
                         " min_version: '1.3' }\n"
                         "routes:\n"
                         "  - name: r\n"
                         "    match: { path_prefix: / }\n"
                         "    respond: { status: 200 }\n",
                         &cfg, &errs);
    if (rc != 0)
        sl_config_errors_print(&errs, stderr);
    assert_int_equal(rc, 0);
    assert_null(cfg->listens[0].tls.ctx);
    assert_non_null(cfg->listens[1].tls.ctx);
    assert_int_equal(cfg->listens[1].tls.min_version, SL_TLS_V1_3);
    assert_int_equal(sl_tls_ctx_select(cfg->listens[1].tls.ctx, "q.w.example", 11), 1);
    /* a connection's reference keeps the context after the generation is gone */
    sl_tls_ctx_t *held = sl_tls_ctx_ref(cfg->listens[1].tls.ctx);
    sl_config_unref(cfg);
    assert_int_equal(sl_tls_ctx_select(held, "q.w.example", 11), 1);
    sl_tls_ctx_unref(held);
    sl_config_errors_dispose(&errs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sni_selection),         cmocka_unit_test(test_cert_load_errors),
        cmocka_unit_test(test_bad_cipher_list),       cmocka_unit_test(test_config_errors_have_positions),
        cmocka_unit_test(test_config_builds_context),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
