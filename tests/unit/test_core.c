/*
 * Unit tests for src/core: status codes, error detail, the growable buffer
 * and structured log lines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/file.h"
#include "core/strmap.h"
#include "jimbot/log.h"
#include "jimbot/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_status_names_and_texts(void **state)
{
    (void)state;
    assert_int_equal(JB_OK, 0);
    assert_string_equal(jb_status_name(JB_OK), "OK");
    assert_string_equal(jb_status_name(JB_EBACKPRESSURE), "EBACKPRESSURE");
    assert_string_equal(jb_strerror(JB_EINVAL), "invalid argument");
    assert_string_equal(jb_strerror((jb_status)-9999), "unknown status");
    /* Every code is negative and distinct, and has a name and a text. */
#define CHECK(name, value, text)                           \
    if (value != 0)                                        \
        assert_true(value < 0);                            \
    assert_string_equal(jb_status_name(JB_##name), #name); \
    assert_string_equal(jb_strerror(JB_##name), text);
    JB_STATUS_MAP(CHECK)
#undef CHECK
}

static void test_error_set_fills_and_returns_code(void **state)
{
    (void)state;
    jb_error err;
    jb_error_clear(&err);
    assert_int_equal(jb_error_set(&err, JB_ETOOBIG, "event of %d bytes", 5), JB_ETOOBIG);
    assert_int_equal(err.code, JB_ETOOBIG);
    assert_string_equal(err.message, "event of 5 bytes");
    /* NULL is allowed and only returns the code. */
    assert_int_equal(jb_error_set(NULL, JB_EIO, "x"), JB_EIO);
    /* Long messages are truncated, never overflow. */
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    jb_error_set(&err, JB_EINVAL, "%s", big);
    assert_int_equal(strlen(err.message), sizeof(err.message) - 1);
}

static void test_buf_grows_and_stays_terminated(void **state)
{
    (void)state;
    jb__buf b;
    jb__buf_init(&b);
    for (int i = 0; i < 1000; i++)
        jb__buf_printf(&b, "%d,", i);
    assert_true(b.len > 2000);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "0,1,2,", 6);
    jb__buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    jb__buf_append(&b, "a\0b", 3);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "a\0b", 4);
    jb__buf_release(&b);
    assert_null(b.data);
}

static char last_line[4096];
static int lines_seen;

static void capture(jb_log_level level, const char *line, void *userdata)
{
    (void)level;
    *(int *)userdata += 1;
    snprintf(last_line, sizeof(last_line), "%s", line);
}

static void test_log_line_shape_and_threshold(void **state)
{
    (void)state;
    lines_seen = 0;
    jb_log_set_sink(capture, &lines_seen);
    jb_log_set_level(JB_LOG_INFO);
    jb_log(JB_LOG_INFO, "config", "reloaded", "version=%d changed=%s", 3, "a,b");
    assert_int_equal(lines_seen, 1);
    /* 2026-11-27T23:40:01.123Z info  config  reloaded version=3 changed=a,b */
    assert_int_equal(strlen(last_line) > 24, 1);
    assert_int_equal(last_line[4], '-');
    assert_int_equal(last_line[10], 'T');
    assert_int_equal(last_line[23], 'Z');
    assert_non_null(strstr(last_line, " info  config  reloaded version=3 changed=a,b"));
    jb_log(JB_LOG_DEBUG, "config", "dropped", NULL);
    assert_int_equal(lines_seen, 1);
    jb_log_set_level(JB_LOG_DEBUG);
    jb_log(JB_LOG_DEBUG, "bus", "kept", NULL);
    assert_int_equal(lines_seen, 2);
    assert_non_null(strstr(last_line, " debug bus     kept"));
    jb_log_set_sink(NULL, NULL);
    jb_log_set_level(JB_LOG_INFO);

    jb_log_level level;
    assert_int_equal(jb_log_level_parse("warn", &level), 0);
    assert_int_equal(level, JB_LOG_WARN);
    assert_int_equal(jb_log_level_parse("verbose", &level), -1);
}

static void test_log_quote(void **state)
{
    (void)state;
    char buf[64];
    assert_string_equal(jb_log_quote(buf, sizeof(buf), "plain"), "plain");
    assert_string_equal(jb_log_quote(buf, sizeof(buf), ""), "\"\"");
    assert_string_equal(jb_log_quote(buf, sizeof(buf), "two words"), "\"two words\"");
    assert_string_equal(jb_log_quote(buf, sizeof(buf), "a=\"b\"\n"), "\"a=\\\"b\\\"\\n\"");
    char tiny[6];
    jb_log_quote(tiny, sizeof(tiny), "a long value with spaces");
    assert_true(strlen(tiny) < sizeof(tiny));
}

/* Random puts and deletes against a plain array: backward-shift deletion keeps every key findable.
 */
static void test_strmap_matches_reference(void **state)
{
    (void)state;
    enum { KEYS = 500 };
    static intptr_t ref[KEYS]; /* 0 = absent, else the value */
    jb__strmap m;
    jb__strmap_init(&m);
    srand(7);
    for (int step = 0; step < 20000; step++) {
        int k = rand() % KEYS;
        char key[16];
        snprintf(key, sizeof(key), "k%d", k);
        if (rand() % 3 == 0) {
            void *old = jb__strmap_del(&m, key);
            assert_int_equal((intptr_t)old, ref[k]);
            ref[k] = 0;
        } else {
            intptr_t v = step + 1;
            void *old = jb__strmap_put(&m, key, (void *)v);
            assert_int_equal((intptr_t)old, ref[k]);
            ref[k] = v;
        }
    }
    size_t live = 0;
    for (int k = 0; k < KEYS; k++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", k);
        assert_int_equal((intptr_t)jb__strmap_get(&m, key), ref[k]);
        live += ref[k] != 0;
    }
    assert_int_equal(m.len, live);
    size_t iter = 0, seen = 0;
    const char *key;
    void *value;
    while (jb__strmap_next(&m, &iter, &key, &value)) {
        assert_int_equal((intptr_t)value, ref[atoi(key + 1)]);
        seen++;
    }
    assert_int_equal(seen, live);
    jb__strmap_release(&m);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = calloc(1, 4096);
    *len = fread(buf, 1, 4095, f);
    fclose(f);
    return buf;
}

static void test_file_write_atomic_replaces_whole(void **state)
{
    (void)state;
    char dir[] = "/tmp/jb-file-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], tmp[260];
    snprintf(path, sizeof(path), "%s/state", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    jb_error err;
    assert_int_equal(jb__file_write_atomic(path, "first", 5, &err), JB_OK);
    assert_int_equal(jb__file_write_atomic(path, "2nd", 3, &err), JB_OK);
    size_t len;
    char *got = slurp(path, &len);
    assert_non_null(got);
    assert_int_equal(len, 3);
    assert_memory_equal(got, "2nd", 3);
    free(got);
    assert_int_equal(access(tmp, F_OK), -1);

    /* A folder that does not exist: JB_EIO naming the file, nothing left behind. */
    char bad[300];
    snprintf(bad, sizeof(bad), "%s/missing/state", dir);
    assert_int_equal(jb__file_write_atomic(bad, "x", 1, &err), JB_EIO);
    assert_non_null(strstr(err.message, "missing/state.tmp"));
    /* The old file is untouched by a failed write elsewhere. */
    got = slurp(path, &len);
    assert_int_equal(len, 3);
    free(got);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names_and_texts),
        cmocka_unit_test(test_error_set_fills_and_returns_code),
        cmocka_unit_test(test_buf_grows_and_stays_terminated),
        cmocka_unit_test(test_log_line_shape_and_threshold),
        cmocka_unit_test(test_log_quote),
        cmocka_unit_test(test_strmap_matches_reference),
        cmocka_unit_test(test_file_write_atomic_replaces_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
