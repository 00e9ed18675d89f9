/*
 * Envelope encoding and decoding (src/event/envelope.h).
 *
 * Encoding is written by hand against the protobuf wire format (varints and
 * length-delimited fields, in field-number order, defaults left out, as
 * every protobuf encoder does): it runs once per published event and needs
 * no intermediate structs. Decoding is decode.c's walk over one
 * Event, which checks the input as protobuf-c would (malformed bytes are an
 * error, never a crash) and makes one allocation for the event, its headers,
 * strings and payload.
 */
#include "event/envelope.h"

#include "event/decode.h"

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

size_t jb__envelope_payload_offset(const jb_event *ev)
{
    size_t n = str_field_size(ev->id) + str_field_size(ev->topic) + str_field_size(ev->type) +
               str_field_size(ev->source);
    if (ev->timestamp_ms != 0)
        n += 1 + varint_size((uint64_t)ev->timestamp_ms);
    return n + 1 + varint_size(ev->payload_len);
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

/* jb__event_decode()'s block, which starts with the event. */
struct jb__envelope {
    jb_event ev;
};

jb_status jb__envelope_decode(const void *data, size_t len, jb__envelope **out, const jb_event **ev,
                              jb_error *err)
{
    jb__publish_req req;
    jb_error derr;
    jb_status st = jb__event_decode(data, len, &req, &derr);
    if (st == JB_ENOMEM)
        return jb_error_set(err, st, "out of memory decoding an event");
    if (st == JB_EPARSE)
        return jb_error_set(err, st, "malformed event envelope (%zu bytes)", len);
    if (st != JB_OK)
        return jb_error_set(err, JB_EPARSE, "malformed event envelope: %s", derr.message);
    *out = (jb__envelope *)req.events;
    *ev = &(*out)->ev;
    return JB_OK;
}

void jb__envelope_free(jb__envelope *env)
{
    free(env);
}
