/*
 * Reading sums for code other than the exposition: the doctor (src/admin/doctor.c) samples a
 * few series every tick on the main thread and subtracts samples to get rolling windows. The
 * sums are the ones render.c prints (every worker plus the retired remainder, relaxed loads),
 * handed over as plain numbers so no other module needs the storage layout of internal.h.
 */
#include "metrics/metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/internal.h"

/* A read of an entry that races its rewrite is retried this often before it is skipped: the
 * writer holds an entry for a few dozen stores, so a retry almost always succeeds. */
#define UNMATCHED_READ_TRIES 8

uint64_t sl_metrics_hist_bound_ns(size_t b)
{
    return b < SL__METRICS_NBUCKETS ? sl__metrics_bounds_ns[b] : UINT64_MAX;
}

const char *sl_metrics_upstream_error_name(enum sl_metrics_upstream_error e)
{
    static const char *const names[SL_METRICS_UPSTREAM_ERR__COUNT] = {
        [SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED] = "upstream_connect_failed",
        [SL_METRICS_UPSTREAM_ERR_RESET] = "upstream_reset",
        [SL_METRICS_UPSTREAM_ERR_BAD_RESPONSE] = "upstream_bad_response",
        [SL_METRICS_UPSTREAM_ERR_TIMEOUT] = "upstream_timeout",
        [SL_METRICS_UPSTREAM_ERR_5XX] = "upstream_5xx",
        [SL_METRICS_UPSTREAM_ERR_OTHER] = "other",
    };
    return (unsigned)e < SL_METRICS_UPSTREAM_ERR__COUNT ? names[e] : "other";
}

const char *sl_metrics_auth_detail_name(enum sl_metrics_auth_detail d)
{
    return (unsigned)d < SL_METRICS_AUTH__COUNT ? sl__metrics_auth_names[d] : "other";
}

uint32_t sl_metrics_route_id(const sl_metrics_schema_t *s, long route_index)
{
    if (route_index < 0)
        return SL__METRICS_ROUTE_NONE;
    if (s == NULL || (size_t)route_index >= s->nroutes)
        return SL__METRICS_ROUTE_OVERFLOW;
    return s->route_slot[route_index];
}

uint32_t sl_metrics_target_id(const sl_metrics_schema_t *s, size_t upstream_index, size_t target_index)
{
    if (s != NULL && upstream_index < s->nupstreams &&
        target_index < s->target_base[upstream_index + 1] - s->target_base[upstream_index])
        return s->target_slot[s->target_base[upstream_index] + target_index];
    return SL__METRICS_TGT_OVERFLOW;
}

static void hist_read(sl_metrics_hist_sum_t *sum, sl__metrics_hist_t *h)
{
    for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++) {
        uint64_t n = sl__metrics_load(&h->buckets[b]);
        sum->buckets[b] += n;
        sum->count += n;
    }
    sum->sum_ns += sl__metrics_load(&h->sum_ns);
}

void sl_metrics_read_route(sl_metrics_t *m, uint32_t route_id, sl_metrics_route_sum_t *out)
{
    memset(out, 0, sizeof(*out));
    if (route_id >= m->routes_allocated)
        return;
    for (size_t w = 0; w < m->nworkers; w++) {
        sl__metrics_route_t *r = atomic_load_explicit(&m->workers[w]->routes[route_id], memory_order_acquire);
        if (r == NULL)
            continue;
        for (size_t k = 0; k < SL_METRICS_ROUTE_KEYS; k++) {
            uint32_t key = atomic_load_explicit(&r->keys[k], memory_order_acquire);
            if (key == 0)
                continue;
            uint64_t n = sl__metrics_load(&r->counts[k]);
            unsigned cause = sl__metrics_key_cause(key);
            out->requests += n;
            if (cause < SL_CAUSE__COUNT)
                out->causes[cause] += n;
            if (cause == SL_CAUSE_NONE && sl__metrics_key_status(key) >= 500)
                out->status_5xx += n;
        }
        /* Keys past the table's cap are requests of unknown cause: counted, not attributed. */
        out->requests += sl__metrics_load(&r->overflow);
        for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++)
            out->auth[k] += sl__metrics_load(&r->auth[k]);
        for (size_t k = 0; k < SL_METRICS_CACHE__COUNT; k++)
            out->cache[k] += sl__metrics_load(&r->cache[k]);
    }
}

void sl_metrics_read_route_duration(sl_metrics_t *m, uint32_t route_id, sl_metrics_hist_sum_t *out)
{
    memset(out, 0, sizeof(*out));
    if (route_id >= m->routes_allocated)
        return;
    for (size_t w = 0; w < m->nworkers; w++) {
        sl__metrics_route_t *r = atomic_load_explicit(&m->workers[w]->routes[route_id], memory_order_acquire);
        if (r != NULL)
            hist_read(out, &r->duration);
    }
}

void sl_metrics_read_target(sl_metrics_t *m, uint32_t target_id, sl_metrics_target_sum_t *out)
{
    memset(out, 0, sizeof(*out));
    if (target_id >= m->targets_allocated)
        return;
    for (size_t w = 0; w < m->nworkers; w++) {
        sl__metrics_target_t *t = atomic_load_explicit(&m->workers[w]->targets[target_id], memory_order_acquire);
        if (t == NULL)
            continue;
        hist_read(&out->first_byte, &t->first_byte);
        for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
            out->errors[k] += sl__metrics_load(&t->errors[k]);
    }
}

/* One consistent copy of an entry; false when it is empty or kept changing. */
static bool entry_read(sl__metrics_unmatched_entry_t *e, char key[SL_METRICS_UNMATCHED_KEY], uint64_t *count)
{
    for (int tries = 0; tries < UNMATCHED_READ_TRIES; tries++) {
        uint32_t s1 = atomic_load_explicit(&e->seq, memory_order_acquire);
        if (s1 & 1u)
            continue;
        uint64_t hash = atomic_load_explicit(&e->hash, memory_order_relaxed);
        uint64_t words[SL__METRICS_UNMATCHED_WORDS];
        for (size_t k = 0; k < SL__METRICS_UNMATCHED_WORDS; k++)
            words[k] = atomic_load_explicit(&e->key[k], memory_order_relaxed);
        uint64_t c = atomic_load_explicit(&e->count, memory_order_relaxed);
        /* Orders the data loads before the second seq load (the seqlock's read side). */
        atomic_thread_fence(memory_order_acquire);
        uint32_t s2 = atomic_load_explicit(&e->seq, memory_order_relaxed);
        if (s1 != s2)
            continue;
        if (hash == 0 || c == 0)
            return false;
        memcpy(key, words, SL_METRICS_UNMATCHED_KEY);
        key[SL_METRICS_UNMATCHED_KEY - 1] = '\0';
        *count = c;
        return true;
    }
    return false;
}

typedef struct merged {
    char key[SL_METRICS_UNMATCHED_KEY];
    uint64_t count;
} merged_t;

static int cmp_merged(const void *pa, const void *pb)
{
    const merged_t *a = pa, *b = pb;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    return strcmp(a->key, b->key);
}

size_t sl_metrics_read_unmatched(sl_metrics_t *m, sl_metrics_unmatched_t *out, size_t max)
{
    size_t cap = m->nworkers * SL_METRICS_UNMATCHED_TOP, n = 0;
    merged_t *all = malloc((cap ? cap : 1) * sizeof(*all));
    if (all == NULL)
        return 0;
    for (size_t w = 0; w < m->nworkers; w++) {
        for (size_t i = 0; i < SL_METRICS_UNMATCHED_TOP; i++) {
            char key[SL_METRICS_UNMATCHED_KEY];
            uint64_t c;
            if (!entry_read(&m->workers[w]->unmatched[i], key, &c))
                continue;
            size_t j = 0;
            while (j < n && strcmp(all[j].key, key) != 0)
                j++;
            if (j == n) {
                memcpy(all[n].key, key, sizeof(key));
                all[n++].count = 0;
            }
            all[j].count += c;
        }
    }
    qsort(all, n, sizeof(*all), cmp_merged);
    size_t k = 0;
    for (; k < n && k < max; k++) {
        const char *sp = strchr(all[k].key, ' ');
        size_t hl = sp != NULL ? (size_t)(sp - all[k].key) : strlen(all[k].key);
        if (hl > SL_METRICS_UNMATCHED_HOST)
            hl = SL_METRICS_UNMATCHED_HOST;
        memcpy(out[k].host, all[k].key, hl);
        out[k].host[hl] = '\0';
        snprintf(out[k].prefix, sizeof(out[k].prefix), "%s", sp != NULL ? sp + 1 : "/");
        out[k].count = all[k].count;
    }
    free(all);
    return k;
}

uint64_t sl_metrics_read_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    uint64_t n = 0;
    long own = dirfd(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.' && strtol(e->d_name, NULL, 10) != own)
            n++;
    closedir(d);
    return n;
}
