/*
 * YAML <-> JSON for the admin API. Parsing reuses the loader's positioned tree (same syntax
 * checks, same limits on aliases and depth); emitting is a small block-style writer rather
 * than libfyaml's emitter so the output is predictable: what it writes is exactly what the
 * loader will read, and a round trip gives the same value.
 */
#include "config/document.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "config/internal.h"

/* ---- YAML -> JSON -------------------------------------------------------------------------- */

static bool is_null_word(sl_str_t t)
{
    return t.len == 0 || sl_str_eq(t, SL_STR_LIT("~")) || sl_str_eq(t, SL_STR_LIT("null")) ||
           sl_str_eq(t, SL_STR_LIT("Null")) || sl_str_eq(t, SL_STR_LIT("NULL"));
}

static int bool_word(sl_str_t t)
{
    if (sl_str_eq(t, SL_STR_LIT("true")) || sl_str_eq(t, SL_STR_LIT("True")) || sl_str_eq(t, SL_STR_LIT("TRUE")))
        return 1;
    if (sl_str_eq(t, SL_STR_LIT("false")) || sl_str_eq(t, SL_STR_LIT("False")) || sl_str_eq(t, SL_STR_LIT("FALSE")))
        return 0;
    return -1;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* YAML 1.2 core schema decimal integer: [-+]?[0-9]+ */
static bool is_int_word(sl_str_t t)
{
    size_t i = t.len > 0 && (t.ptr[0] == '-' || t.ptr[0] == '+') ? 1 : 0;
    if (i == t.len || t.len > 19)
        return false;
    for (; i < t.len; i++)
        if (!is_digit(t.ptr[i]))
            return false;
    return true;
}

/* YAML 1.2 core schema float without .inf/.nan (JSON has neither): [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
 */
static bool is_float_word(sl_str_t t)
{
    size_t i = 0, n = t.len;
    const char *p = t.ptr;
    if (i < n && (p[i] == '-' || p[i] == '+'))
        i++;
    size_t digits = 0;
    while (i < n && is_digit(p[i]))
        i++, digits++;
    if (i < n && p[i] == '.') {
        i++;
        while (i < n && is_digit(p[i]))
            i++, digits++;
    }
    if (digits == 0)
        return false;
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < n && (p[i] == '-' || p[i] == '+'))
            i++;
        size_t e = 0;
        while (i < n && is_digit(p[i]))
            i++, e++;
        if (e == 0)
            return false;
    }
    return i == n;
}

static json_t *scalar_to_json(const sl__config_node_t *n)
{
    if (n->plain) {
        if (is_null_word(n->text))
            return json_null();
        int b = bool_word(n->text);
        if (b >= 0)
            return json_boolean(b);
        /* A number the JSON side cannot hold (an integer past 64 bits, a float that overflows to
         * infinity, which jansson refuses) stays the text it was: the key's own reader then says
         * what it expected, and a round trip keeps the user's digits. */
        if (is_int_word(n->text)) {
            errno = 0;
            long long v = strtoll(n->text.ptr, NULL, 10);
            if (errno != ERANGE)
                return json_integer(v);
        } else if (is_float_word(n->text)) {
            double d = strtod(n->text.ptr, NULL);
            if (isfinite(d))
                return json_real(d);
        }
    }
    return json_stringn_nocheck(n->text.ptr, n->text.len);
}

static json_t *node_to_json(const sl__config_node_t *n);

/* `<<: *base` or `<<: [*a, *b]`: keys of the merged mappings that the mapping itself lacks. */
static void merge_into(json_t *obj, const sl__config_node_t *v)
{
    v = sl__config_node_deref(v);
    if (v == NULL)
        return;
    if (v->kind == SL__CONFIG_NODE_SEQ) {
        for (const sl__config_node_t *c = v->first; c != NULL; c = c->next)
            merge_into(obj, c);
        return;
    }
    if (v->kind != SL__CONFIG_NODE_MAP)
        return;
    json_t *src = node_to_json(v);
    const char *k;
    json_t *val;
    json_object_foreach(src, k, val)
    {
        if (json_object_get(obj, k) == NULL)
            json_object_set(obj, k, val);
    }
    json_decref(src);
}

static json_t *node_to_json(const sl__config_node_t *n)
{
    n = sl__config_node_deref(n);
    if (n == NULL)
        return json_null();
    switch (n->kind) {
    case SL__CONFIG_NODE_SEQ: {
        json_t *a = json_array();
        for (const sl__config_node_t *c = n->first; c != NULL; c = c->next)
            json_array_append_new(a, node_to_json(c));
        return a;
    }
    case SL__CONFIG_NODE_MAP: {
        json_t *o = json_object();
        const sl__config_node_t *merge = NULL;
        for (const sl__config_node_t *k = n->first; k != NULL && k->next != NULL; k = k->next->next) {
            const sl__config_node_t *key = sl__config_node_deref(k);
            if (key == NULL || key->kind != SL__CONFIG_NODE_SCALAR || k->dup)
                continue;
            if (sl_str_eq(key->text, SL_STR_LIT("<<"))) {
                merge = k->next;
                continue;
            }
            /* A key with a NUL cannot be a JSON object key; the loader rejects it anyway. */
            if (memchr(key->text.ptr, '\0', key->text.len) != NULL)
                continue;
            json_object_setn_new_nocheck(o, key->text.ptr, key->text.len, node_to_json(k->next));
        }
        if (merge != NULL)
            merge_into(o, merge);
        return o;
    }
    case SL__CONFIG_NODE_SCALAR:
    case SL__CONFIG_NODE_ALIAS:
        break;
    }
    return scalar_to_json(n);
}

int sl_config_document_parse(const char *name, const char *text, size_t len, json_t **out, sl_config_errors_t *errs)
{
    sl__config_ctx_t ctx = {.errs = errs, .file = sl_str_from_cstr(name != NULL ? name : "<buffer>")};
    sl_arena_init(&ctx.scratch, 64 * 1024);
    const sl__config_node_t *root = NULL;
    int rc = SL_ECONFIG;
    if (sl__config_yaml_parse(&ctx, text != NULL ? text : "", text != NULL ? len : 0, &root) == 0) {
        *out = root != NULL ? node_to_json(root) : json_object();
        if (json_is_null(*out)) { /* an empty document is an empty config */
            json_decref(*out);
            *out = json_object();
        }
        rc = 0;
    }
    sl_arena_dispose(&ctx.scratch);
    return rc;
}

/* ---- JSON -> YAML -------------------------------------------------------------------------- */

typedef struct out {
    char *buf;
    size_t len, cap;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        while (o->len + n + 1 > o->cap)
            o->cap = o->cap ? o->cap * 2 : 4096;
        o->buf = sl_xrealloc(o->buf, o->cap);
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void puts_(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

static void indent(out_t *o, int n)
{
    for (int i = 0; i < n; i++)
        put(o, " ", 1);
}

static bool plain_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-' || c == '.' ||
           c == '/' || c == ':' || c == '@' || c == '+';
}

/* A string may go out plain when it is made of harmless characters, does not start like an
 * indicator, does not end in ':' (a key), and would not be read back as null, bool or number. */
static bool can_be_plain(const char *s, size_t n)
{
    /* '@' and '`' are reserved indicators: YAML refuses them at the start of a plain scalar. */
    if (n == 0 || n > 256 || s[0] == '-' || s[0] == ':' || s[0] == '@' || s[n - 1] == ':')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!plain_char(s[i]))
            return false;
    sl_str_t t = {s, n};
    return !is_null_word(t) && bool_word(t) < 0 && !is_int_word(t) && !is_float_word(t);
}

/* YAML 1.2 c-printable (§5.1): what may appear unescaped in a double-quoted scalar. */
static bool yaml_printable(uint32_t c)
{
    return c == 0x09 || c == 0x0a || c == 0x0d || (c >= 0x20 && c <= 0x7e) || c == 0x85 || (c >= 0xa0 && c <= 0xd7ff) ||
           (c >= 0xe000 && c <= 0xfffd) || (c >= 0x10000 && c <= 0x10ffff);
}

/* One UTF-8 sequence at s[0..n) (jansson strings are valid UTF-8): its code point and length. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (s[0] < 0x80 || n < 2) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xe0) == 0xc0) {
        *cp = (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
        return 2;
    }
    if ((s[0] & 0xf0) == 0xe0 && n >= 3) {
        *cp = (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
        return 3;
    }
    if (n >= 4) {
        *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 | (uint32_t)(s[2] & 0x3f) << 6 |
              (s[3] & 0x3f);
        return 4;
    }
    *cp = s[0];
    return 1;
}

static void put_string(out_t *o, const char *s, size_t n)
{
    if (can_be_plain(s, n)) {
        put(o, s, n);
        return;
    }
    /* Double-quoted with YAML's own escapes: every character YAML does not print raw (controls,
     * DEL, C1, U+FFFE/U+FFFF) is escaped, so the loader reads back exactly this string. */
    put(o, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = utf8_next(p + i, n - i, &cp);
        char esc[16];
        if (cp == '"' || cp == '\\') {
            esc[0] = '\\';
            esc[1] = (char)cp;
            put(o, esc, 2);
        } else if (cp == '\n') {
            put(o, "\\n", 2);
        } else if (cp == '\t') {
            put(o, "\\t", 2);
        } else if (cp == '\r' || !yaml_printable(cp) || cp == 0x85) {
            int k = cp <= 0xff     ? snprintf(esc, sizeof(esc), "\\x%02x", (unsigned)cp)
                    : cp <= 0xffff ? snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)cp)
                                   : snprintf(esc, sizeof(esc), "\\U%08x", (unsigned)cp);
            put(o, esc, (size_t)k);
        } else {
            put(o, s + i, len);
        }
        i += len;
    }
    put(o, "\"", 1);
}

static void put_scalar(out_t *o, const json_t *v)
{
    char num[64];
    switch (json_typeof(v)) {
    case JSON_STRING:
        put_string(o, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL: {
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        if (strpbrk(num, ".eEn") == NULL) /* keep it a float when read back */
            strcat(num, ".0");
        break;
    }
    case JSON_TRUE:
        strcpy(num, "true");
        break;
    case JSON_FALSE:
        strcpy(num, "false");
        break;
    default:
        strcpy(num, "null");
        break;
    }
    puts_(o, num);
}

static bool is_scalar(const json_t *v)
{
    return !json_is_object(v) && !json_is_array(v);
}

static bool all_scalars(const json_t *a)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        if (!is_scalar(v))
            return false;
    }
    return true;
}

static void emit_value(out_t *o, const json_t *v, int ind);

/* After "key:" or "- ": a scalar or flow list on the same line, a block on the next ones. */
static void emit_after_indicator(out_t *o, const json_t *v, int ind)
{
    if (is_scalar(v)) {
        put(o, " ", 1);
        put_scalar(o, v);
        put(o, "\n", 1);
    } else if (json_is_object(v) && json_object_size(v) == 0) {
        puts_(o, " {}\n");
    } else if (json_is_array(v) && all_scalars(v)) {
        puts_(o, " [");
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (i > 0)
                puts_(o, ", ");
            put_scalar(o, e);
        }
        puts_(o, "]\n");
    } else {
        put(o, "\n", 1);
        emit_value(o, v, ind);
    }
}

static void emit_object(out_t *o, const json_t *obj, int ind, bool first_inline)
{
    const char *k;
    json_t *v;
    bool first = true;
    json_object_foreach((json_t *)obj, k, v)
    {
        if (!(first && first_inline))
            indent(o, ind);
        first = false;
        put_string(o, k, strlen(k));
        put(o, ":", 1);
        emit_after_indicator(o, v, ind + 2);
    }
}

static void emit_value(out_t *o, const json_t *v, int ind)
{
    if (json_is_object(v)) {
        emit_object(o, v, ind, false);
        return;
    }
    size_t i;
    json_t *e;
    json_array_foreach((json_t *)v, i, e)
    {
        indent(o, ind);
        put(o, "-", 1);
        if (json_is_object(e) && json_object_size(e) > 0) {
            put(o, " ", 1);
            emit_object(o, e, ind + 2, true);
        } else {
            emit_after_indicator(o, e, ind + 2);
        }
    }
}

char *sl_config_document_emit(const json_t *doc, size_t *len)
{
    out_t o = {0};
    puts_(&o, "# Written by sluice (admin API). Comments are not kept across API changes.\n");
    if (json_is_object(doc) && json_object_size(doc) > 0)
        emit_value(&o, doc, 0);
    else
        puts_(&o, "{}\n");
    *len = o.len;
    return o.buf;
}
