/*
 * Test certificates for the tls unit tests, made with OpenSSL in a temporary directory: one
 * place for the X509 boilerplate both test files need. Include after <cmocka.h> (failures are
 * cmocka assertions). Everything here is static inline so a test that uses part of it builds
 * without unused-function warnings.
 */
#ifndef SLUICE_TESTS_UNIT_TLS_CERTS_H
#define SLUICE_TESTS_UNIT_TLS_CERTS_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls/tls.h"

/* Makes `dir` (at least 64 bytes) a fresh directory from the mkdtemp pattern `pattern`. */
static inline void certs_mkdir(char *dir, size_t cap, const char *pattern)
{
    snprintf(dir, cap, "%s", pattern);
    assert_non_null(mkdtemp(dir));
}

/* Removes `dir` and everything in it: 0, or -1 when that failed (a cmocka teardown result). */
static inline int certs_rmdir(const char *dir)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static inline void certs_add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(e);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
}

/* Writes dir/name.crt and dir/name.key: a self-signed certificate for `cn`, valid `days` days
 * (negative: expired), with the SANs `sans` ("DNS:a,IP:1.2.3.4") or none when NULL, on a fresh
 * P-256 key. With `trust` non-NULL it is also a CA (a trust
 * anchor) and is appended to the PEM file dir/trust. */
static inline void certs_make(const char *dir, const char *name, const char *cn, const char *sans, long days,
                              const char *trust)
{
    static long serial;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), ++serial);
    X509_gmtime_adj(X509_getm_notBefore(x), days < 0 ? -3 * 86400 : -60);
    X509_gmtime_adj(X509_getm_notAfter(x), days * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    if (sans != NULL)
        certs_add_ext(x, NID_subject_alt_name, sans);
    if (trust != NULL)
        certs_add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.crt", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    snprintf(path, sizeof(path), "%s/%s.key", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    if (trust != NULL) {
        snprintf(path, sizeof(path), "%s/%s", dir, trust);
        f = fopen(path, "a");
        assert_non_null(f);
        PEM_write_X509(f, x);
        fclose(f);
    }
    X509_free(x);
    EVP_PKEY_free(key);
}

/* Loads dir/cert with dir/key through the engine; a load error fails the test with its message. */
static inline sl_tls_cert_t *certs_load(const char *dir, const char *cert, const char *key)
{
    char c[512], k[512], msg[512];
    snprintf(c, sizeof(c), "%s/%s", dir, cert);
    snprintf(k, sizeof(k), "%s/%s", dir, key);
    enum sl_tls_cert_part part;
    sl_tls_cert_t *out = NULL;
    if (sl_tls_cert_load(c, k, &out, &part, msg, sizeof(msg)) != 0)
        fail_msg("%s", msg);
    return out;
}

#endif
