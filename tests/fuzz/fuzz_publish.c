/*
 * Differential libFuzzer harness for the hand decoders of src/event/: the
 * PublishRequest decoder (jb__publish_decode) and the Event envelope decoder
 * (jb__envelope_decode), each against protobuf-c's unpack as the reference.
 *
 * Every input is decoded four ways: as a PublishRequest by both decoders and
 * as one Event by both. They must agree on accept and reject, and on every
 * value decoded: the number of events, each string, the timestamp, sequence
 * and delivery attempt, the payload's bytes and the headers in order. The one
 * allowed difference is the rule of docs/grpc.md: a string holding a NUL byte
 * is refused by our decoders (protobuf-c keeps it), so there the reference
 * must have accepted the input and the error must say so. An accepted Event is
 * also encoded again by jb__envelope_encode() and read back by protobuf-c,
 * which must give the same event.
 *
 * Each input is also decoded as a PublishRequest held to small limits
 * (LIMITS below): accepted, it must be what the decoder without limits
 * gave; refused for a limit, the decoder without limits must have accepted
 * it (or refused a NUL byte), and the message must name an event of the
 * request; malformed stays malformed.
 *
 * What it cannot see: a NUL byte that our decoders fail to refuse, since a C
 * string compares equal up to its first NUL on both sides; the unit test
 * (tests/unit/test_event.c) covers that rule with hand-made inputs.
 *
 * A disagreement prints what differs and traps (__builtin_trap), which both
 * libFuzzer and the ctest replay report as a crash.
 *
 * Built two ways (tests/fuzz/CMakeLists.txt): with clang and -fsanitize=fuzzer
 * for `make fuzz`, and with replay.c as a plain program that `make test` runs
 * over corpus/publish/ (ctest fuzz.publish).
 */
#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "event/envelope.h"
#include "event/decode.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_publish: %s:%d: the decoders disagree: %s\n", __FILE__, \
                    __LINE__, #cond);                                                     \
            __builtin_trap();                                                             \
        }                                                                                 \
    } while (0)

/* Both sides give NUL-terminated strings; an absent one is "" on both. */
static void check_str(const char *got, const char *want)
{
    CHECK(got != NULL && want != NULL);
    CHECK(strcmp(got, want) == 0);
}

/* Every value of one event, sequence and attempt included. */
static void check_event(const jb_event *e, const Jimbot__Infra__V1__Event *r)
{
    check_str(e->id, r->id);
    check_str(e->topic, r->topic);
    check_str(e->type, r->type);
    check_str(e->source, r->source);
    CHECK(e->timestamp_ms == r->timestamp_ms);
    CHECK(e->sequence == r->sequence);
    CHECK(e->delivery_attempt == r->delivery_attempt);
    CHECK(e->payload_len == r->payload.len);
    if (r->payload.len == 0)
        CHECK(e->payload == NULL);
    else
        CHECK(e->payload != NULL && memcmp(e->payload, r->payload.data, r->payload.len) == 0);
    CHECK(e->n_headers == r->n_headers);
    CHECK(e->n_headers == 0 || e->headers != NULL);
    for (size_t k = 0; k < r->n_headers; k++) {
        check_str(e->headers[k].key, r->headers[k]->key);
        check_str(e->headers[k].value, r->headers[k]->value);
    }
}

/* The error of a refused NUL byte: "event N: FIELD contains a NUL byte", N < @n_events. */
static void check_nul_error(const char *message, size_t n_events)
{
    size_t index = 0;
    CHECK(sscanf(message, "event %zu:", &index) == 1 && index < n_events);
    CHECK(strstr(message, " contains a NUL byte") != NULL);
}

/* Small enough that short inputs reach every one of them. */
static const jb__decode_limits LIMITS = {.max_events = 3,
                                         .max_headers = 2,
                                         .max_id_bytes = 4,
                                         .max_topic_bytes = 5,
                                         .max_name_bytes = 6};

/*
 * The refusal LIMITS call for in @r, decoded without limits: the first
 * event that breaks one, in the bus's order; "" when none does.
 */
static void expected_refusal(const jb__publish_req *r, char *why, size_t size)
{
    const jb__decode_limits *l = &LIMITS;
    why[0] = '\0';
    for (size_t i = 0; i < r->n_events && why[0] == '\0'; i++) {
        const jb_event *e = &r->events[i];
        if (i == l->max_events)
            snprintf(why, size, "event %zu: more than %zu events in one request", i, l->max_events);
        else if (strlen(e->topic) > l->max_topic_bytes)
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
    }
}

/*
 * @p decoded with LIMITS. @plain is the status without limits, @r what it
 * decoded (NULL unless JB_OK) and @n_events the number of events protobuf-c
 * saw (0 when it refused the input). Without a NUL byte, accepted and
 * refused are exactly what @r calls for; with one, a refusal names an event.
 */
static void check_limited(const uint8_t *p, size_t len, jb_status plain, const jb__publish_req *r,
                          size_t n_events)
{
    jb__publish_req got;
    jb_error err;
    jb_error_clear(&err);
    jb_status st = jb__publish_decode(p, len, &LIMITS, &got, &err);
    if (plain == JB_EPARSE) {
        CHECK(st == JB_EPARSE);
        return;
    }
    char want[512] = "";
    if (r != NULL)
        expected_refusal(r, want, sizeof(want));
    if (st == JB_OK) {
        CHECK(plain == JB_OK && want[0] == '\0' && got.n_events == n_events);
        jb__publish_req_release(&got);
        return;
    }
    CHECK(st == JB_EINVAL || st == JB_ETOOBIG);
    CHECK(got.events == NULL && got.n_events == 0);
    if (r != NULL) {
        CHECK(strcmp(err.message, want) == 0);
        CHECK((st == JB_ETOOBIG) == (strstr(want, "events in one request") != NULL));
        return;
    }
    size_t index = 0;
    CHECK(sscanf(err.message, "event %zu:", &index) == 1 && index < n_events);
}

static void check_publish(const uint8_t *p, size_t len)
{
    Jimbot__Infra__V1__PublishRequest *ref =
        jimbot__infra__v1__publish_request__unpack(NULL, len, p);
    jb__publish_req got;
    jb_error err;
    jb_error_clear(&err);
    jb_status st = jb__publish_decode(p, len, NULL, &got, &err);
    CHECK(st == JB_OK || st == JB_EPARSE || st == JB_EINVAL);
    if (ref == NULL) {
        CHECK(st == JB_EPARSE);
        CHECK(strcmp(err.message, "malformed PublishRequest") == 0);
        CHECK(got.events == NULL && got.n_events == 0);
        check_limited(p, len, st, NULL, 0);
        return;
    }
    if (st == JB_EINVAL) {
        /* A NUL byte in a string: protobuf-c keeps it, we refuse it. */
        CHECK(memchr(p, 0, len) != NULL);
        check_nul_error(err.message, ref->n_events);
        CHECK(got.events == NULL && got.n_events == 0);
        check_limited(p, len, st, NULL, ref->n_events);
        jimbot__infra__v1__publish_request__free_unpacked(ref, NULL);
        return;
    }
    CHECK(st == JB_OK);
    CHECK(got.n_events == ref->n_events);
    for (size_t i = 0; i < ref->n_events; i++) {
        const jb_event *e = &got.events[i];
        check_event(e, ref->events[i]);
        /* Not copied: a payload points into the input. */
        if (e->payload_len > 0)
            CHECK((const uint8_t *)e->payload >= p &&
                  (const uint8_t *)e->payload + e->payload_len <= p + len);
        CHECK(e->encoded == NULL);
    }
    check_limited(p, len, st, &got, ref->n_events);
    jimbot__infra__v1__publish_request__free_unpacked(ref, NULL);
    jb__publish_req_release(&got);
}

/*
 * The decoded event written again with the envelope encoder (and the
 * delivery suffix), read back by protobuf-c: the same event.
 */
static void check_reencoded(const jb_event *e)
{
    size_t size = jb__envelope_size(e);
    uint8_t *buf = malloc(size + JB_ENVELOPE_SUFFIX_MAX + 1);
    CHECK(buf != NULL);
    size_t n = jb__envelope_encode(e, buf);
    CHECK(n == size);
    if (e->payload_len > 0) {
        size_t at = jb__envelope_payload_offset(e);
        CHECK(at + e->payload_len <= n && memcmp(buf + at, e->payload, e->payload_len) == 0);
    }
    n += jb__envelope_suffix(e->sequence, e->delivery_attempt, buf + n);
    Jimbot__Infra__V1__Event *r = jimbot__infra__v1__event__unpack(NULL, n, buf);
    CHECK(r != NULL);
    check_event(e, r);
    jimbot__infra__v1__event__free_unpacked(r, NULL);
    free(buf);
}

static void check_envelope(uint8_t *p, size_t len)
{
    Jimbot__Infra__V1__Event *r = jimbot__infra__v1__event__unpack(NULL, len, p);
    jb__envelope *env = NULL;
    const jb_event *e = NULL;
    jb_error err;
    jb_error_clear(&err);
    jb_status st = jb__envelope_decode(p, len, &env, &e, &err);
    CHECK(st == JB_OK || st == JB_EPARSE);
    if (r == NULL) {
        CHECK(st == JB_EPARSE);
        CHECK(strstr(err.message, "malformed event envelope (") == err.message);
        return;
    }
    if (st != JB_OK) {
        /* A NUL byte in a string, as above. */
        CHECK(memchr(p, 0, len) != NULL);
        static const char prefix[] = "malformed event envelope: ";
        CHECK(strncmp(err.message, prefix, sizeof(prefix) - 1) == 0);
        check_nul_error(err.message + sizeof(prefix) - 1, 1);
        jimbot__infra__v1__event__free_unpacked(r, NULL);
        return;
    }
    CHECK(env != NULL && e != NULL && e->encoded == NULL);
    check_event(e, r);
    jimbot__infra__v1__event__free_unpacked(r, NULL);
    /* Nothing borrows the input: spoil it (ASan also sees reads of it). */
    uint8_t *copy = malloc(len > 0 ? len : 1);
    CHECK(copy != NULL);
    if (len > 0)
        memcpy(copy, p, len);
    memset(p, 0xee, len);
    Jimbot__Infra__V1__Event *again = jimbot__infra__v1__event__unpack(NULL, len, copy);
    CHECK(again != NULL);
    check_event(e, again);
    jimbot__infra__v1__event__free_unpacked(again, NULL);
    free(copy);
    check_reencoded(e);
    jb__envelope_free(env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of the exact size, so that ASan catches a read past its end. */
    uint8_t *p = malloc(size > 0 ? size : 1);
    if (p == NULL)
        return 0;
    if (size > 0)
        memcpy(p, data, size);
    check_publish(p, size);
    check_envelope(p, size); /* Last: it spoils the copy. */
    free(p);
    return 0;
}
