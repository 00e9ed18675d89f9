/*
 * coord_rpc: the resource coordinator through jimbotd and the C client.
 *
 *   coord_rpc [--addr ADDR] [-r ROUNDS] [-t THREADS] [-d SECONDS]
 *
 * Lease hand-over: a holder and a waiter (each its own jb_client, its own
 * connection); the waiter is queued, then the holder's lease is released
 * (ReleaseGpu, asynchronous) and the clock runs until the waiter's GRANTED
 * event arrives: the release's trip to the daemon, the durable grant (the
 * state file written and fsync'd) and the event's trip back. The waiter
 * then holds the device and a new waiter queues. ROUNDS (500) rounds,
 * reported as p50/p99/max.
 *
 * Budget: THREADS (4) threads, each with its own jb_client, call
 * AcquireApiQuota (count 1, no wait) back to back for SECONDS (3) seconds;
 * reports calls/s (all threads) and the call latency p50/p99. A call is
 * answered only once its spend is durable, so calls of several threads
 * share an fsync (group commit). The daemon needs a budget that does not run
 * out: bench/coord.sh starts one with hourly_limit 1000000 and runs this.
 *
 * Needs --addr of a jimbotd made for it (one GPU device free, a large
 * budget): it spends budget and holds the GPU, so it never picks the default
 * address, where a real daemon may serve real work. Without --addr, or
 * when nothing answers Health there, it says so and exits 0, so that
 * `make bench` runs without one.
 */
#include "jimbot/client.h"

#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *v, size_t n)
{
    if (n == 0)
        return;
    qsort(v, n, sizeof(double), cmp_double);
    printf("%s p50 %.3f ms  p99 %.3f ms  max %.3f ms  (%zu samples)\n", what, v[n / 2] * 1e3,
           v[(size_t)((double)n * 0.99)] * 1e3, v[n - 1] * 1e3, n);
}

/* Waits for the next event of @kind on @lease (pull mode), skipping keepalives. */
static jb_status wait_kind(jb_client_gpu *lease, jb_client_gpu_kind kind, jb_error *err)
{
    for (;;) {
        jb_client_gpu_event ev;
        jb_status st = jb_client_gpu_wait(lease, 30000, &ev, err);
        if (st != JB_OK)
            return st;
        if (ev.kind == kind)
            return JB_OK;
        if (ev.kind == JB_CLIENT_GPU_ENDED)
            return jb_error_set(err, ev.status, "lease ended: %s", ev.err.message);
    }
}

static int handover(const char *addr, int rounds)
{
    jb_client_options o = {.addr = addr};
    jb_client *a, *b;
    jb_error err;
    if (jb_client_new(&o, &a, &err) != JB_OK || jb_client_new(&o, &b, &err) != JB_OK) {
        fprintf(stderr, "coord_rpc: %s\n", err.message);
        return 1;
    }
    jb_client_gpu_options go = {.component = "bench"};
    jb_client_gpu *holder;
    if (jb_client_gpu_acquire(a, &go, 30000, &holder, &err) != JB_OK) {
        fprintf(stderr, "coord_rpc: acquire: %s\n", err.message);
        return 1;
    }
    double *v = calloc((size_t)rounds, sizeof(double));
    int n = 0, rc = 0;
    jb_client *clients[2] = {a, b};
    for (int i = 0; i < rounds; i++) {
        jb_client_gpu *waiter;
        if (jb_client_gpu_acquire_async(clients[(i + 1) % 2], &go, NULL, NULL, &waiter, &err) !=
                JB_OK ||
            wait_kind(waiter, JB_CLIENT_GPU_QUEUED, &err) != JB_OK) {
            fprintf(stderr, "coord_rpc: queue: %s\n", err.message);
            rc = 1;
            break;
        }
        double t0 = now_s();
        if (jb_client_gpu_release_async(holder, NULL, NULL, &err) != JB_OK ||
            wait_kind(waiter, JB_CLIENT_GPU_GRANTED, &err) != JB_OK) {
            fprintf(stderr, "coord_rpc: hand-over: %s\n", err.message);
            rc = 1;
            break;
        }
        v[n++] = now_s() - t0;
        /* Its ENDED comes after the release's answer: the handle is free to go. */
        (void)wait_kind(holder, JB_CLIENT_GPU_ENDED, &err);
        jb_client_gpu_free(holder);
        holder = waiter;
    }
    jb_client_gpu_release(holder, NULL, &err);
    jb_client_gpu_free(holder);
    report("lease hand-over (release to next grant):", v, (size_t)n);
    free(v);
    jb_client_free(a);
    jb_client_free(b);
    return rc;
}

typedef struct quota_thread {
    pthread_t t;
    const char *addr;
    double until;
    double *lat;
    size_t n, cap;
    int failed;
} quota_thread;

static void *quota_run(void *arg)
{
    quota_thread *q = arg;
    jb_client_options o = {.addr = q->addr};
    jb_client *c;
    jb_error err;
    if (jb_client_new(&o, &c, &err) != JB_OK) {
        q->failed = 1;
        return NULL;
    }
    jb_client_quota_request r = {.component = "bench", .count = 1};
    while (now_s() < q->until) {
        jb_client_quota out = {0};
        double t0 = now_s();
        if (jb_client_quota_acquire(c, &r, &out, &err) != JB_OK) {
            fprintf(stderr, "coord_rpc: quota: %s\n", err.message);
            q->failed = 1;
            break;
        }
        if (!out.granted) {
            fprintf(stderr, "coord_rpc: quota not granted: is hourly_limit high enough?\n");
            q->failed = 1;
            break;
        }
        if (q->n == q->cap) {
            q->cap = q->cap ? q->cap * 2 : 4096;
            q->lat = realloc(q->lat, q->cap * sizeof(double));
        }
        q->lat[q->n++] = now_s() - t0;
    }
    jb_client_free(c);
    return NULL;
}

static int budget(const char *addr, int threads, double seconds)
{
    quota_thread *q = calloc((size_t)threads, sizeof(*q));
    double t0 = now_s();
    for (int i = 0; i < threads; i++) {
        q[i].addr = addr;
        q[i].until = t0 + seconds;
        pthread_create(&q[i].t, NULL, quota_run, &q[i]);
    }
    size_t total = 0;
    int rc = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(q[i].t, NULL);
        total += q[i].n;
        rc |= q[i].failed;
    }
    double el = now_s() - t0;
    double *all = calloc(total ? total : 1, sizeof(double));
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, q[i].lat, q[i].n * sizeof(double));
        k += q[i].n;
        free(q[i].lat);
    }
    printf("AcquireApiQuota, %d threads: %.0f calls/s (%zu calls in %.2f s)\n", threads,
           (double)total / el, total, el);
    report("AcquireApiQuota latency:", all, total);
    free(all);
    free(q);
    return rc;
}

int main(int argc, char **argv)
{
    const char *addr = NULL;
    int rounds = 500, threads = 4;
    double seconds = 3;
    static const struct option longopts[] = {{"addr", required_argument, NULL, 'a'},
                                             {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "r:t:d:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'a':
            addr = optarg;
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 't':
            threads = atoi(optarg);
            break;
        case 'd':
            seconds = atof(optarg);
            break;
        default:
            fprintf(stderr, "usage: coord_rpc [--addr ADDR] [-r ROUNDS] [-t THREADS] [-d S]\n");
            return 2;
        }
    }
    if (addr == NULL) {
        printf("coord_rpc: skipped, needs --addr of a jimbotd made for it (bench/coord.sh)\n");
        return 0;
    }
    jb_client_options o = {.addr = addr};
    jb_client *cl;
    jb_error err;
    jb_health h;
    if (jb_client_new(&o, &cl, &err) != JB_OK)
        return 1;
    if (jb_client_health(cl, "", &h, &err) != JB_OK || h != JB_HEALTH_SERVING) {
        printf("coord_rpc: skipped, no serving jimbotd at %s\n", jb_client_addr(cl));
        jb_client_free(cl);
        return 0;
    }
    jb_client_free(cl);
    int rc = handover(addr, rounds);
    rc |= budget(addr, threads, seconds);
    return rc;
}
