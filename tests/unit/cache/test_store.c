/*
 * Keys and the store (src/cache/key.c, store.c): primary keys, Vary's secondary keys, variants
 * per URL, the byte budget, the segmented LRU's resistance to scans, purges, the reload sweep
 * and the coalescing locks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cache/cache.h"
#include "common/error.h"

static sl_arena_t arena;

static int setup(void **state)
{
    (void)state;
    sl_arena_init(&arena, 4096);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sl_arena_dispose(&arena);
    return 0;
}

static sl_headers_t one_header(sl_header_t *h, const char *name, const char *value)
{
    h->name = sl_str_from_cstr(name);
    h->value = sl_str_from_cstr(value);
    return (sl_headers_t){h, 1, 1};
}

static sl_cache_obj_t *make(uint64_t tag, const char *route, sl_str_t key, sl_str_t names, sl_str_t values, size_t body,
                            int64_t t)
{
    sl_cache_meta_t m = {.status = 200, .response_time = t, .lifetime = 60};
    sl_header_t h[2] = {{SL_STR_LIT("Content-Type"), SL_STR_LIT("text/plain")}, {SL_STR_LIT("Age"), SL_STR_LIT("3")}};
    sl_cache_obj_t *o = sl_cache_obj_create(sl_str_from_cstr(route), tag, key, names, values, &m, h, 2, body);
    char buf[256];
    memset(buf, 'b', sizeof(buf));
    for (size_t done = 0; done < body; done += sizeof(buf) < body - done ? sizeof(buf) : body - done)
        assert_int_equal(sl_cache_obj_append(o, buf, sizeof(buf) < body - done ? sizeof(buf) : body - done, 1 << 30),
                         0);
    return o;
}

/* Stores a 10-byte variant of `key` (route tag 7) selected by `req`'s Vary fields. */
static void insert_variant(sl_cache_t *c, sl_str_t key, sl_str_t names, const sl_headers_t *req, int64_t t,
                           uint32_t max_variants)
{
    sl_cache_obj_t *o = make(7, "r", key, names, sl_cache_vary_values(&arena, names, req), 10, t);
    assert_int_equal(sl_cache_insert(c, o, max_variants), 0);
    sl_cache_obj_unref(o);
}

static void test_keys(void **state)
{
    (void)state;
    sl_str_t k = sl_cache_key(&arena, SL_STR_LIT("API.Example.COM"), SL_STR_LIT("/a/B"), SL_STR_LIT("x=1"));
    assert_true(sl_str_eq(k, SL_STR_LIT("api.example.com\n/a/B?x=1")));
    sl_str_t k2 = sl_cache_key(&arena, SL_STR_LIT("api.example.com"), SL_STR_LIT("/a/B"), SL_STR_NULL);
    assert_true(sl_str_eq(k2, SL_STR_LIT("api.example.com\n/a/B")));
    assert_int_not_equal(sl_cache_hash(1, k), sl_cache_hash(2, k));
    assert_int_not_equal(sl_cache_hash(1, k), sl_cache_hash(1, k2));
    /* a route's identity follows its cache settings and upstream, not unrelated fields */
    sl_route_conf_t r = {
        .name = SL_STR_LIT("r"), .upstream = SL_STR_LIT("u"), .cache = {.enabled = true, .ttl_ms = 1000}};
    uint64_t t1 = sl_cache_route_tag(&r);
    r.priority = 9;
    assert_int_equal(sl_cache_route_tag(&r), t1);
    r.cache.ttl_ms = 2000;
    assert_int_not_equal(sl_cache_route_tag(&r), t1);
    r.cache.ttl_ms = 1000;
    r.upstream = SL_STR_LIT("v");
    assert_int_not_equal(sl_cache_route_tag(&r), t1);
}

static void test_vary(void **state)
{
    (void)state;
    sl_header_t v[2] = {{SL_STR_LIT("Vary"), SL_STR_LIT("Accept-Encoding, ACCEPT-language")},
                        {SL_STR_LIT("vary"), SL_STR_LIT("X-Tenant")}};
    sl_headers_t resp = {v, 2, 2};
    bool star = true;
    sl_str_t names = sl_cache_vary_names(&arena, &resp, &star);
    assert_false(star);
    assert_true(sl_str_eq(names, SL_STR_LIT("accept-encoding\naccept-language\nx-tenant")));
    sl_header_t r[3] = {{SL_STR_LIT("accept-encoding"), SL_STR_LIT("gzip")},
                        {SL_STR_LIT("X-Tenant"), SL_STR_LIT(" a ")},
                        {SL_STR_LIT("Accept-Encoding"), SL_STR_LIT("br")}};
    sl_headers_t req = {r, 3, 3};
    sl_str_t vals = sl_cache_vary_values(&arena, names, &req);
    assert_true(sl_str_eq(vals, SL_STR_LIT("gzip, br\n\x01\na")));
    /* absent and empty select differently */
    sl_header_t e[1] = {{SL_STR_LIT("X-Tenant"), SL_STR_LIT("")}};
    sl_headers_t req2 = {e, 1, 1};
    sl_headers_t none = {NULL, 0, 0};
    assert_false(sl_str_eq(sl_cache_vary_values(&arena, SL_STR_LIT("x-tenant"), &req2),
                           sl_cache_vary_values(&arena, SL_STR_LIT("x-tenant"), &none)));
    sl_header_t s[1] = {{SL_STR_LIT("Vary"), SL_STR_LIT("*")}};
    sl_headers_t rs = {s, 1, 1};
    sl_cache_vary_names(&arena, &rs, &star);
    assert_true(star);
    sl_headers_t nv = {NULL, 0, 0};
    assert_int_equal(sl_cache_vary_names(&arena, &nv, &star).len, 0);
}

static void test_lookup_with_variants(void **state)
{
    (void)state;
    sl_cache_t *c = sl_cache_create(16u << 20);
    sl_str_t key = SL_STR_LIT("h\n/x");
    sl_str_t names = SL_STR_LIT("accept-encoding");
    sl_header_t hb;
    sl_headers_t gz = one_header(&hb, "Accept-Encoding", "gzip");
    sl_header_t hb2;
    sl_headers_t br = one_header(&hb2, "Accept-Encoding", "br");
    insert_variant(c, key, names, &gz, 1, 8);
    assert_null(sl_cache_lookup(c, 7, sl_cache_hash(7, key), key, &br, &arena));
    assert_null(sl_cache_lookup(c, 8, sl_cache_hash(8, key), key, &gz, &arena)); /* other route tag */
    sl_cache_obj_t *got = sl_cache_lookup(c, 7, sl_cache_hash(7, key), key, &gz, &arena);
    assert_non_null(got);
    assert_int_equal(got->body_len, 10);
    assert_int_equal(got->nheaders, 1); /* Age is not stored */
    sl_cache_obj_unref(got);
    /* max_variants: a third variant with a limit of 2 pushes the oldest out */
    insert_variant(c, key, names, &br, 2, 2);
    sl_header_t hb3;
    sl_headers_t id = one_header(&hb3, "Accept-Encoding", "identity");
    insert_variant(c, key, names, &id, 3, 2);
    assert_null(sl_cache_lookup(c, 7, sl_cache_hash(7, key), key, &gz, &arena));
    sl_cache_obj_unref(sl_cache_lookup(c, 7, sl_cache_hash(7, key), key, &br, &arena));
    sl_cache_stats_t st;
    sl_cache_stats(c, &st);
    assert_int_equal(st.objects, 2);
    /* invalidation drops every variant */
    assert_int_equal(sl_cache_invalidate(c, 7, sl_cache_hash(7, key), key), 2);
    sl_cache_stats(c, &st);
    assert_int_equal(st.objects, 0);
    assert_int_equal(st.bytes, 0);
    sl_cache_unref(c);
}

static void test_budget_and_scan_resistance(void **state)
{
    (void)state;
    /* 16 shards x 64 KiB; objects of ~2 KiB */
    sl_cache_t *c = sl_cache_create(1u << 20);
    char kb[64];
    sl_header_t hh;
    sl_headers_t none = {&hh, 0, 0};
    /* a hot set, used twice so it is protected */
    for (int i = 0; i < 64; i++) {
        snprintf(kb, sizeof(kb), "h\n/hot%d", i);
        sl_str_t k = sl_str_from_cstr(kb);
        sl_cache_obj_t *o = make(1, "r", k, SL_STR_NULL, SL_STR_NULL, 2000, i);
        assert_int_equal(sl_cache_insert(c, o, 8), 0);
        sl_cache_obj_unref(o);
        sl_cache_obj_unref(sl_cache_lookup(c, 1, sl_cache_hash(1, k), k, &none, &arena));
    }
    /* a scan of 5000 one-time keys: 10 MB through a 1 MB cache */
    for (int i = 0; i < 5000; i++) {
        snprintf(kb, sizeof(kb), "h\n/scan%d", i);
        sl_cache_obj_t *o = make(1, "r", sl_str_from_cstr(kb), SL_STR_NULL, SL_STR_NULL, 2000, 100 + i);
        assert_int_equal(sl_cache_insert(c, o, 8), 0);
        sl_cache_obj_unref(o);
        sl_cache_stats_t st;
        sl_cache_stats(c, &st);
        assert_true(st.bytes <= st.budget);
    }
    int survived = 0;
    for (int i = 0; i < 64; i++) {
        snprintf(kb, sizeof(kb), "h\n/hot%d", i);
        sl_str_t k = sl_str_from_cstr(kb);
        sl_cache_obj_t *o = sl_cache_lookup(c, 1, sl_cache_hash(1, k), k, &none, &arena);
        survived += o != NULL;
        sl_cache_obj_unref(o);
    }
    assert_int_equal(survived, 64);
    sl_cache_stats_t st;
    sl_cache_stats(c, &st);
    assert_true(st.evictions > 4000);
    /* an object over a quarter of a shard is refused, not allowed to flush the shard */
    sl_cache_obj_t *big = make(1, "r", SL_STR_LIT("h\n/big"), SL_STR_NULL, SL_STR_NULL, 20000, 1);
    assert_int_equal(sl_cache_insert(c, big, 8), SL_ETOOBIG);
    sl_cache_obj_unref(big);
    /* a smaller budget applies at the next inserts */
    sl_cache_set_budget(c, 256u << 10);
    for (int i = 0; i < 200; i++) {
        snprintf(kb, sizeof(kb), "h\n/after%d", i);
        sl_cache_obj_t *o = make(1, "r", sl_str_from_cstr(kb), SL_STR_NULL, SL_STR_NULL, 1000, 9000 + i);
        sl_cache_insert(c, o, 8);
        sl_cache_obj_unref(o);
    }
    sl_cache_stats(c, &st);
    assert_true(st.bytes <= 256u << 10);
    sl_cache_unref(c);
}

static void test_append_limit(void **state)
{
    (void)state;
    sl_cache_obj_t *o = make(1, "r", SL_STR_LIT("h\n/"), SL_STR_NULL, SL_STR_NULL, 0, 1);
    char buf[100] = {0};
    assert_int_equal(sl_cache_obj_append(o, buf, 100, 150), 0);
    assert_int_equal(sl_cache_obj_append(o, buf, 100, 150), SL_ETOOBIG);
    assert_int_equal(o->body_len, 100);
    assert_int_equal(sl_cache_obj_append(o, buf, 50, 150), 0);
    assert_int_equal(o->body_len, 150);
    /* unknown lengths grow by doubling; trimming charges only what is kept */
    sl_cache_obj_t *g = make(1, "r", SL_STR_LIT("h\n/g"), SL_STR_NULL, SL_STR_NULL, 0, 1);
    size_t base = g->size;
    for (int i = 0; i < 50; i++)
        assert_int_equal(sl_cache_obj_append(g, buf, 100, 1 << 20), 0);
    assert_true(g->body_cap > 5000);
    sl_cache_obj_trim(g);
    assert_int_equal(g->body_cap, 5000);
    assert_int_equal(g->size, base + 5000);
    assert_memory_equal(g->body, buf, 100);
    sl_cache_obj_unref(g);
    sl_cache_obj_unref(o);
}

static void test_refresh_merges_headers(void **state)
{
    (void)state;
    sl_cache_meta_t m = {.status = 200, .lifetime = 1};
    sl_header_t h[3] = {{SL_STR_LIT("ETag"), SL_STR_LIT("\"1\"")},
                        {SL_STR_LIT("Cache-Control"), SL_STR_LIT("max-age=1")},
                        {SL_STR_LIT("X-Kept"), SL_STR_LIT("yes")}};
    sl_cache_obj_t *o =
        sl_cache_obj_create(SL_STR_LIT("r"), 1, SL_STR_LIT("h\n/"), SL_STR_NULL, SL_STR_NULL, &m, h, 3, 5);
    assert_int_equal(sl_cache_obj_append(o, "hello", 5, 100), 0);
    sl_header_t u[1] = {{SL_STR_LIT("cache-control"), SL_STR_LIT("max-age=60")}};
    sl_cache_meta_t m2 = {.status = 200, .lifetime = 60};
    sl_cache_obj_t *r = sl_cache_obj_refresh(o, u, 1, &m2);
    sl_cache_obj_unref(o);
    assert_int_equal(r->nheaders, 3);
    assert_int_equal(r->meta.lifetime, 60);
    assert_true(sl_str_eq(r->etag, SL_STR_LIT("\"1\"")));
    int cc = 0;
    for (size_t i = 0; i < r->nheaders; i++)
        if (sl_str_caseeq(r->headers[i].name, SL_STR_LIT("Cache-Control"))) {
            cc++;
            assert_true(sl_str_eq(r->headers[i].value, SL_STR_LIT("max-age=60")));
        }
    assert_int_equal(cc, 1);
    assert_int_equal(r->body_len, 5);
    assert_memory_equal(r->body, "hello", 5);
    sl_cache_obj_unref(r);
}

static void test_purge_and_retain(void **state)
{
    (void)state;
    sl_cache_t *c = sl_cache_create(16u << 20);
    const char *keys[] = {"a\n/x", "b\n/x", "a\n/y", "a\n/x?q=1"};
    for (int t = 1; t <= 2; t++)
        for (size_t i = 0; i < 4; i++) {
            sl_cache_obj_t *o =
                make((uint64_t)t, t == 1 ? "one" : "two", sl_str_from_cstr(keys[i]), SL_STR_NULL, SL_STR_NULL, 10, 1);
            sl_cache_insert(c, o, 8);
            sl_cache_obj_unref(o);
        }
    assert_int_equal(sl_cache_purge(c, SL_STR_LIT("one"), SL_STR_LIT("/x")), 2); /* both hosts, not the query */
    assert_int_equal(sl_cache_purge(c, SL_STR_NULL, SL_STR_LIT("/x?q=1")), 2);
    assert_int_equal(sl_cache_purge(c, SL_STR_LIT("nope"), SL_STR_NULL), 0);
    uint64_t keep = 2;
    assert_int_equal(sl_cache_retain(c, &keep, 1), 1); /* route one's /y */
    assert_int_equal(sl_cache_purge(c, SL_STR_NULL, SL_STR_NULL), 3);
    sl_cache_stats_t st;
    sl_cache_stats(c, &st);
    assert_int_equal(st.objects, 0);
    sl_cache_unref(c);
}

static void test_locks(void **state)
{
    (void)state;
    sl_cache_t *c = sl_cache_create(1u << 20);
    sl_str_t k = SL_STR_LIT("h\n/l");
    uint64_t h = sl_cache_hash(3, k);
    assert_int_equal(sl_cache_lock(c, 3, h, k, 1000, 500), SL_CACHE_LOCK_TAKEN);
    assert_int_equal(sl_cache_lock(c, 3, h, k, 1100, 500), SL_CACHE_LOCK_BUSY);
    assert_int_equal(sl_cache_lock(c, 4, sl_cache_hash(4, k), k, 1100, 500), SL_CACHE_LOCK_TAKEN);
    /* an expired holder is taken over */
    assert_int_equal(sl_cache_lock(c, 3, h, k, 1600, 500), SL_CACHE_LOCK_TAKEN);
    sl_cache_unlock(c, 3, h, k, 1700, 0);
    assert_int_equal(sl_cache_lock(c, 3, h, k, 1700, 500), SL_CACHE_LOCK_TAKEN);
    /* not storable: a pass marker for a while, then a lock again */
    sl_cache_unlock(c, 3, h, k, 1800, 300);
    assert_int_equal(sl_cache_lock(c, 3, h, k, 1900, 500), SL_CACHE_LOCK_PASS);
    assert_int_equal(sl_cache_lock(c, 3, h, k, 2200, 500), SL_CACHE_LOCK_TAKEN);
    sl_cache_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_vary),
        cmocka_unit_test(test_lookup_with_variants),
        cmocka_unit_test(test_budget_and_scan_resistance),
        cmocka_unit_test(test_append_limit),
        cmocka_unit_test(test_refresh_merges_headers),
        cmocka_unit_test(test_purge_and_retain),
        cmocka_unit_test(test_locks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
