/*
 * The admin API server. One request per connection (Connection: close): an operator's tool and
 * a scraper, not a data path, so simplicity wins over keep-alive. Requests are parsed by the
 * gateway's strict HTTP/1 parser; bodies need a Content-Length (no chunked uploads).
 */
#include "admin/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin/dashboard/assets.h"
#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/str.h"
#include "config/document.h"
#include "http/exchange.h"
#include "http1/parser.h"

static char *dup_cstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = sl_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

#define ADMIN_HEAD_MAX   8192
#define ADMIN_TIMEOUT_MS 10000

struct sl_admin {
    uv_tcp_t listener;
    sl_admin_hooks_t hooks;
    char *token; /* NULL: no authentication */
    bool ready;
    bool stopping;
};

typedef struct admin_conn {
    uv_tcp_t tcp;
    uv_write_t wreq;
    uv_timer_t timer;
    sl_admin_t *admin;
    int closing;
    bool handled;
    size_t len;      /* bytes in buf */
    size_t head_len; /* 0 until the head parsed */
    sl_h1_request_t req;
    sl_header_t hdrs[64];
    char *body; /* Content-Length bytes, malloc'd */
    size_t body_len, body_want;
    char *reply;
    char buf[ADMIN_HEAD_MAX];
} admin_conn_t;

/* ---- plumbing ------------------------------------------------------------------------------ */

static void on_conn_closed(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
    if (--c->closing == 0) {
        free(c->reply);
        free(c->body);
        free(c);
    }
}

static void conn_close(admin_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return status >= 500 ? "Internal Server Error" : "Error";
    }
}

static void respond_raw(admin_conn_t *c, int status, const char *ctype, const char *extra, const char *body,
                        size_t body_len)
{
    if (c->handled)
        return;
    c->handled = true;
    uv_timer_stop(&c->timer);
    size_t cap = body_len + 512 + (extra ? strlen(extra) : 0);
    c->reply = sl_xmalloc(cap);
    int n = snprintf(c->reply, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                     status, reason_of(status), ctype, body_len, extra ? extra : "");
    bool head = c->head_len > 0 && c->req.method_id == SL_METHOD_HEAD;
    if (!head) {
        memcpy(c->reply + n, body, body_len);
        n += (int)body_len;
    }
    uv_buf_t b = uv_buf_init(c->reply, (unsigned)n);
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        conn_close(c);
}

/* Takes the reference of `j`. */
static void respond_json_extra(admin_conn_t *c, int status, json_t *j, const char *extra)
{
    char *text = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    if (text == NULL) {
        static const char oom[] = "{\"error\":\"internal_error\"}\n";
        respond_raw(c, 500, "application/json", NULL, oom, sizeof(oom) - 1);
        return;
    }
    size_t len = strlen(text);
    text = sl_xrealloc(text, len + 2);
    text[len++] = '\n';
    respond_raw(c, status, "application/json", extra, text, len);
    free(text);
}

static void respond_json(admin_conn_t *c, int status, json_t *j)
{
    respond_json_extra(c, status, j, NULL);
}

static void respond_error(admin_conn_t *c, int status, const char *error, const char *message)
{
    respond_json(c, status, json_pack("{s:s, s:s}", "error", error, "message", message));
}

static void respond_405(admin_conn_t *c, const char *allow)
{
    char extra[128];
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    respond_json_extra(
        c, 405,
        json_pack("{s:s, s:s}", "error", "method_not_allowed", "message", "This endpoint does not take that method."),
        extra);
}

json_t *sl_admin_errors_json(const sl_config_errors_t *errs)
{
    json_t *a = json_array();
    for (size_t i = 0; i < errs->count; i++) {
        const sl_config_error_t *e = &errs->items[i];
        json_t *o = json_pack("{s:s%, s:s}", "file", e->file.ptr, e->file.len, "message", e->message);
        if (e->line != 0) {
            json_object_set_new(o, "line", json_integer(e->line));
            json_object_set_new(o, "col", json_integer(e->col));
        }
        if (e->path[0] != '\0')
            json_object_set_new(o, "path", json_string(e->path));
        json_array_append_new(a, o);
    }
    return a;
}

static void respond_invalid(admin_conn_t *c, const sl_config_errors_t *errs, const char *message)
{
    json_t *j = json_pack("{s:s, s:s}", "error", "invalid_config", "message", message);
    json_object_set_new(j, "errors", sl_admin_errors_json(errs));
    respond_json(c, 422, j);
}

/* ---- helpers ------------------------------------------------------------------------------- */

static bool method_is(const admin_conn_t *c, enum sl_method m)
{
    return c->req.method_id == m;
}

static bool is_get(const admin_conn_t *c)
{
    return method_is(c, SL_METHOD_GET) || method_is(c, SL_METHOD_HEAD);
}

/* Percent-decodes `in` into `out` (cap bytes with the NUL); false on a bad escape, a NUL or
 * overflow. */
static bool pct_decode(sl_str_t in, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < in.len; i++) {
        char ch = in.ptr[i];
        if (ch == '%') {
            if (i + 2 >= in.len)
                return false;
            int hi = sl_hex_value(in.ptr[i + 1]), lo = sl_hex_value(in.ptr[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        if (ch == '\0' || n + 1 >= cap)
            return false;
        out[n++] = ch;
    }
    out[n] = '\0';
    return true;
}

int sl__admin_query_get(sl_str_t query, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    const char *p = query.ptr, *end = query.ptr + query.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == '=')
            return pct_decode((sl_str_t){p + klen + 1, (size_t)(stop - p - (ptrdiff_t)klen - 1)}, out, cap) ? 1 : -1;
        p = stop + 1;
    }
    return 0;
}

static bool authorized(admin_conn_t *c)
{
    const char *token = c->admin->token;
    if (token == NULL)
        return true;
    sl_headers_t hs = {.items = c->req.headers, .len = c->req.nheaders, .cap = c->req.nheaders};
    const sl_header_t *h = sl_headers_find(&hs, SL_STR_LIT("authorization"));
    if (h == NULL || h->value.len < 7 || !sl_str_caseeq((sl_str_t){h->value.ptr, 7}, SL_STR_LIT("Bearer ")))
        return false;
    sl_str_t given = {h->value.ptr + 7, h->value.len - 7};
    return sl_str_secret_eq(given, sl_str_from_cstr(token));
}

/* ---- config changes ------------------------------------------------------------------------ */

enum coll_kind {
    COLL_LIST, /* routes: a list of objects with a `name` */
    COLL_MAP,  /* upstreams, consumers: a mapping name -> object */
};

typedef struct coll {
    const char *key;
    const char *singular;
    enum coll_kind kind;
} coll_t;

static const coll_t collections[] = {
    {"routes", "route", COLL_LIST},
    {"upstreams", "upstream", COLL_MAP},
    {"consumers", "consumer", COLL_MAP},
};

/* Applies `doc` (consumed) through the server; answers the client either way. */
static void apply_document(admin_conn_t *c, json_t *doc, int ok_status)
{
    sl_admin_hooks_t *h = &c->admin->hooks;
    size_t len = 0;
    char *text = sl_config_document_emit(doc, &len);
    json_decref(doc);
    sl_config_errors_t errs = {0};
    uint64_t generation = 0;
    int rc = h->apply(h->ctx, text, len, &errs, &generation);
    free(text);
    if (rc == 0) {
        respond_json(c, ok_status, json_pack("{s:s, s:I}", "result", "ok", "generation", (json_int_t)generation));
    } else if (rc == SL_ECONFIG) {
        respond_invalid(c, &errs, "The change was not applied: the resulting config is not valid.");
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "The change was not applied: the config file could not be written (%s).",
                 sl_strerror(rc));
        respond_error(c, 500, "persist_failed", msg);
    }
    sl_config_errors_dispose(&errs);
}

/* The running document, or NULL after answering. */
static json_t *running_document(admin_conn_t *c)
{
    sl_admin_hooks_t *h = &c->admin->hooks;
    size_t len = 0;
    const char *text = h->config_text(h->ctx, &len);
    sl_config_errors_t errs = {0};
    json_t *doc = NULL;
    if (sl_config_document_parse("<running>", text, len, &doc, &errs) != 0 || !json_is_object(doc)) {
        json_decref(doc);
        respond_error(c, 500, "internal_error", "The running config could not be read as a document.");
        doc = NULL;
    }
    sl_config_errors_dispose(&errs);
    return doc;
}

/* The request body as a JSON object, or NULL after answering 400. */
static json_t *body_object(admin_conn_t *c)
{
    json_error_t jerr;
    json_t *j = json_loadb(c->body ? c->body : "", c->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL) {
        json_t *e = json_pack("{s:s, s:s, s:i, s:i}", "error", "bad_json", "message", jerr.text, "line", jerr.line,
                              "col", jerr.column);
        respond_json(c, 400, e);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        respond_error(c, 400, "bad_request", "The body must be a JSON object.");
        return NULL;
    }
    return j;
}

static long list_find(json_t *list, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        const char *n = json_string_value(json_object_get(v, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return (long)i;
    }
    return -1;
}

/* RFC 7386 JSON merge patch of `target` (an object) by `patch`. */
static void merge_patch(json_t *target, json_t *patch)
{
    const char *k;
    json_t *v;
    json_object_foreach(patch, k, v)
    {
        if (json_is_null(v)) {
            json_object_del(target, k);
        } else if (json_is_object(v)) {
            json_t *t = json_object_get(target, k);
            if (!json_is_object(t)) {
                t = json_object();
                json_object_set_new(target, k, t);
            }
            merge_patch(t, v);
        } else {
            json_object_set(target, k, v);
        }
    }
}

/* The body's `name` must be absent or equal `name`; `keep` leaves it in (routes), else it is
 * taken out (mapping entries are named by their key). False after answering 400. */
static bool settle_name(admin_conn_t *c, json_t *body, const char *name, bool keep)
{
    json_t *n = json_object_get(body, "name");
    if (n != NULL && (!json_is_string(n) || strcmp(json_string_value(n), name) != 0)) {
        respond_error(c, 400, "bad_request", "The name in the body differs from the name in the path.");
        return false;
    }
    if (keep)
        json_object_set_new(body, "name", json_string(name));
    else
        json_object_del(body, "name");
    return true;
}

static void handle_collection(admin_conn_t *c, const coll_t *coll, const char *name)
{
    sl_admin_hooks_t *h = &c->admin->hooks;
    if (h->config_text == NULL || h->apply == NULL) {
        respond_error(c, 404, "not_found", "No such admin endpoint.");
        return;
    }
    bool list = coll->kind == COLL_LIST;
    if (name == NULL && !is_get(c) && !method_is(c, SL_METHOD_POST)) {
        respond_405(c, "GET, HEAD, POST");
        return;
    }
    if (name != NULL && !is_get(c) && !method_is(c, SL_METHOD_PUT) && !method_is(c, SL_METHOD_PATCH) &&
        !method_is(c, SL_METHOD_DELETE)) {
        respond_405(c, "GET, HEAD, PUT, PATCH, DELETE");
        return;
    }
    json_t *doc = running_document(c);
    if (doc == NULL)
        return;
    json_t *items = json_object_get(doc, coll->key);
    if (items == NULL || json_is_null(items)) {
        items = list ? json_array() : json_object();
        json_object_set_new(doc, coll->key, items);
    }
    if ((list && !json_is_array(items)) || (!list && !json_is_object(items))) {
        json_decref(doc);
        respond_error(c, 500, "internal_error", "The running config has an unexpected shape.");
        return;
    }
    char msg[256];
    if (name == NULL && is_get(c)) {
        json_t *out = json_object();
        json_object_set(out, coll->key, items);
        json_decref(doc);
        respond_json(c, 200, out);
        return;
    }
    if (name == NULL) { /* POST */
        json_t *body = body_object(c);
        if (body == NULL) {
            json_decref(doc);
            return;
        }
        const char *bn = json_string_value(json_object_get(body, "name"));
        if (bn == NULL || bn[0] == '\0') {
            json_decref(body);
            json_decref(doc);
            snprintf(msg, sizeof(msg), "A new %s needs a \"name\".", coll->singular);
            respond_error(c, 400, "bad_request", msg);
            return;
        }
        char nm[256];
        snprintf(nm, sizeof(nm), "%s", bn);
        bool exists = list ? list_find(items, nm) >= 0 : json_object_get(items, nm) != NULL;
        if (exists) {
            json_decref(body);
            json_decref(doc);
            snprintf(msg, sizeof(msg), "A %s named '%.200s' already exists.", coll->singular, nm);
            respond_error(c, 409, "exists", msg);
            return;
        }
        if (list) {
            json_array_append_new(items, body);
        } else {
            json_object_del(body, "name");
            json_object_set_new(items, nm, body);
        }
        apply_document(c, doc, 201);
        return;
    }
    long idx = list ? list_find(items, name) : -1;
    json_t *cur = list ? (idx >= 0 ? json_array_get(items, (size_t)idx) : NULL) : json_object_get(items, name);
    if (is_get(c) || method_is(c, SL_METHOD_DELETE) || method_is(c, SL_METHOD_PATCH)) {
        if (cur == NULL) {
            json_decref(doc);
            snprintf(msg, sizeof(msg), "No %s named '%.200s'.", coll->singular, name);
            respond_error(c, 404, "not_found", msg);
            return;
        }
    }
    if (is_get(c)) {
        json_t *out = json_incref(cur);
        json_decref(doc);
        respond_json(c, 200, out);
        return;
    }
    if (method_is(c, SL_METHOD_DELETE)) {
        if (list)
            json_array_remove(items, (size_t)idx);
        else
            json_object_del(items, name);
        apply_document(c, doc, 200);
        return;
    }
    json_t *body = body_object(c);
    if (body == NULL || !settle_name(c, body, name, list)) {
        json_decref(body);
        json_decref(doc);
        return;
    }
    if (method_is(c, SL_METHOD_PATCH)) {
        if (list)
            json_object_del(body, "name");
        merge_patch(cur, body);
        json_decref(body);
        apply_document(c, doc, 200);
        return;
    }
    /* PUT: replace, or add when new. */
    int status = cur == NULL ? 201 : 200;
    if (list && idx >= 0)
        json_array_set_new(items, (size_t)idx, body);
    else if (list)
        json_array_append_new(items, body);
    else
        json_object_set_new(items, name, body);
    apply_document(c, doc, status);
}

static void handle_config(admin_conn_t *c)
{
    sl_admin_hooks_t *h = &c->admin->hooks;
    if (h->config_text == NULL) {
        respond_error(c, 404, "not_found", "No such admin endpoint.");
        return;
    }
    if (is_get(c)) {
        json_t *doc = running_document(c);
        if (doc != NULL)
            respond_json(c, 200, doc);
        return;
    }
    if (!method_is(c, SL_METHOD_PUT)) {
        respond_405(c, "GET, HEAD, PUT");
        return;
    }
    /* A JSON body is checked as JSON first so a syntax error reads as one; a YAML body goes to
     * the file as sent, comments and all. */
    size_t i = 0;
    while (i < c->body_len && (c->body[i] == ' ' || c->body[i] == '\n' || c->body[i] == '\r' || c->body[i] == '\t'))
        i++;
    if (i < c->body_len && c->body[i] == '{') {
        json_t *doc = body_object(c);
        if (doc != NULL)
            apply_document(c, doc, 200);
        return;
    }
    sl_config_errors_t errs = {0};
    uint64_t generation = 0;
    int rc = h->apply(h->ctx, c->body ? c->body : "", c->body_len, &errs, &generation);
    if (rc == 0)
        respond_json(c, 200, json_pack("{s:s, s:I}", "result", "ok", "generation", (json_int_t)generation));
    else if (rc == SL_ECONFIG)
        respond_invalid(c, &errs, "The config was not applied: it is not valid.");
    else
        respond_error(c, 500, "persist_failed", "The config was not applied: the config file could not be written.");
    sl_config_errors_dispose(&errs);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* Splits "/a/b/c" into at most 4 decoded segments; false on a bad escape or too many. */
static bool split_path(sl_str_t path, char seg[4][256], size_t *nseg)
{
    *nseg = 0;
    size_t i = 0;
    while (i < path.len) {
        if (path.ptr[i] == '/') {
            i++;
            continue;
        }
        size_t j = i;
        while (j < path.len && path.ptr[j] != '/')
            j++;
        if (*nseg == 4 || !pct_decode((sl_str_t){path.ptr + i, j - i}, seg[*nseg], 256))
            return false;
        (*nseg)++;
        i = j;
    }
    return true;
}

/* The page may load only its own files and talk only to this listener; nothing may frame it. */
#define DASHBOARD_HEADERS                                                                                              \
    "Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "         \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"           \
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"

/* The embedded dashboard file at the request's path ("/" or "/dashboard/NAME"), or NULL. */
static const sl_admin_asset_t *dashboard_asset(char seg[4][256], size_t nseg)
{
    bool file = nseg == 2 && strcmp(seg[0], "dashboard") == 0;
    if (nseg != 0 && !file)
        return NULL;
    for (size_t i = 0; i < sl_admin_dashboard_nassets; i++) {
        const char *p = sl_admin_dashboard_assets[i].path;
        if (nseg == 0 ? strcmp(p, "/") == 0 : strncmp(p, "/dashboard/", 11) == 0 && strcmp(p + 11, seg[1]) == 0)
            return &sl_admin_dashboard_assets[i];
    }
    return NULL;
}

static void handle(admin_conn_t *c)
{
    sl_admin_t *a = c->admin;
    sl_admin_hooks_t *h = &a->hooks;
    const sl_h1_request_t *req = &c->req;
    char seg[4][256];
    size_t nseg = 0;
    if (!split_path(req->path, seg, &nseg)) {
        respond_error(c, 404, "not_found", "No such admin endpoint.");
        return;
    }
    /* Probes stay open: an orchestrator's liveness/readiness checks carry no token. */
    if (nseg == 1 && strcmp(seg[0], "health") == 0) {
        if (!is_get(c))
            respond_405(c, "GET, HEAD");
        else
            respond_json(c, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "ready") == 0) {
        if (!is_get(c))
            respond_405(c, "GET, HEAD");
        else if (a->ready && !a->stopping)
            respond_json(c, 200, json_pack("{s:s}", "status", "ready"));
        else
            respond_json(c, 503, json_pack("{s:s}", "status", "not_ready"));
        return;
    }
    /* The dashboard's files hold no gateway data (they are the same in every binary), and a
     * browser cannot send a bearer token with a navigation: they are served without one, and
     * the page asks for the token when /stats answers 401. */
    const sl_admin_asset_t *asset = dashboard_asset(seg, nseg);
    if (asset != NULL) {
        if (!is_get(c))
            respond_405(c, "GET, HEAD");
        else
            respond_raw(c, 200, asset->content_type, DASHBOARD_HEADERS, (const char *)asset->data, asset->len);
        return;
    }
    if (!authorized(c)) {
        respond_json_extra(c, 401,
                           json_pack("{s:s, s:s}", "error", "unauthorized", "message",
                                     "This admin API needs Authorization: Bearer <token>."),
                           "WWW-Authenticate: Bearer\r\n");
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "metrics") == 0 && h->render_metrics != NULL) {
        if (!is_get(c)) {
            respond_405(c, "GET, HEAD");
            return;
        }
        char *text = NULL;
        size_t len = 0;
        if (h->render_metrics(h->ctx, &text, &len) != 0)
            respond_error(c, 500, "internal_error", "The metrics could not be rendered.");
        else
            respond_raw(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len);
        free(text);
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "status") == 0 && h->status != NULL) {
        if (!is_get(c))
            respond_405(c, "GET, HEAD");
        else
            respond_json(c, 200, h->status(h->ctx));
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "stats") == 0 && h->stats != NULL) {
        if (!is_get(c))
            respond_405(c, "GET, HEAD");
        else
            respond_json(c, 200, h->stats(h->ctx));
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "config") == 0) {
        handle_config(c);
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "reload") == 0 && h->reload != NULL) {
        if (!method_is(c, SL_METHOD_POST)) {
            respond_405(c, "POST");
            return;
        }
        sl_config_errors_t errs = {0};
        uint64_t generation = 0;
        if (h->reload(h->ctx, &errs, &generation) == 0)
            respond_json(c, 200, json_pack("{s:s, s:I}", "result", "ok", "generation", (json_int_t)generation));
        else
            respond_invalid(c, &errs, "The config file was not applied; the running config stays.");
        sl_config_errors_dispose(&errs);
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "doctor") == 0 && h->doctor != NULL) {
        if (!is_get(c)) {
            respond_405(c, "GET, HEAD");
            return;
        }
        char w[16];
        unsigned window = 60;
        if (sl__admin_query_get(req->query, "window", w, sizeof(w)) == 1)
            window = (unsigned)strtoul(w, NULL, 10) >= 300 ? 300 : 60;
        respond_json(c, 200, h->doctor(h->ctx, window));
        return;
    }
    if (nseg == 3 && strcmp(seg[0], "upstreams") == 0 && strcmp(seg[2], "health") == 0 && h->upstream_health != NULL) {
        if (!is_get(c)) {
            respond_405(c, "GET, HEAD");
            return;
        }
        json_t *j = h->upstream_health(h->ctx, seg[1]);
        if (j == NULL) {
            char msg[320];
            snprintf(msg, sizeof(msg), "No upstream named '%.200s'.", seg[1]);
            respond_error(c, 404, "not_found", msg);
        } else {
            respond_json(c, 200, j);
        }
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "routes") == 0 && is_get(c) && h->routes_table != NULL) {
        char v[16];
        if (sl__admin_query_get(req->query, "view", v, sizeof(v)) == 1 && strcmp(v, "table") == 0) {
            respond_json(c, 200, h->routes_table(h->ctx));
            return;
        }
    }
    if (nseg == 1 && strcmp(seg[0], "cache") == 0) {
        int st = 500;
        json_t *j = sl_admin_cache(h, req->query, method_is(c, SL_METHOD_DELETE), &st);
        respond_json_extra(c, st, j, st == 405 ? "Allow: DELETE\r\n" : NULL);
        return;
    }
    if (nseg == 3 && strcmp(seg[0], "consumers") == 0 && strcmp(seg[2], "usage") == 0) {
        int st = 500;
        json_t *j = sl_admin_usage(h, seg[1], is_get(c), &st);
        respond_json_extra(c, st, j, st == 405 ? "Allow: GET, HEAD\r\n" : NULL);
        return;
    }
    for (size_t i = 0; i < sizeof(collections) / sizeof(collections[0]); i++) {
        if ((nseg == 1 || nseg == 2) && strcmp(seg[0], collections[i].key) == 0) {
            handle_collection(c, &collections[i], nseg == 2 ? seg[1] : NULL);
            return;
        }
    }
    respond_error(c, 404, "not_found", "No such admin endpoint.");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    admin_conn_t *c = h->data;
    (void)suggested;
    if (c->body != NULL) {
        buf->base = c->body + c->body_len;
        buf->len = c->body_want - c->body_len;
    } else {
        buf->base = c->buf + c->len;
        buf->len = sizeof(c->buf) - c->len;
    }
}

static void maybe_handle(admin_conn_t *c)
{
    if (c->body_len < c->body_want)
        return;
    handle(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn_t *c = s->data;
    (void)buf;
    if (c->handled)
        return;
    if (nread < 0) {
        if (nread == UV_ENOBUFS)
            respond_error(c, 431, "header_too_large", "The request head is too large.");
        else
            conn_close(c);
        return;
    }
    if (c->body != NULL) {
        c->body_len += (size_t)nread;
        maybe_handle(c);
        return;
    }
    c->len += (size_t)nread;
    c->req.headers = c->hdrs;
    sl_h1_limits_t limits = {.max_head_bytes = ADMIN_HEAD_MAX - 1, .max_uri_bytes = 4096, .max_headers = 64};
    int r = sl_h1_parse_request(c->buf, c->len, &c->req, &limits);
    if (r == SL_EINCOMPLETE)
        return;
    if (r < 0) {
        respond_error(c, sl_h1_error_status(r), "bad_request", "The request could not be parsed.");
        return;
    }
    c->head_len = (size_t)r;
    if (c->req.body == SL_H1_BODY_CHUNKED) {
        respond_error(c, 411, "bad_request", "Send the body with a Content-Length.");
        return;
    }
    if (c->req.body == SL_H1_BODY_LENGTH && c->req.content_length > 0) {
        if (c->req.content_length > SL_ADMIN_MAX_BODY) {
            respond_error(c, 413, "request_too_large", "Admin request bodies are limited to 1 MiB.");
            return;
        }
        c->body_want = (size_t)c->req.content_length;
        c->body = sl_xmalloc(c->body_want + 1);
        size_t have = c->len - c->head_len;
        if (have > c->body_want)
            have = c->body_want;
        memcpy(c->body, c->buf + c->head_len, have);
        c->body_len = have;
        if (c->req.expect_continue && have < c->body_want) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
            (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        }
    }
    maybe_handle(c);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    sl_admin_t *a = server->data;
    if (status < 0)
        return;
    admin_conn_t *c = sl_xcalloc(1, sizeof(*c));
    c->admin = a;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->wreq.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *h)
{
    sl_admin_t *a = h->data;
    if (a->token != NULL) {
        /* volatile: the wipe of a buffer about to be freed must not be optimised away */
        for (volatile char *p = a->token; *p != '\0'; p++)
            *p = '\0';
        free(a->token);
    }
    free(a);
}

int sl_admin_start(uv_loop_t *loop, const struct sockaddr *addr, const sl_admin_hooks_t *hooks, const char *token,
                   sl_admin_t **out)
{
    sl_admin_t *a = sl_xcalloc(1, sizeof(*a));
    if (hooks != NULL)
        a->hooks = *hooks;
    if (token != NULL)
        a->token = dup_cstr(token);
    uv_tcp_init(loop, &a->listener);
    a->listener.data = a;
    int err = uv_tcp_bind(&a->listener, addr, 0);
    if (err == 0)
        err = uv_listen((uv_stream_t *)&a->listener, 128, on_connection);
    if (err) {
        uv_close((uv_handle_t *)&a->listener, on_listener_closed);
        return err;
    }
    *out = a;
    return 0;
}

void sl_admin_set_ready(sl_admin_t *a, bool ready)
{
    a->ready = ready;
}

void sl_admin_stop(sl_admin_t *a)
{
    if (a->stopping)
        return;
    a->stopping = true;
    uv_close((uv_handle_t *)&a->listener, on_listener_closed);
}

/* ---- persistence --------------------------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int sl_admin_write_file_atomic(const char *path, const char *data, size_t len)
{
    size_t plen = strlen(path);
    char *tmp = sl_xmalloc(plen + 32);
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    struct stat st;
    mode_t mode = stat(path, &st) == 0 ? (st.st_mode & 07777) : 0640;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        int err = -errno;
        free(tmp);
        return err;
    }
    int err = write_all(fd, data, len);
    if (err == 0 && fchmod(fd, mode) != 0)
        err = -errno;
    if (err == 0 && fsync(fd) != 0)
        err = -errno;
    if (close(fd) != 0 && err == 0)
        err = -errno;
    if (err == 0 && rename(tmp, path) != 0)
        err = -errno;
    if (err != 0) {
        unlink(tmp);
        free(tmp);
        return err;
    }
    /* The rename is durable only once the directory entry is. */
    char *dir = dup_cstr(path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(dir);
    free(tmp);
    return 0;
}
