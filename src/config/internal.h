/*
 * Private interface of the config loader, shared by its files and by nothing outside
 * src/config/: the YAML tree with positions (yaml.c), the key-table walker (walk.c), the tables
 * (keys.c for the top level, upstream.c, route.c), value syntax (syntax.c) and the cross-checks
 * that need the whole generation (validate.c).
 */
#ifndef SL_CONFIG_INTERNAL_H
#define SL_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "config/config.h"

/* ---- the YAML tree ------------------------------------------------------------------------ */

enum sl__config_node_kind {
    SL__CONFIG_NODE_SCALAR = 1,
    SL__CONFIG_NODE_SEQ,
    SL__CONFIG_NODE_MAP,
    SL__CONFIG_NODE_ALIAS,
};

/* One YAML node, built from libfyaml's events because only events carry the positions of
 * mappings and sequences. Lives in the load's scratch arena. */
typedef struct sl__config_node sl__config_node_t;
struct sl__config_node {
    enum sl__config_node_kind kind;
    bool plain; /* an untagged plain scalar: only these can be null, booleans or numbers */
    bool dup;   /* a key already present in the same mapping: reported once, then skipped */
    sl_config_pos_t pos;
    sl_str_t text;             /* scalar value after YAML escapes; NUL-terminated (may hold NULs) */
    sl__config_node_t *target; /* ALIAS: the anchored node (always complete, so never an ancestor) */
    sl__config_node_t *first, *last, *next, *parent; /* children; a mapping alternates key, value */
    size_t count;                                    /* children (a mapping has two per pair) */
    size_t weight; /* nodes plus scalar bytes below, aliases expanded: bounds alias bombs */
};

/** Follows an alias to its node; other nodes (and NULL) come back unchanged. */
const sl__config_node_t *sl__config_node_deref(const sl__config_node_t *n);
/** A plain `~`, `null`, or nothing at all. */
bool sl__config_node_is_null(const sl__config_node_t *n);
/** The value for `key` in mapping `map` (dereferenced), or NULL. Duplicate keys are skipped. */
const sl__config_node_t *sl__config_node_map_get(const sl__config_node_t *map, const char *key);
/** The key node of `key` in `map` (for positions), or NULL. */
const sl__config_node_t *sl__config_node_map_key(const sl__config_node_t *map, const char *key);

/* ---- one load ----------------------------------------------------------------------------- */

typedef struct sl__config_route_aux {
    sl_route_conf_t *route;
    const sl__config_node_t *node; /* the route's mapping */
    bool clean;                    /* no error inside it: only clean routes take part in cross-checks */
} sl__config_route_aux_t;

typedef struct sl__config_ctx {
    sl_config_t *cfg;
    sl_config_errors_t *errs;
    sl_str_t file;
    sl_arena_t scratch; /* the tree and temporary tables; dropped when the load ends */
    size_t nerrors;     /* added by this load, including ones dropped past the cap */
    const sl__config_node_t *root;
    sl__config_route_aux_t *route_aux; /* one per route that was a mapping, in file order */
    size_t nroute_aux;
} sl__config_ctx_t;

/**
 * Parses the request keys of `hash_on` and `sticky`: `ip`, `path` (when `allow_path`),
 * `header:NAME`, `cookie:NAME` (NAME a token). Reports errors prefixed by `key` at `v`.
 * `*name` points into `s` (a NUL-terminated arena copy). Returns 0 or -1.
 */
int sl__config_parse_request_key(sl__config_ctx_t *ctx, const char *key, const sl__config_node_t *v, sl_str_t s,
                                 bool allow_path, enum sl_hash_on *on, sl_str_t *name);

/* Errors past this many are counted but dropped (one last line says how many): a broken
 * generated file must not produce megabytes of messages. */
#define SL__CONFIG_MAX_ERRORS 1000

/** Adds "message" at `n`'s position (1:1 for NULL). */
void sl__config_error(sl__config_ctx_t *ctx, const sl__config_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sl__config_error_at(sl__config_ctx_t *ctx, sl_config_pos_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Builds the tree of `data`; 0, or -1 after reporting syntax errors (`*root` is then unset). */
int sl__config_yaml_parse(sl__config_ctx_t *ctx, const char *data, size_t len, const sl__config_node_t **root);

/* ---- key tables --------------------------------------------------------------------------- */

enum sl__config_type {
    SL__CT_STR = 1,     /* sl_str_t, copied into the generation's arena */
    SL__CT_BOOL,        /* bool */
    SL__CT_U32,         /* uint32_t in [min, max] */
    SL__CT_U64,         /* uint64_t in [min, max] */
    SL__CT_DURATION,    /* uint64_t milliseconds in [min, max] */
    SL__CT_SIZE,        /* uint64_t bytes in [min, max] */
    SL__CT_ENUM,        /* int, one of `enums` */
    SL__CT_SECTION,     /* a nested mapping read with `section`, into the same base */
    SL__CT_CUSTOM,      /* `parse` reads the value */
    SL__CT_UNSUPPORTED, /* a key of a later feature: an error, so nobody believes it is active */
};

typedef struct sl__config_enum {
    const char *name;
    int value;
    bool later; /* a value of a later feature: named in the error as "not supported yet" */
} sl__config_enum_t;

typedef struct sl__config_key sl__config_key_t;
typedef struct sl__config_section sl__config_section_t;

/* Reads `value` into `field` (base + offset). Returns 0, or -1 after reporting an error. Also
 * called for defaults, with a synthetic scalar holding `dflt`. */
typedef int (*sl__config_parse_fn)(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *value,
                                   void *field);

struct sl__config_key {
    const char *name;
    enum sl__config_type type;
    size_t offset;    /* of the field in the section's base struct */
    const char *dflt; /* applied before the mapping is read, through the same parser; NULL: zero */
    bool required;
    uint64_t min, max;              /* integers, durations, sizes */
    const sl__config_enum_t *enums; /* ENUM: ends with a NULL name */
    const sl__config_section_t *section;
    sl__config_parse_fn parse;
};

#define SL__NO_POS ((size_t)-1)

struct sl__config_section {
    const char *what; /* the noun in messages: "unknown key 'x' in <what>" */
    const sl__config_key_t *keys;
    size_t nkeys;
    size_t pos_offset; /* where the mapping's sl_config_pos_t goes, or SL__NO_POS */
    /* Sets defaults that are not a key's (e.g. admin enabled). */
    void (*init)(void *base);
    /* A scalar instead of the mapping (e.g. `admin: off`): 0 if accepted, -1 to report a type
     * error. NULL: scalars are type errors. */
    int (*scalar)(sl__config_ctx_t *ctx, const sl__config_node_t *value, void *base);
    /* After the keys: checks across keys. `clean`: no error was reported inside the mapping. */
    void (*check)(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean);
    bool extension_keys; /* ignore keys starting with "x-" (a place for YAML anchors) */
};

/** Applies every default of `s` (and of its nested sections) to `base`. */
void sl__config_defaults(sl__config_ctx_t *ctx, const sl__config_section_t *s, void *base);
/** Reads mapping `map` (or, through s->scalar, a scalar) into `base`; defaults must be applied.
 * Returns 0 if no error was reported inside. */
int sl__config_walk(sl__config_ctx_t *ctx, const sl__config_section_t *s, const char *name,
                    const sl__config_node_t *map, void *base);
/** Reads sequence `seq` into a new zeroed array of `elem_size` items in the generation's arena,
 * applying defaults and `s` to each. Reports a non-sequence; `*items` is NULL when empty. */
int sl__config_walk_seq(sl__config_ctx_t *ctx, const sl__config_section_t *s, const char *name,
                        const sl__config_node_t *seq, size_t elem_size, void **items, size_t *nitems);

/* Typed readers for custom parsers: 0, or -1 after reporting "<name>: expected ...". */
int sl__config_read_str(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, sl_str_t *out);
int sl__config_read_bool(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, bool *out);
int sl__config_read_u64(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, uint64_t min, uint64_t max,
                        uint64_t *out);
/** Checks that `n` is a mapping / a sequence, reporting "<name>: expected a mapping/list". */
int sl__config_expect_map(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n);
int sl__config_expect_seq(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n);
/** Compile-checks a pcre2 pattern, reporting pcre2's message and offset at `n`. */
int sl__config_check_regex(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, sl_str_t pattern,
                           uint32_t *ncaptures);

/* The tables' entry points. */
extern const sl__config_section_t sl__config_top;
int sl__config_parse_upstreams(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field);
int sl__config_parse_routes(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field);

/* src/config/auth.c */
extern const sl__config_section_t sl__config_ip_rules_section;
extern const sl__config_section_t sl__config_acl_section;
extern const sl__config_section_t sl__config_cors_section;
int sl__config_parse_consumers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field);
int sl__config_parse_jwt_issuers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field);
int sl__config_parse_introspection(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                   void *field);
int sl__config_parse_trusted_proxies(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                     void *field);
int sl__config_parse_cors(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field);
int sl__config_parse_route_auth(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field);
/** A header field name (RFC 9110 token) into an sl_str_t (route.c). */
int sl__config_parse_header_name(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field);
/** `methods: [GET, POST]` into a uint32_t SL_METHOD_BIT set (route.c). */
int sl__config_parse_methods(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field);
/** Auth references (route → issuer / endpoint) and credentials shared by two consumers. */
void sl__config_validate_auth(sl__config_ctx_t *ctx);

/* src/config/ratelimit.c */
extern const sl__config_section_t sl__config_stores_section;
extern const sl__config_enum_t sl__config_rate_limit_headers[];
int sl__config_parse_route_rate_limits(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                       void *field);
int sl__config_parse_route_quota(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field);
int sl__config_parse_global_rate_limits(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                        void *field);

/* src/config/tls.c: a listener's `tls` mapping; loads the certificates and builds the context. */
/** A non-empty string naming a file, its position kept for the errors of loading it later
 *  (tls.c). `name` is the key as the error message names it. */
/** `path` as a file name: relative ones are relative to the config file's directory (tls.c). */
void sl__config_resolve_path(const sl__config_ctx_t *ctx, sl_str_t path, char *out, size_t size);
int sl__config_read_file_path(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, sl_str_t *out,
                              sl_config_pos_t *pos);
int sl__config_parse_listen_tls(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field);
/** Loads every TLS listener's certificates and builds its context (after the listen list). */
void sl__config_build_tls(sl__config_ctx_t *ctx);

/* src/config/cache.c */
int sl__config_parse_route_cache(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field);

/** Cross-checks over the whole generation: upstream references, duplicate route names,
 * unreachable routes, duplicate listeners. */
void sl__config_validate(sl__config_ctx_t *ctx);

/* ---- value syntax ------------------------------------------------------------------------- */

/** RFC 9110 §5.6.2 token (header names). */
bool sl__config_is_token(sl_str_t s);
/** A header field value we can send: no CR, LF or NUL (RFC 9110 §5.5). */
bool sl__config_is_field_value(sl_str_t s);
/** Headers the gateway owns on each hop, so routes may not edit them. */
bool sl__config_is_hop_by_hop(sl_str_t name);
/** DNS name syntax (RFC 1123 labels; '_' tolerated); false for a numeric last label. */
bool sl__config_is_hostname(sl_str_t s);
/** Names of routes and upstreams: they appear in metric labels and admin URLs. */
bool sl__config_is_name(sl_str_t s);
/** An environment variable name: [A-Za-z_][A-Za-z0-9_]*. */
bool sl__config_is_env_name(sl_str_t s);

enum sl__hostport_error {
    SL__HP_OK = 0,
    SL__HP_NO_PORT = -1,
    SL__HP_BAD_PORT = -2,
    SL__HP_BARE_IPV6 = -3,
    SL__HP_BAD_BRACKETS = -4,
};
/** Splits "host:port", "[v6]:port" or ":port"; `host` excludes brackets. */
int sl__config_split_hostport(sl_str_t s, sl_str_t *host, uint16_t *port, bool *bracketed);
const char *sl__config_hostport_reason(int err);
/** Fills `addr` from a numeric host (no brackets); false if it is not an IP literal. */
bool sl__config_ip_to_sockaddr(sl_str_t host, uint16_t port, struct sockaddr_storage *addr, socklen_t *len);

/** Writes `s` for a message: quoted, truncated, non-printable bytes escaped. */
const char *sl__config_quote(char *buf, size_t size, sl_str_t s);
/** "'30'", "a mapping", "a list", "null": what a node is, for "expected X, got Y". */
const char *sl__config_describe(char *buf, size_t size, const sl__config_node_t *n);
/** The shortest exact form: 90000 → "90s", 3600000 → "1h". */
const char *sl__config_format_duration(char *buf, size_t size, uint64_t ms);
/** 16384 → "16kb". */
const char *sl__config_format_size(char *buf, size_t size, uint64_t bytes);

#endif
