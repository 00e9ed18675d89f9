/*
 * The request queue of the client library (include/jimbot/client.h,
 * "Infrastructure: the request queue"): SubmitRequest, Respond and the
 * TakeRequests stream of a worker.
 *
 * A submit is one unary call whose deadline is the request's timeout plus
 * the client's deadline_ms, so that jimbotd, which cuts its wait a little
 * short of the call's deadline, answers DEADLINE_EXCEEDED with a reason
 * before the client's own clock would. Its end reads the trailing metadata
 * (jb__client_unary_start_md()): "jimbot-error" tells apart the refusals
 * that share a gRPC code (rate-limited from queue-full, no-worker from
 * shutting down) and "retry-after-ms" carries the hint. The blocking form
 * waits on a condition variable that the asynchronous end signals, and takes
 * the response over instead of copying it.
 *
 * A worker holds one TakeRequests stream, a jb__stream (stream.c) as a GPU
 * lease's: the start batch, the status batch and one RECV_MESSAGE at a
 * time, counted in w->ops. jimbotd sends the initial metadata, with
 * "jimbot-worker", once the worker is registered; a refusal (unknown queue)
 * is a status alone ("trailers only"), and gRPC's C core ends the start
 * batch for that too, with empty metadata, in either order with the status.
 * So the start batch's end means "registered" only when the metadata carries
 * "jimbot-worker"; without it the status that follows says why not. A
 * stream is never started again: its end is the worker's ENDED.
 *
 *     start ──▶ REGISTERED ──▶ TASK... ──(status)──▶ ENDED
 *
 * Tasks go to the callback (without c->mu; the next RECV_MESSAGE is posted
 * once it returns) or into a FIFO for jb_client_worker_next(), which jimbotd
 * bounds: it hands a worker at most max_outstanding tasks unanswered.
 *
 * Lifetime: as a GPU lease's handle: freed once the user freed it, no batch
 * is outstanding and no callback runs, by whichever of
 * jb_client_worker_free() or the client thread sees that last. All fields of
 * a worker are guarded by c->mu.
 */
#include "client/internal.h"

#include "core/buf.h"

#include "jimbot/infra/v1/infrastructure.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define M_SUBMIT  "/jimbot.infra.v1.Infrastructure/SubmitRequest"
#define M_TAKE    "/jimbot.infra.v1.Infrastructure/TakeRequests"
#define M_RESPOND "/jimbot.infra.v1.Infrastructure/Respond"

/* The longest timeout_ms a queue may be configured with: a submit with 0 allows that long. */
enum { QUEUE_TIMEOUT_MAX_MS = 3600000 };

static char *str_or_empty(const char *s)
{
    return (char *)(s != NULL ? s : "");
}

/* ---- Responses ------------------------------------------------------------- */

typedef struct response_impl {
    jb_client_response pub;
    Jimbot__Infra__V1__QueuedResponse *msg;
} response_impl;

static jb_status parse_response(const uint8_t *bytes, size_t len, response_impl **out,
                                jb_error *err)
{
    Jimbot__Infra__V1__QueuedResponse *m =
        jimbot__infra__v1__queued_response__unpack(NULL, len, bytes);
    if (m == NULL)
        return jb_error_set(err, JB_EPARSE, "SubmitRequest: malformed response (%zu bytes)", len);
    response_impl *r = jb__xcalloc(1, sizeof(*r));
    r->msg = m;
    r->pub = (jb_client_response){.request_id = m->request_id,
                                  .type = m->type,
                                  .payload = m->payload.data,
                                  .payload_len = m->payload.len,
                                  .error = m->error,
                                  .cached = m->cached ? 1 : 0};
    *out = r;
    return JB_OK;
}

void jb_client_response_free(jb_client_response *resp)
{
    if (resp == NULL)
        return;
    response_impl *r = (response_impl *)resp;
    jimbot__infra__v1__queued_response__free_unpacked(r->msg, NULL);
    free(r);
}

/* ---- Submitting -------------------------------------------------------------- */

/* A blocking submit's rendezvous with its asynchronous end. */
typedef struct submit_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    jb_status status;
    response_impl *resp;
    jb_client_submit_refusal why;
    jb_error err;
} submit_wait;

typedef struct submit_call {
    jb_client_submit_cb cb; /* the asynchronous form's */
    void *userdata;
    submit_wait *wait; /* the blocking form's */
} submit_call;

static jb_status pack_request(const jb_client_request *r, uint8_t **buf, size_t *len,
                              uint32_t *extra_ms, jb_error *err)
{
    if (r == NULL || r->queue == NULL || r->queue[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "SubmitRequest: no queue");
    if (r->payload == NULL && r->payload_len > 0)
        return jb_error_set(err, JB_EINVAL, "SubmitRequest: payload is NULL");
    Jimbot__Infra__V1__QueuedRequest m = JIMBOT__INFRA__V1__QUEUED_REQUEST__INIT;
    m.queue = (char *)r->queue;
    m.request_id = str_or_empty(r->request_id);
    m.type = str_or_empty(r->type);
    m.payload.data = (uint8_t *)r->payload;
    m.payload.len = r->payload_len;
    m.priority = r->priority;
    m.timeout_ms = r->timeout_ms;
    m.submitter = str_or_empty(r->submitter);
    m.bypass_cache = r->bypass_cache != 0;
    *buf = jb__client_pack(&m.base, len);
    *extra_ms = r->timeout_ms != 0 ? r->timeout_ms : QUEUE_TIMEOUT_MAX_MS;
    return JB_OK;
}

/*
 * Fills @why from the trailers @md and refines @st by the reason: a
 * RESOURCE_EXHAUSTED that is "rate-limited" is JB_ERATELIMITED.
 */
static jb_status refine_refusal(jb_status st, const grpc_metadata_array *md,
                                jb_client_submit_refusal *why, jb_error *err)
{
    memset(why, 0, sizeof(*why));
    jb__client_md_get(md, "jimbot-error", why->reason, sizeof(why->reason));
    why->retry_after_ms = jb__client_retry_after(md);
    if (st == JB_EBACKPRESSURE && strcmp(why->reason, "rate-limited") == 0) {
        st = JB_ERATELIMITED;
        err->code = st;
    }
    return st;
}

/* Hands the outcome to the blocking waiter (which takes @resp) or the callback. */
static void submit_finish(submit_call *s, jb_status st, response_impl *resp,
                          const jb_client_submit_refusal *why, const jb_error *err)
{
    submit_wait *w = s->wait;
    if (w == NULL) {
        s->cb(st, resp != NULL ? &resp->pub : NULL, why, err, s->userdata);
        jb_client_response_free(resp != NULL ? &resp->pub : NULL);
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->status = st;
    w->resp = resp;
    if (why != NULL)
        w->why = *why;
    if (err != NULL)
        w->err = *err;
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void submit_done(jb_client *c, jb_status status, const jb_error *err,
                        const uint8_t *response, size_t len, const grpc_metadata_array *trailing,
                        void *userdata)
{
    (void)c;
    submit_call *s = userdata;
    jb_error e = *err;
    response_impl *resp = NULL;
    jb_client_submit_refusal why;
    memset(&why, 0, sizeof(why));
    if (status == JB_OK)
        status = parse_response(response, len, &resp, &e);
    else
        status = refine_refusal(status, trailing, &why, &e);
    submit_finish(s, status, resp, status == JB_OK ? NULL : &why, status == JB_OK ? NULL : &e);
    free(s);
}

static jb_status submit_start(jb_client *c, const jb_client_request *req, submit_call *s,
                              jb_error *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    uint32_t extra = 0;
    jb_status st = pack_request(req, &buf, &len, &extra, err);
    if (st != JB_OK)
        return st;
    st = jb__client_unary_start_md(c, M_SUBMIT, buf, len, extra, submit_done, s, err);
    free(buf);
    return st;
}

jb_status jb_client_submit_async(jb_client *c, const jb_client_request *req, jb_client_submit_cb cb,
                                 void *userdata, jb_error *err)
{
    if (cb == NULL)
        return jb_error_set(err, JB_EINVAL, "SubmitRequest: no callback");
    submit_call *s = jb__xmalloc(sizeof(*s));
    *s = (submit_call){.cb = cb, .userdata = userdata};
    jb_status st = submit_start(c, req, s, err);
    if (st != JB_OK)
        free(s);
    return st;
}

jb_status jb_client_submit(jb_client *c, const jb_client_request *req, jb_client_response **out,
                           jb_client_submit_refusal *why, jb_error *err)
{
    *out = NULL;
    if (why != NULL)
        memset(why, 0, sizeof(*why));
    jb_status st = jb__client_refuse_on_thread(c, "SubmitRequest", err);
    if (st != JB_OK)
        return st;
    submit_wait w;
    memset(&w, 0, sizeof(w));
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    submit_call *s = jb__xmalloc(sizeof(*s));
    *s = (submit_call){.wait = &w};
    st = submit_start(c, req, s, err);
    if (st != JB_OK) {
        free(s);
    } else {
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        st = w.status;
        if (st == JB_OK)
            *out = &w.resp->pub;
        else if (err != NULL)
            *err = w.err;
        if (st != JB_OK && why != NULL)
            *why = w.why;
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    return st;
}

/* ---- Responding -------------------------------------------------------------- */

static jb_status pack_answer(const jb_client_response *r, uint8_t **buf, size_t *len, jb_error *err)
{
    if (r == NULL || r->request_id == NULL || r->request_id[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "Respond: no request_id");
    if (r->payload == NULL && r->payload_len > 0)
        return jb_error_set(err, JB_EINVAL, "Respond: payload is NULL");
    Jimbot__Infra__V1__QueuedResponse m = JIMBOT__INFRA__V1__QUEUED_RESPONSE__INIT;
    m.request_id = (char *)r->request_id;
    m.type = str_or_empty(r->type);
    m.payload.data = (uint8_t *)r->payload;
    m.payload.len = r->payload_len;
    m.error = str_or_empty(r->error);
    *buf = jb__client_pack(&m.base, len);
    return JB_OK;
}

jb_status jb_client_respond(jb_client *c, const jb_client_response *resp, jb_error *err)
{
    uint8_t *buf = NULL, *answer = NULL;
    size_t len = 0, answer_len = 0;
    jb_status st = pack_answer(resp, &buf, &len, err);
    if (st != JB_OK)
        return st;
    st = jb__client_unary_call(c, M_RESPOND, buf, len, 0, &answer, &answer_len, err);
    free(buf);
    free(answer);
    return st;
}

jb_status jb_client_respond_async(jb_client *c, const jb_client_response *resp,
                                  jb_client_done_cb cb, void *userdata, jb_error *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    jb_status st = pack_answer(resp, &buf, &len, err);
    if (st != JB_OK)
        return st;
    st = jb__client_unary_start_done(c, M_RESPOND, buf, len, cb, userdata, err);
    free(buf);
    return st;
}

/* ---- Tasks --------------------------------------------------------------------- */

typedef struct task_impl {
    jb_client_task pub;
    Jimbot__Infra__V1__QueuedRequest *msg;
    struct task_impl *next; /* the worker's FIFO */
} task_impl;

static task_impl *read_task(grpc_byte_buffer *bb)
{
    size_t len;
    uint8_t *bytes = jb__client_read_all(bb, &len);
    if (bytes == NULL)
        return NULL;
    Jimbot__Infra__V1__QueuedRequest *m =
        jimbot__infra__v1__queued_request__unpack(NULL, len, bytes);
    free(bytes);
    if (m == NULL)
        return NULL;
    task_impl *t = jb__xcalloc(1, sizeof(*t));
    t->msg = m;
    t->pub = (jb_client_task){.request_id = m->request_id,
                              .queue = m->queue,
                              .type = m->type,
                              .payload = m->payload.data,
                              .payload_len = m->payload.len,
                              .priority = m->priority,
                              .timeout_ms = m->timeout_ms,
                              .submitter = m->submitter,
                              .enqueued_ms = m->enqueued_ms,
                              .delivery_count = m->delivery_count};
    return t;
}

void jb_client_task_free(jb_client_task *task)
{
    if (task == NULL)
        return;
    task_impl *t = (task_impl *)task;
    jimbot__infra__v1__queued_request__free_unpacked(t->msg, NULL);
    free(t);
}

/* ---- Workers ----------------------------------------------------------------- */

struct jb_client_worker {
    jb_client *c;
    jb_client_worker *next; /* c->workers */
    jb_client_worker_fn cb;
    void *userdata;

    jb__stream s; /* the TakeRequests stream */
    int ops;      /* its outstanding batches: the stream is over at 0 */

    int registered;
    int ended;
    jb_status end_status;
    jb_error end_err;
    task_impl *q_head, *q_tail; /* pull mode: tasks not yet taken */

    int freed;
    int in_callback;
    int free_waiting;
    pthread_cond_t cv;
};

static void worker_free_handle(jb_client_worker *w)
{
    while (w->q_head != NULL) {
        task_impl *t = w->q_head;
        w->q_head = t->next;
        jb_client_task_free(&t->pub);
    }
    pthread_cond_destroy(&w->cv);
    free(w);
}

/* Unlinks and frees @w if nothing refers to it any more; c->mu held. Returns 1 if freed. */
static int maybe_free_locked(jb_client_worker *w)
{
    if (!w->freed || w->ops > 0 || w->in_callback || w->free_waiting || w->s.call != NULL)
        return 0;
    for (jb_client_worker **pp = &w->c->workers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    worker_free_handle(w);
    return 1;
}

/* Runs the callback with @ev without c->mu; c->mu held, w->cb set. */
static void deliver_locked(jb_client_worker *w, const jb_client_worker_event *ev)
{
    jb_client *c = w->c;
    if (w->freed)
        return;
    w->in_callback = 1;
    pthread_mutex_unlock(&c->mu);
    w->cb(w, ev, w->userdata);
    pthread_mutex_lock(&c->mu);
    w->in_callback = 0;
    pthread_cond_broadcast(&w->cv);
}

static void emit_locked(jb_client_worker *w, jb_client_worker_kind kind, const jb_client_task *task)
{
    if (w->cb == NULL)
        return;
    jb_client_worker_event ev = {.kind = kind, .task = task, .status = JB_OK};
    if (kind == JB_CLIENT_WORKER_ENDED) {
        ev.status = w->end_status;
        ev.err = w->end_err;
    } else {
        jb_error_clear(&ev.err);
    }
    deliver_locked(w, &ev);
}

/* The stream is over: ENDED with what its status says; c->mu held. */
static void stream_over_locked(jb_client_worker *w)
{
    grpc_status_code code;
    jb_status st;
    jb_error err;
    uint32_t hint;
    if (!jb__stream_over(&w->s, &code, &st, &err, &hint) || w->ended)
        return;
    if (w->freed || w->c->closing)
        st = jb_error_set(&err, JB_ECLOSED, "TakeRequests: the worker is closing");
    else if (code == GRPC_STATUS_OK)
        jb_error_clear(&err);
    w->ended = 1;
    w->end_status = st;
    w->end_err = err;
    pthread_cond_broadcast(&w->cv);
    emit_locked(w, JB_CLIENT_WORKER_ENDED, NULL);
}

static void post_recv_locked(jb_client_worker *w)
{
    if (!w->freed)
        jb__stream_post_recv(&w->s);
}

/* The stream is open and no status came: the worker is registered; c->mu held. */
static void registered_locked(jb_client_worker *w)
{
    if (w->registered || w->ended || w->s.status_done || w->c->closing)
        return;
    w->registered = 1;
    pthread_cond_broadcast(&w->cv);
    emit_locked(w, JB_CLIENT_WORKER_REGISTERED, NULL);
}

static void on_start(jb__tag *tag, int ok)
{
    jb_client_worker *w = JB__CONTAINER_OF(tag, jb_client_worker, s.t_start);
    jb_client *c = w->c;
    pthread_mutex_lock(&c->mu);
    w->ops--;
    jb__stream_sent(&w->s);
    char mark[8];
    /* Without the mark (refused, ending) the status says how. */
    if (ok && !w->s.status_done && !w->ended && !c->closing &&
        jb__client_md_get(&w->s.md_initial, "jimbot-worker", mark, sizeof(mark))[0])
        registered_locked(w);
    stream_over_locked(w);
    maybe_free_locked(w);
    pthread_mutex_unlock(&c->mu);
}

static void on_status(jb__tag *tag, int ok)
{
    (void)ok;
    jb_client_worker *w = JB__CONTAINER_OF(tag, jb_client_worker, s.t_status);
    jb_client *c = w->c;
    pthread_mutex_lock(&c->mu);
    w->ops--;
    w->s.status_done = 1;
    stream_over_locked(w);
    maybe_free_locked(w);
    pthread_mutex_unlock(&c->mu);
}

/* One task received: to the callback or the FIFO; c->mu held. */
static void task_locked(jb_client_worker *w, task_impl *t)
{
    if (w->cb != NULL) {
        emit_locked(w, JB_CLIENT_WORKER_TASK, &t->pub);
        jb_client_task_free(&t->pub);
        return;
    }
    if (w->q_tail != NULL)
        w->q_tail->next = t;
    else
        w->q_head = t;
    w->q_tail = t;
    pthread_cond_broadcast(&w->cv);
}

static void on_recv(jb__tag *tag, int ok)
{
    jb_client_worker *w = JB__CONTAINER_OF(tag, jb_client_worker, s.t_recv);
    jb_client *c = w->c;
    pthread_mutex_lock(&c->mu);
    w->ops--;
    grpc_byte_buffer *bb = jb__stream_take_recv(&w->s);
    if (ok && bb != NULL) {
        task_impl *t = read_task(bb);
        if (t == NULL) {
            /* A server bug: end the stream (its status then ends the worker). */
            if (w->s.call != NULL)
                grpc_call_cancel_with_status(w->s.call, GRPC_STATUS_INTERNAL,
                                             "malformed QueuedRequest", NULL);
        } else {
            task_locked(w, t);
            post_recv_locked(w);
        }
    }
    if (bb != NULL)
        grpc_byte_buffer_destroy(bb);
    stream_over_locked(w);
    maybe_free_locked(w);
    pthread_mutex_unlock(&c->mu);
}

jb_status jb_client_worker_start(jb_client *c, const jb_client_worker_options *opts,
                                 jb_client_worker_fn cb, void *userdata, jb_client_worker **out,
                                 jb_error *err)
{
    if (opts == NULL || opts->queue == NULL || opts->queue[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "TakeRequests: no queue");
    Jimbot__Infra__V1__TakeRequestsRequest r = JIMBOT__INFRA__V1__TAKE_REQUESTS_REQUEST__INIT;
    r.queue = (char *)opts->queue;
    r.max_outstanding = opts->max_outstanding;
    r.worker = str_or_empty(opts->name);
    size_t len;
    uint8_t *buf = jb__client_pack(&r.base, &len);

    jb_client_worker *w = jb__xcalloc(1, sizeof(*w));
    w->c = c;
    w->cb = cb;
    w->userdata = userdata;
    pthread_cond_init(&w->cv, NULL);
    jb__stream_init(&w->s, c, "TakeRequests", &w->ops, on_start, on_recv, on_status);
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        free(buf);
        worker_free_handle(w);
        return jb_error_set(err, JB_ECLOSED, "the client is closing");
    }
    jb__stream_start(&w->s, -1, M_TAKE, buf, len);
    post_recv_locked(w);
    w->next = c->workers;
    c->workers = w;
    pthread_mutex_unlock(&c->mu);
    free(buf);
    *out = w;
    return JB_OK;
}

/* Waits on @w->cv until @until, or for ever when @timeout_ms is negative; 0 on a timeout. */
static int wait_locked(jb_client_worker *w, int timeout_ms, const struct timespec *until)
{
    if (timeout_ms == 0)
        return 0;
    if (timeout_ms < 0)
        return pthread_cond_wait(&w->cv, &w->c->mu) == 0;
    return pthread_cond_timedwait(&w->cv, &w->c->mu, until) == 0;
}

jb_status jb_client_worker_wait_registered(jb_client_worker *w, int timeout_ms, jb_error *err)
{
    jb_client *c = w->c;
    jb_status st = jb__client_refuse_on_thread(c, "worker_wait_registered", err);
    if (st != JB_OK)
        return st;
    struct timespec until = jb__client_realtime_in(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (w->registered) {
            st = JB_OK;
            break;
        }
        if (w->ended) {
            st = w->end_status;
            if (err != NULL)
                *err = w->end_err;
            break;
        }
        if (!wait_locked(w, timeout_ms, &until) && !w->registered && !w->ended) {
            st = jb_error_set(err, JB_ETIMEDOUT, "TakeRequests: not registered within %d ms",
                              timeout_ms);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}

jb_status jb_client_worker_next(jb_client_worker *w, int timeout_ms, jb_client_task **out,
                                jb_error *err)
{
    if (w->cb != NULL)
        return jb_error_set(err, JB_EINVAL, "worker_next: the worker has a callback");
    jb_client *c = w->c;
    struct timespec until = jb__client_realtime_in(timeout_ms > 0 ? timeout_ms : 0);
    jb_status st;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (w->q_head != NULL) {
            task_impl *t = w->q_head;
            w->q_head = t->next;
            if (w->q_head == NULL)
                w->q_tail = NULL;
            t->next = NULL;
            *out = &t->pub;
            st = JB_OK;
            break;
        }
        if (w->ended && w->end_status == JB_OK) {
            st = jb_error_set(err, JB_ECLOSED, "TakeRequests: the stream ended");
            break;
        }
        if (w->ended) {
            st = w->end_status;
            if (err != NULL)
                *err = w->end_err;
            break;
        }
        if (!wait_locked(w, timeout_ms, &until) && w->q_head == NULL && !w->ended) {
            st = jb_error_set(err, JB_ETIMEDOUT, "worker_next: no task within %d ms", timeout_ms);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}

void jb_client_worker_free(jb_client_worker *w)
{
    if (w == NULL)
        return;
    jb_client *c = w->c;
    pthread_mutex_lock(&c->mu);
    w->freed = 1;
    jb__stream_cancel(&w->s);
    if (!jb__client_on_thread(c)) {
        w->free_waiting = 1;
        while (w->in_callback)
            pthread_cond_wait(&w->cv, &c->mu);
        w->free_waiting = 0;
    }
    maybe_free_locked(w);
    pthread_mutex_unlock(&c->mu);
}

void jb__client_workers_cancel_all(jb_client *c)
{
    for (jb_client_worker *w = c->workers; w != NULL; w = w->next)
        jb__stream_cancel(&w->s);
}

void jb__client_workers_free_all(jb_client *c)
{
    while (c->workers != NULL) {
        jb_client_worker *w = c->workers;
        c->workers = w->next;
        worker_free_handle(w);
    }
}
