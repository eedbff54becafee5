/*
 * The key-table walker: reads one YAML mapping through a section table (key name, type, field
 * offset, default, range, custom parser), so a module adds config keys by adding rows rather than
 * code. It owns the generic messages (unknown key with the allowed list, wrong type, out of range,
 * missing key, "not supported yet") and the typed readers custom parsers reuse.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <inttypes.h>
#include <pcre2.h>
#include <stdio.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "config/internal.h"

/* Sections are small (a bit set of seen keys) and a longer table is a mistake worth a crash. */
#define MAX_KEYS 64

static const sl__config_node_t *scalar_or_report(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n,
                                                 const char *expected)
{
    const sl__config_node_t *d = sl__config_node_deref(n);
    if (d != NULL && d->kind == SL__CONFIG_NODE_SCALAR && !sl__config_node_is_null(d))
        return d;
    char got[80];
    sl__config_error(ctx, d, "%s: expected %s, got %s", name, expected, sl__config_describe(got, sizeof(got), d));
    return NULL;
}

int sl__config_expect_map(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n)
{
    const sl__config_node_t *d = sl__config_node_deref(n);
    if (d != NULL && d->kind == SL__CONFIG_NODE_MAP)
        return 0;
    char got[80];
    sl__config_error(ctx, d, "%s: expected a mapping, got %s", name, sl__config_describe(got, sizeof(got), d));
    return -1;
}

int sl__config_expect_seq(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n)
{
    const sl__config_node_t *d = sl__config_node_deref(n);
    if (d != NULL && d->kind == SL__CONFIG_NODE_SEQ)
        return 0;
    char got[80];
    sl__config_error(ctx, d, "%s: expected a list, got %s", name, sl__config_describe(got, sizeof(got), d));
    return -1;
}

int sl__config_read_str(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, sl_str_t *out)
{
    const sl__config_node_t *d = scalar_or_report(ctx, name, n, "a string");
    if (d == NULL)
        return -1;
    /* Consumers treat these as C strings too; an embedded NUL would silently cut them. */
    if (memchr(d->text.ptr, '\0', d->text.len) != NULL) {
        sl__config_error(ctx, d, "%s: NUL bytes are not allowed", name);
        return -1;
    }
    *out = sl_arena_str_dup(&ctx->cfg->arena, d->text);
    return 0;
}

int sl__config_read_bool(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, bool *out)
{
    const sl__config_node_t *d = scalar_or_report(ctx, name, n, "true or false");
    if (d == NULL)
        return -1;
    /* YAML 1.2 core schema booleans only: "yes", "on" are strings there. */
    static const char *const words[] = {"true", "True", "TRUE", "false", "False", "FALSE"};
    for (size_t i = 0; d->plain && i < sizeof(words) / sizeof(words[0]); i++)
        if (sl_str_eq(d->text, sl_str_from_cstr(words[i]))) {
            *out = i < 3;
            return 0;
        }
    char got[80];
    sl__config_error(ctx, d, "%s: expected true or false, got %s", name, sl__config_quote(got, sizeof(got), d->text));
    return -1;
}

int sl__config_read_u64(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, uint64_t min, uint64_t max,
                        uint64_t *out)
{
    char expected[96];
    snprintf(expected, sizeof(expected), "an integer from %" PRIu64 " to %" PRIu64, min, max);
    const sl__config_node_t *d = scalar_or_report(ctx, name, n, expected);
    if (d == NULL)
        return -1;
    char got[80];
    unsigned long long v;
    size_t ndigits = 0;
    while (ndigits < d->text.len && d->text.ptr[ndigits] >= '0' && d->text.ptr[ndigits] <= '9')
        ndigits++;
    if (ndigits == 0 || ndigits != d->text.len) {
        sl__config_error(ctx, d, "%s: expected %s, got %s", name, expected,
                         sl__config_quote(got, sizeof(got), d->text));
        return -1;
    }
    if (!sl_str_to_u64(d->text, &v) || v < min || v > max) {
        sl__config_error(ctx, d, "%s: %s is out of range (%" PRIu64 "..%" PRIu64 ")", name,
                         sl__config_quote(got, sizeof(got), d->text), min, max);
        return -1;
    }
    *out = v;
    return 0;
}

typedef int (*unit_parser_fn)(sl_str_t s, uint64_t *out);
typedef const char *(*unit_format_fn)(char *buf, size_t size, uint64_t v);

static int read_unit(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *n, const char *expected,
                     unit_parser_fn parse, unit_format_fn format, uint64_t *out)
{
    const sl__config_node_t *d = scalar_or_report(ctx, k->name, n, expected);
    if (d == NULL)
        return -1;
    char got[80], lo[32], hi[32];
    uint64_t v;
    int rc = parse(d->text, &v);
    if (rc == SL_ETOOBIG) {
        sl__config_error(ctx, d, "%s: %s is too large", k->name, sl__config_quote(got, sizeof(got), d->text));
        return -1;
    }
    if (rc != 0) {
        sl__config_error(ctx, d, "%s: expected %s, got %s", k->name, expected,
                         sl__config_quote(got, sizeof(got), d->text));
        return -1;
    }
    if (v < k->min || v > k->max) {
        sl__config_error(ctx, d, "%s: %s is out of range (%s..%s)", k->name,
                         sl__config_quote(got, sizeof(got), d->text), format(lo, sizeof(lo), k->min),
                         format(hi, sizeof(hi), k->max));
        return -1;
    }
    *out = v;
    return 0;
}

static int read_enum(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *n, int *out)
{
    char expected[160];
    size_t len = (size_t)snprintf(expected, sizeof(expected), "one of");
    for (const sl__config_enum_t *e = k->enums; e->name != NULL && len < sizeof(expected); e++)
        if (!e->later)
            len += (size_t)snprintf(expected + len, sizeof(expected) - len, "%s %s", e == k->enums ? "" : ",", e->name);
    const sl__config_node_t *d = scalar_or_report(ctx, k->name, n, expected);
    if (d == NULL)
        return -1;
    char got[80];
    for (const sl__config_enum_t *e = k->enums; e->name != NULL; e++)
        if (sl_str_eq(d->text, sl_str_from_cstr(e->name))) {
            if (e->later) {
                sl__config_error(ctx, d, "%s: %s is not supported yet (expected %s)", k->name,
                                 sl__config_quote(got, sizeof(got), d->text), expected);
                return -1;
            }
            *out = e->value;
            return 0;
        }
    sl__config_error(ctx, d, "%s: expected %s, got %s", k->name, expected, sl__config_quote(got, sizeof(got), d->text));
    return -1;
}

static int read_value(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    uint64_t u;
    switch (k->type) {
    case SL__CT_STR:
        return sl__config_read_str(ctx, k->name, v, field);
    case SL__CT_BOOL:
        return sl__config_read_bool(ctx, k->name, v, field);
    case SL__CT_U32:
        SL_BUG_ON(k->max > UINT32_MAX);
        if (sl__config_read_u64(ctx, k->name, v, k->min, k->max, &u) != 0)
            return -1;
        *(uint32_t *)field = (uint32_t)u;
        return 0;
    case SL__CT_U64:
        return sl__config_read_u64(ctx, k->name, v, k->min, k->max, field);
    case SL__CT_DURATION:
        return read_unit(ctx, k, v, "a duration like 250ms, 30s, 5m", sl_config_parse_duration,
                         sl__config_format_duration, field);
    case SL__CT_SIZE:
        return read_unit(ctx, k, v, "a size like 512, 16kb, 10mb", sl_config_parse_size, sl__config_format_size, field);
    case SL__CT_ENUM:
        return read_enum(ctx, k, v, field);
    case SL__CT_SECTION:
        return sl__config_walk(ctx, k->section, k->name, v, field);
    case SL__CT_CUSTOM:
        return k->parse(ctx, k, v, field);
    case SL__CT_UNSUPPORTED:
        break;
    }
    SL_BUG_ON(1);
    return -1;
}

void sl__config_defaults(sl__config_ctx_t *ctx, const sl__config_section_t *s, void *base)
{
    SL_BUG_ON(s->nkeys > MAX_KEYS);
    if (s->init != NULL)
        s->init(base);
    for (size_t i = 0; i < s->nkeys; i++) {
        const sl__config_key_t *k = &s->keys[i];
        void *field = (char *)base + k->offset;
        if (k->type == SL__CT_SECTION) {
            sl__config_defaults(ctx, k->section, field);
        } else if (k->dflt != NULL) {
            sl__config_node_t n = {.kind = SL__CONFIG_NODE_SCALAR, .plain = true, .text = sl_str_from_cstr(k->dflt)};
            size_t before = ctx->nerrors;
            read_value(ctx, k, &n, field);
            /* A default the table's own parser rejects is a bug in the table. */
            SL_BUG_ON(ctx->nerrors != before);
        }
    }
}

static void report_unknown(sl__config_ctx_t *ctx, const sl__config_section_t *s, const sl__config_node_t *key)
{
    char allowed[200], q[80];
    if (sl_str_eq(sl__config_node_deref(key)->text, SL_STR_LIT("<<"))) {
        sl__config_error(ctx, key,
                         "YAML merge keys (<<) are not supported; repeat the keys or use an alias as a value");
        return;
    }
    size_t len = 0;
    allowed[0] = '\0';
    for (size_t i = 0; i < s->nkeys && len < sizeof(allowed); i++)
        if (s->keys[i].type != SL__CT_UNSUPPORTED)
            len += (size_t)snprintf(allowed + len, sizeof(allowed) - len, "%s%s", len ? ", " : "", s->keys[i].name);
    sl__config_error(ctx, key, "unknown key %s in %s (allowed: %s)",
                     sl__config_quote(q, sizeof(q), sl__config_node_deref(key)->text), s->what, allowed);
}

int sl__config_walk(sl__config_ctx_t *ctx, const sl__config_section_t *s, const char *name,
                    const sl__config_node_t *map, void *base)
{
    size_t before = ctx->nerrors;
    map = sl__config_node_deref(map);
    if (map != NULL && map->kind == SL__CONFIG_NODE_SCALAR && s->scalar != NULL) {
        s->scalar(ctx, map, base);
        return ctx->nerrors == before ? 0 : -1;
    }
    if (sl__config_expect_map(ctx, name, map) != 0)
        return -1;
    SL_BUG_ON(s->nkeys > MAX_KEYS);
    if (s->pos_offset != SL__NO_POS)
        *(sl_config_pos_t *)((char *)base + s->pos_offset) = map->pos;

    bool seen[MAX_KEYS] = {false};
    for (const sl__config_node_t *kn = map->first; kn != NULL && kn->next != NULL; kn = kn->next->next) {
        const sl__config_node_t *key = sl__config_node_deref(kn);
        if (kn->dup)
            continue;
        if (key->kind != SL__CONFIG_NODE_SCALAR) {
            sl__config_error(ctx, kn, "%s: keys must be plain strings", name);
            continue;
        }
        size_t i = 0;
        while (i < s->nkeys && !sl_str_eq(key->text, sl_str_from_cstr(s->keys[i].name)))
            i++;
        if (i == s->nkeys) {
            if (!(s->extension_keys && sl_str_has_prefix(key->text, SL_STR_LIT("x-"))))
                report_unknown(ctx, s, kn);
            continue;
        }
        const sl__config_key_t *k = &s->keys[i];
        if (k->type == SL__CT_UNSUPPORTED) {
            sl__config_error(ctx, kn, "%s is not supported yet", k->name);
            continue;
        }
        seen[i] = true;
        read_value(ctx, k, kn->next, (char *)base + k->offset);
    }
    for (size_t i = 0; i < s->nkeys; i++)
        if (s->keys[i].required && !seen[i])
            sl__config_error(ctx, map, "missing required key '%s' in %s", s->keys[i].name, s->what);
    if (s->check != NULL)
        s->check(ctx, map, base, ctx->nerrors == before);
    return ctx->nerrors == before ? 0 : -1;
}

int sl__config_walk_seq(sl__config_ctx_t *ctx, const sl__config_section_t *s, const char *name,
                        const sl__config_node_t *seq, size_t elem_size, void **items, size_t *nitems)
{
    *items = NULL;
    *nitems = 0;
    seq = sl__config_node_deref(seq);
    if (sl__config_expect_seq(ctx, name, seq) != 0)
        return -1;
    if (seq->count == 0)
        return 0;
    char *arr = sl_arena_alloc(&ctx->cfg->arena, seq->count * elem_size);
    memset(arr, 0, seq->count * elem_size);
    /* Published before the items are read so check hooks can find their index. */
    *items = arr;
    *nitems = seq->count;
    int rc = 0;
    size_t i = 0;
    for (const sl__config_node_t *c = seq->first; c != NULL; c = c->next, i++) {
        void *base = arr + i * elem_size;
        sl__config_defaults(ctx, s, base);
        if (sl__config_walk(ctx, s, name, c, base) != 0)
            rc = -1;
    }
    return rc;
}

int sl__config_check_regex(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *n, sl_str_t pattern,
                           uint32_t *ncaptures)
{
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern.ptr, pattern.len, 0, &err, &off, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(err, msg, sizeof(msg)) < 0)
            snprintf((char *)msg, sizeof(msg), "error %d", err);
        sl__config_error(ctx, n, "%s: invalid regex: %s at offset %zu", name, (const char *)msg, (size_t)off);
        return -1;
    }
    uint32_t count = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &count);
    pcre2_code_free(re);
    if (ncaptures != NULL)
        *ncaptures = count;
    return 0;
}
