/*
 * The Infrastructure calls of the client library (include/jimbot/client.h):
 * GPU leases (AcquireGpu streams, ReleaseGpu), the API budget
 * (AcquireApiQuota) and the resource status (GetResourceStatus, its Redis
 * part included; GetRedisAccess is in redis.c).
 *
 * A lease handle holds at most one AcquireGpu stream at a time, a jb__stream
 * (stream.c) as a subscription's (sub.c): the start batch, the status batch
 * and one RECV_MESSAGE at a time, counted in g->ops together with a pending
 * re-attach alarm (release calls, which outlive a stream, count in
 * g->pending). Once g->ops is zero the stream is over and the next step is
 * chosen:
 *
 *     start ──▶ QUEUED... GRANTED KEEPALIVE... EXPIRING ──(status)──▶ ENDED
 *                              │
 *                              └─ UNAVAILABLE, reattach_ms ──▶ DETACHED ──▶ alarm ──▶ start
 *                                                               (with lease_id)
 *
 * Events go to the lease's callback (without c->mu) or into a small queue
 * for jb_client_gpu_wait(); the queue merges a KEEPALIVE or QUEUED into one
 * of the same kind at its tail and drops its oldest entry when full (ENDED
 * is always last, so never dropped).
 *
 * Lifetime: as a subscription's: a handle is freed once the user freed it,
 * no batch or alarm is outstanding and no callback runs; whichever of
 * jb_client_gpu_free() or the client thread sees that last frees it. All
 * fields of a handle are guarded by c->mu.
 *
 * Unary calls (ReleaseGpu, AcquireApiQuota, GetResourceStatus) go through
 * jb__client_unary_start(), their blocking forms through
 * jb__client_unary_call() (client.c). Messages are packed and unpacked with
 * protobuf-c.
 */
#include "client/internal.h"

#include "core/buf.h"

#include "jimbot/infra/v1/infrastructure.pb-c.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define M_ACQUIRE_GPU "/jimbot.infra.v1.Infrastructure/AcquireGpu"
#define M_RELEASE_GPU "/jimbot.infra.v1.Infrastructure/ReleaseGpu"
#define M_QUOTA       "/jimbot.infra.v1.Infrastructure/AcquireApiQuota"
#define M_STATUS      "/jimbot.infra.v1.Infrastructure/GetResourceStatus"

enum { QUEUE_MAX = 16 };

struct jb_client_gpu {
    jb_client *c;
    jb_client_gpu *next; /* c->gpus */
    char *component;
    char *reason;
    int32_t priority;
    uint32_t duration_seconds;
    uint32_t pid;
    uint32_t reattach_ms;
    jb_client_gpu_fn cb;
    void *userdata;

    jb__stream s; /* the AcquireGpu stream, its re-attach alarm and attempt count */
    int ops;      /* the stream's batches and the re-attach alarm: the stream is over at 0 */
    int pending;  /* release calls and the notify alarm, which outlive a stream */

    /* Re-attach until when (monotonic; 0: attached). */
    int64_t reattach_until;
    /* jb_client_gpu_release_async() of a lease that was not granted. */
    jb__alarm notify;
    jb_client_gpu_release_cb notify_cb;
    void *notify_ud;

    jb_client_gpu_event st; /* the state: the latest event's fields */
    int granted;
    int ended;
    int releasing; /* asked to release: no more re-attaching */
    int released;  /* ReleaseGpu answered OK */
    jb_client_gpu_event q[QUEUE_MAX];
    unsigned q_head, q_len;
    int end_taken;

    int freed;
    int in_callback;
    int free_waiting;
    pthread_cond_t cv;
};

/* ---- Small helpers --------------------------------------------------------- */

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src != NULL ? src : "");
}

/* ---- Lease events ---------------------------------------------------------- */

static void queue_push_locked(jb_client_gpu *g, const jb_client_gpu_event *ev)
{
    if (g->q_len > 0) {
        jb_client_gpu_event *tail = &g->q[(g->q_head + g->q_len - 1) % QUEUE_MAX];
        if (tail->kind == ev->kind &&
            (ev->kind == JB_CLIENT_GPU_KEEPALIVE || ev->kind == JB_CLIENT_GPU_QUEUED)) {
            *tail = *ev;
            return;
        }
    }
    if (g->q_len == QUEUE_MAX) {
        g->q_head = (g->q_head + 1) % QUEUE_MAX;
        g->q_len--;
    }
    g->q[(g->q_head + g->q_len) % QUEUE_MAX] = *ev;
    g->q_len++;
}

/* Hands @ev (a copy) to the callback without c->mu, or to the queue; c->mu held. */
static void deliver_locked(jb_client_gpu *g, const jb_client_gpu_event *ev)
{
    jb_client *c = g->c;
    if (g->cb == NULL) {
        queue_push_locked(g, ev);
        pthread_cond_broadcast(&g->cv);
        return;
    }
    if (g->freed)
        return;
    g->in_callback = 1;
    pthread_mutex_unlock(&c->mu);
    g->cb(g, ev, g->userdata);
    pthread_mutex_lock(&c->mu);
    g->in_callback = 0;
    pthread_cond_broadcast(&g->cv);
}

/* The state with @kind, delivered; c->mu held. */
static void emit_locked(jb_client_gpu *g, jb_client_gpu_kind kind)
{
    g->st.kind = kind;
    jb_client_gpu_event ev = g->st;
    deliver_locked(g, &ev);
}

static void end_locked(jb_client_gpu *g, jb_status status, const jb_error *err,
                       uint32_t retry_after_ms)
{
    if (g->ended)
        return;
    g->ended = 1;
    g->st.status = status;
    g->st.retry_after_ms = retry_after_ms;
    if (status != JB_OK && err != NULL)
        g->st.err = *err;
    else
        jb_error_clear(&g->st.err);
    pthread_cond_broadcast(&g->cv);
    emit_locked(g, JB_CLIENT_GPU_ENDED);
}

/*
 * Applies one GpuLeaseEvent to the state; returns the kind to emit, or 0
 * for an event without content (a newer daemon's, say).
 */
static jb_client_gpu_kind apply_event_locked(jb_client_gpu *g,
                                             const Jimbot__Infra__V1__GpuLeaseEvent *m)
{
    switch (m->event_case) {
    case JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_QUEUED:
        g->st.position = m->queued->position;
        return JB_CLIENT_GPU_QUEUED;
    case JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_GRANTED:
        g->granted = 1;
        g->s.attempt = 0;
        g->reattach_until = 0;
        g->st.position = 0;
        copy_str(g->st.lease_id, sizeof(g->st.lease_id), m->granted->lease_id);
        copy_str(g->st.device_uuid, sizeof(g->st.device_uuid), m->granted->device_uuid);
        g->st.device = m->granted->device;
        g->st.expires_ms = m->granted->expires_ms;
        g->st.reattached = m->granted->reattached ? 1 : 0;
        g->st.status = JB_OK;
        jb_error_clear(&g->st.err);
        return JB_CLIENT_GPU_GRANTED;
    case JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_KEEPALIVE:
        g->st.expires_ms = m->keepalive->expires_ms;
        return JB_CLIENT_GPU_KEEPALIVE;
    case JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_EXPIRING:
        g->st.expires_ms = m->expiring->expires_ms;
        g->st.expiring = 1;
        return JB_CLIENT_GPU_EXPIRING;
    default:
        return 0;
    }
}

/* ---- The AcquireGpu stream --------------------------------------------------- */

static void free_handle(jb_client_gpu *g)
{
    pthread_cond_destroy(&g->cv);
    free(g->component);
    free(g->reason);
    free(g);
}

/* Unlinks and frees @g if nothing refers to it any more; c->mu held. Returns 1 if freed. */
static int maybe_free_locked(jb_client_gpu *g)
{
    if (!g->freed || g->ops > 0 || g->pending > 0 || g->in_callback || g->free_waiting ||
        g->s.call != NULL)
        return 0;
    jb_client *c = g->c;
    for (jb_client_gpu **pp = &c->gpus; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    free_handle(g);
    return 1;
}

static void post_recv_locked(jb_client_gpu *g)
{
    if (!g->freed)
        jb__stream_post_recv(&g->s);
}

/* Starts an AcquireGpu stream (a re-attach once granted); c->mu held, !c->closing. */
static void stream_start_locked(jb_client_gpu *g, const char *lease_id)
{
    Jimbot__Infra__V1__AcquireGpuRequest r = JIMBOT__INFRA__V1__ACQUIRE_GPU_REQUEST__INIT;
    r.component = g->component;
    r.priority = g->priority;
    r.duration_seconds = g->duration_seconds;
    r.reason = g->reason;
    r.pid = g->pid;
    r.lease_id = (char *)(lease_id != NULL ? lease_id : "");
    size_t len;
    uint8_t *buf = jb__client_pack(&r.base, &len);
    jb__stream_start(&g->s, -1, M_ACQUIRE_GPU, buf, len);
    free(buf);
    post_recv_locked(g);
}

static void retry_fire(jb__alarm *a)
{
    jb_client_gpu *g = JB__CONTAINER_OF(a, jb_client_gpu, s.retry);
    jb_client *c = g->c;
    pthread_mutex_lock(&c->mu);
    g->ops--;
    if (maybe_free_locked(g)) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    jb_error err;
    if (g->freed || g->ended) {
        /* Nothing to do: freed, or ended meanwhile. */
    } else if (c->closing) {
        jb_error_set(&err, JB_ECLOSED, "AcquireGpu: the client is closing");
        end_locked(g, JB_ECLOSED, &err, 0);
    } else if (g->released) {
        end_locked(g, JB_OK, NULL, 0);
    } else {
        stream_start_locked(g, g->st.lease_id);
    }
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

/*
 * A granted lease's stream broke with @code: re-attach after the backoff
 * while reattach_ms lasts. Returns 0 when it will not (the caller ends the
 * lease). c->mu held.
 */
static int maybe_reattach_locked(jb_client_gpu *g, grpc_status_code code, const jb_error *why)
{
    jb_client *c = g->c;
    int transient = code == GRPC_STATUS_UNAVAILABLE ||
                    (code == GRPC_STATUS_ALREADY_EXISTS && g->reattach_until != 0);
    if (!g->granted || g->reattach_ms == 0 || g->releasing || !transient)
        return 0;
    int64_t now = jb__client_now_ms();
    if (g->reattach_until == 0) {
        g->reattach_until = now + g->reattach_ms;
        g->st.status = why->code;
        g->st.err = *why;
        emit_locked(g, JB_CLIENT_GPU_DETACHED);
        /* The callback ran without c->mu: the handle or the client may be going. */
        if (g->freed)
            return 1;
        if (c->closing) {
            jb_error closing;
            jb_error_set(&closing, JB_ECLOSED, "AcquireGpu: the client is closing");
            end_locked(g, JB_ECLOSED, &closing, 0);
            return 1;
        }
    }
    if (now >= g->reattach_until)
        return 0;
    jb__stream_retry(&g->s, retry_fire, g->reattach_until);
    return 1;
}

/* The end of one stream, with what its status says; c->mu held. */
static void stream_over_locked(jb_client_gpu *g)
{
    jb_client *c = g->c;
    grpc_status_code code;
    jb_status st;
    jb_error err;
    uint32_t hint;
    if (!jb__stream_over(&g->s, &code, &st, &err, &hint))
        return;
    if (g->freed || g->ended)
        return;
    if (c->closing) {
        jb_error_set(&err, JB_ECLOSED, "AcquireGpu: the client is closing");
        end_locked(g, JB_ECLOSED, &err, 0);
    } else if (g->released || code == GRPC_STATUS_OK) {
        end_locked(g, JB_OK, NULL, 0);
    } else if (code == GRPC_STATUS_DEADLINE_EXCEEDED) {
        err.code = JB_ELEASE_EXPIRED;
        end_locked(g, JB_ELEASE_EXPIRED, &err, 0);
    } else if (!maybe_reattach_locked(g, code, &err)) {
        if (g->reattach_until != 0 && st == JB_EUNAVAILABLE) {
            jb_error why = err;
            jb_error_set(&err, st, "%s (gave up re-attaching lease %s after %u ms)", why.message,
                         g->st.lease_id, g->reattach_ms);
        }
        end_locked(g, st, &err, hint);
    }
}

static void on_start(jb__tag *tag, int ok)
{
    (void)ok;
    jb_client_gpu *g = JB__CONTAINER_OF(tag, jb_client_gpu, s.t_start);
    jb_client *c = g->c;
    pthread_mutex_lock(&c->mu);
    g->ops--;
    jb__stream_sent(&g->s);
    stream_over_locked(g);
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

static void on_status(jb__tag *tag, int ok)
{
    (void)ok;
    jb_client_gpu *g = JB__CONTAINER_OF(tag, jb_client_gpu, s.t_status);
    jb_client *c = g->c;
    pthread_mutex_lock(&c->mu);
    g->ops--;
    g->s.status_done = 1;
    stream_over_locked(g);
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

static Jimbot__Infra__V1__GpuLeaseEvent *read_event(grpc_byte_buffer *bb)
{
    size_t len;
    uint8_t *bytes = jb__client_read_all(bb, &len);
    if (bytes == NULL)
        return NULL;
    Jimbot__Infra__V1__GpuLeaseEvent *m =
        jimbot__infra__v1__gpu_lease_event__unpack(NULL, len, bytes);
    free(bytes);
    return m;
}

static void on_recv(jb__tag *tag, int ok)
{
    jb_client_gpu *g = JB__CONTAINER_OF(tag, jb_client_gpu, s.t_recv);
    jb_client *c = g->c;
    pthread_mutex_lock(&c->mu);
    g->ops--;
    grpc_byte_buffer *bb = jb__stream_take_recv(&g->s);
    if (ok && bb != NULL) {
        Jimbot__Infra__V1__GpuLeaseEvent *m = read_event(bb);
        if (m == NULL) {
            /* A server bug: end this stream (its status then ends the lease). */
            if (g->s.call != NULL)
                grpc_call_cancel_with_status(g->s.call, GRPC_STATUS_INTERNAL,
                                             "malformed GpuLeaseEvent", NULL);
        } else {
            jb_client_gpu_kind kind = apply_event_locked(g, m);
            jimbot__infra__v1__gpu_lease_event__free_unpacked(m, NULL);
            if (kind != 0 && !g->ended)
                emit_locked(g, kind);
            post_recv_locked(g);
        }
    }
    if (bb != NULL)
        grpc_byte_buffer_destroy(bb);
    stream_over_locked(g);
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

/* ---- Lease functions ---------------------------------------------------------- */

jb_status jb_client_gpu_acquire_async(jb_client *c, const jb_client_gpu_options *opts,
                                      jb_client_gpu_fn cb, void *userdata, jb_client_gpu **out,
                                      jb_error *err)
{
    if (opts == NULL || opts->component == NULL || opts->component[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "AcquireGpu: no component");
    if (opts->lease_id != NULL && strlen(opts->lease_id) >= JB_CLIENT_LEASE_ID_MAX)
        return jb_error_set(err, JB_EINVAL, "AcquireGpu: lease id longer than %d bytes",
                            JB_CLIENT_LEASE_ID_MAX - 1);
    jb_client_gpu *g = jb__xcalloc(1, sizeof(*g));
    g->c = c;
    g->component = strdup(opts->component);
    g->reason = strdup(opts->reason != NULL ? opts->reason : "");
    if (g->component == NULL || g->reason == NULL)
        JB_BUG("out of memory starting AcquireGpu");
    g->priority = opts->priority;
    g->duration_seconds = opts->duration_seconds;
    g->pid = opts->pid;
    g->reattach_ms = opts->reattach_ms;
    g->cb = cb;
    g->userdata = userdata;
    pthread_cond_init(&g->cv, NULL);
    jb__stream_init(&g->s, c, "AcquireGpu", &g->ops, on_start, on_recv, on_status);
    const char *lease_id = opts->lease_id;
    if (lease_id != NULL && lease_id[0] != '\0') {
        /* A re-attach: treated as granted, so that a break re-attaches again. */
        copy_str(g->st.lease_id, sizeof(g->st.lease_id), lease_id);
        g->granted = 1;
    }
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        free_handle(g);
        return jb_error_set(err, JB_ECLOSED, "the client is closing");
    }
    stream_start_locked(g, lease_id);
    g->next = c->gpus;
    c->gpus = g;
    pthread_mutex_unlock(&c->mu);
    *out = g;
    return JB_OK;
}

static int clamp_ms(int64_t ms)
{
    return ms > INT_MAX ? INT_MAX : ms < 0 ? 0 : (int)ms;
}

jb_status jb_client_gpu_acquire(jb_client *c, const jb_client_gpu_options *opts,
                                uint32_t timeout_ms, jb_client_gpu **out, jb_error *err)
{
    jb_status st = jb__client_refuse_on_thread(c, "AcquireGpu", err);
    if (st != JB_OK)
        return st;
    jb_client_gpu *g;
    if ((st = jb_client_gpu_acquire_async(c, opts, NULL, NULL, &g, err)) != JB_OK)
        return st;
    int64_t until = jb__client_now_ms() + timeout_ms;
    for (;;) {
        int wait = timeout_ms == 0 ? -1 : clamp_ms(until - jb__client_now_ms());
        jb_client_gpu_event ev;
        if (jb_client_gpu_wait(g, wait, &ev, NULL) == JB_ETIMEDOUT) {
            jb_client_gpu_state(g, &ev);
            jb_client_gpu_free(g);
            return jb_error_set(err, JB_ETIMEDOUT,
                                "AcquireGpu: no GPU granted within %u ms (position %u)", timeout_ms,
                                ev.position);
        }
        if (ev.kind == JB_CLIENT_GPU_GRANTED) {
            *out = g;
            return JB_OK;
        }
        if (ev.kind == JB_CLIENT_GPU_ENDED) {
            jb_client_gpu_free(g);
            if (err != NULL)
                *err = ev.err;
            return ev.status;
        }
    }
}

jb_status jb_client_gpu_wait(jb_client_gpu *g, int timeout_ms, jb_client_gpu_event *ev,
                             jb_error *err)
{
    if (g->cb != NULL)
        return jb_error_set(err, JB_EINVAL, "gpu_wait: the lease has a callback");
    jb_client *c = g->c;
    struct timespec until = jb__client_realtime_in(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (g->q_len > 0) {
            *ev = g->q[g->q_head];
            g->q_head = (g->q_head + 1) % QUEUE_MAX;
            g->q_len--;
            if (ev->kind == JB_CLIENT_GPU_ENDED)
                g->end_taken = 1;
            pthread_mutex_unlock(&c->mu);
            return JB_OK;
        }
        if (g->end_taken || g->ended) {
            *ev = g->st;
            ev->kind = JB_CLIENT_GPU_ENDED;
            g->end_taken = 1;
            pthread_mutex_unlock(&c->mu);
            return JB_OK;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&g->cv, &c->mu);
        else if (pthread_cond_timedwait(&g->cv, &c->mu, &until) != 0 && g->q_len == 0 && !g->ended)
            break;
    }
    pthread_mutex_unlock(&c->mu);
    return jb_error_set(err, JB_ETIMEDOUT, "gpu_wait: no event within %d ms", timeout_ms);
}

void jb_client_gpu_state(const jb_client_gpu *g, jb_client_gpu_event *out)
{
    pthread_mutex_lock(&g->c->mu);
    *out = g->st;
    pthread_mutex_unlock(&g->c->mu);
}

static jb_status parse_release(const uint8_t *resp, size_t len, jb_client_gpu_release_info *info,
                               jb_error *err)
{
    Jimbot__Infra__V1__ReleaseGpuResponse *r =
        jimbot__infra__v1__release_gpu_response__unpack(NULL, len, resp);
    if (r == NULL)
        return jb_error_set(err, JB_EPARSE, "ReleaseGpu: malformed response (%zu bytes)", len);
    info->held_ms = r->held_ms;
    info->device = r->device;
    info->memory_held_bytes = r->memory_held_bytes;
    jimbot__infra__v1__release_gpu_response__free_unpacked(r, NULL);
    return JB_OK;
}

static uint8_t *pack_release(const char *lease_id, size_t *len)
{
    Jimbot__Infra__V1__ReleaseGpuRequest r = JIMBOT__INFRA__V1__RELEASE_GPU_REQUEST__INIT;
    r.lease_id = (char *)lease_id;
    return jb__client_pack(&r.base, len);
}

jb_status jb_client_gpu_release_id(jb_client *c, const char *lease_id,
                                   jb_client_gpu_release_info *info, jb_error *err)
{
    jb_client_gpu_release_info tmp;
    if (info == NULL)
        info = &tmp;
    memset(info, 0, sizeof(*info));
    if (lease_id == NULL || lease_id[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "ReleaseGpu: no lease id");
    size_t len, resp_len = 0;
    uint8_t *req = pack_release(lease_id, &len), *resp = NULL;
    jb_status st = jb__client_unary_call(c, M_RELEASE_GPU, req, len, 0, &resp, &resp_len, err);
    free(req);
    if (st == JB_OK)
        st = parse_release(resp, resp_len, info, err);
    free(resp);
    return st;
}

/* Waits until @g has ended, at most @ms; 1 if it did. */
static int wait_end(jb_client_gpu *g, uint32_t ms)
{
    jb_client *c = g->c;
    struct timespec until = jb__client_realtime_in(ms);
    pthread_mutex_lock(&c->mu);
    while (!g->ended) {
        if (pthread_cond_timedwait(&g->cv, &c->mu, &until) != 0)
            break;
    }
    int ended = g->ended;
    if (!ended)
        jb__stream_cancel(&g->s);
    pthread_mutex_unlock(&c->mu);
    return ended;
}

jb_status jb_client_gpu_release(jb_client_gpu *g, jb_client_gpu_release_info *info, jb_error *err)
{
    jb_client *c = g->c;
    jb_status st = jb__client_refuse_on_thread(c, "ReleaseGpu", err);
    if (st != JB_OK)
        return st;
    jb_client_gpu_release_info tmp;
    if (info == NULL)
        info = &tmp;
    memset(info, 0, sizeof(*info));
    char lease_id[JB_CLIENT_LEASE_ID_MAX];
    pthread_mutex_lock(&c->mu);
    int ended = g->ended, granted = g->granted;
    copy_str(lease_id, sizeof(lease_id), g->st.lease_id);
    if (!ended) {
        g->releasing = 1;
        if (!granted)
            jb__stream_cancel(&g->s); /* leave the queue */
    }
    pthread_mutex_unlock(&c->mu);
    if (ended)
        return JB_OK;
    if (granted) {
        st = jb_client_gpu_release_id(c, lease_id, info, err);
        pthread_mutex_lock(&c->mu);
        if (st == JB_OK)
            g->released = 1;
        else
            g->releasing = 0;
        pthread_mutex_unlock(&c->mu);
        if (st != JB_OK)
            return st;
    }
    wait_end(g, c->opts.deadline_ms);
    return JB_OK;
}

typedef struct release_call {
    jb_client_gpu *g;
    jb_client_gpu_release_cb cb;
    void *userdata;
} release_call;

static void release_async_done(jb_client *c, jb_status status, const jb_error *err,
                               const uint8_t *response, size_t len, uint32_t retry_after_ms,
                               void *userdata)
{
    (void)retry_after_ms;
    release_call *r = userdata;
    jb_client_gpu *g = r->g;
    jb_client_gpu_release_info info;
    memset(&info, 0, sizeof(info));
    jb_error perr;
    if (status == JB_OK && (status = parse_release(response, len, &info, &perr)) != JB_OK)
        err = &perr;
    pthread_mutex_lock(&c->mu);
    if (status == JB_OK)
        g->released = 1;
    else
        g->releasing = 0;
    pthread_mutex_unlock(&c->mu);
    if (r->cb != NULL)
        r->cb(status, status == JB_OK ? &info : NULL, status == JB_OK ? NULL : err, r->userdata);
    free(r);
    /* The call counted in g->pending, so that the handle may be freed before it ends. */
    pthread_mutex_lock(&c->mu);
    g->pending--;
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

static void notify_fire(jb__alarm *a)
{
    jb_client_gpu *g = JB__CONTAINER_OF(a, jb_client_gpu, notify);
    jb_client *c = g->c;
    jb_client_gpu_release_info info;
    memset(&info, 0, sizeof(info));
    pthread_mutex_lock(&c->mu);
    jb_client_gpu_release_cb cb = g->notify_cb;
    void *ud = g->notify_ud;
    g->notify_cb = NULL;
    pthread_mutex_unlock(&c->mu);
    if (cb != NULL)
        cb(JB_OK, &info, NULL, ud);
    pthread_mutex_lock(&c->mu);
    g->pending--;
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

jb_status jb_client_gpu_release_async(jb_client_gpu *g, jb_client_gpu_release_cb cb, void *userdata,
                                      jb_error *err)
{
    jb_client *c = g->c;
    char lease_id[JB_CLIENT_LEASE_ID_MAX];
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return jb_error_set(err, JB_ECLOSED, "the client is closing");
    }
    if (g->ended || !g->granted) {
        if (g->notify_cb != NULL) {
            pthread_mutex_unlock(&c->mu);
            return jb_error_set(err, JB_EINVAL, "ReleaseGpu: a release is already under way");
        }
        if (!g->ended) {
            g->releasing = 1;
            jb__stream_cancel(&g->s);
        }
        g->notify_cb = cb;
        g->notify_ud = userdata;
        g->notify.fire = notify_fire;
        g->pending++;
        jb__client_alarm_arm(c, &g->notify, jb__client_now_ms());
        pthread_mutex_unlock(&c->mu);
        return JB_OK;
    }
    g->releasing = 1;
    g->pending++;
    copy_str(lease_id, sizeof(lease_id), g->st.lease_id);
    pthread_mutex_unlock(&c->mu);
    release_call *r = jb__xmalloc(sizeof(*r));
    *r = (release_call){.g = g, .cb = cb, .userdata = userdata};
    size_t len;
    uint8_t *req = pack_release(lease_id, &len);
    jb_status st =
        jb__client_unary_start(c, M_RELEASE_GPU, req, len, 0, release_async_done, r, err);
    free(req);
    if (st != JB_OK) {
        free(r);
        pthread_mutex_lock(&c->mu);
        g->releasing = 0;
        g->pending--;
        pthread_mutex_unlock(&c->mu);
    }
    return st;
}

void jb_client_gpu_free(jb_client_gpu *g)
{
    if (g == NULL)
        return;
    jb_client *c = g->c;
    pthread_mutex_lock(&c->mu);
    g->freed = 1;
    jb__stream_cancel(&g->s);
    if (!jb__client_on_thread(c)) {
        g->free_waiting = 1;
        while (g->in_callback)
            pthread_cond_wait(&g->cv, &c->mu);
        g->free_waiting = 0;
    }
    maybe_free_locked(g);
    pthread_mutex_unlock(&c->mu);
}

void jb__client_gpus_cancel_all(jb_client *c)
{
    for (jb_client_gpu *g = c->gpus; g != NULL; g = g->next)
        jb__stream_cancel(&g->s);
}

void jb__client_gpus_free_all(jb_client *c)
{
    while (c->gpus != NULL) {
        jb_client_gpu *g = c->gpus;
        c->gpus = g->next;
        free_handle(g);
    }
}

/* ---- The API budget ------------------------------------------------------------ */

static jb_status pack_quota(const jb_client_quota_request *q, uint8_t **buf, size_t *len,
                            jb_error *err)
{
    if (q == NULL || q->component == NULL || q->component[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "AcquireApiQuota: no component");
    Jimbot__Infra__V1__AcquireApiQuotaRequest r =
        JIMBOT__INFRA__V1__ACQUIRE_API_QUOTA_REQUEST__INIT;
    r.component = (char *)q->component;
    r.count = q->count;
    r.wait_ms = q->wait_ms;
    r.priority = q->priority;
    *buf = jb__client_pack(&r.base, len);
    return JB_OK;
}

static jb_status parse_quota(const uint8_t *resp, size_t len, jb_client_quota *out, jb_error *err)
{
    Jimbot__Infra__V1__AcquireApiQuotaResponse *r =
        jimbot__infra__v1__acquire_api_quota_response__unpack(NULL, len, resp);
    if (r == NULL)
        return jb_error_set(err, JB_EPARSE, "AcquireApiQuota: malformed response (%zu bytes)", len);
    out->granted = r->granted ? 1 : 0;
    out->remaining = r->remaining;
    out->retry_after_ms = r->retry_after_ms;
    out->limit = r->limit;
    jimbot__infra__v1__acquire_api_quota_response__free_unpacked(r, NULL);
    return JB_OK;
}

jb_status jb_client_quota_acquire(jb_client *c, const jb_client_quota_request *req,
                                  jb_client_quota *out, jb_error *err)
{
    uint8_t *buf, *resp = NULL;
    size_t len, resp_len = 0;
    jb_status st = pack_quota(req, &buf, &len, err);
    if (st != JB_OK)
        return st;
    memset(out, 0, sizeof(*out));
    st = jb__client_unary_call(c, M_QUOTA, buf, len, req->wait_ms, &resp, &resp_len, err);
    free(buf);
    if (st == JB_OK)
        st = parse_quota(resp, resp_len, out, err);
    free(resp);
    return st;
}

typedef struct quota_call {
    jb_client_quota_cb cb;
    void *userdata;
} quota_call;

static void quota_done(jb_client *c, jb_status status, const jb_error *err, const uint8_t *response,
                       size_t len, uint32_t retry_after_ms, void *userdata)
{
    (void)c;
    (void)retry_after_ms;
    quota_call *q = userdata;
    jb_client_quota out;
    memset(&out, 0, sizeof(out));
    jb_error perr;
    if (status == JB_OK && (status = parse_quota(response, len, &out, &perr)) != JB_OK)
        err = &perr;
    q->cb(status, status == JB_OK ? &out : NULL, status == JB_OK ? NULL : err, q->userdata);
    free(q);
}

jb_status jb_client_quota_acquire_async(jb_client *c, const jb_client_quota_request *req,
                                        jb_client_quota_cb cb, void *userdata, jb_error *err)
{
    if (cb == NULL)
        return jb_error_set(err, JB_EINVAL, "AcquireApiQuota: no callback");
    uint8_t *buf;
    size_t len;
    jb_status st = pack_quota(req, &buf, &len, err);
    if (st != JB_OK)
        return st;
    quota_call *q = jb__xmalloc(sizeof(*q));
    *q = (quota_call){.cb = cb, .userdata = userdata};
    st = jb__client_unary_start(c, M_QUOTA, buf, len, req->wait_ms, quota_done, q, err);
    free(buf);
    if (st != JB_OK)
        free(q);
    return st;
}

/* ---- Resource status ----------------------------------------------------------- */

typedef struct status_impl {
    jb_client_resource_status pub;
    Jimbot__Infra__V1__ResourceStatus *msg;
    uint8_t *bytes;
    jb_client_gpu_device *gpus;
    jb_client_gpu_waiter *waiters;
    jb_client_quota_component *components;
    jb_client_queue_depth *queues;
    jb_client_queue_status *request_queues;
    jb_client_breaker *breakers;
    jb_client_redis_component *redis;
} status_impl;

static void *array(size_t n, size_t size)
{
    return jb__xcalloc(n > 0 ? n : 1, size);
}

static void fill_gpus(status_impl *s, const Jimbot__Infra__V1__ResourceStatus *m)
{
    s->gpus = array(m->n_gpus, sizeof(*s->gpus));
    for (size_t i = 0; i < m->n_gpus; i++) {
        const Jimbot__Infra__V1__GpuDeviceStatus *d = m->gpus[i];
        s->gpus[i] = (jb_client_gpu_device){
            .index = d->index,
            .name = d->name,
            .uuid = d->uuid,
            .available = d->available ? 1 : 0,
            .holder = d->holder,
            .lease_id = d->lease_id,
            .reason = d->reason,
            .expires_ms = d->expires_ms,
            .granted_ms = d->granted_ms,
            .holder_pid = d->holder_pid,
            .memory_total_bytes = d->memory_total_bytes,
            .memory_used_bytes = d->memory_used_bytes,
            .releasing = d->releasing ? 1 : 0,
            .restored = d->restored ? 1 : 0,
        };
    }
    s->waiters = array(m->n_gpu_waiters, sizeof(*s->waiters));
    for (size_t i = 0; i < m->n_gpu_waiters; i++) {
        const Jimbot__Infra__V1__GpuWaiter *w = m->gpu_waiters[i];
        s->waiters[i] = (jb_client_gpu_waiter){.position = w->position,
                                               .component = w->component,
                                               .priority = w->priority,
                                               .since_ms = w->since_ms,
                                               .reason = w->reason};
    }
    s->pub.gpu_available = m->gpu_available ? 1 : 0;
    s->pub.gpu_source = m->gpu_source;
    s->pub.gpus = s->gpus;
    s->pub.n_gpus = m->n_gpus;
    s->pub.gpu_waiters = s->waiters;
    s->pub.n_gpu_waiters = m->n_gpu_waiters;
}

static void fill_rest(status_impl *s, const Jimbot__Infra__V1__ResourceStatus *m)
{
    s->components = array(m->n_claude_components, sizeof(*s->components));
    for (size_t i = 0; i < m->n_claude_components; i++) {
        const Jimbot__Infra__V1__ApiQuotaComponent *q = m->claude_components[i];
        s->components[i] = (jb_client_quota_component){
            .component = q->component, .used = q->used, .share = q->share};
    }
    s->queues = array(m->n_queue_depths, sizeof(*s->queues));
    for (size_t i = 0; i < m->n_queue_depths; i++)
        s->queues[i] = (jb_client_queue_depth){.queue = m->queue_depths[i]->key,
                                               .depth = m->queue_depths[i]->value};
    s->request_queues = array(m->n_queues, sizeof(*s->request_queues));
    for (size_t i = 0; i < m->n_queues; i++) {
        const Jimbot__Infra__V1__QueueStatus *q = m->queues[i];
        s->request_queues[i] = (jb_client_queue_status){.name = q->name,
                                                        .budget = q->budget,
                                                        .max_depth = q->max_depth,
                                                        .depth = q->depth,
                                                        .in_flight = q->in_flight,
                                                        .workers = q->workers,
                                                        .oldest_wait_ms = q->oldest_wait_ms,
                                                        .submitted = q->submitted,
                                                        .cache_hits = q->cache_hits,
                                                        .coalesced = q->coalesced,
                                                        .poisoned = q->poisoned,
                                                        .cache_bytes = q->cache_bytes,
                                                        .cache_entries = q->cache_entries};
    }
    s->breakers = array(m->n_breakers, sizeof(*s->breakers));
    for (size_t i = 0; i < m->n_breakers; i++) {
        const Jimbot__Infra__V1__BreakerStatus *b = m->breakers[i];
        s->breakers[i] = (jb_client_breaker){.name = b->name,
                                             .state = (jb_client_breaker_state)b->state,
                                             .failures = b->failures,
                                             .retry_at_ms = b->retry_at_ms};
    }
    jb_client_resource_status *p = &s->pub;
    p->budget_limit = m->claude_hourly_limit;
    p->budget_used = m->claude_requests_used;
    p->budget_remaining = m->claude_requests_remaining;
    p->budget_waiting = m->claude_waiting;
    p->budget_window_seconds = m->claude_window_seconds;
    p->budget_next_slot_ms = m->claude_next_slot_ms;
    p->budget_components = s->components;
    p->n_budget_components = m->n_claude_components;
    p->queues = s->queues;
    p->n_queues = m->n_queue_depths;
    p->request_queues = s->request_queues;
    p->n_request_queues = m->n_queues;
    p->breakers = s->breakers;
    p->n_breakers = m->n_breakers;
}

/* The shared Redis; an absent RedisStatus (an older jimbotd) reads as not configured. */
static void fill_redis(status_impl *s, const Jimbot__Infra__V1__ResourceStatus *m)
{
    static const Jimbot__Infra__V1__RedisStatus none = JIMBOT__INFRA__V1__REDIS_STATUS__INIT;
    const Jimbot__Infra__V1__RedisStatus *r = m->redis != NULL ? m->redis : &none;
    s->redis = array(r->n_components, sizeof(*s->redis));
    for (size_t i = 0; i < r->n_components; i++) {
        const Jimbot__Infra__V1__RedisComponentStatus *c = r->components[i];
        s->redis[i] = (jb_client_redis_component){.component = c->component,
                                                  .username = c->username,
                                                  .key_prefix = c->key_prefix,
                                                  .connections = c->connections,
                                                  .allowance = c->allowance,
                                                  .connections_closed = c->connections_closed};
    }
    s->pub.redis = (jb_client_redis_status){.configured = r->configured ? 1 : 0,
                                            .url = r->url,
                                            .reachable = r->reachable ? 1 : 0,
                                            .error = r->error,
                                            .checked_ms = r->checked_ms,
                                            .connections = r->connections,
                                            .max_connections = r->max_connections,
                                            .components = s->redis,
                                            .n_components = r->n_components};
}

jb_status jb_client_resource_status_decode(const void *data, size_t len,
                                           jb_client_resource_status **out, jb_error *err)
{
    Jimbot__Infra__V1__ResourceStatus *m =
        jimbot__infra__v1__resource_status__unpack(NULL, len, data);
    if (m == NULL)
        return jb_error_set(err, JB_EPARSE, "GetResourceStatus: malformed response (%zu bytes)",
                            len);
    status_impl *s = jb__xcalloc(1, sizeof(*s));
    s->msg = m;
    s->bytes = jb__xmalloc(len + 1);
    if (len > 0)
        memcpy(s->bytes, data, len);
    s->pub.encoded = s->bytes;
    s->pub.encoded_len = len;
    fill_gpus(s, m);
    fill_rest(s, m);
    fill_redis(s, m);
    *out = &s->pub;
    return JB_OK;
}

void jb_client_resource_status_free(jb_client_resource_status *st)
{
    if (st == NULL)
        return;
    status_impl *s = (status_impl *)st;
    jimbot__infra__v1__resource_status__free_unpacked(s->msg, NULL);
    free(s->bytes);
    free(s->gpus);
    free(s->waiters);
    free(s->components);
    free(s->queues);
    free(s->request_queues);
    free(s->breakers);
    free(s->redis);
    free(s);
}

jb_status jb_client_resource_status_get(jb_client *c, jb_client_resource_status **out,
                                        jb_error *err)
{
    uint8_t *resp = NULL;
    size_t len = 0;
    jb_status st = jb__client_unary_call(c, M_STATUS, "", 0, 0, &resp, &len, err);
    if (st == JB_OK)
        st = jb_client_resource_status_decode(resp, len, out, err);
    free(resp);
    return st;
}

typedef struct status_call {
    jb_client_resource_status_cb cb;
    void *userdata;
} status_call;

static void status_done(jb_client *c, jb_status status, const jb_error *err,
                        const uint8_t *response, size_t len, uint32_t retry_after_ms,
                        void *userdata)
{
    (void)c;
    (void)retry_after_ms;
    status_call *s = userdata;
    jb_client_resource_status *out = NULL;
    jb_error perr;
    if (status == JB_OK &&
        (status = jb_client_resource_status_decode(response, len, &out, &perr)) != JB_OK)
        err = &perr;
    s->cb(status, out, status == JB_OK ? NULL : err, s->userdata);
    free(s);
}

jb_status jb_client_resource_status_get_async(jb_client *c, jb_client_resource_status_cb cb,
                                              void *userdata, jb_error *err)
{
    if (cb == NULL)
        return jb_error_set(err, JB_EINVAL, "GetResourceStatus: no callback");
    status_call *s = jb__xmalloc(sizeof(*s));
    *s = (status_call){.cb = cb, .userdata = userdata};
    jb_status st = jb__client_unary_start(c, M_STATUS, "", 0, 0, status_done, s, err);
    if (st != JB_OK)
        free(s);
    return st;
}
