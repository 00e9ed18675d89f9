/*
 * xlang_codec: the C side of the cross-language tests (test_xlang.py).
 *
 *   xlang_codec types          every top-level message type C knows, one per line
 *   xlang_codec encode NAME    C-built sample NAME, serialized, to stdout
 *   xlang_codec json NAME      the same sample as proto3 JSON
 *   xlang_codec decode TYPE    bytes on stdin parsed as TYPE (a full name);
 *                              prints the JSON, then the re-encoded bytes in hex
 *   xlang_codec fromjson TYPE  proto3 JSON on stdin read as TYPE by
 *                              jb__pb_from_json(); prints the bytes in hex
 *
 * Samples set every field with non-default values, so that a decoder that
 * dropped any field would be caught by the JSON comparison in Python.
 * Built with -Wno-write-strings: protobuf-c fields are `char *` and the
 * samples point them at literals that are never written.
 * Exit status: 0, or 2 with a one-line reason (malformed input included).
 */
#include "core/buf.h"
#include "rpc/pb_json.h"

#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "jimbot/infrastructure/serialization/game_events.pb-c.h"
#include "jimbot/infrastructure/serialization/strategy_events.pb-c.h"
#include "jimbot/infrastructure/serialization/training_events.pb-c.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Storage for the samples' nested parts: the samples live for the whole run. */
static Jimbot__Card cards[3];
static Jimbot__Card *card_ptrs[3];
static Jimbot__JokerPurchased joker = JIMBOT__JOKER_PURCHASED__INIT;
static Jimbot__HandPlayed hand = JIMBOT__HAND_PLAYED__INIT;
static Jimbot__RoundCompleted round_done = JIMBOT__ROUND_COMPLETED__INIT;
static Jimbot__GameStateUpdate update = JIMBOT__GAME_STATE_UPDATE__INIT;
static Jimbot__TrainingUpdate training = JIMBOT__TRAINING_UPDATE__INIT;
static Jimbot__TrainingUpdate__MetricsEntry metric_entries[2];
static Jimbot__TrainingUpdate__MetricsEntry *metric_ptrs[2];
static Jimbot__StrategyRequest strategy_req = JIMBOT__STRATEGY_REQUEST__INIT;
static Jimbot__StrategyResponse strategy_resp = JIMBOT__STRATEGY_RESPONSE__INIT;
static Jimbot__GameStateUpdate context = JIMBOT__GAME_STATE_UPDATE__INIT;
static Jimbot__Infra__V1__Event event = JIMBOT__INFRA__V1__EVENT__INIT;
static Jimbot__Infra__V1__Event__HeadersEntry header_entries[2];
static Jimbot__Infra__V1__Event__HeadersEntry *header_ptrs[2];

static char *synergies[] = {"Baron", "Mime", "Blueprint ♠"};
static char *jokers_held[] = {"Baron", "Mime", "Jimbo"};
static char *scoring_jokers[] = {"Jimbo", "Baron"};
static uint32_t scoring_indexes[] = {0, 2};
static char *options[] = {"buy Jimbo", "reroll", "skip"};
static uint8_t payload_bytes[] = {0x00, 0x01, 0xfe, 0xff, 0x80};

static void fill_common(Jimbot__GameStateUpdate *u)
{
    u->timestamp = 1764284401123;
    u->game_id = "game-123 \"quoted\"";
    u->ante = 3;
    u->money = -4;
    u->game_sequence = 18446744073709551615ULL;
}

static ProtobufCMessage *sample(const char *name)
{
    for (int i = 0; i < 3; i++) {
        jimbot__card__init(&cards[i]);
        card_ptrs[i] = &cards[i];
    }
    cards[0].suit = JIMBOT__SUIT__SUIT_HEARTS;
    cards[0].rank = JIMBOT__RANK__RANK_ACE;
    cards[0].enhancement = JIMBOT__ENHANCEMENT__ENHANCEMENT_GLASS;
    cards[0].edition = JIMBOT__EDITION__EDITION_POLYCHROME;
    cards[0].seal = JIMBOT__SEAL__SEAL_RED;
    cards[0].extra_chips = 15;
    cards[1].suit = JIMBOT__SUIT__SUIT_SPADES;
    cards[1].rank = JIMBOT__RANK__RANK_10;
    cards[2].suit = JIMBOT__SUIT__SUIT_DIAMONDS;
    cards[2].rank = JIMBOT__RANK__RANK_ACE;
    cards[2].enhancement = JIMBOT__ENHANCEMENT__ENHANCEMENT_STEEL;

    if (strcmp(name, "joker_purchased") == 0) {
        fill_common(&update);
        joker.joker_name = "Jimbo";
        joker.cost = 2;
        joker.n_synergies = 3;
        joker.synergies = synergies;
        joker.rarity = JIMBOT__RARITY__RARITY_COMMON;
        joker.edition = JIMBOT__EDITION__EDITION_NEGATIVE;
        joker.slot = 4;
        joker.n_jokers_held = 3;
        joker.jokers_held = jokers_held;
        update.update_case = JIMBOT__GAME_STATE_UPDATE__UPDATE_JOKER_PURCHASED;
        update.joker_purchased = &joker;
        return &update.base;
    }
    if (strcmp(name, "hand_played") == 0) {
        fill_common(&update);
        hand.hand_type = JIMBOT__HAND_TYPE__HAND_TYPE_FLUSH_FIVE;
        hand.hand_level = 7;
        hand.n_cards = 3;
        hand.cards = card_ptrs;
        hand.n_scoring_indexes = 2;
        hand.scoring_indexes = scoring_indexes;
        hand.chips = 1234.5;
        hand.mult = 0.1;
        hand.score = 1e300;
        hand.round_score = INFINITY;
        hand.target_score = 300;
        hand.hands_left = 2;
        hand.discards_left = -1;
        hand.n_jokers = 2;
        hand.jokers = scoring_jokers;
        update.update_case = JIMBOT__GAME_STATE_UPDATE__UPDATE_HAND_PLAYED;
        update.hand_played = &hand;
        return &update.base;
    }
    if (strcmp(name, "round_completed") == 0) {
        fill_common(&update);
        round_done.ante = 8;
        round_done.round = 24;
        round_done.blind = JIMBOT__BLIND_TYPE__BLIND_TYPE_BOSS;
        round_done.boss_name = "The Wall";
        round_done.won = 1;
        round_done.final_score = 200000.25;
        round_done.target_score = 100000;
        round_done.reward = 5;
        round_done.interest = 5;
        round_done.money = 47;
        round_done.hands_left = 1;
        round_done.discards_left = 3;
        update.update_case = JIMBOT__GAME_STATE_UPDATE__UPDATE_ROUND_COMPLETED;
        update.round_completed = &round_done;
        return &update.base;
    }
    if (strcmp(name, "training_update") == 0) {
        training.timestamp_ms = 1764284401999;
        training.run_id = "ppo-balatro-7";
        training.algorithm = "PPO";
        training.iteration = 42;
        training.env_steps = 9876543210;
        training.episodes = 12345;
        training.episode_reward_mean = 1.5;
        training.episode_reward_min = -3.25;
        training.episode_reward_max = 17;
        training.episode_len_mean = 88.125;
        training.policy_loss = 0.0123;
        training.value_loss = 4.5e-7;
        training.entropy = 1.0986;
        training.kl = 0.02;
        training.learning_rate = 3e-4;
        training.env_steps_per_second = 15000.5;
        training.max_ante = 6;
        training.win_rate = 0.125;
        training.checkpoint_path = "/ckpt/ppo/000042";
        for (int i = 0; i < 2; i++) {
            jimbot__training_update__metrics_entry__init(&metric_entries[i]);
            metric_ptrs[i] = &metric_entries[i];
        }
        metric_entries[0].key = "grad_norm";
        metric_entries[0].value = 0.75;
        metric_entries[1].key = "vf_explained_var";
        metric_entries[1].value = -0.5;
        training.n_metrics = 2;
        training.metrics = metric_ptrs;
        return &training.base;
    }
    if (strcmp(name, "strategy_request") == 0) {
        fill_common(&context);
        context.update_case = JIMBOT__GAME_STATE_UPDATE__UPDATE_ROUND_COMPLETED;
        round_done.ante = 2;
        round_done.won = 1;
        context.round_completed = &round_done;
        strategy_req.request_id = "req-1";
        strategy_req.timestamp_ms = 1764284402000;
        strategy_req.requester = "training";
        strategy_req.game_id = "game-123";
        strategy_req.kind = JIMBOT__DECISION_KIND__DECISION_KIND_SHOP;
        strategy_req.state = &context;
        strategy_req.question = "Which joker fits a flush build?\nAnswer briefly.";
        strategy_req.n_options = 3;
        strategy_req.options = options;
        strategy_req.priority = 10;
        strategy_req.deadline_ms = 1764284412000;
        return &strategy_req.base;
    }
    if (strcmp(name, "strategy_response") == 0) {
        strategy_resp.request_id = "req-1";
        strategy_resp.timestamp_ms = 1764284403000;
        strategy_resp.recommendation = "buy Jimbo";
        strategy_resp.chosen_option = -1;
        strategy_resp.confidence = 0.875;
        strategy_resp.reasoning = "cheap mult";
        strategy_resp.model = "claude";
        strategy_resp.input_tokens = 812;
        strategy_resp.output_tokens = 64;
        strategy_resp.from_cache = 1;
        strategy_resp.error = "none\t(tab)";
        return &strategy_resp.base;
    }
    if (strcmp(name, "event") == 0) {
        event.id = "0b8e6c1e-5f7a-4c1e-9a43-0c0ffee00001";
        event.topic = "game_events.hand_played";
        event.type = "jimbot.GameStateUpdate";
        event.timestamp_ms = 1764284401123;
        event.source = "game_reader";
        event.payload.data = payload_bytes;
        event.payload.len = sizeof(payload_bytes);
        for (int i = 0; i < 2; i++) {
            jimbot__infra__v1__event__headers_entry__init(&header_entries[i]);
            header_ptrs[i] = &header_entries[i];
        }
        header_entries[0].key = "jimbot-dlq-reason";
        header_entries[0].value = "max_deliver";
        header_entries[1].key = "trace";
        header_entries[1].value = "abc";
        event.n_headers = 2;
        event.headers = header_ptrs;
        event.sequence = 4294967297ULL;
        event.delivery_attempt = 3;
        return &event.base;
    }
    return NULL;
}

static void print_type(const ProtobufCMessageDescriptor *d, void *ud)
{
    (void)ud;
    printf("%s\n", d->name);
}

static int fail(const char *what)
{
    fprintf(stderr, "xlang_codec: %s\n", what);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "types") == 0) {
        jb__pb_each_type(print_type, NULL);
        return 0;
    }
    if (argc != 3)
        return fail("usage: xlang_codec types | encode NAME | json NAME | decode TYPE | "
                    "fromjson TYPE");

    if (strcmp(argv[1], "encode") == 0 || strcmp(argv[1], "json") == 0) {
        ProtobufCMessage *m = sample(argv[2]);
        if (m == NULL)
            return fail("unknown sample name");
        if (argv[1][0] == 'e') {
            size_t n = protobuf_c_message_get_packed_size(m);
            uint8_t *bytes = malloc(n ? n : 1);
            protobuf_c_message_pack(m, bytes);
            fwrite(bytes, 1, n, stdout);
            free(bytes);
        } else {
            jb__buf json;
            jb__buf_init(&json);
            jb__pb_to_json(m, &json);
            printf("%s\n", json.data);
            jb__buf_release(&json);
        }
        return 0;
    }

    if (strcmp(argv[1], "decode") == 0) {
        const ProtobufCMessageDescriptor *d = jb__pb_find_type(argv[2]);
        if (d == NULL)
            return fail("unknown message type");
        jb__buf in;
        jb__buf_init(&in);
        char chunk[4096];
        size_t got;
        while ((got = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
            jb__buf_append(&in, chunk, got);
        ProtobufCMessage *m =
            protobuf_c_message_unpack(d, NULL, in.len, (const uint8_t *)(in.data ? in.data : ""));
        jb__buf_release(&in);
        if (m == NULL)
            return fail("malformed protobuf");
        jb__buf out;
        jb__buf_init(&out);
        jb__pb_to_json(m, &out);
        printf("%s\n", out.data);
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *bytes = malloc(n ? n : 1);
        protobuf_c_message_pack(m, bytes);
        for (size_t i = 0; i < n; i++)
            printf("%02x", bytes[i]);
        printf("\n");
        free(bytes);
        jb__buf_release(&out);
        protobuf_c_message_free_unpacked(m, NULL);
        return 0;
    }
    if (strcmp(argv[1], "fromjson") == 0) {
        const ProtobufCMessageDescriptor *d = jb__pb_find_type(argv[2]);
        if (d == NULL)
            return fail("unknown message type");
        jb__buf in;
        jb__buf_init(&in);
        char chunk[4096];
        size_t got;
        while ((got = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
            jb__buf_append(&in, chunk, got);
        ProtobufCMessage *m;
        jb_error err;
        jb_status st = jb__pb_from_json(d, in.data ? in.data : "", in.len, &m, &err);
        jb__buf_release(&in);
        if (st != JB_OK)
            return fail(err.message);
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *bytes = malloc(n ? n : 1);
        protobuf_c_message_pack(m, bytes);
        for (size_t i = 0; i < n; i++)
            printf("%02x", bytes[i]);
        printf("\n");
        free(bytes);
        protobuf_c_message_free_unpacked(m, NULL);
        return 0;
    }
    return fail("unknown command");
}
