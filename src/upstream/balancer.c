/*
 * The load balancers behind sl_balancer_pick: the proxy calls it once per try to choose a
 * target of the exchange's upstream. Everything a pick needs is precomputed here at snapshot
 * build time (the smooth weighted round-robin order, the Maglev table); the only shared writes
 * on the pick path are one relaxed atomic increment (round robin, least_conn's rotating start)
 * and the caller's own per-thread random state.
 */
#include "upstream/balancer.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"

_Static_assert(sizeof(sl_target_state_t) == 64, "one target state per cache line");

#define CACHE_LINE  64
#define MAX_TARGETS 65535 /* tables hold uint16_t indices; 0xffff marks an empty slot */
#define EMPTY_SLOT  0xffffu
#define MAX_ORDER   65536             /* round-robin order length cap (as the proxy always had) */
#define HASH_PROBES 8                 /* rehashes into the Maglev table before the O(n) fallback */
#define P2C_TRIES   4                 /* random draws before enumerating the available targets */
#define SEED_OFFSET 0x6d61676c6576ull /* the two Maglev permutation hashes of a target address */
#define SEED_SKIP   0x736b6970ull

typedef struct cursor {
    atomic_uint_fast64_t n;
    char pad[CACHE_LINE - sizeof(atomic_uint_fast64_t)];
} cursor_t;

struct sl_balancer {
    enum sl_balance kind;
    sl_target_state_t *states;
    uint32_t *weights; /* 1..1000 each */
    size_t ntargets;
    uint16_t *order; /* round_robin and hash's empty-key fallback */
    size_t norder;
    uint16_t *maglev; /* hash only */
    uint32_t maglev_size;
    /* Shared and written on every round-robin pick: on its own line, apart from the read-only
     * fields above, so the increments do not evict them from other cores' caches. */
    cursor_t *cursor;
};

/* ---- hashing -------------------------------------------------------------------------------- */

/* Multiply-and-fold (the idea behind wyhash and mum-hash): the 128-bit product of two 64-bit
 * words mixes every input bit into both halves, so one multiplication per 16 bytes is enough
 * for a well-spread result. Keys are short (an IP, a cookie) and hashed on every request, so
 * this beats SipHash several times over; a keyed hash buys nothing here, since a lookup table
 * has no chains to flood and a client already chooses its own key. */
static uint64_t fold_mul(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    unsigned __int128 r = (unsigned __int128)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = (uint32_t)a, ah = a >> 32, bl = (uint32_t)b, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
    uint64_t lo = (mid << 32) | (uint32_t)ll;
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

/* Odd constants with balanced bits: the golden ratio and the splitmix64 finalizer's. */
#define K0 0x9e3779b97f4a7c15ull
#define K1 0xbf58476d1ce4e5b9ull
#define K2 0x94d049bb133111ebull

static uint64_t finalize(uint64_t h)
{
    h ^= h >> 30;
    h *= K1;
    h ^= h >> 27;
    h *= K2;
    return h ^ (h >> 31);
}

static uint64_t read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

uint64_t sl_balancer_hash(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = seed ^ ((uint64_t)len * K0);
    size_t n = len;
    while (n >= 16) {
        h = fold_mul(read64(p) ^ K1, read64(p + 8) ^ h ^ K2);
        p += 16;
        n -= 16;
    }
    unsigned char tail[16] = {0};
    if (n) /* data may be NULL when len is 0 */
        memcpy(tail, p, n);
    h = fold_mul(read64(tail) ^ K1 ^ h, read64(tail + 8) ^ K2);
    return finalize(h ^ K0);
}

/* ---- shared pieces ------------------------------------------------------------------------- */

static bool available(const sl_balancer_t *b, size_t i)
{
    return !(atomic_load_explicit(&b->states[i].flags, memory_order_relaxed) & SL_TARGET_UNAVAILABLE);
}

static uint64_t cursor_next(const sl_balancer_t *b)
{
    return atomic_fetch_add_explicit(&b->cursor->n, 1, memory_order_relaxed);
}

/* xorshift64* (Marsaglia, Vigna): a few cycles, and good enough to pick among targets. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : K0; /* 0 is xorshift's fixed point */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* r mapped onto [0, n) by a multiply instead of a division (Lemire); n < 2^32. */
static size_t below(uint64_t r, size_t n)
{
    return (size_t)(((r >> 32) * (uint64_t)n) >> 32);
}

/* The `r mod count`-th available target, or -1: the fallback when the fast paths found only
 * unavailable targets. O(n), and deterministic in r, so a hash key's fallback stays put. */
static int nth_available(const sl_balancer_t *b, uint64_t r, long exclude)
{
    size_t count = 0;
    for (size_t i = 0; i < b->ntargets; i++)
        count += (long)i != exclude && available(b, i);
    if (count == 0)
        return -1;
    size_t k = (size_t)(r % count);
    for (size_t i = 0; i < b->ntargets; i++)
        if ((long)i != exclude && available(b, i) && k-- == 0)
            return (int)i;
    return -1; /* availability changed under us: as if all were down for this one pick */
}

/* ---- round robin ------------------------------------------------------------------------------- */

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* nginx's smooth weighted round robin unrolled once into a table: each target's turns are
 * spread evenly through the cycle instead of coming in bursts, and picking is one atomic
 * increment. Weights are divided by their gcd first (2/4/6 cycles like 1/2/3); an order longer
 * than MAX_ORDER scales them down, which only a config of many heavy targets reaches. */
static void build_order(sl_balancer_t *b)
{
    size_t n = b->ntargets;
    uint64_t g = 0, total = 0;
    for (size_t i = 0; i < n; i++)
        g = gcd(b->weights[i], g);
    uint64_t *w = sl_xcalloc(n, sizeof(*w));
    for (size_t i = 0; i < n; i++)
        total += w[i] = b->weights[i] / g;
    if (total > MAX_ORDER) {
        uint64_t scaled = 0;
        for (size_t i = 0; i < n; i++) {
            w[i] = SL_MAX(1, w[i] * (MAX_ORDER - n) / total);
            scaled += w[i];
        }
        total = scaled;
    }
    b->order = sl_xmalloc(total * sizeof(*b->order));
    b->norder = total;
    int64_t *cur = sl_xcalloc(n, sizeof(*cur));
    for (size_t k = 0; k < total; k++) {
        size_t best = 0;
        for (size_t i = 0; i < n; i++) {
            cur[i] += (int64_t)w[i];
            if (cur[i] > cur[best])
                best = i;
        }
        cur[best] -= (int64_t)total;
        b->order[k] = (uint16_t)best;
    }
    free(cur);
    free(w);
}

/* Skipping an unavailable target takes the next available one in the order, which hands its
 * turns to the others roughly in proportion to their weights. Past a short scan (one heavy
 * target down can fill long stretches) the cursor picks among the available ones instead, so
 * a pick stays O(n) whatever the weights. */
static int pick_round_robin(const sl_balancer_t *b)
{
    uint64_t n = cursor_next(b);
    size_t scan = SL_MIN(b->norder, 2 * b->ntargets + 2);
    for (size_t k = 0; k < scan; k++) {
        size_t t = b->order[(n + k) % b->norder];
        if (available(b, t))
            return (int)t;
    }
    return nth_available(b, n, -1);
}

/* ---- least connections ------------------------------------------------------------------------ */

static uint64_t load_of(const sl_balancer_t *b, size_t i)
{
    int v = atomic_load_explicit(&b->states[i].inflight, memory_order_relaxed);
    return v > 0 ? (uint64_t)v + 1 : 1; /* +1: the request being placed; a racy negative reads as 0 */
}

/* Minimises (inflight + 1) / weight, compared by cross-multiplication to stay in integers.
 * The scan starts at a rotating position and only a strictly lower load replaces the best,
 * so targets with equal load take turns instead of the first one in the list taking all. */
static int pick_least_conn(const sl_balancer_t *b)
{
    size_t n = b->ntargets;
    size_t start = (size_t)(cursor_next(b) % n);
    long best = -1;
    uint64_t best_load = 0, best_w = 1;
    for (size_t k = 0; k < n; k++) {
        size_t i = start + k < n ? start + k : start + k - n;
        if (!available(b, i))
            continue;
        uint64_t load = load_of(b, i), w = b->weights[i];
        if (best < 0 || load * best_w < best_load * w) {
            best = (long)i;
            best_load = load;
            best_w = w;
        }
    }
    return (int)best;
}

/* ---- hash (Maglev) ------------------------------------------------------------------------------ */

/* Maglev (Eisenbud et al., NSDI 2016): each target walks its own permutation of the table's
 * slots (offset + j * skip mod a prime size) and claims the first free slot on its turn, until
 * the table is full. Every target ends up with a near-equal share, and removing a target
 * changes mostly the slots it had, because the others' permutations do not depend on it.
 * Weights: a target earns `weight` credits per pass and takes one turn per `max weight`
 * credits, so its share of turns (and slots) is proportional to its weight, to within one. */
static void build_maglev(sl_balancer_t *b, const sl_upstream_conf_t *conf)
{
    size_t n = b->ntargets;
    /* The paper wants the table ~100x the number of targets for an even spread. */
    uint32_t m = n <= 655 ? 65537 : n <= 2621 ? 262139 : 1048573;
    uint16_t *table = sl_xmalloc((size_t)m * sizeof(*table));
    for (uint32_t s = 0; s < m; s++)
        table[s] = EMPTY_SLOT;
    uint64_t *offset = sl_xcalloc(n, sizeof(*offset));
    uint64_t *skip = sl_xcalloc(n, sizeof(*skip));
    uint64_t *next = sl_xcalloc(n, sizeof(*next));
    uint64_t *credit = sl_xcalloc(n, sizeof(*credit));
    uint64_t wmax = 1;
    for (size_t i = 0; i < n; i++) {
        /* The written address, not the resolved one: a table must not change when DNS does. */
        sl_str_t a = conf->targets[i].address;
        offset[i] = sl_balancer_hash(a.ptr, a.len, SEED_OFFSET) % m;
        skip[i] = sl_balancer_hash(a.ptr, a.len, SEED_SKIP) % (m - 1) + 1;
        wmax = SL_MAX(wmax, b->weights[i]);
    }
    uint32_t filled = 0;
    while (filled < m) {
        for (size_t i = 0; i < n && filled < m; i++) {
            credit[i] += b->weights[i];
            while (credit[i] >= wmax && filled < m) {
                credit[i] -= wmax;
                /* m is prime and 0 < skip < m, so the walk visits every slot: it ends. */
                uint64_t s;
                do
                    s = (offset[i] + next[i]++ * skip[i]) % m;
                while (table[s] != EMPTY_SLOT);
                table[s] = (uint16_t)i;
                filled++;
            }
        }
    }
    free(offset);
    free(skip);
    free(next);
    free(credit);
    b->maglev = table;
    b->maglev_size = m;
}

/* The key's slot owner, else a few more slots chosen by rehashing the key's hash (so a key
 * whose target is down lands on a target chosen in proportion to the table, and the same one
 * every time while the set of available targets stays the same), else any available target
 * chosen by the hash. Keys of available targets never move. */
static int pick_hash(const sl_balancer_t *b, const sl_balance_key_t *key)
{
    if (key == NULL || key->len == 0)
        return pick_round_robin(b);
    uint64_t h = sl_balancer_hash(key->ptr, key->len, 0);
    size_t t = b->maglev[h % b->maglev_size];
    if (available(b, t))
        return (int)t;
    for (uint64_t k = 1; k <= HASH_PROBES; k++) {
        t = b->maglev[finalize(h + k * K0) % b->maglev_size];
        if (available(b, t))
            return (int)t;
    }
    return nth_available(b, finalize(h ^ K2), -1);
}

/* ---- power of two choices, EWMA cost --------------------------------------------------------- */

/* A uniformly random available target other than `exclude` (-1: none), or -1. */
static long draw_available(const sl_balancer_t *b, uint64_t *rng, long exclude)
{
    size_t n = b->ntargets - (exclude >= 0);
    if (n == 0)
        return -1;
    for (int tries = 0; tries < P2C_TRIES; tries++) {
        long i = (long)below(rng_next(rng), n);
        if (exclude >= 0 && i >= exclude)
            i++; /* draws over the others only, so the two candidates differ */
        if (available(b, (size_t)i))
            return i;
    }
    return nth_available(b, rng_next(rng), exclude);
}

/* True if a costs no more than c, cost = ewma * (inflight + 1) / weight. An unmeasured target
 * (ewma 0) is the cheapest, so a new or restarted target gets traffic and a measurement; two
 * unmeasured ones compare by load alone. Doubles: ewma * load * weight can pass 2^64. */
static bool cheaper(const sl_balancer_t *b, size_t a, size_t c)
{
    uint64_t ea = atomic_load_explicit(&b->states[a].ewma_ns, memory_order_relaxed);
    uint64_t ec = atomic_load_explicit(&b->states[c].ewma_ns, memory_order_relaxed);
    if ((ea == 0) != (ec == 0))
        return ea == 0;
    if (ea == 0)
        ea = ec = 1;
    double ca = (double)ea * (double)load_of(b, a) * (double)b->weights[c];
    double cc = (double)ec * (double)load_of(b, c) * (double)b->weights[a];
    return ca <= cc;
}

static int pick_p2c(const sl_balancer_t *b, uint64_t *rng)
{
    long a = draw_available(b, rng, -1);
    if (a < 0)
        return -1;
    long c = draw_available(b, rng, a);
    if (c < 0)
        return (int)a;
    return (int)(cheaper(b, (size_t)a, (size_t)c) ? a : c);
}

/* ---- public ---------------------------------------------------------------------------------- */

int sl_balancer_create(const sl_upstream_conf_t *conf, sl_target_state_t *states, sl_balancer_t **out)
{
    if (conf->ntargets > MAX_TARGETS)
        return SL_ETOOBIG;
    sl_balancer_t *b = sl_xcalloc(1, sizeof(*b));
    b->kind = conf->balance;
    b->states = states;
    b->ntargets = conf->ntargets;
    b->weights = sl_xcalloc(b->ntargets ? b->ntargets : 1, sizeof(*b->weights));
    for (size_t i = 0; i < b->ntargets; i++) {
        uint32_t w = conf->targets[i].weight;
        b->weights[i] = w ? w : 1; /* a conf not from the loader may leave it 0 */
    }
    b->cursor = aligned_alloc(CACHE_LINE, sizeof(cursor_t));
    SL_BUG_ON(b->cursor == NULL);
    atomic_init(&b->cursor->n, 0);
    if (b->ntargets > 0) {
        if (b->kind == SL_BALANCE_ROUND_ROBIN || b->kind == SL_BALANCE_HASH)
            build_order(b);
        if (b->kind == SL_BALANCE_HASH)
            build_maglev(b, conf);
    }
    *out = b;
    return 0;
}

void sl_balancer_destroy(sl_balancer_t *b)
{
    if (b == NULL)
        return;
    free(b->weights);
    free(b->order);
    free(b->maglev);
    free(b->cursor);
    free(b);
}

int sl_balancer_pick(const sl_balancer_t *b, const sl_balance_key_t *key, uint64_t *rng)
{
    if (b->ntargets == 0)
        return -1;
    switch (b->kind) {
    case SL_BALANCE_ROUND_ROBIN:
        return pick_round_robin(b);
    case SL_BALANCE_LEAST_CONN:
        return pick_least_conn(b);
    case SL_BALANCE_HASH:
        return pick_hash(b, key);
    case SL_BALANCE_P2C_EWMA:
        return pick_p2c(b, rng);
    }
    SL_BUG_ON(1);
    return -1;
}

void sl_balancer_observe(sl_target_state_t *t, uint64_t latency_ns)
{
    uint64_t sample = latency_ns ? latency_ns : 1; /* 0 means "unmeasured" */
    uint_fast64_t old = atomic_load_explicit(&t->ewma_ns, memory_order_relaxed);
    uint_fast64_t next;
    do {
        /* old - old/8 + sample/8 cannot overflow, unlike (7 * old + sample) / 8. */
        next = old == 0 ? sample : old - old / 8 + sample / 8;
        if (next == 0)
            next = 1;
    } while (
        !atomic_compare_exchange_weak_explicit(&t->ewma_ns, &old, next, memory_order_relaxed, memory_order_relaxed));
}

sl_target_state_t *sl_balancer_states_create(size_t n)
{
    size_t size = (n ? n : 1) * sizeof(sl_target_state_t);
    sl_target_state_t *s = aligned_alloc(CACHE_LINE, size);
    SL_BUG_ON(s == NULL);
    memset(s, 0, size);
    for (size_t i = 0; i < n; i++) {
        atomic_init(&s[i].inflight, 0);
        atomic_init(&s[i].flags, 0);
        atomic_init(&s[i].ewma_ns, 0);
    }
    return s;
}

void sl_balancer_states_destroy(sl_target_state_t *states)
{
    free(states);
}
