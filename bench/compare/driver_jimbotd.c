/*
 * The jimbotd column of bench/compare: the plug-in point for the C client
 * library (include/jimbot/client.h, being written on branch `client`).
 *
 * To fill in, with the same semantics as driver_nats.c and driver_redis.c:
 *   throughput: each publisher connects to o->url and publishes o->events /
 *     o->publishers events of o->size bytes (cmp_payload_init) on
 *     "bench.<publisher>", keeping up to o->batch requests (or one request of
 *     o->batch events) in flight, counting r->published as answers arrive;
 *     each consumer subscribes to "bench.>" in group "bench" with
 *     max_in_flight >= o->batch and acks every batch, adding to r->consumed;
 *     r->elapsed_s runs from the first publish to the ack that makes
 *     r->consumed reach o->events.
 *   latency: r->start_ns = cmp_now_ns(); each publisher paces itself with
 *     cmp_pacer (o->rate / o->publishers) for o->duration_s, stamping each
 *     payload (cmp_payload_stamp) just before it is published, and the
 *     consumers call cmp_latency_record() per event, ack, and stop once they
 *     have every published event or 5 s after the publishers finish. The
 *     daemon runs with batch_window_ms 0 for this scenario (bench/compare.sh
 *     writes its configuration).
 * Until then this driver exits CMP_EXIT_PENDING and the table says
 * "driver pending".
 *
 * With the client API as drafted on branch `client` (include/jimbot/client.h
 * there), the natural mapping is: one jb_client_new() per thread with
 * {.addr = o->url}; publishers use jb_client_publish_async() with o->batch
 * events per request and a bounded number of requests in flight (or
 * jb_client_publish_buffered() + jb_client_flush() with batch_window_ms 0);
 * consumers use jb_client_subscribe() in pull mode (deliver NULL, group
 * "bench", max_in_flight >= o->batch), jb_client_sub_next() and
 * jb_client_sub_ack() per batch. Then link the client library in
 * bench/compare/CMakeLists.txt.
 */
#include "compare.h"

#include <stdio.h>

int cmp_driver_run(const cmp_opts *o, cmp_result *r)
{
    (void)r;
    fprintf(stderr, "jimbotd: driver pending (needs the C client library, %s)\n", o->url);
    return CMP_EXIT_PENDING;
}
