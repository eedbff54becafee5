/*
 * The Redis store (store/store.h): per worker one hiredis connection on the worker's loop, the
 * commands in flight in send order (replies come in that order, so the oldest deadline is always
 * the head's), reconnects with backoff, the hot-key lease table, and the local fallback. The
 * rate-limit and quota filters call it; the script it runs is store/script.c.
 */
#include "store/store.h"

#include <netdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/time.h"
#include "store/internal.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 10000
#define PREFIX_MAX     64
/* Key texts longer than this are named by their SHA-256 (request data must not make Redis keys
 * of any size); shorter ones stay readable in redis-cli. */
#define KEY_TEXT_MAX 200
#define KEY_MAX      (PREFIX_MAX + 2 + KEY_TEXT_MAX + 1)
/* Hot-key slots per worker, direct-mapped by digest: only a handful of keys are ever hot. */
#define HOT_SLOTS 128
#define FREE_REQS 256
#define NS_PER_S  UINT64_C(1000000000)

typedef enum req_kind {
    REQ_LOAD = 1, /* SCRIPT LOAD; internal */
    REQ_ADMIT,    /* one GCRA decision */
    REQ_LEASE,    /* a slice for a hot key; internal, owned by its slot */
    REQ_RETURN,   /* unused units back; internal, reply ignored */
    REQ_QUOTA,
    REQ_WAIT, /* an admit waiting for its slot's lease; never sent itself */
} req_kind_t;

typedef struct hot hot_t;

struct sl_store_req {
    sl_store_req_t *prev, *next; /* the worker's in-flight list, or a slot's waiters */
    sl_store_worker_t *w;
    req_kind_t kind;
    bool retried;   /* NOSCRIPT already retried once */
    bool cancelled; /* in flight but abandoned: freed when its reply (or the failure) comes */
    uint64_t deadline_ms;
    union {
        sl_store_admit_cb admit;
        sl_store_quota_cb quota;
    } cb;
    void *arg;
    /* what a local decision needs when Redis fails */
    sl_gcra_key_t key;
    sl_gcra_params_t params;
    uint32_t cost;
    uint64_t now_ns;
    uint64_t limit; /* quota */
    hot_t *slot;    /* REQ_LEASE, REQ_WAIT */
    uint32_t gen;   /* REQ_LEASE, REQ_WAIT: which lease of the slot */
    int argc;
    const char *argv[10];
    size_t argvlen[10];
    char nums[7][24];
    char keybuf[KEY_MAX];
};

struct hot {
    sl_gcra_key_t key; /* {0,0}: free */
    uint64_t window_ns;
    uint32_t hits;  /* in the second starting at window_ns */
    uint32_t units; /* leased, not yet spent */
    uint64_t lease_end_ns;
    uint64_t deny_until_ns; /* Redis granted nothing: refused locally until then */
    sl_gcra_params_t p;
    uint64_t limit, remaining, reset_at_ns; /* figures of the last grant, for results */
    sl_store_req_t *lease;                  /* in flight */
    uint32_t gen;                           /* of the latest lease started */
    sl_store_req_t *waiters, *waiters_tail; /* oldest first: a lease's own waiters are a prefix */
    size_t keylen;
    char keybuf[KEY_MAX];
};

typedef enum link_state {
    LINK_DOWN = 1,
    LINK_CONNECTING,
    LINK_READY,
} link_state_t;

/* Counters with one writer (the worker), read by any thread. */
typedef struct counters {
    atomic_uint_fast64_t commands, failures, timeouts, fallbacks, refusals, reconnects, leases, leased_units,
        returned_units, lease_admits;
} counters_t;

struct sl_store_worker {
    sl_store_t *s;
    uv_loop_t *loop;
    sl_store_worker_t *prev_w, *next_w; /* the store's list, under its mutex */
    redisAsyncContext *ac;
    link_state_t link;
    bool failed_once; /* a connection failed: later connects must prove ready before use */
    bool stopping;
    bool counted_down;
    bool loading;    /* a SCRIPT LOAD is in flight: calls queued behind it will find the script */
    int kill_status; /* what the NULL replies of a connection we killed report */
    uint64_t connect_deadline_ms;
    uint64_t backoff_ms;
    uv_timer_t retry_timer, deadline_timer, sweep_timer;
    int open_handles;
    sl_store_req_t *head, *tail; /* in flight, send order */
    sl_store_req_t *free_reqs;
    size_t nfree;
    atomic_bool up;
    atomic_uint_fast64_t down_since_ms;
    counters_t c;
    hot_t hot[HOT_SLOTS];
};

struct sl_store {
    char host[NI_MAXHOST];
    int port;
    char address[NI_MAXHOST + 16];
    enum sl_store_on_failure on_failure;
    uint64_t connect_timeout_ms, command_timeout_ms, lease_ns;
    uint32_t slice, hot_per_s;
    char prefix[PREFIX_MAX + 1];
    size_t prefix_len;
    sl_gcra_table_t *fallback;
    uint64_t fallback_clock_ns;
    char sha[41];
    uint64_t (*test_clock)(void *arg);
    void *test_clock_arg;
    pthread_mutex_t mu; /* the worker list and retired counters */
    sl_store_worker_t *workers;
    counters_t retired; /* of freed workers */
    atomic_uint nworkers, nworkers_up, nworkers_down;
    atomic_uint_fast64_t down_since_ms, down_events;
};

static void bump(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static const char *error_name(int code)
{
    switch (code) {
    case SL_ESTORE_DOWN:
        return "redis unreachable";
    case SL_ESTORE_TIMEOUT:
        return "redis command timed out";
    case SL_ESTORE_REPLY:
        return "unexpected redis reply";
    case SL_ESTORE_STOPPED:
        return "store worker stopped";
    }
    return NULL;
}

/* ---- create / destroy --------------------------------------------------------------------- */

static int parse_address(const char *a, char *host, size_t hostsz, int *port)
{
    const char *colon = NULL, *h = a, *hend;
    if (a == NULL || *a == '\0')
        return SL_EINVALID;
    if (*a == '[') {
        h = a + 1;
        hend = strchr(h, ']');
        if (hend == NULL)
            return SL_EINVALID;
        if (hend[1] == ':')
            colon = hend + 1;
        else if (hend[1] != '\0')
            return SL_EINVALID;
    } else {
        colon = strrchr(a, ':');
        if (colon != NULL && strchr(a, ':') != colon)
            return SL_EINVALID; /* a bare IPv6 literal needs brackets */
        hend = colon ? colon : a + strlen(a);
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= hostsz)
        return SL_EINVALID;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = 6379;
    if (colon != NULL) {
        unsigned long long p;
        if (!sl_str_to_u64(sl_str_from_cstr(colon + 1), &p) || p == 0 || p > 65535)
            return SL_EINVALID;
        *port = (int)p;
    }
    return 0;
}

int sl_store_create(const sl_store_conf_t *conf, sl_store_t **out)
{
    sl_error_register_range(SL_ESTORE_DOWN, SL_ESTORE__LAST - 1, error_name);
    char name[NI_MAXHOST];
    int port;
    if (conf->on_failure != SL_STORE_ALLOW && conf->on_failure != SL_STORE_DENY)
        return SL_EINVALID;
    if (parse_address(conf->address, name, sizeof(name), &port) != 0)
        return SL_EINVALID;
    const char *prefix = conf->key_prefix ? conf->key_prefix : "sluice:";
    if (strlen(prefix) > PREFIX_MAX)
        return SL_EINVALID;
    /* hiredis 0.14 resolves names with a blocking getaddrinfo in the worker: resolve once here,
     * on the main thread, so a worker never blocks on DNS. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(name, NULL, &hints, &ai) != 0 || ai == NULL)
        return SL_ENOTFOUND;
    sl_store_t *s = sl_xcalloc(1, sizeof(*s));
    int rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, s->host, sizeof(s->host), NULL, 0, NI_NUMERICHOST);
    bool v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (rc != 0) {
        free(s);
        return SL_ENOTFOUND;
    }
    s->port = port;
    snprintf(s->address, sizeof(s->address), v6 ? "[%s]:%d" : "%s:%d", s->host, port);
    s->on_failure = conf->on_failure;
    s->connect_timeout_ms = conf->connect_timeout_ms ? conf->connect_timeout_ms : 1000;
    s->command_timeout_ms = conf->command_timeout_ms ? conf->command_timeout_ms : 250;
    s->lease_ns = (conf->lease_ms ? conf->lease_ms : 250) * UINT64_C(1000000);
    s->slice = conf->slice;
    s->hot_per_s = conf->hot_per_s ? conf->hot_per_s : 4 * conf->slice;
    s->prefix_len = strlen(prefix);
    memcpy(s->prefix, prefix, s->prefix_len + 1);
    s->fallback = conf->fallback;
    s->fallback_clock_ns = conf->fallback_clock_ns;
    sl__store_script_sha(s->sha);
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return 0;
}

void sl_store_destroy(sl_store_t *s)
{
    if (s == NULL)
        return;
    SL_BUG_ON(s->workers != NULL);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

const char *sl_store_address(const sl_store_t *s)
{
    return s->address;
}

void sl_store_set_test_clock(sl_store_t *s, uint64_t (*wall_ns)(void *arg), void *arg)
{
    s->test_clock = wall_ns;
    s->test_clock_arg = arg;
}

/* ---- health ------------------------------------------------------------------------------- */

static void counters_add(counters_t *to, counters_t *from)
{
    atomic_uint_fast64_t *t = &to->commands, *f = &from->commands;
    for (size_t i = 0; i < sizeof(counters_t) / sizeof(atomic_uint_fast64_t); i++)
        atomic_fetch_add_explicit(&t[i], atomic_load_explicit(&f[i], memory_order_relaxed), memory_order_relaxed);
}

void sl_store_health(sl_store_t *s, sl_store_health_t *out)
{
    counters_t sum;
    memset(&sum, 0, sizeof(sum));
    pthread_mutex_lock(&s->mu);
    counters_add(&sum, &s->retired);
    for (sl_store_worker_t *w = s->workers; w != NULL; w = w->next_w)
        counters_add(&sum, &w->c);
    pthread_mutex_unlock(&s->mu);
    unsigned n = atomic_load(&s->nworkers), up = atomic_load(&s->nworkers_up);
    *out = (sl_store_health_t){
        .up = n > 0 && up == n,
        .workers = n,
        .workers_up = up,
        .down_since_ms = atomic_load(&s->nworkers_down) ? atomic_load(&s->down_since_ms) : 0,
        .commands = sum.commands,
        .failures = sum.failures,
        .timeouts = sum.timeouts,
        .fallbacks = sum.fallbacks,
        .refusals = sum.refusals,
        .down_events = atomic_load(&s->down_events),
        .reconnects = sum.reconnects,
        .leases = sum.leases,
        .leased_units = sum.leased_units,
        .returned_units = sum.returned_units,
        .lease_admits = sum.lease_admits,
    };
}

bool sl_store_worker_up(const sl_store_worker_t *w, uint64_t *down_since_ms)
{
    if (down_since_ms != NULL)
        *down_since_ms = atomic_load_explicit(&w->down_since_ms, memory_order_relaxed);
    return atomic_load_explicit(&w->up, memory_order_relaxed);
}

static void mark_up(sl_store_worker_t *w)
{
    sl_store_t *s = w->s;
    if (!atomic_load(&w->up)) {
        atomic_store(&w->up, true);
        atomic_fetch_add(&s->nworkers_up, 1);
    }
    atomic_store(&w->down_since_ms, 0);
    if (w->counted_down) {
        w->counted_down = false;
        bump(&w->c.reconnects, 1);
        /* The last worker back says so, once for the process. */
        if (atomic_fetch_sub(&s->nworkers_down, 1) == 1)
            sl_log_info("redis at %s is back; cluster-wide rate limits resumed", s->address);
    }
}

static void mark_down(sl_store_worker_t *w, const char *why)
{
    sl_store_t *s = w->s;
    if (atomic_load(&w->up)) {
        atomic_store(&w->up, false);
        atomic_fetch_sub(&s->nworkers_up, 1);
    }
    if (w->counted_down)
        return;
    w->counted_down = true;
    uint64_t now = sl_time_wall_ms();
    atomic_store(&w->down_since_ms, now);
    /* The first worker to lose it says so, once for the process. */
    if (atomic_fetch_add(&s->nworkers_down, 1) == 0) {
        atomic_store(&s->down_since_ms, now);
        atomic_fetch_add(&s->down_events, 1);
        sl_log_warn("redis at %s unreachable (%s); %s", s->address, why,
                    s->on_failure == SL_STORE_ALLOW ? "rate limits are per node until it is back"
                                                    : "requests that need it are refused (503) until it is back");
    }
}

/* ---- requests ----------------------------------------------------------------------------- */

static sl_store_req_t *req_get(sl_store_worker_t *w, req_kind_t kind)
{
    sl_store_req_t *r = w->free_reqs;
    if (r != NULL) {
        w->free_reqs = r->next;
        w->nfree--;
    } else {
        r = sl_xmalloc(sizeof(*r));
    }
    r->prev = r->next = NULL;
    r->w = w;
    r->kind = kind;
    r->retried = r->cancelled = false;
    r->cb.admit = NULL;
    r->arg = NULL;
    r->slot = NULL;
    r->argc = 0;
    return r;
}

static void req_put(sl_store_req_t *r)
{
    sl_store_worker_t *w = r->w;
#ifdef SLUICE_SANITIZE
    free(r); /* no recycling: ASan sees every use after free */
    (void)w;
#else
    if (w->nfree >= FREE_REQS) {
        free(r);
        return;
    }
    r->next = w->free_reqs;
    w->free_reqs = r;
    w->nfree++;
#endif
}

static void fifo_append(sl_store_worker_t *w, sl_store_req_t *r)
{
    r->next = NULL;
    r->prev = w->tail;
    if (w->tail)
        w->tail->next = r;
    else
        w->head = r;
    w->tail = r;
}

static void fifo_remove(sl_store_worker_t *w, sl_store_req_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        w->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        w->tail = r->prev;
    r->prev = r->next = NULL;
}

static void arg_str(sl_store_req_t *r, const char *p, size_t n)
{
    r->argv[r->argc] = p;
    r->argvlen[r->argc] = n;
    r->argc++;
}

static void arg_u64(sl_store_req_t *r, int slot, uint64_t v)
{
    char *e = sl_put_u64(r->nums[slot], v);
    arg_str(r, r->nums[slot], (size_t)(e - r->nums[slot]));
}

/* Names the Redis key of `text` in `buf` ("<prefix><kind>:<text>", or "<prefix><kind>#<sha256>"
 * for long texts); returns its length. */
static size_t make_key(const sl_store_t *s, char kind, sl_str_t text, char *buf)
{
    char *p = sl_put(buf, s->prefix, s->prefix_len);
    *p++ = kind;
    if (text.len <= KEY_TEXT_MAX) {
        *p++ = ':';
        p = sl_put(p, text.ptr, text.len);
    } else {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        SL_BUG_ON(EVP_Digest(text.ptr, text.len, md, &n, EVP_sha256(), NULL) != 1);
        static const char hex[] = "0123456789abcdef";
        *p++ = '#';
        for (unsigned i = 0; i < n; i++) {
            *p++ = hex[md[i] >> 4];
            *p++ = hex[md[i] & 15];
        }
    }
    return (size_t)(p - buf);
}

/* EVALSHA <sha> 1 <key> <mode>: the common head of every script call; the key is in keybuf. */
static void args_head(sl_store_req_t *r, size_t keylen, const char *mode)
{
    static const char evalsha[] = "EVALSHA";
    arg_str(r, evalsha, sizeof(evalsha) - 1);
    arg_str(r, r->w->s->sha, 40);
    arg_str(r, "1", 1);
    arg_str(r, r->keybuf, keylen);
    arg_str(r, mode, 1);
}

/* The injected clock of tests, as the script's optional last two arguments. */
static void args_clock(sl_store_req_t *r, int first_slot)
{
    sl_store_t *s = r->w->s;
    if (s->test_clock == NULL)
        return;
    uint64_t ns = s->test_clock(s->test_clock_arg);
    arg_u64(r, first_slot, ns / NS_PER_S);
    arg_u64(r, first_slot + 1, ns % NS_PER_S);
}

/* ---- the connection ----------------------------------------------------------------------- */

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata);
static void link_connect(sl_store_worker_t *w);
static void maybe_close(sl_store_worker_t *w);
static void req_failed(sl_store_req_t *r, int status);

static bool link_usable(const sl_store_worker_t *w)
{
    /* Before the first connection is ready, commands queue behind it (start-up); after a
     * failure, a new connection must prove itself first, so requests do not wait for every
     * reconnect attempt to a Redis that is still gone. */
    return !w->stopping && (w->link == LINK_READY || (w->link == LINK_CONNECTING && !w->failed_once));
}

static void deadline_cb(uv_timer_t *t);

static void arm(sl_store_worker_t *w)
{
    uint64_t due = UINT64_MAX;
    if (w->link == LINK_CONNECTING)
        due = w->connect_deadline_ms;
    else if (w->link == LINK_READY && w->head != NULL)
        due = w->head->deadline_ms;
    if (due == UINT64_MAX) {
        uv_timer_stop(&w->deadline_timer);
        return;
    }
    uint64_t now = uv_now(w->loop);
    uv_timer_start(&w->deadline_timer, deadline_cb, due > now ? due - now : 0, 0);
}

/* The connection is gone or going (hiredis frees it, or the caller will): from now on requests
 * are decided without it. The caller schedules the reconnect. Idempotent per connection. */
static void link_lost(sl_store_worker_t *w, const char *why)
{
    if (w->link == LINK_DOWN)
        return;
    w->ac = NULL;
    w->link = LINK_DOWN;
    w->loading = false;
    w->failed_once = true;
    uv_timer_stop(&w->deadline_timer);
    if (w->stopping)
        return;
    mark_down(w, why);
}

static void retry_cb(uv_timer_t *t)
{
    sl_store_worker_t *w = t->data;
    link_connect(w);
}

static void schedule_retry(sl_store_worker_t *w)
{
    if (w->stopping || w->link != LINK_DOWN)
        return;
    uv_timer_start(&w->retry_timer, retry_cb, w->backoff_ms, 0);
    w->backoff_ms = SL_MIN(w->backoff_ms * 2, BACKOFF_MAX_MS);
}

/* Kills the current connection (a deadline passed): its pending commands fail with `status`. */
static void link_kill(sl_store_worker_t *w, int status, const char *why)
{
    redisAsyncContext *ac = w->ac;
    if (ac == NULL)
        return;
    w->kill_status = status;
    link_lost(w, why);
    schedule_retry(w);
    /* Inside a hiredis callback this is deferred by hiredis until the callback returns. */
    redisAsyncFree(ac);
    maybe_close(w);
}

static void deadline_cb(uv_timer_t *t)
{
    sl_store_worker_t *w = t->data;
    uint64_t now = uv_now(w->loop);
    char why[96];
    if (w->link == LINK_CONNECTING && now >= w->connect_deadline_ms) {
        snprintf(why, sizeof(why), "no connection within %llu ms", (unsigned long long)w->s->connect_timeout_ms);
        link_kill(w, SL_ESTORE_TIMEOUT, why);
    } else if (w->link == LINK_READY && w->head != NULL && now >= w->head->deadline_ms) {
        snprintf(why, sizeof(why), "no reply within %llu ms", (unsigned long long)w->s->command_timeout_ms);
        link_kill(w, SL_ESTORE_TIMEOUT, why);
    } else {
        arm(w);
    }
}

static int send_req(sl_store_worker_t *w, sl_store_req_t *r)
{
    if (w->ac == NULL || redisAsyncCommandArgv(w->ac, reply_cb, r, r->argc, r->argv, r->argvlen) != REDIS_OK)
        return SL_ESTORE_DOWN;
    r->deadline_ms = uv_now(w->loop) + w->s->command_timeout_ms;
    bool first = w->head == NULL;
    fifo_append(w, r);
    bump(&w->c.commands, 1);
    if (first && w->link == LINK_READY)
        arm(w);
    return 0;
}

static int send_load(sl_store_worker_t *w)
{
    if (w->loading)
        return 0;
    sl_store_req_t *r = req_get(w, REQ_LOAD);
    arg_str(r, "SCRIPT", 6);
    arg_str(r, "LOAD", 4);
    arg_str(r, sl__store_script, strlen(sl__store_script));
    int rc = send_req(w, r);
    if (rc != 0)
        req_put(r);
    else
        w->loading = true;
    return rc;
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    sl_store_worker_t *w = ac->data;
    if (status != REDIS_OK && w->ac == ac) {
        link_lost(w, ac->errstr[0] ? ac->errstr : "connect failed");
        schedule_retry(w);
    }
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    sl_store_worker_t *w = ac->data;
    if (w->ac == ac) {
        link_lost(w, status == REDIS_OK ? "disconnected" : (ac->errstr[0] ? ac->errstr : "connection lost"));
        schedule_retry(w);
    }
    maybe_close(w);
}

static void link_connect(sl_store_worker_t *w)
{
    sl_store_t *s = w->s;
    redisAsyncContext *ac = redisAsyncConnect(s->host, s->port);
    SL_BUG_ON(ac == NULL);
    if (ac->err || redisLibuvAttach(ac, w->loop) != REDIS_OK) {
        char why[128];
        snprintf(why, sizeof(why), "%s", ac->err ? ac->errstr : "cannot watch the socket");
        redisAsyncFree(ac);
        w->link = LINK_CONNECTING; /* so that link_lost counts it */
        link_lost(w, why);
        schedule_retry(w);
        return;
    }
    ac->data = w;
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    w->ac = ac;
    w->link = LINK_CONNECTING;
    w->kill_status = 0;
    w->connect_deadline_ms = uv_now(w->loop) + s->connect_timeout_ms;
    /* hiredis queues commands until the socket connects; the load goes first, so every call
     * pipelined behind it finds the script. */
    if (send_load(w) != 0) {
        link_kill(w, SL_ESTORE_DOWN, "cannot queue SCRIPT LOAD");
        return;
    }
    arm(w);
}

static void link_ready(sl_store_worker_t *w)
{
    w->link = LINK_READY;
    w->backoff_ms = BACKOFF_MIN_MS;
    /* Commands queued while connecting were waiting on the connect deadline; their own
     * deadlines start now. */
    uint64_t due = uv_now(w->loop) + w->s->command_timeout_ms;
    for (sl_store_req_t *r = w->head; r != NULL; r = r->next)
        r->deadline_ms = due;
    if (!w->stopping)
        mark_up(w);
    arm(w);
}

/* ---- handles and stop --------------------------------------------------------------------- */

static void handle_closed(uv_handle_t *h)
{
    sl_store_worker_t *w = h->data;
    if (--w->open_handles > 0)
        return;
    sl_store_t *s = w->s;
    pthread_mutex_lock(&s->mu);
    counters_add(&s->retired, &w->c);
    if (w->prev_w)
        w->prev_w->next_w = w->next_w;
    else
        s->workers = w->next_w;
    if (w->next_w)
        w->next_w->prev_w = w->prev_w;
    pthread_mutex_unlock(&s->mu);
    if (atomic_load(&w->up))
        atomic_fetch_sub(&s->nworkers_up, 1);
    if (w->counted_down)
        atomic_fetch_sub(&s->nworkers_down, 1);
    atomic_fetch_sub(&s->nworkers, 1);
    while (w->free_reqs != NULL) {
        sl_store_req_t *r = w->free_reqs;
        w->free_reqs = r->next;
        free(r);
    }
    free(w);
}

/* Closes the handles once stopping and the connection is gone; the worker is freed in their
 * close callbacks, a later loop phase, so hiredis has left every frame that held `w`. */
static void maybe_close(sl_store_worker_t *w)
{
    if (!w->stopping || w->ac != NULL || w->head != NULL || w->open_handles != 3 ||
        uv_is_closing((uv_handle_t *)&w->retry_timer))
        return;
    uv_close((uv_handle_t *)&w->retry_timer, handle_closed);
    uv_close((uv_handle_t *)&w->deadline_timer, handle_closed);
    uv_close((uv_handle_t *)&w->sweep_timer, handle_closed);
}

/* ---- decisions ---------------------------------------------------------------------------- */

static sl_gcra_params_t norm_params(const sl_gcra_params_t *p)
{
    sl_gcra_params_t q = *p;
    if (q.emission_ns == 0)
        q.emission_ns = 1; /* as sl_gcra_decide */
    return q;
}

/* Redis is not there: decide locally (allow) or refuse (deny). 1 or SL_ESTORE_DOWN. */
static int decide_without(sl_store_worker_t *w, sl_gcra_key_t key, const sl_gcra_params_t *p, uint32_t cost,
                          uint64_t now_ns, sl_gcra_result_t *out)
{
    sl_store_t *s = w->s;
    if (s->on_failure == SL_STORE_DENY) {
        bump(&w->c.refusals, 1);
        return SL_ESTORE_DOWN;
    }
    bump(&w->c.fallbacks, 1);
    if (s->fallback == NULL || sl_gcra_admit(s->fallback, key, p, now_ns + s->fallback_clock_ns, cost, out) != 0) {
        /* No table, or a full one: admitting is the filter's own rule for a full table. */
        *out = (sl_gcra_result_t){.allowed = true, .limit = p->tolerance_ns / p->emission_ns + 1};
        out->remaining = out->limit - 1;
    }
    return 1;
}

static void req_failed(sl_store_req_t *r, int status)
{
    sl_store_worker_t *w = r->w;
    bool deny = w->s->on_failure == SL_STORE_DENY;
    if (w->stopping)
        status = SL_ESTORE_STOPPED;
    switch (r->kind) {
    case REQ_ADMIT:
    case REQ_WAIT:
        if (r->cancelled)
            break;
        if (status == SL_ESTORE_STOPPED) {
            r->cb.admit(r->arg, status, NULL);
        } else {
            sl_gcra_result_t res;
            int rc = decide_without(w, r->key, &r->params, r->cost, r->now_ns, &res);
            if (deny)
                r->cb.admit(r->arg, status, NULL);
            else
                r->cb.admit(r->arg, rc == 1 ? 0 : rc, &res);
        }
        break;
    case REQ_QUOTA:
        if (r->cancelled)
            break;
        if (deny || status == SL_ESTORE_STOPPED) {
            if (deny && status != SL_ESTORE_STOPPED)
                bump(&w->c.refusals, 1);
            r->cb.quota(r->arg, status, NULL);
        } else {
            bump(&w->c.fallbacks, 1);
            sl_store_quota_result_t q = {.allowed = true, .local = true, .limit = r->limit};
            r->cb.quota(r->arg, 0, &q);
        }
        break;
    default:
        break;
    }
    req_put(r);
}

static bool int_at(const redisReply *rep, size_t i, long long *v)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || i >= rep->elements ||
        rep->element[i]->type != REDIS_REPLY_INTEGER)
        return false;
    *v = rep->element[i]->integer;
    return true;
}

static uint64_t nonneg(long long v)
{
    return v < 0 ? UINT64_MAX : (uint64_t)v;
}

static void on_admit_reply(sl_store_req_t *r, const redisReply *rep)
{
    long long v[5];
    for (size_t i = 0; i < 5; i++)
        if (!int_at(rep, i, &v[i])) {
            bump(&r->w->c.failures, 1);
            req_failed(r, SL_ESTORE_REPLY);
            return;
        }
    if (!r->cancelled) {
        sl_gcra_result_t res = {.allowed = v[0] == 1,
                                .limit = (uint64_t)v[1],
                                .remaining = (uint64_t)v[2],
                                .retry_after_ns = nonneg(v[3]),
                                .reset_ns = (uint64_t)v[4]};
        r->cb.admit(r->arg, 0, &res);
    }
    req_put(r);
}

static void on_quota_reply(sl_store_req_t *r, const redisReply *rep)
{
    long long v[3];
    for (size_t i = 0; i < 3; i++)
        if (!int_at(rep, i, &v[i])) {
            bump(&r->w->c.failures, 1);
            req_failed(r, SL_ESTORE_REPLY);
            return;
        }
    if (!r->cancelled) {
        sl_store_quota_result_t q = {
            .allowed = v[0] == 1, .used = (uint64_t)v[1], .limit = r->limit, .reset_ns = (uint64_t)v[2]};
        r->cb.quota(r->arg, 0, &q);
    }
    req_put(r);
}

/* ---- leases ------------------------------------------------------------------------------- */

static void return_units(sl_store_worker_t *w, hot_t *h)
{
    uint32_t units = h->units;
    h->units = 0;
    /* Units that cannot go back are lost to the key until its TAT passes: a brief
     * under-admission, never an over-admission. */
    if (units == 0 || w->link != LINK_READY)
        return;
    sl_store_req_t *r = req_get(w, REQ_RETURN);
    memcpy(r->keybuf, h->keybuf, h->keylen);
    args_head(r, h->keylen, "r");
    arg_u64(r, 0, h->p.emission_ns);
    arg_u64(r, 1, units);
    args_clock(r, 2);
    if (send_req(w, r) != 0)
        req_put(r);
    else
        bump(&w->c.returned_units, units);
}

static bool hot_busy(const hot_t *h, uint64_t now_ns, uint32_t hot_per_s)
{
    return h->lease != NULL || h->waiters != NULL || (h->units > 0 && h->lease_end_ns > now_ns) ||
           h->deny_until_ns > now_ns || (now_ns - h->window_ns < NS_PER_S && h->hits > hot_per_s);
}

/* The slot of `key`, taking it over when its occupant is idle; NULL when it is in use. */
static hot_t *hot_slot(sl_store_worker_t *w, sl_gcra_key_t key, sl_str_t key_text, uint64_t now_ns)
{
    hot_t *h = &w->hot[(key.lo ^ key.hi) & (HOT_SLOTS - 1)];
    if (h->key.hi == key.hi && h->key.lo == key.lo)
        return h;
    if ((h->key.hi | h->key.lo) != 0 && hot_busy(h, now_ns, w->s->hot_per_s))
        return NULL;
    if (h->units > 0)
        return_units(w, h);
    h->key = key;
    h->window_ns = now_ns;
    h->hits = 0;
    h->units = 0;
    h->deny_until_ns = 0;
    h->keylen = make_key(w->s, 'g', key_text, h->keybuf);
    return h;
}

static void lease_result(const hot_t *h, bool allowed, uint64_t now_ns, sl_gcra_result_t *out)
{
    *out = (sl_gcra_result_t){.allowed = allowed, .limit = h->limit};
    out->reset_ns = h->reset_at_ns > now_ns ? h->reset_at_ns - now_ns : 0;
    if (allowed) {
        out->remaining = h->remaining + h->units;
    } else {
        out->retry_after_ns = h->deny_until_ns > now_ns ? h->deny_until_ns - now_ns : h->p.emission_ns;
    }
}

static int start_lease(sl_store_worker_t *w, hot_t *h, uint64_t now_ns)
{
    sl_store_req_t *r = req_get(w, REQ_LEASE);
    r->slot = h;
    r->now_ns = now_ns;
    memcpy(r->keybuf, h->keybuf, h->keylen);
    args_head(r, h->keylen, "l");
    arg_u64(r, 0, h->p.emission_ns);
    arg_u64(r, 1, h->p.tolerance_ns);
    arg_u64(r, 2, w->s->slice);
    args_clock(r, 3);
    r->gen = ++h->gen;
    int rc = send_req(w, r);
    if (rc != 0) {
        req_put(r);
        return rc;
    }
    h->lease = r;
    return 0;
}

static void waiter_unlink(hot_t *h, sl_store_req_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        h->waiters = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        h->waiters_tail = r->prev;
    r->prev = r->next = NULL;
}

/* The next waiter of lease `gen`, unlinked; NULL when none is left. Waiters stay linked until
 * their turn, so a callback may cancel any other (and may queue new ones, for a newer lease). */
static sl_store_req_t *waiter_pop(hot_t *h, uint32_t gen)
{
    sl_store_req_t *r = h->waiters;
    if (r == NULL || r->gen != gen)
        return NULL;
    waiter_unlink(h, r);
    return r;
}

/* 1: decided from the slot; 0: waiting for a lease; 2: not hot (or no lease possible): the
 * caller makes a single call. */
static int hot_admit(sl_store_worker_t *w, hot_t *h, const sl_gcra_params_t *p, uint32_t cost, uint64_t now_ns,
                     sl_gcra_result_t *out, sl_store_admit_cb cb, void *arg, sl_store_req_t **req)
{
    if (now_ns - h->window_ns >= NS_PER_S) {
        h->window_ns = now_ns;
        h->hits = 0;
    }
    h->hits++;
    h->p = *p;
    if (h->deny_until_ns > now_ns) {
        lease_result(h, false, now_ns, out);
        bump(&w->c.lease_admits, 1);
        return 1;
    }
    if (h->units > 0 && h->lease_end_ns <= now_ns)
        return_units(w, h);
    if (h->units >= cost) {
        h->units -= cost;
        lease_result(h, true, now_ns, out);
        bump(&w->c.lease_admits, 1);
        return 1;
    }
    if ((h->hits <= w->s->hot_per_s && h->lease == NULL) || !link_usable(w))
        return 2;
    if (h->lease == NULL) {
        /* Leftovers too small for this cost go back first: a worker holds at most one lease
         * of at most `slice` units per key, which is what the error bound counts. */
        return_units(w, h);
        if (start_lease(w, h, now_ns) != 0)
            return 2;
    }
    sl_store_req_t *r = req_get(w, REQ_WAIT);
    r->slot = h;
    r->cb.admit = cb;
    r->arg = arg;
    r->cost = cost;
    r->now_ns = now_ns;
    r->params = *p;
    r->key = h->key;
    r->gen = h->gen;
    r->prev = h->waiters_tail;
    if (h->waiters_tail)
        h->waiters_tail->next = r;
    else
        h->waiters = r;
    h->waiters_tail = r;
    *req = r;
    return 0;
}

static void on_lease_reply(sl_store_req_t *lr, const redisReply *rep, int status)
{
    sl_store_worker_t *w = lr->w;
    hot_t *h = lr->slot;
    uint32_t gen = lr->gen;
    uint64_t now_ns = lr->now_ns;
    h->lease = NULL;
    long long v[5];
    bool ok = status == 0;
    for (size_t i = 0; ok && i < 5; i++)
        ok = int_at(rep, i, &v[i]);
    req_put(lr);
    sl_store_req_t *r;
    if (!ok) {
        if (status == 0) {
            bump(&w->c.failures, 1);
            status = SL_ESTORE_REPLY;
        }
        while ((r = waiter_pop(h, gen)) != NULL)
            req_failed(r, status);
        return;
    }
    bump(&w->c.leases, 1);
    bump(&w->c.leased_units, (uint64_t)v[0]);
    h->units += (uint32_t)v[0];
    h->lease_end_ns = now_ns + w->s->lease_ns;
    h->limit = (uint64_t)v[1];
    h->remaining = (uint64_t)v[2];
    h->reset_at_ns = now_ns + (uint64_t)v[4];
    if (v[0] == 0)
        h->deny_until_ns = now_ns + (uint64_t)v[3];
    while ((r = waiter_pop(h, gen)) != NULL) {
        sl_gcra_result_t res;
        bool allowed = h->units >= r->cost;
        if (allowed)
            h->units -= r->cost;
        lease_result(h, allowed, now_ns, &res);
        sl_store_admit_cb cb = r->cb.admit;
        void *arg = r->arg;
        req_put(r);
        cb(arg, 0, &res);
    }
}

static void sweep_cb(uv_timer_t *t)
{
    sl_store_worker_t *w = t->data;
    uint64_t now = sl_time_mono_ns();
    for (size_t i = 0; i < HOT_SLOTS; i++) {
        hot_t *h = &w->hot[i];
        if ((h->key.hi | h->key.lo) == 0)
            continue;
        if (h->units > 0 && h->lease_end_ns <= now)
            return_units(w, h);
        if (!hot_busy(h, now, 0) && h->units == 0 && now - h->window_ns > 2 * NS_PER_S)
            h->key = (sl_gcra_key_t){0, 0};
    }
}

/* ---- replies ------------------------------------------------------------------------------ */

static bool is_noscript(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_ERROR && rep->len >= 8 && memcmp(rep->str, "NOSCRIPT", 8) == 0;
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    sl_store_req_t *r = privdata;
    sl_store_worker_t *w = r->w;
    redisReply *rep = reply;
    fifo_remove(w, r);
    if (rep == NULL) {
        /* hiredis is tearing the connection down and fails what was pending, in order. */
        int status = w->kill_status ? w->kill_status : SL_ESTORE_DOWN;
        if (w->ac == ac) {
            link_lost(w, ac->errstr[0] ? ac->errstr : "connection lost");
            schedule_retry(w);
        }
        bump(status == SL_ESTORE_TIMEOUT ? &w->c.timeouts : &w->c.failures, 1);
        if (r->kind == REQ_LEASE)
            on_lease_reply(r, NULL, status);
        else
            req_failed(r, status);
        maybe_close(w);
        return;
    }
    if (w->link == LINK_READY)
        arm(w);
    if (is_noscript(rep) && !r->retried && r->kind != REQ_LOAD) {
        /* SCRIPT FLUSH or a failover to a Redis without it: load again, then the same call
         * (not for an abandoned request: its answer would only spend budget). */
        if (r->cancelled) {
            req_put(r);
            return;
        }
        r->retried = true;
        if (send_load(w) == 0 && send_req(w, r) == 0)
            return;
        bump(&w->c.failures, 1);
        if (r->kind == REQ_LEASE)
            on_lease_reply(r, NULL, SL_ESTORE_REPLY);
        else
            req_failed(r, SL_ESTORE_REPLY);
        return;
    }
    switch (r->kind) {
    case REQ_LOAD:
        w->loading = false;
        if (rep->type == REDIS_REPLY_STRING && rep->len == 40 && memcmp(rep->str, w->s->sha, 40) == 0) {
            if (w->link == LINK_CONNECTING)
                link_ready(w);
        } else {
            bump(&w->c.failures, 1);
            sl_log_error("redis at %s refused the store script: %.*s", w->s->address,
                         rep->type == REDIS_REPLY_ERROR ? (int)SL_MIN(rep->len, 200) : 0,
                         rep->type == REDIS_REPLY_ERROR ? rep->str : "");
            link_kill(w, SL_ESTORE_REPLY, "script not loadable");
        }
        req_put(r);
        break;
    case REQ_ADMIT:
        on_admit_reply(r, rep);
        break;
    case REQ_QUOTA:
        on_quota_reply(r, rep);
        break;
    case REQ_LEASE:
        on_lease_reply(r, rep, 0);
        break;
    default:
        req_put(r);
        break;
    }
}

/* ---- the worker API ----------------------------------------------------------------------- */

int sl_store_worker_start(sl_store_t *s, uv_loop_t *loop, sl_store_worker_t **out)
{
    sl_store_worker_t *w = sl_xcalloc(1, sizeof(*w));
    w->s = s;
    w->loop = loop;
    w->link = LINK_DOWN;
    w->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_t *timers[] = {&w->retry_timer, &w->deadline_timer, &w->sweep_timer};
    for (size_t i = 0; i < SL_ARRAY_SIZE(timers); i++) {
        int rc = uv_timer_init(loop, timers[i]);
        SL_BUG_ON(rc != 0); /* uv_timer_init cannot fail on a live loop */
        timers[i]->data = w;
    }
    w->open_handles = 3;
    pthread_mutex_lock(&s->mu);
    w->next_w = s->workers;
    if (s->workers)
        s->workers->prev_w = w;
    s->workers = w;
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add(&s->nworkers, 1);
    if (s->slice > 0) {
        uint64_t every = SL_MAX(s->lease_ns / 1000000, 10);
        uv_timer_start(&w->sweep_timer, sweep_cb, every, every);
    }
    link_connect(w);
    *out = w;
    return 0;
}

void sl_store_worker_stop(sl_store_worker_t *w)
{
    SL_BUG_ON(w->stopping);
    for (size_t i = 0; i < HOT_SLOTS; i++)
        if (w->hot[i].units > 0)
            return_units(w, &w->hot[i]);
    w->stopping = true;
    uv_timer_stop(&w->retry_timer);
    uv_timer_stop(&w->sweep_timer);
    if (w->ac != NULL)
        redisAsyncDisconnect(w->ac); /* after the pending replies; the deadline timer bounds it */
    maybe_close(w);
}

int sl_store_admit(sl_store_worker_t *w, sl_gcra_key_t key, sl_str_t key_text, const sl_gcra_params_t *p, uint32_t cost,
                   uint64_t now_ns, sl_gcra_result_t *out, sl_store_admit_cb cb, void *arg, sl_store_req_t **req)
{
    if (cost == 0)
        return SL_EINVALID;
    sl_store_t *s = w->s;
    sl_gcra_params_t q = norm_params(p);
    if (s->slice > 0 && cost <= s->slice) {
        hot_t *h = hot_slot(w, key, key_text, now_ns);
        if (h != NULL) {
            int rc = hot_admit(w, h, &q, cost, now_ns, out, cb, arg, req);
            if (rc != 2)
                return rc;
        }
    }
    if (!link_usable(w))
        return decide_without(w, key, &q, cost, now_ns, out);
    sl_store_req_t *r = req_get(w, REQ_ADMIT);
    r->cb.admit = cb;
    r->arg = arg;
    r->key = key;
    r->params = q;
    r->cost = cost;
    r->now_ns = now_ns;
    size_t kl = make_key(s, 'g', key_text, r->keybuf);
    args_head(r, kl, "a");
    arg_u64(r, 0, q.emission_ns);
    arg_u64(r, 1, q.tolerance_ns);
    arg_u64(r, 2, cost);
    args_clock(r, 3);
    if (send_req(w, r) != 0) {
        req_put(r);
        return decide_without(w, key, &q, cost, now_ns, out);
    }
    *req = r;
    return 0;
}

int sl_store_quota(sl_store_worker_t *w, sl_str_t key_text, enum sl_store_window window, uint64_t limit, uint32_t cost,
                   sl_store_quota_result_t *out, sl_store_quota_cb cb, void *arg, sl_store_req_t **req)
{
    static const char *const modes[] = {[SL_STORE_HOUR] = "h", [SL_STORE_DAY] = "d", [SL_STORE_MONTH] = "m"};
    if (window < SL_STORE_HOUR || window > SL_STORE_MONTH)
        return SL_EINVALID;
    sl_store_t *s = w->s;
    sl_store_req_t *r = NULL;
    if (link_usable(w)) {
        r = req_get(w, REQ_QUOTA);
        r->cb.quota = cb;
        r->arg = arg;
        r->limit = limit;
        size_t kl = make_key(s, 'q', key_text, r->keybuf);
        args_head(r, kl, "q");
        arg_str(r, modes[window], 1);
        arg_u64(r, 0, limit);
        arg_u64(r, 1, cost);
        args_clock(r, 2);
        if (send_req(w, r) == 0) {
            *req = r;
            return 0;
        }
        req_put(r);
    }
    if (s->on_failure == SL_STORE_DENY) {
        bump(&w->c.refusals, 1);
        return SL_ESTORE_DOWN;
    }
    bump(&w->c.fallbacks, 1);
    *out = (sl_store_quota_result_t){.allowed = true, .local = true, .limit = limit};
    return 1;
}

void sl_store_cancel(sl_store_req_t *r)
{
    SL_BUG_ON(r->cancelled);
    if (r->kind == REQ_WAIT) {
        waiter_unlink(r->slot, r);
        req_put(r);
        return;
    }
    /* Still in hiredis' reply queue: freed when its reply (or the connection's end) comes. */
    r->cancelled = true;
}
