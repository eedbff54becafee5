/*
 * The compiled route table as the admin API shows it (`GET /routes?view=table`, docs/admin.md)
 * and `sluice routes` prints it: one object per route, in the order the router tries them
 * (sl_router_match_order), with the match, the action and the filters in the order they run,
 * each as short text an operator reads.
 */
#ifndef SL_ADMIN_ROUTES_VIEW_H
#define SL_ADMIN_ROUTES_VIEW_H

#include <jansson.h>

#include "pipeline/snapshot.h"

/**
 * Builds `{"routes":[{order,name,hosts,path,methods,headers,action,filters}]}` from the
 * snapshot's router and config. Returns a new reference the caller owns (json_decref); never
 * NULL (jansson allocation failure aborts, like every internal allocation). Reads `snap` only;
 * the caller holds a reference to it for the duration of the call. Any thread.
 */
json_t *sl_admin_routes_table(const sl_snapshot_t *snap);

#endif
