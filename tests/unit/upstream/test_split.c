/*
 * Traffic splitting: shares of weighted random picks against the weights, stickiness by IP,
 * header and cookie (same key, same upstream; keys spread like the weights), drained (weight 0)
 * entries, and the random fallback when the sticky key is absent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "upstream/split.h"

#define N 100000

typedef struct fixture {
    sl_route_conf_t route;
    sl_route_split_conf_t split[SL_ROUTE_SPLIT_MAX];
    sl_exchange_t x;
    sl_header_t headers[4];
} fixture_t;

/* Entry i goes to upstream index 10 + i, so a mix-up with the entry index shows. */
static void setup(fixture_t *f, const uint32_t *weights, size_t n)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        f->split[i].upstream_index = 10 + i;
        f->split[i].weight = weights[i];
    }
    f->route.split = f->split;
    f->route.nsplit = n;
    f->route.upstream_index = 10;
    f->x.req_headers.items = f->headers;
    f->x.req_headers.cap = 4;
}

static void set_header(fixture_t *f, const char *name, const char *value)
{
    f->headers[0] = (sl_header_t){sl_str_from_cstr(name), sl_str_from_cstr(value)};
    f->x.req_headers.len = 1;
}

static void assert_share(size_t got, size_t total, uint32_t weight, uint32_t wsum)
{
    double share = (double)got / (double)total, want = (double)weight / (double)wsum;
    if (share < want - 0.03 || share > want + 0.03)
        fail_msg("share %.4f, want %.4f +- 0.03", share, want);
}

static void test_random_shares(void **state)
{
    static const uint32_t w[] = {90, 10, 0, 300};
    fixture_t f;
    setup(&f, w, 4);
    size_t count[4] = {0};
    uint64_t rng = 0; /* 0 must work too */
    for (size_t i = 0; i < N; i++) {
        size_t u = sl_split_pick(&f.route, &f.x, &rng);
        assert_in_range(u, 10, 13);
        count[u - 10]++;
    }
    for (size_t i = 0; i < 4; i++)
        assert_share(count[i], N, w[i], 400);
    assert_int_equal(count[2], 0); /* drained */
}

static void test_single_and_drained(void **state)
{
    fixture_t f;
    static const uint32_t one[] = {7};
    setup(&f, one, 1);
    uint64_t rng = 42;
    for (size_t i = 0; i < 1000; i++)
        assert_int_equal(sl_split_pick(&f.route, &f.x, &rng), 10);
    /* Blue-green switch-over: everything on the second upstream, random and sticky. */
    static const uint32_t flip[] = {0, 100};
    setup(&f, flip, 2);
    for (size_t i = 0; i < 1000; i++)
        assert_int_equal(sl_split_pick(&f.route, &f.x, &rng), 11);
    f.route.sticky = SL_HASH_ON_HEADER;
    f.route.sticky_name = SL_STR_LIT("X-User");
    for (size_t i = 0; i < 1000; i++) {
        char key[32];
        snprintf(key, sizeof(key), "user-%zu", i);
        set_header(&f, "x-user", key);
        assert_int_equal(sl_split_pick(&f.route, &f.x, &rng), 11);
    }
}

/* Each of N keys picked several times (with rng moving between): always the same upstream,
 * and the keys spread per the weights. */
static void check_sticky(fixture_t *f, void (*set_key)(fixture_t *, size_t, char *, size_t), const uint32_t *w,
                         size_t n, uint32_t wsum)
{
    size_t count[SL_ROUTE_SPLIT_MAX] = {0};
    uint64_t rng = 1;
    char buf[128];
    for (size_t k = 0; k < N; k++) {
        set_key(f, k, buf, sizeof(buf));
        size_t first = sl_split_pick(&f->route, &f->x, &rng);
        for (int again = 0; again < 3; again++)
            assert_int_equal(sl_split_pick(&f->route, &f->x, &rng), first);
        count[first - 10]++;
    }
    for (size_t i = 0; i < n; i++)
        assert_share(count[i], N, w[i], wsum);
}

static void key_header(fixture_t *f, size_t k, char *buf, size_t size)
{
    snprintf(buf, size, "user-%zu", k);
    set_header(f, "X-User", buf);
}

static void key_ip(fixture_t *f, size_t k, char *buf, size_t size)
{
    snprintf(f->x.client_ip, sizeof(f->x.client_ip), "10.%zu.%zu.%zu", (k >> 16) & 255, (k >> 8) & 255, k & 255);
}

static void key_cookie(fixture_t *f, size_t k, char *buf, size_t size)
{
    /* The wanted cookie in the second Cookie field, after others with similar names. */
    snprintf(buf, size, "sid=%zu; xsession=1; session=s%zu; other=2", k, k * 7);
    f->headers[0] = (sl_header_t){SL_STR_LIT("Cookie"), SL_STR_LIT("theme=dark; session2=x")};
    f->headers[1] = (sl_header_t){SL_STR_LIT("cookie"), sl_str_from_cstr(buf)};
    f->x.req_headers.len = 2;
}

static void test_sticky_header(void **state)
{
    static const uint32_t w[] = {80, 20};
    fixture_t f;
    setup(&f, w, 2);
    f.route.sticky = SL_HASH_ON_HEADER;
    f.route.sticky_name = SL_STR_LIT("x-user"); /* header names are case-insensitive */
    check_sticky(&f, key_header, w, 2, 100);
}

static void test_sticky_ip(void **state)
{
    static const uint32_t w[] = {50, 0, 30, 20};
    fixture_t f;
    setup(&f, w, 4);
    f.route.sticky = SL_HASH_ON_IP;
    check_sticky(&f, key_ip, w, 4, 100);
}

static void test_sticky_cookie(void **state)
{
    static const uint32_t w[] = {1, 1, 1};
    fixture_t f;
    setup(&f, w, 3);
    f.route.sticky = SL_HASH_ON_COOKIE;
    f.route.sticky_name = SL_STR_LIT("session");
    check_sticky(&f, key_cookie, w, 3, 3);

    char buf[128];
    key_cookie(&f, 5, buf, sizeof(buf));
    sl_str_t k = sl_split_key(&f.route, &f.x);
    assert_int_equal(k.len, 3);
    assert_memory_equal(k.ptr, "s35", 3);
}

/* Raising the canary's weight moves keys only towards the canary, never away from it. */
static void test_sticky_monotonic(void **state)
{
    static const uint32_t before[] = {90, 10}, after[] = {80, 20};
    fixture_t a, b;
    setup(&a, before, 2);
    setup(&b, after, 2);
    a.route.sticky = b.route.sticky = SL_HASH_ON_HEADER;
    a.route.sticky_name = b.route.sticky_name = SL_STR_LIT("X-User");
    uint64_t rng = 0;
    char buf[64];
    for (size_t k = 0; k < 10000; k++) {
        key_header(&a, k, buf, sizeof(buf));
        key_header(&b, k, buf, sizeof(buf));
        if (sl_split_pick(&a.route, &a.x, &rng) == 11)
            assert_int_equal(sl_split_pick(&b.route, &b.x, &rng), 11);
    }
}

static void test_absent_key_falls_back_to_random(void **state)
{
    static const uint32_t w[] = {70, 30};
    fixture_t f;
    setup(&f, w, 2);
    f.route.sticky = SL_HASH_ON_HEADER;
    f.route.sticky_name = SL_STR_LIT("X-User");
    set_header(&f, "X-Other", "same-for-everyone");
    size_t count[2] = {0};
    uint64_t rng = 99;
    for (size_t i = 0; i < N; i++)
        count[sl_split_pick(&f.route, &f.x, &rng) - 10]++;
    assert_share(count[0], N, 70, 100);
    assert_share(count[1], N, 30, 100);

    /* An empty value is treated as absent, not as one shared key. */
    set_header(&f, "X-User", "");
    memset(count, 0, sizeof(count));
    for (size_t i = 0; i < N; i++)
        count[sl_split_pick(&f.route, &f.x, &rng) - 10]++;
    assert_share(count[1], N, 30, 100);

    /* Same for a cookie route without the cookie, and an IP route without an address. */
    f.route.sticky = SL_HASH_ON_COOKIE;
    f.route.sticky_name = SL_STR_LIT("session");
    set_header(&f, "Cookie", "sessionx=1; a=session");
    assert_int_equal(sl_split_key(&f.route, &f.x).len, 0);
    f.route.sticky = SL_HASH_ON_IP;
    memset(count, 0, sizeof(count));
    for (size_t i = 0; i < N; i++)
        count[sl_split_pick(&f.route, &f.x, &rng) - 10]++;
    assert_share(count[1], N, 30, 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_shares),
        cmocka_unit_test(test_single_and_drained),
        cmocka_unit_test(test_sticky_header),
        cmocka_unit_test(test_sticky_ip),
        cmocka_unit_test(test_sticky_cookie),
        cmocka_unit_test(test_sticky_monotonic),
        cmocka_unit_test(test_absent_key_falls_back_to_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
