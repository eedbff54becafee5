/*
 * The operator commands (cli.h): each asks the admin API (docs/admin.md) one or a few
 * questions through the blocking client (client.h) and turns the JSON into a table or
 * paragraphs. Everything a user can get wrong (no gateway on the address, a missing token, a
 * name that does not exist, an answer that is not JSON) ends in one "sluice: ..." line on
 * stderr and exit code 1, so scripts and people see the same thing.
 */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/table.h"
#include "common/bug.h"
#include "common/error.h"
#include "config/config.h"

#define DEFAULT_ADMIN   "127.0.0.1:8001"
#define DEFAULT_TIMEOUT 5000

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

typedef struct admin {
    sl_cli_url_t url;
    char display[2400]; /* the URL as the user should read it in messages */
    const char *token;
    int timeout_ms;
    bool json;
} admin_t;

/* ---- finding and asking the admin API ------------------------------------------------------ */

/* A listener bound to every address is reached on loopback. */
static void connectable(const char *address, char *out, size_t len)
{
    if (strncmp(address, "0.0.0.0:", 8) == 0)
        snprintf(out, len, "127.0.0.1:%s", address + 8);
    else if (strncmp(address, "[::]:", 5) == 0)
        snprintf(out, len, "[::1]:%s", address + 5);
    else if (address[0] == ':')
        snprintf(out, len, "127.0.0.1%s", address);
    else
        snprintf(out, len, "%s", address);
}

/* The admin address of the config file, when there is one and it loads. */
static bool admin_from_config(const char *path, char *out, size_t len)
{
    if (path == NULL) {
        path = "sluice.yaml";
        if (access(path, R_OK) != 0)
            return false;
    }
    sl_config_t *cfg = NULL;
    sl_config_errors_t errs = {0};
    int rc = sl_config_load_file(path, &cfg, &errs);
    sl_config_errors_dispose(&errs);
    if (rc != 0)
        return false;
    bool ok = cfg->admin.enabled && cfg->admin.address.len > 0 && cfg->admin.address.len < 256;
    if (ok) {
        char addr[256];
        snprintf(addr, sizeof(addr), "%.*s", (int)cfg->admin.address.len, cfg->admin.address.ptr);
        connectable(addr, out, len);
    }
    sl_config_unref(cfg);
    return ok;
}

static int admin_init(const sl_cli_opts_t *o, admin_t *a)
{
    memset(a, 0, sizeof(*a));
    a->json = o->json;
    a->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT;
    a->token = getenv("SLUICE_ADMIN_TOKEN");
    char spec[2200];
    if (o->admin != NULL) {
        snprintf(spec, sizeof(spec), "%s%s", strstr(o->admin, "://") ? "" : "http://", o->admin);
    } else {
        char addr[300];
        if (!admin_from_config(o->config_path, addr, sizeof(addr)))
            snprintf(addr, sizeof(addr), "%s", DEFAULT_ADMIN);
        snprintf(spec, sizeof(spec), "http://%s", addr);
    }
    const char *why = NULL;
    if (sl_cli_url_parse(spec, &a->url, &why) != 0) {
        fprintf(stderr, "sluice: bad admin URL '%s': %s\n", o->admin != NULL ? o->admin : spec, why);
        return EXIT_USAGE;
    }
    /* A path in --admin (an admin API behind a proxy prefix) is kept as the prefix. */
    size_t plen = strlen(a->url.path);
    if (plen > 0 && a->url.path[plen - 1] == '/')
        a->url.path[plen - 1] = '\0';
    snprintf(a->display, sizeof(a->display), "%s", spec);
    return EXIT_OK;
}

/* Percent-encodes a name for one path segment (RFC 3986 §2.3: unreserved characters stay). */
static void segment(const char *s, char *out, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s && n + 4 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~') {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
}

/* The one line for an error object of the API: `error: message`. */
static void print_api_error(const admin_t *a, int status, json_t *body)
{
    const char *err = json_string_value(json_object_get(body, "error"));
    const char *msg = json_string_value(json_object_get(body, "message"));
    fprintf(stderr, "sluice: the admin API at %s answered %d%s%s%s%s\n", a->display, status, err ? " " : "",
            err ? err : "", msg ? ": " : "", msg ? msg : "");
}

/*
 * Asks `method path` and parses the JSON answer into `*out` (the caller decrefs it) and its
 * status. Failures that no caller can do anything about (no connection, 401, not JSON) are
 * printed here and return EXIT_FAIL with `*out` untouched.
 */
static int admin_call(const admin_t *a, const char *method, const char *path, json_t **out, int *status)
{
    sl_cli_url_t url = a->url;
    if (snprintf(url.path, sizeof(url.path), "%s%s", a->url.path, path) >= (int)sizeof(url.path)) {
        fprintf(stderr, "sluice: the request path is too long\n");
        return EXIT_FAIL;
    }
    sl_cli_request_t req = {.method = method, .token = a->token, .timeout_ms = a->timeout_ms};
    sl_cli_response_t resp;
    int rc = sl_cli_http(&url, &req, &resp, NULL);
    if (rc == SL_ETIMEDOUT || rc == -ETIMEDOUT) {
        fprintf(stderr,
                "sluice: the admin API at %s did not answer within %d s (is the gateway stuck or is --admin another "
                "service?)\n",
                a->display, (a->timeout_ms + 999) / 1000);
        return EXIT_FAIL;
    }
    if (rc == -ECONNREFUSED || rc == SL_ENOTFOUND || rc == -EHOSTUNREACH || rc == -ENETUNREACH) {
        fprintf(stderr, "sluice: cannot reach the admin API at %s: %s (is sluice running? set --admin)\n", a->display,
                sl_cli_strerror(rc));
        return EXIT_FAIL;
    }
    if (rc != 0) {
        fprintf(stderr, "sluice: no valid answer from the admin API at %s: %s\n", a->display, sl_cli_strerror(rc));
        return EXIT_FAIL;
    }
    if (resp.status == 401) {
        if (a->token == NULL || a->token[0] == '\0')
            fprintf(stderr,
                    "sluice: the admin API at %s requires a token: set SLUICE_ADMIN_TOKEN to the value of "
                    "the gateway's admin.token_env variable\n",
                    a->display);
        else
            fprintf(stderr, "sluice: the admin API at %s refused the token in SLUICE_ADMIN_TOKEN (401)\n", a->display);
        sl_cli_response_dispose(&resp);
        return EXIT_FAIL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(resp.body, resp.body_len, 0, &jerr);
    if (j == NULL) {
        fprintf(stderr,
                "sluice: the admin API at %s answered %d with a body that is not JSON (is --admin the admin "
                "listener?)\n",
                a->display, resp.status);
        sl_cli_response_dispose(&resp);
        return EXIT_FAIL;
    }
    *status = resp.status;
    *out = j;
    sl_cli_response_dispose(&resp);
    return EXIT_OK;
}

/* admin_call for callers that accept only 200 and the API's own errors. */
static int admin_get(const admin_t *a, const char *path, json_t **out)
{
    json_t *j;
    int status;
    int rc = admin_call(a, "GET", path, &j, &status);
    if (rc != EXIT_OK)
        return rc;
    if (status != 200) {
        print_api_error(a, status, j);
        json_decref(j);
        return EXIT_FAIL;
    }
    *out = j;
    return EXIT_OK;
}

static void print_json_flags(const json_t *j, size_t flags)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | flags);
    if (s != NULL) {
        puts(s);
        free(s);
    }
}

static void print_json(const json_t *j)
{
    print_json_flags(j, 0);
}

/* A JSON value as short text for a table cell or a paragraph. */
static void scalar_text(const json_t *v, char *buf, size_t len)
{
    if (v == NULL || json_is_null(v)) {
        snprintf(buf, len, "-");
    } else if (json_is_string(v)) {
        snprintf(buf, len, "%s", json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        snprintf(buf, len, "%g", json_real_value(v));
    } else if (json_is_boolean(v)) {
        snprintf(buf, len, "%s", json_is_true(v) ? "true" : "false");
    } else {
        char *s = json_dumps(v, JSON_COMPACT);
        snprintf(buf, len, "%s", s ? s : "?");
        free(s);
    }
}

/* The items of a JSON array joined with ", ", or `empty` when there are none. */
static void join(const json_t *arr, const char *empty, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        char item[512];
        scalar_text(v, item, sizeof(item));
        int w = snprintf(buf + n, len - n, "%s%s", i > 0 ? ", " : "", item);
        if (w < 0 || (size_t)w >= len - n)
            break;
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, len, "%s", empty);
}

/* ---- reload -------------------------------------------------------------------------------- */

int sl_cli_reload(const sl_cli_opts_t *opts)
{
    admin_t a;
    int rc = admin_init(opts, &a);
    if (rc != EXIT_OK)
        return rc;
    json_t *j;
    int status;
    if ((rc = admin_call(&a, "POST", "/reload", &j, &status)) != EXIT_OK)
        return rc;
    if (a.json)
        print_json(j);
    if (status == 200) {
        if (!a.json)
            printf("reloaded: generation %" JSON_INTEGER_FORMAT "\n",
                   json_integer_value(json_object_get(j, "generation")));
        json_decref(j);
        return EXIT_OK;
    }
    json_t *errs = json_object_get(j, "errors");
    if (status == 422 && json_is_array(errs)) {
        size_t i;
        json_t *e;
        json_array_foreach(errs, i, e)
        {
            const char *file = json_string_value(json_object_get(e, "file"));
            const char *msg = json_string_value(json_object_get(e, "message"));
            json_int_t line = json_integer_value(json_object_get(e, "line"));
            json_int_t col = json_integer_value(json_object_get(e, "col"));
            if (a.json)
                continue;
            if (line > 0)
                fprintf(stderr, "%s:%" JSON_INTEGER_FORMAT ":%" JSON_INTEGER_FORMAT ": %s\n", file ? file : "?", line,
                        col, msg ? msg : "?");
            else
                fprintf(stderr, "%s: %s\n", file ? file : "?", msg ? msg : "?");
        }
        fprintf(stderr, "sluice: reload failed with %zu error%s; the running config is unchanged\n",
                json_array_size(errs), json_array_size(errs) == 1 ? "" : "s");
    } else {
        print_api_error(&a, status, j);
    }
    json_decref(j);
    return EXIT_FAIL;
}

/* ---- health -------------------------------------------------------------------------------- */

static void format_duration(json_int_t s, char *buf, size_t len)
{
    if (s >= 86400)
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT "d%" JSON_INTEGER_FORMAT "h", s / 86400, s % 86400 / 3600);
    else if (s >= 3600)
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT "h%" JSON_INTEGER_FORMAT "m", s / 3600, s % 3600 / 60);
    else if (s >= 60)
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT "m%" JSON_INTEGER_FORMAT "s", s / 60, s % 60);
    else
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT "s", s);
}

static void print_status_line(const json_t *st)
{
    char up[32];
    format_duration(json_integer_value(json_object_get(st, "uptime_seconds")), up, sizeof(up));
    const json_t *cfg = json_object_get(st, "config");
    const char *version = json_string_value(json_object_get(st, "version"));
    printf("sluice %s, pid %" JSON_INTEGER_FORMAT ", up %s, %" JSON_INTEGER_FORMAT
           " workers, config generation %" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT " active connections\n",
           version != NULL ? version : "?", json_integer_value(json_object_get(st, "pid")), up,
           json_integer_value(json_object_get(st, "workers")), json_integer_value(json_object_get(cfg, "generation")),
           json_integer_value(json_object_get(json_object_get(st, "connections"), "active")));
}

static void health_rows(sl_cli_table_t *t, const char *name, const json_t *h)
{
    size_t i;
    json_t *tg;
    if (json_array_size(json_object_get(h, "targets")) == 0) {
        const char *cells[] = {name, "(no targets)", NULL, NULL, NULL, NULL, NULL, NULL};
        sl_cli_table_add(t, cells);
        return;
    }
    json_array_foreach(json_object_get(h, "targets"), i, tg)
    {
        char health[64], inflight[32], ewma[32], err[64], check[160];
        const char *hs = json_string_value(json_object_get(tg, "health"));
        snprintf(health, sizeof(health), "%s%s", hs ? hs : "-",
                 json_is_true(json_object_get(tg, "ejected")) ? ", ejected" : "");
        scalar_text(json_object_get(tg, "inflight"), inflight, sizeof(inflight));
        const json_t *e = json_object_get(tg, "ewma_ms");
        if (json_is_number(e))
            snprintf(ewma, sizeof(ewma), "%.1fms", json_number_value(e));
        else
            snprintf(ewma, sizeof(ewma), "-");
        json_int_t reqs = json_integer_value(json_object_get(tg, "requests_1m"));
        if (reqs > 0)
            snprintf(err, sizeof(err), "%.1f%% (%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT ")",
                     100.0 * json_number_value(json_object_get(tg, "error_rate_1m")),
                     json_integer_value(json_object_get(tg, "errors_1m")), reqs);
        else
            snprintf(err, sizeof(err), "-");
        const json_t *lc = json_object_get(tg, "last_check");
        if (json_is_object(lc)) {
            const char *time = json_string_value(json_object_get(lc, "time"));
            const char *res = json_string_value(json_object_get(lc, "result"));
            const char *clock = time != NULL && strchr(time, 'T') ? strchr(time, 'T') + 1 : time;
            snprintf(check, sizeof(check), "%s %s", clock ? clock : "", res ? res : "");
        } else {
            snprintf(check, sizeof(check), "-");
        }
        const char *cells[] = {name,     json_string_value(json_object_get(tg, "address")),
                               health,   json_string_value(json_object_get(tg, "circuit")),
                               inflight, ewma,
                               err,      check};
        sl_cli_table_add(t, cells);
    }
}

int sl_cli_health(const sl_cli_opts_t *opts)
{
    admin_t a;
    int rc = admin_init(opts, &a);
    if (rc != EXIT_OK)
        return rc;
    json_t *st;
    if ((rc = admin_get(&a, "/status", &st)) != EXIT_OK)
        return rc;
    json_t *names = json_object_get(st, "upstreams");
    json_t *all = json_array();
    size_t i;
    json_t *n;
    json_array_foreach(names, i, n)
    {
        const char *name = json_string_value(n);
        if (name == NULL)
            continue;
        char seg[800], path[900];
        segment(name, seg, sizeof(seg));
        snprintf(path, sizeof(path), "/upstreams/%s/health", seg);
        json_t *h;
        int status;
        if ((rc = admin_call(&a, "GET", path, &h, &status)) != EXIT_OK)
            break;
        if (status == 404) {
            /* Removed by a reload since /status answered. */
            json_decref(h);
            continue;
        }
        if (status != 200) {
            print_api_error(&a, status, h);
            json_decref(h);
            rc = EXIT_FAIL;
            break;
        }
        if (json_object_get(h, "upstream") == NULL)
            json_object_set_new(h, "upstream", json_string(name));
        json_array_append_new(all, h);
    }
    if (rc == EXIT_OK) {
        if (a.json) {
            json_t *out = json_pack("{s:O, s:O}", "status", st, "upstreams", all);
            print_json(out);
            json_decref(out);
        } else {
            print_status_line(st);
            if (json_array_size(all) == 0) {
                printf("no upstreams configured\n");
            } else {
                static const char *const head[] = {"UPSTREAM",  "TARGET", "HEALTH",      "CIRCUIT",
                                                   "IN-FLIGHT", "EWMA",   "ERR RATE 1M", "LAST CHECK"};
                sl_cli_table_t *t = sl_cli_table_create(SL_ARRAY_SIZE(head), head);
                sl_cli_table_align_right(t, 4);
                sl_cli_table_align_right(t, 5);
                json_array_foreach(all, i, n)
                {
                    health_rows(t, json_string_value(json_object_get(n, "upstream")), n);
                }
                putchar('\n');
                sl_cli_table_print(t, stdout);
                sl_cli_table_destroy(t);
            }
        }
    }
    json_decref(all);
    json_decref(st);
    return rc;
}

/* ---- routes -------------------------------------------------------------------------------- */

int sl_cli_routes(const sl_cli_opts_t *opts)
{
    admin_t a;
    int rc = admin_init(opts, &a);
    if (rc != EXIT_OK)
        return rc;
    json_t *j;
    if ((rc = admin_get(&a, "/routes?view=table", &j)) != EXIT_OK)
        return rc;
    json_t *routes = json_object_get(j, "routes");
    if (!json_is_array(routes)) {
        fprintf(stderr, "sluice: the admin API at %s answered without a \"routes\" array\n", a.display);
        json_decref(j);
        return EXIT_FAIL;
    }
    /* A gateway without the table view answers ?view=table with the plain route objects. */
    if (json_array_size(routes) > 0 && json_object_get(json_array_get(routes, 0), "order") == NULL) {
        fprintf(stderr,
                "sluice: the admin API at %s does not serve the compiled route table (GET /routes?view=table); "
                "is the gateway older than this sluice?\n",
                a.display);
        json_decref(j);
        return EXIT_FAIL;
    }
    if (a.json) {
        print_json(j);
        json_decref(j);
        return EXIT_OK;
    }
    if (json_array_size(routes) == 0) {
        printf("no routes configured: every request is answered 404 route_not_found\n");
        json_decref(j);
        return EXIT_OK;
    }
    /* The headers column only when some route matches on headers: most tables have none. */
    bool with_headers = false;
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        with_headers |= json_array_size(json_object_get(r, "headers")) > 0;
    }
    static const char *const head[] = {"ORDER", "NAME", "HOSTS", "PATH", "METHODS", "HEADERS", "ACTION", "FILTERS"};
    static const char *const head_nh[] = {"ORDER", "NAME", "HOSTS", "PATH", "METHODS", "ACTION", "FILTERS"};
    sl_cli_table_t *t = with_headers ? sl_cli_table_create(SL_ARRAY_SIZE(head), head)
                                     : sl_cli_table_create(SL_ARRAY_SIZE(head_nh), head_nh);
    sl_cli_table_align_right(t, 0);
    json_array_foreach(routes, i, r)
    {
        char order[32], hosts[1024], methods[256], headers[1024], filters[2048];
        scalar_text(json_object_get(r, "order"), order, sizeof(order));
        join(json_object_get(r, "hosts"), "*", hosts, sizeof(hosts));
        join(json_object_get(r, "methods"), "any", methods, sizeof(methods));
        join(json_object_get(r, "headers"), "-", headers, sizeof(headers));
        join(json_object_get(r, "filters"), "-", filters, sizeof(filters));
        const char *name = json_string_value(json_object_get(r, "name"));
        const char *path = json_string_value(json_object_get(r, "path"));
        const char *action = json_string_value(json_object_get(r, "action"));
        const char *cells[] = {order, name, hosts, path, methods, headers, action, filters};
        const char *cells_nh[] = {order, name, hosts, path, methods, action, filters};
        sl_cli_table_add(t, with_headers ? cells : cells_nh);
    }
    sl_cli_table_print(t, stdout);
    sl_cli_table_destroy(t);
    json_decref(j);
    return EXIT_OK;
}

/* ---- probe --------------------------------------------------------------------------------- */

typedef struct probe {
    char address[300];
    sl_cli_url_t url;
    const char *bad; /* the address could not be parsed: why */
    const char *host_header;
    const sl_cli_tls_t *tls; /* NULL: TLS with the defaults when the URL is https:// */
    bool h2;                 /* the HTTP/2 preface instead of a GET */
    sl_cli_timings_t t;
    int status; /* 0 = no response */
    bool h2_ok; /* h2: the server answered with SETTINGS */
    const char *error;
    char detail[300]; /* the reason of a TLS or h2 failure */
} probe_t;

static void run_probe(probe_t *p, int timeout_ms)
{
    p->t = (sl_cli_timings_t){.dns_ms = -1, .connect_ms = -1, .tls_ms = -1, .first_byte_ms = -1, .total_ms = -1};
    if (p->bad != NULL) {
        p->error = p->bad;
        return;
    }
    sl_cli_request_t req = {.method = "GET",
                            .timeout_ms = timeout_ms,
                            .host_header = p->host_header,
                            .tls = p->tls,
                            .detail = p->detail,
                            .detail_len = sizeof(p->detail)};
    sl_cli_response_t resp;
    int rc = p->h2 ? sl_cli_h2_preface(&p->url, &req, &p->t) : sl_cli_http(&p->url, &req, &resp, &p->t);
    if (rc != 0) {
        p->error = (rc == SL_CLI_ETLS || rc == SL_CLI_EH2) && p->detail[0] != '\0' ? p->detail : sl_cli_strerror(rc);
        return;
    }
    if (p->h2) {
        p->h2_ok = true;
        return;
    }
    p->status = resp.status;
    sl_cli_response_dispose(&resp);
}

/* Rounded to microseconds: more digits would only be noise. */
static json_t *ms_json(double ms)
{
    return ms < 0 ? json_null() : json_real(round(ms * 1000) / 1000);
}

static void ms_text(double ms, char *buf, size_t len)
{
    if (ms < 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.1fms", ms);
}

/* A target failed when it gave no HTTP answer, or a 5xx one (it is up but cannot serve). */
static bool probe_failed(const probe_t *p)
{
    return p->error != NULL || p->status >= 500;
}

/* `header` (NULL: none) and `note` (NULL: none) are lines printed before the table. */
static int print_probes(const admin_t *a, probe_t *ps, size_t n, const char *header, const char *note)
{
    bool failed = false;
    for (size_t i = 0; i < n; i++)
        failed |= probe_failed(&ps[i]);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            const probe_t *p = &ps[i];
            json_array_append_new(arr, json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "address", p->address,
                                                 "dns_ms", ms_json(p->t.dns_ms), "connect_ms", ms_json(p->t.connect_ms),
                                                 "tls_ms", ms_json(p->t.tls_ms), "first_byte_ms",
                                                 ms_json(p->t.first_byte_ms), "total_ms", ms_json(p->t.total_ms),
                                                 "status", p->status ? json_integer(p->status) : json_null(), "error",
                                                 p->error ? json_string(p->error) : json_null()));
        }
        json_t *out = json_pack("{s:o}", "targets", arr);
        /* Microseconds are the resolution worth printing, not binary fractions of them. */
        print_json_flags(out, JSON_REAL_PRECISION(9));
        json_decref(out);
        return failed ? EXIT_FAIL : EXIT_OK;
    }
    if (header != NULL)
        printf("%s\n", header);
    if (note != NULL)
        printf("note: %s\n", note);
    if (header != NULL || note != NULL)
        putchar('\n');
    static const char *const head[] = {"TARGET", "DNS", "CONNECT", "TLS", "FIRST BYTE", "TOTAL", "STATUS"};
    sl_cli_table_t *t = sl_cli_table_create(SL_ARRAY_SIZE(head), head);
    for (size_t c = 1; c <= 5; c++)
        sl_cli_table_align_right(t, c);
    for (size_t i = 0; i < n; i++) {
        const probe_t *p = &ps[i];
        char dns[32], conn[32], tls[32], fb[32], total[32], status[400];
        ms_text(p->t.dns_ms, dns, sizeof(dns));
        ms_text(p->t.connect_ms, conn, sizeof(conn));
        ms_text(p->t.tls_ms, tls, sizeof(tls));
        ms_text(p->t.first_byte_ms, fb, sizeof(fb));
        ms_text(p->t.total_ms, total, sizeof(total));
        if (p->error != NULL)
            snprintf(status, sizeof(status), "%s", p->error);
        else if (p->h2_ok)
            snprintf(status, sizeof(status), "h2 ok");
        else
            snprintf(status, sizeof(status), "%d", p->status);
        const char *cells[] = {p->address, dns, conn, tls, fb, total, status};
        sl_cli_table_add(t, cells);
    }
    sl_cli_table_print(t, stdout);
    sl_cli_table_destroy(t);
    return failed ? EXIT_FAIL : EXIT_OK;
}

static const char insecure_note[] = "--insecure: the server's certificate and name are not verified";

static int probe_url(const sl_cli_opts_t *opts, const char *spec)
{
    admin_t a = {.json = opts->json};
    probe_t p;
    memset(&p, 0, sizeof(p));
    const char *why = NULL;
    if (sl_cli_url_parse(spec, &p.url, &why) != 0) {
        fprintf(stderr, "sluice: bad URL '%s': %s\n", spec, why);
        return EXIT_USAGE;
    }
    if (!p.url.tls && (opts->ca != NULL || opts->insecure)) {
        fprintf(stderr, "sluice: --ca and --insecure are for https:// URLs and TLS upstreams, not '%s'\n", spec);
        return EXIT_USAGE;
    }
    sl_cli_tls_t tls = {.verify = !opts->insecure, .ca = opts->ca};
    p.tls = p.url.tls ? &tls : NULL;
    bool v6 = strchr(p.url.host, ':') != NULL;
    snprintf(p.address, sizeof(p.address), "%s%s%s:%u", v6 ? "[" : "", p.url.host, v6 ? "]" : "", (unsigned)p.url.port);
    run_probe(&p, opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT);
    return print_probes(&a, &p, 1, NULL, opts->insecure ? insecure_note : NULL);
}

/* An upstream's TLS settings as GET /upstreams/NAME shows them (the config as written). */
typedef struct upstream_tls {
    sl_cli_tls_t o;
    bool enabled;
    char ca[4096], cert[4096], key[4096], sni[256];
} upstream_tls_t;

/* The directory part of `path` ("." when it has none). */
static void dir_of(const char *path, char *out, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(out, len, ".");
    else if (slash == path)
        snprintf(out, len, "/");
    else
        snprintf(out, len, "%.*s", (int)(slash - path), path);
}

/*
 * The directory the gateway resolves the config's relative paths against (the config file's,
 * as the loader does): that of -c FILE when given (the same file, named from here), else that of
 * `config.path` in GET /status (relative to this directory when the gateway reports a relative
 * one: run the CLI where the gateway runs), else this directory.
 */
static void config_dir(const sl_cli_opts_t *opts, const admin_t *a, char *out, size_t len)
{
    if (opts->config_path != NULL) {
        dir_of(opts->config_path, out, len);
        return;
    }
    snprintf(out, len, ".");
    json_t *st;
    int status;
    if (admin_call(a, "GET", "/status", &st, &status) != EXIT_OK)
        return;
    const char *path = json_string_value(json_object_get(json_object_get(st, "config"), "path"));
    if (status == 200 && path != NULL && path[0] != '\0')
        dir_of(path, out, len);
    json_decref(st);
}

/* A path of the config: absolute as it is, relative ones joined to the config's directory. */
static void config_file(const char *dir, const char *path, char *out, size_t len)
{
    if (path[0] == '/' || strcmp(dir, ".") == 0)
        snprintf(out, len, "%s", path);
    else
        snprintf(out, len, "%s/%s", dir, path);
}

/* Reads `tls` of an upstream (true, or an object of docs/tls.md "Upstream TLS"), with --ca and
 * --insecure overriding `ca` and `verify`. */
static void upstream_tls(const sl_cli_opts_t *opts, const admin_t *a, const json_t *up, upstream_tls_t *u)
{
    memset(u, 0, sizeof(*u));
    const json_t *tls = json_object_get(up, "tls");
    u->enabled = json_is_true(tls) || json_is_object(tls);
    const json_t *targets = json_object_get(up, "targets");
    for (size_t i = 0; i < json_array_size(targets); i++) {
        const char *addr = json_string_value(json_object_get(json_array_get(targets, i), "address"));
        if (addr != NULL && strncasecmp(addr, "https://", 8) == 0)
            u->enabled = true;
    }
    u->o.verify = !json_is_false(json_object_get(tls, "verify")) && !opts->insecure;
    const char *ca = json_string_value(json_object_get(tls, "ca"));
    const char *cert = json_string_value(json_object_get(tls, "client_cert"));
    const char *key = json_string_value(json_object_get(tls, "client_key"));
    const char *sni = json_string_value(json_object_get(tls, "sni"));
    const json_t *minv = json_object_get(tls, "min_version");
    if ((json_is_string(minv) && strcmp(json_string_value(minv), "1.3") == 0) ||
        (json_is_number(minv) && json_number_value(minv) > 1.25))
        u->o.min_version = 13;
    if (sni != NULL && sni[0] != '\0') {
        snprintf(u->sni, sizeof(u->sni), "%s", sni);
        u->o.sni = u->sni;
    }
    if (opts->ca != NULL) {
        snprintf(u->ca, sizeof(u->ca), "%s", opts->ca);
        u->o.ca = u->ca;
        ca = NULL;
    }
    if (!u->enabled || (ca == NULL && cert == NULL))
        return;
    char dir[4096];
    bool relative = (ca != NULL && ca[0] != '/') || (cert != NULL && cert[0] != '/') || (key != NULL && key[0] != '/');
    snprintf(dir, sizeof(dir), ".");
    if (relative)
        config_dir(opts, a, dir, sizeof(dir));
    if (ca != NULL) {
        config_file(dir, ca, u->ca, sizeof(u->ca));
        u->o.ca = u->ca;
    }
    if (cert != NULL && key != NULL) {
        config_file(dir, cert, u->cert, sizeof(u->cert));
        config_file(dir, key, u->key, sizeof(u->key));
        u->o.client_cert = u->cert;
        u->o.client_key = u->key;
    }
}

static int probe_upstream(const sl_cli_opts_t *opts, const char *name)
{
    admin_t a;
    int rc = admin_init(opts, &a);
    if (rc != EXIT_OK)
        return rc;
    char seg[800], path[900];
    segment(name, seg, sizeof(seg));
    snprintf(path, sizeof(path), "/upstreams/%s", seg);
    json_t *up;
    int status;
    if ((rc = admin_call(&a, "GET", path, &up, &status)) != EXIT_OK)
        return rc;
    if (status == 404) {
        fprintf(stderr, "sluice: no upstream named '%s'\n", name);
        json_decref(up);
        return EXIT_FAIL;
    }
    if (status != 200) {
        print_api_error(&a, status, up);
        json_decref(up);
        return EXIT_FAIL;
    }
    const json_t *active = json_object_get(json_object_get(up, "health"), "active");
    const char *hpath = json_string_value(json_object_get(active, "path"));
    const char *hhost = json_string_value(json_object_get(active, "host"));
    if (hpath == NULL || hpath[0] != '/')
        hpath = "/";
    json_t *targets = json_object_get(up, "targets");
    size_t n = json_array_size(targets);
    if (n == 0) {
        fprintf(stderr, "sluice: upstream '%s' has no targets to probe\n", name);
        json_decref(up);
        return EXIT_FAIL;
    }
    const char *proto = json_string_value(json_object_get(up, "protocol"));
    bool h2 = proto != NULL && strcmp(proto, "h2") == 0;
    upstream_tls_t *ut = sl_xcalloc(1, sizeof(*ut));
    upstream_tls(opts, &a, up, ut);
    probe_t *ps = sl_xcalloc(n, sizeof(*ps));
    for (size_t i = 0; i < n; i++) {
        const char *addr = json_string_value(json_object_get(json_array_get(targets, i), "address"));
        probe_t *p = &ps[i];
        snprintf(p->address, sizeof(p->address), "%s", addr ? addr : "?");
        p->host_header = hhost != NULL && hhost[0] != '\0' ? hhost : NULL;
        p->tls = ut->enabled ? &ut->o : NULL;
        p->h2 = h2;
        if (addr == NULL)
            p->bad = "the target has no address";
        else if (sl_cli_url_from_address(addr, hpath, &p->url, &p->bad) != 0 && p->bad == NULL)
            p->bad = "bad address";
        run_probe(p, a.timeout_ms);
    }
    char header[1200];
    const char *how = !ut->enabled ? "" : ut->o.verify ? " over TLS" : " over TLS (certificate not verified)";
    if (h2)
        snprintf(header, sizeof(header), "probing upstream %s: the HTTP/2 preface%s on %zu target%s", name,
                 ut->enabled ? how : " (h2c)", n, n == 1 ? "" : "s");
    else
        snprintf(header, sizeof(header), "probing upstream %s: GET %s%s on %zu target%s", name, hpath, how, n,
                 n == 1 ? "" : "s");
    rc = print_probes(&a, ps, n, header, NULL);
    free(ps);
    free(ut);
    json_decref(up);
    return rc;
}

int sl_cli_probe(const sl_cli_opts_t *opts, const char *what)
{
    if (strstr(what, "://") != NULL)
        return probe_url(opts, what);
    return probe_upstream(opts, what);
}

/* ---- doctor -------------------------------------------------------------------------------- */

static int severity_rank(const char *s)
{
    if (s == NULL)
        return 3;
    if (strcmp(s, "critical") == 0)
        return 0;
    if (strcmp(s, "warning") == 0)
        return 1;
    return 2;
}

/* "key value, key value" of an object, in the API's order. */
static void pairs_text(const json_t *obj, const char *sep, char *buf, size_t len)
{
    size_t n = 0;
    const char *k;
    json_t *v;
    buf[0] = '\0';
    json_object_foreach((json_t *)obj, k, v)
    {
        char val[512];
        scalar_text(v, val, sizeof(val));
        int w = snprintf(buf + n, len - n, "%s%s%s%s", n ? ", " : "", k, sep, val);
        if (w < 0 || (size_t)w >= len - n)
            break;
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, len, "-");
}

static void print_finding(const json_t *f)
{
    char where[1024], evidence[2048];
    pairs_text(json_object_get(f, "where"), " ", where, sizeof(where));
    pairs_text(json_object_get(f, "evidence"), "=", evidence, sizeof(evidence));
    const char *sev = json_string_value(json_object_get(f, "severity"));
    const char *cause = json_string_value(json_object_get(f, "cause"));
    printf("%s  %s  %s\n", sev ? sev : "?", cause ? cause : "?", where);
    const char *since = json_string_value(json_object_get(f, "since"));
    const char *summary = json_string_value(json_object_get(f, "summary"));
    const char *action = json_string_value(json_object_get(f, "action"));
    printf("  since:    %s\n", since ? since : "-");
    printf("  summary:  %s\n", summary ? summary : "-");
    printf("  evidence: %s\n", evidence);
    printf("  action:   %s\n", action ? action : "-");
}

int sl_cli_doctor(const sl_cli_opts_t *opts)
{
    admin_t a;
    int rc = admin_init(opts, &a);
    if (rc != EXIT_OK)
        return rc;
    char path[64] = "/doctor";
    if (opts->window != NULL) {
        char *end;
        errno = 0;
        unsigned long w = strtoul(opts->window, &end, 10);
        if (errno != 0 || end == opts->window || *end != '\0' || w == 0 || w > 86400) {
            fprintf(stderr, "sluice: --window wants a number of seconds from 1 to 86400, not '%s'\n", opts->window);
            return EXIT_USAGE;
        }
        snprintf(path, sizeof(path), "/doctor?window=%lu", w);
    }
    json_t *j;
    if ((rc = admin_get(&a, path, &j)) != EXIT_OK)
        return rc;
    json_t *findings = json_object_get(j, "findings");
    if (!json_is_array(findings)) {
        fprintf(stderr, "sluice: the admin API at %s answered without a \"findings\" array\n", a.display);
        json_decref(j);
        return EXIT_FAIL;
    }
    int worst = 3;
    size_t i;
    json_t *f;
    json_array_foreach(findings, i, f)
    {
        worst = SL_MIN(worst, severity_rank(json_string_value(json_object_get(f, "severity"))));
    }
    if (a.json) {
        print_json(j);
    } else if (json_array_size(findings) == 0) {
        printf("no findings in the last %" JSON_INTEGER_FORMAT " s: nothing wrong seen\n",
               json_integer_value(json_object_get(j, "window_seconds")));
    } else {
        json_array_foreach(findings, i, f)
        {
            if (i > 0)
                putchar('\n');
            print_finding(f);
        }
    }
    json_decref(j);
    return worst <= 1 ? EXIT_FAIL : EXIT_OK;
}
