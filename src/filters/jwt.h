/*
 * JWT verification core: JWK Sets, JWS compact tokens (RFC 7515/7517/7518/7519/8037) and a
 * per-worker verified-token cache. A pure library: no I/O, no config, no pipeline; the auth_jwt
 * filter reads the issuer config, fetches JWKS documents and calls these functions.
 *
 * Memory and threads:
 * - A key set (sl_jwks_t) is immutable once built and reference-counted (atomic): any number of
 *   worker threads may verify against it at once while the main thread swaps in a new set.
 * - sl_jwt_verify() is thread-safe and reentrant; it allocates only through jansson (the header
 *   and claims) and OpenSSL (verification contexts) on this cold path, and frees all of it unless
 *   it hands the claims to the caller.
 * - A cache (sl_jwt_cache_t) belongs to one worker: no locks, no allocation after create.
 * - No function prints or stores a token, a key or a secret in a message.
 */
#ifndef SL_FILTERS_JWT_H
#define SL_FILTERS_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/str.h"
#include "http/cause.h"

/* JWS algorithms (RFC 7518 §3.1, RFC 8037 §3.1). `none` is deliberately not in the list. */
enum sl_jwt_alg {
    SL_JWT_ALG_UNSET = 0, /* no algorithm: never a valid token algorithm */
    SL_JWT_HS256,
    SL_JWT_HS384,
    SL_JWT_HS512,
    SL_JWT_RS256,
    SL_JWT_RS384,
    SL_JWT_RS512,
    SL_JWT_PS256,
    SL_JWT_PS384,
    SL_JWT_PS512,
    SL_JWT_ES256,
    SL_JWT_ES384,
    SL_JWT_EDDSA,
    SL_JWT_ALG__COUNT,
};

#define SL_JWT_ALG_BIT(a) (1u << (unsigned)(a))
#define SL_JWT_ALGS_HS    (SL_JWT_ALG_BIT(SL_JWT_HS256) | SL_JWT_ALG_BIT(SL_JWT_HS384) | SL_JWT_ALG_BIT(SL_JWT_HS512))
#define SL_JWT_ALGS_RS    (SL_JWT_ALG_BIT(SL_JWT_RS256) | SL_JWT_ALG_BIT(SL_JWT_RS384) | SL_JWT_ALG_BIT(SL_JWT_RS512))
#define SL_JWT_ALGS_PS    (SL_JWT_ALG_BIT(SL_JWT_PS256) | SL_JWT_ALG_BIT(SL_JWT_PS384) | SL_JWT_ALG_BIT(SL_JWT_PS512))
#define SL_JWT_ALGS_ALL   (((1u << SL_JWT_ALG__COUNT) - 1) & ~1u)

/** "RS256", …; NULL for an out-of-range value. */
const char *sl_jwt_alg_name(enum sl_jwt_alg alg);

/** Parses a JWS `alg` name (case-sensitive, RFC 7515 §4.1.1). `none` and unknown names give
 *  SL_EINVALID; `*out` is written only on success. */
int sl_jwt_alg_parse(sl_str_t name, enum sl_jwt_alg *out);

/* ---------------------------------------------------------------------------------------------
 * Key sets
 */

typedef struct sl_jwks sl_jwks_t;

#define SL_JWKS_MAX_BYTES (1u << 20) /* a JWKS document larger than this is refused */
#define SL_JWKS_MAX_KEYS  64         /* keys beyond this are skipped with a warning */

/**
 * Builds a key set from a JWK Set document (RFC 7517 §5). Keys that cannot be used (`use` other
 * than `sig`, unknown kty/crv/alg, bad base64url, wrong sizes, RSA below 2048 bits, an HMAC key
 * shorter than its hash) are skipped; the reasons, one per line ("key 2 (kid "a"): …"), are
 * written to `why` (truncated to `why_len`, NUL-terminated) when it is not NULL. A document with
 * no usable key is an error (SL_EINVALID, `why` says why). On success `*out` holds one reference.
 */
int sl_jwks_parse(const char *json, size_t len, sl_jwks_t **out, char *why, size_t why_len);

/**
 * A one-key set from a PEM public key (SubjectPublicKeyInfo: RSA, EC P-256/P-384, Ed25519), for
 * `{ public_key_file: x.pem, algorithm: RS256 }`. `alg` pins the key (NULL derives it as for a
 * JWK without `alg`); `kid` may be NULL. Errors: SL_EINVALID with a reason in `why`.
 */
int sl_jwks_from_pem(const char *pem, size_t len, const char *alg, const char *kid, sl_jwks_t **out, char *why,
                     size_t why_len);

/**
 * A one-key set from an HMAC secret given as raw bytes (`{ secret_env: NAME, algorithm: HS256 }`).
 * `alg` must be HS256/384/512 (NULL allows all three); the secret must be at least as long as the
 * hash (RFC 7518 §3.2). The bytes are copied and wiped when the set is freed.
 */
int sl_jwks_from_secret(const unsigned char *secret, size_t len, const char *alg, const char *kid, sl_jwks_t **out);

/** Takes one more reference (any thread). */
sl_jwks_t *sl_jwks_ref(sl_jwks_t *keys);

/** Drops a reference; the last one frees the set (any thread). NULL is ignored. */
void sl_jwks_unref(sl_jwks_t *keys);

/** Number of usable keys. */
size_t sl_jwks_count(const sl_jwks_t *keys);

/** Whether some key has exactly this `kid`: lets the caller decide to refetch a JWKS. */
bool sl_jwks_has_kid(const sl_jwks_t *keys, sl_str_t kid);

/** A process-unique, increasing number per built set: cache entries remember it, so replacing
 *  the key set invalidates every cached verdict made with the old one. */
uint64_t sl_jwks_generation(const sl_jwks_t *keys);

/* ---------------------------------------------------------------------------------------------
 * Verification
 */

#define SL_JWT_MAX_TOKEN 16384 /* longer tokens are jwt_malformed without being decoded */
#define SL_JWT_MAX_TRIES 4     /* keys tried for one token (same kid, or no kid) */

typedef struct sl_jwt_policy {
    const char *issuer;           /* required `iss` value; NULL: not checked */
    const char *const *audiences; /* `aud` must contain one of these; none: not checked */
    size_t naudiences;
    uint32_t allowed_algs;              /* SL_JWT_ALG_BIT set; 0 allows nothing */
    uint64_t leeway_s;                  /* clock skew tolerated on exp, nbf, iat */
    const char *const *required_claims; /* each must be present and not null */
    size_t nrequired;
    bool exp_optional; /* a token without `exp` is accepted (it still expires if it has one) */
} sl_jwt_policy_t;

enum sl_jwt_verdict {
    SL_JWT_OK = 0,
    SL_JWT_MALFORMED,
    SL_JWT_ALG_NOT_ALLOWED,
    SL_JWT_UNKNOWN_KID,
    SL_JWT_BAD_SIGNATURE,
    SL_JWT_EXPIRED,
    SL_JWT_NOT_YET_VALID,
    SL_JWT_ISSUED_IN_FUTURE,
    SL_JWT_BAD_ISSUER,
    SL_JWT_BAD_AUDIENCE,
    SL_JWT_MISSING_CLAIM,
    SL_JWT_VERDICT__COUNT,
};

/** The static detail code logged with the cause: "jwt_expired", …; "ok" for SL_JWT_OK. */
const char *sl_jwt_verdict_detail(enum sl_jwt_verdict v);

/** The DESIGN.md cause for a rejection: SL_CAUSE_AUTH_EXPIRED for jwt_expired, otherwise
 *  SL_CAUSE_AUTH_INVALID; SL_CAUSE_NONE for SL_JWT_OK. */
enum sl_cause sl_jwt_verdict_cause(enum sl_jwt_verdict v);

typedef struct sl_jwt_result {
    enum sl_jwt_verdict verdict;
    const char *detail;  /* sl_jwt_verdict_detail(verdict) */
    json_t *claims;      /* success only: the payload object, a reference the caller owns */
    uint64_t exp;        /* success only: `exp` in seconds (0 when the token has none) */
    enum sl_jwt_alg alg; /* success only: the algorithm that verified it */
} sl_jwt_result_t;

/**
 * Verifies a JWS compact token against `keys` and `policy` at time `now_s` (Unix seconds).
 * Order: size and shape, header (strict base64url, JSON object, `alg`, `crit`, `typ`), algorithm
 * allowed by the policy, key by `kid` (pinned algorithm must equal `alg`), signature, payload
 * (JSON object), then exp, nbf, iat, iss, aud, required claims.
 * Returns 0 when the token is valid: `out` is filled and `out->claims` is the caller's to
 * json_decref (or sl_jwt_result_dispose). Returns SL_EINVALID when it is rejected: only
 * `out->verdict` and `out->detail` are written, `out->claims` is set to NULL.
 * SL_JWT_UNKNOWN_KID means no key has the token's `kid`: the caller may refetch the JWKS.
 * Thread-safe; `keys` stays owned by the caller.
 */
int sl_jwt_verify(const sl_jwks_t *keys, const sl_jwt_policy_t *policy, sl_str_t token, uint64_t now_s,
                  sl_jwt_result_t *out);

/** Releases `r->claims` (idempotent). */
void sl_jwt_result_dispose(sl_jwt_result_t *r);

/**
 * Signature layer only (no claims), for payloads that are not JSON (RFC 8037's examples) and
 * for tests: header checks, key selection and signature as in sl_jwt_verify(). Returns 0 and
 * sets `*alg`, or SL_EINVALID and sets `*verdict`.
 */
int sl_jws_verify(const sl_jwks_t *keys, uint32_t allowed_algs, sl_str_t token, enum sl_jwt_alg *alg,
                  enum sl_jwt_verdict *verdict);

/** A string claim (e.g. `sub` for consumer_claim). 0 and a slice into `claims` (valid while the
 *  caller holds `claims`); SL_ENOTFOUND when absent; SL_EINVALID when not a string. */
int sl_jwt_claim_str(const json_t *claims, const char *name, sl_str_t *out);

/** A claim that is a string or an array of strings (groups, roles): up to `max` slices into
 *  `claims` in `out`, their number in `*n`. SL_ENOTFOUND when absent; SL_EINVALID when of
 *  another type or an element is not a string; SL_ETOOBIG when more than `max` (nothing written). */
int sl_jwt_claim_strs(const json_t *claims, const char *name, sl_str_t *out, size_t max, size_t *n);

/* ---------------------------------------------------------------------------------------------
 * Verified-token cache (one per worker)
 */

typedef struct sl_jwt_cache sl_jwt_cache_t;

#define SL_JWT_CACHE_WAYS 8 /* entries per set: eviction is LRU within a set */

/**
 * Creates a cache of at least `capacity` entries (rounded up to a power-of-two number of sets of
 * SL_JWT_CACHE_WAYS) holding values up to `value_max` bytes; an entry lives at most `max_ttl_s`.
 * All memory is taken here. SL_EINVALID for a zero capacity/value_max or absurd sizes.
 */
int sl_jwt_cache_create(size_t capacity, size_t value_max, uint64_t max_ttl_s, sl_jwt_cache_t **out);

/** Frees the cache (and wipes it). NULL is ignored. */
void sl_jwt_cache_destroy(sl_jwt_cache_t *c);

/**
 * Looks up a token verified earlier with key-set generation `generation`. On a hit returns 0 and
 * points `*value`/`*len` at the stored copy, valid until the next put or destroy on this cache.
 * SL_ENOTFOUND on a miss, an expired entry or an entry from another generation (those are freed).
 * The token is hashed (SHA-256); only the digest is stored.
 */
int sl_jwt_cache_get(sl_jwt_cache_t *c, sl_str_t token, uint64_t generation, uint64_t now_s, const void **value,
                     size_t *len);

/**
 * Stores a copy of `value` for `token` until min(`exp`, now + max_ttl) (`exp` 0: no token
 * expiry). Replaces an entry for the same token; otherwise takes a free, expired or stale way of
 * the set, else evicts its least recently used entry. SL_ETOOBIG when `len` > value_max;
 * SL_EINVALID when the entry would already be expired (nothing stored).
 */
int sl_jwt_cache_put(sl_jwt_cache_t *c, sl_str_t token, uint64_t generation, uint64_t exp, uint64_t now_s,
                     const void *value, size_t len);

/** Number of live entries (expired ones count until they are reused). */
size_t sl_jwt_cache_count(const sl_jwt_cache_t *c);

/** Total entry slots (capacity after rounding). */
size_t sl_jwt_cache_capacity(const sl_jwt_cache_t *c);

#endif
