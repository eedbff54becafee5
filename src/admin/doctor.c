/*
 * The doctor: rolling windows over samples of the cumulative counters, and the rule table that
 * turns them into ranked findings (see doctor.h for the design). It sits on the main thread next
 * to the admin API: the server ticks it, GET /doctor reports. Rules read only window deltas and
 * the state the latest sample copied, so a report never touches a worker's counters itself.
 */
#include "admin/doctor.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/bug.h"
#include "http1/server.h"
#include "tls/tls.h"
#include "upstream/balancer.h"
#include "upstream/breaker.h"
#include "upstream/proxy.h"

/* Findings need evidence: below these counts in a window a ratio says nothing. */
#define MIN_CONNECT_FAILURES 3  /* connect failures of a target */
#define MIN_TARGET_ERRORS    5  /* resets / bad responses / 5xx of a target */
#define MIN_TARGET_TIMEOUTS  3  /* upstream timeouts of a target */
#define MIN_LATENCY_SAMPLES  20 /* responses of an upstream before its p99 counts */
#define MIN_UNMATCHED        10 /* route_not_found answers */
#define LATENCY_NEAR_PCT     80 /* p99 at this share of the read timeout is "near" */
#define LAG_WARN_NS          (200ull * 1000000u)
#define LAG_CRIT_NS          (1000ull * 1000000u)
#define FDS_WARN_PCT         80
#define FDS_CRIT_PCT         95
#define CONN_WARN_PCT        90
#define TOP_UNMATCHED        16 /* kept per sample */
#define TOP_UNMATCHED_SHOWN  5  /* in a finding's evidence */
#define HEALTH_STR           96
#define MIN_UNKNOWN_KID      5  /* jwt_unknown_kid refusals of a route */
#define UNKNOWN_KID_PCT      5  /* of the route's requests: a rotation shows as a spike */
#define MIN_EXPIRED          10 /* jwt_expired + token_expired refusals of a route */
#define EXPIRED_PCT          10
#define MIN_NO_KEYS          3  /* jwt_no_keys: every JWT of the issuer fails, few suffice */
#define MIN_REJECTED         20 /* other auth_invalid refusals of a route */
#define REJECTED_PCT         20
#define MIN_FORBIDDEN        20
#define FORBIDDEN_PCT        25
#define MAX_ISSUERS          256          /* key-store views kept per tick */
#define TLS_EXPIRY_WARN_S    (14 * 86400) /* a certificate this close to its end is a finding */
#define OCSP_STALE_WARN_S    (12 * 3600)  /* a stapled OCSP response this close to its nextUpdate */
#define TLS_EXPIRY_CRIT_S    (2 * 86400)

enum severity {
    SEV_CRITICAL = 0,
    SEV_WARNING,
    SEV_INFO,
};

static const char *const severity_names[] = {"critical", "warning", "info"};

/* ---- samples ------------------------------------------------------------------------------ */

typedef struct route_pt {
    uint32_t id;
    uint32_t index; /* config route index; UINT32_MAX = the unrouted series */
    sl_metrics_route_sum_t sum;
} route_pt_t;

typedef struct target_pt {
    uint32_t id;
    uint32_t up, idx; /* config upstream and target index */
    uint32_t flags;   /* SL_TARGET_* at the tick */
    int circuit;      /* enum sl_breaker_state at the tick */
    sl_metrics_target_sum_t sum;
} target_pt_t;

typedef struct sample {
    uint64_t wall_ms; /* 0 = unused slot */
    route_pt_t *routes;
    size_t nroutes, caproutes;
    uint32_t *route_by_id; /* positions in `routes`, sorted by id, for lookups from other samples */
    target_pt_t *targets;  /* in config order: grouped by upstream */
    size_t ntargets, captargets;
    uint32_t *target_by_id;
    sl_doctor_resources_t res;
    sl_metrics_unmatched_t unmatched[TOP_UNMATCHED];
    size_t nunmatched;
} sample_t;

/* One issuer's key set as the JWKS store last showed it (sl_jwks_store_info_t, copied). */
typedef struct issuer_entry {
    char name[HEALTH_STR], source[24], last_error[HEALTH_STR];
    size_t nkeys;
    uint64_t loaded_ms, fetches, failures;
} issuer_entry_t;

typedef struct health_entry {
    char upstream[HEALTH_STR], target[HEALTH_STR], result[HEALTH_STR];
    bool healthy;
    uint64_t last_check_ms;
} health_entry_t;

/* When a finding (rule + place) started to hold, per window: its `since`. */
typedef struct streak {
    char key[192];
    uint64_t first_ms;
    bool seen;
} streak_t;

typedef struct streaks {
    streak_t *items;
    size_t len, cap;
} streaks_t;

struct sl_doctor {
    sl_metrics_t *m;
    sample_t ring[SL_DOCTOR_SAMPLES];
    size_t head;            /* next slot to write */
    size_t count;           /* samples held */
    sl_snapshot_t *snap;    /* of the latest sample: names for its indices */
    health_entry_t *health; /* the last health-check results seen */
    size_t nhealth, caphealth;
    sl_jwks_store_t *jwks;   /* NULL: no key-store details in auth findings */
    issuer_entry_t *issuers; /* the store's issuers at the last tick */
    size_t nissuers, capissuers;
    streaks_t streaks[2]; /* [0]: 60 s window, [1]: 300 s */
};

/* ---- findings ----------------------------------------------------------------------------- */

typedef struct finding {
    enum severity severity;
    enum sl_failure cause;
    char key[192];
    json_t *where;
    json_t *evidence;
    char summary[384];
    char action[320];
    uint64_t weight; /* requests affected (or a comparable size): ranks findings of one severity */
} finding_t;

typedef struct findings {
    finding_t *items;
    size_t len, cap;
} findings_t;

/* A window: the latest sample and the oldest one within window_s of it. */
typedef struct window {
    const sample_t *last, *base;
    size_t base_age; /* ring_at(d, base_age) == base */
    unsigned seconds;
} window_t;

typedef struct eval {
    sl_doctor_t *d;
    window_t w;
    const sl_config_t *cfg; /* of the latest sample */
    findings_t out;
    bool *up_down;           /* [cfg->nupstreams]: every target down (the upstream rule fired) */
    uint64_t total_requests; /* all routes, unrouted included, over the window */
} eval_t;

static void findings_dispose(findings_t *f)
{
    for (size_t i = 0; i < f->len; i++) {
        json_decref(f->items[i].where);
        json_decref(f->items[i].evidence);
    }
    free(f->items);
    memset(f, 0, sizeof(*f));
}

static void __attribute__((format(printf, 3, 4))) fmt(char *buf, size_t cap, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, cap, f, ap);
    va_end(ap);
}

/* Adds a finding; takes the references of `where` and `evidence`. A second finding with the
 * same key (a target listed twice in one upstream) is dropped. */
static finding_t *add_finding(eval_t *e, enum severity sev, enum sl_failure cause, const char *key, json_t *where,
                              json_t *evidence, uint64_t weight)
{
    for (size_t i = 0; i < e->out.len; i++)
        if (strcmp(e->out.items[i].key, key) == 0) {
            json_decref(where);
            json_decref(evidence);
            return NULL;
        }
    if (e->out.len == e->out.cap) {
        e->out.cap = e->out.cap ? 2 * e->out.cap : 8;
        e->out.items = sl_xrealloc(e->out.items, e->out.cap * sizeof(*e->out.items));
    }
    finding_t *f = &e->out.items[e->out.len++];
    memset(f, 0, sizeof(*f));
    f->severity = sev;
    f->cause = cause;
    snprintf(f->key, sizeof(f->key), "%s", key);
    f->where = where;
    f->evidence = evidence;
    f->weight = weight;
    return f;
}

static json_t *jstr(sl_str_t s)
{
    /* Config names are validated UTF-8 text; stringn copes with anything else by failing. */
    json_t *j = json_stringn(s.ptr != NULL ? s.ptr : "", s.len);
    return j != NULL ? j : json_string("?");
}

static json_t *where_of(const sl_str_t *route, const sl_str_t *upstream, const sl_str_t *target)
{
    json_t *w = json_object();
    if (route != NULL)
        json_object_set_new(w, "route", jstr(*route));
    if (upstream != NULL)
        json_object_set_new(w, "upstream", jstr(*upstream));
    if (target != NULL)
        json_object_set_new(w, "target", jstr(*target));
    return w;
}

static unsigned pct(uint64_t part, uint64_t whole)
{
    return whole == 0 ? 0 : (unsigned)((part * 100 + whole / 2) / whole);
}

static json_t *ratio(uint64_t part, uint64_t whole)
{
    return json_real(whole == 0 ? 0.0 : (double)((part * 10000 + whole / 2) / whole) / 10000.0);
}

static void iso8601(uint64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- window arithmetic -------------------------------------------------------------------- */

static uint64_t sub(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

static const sample_t *ring_at(const sl_doctor_t *d, size_t age)
{
    /* age 0 = latest */
    return &d->ring[(d->head + SL_DOCTOR_SAMPLES - 1 - age) % SL_DOCTOR_SAMPLES];
}

static unsigned clamp_window(unsigned window_s)
{
    return window_s <= 60 ? 60 : 300;
}

static window_t window_of(const sl_doctor_t *d, unsigned window_s)
{
    window_t w = {.seconds = clamp_window(window_s)};
    if (d->count == 0)
        return w;
    w.last = w.base = ring_at(d, 0);
    /* Half a tick of slack: ticks drift, and a 60 s window should span 30 ticks, not 29. */
    uint64_t span = (uint64_t)w.seconds * 1000u + SL_DOCTOR_TICK_MS / 2;
    for (size_t age = 1; age < d->count; age++) {
        const sample_t *s = ring_at(d, age);
        if (w.last->wall_ms - s->wall_ms > span)
            break;
        w.base = s;
        w.base_age = age;
    }
    return w;
}

static int pos_find(const uint32_t *by_id, size_t n, const void *arr, size_t stride, size_t id_off, uint32_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t v;
        memcpy(&v, (const char *)arr + by_id[mid] * stride + id_off, sizeof(v));
        if (v < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n) {
        uint32_t v;
        memcpy(&v, (const char *)arr + by_id[lo] * stride + id_off, sizeof(v));
        if (v == id)
            return (int)by_id[lo];
    }
    return -1;
}

static const route_pt_t *route_in(const sample_t *s, uint32_t id)
{
    int i = pos_find(s->route_by_id, s->nroutes, s->routes, sizeof(route_pt_t), offsetof(route_pt_t, id), id);
    return i < 0 ? NULL : &s->routes[i];
}

static const target_pt_t *target_in(const sample_t *s, uint32_t id)
{
    int i = pos_find(s->target_by_id, s->ntargets, s->targets, sizeof(target_pt_t), offsetof(target_pt_t, id), id);
    return i < 0 ? NULL : &s->targets[i];
}

/* The sample at the window's start that has series `id`: a series that appeared later (a
 * reload added it) counts from the first sample that has it. */
static const route_pt_t *route_base(const sl_doctor_t *d, const window_t *w, uint32_t id)
{
    for (size_t age = w->base_age + 1; age-- > 0;) {
        const route_pt_t *p = route_in(ring_at(d, age), id);
        if (p != NULL)
            return p;
    }
    return NULL;
}

static const target_pt_t *target_base(const sl_doctor_t *d, const window_t *w, uint32_t id)
{
    for (size_t age = w->base_age + 1; age-- > 0;) {
        const target_pt_t *p = target_in(ring_at(d, age), id);
        if (p != NULL)
            return p;
    }
    return NULL;
}

static void route_delta(const sl_doctor_t *d, const window_t *w, const route_pt_t *now, sl_metrics_route_sum_t *out)
{
    const route_pt_t *then = route_base(d, w, now->id);
    memset(out, 0, sizeof(*out));
    if (then == NULL)
        return;
    out->requests = sub(now->sum.requests, then->sum.requests);
    out->status_5xx = sub(now->sum.status_5xx, then->sum.status_5xx);
    for (size_t c = 0; c < SL_CAUSE__COUNT; c++)
        out->causes[c] = sub(now->sum.causes[c], then->sum.causes[c]);
    for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++)
        out->auth[k] = sub(now->sum.auth[k], then->sum.auth[k]);
}

static void target_delta(const sl_doctor_t *d, const window_t *w, const target_pt_t *now, sl_metrics_target_sum_t *out)
{
    const target_pt_t *then = target_base(d, w, now->id);
    memset(out, 0, sizeof(*out));
    if (then == NULL)
        return;
    for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++) {
        out->first_byte.buckets[b] = sub(now->sum.first_byte.buckets[b], then->sum.first_byte.buckets[b]);
        out->first_byte.count += out->first_byte.buckets[b];
    }
    out->first_byte.sum_ns = sub(now->sum.first_byte.sum_ns, then->sum.first_byte.sum_ns);
    for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
        out->errors[k] = sub(now->sum.errors[k], then->sum.errors[k]);
}

uint64_t sl_doctor_hist_quantile_ns(const sl_metrics_hist_sum_t *h, double q)
{
    uint64_t count = 0;
    for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++)
        count += h->buckets[b];
    if (count == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    /* As Prometheus' histogram_quantile: find the bucket holding the rank, interpolate linearly
     * inside it; a rank in +Inf answers the largest finite bound. */
    double rank = q * (double)count;
    uint64_t cum = 0;
    for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++) {
        uint64_t n = h->buckets[b];
        if (n == 0 || (double)(cum + n) < rank) {
            cum += n;
            continue;
        }
        if (b == SL_METRICS_HIST_BUCKETS - 1)
            return sl_metrics_hist_bound_ns(SL_METRICS_HIST_BUCKETS - 2);
        double lo = b == 0 ? 0.0 : (double)sl_metrics_hist_bound_ns(b - 1);
        double hi = (double)sl_metrics_hist_bound_ns(b);
        double inside = rank - (double)cum;
        if (inside < 0)
            inside = 0;
        return (uint64_t)(lo + (hi - lo) * inside / (double)n);
    }
    return sl_metrics_hist_bound_ns(SL_METRICS_HIST_BUCKETS - 2);
}

/* ---- per-target view ---------------------------------------------------------------------- */

typedef struct tview {
    const target_pt_t *pt;
    const sl_upstream_conf_t *uc;
    const sl_target_conf_t *tc;
    sl_metrics_target_sum_t d;
    uint64_t tries;          /* got a response head, or failed before one */
    uint64_t connect_failed; /* of tries */
    bool flagged;            /* out of rotation now */
    bool down;               /* flagged, or most tries fail to connect */
} tview_t;

static void tview_of(eval_t *e, const target_pt_t *pt, tview_t *v)
{
    memset(v, 0, sizeof(*v));
    v->pt = pt;
    v->uc = &e->cfg->upstreams[pt->up];
    v->tc = &v->uc->targets[pt->idx];
    target_delta(e->d, &e->w, pt, &v->d);
    v->tries = v->d.first_byte.count;
    for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
        if (k != SL_METRICS_UPSTREAM_ERR_5XX)
            v->tries += v->d.errors[k];
    v->connect_failed = v->d.errors[SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED];
    v->flagged = (pt->flags & SL_TARGET_UNAVAILABLE) != 0;
    v->down = v->flagged || (v->connect_failed >= MIN_CONNECT_FAILURES && v->connect_failed * 2 >= v->tries);
}

static const health_entry_t *health_of(const sl_doctor_t *d, sl_str_t upstream, sl_str_t target)
{
    for (size_t i = 0; i < d->nhealth; i++) {
        const health_entry_t *h = &d->health[i];
        if (strlen(h->upstream) == upstream.len && memcmp(h->upstream, upstream.ptr, upstream.len) == 0 &&
            strlen(h->target) == target.len && memcmp(h->target, target.ptr, target.len) == 0)
            return h;
    }
    return NULL;
}

static const char *circuit_name(int c)
{
    return c == SL_BREAKER_OPEN ? "open" : c == SL_BREAKER_HALF_OPEN ? "half_open" : "closed";
}

/* Why a target is out of rotation, for summaries: "ejected, failing health checks (...)". */
static void out_reasons(const sl_doctor_t *d, const tview_t *v, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    const health_entry_t *h = health_of(d, v->uc->name, v->tc->address);
    uint32_t f = v->pt->flags;
#define REASON(...) n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__)
    if (f & SL_TARGET_UNHEALTHY) {
        if (h != NULL && h->result[0] != '\0')
            REASON("%sfailing health checks (last: %s)", n ? ", " : "", h->result);
        else
            REASON("%sfailing health checks", n ? ", " : "");
    }
    if ((f & SL_TARGET_EJECTED) && n < cap)
        REASON("%sejected after consecutive failures", n ? ", " : "");
    if ((f & SL_TARGET_CIRCUIT_OPEN) && n < cap)
        REASON("%sits circuit is open", n ? ", " : "");
    if ((f & SL_TARGET_UNRESOLVED) && n < cap)
        REASON("%sits host name does not resolve", n ? ", " : "");
#undef REASON
}

static json_t *target_evidence(const sl_doctor_t *d, const tview_t *v)
{
    json_t *ev = json_object();
    json_object_set_new(ev, "requests", json_integer((json_int_t)v->tries));
    json_object_set_new(ev, "upstream_connect_failed", json_integer((json_int_t)v->connect_failed));
    json_object_set_new(ev, "ejected", json_boolean(v->pt->flags & SL_TARGET_EJECTED));
    json_object_set_new(ev, "healthy", json_boolean(!(v->pt->flags & (SL_TARGET_UNHEALTHY | SL_TARGET_UNRESOLVED))));
    json_object_set_new(ev, "circuit", json_string(circuit_name(v->pt->circuit)));
    const health_entry_t *h = health_of(d, v->uc->name, v->tc->address);
    if (h != NULL && h->last_check_ms != 0)
        json_object_set_new(ev, "last_check", json_string(h->result));
    return ev;
}

/* ---- rules -------------------------------------------------------------------------------- */

/* Every target of an upstream down: nothing can answer; one finding for the upstream instead
 * of one per target. */
static void rule_upstream_down(eval_t *e)
{
    const sample_t *L = e->w.last;
    for (size_t i = 0; i < L->ntargets;) {
        uint32_t u = L->targets[i].up;
        size_t j = i, down = 0, n = 0;
        uint64_t tries = 0, failed = 0;
        json_t *list = json_array();
        for (; j < L->ntargets && L->targets[j].up == u; j++) {
            tview_t v;
            tview_of(e, &L->targets[j], &v);
            n++;
            tries += v.tries;
            failed += v.connect_failed;
            if (!v.down)
                continue;
            down++;
            char why[256];
            out_reasons(e->d, &v, why, sizeof(why));
            if (why[0] == '\0')
                fmt(why, sizeof(why), "%u%% of %" PRIu64 " tries failed to connect", pct(v.connect_failed, v.tries),
                    v.tries);
            json_t *t = json_object();
            json_object_set_new(t, "target", jstr(v.tc->address));
            json_object_set_new(t, "state", json_string(why));
            json_array_append_new(list, t);
        }
        const sl_upstream_conf_t *uc = &e->cfg->upstreams[u];
        if (n > 0 && down == n && n == uc->ntargets) {
            e->up_down[u] = true;
            json_t *ev = json_object();
            json_object_set_new(ev, "targets", list);
            json_object_set_new(ev, "requests", json_integer((json_int_t)tries));
            json_object_set_new(ev, "upstream_connect_failed", json_integer((json_int_t)failed));
            char key[192];
            fmt(key, sizeof(key), "upstream_down/%.*s", SL_STR_FMT(uc->name));
            finding_t *f = add_finding(e, SEV_CRITICAL, SL_FAILURE_CONNECTIVITY, key, where_of(NULL, &uc->name, NULL),
                                       ev, tries + 1000000);
            if (f != NULL) {
                if (n == 1)
                    fmt(f->summary, sizeof(f->summary), "the only target of upstream %.*s is down: requests to it fail",
                        SL_STR_FMT(uc->name));
                else
                    fmt(f->summary, sizeof(f->summary),
                        "all %zu targets of upstream %.*s are down: requests to it fail", n, SL_STR_FMT(uc->name));
                fmt(f->action, sizeof(f->action),
                    "bring a target of %.*s back: sluice probe %.*s shows which step fails; sluice health",
                    SL_STR_FMT(uc->name), SL_STR_FMT(uc->name));
            }
        } else {
            json_decref(list);
        }
        i = j;
    }
}

/* A dead target: out of rotation, or failing to connect. */
static void rule_target_down(eval_t *e)
{
    const sample_t *L = e->w.last;
    for (size_t i = 0; i < L->ntargets; i++) {
        tview_t v;
        tview_of(e, &L->targets[i], &v);
        if (e->up_down[v.pt->up])
            continue;
        bool connect = v.connect_failed >= MIN_CONNECT_FAILURES && v.connect_failed * 10 >= v.tries;
        if (!v.flagged && !connect)
            continue;
        enum severity sev = v.flagged || v.connect_failed * 2 >= v.tries ? SEV_CRITICAL : SEV_WARNING;
        char key[192];
        fmt(key, sizeof(key), "target_down/%.*s/%.*s", SL_STR_FMT(v.uc->name), SL_STR_FMT(v.tc->address));
        finding_t *f = add_finding(e, sev, SL_FAILURE_CONNECTIVITY, key, where_of(NULL, &v.uc->name, &v.tc->address),
                                   target_evidence(e->d, &v), v.connect_failed + (v.flagged ? 1000 : 0));
        if (f == NULL)
            continue;
        if (connect) {
            const health_entry_t *h = health_of(e->d, v.uc->name, v.tc->address);
            char detail[HEALTH_STR + 4] = "";
            if (h != NULL && h->result[0] != '\0' && !h->healthy)
                fmt(detail, sizeof(detail), " (%s)", h->result);
            fmt(f->summary, sizeof(f->summary), "%u%% of requests to %.*s failed to connect to %.*s%s",
                pct(v.connect_failed, v.tries), SL_STR_FMT(v.uc->name), SL_STR_FMT(v.tc->address), detail);
        } else {
            char why[256];
            out_reasons(e->d, &v, why, sizeof(why));
            fmt(f->summary, sizeof(f->summary), "target %.*s of %.*s is out of rotation: %s", SL_STR_FMT(v.tc->address),
                SL_STR_FMT(v.uc->name), why);
        }
        fmt(f->action, sizeof(f->action), "check that the service on %.*s is running: sluice probe %.*s",
            SL_STR_FMT(v.tc->address), SL_STR_FMT(v.uc->name));
    }
}

/* A target that is reachable but fails: resets and invalid responses, 5xx of its own, timeouts. */
static void rule_target_errors(eval_t *e)
{
    const sample_t *L = e->w.last;
    for (size_t i = 0; i < L->ntargets; i++) {
        tview_t v;
        tview_of(e, &L->targets[i], &v);
        if (v.down || e->up_down[v.pt->up])
            continue;
        const sl_str_t *un = &v.uc->name, *ta = &v.tc->address;
        char key[192];
        uint64_t broken = v.d.errors[SL_METRICS_UPSTREAM_ERR_RESET] + v.d.errors[SL_METRICS_UPSTREAM_ERR_BAD_RESPONSE];
        if (broken >= MIN_TARGET_ERRORS && broken * 10 >= v.tries) {
            json_t *ev = json_object();
            json_object_set_new(ev, "requests", json_integer((json_int_t)v.tries));
            json_object_set_new(ev, "upstream_reset",
                                json_integer((json_int_t)v.d.errors[SL_METRICS_UPSTREAM_ERR_RESET]));
            json_object_set_new(ev, "upstream_bad_response",
                                json_integer((json_int_t)v.d.errors[SL_METRICS_UPSTREAM_ERR_BAD_RESPONSE]));
            fmt(key, sizeof(key), "target_reset/%.*s/%.*s", SL_STR_FMT(*un), SL_STR_FMT(*ta));
            finding_t *f = add_finding(e, broken * 2 >= v.tries ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_CONNECTIVITY,
                                       key, where_of(NULL, un, ta), ev, broken);
            if (f != NULL) {
                fmt(f->summary, sizeof(f->summary),
                    "%u%% of requests to %.*s on %.*s ended in a reset or an invalid response", pct(broken, v.tries),
                    SL_STR_FMT(*un), SL_STR_FMT(*ta));
                fmt(f->action, sizeof(f->action),
                    "the service on %.*s closes connections or answers invalid HTTP: check its logs and its "
                    "keep-alive timeout (it must exceed keepalive.idle_timeout of %.*s); sluice probe %.*s",
                    SL_STR_FMT(*ta), SL_STR_FMT(*un), SL_STR_FMT(*un));
            }
        }
        uint64_t n5 = v.d.errors[SL_METRICS_UPSTREAM_ERR_5XX], answered = v.d.first_byte.count;
        if (n5 >= MIN_TARGET_ERRORS && n5 * 10 >= answered) {
            json_t *ev = json_object();
            json_object_set_new(ev, "responses", json_integer((json_int_t)answered));
            json_object_set_new(ev, "upstream_5xx", json_integer((json_int_t)n5));
            json_object_set_new(ev, "ratio", ratio(n5, answered));
            fmt(key, sizeof(key), "target_5xx/%.*s/%.*s", SL_STR_FMT(*un), SL_STR_FMT(*ta));
            finding_t *f = add_finding(e, n5 * 2 >= answered ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_CONNECTIVITY, key,
                                       where_of(NULL, un, ta), ev, n5);
            if (f != NULL) {
                fmt(f->summary, sizeof(f->summary),
                    "%u%% of responses from %.*s (%.*s) had a 5xx status: the service itself is failing",
                    pct(n5, answered), SL_STR_FMT(*ta), SL_STR_FMT(*un));
                fmt(f->action, sizeof(f->action),
                    "the gateway reaches %.*s, but the service answers with errors: check the service's logs",
                    SL_STR_FMT(*ta));
            }
        }
        uint64_t to = v.d.errors[SL_METRICS_UPSTREAM_ERR_TIMEOUT];
        if (to >= MIN_TARGET_TIMEOUTS && to * 20 >= v.tries) {
            uint64_t limit =
                v.uc->retries.per_try_timeout_ms ? v.uc->retries.per_try_timeout_ms : v.uc->read_timeout_ms;
            json_t *ev = json_object();
            json_object_set_new(ev, "requests", json_integer((json_int_t)v.tries));
            json_object_set_new(ev, "upstream_timeout", json_integer((json_int_t)to));
            json_object_set_new(ev, "timeout_ms", json_integer((json_int_t)limit));
            fmt(key, sizeof(key), "target_timeout/%.*s/%.*s", SL_STR_FMT(*un), SL_STR_FMT(*ta));
            finding_t *f = add_finding(e, to * 2 >= v.tries ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_LATENCY, key,
                                       where_of(NULL, un, ta), ev, to);
            if (f != NULL) {
                fmt(f->summary, sizeof(f->summary),
                    "%u%% of requests to %.*s on %.*s timed out (no response within %" PRIu64 " ms)", pct(to, v.tries),
                    SL_STR_FMT(*un), SL_STR_FMT(*ta), limit);
                fmt(f->action, sizeof(f->action),
                    "%.*s answers slower than the timeout: check its load (sluice probe %.*s), or raise timeouts.read "
                    "of %.*s",
                    SL_STR_FMT(*ta), SL_STR_FMT(*un), SL_STR_FMT(*un));
            }
        }
    }
}

/* p99 time to first byte of an upstream near the time it may take. */
static void rule_upstream_latency(eval_t *e)
{
    const sample_t *L = e->w.last;
    for (size_t i = 0; i < L->ntargets;) {
        uint32_t u = L->targets[i].up;
        sl_metrics_hist_sum_t h = {0};
        uint64_t timeouts = 0, tries = 0;
        size_t j = i;
        for (; j < L->ntargets && L->targets[j].up == u; j++) {
            tview_t v;
            tview_of(e, &L->targets[j], &v);
            for (size_t b = 0; b < SL_METRICS_HIST_BUCKETS; b++)
                h.buckets[b] += v.d.first_byte.buckets[b];
            h.count += v.d.first_byte.count;
            h.sum_ns += v.d.first_byte.sum_ns;
            timeouts += v.d.errors[SL_METRICS_UPSTREAM_ERR_TIMEOUT];
            tries += v.tries;
        }
        i = j;
        const sl_upstream_conf_t *uc = &e->cfg->upstreams[u];
        if (h.count < MIN_LATENCY_SAMPLES || e->up_down[u])
            continue;
        uint64_t limit_ms = uc->retries.per_try_timeout_ms ? uc->retries.per_try_timeout_ms : uc->read_timeout_ms;
        uint64_t p99 = sl_doctor_hist_quantile_ns(&h, 0.99), p50 = sl_doctor_hist_quantile_ns(&h, 0.5);
        if (limit_ms == 0 || p99 * 100 < (uint64_t)LATENCY_NEAR_PCT * limit_ms * 1000000u)
            continue;
        json_t *ev = json_object();
        json_object_set_new(ev, "requests", json_integer((json_int_t)h.count));
        json_object_set_new(ev, "p99_ms", json_integer((json_int_t)(p99 / 1000000u)));
        json_object_set_new(ev, "p50_ms", json_integer((json_int_t)(p50 / 1000000u)));
        json_object_set_new(ev, "mean_ms", json_integer((json_int_t)(h.sum_ns / h.count / 1000000u)));
        json_object_set_new(ev, "timeouts_read_ms", json_integer((json_int_t)limit_ms));
        json_object_set_new(ev, "upstream_timeout", json_integer((json_int_t)timeouts));
        char key[192];
        fmt(key, sizeof(key), "upstream_latency/%.*s", SL_STR_FMT(uc->name));
        bool timing_out = timeouts * 20 >= tries && timeouts >= MIN_TARGET_TIMEOUTS;
        finding_t *f = add_finding(e, timing_out ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_LATENCY, key,
                                   where_of(NULL, &uc->name, NULL), ev, h.count);
        if (f != NULL) {
            fmt(f->summary, sizeof(f->summary),
                "p99 time to first byte of %.*s is %" PRIu64 " ms, %u%% of its read timeout (%" PRIu64 " ms)",
                SL_STR_FMT(uc->name), p99 / 1000000u, pct(p99 / 1000000u, limit_ms), limit_ms);
            fmt(f->action, sizeof(f->action),
                "%.*s is close to timing out: check its load and dependencies (sluice probe %.*s), add targets, or "
                "raise timeouts.read of %.*s",
                SL_STR_FMT(uc->name), SL_STR_FMT(uc->name), SL_STR_FMT(uc->name));
        }
    }
}

/* A spike of requests that match no route, with the hosts and paths they asked for. */
static void rule_unmatched(eval_t *e)
{
    const sample_t *L = e->w.last;
    const route_pt_t *none = NULL;
    for (size_t i = 0; i < L->nroutes && none == NULL; i++)
        if (L->routes[i].index == UINT32_MAX)
            none = &L->routes[i];
    if (none == NULL)
        return;
    sl_metrics_route_sum_t d;
    route_delta(e->d, &e->w, none, &d);
    uint64_t n = d.causes[SL_CAUSE_ROUTE_NOT_FOUND], total = e->total_requests;
    if (n < MIN_UNMATCHED || n * 10 < total)
        return;
    /* Window counts of the sampled keys: the latest count minus the window start's. */
    sl_metrics_unmatched_t top[TOP_UNMATCHED];
    uint64_t counts[TOP_UNMATCHED];
    size_t ntop = 0;
    for (size_t i = 0; i < L->nunmatched; i++) {
        const sl_metrics_unmatched_t *u = &L->unmatched[i];
        uint64_t then = 0;
        for (size_t k = 0; k < e->w.base->nunmatched; k++) {
            const sl_metrics_unmatched_t *b = &e->w.base->unmatched[k];
            if (e->w.base != L && strcmp(b->host, u->host) == 0 && strcmp(b->prefix, u->prefix) == 0)
                then = b->count;
        }
        uint64_t c = e->w.base == L ? u->count : sub(u->count, then);
        if (c == 0)
            continue;
        size_t at = ntop++;
        while (at > 0 && counts[at - 1] < c) {
            top[at] = top[at - 1];
            counts[at] = counts[at - 1];
            at--;
        }
        top[at] = *u;
        counts[at] = c;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < ntop && i < TOP_UNMATCHED_SHOWN; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "host", json_string(top[i].host));
        json_object_set_new(o, "path_prefix", json_string(top[i].prefix));
        json_object_set_new(o, "requests", json_integer((json_int_t)counts[i]));
        json_array_append_new(list, o);
    }
    json_t *ev = json_object();
    json_object_set_new(ev, "requests", json_integer((json_int_t)total));
    json_object_set_new(ev, "route_not_found", json_integer((json_int_t)n));
    json_object_set_new(ev, "ratio", ratio(n, total));
    json_object_set_new(ev, "top_unmatched", list);
    finding_t *f = add_finding(e, n * 2 >= total ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_ROUTING, "route_not_found",
                               json_object(), ev, n);
    if (f == NULL)
        return;
    if (ntop > 0)
        fmt(f->summary, sizeof(f->summary),
            "%u%% of requests (%" PRIu64 " of %" PRIu64 ") matched no route; the most: host \"%s\" path %s (%" PRIu64
            ")",
            pct(n, total), n, total, top[0].host, top[0].prefix, counts[0]);
    else
        fmt(f->summary, sizeof(f->summary), "%u%% of requests (%" PRIu64 " of %" PRIu64 ") matched no route",
            pct(n, total), n, total);
    fmt(f->action, sizeof(f->action),
        "compare the top unmatched hosts and paths with `sluice routes`: add or fix a route, or find the clients "
        "calling a wrong URL");
}

/*
 * One row per gateway cause answered on a route: the cause table. A feature that adds a cause
 * (jwt_unknown_kid, ...) adds its row; its category is the cause's own (http/cause.c). Causes
 * of a failed try to a target are not here: the target rules name the target. `%R` in the texts
 * is the route, `%U` its upstream.
 */
typedef struct cause_rule {
    enum sl_cause cause;
    uint32_t min_count; /* in the window */
    uint32_t warn_pct;  /* of the route's requests */
    uint32_t crit_pct;
    bool upstream; /* names the route's upstream; silent when that upstream is all down */
    const char *why;
    const char *action;
} cause_rule_t;

static const cause_rule_t cause_rules[] = {
    {SL_CAUSE_NO_HEALTHY_UPSTREAM, 5, 10, 50, true, "no target of %U was available",
     "see which targets are out and why: sluice health; then sluice probe %U"},
    {SL_CAUSE_CIRCUIT_OPEN, 5, 10, 50, true, "the circuits of %U's targets opened after failures",
     "sluice health shows the circuit states; sluice probe %U tests the targets"},
    {SL_CAUSE_UPSTREAM_OVERLOADED, 5, 5, 50, true, "%U is at its limits.max_connections with a full queue",
     "raise limits.max_connections / max_pending of %U, or add targets to it"},
    {SL_CAUSE_GATEWAY_OVERLOADED, 5, 5, 50, false, "the gateway shed load",
     "add workers or instances, or find the traffic spike in the access log"},
    {SL_CAUSE_CLIENT_TIMEOUT, 10, 10, 50, false, "clients were too slow to send their requests",
     "check the clients' networks, or raise timeouts.client_header / timeouts.client_body"},
    {SL_CAUSE_HEADER_TOO_LARGE, 5, 5, 50, false, "request headers were over limits.max_header_bytes",
     "find the clients in the access log (cause header_too_large), or raise limits.max_header_bytes"},
    {SL_CAUSE_REQUEST_TOO_LARGE, 5, 5, 50, false, "request bodies were over limits.max_body_bytes",
     "find the clients in the access log (cause request_too_large), or raise limits.max_body_bytes"},
    {SL_CAUSE_URI_TOO_LONG, 5, 5, 50, false, "request URIs were over limits.max_uri_bytes",
     "find the clients in the access log (cause uri_too_long), or raise limits.max_uri_bytes"},
    {SL_CAUSE_METHOD_NOT_ALLOWED, 10, 10, 50, false, "clients used methods the route does not allow",
     "compare the methods of %R in `sluice routes` with what clients send"},
    {SL_CAUSE_INTERNAL_ERROR, 1, 1, 10, false, "the gateway failed internally",
     "check the gateway's error log and report the failure"},
    {SL_CAUSE_AUTH_MISSING, 20, 25, 75, false, "requests came without credentials",
     "check the clients, or whether %R should require authentication"},
    /* auth_invalid, auth_expired and forbidden: rule_auth, which knows their detail codes. */
    {SL_CAUSE_RATE_LIMITED, 10, 10, 50, false, "clients exceeded the route's rate limits",
     "find the consumer or IP in the access log (cause rate_limited), or raise the rate_limit of %R"},
    {SL_CAUSE_QUOTA_EXCEEDED, 10, 10, 50, false, "clients used up their quota",
     "find the consumer in the access log (cause quota_exceeded), or raise the quota of %R"},
};

/* `tmpl` with %R and %U replaced. */
static void expand(char *out, size_t cap, const char *tmpl, sl_str_t route, sl_str_t upstream)
{
    size_t n = 0;
    for (const char *p = tmpl; *p != '\0' && n + 1 < cap; p++) {
        sl_str_t sub_ = p[0] == '%' && p[1] == 'R' ? route : p[0] == '%' && p[1] == 'U' ? upstream : SL_STR_NULL;
        if (sub_.ptr == NULL) {
            out[n++] = *p;
            continue;
        }
        size_t k = SL_MIN(sub_.len, cap - 1 - n);
        memcpy(out + n, sub_.ptr, k);
        n += k;
        p++;
    }
    out[n] = '\0';
}

static void rule_route_causes(eval_t *e)
{
    const sample_t *L = e->w.last;
    for (size_t i = 0; i < L->nroutes; i++) {
        const route_pt_t *pt = &L->routes[i];
        sl_metrics_route_sum_t d;
        route_delta(e->d, &e->w, pt, &d);
        bool unrouted = pt->index == UINT32_MAX;
        const sl_route_conf_t *rc = unrouted ? NULL : &e->cfg->routes[pt->index];
        /* One upstream to name: not for respond or split routes. */
        bool has_up = rc != NULL && !rc->respond.enabled && rc->nsplit == 0 && rc->upstream_index < e->cfg->nupstreams;
        sl_str_t rname = unrouted ? SL_STR_LIT("(no route)") : rc->name;
        sl_str_t uname = has_up ? e->cfg->upstreams[rc->upstream_index].name : SL_STR_LIT("its upstream");
        uint64_t denom = unrouted ? e->total_requests : d.requests;
        for (size_t k = 0; k < SL_ARRAY_SIZE(cause_rules); k++) {
            const cause_rule_t *cr = &cause_rules[k];
            uint64_t n = d.causes[cr->cause];
            if (n < cr->min_count || n * 100 < (uint64_t)cr->warn_pct * denom)
                continue;
            if (cr->upstream && has_up && e->up_down[rc->upstream_index])
                continue;
            const sl_cause_info_t *ci = sl_cause_info(cr->cause);
            json_t *ev = json_object();
            json_object_set_new(ev, "requests", json_integer((json_int_t)denom));
            json_object_set_new(ev, ci->name, json_integer((json_int_t)n));
            json_object_set_new(ev, "ratio", ratio(n, denom));
            char key[192];
            fmt(key, sizeof(key), "cause/%s/%.*s", ci->name, SL_STR_FMT(rname));
            json_t *where =
                unrouted ? json_object() : where_of(&rc->name, cr->upstream && has_up ? &uname : NULL, NULL);
            finding_t *f = add_finding(e, n * 100 >= (uint64_t)cr->crit_pct * denom ? SEV_CRITICAL : SEV_WARNING,
                                       ci->failure, key, where, ev, n);
            if (f == NULL)
                continue;
            char why[256];
            expand(why, sizeof(why), cr->why, rname, uname);
            if (unrouted)
                fmt(f->summary, sizeof(f->summary),
                    "%u%% of requests (%" PRIu64 " of %" PRIu64 ") were answered %s before routing: %s", pct(n, denom),
                    n, denom, ci->name, why);
            else
                fmt(f->summary, sizeof(f->summary),
                    "%u%% of requests to route %.*s (%" PRIu64 " of %" PRIu64 ") were answered %s: %s", pct(n, denom),
                    SL_STR_FMT(rname), n, denom, ci->name, why);
            expand(f->action, sizeof(f->action), cr->action, rname, uname);
        }
    }
}

/* ---- authentication and authorisation ----------------------------------------------------- */

static const char *source_name(enum sl_jwt_key_source s)
{
    switch (s) {
    case SL_JWT_KEYS_JWKS_URL:
        return "jwks_url";
    case SL_JWT_KEYS_JWKS_FILE:
        return "jwks_file";
    case SL_JWT_KEYS_PEM_FILE:
        return "public_key_file";
    case SL_JWT_KEYS_SECRET:
        return "secret_env";
    }
    return "?";
}

static const issuer_entry_t *issuer_entry(const sl_doctor_t *d, sl_str_t name)
{
    for (size_t i = 0; i < d->nissuers; i++)
        if (strlen(d->issuers[i].name) == name.len && memcmp(d->issuers[i].name, name.ptr, name.len) == 0)
            return &d->issuers[i];
    return NULL;
}

/* The jwt issuers a route accepts, with what the key store holds for each: the evidence that
 * tells a rotation (keys loaded, the kid is new) from an outage (no keys, fetches failing). */
static json_t *route_issuers(const eval_t *e, const sl_route_conf_t *rc, const sl_jwt_issuer_conf_t **first)
{
    json_t *list = json_array();
    *first = NULL;
    for (size_t i = 0; i < rc->auth.nmethods; i++) {
        const sl_auth_method_conf_t *m = &rc->auth.methods[i];
        if (m->kind != SL_AUTH_JWT || m->ref_index >= e->cfg->njwt_issuers)
            continue;
        const sl_jwt_issuer_conf_t *ic = &e->cfg->jwt_issuers[m->ref_index];
        if (*first == NULL)
            *first = ic;
        json_t *o = json_object();
        json_object_set_new(o, "name", jstr(ic->name));
        json_object_set_new(o, "issuer", jstr(ic->issuer));
        json_object_set_new(o, "source", json_string(source_name(ic->source)));
        /* A URL is where to look; files and variable names are config, not secrets either. */
        json_object_set_new(o, source_name(ic->source), jstr(ic->keys));
        const issuer_entry_t *ie = issuer_entry(e->d, ic->name);
        if (ie != NULL) {
            json_object_set_new(o, "keys", json_integer((json_int_t)ie->nkeys));
            if (ie->loaded_ms != 0) {
                char iso[32];
                iso8601(ie->loaded_ms, iso);
                json_object_set_new(o, "keys_loaded", json_string(iso));
            }
            if (ic->source == SL_JWT_KEYS_JWKS_URL) {
                json_object_set_new(o, "fetches", json_integer((json_int_t)ie->fetches));
                json_object_set_new(o, "fetch_failures", json_integer((json_int_t)ie->failures));
                if (ie->last_error[0] != '\0')
                    json_object_set_new(o, "last_error", json_string(ie->last_error));
            }
        }
        json_array_append_new(list, o);
    }
    return list;
}

/* Every detail of the route's refusals in the window: {"jwt_expired": 12, ...}. */
static json_t *details_of(const sl_metrics_route_sum_t *d)
{
    json_t *o = json_object();
    for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++)
        if (d->auth[k] != 0)
            json_object_set_new(o, sl_metrics_auth_detail_name((enum sl_metrics_auth_detail)k),
                                json_integer((json_int_t)d->auth[k]));
    return o;
}

static json_t *auth_evidence(const sl_metrics_route_sum_t *d, const char *detail, uint64_t n)
{
    json_t *ev = json_object();
    json_object_set_new(ev, "requests", json_integer((json_int_t)d->requests));
    json_object_set_new(ev, "detail", json_string(detail));
    json_object_set_new(ev, detail, json_integer((json_int_t)n));
    json_object_set_new(ev, "ratio", ratio(n, d->requests));
    json_object_set_new(ev, "details", details_of(d));
    return ev;
}

static enum severity share_severity(uint64_t n, uint64_t requests)
{
    return n * 2 >= requests ? SEV_CRITICAL : SEV_WARNING;
}

static finding_t *add_auth(eval_t *e, enum severity sev, const char *what, const sl_route_conf_t *rc, json_t *ev,
                           uint64_t n)
{
    char key[192];
    fmt(key, sizeof(key), "auth/%s/%.*s", what, SL_STR_FMT(rc->name));
    return add_finding(e, sev, SL_FAILURE_AUTH, key, where_of(&rc->name, NULL, NULL), ev, n);
}

/* Tokens signed with a key the gateway does not have: the provider rotated its keys (new kid
 * not fetched yet, or an old kid after its removal), or clients use another issuer's tokens. */
static bool auth_unknown_kid(eval_t *e, const sl_route_conf_t *rc, const sl_metrics_route_sum_t *d)
{
    uint64_t n = d->auth[SL_METRICS_AUTH_JWT_UNKNOWN_KID];
    if (n < MIN_UNKNOWN_KID || n * 100 < (uint64_t)UNKNOWN_KID_PCT * d->requests)
        return false;
    const sl_jwt_issuer_conf_t *ic;
    json_t *ev = auth_evidence(d, "jwt_unknown_kid", n);
    json_object_set_new(ev, "issuers", route_issuers(e, rc, &ic));
    finding_t *f = add_auth(e, share_severity(n, d->requests), "jwt_unknown_kid", rc, ev, n);
    if (f == NULL)
        return true;
    fmt(f->summary, sizeof(f->summary),
        "%u%% of requests to route %.*s (%" PRIu64 " of %" PRIu64
        ") were refused with jwt_unknown_kid: their JWTs are signed with a key id the gateway does not have",
        pct(n, d->requests), SL_STR_FMT(rc->name), n, d->requests);
    if (ic != NULL && ic->source == SL_JWT_KEYS_JWKS_URL)
        fmt(f->action, sizeof(f->action),
            "the identity provider rotated its keys: check jwks_url %.*s of issuer %.*s (its kids against the tokens' "
            "kid); sluice refetches on unknown kids at most every %d s, so a kid still unknown after that is not "
            "published there, or the clients use another issuer's tokens",
            SL_STR_FMT(ic->keys), SL_STR_FMT(ic->name), SL_JWKS_REFRESH_MIN_MS / 1000);
    else if (ic != NULL)
        fmt(f->action, sizeof(f->action),
            "the tokens' kid is not in the keys of issuer %.*s (%s %.*s): after a key rotation update them and run "
            "sluice reload; else the clients use another issuer's tokens",
            SL_STR_FMT(ic->name), source_name(ic->source), SL_STR_FMT(ic->keys));
    else
        fmt(f->action, sizeof(f->action), "compare the tokens' kid with the keys of the route's jwt issuers");
    return true;
}

/* No key set at all: a jwks_url issuer whose first fetch has not succeeded (the provider was
 * down or unreachable when the gateway started). Every JWT of the issuer fails meanwhile. */
static bool auth_no_keys(eval_t *e, const sl_route_conf_t *rc, const sl_metrics_route_sum_t *d)
{
    uint64_t n = d->auth[SL_METRICS_AUTH_JWT_NO_KEYS];
    if (n < MIN_NO_KEYS)
        return false;
    const sl_jwt_issuer_conf_t *ic;
    json_t *ev = auth_evidence(d, "jwt_no_keys", n);
    json_object_set_new(ev, "issuers", route_issuers(e, rc, &ic));
    finding_t *f = add_auth(e, SEV_CRITICAL, "jwt_no_keys", rc, ev, n + 1000);
    if (f == NULL)
        return true;
    fmt(f->summary, sizeof(f->summary),
        "%" PRIu64 " requests to route %.*s were refused with jwt_no_keys: the gateway has no key set to verify "
        "their JWTs",
        n, SL_STR_FMT(rc->name));
    const issuer_entry_t *ie = ic != NULL ? issuer_entry(e->d, ic->name) : NULL;
    if (ic != NULL && ic->source == SL_JWT_KEYS_JWKS_URL)
        fmt(f->action, sizeof(f->action),
            "the JWKS of issuer %.*s was never fetched (the identity provider was down at start?): check %.*s from "
            "the gateway host (curl it); sluice retries after 1 s, doubling up to jwks_refresh%s%s",
            SL_STR_FMT(ic->name), SL_STR_FMT(ic->keys), ie != NULL && ie->last_error[0] ? "; last error: " : "",
            ie != NULL ? ie->last_error : "");
    else
        fmt(f->action, sizeof(f->action), "check the key source of the route's jwt issuers and run sluice reload");
    return true;
}

/* Expired tokens: JWTs past `exp` (plus leeway), or introspected tokens the endpoint called
 * expired. Clients that do not refresh, or clocks apart. */
static void auth_expired(eval_t *e, const sl_route_conf_t *rc, const sl_metrics_route_sum_t *d)
{
    uint64_t jwt = d->auth[SL_METRICS_AUTH_JWT_EXPIRED], n = jwt + d->auth[SL_METRICS_AUTH_TOKEN_EXPIRED];
    if (n < MIN_EXPIRED || n * 100 < (uint64_t)EXPIRED_PCT * d->requests)
        return;
    const char *detail = jwt * 2 >= n ? "jwt_expired" : "token_expired";
    const sl_jwt_issuer_conf_t *ic;
    json_t *ev = auth_evidence(d, detail, n);
    json_object_set_new(ev, "issuers", route_issuers(e, rc, &ic));
    if (ic != NULL)
        json_object_set_new(ev, "leeway_ms", json_integer((json_int_t)ic->leeway_ms));
    finding_t *f = add_auth(e, share_severity(n, d->requests), "expired", rc, ev, n);
    if (f == NULL)
        return;
    fmt(f->summary, sizeof(f->summary),
        "%u%% of requests to route %.*s (%" PRIu64 " of %" PRIu64 ") carried expired %s (%s)", pct(n, d->requests),
        SL_STR_FMT(rc->name), n, d->requests, jwt * 2 >= n ? "JWTs" : "tokens", detail);
    if (ic != NULL)
        fmt(f->action, sizeof(f->action),
            "clients send tokens past their exp: check that they refresh tokens before expiry, and the clocks of the "
            "clients, the identity provider and the gateway (leeway %" PRIu64 " ms); the access log names them "
            "(detail %s, client, consumer)",
            ic->leeway_ms, detail);
    else
        fmt(f->action, sizeof(f->action),
            "clients send expired tokens: check that they refresh tokens before expiry, and the clocks of the clients "
            "and the identity provider; the access log names them (detail %s, client, consumer)",
            detail);
}

/* The largest of the details marked in `in`; SL_METRICS_AUTH__COUNT when all are 0. */
static size_t top_detail(const sl_metrics_route_sum_t *d, const bool *in)
{
    size_t top = SL_METRICS_AUTH__COUNT;
    for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++)
        if (in[k] && d->auth[k] != 0 && (top == SL_METRICS_AUTH__COUNT || d->auth[k] > d->auth[top]))
            top = k;
    return top;
}

/* auth_invalid not explained by the specific rules: keys, passwords or tokens rejected. */
static void auth_rejected(eval_t *e, const sl_route_conf_t *rc, const sl_metrics_route_sum_t *d, bool kid_told,
                          bool no_keys_told)
{
    uint64_t n = d->causes[SL_CAUSE_AUTH_INVALID];
    if (kid_told)
        n = sub(n, d->auth[SL_METRICS_AUTH_JWT_UNKNOWN_KID]);
    if (no_keys_told)
        n = sub(n, d->auth[SL_METRICS_AUTH_JWT_NO_KEYS]);
    if (n < MIN_REJECTED || n * 100 <= (uint64_t)REJECTED_PCT * d->requests)
        return;
    bool in[SL_METRICS_AUTH__COUNT] = {false};
    for (size_t k = 0; k < SL_METRICS_AUTH__COUNT; k++)
        in[k] = true;
    in[SL_METRICS_AUTH_NO_CREDENTIALS] = in[SL_METRICS_AUTH_JWT_EXPIRED] = in[SL_METRICS_AUTH_TOKEN_EXPIRED] = false;
    in[SL_METRICS_AUTH_JWT_UNKNOWN_KID] = !kid_told;
    in[SL_METRICS_AUTH_JWT_NO_KEYS] = !no_keys_told;
    for (size_t k = SL_METRICS_AUTH_ACL_ANONYMOUS; k <= SL_METRICS_AUTH_ACL_NOT_IN_GROUP; k++)
        in[k] = false;
    in[SL_METRICS_AUTH_IP_DENIED] = in[SL_METRICS_AUTH_CORS_ORIGIN] = in[SL_METRICS_AUTH_CORS_METHOD] =
        in[SL_METRICS_AUTH_CORS_HEADERS] = false;
    size_t top = top_detail(d, in);
    const char *tname = top < SL_METRICS_AUTH__COUNT ? sl_metrics_auth_detail_name(top) : "other";
    json_t *ev = auth_evidence(d, "auth_invalid", n);
    json_object_set_new(ev, "top_detail", json_string(tname));
    finding_t *f = add_auth(e, n * 100 >= 75u * d->requests ? SEV_CRITICAL : SEV_WARNING, "auth_invalid", rc, ev, n);
    if (f == NULL)
        return;
    fmt(f->summary, sizeof(f->summary),
        "%u%% of requests to route %.*s (%" PRIu64 " of %" PRIu64 ") had their credentials rejected (auth_invalid), "
        "mostly %s",
        pct(n, d->requests), SL_STR_FMT(rc->name), n, d->requests, tname);
    if (top == SL_METRICS_AUTH_API_KEY_UNKNOWN || top == SL_METRICS_AUTH_BASIC_BAD_PASSWORD ||
        top == SL_METRICS_AUTH_BASIC_UNKNOWN_USER)
        fmt(f->action, sizeof(f->action),
            "a client uses a wrong, revoked or rotated key or password: find it in the access log (cause auth_invalid, "
            "detail %s, client) and compare with the consumers (GET /consumers)",
            tname);
    else if (top == SL_METRICS_AUTH_MTLS_UNKNOWN_CERTIFICATE || top == SL_METRICS_AUTH_MTLS_UNVERIFIED)
        fmt(f->action, sizeof(f->action),
            "clients present certificates no consumer lists (or that no longer chain to the listener's client_ca): "
            "compare their fingerprint or subject (openssl x509 -noout -fingerprint -sha256 -subject) with the "
            "consumers' mtls entries (GET /consumers)");
    else
        fmt(f->action, sizeof(f->action),
            "find the clients in the access log (cause auth_invalid, detail %s) and compare their tokens with the "
            "jwt_issuers of %.*s (issuer, audience, algorithms, claims)",
            tname, SL_STR_FMT(rc->name));
}

/* forbidden: identified but not allowed (acl), or refused by address (ip rules) or CORS. */
static void auth_forbidden(eval_t *e, const sl_route_conf_t *rc, const sl_metrics_route_sum_t *d)
{
    uint64_t n = d->causes[SL_CAUSE_FORBIDDEN];
    if (n < MIN_FORBIDDEN || n * 100 < (uint64_t)FORBIDDEN_PCT * d->requests)
        return;
    bool in[SL_METRICS_AUTH__COUNT] = {false};
    for (size_t k = SL_METRICS_AUTH_ACL_ANONYMOUS; k <= SL_METRICS_AUTH_ACL_NOT_IN_GROUP; k++)
        in[k] = true;
    in[SL_METRICS_AUTH_IP_DENIED] = in[SL_METRICS_AUTH_CORS_ORIGIN] = in[SL_METRICS_AUTH_CORS_METHOD] =
        in[SL_METRICS_AUTH_CORS_HEADERS] = in[SL_METRICS_AUTH_OTHER] = true;
    size_t top = top_detail(d, in);
    const char *tname = top < SL_METRICS_AUTH__COUNT ? sl_metrics_auth_detail_name(top) : "other";
    json_t *ev = auth_evidence(d, "forbidden", n);
    json_object_set_new(ev, "top_detail", json_string(tname));
    finding_t *f = add_auth(e, n * 100 >= 75u * d->requests ? SEV_CRITICAL : SEV_WARNING, "forbidden", rc, ev, n);
    if (f == NULL)
        return;
    fmt(f->summary, sizeof(f->summary),
        "%u%% of requests to route %.*s (%" PRIu64 " of %" PRIu64 ") were forbidden, mostly %s", pct(n, d->requests),
        SL_STR_FMT(rc->name), n, d->requests, tname);
    if (top == SL_METRICS_AUTH_IP_DENIED)
        fmt(f->action, sizeof(f->action),
            "clients' addresses are refused by ip_rules of %.*s: check the rules, and trusted_proxies when the gateway "
            "sits behind a proxy (else it sees the proxy's address); the access log has each client",
            SL_STR_FMT(rc->name));
    else if (top >= SL_METRICS_AUTH_CORS_HEADERS && top <= SL_METRICS_AUTH_CORS_ORIGIN)
        fmt(f->action, sizeof(f->action),
            "browsers' preflights are refused by the cors of %.*s (%s): compare its origins, methods and headers with "
            "the calling web app",
            SL_STR_FMT(rc->name), tname);
    else
        fmt(f->action, sizeof(f->action),
            "consumers are not in the groups the acl of %.*s allows (%s): check the acl (sluice routes) against the "
            "consumers' groups (GET /consumers)",
            SL_STR_FMT(rc->name), tname);
}

static void rule_auth(eval_t *e)
{
    const sample_t *L = e->w.last;
    for (size_t i = 0; i < L->nroutes; i++) {
        const route_pt_t *pt = &L->routes[i];
        if (pt->index == UINT32_MAX) /* refusals need a route: its filters refuse */
            continue;
        sl_metrics_route_sum_t d;
        route_delta(e->d, &e->w, pt, &d);
        const sl_route_conf_t *rc = &e->cfg->routes[pt->index];
        bool kid = auth_unknown_kid(e, rc, &d);
        bool no_keys = auth_no_keys(e, rc, &d);
        auth_expired(e, rc, &d);
        auth_rejected(e, rc, &d, kid, no_keys);
        auth_forbidden(e, rc, &d);
    }
}

static void rule_fds(eval_t *e)
{
    const sl_doctor_resources_t *r = &e->w.last->res;
    if (r->fds_limit == 0 || r->fds_open * 100 < (uint64_t)FDS_WARN_PCT * r->fds_limit)
        return;
    json_t *ev = json_object();
    json_object_set_new(ev, "fds_open", json_integer((json_int_t)r->fds_open));
    json_object_set_new(ev, "fds_limit", json_integer((json_int_t)r->fds_limit));
    json_object_set_new(ev, "ratio", ratio(r->fds_open, r->fds_limit));
    json_object_set_new(ev, "connections", json_integer((json_int_t)r->connections));
    finding_t *f =
        add_finding(e, r->fds_open * 100 >= (uint64_t)FDS_CRIT_PCT * r->fds_limit ? SEV_CRITICAL : SEV_WARNING,
                    SL_FAILURE_RESOURCES, "fds", json_object(), ev, r->fds_open);
    if (f == NULL)
        return;
    fmt(f->summary, sizeof(f->summary), "the gateway has %" PRIu64 " of %" PRIu64 " file descriptors open (%u%%)",
        r->fds_open, r->fds_limit, pct(r->fds_open, r->fds_limit));
    fmt(f->action, sizeof(f->action),
        "raise the open-files limit (ulimit -n, LimitNOFILE=) or lower limits.max_connections (now %" PRIu64
        "); if connections keep growing, look for clients that never close them",
        r->max_connections);
}

static void rule_loop_lag(eval_t *e)
{
    uint64_t worst = 0;
    for (size_t age = 0; age < e->d->count; age++) {
        const sample_t *s = ring_at(e->d, age);
        if (s->wall_ms < e->w.base->wall_ms)
            break;
        /* The base sample's lag happened before the window; unless it is the only one. */
        if (s == e->w.base && s != e->w.last)
            break;
        worst = SL_MAX(worst, s->res.loop_lag_max_ns);
    }
    if (worst < LAG_WARN_NS)
        return;
    json_t *ev = json_object();
    json_object_set_new(ev, "loop_lag_max_ms", json_integer((json_int_t)(worst / 1000000u)));
    finding_t *f = add_finding(e, worst >= LAG_CRIT_NS ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_RESOURCES, "loop_lag",
                               json_object(), ev, worst / 1000000u);
    if (f == NULL)
        return;
    fmt(f->summary, sizeof(f->summary),
        "a worker's event loop was blocked for %" PRIu64 " ms: every connection of that worker waited",
        worst / 1000000u);
    fmt(f->action, sizeof(f->action),
        "check the gateway's CPU use per thread (top -H -p PID) and the host's load; add workers or instances if the "
        "workers are saturated");
}

static void rule_connection_limit(eval_t *e)
{
    const sl_doctor_resources_t *now = &e->w.last->res, *then = &e->w.base->res;
    uint64_t refused = sub(now->connections_refused_total, then->connections_refused_total);
    bool near = now->max_connections != 0 && now->connections * 100 >= (uint64_t)CONN_WARN_PCT * now->max_connections;
    if (refused == 0 && !near)
        return;
    json_t *ev = json_object();
    json_object_set_new(ev, "connections_refused", json_integer((json_int_t)refused));
    json_object_set_new(ev, "connections", json_integer((json_int_t)now->connections));
    json_object_set_new(ev, "max_connections", json_integer((json_int_t)now->max_connections));
    finding_t *f = add_finding(e, refused >= 100 ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_RESOURCES, "connection_limit",
                               json_object(), ev, refused + now->connections);
    if (f == NULL)
        return;
    if (refused > 0)
        fmt(f->summary, sizeof(f->summary),
            "%" PRIu64 " client connections were refused at limits.max_connections (%" PRIu64 ")", refused,
            now->max_connections);
    else
        fmt(f->summary, sizeof(f->summary), "%" PRIu64 " client connections are open, %u%% of limits.max_connections",
            now->connections, pct(now->connections, now->max_connections));
    fmt(f->action, sizeof(f->action),
        "raise limits.max_connections (now %" PRIu64 ") if the host has room (fds, memory), or add instances",
        now->max_connections);
}

/* Redis down in cluster mode: a dependency of the rate limits failed, so the finding's cause
 * is rate_limit (what the operator loses: cluster-wide limits), not resources (the gateway's
 * own). Critical under deny (requests that need Redis are refused), warning under allow. */
static void rule_store_down(eval_t *e)
{
    const sl_doctor_resources_t *now = &e->w.last->res, *then = &e->w.base->res;
    if (!now->store_configured || now->store_up)
        return;
    uint64_t fallbacks = sub(now->store_fallbacks_total, then->store_fallbacks_total);
    uint64_t refusals = sub(now->store_refusals_total, then->store_refusals_total);
    json_t *ev = json_object();
    json_object_set_new(ev, "redis", json_string(now->store_address));
    json_object_set_new(ev, "on_failure", json_string(now->store_deny ? "deny" : "allow"));
    json_object_set_new(ev, "local_decisions", json_integer((json_int_t)fallbacks));
    json_object_set_new(ev, "refused", json_integer((json_int_t)refusals));
    if (now->store_down_since_ms != 0) {
        char since[32];
        iso8601(now->store_down_since_ms, since);
        json_object_set_new(ev, "down_since", json_string(since));
    }
    finding_t *f = add_finding(e, now->store_deny ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_RATE_LIMIT, "store_down",
                               json_object(), ev, fallbacks + refusals + 1);
    if (f == NULL)
        return;
    if (now->store_deny)
        fmt(f->summary, sizeof(f->summary),
            "redis at %s is unreachable: requests with rate limits or quotas are refused (503, %" PRIu64
            " in the window) until it is back",
            now->store_address, refusals);
    else
        fmt(f->summary, sizeof(f->summary),
            "rate limits are per node until redis at %s is back (%" PRIu64 " decisions made locally in the window)",
            now->store_address, fallbacks);
    fmt(f->action, sizeof(f->action),
        "check that redis at %s is running and reachable from this host (redis-cli -h HOST -p PORT ping); sluice "
        "reconnects by itself",
        now->store_address);
}

/* A TLS listener's certificate near (or past) its end: every client will refuse the listener.
 * Configuration state, not a window: read from the current contexts at evaluation. */
static void rule_tls_expiry(eval_t *e)
{
    sl_tls_listener_stats_t ls[1];
    sl_tls_cert_stats_t cs[SL_TLS_MAX_EXPORTED_CERTS];
    size_t nl, nc;
    sl_tls_stats_read(ls, 0, &nl, cs, SL_ARRAY_SIZE(cs), &nc);
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < nc; i++) {
        int64_t left = cs[i].not_after - now;
        if (left >= TLS_EXPIRY_WARN_S)
            continue;
        char key[256], when[32];
        fmt(key, sizeof(key), "tls_expiry:%s:%s", cs[i].listener, cs[i].name);
        iso8601((uint64_t)(cs[i].not_after > 0 ? cs[i].not_after : 0) * 1000u, when);
        json_t *where = json_object();
        json_object_set_new(where, "listener", json_string(cs[i].listener));
        json_t *ev = json_object();
        json_object_set_new(ev, "certificate", json_string(cs[i].name));
        json_object_set_new(ev, "not_after", json_string(when));
        json_object_set_new(ev, "seconds_left", json_integer((json_int_t)left));
        finding_t *f = add_finding(e, left < TLS_EXPIRY_CRIT_S ? SEV_CRITICAL : SEV_WARNING, SL_FAILURE_CONNECTIVITY,
                                   key, where, ev, (uint64_t)(left > 0 ? TLS_EXPIRY_WARN_S - left : TLS_EXPIRY_WARN_S));
        if (f == NULL)
            continue;
        if (left <= 0)
            fmt(f->summary, sizeof(f->summary), "the TLS certificate for %s on %s expired at %s: clients refuse it",
                cs[i].name, cs[i].listener, when);
        else
            fmt(f->summary, sizeof(f->summary), "the TLS certificate for %s on %s expires in %" PRId64 " h (%s)",
                cs[i].name, cs[i].listener, left / 3600, when);
        fmt(f->action, sizeof(f->action),
            "renew the certificate, write it over the files in listen[].tls.certificates and reload (sluice reload); "
            "open connections are kept");
    }
    for (size_t i = 0; i < nc; i++) {
        /* A stapled OCSP response near its nextUpdate: clients ignore a stale staple, and a
         * certificate with the must-staple extension is then refused. */
        if (cs[i].ocsp_next_update <= 0)
            continue;
        int64_t left = cs[i].ocsp_next_update - now;
        if (left >= OCSP_STALE_WARN_S)
            continue;
        char key[256], when[32];
        fmt(key, sizeof(key), "tls_ocsp:%s:%s", cs[i].listener, cs[i].name);
        iso8601((uint64_t)cs[i].ocsp_next_update * 1000u, when);
        json_t *where = json_object();
        json_object_set_new(where, "listener", json_string(cs[i].listener));
        json_t *ev = json_object();
        json_object_set_new(ev, "certificate", json_string(cs[i].name));
        json_object_set_new(ev, "ocsp_next_update", json_string(when));
        json_object_set_new(ev, "seconds_left", json_integer((json_int_t)left));
        finding_t *f = add_finding(e, SEV_WARNING, SL_FAILURE_CONNECTIVITY, key, where, ev,
                                   (uint64_t)(left > 0 ? OCSP_STALE_WARN_S - left : OCSP_STALE_WARN_S));
        if (f == NULL)
            continue;
        fmt(f->summary, sizeof(f->summary), "the OCSP response stapled for %s on %s %s %s", cs[i].name, cs[i].listener,
            left > 0 ? "goes stale at" : "went stale at", when);
        fmt(f->action, sizeof(f->action),
            "fetch a fresh response from the CA's responder (openssl ocsp -issuer ... -cert ... -url ... -respout "
            "FILE), "
            "write it over the certificate's ocsp file and reload (sluice reload)");
    }
}

/* The rule table, in evaluation order: the upstream rule first, so the rules after it stay
 * silent about the targets of an upstream that is down as a whole. */
typedef struct rule {
    const char *name;
    void (*run)(eval_t *e);
} rule_t;

static const rule_t rules[] = {
    {"upstream_down", rule_upstream_down},
    {"target_down", rule_target_down},
    {"target_errors", rule_target_errors},
    {"upstream_latency", rule_upstream_latency},
    {"route_not_found", rule_unmatched},
    {"route_causes", rule_route_causes},
    {"auth", rule_auth},
    {"fds", rule_fds},
    {"loop_lag", rule_loop_lag},
    {"connection_limit", rule_connection_limit},
    {"store_down", rule_store_down},
    {"tls_expiry", rule_tls_expiry},
};

static int cmp_finding(const void *pa, const void *pb)
{
    const finding_t *a = pa, *b = pb;
    if (a->severity != b->severity)
        return a->severity < b->severity ? -1 : 1;
    if (a->weight != b->weight)
        return a->weight > b->weight ? -1 : 1;
    return strcmp(a->key, b->key);
}

/* Runs every rule over window `w`; the findings are ranked. */
static void evaluate(sl_doctor_t *d, unsigned window_s, eval_t *e)
{
    memset(e, 0, sizeof(*e));
    e->d = d;
    e->w = window_of(d, window_s);
    if (e->w.last == NULL || d->snap == NULL)
        return;
    e->cfg = d->snap->cfg;
    e->up_down = sl_xcalloc(e->cfg->nupstreams + 1, sizeof(*e->up_down));
    for (size_t i = 0; i < e->w.last->nroutes; i++) {
        sl_metrics_route_sum_t rd;
        route_delta(d, &e->w, &e->w.last->routes[i], &rd);
        e->total_requests += rd.requests;
    }
    for (size_t i = 0; i < SL_ARRAY_SIZE(rules); i++)
        rules[i].run(e);
    if (e->out.len > 1)
        qsort(e->out.items, e->out.len, sizeof(*e->out.items), cmp_finding);
}

static void eval_dispose(eval_t *e)
{
    findings_dispose(&e->out);
    free(e->up_down);
}

/* ---- since -------------------------------------------------------------------------------- */

static streak_t *streak_find(streaks_t *s, const char *key)
{
    for (size_t i = 0; i < s->len; i++)
        if (strcmp(s->items[i].key, key) == 0)
            return &s->items[i];
    return NULL;
}

static void streaks_update(streaks_t *s, const findings_t *f, uint64_t now_ms)
{
    for (size_t i = 0; i < s->len; i++)
        s->items[i].seen = false;
    for (size_t i = 0; i < f->len; i++) {
        streak_t *st = streak_find(s, f->items[i].key);
        if (st == NULL) {
            if (s->len == s->cap) {
                s->cap = s->cap ? 2 * s->cap : 16;
                s->items = sl_xrealloc(s->items, s->cap * sizeof(*s->items));
            }
            st = &s->items[s->len++];
            snprintf(st->key, sizeof(st->key), "%s", f->items[i].key);
            st->first_ms = now_ms;
        }
        st->seen = true;
    }
    /* A finding that stopped holding ends its streak: if it comes back, it is new again. */
    size_t k = 0;
    for (size_t i = 0; i < s->len; i++)
        if (s->items[i].seen)
            s->items[k++] = s->items[i];
    s->len = k;
}

/* ---- the API ------------------------------------------------------------------------------ */

int sl_doctor_create(sl_metrics_t *m, sl_doctor_t **out)
{
    sl_doctor_t *d = sl_xcalloc(1, sizeof(*d));
    d->m = m;
    *out = d;
    return 0;
}

void sl_doctor_destroy(sl_doctor_t *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < SL_DOCTOR_SAMPLES; i++) {
        free(d->ring[i].routes);
        free(d->ring[i].route_by_id);
        free(d->ring[i].targets);
        free(d->ring[i].target_by_id);
    }
    free(d->health);
    free(d->issuers);
    free(d->streaks[0].items);
    free(d->streaks[1].items);
    sl_snapshot_unref(d->snap);
    free(d);
}

typedef struct sort_ctx {
    const char *base;
    size_t stride;
} sort_ctx_t;

static int cmp_by_id(const void *pa, const void *pb, void *arg)
{
    const sort_ctx_t *c = arg;
    uint32_t a, b;
    memcpy(&a, c->base + *(const uint32_t *)pa * c->stride, sizeof(a));
    memcpy(&b, c->base + *(const uint32_t *)pb * c->stride, sizeof(b));
    return (a > b) - (a < b);
}

/* Positions of `arr`'s points sorted by id (the first member of both point types). */
static void index_by_id(uint32_t *by_id, const void *arr, size_t n, size_t stride)
{
    for (size_t i = 0; i < n; i++)
        by_id[i] = (uint32_t)i;
    sort_ctx_t c = {arr, stride};
    if (n > 1)
        qsort_r(by_id, n, sizeof(*by_id), cmp_by_id, &c);
}

static void on_health(void *arg, const sl_health_target_info_t *info)
{
    sl_doctor_t *d = arg;
    if (d->nhealth >= SL_DOCTOR_MAX_TARGETS)
        return;
    if (d->nhealth == d->caphealth) {
        d->caphealth = d->caphealth ? 2 * d->caphealth : 16;
        d->health = sl_xrealloc(d->health, d->caphealth * sizeof(*d->health));
    }
    health_entry_t *h = &d->health[d->nhealth++];
    snprintf(h->upstream, sizeof(h->upstream), "%s", info->upstream);
    snprintf(h->target, sizeof(h->target), "%s", info->target);
    snprintf(h->result, sizeof(h->result), "%s", info->last_result);
    h->healthy = info->healthy;
    h->last_check_ms = info->last_check_ms;
}

void sl_doctor_set_jwks(sl_doctor_t *d, sl_jwks_store_t *jwks)
{
    d->jwks = jwks;
    if (jwks == NULL)
        d->nissuers = 0;
}

static void on_issuer(void *arg, const sl_jwks_store_info_t *info)
{
    sl_doctor_t *d = arg;
    if (d->nissuers >= MAX_ISSUERS)
        return;
    if (d->nissuers == d->capissuers) {
        d->capissuers = d->capissuers ? 2 * d->capissuers : 8;
        d->issuers = sl_xrealloc(d->issuers, d->capissuers * sizeof(*d->issuers));
    }
    issuer_entry_t *ie = &d->issuers[d->nissuers++];
    snprintf(ie->name, sizeof(ie->name), "%s", info->issuer);
    snprintf(ie->source, sizeof(ie->source), "%s", info->source);
    snprintf(ie->last_error, sizeof(ie->last_error), "%s", info->last_error);
    ie->nkeys = info->nkeys;
    ie->loaded_ms = info->loaded_ms;
    ie->fetches = info->fetches;
    ie->failures = info->failures;
}

static void sample_take(sl_doctor_t *d, sample_t *s, const sl_snapshot_t *snap)
{
    const sl_config_t *cfg = snap->cfg;
    size_t nr = SL_MIN(cfg->nroutes, (size_t)SL_DOCTOR_MAX_ROUTES) + 1;
    if (s->caproutes < nr) {
        s->caproutes = nr;
        s->routes = sl_xrealloc(s->routes, nr * sizeof(*s->routes));
        s->route_by_id = sl_xrealloc(s->route_by_id, nr * sizeof(*s->route_by_id));
    }
    s->nroutes = 0;
    for (size_t i = 0; i < nr; i++) {
        route_pt_t *p = &s->routes[s->nroutes++];
        p->index = i == 0 ? UINT32_MAX : (uint32_t)(i - 1);
        p->id = sl_metrics_route_id(snap->metrics, i == 0 ? -1 : (long)(i - 1));
        sl_metrics_read_route(d->m, p->id, &p->sum);
    }
    index_by_id(s->route_by_id, s->routes, s->nroutes, sizeof(route_pt_t));

    size_t nt = 0;
    for (size_t u = 0; u < cfg->nupstreams; u++)
        nt += cfg->upstreams[u].ntargets;
    nt = SL_MIN(nt, (size_t)SL_DOCTOR_MAX_TARGETS);
    if (s->captargets < nt || s->targets == NULL) {
        s->captargets = nt ? nt : 1;
        s->targets = sl_xrealloc(s->targets, s->captargets * sizeof(*s->targets));
        s->target_by_id = sl_xrealloc(s->target_by_id, s->captargets * sizeof(*s->target_by_id));
    }
    s->ntargets = 0;
    for (size_t u = 0; u < cfg->nupstreams && s->ntargets < nt; u++) {
        const sl_target_state_t *states = snap->upstreams != NULL ? sl_proxy_target_states(snap, u) : NULL;
        const sl_breaker_t *br = snap->upstreams != NULL ? sl_proxy_breaker(snap, u) : NULL;
        for (size_t t = 0; t < cfg->upstreams[u].ntargets && s->ntargets < nt; t++) {
            target_pt_t *p = &s->targets[s->ntargets++];
            p->up = (uint32_t)u;
            p->idx = (uint32_t)t;
            p->id = sl_metrics_target_id(snap->metrics, u, t);
            p->flags = states != NULL ? atomic_load_explicit(&states[t].flags, memory_order_relaxed) : 0;
            p->circuit = br != NULL ? sl_breaker_state(br, t) : SL_BREAKER_CLOSED;
            /* Half-open with every probe out sets the flag again: the balancers see it open. */
            if (p->flags & SL_TARGET_CIRCUIT_OPEN)
                p->circuit = SL_BREAKER_OPEN;
            sl_metrics_read_target(d->m, p->id, &p->sum);
        }
    }
    index_by_id(s->target_by_id, s->targets, s->ntargets, sizeof(target_pt_t));
    s->nunmatched = sl_metrics_read_unmatched(d->m, s->unmatched, TOP_UNMATCHED);
}

void sl_doctor_tick(sl_doctor_t *d, const sl_snapshot_t *snap, sl_health_t *health, const sl_doctor_resources_t *res,
                    uint64_t now_wall_ms)
{
    if (snap == NULL || snap->metrics == NULL)
        return;
    sample_t *s = &d->ring[d->head];
    sample_take(d, s, snap);
    s->wall_ms = now_wall_ms;
    if (res != NULL)
        s->res = *res;
    else
        memset(&s->res, 0, sizeof(s->res));
    d->head = (d->head + 1) % SL_DOCTOR_SAMPLES;
    if (d->count < SL_DOCTOR_SAMPLES)
        d->count++;
    if (d->snap != snap) {
        sl_snapshot_t *old = d->snap;
        d->snap = sl_snapshot_ref((sl_snapshot_t *)snap);
        sl_snapshot_unref(old);
    }
    d->nhealth = 0;
    if (health != NULL)
        sl_health_each(health, on_health, d);
    d->nissuers = 0;
    if (d->jwks != NULL)
        sl_jwks_store_each(d->jwks, on_issuer, d);
    static const unsigned windows[2] = {60, 300};
    for (size_t i = 0; i < 2; i++) {
        eval_t e;
        evaluate(d, windows[i], &e);
        streaks_update(&d->streaks[i], &e.out, now_wall_ms);
        eval_dispose(&e);
    }
}

json_t *sl_doctor_report(sl_doctor_t *d, const sl_snapshot_t *snap, unsigned window_s)
{
    (void)snap; /* the latest sample's own snapshot names its indices */
    unsigned w = clamp_window(window_s);
    json_t *out = json_object();
    json_object_set_new(out, "window_seconds", json_integer(w));
    json_t *list = json_array();
    eval_t e;
    evaluate(d, w, &e);
    streaks_t *st = &d->streaks[w == 60 ? 0 : 1];
    for (size_t i = 0; i < e.out.len; i++) {
        finding_t *f = &e.out.items[i];
        const streak_t *k = streak_find(st, f->key);
        uint64_t since = k != NULL ? k->first_ms : e.w.last->wall_ms;
        if (since < e.w.base->wall_ms)
            since = e.w.base->wall_ms;
        char iso[32];
        iso8601(since, iso);
        json_t *o = json_object();
        json_object_set_new(o, "severity", json_string(severity_names[f->severity]));
        json_object_set_new(o, "cause", json_string(sl_failure_name(f->cause)));
        json_object_set_new(o, "where", f->where);
        json_object_set_new(o, "since", json_string(iso));
        json_object_set_new(o, "summary", json_string(f->summary));
        json_object_set_new(o, "evidence", f->evidence);
        json_object_set_new(o, "action", json_string(f->action));
        f->where = f->evidence = NULL; /* moved into `o` */
        json_array_append_new(list, o);
    }
    eval_dispose(&e);
    json_object_set_new(out, "findings", list);
    return out;
}

void sl_doctor_target_window(sl_doctor_t *d, const sl_snapshot_t *snap, size_t upstream_index, size_t target_index,
                             unsigned window_s, uint64_t *requests, uint64_t *errors)
{
    *requests = *errors = 0;
    window_t w = window_of(d, window_s);
    if (w.last == NULL || snap == NULL || snap->metrics == NULL)
        return;
    const target_pt_t *now = target_in(w.last, sl_metrics_target_id(snap->metrics, upstream_index, target_index));
    if (now == NULL)
        return;
    sl_metrics_target_sum_t dl;
    target_delta(d, &w, now, &dl);
    uint64_t failed = 0;
    for (size_t k = 0; k < SL_METRICS_UPSTREAM_ERR__COUNT; k++)
        if (k != SL_METRICS_UPSTREAM_ERR_5XX)
            failed += dl.errors[k];
    *requests = dl.first_byte.count + failed;
    *errors = failed + dl.errors[SL_METRICS_UPSTREAM_ERR_5XX];
}

void sl_doctor_resources_read(sl_doctor_resources_t *res, sl_worker_t *const *workers, size_t nworkers,
                              uint64_t max_connections)
{
    memset(res, 0, sizeof(*res));
    res->fds_open = sl_metrics_read_open_fds();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        res->fds_limit = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp != NULL) {
        unsigned long long size, resident;
        long page = sysconf(_SC_PAGESIZE);
        if (fscanf(fp, "%llu %llu", &size, &resident) == 2 && page > 0)
            res->rss_bytes = (uint64_t)resident * (uint64_t)page;
        fclose(fp);
    }
    res->connections = sl_h1_server_total_connections();
    res->max_connections = max_connections;
    for (size_t i = 0; i < nworkers; i++) {
        res->connections_refused_total += sl_worker_refused_total(workers[i]);
        res->loop_lag_max_ns = SL_MAX(res->loop_lag_max_ns, sl_worker_take_loop_lag(workers[i]));
    }
}

bool sl_doctor_target_status(void *snap_, size_t upstream_index, size_t target_index, sl_metrics_target_status_t *out)
{
    const sl_snapshot_t *snap = snap_;
    if (snap == NULL || snap->upstreams == NULL || upstream_index >= snap->cfg->nupstreams ||
        target_index >= snap->cfg->upstreams[upstream_index].ntargets)
        return false;
    const sl_target_state_t *states = sl_proxy_target_states(snap, upstream_index);
    if (states == NULL)
        return false;
    uint32_t f = atomic_load_explicit(&states[target_index].flags, memory_order_relaxed);
    const sl_breaker_t *br = sl_proxy_breaker(snap, upstream_index);
    out->healthy = !(f & (SL_TARGET_UNHEALTHY | SL_TARGET_EJECTED | SL_TARGET_UNRESOLVED));
    out->circuit = br != NULL ? sl_breaker_state(br, target_index) : ((f & SL_TARGET_CIRCUIT_OPEN) ? 2 : 0);
    return true;
}
