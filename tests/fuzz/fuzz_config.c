/*
 * libFuzzer harness for the configuration loader.
 *
 * The input is one or two YAML layers: the bytes before the first NUL are
 * the base file, the bytes after it (if any) the environment file. Both go
 * through the whole loader (libyaml adapter, validation, substitutions,
 * merge); a valid result is then printed, walked, and compared with the
 * defaults the way a reload would, so that every path a file can reach runs
 * under ASan and UBSan. Errors are expected and formatted; crashes, leaks
 * and hangs are the findings.
 *
 * Built two ways (tests/fuzz/CMakeLists.txt): with clang and -fsanitize=fuzzer
 * for `make fuzz`, and with replay.c as a plain program that `make test` runs
 * over corpus/config/.
 */
#include "config/internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int walk_entry(const jb_config_entry *e, void *userdata)
{
    size_t *total = userdata;
    *total += strlen(e->key) + strlen(e->value) + strlen(e->source);
    return 0;
}

static void exercise(jb_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out != NULL) {
        jb_config_dump(cfg, out);
        fclose(out);
    }
    free(text);
    size_t total = 0;
    jb_config_foreach(cfg, walk_entry, &total);

    const jb_config_schema *s = cfg->schema;
    for (size_t i = 0; i < s->count; i++) {
        const char *k = s->keys[i].path;
        switch (s->keys[i].type) {
        case JB_CONFIG_INT:
            (void)jb_config_get_int(cfg, k, "training", "fuzz");
            break;
        case JB_CONFIG_FLOAT:
            (void)jb_config_get_double(cfg, k, "training", "fuzz");
            break;
        case JB_CONFIG_BOOL:
            (void)jb_config_get_bool(cfg, k, "training", "fuzz");
            break;
        case JB_CONFIG_STRING:
        case JB_CONFIG_ENUM:
            (void)jb_config_get_string(cfg, k, "training", "fuzz");
            break;
        case JB_CONFIG_STRLIST:
            (void)jb_config_get_strlist(cfg, k, "training", "fuzz", NULL);
            break;
        case JB_CONFIG_MAP: {
            const jb_config_map *m = jb_config_get_map(cfg, k, "training", "fuzz");
            for (size_t e = 0; e < jb_config_map_count(m); e++)
                (void)jb_config_map_name(m, e);
            break;
        }
        }
    }

    /* A reload from the defaults to this file. */
    jb_config *defaults = NULL;
    jb__layer empty = {"empty.yaml", NULL, "", 0};
    if (jb__config_build(s, &empty, 1, &defaults, NULL) == JB_OK) {
        char **changed = NULL, **pending = NULL;
        size_t nc = 0, np = 0;
        if (jb__config_diff(defaults, cfg, &changed, &nc, &pending, &np) == JB_OK) {
            jb__strv_free(changed);
            jb__strv_free(pending);
        }
        jb_config_unref(defaults);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    const char *nul = memchr(buf, '\0', size);
    jb__layer layers[2] = {
        {"base.yaml", "/nonexistent-jb-fuzz", buf, nul != NULL ? (size_t)(nul - buf) : size},
        {"env.yaml", "/nonexistent-jb-fuzz", nul != NULL ? nul + 1 : "",
         nul != NULL ? size - (size_t)(nul - buf) - 1 : 0},
    };
    jb_config_errors *errs = jb_config_errors_new();
    jb_config *cfg = NULL;
    jb_status st =
        jb__config_build(jb_config_schema_builtin(), layers, nul != NULL ? 2 : 1, &cfg, errs);
    char line[1024];
    for (size_t i = 0; i < jb_config_errors_count(errs); i++)
        jb_config_errors_format(errs, i, line, sizeof(line));
    if (st == JB_OK)
        exercise(cfg);
    jb_config_unref(cfg);
    jb_config_errors_free(errs);
    return 0;
}
