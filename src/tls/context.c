/*
 * TLS contexts: certificates loaded and checked at config load, one SSL_CTX per TLS listener
 * per generation with the version/cipher policy, SNI selection (exact, then one-label wildcard,
 * then the first certificate), ALPN and session tickets under process-wide rotating keys. The
 * registry of live contexts feeds the certificate-expiry gauges and the doctor.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/bug.h"
#include "common/error.h"
#include "tls/internal.h"

/* Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only. TLS 1.3 suites are
 * OpenSSL's defaults (all AEAD). */
#define DEFAULT_CIPHERS                                                                                                \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"                         \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

struct sl_tls_cert {
    X509 *x509;
    EVP_PKEY *key;
    STACK_OF(X509) * chain;
    int64_t not_after;
    char **names;
    size_t nnames;
    unsigned char *ocsp; /* a DER OCSP response to staple; NULL: none */
    size_t ocsp_len;
    int64_t ocsp_next_update; /* 0 when the response names none */
};

/* ---- certificates ------------------------------------------------------------------------- */

static void set_msg(char *msg, size_t len, const char *fmt, const char *a, const char *b)
{
    snprintf(msg, len, fmt, a, b);
}

static const char *ossl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

static void add_name(sl_tls_cert_t *c, const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return;
    char *n = sl_xmalloc(len + 1);
    for (size_t i = 0; i < len; i++)
        n[i] = (char)tolower((unsigned char)s[i]);
    n[len] = '\0';
    c->names = realloc(c->names, (c->nnames + 1) * sizeof(*c->names));
    SL_BUG_ON(c->names == NULL);
    c->names[c->nnames++] = n;
}

static void collect_names(sl_tls_cert_t *c)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(c->x509, NID_subject_alt_name, NULL, NULL);
    if (sans != NULL) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
            if (g->type == GEN_DNS)
                add_name(c, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                         (size_t)ASN1_STRING_length(g->d.dNSName));
        }
        GENERAL_NAMES_free(sans);
    }
    if (c->nnames > 0)
        return;
    /* RFC 6125 §6.4.4: the CN only when there is no DNS SAN. */
    char cn[256];
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(c->x509), NID_commonName, cn, sizeof(cn));
    if (n > 0)
        add_name(c, cn, (size_t)n);
}

static int64_t asn1_to_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

int sl_tls_cert_load(const char *cert_path, const char *key_path, sl_tls_cert_t **out, enum sl_tls_cert_part *part,
                     char *msg, size_t msglen)
{
    ERR_clear_error();
    FILE *f = fopen(cert_path, "r");
    if (f == NULL) {
        *part = SL_TLS_PART_CERT;
        set_msg(msg, msglen, "cannot read certificate %s: %s", cert_path, strerror(errno));
        return SL_EINVALID;
    }
    X509 *leaf = PEM_read_X509(f, NULL, NULL, NULL);
    if (leaf == NULL) {
        fclose(f);
        *part = SL_TLS_PART_CERT;
        set_msg(msg, msglen, "%s holds no PEM certificate (%s)", cert_path, ossl_reason());
        return SL_EINVALID;
    }
    STACK_OF(X509) *chain = sk_X509_new_null();
    X509 *x;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
        sk_X509_push(chain, x);
    fclose(f);
    ERR_clear_error(); /* the loop ends on "no start line" */

    f = fopen(key_path, "r");
    if (f == NULL) {
        X509_free(leaf);
        sk_X509_pop_free(chain, X509_free);
        *part = SL_TLS_PART_KEY;
        set_msg(msg, msglen, "cannot read key %s: %s", key_path, strerror(errno));
        return SL_EINVALID;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    int rc = SL_EINVALID;
    if (key == NULL) {
        *part = SL_TLS_PART_KEY;
        set_msg(msg, msglen, "%s holds no PEM private key (%s)", key_path, ossl_reason());
    } else if (X509_check_private_key(leaf, key) != 1) {
        *part = SL_TLS_PART_KEY;
        set_msg(msg, msglen, "key %s does not match certificate %s", key_path, cert_path);
    } else if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
        /* An error, not a warning: every client would refuse it, so a reload keeps the old one. */
        char when[64];
        BIO *b = BIO_new(BIO_s_mem());
        ASN1_TIME_print(b, X509_get0_notAfter(leaf));
        int n = BIO_read(b, when, sizeof(when) - 1);
        when[n > 0 ? n : 0] = '\0';
        BIO_free(b);
        *part = SL_TLS_PART_CERT;
        set_msg(msg, msglen, "certificate %s expired on %s", cert_path, when);
    } else {
        rc = 0;
    }
    ERR_clear_error();
    if (rc != 0) {
        EVP_PKEY_free(key);
        X509_free(leaf);
        sk_X509_pop_free(chain, X509_free);
        return rc;
    }
    sl_tls_cert_t *c = sl_xcalloc(1, sizeof(*c));
    c->x509 = leaf;
    c->key = key;
    c->chain = chain;
    c->not_after = asn1_to_unix(X509_get0_notAfter(leaf));
    collect_names(c);
    *out = c;
    return 0;
}

void sl_tls_cert_free(sl_tls_cert_t *c)
{
    if (c == NULL)
        return;
    X509_free(c->x509);
    EVP_PKEY_free(c->key);
    sk_X509_pop_free(c->chain, X509_free);
    for (size_t i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
    free(c->ocsp);
    free(c);
}

/* ---- OCSP stapling ------------------------------------------------------------------------ */

static void set_msg_time(char *msg, size_t msglen, const char *fmt, const char *path, const ASN1_GENERALIZEDTIME *t)
{
    char when[64] = "?";
    BIO *b = BIO_new(BIO_s_mem());
    if (b != NULL && t != NULL && ASN1_TIME_print(b, t) == 1) {
        int n = BIO_read(b, when, sizeof(when) - 1);
        when[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    set_msg(msg, msglen, fmt, path, when);
}

int sl_tls_cert_set_ocsp(sl_tls_cert_t *c, const char *path, char *msg, size_t msglen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        set_msg(msg, msglen, "cannot read OCSP response %s: %s", path, strerror(errno));
        return SL_EINVALID;
    }
    /* A response is a few KiB; 1 MiB bounds a wrong file. */
    size_t cap = 1 << 20, len = 0;
    unsigned char *der = sl_xmalloc(cap);
    size_t n;
    while (len < cap && (n = fread(der + len, 1, cap - len, f)) > 0)
        len += n;
    bool too_big = len == cap && fgetc(f) != EOF;
    fclose(f);
    const unsigned char *p = der;
    OCSP_RESPONSE *resp = too_big ? NULL : d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    OCSP_BASICRESP *basic = resp ? OCSP_response_get1_basic(resp) : NULL;
    int rc = SL_EINVALID;
    const ASN1_GENERALIZEDTIME *next = NULL;
    if (resp == NULL || p != der + len) {
        set_msg(msg, msglen, "%s is not a DER OCSP response%s", path, too_big ? " (over 1 MiB)" : "");
    } else if (OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL || basic == NULL) {
        set_msg(msg, msglen, "OCSP response %s is not a successful one (%s)", path,
                OCSP_response_status_str(OCSP_response_status(resp)));
    } else {
        /* The single response about this certificate: matched by serial number (the issuer's
         * key hash would need the issuer, which a chain file may leave out). */
        const ASN1_INTEGER *serial = X509_get0_serialNumber(c->x509);
        int found = -1;
        for (int i = 0; i < OCSP_resp_count(basic) && found < 0; i++) {
            ASN1_INTEGER *s = NULL;
            OCSP_SINGLERESP *one = OCSP_resp_get0(basic, i);
            const OCSP_CERTID *id = OCSP_SINGLERESP_get0_id(one);
            if (OCSP_id_get0_info(NULL, NULL, NULL, &s, (OCSP_CERTID *)id) == 1 && ASN1_INTEGER_cmp(s, serial) == 0)
                found = i;
        }
        int reason;
        ASN1_GENERALIZEDTIME *rev, *thisupd, *nextupd;
        int status =
            found < 0 ? -1 : OCSP_single_get0_status(OCSP_resp_get0(basic, found), &reason, &rev, &thisupd, &nextupd);
        next = found < 0 ? NULL : nextupd;
        if (found < 0) {
            set_msg(msg, msglen, "OCSP response %s is not about this certificate%s", path, "");
        } else if (status == V_OCSP_CERTSTATUS_REVOKED) {
            set_msg_time(msg, msglen, "OCSP response %s says the certificate was revoked on %s", path, rev);
        } else if (status != V_OCSP_CERTSTATUS_GOOD) {
            set_msg(msg, msglen, "OCSP response %s does not say the certificate is good%s", path, "");
        } else if (nextupd != NULL && X509_cmp_current_time(nextupd) <= 0) {
            /* Clients reject a stale staple: refuse it, so a reload keeps the old (fresh) one. */
            set_msg_time(msg, msglen, "OCSP response %s is stale: its next update was %s", path, nextupd);
        } else {
            rc = 0;
        }
    }
    if (rc == 0) {
        free(c->ocsp);
        c->ocsp = der;
        c->ocsp_len = len;
        c->ocsp_next_update = next != NULL ? asn1_to_unix(next) : 0;
    } else {
        free(der);
    }
    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    return rc;
}

int64_t sl_tls_cert_ocsp_next_update(const sl_tls_cert_t *c)
{
    return c->ocsp != NULL ? c->ocsp_next_update : -1;
}

/* The client asked for the certificate's status: staple the response of the certificate SNI
 * chose, if it has one (OpenSSL frees the copy it is given). */
static int on_status(SSL *ssl, void *arg)
{
    const sl_tls_ctx_t *ctx = arg;
    X509 *chosen = SSL_get_certificate(ssl);
    for (size_t i = 0; i < ctx->ncerts; i++) {
        const sl_tls_cert_t *c = ctx->certs[i];
        if (c->x509 != chosen || c->ocsp == NULL)
            continue;
        unsigned char *copy = OPENSSL_malloc(c->ocsp_len);
        if (copy == NULL)
            return SSL_TLSEXT_ERR_NOACK;
        memcpy(copy, c->ocsp, c->ocsp_len);
        if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)c->ocsp_len) != 1) {
            OPENSSL_free(copy);
            return SSL_TLSEXT_ERR_NOACK;
        }
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

int64_t sl_tls_cert_not_after(const sl_tls_cert_t *c)
{
    return c->not_after;
}

size_t sl_tls_cert_nnames(const sl_tls_cert_t *c)
{
    return c->nnames;
}

const char *sl_tls_cert_name(const sl_tls_cert_t *c, size_t i)
{
    return i < c->nnames ? c->names[i] : NULL;
}

/* ---- SNI ---------------------------------------------------------------------------------- */

static bool name_eq(const char *a, const char *b, size_t blen)
{
    if (strlen(a) != blen)
        return false;
    for (size_t i = 0; i < blen; i++)
        if (a[i] != (char)tolower((unsigned char)b[i]))
            return false;
    return true;
}

size_t sl_tls_ctx_select(const sl_tls_ctx_t *ctx, const char *name, size_t len)
{
    if (name == NULL || len == 0)
        return 0;
    if (name[len - 1] == '.')
        len--; /* an absolute name */
    for (size_t i = 0; i < ctx->ncerts; i++)
        for (size_t j = 0; j < ctx->certs[i]->nnames; j++)
            if (ctx->certs[i]->names[j][0] != '*' && name_eq(ctx->certs[i]->names[j], name, len))
                return i;
    /* RFC 6125 §6.4.3: `*.example.com` covers `a.example.com`, not `example.com` or `a.b.example.com`. */
    const char *dot = memchr(name, '.', len);
    if (dot == NULL || dot == name)
        return 0;
    size_t rest = len - (size_t)(dot - name);
    for (size_t i = 0; i < ctx->ncerts; i++)
        for (size_t j = 0; j < ctx->certs[i]->nnames; j++) {
            const char *n = ctx->certs[i]->names[j];
            if (n[0] == '*' && n[1] == '.' && name_eq(n + 1, dot, rest))
                return i;
        }
    return 0;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    const sl_tls_ctx_t *ctx = arg;
    (void)alert;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    size_t i = name ? sl_tls_ctx_select(ctx, name, strlen(name)) : 0;
    if (i != 0) {
        const sl_tls_cert_t *c = ctx->certs[i];
        if (SSL_use_cert_and_key(ssl, c->x509, c->key, c->chain, 1) != 1)
            return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ---- ALPN --------------------------------------------------------------------------------- */

/* Wire format, in the server's preference order: a client offering both gets h2. */
static const unsigned char alpn_h1[] = "\x08http/1.1";
static const unsigned char alpn_h2_h1[] = "\x02h2\x08http/1.1";

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    (void)ssl;
    const unsigned char *ours = arg != NULL ? alpn_h2_h1 : alpn_h1;
    unsigned ourlen = arg != NULL ? sizeof(alpn_h2_h1) - 1 : sizeof(alpn_h1) - 1;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* speak HTTP/1.1 anyway: what a client without ALPN gets */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* ---- session tickets ---------------------------------------------------------------------- */

typedef struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t created;
} ticket_key_t;

static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static ticket_key_t ticket_keys[SL_TLS_TICKET_KEYS]; /* [0] is current */
static size_t nticket_keys;

static void ticket_rotate_locked(int64_t now)
{
    if (nticket_keys > 0 && now - ticket_keys[0].created < SL_TLS_TICKET_ROTATE_S)
        return;
    memmove(&ticket_keys[1], &ticket_keys[0], (SL_TLS_TICKET_KEYS - 1) * sizeof(ticket_key_t));
    ticket_key_t *k = &ticket_keys[0];
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
        SL_BUG_ON(1); /* no randomness: nothing sensible left to do */
    k->created = now;
    if (nticket_keys < SL_TLS_TICKET_KEYS)
        nticket_keys++;
}

static int on_ticket_key(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    (void)ssl;
    ticket_key_t k;
    int ret = 1;
    pthread_mutex_lock(&ticket_lock);
    ticket_rotate_locked((int64_t)time(NULL));
    if (enc) {
        k = ticket_keys[0];
    } else {
        size_t i = 0;
        while (i < nticket_keys && memcmp(ticket_keys[i].name, key_name, 16) != 0)
            i++;
        if (i == nticket_keys) {
            pthread_mutex_unlock(&ticket_lock);
            return 0; /* unknown or retired key: a full handshake */
        }
        k = ticket_keys[i];
        ret = i == 0 ? 1 : 2; /* 2: resume, and issue a ticket under the current key */
    }
    pthread_mutex_unlock(&ticket_lock);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    bool ok;
    if (enc) {
        ok = RAND_bytes(iv, 16) == 1;
        memcpy(key_name, k.name, 16);
        ok = ok && EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1;
    } else {
        ok = EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1;
    }
    ok = ok && EVP_MAC_CTX_set_params(hctx, params) == 1;
    /* The copy taken out of the lock must not outlive the call, on failure either. */
    OPENSSL_cleanse(&k, sizeof(k));
    return ok ? ret : -1;
}

/* ---- contexts ----------------------------------------------------------------------------- */

/* Absorbs a file's bytes into the session id context's digest: 0, or -1 when unreadable. */
static int sid_ctx_add_file(EVP_MD_CTX *md, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        EVP_DigestUpdate(md, buf, n);
    int err = ferror(f);
    fclose(f);
    return err ? -1 : 0;
}

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static sl_tls_ctx_t *live; /* every context not yet freed, newest first */
static uint64_t live_seq;

int sl_tls_ctx_create(sl_tls_cert_t **certs, size_t n, const sl_tls_options_t *o, sl_tls_ctx_t **out, char *msg,
                      size_t msglen)
{
    SL_BUG_ON(n == 0);
    SSL_CTX *ssl = SSL_CTX_new(TLS_server_method());
    SL_BUG_ON(ssl == NULL);
    int minv = o->min_version == SL_TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(ssl, minv);
    SSL_CTX_set_options(ssl, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Idle keep-alive connections should not pin 2×~17 KiB of record buffers each. */
    SSL_CTX_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    const char *ciphers = o->ciphers && o->ciphers[0] ? o->ciphers : DEFAULT_CIPHERS;
    ERR_clear_error();
    if (SSL_CTX_set_cipher_list(ssl, ciphers) != 1) {
        set_msg(msg, msglen, "ciphers: OpenSSL accepts none of %s (%s)", ciphers, ossl_reason());
        ERR_clear_error();
        SSL_CTX_free(ssl);
        for (size_t i = 0; i < n; i++)
            sl_tls_cert_free(certs[i]);
        return SL_EINVALID;
    }
    /* Stateless tickets only: a server-side cache would be per process and grow with clients. */
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ssl, 2 * SL_TLS_TICKET_ROTATE_S);
    SSL_CTX_set_num_tickets(ssl, 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ssl, on_ticket_key);
    /* The callback's argument only says which list to offer (no state behind it). */
    SSL_CTX_set_alpn_select_cb(ssl, on_alpn, o->http2 ? (void *)alpn_h2_h1 : NULL);

    /* The session id context names what a resumed session was verified against: the listener
     * and its client CA bundle (contents, mode). A ticket from another listener, or from before
     * the bundle changed, then does not resume, so it cannot carry a client certificate past a
     * listener's client_auth (tickets are keyed process-wide and survive reloads). */
    EVP_MD_CTX *sid = EVP_MD_CTX_new();
    SL_BUG_ON(sid == NULL || EVP_DigestInit_ex(sid, EVP_sha256(), NULL) != 1);
    const char *lname = o->listener_name ? o->listener_name : "";
    EVP_DigestUpdate(sid, "sluice listener\0", 16);
    EVP_DigestUpdate(sid, lname, strlen(lname) + 1);
    unsigned char mode = o->client_ca == NULL ? 0 : o->client_cert_optional ? 2 : 1;
    EVP_DigestUpdate(sid, &mode, 1);

    sl_tls_ctx_t *ctx = sl_xcalloc(1, sizeof(*ctx));
    atomic_init(&ctx->refcount, 1);
    ctx->ssl = ssl;
    ctx->certs = sl_xmalloc(n * sizeof(*ctx->certs));
    memcpy(ctx->certs, certs, n * sizeof(*ctx->certs));
    ctx->ncerts = n;
    ctx->listener = o->listener < SL_TLS_MAX_LISTENERS ? o->listener : SL_TLS_MAX_LISTENERS - 1;
    snprintf(ctx->listener_name, sizeof(ctx->listener_name), "%s", o->listener_name ? o->listener_name : "");
    const sl_tls_cert_t *d = certs[0];
    if (SSL_CTX_use_cert_and_key(ssl, d->x509, d->key, d->chain, 1) != 1) {
        snprintf(msg, msglen, "cannot use the certificate: %s", ossl_reason());
        ERR_clear_error();
        ctx->ssl = ssl;
        EVP_MD_CTX_free(sid);
        sl_tls_ctx_unref(ctx);
        return SL_EINVALID;
    }
    if (o->client_ca != NULL) {
        /* mTLS: the client's chain must end at one of these CAs; their names go in the
         * CertificateRequest so a client with several certificates can pick. */
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca);
        if (names == NULL || SSL_CTX_load_verify_locations(ssl, o->client_ca, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            set_msg(msg, msglen, "client_ca: %s holds no usable PEM CA certificate (%s)", o->client_ca, ossl_reason());
            ERR_clear_error();
            EVP_MD_CTX_free(sid);
            sl_tls_ctx_unref(ctx);
            return SL_EINVALID;
        }
        SSL_CTX_set_client_CA_list(ssl, names);
        if (sid_ctx_add_file(sid, o->client_ca) != 0) {
            set_msg(msg, msglen, "client_ca: cannot read %s%s", o->client_ca, "");
            EVP_MD_CTX_free(sid);
            sl_tls_ctx_unref(ctx);
            return SL_EINVALID;
        }
        SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | (o->client_cert_optional ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT),
                           NULL);
        SSL_CTX_set_verify_depth(ssl, 8);
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    SL_BUG_ON(EVP_DigestFinal_ex(sid, digest, &dlen) != 1);
    EVP_MD_CTX_free(sid);
    SSL_CTX_set_session_id_context(ssl, digest, dlen < SSL_MAX_SID_CTX_LENGTH ? dlen : SSL_MAX_SID_CTX_LENGTH);
    SSL_CTX_set_tlsext_servername_callback(ssl, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ssl, ctx);
    SSL_CTX_set_tlsext_status_cb(ssl, on_status);
    SSL_CTX_set_tlsext_status_arg(ssl, ctx);
    sl__tls_stats_name(ctx->listener, ctx->listener_name);
    pthread_mutex_lock(&live_lock);
    ctx->seq = ++live_seq;
    ctx->next = live;
    if (live)
        live->prev = ctx;
    live = ctx;
    ctx->linked = true;
    pthread_mutex_unlock(&live_lock);
    *out = ctx;
    return 0;
}

sl_tls_ctx_t *sl_tls_ctx_ref(sl_tls_ctx_t *ctx)
{
    atomic_fetch_add_explicit(&ctx->refcount, 1, memory_order_relaxed);
    return ctx;
}

void sl_tls_ctx_unref(sl_tls_ctx_t *ctx)
{
    if (ctx == NULL || atomic_fetch_sub_explicit(&ctx->refcount, 1, memory_order_acq_rel) != 1)
        return;
    if (ctx->linked) {
        pthread_mutex_lock(&live_lock);
        if (ctx->prev)
            ctx->prev->next = ctx->next;
        else
            live = ctx->next;
        if (ctx->next)
            ctx->next->prev = ctx->prev;
        pthread_mutex_unlock(&live_lock);
    }
    SSL_CTX_free(ctx->ssl);
    for (size_t i = 0; i < ctx->ncerts; i++)
        sl_tls_cert_free(ctx->certs[i]);
    free(ctx->certs);
    free(ctx);
}

void sl__tls_certs_read(sl_tls_cert_stats_t *cs, size_t maxc, size_t *nc)
{
    /* The newest live context of each listener is the current generation's: older ones live on
     * only while their connections do, and a failed reload's are freed before anyone reads. */
    uint64_t seen[SL_TLS_MAX_LISTENERS] = {0};
    size_t k = 0;
    pthread_mutex_lock(&live_lock);
    for (const sl_tls_ctx_t *c = live; c != NULL; c = c->next) {
        if (seen[c->listener])
            continue;
        seen[c->listener] = c->seq;
        for (size_t i = 0; i < c->ncerts && k < maxc; i++) {
            sl_tls_cert_stats_t *s = &cs[k++];
            snprintf(s->listener, sizeof(s->listener), "%s", c->listener_name);
            snprintf(s->name, sizeof(s->name), "%s", c->certs[i]->nnames ? c->certs[i]->names[0] : "");
            s->not_after = c->certs[i]->not_after;
            s->ocsp_next_update = sl_tls_cert_ocsp_next_update(c->certs[i]);
        }
    }
    pthread_mutex_unlock(&live_lock);
    *nc = k;
}
