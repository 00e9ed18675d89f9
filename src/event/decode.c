/*
 * PublishRequest decoding by hand (src/event/decode.h).
 *
 * Why: protobuf-c's unpack allocates once per Event, per string, per header
 * entry and per map-entry message; under a durable publish load that was
 * about a sixth of jimbotd's CPU. This decoder walks the wire format twice
 * over the same bytes:
 *
 *   pass 1  checks every byte, counts events, headers and string bytes, and
 *           checks each event against the limits (below), allocating nothing;
 *   (one malloc: [jb_event x n][jb_header x h][strings, each NUL-terminated])
 *   pass 2  fills that block; payloads are not copied but point into the input.
 *
 * The same walk decodes a single Event (jb__event_decode, for the envelope
 * read back from the log or received by a subscriber); then the payload is
 * copied into the block too, so that the event does not borrow the input.
 *
 * What it accepts is what protobuf-c 1.4 accepts, which the differential unit
 * test (tests/unit/test_event.c) checks against protobuf-c itself:
 *
 *   - a key is a varint of at most 5 bytes whose first byte is not 0x00-0x07
 *     (field number 0 without a continuation); the field number keeps 32
 *     bits, so a padded key of a known field is that field;
 *   - wire types 0 (varint, at most 10 bytes), 1 (8 bytes), 2 (a length of
 *     at most 5 bytes, then that many bytes) and 5 (4 bytes); the group wire
 *     types 3 and 4, and 6 and 7, are malformed, for known and unknown fields;
 *   - unknown fields, in PublishRequest, Event and the header map entry, are
 *     skipped;
 *   - a known field with another wire type than its own is malformed (no
 *     packed form: none of our scalars is repeated);
 *   - a singular field given twice: the last wins; repeated fields (events,
 *     headers) accumulate; a map entry without key or value has "" there;
 *     two entries with the same key are both kept, in order, as protobuf-c
 *     keeps them (the bus stores headers as a list, so a consumer sees both);
 *   - fields 8 and 9 (sequence, delivery_attempt) are decoded too (the bus
 *     ignores them on publish).
 *
 * One deliberate difference: a string (id, topic, type, source, a header's
 * key or value) holding a NUL byte. protobuf-c keeps it, and every C reader
 * then sees the string cut at the NUL, so the event would be stored other
 * than it was sent; here it is refused (JB_EINVAL, naming the event and the
 * field). Only the strings the event ends with count (an earlier value of a
 * field given twice does not), and malformed bytes anywhere in the request
 * win over a NUL byte. Payloads are bytes and may hold anything.
 *
 * Limits (jb__decode_limits, from jimbotd's configuration) apply on top of
 * that, to bytes protobuf-c accepts: the first event that breaks one is
 * refused with the bus's own message ("event N: ..."), checked in the bus's
 * order: one event more than max_events (JB_ETOOBIG), then the topic's, the
 * id's, the type's and source's lengths and the number of headers
 * (JB_EINVAL), then a NUL byte. Malformed bytes anywhere win over all of
 * them, so a refusal never depends on how far the walk got.
 *
 * Memory: a request of L bytes with E events and H headers takes one block
 * of exactly E*sizeof(jb_event) + H*sizeof(jb_header) + S + 4E + 2H bytes,
 * where S, the strings' bytes, is at most L - 2E - 2H (an event and a header
 * entry each take at least 2 bytes of framing). So
 *
 *     block <= L + E*(sizeof(jb_event) + 2) + H*sizeof(jb_header)
 *           =  L + 106 E + 16 H                      (LP64)
 *
 * An empty event is 2 bytes on the wire and 108 decoded (54 times), an empty
 * header 2 and 18 (9 times): the ratio to L alone is unbounded by anything
 * but the limits. With max_events E_max and max_headers H_max, the block is
 * at most L + E_max * (106 + 16 H_max): with jimbotd's defaults (10000 and
 * 64) L + 11.3 MB, so 1.7 L for a 16 MiB request; without the limits a
 * 16 MiB request of empty events took 900 MB. jb__event_decode copies the
 * payload too: its block is at most 2L + 106 + 16H.
 *
 * Every count is bounded by the input's length, so the block's size cannot
 * overflow for any input a gRPC server accepts.
 *
 * No dependency beyond the C library and jimbot's headers for status,
 * event and topic limits: no protobuf-c, no gRPC. Any thread; no state.
 */
#include "event/decode.h"

#include "jimbot/topic.h"

#include <stdlib.h>
#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* Event's string fields, in jb_event's order; field numbers 1, 2, 3, 5. */
enum { S_ID, S_TOPIC, S_TYPE, S_SOURCE, N_STR };
static const char *const str_names[N_STR] = {"id", "topic", "type", "source"};

typedef struct span {
    const uint8_t *p;
    size_t len;
} span;

typedef struct reader {
    const uint8_t *p, *end;
} reader;

/* A varint of at most @max_bytes; bits past 64 are dropped. 0 or -1. */
static int get_varint_max(reader *r, size_t max_bytes, uint64_t *out)
{
    if (r->p < r->end && r->p[0] < 0x80) { /* the common case: one byte */
        *out = *r->p++;
        return 0;
    }
    size_t max = (size_t)(r->end - r->p);
    if (max > max_bytes)
        max = max_bytes;
    uint64_t v = 0;
    for (size_t i = 0; i < max; i++) {
        uint8_t b = r->p[i];
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            r->p += i + 1;
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* A field's key (the reader is not at its end). */
static int get_key(reader *r, uint32_t *field, unsigned *wire_type)
{
    uint64_t v;
    if ((r->p[0] & 0xf8) == 0 || get_varint_max(r, 5, &v) != 0)
        return -1;
    *field = (uint32_t)(v >> 3);
    *wire_type = (unsigned)(v & 7);
    return 0;
}

/* A length-delimited value's bytes. */
static int get_len(reader *r, span *out)
{
    uint64_t n;
    if (get_varint_max(r, 5, &n) != 0 || n > (uint64_t)(r->end - r->p))
        return -1;
    out->p = r->p;
    out->len = (size_t)n;
    r->p += n;
    return 0;
}

static int skip_fixed(reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return -1;
    r->p += n;
    return 0;
}

/* Skips an unknown field's value. */
static int skip_value(reader *r, unsigned wire_type)
{
    uint64_t v;
    span s;
    switch (wire_type) {
    case WT_VARINT:
        return get_varint_max(r, 10, &v);
    case WT_I64:
        return skip_fixed(r, 8);
    case WT_LEN:
        return get_len(r, &s);
    case WT_I32:
        return skip_fixed(r, 4);
    default: /* 3 and 4 (groups), 6 and 7 */
        return -1;
    }
}

static int has_nul(span s)
{
    return s.len > 0 && memchr(s.p, 0, s.len) != NULL;
}

/* A header: map entry {string key = 1; string value = 2;}. */
static int parse_header(span in, span *key, span *value)
{
    reader r = {in.p, in.p + in.len};
    *key = *value = (span){NULL, 0};
    while (r.p < r.end) {
        uint32_t f;
        unsigned wt;
        if (get_key(&r, &f, &wt) != 0)
            return -1;
        if (f == 1 || f == 2) {
            if (wt != WT_LEN || get_len(&r, f == 1 ? key : value) != 0)
                return -1;
        } else if (skip_value(&r, wt) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Where pass 2 writes; NULL in pass 1. */
typedef struct sink {
    jb_event *ev;
    jb_header *h;
    char *s;
    int copy_payloads;
} sink;

/* What pass 1 learns. */
typedef struct tally {
    int copy_payloads;               /* set by the caller: count the payloads' bytes too */
    const jb__decode_limits *limits; /* set by the caller; may be NULL */
    size_t n_events, n_headers, bytes;
    jb_status bad; /* the first event that breaks a rule: why */
    jb_error why;
} tally;

static int over(size_t n, size_t limit)
{
    return limit > 0 && n > limit;
}

/*
 * Notes why event t->n_events breaks a rule, if it does and none before it
 * did (pass 1). @nul names its first string holding a NUL byte, or is NULL.
 * The order and the messages are the bus's (validate_event in bus.c).
 */
static void check_event(tally *t, const span *str, size_t n_headers, const char *nul)
{
    static const jb__decode_limits none = {0};
    const jb__decode_limits *l = t->limits != NULL ? t->limits : &none;
    size_t i = t->n_events;
    if (t->bad != JB_OK)
        return;
    if (l->max_events > 0 && i == l->max_events)
        t->bad = jb_error_set(&t->why, JB_ETOOBIG, "event %zu: more than %zu events in one request",
                              i, l->max_events);
    else if (over(str[S_TOPIC].len, l->max_topic_bytes))
        t->bad =
            jb_error_set(&t->why, JB_EINVAL, "event %zu: topic is %zu bytes long (at most %zu)", i,
                         str[S_TOPIC].len, l->max_topic_bytes);
    else if (over(str[S_ID].len, l->max_id_bytes))
        t->bad = jb_error_set(&t->why, JB_EINVAL, "event %zu: id longer than %zu bytes", i,
                              l->max_id_bytes);
    else if (over(str[S_TYPE].len, l->max_name_bytes) || over(str[S_SOURCE].len, l->max_name_bytes))
        t->bad = jb_error_set(&t->why, JB_EINVAL, "event %zu: type or source longer than %zu bytes",
                              i, l->max_name_bytes);
    else if (over(n_headers, l->max_headers))
        t->bad = jb_error_set(&t->why, JB_EINVAL, "event %zu: %zu headers (at most %zu)", i,
                              n_headers, l->max_headers);
    else if (nul != NULL)
        t->bad = jb_error_set(&t->why, JB_EINVAL, "event %zu: %s contains a NUL byte", i, nul);
}

static const char *put_str(sink *o, span s)
{
    char *d = o->s;
    if (s.len > 0)
        memcpy(d, s.p, s.len);
    d[s.len] = '\0';
    o->s += s.len + 1;
    return d;
}

/*
 * One Event. Pass 1 (@o NULL): counts into @t and notes the first NUL byte.
 * Pass 2: writes the event, its headers and its strings at @o.
 */
static int parse_event(span in, tally *t, sink *o)
{
    reader r = {in.p, in.p + in.len};
    span str[N_STR] = {{NULL, 0}};
    span payload = {NULL, 0};
    int64_t timestamp_ms = 0;
    uint64_t sequence = 0;
    uint32_t delivery_attempt = 0;
    jb_header *headers = o != NULL ? o->h : NULL;
    size_t n_headers = 0;
    const char *nul = NULL;
    while (r.p < r.end) {
        uint32_t f;
        unsigned wt;
        uint64_t v;
        span s, key, value;
        if (get_key(&r, &f, &wt) != 0)
            return -1;
        switch (f) {
        case 1:
        case 2:
        case 3:
        case 5:
            if (wt != WT_LEN || get_len(&r, &str[f == 5 ? S_SOURCE : f - 1]) != 0)
                return -1;
            break;
        case 4:
        case 8:
        case 9:
            if (wt != WT_VARINT || get_varint_max(&r, 10, &v) != 0)
                return -1;
            if (f == 4)
                timestamp_ms = (int64_t)v;
            else if (f == 8)
                sequence = v;
            else
                delivery_attempt = (uint32_t)v;
            break;
        case 6:
            if (wt != WT_LEN || get_len(&r, &payload) != 0)
                return -1;
            break;
        case 7:
            if (wt != WT_LEN || get_len(&r, &s) != 0 || parse_header(s, &key, &value) != 0)
                return -1;
            n_headers++;
            if (o != NULL) {
                o->h->key = put_str(o, key);
                o->h->value = put_str(o, value);
                o->h++;
            } else {
                t->bytes += key.len + value.len + 2;
                if (nul == NULL && has_nul(key))
                    nul = "a header's key";
                if (nul == NULL && has_nul(value))
                    nul = "a header's value";
            }
            break;
        default:
            if (skip_value(&r, wt) != 0)
                return -1;
        }
    }
    if (o == NULL) {
        for (int i = 0; i < N_STR; i++) {
            t->bytes += str[i].len + 1;
            if (nul == NULL && has_nul(str[i]))
                nul = str_names[i];
        }
        check_event(t, str, n_headers, nul);
        if (t->copy_payloads)
            t->bytes += payload.len;
        t->n_headers += n_headers;
        t->n_events++;
        return 0;
    }
    const void *payload_at = payload.len > 0 ? payload.p : NULL;
    if (payload.len > 0 && o->copy_payloads) {
        memcpy(o->s, payload.p, payload.len);
        payload_at = o->s;
        o->s += payload.len;
    }
    *o->ev++ = (jb_event){
        .id = put_str(o, str[S_ID]),
        .topic = put_str(o, str[S_TOPIC]),
        .type = put_str(o, str[S_TYPE]),
        .source = put_str(o, str[S_SOURCE]),
        .timestamp_ms = timestamp_ms,
        .payload = payload_at,
        .payload_len = payload.len,
        .headers = headers,
        .n_headers = n_headers,
        .sequence = sequence,
        .delivery_attempt = delivery_attempt,
    };
    return 0;
}

/* PublishRequest {repeated Event events = 1;}: one pass. */
static int walk(const uint8_t *data, size_t len, tally *t, sink *o)
{
    reader r = {data, data + len};
    while (r.p < r.end) {
        uint32_t f;
        unsigned wt;
        span s;
        if (get_key(&r, &f, &wt) != 0)
            return -1;
        if (f != 1) {
            if (skip_value(&r, wt) != 0)
                return -1;
        } else if (wt != WT_LEN || get_len(&r, &s) != 0 || parse_event(s, t, o) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Pass 1 or 2 over a PublishRequest (@single 0) or one Event (@single 1). */
static int walk_any(const uint8_t *data, size_t len, int single, tally *t, sink *o)
{
    return single ? parse_event((span){data, len}, t, o) : walk(data, len, t, o);
}

static jb_status decode(const uint8_t *data, size_t len, int single,
                        const jb__decode_limits *limits, jb__publish_req *out, jb_error *err)
{
    *out = (jb__publish_req){NULL, 0, 0};
    tally t = {.copy_payloads = single, .limits = limits};
    if (walk_any(data, len, single, &t, NULL) != 0)
        return jb_error_set(err, JB_EPARSE, "malformed %s", single ? "Event" : "PublishRequest");
    if (t.bad != JB_OK)
        return jb_error_set(err, t.bad, "%s", t.why.message);
    size_t size = t.n_events * sizeof(jb_event) + t.n_headers * sizeof(jb_header) + t.bytes;
    jb_event *evs = malloc(size > 0 ? size : 1);
    if (evs == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory decoding %zu bytes", len);
    jb_header *hs = (jb_header *)(evs + t.n_events);
    sink o = {evs, hs, (char *)(hs + t.n_headers), single};
    if (walk_any(data, len, single, &t, &o) != 0 || o.ev != evs + t.n_events ||
        o.h != hs + t.n_headers || o.s != (char *)evs + size)
        JB_BUG("the second pass over a message disagrees with the first");
    *out = (jb__publish_req){evs, t.n_events, size};
    return JB_OK;
}

jb__decode_limits jb__decode_limits_default(void)
{
    return (jb__decode_limits){
        .max_events = JB__DECODE_MAX_EVENTS,
        .max_headers = JB_EVENT_MAX_HEADERS,
        .max_id_bytes = JB_EVENT_MAX_ID_BYTES,
        .max_topic_bytes = JB_TOPIC_MAX_BYTES,
        .max_name_bytes = JB_EVENT_MAX_NAME_BYTES,
    };
}

jb_status jb__publish_decode(const uint8_t *data, size_t len, const jb__decode_limits *limits,
                             jb__publish_req *out, jb_error *err)
{
    return decode(data, len, 0, limits, out, err);
}

jb_status jb__event_decode(const uint8_t *data, size_t len, jb__publish_req *out, jb_error *err)
{
    return decode(data, len, 1, NULL, out, err);
}

static size_t at_most(size_t n, size_t limit)
{
    return limit > 0 && limit < n ? limit : n;
}

size_t jb__publish_decode_bound(size_t len, const jb__decode_limits *limits)
{
    static const jb__decode_limits none = {0};
    const jb__decode_limits *l = limits != NULL ? limits : &none;
    size_t events = at_most(len / 2, l->max_events);
    size_t headers = len / 2;
    if (l->max_events > 0 && l->max_headers > 0 && l->max_headers <= SIZE_MAX / l->max_events)
        headers = at_most(headers, l->max_events * l->max_headers);
    return len + events * (sizeof(jb_event) + 2) + headers * sizeof(jb_header);
}

void jb__publish_req_release(jb__publish_req *req)
{
    free(req->events);
    *req = (jb__publish_req){NULL, 0, 0};
}
