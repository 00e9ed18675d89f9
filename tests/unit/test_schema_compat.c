/*
 * Unit tests of the schema compatibility rules (src/schema/compat.c).
 *
 * Each test builds two small descriptor sets in memory (struct fixture: one
 * file "jimbot/t.proto", package "jimbot.t", a message, an enum and a
 * service), changes the second one, and checks the exact break lines that
 * jb_schema_compare() reports. Loading is tested on packed fixtures, on
 * garbage and on the build's real descriptor set. The fixture structs point
 * into themselves, so they are initialized in place and never copied.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "schema/compat.h"

#define NFIELDS  6
#define NVALUES  3
#define NMETHODS 2

typedef struct fixture {
    Google__Protobuf__FileDescriptorSet set;
    Google__Protobuf__FileDescriptorProto file, *files[2];
    Google__Protobuf__FileDescriptorProto file2;
    Google__Protobuf__DescriptorProto msg, *msgs[1];
    Google__Protobuf__FieldDescriptorProto fields[NFIELDS], *fieldp[NFIELDS];
    Google__Protobuf__OneofDescriptorProto oneof, *oneofs[1];
    Google__Protobuf__DescriptorProto__ReservedRange range, *ranges[1];
    char *reserved_names[1];
    Google__Protobuf__EnumDescriptorProto enm, *enums[1];
    Google__Protobuf__EnumValueDescriptorProto values[NVALUES], *valuep[NVALUES];
    Google__Protobuf__EnumDescriptorProto__EnumReservedRange erange, *eranges[1];
    Google__Protobuf__ServiceDescriptorProto svc, *svcs[1];
    Google__Protobuf__MethodDescriptorProto methods[NMETHODS], *methodp[NMETHODS];
} fixture;

static void set_field(Google__Protobuf__FieldDescriptorProto *f, const char *name, int32_t number,
                      Google__Protobuf__FieldDescriptorProto__Type type, const char *type_name)
{
    *f = (Google__Protobuf__FieldDescriptorProto)GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__INIT;
    f->name = (char *)name;
    f->has_number = 1;
    f->number = number;
    f->has_label = 1;
    f->label = GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_OPTIONAL;
    f->has_type = 1;
    f->type = type;
    f->type_name = (char *)type_name;
}

/*
 * The schema every test starts from:
 *
 *   package jimbot.t;
 *   message Hand {
 *     reserved 9; reserved "legacy";
 *     double chips = 1; int32 mult = 2; repeated string cards = 3;
 *     oneof source { string joker = 4; } optional int32 bonus = 5; Suit suit = 6;
 *   }
 *   enum Suit { reserved 7 to 8; SUIT_NONE = 0; SUIT_HEARTS = 1; SUIT_SPADES = 2; }
 *   service Game { rpc Play(Hand) returns (Hand); rpc Watch(Hand) returns (stream Hand); }
 */
static void fixture_init(fixture *x)
{
    memset(x, 0, sizeof(*x));
    x->set = (Google__Protobuf__FileDescriptorSet)GOOGLE__PROTOBUF__FILE_DESCRIPTOR_SET__INIT;
    x->file = (Google__Protobuf__FileDescriptorProto)GOOGLE__PROTOBUF__FILE_DESCRIPTOR_PROTO__INIT;
    x->file.name = (char *)"jimbot/t.proto";
    x->file.package = (char *)"jimbot.t";
    x->file.syntax = (char *)"proto3";
    x->files[0] = &x->file;
    x->set.n_file = 1;
    x->set.file = x->files;

    x->msg = (Google__Protobuf__DescriptorProto)GOOGLE__PROTOBUF__DESCRIPTOR_PROTO__INIT;
    x->msg.name = (char *)"Hand";
    set_field(&x->fields[0], "chips", 1,
              GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_DOUBLE, NULL);
    set_field(&x->fields[1], "mult", 2, GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT32,
              NULL);
    set_field(&x->fields[2], "cards", 3,
              GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING, NULL);
    x->fields[2].label = GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED;
    set_field(&x->fields[3], "joker", 4,
              GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING, NULL);
    x->fields[3].has_oneof_index = 1;
    x->fields[3].oneof_index = 0;
    set_field(&x->fields[4], "bonus", 5, GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT32,
              NULL);
    x->fields[4].has_proto3_optional = 1;
    x->fields[4].proto3_optional = 1;
    set_field(&x->fields[5], "suit", 6, GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM,
              ".jimbot.t.Suit");
    for (int i = 0; i < NFIELDS; i++) {
        x->fieldp[i] = &x->fields[i];
    }
    x->msg.n_field = NFIELDS;
    x->msg.field = x->fieldp;
    x->oneof =
        (Google__Protobuf__OneofDescriptorProto)GOOGLE__PROTOBUF__ONEOF_DESCRIPTOR_PROTO__INIT;
    x->oneof.name = (char *)"source";
    x->oneofs[0] = &x->oneof;
    x->msg.n_oneof_decl = 1;
    x->msg.oneof_decl = x->oneofs;
    x->range = (Google__Protobuf__DescriptorProto__ReservedRange)
        GOOGLE__PROTOBUF__DESCRIPTOR_PROTO__RESERVED_RANGE__INIT;
    x->range.has_start = x->range.has_end = 1;
    x->range.start = 9;
    x->range.end = 10; /* exclusive: reserves 9 only */
    x->ranges[0] = &x->range;
    x->msg.n_reserved_range = 1;
    x->msg.reserved_range = x->ranges;
    x->reserved_names[0] = (char *)"legacy";
    x->msg.n_reserved_name = 1;
    x->msg.reserved_name = x->reserved_names;
    x->msgs[0] = &x->msg;
    x->file.n_message_type = 1;
    x->file.message_type = x->msgs;

    static const char *const value_names[NVALUES] = {"SUIT_NONE", "SUIT_HEARTS", "SUIT_SPADES"};
    x->enm = (Google__Protobuf__EnumDescriptorProto)GOOGLE__PROTOBUF__ENUM_DESCRIPTOR_PROTO__INIT;
    x->enm.name = (char *)"Suit";
    for (int i = 0; i < NVALUES; i++) {
        x->values[i] = (Google__Protobuf__EnumValueDescriptorProto)
            GOOGLE__PROTOBUF__ENUM_VALUE_DESCRIPTOR_PROTO__INIT;
        x->values[i].name = (char *)value_names[i];
        x->values[i].has_number = 1;
        x->values[i].number = i;
        x->valuep[i] = &x->values[i];
    }
    x->enm.n_value = NVALUES;
    x->enm.value = x->valuep;
    x->erange = (Google__Protobuf__EnumDescriptorProto__EnumReservedRange)
        GOOGLE__PROTOBUF__ENUM_DESCRIPTOR_PROTO__ENUM_RESERVED_RANGE__INIT;
    x->erange.has_start = x->erange.has_end = 1;
    x->erange.start = 7;
    x->erange.end = 8; /* inclusive: reserves 7 and 8 */
    x->eranges[0] = &x->erange;
    x->enm.n_reserved_range = 1;
    x->enm.reserved_range = x->eranges;
    x->enums[0] = &x->enm;
    x->file.n_enum_type = 1;
    x->file.enum_type = x->enums;

    static const char *const method_names[NMETHODS] = {"Play", "Watch"};
    x->svc =
        (Google__Protobuf__ServiceDescriptorProto)GOOGLE__PROTOBUF__SERVICE_DESCRIPTOR_PROTO__INIT;
    x->svc.name = (char *)"Game";
    for (int i = 0; i < NMETHODS; i++) {
        x->methods[i] = (Google__Protobuf__MethodDescriptorProto)
            GOOGLE__PROTOBUF__METHOD_DESCRIPTOR_PROTO__INIT;
        x->methods[i].name = (char *)method_names[i];
        x->methods[i].input_type = (char *)".jimbot.t.Hand";
        x->methods[i].output_type = (char *)".jimbot.t.Hand";
        x->methodp[i] = &x->methods[i];
    }
    x->methods[1].has_server_streaming = 1;
    x->methods[1].server_streaming = 1;
    x->svc.n_method = NMETHODS;
    x->svc.method = x->methodp;
    x->svcs[0] = &x->svc;
    x->file.n_service = 1;
    x->file.service = x->svcs;
}

/* Removes element @i of an array of pointers with *@n entries. */
static void drop(void **list, size_t *n, size_t i)
{
    memmove(&list[i], &list[i + 1], (*n - i - 1) * sizeof(list[0]));
    (*n)--;
}

typedef struct collected {
    size_t n;
    char lines[8][512];
} collected;

static void collect(const jb_schema_break *brk, void *userdata)
{
    collected *c = userdata;
    assert_true(c->n < 8);
    snprintf(c->lines[c->n++], sizeof(c->lines[0]), "%s: %s: %s", brk->file,
             brk->scope != NULL ? brk->scope : "-", brk->detail);
}

/* Compares @base with @cur and checks that exactly the @n lines given were reported. */
static void expect_breaks(const fixture *base, const fixture *cur, size_t n, ...)
{
    collected got = {0};
    jb_schema_stats stats;
    jb_status st = jb_schema_compare(&base->set, &cur->set, "proto/", collect, &got, &stats);
    for (size_t i = 0; i < got.n; i++) {
        print_message("  reported: %s\n", got.lines[i]);
    }
    assert_int_equal(st, n == 0 ? JB_OK : JB_EINCOMPATIBLE);
    assert_int_equal(stats.breaks, got.n);
    assert_int_equal(got.n, n);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(got.lines[i], va_arg(ap, const char *));
    }
    va_end(ap);
}

#define HAND "proto/jimbot/t.proto: jimbot.t.Hand: "
#define SUIT "proto/jimbot/t.proto: jimbot.t.Suit: "
#define GAME "proto/jimbot/t.proto: jimbot.t.Game: "

static void test_identical_is_compatible(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    jb_schema_stats stats;
    assert_int_equal(jb_schema_compare(&a.set, &b.set, NULL, NULL, NULL, &stats), JB_OK);
    assert_int_equal(stats.files, 1);
    assert_int_equal(stats.messages, 1);
    assert_int_equal(stats.enums, 1);
    assert_int_equal(stats.services, 1);
    assert_int_equal(stats.breaks, 0);
}

static void test_removed_field_needs_number_and_name_reserved(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    drop((void **)b.msg.field, &b.msg.n_field, 0); /* chips = 1 */
    expect_breaks(&a, &b, 1,
                  HAND "field 1 'chips': removed without reserving number 1 and name 'chips'");

    b.range.start = 1; /* reserved 1 to 9 (end exclusive: 10) */
    expect_breaks(&a, &b, 1, HAND "field 1 'chips': removed without reserving name 'chips'");

    b.reserved_names[0] = (char *)"chips";
    /* Now "legacy" is no longer reserved, but nothing uses it: compatible. */
    expect_breaks(&a, &b, 0);

    b.range.start = 2;
    expect_breaks(&a, &b, 1, HAND "field 1 'chips': removed without reserving number 1");
}

static void test_field_changes(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.fields[0].type = GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FLOAT;
    b.fields[1].name = (char *)"multiplier";
    b.fields[2].label = GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_OPTIONAL;
    b.fields[4].proto3_optional = 0;
    b.fields[5].type_name = (char *)".jimbot.t.Color";
    expect_breaks(&a, &b, 5, HAND "field 1 'chips': type changed from double to float",
                  HAND "field 2 'mult': renamed to 'multiplier'",
                  HAND "field 3 'cards': label changed from repeated to singular",
                  HAND "field 5 'bonus': label changed from optional to singular",
                  HAND "field 6 'suit': type changed from jimbot.t.Suit to jimbot.t.Color");
}

static void test_number_change_and_json_name(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.fields[1].number = 12;
    a.fields[0].json_name = (char *)"chips";
    b.fields[0].json_name = (char *)"chipCount";
    expect_breaks(&a, &b, 2, HAND "field 1 'chips': JSON name changed from 'chips' to 'chipCount'",
                  HAND "field 2 'mult': number changed from 2 to 12");
}

static void test_oneof_moves(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.fields[3].has_oneof_index = 0; /* joker leaves the oneof */
    b.fields[1].has_oneof_index = 1; /* mult joins it */
    b.fields[1].oneof_index = 0;
    expect_breaks(&a, &b, 2, HAND "field 2 'mult': moved into oneof 'source'",
                  HAND "field 4 'joker': moved out of oneof 'source'");

    fixture_init(&b);
    b.oneof.name = (char *)"origin";
    expect_breaks(&a, &b, 1, HAND "field 4 'joker': moved from oneof 'source' to oneof 'origin'");
}

static void test_reserved_reuse(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.fields[0].number = 9; /* 9 is reserved in the baseline; 10 would not be */
    b.fields[1].name = (char *)"legacy";
    b.msg.n_reserved_range = 0;
    b.msg.n_reserved_name = 0;
    expect_breaks(&a, &b, 4, HAND "field 1 'chips': number changed from 1 to 9",
                  HAND "field 2 'mult': renamed to 'legacy'",
                  HAND "field 9 'chips': reuses number 9 reserved in the baseline",
                  HAND "field 2 'legacy': reuses name 'legacy' reserved in the baseline");
}

static void test_enum_values(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.values[1].name = (char *)"SUIT_HEART";
    drop((void **)b.enm.value, &b.enm.n_value, 2); /* SUIT_SPADES = 2 */
    expect_breaks(&a, &b, 2, SUIT "value 1 'SUIT_HEARTS': renamed to 'SUIT_HEART'",
                  SUIT "value 2 'SUIT_SPADES': removed without reserving number 2 and name "
                       "'SUIT_SPADES'");

    /* Enum ranges include their end: reserving 2 to 2 covers value 2. */
    b.values[1].name = (char *)"SUIT_HEARTS";
    b.erange.start = 2;
    b.erange.end = 2;
    char *names[1] = {(char *)"SUIT_SPADES"};
    b.enm.n_reserved_name = 1;
    b.enm.reserved_name = names;
    expect_breaks(&a, &b, 0);

    /* A new value on a number the baseline reserved (7 to 8, inclusive). */
    fixture_init(&b);
    b.values[2].number = 8;
    b.enm.n_reserved_range = 0;
    expect_breaks(&a, &b, 2, SUIT "value 2 'SUIT_SPADES': number changed from 2 to 8",
                  SUIT "value 8 'SUIT_SPADES': reuses number 8 reserved in the baseline");
}

static void test_removed_elements(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.file.n_message_type = 0;
    b.file.n_enum_type = 0;
    drop((void **)b.svc.method, &b.svc.n_method, 0); /* Play */
    expect_breaks(&a, &b, 3, "proto/jimbot/t.proto: jimbot.t.Hand: message removed",
                  "proto/jimbot/t.proto: jimbot.t.Suit: enum removed",
                  GAME "method 'Play': removed");

    fixture_init(&b);
    b.file.n_service = 0;
    expect_breaks(&a, &b, 1, "proto/jimbot/t.proto: jimbot.t.Game: service removed");

    fixture_init(&b);
    b.file.package = (char *)"jimbot.u";
    expect_breaks(&a, &b, 1,
                  "proto/jimbot/t.proto: -: package changed from 'jimbot.t' to 'jimbot.u'");

    fixture_init(&b);
    b.file.name = (char *)"jimbot/u.proto";
    expect_breaks(&a, &b, 1, "proto/jimbot/t.proto: -: file removed");
}

static void test_message_moved_to_another_file(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    /* Hand moves to jimbot/hand.proto, same package. */
    b.file2 = (Google__Protobuf__FileDescriptorProto)GOOGLE__PROTOBUF__FILE_DESCRIPTOR_PROTO__INIT;
    b.file2.name = (char *)"jimbot/hand.proto";
    b.file2.package = (char *)"jimbot.t";
    b.file2.syntax = (char *)"proto3";
    b.file2.n_message_type = 1;
    b.file2.message_type = b.msgs;
    b.file.n_message_type = 0;
    b.files[1] = &b.file2;
    b.set.n_file = 2;
    expect_breaks(&a, &b, 1,
                  HAND "message removed from this file (now defined in proto/jimbot/hand.proto)");
}

static void test_methods(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    b.methods[0].input_type = (char *)".jimbot.t.Other";
    b.methods[0].has_client_streaming = 1;
    b.methods[0].client_streaming = 1;
    b.methods[1].server_streaming = 0;
    expect_breaks(&a, &b, 3,
                  GAME "method 'Play': input type changed from jimbot.t.Hand to jimbot.t.Other",
                  GAME "method 'Play': client streaming added",
                  GAME "method 'Watch': server streaming removed");
}

static void test_additions_are_compatible(void **state)
{
    fixture a, b;
    fixture_init(&a);
    fixture_init(&b);
    /* The baseline lacks the last field, enum value and method; the current has them. */
    a.msg.n_field--;
    a.enm.n_value--;
    a.svc.n_method--;
    expect_breaks(&a, &b, 0);
    /* A new file too. */
    b.file2 = b.file;
    b.file2.name = (char *)"jimbot/new.proto";
    b.file2.package = (char *)"jimbot.new";
    b.files[1] = &b.file2;
    b.set.n_file = 2;
    expect_breaks(&a, &b, 0);
}

static void test_decode_roundtrip_and_garbage(void **state)
{
    fixture a;
    fixture_init(&a);
    size_t len = google__protobuf__file_descriptor_set__get_packed_size(&a.set);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    google__protobuf__file_descriptor_set__pack(&a.set, buf);

    jb_schema_set *set = NULL;
    jb_error err;
    assert_int_equal(jb_schema_set_decode(buf, len, "packed", &set, &err), JB_OK);
    assert_non_null(set);
    assert_int_equal(jb_schema_compare(&a.set, set, NULL, NULL, NULL, NULL), JB_OK);
    jb_schema_set_free(set);

    /* Truncated in the middle: it no longer decodes. */
    set = NULL;
    assert_int_equal(jb_schema_set_decode(buf, len / 2, "half", &set, &err), JB_EPARSE);
    assert_null(set);
    assert_non_null(strstr(err.message, "half: not a descriptor set"));
    free(buf);

    static const char text[] = "hello, world\n";
    assert_int_equal(jb_schema_set_decode(text, sizeof(text) - 1, "text", &set, &err), JB_EPARSE);
    assert_null(set);
    assert_int_equal(jb_schema_set_decode(text, 0, "empty", &set, &err), JB_EPARSE);
    assert_non_null(strstr(err.message, "empty: empty file"));

    /* Decodes, but a field lacks its number: malformed, not a crash later. */
    a.fields[2].has_number = 0;
    len = google__protobuf__file_descriptor_set__get_packed_size(&a.set);
    buf = malloc(len);
    assert_non_null(buf);
    google__protobuf__file_descriptor_set__pack(&a.set, buf);
    assert_int_equal(jb_schema_set_decode(buf, len, "nonumber", &set, &err), JB_EPARSE);
    assert_non_null(strstr(err.message, "field #3 of message 'Hand'"));
    assert_null(set);
    free(buf);

    jb_schema_set_free(NULL);
}

static void test_load_real_descriptor_set(void **state)
{
    const char *dir = getenv("JB_BUILD_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/proto/descriptor_set.binpb", dir != NULL ? dir : ".");
    jb_schema_set *set = NULL;
    jb_error err;
    jb_status st = jb_schema_set_load(path, &set, &err);
    if (st != JB_OK) {
        fail_msg("%s", err.message);
    }
    jb_schema_stats stats;
    assert_int_equal(jb_schema_compare(set, set, "proto/", NULL, NULL, &stats), JB_OK);
    assert_true(stats.files >= 7);
    assert_true(stats.messages >= 30);
    jb_schema_set_free(set);

    assert_int_equal(jb_schema_set_load("/nonexistent/x.binpb", &set, &err), JB_ENOENT);
    assert_non_null(strstr(err.message, "cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_is_compatible),
        cmocka_unit_test(test_removed_field_needs_number_and_name_reserved),
        cmocka_unit_test(test_field_changes),
        cmocka_unit_test(test_number_change_and_json_name),
        cmocka_unit_test(test_oneof_moves),
        cmocka_unit_test(test_reserved_reuse),
        cmocka_unit_test(test_enum_values),
        cmocka_unit_test(test_removed_elements),
        cmocka_unit_test(test_message_moved_to_another_file),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_additions_are_compatible),
        cmocka_unit_test(test_decode_roundtrip_and_garbage),
        cmocka_unit_test(test_load_real_descriptor_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
