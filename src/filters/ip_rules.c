/*
 * The ip_rules filter: allow/deny lists of CIDR blocks, global (`ip_rules` at the top level)
 * then per route, on the client address. Behind trusted proxies (`trusted_proxies`) the client
 * is the right-most X-Forwarded-For entry that is not itself a trusted proxy. Lists compile to
 * sorted, merged address ranges, so a check is two binary searches whatever the list length.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "filters/filters.h"
#include "filters/internal.h"

/* An inclusive range of 128-bit addresses; IPv4 lives in its own set. */
typedef struct range {
    uint8_t lo[16], hi[16];
} range_t;

typedef struct range_set {
    range_t *v4, *v6;
    size_t n4, n6;
} range_set_t;

static void range_of(const sl_cidr_conf_t *c, range_t *r)
{
    size_t nbytes = c->family == AF_INET ? 4 : 16;
    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < nbytes; i++) {
        unsigned bits = c->prefix > i * 8 ? c->prefix - (unsigned)i * 8 : 0;
        uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff00u >> bits);
        r->lo[i] = c->addr[i] & mask;
        r->hi[i] = (uint8_t)(c->addr[i] | (uint8_t)~mask);
    }
}

static int cmp16(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, 16);
}

static int cmp_range(const void *a, const void *b)
{
    return cmp16(((const range_t *)a)->lo, ((const range_t *)b)->lo);
}

/* a + 1 == b over 128-bit big-endian numbers: adjacent ranges merge too. */
static bool next_to(const uint8_t *a, const uint8_t *b)
{
    uint8_t t[16];
    memcpy(t, a, 16);
    for (int i = 15; i >= 0; i--)
        if (++t[i] != 0)
            break;
    return memcmp(t, b, 16) == 0;
}

static size_t merge(range_t *v, size_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_range);
    size_t k = 0;
    for (size_t i = 1; i < n; i++) {
        if (cmp16(v[i].lo, v[k].hi) <= 0 || next_to(v[k].hi, v[i].lo)) {
            if (cmp16(v[i].hi, v[k].hi) > 0)
                memcpy(v[k].hi, v[i].hi, 16);
        } else {
            v[++k] = v[i];
        }
    }
    return k + 1;
}

static void set_build(range_set_t *s, const sl_cidr_conf_t *c, size_t n)
{
    s->v4 = sl_xcalloc(n ? n : 1, sizeof(range_t));
    s->v6 = sl_xcalloc(n ? n : 1, sizeof(range_t));
    for (size_t i = 0; i < n; i++) {
        if (c[i].family == AF_INET)
            range_of(&c[i], &s->v4[s->n4++]);
        else
            range_of(&c[i], &s->v6[s->n6++]);
    }
    s->n4 = merge(s->v4, s->n4);
    s->n6 = merge(s->v6, s->n6);
}

static void set_dispose(range_set_t *s)
{
    free(s->v4);
    free(s->v6);
}

static bool set_contains(const range_set_t *s, int family, const uint8_t *addr)
{
    uint8_t key[16] = {0};
    memcpy(key, addr, family == AF_INET ? 4 : 16);
    const range_t *v = family == AF_INET ? s->v4 : s->v6;
    size_t lo = 0, hi = family == AF_INET ? s->n4 : s->n6;
    while (lo < hi) { /* the last range whose lo <= key */
        size_t mid = lo + (hi - lo) / 2;
        if (cmp16(v[mid].lo, key) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && cmp16(key, v[lo - 1].hi) <= 0;
}

/* ---- shared: trusted proxies and the client address ------------------------------------------ */

struct sl__ip_trust {
    range_set_t proxies;
    bool any;
};

sl__ip_trust_t *sl__ip_trust_create(const sl_config_t *cfg)
{
    sl__ip_trust_t *t = sl_xcalloc(1, sizeof(*t));
    set_build(&t->proxies, cfg->trusted_proxies, cfg->ntrusted_proxies);
    t->any = cfg->ntrusted_proxies > 0;
    return t;
}

void sl__ip_trust_destroy(sl__ip_trust_t *t)
{
    if (t == NULL)
        return;
    set_dispose(&t->proxies);
    free(t);
}

static bool parse_ip(sl_str_t s, int *family, uint8_t addr[16])
{
    while (s.len > 0 && (s.ptr[0] == ' ' || s.ptr[0] == '\t'))
        s.ptr++, s.len--;
    while (s.len > 0 && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
        s.len--;
    char buf[64];
    if (s.len == 0 || s.len >= sizeof(buf))
        return false;
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = '\0';
    if (inet_pton(AF_INET, buf, addr) == 1) {
        *family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, buf, addr) == 1) {
        *family = AF_INET6;
        return true;
    }
    return false;
}

bool sl__client_addr(const sl_exchange_t *x, const sl__ip_trust_t *t, int *family, uint8_t addr[16])
{
    if (x->client_family == 0)
        return false;
    *family = x->client_family;
    memcpy(addr, x->client_addr, 16);
    if (t == NULL || !t->any || !set_contains(&t->proxies, *family, addr))
        return true;
    /* Right to left over every X-Forwarded-For field: each hop appended what it saw; the first
     * address not a trusted proxy is the client. An unparsable entry stops the walk there (it
     * was written by someone we do not trust), keeping the last trusted hop as the client. */
    for (size_t i = x->req_headers.len; i-- > 0;) {
        const sl_header_t *h = &x->req_headers.items[i];
        if (!sl_str_caseeq(h->name, SL_STR_LIT("X-Forwarded-For")))
            continue;
        size_t end = h->value.len;
        while (end > 0) {
            size_t start = end;
            while (start > 0 && h->value.ptr[start - 1] != ',')
                start--;
            int f;
            uint8_t a[16] = {0};
            if (!parse_ip((sl_str_t){h->value.ptr + start, end - start}, &f, a))
                return true;
            *family = f;
            memcpy(addr, a, 16);
            if (!set_contains(&t->proxies, f, a))
                return true;
            end = start > 0 ? start - 1 : 0;
        }
    }
    return true;
}

/* ---- the filter ---------------------------------------------------------------------------- */

typedef struct ip_rules {
    range_set_t allow, deny; /* global */
    bool has_allow;
    range_set_t rallow, rdeny; /* the route's */
    bool has_rallow;
    const sl__ip_trust_t *trust;
} ip_rules_t;

static int ip_create(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                     sl_config_errors_t *errs)
{
    (void)errs;
    const sl_config_t *cfg = snap->cfg;
    const sl_ip_rules_conf_t *g = &cfg->ip_rules;
    const sl_ip_rules_conf_t *r = &route->ip_rules;
    if (g->nallow + g->ndeny == 0 && (!route->has_ip_rules || r->nallow + r->ndeny == 0)) {
        *state = NULL;
        return 0;
    }
    ip_rules_t *ip = sl_xcalloc(1, sizeof(*ip));
    set_build(&ip->allow, g->allow, g->nallow);
    set_build(&ip->deny, g->deny, g->ndeny);
    ip->has_allow = g->nallow > 0;
    set_build(&ip->rallow, route->has_ip_rules ? r->allow : NULL, route->has_ip_rules ? r->nallow : 0);
    set_build(&ip->rdeny, route->has_ip_rules ? r->deny : NULL, route->has_ip_rules ? r->ndeny : 0);
    ip->has_rallow = route->has_ip_rules && r->nallow > 0;
    ip->trust = sl__filters_shared_trust(shared);
    *state = ip;
    return 0;
}

static void ip_destroy(void *state)
{
    ip_rules_t *ip = state;
    set_dispose(&ip->allow);
    set_dispose(&ip->deny);
    set_dispose(&ip->rallow);
    set_dispose(&ip->rdeny);
    free(ip);
}

static enum sl_filter_status ip_on_request(sl_exchange_t *x, void *state)
{
    const ip_rules_t *ip = state;
    int family;
    uint8_t addr[16] = {0};
    /* No address (not a socket peer) cannot be checked, so it is refused: rules fail closed. */
    bool ok = sl__client_addr(x, ip->trust, &family, addr);
    if (ok && ip->has_allow && !set_contains(&ip->allow, family, addr))
        ok = false;
    if (ok && set_contains(&ip->deny, family, addr))
        ok = false;
    if (ok && ip->has_rallow && !set_contains(&ip->rallow, family, addr))
        ok = false;
    if (ok && set_contains(&ip->rdeny, family, addr))
        ok = false;
    if (ok)
        return SL_FILTER_CONTINUE;
    x->cause = SL_CAUSE_FORBIDDEN;
    x->cause_detail = "ip_denied";
    return SL_FILTER_ERROR;
}

const sl_filter_type_t sl_filter_ip_rules = {
    .name = "ip_rules",
    .create = ip_create,
    .destroy = ip_destroy,
    .on_request = ip_on_request,
};
