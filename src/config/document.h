/*
 * The config as a document: the same YAML the loader reads, seen as a JSON value (jansson) so
 * the admin API can show it, change one route or upstream in it, and write it back. The
 * loader stays the only judge of validity: a changed document is emitted as YAML and loaded
 * like a file, so the API and the file can never disagree on what is valid.
 *
 * Threads: any; every function works on its arguments only. Memory: see each function.
 */
#ifndef SL_CONFIG_DOCUMENT_H
#define SL_CONFIG_DOCUMENT_H

#include <stddef.h>

#include <jansson.h>

#include "config/config.h"

/**
 * Parses `text` (YAML, or JSON, which is YAML) into a JSON value, aliases and `<<` merges
 * expanded. Plain scalars become null, booleans and numbers by the YAML 1.2 core schema, every
 * other scalar a string. Returns 0 and sets `*out` (a new reference), or SL_ECONFIG with the
 * syntax errors (positions, `name` as the file) appended to `errs`; `*out` is then untouched.
 */
int sl_config_document_parse(const char *name, const char *text, size_t len, json_t **out, sl_config_errors_t *errs);

/**
 * Emits `doc` (an object) as block-style YAML that sl_config_document_parse reads back to an
 * equal value: strings are plain only when YAML cannot read them as anything else. Returns a
 * malloc'd NUL-terminated buffer (the caller frees it) and its length in `*len`.
 */
char *sl_config_document_emit(const json_t *doc, size_t *len);

/** Reads a whole regular file (bounded like the loader's). 0 and a malloc'd buffer, or -errno. */
int sl_config_read_file(const char *path, char **data, size_t *len);

#endif
