/*
 * schema/compat.h: wire and API compatibility between two descriptor sets.
 *
 * The internal API of jimbot-schema-check (src/schema/main.c) and of its unit
 * test; no part of libjimbot. A descriptor set is what
 * `protoc --descriptor_set_out` writes: a serialized
 * google.protobuf.FileDescriptorSet, decoded here with protobuf-c.
 *
 * jb_schema_compare() walks the BASELINE set and looks up every file,
 * message (nested ones too), field, oneof membership, enum, enum value,
 * service and method in the CURRENT set. Each change that would break an old
 * reader or writer of the baseline (on the wire, in JSON, or in generated
 * code) is reported once through a callback, in baseline order. Additions
 * are never breaks. docs/schema-evolution.md lists the rules.
 *
 * Nothing here keeps state between calls; the functions are safe from any
 * thread as long as the sets they read are not changed meanwhile.
 */
#ifndef JIMBOT_SCHEMA_COMPAT_H
#define JIMBOT_SCHEMA_COMPAT_H

#include "google/protobuf/descriptor.pb-c.h"
#include "jimbot/status.h"

#include <stddef.h>

/* A decoded descriptor set, as protobuf-c unpacks it. */
typedef Google__Protobuf__FileDescriptorSet jb_schema_set;

/*
 * One breaking change. Every string is borrowed and valid only until the
 * callback returns.
 *   file    the baseline file's name as stored in the descriptor (relative
 *           to protoc's include root), after the caller's prefix:
 *           "proto/jimbot/x.proto";
 *   scope   the full name of the message, enum or service concerned
 *           ("jimbot.HandPlayed", "jimbot.infra.v1.Event.HeadersEntry"),
 *           or NULL for a change to the file itself;
 *   detail  what changed, starting with the member when there is one:
 *           "field 5 'chips': type changed from double to float".
 */
typedef struct jb_schema_break {
    const char *file;
    const char *scope;
    const char *detail;
} jb_schema_break;

/* Called once per break; @brk and its strings are borrowed. */
typedef void (*jb_schema_break_fn)(const jb_schema_break *brk, void *userdata);

/* What a comparison looked at; counts are of the baseline's elements. */
typedef struct jb_schema_stats {
    size_t files;    /* baseline files */
    size_t messages; /* baseline messages found in both sets, nested ones included */
    size_t enums;    /* baseline enums found in both sets */
    size_t services; /* baseline services found in both sets */
    size_t breaks;   /* breaking changes reported */
} jb_schema_stats;

/*
 * Reads the descriptor set in the file at @path. On success stores a new set
 * in *@out, which the caller frees with jb_schema_set_free(), and returns
 * JB_OK. An unreadable file gives JB_EIO or JB_ENOENT, a file over 64 MiB
 * JB_ETOOBIG, and anything that does not decode as a well-formed descriptor
 * set (garbage, an empty file, a set without files, an element without its
 * name or number) JB_EPARSE; the reason goes to @err and *@out is untouched.
 */
jb_status jb_schema_set_load(const char *path, jb_schema_set **out, jb_error *err);

/*
 * The same from @len bytes at @data (borrowed; nothing points into them once
 * the call returns). @what names the input in error messages.
 */
jb_status jb_schema_set_decode(const void *data, size_t len, const char *what, jb_schema_set **out,
                               jb_error *err);

/* Frees a set from jb_schema_set_load() or _decode(); NULL is a no-op. */
void jb_schema_set_free(jb_schema_set *set);

/*
 * Checks that every element of @baseline still exists in @current in a
 * compatible form. Calls @on_break (may be NULL) for each breaking change,
 * with file names prefixed by @file_prefix (NULL: none; "proto/" for the
 * project's schemas), and fills @stats (may be NULL). Returns JB_OK when
 * there is no break, JB_EINCOMPATIBLE when there is at least one, JB_ENOMEM
 * (with no callback called) when it cannot allocate its working state.
 * Both sets are only read and must have passed jb_schema_set_decode()'s
 * checks (a set built in memory must have every name, number, type and type
 * name set).
 */
jb_status jb_schema_compare(const jb_schema_set *baseline, const jb_schema_set *current,
                            const char *file_prefix, jb_schema_break_fn on_break, void *userdata,
                            jb_schema_stats *stats);

#endif /* JIMBOT_SCHEMA_COMPAT_H */
