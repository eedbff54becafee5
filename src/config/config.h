/*
 * The typed, immutable configuration generation. sl_config_load turns a YAML file (or buffer)
 * into an sl_config_t whose every string and array lives in the generation's own arena, so the
 * whole thing is freed as a unit when the last reference goes. Once returned it is never
 * modified; threads share it read-only and hold references (sl_config_ref / sl_config_unref).
 *
 * Units: every duration is in milliseconds (uint64_t, `_ms`), every size in bytes (uint64_t).
 * Positions (`pos`) are 1-based line/column of the YAML node that declared the item, for error
 * messages of later stages (router compilation, upstream resolution).
 */
#ifndef SL_CONFIG_CONFIG_H
#define SL_CONFIG_CONFIG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "common/arena.h"
#include "common/str.h"
#include "http/method.h"

typedef struct sl_config_pos {
    uint32_t line, col;
} sl_config_pos_t;

/* ---- listeners ---------------------------------------------------------------------------- */

/* A listener's `tls` (docs/tls.md). The certificates are loaded and checked at load time;
 * `ctx` is the runtime context built from them, owned by the generation (released with it;
 * connections hold their own reference). */
typedef struct sl_tls_cert_conf {
    sl_str_t cert, key; /* paths as written (NUL-terminated); relative ones are to the config file */
    sl_str_t ocsp;      /* optional: a DER OCSP response to staple; empty: none */
    sl_config_pos_t pos, cert_pos, key_pos, ocsp_pos;
} sl_tls_cert_conf_t;

typedef struct sl_listen_tls_conf {
    bool enabled;
    sl_tls_cert_conf_t *certificates; /* the first is the default for clients without SNI */
    size_t ncertificates;
    int min_version;    /* 12 (default) or 13 */
    sl_str_t ciphers;   /* TLS 1.2 cipher list; empty: ECDHE with AEAD */
    sl_str_t client_ca; /* mTLS: PEM CA bundle client certificates must chain to; empty: off */
    int client_auth;    /* 1 required (default with client_ca), 2 optional */
    sl_config_pos_t pos, ciphers_pos, client_ca_pos;
    struct sl_tls_ctx *ctx;
} sl_listen_tls_conf_t;

typedef struct sl_listen_conf {
    sl_str_t address; /* as written, e.g. "0.0.0.0:8080" or "[::1]:8080" */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    sl_listen_tls_conf_t tls;
    /* `http2` (docs/http2.md, default true): h2 offered in ALPN on TLS, and the h2c connection
     * preface (prior knowledge) accepted on plain TCP. */
    bool http2;
    sl_config_pos_t pos;
} sl_listen_conf_t;

/* ---- upstreams ---------------------------------------------------------------------------- */

typedef struct sl_target_conf {
    sl_str_t address; /* as written: "127.0.0.1:9001", "[::1]:9001" or "users-2.internal:9001" */
    sl_str_t host;    /* NUL-terminated; without brackets */
    uint16_t port;
    bool host_is_ip; /* a literal IPv4/IPv6 address: `addr` is filled; else resolved at runtime */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t weight; /* 1..1000, default 1 */
    sl_config_pos_t pos;
} sl_target_conf_t;

/* `protocol`: how the proxy speaks to an upstream's targets (docs/grpc.md). */
enum sl_upstream_protocol {
    SL_UPSTREAM_HTTP1 = 1, /* HTTP/1.1, one request per connection at a time (default) */
    SL_UPSTREAM_H2,        /* HTTP/2: h2c prior knowledge, or ALPN h2 over tls; streams multiplexed */
};

enum sl_balance {
    SL_BALANCE_ROUND_ROBIN = 1,
    SL_BALANCE_LEAST_CONN,
    SL_BALANCE_HASH,
    SL_BALANCE_P2C_EWMA,
};

/* What `balance: hash` hashes (`hash_on`). The proxy extracts the key; an absent header or
 * cookie (an empty key) falls back to round robin. */
enum sl_hash_on {
    SL_HASH_ON_NONE = 0, /* not set: only with another balance */
    SL_HASH_ON_IP,       /* the client's IP address (the default with balance: hash) */
    SL_HASH_ON_PATH,     /* the request path, without the query */
    SL_HASH_ON_HEADER,   /* the value of request header `hash_on_name` */
    SL_HASH_ON_COOKIE,   /* the value of cookie `hash_on_name` */
};

/* What `retries.on` retries. A connect failure never reached the upstream, so it is always safe;
 * the others may repeat work the upstream already did (hence idempotent methods only). */
enum sl_retry_on {
    SL_RETRY_ON_CONNECT_FAILURE = 1 << 0, /* connect refused, unreachable or timed out */
    SL_RETRY_ON_RESET = 1 << 1,           /* closed or reset before a response head */
    SL_RETRY_ON_TIMEOUT = 1 << 2,         /* no response head within the per-try timeout */
    SL_RETRY_ON_502 = 1 << 3,
    SL_RETRY_ON_503 = 1 << 4,
    SL_RETRY_ON_504 = 1 << 5,
};

typedef struct sl_upstream_conf {
    sl_str_t name;
    sl_target_conf_t *targets;
    size_t ntargets;
    enum sl_upstream_protocol protocol; /* default http1 */
    enum sl_balance balance;            /* default round_robin */
    enum sl_hash_on hash_on;            /* set (default ip) exactly when balance is hash */
    sl_str_t hash_on_name;              /* header or cookie name of `header:NAME` / `cookie:NAME`; NUL-terminated */
    uint64_t connect_timeout_ms;        /* default 1s */
    uint64_t read_timeout_ms;           /* default 30s: between bytes of the response */
    uint64_t send_timeout_ms;           /* default 30s: a blocked write to the upstream */
    uint32_t keepalive_max_idle;        /* idle connections kept per worker per target; default 64 */
    uint64_t keepalive_idle_timeout_ms; /* default 60s */
    uint64_t dns_refresh_ms;            /* `dns_refresh`: re-resolve host-name targets; default 30s */
    /* `retries` (src/upstream/proxy.c): another try, on another target where possible, only
     * before any response byte reached the client and only for idempotent methods unless
     * `non_idempotent`. Bounded by a budget: retries <= budget_percent of recent requests. */
    struct {
        uint32_t attempts;           /* tries in all, the first included; default 2 */
        uint32_t on;                 /* SL_RETRY_ON_* bits; default connect_failure */
        uint32_t budget_percent;     /* default 20 */
        uint64_t per_try_timeout_ms; /* 0 = timeouts.read */
        uint64_t backoff_ms;         /* base of the jittered exponential backoff; default 25ms */
        bool non_idempotent;         /* also retry POST/PATCH/...; default false */
    } retries;
    /* `limits`: overload protection. Connections in use (one request each on HTTP/1.1) are
     * capped across all workers; requests past the cap wait, at most max_pending of them and
     * at most timeouts.connect long, then get upstream_overloaded. 0 = no limit. */
    struct {
        uint32_t max_connections;
        uint32_t max_pending; /* default 0: no waiting, answer at once */
    } limits;
    /* `health.active`: HTTP probes from the main thread (src/upstream/health.h). */
    struct {
        bool enabled;
        sl_str_t path;        /* default "/" ; NUL-terminated, starts with '/' */
        sl_str_t host;        /* Host header of probes; empty = the target's address */
        uint64_t interval_ms; /* default 5s */
        uint64_t timeout_ms;  /* default 1s: connect + response head */
        uint32_t healthy;     /* consecutive successes to become healthy; default 2 */
        uint32_t unhealthy;   /* consecutive failures to become unhealthy; default 3 */
        uint16_t status_min;  /* expected statuses, `statuses: 200-399` (default) or `200` */
        uint16_t status_max;
    } health_active;
    /* `health.passive`: ejection on consecutive failures seen by the proxy (src/upstream/outlier.h). */
    struct {
        bool enabled;
        uint32_t consecutive_failures; /* default 5 */
        uint64_t eject_for_ms;         /* default 30s; doubles on each repeat ejection, up to 10x */
        uint32_t max_ejected_percent;  /* default 50: never eject more than this share of targets */
    } health_passive;
    /* `circuit_breaker` (src/upstream/breaker.h), per target. */
    struct {
        bool enabled;
        double failure_ratio;        /* (0, 1]; default 0.5 */
        uint32_t min_requests;       /* in the window before the ratio counts; default 20 */
        uint64_t window_ms;          /* sliding window; default 10s */
        uint64_t open_for_ms;        /* default 30s; then half-open */
        uint32_t half_open_requests; /* probes let through while half-open; default 3 */
    } circuit_breaker;
    /* `tls` (docs/tls.md "Upstream TLS"): `tls: true` or a mapping. Files are loaded and
     * checked at load time; `ctx` is built from them, owned by the generation (released with
     * it; connections hold OpenSSL's own reference). The proxy reads `ctx` from the snapshot it
     * serves, so a reload with new file contents applies to new connections. */
    struct {
        bool enabled;
        bool verify;          /* default true; false only when written */
        sl_str_t ca;          /* PEM bundle path (NUL-terminated); empty: the system trust store */
        sl_str_t sni;         /* server name sent and verified; empty: the target's host name */
        sl_str_t client_cert; /* with client_key, or neither */
        sl_str_t client_key;
        int min_version; /* 12 (default) or 13 */
        sl_config_pos_t pos, ca_pos, cert_pos, key_pos;
        struct sl_tls_client_ctx *ctx;
    } tls;
    sl_config_pos_t pos;
    /* A 64-bit hash of the upstream's YAML subtree, canonical: key order, layout, comments,
     * aliases and quoting do not change it (but a plain null is not the quoted text); any
     * value does. A reload keeps
     * the runtime state (ejections, circuits, balancer, limits) of an upstream whose name and
     * fingerprint are unchanged (src/upstream/proxy.h); hashing the source rather than these
     * fields means a field added later can never be missed. */
    uint64_t fingerprint;
} sl_upstream_conf_t;

/* ---- routes ------------------------------------------------------------------------------- */

/* Methods a route matches are an SL_METHOD_BIT set (http/method.h). */

enum sl_header_match_kind {
    SL_HEADER_MATCH_EXACT = 1, /* value: equals, case-sensitive */
    SL_HEADER_MATCH_PRESENT,   /* present: true */
    SL_HEADER_MATCH_ABSENT,    /* present: false */
    SL_HEADER_MATCH_REGEX,     /* regex: pcre2, anchored by the author if wanted */
};

typedef struct sl_header_match_conf {
    sl_str_t name; /* NUL-terminated */
    enum sl_header_match_kind kind;
    sl_str_t value; /* exact value or regex source; NUL-terminated */
    sl_config_pos_t pos;
} sl_header_match_conf_t;

typedef struct sl_route_match_conf {
    sl_str_t *hosts;      /* exact ("api.example.com") or leading wildcard ("*.example.com"); lowercased */
    size_t nhosts;        /* 0 = any host */
    sl_str_t path_exact;  /* at most one of the three path forms is set; none = any path */
    sl_str_t path_prefix; /* segment-agnostic byte prefix, like nginx `location /x` */
    sl_str_t path_regex;  /* pcre2 source, matched against the path without the query */
    uint32_t methods;     /* SL_METHOD_BIT set; 0 = any */
    sl_header_match_conf_t *headers;
    size_t nheaders;
    sl_config_pos_t pos;
} sl_route_match_conf_t;

typedef struct sl_header_kv_conf {
    sl_str_t name;  /* NUL-terminated, validated as a token */
    sl_str_t value; /* NUL-terminated, validated: no CR, LF or NUL */
} sl_header_kv_conf_t;

/* Header edits applied in order remove, set, add. `set` replaces every existing field of that
 * name; `add` appends one more. */
typedef struct sl_header_edits_conf {
    sl_header_kv_conf_t *set;
    size_t nset;
    sl_header_kv_conf_t *add;
    size_t nadd;
    sl_str_t *remove;
    size_t nremove;
} sl_header_edits_conf_t;

typedef struct sl_respond_conf {
    bool enabled;
    uint16_t status; /* 100..599, default 200 */
    sl_str_t body;
    sl_str_t content_type; /* default "text/plain; charset=utf-8" (application/json for echo) */
    bool echo;             /* answer with the request seen, as JSON */
} sl_respond_conf_t;

/* ---- consumers and authentication (docs/auth.md) ------------------------------------------ */

typedef struct sl_api_key_conf {
    uint8_t sha256[32]; /* of the key as the client sends it; the key itself is never stored */
    sl_config_pos_t pos;
} sl_api_key_conf_t;

typedef struct sl_basic_cred_conf {
    sl_str_t username;      /* NUL-terminated; no ':' (RFC 7617 §2) */
    sl_str_t password_hash; /* NUL-terminated crypt(3) string: $2b$/$2y$ bcrypt, $y$ yescrypt, $6$ */
    sl_config_pos_t pos;
} sl_basic_cred_conf_t;

/* What an `mtls` credential matches in a client certificate (docs/auth.md "mTLS"). */
enum sl_mtls_match {
    SL_MTLS_FINGERPRINT = 1, /* SHA-256 of the certificate's DER */
    SL_MTLS_SUBJECT,         /* the subject as an RFC 4514 string, exactly */
    SL_MTLS_SAN,             /* one DNS, email or URI subjectAltName entry */
};

typedef struct sl_mtls_cred_conf {
    enum sl_mtls_match match;
    uint8_t fingerprint[32]; /* SL_MTLS_FINGERPRINT */
    /* SL_MTLS_SUBJECT, SL_MTLS_SAN: NUL-terminated; a SAN that is a DNS name (no ':' nor '@')
     * is lower-cased, as the certificate's DNS names are before they are compared */
    sl_str_t value;
    sl_config_pos_t pos;
} sl_mtls_cred_conf_t;

typedef struct sl_consumer_conf {
    sl_str_t name; /* the consumer id passed upstream in X-Consumer-Id */
    sl_str_t *groups;
    size_t ngroups;
    sl_api_key_conf_t *api_keys;
    size_t napi_keys;
    sl_basic_cred_conf_t *basic;
    size_t nbasic;
    sl_config_pos_t pos;
    sl_mtls_cred_conf_t *mtls; /* client certificates that identify this consumer */
    size_t nmtls;
} sl_consumer_conf_t;

/* JWS algorithms an issuer accepts, as a bit set. Bit n is the filters module's enum sl_jwt_alg
 * value n (src/filters/jwt.h: HS256 = 1 ... EdDSA = 12), so the set is passed on as is; the
 * auth filter checks the two agree at compile time. */
enum sl_jwt_alg_set {
    SL_JWT_SET_HS256 = 1u << 1,
    SL_JWT_SET_HS384 = 1u << 2,
    SL_JWT_SET_HS512 = 1u << 3,
    SL_JWT_SET_RS256 = 1u << 4,
    SL_JWT_SET_RS384 = 1u << 5,
    SL_JWT_SET_RS512 = 1u << 6,
    SL_JWT_SET_PS256 = 1u << 7,
    SL_JWT_SET_PS384 = 1u << 8,
    SL_JWT_SET_PS512 = 1u << 9,
    SL_JWT_SET_ES256 = 1u << 10,
    SL_JWT_SET_ES384 = 1u << 11,
    SL_JWT_SET_EDDSA = 1u << 12,
};

enum sl_jwt_key_source {
    SL_JWT_KEYS_JWKS_FILE = 1,
    SL_JWT_KEYS_JWKS_URL,
    SL_JWT_KEYS_PEM_FILE, /* public_key_file: one PEM public key, `algorithms` names its one alg */
    SL_JWT_KEYS_SECRET,   /* secret_env: an HMAC secret from the environment */
};

typedef struct sl_jwt_issuer_conf {
    sl_str_t name;
    sl_str_t issuer;     /* the exact `iss` required */
    sl_str_t *audiences; /* one of them must be in `aud`; none = `aud` not checked */
    size_t naudiences;
    enum sl_jwt_key_source source;
    sl_str_t keys;           /* the file, URL or environment variable name, per `source`; NUL-terminated */
    uint32_t algorithms;     /* enum sl_jwt_alg_set bits; defaults per source (see docs/auth.md) */
    uint64_t leeway_ms;      /* default 30s, for exp / nbf / iat */
    sl_str_t consumer_claim; /* default "sub" */
    sl_str_t groups_claim;   /* optional: a string or list claim with the consumer's groups */
    sl_str_t *required_claims;
    size_t nrequired_claims;
    sl_header_kv_conf_t *claims_to_headers; /* name = claim, value = header sent upstream */
    size_t nclaims_to_headers;
    uint64_t jwks_refresh_ms; /* jwks_url: default 5m */
    uint64_t jwks_timeout_ms; /* jwks_url: default 5s */
    sl_config_pos_t pos;
} sl_jwt_issuer_conf_t;

typedef struct sl_introspection_conf {
    sl_str_t name;
    sl_str_t url;               /* http://host:port/path (RFC 7662 endpoint); NUL-terminated */
    sl_str_t client_id;         /* NUL-terminated */
    sl_str_t client_secret_env; /* NUL-terminated environment variable name */
    uint64_t timeout_ms;        /* default 2s */
    uint64_t cache_ttl_ms;      /* default 60s; never past the token's `exp` */
    sl_str_t consumer_field;    /* default "sub" */
    sl_config_pos_t pos;
} sl_introspection_conf_t;

enum sl_auth_kind {
    SL_AUTH_API_KEY = 1,
    SL_AUTH_BASIC,
    SL_AUTH_JWT,
    SL_AUTH_INTROSPECTION,
    SL_AUTH_MTLS, /* the verified client certificate of a TLS listener with client_ca */
};

typedef struct sl_auth_method_conf {
    enum sl_auth_kind kind;
    sl_str_t ref;     /* JWT: the issuer name; INTROSPECTION: the endpoint name */
    size_t ref_index; /* into jwt_issuers / introspection, after validation */
    sl_config_pos_t pos;
} sl_auth_method_conf_t;

typedef struct sl_route_auth_conf {
    sl_auth_method_conf_t *methods; /* any one of them identifies the consumer */
    size_t nmethods;
    bool anonymous;          /* no credentials at all is let through (bad ones never are) */
    bool hide_credentials;   /* strip the credential from the upstream request; default false */
    sl_str_t api_key_header; /* default "X-API-Key" */
    sl_str_t api_key_query;  /* default none: keys in URLs end up in logs */
    sl_str_t realm;          /* Basic realm; default "sluice" */
} sl_route_auth_conf_t;

typedef struct sl_acl_conf {
    sl_str_t *allow_groups; /* none = any identified consumer */
    size_t nallow_groups;
    sl_str_t *deny_groups;
    size_t ndeny_groups;
} sl_acl_conf_t;

typedef struct sl_cidr_conf {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t prefix; /* bits */
    uint8_t addr[16];
} sl_cidr_conf_t;

typedef struct sl_ip_rules_conf {
    sl_cidr_conf_t *allow; /* none = all (unless denied) */
    size_t nallow;
    sl_cidr_conf_t *deny; /* deny wins over allow */
    size_t ndeny;
} sl_ip_rules_conf_t;

typedef struct sl_cors_conf {
    bool enabled;
    sl_str_t *origins; /* exact origins, or "*" */
    size_t norigins;
    bool any_origin;
    uint32_t methods;  /* SL_METHOD_BIT set; default GET, HEAD, POST */
    sl_str_t *headers; /* allowed request headers; none = reflect the preflight's request */
    size_t nheaders;
    sl_str_t *expose_headers;
    size_t nexpose_headers;
    bool credentials;
    uint64_t max_age_ms; /* default 10m */
} sl_cors_conf_t;

/* ---- rate limits (docs/ratelimit.md) ------------------------------------------------------ */

/* What a limit counts per: one part, or several joined with '+' (`consumer+ip`). */
enum sl_rate_key_part {
    SL_RATE_KEY_CONSUMER = 1, /* the identified consumer; anonymous callers fall back to their IP */
    SL_RATE_KEY_IP,           /* the client address (behind trusted_proxies: from X-Forwarded-For) */
    SL_RATE_KEY_ROUTE,        /* one budget for the whole route */
    SL_RATE_KEY_HEADER,       /* the value of a request header; absent: the limit does not apply */
};

#define SL_RATE_KEY_MAX_PARTS 4

typedef struct sl_rate_limit_conf {
    sl_str_t name; /* optional (metrics label, 429 detail); NUL-terminated or empty */
    sl_str_t key;  /* as written, e.g. "consumer+ip"; part of the limit's identity */
    enum sl_rate_key_part parts[SL_RATE_KEY_MAX_PARTS];
    sl_str_t headers[SL_RATE_KEY_MAX_PARTS]; /* HEADER parts: the header name; NUL-terminated */
    size_t nparts;
    uint64_t rate;      /* requests per period, >= 1 */
    uint64_t period_ms; /* 1s, 1m, 1h or 1d */
    uint64_t burst;     /* requests admitted at once from a full budget; default rate per second, >= 1 */
    sl_config_pos_t pos;
} sl_rate_limit_conf_t;

/* A route's `quota` (docs/ratelimit.md): `limit` requests per calendar window (UTC) per key. */
enum sl_quota_period {
    SL_QUOTA_HOUR = 1,
    SL_QUOTA_DAY,
    SL_QUOTA_MONTH,
};

typedef struct sl_quota_conf {
    bool enabled;
    /* The key, name and position as for a rate limit; `rate` is the quota's limit, `burst` and
     * `period_ms` are unused (a month has no fixed length: see `period`). */
    sl_rate_limit_conf_t l;
    enum sl_quota_period period;
} sl_quota_conf_t;

/** A limit's label in headers, the 429 detail ("rate_limit:<label>") and metrics: its name, or
 *  its index ("2"; top-level limits "global-2"). Writes at most `size` bytes; returns `buf`. */
const char *sl_rate_limit_label(const sl_rate_limit_conf_t *l, size_t index, bool global, char *buf, size_t size);

/* `rate_limit_headers`: which response headers tell clients their budget. */
enum sl_rate_limit_headers {
    SL_RATE_HEADERS_BOTH = 1, /* IETF RateLimit + RateLimit-Policy, and X-RateLimit-* (default) */
    SL_RATE_HEADERS_IETF,
    SL_RATE_HEADERS_LEGACY,
    SL_RATE_HEADERS_NONE,
};

/* One entry of a route's `split`: a weighted share of the route's requests (canary,
 * blue-green). Weight 0 drains the upstream without removing it from the file. */
typedef struct sl_route_split_conf {
    sl_str_t upstream;
    size_t upstream_index; /* index into sl_config_t.upstreams */
    uint32_t weight;       /* 0..1000; at least one entry of the route is > 0 */
    sl_config_pos_t pos;
} sl_route_split_conf_t;

#define SL_ROUTE_SPLIT_MAX 16

/* A route's `cache` (docs/cache.md): an RFC 9111 shared cache in front of its upstream. */
typedef struct sl_cache_conf {
    bool enabled;                       /* the key is present */
    uint64_t ttl_ms;                    /* freshness when the origin gives none; 0 = store only what it says */
    uint64_t max_object_size;           /* bytes of body; larger responses stream through unstored (1mb) */
    uint64_t stale_if_error_ms;         /* serve stale this long past expiry when the upstream fails (0) */
    uint64_t stale_while_revalidate_ms; /* serve stale while one request revalidates (0) */
    uint32_t max_variants;              /* Vary variants kept per URL (8) */
    uint64_t lock_timeout_ms;           /* how long a coalesced miss waits for the first one (5s) */
    bool per_consumer;                  /* identified consumers get entries of their own (false) */
    sl_config_pos_t pos;
} sl_cache_conf_t;

typedef struct sl_route_conf {
    sl_str_t name;
    sl_route_match_conf_t match;
    sl_str_t upstream; /* empty when `split` or `respond` is set */
    /* Index into sl_config_t.upstreams: of `upstream`, or of split[0].upstream on a split route
     * so code that knows one upstream per route (metrics, the proxy before it picks) keeps a
     * valid index. Not meaningful on `respond` routes. */
    size_t upstream_index;
    sl_route_split_conf_t *split; /* `split`: 1..SL_ROUTE_SPLIT_MAX entries, or NULL */
    size_t nsplit;                /* 0 = not a split route */
    /* `sticky` (split routes only): what keeps a client on one upstream of the split. IP,
     * HEADER or COOKIE (never PATH); NONE = weighted random per request. */
    enum sl_hash_on sticky;
    sl_str_t sticky_name;   /* header or cookie name; NUL-terminated */
    bool strip_prefix;      /* remove match.path_prefix before forwarding */
    sl_str_t rewrite_regex; /* `rewrite: { regex, replacement }`: pcre2 substitute on the path */
    sl_str_t rewrite_replacement;
    uint64_t timeout_ms; /* whole request, all tries; 0 = none (only per-phase timeouts) */
    uint32_t priority;   /* 0..9, default 5: under overload the lowest are shed first */
    sl_respond_conf_t respond;
    sl_header_edits_conf_t request_headers;
    sl_header_edits_conf_t response_headers;
    sl_route_auth_conf_t auth; /* nmethods 0 and !anonymous: no authentication */
    bool has_acl;
    sl_acl_conf_t acl;
    bool has_ip_rules;
    sl_ip_rules_conf_t ip_rules;
    sl_cors_conf_t cors;
    sl_rate_limit_conf_t *rate_limits; /* each must admit; checked in order after the global ones */
    size_t nrate_limits;
    int rate_limit_headers; /* enum sl_rate_limit_headers; default both */
    sl_quota_conf_t quota;
    sl_cache_conf_t cache;
    sl_config_pos_t pos;
} sl_route_conf_t;

/* ---- the generation ----------------------------------------------------------------------- */

enum sl_access_log_format {
    SL_ACCESS_LOG_JSON = 1,
};

/* `stores.redis` (docs/ratelimit.md "Cluster mode"): when `enabled`, every rate limit and quota
 * of every route is decided in this Redis. Read from the first config only: a change needs a
 * restart (a reload warns and keeps the running store). */
typedef struct sl_redis_store_conf {
    bool enabled;                /* the key is present */
    sl_str_t address;            /* host:port, [v6]:port or host (port 6379); NUL-terminated */
    int on_failure;              /* 1 allow (local limits, per node; the default), 2 deny (503) */
    uint64_t connect_timeout_ms; /* default 1s */
    uint64_t command_timeout_ms; /* default 250ms */
    uint32_t slice;              /* units leased per call for hot keys; 0 (default): no leasing */
    sl_str_t key_prefix;         /* of every Redis key; default "sluice:"; NUL-terminated */
    sl_config_pos_t pos;
} sl_redis_store_conf_t;

typedef struct sl_config {
    atomic_uint refcount;
    uint64_t generation; /* set by the owner that publishes it (reload counter) */
    sl_arena_t arena;    /* owns every string and array below */
    sl_str_t path;       /* the file it came from ("<buffer>" for in-memory sources) */

    sl_listen_conf_t *listens;
    size_t nlistens;
    struct {
        sl_str_t address; /* default "127.0.0.1:8001" */
        struct sockaddr_storage addr;
        socklen_t addrlen;
        sl_str_t token_env; /* name of the env var holding the bearer token; required off loopback */
        bool enabled;       /* false with `admin: off` */
    } admin;
    uint32_t workers; /* resolved: `auto` = number of online CPUs */

    struct {
        uint64_t max_connections;  /* default 100000 */
        uint64_t max_header_bytes; /* default 16kb: request line + headers */
        uint64_t max_uri_bytes;    /* default 8kb: request target; past it 414 */
        uint64_t max_body_bytes;   /* default 10mb; 0 = unlimited */
        /* Load shedding (docs/ratelimit.md): requests in flight across workers and the worst
         * event-loop lag past which low-priority routes are refused; 0 = off. */
        uint64_t max_inflight;
        uint64_t max_loop_lag_ms;
        uint64_t cache_memory;           /* bytes every route's response cache shares (default 64mb) */
        uint32_t max_concurrent_streams; /* HTTP/2 streams open at once per connection (default 128) */
    } limits;
    struct {
        uint64_t client_header_ms; /* default 10s: from first byte to end of headers */
        uint64_t client_idle_ms;   /* default 60s: keep-alive idle */
        uint64_t client_body_ms;   /* default 60s: between body bytes from the client */
        uint64_t drain_ms;         /* default 30s */
        uint64_t tunnel_idle_ms;   /* default 1h: an upgraded (WebSocket) tunnel with no bytes either way */
    } timeouts;

    sl_upstream_conf_t *upstreams;
    size_t nupstreams;
    sl_route_conf_t *routes;
    size_t nroutes;
    sl_consumer_conf_t *consumers;
    size_t nconsumers;
    sl_jwt_issuer_conf_t *jwt_issuers;
    size_t njwt_issuers;
    sl_introspection_conf_t *introspection;
    size_t nintrospection;
    sl_ip_rules_conf_t ip_rules;     /* every route, before its own rules */
    sl_cidr_conf_t *trusted_proxies; /* X-Forwarded-For from these is believed */
    size_t ntrusted_proxies;
    /* Top-level `rate_limit`: limits every route checks before its own. Their identity does
     * not include the route, so a key's budget is shared by all routes (`key: route` aside). */
    sl_rate_limit_conf_t *rate_limits;
    size_t nrate_limits;
    struct {
        /* `stores.local.max_keys`: slots of the process-wide limiter table (default 1000000).
         * Read from the first config only: changing it needs a restart. */
        uint64_t local_max_keys;
        /* `stores.redis`: cluster mode (sl_redis_store_conf_t). */
        sl_redis_store_conf_t redis;
    } stores;

    struct {
        sl_str_t access_path; /* "stdout", "off" or a file path; default "stdout" */
        enum sl_access_log_format access_format;
        int level; /* enum sl_log_level */
    } logging;
} sl_config_t;

/* One problem found while loading; `path` is the YAML path, e.g. "routes[2].match.path_prefix". */
typedef struct sl_config_error {
    sl_str_t file;
    uint32_t line, col;
    /* Where in the document, as `routes[0].match.path_prefix` ("" when the error has no node):
     * the admin API reports it because positions in a document it built mean little to a user. */
    char path[128];
    char message[256];
} sl_config_error_t;

typedef struct sl_config_errors {
    sl_config_error_t *items; /* heap array owned by this struct; see sl_config_errors_dispose */
    size_t count;
    size_t cap;
    sl_arena_t strings; /* copies of the items' file names made by sl_config_errors_add */
} sl_config_errors_t;

/**
 * Loads and validates `path`. On success returns 0 and sets `*out` to a new generation with
 * refcount 1 (the caller owns that reference). On failure returns SL_ECONFIG (or a libuv/errno
 * code if the file cannot be read, with one error naming the file) and fills `errs` with every
 * problem found, each with a position; `*out` is untouched. `errs` must be zeroed by the caller
 * and disposed with sl_config_errors_dispose in both cases.
 */
int sl_config_load_file(const char *path, sl_config_t **out, sl_config_errors_t *errs);

/** The same from a buffer; `name` is used as the file name in errors. */
int sl_config_load_buffer(const char *name, const char *data, size_t len, sl_config_t **out, sl_config_errors_t *errs);

void sl_config_errors_dispose(sl_config_errors_t *errs);

/**
 * Appends one error (later stages, e.g. router compilation, report through this too). `file` is
 * copied into `errs`, so it may be freed after the call; `line` 0 means "no position" (the item
 * prints as "file: message"). The message is cut at 255 bytes.
 */
void sl_config_errors_add(sl_config_errors_t *errs, sl_str_t file, uint32_t line, uint32_t col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void sl_config_errors_vadd(sl_config_errors_t *errs, sl_str_t file, uint32_t line, uint32_t col, const char *fmt,
                           va_list ap);

/** Writes each error as "file:line:col: message\n" (or "file: message\n" without a position). */
void sl_config_errors_print(const sl_config_errors_t *errs, FILE *fp);

/** Takes one more reference; any thread. */
sl_config_t *sl_config_ref(sl_config_t *c);

/** Drops a reference; the last one frees the generation. Any thread. NULL is ignored. */
void sl_config_unref(sl_config_t *c);

/** Index of the upstream named `name`, or -1. */
long sl_config_find_upstream(const sl_config_t *c, sl_str_t name);

/* ---- units (also used by admin and CLI) ---------------------------------------------------- */

/** "250ms", "30s", "5m", "1h", "2d" → milliseconds. A bare number is an error (units are required). */
int sl_config_parse_duration(sl_str_t s, uint64_t *ms);
/** "512", "16kb", "10mb", "1gb" (also k/m/g, kib/mib/gib; all powers of 1024) → bytes. */
int sl_config_parse_size(sl_str_t s, uint64_t *bytes);
/** "100/s", "1000/m", "50/h", "50000/day" (units s, sec, second, m, min, minute, h, hour, d, day)
 *  → count and period in ms. SL_EINVALID for any other form, SL_ETOOBIG for a count past 2^63. */
int sl_config_parse_rate(sl_str_t s, uint64_t *count, uint64_t *period_ms);
/** "127.0.0.1:80", "[::1]:80", ":80" (= 0.0.0.0) → sockaddr. Numeric only. */
int sl_config_parse_sockaddr(sl_str_t s, struct sockaddr_storage *addr, socklen_t *len);

#endif
