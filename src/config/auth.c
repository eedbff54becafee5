/*
 * Key tables for who may call a route: `consumers`, `jwt_issuers`, `introspection`,
 * `trusted_proxies` and the global `ip_rules` at the top level; `auth`, `acl`, `ip_rules` and
 * `cors` in a route. Secrets never appear in the file: API keys are SHA-256 digests, Basic
 * passwords crypt(3) hashes, HMAC and client secrets the names of environment variables.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "config/internal.h"
#include "tls/peer.h"

/* ---- small readers ------------------------------------------------------------------------- */

typedef bool (*str_check_fn)(sl_str_t s);

/* A list of strings into the generation's arena; `check` (may be NULL) validates each, `rule`
 * says what it wants. Duplicates are errors: a repeated entry is always a mistake. */
static int read_str_list(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, str_check_fn check,
                         const char *rule, sl_str_t **items, size_t *n)
{
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, name, v) != 0)
        return -1;
    if (v->count == 0)
        return 0;
    sl_str_t *out = sl_arena_alloc(&ctx->cfg->arena, v->count * sizeof(*out));
    size_t k = 0;
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next) {
        sl_str_t s;
        if (sl__config_read_str(ctx, name, c, &s) != 0) {
            rc = -1;
            continue;
        }
        if (check != NULL && !check(s)) {
            sl__config_error(ctx, sl__config_node_deref(c), "%s: %s is not valid (%s)", name,
                             sl__config_quote(q, sizeof(q), s), rule);
            rc = -1;
            continue;
        }
        bool dup = false;
        for (size_t i = 0; i < k && !dup; i++)
            dup = sl_str_eq(out[i], s);
        if (dup) {
            sl__config_error(ctx, sl__config_node_deref(c), "%s: %s is listed twice", name,
                             sl__config_quote(q, sizeof(q), s));
            rc = -1;
            continue;
        }
        out[k++] = s;
    }
    *items = out;
    *n = k;
    return rc;
}

static int parse_groups(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *items = NULL;
    size_t n = 0;
    int rc = read_str_list(ctx, k->name, v, sl__config_is_name, "letters, digits, '.', '_', '-'", &items, &n);
    /* groups arrays are followed by their count in every struct that has them */
    *(sl_str_t **)field = items;
    *(size_t *)((char *)field + sizeof(sl_str_t *)) = n;
    return rc;
}

static int parse_header_list(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *items = NULL;
    size_t n = 0;
    int rc = read_str_list(ctx, k->name, v, sl__config_is_token, "a header name", &items, &n);
    *(sl_str_t **)field = items;
    *(size_t *)((char *)field + sizeof(sl_str_t *)) = n;
    return rc;
}

static bool is_claim_name(sl_str_t s)
{
    return s.len > 0 && s.len <= 128 && memchr(s.ptr, '\0', s.len) == NULL;
}

static int parse_claim_list(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *items = NULL;
    size_t n = 0;
    int rc = read_str_list(ctx, k->name, v, is_claim_name, "1 to 128 characters", &items, &n);
    *(sl_str_t **)field = items;
    *(size_t *)((char *)field + sizeof(sl_str_t *)) = n;
    return rc;
}

static int parse_env_name(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    if (!sl__config_is_env_name(*out)) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v),
                         "%s: %s is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", k->name,
                         sl__config_quote(q, sizeof(q), *out));
        return -1;
    }
    return 0;
}

/* "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128). Host bits must be zero:
 * "10.1.2.3/8" is almost always a typo for something else. */
static int parse_cidr(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, sl_cidr_conf_t *out)
{
    sl_str_t s;
    if (sl__config_read_str(ctx, name, v, &s) != 0)
        return -1;
    char q[80], buf[64];
    const sl__config_node_t *d = sl__config_node_deref(v);
    const char *slash = memchr(s.ptr, '/', s.len);
    size_t alen = slash ? (size_t)(slash - s.ptr) : s.len;
    if (alen == 0 || alen >= sizeof(buf)) {
        sl__config_error(ctx, d, "%s: %s is not an IP address or CIDR block", name, sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    memcpy(buf, s.ptr, alen);
    buf[alen] = '\0';
    sl_cidr_conf_t c = {0};
    if (inet_pton(AF_INET, buf, c.addr) == 1) {
        c.family = AF_INET;
        c.prefix = 32;
    } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
        c.family = AF_INET6;
        c.prefix = 128;
    } else {
        sl__config_error(ctx, d, "%s: %s is not an IP address or CIDR block", name, sl__config_quote(q, sizeof(q), s));
        return -1;
    }
    if (slash != NULL) {
        unsigned max = c.family == AF_INET ? 32 : 128, p = 0;
        size_t i = alen + 1;
        if (i == s.len || s.len - i > 3) {
            sl__config_error(ctx, d, "%s: %s has no valid prefix length", name, sl__config_quote(q, sizeof(q), s));
            return -1;
        }
        for (; i < s.len; i++) {
            if (s.ptr[i] < '0' || s.ptr[i] > '9') {
                sl__config_error(ctx, d, "%s: %s has no valid prefix length", name, sl__config_quote(q, sizeof(q), s));
                return -1;
            }
            p = p * 10 + (unsigned)(s.ptr[i] - '0');
        }
        if (p > max) {
            sl__config_error(ctx, d, "%s: %s: the prefix length is at most %u", name, sl__config_quote(q, sizeof(q), s),
                             max);
            return -1;
        }
        c.prefix = (uint8_t)p;
    }
    size_t nbytes = c.family == AF_INET ? 4 : 16;
    for (size_t bit = c.prefix; bit < nbytes * 8; bit++) {
        if (c.addr[bit / 8] & (0x80u >> (bit % 8))) {
            sl__config_error(ctx, d, "%s: %s has bits set past its /%u prefix", name, sl__config_quote(q, sizeof(q), s),
                             c.prefix);
            return -1;
        }
    }
    *out = c;
    return 0;
}

static int read_cidr_list(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, sl_cidr_conf_t **items,
                          size_t *n)
{
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, name, v) != 0)
        return -1;
    if (v->count == 0)
        return 0;
    sl_cidr_conf_t *out = sl_arena_alloc(&ctx->cfg->arena, v->count * sizeof(*out));
    size_t k = 0;
    int rc = 0;
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next) {
        if (parse_cidr(ctx, name, c, &out[k]) == 0)
            k++;
        else
            rc = -1;
    }
    *items = out;
    *n = k;
    return rc;
}

static int parse_allow_cidrs(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_ip_rules_conf_t *r = field;
    return read_cidr_list(ctx, k->name, v, &r->allow, &r->nallow);
}

static int parse_deny_cidrs(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_ip_rules_conf_t *r = field;
    return read_cidr_list(ctx, k->name, v, &r->deny, &r->ndeny);
}

static const sl__config_key_t ip_rules_keys[] = {
    {.name = "allow", .type = SL__CT_CUSTOM, .parse = parse_allow_cidrs},
    {.name = "deny", .type = SL__CT_CUSTOM, .parse = parse_deny_cidrs},
};

const sl__config_section_t sl__config_ip_rules_section = {
    .what = "ip_rules",
    .keys = ip_rules_keys,
    .nkeys = sizeof(ip_rules_keys) / sizeof(ip_rules_keys[0]),
    .pos_offset = SL__NO_POS,
};

int sl__config_parse_trusted_proxies(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                     void *field)
{
    sl_config_t *cfg = field;
    return read_cidr_list(ctx, k->name, v, &cfg->trusted_proxies, &cfg->ntrusted_proxies);
}

/* ---- named mappings ------------------------------------------------------------------------ */

/* Reads `name: { ... }` entries of a mapping into an arena array of `size`-byte items whose
 * sl_str_t name is at offset 0 and sl_config_pos_t at `pos_offset`. */
static int read_named_map(sl__config_ctx_t *ctx, const char *what, const sl__config_node_t *v,
                          const sl__config_section_t *section, size_t size, size_t pos_offset, void **items, size_t *n)
{
    v = sl__config_node_deref(v);
    if (sl__config_expect_map(ctx, what, v) != 0)
        return -1;
    size_t cap = 0;
    for (const sl__config_node_t *kn = v->first; kn != NULL && kn->next != NULL; kn = kn->next->next)
        cap += !kn->dup;
    if (cap == 0)
        return 0;
    char *arr = sl_arena_alloc(&ctx->cfg->arena, cap * size);
    memset(arr, 0, cap * size);
    size_t count = 0;
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *kn = v->first; kn != NULL && kn->next != NULL; kn = kn->next->next) {
        if (kn->dup)
            continue;
        const sl__config_node_t *key = sl__config_node_deref(kn);
        void *item = arr + count * size;
        if (key->kind != SL__CONFIG_NODE_SCALAR || !sl__config_is_name(key->text)) {
            sl__config_error(ctx, kn, "%s: %s is not a valid name (letters, digits, '.', '_', '-'; at most 128)", what,
                             key->kind == SL__CONFIG_NODE_SCALAR ? sl__config_quote(q, sizeof(q), key->text) : "a key");
            rc = -1;
            item = sl_arena_alloc(&ctx->scratch, size); /* still read, so its own errors show */
            memset(item, 0, size);
        } else {
            *(sl_str_t *)item = sl_arena_str_dup(&ctx->cfg->arena, key->text);
            count++;
        }
        *(sl_config_pos_t *)((char *)item + pos_offset) = kn->pos;
        sl__config_defaults(ctx, section, item);
        if (sl__config_walk(ctx, section, what, kn->next, item) != 0)
            rc = -1;
    }
    *items = arr;
    *n = count;
    return rc;
}

/* ---- consumers ----------------------------------------------------------------------------- */

static int parse_sha256(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_api_key_conf_t *key = field;
    sl_str_t s;
    if (sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    bool ok = s.len == 64;
    for (size_t i = 0; ok && i < 32; i++) {
        int hi = sl_hex_value(s.ptr[2 * i]), lo = sl_hex_value(s.ptr[2 * i + 1]);
        ok = hi >= 0 && lo >= 0;
        if (ok)
            key->sha256[i] = (uint8_t)(hi << 4 | lo);
    }
    if (!ok) {
        sl__config_error(ctx, sl__config_node_deref(v),
                         "%s: expected 64 hex digits (the SHA-256 of the key: printf %%s KEY | sha256sum)", k->name);
        return -1;
    }
    return 0;
}

static const sl__config_key_t api_key_keys[] = {
    {.name = "sha256", .type = SL__CT_CUSTOM, .required = true, .parse = parse_sha256},
};

static const sl__config_section_t api_key_section = {
    .what = "api key",
    .keys = api_key_keys,
    .nkeys = sizeof(api_key_keys) / sizeof(api_key_keys[0]),
    .pos_offset = offsetof(sl_api_key_conf_t, pos),
};

static int parse_api_keys(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_consumer_conf_t *c = field;
    void *items = NULL;
    int rc = sl__config_walk_seq(ctx, &api_key_section, k->name, v, sizeof(sl_api_key_conf_t), &items, &c->napi_keys);
    c->api_keys = items;
    return rc;
}

static int parse_username(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    bool ok = out->len > 0 && out->len <= 128 && memchr(out->ptr, ':', out->len) == NULL;
    for (size_t i = 0; ok && i < out->len; i++)
        ok = (unsigned char)out->ptr[i] >= 0x20 && out->ptr[i] != 0x7f;
    if (!ok) {
        sl__config_error(ctx, sl__config_node_deref(v), "%s: 1 to 128 printable characters without ':' (RFC 7617 §2)",
                         k->name);
        return -1;
    }
    return 0;
}

static int parse_password_hash(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    static const char *const prefixes[] = {"$2b$", "$2y$", "$2a$", "$y$", "$7$", "$6$", "$5$"};
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
        if (out->len > 20 && strncmp(out->ptr, prefixes[i], strlen(prefixes[i])) == 0)
            return 0;
    sl__config_error(ctx, sl__config_node_deref(v),
                     "%s: expected a crypt(3) hash: bcrypt ($2b$/$2y$), yescrypt ($y$), scrypt ($7$) or "
                     "sha512-crypt ($6$) (e.g. mkpasswd -m bcrypt)",
                     k->name);
    return -1;
}

static const sl__config_key_t basic_keys[] = {
    {.name = "username",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_basic_cred_conf_t, username),
     .required = true,
     .parse = parse_username},
    {.name = "password_hash",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_basic_cred_conf_t, password_hash),
     .required = true,
     .parse = parse_password_hash},
};

static const sl__config_section_t basic_section = {
    .what = "basic_auth entry",
    .keys = basic_keys,
    .nkeys = sizeof(basic_keys) / sizeof(basic_keys[0]),
    .pos_offset = offsetof(sl_basic_cred_conf_t, pos),
};

static int parse_basic(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_consumer_conf_t *c = field;
    void *items = NULL;
    int rc = sl__config_walk_seq(ctx, &basic_section, k->name, v, sizeof(sl_basic_cred_conf_t), &items, &c->nbasic);
    c->basic = items;
    return rc;
}

/* An `mtls` entry names exactly one of fingerprint, subject, san: each parser claims the
 * entry, and a second claim is the mistake of putting two in one entry. */
static int mtls_claim(sl__config_ctx_t *ctx, const sl__config_node_t *v, sl_mtls_cred_conf_t *m,
                      enum sl_mtls_match match)
{
    if (m->match != 0) {
        sl__config_error(ctx, sl__config_node_deref(v),
                         "mtls: one of fingerprint, subject or san per entry (write another entry for the next)");
        return -1;
    }
    m->match = match;
    return 0;
}

static int parse_mtls_fingerprint(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                  void *field)
{
    sl_mtls_cred_conf_t *m = field;
    sl_str_t s;
    if (mtls_claim(ctx, v, m, SL_MTLS_FINGERPRINT) != 0 || sl__config_read_str(ctx, k->name, v, &s) != 0)
        return -1;
    if (sl_tls_fingerprint_parse(s.ptr, s.len, m->fingerprint) != 0) {
        sl__config_error(ctx, sl__config_node_deref(v),
                         "mtls: fingerprint: expected the SHA-256 of the certificate: 64 hex digits, with or without "
                         "':' between pairs (openssl x509 -noout -fingerprint -sha256 -in client.crt)");
        return -1;
    }
    return 0;
}

/* A printable value without control characters, at most SL_TLS_PEER_MAX_NAME bytes: longer or
 * other ones are never taken from a certificate, so they could never match. */
static bool is_cert_name(sl_str_t s)
{
    if (s.len == 0 || s.len > SL_TLS_PEER_MAX_NAME)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] < 0x20 || (unsigned char)s.ptr[i] >= 0x7f)
            return false;
    return true;
}

static int parse_mtls_subject(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_mtls_cred_conf_t *m = field;
    if (mtls_claim(ctx, v, m, SL_MTLS_SUBJECT) != 0 || sl__config_read_str(ctx, k->name, v, &m->value) != 0)
        return -1;
    if (!is_cert_name(m->value) || memchr(m->value.ptr, '=', m->value.len) == NULL) {
        sl__config_error(ctx, sl__config_node_deref(v),
                         "mtls: subject: expected an RFC 4514 name such as \"CN=billing,O=Example\" (openssl x509 "
                         "-noout -subject -nameopt RFC2253 -in client.crt)");
        return -1;
    }
    return 0;
}

static int parse_mtls_san(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_mtls_cred_conf_t *m = field;
    if (mtls_claim(ctx, v, m, SL_MTLS_SAN) != 0 || sl__config_read_str(ctx, k->name, v, &m->value) != 0)
        return -1;
    if (!is_cert_name(m->value)) {
        sl__config_error(ctx, sl__config_node_deref(v),
                         "mtls: san: expected a DNS name, an email address or a URI (printable, at most %d bytes)",
                         SL_TLS_PEER_MAX_NAME);
        return -1;
    }
    /* DNS names compare without case (RFC 4343); emails and URIs always hold '@' or ':'. The
     * value is this generation's own copy (sl__config_read_str), so it may be changed. */
    if (memchr(m->value.ptr, ':', m->value.len) == NULL && memchr(m->value.ptr, '@', m->value.len) == NULL) {
        char *low = (char *)m->value.ptr;
        for (size_t i = 0; i < m->value.len; i++)
            if (low[i] >= 'A' && low[i] <= 'Z')
                low[i] = (char)(low[i] - 'A' + 'a');
    }
    return 0;
}

static void mtls_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    const sl_mtls_cred_conf_t *m = base;
    if (clean && m->match == 0)
        sl__config_error(ctx, map, "mtls: each entry needs fingerprint, subject or san");
}

static const sl__config_key_t mtls_keys[] = {
    {.name = "fingerprint", .type = SL__CT_CUSTOM, .parse = parse_mtls_fingerprint},
    {.name = "subject", .type = SL__CT_CUSTOM, .parse = parse_mtls_subject},
    {.name = "san", .type = SL__CT_CUSTOM, .parse = parse_mtls_san},
};

static const sl__config_section_t mtls_section = {
    .what = "mtls entry",
    .keys = mtls_keys,
    .nkeys = sizeof(mtls_keys) / sizeof(mtls_keys[0]),
    .pos_offset = offsetof(sl_mtls_cred_conf_t, pos),
    .check = mtls_check,
};

static int parse_mtls(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_consumer_conf_t *c = field;
    void *items = NULL;
    int rc = sl__config_walk_seq(ctx, &mtls_section, k->name, v, sizeof(sl_mtls_cred_conf_t), &items, &c->nmtls);
    c->mtls = items;
    return rc;
}

static const sl__config_key_t consumer_keys[] = {
    {.name = "groups", .type = SL__CT_CUSTOM, .offset = offsetof(sl_consumer_conf_t, groups), .parse = parse_groups},
    {.name = "api_keys", .type = SL__CT_CUSTOM, .parse = parse_api_keys},
    {.name = "basic_auth", .type = SL__CT_CUSTOM, .parse = parse_basic},
    {.name = "mtls", .type = SL__CT_CUSTOM, .parse = parse_mtls},
};

static const sl__config_section_t consumer_section = {
    .what = "consumer",
    .keys = consumer_keys,
    .nkeys = sizeof(consumer_keys) / sizeof(consumer_keys[0]),
    .pos_offset = SL__NO_POS,
    .extension_keys = true,
};

int sl__config_parse_consumers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                               void *field)
{
    sl_config_t *cfg = field;
    void *items = NULL;
    int rc = read_named_map(ctx, k->name, v, &consumer_section, sizeof(sl_consumer_conf_t),
                            offsetof(sl_consumer_conf_t, pos), &items, &cfg->nconsumers);
    cfg->consumers = items;
    return rc;
}

/* ---- jwt_issuers --------------------------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t bit;
} alg_names[] = {
    {"HS256", SL_JWT_SET_HS256}, {"HS384", SL_JWT_SET_HS384}, {"HS512", SL_JWT_SET_HS512}, {"RS256", SL_JWT_SET_RS256},
    {"RS384", SL_JWT_SET_RS384}, {"RS512", SL_JWT_SET_RS512}, {"PS256", SL_JWT_SET_PS256}, {"PS384", SL_JWT_SET_PS384},
    {"PS512", SL_JWT_SET_PS512}, {"ES256", SL_JWT_SET_ES256}, {"ES384", SL_JWT_SET_ES384}, {"EdDSA", SL_JWT_SET_EDDSA},
};

#define HS_ALGS (SL_JWT_SET_HS256 | SL_JWT_SET_HS384 | SL_JWT_SET_HS512)

static int parse_algorithms(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    uint32_t *algs = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, k->name, v) != 0)
        return -1;
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next) {
        sl_str_t s;
        if (sl__config_read_str(ctx, k->name, c, &s) != 0) {
            rc = -1;
            continue;
        }
        uint32_t bit = 0;
        for (size_t i = 0; i < sizeof(alg_names) / sizeof(alg_names[0]) && bit == 0; i++)
            if (sl_str_eq(s, sl_str_from_cstr(alg_names[i].name)))
                bit = alg_names[i].bit;
        if (bit == 0) {
            sl__config_error(ctx, sl__config_node_deref(c),
                             "%s: unknown algorithm %s (known: HS256/384/512, RS256/384/512, PS256/384/512, "
                             "ES256, ES384, EdDSA; `none` is never accepted)",
                             k->name, sl__config_quote(q, sizeof(q), s));
            rc = -1;
        }
        *algs |= bit;
    }
    if (rc == 0 && *algs == 0) {
        sl__config_error(ctx, v, "%s: the list is empty", k->name);
        rc = -1;
    }
    return rc;
}

static int parse_url(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_str_t *out = field;
    if (sl__config_read_str(ctx, k->name, v, out) != 0)
        return -1;
    /* https:// is verified against the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR). */
    bool http = out->len > 7 && strncmp(out->ptr, "http://", 7) == 0;
    bool https = out->len > 8 && strncmp(out->ptr, "https://", 8) == 0;
    if (!http && !https) {
        char q[80];
        sl__config_error(ctx, sl__config_node_deref(v), "%s: %s: expected an http:// or https:// URL", k->name,
                         sl__config_quote(q, sizeof(q), *out));
        return -1;
    }
    return 0;
}

static int parse_claims_to_headers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                   void *field)
{
    sl_jwt_issuer_conf_t *j = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_map(ctx, k->name, v) != 0)
        return -1;
    size_t n = v->count / 2;
    if (n == 0)
        return 0;
    j->claims_to_headers = sl_arena_alloc(&ctx->cfg->arena, n * sizeof(*j->claims_to_headers));
    int rc = 0;
    char q[80];
    for (const sl__config_node_t *kn = v->first; kn != NULL && kn->next != NULL; kn = kn->next->next) {
        sl_str_t claim, header;
        if (kn->dup || sl__config_read_str(ctx, k->name, kn, &claim) != 0 ||
            sl__config_read_str(ctx, k->name, kn->next, &header) != 0) {
            rc = -1;
            continue;
        }
        if (!is_claim_name(claim) || !sl__config_is_token(header) || sl__config_is_hop_by_hop(header)) {
            sl__config_error(ctx, sl__config_node_deref(kn->next), "%s: %s: expected a claim name mapped to a header",
                             k->name, sl__config_quote(q, sizeof(q), header));
            rc = -1;
            continue;
        }
        j->claims_to_headers[j->nclaims_to_headers++] = (sl_header_kv_conf_t){.name = header, .value = claim};
    }
    return rc;
}

static int parse_jwks_file(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_jwt_issuer_conf_t *j = field;
    if (sl__config_read_str(ctx, k->name, v, &j->keys) != 0)
        return -1;
    j->source = SL_JWT_KEYS_JWKS_FILE;
    return 0;
}

static int parse_jwks_url(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_jwt_issuer_conf_t *j = field;
    if (parse_url(ctx, k, v, &j->keys) != 0)
        return -1;
    j->source = SL_JWT_KEYS_JWKS_URL;
    return 0;
}

static int parse_pem_file(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_jwt_issuer_conf_t *j = field;
    if (sl__config_read_str(ctx, k->name, v, &j->keys) != 0)
        return -1;
    j->source = SL_JWT_KEYS_PEM_FILE;
    return 0;
}

static int parse_secret_env(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_jwt_issuer_conf_t *j = field;
    if (parse_env_name(ctx, k, v, &j->keys) != 0)
        return -1;
    j->source = SL_JWT_KEYS_SECRET;
    return 0;
}

static void issuer_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_jwt_issuer_conf_t *j = base;
    static const char *const sources[] = {"jwks_file", "jwks_url", "public_key_file", "secret_env"};
    const sl__config_node_t *first = NULL;
    for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
        const sl__config_node_t *key = sl__config_node_map_key(map, sources[i]);
        if (key == NULL)
            continue;
        if (first != NULL)
            sl__config_error(ctx, key, "jwt issuer: %s and %s are exclusive; keep one",
                             sl__config_node_deref(first)->text.ptr, sources[i]);
        else
            first = key;
    }
    if (first == NULL) {
        sl__config_error(ctx, map,
                         "jwt issuer needs its keys: one of jwks_file, jwks_url, public_key_file, secret_env");
        return;
    }
    if (!clean)
        return;
    const sl__config_node_t *algs = sl__config_node_map_key(map, "algorithms");
    if (j->source == SL_JWT_KEYS_SECRET) {
        if (j->algorithms == 0)
            j->algorithms = SL_JWT_SET_HS256;
        else if (j->algorithms & ~HS_ALGS)
            sl__config_error(ctx, algs, "jwt issuer: a secret_env key only verifies HS256/HS384/HS512");
    } else {
        if (j->algorithms == 0)
            j->algorithms =
                SL_JWT_SET_RS256 | SL_JWT_SET_PS256 | SL_JWT_SET_ES256 | SL_JWT_SET_ES384 | SL_JWT_SET_EDDSA;
        else if (j->algorithms & HS_ALGS)
            /* HS with a public key is the classic confusion attack: refuse it at load. */
            sl__config_error(ctx, algs, "jwt issuer: HS algorithms need a shared secret (secret_env), not public keys");
    }
    if (j->source == SL_JWT_KEYS_PEM_FILE && (j->algorithms & (j->algorithms - 1)) != 0)
        sl__config_error(ctx, algs != NULL ? algs : map,
                         "jwt issuer: public_key_file needs `algorithms` with exactly one algorithm (the key's)");
}

static const sl__config_key_t issuer_keys[] = {
    {.name = "issuer", .type = SL__CT_STR, .offset = offsetof(sl_jwt_issuer_conf_t, issuer), .required = true},
    {.name = "audiences",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_jwt_issuer_conf_t, audiences),
     .parse = parse_claim_list},
    {.name = "jwks_file", .type = SL__CT_CUSTOM, .parse = parse_jwks_file},
    {.name = "jwks_url", .type = SL__CT_CUSTOM, .parse = parse_jwks_url},
    {.name = "public_key_file", .type = SL__CT_CUSTOM, .parse = parse_pem_file},
    {.name = "secret_env", .type = SL__CT_CUSTOM, .parse = parse_secret_env},
    {.name = "algorithms",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_jwt_issuer_conf_t, algorithms),
     .parse = parse_algorithms},
    {.name = "leeway",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_jwt_issuer_conf_t, leeway_ms),
     .dflt = "30s",
     .max = 3600000},
    {.name = "consumer_claim",
     .type = SL__CT_STR,
     .offset = offsetof(sl_jwt_issuer_conf_t, consumer_claim),
     .dflt = "sub"},
    {.name = "groups_claim", .type = SL__CT_STR, .offset = offsetof(sl_jwt_issuer_conf_t, groups_claim)},
    {.name = "required_claims",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_jwt_issuer_conf_t, required_claims),
     .parse = parse_claim_list},
    {.name = "claims_to_headers", .type = SL__CT_CUSTOM, .parse = parse_claims_to_headers},
    {.name = "jwks_refresh",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_jwt_issuer_conf_t, jwks_refresh_ms),
     .dflt = "5m",
     .min = 1000,
     .max = 86400000},
    {.name = "jwks_timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_jwt_issuer_conf_t, jwks_timeout_ms),
     .dflt = "5s",
     .min = 100,
     .max = 60000},
};

static const sl__config_section_t issuer_section = {
    .what = "jwt issuer",
    .keys = issuer_keys,
    .nkeys = sizeof(issuer_keys) / sizeof(issuer_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = issuer_check,
};

int sl__config_parse_jwt_issuers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                 void *field)
{
    sl_config_t *cfg = field;
    void *items = NULL;
    int rc = read_named_map(ctx, k->name, v, &issuer_section, sizeof(sl_jwt_issuer_conf_t),
                            offsetof(sl_jwt_issuer_conf_t, pos), &items, &cfg->njwt_issuers);
    cfg->jwt_issuers = items;
    return rc;
}

/* ---- introspection ------------------------------------------------------------------------- */

static const sl__config_key_t introspection_keys[] = {
    {.name = "url",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_introspection_conf_t, url),
     .required = true,
     .parse = parse_url},
    {.name = "client_id", .type = SL__CT_STR, .offset = offsetof(sl_introspection_conf_t, client_id), .required = true},
    {.name = "client_secret_env",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_introspection_conf_t, client_secret_env),
     .required = true,
     .parse = parse_env_name},
    {.name = "timeout",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_introspection_conf_t, timeout_ms),
     .dflt = "2s",
     .min = 10,
     .max = 60000},
    {.name = "cache_ttl",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_introspection_conf_t, cache_ttl_ms),
     .dflt = "60s",
     .max = 86400000},
    {.name = "consumer_field",
     .type = SL__CT_STR,
     .offset = offsetof(sl_introspection_conf_t, consumer_field),
     .dflt = "sub"},
};

static const sl__config_section_t introspection_section = {
    .what = "introspection endpoint",
    .keys = introspection_keys,
    .nkeys = sizeof(introspection_keys) / sizeof(introspection_keys[0]),
    .pos_offset = SL__NO_POS,
};

int sl__config_parse_introspection(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                   void *field)
{
    sl_config_t *cfg = field;
    void *items = NULL;
    int rc = read_named_map(ctx, k->name, v, &introspection_section, sizeof(sl_introspection_conf_t),
                            offsetof(sl_introspection_conf_t, pos), &items, &cfg->nintrospection);
    cfg->introspection = items;
    return rc;
}

/* ---- route: auth --------------------------------------------------------------------------- */

/* One entry of `auth:` — `api_key`, `basic`, `mtls`, `anonymous`, `jwt: NAME` or
 * `introspection: NAME`. */
static int read_auth_method(sl__config_ctx_t *ctx, sl_route_auth_conf_t *a, const sl__config_node_t *c)
{
    c = sl__config_node_deref(c);
    char q[80];
    sl_auth_method_conf_t m = {.pos = c != NULL ? c->pos : (sl_config_pos_t){1, 1}};
    sl_str_t word = SL_STR_NULL;
    const sl__config_node_t *refnode = NULL;
    if (c != NULL && c->kind == SL__CONFIG_NODE_SCALAR) {
        word = c->text;
    } else if (c != NULL && c->kind == SL__CONFIG_NODE_MAP && c->count == 2) {
        word = sl__config_node_deref(c->first)->text;
        refnode = c->first->next;
    } else {
        sl__config_error(ctx, c,
                         "auth: each entry is api_key, basic, mtls, anonymous, jwt: ISSUER or introspection: ENDPOINT");
        return -1;
    }
    if (sl_str_eq(word, SL_STR_LIT("anonymous")) && refnode == NULL) {
        a->anonymous = true;
        return 0;
    }
    if (sl_str_eq(word, SL_STR_LIT("api_key")) && refnode == NULL)
        m.kind = SL_AUTH_API_KEY;
    else if (sl_str_eq(word, SL_STR_LIT("basic")) && refnode == NULL)
        m.kind = SL_AUTH_BASIC;
    else if (sl_str_eq(word, SL_STR_LIT("mtls")) && refnode == NULL)
        m.kind = SL_AUTH_MTLS;
    else if (sl_str_eq(word, SL_STR_LIT("jwt")) && refnode != NULL)
        m.kind = SL_AUTH_JWT;
    else if (sl_str_eq(word, SL_STR_LIT("introspection")) && refnode != NULL)
        m.kind = SL_AUTH_INTROSPECTION;
    if (m.kind == 0) {
        sl__config_error(ctx, c,
                         "auth: unknown method %s (api_key, basic, mtls, anonymous, jwt: ISSUER, introspection: "
                         "ENDPOINT)",
                         sl__config_quote(q, sizeof(q), word));
        return -1;
    }
    if (refnode != NULL) {
        if (sl__config_read_str(ctx, m.kind == SL_AUTH_JWT ? "auth: jwt" : "auth: introspection", refnode, &m.ref) != 0)
            return -1;
        m.pos = sl__config_node_deref(refnode)->pos;
    }
    for (size_t i = 0; i < a->nmethods; i++) {
        if (a->methods[i].kind == m.kind && sl_str_eq(a->methods[i].ref, m.ref)) {
            sl__config_error(ctx, c, "auth: the same method is listed twice");
            return -1;
        }
    }
    a->methods[a->nmethods++] = m;
    return 0;
}

static int parse_auth_methods(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_route_auth_conf_t *a = field;
    v = sl__config_node_deref(v);
    if (sl__config_expect_seq(ctx, k->name, v) != 0)
        return -1;
    if (v->count == 0) {
        sl__config_error(ctx, v, "auth: the list is empty (leave auth out for an open route)");
        return -1;
    }
    a->methods = sl_arena_alloc(&ctx->cfg->arena, v->count * sizeof(*a->methods));
    int rc = 0;
    for (const sl__config_node_t *c = v->first; c != NULL; c = c->next)
        if (read_auth_method(ctx, a, c) != 0)
            rc = -1;
    if (rc == 0 && a->nmethods == 0) {
        sl__config_error(ctx, v, "auth: anonymous alone is no authentication; leave auth out instead");
        rc = -1;
    }
    return rc;
}

static const sl__config_key_t auth_keys[] = {
    {.name = "methods", .type = SL__CT_CUSTOM, .required = true, .parse = parse_auth_methods},
    {.name = "hide_credentials", .type = SL__CT_BOOL, .offset = offsetof(sl_route_auth_conf_t, hide_credentials)},
    {.name = "api_key_header",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_route_auth_conf_t, api_key_header),
     .dflt = "X-API-Key",
     .parse = sl__config_parse_header_name},
    {.name = "api_key_query", .type = SL__CT_STR, .offset = offsetof(sl_route_auth_conf_t, api_key_query)},
    {.name = "realm", .type = SL__CT_STR, .offset = offsetof(sl_route_auth_conf_t, realm), .dflt = "sluice"},
};

static int auth_scalar(sl__config_ctx_t *ctx, const sl__config_node_t *v, void *base)
{
    (void)base;
    sl__config_error(ctx, v, "auth: expected a list of methods, or a mapping with `methods`");
    return -1;
}

const sl__config_section_t sl__config_route_auth_section = {
    .what = "route auth",
    .keys = auth_keys,
    .nkeys = sizeof(auth_keys) / sizeof(auth_keys[0]),
    .pos_offset = SL__NO_POS,
    .scalar = auth_scalar,
};

/* `auth:` is a list of methods (the short form) or a mapping with `methods` and options. */
int sl__config_parse_route_auth(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field)
{
    sl__config_defaults(ctx, &sl__config_route_auth_section, field);
    const sl__config_node_t *d = sl__config_node_deref(v);
    if (d != NULL && d->kind == SL__CONFIG_NODE_SEQ)
        return parse_auth_methods(ctx, k, v, field);
    return sl__config_walk(ctx, &sl__config_route_auth_section, k->name, v, field);
}

/* ---- route: acl and cors ------------------------------------------------------------------- */

static void acl_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_acl_conf_t *a = base;
    if (clean && a->nallow_groups == 0 && a->ndeny_groups == 0)
        sl__config_error(ctx, map, "acl: needs allow_groups or deny_groups");
}

static const sl__config_key_t acl_keys[] = {
    {.name = "allow_groups",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_acl_conf_t, allow_groups),
     .parse = parse_groups},
    {.name = "deny_groups",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_acl_conf_t, deny_groups),
     .parse = parse_groups},
};

const sl__config_section_t sl__config_acl_section = {
    .what = "acl",
    .keys = acl_keys,
    .nkeys = sizeof(acl_keys) / sizeof(acl_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = acl_check,
};

static bool is_origin(sl_str_t s)
{
    if (sl_str_eq(s, SL_STR_LIT("*")))
        return true;
    /* scheme://host[:port], nothing after: browsers send exactly that (RFC 6454 §6.1). */
    const char *sep = s.len > 3 ? memchr(s.ptr, ':', s.len) : NULL;
    if (sep == NULL || (size_t)(s.ptr + s.len - sep) < 4 || sep[1] != '/' || sep[2] != '/')
        return false;
    for (size_t i = (size_t)(sep - s.ptr) + 3; i < s.len; i++)
        if (s.ptr[i] == '/' || s.ptr[i] == ' ' || (unsigned char)s.ptr[i] < 0x21)
            return false;
    return true;
}

static void cors_check(sl__config_ctx_t *ctx, const sl__config_node_t *map, void *base, bool clean)
{
    sl_cors_conf_t *c = base;
    if (!clean)
        return;
    for (size_t i = 0; i < c->norigins; i++)
        c->any_origin |= sl_str_eq(c->origins[i], SL_STR_LIT("*"));
    if (c->norigins == 0)
        sl__config_error(ctx, map, "cors: needs origins (a list of scheme://host[:port], or \"*\")");
    if (c->any_origin && c->credentials)
        sl__config_error(ctx, sl__config_node_map_key(map, "credentials"),
                         "cors: credentials cannot be allowed for any origin (\"*\"); list the origins");
    if (c->methods == 0)
        c->methods = SL_METHOD_BIT(SL_METHOD_GET) | SL_METHOD_BIT(SL_METHOD_HEAD) | SL_METHOD_BIT(SL_METHOD_POST);
}

static int parse_origins(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_cors_conf_t *c = field;
    return read_str_list(ctx, k->name, v, is_origin, "scheme://host[:port] or \"*\"", &c->origins, &c->norigins);
}

static const sl__config_key_t cors_keys[] = {
    {.name = "origins", .type = SL__CT_CUSTOM, .parse = parse_origins},
    {.name = "methods",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_cors_conf_t, methods),
     .parse = sl__config_parse_methods},
    {.name = "headers", .type = SL__CT_CUSTOM, .offset = offsetof(sl_cors_conf_t, headers), .parse = parse_header_list},
    {.name = "expose_headers",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_cors_conf_t, expose_headers),
     .parse = parse_header_list},
    {.name = "credentials", .type = SL__CT_BOOL, .offset = offsetof(sl_cors_conf_t, credentials)},
    {.name = "max_age",
     .type = SL__CT_DURATION,
     .offset = offsetof(sl_cors_conf_t, max_age_ms),
     .dflt = "10m",
     .max = 86400000},
};

const sl__config_section_t sl__config_cors_section = {
    .what = "cors",
    .keys = cors_keys,
    .nkeys = sizeof(cors_keys) / sizeof(cors_keys[0]),
    .pos_offset = SL__NO_POS,
    .check = cors_check,
};

int sl__config_parse_cors(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_cors_conf_t *c = field;
    sl__config_defaults(ctx, &sl__config_cors_section, c);
    c->enabled = true;
    return sl__config_walk(ctx, &sl__config_cors_section, k->name, v, c);
}

/* ---- cross-checks -------------------------------------------------------------------------- */

/* Route references to issuers and endpoints; a key or username given to two consumers (one
 * credential must name one consumer). O(n^2) over credentials: configs hold hundreds, not
 * millions; the runtime index is a hash table (src/filters). */
void sl__config_validate_auth(sl__config_ctx_t *ctx)
{
    sl_config_t *cfg = ctx->cfg;
    char q[80];
    bool client_certs = false;
    for (size_t l = 0; l < cfg->nlistens; l++)
        client_certs |= cfg->listens[l].tls.enabled && cfg->listens[l].tls.client_ca.len > 0;
    for (size_t r = 0; r < cfg->nroutes; r++) {
        sl_route_auth_conf_t *a = &cfg->routes[r].auth;
        for (size_t i = 0; i < a->nmethods; i++) {
            sl_auth_method_conf_t *m = &a->methods[i];
            bool found = false;
            if (m->kind == SL_AUTH_MTLS && !client_certs) {
                /* Without a listener that asks for client certificates no request could ever
                 * pass this method: a config mistake, not a runtime refusal. */
                sl__config_error_at(ctx, m->pos,
                                    "route %s: auth: mtls needs a listener with tls.client_ca (none asks clients for a "
                                    "certificate)",
                                    cfg->routes[r].name.ptr);
            } else if (m->kind == SL_AUTH_JWT) {
                for (size_t j = 0; j < cfg->njwt_issuers && !found; j++)
                    if (sl_str_eq(cfg->jwt_issuers[j].name, m->ref))
                        found = true, m->ref_index = j;
                if (!found)
                    sl__config_error_at(ctx, m->pos, "route %s: auth: no jwt issuer named %s", cfg->routes[r].name.ptr,
                                        sl__config_quote(q, sizeof(q), m->ref));
            } else if (m->kind == SL_AUTH_INTROSPECTION) {
                for (size_t j = 0; j < cfg->nintrospection && !found; j++)
                    if (sl_str_eq(cfg->introspection[j].name, m->ref))
                        found = true, m->ref_index = j;
                if (!found)
                    sl__config_error_at(ctx, m->pos, "route %s: auth: no introspection endpoint named %s",
                                        cfg->routes[r].name.ptr, sl__config_quote(q, sizeof(q), m->ref));
            }
        }
    }
    for (size_t c = 0; c < cfg->nconsumers; c++) {
        const sl_consumer_conf_t *a = &cfg->consumers[c];
        for (size_t i = 0; i < a->napi_keys; i++)
            for (size_t d = 0; d <= c; d++) {
                const sl_consumer_conf_t *b = &cfg->consumers[d];
                for (size_t j = 0; j < (d == c ? i : b->napi_keys); j++)
                    if (memcmp(a->api_keys[i].sha256, b->api_keys[j].sha256, 32) == 0)
                        sl__config_error_at(ctx, a->api_keys[i].pos, "consumer %s: this api key is also consumer %s's",
                                            a->name.ptr, b->name.ptr);
            }
        for (size_t i = 0; i < a->nmtls; i++)
            for (size_t d = 0; d <= c; d++) {
                const sl_consumer_conf_t *b = &cfg->consumers[d];
                for (size_t j = 0; j < (d == c ? i : b->nmtls); j++) {
                    const sl_mtls_cred_conf_t *x = &a->mtls[i], *y = &b->mtls[j];
                    if (x->match != y->match ||
                        (x->match == SL_MTLS_FINGERPRINT ? memcmp(x->fingerprint, y->fingerprint, 32) != 0
                                                         : !sl_str_eq(x->value, y->value)))
                        continue;
                    if (d == c)
                        sl__config_error_at(ctx, x->pos, "consumer %s: this mtls entry is listed twice", a->name.ptr);
                    else
                        sl__config_error_at(ctx, x->pos, "consumer %s: this mtls entry is also consumer %s's",
                                            a->name.ptr, b->name.ptr);
                }
            }
        for (size_t i = 0; i < a->nbasic; i++)
            for (size_t d = 0; d <= c; d++) {
                const sl_consumer_conf_t *b = &cfg->consumers[d];
                for (size_t j = 0; j < (d == c ? i : b->nbasic); j++)
                    if (sl_str_eq(a->basic[i].username, b->basic[j].username))
                        sl__config_error_at(ctx, a->basic[i].pos, "consumer %s: basic_auth username %s is taken by %s",
                                            a->name.ptr, sl__config_quote(q, sizeof(q), a->basic[i].username),
                                            b->name.ptr);
            }
    }
}
