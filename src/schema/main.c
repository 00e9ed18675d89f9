/*
 * jimbot-schema-check: fails when today's schemas would break readers or
 * writers of the committed baseline (`make schema-check`).
 *
 * Thin by design: arguments, loading the two descriptor sets, printing. The
 * rules live in compat.c. Output: one line per break on stderr
 * ("proto/jimbot/x.proto: jimbot.HandPlayed: field 5 'chips': type changed
 * from double to float"), then a summary line. Exit status: 0 compatible,
 * 1 breaking changes found, 2 bad usage or unreadable input.
 */
#include "schema/compat.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: jimbot-schema-check [--prefix DIR] BASELINE CURRENT\n"
                 "\n"
                 "Compares two descriptor sets made by `protoc --descriptor_set_out` and reports\n"
                 "every change in CURRENT that breaks old readers or writers of BASELINE (removed\n"
                 "or renumbered fields, changed types or labels, renames, removed enum values,\n"
                 "messages, services or methods...). See docs/schema-evolution.md.\n"
                 "\n"
                 "Options:\n"
                 "  --prefix DIR   put DIR before file names in reports (default \"proto/\")\n"
                 "  -h, --help     show this help\n"
                 "\n"
                 "Exit status: 0 compatible, 1 breaking changes, 2 bad usage or input.\n");
}

static void print_break(const jb_schema_break *brk, void *userdata)
{
    if (brk->scope != NULL) {
        fprintf(stderr, "%s: %s: %s\n", brk->file, brk->scope, brk->detail);
    } else {
        fprintf(stderr, "%s: %s\n", brk->file, brk->detail);
    }
}

int main(int argc, char **argv)
{
    const char *prefix = "proto/";
    const char *paths[2];
    int npaths = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc) {
            prefix = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "jimbot-schema-check: unknown option '%s' (see --help)\n", argv[i]);
            return 2;
        } else if (npaths < 2) {
            paths[npaths++] = argv[i];
        } else {
            fprintf(stderr, "jimbot-schema-check: too many arguments (see --help)\n");
            return 2;
        }
    }
    if (npaths != 2) {
        usage(stderr);
        return 2;
    }

    jb_schema_set *sets[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        jb_error err;
        if (jb_schema_set_load(paths[i], &sets[i], &err) != JB_OK) {
            fprintf(stderr, "jimbot-schema-check: %s\n", err.message);
            jb_schema_set_free(sets[0]);
            return 2;
        }
    }

    jb_schema_stats stats;
    jb_status st = jb_schema_compare(sets[0], sets[1], prefix, print_break, NULL, &stats);
    jb_schema_set_free(sets[0]);
    jb_schema_set_free(sets[1]);
    if (st == JB_OK) {
        printf("schema-check: %zu files, %zu messages compared: compatible\n", stats.files,
               stats.messages);
        return 0;
    }
    if (st != JB_EINCOMPATIBLE) {
        fprintf(stderr, "jimbot-schema-check: %s\n", jb_strerror(st));
        return 2;
    }
    fprintf(stderr,
            "schema-check: %zu breaking change%s (%zu files, %zu messages compared); if this is "
            "on purpose, accept it with `make schema-baseline` (see docs/schema-evolution.md)\n",
            stats.breaks, stats.breaks == 1 ? "" : "s", stats.files, stats.messages);
    return 1;
}
