/*
 * The shared half of every bench/compare driver: the command line, the
 * payload layout, the pacer, latency samples and the one output line.
 *
 * Output (stdout, one line of key=value pairs, parsed by bench/compare.sh):
 *   system=redis scenario=throughput events=200000 size=100 publishers=1
 *   consumers=1 elapsed_s=1.234 events_per_s=162074 ...
 *   latency adds: rate=20000 samples=90000 p50_us=... p99_us=... p999_us=... max_us=...
 *
 * Payload layout: bytes 0..7 the send time (ns, CLOCK_MONOTONIC, host byte
 * order), 8..15 the publisher's sequence, then filler up to --size.
 */
#include "compare.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t cmp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cmp_sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return;
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

void cmp_payload_init(unsigned char *buf, int size, uint64_t seq)
{
    memset(buf, 'x', (size_t)size);
    memset(buf, 0, 8);
    memcpy(buf + 8, &seq, sizeof(seq));
}

void cmp_payload_stamp(unsigned char *buf)
{
    int64_t now = cmp_now_ns();
    memcpy(buf, &now, sizeof(now));
}

int64_t cmp_payload_sent_ns(const void *buf, size_t len)
{
    int64_t t;
    if (len < sizeof(t))
        return -1;
    memcpy(&t, buf, sizeof(t));
    return t;
}

void cmp_latency_record(const cmp_opts *o, cmp_result *r, const void *payload, size_t len)
{
    int64_t now = cmp_now_ns();
    int64_t sent = cmp_payload_sent_ns(payload, len);
    if (sent < 0 || sent < r->start_ns + (int64_t)(o->warmup_s * 1e9))
        return;
    size_t i = atomic_fetch_add(&r->lat.n, 1);
    if (i < r->lat.cap)
        r->lat.ns[i] = now - sent;
}

void cmp_pacer_init(cmp_pacer *p, double rate, int64_t start_ns)
{
    p->start_ns = start_ns;
    p->interval_ns = 1e9 / rate;
    p->sent = 0;
}

long cmp_pacer_wait(cmp_pacer *p)
{
    int64_t next = p->start_ns + (int64_t)((double)p->sent * p->interval_ns);
    int64_t now = cmp_now_ns();
    if (next > now) {
        cmp_sleep_ns(next - now);
        now = cmp_now_ns();
    }
    /* Everything due by now goes in this round, so a late wakeup does not
     * lower the rate; the send time is stamped per event at sending. */
    long due = (long)((double)(now - p->start_ns) / p->interval_ns) + 1 - p->sent;
    if (due < 1)
        due = 1;
    p->sent += due;
    return due;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(const int64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s --system S --url URL --scenario throughput|latency [options]\n"
            "  --events N       throughput: events in all (200000)\n"
            "  --size B         payload bytes, at least 16 (100)\n"
            "  --publishers P   publishing clients (1)\n"
            "  --consumers C    consuming clients (1)\n"
            "  --batch K        fetch/ack batch and pipeline depth (256)\n"
            "  --rate R         latency: events/s, all publishers together (20000)\n"
            "  --duration S     latency: seconds of publishing (5)\n"
            "  --warmup S       latency: leading seconds not counted (0.5)\n",
            argv0);
}

int main(int argc, char **argv)
{
    cmp_opts o = {.system = NULL,
                  .url = NULL,
                  .scenario = CMP_THROUGHPUT,
                  .events = 200000,
                  .size = 100,
                  .publishers = 1,
                  .consumers = 1,
                  .batch = 256,
                  .rate = 20000,
                  .duration_s = 5.0,
                  .warmup_s = 0.5};
    static const struct option longopts[] = {{"system", required_argument, NULL, 'S'},
                                             {"url", required_argument, NULL, 'u'},
                                             {"scenario", required_argument, NULL, 's'},
                                             {"events", required_argument, NULL, 'n'},
                                             {"size", required_argument, NULL, 'b'},
                                             {"publishers", required_argument, NULL, 'p'},
                                             {"consumers", required_argument, NULL, 'c'},
                                             {"batch", required_argument, NULL, 'k'},
                                             {"rate", required_argument, NULL, 'r'},
                                             {"duration", required_argument, NULL, 'd'},
                                             {"warmup", required_argument, NULL, 'w'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'S':
            o.system = optarg;
            break;
        case 'u':
            o.url = optarg;
            break;
        case 's':
            if (strcmp(optarg, "throughput") == 0)
                o.scenario = CMP_THROUGHPUT;
            else if (strcmp(optarg, "latency") == 0)
                o.scenario = CMP_LATENCY;
            else {
                fprintf(stderr, "unknown scenario '%s'\n", optarg);
                return CMP_EXIT_FAIL;
            }
            break;
        case 'n':
            o.events = atol(optarg);
            break;
        case 'b':
            o.size = atoi(optarg);
            break;
        case 'p':
            o.publishers = atoi(optarg);
            break;
        case 'c':
            o.consumers = atoi(optarg);
            break;
        case 'k':
            o.batch = atoi(optarg);
            break;
        case 'r':
            o.rate = atol(optarg);
            break;
        case 'd':
            o.duration_s = atof(optarg);
            break;
        case 'w':
            o.warmup_s = atof(optarg);
            break;
        case 'h':
            usage(stdout, argv[0]);
            return CMP_EXIT_OK;
        default:
            usage(stderr, argv[0]);
            return CMP_EXIT_FAIL;
        }
    }
    if (o.system == NULL || o.url == NULL || o.size < 16 || o.publishers < 1 || o.consumers < 1 ||
        o.batch < 1 || o.events < 1 || o.rate < 1 || o.duration_s <= 0) {
        usage(stderr, argv[0]);
        return CMP_EXIT_FAIL;
    }

    cmp_result r;
    memset(&r, 0, sizeof(r));
    if (o.scenario == CMP_LATENCY) {
        r.lat.cap = (size_t)((double)o.rate * o.duration_s * 1.2) + 1024;
        r.lat.ns = calloc(r.lat.cap, sizeof(int64_t));
        if (r.lat.ns == NULL) {
            fprintf(stderr, "out of memory\n");
            return CMP_EXIT_FAIL;
        }
    }
    int rc = cmp_driver_run(&o, &r);
    if (rc != CMP_EXIT_OK) {
        free(r.lat.ns);
        return rc;
    }

    long published = atomic_load(&r.published), consumed = atomic_load(&r.consumed);
    printf("system=%s scenario=%s size=%d publishers=%d consumers=%d published=%ld consumed=%ld",
           o.system, o.scenario == CMP_LATENCY ? "latency" : "throughput", o.size, o.publishers,
           o.consumers, published, consumed);
    if (o.scenario == CMP_THROUGHPUT) {
        printf(" events=%ld elapsed_s=%.3f events_per_s=%.0f", o.events, r.elapsed_s,
               r.elapsed_s > 0 ? (double)consumed / r.elapsed_s : 0.0);
    } else {
        size_t n = atomic_load(&r.lat.n);
        if (n > r.lat.cap)
            n = r.lat.cap;
        qsort(r.lat.ns, n, sizeof(int64_t), cmp_i64);
        printf(" rate=%ld duration_s=%.1f samples=%zu p50_us=%.1f p99_us=%.1f p999_us=%.1f"
               " max_us=%.1f",
               o.rate, o.duration_s, n, percentile_us(r.lat.ns, n, 0.50),
               percentile_us(r.lat.ns, n, 0.99), percentile_us(r.lat.ns, n, 0.999),
               n ? (double)r.lat.ns[n - 1] / 1000.0 : 0.0);
    }
    printf("\n");
    free(r.lat.ns);
    return CMP_EXIT_OK;
}
