/*
 * bus_engine: the bus engine in process, end to end.
 *
 *   bus_engine [PARENT_DIR] [EVENTS] [PAYLOAD_BYTES]
 *
 * Publishes EVENTS (1,000,000) events of PAYLOAD_BYTES (100) through the
 * durable log with group commit (fsync policy "batch"), delivers them to one
 * consumer group and acks every batch as it arrives, all on one loop thread
 * (the store's writes and fsyncs run on libuv's threadpool). Runs twice: with
 * a 0 ms window (immediate delivery) and with the default 100 ms window.
 *
 * The publisher offers batches of 1,000 events while fewer than 64 publishes
 * wait for durability, and backs off on JB_EBACKPRESSURE. Each payload
 * carries its publish time (CLOCK_MONOTONIC), so the consumer measures
 * publish-to-delivery latency per event.
 *
 * Reports, per run: events/s from the first publish to the last ack,
 * p50/p99/p99.9 publish-to-delivery latency (a fixed-size histogram, so the
 * benchmark's own memory does not grow with EVENTS), bytes written to the
 * log per event, fsyncs, and the process's peak RSS. The data lives in a fresh
 * directory under PARENT_DIR (default: the current directory, a real disk),
 * removed at the end.
 *
 * Then twice more, paced at 100,000 events/s (100 every millisecond) for
 * 2 s, to show latency when the bus is not saturated.
 */
#include "jimbot/bus.h"
#include "jimbot/log.h"
#include "jimbot/store.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Latency histogram: 64 linear sub-buckets per power of two of microseconds,
 * so percentiles are within ~1.6% and memory does not grow with the run. */
#define HIST_SUB        64
#define HIST_BUCKETS    (HIST_SUB * 40)
#define PUBLISH_BATCH   1000
#define MAX_OUTSTANDING 64

typedef struct run {
    uv_loop_t loop;
    jb_store *store;
    jb_bus *bus;
    uv_idle_t idle;
    uint64_t target, published, delivered, acked;
    size_t payload_len;
    int outstanding;
    uint64_t hist[HIST_BUCKETS]; /* publish-to-delivery latency */
    double t_start, t_end;
    uint64_t backpressured;
    int closed;
    uint32_t rate;    /* paced runs: events per second (0: as fast as possible) */
    uv_timer_t pacer; /* paced runs: publishes rate/1000 events every millisecond */
} run;

static size_t hist_index(uint64_t us)
{
    if (us < HIST_SUB)
        return (size_t)us;
    int log2 = 63 - __builtin_clzll(us); /* us in [2^log2, 2^(log2+1)) */
    int shift = log2 - 6;                /* HIST_SUB == 2^6 */
    size_t i = (size_t)(log2 - 5) * HIST_SUB + (size_t)((us >> shift) - HIST_SUB);
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

/* The lower bound (microseconds) of bucket @i. */
static uint64_t hist_value(size_t i)
{
    if (i < HIST_SUB)
        return i;
    size_t log2 = i / HIST_SUB + 5;
    return ((uint64_t)(i % HIST_SUB) + HIST_SUB) << (log2 - 6);
}

static double hist_percentile_ms(const uint64_t *hist, uint64_t total, double q)
{
    uint64_t want = (uint64_t)((double)total * q), seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > want)
            return (double)hist_value(i) / 1000.0;
    }
    return (double)hist_value(HIST_BUCKETS - 1) / 1000.0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_idle(uv_idle_t *h);

static void on_published(jb_status status, const uint64_t *seqs, const uint8_t *dups, size_t n,
                         const jb_error *err, void *userdata)
{
    (void)seqs, (void)dups, (void)n;
    run *r = userdata;
    if (status != JB_OK) {
        fprintf(stderr, "bus_engine: publish failed: %s\n", err ? err->message : "");
        exit(1);
    }
    r->outstanding--;
    /* Room again: resume publishing on the next loop turn. */
    if (r->rate == 0 && r->published < r->target && !uv_is_active((uv_handle_t *)&r->idle))
        uv_idle_start(&r->idle, on_idle);
}

static void on_idle(uv_idle_t *h)
{
    run *r = h->data;
    static jb_event evs[PUBLISH_BATCH];
    static char payloads[PUBLISH_BATCH][4096];
    while (r->published < r->target && r->outstanding < MAX_OUTSTANDING) {
        size_t n =
            r->target - r->published < PUBLISH_BATCH ? r->target - r->published : PUBLISH_BATCH;
        uint64_t t = now_ns();
        for (size_t i = 0; i < n; i++) {
            memcpy(payloads[i], &t, sizeof(t));
            evs[i] = (jb_event){.topic = "game_events.hand_played",
                                .type = "jimbot.GameStateUpdate",
                                .source = "bench",
                                .timestamp_ms = 1,
                                .payload = payloads[i],
                                .payload_len = r->payload_len};
        }
        jb_status st = jb_bus_publish(r->bus, evs, n, on_published, r, NULL, NULL);
        if (st == JB_EBACKPRESSURE) {
            r->backpressured++;
            if (r->outstanding > 0)
                uv_idle_stop(h); /* The next durable publish resumes us. */
            return;
        }
        if (st != JB_OK) {
            fprintf(stderr, "bus_engine: publish: %s\n", jb_strerror(st));
            exit(1);
        }
        r->outstanding++;
        r->published += n;
    }
    /* Done, or waiting for durability: sleep instead of spinning. */
    if (r->published >= r->target || r->outstanding >= MAX_OUTSTANDING)
        uv_idle_stop(h);
}

/* Paced publisher: rate/1000 events each millisecond, one publish call. */
static void on_pace(uv_timer_t *t)
{
    run *r = t->data;
    static jb_event evs[PUBLISH_BATCH];
    static char payloads[PUBLISH_BATCH][4096];
    size_t n = r->rate / 1000;
    if (n > r->target - r->published)
        n = r->target - r->published;
    uint64_t now = now_ns();
    for (size_t i = 0; i < n; i++) {
        memcpy(payloads[i], &now, sizeof(now));
        evs[i] = (jb_event){.topic = "game_events.hand_played",
                            .type = "jimbot.GameStateUpdate",
                            .source = "bench",
                            .timestamp_ms = 1,
                            .payload = payloads[i],
                            .payload_len = r->payload_len};
    }
    if (n > 0 && jb_bus_publish(r->bus, evs, n, on_published, r, NULL, NULL) == JB_OK) {
        r->outstanding++;
        r->published += n;
    }
    if (r->published >= r->target)
        uv_timer_stop(t);
}

static void on_deliver(jb_bus_sub *sub, const jb_event *const *events, size_t n, void *userdata)
{
    run *r = userdata;
    uint64_t t = now_ns();
    static uint64_t seqs[65536];
    for (size_t i = 0; i < n; i++) {
        uint64_t sent;
        memcpy(&sent, events[i]->payload, sizeof(sent));
        r->hist[hist_index((t - sent) / 1000)]++;
        r->delivered++;
        seqs[i] = events[i]->sequence;
    }
    jb_bus_ack(r->bus, jb_bus_sub_group(sub), seqs, n, NULL, NULL, NULL);
    r->acked += n;
    if (r->acked >= r->target)
        r->t_end = (double)now_ns() / 1e9;
}

static void on_bus_closed(void *userdata)
{
    ((run *)userdata)->closed = 1;
}

static void on_store_closed(jb_status st, void *userdata)
{
    (void)st;
    ((run *)userdata)->closed = 2;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char path[8192];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < sizeof(path))
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void one_run(const char *parent, uint64_t events, size_t payload_len, uint32_t window,
                    uint32_t rate)
{
    static run r;
    memset(&r, 0, sizeof(r));
    r.target = events;
    r.payload_len = payload_len;
    r.rate = rate;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/bus_engine.XXXXXX", parent);
    if (mkdtemp(dir) == NULL) {
        perror("bus_engine: setup");
        exit(1);
    }
    uv_loop_init(&r.loop);
    jb_error err;
    jb_store_options so = {.dir = dir, .fsync = JB_STORE_FSYNC_BATCH};
    if (jb_store_open(&r.loop, &so, &r.store, &err) != JB_OK) {
        fprintf(stderr, "bus_engine: %s\n", err.message);
        exit(1);
    }
    jb_bus_options bo = {.store = r.store, .batch_window_ms = window, .max_in_flight = 200000};
    if (jb_bus_new(&r.loop, &bo, &r.bus, &err) != JB_OK) {
        fprintf(stderr, "bus_engine: %s\n", err.message);
        exit(1);
    }
    jb_bus_sub_options sub = {.pattern = "game_events.>", .group = "bench"};
    jb_bus_sub *s;
    if (jb_bus_subscribe(r.bus, &sub, on_deliver, &r, &s, &err) != JB_OK) {
        fprintf(stderr, "bus_engine: %s\n", err.message);
        exit(1);
    }
    uv_idle_init(&r.loop, &r.idle);
    r.idle.data = &r;
    uv_timer_init(&r.loop, &r.pacer);
    r.pacer.data = &r;
    r.t_start = (double)now_ns() / 1e9;
    if (rate > 0)
        uv_timer_start(&r.pacer, on_pace, 1, 1);
    else
        uv_idle_start(&r.idle, on_idle);
    while (r.acked < r.target)
        uv_run(&r.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&r.idle, NULL);
    uv_close((uv_handle_t *)&r.pacer, NULL);

    jb_store_stats ss;
    jb_store_get_stats(r.store, &ss);
    jb_bus_close(r.bus, on_bus_closed, &r);
    while (r.closed < 1)
        uv_run(&r.loop, UV_RUN_ONCE);
    jb_store_close(r.store, on_store_closed, &r);
    while (r.closed < 2)
        uv_run(&r.loop, UV_RUN_ONCE);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    uv_loop_close(&r.loop);
    remove_dir(dir);

    double secs = r.t_end - r.t_start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf(
        "%-9s window %3u ms: %9.0f events/s  latency p50 %6.2f ms  p99 %7.2f ms  p99.9 %7.2f ms  "
        "%5.1f bytes/event  %3llu fsyncs  peak RSS %ld MiB\n",
        rate ? "paced" : "flat-out", window == JB_BUS_WINDOW_IMMEDIATE ? 0 : window,
        (double)events / secs, hist_percentile_ms(r.hist, r.delivered, 0.50),
        hist_percentile_ms(r.hist, r.delivered, 0.99),
        hist_percentile_ms(r.hist, r.delivered, 0.999), (double)ss.bytes / (double)events,
        (unsigned long long)ss.fsyncs, ru.ru_maxrss / 1024);
}

int main(int argc, char **argv)
{
    const char *parent = argc > 1 ? argv[1] : ".";
    uint64_t events = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000;
    size_t payload = argc > 3 ? strtoul(argv[3], NULL, 10) : 100;
    if (events == 0 || payload < 8 || payload > 4096) {
        fprintf(stderr, "usage: bus_engine [PARENT_DIR] [EVENTS] [PAYLOAD_BYTES 8..4096]\n");
        return 2;
    }
    jb_log_set_level(JB_LOG_WARN);
    printf("bus_engine: %llu events of %zu bytes, fsync=batch, 1 group, ack per batch\n",
           (unsigned long long)events, payload);
    /* Throughput: as fast as the publisher can go (latency is then mostly queueing). */
    one_run(parent, events, payload, JB_BUS_WINDOW_IMMEDIATE, 0);
    one_run(parent, events, payload, 100, 0);
    /* Latency: paced at 100,000 events/s for 2 s. */
    uint64_t paced = events < 200000 ? events : 200000;
    one_run(parent, paced, payload, JB_BUS_WINDOW_IMMEDIATE, 100000);
    one_run(parent, paced, payload, 100, 100000);
    return 0;
}
