/*
 * The path-prefix trie: a compressed byte trie (each edge a run of bytes) whose nodes carry the
 * routes whose path_prefix ends there. One walk down the request path finds the longest prefix
 * that has routes; each node links to its nearest ancestor with routes, so the router can fall
 * back to shorter prefixes without a stack. Cost depends on the path length, not the route count.
 */
#include "router/internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/bug.h"

/* Below this many children a linear scan of the key bytes beats a binary search. */
#define LINEAR_CHILDREN 8

static sl__router_trie_node_t *node_new(sl__router_trie_t *t, const char *label, size_t len, sl_arena_t *a)
{
    sl__router_trie_node_t *n = sl_arena_alloc(a, sizeof(*n));
    memset(n, 0, sizeof(*n));
    n->label = label;
    n->label_len = len;
    t->nnodes++;
    return n;
}

/* Index of the first child whose key is >= c. */
static uint32_t lower_bound(const sl__router_trie_node_t *n, unsigned char c)
{
    uint32_t lo = 0, hi = n->nchildren;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (n->keys[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static sl__router_trie_node_t *find_child(const sl__router_trie_node_t *n, unsigned char c)
{
    if (n->nchildren <= LINEAR_CHILDREN) {
        for (uint32_t i = 0; i < n->nchildren; i++)
            if (n->keys[i] == c)
                return n->children[i];
        return NULL;
    }
    uint32_t i = lower_bound(n, c);
    return i < n->nchildren && n->keys[i] == c ? n->children[i] : NULL;
}

static void add_child(sl__router_trie_node_t *n, sl__router_trie_node_t *child, sl_arena_t *a)
{
    unsigned char c = (unsigned char)child->label[0];
    if (n->nchildren == n->cap) {
        uint32_t cap = n->cap ? n->cap * 2 : 2;
        unsigned char *keys = sl_arena_alloc(a, cap);
        sl__router_trie_node_t **children = sl_arena_alloc(a, cap * sizeof(*children));
        if (n->nchildren) {
            memcpy(keys, n->keys, n->nchildren);
            memcpy(children, n->children, n->nchildren * sizeof(*children));
        }
        n->keys = keys;
        n->children = children;
        n->cap = cap;
    }
    uint32_t i = lower_bound(n, c);
    memmove(n->keys + i + 1, n->keys + i, n->nchildren - i);
    memmove(n->children + i + 1, n->children + i, (n->nchildren - i) * sizeof(*n->children));
    n->keys[i] = c;
    n->children[i] = child;
    n->nchildren++;
}

sl__router_list_t *sl__router_trie_insert(sl__router_trie_t *t, sl_str_t prefix, sl_arena_t *a)
{
    if (t->root == NULL)
        t->root = node_new(t, "", 0, a);
    sl__router_trie_node_t *n = t->root;
    const char *p = prefix.ptr;
    size_t rem = prefix.len;
    while (rem > 0) {
        unsigned char c = (unsigned char)p[0];
        sl__router_trie_node_t *child = find_child(n, c);
        if (child == NULL) {
            child = node_new(t, p, rem, a);
            add_child(n, child, a);
            return &child->routes;
        }
        size_t common = 1;
        while (common < child->label_len && common < rem && child->label[common] == p[common])
            common++;
        if (common < child->label_len) {
            /* Split the edge: a new node takes the shared bytes and the same slot in the parent
             * (its first byte is unchanged), the old child hangs below it with the rest. */
            sl__router_trie_node_t *mid = node_new(t, child->label, common, a);
            child->label += common;
            child->label_len -= common;
            add_child(mid, child, a);
            uint32_t i = lower_bound(n, c);
            SL_BUG_ON(i >= n->nchildren || n->keys[i] != c);
            n->children[i] = mid;
            child = mid;
        }
        n = child;
        p += common;
        rem -= common;
    }
    return &n->routes;
}

void sl__router_trie_finish(sl__router_trie_t *t)
{
    if (t->root == NULL)
        return;
    /* Iterative, because the depth is bounded only by the longest configured prefix. */
    sl__router_trie_node_t **stack = sl_xmalloc(t->nnodes * sizeof(*stack));
    size_t top = 0;
    t->root->up = NULL;
    stack[top++] = t->root;
    while (top > 0) {
        sl__router_trie_node_t *n = stack[--top];
        const sl__router_trie_node_t *nearest = n->routes.n > 0 ? n : n->up;
        for (uint32_t i = 0; i < n->nchildren; i++) {
            n->children[i]->up = nearest;
            stack[top++] = n->children[i];
        }
    }
    free(stack);
}

const sl__router_trie_node_t *sl__router_trie_longest(const sl__router_trie_t *t, const char *p, size_t len)
{
    const sl__router_trie_node_t *n = t->root, *best = NULL;
    size_t pos = 0;
    while (n != NULL) {
        if (n->routes.n > 0)
            best = n;
        if (pos == len)
            break;
        const sl__router_trie_node_t *child = find_child(n, (unsigned char)p[pos]);
        if (child == NULL || child->label_len > len - pos || memcmp(child->label, p + pos, child->label_len) != 0)
            break;
        pos += child->label_len;
        n = child;
    }
    return best;
}
