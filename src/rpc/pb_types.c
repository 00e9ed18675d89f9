/*
 * The registry of message types defined in proto/ (src/rpc/pb_json.h).
 *
 * A static table of the top-level descriptors of every generated file;
 * nested types are found by walking them. Add a line here when a new
 * top-level message is added to proto/ (tests/integration/test_xlang.py
 * checks that every message known to Python is known here).
 */
#include "rpc/pb_json.h"

#include "jimbot/infra/v1/config_service.pb-c.h"
#include "jimbot/infra/v1/event_bus.pb-c.h"
#include "jimbot/infra/v1/health.pb-c.h"
#include "jimbot/infra/v1/infrastructure.pb-c.h"
#include "jimbot/infrastructure/serialization/game_events.pb-c.h"
#include "jimbot/infrastructure/serialization/strategy_events.pb-c.h"
#include "jimbot/infrastructure/serialization/training_events.pb-c.h"

#include <string.h>

static const ProtobufCMessageDescriptor *const top_level[] = {
    /* game_events.proto */
    &jimbot__game_state_update__descriptor,
    &jimbot__joker_purchased__descriptor,
    &jimbot__hand_played__descriptor,
    &jimbot__round_completed__descriptor,
    &jimbot__card__descriptor,
    /* training_events.proto, strategy_events.proto */
    &jimbot__training_update__descriptor,
    &jimbot__strategy_request__descriptor,
    &jimbot__strategy_response__descriptor,
    /* event_bus.proto */
    &jimbot__infra__v1__event__descriptor,
    &jimbot__infra__v1__publish_request__descriptor,
    &jimbot__infra__v1__publish_response__descriptor,
    &jimbot__infra__v1__subscribe_request__descriptor,
    &jimbot__infra__v1__event_batch__descriptor,
    &jimbot__infra__v1__ack_request__descriptor,
    &jimbot__infra__v1__ack_response__descriptor,
    &jimbot__infra__v1__nack_request__descriptor,
    &jimbot__infra__v1__nack_response__descriptor,
    &jimbot__infra__v1__list_groups_request__descriptor,
    &jimbot__infra__v1__group_info__descriptor,
    &jimbot__infra__v1__list_groups_response__descriptor,
    &jimbot__infra__v1__delete_group_request__descriptor,
    &jimbot__infra__v1__delete_group_response__descriptor,
    /* infrastructure.proto */
    &jimbot__infra__v1__get_resource_status_request__descriptor,
    &jimbot__infra__v1__resource_status__descriptor,
    &jimbot__infra__v1__queue_status__descriptor,
    &jimbot__infra__v1__breaker_status__descriptor,
    &jimbot__infra__v1__redis_status__descriptor,
    &jimbot__infra__v1__redis_component_status__descriptor,
    &jimbot__infra__v1__get_redis_access_request__descriptor,
    &jimbot__infra__v1__redis_access__descriptor,
    &jimbot__infra__v1__gpu_device_status__descriptor,
    &jimbot__infra__v1__gpu_waiter__descriptor,
    &jimbot__infra__v1__api_quota_component__descriptor,
    &jimbot__infra__v1__acquire_gpu_request__descriptor,
    &jimbot__infra__v1__gpu_lease_event__descriptor,
    &jimbot__infra__v1__gpu_queued__descriptor,
    &jimbot__infra__v1__gpu_grant__descriptor,
    &jimbot__infra__v1__gpu_keepalive__descriptor,
    &jimbot__infra__v1__gpu_expiring__descriptor,
    &jimbot__infra__v1__release_gpu_request__descriptor,
    &jimbot__infra__v1__release_gpu_response__descriptor,
    &jimbot__infra__v1__acquire_api_quota_request__descriptor,
    &jimbot__infra__v1__acquire_api_quota_response__descriptor,
    &jimbot__infra__v1__queued_request__descriptor,
    &jimbot__infra__v1__queued_response__descriptor,
    &jimbot__infra__v1__take_requests_request__descriptor,
    &jimbot__infra__v1__respond_response__descriptor,
    /* config_service.proto */
    &jimbot__infra__v1__get_config_request__descriptor,
    &jimbot__infra__v1__config_entry__descriptor,
    &jimbot__infra__v1__get_config_response__descriptor,
    &jimbot__infra__v1__watch_config_request__descriptor,
    &jimbot__infra__v1__config_change__descriptor,
    /* health.proto */
    &grpc__health__v1__health_check_request__descriptor,
    &grpc__health__v1__health_check_response__descriptor,
};

/* Depth-first search through the message types nested in @d. */
static const ProtobufCMessageDescriptor *find_in(const ProtobufCMessageDescriptor *d,
                                                 const char *name)
{
    if (strcmp(d->name, name) == 0)
        return d;
    size_t prefix = strlen(d->name);
    if (strncmp(d->name, name, prefix) != 0 || name[prefix] != '.')
        return NULL;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const ProtobufCMessageDescriptor *hit = find_in(f->descriptor, name);
        if (hit != NULL)
            return hit;
    }
    return NULL;
}

const ProtobufCMessageDescriptor *jb__pb_find_type(const char *full_name)
{
    for (size_t i = 0; i < sizeof(top_level) / sizeof(top_level[0]); i++) {
        const ProtobufCMessageDescriptor *hit = find_in(top_level[i], full_name);
        if (hit != NULL)
            return hit;
    }
    return NULL;
}

void jb__pb_each_type(void (*fn)(const ProtobufCMessageDescriptor *desc, void *ud), void *ud)
{
    for (size_t i = 0; i < sizeof(top_level) / sizeof(top_level[0]); i++)
        fn(top_level[i], ud);
}
