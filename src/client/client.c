/*
 * The client library's core (include/jimbot/client.h): the channel, the
 * client thread, unary calls (also the blocking form that infra.c uses),
 * alarms, publishing and acks, and the helpers that the other files share
 * (the "retry-after-ms" hint, copying a received message, refusing a
 * blocking call on the client thread). Subscriptions are in sub.c, the
 * Infrastructure calls in infra.c, the plumbing of their server-streaming
 * calls in stream.c.
 *
 * Threads. The client thread only pumps the completion queue: it blocks in
 * grpc_completion_queue_next() and runs each tag's handler. Calls are
 * started by whichever thread asks (under c->mu). Blocking functions start
 * the asynchronous form and wait on a condition variable that its callback
 * signals; they refuse to run on the client thread, which would wait for
 * itself.
 *
 * Timers (the batching window, retries) are jb__alarm: a connectivity watch
 * with a deadline, the one timer that gRPC core's C API offers.
 *
 * Close. jb_client_free() sets c->closing under c->mu (after which nothing
 * new is started), cancels the calls in flight, destroys the channel (which
 * completes the pending alarms), shuts the queue down and joins the thread,
 * which drains every outstanding tag first. So every handler runs exactly
 * once, and nothing outlives the client.
 *
 * Wire format. A PublishRequest is written by hand from the events'
 * envelopes (src/event/envelope.c): field 1, length-delimited, per event.
 * Everything else goes through protobuf-c.
 */
#include "client/internal.h"

#include "core/buf.h"
#include "event/envelope.h"

#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "jimbot/infra/v1/health.pb-c.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const method_paths[JB__M_COUNT] = {
    [JB__M_PUBLISH] = "/jimbot.infra.v1.EventBus/Publish",
    [JB__M_SUBSCRIBE] = "/jimbot.infra.v1.EventBus/Subscribe",
    [JB__M_ACK] = "/jimbot.infra.v1.EventBus/Ack",
    [JB__M_NACK] = "/jimbot.infra.v1.EventBus/Nack",
    [JB__M_HEALTH] = "/grpc.health.v1.Health/Check",
};

/* ---- Time, backoff, status ----------------------------------------------- */

int64_t jb__client_now_ms(void)
{
    gpr_timespec t = gpr_now(GPR_CLOCK_MONOTONIC);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static gpr_timespec deadline_in(uint32_t ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

int jb__client_on_thread(const jb_client *c)
{
    return pthread_equal(pthread_self(), c->thread);
}

uint32_t jb__client_backoff(jb_client *c, uint32_t attempt)
{
    uint64_t d = c->opts.backoff_min_ms;
    for (uint32_t i = 1; i < attempt && d < c->opts.backoff_max_ms; i++)
        d *= 2;
    if (d > c->opts.backoff_max_ms)
        d = c->opts.backoff_max_ms;
    /* Up to 25% less, at random, so that clients do not retry in step. */
    uint64_t jitter = d / 4;
    if (jitter > 0)
        d -= (uint64_t)rand_r(&c->rand_state) % (jitter + 1);
    return (uint32_t)d;
}

static const char *grpc_code_name(grpc_status_code code)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((unsigned)code < sizeof(names) / sizeof(names[0]))
        return names[code];
    return "UNKNOWN";
}

jb_status jb__client_map_status(grpc_status_code code, const char *name, grpc_slice details,
                                jb_error *err)
{
    jb_status st;
    switch (code) {
    case GRPC_STATUS_OK:
        return JB_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_FAILED_PRECONDITION:
        st = JB_EINVAL;
        break;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        st = JB_EBACKPRESSURE;
        break;
    case GRPC_STATUS_UNAVAILABLE:
        st = JB_EUNAVAILABLE;
        break;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        st = JB_ETIMEDOUT;
        break;
    case GRPC_STATUS_NOT_FOUND:
        st = JB_ENOENT;
        break;
    case GRPC_STATUS_ALREADY_EXISTS:
        st = JB_EEXIST;
        break;
    case GRPC_STATUS_UNIMPLEMENTED:
        st = JB_EUNSUPPORTED;
        break;
    case GRPC_STATUS_CANCELLED:
        st = JB_ECLOSED;
        break;
    case GRPC_STATUS_DATA_LOSS:
        st = JB_ECORRUPT;
        break;
    default:
        st = JB_EIO;
        break;
    }
    size_t len = GRPC_SLICE_LENGTH(details);
    if (len > 400)
        len = 400;
    return jb_error_set(err, st, "%s: %s: %.*s", name, grpc_code_name(code), (int)len,
                        (const char *)GRPC_SLICE_START_PTR(details));
}

/* ---- Alarms --------------------------------------------------------------- */

static void alarm_done(jb__tag *tag, int ok)
{
    jb__alarm *a = JB__CONTAINER_OF(tag, jb__alarm, tag);
    jb_client *c = a->c;
    pthread_mutex_lock(&c->mu);
    if (!c->closing && jb__client_now_ms() < a->due_ms) {
        /* Back early: the channel changed state. Wait the rest. */
        jb__client_alarm_arm(c, a, a->due_ms);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    pthread_mutex_unlock(&c->mu);
    a->fire(a);
}

void jb__client_alarm_arm(jb_client *c, jb__alarm *a, int64_t due_ms)
{
    a->c = c;
    a->tag.fn = alarm_done;
    a->due_ms = due_ms;
    int64_t wait = due_ms - jb__client_now_ms();
    grpc_connectivity_state st = grpc_channel_check_connectivity_state(c->channel, 0);
    grpc_channel_watch_connectivity_state(
        c->channel, st, deadline_in(wait > 0 ? (uint32_t)wait : 0), c->cq, &a->tag);
}

/* ---- Unary calls ---------------------------------------------------------- */

struct jb__unary {
    jb__tag tag;
    jb_client *c;
    jb__unary *prev, *next; /* c->calls */
    grpc_call *call;
    const char *name;
    grpc_byte_buffer *send;
    grpc_byte_buffer *recv;
    grpc_metadata_array md_initial;
    grpc_metadata_array md_trailing;
    grpc_status_code status;
    grpc_slice details;
    jb__unary_fn done;
    jb__unary_md_fn done_md; /* instead of done: also gets the trailing metadata */
    void *userdata;
};

const char *jb__client_md_get(const grpc_metadata_array *md, const char *key, char *buf,
                              size_t size)
{
    buf[0] = '\0';
    for (size_t i = 0; i < md->count; i++) {
        const grpc_metadata *m = &md->metadata[i];
        if (grpc_slice_str_cmp(m->key, key) != 0)
            continue;
        size_t n = GRPC_SLICE_LENGTH(m->value);
        if (n >= size)
            n = size - 1;
        memcpy(buf, GRPC_SLICE_START_PTR(m->value), n);
        buf[n] = '\0';
        break;
    }
    return buf;
}

uint32_t jb__client_retry_after(const grpc_metadata_array *md)
{
    char tmp[24];
    if (jb__client_md_get(md, "retry-after-ms", tmp, sizeof(tmp))[0] == '\0')
        return 0;
    unsigned long v = strtoul(tmp, NULL, 10);
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

uint8_t *jb__client_pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *out = jb__xmalloc(*len + 1);
    protobuf_c_message_pack(m, out);
    return out;
}

struct timespec jb__client_realtime_in(int64_t ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += (time_t)(ms / 1000);
    t.tv_nsec += (long)(ms % 1000) * 1000000;
    if (t.tv_nsec >= 1000000000) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000;
    }
    return t;
}

uint8_t *jb__client_read_all(grpc_byte_buffer *bb, size_t *len)
{
    *len = 0;
    if (bb == NULL)
        return NULL;
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t n = GRPC_SLICE_LENGTH(s);
    uint8_t *p = jb__xmalloc(n);
    memcpy(p, GRPC_SLICE_START_PTR(s), n);
    grpc_slice_unref(s);
    *len = n;
    return p;
}

static void unary_complete(jb__tag *tag, int ok)
{
    jb__unary *u = JB__CONTAINER_OF(tag, jb__unary, tag);
    jb_client *c = u->c;
    pthread_mutex_lock(&c->mu);
    if (u->prev != NULL)
        u->prev->next = u->next;
    else
        c->calls = u->next;
    if (u->next != NULL)
        u->next->prev = u->prev;
    pthread_mutex_unlock(&c->mu);

    jb_error err;
    jb_error_clear(&err);
    jb_status st;
    size_t len = 0;
    uint8_t *resp = NULL;
    uint32_t hint = 0;
    if (!ok) {
        st = jb_error_set(&err, JB_EBUG, "%s: the call's batch failed", u->name);
    } else {
        st = jb__client_map_status(u->status, u->name, u->details, &err);
        hint = jb__client_retry_after(&u->md_trailing);
        if (st == JB_OK)
            resp = jb__client_read_all(u->recv, &len);
    }
    if (u->done_md != NULL)
        u->done_md(c, st, &err, resp, len, &u->md_trailing, u->userdata);
    else
        u->done(c, st, &err, resp, len, hint, u->userdata);
    grpc_byte_buffer_destroy(u->send);
    if (u->recv != NULL)
        grpc_byte_buffer_destroy(u->recv);
    grpc_metadata_array_destroy(&u->md_initial);
    grpc_metadata_array_destroy(&u->md_trailing);
    grpc_slice_unref(u->details);
    grpc_call_unref(u->call);
    free(resp);
    free(u);
}

/*
 * Starts a unary call of registered method @m, or of @path when @m < 0,
 * with @len bytes of request. @done (or @done_md when not NULL) runs on the
 * client thread once it ends, unless this fails. c->mu must not be held.
 */
static jb_status unary_start_ex(jb_client *c, int m, const char *path, const void *req, size_t len,
                                uint32_t extra_ms, jb__unary_fn done, jb__unary_md_fn done_md,
                                void *userdata, jb_error *err)
{
    jb__unary *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory starting a call");
    u->tag.fn = unary_complete;
    u->c = c;
    u->done = done;
    u->done_md = done_md;
    u->userdata = userdata;
    const char *p = m >= 0 ? method_paths[m] : path;
    const char *slash = strrchr(p, '/');
    u->name = slash != NULL ? slash + 1 : p;
    grpc_metadata_array_init(&u->md_initial);
    grpc_metadata_array_init(&u->md_trailing);
    grpc_slice s = grpc_slice_from_copied_buffer(req, len);
    u->send = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);

    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        grpc_byte_buffer_destroy(u->send);
        grpc_metadata_array_destroy(&u->md_initial);
        grpc_metadata_array_destroy(&u->md_trailing);
        free(u);
        return jb_error_set(err, JB_ECLOSED, "the client is closing");
    }
    uint64_t ms = (uint64_t)c->opts.deadline_ms + extra_ms;
    gpr_timespec deadline = deadline_in(ms > INT32_MAX ? INT32_MAX : (uint32_t)ms);
    if (m >= 0) {
        u->call = grpc_channel_create_registered_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                      c->cq, c->methods[m], deadline, NULL);
    } else {
        grpc_slice method = grpc_slice_from_copied_string(path);
        u->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, method,
                                           NULL, deadline, NULL);
        grpc_slice_unref(method);
    }
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = u->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->md_initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &u->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &u->md_trailing;
    ops[5].data.recv_status_on_client.status = &u->status;
    ops[5].data.recv_status_on_client.status_details = &u->details;
    grpc_call_error e = grpc_call_start_batch(u->call, ops, 6, &u->tag, NULL);
    if (e != GRPC_CALL_OK) {
        pthread_mutex_unlock(&c->mu);
        grpc_call_unref(u->call);
        grpc_byte_buffer_destroy(u->send);
        grpc_metadata_array_destroy(&u->md_initial);
        grpc_metadata_array_destroy(&u->md_trailing);
        const char *name = u->name;
        free(u);
        return jb_error_set(err, JB_EBUG, "%s: grpc_call_start_batch failed (%d)", name, (int)e);
    }
    u->next = c->calls;
    if (c->calls != NULL)
        c->calls->prev = u;
    c->calls = u;
    pthread_mutex_unlock(&c->mu);
    return JB_OK;
}

static jb_status unary_start(jb_client *c, int m, const char *path, const void *req, size_t len,
                             jb__unary_fn done, void *userdata, jb_error *err)
{
    return unary_start_ex(c, m, path, req, len, 0, done, NULL, userdata, err);
}

jb_status jb__client_unary_start(jb_client *c, const char *path, const void *req, size_t len,
                                 uint32_t extra_ms, jb__unary_fn done, void *userdata,
                                 jb_error *err)
{
    return unary_start_ex(c, -1, path, req, len, extra_ms, done, NULL, userdata, err);
}

jb_status jb__client_unary_start_md(jb_client *c, const char *path, const void *req, size_t len,
                                    uint32_t extra_ms, jb__unary_md_fn done, void *userdata,
                                    jb_error *err)
{
    return unary_start_ex(c, -1, path, req, len, extra_ms, NULL, done, userdata, err);
}

/* ---- Waiting for an asynchronous call ------------------------------------ */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    jb_status status;
    jb_error err;
    uint32_t retry_after_ms;
    uint8_t *response;
    size_t len;
} waiter;

static void waiter_init(waiter *w)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

static void waiter_release(waiter *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->response);
}

static void waiter_unary_done(jb_client *c, jb_status status, const jb_error *err,
                              const uint8_t *response, size_t len, uint32_t retry_after_ms,
                              void *userdata)
{
    waiter *w = userdata;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    if (status != JB_OK)
        w->err = *err;
    w->retry_after_ms = retry_after_ms;
    if (status == JB_OK && len > 0) {
        w->response = malloc(len);
        if (w->response == NULL)
            JB_BUG("out of memory keeping a %zu-byte response", len);
        memcpy(w->response, response, len);
        w->len = len;
    }
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

jb_status jb__client_refuse_on_thread(const jb_client *c, const char *what, jb_error *err)
{
    if (jb__client_on_thread(c))
        return jb_error_set(err, JB_EINVAL,
                            "%s: a blocking call from a client callback would deadlock; use the "
                            "asynchronous form",
                            what);
    return JB_OK;
}

/*
 * A blocking unary call (as unary_start_ex()): on JB_OK @w holds the
 * response. @what names the call when it is refused on the client thread.
 */
static jb_status unary_wait_ex(jb_client *c, int m, const char *path, const char *what,
                               const void *req, size_t len, uint32_t extra_ms, waiter *w,
                               jb_error *err)
{
    jb_status st = jb__client_refuse_on_thread(c, what, err);
    if (st != JB_OK)
        return st;
    st = unary_start_ex(c, m, path, req, len, extra_ms, waiter_unary_done, NULL, w, err);
    if (st != JB_OK)
        return st;
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    if (w->status != JB_OK && err != NULL)
        *err = w->err;
    return w->status;
}

static jb_status unary_wait(jb_client *c, int m, const char *path, const void *req, size_t len,
                            waiter *w, jb_error *err)
{
    return unary_wait_ex(c, m, path, m >= 0 ? method_paths[m] : path, req, len, 0, w, err);
}

/* unary_wait_ex() of @path whose answer moves to *@resp and *@resp_len on JB_OK. */
static jb_status unary_call(jb_client *c, const char *path, const char *what, const void *req,
                            size_t len, uint32_t extra_ms, uint8_t **resp, size_t *resp_len,
                            jb_error *err)
{
    waiter w;
    waiter_init(&w);
    jb_status st = unary_wait_ex(c, -1, path, what, req, len, extra_ms, &w, err);
    if (st == JB_OK) {
        *resp = w.response;
        *resp_len = w.len;
        w.response = NULL;
    }
    waiter_release(&w);
    return st;
}

jb_status jb__client_unary_call(jb_client *c, const char *path, const void *req, size_t len,
                                uint32_t extra_ms, uint8_t **resp, size_t *resp_len, jb_error *err)
{
    return unary_call(c, path, strrchr(path, '/') + 1, req, len, extra_ms, resp, resp_len, err);
}

/* ---- Lifecycle ------------------------------------------------------------ */

static void *client_thread(void *arg)
{
    jb_client *c = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        jb__tag *tag = ev.tag;
        tag->fn(tag, ev.success);
    }
    return NULL;
}

static void keepalive_defaults(jb_client_options *o)
{
    if (o->keepalive_ms == 0)
        o->keepalive_ms = 2000;
    else if (o->keepalive_ms < JB_CLIENT_KEEPALIVE_MIN_MS)
        o->keepalive_ms = JB_CLIENT_KEEPALIVE_MIN_MS;
    else if (o->keepalive_ms > INT32_MAX && o->keepalive_ms != JB_CLIENT_KEEPALIVE_OFF)
        o->keepalive_ms = INT32_MAX;
    if (o->keepalive_timeout_ms == 0)
        o->keepalive_timeout_ms = 3000;
    else if (o->keepalive_timeout_ms < JB_CLIENT_KEEPALIVE_MIN_MS)
        o->keepalive_timeout_ms = JB_CLIENT_KEEPALIVE_MIN_MS;
    else if (o->keepalive_timeout_ms > INT32_MAX)
        o->keepalive_timeout_ms = INT32_MAX;
}

jb_status jb_client_new(const jb_client_options *opts, jb_client **out, jb_error *err)
{
    jb_client_options o = opts != NULL ? *opts : (jb_client_options){0};
    if (o.addr == NULL || o.addr[0] == '\0')
        o.addr = JB_CLIENT_DEFAULT_ADDR;
    if (o.deadline_ms == 0)
        o.deadline_ms = 10000;
    if (o.backoff_min_ms == 0)
        o.backoff_min_ms = 100;
    if (o.backoff_max_ms == 0)
        o.backoff_max_ms = 5000;
    if (o.backoff_max_ms < o.backoff_min_ms)
        o.backoff_max_ms = o.backoff_min_ms;
    if (o.max_batch == 0)
        o.max_batch = 1000;
    if (o.max_buffered_bytes == 0)
        o.max_buffered_bytes = (size_t)64 << 20;
    keepalive_defaults(&o);

    jb_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory creating a client");
    c->addr = strdup(o.addr);
    if (c->addr == NULL) {
        free(c);
        return jb_error_set(err, JB_ENOMEM, "out of memory creating a client");
    }
    o.addr = c->addr;
    c->opts = o;
    c->rand_state = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)c;
    c->next_batch_id = 1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->flushed, NULL);
    jb_error_clear(&c->flush_err);

    grpc_init();
    /* grpc_arg's key is `char *`; the keys are string literals it never writes. */
    static char k_max_recv[] = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    static char k_initial[] = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    static char k_min[] = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
    static char k_max[] = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    static char k_ka_time[] = GRPC_ARG_KEEPALIVE_TIME_MS;
    static char k_ka_timeout[] = GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
    static char k_ka_idle[] = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS;
    static char k_ka_pings[] = GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA;
    grpc_arg args[8];
    memset(args, 0, sizeof(args));
    for (size_t i = 0; i < 8; i++)
        args[i].type = GRPC_ARG_INTEGER;
    args[0].key = k_max_recv;
    args[0].value.integer = -1; /* a batch may hold 1000 events of up to 1 MiB */
    args[1].key = k_initial;
    args[1].value.integer = (int)o.backoff_min_ms;
    args[2].key = k_min;
    args[2].value.integer = (int)o.backoff_min_ms;
    args[3].key = k_max;
    args[3].value.integer = (int)o.backoff_max_ms;
    /* Keepalive: pings on idle connections too, and without limit (by
     * default gRPC stops after two pings that carried no data). */
    args[4].key = k_ka_time;
    args[4].value.integer =
        o.keepalive_ms == JB_CLIENT_KEEPALIVE_OFF ? INT32_MAX : (int)o.keepalive_ms;
    args[5].key = k_ka_timeout;
    args[5].value.integer = (int)o.keepalive_timeout_ms;
    args[6].key = k_ka_idle;
    args[6].value.integer = o.keepalive_ms != JB_CLIENT_KEEPALIVE_OFF;
    args[7].key = k_ka_pings;
    args[7].value.integer = 0;
    grpc_channel_args cargs = {.num_args = 8, .args = args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->channel = grpc_channel_create(c->addr, creds, &cargs);
    grpc_channel_credentials_release(creds);
    for (int m = 0; m < JB__M_COUNT; m++)
        c->methods[m] = grpc_channel_register_call(c->channel, method_paths[m], NULL, NULL);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    if (pthread_create(&c->thread, NULL, client_thread, c) != 0) {
        grpc_channel_destroy(c->channel);
        grpc_completion_queue_shutdown(c->cq);
        grpc_completion_queue_destroy(c->cq);
        grpc_shutdown();
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->flushed);
        free(c->addr);
        free(c);
        return jb_error_set(err, JB_ENOMEM, "cannot start the client thread");
    }
    *out = c;
    return JB_OK;
}

struct jb__buffered {
    jb__buffered *next;
    jb_client *c;
    uint64_t id;
    size_t n;
    uint32_t attempt;
    jb__buf body;
    jb__alarm retry;
};

static void buffered_free(jb__buffered *b)
{
    jb__buf_release(&b->body);
    free(b);
}

void jb_client_free(jb_client *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->closing = 1;
    for (jb__unary *u = c->calls; u != NULL; u = u->next)
        grpc_call_cancel(u->call, NULL);
    jb__client_subs_cancel_all(c);
    jb__client_gpus_cancel_all(c);
    jb__client_workers_cancel_all(c);
    pthread_mutex_unlock(&c->mu);

    /* Completes the pending alarms; calls keep their own references. */
    grpc_channel_destroy(c->channel);
    grpc_completion_queue_shutdown(c->cq);
    pthread_join(c->thread, NULL);
    grpc_completion_queue_destroy(c->cq);
    jb__client_subs_free_all(c);
    jb__client_gpus_free_all(c);
    jb__client_workers_free_all(c);
    while (c->sending != NULL) {
        jb__buffered *b = c->sending;
        c->sending = b->next;
        buffered_free(b);
    }
    if (c->open != NULL)
        buffered_free(c->open);
    grpc_shutdown();
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->flushed);
    free(c->addr);
    free(c);
}

const char *jb_client_addr(const jb_client *c)
{
    return c->addr;
}

/* ---- Publishing ----------------------------------------------------------- */

static jb_status check_events(const jb_event *events, size_t n, jb_error *err)
{
    if (n == 0 || events == NULL)
        return jb_error_set(err, JB_EINVAL, "publish: no events");
    for (size_t i = 0; i < n; i++) {
        const jb_event *ev = &events[i];
        if (ev->payload == NULL && ev->payload_len > 0)
            return jb_error_set(err, JB_EINVAL, "publish: event %zu: payload is NULL", i);
        if (ev->headers == NULL && ev->n_headers > 0)
            return jb_error_set(err, JB_EINVAL, "publish: event %zu: headers are NULL", i);
    }
    return JB_OK;
}

/* Appends @ev to @b as PublishRequest.events (field 1). */
static void encode_event(jb__buf *b, const jb_event *ev)
{
    size_t sz = jb__envelope_size(ev);
    uint8_t head[11];
    size_t h = 0;
    head[h++] = 1 << 3 | 2;
    for (size_t v = sz;; v >>= 7) {
        head[h++] = (uint8_t)(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
        if (v < 0x80)
            break;
    }
    jb__buf_append(b, head, h);
    jb__buf_grow(b, sz);
    size_t w = jb__envelope_encode(ev, (uint8_t *)b->data + b->len);
    if (w != sz)
        JB_BUG("envelope of %zu bytes encoded as %zu", sz, w);
    b->len += sz;
    b->data[b->len] = '\0';
}

typedef struct publish_call {
    size_t n;
    jb_client_publish_cb cb;
    void *userdata;
} publish_call;

/*
 * Reads a PublishResponse for @n events into new arrays (freed by the
 * caller). JB_EPARSE when it does not fit.
 */
static jb_status parse_publish_response(const uint8_t *resp, size_t len, size_t n, uint64_t **seqs,
                                        uint8_t **dups, jb_error *err)
{
    Jimbot__Infra__V1__PublishResponse *r =
        jimbot__infra__v1__publish_response__unpack(NULL, len, resp);
    if (r == NULL)
        return jb_error_set(err, JB_EPARSE, "Publish: malformed response (%zu bytes)", len);
    if (r->n_sequences != n || (r->n_duplicates != 0 && r->n_duplicates != n)) {
        jb_status st =
            jb_error_set(err, JB_EPARSE, "Publish: the response has %zu sequences for %zu events",
                         r->n_sequences, n);
        jimbot__infra__v1__publish_response__free_unpacked(r, NULL);
        return st;
    }
    *seqs = malloc(n * sizeof(**seqs));
    *dups = calloc(n, 1);
    if (*seqs == NULL || *dups == NULL)
        JB_BUG("out of memory reading a publish response");
    memcpy(*seqs, r->sequences, n * sizeof(**seqs));
    for (size_t i = 0; i < r->n_duplicates; i++)
        (*dups)[i] = r->duplicates[i] ? 1 : 0;
    jimbot__infra__v1__publish_response__free_unpacked(r, NULL);
    return JB_OK;
}

static void publish_done(jb_client *c, jb_status status, const jb_error *err,
                         const uint8_t *response, size_t len, uint32_t retry_after_ms,
                         void *userdata)
{
    publish_call *p = userdata;
    uint64_t *seqs = NULL;
    uint8_t *dups = NULL;
    jb_error perr;
    jb_error_clear(&perr);
    if (status == JB_OK) {
        status = parse_publish_response(response, len, p->n, &seqs, &dups, &perr);
        err = &perr;
    }
    if (p->cb != NULL) {
        if (status == JB_OK)
            p->cb(JB_OK, seqs, dups, p->n, 0, NULL, p->userdata);
        else
            p->cb(status, NULL, NULL, 0, retry_after_ms, err, p->userdata);
    }
    free(seqs);
    free(dups);
    free(p);
}

jb_status jb_client_publish_async(jb_client *c, const jb_event *events, size_t n,
                                  jb_client_publish_cb cb, void *userdata, jb_error *err)
{
    jb_status st = check_events(events, n, err);
    if (st != JB_OK)
        return st;
    publish_call *p = malloc(sizeof(*p));
    if (p == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory publishing");
    *p = (publish_call){.n = n, .cb = cb, .userdata = userdata};
    jb__buf body;
    jb__buf_init(&body);
    for (size_t i = 0; i < n; i++)
        encode_event(&body, &events[i]);
    st = unary_start(c, JB__M_PUBLISH, NULL, body.data, body.len, publish_done, p, err);
    jb__buf_release(&body);
    if (st != JB_OK)
        free(p);
    return st;
}

jb_status jb_client_publish(jb_client *c, const jb_event *events, size_t n, uint64_t *sequences,
                            uint8_t *duplicates, uint32_t *retry_after_ms, jb_error *err)
{
    jb_status st = check_events(events, n, err);
    if (st != JB_OK)
        return st;
    jb__buf body;
    jb__buf_init(&body);
    for (size_t i = 0; i < n; i++)
        encode_event(&body, &events[i]);
    waiter w;
    waiter_init(&w);
    st = unary_wait(c, JB__M_PUBLISH, NULL, body.data, body.len, &w, err);
    jb__buf_release(&body);
    if (retry_after_ms != NULL)
        *retry_after_ms = st == JB_EBACKPRESSURE ? w.retry_after_ms : 0;
    if (st == JB_OK) {
        uint64_t *seqs = NULL;
        uint8_t *dups = NULL;
        st = parse_publish_response(w.response, w.len, n, &seqs, &dups, err);
        if (st == JB_OK) {
            if (sequences != NULL)
                memcpy(sequences, seqs, n * sizeof(*seqs));
            if (duplicates != NULL)
                memcpy(duplicates, dups, n);
        }
        free(seqs);
        free(dups);
    }
    waiter_release(&w);
    return st;
}

/* ---- Client-side batching ------------------------------------------------- */

static void buffered_send(jb_client *c, jb__buffered *b);

static void buffered_retry_fire(jb__alarm *a)
{
    jb__buffered *b = JB__CONTAINER_OF(a, jb__buffered, retry);
    jb_client *c = b->c;
    pthread_mutex_lock(&c->mu);
    int closing = c->closing;
    pthread_mutex_unlock(&c->mu);
    if (!closing)
        buffered_send(c, b);
}

/*
 * Batches leave in order, one request in flight at a time: c->sending is a
 * FIFO whose head is the batch in flight (or waiting to be sent again), so
 * events are stored in the order they were buffered, retries included.
 * While the head is in flight the next batches fill up behind it.
 */

static jb__buffered *take_open_locked(jb_client *c);

/*
 * Drops the head (acknowledged or failed) and returns the next to send;
 * c->mu held. Without a window, the events buffered while the head was in
 * flight wait in c->open: they go now, as one request.
 */
static jb__buffered *buffered_pop_locked(jb_client *c)
{
    jb__buffered *b = c->sending;
    c->sending = b->next;
    if (c->sending == NULL)
        c->sending_tail = NULL;
    c->buffered_bytes -= b->body.len;
    buffered_free(b);
    pthread_cond_broadcast(&c->flushed);
    if (c->closing)
        return NULL;
    if (c->sending == NULL && c->opts.batch_window_ms == 0)
        return take_open_locked(c);
    return c->sending;
}

static void buffered_done(jb_client *c, jb_status status, const jb_error *err,
                          const uint8_t *response, size_t len, uint32_t retry_after_ms,
                          void *userdata)
{
    jb__buffered *b = userdata;
    jb__buffered *next = NULL;
    pthread_mutex_lock(&c->mu);
    if (status == JB_OK) {
        next = buffered_pop_locked(c);
    } else if ((status == JB_EBACKPRESSURE || status == JB_EUNAVAILABLE) && !c->closing) {
        b->attempt++;
        uint32_t delay = retry_after_ms > 0 ? retry_after_ms : jb__client_backoff(c, b->attempt);
        b->retry.fire = buffered_retry_fire;
        jb__client_alarm_arm(c, &b->retry, jb__client_now_ms() + delay);
    } else {
        if (c->flush_status == JB_OK) {
            c->flush_status = status;
            c->flush_err = *err;
        }
        c->flush_lost += b->n;
        next = buffered_pop_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (next != NULL)
        buffered_send(c, next);
}

/* Sends (again) batch @b, the head of c->sending; c->mu not held. */
static void buffered_send(jb_client *c, jb__buffered *b)
{
    jb_error err;
    jb_status st =
        unary_start(c, JB__M_PUBLISH, NULL, b->body.data, b->body.len, buffered_done, b, &err);
    if (st != JB_OK)
        buffered_done(c, st, &err, NULL, 0, 0, b);
}

/*
 * Seals the open window into the queue; returns it when it is to be sent
 * now (nothing else in flight), to send without c->mu.
 */
static jb__buffered *take_open_locked(jb_client *c)
{
    jb__buffered *b = c->open;
    c->open = NULL;
    if (b == NULL)
        return NULL;
    if (c->sending_tail != NULL) {
        c->sending_tail->next = b;
        c->sending_tail = b;
        return NULL;
    }
    c->sending = c->sending_tail = b;
    return b;
}

static void window_fire(jb__alarm *a)
{
    jb_client *c = a->c;
    pthread_mutex_lock(&c->mu);
    jb__buffered *send = NULL;
    if (c->closing || c->open == NULL) {
        c->window_armed = 0;
    } else if (jb__client_now_ms() >= c->window_due_ms) {
        c->window_armed = 0;
        send = take_open_locked(c);
    } else {
        jb__client_alarm_arm(c, &c->window, c->window_due_ms);
    }
    pthread_mutex_unlock(&c->mu);
    if (send != NULL)
        buffered_send(c, send);
}

jb_status jb_client_publish_buffered(jb_client *c, const jb_event *ev, jb_error *err)
{
    jb_status st = check_events(ev, 1, err);
    if (st != JB_OK)
        return st;
    jb__buf one;
    jb__buf_init(&one);
    encode_event(&one, ev);
    jb__buffered *send = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        st = jb_error_set(err, JB_ECLOSED, "the client is closing");
    } else if (c->buffered_bytes + one.len > c->opts.max_buffered_bytes) {
        st = jb_error_set(err, JB_EBACKPRESSURE,
                          "publish: %zu bytes already buffered (max_buffered_bytes)",
                          c->buffered_bytes);
    } else {
        if (c->open == NULL) {
            c->open = jb__xcalloc(1, sizeof(*c->open));
            c->open->c = c;
            c->open->id = c->next_batch_id++;
            jb__buf_init(&c->open->body);
            c->window_due_ms = jb__client_now_ms() + c->opts.batch_window_ms;
        }
        jb__buf_append(&c->open->body, one.data, one.len);
        c->open->n++;
        c->buffered_bytes += one.len;
        if (c->open->n >= c->opts.max_batch ||
            (c->opts.batch_window_ms == 0 && c->sending == NULL)) {
            /* Full, or no window and nothing in flight. Without a window
             * and with a batch in flight, the event waits in the open
             * batch, which buffered_pop_locked() sends when the answer
             * comes: the batch grows with the load and the round trip. */
            send = take_open_locked(c);
        } else if (c->opts.batch_window_ms > 0 && !c->window_armed) {
            c->window_armed = 1;
            c->window.fire = window_fire;
            jb__client_alarm_arm(c, &c->window, c->window_due_ms);
        }
    }
    pthread_mutex_unlock(&c->mu);
    jb__buf_release(&one);
    if (send != NULL)
        buffered_send(c, send);
    return st;
}

/* True while a batch with an id up to @id is buffered or being sent; c->mu held. */
static int batches_pending_locked(const jb_client *c, uint64_t id)
{
    for (const jb__buffered *b = c->sending; b != NULL; b = b->next) {
        if (b->id <= id)
            return 1;
    }
    return 0;
}

jb_status jb_client_flush(jb_client *c, uint32_t timeout_ms, jb_error *err)
{
    jb_status st = jb__client_refuse_on_thread(c, "flush", err);
    if (st != JB_OK)
        return st;
    pthread_mutex_lock(&c->mu);
    uint64_t upto = c->next_batch_id - 1;
    jb__buffered *send = take_open_locked(c);
    pthread_mutex_unlock(&c->mu);
    if (send != NULL)
        buffered_send(c, send);

    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->mu);
    while (batches_pending_locked(c, upto)) {
        if (timeout_ms == 0) {
            pthread_cond_wait(&c->flushed, &c->mu);
        } else if (pthread_cond_timedwait(&c->flushed, &c->mu, &until) != 0 &&
                   batches_pending_locked(c, upto)) {
            pthread_mutex_unlock(&c->mu);
            return jb_error_set(err, JB_ETIMEDOUT,
                                "flush: buffered events still unacknowledged "
                                "after %u ms",
                                timeout_ms);
        }
    }
    st = c->flush_status;
    if (st != JB_OK) {
        jb_error_set(err, st, "%s (%llu buffered events lost)", c->flush_err.message,
                     (unsigned long long)c->flush_lost);
        c->flush_status = JB_OK;
        c->flush_lost = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}

/* ---- Acks ----------------------------------------------------------------- */

typedef struct done_call {
    jb_client_done_cb cb;
    void *userdata;
} done_call;

static void done_call_done(jb_client *c, jb_status status, const jb_error *err,
                           const uint8_t *response, size_t len, uint32_t retry_after_ms,
                           void *userdata)
{
    done_call *d = userdata;
    if (d->cb != NULL)
        d->cb(status, status == JB_OK ? NULL : err, d->userdata);
    free(d);
}

jb_status jb__client_unary_start_done(jb_client *c, const char *path, const void *req, size_t len,
                                      jb_client_done_cb cb, void *userdata, jb_error *err)
{
    done_call *d = jb__xmalloc(sizeof(*d));
    *d = (done_call){.cb = cb, .userdata = userdata};
    jb_status st = unary_start_ex(c, -1, path, req, len, 0, done_call_done, NULL, d, err);
    if (st != JB_OK)
        free(d);
    return st;
}

/* Packs an AckRequest (@nack 0) or NackRequest into a malloc'd buffer. */
static uint8_t *pack_ack(int nack, const char *group, const uint64_t *seqs, size_t n,
                         uint32_t delay_ms, size_t *len)
{
    uint8_t *out;
    if (!nack) {
        Jimbot__Infra__V1__AckRequest r = JIMBOT__INFRA__V1__ACK_REQUEST__INIT;
        r.group = (char *)group;
        r.n_sequences = n;
        r.sequences = (uint64_t *)seqs;
        *len = jimbot__infra__v1__ack_request__get_packed_size(&r);
        out = malloc(*len + 1);
        if (out == NULL)
            JB_BUG("out of memory packing an ack");
        jimbot__infra__v1__ack_request__pack(&r, out);
    } else {
        Jimbot__Infra__V1__NackRequest r = JIMBOT__INFRA__V1__NACK_REQUEST__INIT;
        r.group = (char *)group;
        r.n_sequences = n;
        r.sequences = (uint64_t *)seqs;
        r.delay_ms = delay_ms;
        *len = jimbot__infra__v1__nack_request__get_packed_size(&r);
        out = malloc(*len + 1);
        if (out == NULL)
            JB_BUG("out of memory packing a nack");
        jimbot__infra__v1__nack_request__pack(&r, out);
    }
    return out;
}

static jb_status ack_common(jb_client *c, int nack, const char *group, const uint64_t *seqs,
                            size_t n, uint32_t delay_ms, int async, jb_client_done_cb cb,
                            void *userdata, jb_error *err)
{
    if (group == NULL || group[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "%s: no group", nack ? "nack" : "ack");
    if (n > 0 && seqs == NULL)
        return jb_error_set(err, JB_EINVAL, "%s: sequences are NULL", nack ? "nack" : "ack");
    size_t len;
    uint8_t *req = pack_ack(nack, group, seqs, n, delay_ms, &len);
    int m = nack ? JB__M_NACK : JB__M_ACK;
    jb_status st;
    if (async) {
        done_call *d = jb__xmalloc(sizeof(*d));
        *d = (done_call){.cb = cb, .userdata = userdata};
        st = unary_start(c, m, NULL, req, len, done_call_done, d, err);
        if (st != JB_OK)
            free(d);
    } else {
        waiter w;
        waiter_init(&w);
        st = unary_wait(c, m, NULL, req, len, &w, err);
        waiter_release(&w);
    }
    free(req);
    return st;
}

jb_status jb_client_ack(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                        jb_error *err)
{
    return ack_common(c, 0, group, sequences, n, 0, 0, NULL, NULL, err);
}

jb_status jb_client_nack(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                         uint32_t delay_ms, jb_error *err)
{
    return ack_common(c, 1, group, sequences, n, delay_ms, 0, NULL, NULL, err);
}

jb_status jb_client_ack_async(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                              jb_client_done_cb cb, void *userdata, jb_error *err)
{
    return ack_common(c, 0, group, sequences, n, 0, 1, cb, userdata, err);
}

jb_status jb_client_nack_async(jb_client *c, const char *group, const uint64_t *sequences, size_t n,
                               uint32_t delay_ms, jb_client_done_cb cb, void *userdata,
                               jb_error *err)
{
    return ack_common(c, 1, group, sequences, n, delay_ms, 1, cb, userdata, err);
}

/* ---- Health and raw calls ------------------------------------------------- */

const char *jb_health_name(jb_health health)
{
    switch (health) {
    case JB_HEALTH_UNKNOWN:
        return "UNKNOWN";
    case JB_HEALTH_SERVING:
        return "SERVING";
    case JB_HEALTH_NOT_SERVING:
        return "NOT_SERVING";
    case JB_HEALTH_SERVICE_UNKNOWN:
        return "SERVICE_UNKNOWN";
    }
    return "UNKNOWN";
}

jb_status jb_client_health(jb_client *c, const char *service, jb_health *out, jb_error *err)
{
    Grpc__Health__V1__HealthCheckRequest r = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    r.service = (char *)(service != NULL ? service : "");
    uint8_t req[512];
    if (grpc__health__v1__health_check_request__get_packed_size(&r) > sizeof(req))
        return jb_error_set(err, JB_EINVAL, "health: service name too long");
    size_t len = grpc__health__v1__health_check_request__pack(&r, req);
    waiter w;
    waiter_init(&w);
    jb_status st = unary_wait(c, JB__M_HEALTH, NULL, req, len, &w, err);
    if (st == JB_OK) {
        Grpc__Health__V1__HealthCheckResponse *resp =
            grpc__health__v1__health_check_response__unpack(NULL, w.len, w.response);
        if (resp == NULL) {
            st = jb_error_set(err, JB_EPARSE, "Check: malformed response");
        } else {
            *out = resp->status >= 0 && resp->status <= 3 ? (jb_health)resp->status
                                                          : JB_HEALTH_UNKNOWN;
            grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
        }
    }
    waiter_release(&w);
    return st;
}

jb_status jb_client_call(jb_client *c, const char *method, const void *request, size_t request_len,
                         void **response, size_t *response_len, jb_error *err)
{
    if (method == NULL || method[0] != '/' || strchr(method + 1, '/') == NULL)
        return jb_error_set(err, JB_EINVAL, "call: method '%s' is not /package.Service/Method",
                            method != NULL ? method : "");
    uint8_t *resp = NULL;
    jb_status st = unary_call(c, method, method, request, request_len, 0, &resp, response_len, err);
    if (st == JB_OK)
        *response = resp;
    return st;
}
