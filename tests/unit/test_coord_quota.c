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
#include "store/crc32c.h"
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
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_coord_quota_XXXXXX");
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) != 0)
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
static void load_config(fixture *f, const char *yaml)
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

/* ---- Budget harness ------------------------------------------------------- */

typedef struct answer {
    int done;
    jb_status status;
    int has_result;
    jb_quota_result r;
    int *order_log; /* appends its tag when answered */
    int *order_n;
    int tag;
} answer;

static void on_answer(jb_status status, const jb_quota_result *r, const jb_error *err, void *ud)
{
    answer *a = ud;
    (void)err;
    a->done++;
    a->status = status;
    a->has_result = r != NULL;
    if (r != NULL)
        a->r = *r;
    if (a->order_log != NULL)
        a->order_log[(*a->order_n)++] = a->tag;
}

static jb_status ask(fixture *f, const char *component, uint32_t count, uint32_t wait_ms,
                     int32_t priority, answer *a, jb_quota_wait **out)
{
    jb_quota_request req = {component, count, wait_ms, priority};
    return jb_coord_quota_acquire(f->co, &req, on_answer, a, out, NULL);
}

/* Asks for @count at once and waits for the answer. */
static jb_quota_result take(fixture *f, const char *component, uint32_t count)
{
    answer a = {0};
    assert_int_equal(ask(f, component, count, 0, 0, &a, NULL), JB_OK);
    assert_int_equal(a.done, 0); /* never from inside the call */
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_OK);
    assert_true(a.has_result);
    return a.r;
}

static uint32_t used_now(fixture *f)
{
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    return info.used;
}

/* ---- Budget tests --------------------------------------------------------- */

static void test_spends_round_trip_in_state_file(void **state)
{
    fixture *f = *state;
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_true(take(f, "alpha", 2).granted);
    assert_true(take(f, "beta", 1).granted);
    close_coord(f);

    /* Read the file back the way the coordinator does at start. */
    jb_coord co = {.loop = &f->loop, .opts = {.state_path = f->path}};
    jb__state_image img;
    assert_int_equal(jb__state_open(&co, &img, NULL), JB_OK);
    assert_int_equal(img.n_leases, 0);
    assert_int_equal(img.n_spends, 2);
    int64_t now = jb__coord_wall_ms();
    uint32_t alpha = 0, beta = 0;
    for (size_t i = 0; i < img.n_spends; i++) {
        assert_true(img.spends[i].at_ms <= now);
        assert_true(img.spends[i].at_ms > now - 60 * 1000);
        if (strcmp(img.spends[i].component, "alpha") == 0)
            alpha += img.spends[i].count;
        if (strcmp(img.spends[i].component, "beta") == 0)
            beta += img.spends[i].count;
    }
    assert_int_equal(alpha, 2);
    assert_int_equal(beta, 1);
    jb__state_image_release(&img);
    jb__state_close(co.state, NULL, NULL);
}

/* A restart does not refill the budget. */
static void test_spent_budget_survives_restart(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n");
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    jb_quota_result r = take(f, "alpha", 3);
    assert_true(r.granted);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.limit, 3);
    close_coord(f);

    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_int_equal(used_now(f), 3);
    r = take(f, "beta", 1);
    assert_false(r.granted);
    assert_true(r.retry_after_ms > 0);
    assert_int_equal(r.remaining, 0);
}

/* A spend counts exactly window_ms after it was made, not to a fixed boundary. */
static void test_sliding_window(void **state)
{
    fixture *f = *state;
    load_config(f, SMALL_WINDOW);
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    assert_true(take(f, "alpha", 2).granted);
    int64_t t0 = jb__coord_wall_ms(); /* not before the first spend */
    /* Let time pass on the wall clock, then spend the last one. */
    int later = 0;
    while (!later) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        later = jb__coord_wall_ms() >= t0 + 600;
    }
    assert_true(take(f, "alpha", 1).granted);

    /* One request frees when the first two leave; three only when the last does. */
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    jb_quota_result one = take(f, "beta", 1);
    jb_quota_result three = take(f, "beta", 3);
    if (jb__coord_wall_ms() < t0 + 1000) {
        /* Still inside the first spends' window (a slow machine skips this). */
        assert_int_equal(info.used, 3);
        assert_int_equal(info.remaining, 0);
        assert_true(info.next_slot_ms > t0);
        assert_true(info.next_slot_ms <= t0 + 1000);
        assert_false(one.granted);
        assert_false(three.granted);
        assert_true(one.retry_after_ms <= 1000);
        assert_true(three.retry_after_ms > one.retry_after_ms);
    }
    assert_int_equal(info.limit, 3);
    assert_int_equal(info.window_ms, 1000);
    /* Waiting long enough, the whole budget frees again. */
    answer a = {0};
    assert_int_equal(ask(f, "gamma", 3, 10000, 0, &a, NULL), JB_OK);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_OK);
    assert_true(a.r.granted);
    assert_int_equal(a.r.remaining, 0);
}

static void test_wait_priority(void **state)
{
    fixture *f = *state;
    load_config(f, SMALL_WINDOW);
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    assert_true(take(f, "alpha", 2).granted);
    int log[4], n = 0;
    answer low = {.order_log = log, .order_n = &n, .tag = 1};
    answer high = {.order_log = log, .order_n = &n, .tag = 2};
    /* The low one came first; both need the whole budget, one is left. */
    assert_int_equal(ask(f, "low", 3, 15000, 0, &low, NULL), JB_OK);
    assert_int_equal(ask(f, "high", 3, 15000, 5, &high, NULL), JB_OK);
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    assert_int_equal(info.waiting, 2);
    assert_int_equal(info.remaining, 1);
    /* A request that fits the budget may not overtake them. */
    jb_quota_result now = take(f, "small", 1);
    assert_false(now.granted);
    assert_int_equal(used_now(f), 2);
    run_until(f, &n, 2);
    assert_int_equal(log[0], 2);
    assert_int_equal(log[1], 1);
    assert_true(high.r.granted);
    assert_true(low.r.granted);
}

static void test_wait_deadline(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n    window_seconds: 60\n");
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    assert_true(take(f, "alpha", 3).granted);
    answer a = {0};
    assert_int_equal(ask(f, "beta", 1, 50, 0, &a, NULL), JB_OK);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_OK);
    assert_false(a.r.granted);
    assert_true(a.r.retry_after_ms > 0);
    assert_true(a.r.retry_after_ms <= 60000);
    assert_int_equal(a.r.limit, 3);
    assert_int_equal(used_now(f), 3);
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    assert_int_equal(info.waiting, 0);
}

typedef struct comps_seen {
    int n;
    char name[8][32];
    uint32_t used[8], share[8];
} comps_seen;

static void on_component(const jb_quota_component_info *c, void *ud)
{
    comps_seen *s = ud;
    snprintf(s->name[s->n], sizeof(s->name[0]), "%s", c->component);
    s->used[s->n] = c->used;
    s->share[s->n] = c->share;
    s->n++;
}

static int seen_index(const comps_seen *s, const char *name)
{
    for (int i = 0; i < s->n; i++) {
        if (strcmp(s->name[i], name) == 0)
            return i;
    }
    return -1;
}

static void test_shares(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 5\n    window_seconds: 60\n"
                   "    shares:\n      alpha:\n        limit: 2\n      idle:\n        limit: 1\n");
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    jb_error err;
    jb_quota_request big = {"alpha", 3, 0, 0};
    assert_int_equal(jb_coord_quota_acquire(f->co, &big, on_answer, NULL, NULL, &err), JB_EINVAL);
    assert_non_null(strstr(err.message, "share"));

    jb_quota_result r = take(f, "alpha", 2);
    assert_true(r.granted);
    assert_int_equal(r.remaining, 0); /* its share is used up */
    r = take(f, "alpha", 1);
    assert_false(r.granted);
    assert_true(r.retry_after_ms > 0);

    /* A waiter held by its own share does not hold back the others. */
    answer w = {0};
    assert_int_equal(ask(f, "alpha", 1, 30000, 9, &w, NULL), JB_OK);
    r = take(f, "beta", 3);
    assert_true(r.granted);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(used_now(f), 5);

    comps_seen seen = {0};
    jb_coord_foreach_quota_component(f->co, on_component, &seen);
    assert_int_equal(seen.n, 3);
    int a = seen_index(&seen, "alpha"), b = seen_index(&seen, "beta"),
        i = seen_index(&seen, "idle");
    assert_true(a >= 0 && b >= 0 && i >= 0);
    assert_int_equal(seen.used[a], 2);
    assert_int_equal(seen.share[a], 2);
    assert_int_equal(seen.used[b], 3);
    assert_int_equal(seen.share[b], 0);
    assert_int_equal(seen.used[i], 0);
    assert_int_equal(seen.share[i], 1);

    /* Closing ends the waiter with JB_ECLOSED and no result. */
    close_coord(f);
    assert_int_equal(w.done, 1);
    assert_int_equal(w.status, JB_ECLOSED);
    assert_false(w.has_result);
}

static void test_bad_input(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n");
    assert_int_equal(open_coord(f, 0, 2, NULL), JB_OK);
    answer never = {0};
    jb_error err;
    jb_quota_request req = {"", 1, 0, 0};
    assert_int_equal(jb_coord_quota_acquire(f->co, &req, on_answer, &never, NULL, &err), JB_EINVAL);
    req.component = NULL;
    assert_int_equal(jb_coord_quota_acquire(f->co, &req, on_answer, &never, NULL, &err), JB_EINVAL);
    char longname[JB_COORD_MAX_NAME + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    req.component = longname;
    assert_int_equal(jb_coord_quota_acquire(f->co, &req, on_answer, &never, NULL, &err), JB_EINVAL);
    req = (jb_quota_request){"alpha", 4, 1000, 0};
    assert_int_equal(jb_coord_quota_acquire(f->co, &req, on_answer, &never, NULL, &err), JB_EINVAL);
    assert_non_null(strstr(err.message, "hourly limit"));
    assert_int_equal(used_now(f), 0);

    /* A count of 0 means 1. */
    jb_quota_result r = take(f, "alpha", 0);
    assert_true(r.granted);
    assert_int_equal(r.remaining, 2);
    assert_int_equal(used_now(f), 1);
    assert_true(take(f, "alpha", 2).granted);

    /* max_waiters (2) wait; the third is refused and nothing changes. */
    answer w1 = {0}, w2 = {0};
    assert_int_equal(ask(f, "alpha", 1, 30000, 0, &w1, NULL), JB_OK);
    assert_int_equal(ask(f, "alpha", 1, 30000, 0, &w2, NULL), JB_OK);
    req = (jb_quota_request){"alpha", 1, 30000, 0};
    assert_int_equal(jb_coord_quota_acquire(f->co, &req, on_answer, &never, NULL, &err),
                     JB_EBACKPRESSURE);
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    assert_int_equal(info.waiting, 2);
    /* A request that does not wait is still answered. */
    r = take(f, "alpha", 1);
    assert_false(r.granted);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(never.done, 0);
    close_coord(f);
    assert_int_equal(w1.status, JB_ECLOSED);
    assert_int_equal(w2.status, JB_ECLOSED);
    assert_int_equal(never.done, 0);
}

static void test_cancel(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n    window_seconds: 60\n");
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    /* A grant being made durable stays spent, but its callback does not run. */
    answer g = {0};
    jb_quota_wait *h = NULL;
    assert_int_equal(ask(f, "alpha", 2, 0, 0, &g, &h), JB_OK);
    assert_non_null(h);
    jb_coord_quota_cancel(h);
    assert_int_equal(used_now(f), 2);

    /* A waiter withdrawn spends nothing and is never answered. */
    answer w = {0};
    assert_int_equal(ask(f, "beta", 2, 30000, 0, &w, &h), JB_OK);
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    assert_int_equal(info.waiting, 1);
    jb_coord_quota_cancel(h);
    jb_coord_quota_info(f->co, &info);
    assert_int_equal(info.waiting, 0);

    /* An answer not yet delivered is withdrawn too. */
    answer n = {0};
    assert_int_equal(ask(f, "beta", 2, 0, 0, &n, &h), JB_OK);
    jb_coord_quota_cancel(h);
    jb_coord_quota_cancel(NULL);

    /* Later requests are served and the cancelled ones stay silent. */
    jb_quota_result r = take(f, "gamma", 1);
    assert_true(r.granted);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(g.done + w.done + n.done, 0);
    close_coord(f);
    assert_int_equal(g.done + w.done + n.done, 0);
}

/* A lowered limit takes nothing back; a raised one serves the waiters. */
static void test_limit_changes(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n    window_seconds: 60\n");
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    assert_true(take(f, "alpha", 3).granted);
    answer small = {0}, big = {0};
    assert_int_equal(ask(f, "beta", 2, 30000, 0, &small, NULL), JB_OK);
    assert_int_equal(ask(f, "beta", 3, 30000, 0, &big, NULL), JB_OK);

    load_config(f, "  claude:\n    hourly_limit: 2\n    window_seconds: 60\n");
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    /* The one above the new limit can never be granted: it is answered now. */
    run_until(f, &big.done, 1);
    assert_false(big.r.granted);
    assert_int_equal(used_now(f), 3);
    jb_quota_info info;
    jb_coord_quota_info(f->co, &info);
    assert_int_equal(info.remaining, 0);
    assert_int_equal(info.limit, 2);

    load_config(f, "  claude:\n    hourly_limit: 10\n    window_seconds: 60\n");
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    run_until(f, &small.done, 1);
    assert_true(small.r.granted);
    assert_int_equal(small.r.remaining, 5);
    assert_int_equal(small.r.limit, 10);
}

/* A spend whose write failed was not spent. */
static void test_failed_spend_not_spent(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n");
    char sub[96];
    snprintf(sub, sizeof(sub), "%s/gone", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(f->path, sizeof(f->path), "%s/coord.state", sub);
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_int_equal(rmdir(sub), 0);
    /* Two grants in one turn (one record in the window), both lost. */
    answer a = {0}, b = {0};
    assert_int_equal(ask(f, "alpha", 2, 0, 0, &a, NULL), JB_OK);
    assert_int_equal(ask(f, "alpha", 1, 0, 0, &b, NULL), JB_OK);
    assert_int_equal(used_now(f), 3);
    run_until(f, &b.done, 1);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.status, JB_EIO);
    assert_false(a.has_result);
    assert_int_equal(b.status, JB_EIO);
    assert_int_equal(used_now(f), 0);
}

/* Many grants in one turn share the writes. */
static void test_grants_group_commit(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 1000\n");
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    int log[50], n = 0;
    answer a[50];
    for (int i = 0; i < 50; i++) {
        a[i] = (answer){.order_log = log, .order_n = &n, .tag = i};
        assert_int_equal(ask(f, "alpha", 1, 0, 0, &a[i], NULL), JB_OK);
    }
    run_until(f, &n, 50);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(a[i].done, 1);
        assert_true(a[i].r.granted);
        assert_int_equal(log[i], i); /* answered in the order asked */
    }
    assert_true(jb__state_writes(f->co) < 50);
    assert_int_equal(used_now(f), 50);
}

/* Little-endian writers for a file made by hand, as docs/coordinator.md describes it. */
static unsigned char *put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        *p++ = (unsigned char)(v >> (8 * i));
    return p;
}

static unsigned char *put64(unsigned char *p, int64_t v)
{
    for (int i = 0; i < 8; i++)
        *p++ = (unsigned char)((uint64_t)v >> (8 * i));
    return p;
}

static unsigned char *putstr(unsigned char *p, const char *s)
{
    if (s == NULL)
        return put32(p, 0xFFFFFFFFu);
    p = put32(p, (uint32_t)strlen(s));
    memcpy(p, s, strlen(s));
    return p + strlen(s);
}

/* A file written by the documented format loads field for field. */
static void test_state_format_by_hand(void **state)
{
    fixture *f = *state;
    unsigned char buf[512], *p = buf;
    memcpy(p, "JBCOORD\n", 8);
    p = put32(p + 8, 1);
    unsigned char *len_at = p;
    p += 4;
    p = put32(p, 1); /* one lease */
    p = put32(p, 3);
    p = put32(p, 4242);
    p = put64(p, 1700000000000);
    p = put64(p, 1700000300000);
    p = putstr(p, "lease-1");
    p = putstr(p, "training");
    p = putstr(p, NULL);
    p = put32(p, 1); /* one spend */
    p = put64(p, 1700000001000);
    p = put32(p, 7);
    p = putstr(p, "claude");
    put32(len_at, (uint32_t)(p - len_at - 4));
    p = put32(p, jb__crc32c(0, buf, (size_t)(p - buf)));
    write_bytes(f->path, buf, (size_t)(p - buf));

    jb_coord co = {.loop = &f->loop, .opts = {.state_path = f->path}};
    jb__state_image img;
    assert_int_equal(jb__state_open(&co, &img, NULL), JB_OK);
    assert_int_equal(img.n_leases, 1);
    assert_int_equal(img.leases[0].device, 3);
    assert_int_equal(img.leases[0].pid, 4242);
    assert_true(img.leases[0].granted_ms == 1700000000000);
    assert_true(img.leases[0].expires_ms == 1700000300000);
    assert_string_equal(img.leases[0].lease_id, "lease-1");
    assert_string_equal(img.leases[0].component, "training");
    assert_null(img.leases[0].reason);
    assert_int_equal(img.n_spends, 1);
    assert_true(img.spends[0].at_ms == 1700000001000);
    assert_int_equal(img.spends[0].count, 7);
    assert_string_equal(img.spends[0].component, "claude");
    jb__state_image_release(&img);
    jb__state_close(co.state, NULL, NULL);

    /* A version from a newer build is refused as such, not as damage. */
    put32(buf + 8, 2);
    size_t n = (size_t)(p - buf);
    put32(buf + n - 4, jb__crc32c(0, buf, n - 4));
    write_bytes(f->path, buf, n);
    jb_error err;
    assert_int_equal(jb__state_open(&co, &img, &err), JB_EINCOMPATIBLE);
    assert_non_null(strstr(err.message, f->path));
}

/* Closing answers a grant still being made durable with JB_ECLOSED, yet it stays spent. */
static void test_close_keeps_grant_in_flight(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 3\n");
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    answer g = {0};
    assert_int_equal(ask(f, "alpha", 2, 0, 0, &g, NULL), JB_OK);
    close_coord(f);
    assert_int_equal(g.done, 1);
    assert_int_equal(g.status, JB_ECLOSED);
    assert_false(g.has_result);
    assert_int_equal(open_coord(f, 1, 0, NULL), JB_OK);
    assert_int_equal(used_now(f), 2);
}

/* A callback may close the coordinator: the rest are answered JB_ECLOSED, none after. */
typedef struct closer {
    answer a;
    fixture *f;
} closer;

static void on_answer_then_close(jb_status status, const jb_quota_result *r, const jb_error *err,
                                 void *ud)
{
    closer *c = ud;
    on_answer(status, r, err, &c->a);
    c->f->closed = 0;
    jb_coord_close(c->f->co, on_coord_closed, c->f);
    c->f->co = NULL;
}

static void test_close_from_callback(void **state)
{
    fixture *f = *state;
    load_config(f, "  claude:\n    hourly_limit: 1\n    window_seconds: 60\n");
    assert_int_equal(open_coord(f, 0, 0, NULL), JB_OK);
    assert_true(take(f, "alpha", 1).granted);
    closer c = {.f = f};
    answer later = {0};
    jb_quota_request req = {"beta", 1, 20, 0};
    assert_int_equal(jb_coord_quota_acquire(f->co, &req, on_answer_then_close, &c, NULL, NULL),
                     JB_OK);
    assert_int_equal(ask(f, "gamma", 1, 20, 0, &later, NULL), JB_OK);
    run_until(f, &f->closed, 1);
    assert_int_equal(c.a.done, 1);
    assert_int_equal(c.a.status, JB_OK);
    assert_false(c.a.r.granted);
    assert_int_equal(later.done, 1);
    assert_int_equal(later.status, JB_ECLOSED);
}

/* A close without a callback (jb_coord_new failing) runs no pending callback. */
static void test_state_abandoned(void **state)
{
    fixture *f = *state;
    persisted p = {0};
    persist_arg a = {&p, 0};
    for (int in_flight = 0; in_flight < 2; in_flight++) {
        jb_coord co = {.loop = &f->loop, .opts = {.state_path = f->path}};
        jb__state_image img;
        assert_int_equal(jb__state_open(&co, &img, NULL), JB_OK);
        jb__coord_persist(&co, on_persisted, &a);
        if (in_flight)
            uv_run(&f->loop, UV_RUN_NOWAIT); /* the write starts */
        jb__state_close(co.state, NULL, NULL);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        assert_int_equal(p.done, 0);
    }
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
        cmocka_unit_test_setup_teardown(test_state_abandoned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spends_round_trip_in_state_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spent_budget_survives_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sliding_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_priority, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shares, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limit_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_spend_not_spent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grants_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_format_by_hand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_keeps_grant_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_callback, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
