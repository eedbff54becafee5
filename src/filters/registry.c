/*
 * The filter registry: the fixed order of a route's chain (DESIGN.md "A request's way through")
 * and its compilation per snapshot. A new filter is one file plus one row in `registry`.
 */
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "filters/filters.h"
#include "filters/internal.h"

/* One row per filter, in DESIGN order (ip rules, cors, auth, acl, rate limit; then quota, cache). */
/* clang-format off */
static const sl_filter_type_t *const registry[] = {
    &sl_filter_ip_rules,
    &sl_filter_cors,
    &sl_filter_auth,
    &sl_filter_acl,
    &sl_filter_rate_limit,
    &sl_filter_quota,
};
/* clang-format on */

#define NREGISTRY (sizeof(registry) / sizeof(registry[0]))

/* The snapshot's chains array is the first member, so chains_release finds the rest. */
typedef struct shared {
    sl_chain_t *chains;
    size_t nroutes;
    sl_filter_t *filters; /* every route's filters, one block */
    sl__ip_trust_t *trust;
    sl__consumers_t *consumers;
    struct sl_jwks_store *jwks;
    sl_fetcher_t fetcher;             /* .start NULL: none */
    struct sl_gcra_table *rate_table; /* the process's; not owned */
    struct sl_store *store;           /* the process's Redis store, or NULL; not owned */
} shared_t;

const sl__ip_trust_t *sl__filters_shared_trust(void *shared)
{
    return ((shared_t *)shared)->trust;
}

const sl__consumers_t *sl__filters_shared_consumers(void *shared)
{
    return ((shared_t *)shared)->consumers;
}

struct sl_jwks_store *sl__filters_shared_jwks(void *shared)
{
    return ((shared_t *)shared)->jwks;
}

const struct sl_fetcher *sl__filters_shared_fetcher(void *shared)
{
    const shared_t *sh = shared;
    return sh->fetcher.start != NULL ? &sh->fetcher : NULL;
}

struct sl_gcra_table *sl__filters_shared_rate_table(void *shared)
{
    return ((shared_t *)shared)->rate_table;
}

struct sl_store *sl__filters_shared_store(void *shared)
{
    return ((shared_t *)shared)->store;
}

/* Frees everything attach built; `block` is the allocation holding the back pointer and the
 * chains array. */
static void shared_free(shared_t *sh, void *block)
{
    for (size_t r = 0; r < sh->nroutes; r++)
        for (size_t i = 0; i < sh->chains[r].n; i++)
            sh->chains[r].filters[i].type->destroy(sh->chains[r].filters[i].state);
    sl__ip_trust_destroy(sh->trust);
    sl__consumers_destroy(sh->consumers);
    free(sh->filters);
    free(block);
    free(sh);
}

/* The chains array sits just after a pointer back to its shared_t, in one block: the snapshot
 * keeps only the array, and this finds the rest. Any thread (the last snapshot reference). */
static void chains_release(sl_chain_t *chains, size_t n)
{
    (void)n;
    shared_t **block = ((shared_t **)chains) - 1;
    shared_free(block[0], block);
}

int sl_filters_attach(sl_snapshot_t *snap, const sl_filters_env_t *env, sl_config_errors_t *errs)
{
    const sl_config_t *cfg = snap->cfg;
    shared_t *sh = sl_xcalloc(1, sizeof(*sh));
    sh->nroutes = cfg->nroutes;
    sh->trust = sl__ip_trust_create(cfg);
    sh->consumers = sl__consumers_create(cfg);
    sh->jwks = env != NULL ? env->jwks : NULL;
    if (env != NULL && env->fetcher != NULL)
        sh->fetcher = *env->fetcher;
    sh->rate_table = env != NULL ? env->rate_table : NULL;
    sh->store = env != NULL ? env->store : NULL;
    /* [shared_t *][chain 0][chain 1]...: the back pointer lets chains_release find `sh`. */
    shared_t **block = sl_xcalloc(1, sizeof(shared_t *) + (cfg->nroutes ? cfg->nroutes : 1) * sizeof(sl_chain_t));
    block[0] = sh;
    sl_chain_t *chains = (sl_chain_t *)(block + 1);
    sh->chains = chains;
    sh->filters = sl_xcalloc((cfg->nroutes ? cfg->nroutes : 1) * NREGISTRY, sizeof(sl_filter_t));
    size_t before = errs->count;
    bool any = false;
    for (size_t r = 0; r < cfg->nroutes; r++) {
        sl_chain_t *c = &chains[r];
        c->filters = &sh->filters[r * NREGISTRY];
        for (size_t i = 0; i < NREGISTRY; i++) {
            void *state = NULL;
            if (registry[i]->create(snap, &cfg->routes[r], sh, &state, errs) != 0)
                continue;
            if (state != NULL)
                c->filters[c->n++] = (sl_filter_t){registry[i], state};
        }
        any |= c->n > 0;
    }
    if (errs->count > before) {
        shared_free(sh, block);
        return SL_ECONFIG;
    }
    if (!any) { /* no route has a filter: keep the request path free of the chain */
        shared_free(sh, block);
        return 0;
    }
    snap->chains = chains;
    snap->chains_release = chains_release;
    return 0;
}

void sl__identify(sl_exchange_t *x, sl_str_t consumer, const sl_str_t *groups, size_t ngroups)
{
    x->consumer = consumer;
    size_t len = 0;
    for (size_t i = 0; i < ngroups; i++)
        len += groups[i].len + 1;
    char *g = len ? sl_arena_alloc(&x->arena, len) : NULL;
    size_t n = 0;
    for (size_t i = 0; i < ngroups; i++) {
        if (n)
            g[n++] = ',';
        memcpy(g + n, groups[i].ptr, groups[i].len);
        n += groups[i].len;
    }
    x->consumer_groups = (sl_str_t){g, n};
    sl_headers_add(&x->arena, &x->req_headers, SL_STR_LIT("X-Consumer-Id"), consumer);
    if (n)
        sl_headers_add(&x->arena, &x->req_headers, SL_STR_LIT("X-Consumer-Groups"), x->consumer_groups);
}
