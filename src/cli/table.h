/*
 * Aligned text tables for the operator commands' human output: a header row and rows of cells,
 * each column as wide as its widest cell (in characters, so UTF-8 text lines up), columns two
 * spaces apart, no trailing blanks. The table owns copies of every string given to it.
 */
#ifndef SL_CLI_TABLE_H
#define SL_CLI_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct sl_cli_table sl_cli_table_t;

/** A table with `ncols` columns titled `headers` (copied). Allocation failure aborts. */
sl_cli_table_t *sl_cli_table_create(size_t ncols, const char *const *headers);

/** Numbers read better right-aligned; columns are left-aligned unless set here. */
void sl_cli_table_align_right(sl_cli_table_t *t, size_t col);

/** Appends a row of `ncols` cells (copied); a NULL cell prints as "-". */
void sl_cli_table_add(sl_cli_table_t *t, const char *const *cells);

size_t sl_cli_table_rows(const sl_cli_table_t *t);

/** Writes the header and every row, one line each. */
void sl_cli_table_print(const sl_cli_table_t *t, FILE *fp);

void sl_cli_table_destroy(sl_cli_table_t *t);

#endif
