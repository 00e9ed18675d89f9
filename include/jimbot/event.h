/*
 * jimbot/event.h: the event as the C API sees it.
 *
 * Shared by the engine (jimbot/bus.h) and the client library
 * (jimbot/client.h), so that code written against one reads events from the
 * other unchanged. Plain data with borrowed pointers: the header says, per
 * function, how long they stay valid. No dependency beyond the C library, so
 * that C++ programs can include it without libuv.
 */
#ifndef JIMBOT_EVENT_H
#define JIMBOT_EVENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Limits every publish is held to (the bus refuses an event beyond them,
 * and jimbotd's decoder refuses a request before decoding it): an id of at
 * most JB_EVENT_MAX_ID_BYTES, a type and a source of at most
 * JB_EVENT_MAX_NAME_BYTES each, and by default at most
 * JB_EVENT_MAX_HEADERS headers (jb_bus_options.max_headers). A topic's
 * limits are in jimbot/topic.h.
 */
#define JB_EVENT_MAX_ID_BYTES   256
#define JB_EVENT_MAX_NAME_BYTES 256
#define JB_EVENT_MAX_HEADERS    64

typedef struct jb_header {
    const char *key;
    const char *value;
} jb_header;

/*
 * An event. On publish, the caller fills id (may be NULL or empty: no
 * deduplication), topic, type, source, timestamp_ms (0: the bus's clock),
 * payload and headers; sequence and delivery_attempt are ignored. On
 * delivery every field is set, and `encoded` holds the event serialized as a
 * jimbot.infra.v1.Event message, ready to be forwarded without re-encoding:
 *   - from the bus engine (jb_bus deliver callbacks): the envelope as stored,
 *     WITHOUT sequence and delivery attempt; append fields 8 (sequence)
 *     and 9 (delivery_attempt) as varints (protobuf merges concatenated
 *     encodings) to get the full message, as jimbotd does;
 *   - from the client library (jb_client subscriptions): the bytes as
 *     received, sequence and delivery attempt included.
 */
typedef struct jb_event {
    const char *id;
    const char *topic;
    const char *type;
    const char *source;
    int64_t timestamp_ms;
    const void *payload;
    size_t payload_len;
    const jb_header *headers;
    size_t n_headers;
    uint64_t sequence;
    uint32_t delivery_attempt;
    const void *encoded;
    size_t encoded_len;
} jb_event;

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_EVENT_H */
