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
#include <errno.h>
#include <math.h>
#include <stdarg.h>
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

void jb__json_put_string(jb__buf *out, const char *s, size_t len)
{
    put_json_string(out, s, len);
}

void jb__json_put_base64(jb__buf *out, const void *data, size_t len)
{
    put_base64(out, data, len);
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

/* ---- JSON to protobuf ------------------------------------------------------
 *
 * A recursive-descent reader that writes straight into protobuf-c structs
 * allocated with malloc, the layout protobuf_c_message_free_unpacked()
 * frees: so a half-built message is freed the same way as a whole one, and
 * every value is stored (repeated counts included) as soon as it is read.
 * Errors name the field by the path of keys as the input spelled them.
 */

typedef struct parser {
    const char *start, *p, *end;
    jb__buf path;
    jb_error *err;
    int depth;
} parser;

enum { MAX_DEPTH = 64 };

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static jb_status syntax(parser *ps, const char *what)
{
    if (ps->p >= ps->end)
        return jb_error_set(ps->err, JB_EPARSE, "unexpected end of input: %s", what);
    return jb_error_set(ps->err, JB_EPARSE, "at byte %zu: %s", (size_t)(ps->p - ps->start), what);
}

static jb_status field_error(parser *ps, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static jb_status field_error(parser *ps, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return jb_error_set(ps->err, JB_EPARSE, "field '%s': %s", ps->path.data ? ps->path.data : "",
                        msg);
}

static int peek(parser *ps, char c)
{
    skip_ws(ps);
    return ps->p < ps->end && *ps->p == c;
}

static int take_literal(parser *ps, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, lit, n) == 0) {
        ps->p += n;
        return 1;
    }
    return 0;
}

static void put_utf8(jb__buf *b, uint32_t cp)
{
    char tmp[4];
    if (cp < 0x80) {
        jb__buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        tmp[0] = (char)(0xc0 | cp >> 6);
        tmp[1] = (char)(0x80 | (cp & 0x3f));
        jb__buf_append(b, tmp, 2);
    } else if (cp < 0x10000) {
        tmp[0] = (char)(0xe0 | cp >> 12);
        tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        tmp[2] = (char)(0x80 | (cp & 0x3f));
        jb__buf_append(b, tmp, 3);
    } else {
        tmp[0] = (char)(0xf0 | cp >> 18);
        tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        tmp[3] = (char)(0x80 | (cp & 0x3f));
        jb__buf_append(b, tmp, 4);
    }
}

static int hex4(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Reads a JSON string into @out (cleared first). */
static jb_status read_string(parser *ps, jb__buf *out)
{
    skip_ws(ps);
    jb__buf_reset(out);
    if (ps->p >= ps->end || *ps->p != '"')
        return syntax(ps, "expected a string");
    ps->p++;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20)
            return syntax(ps, "control character in a string");
        if (c != '\\') {
            jb__buf_putc(out, (char)c);
            ps->p++;
            continue;
        }
        if (ps->end - ps->p < 2)
            break;
        char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            jb__buf_putc(out, e);
            break;
        case 'b':
            jb__buf_putc(out, '\b');
            break;
        case 'f':
            jb__buf_putc(out, '\f');
            break;
        case 'n':
            jb__buf_putc(out, '\n');
            break;
        case 'r':
            jb__buf_putc(out, '\r');
            break;
        case 't':
            jb__buf_putc(out, '\t');
            break;
        case 'u': {
            uint32_t cp, lo;
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp) != 0)
                return syntax(ps, "bad \\u escape");
            ps->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                    hex4(ps->p + 2, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
                    return syntax(ps, "unpaired surrogate in a \\u escape");
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return syntax(ps, "unpaired surrogate in a \\u escape");
            }
            put_utf8(out, cp);
            break;
        }
        default:
            ps->p -= 2;
            return syntax(ps, "bad escape in a string");
        }
    }
    if (ps->p >= ps->end)
        return syntax(ps, "unterminated string");
    ps->p++;
    return JB_OK;
}

/* Reads a JSON number's text into @out; 0 if the next value is not a number. */
static int read_number_text(parser *ps, char *out, size_t size)
{
    skip_ws(ps);
    const char *s = ps->p;
    const char *q = s;
    if (q < ps->end && *q == '-')
        q++;
    if (q >= ps->end || !isdigit((unsigned char)*q))
        return 0;
    while (q < ps->end && (isdigit((unsigned char)*q) || *q == '.' || *q == 'e' || *q == 'E' ||
                           *q == '+' || *q == '-'))
        q++;
    if ((size_t)(q - s) >= size)
        return 0;
    memcpy(out, s, (size_t)(q - s));
    out[q - s] = '\0';
    ps->p = q;
    return 1;
}

/* Skips any JSON value (for null checks and error recovery of nothing). */
static int at_null(parser *ps)
{
    skip_ws(ps);
    if (take_literal(ps, "null"))
        return 1;
    return 0;
}

static jb_status parse_message_body(parser *ps, const ProtobufCMessageDescriptor *d,
                                    ProtobufCMessage *msg);

/* A number or a numeric string, as text in @tmp; returns 0 if neither. */
static int read_numeric(parser *ps, char *tmp, size_t size, int *quoted)
{
    *quoted = 0;
    if (read_number_text(ps, tmp, size))
        return 1;
    if (peek(ps, '"')) {
        const char *save = ps->p;
        jb__buf s;
        jb__buf_init(&s);
        if (read_string(ps, &s) == JB_OK && s.len > 0 && s.len < size) {
            memcpy(tmp, s.data, s.len + 1);
            jb__buf_release(&s);
            *quoted = 1;
            return 1;
        }
        jb__buf_release(&s);
        ps->p = save;
    }
    return 0;
}

static jb_status parse_integer(parser *ps, const ProtobufCFieldDescriptor *f, void *slot)
{
    char tmp[64];
    int quoted;
    if (!read_numeric(ps, tmp, sizeof(tmp), &quoted))
        return field_error(ps, "expected an integer");
    int is_signed = f->type == PROTOBUF_C_TYPE_INT32 || f->type == PROTOBUF_C_TYPE_SINT32 ||
                    f->type == PROTOBUF_C_TYPE_SFIXED32 || f->type == PROTOBUF_C_TYPE_INT64 ||
                    f->type == PROTOBUF_C_TYPE_SINT64 || f->type == PROTOBUF_C_TYPE_SFIXED64;
    int wide = scalar_size(f->type) == 8;
    char *endp;
    errno = 0;
    long long sv = 0;
    unsigned long long uv = 0;
    if (strpbrk(tmp, ".eE") != NULL) {
        /* 1e3 or 5.0: accepted when the value is integral. */
        double dv = strtod(tmp, &endp);
        if (*endp != '\0' || dv != floor(dv) || fabs(dv) > 9007199254740992.0)
            return field_error(ps, "'%s' is not an integer", tmp);
        sv = (long long)dv;
        uv = (unsigned long long)(dv < 0 ? 0 : dv);
        if (!is_signed && dv < 0)
            return field_error(ps, "'%s' is out of range (unsigned)", tmp);
    } else if (is_signed) {
        sv = strtoll(tmp, &endp, 10);
        if (*endp != '\0' || endp == tmp)
            return field_error(ps, "'%s' is not an integer", tmp);
        if (errno == ERANGE)
            return field_error(ps, "'%s' is out of range", tmp);
    } else {
        if (tmp[0] == '-')
            return field_error(ps, "'%s' is out of range (unsigned)", tmp);
        uv = strtoull(tmp, &endp, 10);
        if (*endp != '\0' || endp == tmp)
            return field_error(ps, "'%s' is not an integer", tmp);
        if (errno == ERANGE)
            return field_error(ps, "'%s' is out of range", tmp);
    }
    if (is_signed && wide) {
        *(int64_t *)slot = sv;
    } else if (is_signed) {
        if (sv < INT32_MIN || sv > INT32_MAX)
            return field_error(ps, "'%s' is out of range for a 32-bit integer", tmp);
        *(int32_t *)slot = (int32_t)sv;
    } else if (wide) {
        *(uint64_t *)slot = uv;
    } else {
        if (uv > UINT32_MAX)
            return field_error(ps, "'%s' is out of range for a 32-bit integer", tmp);
        *(uint32_t *)slot = (uint32_t)uv;
    }
    return JB_OK;
}

static jb_status parse_float(parser *ps, const ProtobufCFieldDescriptor *f, void *slot)
{
    char tmp[64];
    int quoted;
    double v;
    if (!read_numeric(ps, tmp, sizeof(tmp), &quoted))
        return field_error(ps, "expected a number");
    if (quoted && strcmp(tmp, "NaN") == 0) {
        v = NAN;
    } else if (quoted && strcmp(tmp, "Infinity") == 0) {
        v = INFINITY;
    } else if (quoted && strcmp(tmp, "-Infinity") == 0) {
        v = -INFINITY;
    } else {
        char *endp;
        v = strtod(tmp, &endp);
        if (*endp != '\0' || endp == tmp || isinf(v))
            return field_error(ps, "'%s' is not a finite number", tmp);
    }
    if (f->type == PROTOBUF_C_TYPE_FLOAT) {
        if (isfinite(v) && fabs(v) > 3.4028234663852886e38)
            return field_error(ps, "'%s' is out of range for a float", tmp);
        *(float *)slot = (float)v;
    } else {
        *(double *)slot = v;
    }
    return JB_OK;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

static jb_status parse_bytes(parser *ps, jb__buf *s, ProtobufCBinaryData *out)
{
    size_t n = s->len;
    while (n > 0 && s->data[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return field_error(ps, "bad base64 length");
    uint8_t *data = malloc(n * 3 / 4 + 1);
    if (data == NULL)
        JB_BUG("out of memory decoding base64");
    size_t len = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(s->data[i]);
        if (v < 0) {
            free(data);
            return field_error(ps, "bad base64 character");
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            data[len++] = (uint8_t)(acc >> bits);
        }
    }
    out->data = data;
    out->len = len;
    return JB_OK;
}

static jb_status parse_enum(parser *ps, const ProtobufCFieldDescriptor *f, void *slot)
{
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    char tmp[64];
    if (read_number_text(ps, tmp, sizeof(tmp))) {
        char *endp;
        long v = strtol(tmp, &endp, 10);
        if (*endp != '\0' || v < INT32_MIN || v > INT32_MAX)
            return field_error(ps, "'%s' is not an enum number", tmp);
        *(int *)slot = (int)v;
        return JB_OK;
    }
    jb__buf s;
    jb__buf_init(&s);
    jb_status st = read_string(ps, &s);
    if (st != JB_OK) {
        jb__buf_release(&s);
        return field_error(ps, "expected an enum name or number");
    }
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(ed, s.data);
    if (v == NULL) {
        st = field_error(ps, "unknown value '%.100s' of %s", s.data, ed->name);
        jb__buf_release(&s);
        return st;
    }
    jb__buf_release(&s);
    *(int *)slot = v->value;
    return JB_OK;
}

static ProtobufCMessage *new_message(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = malloc(d->sizeof_message);
    if (m == NULL)
        JB_BUG("out of memory building a %s", d->name);
    d->message_init(m);
    return m;
}

/*
 * Reads one value of field @f into @slot (the field's storage, or one
 * element of a repeated field's array), which holds the type's default.
 */
static jb_status parse_value(parser *ps, const ProtobufCFieldDescriptor *f, void *slot)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return parse_integer(ps, f, slot);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        return parse_float(ps, f, slot);
    case PROTOBUF_C_TYPE_BOOL:
        skip_ws(ps);
        if (take_literal(ps, "true"))
            *(protobuf_c_boolean *)slot = 1;
        else if (take_literal(ps, "false"))
            *(protobuf_c_boolean *)slot = 0;
        else
            return field_error(ps, "expected true or false");
        return JB_OK;
    case PROTOBUF_C_TYPE_ENUM:
        return parse_enum(ps, f, slot);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES: {
        jb__buf s;
        jb__buf_init(&s);
        if (!peek(ps, '"')) {
            jb__buf_release(&s);
            return field_error(ps, "expected a string");
        }
        jb_status st = read_string(ps, &s);
        if (st == JB_OK && f->type == PROTOBUF_C_TYPE_STRING) {
            if (s.data != NULL && strlen(s.data) != s.len) {
                jb__buf_release(&s);
                return field_error(ps, "a string may not hold \\u0000");
            }
            char *str = s.data != NULL ? s.data : strdup("");
            if (str == NULL)
                JB_BUG("out of memory reading a string");
            *(char **)slot = str;
            return JB_OK; /* the buffer's memory now belongs to the message */
        }
        if (st == JB_OK)
            st = parse_bytes(ps, &s, slot);
        jb__buf_release(&s);
        return st;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        if (!peek(ps, '{'))
            return field_error(ps, "expected an object (%s)", md->name);
        ProtobufCMessage *m = new_message(md);
        *(ProtobufCMessage **)slot = m;
        return parse_message_body(ps, md, m);
    }
    }
    return JB_BUG("unknown protobuf-c type %d", (int)f->type), JB_EBUG;
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d,
                                                  const char *key)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, key);
    if (f != NULL)
        return f;
    for (unsigned i = 0; i < d->n_fields; i++) {
        jb__buf json_name;
        jb__buf_init(&json_name);
        put_json_name(&json_name, d->fields[i].name);
        /* put_json_name quotes the name: compare without the quotes. */
        int same = json_name.len == strlen(key) + 2 &&
                   memcmp(json_name.data + 1, key, json_name.len - 2) == 0;
        jb__buf_release(&json_name);
        if (same)
            return &d->fields[i];
    }
    return NULL;
}

/* Appends a slot to repeated field @f of @msg and returns it (zeroed / initialised). */
static void *repeated_add(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    char *base = (char *)msg;
    size_t *n = (size_t *)(base + f->quantifier_offset);
    char **arr = (char **)(base + f->offset);
    size_t step = scalar_size(f->type);
    /* Capacity grows in powers of two; realloc when the count reaches one. */
    if (*n == 0 || (*n & (*n - 1)) == 0) {
        size_t cap = *n == 0 ? 1 : *n * 2;
        *arr = jb__xrealloc(*arr, cap * step);
    }
    void *slot = *arr + *n * step;
    memset(slot, 0, step);
    if (f->type == PROTOBUF_C_TYPE_STRING)
        *(char **)slot = NULL;
    (*n)++;
    return slot;
}

static void path_push(parser *ps, const char *key, size_t *saved)
{
    *saved = ps->path.len;
    if (ps->path.len > 0)
        jb__buf_putc(&ps->path, '.');
    jb__buf_puts(&ps->path, key);
}

static void path_pop(parser *ps, size_t saved)
{
    ps->path.len = saved;
    if (ps->path.data != NULL)
        ps->path.data[saved] = '\0';
}

/* Reads an object member's key and the ':' after it. */
static jb_status read_member_key(parser *ps, jb__buf *key)
{
    jb_status st = read_string(ps, key);
    if (st != JB_OK)
        return st;
    if (!peek(ps, ':'))
        return syntax(ps, "expected ':'");
    ps->p++;
    return JB_OK;
}

/*
 * After an object member: ',' (*@more = 1, another member follows) or '}'
 * (*@more = 0, the object is over); anything else is a syntax error.
 */
static jb_status end_member(parser *ps, int *more)
{
    if (peek(ps, ',')) {
        ps->p++;
        *more = 1;
        return JB_OK;
    }
    if (peek(ps, '}')) {
        ps->p++;
        *more = 0;
        return JB_OK;
    }
    return syntax(ps, "expected ',' or '}'");
}

static jb_status parse_map(parser *ps, const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    if (!peek(ps, '{'))
        return field_error(ps, "expected an object (a map)");
    ps->p++;
    if (peek(ps, '}')) {
        ps->p++;
        return JB_OK;
    }
    jb__buf key;
    jb__buf_init(&key);
    jb_status st = JB_OK;
    for (int more = 1; more;) {
        if ((st = read_member_key(ps, &key)) != JB_OK)
            break;
        ProtobufCMessage *entry = new_message(ed);
        *(ProtobufCMessage **)repeated_add(msg, f) = entry;
        size_t saved = ps->path.len;
        jb__buf_printf(&ps->path, "[\"%s\"]", key.data);
        /* The key: a string, or a number or boolean written as a string. */
        const ProtobufCFieldDescriptor *kf = &ed->fields[0];
        char *kslot = (char *)entry + kf->offset;
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            char *k = strdup(key.data);
            if (k == NULL)
                JB_BUG("out of memory reading a map key");
            *(char **)kslot = k;
        } else if (kf->type == PROTOBUF_C_TYPE_BOOL) {
            if (strcmp(key.data, "true") != 0 && strcmp(key.data, "false") != 0)
                st = field_error(ps, "map key '%s' is not a boolean", key.data);
            else
                *(protobuf_c_boolean *)kslot = strcmp(key.data, "true") == 0;
        } else {
            parser sub = *ps;
            jb__buf quoted;
            jb__buf_init(&quoted);
            jb__buf_printf(&quoted, "\"%s\"", key.data);
            sub.start = sub.p = quoted.data;
            sub.end = quoted.data + quoted.len;
            st = parse_integer(&sub, kf, kslot);
            ps->path = sub.path;
            jb__buf_release(&quoted);
        }
        if (st == JB_OK) {
            const ProtobufCFieldDescriptor *vf = &ed->fields[1];
            if (!at_null(ps))
                st = parse_value(ps, vf, (char *)entry + vf->offset);
        }
        if (st != JB_OK)
            break;
        path_pop(ps, saved);
        if ((st = end_member(ps, &more)) != JB_OK)
            break;
    }
    jb__buf_release(&key);
    return st;
}

static jb_status parse_repeated(parser *ps, const ProtobufCFieldDescriptor *f,
                                ProtobufCMessage *msg)
{
    if (!peek(ps, '['))
        return field_error(ps, "expected an array");
    ps->p++;
    if (peek(ps, ']')) {
        ps->p++;
        return JB_OK;
    }
    for (size_t i = 0;; i++) {
        size_t saved = ps->path.len;
        jb__buf_printf(&ps->path, "[%zu]", i);
        void *slot = repeated_add(msg, f);
        if (f->type == PROTOBUF_C_TYPE_MESSAGE)
            *(ProtobufCMessage **)slot = NULL;
        jb_status st = parse_value(ps, f, slot);
        if (st != JB_OK) {
            if (f->type == PROTOBUF_C_TYPE_STRING && *(char **)slot == NULL) {
                /* Leave no NULL string for free_unpacked to trip on. */
                (*(size_t *)((char *)msg + f->quantifier_offset))--;
            } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && *(ProtobufCMessage **)slot == NULL) {
                (*(size_t *)((char *)msg + f->quantifier_offset))--;
            }
            return st;
        }
        path_pop(ps, saved);
        if (peek(ps, ',')) {
            ps->p++;
            continue;
        }
        if (peek(ps, ']')) {
            ps->p++;
            return JB_OK;
        }
        return syntax(ps, "expected ',' or ']'");
    }
}

static jb_status parse_field(parser *ps, const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg)
{
    char *base = (char *)msg;
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return is_map_entry(f) ? parse_map(ps, f, msg) : parse_repeated(ps, f, msg);
    void *slot = base + f->offset;
    /* The oneof case first: free_unpacked frees a member only under its case. */
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        *(uint32_t *)(base + f->quantifier_offset) = f->id;
    jb_status st = parse_value(ps, f, slot);
    if (st != JB_OK)
        return st;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return JB_OK;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
        f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
    return JB_OK;
}

static jb_status parse_message_body(parser *ps, const ProtobufCMessageDescriptor *d,
                                    ProtobufCMessage *msg)
{
    if (++ps->depth > MAX_DEPTH)
        return syntax(ps, "nested too deeply");
    if (!peek(ps, '{'))
        return syntax(ps, "expected '{'");
    ps->p++;
    uint8_t *seen = calloc(d->n_fields > 0 ? d->n_fields : 1, 1);
    if (seen == NULL)
        JB_BUG("out of memory parsing JSON");
    jb__buf key;
    jb__buf_init(&key);
    jb_status st = JB_OK;
    if (peek(ps, '}')) {
        ps->p++;
        goto done;
    }
    for (int more = 1; more;) {
        if ((st = read_member_key(ps, &key)) != JB_OK)
            break;
        size_t saved;
        path_push(ps, key.data, &saved);
        const ProtobufCFieldDescriptor *f = find_field(d, key.data);
        if (f == NULL) {
            st = field_error(ps, "no such field in %s", d->name);
            break;
        }
        size_t idx = (size_t)(f - d->fields);
        if (seen[idx]) {
            st = field_error(ps, "given twice");
            break;
        }
        seen[idx] = 1;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t cur = *(uint32_t *)((char *)msg + f->quantifier_offset);
            if (cur != 0 && cur != f->id) {
                st = field_error(ps, "another member of its oneof is set already");
                break;
            }
        }
        if (!at_null(ps) && (st = parse_field(ps, f, msg)) != JB_OK)
            break;
        path_pop(ps, saved);
        if ((st = end_member(ps, &more)) != JB_OK)
            break;
    }
done:
    jb__buf_release(&key);
    free(seen);
    ps->depth--;
    return st;
}

jb_status jb__pb_from_json(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                           ProtobufCMessage **out, jb_error *err)
{
    parser ps = {.start = json, .p = json, .end = json + len, .err = err};
    jb__buf_init(&ps.path);
    ProtobufCMessage *msg = new_message(desc);
    jb_status st = parse_message_body(&ps, desc, msg);
    if (st == JB_OK) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            st = syntax(&ps, "unexpected text after the object");
    }
    jb__buf_release(&ps.path);
    if (st != JB_OK) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return st;
    }
    *out = msg;
    return JB_OK;
}

jb_status jb__pb_bytes_to_json(const char *type, const void *data, size_t len, jb__buf *out)
{
    const ProtobufCMessageDescriptor *d = jb__pb_find_type(type);
    if (d == NULL)
        return JB_ENOENT;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, data);
    if (m == NULL)
        return JB_EPARSE;
    jb__pb_to_json(m, out);
    protobuf_c_message_free_unpacked(m, NULL);
    return JB_OK;
}

jb_status jb__pb_json_to_bytes(const char *type, const char *json, size_t len, jb__buf *out,
                               jb_error *err)
{
    const ProtobufCMessageDescriptor *d = jb__pb_find_type(type);
    if (d == NULL)
        return jb_error_set(err, JB_ENOENT, "'%s' is not a known message type", type);
    ProtobufCMessage *m;
    jb_status st = jb__pb_from_json(d, json, len, &m, err);
    if (st != JB_OK)
        return st;
    size_t n = protobuf_c_message_get_packed_size(m);
    jb__buf_grow(out, n);
    protobuf_c_message_pack(m, (uint8_t *)out->data + out->len);
    out->len += n;
    out->data[out->len] = '\0';
    protobuf_c_message_free_unpacked(m, NULL);
    return JB_OK;
}
