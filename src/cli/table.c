/*
 * Aligned text tables (table.h): cells are kept as copies until the table is printed, because
 * a column's width is known only after its last row.
 */
#include "cli/table.h"

#include <stdlib.h>
#include <string.h>

#include "common/bug.h"

struct sl_cli_table {
    size_t ncols;
    char **cells; /* row-major, the header row first */
    size_t nrows; /* with the header row */
    size_t cap;   /* rows */
    bool *right;
};

static char *dup_cell(const char *s)
{
    if (s == NULL)
        s = "-";
    size_t n = strlen(s);
    char *p = sl_xmalloc(n + 1);
    /* A cell is one line: a newline or tab in data from the API would break the columns. */
    for (size_t i = 0; i < n; i++)
        p[i] = (s[i] == '\n' || s[i] == '\r' || s[i] == '\t') ? ' ' : s[i];
    p[n] = '\0';
    return p;
}

static void add_row(sl_cli_table_t *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 8;
        t->cells = sl_xrealloc(t->cells, t->cap * t->ncols * sizeof(*t->cells));
    }
    for (size_t c = 0; c < t->ncols; c++)
        t->cells[t->nrows * t->ncols + c] = dup_cell(cells[c]);
    t->nrows++;
}

sl_cli_table_t *sl_cli_table_create(size_t ncols, const char *const *headers)
{
    SL_BUG_ON(ncols == 0);
    sl_cli_table_t *t = sl_xcalloc(1, sizeof(*t));
    t->ncols = ncols;
    t->right = sl_xcalloc(ncols, sizeof(*t->right));
    add_row(t, headers);
    return t;
}

void sl_cli_table_align_right(sl_cli_table_t *t, size_t col)
{
    SL_BUG_ON(col >= t->ncols);
    t->right[col] = true;
}

void sl_cli_table_add(sl_cli_table_t *t, const char *const *cells)
{
    add_row(t, cells);
}

size_t sl_cli_table_rows(const sl_cli_table_t *t)
{
    return t->nrows - 1;
}

/* Characters, not bytes: UTF-8 continuation bytes do not take a column. */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xc0) != 0x80;
    return w;
}

void sl_cli_table_print(const sl_cli_table_t *t, FILE *fp)
{
    size_t *w = sl_xcalloc(t->ncols, sizeof(*w));
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++)
            w[c] = SL_MAX(w[c], width(t->cells[r * t->ncols + c]));
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r * t->ncols + c];
            size_t pad = w[c] - width(s);
            bool last = c + 1 == t->ncols;
            if (c > 0)
                fputs("  ", fp);
            if (t->right[c])
                fprintf(fp, "%*s", (int)pad, "");
            fputs(s, fp);
            if (!t->right[c] && !last)
                fprintf(fp, "%*s", (int)pad, "");
        }
        fputc('\n', fp);
    }
    free(w);
}

void sl_cli_table_destroy(sl_cli_table_t *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t->right);
    free(t);
}
