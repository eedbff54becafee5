/*
 * Downstream TLS (docs/tls.md): the per-listener context built from a config generation
 * (certificates chosen by SNI, the version and cipher policy, ALPN, session tickets) and the
 * per-connection engine that runs OpenSSL over memory BIOs on top of a libuv stream, so the
 * HTTP/1 server keeps its own buffers, timeouts and backpressure and only swaps the byte pump.
 *
 * Memory classes: sl_tls_ctx_t is a refcounted shared object (one per TLS listener per config
 * generation, shared by every worker; each connection holds a reference for its life, so a
 * reload's new certificates apply to new handshakes only). sl_tls_conn_t is per connection,
 * owned by the connection and destroyed after its stream's close callback.
 *
 * Threads: contexts are created and released on any thread (the config loader's); their use
 * by connections is read-only (OpenSSL's SSL_CTX is thread-safe for that). A connection is
 * touched only by its worker. Session ticket keys are process-wide, shared by every worker and
 * every generation, and rotated lazily (SL_TLS_TICKET_ROTATE_S) under a mutex taken once per
 * full handshake or resumption, never per request.
 */
#ifndef SL_TLS_TLS_H
#define SL_TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Ticket keys: a new one every hour; tickets under the two before it still resume (and get a
 * fresh ticket), so a ticket lives at most ~3 hours. */
#define SL_TLS_TICKET_ROTATE_S 3600
#define SL_TLS_TICKET_KEYS     3

/* Listeners whose counters are kept (sluice_tls_* series); later ones share the last slot. */
#define SL_TLS_MAX_LISTENERS 32
/* Certificates whose expiry is exported per listener. */
#define SL_TLS_MAX_EXPORTED_CERTS 64

enum sl_tls_version {
    SL_TLS_V1_2 = 12,
    SL_TLS_V1_3 = 13,
};

/* Why a handshake failed: the `reason` label of sluice_tls_handshake_failures_total. */
enum sl_tls_failure {
    SL_TLS_FAIL_TIMEOUT = 0, /* no complete handshake within timeouts.client_header */
    SL_TLS_FAIL_CLOSED,      /* the client closed or reset the connection mid-handshake */
    SL_TLS_FAIL_VERSION,     /* no protocol version in common (e.g. a TLS 1.1 client) */
    SL_TLS_FAIL_CIPHER,      /* no cipher suite or group in common */
    SL_TLS_FAIL_PROTOCOL,    /* not TLS at all, or a malformed handshake message */
    SL_TLS_FAIL_CERTIFICATE, /* the client rejected our certificate (alert received) */
    SL_TLS_FAIL_OTHER,
    SL_TLS_FAIL__COUNT,
};

/** The label of a failure kind ("timeout", "closed", ...). */
const char *sl_tls_failure_name(enum sl_tls_failure f);

/* ---- certificates and contexts ------------------------------------------------------------ */

typedef struct sl_tls_cert sl_tls_cert_t;
typedef struct sl_tls_ctx sl_tls_ctx_t;

enum sl_tls_cert_part {
    SL_TLS_PART_CERT = 1, /* the problem is in the certificate file */
    SL_TLS_PART_KEY,      /* ... in the key file, or the key does not match */
};

/**
 * Loads a PEM certificate chain (leaf first) and its PEM private key. Returns 0 and sets
 * `*out` (owned by the caller until handed to sl_tls_ctx_create), or SL_EINVALID with a
 * one-line reason in `msg` and the file it is about in `*part`: unreadable file, no certificate
 * or key in it (bad PEM), a key that does not match the certificate, an expired certificate.
 * Any thread.
 */
int sl_tls_cert_load(const char *cert_path, const char *key_path, sl_tls_cert_t **out, enum sl_tls_cert_part *part,
                     char *msg, size_t msglen);
void sl_tls_cert_free(sl_tls_cert_t *c);

/**
 * Attaches an OCSP response to staple (`ocsp:` in the config, a DER file as `openssl ocsp
 * -respout` writes it). Returns 0, or SL_EINVALID with a one-line reason in `msg`: unreadable,
 * not a DER OCSP response, not successful, not about this certificate (by serial number), a
 * status other than good, or past its nextUpdate. Any thread, before sl_tls_ctx_create.
 */
int sl_tls_cert_set_ocsp(sl_tls_cert_t *c, const char *path, char *msg, size_t msglen);
/** The stapled response's nextUpdate (Unix time), 0 when it names none, -1 without a staple. */
int64_t sl_tls_cert_ocsp_next_update(const sl_tls_cert_t *c);

/** Unix time the certificate stops being valid. */
int64_t sl_tls_cert_not_after(const sl_tls_cert_t *c);
/** The names it answers for (SAN DNS entries, else the subject CN), lower-case. */
size_t sl_tls_cert_nnames(const sl_tls_cert_t *c);
const char *sl_tls_cert_name(const sl_tls_cert_t *c, size_t i);

typedef struct sl_tls_options {
    enum sl_tls_version min_version; /* 0: TLS 1.2 */
    const char *ciphers;             /* TLS 1.2 cipher list (OpenSSL syntax); NULL: ECDHE with AEAD */
    const char *client_ca;           /* mTLS: CA bundle for client certificates; NULL: none asked */
    bool client_cert_optional;       /* with client_ca: a client without a certificate is let in */
    bool http2;                      /* offer h2 in ALPN (before http/1.1) */
    unsigned listener;               /* index in the config's listen list (metric slot) */
    const char *listener_name;       /* its address as written, for metric labels; copied */
} sl_tls_options_t;

/**
 * Builds a listener's context from `certs[0..n)` (n >= 1; the first is the default for
 * clients without SNI or with an unknown name). Takes ownership of every cert, on failure too.
 * Returns 0 and sets `*out` (refcount 1), or SL_EINVALID with a reason in `msg` (a cipher list
 * OpenSSL rejects). Any thread.
 */
int sl_tls_ctx_create(sl_tls_cert_t **certs, size_t n, const sl_tls_options_t *o, sl_tls_ctx_t **out, char *msg,
                      size_t msglen);
sl_tls_ctx_t *sl_tls_ctx_ref(sl_tls_ctx_t *ctx);
/** Drops a reference; the last frees the context (connections still open keep OpenSSL's). */
void sl_tls_ctx_unref(sl_tls_ctx_t *ctx);

/**
 * The certificate for server name `name` (SNI, any case): an exact name first, then a wildcard
 * `*.rest` covering exactly one more label, else the default (0). Returns its index in the
 * list given to sl_tls_ctx_create. Pure; any thread.
 */
size_t sl_tls_ctx_select(const sl_tls_ctx_t *ctx, const char *name, size_t len);

/* ---- connections -------------------------------------------------------------------------- */

typedef struct sl_tls_conn sl_tls_conn_t;

/** Server-side state for one accepted connection on `stream` (refs `ctx`). Worker thread. */
void sl_tls_conn_create(sl_tls_ctx_t *ctx, uv_stream_t *stream, sl_tls_conn_t **out);
/**
 * Client side, for the gateway's own fetches (http1/client.h): verifies the server's chain
 * against the system's trust store (or the files named by SSL_CERT_FILE / SSL_CERT_DIR) and
 * its name against `host` (a DNS name, sent as SNI, or an IP literal), TLS 1.2+, ALPN
 * http/1.1. One client context per process, made on first use. Returns 0, or SL_EINVALID when
 * the trust store cannot be loaded (then `*out` is untouched). Drive it with
 * sl_tls_conn_handshake / flush / read / write like a server connection. Owner thread.
 */
int sl_tls_client_create(uv_stream_t *stream, const char *host, sl_tls_conn_t **out);
/** Frees it; call after the stream's close callback (queued writes have been cancelled). */
void sl_tls_conn_destroy(sl_tls_conn_t *t);

/** Hands bytes read from the socket to TLS (copied). */
void sl_tls_conn_feed(sl_tls_conn_t *t, const char *p, size_t n);

/**
 * Advances the handshake with what was fed: 1 done, 0 needs more bytes, or a negative code
 * with sl_tls_conn_failure set. Queue its output with sl_tls_conn_flush.
 */
int sl_tls_conn_handshake(sl_tls_conn_t *t);
bool sl_tls_conn_handshake_done(const sl_tls_conn_t *t);
enum sl_tls_failure sl_tls_conn_failure(const sl_tls_conn_t *t);
/** Records a failure decided outside OpenSSL (a timeout, the peer closing). */
void sl_tls_conn_set_failure(sl_tls_conn_t *t, enum sl_tls_failure f);

/** Fed bytes or decrypted bytes wait to be read (a full record may be among them). */
bool sl_tls_conn_has_input(const sl_tls_conn_t *t);

/**
 * Decrypts up to `cap` bytes into `buf`: the count (> 0), 0 when a complete record is still
 * missing, SL_ECLOSED when the peer sent close_notify, or another negative code on a fatal
 * error (bad record, alert). Queue any output with sl_tls_conn_flush afterwards.
 */
int sl_tls_conn_read(sl_tls_conn_t *t, char *buf, size_t cap);
/**
 * Decrypts into dst[0..cap) as much as TLS holds, in as many reads as it takes: the bytes
 * written (0: nothing yet), or SL_ECLOSED for a close_notify before any byte, or another
 * negative code for a fatal error. `*closed` is set whenever a close_notify was read (also after
 * some bytes, which then come first): the caller remembers it, TLS does not say it twice.
 */
ssize_t sl_tls_conn_read_many(sl_tls_conn_t *t, char *dst, size_t cap, bool *closed);

/**
 * Encrypts iov[0..n) and writes it, with sl_stream_write's contract: 1 when everything went to
 * the socket now (cb will not run), 0 when the rest is queued (cb(req, status) runs once it is
 * written or failed; `req` is only handed back, never given to libuv, so its data field stays
 * the caller's), or a negative code (cb will not run). The plaintext is copied, so iov may go
 * away at once. At most one queued write with a cb at a time. A NULL cb is fire-and-forget.
 */
int sl_tls_conn_write(sl_tls_conn_t *t, uv_write_t *req, const uv_buf_t *iov, unsigned n, uv_write_cb cb);

/** Sends what TLS produced on its own (handshake, alerts, tickets): 0 or a negative code. */
int sl_tls_conn_flush(sl_tls_conn_t *t);

/** Best effort close_notify before the stream is closed; never queues. */
void sl_tls_conn_shutdown(sl_tls_conn_t *t);

/** The ALPN protocol agreed ("h2" or "http/1.1"), or "" when the client offered none. */
const char *sl_tls_conn_alpn(const sl_tls_conn_t *t);
/** The negotiated version ("TLSv1.3") and whether the session was resumed. */
const char *sl_tls_conn_version(const sl_tls_conn_t *t);
bool sl_tls_conn_resumed(const sl_tls_conn_t *t);

/* ---- figures (sluice_tls_* and the doctor) ------------------------------------------------ */

/** Worker thread: counts a finished handshake / a failed one on the conn's listener. Relaxed
 *  atomics on process-wide counters: once per connection, never per request. */
void sl_tls_count_handshake(const sl_tls_conn_t *t);
void sl_tls_count_failure(const sl_tls_conn_t *t);

typedef struct sl_tls_listener_stats {
    char name[64]; /* the listener's address as written */
    uint64_t handshakes, resumed;
    uint64_t failures[SL_TLS_FAIL__COUNT];
} sl_tls_listener_stats_t;

typedef struct sl_tls_cert_stats {
    char listener[64];
    char name[128]; /* the certificate's first name */
    int64_t not_after;
    int64_t ocsp_next_update; /* the staple's nextUpdate; 0 none named, -1 no staple */
} sl_tls_cert_stats_t;

/**
 * Counters of every listener that ever had TLS (`*nl` of them) and the certificates of the
 * newest live context of each listener (`*nc`, at most `maxc`). Any thread.
 */
void sl_tls_stats_read(sl_tls_listener_stats_t *ls, size_t maxl, size_t *nl, sl_tls_cert_stats_t *cs, size_t maxc,
                       size_t *nc);

/* ---- upstream client contexts (docs/tls.md "Upstream TLS") ----------------------------------
 * The gateway as a TLS client of its proxied upstreams. An sl_tls_client_ctx_t is built from an
 * upstream's `tls` at config load (src/config/upstream.c), refcounted, owned by the config
 * generation and shared read-only by every worker (and the health checker); each connection's
 * SSL holds OpenSSL's own reference to the SSL_CTX, so a connection outlives a reload safely.
 * Connections are sl_tls_conn_t driven exactly like the fetch client's (feed / handshake / read /
 * write / flush). Sessions for resumption are kept by the caller (one per upstream connection
 * pool, src/upstream/connpool.c) as OpenSSL SSL_SESSION references. */

typedef struct sl_tls_client_ctx sl_tls_client_ctx_t;
struct ssl_session_st; /* OpenSSL's SSL_SESSION */

/* Which file a client context's load error is about. */
enum sl_tls_client_part {
    SL_TLS_CLIENT_PART_NONE = 0, /* not about a file (e.g. the system trust store) */
    SL_TLS_CLIENT_PART_CA,
    SL_TLS_CLIENT_PART_CERT,
    SL_TLS_CLIENT_PART_KEY, /* also: the key does not match the certificate */
};

typedef struct sl_tls_client_options {
    const char *ca;                  /* PEM CA bundle path; NULL: the system trust store */
    bool verify;                     /* false: neither the chain nor the name is checked */
    const char *client_cert;         /* PEM chain, leaf first; NULL: no client certificate */
    const char *client_key;          /* PEM key of client_cert; set exactly when client_cert is */
    enum sl_tls_version min_version; /* 0: TLS 1.2 */
    bool alpn_h2;                    /* offer ALPN h2 alone (upstream `protocol: h2`), not http/1.1 */
} sl_tls_client_options_t;

/**
 * Builds a client context: verification against `ca` (or the system store) when `verify`, the
 * optional client certificate (loaded and checked against its key), TLS >= min_version, ALPN
 * http/1.1, client-side session caching through the callback of sl_tls_upstream_conn_create.
 * Returns 0 and sets `*out` (refcount 1), or SL_EINVALID with a one-line reason in `msg` and the
 * file it is about in `*part`: unreadable file, no certificate or key in it (bad PEM), a key that
 * does not match, an expired client certificate. Any thread (config load).
 */
int sl_tls_client_ctx_create(const sl_tls_client_options_t *o, sl_tls_client_ctx_t **out, enum sl_tls_client_part *part,
                             char *msg, size_t msglen);
sl_tls_client_ctx_t *sl_tls_client_ctx_ref(sl_tls_client_ctx_t *c);
/** Drops a reference; the last frees the context (open connections keep OpenSSL's). */
void sl_tls_client_ctx_unref(sl_tls_client_ctx_t *c);
/** A digest of everything the context verifies with and presents (options and the files'
 *  bytes), never 0: contexts with equal ids are interchangeable, so connection pools are keyed
 *  by it and keep their warm connections across a reload that changed nothing. Any thread. */
uint64_t sl_tls_client_ctx_id(const sl_tls_client_ctx_t *c);

/** Receives a new resumable session (one reference, now the callee's). Owner thread. */
typedef void (*sl_tls_session_cb)(void *arg, struct ssl_session_st *s);

/**
 * Client side of an upstream connection on `stream` (src/tls/conn.c): sends `sni` as server
 * name (NULL: none; RFC 6066 forbids IP literals) and, when the context verifies, checks the
 * certificate against `name` (a DNS name, or an IP literal matched against IP SANs). `resume`
 * (NULL: none) is offered for resumption; the call takes its own reference. New sessions the
 * server issues go to `on_session(arg, s)` (may be NULL). Drive the result like any
 * sl_tls_conn_t; destroy it after the stream's close callback. Owner thread.
 */
void sl_tls_upstream_conn_create(const sl_tls_client_ctx_t *ctx, uv_stream_t *stream, const char *sni, const char *name,
                                 struct ssl_session_st *resume, sl_tls_session_cb on_session, void *arg,
                                 sl_tls_conn_t **out);
/** Why the handshake (or a read) failed, for logs: "certificate verify failed: unable to get
 *  local issuer certificate", "tlsv13 alert certificate required", ... Writes at most `len`
 *  bytes (NUL included) into `buf` and returns it. */
const char *sl_tls_conn_error(const sl_tls_conn_t *t, char *buf, size_t len);
/** The detail of a failed client handshake for logs and health results, from its status:
 *  SL_EINVALID ("tls: " + sl_tls_conn_error), UV_EOF (closed during the handshake) or another
 *  libuv error. Writes at most `len` bytes (NUL included) into `buf` and returns it. */
const char *sl_tls_handshake_failure(const sl_tls_conn_t *t, int status, char *buf, size_t len);
/** Drops a session reference (NULL is ignored). */
void sl_tls_session_free(struct ssl_session_st *s);

#endif
