/*
 * Internals of the client library (include/jimbot/client.h), shared by
 * client.c (the channel, the client thread, unary calls, alarms, publishing),
 * stream.c (the plumbing of one server-streaming call), sub.c
 * (subscriptions), infra.c (the Infrastructure calls: GPU leases, the API
 * budget, resource status) and queue.c (the request queue: submits,
 * workers, responses).
 *
 * Locking: one mutex per client, c->mu, guards every mutable field of the
 * client and of its subscriptions. gRPC calls are started from whichever
 * thread asks (grpc_call_start_batch is thread-safe), always under c->mu
 * and after checking c->closing, so that nothing is started once
 * jb_client_free() has begun. User callbacks run on the client thread with
 * c->mu released.
 */
#ifndef JB_CLIENT_INTERNAL_H
#define JB_CLIENT_INTERNAL_H

#include "jimbot/client.h"

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define JB__CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Something the completion queue hands back: recovered with JB__CONTAINER_OF. */
typedef struct jb__tag {
    void (*fn)(struct jb__tag *tag, int ok);
} jb__tag;

/*
 * A one-shot timer on the completion queue. gRPC core has no public alarm
 * in C, but a connectivity watch with a deadline completes at that deadline
 * at the latest: the client arms one and, when it comes back early (the
 * channel changed state), arms it again until the due time. fire() runs on
 * the client thread without c->mu, also when the client is closing.
 */
typedef struct jb__alarm {
    jb__tag tag;
    jb_client *c;
    int64_t due_ms; /* monotonic */
    void (*fire)(struct jb__alarm *a);
} jb__alarm;

enum { JB__M_PUBLISH, JB__M_SUBSCRIBE, JB__M_ACK, JB__M_NACK, JB__M_HEALTH, JB__M_COUNT };

/*
 * The end of a unary call, on the client thread without c->mu. @response is
 * borrowed. @retry_after_ms is the server's "retry-after-ms" hint.
 */
typedef void (*jb__unary_fn)(jb_client *c, jb_status status, const jb_error *err,
                             const uint8_t *response, size_t len, uint32_t retry_after_ms,
                             void *userdata);

typedef struct jb__unary jb__unary;
typedef struct jb__buffered jb__buffered;

struct jb_client {
    char *addr;
    jb_client_options opts;
    grpc_channel *channel;
    grpc_completion_queue *cq;
    void *methods[JB__M_COUNT];
    pthread_t thread;

    pthread_mutex_t mu;
    int closing;
    unsigned rand_state;
    jb__unary *calls; /* unary calls in flight, to cancel at close */
    jb_client_sub *subs;
    jb_client_gpu *gpus;       /* GPU lease handles not yet freed (infra.c) */
    jb_client_worker *workers; /* queue workers not yet freed (queue.c) */

    /* Client-side batching: the open window's encoded PublishRequest. */
    jb__buffered *open;
    jb__alarm window;
    int window_armed;
    int64_t window_due_ms;
    jb__buffered *sending; /* FIFO of sealed batches; the head is in flight */
    jb__buffered *sending_tail;
    uint64_t next_batch_id;
    size_t buffered_bytes;
    pthread_cond_t flushed;
    jb_status flush_status;
    jb_error flush_err;
    uint64_t flush_lost;
};

/* Monotonic milliseconds. */
int64_t jb__client_now_ms(void);

/* True on the client thread. */
int jb__client_on_thread(const jb_client *c);

/* Arms @a for @due_ms; c->mu held, !c->closing. */
void jb__client_alarm_arm(jb_client *c, jb__alarm *a, int64_t due_ms);

/* The backoff before retry @attempt (1, 2...), with jitter; c->mu held. */
uint32_t jb__client_backoff(jb_client *c, uint32_t attempt);

/* Maps a gRPC status to a jb_status and fills @err with "NAME: CODE: details". */
jb_status jb__client_map_status(grpc_status_code code, const char *name, grpc_slice details,
                                jb_error *err);

/* The server's "retry-after-ms" hint in @md (trailing metadata); 0 when absent. */
uint32_t jb__client_retry_after(const grpc_metadata_array *md);

/*
 * The value of @key in @md copied into @buf (NUL-terminated, truncated to
 * @size), "" when absent; returns @buf.
 */
const char *jb__client_md_get(const grpc_metadata_array *md, const char *key, char *buf,
                              size_t size);

/* Packs a protobuf-c message into a malloc'd buffer that the caller frees. */
uint8_t *jb__client_pack(const ProtobufCMessage *m, size_t *len);

/* The wall clock @ms from now, for pthread_cond_timedwait(). */
struct timespec jb__client_realtime_in(int64_t ms);

/*
 * Copies a received message out of gRPC's slices into a malloc'd buffer
 * that the caller frees; NULL and *@len 0 when @bb is NULL or unreadable.
 * @bb stays the caller's.
 */
uint8_t *jb__client_read_all(grpc_byte_buffer *bb, size_t *len);

/*
 * Starts a unary call of @path ("/pkg.Service/Method") whose deadline is the
 * client's deadline_ms plus @extra_ms; @done runs on the client thread once
 * it ends, unless this fails. c->mu must not be held.
 */
jb_status jb__client_unary_start(jb_client *c, const char *path, const void *req, size_t len,
                                 uint32_t extra_ms, jb__unary_fn done, void *userdata,
                                 jb_error *err);

/* As jb__unary_fn, with the call's trailing metadata instead of the hint (borrowed). */
typedef void (*jb__unary_md_fn)(jb_client *c, jb_status status, const jb_error *err,
                                const uint8_t *response, size_t len,
                                const grpc_metadata_array *trailing, void *userdata);

/* jb__client_unary_start() whose @done gets the trailing metadata. */
jb_status jb__client_unary_start_md(jb_client *c, const char *path, const void *req, size_t len,
                                    uint32_t extra_ms, jb__unary_md_fn done, void *userdata,
                                    jb_error *err);

/* jb__client_unary_start() of @path whose end is told to @cb (may be NULL) as a done call. */
jb_status jb__client_unary_start_done(jb_client *c, const char *path, const void *req, size_t len,
                                      jb_client_done_cb cb, void *userdata, jb_error *err);

/*
 * One server-streaming call at a time (stream.c), embedded in its owner (a
 * subscription, a GPU lease). The owner's three tag handlers are set once
 * with jb__stream_init() and recover the owner with JB__CONTAINER_OF from
 * t_start, t_recv or t_status. Each batch the stream starts, and each retry
 * alarm it arms, adds one to the owner's counter *ops; the owner's handlers
 * take one off when theirs completes. Every function below but
 * jb__stream_init() wants c->mu held.
 */
typedef struct jb__stream {
    jb_client *c;
    int *ops;         /* the owner's count of outstanding batches and alarms */
    const char *name; /* the method's name, for messages ("Subscribe") */
    grpc_call *call;  /* NULL between streams */
    jb__tag t_start, t_recv, t_status;
    grpc_byte_buffer *send;
    grpc_byte_buffer *recv;
    grpc_metadata_array md_initial; /* valid from the start batch's end to the stream's */
    grpc_metadata_array md_trailing;
    grpc_status_code status;
    grpc_slice details;
    int status_done;
    int recv_posted;
    jb__alarm retry; /* the owner's alarm before the next stream */
    uint32_t attempt;
} jb__stream;

/* Sets up @s (zeroed storage) for @c; nothing is started. */
void jb__stream_init(jb__stream *s, jb_client *c, const char *name, int *ops,
                     void (*on_start)(jb__tag *, int), void (*on_recv)(jb__tag *, int),
                     void (*on_status)(jb__tag *, int));

/*
 * Starts a call of registered method @m, or of @path when @m < 0, sending
 * the @len bytes of @req (copied) and closing; starts the initial-metadata
 * and the status batches. No receive is posted. !c->closing, no call.
 */
void jb__stream_start(jb__stream *s, int m, const char *path, const void *req, size_t len);

/* Posts one RECV_MESSAGE unless one is posted, the status came or closing. */
void jb__stream_post_recv(jb__stream *s);

/* In the owner's on_recv: the message received (the caller's), or NULL. */
grpc_byte_buffer *jb__stream_take_recv(jb__stream *s);

/* In the owner's on_start: the request is sent, so its buffer goes. */
void jb__stream_sent(jb__stream *s);

/*
 * Once no batch or alarm is outstanding (*ops == 0) and a call exists,
 * releases the call and returns 1 with its gRPC status in *@code, the
 * mapped status in *@st and @err, and the "retry-after-ms" trailer in
 * *@retry_after_ms; returns 0 and does nothing otherwise.
 */
int jb__stream_over(jb__stream *s, grpc_status_code *code, jb_status *st, jb_error *err,
                    uint32_t *retry_after_ms);

/*
 * Arms s->retry to run @fire after the client's backoff for the next
 * attempt, but no later than @until_ms (monotonic) when it is not 0.
 * !c->closing.
 */
void jb__stream_retry(jb__stream *s, void (*fire)(jb__alarm *a), int64_t until_ms);

/* Cancels the call, if any. */
void jb__stream_cancel(jb__stream *s);

/*
 * The blocking form of jb__client_unary_start(): on JB_OK *@resp (malloc'd,
 * NULL when the answer is empty; the caller frees it) and *@resp_len hold
 * the answer. Refused on the client thread, where it would wait for itself.
 */
jb_status jb__client_unary_call(jb_client *c, const char *path, const void *req, size_t len,
                                uint32_t extra_ms, uint8_t **resp, size_t *resp_len, jb_error *err);

/* JB_EINVAL (in @err, naming the call @what) on the client thread, else JB_OK. */
jb_status jb__client_refuse_on_thread(const jb_client *c, const char *what, jb_error *err);

/* Cancels every GPU lease stream; c->mu held, c->closing set (infra.c). */
void jb__client_gpus_cancel_all(jb_client *c);

/* Frees the GPU lease handles left (client.c calls it after the thread ends). */
void jb__client_gpus_free_all(jb_client *c);

/* Cancels every queue worker's stream; c->mu held, c->closing set (queue.c). */
void jb__client_workers_cancel_all(jb_client *c);

/* Frees the queue workers left (client.c calls it after the thread ends). */
void jb__client_workers_free_all(jb_client *c);

/* Frees the client's subscriptions (client.c calls it after the thread ends). */
void jb__client_subs_free_all(jb_client *c);

/* Cancels every subscription's stream; c->mu held, c->closing set. */
void jb__client_subs_cancel_all(jb_client *c);

#endif /* JB_CLIENT_INTERNAL_H */
