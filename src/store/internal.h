/*
 * Store internals shared by its files: the Lua script and its digest (store/script.c).
 */
#ifndef SL_STORE_INTERNAL_H
#define SL_STORE_INTERNAL_H

/* The script text (modes 'a', 'l', 'r', 'q'; see store/script.c). */
extern const char sl__store_script[];

/** The script's SHA1 in lower-case hex, as Redis names it for EVALSHA. */
void sl__store_script_sha(char out[41]);

#endif
