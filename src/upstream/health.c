/*
 * Active health checker. A table of checked targets, keyed by (upstream name, address), each with
 * a repeating timer; each tick starts one probe (resolve if needed, connect, send a GET, read the
 * response head) bounded by one timeout timer. Results go through sl_health_record and, on a
 * change, flip SL_TARGET_UNHEALTHY in the current snapshot's target state and log one line.
 * Targets of a TLS upstream are probed over TLS with the upstream's own context, server name
 * and verification, so a certificate problem shows as a failing probe ("tls: ...").
 */
#include "upstream/health.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/time.h"
#include "http1/parser.h"
#include "tls/tls.h"
#include "upstream/balancer.h"
#include "upstream/connpool.h"
#include "upstream/proxy.h"

#define PROBE_HEAD_MAX 8192
#define PROBE_HEADERS  64
#define RESULT_MAX     128 /* room for "tls: certificate verify failed: <OpenSSL's reason>" */

typedef struct probe probe_t;
typedef struct hc_target hc_target_t;

struct hc_target {
    hc_target_t *next;
    sl_health_t *h;
    char *upstream, *address; /* the key; owned copies, as snapshots come and go */
    sl_health_counts_t counts;
    char last_result[RESULT_MAX];
    uint64_t last_check_ms;
    /* Bound by the last apply; valid while h->snap is held. */
    const sl_upstream_conf_t *conf;
    const sl_target_conf_t *tconf;
    sl_target_state_t *state;
    uint64_t interval_ms; /* what the timer runs with, to restart it when the config changes */
    bool seen;            /* mark of the current apply */
    uv_timer_t timer;
    probe_t *probe; /* in flight, or NULL */
};

struct probe {
    sl_health_t *h;
    hc_target_t *t; /* NULL once cancelled: the result is then dropped */
    int pending;    /* handles and requests not yet called back; freed at 0 */
    bool done, tcp_open, resolving;
    uv_timer_t timeout;
    uv_tcp_t tcp;
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_write_t write;
    uint16_t status_min, status_max;
    /* TLS upstreams: the context (a reference: a reload may free the config meanwhile), the
     * names copied for the same reason, and the connection once the socket is connected. */
    sl_tls_client_ctx_t *tls_ctx;
    sl_tls_conn_t *tls;
    char *sni, *name;
    char *req;
    size_t req_len;
    size_t rlen;
    char rbuf[PROBE_HEAD_MAX];
};

struct sl_health {
    uv_loop_t *loop;
    sl_snapshot_t *snap;
    hc_target_t *targets;
    uv_timer_t anchor; /* never started: closing it makes sl_health_stop's callback asynchronous */
    size_t open;       /* handles and probes not yet closed, while stopping */
    bool stopping;
    void (*done)(void *);
    void *done_arg;
};

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = sl_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

/* ---- the state machine ---------------------------------------------------------------------- */

enum sl_health_change sl_health_record(sl_health_counts_t *c, bool ok, uint32_t healthy, uint32_t unhealthy)
{
    if (ok) {
        c->failures = 0;
        if (c->successes < UINT32_MAX)
            c->successes++;
        if (!c->healthy && c->successes >= healthy) {
            c->healthy = true;
            return SL_HEALTH_BECAME_HEALTHY;
        }
    } else {
        c->successes = 0;
        if (c->failures < UINT32_MAX)
            c->failures++;
        if (c->healthy && c->failures >= unhealthy) {
            c->healthy = false;
            return SL_HEALTH_BECAME_UNHEALTHY;
        }
    }
    return SL_HEALTH_SAME;
}

static void write_flag(hc_target_t *t)
{
    if (t->state == NULL)
        return;
    if (t->counts.healthy)
        atomic_fetch_and(&t->state->flags, ~SL_TARGET_UNHEALTHY);
    else
        atomic_fetch_or(&t->state->flags, SL_TARGET_UNHEALTHY);
}

static void record_result(hc_target_t *t, bool ok, const char *reason)
{
    snprintf(t->last_result, sizeof(t->last_result), "%s", reason);
    t->last_check_ms = sl_time_wall_ms();
    enum sl_health_change ch =
        sl_health_record(&t->counts, ok, t->conf->health_active.healthy, t->conf->health_active.unhealthy);
    if (ch == SL_HEALTH_SAME)
        return;
    write_flag(t);
    if (ch == SL_HEALTH_BECAME_UNHEALTHY)
        sl_log_warn("upstream %s target %s is unhealthy: %s (%u failure%s)", t->upstream, t->address, reason,
                    t->counts.failures, t->counts.failures == 1 ? "" : "s");
    else
        sl_log_info("upstream %s target %s is healthy again: %s (%u success%s)", t->upstream, t->address, reason,
                    t->counts.successes, t->counts.successes == 1 ? "" : "es");
}

/* ---- one probe ------------------------------------------------------------------------------ */

static void health_release(sl_health_t *h);

static void probe_unpend(probe_t *p)
{
    SL_BUG_ON(p->pending <= 0);
    if (--p->pending > 0)
        return;
    sl_health_t *h = p->h;
    sl_tls_conn_destroy(p->tls); /* the socket is closed: its queued writes were cancelled */
    sl_tls_client_ctx_unref(p->tls_ctx);
    free(p->sni);
    free(p->name);
    free(p->req);
    free(p);
    health_release(h);
}

static void probe_close_cb(uv_handle_t *hd)
{
    probe_unpend(hd->data);
}

static const char *reason_of(int err)
{
    switch (err) {
    case UV_ECONNREFUSED:
        return "connection refused";
    case UV_ECONNRESET:
        return "connection reset";
    case UV_ETIMEDOUT:
        return "timed out";
    case UV_EOF:
        return "connection closed before the response head";
    case UV_ENETUNREACH:
    case UV_EHOSTUNREACH:
        return "no route to host";
    default:
        return uv_strerror(err);
    }
}

/* Ends the probe exactly once: records the result (unless cancelled) and closes everything;
 * late callbacks of the closed handles see `done` and only release. */
static void probe_finish(probe_t *p, bool ok, const char *reason)
{
    if (p->done)
        return;
    p->done = true;
    hc_target_t *t = p->t;
    if (t != NULL) {
        t->probe = NULL;
        p->t = NULL;
        record_result(t, ok, reason);
    }
    uv_close((uv_handle_t *)&p->timeout, probe_close_cb);
    if (p->tcp_open)
        uv_close((uv_handle_t *)&p->tcp, probe_close_cb);
    if (p->resolving)
        uv_cancel((uv_req_t *)&p->gai); /* its callback still comes, with UV_ECANCELED */
}

static void probe_cancel(probe_t *p)
{
    p->t = NULL;
    probe_finish(p, false, "cancelled");
}

static void on_probe_timeout(uv_timer_t *tm)
{
    probe_finish(tm->data, false, "timed out");
}

/* Ciphertext of TLS probes; the checker runs on one thread, one read at a time. */
static _Thread_local char probe_tls_in[16384 + 512];

static void on_probe_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    probe_t *p = hd->data;
    if (p->tls != NULL)
        *buf = uv_buf_init(probe_tls_in, sizeof(probe_tls_in));
    else
        *buf = uv_buf_init(p->rbuf + p->rlen, (unsigned)(sizeof(p->rbuf) - p->rlen));
}

static void probe_parse(probe_t *p);
static void on_probe_write(uv_write_t *w, int status);

static void probe_tls_failed(probe_t *p, int err)
{
    char reason[RESULT_MAX];
    probe_finish(p, false, sl_tls_handshake_failure(p->tls, err, reason, sizeof(reason)));
}

/* Ciphertext arrived: the handshake (then the request), or response bytes into rbuf. */
static void probe_tls_bytes(probe_t *p, const char *data, size_t n)
{
    sl_tls_conn_feed(p->tls, data, n);
    if (!sl_tls_conn_handshake_done(p->tls)) {
        int r = sl_tls_conn_handshake(p->tls);
        int f = sl_tls_conn_flush(p->tls);
        if (r < 0 || f < 0) {
            probe_tls_failed(p, r < 0 ? r : f);
            return;
        }
        if (r == 0)
            return;
        uv_buf_t b = uv_buf_init(p->req, (unsigned)p->req_len);
        p->write.data = p;
        if (sl_tls_conn_write(p->tls, &p->write, &b, 1, on_probe_write) < 0) {
            probe_finish(p, false, "tls: write failed");
            return;
        }
    }
    while (!p->done) {
        if (p->rlen == sizeof(p->rbuf)) {
            probe_finish(p, false, "response head too large");
            return;
        }
        int r = sl_tls_conn_read(p->tls, p->rbuf + p->rlen, sizeof(p->rbuf) - p->rlen);
        if (r == 0)
            break;
        if (r == SL_ECLOSED) {
            probe_finish(p, false, "connection closed before the response head");
            return;
        }
        if (r < 0) {
            probe_tls_failed(p, SL_EINVALID); /* an alert: e.g. our client certificate refused (TLS 1.3) */
            return;
        }
        p->rlen += (size_t)r;
        probe_parse(p);
    }
    if (!p->done && sl_tls_conn_flush(p->tls) < 0)
        probe_finish(p, false, "connection reset");
}

static void on_probe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    probe_t *p = s->data;
    if (p->done || nread == 0)
        return;
    if (nread < 0) {
        if (p->tls != NULL && !sl_tls_conn_handshake_done(p->tls))
            probe_tls_failed(p, (int)nread);
        else
            probe_finish(p, false, reason_of((int)nread));
        return;
    }
    if (p->tls != NULL) {
        probe_tls_bytes(p, buf->base, (size_t)nread);
        return;
    }
    p->rlen += (size_t)nread;
    probe_parse(p);
}

/* The response head so far in rbuf: finishes the probe once the final head is complete. */
static void probe_parse(probe_t *p)
{
    sl_header_t headers[PROBE_HEADERS];
    sl_h1_limits_t limits = {
        .max_head_bytes = PROBE_HEAD_MAX, .max_uri_bytes = PROBE_HEAD_MAX, .max_headers = PROBE_HEADERS};
    for (;;) {
        sl_h1_response_t resp = {.headers = headers};
        int rc = sl_h1_parse_response(p->rbuf, p->rlen, &resp, &limits, false);
        if (rc == SL_EINCOMPLETE) {
            if (p->rlen == sizeof(p->rbuf))
                probe_finish(p, false, "response head too large");
            return;
        }
        if (rc < 0) {
            probe_finish(p, false, "bad response");
            return;
        }
        if (resp.status < 200) {
            /* An interim 1xx head: the final one follows (RFC 9110 §15.2). */
            memmove(p->rbuf, p->rbuf + rc, p->rlen - (size_t)rc);
            p->rlen -= (size_t)rc;
            continue;
        }
        char reason[RESULT_MAX];
        snprintf(reason, sizeof(reason), "status %d", resp.status);
        probe_finish(p, resp.status >= p->status_min && resp.status <= p->status_max, reason);
        return;
    }
}

static void on_probe_write(uv_write_t *w, int status)
{
    probe_t *p = w->data;
    if (!p->done && status < 0)
        probe_finish(p, false, reason_of(status));
}

static void on_probe_connect(uv_connect_t *c, int status)
{
    probe_t *p = c->data;
    if (p->done)
        return;
    if (status < 0) {
        probe_finish(p, false, reason_of(status));
        return;
    }
    if (p->tls_ctx != NULL) {
        /* The ClientHello now; the request once the handshake is done (probe_tls_bytes). */
        sl_tls_upstream_conn_create(p->tls_ctx, (uv_stream_t *)&p->tcp, p->sni, p->name, NULL, NULL, NULL, &p->tls);
        int r = sl_tls_conn_handshake(p->tls);
        int err = sl_tls_conn_flush(p->tls);
        if (r < 0 || err < 0) {
            probe_tls_failed(p, r < 0 ? r : err);
            return;
        }
        err = uv_read_start((uv_stream_t *)&p->tcp, on_probe_alloc, on_probe_read);
        if (err != 0)
            probe_finish(p, false, reason_of(err));
        return;
    }
    uv_buf_t b = uv_buf_init(p->req, (unsigned)p->req_len);
    p->write.data = p;
    int err = uv_write(&p->write, (uv_stream_t *)&p->tcp, &b, 1, on_probe_write);
    if (err == 0)
        err = uv_read_start((uv_stream_t *)&p->tcp, on_probe_alloc, on_probe_read);
    if (err != 0)
        probe_finish(p, false, reason_of(err));
}

static void probe_connect(probe_t *p, const struct sockaddr *addr)
{
    int err = uv_tcp_init(p->h->loop, &p->tcp);
    if (err != 0) {
        probe_finish(p, false, reason_of(err));
        return;
    }
    p->tcp.data = p;
    p->tcp_open = true;
    p->pending++;
    p->connect.data = p;
    err = uv_tcp_connect(&p->connect, &p->tcp, addr, on_probe_connect);
    if (err != 0)
        probe_finish(p, false, reason_of(err));
}

static void on_probe_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    probe_t *p = req->data;
    p->resolving = false;
    if (!p->done) {
        if (status < 0 || res == NULL)
            probe_finish(p, false, "name not resolved");
        else
            probe_connect(p, res->ai_addr);
    }
    uv_freeaddrinfo(res);
    probe_unpend(p);
}

static void probe_start(hc_target_t *t)
{
    const sl_upstream_conf_t *u = t->conf;
    probe_t *p = sl_xcalloc(1, sizeof(*p));
    p->h = t->h;
    p->t = t;
    p->status_min = u->health_active.status_min;
    p->status_max = u->health_active.status_max;
    if (u->tls.ctx != NULL) {
        const char *sni, *name;
        sl_upconn_tls_names(u, t->tconf, &sni, &name);
        p->tls_ctx = sl_tls_client_ctx_ref(u->tls.ctx);
        p->sni = sni != NULL ? xstrdup(sni) : NULL;
        p->name = xstrdup(name);
    }
    const char *host = u->health_active.host.len > 0 ? u->health_active.host.ptr : t->address;
    const char *path = u->health_active.path.len > 0 ? u->health_active.path.ptr : "/";
    int n = snprintf(NULL, 0, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-health\r\nConnection: close\r\n\r\n",
                     path, host);
    p->req = sl_xmalloc((size_t)n + 1);
    p->req_len = (size_t)snprintf(
        p->req, (size_t)n + 1, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-health\r\nConnection: close\r\n\r\n",
        path, host);
    t->probe = p;
    t->h->open++;
    uv_timer_init(p->h->loop, &p->timeout);
    p->timeout.data = p;
    p->pending = 1;
    uv_timer_start(&p->timeout, on_probe_timeout, u->health_active.timeout_ms, 0);
    if (t->tconf->host_is_ip) {
        probe_connect(p, (const struct sockaddr *)&t->tconf->addr);
        return;
    }
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)t->tconf->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    p->gai.data = p;
    p->pending++;
    p->resolving = true;
    int err = uv_getaddrinfo(p->h->loop, &p->gai, on_probe_resolved, t->tconf->host.ptr, port, &hints);
    if (err != 0) {
        p->resolving = false;
        p->pending--;
        probe_finish(p, false, "name not resolved");
    }
}

static void on_tick(uv_timer_t *tm)
{
    hc_target_t *t = tm->data;
    /* timeout < interval makes overlap rare; a probe still running (a slow close) just skips. */
    if (t->probe == NULL && !t->h->stopping)
        probe_start(t);
}

/* ---- the table ------------------------------------------------------------------------------ */

static void health_release(sl_health_t *h)
{
    SL_BUG_ON(h->open == 0);
    if (--h->open > 0 || !h->stopping)
        return;
    void (*done)(void *) = h->done;
    void *arg = h->done_arg;
    sl_snapshot_unref(h->snap);
    free(h);
    if (done != NULL)
        done(arg);
}

static void target_close_cb(uv_handle_t *hd)
{
    hc_target_t *t = hd->data;
    sl_health_t *h = t->h;
    free(t->upstream);
    free(t->address);
    free(t);
    health_release(h);
}

static void target_remove(hc_target_t *t)
{
    if (t->probe != NULL)
        probe_cancel(t->probe);
    uv_timer_stop(&t->timer);
    uv_close((uv_handle_t *)&t->timer, target_close_cb);
}

static void anchor_close_cb(uv_handle_t *hd)
{
    health_release(hd->data);
}

static hc_target_t *target_find(sl_health_t *h, sl_str_t upstream, sl_str_t address)
{
    for (hc_target_t *t = h->targets; t != NULL; t = t->next)
        if (sl_str_eq(sl_str_from_cstr(t->upstream), upstream) && sl_str_eq(sl_str_from_cstr(t->address), address))
            return t;
    return NULL;
}

int sl_health_create(uv_loop_t *loop, sl_health_t **out)
{
    sl_health_t *h = sl_xcalloc(1, sizeof(*h));
    h->loop = loop;
    int err = uv_timer_init(loop, &h->anchor);
    if (err != 0) {
        free(h);
        return err;
    }
    h->anchor.data = h;
    h->open = 1;
    *out = h;
    return 0;
}

void sl_health_apply(sl_health_t *h, sl_snapshot_t *snap)
{
    if (h->stopping)
        return;
    const sl_config_t *cfg = snap->cfg;
    for (hc_target_t *t = h->targets; t != NULL; t = t->next)
        t->seen = false;
    /* A linear lookup per target: reloads are rare and upstreams small; O(n^2) only at apply. */
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const sl_upstream_conf_t *u = &cfg->upstreams[i];
        if (!u->health_active.enabled)
            continue;
        sl_target_state_t *states = sl_proxy_target_states(snap, i);
        for (size_t j = 0; j < u->ntargets; j++) {
            const sl_target_conf_t *tc = &u->targets[j];
            hc_target_t *t = target_find(h, u->name, tc->address);
            uint64_t interval = u->health_active.interval_ms;
            if (t == NULL) {
                t = sl_xcalloc(1, sizeof(*t));
                t->h = h;
                t->upstream = xstrdup(u->name.ptr);
                t->address = sl_xmalloc(tc->address.len + 1);
                memcpy(t->address, tc->address.ptr, tc->address.len);
                t->address[tc->address.len] = '\0';
                t->counts.healthy = true; /* see health.h: no 503 storm at startup */
                uv_timer_init(h->loop, &t->timer);
                t->timer.data = t;
                h->open++;
                t->next = h->targets;
                h->targets = t;
            }
            t->seen = true;
            t->conf = u;
            t->tconf = tc;
            t->state = states != NULL ? &states[j] : NULL;
            write_flag(t);
            if (t->interval_ms != interval) {
                /* Spread the first probes of an upstream over one interval, so N targets are not
                 * all probed in the same tick. */
                t->interval_ms = interval;
                uv_timer_start(&t->timer, on_tick, interval * j / u->ntargets, interval);
            }
        }
    }
    for (hc_target_t **pp = &h->targets; *pp != NULL;) {
        hc_target_t *t = *pp;
        if (t->seen) {
            pp = &t->next;
            continue;
        }
        *pp = t->next;
        target_remove(t);
    }
    sl_snapshot_t *old = h->snap;
    h->snap = sl_snapshot_ref(snap);
    sl_snapshot_unref(old);
}

void sl_health_stop(sl_health_t *h, void (*done)(void *), void *arg)
{
    SL_BUG_ON(h->stopping);
    h->stopping = true;
    h->done = done;
    h->done_arg = arg;
    while (h->targets != NULL) {
        hc_target_t *t = h->targets;
        h->targets = t->next;
        target_remove(t);
    }
    /* Closed always, and its reference released only in its close callback, so `done` never
     * runs inside this call even when nothing else is open. */
    uv_close((uv_handle_t *)&h->anchor, anchor_close_cb);
}

size_t sl_health_each(sl_health_t *h, void (*visit)(void *arg, const sl_health_target_info_t *info), void *arg)
{
    size_t n = 0;
    for (hc_target_t *t = h->targets; t != NULL; t = t->next, n++) {
        sl_health_target_info_t info = {
            .upstream = t->upstream,
            .target = t->address,
            .healthy = t->counts.healthy,
            .last_result = t->last_result,
            .last_check_ms = t->last_check_ms,
        };
        visit(arg, &info);
    }
    return n;
}
