/*
 * The sluice command line. Only argument parsing lives here; `run` and `check` are in the
 * library (src/server) and the commands that talk to a running gateway (reload, health, routes,
 * probe, doctor) in src/cli, so tests link the same code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "server/gateway.h"

static void usage(FILE *fp)
{
    fputs("usage: sluice <command> [options]\n"
          "\n"
          "commands:\n"
          "  run    [-c sluice.yaml]   start in the foreground (SIGHUP reloads, SIGTERM drains, then exits;\n"
          "                            with --handoff, SIGUSR2 starts a successor: a zero-downtime upgrade)\n"
          "  check  [-c sluice.yaml]   validate the config; print file:line:col: message for each error\n"
          "  reload                    ask the running gateway to reload its config file\n"
          "  health                    gateway status, each upstream target's health and circuit state\n"
          "  routes                    the compiled route table, in match order\n"
          "  probe  UPSTREAM|URL       connect + request timings to each target (DNS, connect, TLS, first byte)\n"
          "  doctor [--window SECONDS] ranked findings: which failure cause, where, since when, what to do;\n"
          "                            exits 1 when any finding is critical or a warning\n"
          "  version                   print the version\n"
          "  help                      this text\n"
          "\n"
          "options of run:\n"
          "  --handoff PATH  take over the listening sockets of the gateway serving the Unix socket PATH\n"
          "                  (it drains and exits), then serve PATH for the next one (default: the\n"
          "                  SLUICE_HANDOFF environment variable); see docs/deploy.md\n"
          "\n"
          "options of probe (https:// URLs and upstreams with TLS):\n"
          "  --ca FILE      verify the server's certificate against this PEM CA bundle, not the system's\n"
          "  --insecure     do not verify the certificate or the name (the output says so)\n"
          "\n"
          "options of reload, health, routes, probe and doctor:\n"
          "  --admin URL    the admin API, e.g. http://127.0.0.1:8001 (default: admin.address of the\n"
          "                 config of -c, or of ./sluice.yaml, else 127.0.0.1:8001)\n"
          "  -c FILE        the config to read admin.address from\n"
          "  --json         print the admin API's JSON instead of tables\n"
          "  SLUICE_ADMIN_TOKEN (environment) is sent as the admin API's bearer token\n"
          "\n"
          "exit status: 0 success, 1 failure (or doctor findings), 2 usage error\n",
          fp);
}

static const char *config_arg(int argc, char **argv, int *bad)
{
    const char *path = "sluice.yaml";
    for (int i = 2; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        } else {
            fprintf(stderr, "sluice: unknown option '%s' (see 'sluice help')\n", argv[i]);
            *bad = 1;
        }
    }
    return path;
}

/* An option's value, given as "--name VALUE" or "--name=VALUE"; NULL when argv[*i] is not it. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *bad)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "sluice: option '%s' needs a value (see 'sluice help')\n", name);
        *bad = 1;
        return NULL;
    }
    return argv[++*i];
}

/* Options of the commands that talk to a running gateway; `arg` receives probe's operand. */
static int admin_args(int argc, char **argv, sl_cli_opts_t *o, const char **arg, bool window_ok, bool probe_ok)
{
    int bad = 0;
    const char *v;
    for (int i = 2; i < argc && !bad; i++) {
        if (strcmp(argv[i], "--json") == 0)
            o->json = true;
        else if ((v = opt_value(argc, argv, &i, "--admin", &bad)) != NULL)
            o->admin = v;
        else if ((v = opt_value(argc, argv, &i, "--config", &bad)) != NULL ||
                 (v = opt_value(argc, argv, &i, "-c", &bad)) != NULL)
            o->config_path = v;
        else if (window_ok && (v = opt_value(argc, argv, &i, "--window", &bad)) != NULL)
            o->window = v;
        else if (probe_ok && (v = opt_value(argc, argv, &i, "--ca", &bad)) != NULL)
            o->ca = v;
        else if (probe_ok && strcmp(argv[i], "--insecure") == 0)
            o->insecure = true;
        else if (bad)
            break;
        else if (arg != NULL && *arg == NULL && argv[i][0] != '-')
            *arg = argv[i];
        else {
            fprintf(stderr, "sluice: unknown %s '%s' (see 'sluice help')\n", argv[i][0] == '-' ? "option" : "argument",
                    argv[i]);
            bad = 1;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    int bad = 0;
    if (strcmp(cmd, "run") == 0) {
        sl_gateway_opts_t go = {.config_path = "sluice.yaml"};
        const char *v;
        for (int i = 2; i < argc && !bad; i++) {
            if ((v = opt_value(argc, argv, &i, "--config", &bad)) != NULL ||
                (v = opt_value(argc, argv, &i, "-c", &bad)) != NULL)
                go.config_path = v;
            else if ((v = opt_value(argc, argv, &i, "--handoff", &bad)) != NULL)
                go.handoff_path = v;
            else if (!bad) {
                fprintf(stderr, "sluice: unknown option '%s' (see 'sluice help')\n", argv[i]);
                bad = 1;
            }
        }
        if (!bad && go.handoff_path == NULL)
            go.handoff_path = getenv("SLUICE_HANDOFF"); /* what the systemd unit sets */
        if (!bad && go.handoff_path != NULL && go.handoff_path[0] == '\0') {
            fprintf(stderr, "sluice: --handoff needs a path, e.g. /run/sluice/handoff.sock\n");
            bad = 1;
        }
        return bad ? 2 : sl_gateway_run_opts(&go);
    }
    if (strcmp(cmd, "check") == 0) {
        const char *path = config_arg(argc, argv, &bad);
        return bad ? 2 : sl_gateway_check(path);
    }
    sl_cli_opts_t o = {0};
    if (strcmp(cmd, "reload") == 0)
        return admin_args(argc, argv, &o, NULL, false, false) ? 2 : sl_cli_reload(&o);
    if (strcmp(cmd, "health") == 0)
        return admin_args(argc, argv, &o, NULL, false, false) ? 2 : sl_cli_health(&o);
    if (strcmp(cmd, "routes") == 0)
        return admin_args(argc, argv, &o, NULL, false, false) ? 2 : sl_cli_routes(&o);
    if (strcmp(cmd, "doctor") == 0)
        return admin_args(argc, argv, &o, NULL, true, false) ? 2 : sl_cli_doctor(&o);
    if (strcmp(cmd, "probe") == 0) {
        const char *what = NULL;
        if (admin_args(argc, argv, &o, &what, false, true))
            return 2;
        if (o.ca != NULL && o.insecure) {
            fprintf(stderr, "sluice: --ca and --insecure contradict each other (see 'sluice help')\n");
            return 2;
        }
        if (what == NULL) {
            fprintf(stderr, "sluice: probe needs an upstream name or a URL, e.g. 'sluice probe users' or "
                            "'sluice probe http://127.0.0.1:9001/healthz'\n");
            return 2;
        }
        return sl_cli_probe(&o, what);
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("sluice %s\n", SLUICE_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "sluice: unknown command '%s' (see 'sluice help')\n", cmd);
    return 2;
}
