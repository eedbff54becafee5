/*
 * Private to src/router: the two lookup structures the compiled router is made of, a hash table
 * keyed by byte strings (exact hosts, wildcard suffixes, exact paths) and a compressed byte trie
 * (path prefixes). Both are built once into the router's arena and then only read, from any
 * number of threads, without locks or allocation.
 */
#ifndef SL_ROUTER_INTERNAL_H
#define SL_ROUTER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/str.h"

/* Route indices (into cfg->routes) sharing one key, in config order. Most keys have one route,
 * kept inline so matching does not chase a pointer for it. */
typedef struct sl__router_list {
    uint32_t n, cap; /* cap <= 1: the item is `one` */
    union {
        uint32_t one;
        uint32_t *many;
    } u;
} sl__router_list_t;

static inline const uint32_t *sl__router_list_items(const sl__router_list_t *l)
{
    return l->cap <= 1 ? &l->u.one : l->u.many;
}

/** Appends `idx` unless it is already the last entry (a route naming the same host twice). */
void sl__router_list_push(sl__router_list_t *l, uint32_t idx, sl_arena_t *a);

/* ---- hash table ---------------------------------------------------------------------------- */

typedef struct sl__router_slot {
    uint64_t hash;
    sl_str_t key; /* ptr == NULL marks an empty slot */
    void *value;
} sl__router_slot_t;

/*
 * Open addressing, linear probing, load factor at most 1/2 so every probe sequence ends at an
 * empty slot. With `fold_case`, keys must be inserted lowercase and lookups ignore ASCII case.
 */
typedef struct sl__router_table {
    sl__router_slot_t *slots;
    size_t mask;
    size_t count;
    bool fold_case;
} sl__router_table_t;

void sl__router_table_init(sl__router_table_t *t, bool fold_case);

/**
 * The value slot for `key`, created (value NULL) when absent. The key's bytes are not copied:
 * they must outlive the table (config strings or the router's arena).
 */
void **sl__router_table_upsert(sl__router_table_t *t, sl_str_t key, sl_arena_t *a);

/** The value stored for key, or NULL. Read-only, thread-safe. */
void *sl__router_table_get(const sl__router_table_t *t, const char *key, size_t len);

uint64_t sl__router_hash(const char *p, size_t len, bool fold_case);

/* ---- prefix trie --------------------------------------------------------------------------- */

typedef struct sl__router_trie_node sl__router_trie_node_t;

struct sl__router_trie_node {
    const char *label; /* the edge into this node; points into config strings */
    size_t label_len;
    unsigned char *keys; /* first byte of each child's label, sorted */
    sl__router_trie_node_t **children;
    uint32_t nchildren, cap;
    sl__router_list_t routes;         /* routes whose prefix ends exactly here */
    const sl__router_trie_node_t *up; /* nearest proper ancestor with routes; set by _finish */
};

typedef struct sl__router_trie {
    sl__router_trie_node_t *root; /* NULL while empty; the root stands for the empty prefix */
    size_t nnodes;
} sl__router_trie_t;

/** The route list of `prefix`, created empty when new. The prefix bytes must outlive the trie. */
sl__router_list_t *sl__router_trie_insert(sl__router_trie_t *t, sl_str_t prefix, sl_arena_t *a);

/** Links every node to its nearest ancestor with routes; call once after the last insert. */
void sl__router_trie_finish(sl__router_trie_t *t);

/**
 * The node of the longest prefix of `p` that carries routes, or NULL. Shorter matching prefixes
 * follow through `up`, longest first. Read-only, allocation-free, thread-safe.
 */
const sl__router_trie_node_t *sl__router_trie_longest(const sl__router_trie_t *t, const char *p, size_t len);

#endif
