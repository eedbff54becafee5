/*
 * Process wiring. The main thread owns the config file, snapshots, signals and the admin
 * listener; it talks to workers only by publishing a snapshot pointer or a command and waking
 * them (uv_async), so workers never wait on the main thread.
 */
#include "server/gateway.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/close_range.h>
#include <unistd.h>

#include <uv.h>

#include "admin/admin.h"
#include "filters/filters.h"
#include "store/gcra.h"
#include "store/store.h"
#include "filters/jwks_store.h"
#include "http1/client.h"
#include "admin/doctor.h"
#include "admin/routes_view.h"
#include "admin/stats.h"
#include "admin/views.h"
#include "common/time.h"
#include "config/document.h"
#include "metrics/summary.h"
#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "config/config.h"
#include "http1/parser.h"
#include "http1/server.h"
#include "metrics/metrics.h"
#include "net/handoff.h"
#include "net/worker.h"
#include "pipeline/pipeline.h"
#include "pipeline/snapshot.h"
#include "router/router.h"
#include "upstream/health.h"
#include "upstream/proxy.h"

enum worker_cmd {
    CMD_NONE = 0,
    CMD_DRAIN = 1 << 0,
    CMD_CLOSE_ALL = 1 << 1,
    CMD_STOP_LISTENING = 1 << 2, /* a successor took the sockets over: accept no more, drain later */
};

/* After a handoff the old process stops accepting at once but starts draining only this much
 * later: a connection it accepted just before has time to send its first request, which then
 * completes, instead of being closed as idle (its client would see a reset new connection). */
#define UPGRADE_DRAIN_GRACE_MS 1000

typedef struct worker_slot {
    sl_worker_t w;
    _Atomic(sl_snapshot_t *) pending; /* a new snapshot for this worker, owned reference */
    atomic_int cmds;
    struct gateway *gw;
    bool draining;
    bool store_started;         /* worker thread only */
    sl_store_worker_t *store_w; /* this worker's Redis connection (cluster mode); worker thread only */
} worker_slot_t;

typedef struct gateway {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_async_t worker_exited;
    uv_timer_t drain_timer;
    uv_timer_t dns_timer;    /* re-resolves host-name targets of the current snapshot */
    uv_timer_t doctor_timer; /* samples the counters for the doctor every SL_DOCTOR_TICK_MS */
    sl_doctor_t *doctor;
    const char *config_path;
    sl_snapshot_t *current;
    uint64_t generation;
    worker_slot_t *slots;
    size_t nworkers;
    atomic_size_t exited;
    sl_admin_t *admin;
    sl_metrics_t *metrics;
    sl_health_t *health;   /* active health checks; NULL once stopped */
    sl_jwks_store_t *jwks; /* key sets of the jwt issuers; NULL once stopped */
    /* Rate-limit state of every snapshot, sized by the first config's stores.local.max_keys
     * (a later change needs a restart); freed after the workers joined. */
    sl_gcra_table_t *rate_table;
    /* The Redis store (stores.redis of the first config; a later change needs a restart), and
     * a copy of the conf it was made from, to warn on reload. Destroyed after the workers. */
    sl_store_t *store;
    sl_redis_store_conf_t store_conf;
    char *store_strs; /* owns store_conf's address and key_prefix */
    bool draining;
    char *config_text; /* what `current` was built from (the admin API edits a copy of it) */
    size_t config_len;
    json_t *last_reload; /* {result, time[, errors]} of the last reload attempt; NULL before one */
    uint64_t started_ms;
    /* Upgrades (net/handoff.h): the socket a successor takes the listeners from. */
    const char *handoff_path;     /* --handoff; NULL: no upgrades */
    sl_handoff_server_t *handoff; /* NULL when not serving it (none, draining, handed over) */
    uv_signal_t sigusr2;          /* starts a successor: this binary's path, the same arguments */
    uv_timer_t grace_timer;       /* handed over: drain after UPGRADE_DRAIN_GRACE_MS */
    uv_signal_t sigchld;          /* watches the successor until it is ready or gone */
    pid_t successor_pid;          /* > 0 while a successor of ours may still fail */
    char exe[4096];
} gateway_t;

/* ---- building snapshots ------------------------------------------------------------------ */

/* The Redis store (stores.redis) of the config a gateway starts with; its local fallback is the
 * rate table. An address that does not resolve is a config error: the start fails. */
static int create_store(const sl_config_t *cfg, sl_gcra_table_t *rate_table, sl_store_t **store,
                        sl_config_errors_t *errs)
{
    const sl_redis_store_conf_t *r = &cfg->stores.redis;
    sl_store_conf_t sc = {.address = r->address.ptr,
                          .on_failure = r->on_failure == 2 ? SL_STORE_DENY : SL_STORE_ALLOW,
                          .connect_timeout_ms = r->connect_timeout_ms,
                          .command_timeout_ms = r->command_timeout_ms,
                          .slice = r->slice,
                          .key_prefix = r->key_prefix.ptr,
                          .fallback = rate_table,
                          .fallback_clock_ns = SL_FILTERS_RATE_TABLE_CLOCK_BIAS};
    int err = sl_store_create(&sc, store);
    if (err != 0)
        sl_config_errors_add(errs, cfg->path, r->pos.line, r->pos.col, "stores.redis: address %s: %s", r->address.ptr,
                             err == SL_ENOTFOUND ? "cannot resolve the host name" : sl_strerror(err));
    return err;
}

/* Builds a snapshot from config text (`name` is the file name in errors). `prev`: the snapshot
 * being replaced (NULL at start), whose unchanged upstreams' runtime state the new one shares
 * (sl_proxy_attach). `*rate_table` NULL: created from this config's stores.local.max_keys (the
 * caller owns it). `store` (NULL for `sluice check`): at start (`prev` NULL) the Redis store is
 * created into it when the config has stores.redis; routes decide their limits in it when their
 * config has stores.redis too. On failure, `errs` says why and nothing was built. */
static int build_snapshot(const char *name, const char *text, size_t len, uv_loop_t *loop, sl_metrics_t *metrics,
                          sl_jwks_store_t *jwks, sl_gcra_table_t **rate_table, sl_store_t **store, uint64_t generation,
                          const sl_snapshot_t *prev, sl_config_errors_t *errs, sl_snapshot_t **out)
{
    sl_config_t *cfg = NULL;
    int err = sl_config_load_buffer(name, text, len, &cfg, errs);
    sl_router_t *router = NULL;
    if (err == 0)
        err = sl_router_create(cfg, &router, errs);
    if (err != 0) {
        sl_config_unref(cfg);
        return err;
    }
    cfg->generation = generation;
    if (*rate_table == NULL)
        SL_BUG_ON(sl_gcra_table_create(cfg->stores.local_max_keys, rate_table) != 0); /* range checked by config */
    if (store != NULL && *store == NULL && prev == NULL && cfg->stores.redis.enabled &&
        create_store(cfg, *rate_table, store, errs) != 0) {
        sl_router_destroy(router);
        sl_config_unref(cfg);
        return SL_ECONFIG;
    }
    sl_snapshot_t *snap = sl_snapshot_create(cfg, router);
    sl_filters_env_t env = {
        .jwks = jwks, .fetcher = &sl_h1_fetcher, .rate_table = *rate_table, .store = store ? *store : NULL};
    err = sl_filters_attach(snap, &env, errs);
    /* Last, as it changes shared state: the key store then serves the new issuers. */
    if (err == 0 && jwks != NULL)
        err = sl_jwks_store_apply(jwks, cfg, errs);
    if (err != 0) {
        sl_snapshot_unref(snap);
        return err;
    }
    if (metrics != NULL && sl_metrics_schema_create(metrics, cfg, &snap->metrics) != 0)
        snap->metrics = NULL; /* counted nowhere rather than refused: the config itself is fine */
    sl_proxy_attach(snap, loop, prev);
    *out = snap;
    return 0;
}

/* Reads `path` for build_snapshot; an unreadable file is one error naming it. */
static int read_config(const char *path, char **text, size_t *len, sl_config_errors_t *errs)
{
    int err = sl_config_read_file(path, text, len);
    if (err != 0)
        sl_config_errors_add(errs, sl_str_from_cstr(path), 0, 0, "cannot read %s: %s", path, sl_strerror(err));
    return err;
}

static void print_errors(const char *path, int err, sl_config_errors_t *errs)
{
    sl_config_errors_print(errs, stderr);
    if (errs->count == 0)
        fprintf(stderr, "%s: %s\n", path, sl_strerror(err));
}

int sl_gateway_check(const char *config_path)
{
    sl_h1_register_errors();
    sl_h1_fetch_register_errors();
    sl_config_errors_t errs = {0};
    char *text = NULL;
    size_t len = 0;
    sl_snapshot_t *snap = NULL;
    sl_gcra_table_t *rate_table = NULL; /* a check builds routes with limits like a start */
    int err = read_config(config_path, &text, &len, &errs);
    if (err == 0) {
        /* A key store on a scratch loop reads the issuers' files and variables like a start
         * would; its first jwks_url fetches are cancelled unrun. */
        uv_loop_t scratch;
        uv_loop_init(&scratch);
        sl_jwks_store_t *jwks = NULL;
        sl_jwks_store_create(&scratch, &sl_h1_fetcher, &jwks);
        err = build_snapshot(config_path, text, len, NULL, NULL, jwks, &rate_table, NULL, 1, NULL, &errs, &snap);
        sl_jwks_store_stop(jwks, NULL, NULL);
        uv_run(&scratch, UV_RUN_DEFAULT);
        uv_loop_close(&scratch);
    }
    free(text);
    if (err != 0) {
        print_errors(config_path, err, &errs);
        sl_config_errors_dispose(&errs);
        sl_gcra_table_destroy(rate_table);
        return 1;
    }
    sl_config_errors_dispose(&errs);
    const sl_config_t *c = snap->cfg;
    printf("%s: ok: %zu listener%s, %zu upstream%s, %zu route%s, %u worker%s\n", config_path, c->nlistens,
           c->nlistens == 1 ? "" : "s", c->nupstreams, c->nupstreams == 1 ? "" : "s", c->nroutes,
           c->nroutes == 1 ? "" : "s", c->workers, c->workers == 1 ? "" : "s");
    sl_snapshot_unref(snap);
    sl_gcra_table_destroy(rate_table);
    return 0;
}

/* ---- worker side --------------------------------------------------------------------------- */

static void worker_on_empty(sl_worker_t *w)
{
    worker_slot_t *slot = SL_CONTAINER_OF(w, worker_slot_t, w);
    if (slot->store_w != NULL) { /* no exchange is left to wait on it; it closes as the loop runs on */
        sl_filters_set_thread_store(NULL);
        sl_store_worker_stop(slot->store_w);
        slot->store_w = NULL;
    }
    sl_upstream_worker_close_idle(w);
    sl_worker_close(w);
    (void)slot;
}

static void worker_on_wakeup(sl_worker_t *w)
{
    worker_slot_t *slot = SL_CONTAINER_OF(w, worker_slot_t, w);
    /* The first wakeup is sent right after the thread starts: the async's fd is ready at the
     * loop's first poll, before any accepted connection can have been read. */
    if (!slot->store_started) {
        slot->store_started = true;
        if (slot->gw->store != NULL && !slot->draining) {
            if (sl_store_worker_start(slot->gw->store, &w->loop, &slot->store_w) == 0)
                sl_filters_set_thread_store(slot->store_w);
            else
                sl_log_error("worker %u: cannot start its redis connection; its limits are per node", w->id);
        }
    }
    sl_snapshot_t *snap = atomic_exchange(&slot->pending, NULL);
    if (snap != NULL) {
        sl_snapshot_t *old = w->snap;
        w->snap = snap;
        sl_snapshot_unref(old);
    }
    int cmds = atomic_exchange(&slot->cmds, 0);
    if (cmds & CMD_STOP_LISTENING)
        sl_worker_stop_listening(w);
    if ((cmds & CMD_DRAIN) && !slot->draining) {
        slot->draining = true;
        sl_worker_stop_listening(w);
        sl_upstream_worker_close_idle(w);
        sl_h1_server_drain(w, worker_on_empty);
    }
    if (cmds & CMD_CLOSE_ALL)
        sl_h1_server_close_all(w);
}

static void worker_thread_exit_notify(gateway_t *gw)
{
    atomic_fetch_add(&gw->exited, 1);
    uv_async_send(&gw->worker_exited);
}

/* Runs in the worker thread after its loop ended. */
static void worker_main_done(sl_worker_t *w)
{
    worker_slot_t *slot = SL_CONTAINER_OF(w, worker_slot_t, w);
    sl_filters_thread_exit();
    worker_thread_exit_notify(slot->gw);
}

/* ---- main thread ----------------------------------------------------------------------- */

static void publish(gateway_t *gw, sl_snapshot_t *snap)
{
    sl_snapshot_t *old = gw->current;
    gw->current = snap;
    for (size_t i = 0; i < gw->nworkers; i++) {
        sl_snapshot_t *prev = atomic_exchange(&gw->slots[i].pending, sl_snapshot_ref(snap));
        sl_snapshot_unref(prev);
        sl_worker_wakeup(&gw->slots[i].w);
    }
    sl_snapshot_unref(old);
}

static void note_reload(gateway_t *gw, bool ok, const sl_config_errors_t *errs)
{
    sl_metrics_reload_result(gw->metrics, ok);
    json_decref(gw->last_reload);
    char when[40];
    sl_time_format_iso8601(when, sizeof(when), sl_time_wall_ms());
    gw->last_reload = json_pack("{s:s, s:s}", "result", ok ? "ok" : "failed", "time", when);
    if (!ok && errs != NULL)
        json_object_set_new(gw->last_reload, "errors", sl_admin_errors_json(errs));
}

/* stores.redis is read at start: a reload that changes it keeps the running store. */
static void store_reload_note(gateway_t *gw, const sl_config_t *cfg)
{
    const sl_redis_store_conf_t *a = &gw->store_conf, *b = &cfg->stores.redis;
    if (!b->enabled) {
        if (gw->store != NULL && gw->current->cfg->stores.redis.enabled)
            sl_log_warn("reload: stores.redis removed; rate limits and quotas are per node from now on (a reload "
                        "that restores it resumes cluster limits)");
        return;
    }
    if (gw->store == NULL) {
        sl_log_warn("reload: stores.redis needs a restart; rate limits and quotas stay per node until then");
        return;
    }
    if (!sl_str_eq(a->address, b->address) || a->on_failure != b->on_failure ||
        a->connect_timeout_ms != b->connect_timeout_ms || a->command_timeout_ms != b->command_timeout_ms ||
        a->slice != b->slice || !sl_str_eq(a->key_prefix, b->key_prefix))
        sl_log_warn("reload: stores.redis changes need a restart; the running store (redis at %s) stays",
                    sl_store_address(gw->store));
}

/* Makes `snap` (built from `text`, which the gateway takes) the running generation. */
static void commit(gateway_t *gw, sl_snapshot_t *snap, char *text, size_t len)
{
    const sl_config_t *old = gw->current->cfg, *cfg = snap->cfg;
    bool same_listen = old->nlistens == cfg->nlistens;
    for (size_t i = 0; same_listen && i < cfg->nlistens; i++)
        same_listen = sl_str_eq(old->listens[i].address, cfg->listens[i].address);
    if (!same_listen)
        sl_log_warn("reload: listener changes need a restart; the old listeners stay");
    if (!sl_str_eq(old->admin.address, cfg->admin.address) || !sl_str_eq(old->admin.token_env, cfg->admin.token_env))
        sl_log_warn("reload: admin listener changes need a restart; the old admin listener stays");
    store_reload_note(gw, cfg);
    gw->generation++;
    note_reload(gw, true, NULL);
    sl_log_set_level((enum sl_log_level)cfg->logging.level);
    if (!sl_str_eq(old->logging.access_path, cfg->logging.access_path))
        sl_accesslog_open(cfg->logging.access_path);
    /* Health: before publishing, so the new states carry the known health from the start. */
    if (gw->health != NULL)
        sl_health_apply(gw->health, snap);
    publish(gw, snap);
    free(gw->config_text);
    gw->config_text = text;
    gw->config_len = len;
    sl_log_info("config reloaded: generation %llu", (unsigned long long)gw->generation);
}

/* Re-reads the config file (SIGHUP, `sluice reload`, POST /reload). */
static int reload(gateway_t *gw, sl_config_errors_t *errs)
{
    char *text = NULL;
    size_t len = 0;
    sl_snapshot_t *snap = NULL;
    int err = read_config(gw->config_path, &text, &len, errs);
    if (err == 0)
        err = build_snapshot(gw->config_path, text, len, &gw->loop, gw->metrics, gw->jwks, &gw->rate_table, &gw->store,
                             gw->generation + 1, gw->current, errs, &snap);
    if (err != 0) {
        free(text);
        note_reload(gw, false, errs);
        sl_log_error("reload of %s failed; the running config (generation %llu) stays", gw->config_path,
                     (unsigned long long)gw->generation);
        return err;
    }
    commit(gw, snap, text, len);
    return 0;
}

static void reload_on_signal(gateway_t *gw)
{
    sl_config_errors_t errs = {0};
    int err = reload(gw, &errs);
    if (err != 0)
        print_errors(gw->config_path, err, &errs);
    sl_config_errors_dispose(&errs);
}

/* ---- admin hooks --------------------------------------------------------------------------- */

static const char *hook_config_text(void *ctx, size_t *len)
{
    gateway_t *gw = ctx;
    *len = gw->config_len;
    return gw->config_text;
}

/* A change through the admin API: validated like the file, persisted, then published; a
 * failure at any step changes nothing. */
static int hook_apply(void *ctx, const char *text, size_t len, sl_config_errors_t *errs, uint64_t *generation)
{
    gateway_t *gw = ctx;
    sl_snapshot_t *snap = NULL;
    int err = build_snapshot("<admin>", text, len, &gw->loop, gw->metrics, gw->jwks, &gw->rate_table, &gw->store,
                             gw->generation + 1, gw->current, errs, &snap);
    if (err != 0)
        return err;
    err = sl_admin_write_file_atomic(gw->config_path, text, len);
    if (err != 0) {
        sl_log_error("admin: cannot write %s: %s; the change was not applied", gw->config_path, sl_strerror(err));
        sl_snapshot_unref(snap);
        /* The key store took the new issuers at build: give it back the running ones. */
        sl_config_errors_t ignored = {0};
        sl_jwks_store_apply(gw->jwks, gw->current->cfg, &ignored);
        sl_config_errors_dispose(&ignored);
        return err;
    }
    char *copy = sl_xmalloc(len + 1);
    memcpy(copy, text, len);
    copy[len] = '\0';
    commit(gw, snap, copy, len);
    sl_log_info("admin: config changed through the API and written to %s", gw->config_path);
    *generation = gw->generation;
    return 0;
}

static int hook_reload(void *ctx, sl_config_errors_t *errs, uint64_t *generation)
{
    gateway_t *gw = ctx;
    int err = reload(gw, errs);
    if (err == 0)
        *generation = gw->generation;
    else if (errs->count == 0)
        sl_config_errors_add(errs, sl_str_from_cstr(gw->config_path), 0, 0, "%s", sl_strerror(err));
    return err;
}

static json_t *hook_status(void *ctx)
{
    gateway_t *gw = ctx;
    const sl_config_t *cfg = gw->current->cfg;
    sl_metrics_summary_t sum;
    sl_metrics_summary(gw->metrics, &sum);
    uint64_t now = sl_time_wall_ms();
    char started[40];
    sl_time_format_iso8601(started, sizeof(started), gw->started_ms);
    json_t *ups = json_array();
    for (size_t i = 0; i < cfg->nupstreams; i++)
        json_array_append_new(ups, json_stringn(cfg->upstreams[i].name.ptr, cfg->upstreams[i].name.len));
    json_t *config = json_pack("{s:s, s:I}", "path", gw->config_path, "generation", (json_int_t)gw->generation);
    json_object_set(config, "last_reload", gw->last_reload ? gw->last_reload : json_null());
    json_t *conns = json_pack(
        "{s:I, s:I, s:I, s:I}", "active", (json_int_t)sum.connections_active, "idle", (json_int_t)sum.connections_idle,
        "accepted_total", (json_int_t)sum.connections_accepted_total, "max", (json_int_t)cfg->limits.max_connections);
    json_t *j =
        json_pack("{s:s, s:i, s:s, s:I, s:I, s:o, s:o, s:I, s:I, s:o}", "version", SLUICE_VERSION, "pid", (int)getpid(),
                  "started", started, "uptime_seconds", (json_int_t)((now - gw->started_ms) / 1000), "workers",
                  (json_int_t)gw->nworkers, "config", config, "connections", conns, "requests_total",
                  (json_int_t)sum.requests_total, "routes", (json_int_t)cfg->nroutes, "upstreams", ups);
    return j;
}

static json_t *hook_routes_table(void *ctx)
{
    gateway_t *gw = ctx;
    return sl_admin_routes_table(gw->current);
}

static void doctor_window(void *arg, size_t upstream_index, size_t target_index, uint64_t *requests, uint64_t *errors)
{
    gateway_t *gw = arg;
    if (gw->doctor != NULL)
        sl_doctor_target_window(gw->doctor, gw->current, upstream_index, target_index, 60, requests, errors);
}

static json_t *hook_upstream_health(void *ctx, const char *name)
{
    gateway_t *gw = ctx;
    long i = sl_config_find_upstream(gw->current->cfg, sl_str_from_cstr(name));
    if (i < 0)
        return NULL;
    return sl_admin_upstream_health(gw->current, (size_t)i, gw->health, doctor_window, gw);
}

static void on_drain_deadline(uv_timer_t *t)
{
    gateway_t *gw = t->data;
    sl_log_warn("drain: deadline reached; closing the remaining connections");
    for (size_t i = 0; i < gw->nworkers; i++) {
        atomic_fetch_or(&gw->slots[i].cmds, CMD_CLOSE_ALL);
        sl_worker_wakeup(&gw->slots[i].w);
    }
}

static void start_drain(gateway_t *gw)
{
    if (gw->draining)
        return;
    gw->draining = true;
    sl_handoff_server_stop(gw->handoff); /* a draining process has nothing left to hand over */
    gw->handoff = NULL;
    sl_log_info("draining: no new connections; waiting up to %llums for in-flight requests",
                (unsigned long long)gw->current->cfg->timeouts.drain_ms);
    if (gw->admin)
        sl_admin_set_ready(gw->admin, false);
    for (size_t i = 0; i < gw->nworkers; i++) {
        atomic_fetch_or(&gw->slots[i].cmds, CMD_DRAIN);
        sl_worker_wakeup(&gw->slots[i].w);
    }
    uv_timer_start(&gw->drain_timer, on_drain_deadline, gw->current->cfg->timeouts.drain_ms, 0);
}

static void on_grace_over(uv_timer_t *t)
{
    start_drain(t->data);
}

/* The old process's side of an upgrade: a successor accepts on our sockets now. */
static void on_handed_over(void *ctx, pid_t pid, size_t adopted, size_t total)
{
    gateway_t *gw = ctx;
    gw->handoff = NULL; /* it stops itself */
    sl_log_info("upgrade: process %d took over %zu of %zu listening socket%s; draining", (int)pid, adopted, total,
                total == 1 ? "" : "s");
    int err = sl_handoff_notify(pid, false); /* systemd follows the successor */
    if (err != 0)
        sl_log_warn("cannot notify the service manager ($NOTIFY_SOCKET): %s", strerror(-err));
    if (gw->admin != NULL) { /* frees the admin address for the successor, which binds it after DONE */
        sl_admin_stop(gw->admin);
        gw->admin = NULL;
    }
    for (size_t i = 0; i < gw->nworkers; i++) {
        atomic_fetch_or(&gw->slots[i].cmds, CMD_STOP_LISTENING);
        sl_worker_wakeup(&gw->slots[i].w);
    }
    uv_timer_start(&gw->grace_timer, on_grace_over, UPGRADE_DRAIN_GRACE_MS, 0);
}

/* SIGCHLD: the successor ended. After a handoff that is its own business (it is not our
 * child for long: we exit), before one it means the upgrade failed. */
static void on_sigchld(uv_signal_t *h, int signum)
{
    gateway_t *gw = h->data;
    int status = 0;
    if (gw->successor_pid <= 0 || waitpid(gw->successor_pid, &status, WNOHANG) != gw->successor_pid)
        return;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        sl_log_warn("upgrade: the new process %d %s %d%s", (int)gw->successor_pid,
                    WIFEXITED(status) ? "exited with status" : "was killed by signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                    gw->draining ? "" : "; this one keeps serving");
    gw->successor_pid = 0;
    uv_signal_stop(h);
}

/* SIGUSR2: starts this binary's file (a new version once it was replaced) as the successor; it
 * takes the listeners over the handoff socket and this process drains when it is ready.
 * posix_spawn rather than uv_spawn: no helper pipe, and nothing runs in the child before exec. */
static void spawn_successor(gateway_t *gw)
{
    if (gw->handoff == NULL || gw->successor_pid > 0) {
        sl_log_warn("SIGUSR2: no upgrade started: %s", gw->handoff_path == NULL ? "it needs 'sluice run --handoff PATH'"
                                                       : gw->draining           ? "this process is draining"
                                                       : gw->successor_pid > 0  ? "a new process is starting already"
                                                                                : "the handoff socket is not served");
        return;
    }
    /* Only stdio is the successor's: whatever a library opened without O_CLOEXEC (a Redis
     * connection, say) must not outlive us in it. This process never execs anything else. */
    (void)syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
    char *args[] = {gw->exe, "run", "-c", (char *)gw->config_path, "--handoff", (char *)gw->handoff_path, NULL};
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, dflt;
    sigemptyset(&none);
    sigemptyset(&dflt);
    int sigs[] = {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGUSR2, SIGCHLD};
    for (size_t i = 0; i < SL_ARRAY_SIZE(sigs); i++)
        sigaddset(&dflt, sigs[i]);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dflt);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    uv_signal_start(&gw->sigchld, on_sigchld, SIGCHLD); /* before: it may exit at once */
    pid_t pid;
    int err = posix_spawn(&pid, gw->exe, NULL, &attr, args, environ);
    posix_spawnattr_destroy(&attr);
    if (err != 0) {
        uv_signal_stop(&gw->sigchld);
        sl_log_error("SIGUSR2: cannot start %s: %s; this process keeps serving", gw->exe, strerror(err));
        return;
    }
    gw->successor_pid = pid;
    sl_log_info("SIGUSR2: started %s as process %d to take over", gw->exe, (int)pid);
}

static void on_signal(uv_signal_t *s, int signum)
{
    gateway_t *gw = s->data;
    if (signum == SIGHUP)
        reload_on_signal(gw);
    else if (signum == SIGUSR2)
        spawn_successor(gw);
    else
        start_drain(gw);
}

static void on_worker_exited(uv_async_t *a)
{
    gateway_t *gw = a->data;
    if (atomic_load(&gw->exited) < gw->nworkers)
        return;
    uv_close((uv_handle_t *)&gw->sigterm, NULL);
    uv_close((uv_handle_t *)&gw->sigint, NULL);
    uv_close((uv_handle_t *)&gw->sighup, NULL);
    uv_close((uv_handle_t *)&gw->sigusr2, NULL);
    uv_close((uv_handle_t *)&gw->grace_timer, NULL);
    uv_close((uv_handle_t *)&gw->sigchld, NULL);
    uv_close((uv_handle_t *)&gw->worker_exited, NULL);
    uv_timer_stop(&gw->drain_timer);
    uv_close((uv_handle_t *)&gw->drain_timer, NULL);
    uv_close((uv_handle_t *)&gw->dns_timer, NULL);
    uv_close((uv_handle_t *)&gw->doctor_timer, NULL);
    /* Health: probes run until the last worker is gone (draining requests still pick targets);
     * its timers would otherwise keep the main loop alive. */
    if (gw->health != NULL) {
        sl_health_stop(gw->health, NULL, NULL);
        gw->health = NULL;
    }
    if (gw->jwks != NULL) {
        if (gw->doctor != NULL)
            sl_doctor_set_jwks(gw->doctor, NULL);
        sl_jwks_store_stop(gw->jwks, NULL, NULL);
        gw->jwks = NULL;
    }
    if (gw->admin)
        sl_admin_stop(gw->admin);
}

static void on_doctor_timer(uv_timer_t *t)
{
    gateway_t *gw = t->data;
    sl_worker_t *ws[256];
    size_t n = SL_MIN(gw->nworkers, SL_ARRAY_SIZE(ws));
    for (size_t i = 0; i < n; i++)
        ws[i] = &gw->slots[i].w;
    sl_doctor_resources_t res;
    sl_doctor_resources_read(&res, ws, n, gw->current->cfg->limits.max_connections);
    if (gw->store != NULL && gw->current->cfg->stores.redis.enabled) {
        sl_store_health_t h;
        sl_store_health(gw->store, &h);
        res.store_configured = true;
        res.store_up = h.up;
        res.store_deny = gw->store_conf.on_failure == 2;
        res.store_down_since_ms = h.down_since_ms;
        res.store_fallbacks_total = h.fallbacks;
        res.store_refusals_total = h.refusals;
        snprintf(res.store_address, sizeof(res.store_address), "%s", sl_store_address(gw->store));
    }
    sl_doctor_tick(gw->doctor, gw->current, gw->health, &res, sl_time_wall_ms());
}

static json_t *hook_doctor(void *ctx, unsigned window_s)
{
    gateway_t *gw = ctx;
    return sl_doctor_report(gw->doctor, gw->current, window_s);
}

static sl_snapshot_t *hook_current(void *ctx)
{
    return ((gateway_t *)ctx)->current;
}

static json_t *hook_stats(void *ctx)
{
    gateway_t *gw = ctx;
    sl_admin_stats_source_t src = {.snap = gw->current,
                                   .metrics = gw->metrics,
                                   .health = gw->health,
                                   .doctor = gw->doctor,
                                   .config_path = gw->config_path,
                                   .generation = gw->generation,
                                   .last_reload = gw->last_reload,
                                   .started_ms = gw->started_ms,
                                   .now_ms = sl_time_wall_ms(),
                                   .workers = gw->nworkers};
    return sl_admin_stats(&src);
}

static void on_dns_timer(uv_timer_t *t)
{
    gateway_t *gw = t->data;
    sl_proxy_refresh_dns(gw->current, &gw->loop);
}

static int render_metrics(void *ctx, char **out, size_t *len)
{
    gateway_t *gw = ctx;
    sl_metrics_status_source_t status = {.get = sl_doctor_target_status, .ctx = gw->current};
    return sl_metrics_render(gw->metrics, gw->current->metrics, &status, out, len);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            sl_log_warn("cannot raise the open-files limit: %s", strerror(errno));
    }
}

static uint64_t rate_table_full_total(const void *table)
{
    return sl_gcra_table_full_total(table);
}

static void store_figures(const void *store, sl_metrics_store_figures_t *out)
{
    sl_store_health_t h;
    sl_store_health((sl_store_t *)store, &h);
    *out = (sl_metrics_store_figures_t){.up = h.up,
                                        .commands = h.commands,
                                        .failures = h.failures,
                                        .timeouts = h.timeouts,
                                        .fallbacks = h.fallbacks,
                                        .refusals = h.refusals,
                                        .lease_admits = h.lease_admits};
}

/* ---- listeners and upgrades ------------------------------------------------------------- */

/* Each worker's listening sockets and the listen entry each serves. */
typedef struct worker_fds {
    int *fd;
    unsigned *index;
    size_t n;
} worker_fds_t;

static void worker_fds_free(worker_fds_t *wf, size_t nworkers, bool close_fds)
{
    if (wf == NULL)
        return;
    for (size_t i = 0; i < nworkers; i++) {
        for (size_t k = 0; close_fds && k < wf[i].n; k++)
            close(wf[i].fd[k]);
        free(wf[i].fd);
        free(wf[i].index);
    }
    free(wf);
}

/* --handoff PATH at start: takes the listeners of the gateway serving PATH. False (and a line
 * saying why) when there is none or it cannot hand over: this process then binds its own. */
static bool upgrade_fetch(const char *path, sl_handoff_client_t *hc)
{
    char why[512];
    int err = sl_handoff_fetch(path, SL_HANDOFF_TIMEOUT_MS, hc, why, sizeof(why));
    if (err == 0) {
        sl_log_info("upgrade: process %d handed over %zu listening socket%s", (int)hc->peer, hc->nls,
                    hc->nls == 1 ? "" : "s");
        return true;
    }
    if (err == -ENOENT)
        sl_log_info("handoff: no gateway serves %s yet; binding the listeners", path);
    else
        fprintf(stderr, "sluice: cannot take over the listeners: %s; binding them instead\n", why);
    return false;
}

/* Every worker's sockets: with `hc` (an upgrade), worker i adopts the old worker i's socket of
 * each listen address it still has; old sockets of addresses kept but of workers beyond our
 * count are adopted too, spread over our workers, so no accept backlog is lost; what is still
 * missing is bound. Old sockets of addresses no longer configured are left to close with the
 * old process. */
static int worker_fds(gateway_t *gw, const sl_config_t *cfg, sl_handoff_client_t *hc, worker_fds_t **out)
{
    size_t cap = cfg->nlistens + (hc != NULL ? hc->nls : 0) + 1;
    worker_fds_t *wf = sl_xcalloc(gw->nworkers, sizeof(*wf));
    for (size_t i = 0; i < gw->nworkers; i++) {
        wf[i].fd = sl_xcalloc(cap, sizeof(int));
        wf[i].index = sl_xcalloc(cap, sizeof(unsigned));
    }
    for (size_t i = 0; i < gw->nworkers; i++) {
        for (size_t l = 0; l < cfg->nlistens; l++) {
            const struct sockaddr *sa = (const struct sockaddr *)&cfg->listens[l].addr;
            int fd = hc != NULL ? sl_handoff_take(hc, sa, (unsigned)i, false) : -1;
            if (fd < 0) {
                int err = sl_listen_socket(sa, cfg->listens[l].addrlen, 4096, &fd);
                if (err) {
                    fprintf(stderr, "sluice: cannot listen on %.*s: %s\n", SL_STR_FMT(cfg->listens[l].address),
                            sl_strerror(err));
                    worker_fds_free(wf, gw->nworkers, true);
                    return err;
                }
            }
            wf[i].fd[wf[i].n] = fd;
            wf[i].index[wf[i].n++] = (unsigned)l;
        }
    }
    size_t next = 0;
    for (size_t l = 0; hc != NULL && l < cfg->nlistens; l++) {
        int fd;
        while ((fd = sl_handoff_take(hc, (const struct sockaddr *)&cfg->listens[l].addr, 0, true)) >= 0) {
            worker_fds_t *w = &wf[next++ % gw->nworkers];
            w->fd[w->n] = fd;
            w->index[w->n++] = (unsigned)l;
        }
    }
    if (hc != NULL && hc->adopted < hc->nls)
        sl_log_warn("upgrade: %zu of the old process's %zu listening sockets are on addresses no longer configured; "
                    "they close when it stops listening",
                    hc->nls - hc->adopted, hc->nls);
    *out = wf;
    return 0;
}

/* The admin token of `cfg` (NULL: none needed); an error line when admin.token_env names an
 * unset variable. */
static int admin_token(const sl_config_t *cfg, const char **token)
{
    *token = NULL;
    if (cfg->admin.token_env.len == 0)
        return 0;
    const char *t = getenv(cfg->admin.token_env.ptr);
    if (t == NULL || t[0] == '\0') {
        fprintf(stderr, "sluice: admin.token_env names %.*s, which is not set or empty; refusing to start\n",
                SL_STR_FMT(cfg->admin.token_env));
        return SL_ECONFIG;
    }
    *token = t;
    return 0;
}

static int admin_begin(gateway_t *gw, const sl_config_t *cfg)
{
    sl_admin_hooks_t hooks = {.ctx = gw,
                              .render_metrics = render_metrics,
                              .config_text = hook_config_text,
                              .apply = hook_apply,
                              .reload = hook_reload,
                              .status = hook_status,
                              .upstream_health = hook_upstream_health,
                              .routes_table = hook_routes_table,
                              .doctor = hook_doctor,
                              .stats = hook_stats,
                              .current = hook_current};
    const char *token = NULL;
    int err = admin_token(cfg, &token);
    if (err == 0)
        err = sl_admin_start(&gw->loop, (const struct sockaddr *)&cfg->admin.addr, &hooks, token, &gw->admin);
    if (err != 0 && err != SL_ECONFIG)
        fprintf(stderr, "sluice: cannot listen on admin address %.*s: %s\n", SL_STR_FMT(cfg->admin.address),
                sl_strerror(err));
    return err;
}

/* Serves the handoff socket, offering every worker's sockets (still open: the workers listen). */
static void handoff_serve(gateway_t *gw, const worker_fds_t *wf)
{
    size_t n = 0;
    for (size_t i = 0; i < gw->nworkers; i++)
        n += wf[i].n;
    sl_handoff_listener_t *ls = sl_xcalloc(n + 1, sizeof(*ls));
    size_t k = 0;
    for (size_t i = 0; i < gw->nworkers; i++)
        for (size_t j = 0; j < wf[i].n; j++) {
            sl_handoff_listener_t *l = &ls[k];
            l->addrlen = sizeof(l->addr);
            if (getsockname(wf[i].fd[j], (struct sockaddr *)&l->addr, &l->addrlen) != 0)
                continue;
            l->worker = (unsigned)i;
            l->index = wf[i].index[j];
            l->fd = wf[i].fd[j];
            k++;
        }
    int err = sl_handoff_listen(&gw->loop, gw->handoff_path, ls, k, on_handed_over, gw, &gw->handoff);
    free(ls);
    if (err != 0)
        fprintf(stderr, "sluice: cannot serve the handoff socket %s: %s; upgrades are off for this process\n",
                gw->handoff_path,
                err == -EEXIST ? "it exists and is not a socket (is --handoff the right path?)" : strerror(-err));
    else
        sl_log_info("handoff: %s serves upgrades (sluice run --handoff %s, or SIGUSR2)", gw->handoff_path,
                    gw->handoff_path);
}

int sl_gateway_run(const char *config_path)
{
    sl_gateway_opts_t o = {.config_path = config_path};
    return sl_gateway_run_opts(&o);
}

int sl_gateway_run_opts(const sl_gateway_opts_t *o)
{
    const char *config_path = o->config_path;
    sl_h1_register_errors();
    sl_h1_fetch_register_errors();
    gateway_t *gw = sl_xcalloc(1, sizeof(*gw));
    gw->config_path = config_path;
    gw->handoff_path = o->handoff_path;
    size_t exe_len = sizeof(gw->exe);
    if (uv_exepath(gw->exe, &exe_len) != 0)
        snprintf(gw->exe, sizeof(gw->exe), "/proc/self/exe");
    gw->generation = 1;
    uv_loop_init(&gw->loop);
    sl_metrics_create(&gw->metrics);
    SL_BUG_ON(sl_jwks_store_create(&gw->loop, &sl_h1_fetcher, &gw->jwks) != 0);
    gw->started_ms = sl_time_wall_ms();
    int rc = 1;
    {
        sl_config_errors_t errs = {0};
        int err = read_config(config_path, &gw->config_text, &gw->config_len, &errs);
        if (err == 0)
            err = build_snapshot(config_path, gw->config_text, gw->config_len, &gw->loop, gw->metrics, gw->jwks,
                                 &gw->rate_table, &gw->store, gw->generation, NULL, &errs, &gw->current);
        if (err != 0)
            print_errors(config_path, err, &errs);
        sl_config_errors_dispose(&errs);
        if (err != 0)
            goto out_loop;
        sl_metrics_set_rate_limit_source(gw->metrics, rate_table_full_total, gw->rate_table);
        sl_metrics_set_access_log_source(gw->metrics, sl_accesslog_dropped_total);
        if (gw->store != NULL) {
            const sl_redis_store_conf_t *r = &gw->current->cfg->stores.redis;
            size_t al = r->address.len, pl = r->key_prefix.len;
            gw->store_conf = *r;
            gw->store_strs = sl_xmalloc(al + pl + 2);
            memcpy(gw->store_strs, r->address.ptr, al + 1);
            memcpy(gw->store_strs + al + 1, r->key_prefix.ptr, pl + 1);
            gw->store_conf.address = (sl_str_t){gw->store_strs, al};
            gw->store_conf.key_prefix = (sl_str_t){gw->store_strs + al + 1, pl};
            sl_metrics_set_store_source(gw->metrics, store_figures, gw->store);
        }
    }
    const sl_config_t *cfg = gw->current->cfg;
    sl_log_set_level((enum sl_log_level)cfg->logging.level);
    raise_nofile();
    int err = sl_accesslog_open(cfg->logging.access_path);
    if (err) {
        fprintf(stderr, "sluice: cannot open access log %.*s: %s\n", SL_STR_FMT(cfg->logging.access_path),
                sl_strerror(err));
        goto out_snap;
    }

    /* Bind everything before starting anything, so a taken port fails the start cleanly. With
     * --handoff, first take what a running gateway offers (upgrade_listeners). */
    gw->nworkers = cfg->workers ? cfg->workers : 1;
    gw->slots = sl_xcalloc(gw->nworkers, sizeof(*gw->slots));
    sl_handoff_client_t hc = {.fd = -1};
    bool upgrading = o->handoff_path != NULL && upgrade_fetch(o->handoff_path, &hc);
    worker_fds_t *wf = NULL;
    err = worker_fds(gw, cfg, upgrading ? &hc : NULL, &wf);
    if (err != 0) {
        sl_handoff_abort(&hc);
        goto out_slots;
    }
    if (cfg->admin.enabled) {
        /* A successor binds the admin address only after DONE, but checks the token before it
         * says READY: an unset variable fails it while the old one serves. */
        const char *token;
        err = upgrading ? admin_token(cfg, &token) : admin_begin(gw, cfg);
        if (err != 0) {
            sl_handoff_abort(&hc);
            worker_fds_free(wf, gw->nworkers, true);
            goto out_slots;
        }
    }

    uv_signal_init(&gw->loop, &gw->sigterm);
    uv_signal_init(&gw->loop, &gw->sigint);
    uv_signal_init(&gw->loop, &gw->sighup);
    gw->sigterm.data = gw->sigint.data = gw->sighup.data = gw;
    uv_signal_start(&gw->sigterm, on_signal, SIGTERM);
    uv_signal_start(&gw->sigint, on_signal, SIGINT);
    uv_signal_start(&gw->sighup, on_signal, SIGHUP);
    uv_signal_init(&gw->loop, &gw->sigusr2);
    gw->sigusr2.data = gw;
    uv_signal_start(&gw->sigusr2, on_signal, SIGUSR2);
    uv_signal_init(&gw->loop, &gw->sigchld);
    gw->sigchld.data = gw;
    uv_timer_init(&gw->loop, &gw->grace_timer);
    gw->grace_timer.data = gw;
    signal(SIGPIPE, SIG_IGN);
    uv_async_init(&gw->loop, &gw->worker_exited, on_worker_exited);
    gw->worker_exited.data = gw;
    uv_timer_init(&gw->loop, &gw->drain_timer);
    gw->drain_timer.data = gw;
    uv_timer_init(&gw->loop, &gw->dns_timer);
    gw->dns_timer.data = gw;
    uv_timer_start(&gw->dns_timer, on_dns_timer, 1000, 1000);
    sl_doctor_create(gw->metrics, &gw->doctor);
    sl_doctor_set_jwks(gw->doctor, gw->jwks);
    uv_timer_init(&gw->loop, &gw->doctor_timer);
    gw->doctor_timer.data = gw;
    uv_timer_start(&gw->doctor_timer, on_doctor_timer, SL_DOCTOR_TICK_MS, SL_DOCTOR_TICK_MS);
    /* Health: created once everything is bound; the first snapshot applied before workers see it. */
    SL_BUG_ON(sl_health_create(&gw->loop, &gw->health) != 0);
    sl_health_apply(gw->health, gw->current);

    for (size_t i = 0; i < gw->nworkers; i++) {
        worker_slot_t *slot = &gw->slots[i];
        slot->gw = gw;
        sl_worker_t *w = &slot->w;
        err = sl_worker_init_indexed(w, (unsigned)i, wf[i].fd, wf[i].index, wf[i].n);
        SL_BUG_ON(err != 0); /* adopting an fd we just created cannot fail but for OOM */
        w->snap = sl_snapshot_ref(gw->current);
        sl_metrics_worker_create(gw->metrics, &w->metrics);
        w->on_connection = sl_h1_server_accept;
        w->on_wakeup = worker_on_wakeup;
        sl_h1_worker_init(w);
        sl_upstream_worker_init(w);
        w->on_exit = worker_main_done;
        SL_BUG_ON(sl_worker_start(w) != 0);
        if (gw->store != NULL)
            sl_worker_wakeup(w); /* starts its Redis connection (worker_on_wakeup) */
    }
    if (upgrading) {
        pid_t old = hc.peer;
        err = sl_handoff_ready(&hc, SL_HANDOFF_TIMEOUT_MS);
        if (err != 0)
            sl_log_warn("upgrade: process %d did not confirm the handoff (%s); it may still hold the admin address",
                        (int)old, sl_strerror(err));
        else
            sl_log_info("upgrade: serving; process %d drains", (int)old);
        if (cfg->admin.enabled && admin_begin(gw, cfg) != 0)
            sl_log_error("upgrade: running without the admin listener");
    }
    if (o->handoff_path != NULL)
        handoff_serve(gw, wf);
    worker_fds_free(wf, gw->nworkers, false);
    if (gw->admin)
        sl_admin_set_ready(gw->admin, true);
    err = sl_handoff_notify(getpid(), true);
    if (err != 0)
        sl_log_warn("cannot notify the service manager ($NOTIFY_SOCKET): %s", strerror(-err));
    sl_log_info("sluice %s: %zu worker%s, %zu listener%s, %zu route%s (config %s, generation %llu)", SLUICE_VERSION,
                gw->nworkers, gw->nworkers == 1 ? "" : "s", cfg->nlistens, cfg->nlistens == 1 ? "" : "s", cfg->nroutes,
                cfg->nroutes == 1 ? "" : "s", config_path, (unsigned long long)gw->generation);

    uv_run(&gw->loop, UV_RUN_DEFAULT);

    for (size_t i = 0; i < gw->nworkers; i++) {
        sl_worker_t *w = &gw->slots[i].w;
        uv_thread_join(&w->thread);
        sl_snapshot_unref(atomic_exchange(&gw->slots[i].pending, NULL));
        sl_snapshot_unref(w->snap);
        w->snap = NULL;
        sl_h1_worker_dispose(w);
        sl_upstream_worker_dispose(w);
        sl_metrics_worker_destroy(w->metrics);
        w->metrics = NULL;
        if (uv_loop_close(&w->loop) != 0)
            sl_log_warn("worker %zu: loop closed with handles open", i);
        sl_buf_pool_dispose(&w->bufs);
        free(w->listeners);
    }
    sl_log_info("stopped");
    rc = 0;
out_slots:
    free(gw->slots);
out_snap:
    sl_accesslog_close();
    sl_snapshot_unref(gw->current);
out_loop:
    if (gw->jwks != NULL) { /* a start that failed before the loop ran */
        sl_jwks_store_stop(gw->jwks, NULL, NULL);
        gw->jwks = NULL;
        uv_run(&gw->loop, UV_RUN_DEFAULT);
    }
    uv_run(&gw->loop, UV_RUN_NOWAIT);
    uv_loop_close(&gw->loop);
    sl_doctor_destroy(gw->doctor);
    sl_metrics_destroy(gw->metrics);
    sl_store_destroy(gw->store); /* every worker stopped its connection and ended */
    free(gw->store_strs);
    sl_gcra_table_destroy(gw->rate_table); /* every snapshot using it is gone */
    free(gw->config_text);
    json_decref(gw->last_reload);
    free(gw);
    return rc;
}
