/*
 * The admin API (docs/admin.md): a small HTTP/1.1 server on the main thread's loop, one
 * request per connection, JSON in and out. It owns the HTTP plumbing, bearer-token checks and
 * the config-document edits of the CRUD endpoints (routes, upstreams, consumers); everything
 * that reads or changes the running gateway goes through the hooks the server supplies, so
 * this module holds no state of the data path.
 *
 * Changes are serialised by construction: every request is handled to its end (validate,
 * persist, publish) inside one callback of the single-threaded main loop.
 *
 * Memory: sl_admin_t and its connections are heap objects owned by the module; request heads
 * are bounded at 8 KiB and bodies at 1 MiB per connection. Threads: main thread only.
 */
#ifndef SL_ADMIN_ADMIN_H
#define SL_ADMIN_ADMIN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>
#include <uv.h>

#include "config/config.h"

typedef struct sl_admin sl_admin_t;

#define SL_ADMIN_MAX_BODY (1u << 20)

/* What the admin endpoints read and do, supplied by the server. Each hook runs on the main
 * thread; a NULL hook makes its endpoints answer 404. JSON results are new references the
 * admin releases. */
typedef struct sl_admin_hooks {
    void *ctx;
    /* Renders the Prometheus exposition into a malloc'd buffer (the admin frees it). */
    int (*render_metrics)(void *ctx, char **out, size_t *len);
    /* The text the running config was loaded from (valid until the next apply/reload). */
    const char *(*config_text)(void *ctx, size_t *len);
    /* Validates `text` exactly like the file, writes it to the config file atomically and
     * publishes it. 0 and the new generation; SL_ECONFIG with `errs` filled; or a negative
     * errno when the file could not be written (then nothing was applied). */
    int (*apply)(void *ctx, const char *text, size_t len, sl_config_errors_t *errs, uint64_t *generation);
    /* Re-reads the config file: 0 and the new generation, or an error with `errs` filled. */
    int (*reload)(void *ctx, sl_config_errors_t *errs, uint64_t *generation);
    json_t *(*status)(void *ctx);
    /* NULL when there is no upstream of that name. */
    json_t *(*upstream_health)(void *ctx, const char *name);
    json_t *(*routes_table)(void *ctx);
    json_t *(*doctor)(void *ctx, unsigned window_s);
    /* The /stats document of the dashboard (src/admin/stats.h); NULL: /stats answers 404. */
    json_t *(*stats)(void *ctx);
    /* The current snapshot (DELETE /cache reaches the response cache through it); NULL: none. */
    struct sl_snapshot *(*current)(void *ctx);
} sl_admin_hooks_t;

/**
 * Starts listening on `addr`. `token` (may be NULL: no authentication) is copied; when set,
 * every endpoint but /health, /ready and the dashboard's static files (/, /dashboard/...; no
 * gateway data in them) requires `Authorization: Bearer <token>`.
 * Returns 0 and sets `*out`, or a negative errno/libuv code.
 */
int sl_admin_start(uv_loop_t *loop, const struct sockaddr *addr, const sl_admin_hooks_t *hooks, const char *token,
                   sl_admin_t **out);

/** Marks the gateway ready (listeners up) or not (draining). */
void sl_admin_set_ready(sl_admin_t *a, bool ready);

/** Closes the listener and every admin connection; frees `a` once libuv is done. */
void sl_admin_stop(sl_admin_t *a);

/** The errors of a load as the API's JSON array [{file,line,col,path,message}] (new reference). */
json_t *sl_admin_errors_json(const sl_config_errors_t *errs);

/* Admin module internal (its handler files share it): the percent-decoded value of `key` in a
 * query string into `out` (cap bytes with the NUL): 1 found, 0 absent, -1 badly escaped, a NUL
 * or too long. */
int sl__admin_query_get(sl_str_t query, const char *key, char *out, size_t cap);

/** GET /consumers/NAME/usage (src/admin/usage.c): `*status` and the JSON body to answer with
 *  (new reference); `get` is false for any method but GET/HEAD (405). */
json_t *sl_admin_usage(const sl_admin_hooks_t *h, const char *consumer, bool get, int *status);

/** DELETE /cache[?route=NAME&path=TARGET] (src/admin/cache_api.c): `*status` and the JSON body
 *  (`{"purged": N}`, or an error) to answer with. `del`: the method was DELETE. */
json_t *sl_admin_cache(const sl_admin_hooks_t *h, sl_str_t query, bool del, int *status);

/**
 * Replaces the file at `path` with `data` atomically: a temporary file in the same directory,
 * written and fsync'ed, renamed over `path`, then the directory fsync'ed. The file keeps the
 * old file's permission bits. Returns 0 or a negative errno (the old file is then untouched and
 * the temporary removed).
 */
int sl_admin_write_file_atomic(const char *path, const char *data, size_t len);

#endif
