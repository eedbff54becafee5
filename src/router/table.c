/*
 * The router's hash table: exact hosts, wildcard host suffixes and exact paths each map a byte
 * string to a value in one probe sequence, so lookups cost the same for 10 keys or 10,000. Keys
 * come from the config; only the lookup key comes from the request. Built once in the router's
 * arena, read-only afterwards.
 */
#include "router/internal.h"

#include <string.h>

#define HASH_K1  0x9e3779b97f4a7c15ull
#define HASH_K2  0xbf58476d1ce4e5b9ull
#define BYTES_7F 0x7f7f7f7f7f7f7f7full
#define BYTES_80 0x8080808080808080ull

void sl__router_list_push(sl__router_list_t *l, uint32_t idx, sl_arena_t *a)
{
    if (l->n > 0 && sl__router_list_items(l)[l->n - 1] == idx)
        return;
    if (l->cap == 0) {
        l->u.one = idx;
        l->n = l->cap = 1;
        return;
    }
    if (l->n == l->cap) {
        uint32_t cap = l->cap * 2;
        uint32_t *many = sl_arena_alloc(a, cap * sizeof(*many));
        memcpy(many, sl__router_list_items(l), l->n * sizeof(*many));
        l->u.many = many;
        l->cap = cap;
    }
    l->u.many[l->n++] = idx;
}

/* Sets bit 5 in every byte that is 'A'..'Z', eight bytes at a time, so case-folded hashing of a
 * host costs no more than plain hashing. */
static inline uint64_t lower8(uint64_t w)
{
    uint64_t low7 = w & BYTES_7F;
    uint64_t ge_a = low7 + 0x3f3f3f3f3f3f3f3full; /* bit 7 set when the byte is >= 'A' */
    uint64_t gt_z = low7 + 0x2525252525252525ull; /* bit 7 set when the byte is >  'Z' */
    uint64_t upper = ge_a & ~gt_z & ~w & BYTES_80;
    return w | (upper >> 2);
}

static inline uint64_t mix(uint64_t h, uint64_t w)
{
    h = (h ^ w) * HASH_K1;
    return h ^ (h >> 32);
}

static inline uint64_t load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/*
 * The bytes of a string shorter than 8 as one word, without a variable-length memcpy (a libc
 * call on the hot path). For 1..3 bytes the layout is not the plain one, but it is a function of
 * the bytes and the length, which is all hashing and comparing need.
 */
static inline uint64_t load_short(const char *p, size_t len)
{
    if (len >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + len - 4, 4);
        return lo | ((uint64_t)hi << ((len - 4) * 8));
    }
    if (len == 0)
        return 0;
    return (uint64_t)(unsigned char)p[0] | (uint64_t)(unsigned char)p[len / 2] << 8 |
           (uint64_t)(unsigned char)p[len - 1] << 16;
}

/* The last `rem` (1..7) bytes of a string of at least 8, from one overlapping load. */
static inline uint64_t load_tail(const char *end, size_t rem)
{
    return load8(end - 8) >> ((8 - rem) * 8);
}

/* Inlined twice with a constant `fold_case`, so neither loop tests it per word. */
static inline __attribute__((always_inline)) uint64_t hash_impl(const char *p, size_t len, bool fold_case)
{
    uint64_t h = HASH_K2 ^ (len * HASH_K1);
    uint64_t w;
    if (len < 8) {
        w = load_short(p, len);
        h = mix(h, fold_case ? lower8(w) : w);
    } else {
        const char *end = p + len;
        for (; (size_t)(end - p) >= 8; p += 8)
            h = mix(h, fold_case ? lower8(load8(p)) : load8(p));
        if (p < end) {
            w = load_tail(end, (size_t)(end - p));
            h = mix(h, fold_case ? lower8(w) : w);
        }
    }
    h ^= h >> 33;
    h *= HASH_K2;
    return h ^ (h >> 29);
}

uint64_t sl__router_hash(const char *p, size_t len, bool fold_case)
{
    return fold_case ? hash_impl(p, len, true) : hash_impl(p, len, false);
}

/* `stored` is lowercase already (fold_case tables), so only the probe is folded. */
static bool fold_eq(const char *stored, const char *key, size_t len)
{
    if (len < 8)
        return load_short(stored, len) == lower8(load_short(key, len));
    size_t i = 0;
    for (; i + 8 <= len; i += 8)
        if (load8(stored + i) != lower8(load8(key + i)))
            return false;
    return i == len || load8(stored + len - 8) == lower8(load8(key + len - 8));
}

static bool key_eq(const sl__router_table_t *t, sl_str_t stored, const char *key, size_t len)
{
    if (stored.len != len)
        return false;
    if (len == 0)
        return true;
    return t->fold_case ? fold_eq(stored.ptr, key, len) : memcmp(stored.ptr, key, len) == 0;
}

void sl__router_table_init(sl__router_table_t *t, bool fold_case)
{
    memset(t, 0, sizeof(*t));
    t->fold_case = fold_case;
}

static sl__router_slot_t *probe(const sl__router_table_t *t, uint64_t h, const char *key, size_t len)
{
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        sl__router_slot_t *s = &t->slots[i];
        if (s->key.ptr == NULL || (s->hash == h && key_eq(t, s->key, key, len)))
            return s;
    }
}

static void grow(sl__router_table_t *t, sl_arena_t *a)
{
    size_t cap = t->slots ? (t->mask + 1) * 2 : 8;
    sl__router_table_t bigger = *t;
    bigger.slots = sl_arena_alloc(a, cap * sizeof(*bigger.slots));
    memset(bigger.slots, 0, cap * sizeof(*bigger.slots));
    bigger.mask = cap - 1;
    if (t->slots != NULL) {
        for (size_t i = 0; i <= t->mask; i++) {
            const sl__router_slot_t *s = &t->slots[i];
            if (s->key.ptr != NULL)
                *probe(&bigger, s->hash, s->key.ptr, s->key.len) = *s;
        }
    }
    /* The old array stays in the arena: build-time waste bounded by the final size. */
    *t = bigger;
}

void **sl__router_table_upsert(sl__router_table_t *t, sl_str_t key, sl_arena_t *a)
{
    static const char empty[1] = "";
    if (key.ptr == NULL)
        key.ptr = empty;
    if (t->slots == NULL || (t->count + 1) * 2 > t->mask + 1)
        grow(t, a);
    uint64_t h = sl__router_hash(key.ptr, key.len, t->fold_case);
    sl__router_slot_t *s = probe(t, h, key.ptr, key.len);
    if (s->key.ptr == NULL) {
        s->hash = h;
        s->key = key;
        s->value = NULL;
        t->count++;
    }
    return &s->value;
}

void *sl__router_table_get(const sl__router_table_t *t, const char *key, size_t len)
{
    if (t->count == 0)
        return NULL;
    const sl__router_slot_t *s = probe(t, sl__router_hash(key, len, t->fold_case), key, len);
    return s->key.ptr != NULL ? s->value : NULL;
}
