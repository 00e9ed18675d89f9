/*
 * The gRPC server (include/jimbot/server.h): gRPC core behind one adapter.
 *
 *   gRPC core threads ──▶ completion queue ──▶ pump thread ──(inbox + uv_async_send)──▶ loop
 *                                                                                        │
 *   grpc_call_start_batch ◀──────────── call state machines, jb_bus calls ◀──────────────┘
 *
 * Threading: the pump thread only calls grpc_completion_queue_next and
 * appends (tag, ok) to the inbox under a mutex; everything else, every
 * grpc_call_start_batch included, runs on the loop thread. So the engine
 * and the calls' state need no locks.
 *
 * Calls: a jb__call is created as a request slot (grpc_server_request_*),
 * calls_per_method per registered method plus one for unknown methods, so
 * calls to one method are served concurrently and an unknown method is
 * answered UNIMPLEMENTED at once. When a slot fills, a new one is posted
 * in its place. Each call posts RECV_CLOSE_ON_SERVER in its own batch at
 * start (it completes at once when the client cancels or vanishes); a
 * call's refs count its outstanding batches and the engine's holds, and the
 * call is freed only when they reach 0: batches complete in any order.
 *
 * Streams send one message at a time (one SEND_MESSAGE in flight per call);
 * the rest waits in the call's queue, bounded by max_stream_bytes. A
 * once-a-second check cancels streams whose outstanding send is older than
 * slow_consumer_ms: a SEND_MESSAGE completes when the transport took the
 * bytes, so a client that stops reading stalls it after a few MiB.
 *
 * Methods are registered with GRPC_SRM_PAYLOAD_NONE: gRPC hands a call over
 * as soon as its headers arrive and the server reads the request itself
 * (RECV_MESSAGE), so a call whose request is still on its way is already
 * ours, counted and answered, and a drain can wait for it.
 *
 * Shutdown (GRPC_NOTES sharp edge 7) in three steps, each bounded by a grace
 * period:
 *   lame duck (jb_server_drain): the request slots stay posted and every
 *     new call is answered UNAVAILABLE with "retry-after-ms" by the
 *     handlers; Publishes already accepted are answered once durable;
 *   streams end: once no Publish waits for the bus (or after the grace), the
 *     open batch window is flushed to the subscribers, Subscribe and Watch
 *     streams end UNAVAILABLE after what they hold is sent, and the drained
 *     callback lets the owner close the bus;
 *   close (jb_server_close): once no call has been live for a moment (or
 *     after the grace), shutdown_and_notify, then cancel every call left
 *     (which also closes idle connections), wait for the notify tag and for
 *     every call to be freed, destroy the server, shut the queue down, join
 *     the pump, grpc_shutdown.
 * Only the last step lets gRPC refuse calls itself, when none is in flight.
 *
 * Must not depend on: the daemon, the configuration's files, protobuf
 * message types (services.c has those).
 */
#include "rpc/server_internal.h"

#include "jimbot/log.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_RECEIVE (16u * 1024 * 1024)
#define DEFAULT_MAX_MEMORY  (256u * 1024 * 1024)
#define DEFAULT_MAX_STREAMS 256
#define DEFAULT_MAX_STREAM  (64u * 1024 * 1024)
#define DEFAULT_SLOW_MS     30000
#define DEFAULT_CALLS_PER   16
#define TICK_MS             1000
#define CLOSE_TICK_MS       20
#define CLOSE_SETTLE_MS     300
#define RETRY_KEY           "retry-after-ms"
#define REASON_KEY          "jimbot-error"
#define DEFAULT_GRACE_MS    5000
/* Half the shortest keepalive interval of our clients (jimbot/client.h). */
#define MIN_PING_INTERVAL_MS 500

typedef struct inbox_item {
    jb__rpc_tag *tag;
    int ok;
} inbox_item;

typedef struct inbox {
    inbox_item *v;
    size_t n, cap;
} inbox;

struct jb_server {
    uv_loop_t *loop;
    jb_server_options opts;
    size_t unary_max_bytes; /* the largest request protobuf-c decodes (not Publish's) */
    char *listen;
    char *address;
    grpc_server *server;
    grpc_completion_queue *cq;
    void **handles; /* per registered method */

    /* The pump thread and its way to the loop. */
    uv_thread_t pump;
    int pump_started;
    uv_mutex_t mu;
    inbox in;   /* guarded by mu */
    inbox work; /* loop only */
    uv_async_t async;
    uv_timer_t tick;
    int handles_open;

    jb__call *calls; /* live calls (a ring) */
    size_t n_calls;  /* every jb__call alive, request slots included */
    size_t n_active; /* those with a gRPC call */

    size_t n_held; /* calls the engine holds (Publishes waiting for the bus) */

    int draining;      /* lame duck: new calls are refused */
    int streams_ended; /* the window is flushed, streams told, the bus let go */
    int shut;          /* grpc_server_shutdown_and_notify called */
    int closing;
    int notified;
    int cancelled_all;
    int finished;
    uint64_t drain_start_ms;
    uint32_t drain_grace_ms;
    jb_server_drained_cb drained_cb;
    void *drained_userdata;
    uint64_t close_start_ms;
    uint64_t idle_since_ms; /* since when no call is live (0: some are) */
    uint32_t grace_ms;
    jb__rpc_tag t_shutdown;
    jb_server_close_cb close_cb;
    void *close_userdata;
};

uint64_t jb__now_ms(void)
{
    return uv_hrtime() / 1000000;
}

jb_bus *jb__server_bus(const jb_server *srv)
{
    return srv->opts.bus;
}

int jb__server_draining(const jb_server *srv)
{
    return srv->draining;
}

jb_coord *jb__server_coord(const jb_server *srv)
{
    return srv->opts.coord;
}

jb_config_watcher *jb__server_config(const jb_server *srv)
{
    return srv->opts.config;
}

size_t jb__server_unary_max_bytes(const jb_server *srv)
{
    return srv->unary_max_bytes;
}

size_t jb__server_max_stream_bytes(const jb_server *srv)
{
    return srv->opts.max_stream_bytes;
}

jb__decode_limits jb__server_publish_limits(const jb_server *srv)
{
    jb__decode_limits l = jb__decode_limits_default();
    l.max_events = srv->opts.max_events_per_request;
    l.max_headers = srv->opts.max_headers_per_event;
    return l;
}

grpc_status_code jb__grpc_code(jb_status st)
{
    switch (st) {
    case JB_OK:
        return GRPC_STATUS_OK;
    case JB_EINVAL:
    case JB_EPARSE:
    case JB_ETOOBIG:
    case JB_ECONFIG:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case JB_ENOENT:
        return GRPC_STATUS_NOT_FOUND;
    case JB_EEXIST:
        return GRPC_STATUS_ALREADY_EXISTS;
    case JB_EBACKPRESSURE:
    case JB_ERATELIMITED:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case JB_ECLOSED:
    case JB_EUNAVAILABLE:
    case JB_EBREAKER_OPEN:
        return GRPC_STATUS_UNAVAILABLE;
    case JB_ETIMEDOUT:
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    case JB_ELEASE_EXPIRED:
        return GRPC_STATUS_FAILED_PRECONDITION;
    case JB_EUNSUPPORTED:
        return GRPC_STATUS_UNIMPLEMENTED;
    default:
        return GRPC_STATUS_INTERNAL;
    }
}

/* ---- the pump thread and the inbox --------------------------------------- */

static void inbox_push(inbox *q, jb__rpc_tag *tag, int ok)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        inbox_item *v = realloc(q->v, cap * sizeof(*v));
        if (v == NULL)
            JB_BUG("out of memory queueing a gRPC completion");
        q->v = v;
        q->cap = cap;
    }
    q->v[q->n++] = (inbox_item){tag, ok};
}

static void pump_main(void *arg)
{
    jb_server *srv = arg;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        uv_mutex_lock(&srv->mu);
        inbox_push(&srv->in, ev.tag, ev.success);
        uv_mutex_unlock(&srv->mu);
        uv_async_send(&srv->async);
    }
}

static void maybe_finish(jb_server *srv);

/* Runs every completion handed over since the last wakeup, in order. */
static void drain_inbox(jb_server *srv)
{
    for (;;) {
        uv_mutex_lock(&srv->mu);
        inbox tmp = srv->in;
        srv->in = srv->work;
        srv->in.n = 0;
        uv_mutex_unlock(&srv->mu);
        srv->work = tmp;
        if (srv->work.n == 0)
            return;
        for (size_t i = 0; i < srv->work.n; i++)
            srv->work.v[i].tag->fn(srv->work.v[i].tag, srv->work.v[i].ok);
        srv->work.n = 0;
    }
}

static void on_async(uv_async_t *a)
{
    jb_server *srv = a->data;
    drain_inbox(srv);
    maybe_finish(srv);
}

/* ---- gRPC core's log ----------------------------------------------------- */

static void grpc_log_sink(gpr_log_func_args *args)
{
    jb_log_level level = args->severity == GPR_LOG_SEVERITY_ERROR  ? JB_LOG_ERROR
                         : args->severity == GPR_LOG_SEVERITY_INFO ? JB_LOG_INFO
                                                                   : JB_LOG_DEBUG;
    jb_log(level, "grpc", args->message, "at=%s:%d", args->file, args->line);
}

/* ---- calls --------------------------------------------------------------- */

static void call_link(jb_server *srv, jb__call *c)
{
    if (srv->calls == NULL) {
        c->prev = c->next = c;
        srv->calls = c;
    } else {
        c->next = srv->calls;
        c->prev = srv->calls->prev;
        c->prev->next = c;
        c->next->prev = c;
    }
    c->live = 1;
}

static void call_unlink(jb_server *srv, jb__call *c)
{
    if (!c->live)
        return;
    if (c->next == c) {
        srv->calls = NULL;
    } else {
        c->prev->next = c->next;
        c->next->prev = c->prev;
        if (srv->calls == c)
            srv->calls = c->next;
    }
    c->live = 0;
}

static void queue_clear(jb__call *c)
{
    while (c->q_head != NULL) {
        jb__outmsg *o = c->q_head;
        c->q_head = o->next;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
    }
    c->q_tail = NULL;
    c->q_bytes = 0;
}

static void call_free(jb__call *c)
{
    jb_server *srv = c->srv;
    if (c->m != NULL && c->m->release != NULL)
        c->m->release(c);
    call_unlink(srv, c);
    queue_clear(c);
    if (c->payload != NULL)
        grpc_byte_buffer_destroy(c->payload);
    grpc_metadata_array_destroy(&c->md);
    if (c->m == NULL)
        grpc_call_details_destroy(&c->details);
    grpc_slice_unref(c->status_details);
    for (size_t i = 0; i < c->n_trailer; i++) {
        grpc_slice_unref(c->trailer[i].key);
        grpc_slice_unref(c->trailer[i].value);
    }
    if (c->n_initial) {
        grpc_slice_unref(c->initial.key);
        grpc_slice_unref(c->initial.value);
    }
    if (c->active)
        srv->n_active--;
    if (c->call != NULL)
        grpc_call_unref(c->call);
    free(c);
    srv->n_calls--;
}

static void call_unref(jb__call *c)
{
    if (--c->refs == 0)
        call_free(c);
}

void jb__call_hold(jb__call *c)
{
    c->refs++;
    c->srv->n_held++;
}

void jb__call_unhold(jb__call *c)
{
    c->srv->n_held--;
    call_unref(c);
}

static int start_batch(jb__call *c, const grpc_op *ops, size_t n, jb__rpc_tag *tag)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK) {
        jb_log(JB_LOG_ERROR, "rpc", "grpc_call_start_batch failed", "error=%d method=%s", (int)e,
               c->m != NULL ? c->m->path : "unknown");
        return -1;
    }
    c->refs++;
    return 0;
}

static void on_done(jb__rpc_tag *tag, int ok)
{
    jb__call *c = JB__CONTAINER_OF(tag, jb__call, t_done);
    (void)ok;
    if (c->response != NULL) {
        grpc_byte_buffer_destroy(c->response);
        c->response = NULL;
    }
    call_unref(c);
}

static void on_md_sent(jb__rpc_tag *tag, int ok)
{
    (void)ok;
    call_unref(JB__CONTAINER_OF(tag, jb__call, t_md));
}

/* Posts the final batch: [initial metadata], [response], status. */
static void post_status(jb__call *c)
{
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->initial_md) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
        c->initial_md = 1;
    }
    if (c->response != NULL) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->response;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = c->code;
    ops[n].data.send_status_from_server.status_details =
        GRPC_SLICE_LENGTH(c->status_details) > 0 ? &c->status_details : NULL;
    ops[n].data.send_status_from_server.trailing_metadata_count = c->n_trailer;
    ops[n].data.send_status_from_server.trailing_metadata = c->n_trailer ? c->trailer : NULL;
    n++;
    c->status_sent = 1;
    c->t_done.fn = on_done;
    if (start_batch(c, ops, n, &c->t_done) != 0)
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_INTERNAL, "internal error", NULL);
}

static void set_status(jb__call *c, grpc_status_code code, const char *details,
                       uint32_t retry_after_ms)
{
    c->code = code;
    if (details != NULL && details[0] != '\0') {
        grpc_slice_unref(c->status_details);
        c->status_details = grpc_slice_from_copied_string(details);
    }
    if (retry_after_ms > 0 && c->n_trailer == 0) {
        char v[16];
        snprintf(v, sizeof(v), "%u", retry_after_ms);
        c->trailer[0].key = grpc_slice_from_static_string(RETRY_KEY);
        c->trailer[0].value = grpc_slice_from_copied_string(v);
        c->n_trailer = 1;
    }
    if (c->error_reason != NULL && c->n_trailer < 2) {
        c->trailer[c->n_trailer].key = grpc_slice_from_static_string(REASON_KEY);
        c->trailer[c->n_trailer].value = grpc_slice_from_static_string(c->error_reason);
        c->n_trailer++;
    }
}

void jb__call_set_error_reason(jb__call *c, const char *reason)
{
    c->error_reason = reason;
}

static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

void jb__call_finish(jb__call *c, const ProtobufCMessage *msg, grpc_status_code code,
                     const char *details, uint32_t retry_after_ms)
{
    if (c->finishing || c->status_sent)
        JB_BUG("a call finished twice (%s)", c->m != NULL ? c->m->path : "unknown");
    c->finishing = 1;
    if (msg != NULL)
        c->response = pack_message(msg);
    set_status(c, code, details, retry_after_ms);
    post_status(c);
}

void jb__call_fail(jb__call *c, jb_status st, const char *details, uint32_t retry_after_ms)
{
    jb__call_finish(c, NULL, jb__grpc_code(st), details, retry_after_ms);
}

int jb__call_take_payload(jb__call *c, grpc_slice *out)
{
    grpc_byte_buffer_reader r;
    if (c->payload == NULL || !grpc_byte_buffer_reader_init(&r, c->payload))
        return -1;
    *out = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(c->payload);
    c->payload = NULL;
    return 0;
}

void jb__call_send_initial(jb__call *c, const char *key, const char *value)
{
    if (c->initial_md || c->closed)
        return;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    if (key != NULL) {
        c->initial.key = grpc_slice_from_copied_string(key);
        c->initial.value = grpc_slice_from_copied_string(value);
        c->n_initial = 1;
        op.data.send_initial_metadata.count = 1;
        op.data.send_initial_metadata.metadata = &c->initial;
    }
    c->initial_md = 1;
    c->t_md.fn = on_md_sent;
    start_batch(c, &op, 1, &c->t_md);
}

static void pump_stream(jb__call *c);

static void on_sent(jb__rpc_tag *tag, int ok)
{
    jb__call *c = JB__CONTAINER_OF(tag, jb__call, t_send);
    c->send_busy = 0;
    if (c->sending != NULL) {
        grpc_byte_buffer_destroy(c->sending->bb);
        free(c->sending);
        c->sending = NULL;
    }
    if (!ok)
        queue_clear(c); /* The stream is broken; RECV_CLOSE tells the rest. */
    pump_stream(c);
    call_unref(c);
}

static void pump_stream(jb__call *c)
{
    if (c->send_busy || c->status_sent || c->closed)
        return;
    if (c->q_head == NULL) {
        if (c->finishing)
            post_status(c);
        return;
    }
    jb__outmsg *o = c->q_head;
    c->q_head = o->next;
    if (c->q_head == NULL)
        c->q_tail = NULL;
    c->q_bytes -= o->bytes;
    c->sending = o;
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->initial_md) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->initial_md = 1;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = o->bb;
    n++;
    c->t_send.fn = on_sent;
    c->send_busy = 1;
    c->send_since_ms = jb__now_ms();
    if (start_batch(c, ops, n, &c->t_send) != 0) {
        c->send_busy = 0;
        c->sending = NULL;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_INTERNAL, "internal error", NULL);
    }
}

int jb__call_send(jb__call *c, grpc_byte_buffer *bb, size_t bytes)
{
    if (c->closed || c->finishing) {
        grpc_byte_buffer_destroy(bb);
        return 0;
    }
    if (c->q_bytes + bytes > c->srv->opts.max_stream_bytes && c->q_head != NULL) {
        grpc_byte_buffer_destroy(bb);
        return -1;
    }
    jb__outmsg *o = malloc(sizeof(*o));
    if (o == NULL) {
        grpc_byte_buffer_destroy(bb);
        return -1;
    }
    *o = (jb__outmsg){NULL, bb, bytes};
    if (c->q_tail != NULL)
        c->q_tail->next = o;
    else
        c->q_head = o;
    c->q_tail = o;
    c->q_bytes += bytes;
    pump_stream(c);
    return 0;
}

int jb__call_send_message(jb__call *c, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    return jb__call_send(c, pack_message(msg), len);
}

uint64_t jb__call_ms_left(const jb__call *c)
{
    gpr_timespec d = gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC);
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(d, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == 0)
        return UINT64_MAX;
    if (gpr_time_cmp(d, now) <= 0)
        return 0;
    gpr_timespec left = gpr_time_sub(d, now);
    return (uint64_t)left.tv_sec * 1000 + (uint64_t)left.tv_nsec / 1000000;
}

void jb__call_end(jb__call *c, grpc_status_code code, const char *details, int drop)
{
    if (c->finishing || c->status_sent)
        return;
    c->finishing = 1;
    if (drop)
        queue_clear(c);
    if (c->closed)
        return; /* Nobody to tell. */
    if (c->send_busy && drop) {
        c->status_sent = 1;
        grpc_call_cancel_with_status(c->call, code, details, NULL);
        return;
    }
    set_status(c, code, details, 0);
    pump_stream(c);
}

static void on_recv_close(jb__rpc_tag *tag, int ok)
{
    jb__call *c = JB__CONTAINER_OF(tag, jb__call, t_close);
    (void)ok;
    c->closed = 1;
    call_unlink(c->srv, c);
    if (c->m != NULL && c->m->closed != NULL)
        c->m->closed(c);
    if (!c->send_busy)
        queue_clear(c);
    call_unref(c);
}

static void request_call(jb_server *srv, size_t index);

/* The request has arrived (or the client went away first): start the method. */
static void on_request(jb__rpc_tag *tag, int ok)
{
    jb__call *c = JB__CONTAINER_OF(tag, jb__call, t_new);
    if (ok && !c->closed) {
        c->started = 1;
        c->m->start(c);
    }
    call_unref(c);
}

/* Reads the request message into c->payload, then on_request. */
static void read_request(jb__call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->payload;
    c->t_new.fn = on_request;
    if (start_batch(c, &op, 1, &c->t_new) != 0)
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_INTERNAL, "internal error", NULL);
}

static void on_new_call(jb__rpc_tag *tag, int ok)
{
    jb__call *c = JB__CONTAINER_OF(tag, jb__call, t_new);
    jb_server *srv = c->srv;
    if (!ok) {
        /* The server is shutting down: the slot ends unfilled. */
        call_unref(c);
        return;
    }
    c->active = 1;
    srv->n_active++;
    /* Slots stay posted in the lame duck phase, so that we answer new calls. */
    if (!srv->shut)
        request_call(srv, c->method_index);
    call_link(srv, c);
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->t_close.fn = on_recv_close;
    if (start_batch(c, &op, 1, &c->t_close) != 0) {
        call_unref(c);
        return;
    }
    if (c->m == NULL)
        jb__call_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, "unknown method", 0);
    else
        read_request(c);
    call_unref(c); /* The request's reference. */
}

/* Posts a request slot for method @index (jb__n_methods: unknown methods). */
static void request_call(jb_server *srv, size_t index)
{
    jb__call *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        jb_log(JB_LOG_ERROR, "rpc", "out of memory requesting a call", NULL);
        return;
    }
    c->srv = srv;
    c->method_index = index;
    c->m = index < jb__n_methods ? &jb__methods[index] : NULL;
    c->refs = 1;
    c->t_new.fn = on_new_call;
    c->status_details = grpc_empty_slice();
    grpc_metadata_array_init(&c->md);
    grpc_call_error e;
    if (c->m != NULL) {
        e = grpc_server_request_registered_call(srv->server, srv->handles[index], &c->call,
                                                &c->deadline, &c->md, NULL, srv->cq, srv->cq,
                                                &c->t_new);
    } else {
        grpc_call_details_init(&c->details);
        e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, srv->cq, srv->cq,
                                     &c->t_new);
    }
    srv->n_calls++;
    if (e != GRPC_CALL_OK) {
        jb_log(JB_LOG_ERROR, "rpc", "could not request a call", "error=%d", (int)e);
        c->refs = 1;
        call_unref(c);
    }
}

/* ---- slow consumers and close progress ------------------------------------ */

static void on_shutdown_notified(jb__rpc_tag *tag, int ok);

static void check_slow(jb_server *srv)
{
    if (srv->calls == NULL)
        return;
    uint64_t now = jb__now_ms();
    jb__call *c = srv->calls;
    size_t n = 0;
    for (jb__call *x = c;; x = x->next) {
        n++;
        if (x->next == c)
            break;
    }
    /* Ending a stream may unlink it: walk a snapshot of the ring's length. */
    jb__call *x = srv->calls;
    for (size_t i = 0; i < n && x != NULL; i++) {
        jb__call *next = x->next;
        if (x->send_busy && !x->status_sent &&
            now - x->send_since_ms > srv->opts.slow_consumer_ms) {
            jb_log(JB_LOG_WARN, "rpc", "slow consumer cancelled",
                   "method=%s reason=send_age waited_ms=%llu",
                   x->m != NULL ? x->m->path : "unknown",
                   (unsigned long long)(now - x->send_since_ms));
            /* The cancel completes RECV_CLOSE, whose handler releases the rest. */
            jb__call_end(x, GRPC_STATUS_RESOURCE_EXHAUSTED, "slow consumer", 1);
        }
        x = next;
    }
}

/* Calls every started call's drain handler (a snapshot: ending may unlink). */
static void tell_live_calls(jb_server *srv)
{
    if (srv->calls == NULL)
        return;
    size_t n = 0;
    for (jb__call *x = srv->calls;; x = x->next) {
        n++;
        if (x->next == srv->calls)
            break;
    }
    jb__call *x = srv->calls;
    for (size_t i = 0; i < n && x != NULL; i++) {
        jb__call *next = x->next;
        if (x->started && x->m->drain != NULL)
            x->m->drain(x);
        x = next;
    }
}

/* The lame duck's end: no Publish waits for the bus (or the grace is over). */
static void end_streams(jb_server *srv)
{
    uint64_t waited = jb__now_ms() - srv->drain_start_ms;
    if (srv->n_held > 0 && waited < srv->drain_grace_ms)
        return;
    srv->streams_ended = 1;
    jb_bus_flush_window(srv->opts.bus);
    tell_live_calls(srv);
    jb_log(JB_LOG_INFO, "rpc", "gRPC server drained: streams ended", "unanswered_publishes=%zu",
           srv->n_held);
    jb_server_drained_cb cb = srv->drained_cb;
    srv->drained_cb = NULL;
    if (cb != NULL)
        cb(srv->drained_userdata);
}

/* Shuts gRPC down once no call has been live for a moment (or after the grace). */
static void close_step(jb_server *srv)
{
    uint64_t now = jb__now_ms();
    int grace_over = now - srv->close_start_ms >= srv->grace_ms;
    if (srv->n_active > 0)
        srv->idle_since_ms = 0;
    else if (srv->idle_since_ms == 0)
        srv->idle_since_ms = now;
    /* Calls that just ended may still have bytes on their way out: give the
     * transport a moment before closing the connections under it. */
    int settled = srv->idle_since_ms != 0 && now - srv->idle_since_ms >= CLOSE_SETTLE_MS;
    if (!srv->shut && (settled || grace_over)) {
        srv->shut = 1;
        jb_log(JB_LOG_INFO, "rpc", "gRPC server shutting down", "live_calls=%zu", srv->n_active);
        srv->t_shutdown.fn = on_shutdown_notified;
        grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->t_shutdown);
    }
    if (srv->shut && !srv->cancelled_all && (srv->n_active == 0 || grace_over)) {
        /* Also closes idle connections, without which the notify never comes. */
        srv->cancelled_all = 1;
        grpc_server_cancel_all_calls(srv->server);
    }
    maybe_finish(srv);
}

static void on_tick(uv_timer_t *t)
{
    jb_server *srv = t->data;
    check_slow(srv);
    if (srv->draining && !srv->streams_ended)
        end_streams(srv);
    if (srv->closing && srv->streams_ended && !srv->finished)
        close_step(srv);
}

static void on_handle_closed(uv_handle_t *h)
{
    jb_server *srv = h->data;
    if (--srv->handles_open > 0)
        return;
    jb_server_close_cb cb = srv->close_cb;
    void *ud = srv->close_userdata;
    free(srv->in.v);
    free(srv->work.v);
    uv_mutex_destroy(&srv->mu);
    free(srv->handles);
    free(srv->listen);
    free(srv->address);
    free(srv);
    if (cb != NULL)
        cb(ud);
}

static void maybe_finish(jb_server *srv)
{
    if (!srv->closing || srv->finished || !srv->notified || srv->n_calls > 0)
        return;
    srv->finished = 1;
    grpc_server_destroy(srv->server);
    grpc_completion_queue_shutdown(srv->cq);
    uv_thread_join(&srv->pump);
    /* Anything the pump handed over before it stopped. */
    drain_inbox(srv);
    grpc_completion_queue_destroy(srv->cq);
    grpc_shutdown();
    jb_log(JB_LOG_INFO, "rpc", "gRPC server stopped", NULL);
    uv_close((uv_handle_t *)&srv->async, on_handle_closed);
    uv_close((uv_handle_t *)&srv->tick, on_handle_closed);
}

static void on_shutdown_notified(jb__rpc_tag *tag, int ok)
{
    jb_server *srv = JB__CONTAINER_OF(tag, jb_server, t_shutdown);
    (void)ok;
    srv->notified = 1;
    maybe_finish(srv);
}

/* ---- lifecycle ------------------------------------------------------------ */

static char *bound_address(const char *listen, int port)
{
    char *out;
    if (strncmp(listen, "unix:", 5) == 0)
        return strdup(listen);
    const char *colon = strrchr(listen, ':');
    int host_len = colon != NULL ? (int)(colon - listen) : (int)strlen(listen);
    size_t size = (size_t)host_len + 16;
    out = malloc(size);
    if (out != NULL)
        snprintf(out, size, "%.*s:%d", host_len, listen, port);
    return out;
}

static int clamp_int(size_t v)
{
    return v > INT32_MAX ? INT32_MAX : (int)v;
}

/*
 * Clients' keepalive pings (every JB_CLIENT_KEEPALIVE_MIN_MS at the most,
 * also without calls) are welcome: accept one every half of that, so that
 * gRPC never answers them with GOAWAY "too_many_pings".
 */
static void keepalive_args(grpc_arg ka[3])
{
    memset(ka, 0, 3 * sizeof(*ka));
    ka[0].type = ka[1].type = ka[2].type = GRPC_ARG_INTEGER;
    ka[0].key = (char *)GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS; /* never written */
    ka[0].value.integer = 1;
    ka[1].key = (char *)GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS;
    ka[1].value.integer = MIN_PING_INTERVAL_MS;
    ka[2].key = (char *)GRPC_ARG_HTTP2_MAX_PING_STRIKES;
    ka[2].value.integer = 2;
}

jb_status jb_server_new(uv_loop_t *loop, const jb_server_options *opts, jb_server **out,
                        jb_error *err)
{
    if (opts->listen == NULL || opts->listen[0] == '\0' || opts->bus == NULL)
        return jb_error_set(err, JB_EINVAL, "a server needs a listen address and a bus");
    jb_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory creating the server");
    srv->loop = loop;
    srv->opts = *opts;
    if (srv->opts.max_receive_bytes == 0)
        srv->opts.max_receive_bytes = DEFAULT_MAX_RECEIVE;
    if (srv->opts.max_stream_bytes == 0)
        srv->opts.max_stream_bytes = DEFAULT_MAX_STREAM;
    if (srv->opts.slow_consumer_ms == 0)
        srv->opts.slow_consumer_ms = DEFAULT_SLOW_MS;
    if (srv->opts.calls_per_method == 0)
        srv->opts.calls_per_method = DEFAULT_CALLS_PER;
    if (srv->opts.max_request_memory_bytes == 0)
        srv->opts.max_request_memory_bytes = DEFAULT_MAX_MEMORY;
    if (srv->opts.max_concurrent_streams == 0)
        srv->opts.max_concurrent_streams = DEFAULT_MAX_STREAMS;
    if (srv->opts.max_events_per_request == 0)
        srv->opts.max_events_per_request = JB__DECODE_MAX_EVENTS;
    if (srv->opts.max_headers_per_event == 0)
        srv->opts.max_headers_per_event = JB_EVENT_MAX_HEADERS;
    /* The loop decodes one request at a time: its bytes in one slice, then
     * the decoded block. The rest of the budget is gRPC's quota, which must
     * hold at least two requests of the largest size. */
    jb__decode_limits limits = jb__server_publish_limits(srv);
    size_t max_in = srv->opts.max_receive_bytes;
    size_t loop_bytes = max_in + jb__publish_decode_bound(max_in, &limits);
    size_t need = loop_bytes + 2 * max_in;
    /* Other requests, decoded by protobuf-c (up to 8 bytes per byte), use the same share. */
    srv->unary_max_bytes = loop_bytes / 9;
    if (srv->opts.max_request_memory_bytes < need) {
        jb_error_set(err, JB_EINVAL,
                     "max_request_memory_bytes (event_bus.max_request_memory_bytes) is %zu; "
                     "requests of up to %zu bytes, with the event and header limits, need at "
                     "least %zu",
                     srv->opts.max_request_memory_bytes, max_in, need);
        free(srv);
        return JB_EINVAL;
    }
    srv->listen = strdup(opts->listen);
    srv->opts.listen = srv->listen;
    srv->handles = calloc(jb__n_methods, sizeof(void *));
    if (srv->listen == NULL || srv->handles == NULL) {
        free(srv->listen);
        free(srv->handles);
        free(srv);
        return jb_error_set(err, JB_ENOMEM, "out of memory creating the server");
    }

    gpr_set_log_function(grpc_log_sink);
    gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
    grpc_init();
    /* The one bound on what gRPC holds for requests (docs/grpc.md "Memory"):
     * a quota over all connections, the streams per connection, the size of
     * one message. The server keeps its own reference to the quota. */
    grpc_resource_quota *quota = grpc_resource_quota_create("jimbotd requests");
    grpc_resource_quota_resize(quota, srv->opts.max_request_memory_bytes - loop_bytes);
    grpc_arg args[4];
    memset(args, 0, sizeof(args));
    /* gRPC sets SO_REUSEPORT by default: a second daemon would share the port. */
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT; /* gRPC never writes it */
    args[0].value.integer = 0;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[1].value.integer = clamp_int(srv->opts.max_receive_bytes);
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[2].value.integer = clamp_int(srv->opts.max_concurrent_streams);
    args[3].type = GRPC_ARG_POINTER;
    args[3].key = (char *)GRPC_ARG_RESOURCE_QUOTA;
    args[3].value.pointer.p = quota;
    args[3].value.pointer.vtable = grpc_resource_quota_arg_vtable();
    grpc_arg ka[3];
    keepalive_args(ka);
    grpc_arg all[7] = {args[0], args[1], args[2], args[3], ka[0], ka[1], ka[2]};
    grpc_channel_args cargs = {7, all};
    srv->server = grpc_server_create(&cargs, NULL);
    grpc_resource_quota_unref(quota);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
    for (size_t i = 0; i < jb__n_methods; i++)
        srv->handles[i] = grpc_server_register_method(srv->server, jb__methods[i].path, NULL,
                                                      GRPC_SRM_PAYLOAD_NONE, 0);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(srv->server, srv->listen, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        jb_error_set(err, JB_EUNAVAILABLE,
                     "cannot listen on %s (address in use, or not an address of this host)",
                     srv->listen);
        grpc_server_destroy(srv->server);
        grpc_completion_queue_shutdown(srv->cq);
        while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(srv->cq);
        grpc_shutdown();
        free(srv->handles);
        free(srv->listen);
        free(srv);
        return JB_EUNAVAILABLE;
    }
    srv->address = bound_address(srv->listen, port);
    grpc_server_start(srv->server);

    uv_mutex_init(&srv->mu);
    uv_async_init(loop, &srv->async, on_async);
    srv->async.data = srv;
    uv_timer_init(loop, &srv->tick);
    srv->tick.data = srv;
    uv_timer_start(&srv->tick, on_tick, TICK_MS, TICK_MS);
    srv->handles_open = 2;
    if (uv_thread_create(&srv->pump, pump_main, srv) != 0)
        JB_BUG("cannot start the gRPC completion-queue thread");
    srv->pump_started = 1;

    for (size_t i = 0; i < jb__n_methods; i++)
        for (uint32_t k = 0; k < srv->opts.calls_per_method; k++)
            request_call(srv, i);
    request_call(srv, jb__n_methods);
    jb_log(JB_LOG_INFO, "rpc", "gRPC server listening", "address=%s",
           srv->address != NULL ? srv->address : srv->listen);
    *out = srv;
    return JB_OK;
}

const char *jb_server_address(const jb_server *srv)
{
    return srv->address != NULL ? srv->address : srv->listen;
}

void jb_server_drain(jb_server *srv, uint32_t grace_ms, jb_server_drained_cb cb, void *userdata)
{
    if (srv->draining)
        return;
    srv->draining = 1;
    srv->drain_start_ms = jb__now_ms();
    srv->drain_grace_ms = grace_ms ? grace_ms : DEFAULT_GRACE_MS;
    srv->drained_cb = cb;
    srv->drained_userdata = userdata;
    jb_log(JB_LOG_INFO, "rpc", "gRPC server draining (lame duck)", "live_calls=%zu publishes=%zu",
           srv->n_active, srv->n_held);
    uv_timer_start(&srv->tick, on_tick, CLOSE_TICK_MS, CLOSE_TICK_MS);
}

void jb_server_close(jb_server *srv, uint32_t grace_ms, jb_server_close_cb cb, void *userdata)
{
    jb_server_drain(srv, grace_ms, NULL, NULL);
    if (srv->closing)
        return;
    srv->closing = 1;
    srv->grace_ms = grace_ms ? grace_ms : DEFAULT_GRACE_MS;
    srv->close_cb = cb;
    srv->close_userdata = userdata;
    srv->close_start_ms = jb__now_ms();
    uv_timer_start(&srv->tick, on_tick, CLOSE_TICK_MS, CLOSE_TICK_MS);
}
