/*
 * Upstream client contexts (docs/tls.md "Upstream TLS"): one SSL_CTX per TLS upstream and config
 * generation, built at load from the upstream's `tls` (trust anchors, verification, client
 * certificate, minimum version), refcounted and shared read-only by every worker. Files are read
 * into memory first so each problem names its file, and so the context's id can digest their
 * bytes: the upstream pools key on it (src/upstream/connpool.c).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/bug.h"
#include "common/error.h"
#include "tls/internal.h"
#include "tls/tls.h"

/* Larger "PEM files" are a mistake (a wrong path to some archive), not a bundle. */
#define CLIENT_FILE_MAX (16u << 20)

struct sl_tls_client_ctx {
    atomic_uint refs;
    SSL_CTX *ssl;
    uint64_t id;
};

SSL_CTX *sl__tls_client_ctx_ssl(const sl_tls_client_ctx_t *c)
{
    return c->ssl;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The whole file, NUL-terminated (`*len` without it); NULL with a reason in `msg`. */
static char *read_file(const char *what, const char *path, size_t *len, char *msg, size_t msglen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(msg, msglen, "cannot read %s file '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = sl_xmalloc(cap + 1);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        if (cap >= CLIENT_FILE_MAX) {
            snprintf(msg, msglen, "%s file '%s' is larger than %u MB: not a PEM file", what, path,
                     CLIENT_FILE_MAX >> 20);
            fclose(f);
            free(buf);
            return NULL;
        }
        cap *= 2;
        buf = sl_xrealloc(buf, cap + 1);
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed) {
        snprintf(msg, msglen, "cannot read %s file '%s'", what, path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Every certificate of a PEM bundle into the context's trust store: the count, or -1. */
static int load_ca(SSL_CTX *ssl, const char *path, const char *pem, size_t len, char *msg, size_t msglen)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    SL_BUG_ON(bio == NULL);
    X509_STORE *store = SSL_CTX_get_cert_store(ssl);
    int n = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        /* A certificate listed twice is not an error (OpenSSL 3 ignores the repeat). */
        X509_STORE_add_cert(store, x);
        X509_free(x);
        n++;
    }
    ERR_clear_error();
    BIO_free(bio);
    if (n == 0)
        snprintf(msg, msglen, "no PEM certificate in ca file '%s'", path);
    return n > 0 ? n : -1;
}

static int load_client_cert(SSL_CTX *ssl, const char *path, const char *pem, size_t len, char *msg, size_t msglen)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    SL_BUG_ON(bio == NULL);
    X509 *leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (leaf == NULL) {
        ERR_clear_error();
        BIO_free(bio);
        snprintf(msg, msglen, "no PEM certificate in client_cert file '%s'", path);
        return -1;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
        X509_free(leaf);
        BIO_free(bio);
        snprintf(msg, msglen, "client certificate '%s' has expired", path);
        return -1;
    }
    int ok = SSL_CTX_use_certificate(ssl, leaf);
    X509_free(leaf);
    X509 *x;
    while (ok == 1 && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        ok = SSL_CTX_add1_chain_cert(ssl, x) == 1 ? 1 : 0;
        X509_free(x);
    }
    ERR_clear_error();
    BIO_free(bio);
    if (ok != 1) {
        snprintf(msg, msglen, "client_cert file '%s' cannot be used (unsupported key type?)", path);
        return -1;
    }
    return 0;
}

/* A passphrase prompt would block the loader: encrypted keys are refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static int load_client_key(SSL_CTX *ssl, const char *path, const char *pem, size_t len, char *msg, size_t msglen)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    SL_BUG_ON(bio == NULL);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (k == NULL) {
        ERR_clear_error();
        snprintf(msg, msglen, "no PEM private key in client_key file '%s' (encrypted keys are not supported)", path);
        return -1;
    }
    int ok = SSL_CTX_use_PrivateKey(ssl, k);
    EVP_PKEY_free(k);
    if (ok != 1 || SSL_CTX_check_private_key(ssl) != 1) {
        ERR_clear_error();
        snprintf(msg, msglen, "client_key '%s' does not match the client certificate", path);
        return -1;
    }
    return 0;
}

int sl_tls_client_ctx_create(const sl_tls_client_options_t *o, sl_tls_client_ctx_t **out, enum sl_tls_client_part *part,
                             char *msg, size_t msglen)
{
    *part = SL_TLS_CLIENT_PART_NONE;
    SSL_CTX *ssl = SSL_CTX_new(TLS_client_method());
    SL_BUG_ON(ssl == NULL);
    SSL_CTX_set_min_proto_version(ssl, o->min_version == SL_TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION);
    /* No renegotiation: a server-initiated one would need writes from the read path. */
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION);
    static const unsigned char alpn_h1[] = "\x08http/1.1", alpn_h2[] = "\x02h2";
    if (o->alpn_h2)
        SSL_CTX_set_alpn_protos(ssl, alpn_h2, sizeof(alpn_h2) - 1);
    else
        SSL_CTX_set_alpn_protos(ssl, alpn_h1, sizeof(alpn_h1) - 1);
    /* Sessions are handed to the pool of the connection (sl__tls_upstream_new_session), never
     * looked up by OpenSSL: a client cache keyed by nothing would mix servers. */
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ssl, sl__tls_upstream_new_session);
    SSL_CTX_set_default_passwd_cb(ssl, no_passphrase);

    uint64_t id = 0xcbf29ce484222325ull;
    unsigned char flags[3] = {o->verify ? 1 : 0, o->min_version == SL_TLS_V1_3 ? 13 : 12, o->alpn_h2 ? 2 : 1};
    id = fnv(id, flags, sizeof(flags));
    char *pem;
    size_t len;
    if (o->verify) {
        SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        if (o->ca != NULL) {
            *part = SL_TLS_CLIENT_PART_CA;
            if ((pem = read_file("ca", o->ca, &len, msg, msglen)) == NULL)
                goto fail;
            int n = load_ca(ssl, o->ca, pem, len, msg, msglen);
            id = fnv(fnv(id, "ca", 3), pem, len);
            free(pem);
            if (n < 0)
                goto fail;
        } else if (SSL_CTX_set_default_verify_paths(ssl) != 1) {
            ERR_clear_error();
            snprintf(msg, msglen, "cannot load the system trust store (set `ca`)");
            goto fail;
        } else {
            id = fnv(id, "system", 7);
        }
    } else {
        SSL_CTX_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    }
    if (o->client_cert != NULL) {
        *part = SL_TLS_CLIENT_PART_CERT;
        if ((pem = read_file("client_cert", o->client_cert, &len, msg, msglen)) == NULL)
            goto fail;
        int r = load_client_cert(ssl, o->client_cert, pem, len, msg, msglen);
        id = fnv(fnv(id, "cert", 5), pem, len);
        free(pem);
        if (r != 0)
            goto fail;
        *part = SL_TLS_CLIENT_PART_KEY;
        if ((pem = read_file("client_key", o->client_key, &len, msg, msglen)) == NULL)
            goto fail;
        r = load_client_key(ssl, o->client_key, pem, len, msg, msglen);
        id = fnv(fnv(id, "key", 4), pem, len);
        OPENSSL_cleanse(pem, len);
        free(pem);
        if (r != 0)
            goto fail;
    }
    *part = SL_TLS_CLIENT_PART_NONE;
    sl_tls_client_ctx_t *c = sl_xcalloc(1, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->ssl = ssl;
    c->id = id != 0 ? id : 1;
    *out = c;
    return 0;
fail:
    SSL_CTX_free(ssl);
    return SL_EINVALID;
}

sl_tls_client_ctx_t *sl_tls_client_ctx_ref(sl_tls_client_ctx_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void sl_tls_client_ctx_unref(sl_tls_client_ctx_t *c)
{
    if (c == NULL || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    SSL_CTX_free(c->ssl);
    free(c);
}

uint64_t sl_tls_client_ctx_id(const sl_tls_client_ctx_t *c)
{
    return c->id;
}
