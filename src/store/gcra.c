/*
 * The local GCRA limiter (gcra.h): the arithmetic, the per-process key digest and the table
 * every worker shares. The rate_limit filter calls sl_gcra_admit once per limit per request;
 * nothing here allocates, locks or reads a clock.
 *
 * Table layout. Slots are grouped in buckets of BUCKET_SLOTS; a key lives only in the bucket its
 * digest picks. A slot is { word, key_hi, key_lo }. `word` is the whole GCRA state: bit 63 is
 * CLAIM (an insert in flight), bits 0..62 the TAT in absolute monotonic ns (292 years of uptime).
 * A slot whose TAT is <= now holds no information (GCRA treats it as a full budget) and may be
 * claimed by any key; word 0 is a slot never used.
 *
 * Why the reuse race is safe (thread A about to CAS key X's TAT while B reclaims the slot for Y):
 *   (1) Every successful change of a word either raises its TAT strictly (an owner's admit:
 *       max(TAT, now) + cost*T with cost, T >= 1), sets CLAIM on an expired word (B's claim), or
 *       clears CLAIM while publishing a TAT of now_B + cost*T > now_B >= the expired TAT (B's
 *       publish). So a word never takes the same value twice: there is no ABA.
 *   (2) The key fields are written only while the word carries CLAIM.
 *   (3) A reads word w, then the key (acquire fence), then the word again; only if both reads
 *       equal w (and w has no CLAIM) does it trust that the key it read owns w. By (1) and (2)
 *       nothing was claimed in between.
 *   (4) A's CAS expects w. If B claimed the slot after A's reads, the word is no longer w and by
 *       (1) never will be again, so A's CAS fails and A starts over; it cannot write X's TAT
 *       into Y's slot. Conversely B's claim CAS expects the expired word it saw; if A's CAS won
 *       first the word changed and B's claim fails, so B cannot take a slot X just renewed.
 * Why a key is never in two slots (which would split its budget and over-admit): inserting a
 * new key takes the bucket's `seq` from the even value read *before* the lookup to odd (a CAS),
 * so an insert happens only if no other insert finished in the bucket since that lookup; the
 * inserter re-checks nothing else because nothing else could have placed the key. Threads that
 * only update existing keys never touch `seq`: the hot path is one CAS on the key's word.
 * An insert in flight is a few stores; a second new key of the same bucket spins until it ends.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/bug.h"
#include "common/error.h"
#include "store/gcra.h"

#define BUCKET_SLOTS 16
#define CLAIM        (UINT64_C(1) << 63)
#define TAT_MASK     (CLAIM - 1)

typedef struct slot {
    _Atomic uint64_t word;
    _Atomic uint64_t hi, lo;
} slot_t;

struct sl_gcra_table {
    slot_t *slots;
    _Atomic uint64_t *seqs; /* one per bucket: odd while a new key is being inserted */
    size_t nbuckets;        /* a power of two */
    _Atomic uint64_t full_total;
};

/* ---- the digest --------------------------------------------------------------------------- */

/* SipHash-2-4 with the 128-bit output (Aumasson and Bernstein), keyed once per process so
 * request data cannot aim many keys at one bucket. */
static uint64_t sip_key[2];
/* pthread_once rather than C11 call_once: glibc's call_once runs through an internal
 * __pthread_once that ThreadSanitizer does not see, so it reports the key's first readers. */
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_init(void)
{
    uint8_t k[16];
    if (getrandom(k, sizeof(k), 0) != (ssize_t)sizeof(k))
        for (size_t i = 0; i < sizeof(k); i++) /* no entropy at all: still a valid, fixed key */
            k[i] = (uint8_t)(i * 37 + 11);
    memcpy(sip_key, k, sizeof(k));
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

typedef struct sl_gcra_key_prefix sip_t;

static void sip_round(sip_t *s)
{
    s->v0 += s->v1;
    s->v1 = ROTL(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = ROTL(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = ROTL(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = ROTL(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = ROTL(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = ROTL(s->v2, 32);
}

static void sip_word(sip_t *s, uint64_t m)
{
    s->v3 ^= m;
    sip_round(s);
    sip_round(s);
    s->v0 ^= m;
}

static void sip_update(sip_t *s, const void *data, size_t len)
{
    const uint8_t *p = data, *end = p + len;
    /* Complete a partial word first (a prefix ends wherever its identity does), so the rest is
     * absorbed a whole word at a time. */
    for (; s->ntail != 0 && p < end; p++) {
        s->tail |= (uint64_t)*p << (8 * s->ntail);
        if (++s->ntail == 8) {
            sip_word(s, s->tail);
            s->tail = 0;
            s->ntail = 0;
        }
    }
    for (; end - p >= 8; p += 8) {
        uint64_t m = 0;
        for (int b = 0; b < 8; b++) /* little-endian, as SipHash reads its input */
            m |= (uint64_t)p[b] << (8 * b);
        sip_word(s, m);
    }
    for (; p < end; p++) /* fewer than 8 left: they stay in the tail */
        s->tail |= (uint64_t)*p << (8 * s->ntail++);
    s->total += len;
}

void sl_gcra_key_prefix(sl_str_t limit_id, sl_gcra_key_prefix_t *out)
{
    pthread_once(&sip_once, sip_init);
    sip_t s = {.v0 = sip_key[0] ^ UINT64_C(0x736f6d6570736575),
               .v1 = sip_key[1] ^ UINT64_C(0x646f72616e646f6d) ^ 0xee,
               .v2 = sip_key[0] ^ UINT64_C(0x6c7967656e657261),
               .v3 = sip_key[1] ^ UINT64_C(0x7465646279746573)};
    /* The identity's length goes first, so ("ab", "c") and ("a", "bc") differ. */
    uint64_t idlen = limit_id.len;
    sip_update(&s, &idlen, sizeof(idlen));
    sip_update(&s, limit_id.ptr, limit_id.len);
    *out = s;
}

sl_gcra_key_t sl_gcra_key_digest_prefixed(const sl_gcra_key_prefix_t *prefix, sl_str_t value)
{
    sip_t s = *prefix;
    sip_update(&s, value.ptr, value.len);
    sip_word(&s, s.tail | ((uint64_t)(s.total & 0xff) << 56));
    s.v2 ^= 0xee;
    for (int i = 0; i < 4; i++)
        sip_round(&s);
    sl_gcra_key_t k;
    k.hi = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    s.v1 ^= 0xdd;
    for (int i = 0; i < 4; i++)
        sip_round(&s);
    k.lo = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    if (k.hi == 0 && k.lo == 0) /* (0,0) marks a never-used slot */
        k.lo = 1;
    return k;
}

sl_gcra_key_t sl_gcra_key_digest(sl_str_t limit_id, sl_str_t value)
{
    sl_gcra_key_prefix_t prefix;
    sl_gcra_key_prefix(limit_id, &prefix);
    return sl_gcra_key_digest_prefixed(&prefix, value);
}

/* ---- the arithmetic ----------------------------------------------------------------------- */

/* a + b, or UINT64_MAX on overflow: a TAT that far out is simply never admissible. */
static uint64_t add_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

bool sl_gcra_decide(const sl_gcra_params_t *p, uint64_t tat_ns, uint64_t now_ns, uint32_t cost, uint64_t *new_tat_ns,
                    sl_gcra_result_t *out)
{
    uint64_t T = p->emission_ns ? p->emission_ns : 1;
    uint64_t window = add_sat(p->tolerance_ns, T); /* how far ahead of now the TAT may run */
    uint64_t increment;
    if (__builtin_mul_overflow((uint64_t)cost, T, &increment))
        increment = UINT64_MAX;
    /* now earlier than the stored TAT (another thread's later clock read, or a quiet key) is
     * the ordinary case; a TAT in the past means the key has its full budget. */
    uint64_t base = tat_ns > now_ns ? tat_ns : now_ns;
    uint64_t next = add_sat(base, increment);
    uint64_t ahead = next - now_ns; /* next >= base >= now */
    out->limit = p->tolerance_ns / T + 1;
    bool allowed = ahead <= window && next <= TAT_MASK;
    if (allowed) {
        *new_tat_ns = next;
        out->remaining = (window - ahead) / T;
        out->retry_after_ns = 0;
        out->reset_ns = ahead;
    } else {
        *new_tat_ns = tat_ns;
        uint64_t used = base - now_ns;
        out->remaining = used <= window ? (window - used) / T : 0;
        /* A cost above the whole budget is never admitted: say so with the largest wait. */
        out->retry_after_ns = increment > window ? UINT64_MAX : ahead - window;
        out->reset_ns = used;
    }
    out->allowed = allowed;
    return allowed;
}

/* ---- the table ---------------------------------------------------------------------------- */

int sl_gcra_table_create(size_t max_keys, sl_gcra_table_t **out)
{
    if (max_keys == 0 || max_keys > (UINT64_C(1) << 32))
        return SL_EINVALID;
    size_t nslots = BUCKET_SLOTS;
    while (nslots < max_keys)
        nslots *= 2;
    sl_gcra_table_t *t = sl_xcalloc(1, sizeof(*t));
    t->nbuckets = nslots / BUCKET_SLOTS;
    t->slots = sl_xcalloc(nslots, sizeof(slot_t));
    t->seqs = sl_xcalloc(t->nbuckets, sizeof(*t->seqs));
    *out = t;
    return 0;
}

void sl_gcra_table_destroy(sl_gcra_table_t *t)
{
    if (t == NULL)
        return;
    free(t->slots);
    free((void *)t->seqs);
    free(t);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The slot holding `key` in `b`, with its validated word in `*w` (see (3) at the top). */
static slot_t *lookup(slot_t *b, sl_gcra_key_t key, uint64_t *w)
{
    for (size_t i = 0; i < BUCKET_SLOTS; i++) {
        slot_t *s = &b[i];
        uint64_t w1, hi, lo;
        /* A word that moved under the reads is read again rather than skipped: skipping the
         * key's own slot because its owner just renewed it would insert the key twice. */
        do {
            w1 = atomic_load_explicit(&s->word, memory_order_acquire);
            hi = atomic_load_explicit(&s->hi, memory_order_relaxed);
            lo = atomic_load_explicit(&s->lo, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
        } while (atomic_load_explicit(&s->word, memory_order_relaxed) != w1);
        /* CLAIM: a new key being placed under the bucket's seq, which the caller checks. */
        if (w1 == 0 || (w1 & CLAIM) || hi != key.hi || lo != key.lo)
            continue;
        *w = w1;
        return s;
    }
    return NULL;
}

int sl_gcra_admit(sl_gcra_table_t *t, sl_gcra_key_t key, const sl_gcra_params_t *p, uint64_t now_ns, uint32_t cost,
                  sl_gcra_result_t *out)
{
    if (cost == 0)
        return SL_EINVALID;
    size_t bi = (size_t)(key.lo ^ (key.hi >> 17)) & (t->nbuckets - 1);
    slot_t *b = &t->slots[bi * BUCKET_SLOTS];
    _Atomic uint64_t *seq = &t->seqs[bi];
    uint64_t new_tat;
    for (;;) {
        uint64_t s0 = atomic_load_explicit(seq, memory_order_acquire);
        uint64_t w;
        slot_t *s = lookup(b, key, &w);
        if (s != NULL) {
            if (!sl_gcra_decide(p, w & TAT_MASK, now_ns, cost, &new_tat, out))
                return 0; /* a refusal changes nothing, so the validated read is its linearisation */
            if (atomic_compare_exchange_strong_explicit(&s->word, &w, new_tat, memory_order_acq_rel,
                                                        memory_order_relaxed))
                return 0;
            continue; /* another admit of the key, or a reclaim: decide again on fresh state */
        }
        if (s0 & 1) { /* a new key is being placed in this bucket: maybe ours */
            cpu_relax();
            continue;
        }
        /* Not found: a fresh key has a full budget. Refused even so (cost above the budget):
         * nothing to store. */
        if (!sl_gcra_decide(p, 0, now_ns, cost, &new_tat, out))
            return 0;
        if (!atomic_compare_exchange_strong_explicit(seq, &s0, s0 + 1, memory_order_acq_rel, memory_order_relaxed))
            continue; /* an insert finished since the lookup: it may have been this key */
        int rc = SL_ETOOBIG;
        for (size_t i = 0; i < BUCKET_SLOTS && rc != 0; i++) {
            slot_t *c = &b[i];
            uint64_t old = atomic_load_explicit(&c->word, memory_order_relaxed);
            /* Only the seq holder sets CLAIM, so a CLAIM word here cannot exist; a live TAT is
             * someone's budget. */
            if ((old & TAT_MASK) > now_ns)
                continue;
            if (!atomic_compare_exchange_strong_explicit(&c->word, &old, CLAIM | old, memory_order_acq_rel,
                                                         memory_order_relaxed))
                continue; /* its owner renewed it just now */
            /* Seqlock writer side: a reader whose key loads see these stores must then see the
             * CLAIM word (or later) in its re-check (its acquire fence pairs with this one). */
            atomic_thread_fence(memory_order_release);
            atomic_store_explicit(&c->hi, key.hi, memory_order_relaxed);
            atomic_store_explicit(&c->lo, key.lo, memory_order_relaxed);
            /* new_tat > now >= the old TAT: the word moves forward, (1) at the top holds. */
            atomic_store_explicit(&c->word, new_tat, memory_order_release);
            rc = 0;
        }
        atomic_store_explicit(seq, s0 + 2, memory_order_release);
        if (rc != 0) {
            atomic_fetch_add_explicit(&t->full_total, 1, memory_order_relaxed);
            *out = (sl_gcra_result_t){0};
        }
        return rc;
    }
}

int sl_gcra_peek(const sl_gcra_table_t *t, sl_gcra_key_t key, const sl_gcra_params_t *p, uint64_t now_ns,
                 sl_gcra_result_t *out)
{
    uint64_t w = 0;
    slot_t *s = NULL;
    if (t != NULL) {
        size_t bi = (size_t)(key.lo ^ (key.hi >> 17)) & (t->nbuckets - 1);
        /* lookup() only reads; the cast drops const for its atomics' signature. */
        s = lookup(&((sl_gcra_table_t *)t)->slots[bi * BUCKET_SLOTS], key, &w);
    }
    uint64_t tat = s != NULL ? (w & TAT_MASK) : 0;
    uint64_t T = p->emission_ns ? p->emission_ns : 1;
    uint64_t window = add_sat(p->tolerance_ns, T);
    /* The figures admit's refusal branch gives (sl_gcra_decide), without a decision. */
    uint64_t used = tat > now_ns ? tat - now_ns : 0;
    uint64_t need = add_sat(used, T);
    *out = (sl_gcra_result_t){.allowed = need <= window,
                              .limit = p->tolerance_ns / T + 1,
                              .remaining = used <= window ? (window - used) / T : 0,
                              .retry_after_ns = need > window ? need - window : 0,
                              .reset_ns = used};
    return s != NULL && used > 0 ? 0 : SL_ENOTFOUND;
}

size_t sl_gcra_table_live(const sl_gcra_table_t *t, uint64_t now_ns)
{
    size_t n = 0, nslots = t->nbuckets * BUCKET_SLOTS;
    for (size_t i = 0; i < nslots; i++) {
        uint64_t w = atomic_load_explicit(&((slot_t *)t->slots)[i].word, memory_order_relaxed);
        n += (w & TAT_MASK) > now_ns;
    }
    return n;
}

uint64_t sl_gcra_table_full_total(const sl_gcra_table_t *t)
{
    return atomic_load_explicit(&((sl_gcra_table_t *)t)->full_total, memory_order_relaxed);
}
