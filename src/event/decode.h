/*
 * A hand decoder for jimbot.infra.v1.PublishRequest (event_bus.proto), the
 * request of EventBus.Publish, which gives the bus its jb_event array with
 * one allocation per request instead of protobuf-c's one per event, string
 * and header; and of a single Event (the stored envelope). decode.c says which bytes it
 * accepts (exactly those protobuf-c 1.4 accepts, except strings with a NUL byte and
 * requests beyond the limits below) and bounds the memory a decoded request takes.
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
    size_t size; /* bytes of the allocation (0 when empty) */
} jb__publish_req;

/*
 * Limits a PublishRequest is held to before anything is allocated; a zero
 * field is no limit. jb__decode_limits_default() gives the bus's own
 * (jimbot/event.h, jimbot/topic.h) and 10000 events per request.
 */
typedef struct jb__decode_limits {
    size_t max_events;      /* events in one request */
    size_t max_headers;     /* headers of one event */
    size_t max_id_bytes;    /* an event's id */
    size_t max_topic_bytes; /* an event's topic */
    size_t max_name_bytes;  /* an event's type, and its source */
} jb__decode_limits;

#define JB__DECODE_MAX_EVENTS 10000

jb__decode_limits jb__decode_limits_default(void);

/*
 * Decodes the @len bytes at @data into @out, held to @limits (NULL: none).
 * The payloads stay valid as long as @data does; the rest until
 * jb__publish_req_release(@out).
 *
 * Returns JB_OK; JB_EPARSE "malformed PublishRequest" for bytes that
 * protobuf-c would reject (whatever else is wrong with them); else, for the
 * first event that breaks a rule, with its index ("event N: ..."):
 * JB_ETOOBIG when it is one more than max_events; JB_EINVAL for a topic, id,
 * type or source over its limit, for more headers than max_headers (the
 * bus's messages), or when a string field (id, topic, type, source, a
 * header's key or value) holds a NUL byte; JB_ENOMEM. Nothing is allocated
 * unless the request is accepted. On failure @out is left empty (release is
 * a no-op) and @err, optional, says why.
 */
jb_status jb__publish_decode(const uint8_t *data, size_t len, const jb__decode_limits *limits,
                             jb__publish_req *out, jb_error *err);

/*
 * Decodes the @len bytes at @data as one jimbot.infra.v1.Event, with the same
 * rules but no limits, into @out (n_events 1). Unlike jb__publish_decode(), the payload is
 * copied: nothing borrows @data. JB_EPARSE says "malformed Event".
 */
jb_status jb__event_decode(const uint8_t *data, size_t len, jb__publish_req *out, jb_error *err);

/*
 * The most bytes jb__publish_decode() allocates for a request of @len bytes
 * held to @limits (NULL or zero fields: none): @len + 106 E + 16 H on LP64,
 * E and H the most events and headers the limits and @len allow (decode.c,
 * "Memory").
 */
size_t jb__publish_decode_bound(size_t len, const jb__decode_limits *limits);

/* Frees what jb__publish_decode() allocated; @req is left empty. */
void jb__publish_req_release(jb__publish_req *req);

#endif /* JB_EVENT_DECODE_H */
