/*
 * The dashboard page's files (src/admin/dashboard/: index.html, app.js, app.css), embedded in
 * the binary at build time by cmake/embed.cmake, which writes the table below into a
 * generated C file. Static data: any thread.
 */
#ifndef SL_ADMIN_DASHBOARD_ASSETS_H
#define SL_ADMIN_DASHBOARD_ASSETS_H

#include <stddef.h>

typedef struct sl_admin_asset {
    const char *path;         /* the request path: "/", "/dashboard/app.js", ... */
    const char *content_type; /* with charset */
    const unsigned char *data;
    size_t len;
} sl_admin_asset_t;

/* The table, and its length. */
extern const sl_admin_asset_t sl_admin_dashboard_assets[];
extern const size_t sl_admin_dashboard_nassets;

#endif
