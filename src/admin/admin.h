/*
 * The admin listener, on the main thread's loop: `GET /health` (the process is alive) and
 * `GET /ready` (config loaded and listeners up). It grows into the full admin API (DESIGN.md)
 * with the operate feature; requests are parsed by the same strict HTTP/1 parser.
 */
#ifndef SL_ADMIN_ADMIN_H
#define SL_ADMIN_ADMIN_H

#include <stdbool.h>
#include <sys/socket.h>

#include <uv.h>

typedef struct sl_admin sl_admin_t;

/* What the admin endpoints read, supplied by the server (the admin module owns no state of the
 * data path). Each hook runs on the main thread. */
typedef struct sl_admin_hooks {
    void *ctx;
    /* Renders the Prometheus exposition into a malloc'd buffer (the admin frees it). */
    int (*render_metrics)(void *ctx, char **out, size_t *len);
} sl_admin_hooks_t;

/** Starts listening on `addr`. Returns 0 and sets `*out`, or a negative errno/libuv code. */
int sl_admin_start(uv_loop_t *loop, const struct sockaddr *addr, const sl_admin_hooks_t *hooks, sl_admin_t **out);

/** Marks the gateway ready (listeners up) or not (draining). */
void sl_admin_set_ready(sl_admin_t *a, bool ready);

/** Closes the listener and every admin connection; frees `a` once libuv is done. */
void sl_admin_stop(sl_admin_t *a);

#endif
