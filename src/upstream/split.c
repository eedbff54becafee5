/*
 * Weighted choice among the upstreams of a route's `split`. Each entry owns a slice of
 * [0, total weight) in file order; a draw in that range picks the slice it lands in. The draw
 * is a random number per request, or a hash of the client's sticky key, which pins a client to
 * one upstream for as long as the weights stay the same. Sits between routing and the upstream's
 * balancer: it chooses the upstream, the balancer then chooses the target.
 */
#include <string.h>

#include "upstream/balancer.h"
#include "upstream/split.h"

/* Not the seed the hash balancer uses (0): with `sticky: header:X` on the route and
 * `hash_on: header:X` on its upstreams, equal seeds would correlate the two choices, so the
 * canary's clients would all land on the same few targets of each upstream. */
#define SPLIT_SEED 0x5bd1e9955bd1e995ull

/* xorshift64* (Marsaglia, Vigna), the generator the balancer uses for p2c. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull; /* 0 is xorshift's fixed point */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* The high 32 bits of `r` mapped onto [0, n) by a multiply (Lemire); n < 2^32. The high bits
 * because xorshift64*'s low bits are its weakest. */
static uint32_t below(uint64_t r, uint32_t n)
{
    return (uint32_t)(((r >> 32) * (uint64_t)n) >> 32);
}

static size_t pick_slot(const sl_route_conf_t *r, uint32_t point)
{
    uint32_t acc = 0;
    for (size_t i = 0; i < r->nsplit; i++) {
        acc += r->split[i].weight;
        /* Strictly below: a weight-0 entry owns an empty slice and is never chosen. */
        if (point < acc)
            return r->split[i].upstream_index;
    }
    return r->upstream_index; /* unreachable when the total is positive, as the config ensures */
}

sl_str_t sl_split_key(const sl_route_conf_t *r, const sl_exchange_t *x)
{
    switch (r->sticky) {
    case SL_HASH_ON_IP:
        return (sl_str_t){x->client_ip, strnlen(x->client_ip, sizeof(x->client_ip))};
    case SL_HASH_ON_HEADER: {
        const sl_header_t *h = sl_headers_find(&x->req_headers, r->sticky_name);
        return h != NULL ? h->value : SL_STR_NULL;
    }
    case SL_HASH_ON_COOKIE:
        return sl_headers_cookie(&x->req_headers, r->sticky_name);
    default:
        return SL_STR_NULL;
    }
}

size_t sl_split_pick(const sl_route_conf_t *r, const sl_exchange_t *x, uint64_t *rng)
{
    uint32_t total = 0;
    for (size_t i = 0; i < r->nsplit; i++)
        total += r->split[i].weight;
    if (total == 0)
        return r->upstream_index;
    sl_str_t key = sl_split_key(r, x);
    /* An empty value is as good as absent: every such client would share one upstream. */
    uint64_t draw = key.len > 0 ? sl_balancer_hash(key.ptr, key.len, SPLIT_SEED) : rng_next(rng);
    return pick_slot(r, below(draw, total));
}
