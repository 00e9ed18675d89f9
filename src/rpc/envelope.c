/*
 * Envelope encoding and decoding (src/rpc/envelope.h).
 *
 * Encoding is written by hand against the protobuf wire format (varints and
 * length-delimited fields, in field-number order, defaults left out, as
 * every protobuf encoder does): it runs once per published event and needs
 * no intermediate structs. Decoding goes through protobuf-c, which checks
 * the input; malformed bytes are an error, never a crash.
 */
#include "rpc/envelope.h"

#include "jimbot/infra/v1/event_bus.pb-c.h"

#include <stdlib.h>
#include <string.h>

enum { WT_VARINT = 0, WT_LEN = 2 };

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static size_t len_field_size(size_t len)
{
    return 1 + varint_size(len) + len;
}

static size_t str_field_size(const char *s)
{
    return s != NULL && s[0] ? len_field_size(strlen(s)) : 0;
}

static size_t put_len_field(uint8_t *p, unsigned field, const void *data, size_t len)
{
    size_t n = put_varint(p, (uint64_t)field << 3 | WT_LEN);
    n += put_varint(p + n, len);
    if (len > 0)
        memcpy(p + n, data, len);
    return n + len;
}

static size_t put_str_field(uint8_t *p, unsigned field, const char *s)
{
    return s != NULL && s[0] ? put_len_field(p, field, s, strlen(s)) : 0;
}

static size_t header_entry_size(const jb_header *h)
{
    return str_field_size(h->key) + str_field_size(h->value);
}

size_t jb__envelope_size(const jb_event *ev)
{
    size_t n = str_field_size(ev->id) + str_field_size(ev->topic) + str_field_size(ev->type) +
               str_field_size(ev->source);
    if (ev->timestamp_ms != 0)
        n += 1 + varint_size((uint64_t)ev->timestamp_ms);
    if (ev->payload_len > 0)
        n += len_field_size(ev->payload_len);
    for (size_t i = 0; i < ev->n_headers; i++)
        n += len_field_size(header_entry_size(&ev->headers[i]));
    return n;
}

size_t jb__envelope_encode(const jb_event *ev, uint8_t *out)
{
    size_t n = 0;
    n += put_str_field(out + n, 1, ev->id);
    n += put_str_field(out + n, 2, ev->topic);
    n += put_str_field(out + n, 3, ev->type);
    if (ev->timestamp_ms != 0) {
        n += put_varint(out + n, 4 << 3 | WT_VARINT);
        n += put_varint(out + n, (uint64_t)ev->timestamp_ms);
    }
    n += put_str_field(out + n, 5, ev->source);
    if (ev->payload_len > 0)
        n += put_len_field(out + n, 6, ev->payload, ev->payload_len);
    for (size_t i = 0; i < ev->n_headers; i++) {
        const jb_header *h = &ev->headers[i];
        n += put_varint(out + n, 7 << 3 | WT_LEN);
        n += put_varint(out + n, header_entry_size(h));
        n += put_str_field(out + n, 1, h->key);
        n += put_str_field(out + n, 2, h->value);
    }
    return n;
}

size_t jb__envelope_suffix(uint64_t sequence, uint32_t delivery_attempt, uint8_t *out)
{
    size_t n = 0;
    if (sequence != 0) {
        n += put_varint(out + n, 8 << 3 | WT_VARINT);
        n += put_varint(out + n, sequence);
    }
    if (delivery_attempt != 0) {
        n += put_varint(out + n, 9 << 3 | WT_VARINT);
        n += put_varint(out + n, delivery_attempt);
    }
    return n;
}

struct jb__envelope {
    Jimbot__Infra__V1__Event *msg;
    jb_event ev;
    jb_header headers[];
};

jb_status jb__envelope_decode(const void *data, size_t len, jb__envelope **out, const jb_event **ev,
                              jb_error *err)
{
    Jimbot__Infra__V1__Event *msg = jimbot__infra__v1__event__unpack(NULL, len, data);
    if (msg == NULL)
        return jb_error_set(err, JB_EPARSE, "malformed event envelope (%zu bytes)", len);
    jb__envelope *env = malloc(sizeof(*env) + msg->n_headers * sizeof(jb_header));
    if (env == NULL) {
        jimbot__infra__v1__event__free_unpacked(msg, NULL);
        return jb_error_set(err, JB_ENOMEM, "out of memory decoding an event");
    }
    env->msg = msg;
    for (size_t i = 0; i < msg->n_headers; i++) {
        env->headers[i].key = msg->headers[i]->key;
        env->headers[i].value = msg->headers[i]->value;
    }
    env->ev = (jb_event){
        .id = msg->id,
        .topic = msg->topic,
        .type = msg->type,
        .source = msg->source,
        .timestamp_ms = msg->timestamp_ms,
        .payload = msg->payload.data,
        .payload_len = msg->payload.len,
        .headers = env->headers,
        .n_headers = msg->n_headers,
        .sequence = msg->sequence,
        .delivery_attempt = msg->delivery_attempt,
    };
    *out = env;
    *ev = &env->ev;
    return JB_OK;
}

void jb__envelope_free(jb__envelope *env)
{
    if (env == NULL)
        return;
    jimbot__infra__v1__event__free_unpacked(env->msg, NULL);
    free(env);
}
