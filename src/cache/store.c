/*
 * The store: SL_CACHE_SHARDS shards, each a chained hash table of refcounted objects, a
 * segmented LRU (probation, protected) bounded in bytes, and the fetch locks of request
 * coalescing. Shared by every worker; each call holds one shard's mutex for a probe and a few
 * pointer moves (cache.h says why this beats per-worker stores).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "common/bug.h"
#include "common/error.h"

/* ---- objects ------------------------------------------------------------------------------ */

static bool kept_header(sl_str_t name)
{
    return !sl_str_caseeq(name, SL_STR_LIT("Age")) && !sl_str_caseeq(name, SL_STR_LIT("Sluice-Cache")) &&
           !sl_str_caseeq(name, SL_STR_LIT("Sluice-Error"));
}

static char *put_str(char *p, sl_str_t s, sl_str_t *out)
{
    if (s.len)
        memcpy(p, s.ptr, s.len);
    *out = (sl_str_t){p, s.len};
    p[s.len] = 0;
    return p + s.len + 1;
}

sl_cache_obj_t *sl_cache_obj_create(sl_str_t route, uint64_t tag, sl_str_t key, sl_str_t vary_names,
                                    sl_str_t vary_values, const sl_cache_meta_t *meta, const sl_header_t *headers,
                                    size_t nheaders, size_t body_hint)
{
    size_t text = route.len + key.len + vary_names.len + vary_values.len + 4;
    size_t kept = 0;
    for (size_t i = 0; i < nheaders; i++)
        if (kept_header(headers[i].name)) {
            text += headers[i].name.len + headers[i].value.len + 2;
            kept++;
        }
    size_t hdr_off = (sizeof(sl_cache_obj_t) + 15) & ~(size_t)15;
    size_t text_off = hdr_off + kept * sizeof(sl_header_t);
    sl_cache_obj_t *o = sl_xcalloc(1, text_off + text);
    atomic_init(&o->refs, 1);
    o->tag = tag;
    o->hash = sl_cache_hash(tag, key);
    o->meta = *meta;
    o->headers = (sl_header_t *)((char *)o + hdr_off);
    char *p = (char *)o + text_off;
    p = put_str(p, route, &o->route);
    p = put_str(p, key, &o->key);
    p = put_str(p, vary_names, &o->vary_names);
    p = put_str(p, vary_values, &o->vary_values);
    for (size_t i = 0; i < nheaders; i++) {
        if (!kept_header(headers[i].name))
            continue;
        sl_header_t *h = &o->headers[o->nheaders++];
        p = put_str(p, headers[i].name, &h->name);
        p = put_str(p, headers[i].value, &h->value);
        if (sl_str_caseeq(h->name, SL_STR_LIT("ETag")))
            o->etag = h->value;
        else if (sl_str_caseeq(h->name, SL_STR_LIT("Last-Modified")))
            o->last_modified = h->value;
    }
    if (body_hint) {
        o->body = sl_xmalloc(body_hint);
        o->body_cap = body_hint;
    }
    o->size = text_off + text + o->body_cap;
    return o;
}

int sl_cache_obj_append(sl_cache_obj_t *o, const char *data, size_t len, uint64_t max)
{
    if (o->body_len + len > max)
        return SL_ETOOBIG;
    if (o->body_len + len > o->body_cap) {
        size_t cap = o->body_cap ? o->body_cap * 2 : 4096;
        while (cap < o->body_len + len)
            cap *= 2;
        if (cap > max)
            cap = (size_t)max;
        o->body = sl_xrealloc(o->body, cap);
        o->size += cap - o->body_cap;
        o->body_cap = cap;
    }
    memcpy(o->body + o->body_len, data, len);
    o->body_len += len;
    return 0;
}

void sl_cache_obj_trim(sl_cache_obj_t *o)
{
    if (o->body_cap == o->body_len)
        return;
    if (o->body_len == 0) {
        free(o->body);
        o->body = NULL;
    } else {
        o->body = sl_xrealloc(o->body, o->body_len);
    }
    o->size -= o->body_cap - o->body_len;
    o->body_cap = o->body_len;
}

sl_cache_obj_t *sl_cache_obj_ref(sl_cache_obj_t *o)
{
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
    return o;
}

void sl_cache_obj_unref(sl_cache_obj_t *o)
{
    if (o == NULL || atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(o->body);
    free(o);
}

void sl_cache_obj_release(void *o)
{
    sl_cache_obj_unref(o);
}

sl_cache_obj_t *sl_cache_obj_refresh(const sl_cache_obj_t *o, const sl_header_t *update, size_t nupdate,
                                     const sl_cache_meta_t *meta)
{
    /* Stored fields not named in the 304, then every field of the 304 (RFC 9111 §3.2). */
    size_t n = 0;
    sl_header_t *merged = sl_xcalloc(o->nheaders + nupdate + 1, sizeof(*merged));
    for (size_t i = 0; i < o->nheaders; i++) {
        bool replaced = false;
        for (size_t j = 0; j < nupdate && !replaced; j++)
            replaced = sl_str_caseeq(o->headers[i].name, update[j].name);
        /* A 304 never carries the body's framing; keep the stored Content-* fields. */
        if (!replaced || sl_str_caseeq(o->headers[i].name, SL_STR_LIT("Content-Length")))
            merged[n++] = o->headers[i];
    }
    for (size_t j = 0; j < nupdate; j++)
        if (!sl_str_caseeq(update[j].name, SL_STR_LIT("Content-Length")))
            merged[n++] = update[j];
    sl_cache_obj_t *c =
        sl_cache_obj_create(o->route, o->tag, o->key, o->vary_names, o->vary_values, meta, merged, n, o->body_len);
    free(merged);
    if (o->body_len)
        memcpy(c->body, o->body, o->body_len);
    c->body_len = o->body_len;
    return c;
}

/* ---- shards ------------------------------------------------------------------------------- */

typedef struct lru {
    sl_cache_obj_t *head, *tail; /* head = most recent */
    uint64_t bytes;
} lru_t;

typedef struct fetch_lock {
    uint64_t tag, hash, until_ms;
    bool pass;
    char *key;
    size_t key_len;
} fetch_lock_t;

typedef struct shard {
    pthread_mutex_t mu;
    sl_cache_obj_t **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    lru_t probation, protected_;
    uint64_t inserts, evictions, rejected;
    fetch_lock_t *locks;
    size_t nlocks, caplocks;
} shard_t;

struct sl_cache {
    atomic_uint refs;
    atomic_uint_fast64_t budget;
    shard_t shards[SL_CACHE_SHARDS];
};

sl_cache_t *sl_cache_create(uint64_t budget)
{
    sl_cache_t *c = sl_xcalloc(1, sizeof(*c));
    atomic_init(&c->refs, 1);
    atomic_init(&c->budget, budget);
    for (size_t i = 0; i < SL_CACHE_SHARDS; i++) {
        shard_t *s = &c->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        s->nbuckets = 256;
        s->buckets = sl_xcalloc(s->nbuckets, sizeof(*s->buckets));
    }
    return c;
}

sl_cache_t *sl_cache_ref(sl_cache_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void sl_cache_unref(sl_cache_t *c)
{
    if (c == NULL || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < SL_CACHE_SHARDS; i++) {
        shard_t *s = &c->shards[i];
        for (size_t b = 0; b < s->nbuckets; b++)
            for (sl_cache_obj_t *o = s->buckets[b], *n; o != NULL; o = n) {
                n = o->hnext;
                sl_cache_obj_unref(o);
            }
        free(s->buckets);
        for (size_t j = 0; j < s->nlocks; j++)
            free(s->locks[j].key);
        free(s->locks);
        pthread_mutex_destroy(&s->mu);
    }
    free(c);
}

void sl_cache_set_budget(sl_cache_t *c, uint64_t budget)
{
    atomic_store_explicit(&c->budget, budget, memory_order_relaxed);
}

static shard_t *shard_of(sl_cache_t *c, uint64_t hash)
{
    return &c->shards[(hash >> 60) % SL_CACHE_SHARDS];
}

static uint64_t shard_budget(sl_cache_t *c)
{
    return atomic_load_explicit(&c->budget, memory_order_relaxed) / SL_CACHE_SHARDS;
}

static lru_t *segment_list(shard_t *s, uint8_t seg)
{
    return seg == 2 ? &s->protected_ : &s->probation;
}

static void lru_unlink(shard_t *s, sl_cache_obj_t *o)
{
    lru_t *l = segment_list(s, o->segment);
    if (o->prev)
        o->prev->next = o->next;
    else
        l->head = o->next;
    if (o->next)
        o->next->prev = o->prev;
    else
        l->tail = o->prev;
    o->prev = o->next = NULL;
    l->bytes -= o->size;
    o->segment = 0;
}

static void lru_push(shard_t *s, sl_cache_obj_t *o, uint8_t seg)
{
    lru_t *l = segment_list(s, seg);
    o->segment = seg;
    o->prev = NULL;
    o->next = l->head;
    if (l->head)
        l->head->prev = o;
    else
        l->tail = o;
    l->head = o;
    l->bytes += o->size;
}

/* Unlinks `o` from its bucket chain and lists and drops the table's reference. */
static void remove_obj(shard_t *s, sl_cache_obj_t *o)
{
    sl_cache_obj_t **pp = &s->buckets[o->hash & (s->nbuckets - 1)];
    while (*pp != o)
        pp = &(*pp)->hnext;
    *pp = o->hnext;
    lru_unlink(s, o);
    s->count--;
    sl_cache_obj_unref(o);
}

static void evict_to(shard_t *s, uint64_t budget)
{
    while (s->probation.bytes + s->protected_.bytes > budget) {
        sl_cache_obj_t *victim = s->probation.tail ? s->probation.tail : s->protected_.tail;
        if (victim == NULL)
            break;
        remove_obj(s, victim);
        s->evictions++;
    }
}

static void grow(shard_t *s)
{
    size_t nb = s->nbuckets * 2;
    sl_cache_obj_t **b = sl_xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < s->nbuckets; i++)
        for (sl_cache_obj_t *o = s->buckets[i], *n; o != NULL; o = n) {
            n = o->hnext;
            o->hnext = b[o->hash & (nb - 1)];
            b[o->hash & (nb - 1)] = o;
        }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

static bool same_key(const sl_cache_obj_t *o, uint64_t tag, uint64_t hash, sl_str_t key)
{
    return o->hash == hash && o->tag == tag && sl_str_eq(o->key, key);
}

sl_cache_obj_t *sl_cache_lookup(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key, const sl_headers_t *req,
                                sl_arena_t *scratch)
{
    shard_t *s = shard_of(c, hash);
    sl_cache_obj_t *found = NULL;
    pthread_mutex_lock(&s->mu);
    for (sl_cache_obj_t *o = s->buckets[hash & (s->nbuckets - 1)]; o != NULL; o = o->hnext) {
        if (!same_key(o, tag, hash, key))
            continue;
        if (o->vary_names.len && !sl_str_eq(o->vary_values, sl_cache_vary_values(scratch, o->vary_names, req)))
            continue;
        found = sl_cache_obj_ref(o);
        /* Segmented LRU: a second use promotes to protected, whose overflow goes back to
         * probation's head (not out), so the hot set is only ever displaced by hotter objects. */
        lru_unlink(s, o);
        lru_push(s, o, 2);
        uint64_t cap = shard_budget(c) / 5 * 4;
        while (s->protected_.bytes > cap && s->protected_.tail != NULL && s->protected_.tail != o) {
            sl_cache_obj_t *d = s->protected_.tail;
            lru_unlink(s, d);
            lru_push(s, d, 1);
        }
        break;
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

int sl_cache_insert(sl_cache_t *c, sl_cache_obj_t *o, uint32_t max_variants)
{
    shard_t *s = shard_of(c, o->hash);
    uint64_t budget = shard_budget(c);
    pthread_mutex_lock(&s->mu);
    if (o->size > budget / 4) {
        s->rejected++;
        pthread_mutex_unlock(&s->mu);
        return SL_ETOOBIG;
    }
    size_t variants = 0;
    sl_cache_obj_t *oldest = NULL;
    for (sl_cache_obj_t *e = s->buckets[o->hash & (s->nbuckets - 1)], *n; e != NULL; e = n) {
        n = e->hnext;
        if (!same_key(e, o->tag, o->hash, o->key))
            continue;
        if (sl_str_eq(e->vary_values, o->vary_values) && sl_str_eq(e->vary_names, o->vary_names)) {
            remove_obj(s, e);
            continue;
        }
        variants++;
        if (oldest == NULL || e->meta.response_time <= oldest->meta.response_time)
            oldest = e;
    }
    if (variants >= max_variants && oldest != NULL)
        remove_obj(s, oldest);
    o->hnext = s->buckets[o->hash & (s->nbuckets - 1)];
    s->buckets[o->hash & (s->nbuckets - 1)] = sl_cache_obj_ref(o);
    s->count++;
    s->inserts++;
    lru_push(s, o, 1);
    evict_to(s, budget);
    if (s->count > s->nbuckets)
        grow(s);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

size_t sl_cache_invalidate(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key)
{
    shard_t *s = shard_of(c, hash);
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    for (sl_cache_obj_t *e = s->buckets[hash & (s->nbuckets - 1)], *next; e != NULL; e = next) {
        next = e->hnext;
        if (same_key(e, tag, hash, key)) {
            remove_obj(s, e);
            n++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Removes every object `pred` selects; returns how many. Shard by shard, so a purge never
 * holds more than one lock. */
static size_t remove_where(sl_cache_t *c, bool (*pred)(const sl_cache_obj_t *o, const void *arg), const void *arg)
{
    size_t n = 0;
    for (size_t i = 0; i < SL_CACHE_SHARDS; i++) {
        shard_t *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        for (size_t b = 0; b < s->nbuckets; b++)
            for (sl_cache_obj_t *e = s->buckets[b], *next; e != NULL; e = next) {
                next = e->hnext;
                if (pred(e, arg)) {
                    remove_obj(s, e);
                    n++;
                }
            }
        pthread_mutex_unlock(&s->mu);
    }
    return n;
}

typedef struct purge_arg {
    sl_str_t route, target;
} purge_arg_t;

static bool purge_pred(const sl_cache_obj_t *o, const void *arg)
{
    const purge_arg_t *a = arg;
    if (a->route.len && !sl_str_eq(o->route, a->route))
        return false;
    if (a->target.len) {
        /* "host\ntarget" or, per consumer, "host\ntarget\n@consumer" */
        const char *nl = memchr(o->key.ptr, '\n', o->key.len);
        sl_str_t t = nl ? (sl_str_t){nl + 1, o->key.len - (size_t)(nl + 1 - o->key.ptr)} : o->key;
        const char *nl2 = memchr(t.ptr, '\n', t.len);
        if (nl2 != NULL)
            t.len = (size_t)(nl2 - t.ptr);
        if (!sl_str_eq(t, a->target))
            return false;
    }
    return true;
}

size_t sl_cache_purge(sl_cache_t *c, sl_str_t route, sl_str_t target)
{
    purge_arg_t a = {route, target};
    return remove_where(c, purge_pred, &a);
}

typedef struct retain_arg {
    const uint64_t *tags;
    size_t n;
} retain_arg_t;

static bool retain_pred(const sl_cache_obj_t *o, const void *arg)
{
    const retain_arg_t *a = arg;
    for (size_t i = 0; i < a->n; i++)
        if (a->tags[i] == o->tag)
            return false;
    return true;
}

size_t sl_cache_retain(sl_cache_t *c, const uint64_t *tags, size_t ntags)
{
    retain_arg_t a = {tags, ntags};
    return remove_where(c, retain_pred, &a);
}

/* ---- coalescing locks --------------------------------------------------------------------- */

static fetch_lock_t *lock_find(shard_t *s, uint64_t tag, uint64_t hash, sl_str_t key)
{
    for (size_t i = 0; i < s->nlocks; i++) {
        fetch_lock_t *l = &s->locks[i];
        if (l->tag == tag && l->hash == hash && l->key_len == key.len && memcmp(l->key, key.ptr, key.len) == 0)
            return l;
    }
    return NULL;
}

enum sl_cache_lock_result sl_cache_lock(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key, uint64_t now_ms,
                                        uint64_t hold_ms)
{
    shard_t *s = shard_of(c, hash);
    enum sl_cache_lock_result r = SL_CACHE_LOCK_TAKEN;
    pthread_mutex_lock(&s->mu);
    fetch_lock_t *l = lock_find(s, tag, hash, key);
    if (l != NULL && l->until_ms > now_ms) {
        r = l->pass ? SL_CACHE_LOCK_PASS : SL_CACHE_LOCK_BUSY;
    } else if (l != NULL) {
        l->until_ms = now_ms + hold_ms; /* an expired holder (stuck or gone) or pass: taken over */
        l->pass = false;
    } else {
        if (s->nlocks == s->caplocks) {
            s->caplocks = s->caplocks ? s->caplocks * 2 : 8;
            s->locks = sl_xrealloc(s->locks, s->caplocks * sizeof(*s->locks));
        }
        l = &s->locks[s->nlocks++];
        l->tag = tag;
        l->hash = hash;
        l->until_ms = now_ms + hold_ms;
        l->pass = false;
        l->key = sl_xmalloc(key.len ? key.len : 1);
        memcpy(l->key, key.ptr, key.len);
        l->key_len = key.len;
    }
    /* Expired markers of keys nobody asked for again are dropped as they are met. */
    for (size_t i = 0; i < s->nlocks;) {
        fetch_lock_t *e = &s->locks[i];
        if (e != l && e->until_ms <= now_ms) {
            free(e->key);
            *e = s->locks[--s->nlocks];
            if (l == &s->locks[s->nlocks])
                l = e;
            continue;
        }
        i++;
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

void sl_cache_unlock(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key, uint64_t now_ms, uint64_t pass_ms)
{
    shard_t *s = shard_of(c, hash);
    pthread_mutex_lock(&s->mu);
    fetch_lock_t *l = lock_find(s, tag, hash, key);
    if (l != NULL && pass_ms > 0) {
        l->pass = true;
        l->until_ms = now_ms + pass_ms;
    } else if (l != NULL) {
        free(l->key);
        *l = s->locks[--s->nlocks];
    }
    pthread_mutex_unlock(&s->mu);
}

void sl_cache_stats(sl_cache_t *c, sl_cache_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->budget = atomic_load_explicit(&c->budget, memory_order_relaxed);
    for (size_t i = 0; i < SL_CACHE_SHARDS; i++) {
        shard_t *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        out->bytes += s->probation.bytes + s->protected_.bytes;
        out->objects += s->count;
        out->inserts += s->inserts;
        out->evictions += s->evictions;
        out->rejected_too_big += s->rejected;
        pthread_mutex_unlock(&s->mu);
    }
}
