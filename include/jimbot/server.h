/*
 * jimbot/server.h: the gRPC front of the engine, as jimbotd runs it.
 *
 * A jb_server serves, on one address, the services of docs/grpc.md:
 * jimbot.infra.v1.EventBus over a jb_bus, grpc.health.v1.Health, and
 * jimbot.infra.v1.Infrastructure over a jb_coord (GetResourceStatus,
 * AcquireGpu, ReleaseGpu, AcquireApiQuota, and the request queue's
 * SubmitRequest, TakeRequests, Respond); every other method is answered
 * UNIMPLEMENTED.
 *
 * Threading: the server belongs to the loop it was created on. Every
 * function here must be called on that loop's thread. gRPC core's
 * completion queue is pumped by one thread of the server's own, which only
 * hands finished operations to the loop (a queue and uv_async_send); every
 * call's state machine and every engine call runs on the loop.
 *
 * Lifecycle, in the order jimbotd follows at SIGTERM:
 *   jb_server_new()    binds the address and starts serving;
 *   jb_server_drain()  the lame duck phase: health turns NOT_SERVING, every
 *                      new call is answered UNAVAILABLE with the trailer
 *                      "retry-after-ms" (the server keeps accepting calls to
 *                      say so), Publish calls already accepted are answered
 *                      once durable; when none waits any more (or after the
 *                      grace), the open batch window is flushed to the
 *                      subscribers, Subscribe streams end UNAVAILABLE once
 *                      what they hold is sent (their unacked events go back
 *                      to their groups), and the drained callback runs;
 *   jb_bus_close()     (the caller, from that callback) answers the Publish
 *                      calls left, if the grace ran out, once durable;
 *   jb_server_close()  once no call has been live for a moment (or after a
 *                      grace period) lets gRPC refuse calls itself
 *                      (shutdown), cancels what is left, waits for gRPC to
 *                      finish, joins the thread, frees the server.
 * The bus must stay alive until the drained callback has run; after that
 * the server calls into it only to be answered for publishes it accepted
 * before, so the bus may close and be freed before jb_server_close().
 */
#ifndef JIMBOT_SERVER_H
#define JIMBOT_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "jimbot/bus.h"
#include "jimbot/config.h"
#include "jimbot/coord.h"
#include "jimbot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct jb_server jb_server;

/* Options, copied by jb_server_new(); zero fields take the defaults shown. */
typedef struct jb_server_options {
    /* "HOST:PORT" (port 0 picks a free one) or "unix:PATH". Required. */
    const char *listen;
    /* The engine. Borrowed; see the lifecycle above. */
    jb_bus *bus;
    /* Read at each GetResourceStatus for the configured limits. Borrowed;
     * may be NULL (the schema defaults are reported then). */
    jb_config_watcher *config;
    /* The resource coordinator behind Infrastructure's GPU and budget
     * methods. Borrowed; it must stay alive until the drained callback has
     * run (the server detaches its GPU streams and withdraws its budget
     * waiters there). NULL: those methods answer UNIMPLEMENTED. */
    jb_coord *coord;
    /* Largest request accepted, in bytes (16 MiB); gRPC answers a larger one
     * RESOURCE_EXHAUSTED before it reaches the engine. */
    size_t max_receive_bytes;
    /* Memory gRPC may hold for the requests of all connections together (its
     * resource quota, docs/grpc.md "Memory"), in bytes (256 MiB; jimbotd:
     * event_bus.max_request_memory_bytes). */
    size_t max_request_memory_bytes;
    /* Concurrent calls on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
     * (256; jimbotd: event_bus.max_concurrent_streams). */
    uint32_t max_concurrent_streams;
    /* A PublishRequest with more events is refused INVALID_ARGUMENT before it
     * is decoded (10000; jimbotd: event_bus.max_events_per_request). */
    uint32_t max_events_per_request;
    /* The same for an event with more headers (JB_EVENT_MAX_HEADERS, 64;
     * jimbotd: event_bus.max_headers_per_event); give the bus the same. */
    uint32_t max_headers_per_event;
    /* Bytes queued for one stream above which the client counts as a slow
     * consumer (64 MiB; jimbotd: event_bus.slow_consumer_bytes). */
    size_t max_stream_bytes;
    /* A stream whose oldest outstanding send is older than this is a slow
     * consumer (30000 ms; jimbotd: event_bus.slow_consumer_ms). Slow
     * consumers are cancelled with RESOURCE_EXHAUSTED "slow consumer". */
    uint32_t slow_consumer_ms;
    /* Calls kept requested from gRPC per method, so that calls to one method
     * are not serialized (16). */
    uint32_t calls_per_method;
} jb_server_options;

/*
 * Creates a server on @loop, binds @opts->listen and starts serving. A taken
 * port or an address that cannot be bound fails with JB_EUNAVAILABLE ("cannot
 * listen on ..."). gRPC core is initialised here (grpc_init) and shut down
 * by jb_server_close(). End it with jb_server_drain() then jb_server_close().
 */
jb_status jb_server_new(uv_loop_t *loop, const jb_server_options *opts, jb_server **out,
                        jb_error *err);

/* The address as bound ("127.0.0.1:50051", the port resolved; "unix:PATH"). */
const char *jb_server_address(const jb_server *srv);

typedef void (*jb_server_drained_cb)(void *userdata);

/*
 * Starts draining (see the lifecycle above): the lame duck phase lasts
 * while Publish calls wait for the bus, at most @grace_ms (0: 5000); then
 * the streams end and @cb (may be NULL) runs on the loop, later, never from
 * inside this call. From then on the server never subscribes, acks or
 * publishes on the bus again. Only the first call counts.
 */
void jb_server_drain(jb_server *srv, uint32_t grace_ms, jb_server_drained_cb cb, void *userdata);

typedef void (*jb_server_close_cb)(void *userdata);

/*
 * Finishes the shutdown: drains if not done yet, waits up to @grace_ms
 * (0: 5000) for calls to end by themselves (answers being sent, new calls
 * refused), then shuts gRPC down, cancels every call left and closes the
 * connections; once gRPC has let go of everything the thread is joined,
 * gRPC core is shut down, @cb (may be NULL) runs on the loop and @srv is
 * freed.
 */
void jb_server_close(jb_server *srv, uint32_t grace_ms, jb_server_close_cb cb, void *userdata);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_SERVER_H */
