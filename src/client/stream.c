/*
 * The plumbing of one server-streaming call (jb__stream, src/client/internal.h),
 * shared by subscriptions (sub.c) and GPU lease streams (infra.c).
 *
 * A stream sends one request and closes its side at once; then three kinds
 * of batch are in flight on its call: the start (send the request, receive
 * the initial metadata), the status, and at most one RECV_MESSAGE. gRPC
 * completes them in any order, so the owner counts them, together with its
 * retry alarm, in one counter (*s->ops) and the stream is over only once
 * that counter is zero: jb__stream_over() then releases the call and says
 * how it ended. What to do next (start again after the backoff, end for
 * good) is the owner's choice.
 *
 * Threading: every function runs under c->mu (the rules in internal.h); the
 * tag handlers are the owner's and run on the client thread. This file knows
 * nothing of its owners' messages: the request comes packed, the messages
 * are handed back as byte buffers.
 */
#include "client/internal.h"

#include <grpc/support/time.h>
#include <string.h>

void jb__stream_init(jb__stream *s, jb_client *c, const char *name, int *ops,
                     void (*on_start)(jb__tag *, int), void (*on_recv)(jb__tag *, int),
                     void (*on_status)(jb__tag *, int))
{
    s->c = c;
    s->name = name;
    s->ops = ops;
    s->t_start.fn = on_start;
    s->t_recv.fn = on_recv;
    s->t_status.fn = on_status;
}

void jb__stream_start(jb__stream *s, int m, const char *path, const void *req, size_t len)
{
    jb_client *c = s->c;
    grpc_slice msg = grpc_slice_from_copied_buffer(req, len);
    s->send = grpc_raw_byte_buffer_create(&msg, 1);
    grpc_slice_unref(msg);

    if (m >= 0) {
        s->call = grpc_channel_create_registered_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                      c->cq, c->methods[m],
                                                      gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    } else {
        grpc_slice method = grpc_slice_from_copied_string(path);
        s->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, method,
                                           NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        grpc_slice_unref(method);
    }
    grpc_metadata_array_init(&s->md_initial);
    grpc_metadata_array_init(&s->md_trailing);
    s->details = grpc_empty_slice();
    s->status_done = 0;
    s->recv_posted = 0;

    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->md_initial;
    grpc_op st_op;
    memset(&st_op, 0, sizeof(st_op));
    st_op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st_op.data.recv_status_on_client.trailing_metadata = &s->md_trailing;
    st_op.data.recv_status_on_client.status = &s->status;
    st_op.data.recv_status_on_client.status_details = &s->details;
    if (grpc_call_start_batch(s->call, ops, 4, &s->t_start, NULL) != GRPC_CALL_OK ||
        grpc_call_start_batch(s->call, &st_op, 1, &s->t_status, NULL) != GRPC_CALL_OK)
        JB_BUG("cannot start a call of %s", s->name);
    *s->ops += 2;
}

void jb__stream_post_recv(jb__stream *s)
{
    if (s->call == NULL || s->recv_posted || s->status_done || s->c->closing)
        return;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv;
    if (grpc_call_start_batch(s->call, &op, 1, &s->t_recv, NULL) != GRPC_CALL_OK)
        JB_BUG("cannot post RECV_MESSAGE on a stream of %s", s->name);
    s->recv_posted = 1;
    (*s->ops)++;
}

grpc_byte_buffer *jb__stream_take_recv(jb__stream *s)
{
    grpc_byte_buffer *bb = s->recv;
    s->recv = NULL;
    s->recv_posted = 0;
    return bb;
}

void jb__stream_sent(jb__stream *s)
{
    if (s->send != NULL) {
        grpc_byte_buffer_destroy(s->send);
        s->send = NULL;
    }
}

int jb__stream_over(jb__stream *s, grpc_status_code *code, jb_status *st, jb_error *err,
                    uint32_t *retry_after_ms)
{
    if (*s->ops > 0 || s->call == NULL)
        return 0;
    *code = s->status;
    jb_error_clear(err);
    *st = jb__client_map_status(s->status, s->name, s->details, err);
    *retry_after_ms = jb__client_retry_after(&s->md_trailing);
    grpc_call_unref(s->call);
    s->call = NULL;
    grpc_metadata_array_destroy(&s->md_initial);
    grpc_metadata_array_destroy(&s->md_trailing);
    grpc_slice_unref(s->details);
    jb__stream_sent(s);
    return 1;
}

void jb__stream_retry(jb__stream *s, void (*fire)(jb__alarm *a), int64_t until_ms)
{
    int64_t now = jb__client_now_ms();
    s->attempt++;
    int64_t due = now + jb__client_backoff(s->c, s->attempt);
    if (until_ms != 0 && due > until_ms)
        due = until_ms;
    s->retry.fire = fire;
    (*s->ops)++;
    jb__client_alarm_arm(s->c, &s->retry, due);
}

void jb__stream_cancel(jb__stream *s)
{
    if (s->call != NULL)
        grpc_call_cancel(s->call, NULL);
}
