/*
 * bench/compare driver for NATS, through Debian's C client (libnats):
 *   --system jetstream  stream BENCH on file storage; throughput: async
 *                       publishes (js_PublishAsync, up to 16 batches awaiting
 *                       their acks) and a durable pull consumer fetching
 *                       --batch messages with an explicit ack each;
 *                       latency: a durable push consumer (queue group),
 *                       explicit acks.
 *   --system nats-core  plain publish/subscribe, no persistence: the latency
 *                       reference (throughput is not durable and not run).
 * JetStream answers a publish once the message is in its file store, before
 * any fsync (its default sync interval is two minutes).
 *
 * Threads: one per publisher and per consumer, each with its own connection;
 * the main thread sets up the stream, starts the consumers, waits until they
 * are subscribed, then starts the publishers and joins everyone.
 */
#include "compare.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STREAM  "BENCH"
#define ACK_BIG 1000000 /* max ack pending: never the limiting factor */

typedef struct nats_bench {
    const cmp_opts *o;
    cmp_result *r;
    bool jetstream;
    atomic_int ready;     /* consumers subscribed */
    atomic_int pubs_done; /* publishers finished */
    atomic_int failed;
    atomic_llong end_ns; /* throughput: when the last ack was flushed */
} nats_bench;

typedef struct worker {
    nats_bench *b;
    int id;
} worker;

static void fail(nats_bench *b, const char *what, natsStatus s)
{
    fprintf(stderr, "nats: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(NULL));
    atomic_store(&b->failed, 1);
}

static natsStatus open_conn(nats_bench *b, natsConnection **nc, jsCtx **js)
{
    natsStatus s = natsConnection_ConnectTo(nc, b->o->url);
    if (s != NATS_OK || js == NULL)
        return s;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = (int64_t)b->o->batch * 16;
    /* A full window waits for room (backpressure) rather than failing after
     * the default 200 ms, which several publishers on two cores exceed. */
    jo.PublishAsync.StallWait = 30000;
    return natsConnection_JetStream(js, *nc, &jo);
}

static void close_conn(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static void *publisher(void *arg)
{
    worker *w = arg;
    nats_bench *b = w->b;
    const cmp_opts *o = b->o;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsStatus s = open_conn(b, &nc, b->jetstream ? &js : NULL);
    unsigned char *buf = malloc((size_t)o->size);
    char subj[64];
    snprintf(subj, sizeof(subj), "%s.%d", o->scenario == CMP_LATENCY ? "lat" : "bench", w->id);
    if (s != NATS_OK || buf == NULL) {
        fail(b, "publisher connect", s);
        goto out;
    }
    if (o->scenario == CMP_THROUGHPUT) {
        long n = o->events / o->publishers + (w->id == 0 ? o->events % o->publishers : 0);
        for (long i = 0; i < n && s == NATS_OK; i++) {
            cmp_payload_init(buf, o->size, (uint64_t)i);
            s = js_PublishAsync(js, subj, buf, o->size, NULL);
        }
        if (s == NATS_OK)
            s = js_PublishAsyncComplete(js, NULL);
        if (s != NATS_OK)
            fail(b, "js_PublishAsync", s);
        else
            atomic_fetch_add(&b->r->published, n);
    } else {
        cmp_pacer p;
        cmp_pacer_init(&p, (double)o->rate / o->publishers, b->r->start_ns);
        int64_t end = b->r->start_ns + (int64_t)(o->duration_s * 1e9);
        long i = 0;
        while (s == NATS_OK && cmp_now_ns() < end) {
            for (long due = cmp_pacer_wait(&p); due > 0 && s == NATS_OK; due--, i++) {
                cmp_payload_init(buf, o->size, (uint64_t)i);
                cmp_payload_stamp(buf);
                s = b->jetstream ? js_PublishAsync(js, subj, buf, o->size, NULL)
                                 : natsConnection_Publish(nc, subj, buf, o->size);
            }
        }
        if (s == NATS_OK)
            s = b->jetstream ? js_PublishAsyncComplete(js, NULL) : natsConnection_Flush(nc);
        if (s != NATS_OK)
            fail(b, "publish", s);
        atomic_fetch_add(&b->r->published, i);
    }
out:
    atomic_fetch_add(&b->pubs_done, 1);
    free(buf);
    close_conn(nc, js);
    return NULL;
}

/* Throughput consumer: fetch batches from the pull consumer, ack each message. */
static void pull_consume(nats_bench *b, natsConnection *nc, jsCtx *js)
{
    const cmp_opts *o = b->o;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&sub, js, "bench.>", "bench", NULL, NULL, &jerr);
    atomic_fetch_add(&b->ready, 1);
    if (s != NATS_OK) {
        fail(b, "js_PullSubscribe", s);
        return;
    }
    int64_t give_up = cmp_now_ns() + 120 * (int64_t)1000000000;
    while (atomic_load(&b->r->consumed) < o->events && !atomic_load(&b->failed)) {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, o->batch, 1000, &jerr);
        if (s == NATS_TIMEOUT) {
            if (cmp_now_ns() > give_up) {
                fail(b, "fetch: gave up", s);
                break;
            }
            continue;
        }
        if (s != NATS_OK) {
            fail(b, "natsSubscription_Fetch", s);
            break;
        }
        for (int i = 0; i < list.Count && s == NATS_OK; i++)
            s = natsMsg_Ack(list.Msgs[i], NULL);
        long got = list.Count;
        natsMsgList_Destroy(&list);
        if (s != NATS_OK) {
            fail(b, "natsMsg_Ack", s);
            break;
        }
        if (atomic_fetch_add(&b->r->consumed, got) + got >= o->events) {
            /* The acks are on the wire; a round trip proves the server has them. */
            natsConnection_Flush(nc);
            atomic_store(&b->end_ns, cmp_now_ns());
        }
    }
    natsSubscription_Destroy(sub);
}

/* Latency consumer: push delivery (JetStream queue-group consumer, or core). */
static void push_consume(nats_bench *b, natsConnection *nc, jsCtx *js)
{
    const cmp_opts *o = b->o;
    natsSubscription *sub = NULL;
    natsStatus s;
    if (b->jetstream) {
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = STREAM;
        so.Queue = "lat";
        so.ManualAck = true;
        so.Config.Durable = "lat";
        so.Config.AckPolicy = js_AckExplicit;
        so.Config.DeliverPolicy = js_DeliverNew;
        so.Config.MaxAckPending = ACK_BIG;
        jsErrCode jerr = 0;
        s = js_SubscribeSync(&sub, js, "lat.>", NULL, &so, &jerr);
    } else {
        s = natsConnection_QueueSubscribeSync(&sub, nc, "lat.>", "lat");
    }
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_Flush(nc); /* the server knows the interest before anyone publishes */
    atomic_fetch_add(&b->ready, 1);
    if (s != NATS_OK) {
        fail(b, "subscribe", s);
        natsSubscription_Destroy(sub);
        return;
    }
    int64_t idle_since = 0;
    while (!atomic_load(&b->failed)) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, 100);
        if (s == NATS_TIMEOUT) {
            if (atomic_load(&b->pubs_done) == o->publishers) {
                if (atomic_load(&b->r->consumed) >= atomic_load(&b->r->published))
                    break;
                if (idle_since == 0)
                    idle_since = cmp_now_ns();
                else if (cmp_now_ns() - idle_since > 5 * (int64_t)1000000000)
                    break; /* some never came: the counts in the output say so */
            }
            continue;
        }
        if (s != NATS_OK) {
            fail(b, "natsSubscription_NextMsg", s);
            break;
        }
        cmp_latency_record(o, b->r, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        if (b->jetstream)
            natsMsg_Ack(m, NULL);
        natsMsg_Destroy(m);
        atomic_fetch_add(&b->r->consumed, 1);
    }
    natsSubscription_Destroy(sub);
}

static void *consumer(void *arg)
{
    worker *w = arg;
    nats_bench *b = w->b;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsStatus s = open_conn(b, &nc, b->jetstream ? &js : NULL);
    if (s != NATS_OK) {
        fail(b, "consumer connect", s);
        atomic_fetch_add(&b->ready, 1);
    } else if (b->o->scenario == CMP_THROUGHPUT) {
        pull_consume(b, nc, js);
    } else {
        push_consume(b, nc, js);
    }
    close_conn(nc, js);
    return NULL;
}

/* A fresh stream (and, for throughput, its pull consumer). */
static natsStatus setup_stream(nats_bench *b)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsStatus s = open_conn(b, &nc, &js);
    jsErrCode jerr = 0;
    if (s == NATS_OK) {
        js_DeleteStream(js, STREAM, NULL, &jerr); /* absent at first: not an error */
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char *subjects[] = {"bench.>", "lat.>"};
        cfg.Name = STREAM;
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 2;
        cfg.Storage = js_FileStorage;
        jsStreamInfo *si = NULL;
        s = js_AddStream(&si, js, &cfg, NULL, &jerr);
        jsStreamInfo_Destroy(si);
    }
    if (s == NATS_OK && b->o->scenario == CMP_THROUGHPUT) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = "bench";
        cc.AckPolicy = js_AckExplicit;
        cc.DeliverPolicy = js_DeliverAll;
        cc.MaxAckPending = ACK_BIG;
        cc.MaxRequestBatch = b->o->batch;
        jsConsumerInfo *ci = NULL;
        s = js_AddConsumer(&ci, js, STREAM, &cc, NULL, &jerr);
        jsConsumerInfo_Destroy(ci);
    }
    if (s != NATS_OK)
        fprintf(stderr, "nats: stream setup: %s (%s, JetStream error %d)\n", natsStatus_GetText(s),
                nats_GetLastError(NULL), (int)jerr);
    close_conn(nc, js);
    return s;
}

int cmp_driver_run(const cmp_opts *o, cmp_result *r)
{
    nats_bench b = {.o = o, .r = r};
    if (strcmp(o->system, "jetstream") == 0)
        b.jetstream = true;
    else if (strcmp(o->system, "nats-core") != 0) {
        fprintf(stderr, "nats: unknown system '%s' (jetstream or nats-core)\n", o->system);
        return CMP_EXIT_FAIL;
    }
    if (!b.jetstream && o->scenario == CMP_THROUGHPUT) {
        fprintf(stderr, "nats-core: no durable throughput scenario (nothing is stored)\n");
        return CMP_EXIT_FAIL;
    }
    if (b.jetstream && setup_stream(&b) != NATS_OK)
        return CMP_EXIT_FAIL;

    int n = o->publishers + o->consumers;
    pthread_t *threads = calloc((size_t)n, sizeof(pthread_t));
    worker *workers = calloc((size_t)n, sizeof(worker));
    if (threads == NULL || workers == NULL)
        return CMP_EXIT_FAIL;
    for (int i = 0; i < o->consumers; i++) {
        workers[i] = (worker){&b, i};
        pthread_create(&threads[i], NULL, consumer, &workers[i]);
    }
    while (atomic_load(&b.ready) < o->consumers)
        cmp_sleep_ns(1000000);
    r->start_ns = cmp_now_ns();
    for (int i = 0; i < o->publishers; i++) {
        workers[o->consumers + i] = (worker){&b, i};
        pthread_create(&threads[o->consumers + i], NULL, publisher, &workers[o->consumers + i]);
    }
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    if (o->scenario == CMP_THROUGHPUT)
        r->elapsed_s = (double)(atomic_load(&b.end_ns) - r->start_ns) / 1e9;
    free(threads);
    free(workers);
    nats_Close();
    return atomic_load(&b.failed) ? CMP_EXIT_FAIL : CMP_EXIT_OK;
}
