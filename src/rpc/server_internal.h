/*
 * The gRPC server's internals, shared by server.c (the completion-queue
 * pump, the life of a call, drain and close) and services.c (the method
 * handlers). Nothing outside src/rpc/ includes this file: it is the one
 * place where gRPC core's types meet the engine's.
 *
 * A call (jb__call) is one request from gRPC core plus its state machine.
 * It is created before gRPC has a call for it (the request slot), lives on
 * the loop thread only, and is freed once every batch it started has
 * completed and nothing in the engine holds it (refs == 0).
 */
#ifndef JB_RPC_SERVER_INTERNAL_H
#define JB_RPC_SERVER_INTERNAL_H

#include "event/decode.h"
#include "jimbot/bus.h"
#include "jimbot/server.h"

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

/* A completion-queue tag: the handler runs on the loop with gRPC's `ok`. */
typedef struct jb__rpc_tag {
    void (*fn)(struct jb__rpc_tag *tag, int ok);
} jb__rpc_tag;

#define JB__CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

typedef struct jb__call jb__call;

/* A registered method: its path and its handlers. */
typedef struct jb__method {
    const char *path;
    /* Runs once a call and its request have arrived, with c->payload (may
     * be NULL). */
    void (*start)(jb__call *c);
    /* Optional: the client went away or the call ended (RECV_CLOSE came);
     * release engine resources here. Runs once. */
    void (*closed)(jb__call *c);
    /* Optional: the lame duck phase is over and the call is live: end the
     * stream (UNAVAILABLE) after what it holds. */
    void (*drain)(jb__call *c);
    /* Optional: frees c->state; runs just before the call is freed. */
    void (*release)(jb__call *c);
} jb__method;

/* A queued outgoing stream message. */
typedef struct jb__outmsg {
    struct jb__outmsg *next;
    grpc_byte_buffer *bb;
    size_t bytes;
} jb__outmsg;

struct jb__call {
    jb_server *srv;
    const jb__method *m; /* NULL for an unknown method */
    size_t method_index;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_call_details details; /* unknown methods only */
    grpc_byte_buffer *payload;
    int refs; /* batches outstanding + holds */
    int cancelled;
    unsigned closed : 1;      /* RECV_CLOSE_ON_SERVER completed */
    unsigned initial_md : 1;  /* initial metadata sent (or in the final batch) */
    unsigned finishing : 1;   /* the status is sent or waits for the queue */
    unsigned status_sent : 1; /* the final batch is posted */
    unsigned send_busy : 1;
    unsigned live : 1;    /* linked in srv->calls */
    unsigned active : 1;  /* gRPC gave it a call */
    unsigned started : 1; /* its request arrived and m->start ran */
    jb__rpc_tag t_new, t_close, t_send, t_done, t_md;
    uint64_t send_since_ms; /* when the outstanding send started */
    /* Stream output: one SEND_MESSAGE at a time, the rest queued here. */
    jb__outmsg *q_head, *q_tail;
    size_t q_bytes;
    jb__outmsg *sending;
    /* The final status, kept alive until its batch completes. */
    grpc_status_code code;
    grpc_slice status_details;
    grpc_metadata trailer[2]; /* retry-after-ms, jimbot-error */
    size_t n_trailer;
    const char *error_reason; /* static; the "jimbot-error" trailer, or NULL */
    grpc_metadata initial;
    size_t n_initial;
    grpc_byte_buffer *response;
    jb__call *prev, *next; /* live calls */
    void *state;           /* the method's */
};

/* ---- server.c: what handlers use ----------------------------------------- */

jb_bus *jb__server_bus(const jb_server *srv);
int jb__server_draining(const jb_server *srv);
jb_config_watcher *jb__server_config(const jb_server *srv);
jb_coord *jb__server_coord(const jb_server *srv);
size_t jb__server_max_stream_bytes(const jb_server *srv);
/* The limits a PublishRequest is decoded with (from the server's options). */
jb__decode_limits jb__server_publish_limits(const jb_server *srv);

/* The largest request of the other methods (decoded by protobuf-c) the server accepts. */
size_t jb__server_unary_max_bytes(const jb_server *srv);
uint64_t jb__now_ms(void);

/* Keeps @c alive while the engine holds it (a publish in progress). */
void jb__call_hold(jb__call *c);
void jb__call_unhold(jb__call *c);

/*
 * Takes the request's bytes as one slice (the caller unrefs it) and frees
 * the call's byte buffer at once, so that a request is held in one copy
 * only while it is decoded. -1 when there is no payload.
 */
int jb__call_take_payload(jb__call *c, grpc_slice *out);

/*
 * Ends a unary call: initial metadata, @msg (packed, may be NULL) and the
 * status @code with @details (copied; may be NULL). @retry_after_ms > 0
 * adds the trailing metadata "retry-after-ms". Only once per call.
 */
void jb__call_finish(jb__call *c, const ProtobufCMessage *msg, grpc_status_code code,
                     const char *details, uint32_t retry_after_ms);

/* The same with a jb_status mapped to its gRPC code, the message as detail. */
void jb__call_fail(jb__call *c, jb_status st, const char *details, uint32_t retry_after_ms);

/*
 * Before a call's status is set: adds the trailing metadata "jimbot-error"
 * with @reason (a static token such as "queue-full", docs/grpc.md), which
 * tells apart errors that share a status code.
 */
void jb__call_set_error_reason(jb__call *c, const char *reason);

/* jb_status to gRPC status code (docs/grpc.md has the table). */
grpc_status_code jb__grpc_code(jb_status st);

/* Streams: sends initial metadata now, with one optional entry (copied). */
void jb__call_send_initial(jb__call *c, const char *key, const char *value);

/*
 * Streams: queues @bb (takes ownership) for sending. Returns 0, or -1 when
 * the stream's queue is over its limit (the caller ends the stream).
 */
int jb__call_send(jb__call *c, grpc_byte_buffer *bb, size_t bytes);

/* Streams: packs @msg and queues it as jb__call_send() does. */
int jb__call_send_message(jb__call *c, const ProtobufCMessage *msg);

/* Milliseconds left before the call's deadline; UINT64_MAX when it has none. */
uint64_t jb__call_ms_left(const jb__call *c);

/*
 * Streams: ends the stream with @code and @details (static or copied).
 * @drop: discard what is queued (else it is sent first). A stream with a
 * send outstanding that must end now is cancelled with the status instead.
 */
void jb__call_end(jb__call *c, grpc_status_code code, const char *details, int drop);

/* ---- services.c ----------------------------------------------------------- */

/* Decodes the call's request with @desc; on failure answers the call
 * (INVALID_ARGUMENT) and returns NULL. */
ProtobufCMessage *jb__unpack_request(jb__call *c, const ProtobufCMessageDescriptor *desc);

/* While draining: answers UNAVAILABLE "shutting down" with the retry hint and returns 1. */
int jb__refuse_if_draining(jb__call *c);

/* Without a coordinator (an embedded server): answers UNIMPLEMENTED and returns 1. */
int jb__refuse_without_coord(jb__call *c);

/* ---- services_infra.c: Infrastructure's handlers ------------------------- */

void jb__resource_status_start(jb__call *c);
void jb__acquire_gpu_start(jb__call *c);
void jb__acquire_gpu_closed(jb__call *c);
void jb__acquire_gpu_drain(jb__call *c);
void jb__acquire_gpu_release(jb__call *c);
void jb__release_gpu_start(jb__call *c);
void jb__api_quota_start(jb__call *c);
void jb__api_quota_closed(jb__call *c);
void jb__api_quota_drain(jb__call *c);
void jb__api_quota_release(jb__call *c);
void jb__redis_access_start(jb__call *c);

/* ---- services_queue.c: the request queue's handlers ---------------------- */

void jb__submit_request_start(jb__call *c);
void jb__submit_request_closed(jb__call *c);
void jb__submit_request_drain(jb__call *c);
void jb__submit_request_release(jb__call *c);
void jb__take_requests_start(jb__call *c);
void jb__take_requests_closed(jb__call *c);
void jb__take_requests_drain(jb__call *c);
void jb__take_requests_release(jb__call *c);
void jb__respond_start(jb__call *c);

/* The methods served, in registration order, and their count. */
extern const jb__method jb__methods[];
extern const size_t jb__n_methods;

#endif /* JB_RPC_SERVER_INTERNAL_H */
