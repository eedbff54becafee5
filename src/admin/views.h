/*
 * JSON views of the running gateway for the admin API (docs/admin.md): what one upstream's
 * targets look like now. Pure readers of a snapshot and the health checker; main thread (the
 * health checker is main-thread state). Results are new jansson references for the caller.
 */
#ifndef SL_ADMIN_VIEWS_H
#define SL_ADMIN_VIEWS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "pipeline/snapshot.h"
#include "upstream/health.h"

/* Requests and failed tries of one target over the last minute (the doctor's windows). */
typedef void (*sl_admin_target_window_fn)(void *arg, size_t upstream_index, size_t target_index, uint64_t *requests,
                                          uint64_t *errors);

/**
 * `GET /upstreams/NAME/health` of upstream `upstream_index` in `snap`. `health` (may be NULL)
 * gives the last active check of each target; `window` (may be NULL) the 1-minute counts.
 */
json_t *sl_admin_upstream_health(const sl_snapshot_t *snap, size_t upstream_index, sl_health_t *health,
                                 sl_admin_target_window_fn window, void *window_arg);

#endif
