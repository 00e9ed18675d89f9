/*
 * Unit tests for the client's pure parts: the JSON to protobuf reader that
 * jimbotctl publish --json uses (src/rpc/pb_json.c), the gRPC status
 * mapping and the backoff (src/client/), and what the client does with no
 * server at all. Calls against a server are in
 * tests/integration/test_client.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "client/internal.h"
#include "core/buf.h"
#include "rpc/pb_json.h"

#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "jimbot/infrastructure/serialization/game_events.pb-c.h"
#include "jimbot/infrastructure/serialization/training_events.pb-c.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ProtobufCMessage *parse_ok(const char *type, const char *json)
{
    const ProtobufCMessageDescriptor *d = jb__pb_find_type(type);
    assert_non_null(d);
    ProtobufCMessage *m = NULL;
    jb_error err;
    jb_error_clear(&err);
    jb_status st = jb__pb_from_json(d, json, strlen(json), &m, &err);
    if (st != JB_OK)
        fail_msg("parsing %s: %s", json, err.message);
    return m;
}

static char *to_json(const ProtobufCMessage *m)
{
    jb__buf b;
    jb__buf_init(&b);
    jb__pb_to_json(m, &b);
    return b.data;
}

static void assert_same_bytes(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    size_t na = protobuf_c_message_get_packed_size(a);
    size_t nb = protobuf_c_message_get_packed_size(b);
    assert_int_equal(na, nb);
    uint8_t *pa = malloc(na + 1), *pb = malloc(nb + 1);
    protobuf_c_message_pack(a, pa);
    protobuf_c_message_pack(b, pb);
    assert_memory_equal(pa, pb, na);
    free(pa);
    free(pb);
}

/* parse(print(parse(x))) packs as parse(x), and printing is then stable. */
static void round_trip(const char *type, const char *json)
{
    ProtobufCMessage *m1 = parse_ok(type, json);
    char *j1 = to_json(m1);
    ProtobufCMessage *m2 = parse_ok(type, j1);
    char *j2 = to_json(m2);
    assert_string_equal(j1, j2);
    assert_same_bytes(m1, m2);
    free(j1);
    free(j2);
    protobuf_c_message_free_unpacked(m1, NULL);
    protobuf_c_message_free_unpacked(m2, NULL);
}

static const char hand_json[] =
    "{\"timestamp\":\"1764284401123\",\"gameId\":\"game-123 \\\"quoted\\\" \\u2660 "
    "\\ud83c\\udccf\","
    " \"handPlayed\":{\"handType\":\"HAND_TYPE_FLUSH_FIVE\",\"handLevel\":3,"
    "  \"cards\":[{\"suit\":\"SUIT_SPADES\",\"rank\":\"RANK_ACE\",\"seal\":\"SEAL_RED\"},"
    "            {\"suit\":2,\"rank\":10,\"extraChips\":-30}],"
    "  \"scoringIndexes\":[0,2],\"chips\":1234.5,\"mult\":-2.25,\"score\":1e300,"
    "  \"roundScore\":\"NaN\",\"targetScore\":\"-Infinity\",\"handsLeft\":0,"
    "  \"jokers\":[\"Jimbo\",\"Baron\"]},"
    " \"ante\":3,\"money\":-4,\"gameSequence\":\"18446744073709551615\"}";

static void test_json_game_state_update(void **state)
{
    (void)state;
    Jimbot__GameStateUpdate *u =
        (Jimbot__GameStateUpdate *)parse_ok("jimbot.GameStateUpdate", hand_json);
    assert_int_equal(u->timestamp, 1764284401123LL);
    assert_string_equal(u->game_id, "game-123 \"quoted\" \xe2\x99\xa0 \xf0\x9f\x83\x8f");
    assert_int_equal(u->update_case, JIMBOT__GAME_STATE_UPDATE__UPDATE_HAND_PLAYED);
    Jimbot__HandPlayed *h = u->hand_played;
    assert_int_equal(h->hand_type, JIMBOT__HAND_TYPE__HAND_TYPE_FLUSH_FIVE);
    assert_int_equal(h->n_cards, 2);
    assert_int_equal(h->cards[0]->rank, JIMBOT__RANK__RANK_ACE);
    assert_int_equal(h->cards[1]->suit, JIMBOT__SUIT__SUIT_HEARTS);
    assert_int_equal(h->cards[1]->extra_chips, -30);
    assert_int_equal(h->n_scoring_indexes, 2);
    assert_int_equal(h->scoring_indexes[1], 2);
    assert_true(h->chips == 1234.5);
    assert_true(h->score == 1e300);
    assert_true(isnan(h->round_score));
    assert_true(isinf(h->target_score) && h->target_score < 0);
    assert_string_equal(h->jokers[1], "Baron");
    assert_int_equal(u->money, -4);
    assert_true(u->game_sequence == UINT64_MAX);
    protobuf_c_message_free_unpacked(&u->base, NULL);
    round_trip("jimbot.GameStateUpdate", hand_json);
}

static void test_json_names_and_numbers(void **state)
{
    (void)state;
    /* Original field names, int64 as a number, 1e3 for an integer, null. */
    Jimbot__GameStateUpdate *u = (Jimbot__GameStateUpdate *)parse_ok(
        "jimbot.GameStateUpdate",
        "{\"game_id\":\"g\",\"timestamp\":1e3,\"game_sequence\":42,\"ante\":null,"
        "\"joker_purchased\":{\"joker_name\":\"Jimbo\",\"rarity\":\"RARITY_RARE\",\"cost\":\"6\"}"
        "}");
    assert_string_equal(u->game_id, "g");
    assert_int_equal(u->timestamp, 1000);
    assert_int_equal(u->game_sequence, 42);
    assert_int_equal(u->update_case, JIMBOT__GAME_STATE_UPDATE__UPDATE_JOKER_PURCHASED);
    assert_string_equal(u->joker_purchased->joker_name, "Jimbo");
    assert_int_equal(u->joker_purchased->cost, 6);
    char *j = to_json(&u->base);
    assert_string_equal(j, "{\"timestamp\":\"1000\",\"gameId\":\"g\",\"jokerPurchased\":{"
                           "\"jokerName\":\"Jimbo\",\"cost\":6,\"rarity\":\"RARITY_RARE\"},"
                           "\"gameSequence\":\"42\"}");
    free(j);
    protobuf_c_message_free_unpacked(&u->base, NULL);
}

static void test_json_maps_and_bytes(void **state)
{
    (void)state;
    const char *ev_json = "{\"id\":\"e1\",\"topic\":\"training_updates\",\"payload\":\"AAH-_4A\","
                          "\"headers\":{\"a\":\"1\",\"k\":\"v\"},\"sequence\":\"7\","
                          "\"deliveryAttempt\":4294967295}";
    Jimbot__Infra__V1__Event *e =
        (Jimbot__Infra__V1__Event *)parse_ok("jimbot.infra.v1.Event", ev_json);
    static const uint8_t want[] = {0x00, 0x01, 0xfe, 0xff, 0x80};
    assert_int_equal(e->payload.len, sizeof(want));
    assert_memory_equal(e->payload.data, want, sizeof(want));
    assert_int_equal(e->n_headers, 2);
    assert_string_equal(e->headers[1]->key, "k");
    assert_string_equal(e->headers[1]->value, "v");
    assert_int_equal(e->delivery_attempt, UINT32_MAX);
    char *j = to_json(&e->base);
    assert_non_null(strstr(j, "\"payload\":\"AAH+/4A=\""));
    free(j);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    round_trip("jimbot.infra.v1.Event", ev_json);
    round_trip("jimbot.TrainingUpdate",
               "{\"runId\":\"r\",\"metrics\":{\"a\":1,\"b\":-2.5,\"z\":1e-300},\"winRate\":0.5,"
               "\"iteration\":\"-9223372036854775808\"}");
    round_trip("jimbot.GameStateUpdate", "{}");
    round_trip("jimbot.GameStateUpdate", " { \"roundCompleted\" : { } } ");
}

static void expect_error(const char *type, const char *json, const char *message)
{
    const ProtobufCMessageDescriptor *d = jb__pb_find_type(type);
    ProtobufCMessage *m = NULL;
    jb_error err;
    jb_error_clear(&err);
    assert_int_equal(jb__pb_from_json(d, json, strlen(json), &m, &err), JB_EPARSE);
    assert_null(m);
    if (strcmp(err.message, message) != 0)
        fail_msg("%s: got \"%s\", want \"%s\"", json, err.message, message);
}

static void test_json_errors(void **state)
{
    (void)state;
    const char *g = "jimbot.GameStateUpdate";
    expect_error(g, "{\"handPlayed\":{\"chips\":\"lots\"}}",
                 "field 'handPlayed.chips': 'lots' is not a finite number");
    expect_error(g, "{\"handPlayed\":{\"chips\":true}}",
                 "field 'handPlayed.chips': expected a number");
    expect_error(g, "{\"handPlayed\":{\"cards\":[{},{\"suit\":\"SUIT_NONE\"}]}}",
                 "field 'handPlayed.cards[1].suit': unknown value 'SUIT_NONE' of jimbot.Suit");
    expect_error(g, "{\"gameID\":\"x\"}",
                 "field 'gameID': no such field in jimbot.GameStateUpdate");
    expect_error(g, "{\"ante\":2147483648}",
                 "field 'ante': '2147483648' is out of range for a 32-bit integer");
    expect_error(g, "{\"gameSequence\":-1}",
                 "field 'gameSequence': '-1' is out of range (unsigned)");
    expect_error(g, "{\"ante\":1.5}", "field 'ante': '1.5' is not an integer");
    expect_error(g, "{\"gameId\":7}", "field 'gameId': expected a string");
    expect_error(g, "{\"ante\":1,\"ante\":2}", "field 'ante': given twice");
    expect_error(g, "{\"handPlayed\":{},\"roundCompleted\":{}}",
                 "field 'roundCompleted': another member of its oneof is set already");
    expect_error(g, "{\"handPlayed\":{\"cards\":{}}}",
                 "field 'handPlayed.cards': expected an array");
    expect_error(g, "{\"ante\":1", "unexpected end of input: expected ',' or '}'");
    expect_error(g, "{\"ante\" 1}", "at byte 8: expected ':'");
    expect_error(g, "{} x", "at byte 3: unexpected text after the object");
    expect_error(g, "[]", "at byte 0: expected '{'");
    expect_error(g, "{\"gameId\":\"a\\qb\"}", "at byte 12: bad escape in a string");
    expect_error(g, "{\"gameId\":\"\\ud800\"}", "at byte 17: unpaired surrogate in a \\u escape");
    expect_error("jimbot.infra.v1.Event", "{\"payload\":\"a*\"}",
                 "field 'payload': bad base64 character");
    expect_error("jimbot.infra.v1.Event", "{\"headers\":{\"k\":1}}",
                 "field 'headers[\"k\"]': expected a string");
    char deep[400];
    size_t n = 0;
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{\"headers\":{\"k\":\"v\"}");
    for (int i = 0; i < 70; i++)
        deep[n++] = '}';
    deep[n] = '\0';
    expect_error("jimbot.infra.v1.Event", deep, "at byte 21: unexpected text after the object");
}

static void test_status_mapping(void **state)
{
    (void)state;
    static const struct {
        grpc_status_code code;
        jb_status want;
    } cases[] = {
        {GRPC_STATUS_OK, JB_OK},
        {GRPC_STATUS_INVALID_ARGUMENT, JB_EINVAL},
        {GRPC_STATUS_RESOURCE_EXHAUSTED, JB_EBACKPRESSURE},
        {GRPC_STATUS_UNAVAILABLE, JB_EUNAVAILABLE},
        {GRPC_STATUS_NOT_FOUND, JB_ENOENT},
        {GRPC_STATUS_DEADLINE_EXCEEDED, JB_ETIMEDOUT},
        {GRPC_STATUS_UNIMPLEMENTED, JB_EUNSUPPORTED},
        {GRPC_STATUS_CANCELLED, JB_ECLOSED},
        {GRPC_STATUS_INTERNAL, JB_EIO},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        jb_error err;
        jb_error_clear(&err);
        grpc_slice details = grpc_slice_from_static_string("why");
        assert_int_equal(jb__client_map_status(cases[i].code, "Publish", details, &err),
                         cases[i].want);
    }
    jb_error err;
    jb__client_map_status(GRPC_STATUS_NOT_FOUND, "Ack", grpc_slice_from_static_string("no group"),
                          &err);
    assert_string_equal(err.message, "Ack: NOT_FOUND: no group");
}

static void test_backoff(void **state)
{
    (void)state;
    jb_client_options o = {.addr = "127.0.0.1:1", .backoff_min_ms = 100, .backoff_max_ms = 1000};
    jb_client *c;
    assert_int_equal(jb_client_new(&o, &c, NULL), JB_OK);
    for (int round = 0; round < 50; round++) {
        uint32_t b1 = jb__client_backoff(c, 1), b3 = jb__client_backoff(c, 3);
        uint32_t b9 = jb__client_backoff(c, 9);
        assert_in_range(b1, 75, 100);
        assert_in_range(b3, 300, 400);
        assert_in_range(b9, 750, 1000);
    }
    jb_client_free(c);
}

/* No server: calls fail fast with JB_EUNAVAILABLE and a one-line reason. */
static void test_no_server(void **state)
{
    (void)state;
    jb_client_options o = {.addr = "127.0.0.1:1", .deadline_ms = 5000};
    jb_client *c;
    assert_int_equal(jb_client_new(&o, &c, NULL), JB_OK);
    assert_string_equal(jb_client_addr(c), "127.0.0.1:1");
    jb_event ev = {.topic = "t", .payload = "x", .payload_len = 1};
    jb_error err;
    uint32_t retry = 7;
    assert_int_equal(jb_client_publish(c, &ev, 1, NULL, NULL, &retry, &err), JB_EUNAVAILABLE);
    assert_int_equal(retry, 0);
    assert_non_null(strstr(err.message, "Publish: UNAVAILABLE: "));
    assert_null(strchr(err.message, '\n'));
    jb_health h;
    assert_int_equal(jb_client_health(c, NULL, &h, &err), JB_EUNAVAILABLE);
    assert_int_equal(jb_client_publish(c, &ev, 0, NULL, NULL, NULL, &err), JB_EINVAL);
    assert_int_equal(jb_client_ack(c, "", NULL, 0, &err), JB_EINVAL);
    assert_int_equal(jb_client_call(c, "nope", "", 0, NULL, NULL, &err), JB_EINVAL);
    /* A subscription keeps trying; freeing the client ends it. */
    jb_client_sub_options so = {.pattern = "a.>"};
    jb_client_sub *sub;
    assert_int_equal(jb_client_subscribe(c, &so, NULL, NULL, &sub, &err), JB_OK);
    jb_client_batch *b;
    assert_int_equal(jb_client_sub_next(sub, 300, &b, &err), JB_ETIMEDOUT);
    assert_true(jb_client_sub_reconnects(sub) >= 1);
    /* Buffered events that cannot be sent are dropped by free, not leaked. */
    assert_int_equal(jb_client_publish_buffered(c, &ev, &err), JB_OK);
    jb_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_game_state_update),
        cmocka_unit_test(test_json_names_and_numbers),
        cmocka_unit_test(test_json_maps_and_bytes),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_status_mapping),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_no_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
