/*
 * Schema compatibility: compares a baseline descriptor set with the current
 * one (src/schema/compat.h).
 *
 * Design. The baseline drives the walk: every element it declares must still
 * be found in the current set, by the identity that old readers and writers
 * depend on. Fields are matched by number (the wire identity), then their
 * name, JSON name, type, label and oneof are compared; enum values are
 * matched by number too; files by name; messages, enums, services and
 * methods by name within their parent. Additions are never looked at except
 * to catch reuse of what the baseline had reserved. Each break is reported
 * once and the walk does not descend into an element that is gone, so one
 * removal gives one line.
 *
 * Field types are compared through a description ("double",
 * "jimbot.HandPlayed", "map<string, int32>"): a map field's synthetic
 * *Entry message is described by its key and value types and never compared
 * on its own, so renaming a map field is reported once (as a rename) and
 * changing its value type once (as a type change).
 *
 * Invariants: sets given to jb_schema_compare() have every name, number and
 * type name that jb_schema_set_decode() requires; full names fit in
 * JB__SCHEMA_NAME_MAX bytes (decode refuses longer ones; an in-memory set that
 * breaks this gets truncated names in its reports, never an overflow).
 *
 * No global state; depends on protobuf-c's generated descriptor.proto code and
 * on jb_status/jb_error only.
 */
#include "schema/compat.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef Google__Protobuf__FileDescriptorProto file_proto;
typedef Google__Protobuf__DescriptorProto msg_proto;
typedef Google__Protobuf__FieldDescriptorProto field_proto;
typedef Google__Protobuf__EnumDescriptorProto enum_proto;
typedef Google__Protobuf__EnumValueDescriptorProto value_proto;
typedef Google__Protobuf__ServiceDescriptorProto service_proto;
typedef Google__Protobuf__MethodDescriptorProto method_proto;

/* Longest full name or file name accepted, and the deepest nesting. */
#define JB__SCHEMA_NAME_MAX  1024
#define JB__SCHEMA_DEPTH_MAX 64
/* Largest descriptor set file read. */
#define JB__SCHEMA_FILE_MAX (64u << 20)
/* Room for a type description such as "map<string, jimbot.x.Y>". */
#define TYPE_DESC_MAX (2 * JB__SCHEMA_NAME_MAX + 16)

/* ------------------------------------------------------------------------ */
/* Loading and validation                                                   */
/* ------------------------------------------------------------------------ */

static bool is_named_type(Google__Protobuf__FieldDescriptorProto__Type t)
{
    return t == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE ||
           t == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM ||
           t == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_GROUP;
}

static jb_status check_enum(const enum_proto *e, const char *what, size_t scope_len, jb_error *err)
{
    if (e->name == NULL || e->name[0] == '\0') {
        return jb_error_set(err, JB_EPARSE, "%s: malformed descriptor set: an enum has no name",
                            what);
    }
    if (scope_len + 1 + strlen(e->name) > JB__SCHEMA_NAME_MAX) {
        return jb_error_set(err, JB_EPARSE, "%s: malformed descriptor set: name too long", what);
    }
    for (size_t i = 0; i < e->n_value; i++) {
        if (e->value[i]->name == NULL || !e->value[i]->has_number) {
            return jb_error_set(
                err, JB_EPARSE,
                "%s: malformed descriptor set: value #%zu of enum '%s' has no name or number", what,
                i + 1, e->name);
        }
    }
    return JB_OK;
}

static jb_status check_message(const msg_proto *m, const char *what, size_t scope_len, int depth,
                               jb_error *err)
{
    if (m->name == NULL || m->name[0] == '\0') {
        return jb_error_set(err, JB_EPARSE, "%s: malformed descriptor set: a message has no name",
                            what);
    }
    size_t len = scope_len + 1 + strlen(m->name);
    if (len > JB__SCHEMA_NAME_MAX || depth > JB__SCHEMA_DEPTH_MAX) {
        return jb_error_set(err, JB_EPARSE,
                            "%s: malformed descriptor set: message '%s' nested too deep or its "
                            "name is too long",
                            what, m->name);
    }
    for (size_t i = 0; i < m->n_field; i++) {
        const field_proto *f = m->field[i];
        if (f->name == NULL || !f->has_number || !f->has_type ||
            (is_named_type(f->type) && f->type_name == NULL) ||
            (f->has_oneof_index &&
             (f->oneof_index < 0 || (size_t)f->oneof_index >= m->n_oneof_decl))) {
            return jb_error_set(err, JB_EPARSE,
                                "%s: malformed descriptor set: field #%zu of message '%s' lacks a "
                                "name, number or type, or names a missing oneof",
                                what, i + 1, m->name);
        }
    }
    for (size_t i = 0; i < m->n_oneof_decl; i++) {
        if (m->oneof_decl[i]->name == NULL) {
            return jb_error_set(err, JB_EPARSE,
                                "%s: malformed descriptor set: a oneof of message '%s' has no name",
                                what, m->name);
        }
    }
    for (size_t i = 0; i < m->n_nested_type; i++) {
        jb_status st = check_message(m->nested_type[i], what, len, depth + 1, err);
        if (st != JB_OK) {
            return st;
        }
    }
    for (size_t i = 0; i < m->n_enum_type; i++) {
        jb_status st = check_enum(m->enum_type[i], what, len, err);
        if (st != JB_OK) {
            return st;
        }
    }
    return JB_OK;
}

static jb_status check_file(const file_proto *f, const char *what, jb_error *err)
{
    if (f->name == NULL || f->name[0] == '\0' || strlen(f->name) > JB__SCHEMA_NAME_MAX) {
        return jb_error_set(err, JB_EPARSE,
                            "%s: malformed descriptor set: a file has no name or a name too long",
                            what);
    }
    size_t scope_len = f->package != NULL ? strlen(f->package) : 0;
    for (size_t i = 0; i < f->n_message_type; i++) {
        jb_status st = check_message(f->message_type[i], what, scope_len, 1, err);
        if (st != JB_OK) {
            return st;
        }
    }
    for (size_t i = 0; i < f->n_enum_type; i++) {
        jb_status st = check_enum(f->enum_type[i], what, scope_len, err);
        if (st != JB_OK) {
            return st;
        }
    }
    for (size_t i = 0; i < f->n_service; i++) {
        const service_proto *s = f->service[i];
        if (s->name == NULL || scope_len + 1 + strlen(s->name) > JB__SCHEMA_NAME_MAX) {
            return jb_error_set(err, JB_EPARSE,
                                "%s: malformed descriptor set: a service of '%s' has no name or a "
                                "name too long",
                                what, f->name);
        }
        for (size_t j = 0; j < s->n_method; j++) {
            const method_proto *m = s->method[j];
            if (m->name == NULL || m->input_type == NULL || m->output_type == NULL) {
                return jb_error_set(err, JB_EPARSE,
                                    "%s: malformed descriptor set: method #%zu of service '%s' "
                                    "lacks a name, input or output type",
                                    what, j + 1, s->name);
            }
        }
    }
    return JB_OK;
}

jb_status jb_schema_set_decode(const void *data, size_t len, const char *what, jb_schema_set **out,
                               jb_error *err)
{
    if (len == 0) {
        return jb_error_set(err, JB_EPARSE,
                            "%s: empty file, not a descriptor set (make one with protoc "
                            "--descriptor_set_out)",
                            what);
    }
    jb_schema_set *set = google__protobuf__file_descriptor_set__unpack(NULL, len, data);
    if (set == NULL) {
        return jb_error_set(err, JB_EPARSE,
                            "%s: not a descriptor set: it does not decode as a "
                            "google.protobuf.FileDescriptorSet (make one with protoc "
                            "--descriptor_set_out)",
                            what);
    }
    if (set->n_file == 0) {
        jb_schema_set_free(set);
        return jb_error_set(err, JB_EPARSE,
                            "%s: not a descriptor set: it holds no file (make one with protoc "
                            "--descriptor_set_out)",
                            what);
    }
    for (size_t i = 0; i < set->n_file; i++) {
        jb_status st = check_file(set->file[i], what, err);
        if (st != JB_OK) {
            jb_schema_set_free(set);
            return st;
        }
    }
    *out = set;
    return JB_OK;
}

jb_status jb_schema_set_load(const char *path, jb_schema_set **out, jb_error *err)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        jb_status code = errno == ENOENT ? JB_ENOENT : JB_EIO;
        return jb_error_set(err, code, "%s: cannot open: %s", path, strerror(errno));
    }
    size_t cap = 1u << 16;
    size_t len = 0;
    unsigned char *buf = malloc(cap);
    jb_status st = JB_OK;
    while (buf != NULL) {
        len += fread(buf + len, 1, cap - len, fp);
        if (len < cap) {
            break;
        }
        if (cap >= JB__SCHEMA_FILE_MAX) {
            st = jb_error_set(err, JB_ETOOBIG, "%s: larger than %u MiB, not a descriptor set", path,
                              JB__SCHEMA_FILE_MAX >> 20);
            break;
        }
        unsigned char *bigger = realloc(buf, cap * 2);
        if (bigger == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf == NULL) {
        st = jb_error_set(err, JB_ENOMEM, "%s: out of memory reading it", path);
    } else if (st == JB_OK && ferror(fp)) {
        st = jb_error_set(err, JB_EIO, "%s: read error", path);
    }
    fclose(fp);
    if (st == JB_OK) {
        st = jb_schema_set_decode(buf, len, path, out, err);
    }
    free(buf);
    return st;
}

void jb_schema_set_free(jb_schema_set *set)
{
    if (set != NULL) {
        google__protobuf__file_descriptor_set__free_unpacked(set, NULL);
    }
}

/* ------------------------------------------------------------------------ */
/* Lookups                                                                  */
/* ------------------------------------------------------------------------ */

static const char *pkg_of(const file_proto *f)
{
    return f->package != NULL ? f->package : "";
}

/* A type name without the leading dot of a fully qualified reference. */
static const char *strip_dot(const char *name)
{
    return name[0] == '.' ? name + 1 : name;
}

static const file_proto *file_by_name(const jb_schema_set *s, const char *name)
{
    for (size_t i = 0; i < s->n_file; i++) {
        if (strcmp(s->file[i]->name, name) == 0) {
            return s->file[i];
        }
    }
    return NULL;
}

static const msg_proto *msg_in(msg_proto *const *list, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(list[i]->name) == len && memcmp(list[i]->name, name, len) == 0) {
            return list[i];
        }
    }
    return NULL;
}

static const enum_proto *enum_in(enum_proto *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i]->name, name) == 0) {
            return list[i];
        }
    }
    return NULL;
}

static const service_proto *service_in(const file_proto *f, const char *name)
{
    for (size_t i = 0; i < f->n_service; i++) {
        if (strcmp(f->service[i]->name, name) == 0) {
            return f->service[i];
        }
    }
    return NULL;
}

/* The relative name of @full inside file @f's package, or NULL if outside. */
static const char *in_package(const file_proto *f, const char *full)
{
    const char *pkg = pkg_of(f);
    size_t n = strlen(pkg);
    if (n == 0) {
        return full;
    }
    if (strncmp(full, pkg, n) == 0 && full[n] == '.') {
        return full + n + 1;
    }
    return NULL;
}

/*
 * Resolves the dotted relative name @rel inside file @f: returns true and
 * sets *@parent to the message holding the last component (NULL: the file's
 * top level) and *@leaf to that component, or false when a message on the
 * way is missing.
 */
static bool resolve_parent(const file_proto *f, const char *rel, const msg_proto **parent,
                           const char **leaf)
{
    const msg_proto *m = NULL;
    const char *dot;
    while ((dot = strchr(rel, '.')) != NULL) {
        m = m == NULL ? msg_in(f->message_type, f->n_message_type, rel, (size_t)(dot - rel))
                      : msg_in(m->nested_type, m->n_nested_type, rel, (size_t)(dot - rel));
        if (m == NULL) {
            return false;
        }
        rel = dot + 1;
    }
    *parent = m;
    *leaf = rel;
    return true;
}

typedef enum kind { KIND_MESSAGE, KIND_ENUM, KIND_SERVICE } kind;

/* Finds the element of @k named @full anywhere in @s; sets *@file to its file. */
static const void *find_element(const jb_schema_set *s, kind k, const char *full,
                                const file_proto **file)
{
    for (size_t i = 0; i < s->n_file; i++) {
        const file_proto *f = s->file[i];
        const char *rel = in_package(f, full);
        const msg_proto *parent;
        const char *leaf;
        if (rel == NULL || !resolve_parent(f, rel, &parent, &leaf)) {
            continue;
        }
        const void *found = NULL;
        if (k == KIND_MESSAGE) {
            found = parent == NULL
                        ? msg_in(f->message_type, f->n_message_type, leaf, strlen(leaf))
                        : msg_in(parent->nested_type, parent->n_nested_type, leaf, strlen(leaf));
        } else if (k == KIND_ENUM) {
            found = parent == NULL ? enum_in(f->enum_type, f->n_enum_type, leaf)
                                   : enum_in(parent->enum_type, parent->n_enum_type, leaf);
        } else if (parent == NULL) {
            found = service_in(f, leaf);
        }
        if (found != NULL) {
            *file = f;
            return found;
        }
    }
    return NULL;
}

static bool is_map_entry(const msg_proto *m)
{
    return m->options != NULL && m->options->has_map_entry && m->options->map_entry;
}

static const field_proto *field_by_number(const msg_proto *m, int32_t number)
{
    for (size_t i = 0; i < m->n_field; i++) {
        if (m->field[i]->number == number) {
            return m->field[i];
        }
    }
    return NULL;
}

static const field_proto *field_by_name(const msg_proto *m, const char *name)
{
    for (size_t i = 0; i < m->n_field; i++) {
        if (strcmp(m->field[i]->name, name) == 0) {
            return m->field[i];
        }
    }
    return NULL;
}

static bool name_listed(char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (names[i] != NULL && strcmp(names[i], name) == 0) {
            return true;
        }
    }
    return false;
}

/* Message reserved ranges are [start, end). */
static bool msg_number_reserved(const msg_proto *m, int32_t n)
{
    for (size_t i = 0; i < m->n_reserved_range; i++) {
        const Google__Protobuf__DescriptorProto__ReservedRange *r = m->reserved_range[i];
        if (n >= r->start && n < r->end) {
            return true;
        }
    }
    return false;
}

/* Enum reserved ranges are [start, end]: both ends inclusive. */
static bool enum_number_reserved(const enum_proto *e, int32_t n)
{
    for (size_t i = 0; i < e->n_reserved_range; i++) {
        const Google__Protobuf__EnumDescriptorProto__EnumReservedRange *r = e->reserved_range[i];
        if (n >= r->start && n <= r->end) {
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Comparison                                                               */
/* ------------------------------------------------------------------------ */

typedef struct cmp {
    const jb_schema_set *base;
    const jb_schema_set *cur;
    const char *prefix;
    jb_schema_break_fn on_break;
    void *userdata;
    jb_schema_stats stats;
    const file_proto *base_file;
    const file_proto *cur_file;
    /* The full name of the element being compared, grown and cut back. */
    char path[JB__SCHEMA_NAME_MAX + 1];
    size_t path_len;
    char file[JB__SCHEMA_NAME_MAX + 64];
} cmp;

static size_t path_push(cmp *c, const char *name)
{
    size_t old = c->path_len;
    int n = snprintf(c->path + old, sizeof(c->path) - old, "%s%s", old > 0 ? "." : "", name);
    size_t grown = old + (n > 0 ? (size_t)n : 0);
    c->path_len = grown < sizeof(c->path) ? grown : sizeof(c->path) - 1;
    return old;
}

static void path_pop(cmp *c, size_t old)
{
    c->path_len = old;
    c->path[old] = '\0';
}

/* Reports one break in the element at c->path (or the file when @in_file). */
__attribute__((format(printf, 3, 4))) static void report(cmp *c, bool in_file, const char *fmt, ...)
{
    char detail[3 * JB__SCHEMA_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    c->stats.breaks++;
    if (c->on_break != NULL) {
        jb_schema_break brk = {c->file, in_file ? NULL : c->path, detail};
        c->on_break(&brk, c->userdata);
    }
}

/* Reports the element at c->path as removed, saying where it went if it moved. */
static void report_removed(cmp *c, kind k, const char *what)
{
    const file_proto *moved = NULL;
    if (find_element(c->cur, k, c->path, &moved) != NULL) {
        report(c, false, "%s removed from this file (now defined in %s%s)", what, c->prefix,
               moved->name);
    } else {
        report(c, false, "%s removed", what);
    }
}

/*
 * A removed field or enum value is compatible only when the current message
 * or enum reserves both its number and its name; reports what is missing.
 */
static void report_unreserved(cmp *c, const char *what, int32_t number, const char *name,
                              bool number_ok, bool name_ok)
{
    if (!number_ok && !name_ok) {
        report(c, false, "%s %d '%s': removed without reserving number %d and name '%s'", what,
               number, name, number, name);
    } else if (!number_ok) {
        report(c, false, "%s %d '%s': removed without reserving number %d", what, number, name,
               number);
    } else if (!name_ok) {
        report(c, false, "%s %d '%s': removed without reserving name '%s'", what, number, name,
               name);
    }
}

static bool is_proto2(const file_proto *f)
{
    return f->syntax == NULL || f->syntax[0] == '\0' || strcmp(f->syntax, "proto2") == 0;
}

/* The label as a reader sees it: presence included. */
static const char *label_desc(const field_proto *f, bool proto2)
{
    if (f->has_label &&
        f->label == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED) {
        return "repeated";
    }
    if (f->has_label &&
        f->label == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REQUIRED) {
        return "required";
    }
    return proto2 || f->proto3_optional ? "optional" : "singular";
}

static const char *scalar_name(Google__Protobuf__FieldDescriptorProto__Type t)
{
    static const char *const names[] = {
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_DOUBLE] = "double",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FLOAT] = "float",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT64] = "int64",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_UINT64] = "uint64",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT32] = "int32",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED64] = "fixed64",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED32] = "fixed32",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BOOL] = "bool",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING] = "string",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_GROUP] = "group",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE] = "message",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BYTES] = "bytes",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_UINT32] = "uint32",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM] = "enum",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED32] = "sfixed32",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED64] = "sfixed64",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SINT32] = "sint32",
        [GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SINT64] = "sint64",
    };
    size_t i = (size_t)t;
    return i < sizeof(names) / sizeof(names[0]) && names[i] != NULL ? names[i] : "unknown";
}

/* One field's type without map handling: a scalar name or a full type name. */
static const char *plain_type(const field_proto *f)
{
    return is_named_type(f->type) ? strip_dot(f->type_name) : scalar_name(f->type);
}

/*
 * Writes @f's type as a reader of set @s sees it into @buf: "int32",
 * "jimbot.HandPlayed", or "map<K, V>" for a map field.
 */
static void type_desc(const jb_schema_set *s, const field_proto *f, char *buf, size_t n)
{
    const file_proto *where;
    const msg_proto *entry = NULL;
    if (f->type == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE) {
        entry = find_element(s, KIND_MESSAGE, strip_dot(f->type_name), &where);
    }
    const field_proto *key = entry != NULL ? field_by_number(entry, 1) : NULL;
    const field_proto *value = entry != NULL ? field_by_number(entry, 2) : NULL;
    if (entry != NULL && is_map_entry(entry) && key != NULL && value != NULL) {
        snprintf(buf, n, "map<%s, %s>", plain_type(key), plain_type(value));
    } else {
        snprintf(buf, n, "%s", plain_type(f));
    }
}

/* The real oneof @f belongs to, or NULL (a proto3 `optional` is no oneof). */
static const char *oneof_of(const msg_proto *m, const field_proto *f)
{
    if (!f->has_oneof_index || f->proto3_optional) {
        return NULL;
    }
    return m->oneof_decl[f->oneof_index]->name;
}

static void compare_field(cmp *c, const msg_proto *b, const field_proto *bf, const msg_proto *k,
                          const field_proto *kf)
{
    if (strcmp(bf->name, kf->name) != 0) {
        report(c, false, "field %d '%s': renamed to '%s'", bf->number, bf->name, kf->name);
    } else if (bf->json_name != NULL && kf->json_name != NULL &&
               strcmp(bf->json_name, kf->json_name) != 0) {
        report(c, false, "field %d '%s': JSON name changed from '%s' to '%s'", bf->number, bf->name,
               bf->json_name, kf->json_name);
    }

    char bt[TYPE_DESC_MAX], kt[TYPE_DESC_MAX];
    type_desc(c->base, bf, bt, sizeof(bt));
    type_desc(c->cur, kf, kt, sizeof(kt));
    if (strcmp(bt, kt) != 0) {
        report(c, false, "field %d '%s': type changed from %s to %s", bf->number, bf->name, bt, kt);
    }

    const char *bl = label_desc(bf, is_proto2(c->base_file));
    const char *kl = label_desc(kf, is_proto2(c->cur_file));
    if (strcmp(bl, kl) != 0) {
        report(c, false, "field %d '%s': label changed from %s to %s", bf->number, bf->name, bl,
               kl);
    }

    const char *bo = oneof_of(b, bf);
    const char *ko = oneof_of(k, kf);
    if (bo == NULL && ko != NULL) {
        report(c, false, "field %d '%s': moved into oneof '%s'", bf->number, bf->name, ko);
    } else if (bo != NULL && ko == NULL) {
        report(c, false, "field %d '%s': moved out of oneof '%s'", bf->number, bf->name, bo);
    } else if (bo != NULL && strcmp(bo, ko) != 0) {
        report(c, false, "field %d '%s': moved from oneof '%s' to oneof '%s'", bf->number, bf->name,
               bo, ko);
    }
}

static void compare_fields(cmp *c, const msg_proto *b, const msg_proto *k)
{
    for (size_t i = 0; i < b->n_field; i++) {
        const field_proto *bf = b->field[i];
        const field_proto *kf = field_by_number(k, bf->number);
        if (kf != NULL) {
            compare_field(c, b, bf, k, kf);
            continue;
        }
        const field_proto *renumbered = field_by_name(k, bf->name);
        if (renumbered != NULL) {
            report(c, false, "field %d '%s': number changed from %d to %d", bf->number, bf->name,
                   bf->number, renumbered->number);
            continue;
        }
        report_unreserved(c, "field", bf->number, bf->name, msg_number_reserved(k, bf->number),
                          name_listed(k->reserved_name, k->n_reserved_name, bf->name));
    }
    for (size_t i = 0; i < k->n_field; i++) {
        const field_proto *kf = k->field[i];
        if (msg_number_reserved(b, kf->number)) {
            report(c, false, "field %d '%s': reuses number %d reserved in the baseline", kf->number,
                   kf->name, kf->number);
        }
        if (name_listed(b->reserved_name, b->n_reserved_name, kf->name)) {
            report(c, false, "field %d '%s': reuses name '%s' reserved in the baseline", kf->number,
                   kf->name, kf->name);
        }
    }
}

static void compare_enum(cmp *c, const enum_proto *b, const enum_proto *k)
{
    c->stats.enums++;
    for (size_t i = 0; i < b->n_value; i++) {
        const value_proto *bv = b->value[i];
        const value_proto *same_number = NULL;
        const value_proto *same_name = NULL;
        bool kept = false;
        for (size_t j = 0; j < k->n_value; j++) {
            const value_proto *kv = k->value[j];
            bool num = kv->number == bv->number;
            bool name = strcmp(kv->name, bv->name) == 0;
            kept = kept || (num && name);
            same_number = same_number == NULL && num ? kv : same_number;
            same_name = same_name == NULL && name ? kv : same_name;
        }
        if (kept) {
            continue;
        }
        if (same_number != NULL) {
            report(c, false, "value %d '%s': renamed to '%s'", bv->number, bv->name,
                   same_number->name);
        } else if (same_name != NULL) {
            report(c, false, "value %d '%s': number changed from %d to %d", bv->number, bv->name,
                   bv->number, same_name->number);
        } else {
            report_unreserved(c, "value", bv->number, bv->name, enum_number_reserved(k, bv->number),
                              name_listed(k->reserved_name, k->n_reserved_name, bv->name));
        }
    }
    for (size_t i = 0; i < k->n_value; i++) {
        const value_proto *kv = k->value[i];
        if (enum_number_reserved(b, kv->number)) {
            report(c, false, "value %d '%s': reuses number %d reserved in the baseline", kv->number,
                   kv->name, kv->number);
        }
        if (name_listed(b->reserved_name, b->n_reserved_name, kv->name)) {
            report(c, false, "value %d '%s': reuses name '%s' reserved in the baseline", kv->number,
                   kv->name, kv->name);
        }
    }
}

static void compare_enums(cmp *c, enum_proto *const *bl, size_t bn, enum_proto *const *kl,
                          size_t kn)
{
    for (size_t i = 0; i < bn; i++) {
        size_t old = path_push(c, bl[i]->name);
        const enum_proto *k = enum_in(kl, kn, bl[i]->name);
        if (k == NULL) {
            report_removed(c, KIND_ENUM, "enum");
        } else {
            compare_enum(c, bl[i], k);
        }
        path_pop(c, old);
    }
}

static void compare_message(cmp *c, const msg_proto *b, const msg_proto *k);

static void compare_messages(cmp *c, msg_proto *const *bl, size_t bn, msg_proto *const *kl,
                             size_t kn)
{
    for (size_t i = 0; i < bn; i++) {
        const msg_proto *b = bl[i];
        if (is_map_entry(b)) {
            /* Compared through the map field that uses it (see type_desc). */
            continue;
        }
        size_t old = path_push(c, b->name);
        const msg_proto *k = msg_in(kl, kn, b->name, strlen(b->name));
        if (k == NULL) {
            report_removed(c, KIND_MESSAGE, "message");
        } else {
            compare_message(c, b, k);
        }
        path_pop(c, old);
    }
}

static void compare_message(cmp *c, const msg_proto *b, const msg_proto *k)
{
    c->stats.messages++;
    compare_fields(c, b, k);
    compare_messages(c, b->nested_type, b->n_nested_type, k->nested_type, k->n_nested_type);
    compare_enums(c, b->enum_type, b->n_enum_type, k->enum_type, k->n_enum_type);
}

static void compare_service(cmp *c, const service_proto *b, const service_proto *k)
{
    c->stats.services++;
    for (size_t i = 0; i < b->n_method; i++) {
        const method_proto *bm = b->method[i];
        const method_proto *km = NULL;
        for (size_t j = 0; j < k->n_method && km == NULL; j++) {
            km = strcmp(k->method[j]->name, bm->name) == 0 ? k->method[j] : NULL;
        }
        if (km == NULL) {
            report(c, false, "method '%s': removed", bm->name);
            continue;
        }
        const char *bi = strip_dot(bm->input_type), *ki = strip_dot(km->input_type);
        const char *bo = strip_dot(bm->output_type), *ko = strip_dot(km->output_type);
        if (strcmp(bi, ki) != 0) {
            report(c, false, "method '%s': input type changed from %s to %s", bm->name, bi, ki);
        }
        if (strcmp(bo, ko) != 0) {
            report(c, false, "method '%s': output type changed from %s to %s", bm->name, bo, ko);
        }
        bool bcs = bm->has_client_streaming && bm->client_streaming;
        bool kcs = km->has_client_streaming && km->client_streaming;
        bool bss = bm->has_server_streaming && bm->server_streaming;
        bool kss = km->has_server_streaming && km->server_streaming;
        if (bcs != kcs) {
            report(c, false, "method '%s': client streaming %s", bm->name,
                   kcs ? "added" : "removed");
        }
        if (bss != kss) {
            report(c, false, "method '%s': server streaming %s", bm->name,
                   kss ? "added" : "removed");
        }
    }
}

static void compare_file(cmp *c, const file_proto *b)
{
    c->stats.files++;
    c->base_file = b;
    snprintf(c->file, sizeof(c->file), "%s%s", c->prefix, b->name);
    const file_proto *k = file_by_name(c->cur, b->name);
    if (k == NULL) {
        report(c, true, "file removed");
        return;
    }
    c->cur_file = k;
    if (strcmp(pkg_of(b), pkg_of(k)) != 0) {
        report(c, true, "package changed from '%s' to '%s'", pkg_of(b), pkg_of(k));
        return;
    }
    path_pop(c, 0);
    path_push(c, pkg_of(b));
    compare_messages(c, b->message_type, b->n_message_type, k->message_type, k->n_message_type);
    compare_enums(c, b->enum_type, b->n_enum_type, k->enum_type, k->n_enum_type);
    for (size_t i = 0; i < b->n_service; i++) {
        size_t old = path_push(c, b->service[i]->name);
        const service_proto *ks = service_in(k, b->service[i]->name);
        if (ks == NULL) {
            report_removed(c, KIND_SERVICE, "service");
        } else {
            compare_service(c, b->service[i], ks);
        }
        path_pop(c, old);
    }
}

jb_status jb_schema_compare(const jb_schema_set *baseline, const jb_schema_set *current,
                            const char *file_prefix, jb_schema_break_fn on_break, void *userdata,
                            jb_schema_stats *stats)
{
    cmp *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return JB_ENOMEM;
    }
    c->base = baseline;
    c->cur = current;
    c->prefix = file_prefix != NULL ? file_prefix : "";
    c->on_break = on_break;
    c->userdata = userdata;
    for (size_t i = 0; i < baseline->n_file; i++) {
        compare_file(c, baseline->file[i]);
    }
    if (stats != NULL) {
        *stats = c->stats;
    }
    jb_status st = c->stats.breaks > 0 ? JB_EINCOMPATIBLE : JB_OK;
    free(c);
    return st;
}
