/*
 * jimbot.infra.v1.Infrastructure over the resource coordinator (jb_coord,
 * docs/coordinator.md): GetResourceStatus, AcquireGpu, ReleaseGpu and
 * AcquireApiQuota. server.c owns the calls' life; this file turns requests
 * into coordinator calls and the coordinator's events into stream messages
 * and status codes. The request queue (SubmitRequest, TakeRequests,
 * Respond) is services_queue.c's.
 *
 * Invariants:
 *   - A request is decoded and checked before it reaches the coordinator;
 *     what the coordinator refuses (empty component, unknown lease) changes
 *     nothing there, so it changes nothing at all.
 *   - An AcquireGpu stream owns at most one jb_gpu_lease. The client ending
 *     the stream (or vanishing) cancels it: a waiter leaves the queue, a
 *     holder's device is released at once. At shutdown the stream ends
 *     UNAVAILABLE but the lease is detached, not released: the daemon saves
 *     it and its holder re-attaches (AcquireGpu with lease_id) after the
 *     restart. The lease's ENDED event ends the stream: OK after ReleaseGpu,
 *     DEADLINE_EXCEEDED "lease expired", UNAVAILABLE when the coordinator
 *     closed.
 *   - An AcquireApiQuota that waits holds a jb_quota_wait until its answer;
 *     a client that goes away (or a shutdown) withdraws it, and the answer
 *     callback never runs on a freed call. Its wait is cut to the call's
 *     deadline, so the client gets "not granted" rather than
 *     DEADLINE_EXCEEDED.
 *
 * Runs on the loop thread only.
 */
#include "rpc/server_internal.h"

#include "jimbot/infra/v1/infrastructure.pb-c.h"
#include "jimbot/log.h"

#include <stdlib.h>
#include <string.h>

#define SHUTTING_DOWN "shutting down"
/* Deadline margin kept for the answer of a waiting AcquireApiQuota. */
#define ANSWER_MARGIN_MS 200
/* The longest wait_ms honoured. */
#define MAX_QUOTA_WAIT_MS (3600u * 1000)

/* ---- AcquireGpu --------------------------------------------------------------- */

typedef struct gpu_state {
    jb_gpu_lease *lease;
} gpu_state;

static void gpu_send_event(jb__call *c, const jb_gpu_event *ev)
{
    Jimbot__Infra__V1__GpuLeaseEvent out = JIMBOT__INFRA__V1__GPU_LEASE_EVENT__INIT;
    Jimbot__Infra__V1__GpuQueued q = JIMBOT__INFRA__V1__GPU_QUEUED__INIT;
    Jimbot__Infra__V1__GpuGrant g = JIMBOT__INFRA__V1__GPU_GRANT__INIT;
    Jimbot__Infra__V1__GpuKeepalive k = JIMBOT__INFRA__V1__GPU_KEEPALIVE__INIT;
    Jimbot__Infra__V1__GpuExpiring e = JIMBOT__INFRA__V1__GPU_EXPIRING__INIT;
    switch (ev->kind) {
    case JB_GPU_QUEUED:
        q.position = ev->position;
        out.event_case = JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_QUEUED;
        out.queued = &q;
        break;
    case JB_GPU_GRANTED:
        g.lease_id = (char *)ev->lease_id;
        g.expires_ms = ev->expires_ms;
        g.device = ev->device;
        g.device_uuid = (char *)(ev->device_uuid != NULL ? ev->device_uuid : "");
        g.reattached = ev->reattached != 0;
        out.event_case = JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_GRANTED;
        out.granted = &g;
        break;
    case JB_GPU_KEEPALIVE:
        k.expires_ms = ev->expires_ms;
        out.event_case = JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_KEEPALIVE;
        out.keepalive = &k;
        break;
    case JB_GPU_EXPIRING:
        e.expires_ms = ev->expires_ms;
        out.event_case = JIMBOT__INFRA__V1__GPU_LEASE_EVENT__EVENT_EXPIRING;
        out.expiring = &e;
        break;
    case JB_GPU_ENDED:
        return;
    }
    /* A lease stream sends a few small messages a minute: its queue cannot
     * fill unless the client stopped reading, and then the keepalive tells. */
    (void)jb__call_send_message(c, &out.base);
}

static void on_gpu_event(jb_gpu_lease *lease, const jb_gpu_event *ev, void *userdata)
{
    jb__call *c = userdata;
    gpu_state *s = c->state;
    (void)lease;
    if (ev->kind != JB_GPU_ENDED) {
        gpu_send_event(c, ev);
        return;
    }
    /* The handle is the engine's to free once this returns. */
    s->lease = NULL;
    switch (ev->status) {
    case JB_OK:
        jb__call_end(c, GRPC_STATUS_OK, NULL, 0);
        break;
    case JB_ELEASE_EXPIRED:
        jb__call_end(c, GRPC_STATUS_DEADLINE_EXCEEDED, "lease expired", 0);
        break;
    case JB_ECLOSED:
        jb__call_end(c, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 0);
        break;
    default:
        jb__call_end(c, jb__grpc_code(ev->status), jb_strerror(ev->status), 0);
        break;
    }
}

void jb__acquire_gpu_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    Jimbot__Infra__V1__AcquireGpuRequest *req =
        (Jimbot__Infra__V1__AcquireGpuRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__acquire_gpu_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    gpu_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        return;
    }
    c->state = s;
    jb_gpu_request r = {
        .component = req->component,
        .priority = req->priority,
        .duration_ms =
            req->duration_seconds > UINT32_MAX / 1000 ? UINT32_MAX : req->duration_seconds * 1000,
        .reason = req->reason,
        .pid = req->pid,
        .lease_id = req->lease_id,
    };
    jb_error err;
    jb_status st =
        jb_coord_gpu_acquire(jb__server_coord(c->srv), &r, on_gpu_event, c, &s->lease, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (st != JB_OK) {
        s->lease = NULL;
        jb__call_fail(c, st, err.message, st == JB_EBACKPRESSURE ? 1000 : 0);
        return;
    }
    /* The stream is open for the client even while it waits in the queue. */
    jb__call_send_initial(c, NULL, NULL);
}

void jb__acquire_gpu_closed(jb__call *c)
{
    gpu_state *s = c->state;
    if (s != NULL && s->lease != NULL) {
        jb_coord_gpu_cancel(s->lease);
        s->lease = NULL;
    }
}

void jb__acquire_gpu_drain(jb__call *c)
{
    gpu_state *s = c->state;
    if (s != NULL && s->lease != NULL) {
        /* Kept for its holder to re-attach after the restart. */
        jb_coord_gpu_detach(s->lease);
        s->lease = NULL;
    }
    jb__call_end(c, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 0);
}

void jb__acquire_gpu_release(jb__call *c)
{
    jb__acquire_gpu_closed(c);
    free(c->state);
    c->state = NULL;
}

/* ---- ReleaseGpu --------------------------------------------------------------- */

void jb__release_gpu_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    Jimbot__Infra__V1__ReleaseGpuRequest *req =
        (Jimbot__Infra__V1__ReleaseGpuRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__release_gpu_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    jb_gpu_release_info info = {0};
    jb_error err;
    jb_status st;
    if (req->lease_id[0] == '\0')
        st = jb_error_set(&err, JB_EINVAL, "a lease_id is required");
    else
        st = jb_coord_gpu_release(jb__server_coord(c->srv), req->lease_id, &info, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (st != JB_OK) {
        jb__call_fail(c, st, err.message, 0);
        return;
    }
    Jimbot__Infra__V1__ReleaseGpuResponse resp = JIMBOT__INFRA__V1__RELEASE_GPU_RESPONSE__INIT;
    resp.held_ms = info.held_ms;
    resp.device = info.device;
    resp.memory_held_bytes = info.memory_held_bytes;
    jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
}

/* ---- AcquireApiQuota ---------------------------------------------------------- */

typedef struct quota_state {
    jb_quota_wait *wait;
} quota_state;

static void on_quota(jb_status st, const jb_quota_result *r, const jb_error *err, void *userdata)
{
    jb__call *c = userdata;
    quota_state *s = c->state;
    s->wait = NULL;
    if (st != JB_OK) {
        if (st == JB_ECLOSED)
            jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 1000);
        else
            jb__call_fail(c, st, err != NULL ? err->message : jb_strerror(st), 0);
        return;
    }
    Jimbot__Infra__V1__AcquireApiQuotaResponse resp =
        JIMBOT__INFRA__V1__ACQUIRE_API_QUOTA_RESPONSE__INIT;
    resp.granted = r->granted != 0;
    resp.remaining = r->remaining;
    resp.retry_after_ms = r->retry_after_ms;
    resp.limit = r->limit;
    jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
}

void jb__api_quota_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    Jimbot__Infra__V1__AcquireApiQuotaRequest *req =
        (Jimbot__Infra__V1__AcquireApiQuotaRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__acquire_api_quota_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    quota_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        return;
    }
    c->state = s;
    uint64_t wait = req->wait_ms > MAX_QUOTA_WAIT_MS ? MAX_QUOTA_WAIT_MS : req->wait_ms;
    uint64_t left = jb__call_ms_left(c);
    if (wait > 0 && left != UINT64_MAX)
        wait = left > wait + ANSWER_MARGIN_MS ? wait
               : left > ANSWER_MARGIN_MS      ? left - ANSWER_MARGIN_MS
                                              : 0;
    jb_quota_request r = {
        .component = req->component,
        .count = req->count,
        .wait_ms = (uint32_t)wait,
        .priority = req->priority,
    };
    jb_error err;
    jb_status st =
        jb_coord_quota_acquire(jb__server_coord(c->srv), &r, on_quota, c, &s->wait, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (st != JB_OK) {
        s->wait = NULL;
        jb__call_fail(c, st, err.message, st == JB_EBACKPRESSURE ? 1000 : 0);
    }
}

void jb__api_quota_closed(jb__call *c)
{
    quota_state *s = c->state;
    if (s != NULL && s->wait != NULL) {
        jb_coord_quota_cancel(s->wait);
        s->wait = NULL;
    }
}

void jb__api_quota_drain(jb__call *c)
{
    quota_state *s = c->state;
    if (s == NULL || s->wait == NULL)
        return;
    jb_coord_quota_cancel(s->wait);
    s->wait = NULL;
    jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 1000);
}

void jb__api_quota_release(jb__call *c)
{
    jb__api_quota_closed(c);
    free(c->state);
    c->state = NULL;
}

/* ---- GetRedisAccess ----------------------------------------------------------- */

/* Answers a GetRedisAccess or RotateRedisPassword with @a, or its refusal. */
static void redis_answer(jb__call *c, jb_status st, const jb_redis_access *a, const jb_error *err)
{
    const char *why = err != NULL ? err->message : jb_strerror(st);
    if (st == JB_EUNSUPPORTED) {
        jb__call_finish(c, NULL, GRPC_STATUS_FAILED_PRECONDITION, why, 0);
        return;
    }
    if (st == JB_ECLOSED) {
        jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 1000);
        return;
    }
    if (st != JB_OK) {
        jb__call_fail(c, st, why, st == JB_EUNAVAILABLE ? 1000 : 0);
        return;
    }
    Jimbot__Infra__V1__RedisAccess resp = JIMBOT__INFRA__V1__REDIS_ACCESS__INIT;
    resp.url = (char *)a->url;
    resp.username = (char *)a->username;
    resp.password = (char *)a->password;
    resp.key_prefix = (char *)a->key_prefix;
    resp.max_connections = a->max_connections;
    resp.shared_prefix = (char *)a->shared_prefix;
    resp.shared_access = (char *)(a->shared_access != NULL ? a->shared_access : "none");
    jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
}

/* The request's component, or NULL when the call was answered (bad request). */
static char *redis_component(jb__call *c)
{
    Jimbot__Infra__V1__GetRedisAccessRequest *req =
        (Jimbot__Infra__V1__GetRedisAccessRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__get_redis_access_request__descriptor);
    if (req == NULL)
        return NULL; /* jb__unpack_request() answered */
    char *component = req->component[0] != '\0' ? strdup(req->component) : NULL;
    int empty = req->component[0] == '\0';
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (component == NULL)
        jb__call_fail(c, empty ? JB_EINVAL : JB_ENOMEM,
                      empty ? "a component is required" : "out of memory", 0);
    return component;
}

void jb__redis_access_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    char *component = redis_component(c);
    if (component == NULL)
        return;
    jb_redis_access a;
    jb_error err;
    jb_status st = jb_coord_redis_access(jb__server_coord(c->srv), component, &a, &err);
    free(component);
    redis_answer(c, st, &a, &err);
    if (st == JB_OK)
        explicit_bzero(a.password, sizeof(a.password));
}

typedef struct rotate_state {
    int waiting; /* the engine will call back */
} rotate_state;

static void on_rotated(jb_status st, const jb_redis_access *a, const jb_error *err, void *ud)
{
    jb__call *c = ud;
    ((rotate_state *)c->state)->waiting = 0;
    if (!c->finishing) /* else the drain answered already */
        redis_answer(c, st, a, err);
    jb__call_unhold(c); /* may free c */
}

void jb__redis_rotate_start(jb__call *c)
{
    if (jb__refuse_if_draining(c) || jb__refuse_without_coord(c))
        return;
    rotate_state *s = calloc(1, sizeof(*s));
    char *component = s != NULL ? redis_component(c) : NULL;
    if (component == NULL) {
        if (s == NULL)
            jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        free(s);
        return;
    }
    c->state = s;
    jb_error err;
    /* The engine answers every rotation, at its close too: hold the call until then. */
    jb__call_hold(c);
    s->waiting = 1;
    jb_status st = jb_coord_redis_rotate(jb__server_coord(c->srv), component, on_rotated, c, &err);
    free(component);
    if (st != JB_OK) {
        s->waiting = 0;
        jb__call_unhold(c);
        redis_answer(c, st, NULL, &err);
    }
}

void jb__redis_rotate_drain(jb__call *c)
{
    rotate_state *s = c->state;
    if (s != NULL && s->waiting && !c->finishing)
        jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 1000);
}

void jb__redis_rotate_release(jb__call *c)
{
    free(c->state);
    c->state = NULL;
}

/* ---- GetResourceStatus -------------------------------------------------------- */

/*
 * The response under construction. Every string is copied (the engine's are
 * borrowed only while it is not called again) and freed with the arrays.
 */
typedef struct status_build {
    Jimbot__Infra__V1__ResourceStatus resp;
    Jimbot__Infra__V1__GpuDeviceStatus *gpus;
    Jimbot__Infra__V1__GpuWaiter *waiters;
    Jimbot__Infra__V1__ApiQuotaComponent *comps;
    Jimbot__Infra__V1__ResourceStatus__QueueDepthsEntry *depths;
    Jimbot__Infra__V1__QueueStatus *queues;
    Jimbot__Infra__V1__RedisComponentStatus *redis_comps;
    Jimbot__Infra__V1__RedisStatus redis;
    size_t cap_gpus, cap_waiters, cap_comps, cap_depths, cap_queues, cap_redis;
    char **strings;
    size_t n_strings, cap_strings;
    int oom;
} status_build;

/* Makes room for one more item in the array *@v (of @size bytes each). */
static int grow(status_build *b, void **v, size_t n, size_t *cap, size_t size)
{
    if (b->oom)
        return -1;
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *nv = realloc(*v, ncap * size);
    if (nv == NULL) {
        b->oom = 1;
        return -1;
    }
    *v = nv;
    *cap = ncap;
    return 0;
}

static char *keep(status_build *b, const char *s)
{
    static char empty[] = "";
    if (s == NULL || s[0] == '\0' ||
        grow(b, (void **)&b->strings, b->n_strings, &b->cap_strings, sizeof(char *)) != 0)
        return empty;
    char *d = strdup(s);
    if (d == NULL) {
        b->oom = 1;
        return empty;
    }
    b->strings[b->n_strings++] = d;
    return d;
}

static void add_gpu(const jb_gpu_device_info *d, void *ud)
{
    status_build *b = ud;
    if (grow(b, (void **)&b->gpus, b->resp.n_gpus, &b->cap_gpus, sizeof(*b->gpus)) != 0)
        return;
    Jimbot__Infra__V1__GpuDeviceStatus g = JIMBOT__INFRA__V1__GPU_DEVICE_STATUS__INIT;
    g.index = d->index;
    g.name = keep(b, d->name);
    g.uuid = keep(b, d->uuid);
    g.available = d->available != 0;
    g.holder = keep(b, d->holder);
    g.lease_id = keep(b, d->lease_id);
    g.expires_ms = d->expires_ms;
    g.granted_ms = d->granted_ms;
    g.reason = keep(b, d->reason);
    g.holder_pid = d->holder_pid;
    g.memory_total_bytes = d->memory_total_bytes;
    g.memory_used_bytes = d->memory_used_bytes;
    g.releasing = d->releasing != 0;
    g.restored = d->restored != 0;
    b->gpus[b->resp.n_gpus++] = g;
}

static void add_waiter(const jb_gpu_waiter_info *w, void *ud)
{
    status_build *b = ud;
    if (grow(b, (void **)&b->waiters, b->resp.n_gpu_waiters, &b->cap_waiters,
             sizeof(*b->waiters)) != 0)
        return;
    Jimbot__Infra__V1__GpuWaiter g = JIMBOT__INFRA__V1__GPU_WAITER__INIT;
    g.position = w->position;
    g.component = keep(b, w->component);
    g.priority = w->priority;
    g.since_ms = w->since_ms;
    g.reason = keep(b, w->reason);
    b->waiters[b->resp.n_gpu_waiters++] = g;
}

static void add_component(const jb_quota_component_info *qc, void *ud)
{
    status_build *b = ud;
    if (grow(b, (void **)&b->comps, b->resp.n_claude_components, &b->cap_comps,
             sizeof(*b->comps)) != 0)
        return;
    Jimbot__Infra__V1__ApiQuotaComponent q = JIMBOT__INFRA__V1__API_QUOTA_COMPONENT__INIT;
    q.component = keep(b, qc->component);
    q.used = qc->used;
    q.share = qc->share;
    b->comps[b->resp.n_claude_components++] = q;
}

/* One queue_depths entry. */
static void add_depth_entry(status_build *b, const char *name, uint64_t depth)
{
    if (grow(b, (void **)&b->depths, b->resp.n_queue_depths, &b->cap_depths, sizeof(*b->depths)) !=
        0)
        return;
    Jimbot__Infra__V1__ResourceStatus__QueueDepthsEntry e =
        JIMBOT__INFRA__V1__RESOURCE_STATUS__QUEUE_DEPTHS_ENTRY__INIT;
    e.key = keep(b, name);
    e.value = depth > UINT32_MAX ? UINT32_MAX : (uint32_t)depth;
    b->depths[b->resp.n_queue_depths++] = e;
}

static void add_queue(const jb_queue_info *qi, void *ud)
{
    status_build *b = ud;
    if (grow(b, (void **)&b->queues, b->resp.n_queues, &b->cap_queues, sizeof(*b->queues)) != 0)
        return;
    Jimbot__Infra__V1__QueueStatus q = JIMBOT__INFRA__V1__QUEUE_STATUS__INIT;
    q.name = keep(b, qi->name);
    q.budget = keep(b, qi->budget);
    q.max_depth = qi->max_depth;
    q.depth = qi->depth;
    q.in_flight = qi->in_flight;
    q.workers = qi->workers;
    q.oldest_wait_ms = qi->oldest_wait_ms;
    q.submitted = qi->submitted;
    q.cache_hits = qi->cache_hits;
    q.coalesced = qi->coalesced;
    q.poisoned = qi->poisoned;
    q.cache_bytes = qi->cache_bytes;
    q.cache_entries = qi->cache_entries;
    b->queues[b->resp.n_queues++] = q;
    add_depth_entry(b, qi->name, qi->depth);
}

static void add_redis_component(const jb_redis_component_info *rc, void *ud)
{
    status_build *b = ud;
    if (grow(b, (void **)&b->redis_comps, b->redis.n_components, &b->cap_redis,
             sizeof(*b->redis_comps)) != 0)
        return;
    Jimbot__Infra__V1__RedisComponentStatus r = JIMBOT__INFRA__V1__REDIS_COMPONENT_STATUS__INIT;
    r.component = keep(b, rc->component);
    r.username = keep(b, rc->username);
    r.key_prefix = keep(b, rc->key_prefix);
    r.connections = rc->connections;
    r.allowance = rc->allowance;
    r.connections_closed = rc->connections_closed;
    b->redis_comps[b->redis.n_components++] = r;
}

static void add_redis(status_build *b, jb_coord *co)
{
    jb_redis_info ri = {0};
    jb_coord_redis_info(co, &ri);
    Jimbot__Infra__V1__RedisStatus *r = &b->redis;
    r->configured = ri.configured != 0;
    r->url = keep(b, ri.url);
    r->reachable = ri.reachable != 0;
    r->error = keep(b, ri.error);
    r->checked_ms = ri.checked_ms;
    r->connections = ri.connections;
    r->max_connections = ri.max_connections;
    jb_coord_foreach_redis_component(co, add_redis_component, b);
    b->resp.redis = r;
}

/* A consumer group's entry, unless a request queue has its name (queues come first, and
 * there are few of them: the check is not quadratic in the groups). */
static void add_depth(const char *group, const jb_bus_group_info *info, void *ud)
{
    status_build *b = ud;
    for (size_t i = 0; i < b->resp.n_queues; i++) {
        if (strcmp(b->queues[i].name, group) == 0)
            return;
    }
    add_depth_entry(b, group, info->pending);
}

/* The legacy summary fields (1-6) from the lists. */
static void summarize(status_build *b, const jb_quota_info *qi)
{
    Jimbot__Infra__V1__ResourceStatus *r = &b->resp;
    r->gpu_available = 0;
    for (size_t i = 0; i < r->n_gpus; i++) {
        if (b->gpus[i].available)
            r->gpu_available = 1;
        else if (r->gpu_holder == NULL || r->gpu_holder[0] == '\0') {
            r->gpu_holder = b->gpus[i].holder;
            r->gpu_lease_expires_ms = b->gpus[i].expires_ms;
        }
    }
    r->gpu_waiting = (uint32_t)r->n_gpu_waiters;
    r->claude_requests_remaining = qi->remaining;
    r->claude_next_slot_ms = qi->next_slot_ms;
    r->claude_hourly_limit = qi->limit;
    r->claude_requests_used = qi->used;
    r->claude_waiting = qi->waiting;
    r->claude_window_seconds = qi->window_ms / 1000;
}

/* Points the response's repeated fields at the arrays built. */
static int link_arrays(status_build *b, void ***ptrs)
{
    Jimbot__Infra__V1__ResourceStatus *r = &b->resp;
    size_t n = r->n_gpus + r->n_gpu_waiters + r->n_claude_components + r->n_queue_depths +
               r->n_queues + b->redis.n_components;
    *ptrs = n > 0 ? malloc(n * sizeof(void *)) : NULL;
    if (n > 0 && *ptrs == NULL)
        return -1;
    void **p = *ptrs;
#define LINK(field, arr)                          \
    do {                                          \
        r->field = (void *)p;                     \
        for (size_t i = 0; i < r->n_##field; i++) \
            *p++ = &b->arr[i];                    \
    } while (0)
    LINK(gpus, gpus);
    LINK(gpu_waiters, waiters);
    LINK(claude_components, comps);
    LINK(queue_depths, depths);
    LINK(queues, queues);
#undef LINK
    b->redis.components = (void *)p;
    for (size_t i = 0; i < b->redis.n_components; i++)
        *p++ = &b->redis_comps[i];
    return 0;
}

static void status_build_release(status_build *b)
{
    for (size_t i = 0; i < b->n_strings; i++)
        free(b->strings[i]);
    free(b->strings);
    free(b->gpus);
    free(b->waiters);
    free(b->comps);
    free(b->depths);
    free(b->queues);
    free(b->redis_comps);
}

void jb__resource_status_start(jb__call *c)
{
    if (jb__refuse_if_draining(c))
        return;
    ProtobufCMessage *req =
        jb__unpack_request(c, &jimbot__infra__v1__get_resource_status_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    protobuf_c_message_free_unpacked(req, NULL);
    status_build b = {.resp = JIMBOT__INFRA__V1__RESOURCE_STATUS__INIT,
                      .redis = JIMBOT__INFRA__V1__REDIS_STATUS__INIT};
    jb_quota_info qi = {0};
    jb_coord *co = jb__server_coord(c->srv);
    if (co != NULL) {
        jb_coord_foreach_gpu(co, add_gpu, &b);
        jb_coord_foreach_gpu_waiter(co, add_waiter, &b);
        jb_coord_quota_info(co, &qi);
        jb_coord_foreach_quota_component(co, add_component, &b);
        jb_coord_foreach_queue(co, add_queue, &b);
        add_redis(&b, co);
        b.resp.gpu_source = keep(&b, jb_coord_gpu_source(co));
    }
    jb_bus_foreach_group(jb__server_bus(c->srv), add_depth, &b);
    summarize(&b, &qi);
    void **ptrs = NULL;
    if (b.oom || link_arrays(&b, &ptrs) != 0)
        jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
    else
        jb__call_finish(c, &b.resp.base, GRPC_STATUS_OK, NULL, 0);
    free(ptrs);
    status_build_release(&b);
}
