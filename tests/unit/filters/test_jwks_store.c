/*
 * The JWKS store on a real main loop with the real HTTP/1.1 client against a JWKS server in the
 * same loop: first fetch, rotation picked up by the interval refresh, an identical document
 * keeping the generation, the provider down or serving junk (last good set kept), unknown-kid
 * refreshes rate limited (fetches counted), reloads (unchanged, changed URL, removed), file and
 * environment sources with their errors, stop with a fetch in flight, and reader threads
 * taking sets while the main thread replaces them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "common/error.h"
#include "filters/jwks_store.h"
#include "http1/client.h"

#define K1    "{\"kty\":\"oct\",\"kid\":\"k1\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}"
#define K2    "{\"kty\":\"oct\",\"kid\":\"k2\",\"k\":\"ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA\"}"
#define K3    "{\"kty\":\"oct\",\"kid\":\"k3\",\"k\":\"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU\"}"
#define DOC1  "{\"keys\":[" K1 "]}"
#define DOC12 "{\"keys\":[" K1 "," K2 "]}"
#define DOC3  "{\"keys\":[" K3 "]}"

/* ---- a JWKS server in the test's loop ------------------------------------------------------- */

typedef struct srv srv_t;

typedef struct sconn {
    uv_tcp_t tcp;
    srv_t *srv;
    struct sconn *next;
    bool closing;
    size_t len;
    char buf[4096];
} sconn_t;

struct srv {
    uv_tcp_t listener;
    bool listening;
    int port;
    const char *doc;     /* served at /jwks */
    const char *doc_alt; /* served at /other */
    int status;          /* 200 unless set */
    bool silent;
    int requests;
    int requests_alt;
    sconn_t *conns;
};

static void sconn_close_cb(uv_handle_t *h)
{
    sconn_t *c = h->data;
    for (sconn_t **pp = &c->srv->conns; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    free(c);
}

static void sconn_close(sconn_t *c)
{
    if (!c->closing) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, sconn_close_cb);
    }
}

typedef struct swrite {
    uv_write_t w;
    sconn_t *c;
    char data[];
} swrite_t;

static void on_swrite(uv_write_t *w, int status)
{
    (void)status;
    swrite_t *sw = (swrite_t *)w;
    sconn_close(sw->c);
    free(sw);
}

static void on_salloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    sconn_t *c = h->data;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void on_sread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    sconn_t *c = st->data;
    srv_t *s = c->srv;
    if (nread < 0) {
        sconn_close(c);
        return;
    }
    c->len += (size_t)nread;
    if (memmem(c->buf, c->len, "\r\n\r\n", 4) == NULL)
        return;
    bool alt = strncmp(c->buf, "GET /other ", 11) == 0;
    if (alt)
        s->requests_alt++;
    else
        s->requests++;
    if (s->silent)
        return;
    const char *doc = alt ? s->doc_alt : s->doc;
    int status = s->status != 0 ? s->status : 200;
    size_t n = strlen(doc) + 128;
    swrite_t *sw = malloc(sizeof(*sw) + n);
    sw->c = c;
    int len = snprintf(sw->data, n, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                       status, strlen(doc), doc);
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)len);
    uv_write(&sw->w, st, &b, 1, on_swrite);
}

static void on_sconn(uv_stream_t *l, int status)
{
    srv_t *s = l->data;
    if (status < 0)
        return;
    sconn_t *c = calloc(1, sizeof(*c));
    c->srv = s;
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    c->next = s->conns;
    s->conns = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) == 0)
        uv_read_start((uv_stream_t *)&c->tcp, on_salloc, on_sread);
    else
        sconn_close(c);
}

static void srv_start(uv_loop_t *loop, srv_t *s, const char *doc)
{
    memset(s, 0, sizeof(*s));
    s->doc = doc;
    s->doc_alt = DOC3;
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(((unsigned)rand() ^ (unsigned)getpid() * 7919u) % 12000u);
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", port, &a);
        assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
        s->listener.data = s;
        if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) == 0 &&
            uv_listen((uv_stream_t *)&s->listener, 16, on_sconn) == 0) {
            s->port = port;
            s->listening = true;
            return;
        }
        uv_close((uv_handle_t *)&s->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    fail_msg("no free port");
}

static void srv_stop(srv_t *s)
{
    for (sconn_t *c = s->conns; c != NULL; c = c->next)
        sconn_close(c);
    if (s->listening) {
        s->listening = false;
        uv_close((uv_handle_t *)&s->listener, NULL);
    }
}

/* ---- harness -------------------------------------------------------------------------------- */

static uv_loop_t loop;
static sl_jwks_store_t *store;
static int stopped;

static int setup(void **state)
{
    (void)state;
    sl_h1_fetch_register_errors();
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(sl_jwks_store_create(&loop, &sl_h1_fetcher, &store), 0);
    stopped = 0;
    return 0;
}

static void on_stopped(void *arg)
{
    (void)arg;
    stopped++;
}

static void stop_all(srv_t *s)
{
    sl_jwks_store_stop(store, on_stopped, NULL);
    assert_int_equal(stopped, 0); /* asynchronous */
    if (s != NULL)
        srv_stop(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(stopped, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until `cond` or `ms` passed; a timer keeps the loop from blocking forever. */
#define RUN_UNTIL(cond, ms)                                                                                            \
    do {                                                                                                               \
        uv_timer_t tick_;                                                                                              \
        uv_timer_init(&loop, &tick_);                                                                                  \
        uv_timer_start(&tick_, on_wake, 10, 10);                                                                       \
        uint64_t end_ = uv_hrtime() + (uint64_t)(ms)*1000000u;                                                         \
        while (!(cond) && uv_hrtime() < end_)                                                                          \
            uv_run(&loop, UV_RUN_ONCE);                                                                                \
        uv_close((uv_handle_t *)&tick_, NULL);                                                                         \
        uv_run(&loop, UV_RUN_NOWAIT);                                                                                  \
    } while (0)

typedef struct cfgbuf {
    sl_config_t cfg;
    sl_jwt_issuer_conf_t iss[6];
    char keys[6][256];
} cfgbuf_t;

static void add_issuer(cfgbuf_t *b, const char *name, enum sl_jwt_key_source src, const char *key, uint64_t refresh_ms)
{
    size_t i = b->cfg.njwt_issuers++;
    snprintf(b->keys[i], sizeof(b->keys[i]), "%s", key);
    b->iss[i] = (sl_jwt_issuer_conf_t){
        .name = sl_str_from_cstr(name),
        .issuer = SL_STR_LIT("https://idp.example.com"),
        .source = src,
        .keys = sl_str_from_cstr(b->keys[i]),
        .jwks_refresh_ms = refresh_ms,
        .jwks_timeout_ms = 1000,
        .pos = {.line = (uint32_t)(10 + i), .col = 3},
    };
    b->cfg.jwt_issuers = b->iss;
    b->cfg.path = SL_STR_LIT("sluice.yaml");
}

static void url_issuer(cfgbuf_t *b, const char *name, const srv_t *s, const char *path, uint64_t refresh_ms)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s->port, path);
    add_issuer(b, name, SL_JWT_KEYS_JWKS_URL, url, refresh_ms);
}

static int apply(cfgbuf_t *b, sl_config_errors_t *errs)
{
    return sl_jwks_store_apply(store, &b->cfg, errs);
}

static void apply_ok(cfgbuf_t *b)
{
    sl_config_errors_t errs = {0};
    int rc = apply(b, &errs);
    if (rc != 0)
        sl_config_errors_print(&errs, stderr);
    assert_int_equal(rc, 0);
    assert_int_equal(errs.count, 0);
    sl_config_errors_dispose(&errs);
}

static bool has_kid(const char *issuer, const char *kid, uint64_t *gen)
{
    sl_jwks_t *k = sl_jwks_store_get(store, sl_str_from_cstr(issuer), gen);
    bool yes = k != NULL && sl_jwks_has_kid(k, sl_str_from_cstr(kid));
    sl_jwks_unref(k);
    return yes;
}

typedef struct infos {
    sl_jwks_store_info_t info[6];
    char err[6][256];
    size_t n;
} infos_t;

static void visit(void *arg, const sl_jwks_store_info_t *i)
{
    infos_t *in = arg;
    in->info[in->n] = *i;
    snprintf(in->err[in->n], sizeof(in->err[0]), "%s", i->last_error);
    in->info[in->n].last_error = in->err[in->n];
    in->n++;
}

static sl_jwks_store_info_t info_of(size_t i)
{
    infos_t in = {0};
    sl_jwks_store_each(store, visit, &in);
    assert_true(i < in.n);
    return in.info[i];
}

static uint64_t failures_of(size_t i)
{
    return info_of(i).failures;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_initial_fetch(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 60000);
    apply_ok(&b);
    uint64_t gen = 0;
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("idp"), &gen)); /* not fetched yet */
    assert_int_equal(gen, 0);
    RUN_UNTIL(has_kid("idp", "k1", &gen), 3000);
    assert_true(has_kid("idp", "k1", &gen));
    assert_true(gen != 0);
    assert_true(sl_jwks_store_generation(store, SL_STR_LIT("idp")) == gen);
    assert_true(sl_jwks_store_generation(store, SL_STR_LIT("other")) == 0);
    assert_int_equal(s.requests, 1);
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("other"), NULL));
    sl_jwks_store_info_t i = info_of(0);
    assert_string_equal(i.issuer, "idp");
    assert_string_equal(i.source, "jwks_url");
    assert_int_equal(i.nkeys, 1);
    assert_int_equal(i.fetches, 1);
    assert_true(i.loaded_ms > 0);
    stop_all(&s);
}

static void test_refresh_picks_up_rotation_and_keeps_identical_sets(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 100);
    apply_ok(&b);
    uint64_t g1 = 0, g2 = 0;
    RUN_UNTIL(has_kid("idp", "k1", &g1), 3000);
    RUN_UNTIL(s.requests >= 3, 3000); /* the same document twice more */
    assert_true(s.requests >= 3);
    assert_true(has_kid("idp", "k1", &g2));
    assert_true(g1 == g2); /* identical document: same set, cached verdicts stay */
    s.doc = DOC12;         /* the provider adds k2 */
    RUN_UNTIL(has_kid("idp", "k2", &g2), 3000);
    assert_true(has_kid("idp", "k2", &g2));
    assert_true(has_kid("idp", "k1", NULL));
    assert_true(g2 > g1);
    assert_true(sl_jwks_store_generation(store, SL_STR_LIT("idp")) == g2);
    stop_all(&s);
}

static void test_provider_down_keeps_last_good_set(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 100);
    apply_ok(&b);
    uint64_t g1 = 0, g = 0;
    RUN_UNTIL(has_kid("idp", "k1", &g1), 3000);
    /* 503, then an unusable document, then nobody listening: the set stays through all. */
    s.status = 503;
    RUN_UNTIL(failures_of(0) >= 1, 3000);
    assert_true(failures_of(0) >= 1);
    assert_string_equal(info_of(0).last_error, "status 503");
    assert_true(has_kid("idp", "k1", &g));
    assert_true(g == g1);
    s.status = 0;
    s.doc = "{\"keys\":[]}";
    uint64_t f = failures_of(0);
    RUN_UNTIL(failures_of(0) > f, 5000); /* retried after 1 s, capped at the 100 ms refresh */
    assert_true(strncmp(info_of(0).last_error, "unusable key set", 16) == 0);
    assert_true(has_kid("idp", "k1", &g));
    srv_stop(&s);
    f = failures_of(0);
    RUN_UNTIL(failures_of(0) > f, 5000);
    assert_string_equal(info_of(0).last_error, "connection refused");
    assert_true(has_kid("idp", "k1", &g));
    assert_true(g == g1);
    assert_int_equal(info_of(0).nkeys, 1);
    stop_all(NULL);
}

static void test_first_fetch_failing_then_provider_up(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    s.status = 500;
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 60000);
    apply_ok(&b);
    RUN_UNTIL(failures_of(0) >= 1, 3000);
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("idp"), NULL));
    s.status = 0;
    /* The retry comes after SL_JWKS_RETRY_MIN_MS, not after the 60 s refresh. */
    RUN_UNTIL(has_kid("idp", "k1", NULL), 3000);
    assert_true(has_kid("idp", "k1", NULL));
    assert_string_equal(info_of(0).last_error, "");
    stop_all(&s);
}

typedef struct asker {
    uv_thread_t th;
    int n;
} asker_t;

static void ask_from_thread(void *arg)
{
    asker_t *a = arg;
    for (int i = 0; i < a->n; i++)
        sl_jwks_store_request_refresh(store, SL_STR_LIT("idp"));
}

static void test_unknown_kid_refresh_is_rate_limited(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 60000);
    apply_ok(&b);
    RUN_UNTIL(has_kid("idp", "k1", NULL), 3000);
    assert_int_equal(s.requests, 1);
    /* Within SL_JWKS_REFRESH_MIN_MS of the first fetch: nothing. */
    sl_jwks_store_request_refresh(store, SL_STR_LIT("idp"));
    RUN_UNTIL(false, 100);
    assert_int_equal(s.requests, 1);

    /* A window long enough that a loaded machine does not see it pass during the checks. */
    sl_jwks_store_set_refresh_min_ms(store, 1000);
    RUN_UNTIL(false, 1050);
    s.doc = DOC12;
    /* Many workers meeting the new kid at once: one fetch. */
    asker_t a[4];
    for (int i = 0; i < 4; i++) {
        a[i].n = 1000;
        assert_int_equal(uv_thread_create(&a[i].th, ask_from_thread, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        uv_thread_join(&a[i].th);
    sl_jwks_store_request_refresh(store, SL_STR_LIT("nobody")); /* unknown: ignored */
    RUN_UNTIL(has_kid("idp", "k2", NULL), 3000);
    RUN_UNTIL(false, 100);
    assert_int_equal(s.requests, 2);
    for (int i = 0; i < 50; i++)
        sl_jwks_store_request_refresh(store, SL_STR_LIT("idp"));
    RUN_UNTIL(false, 100);
    assert_int_equal(s.requests, 2);
    RUN_UNTIL(false, 1000); /* the window has passed: one more */
    sl_jwks_store_request_refresh(store, SL_STR_LIT("idp"));
    RUN_UNTIL(s.requests == 3, 2000);
    assert_int_equal(s.requests, 3);
    assert_int_equal(info_of(0).fetches, 3);
    stop_all(&s);
}

static void test_reload_unchanged_changed_removed(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 60000);
    url_issuer(&b, "gone", &s, "/jwks", 60000);
    apply_ok(&b);
    uint64_t g1 = 0, g = 0;
    RUN_UNTIL(has_kid("idp", "k1", &g1) && has_kid("gone", "k1", NULL), 3000);
    assert_int_equal(s.requests, 2);

    /* Unchanged: no fetch, same set. */
    cfgbuf_t b2 = {0};
    url_issuer(&b2, "idp", &s, "/jwks", 60000);
    apply_ok(&b2);
    RUN_UNTIL(false, 100);
    assert_int_equal(s.requests, 2);
    assert_true(has_kid("idp", "k1", &g));
    assert_true(g == g1);
    /* Removed. */
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("gone"), NULL));

    /* A changed URL is a new source: fetched at once, the old set not carried over. */
    cfgbuf_t b3 = {0};
    url_issuer(&b3, "idp", &s, "/other", 60000);
    apply_ok(&b3);
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("idp"), NULL));
    RUN_UNTIL(has_kid("idp", "k3", NULL), 3000);
    assert_true(has_kid("idp", "k3", NULL));
    assert_false(has_kid("idp", "k1", NULL));
    assert_int_equal(s.requests_alt, 1);
    stop_all(&s);
}

static char tmpdir[64];

static void write_file(const char *name, const char *text, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", tmpdir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static bool errs_contain(const sl_config_errors_t *errs, const char *needle)
{
    for (size_t i = 0; i < errs->count; i++)
        if (strstr(errs->items[i].message, needle) != NULL)
            return true;
    return false;
}

static void test_file_and_env_sources(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sl-jwks-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char good[128], bad[128], empty[128], missing[128];
    write_file("good.json", DOC12, good, sizeof(good));
    write_file("bad.json", "{\"keys\": not json", bad, sizeof(bad));
    write_file("empty.json", "{\"keys\":[]}", empty, sizeof(empty));
    char pem[128];
    write_file("ec.pem",
               "-----BEGIN PUBLIC KEY-----\n"
               "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/NkND9znxTSiNOTeoT6QrFv/309t\n"
               "dsH1Eup5lxINL+F798PSsTyuvrz3DTr3vyRXi6ZsZQfy0utB2iovyNc0bg==\n"
               "-----END PUBLIC KEY-----\n",
               pem, sizeof(pem));
    snprintf(missing, sizeof(missing), "%s/missing.json", tmpdir);
    setenv("SL_TEST_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    setenv("SL_TEST_JWT_SHORT", "short", 1);
    unsetenv("SL_TEST_JWT_UNSET");

    cfgbuf_t b = {0};
    add_issuer(&b, "file", SL_JWT_KEYS_JWKS_FILE, good, 0);
    add_issuer(&b, "hmac", SL_JWT_KEYS_SECRET, "SL_TEST_JWT_SECRET", 0);
    b.iss[1].algorithms = SL_JWT_SET_HS256;
    add_issuer(&b, "pem", SL_JWT_KEYS_PEM_FILE, pem, 0);
    b.iss[2].algorithms = SL_JWT_SET_ES256;
    apply_ok(&b);
    sl_jwks_t *ec = sl_jwks_store_get(store, SL_STR_LIT("pem"), NULL);
    assert_non_null(ec);
    assert_int_equal(sl_jwks_count(ec), 1);
    sl_jwks_unref(ec);
    assert_string_equal(info_of(2).source, "public_key_file");
    uint64_t g1 = 0;
    assert_true(has_kid("file", "k2", &g1));
    sl_jwks_t *h = sl_jwks_store_get(store, SL_STR_LIT("hmac"), NULL);
    assert_non_null(h);
    assert_int_equal(sl_jwks_count(h), 1);
    assert_string_equal(info_of(1).source, "secret_env");

    /* Each bad source is one error naming its file or variable; nothing is applied. */
    cfgbuf_t e = {0};
    add_issuer(&e, "a", SL_JWT_KEYS_JWKS_FILE, missing, 0);
    add_issuer(&e, "b", SL_JWT_KEYS_JWKS_FILE, bad, 0);
    add_issuer(&e, "c", SL_JWT_KEYS_JWKS_FILE, empty, 0);
    add_issuer(&e, "d", SL_JWT_KEYS_SECRET, "SL_TEST_JWT_UNSET", 0);
    add_issuer(&e, "e", SL_JWT_KEYS_PEM_FILE, good, 0); /* JSON is not PEM */
    e.iss[4].algorithms = SL_JWT_SET_RS256;
    sl_config_errors_t errs = {0};
    assert_int_equal(apply(&e, &errs), SL_ECONFIG);
    assert_int_equal(errs.count, 5);
    char want[256];
    snprintf(want, sizeof(want), "jwt issuer a: jwks_file %s: ", missing);
    assert_true(errs_contain(&errs, want));
    snprintf(want, sizeof(want), "jwt issuer b: jwks_file %s: ", bad);
    assert_true(errs_contain(&errs, want));
    snprintf(want, sizeof(want), "jwt issuer c: jwks_file %s: ", empty);
    assert_true(errs_contain(&errs, want));
    assert_true(errs_contain(&errs, "jwt issuer d: secret_env SL_TEST_JWT_UNSET is not set or empty"));
    snprintf(want, sizeof(want), "jwt issuer e: public_key_file %s: ", good);
    assert_true(errs_contain(&errs, want));
    assert_string_equal(errs.items[0].file.ptr, "sluice.yaml");
    assert_int_equal(errs.items[0].line, 10);
    sl_config_errors_dispose(&errs);
    cfgbuf_t w = {0};
    add_issuer(&w, "weak", SL_JWT_KEYS_SECRET, "SL_TEST_JWT_SHORT", 0);
    sl_config_errors_t errs2 = {0};
    assert_int_equal(apply(&w, &errs2), SL_ECONFIG);
    assert_int_equal(errs2.count, 1);
    assert_true(errs_contain(&errs2, "secret_env SL_TEST_JWT_SHORT"));
    assert_false(errs_contain(&errs2, "short")); /* never the secret */
    sl_config_errors_dispose(&errs2);
    /* The store is as before. */
    uint64_t g = 0;
    assert_true(has_kid("file", "k2", &g));
    assert_true(g == g1);
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("a"), NULL));

    /* A reload re-reads the file: a rotated file is a new set; the old one stays valid for
     * whoever holds it. */
    write_file("good.json", DOC3, good, sizeof(good));
    apply_ok(&b);
    assert_true(has_kid("file", "k3", &g));
    assert_true(g != g1);
    assert_int_equal(sl_jwks_count(h), 1);
    sl_jwks_unref(h);

    unlink(good);
    unlink(pem);
    unlink(bad);
    unlink(empty);
    rmdir(tmpdir);
    stop_all(NULL);
}

static void test_stop_with_a_fetch_in_flight(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    s.silent = true;
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 60000);
    apply_ok(&b);
    RUN_UNTIL(s.requests == 1, 3000);
    stop_all(&s);
}

static void test_unresolvable_provider_is_a_failure(void **state)
{
    (void)state;
    cfgbuf_t b = {0};
    add_issuer(&b, "idp", SL_JWT_KEYS_JWKS_URL, "http://nonexistent.invalid/jwks", 60000);
    apply_ok(&b);
    RUN_UNTIL(failures_of(0) >= 1, 5000);
    assert_string_equal(info_of(0).last_error, "host name not resolved");
    assert_null(sl_jwks_store_get(store, SL_STR_LIT("idp"), NULL));
    stop_all(NULL);
}

/* Readers on other threads take and verify-hold sets while the main thread replaces them as
 * fast as the server answers: ASan/TSan would see a set freed under a reader. */
static atomic_bool readers_stop;

static void reader(void *arg)
{
    uint64_t *seen = arg;
    while (!atomic_load(&readers_stop)) {
        uint64_t gen = 0;
        sl_jwks_t *k = sl_jwks_store_get(store, SL_STR_LIT("idp"), &gen);
        if (k != NULL) {
            assert_true(sl_jwks_count(k) >= 1);
            assert_int_equal(sl_jwks_generation(k), gen);
            assert_true(sl_jwks_store_generation(store, SL_STR_LIT("idp")) >= gen);
            (*seen)++;
        }
        sl_jwks_unref(k);
        sl_jwks_store_request_refresh(store, SL_STR_LIT("idp"));
    }
}

static void test_readers_while_sets_are_replaced(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, DOC1);
    cfgbuf_t b = {0};
    url_issuer(&b, "idp", &s, "/jwks", 60000);
    apply_ok(&b);
    sl_jwks_store_set_refresh_min_ms(store, 0);
    RUN_UNTIL(has_kid("idp", "k1", NULL), 3000);
    atomic_store(&readers_stop, false);
    uv_thread_t th[4];
    uint64_t seen[4] = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(uv_thread_create(&th[i], reader, &seen[i]), 0);
    uint64_t end = uv_hrtime() + 800 * 1000000ull;
    int flips = 0;
    while (uv_hrtime() < end) {
        s.doc = (flips++ & 1) ? DOC1 : DOC12; /* every fetch a new set */
        int before = s.requests;
        RUN_UNTIL(s.requests > before, 500);
        /* An apply with the same issuer plus a changing file issuer swaps the table too. */
        if (flips % 5 == 0) {
            cfgbuf_t b2 = {0};
            url_issuer(&b2, "idp", &s, "/jwks", 60000);
            if (flips % 10 == 0)
                url_issuer(&b2, "extra", &s, "/other", 60000);
            apply_ok(&b2);
        }
    }
    atomic_store(&readers_stop, true);
    for (int i = 0; i < 4; i++)
        uv_thread_join(&th[i]);
    assert_true(s.requests > 5);
    for (int i = 0; i < 4; i++)
        assert_true(seen[i] > 0);
    stop_all(&s);
}

int main(void)
{
    srand((unsigned)uv_hrtime());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_initial_fetch, setup),
        cmocka_unit_test_setup(test_refresh_picks_up_rotation_and_keeps_identical_sets, setup),
        cmocka_unit_test_setup(test_provider_down_keeps_last_good_set, setup),
        cmocka_unit_test_setup(test_first_fetch_failing_then_provider_up, setup),
        cmocka_unit_test_setup(test_unknown_kid_refresh_is_rate_limited, setup),
        cmocka_unit_test_setup(test_reload_unchanged_changed_removed, setup),
        cmocka_unit_test_setup(test_file_and_env_sources, setup),
        cmocka_unit_test_setup(test_stop_with_a_fetch_in_flight, setup),
        cmocka_unit_test_setup(test_unresolvable_provider_is_a_failure, setup),
        cmocka_unit_test_setup(test_readers_while_sets_are_replaced, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
