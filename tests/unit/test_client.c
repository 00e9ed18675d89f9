/*
 * Unit tests for the client's pure parts: the JSON to protobuf reader that
 * jimbotctl publish --json uses (src/rpc/pb_json.c), the gRPC status
 * mapping and the backoff (src/client/), what the client does with no
 * server at all, and the Infrastructure calls' parts that need no server
 * (decoding a ResourceStatus into its C struct, argument checks, how a lease
 * ends when jimbotd cannot be reached). Calls against a server are in
 * tests/integration/test_client.py and test_cli_gpu*.py.
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
#include "jimbot/infra/v1/infrastructure.pb-c.h"
#include "jimbot/infrastructure/serialization/game_events.pb-c.h"
#include "jimbot/infrastructure/serialization/training_events.pb-c.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The client the lease callback in test_infra_no_server() calls with. */
static jb_client *jb_client_gpu_lease_client_for_test;

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

/* protobuf-c's string fields are `char *`; the literals are never written. */
static char *S(const char *s)
{
    return (char *)s;
}

/* A ResourceStatus packed with protobuf-c reads back field by field. */
static void test_resource_status_decode(void **state)
{
    (void)state;
    Jimbot__Infra__V1__GpuDeviceStatus d0 = JIMBOT__INFRA__V1__GPU_DEVICE_STATUS__INIT;
    d0.index = 0;
    d0.name = S("NVIDIA H200");
    d0.uuid = S("GPU-1234");
    d0.holder = S("training");
    d0.lease_id = S("lease-1");
    d0.reason = S("nightly");
    d0.expires_ms = 1764284401123;
    d0.granted_ms = 1764284400000;
    d0.holder_pid = 4242;
    d0.memory_total_bytes = (uint64_t)141 << 30;
    d0.memory_used_bytes = (uint64_t)3 << 30;
    d0.restored = 1;
    Jimbot__Infra__V1__GpuDeviceStatus d1 = JIMBOT__INFRA__V1__GPU_DEVICE_STATUS__INIT;
    d1.index = 1;
    d1.available = 1;
    Jimbot__Infra__V1__GpuDeviceStatus *gpus[] = {&d0, &d1};
    Jimbot__Infra__V1__GpuWaiter w = JIMBOT__INFRA__V1__GPU_WAITER__INIT;
    w.position = 1;
    w.component = S("inference");
    w.priority = -2;
    w.since_ms = 17;
    w.reason = S("eval");
    Jimbot__Infra__V1__GpuWaiter *waiters[] = {&w};
    Jimbot__Infra__V1__ApiQuotaComponent qc = JIMBOT__INFRA__V1__API_QUOTA_COMPONENT__INIT;
    qc.component = S("strategy");
    qc.used = 7;
    qc.share = 40;
    Jimbot__Infra__V1__ApiQuotaComponent *comps[] = {&qc};
    Jimbot__Infra__V1__ResourceStatus__QueueDepthsEntry qd =
        JIMBOT__INFRA__V1__RESOURCE_STATUS__QUEUE_DEPTHS_ENTRY__INIT;
    qd.key = S("claude");
    qd.value = 3;
    Jimbot__Infra__V1__ResourceStatus__QueueDepthsEntry *depths[] = {&qd};
    Jimbot__Infra__V1__BreakerStatus br = JIMBOT__INFRA__V1__BREAKER_STATUS__INIT;
    br.name = S("redis");
    br.state = JIMBOT__INFRA__V1__BREAKER_STATE__BREAKER_STATE_OPEN;
    br.failures = 5;
    br.retry_at_ms = 99;
    Jimbot__Infra__V1__BreakerStatus *breakers[] = {&br};

    Jimbot__Infra__V1__ResourceStatus m = JIMBOT__INFRA__V1__RESOURCE_STATUS__INIT;
    m.gpu_available = 1;
    m.gpu_source = S("nvml");
    m.n_gpus = 2;
    m.gpus = gpus;
    m.n_gpu_waiters = 1;
    m.gpu_waiters = waiters;
    m.claude_hourly_limit = 100;
    m.claude_requests_used = 7;
    m.claude_requests_remaining = 93;
    m.claude_waiting = 2;
    m.claude_window_seconds = 3600;
    m.claude_next_slot_ms = 1764284409999;
    m.n_claude_components = 1;
    m.claude_components = comps;
    m.n_queue_depths = 1;
    m.queue_depths = depths;
    m.n_breakers = 1;
    m.breakers = breakers;
    size_t len = protobuf_c_message_get_packed_size(&m.base);
    uint8_t *buf = malloc(len);
    protobuf_c_message_pack(&m.base, buf);

    jb_client_resource_status *s;
    jb_error err;
    assert_int_equal(jb_client_resource_status_decode(buf, len, &s, &err), JB_OK);
    assert_true(s->gpu_available);
    assert_string_equal(s->gpu_source, "nvml");
    assert_int_equal(s->n_gpus, 2);
    const jb_client_gpu_device *g = &s->gpus[0];
    assert_string_equal(g->name, "NVIDIA H200");
    assert_string_equal(g->uuid, "GPU-1234");
    assert_string_equal(g->holder, "training");
    assert_string_equal(g->lease_id, "lease-1");
    assert_string_equal(g->reason, "nightly");
    assert_int_equal(g->expires_ms, 1764284401123);
    assert_int_equal(g->granted_ms, 1764284400000);
    assert_int_equal(g->holder_pid, 4242);
    assert_int_equal(g->memory_total_bytes, (uint64_t)141 << 30);
    assert_int_equal(g->memory_used_bytes, (uint64_t)3 << 30);
    assert_false(g->available);
    assert_true(g->restored);
    assert_false(g->releasing);
    assert_int_equal(s->gpus[1].index, 1);
    assert_true(s->gpus[1].available);
    assert_string_equal(s->gpus[1].holder, "");
    assert_int_equal(s->n_gpu_waiters, 1);
    assert_int_equal(s->gpu_waiters[0].position, 1);
    assert_string_equal(s->gpu_waiters[0].component, "inference");
    assert_int_equal(s->gpu_waiters[0].priority, -2);
    assert_string_equal(s->gpu_waiters[0].reason, "eval");
    assert_int_equal(s->budget_limit, 100);
    assert_int_equal(s->budget_used, 7);
    assert_int_equal(s->budget_remaining, 93);
    assert_int_equal(s->budget_waiting, 2);
    assert_int_equal(s->budget_window_seconds, 3600);
    assert_int_equal(s->budget_next_slot_ms, 1764284409999);
    assert_int_equal(s->n_budget_components, 1);
    assert_string_equal(s->budget_components[0].component, "strategy");
    assert_int_equal(s->budget_components[0].used, 7);
    assert_int_equal(s->budget_components[0].share, 40);
    assert_int_equal(s->n_queues, 1);
    assert_string_equal(s->queues[0].queue, "claude");
    assert_int_equal(s->queues[0].depth, 3);
    assert_int_equal(s->n_breakers, 1);
    assert_string_equal(s->breakers[0].name, "redis");
    assert_int_equal(s->breakers[0].state, JB_CLIENT_BREAKER_OPEN);
    assert_int_equal(s->breakers[0].failures, 5);
    assert_int_equal(s->breakers[0].retry_at_ms, 99);
    /* The message as received, for a JSON printer. */
    assert_int_equal(s->encoded_len, len);
    assert_memory_equal(s->encoded, buf, len);
    jb_client_resource_status_free(s);

    /* An empty message is a valid, empty status. */
    assert_int_equal(jb_client_resource_status_decode("", 0, &s, &err), JB_OK);
    assert_int_equal(s->n_gpus, 0);
    assert_string_equal(s->gpu_source, "");
    jb_client_resource_status_free(s);
    jb_client_resource_status_free(NULL);

    /* Truncated: a field cut in the middle. */
    assert_int_equal(jb_client_resource_status_decode(buf, len - 1, &s, &err), JB_EPARSE);
    assert_non_null(strstr(err.message, "GetResourceStatus: malformed response"));
    free(buf);
}

/* The Redis part of a ResourceStatus, and its absence (an older jimbotd). */
static void test_resource_status_redis(void **state)
{
    (void)state;
    Jimbot__Infra__V1__RedisComponentStatus c0 = JIMBOT__INFRA__V1__REDIS_COMPONENT_STATUS__INIT;
    c0.component = S("claude");
    c0.username = S("jb-claude");
    c0.key_prefix = S("claude:");
    c0.connections = 3;
    c0.allowance = 2;
    c0.connections_closed = 7;
    Jimbot__Infra__V1__RedisComponentStatus c1 = JIMBOT__INFRA__V1__REDIS_COMPONENT_STATUS__INIT;
    c1.component = S("analytics");
    Jimbot__Infra__V1__RedisComponentStatus *comps[] = {&c0, &c1};
    Jimbot__Infra__V1__RedisStatus r = JIMBOT__INFRA__V1__REDIS_STATUS__INIT;
    r.configured = 1;
    r.url = S("redis://127.0.0.1:6379");
    r.error = S("connection refused");
    r.checked_ms = 1764284400000;
    r.connections = 9;
    r.max_connections = 20;
    r.n_components = 2;
    r.components = comps;
    Jimbot__Infra__V1__ResourceStatus m = JIMBOT__INFRA__V1__RESOURCE_STATUS__INIT;
    m.redis = &r;
    size_t len = protobuf_c_message_get_packed_size(&m.base);
    uint8_t *buf = malloc(len);
    protobuf_c_message_pack(&m.base, buf);

    jb_client_resource_status *s;
    jb_error err;
    assert_int_equal(jb_client_resource_status_decode(buf, len, &s, &err), JB_OK);
    const jb_client_redis_status *rs = &s->redis;
    assert_true(rs->configured);
    assert_false(rs->reachable);
    assert_string_equal(rs->url, "redis://127.0.0.1:6379");
    assert_string_equal(rs->error, "connection refused");
    assert_int_equal(rs->checked_ms, 1764284400000);
    assert_int_equal(rs->connections, 9);
    assert_int_equal(rs->max_connections, 20);
    assert_int_equal(rs->n_components, 2);
    assert_string_equal(rs->components[0].component, "claude");
    assert_string_equal(rs->components[0].username, "jb-claude");
    assert_string_equal(rs->components[0].key_prefix, "claude:");
    assert_int_equal(rs->components[0].connections, 3);
    assert_int_equal(rs->components[0].allowance, 2);
    assert_int_equal(rs->components[0].connections_closed, 7);
    assert_string_equal(rs->components[1].component, "analytics");
    assert_string_equal(rs->components[1].username, "");
    jb_client_resource_status_free(s);
    free(buf);

    /* No RedisStatus at all: not configured, and the strings are "" rather than NULL. */
    assert_int_equal(jb_client_resource_status_decode("", 0, &s, &err), JB_OK);
    assert_false(s->redis.configured);
    assert_string_equal(s->redis.url, "");
    assert_string_equal(s->redis.error, "");
    assert_int_equal(s->redis.n_components, 0);
    jb_client_resource_status_free(s);
}

static void redis_access_never_called(jb_status status, jb_client_redis_access *a,
                                      const jb_error *err, void *userdata)
{
    (void)status;
    (void)err;
    (void)userdata;
    jb_client_redis_access_free(a);
    fail_msg("a call that failed must not call its callback");
}

static void redis_access_ended(jb_status status, jb_client_redis_access *a, const jb_error *err,
                               void *userdata)
{
    int *seen = userdata;
    *seen = status == JB_EUNAVAILABLE && a == NULL && err != NULL &&
                    strstr(err->message, "GetRedisAccess: UNAVAILABLE") != NULL
                ? 1
                : -1;
}

/* GetRedisAccess without a server: argument checks, the mapped status, the callback once. */
static void test_redis_access_no_server(void **state)
{
    (void)state;
    jb_client_options o = {.addr = "127.0.0.1:1", .deadline_ms = 5000};
    jb_client *c;
    assert_int_equal(jb_client_new(&o, &c, NULL), JB_OK);
    jb_error err;
    jb_client_redis_access *a = NULL;
    assert_int_equal(jb_client_redis_access_get(c, "", &a, &err), JB_EINVAL);
    assert_string_equal(err.message, "GetRedisAccess: no component");
    assert_int_equal(jb_client_redis_access_get(c, NULL, &a, &err), JB_EINVAL);
    assert_int_equal(jb_client_redis_access_get_async(c, "", redis_access_never_called, NULL, &err),
                     JB_EINVAL);
    assert_int_equal(jb_client_redis_access_get_async(c, "claude", NULL, NULL, &err), JB_EINVAL);
    assert_int_equal(jb_client_redis_access_get(c, "claude", &a, &err), JB_EUNAVAILABLE);
    assert_null(a);
    assert_non_null(strstr(err.message, "GetRedisAccess: UNAVAILABLE: "));
    int seen = 0;
    assert_int_equal(jb_client_redis_access_get_async(c, "claude", redis_access_ended, &seen, &err),
                     JB_OK);
    for (int i = 0; i < 1000 && seen == 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(seen, 1);
    jb_client_redis_access_free(NULL);
    jb_client_free(c);
}

static void refuse_blocking_from_callback(jb_client_gpu *lease, const jb_client_gpu_event *ev,
                                          void *userdata)
{
    (void)lease;
    int *seen = userdata;
    if (ev->kind != JB_CLIENT_GPU_ENDED)
        return;
    jb_error err;
    jb_client_quota_request q = {.component = "x"};
    jb_client_quota out;
    /* On the client thread a blocking call would wait for itself. */
    if (jb_client_quota_acquire(jb_client_gpu_lease_client_for_test, &q, &out, &err) == JB_EINVAL &&
        strstr(err.message, "would deadlock") != NULL)
        *seen = ev->status == JB_EUNAVAILABLE ? 1 : -1;
    else
        *seen = -1;
}

/* Without a server: argument checks, and how a lease request ends. */
static void test_infra_no_server(void **state)
{
    (void)state;
    jb_client_options o = {.addr = "127.0.0.1:1", .deadline_ms = 5000};
    jb_client *c;
    assert_int_equal(jb_client_new(&o, &c, NULL), JB_OK);
    jb_error err;
    jb_client_gpu *g = NULL;

    jb_client_gpu_options go = {.component = ""};
    assert_int_equal(jb_client_gpu_acquire_async(c, &go, NULL, NULL, &g, &err), JB_EINVAL);
    assert_string_equal(err.message, "AcquireGpu: no component");
    assert_int_equal(jb_client_gpu_acquire_async(c, NULL, NULL, NULL, &g, &err), JB_EINVAL);
    char long_id[200];
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    go = (jb_client_gpu_options){.component = "training", .lease_id = long_id};
    assert_int_equal(jb_client_gpu_acquire_async(c, &go, NULL, NULL, &g, &err), JB_EINVAL);
    assert_null(g);
    assert_int_equal(jb_client_gpu_release_id(c, "", NULL, &err), JB_EINVAL);
    assert_int_equal(jb_client_gpu_release_id(c, NULL, NULL, &err), JB_EINVAL);
    jb_client_quota_request q = {.component = NULL, .count = 1};
    jb_client_quota qa;
    assert_int_equal(jb_client_quota_acquire(c, &q, &qa, &err), JB_EINVAL);

    /* Blocking: no handle, the mapped status, one line. */
    go = (jb_client_gpu_options){.component = "training"};
    assert_int_equal(jb_client_gpu_acquire(c, &go, 10000, &g, &err), JB_EUNAVAILABLE);
    assert_null(g);
    assert_non_null(strstr(err.message, "AcquireGpu: UNAVAILABLE: "));
    assert_null(strchr(err.message, '\n'));
    q.component = "strategy";
    assert_int_equal(jb_client_quota_acquire(c, &q, &qa, &err), JB_EUNAVAILABLE);
    assert_non_null(strstr(err.message, "AcquireApiQuota: UNAVAILABLE: "));
    jb_client_resource_status *rs;
    assert_int_equal(jb_client_resource_status_get(c, &rs, &err), JB_EUNAVAILABLE);

    /* Pull mode: ENDED, and again on every later call. */
    assert_int_equal(jb_client_gpu_acquire_async(c, &go, NULL, NULL, &g, &err), JB_OK);
    jb_client_gpu_event ev;
    assert_int_equal(jb_client_gpu_wait(g, 10000, &ev, &err), JB_OK);
    assert_int_equal(ev.kind, JB_CLIENT_GPU_ENDED);
    assert_int_equal(ev.status, JB_EUNAVAILABLE);
    assert_int_equal(jb_client_gpu_wait(g, 0, &ev, &err), JB_OK);
    assert_int_equal(ev.kind, JB_CLIENT_GPU_ENDED);
    jb_client_gpu_state(g, &ev);
    assert_int_equal(ev.kind, JB_CLIENT_GPU_ENDED);
    assert_string_equal(ev.lease_id, "");
    /* Releasing what ended does nothing and succeeds; freeing twice is not allowed, once is. */
    assert_int_equal(jb_client_gpu_release(g, NULL, &err), JB_OK);
    jb_client_gpu_free(g);
    jb_client_gpu_free(NULL);

    /* Callback mode: ENDED comes to the callback, where blocking calls are refused. */
    int seen = 0;
    jb_client_gpu_lease_client_for_test = c;
    assert_int_equal(
        jb_client_gpu_acquire_async(c, &go, refuse_blocking_from_callback, &seen, &g, &err), JB_OK);
    assert_int_equal(jb_client_gpu_wait(g, 0, &ev, &err), JB_EINVAL);
    for (int i = 0; i < 1000 && seen == 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(seen, 1);
    jb_client_gpu_free(g);

    /* A handle left live is ended and freed by jb_client_free() (no leak under ASan). */
    assert_int_equal(jb_client_gpu_acquire_async(c, &go, NULL, NULL, &g, &err), JB_OK);
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
        cmocka_unit_test(test_resource_status_decode),
        cmocka_unit_test(test_infra_no_server),
        cmocka_unit_test(test_resource_status_redis),
        cmocka_unit_test(test_redis_access_no_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
