/*
 * The acl filter: after auth, the identified consumer's groups against the route's
 * allow_groups / deny_groups. Deny wins; a route with allow_groups admits only consumers in one
 * of them, so an anonymous caller (no consumer) never passes an allow list.
 */
#include <string.h>

#include "common/error.h"
#include "filters/filters.h"
#include "filters/internal.h"

static bool in_groups(sl_str_t csv, const sl_str_t *set, size_t n)
{
    size_t i = 0;
    while (i < csv.len) {
        size_t j = i;
        while (j < csv.len && csv.ptr[j] != ',')
            j++;
        sl_str_t g = {csv.ptr + i, j - i};
        for (size_t k = 0; k < n; k++)
            if (sl_str_eq(g, set[k]))
                return true;
        i = j + 1;
    }
    return false;
}

static int acl_create(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                      sl_config_errors_t *errs)
{
    (void)shared;
    *state = NULL;
    if (!route->has_acl)
        return 0;
    if (route->auth.nmethods == 0) {
        sl_config_errors_add(errs, snap->cfg->path, route->pos.line, route->pos.col,
                             "route '%s': acl needs auth (groups belong to an identified consumer)", route->name.ptr);
        return SL_ECONFIG;
    }
    *state = (void *)&route->acl;
    return 0;
}

static void acl_destroy(void *state)
{
    (void)state; /* the config owns it */
}

static enum sl_filter_status acl_on_request(sl_exchange_t *x, void *state)
{
    const sl_acl_conf_t *a = state;
    const char *why = NULL;
    if (x->consumer.len == 0 && a->nallow_groups > 0)
        why = "acl_anonymous";
    else if (in_groups(x->consumer_groups, a->deny_groups, a->ndeny_groups))
        why = "acl_denied_group";
    else if (a->nallow_groups > 0 && !in_groups(x->consumer_groups, a->allow_groups, a->nallow_groups))
        why = "acl_not_in_group";
    if (why == NULL)
        return SL_FILTER_CONTINUE;
    x->cause = SL_CAUSE_FORBIDDEN;
    x->cause_detail = why;
    return SL_FILTER_ERROR;
}

const sl_filter_type_t sl_filter_acl = {
    .name = "acl",
    .create = acl_create,
    .destroy = acl_destroy,
    .on_request = acl_on_request,
};
