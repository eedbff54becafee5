/*
 * The life of a config generation: a load (read the file, build the YAML tree, walk the key
 * tables, cross-check, all into one arena), the error list every stage appends to, and the
 * reference count that lets workers keep an old generation while a reload publishes a new one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/bug.h"
#include "common/error.h"
#include "config/config.h"
#include "config/internal.h"

/* Far above any real config; stops a wrong path (a log, a device) from being slurped. */
#define MAX_FILE_BYTES (64u << 20)

/* ---- errors ------------------------------------------------------------------------------- */

static sl_str_t intern_file(sl_config_errors_t *errs, sl_str_t file)
{
    /* Every error of one load names the same file: keep one copy. */
    if (errs->count > 0 && sl_str_eq(errs->items[errs->count - 1].file, file))
        return errs->items[errs->count - 1].file;
    if (errs->strings.chunk_size == 0)
        sl_arena_init(&errs->strings, 1024);
    return sl_arena_str_dup(&errs->strings, file);
}

void sl_config_errors_vadd(sl_config_errors_t *errs, sl_str_t file, uint32_t line, uint32_t col, const char *fmt,
                           va_list ap)
{
    if (errs->count == errs->cap) {
        errs->cap = errs->cap ? errs->cap * 2 : 16;
        errs->items = sl_xrealloc(errs->items, errs->cap * sizeof(*errs->items));
    }
    sl_config_error_t *e = &errs->items[errs->count];
    e->file = intern_file(errs, file);
    e->line = line;
    e->col = col;
    e->path[0] = '\0';
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    errs->count++;
}

void sl_config_errors_add(sl_config_errors_t *errs, sl_str_t file, uint32_t line, uint32_t col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sl_config_errors_vadd(errs, file, line, col, fmt, ap);
    va_end(ap);
}

void sl_config_errors_dispose(sl_config_errors_t *errs)
{
    free(errs->items);
    if (errs->strings.chunk_size != 0)
        sl_arena_dispose(&errs->strings);
    memset(errs, 0, sizeof(*errs));
}

void sl_config_errors_print(const sl_config_errors_t *errs, FILE *fp)
{
    for (size_t i = 0; i < errs->count; i++) {
        const sl_config_error_t *e = &errs->items[i];
        if (e->line == 0)
            fprintf(fp, "%.*s: %s\n", SL_STR_FMT(e->file), e->message);
        else
            fprintf(fp, "%.*s:%u:%u: %s\n", SL_STR_FMT(e->file), e->line, e->col, e->message);
    }
}

static void verror_at(sl__config_ctx_t *ctx, sl_config_pos_t pos, const char *fmt, va_list ap)
{
    if (++ctx->nerrors > SL__CONFIG_MAX_ERRORS)
        return;
    sl_config_errors_vadd(ctx->errs, ctx->file, pos.line, pos.col, fmt, ap);
}

void sl__config_error_at(sl__config_ctx_t *ctx, sl_config_pos_t pos, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror_at(ctx, pos, fmt, ap);
    va_end(ap);
}

/* Writes the path of `n` from the root (`a.b[2].c`) into out; a path that does not fit is cut
 * at the front with "..". A key node names itself, a value the key before it. */
static void node_path(const sl__config_node_t *n, char *out, size_t cap)
{
    char tmp[128];
    size_t start = sizeof(tmp);
    tmp[--start] = '\0';
    bool cut = false;
    for (const sl__config_node_t *c = n; c != NULL && c->parent != NULL && !cut; c = c->parent) {
        const sl__config_node_t *p = c->parent;
        char seg[80];
        int len = 0;
        if (p->kind == SL__CONFIG_NODE_SEQ) {
            size_t i = 0;
            for (const sl__config_node_t *s = p->first; s != NULL && s != c; s = s->next)
                i++;
            len = snprintf(seg, sizeof(seg), "[%zu]", i);
        } else if (p->kind == SL__CONFIG_NODE_MAP) {
            /* Children alternate key, value: a value's key is the child just before it. */
            const sl__config_node_t *key = c, *prev = NULL;
            size_t i = 0;
            for (const sl__config_node_t *s = p->first; s != NULL && s != c; s = s->next, i++)
                prev = s;
            if (i % 2 == 1)
                key = prev;
            len = snprintf(seg, sizeof(seg), ".%.*s", (int)(key->text.len < 60 ? key->text.len : 60), key->text.ptr);
        }
        if (len <= 0)
            continue;
        if ((size_t)len >= sizeof(seg))
            len = (int)sizeof(seg) - 1;
        if ((size_t)len + 3 > start) {
            cut = true;
            break;
        }
        start -= (size_t)len;
        memcpy(tmp + start, seg, (size_t)len);
    }
    const char *p = tmp + start;
    if (*p == '.')
        p++;
    snprintf(out, cap, "%s%s", cut ? ".." : "", p);
}

void sl__config_error(sl__config_ctx_t *ctx, const sl__config_node_t *n, const char *fmt, ...)
{
    sl_config_pos_t pos = n != NULL && n->pos.line != 0 ? n->pos : (sl_config_pos_t){1, 1};
    size_t before = ctx->errs->count;
    va_list ap;
    va_start(ap, fmt);
    verror_at(ctx, pos, fmt, ap);
    va_end(ap);
    if (n != NULL && ctx->errs->count > before)
        node_path(n, ctx->errs->items[ctx->errs->count - 1].path, sizeof(ctx->errs->items[0].path));
}

/* Walk order is mostly file order, but cross-checks run last: this load's errors are sorted by
 * position, ties kept in report order (qsort is not stable, so the index is part of the key). */
typedef struct sort_key {
    uint32_t line, col;
    size_t index;
} sort_key_t;

static int cmp_sort_keys(const void *a, const void *b)
{
    const sort_key_t *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void sort_errors(sl_config_errors_t *errs, size_t from)
{
    size_t n = errs->count - from;
    if (n < 2)
        return;
    sort_key_t *keys = sl_xmalloc(n * sizeof(*keys));
    for (size_t i = 0; i < n; i++)
        keys[i] = (sort_key_t){errs->items[from + i].line, errs->items[from + i].col, i};
    qsort(keys, n, sizeof(*keys), cmp_sort_keys);
    sl_config_error_t *sorted = sl_xmalloc(n * sizeof(*sorted));
    for (size_t i = 0; i < n; i++)
        sorted[i] = errs->items[from + keys[i].index];
    memcpy(errs->items + from, sorted, n * sizeof(*sorted));
    free(sorted);
    free(keys);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

sl_config_t *sl_config_ref(sl_config_t *c)
{
    atomic_fetch_add_explicit(&c->refcount, 1, memory_order_relaxed);
    return c;
}

static void destroy(sl_config_t *c)
{
    sl_arena_dispose(&c->arena);
    free(c);
}

void sl_config_unref(sl_config_t *c)
{
    if (c == NULL)
        return;
    /* acq_rel: every reader's last use happens before the free, as with any refcount. */
    if (atomic_fetch_sub_explicit(&c->refcount, 1, memory_order_acq_rel) == 1)
        destroy(c);
}

long sl_config_find_upstream(const sl_config_t *c, sl_str_t name)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (sl_str_eq(c->upstreams[i].name, name))
            return (long)i;
    return -1;
}

/* ---- loading ------------------------------------------------------------------------------ */

int sl_config_load_buffer(const char *name, const char *data, size_t len, sl_config_t **out, sl_config_errors_t *errs)
{
    sl_config_t *cfg = sl_xcalloc(1, sizeof(*cfg));
    atomic_init(&cfg->refcount, 1);
    sl_arena_init(&cfg->arena, 16 * 1024);
    cfg->path = sl_arena_str_dup(&cfg->arena, sl_str_from_cstr(name != NULL ? name : "<buffer>"));

    sl__config_ctx_t ctx = {.cfg = cfg, .errs = errs, .file = cfg->path};
    sl_arena_init(&ctx.scratch, 64 * 1024);
    size_t first_error = errs->count;

    if (sl__config_yaml_parse(&ctx, data != NULL ? data : "", data != NULL ? len : 0, &ctx.root) == 0) {
        sl__config_defaults(&ctx, &sl__config_top, cfg);
        sl__config_walk(&ctx, &sl__config_top, "config", ctx.root, cfg);
        sl__config_validate(&ctx);
    }
    sl_arena_dispose(&ctx.scratch);

    if (ctx.nerrors > 0) {
        sort_errors(errs, first_error);
        /* Last, after sorting, so it reads as the end of the list. */
        if (ctx.nerrors > SL__CONFIG_MAX_ERRORS)
            sl_config_errors_add(errs, ctx.file, 0, 0, "too many errors: %zu more not shown",
                                 ctx.nerrors - SL__CONFIG_MAX_ERRORS);
        destroy(cfg);
        return SL_ECONFIG;
    }
    *out = cfg;
    return 0;
}

static int read_file(const char *path, char **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    }
    if (st.st_size > (off_t)MAX_FILE_BYTES) {
        close(fd);
        return -EFBIG;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = sl_xmalloc(cap);
    for (;;) {
        if (n == cap) {
            /* The file grew while we read it; still bounded by the cap. */
            if (cap > MAX_FILE_BYTES) {
                free(buf);
                close(fd);
                return -EFBIG;
            }
            cap *= 2;
            buf = sl_xrealloc(buf, cap);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = -errno;
            free(buf);
            close(fd);
            return err;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    *data = buf;
    *len = n;
    return 0;
}

int sl_config_read_file(const char *path, char **data, size_t *len)
{
    return read_file(path, data, len);
}

int sl_config_load_file(const char *path, sl_config_t **out, sl_config_errors_t *errs)
{
    char *data = NULL;
    size_t len = 0;
    int rc = read_file(path, &data, &len);
    if (rc != 0) {
        sl_config_errors_add(errs, sl_str_from_cstr(path), 0, 0, "cannot read %s: %s", path, strerror(-rc));
        return rc;
    }
    rc = sl_config_load_buffer(path, data, len, out, errs);
    free(data);
    return rc;
}
