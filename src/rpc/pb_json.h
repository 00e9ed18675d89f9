/*
 * Protobuf messages (protobuf-c) as JSON, following the proto3 JSON mapping:
 * lowerCamelCase names, 64-bit integers as strings, enums by name, bytes in
 * base64, default values omitted, maps as objects. The output is what
 * Python's json_format.MessageToDict and C++'s MessageToJsonString produce,
 * so tools and tests in every language agree.
 *
 * The reverse, JSON to protobuf, accepts what proto3 JSON parsers accept
 * (see jb__pb_from_json()), so that people can write events by hand.
 *
 * Also a registry of the message types in proto/, by full name, so that a
 * payload whose Event.type names a known type can be decoded and shown.
 */
#ifndef JB_RPC_PB_JSON_H
#define JB_RPC_PB_JSON_H

#include "core/buf.h"

#include <protobuf-c/protobuf-c.h>

#include "jimbot/status.h"

#include <stddef.h>

/* Appends @msg as one line of JSON (no newline) to @out. */
void jb__pb_to_json(const ProtobufCMessage *msg, jb__buf *out);

/* Appends @len bytes of @s as a JSON string (quoted, escaped). */
void jb__json_put_string(jb__buf *out, const char *s, size_t len);

/* Appends @len bytes as a JSON string holding their standard base64. */
void jb__json_put_base64(jb__buf *out, const void *data, size_t len);

/*
 * Parses @len bytes of proto3 JSON into a new message of type @desc: field
 * names in lowerCamelCase or as in the .proto; 64-bit integers as numbers or
 * strings; enums by name or number; bytes in base64 (standard or URL-safe,
 * padding optional); "NaN", "Infinity", "-Infinity" for floating point; null
 * for a default value; maps as objects. On JB_OK *@out is owned by the
 * caller, freed with protobuf_c_message_free_unpacked(*out, NULL). On error,
 * JB_EPARSE with one line that names the field by its path
 * ("field 'handPlayed.chips': expected a number") or the byte of a syntax
 * error, and *@out is untouched. Safe on any thread.
 */
jb_status jb__pb_from_json(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                           ProtobufCMessage **out, jb_error *err);

/*
 * Bytes of a message of type @type (a full name) to one line of JSON
 * appended to @out. JB_ENOENT for an unknown type, JB_EPARSE for bytes that
 * do not decode (nothing appended then).
 */
jb_status jb__pb_bytes_to_json(const char *type, const void *data, size_t len, jb__buf *out);

/*
 * JSON to the serialized bytes of a message of type @type, appended to
 * @out. JB_ENOENT for an unknown type; otherwise as jb__pb_from_json().
 */
jb_status jb__pb_json_to_bytes(const char *type, const char *json, size_t len, jb__buf *out,
                               jb_error *err);

/*
 * The descriptor of a message type in proto/ by full name
 * ("jimbot.GameStateUpdate", "jimbot.infra.v1.Event"), or NULL.
 * Nested types are found too. The result is static.
 */
const ProtobufCMessageDescriptor *jb__pb_find_type(const char *full_name);

/* Calls @fn for each top-level message type known to jb__pb_find_type. */
void jb__pb_each_type(void (*fn)(const ProtobufCMessageDescriptor *desc, void *ud), void *ud);

#endif /* JB_RPC_PB_JSON_H */
