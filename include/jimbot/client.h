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
 *                                         trailing metadata "retry-after-ms";
 *                                         a submit "rate-limited":
 *                                         JB_ERATELIMITED)
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

/* ---- Infrastructure: GPU leases ------------------------------------------ */

/*
 * A GPU lease (Infrastructure/AcquireGpu) is one stream: it waits in
 * jimbotd's queue (QUEUED events with the position), is granted a device
 * (GRANTED), then receives KEEPALIVE events, EXPIRING once shortly before
 * the lease's end, and finally ENDED. The lease is held until it is
 * released (jb_client_gpu_release(), or `jimbotctl gpu release ID` from
 * anywhere), until it expires, or until its stream ends: freeing the handle,
 * freeing the client or the process dying releases it at once on the daemon.
 *
 * How it ends (ENDED's status):
 *   JB_OK               released (ReleaseGpu of this lease, from anyone)
 *   JB_ELEASE_EXPIRED   the lease reached its expiry (DEADLINE_EXCEEDED
 *                       "lease expired"); the device went to the next waiter
 *   JB_EUNAVAILABLE     jimbotd shut down or could not be reached (and, with
 *                       reattach_ms, re-attaching failed for that long). The
 *                       daemon KEEPS a lease whose stream ended at its
 *                       shutdown, for gpu.reattach_grace_seconds (15 s) after
 *                       its restart: ask again with lease_id to re-attach.
 *   JB_ENOENT           re-attach: no such lease is held (any more)
 *   JB_EEXIST           re-attach: a live stream holds the lease still
 *   JB_EINVAL           bad component or reason (empty, too long)
 *   JB_EBACKPRESSURE    too many waiters (retry_after_ms: the daemon's hint)
 *   JB_ECLOSED          the request left the queue before a grant
 *                       (jb_client_gpu_release() while queued) or the
 *                       client is being freed
 *   others              as in the table at the top of this header
 *
 * Re-attach: with reattach_ms > 0, a GRANTED lease whose stream ends
 * UNAVAILABLE (the daemon restarting) is not ended: a DETACHED event says
 * so, and the client calls AcquireGpu again with the lease's id (after the
 * client's backoff, again and again) for up to reattach_ms; success is a
 * GRANTED event with reattached 1 and the same lease id, device and expiry.
 * A stream that ends UNAVAILABLE before its grant ends the request.
 *
 * Two modes, chosen at jb_client_gpu_acquire_async(): with a callback, each
 * event is pushed to it on the client thread (borrowed until it returns); with
 * NULL, events queue in the handle and are taken with jb_client_gpu_wait()
 * (successive KEEPALIVE or QUEUED events waiting there are merged into the
 * latest). jb_client_gpu_acquire() (blocking) uses the second mode.
 *
 * Ownership: every handle that an acquire function gives (*out) belongs to
 * the caller, who frees it with jb_client_gpu_free() exactly once, whatever
 * happened to the lease: also after ENDED, after jb_client_gpu_release(), and
 * when a release failed. A failed acquire gives no handle. jb_client_free()
 * ends (ENDED with JB_ECLOSED, in callback mode) and frees the handles left;
 * they become invalid. Strings in the options are copied.
 */
typedef struct jb_client_gpu jb_client_gpu;

/* Sizes of the strings in jb_client_gpu_event, with the NUL. */
#define JB_CLIENT_LEASE_ID_MAX 132
#define JB_CLIENT_GPU_UUID_MAX 96

typedef enum jb_client_gpu_kind {
    JB_CLIENT_GPU_QUEUED = 1, /* waiting: position (1 = next); again when it changes */
    JB_CLIENT_GPU_GRANTED,    /* lease_id, device, device_uuid, expires_ms, reattached */
    JB_CLIENT_GPU_KEEPALIVE,  /* expires_ms */
    JB_CLIENT_GPU_EXPIRING,   /* expires_ms: the lease ends then (once) */
    JB_CLIENT_GPU_DETACHED,   /* granted, the stream broke (err); re-attaching */
    JB_CLIENT_GPU_ENDED,      /* the last event: status, err */
} jb_client_gpu_kind;

/* One event, or (jb_client_gpu_state()) the lease as the client knows it. Plain data. */
typedef struct jb_client_gpu_event {
    jb_client_gpu_kind kind;
    uint32_t position;                        /* QUEUED: 1 = next in line */
    char lease_id[JB_CLIENT_LEASE_ID_MAX];    /* "" until granted */
    uint32_t device;                          /* 0-based; CUDA_VISIBLE_DEVICES takes it as is */
    char device_uuid[JB_CLIENT_GPU_UUID_MAX]; /* NVML's UUID; "" without NVML */
    int64_t expires_ms;                       /* wall clock, ms since the epoch; 0 until granted */
    int reattached;                           /* GRANTED by a re-attach */
    int expiring;                             /* state: EXPIRING came */
    jb_status status;                         /* ENDED: how (see above); DETACHED: why */
    uint32_t retry_after_ms;                  /* ENDED with JB_EBACKPRESSURE: the hint */
    jb_error err;                             /* ENDED with status != JB_OK, DETACHED: the reason */
} jb_client_gpu_event;

/*
 * Called on the client thread for each event of @lease (@ev is borrowed).
 * ENDED is the last call. It may call jb_client_gpu_free(@lease) (no call
 * follows then) and the _async functions; not the blocking ones.
 */
typedef void (*jb_client_gpu_fn)(jb_client_gpu *lease, const jb_client_gpu_event *ev,
                                 void *userdata);

/* What to ask for; copied. */
typedef struct jb_client_gpu_options {
    const char *component;     /* who asks; required ("training", "inference"...) */
    int32_t priority;          /* higher first among waiters of the same class */
    uint32_t duration_seconds; /* wanted lease length; 0: the daemon's cap */
    const char *reason;        /* shown in status and logs; NULL: none */
    uint32_t pid;              /* the process that will use the GPU; 0: unknown */
    const char *lease_id;      /* re-attach to this held lease; NULL or "": a new one */
    uint32_t reattach_ms;      /* keep re-attaching this long after a break; 0: never */
} jb_client_gpu_options;

/*
 * Starts a lease request; returns at once. With @cb, events go to it (with
 * @userdata); with @cb NULL, take them with jb_client_gpu_wait(). Refusals
 * by the daemon (bad component, too many waiters...) come as ENDED. On JB_OK
 * *@out is the caller's handle (see Ownership above); if this fails there is
 * no handle and no callback.
 */
jb_status jb_client_gpu_acquire_async(jb_client *c, const jb_client_gpu_options *opts,
                                      jb_client_gpu_fn cb, void *userdata, jb_client_gpu **out,
                                      jb_error *err);

/*
 * Asks for a lease and waits until it is granted, at most @timeout_ms (0: no
 * limit). On JB_OK *@out is a granted lease in pull mode (its GRANTED event
 * already taken; see jb_client_gpu_state()), to be freed with
 * jb_client_gpu_free(). Otherwise no handle: the request left the queue, and
 * the status is ENDED's (above), or JB_ETIMEDOUT when @timeout_ms passed.
 */
jb_status jb_client_gpu_acquire(jb_client *c, const jb_client_gpu_options *opts,
                                uint32_t timeout_ms, jb_client_gpu **out, jb_error *err);

/*
 * Pull mode: the next event of @lease, waiting at most @timeout_ms (0: do not
 * wait; negative: no limit). JB_OK with *@ev filled; JB_ETIMEDOUT when none
 * came. Once ENDED has been taken, every later call returns it again at once,
 * so "has it ended?" can be asked any number of times. JB_EINVAL for a lease
 * with a callback. One thread at a time per lease.
 */
jb_status jb_client_gpu_wait(jb_client_gpu *lease, int timeout_ms, jb_client_gpu_event *ev,
                             jb_error *err);

/*
 * The lease as the client knows it now, in either mode: kind is the latest
 * event's (0 before the first), expires_ms follows the keepalives, expiring
 * says whether EXPIRING came, status and err are set once ENDED.
 */
void jb_client_gpu_state(const jb_client_gpu *lease, jb_client_gpu_event *out);

/* What a release reports (ReleaseGpuResponse). */
typedef struct jb_client_gpu_release_info {
    uint64_t held_ms;
    uint32_t device;
    /* With NVML and a pid: device memory the holder's processes still held
     * (the device goes to the next waiter once it is freed). */
    uint64_t memory_held_bytes;
} jb_client_gpu_release_info;

/*
 * Releases @lease and waits (at most the client's deadline) until its stream
 * has ended, so that jb_client_gpu_state() then says ENDED. A granted lease is
 * released with ReleaseGpu (*@info, may be NULL, is its answer) and ends with
 * JB_OK; a request still queued leaves the queue (ends with JB_ECLOSED,
 * *@info zeroed); a lease already ended: JB_OK, nothing done. Fails with the
 * ReleaseGpu's status (e.g. JB_ENOENT when it expired meanwhile, or
 * JB_EUNAVAILABLE). The handle stays the caller's: free it afterwards.
 */
jb_status jb_client_gpu_release(jb_client_gpu *lease, jb_client_gpu_release_info *info,
                                jb_error *err);

/* The end of an asynchronous release: @info (on JB_OK) and @err are borrowed. */
typedef void (*jb_client_gpu_release_cb)(jb_status status, const jb_client_gpu_release_info *info,
                                         const jb_error *err, void *userdata);

/*
 * jb_client_gpu_release() without waiting: @cb (may be NULL) runs on the
 * client thread once ReleaseGpu is answered (soon, with JB_OK and zeros, for
 * a request still queued, which leaves the queue, or a lease already
 * ended). The lease's ENDED comes too, before or after. @cb runs also when
 * the handle is freed first (with JB_ECLOSED when the client is freed). If
 * this fails, @cb is never called.
 */
jb_status jb_client_gpu_release_async(jb_client_gpu *lease, jb_client_gpu_release_cb cb,
                                      void *userdata, jb_error *err);

/*
 * Releases lease @lease_id, held by anyone (ReleaseGpu): `jimbotctl gpu
 * release`. JB_ENOENT for an unknown lease, JB_EINVAL for an empty id.
 * @info may be NULL.
 */
jb_status jb_client_gpu_release_id(jb_client *c, const char *lease_id,
                                   jb_client_gpu_release_info *info, jb_error *err);

/*
 * Frees @lease. A lease still held or waiting has its stream cancelled,
 * which releases it (or leaves the queue) on the daemon at once. When this
 * returns the lease's callback is not running and will not run again (from
 * inside its own callback: once that returns). No other thread may be inside
 * a function of @lease. NULL is a no-op.
 */
void jb_client_gpu_free(jb_client_gpu *lease);

/* ---- Infrastructure: the LLM API budget ----------------------------------- */

typedef struct jb_client_quota_request {
    const char *component; /* required */
    uint32_t count;        /* requests to take; 0 means 1 */
    /* Wait up to this long for budget (0: answer at once). The call's
     * deadline is wait_ms plus the client's deadline_ms. */
    uint32_t wait_ms;
    int32_t priority; /* among waiters, higher first */
} jb_client_quota_request;

typedef struct jb_client_quota {
    int granted;             /* 1: taken; 0: not (an answer, not an error) */
    uint32_t remaining;      /* left in the window after this call */
    uint64_t retry_after_ms; /* not granted: when enough budget frees up */
    uint32_t limit;          /* the hourly limit in force */
} jb_client_quota;

/*
 * Takes @req->count requests from the budget (AcquireApiQuota) and stores the
 * answer in *@out. "Not granted" is JB_OK with out->granted 0. JB_EINVAL for
 * an empty component or a count over the limit (or the component's share),
 * JB_EBACKPRESSURE when too many wait.
 */
jb_status jb_client_quota_acquire(jb_client *c, const jb_client_quota_request *req,
                                  jb_client_quota *out, jb_error *err);

/* The end of an asynchronous quota call: @q on JB_OK, @err otherwise; borrowed. */
typedef void (*jb_client_quota_cb)(jb_status status, const jb_client_quota *q, const jb_error *err,
                                   void *userdata);

/* The same without waiting; @cb runs once on the client thread (never if this fails). */
jb_status jb_client_quota_acquire_async(jb_client *c, const jb_client_quota_request *req,
                                        jb_client_quota_cb cb, void *userdata, jb_error *err);

/* ---- Infrastructure: the request queue ----------------------------------- */

/*
 * Components put a request on a named queue of jimbotd (SubmitRequest) and
 * wait for its answer; workers, the processes that call the LLM, take
 * requests off the queue (a TakeRequests stream) and answer each one
 * (Respond). docs/coordinator.md "The request queue" has the semantics:
 * priority, the budget pacing, the cache and coalescing, poison.
 *
 * How a submit ends:
 *   JB_OK               the worker's answer (or the cache's: cached 1). A
 *                       worker that could not answer gives an error text:
 *                       JB_OK still, with error non-empty (never cached)
 *   JB_EUNAVAILABLE     no worker takes the queue (reason "no-worker"), or
 *                       jimbotd is shutting down or unreachable (no reason)
 *   JB_EBACKPRESSURE    the queue is full (reason "queue-full"); retry after
 *                       the hint
 *   JB_ERATELIMITED     a queue paced by the API budget cannot hand the
 *                       request out before its deadline (reason
 *                       "rate-limited"); the hint is when it could
 *   JB_EIO              the request is poisoned (reason "poisoned"): it was
 *                       handed to max_deliveries workers that went away
 *                       without answering
 *   JB_ETIMEDOUT        no answer within the request's timeout
 *   JB_ENOENT           no such queue
 *   JB_EEXIST           the request_id is in use in that queue
 *   JB_EINVAL           bad queue name, request_id or type
 *   others              as in the table at the top of this header
 *
 * A worker is one stream: it is registered once jimbotd has answered it
 * with its initial metadata (REGISTERED), after which submits find it; then
 * it gets at most max_outstanding tasks unanswered at once (TASK), each to
 * be answered with jb_client_respond() (from any thread, by anyone who
 * knows the request_id). When its stream ends (ENDED: jb_client_worker_free(),
 * an error, jimbotd shutting down), the tasks it did not answer go back to
 * the queue for another worker. A worker does not re-open its stream by
 * itself: start a new one.
 *
 * Ownership: the strings and payloads of requests and responses given to
 * these functions are copied before they return. A response from
 * jb_client_submit() and a task from jb_client_worker_next() are the
 * caller's, freed with jb_client_response_free() and jb_client_task_free();
 * those given to callbacks are borrowed until the callback returns.
 */

/* The size of jb_client_submit_refusal.reason, with the NUL. */
#define JB_CLIENT_REASON_MAX 32

/* What to submit; copied. */
typedef struct jb_client_request {
    const char *queue;      /* required ("claude") */
    const char *request_id; /* NULL or "": jimbotd assigns one */
    const char *type;       /* the payload's protobuf type; NULL: none */
    const void *payload;
    size_t payload_len;
    int32_t priority; /* higher first */
    /* How long to wait for the answer; 0: the queue's timeout_ms (30000
     * unless configured). The call's deadline is this plus the client's
     * deadline_ms (with 0: plus the longest a queue may be configured). */
    uint32_t timeout_ms;
    const char *submitter; /* who asks, for status and logs; NULL: the peer's address */
    int bypass_cache;      /* neither answer from the cache nor join an equal request */
} jb_client_request;

/*
 * An answer (QueuedResponse): what jb_client_submit() gives, and what a
 * worker passes to jb_client_respond() (which ignores cached). Read-only
 * when given by the library, whose strings are never NULL ("" when unset).
 */
typedef struct jb_client_response {
    const char *request_id;
    const char *type; /* the payload's type; NULL: none */
    const void *payload;
    size_t payload_len;
    const char *error; /* non-empty: the worker could not answer; NULL or "": it did */
    int cached;        /* answered from jimbotd's cache */
} jb_client_response;

/* Why a submit was refused: jimbotd's "jimbot-error" trailer and "retry-after-ms" hint. */
typedef struct jb_client_submit_refusal {
    /* "no-worker", "queue-full", "rate-limited", "poisoned"; "" for other failures. */
    char reason[JB_CLIENT_REASON_MAX];
    uint32_t retry_after_ms; /* queue-full, rate-limited, shutting down: retry after; else 0 */
} jb_client_submit_refusal;

/*
 * Submits @req and waits for its answer (see above). On JB_OK *@out is the
 * caller's response (free it with jb_client_response_free()); otherwise no
 * response, and *@why (may be NULL) says why jimbotd refused it. Not from a
 * client callback.
 */
jb_status jb_client_submit(jb_client *c, const jb_client_request *req, jb_client_response **out,
                           jb_client_submit_refusal *why, jb_error *err);

/*
 * The end of an asynchronous submit, on the client thread: @resp on JB_OK,
 * else @why and @err; all borrowed until it returns.
 */
typedef void (*jb_client_submit_cb)(jb_status status, const jb_client_response *resp,
                                    const jb_client_submit_refusal *why, const jb_error *err,
                                    void *userdata);

/* jb_client_submit() without waiting: @cb runs once (never if this fails). */
jb_status jb_client_submit_async(jb_client *c, const jb_client_request *req, jb_client_submit_cb cb,
                                 void *userdata, jb_error *err);

/* Frees a response from jb_client_submit(). NULL is a no-op. */
void jb_client_response_free(jb_client_response *resp);

/*
 * Answers the task @resp->request_id (Respond): with @resp's type and
 * payload, or with its error text. JB_ENOENT when no worker holds that id
 * (unknown, answered already, or given back because its worker's stream
 * ended); JB_EINVAL for an empty id.
 */
jb_status jb_client_respond(jb_client *c, const jb_client_response *resp, jb_error *err);

/* The same without waiting; @cb may be NULL. If this fails, @cb is never called. */
jb_status jb_client_respond_async(jb_client *c, const jb_client_response *resp,
                                  jb_client_done_cb cb, void *userdata, jb_error *err);

typedef struct jb_client_worker jb_client_worker;

/* A request handed to a worker (QueuedRequest). Read-only. */
typedef struct jb_client_task {
    const char *request_id; /* answer with this */
    const char *queue;
    const char *type;
    const void *payload;
    size_t payload_len;
    int32_t priority;
    uint32_t timeout_ms;     /* left before its last submitter stops waiting */
    const char *submitter;   /* the request's submitter, or its peer address */
    int64_t enqueued_ms;     /* wall clock, ms since the epoch */
    uint32_t delivery_count; /* 1 the first time; more after workers went away */
} jb_client_task;

typedef enum jb_client_worker_kind {
    JB_CLIENT_WORKER_REGISTERED = 1, /* submits find this worker from now on */
    JB_CLIENT_WORKER_TASK,           /* task: answer it */
    JB_CLIENT_WORKER_ENDED,          /* the last event: status, err */
} jb_client_worker_kind;

typedef struct jb_client_worker_event {
    jb_client_worker_kind kind;
    const jb_client_task *task; /* TASK: borrowed until the callback returns */
    /* ENDED: JB_OK when the stream ended cleanly, JB_ECLOSED after
     * jb_client_worker_free() or jb_client_free(), JB_ENOENT for an unknown
     * queue, JB_EINVAL for bad options, JB_EUNAVAILABLE when jimbotd shut
     * down or could not be reached... */
    jb_status status;
    jb_error err; /* ENDED with status != JB_OK */
} jb_client_worker_event;

/*
 * Called on the client thread for each event of @w (@ev borrowed); ENDED is
 * the last call. It may answer the task with jb_client_respond_async() (or
 * keep a copy of its request_id and answer later from any thread), and may
 * call jb_client_worker_free(@w) (no call follows then); not the blocking
 * functions. The next task is received once it returns.
 */
typedef void (*jb_client_worker_fn)(jb_client_worker *w, const jb_client_worker_event *ev,
                                    void *userdata);

/* A worker; copied. */
typedef struct jb_client_worker_options {
    const char *queue;        /* required */
    uint32_t max_outstanding; /* tasks held unanswered at once; 0: 1; at most 1000 */
    const char *name;         /* the worker's name for status and logs; NULL: none */
} jb_client_worker_options;

/*
 * Opens a TakeRequests stream for @opts->queue; returns at once. With @cb,
 * events go to it (with @userdata); with @cb NULL, take tasks with
 * jb_client_worker_next() and wait for the registration with
 * jb_client_worker_wait_registered(). Refusals by jimbotd (unknown queue...)
 * come as ENDED. On JB_OK *@out is the caller's handle, freed with
 * jb_client_worker_free() exactly once; if this fails there is no handle
 * and no callback.
 */
jb_status jb_client_worker_start(jb_client *c, const jb_client_worker_options *opts,
                                 jb_client_worker_fn cb, void *userdata, jb_client_worker **out,
                                 jb_error *err);

/*
 * Waits until @w is registered, at most @timeout_ms (negative: no limit):
 * JB_OK once it is; the ending status (as ENDED's) when the stream ended
 * first; JB_ETIMEDOUT. In either mode; not from a client callback.
 */
jb_status jb_client_worker_wait_registered(jb_client_worker *w, int timeout_ms, jb_error *err);

/*
 * Pull mode: the next task of @w, waiting at most @timeout_ms (0: do not
 * wait; negative: no limit). On JB_OK *@out is the caller's (free it with
 * jb_client_task_free(), answered or not); JB_ETIMEDOUT when none came; once
 * the stream has ended and no task is left, its ending status every time
 * (JB_ECLOSED for a stream that ended cleanly).
 * JB_EINVAL for a worker with a callback. One thread at a time per worker.
 */
jb_status jb_client_worker_next(jb_client_worker *w, int timeout_ms, jb_client_task **out,
                                jb_error *err);

/* Frees a task from jb_client_worker_next(). NULL is a no-op. */
void jb_client_task_free(jb_client_task *task);

/*
 * Ends @w's stream, if still open (its unanswered tasks go back to the
 * queue), and frees it. When this returns its callback is not running and
 * will not run again (from inside its own callback: once that returns). No
 * other thread may be inside a function of @w. Tasks taken with
 * jb_client_worker_next() stay valid until freed. NULL is a no-op.
 */
void jb_client_worker_free(jb_client_worker *w);

/* ---- Infrastructure: resource status -------------------------------------- */

/* One GPU device and its lease. */
typedef struct jb_client_gpu_device {
    uint32_t index;
    const char *name; /* NVML's ("NVIDIA H200"); "" without NVML */
    const char *uuid;
    int available;
    const char *holder; /* the lease's component; "" when free */
    const char *lease_id;
    const char *reason;
    int64_t expires_ms; /* ms since the epoch */
    int64_t granted_ms;
    uint32_t holder_pid;
    uint64_t memory_total_bytes; /* NVML's; 0 without NVML */
    uint64_t memory_used_bytes;
    int releasing; /* released, waiting for its memory to be freed */
    int restored;  /* restored after a restart, waiting for its holder to re-attach */
} jb_client_gpu_device;

/* A waiter for a GPU, in the order they will be served. */
typedef struct jb_client_gpu_waiter {
    uint32_t position; /* 1 = next */
    const char *component;
    int32_t priority;
    int64_t since_ms;
    const char *reason;
} jb_client_gpu_waiter;

typedef struct jb_client_quota_component {
    const char *component;
    uint32_t used;  /* spent in the window */
    uint32_t share; /* its configured share; 0 = none of its own */
} jb_client_quota_component;

typedef struct jb_client_queue_depth {
    const char *queue;
    uint32_t depth;
} jb_client_queue_depth;

/* One request queue (QueueStatus). */
typedef struct jb_client_queue_status {
    const char *name;
    const char *budget; /* "claude": paced by the API budget; "none" */
    uint32_t max_depth;
    uint32_t depth;     /* waiting for a worker (or a unit of budget) */
    uint32_t in_flight; /* held by workers */
    uint32_t workers;
    uint64_t oldest_wait_ms; /* how long the oldest waiting request has waited */
    /* Counters since jimbotd started. */
    uint64_t submitted;
    uint64_t cache_hits;
    uint64_t coalesced;
    uint64_t poisoned;
    uint64_t cache_bytes; /* the queue's share of the response cache */
    uint32_t cache_entries;
} jb_client_queue_status;

typedef enum jb_client_breaker_state {
    JB_CLIENT_BREAKER_CLOSED = 0,
    JB_CLIENT_BREAKER_OPEN = 1,
    JB_CLIENT_BREAKER_HALF_OPEN = 2,
} jb_client_breaker_state;

typedef struct jb_client_breaker {
    const char *name;
    jb_client_breaker_state state;
    uint32_t failures;
    int64_t retry_at_ms;
} jb_client_breaker;

/* One component's connections to the shared Redis (RedisComponentStatus). */
typedef struct jb_client_redis_component {
    const char *component;
    const char *username; /* its Redis ACL user */
    const char *key_prefix;
    uint32_t connections;        /* its ACL user's connections at the last check */
    uint32_t allowance;          /* how many it may hold */
    uint64_t connections_closed; /* ended by jimbotd as over the allowance, since it started */
} jb_client_redis_component;

/* The shared Redis (RedisStatus); all zero and "" when configured is 0. */
typedef struct jb_client_redis_status {
    int configured;           /* resource_coordinator.redis.url is set */
    const char *url;          /* without any password */
    int reachable;            /* connected, authenticated, the ACL users in place */
    const char *error;        /* why not reachable; else the last error, or "" */
    int64_t checked_ms;       /* the last CLIENT LIST check (ms since the epoch; 0: none yet) */
    uint32_t connections;     /* every client connection it counted then */
    uint32_t max_connections; /* resource_coordinator.redis.max_connections */
    const jb_client_redis_component *components;
    size_t n_components;
} jb_client_redis_status;

/*
 * GetResourceStatus, read-only. Every pointer inside (strings, arrays,
 * encoded) lives as long as the struct: free it all with
 * jb_client_resource_status_free().
 */
typedef struct jb_client_resource_status {
    int gpu_available;      /* some device is free */
    const char *gpu_source; /* "nvml" or "config" */
    const jb_client_gpu_device *gpus;
    size_t n_gpus;
    const jb_client_gpu_waiter *gpu_waiters;
    size_t n_gpu_waiters;
    uint32_t budget_limit;     /* claude.hourly_limit */
    uint32_t budget_used;      /* spent in the window */
    uint32_t budget_remaining; /* left in the window */
    uint32_t budget_waiting;   /* AcquireApiQuota calls waiting */
    uint32_t budget_window_seconds;
    int64_t budget_next_slot_ms; /* when the next request frees up; 0: available now */
    const jb_client_quota_component *budget_components;
    size_t n_budget_components;
    /* The depth of each queue (the older queue_depths map; request_queues has more). */
    const jb_client_queue_depth *queues;
    size_t n_queues;
    /* Every request queue, by name. */
    const jb_client_queue_status *request_queues;
    size_t n_request_queues;
    const jb_client_breaker *breakers;
    size_t n_breakers;
    jb_client_redis_status redis;
    /* The ResourceStatus message as received (serialized protobuf). */
    const void *encoded;
    size_t encoded_len;
} jb_client_resource_status;

/* Asks GetResourceStatus; on JB_OK *@out is the caller's (free it as said above). */
jb_status jb_client_resource_status_get(jb_client *c, jb_client_resource_status **out,
                                        jb_error *err);

/* The end of an asynchronous status call: @st on JB_OK (the callback's to keep or free). */
typedef void (*jb_client_resource_status_cb)(jb_status status, jb_client_resource_status *st,
                                             const jb_error *err, void *userdata);

/* The same without waiting; @cb runs once on the client thread (never if this fails). */
jb_status jb_client_resource_status_get_async(jb_client *c, jb_client_resource_status_cb cb,
                                              void *userdata, jb_error *err);

/*
 * Decodes a serialized ResourceStatus (what jb_client_call() returns for
 * GetResourceStatus) into a new struct; JB_EPARSE when it does not decode.
 */
jb_status jb_client_resource_status_decode(const void *data, size_t len,
                                           jb_client_resource_status **out, jb_error *err);

/* Frees a status and everything it points to. NULL is a no-op. */
void jb_client_resource_status_free(jb_client_resource_status *st);

/* ---- Infrastructure: the shared Redis ------------------------------------- */

/*
 * How a component connects to the shared Redis (GetRedisAccess): the Redis
 * ACL user that jimbotd made for it, allowed the keys key_prefix* (read and
 * write) and shared_prefix* (as shared_access says) and nothing else, and
 * how many connections it may hold at once (jimbotd closes the newest
 * beyond that). Read-only; every string lives as long as the struct. The
 * password is a secret: do not log it. Free with jb_client_redis_access_free().
 */
typedef struct jb_client_redis_access {
    const char *component;
    const char *url; /* "redis://HOST:PORT", without credentials */
    const char *username;
    const char *password;
    const char *key_prefix; /* "claude:" */
    uint32_t max_connections;
    const char *shared_prefix; /* "shared:" */
    const char *shared_access; /* "readwrite", "read" or "none" */
} jb_client_redis_access;

/*
 * Asks GetRedisAccess for @component; on JB_OK *@out is the caller's. Fails
 * with JB_ENOENT for a component without a namespace, JB_EINVAL for an empty
 * one or when jimbotd has no Redis configured (FAILED_PRECONDITION, which
 * the message names), JB_EUNAVAILABLE while jimbotd has not provisioned the
 * ACL users yet (Redis unreachable) or cannot be reached itself.
 */
jb_status jb_client_redis_access_get(jb_client *c, const char *component,
                                     jb_client_redis_access **out, jb_error *err);

/*
 * RotateRedisPassword: gives @component's ACL user a new password (made
 * durable by jimbotd, then set in Redis; connections already authenticated
 * stay open) and answers the new access as jb_client_redis_access_get().
 */
jb_status jb_client_redis_password_rotate(jb_client *c, const char *component,
                                          jb_client_redis_access **out, jb_error *err);

/* The end of an asynchronous access call: @a on JB_OK (the callback's to keep or free). */
typedef void (*jb_client_redis_access_cb)(jb_status status, jb_client_redis_access *a,
                                          const jb_error *err, void *userdata);

/* The same without waiting; @cb runs once on the client thread (never if this fails). */
jb_status jb_client_redis_access_get_async(jb_client *c, const char *component,
                                           jb_client_redis_access_cb cb, void *userdata,
                                           jb_error *err);

/* Wipes the password from memory and frees @a. NULL is a no-op. */
void jb_client_redis_access_free(jb_client_redis_access *a);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_CLIENT_H */
