/*
 * client_publish: publish throughput through the C client library.
 *
 *   client_publish [--addr ADDR] [-t TOPIC] [-n EVENTS] [-k IN_FLIGHT] [-b BATCH] [-s BYTES]
 *
 * Publishes EVENTS events (default 200000) of BYTES bytes of payload
 * (default 100) to TOPIC (default "bench.client": a daemon whose
 * event_bus.topics does not allow it answers "unknown topic"), BATCH events per PublishRequest
 * (default 100) with IN_FLIGHT requests outstanding (default 8, asynchronous publishes), then
 * prints events/s and the request latency (median, p99, max). With -b 0 it uses
 * jb_client_publish_buffered() and its 100 ms window instead, then jb_client_flush().
 *
 * Needs a running jimbotd; when none answers Health it says so and exits 0,
 * so that `make bench` runs without one.
 */
#include "jimbot/client.h"

#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long in_flight;
    long failed;
    double *lat_ms;
    size_t n_lat;
} bench;

typedef struct request {
    bench *b;
    struct timespec start;
} request;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void done(jb_status status, const uint64_t *sequences, const uint8_t *duplicates, size_t n,
                 uint32_t retry_after_ms, const jb_error *err, void *userdata)
{
    request *r = userdata;
    bench *b = r->b;
    double start = (double)r->start.tv_sec * 1e3 + (double)r->start.tv_nsec / 1e6;
    double lat = now_ms() - start;
    pthread_mutex_lock(&b->mu);
    b->in_flight--;
    if (status != JB_OK) {
        if (b->failed++ == 0)
            fprintf(stderr, "client_publish: %s\n", err->message);
    } else {
        b->lat_ms[b->n_lat++] = lat;
    }
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    free(r);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *topic = "bench.client";
    long n = 200000, k = 8, batch = 100, size = 100;
    static const struct option longopts[] = {{"addr", required_argument, NULL, 'a'},
                                             {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "t:n:k:b:s:", longopts, NULL)) != -1) {
        switch (c) {
        case 'a':
            addr = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'n':
            n = atol(optarg);
            break;
        case 'k':
            k = atol(optarg);
            break;
        case 'b':
            batch = atol(optarg);
            break;
        case 's':
            size = atol(optarg);
            break;
        default:
            fprintf(stderr,
                    "usage: client_publish [--addr A] [-t TOPIC] [-n N] [-k K] [-b B] [-s S]\n");
            return 2;
        }
    }
    if (n <= 0 || k <= 0 || batch < 0 || size < 0) {
        fprintf(stderr, "client_publish: counts must be positive\n");
        return 2;
    }
    jb_client_options o = {.addr = addr, .batch_window_ms = 100};
    jb_client *cl;
    jb_error err;
    jb_health h;
    if (jb_client_new(&o, &cl, &err) != JB_OK) {
        fprintf(stderr, "client_publish: %s\n", err.message);
        return 1;
    }
    if (jb_client_health(cl, "", &h, &err) != JB_OK || h != JB_HEALTH_SERVING) {
        printf("client_publish: skipped, no serving jimbotd at %s\n", jb_client_addr(cl));
        jb_client_free(cl);
        return 0;
    }
    char *payload = malloc((size_t)size + 1);
    memset(payload, 'x', (size_t)size);
    size_t per = batch > 0 ? (size_t)batch : 1;
    jb_event *evs = calloc(per, sizeof(*evs));
    for (size_t i = 0; i < per; i++)
        evs[i] = (jb_event){.topic = topic,
                            .type = "bench",
                            .source = "client_publish",
                            .payload = payload,
                            .payload_len = (size_t)size};
    bench b = {.lat_ms = calloc((size_t)n / per + 2, sizeof(double))};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);

    double t0 = now_ms();
    int rc = 0;
    if (batch == 0) {
        for (long i = 0; i < n && rc == 0; i++) {
            if (jb_client_publish_buffered(cl, &evs[0], &err) != JB_OK) {
                fprintf(stderr, "client_publish: %s\n", err.message);
                rc = 1;
            }
        }
        if (rc == 0 && jb_client_flush(cl, 0, &err) != JB_OK) {
            fprintf(stderr, "client_publish: %s\n", err.message);
            rc = 1;
        }
    } else {
        for (long sent = 0; sent < n && rc == 0;) {
            size_t m = (size_t)(n - sent) < per ? (size_t)(n - sent) : per;
            pthread_mutex_lock(&b.mu);
            while (b.in_flight >= k)
                pthread_cond_wait(&b.cv, &b.mu);
            b.in_flight++;
            pthread_mutex_unlock(&b.mu);
            request *r = malloc(sizeof(*r));
            r->b = &b;
            clock_gettime(CLOCK_MONOTONIC, &r->start);
            if (jb_client_publish_async(cl, evs, m, done, r, &err) != JB_OK) {
                fprintf(stderr, "client_publish: %s\n", err.message);
                free(r);
                rc = 1;
            }
            sent += (long)m;
        }
        pthread_mutex_lock(&b.mu);
        while (b.in_flight > (rc != 0))
            pthread_cond_wait(&b.cv, &b.mu);
        pthread_mutex_unlock(&b.mu);
    }
    double secs = (now_ms() - t0) / 1e3;
    if (rc == 0 && b.failed == 0) {
        printf("client_publish: %ld events of %ld bytes, %s, in %.2f s: %.0f events/s\n", n, size,
               batch == 0 ? "buffered (100 ms window)" : "async batches", secs, (double)n / secs);
        if (b.n_lat > 0) {
            qsort(b.lat_ms, b.n_lat, sizeof(double), cmp_double);
            printf("client_publish: batch %ld, %ld in flight: request latency median %.2f ms, "
                   "p99 %.2f ms, max %.2f ms\n",
                   batch, k, b.lat_ms[b.n_lat / 2], b.lat_ms[b.n_lat * 99 / 100],
                   b.lat_ms[b.n_lat - 1]);
        }
    } else {
        rc = 1;
    }
    jb_client_free(cl);
    free(b.lat_ms);
    free(evs);
    free(payload);
    return rc;
}
