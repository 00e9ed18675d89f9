/*
 * bench/compare driver for Redis Streams, through hiredis (blocking
 * contexts, one per thread). The server runs with appendonly yes and
 * appendfsync everysec (bench/compare.sh starts it): an XADD is answered
 * once it is in the AOF buffer, fsynced within about a second.
 *
 *   throughput: publishers pipeline --batch XADDs at a time on stream
 *   "bench"; consumers of group "g" read with XREADGROUP COUNT --batch
 *   BLOCK and ack each batch with one XACK.
 *   latency: paced XADDs (replies read as they arrive, so the pacing never
 *   waits for a round trip); consumers as above with a short BLOCK.
 *
 * Threads: one per publisher and per consumer; the main thread recreates
 * the stream and the group, starts the consumers, then the publishers.
 */
#include "compare.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STREAM "bench"
#define GROUP  "g"

typedef struct redis_bench {
    const cmp_opts *o;
    cmp_result *r;
    char host[128];
    int port;
    atomic_int ready;
    atomic_int pubs_done;
    atomic_int failed;
    atomic_llong end_ns;
} redis_bench;

typedef struct worker {
    redis_bench *b;
    int id;
} worker;

static void fail(redis_bench *b, const char *what, const redisContext *c, const redisReply *rep)
{
    fprintf(stderr, "redis: %s: %s\n", what,
            rep && rep->type == REDIS_REPLY_ERROR ? rep->str
            : c && c->err                         ? c->errstr
                                                  : "unexpected reply");
    atomic_store(&b->failed, 1);
}

static redisContext *open_conn(redis_bench *b)
{
    redisContext *c = redisConnect(b->host, b->port);
    if (c == NULL || c->err) {
        fail(b, "connect", c, NULL);
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Reads @n pipelined XADD replies; 0 on success. */
static int read_replies(redis_bench *b, redisContext *c, long n)
{
    for (long i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK || rep->type == REDIS_REPLY_ERROR) {
            fail(b, "XADD", c, rep);
            freeReplyObject(rep);
            return -1;
        }
        freeReplyObject(rep);
    }
    return 0;
}

/* Reads whatever replies have arrived, without blocking; returns how many. */
static long drain_replies(redis_bench *b, redisContext *c)
{
    long n = 0;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) <= 0)
        return 0;
    if (redisBufferRead(c) != REDIS_OK) {
        fail(b, "read", c, NULL);
        return 0;
    }
    void *rep = NULL;
    while (redisGetReplyFromReader(c, &rep) == REDIS_OK && rep != NULL) {
        if (((redisReply *)rep)->type == REDIS_REPLY_ERROR)
            fail(b, "XADD", c, rep);
        freeReplyObject(rep);
        rep = NULL;
        n++;
    }
    return n;
}

static void *publisher(void *arg)
{
    worker *w = arg;
    redis_bench *b = w->b;
    const cmp_opts *o = b->o;
    redisContext *c = open_conn(b);
    unsigned char *buf = malloc((size_t)o->size);
    long sent = 0;
    if (c == NULL || buf == NULL)
        goto out;
    if (o->scenario == CMP_THROUGHPUT) {
        long n = o->events / o->publishers + (w->id == 0 ? o->events % o->publishers : 0);
        while (sent < n && !atomic_load(&b->failed)) {
            long k = n - sent < o->batch ? n - sent : o->batch;
            for (long i = 0; i < k; i++) {
                cmp_payload_init(buf, o->size, (uint64_t)(sent + i));
                redisAppendCommand(c, "XADD " STREAM " * d %b", buf, (size_t)o->size);
            }
            if (read_replies(b, c, k) != 0)
                break;
            sent += k;
            atomic_fetch_add(&b->r->published, k);
        }
    } else {
        cmp_pacer p;
        cmp_pacer_init(&p, (double)o->rate / o->publishers, b->r->start_ns);
        int64_t end = b->r->start_ns + (int64_t)(o->duration_s * 1e9);
        long answered = 0;
        while (cmp_now_ns() < end && !atomic_load(&b->failed)) {
            for (long due = cmp_pacer_wait(&p); due > 0; due--, sent++) {
                cmp_payload_init(buf, o->size, (uint64_t)sent);
                cmp_payload_stamp(buf);
                redisAppendCommand(c, "XADD " STREAM " * d %b", buf, (size_t)o->size);
            }
            int done = 0;
            while (!done) {
                if (redisBufferWrite(c, &done) != REDIS_OK) {
                    fail(b, "write", c, NULL);
                    break;
                }
            }
            answered += drain_replies(b, c);
        }
        read_replies(b, c, sent - answered);
        atomic_fetch_add(&b->r->published, sent);
    }
out:
    atomic_fetch_add(&b->pubs_done, 1);
    free(buf);
    redisFree(c);
    return NULL;
}

/* Acks the entries of one XREADGROUP reply with one XACK; returns how many, or -1. */
static long handle_read(redis_bench *b, redisContext *c, redisReply *rep, bool record)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0)
        return 0;
    redisReply *entries = rep->element[0]->element[1];
    size_t n = entries->elements;
    const char **argv = malloc((n + 3) * sizeof(char *));
    size_t *lens = malloc((n + 3) * sizeof(size_t));
    if (argv == NULL || lens == NULL)
        return -1;
    argv[0] = "XACK", argv[1] = STREAM, argv[2] = GROUP;
    lens[0] = 4, lens[1] = strlen(STREAM), lens[2] = strlen(GROUP);
    for (size_t i = 0; i < n; i++) {
        redisReply *e = entries->element[i];
        argv[3 + i] = e->element[0]->str;
        lens[3 + i] = e->element[0]->len;
        if (record && e->element[1]->elements >= 2) {
            redisReply *value = e->element[1]->element[1];
            cmp_latency_record(b->o, b->r, value->str, value->len);
        }
    }
    redisReply *ack = redisCommandArgv(c, (int)(n + 3), argv, lens);
    long result = (long)n;
    if (ack == NULL || ack->type != REDIS_REPLY_INTEGER || ack->integer != (long long)n) {
        fail(b, "XACK", c, ack);
        result = -1;
    }
    freeReplyObject(ack);
    free(argv);
    free(lens);
    return result;
}

static void *consumer(void *arg)
{
    worker *w = arg;
    redis_bench *b = w->b;
    const cmp_opts *o = b->o;
    redisContext *c = open_conn(b);
    atomic_fetch_add(&b->ready, 1);
    if (c == NULL)
        return NULL;
    bool latency = o->scenario == CMP_LATENCY;
    int64_t idle_since = 0;
    for (;;) {
        if (atomic_load(&b->failed))
            break;
        if (!latency && atomic_load(&b->r->consumed) >= o->events)
            break;
        redisReply *rep = redisCommand(c,
                                       "XREADGROUP GROUP " GROUP " c%d COUNT %d BLOCK %d "
                                       "STREAMS " STREAM " >",
                                       w->id, o->batch, latency ? 100 : 1000);
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
            fail(b, "XREADGROUP", c, rep);
            freeReplyObject(rep);
            break;
        }
        long got = handle_read(b, c, rep, latency);
        freeReplyObject(rep);
        if (got < 0)
            break;
        if (got > 0) {
            idle_since = 0;
            if (atomic_fetch_add(&b->r->consumed, got) + got >= o->events && !latency)
                atomic_store(&b->end_ns, cmp_now_ns());
        } else if (latency && atomic_load(&b->pubs_done) == o->publishers) {
            if (atomic_load(&b->r->consumed) >= atomic_load(&b->r->published))
                break;
            if (idle_since == 0)
                idle_since = cmp_now_ns();
            else if (cmp_now_ns() - idle_since > 5 * (int64_t)1000000000)
                break;
        }
    }
    redisFree(c);
    return NULL;
}

int cmp_driver_run(const cmp_opts *o, cmp_result *r)
{
    redis_bench b = {.o = o, .r = r, .port = 6379};
    if (strcmp(o->system, "redis") != 0) {
        fprintf(stderr, "redis: unknown system '%s'\n", o->system);
        return CMP_EXIT_FAIL;
    }
    const char *colon = strrchr(o->url, ':');
    size_t hl = colon ? (size_t)(colon - o->url) : strlen(o->url);
    if (hl >= sizeof(b.host))
        return CMP_EXIT_FAIL;
    memcpy(b.host, o->url, hl);
    b.host[hl] = '\0';
    if (colon)
        b.port = atoi(colon + 1);

    redisContext *admin = open_conn(&b);
    if (admin == NULL)
        return CMP_EXIT_FAIL;
    freeReplyObject(redisCommand(admin, "DEL " STREAM));
    redisReply *rep = redisCommand(admin, "XGROUP CREATE " STREAM " " GROUP " $ MKSTREAM");
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        fail(&b, "XGROUP CREATE", admin, rep);
        freeReplyObject(rep);
        redisFree(admin);
        return CMP_EXIT_FAIL;
    }
    freeReplyObject(rep);

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
    freeReplyObject(redisCommand(admin, "DEL " STREAM));
    redisFree(admin);
    free(threads);
    free(workers);
    return atomic_load(&b.failed) ? CMP_EXIT_FAIL : CMP_EXIT_OK;
}
