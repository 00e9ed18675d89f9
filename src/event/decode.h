/*
 * A hand decoder for jimbot.infra.v1.PublishRequest (event_bus.proto), the
 * request of EventBus.Publish, which gives the bus its jb_event array with
 * one allocation per request instead of protobuf-c's one per event, string
 * and header; and of a single Event (the stored envelope). publish_decode.c says which bytes it
 * accepts: exactly those protobuf-c 1.4 accepts, except strings with a NUL byte.
 */
#ifndef JB_EVENT_DECODE_H
#define JB_EVENT_DECODE_H

#include "jimbot/event.h"
#include "jimbot/status.h"

#include <stddef.h>
#include <stdint.h>

/*
 * A decoded request: @events[0..n_events) with their headers and
 * NUL-terminated strings in one allocation that the struct owns. Each
 * event's payload points into the bytes that were decoded (NULL when
 * empty). An absent string is "" (as protobuf-c gives it); sequence and
 * delivery_attempt are as sent (the bus ignores them on publish); encoded is
 * left NULL.
 */
typedef struct jb__publish_req {
    jb_event *events;
    size_t n_events;
} jb__publish_req;

/*
 * Decodes the @len bytes at @data into @out. The payloads stay valid as long
 * as @data does; the rest until jb__publish_req_release(@out).
 *
 * Returns JB_OK; JB_EPARSE "malformed PublishRequest" for bytes that
 * protobuf-c would reject; JB_EINVAL when a string field (id, topic, type,
 * source, a header's key or value) holds a NUL byte, with the event's index
 * and the field; JB_ENOMEM. On failure @out is left empty (release is a
 * no-op) and @err, optional, says why.
 */
jb_status jb__publish_decode(const uint8_t *data, size_t len, jb__publish_req *out, jb_error *err);

/*
 * Decodes the @len bytes at @data as one jimbot.infra.v1.Event, with the same
 * rules, into @out (n_events 1). Unlike jb__publish_decode(), the payload is
 * copied: nothing borrows @data. JB_EPARSE says "malformed Event".
 */
jb_status jb__event_decode(const uint8_t *data, size_t len, jb__publish_req *out, jb_error *err);

/* Frees what jb__publish_decode() allocated; @req is left empty. */
void jb__publish_req_release(jb__publish_req *req);

#endif /* JB_EVENT_DECODE_H */
