/*
 * Unit tests of the router: every precedence rule of router.h (host groups, path kinds, config
 * order, methods, header matches), path rewriting, compile errors, a 10,000-route table, and
 * matching from several threads at once. Configs are built by hand so the tests do not depend on
 * the YAML loader.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/bug.h"
#include "common/error.h"
#include "router/internal.h"
#include "router/router.h"

#define S(lit)     SL_STR_LIT(lit)
#define M(m)       SL_METHOD_BIT(SL_METHOD_##m)
#define HOSTS(...) .hosts = (sl_str_t[]){__VA_ARGS__}, .nhosts = sizeof((sl_str_t[]){__VA_ARGS__}) / sizeof(sl_str_t)
#define HDRS(...)                                                                                                      \
    .headers = (sl_header_match_conf_t[]){__VA_ARGS__},                                                                \
    .nheaders = sizeof((sl_header_match_conf_t[]){__VA_ARGS__}) / sizeof(sl_header_match_conf_t)
#define HM(n, k, v) ((sl_header_match_conf_t){.name = S(n), .kind = SL_HEADER_MATCH_##k, .value = S(v)})
#define H(n, v)     ((sl_header_t){.name = S(n), .value = S(v)})

#define BUILD(cfg, routes) build(&(cfg), (routes), SL_ARRAY_SIZE(routes))

/* sl_config_errors_dispose without linking the loader. */
static void errs_dispose(sl_config_errors_t *errs)
{
    free(errs->items);
    if (errs->strings.chunk_size != 0)
        sl_arena_dispose(&errs->strings);
}

static sl_router_t *build(sl_config_t *cfg, sl_route_conf_t *routes, size_t n)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->path = S("test.yaml");
    cfg->routes = routes;
    cfg->nroutes = n;
    sl_config_errors_t errs = {0};
    sl_router_t *r = NULL;
    int rc = sl_router_create(cfg, &r, &errs);
    for (size_t i = 0; i < errs.count; i++)
        fprintf(stderr, "unexpected error: %u:%u: %s\n", errs.items[i].line, errs.items[i].col, errs.items[i].message);
    assert_int_equal(rc, 0);
    assert_int_equal(errs.count, 0);
    assert_non_null(r);
    errs_dispose(&errs);
    return r;
}

static sl_router_result_t match_h(const sl_router_t *r, enum sl_method method, const char *host, const char *path,
                                  const sl_header_t *headers, size_t nheaders)
{
    sl_router_input_t in = {
        .host = sl_str_from_cstr(host),
        .path = sl_str_from_cstr(path),
        .method = method,
        .method_token = S("PURGE"),
        .headers = headers,
        .nheaders = nheaders,
    };
    sl_router_result_t res;
    memset(&res, 0xa5, sizeof(res));
    sl_router_match(r, &in, &res);
    return res;
}

static sl_router_result_t match(const sl_router_t *r, enum sl_method method, const char *host, const char *path)
{
    return match_h(r, method, host, path, NULL, 0);
}

#define GET SL_METHOD_GET

#define assert_route(res, idx)                                                                                         \
    do {                                                                                                               \
        sl_router_result_t res_ = (res);                                                                               \
        assert_int_equal(res_.status, SL_ROUTER_MATCHED);                                                              \
        assert_int_equal(res_.route_index, (idx));                                                                     \
    } while (0)
#define assert_not_found(res) assert_int_equal((res).status, SL_ROUTER_NOT_FOUND)
#define assert_not_allowed(res, allowed)                                                                               \
    do {                                                                                                               \
        sl_router_result_t res_ = (res);                                                                               \
        assert_int_equal(res_.status, SL_ROUTER_METHOD_NOT_ALLOWED);                                                   \
        assert_int_equal(res_.allowed_methods, (allowed));                                                             \
    } while (0)

/* ---- hosts --------------------------------------------------------------------------------- */

static void test_host_precedence(void **state)
{
    /* Listed least specific first, so config order cannot produce the expected answers. */
    sl_route_conf_t routes[] = {
        {.name = S("any"), .match = {.path_prefix = S("/")}},
        {.name = S("wild"), .match = {HOSTS(S("*.example.com")), .path_prefix = S("/")}},
        {.name = S("exact"), .match = {HOSTS(S("api.example.com")), .path_prefix = S("/")}},
        {.name = S("wild-longer"), .match = {HOSTS(S("*.api.example.com")), .path_prefix = S("/")}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, GET, "api.example.com", "/x"), 2);
    assert_route(match(r, GET, "www.example.com", "/x"), 1);
    assert_route(match(r, GET, "v1.api.example.com", "/x"), 3);
    assert_route(match(r, GET, "a.b.v1.api.example.com", "/x"), 3);
    assert_route(match(r, GET, "a.b.example.com", "/x"), 1);
    assert_route(match(r, GET, "example.com", "/x"), 0);
    assert_route(match(r, GET, "other.org", "/x"), 0);
    assert_route(match(r, GET, "", "/x"), 0);
    sl_router_destroy(r);
}

static void test_host_case_insensitive(void **state)
{
    /* The loader lowercases hosts; the router must not rely on it. */
    sl_route_conf_t routes[] = {
        {.match = {HOSTS(S("Api.Example.COM")), .path_prefix = S("/")}},
        {.match = {HOSTS(S("*.Shop.Example")), .path_prefix = S("/")}},
        {.match = {HOSTS(S("a-very-long-host-name-over-eight-bytes.example.com")), .path_prefix = S("/")}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, GET, "api.example.com", "/"), 0);
    assert_route(match(r, GET, "API.EXAMPLE.COM", "/"), 0);
    assert_route(match(r, GET, "aPi.eXaMpLe.CoM", "/"), 0);
    assert_route(match(r, GET, "www.shop.example", "/"), 1);
    assert_route(match(r, GET, "WWW.SHOP.EXAMPLE", "/"), 1);
    assert_route(match(r, GET, "A-VERY-LONG-HOST-NAME-OVER-EIGHT-BYTES.EXAMPLE.COM", "/"), 2);
    /* Folding is ASCII letters only: '@' and '[' border 'A'..'Z' but are no letters. */
    assert_not_found(match(r, GET, "api.example.co@", "/"));
    assert_not_found(match(r, GET, "api.example.co`", "/"));
    sl_router_destroy(r);
}

static void test_wildcard_not_bare_domain(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {HOSTS(S("*.example.com"))}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, GET, "x.example.com", "/"), 0);
    assert_route(match(r, GET, "x.y.z.example.com", "/"), 0);
    assert_not_found(match(r, GET, "example.com", "/"));
    assert_not_found(match(r, GET, ".example.com", "/"));
    assert_not_found(match(r, GET, "xexample.com", "/"));
    assert_not_found(match(r, GET, "x.example.com.evil", "/"));
    assert_not_found(match(r, GET, "x.example.co", "/"));
    assert_not_found(match(r, GET, "com", "/"));
    sl_router_destroy(r);
}

static void test_group_fallback(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {HOSTS(S("api.example.com")), .path_prefix = S("/users")}},
        {.match = {HOSTS(S("*.example.com")), .path_prefix = S("/orders")}},
        {.match = {.path_exact = S("/health")}},
        {.match = {HOSTS(S("api.example.com")), .path_exact = S("/only-get"), .methods = M(GET)}},
        {.match = {.path_prefix = S("/only-get")}},
        {.match = {HOSTS(S("*.example.com")), .path_exact = S("/wild-get"), .methods = M(GET)}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, GET, "api.example.com", "/users/1"), 0);
    assert_route(match(r, GET, "api.example.com", "/orders/1"), 1);
    assert_route(match(r, GET, "api.example.com", "/health"), 2);
    assert_route(match(r, GET, "www.example.com", "/health"), 2);
    assert_not_found(match(r, GET, "www.example.com", "/users/1"));
    assert_not_found(match(r, GET, "api.example.com", "/nothing"));
    /* A group whose path matched but whose method did not still falls back. */
    assert_route(match(r, GET, "api.example.com", "/only-get"), 3);
    assert_route(match(r, SL_METHOD_POST, "api.example.com", "/only-get"), 4);
    /* ... and says 405 only when no group accepts the request. */
    assert_route(match(r, GET, "api.example.com", "/wild-get"), 5);
    assert_not_allowed(match(r, SL_METHOD_POST, "api.example.com", "/wild-get"), M(GET) | M(HEAD));
    sl_router_destroy(r);
}

/* ---- paths --------------------------------------------------------------------------------- */

static void test_path_precedence(void **state)
{
    sl_route_conf_t routes[] = {
        {.name = S("regex-a"), .match = {.path_regex = S("^/a")}},
        {.name = S("any"), .match = {0}},
        {.name = S("prefix-a"), .match = {.path_prefix = S("/a")}},
        {.name = S("prefix-ab"), .match = {.path_prefix = S("/a/b")}},
        {.name = S("exact-abc"), .match = {.path_exact = S("/a/b/c")}},
        {.name = S("regex-z"), .match = {.path_regex = S("^/z")}},
        {.name = S("regex-zy"), .match = {.path_regex = S("^/z/y")}},
        {.name = S("regex-r"), .match = {.path_regex = S("^/r[0-9]+$")}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, GET, "h", "/a/b/c"), 4);
    assert_route(match(r, GET, "h", "/a/b/c/d"), 3);
    assert_route(match(r, GET, "h", "/a/b/"), 3);
    assert_route(match(r, GET, "h", "/a/b"), 3);
    assert_route(match(r, GET, "h", "/a/x"), 2);
    assert_route(match(r, GET, "h", "/a"), 2);
    assert_route(match(r, GET, "h", "/ab"), 2);  /* byte prefix, not a segment prefix */
    assert_route(match(r, GET, "h", "/z/y"), 5); /* regexes in config order */
    assert_route(match(r, GET, "h", "/r12"), 7);
    assert_route(match(r, GET, "h", "/r12x"), 1);
    assert_route(match(r, GET, "h", "/"), 1);
    assert_route(match(r, GET, "h", ""), 1);
    sl_router_destroy(r);
}

static void test_exact_path_is_case_sensitive(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {.path_exact = S("/Users")}},
        {.match = {.path_prefix = S("/Pre")}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, GET, "h", "/Users"), 0);
    assert_not_found(match(r, GET, "h", "/users"));
    assert_not_found(match(r, GET, "h", "/Users/"));
    assert_route(match(r, GET, "h", "/Prefix"), 1);
    assert_not_found(match(r, GET, "h", "/pre"));
    sl_router_destroy(r);
}

static void test_prefix_fallback_on_method_and_headers(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {.path_prefix = S("/")}},
        {.match = {.path_prefix = S("/api"), .methods = M(GET)}},
        {.match = {.path_prefix = S("/api/v1"), .methods = M(POST)}},
        {.match = {.path_prefix = S("/api/v1/users"), .methods = M(PUT), HDRS(HM("X-Beta", PRESENT, ""))}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    sl_header_t beta[] = {H("x-beta", "1")};
    assert_route(match_h(r, SL_METHOD_PUT, "h", "/api/v1/users/7", beta, 1), 3);
    assert_route(match(r, SL_METHOD_PUT, "h", "/api/v1/users/7"), 0);
    assert_route(match(r, SL_METHOD_POST, "h", "/api/v1/users/7"), 2);
    assert_route(match(r, GET, "h", "/api/v1/users/7"), 1);
    assert_route(match(r, SL_METHOD_DELETE, "h", "/api/v1/users/7"), 0);
    sl_router_destroy(r);
}

static void test_trie_internals(void **state)
{
    sl_arena_t a;
    sl_arena_init(&a, 4096);
    sl__router_trie_t t = {0};
    /* Inserted in an order that forces edge splits above existing nodes. */
    const char *prefixes[] = {"/abc", "/a", "/abd", "/ab", "/b", "", "/abcdef"};
    for (uint32_t i = 0; i < SL_ARRAY_SIZE(prefixes); i++)
        sl__router_list_push(sl__router_trie_insert(&t, sl_str_from_cstr(prefixes[i]), &a), i, &a);
    /* 100 siblings take the binary-search path of the child lookup. */
    char keys[100][8];
    for (uint32_t i = 0; i < 100; i++) {
        snprintf(keys[i], sizeof(keys[i]), "/k%c", (char)(' ' + i));
        sl__router_list_push(sl__router_trie_insert(&t, sl_str_from_cstr(keys[i]), &a), 1000 + i, &a);
    }
    sl__router_trie_finish(&t);
    /* A route naming the same host twice lands in a list once. */
    sl__router_list_t dup = {0};
    sl__router_list_push(&dup, 7, &a);
    sl__router_list_push(&dup, 7, &a);
    sl__router_list_push(&dup, 8, &a);
    sl__router_list_push(&dup, 9, &a);
    sl__router_list_push(&dup, 9, &a);
    sl__router_list_push(&dup, 10, &a);
    assert_int_equal(dup.n, 4);
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(sl__router_list_items(&dup)[i], 7 + i);

    static const struct {
        const char *path;
        int chain[8];
    } cases[] = {
        {"/abcdefg", {6, 0, 3, 1, 5, -1}},
        {"/abx", {3, 1, 5, -1}},
        {"/abd", {2, 3, 1, 5, -1}},
        {"/b", {4, 5, -1}},
        {"x", {5, -1}},
        {"", {5, -1}},
        {"/abcde", {0, 3, 1, 5, -1}},
    };
    for (size_t c = 0; c < SL_ARRAY_SIZE(cases); c++) {
        const sl__router_trie_node_t *n = sl__router_trie_longest(&t, cases[c].path, strlen(cases[c].path));
        for (int k = 0; cases[c].chain[k] >= 0; k++, n = n->up) {
            assert_non_null(n);
            assert_int_equal(n->routes.n, 1);
            assert_int_equal(sl__router_list_items(&n->routes)[0], cases[c].chain[k]);
        }
        assert_null(n);
    }
    for (uint32_t i = 0; i < 100; i++) {
        char path[32];
        snprintf(path, sizeof(path), "%.7s/more", keys[i]);
        const sl__router_trie_node_t *n = sl__router_trie_longest(&t, path, strlen(path));
        assert_non_null(n);
        assert_int_equal(sl__router_list_items(&n->routes)[0], 1000 + i);
        assert_int_equal(sl__router_list_items(&n->up->routes)[0], 5);
    }
    sl_arena_dispose(&a);
}

static void test_hash_folds_ascii_letters_only(void **state)
{
    const char *lower = "abcdefghijklmnopqrstuvwxyz0123456789.-_@[`{";
    const char *upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@[`{";
    for (size_t len = 0; len <= strlen(lower); len++) {
        assert_true(sl__router_hash(lower, len, true) == sl__router_hash(upper, len, true));
        if (len > 0)
            assert_true(sl__router_hash(lower, len, false) != sl__router_hash(upper, len, false));
    }
    /* Neighbours of the letter ranges and bytes with the high bit set stay as they are. */
    assert_true(sl__router_hash("@", 1, true) != sl__router_hash("`", 1, true));
    assert_true(sl__router_hash("[", 1, true) != sl__router_hash("{", 1, true));
    assert_true(sl__router_hash("\xc1", 1, true) != sl__router_hash("\xe1", 1, true));
    assert_true(sl__router_hash("abcdefgh\xc1", 9, true) != sl__router_hash("abcdefgh\xe1", 9, true));
}

/* ---- config order, methods, headers --------------------------------------------------------- */

static void test_config_order_ties(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {HOSTS(S("a.com")), .path_prefix = S("/p"), HDRS(HM("X-A", EXACT, "1"))}},
        {.match = {HOSTS(S("a.com"), S("b.com"), S("a.com")), .path_prefix = S("/p")}},
        {.match = {HOSTS(S("a.com")), .path_prefix = S("/p")}},
        {.match = {HOSTS(S("b.com")), .path_exact = S("/e")}},
        {.match = {HOSTS(S("b.com")), .path_exact = S("/e")}},
        {.match = {.path_regex = S("^/r")}},
        {.match = {.path_regex = S("^/r")}},
        {.match = {0}},
        {.match = {0}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    sl_header_t xa[] = {H("X-A", "1")};
    assert_route(match_h(r, GET, "a.com", "/p", xa, 1), 0);
    assert_route(match(r, GET, "a.com", "/p"), 1);
    assert_route(match(r, GET, "b.com", "/p"), 1);
    assert_route(match(r, GET, "b.com", "/e"), 3);
    assert_route(match(r, GET, "b.com", "/r"), 5);
    assert_route(match(r, GET, "b.com", "/x"), 7);
    sl_router_destroy(r);
}

static void test_get_implies_head(void **state)
{
    (void)state;
    /* RFC 9110 §9.3.2: HEAD is GET without the body; nothing else is implied. */
    sl_route_conf_t routes[] = {
        {.match = {.path_exact = S("/g"), .methods = M(GET)}},
        {.match = {.path_exact = S("/p"), .methods = M(POST)}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    assert_route(match(r, SL_METHOD_HEAD, "h", "/g"), 0);
    assert_not_allowed(match(r, SL_METHOD_POST, "h", "/g"), M(GET) | M(HEAD));
    assert_not_allowed(match(r, SL_METHOD_HEAD, "h", "/p"), M(POST));
    sl_router_destroy(r);
}

static void test_methods(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {.path_exact = S("/m"), .methods = M(GET) | M(HEAD)}},
        {.match = {.path_exact = S("/m"), .methods = M(POST), HDRS(HM("X-Need", PRESENT, ""))}},
        {.match = {.path_exact = S("/m"), .methods = M(DELETE), HDRS(HM("X-Need", ABSENT, ""))}},
        {.match = {.path_exact = S("/any")}},
        {.match = {.path_regex = S("^/re/"), .methods = M(PATCH)}},
        {.match = {.path_regex = S("^/other/"), .methods = M(OPTIONS)}},
        {.match = {HOSTS(S("h.example")), .path_prefix = S("/h"), .methods = M(PUT)}},
        {.match = {.path_prefix = S("/h/x"), .methods = M(TRACE)}},
        {.match = {.path_exact = S("/ext"), .methods = M(OTHER)}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    sl_header_t need[] = {H("X-Need", "1")};

    assert_route(match(r, GET, "h", "/m"), 0);
    assert_route(match(r, SL_METHOD_HEAD, "h", "/m"), 0);
    assert_route(match_h(r, SL_METHOD_POST, "h", "/m", need, 1), 1);
    assert_route(match(r, SL_METHOD_DELETE, "h", "/m"), 2);
    /* Only routes whose headers pass contribute their methods to the Allow set. */
    assert_not_allowed(match(r, SL_METHOD_PUT, "h", "/m"), M(GET) | M(HEAD) | M(DELETE));
    assert_not_allowed(match_h(r, SL_METHOD_PUT, "h", "/m", need, 1), M(GET) | M(HEAD) | M(POST));
    assert_not_allowed(match(r, SL_METHOD_OTHER, "h", "/m"), M(GET) | M(HEAD) | M(DELETE));
    assert_not_found(match(r, SL_METHOD_PUT, "h", "/nothing"));
    assert_route(match(r, SL_METHOD_OTHER, "h", "/any"), 3);
    assert_route(match(r, SL_METHOD_CONNECT, "h", "/any"), 3);
    /* A regex route refusing the method counts only when its regex matched the path. */
    assert_not_allowed(match(r, GET, "h", "/re/1"), M(PATCH));
    assert_route(match(r, SL_METHOD_PATCH, "h", "/re/1"), 4);
    assert_not_found(match(r, GET, "h", "/nope/1"));

    /* The union spans host groups and prefixes. */
    assert_not_allowed(match(r, GET, "h.example", "/h/x/1"), M(PUT) | M(TRACE));
    assert_route(match(r, SL_METHOD_TRACE, "h.example", "/h/x/1"), 7);
    assert_route(match(r, SL_METHOD_OTHER, "h", "/ext"), 8);
    assert_not_allowed(match(r, GET, "h", "/ext"), M(OTHER));
    sl_router_destroy(r);
}

static void test_header_matches(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {.path_exact = S("/h"), HDRS(HM("X-Env", EXACT, "prod"))}},
        {.match = {.path_exact = S("/h"), HDRS(HM("X-Debug", PRESENT, ""), HM("X-Block", ABSENT, ""))}},
        {.match = {.path_exact = S("/h"), HDRS(HM("User-Agent", REGEX, "^curl/[0-9]"))}},
        {.match = {.path_exact = S("/h")}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);

    sl_header_t env[] = {H("X-Env", "prod")};
    sl_header_t env_lower_name[] = {H("x-env", "prod")};
    sl_header_t env_upper_value[] = {H("X-ENV", "Prod")};
    sl_header_t env_prefix_value[] = {H("X-Env", "production")};
    sl_header_t env_repeated[] = {H("X-Env", "dev"), H("Other", "prod"), H("X-ENV", "prod")};
    assert_route(match_h(r, GET, "h", "/h", env, 1), 0);
    assert_route(match_h(r, GET, "h", "/h", env_lower_name, 1), 0);
    assert_route(match_h(r, GET, "h", "/h", env_upper_value, 1), 3);
    assert_route(match_h(r, GET, "h", "/h", env_prefix_value, 1), 3);
    assert_route(match_h(r, GET, "h", "/h", env_repeated, 3), 0);

    sl_header_t debug[] = {H("x-debug", "")};
    sl_header_t debug_block[] = {H("X-Debug", "1"), H("x-BLOCK", "1")};
    sl_header_t block_debug[] = {H("X-Block", "1"), H("X-Debug", "1")};
    assert_route(match_h(r, GET, "h", "/h", debug, 1), 1);
    assert_route(match_h(r, GET, "h", "/h", debug_block, 2), 3);
    assert_route(match_h(r, GET, "h", "/h", block_debug, 2), 3);

    sl_header_t ua[] = {H("user-agent", "curl/8.5")};
    sl_header_t ua_browser[] = {H("User-Agent", "Mozilla/5.0 curl/8")};
    sl_header_t ua_repeated[] = {H("User-Agent", "Mozilla/5.0"), H("USER-AGENT", "curl/7")};
    assert_route(match_h(r, GET, "h", "/h", ua, 1), 2);
    assert_route(match_h(r, GET, "h", "/h", ua_browser, 1), 3);
    assert_route(match_h(r, GET, "h", "/h", ua_repeated, 2), 2);

    assert_route(match(r, GET, "h", "/h"), 3);
    sl_router_destroy(r);
}

/* ---- rewriting ----------------------------------------------------------------------------- */

static void assert_rewrite(const sl_router_t *r, size_t idx, const char *path, const char *want)
{
    sl_arena_t a;
    sl_arena_init(&a, 1024);
    sl_str_t in = sl_str_from_cstr(path), out = SL_STR_NULL;
    assert_int_equal(sl_router_rewrite_path(r, idx, in, &a, &out), 0);
    if (out.len != strlen(want) || memcmp(out.ptr, want, out.len) != 0)
        fail_msg("rewrite of %s: got \"%.*s\", want \"%s\"", path, SL_STR_FMT(out), want);
    sl_arena_dispose(&a);
}

static void test_rewrite(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {.path_prefix = S("/api")}, .strip_prefix = true},
        {.match = {.path_prefix = S("/v1")}, .rewrite_regex = S("^/v1/(.*)$"), .rewrite_replacement = S("/v2/$1")},
        {.match = {.path_prefix = S("/svc")},
         .strip_prefix = true,
         .rewrite_regex = S("^/(\\w+)/(\\w+)"),
         .rewrite_replacement = S("/${2}/$1")},
        {.match = {.path_prefix = S("/keep")}},
        {.match = {.path_prefix = S("/named")},
         .rewrite_regex = S("^/named/(?<id>[0-9]+)$"),
         .rewrite_replacement = S("/items/${id}?$$")},
        {.match = {.path_prefix = S("/nomatch")}, .rewrite_regex = S("^/zzz"), .rewrite_replacement = S("/q")},
        {.match = {.path_prefix = S("/big")}, .rewrite_regex = S("^/big/(.*)$"), .rewrite_replacement = S("/$1$1$1")},
        {.match = {.path_prefix = S("/opt")},
         .rewrite_regex = S("^/opt/(?:(a)|(b))$"),
         .rewrite_replacement = S("/[$1][$2]")},
        {.match = {.path_prefix = S("/del")},
         .strip_prefix = true,
         .rewrite_regex = S("^/x$"),
         .rewrite_replacement = S("")},
        {.match = {.path_prefix = S("/rel")}, .rewrite_regex = S("^/rel/(.*)$"), .rewrite_replacement = S("$1")},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);

    assert_rewrite(r, 0, "/api/users", "/users");
    assert_rewrite(r, 0, "/api", "/");
    assert_rewrite(r, 0, "/api/", "/");
    assert_rewrite(r, 0, "/apix", "/x");
    assert_rewrite(r, 0, "/apix/y", "/x/y");
    assert_rewrite(r, 1, "/v1/users/7", "/v2/users/7");
    assert_rewrite(r, 1, "/v1", "/v1");
    assert_rewrite(r, 2, "/svc/alpha/beta/gamma", "/beta/alpha/gamma");
    assert_rewrite(r, 4, "/named/42", "/items/42?$");
    assert_rewrite(r, 7, "/opt/a", "/[a][]");
    assert_rewrite(r, 7, "/opt/b", "/[][b]");
    /* A rewrite, like stripping, always leaves an absolute path. */
    assert_rewrite(r, 8, "/del/x", "/");
    assert_rewrite(r, 9, "/rel/abc", "/abc");

    sl_arena_t a;
    sl_arena_init(&a, 1024);
    /* Routes that change nothing hand back the very same slice. */
    static const char keep[] = "/keep/x";
    sl_str_t out = SL_STR_NULL;
    assert_int_equal(sl_router_rewrite_path(r, 3, S(keep), &a, &out), 0);
    assert_ptr_equal(out.ptr, keep);
    assert_int_equal(out.len, strlen(keep));
    static const char nomatch[] = "/nomatch/x";
    assert_int_equal(sl_router_rewrite_path(r, 5, S(nomatch), &a, &out), 0);
    assert_ptr_equal(out.ptr, nomatch);
    /* Stripping up to a '/' needs no copy. */
    static const char api[] = "/api/users";
    assert_int_equal(sl_router_rewrite_path(r, 0, S(api), &a, &out), 0);
    assert_ptr_equal(out.ptr, api + 4);

    /* 8 KiB is the bound on the result; `out` stays untouched past it. */
    char *path = malloc(8200);
    memcpy(path, "/big/", 5);
    memset(path + 5, 'x', 2730);
    sl_str_t fits = {path, 5 + 2730}; /* "/" + 3 * 2730 = 8191 bytes */
    assert_int_equal(sl_router_rewrite_path(r, 6, fits, &a, &out), 0);
    assert_int_equal(out.len, 8191);
    memset(path + 5, 'x', 2731);
    sl_str_t exact = {path, 5 + 2731}; /* 8194 bytes */
    sl_str_t sentinel = S("sentinel");
    out = sentinel;
    assert_int_equal(sl_router_rewrite_path(r, 6, exact, &a, &out), SL_ETOOBIG);
    assert_ptr_equal(out.ptr, sentinel.ptr);
    memcpy(path, "/api", 4);
    memset(path + 4, 'y', 8194);
    out = sentinel;
    assert_int_equal(sl_router_rewrite_path(r, 0, (sl_str_t){path, 4 + 8194}, &a, &out), SL_ETOOBIG);
    assert_ptr_equal(out.ptr, sentinel.ptr);
    free(path);
    sl_arena_dispose(&a);
    sl_router_destroy(r);
}

/* ---- compile errors ------------------------------------------------------------------------ */

static void test_create_errors(void **state)
{
    sl_route_conf_t routes[] = {
        {.name = S("ok"), .match = {.path_prefix = S("/")}, .pos = {1, 3}},
        {.name = S("bad-path-regex"), .match = {.path_regex = S("([a-z")}, .pos = {2, 3}},
        {.name = S("bad-header-regex"),
         .match = {.path_exact = S("/h"),
                   HDRS({.name = S("X-A"), .kind = SL_HEADER_MATCH_REGEX, .value = S("(?<"), .pos = {30, 9}})},
         .pos = {3, 3}},
        {.name = S("bad-rewrite-regex"), .rewrite_regex = S("*x"), .pos = {4, 3}},
        {.name = S("missing-group"), .rewrite_regex = S("^/(a)"), .rewrite_replacement = S("/$2"), .pos = {5, 3}},
        {.name = S("missing-brace"), .rewrite_regex = S("^/(a)"), .rewrite_replacement = S("/${1"), .pos = {6, 3}},
        {.name = S("lone-dollar"), .rewrite_regex = S("^/(a)"), .rewrite_replacement = S("/$"), .pos = {7, 3}},
        {.name = S("unknown-name"), .rewrite_regex = S("^/(?<a>a)"), .rewrite_replacement = S("$b"), .pos = {8, 3}},
        {.name = S("bad-host"), .match = {HOSTS(S("a.*.com"))}, .pos = {9, 3}},
        {.name = S("bare-star"), .match = {HOSTS(S("*."))}, .pos = {10, 3}},
        {.name = S("two-paths"), .match = {.path_exact = S("/a"), .path_prefix = S("/a")}, .pos = {11, 3}},
        {.name = S("good-replacements"),
         .rewrite_regex = S("^/(?<n>a)(b)?"),
         .rewrite_replacement = S("$$ $0 $1x ${2} $n ${n} $*MARK"),
         .pos = {12, 3}},
    };
    sl_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.path = S("routes.yaml");
    cfg.routes = routes;
    cfg.nroutes = SL_ARRAY_SIZE(routes);

    /* Errors are appended after what the loader may already have reported. */
    sl_config_errors_t errs = {0};
    errs.cap = 1;
    errs.items = sl_xcalloc(1, sizeof(*errs.items));
    errs.count = 1;
    snprintf(errs.items[0].message, sizeof(errs.items[0].message), "earlier");

    sl_router_t *sentinel = (sl_router_t *)&cfg, *r = sentinel;
    assert_int_equal(sl_router_create(&cfg, &r, &errs), SL_ECONFIG);
    assert_ptr_equal(r, sentinel);
    assert_string_equal(errs.items[0].message, "earlier");

    static const struct {
        uint32_t line, col;
        const char *text;
    } want[] = {
        {2, 3, "route \"bad-path-regex\": path_regex: "},
        {30, 9, "route \"bad-header-regex\": header regex: "},
        {4, 3, "route \"bad-rewrite-regex\": rewrite regex: "},
        {5, 3, "route \"missing-group\": rewrite replacement: '$2' refers to a group"},
        {6, 3, "route \"missing-brace\": rewrite replacement: missing '}'"},
        {7, 3, "route \"lone-dollar\": rewrite replacement: '$' at offset 2"},
        {8, 3, "route \"unknown-name\": rewrite replacement: '$b' refers to a group name"},
        {9, 3, "route \"bad-host\": host \"a.*.com\""},
        {10, 3, "route \"bare-star\": host \"*.\""},
        {11, 3, "route \"two-paths\": match: only one of"},
    };
    assert_int_equal(errs.count, 1 + SL_ARRAY_SIZE(want));
    for (size_t i = 0; i < SL_ARRAY_SIZE(want); i++) {
        const sl_config_error_t *e = &errs.items[1 + i];
        assert_true(sl_str_eq(e->file, S("routes.yaml")));
        assert_int_equal(e->line, want[i].line);
        assert_int_equal(e->col, want[i].col);
        if (strncmp(e->message, want[i].text, strlen(want[i].text)) != 0)
            fail_msg("error %zu: got \"%s\", want a message starting \"%s\"", i, e->message, want[i].text);
    }
    /* The errors keep their own copy of the file name. */
    assert_ptr_not_equal(errs.items[1].file.ptr, cfg.path.ptr);
    errs_dispose(&errs);

    /* Without the bad routes the same table compiles, "good-replacements" included. */
    sl_router_t *ok = build(&cfg, &routes[SL_ARRAY_SIZE(routes) - 1], 1);
    sl_router_destroy(ok);
}

static void test_empty_config(void **state)
{
    sl_config_t cfg;
    sl_router_t *r = build(&cfg, NULL, 0);
    assert_not_found(match(r, GET, "h", "/"));
    assert_not_found(match(r, GET, "", ""));
    sl_router_destroy(r);
}

/* ---- scale --------------------------------------------------------------------------------- */

static sl_str_t fmt(sl_arena_t *a, const char *f, ...) __attribute__((format(printf, 2, 3)));
static sl_str_t fmt(sl_arena_t *a, const char *f, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return (sl_str_t){sl_arena_strndup(a, buf, (size_t)n), (size_t)n};
}

#define NBIG 10000

/* Five kinds of route in turn; route NBIG is a shorter prefix under every "/pre/N/" one. */
static sl_route_conf_t *big_routes(sl_arena_t *a)
{
    sl_route_conf_t *routes = sl_xcalloc(NBIG + 1, sizeof(*routes));
    for (int i = 0; i < NBIG; i++) {
        sl_route_match_conf_t *m = &routes[i].match;
        routes[i].name = fmt(a, "r%d", i);
        switch (i % 5) {
        case 0:
            m->hosts = sl_arena_alloc(a, sizeof(sl_str_t));
            m->hosts[0] = fmt(a, "svc%d.example.com", i);
            m->nhosts = 1;
            m->path_prefix = fmt(a, "/api/%d/", i);
            break;
        case 1:
            m->hosts = sl_arena_alloc(a, sizeof(sl_str_t));
            m->hosts[0] = fmt(a, "*.t%d.example.org", i);
            m->nhosts = 1;
            m->path_exact = fmt(a, "/x/%d", i);
            break;
        case 2:
            m->path_exact = fmt(a, "/exact/%d", i);
            break;
        case 3:
            m->hosts = sl_arena_alloc(a, sizeof(sl_str_t));
            m->hosts[0] = fmt(a, "h%d.example.net", i);
            m->nhosts = 1;
            m->path_regex = fmt(a, "^/re/%d/[0-9]+$", i);
            break;
        case 4:
            m->path_prefix = fmt(a, "/pre/%d/", i);
            m->methods = M(GET);
            break;
        }
    }
    routes[NBIG].match.path_prefix = S("/pre/");
    routes[NBIG].match.methods = M(POST);
    return routes;
}

static void test_ten_thousand_routes(void **state)
{
    sl_arena_t a;
    sl_arena_init(&a, 64 * 1024);
    sl_route_conf_t *routes = big_routes(&a);
    sl_config_t cfg;
    sl_router_t *r = build(&cfg, routes, NBIG + 1);
    char host[64], path[64];
    for (int i = 0; i < NBIG; i += 7) {
        switch (i % 5) {
        case 0:
            snprintf(host, sizeof(host), "SVC%d.example.com", i);
            snprintf(path, sizeof(path), "/api/%d/users", i);
            assert_route(match(r, GET, host, path), i);
            snprintf(path, sizeof(path), "/api/%d", i);
            assert_not_found(match(r, GET, host, path));
            break;
        case 1:
            snprintf(host, sizeof(host), "a.b.t%d.example.org", i);
            snprintf(path, sizeof(path), "/x/%d", i);
            assert_route(match(r, GET, host, path), i);
            snprintf(host, sizeof(host), "t%d.example.org", i);
            assert_not_found(match(r, GET, host, path));
            break;
        case 2:
            snprintf(path, sizeof(path), "/exact/%d", i);
            assert_route(match(r, GET, "svc0.example.com", path), i);
            break;
        case 3:
            snprintf(host, sizeof(host), "h%d.example.net", i);
            snprintf(path, sizeof(path), "/re/%d/123", i);
            assert_route(match(r, GET, host, path), i);
            snprintf(path, sizeof(path), "/re/%d/abc", i);
            assert_not_found(match(r, GET, host, path));
            snprintf(path, sizeof(path), "/re/%d/123", i + 5);
            assert_not_found(match(r, GET, host, path));
            break;
        case 4:
            snprintf(path, sizeof(path), "/pre/%d/x", i);
            assert_route(match(r, GET, "any", path), i);
            assert_route(match(r, SL_METHOD_POST, "any", path), NBIG);
            assert_not_allowed(match(r, SL_METHOD_PUT, "any", path), M(GET) | M(HEAD) | M(POST));
            break;
        }
    }
    assert_not_found(match(r, GET, "unknown.example.com", "/nothing"));
    assert_not_found(match(r, GET, "svc5.example.com", "/api/0/"));
    sl_router_destroy(r);
    free(routes);
    sl_arena_dispose(&a);
}

/* ---- threads ------------------------------------------------------------------------------- */

typedef struct thread_arg {
    const sl_router_t *r;
    int id;
    int failures;
} thread_arg_t;

static void *thread_main(void *p)
{
    thread_arg_t *t = p;
    sl_arena_t a;
    sl_arena_init(&a, 4096);
    sl_header_t ua[] = {H("User-Agent", "curl/8")};
    for (int i = 0; i < 20000; i++) {
        sl_router_result_t res = match_h(t->r, GET, "h", (i + t->id) % 2 ? "/re/12" : "/re/x", ua, 1);
        size_t want = (i + t->id) % 2 ? 0 : 1;
        if (res.status != SL_ROUTER_MATCHED || res.route_index != want)
            t->failures++;
        sl_str_t out;
        if (sl_router_rewrite_path(t->r, 0, S("/re/12"), &a, &out) != 0 || !sl_str_eq(out, S("/n/12")))
            t->failures++;
        sl_arena_reset(&a);
    }
    sl_arena_dispose(&a);
    return NULL;
}

static void test_threads(void **state)
{
    sl_route_conf_t routes[] = {
        {.match = {.path_regex = S("^/re/([0-9]+)$")},
         .rewrite_regex = S("^/re/(.*)"),
         .rewrite_replacement = S("/n/$1")},
        {.match = {HDRS(HM("user-agent", REGEX, "^curl/([0-9])"))}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    pthread_t th[4];
    thread_arg_t args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg_t){.r = r, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].failures, 0);
    }
    sl_router_destroy(r);
}

/* ---- match order --------------------------------------------------------------------------- */

static void test_match_order(void **state)
{
    /* In config order from least to most specific, so a correct order reverses most of it. */
    sl_route_conf_t routes[] = {
        {.name = S("catch-all"), .match = {0}},
        {.name = S("any-regex"), .match = {.path_regex = S("^/r")}},
        {.name = S("any-prefix-short"), .match = {.path_prefix = S("/a")}},
        {.name = S("any-prefix-long"), .match = {.path_prefix = S("/a/b")}},
        {.name = S("any-exact"), .match = {.path_exact = S("/x")}},
        {.name = S("wild-short"), .match = {HOSTS(S("*.com")), .path_exact = S("/x")}},
        {.name = S("wild-long"), .match = {HOSTS(S("*.example.com"))}},
        {.name = S("exact-any-path"), .match = {HOSTS(S("api.example.com"))}},
        {.name = S("exact-prefix"), .match = {HOSTS(S("api.example.com")), .path_prefix = S("/")}},
        {.name = S("mixed-hosts"), .match = {HOSTS(S("*.org"), S("www.example.org")), .path_prefix = S("/")}},
        {.name = S("any-prefix-long-2"), .match = {.path_prefix = S("/a/c")}},
    };
    sl_config_t cfg;
    sl_router_t *r = BUILD(cfg, routes);
    const char *want[] = {"exact-prefix",     "mixed-hosts", "exact-any-path",  "wild-long",
                          "wild-short",       "any-exact",   "any-prefix-long", "any-prefix-long-2",
                          "any-prefix-short", "any-regex",   "catch-all"};
    size_t idx[SL_ARRAY_SIZE(routes)];
    assert_int_equal(sl_router_match_order(r, NULL, 0), SL_ARRAY_SIZE(routes));
    assert_int_equal(sl_router_match_order(r, idx, SL_ARRAY_SIZE(idx)), SL_ARRAY_SIZE(routes));
    for (size_t i = 0; i < SL_ARRAY_SIZE(want); i++)
        assert_string_equal(routes[idx[i]].name.ptr, want[i]);

    /* A short array gets the first entries of the same order. */
    size_t first[2] = {99, 99};
    assert_int_equal(sl_router_match_order(r, first, 2), SL_ARRAY_SIZE(routes));
    assert_int_equal(first[0], idx[0]);
    assert_int_equal(first[1], idx[1]);

    /* The order agrees with matching: the first listed route that accepts a request is the one
     * the router picks. */
    assert_route(match(r, GET, "api.example.com", "/a/b"), 8);
    assert_route(match(r, GET, "www.example.com", "/x"), 6);
    assert_route(match(r, GET, "www.other.com", "/x"), 5);
    assert_route(match(r, GET, "other.net", "/a/b/c"), 3);
    assert_route(match(r, GET, "other.net", "/rest"), 1);
    sl_router_destroy(r);
}

static void test_match_order_empty(void **state)
{
    sl_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.path = S("test.yaml");
    sl_router_t *r = NULL;
    sl_config_errors_t errs = {0};
    assert_int_equal(sl_router_create(&cfg, &r, &errs), 0);
    size_t idx[1] = {42};
    assert_int_equal(sl_router_match_order(r, idx, 1), 0);
    assert_int_equal(idx[0], 42);
    errs_dispose(&errs);
    sl_router_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_precedence),
        cmocka_unit_test(test_host_case_insensitive),
        cmocka_unit_test(test_wildcard_not_bare_domain),
        cmocka_unit_test(test_group_fallback),
        cmocka_unit_test(test_path_precedence),
        cmocka_unit_test(test_exact_path_is_case_sensitive),
        cmocka_unit_test(test_prefix_fallback_on_method_and_headers),
        cmocka_unit_test(test_trie_internals),
        cmocka_unit_test(test_hash_folds_ascii_letters_only),
        cmocka_unit_test(test_config_order_ties),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_get_implies_head),
        cmocka_unit_test(test_header_matches),
        cmocka_unit_test(test_rewrite),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_empty_config),
        cmocka_unit_test(test_ten_thousand_routes),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_match_order),
        cmocka_unit_test(test_match_order_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
