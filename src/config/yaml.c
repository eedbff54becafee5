/*
 * YAML text → a small node tree with 1-based positions, the first step of a load. It reads
 * libfyaml's event stream rather than its document API because only events carry positions for
 * mappings and sequences (libfyaml 0.7 has no node marks). Syntax errors come from a collecting
 * diag object, so libfyaml never prints; duplicate keys, aliases and their expansion budget are
 * handled here, before any key table sees the tree.
 */
#include <libfyaml.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "config/internal.h"

/* YAML anchor names are printable and space-free (YAML 1.2 §6.9.2), so they print as they are. */
#define ANCHOR_SHOWN(name) (int)((name).len < 40 ? (name).len : 40), (name).ptr

typedef struct anchor {
    sl_str_t name;
    sl__config_node_t *node;
} anchor_t;

typedef struct builder {
    sl__config_ctx_t *ctx;
    sl__config_node_t *root;
    sl__config_node_t *cur; /* the open container */
    anchor_t *anchors;      /* open addressing; heap, freed at the end */
    size_t nanchors, anchors_cap;
    size_t budget; /* weight that aliases may still add */
    struct fy_token_iter *iter;
    char *text; /* token_text's buffer; heap, freed at the end */
    size_t textcap;
    int ndocs;
    bool failed;    /* stop reading events */
    bool bad_alias; /* keep reading (to report every bad alias) but do not walk */
} builder_t;

const sl__config_node_t *sl__config_node_deref(const sl__config_node_t *n)
{
    return n != NULL && n->kind == SL__CONFIG_NODE_ALIAS ? n->target : n;
}

bool sl__config_node_is_null(const sl__config_node_t *n)
{
    n = sl__config_node_deref(n);
    if (n == NULL)
        return true;
    if (n->kind != SL__CONFIG_NODE_SCALAR || !n->plain)
        return false;
    /* YAML 1.2 core schema nulls. */
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (sl_str_eq(n->text, sl_str_from_cstr(nulls[i])))
            return true;
    return false;
}

const sl__config_node_t *sl__config_node_map_key(const sl__config_node_t *map, const char *key)
{
    map = sl__config_node_deref(map);
    if (map == NULL || map->kind != SL__CONFIG_NODE_MAP)
        return NULL;
    sl_str_t k = sl_str_from_cstr(key);
    for (const sl__config_node_t *kn = map->first; kn != NULL && kn->next != NULL; kn = kn->next->next) {
        const sl__config_node_t *d = sl__config_node_deref(kn);
        if (!kn->dup && d->kind == SL__CONFIG_NODE_SCALAR && sl_str_eq(d->text, k))
            return kn;
    }
    return NULL;
}

const sl__config_node_t *sl__config_node_map_get(const sl__config_node_t *map, const char *key)
{
    const sl__config_node_t *kn = sl__config_node_map_key(map, key);
    return kn != NULL ? sl__config_node_deref(kn->next) : NULL;
}

static uint64_t hash_bytes(sl_str_t s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < s.len; i++)
        h = (h ^ (unsigned char)s.ptr[i]) * 1099511628211ull;
    return h;
}

static anchor_t *anchor_slot(builder_t *b, sl_str_t name)
{
    size_t mask = b->anchors_cap - 1;
    for (size_t i = hash_bytes(name) & mask;; i = (i + 1) & mask)
        if (b->anchors[i].node == NULL || sl_str_eq(b->anchors[i].name, name))
            return &b->anchors[i];
}

static void anchor_put(builder_t *b, sl_str_t name, sl__config_node_t *node)
{
    if ((b->nanchors + 1) * 2 > b->anchors_cap) {
        anchor_t *old = b->anchors;
        size_t oldcap = b->anchors_cap;
        b->anchors_cap = oldcap ? oldcap * 2 : 16;
        b->anchors = sl_xcalloc(b->anchors_cap, sizeof(*b->anchors));
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].node != NULL)
                *anchor_slot(b, old[i].name) = old[i];
        free(old);
    }
    anchor_t *a = anchor_slot(b, name);
    if (a->node == NULL)
        b->nanchors++;
    /* A redefined anchor replaces the old one for later aliases (YAML 1.2 §3.2.2.2). */
    a->name = name;
    a->node = node;
}

static sl__config_node_t *anchor_get(builder_t *b, sl_str_t name)
{
    return b->anchors_cap ? anchor_slot(b, name)->node : NULL;
}

/* Through a token iterator, not fy_token_get_text: libfyaml 0.7.12 caches get_text's result
 * in the token and leaks that buffer when a parse error follows a long escaped scalar (found
 * by fuzz_config). */
static sl_str_t token_text(builder_t *b, struct fy_token *t)
{
    size_t len = 0;
    if (t != NULL) {
        fy_token_iter_start(t, b->iter);
        const struct fy_iter_chunk *c = NULL;
        int err = 0;
        while ((c = fy_token_iter_chunk_next(b->iter, c, &err)) != NULL) {
            if (len + c->len + 1 > b->textcap) {
                while (len + c->len + 1 > b->textcap)
                    b->textcap = b->textcap ? b->textcap * 2 : 256;
                b->text = sl_xrealloc(b->text, b->textcap);
            }
            memcpy(b->text + len, c->str, c->len);
            len += c->len;
        }
        fy_token_iter_finish(b->iter);
    }
    return (sl_str_t){sl_arena_strndup(&b->ctx->scratch, len ? b->text : "", len), len};
}

static sl_config_pos_t event_pos(builder_t *b, struct fy_event *e)
{
    const struct fy_mark *m = fy_event_start_mark(e);
    if (m != NULL && m->line >= 0 && m->column >= 0)
        return (sl_config_pos_t){(uint32_t)m->line + 1, (uint32_t)m->column + 1};
    /* An empty value has no mark; its key (the previous sibling) is the best place to point. */
    if (b->cur != NULL && b->cur->last != NULL)
        return b->cur->last->pos;
    if (b->cur != NULL)
        return b->cur->pos;
    return (sl_config_pos_t){1, 1};
}

static void append(builder_t *b, sl__config_node_t *n)
{
    n->parent = b->cur;
    if (b->cur == NULL) {
        b->root = n;
        return;
    }
    if (b->cur->last != NULL)
        b->cur->last->next = n;
    else
        b->cur->first = n;
    b->cur->last = n;
    b->cur->count++;
}

static sl__config_node_t *new_node(builder_t *b, enum sl__config_node_kind kind, struct fy_event *e)
{
    sl__config_node_t *n = sl_arena_alloc(&b->ctx->scratch, sizeof(*n));
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->pos = event_pos(b, e);
    n->weight = 1;
    return n;
}

static void add_weight(builder_t *b, size_t w)
{
    if (b->cur != NULL)
        b->cur->weight += w;
}

/* Duplicate keys are found here, once for every mapping, so each key table need not. Small
 * mappings compare pairwise; large ones (many upstreams) go through a temporary hash. */
static void check_duplicate_keys(builder_t *b, sl__config_node_t *map)
{
    size_t npairs = map->count / 2;
    if (npairs < 2)
        return;
    size_t cap = 16;
    while (cap < npairs * 2)
        cap *= 2;
    sl__config_node_t **slots = npairs > 8 ? sl_xcalloc(cap, sizeof(*slots)) : NULL;
    for (sl__config_node_t *k = map->first; k != NULL && k->next != NULL; k = k->next->next) {
        const sl__config_node_t *kd = sl__config_node_deref(k);
        if (kd->kind != SL__CONFIG_NODE_SCALAR)
            continue;
        const sl__config_node_t *first = NULL;
        if (slots != NULL) {
            size_t mask = cap - 1;
            size_t i = hash_bytes(kd->text) & mask;
            while (slots[i] != NULL && !sl_str_eq(sl__config_node_deref(slots[i])->text, kd->text))
                i = (i + 1) & mask;
            if (slots[i] == NULL)
                slots[i] = k;
            else
                first = slots[i];
        } else {
            for (sl__config_node_t *p = map->first; p != k; p = p->next->next) {
                const sl__config_node_t *pd = sl__config_node_deref(p);
                if (!p->dup && pd->kind == SL__CONFIG_NODE_SCALAR && sl_str_eq(pd->text, kd->text)) {
                    first = p;
                    break;
                }
            }
        }
        if (first != NULL) {
            char q[80];
            k->dup = true;
            sl__config_error(b->ctx, k, "duplicate key %s (first defined at %u:%u)",
                             sl__config_quote(q, sizeof(q), kd->text), first->pos.line, first->pos.col);
        }
    }
    free(slots);
}

static void open_container(builder_t *b, enum sl__config_node_kind kind, struct fy_event *e, struct fy_token *anchor)
{
    sl__config_node_t *n = new_node(b, kind, e);
    append(b, n);
    /* Stashed in `text` until the node is complete: an anchor becomes usable only then, which
     * rules out an alias to its own ancestor (a cycle). */
    n->text = anchor != NULL ? token_text(b, anchor) : SL_STR_NULL;
    b->cur = n;
}

static void close_container(builder_t *b)
{
    sl__config_node_t *n = b->cur;
    if (n == NULL)
        return;
    if (n->kind == SL__CONFIG_NODE_MAP)
        check_duplicate_keys(b, n);
    if (n->text.ptr != NULL)
        anchor_put(b, n->text, n);
    n->text = SL_STR_NULL;
    b->cur = n->parent;
    add_weight(b, n->weight);
}

static void on_scalar(builder_t *b, struct fy_event *e)
{
    sl__config_node_t *n = new_node(b, SL__CONFIG_NODE_SCALAR, e);
    n->text = token_text(b, e->scalar.value);
    enum fy_scalar_style style = fy_token_scalar_style(e->scalar.value);
    n->plain = style == FYSS_PLAIN && e->scalar.tag == NULL;
    /* libfyaml marks a quoted scalar's content; the node starts at its opening quote. */
    if ((style == FYSS_SINGLE_QUOTED || style == FYSS_DOUBLE_QUOTED) && n->pos.col > 1)
        n->pos.col--;
    n->weight = 1 + n->text.len;
    append(b, n);
    add_weight(b, n->weight);
    if (e->scalar.anchor != NULL)
        anchor_put(b, token_text(b, e->scalar.anchor), n);
}

static void on_alias(builder_t *b, struct fy_event *e)
{
    sl_str_t name = token_text(b, e->alias.anchor);
    sl__config_node_t *target = anchor_get(b, name);
    sl__config_node_t *n = new_node(b, SL__CONFIG_NODE_ALIAS, e);
    /* libfyaml marks the anchor name; point at the '*' the author typed. */
    if (n->pos.col > 1)
        n->pos.col--;
    if (target == NULL) {
        /* Like a syntax error, it stops the load after parsing: walking a hole in the tree
         * would only add errors about the hole. */
        sl__config_error(b->ctx, n, "alias *%.*s refers to no anchor defined before it", ANCHOR_SHOWN(name));
        b->bad_alias = true;
        n->kind = SL__CONFIG_NODE_SCALAR;
        n->text = SL_STR_LIT("");
        n->plain = true;
        append(b, n);
        return;
    }
    /* Each alias costs its target's expanded weight: a "billion laughs" file runs out of
     * budget long before the walker could be made to copy gigabytes. */
    if (target->weight > b->budget) {
        sl__config_error(b->ctx, n, "aliases expand this document too much (at alias *%.*s)", ANCHOR_SHOWN(name));
        b->failed = true;
        return;
    }
    b->budget -= target->weight;
    n->target = target;
    n->weight = target->weight;
    append(b, n);
    add_weight(b, n->weight);
}

static void on_event(builder_t *b, struct fy_event *e)
{
    switch (e->type) {
    case FYET_DOCUMENT_START:
        if (++b->ndocs > 1) {
            sl__config_error_at(b->ctx, event_pos(b, e), "only one YAML document is allowed");
            b->failed = true;
        }
        break;
    case FYET_MAPPING_START:
        open_container(b, SL__CONFIG_NODE_MAP, e, e->mapping_start.anchor);
        break;
    case FYET_SEQUENCE_START:
        open_container(b, SL__CONFIG_NODE_SEQ, e, e->sequence_start.anchor);
        break;
    case FYET_MAPPING_END:
    case FYET_SEQUENCE_END:
        close_container(b);
        break;
    case FYET_SCALAR:
        on_scalar(b, e);
        break;
    case FYET_ALIAS:
        on_alias(b, e);
        break;
    default:
        break;
    }
}

static void report_syntax_errors(builder_t *b, struct fy_diag *diag)
{
    void *iter = NULL;
    struct fy_diag_error *de;
    bool any = false;
    while ((de = fy_diag_errors_iterate(diag, &iter)) != NULL) {
        if (de->type < FYET_ERROR)
            continue;
        /* libfyaml's collected errors are already 1-based. */
        sl_config_pos_t pos = {de->line > 0 ? (uint32_t)de->line : 1, de->column > 0 ? (uint32_t)de->column : 1};
        sl__config_error_at(b->ctx, pos, "YAML syntax error: %s", de->msg != NULL ? de->msg : "invalid YAML");
        any = true;
    }
    if (!any)
        sl__config_error_at(b->ctx, (sl_config_pos_t){1, 1}, "YAML syntax error");
}

/* YAML 1.2 §5.1 allows only printable Unicode, and libfyaml 0.7.12 loops forever on some
 * invalid UTF-8 (a directive like "%\xff" never advances), so the text is checked before
 * libfyaml sees it. Only UTF-8 is accepted (a leading BOM is skipped). */
static int check_text(sl__config_ctx_t *ctx, const unsigned char *p, size_t len)
{
    sl_config_pos_t pos = {1, 1};
    size_t i = len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf ? 3 : 0;
    while (i < len) {
        unsigned c = p[i];
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
        bool valid = n > 0 && i + n <= len;
        for (size_t k = 1; valid && k < n; k++) {
            valid = (p[i + k] & 0xc0) == 0x80;
            cp = cp << 6 | (p[i + k] & 0x3fu);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are not UTF-8 (RFC 3629 §3). */
        valid = valid && !(n == 2 && cp < 0x80) && !(n == 3 && cp < 0x800) && !(n == 4 && cp < 0x10000) &&
                cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
        if (!valid) {
            sl__config_error_at(ctx, pos, "invalid UTF-8 (byte 0x%02x): a config file must be UTF-8 text", c);
            return -1;
        }
        /* c-printable: TAB, LF, CR, x20-x7E, x85, xA0-xD7FF, xE000-xFFFD, x10000-x10FFFF */
        bool printable = cp == '\t' || cp == '\n' || cp == '\r' || (cp >= 0x20 && cp <= 0x7e) || cp == 0x85 ||
                         (cp >= 0xa0 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd) || cp >= 0x10000;
        if (!printable) {
            sl__config_error_at(ctx, pos, "control character U+%04X is not allowed in YAML text", cp);
            return -1;
        }
        if (cp == '\n' || (cp == '\r' && (i + 1 == len || p[i + 1] != '\n'))) {
            pos.line++;
            pos.col = 1;
        } else if (cp != '\r') {
            pos.col++;
        }
        i += n;
    }
    return 0;
}

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

int sl__config_yaml_parse(sl__config_ctx_t *ctx, const char *data, size_t len, const sl__config_node_t **root)
{
    if (check_text(ctx, (const unsigned char *)data, len) != 0)
        return -1;
    builder_t b = {.ctx = ctx};
    /* Room for any alias-free document (nodes + bytes <= 2 * len) and a little reuse on top. */
    b.budget = (len > SIZE_MAX / 8 ? SIZE_MAX / 2 : 4 * len) + 65536;

    struct fy_diag_cfg dcfg;
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = discard_output;
    dcfg.level = FYET_ERROR;
    dcfg.colorize = false;
    struct fy_diag *diag = fy_diag_create(&dcfg);
    if (diag == NULL) {
        sl__config_error_at(ctx, (sl_config_pos_t){1, 1}, "cannot create the YAML parser");
        return -1;
    }
    fy_diag_set_collect_errors(diag, true);
    struct fy_parse_cfg pcfg = {.flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2, .diag = diag};
    struct fy_parser *p = fy_parser_create(&pcfg);
    b.iter = fy_token_iter_create(NULL);
    if (p == NULL || b.iter == NULL || fy_parser_set_string(p, data, len) != 0) {
        if (p != NULL)
            fy_parser_destroy(p);
        if (b.iter != NULL)
            fy_token_iter_destroy(b.iter);
        fy_diag_destroy(diag);
        sl__config_error_at(ctx, (sl_config_pos_t){1, 1}, "cannot create the YAML parser");
        return -1;
    }

    struct fy_event *e;
    while (!b.failed && (e = fy_parser_parse(p)) != NULL) {
        on_event(&b, e);
        fy_parser_event_free(p, e);
    }
    bool syntax = fy_parser_get_stream_error(p);
    if (syntax)
        report_syntax_errors(&b, diag);
    fy_token_iter_destroy(b.iter);
    fy_parser_destroy(p);
    fy_diag_destroy(diag);
    free(b.anchors);
    free(b.text);

    if (syntax || b.failed || b.bad_alias)
        return -1;
    if (b.root == NULL || sl__config_node_is_null(b.root)) {
        sl__config_error_at(ctx, (sl_config_pos_t){1, 1}, "the configuration is empty (at least 'listen' is needed)");
        return -1;
    }
    *root = b.root;
    return 0;
}
