/*
 * The JWKS store (filters/jwks_store.h): per issuer, the current key set behind an atomic
 * pointer, in an immutable table of issuer slots that is itself swapped per apply. The main
 * thread writes (fetch results, file loads, applies); workers read through a reader guard
 * (per-thread-shard counters for two alternating phases), and every pointer the main thread unpublishes is dropped only
 * after `synchronize` saw the readers that could hold it leave. The auth filter reads a set from here for each
 * verification and asks for a refresh when a token names an unknown kid.
 */
#include "filters/jwks_store.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/time.h"

#define WHY_MAX 256

typedef struct slot slot_t;

struct slot {
    sl_jwks_store_t *s;
    char *name;
    enum sl_jwt_key_source source;
    char *key; /* URL, file or variable name: with name and source, the slot's identity */
    _Atomic(sl_jwks_t *) keys;
    atomic_bool refresh_wanted;           /* set by workers, taken by on_async */
    atomic_uint_fast64_t fetched_mono_ms; /* when the last fetch started: the rate limit's clock */
    /* main thread only */
    uint64_t refresh_ms, timeout_ms, retry_ms;
    uv_timer_t timer; /* interval refresh and retries; initialised for every slot */
    sl_fetch_t *fetch;
    uint64_t body_hash; /* of the document behind `keys`: an identical refetch keeps the set */
    uint64_t loaded_ms; /* wall clock of `keys` */
    uint64_t fetches, failures;
    bool failing; /* logged as failing; the next success logs the recovery */
    bool kept;    /* mark of the current apply */
    char last_error[WHY_MAX];
};

/* Reader counters are sharded by thread and padded to a cache line each, so workers taking
 * sets on every request do not bounce one line between cores. */
#define GUARD_SHARDS 32

typedef struct reader_count {
    _Alignas(64) atomic_uint n;
} reader_count_t;

typedef struct table {
    size_t n;
    slot_t *slots[];
} table_t;

struct sl_jwks_store {
    uv_loop_t *loop;
    sl_fetcher_t fetcher;
    bool has_fetcher;
    _Atomic(table_t *) table;
    /* The reader guard: readers count themselves in readers[phase & 1][their shard]. */
    atomic_uint phase;
    reader_count_t readers[2][GUARD_SHARDS];
    uv_async_t async;
    atomic_uint_fast64_t refresh_min_ms;
    size_t open; /* handles not yet closed: the async and one timer per slot */
    bool stopping;
    void (*done)(void *);
    void *done_arg;
};

/* ---- the reader guard ----------------------------------------------------------------------- */

/* A reader registers in the counter of the current phase and checks that the phase did not
 * move meanwhile: then the next synchronize waits for it. (Without the re-check a reader that
 * read an old phase could be counted where no writer waits any longer.) */
static atomic_uint next_shard;
static _Thread_local unsigned my_shard = UINT_MAX;

static atomic_uint *guard_enter(sl_jwks_store_t *s)
{
    if (my_shard == UINT_MAX)
        my_shard = atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % GUARD_SHARDS;
    for (;;) {
        unsigned p = atomic_load(&s->phase);
        atomic_uint *c = &s->readers[p & 1][my_shard].n;
        atomic_fetch_add(c, 1);
        if (atomic_load(&s->phase) == p)
            return c;
        atomic_fetch_sub(c, 1);
    }
}

static void guard_exit(atomic_uint *c)
{
    atomic_fetch_sub_explicit(c, 1, memory_order_release);
}

/* Main thread, after unpublishing a pointer: returns once no reader can still take it. New
 * readers count in the other phase, so this waits only for the few in flight. */
static void synchronize(sl_jwks_store_t *s)
{
    unsigned p = atomic_fetch_add(&s->phase, 1);
    for (size_t i = 0; i < GUARD_SHARDS; i++)
        while (atomic_load(&s->readers[p & 1][i].n) != 0)
            sched_yield();
}

static slot_t *find_slot(const table_t *t, sl_str_t name)
{
    if (t == NULL)
        return NULL;
    for (size_t i = 0; i < t->n; i++)
        if (sl_str_eq(sl_str_from_cstr(t->slots[i]->name), name))
            return t->slots[i];
    return NULL;
}

sl_jwks_t *sl_jwks_store_get(sl_jwks_store_t *s, sl_str_t issuer_name, uint64_t *generation)
{
    atomic_uint *g = guard_enter(s);
    slot_t *sl = find_slot(atomic_load(&s->table), issuer_name);
    sl_jwks_t *keys = sl != NULL ? atomic_load_explicit(&sl->keys, memory_order_acquire) : NULL;
    if (keys != NULL)
        sl_jwks_ref(keys);
    guard_exit(g);
    if (generation != NULL)
        *generation = keys != NULL ? sl_jwks_generation(keys) : 0;
    return keys;
}

uint64_t sl_jwks_store_generation(sl_jwks_store_t *s, sl_str_t issuer_name)
{
    atomic_uint *g = guard_enter(s);
    slot_t *sl = find_slot(atomic_load(&s->table), issuer_name);
    sl_jwks_t *keys = sl != NULL ? atomic_load_explicit(&sl->keys, memory_order_acquire) : NULL;
    uint64_t gen = keys != NULL ? sl_jwks_generation(keys) : 0;
    guard_exit(g);
    return gen;
}

static uint64_t mono_ms(void)
{
    return sl_time_mono_ns() / 1000000;
}

static bool refresh_allowed(sl_jwks_store_t *s, slot_t *sl)
{
    uint64_t last = atomic_load_explicit(&sl->fetched_mono_ms, memory_order_relaxed);
    return last == 0 || mono_ms() >= last + atomic_load_explicit(&s->refresh_min_ms, memory_order_relaxed);
}

void sl_jwks_store_request_refresh(sl_jwks_store_t *s, sl_str_t issuer_name)
{
    atomic_uint *g = guard_enter(s);
    slot_t *sl = find_slot(atomic_load(&s->table), issuer_name);
    bool wake = sl != NULL && sl->source == SL_JWT_KEYS_JWKS_URL && refresh_allowed(s, sl) &&
                !atomic_exchange(&sl->refresh_wanted, true);
    guard_exit(g);
    if (wake)
        uv_async_send(&s->async);
}

/* Main thread: publishes `keys` (taking over the caller's reference) and drops the old set
 * once no reader can be taking it. */
static void slot_publish(slot_t *sl, sl_jwks_t *keys)
{
    sl_jwks_t *old = atomic_exchange_explicit(&sl->keys, keys, memory_order_acq_rel);
    sl->loaded_ms = keys != NULL ? sl_time_wall_ms() : 0;
    if (old != NULL) {
        synchronize(sl->s);
        sl_jwks_unref(old);
    }
}

/* ---- fetching ------------------------------------------------------------------------------- */

static void start_fetch(slot_t *sl);

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void on_tick(uv_timer_t *t)
{
    slot_t *sl = t->data;
    if (sl->fetch == NULL)
        start_fetch(sl);
}

static void fetch_failed(slot_t *sl, const char *why)
{
    sl->failures++;
    snprintf(sl->last_error, sizeof(sl->last_error), "%s", why);
    if (!sl->failing) {
        sl->failing = true;
        sl_jwks_t *cur = atomic_load(&sl->keys);
        if (cur != NULL) {
            char at[32];
            sl_time_format_iso8601(at, sizeof(at), sl->loaded_ms);
            sl_log_warn("jwks for %s: fetch failed (%s); keeping the %zu keys fetched at %s", sl->name, why,
                        sl_jwks_count(cur), at);
        } else {
            sl_log_warn("jwks for %s: fetch failed (%s); no key set yet: its tokens are refused until a fetch "
                        "succeeds",
                        sl->name, why);
        }
    }
    sl->retry_ms = sl->retry_ms == 0 ? SL_JWKS_RETRY_MIN_MS : sl->retry_ms * 2;
    if (sl->retry_ms > sl->refresh_ms)
        sl->retry_ms = sl->refresh_ms;
    uv_timer_start(&sl->timer, on_tick, sl->retry_ms, sl->refresh_ms);
}

static void fetch_succeeded(slot_t *sl, sl_jwks_t *keys, uint64_t hash)
{
    sl->retry_ms = 0;
    sl->last_error[0] = '\0';
    if (sl->failing || atomic_load(&sl->keys) == NULL)
        sl_log_info("jwks for %s: %zu key%s fetched", sl->name, sl_jwks_count(keys),
                    sl_jwks_count(keys) == 1 ? "" : "s");
    sl->failing = false;
    sl->body_hash = hash;
    slot_publish(sl, keys);
    uv_timer_start(&sl->timer, on_tick, sl->refresh_ms, sl->refresh_ms);
}

static void on_fetched(void *arg, int status, const sl_fetch_response_t *res)
{
    slot_t *sl = arg;
    sl->fetch = NULL;
    char why[WHY_MAX];
    if (status < 0) {
        fetch_failed(sl, sl_strerror(status));
        return;
    }
    if (status != 200) {
        snprintf(why, sizeof(why), "status %d", status);
        fetch_failed(sl, why);
        return;
    }
    uint64_t hash = fnv1a(res->body.ptr, res->body.len);
    sl_jwks_t *cur = atomic_load(&sl->keys);
    if (cur != NULL && hash == sl->body_hash) {
        /* The same document: keep the set, so its generation and every cached verdict stay. */
        fetch_succeeded(sl, sl_jwks_ref(cur), hash);
        return;
    }
    sl_jwks_t *keys = NULL;
    char parse_why[WHY_MAX - 32] = "";
    if (sl_jwks_parse(res->body.ptr, res->body.len, &keys, parse_why, sizeof(parse_why)) != 0) {
        parse_why[strcspn(parse_why, "\n")] = '\0';
        snprintf(why, sizeof(why), "unusable key set: %s", parse_why[0] ? parse_why : "no usable key");
        fetch_failed(sl, why);
        return;
    }
    fetch_succeeded(sl, keys, hash);
}

static void start_fetch(slot_t *sl)
{
    sl_jwks_store_t *s = sl->s;
    SL_BUG_ON(sl->fetch != NULL);
    static const sl_header_t accept[] = {
        {SL_STR_LIT("Accept"), SL_STR_LIT("application/jwk-set+json, application/json")},
        {SL_STR_LIT("User-Agent"), SL_STR_LIT("sluice")}};
    sl_fetch_request_t req = {
        .url = sl->key,
        .headers = accept,
        .nheaders = SL_ARRAY_SIZE(accept),
        .timeout_ms = sl->timeout_ms,
        .max_body = SL_JWKS_MAX_BYTES,
    };
    sl->fetches++;
    atomic_store_explicit(&sl->fetched_mono_ms, mono_ms(), memory_order_relaxed);
    int rc = s->has_fetcher ? s->fetcher.start(s->loop, &req, on_fetched, sl, &sl->fetch) : SL_EINVALID;
    if (rc != 0) {
        sl->fetch = NULL;
        fetch_failed(sl, s->has_fetcher ? sl_strerror(rc) : "no HTTP client");
    }
}

static void on_async(uv_async_t *a)
{
    sl_jwks_store_t *s = a->data;
    table_t *t = atomic_load(&s->table);
    for (size_t i = 0; t != NULL && i < t->n; i++) {
        slot_t *sl = t->slots[i];
        if (!atomic_exchange(&sl->refresh_wanted, false))
            continue;
        /* In flight already: it brings the newest set. Too soon: the worker checked, but a
         * fetch may have started since it did. */
        if (sl->fetch == NULL && refresh_allowed(s, sl))
            start_fetch(sl);
    }
}

/* ---- file and environment sources ---------------------------------------------------------- */

static int read_file(const char *path, char **out, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return -errno;
    size_t cap = 4096, n = 0;
    char *buf = sl_xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap > SL_JWKS_MAX_BYTES) {
                free(buf);
                fclose(fp);
                return SL_ETOOBIG;
            }
            cap *= 2;
            buf = sl_xrealloc(buf, cap + 1);
        }
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (r == 0)
            break;
    }
    int err = ferror(fp) ? -EIO : 0;
    fclose(fp);
    if (err == 0 && n > SL_JWKS_MAX_BYTES)
        err = SL_ETOOBIG;
    if (err != 0) {
        free(buf);
        return err;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* The name of the one algorithm in `bits` (config's sl_jwt_alg_set: bit n is enum sl_jwt_alg
 * n), or NULL when there are several: the verification policy restricts them anyway. */
static const char *single_alg(uint32_t bits)
{
    if (bits == 0 || (bits & (bits - 1)) != 0)
        return NULL;
    return sl_jwt_alg_name((enum sl_jwt_alg)__builtin_ctz(bits));
}

static const char *source_name(enum sl_jwt_key_source src)
{
    switch (src) {
    case SL_JWT_KEYS_JWKS_FILE:
        return "jwks_file";
    case SL_JWT_KEYS_JWKS_URL:
        return "jwks_url";
    case SL_JWT_KEYS_PEM_FILE:
        return "public_key_file";
    case SL_JWT_KEYS_SECRET:
        return "secret_env";
    }
    return "?";
}

static int load_static(const sl_config_t *cfg, const sl_jwt_issuer_conf_t *j, sl_jwks_t **out, sl_config_errors_t *errs)
{
    char why[WHY_MAX] = "";
    const char *src = source_name(j->source);
    int rc;
    if (j->source == SL_JWT_KEYS_SECRET) {
        /* Never the value in a message: only the variable's name. */
        const char *v = getenv(j->keys.ptr);
        if (v == NULL || *v == '\0') {
            sl_config_errors_add(errs, cfg->path, j->pos.line, j->pos.col,
                                 "jwt issuer %.*s: secret_env %s is not set or empty", SL_STR_FMT(j->name),
                                 j->keys.ptr);
            return SL_ECONFIG;
        }
        rc = sl_jwks_from_secret((const unsigned char *)v, strlen(v), single_alg(j->algorithms), NULL, out);
        if (rc != 0) {
            sl_config_errors_add(errs, cfg->path, j->pos.line, j->pos.col,
                                 "jwt issuer %.*s: secret_env %s: the secret is unusable for %s (at least as many "
                                 "bytes as the hash: 32 for HS256)",
                                 SL_STR_FMT(j->name), j->keys.ptr,
                                 single_alg(j->algorithms) != NULL ? single_alg(j->algorithms) : "HS256/384/512");
            return SL_ECONFIG;
        }
        return 0;
    }
    char *data = NULL;
    size_t len = 0;
    rc = read_file(j->keys.ptr, &data, &len);
    if (rc != 0) {
        sl_config_errors_add(errs, cfg->path, j->pos.line, j->pos.col, "jwt issuer %.*s: %s %s: %s",
                             SL_STR_FMT(j->name), src, j->keys.ptr,
                             rc == SL_ETOOBIG ? "larger than 1 MiB" : sl_strerror(rc));
        return SL_ECONFIG;
    }
    if (j->source == SL_JWT_KEYS_JWKS_FILE)
        rc = sl_jwks_parse(data, len, out, why, sizeof(why));
    else
        rc = sl_jwks_from_pem(data, len, single_alg(j->algorithms), NULL, out, why, sizeof(why));
    free(data);
    if (rc != 0) {
        why[strcspn(why, "\n")] = '\0';
        sl_config_errors_add(errs, cfg->path, j->pos.line, j->pos.col, "jwt issuer %.*s: %s %s: %s",
                             SL_STR_FMT(j->name), src, j->keys.ptr, why[0] ? why : "no usable key");
        return SL_ECONFIG;
    }
    return 0;
}

/* ---- slots and the table -------------------------------------------------------------------- */

static void store_release(sl_jwks_store_t *s)
{
    SL_BUG_ON(s->open == 0);
    if (--s->open > 0 || !s->stopping)
        return;
    void (*done)(void *) = s->done;
    void *arg = s->done_arg;
    free(atomic_load(&s->table));
    free(s);
    if (done != NULL)
        done(arg);
}

static void slot_close_cb(uv_handle_t *h)
{
    slot_t *sl = h->data;
    sl_jwks_store_t *s = sl->s;
    sl_jwks_unref(atomic_load(&sl->keys));
    free(sl->name);
    free(sl->key);
    free(sl);
    store_release(s);
}

/* Only for a slot no reader can reach any more (unpublished and synchronized). */
static void slot_retire(slot_t *sl)
{
    if (sl->fetch != NULL) {
        sl->s->fetcher.cancel(sl->fetch);
        sl->fetch = NULL;
    }
    uv_timer_stop(&sl->timer);
    uv_close((uv_handle_t *)&sl->timer, slot_close_cb);
}

static slot_t *slot_create(sl_jwks_store_t *s, const sl_jwt_issuer_conf_t *j)
{
    slot_t *sl = sl_xcalloc(1, sizeof(*sl));
    sl->s = s;
    sl->name = sl_xstrndup(j->name.ptr, j->name.len);
    sl->key = sl_xstrndup(j->keys.ptr, j->keys.len);
    sl->source = j->source;
    atomic_init(&sl->keys, NULL);
    atomic_init(&sl->refresh_wanted, false);
    atomic_init(&sl->fetched_mono_ms, 0);
    SL_BUG_ON(uv_timer_init(s->loop, &sl->timer) != 0); /* cannot fail on Linux */
    sl->timer.data = sl;
    s->open++;
    return sl;
}

static bool slot_matches(const slot_t *sl, const sl_jwt_issuer_conf_t *j)
{
    return sl->source == j->source && sl_str_eq(sl_str_from_cstr(sl->name), j->name) &&
           sl_str_eq(sl_str_from_cstr(sl->key), j->keys);
}

int sl_jwks_store_create(uv_loop_t *main_loop, const sl_fetcher_t *fetcher, sl_jwks_store_t **out)
{
    /* Over-aligned (the reader counters' cache lines): malloc's 16 bytes are not enough. */
    sl_jwks_store_t *s = aligned_alloc(_Alignof(sl_jwks_store_t), sizeof(*s));
    SL_BUG_ON(s == NULL);
    memset(s, 0, sizeof(*s));
    s->loop = main_loop;
    if (fetcher != NULL) {
        s->fetcher = *fetcher;
        s->has_fetcher = true;
    }
    atomic_init(&s->refresh_min_ms, SL_JWKS_REFRESH_MIN_MS);
    atomic_init(&s->table, NULL);
    atomic_init(&s->phase, 0);
    for (size_t i = 0; i < GUARD_SHARDS; i++) {
        atomic_init(&s->readers[0][i].n, 0);
        atomic_init(&s->readers[1][i].n, 0);
    }
    int rc = uv_async_init(main_loop, &s->async, on_async);
    if (rc != 0) {
        free(s);
        return rc;
    }
    s->async.data = s;
    s->open = 1;
    *out = s;
    return 0;
}

void sl_jwks_store_set_refresh_min_ms(sl_jwks_store_t *s, uint64_t ms)
{
    atomic_store(&s->refresh_min_ms, ms);
}

int sl_jwks_store_apply(sl_jwks_store_t *s, const sl_config_t *cfg, sl_config_errors_t *errs)
{
    if (s->stopping)
        return 0;
    size_t n = cfg->njwt_issuers;
    /* Every file and variable first, so a bad one leaves the running state untouched. */
    sl_jwks_t **loaded = sl_xcalloc(n + 1, sizeof(*loaded));
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const sl_jwt_issuer_conf_t *j = &cfg->jwt_issuers[i];
        if (j->source == SL_JWT_KEYS_JWKS_URL) {
            if (!s->has_fetcher) {
                sl_config_errors_add(errs, cfg->path, j->pos.line, j->pos.col,
                                     "jwt issuer %.*s: jwks_url needs the HTTP client, not available here",
                                     SL_STR_FMT(j->name));
                rc = SL_ECONFIG;
            }
            continue;
        }
        if (load_static(cfg, j, &loaded[i], errs) != 0)
            rc = SL_ECONFIG;
    }
    if (rc != 0) {
        for (size_t i = 0; i < n; i++)
            sl_jwks_unref(loaded[i]);
        free(loaded);
        return rc;
    }

    table_t *old = atomic_load(&s->table);
    table_t *t = sl_xmalloc(sizeof(*t) + n * sizeof(t->slots[0]));
    t->n = n;
    for (size_t i = 0; old != NULL && i < old->n; i++)
        old->slots[i]->kept = false;
    /* Old sets of kept file slots, dropped after the swap: readers may hold them until then. */
    sl_jwks_t **replaced = sl_xcalloc(n + 1, sizeof(*replaced));
    for (size_t i = 0; i < n; i++) {
        const sl_jwt_issuer_conf_t *j = &cfg->jwt_issuers[i];
        slot_t *sl = NULL;
        for (size_t k = 0; old != NULL && k < old->n && sl == NULL; k++)
            if (!old->slots[k]->kept && slot_matches(old->slots[k], j))
                sl = old->slots[k];
        bool fresh = sl == NULL;
        if (fresh)
            sl = slot_create(s, j);
        sl->kept = true;
        t->slots[i] = sl;
        if (j->source != SL_JWT_KEYS_JWKS_URL) {
            sl->failing = false;
            replaced[i] = atomic_exchange(&sl->keys, loaded[i]);
            sl->loaded_ms = sl_time_wall_ms();
            continue;
        }
        uint64_t refresh = j->jwks_refresh_ms > 0 ? j->jwks_refresh_ms : 300000;
        sl->timeout_ms = j->jwks_timeout_ms > 0 ? j->jwks_timeout_ms : 5000;
        if (fresh) {
            sl->refresh_ms = refresh;
            start_fetch(sl);
        } else if (sl->refresh_ms != refresh) {
            sl->refresh_ms = refresh;
            if (sl->fetch == NULL && sl->retry_ms == 0)
                uv_timer_start(&sl->timer, on_tick, refresh, refresh);
        }
    }
    free(loaded);
    atomic_store(&s->table, t);
    /* One wait covers the old table, the removed slots and the replaced file sets: all were
     * unpublished above. */
    synchronize(s);
    for (size_t i = 0; i < n; i++)
        sl_jwks_unref(replaced[i]);
    free(replaced);
    if (old != NULL) {
        for (size_t i = 0; i < old->n; i++)
            if (!old->slots[i]->kept)
                slot_retire(old->slots[i]);
        free(old);
    }
    return 0;
}

static void async_close_cb(uv_handle_t *h)
{
    store_release(h->data);
}

void sl_jwks_store_stop(sl_jwks_store_t *s, void (*done)(void *), void *arg)
{
    SL_BUG_ON(s->stopping);
    s->stopping = true;
    s->done = done;
    s->done_arg = arg;
    table_t *t = atomic_load(&s->table);
    for (size_t i = 0; t != NULL && i < t->n; i++)
        slot_retire(t->slots[i]);
    /* Closed always and released in its close callback: `done` never runs inside this call. */
    uv_close((uv_handle_t *)&s->async, async_close_cb);
}

size_t sl_jwks_store_each(sl_jwks_store_t *s, void (*visit)(void *arg, const sl_jwks_store_info_t *info), void *arg)
{
    table_t *t = atomic_load(&s->table);
    size_t n = t != NULL ? t->n : 0;
    for (size_t i = 0; i < n; i++) {
        slot_t *sl = t->slots[i];
        sl_jwks_t *keys = atomic_load(&sl->keys);
        sl_jwks_store_info_t info = {
            .issuer = sl->name,
            .source = source_name(sl->source),
            .nkeys = keys != NULL ? sl_jwks_count(keys) : 0,
            .loaded_ms = keys != NULL ? sl->loaded_ms : 0,
            .fetches = sl->fetches,
            .failures = sl->failures,
            .last_error = sl->last_error,
        };
        visit(arg, &info);
    }
    return n;
}
