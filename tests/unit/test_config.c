/*
 * Unit tests of src/config/: layering, component and feature levels, every
 * validation rule, maps with names the user chooses (event_bus.aggregation,
 * event_bus.windows), secrets and masking, and hot reload on a real libuv loop
 * with real files in a temporary folder (edits, saves by rename, files that
 * appear later, invalid edits, restart-only keys, bursts of writes).
 *
 * No test asserts a duration: loops run until the expected event happens,
 * with a generous timeout that only keeps a broken build from hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "jimbot/config.h"
#include "jimbot/log.h"

#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

/* ---- Helpers ------------------------------------------------------------- */

typedef struct fixture {
    char dir[64];
    char base[128];
    jb_config_errors *errs;
    jb_config *cfg;
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_config_XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->base, sizeof(f->base), "%s/infrastructure.yaml", f->dir);
    f->errs = jb_config_errors_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    jb_config_unref(f->cfg);
    jb_config_errors_free(f->errs);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void write_file(const fixture *f, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

/* Writes @text to a temporary name, then renames it over @name (how vim saves). */
static void rename_save(const fixture *f, const char *name, const char *text)
{
    char tmp[256], path[256];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", f->dir, name);
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static jb_status load_env(fixture *f, const char *env, const jb_config_schema *schema)
{
    jb_config_unref(f->cfg);
    f->cfg = NULL;
    jb_config_errors_clear(f->errs);
    jb_config_options o = {.path = f->base, .env = env, .schema = schema};
    return jb_config_load(&o, &f->cfg, f->errs, NULL);
}

static jb_status load(fixture *f)
{
    return load_env(f, NULL, NULL);
}

/* The formatted error that contains @needle, or fails the test. */
static const char *find_error(const fixture *f, const char *needle)
{
    static char line[1024];
    for (size_t i = 0; i < jb_config_errors_count(f->errs); i++) {
        jb_config_errors_format(f->errs, i, line, sizeof(line));
        if (strstr(line, needle) != NULL)
            return line;
    }
    for (size_t i = 0; i < jb_config_errors_count(f->errs); i++)
        print_message("  error: %s\n", jb_config_errors_format(f->errs, i, line, sizeof(line)));
    fail_msg("no error contains '%s'", needle);
    return NULL;
}

/* Everything jb_config_dump writes, in a malloc'd string. */
static char *dump(const jb_config *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    jb_config_dump(cfg, fp);
    fclose(fp);
    return buf;
}

#define GET_INT(f, key, c, ft) jb_config_get_int((f)->cfg, key, c, ft)

/* ---- The table and the defaults ------------------------------------------- */

static void test_defaults_from_empty_file(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "# nothing set\n");
    assert_int_equal(load(f), JB_OK);
    assert_int_equal(jb_config_errors_count(f->errs), 0);
    assert_int_equal(GET_INT(f, "event_bus.batch_window_ms", NULL, NULL), 100);
    assert_int_equal(GET_INT(f, "event_bus.max_batch_size", NULL, NULL), 1000);
    assert_int_equal(GET_INT(f, "event_bus.grpc_port", NULL, NULL), 50051);
    assert_int_equal(GET_INT(f, "resource_coordinator.gpu.max_allocation_seconds", NULL, NULL),
                     300);
    assert_int_equal(GET_INT(f, "resource_coordinator.claude.hourly_limit", NULL, NULL), 100);
    assert_int_equal(GET_INT(f, "resource_coordinator.claude.cache_ttl", NULL, NULL), 3600);
    assert_int_equal(GET_INT(f, "resource_coordinator.redis.max_connections", NULL, NULL), 20);
    assert_int_equal(GET_INT(f, "resource_coordinator.redis.connection_timeout", NULL, NULL), 5);
    assert_true(jb_config_get_double(f->cfg, "monitoring.metrics_flush_interval", NULL, NULL) ==
                1.0);
    assert_string_equal(jb_config_get_string(f->cfg, "monitoring.questdb_url", NULL, NULL),
                        "http://localhost:9000");
    assert_false(jb_config_get_bool(f->cfg, "monitoring.enable_profiling", NULL, NULL));
    assert_string_equal(jb_config_get_string(f->cfg, "event_bus.fsync", NULL, NULL), "batch");
    size_t n = 0;
    const char *const *topics = jb_config_get_strlist(f->cfg, "event_bus.topics", NULL, NULL, &n);
    assert_int_equal(n, 3);
    assert_string_equal(topics[0], "game_events");
    assert_string_equal(topics[2], "strategy_requests");
    assert_null(topics[3]);
    const char *const *prio = jb_config_get_strlist(
        f->cfg, "resource_coordinator.gpu.priority_components", NULL, NULL, &n);
    assert_int_equal(n, 2);
    assert_string_equal(prio[0], "training");
    assert_string_equal(prio[1], "inference");
    assert_int_equal(jb_config_version(f->cfg), 1);
}

static void test_seed_keys_in_table(void **state)
{
    (void)state;
    static const char *const seed[] = {
        "event_bus.batch_window_ms",
        "event_bus.max_batch_size",
        "event_bus.grpc_port",
        "event_bus.topics",
        "resource_coordinator.gpu.max_allocation_seconds",
        "resource_coordinator.gpu.priority_components",
        "resource_coordinator.claude.hourly_limit",
        "resource_coordinator.claude.cache_ttl",
        "resource_coordinator.redis.max_connections",
        "resource_coordinator.redis.connection_timeout",
        "monitoring.metrics_flush_interval",
        "monitoring.questdb_url",
        "monitoring.enable_profiling",
    };
    const jb_config_schema *s = jb_config_schema_builtin();
    for (size_t i = 0; i < sizeof(seed) / sizeof(seed[0]); i++)
        assert_non_null(jb_config_schema_find(s, seed[i]));
    for (size_t i = 0; i < s->count; i++) {
        const jb_config_key *k = &s->keys[i];
        assert_non_null(k->description);
        assert_true(strlen(k->description) > 10);
        assert_null(jb_config_schema_find(s, "event_bus"));
        if (k->type == JB_CONFIG_ENUM)
            assert_non_null(k->allowed);
        if (k->flags & JB_CONFIG_SECRET)
            assert_string_equal(k->def, "''");
        /* Each path appears once. */
        assert_ptr_equal(jb_config_schema_find(s, k->path), k);
    }
}

static void test_shipped_config_is_valid(void **state)
{
    fixture *f = *state;
    const char *src = getenv("JB_SOURCE_DIR");
    if (src == NULL)
        skip();
    snprintf(f->base, sizeof(f->base), "%s/config/infrastructure.yaml", src);
    assert_int_equal(load_env(f, "development", NULL), JB_OK);
    assert_int_equal(GET_INT(f, "event_bus.batch_window_ms", NULL, NULL), 100);
}

/* ---- Layers and levels ------------------------------------------------------ */

static void test_env_layer_overrides_base(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  batch_window_ms: 100\n"
               "  max_batch_size: 500\n"
               "  topics: [a, b, c]\n"
               "monitoring:\n"
               "  enable_profiling: true\n");
    write_file(f, "staging.yaml",
               "event_bus:\n"
               "  max_batch_size: 700\n"
               "  topics: [z]\n"
               "monitoring:\n"
               "  enable_profiling: ~\n");
    assert_int_equal(load_env(f, "staging", NULL), JB_OK);
    /* Maps merge key by key. */
    assert_int_equal(GET_INT(f, "event_bus.batch_window_ms", NULL, NULL), 100);
    assert_int_equal(GET_INT(f, "event_bus.max_batch_size", NULL, NULL), 700);
    /* Lists replace. */
    size_t n;
    const char *const *t = jb_config_get_strlist(f->cfg, "event_bus.topics", NULL, NULL, &n);
    assert_int_equal(n, 1);
    assert_string_equal(t[0], "z");
    /* A null sets nothing: the base shows through. */
    assert_true(jb_config_get_bool(f->cfg, "monitoring.enable_profiling", NULL, NULL));

    char *text = dump(f->cfg);
    char want[256];
    snprintf(want, sizeof(want), "event_bus.max_batch_size = 700  # %s/staging.yaml:2", f->dir);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof(want), "event_bus.batch_window_ms = 100  # %s/infrastructure.yaml:2",
             f->dir);
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "event_bus.ack_wait_ms = 30000  # default"));
    free(text);
}

static void test_missing_env_file_is_fine(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "event_bus: {batch_window_ms: 42}\n");
    assert_int_equal(load_env(f, "nowhere", NULL), JB_OK);
    assert_int_equal(GET_INT(f, "event_bus.batch_window_ms", NULL, NULL), 42);
}

static void test_bad_env_name_rejected(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "{}\n");
    assert_int_equal(load_env(f, "../etc", NULL), JB_ECONFIG);
    find_error(f, "environment name");
}

static void test_component_and_feature_levels(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  batch_window_ms: 100\n"
               "components:\n"
               "  training:\n"
               "    event_bus:\n"
               "      batch_window_ms: 50\n"
               "      max_batch_size: 10\n"
               "features:\n"
               "  fast_path:\n"
               "    event_bus: {batch_window_ms: 5}\n");
    write_file(f, "production.yaml",
               "event_bus:\n"
               "  batch_window_ms: 200\n"
               "components:\n"
               "  training:\n"
               "    event_bus: {max_batch_size: 20}\n");
    assert_int_equal(load_env(f, "production", NULL), JB_OK);
    const char *key = "event_bus.batch_window_ms";
    /* A component sees its own value before the environment's and the base's. */
    assert_int_equal(GET_INT(f, key, "training", NULL), 50);
    assert_int_equal(GET_INT(f, key, NULL, NULL), 200);
    assert_int_equal(GET_INT(f, key, "inference", NULL), 200);
    /* The feature level wins over the component level. */
    assert_int_equal(GET_INT(f, key, "training", "fast_path"), 5);
    assert_int_equal(GET_INT(f, key, NULL, "fast_path"), 5);
    assert_int_equal(GET_INT(f, key, "training", "other"), 50);
    /* The environment file's component level overrides the base's. */
    assert_int_equal(GET_INT(f, "event_bus.max_batch_size", "training", NULL), 20);
    assert_int_equal(GET_INT(f, "event_bus.max_batch_size", NULL, NULL), 1000);

    char *text = dump(f->cfg);
    assert_non_null(strstr(text, "components.training.event_bus.batch_window_ms = 50"));
    assert_non_null(strstr(text, "features.fast_path.event_bus.batch_window_ms = 5"));
    free(text);
}

static void test_restart_only_key_not_per_component(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "components:\n"
               "  training:\n"
               "    event_bus:\n"
               "      grpc_port: 6000\n");
    assert_int_equal(load(f), JB_ECONFIG);
    const char *e = find_error(f, "components.training.event_bus.grpc_port");
    assert_non_null(strstr(e, ":4: "));
    assert_non_null(strstr(e, "restart"));
}

/* ---- Validation ------------------------------------------------------------- */

static void test_unknown_key_did_you_mean(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  batch_windw_ms: 100\n"
               "monitoring:\n"
               "  qestdb_url: 'http://x:1'\n"
               "  completely_unrelated_thing: 1\n"
               "batch_window_ms: 3\n"
               "components:\n"
               "  training:\n"
               "    event_bus: {max_batch_sise: 3}\n");
    assert_int_equal(load(f), JB_ECONFIG);
    char want[256];
    snprintf(want, sizeof(want),
             "%s:2: event_bus.batch_windw_ms: unknown key (did you mean "
             "event_bus.batch_window_ms?)",
             f->base);
    assert_string_equal(find_error(f, "batch_windw_ms"), want);
    assert_non_null(strstr(find_error(f, "qestdb_url"), "did you mean monitoring.questdb_url?"));
    const char *e = find_error(f, "completely_unrelated_thing");
    assert_null(strstr(e, "did you mean"));
    assert_non_null(strstr(e, ":5: "));
    /* The right word at the wrong level. */
    assert_non_null(
        strstr(find_error(f, ":6: batch_window_ms"), "did you mean event_bus.batch_window_ms?"));
    assert_non_null(strstr(find_error(f, "max_batch_sise"),
                           "did you mean components.training.event_bus.max_batch_size?"));
    assert_int_equal(jb_config_errors_count(f->errs), 5);
}

static void test_wrong_types(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  batch_window_ms: fast\n"           /* 2 */
               "  max_batch_size: 1.5\n"             /* 3 */
               "  topics: game_events\n"             /* 4 */
               "  grpc_port: [1]\n"                  /* 5 */
               "  retention: 5\n"                    /* 6 */
               "monitoring:\n"                       /* 7 */
               "  enable_profiling: maybe\n"         /* 8 */
               "  metrics_flush_interval: soon\n"    /* 9 */
               "  questdb_url: {a: 1}\n"             /* 10 */
               "resource_coordinator:\n"             /* 11 */
               "  gpu:\n"                            /* 12 */
               "    priority_components: [a, [b]]\n" /* 13 */
               "components: 3\n");                   /* 14 */
    assert_int_equal(load(f), JB_ECONFIG);
    assert_non_null(
        strstr(find_error(f, ":2: event_bus.batch_window_ms"), "expected an integer, got 'fast'"));
    assert_non_null(strstr(find_error(f, ":3: event_bus.max_batch_size"), "expected an integer"));
    assert_non_null(strstr(find_error(f, ":4: event_bus.topics"), "expected a list of strings"));
    assert_non_null(strstr(find_error(f, ":5: event_bus.grpc_port"), "got a list"));
    assert_non_null(strstr(find_error(f, ":6: event_bus.retention"), "expected a map"));
    assert_non_null(strstr(find_error(f, ":8: monitoring.enable_profiling"), "true or false"));
    assert_non_null(strstr(find_error(f, ":9: monitoring.metrics_flush_interval"), "a number"));
    assert_non_null(strstr(find_error(f, ":10: monitoring.questdb_url"), "got a map"));
    assert_non_null(
        strstr(find_error(f, ":13: resource_coordinator.gpu.priority_components"), "list item 2"));
    assert_non_null(strstr(find_error(f, ":14: components"), "expected a map"));
    assert_int_equal(jb_config_errors_count(f->errs), 10);
}

static void test_ranges_and_allowed_values(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  grpc_port: 0\n"
               "  max_batch_size: 100001\n"
               "  batch_window_ms: 99999999999999999999999\n"
               "  fsync: sometimes\n"
               "  topics: ['ok.topic', 'bad topic', 'trailing.']\n"
               "  listen: 'localhost:99999'\n"
               "monitoring:\n"
               "  metrics_flush_interval: 0.001\n"
               "  questdb_url: 'ftp://x'\n");
    assert_int_equal(load(f), JB_ECONFIG);
    assert_non_null(strstr(find_error(f, ":2: event_bus.grpc_port"), "0 is out of range 1..65535"));
    assert_non_null(strstr(find_error(f, ":3: event_bus.max_batch_size"), "out of range"));
    assert_non_null(strstr(find_error(f, ":4: event_bus.batch_window_ms"), "out of range"));
    assert_non_null(strstr(find_error(f, ":5: event_bus.fsync"),
                           "expected one of always, batch, none, got 'sometimes'"));
    assert_non_null(strstr(find_error(f, "list item 2"), "'bad topic'"));
    assert_non_null(strstr(find_error(f, "list item 3"), "'trailing.'"));
    assert_non_null(strstr(find_error(f, ":7: event_bus.listen"), "port"));
    assert_non_null(strstr(find_error(f, ":9: monitoring.metrics_flush_interval"), "out of range"));
    assert_non_null(strstr(find_error(f, ":10: monitoring.questdb_url"), "http"));
    assert_int_equal(jb_config_errors_count(f->errs), 9);

    /* The edges of a range are inside it. */
    write_file(f, "infrastructure.yaml",
               "event_bus: {grpc_port: 65535, max_batch_size: 1, batch_window_ms: 0}\n"
               "monitoring: {metrics_flush_interval: 3600}\n");
    assert_int_equal(load(f), JB_OK);
    assert_int_equal(GET_INT(f, "event_bus.grpc_port", NULL, NULL), 65535);
}

static void test_scalar_spellings(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus: {batch_window_ms: '250', max_batch_size: +7}\n"
               "monitoring: {enable_profiling: yes, metrics_flush_interval: 2, questdb_url: "
               "https://q:9000}\n"
               "log: {level: debug}\n");
    assert_int_equal(load(f), JB_OK);
    assert_int_equal(GET_INT(f, "event_bus.batch_window_ms", NULL, NULL), 250);
    assert_int_equal(GET_INT(f, "event_bus.max_batch_size", NULL, NULL), 7);
    assert_true(jb_config_get_bool(f->cfg, "monitoring.enable_profiling", NULL, NULL));
    assert_true(jb_config_get_double(f->cfg, "monitoring.metrics_flush_interval", NULL, NULL) ==
                2.0);
    assert_string_equal(jb_config_get_string(f->cfg, "log.level", NULL, NULL), "debug");
    char *text = dump(f->cfg);
    assert_non_null(strstr(text, "monitoring.metrics_flush_interval = 2.0  #"));
    free(text);
}

static void test_all_errors_at_once_across_files(void **state)
{
    fixture *f = *state;
    unsetenv("JB_TEST_NOT_SET");
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  batch_windw_ms: 100\n"
               "  max_batch_size: lots\n"
               "monitoring:\n"
               "  questdb_url: ${JB_TEST_NOT_SET}\n");
    write_file(f, "production.yaml", "event_bus:\n  grpc_port: -1\n");
    assert_int_equal(load_env(f, "production", NULL), JB_ECONFIG);
    assert_int_equal(jb_config_errors_count(f->errs), 4);
    char line[512], want[512];
    snprintf(want, sizeof(want), "%s:2: event_bus.batch_windw_ms: unknown key", f->base);
    assert_non_null(strstr(jb_config_errors_format(f->errs, 0, line, sizeof(line)), want));
    snprintf(want, sizeof(want), "%s:3: event_bus.max_batch_size: expected an integer", f->base);
    assert_non_null(strstr(jb_config_errors_format(f->errs, 1, line, sizeof(line)), want));
    snprintf(want, sizeof(want),
             "%s:5: monitoring.questdb_url: environment variable JB_TEST_NOT_SET is not set and "
             "has no default",
             f->base);
    assert_string_equal(jb_config_errors_format(f->errs, 2, line, sizeof(line)), want);
    snprintf(want, sizeof(want), "%s/production.yaml:2: event_bus.grpc_port: -1 is out of range",
             f->dir);
    assert_non_null(strstr(jb_config_errors_format(f->errs, 3, line, sizeof(line)), want));

    const jb_config_error *e = jb_config_errors_at(f->errs, 2);
    assert_int_equal(e->line, 5);
    assert_string_equal(e->key, "monitoring.questdb_url");
    assert_null(f->cfg);

    /* jb_error carries the first error and the count. */
    jb_error err;
    jb_config *cfg = NULL;
    jb_config_options o = {.path = f->base, .env = "production"};
    assert_int_equal(jb_config_load(&o, &cfg, NULL, &err), JB_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err.message, "batch_windw_ms"));
    assert_non_null(strstr(err.message, "(and 3 more)"));
}

static const jb_config_key test_keys[] = {
    {"svc.name", JB_CONFIG_STRING, JB_CONFIG_RELOADABLE, NULL, 0, 0, NULL, NULL, "A required key."},
    {"svc.token", JB_CONFIG_INT, JB_CONFIG_SECRET | JB_CONFIG_RELOADABLE, "0", 0, 100, NULL, NULL,
     "A secret number."},
    {"svc.port", JB_CONFIG_INT, 0, "1", 1, 100, NULL, NULL, "A restart-only key."},
    {"svc.tags", JB_CONFIG_STRLIST, JB_CONFIG_RELOADABLE, "[]", 0, 0, NULL, NULL, "Any words."},
};
static const jb_config_schema test_schema = {test_keys, 4};

static void test_required_key_missing(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "svc:\n  port: 5\n");
    assert_int_equal(load_env(f, NULL, &test_schema), JB_ECONFIG);
    assert_non_null(strstr(find_error(f, "svc.name"), "required key is missing"));
    assert_int_equal(jb_config_errors_count(f->errs), 1);

    /* A null does not satisfy it either. */
    write_file(f, "infrastructure.yaml", "svc:\n  name: ~\n");
    assert_int_equal(load_env(f, NULL, &test_schema), JB_ECONFIG);
    find_error(f, "required key is missing");

    write_file(f, "infrastructure.yaml", "svc:\n  name: x\n");
    assert_int_equal(load_env(f, NULL, &test_schema), JB_OK);
    assert_string_equal(jb_config_get_string(f->cfg, "svc.name", NULL, NULL), "x");
}

static void test_yaml_problems(void **state)
{
    fixture *f = *state;
    struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"event_bus:\n  topics: [a, b\n", ":3: YAML syntax error"},
        {"event_bus:\n  grpc_port: 1\n  grpc_port: 2\n", ":3: event_bus.grpc_port: duplicate key"},
        {"a: &x {b: 1}\nc: *x\n", ":2: YAML aliases"},
        {"event_bus: {}\n---\nevent_bus: {}\n", ":2: only one YAML document"},
        {"- a\n- b\n", ":1: the top level must be a map"},
        {"? [a]\n: b\n", "a map key must be"},
        {"x: \"a\\0b\"\n", "NUL byte"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(f, "infrastructure.yaml", cases[i].text);
        assert_int_equal(load(f), JB_ECONFIG);
        find_error(f, cases[i].want);
    }
    /* Deep nesting is refused, not a stack overflow. */
    char deep[1024] = "";
    for (int i = 0; i < 200; i++)
        strcat(deep, "[");
    write_file(f, "infrastructure.yaml", deep);
    assert_int_equal(load(f), JB_ECONFIG);

    /* A missing base file is an error that names it. */
    snprintf(f->base, sizeof(f->base), "%s/absent.yaml", f->dir);
    assert_int_equal(load(f), JB_EIO);
    find_error(f, "absent.yaml: cannot read the configuration");
}

/* ---- Secrets ------------------------------------------------------------------ */

static void test_env_substitution(void **state)
{
    fixture *f = *state;
    setenv("JB_TEST_URL", "http://questdb:9000", 1);
    setenv("JB_TEST_EMPTY", "", 1);
    setenv("JB_TEST_PORT", "6123", 1);
    unsetenv("JB_TEST_UNSET");
    write_file(f, "infrastructure.yaml",
               "monitoring:\n"
               "  questdb_url: ${JB_TEST_URL}\n"
               "  metrics_listen: '${JB_TEST_UNSET:-127.0.0.1}:${JB_TEST_EMPTY:-9999}'\n"
               "event_bus:\n"
               "  grpc_port: ${JB_TEST_PORT}\n"
               "  topics: ['${JB_TEST_UNSET:-fallback}']\n");
    assert_int_equal(load(f), JB_OK);
    assert_string_equal(jb_config_get_string(f->cfg, "monitoring.questdb_url", NULL, NULL),
                        "http://questdb:9000");
    assert_string_equal(jb_config_get_string(f->cfg, "monitoring.metrics_listen", NULL, NULL),
                        "127.0.0.1:9999");
    assert_int_equal(GET_INT(f, "event_bus.grpc_port", NULL, NULL), 6123);
    const char *const *t = jb_config_get_strlist(f->cfg, "event_bus.topics", NULL, NULL, NULL);
    assert_string_equal(t[0], "fallback");

    /* A literal "${" is written "$${"; a lone "$" is itself. */
    write_file(f, "infrastructure.yaml",
               "svc: {name: 'lit$${x}', tags: ['a$b', '$', '${JB_TEST_PORT}$${JB_TEST_PORT}']}\n");
    assert_int_equal(load_env(f, NULL, &test_schema), JB_OK);
    assert_string_equal(jb_config_get_string(f->cfg, "svc.name", NULL, NULL), "lit${x}");
    t = jb_config_get_strlist(f->cfg, "svc.tags", NULL, NULL, NULL);
    assert_string_equal(t[0], "a$b");
    assert_string_equal(t[1], "$");
    assert_string_equal(t[2], "6123${JB_TEST_PORT}");

    write_file(f, "infrastructure.yaml",
               "monitoring:\n"
               "  questdb_url: ${JB_TEST_UNSET}\n"
               "  metrics_listen: '${not a name}'\n"
               "log: {level: '${JB_TEST_URL'}\n");
    assert_int_equal(load(f), JB_ECONFIG);
    assert_non_null(strstr(find_error(f, ":2: monitoring.questdb_url"),
                           "environment variable JB_TEST_UNSET is not set and has no default"));
    assert_non_null(strstr(find_error(f, ":3: monitoring.metrics_listen"), "bad substitution"));
    assert_non_null(strstr(find_error(f, ":4: log.level"), "unterminated"));
}

static void test_file_secrets_and_masking(void **state)
{
    fixture *f = *state;
    write_file(f, "claude.key", "sk-very-secret-1\n");
    setenv("JB_TEST_REDIS_PW", "hunter2-secret", 1);
    write_file(f, "infrastructure.yaml",
               "resource_coordinator:\n"
               "  claude:\n"
               "    api_key: ${file:claude.key}\n"
               "  redis:\n"
               "    password: ${JB_TEST_REDIS_PW}\n");
    assert_int_equal(load(f), JB_OK);
    assert_string_equal(
        jb_config_get_string(f->cfg, "resource_coordinator.claude.api_key", NULL, NULL),
        "sk-very-secret-1");
    assert_string_equal(
        jb_config_get_string(f->cfg, "resource_coordinator.redis.password", NULL, NULL),
        "hunter2-secret");
    char *text = dump(f->cfg);
    assert_null(strstr(text, "very-secret"));
    assert_null(strstr(text, "hunter2"));
    assert_non_null(strstr(text, "resource_coordinator.claude.api_key = ***  #"));
    assert_non_null(strstr(text, "resource_coordinator.redis.password = ***  #"));
    free(text);

    /* Anything read with ${file:} is a secret, whatever its key. */
    write_file(f, "url.txt", "http://user:pw-from-file@q:9000\n");
    write_file(f, "infrastructure.yaml", "monitoring: {questdb_url: '${file:url.txt}'}\n");
    assert_int_equal(load(f), JB_OK);
    text = dump(f->cfg);
    assert_null(strstr(text, "pw-from-file"));
    assert_non_null(strstr(text, "monitoring.questdb_url = ***"));
    free(text);

    /* Errors never show a secret value. */
    write_file(f, "bad.txt", "not-an-url-SECRET\n");
    write_file(f, "infrastructure.yaml",
               "monitoring: {questdb_url: '${file:bad.txt}'}\n"
               "resource_coordinator: {claude: {api_key: '${file:missing.key}'}}\n");
    assert_int_equal(load(f), JB_ECONFIG);
    assert_null(strstr(find_error(f, "monitoring.questdb_url"), "SECRET"));
    assert_non_null(strstr(find_error(f, "monitoring.questdb_url"), "***"));
    assert_non_null(strstr(find_error(f, ":2: resource_coordinator.claude.api_key"),
                           "cannot read secret file"));

    setenv("JB_TEST_TOKEN", "TOKEN-SECRET-VALUE", 1);
    write_file(f, "infrastructure.yaml", "svc: {name: a, token: '${JB_TEST_TOKEN}'}\n");
    assert_int_equal(load_env(f, NULL, &test_schema), JB_ECONFIG);
    const char *e = find_error(f, "svc.token");
    assert_null(strstr(e, "TOKEN-SECRET"));
    assert_non_null(strstr(e, "***"));
}

static int count_secret_entries(const jb_config_entry *e, void *userdata)
{
    if (e->secret) {
        assert_string_equal(e->value, "***");
        (*(int *)userdata)++;
    }
    return 0;
}

static void test_foreach_marks_secrets(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "{}\n");
    assert_int_equal(load(f), JB_OK);
    int n = 0;
    jb_config_foreach(f->cfg, count_secret_entries, &n);
    assert_int_equal(n, 2);
}

/* ---- Programming errors ---------------------------------------------------------- */

static void expect_abort(void (*fn)(const jb_config *), const jb_config *cfg)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen("/dev/null", "w", stderr) == NULL)
            _exit(1);
        fn(cfg);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void get_unknown(const jb_config *cfg)
{
    jb_config_get_int(cfg, "event_bus.nope", NULL, NULL);
}

static void get_wrong_type(const jb_config *cfg)
{
    jb_config_get_bool(cfg, "event_bus.batch_window_ms", NULL, NULL);
}

static void test_getter_misuse_is_a_bug(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "{}\n");
    assert_int_equal(load(f), JB_OK);
    expect_abort(get_unknown, f->cfg);
    expect_abort(get_wrong_type, f->cfg);
}

/* ---- Maps with names the user chooses ------------------------------------------ */

static void test_map_aggregation_and_windows(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  aggregation:\n"
               "    jimbot.Tick: {rule: count}\n"
               "    jimbot.GameStateUpdate:\n"
               "      rule: last\n"
               "      key: game_id\n"
               "    jimbot.Plain: {rule: keep}\n"
               "  windows:\n"
               "    'game_events.>': {batch_window_ms: 10, max_batch_size: 50}\n"
               "    '*.fast': {batch_window_ms: 0}\n");
    assert_int_equal(load(f), JB_OK);
    const jb_config_map *m = jb_config_get_map(f->cfg, "event_bus.aggregation", NULL, NULL);
    assert_int_equal(jb_config_map_count(m), 3);
    /* Sorted by name. */
    assert_string_equal(jb_config_map_name(m, 0), "jimbot.GameStateUpdate");
    assert_string_equal(jb_config_map_get_string(m, 0, "rule"), "last");
    assert_string_equal(jb_config_map_get_string(m, 0, "key"), "game_id");
    assert_string_equal(jb_config_map_name(m, 1), "jimbot.Plain");
    assert_string_equal(jb_config_map_name(m, 2), "jimbot.Tick");
    assert_string_equal(jb_config_map_get_string(m, 2, "rule"), "count");
    assert_false(jb_config_map_has(m, 2, "key"));
    assert_null(jb_config_map_get_string(m, 2, "key"));

    const jb_config_map *w = jb_config_get_map(f->cfg, "event_bus.windows", NULL, NULL);
    assert_int_equal(jb_config_map_count(w), 2);
    assert_string_equal(jb_config_map_name(w, 0), "*.fast");
    assert_true(jb_config_map_has(w, 0, "batch_window_ms"));
    assert_int_equal(jb_config_map_get_int(w, 0, "batch_window_ms"), 0);
    assert_false(jb_config_map_has(w, 0, "max_batch_size"));
    assert_string_equal(jb_config_map_name(w, 1), "game_events.>");
    assert_int_equal(jb_config_map_get_int(w, 1, "max_batch_size"), 50);

    char *text = dump(f->cfg);
    assert_non_null(strstr(text, "event_bus.windows = {\"*.fast\": {batch_window_ms: 0}, "
                                 "\"game_events.>\": {batch_window_ms: 10, max_batch_size: 50}}"));
    assert_non_null(strstr(text, "\"jimbot.GameStateUpdate\": {rule: last, key: \"game_id\"}"));
    free(text);

    /* Empty by default. */
    write_file(f, "infrastructure.yaml", "{}\n");
    assert_int_equal(load(f), JB_OK);
    assert_int_equal(
        jb_config_map_count(jb_config_get_map(f->cfg, "event_bus.aggregation", NULL, NULL)), 0);
    assert_int_equal(
        jb_config_map_count(jb_config_get_map(f->cfg, "event_bus.windows", NULL, NULL)), 0);
}

static void test_map_errors(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  aggregation:\n"
               "    jimbot.A: {rule: lats}\n"          /* 3 */
               "    jimbot.B: {rule: count, key: x}\n" /* 4 */
               "    jimbot.C: {rul: last}\n"           /* 5 */
               "    'bad type': {rule: keep}\n"        /* 6 */
               "    jimbot.D: [last]\n"                /* 7 */
               "    jimbot.E: {key: game_id}\n"        /* 8 */
               "  windows:\n"
               "    'a.>.b': {batch_window_ms: 1}\n"                    /* 10 */
               "    'a.*': {}\n"                                        /* 11 */
               "    'b': {batch_window_ms: 60001, max_batch_sise: 3}\n" /* 12 */
               "  aggregaton: {}\n"                                     /* 13 */
               "  windows_x: 1\n");                                     /* 14 */
    assert_int_equal(load(f), JB_ECONFIG);
    char want[256];
    snprintf(want, sizeof(want),
             "%s:3: event_bus.aggregation.jimbot.A.rule: expected one of keep, last, count, got "
             "'lats'",
             f->base);
    assert_string_equal(find_error(f, ":3:"), want);
    assert_non_null(
        strstr(find_error(f, ":4: event_bus.aggregation.jimbot.B.key"), "only rule 'last'"));
    assert_non_null(strstr(find_error(f, ":5: event_bus.aggregation.jimbot.C.rul"),
                           "unknown key (did you mean event_bus.aggregation.jimbot.C.rule?)"));
    assert_non_null(strstr(find_error(f, ":6: event_bus.aggregation.bad type"), "printable"));
    assert_non_null(strstr(find_error(f, ":7: event_bus.aggregation.jimbot.D"), "a map of fields"));
    assert_non_null(strstr(find_error(f, ":8: event_bus.aggregation.jimbot.E"),
                           "required key 'rule' is missing"));
    assert_non_null(strstr(find_error(f, ":10: event_bus.windows.a.>.b"), "'>'"));
    assert_non_null(strstr(find_error(f, ":11: event_bus.windows.a.*"), "sets neither"));
    assert_non_null(strstr(find_error(f, ":12: event_bus.windows.b.batch_window_ms"),
                           "60001 is out of range 0..60000"));
    assert_non_null(strstr(find_error(f, ":12: event_bus.windows.b.max_batch_sise"),
                           "did you mean event_bus.windows.b.max_batch_size?"));
    assert_non_null(
        strstr(find_error(f, ":13: event_bus.aggregaton"), "did you mean event_bus.aggregation?"));
    assert_non_null(strstr(find_error(f, ":14: event_bus.windows_x"), "unknown key"));
    assert_int_equal(jb_config_errors_count(f->errs), 12);

    /* Not a map at all. */
    write_file(f, "infrastructure.yaml", "event_bus:\n  windows: [a, b]\n");
    assert_int_equal(load(f), JB_ECONFIG);
    assert_non_null(strstr(find_error(f, ":2: event_bus.windows"), "expected a map"));
}

/* A JB_CONFIG_SHORTHAND map takes NAME: VALUE for its first field; its default uses it. */
static void test_map_shorthand(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml", "{}\n");
    assert_int_equal(load(f), JB_OK);
    const char *key = "resource_coordinator.redis.namespaces";
    const jb_config_map *m = jb_config_get_map(f->cfg, key, NULL, NULL);
    assert_int_equal(jb_config_map_count(m), 3);
    assert_string_equal(jb_config_map_name(m, 0), "analytics");
    assert_string_equal(jb_config_map_get_string(m, 0, "prefix"), "analytics:");
    assert_false(jb_config_map_has(m, 0, "max_connections"));

    write_file(f, "infrastructure.yaml",
               "resource_coordinator:\n  redis:\n    namespaces:\n"
               "      a: 'a:'\n"
               "      b: {prefix: 'b:', max_connections: 3}\n");
    assert_int_equal(load(f), JB_OK);
    m = jb_config_get_map(f->cfg, key, NULL, NULL);
    assert_int_equal(jb_config_map_count(m), 2);
    assert_string_equal(jb_config_map_get_string(m, 0, "prefix"), "a:");
    assert_string_equal(jb_config_map_get_string(m, 1, "prefix"), "b:");
    assert_int_equal(jb_config_map_get_int(m, 1, "max_connections"), 3);

    /* The value is checked as its field; a list is still refused; a map without the shorthand
     * flag takes no scalar. */
    write_file(f, "infrastructure.yaml",
               "resource_coordinator:\n  redis:\n    namespaces:\n"
               "      a: 'a*'\n"                                    /* 4 */
               "      b: [x]\n"                                     /* 5 */
               "event_bus:\n  aggregation:\n    jimbot.A: last\n"); /* 8 */
    assert_int_equal(load(f), JB_ECONFIG);
    assert_non_null(strstr(find_error(f, ":4: resource_coordinator.redis.namespaces.a.prefix"),
                           "without spaces, *"));
    assert_non_null(
        strstr(find_error(f, ":5: resource_coordinator.redis.namespaces.b"), "a map of fields"));
    assert_non_null(strstr(find_error(f, ":8: event_bus.aggregation.jimbot.A"), "a map of fields"));
}

/* Entries merge by name across layers; an entry of the higher layer replaces the lower one. */
static void test_map_merges_by_name(void **state)
{
    fixture *f = *state;
    write_file(f, "infrastructure.yaml",
               "event_bus:\n"
               "  aggregation:\n"
               "    jimbot.A: {rule: last, key: game_id}\n"
               "    jimbot.B: {rule: count}\n");
    write_file(f, "production.yaml",
               "event_bus:\n"
               "  aggregation:\n"
               "    jimbot.A: {rule: keep}\n"
               "    jimbot.C: {rule: count}\n");
    assert_int_equal(load_env(f, "production", NULL), JB_OK);
    const jb_config_map *m = jb_config_get_map(f->cfg, "event_bus.aggregation", NULL, NULL);
    assert_int_equal(jb_config_map_count(m), 3);
    assert_string_equal(jb_config_map_name(m, 0), "jimbot.A");
    assert_string_equal(jb_config_map_get_string(m, 0, "rule"), "keep");
    assert_false(jb_config_map_has(m, 0, "key"));
    assert_string_equal(jb_config_map_name(m, 1), "jimbot.B");
    assert_string_equal(jb_config_map_name(m, 2), "jimbot.C");
}

/* ---- Hot reload ------------------------------------------------------------------- */

typedef struct reload_env {
    fixture *f;
    uv_loop_t loop;
    uv_timer_t timeout;
    jb_config_watcher *w;
    int subscriber_calls;
    char changed[1024];
    char pending[1024];
    uint64_t version;
    int timed_out;
    int closed;
} reload_env;

static void on_change(const jb_config_change *c, void *userdata)
{
    reload_env *r = userdata;
    r->subscriber_calls++;
    r->version = c->version;
    r->changed[0] = r->pending[0] = '\0';
    for (size_t i = 0; i < c->changed_count; i++) {
        strcat(r->changed, c->changed[i]);
        strcat(r->changed, ";");
    }
    for (size_t i = 0; i < c->pending_count; i++) {
        strcat(r->pending, c->pending_restart[i]);
        strcat(r->pending, ";");
    }
    assert_ptr_equal(c->config, jb_config_watcher_current(r->w));
    assert_ptr_not_equal(c->config, c->previous);
}

static void on_timeout(uv_timer_t *t)
{
    reload_env *r = t->data;
    r->timed_out = 1;
}

static void reload_start_opts(reload_env *r, fixture *f, const char *env, const char *text,
                              const jb_config_watcher_options *wo);

static void reload_start(reload_env *r, fixture *f, const char *env, const char *text)
{
    jb_config_watcher_options wo = {.debounce_ms = 100};
    reload_start_opts(r, f, env, text, &wo);
}

static void reload_start_opts(reload_env *r, fixture *f, const char *env, const char *text,
                              const jb_config_watcher_options *wo)
{
    memset(r, 0, sizeof(*r));
    r->f = f;
    write_file(f, "infrastructure.yaml", text);
    assert_int_equal(load_env(f, env, NULL), JB_OK);
    assert_int_equal(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->timeout);
    r->timeout.data = r;
    jb_config_options o = {.path = f->base, .env = env};
    assert_int_equal(jb_config_watcher_new(&r->loop, &o, wo, f->cfg, &r->w, NULL), JB_OK);
    assert_int_equal(jb_config_watcher_subscribe(r->w, on_change, r), JB_OK);
    assert_int_equal(jb_config_watcher_start(r->w, NULL), JB_OK);
}

/* Runs the loop until @calls subscriber calls (or failed reloads) have happened. */
static void wait_for(reload_env *r, int calls, uint64_t failed)
{
    r->timed_out = 0;
    uv_timer_start(&r->timeout, on_timeout, 10000, 0);
    for (;;) {
        jb_config_watcher_stats st;
        jb_config_watcher_stats_get(r->w, &st);
        if (r->subscriber_calls >= calls && st.reloads_failed >= failed)
            break;
        assert_false(r->timed_out);
        uv_run(&r->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&r->timeout);
}

/* Runs the loop until the watcher has attempted @n reloads. */
static void wait_reloads(reload_env *r, uint64_t n)
{
    r->timed_out = 0;
    uv_timer_start(&r->timeout, on_timeout, 10000, 0);
    for (;;) {
        jb_config_watcher_stats st;
        jb_config_watcher_stats_get(r->w, &st);
        if (st.reloads >= n)
            break;
        assert_false(r->timed_out);
        uv_run(&r->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&r->timeout);
}

/* Runs the loop for @ms of loop time (to show that nothing more happens). */
static void settle(reload_env *r, unsigned ms)
{
    r->timed_out = 0;
    uv_timer_start(&r->timeout, on_timeout, ms, 0);
    while (!r->timed_out)
        uv_run(&r->loop, UV_RUN_ONCE);
}

static void on_watcher_closed(void *userdata)
{
    ((reload_env *)userdata)->closed = 1;
}

static void reload_finish(reload_env *r)
{
    jb_config_watcher_close(r->w, on_watcher_closed, r);
    uv_close((uv_handle_t *)&r->timeout, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_true(r->closed);
    assert_int_equal(uv_loop_close(&r->loop), 0);
}

static int64_t current_int(reload_env *r, const char *key)
{
    return jb_config_get_int(jb_config_watcher_current(r->w), key, NULL, NULL);
}

static void test_reload_valid_edit(void **state)
{
    fixture *f = *state;
    reload_env r;
    reload_start(&r, f, NULL, "event_bus:\n  batch_window_ms: 100\n  max_batch_size: 10\n");
    jb_config *held = jb_config_ref(jb_config_watcher_current(r.w));

    write_file(f, "infrastructure.yaml",
               "event_bus:\n  batch_window_ms: 250\n  max_batch_size: 10\n");
    wait_for(&r, 1, 0);
    assert_string_equal(r.changed, "event_bus.batch_window_ms;");
    assert_string_equal(r.pending, "");
    assert_int_equal(r.version, 2);
    assert_int_equal(current_int(&r, "event_bus.batch_window_ms"), 250);
    /* A reader that held the old snapshot still sees it whole. */
    assert_int_equal(jb_config_get_int(held, "event_bus.batch_window_ms", NULL, NULL), 100);
    assert_int_equal(jb_config_version(held), 1);
    jb_config_unref(held);

    /* Component levels report their own keys. */
    write_file(f, "infrastructure.yaml",
               "event_bus:\n  batch_window_ms: 250\n  max_batch_size: 10\n"
               "components: {training: {event_bus: {batch_window_ms: 7}}}\n");
    wait_for(&r, 2, 0);
    assert_string_equal(r.changed, "components.training.event_bus.batch_window_ms;");
    assert_int_equal(jb_config_get_int(jb_config_watcher_current(r.w), "event_bus.batch_window_ms",
                                       "training", NULL),
                     7);

    jb_config_watcher_stats st;
    jb_config_watcher_stats_get(r.w, &st);
    assert_int_equal(st.version, 3);
    assert_int_equal(st.reloads_failed, 0);
    reload_finish(&r);
}

/* A change inside a map is a change of the map's key; the same map again is none. */
static void test_reload_map_change(void **state)
{
    fixture *f = *state;
    reload_env r;
    const char *v1 = "event_bus:\n  aggregation: {jimbot.A: {rule: last, key: game_id}}\n";
    reload_start(&r, f, NULL, v1);
    write_file(f, "infrastructure.yaml",
               "event_bus:\n  aggregation: {jimbot.A: {rule: last, key: round}}\n");
    wait_for(&r, 1, 0);
    assert_string_equal(r.changed, "event_bus.aggregation;");
    const jb_config_map *m =
        jb_config_get_map(jb_config_watcher_current(r.w), "event_bus.aggregation", NULL, NULL);
    assert_string_equal(jb_config_map_get_string(m, 0, "key"), "round");
    /* The same values written again (another order, another style): no change. */
    write_file(f, "infrastructure.yaml",
               "event_bus:\n  aggregation:\n    jimbot.A:\n      key: round\n      rule: last\n");
    wait_reloads(&r, 2);
    assert_int_equal(r.subscriber_calls, 1);
    /* An invalid rule keeps the snapshot in force. */
    write_file(f, "infrastructure.yaml", "event_bus:\n  aggregation: {jimbot.A: {rule: first}}\n");
    wait_for(&r, 1, 1);
    m = jb_config_get_map(jb_config_watcher_current(r.w), "event_bus.aggregation", NULL, NULL);
    assert_string_equal(jb_config_map_get_string(m, 0, "rule"), "last");
    reload_finish(&r);
}

static void test_reload_rename_save(void **state)
{
    fixture *f = *state;
    reload_env r;
    reload_start(&r, f, NULL, "event_bus: {max_batch_size: 10}\n");
    rename_save(f, "infrastructure.yaml", "event_bus: {max_batch_size: 11}\n");
    wait_for(&r, 1, 0);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 11);
    /* The watch survives the rename: a second save is seen too. */
    rename_save(f, "infrastructure.yaml", "event_bus: {max_batch_size: 12}\n");
    wait_for(&r, 2, 0);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 12);
    assert_string_equal(r.changed, "event_bus.max_batch_size;");
    reload_finish(&r);
}

static void test_reload_env_file_appears_later(void **state)
{
    fixture *f = *state;
    reload_env r;
    reload_start(&r, f, "staging", "event_bus: {max_batch_size: 10}\n");
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 10);
    write_file(f, "staging.yaml", "event_bus: {max_batch_size: 33}\n");
    wait_for(&r, 1, 0);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 33);
    reload_finish(&r);
}

static void test_reload_invalid_edit_keeps_old(void **state)
{
    fixture *f = *state;
    reload_env r;
    reload_start(&r, f, NULL, "event_bus: {max_batch_size: 10, batch_window_ms: 5}\n");
    /* One valid change and one invalid value in the same edit: nothing applies. */
    write_file(f, "infrastructure.yaml", "event_bus: {max_batch_size: 20, batch_window_ms: -3}\n");
    wait_for(&r, 0, 1);
    assert_int_equal(r.subscriber_calls, 0);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 10);
    assert_int_equal(current_int(&r, "event_bus.batch_window_ms"), 5);
    jb_config_watcher_stats st;
    jb_config_watcher_stats_get(r.w, &st);
    assert_int_equal(st.reloads_failed, 1);
    assert_int_equal(st.version, 1);

    /* A YAML syntax error counts too, then a fix applies. */
    write_file(f, "infrastructure.yaml", "event_bus: {max_batch_size: [\n");
    wait_for(&r, 0, 2);
    write_file(f, "infrastructure.yaml", "event_bus: {max_batch_size: 20, batch_window_ms: 5}\n");
    wait_for(&r, 1, 2);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 20);
    assert_int_equal(r.version, 2);
    reload_finish(&r);
}

static void test_reload_restart_only_key_is_pending(void **state)
{
    fixture *f = *state;
    reload_env r;
    reload_start(&r, f, NULL, "event_bus: {grpc_port: 50051, batch_window_ms: 5}\n");
    write_file(f, "infrastructure.yaml", "event_bus: {grpc_port: 6000, batch_window_ms: 6}\n");
    wait_for(&r, 1, 0);
    assert_string_equal(r.changed, "event_bus.batch_window_ms;");
    assert_string_equal(r.pending, "event_bus.grpc_port;");
    assert_int_equal(current_int(&r, "event_bus.grpc_port"), 50051);
    assert_int_equal(current_int(&r, "event_bus.batch_window_ms"), 6);

    /* Only the restart-only key changes again: still pending, not applied, no news. */
    write_file(f, "infrastructure.yaml", "event_bus: {grpc_port: 6001, batch_window_ms: 6}\n");
    wait_reloads(&r, 2);
    assert_int_equal(r.subscriber_calls, 1);
    assert_int_equal(current_int(&r, "event_bus.grpc_port"), 50051);
    assert_int_equal(jb_config_version(jb_config_watcher_current(r.w)), 2);

    /* Back to the running value: nothing pending any more, which is news. */
    write_file(f, "infrastructure.yaml", "event_bus: {grpc_port: 50051, batch_window_ms: 6}\n");
    wait_for(&r, 2, 0);
    assert_string_equal(r.changed, "");
    assert_string_equal(r.pending, "");
    assert_int_equal(jb_config_version(jb_config_watcher_current(r.w)), 2);
    reload_finish(&r);
}

static void test_reload_burst_in_one_go(void **state)
{
    fixture *f = *state;
    reload_env r;
    reload_start(&r, f, NULL, "event_bus: {max_batch_size: 1}\n");
    char text[64];
    for (int i = 2; i <= 6; i++) {
        snprintf(text, sizeof(text), "event_bus: {max_batch_size: %d}\n", i);
        write_file(f, "infrastructure.yaml", text);
    }
    wait_for(&r, 1, 0);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 6);
    /* Give a second reload every chance to happen: it must not. */
    settle(&r, 600);
    assert_int_equal(r.subscriber_calls, 1);
    jb_config_watcher_stats st;
    jb_config_watcher_stats_get(r.w, &st);
    assert_int_equal(st.reloads, 1);
    reload_finish(&r);
}

typedef struct writer {
    reload_env *r;
    uv_timer_t timer;
    int next;
} writer;

static void on_write_tick(uv_timer_t *t)
{
    writer *w = t->data;
    char text[64];
    snprintf(text, sizeof(text), "event_bus: {max_batch_size: %d}\n", w->next);
    write_file(w->r->f, "infrastructure.yaml", text);
    if (++w->next > 6)
        uv_timer_stop(t);
}

/*
 * Writes spread over time while the loop runs (one every 10 ms), each seen
 * by the watch, still make one reload: the debounce (500 ms here, a margin
 * of 50 times the spacing) restarts with every event.
 */
static void test_reload_spread_writes_coalesce(void **state)
{
    fixture *f = *state;
    reload_env r;
    jb_config_watcher_options wo = {.debounce_ms = 500, .max_delay_ms = 10000};
    reload_start_opts(&r, f, NULL, "event_bus: {max_batch_size: 1}\n", &wo);
    writer w = {.r = &r, .next = 2};
    uv_timer_init(&r.loop, &w.timer);
    w.timer.data = &w;
    uv_timer_start(&w.timer, on_write_tick, 10, 10);
    wait_for(&r, 1, 0);
    assert_int_equal(w.next, 7);
    assert_int_equal(current_int(&r, "event_bus.max_batch_size"), 6);
    settle(&r, 800);
    assert_int_equal(r.subscriber_calls, 1);
    jb_config_watcher_stats st;
    jb_config_watcher_stats_get(r.w, &st);
    assert_int_equal(st.reloads, 1);
    uv_close((uv_handle_t *)&w.timer, NULL);
    reload_finish(&r);
}

static void test_reload_request_rereads_secret_files(void **state)
{
    fixture *f = *state;
    write_file(f, "claude.key", "first\n");
    reload_env r;
    reload_start(&r, f, NULL, "resource_coordinator: {claude: {api_key: '${file:claude.key}'}}\n");
    jb_config_watcher_stop(r.w); /* only the explicit request below may reload */
    write_file(f, "claude.key", "second\n");
    assert_int_equal(jb_config_watcher_reload(r.w), JB_OK);
    assert_int_equal(r.subscriber_calls, 1);
    assert_string_equal(r.changed, "resource_coordinator.claude.api_key;");
    assert_string_equal(jb_config_get_string(jb_config_watcher_current(r.w),
                                             "resource_coordinator.claude.api_key", NULL, NULL),
                        "second");
    /* Nothing changed: no call, same version. */
    assert_int_equal(jb_config_watcher_reload(r.w), JB_OK);
    assert_int_equal(r.subscriber_calls, 1);
    assert_int_equal(jb_config_version(jb_config_watcher_current(r.w)), 2);

    /* Unsubscribed: no more calls. */
    jb_config_watcher_unsubscribe(r.w, on_change, &r);
    write_file(f, "claude.key", "third\n");
    assert_int_equal(jb_config_watcher_reload(r.w), JB_OK);
    assert_int_equal(r.subscriber_calls, 1);
    assert_int_equal(jb_config_version(jb_config_watcher_current(r.w)), 3);

    /* An invalid state on request: JB_ECONFIG, old snapshot kept. */
    char path[256];
    snprintf(path, sizeof(path), "%s/claude.key", f->dir);
    assert_int_equal(remove(path), 0);
    assert_int_equal(jb_config_watcher_reload(r.w), JB_ECONFIG);
    assert_int_equal(jb_config_version(jb_config_watcher_current(r.w)), 3);
    reload_finish(&r);
}

static void quiet_sink(jb_log_level level, const char *line, void *userdata)
{
    (void)level;
    (void)line;
    (void)userdata;
}

int main(void)
{
    /* The reload tests log failures on purpose; keep the output readable. */
    if (getenv("JB_TEST_VERBOSE") == NULL)
        jb_log_set_sink(quiet_sink, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults_from_empty_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_keys_in_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shipped_config_is_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_layer_overrides_base, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_env_file_is_fine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_env_name_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_component_and_feature_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_only_key_not_per_component, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_did_you_mean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ranges_and_allowed_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scalar_spellings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_errors_at_once_across_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_required_key_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_problems, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_substitution, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_secrets_and_masking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreach_marks_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_getter_misuse_is_a_bug, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_aggregation_and_windows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_shorthand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_merges_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_valid_edit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_map_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_rename_save, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_env_file_appears_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_invalid_edit_keeps_old, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_restart_only_key_is_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_burst_in_one_go, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_spread_writes_coalesce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_request_rereads_secret_files, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
