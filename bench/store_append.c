/*
 * store_append: throughput of the durable log with group commit.
 *
 *   store_append [PARENT_DIR] [RECORDS] [PAYLOAD_BYTES] [fsync: batch|always|none]
 *
 * Appends RECORDS (1,000,000) records of PAYLOAD_BYTES (100) from the loop
 * thread, as the bus would: a batch of appends per loop turn, a flush every
 * 100 ms window and also whenever 16 MiB were appended since the last flush
 * request, a pause on JB_EBACKPRESSURE until the writer catches up. The clock
 * stops when the last record is durable. The data lives in a fresh directory
 * under PARENT_DIR (default: the current directory, so a real disk rather
 * than a tmpfs), removed at the end.
 *
 * Reports records/s, payload MB/s, fsyncs, bytes on disk per record, the
 * cost of the append calls alone and the peak RSS.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "jimbot/store.h"

#define WINDOW_MS        100
#define FLUSH_BYTES      ((size_t)16 * 1024 * 1024)
#define APPENDS_PER_TURN 4096

typedef struct bench {
    uv_loop_t *loop;
    jb_store *store;
    uv_idle_t idle;
    uv_timer_t window;
    uint64_t target, appended;
    size_t payload_len;
    char payload[4096];
    size_t since_flush;
    uint64_t backpressured, flushes;
    double append_ns;
    double t_start, t_durable;
    int closed;
} bench;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_flushed(jb_status status, uint64_t durable, const jb_error *err, void *userdata)
{
    bench *b = userdata;
    if (status != JB_OK) {
        fprintf(stderr, "store_append: flush: %s\n", err ? err->message : jb_strerror(status));
        exit(1);
    }
    if (durable >= b->target && b->t_durable == 0) {
        b->t_durable = now_s();
        uv_timer_stop(&b->window);
        uv_close((uv_handle_t *)&b->window, NULL);
    }
}

static void request_flush(bench *b)
{
    b->since_flush = 0;
    b->flushes++;
    if (jb_store_flush(b->store, on_flushed, b) != JB_OK) {
        fprintf(stderr, "store_append: flush refused\n");
        exit(1);
    }
}

static void on_window(uv_timer_t *t)
{
    request_flush(t->data);
}

static void on_idle(uv_idle_t *h)
{
    bench *b = h->data;
    double t0 = now_s();
    for (int i = 0; i < APPENDS_PER_TURN && b->appended < b->target; i++) {
        jb_error err;
        jb_status st =
            jb_store_append(b->store, (int64_t)b->appended, b->payload, b->payload_len, NULL, &err);
        if (st == JB_EBACKPRESSURE) {
            b->backpressured++;
            break;
        }
        if (st != JB_OK) {
            fprintf(stderr, "store_append: append: %s\n", err.message);
            exit(1);
        }
        b->appended++;
        b->since_flush += b->payload_len;
    }
    b->append_ns += (now_s() - t0) * 1e9;
    if (b->since_flush >= FLUSH_BYTES)
        request_flush(b);
    if (b->appended == b->target) {
        uv_idle_stop(h);
        uv_close((uv_handle_t *)h, NULL);
        request_flush(b);
    }
}

static void on_closed(jb_status status, void *userdata)
{
    bench *b = userdata;
    b->closed = 1;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4400];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    const char *parent = argc > 1 ? argv[1] : ".";
    static bench b;
    b.target = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000;
    b.payload_len = argc > 3 ? strtoul(argv[3], NULL, 10) : 100;
    if (b.payload_len > sizeof(b.payload) || b.target == 0) {
        fprintf(stderr, "usage: store_append [PARENT_DIR] [RECORDS] [PAYLOAD<=4096] [POLICY]\n");
        return 2;
    }
    for (size_t i = 0; i < b.payload_len; i++)
        b.payload[i] = (char)('A' + i % 26);

    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/store_append.XXXXXX", parent);
    if (mkdtemp(dir) == NULL) {
        perror("store_append: mkdtemp");
        return 1;
    }
    jb_store_options o = {0};
    o.dir = dir;
    jb_error err;
    if (argc > 4 && jb_store_fsync_parse(argv[4], &o.fsync, &err) != JB_OK) {
        fprintf(stderr, "store_append: %s\n", err.message);
        return 2;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    b.loop = &loop;
    if (jb_store_open(&loop, &o, &b.store, &err) != JB_OK) {
        fprintf(stderr, "store_append: open: %s\n", err.message);
        return 1;
    }
    uv_idle_init(&loop, &b.idle);
    b.idle.data = &b;
    uv_timer_init(&loop, &b.window);
    b.window.data = &b;

    b.t_start = now_s();
    uv_idle_start(&b.idle, on_idle);
    uv_timer_start(&b.window, on_window, WINDOW_MS, WINDOW_MS);
    uv_run(&loop, UV_RUN_DEFAULT);
    double dt = b.t_durable - b.t_start;

    jb_store_stats st;
    jb_store_get_stats(b.store, &st);
    jb_store_close(b.store, on_closed, &b);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    remove_dir(dir);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("store_append: %" PRIu64 " records of %zu bytes, fsync=%s, group commit every %d ms "
           "or %zu MiB\n",
           b.target, b.payload_len, argc > 4 ? argv[4] : "batch", WINDOW_MS, FLUSH_BYTES >> 20);
    printf("  durable in      %.3f s\n", dt);
    printf("  records/s       %.0f\n", (double)b.target / dt);
    printf("  payload MB/s    %.1f\n", (double)b.target * (double)b.payload_len / dt / 1e6);
    printf("  append call     %.1f ns/record (loop thread)\n", b.append_ns / (double)b.target);
    printf("  flush requests  %" PRIu64 ", write jobs %" PRIu64 ", fsyncs %" PRIu64 "\n", b.flushes,
           st.writes, st.fsyncs);
    printf("  backpressured   %" PRIu64 " loop turns\n", b.backpressured);
    printf("  on disk         %" PRIu64 " bytes in %" PRIu64 " segments, %.1f bytes/record\n",
           st.bytes, st.segments, (double)st.bytes / (double)b.target);
    printf("  peak RSS        %ld KiB\n", ru.ru_maxrss);
    return b.closed ? 0 : 1;
}
