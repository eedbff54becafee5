/*
 * Unit tests of the doctor: synthetic counters are written through the metrics API (as the
 * workers would), the doctor ticks on an injected clock, and the report is checked finding by
 * finding: a dead target, an ejected one, a whole upstream down, a 404 spike with its top
 * prefixes, p99 near the read timeout (and not when it is far), 5xx from the target, fd usage,
 * loop lag, connection-limit refusals, a route cause row, the ranking, `since`, windows, and no
 * finding at all on a healthy gateway. Also the p99-from-histogram-deltas arithmetic, and the
 * auth rules: unknown kids after a rotation, expired tokens, rejected keys, forbidden clients,
 * an issuer without keys (with a JWKS store whose fetches fail), none on healthy auth traffic.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "admin/doctor.h"
#include "filters/jwks_store.h"
#include "config/config.h"
#include "router/router.h"
#include "upstream/balancer.h"
#include "upstream/proxy.h"

#define MS 1000000ull
#define T0 1764151200000ull /* 2025-11-26T10:00:00Z */
#define T1 "127.0.0.1:9001"
#define T2 "127.0.0.1:9002"

static const char *const yaml = "listen: [ { address: \"127.0.0.1:1\" } ]\n"
                                "upstreams:\n"
                                "  users:\n"
                                "    targets: [ { address: \"" T1 "\" }, { address: \"" T2 "\" } ]\n"
                                "    timeouts: { read: 1s }\n"
                                "  orders:\n"
                                "    targets: [ { address: \"127.0.0.1:9003\" } ]\n"
                                "routes:\n"
                                "  - name: users\n"
                                "    match: { path_prefix: /users }\n"
                                "    upstream: users\n"
                                "  - name: orders\n"
                                "    match: { path_prefix: /orders }\n"
                                "    upstream: orders\n";

typedef struct fx {
    sl_metrics_t *m;
    sl_metrics_worker_t *w;
    sl_snapshot_t *snap;
    sl_doctor_t *d;
    sl_doctor_resources_t res;
    uint64_t now;
    size_t ticks;
} fx_t;

/* Routes 0 "api" (JWT from a JWKS URL), 1 "keys" (API keys), 2 "hs" (JWT with a secret from the
 * environment), 3 "open" (no auth): the auth rules. */
#define AUTH_SECRET_ENV "SLUICE_TEST_DOCTOR_SECRET"
static const char *const auth_yaml =
    "listen: [ { address: \"127.0.0.1:1\" } ]\n"
    "jwt_issuers:\n"
    "  idp: { issuer: \"https://idp.test\", jwks_url: \"http://127.0.0.1:9/jwks\" }\n"
    "  hs: { issuer: hs, secret_env: " AUTH_SECRET_ENV " }\n"
    "upstreams:\n"
    "  app: { targets: [ { address: \"127.0.0.1:9001\" } ] }\n"
    "routes:\n"
    "  - { name: api, match: { path_prefix: /api }, upstream: app, auth: [ { jwt: idp } ] }\n"
    "  - { name: keys, match: { path_prefix: /k }, upstream: app, auth: [ api_key ] }\n"
    "  - { name: hs, match: { path_prefix: /hs }, upstream: app, auth: [ { jwt: hs } ] }\n"
    "  - { name: open, match: { path_prefix: / }, upstream: app }\n";

static int setup_yaml(void **state, const char *text)
{
    fx_t *f = calloc(1, sizeof(*f));
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    sl_router_t *r = NULL;
    int rc = sl_config_load_buffer("t.yaml", text, strlen(text), &c, &errs);
    if (rc == 0)
        rc = sl_router_create(c, &r, &errs);
    if (rc != 0)
        sl_config_errors_print(&errs, stderr);
    assert_int_equal(rc, 0);
    sl_config_errors_dispose(&errs);
    sl_metrics_create(&f->m);
    f->snap = sl_snapshot_create(c, r);
    assert_int_equal(sl_metrics_schema_create(f->m, c, &f->snap->metrics), 0);
    sl_proxy_attach(f->snap, NULL, NULL);
    sl_metrics_worker_create(f->m, &f->w);
    assert_int_equal(sl_doctor_create(f->m, &f->d), 0);
    f->res = (sl_doctor_resources_t){.fds_open = 40,
                                     .fds_limit = 1024,
                                     .rss_bytes = 10 << 20,
                                     .connections = 3,
                                     .max_connections = 100000,
                                     .loop_lag_max_ns = 1 * MS};
    f->now = T0;
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_yaml(state, yaml);
}

static int setup_auth(void **state)
{
    return setup_yaml(state, auth_yaml);
}

static int teardown(void **state)
{
    fx_t *f = *state;
    sl_doctor_destroy(f->d);
    sl_snapshot_unref(f->snap);
    sl_metrics_worker_destroy(f->w);
    sl_metrics_destroy(f->m);
    free(f);
    return 0;
}

/* ---- writing counters as a worker would --------------------------------------------------- */

static void exchange(fx_t *f, long route, int status, enum sl_cause cause, int n)
{
    for (int i = 0; i < n; i++) {
        sl_exchange_t x;
        memset(&x, 0, sizeof(x));
        x.route_index = route;
        if (route >= 0)
            x.route_name = f->snap->cfg->routes[route].name;
        x.method = SL_METHOD_GET;
        x.status = status;
        x.cause = cause;
        x.start_ns = 1000 * MS;
        sl_metrics_observe_exchange(f->w, f->snap->metrics, &x, x.start_ns + 5 * MS);
    }
}

/* n requests of `route` refused with `cause` and the filter's detail code, counted as the log
 * phase does. */
static void refused(fx_t *f, long route, int status, enum sl_cause cause, const char *detail, int n)
{
    for (int i = 0; i < n; i++) {
        sl_exchange_t x;
        memset(&x, 0, sizeof(x));
        x.route_index = route;
        x.route_name = f->snap->cfg->routes[route].name;
        x.method = SL_METHOD_GET;
        x.status = status;
        x.cause = cause;
        x.cause_detail = detail;
        x.start_ns = 1000 * MS;
        sl_metrics_observe_exchange(f->w, f->snap->metrics, &x, x.start_ns + 1 * MS);
        sl_metrics_observe_auth_failure(f->w, f->snap->metrics, &x);
    }
}

/* n proxied requests to users' target t answered 200 after `ttfb_ns`. */
static void ok(fx_t *f, size_t up, size_t t, int n, uint64_t ttfb_ns)
{
    for (int i = 0; i < n; i++)
        sl_metrics_observe_upstream(f->w, f->snap->metrics, up, t, ttfb_ns);
    exchange(f, (long)up, 200, SL_CAUSE_NONE, n);
}

static void failed(fx_t *f, size_t up, size_t t, enum sl_cause cause, int n)
{
    for (int i = 0; i < n; i++)
        sl_metrics_observe_upstream_failure(f->w, f->snap->metrics, up, t, cause);
}

static void tick(fx_t *f)
{
    f->now += SL_DOCTOR_TICK_MS;
    f->ticks++;
    sl_doctor_tick(f->d, f->snap, NULL, &f->res, f->now);
}

/* A tick of normal traffic: both users targets and orders answer quickly, one stray 404. */
static void healthy_traffic(fx_t *f)
{
    ok(f, 0, 0, 10, 4 * MS);
    ok(f, 0, 1, 10, 6 * MS);
    ok(f, 1, 0, 5, 2 * MS);
    if (f->ticks % 3 == 0) {
        exchange(f, -1, 404, SL_CAUSE_ROUTE_NOT_FOUND, 1);
        sl_metrics_observe_unmatched(f->w, SL_STR_LIT("api.example.com"), SL_STR_LIT("/favicon.ico"));
    }
}

/* ---- reading the report ------------------------------------------------------------------- */

static json_t *report(fx_t *f, unsigned window)
{
    json_t *r = sl_doctor_report(f->d, f->snap, window);
    assert_non_null(r);
    assert_true(json_is_integer(json_object_get(r, "window_seconds")));
    json_t *list = json_object_get(r, "findings");
    assert_true(json_is_array(list));
    /* Every finding has the DESIGN.md shape, and they are ranked by severity. */
    int prev = -1;
    size_t i;
    json_t *it;
    json_array_foreach(list, i, it)
    {
        const char *sev = json_string_value(json_object_get(it, "severity"));
        const char *cause = json_string_value(json_object_get(it, "cause"));
        assert_non_null(sev);
        assert_non_null(cause);
        int rank = strcmp(sev, "critical") == 0  ? 0
                   : strcmp(sev, "warning") == 0 ? 1
                   : strcmp(sev, "info") == 0    ? 2
                                                 : -9;
        assert_true(rank >= prev);
        prev = rank;
        const char *causes[] = {"connectivity", "routing", "auth", "rate_limit", "latency", "resources"};
        bool known = false;
        for (size_t k = 0; k < 6; k++)
            known |= strcmp(cause, causes[k]) == 0;
        assert_true(known);
        assert_true(json_is_object(json_object_get(it, "where")));
        assert_true(json_is_object(json_object_get(it, "evidence")));
        const char *since = json_string_value(json_object_get(it, "since"));
        assert_non_null(since);
        assert_int_equal(strlen(since), 20);
        assert_true(since[19] == 'Z');
        assert_true(strlen(json_string_value(json_object_get(it, "summary"))) > 10);
        assert_true(strlen(json_string_value(json_object_get(it, "action"))) > 10);
    }
    return r;
}

static size_t nfindings(json_t *r)
{
    return json_array_size(json_object_get(r, "findings"));
}

static json_t *finding(json_t *r, size_t i)
{
    return json_array_get(json_object_get(r, "findings"), i);
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_int_t num(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* The first finding with this cause and where.upstream / where.target (NULL: absent). */
static json_t *find(json_t *r, const char *cause, const char *upstream, const char *target)
{
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(r, "findings"), i, it)
    {
        json_t *w = json_object_get(it, "where");
        const char *u = str(w, "upstream"), *t = str(w, "target");
        if (strcmp(str(it, "cause"), cause) != 0)
            continue;
        if ((upstream == NULL) != (u == NULL) || (upstream && strcmp(upstream, u) != 0))
            continue;
        if ((target == NULL) != (t == NULL) || (target && strcmp(target, t) != 0))
            continue;
        return it;
    }
    return NULL;
}

static void print(json_t *r)
{
    char *s = json_dumps(r, JSON_INDENT(2));
    fprintf(stderr, "%s\n", s);
    free(s);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_empty_and_bad_input(void **state)
{
    fx_t *f = *state;
    /* Before any tick: the shape, no findings. */
    json_t *r = report(f, 60);
    assert_int_equal(num(r, "window_seconds"), 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
    /* Windows clamp to 60 or 300. */
    r = report(f, 0);
    assert_int_equal(num(r, "window_seconds"), 60);
    json_decref(r);
    r = report(f, 100000);
    assert_int_equal(num(r, "window_seconds"), 300);
    json_decref(r);
    /* A snapshot without a metrics schema (sluice check's) is ignored; NULL snapshot too. */
    sl_metrics_schema_t *s = f->snap->metrics;
    f->snap->metrics = NULL;
    tick(f);
    f->snap->metrics = s;
    sl_doctor_tick(f->d, NULL, NULL, &f->res, f->now);
    uint64_t req = 99, err = 99;
    sl_doctor_target_window(f->d, f->snap, 0, 0, 60, &req, &err);
    assert_true(req == 0 && err == 0);
    /* Unknown indices. */
    tick(f);
    tick(f);
    sl_doctor_target_window(f->d, f->snap, 7, 9, 60, &req, &err);
    assert_true(req == 0 && err == 0);
    /* NULL resources: zeros, no finding. */
    sl_doctor_tick(f->d, f->snap, NULL, NULL, f->now + 1000);
    r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
    sl_doctor_destroy(NULL);
}

static void test_healthy_has_no_findings(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 160; i++) {
        healthy_traffic(f);
        /* a few client-side 5xx-free errors are normal: an occasional 405 and a timeout */
        if (i % 20 == 0)
            exchange(f, 0, 405, SL_CAUSE_METHOD_NOT_ALLOWED, 1);
        if (i % 30 == 0)
            failed(f, 0, 1, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 1);
        tick(f);
    }
    for (unsigned w = 60; w <= 300; w += 240) {
        json_t *r = report(f, w);
        if (nfindings(r) != 0)
            print(r);
        assert_int_equal(nfindings(r), 0);
        json_decref(r);
    }
    uint64_t req, err;
    sl_doctor_target_window(f->d, f->snap, 0, 1, 60, &req, &err);
    assert_true(req >= 290 && req <= 310); /* 10 per tick, 30 ticks */
    assert_true(err <= 1);
}

static void test_dead_target_and_since(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 5; i++) {
        healthy_traffic(f);
        tick(f);
    }
    /* From tick 6 on, every try to T2 fails to connect (the retry lands on T1). */
    for (int i = 0; i < 10; i++) {
        ok(f, 0, 0, 20, 4 * MS);
        failed(f, 0, 1, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 10);
        ok(f, 1, 0, 5, 2 * MS);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find(r, "connectivity", "users", T2);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "critical");
    assert_non_null(strstr(str(x, "action"), "sluice probe users"));
    assert_non_null(strstr(str(x, "summary"), "failed to connect to " T2));
    json_t *ev = json_object_get(x, "evidence");
    assert_int_equal(num(ev, "upstream_connect_failed"), 100);
    assert_int_equal(num(ev, "requests"), 100 + 40); /* and 10 good ones in each of ticks 2-5 */
    /* Held from the first tick with the failures: T0 + 6 ticks = 10:00:12. */
    assert_string_equal(str(x, "since"), "2025-11-26T10:00:12Z");
    /* Only the dead target: not T1, not the upstream as a whole. */
    assert_null(find(r, "connectivity", "users", NULL));
    assert_null(find(r, "connectivity", "users", T1));
    json_decref(r);
    uint64_t req, err;
    sl_doctor_target_window(f->d, f->snap, 0, 1, 60, &req, &err);
    assert_true(req == 140 && err == 100);

    /* The 300 s window says the same with the same since. */
    r = report(f, 300);
    x = find(r, "connectivity", "users", T2);
    assert_non_null(x);
    assert_string_equal(str(x, "since"), "2025-11-26T10:00:12Z");
    json_decref(r);

    /* It recovers: after a minute of good traffic the 60 s window is clean again. */
    for (int i = 0; i < 32; i++) {
        healthy_traffic(f);
        tick(f);
    }
    r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
    r = report(f, 300);
    assert_non_null(find(r, "connectivity", "users", T2));
    json_decref(r);
}

static void test_ejected_target_without_traffic(void **state)
{
    fx_t *f = *state;
    sl_target_state_t *st = sl_proxy_target_states(f->snap, 0);
    atomic_fetch_or(&st[1].flags, SL_TARGET_EJECTED);
    tick(f);
    /* A state finding shows from the very first sample. */
    json_t *r = report(f, 60);
    json_t *x = find(r, "connectivity", "users", T2);
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "critical");
    assert_true(json_is_true(json_object_get(json_object_get(x, "evidence"), "ejected")));
    assert_non_null(strstr(str(x, "summary"), "ejected"));
    assert_string_equal(str(x, "since"), "2025-11-26T10:00:02Z");
    json_decref(r);
    atomic_fetch_and(&st[1].flags, ~SL_TARGET_EJECTED);
    tick(f);
    r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
}

static void test_all_targets_down(void **state)
{
    fx_t *f = *state;
    sl_target_state_t *st = sl_proxy_target_states(f->snap, 0);
    atomic_fetch_or(&st[0].flags, SL_TARGET_UNHEALTHY);
    for (int i = 0; i < 5; i++) {
        failed(f, 0, 1, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 4);
        exchange(f, 0, 502, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 4);
        ok(f, 1, 0, 5, 2 * MS);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find(r, "connectivity", "users", NULL);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "critical");
    assert_true(finding(r, 0) == x); /* ranked first */
    assert_int_equal(json_array_size(json_object_get(json_object_get(x, "evidence"), "targets")), 2);
    /* One finding for the upstream, none per target. */
    assert_null(find(r, "connectivity", "users", T1));
    assert_null(find(r, "connectivity", "users", T2));
    assert_null(find(r, "connectivity", "orders", NULL));
    json_decref(r);
}

static void test_route_not_found_spike(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 10; i++) {
        healthy_traffic(f);
        tick(f);
    }
    for (int i = 0; i < 5; i++) {
        for (int k = 0; k < 12; k++) {
            exchange(f, -1, 404, SL_CAUSE_ROUTE_NOT_FOUND, 1);
            sl_metrics_observe_unmatched(f->w, SL_STR_LIT("Old-API.Example.com"), SL_STR_LIT("/v1/users/42"));
        }
        for (int k = 0; k < 4; k++) {
            exchange(f, -1, 404, SL_CAUSE_ROUTE_NOT_FOUND, 1);
            sl_metrics_observe_unmatched(f->w, SL_STR_LIT("api.example.com"), SL_STR_LIT("/wp-login.php"));
        }
        healthy_traffic(f);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find(r, "routing", NULL, NULL);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    json_t *ev = json_object_get(x, "evidence");
    assert_true(num(ev, "route_not_found") >= 80);
    json_t *top = json_object_get(ev, "top_unmatched");
    assert_true(json_array_size(top) >= 2);
    assert_string_equal(str(json_array_get(top, 0), "host"), "old-api.example.com");
    assert_string_equal(str(json_array_get(top, 0), "path_prefix"), "/v1");
    assert_int_equal(num(json_array_get(top, 0), "requests"), 60);
    assert_string_equal(str(json_array_get(top, 1), "path_prefix"), "/wp-login.php");
    assert_int_equal(num(json_array_get(top, 1), "requests"), 20);
    assert_non_null(strstr(str(x, "action"), "sluice routes"));
    json_decref(r);
}

static void test_latency_near_timeout(void **state)
{
    fx_t *f = *state;
    /* 900 ms to first byte against a 1 s read timeout. */
    for (int i = 0; i < 5; i++) {
        ok(f, 0, 0, 5, 900 * MS);
        ok(f, 0, 1, 5, 900 * MS);
        ok(f, 1, 0, 5, 300 * MS); /* orders: 300 ms against its default 30 s: fine */
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find(r, "latency", "users", NULL);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    json_t *ev = json_object_get(x, "evidence");
    assert_int_equal(num(ev, "timeouts_read_ms"), 1000);
    assert_true(num(ev, "p99_ms") >= 800 && num(ev, "p99_ms") <= 1000);
    assert_int_equal(num(ev, "requests"), 40); /* the first sample is the window's base */
    assert_null(find(r, "latency", "orders", NULL));
    json_decref(r);
}

static void test_latency_far_from_timeout(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 10; i++) {
        ok(f, 0, 0, 10, 200 * MS);
        tick(f);
    }
    json_t *r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
}

static void test_target_5xx_and_timeouts(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 6; i++) {
        ok(f, 0, 0, 10, 4 * MS);
        /* T2 answers, with 500 every time */
        for (int k = 0; k < 5; k++)
            sl_metrics_observe_upstream(f->w, f->snap->metrics, 0, 1, 3 * MS);
        failed(f, 0, 1, SL_CAUSE_NONE, 5);
        exchange(f, 0, 500, SL_CAUSE_NONE, 5);
        /* orders' only target times out now and then */
        ok(f, 1, 0, 8, 2 * MS);
        failed(f, 1, 0, SL_CAUSE_UPSTREAM_TIMEOUT, 2);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find(r, "connectivity", "users", T2);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    assert_int_equal(num(json_object_get(x, "evidence"), "upstream_5xx"), 25);
    assert_non_null(strstr(str(x, "summary"), "5xx"));
    assert_null(find(r, "connectivity", "users", T1));
    json_t *t = find(r, "latency", "orders", "127.0.0.1:9003");
    assert_non_null(t);
    assert_int_equal(num(json_object_get(t, "evidence"), "upstream_timeout"), 10);
    json_decref(r);
}

static void test_resources(void **state)
{
    fx_t *f = *state;
    tick(f);
    f->res.fds_open = 900; /* of 1024: 88% */
    tick(f);
    json_t *r = report(f, 60);
    json_t *x = find(r, "resources", NULL, NULL);
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "warning");
    assert_int_equal(num(json_object_get(x, "evidence"), "fds_open"), 900);
    assert_int_equal(json_object_size(json_object_get(x, "where")), 0);
    json_decref(r);
    f->res.fds_open = 1000;
    tick(f);
    r = report(f, 60);
    assert_string_equal(str(find(r, "resources", NULL, NULL), "severity"), "critical");
    json_decref(r);
    f->res.fds_open = 40;

    /* Loop lag: one tick of 500 ms lag. */
    f->res.loop_lag_max_ns = 500 * MS;
    tick(f);
    f->res.loop_lag_max_ns = 1 * MS;
    tick(f);
    r = report(f, 60);
    x = find(r, "resources", NULL, NULL);
    if (x == NULL || json_object_get(json_object_get(x, "evidence"), "loop_lag_max_ms") == NULL)
        print(r);
    assert_int_equal(num(json_object_get(x, "evidence"), "loop_lag_max_ms"), 500);
    json_decref(r);
    /* A minute later it is out of the 60 s window but in the 300 s one. */
    for (int i = 0; i < 31; i++)
        tick(f);
    r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
    r = report(f, 300);
    assert_non_null(find(r, "resources", NULL, NULL));
    json_decref(r);
}

static void test_connection_refusals(void **state)
{
    fx_t *f = *state;
    tick(f);
    f->res.connections_refused_total = 7;
    f->res.connections = 100;
    f->res.max_connections = 100;
    tick(f);
    json_t *r = report(f, 60);
    json_t *x = find(r, "resources", NULL, NULL);
    assert_non_null(x);
    assert_int_equal(num(json_object_get(x, "evidence"), "connections_refused"), 7);
    assert_non_null(strstr(str(x, "summary"), "refused"));
    json_decref(r);
}

/* Redis down in cluster mode: a rate_limit finding while it lasts, warning under allow,
 * critical under deny; nothing once it is back, nothing without a store. */
static void test_store_down(void **state)
{
    fx_t *f = *state;
    tick(f);
    json_t *r = report(f, 60);
    assert_null(find(r, "rate_limit", NULL, NULL));
    json_decref(r);
    f->res.store_configured = true;
    f->res.store_up = true;
    snprintf(f->res.store_address, sizeof(f->res.store_address), "10.0.0.9:6379");
    tick(f);
    r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
    f->res.store_up = false;
    f->res.store_down_since_ms = 1000;
    f->res.store_fallbacks_total = 42;
    tick(f);
    r = report(f, 60);
    json_t *x = find(r, "rate_limit", NULL, NULL);
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "warning");
    assert_string_equal(str(x, "summary"),
                        "rate limits are per node until redis at 10.0.0.9:6379 is back (42 decisions made locally in "
                        "the window)");
    assert_int_equal(num(json_object_get(x, "evidence"), "local_decisions"), 42);
    json_decref(r);
    f->res.store_deny = true;
    f->res.store_refusals_total = 5;
    tick(f);
    r = report(f, 60);
    x = find(r, "rate_limit", NULL, NULL);
    assert_string_equal(str(x, "severity"), "critical");
    assert_non_null(strstr(str(x, "summary"), "refused (503, 5 in the window)"));
    json_decref(r);
    f->res.store_up = true;
    f->res.store_down_since_ms = 0;
    tick(f);
    r = report(f, 60);
    assert_null(find(r, "rate_limit", NULL, NULL));
    json_decref(r);
}

static void test_route_cause_row_and_ranking(void **state)
{
    fx_t *f = *state;
    sl_target_state_t *st = sl_proxy_target_states(f->snap, 0);
    for (int i = 0; i < 5; i++) {
        ok(f, 1, 0, 10, 2 * MS);
        exchange(f, 1, 503, SL_CAUSE_UPSTREAM_OVERLOADED, 2); /* 2 of 12: 17% */
        ok(f, 0, 0, 10, 2 * MS);
        tick(f);
    }
    f->res.fds_open = 850;                                 /* a warning */
    atomic_fetch_or(&st[1].flags, SL_TARGET_CIRCUIT_OPEN); /* a critical */
    tick(f);
    json_t *r = report(f, 60);
    json_t *x = find(r, "resources", "orders", NULL);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    assert_string_equal(str(json_object_get(x, "where"), "route"), "orders");
    assert_int_equal(num(json_object_get(x, "evidence"), "upstream_overloaded"), 8);
    assert_non_null(strstr(str(x, "action"), "limits.max_connections"));
    /* The critical target comes first, then the warnings. */
    assert_string_equal(str(finding(r, 0), "severity"), "critical");
    assert_string_equal(str(json_object_get(finding(r, 0), "where"), "target"), T2);
    assert_string_equal(str(json_object_get(finding(r, 0), "evidence"), "circuit"), "open");
    assert_non_null(strstr(str(finding(r, 0), "summary"), "circuit is open"));
    assert_true(nfindings(r) == 3);
    json_decref(r);
}

static void test_reload_keeps_windows(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 5; i++) {
        failed(f, 0, 1, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 5);
        ok(f, 0, 0, 5, 2 * MS);
        tick(f);
    }
    /* A reload that moves the upstreams around: same names, new indices. */
    const char *y2 = "listen: [ { address: \"127.0.0.1:1\" } ]\n"
                     "upstreams:\n"
                     "  orders:\n"
                     "    targets: [ { address: \"127.0.0.1:9003\" } ]\n"
                     "  users:\n"
                     "    targets: [ { address: \"" T2 "\" }, { address: \"" T1 "\" } ]\n"
                     "routes:\n"
                     "  - { name: users, match: { path_prefix: /users }, upstream: users }\n";
    sl_config_errors_t errs = {0};
    sl_config_t *c = NULL;
    sl_router_t *rt = NULL;
    assert_int_equal(sl_config_load_buffer("t2.yaml", y2, strlen(y2), &c, &errs), 0);
    assert_int_equal(sl_router_create(c, &rt, &errs), 0);
    sl_config_errors_dispose(&errs);
    sl_snapshot_t *s2 = sl_snapshot_create(c, rt);
    assert_int_equal(sl_metrics_schema_create(f->m, c, &s2->metrics), 0);
    sl_proxy_attach(s2, NULL, f->snap);
    sl_snapshot_unref(f->snap);
    f->snap = s2;
    for (int i = 0; i < 3; i++) {
        failed(f, 1, 0, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 5); /* T2 is now users' target 0 */
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find(r, "connectivity", "users", T2);
    if (x == NULL)
        print(r);
    assert_non_null(x);
    /* The window spans the reload: 4 ticks before + 3 after, by stable series. */
    assert_int_equal(num(json_object_get(x, "evidence"), "upstream_connect_failed"), 35);
    assert_string_equal(str(x, "since"), "2025-11-26T10:00:04Z");
    json_decref(r);
}

static void test_quantile_from_deltas(void **state)
{
    (void)state;
    sl_metrics_hist_sum_t h = {0};
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 0.99), 0);
    /* Bucket 9 is (250 ms, 500 ms], bucket 10 (500 ms, 1 s]. */
    assert_int_equal(sl_metrics_hist_bound_ns(9), 500 * MS);
    assert_int_equal(sl_metrics_hist_bound_ns(10), 1000 * MS);
    assert_true(sl_metrics_hist_bound_ns(SL_METRICS_HIST_BUCKETS - 1) == UINT64_MAX);
    /* 100 observations in (500 ms, 1 s]: p99 is 99% of the way through it, p50 half. */
    h.buckets[10] = 100;
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 0.99), 995 * MS);
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 0.5), 750 * MS);
    /* 98 fast (bucket 0: [0, 0.5 ms]) and 2 slow: p99 falls into the slow bucket's middle. */
    memset(&h, 0, sizeof(h));
    h.buckets[0] = 98;
    h.buckets[10] = 2;
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 0.99), 750 * MS);
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 0.5), 255102); /* 0.5 ms × 50/98 */
    /* A rank in +Inf answers the largest finite bound (60 s). */
    memset(&h, 0, sizeof(h));
    h.buckets[SL_METRICS_HIST_BUCKETS - 1] = 5;
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 0.99), 60000 * MS);
    /* Out-of-range q is clamped. */
    h.buckets[0] = 5;
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, -1), 0);
    assert_int_equal(sl_doctor_hist_quantile_ns(&h, 2), 60000 * MS);

    /* Through the doctor: the window is the difference of two cumulative histograms, so slow
     * requests before the window do not count. */
    fx_t *f;
    setup((void **)&f);
    for (int i = 0; i < 40; i++) {
        ok(f, 0, 0, 10, 950 * MS); /* long ago: slow */
        tick(f);
    }
    for (int i = 0; i < 31; i++) {
        ok(f, 0, 0, 10, 3 * MS); /* the last minute: fast */
        tick(f);
    }
    json_t *r = report(f, 60);
    assert_null(find(r, "latency", "users", NULL));
    json_decref(r);
    r = report(f, 300);
    json_t *x = find(r, "latency", "users", NULL);
    assert_non_null(x);
    assert_true(num(json_object_get(x, "evidence"), "p99_ms") >= 900);
    json_decref(r);
    void *p = f;
    teardown(&p);
}

/* The first auth finding on `route` whose evidence.detail is `detail`. */
static json_t *find_auth(json_t *r, const char *route, const char *detail)
{
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(r, "findings"), i, it)
    {
        const char *rt = str(json_object_get(it, "where"), "route");
        const char *dt = str(json_object_get(it, "evidence"), "detail");
        if (strcmp(str(it, "cause"), "auth") == 0 && rt != NULL && strcmp(rt, route) == 0 && dt != NULL &&
            strcmp(dt, detail) == 0)
            return it;
    }
    return NULL;
}

/* Each auth route under steady traffic with the refusals any gateway sees: a token that just
 * expired, a client without a key, a typo'd key, a token from before a rotation. */
static void test_auth_healthy_has_no_findings(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 160; i++) {
        for (long rt = 0; rt < 4; rt++)
            exchange(f, rt, 200, SL_CAUSE_NONE, 20);
        if (i % 5 == 0)
            refused(f, 0, 401, SL_CAUSE_AUTH_EXPIRED, "jwt_expired", 1);
        if (i % 3 == 0)
            refused(f, 1, 401, SL_CAUSE_AUTH_MISSING, "no_credentials", 1);
        if (i % 4 == 0)
            refused(f, 1, 401, SL_CAUSE_AUTH_INVALID, "api_key_unknown", 1);
        if (i % 10 == 0)
            refused(f, 0, 401, SL_CAUSE_AUTH_INVALID, "jwt_unknown_kid", 1);
        if (i % 7 == 0)
            refused(f, 2, 403, SL_CAUSE_FORBIDDEN, "acl_not_in_group", 1);
        tick(f);
    }
    for (unsigned w = 60; w <= 300; w += 240) {
        json_t *r = report(f, w);
        if (nfindings(r) != 0)
            print(r);
        assert_int_equal(nfindings(r), 0);
        json_decref(r);
    }
}

static void test_auth_unknown_kid_after_rotation(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 5; i++) {
        exchange(f, 0, 200, SL_CAUSE_NONE, 20);
        tick(f);
    }
    /* The provider rotated: a third of the clients still hold tokens of the removed key. */
    for (int i = 0; i < 3; i++) {
        exchange(f, 0, 200, SL_CAUSE_NONE, 20);
        refused(f, 0, 401, SL_CAUSE_AUTH_INVALID, "jwt_unknown_kid", 10);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find_auth(r, "api", "jwt_unknown_kid");
    if (x == NULL || nfindings(r) != 1)
        print(r);
    assert_non_null(x);
    assert_int_equal(nfindings(r), 1); /* not also "credentials rejected" for the same refusals */
    assert_string_equal(str(x, "severity"), "warning");
    json_t *ev = json_object_get(x, "evidence");
    assert_int_equal(num(ev, "jwt_unknown_kid"), 30);
    assert_int_equal(num(ev, "requests"), 170); /* ticks 2..8: the first sample is the window's base */
    assert_int_equal(num(json_object_get(ev, "details"), "jwt_unknown_kid"), 30);
    json_t *iss = json_array_get(json_object_get(ev, "issuers"), 0);
    assert_string_equal(str(iss, "name"), "idp");
    assert_string_equal(str(iss, "issuer"), "https://idp.test");
    assert_string_equal(str(iss, "jwks_url"), "http://127.0.0.1:9/jwks");
    assert_null(json_object_get(iss, "keys")); /* no key store given */
    assert_non_null(strstr(str(x, "summary"), "route api"));
    assert_non_null(strstr(str(x, "summary"), "jwt_unknown_kid"));
    assert_non_null(strstr(str(x, "action"), "rotated its keys: check jwks_url http://127.0.0.1:9/jwks"));
    assert_non_null(strstr(str(x, "action"), "at most every 10 s"));
    json_decref(r);
    /* Once every client has new tokens the 60 s window empties and the finding goes. */
    for (int i = 0; i < 31; i++) {
        exchange(f, 0, 200, SL_CAUSE_NONE, 20);
        tick(f);
    }
    r = report(f, 60);
    assert_int_equal(nfindings(r), 0);
    json_decref(r);
}

static void test_auth_expired_rejected_forbidden(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 3; i++) {
        exchange(f, 0, 200, SL_CAUSE_NONE, 10);
        refused(f, 0, 401, SL_CAUSE_AUTH_EXPIRED, "jwt_expired", 5);
        exchange(f, 1, 200, SL_CAUSE_NONE, 10);
        refused(f, 1, 401, SL_CAUSE_AUTH_INVALID, "api_key_unknown", 12);
        refused(f, 1, 401, SL_CAUSE_AUTH_INVALID, "basic_bad_password", 1);
        exchange(f, 3, 200, SL_CAUSE_NONE, 5);
        refused(f, 3, 403, SL_CAUSE_FORBIDDEN, "ip_denied", 20);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find_auth(r, "api", "jwt_expired");
    if (x == NULL)
        print(r);
    assert_non_null(x);
    assert_int_equal(num(json_object_get(x, "evidence"), "jwt_expired"), 10); /* the base sample's are before */
    assert_int_equal(num(json_object_get(x, "evidence"), "leeway_ms"), 30000);
    assert_non_null(strstr(str(x, "action"), "refresh tokens"));
    x = find_auth(r, "keys", "auth_invalid");
    assert_non_null(x);
    json_t *ev = json_object_get(x, "evidence");
    assert_int_equal(num(ev, "auth_invalid"), 26);
    assert_string_equal(str(ev, "top_detail"), "api_key_unknown");
    assert_int_equal(num(json_object_get(ev, "details"), "basic_bad_password"), 2);
    assert_non_null(strstr(str(x, "summary"), "credentials rejected"));
    assert_string_equal(str(x, "severity"), "warning"); /* 26 of 46 */
    x = find_auth(r, "open", "forbidden");
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "critical"); /* 40 of 50 */
    assert_string_equal(str(json_object_get(x, "evidence"), "top_detail"), "ip_denied");
    assert_non_null(strstr(str(x, "action"), "ip_rules of open"));
    assert_int_equal(nfindings(r), 3);
    json_decref(r);
}

/* A fetcher whose every fetch fails at once: the identity provider is unreachable. */
static int fetch_refused(uv_loop_t *loop, const sl_fetch_request_t *req, sl_fetch_cb cb, void *arg, sl_fetch_t **out)
{
    (void)loop, (void)req, (void)cb, (void)arg, (void)out;
    return UV_ECONNREFUSED;
}

static void fetch_cancel(sl_fetch_t *fe)
{
    (void)fe;
}

static void test_auth_no_keys_with_store(void **state)
{
    fx_t *f = *state;
    setenv(AUTH_SECRET_ENV, "0123456789abcdef0123456789abcdef-doctor", 1);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sl_fetcher_t fetcher = {fetch_refused, fetch_cancel};
    sl_jwks_store_t *store = NULL;
    assert_int_equal(sl_jwks_store_create(&loop, &fetcher, &store), 0);
    sl_config_errors_t errs = {0};
    assert_int_equal(sl_jwks_store_apply(store, f->snap->cfg, &errs), 0);
    sl_config_errors_dispose(&errs);
    sl_doctor_set_jwks(f->d, store);
    for (int i = 0; i < 3; i++) {
        refused(f, 0, 401, SL_CAUSE_AUTH_INVALID, "jwt_no_keys", 2);
        exchange(f, 2, 200, SL_CAUSE_NONE, 10);
        refused(f, 2, 401, SL_CAUSE_AUTH_INVALID, "jwt_unknown_kid", 10);
        tick(f);
    }
    json_t *r = report(f, 60);
    json_t *x = find_auth(r, "api", "jwt_no_keys");
    if (x == NULL)
        print(r);
    assert_non_null(x);
    assert_string_equal(str(x, "severity"), "critical");
    json_t *iss = json_array_get(json_object_get(json_object_get(x, "evidence"), "issuers"), 0);
    assert_int_equal(num(iss, "keys"), 0);
    assert_true(num(iss, "fetch_failures") >= 1);
    assert_non_null(json_object_get(iss, "last_error"));
    assert_non_null(strstr(str(x, "action"), "never fetched"));
    assert_non_null(strstr(str(x, "action"), "http://127.0.0.1:9/jwks"));
    /* The secret issuer has its key: the unknown kid is not a fetch problem. */
    x = find_auth(r, "hs", "jwt_unknown_kid");
    assert_non_null(x);
    iss = json_array_get(json_object_get(json_object_get(x, "evidence"), "issuers"), 0);
    assert_string_equal(str(iss, "source"), "secret_env");
    assert_string_equal(str(iss, "secret_env"), AUTH_SECRET_ENV);
    assert_int_equal(num(iss, "keys"), 1);
    assert_non_null(json_object_get(iss, "keys_loaded"));
    assert_non_null(strstr(str(x, "action"), "sluice reload"));
    json_decref(r);
    sl_doctor_set_jwks(f->d, NULL);
    sl_jwks_store_stop(store, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    unsetenv(AUTH_SECRET_ENV);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_and_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_healthy_has_no_findings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_target_and_since, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ejected_target_without_traffic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_targets_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_not_found_spike, setup, teardown),
        cmocka_unit_test_setup_teardown(test_latency_near_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_latency_far_from_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_target_5xx_and_timeouts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_cause_row_and_ranking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_windows, setup, teardown),
        cmocka_unit_test(test_quantile_from_deltas),
        cmocka_unit_test_setup_teardown(test_auth_healthy_has_no_findings, setup_auth, teardown),
        cmocka_unit_test_setup_teardown(test_auth_unknown_kid_after_rotation, setup_auth, teardown),
        cmocka_unit_test_setup_teardown(test_auth_expired_rejected_forbidden, setup_auth, teardown),
        cmocka_unit_test_setup_teardown(test_auth_no_keys_with_store, setup_auth, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
