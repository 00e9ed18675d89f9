/*
 * bench/compare driver for jimbotd, through the C client library
 * (include/jimbot/client.h): one jb_client (one gRPC channel, one client
 * thread) per publisher and per consumer, as the other drivers open one
 * connection each.
 *
 *   throughput: each publisher sends its share of --events on
 *     "bench.<publisher>" as PublishRequests of --batch events
 *     (jb_client_publish_async), at most PUB_WINDOW requests awaiting their
 *     answers, which come once the events are fsync'd (group commit): the
 *     same window of 16 x --batch unanswered events that the JetStream
 *     driver gives js_PublishAsync. Consumers share group "bench" (pattern
 *     "bench.>") in pull mode (jb_client_sub_next); the server sends at
 *     most --batch events per message (bench/compare.sh sets
 *     max_batch_size, as the JetStream driver sets MaxRequestBatch) and each
 *     message is acked with one asynchronous Ack of all its sequences.
 *     r->consumed counts acks the server has answered; the clock stops at
 *     the answer that makes it reach --events.
 *   latency: publishers are paced (cmp_pacer); each event is stamped and
 *     handed to jb_client_publish_buffered() with the client's
 *     batch_window_ms at 0: an event goes at once when no request is in
 *     flight, and those handed over during a round trip go together as the
 *     next request (at most --batch), as NATS's client flushes what was
 *     published while its flusher was busy and the Redis driver pipelines
 *     the XADDs due at a wakeup. The stamp is taken when the application
 *     publishes, so time spent waiting in the client counts. Consumers share group "lat" (pattern
 *     "lat.>") with a deliver callback, which records each event's
 *     latency on the client thread and acks the batch asynchronously.
 *
 * Groups: "bench" and "lat" start at NEW and, being named, outlive the run,
 * so a second run on the same daemon starts where the first ended. Before
 * the publishers start, the main thread publishes probe events on
 * "<prefix>.probe" until a consumer receives one: from then on the group
 * exists on the server and no event of the run can be missed. Probes carry
 * a payload shorter than a bench payload; consumers ack them and count
 * nothing.
 *
 * Threads: one per publisher and per consumer (each with its client's own
 * thread behind it); the main thread starts the consumers, probes, starts
 * the publishers and joins everyone.
 */
#include "compare.h"

#include "jimbot/client.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PUB_WINDOW   16 /* throughput: requests awaiting their answer, per publisher */
#define UNACKED_MULT 16 /* consumers' max_in_flight, in batches */
#define PROBE        "probe"

typedef struct jbd_bench {
    const cmp_opts *o;
    cmp_result *r;
    const char *prefix; /* "bench" or "lat" */
    const char *group;
    atomic_int ready;
    atomic_int pubs_done;
    atomic_int failed;
    atomic_int probe_seen;
    atomic_long delivered; /* throughput: bench events received, all consumers */
    atomic_llong end_ns;
} jbd_bench;

/* Requests (or acks) awaiting an answer, with a bound to wait under. */
typedef struct window {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long n;
} window;

typedef struct worker {
    jbd_bench *b;
    int id;
    jb_client *c;
    jb_client_sub *sub;
    window w;
} worker;

static void fail(jbd_bench *b, const char *what, const jb_error *err)
{
    fprintf(stderr, "jimbotd: %s: %s\n", what, err != NULL ? err->message : "failed");
    atomic_store(&b->failed, 1);
}

static void window_init(window *w)
{
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->n = 0;
}

static void window_release(window *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

/* Waits until fewer than @max are outstanding, then counts one more. */
static void window_enter(window *w, long max)
{
    pthread_mutex_lock(&w->mu);
    while (w->n >= max)
        pthread_cond_wait(&w->cv, &w->mu);
    w->n++;
    pthread_mutex_unlock(&w->mu);
}

static void window_leave(window *w)
{
    pthread_mutex_lock(&w->mu);
    w->n--;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Counts one more without waiting: for the client thread, which must not block. */
static void window_add(window *w)
{
    pthread_mutex_lock(&w->mu);
    w->n++;
    pthread_mutex_unlock(&w->mu);
}

/* Undoes window_enter() or window_add() after a call that failed (its callback never runs). */
#define window_cancel window_leave

static jb_status client_open(jbd_bench *b, jb_client **out)
{
    /* Buffered publishing (latency) without a window: see the top. */
    jb_client_options co = {.addr = b->o->url, .max_batch = (uint32_t)b->o->batch};
    jb_error err;
    jb_status st = jb_client_new(&co, out, &err);
    if (st != JB_OK)
        fail(b, "jb_client_new", &err);
    return st;
}

/* ---- Publishers ----------------------------------------------------------- */

static void on_published(jb_status status, const uint64_t *sequences, const uint8_t *duplicates,
                         size_t n, uint32_t retry_after_ms, const jb_error *err, void *userdata)
{
    worker *w = userdata;
    (void)sequences;
    (void)duplicates;
    (void)retry_after_ms;
    if (status == JB_OK)
        atomic_fetch_add(&w->b->r->published, (long)n);
    else
        fail(w->b, "publish", err);
    window_leave(&w->w);
}

/* Publishes @n events as one request, waiting for room under @max first. */
static int publish(worker *w, const jb_event *evs, size_t n, long max)
{
    jb_error err;
    window_enter(&w->w, max);
    if (jb_client_publish_async(w->c, evs, n, on_published, w, &err) != JB_OK) {
        window_cancel(&w->w);
        fail(w->b, "jb_client_publish_async", &err);
        return -1;
    }
    return 0;
}

static void *publisher(void *arg)
{
    worker *w = arg;
    jbd_bench *b = w->b;
    const cmp_opts *o = b->o;
    size_t k = (size_t)o->batch;
    unsigned char *bufs = malloc(k * (size_t)o->size);
    jb_event *evs = calloc(k, sizeof(*evs));
    char topic[64];
    snprintf(topic, sizeof(topic), "%s.%d", b->prefix, w->id);
    if (bufs == NULL || evs == NULL || client_open(b, &w->c) != JB_OK) {
        atomic_store(&b->failed, 1);
        goto out;
    }
    for (size_t i = 0; i < k; i++)
        evs[i] = (jb_event){.topic = topic,
                            .type = "bench",
                            .source = "compare",
                            .payload = bufs + i * (size_t)o->size,
                            .payload_len = (size_t)o->size};
    if (o->scenario == CMP_THROUGHPUT) {
        long n = o->events / o->publishers + (w->id == 0 ? o->events % o->publishers : 0);
        for (long sent = 0; sent < n && !atomic_load(&b->failed);) {
            size_t m = n - sent < (long)k ? (size_t)(n - sent) : k;
            for (size_t i = 0; i < m; i++)
                cmp_payload_init(bufs + i * (size_t)o->size, o->size, (uint64_t)(sent + (long)i));
            if (publish(w, evs, m, PUB_WINDOW) != 0)
                break;
            sent += (long)m;
        }
    } else {
        /* One event per jb_client_publish_buffered(), stamped just before. */
        cmp_pacer p;
        cmp_pacer_init(&p, (double)o->rate / o->publishers, b->r->start_ns);
        int64_t end = b->r->start_ns + (int64_t)(o->duration_s * 1e9);
        long sent = 0;
        jb_error err;
        while (cmp_now_ns() < end && !atomic_load(&b->failed)) {
            for (long due = cmp_pacer_wait(&p); due > 0; due--, sent++) {
                cmp_payload_init(bufs, o->size, (uint64_t)sent);
                cmp_payload_stamp(bufs);
                if (jb_client_publish_buffered(w->c, &evs[0], &err) != JB_OK) {
                    fail(b, "jb_client_publish_buffered", &err);
                    break;
                }
            }
        }
        if (jb_client_flush(w->c, 0, &err) != JB_OK)
            fail(b, "jb_client_flush", &err);
        else
            atomic_fetch_add(&b->r->published, sent);
    }
    /* Every answer, before the client goes (freeing it cancels calls). */
    window_enter(&w->w, 1);
    window_cancel(&w->w);
out:
    atomic_fetch_add(&b->pubs_done, 1);
    jb_client_free(w->c);
    w->c = NULL;
    free(bufs);
    free(evs);
    return NULL;
}

/* ---- Consumers ------------------------------------------------------------ */

static int is_probe(const jb_event *ev)
{
    return ev->payload_len == sizeof(PROBE) - 1;
}

typedef struct ack_ctx {
    worker *w;
    long counted; /* bench events the ack covers */
} ack_ctx;

static void on_acked(jb_status status, const jb_error *err, void *userdata)
{
    ack_ctx *a = userdata;
    worker *w = a->w;
    jbd_bench *b = w->b;
    if (status != JB_OK) {
        fail(b, "ack", err);
    } else if (b->o->scenario == CMP_THROUGHPUT && a->counted > 0) {
        if (atomic_fetch_add(&b->r->consumed, a->counted) + a->counted >= b->o->events)
            atomic_store(&b->end_ns, cmp_now_ns());
    }
    free(a);
    window_leave(&w->w);
}

/*
 * Handles one batch: latency samples (latency), probes, then one
 * asynchronous ack of every sequence. Safe on the client thread.
 */
static void handle_batch(worker *w, const jb_event *events, size_t n)
{
    jbd_bench *b = w->b;
    bool latency = b->o->scenario == CMP_LATENCY;
    uint64_t *seqs = malloc(n * sizeof(*seqs));
    ack_ctx *a = malloc(sizeof(*a));
    if (seqs == NULL || a == NULL) {
        free(seqs);
        free(a);
        fail(b, "out of memory", NULL);
        return;
    }
    long counted = 0;
    for (size_t i = 0; i < n; i++) {
        seqs[i] = events[i].sequence;
        if (is_probe(&events[i])) {
            atomic_store(&b->probe_seen, 1);
            continue;
        }
        counted++;
        if (latency)
            cmp_latency_record(b->o, b->r, events[i].payload, events[i].payload_len);
    }
    if (latency)
        atomic_fetch_add(&b->r->consumed, counted);
    else
        atomic_fetch_add(&b->delivered, counted);
    *a = (ack_ctx){.w = w, .counted = counted};
    jb_error err;
    window_add(&w->w);
    if (jb_client_ack_async(w->c, b->group, seqs, n, on_acked, a, &err) != JB_OK) {
        window_cancel(&w->w);
        free(a);
        fail(b, "jb_client_ack_async", &err);
    }
    free(seqs);
}

static void on_deliver(jb_client_sub *sub, const jb_event *events, size_t n, void *userdata)
{
    (void)sub;
    handle_batch(userdata, events, n);
}

static void *consumer(void *arg)
{
    worker *w = arg;
    jbd_bench *b = w->b;
    const cmp_opts *o = b->o;
    bool latency = o->scenario == CMP_LATENCY;
    char pattern[32];
    snprintf(pattern, sizeof(pattern), "%s.>", b->prefix);
    if (client_open(b, &w->c) != JB_OK) {
        atomic_fetch_add(&b->ready, 1);
        return NULL;
    }
    jb_client_sub_options so = {
        .pattern = pattern,
        .group = b->group,
        .max_in_flight = (uint32_t)o->batch * UNACKED_MULT,
        .start = JB_CLIENT_START_NEW,
    };
    jb_error err;
    jb_status st = jb_client_subscribe(w->c, &so, latency ? on_deliver : NULL, w, &w->sub, &err);
    atomic_fetch_add(&b->ready, 1);
    if (st != JB_OK) {
        fail(b, "jb_client_subscribe", &err);
        jb_client_free(w->c);
        return NULL;
    }
    int64_t idle_since = 0;
    long seen = 0;
    while (!atomic_load(&b->failed)) {
        if (!latency) {
            if (atomic_load(&b->delivered) >= o->events)
                break;
            jb_client_batch *batch = NULL;
            st = jb_client_sub_next(w->sub, 1000, &batch, &err);
            if (st == JB_ETIMEDOUT)
                continue;
            if (st != JB_OK) {
                fail(b, "jb_client_sub_next", &err);
                break;
            }
            handle_batch(w, batch->events, batch->n);
            jb_client_batch_free(batch);
            continue;
        }
        /* Latency: the client thread delivers; this one watches the end. */
        cmp_sleep_ns(10 * 1000000);
        long consumed = atomic_load(&b->r->consumed);
        if (atomic_load(&b->pubs_done) < o->publishers)
            continue;
        if (consumed >= atomic_load(&b->r->published))
            break;
        if (consumed != seen || idle_since == 0) {
            seen = consumed;
            idle_since = cmp_now_ns();
        } else if (cmp_now_ns() - idle_since > 5 * (int64_t)1000000000) {
            break; /* some never came: the counts in the output say so */
        }
    }
    /* The acks' answers, before unsubscribing (which returns unacked events). */
    window_enter(&w->w, 1);
    window_cancel(&w->w);
    jb_client_unsubscribe(w->sub);
    jb_client_free(w->c);
    return NULL;
}

/* Publishes probes until a consumer has one: the group exists on the server. */
static int probe(jbd_bench *b)
{
    jb_client *c = NULL;
    if (client_open(b, &c) != JB_OK)
        return -1;
    char topic[32];
    snprintf(topic, sizeof(topic), "%s.probe", b->prefix);
    jb_event ev = {.topic = topic,
                   .type = "probe",
                   .source = "compare",
                   .payload = PROBE,
                   .payload_len = sizeof(PROBE) - 1};
    int rc = -1;
    for (int i = 0; i < 100 && !atomic_load(&b->failed); i++) {
        jb_error err;
        if (jb_client_publish(c, &ev, 1, NULL, NULL, NULL, &err) != JB_OK) {
            fail(b, "probe", &err);
            break;
        }
        int64_t until = cmp_now_ns() + 100 * (int64_t)1000000;
        while (!atomic_load(&b->probe_seen) && cmp_now_ns() < until)
            cmp_sleep_ns(1000000);
        if (atomic_load(&b->probe_seen)) {
            rc = 0;
            break;
        }
    }
    if (rc != 0 && !atomic_load(&b->failed))
        fail(b, "no probe reached a consumer in 10 s", NULL);
    jb_client_free(c);
    return rc;
}

int cmp_driver_run(const cmp_opts *o, cmp_result *r)
{
    jbd_bench b = {.o = o, .r = r};
    if (strcmp(o->system, "jimbotd") != 0) {
        fprintf(stderr, "jimbotd: unknown system '%s'\n", o->system);
        return CMP_EXIT_FAIL;
    }
    b.prefix = o->scenario == CMP_LATENCY ? "lat" : "bench";
    b.group = b.prefix;

    int n = o->publishers + o->consumers;
    pthread_t *threads = calloc((size_t)n, sizeof(pthread_t));
    worker *workers = calloc((size_t)n, sizeof(worker));
    if (threads == NULL || workers == NULL) {
        free(threads);
        free(workers);
        return CMP_EXIT_FAIL;
    }
    for (int i = 0; i < n; i++) {
        workers[i] = (worker){.b = &b, .id = i < o->consumers ? i : i - o->consumers};
        window_init(&workers[i].w);
    }
    for (int i = 0; i < o->consumers; i++)
        pthread_create(&threads[i], NULL, consumer, &workers[i]);
    while (atomic_load(&b.ready) < o->consumers)
        cmp_sleep_ns(1000000);
    if (!atomic_load(&b.failed) && probe(&b) == 0) {
        r->start_ns = cmp_now_ns();
        for (int i = o->consumers; i < n; i++)
            pthread_create(&threads[i], NULL, publisher, &workers[i]);
    } else {
        atomic_store(&b.failed, 1);
        atomic_store(&b.pubs_done, o->publishers);
        n = o->consumers;
    }
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    if (o->scenario == CMP_THROUGHPUT)
        r->elapsed_s = (double)(atomic_load(&b.end_ns) - r->start_ns) / 1e9;
    for (int i = 0; i < o->publishers + o->consumers; i++)
        window_release(&workers[i].w);
    free(threads);
    free(workers);
    return atomic_load(&b.failed) ? CMP_EXIT_FAIL : CMP_EXIT_OK;
}
