/*
 * bench/compare: the same two scenarios run against jimbotd and its peers
 * (NATS JetStream, NATS core, Redis Streams), one driver binary per system,
 * all with one command line and one output line, so that bench/compare.sh
 * can run them side by side and tabulate the results.
 *
 * Scenarios:
 *   throughput  --events N durable events of --size bytes, published
 *               pipelined by --publishers clients and consumed with explicit
 *               acks by --consumers clients; timed from the first publish to
 *               the last ack.
 *   latency     each publisher is paced so that together they send --rate
 *               events/s for --duration s; every payload carries its send
 *               time (CLOCK_MONOTONIC, one machine), and consumers record
 *               publish-to-delivery latency. Samples from the first
 *               --warmup s are not counted.
 *
 * A driver implements cmp_driver_run(); common.c holds main(), the option
 * parser, the payload layout, the pacer and the latency samples. Drivers own
 * their threads; the helpers here are safe to call from any of them.
 */
#ifndef JB_BENCH_COMPARE_H
#define JB_BENCH_COMPARE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { CMP_THROUGHPUT, CMP_LATENCY } cmp_scenario;

typedef struct cmp_opts {
    const char *system; /* which variant the driver runs (jetstream, nats-core, redis, jimbotd) */
    const char *url;    /* the server: nats://127.0.0.1:4222, 127.0.0.1:6379, 127.0.0.1:50051 */
    cmp_scenario scenario;
    long events;       /* throughput: events in all */
    int size;          /* payload bytes (at least 16: send time and sequence) */
    int publishers;    /* publishing clients, one connection and thread each */
    int consumers;     /* consuming clients, one connection and thread each */
    int batch;         /* consumer fetch / ack batch and publisher pipeline depth */
    long rate;         /* latency: events per second, all publishers together */
    double duration_s; /* latency: how long the publishers send */
    double warmup_s;   /* latency: samples sent before this are not counted */
} cmp_opts;

/* Latency samples: a preallocated array filled through an atomic index. */
typedef struct cmp_samples {
    int64_t *ns;
    size_t cap;
    atomic_size_t n;
} cmp_samples;

typedef struct cmp_result {
    atomic_long published; /* events the server accepted (or, latency: sent) */
    atomic_long consumed;  /* events received and acked */
    double elapsed_s;      /* throughput: first publish to last ack */
    cmp_samples lat;       /* latency scenario only */
    int64_t start_ns;      /* latency: when publishing began (for the warmup cut) */
} cmp_result;

/* Exit statuses of a driver binary. */
#define CMP_EXIT_OK      0
#define CMP_EXIT_FAIL    1
#define CMP_EXIT_PENDING 3 /* the driver is not implemented yet */

/*
 * Runs @o against the server; fills @r. Returns a CMP_EXIT_* status and says
 * why on stderr when it is not CMP_EXIT_OK. Implemented by each driver_*.c.
 */
int cmp_driver_run(const cmp_opts *o, cmp_result *r);

/* Monotonic clock in nanoseconds. */
int64_t cmp_now_ns(void);

/* Fills @buf (@size bytes) with filler and @seq; cmp_payload_stamp() then writes the send time. */
void cmp_payload_init(unsigned char *buf, int size, uint64_t seq);
void cmp_payload_stamp(unsigned char *buf);
/* The send time written by cmp_payload_stamp(), or -1 if @len is too short. */
int64_t cmp_payload_sent_ns(const void *buf, size_t len);

/* Records one delivery's latency, unless it was sent during the warmup. */
void cmp_latency_record(const cmp_opts *o, cmp_result *r, const void *payload, size_t len);

/*
 * Pacer for one publisher sending @rate events/s from @start_ns: after
 * cmp_pacer_wait() returns, cmp_pacer_due() events are due (at least one).
 */
typedef struct cmp_pacer {
    int64_t start_ns;
    double interval_ns;
    long sent;
} cmp_pacer;

void cmp_pacer_init(cmp_pacer *p, double rate, int64_t start_ns);
/* Sleeps until the next event is due; returns how many are due now. */
long cmp_pacer_wait(cmp_pacer *p);

/* Sleeps @ns nanoseconds. */
void cmp_sleep_ns(int64_t ns);

#endif /* JB_BENCH_COMPARE_H */
