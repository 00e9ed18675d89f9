/*
 * The request queue of jimbot.infra.v1.Infrastructure over the coordinator's
 * queues (jb_coord_queue_*, docs/coordinator.md "The request queue"):
 * SubmitRequest, TakeRequests and Respond. server.c owns the calls' life;
 * this file turns requests into engine calls and the engine's answers and
 * tasks into messages and status codes (docs/grpc.md has the table).
 *
 * Invariants:
 *   - A SubmitRequest holds at most one jb_queue_submit until its answer.
 *     The client going away (cancel, deadline) cancels it: a request no one
 *     else waits for leaves the queue and never reaches a worker. Its wait
 *     is cut to the call's deadline less a margin, so the client is told
 *     DEADLINE_EXCEEDED by us, with a reason, not by its own clock.
 *   - A TakeRequests stream owns one jb_queue_worker. Initial metadata with
 *     "jimbot-worker" goes out once the worker is registered, so a client
 *     that has it knows that submits find a worker. The stream ending in any way frees the worker,
 *     and its unanswered requests go back to the queue. The engine never
 *     hands a worker more than max_outstanding requests, which bounds what
 *     its stream queues.
 *   - Errors that share a status code are told apart by the trailer
 *     "jimbot-error": no-worker, queue-full, rate-limited, poisoned.
 *
 * Runs on the loop thread only.
 */
#include "rpc/server_internal.h"

#include "jimbot/infra/v1/infrastructure.pb-c.h"

#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHUTTING_DOWN "shutting down"
/* Deadline margin kept for the answer of a waiting submit. */
#define ANSWER_MARGIN_MS 200
/* The most requests one worker may hold unanswered. */
#define MAX_OUTSTANDING 1000
#define JB__STR_(x)     #x
#define JB__STR(x)      JB__STR_(x)
/* Initial metadata of a registered worker: its name (else the queue's). */
#define WORKER_KEY "jimbot-worker"

/* ---- SubmitRequest ------------------------------------------------------------ */

typedef struct submit_state {
    jb_queue_submit *submit;
} submit_state;

static void on_answer(jb_status st, const jb_queued_response *r, const jb_error *err, void *ud)
{
    jb__call *c = ud;
    submit_state *s = c->state;
    s->submit = NULL;
    const char *why = err != NULL && err->message[0] != '\0' ? err->message : jb_strerror(st);
    char text[sizeof(err->message) + 32];
    switch (st) {
    case JB_OK:
        break;
    case JB_ETIMEDOUT:
        jb__call_finish(c, NULL, GRPC_STATUS_DEADLINE_EXCEEDED,
                        "no response from a worker before the request's timeout", 0);
        return;
    case JB_EIO:
        snprintf(text, sizeof(text), "request %s", why); /* "poisoned: ..." */
        jb__call_set_error_reason(c, "poisoned");
        jb__call_finish(c, NULL, GRPC_STATUS_ABORTED, text, 0);
        return;
    case JB_ECLOSED:
        jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 1000);
        return;
    default:
        jb__call_fail(c, st, why, 0);
        return;
    }
    Jimbot__Infra__V1__QueuedResponse resp = JIMBOT__INFRA__V1__QUEUED_RESPONSE__INIT;
    resp.request_id = (char *)r->request_id;
    resp.type = (char *)(r->type != NULL ? r->type : "");
    resp.payload.data = (uint8_t *)r->payload;
    resp.payload.len = r->payload_len;
    resp.error = (char *)(r->error != NULL ? r->error : "");
    resp.cached = r->cached != 0;
    jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
}

/* Answers a refused submit: the status, its reason trailer and retry hint. */
static void submit_refused(jb__call *c, jb_status st, const jb_error *err, uint64_t retry_ms)
{
    uint32_t retry = retry_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)retry_ms;
    switch (st) {
    case JB_EUNAVAILABLE:
        jb__call_set_error_reason(c, "no-worker");
        retry = 0;
        break;
    case JB_EBACKPRESSURE:
        jb__call_set_error_reason(c, "queue-full");
        retry = retry > 0 ? retry : 1000;
        break;
    case JB_ERATELIMITED:
        jb__call_set_error_reason(c, "rate-limited");
        retry = retry > 0 ? retry : 1;
        break;
    default:
        retry = 0;
        break;
    }
    jb__call_fail(c, st, err->message, retry);
}

/* The submitter's name: the request's own, else the peer's address. */
static char *submitter_of(jb__call *c, const char *given)
{
    if (given != NULL && given[0] != '\0')
        return strdup(given);
    char *peer = grpc_call_get_peer(c->call);
    char *copy = strdup(peer != NULL ? peer : "");
    gpr_free(peer);
    if (copy != NULL && strlen(copy) > JB_COORD_MAX_NAME)
        copy[JB_COORD_MAX_NAME] = '\0';
    return copy;
}

/* The wait a submit may have: its call's deadline less the answer's margin. */
static uint32_t submit_max_wait(const jb__call *c)
{
    uint64_t left = jb__call_ms_left(c);
    if (left == UINT64_MAX || left > UINT32_MAX)
        return 0;
    return left > ANSWER_MARGIN_MS + 1 ? (uint32_t)(left - ANSWER_MARGIN_MS) : 1;
}

void jb__submit_request_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    Jimbot__Infra__V1__QueuedRequest *req = (Jimbot__Infra__V1__QueuedRequest *)jb__unpack_request(
        c, &jimbot__infra__v1__queued_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    submit_state *s = calloc(1, sizeof(*s));
    char *submitter = submitter_of(c, req->submitter);
    if (s == NULL || submitter == NULL) {
        free(s);
        free(submitter);
        protobuf_c_message_free_unpacked(&req->base, NULL);
        jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        return;
    }
    c->state = s;
    jb_queued_request r = {
        .request_id = req->request_id,
        .queue = req->queue,
        .type = req->type,
        .payload = req->payload.data,
        .payload_len = req->payload.len,
        .priority = req->priority,
        .timeout_ms = req->timeout_ms,
        .max_wait_ms = submit_max_wait(c),
        .submitter = submitter,
        .bypass_cache = req->bypass_cache,
    };
    jb_error err;
    uint64_t retry = 0;
    jb_status st =
        jb_coord_queue_submit(jb__server_coord(c->srv), &r, on_answer, c, &s->submit, &retry, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    free(submitter);
    if (st != JB_OK) {
        s->submit = NULL;
        submit_refused(c, st, &err, retry);
    }
}

void jb__submit_request_closed(jb__call *c)
{
    submit_state *s = c->state;
    if (s != NULL && s->submit != NULL) {
        jb_coord_queue_cancel(s->submit);
        s->submit = NULL;
    }
}

void jb__submit_request_drain(jb__call *c)
{
    submit_state *s = c->state;
    if (s == NULL || s->submit == NULL)
        return;
    jb_coord_queue_cancel(s->submit);
    s->submit = NULL;
    jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 1000);
}

void jb__submit_request_release(jb__call *c)
{
    jb__submit_request_closed(c);
    free(c->state);
    c->state = NULL;
}

/* ---- TakeRequests ------------------------------------------------------------- */

typedef struct take_state {
    jb_queue_worker *worker;
} take_state;

static void take_end(jb__call *c, grpc_status_code code, const char *details)
{
    take_state *s = c->state;
    if (s->worker != NULL) {
        jb_coord_queue_worker_free(s->worker);
        s->worker = NULL;
    }
    jb__call_end(c, code, details, 0);
}

static void on_task(jb_queue_worker *w, const jb_queued_task *t, void *ud)
{
    jb__call *c = ud;
    (void)w;
    Jimbot__Infra__V1__QueuedRequest m = JIMBOT__INFRA__V1__QUEUED_REQUEST__INIT;
    m.request_id = (char *)t->request_id;
    m.queue = (char *)t->queue;
    m.type = (char *)(t->type != NULL ? t->type : "");
    m.payload.data = (uint8_t *)t->payload;
    m.payload.len = t->payload_len;
    m.priority = t->priority;
    m.timeout_ms = t->timeout_ms;
    m.submitter = (char *)(t->submitter != NULL ? t->submitter : "");
    m.enqueued_ms = t->enqueued_ms;
    m.delivery_count = t->delivery_count;
    /* Over the stream's byte limit: the worker does not read what it was
     * given. Its requests go back to the queue for another. */
    if (jb__call_send_message(c, &m.base) != 0)
        take_end(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker too slow: its stream is full");
}

/* Why @req cannot be served, or NULL. The worker's name goes into metadata:
 * printable ASCII only, as gRPC requires of a header value. */
static const char *take_request_invalid(const Jimbot__Infra__V1__TakeRequestsRequest *req)
{
    if (req->max_outstanding > MAX_OUTSTANDING)
        return "max_outstanding above " JB__STR(MAX_OUTSTANDING);
    size_t n = strlen(req->worker);
    if (n > JB_COORD_MAX_NAME)
        return "worker name longer than " JB__STR(JB_COORD_MAX_NAME) " bytes";
    for (size_t i = 0; i < n; i++) {
        if (req->worker[i] < 0x20 || req->worker[i] > 0x7e)
            return "worker name holds a byte that is not printable ASCII";
    }
    return NULL;
}

void jb__take_requests_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    Jimbot__Infra__V1__TakeRequestsRequest *req =
        (Jimbot__Infra__V1__TakeRequestsRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__take_requests_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    const char *bad = take_request_invalid(req);
    if (bad != NULL) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        jb__call_fail(c, JB_EINVAL, bad, 0);
        return;
    }
    take_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        return;
    }
    c->state = s;
    jb_error err;
    jb_status st = jb_coord_queue_worker_new(jb__server_coord(c->srv), req->queue,
                                             req->max_outstanding, on_task, c, &s->worker, &err);
    if (st != JB_OK) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        s->worker = NULL;
        jb__call_fail(c, st, err.message, 0);
        return;
    }
    /* Registered: submits from now on find this worker. The mark tells this
     * metadata from the empty one gRPC reports for a refusal (trailers only). */
    jb__call_send_initial(c, WORKER_KEY, req->worker[0] != '\0' ? req->worker : req->queue);
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

void jb__take_requests_closed(jb__call *c)
{
    take_state *s = c->state;
    if (s != NULL && s->worker != NULL) {
        jb_coord_queue_worker_free(s->worker);
        s->worker = NULL;
    }
}

void jb__take_requests_drain(jb__call *c)
{
    if (c->state != NULL)
        take_end(c, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN);
}

void jb__take_requests_release(jb__call *c)
{
    jb__take_requests_closed(c);
    free(c->state);
    c->state = NULL;
}

/* ---- Respond ------------------------------------------------------------------ */

void jb__respond_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    Jimbot__Infra__V1__QueuedResponse *req =
        (Jimbot__Infra__V1__QueuedResponse *)jb__unpack_request(
            c, &jimbot__infra__v1__queued_response__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    jb_queued_response r = {
        .request_id = req->request_id,
        .type = req->type,
        .payload = req->payload.data,
        .payload_len = req->payload.len,
        .error = req->error,
    };
    jb_error err;
    jb_status st = jb_coord_queue_respond(jb__server_coord(c->srv), &r, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (st != JB_OK) {
        jb__call_fail(c, st, err.message, 0);
        return;
    }
    Jimbot__Infra__V1__RespondResponse resp = JIMBOT__INFRA__V1__RESPOND_RESPONSE__INIT;
    jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
}
