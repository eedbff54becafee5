/*
 * mTLS identity (tls/peer.h): what the auth filter's `mtls` method reads from a downstream
 * connection's client certificate. Everything is worked out once, on the first call for a
 * connection, and kept in the connection's SSL as ex_data, so a keep-alive connection or an
 * HTTP/2 session pays one SHA-256 and one name extraction whatever its number of requests. The
 * cache is freed with the SSL (OpenSSL calls peer_free from SSL_free in sl_tls_conn_destroy).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/str.h"
#include "tls/internal.h"
#include "tls/peer.h"

typedef struct san {
    char *s;
    size_t len;
    enum sl_tls_san_kind kind;
} san_t;

typedef struct peer {
    bool has_cert;
    bool verified;
    uint8_t fingerprint[SL_TLS_FINGERPRINT_LEN];
    char *subject; /* NULL: none (or too long to keep) */
    size_t subject_len;
    size_t nsans;
    san_t sans[SL_TLS_PEER_MAX_SANS];
} peer_t;

static pthread_once_t index_once = PTHREAD_ONCE_INIT;
static int peer_index = -1;

static void peer_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    peer_t *p = ptr;
    if (p == NULL)
        return;
    free(p->subject);
    for (size_t i = 0; i < p->nsans; i++)
        free(p->sans[i].s);
    free(p);
}

static void index_init(void)
{
    peer_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, peer_free);
    SL_BUG_ON(peer_index < 0);
}

/* A name we keep: printable ASCII up to SL_TLS_PEER_MAX_NAME (a config value never holds
 * control characters, so anything else could only ever fail to match). */
static char *dup_name(const unsigned char *p, size_t len, bool lower)
{
    if (len == 0 || len > SL_TLS_PEER_MAX_NAME)
        return NULL;
    for (size_t i = 0; i < len; i++)
        if (p[i] < 0x20 || p[i] >= 0x7f)
            return NULL;
    char *s = sl_xmalloc(len + 1);
    for (size_t i = 0; i < len; i++)
        s[i] = (char)(lower && p[i] >= 'A' && p[i] <= 'Z' ? p[i] - 'A' + 'a' : p[i]);
    s[len] = '\0';
    return s;
}

static void load_subject(peer_t *p, X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    SL_BUG_ON(b == NULL);
    if (X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        const char *data;
        long n = BIO_get_mem_data(b, &data);
        if (n > 0 && (size_t)n <= SL_TLS_PEER_MAX_NAME) {
            p->subject = sl_xmalloc((size_t)n + 1);
            memcpy(p->subject, data, (size_t)n);
            p->subject[n] = '\0';
            p->subject_len = (size_t)n;
        }
    }
    BIO_free(b);
}

static void load_sans(peer_t *p, X509 *x)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    if (names == NULL)
        return;
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && p->nsans < SL_TLS_PEER_MAX_SANS; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        enum sl_tls_san_kind kind;
        const ASN1_IA5STRING *v;
        switch (g->type) {
        case GEN_DNS:
            kind = SL_TLS_SAN_DNS, v = g->d.dNSName;
            break;
        case GEN_EMAIL:
            kind = SL_TLS_SAN_EMAIL, v = g->d.rfc822Name;
            break;
        case GEN_URI:
            kind = SL_TLS_SAN_URI, v = g->d.uniformResourceIdentifier;
            break;
        default:
            continue;
        }
        char *s = dup_name(ASN1_STRING_get0_data(v), (size_t)ASN1_STRING_length(v), kind == SL_TLS_SAN_DNS);
        if (s != NULL)
            p->sans[p->nsans++] = (san_t){s, (size_t)ASN1_STRING_length(v), kind};
    }
    GENERAL_NAMES_free(names);
}

/* A resumed session's certificate was verified when the session began: maybe by another
 * listener (tickets are process-wide and every listener has the same session id context) or
 * under another config's client_ca. Check it again against this connection's trust store. */
static bool reverify(SSL *ssl, X509 *x)
{
    X509_STORE *store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    SL_BUG_ON(vc == NULL);
    bool ok = false;
    if (store != NULL && X509_STORE_CTX_init(vc, store, x, SSL_get_peer_cert_chain(ssl)) == 1) {
        X509_STORE_CTX_set_default(vc, "ssl_client");
        X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(vc), 8);
        ok = X509_verify_cert(vc) == 1;
    }
    X509_STORE_CTX_free(vc);
    ERR_clear_error();
    return ok;
}

static const peer_t *peer_of(sl_tls_conn_t *t)
{
    /* Before the handshake there is no identity yet; nothing is cached then. */
    static const peer_t none = {.has_cert = false};
    if (t == NULL || !sl_tls_conn_handshake_done(t))
        return &none;
    pthread_once(&index_once, index_init);
    SSL *ssl = sl__tls_conn_ssl(t);
    peer_t *p = SSL_get_ex_data(ssl, peer_index);
    if (p != NULL)
        return p;
    p = sl_xcalloc(1, sizeof(*p));
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (x != NULL) {
        p->has_cert = true;
        unsigned int n = 0;
        SL_BUG_ON(X509_digest(x, EVP_sha256(), p->fingerprint, &n) != 1 || n != SL_TLS_FINGERPRINT_LEN);
        p->verified = SSL_get_verify_result(ssl) == X509_V_OK && (!SSL_session_reused(ssl) || reverify(ssl, x));
        load_subject(p, x);
        load_sans(p, x);
    }
    SL_BUG_ON(SSL_set_ex_data(ssl, peer_index, p) != 1);
    return p;
}

bool sl_tls_peer_has_cert(sl_tls_conn_t *t)
{
    return peer_of(t)->has_cert;
}

bool sl_tls_peer_verified(sl_tls_conn_t *t)
{
    const peer_t *p = peer_of(t);
    return p->has_cert && p->verified;
}

bool sl_tls_peer_fingerprint(sl_tls_conn_t *t, uint8_t out[SL_TLS_FINGERPRINT_LEN])
{
    const peer_t *p = peer_of(t);
    if (!p->has_cert)
        return false;
    memcpy(out, p->fingerprint, SL_TLS_FINGERPRINT_LEN);
    return true;
}

bool sl_tls_peer_subject(sl_tls_conn_t *t, const char **s, size_t *len)
{
    const peer_t *p = peer_of(t);
    if (p->subject == NULL)
        return false;
    *s = p->subject;
    *len = p->subject_len;
    return true;
}

size_t sl_tls_peer_nsans(sl_tls_conn_t *t)
{
    return peer_of(t)->nsans;
}

const char *sl_tls_peer_san(sl_tls_conn_t *t, size_t i, size_t *len, enum sl_tls_san_kind *kind)
{
    const peer_t *p = peer_of(t);
    SL_BUG_ON(i >= p->nsans);
    *len = p->sans[i].len;
    *kind = p->sans[i].kind;
    return p->sans[i].s;
}

int sl_tls_fingerprint_parse(const char *s, size_t len, uint8_t out[SL_TLS_FINGERPRINT_LEN])
{
    /* 64 digits, or 32 pairs with a ':' between each two: 95 characters. */
    bool colons = len == 3 * SL_TLS_FINGERPRINT_LEN - 1;
    if (s == NULL || (!colons && len != 2 * SL_TLS_FINGERPRINT_LEN))
        return SL_EINVALID;
    uint8_t b[SL_TLS_FINGERPRINT_LEN];
    size_t step = colons ? 3 : 2;
    for (size_t i = 0; i < SL_TLS_FINGERPRINT_LEN; i++) {
        const char *d = s + i * step;
        int hi = sl_hex_value(d[0]), lo = sl_hex_value(d[1]);
        if (hi < 0 || lo < 0 || (colons && i + 1 < SL_TLS_FINGERPRINT_LEN && d[2] != ':'))
            return SL_EINVALID;
        b[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out, b, sizeof(b));
    return 0;
}
