/*
 * libFuzzer target for the config loader: arbitrary bytes as a YAML file. The loader must never
 * crash, leak or loop, must give every error a position, and a config it accepts must hold the
 * invariants later stages rely on (at least one listener, resolved upstream indexes).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config/config.h"

static void check(int ok)
{
    if (!ok)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    int rc = sl_config_load_buffer("fuzz.yaml", (const char *)data, size, &c, &errs);
    if (rc == 0) {
        check(errs.count == 0 && c != NULL && c->nlistens > 0);
        for (size_t i = 0; i < c->nroutes; i++) {
            const sl_route_conf_t *r = &c->routes[i];
            check(r->name.len > 0 && (r->upstream.len > 0) != r->respond.enabled);
            if (r->upstream.len > 0)
                check(r->upstream_index < c->nupstreams &&
                      sl_str_eq(c->upstreams[r->upstream_index].name, r->upstream));
        }
        for (size_t i = 0; i < c->nupstreams; i++)
            check(c->upstreams[i].ntargets > 0);
        sl_config_unref(sl_config_ref(c));
        sl_config_unref(c);
    } else {
        check(errs.count > 0);
        for (size_t i = 0; i < errs.count; i++)
            check(errs.items[i].message[0] != '\0' && strlen(errs.items[i].message) < sizeof(errs.items[i].message) &&
                  (errs.items[i].line > 0 || i + 1 == errs.count));
    }
    sl_config_errors_dispose(&errs);
    return 0;
}
