/*
 * jimbotctl: the command line for people and scripts.
 *
 * Thin by design: argument parsing and output formatting only; every call
 * goes through the C client library (include/jimbot/client.h) once it
 * exists. Failures print one line on stderr and exit non-zero.
 */
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl [--addr ADDR] COMMAND [ARGS]\n"
                 "\n"
                 "Talks to a running jimbotd (default address 127.0.0.1:50051).\n"
                 "\n"
                 "Commands:\n"
                 "  version            print the version and exit\n"
                 "\n"
                 "Options:\n"
                 "  --addr ADDR        jimbotd's gRPC address (host:port or unix:PATH)\n"
                 "  -h, --help         show this help\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("jimbotctl %s\n", JB_VERSION);
        return 0;
    }
    fprintf(stderr, "jimbotctl: unknown command '%s' (see jimbotctl --help)\n", argv[1]);
    return 2;
}
