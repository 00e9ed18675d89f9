/*
 * Subscriptions of the client library (include/jimbot/client.h).
 *
 * One subscription holds at most one Subscribe stream at a time, a
 * jb__stream (stream.c): three batches in flight on its call, the start
 * (send the request, receive the initial metadata), the status, and one
 * RECV_MESSAGE at a time. sub->ops counts those batches plus a pending
 * reconnect alarm; the stream is over once the count drops to zero, and only
 * then is the call released and the next step chosen (gRPC completes a
 * call's batches in any order):
 *
 *     start ──▶ streaming ──(status, ops == 0)──▶ transient? ──▶ alarm ──▶ start
 *                                                     │
 *                                                     └─ for good: on_end / sub_next error
 *
 * A stream that ends for any reason but a refusal (INVALID_ARGUMENT,
 * NOT_FOUND, UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED,
 * FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE) is started again after
 * the client's backoff; the backoff resets when a batch arrives.
 *
 * Flow control: in callback mode the next message is read after the
 * callback returns; in pull mode while fewer than max_queued_batches wait.
 * Unread messages stay in gRPC's HTTP/2 window and then on the server.
 *
 * A private group (no group given) has the name the server puts in the
 * initial metadata "jimbot-group", so that its events can be acked.
 *
 * Lifetime: a subscription is freed once it is unsubscribed, no batch or
 * alarm is outstanding and no callback runs; whichever of
 * jb_client_unsubscribe() or the client thread sees that last frees it.
 * All fields are guarded by c->mu.
 */
#include "client/internal.h"

#include "core/buf.h"
#include "event/envelope.h"

#include "jimbot/infra/v1/event_bus.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct batch_impl {
    jb_client_batch pub;
    struct batch_impl *next;
    uint8_t *bytes;
    size_t n;
    jb__envelope **envs;
    jb_event events[];
} batch_impl;

struct jb_client_sub {
    jb_client *c;
    jb_client_sub *next; /* c->subs */
    jb_client_sub_options opts;
    char *pattern;
    char *group;
    char private_group[256];
    jb_client_deliver_fn deliver;
    void *userdata;

    jb__stream s; /* the Subscribe stream, its retry alarm and attempt count */
    int ops;      /* the stream's batches and the retry alarm */

    int ended;
    jb_status end_status;
    jb_error end_err;
    int unsubscribed;
    int in_callback;
    /* jb_client_unsubscribe() is waiting for a callback to return on
     * another thread: it frees @sub itself, so nothing else may. */
    int unsub_waiting;
    pthread_cond_t cv;

    batch_impl *q_head, *q_tail;
    uint32_t q_len;
    uint64_t delivered;
    uint32_t reconnects;
};

/* ---- Batches -------------------------------------------------------------- */

static int read_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= len)
            return -1;
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

void jb_client_batch_free(jb_client_batch *batch)
{
    if (batch == NULL)
        return;
    batch_impl *b = (batch_impl *)batch;
    for (size_t i = 0; i < b->n; i++)
        jb__envelope_free(b->envs[i]);
    free(b->envs);
    free(b->bytes);
    free(b);
}

/*
 * Decodes an EventBatch (takes ownership of @bytes): the events are walked
 * on the wire (field 1, length-delimited, each an Event), so that each
 * jb_event's `encoded` points at its own bytes.
 */
static jb_status batch_decode(uint8_t *bytes, size_t len, batch_impl **out, jb_error *err)
{
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t pos = 0, i = 0;
        while (pos < len) {
            uint64_t key, l;
            if (read_varint(bytes, len, &pos, &key) != 0)
                goto malformed;
            unsigned wt = key & 7;
            if (wt == 0) {
                if (read_varint(bytes, len, &pos, &l) != 0)
                    goto malformed;
                continue;
            }
            if (wt == 1 || wt == 5) {
                size_t w = wt == 1 ? 8 : 4;
                if (len - pos < w)
                    goto malformed;
                pos += w;
                continue;
            }
            if (wt != 2 || read_varint(bytes, len, &pos, &l) != 0 || l > len - pos)
                goto malformed;
            if (key >> 3 == 1) {
                if (pass == 1) {
                    batch_impl *b = *out;
                    const jb_event *ev;
                    jb_status st =
                        jb__envelope_decode(bytes + pos, (size_t)l, &b->envs[i], &ev, err);
                    if (st != JB_OK) {
                        b->n = i;
                        jb_client_batch_free(&b->pub);
                        *out = NULL;
                        return st;
                    }
                    b->events[i] = *ev;
                    b->events[i].encoded = bytes + pos;
                    b->events[i].encoded_len = (size_t)l;
                    b->n = ++i;
                } else {
                    n++;
                }
            }
            pos += (size_t)l;
        }
        if (pass == 0) {
            batch_impl *b = jb__xcalloc(1, sizeof(*b) + n * sizeof(jb_event));
            jb__envelope **envs = jb__xcalloc(n, sizeof(*envs));
            b->bytes = bytes;
            b->envs = envs;
            b->pub.events = b->events;
            *out = b;
        }
    }
    (*out)->pub.n = (*out)->n;
    return JB_OK;
malformed:
    if (*out != NULL) {
        jb_client_batch_free(&(*out)->pub);
        *out = NULL;
    } else {
        free(bytes);
    }
    return jb_error_set(err, JB_EPARSE, "Subscribe: malformed EventBatch (%zu bytes)", len);
}

/* ---- Streams -------------------------------------------------------------- */

static int is_refusal(grpc_status_code code)
{
    switch (code) {
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_NOT_FOUND:
    case GRPC_STATUS_UNIMPLEMENTED:
    case GRPC_STATUS_PERMISSION_DENIED:
    case GRPC_STATUS_UNAUTHENTICATED:
    case GRPC_STATUS_FAILED_PRECONDITION:
    case GRPC_STATUS_ALREADY_EXISTS:
    case GRPC_STATUS_OUT_OF_RANGE:
        return 1;
    default:
        return 0;
    }
}

static void sub_free(jb_client_sub *sub)
{
    while (sub->q_head != NULL) {
        batch_impl *b = sub->q_head;
        sub->q_head = b->next;
        jb_client_batch_free(&b->pub);
    }
    pthread_cond_destroy(&sub->cv);
    free(sub->pattern);
    free(sub->group);
    free(sub);
}

/* Unlinks and frees @sub if nothing refers to it any more; c->mu held. Returns 1 if freed. */
static int sub_maybe_free_locked(jb_client_sub *sub)
{
    if (!sub->unsubscribed || sub->ops > 0 || sub->in_callback || sub->unsub_waiting ||
        sub->s.call != NULL)
        return 0;
    jb_client *c = sub->c;
    for (jb_client_sub **pp = &c->subs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == sub) {
            *pp = sub->next;
            break;
        }
    }
    sub_free(sub);
    return 1;
}

static void post_recv_locked(jb_client_sub *sub)
{
    if (!sub->unsubscribed)
        jb__stream_post_recv(&sub->s);
}

/* Starts a Subscribe stream; c->mu held, !c->closing. */
static jb_status stream_start_locked(jb_client_sub *sub, jb_error *err)
{
    Jimbot__Infra__V1__SubscribeRequest r = JIMBOT__INFRA__V1__SUBSCRIBE_REQUEST__INIT;
    r.pattern = sub->pattern;
    r.group = sub->group;
    r.max_in_flight = sub->opts.max_in_flight;
    r.deliver_policy = (Jimbot__Infra__V1__DeliverPolicy)sub->opts.start;
    r.start_sequence = sub->opts.start_sequence;
    r.start_time_ms = sub->opts.start_time_ms;
    r.ack_wait_ms = sub->opts.ack_wait_ms;
    r.max_deliver = sub->opts.max_deliver;
    size_t len = jimbot__infra__v1__subscribe_request__get_packed_size(&r);
    uint8_t *buf = malloc(len + 1);
    if (buf == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory subscribing");
    jimbot__infra__v1__subscribe_request__pack(&r, buf);
    jb__stream_start(&sub->s, JB__M_SUBSCRIBE, NULL, buf, len);
    free(buf);
    if (sub->deliver != NULL || sub->q_len < sub->opts.max_queued_batches)
        post_recv_locked(sub);
    return JB_OK;
}

/* Runs on_end for @sub without c->mu; c->mu held on entry and exit. */
static void sub_end_locked(jb_client_sub *sub, jb_status status, const jb_error *err)
{
    jb_client *c = sub->c;
    sub->ended = 1;
    sub->end_status = status;
    sub->end_err = *err;
    pthread_cond_broadcast(&sub->cv);
    if (sub->opts.on_end != NULL && !sub->unsubscribed) {
        sub->in_callback = 1;
        pthread_mutex_unlock(&c->mu);
        sub->opts.on_end(sub, status, err, sub->userdata);
        pthread_mutex_lock(&c->mu);
        sub->in_callback = 0;
        pthread_cond_broadcast(&sub->cv);
    }
}

static void retry_fire(jb__alarm *a)
{
    jb_client_sub *sub = JB__CONTAINER_OF(a, jb_client_sub, s.retry);
    jb_client *c = sub->c;
    pthread_mutex_lock(&c->mu);
    sub->ops--;
    if (sub_maybe_free_locked(sub)) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    jb_error err;
    if (sub->unsubscribed) {
        /* Freed by jb_client_unsubscribe() or when its callback returns. */
    } else if (c->closing) {
        jb_error_set(&err, JB_ECLOSED, "Subscribe: the client is closing");
        sub_end_locked(sub, JB_ECLOSED, &err);
    } else {
        sub->reconnects++;
        if (stream_start_locked(sub, &err) != JB_OK)
            sub_end_locked(sub, err.code, &err);
    }
    sub_maybe_free_locked(sub);
    pthread_mutex_unlock(&c->mu);
}

/* After each batch of the stream completes; c->mu held. */
static void stream_maybe_over_locked(jb_client_sub *sub)
{
    jb_client *c = sub->c;
    grpc_status_code code;
    jb_status st;
    jb_error err;
    uint32_t hint;
    if (!jb__stream_over(&sub->s, &code, &st, &err, &hint))
        return;
    if (sub->unsubscribed)
        return;
    if (c->closing) {
        jb_error_set(&err, JB_ECLOSED, "Subscribe: the client is closing");
        sub_end_locked(sub, JB_ECLOSED, &err);
    } else if (is_refusal(code)) {
        sub_end_locked(sub, err.code, &err);
    } else {
        jb__stream_retry(&sub->s, retry_fire, 0);
    }
}

static void on_start(jb__tag *tag, int ok)
{
    jb_client_sub *sub = JB__CONTAINER_OF(tag, jb_client_sub, s.t_start);
    jb_client *c = sub->c;
    pthread_mutex_lock(&c->mu);
    sub->ops--;
    for (size_t i = 0; ok && i < sub->s.md_initial.count; i++) {
        const grpc_metadata *m = &sub->s.md_initial.metadata[i];
        if (grpc_slice_str_cmp(m->key, "jimbot-group") != 0)
            continue;
        size_t n = GRPC_SLICE_LENGTH(m->value);
        if (n >= sizeof(sub->private_group))
            n = sizeof(sub->private_group) - 1;
        memcpy(sub->private_group, GRPC_SLICE_START_PTR(m->value), n);
        sub->private_group[n] = '\0';
    }
    jb__stream_sent(&sub->s);
    stream_maybe_over_locked(sub);
    sub_maybe_free_locked(sub);
    pthread_mutex_unlock(&c->mu);
}

static void on_status(jb__tag *tag, int ok)
{
    jb_client_sub *sub = JB__CONTAINER_OF(tag, jb_client_sub, s.t_status);
    jb_client *c = sub->c;
    pthread_mutex_lock(&c->mu);
    sub->ops--;
    sub->s.status_done = 1;
    stream_maybe_over_locked(sub);
    sub_maybe_free_locked(sub);
    pthread_mutex_unlock(&c->mu);
}

static void on_recv(jb__tag *tag, int ok)
{
    jb_client_sub *sub = JB__CONTAINER_OF(tag, jb_client_sub, s.t_recv);
    jb_client *c = sub->c;
    pthread_mutex_lock(&c->mu);
    sub->ops--;
    grpc_byte_buffer *bb = jb__stream_take_recv(&sub->s);
    if (!ok || bb == NULL) {
        /* The stream is over; its status tells why. */
        if (bb != NULL)
            grpc_byte_buffer_destroy(bb);
        stream_maybe_over_locked(sub);
        sub_maybe_free_locked(sub);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    pthread_mutex_unlock(&c->mu);

    /* Copy and decode without the lock. */
    size_t len;
    uint8_t *bytes = jb__client_read_all(bb, &len);
    grpc_byte_buffer_destroy(bb);
    batch_impl *b = NULL;
    jb_error err;
    jb_status st = bytes != NULL ? batch_decode(bytes, len, &b, &err)
                                 : jb_error_set(&err, JB_EPARSE, "Subscribe: unreadable message");

    pthread_mutex_lock(&c->mu);
    if (st != JB_OK) {
        /* A server bug: end this stream; the subscription starts a new one. */
        if (sub->s.call != NULL)
            grpc_call_cancel_with_status(sub->s.call, GRPC_STATUS_INTERNAL, err.message, NULL);
    } else {
        sub->s.attempt = 0;
        sub->delivered += b->n;
        if (sub->deliver != NULL) {
            if (!sub->unsubscribed && b->n > 0) {
                sub->in_callback = 1;
                pthread_mutex_unlock(&c->mu);
                sub->deliver(sub, b->events, b->n, sub->userdata);
                pthread_mutex_lock(&c->mu);
                sub->in_callback = 0;
                pthread_cond_broadcast(&sub->cv);
            }
            jb_client_batch_free(&b->pub);
            post_recv_locked(sub);
        } else {
            if (sub->q_tail != NULL)
                sub->q_tail->next = b;
            else
                sub->q_head = b;
            sub->q_tail = b;
            sub->q_len++;
            pthread_cond_broadcast(&sub->cv);
            if (sub->q_len < sub->opts.max_queued_batches)
                post_recv_locked(sub);
        }
    }
    stream_maybe_over_locked(sub);
    sub_maybe_free_locked(sub);
    pthread_mutex_unlock(&c->mu);
}

/* ---- Public functions ----------------------------------------------------- */

jb_status jb_client_subscribe(jb_client *c, const jb_client_sub_options *opts,
                              jb_client_deliver_fn deliver, void *userdata, jb_client_sub **out,
                              jb_error *err)
{
    if (opts == NULL || opts->pattern == NULL || opts->pattern[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "subscribe: no pattern");
    if ((unsigned)opts->start > JB_CLIENT_START_FROM_TIME)
        return jb_error_set(err, JB_EINVAL, "subscribe: unknown start policy %d", (int)opts->start);
    jb_client_sub *sub = calloc(1, sizeof(*sub));
    if (sub == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory subscribing");
    sub->c = c;
    sub->opts = *opts;
    if (sub->opts.max_queued_batches == 0)
        sub->opts.max_queued_batches = 16;
    sub->pattern = strdup(opts->pattern);
    sub->group = strdup(opts->group != NULL ? opts->group : "");
    if (sub->pattern == NULL || sub->group == NULL) {
        free(sub->pattern);
        free(sub->group);
        free(sub);
        return jb_error_set(err, JB_ENOMEM, "out of memory subscribing");
    }
    sub->opts.pattern = sub->pattern;
    sub->opts.group = sub->group;
    sub->deliver = deliver;
    sub->userdata = userdata;
    pthread_cond_init(&sub->cv, NULL);
    jb__stream_init(&sub->s, c, "Subscribe", &sub->ops, on_start, on_recv, on_status);

    pthread_mutex_lock(&c->mu);
    jb_status st;
    if (c->closing)
        st = jb_error_set(err, JB_ECLOSED, "the client is closing");
    else
        st = stream_start_locked(sub, err);
    if (st != JB_OK) {
        pthread_mutex_unlock(&c->mu);
        sub_free(sub);
        return st;
    }
    sub->next = c->subs;
    c->subs = sub;
    pthread_mutex_unlock(&c->mu);
    *out = sub;
    return JB_OK;
}

jb_status jb_client_sub_next(jb_client_sub *sub, int timeout_ms, jb_client_batch **out,
                             jb_error *err)
{
    jb_client *c = sub->c;
    if (sub->deliver != NULL)
        return jb_error_set(err, JB_EINVAL, "sub_next: the subscription has a deliver callback");
    struct timespec until = jb__client_realtime_in(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (sub->q_head != NULL) {
            batch_impl *b = sub->q_head;
            sub->q_head = b->next;
            if (sub->q_head == NULL)
                sub->q_tail = NULL;
            sub->q_len--;
            b->next = NULL;
            post_recv_locked(sub);
            pthread_mutex_unlock(&c->mu);
            *out = &b->pub;
            return JB_OK;
        }
        if (sub->ended) {
            jb_status st = sub->end_status;
            if (err != NULL)
                *err = sub->end_err;
            pthread_mutex_unlock(&c->mu);
            return st;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&sub->cv, &c->mu);
        else if (pthread_cond_timedwait(&sub->cv, &c->mu, &until) != 0 && sub->q_head == NULL &&
                 !sub->ended)
            break;
    }
    pthread_mutex_unlock(&c->mu);
    return jb_error_set(err, JB_ETIMEDOUT, "sub_next: no batch within %d ms", timeout_ms);
}

const char *jb_client_sub_group(const jb_client_sub *sub, char *buf, size_t size)
{
    jb_client *c = sub->c;
    if (size == 0)
        return buf;
    pthread_mutex_lock(&c->mu);
    const char *g = sub->group[0] ? sub->group : sub->private_group;
    snprintf(buf, size, "%s", g);
    pthread_mutex_unlock(&c->mu);
    return buf;
}

uint64_t jb_client_sub_delivered(const jb_client_sub *sub)
{
    pthread_mutex_lock(&sub->c->mu);
    uint64_t n = sub->delivered;
    pthread_mutex_unlock(&sub->c->mu);
    return n;
}

uint32_t jb_client_sub_reconnects(const jb_client_sub *sub)
{
    pthread_mutex_lock(&sub->c->mu);
    uint32_t n = sub->reconnects;
    pthread_mutex_unlock(&sub->c->mu);
    return n;
}

void jb_client_unsubscribe(jb_client_sub *sub)
{
    if (sub == NULL)
        return;
    jb_client *c = sub->c;
    pthread_mutex_lock(&c->mu);
    sub->unsubscribed = 1;
    jb__stream_cancel(&sub->s);
    if (!jb__client_on_thread(c)) {
        sub->unsub_waiting = 1;
        while (sub->in_callback)
            pthread_cond_wait(&sub->cv, &c->mu);
        sub->unsub_waiting = 0;
    }
    sub_maybe_free_locked(sub);
    pthread_mutex_unlock(&c->mu);
}

jb_status jb_client_sub_ack(jb_client_sub *sub, const uint64_t *sequences, size_t n, jb_error *err)
{
    char group[256];
    jb_client_sub_group(sub, group, sizeof(group));
    if (group[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "ack: the server has not named the private group");
    return jb_client_ack(sub->c, group, sequences, n, err);
}

jb_status jb_client_sub_ack_async(jb_client_sub *sub, const uint64_t *sequences, size_t n,
                                  jb_client_done_cb cb, void *userdata, jb_error *err)
{
    char group[256];
    jb_client_sub_group(sub, group, sizeof(group));
    if (group[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "ack: the server has not named the private group");
    return jb_client_ack_async(sub->c, group, sequences, n, cb, userdata, err);
}

void jb__client_subs_cancel_all(jb_client *c)
{
    for (jb_client_sub *sub = c->subs; sub != NULL; sub = sub->next)
        jb__stream_cancel(&sub->s);
}

void jb__client_subs_free_all(jb_client *c)
{
    while (c->subs != NULL) {
        jb_client_sub *sub = c->subs;
        c->subs = sub->next;
        sub_free(sub);
    }
}
