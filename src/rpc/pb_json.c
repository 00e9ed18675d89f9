/*
 * protobuf-c messages to proto3 JSON (src/rpc/pb_json.h).
 *
 * A reflective walk over ProtobufCMessageDescriptor: nothing here is
 * specific to one schema. Presence follows protobuf-c's layout: a
 * LABEL_NONE (proto3) scalar is present when non-zero, a LABEL_OPTIONAL one
 * through its has_ flag, a oneof member when the oneof's case equals the
 * field's number, strings and messages when their pointer is set (and a
 * proto3 string when non-empty). Map fields are repeated "...Entry" messages
 * with fields key (1) and value (2); they are written as JSON objects.
 *
 * Stateless and allocation-free apart from the output buffer: safe on any
 * thread.
 */
#include "rpc/pb_json.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_json_name(jb__buf *out, const char *name)
{
    jb__buf_putc(out, '"');
    int upper = 0;
    for (const char *p = name; *p; p++) {
        if (*p == '_') {
            upper = 1;
            continue;
        }
        jb__buf_putc(out, upper ? (char)toupper((unsigned char)*p) : *p);
        upper = 0;
    }
    jb__buf_putc(out, '"');
}

static void put_json_string(jb__buf *out, const char *s, size_t len)
{
    jb__buf_putc(out, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            jb__buf_puts(out, "\\\"");
            break;
        case '\\':
            jb__buf_puts(out, "\\\\");
            break;
        case '\n':
            jb__buf_puts(out, "\\n");
            break;
        case '\r':
            jb__buf_puts(out, "\\r");
            break;
        case '\t':
            jb__buf_puts(out, "\\t");
            break;
        default:
            if (c < 0x20)
                jb__buf_printf(out, "\\u%04x", c);
            else
                jb__buf_putc(out, (char)c);
        }
    }
    jb__buf_putc(out, '"');
}

static void put_base64(jb__buf *out, const uint8_t *p, size_t len)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    jb__buf_putc(out, '"');
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        char q[4] = {abc[v >> 18], abc[(v >> 12) & 63], abc[(v >> 6) & 63], abc[v & 63]};
        jb__buf_append(out, q, 4);
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        char q[4] = {abc[v >> 18], abc[(v >> 12) & 63], i + 1 < len ? abc[(v >> 6) & 63] : '=',
                     '='};
        jb__buf_append(out, q, 4);
    }
    jb__buf_putc(out, '"');
}

/* The shortest decimal that reads back as the same value. */
static void put_double(jb__buf *out, double v, int is_float)
{
    if (isnan(v)) {
        jb__buf_puts(out, "\"NaN\"");
        return;
    }
    if (isinf(v)) {
        jb__buf_puts(out, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        return;
    }
    char tmp[40];
    for (int prec = is_float ? 6 : 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        double back = strtod(tmp, NULL);
        if (is_float ? (float)back == (float)v : back == v)
            break;
    }
    /* Integral values print as "3" in JSON, which every reader accepts. */
    jb__buf_puts(out, tmp);
}

static void put_scalar(jb__buf *out, const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        jb__buf_printf(out, "%d", *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        jb__buf_printf(out, "%u", *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        jb__buf_printf(out, "\"%lld\"", (long long)*(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        jb__buf_printf(out, "\"%llu\"", (unsigned long long)*(const uint64_t *)p);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        put_double(out, *(const float *)p, 1);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        put_double(out, *(const double *)p, 0);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        jb__buf_puts(out, *(const protobuf_c_boolean *)p ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev != NULL)
            put_json_string(out, ev->name, strlen(ev->name));
        else
            jb__buf_printf(out, "%d", v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        put_json_string(out, s ? s : "", s ? strlen(s) : 0);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        put_base64(out, bd->data, bd->len);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)p;
        if (m != NULL)
            jb__pb_to_json(m, out);
        else
            jb__buf_puts(out, "{}");
        break;
    }
    }
}

static size_t scalar_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    }
    return 0;
}

/* True when a proto3 (LABEL_NONE) value equals its type's default. */
static int is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s == NULL || s[0] == '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(void *const *)p == NULL;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0 && !signbit(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0 && !signbit(*(const double *)p);
    default: {
        static const uint8_t zero[8];
        return memcmp(p, zero, scalar_size(f->type)) == 0;
    }
    }
}

static int is_map_entry(const ProtobufCFieldDescriptor *f)
{
    if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label != PROTOBUF_C_LABEL_REPEATED)
        return 0;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    size_t n = strlen(d->short_name);
    return n > 5 && strcmp(d->short_name + n - 5, "Entry") == 0 && d->n_fields == 2 &&
           d->fields[0].id == 1 && strcmp(d->fields[0].name, "key") == 0 && d->fields[1].id == 2 &&
           strcmp(d->fields[1].name, "value") == 0;
}

static int field_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)msg;
    const void *p = base + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return *(const size_t *)(base + f->quantifier_offset) > 0;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)(base + f->quantifier_offset) == f->id;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL || f->label == PROTOBUF_C_LABEL_REQUIRED) {
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
            return *(void *const *)p != NULL;
        if (f->label == PROTOBUF_C_LABEL_REQUIRED)
            return 1;
        return *(const protobuf_c_boolean *)(base + f->quantifier_offset);
    }
    return !is_default(f, p);
}

static void put_map_key(jb__buf *out, const ProtobufCFieldDescriptor *kf, const void *p)
{
    if (kf->type == PROTOBUF_C_TYPE_STRING) {
        put_scalar(out, kf, p);
        return;
    }
    /* Non-string keys are quoted numbers or booleans. */
    jb__buf tmp;
    jb__buf_init(&tmp);
    put_scalar(&tmp, kf, p);
    if (tmp.len > 0 && tmp.data[0] == '"')
        jb__buf_append(out, tmp.data, tmp.len);
    else
        put_json_string(out, tmp.data, tmp.len);
    jb__buf_release(&tmp);
}

void jb__pb_to_json(const ProtobufCMessage *msg, jb__buf *out)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    const char *base = (const char *)msg;
    int first = 1;
    jb__buf_putc(out, '{');
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!field_present(msg, f))
            continue;
        if (!first)
            jb__buf_putc(out, ',');
        first = 0;
        put_json_name(out, f->name);
        jb__buf_putc(out, ':');
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            put_scalar(out, f, base + f->offset);
            continue;
        }
        size_t n = *(const size_t *)(base + f->quantifier_offset);
        const char *arr = *(char *const *)(base + f->offset);
        size_t step = scalar_size(f->type);
        if (is_map_entry(f)) {
            const ProtobufCMessageDescriptor *ed = f->descriptor;
            jb__buf_putc(out, '{');
            for (size_t k = 0; k < n; k++) {
                const char *entry = *(char *const *)(arr + k * step);
                if (k > 0)
                    jb__buf_putc(out, ',');
                put_map_key(out, &ed->fields[0], entry + ed->fields[0].offset);
                jb__buf_putc(out, ':');
                put_scalar(out, &ed->fields[1], entry + ed->fields[1].offset);
            }
            jb__buf_putc(out, '}');
            continue;
        }
        jb__buf_putc(out, '[');
        for (size_t k = 0; k < n; k++) {
            if (k > 0)
                jb__buf_putc(out, ',');
            put_scalar(out, f, arr + k * step);
        }
        jb__buf_putc(out, ']');
    }
    jb__buf_putc(out, '}');
}
