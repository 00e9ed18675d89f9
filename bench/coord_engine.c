/*
 * coord_engine: the resource coordinator in process (no gRPC).
 *
 *   coord_engine [PARENT_DIR] [ROUNDS] [QUOTA_CALLS]
 *
 * Lease hand-over: one device, one holder and one waiter at a time; each
 * round releases the holder (jb_coord_gpu_release) and measures the time
 * until the waiter's GRANTED callback, which comes once the grant is
 * durable in the state file (write, fsync, rename, folder fsync on the
 * threadpool). ROUNDS (2000) rounds, reported as p50/p99/max; then again
 * without a state file, which shows the engine's own share.
 *
 * Budget: QUOTA_CALLS (200,000) AcquireApiQuota requests of one each,
 * with 256 outstanding at a time, each answered once its spend is durable
 * (group commit: the spends made while a write runs ride the next one).
 * Reports grants/s and the state writes it took; again without a state
 * file.
 *
 * The data lives in a fresh directory under PARENT_DIR (default: the
 * current directory, a real disk), removed at the end.
 */
#include "jimbot/config.h"
#include "jimbot/coord.h"
#include "jimbot/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUOTA_OUTSTANDING 256

typedef struct bench {
    uv_loop_t loop;
    jb_coord *co;
    /* hand-over */
    jb_gpu_lease *holder, *waiter;
    char holder_id[128];
    int rounds, done;
    double released_at;
    double *samples;
    /* budget */
    uint64_t quota_target, quota_sent, quota_granted, quota_refused;
    int outstanding;
    int failed;
} bench;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(bench *b, const char *what, const jb_error *err)
{
    fprintf(stderr, "coord_engine: %s: %s\n", what, err != NULL ? err->message : "failed");
    b->failed = 1;
    uv_stop(&b->loop);
}

static void on_gpu(jb_gpu_lease *lease, const jb_gpu_event *ev, void *ud);

static void enqueue_waiter(bench *b)
{
    jb_gpu_request r = {.component = "bench", .priority = 0};
    jb_error err;
    if (jb_coord_gpu_acquire(b->co, &r, on_gpu, b, &b->waiter, &err) != JB_OK)
        fail(b, "acquire", &err);
}

static void release_holder(bench *b)
{
    jb_error err;
    b->released_at = now_s();
    if (jb_coord_gpu_release(b->co, b->holder_id, NULL, &err) != JB_OK)
        fail(b, "release", &err);
}

static void on_gpu(jb_gpu_lease *lease, const jb_gpu_event *ev, void *ud)
{
    bench *b = ud;
    if (ev->kind == JB_GPU_GRANTED) {
        if (b->holder != NULL && lease == b->waiter) {
            b->samples[b->done++] = now_s() - b->released_at;
        }
        b->holder = lease;
        snprintf(b->holder_id, sizeof(b->holder_id), "%s", ev->lease_id);
        if (b->done >= b->rounds) {
            release_holder(b);
            return;
        }
        enqueue_waiter(b);
    } else if (ev->kind == JB_GPU_QUEUED && lease == b->waiter) {
        release_holder(b);
    } else if (ev->kind == JB_GPU_ENDED && lease == b->holder && b->done >= b->rounds) {
        uv_stop(&b->loop);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void on_quota(jb_status st, const jb_quota_result *r, const jb_error *err, void *ud);

static void quota_fill(bench *b)
{
    while (b->outstanding < QUOTA_OUTSTANDING && b->quota_sent < b->quota_target) {
        jb_quota_request r = {.component = "bench", .count = 1};
        jb_error err;
        if (jb_coord_quota_acquire(b->co, &r, on_quota, b, NULL, &err) != JB_OK) {
            fail(b, "quota", &err);
            return;
        }
        b->outstanding++;
        b->quota_sent++;
    }
}

static void on_quota(jb_status st, const jb_quota_result *r, const jb_error *err, void *ud)
{
    bench *b = ud;
    b->outstanding--;
    if (st != JB_OK) {
        fail(b, "quota answer", err);
        return;
    }
    if (r->granted)
        b->quota_granted++;
    else
        b->quota_refused++;
    if (b->quota_granted + b->quota_refused == b->quota_target)
        uv_stop(&b->loop);
    else
        quota_fill(b);
}

static jb_config *bench_config(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/bench.yaml", dir);
    FILE *fp = fopen(path, "w");
    if (fp == NULL)
        return NULL;
    fputs("resource_coordinator:\n"
          "  gpu:\n"
          "    devices: 1\n"
          "    nvml_library: ''\n"
          "  claude:\n"
          "    hourly_limit: 1000000\n",
          fp);
    fclose(fp);
    jb_config_options o = {.path = path};
    jb_config *cfg = NULL;
    jb_error err;
    if (jb_config_load(&o, &cfg, NULL, &err) != JB_OK) {
        fprintf(stderr, "coord_engine: %s\n", err.message);
        return NULL;
    }
    return cfg;
}

static void on_closed(void *ud)
{
    (void)ud;
}

static int run_one(const char *dir, const char *state, int rounds, uint64_t quota_calls)
{
    bench b;
    memset(&b, 0, sizeof(b));
    uv_loop_init(&b.loop);
    jb_config *cfg = bench_config(dir);
    jb_coord_options o = {.state_path = state, .nvml_library = "", .devices = 1};
    jb_error err;
    if (cfg == NULL || jb_coord_new(&b.loop, &o, &b.co, &err) != JB_OK ||
        jb_coord_apply_config(b.co, cfg, &err) != JB_OK) {
        fprintf(stderr, "coord_engine: cannot start: %s\n", cfg ? err.message : "config");
        jb_config_unref(cfg);
        return 1;
    }
    jb_config_unref(cfg);
    b.rounds = rounds;
    b.samples = calloc((size_t)rounds, sizeof(double));
    jb_gpu_request r = {.component = "bench"};
    jb_gpu_lease *first;
    if (jb_coord_gpu_acquire(b.co, &r, on_gpu, &b, &first, &err) != JB_OK) {
        fprintf(stderr, "coord_engine: acquire: %s\n", err.message);
        return 1;
    }
    uv_run(&b.loop, UV_RUN_DEFAULT);
    const char *label = state != NULL ? "state file (fsync)" : "no state file";
    if (!b.failed && b.done > 0) {
        qsort(b.samples, (size_t)b.done, sizeof(double), cmp_double);
        printf("hand-over, %-18s  rounds %6d  p50 %8.1f us  p99 %8.1f us  max %8.1f us\n", label,
               b.done, b.samples[b.done / 2] * 1e6, b.samples[(size_t)(b.done * 0.99)] * 1e6,
               b.samples[b.done - 1] * 1e6);
    }
    b.quota_target = quota_calls;
    double t0 = now_s();
    quota_fill(&b);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    double el = now_s() - t0;
    if (!b.failed)
        printf("budget,    %-18s  calls %7llu  %10.0f calls/s  granted %llu refused %llu\n", label,
               (unsigned long long)quota_calls, (double)quota_calls / el,
               (unsigned long long)b.quota_granted, (unsigned long long)b.quota_refused);
    jb_coord_close(b.co, on_closed, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    uv_loop_close(&b.loop);
    free(b.samples);
    return b.failed;
}

int main(int argc, char **argv)
{
    const char *parent = argc > 1 ? argv[1] : ".";
    int rounds = argc > 2 ? atoi(argv[2]) : 2000;
    uint64_t calls = argc > 3 ? strtoull(argv[3], NULL, 10) : 200000;
    jb_log_set_level(JB_LOG_WARN);
    char dir[4096], state[4200];
    snprintf(dir, sizeof(dir), "%s/coord_engine.XXXXXX", parent);
    if (mkdtemp(dir) == NULL) {
        perror("coord_engine: mkdtemp");
        return 1;
    }
    snprintf(state, sizeof(state), "%s/coord.state", dir);
    int rc = run_one(dir, state, rounds, calls);
    rc |= run_one(dir, NULL, rounds, calls);
    char yaml[4200];
    snprintf(yaml, sizeof(yaml), "%s/bench.yaml", dir);
    unlink(state);
    unlink(yaml);
    if (rmdir(dir) != 0)
        perror("coord_engine: rmdir");
    return rc;
}
