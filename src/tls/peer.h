/*
 * The client certificate of a downstream TLS connection, as mTLS identity for the auth
 * filter's `mtls` method (docs/auth.md "mTLS"): whether the client sent one and whether it
 * verified against the listener's `client_ca`, its SHA-256 fingerprint, its subject and its
 * subjectAltName entries.
 *
 * The certificate cannot change during a connection (renegotiation is off), so everything is
 * computed on the first call for a connection and kept with it until sl_tls_conn_destroy:
 * later requests on the same connection (keep-alive, HTTP/2 streams) read the cached values.
 *
 * Memory: the cache belongs to the connection; strings returned stay valid until the
 * connection is destroyed. Threads: the connection's worker only, like the connection.
 */
#ifndef SL_TLS_PEER_H
#define SL_TLS_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls/tls.h"

#define SL_TLS_FINGERPRINT_LEN 32 /* SHA-256 of the certificate's DER encoding */
/* subjectAltName entries kept per certificate (DNS, email and URI ones; others are skipped). */
#define SL_TLS_PEER_MAX_SANS 32
/* Longest subject or SAN kept; a longer one is skipped (it could never match a config value). */
#define SL_TLS_PEER_MAX_NAME 1024

enum sl_tls_san_kind {
    SL_TLS_SAN_DNS = 1, /* lower-cased (DNS names compare without case, RFC 4343) */
    SL_TLS_SAN_EMAIL,   /* as in the certificate */
    SL_TLS_SAN_URI,     /* as in the certificate */
};

/** The client sent a certificate (during the handshake, or in the resumed session). */
bool sl_tls_peer_has_cert(sl_tls_conn_t *t);

/**
 * The client's certificate verified against the connection's listener `client_ca`: the
 * handshake's verification succeeded and, for a resumed session (whose certificate was checked
 * when the session began, maybe by another listener or config generation), the certificate
 * verifies again against this connection's trust store. False without a certificate.
 */
bool sl_tls_peer_verified(sl_tls_conn_t *t);

/** Copies the SHA-256 of the certificate's DER into `out`; false without a certificate. */
bool sl_tls_peer_fingerprint(sl_tls_conn_t *t, uint8_t out[SL_TLS_FINGERPRINT_LEN]);

/**
 * The subject as an RFC 4514 string (OpenSSL's XN_FLAG_RFC2253: most specific RDN first,
 * e.g. "CN=billing,O=Example Corp,C=US"; `openssl x509 -noout -subject -nameopt RFC2253`
 * prints the same). False without a certificate. `*s` is NUL-terminated.
 */
bool sl_tls_peer_subject(sl_tls_conn_t *t, const char **s, size_t *len);

/** The certificate's DNS, email and URI subjectAltName entries (at most SL_TLS_PEER_MAX_SANS). */
size_t sl_tls_peer_nsans(sl_tls_conn_t *t);
/** Entry `i` (< nsans), NUL-terminated, with its length and kind. */
const char *sl_tls_peer_san(sl_tls_conn_t *t, size_t i, size_t *len, enum sl_tls_san_kind *kind);

/**
 * Parses a certificate fingerprint as people write it: 64 hex digits, either case, optionally
 * with ':' between every two ("AB:CD:..."; as `openssl x509 -noout -fingerprint -sha256`
 * prints it). Returns 0 and fills `out`, or SL_EINVALID (anything else: a wrong length, a stray
 * character, colons in some places only). Pure; any thread.
 */
int sl_tls_fingerprint_parse(const char *s, size_t len, uint8_t out[SL_TLS_FINGERPRINT_LEN]);

#endif
