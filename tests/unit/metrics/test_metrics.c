/*
 * Unit tests of the metrics module: per-worker counts summed at render, histogram bucket edges
 * and cumulative rendering, label escaping, series surviving reloads by name, the per-route key
 * table and name-table overflows, counts kept when a worker goes away, and writers racing a
 * scraper. Every render is checked by a small Prometheus text-format (0.0.4) line checker.
 * Configs are built by hand so the tests do not depend on the YAML loader.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "metrics/internal.h"
#include "metrics/metrics.h"

#define S(lit) SL_STR_LIT(lit)
#define MS     1000000ull

/* ---- a Prometheus text-format checker ----------------------------------------------------- */

typedef struct checker {
    char err[256];
    char family[128], type[32];
    char **seen; /* every series printed (name + labels), checked for repeats at the end */
    size_t nseen, capseen;
    char bucket_key[512]; /* labels of the last _bucket line without le */
    double bucket_prev, bucket_le_prev, inf_value;
    bool have_inf;
} checker_t;

static bool reject(checker_t *c, size_t line, const char *why)
{
    snprintf(c->err, sizeof(c->err), "line %zu: %s", line, why);
    return false;
}

static bool is_name_start(char ch, bool colon)
{
    return isalpha((unsigned char)ch) || ch == '_' || (colon && ch == ':');
}

static bool is_name_char(char ch, bool colon)
{
    return is_name_start(ch, colon) || isdigit((unsigned char)ch);
}

static bool parse_value(const char *s, const char *end, double *v)
{
    size_t n = (size_t)(end - s);
    char buf[64];
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (strcmp(buf, "+Inf") == 0 || strcmp(buf, "-Inf") == 0 || strcmp(buf, "NaN") == 0) {
        *v = strcmp(buf, "-Inf") == 0 ? -1e308 : 1e308;
        return true;
    }
    char *e;
    *v = strtod(buf, &e);
    return *e == '\0';
}

static bool check_sample(checker_t *c, size_t ln, const char *p, const char *end)
{
    const char *name = p;
    if (!is_name_start(*p, true))
        return reject(c, ln, "bad metric name");
    while (p < end && is_name_char(*p, true))
        p++;
    char metric[128];
    snprintf(metric, sizeof(metric), "%.*s", (int)(p - name), name);
    /* The family: the TYPE'd name, with _bucket/_sum/_count for histograms. */
    const char *suffix = "";
    if (strcmp(metric, c->family) != 0) {
        size_t fl = strlen(c->family);
        if (strcmp(c->type, "histogram") != 0 || strncmp(metric, c->family, fl) != 0)
            return reject(c, ln, "sample outside its family's TYPE block");
        suffix = metric + fl;
        if (strcmp(suffix, "_bucket") != 0 && strcmp(suffix, "_sum") != 0 && strcmp(suffix, "_count") != 0)
            return reject(c, ln, "unknown histogram suffix");
    } else if (strcmp(c->type, "histogram") == 0) {
        return reject(c, ln, "bare histogram sample");
    }
    char labels_wo_le[512] = "";
    size_t lw = 0;
    double le = 0;
    bool have_le = false;
    if (p < end && *p == '{') {
        p++;
        while (p < end && *p != '}') {
            const char *ln0 = p;
            if (!is_name_start(*p, false))
                return reject(c, ln, "bad label name");
            while (p < end && is_name_char(*p, false))
                p++;
            size_t lnlen = (size_t)(p - ln0);
            if (p + 1 >= end || p[0] != '=' || p[1] != '"')
                return reject(c, ln, "expected =\"");
            p += 2;
            const char *v0 = p;
            while (p < end && *p != '"') {
                if (*p == '\n')
                    return reject(c, ln, "raw line feed in label value");
                if (*p == '\\') {
                    if (p + 1 >= end || (p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
                        return reject(c, ln, "bad escape in label value");
                    p++;
                }
                p++;
            }
            if (p >= end)
                return reject(c, ln, "unterminated label value");
            if (lnlen == 2 && memcmp(ln0, "le", 2) == 0) {
                if (!parse_value(v0, p, &le))
                    return reject(c, ln, "bad le value");
                have_le = true;
            } else {
                lw += (size_t)snprintf(labels_wo_le + lw, sizeof(labels_wo_le) - lw, "%.*s,", (int)(p + 1 - ln0), ln0);
            }
            p++;
            if (p < end && *p == ',')
                p++;
            else if (p < end && *p != '}')
                return reject(c, ln, "expected , or }");
        }
        if (p >= end)
            return reject(c, ln, "unterminated label set");
        p++;
    }
    if (p >= end || *p != ' ')
        return reject(c, ln, "expected a space before the value");
    const char *v = ++p;
    while (p < end && *p != ' ')
        p++;
    double value;
    if (!parse_value(v, p, &value))
        return reject(c, ln, "bad value");
    if (c->nseen == c->capseen) {
        c->capseen = c->capseen ? 2 * c->capseen : 256;
        c->seen = realloc(c->seen, c->capseen * sizeof(*c->seen));
    }
    c->seen[c->nseen++] = strndup(name, (size_t)(v - 1 - name));

    if (strcmp(suffix, "_bucket") == 0) {
        if (!have_le)
            return reject(c, ln, "bucket without le");
        if (strcmp(labels_wo_le, c->bucket_key) == 0) {
            if (value < c->bucket_prev)
                return reject(c, ln, "buckets not cumulative");
            if (le <= c->bucket_le_prev)
                return reject(c, ln, "le not increasing");
        } else {
            snprintf(c->bucket_key, sizeof(c->bucket_key), "%s", labels_wo_le);
            c->have_inf = false;
        }
        c->bucket_prev = value;
        c->bucket_le_prev = le;
        if (le >= 1e308) {
            c->have_inf = true;
            c->inf_value = value;
        }
    } else if (strcmp(suffix, "_count") == 0) {
        if (strcmp(labels_wo_le, c->bucket_key) != 0 || !c->have_inf)
            return reject(c, ln, "_count without a +Inf bucket");
        if (value != c->inf_value)
            return reject(c, ln, "_count differs from the +Inf bucket");
    }
    return true;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* NULL when `text` is valid exposition, else why not (into `c->err`). */
static const char *check_exposition_into(checker_t *c, const char *text)
{
    memset(c, 0, sizeof(*c));
    const char *p = text;
    char types[64][128];
    size_t ntypes = 0;
    bool ok = true;
    for (size_t ln = 1; *p != '\0' && ok; ln++) {
        const char *end = strchr(p, '\n');
        if (end == NULL) {
            ok = reject(c, ln, "last line without a line feed");
            break;
        }
        if (strncmp(p, "# TYPE ", 7) == 0) {
            char name[128], type[32];
            if (sscanf(p + 7, "%127s %31s", name, type) != 2)
                ok = reject(c, ln, "bad TYPE line");
            else if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram") &&
                     strcmp(type, "summary") && strcmp(type, "untyped"))
                ok = reject(c, ln, "unknown type");
            for (size_t i = 0; ok && i < ntypes; i++)
                if (strcmp(types[i], name) == 0)
                    ok = reject(c, ln, "second TYPE for a family");
            if (ok && ntypes < SL_ARRAY_SIZE(types))
                snprintf(types[ntypes++], sizeof(types[0]), "%s", name);
            snprintf(c->family, sizeof(c->family), "%s", name);
            snprintf(c->type, sizeof(c->type), "%s", type);
        } else if (strncmp(p, "# HELP ", 7) == 0) {
            if (!is_name_start(p[7], true))
                ok = reject(c, ln, "bad HELP line");
        } else if (*p == '#') {
            /* other comments are allowed */
        } else if (*p == '\n') {
            /* empty lines are allowed */
        } else {
            ok = check_sample(c, ln, p, end);
        }
        p = end + 1;
    }
    if (ok && c->nseen > 0) {
        qsort(c->seen, c->nseen, sizeof(*c->seen), cmp_cstr);
        for (size_t i = 1; ok && i < c->nseen; i++)
            if (strcmp(c->seen[i], c->seen[i - 1]) == 0)
                ok = reject(c, 0, "duplicate series");
    }
    for (size_t i = 0; i < c->nseen; i++)
        free(c->seen[i]);
    free(c->seen);
    return ok ? NULL : c->err;
}

static const char *check_exposition(const char *text)
{
    static __thread checker_t c;
    return check_exposition_into(&c, text);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static char *render(sl_metrics_t *m, const sl_metrics_schema_t *s)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(sl_metrics_render(m, s, NULL, &out, &len), 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), len);
    const char *err = check_exposition(out);
    if (err != NULL)
        fprintf(stderr, "invalid exposition: %s\n%s", err, out);
    assert_null(err);
    return out;
}

/* The value of one series (exact name and labels), or -1 when absent. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -1;
}

static size_t count_lines_with(const char *text, const char *prefix)
{
    size_t n = 0, pl = strlen(prefix);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, prefix, pl) == 0)
            n++;
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return n;
}

static void build(sl_config_t *cfg, sl_route_conf_t *routes, size_t nroutes, sl_upstream_conf_t *ups, size_t nups)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->path = S("test.yaml");
    cfg->routes = routes;
    cfg->nroutes = nroutes;
    cfg->upstreams = ups;
    cfg->nupstreams = nups;
}

static sl_exchange_t exchange(const sl_config_t *cfg, long route, enum sl_method method, int status,
                              enum sl_cause cause)
{
    sl_exchange_t x;
    memset(&x, 0, sizeof(x));
    x.route_index = route;
    if (route >= 0)
        x.route_name = cfg->routes[route].name;
    x.method = method;
    x.status = status;
    x.cause = cause;
    x.start_ns = 1000 * MS;
    return x;
}

static void observe(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_config_t *cfg, long route,
                    enum sl_method method, int status, enum sl_cause cause, uint64_t dur_ns)
{
    sl_exchange_t x = exchange(cfg, route, method, status, cause);
    x.bytes_in = 10;
    x.bytes_out = 100;
    sl_metrics_observe_exchange(w, s, &x, x.start_ns + dur_ns);
}

#define REQ(route, method, status, cause)                                                                              \
    "sluice_requests_total{route=\"" route "\",method=\"" method "\",status=\"" status "\",cause=\"" cause "\"}"

/* ---- tests -------------------------------------------------------------------------------- */

static void test_workers_sum(void **state)
{
    sl_route_conf_t routes[] = {{.name = S("users")}, {.name = S("orders")}};
    sl_target_conf_t targets[] = {{.address = S("10.0.0.1:9001")}, {.address = S("10.0.0.2:9001")}};
    sl_upstream_conf_t ups[] = {{.name = S("users-svc"), .targets = targets, .ntargets = 2}};
    sl_config_t cfg;
    build(&cfg, routes, 2, ups, 1);

    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    assert_int_equal(sl_metrics_schema_create(m, &cfg, &s), 0);
    sl_metrics_worker_t *w[3];
    for (int i = 0; i < 3; i++)
        sl_metrics_worker_create(m, &w[i]);

    for (int i = 0; i < 5; i++)
        observe(w[0], s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, 2 * MS);
    for (int i = 0; i < 3; i++)
        observe(w[1], s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, 2 * MS);
    for (int i = 0; i < 2; i++)
        observe(w[1], s, &cfg, 1, SL_METHOD_POST, 201, SL_CAUSE_NONE, 2 * MS);
    observe(w[2], s, &cfg, -1, SL_METHOD_GET, 404, SL_CAUSE_ROUTE_NOT_FOUND, 1);
    observe(w[2], s, &cfg, 0, SL_METHOD_GET, 502, SL_CAUSE_UPSTREAM_CONNECT_FAILED, 2 * MS);
    observe(w[2], s, &cfg, 0, SL_METHOD_OTHER, 999, SL_CAUSE_NONE, 2 * MS);
    sl_metrics_observe_upstream(w[0], s, 0, 1, 3 * MS);
    sl_metrics_observe_upstream(w[0], s, 0, 1, 3 * MS);
    sl_metrics_observe_upstream(w[1], s, 0, 1, 3 * MS);
    sl_metrics_observe_upstream(w[1], s, 0, 0, 3 * MS);
    sl_metrics_observe_upstream(w[1], s, 7, 0, 3 * MS); /* out of range: overflow */

    for (int i = 0; i < 3; i++)
        sl_metrics_connection_opened(w[0]);
    sl_metrics_connection_active(w[0], true);
    sl_metrics_connection_opened(w[1]);
    sl_metrics_connection_closed(w[1], false);
    sl_metrics_connections_set(w[2], 4, 5);
    sl_metrics_reload_result(m, true);
    sl_metrics_reload_result(m, false);
    sl_metrics_reload_result(m, false);

    char *out = render(m, s);
    assert_true(value_of(out, REQ("users", "GET", "200", "")) == 8);
    assert_true(value_of(out, REQ("users", "GET", "502", "upstream_connect_failed")) == 1);
    assert_true(value_of(out, REQ("users", "OTHER", "other", "")) == 1);
    assert_true(value_of(out, REQ("orders", "POST", "201", "")) == 2);
    assert_true(value_of(out, REQ("none", "GET", "404", "route_not_found")) == 1);
    assert_int_equal(count_lines_with(out, "sluice_requests_total{"), 5);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"users\"}") == 10);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"orders\"}") == 2);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"none\"}") == 1);
    assert_true(value_of(out, "sluice_bytes_total{direction=\"in\"}") == 130);
    assert_true(value_of(out, "sluice_bytes_total{direction=\"out\"}") == 1300);
    assert_true(
        value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"users-svc\",target=\"10.0.0.2:9001\"}") == 3);
    assert_true(
        value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"users-svc\",target=\"10.0.0.1:9001\"}") == 1);
    assert_true(
        value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"(overflow)\",target=\"(overflow)\"}") == 1);
    assert_true(value_of(out, "sluice_connections{state=\"active\"}") == 5);
    assert_true(value_of(out, "sluice_connections{state=\"idle\"}") == 7);
    assert_true(value_of(out, "sluice_connections_accepted_total") == 4);
    assert_true(value_of(out, "sluice_config_reloads_total{result=\"success\"}") == 1);
    assert_true(value_of(out, "sluice_config_reloads_total{result=\"failure\"}") == 2);
    assert_true(value_of(out, "sluice_config_last_reload_timestamp_seconds") > 1.6e9);
    assert_true(value_of(out, "process_cpu_seconds_total") >= 0);
    assert_true(value_of(out, "process_resident_memory_bytes") > 0);
    assert_true(value_of(out, "process_open_fds") > 0);
    assert_true(value_of(out, "process_max_fds") > 0);
    assert_true(value_of(out, "process_start_time_seconds") > 1.6e9);
    /* Sorted: routes by name, families by name. */
    assert_true(strstr(out, "route=\"none\"") < strstr(out, "route=\"orders\""));
    assert_true(strstr(out, "route=\"orders\"") < strstr(out, "route=\"users\""));
    assert_true(strstr(out, "# TYPE process_cpu") < strstr(out, "# TYPE sluice_bytes_total"));
    /* An idle gateway renders the same bytes twice (modulo the process_* figures). */
    char *again = render(m, s);
    assert_string_equal(strstr(out, "# HELP sluice_"), strstr(again, "# HELP sluice_"));
    free(again);
    free(out);

    for (int i = 0; i < 3; i++)
        sl_metrics_worker_destroy(w[i]);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_histogram_edges(void **state)
{
    sl_route_conf_t routes[] = {{.name = S("r")}};
    sl_config_t cfg;
    build(&cfg, routes, 1, NULL, 0);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    sl_metrics_worker_t *w;
    sl_metrics_worker_create(m, &w);

    /* le is inclusive: exactly 0.5 ms is in le="0.0005", one nanosecond more is not. */
    const uint64_t d[] = {0, 500000, 500001, 60000000000ull, 60000000001ull, 7 * MS};
    for (size_t i = 0; i < SL_ARRAY_SIZE(d); i++)
        observe(w, s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, d[i]);

    char *out = render(m, s);
#define B(le) value_of(out, "sluice_request_duration_seconds_bucket{route=\"r\",le=\"" le "\"}")
    assert_true(B("0.0005") == 2);
    assert_true(B("0.001") == 3);
    assert_true(B("0.0025") == 3);
    assert_true(B("0.005") == 3);
    assert_true(B("0.01") == 4);
    assert_true(B("30") == 4);
    assert_true(B("60") == 5);
    assert_true(B("+Inf") == 6);
#undef B
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"r\"}") == 6);
    assert_non_null(strstr(out, "sluice_request_duration_seconds_sum{route=\"r\"} 120.008000002\n"));
    assert_int_equal(count_lines_with(out, "sluice_request_duration_seconds_bucket{route=\"r\""),
                     SL__METRICS_NBUCKETS + 1);
    /* Every bound really is ascending and matches its text. */
    for (size_t i = 0; i < SL__METRICS_NBUCKETS; i++) {
        assert_true(strtod(sl__metrics_bounds_text[i], NULL) * 1e9 - (double)sl__metrics_bounds_ns[i] < 1);
        if (i > 0)
            assert_true(sl__metrics_bounds_ns[i] > sl__metrics_bounds_ns[i - 1]);
    }
    free(out);
    sl_metrics_worker_destroy(w);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_label_escaping(void **state)
{
    /* The loader only accepts [A-Za-z0-9._-] names; the exposition escapes anyway. */
    sl_route_conf_t routes[] = {{.name = S("a\"b\\c\nd")}};
    sl_target_conf_t targets[] = {{.address = S("x\"y")}};
    sl_upstream_conf_t ups[] = {{.name = S("u\\p"), .targets = targets, .ntargets = 1}};
    sl_config_t cfg;
    build(&cfg, routes, 1, ups, 1);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    sl_metrics_worker_t *w;
    sl_metrics_worker_create(m, &w);
    observe(w, s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    sl_metrics_observe_upstream(w, s, 0, 0, MS);
    char *out = render(m, s);
    assert_true(value_of(out, REQ("a\\\"b\\\\c\\nd", "GET", "200", "")) == 1);
    assert_true(value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"u\\\\p\",target=\"x\\\"y\"}") == 1);
    free(out);
    sl_metrics_worker_destroy(w);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_reload_keeps_series(void **state)
{
    sl_route_conf_t r1[] = {{.name = S("a")}, {.name = S("b")}};
    sl_route_conf_t r2[] = {{.name = S("b")}, {.name = S("c")}}; /* a removed, b moved, c new */
    sl_route_conf_t r3[] = {{.name = S("a")}};
    sl_target_conf_t t1[] = {{.address = S("10.0.0.1:1")}, {.address = S("10.0.0.2:1")}};
    sl_target_conf_t t2[] = {{.address = S("10.0.0.2:1")}};
    sl_upstream_conf_t u1[] = {{.name = S("up"), .targets = t1, .ntargets = 2}};
    sl_upstream_conf_t u2[] = {{.name = S("up"), .targets = t2, .ntargets = 1}};
    sl_config_t c1, c2, c3;
    build(&c1, r1, 2, u1, 1);
    build(&c2, r2, 2, u2, 1);
    build(&c3, r3, 1, NULL, 0);

    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_worker_t *w;
    sl_metrics_worker_create(m, &w);
    sl_metrics_schema_t *s1, *s2, *s3;
    sl_metrics_schema_create(m, &c1, &s1);
    for (int i = 0; i < 2; i++)
        observe(w, s1, &c1, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    for (int i = 0; i < 3; i++)
        observe(w, s1, &c1, 1, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    sl_metrics_observe_upstream(w, s1, 0, 1, MS);

    sl_metrics_schema_create(m, &c2, &s2);
    for (int i = 0; i < 4; i++)
        observe(w, s2, &c2, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    sl_metrics_observe_upstream(w, s2, 0, 0, MS);
    /* Exchanges that started under c1 but are logged with s2: found by name, or overflow. */
    sl_exchange_t x = exchange(&c1, 1, SL_METHOD_GET, 200, SL_CAUSE_NONE);
    sl_metrics_observe_exchange(w, s2, &x, x.start_ns + MS);
    x = exchange(&c1, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE);
    sl_metrics_observe_exchange(w, s2, &x, x.start_ns + MS);

    char *out = render(m, s2);
    assert_true(value_of(out, REQ("b", "GET", "200", "")) == 8);
    assert_null(strstr(out, "route=\"a\""));
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"c\"}") == 0);
    assert_true(value_of(out, REQ("(overflow)", "GET", "200", "")) == 1);
    assert_true(value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"up\",target=\"10.0.0.2:1\"}") == 2);
    assert_null(strstr(out, "10.0.0.1:1"));
    free(out);

    /* `a` comes back: its counter resumes where it was instead of restarting at zero. */
    sl_metrics_schema_create(m, &c3, &s3);
    observe(w, s3, &c3, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    out = render(m, s3);
    assert_true(value_of(out, REQ("a", "GET", "200", "")) == 3);
    assert_null(strstr(out, "route=\"b\""));
    free(out);

    sl_metrics_schema_destroy(s1);
    sl_metrics_schema_destroy(s2);
    sl_metrics_schema_destroy(s3);
    sl_metrics_worker_destroy(w);
    sl_metrics_destroy(m);
}

static void test_key_table_overflow(void **state)
{
    sl_route_conf_t routes[] = {{.name = S("r")}};
    sl_config_t cfg;
    build(&cfg, routes, 1, NULL, 0);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    sl_metrics_worker_t *w[2];
    sl_metrics_worker_create(m, &w[0]);
    sl_metrics_worker_create(m, &w[1]);

    const int extra = 6;
    for (int i = 0; i < SL_METRICS_ROUTE_KEYS + extra; i++)
        observe(w[0], s, &cfg, 0, SL_METHOD_GET, 200 + i, SL_CAUSE_NONE, MS);
    /* Keys already in the full table keep their own series. */
    observe(w[0], s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    /* Another worker's table is its own: its keys are not lost to w[0]'s overflow. */
    observe(w[1], s, &cfg, 0, SL_METHOD_PUT, 204, SL_CAUSE_NONE, MS);

    char *out = render(m, s);
    assert_true(value_of(out, REQ("r", "GET", "200", "")) == 2);
    assert_true(value_of(out, REQ("r", "PUT", "204", "")) == 1);
    assert_true(value_of(out, REQ("r", "OTHER", "other", "other")) == extra);
    assert_int_equal(count_lines_with(out, "sluice_requests_total{route=\"r\""), SL_METRICS_ROUTE_KEYS + 2);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"r\"}") ==
                SL_METRICS_ROUTE_KEYS + extra + 2);
    free(out);
    sl_metrics_worker_destroy(w[0]);
    sl_metrics_worker_destroy(w[1]);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_name_cap(void **state)
{
    size_t n = SL_METRICS_MAX_ROUTES + 3;
    sl_route_conf_t *routes = calloc(n, sizeof(*routes));
    char(*names)[16] = calloc(n, sizeof(*names));
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(names[i], sizeof(names[i]), "r%zu", i);
        routes[i].name = (sl_str_t){names[i], (size_t)len};
    }
    sl_config_t cfg;
    build(&cfg, routes, n, NULL, 0);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_worker_t *w;
    sl_metrics_worker_create(m, &w);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s); /* logs one warning */
    observe(w, s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    observe(w, s, &cfg, (long)n - 1, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    observe(w, s, &cfg, (long)n - 2, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    char *out = render(m, s);
    assert_true(value_of(out, REQ("r0", "GET", "200", "")) == 1);
    assert_true(value_of(out, REQ("(overflow)", "GET", "200", "")) == 2);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"(overflow)\"}") == 2);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"r4095\"}") == 0);
    assert_null(strstr(out, "route=\"r4096\""));
    free(out);
    sl_metrics_worker_destroy(w);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
    free(routes);
    free(names);
}

static void test_worker_destroy_keeps_counts(void **state)
{
    sl_route_conf_t routes[] = {{.name = S("r")}};
    sl_target_conf_t targets[] = {{.address = S("t:1")}};
    sl_upstream_conf_t ups[] = {{.name = S("u"), .targets = targets, .ntargets = 1}};
    sl_config_t cfg;
    build(&cfg, routes, 1, ups, 1);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_worker_t *w1, *w2;
    sl_metrics_worker_create(m, &w1);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    sl_metrics_worker_create(m, &w2); /* created after the schema: gets storage for its slots */
    observe(w1, s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    observe(w2, s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    sl_metrics_observe_upstream(w1, s, 0, 0, MS);
    sl_metrics_connection_opened(w1);
    sl_metrics_worker_destroy(w1);
    char *out = render(m, s);
    assert_true(value_of(out, REQ("r", "GET", "200", "")) == 2);
    assert_true(value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"u\",target=\"t:1\"}") == 1);
    assert_true(value_of(out, "sluice_connections_accepted_total") == 1);
    assert_true(value_of(out, "sluice_connections{state=\"idle\"}") == 0);
    free(out);
    sl_metrics_worker_destroy(w2);
    out = render(m, NULL); /* without a schema: only unrouted and process-wide series */
    assert_true(value_of(out, "sluice_connections_accepted_total") == 1);
    assert_null(strstr(out, "route=\"r\""));
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"none\"}") == 0);
    free(out);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_checker_rejects(void **state)
{
    /* The checker must be able to say no, or the render checks above prove nothing. */
    const char *bad[] = {
        "# TYPE a counter\na{x=\"q\"q\"} 1\n",
        "# TYPE a counter\na{x=\"\\t\"} 1\n",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\nb 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na 1",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# TYPE a counter\n# TYPE a counter\na 1\n",
    };
    for (size_t i = 0; i < SL_ARRAY_SIZE(bad); i++)
        assert_non_null(check_exposition(bad[i]));
    assert_null(check_exposition("# HELP a x\n# TYPE a counter\na{x=\"q\\\"\\\\\\n\"} 1\n# TYPE h histogram\n"
                                 "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n"));
}

/* ---- writers racing a scraper ------------------------------------------------------------- */

#define RACE_N 200000

typedef struct race {
    sl_metrics_worker_t *w;
    const sl_metrics_schema_t *s;
    const sl_config_t *cfg;
    int id;
} race_t;

static atomic_int writers_left;

static void *race_writer(void *arg)
{
    race_t *r = arg;
    for (int i = 0; i < RACE_N; i++) {
        observe(r->w, r->s, r->cfg, i & 1, SL_METHOD_GET, 200 + (i % 3), SL_CAUSE_NONE, (uint64_t)(i % 1000) * MS);
        sl_metrics_observe_upstream(r->w, r->s, 0, (size_t)r->id, (uint64_t)i);
        if ((i & 1023) == 0)
            sl_metrics_connection_opened(r->w);
    }
    atomic_fetch_sub(&writers_left, 1);
    return NULL;
}

typedef struct scraper {
    sl_metrics_t *m;
    const sl_metrics_schema_t *s;
    int renders;
    bool monotonic;
} scraper_t;

static void *race_scraper(void *arg)
{
    scraper_t *sc = arg;
    double prev = 0, prev_count = 0;
    sc->monotonic = true;
    do {
        char *out = NULL;
        size_t len;
        sl_metrics_render(sc->m, sc->s, NULL, &out, &len);
        const char *err = check_exposition(out);
        if (err != NULL) {
            fprintf(stderr, "scrape %d: invalid exposition: %s\n", sc->renders, err);
            sc->monotonic = false;
        }
        double v = value_of(out, REQ("a", "GET", "200", ""));
        double c = value_of(out, "sluice_request_duration_seconds_count{route=\"b\"}");
        if ((v >= 0 && v < prev) || c < prev_count) {
            fprintf(stderr, "scrape %d: a counter went down (%g < %g or %g < %g)\n", sc->renders, v, prev, c,
                    prev_count);
            sc->monotonic = false;
        }
        prev = v > 0 ? v : prev;
        prev_count = c;
        free(out);
        sc->renders++;
    } while (atomic_load(&writers_left) > 0);
    return NULL;
}

static void test_concurrent_render(void **state)
{
    sl_route_conf_t routes[] = {{.name = S("a")}, {.name = S("b")}};
    sl_target_conf_t targets[] = {{.address = S("t0:1")}, {.address = S("t1:1")}};
    sl_upstream_conf_t ups[] = {{.name = S("u"), .targets = targets, .ntargets = 2}};
    sl_config_t cfg;
    build(&cfg, routes, 2, ups, 1);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    race_t rw[2];
    pthread_t th[3];
    atomic_store(&writers_left, 2);
    for (int i = 0; i < 2; i++) {
        rw[i] = (race_t){.s = s, .cfg = &cfg, .id = i};
        sl_metrics_worker_create(m, &rw[i].w);
    }
    scraper_t sc = {.m = m, .s = s};
    assert_int_equal(pthread_create(&th[2], NULL, race_scraper, &sc), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_writer, &rw[i]), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_true(sc.monotonic);
    assert_true(sc.renders > 0);

    char *out = render(m, s);
    /* Per writer: even i → route a, statuses cycle 200,201,202 over i. */
    double a200 = 0;
    for (int i = 0; i < RACE_N; i += 2)
        a200 += (200 + (i % 3)) == 200;
    assert_true(value_of(out, REQ("a", "GET", "200", "")) == 2 * a200);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"a\"}") == RACE_N);
    assert_true(value_of(out, "sluice_request_duration_seconds_count{route=\"b\"}") == RACE_N);
    assert_true(value_of(out, "sluice_upstream_duration_seconds_count{upstream=\"u\",target=\"t1:1\"}") == RACE_N);
    assert_true(value_of(out, "sluice_bytes_total{direction=\"in\"}") == 2.0 * RACE_N * 10);
    assert_true(value_of(out, "sluice_connections_accepted_total") == 2 * ((RACE_N + 1023) / 1024));
    free(out);
    fprintf(stderr, "concurrent: %d renders while writing\n", sc.renders);
    for (int i = 0; i < 2; i++)
        sl_metrics_worker_destroy(rw[i].w);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

/* ---- per-target failures, target gauges, the unmatched sampler ---------------------------- */

static bool fake_status(void *ctx, size_t u, size_t t, sl_metrics_target_status_t *out)
{
    (void)ctx;
    if (u == 0 && t == 1)
        return false; /* unknown: no sample */
    out->healthy = t == 0;
    out->circuit = t == 0 ? 0 : 2;
    return true;
}

#define ERR(up, tg, cause) "sluice_upstream_errors_total{upstream=\"" up "\",target=\"" tg "\",cause=\"" cause "\"}"

static void test_upstream_errors_and_gauges(void **state)
{
    sl_target_conf_t targets[] = {{.address = S("10.0.0.1:1")}, {.address = S("10.0.0.2:1")}};
    sl_target_conf_t targets2[] = {{.address = S("10.0.0.3:1")}};
    sl_upstream_conf_t ups[] = {{.name = S("a"), .targets = targets, .ntargets = 2},
                                {.name = S("b"), .targets = targets2, .ntargets = 1}};
    sl_config_t cfg;
    build(&cfg, NULL, 0, ups, 2);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    assert_int_equal(sl_metrics_schema_create(m, &cfg, &s), 0);
    sl_metrics_worker_t *w[2];
    sl_metrics_worker_create(m, &w[0]);
    sl_metrics_worker_create(m, &w[1]);
    for (int i = 0; i < 3; i++)
        sl_metrics_observe_upstream_failure(w[0], s, 0, 0, SL_CAUSE_UPSTREAM_CONNECT_FAILED);
    sl_metrics_observe_upstream_failure(w[1], s, 0, 0, SL_CAUSE_UPSTREAM_CONNECT_FAILED);
    sl_metrics_observe_upstream_failure(w[1], s, 0, 1, SL_CAUSE_UPSTREAM_RESET);
    sl_metrics_observe_upstream_failure(w[1], s, 0, 1, SL_CAUSE_UPSTREAM_TIMEOUT);
    sl_metrics_observe_upstream_failure(w[1], s, 0, 1, SL_CAUSE_NONE); /* a 5xx from the target */
    sl_metrics_observe_upstream_failure(w[1], s, 0, 1, SL_CAUSE_UPSTREAM_BAD_RESPONSE);
    sl_metrics_observe_upstream_failure(w[1], s, 0, 1, SL_CAUSE_RATE_LIMITED);   /* not a try cause: other */
    sl_metrics_observe_upstream_failure(w[0], s, 9, 0, SL_CAUSE_UPSTREAM_RESET); /* out of range: overflow */
    sl_metrics_observe_upstream_failure(w[0], s, 1, 5, SL_CAUSE_UPSTREAM_RESET);

    sl_metrics_status_source_t src = {.get = fake_status};
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(sl_metrics_render(m, s, &src, &out, &len), 0);
    const char *err = check_exposition(out);
    if (err != NULL)
        fprintf(stderr, "invalid exposition: %s\n%s", err, out);
    assert_null(err);
    assert_true(value_of(out, ERR("a", "10.0.0.1:1", "upstream_connect_failed")) == 4);
    assert_true(value_of(out, ERR("a", "10.0.0.1:1", "upstream_reset")) == 0);
    assert_true(value_of(out, ERR("a", "10.0.0.2:1", "upstream_reset")) == 1);
    assert_true(value_of(out, ERR("a", "10.0.0.2:1", "upstream_timeout")) == 1);
    assert_true(value_of(out, ERR("a", "10.0.0.2:1", "upstream_5xx")) == 1);
    assert_true(value_of(out, ERR("a", "10.0.0.2:1", "upstream_bad_response")) == 1);
    assert_true(value_of(out, ERR("a", "10.0.0.2:1", "other")) == 1);
    assert_true(value_of(out, ERR("b", "10.0.0.3:1", "upstream_connect_failed")) == 0);
    assert_true(value_of(out, ERR("(overflow)", "(overflow)", "upstream_reset")) == 2);
    /* six kinds per target: 3 targets + overflow */
    assert_int_equal(count_lines_with(out, "sluice_upstream_errors_total{"), 24);
    assert_true(value_of(out, "sluice_upstream_target_healthy{upstream=\"a\",target=\"10.0.0.1:1\"}") == 1);
    assert_true(value_of(out, "sluice_upstream_target_healthy{upstream=\"a\",target=\"10.0.0.2:1\"}") == -1);
    assert_true(value_of(out, "sluice_upstream_target_healthy{upstream=\"b\",target=\"10.0.0.3:1\"}") == 1);
    assert_true(value_of(out, "sluice_circuit_state{upstream=\"a\",target=\"10.0.0.1:1\"}") == 0);
    assert_true(value_of(out, "sluice_circuit_state{upstream=\"b\",target=\"10.0.0.3:1\"}") == 0);
    /* the overflow series is no config target: no gauge */
    assert_int_equal(count_lines_with(out, "sluice_circuit_state{upstream=\"(overflow)\""), 0);
    free(out);
    /* Without a status source the gauge families have no samples (and stay valid). */
    out = render(m, s);
    assert_int_equal(count_lines_with(out, "sluice_circuit_state{"), 0);
    assert_int_equal(count_lines_with(out, "# TYPE sluice_circuit_state gauge"), 1);
    free(out);

    /* The read API gives the same sums, by stable id; a worker's destruction keeps them. */
    sl_metrics_worker_destroy(w[0]);
    sl_metrics_target_sum_t ts;
    sl_metrics_read_target(m, sl_metrics_target_id(s, 0, 0), &ts);
    assert_true(ts.errors[SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED] == 4);
    sl_metrics_read_target(m, 999999, &ts); /* unknown id: zeros */
    assert_true(ts.errors[SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED] == 0);
    assert_string_equal(sl_metrics_upstream_error_name(SL_METRICS_UPSTREAM_ERR_5XX), "upstream_5xx");
    assert_string_equal(sl_metrics_upstream_error_name((enum sl_metrics_upstream_error)77), "other");
    sl_metrics_worker_destroy(w[1]);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_read_route_by_cause(void **state)
{
    sl_route_conf_t routes[] = {{.name = S("r")}};
    sl_config_t cfg;
    build(&cfg, routes, 1, NULL, 0);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    sl_metrics_worker_t *w;
    sl_metrics_worker_create(m, &w);
    for (int i = 0; i < 4; i++)
        observe(w, s, &cfg, 0, SL_METHOD_GET, 200, SL_CAUSE_NONE, MS);
    observe(w, s, &cfg, 0, SL_METHOD_GET, 503, SL_CAUSE_NONE, MS);
    observe(w, s, &cfg, 0, SL_METHOD_POST, 504, SL_CAUSE_UPSTREAM_TIMEOUT, MS);
    observe(w, s, &cfg, -1, SL_METHOD_GET, 404, SL_CAUSE_ROUTE_NOT_FOUND, MS);
    sl_metrics_route_sum_t r;
    sl_metrics_read_route(m, sl_metrics_route_id(s, 0), &r);
    assert_true(r.requests == 6 && r.causes[SL_CAUSE_NONE] == 5 && r.status_5xx == 1);
    assert_true(r.causes[SL_CAUSE_UPSTREAM_TIMEOUT] == 1);
    sl_metrics_read_route(m, sl_metrics_route_id(s, -1), &r);
    assert_true(r.requests == 1 && r.causes[SL_CAUSE_ROUTE_NOT_FOUND] == 1);
    assert_int_equal(sl_metrics_route_id(s, 5), sl_metrics_route_id(NULL, 0)); /* both overflow */
    sl_metrics_worker_destroy(w);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void auth_refused(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_config_t *cfg, long route,
                         enum sl_cause cause, const char *detail)
{
    sl_exchange_t x = exchange(cfg, route, SL_METHOD_GET, cause == SL_CAUSE_FORBIDDEN ? 403 : 401, cause);
    x.cause_detail = detail;
    sl_metrics_observe_exchange(w, s, &x, x.start_ns + MS);
    sl_metrics_observe_auth_failure(w, s, &x);
}

#define AUTH(route, detail) "sluice_auth_failures_total{route=\"" route "\",detail=\"" detail "\"}"

static void test_auth_failures(void **state)
{
    (void)state;
    sl_route_conf_t routes[] = {{.name = S("api")}, {.name = S("web")}};
    sl_config_t cfg;
    build(&cfg, routes, 2, NULL, 0);
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_schema_t *s;
    sl_metrics_schema_create(m, &cfg, &s);
    sl_metrics_worker_t *w1, *w2;
    sl_metrics_worker_create(m, &w1);
    sl_metrics_worker_create(m, &w2);
    /* The codes map to their own index, and the names back; unknown codes and NULL are "other". */
    for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++) {
        const char *name = sl_metrics_auth_detail_name((enum sl_metrics_auth_detail)k);
        assert_int_equal(sl_metrics_auth_detail_of(name), k);
        if (k > 0) /* label order: the exposition relies on it */
            assert_true(strcmp(sl_metrics_auth_detail_name((enum sl_metrics_auth_detail)(k - 1)), name) < 0);
    }
    assert_int_equal(sl_metrics_auth_detail_of(NULL), SL_METRICS_AUTH_OTHER);
    assert_int_equal(sl_metrics_auth_detail_of("introspection_inactive"), SL_METRICS_AUTH_OTHER);
    assert_string_equal(sl_metrics_auth_detail_name(SL_METRICS_AUTH__COUNT), "other");

    char *text = render(m, s);
    assert_int_equal(count_lines_with(text, "sluice_auth_failures_total{"), 0); /* nothing counted yet */
    assert_int_equal(count_lines_with(text, "# TYPE sluice_auth_failures_total counter"), 1);
    free(text);

    for (int i = 0; i < 3; i++)
        auth_refused(w1, s, &cfg, 0, SL_CAUSE_AUTH_INVALID, "jwt_unknown_kid");
    auth_refused(w2, s, &cfg, 0, SL_CAUSE_AUTH_INVALID, "jwt_unknown_kid");
    auth_refused(w2, s, &cfg, 0, SL_CAUSE_AUTH_EXPIRED, "jwt_expired");
    auth_refused(w1, s, &cfg, 1, SL_CAUSE_AUTH_MISSING, "no_credentials");
    auth_refused(w1, s, &cfg, 1, SL_CAUSE_FORBIDDEN, "ip_denied");
    auth_refused(w1, s, &cfg, 1, SL_CAUSE_FORBIDDEN, "something_new");
    /* Not refusals: a proxied answer and an upstream timeout, whatever their detail says. */
    auth_refused(w1, s, &cfg, 1, SL_CAUSE_NONE, "jwt_expired");
    auth_refused(w1, s, &cfg, 1, SL_CAUSE_UPSTREAM_TIMEOUT, "connection refused");

    text = render(m, s);
    assert_true(value_of(text, AUTH("api", "jwt_unknown_kid")) == 4);
    assert_true(value_of(text, AUTH("api", "jwt_expired")) == 1);
    assert_true(value_of(text, AUTH("web", "no_credentials")) == 1);
    assert_true(value_of(text, AUTH("web", "ip_denied")) == 1);
    assert_true(value_of(text, AUTH("web", "other")) == 1);
    assert_int_equal(count_lines_with(text, "sluice_auth_failures_total{"), 5);
    /* Series sorted by route, then detail: api's expired before its unknown kid. */
    assert_true(strstr(text, AUTH("api", "jwt_expired")) < strstr(text, AUTH("api", "jwt_unknown_kid")));
    assert_true(strstr(text, AUTH("api", "jwt_unknown_kid")) < strstr(text, AUTH("web", "ip_denied")));
    free(text);

    sl_metrics_route_sum_t r;
    sl_metrics_read_route(m, sl_metrics_route_id(s, 0), &r);
    assert_true(r.auth[SL_METRICS_AUTH_JWT_UNKNOWN_KID] == 4 && r.auth[SL_METRICS_AUTH_JWT_EXPIRED] == 1);
    assert_true(r.causes[SL_CAUSE_AUTH_INVALID] == 4);

    /* A worker that goes away keeps its counts in the totals. */
    sl_metrics_worker_destroy(w1);
    text = render(m, s);
    assert_true(value_of(text, AUTH("api", "jwt_unknown_kid")) == 4);
    assert_true(value_of(text, AUTH("web", "other")) == 1);
    free(text);
    sl_metrics_worker_destroy(w2);
    sl_metrics_schema_destroy(s);
    sl_metrics_destroy(m);
}

static void test_unmatched_sampler(void **state)
{
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sl_metrics_worker_t *w[2];
    sl_metrics_worker_create(m, &w[0]);
    sl_metrics_worker_create(m, &w[1]);
    sl_metrics_unmatched_t out[64];
    assert_int_equal(sl_metrics_read_unmatched(m, out, 64), 0);

    for (int i = 0; i < 50; i++)
        sl_metrics_observe_unmatched(w[i % 2], S("Old.Example.COM"), S("/v1/users?x=1"));
    for (int i = 0; i < 20; i++)
        sl_metrics_observe_unmatched(w[0], S("api"), S("/wp-login.php"));
    /* Bytes a client may send that must not reach JSON or a terminal as they are. */
    sl_metrics_observe_unmatched(w[1], (sl_str_t){"h\xc3\xa9 \"x\n", 7},
                                 (sl_str_t){"/a\x01\x7f"
                                            "b\"/c",
                                            8});
    sl_metrics_observe_unmatched(w[1], S(""), S(""));
    /* A host and a segment longer than the key. */
    char longhost[200], longpath[200];
    memset(longhost, 'h', sizeof(longhost));
    longpath[0] = '/';
    memset(longpath + 1, 'p', sizeof(longpath) - 1);
    sl_metrics_observe_unmatched(w[1], (sl_str_t){longhost, sizeof(longhost)}, (sl_str_t){longpath, sizeof(longpath)});

    size_t n = sl_metrics_read_unmatched(m, out, 64);
    assert_int_equal(n, 5);
    assert_string_equal(out[0].host, "old.example.com"); /* merged over both workers */
    assert_string_equal(out[0].prefix, "/v1");
    assert_true(out[0].count == 50);
    assert_string_equal(out[1].host, "api");
    assert_string_equal(out[1].prefix, "/wp-login.php");
    assert_true(out[1].count == 20);
    bool saw_hostile = false, saw_empty = false, saw_long = false;
    for (size_t i = 2; i < n; i++) {
        for (const char *p = out[i].host; *p; p++)
            assert_true(*p > 0x20 && *p < 0x7f);
        for (const char *p = out[i].prefix; *p; p++)
            assert_true(*p > 0x20 && *p < 0x7f);
        saw_hostile |= strcmp(out[i].host, "h???\"x?") == 0 && strcmp(out[i].prefix, "/a??b\"") == 0;
        saw_empty |= out[i].host[0] == '\0' && strcmp(out[i].prefix, "/") == 0;
        saw_long |=
            strlen(out[i].host) == SL_METRICS_UNMATCHED_HOST && strlen(out[i].prefix) < SL_METRICS_UNMATCHED_KEY;
    }
    assert_true(saw_hostile && saw_empty && saw_long);
    assert_int_equal(sl_metrics_read_unmatched(m, out, 1), 1); /* `max` holds */

    /* Space-saving: 100 one-off keys cannot push out a key that keeps coming. */
    for (int i = 0; i < 100; i++) {
        char seg[16];
        int k = snprintf(seg, sizeof(seg), "/k%d", i);
        sl_metrics_observe_unmatched(w[0], S("scan"), (sl_str_t){seg, (size_t)k});
        sl_metrics_observe_unmatched(w[0], S("api"), S("/wp-login.php"));
    }
    n = sl_metrics_read_unmatched(m, out, 64);
    assert_true(n <= 2 * SL_METRICS_UNMATCHED_TOP);
    assert_string_equal(out[0].host, "api");
    assert_true(out[0].count >= 120);
    sl_metrics_worker_destroy(w[0]);
    sl_metrics_worker_destroy(w[1]);
    sl_metrics_destroy(m);
}

/* A worker rewriting sampler entries while the main thread reads them (run under TSan in CI):
 * every entry read is a key that was written, with a count that key really had. */
typedef struct sampler_race {
    sl_metrics_worker_t *w;
    atomic_bool done;
} sampler_race_t;

static void *sampler_writer(void *arg)
{
    sampler_race_t *r = arg;
    for (int i = 0; i < 200000; i++) {
        char seg[16];
        int k = snprintf(seg, sizeof(seg), "/s%d", i % 97);
        sl_metrics_observe_unmatched(r->w, S("race.test"), (sl_str_t){seg, (size_t)k});
    }
    atomic_store(&r->done, true);
    return NULL;
}

static void test_unmatched_concurrent(void **state)
{
    sl_metrics_t *m;
    sl_metrics_create(&m);
    sampler_race_t r = {0};
    sl_metrics_worker_create(m, &r.w);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, sampler_writer, &r), 0);
    int reads = 0;
    do {
        sl_metrics_unmatched_t out[SL_METRICS_UNMATCHED_TOP];
        size_t n = sl_metrics_read_unmatched(m, out, SL_METRICS_UNMATCHED_TOP);
        for (size_t i = 0; i < n; i++) {
            assert_string_equal(out[i].host, "race.test");
            assert_true(out[i].prefix[0] == '/' && out[i].prefix[1] == 's');
            assert_true(out[i].count >= 1 && out[i].count <= 200000);
        }
        reads++;
    } while (!atomic_load(&r.done));
    pthread_join(th, NULL);
    fprintf(stderr, "sampler: %d reads while writing\n", reads);
    sl_metrics_worker_destroy(r.w);
    sl_metrics_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_rejects),
        cmocka_unit_test(test_workers_sum),
        cmocka_unit_test(test_histogram_edges),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_reload_keeps_series),
        cmocka_unit_test(test_key_table_overflow),
        cmocka_unit_test(test_name_cap),
        cmocka_unit_test(test_worker_destroy_keeps_counts),
        cmocka_unit_test(test_concurrent_render),
        cmocka_unit_test(test_upstream_errors_and_gauges),
        cmocka_unit_test(test_read_route_by_cause),
        cmocka_unit_test(test_auth_failures),
        cmocka_unit_test(test_unmatched_sampler),
        cmocka_unit_test(test_unmatched_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
