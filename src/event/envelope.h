/*
 * The bus's event envelope on the wire and in the log: a
 * jimbot.infra.v1.Event message (proto/jimbot/infra/v1/event_bus.proto).
 *
 * The log stores each event's envelope without its sequence and delivery
 * attempt (fields 8 and 9); a delivery appends those two fields, which
 * protobuf reads as part of the same message (concatenated encodings
 * merge). So an event is encoded once, at publish, and forwarded as bytes.
 */
#ifndef JB_EVENT_ENVELOPE_H
#define JB_EVENT_ENVELOPE_H

#include "jimbot/event.h"
#include "jimbot/status.h"

#include <stddef.h>
#include <stdint.h>

/*
 * Where jb__envelope_encode() puts @ev's payload bytes in the envelope (the
 * offset past field 6's tag and length). Meaningless when payload_len is 0.
 */
size_t jb__envelope_payload_offset(const jb_event *ev);

/* The size of @ev's envelope as jb__envelope_encode() writes it. */
size_t jb__envelope_size(const jb_event *ev);

/*
 * Writes @ev's envelope (fields 1-7; sequence and attempt left out) to @out,
 * which must hold jb__envelope_size(@ev) bytes; returns the bytes written.
 */
size_t jb__envelope_encode(const jb_event *ev, uint8_t *out);

/* The largest suffix jb__envelope_suffix() writes. */
#define JB_ENVELOPE_SUFFIX_MAX 16

/* Writes fields 8 (sequence) and 9 (delivery attempt); returns the bytes written. */
size_t jb__envelope_suffix(uint64_t sequence, uint32_t delivery_attempt, uint8_t *out);

/*
 * A decoded envelope: the jb_event's pointers point into one allocation
 * owned by the struct (nothing borrows the decoded bytes). Free with
 * jb__envelope_free().
 */
typedef struct jb__envelope jb__envelope;

/*
 * Decodes @len bytes. JB_EPARSE with a reason for malformed protobuf or an
 * event whose strings are not valid (a NUL byte). On success *@out holds the event; its
 * `encoded` field is not set (the caller has the bytes).
 */
jb_status jb__envelope_decode(const void *data, size_t len, jb__envelope **out, const jb_event **ev,
                              jb_error *err);
void jb__envelope_free(jb__envelope *env);

#endif /* JB_EVENT_ENVELOPE_H */
