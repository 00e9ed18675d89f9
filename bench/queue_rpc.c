/*
 * queue_rpc: the request queue through jimbotd and the C client.
 *
 *   queue_rpc [--addr ADDR] [-q QUEUE] [-n REQUESTS] [-k "1 4 32"] [-d SECONDS]
 *             [-s BYTES] [-o MAX_OUTSTANDING]
 *
 * A no-op worker runs in this process: one TakeRequests stream on its own
 * jb_client (its own connection), whose callback answers each task at once
 * with the task's own payload (Respond, asynchronous, from the callback), at
 * most MAX_OUTSTANDING (1000) held at a time. Every request sets
 * bypass_cache, so that each one reaches the worker: nothing is answered
 * from the cache or joined to an equal request.
 *
 * Latency: one submitter (its own jb_client) sends REQUESTS (2000) blocking
 * submits of BYTES (100) bytes one after the other; the clock runs from the
 * call until its answer: the submit's trip to the daemon, the hand-over to
 * the worker's stream, the Respond's trip and the answer's way back.
 * Reported as p50/p99/max.
 *
 * Throughput: for each K in the list (1 4 32), K threads, each with its own
 * jb_client, submit back to back for SECONDS (3) seconds; reports
 * requests/s (all threads) and the submit latency p50/p99.
 *
 * The queue must have `budget: none` (a budget queue spends one unit per
 * request) and a max_depth of at least the largest K: bench/coord.sh
 * starts a jimbotd with one and runs this. Without --addr, or when nothing
 * answers Health there, it says so and exits 0, so that `make bench` runs
 * without a daemon.
 */
#include "jimbot/client.h"

#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench_opts {
    const char *addr;
    const char *queue;
    int requests;
    double seconds;
    size_t size;
    uint32_t max_outstanding;
} bench_opts;

/* Latencies in seconds, grown as needed. */
typedef struct samples {
    double *v;
    size_t n, cap;
} samples;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void samples_add(samples *s, double x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (s->v == NULL)
            abort();
    }
    s->v[s->n++] = x;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints @label with p50, p99 and max of @s in milliseconds (sorts @s). */
static void samples_print(const char *label, samples *s)
{
    if (s->n == 0) {
        printf("%s no samples\n", label);
        return;
    }
    qsort(s->v, s->n, sizeof(double), by_value);
    double p50 = s->v[s->n / 2], p99 = s->v[(size_t)((double)(s->n - 1) * 0.99)];
    printf("%s p50 %.3f ms  p99 %.3f ms  max %.3f ms  (%zu requests)\n", label, p50 * 1e3,
           p99 * 1e3, s->v[s->n - 1] * 1e3, s->n);
}

/* ---- The no-op worker ------------------------------------------------------- */

static void on_task(jb_client_worker *w, const jb_client_worker_event *ev, void *userdata)
{
    (void)w;
    jb_client *c = userdata;
    if (ev->kind == JB_CLIENT_WORKER_ENDED) {
        fprintf(stderr, "queue_rpc: the worker's stream ended: %s\n", ev->err.message);
        return;
    }
    if (ev->kind != JB_CLIENT_WORKER_TASK)
        return;
    jb_client_response r = {.request_id = ev->task->request_id,
                            .type = ev->task->type,
                            .payload = ev->task->payload,
                            .payload_len = ev->task->payload_len};
    jb_error err;
    if (jb_client_respond_async(c, &r, NULL, NULL, &err) != JB_OK)
        fprintf(stderr, "queue_rpc: respond: %s\n", err.message);
}

/* ---- Submitters ------------------------------------------------------------- */

typedef struct submitter {
    pthread_t t;
    const bench_opts *o;
    double until; /* 0: o->requests submits instead */
    samples lat;
    int failed;
} submitter;

static void *submit_run(void *arg)
{
    submitter *s = arg;
    jb_client_options co = {.addr = s->o->addr};
    jb_client *c;
    jb_error err;
    if (jb_client_new(&co, &c, &err) != JB_OK) {
        s->failed = 1;
        return NULL;
    }
    char *payload = malloc(s->o->size + 1);
    memset(payload, 'x', s->o->size);
    jb_client_request r = {.queue = s->o->queue,
                           .type = "bench",
                           .payload = payload,
                           .payload_len = s->o->size,
                           .submitter = "queue_rpc",
                           .bypass_cache = 1};
    for (int i = 0; s->until > 0 ? mono_s() < s->until : i < s->o->requests; i++) {
        jb_client_response *resp;
        jb_client_submit_refusal why;
        double t0 = mono_s();
        if (jb_client_submit(c, &r, &resp, &why, &err) != JB_OK) {
            fprintf(stderr, "queue_rpc: submit: %s\n", err.message);
            s->failed = 1;
            break;
        }
        samples_add(&s->lat, mono_s() - t0);
        if (resp->payload_len != s->o->size)
            s->failed = 1;
        jb_client_response_free(resp);
    }
    free(payload);
    jb_client_free(c);
    return NULL;
}

static int sequential(const bench_opts *o)
{
    submitter s = {.o = o};
    submit_run(&s);
    samples_print("submit to response, sequential:", &s.lat);
    free(s.lat.v);
    return s.failed;
}

static int concurrent(const bench_opts *o, int k)
{
    submitter *s = calloc((size_t)k, sizeof(*s));
    double t0 = mono_s();
    for (int i = 0; i < k; i++) {
        s[i] = (submitter){.o = o, .until = t0 + o->seconds};
        pthread_create(&s[i].t, NULL, submit_run, &s[i]);
    }
    samples all = {0};
    int rc = 0;
    for (int i = 0; i < k; i++) {
        pthread_join(s[i].t, NULL);
        for (size_t j = 0; j < s[i].lat.n; j++)
            samples_add(&all, s[i].lat.v[j]);
        free(s[i].lat.v);
        rc |= s[i].failed;
    }
    double el = mono_s() - t0;
    char label[64];
    printf("%d submitters: %.0f requests/s (%zu in %.2f s)\n", k, (double)all.n / el, all.n, el);
    snprintf(label, sizeof(label), "%d submitters, latency:", k);
    samples_print(label, &all);
    free(all.v);
    free(s);
    return rc;
}

/* ---- main ------------------------------------------------------------------- */

static int serving(const char *addr)
{
    jb_client_options o = {.addr = addr};
    jb_client *c;
    jb_error err;
    jb_health h = JB_HEALTH_UNKNOWN;
    if (jb_client_new(&o, &c, &err) != JB_OK)
        return 0;
    int ok = jb_client_health(c, "", &h, &err) == JB_OK && h == JB_HEALTH_SERVING;
    jb_client_free(c);
    return ok;
}

static int run(const bench_opts *o, const char *ks)
{
    jb_client_options co = {.addr = o->addr};
    jb_client *wc;
    jb_client_worker *w;
    jb_error err;
    jb_client_worker_options wo = {
        .queue = o->queue, .max_outstanding = o->max_outstanding, .name = "queue_rpc"};
    if (jb_client_new(&co, &wc, &err) != JB_OK ||
        jb_client_worker_start(wc, &wo, on_task, wc, &w, &err) != JB_OK ||
        jb_client_worker_wait_registered(w, 30000, &err) != JB_OK) {
        fprintf(stderr, "queue_rpc: worker: %s\n", err.message);
        return 1;
    }
    int rc = sequential(o);
    char *list = strdup(ks), *save = NULL;
    for (char *tok = strtok_r(list, " ,", &save); tok != NULL && rc == 0;
         tok = strtok_r(NULL, " ,", &save))
        rc |= concurrent(o, atoi(tok) > 0 ? atoi(tok) : 1);
    free(list);
    jb_client_worker_free(w);
    jb_client_free(wc);
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts o = {
        .queue = "bench", .requests = 2000, .seconds = 3, .size = 100, .max_outstanding = 1000};
    const char *ks = "1 4 32";
    static const struct option longopts[] = {{"addr", required_argument, NULL, 'a'},
                                             {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "q:n:k:d:s:o:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'a':
            o.addr = optarg;
            break;
        case 'q':
            o.queue = optarg;
            break;
        case 'n':
            o.requests = atoi(optarg);
            break;
        case 'k':
            ks = optarg;
            break;
        case 'd':
            o.seconds = atof(optarg);
            break;
        case 's':
            o.size = (size_t)atol(optarg);
            break;
        case 'o':
            o.max_outstanding = (uint32_t)atol(optarg);
            break;
        default:
            fprintf(stderr, "usage: queue_rpc [--addr ADDR] [-q QUEUE] [-n REQUESTS] "
                            "[-k \"1 4 32\"] [-d S] [-s BYTES] [-o MAX_OUTSTANDING]\n");
            return 2;
        }
    }
    if (o.addr == NULL) {
        printf("queue_rpc: skipped, needs --addr of a jimbotd made for it (bench/coord.sh)\n");
        return 0;
    }
    if (!serving(o.addr)) {
        printf("queue_rpc: skipped, no serving jimbotd at %s\n", o.addr);
        return 0;
    }
    return run(&o, ks);
}
