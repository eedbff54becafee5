/*
 * The sluice command line. Only argument parsing lives here; `run` and `check` are in the
 * library (src/server) so tests link the same code. Commands that talk to a running gateway
 * (reload, health, routes, probe, doctor) arrive with the admin API.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/gateway.h"

static void usage(FILE *fp)
{
    fputs("usage: sluice <command> [options]\n"
          "\n"
          "commands:\n"
          "  run    [-c sluice.yaml]   start in the foreground (SIGHUP reloads, SIGTERM drains, then exits)\n"
          "  check  [-c sluice.yaml]   validate the config; print file:line:col: message for each error\n"
          "  version                   print the version\n"
          "  help                      this text\n",
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    int bad = 0;
    if (strcmp(cmd, "run") == 0) {
        const char *path = config_arg(argc, argv, &bad);
        return bad ? 2 : sl_gateway_run(path);
    }
    if (strcmp(cmd, "check") == 0) {
        const char *path = config_arg(argc, argv, &bad);
        return bad ? 2 : sl_gateway_check(path);
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
