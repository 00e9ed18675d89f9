// xlang_cpp: the C++ side of the cross-language tests (test_xlang.py), built
// from protoc's --cpp_out output, as the C++ knowledge-graph modules would.
//
//   xlang_cpp roundtrip TYPE   bytes on stdin parsed as TYPE (a full name);
//                              prints proto3 JSON, then the re-encoded bytes
//                              (deterministic: map keys sorted) in hex
//   xlang_cpp selftest         builds each GameStateUpdate variant through the
//                              generated C++ API and checks it round-trips
//
// Exit status: 0, or 2 with a one-line reason (malformed input included).
#include "jimbot/infra/v1/event_bus.pb.h"
#include "jimbot/infrastructure/serialization/game_events.pb.h"
#include "jimbot/infrastructure/serialization/strategy_events.pb.h"
#include "jimbot/infrastructure/serialization/training_events.pb.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

namespace
{

int fail(const std::string &why)
{
    std::cerr << "xlang_cpp: " << why << "\n";
    return 2;
}

// The generated types this program knows; naming them also keeps the linker
// from dropping their registration from the static library.
const google::protobuf::Message *prototype(const std::string &name)
{
    static const google::protobuf::Message *const known[] = {
        &jimbot::GameStateUpdate::default_instance(),
        &jimbot::TrainingUpdate::default_instance(),
        &jimbot::StrategyRequest::default_instance(),
        &jimbot::StrategyResponse::default_instance(),
        &jimbot::infra::v1::Event::default_instance(),
    };
    for (const auto *m : known) {
        if (m->GetDescriptor()->full_name() == name)
            return m;
    }
    return nullptr;
}

std::string deterministic_bytes(const google::protobuf::Message &m)
{
    std::string out;
    google::protobuf::io::StringOutputStream raw(&out);
    google::protobuf::io::CodedOutputStream coded(&raw);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
    coded.Trim();
    return out;
}

int roundtrip(const std::string &type)
{
    const google::protobuf::Message *proto = prototype(type);
    if (proto == nullptr)
        return fail("unknown message type " + type);
    std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    std::unique_ptr<google::protobuf::Message> m(proto->New());
    if (!m->ParseFromString(in))
        return fail("malformed protobuf");
    std::string json;
    if (!google::protobuf::util::MessageToJsonString(*m, &json).ok())
        return fail("cannot render JSON");
    std::cout << json << "\n";
    for (unsigned char c : deterministic_bytes(*m))
        std::printf("%02x", c);
    std::printf("\n");
    return 0;
}

int selftest()
{
    jimbot::GameStateUpdate u;
    u.set_timestamp(1764284401123);
    u.set_game_id("game-cpp");
    u.mutable_joker_purchased()->set_joker_name("Jimbo");
    u.mutable_joker_purchased()->add_synergies("Baron");
    jimbot::GameStateUpdate back;
    if (!back.ParseFromString(u.SerializeAsString()) ||
        back.update_case() != jimbot::GameStateUpdate::kJokerPurchased ||
        back.joker_purchased().synergies(0) != "Baron")
        return fail("selftest: joker_purchased did not round-trip");

    auto *hand = u.mutable_hand_played(); // switches the oneof
    hand->set_hand_type(jimbot::HAND_TYPE_FLUSH);
    auto *card = hand->add_cards();
    card->set_suit(jimbot::SUIT_HEARTS);
    card->set_rank(jimbot::RANK_ACE);
    hand->set_score(1e300);
    if (u.has_joker_purchased() || !back.ParseFromString(u.SerializeAsString()) ||
        back.hand_played().cards(0).rank() != jimbot::RANK_ACE ||
        back.hand_played().score() != 1e300)
        return fail("selftest: hand_played did not round-trip");

    u.mutable_round_completed()->set_won(true);
    if (!back.ParseFromString(u.SerializeAsString()) || !back.round_completed().won())
        return fail("selftest: round_completed did not round-trip");
    std::cout << "selftest ok\n";
    return 0;
}

} // namespace

int main(int argc, char **argv)
{
    GOOGLE_PROTOBUF_VERIFY_VERSION;
    std::string cmd = argc > 1 ? argv[1] : "";
    int rc;
    if (argc == 3 && cmd == "roundtrip")
        rc = roundtrip(argv[2]);
    else if (argc == 2 && cmd == "selftest")
        rc = selftest();
    else
        rc = fail("usage: xlang_cpp roundtrip TYPE | selftest");
    google::protobuf::ShutdownProtobufLibrary();
    return rc;
}
