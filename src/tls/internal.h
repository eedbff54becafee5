/*
 * Private to src/tls/: the context layout shared by context.c (building, SNI, tickets) and
 * conn.c (the per-connection engine), and the process-wide counters (stats.c).
 */
#ifndef SL_TLS_INTERNAL_H
#define SL_TLS_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include <openssl/ssl.h>

#include "tls/tls.h"

struct sl_tls_ctx {
    atomic_uint refcount;
    SSL_CTX *ssl;
    sl_tls_cert_t **certs; /* [0] is the default */
    size_t ncerts;
    unsigned listener; /* stats slot */
    char listener_name[64];
    /* the registry of live contexts (context.c) */
    uint64_t seq;
    bool linked;
    sl_tls_ctx_t *prev, *next;
};

/** Names a listener's stats slot (its address); the latest name wins. */
void sl__tls_stats_name(unsigned listener, const char *name);
/** The stats slot of a connection's listener. */
unsigned sl__tls_conn_listener(const sl_tls_conn_t *t);
/** The certificates of the newest live context of each listener. */
void sl__tls_certs_read(sl_tls_cert_stats_t *cs, size_t maxc, size_t *nc);

/** The connection's SSL (conn.c), for peer.c's mTLS identity. */
SSL *sl__tls_conn_ssl(const sl_tls_conn_t *t);

/** An upstream client context's SSL_CTX (client_ctx.c owns the context's layout; conn.c makes
 *  the connections). */
SSL_CTX *sl__tls_client_ctx_ssl(const sl_tls_client_ctx_t *c);
/** The new-session callback of every upstream client context (conn.c, beside the connection it
 *  hands sessions to). */
int sl__tls_upstream_new_session(SSL *ssl, SSL_SESSION *s);

#endif
