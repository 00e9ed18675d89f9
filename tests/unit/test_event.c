/*
 * Unit tests for src/event/decode.c, the hand decoder of
 * PublishRequest, against protobuf-c as the reference.
 *
 * Differential: random requests (random counts, strings, payloads, headers;
 * fields in random order, given twice, with padded keys and unknown fields of
 * every wire type; and canonical ones packed by protobuf-c) must decode to
 * exactly what protobuf-c's unpack gives; every truncation of them, random
 * byte mutations and a list of hand-made malformed inputs must be refused by
 * the hand decoder exactly when protobuf-c refuses them. Each input is
 * copied into a buffer of its exact size, so that AddressSanitizer
 * (make SANITIZE=1) catches any read past its end.
 *
 * Then the one deliberate difference, strings with a NUL byte, and the
 * error messages. Then the limits (jb__decode_limits) on top of that: random
 * requests held to small limits are refused exactly where a walk over
 * protobuf-c's result says, each default limit is tried exactly at and one
 * over it, and the bus refuses the same events with the same messages. A
 * failure prints the seed and the input in hex.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "event/envelope.h"
#include "event/decode.h"
#include "jimbot/bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a random source and a wire writer ------------------------------------ */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t rnd_below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rnd() % n);
}

#define WIRE_MAX (256 * 1024)

typedef struct wire {
    uint8_t *b;
    size_t n;
} wire;

static void put_byte(wire *w, uint8_t c)
{
    assert_true(w->n < WIRE_MAX);
    w->b[w->n++] = c;
}

static void put_bytes(wire *w, const void *p, size_t len)
{
    assert_true(w->n + len <= WIRE_MAX);
    if (len > 0)
        memcpy(w->b + w->n, p, len);
    w->n += len;
}

static void put_varint(wire *w, uint64_t v)
{
    for (; v >= 0x80; v >>= 7)
        put_byte(w, (uint8_t)(v | 0x80));
    put_byte(w, (uint8_t)v);
}

/* A key, sometimes padded with redundant 0x80 bytes (at most 5 in all). */
static void put_key(wire *w, uint32_t field, unsigned wt)
{
    uint64_t v = (uint64_t)field << 3 | wt;
    size_t canonical = 1;
    for (uint64_t x = v; x >= 0x80; x >>= 7)
        canonical++;
    size_t len =
        canonical < 5 && rnd_below(8) == 0 ? canonical + 1 + rnd_below(5 - canonical) : canonical;
    for (size_t i = 0; i + 1 < len; i++, v >>= 7)
        put_byte(w, (uint8_t)(v | 0x80));
    put_byte(w, (uint8_t)v);
}

static void put_len_field(wire *w, uint32_t field, const void *p, size_t len)
{
    put_key(w, field, 2);
    put_varint(w, len);
    put_bytes(w, p, len);
}

/* An unknown field of any valid wire type, its number never one we know. */
static void put_unknown(wire *w)
{
    static const uint32_t fields[] = {10, 11, 15, 16, 100, 2047, 2048, 536870911u, 4000000000u};
    uint32_t f = fields[rnd_below(sizeof(fields) / sizeof(fields[0]))];
    uint8_t junk[24];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)rnd();
    switch (rnd_below(4)) {
    case 0:
        put_key(w, f, 0);
        put_varint(w, rnd() >> rnd_below(64));
        break;
    case 1:
        put_key(w, f, 1);
        put_bytes(w, junk, 8);
        break;
    case 2:
        put_len_field(w, f, junk, rnd_below(sizeof(junk)));
        break;
    default:
        put_key(w, f, 5);
        put_bytes(w, junk, 4);
        break;
    }
}

/* A string without NUL bytes, sometimes empty, sometimes not ASCII. */
static size_t rnd_string(char *s, size_t max)
{
    size_t len = rnd_below(4) == 0 ? 0 : rnd_below(max);
    for (size_t i = 0; i < len; i++)
        s[i] = (char)(1 + rnd_below(255));
    return len;
}

static void put_header(wire *w)
{
    wire e = {malloc(WIRE_MAX), 0};
    assert_non_null(e.b);
    char s[32];
    size_t n_parts = rnd_below(5);
    for (size_t i = 0; i < n_parts; i++) {
        if (rnd_below(5) == 0) {
            put_unknown(&e);
            continue;
        }
        size_t len = rnd_string(s, sizeof(s));
        put_len_field(&e, 1 + (uint32_t)rnd_below(2), s, len);
    }
    put_len_field(w, 7, e.b, e.n);
    free(e.b);
}

/* An Event's fields in random order, some twice, unknown ones among them. */
static void put_event_fields(wire *w)
{
    wire e = *w;
    size_t n_parts = rnd_below(16);
    for (size_t i = 0; i < n_parts; i++) {
        uint32_t f = 1 + (uint32_t)rnd_below(10);
        char s[64];
        uint8_t payload[300];
        switch (f) {
        case 1:
        case 2:
        case 3:
        case 5:
            put_len_field(&e, f, s, rnd_string(s, sizeof(s)));
            break;
        case 4:
        case 8:
        case 9:
            put_key(&e, f, 0);
            put_varint(&e, rnd() >> rnd_below(64));
            break;
        case 6: {
            size_t len = rnd_below(4) == 0 ? 0 : rnd_below(sizeof(payload));
            for (size_t k = 0; k < len; k++)
                payload[k] = (uint8_t)rnd();
            put_len_field(&e, 6, payload, len);
            break;
        }
        case 7:
            put_header(&e);
            break;
        default:
            put_unknown(&e);
        }
    }
    w->n = e.n;
}

/* An Event as field 1 of a PublishRequest. */
static void put_event(wire *w)
{
    wire e = {malloc(WIRE_MAX), 0};
    assert_non_null(e.b);
    put_event_fields(&e);
    put_len_field(w, 1, e.b, e.n);
    free(e.b);
}

/* A random request written by hand. */
static void put_request(wire *w, size_t max_events)
{
    size_t n = rnd_below(max_events + 1);
    for (size_t i = 0; i < n; i++) {
        if (rnd_below(6) == 0)
            put_unknown(w);
        put_event(w);
    }
    if (rnd_below(4) == 0)
        put_unknown(w);
}

/* A random request packed by protobuf-c (canonical), unknown fields appended. */
static void pack_request(wire *w, size_t max_events)
{
    enum { MAX_EV = 32, MAX_H = 4 };
    Jimbot__Infra__V1__PublishRequest req = JIMBOT__INFRA__V1__PUBLISH_REQUEST__INIT;
    Jimbot__Infra__V1__Event evs[MAX_EV], *evp[MAX_EV];
    Jimbot__Infra__V1__Event__HeadersEntry hs[MAX_EV][MAX_H], *hp[MAX_EV][MAX_H];
    char strs[MAX_EV][4 + 2 * MAX_H][40];
    uint8_t payloads[MAX_EV][200];
    size_t n = rnd_below((max_events < MAX_EV ? max_events : MAX_EV) + 1);
    for (size_t i = 0; i < n; i++) {
        Jimbot__Infra__V1__Event init = JIMBOT__INFRA__V1__EVENT__INIT;
        evs[i] = init;
        evp[i] = &evs[i];
        char **fields[4] = {&evs[i].id, &evs[i].topic, &evs[i].type, &evs[i].source};
        for (size_t k = 0; k < 4; k++) {
            strs[i][k][rnd_string(strs[i][k], 40)] = '\0';
            *fields[k] = strs[i][k];
        }
        evs[i].timestamp_ms = (int64_t)(rnd() >> rnd_below(64));
        evs[i].sequence = rnd() >> rnd_below(64);
        evs[i].delivery_attempt = (uint32_t)rnd_below(5);
        evs[i].payload.len = rnd_below(sizeof(payloads[i]));
        for (size_t k = 0; k < evs[i].payload.len; k++)
            payloads[i][k] = (uint8_t)rnd();
        evs[i].payload.data = payloads[i];
        evs[i].n_headers = rnd_below(MAX_H + 1);
        evs[i].headers = hp[i];
        for (size_t k = 0; k < evs[i].n_headers; k++) {
            Jimbot__Infra__V1__Event__HeadersEntry he =
                JIMBOT__INFRA__V1__EVENT__HEADERS_ENTRY__INIT;
            hs[i][k] = he;
            hp[i][k] = &hs[i][k];
            char *key = strs[i][4 + 2 * k], *value = strs[i][5 + 2 * k];
            key[rnd_string(key, 40)] = '\0';
            value[rnd_string(value, 40)] = '\0';
            hs[i][k].key = key;
            hs[i][k].value = value;
        }
    }
    req.n_events = n;
    req.events = evp;
    size_t len = jimbot__infra__v1__publish_request__get_packed_size(&req);
    assert_true(w->n + len <= WIRE_MAX);
    w->n += jimbot__infra__v1__publish_request__pack(&req, w->b + w->n);
    size_t extra = rnd_below(3);
    for (size_t i = 0; i < extra; i++)
        put_unknown(w);
}

/* ---- the comparison ------------------------------------------------------- */

static void dump(const char *why, const uint8_t *p, size_t len)
{
    fprintf(stderr, "%s (rng state %llu, %zu bytes):", why, (unsigned long long)rng_state, len);
    for (size_t i = 0; i < len && i < 512; i++)
        fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, "%s\n", len > 512 ? " ..." : "");
}

/* Decodes @len bytes both ways and checks that they agree; returns our status. */
static jb_status check_same(const uint8_t *input, size_t len)
{
    uint8_t *p = malloc(len > 0 ? len : 1);
    assert_non_null(p);
    if (len > 0)
        memcpy(p, input, len);
    Jimbot__Infra__V1__PublishRequest *ref =
        jimbot__infra__v1__publish_request__unpack(NULL, len, p);
    jb__publish_req got;
    jb_error err;
    jb_error_clear(&err);
    jb_status st = jb__publish_decode(p, len, NULL, &got, &err);
    if ((ref == NULL) != (st == JB_EPARSE) || (st != JB_OK && st != JB_EPARSE && st != JB_EINVAL))
        dump(ref == NULL ? "protobuf-c refused it" : "protobuf-c accepted it", p, len);
    if (ref == NULL) {
        assert_int_equal(st, JB_EPARSE);
        assert_string_equal(err.message, "malformed PublishRequest");
        assert_null(got.events);
        free(p);
        return st;
    }
    if (st == JB_EINVAL) {
        /* A NUL byte in a string: protobuf-c keeps it, we refuse it. */
        assert_non_null(strstr(err.message, "contains a NUL byte"));
        protobuf_c_message_free_unpacked(&ref->base, NULL);
        free(p);
        return st;
    }
    assert_int_equal(st, JB_OK);
    assert_int_equal(got.n_events, ref->n_events);
    for (size_t i = 0; i < ref->n_events; i++) {
        const Jimbot__Infra__V1__Event *r = ref->events[i];
        const jb_event *e = &got.events[i];
        assert_string_equal(e->id, r->id);
        assert_string_equal(e->topic, r->topic);
        assert_string_equal(e->type, r->type);
        assert_string_equal(e->source, r->source);
        assert_true(e->timestamp_ms == r->timestamp_ms);
        assert_int_equal(e->payload_len, r->payload.len);
        if (r->payload.len == 0) {
            assert_null(e->payload);
        } else {
            assert_memory_equal(e->payload, r->payload.data, r->payload.len);
            /* Not copied: it points into the input. */
            assert_true((const uint8_t *)e->payload >= p &&
                        (const uint8_t *)e->payload + e->payload_len <= p + len);
        }
        assert_int_equal(e->n_headers, r->n_headers);
        for (size_t k = 0; k < r->n_headers; k++) {
            assert_string_equal(e->headers[k].key, r->headers[k]->key);
            assert_string_equal(e->headers[k].value, r->headers[k]->value);
        }
        assert_true(e->sequence == r->sequence);
        assert_int_equal(e->delivery_attempt, r->delivery_attempt);
        assert_null(e->encoded);
    }
    /* The documented bound on the block (decode.c, "Memory"). */
    assert_true(got.size <= jb__publish_decode_bound(len, NULL));
    protobuf_c_message_free_unpacked(&ref->base, NULL);
    jb__publish_req_release(&got);
    assert_null(got.events);
    free(p);
    return st;
}

/*
 * What the decoder must say of a request protobuf-c decoded as @ref, held to
 * @l: the first event that breaks a rule, in the bus's order. Writes the
 * message to @why (empty when accepted); the status.
 */
static jb_status expected_refusal(const Jimbot__Infra__V1__PublishRequest *ref,
                                  const jb__decode_limits *l, char *why, size_t size)
{
    why[0] = '\0';
    for (size_t i = 0; i < ref->n_events; i++) {
        const Jimbot__Infra__V1__Event *e = ref->events[i];
        if (i == l->max_events) {
            snprintf(why, size, "event %zu: more than %zu events in one request", i, l->max_events);
            return JB_ETOOBIG;
        }
        if (strlen(e->topic) > l->max_topic_bytes)
            snprintf(why, size, "event %zu: topic is %zu bytes long (at most %zu)", i,
                     strlen(e->topic), l->max_topic_bytes);
        else if (strlen(e->id) > l->max_id_bytes)
            snprintf(why, size, "event %zu: id longer than %zu bytes", i, l->max_id_bytes);
        else if (strlen(e->type) > l->max_name_bytes || strlen(e->source) > l->max_name_bytes)
            snprintf(why, size, "event %zu: type or source longer than %zu bytes", i,
                     l->max_name_bytes);
        else if (e->n_headers > l->max_headers)
            snprintf(why, size, "event %zu: %zu headers (at most %zu)", i, e->n_headers,
                     l->max_headers);
        if (why[0] != '\0')
            return JB_EINVAL;
    }
    return JB_OK;
}

/*
 * Decodes a request that protobuf-c accepts (and that holds no NUL byte in a
 * string) held to @l: refused exactly as expected_refusal() says, with
 * nothing left allocated, or accepted whole. Returns the status.
 */
static jb_status check_limited(const uint8_t *input, size_t len, const jb__decode_limits *l)
{
    uint8_t *p = malloc(len > 0 ? len : 1);
    assert_non_null(p);
    if (len > 0)
        memcpy(p, input, len);
    Jimbot__Infra__V1__PublishRequest *ref =
        jimbot__infra__v1__publish_request__unpack(NULL, len, p);
    assert_non_null(ref);
    char want[512];
    jb_status want_st = expected_refusal(ref, l, want, sizeof(want));
    jb__publish_req got;
    jb_error err;
    jb_error_clear(&err);
    jb_status st = jb__publish_decode(p, len, l, &got, &err);
    if (st != want_st || (st != JB_OK && strcmp(err.message, want) != 0))
        dump(want, p, len);
    assert_int_equal(st, want_st);
    if (st != JB_OK) {
        assert_string_equal(err.message, want);
        assert_null(got.events);
        assert_int_equal(got.n_events, 0);
    } else {
        assert_int_equal(got.n_events, ref->n_events);
        assert_true(got.size <= jb__publish_decode_bound(len, l));
    }
    protobuf_c_message_free_unpacked(&ref->base, NULL);
    jb__publish_req_release(&got);
    free(p);
    return st;
}

static void setup_rng(uint64_t seed)
{
    const char *env = getenv("JB_TEST_SEED");
    rng_state = env != NULL ? strtoull(env, NULL, 10) : seed;
    if (rng_state == 0)
        rng_state = 1;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_random_requests_decode_as_protobuf_c_does(void **state)
{
    (void)state;
    setup_rng(0x9e3779b97f4a7c15ull);
    wire w = {malloc(WIRE_MAX), 0};
    assert_non_null(w.b);
    for (int i = 0; i < 3000; i++) {
        w.n = 0;
        if (i % 3 == 0)
            pack_request(&w, 1 + (size_t)i % 40);
        else
            put_request(&w, 1 + (size_t)i % 40);
        assert_int_equal(check_same(w.b, w.n), JB_OK);
    }
    free(w.b);
}

/*
 * The same kind of random requests held to small limits: each is refused exactly
 * when, where and as the bus would refuse it, or accepted whole; both sides
 * of every limit are seen.
 */
static void test_random_requests_held_to_limits(void **state)
{
    (void)state;
    setup_rng(0x94d049bb133111ebull);
    const jb__decode_limits l = {.max_events = 8,
                                 .max_headers = 3,
                                 .max_id_bytes = 58,
                                 .max_topic_bytes = 60,
                                 .max_name_bytes = 61};
    wire w = {malloc(WIRE_MAX), 0};
    assert_non_null(w.b);
    size_t accepted = 0, too_many = 0, invalid = 0;
    for (int i = 0; i < 3000; i++) {
        w.n = 0;
        if (i % 3 == 0)
            pack_request(&w, 1 + (size_t)i % 40);
        else
            put_request(&w, 1 + (size_t)i % 40);
        jb_status st = check_limited(w.b, w.n, &l);
        accepted += st == JB_OK;
        too_many += st == JB_ETOOBIG;
        invalid += st == JB_EINVAL;
    }
    assert_true(accepted > 100 && too_many > 100 && invalid > 100);
    free(w.b);
}

static void test_truncations_and_mutations_refused_as_protobuf_c_does(void **state)
{
    (void)state;
    setup_rng(0x2545f4914f6cdd1dull);
    wire w = {malloc(WIRE_MAX), 0};
    uint8_t *m = malloc(WIRE_MAX + 16);
    assert_non_null(w.b);
    assert_non_null(m);
    size_t refused = 0, accepted = 0;
    for (int i = 0; i < 300; i++) {
        w.n = 0;
        if (i % 3 == 0)
            pack_request(&w, 4);
        else
            put_request(&w, 4);
        for (size_t cut = 0; cut < w.n; cut++) {
            if (check_same(w.b, cut) == JB_EPARSE)
                refused++;
            else
                accepted++;
        }
        /* Mutations: a few bytes changed, inserted or removed. */
        for (int k = 0; k < 40 && w.n > 0; k++) {
            size_t n = w.n;
            memcpy(m, w.b, n);
            size_t edits = 1 + rnd_below(3);
            for (size_t e = 0; e < edits; e++) {
                size_t at = rnd_below(n);
                switch (rnd_below(4)) {
                case 0:
                    m[at] = (uint8_t)rnd();
                    break;
                case 1:
                    m[at] ^= (uint8_t)(1u << rnd_below(8));
                    break;
                case 2:
                    if (n < WIRE_MAX + 16) {
                        memmove(m + at + 1, m + at, n - at);
                        m[at] = (uint8_t)rnd();
                        n++;
                    }
                    break;
                default:
                    if (n > 1) {
                        memmove(m + at, m + at + 1, n - at - 1);
                        n--;
                    }
                }
            }
            if (check_same(m, n) == JB_EPARSE)
                refused++;
            else
                accepted++;
        }
    }
    /* Both sides of the boundary were exercised. */
    assert_true(refused > 1000 && accepted > 1000);
    free(m);
    free(w.b);
}

typedef struct raw {
    const char *what;
    const char *bytes;
    size_t len;
    jb_status want;
} raw;

#define RAW(what, lit, want)             \
    {                                    \
        what, lit, sizeof(lit) - 1, want \
    }

static void test_hand_made_inputs(void **state)
{
    (void)state;
    static const raw cases[] = {
        RAW("empty request", "", JB_OK),
        RAW("one empty event", "\x0a\x00", JB_OK),
        RAW("length past the end", "\x0a\x05\x61\x62", JB_EPARSE),
        RAW("length past the end inside an event", "\x0a\x04\x12\x05\x61\x62", JB_EPARSE),
        RAW("truncated key", "\x0a\x02\x92", JB_EPARSE),
        RAW("unterminated key", "\x8a\x80\x80\x80\x80\x00", JB_EPARSE),
        RAW("key of 5 bytes", "\x8a\x80\x80\x80\x00\x00", JB_OK),
        RAW("key of field 0", "\x00\x00", JB_EPARSE),
        RAW("key of field 0, wire type 2", "\x02\x00", JB_EPARSE),
        RAW("padded key of field 0", "\x80\x00\x00", JB_OK),
        RAW("largest field number, varint", "\xf8\xff\xff\xff\xff\x01\x00", JB_EPARSE),
        RAW("field 2^29-1, varint", "\xf8\xff\xff\xff\x0f\x00", JB_OK),
        RAW("field 2^32-1, varint", "\xf8\xff\xff\xff\x7f\x00", JB_OK),
        RAW("varint of 10 bytes", "\x0a\x0b\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", JB_OK),
        RAW("varint of 11 bytes", "\x0a\x0c\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            JB_EPARSE),
        RAW("unknown varint of 10 bytes", "\x78\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", JB_OK),
        RAW("unknown varint of 11 bytes", "\x78\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            JB_EPARSE),
        RAW("unterminated varint", "\x0a\x03\x20\xff\xff", JB_EPARSE),
        RAW("length of 5 bytes", "\x0a\x80\x80\x80\x80\x00", JB_OK),
        RAW("length of 6 bytes", "\x0a\x80\x80\x80\x80\x80\x00", JB_EPARSE),
        RAW("huge length", "\x0a\xff\xff\xff\xff\x0f", JB_EPARSE),
        RAW("events as a varint", "\x08\x01", JB_EPARSE),
        RAW("events as fixed32", "\x0d\x00\x00\x00\x00", JB_EPARSE),
        RAW("topic as a varint", "\x0a\x02\x10\x01", JB_EPARSE),
        RAW("topic as fixed64", "\x0a\x09\x11\x61\x62\x63\x64\x65\x66\x67\x68", JB_EPARSE),
        RAW("timestamp length-delimited", "\x0a\x02\x22\x00", JB_EPARSE),
        RAW("timestamp as fixed64", "\x0a\x09\x21\x61\x62\x63\x64\x65\x66\x67\x68", JB_EPARSE),
        RAW("sequence as fixed32", "\x0a\x05\x45\x61\x62\x63\x64", JB_EPARSE),
        RAW("attempt length-delimited", "\x0a\x02\x4a\x00", JB_EPARSE),
        RAW("payload as a varint", "\x0a\x02\x30\x01", JB_EPARSE),
        RAW("headers as a varint", "\x0a\x02\x38\x01", JB_EPARSE),
        RAW("header key as a varint", "\x0a\x04\x3a\x02\x08\x01", JB_EPARSE),
        RAW("header value as fixed32", "\x0a\x07\x3a\x05\x15\x61\x62\x63\x64", JB_EPARSE),
        RAW("header entry truncated", "\x0a\x04\x3a\x02\x0a\x05", JB_EPARSE),
        RAW("group start, top level", "\x0b\x0c", JB_EPARSE),
        RAW("group start, unknown field", "\x7b\x7c", JB_EPARSE),
        RAW("group end, unknown field", "\x7c", JB_EPARSE),
        RAW("group in an event", "\x0a\x02\x7b\x7c", JB_EPARSE),
        RAW("group in a header", "\x0a\x04\x3a\x02\x7b\x7c", JB_EPARSE),
        RAW("wire type 6", "\x7e\x00", JB_EPARSE),
        RAW("wire type 7", "\x0a\x02\x7f\x00", JB_EPARSE),
        RAW("fixed64 truncated", "\x79\x61\x62\x63\x64\x65\x66\x67", JB_EPARSE),
        RAW("fixed32 truncated", "\x7d\x61\x62\x63", JB_EPARSE),
        RAW("unknown fields of every valid type",
            "\x78\x01\x79\x61\x62\x63\x64\x65\x66\x67\x68"
            "\x7a\x01x\x7d\x61\x62\x63\x64"
            "\x0a\x00",
            JB_OK),
        RAW("fields 8 and 9 ignored", "\x0a\x04\x40\x05\x48\x02", JB_OK),
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fprintf(stderr, "case: %s\n", cases[i].what);
        jb_status st = check_same((const uint8_t *)cases[i].bytes, cases[i].len);
        assert_int_equal(st, cases[i].want);
    }
}

/* Decodes a literal; the status. */
static jb_status decode(const char *bytes, size_t len, jb__publish_req *out, jb_error *err)
{
    uint8_t *p = malloc(len > 0 ? len : 1);
    assert_non_null(p);
    memcpy(p, bytes, len);
    jb_status st = jb__publish_decode(p, len, NULL, out, err);
    /* Keep the payloads' buffer alive only as long as the test needs it. */
    if (st == JB_OK)
        for (size_t i = 0; i < out->n_events; i++)
            assert_int_equal(out->events[i].payload_len, 0);
    free(p);
    return st;
}

#define DECODE(lit, out, err) decode(lit, sizeof(lit) - 1, out, err)

static void test_nul_bytes_in_strings_are_refused(void **state)
{
    (void)state;
    jb__publish_req r;
    jb_error err;
    /* Event 1's topic is "a\0b". */
    assert_int_equal(DECODE("\x0a\x00\x0a\x05\x12\x03"
                            "a\0b",
                            &r, &err),
                     JB_EINVAL);
    assert_string_equal(err.message, "event 1: topic contains a NUL byte");
    assert_null(r.events);
    assert_int_equal(DECODE("\x0a\x03\x0a\x01\x00", &r, &err), JB_EINVAL);
    assert_string_equal(err.message, "event 0: id contains a NUL byte");
    assert_int_equal(DECODE("\x0a\x03\x1a\x01\x00", &r, &err), JB_EINVAL);
    assert_string_equal(err.message, "event 0: type contains a NUL byte");
    assert_int_equal(DECODE("\x0a\x03\x2a\x01\x00", &r, &err), JB_EINVAL);
    assert_string_equal(err.message, "event 0: source contains a NUL byte");
    assert_int_equal(DECODE("\x0a\x07\x3a\x05\x0a\x03k\0k", &r, &err), JB_EINVAL);
    assert_string_equal(err.message, "event 0: a header's key contains a NUL byte");
    assert_int_equal(DECODE("\x0a\x07\x3a\x05\x12\x03v\0v", &r, &err), JB_EINVAL);
    assert_string_equal(err.message, "event 0: a header's value contains a NUL byte");
    /* Only the last value of a field given twice counts. */
    assert_int_equal(DECODE("\x0a\x08\x12\x01\x00\x12\x03"
                            "a.b",
                            &r, &err),
                     JB_OK);
    assert_string_equal(r.events[0].topic, "a.b");
    jb__publish_req_release(&r);
    assert_int_equal(DECODE("\x0a\x08\x12\x03"
                            "a.b\x12\x01\x00",
                            &r, &err),
                     JB_EINVAL);
    /* Malformed bytes anywhere win over a NUL byte. */
    assert_int_equal(DECODE("\x0a\x03\x12\x01\x00\x0a\x05", &r, &err), JB_EPARSE);
    assert_string_equal(err.message, "malformed PublishRequest");
    /* A payload is bytes: NULs are data. */
    static const char with_nul_payload[] = "\x0a\x05\x32\x03\x00\x01\x00";
    uint8_t buf[sizeof(with_nul_payload) - 1];
    memcpy(buf, with_nul_payload, sizeof(buf));
    assert_int_equal(jb__publish_decode(buf, sizeof(buf), NULL, &r, &err), JB_OK);
    assert_int_equal(r.events[0].payload_len, 3);
    assert_ptr_equal(r.events[0].payload, buf + 4);
    jb__publish_req_release(&r);
}

static void test_headers_accumulate_and_keep_duplicate_keys(void **state)
{
    (void)state;
    jb__publish_req r;
    jb_error err;
    /* Two events; the first has headers k=1, k=2 (same key), then an entry
     * whose key is given twice (last wins) and whose value is absent. */
    static const char req[] = "\x0a\x18"
                              "\x3a\x06\x0a\x01k\x12\x01\x31"
                              "\x3a\x06\x0a\x01k\x12\x01\x32"
                              "\x3a\x06\x0a\x01x\x0a\x01y"
                              "\x0a\x05\x12\x03t.u";
    assert_int_equal(DECODE(req, &r, &err), JB_OK);
    assert_int_equal(r.n_events, 2);
    assert_int_equal(r.events[0].n_headers, 3);
    assert_string_equal(r.events[0].headers[0].key, "k");
    assert_string_equal(r.events[0].headers[0].value, "1");
    assert_string_equal(r.events[0].headers[1].key, "k");
    assert_string_equal(r.events[0].headers[1].value, "2");
    assert_string_equal(r.events[0].headers[2].key, "y");
    assert_string_equal(r.events[0].headers[2].value, "");
    assert_string_equal(r.events[0].topic, "");
    assert_int_equal(r.events[1].n_headers, 0);
    assert_string_equal(r.events[1].topic, "t.u");
    assert_null(r.events[1].payload);
    jb__publish_req_release(&r);
    jb__publish_req_release(&r); /* Releasing twice is harmless. */
    assert_int_equal(check_same((const uint8_t *)req, sizeof(req) - 1), JB_OK);
}

/* ---- the limits, exactly at and one over ---------------------------------- */

/*
 * A request of @n_before events with topic "t", then one whose field @field
 * (1 id, 2 topic, 3 type, 5 source; 0 none) holds @len bytes 'a' and which
 * has @n_headers headers "k" = "v" (topic "t" unless @field is 2).
 */
static void put_shaped(wire *w, size_t n_before, uint32_t field, size_t len, size_t n_headers)
{
    static const uint8_t t_event[] = {0x0a, 0x03, 0x12, 0x01, 't'};
    static const uint8_t header[] = {0x0a, 0x01, 'k', 0x12, 0x01, 'v'};
    char a[512];
    memset(a, 'a', sizeof(a));
    for (size_t i = 0; i < n_before; i++)
        put_bytes(w, t_event, sizeof(t_event));
    wire e = {malloc(WIRE_MAX), 0};
    assert_non_null(e.b);
    if (field != 2)
        put_len_field(&e, 2, "t", 1);
    if (field != 0)
        put_len_field(&e, field, a, len);
    for (size_t i = 0; i < n_headers; i++)
        put_len_field(&e, 7, header, sizeof(header));
    put_len_field(w, 1, e.b, e.n);
    free(e.b);
}

/* Decodes @w with @l (and checks that nothing is left on a refusal); the status. */
static jb_status decode_wire(const wire *w, const jb__decode_limits *l, jb_error *err)
{
    jb__publish_req r;
    jb_error_clear(err);
    jb_status st = jb__publish_decode(w->b, w->n, l, &r, err);
    if (st != JB_OK) {
        assert_null(r.events);
        assert_int_equal(r.n_events, 0);
    }
    jb__publish_req_release(&r);
    return st;
}

typedef struct shape {
    uint32_t field;
    size_t at_limit;  /* field's length or, for field 0, the headers */
    const char *over; /* the message one over */
} shape;

static void test_limits_exactly_at_and_one_over(void **state)
{
    (void)state;
    setup_rng(0x6a09e667f3bcc908ull);
    const jb__decode_limits l = jb__decode_limits_default();
    assert_int_equal(l.max_events, 10000);
    assert_int_equal(l.max_headers, 64);
    static const shape shapes[] = {
        {1, 256, "event 1: id longer than 256 bytes"},
        {2, 255, "event 1: topic is 256 bytes long (at most 255)"},
        {3, 256, "event 1: type or source longer than 256 bytes"},
        {5, 256, "event 1: type or source longer than 256 bytes"},
        {0, 64, "event 1: 65 headers (at most 64)"},
    };
    wire w = {malloc(WIRE_MAX), 0};
    assert_non_null(w.b);
    jb_error err;
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        const shape *sh = &shapes[i];
        for (size_t over = 0; over < 2; over++) {
            size_t n = sh->at_limit + over;
            w.n = 0;
            put_shaped(&w, 1, sh->field, sh->field != 0 ? n : 0, sh->field == 0 ? n : 0);
            jb_status st = decode_wire(&w, &l, &err);
            assert_int_equal(st, over ? JB_EINVAL : JB_OK);
            if (over)
                assert_string_equal(err.message, sh->over);
            /* Every request here is also one protobuf-c accepts. */
            assert_int_equal(check_limited(w.b, w.n, &l), st);
        }
    }
    /* Events: 10000 are decoded, the 10001st is refused, naming it. */
    w.n = 0;
    put_shaped(&w, 9999, 0, 0, 0);
    assert_int_equal(decode_wire(&w, &l, &err), JB_OK);
    /* Empty events: 2 bytes each on the wire, the most the block takes per event. */
    static const uint8_t empty[] = {0x0a, 0x00};
    wire e = {malloc(WIRE_MAX), 0};
    assert_non_null(e.b);
    for (size_t i = 0; i < 10000; i++)
        put_bytes(&e, empty, sizeof(empty));
    jb__publish_req r;
    assert_int_equal(jb__publish_decode(e.b, e.n, &l, &r, &err), JB_OK);
    assert_int_equal(r.size, 10000 * (sizeof(jb_event) + 4));
    assert_true(r.size <= jb__publish_decode_bound(e.n, &l));
    jb__publish_req_release(&r);
    put_bytes(&e, empty, sizeof(empty));
    assert_int_equal(jb__publish_decode(e.b, e.n, &l, &r, &err), JB_ETOOBIG);
    free(e.b);
    /* The bound for the largest request jimbotd takes by default: L + 11.3 MB. */
    size_t max = 16u << 20;
    assert_int_equal(jb__publish_decode_bound(max, &l),
                     max + 10000 * (sizeof(jb_event) + 2) + 640000 * sizeof(jb_header));
    put_shaped(&w, 0, 0, 0, 0);
    assert_int_equal(decode_wire(&w, &l, &err), JB_ETOOBIG);
    assert_string_equal(err.message, "event 10000: more than 10000 events in one request");
    /* Zero fields are no limit. */
    const jb__decode_limits none = {0};
    assert_int_equal(decode_wire(&w, &none, &err), JB_OK);
    assert_int_equal(decode_wire(&w, NULL, &err), JB_OK);
    /* Malformed bytes after the limit still make the request malformed. */
    put_bytes(&w, "\x0a\x05", 2);
    assert_int_equal(decode_wire(&w, &l, &err), JB_EPARSE);
    assert_string_equal(err.message, "malformed PublishRequest");
    /* The first event that breaks a rule is the one named, whatever the rule. */
    w.n = 0;
    put_bytes(&w, "\x0a\x05\x12\x03t\0t", 7);
    put_shaped(&w, 0, 1, 300, 0);
    assert_int_equal(decode_wire(&w, &l, &err), JB_EINVAL);
    assert_string_equal(err.message, "event 0: topic contains a NUL byte");
    free(w.b);
}

static void on_bus_closed(void *userdata)
{
    *(int *)userdata = 1;
}

/* The bus refuses what the decoder refuses, with the same message. */
static void test_the_bus_refuses_the_same_with_the_same_messages(void **state)
{
    (void)state;
    setup_rng(0xbb67ae8584caa73bull);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    jb_bus_options o = {.test_mode = 1};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    static const shape shapes[] = {
        {1, 257, NULL}, {2, 256, NULL}, {3, 257, NULL}, {5, 257, NULL}, {0, 65, NULL}};
    const jb__decode_limits l = jb__decode_limits_default();
    wire w = {malloc(WIRE_MAX), 0};
    assert_non_null(w.b);
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        const shape *sh = &shapes[i];
        w.n = 0;
        put_shaped(&w, 1, sh->field, sh->field != 0 ? sh->at_limit : 0,
                   sh->field == 0 ? sh->at_limit : 0);
        jb_error derr, berr;
        assert_int_equal(decode_wire(&w, &l, &derr), JB_EINVAL);
        jb__publish_req r;
        assert_int_equal(jb__publish_decode(w.b, w.n, NULL, &r, NULL), JB_OK);
        uint32_t retry = 0;
        jb_error_clear(&berr);
        assert_int_equal(jb_bus_publish(bus, r.events, r.n_events, NULL, NULL, &retry, &berr),
                         JB_EINVAL);
        assert_string_equal(berr.message, derr.message);
        jb__publish_req_release(&r);
    }
    free(w.b);
    int closed = 0;
    jb_bus_close(bus, on_bus_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* One Event both ways (jb__envelope_decode, protobuf-c); our status. */
static jb_status check_envelope_same(const uint8_t *input, size_t len)
{
    uint8_t *p = malloc(len > 0 ? len : 1);
    assert_non_null(p);
    if (len > 0)
        memcpy(p, input, len);
    Jimbot__Infra__V1__Event *r = jimbot__infra__v1__event__unpack(NULL, len, p);
    jb__envelope *env = NULL;
    const jb_event *e = NULL;
    jb_error err;
    jb_status st = jb__envelope_decode(p, len, &env, &e, &err);
    if ((r == NULL) != (st != JB_OK))
        dump(r == NULL ? "protobuf-c refused the Event" : "protobuf-c accepted the Event", p, len);
    if (r == NULL) {
        assert_int_equal(st, JB_EPARSE);
        free(p);
        return st;
    }
    if (st != JB_OK) {
        assert_int_equal(st, JB_EPARSE);
        assert_non_null(strstr(err.message, "contains a NUL byte"));
        jimbot__infra__v1__event__free_unpacked(r, NULL);
        free(p);
        return st;
    }
    assert_string_equal(e->id, r->id);
    assert_string_equal(e->topic, r->topic);
    assert_string_equal(e->type, r->type);
    assert_string_equal(e->source, r->source);
    assert_true(e->timestamp_ms == r->timestamp_ms);
    assert_true(e->sequence == r->sequence);
    assert_int_equal(e->delivery_attempt, r->delivery_attempt);
    assert_int_equal(e->payload_len, r->payload.len);
    if (r->payload.len > 0)
        assert_memory_equal(e->payload, r->payload.data, r->payload.len);
    assert_int_equal(e->n_headers, r->n_headers);
    for (size_t k = 0; k < r->n_headers; k++) {
        assert_string_equal(e->headers[k].key, r->headers[k]->key);
        assert_string_equal(e->headers[k].value, r->headers[k]->value);
    }
    uint8_t first = r->payload.len > 0 ? r->payload.data[0] : 0;
    jimbot__infra__v1__event__free_unpacked(r, NULL);
    /* Nothing borrows the input: read after it is gone (ASan would catch it). */
    memset(p, 0xee, len);
    free(p);
    if (e->payload_len > 0)
        assert_int_equal(((const uint8_t *)e->payload)[0], first);
    jb__envelope_free(env);
    return st;
}

static void test_envelopes_decode_as_protobuf_c_does(void **state)
{
    (void)state;
    setup_rng(0xd1b54a32d192ed03ull);
    wire w = {malloc(WIRE_MAX), 0};
    assert_non_null(w.b);
    size_t refused = 0;
    for (int i = 0; i < 2000; i++) {
        w.n = 0;
        put_event_fields(&w);
        assert_int_equal(check_envelope_same(w.b, w.n), JB_OK);
        for (size_t cut = 0; i < 200 && cut < w.n; cut++)
            refused += check_envelope_same(w.b, cut) != JB_OK;
    }
    assert_true(refused > 100);
    free(w.b);
    static const char bad[] = "\x12\x03"
                              "a\0b";
    jb__envelope *env;
    const jb_event *e;
    jb_error err;
    assert_int_equal(jb__envelope_decode(bad, sizeof(bad) - 1, &env, &e, &err), JB_EPARSE);
    assert_string_equal(err.message,
                        "malformed event envelope: event 0: topic contains a NUL byte");
    assert_int_equal(jb__envelope_decode(bad, 3, &env, &e, &err), JB_EPARSE);
    assert_string_equal(err.message, "malformed event envelope (3 bytes)");
    jb__envelope_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_requests_decode_as_protobuf_c_does),
        cmocka_unit_test(test_random_requests_held_to_limits),
        cmocka_unit_test(test_truncations_and_mutations_refused_as_protobuf_c_does),
        cmocka_unit_test(test_hand_made_inputs),
        cmocka_unit_test(test_nul_bytes_in_strings_are_refused),
        cmocka_unit_test(test_headers_accumulate_and_keep_duplicate_keys),
        cmocka_unit_test(test_limits_exactly_at_and_one_over),
        cmocka_unit_test(test_the_bus_refuses_the_same_with_the_same_messages),
        cmocka_unit_test(test_envelopes_decode_as_protobuf_c_does),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
