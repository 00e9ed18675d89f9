/*
 * jimbot/client.h: the C client of jimbotd (gRPC), for C and C++ programs.
 *
 * A jb_client holds one gRPC channel to one jimbotd, one completion queue
 * and ONE thread of its own (the client thread) that receives every
 * completion. The caller runs no event loop: every function below may be
 * called from any thread, at any time between jb_client_new() and
 * jb_client_free(), and every callback runs on the client thread. A callback
 * must not block: the blocking functions (those without _async) fail with
 * JB_EINVAL when called from a callback, because they would wait for the
 * thread they run on.
 *
 * Errors: every fallible function returns a jb_status; gRPC status codes map
 * to them as follows, and the jb_error message starts with the method and
 * the gRPC code ("Publish: INVALID_ARGUMENT: topic 'a..b' has an empty
 * token").
 *
 *   OK                                    JB_OK
 *   INVALID_ARGUMENT, OUT_OF_RANGE,
 *   FAILED_PRECONDITION                   JB_EINVAL
 *   RESOURCE_EXHAUSTED                    JB_EBACKPRESSURE (retry hint from the
 *                                         trailing metadata "retry-after-ms")
 *   UNAVAILABLE                           JB_EUNAVAILABLE (no server, or it is
 *                                         shutting down)
 *   DEADLINE_EXCEEDED                     JB_ETIMEDOUT
 *   NOT_FOUND                             JB_ENOENT
 *   ALREADY_EXISTS                        JB_EEXIST
 *   UNIMPLEMENTED                         JB_EUNSUPPORTED
 *   CANCELLED                             JB_ECLOSED
 *   DATA_LOSS                             JB_ECORRUPT
 *   anything else                         JB_EIO
 *
 * Delivery is at least once. A subscription whose stream fails (server
 * restart, network loss, UNAVAILABLE) subscribes again by itself after an
 * exponential backoff with jitter; events that were delivered but not acked
 * before the failure are delivered again by the server (delivery_attempt
 * above 1). Consumers must therefore tolerate repeats; the sequence
 * identifies an event.
 *
 * Ownership: arguments are borrowed for the duration of the call unless
 * said otherwise; events passed to a publish function are copied (encoded)
 * before it returns. Events given to callbacks are borrowed until the
 * callback returns.
 */
#ifndef JIMBOT_CLIENT_H
#define JIMBOT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "jimbot/event.h"
#include "jimbot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct jb_client jb_client;
typedef struct jb_client_sub jb_client_sub;

/* The address used when none is given. */
#define JB_CLIENT_DEFAULT_ADDR "127.0.0.1:50051"

/* Options, copied by jb_client_new(); zero fields take the defaults shown. */
typedef struct jb_client_options {
    /* "host:port" or "unix:PATH"; NULL: JB_CLIENT_DEFAULT_ADDR. */
    const char *addr;
    /* Deadline of every unary call (publish, ack, health...): 10000. */
    uint32_t deadline_ms;
    /* Reconnect backoff: the first delay, doubled per failure up to the
     * maximum, each with up to 25% random jitter: 100 and 5000. */
    uint32_t backoff_min_ms;
    uint32_t backoff_max_ms;
    /* Client-side batching for jb_client_publish_buffered(): events are
     * sent as one PublishRequest per window, or as soon as max_batch events
     * wait. 0: no window: an event is sent at once when no batch is in
     * flight; those buffered while one is in flight go together, as the
     * next request, when its answer comes (at most max_batch each). The
     * seed's setting is 100. */
    uint32_t batch_window_ms;
    uint32_t max_batch; /* 1000 */
    /* Bytes that buffered events (waiting or being sent) may hold before
     * jb_client_publish_buffered() refuses with JB_EBACKPRESSURE: 64 MiB. */
    size_t max_buffered_bytes;
    /* Liveness: after keepalive_ms without traffic the client pings the
     * server (with or without calls in flight), and a ping unanswered for
     * keepalive_timeout_ms closes the connection: calls fail UNAVAILABLE
     * and subscriptions reconnect. So a server that vanished without
     * closing the connection (frozen, host gone, network cut) is noticed
     * in about keepalive_ms + keepalive_timeout_ms: 2000 and 3000. Values
     * under JB_CLIENT_KEEPALIVE_MIN_MS are raised to it (jimbotd allows a
     * ping that often); keepalive_ms JB_CLIENT_KEEPALIVE_OFF turns pings off. */
    uint32_t keepalive_ms;
    uint32_t keepalive_timeout_ms;
} jb_client_options;

/* keepalive_ms value that turns keepalive pings off (0 means "the default"). */
#define JB_CLIENT_KEEPALIVE_OFF UINT32_MAX
/* The shortest keepalive interval and timeout used. */
#define JB_CLIENT_KEEPALIVE_MIN_MS 1000

/*
 * Creates a client and its thread. Connecting is lazy: no server needs to
 * be running yet, and the first call that needs one connects. Free it with
 * jb_client_free().
 */
jb_status jb_client_new(const jb_client_options *opts, jb_client **out, jb_error *err);

/*
 * Cancels every call in flight (their callbacks run with JB_ECLOSED),
 * ends the subscriptions that are left (their handles become invalid),
 * drops buffered events that were not sent (call jb_client_flush() first to
 * keep them), stops the thread and frees @c. No other call on @c may run
 * concurrently or after. Not from a callback. NULL is a no-op.
 */
void jb_client_free(jb_client *c);

/* The address @c talks to (borrowed, valid until jb_client_free()). */
const char *jb_client_addr(const jb_client *c);

/* ---- Publishing ---------------------------------------------------------- */

/*
 * Publishes @n events (1 or more) as one request, all or none, and waits
 * for the answer, which comes once they are durable. On JB_OK,
 * @sequences[i] (may be NULL) holds event i's sequence and @duplicates[i]
 * (may be NULL) is 1 when event i repeated a recent id and was not stored
 * again. On JB_EBACKPRESSURE *@retry_after_ms (may be NULL) is the server's
 * hint (0 when it gave none). sequence, delivery_attempt and encoded of the
 * events are ignored.
 */
jb_status jb_client_publish(jb_client *c, const jb_event *events, size_t n, uint64_t *sequences,
                            uint8_t *duplicates, uint32_t *retry_after_ms, jb_error *err);

/*
 * Called on the client thread when an asynchronous publish ends. On JB_OK
 * @sequences and @duplicates hold @n entries; otherwise they are NULL, @n is
 * 0 and @err says why. All arguments are borrowed.
 */
typedef void (*jb_client_publish_cb)(jb_status status, const uint64_t *sequences,
                                     const uint8_t *duplicates, size_t n, uint32_t retry_after_ms,
                                     const jb_error *err, void *userdata);

/*
 * jb_client_publish() without waiting: @cb runs once with the outcome. If
 * this function fails, @cb is never called.
 */
jb_status jb_client_publish_async(jb_client *c, const jb_event *events, size_t n,
                                  jb_client_publish_cb cb, void *userdata, jb_error *err);

/*
 * Queues one event for client-side batching (options batch_window_ms and
 * max_batch) and returns at once. Batches are sent one at a time, in order,
 * so buffered events are stored in the order they were buffered. A batch refused with backpressure
 * or UNAVAILABLE is sent again after the server's hint or the backoff, for as long as the client
 * lives (an event with an id is stored once; one without may be stored twice if the server failed
 * after storing it). Any other failure drops the batch and is reported by the next
 * jb_client_flush(). JB_EBACKPRESSURE at once when max_buffered_bytes are held.
 */
jb_status jb_client_publish_buffered(jb_client *c, const jb_event *ev, jb_error *err);

/*
 * Sends what is buffered now and waits until every event buffered before
 * the call is acknowledged by the server (or dropped), at most @timeout_ms
 * (0: no limit; JB_ETIMEDOUT when it passes). Returns the first failure
 * that dropped buffered events since the previous flush, with the number of
 * events lost in the message, and forgets it.
 */
jb_status jb_client_flush(jb_client *c, uint32_t timeout_ms, jb_error *err);

/* ---- Subscribing --------------------------------------------------------- */

/* Where a new consumer group starts (an existing group keeps its position). */
typedef enum jb_client_start {
    JB_CLIENT_START_NEW = 0,           /* events published from now on */
    JB_CLIENT_START_ALL = 1,           /* everything the server still holds */
    JB_CLIENT_START_FROM_SEQUENCE = 2, /* from start_sequence (inclusive) */
    JB_CLIENT_START_FROM_TIME = 3,     /* from start_time_ms */
} jb_client_start;

/*
 * Receives one batch on the client thread: @n events of the subscription's
 * group, in sequence order. The events are borrowed until the callback
 * returns. Ack them (jb_client_sub_ack_async() from here, or later from any
 * thread with the sequences copied); unacked events count against
 * max_in_flight and come back after the group's ack wait.
 */
typedef void (*jb_client_deliver_fn)(jb_client_sub *sub, const jb_event *events, size_t n,
                                     void *userdata);

/*
 * Called once on the client thread when a subscription ends for good: the
 * server refused it (JB_EINVAL: bad pattern; JB_EUNSUPPORTED...), or the
 * client is being freed (JB_ECLOSED). Not called after
 * jb_client_unsubscribe(). The subscription stays valid until unsubscribed.
 */
typedef void (*jb_client_sub_end_fn)(jb_client_sub *sub, jb_status status, const jb_error *err,
                                     void *userdata);

/* Subscription options, copied by jb_client_subscribe(). */
typedef struct jb_client_sub_options {
    const char *pattern; /* "game_events.>"; required */
    /* The consumer group; NULL or "": a private group for this
     * subscription alone (its name, if the server tells it, is given by
     * jb_client_sub_group()). */
    const char *group;
    uint32_t max_in_flight; /* unacked events at once; 0: the server's default */
    jb_client_start start;
    uint64_t start_sequence;
    int64_t start_time_ms;
    uint32_t ack_wait_ms; /* 0: the server's default; applies to a new group */
    uint32_t max_deliver; /* 0: the server's default; applies to a new group */
    /* Pull mode: batches received and not yet taken with
     * jb_client_sub_next(); when this many wait, the client stops reading
     * and the server's flow control holds the rest. 0: 16. */
    uint32_t max_queued_batches;
    jb_client_sub_end_fn on_end; /* may be NULL */
} jb_client_sub_options;

/*
 * Subscribes @opts->pattern for @opts->group. With @deliver, batches are
 * pushed to it on the client thread (@userdata is passed to it and to
 * on_end); with @deliver NULL the subscription is in pull mode: take
 * batches with jb_client_sub_next(). The stream starts at once and
 * reconnects by itself (see the top of this header). On success *@out is
 * the handle; end it with jb_client_unsubscribe().
 */
jb_status jb_client_subscribe(jb_client *c, const jb_client_sub_options *opts,
                              jb_client_deliver_fn deliver, void *userdata, jb_client_sub **out,
                              jb_error *err);

/* A batch taken in pull mode. Read-only; free it with jb_client_batch_free(). */
typedef struct jb_client_batch {
    const jb_event *events;
    size_t n;
} jb_client_batch;

/*
 * Pull mode: takes the oldest received batch, waiting at most @timeout_ms
 * (0: do not wait; negative: no limit). JB_ETIMEDOUT when none came; the
 * ending status when the subscription has ended for good (as on_end would
 * say). On JB_OK *@out is a batch owned by the caller. One thread at a time
 * per subscription.
 */
jb_status jb_client_sub_next(jb_client_sub *sub, int timeout_ms, jb_client_batch **out,
                             jb_error *err);

/* Frees a batch from jb_client_sub_next() (its events become invalid). NULL is a no-op. */
void jb_client_batch_free(jb_client_batch *batch);

/*
 * The group the subscription acks for: the one it was given, or the
 * private group's name once the server has said it (an empty string until
 * then). Written into @buf (NUL-terminated, truncated to @size); returns
 * @buf.
 */
const char *jb_client_sub_group(const jb_client_sub *sub, char *buf, size_t size);

/* Events delivered on this subscription so far, and times it has reconnected. */
uint64_t jb_client_sub_delivered(const jb_client_sub *sub);
uint32_t jb_client_sub_reconnects(const jb_client_sub *sub);

/*
 * Ends a subscription. When this returns, its callbacks are not running and
 * will not run again (from inside its own callback: once that callback
 * returns). Its unacked events go back to the group on the server. Batches
 * taken with jb_client_sub_next() stay valid until freed. @sub becomes
 * invalid. No other thread may be inside jb_client_sub_next(@sub). NULL is a
 * no-op.
 */
void jb_client_unsubscribe(jb_client_sub *sub);

/* ---- Acknowledging ------------------------------------------------------- */

/*
 * Acks @n sequences for @group: the group is done with them. Sequences not
 * in flight for the group are ignored by the server. JB_ENOENT for an
 * unknown group.
 */
jb_status jb_client_ack(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                        jb_error *err);

/*
 * Nacks @n sequences for @group: each is delivered again after @delay_ms
 * (0: the server's backoff schedule).
 */
jb_status jb_client_nack(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                         uint32_t delay_ms, jb_error *err);

/* Called on the client thread when an asynchronous call ends; @err is borrowed. */
typedef void (*jb_client_done_cb)(jb_status status, const jb_error *err, void *userdata);

/* The same without waiting; @cb may be NULL. If these fail, @cb is never called. */
jb_status jb_client_ack_async(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                              jb_client_done_cb cb, void *userdata, jb_error *err);
jb_status jb_client_nack_async(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                               uint32_t delay_ms, jb_client_done_cb cb, void *userdata,
                               jb_error *err);

/*
 * Acks for a subscription's group (jb_client_sub_group()). The async form
 * may be called from the subscription's own deliver callback.
 */
jb_status jb_client_sub_ack(jb_client_sub *sub, const uint64_t *sequences, size_t n, jb_error *err);
jb_status jb_client_sub_ack_async(jb_client_sub *sub, const uint64_t *sequences, size_t n,
                                  jb_client_done_cb cb, void *userdata, jb_error *err);

/* ---- Health and other calls --------------------------------------------- */

/* grpc.health.v1 serving status. */
typedef enum jb_health {
    JB_HEALTH_UNKNOWN = 0,
    JB_HEALTH_SERVING = 1,
    JB_HEALTH_NOT_SERVING = 2,
    JB_HEALTH_SERVICE_UNKNOWN = 3,
} jb_health;

/* "SERVING", "NOT_SERVING"...; never NULL. */
const char *jb_health_name(jb_health health);

/*
 * Asks grpc.health.v1.Health/Check about @service ("" or NULL: the server
 * as a whole) and stores the answer in *@out.
 */
jb_status jb_client_health(jb_client *c, const char *service, jb_health *out, jb_error *err);

/*
 * Any unary method by its path ("/jimbot.infra.v1.Infrastructure/
 * GetResourceStatus"), with the request and the response as serialized
 * protobuf: for C++ callers with their own generated classes, and for
 * methods this header has no wrapper for. On JB_OK *@response is a malloc'd
 * buffer of *@response_len bytes (NULL when empty) that the caller frees
 * with free().
 */
jb_status jb_client_call(jb_client *c, const char *method, const void *request, size_t request_len,
                         void **response, size_t *response_len, jb_error *err);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_CLIENT_H */
