/*
 * Protobuf messages (protobuf-c) as JSON, following the proto3 JSON mapping:
 * lowerCamelCase names, 64-bit integers as strings, enums by name, bytes in
 * base64, default values omitted, maps as objects. The output is what
 * Python's json_format.MessageToDict and C++'s MessageToJsonString produce,
 * so tools and tests in every language agree.
 *
 * Also a registry of the message types in proto/, by full name, so that a
 * payload whose Event.type names a known type can be decoded and shown.
 */
#ifndef JB_RPC_PB_JSON_H
#define JB_RPC_PB_JSON_H

#include "core/buf.h"

#include <protobuf-c/protobuf-c.h>

/* Appends @msg as one line of JSON (no newline) to @out. */
void jb__pb_to_json(const ProtobufCMessage *msg, jb__buf *out);

/*
 * The descriptor of a message type in proto/ by full name
 * ("jimbot.GameStateUpdate", "jimbot.infra.v1.Event"), or NULL.
 * Nested types are found too. The result is static.
 */
const ProtobufCMessageDescriptor *jb__pb_find_type(const char *full_name);

/* Calls @fn for each top-level message type known to jb__pb_find_type. */
void jb__pb_each_type(void (*fn)(const ProtobufCMessageDescriptor *desc, void *ud), void *ud);

#endif /* JB_RPC_PB_JSON_H */
