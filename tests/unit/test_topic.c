/*
 * Unit tests for topics, patterns and the subscription index (src/bus/topic.c,
 * src/bus/sublist.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/sublist.h"
#include "jimbot/topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_topic_validation(void **state)
{
    (void)state;
    jb_error err;
    assert_int_equal(jb_topic_validate("game_events", &err), JB_OK);
    assert_int_equal(jb_topic_validate("game_events.hand_played", &err), JB_OK);
    assert_int_equal(jb_topic_validate("dlq.game_events.x-1", &err), JB_OK);

    const char *bad[] = {"", ".a", "a.", "a..b", "a b", "a.*", "a.>", "a*", "é", "a\tb"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        jb_error_clear(&err);
        assert_int_equal(jb_topic_validate(bad[i], &err), JB_EINVAL);
        assert_int_equal(err.code, JB_EINVAL);
        assert_true(strlen(err.message) > 0);
    }
    jb_topic_validate("a.*", &err);
    assert_non_null(strstr(err.message, "wildcard"));
    jb_topic_validate("a..b", &err);
    assert_non_null(strstr(err.message, "empty token"));
    assert_int_equal(jb_topic_validate(NULL, &err), JB_EINVAL);

    char longest[JB_TOPIC_MAX_BYTES + 2];
    memset(longest, 'a', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    assert_int_equal(jb_topic_validate(longest, &err), JB_EINVAL); /* 256 bytes */
    char tokens[64] = "a";
    for (int i = 1; i < JB_TOPIC_MAX_TOKENS + 1; i++)
        strcat(tokens, ".a");
    assert_int_equal(jb_topic_validate(tokens, &err), JB_EINVAL); /* 17 tokens */
    assert_non_null(strstr(err.message, "17 tokens"));
}

static void test_pattern_validation(void **state)
{
    (void)state;
    jb_error err;
    const char *good[] = {"a", "*", ">", "a.*", "a.>", "*.b.>", "a.*.c"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(jb_pattern_validate(good[i], &err), JB_OK);
    const char *bad[] = {"", "a.>.b", ">.a", "a*", "a.b*", "*>", "a.", "a. b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(jb_pattern_validate(bad[i], &err), JB_EINVAL);
    jb_pattern_validate("a.>.b", &err);
    assert_non_null(strstr(err.message, "last token"));
    jb_pattern_validate("game*", &err);
    assert_non_null(strstr(err.message, "whole tokens"));
}

static void test_pattern_semantics(void **state)
{
    (void)state;
    struct {
        const char *pattern, *topic;
        int match;
    } cases[] = {
        {"game_events", "game_events", 1},
        {"game_events", "game_events.hand_played", 0},
        {"game_events.*", "game_events.hand_played", 1},
        {"game_events.*", "game_events", 0},
        {"game_events.*", "game_events.a.b", 0},
        {"game_events.>", "game_events.hand_played", 1},
        {"game_events.>", "game_events.a.b", 1},
        {"game_events.>", "game_events", 0},
        {"*", "x", 1},
        {"*", "x.y", 0},
        {">", "x", 1},
        {">", "x.y.z", 1},
        {"*.b.>", "a.b.c", 1},
        {"*.b.>", "a.b", 0},
        {"*.b.>", "a.c.d", 0},
        {"a.*.c", "a.b.c", 1},
        {"a.*.c", "a.b.d", 0},
        {"ab", "a", 0},
        {"a", "ab", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (jb_pattern_matches(cases[i].pattern, cases[i].topic) != cases[i].match)
            fail_msg("'%s' vs '%s': expected %d", cases[i].pattern, cases[i].topic, cases[i].match);
    }
}

static void count_item(void *item, void *userdata)
{
    (void)item;
    (*(int *)userdata)++;
}

static void collect_item(void *item, void *userdata)
{
    char *seen = userdata; /* one byte per item index */
    seen[(intptr_t)item]++;
}

static void test_sublist_insert_match_remove(void **state)
{
    (void)state;
    jb__sublist *sl = jb__sublist_new();
    jb_error err;
    int a = 1, b = 2, c = 3;
    assert_int_equal(jb__sublist_insert(sl, "game_events.*", &a, &err), JB_OK);
    assert_int_equal(jb__sublist_insert(sl, "game_events.>", &b, &err), JB_OK);
    assert_int_equal(jb__sublist_insert(sl, "game_events.hand_played", &c, &err), JB_OK);
    assert_int_equal(jb__sublist_insert(sl, "bad..pattern", &c, &err), JB_EINVAL);
    assert_int_equal(jb__sublist_count(sl), 3);

    int n = 0;
    assert_int_equal(jb__sublist_match(sl, "game_events.hand_played", count_item, &n), 3);
    assert_int_equal(n, 3);
    assert_int_equal(jb__sublist_match(sl, "game_events.a.b", count_item, &n), 1);
    assert_int_equal(jb__sublist_match(sl, "game_events", count_item, &n), 0);
    assert_int_equal(jb__sublist_match(sl, "training_updates", count_item, &n), 0);

    assert_int_equal(jb__sublist_remove(sl, "game_events.*", &b), JB_ENOENT);
    assert_int_equal(jb__sublist_remove(sl, "game_events.*", &a), JB_OK);
    assert_int_equal(jb__sublist_remove(sl, "game_events.*", &a), JB_ENOENT);
    assert_int_equal(jb__sublist_match(sl, "game_events.hand_played", count_item, &n), 2);
    assert_int_equal(jb__sublist_remove(sl, "game_events.>", &b), JB_OK);
    assert_int_equal(jb__sublist_remove(sl, "game_events.hand_played", &c), JB_OK);
    assert_int_equal(jb__sublist_count(sl), 0);
    assert_int_equal(jb__sublist_match(sl, "game_events.hand_played", count_item, &n), 0);
    jb__sublist_free(sl);
    jb__sublist_free(NULL);
}

/* Random patterns and topics over a small alphabet: the index agrees with the reference. */
static void test_sublist_agrees_with_reference(void **state)
{
    (void)state;
    enum { NPAT = 3000, NTOPIC = 2000 };
    static const char *words[] = {"a", "b", "c", "game_events", "hand_played"};
    static char patterns[NPAT][64];
    srand(12345);
    jb__sublist *sl = jb__sublist_new();
    for (intptr_t i = 0; i < NPAT; i++) {
        int len = 1 + rand() % 4;
        patterns[i][0] = '\0';
        for (int k = 0; k < len; k++) {
            const char *tok;
            int r = rand() % 10;
            if (r == 0)
                tok = "*";
            else if (r == 1 && k == len - 1)
                tok = ">";
            else
                tok = words[rand() % 5];
            if (k > 0)
                strcat(patterns[i], ".");
            strcat(patterns[i], tok);
        }
        assert_int_equal(jb__sublist_insert(sl, patterns[i], (void *)i, NULL), JB_OK);
    }
    static char seen[NPAT];
    for (int t = 0; t < NTOPIC; t++) {
        char topic[64] = "";
        int len = 1 + rand() % 5;
        for (int k = 0; k < len; k++) {
            if (k > 0)
                strcat(topic, ".");
            strcat(topic, words[rand() % 5]);
        }
        memset(seen, 0, sizeof(seen));
        jb__sublist_match(sl, topic, collect_item, seen);
        for (int i = 0; i < NPAT; i++) {
            if (seen[i] != jb_pattern_matches(patterns[i], topic))
                fail_msg("pattern '%s' topic '%s': index %d, reference %d", patterns[i], topic,
                         seen[i], jb_pattern_matches(patterns[i], topic));
        }
    }
    /* Remove every other one; the rest still agree and the count follows. */
    for (intptr_t i = 0; i < NPAT; i += 2)
        assert_int_equal(jb__sublist_remove(sl, patterns[i], (void *)i), JB_OK);
    assert_int_equal(jb__sublist_count(sl), NPAT / 2);
    memset(seen, 0, sizeof(seen));
    jb__sublist_match(sl, "a.b.c", collect_item, seen);
    for (int i = 0; i < NPAT; i++)
        assert_int_equal(seen[i], i % 2 == 1 && jb_pattern_matches(patterns[i], "a.b.c"));
    jb__sublist_free(sl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_validation),
        cmocka_unit_test(test_pattern_validation),
        cmocka_unit_test(test_pattern_semantics),
        cmocka_unit_test(test_sublist_insert_match_remove),
        cmocka_unit_test(test_sublist_agrees_with_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
