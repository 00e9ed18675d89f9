/*
 * The methods jimbotd serves (docs/grpc.md): jimbot.infra.v1.EventBus over
 * the jb_bus (ListGroups and DeleteGroup for operators) and grpc.health.v1.Health;
 * Infrastructure's handlers are in services_infra.c, registered in the table
 * here. server.c owns the calls' life; this file turns requests into
 * engine calls and engine results into responses and status codes.
 *
 * Invariants:
 *   - Every request is decoded first, by protobuf-c or, for Publish, by
 *     src/event/decode.c (which accepts the same bytes, then holds them to
 *     the configured limits before it allocates); a missing payload or
 *     bytes that do not decode are INVALID_ARGUMENT and reach no engine
 *     function, so malformed input changes nothing.
 *   - While the server drains, nothing new reaches the bus: every handler
 *     but Health.Check answers UNAVAILABLE "shutting down" with
 *     "retry-after-ms" (the bus may be closed and freed by then); a retry
 *     of a Publish with the same event ids is deduplicated by the next
 *     daemon.
 *   - Subscribe streams forward the stored envelopes as they are: an
 *     EventBatch is `repeated Event events = 1`, so each event is the tag
 *     0x0a, a varint length, the stored bytes and the sequence/attempt
 *     suffix; nothing is re-encoded.
 *   - A stream's subscription is ended exactly once (closed, drained or
 *     found slow), which gives its unacked events back to the group.
 *
 * Runs on the loop thread only.
 */
#include "event/envelope.h"
#include "event/decode.h"
#include "rpc/server_internal.h"

#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "jimbot/infra/v1/health.pb-c.h"
#include "jimbot/infra/v1/infrastructure.pb-c.h"
#include "jimbot/log.h"

#include <grpc/byte_buffer_reader.h>
#include <stdlib.h>
#include <string.h>

/* An EventBatch stays under the 4 MiB a gRPC client accepts by default
 * (a single larger event goes alone). */
#define MAX_BATCH_MESSAGE (4u * 1024 * 1024 - 64 * 1024)
#define SHUTTING_DOWN     "shutting down"
/* The hint sent with it: about the time a supervisor takes to restart us. */
#define DRAIN_RETRY_MS 1000

/* Answers a missing or malformed request. */
static void malformed(jb__call *c, const char *what)
{
    char msg[96];
    snprintf(msg, sizeof(msg), "malformed %s", what);
    jb__call_finish(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, msg, 0);
}

/*
 * Decodes the call's payload with @desc (protobuf-c). On failure the call is
 * answered INVALID_ARGUMENT here and NULL returned: a missing or malformed
 * request, or one over jb__server_unary_max_bytes(), refused before it is
 * decoded (protobuf-c takes up to 8 bytes per byte for repeated varints, so
 * the bytes and what they decode to stay within the loop's share of
 * event_bus.max_request_memory_bytes).
 */
ProtobufCMessage *jb__unpack_request(jb__call *c, const ProtobufCMessageDescriptor *desc)
{
    grpc_slice buf;
    if (jb__call_take_payload(c, &buf) != 0) {
        malformed(c, desc->short_name);
        return NULL;
    }
    size_t len = GRPC_SLICE_LENGTH(buf), max = jb__server_unary_max_bytes(c->srv);
    if (len > max) {
        grpc_slice_unref(buf);
        char msg[160];
        snprintf(msg, sizeof(msg), "%s of %zu bytes: over the limit of %zu bytes", desc->short_name,
                 len, max);
        jb__call_finish(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, msg, 0);
        return NULL;
    }
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, GRPC_SLICE_START_PTR(buf));
    grpc_slice_unref(buf);
    if (msg == NULL)
        malformed(c, desc->short_name);
    return msg;
}

int jb__refuse_if_draining(jb__call *c)
{
    if (!jb__server_draining(c->srv))
        return 0;
    jb__call_finish(c, NULL, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, DRAIN_RETRY_MS);
    return 1;
}

int jb__refuse_without_coord(jb__call *c)
{
    if (jb__server_coord(c->srv) != NULL)
        return 0;
    jb__call_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, "no resource coordinator in this server",
                    0);
    return 1;
}

/* ---- EventBus.Publish ----------------------------------------------------- */

static void on_published(jb_status st, const uint64_t *seqs, const uint8_t *dups, size_t n,
                         const jb_error *err, void *userdata)
{
    jb__call *c = userdata;
    if (st != JB_OK) {
        jb__call_fail(c, st, err != NULL ? err->message : jb_strerror(st), 0);
        jb__call_unhold(c);
        return;
    }
    protobuf_c_boolean *d = malloc((n ? n : 1) * sizeof(*d));
    if (d == NULL) {
        jb__call_fail(c, JB_ENOMEM, "out of memory answering a publish", 0);
        jb__call_unhold(c);
        return;
    }
    int any_dup = 0;
    for (size_t i = 0; i < n; i++) {
        d[i] = dups[i] != 0;
        any_dup |= d[i];
    }
    Jimbot__Infra__V1__PublishResponse resp = JIMBOT__INFRA__V1__PUBLISH_RESPONSE__INIT;
    resp.n_sequences = n;
    resp.sequences = (uint64_t *)seqs;
    /* Parallel to sequences; left out when all false (its default). */
    resp.n_duplicates = any_dup ? n : 0;
    resp.duplicates = d;
    jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
    free(d);
    jb__call_unhold(c);
}

static void publish_start(jb__call *c)
{
    if (jb__refuse_if_draining(c))
        return;
    grpc_slice buf;
    if (jb__call_take_payload(c, &buf) != 0) {
        malformed(c, "PublishRequest");
        return;
    }
    /* The payloads point into buf: it lives until the bus has copied them. */
    jb__publish_req req;
    jb_error err;
    jb_error_clear(&err);
    jb__decode_limits limits = jb__server_publish_limits(c->srv);
    jb_status st =
        jb__publish_decode(GRPC_SLICE_START_PTR(buf), GRPC_SLICE_LENGTH(buf), &limits, &req, &err);
    if (st != JB_OK) {
        grpc_slice_unref(buf);
        jb__call_fail(c, st, err.message, 0);
        return;
    }
    uint32_t retry = 0;
    jb__call_hold(c);
    st = jb_bus_publish(jb__server_bus(c->srv), req.events, req.n_events, on_published, c, &retry,
                        &err);
    jb__publish_req_release(&req);
    grpc_slice_unref(buf);
    if (st != JB_OK) {
        if (st == JB_EBACKPRESSURE && retry == 0)
            retry = 1;
        jb__call_fail(c, st, err.message, st == JB_EBACKPRESSURE ? retry : 0);
        jb__call_unhold(c);
    }
}

/* ---- EventBus.Subscribe --------------------------------------------------- */

typedef struct sub_state {
    jb_bus_sub *sub;
} sub_state;

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    for (; v >= 0x80; v >>= 7)
        n++;
    return n;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    for (; v >= 0x80; v >>= 7)
        p[n++] = (uint8_t)(v | 0x80);
    p[n++] = (uint8_t)v;
    return n;
}

/* The bytes event @ev takes inside an EventBatch, and its suffix. */
static size_t batch_item_size(const jb_event *ev, uint8_t *suffix, size_t *suffix_len)
{
    *suffix_len = jb__envelope_suffix(ev->sequence, ev->delivery_attempt, suffix);
    size_t len = ev->encoded_len + *suffix_len;
    return 1 + varint_size(len) + len;
}

/* Unsubscribes and ends the stream; @drop: discard what is queued. */
static void sub_end(jb__call *c, grpc_status_code code, const char *details, int drop)
{
    sub_state *s = c->state;
    if (s != NULL && s->sub != NULL) {
        jb_bus_unsubscribe(s->sub);
        s->sub = NULL;
    }
    jb__call_end(c, code, details, drop);
}

/* Sends events [@from, @to) as one EventBatch message. */
static int send_batch(jb__call *c, const jb_event *const *events, size_t from, size_t to,
                      size_t bytes)
{
    grpc_slice slice = grpc_slice_malloc(bytes);
    uint8_t *p = GRPC_SLICE_START_PTR(slice);
    for (size_t i = from; i < to; i++) {
        const jb_event *ev = events[i];
        uint8_t suffix[JB_ENVELOPE_SUFFIX_MAX];
        size_t suffix_len;
        batch_item_size(ev, suffix, &suffix_len);
        *p++ = 0x0a; /* field 1, length-delimited */
        p += put_varint(p, ev->encoded_len + suffix_len);
        memcpy(p, ev->encoded, ev->encoded_len);
        p += ev->encoded_len;
        memcpy(p, suffix, suffix_len);
        p += suffix_len;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return jb__call_send(c, bb, bytes);
}

static void on_deliver(jb_bus_sub *sub, const jb_event *const *events, size_t n, void *userdata)
{
    jb__call *c = userdata;
    (void)sub;
    size_t from = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t suffix[JB_ENVELOPE_SUFFIX_MAX];
        size_t suffix_len;
        size_t item = batch_item_size(events[i], suffix, &suffix_len);
        if (i > from && bytes + item > MAX_BATCH_MESSAGE) {
            if (send_batch(c, events, from, i, bytes) != 0)
                goto slow;
            from = i;
            bytes = 0;
        }
        bytes += item;
    }
    if (n > from && send_batch(c, events, from, n, bytes) != 0)
        goto slow;
    return;
slow:
    jb_log(JB_LOG_WARN, "rpc", "slow consumer cancelled",
           "method=%s reason=queue_full queued_bytes=%zu", c->m->path, c->q_bytes);
    /* Safe from the subscription's own deliver callback (bus.h). */
    sub_end(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "slow consumer", 1);
}

static void subscribe_start(jb__call *c)
{
    if (jb__refuse_if_draining(c))
        return;
    Jimbot__Infra__V1__SubscribeRequest *req =
        (Jimbot__Infra__V1__SubscribeRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__subscribe_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    const char *why = NULL;
    if (req->pattern[0] == '\0')
        why = "a subscription needs a pattern";
    else if ((unsigned)req->deliver_policy >
             JIMBOT__INFRA__V1__DELIVER_POLICY__DELIVER_POLICY_FROM_TIME)
        why = "unknown deliver_policy";
    sub_state *s = why == NULL ? calloc(1, sizeof(*s)) : NULL;
    if (why != NULL || s == NULL) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        if (why != NULL)
            jb__call_finish(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, why, 0);
        else
            jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        return;
    }
    jb_bus_sub_options o = {
        .pattern = req->pattern,
        .group = req->group,
        .max_in_flight = req->max_in_flight,
        .deliver_policy = (jb_deliver_policy)req->deliver_policy,
        .start_sequence = req->start_sequence,
        .start_time_ms = req->start_time_ms,
        .ack_wait_ms = req->ack_wait_ms,
        .max_deliver = req->max_deliver,
    };
    jb_error err;
    c->state = s;
    jb_status st = jb_bus_subscribe(jb__server_bus(c->srv), &o, on_deliver, c, &s->sub, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (st != JB_OK) {
        s->sub = NULL;
        jb__call_fail(c, st, err.message, 0);
        return;
    }
    /* The group's name lets a member of a private group ack. */
    jb__call_send_initial(c, "jimbot-group", jb_bus_sub_group(s->sub));
}

static void subscribe_closed(jb__call *c)
{
    sub_state *s = c->state;
    if (s != NULL && s->sub != NULL) {
        jb_bus_unsubscribe(s->sub);
        s->sub = NULL;
    }
}

static void subscribe_drain(jb__call *c)
{
    /* What the flushed window queued goes out first. */
    sub_end(c, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 0);
}

static void free_state(jb__call *c)
{
    free(c->state);
    c->state = NULL;
}

/* ---- EventBus.Ack and Nack ------------------------------------------------ */

static void ack_or_nack(jb__call *c, int nack)
{
    if (jb__refuse_if_draining(c))
        return;
    const char *group;
    const uint64_t *seqs;
    size_t n;
    uint32_t delay = 0;
    ProtobufCMessage *msg;
    if (nack) {
        Jimbot__Infra__V1__NackRequest *r = (Jimbot__Infra__V1__NackRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__nack_request__descriptor);
        if (r == NULL)
            return; /* jb__unpack_request() answered */
        msg = &r->base;
        group = r->group;
        seqs = r->sequences;
        n = r->n_sequences;
        delay = r->delay_ms;
    } else {
        Jimbot__Infra__V1__AckRequest *r = (Jimbot__Infra__V1__AckRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__ack_request__descriptor);
        if (r == NULL)
            return; /* jb__unpack_request() answered */
        msg = &r->base;
        group = r->group;
        seqs = r->sequences;
        n = r->n_sequences;
    }
    uint64_t *unknown = malloc((n ? n : 1) * sizeof(uint64_t));
    size_t n_unknown = 0;
    jb_error err;
    jb_status st;
    if (group[0] == '\0')
        st = jb_error_set(&err, JB_EINVAL, "a group is required");
    else if (unknown == NULL)
        st = jb_error_set(&err, JB_ENOMEM, "out of memory");
    else if (nack)
        st = jb_bus_nack(jb__server_bus(c->srv), group, seqs, n, delay, unknown, &n_unknown, &err);
    else
        st = jb_bus_ack(jb__server_bus(c->srv), group, seqs, n, unknown, &n_unknown, &err);
    if (st == JB_ENOENT)
        jb_error_set(&err, JB_ENOENT, "unknown group '%s'", group);
    if (st != JB_OK) {
        jb__call_fail(c, st, err.message, 0);
    } else if (nack) {
        Jimbot__Infra__V1__NackResponse resp = JIMBOT__INFRA__V1__NACK_RESPONSE__INIT;
        resp.n_unknown = n_unknown;
        resp.unknown = unknown;
        jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
    } else {
        Jimbot__Infra__V1__AckResponse resp = JIMBOT__INFRA__V1__ACK_RESPONSE__INIT;
        resp.n_unknown = n_unknown;
        resp.unknown = unknown;
        jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
    }
    free(unknown);
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void ack_start(jb__call *c)
{
    ack_or_nack(c, 0);
}

static void nack_start(jb__call *c)
{
    ack_or_nack(c, 1);
}

/* ---- EventBus.ListGroups and DeleteGroup ---------------------------------- */

typedef struct group_list {
    Jimbot__Infra__V1__GroupInfo *v;
    size_t n, cap;
    int oom;
} group_list;

static void add_group(const char *group, const jb_bus_group_info *info, void *userdata)
{
    group_list *l = userdata;
    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        void *v = realloc(l->v, cap * sizeof(*l->v));
        if (v == NULL) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    Jimbot__Infra__V1__GroupInfo gi = JIMBOT__INFRA__V1__GROUP_INFO__INIT;
    gi.name = strdup(group);
    gi.pattern = strdup(info->pattern);
    gi.members = info->subscribers;
    gi.pending = info->pending;
    gi.lag = info->lag;
    gi.ack_floor = info->ack_floor;
    gi.in_flight = info->in_flight;
    gi.ack_wait_ms = info->ack_wait_ms;
    gi.max_deliver = info->max_deliver;
    gi.idle_ms = info->idle_ms;
    gi.private_group = info->private_group != 0;
    l->v[l->n++] = gi;
    if (gi.name == NULL || gi.pattern == NULL)
        l->oom = 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(Jimbot__Infra__V1__GroupInfo *const *)a)->name,
                  (*(Jimbot__Infra__V1__GroupInfo *const *)b)->name);
}

static void list_groups_start(jb__call *c)
{
    if (jb__refuse_if_draining(c))
        return;
    ProtobufCMessage *req =
        jb__unpack_request(c, &jimbot__infra__v1__list_groups_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    protobuf_c_message_free_unpacked(req, NULL);
    group_list l = {0};
    jb_bus_foreach_group(jb__server_bus(c->srv), add_group, &l);
    Jimbot__Infra__V1__GroupInfo **ptrs = l.n > 0 ? malloc(l.n * sizeof(*ptrs)) : NULL;
    if (l.oom || (l.n > 0 && ptrs == NULL)) {
        jb__call_fail(c, JB_ENOMEM, "out of memory listing groups", 0);
    } else {
        for (size_t i = 0; i < l.n; i++)
            ptrs[i] = &l.v[i];
        if (l.n > 1)
            qsort(ptrs, l.n, sizeof(*ptrs), by_name);
        Jimbot__Infra__V1__ListGroupsResponse resp = JIMBOT__INFRA__V1__LIST_GROUPS_RESPONSE__INIT;
        resp.n_groups = l.n;
        resp.groups = ptrs;
        jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
    }
    for (size_t i = 0; i < l.n; i++) {
        free(l.v[i].name);
        free(l.v[i].pattern);
    }
    free(ptrs);
    free(l.v);
}

static void delete_group_start(jb__call *c)
{
    if (jb__refuse_if_draining(c))
        return;
    Jimbot__Infra__V1__DeleteGroupRequest *req =
        (Jimbot__Infra__V1__DeleteGroupRequest *)jb__unpack_request(
            c, &jimbot__infra__v1__delete_group_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    jb_error err;
    jb_status st = jb_bus_delete_group(jb__server_bus(c->srv), req->group, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (st == JB_EUNAVAILABLE) {
        /* A group with members is never deleted from under them. */
        jb__call_finish(c, NULL, GRPC_STATUS_FAILED_PRECONDITION, err.message, 0);
    } else if (st != JB_OK) {
        jb__call_fail(c, st, err.message, 0);
    } else {
        Jimbot__Infra__V1__DeleteGroupResponse resp =
            JIMBOT__INFRA__V1__DELETE_GROUP_RESPONSE__INIT;
        jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
    }
}

/* ---- grpc.health.v1.Health ------------------------------------------------ */

static const char *const known_services[] = {
    "",
    "jimbot.infra.v1.EventBus",
    "jimbot.infra.v1.Infrastructure",
    "grpc.health.v1.Health",
};

static int health_of(const jb__call *c, const char *service)
{
    for (size_t i = 0; i < sizeof(known_services) / sizeof(known_services[0]); i++) {
        if (strcmp(service, known_services[i]) == 0)
            return jb__server_draining(c->srv)
                       ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    }
    return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
}

static void health_check_start(jb__call *c)
{
    Grpc__Health__V1__HealthCheckRequest *req =
        (Grpc__Health__V1__HealthCheckRequest *)jb__unpack_request(
            c, &grpc__health__v1__health_check_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    int status = health_of(c, req->service);
    if (status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN) {
        char msg[320];
        snprintf(msg, sizeof(msg), "unknown service '%.256s'", req->service);
        jb__call_finish(c, NULL, GRPC_STATUS_NOT_FOUND, msg, 0);
    } else {
        Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
        jb__call_finish(c, &resp.base, GRPC_STATUS_OK, NULL, 0);
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* Watch: the service's name, kept to answer again when the status changes. */
typedef struct watch_state {
    char *service;
} watch_state;

static void health_send(jb__call *c, int status)
{
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    jb__call_send_message(c, &resp.base);
}

static void health_watch_start(jb__call *c)
{
    if (jb__refuse_if_draining(c))
        return;
    Grpc__Health__V1__HealthCheckRequest *req =
        (Grpc__Health__V1__HealthCheckRequest *)jb__unpack_request(
            c, &grpc__health__v1__health_check_request__descriptor);
    if (req == NULL)
        return; /* jb__unpack_request() answered */
    watch_state *w = calloc(1, sizeof(*w));
    char *service = strdup(req->service);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (w == NULL || service == NULL) {
        free(w);
        free(service);
        jb__call_fail(c, JB_ENOMEM, "out of memory", 0);
        return;
    }
    w->service = service;
    c->state = w;
    health_send(c, health_of(c, service));
}

static void health_watch_drain(jb__call *c)
{
    watch_state *w = c->state;
    health_send(c, health_of(c, w->service));
    jb__call_end(c, GRPC_STATUS_UNAVAILABLE, SHUTTING_DOWN, 0);
}

static void health_watch_release(jb__call *c)
{
    watch_state *w = c->state;
    if (w != NULL)
        free(w->service);
    free_state(c);
}

/* ---- the table ------------------------------------------------------------- */

const jb__method jb__methods[] = {
    {"/jimbot.infra.v1.EventBus/Publish", publish_start, NULL, NULL, NULL},
    {"/jimbot.infra.v1.EventBus/Subscribe", subscribe_start, subscribe_closed, subscribe_drain,
     free_state},
    {"/jimbot.infra.v1.EventBus/Ack", ack_start, NULL, NULL, NULL},
    {"/jimbot.infra.v1.EventBus/Nack", nack_start, NULL, NULL, NULL},
    {"/jimbot.infra.v1.EventBus/ListGroups", list_groups_start, NULL, NULL, NULL},
    {"/jimbot.infra.v1.EventBus/DeleteGroup", delete_group_start, NULL, NULL, NULL},
    {"/grpc.health.v1.Health/Check", health_check_start, NULL, NULL, NULL},
    {"/grpc.health.v1.Health/Watch", health_watch_start, NULL, health_watch_drain,
     health_watch_release},
    {"/jimbot.infra.v1.Infrastructure/GetResourceStatus", jb__resource_status_start, NULL, NULL,
     NULL},
    {"/jimbot.infra.v1.Infrastructure/AcquireGpu", jb__acquire_gpu_start, jb__acquire_gpu_closed,
     jb__acquire_gpu_drain, jb__acquire_gpu_release},
    {"/jimbot.infra.v1.Infrastructure/ReleaseGpu", jb__release_gpu_start, NULL, NULL, NULL},
    {"/jimbot.infra.v1.Infrastructure/AcquireApiQuota", jb__api_quota_start, jb__api_quota_closed,
     jb__api_quota_drain, jb__api_quota_release},
    {"/jimbot.infra.v1.Infrastructure/SubmitRequest", jb__submit_request_start,
     jb__submit_request_closed, jb__submit_request_drain, jb__submit_request_release},
    {"/jimbot.infra.v1.Infrastructure/TakeRequests", jb__take_requests_start,
     jb__take_requests_closed, jb__take_requests_drain, jb__take_requests_release},
    {"/jimbot.infra.v1.Infrastructure/Respond", jb__respond_start, NULL, NULL, NULL},
    {"/jimbot.infra.v1.Infrastructure/GetRedisAccess", jb__redis_access_start, NULL, NULL, NULL},
};

const size_t jb__n_methods = sizeof(jb__methods) / sizeof(jb__methods[0]);
