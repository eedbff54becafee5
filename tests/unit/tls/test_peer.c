/*
 * tls/peer.h: the fingerprint parser (both written forms, either case, and what it refuses),
 * and the client certificate facts of a real server connection: a handshake over a socketpair
 * between the engine (server side, client_ca) and a plain OpenSSL client with a certificate
 * whose SANs mix DNS (upper case), email, URI and IP entries; then one without a certificate;
 * and the consumers' `mtls` credentials as the config loads them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/error.h"
#include "config/config.h"
#include "tls/peer.h"
#include "tls/tls.h"

#include "certs.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    certs_mkdir(dir, sizeof(dir), "/tmp/sluice-unit-peer-XXXXXX");
    certs_make(dir, "srv", "srv.example", "DNS:srv.example", 30, NULL);
    /* self-signed and in the trust bundle: it verifies as its own anchor */
    certs_make(dir, "client", "client-one",
               "DNS:Client.Example,email:ops@example.test,IP:10.0.0.1,URI:spiffe://example.test/sa/one", 30, "trust");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return certs_rmdir(dir);
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void test_fingerprint_parse(void **state)
{
    (void)state;
    static const char hex[] = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    static const char colons[] =
        "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff";
    uint8_t a[32], b[32];
    assert_int_equal(sl_tls_fingerprint_parse(hex, strlen(hex), a), 0);
    assert_int_equal(sl_tls_fingerprint_parse(colons, strlen(colons), b), 0);
    assert_memory_equal(a, b, 32);
    assert_int_equal(a[0], 0x00);
    assert_int_equal(a[10], 0xaa);
    assert_int_equal(a[31], 0xff);

    char buf[128];
    const char *bad[] = {"", "00", "g0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
                         "00112233445566778899aabbccddeeff 0112233445566778899aabbccddeeff"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_tls_fingerprint_parse(bad[i], strlen(bad[i]), a), SL_EINVALID);
    assert_int_equal(strlen(bad[2]), 64);
    assert_int_equal(sl_tls_fingerprint_parse(hex, 63, a), SL_EINVALID); /* a digit short */
    snprintf(buf, sizeof(buf), "%s00", hex);                             /* a byte too many */
    assert_int_equal(sl_tls_fingerprint_parse(buf, strlen(buf), a), SL_EINVALID);
    /* colons in some places only, or one moved, or a dash instead */
    snprintf(buf, sizeof(buf), "%s", colons);
    buf[2] = '-';
    assert_int_equal(sl_tls_fingerprint_parse(buf, strlen(buf), a), SL_EINVALID);
    snprintf(buf, sizeof(buf), "%s", colons);
    buf[2] = '0', buf[3] = ':'; /* "000:1..." keeps the length, shifts a colon */
    assert_int_equal(sl_tls_fingerprint_parse(buf, strlen(buf), a), SL_EINVALID);
    snprintf(buf, sizeof(buf), "%s:", hex);
    assert_int_equal(sl_tls_fingerprint_parse(buf, strlen(buf), a), SL_EINVALID);
    /* a failed parse leaves `out` alone */
    memset(a, 0x5a, sizeof(a));
    assert_int_equal(sl_tls_fingerprint_parse("zz", 2, a), SL_EINVALID);
    assert_int_equal(a[0], 0x5a);
    assert_int_equal(sl_tls_fingerprint_parse(NULL, 0, a), SL_EINVALID);
}

/* ---- a server connection's peer ----------------------------------------------------------- */

typedef struct pair {
    uv_loop_t loop;
    uv_pipe_t pipe; /* the server's end */
    int cfd;        /* the client's end */
    sl_tls_ctx_t *ctx;
    sl_tls_conn_t *t;
    SSL_CTX *cctx;
    SSL *cli;
} pair_t;

static void handshake(pair_t *p, const char *client_cert)
{
    char trust[512];
    snprintf(trust, sizeof(trust), "%s/trust", dir);
    sl_tls_cert_t *certs[] = {certs_load(dir, "srv.crt", "srv.key")};
    sl_tls_options_t o = {.client_ca = trust, .client_cert_optional = true, .listener_name = "test"};
    char msg[256];
    assert_int_equal(sl_tls_ctx_create(certs, 1, &o, &p->ctx, msg, sizeof(msg)), 0);
    int fds[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    assert_int_equal(uv_loop_init(&p->loop), 0);
    assert_int_equal(uv_pipe_init(&p->loop, &p->pipe, 0), 0);
    assert_int_equal(uv_pipe_open(&p->pipe, fds[0]), 0);
    p->cfd = fds[1];
    /* Non-blocking, so each side's step returns when it needs the other's bytes. */
    assert_int_equal(fcntl(p->cfd, F_SETFL, fcntl(p->cfd, F_GETFL) | O_NONBLOCK), 0);
    sl_tls_conn_create(p->ctx, (uv_stream_t *)&p->pipe, &p->t);

    p->cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(p->cctx, SSL_VERIFY_NONE, NULL);
    if (client_cert != NULL) {
        char c[512], k[512];
        snprintf(c, sizeof(c), "%s/%s.crt", dir, client_cert);
        snprintf(k, sizeof(k), "%s/%s.key", dir, client_cert);
        assert_int_equal(SSL_CTX_use_certificate_file(p->cctx, c, SSL_FILETYPE_PEM), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey_file(p->cctx, k, SSL_FILETYPE_PEM), 1);
    }
    p->cli = SSL_new(p->cctx);
    SSL_set_fd(p->cli, p->cfd);
    SSL_set_connect_state(p->cli);
    /* Both sides step in turn until each has finished. */
    bool cdone = false, sdone = false;
    for (int i = 0; i < 50 && !(cdone && sdone); i++) {
        if (!cdone) {
            int r = SSL_do_handshake(p->cli);
            cdone = r == 1;
            if (r != 1)
                assert_int_equal(SSL_get_error(p->cli, r), SSL_ERROR_WANT_READ);
        }
        char buf[16384];
        ssize_t n;
        while ((n = recv(fds[0], buf, sizeof(buf), MSG_DONTWAIT)) > 0)
            sl_tls_conn_feed(p->t, buf, (size_t)n);
        int h = sl_tls_conn_handshake(p->t);
        assert_true(h >= 0);
        assert_int_equal(sl_tls_conn_flush(p->t), 0);
        sdone = h == 1;
    }
    assert_true(cdone && sdone);
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void pair_close(pair_t *p)
{
    uv_close((uv_handle_t *)&p->pipe, on_closed);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    sl_tls_conn_destroy(p->t); /* frees the peer cache with the SSL (a leak shows under ASan) */
    sl_tls_ctx_unref(p->ctx);
    assert_int_equal(uv_loop_close(&p->loop), 0);
    SSL_free(p->cli);
    SSL_CTX_free(p->cctx);
    close(p->cfd);
}

static void test_client_certificate_facts(void **state)
{
    (void)state;
    pair_t p;
    memset(&p, 0, sizeof(p));
    handshake(&p, "client");
    assert_true(sl_tls_peer_has_cert(p.t));
    assert_true(sl_tls_peer_verified(p.t));

    uint8_t fp[SL_TLS_FINGERPRINT_LEN], want[SL_TLS_FINGERPRINT_LEN];
    assert_true(sl_tls_peer_fingerprint(p.t, fp));
    char path[512];
    snprintf(path, sizeof(path), "%s/client.crt", dir);
    FILE *f = fopen(path, "r");
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    unsigned int n = 0;
    assert_int_equal(X509_digest(x, EVP_sha256(), want, &n), 1);
    X509_free(x);
    assert_memory_equal(fp, want, sizeof(fp));

    const char *s, *s2;
    size_t len, len2;
    assert_true(sl_tls_peer_subject(p.t, &s, &len));
    assert_string_equal(s, "CN=client-one");
    assert_int_equal(len, strlen("CN=client-one"));
    /* cached: the same storage on the next call */
    assert_true(sl_tls_peer_subject(p.t, &s2, &len2));
    assert_ptr_equal(s, s2);

    /* DNS lower-cased, email and URI as written, the IP entry skipped */
    assert_int_equal(sl_tls_peer_nsans(p.t), 3);
    enum sl_tls_san_kind kind;
    assert_string_equal(sl_tls_peer_san(p.t, 0, &len, &kind), "client.example");
    assert_int_equal(kind, SL_TLS_SAN_DNS);
    assert_int_equal(len, strlen("client.example"));
    assert_string_equal(sl_tls_peer_san(p.t, 1, &len, &kind), "ops@example.test");
    assert_int_equal(kind, SL_TLS_SAN_EMAIL);
    assert_string_equal(sl_tls_peer_san(p.t, 2, &len, &kind), "spiffe://example.test/sa/one");
    assert_int_equal(kind, SL_TLS_SAN_URI);
    pair_close(&p);
}

static void test_no_client_certificate(void **state)
{
    (void)state;
    pair_t p;
    memset(&p, 0, sizeof(p));
    handshake(&p, NULL);
    assert_false(sl_tls_peer_has_cert(p.t));
    assert_false(sl_tls_peer_verified(p.t));
    uint8_t fp[SL_TLS_FINGERPRINT_LEN];
    assert_false(sl_tls_peer_fingerprint(p.t, fp));
    const char *s;
    size_t len;
    assert_false(sl_tls_peer_subject(p.t, &s, &len));
    assert_int_equal(sl_tls_peer_nsans(p.t), 0);
    /* and no connection at all (plain TCP) */
    assert_false(sl_tls_peer_has_cert(NULL));
    pair_close(&p);
}

/* ---- the consumer credential in the config ------------------------------------------------ */

static int load_config(const char *yaml, sl_config_t **cfg, sl_config_errors_t *errs)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/sluice.yaml", dir);
    FILE *f = fopen(path, "w");
    fputs(yaml, f);
    fclose(f);
    return sl_config_load_file(path, cfg, errs);
}

static void test_config_credentials(void **state)
{
    (void)state;
    static const char yaml[] = "listen:\n"
                               "  - address: 127.0.0.1:8443\n"
                               "    tls: { certificates: [ { cert: srv.crt, key: srv.key } ], client_ca: trust }\n"
                               "consumers:\n"
                               "  a:\n"
                               "    mtls:\n"
                               "      - { fingerprint: \"00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
                               "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff\" }\n"
                               "      - { san: Client.Example }\n"
                               "      - { san: \"spiffe://Example.test/SA\" }\n"
                               "      - { subject: \"CN=Client One,O=Example\" }\n"
                               "routes:\n"
                               "  - { name: r, match: { path_prefix: / }, auth: [ mtls ], respond: { status: 200 } }\n";
    sl_config_t *cfg = NULL;
    sl_config_errors_t errs = {0};
    int rc = load_config(yaml, &cfg, &errs);
    if (rc != 0)
        sl_config_errors_print(&errs, stderr);
    assert_int_equal(rc, 0);
    assert_int_equal(cfg->nconsumers, 1);
    const sl_consumer_conf_t *c = &cfg->consumers[0];
    assert_int_equal(c->nmtls, 4);
    assert_int_equal(c->mtls[0].match, SL_MTLS_FINGERPRINT);
    assert_int_equal(c->mtls[0].fingerprint[0], 0x00);
    assert_int_equal(c->mtls[0].fingerprint[31], 0xff);
    assert_int_equal(c->mtls[0].pos.line, 7);
    /* a DNS name is lower-cased like the certificate's; a URI is kept as written */
    assert_int_equal(c->mtls[1].match, SL_MTLS_SAN);
    assert_string_equal(c->mtls[1].value.ptr, "client.example");
    assert_string_equal(c->mtls[2].value.ptr, "spiffe://Example.test/SA");
    assert_int_equal(c->mtls[3].match, SL_MTLS_SUBJECT);
    assert_string_equal(c->mtls[3].value.ptr, "CN=Client One,O=Example");
    assert_int_equal(cfg->routes[0].auth.methods[0].kind, SL_AUTH_MTLS);
    sl_config_unref(cfg);
    sl_config_errors_dispose(&errs);

    /* a malformed fingerprint is reported at its value */
    memset(&errs, 0, sizeof(errs));
    cfg = NULL;
    rc = load_config("listen:\n"
                     "  - address: 127.0.0.1:8443\n"
                     "    tls: { certificates: [ { cert: srv.crt, key: srv.key } ], client_ca: trust }\n"
                     "consumers:\n"
                     "  a:\n"
                     "    mtls: [ { fingerprint: abc } ]\n"
                     "routes:\n"
                     "  - { name: r, match: { path_prefix: / }, respond: { status: 200 } }\n",
                     &cfg, &errs);
    assert_int_equal(rc, SL_ECONFIG);
    assert_int_equal(errs.count, 1);
    assert_int_equal(errs.items[0].line, 6);
    assert_int_equal(errs.items[0].col, 28);
    assert_non_null(strstr(errs.items[0].message, "mtls: fingerprint: expected the SHA-256"));
    sl_config_errors_dispose(&errs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fingerprint_parse),
        cmocka_unit_test(test_client_certificate_facts),
        cmocka_unit_test(test_no_client_certificate),
        cmocka_unit_test(test_config_credentials),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
