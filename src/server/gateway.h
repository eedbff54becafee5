/*
 * The gateway process: loads the config, compiles the first snapshot, binds listeners, starts
 * the workers and the admin listener, and on the main thread handles signals: SIGHUP reloads
 * (a bad file is rejected and the old config stays), SIGTERM/SIGINT drain (stop accepting,
 * finish in-flight requests within timeouts.drain, then exit). Everything else happens in the
 * workers.
 */
#ifndef SL_SERVER_GATEWAY_H
#define SL_SERVER_GATEWAY_H

/** Runs the gateway on `config_path` until it is told to stop. Returns the process exit code:
 *  0 after a clean drain, 1 when the config or a listener could not be set up (the reason was
 *  printed on stderr). */
int sl_gateway_run(const char *config_path);

typedef struct sl_gateway_opts {
    const char *config_path;
    /* `sluice run --handoff PATH`: take the listeners of the gateway serving PATH if there is
     * one (an upgrade: it drains once this one is ready), then serve PATH for the next one
     * (net/handoff.h; SIGUSR2 starts it). NULL: neither. */
    const char *handoff_path;
} sl_gateway_opts_t;

/** sl_gateway_run with options. */
int sl_gateway_run_opts(const sl_gateway_opts_t *o);

/** Loads and compiles `config_path` without starting anything: prints every error as
 *  file:line:col: message on stderr, or a one-line summary on stdout. Returns 0 or 1. */
int sl_gateway_check(const char *config_path);

#endif
