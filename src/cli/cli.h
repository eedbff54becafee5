/*
 * The operator commands that talk to a running gateway through its admin API (docs/cli.md):
 * `sluice reload`, `health`, `routes`, `probe UPSTREAM|URL` and `doctor`. src/main.c parses the
 * arguments into sl_cli_opts_t and calls one of these; each prints its answer on stdout (a table
 * or paragraphs, or the API's JSON with --json) and, on failure, one line starting "sluice: " on
 * stderr. They block (a CLI has nothing else to do), each request bounded by opts->timeout_ms.
 *
 * Exit codes (the return values): 0 success; 1 failure (the gateway could not be asked, refused,
 * or answered with a problem: a failed reload, an unreachable probe target, a critical or
 * warning doctor finding); 2 a usage error.
 */
#ifndef SL_CLI_CLI_H
#define SL_CLI_CLI_H

#include <stdbool.h>

typedef struct sl_cli_opts {
    const char *admin;       /* --admin URL, or NULL: from the config, else 127.0.0.1:8001 */
    const char *config_path; /* -c FILE, or NULL: sluice.yaml when present */
    bool json;               /* --json: the API's JSON, pretty-printed */
    int timeout_ms;          /* per request, connect and response each; 0 = 5000 */
    const char *window;      /* doctor --window SECONDS, or NULL: the API's default */
    const char *ca;          /* probe --ca FILE: CA bundle for TLS targets instead of the system store */
    bool insecure;           /* probe --insecure: TLS without verifying the certificate or the name */
} sl_cli_opts_t;

int sl_cli_reload(const sl_cli_opts_t *opts);
int sl_cli_health(const sl_cli_opts_t *opts);
int sl_cli_routes(const sl_cli_opts_t *opts);
/** `what` is an upstream name, or a URL when it contains "://". */
int sl_cli_probe(const sl_cli_opts_t *opts, const char *what);
int sl_cli_doctor(const sl_cli_opts_t *opts);

#endif
