/*
 * Unit tests for the durable log (src/store/, include/jimbot/store.h).
 *
 * Every test runs a real libuv loop over a real temporary directory (or the
 * in-memory mode) and closes both: a test that leaks a handle fails on
 * uv_loop_close. Crashes are simulated by cutting and flipping bytes in the
 * segment files between a close and a reopen. No test asserts a duration;
 * the slow writer for backpressure and coalescing comes from a test hook.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jimbot/log.h"
#include "jimbot/store.h"
#include "store/crc32c.h"
#include "store/store_internal.h"

#include "faultfs.h"

/* ---- fixtures ---------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    char dir[64];
    char warnings[8192];
} fixture;

static void capture_sink(jb_log_level level, const char *line, void *userdata)
{
    fixture *f = userdata;
    if (level >= JB_LOG_WARN) {
        size_t used = strlen(f->warnings);
        snprintf(f->warnings + used, sizeof(f->warnings) - used, "%s\n", line);
    }
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    jb_log_set_sink(capture_sink, f);
    *state = f;
    return 0;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int teardown(void **state)
{
    fixture *f = *state;
    jb_log_set_sink(NULL, NULL);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    remove_dir(f->dir);
    free(f);
    return 0;
}

static jb_store *open_ok(fixture *f, const jb_store_options *o)
{
    jb_store *s = NULL;
    jb_error err = {0};
    jb_status st = jb_store_open(&f->loop, o, &s, &err);
    if (st != JB_OK)
        fail_msg("open: %s: %s", jb_status_name(st), err.message);
    return s;
}

static jb_store_options disk_opts(fixture *f)
{
    jb_store_options o = {0};
    o.dir = f->dir;
    return o;
}

static void payload_of(uint64_t seq, char *buf, size_t *len)
{
    /* Lengths vary with the sequence so that offsets are not regular. */
    *len = 20 + (size_t)(seq % 37);
    for (size_t i = 0; i < *len; i++)
        buf[i] = (char)('a' + (seq * 7 + i) % 26);
}

static void append_n(jb_store *s, uint64_t n, int64_t ts_base)
{
    for (uint64_t i = 0; i < n; i++) {
        char buf[64];
        size_t len;
        uint64_t seq = 0, expect = jb_store_last_seq(s) + 1;
        payload_of(expect, buf, &len);
        jb_error err = {0};
        jb_status st = jb_store_append(s, ts_base + (int64_t)expect, buf, len, &seq, &err);
        if (st != JB_OK)
            fail_msg("append: %s", err.message);
        assert_int_equal(seq, expect);
    }
}

typedef struct flush_rec {
    int called;
    jb_status status;
    uint64_t durable;
    int order;
} flush_rec;

static int flush_order_counter;

static void on_flush(jb_status status, uint64_t durable, const jb_error *err, void *userdata)
{
    flush_rec *r = userdata;
    r->called++;
    r->status = status;
    r->durable = durable;
    r->order = ++flush_order_counter;
}

static uint64_t flush_wait(fixture *f, jb_store *s)
{
    flush_rec r = {0};
    assert_int_equal(jb_store_flush(s, on_flush, &r), JB_OK);
    assert_int_equal(r.called, 0);
    while (r.called == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(r.called, 1);
    assert_int_equal(r.status, JB_OK);
    return r.durable;
}

static void on_closed(jb_status status, void *userdata)
{
    int *done = userdata;
    assert_int_equal(status, JB_OK);
    *done = 1;
}

static void close_wait(fixture *f, jb_store *s)
{
    int done = 0;
    assert_int_equal(jb_store_close(s, on_closed, &done), JB_OK);
    while (!done)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

typedef struct check_state {
    uint64_t next;
    uint64_t count;
    int64_t ts_base;
} check_state;

static int check_visit(const jb_store_record *rec, void *userdata)
{
    check_state *c = userdata;
    char buf[64];
    size_t len;
    assert_int_equal(rec->seq, c->next);
    assert_int_equal(rec->timestamp_ms, c->ts_base + (int64_t)rec->seq);
    payload_of(rec->seq, buf, &len);
    assert_int_equal(rec->len, len);
    assert_memory_equal(rec->payload, buf, len);
    c->next++;
    c->count++;
    return 0;
}

/* Reads everything from @from and checks every record; returns the count. */
static uint64_t check_all(jb_store *s, uint64_t from, int64_t ts_base)
{
    check_state c = {from, 0, ts_base};
    size_t n = 0;
    jb_error err = {0};
    jb_status st = jb_store_read(s, from, 0, 0, check_visit, &c, &n, &err);
    if (st != JB_OK)
        fail_msg("read: %s", err.message);
    assert_int_equal(n, c.count);
    assert_int_equal(c.next, jb_store_last_seq(s) + 1);
    return c.count;
}

static size_t count_segments(const char *dir, char names[][32], size_t max)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".seg") == 0) {
            if (names != NULL && n < max)
                snprintf(names[n], 32, "%.31s", e->d_name);
            n++;
        }
    }
    closedir(d);
    return n;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

static void flip_byte(const char *path, off_t off)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, off), 1);
    c ^= 0x40;
    assert_int_equal(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

/* Offset of record @seq (1-based, first segment) from the payload lengths. */
static off_t record_offset(uint64_t seq)
{
    off_t off = JB__SEG_HEADER_BYTES;
    for (uint64_t i = 1; i < seq; i++) {
        char buf[64];
        size_t len;
        payload_of(i, buf, &len);
        off += (off_t)(JB__REC_HEADER_BYTES + len);
    }
    return off;
}

/* ---- CRC32C ------------------------------------------------------------ */

static void test_crc32c_vectors(void **state)
{
    const char *check = "123456789";
    uint8_t zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xff, sizeof(ones));
    for (int i = 0; i < 32; i++)
        inc[i] = (uint8_t)i;

    assert_int_equal(jb__crc32c_sw(0, check, 9), 0xE3069283u);
    assert_int_equal(jb__crc32c_sw(0, zeros, 32), 0x8A9136AAu);
    assert_int_equal(jb__crc32c_sw(0, ones, 32), 0x62A8AB43u);
    assert_int_equal(jb__crc32c_sw(0, inc, 32), 0x46DD794Eu);
    assert_int_equal(jb__crc32c(0, check, 9), 0xE3069283u);
    assert_int_equal(jb__crc32c_hw(0, check, 9), 0xE3069283u);
    assert_int_equal(jb__crc32c_hw(0, zeros, 32), 0x8A9136AAu);
    assert_int_equal(jb__crc32c_hw(0, ones, 32), 0x62A8AB43u);
    assert_int_equal(jb__crc32c_hw(0, inc, 32), 0x46DD794Eu);
    print_message("hardware crc32c: %s\n", jb__crc32c_hw_available() ? "yes" : "no");

    /* Both paths agree on every length and alignment, and chain. */
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 131 + 7);
    for (size_t off = 0; off < 8; off++) {
        for (size_t len = 0; len + off <= sizeof(buf); len += 13) {
            uint32_t sw = jb__crc32c_sw(0, buf + off, len);
            assert_int_equal(jb__crc32c_hw(0, buf + off, len), sw);
            size_t half = len / 2;
            assert_int_equal(
                jb__crc32c(jb__crc32c(0, buf + off, half), buf + off + half, len - half), sw);
        }
    }
}

/* ---- basics ------------------------------------------------------------ */

typedef struct count_state {
    size_t n;
    size_t bytes;
} count_state;

static int count_visit(const jb_store_record *rec, void *userdata)
{
    count_state *c = userdata;
    c->n++;
    c->bytes += rec->len;
    return 0;
}

static void test_append_flush_read(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    jb_store *s = open_ok(f, &o);
    assert_int_equal(jb_store_first_seq(s), 1);
    assert_int_equal(jb_store_last_seq(s), 0);
    assert_int_equal(jb_store_durable_seq(s), 0);

    append_n(s, 1000, 5000);
    assert_int_equal(jb_store_durable_seq(s), 0);
    /* Not yet written: served from the buffer. */
    assert_int_equal(check_all(s, 1, 5000), 1000);
    assert_int_equal(flush_wait(f, s), 1000);
    assert_int_equal(jb_store_durable_seq(s), 1000);
    assert_int_equal(check_all(s, 1, 5000), 1000);
    assert_int_equal(check_all(s, 777, 5000), 224);

    count_state c = {0};
    size_t n = 0;
    assert_int_equal(jb_store_read(s, 10, 5, 0, count_visit, &c, &n, NULL), JB_OK);
    assert_int_equal(n, 5);
    /* max_bytes stops before exceeding, but one record always goes. */
    memset(&c, 0, sizeof(c));
    assert_int_equal(jb_store_read(s, 1, 0, 100, count_visit, &c, &n, NULL), JB_OK);
    assert_true(c.bytes <= 100 && c.n >= 2);
    memset(&c, 0, sizeof(c));
    assert_int_equal(jb_store_read(s, 1, 0, 1, count_visit, &c, &n, NULL), JB_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(jb_store_read(s, 1001, 0, 0, count_visit, &c, &n, NULL), JB_OK);
    assert_int_equal(n, 0);
    jb_error err = {0};
    assert_int_equal(jb_store_read(s, 0, 0, 0, count_visit, &c, &n, &err), JB_ENOENT);

    /* Batch append: consecutive sequences. */
    jb_store_entry e[3] = {{6001, "x", 1}, {6002, "yy", 2}, {6003, "", 0}};
    uint64_t first = 0;
    assert_int_equal(jb_store_append_batch(s, e, 3, &first, NULL), JB_OK);
    assert_int_equal(first, 1001);
    assert_int_equal(jb_store_last_seq(s), 1003);
    assert_int_equal(flush_wait(f, s), 1003);

    /* A second store on the same directory is refused. */
    jb_store *other = NULL;
    assert_int_equal(jb_store_open(&f->loop, &o, &other, &err), JB_EUNAVAILABLE);
    assert_null(other);
    close_wait(f, s);
}

static void test_reopen_recovers(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    jb_store *s = open_ok(f, &o);
    append_n(s, 500, 0);
    /* Close without a flush: close writes and syncs. */
    close_wait(f, s);

    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 500);
    assert_int_equal(jb_store_durable_seq(s), 500);
    assert_int_equal(check_all(s, 1, 0), 500);
    append_n(s, 1, 0);
    assert_int_equal(jb_store_last_seq(s), 501);
    close_wait(f, s);

    s = open_ok(f, &o);
    assert_int_equal(check_all(s, 1, 0), 501);
    close_wait(f, s);
    assert_string_equal(f->warnings, "");
}

/* ---- crashes ----------------------------------------------------------- */

static void test_torn_tail(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    char path[128];
    snprintf(path, sizeof(path), "%s/00000000000000000001.seg", f->dir);
    const uint64_t n = 40;
    off_t last = record_offset(n), end = record_offset(n + 1);
    off_t mid = record_offset(20);
    /* cut offset -> whole records expected */
    struct {
        off_t cut;
        uint64_t whole;
    } cuts[] = {
        {end - 1, n - 1},                         /* one byte short */
        {last + 3, n - 1},                        /* inside the record header */
        {last + JB__REC_HEADER_BYTES, n - 1},     /* header only, no payload */
        {last + JB__REC_HEADER_BYTES + 5, n - 1}, /* middle of the payload */
        {last, n - 1},                            /* exactly at a boundary: nothing torn */
        {mid + 10, 19},                           /* deep cut */
        {JB__SEG_HEADER_BYTES + 1, 0},            /* the first record */
        {10, 0},                                  /* inside the segment header */
    };
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        remove_dir(f->dir);
        assert_int_equal(mkdir(f->dir, 0700), 0);
        f->warnings[0] = '\0';
        jb_store *s = open_ok(f, &o);
        append_n(s, n, 100);
        assert_int_equal(flush_wait(f, s), n);
        close_wait(f, s);
        assert_int_equal(file_size(path), end);

        assert_int_equal(truncate(path, cuts[i].cut), 0);
        /* What a crash leaves is no damage: verify lists it and says clean. */
        jb_store_report r;
        assert_int_equal(jb_store_verify(f->dir, &r, NULL), JB_OK);
        assert_false(r.damaged);
        assert_int_equal(r.n_problems, cuts[i].cut == last ? 0 : 1);
        assert_true(r.n_problems == 0 || r.problems[0].torn_tail);
        assert_int_equal(r.records, cuts[i].whole);
        jb_store_report_release(&r);
        s = open_ok(f, &o);
        assert_int_equal(jb_store_last_seq(s), cuts[i].whole);
        assert_int_equal(check_all(s, 1, 100), cuts[i].whole);
        bool boundary = cuts[i].cut == last;
        if (boundary) {
            assert_string_equal(f->warnings, "");
        } else {
            assert_non_null(strstr(f->warnings, "torn"));
            assert_non_null(strstr(f->warnings, "00000000000000000001.seg"));
            char want[64];
            snprintf(want, sizeof(want), "offset=%lld ",
                     cuts[i].cut < JB__SEG_HEADER_BYTES
                         ? 0LL
                         : (long long)record_offset(cuts[i].whole + 1));
            assert_non_null(strstr(f->warnings, want));
        }
        /* The next append continues right after the last whole record. */
        append_n(s, 3, 100);
        assert_int_equal(jb_store_last_seq(s), cuts[i].whole + 3);
        close_wait(f, s);
        s = open_ok(f, &o);
        assert_int_equal(check_all(s, 1, 100), cuts[i].whole + 3);
        close_wait(f, s);
    }
}

static void test_flipped_byte_in_last_record(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    char path[128];
    snprintf(path, sizeof(path), "%s/00000000000000000001.seg", f->dir);
    jb_store *s = open_ok(f, &o);
    append_n(s, 30, 0);
    close_wait(f, s);
    flip_byte(path, record_offset(30) + JB__REC_HEADER_BYTES + 2);

    /*
     * Nothing valid follows, so it is truncated as a torn tail; but the record
     * was whole and numbered 30, so it may have been durable: 30 is never
     * handed out again, the next record goes to a new segment at 31.
     */
    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 30);
    count_state c = {0};
    assert_int_equal(jb_store_read(s, 1, 0, 0, count_visit, &c, NULL, NULL), JB_OK);
    assert_int_equal(c.n, 29);
    assert_non_null(strstr(f->warnings, "checksum mismatch"));
    assert_non_null(strstr(f->warnings, "high-water"));
    assert_int_equal(file_size(path), record_offset(30));
    uint64_t seq = 0;
    assert_int_equal(jb_store_append(s, 0, "next", 4, &seq, NULL), JB_OK);
    assert_int_equal(seq, 31);
    close_wait(f, s);

    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 31);
    memset(&c, 0, sizeof(c));
    assert_int_equal(jb_store_read(s, 1, 0, 0, count_visit, &c, NULL, NULL), JB_OK);
    assert_int_equal(c.n, 30);
    close_wait(f, s);

    /* A damaged mark cannot be trusted to protect anything: refused. */
    char hwm[128];
    snprintf(hwm, sizeof(hwm), "%s/%s", f->dir, JB__HWM_NAME);
    assert_int_equal(file_size(hwm), JB__HWM_BYTES);
    flip_byte(hwm, 9);
    jb_error err = {0};
    assert_int_equal(jb_store_open(&f->loop, &o, &s, &err), JB_ECORRUPT);
    assert_non_null(strstr(err.message, JB__HWM_NAME));
}

typedef struct gap_state {
    uint64_t n, last;
    uint64_t jumps; /* visits whose sequence is not the previous one + 1 */
} gap_state;

static int gap_visit(const jb_store_record *rec, void *userdata)
{
    gap_state *g = userdata;
    char buf[64];
    size_t len;
    assert_true(rec->seq > g->last);
    g->jumps += g->n > 0 && rec->seq != g->last + 1;
    if (rec->len != 4) {
        payload_of(rec->seq, buf, &len);
        assert_int_equal(rec->len, len);
        assert_memory_equal(rec->payload, buf, len);
    }
    g->last = rec->seq;
    g->n++;
    return 0;
}

static void test_damage_refuses_then_repair(void **state)
{
    /* The case: one flipped byte in the middle of 2,000 durable records. */
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    char path[128];
    snprintf(path, sizeof(path), "%s/00000000000000000001.seg", f->dir);
    jb_store *s = open_ok(f, &o);
    append_n(s, 2000, 0);
    assert_int_equal(flush_wait(f, s), 2000);
    close_wait(f, s);
    off_t size = file_size(path), bad = record_offset(1000);
    flip_byte(path, bad + JB__REC_HEADER_BYTES + 3);

    jb_store *no = NULL;
    jb_error err = {0};
    assert_int_equal(jb_store_open(&f->loop, &o, &no, &err), JB_ECORRUPT);
    assert_null(no);
    char want[64];
    snprintf(want, sizeof(want), "offset %lld", (long long)bad);
    assert_non_null(strstr(err.message, "00000000000000000001.seg"));
    assert_non_null(strstr(err.message, want));
    assert_non_null(strstr(err.message, "between sequences 999 and 1001"));
    assert_non_null(strstr(err.message, "jimbotd --verify"));
    assert_non_null(strstr(err.message, "jimbotd --repair"));
    assert_int_equal(file_size(path), size);

    jb_store_report r;
    assert_int_equal(jb_store_verify(f->dir, &r, &err), JB_OK);
    assert_true(r.damaged);
    assert_int_equal(r.segments, 1);
    assert_int_equal(r.records, 1999);
    assert_int_equal(r.first_seq, 1);
    assert_int_equal(r.last_seq, 2000);
    assert_int_equal(r.n_problems, 1);
    assert_int_equal(r.problems[0].offset, bad);
    assert_int_equal(r.problems[0].seq_before, 999);
    assert_int_equal(r.problems[0].seq_after, 1001);
    assert_false(r.problems[0].torn_tail);
    assert_int_equal(r.dropped, 1000);
    assert_int_equal(r.dropped_first, 1000);
    assert_int_equal(r.dropped_last, 2000);
    jb_store_report_release(&r);
    assert_int_equal(file_size(path), size);

    /* Verify and repair wait for the directory: a store has it open. */
    s = NULL;
    assert_int_equal(jb_store_repair(f->dir, &r, &err), JB_OK);
    assert_true(r.repaired);
    assert_int_equal(r.dropped, 1000);
    assert_int_equal(r.next_seq, 2001);
    jb_store_report_release(&r);
    assert_int_equal(file_size(path), bad);

    /* Sequences 1000..2000 were handed out once: the next one is 2001. */
    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 2000);
    assert_int_equal(jb_store_verify(f->dir, &r, &err), JB_EUNAVAILABLE);
    uint64_t seq = 0;
    assert_int_equal(jb_store_append(s, 7, "next", 4, &seq, NULL), JB_OK);
    assert_int_equal(seq, 2001);
    assert_int_equal(flush_wait(f, s), 2001);
    gap_state g = {0};
    assert_int_equal(jb_store_read(s, 1, 0, 0, gap_visit, &g, NULL, NULL), JB_OK);
    assert_int_equal(g.n, 1000);
    assert_int_equal(g.last, 2001);
    assert_int_equal(g.jumps, 1);
    /* A read from inside the gap starts at the next record. */
    memset(&g, 0, sizeof(g));
    assert_int_equal(jb_store_read(s, 1500, 0, 0, gap_visit, &g, NULL, NULL), JB_OK);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.last, 2001);
    close_wait(f, s);

    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 2001);
    close_wait(f, s);
    assert_int_equal(jb_store_verify(f->dir, &r, &err), JB_OK);
    assert_false(r.damaged);
    assert_int_equal(r.n_problems, 0);
    assert_int_equal(r.high_water, 2000);
    assert_int_equal(r.next_seq, 2002);
    jb_store_report_release(&r);
}

static void test_repair_older_segment(void **state)
{
    /* Damage in two older segments: verify lists both, repair cuts at the first. */
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 1024;
    jb_store *s = open_ok(f, &o);
    append_n(s, 100, 0);
    close_wait(f, s);
    char names[64][32], p2[128], p4[128];
    size_t n = count_segments(f->dir, names, 64);
    assert_true(n > 5);
    qsort(names, n, sizeof(names[0]), cmp_name);
    snprintf(p2, sizeof(p2), "%s/%.31s", f->dir, names[1]);
    snprintf(p4, sizeof(p4), "%s/%.31s", f->dir, names[3]);
    uint64_t first2 = strtoull(names[1], NULL, 10);
    /* The third record of the second segment, the first of the fourth. */
    off_t bad = JB__SEG_HEADER_BYTES;
    for (uint64_t q = first2; q < first2 + 2; q++) {
        char buf[64];
        size_t len;
        payload_of(q, buf, &len);
        bad += (off_t)(JB__REC_HEADER_BYTES + len);
    }
    flip_byte(p2, bad + JB__REC_HEADER_BYTES + 1);
    flip_byte(p4, JB__SEG_HEADER_BYTES + JB__REC_HEADER_BYTES + 1);

    jb_store_report r;
    jb_error err = {0};
    assert_int_equal(jb_store_verify(f->dir, &r, &err), JB_OK);
    assert_true(r.damaged);
    assert_int_equal(r.n_problems, 2);
    assert_string_equal(r.problems[0].file, names[1]);
    assert_int_equal(r.problems[0].offset, bad);
    assert_int_equal(r.problems[0].seq_before, first2 + 1);
    assert_int_equal(r.problems[0].seq_after, first2 + 3);
    assert_string_equal(r.problems[1].file, names[3]);
    assert_int_equal(r.records, 98);
    assert_int_equal(r.dropped_first, first2 + 2);
    assert_int_equal(r.dropped_last, 100);
    /* Everything from the first damage on, less the two damaged records. */
    assert_int_equal(r.dropped, 100 - (first2 + 2) + 1 - 2);
    jb_store_report_release(&r);

    assert_int_equal(jb_store_repair(f->dir, &r, &err), JB_OK);
    assert_true(r.repaired);
    assert_int_equal(r.next_seq, 101);
    jb_store_report_release(&r);
    assert_int_equal(count_segments(f->dir, NULL, 0), 2);
    assert_int_equal(file_size(p2), bad);

    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 100);
    count_state c = {0};
    assert_int_equal(jb_store_read(s, 1, 0, 0, count_visit, &c, NULL, NULL), JB_OK);
    assert_int_equal(c.n, first2 + 1);
    uint64_t seq = 0;
    assert_int_equal(jb_store_append(s, 0, "x", 1, &seq, NULL), JB_OK);
    assert_int_equal(seq, 101);
    close_wait(f, s);
}

static void test_damaged_header_with_records_after(void **state)
{
    /* A bad newest-segment header with valid records behind it is damage too. */
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    char path[128];
    snprintf(path, sizeof(path), "%s/00000000000000000001.seg", f->dir);
    jb_store *s = open_ok(f, &o);
    append_n(s, 50, 0);
    close_wait(f, s);
    flip_byte(path, 9);
    jb_store *no = NULL;
    jb_error err = {0};
    assert_int_equal(jb_store_open(&f->loop, &o, &no, &err), JB_ECORRUPT);
    assert_non_null(strstr(err.message, "offset 0"));
    assert_non_null(strstr(err.message, "before sequence 1"));
    assert_int_equal(file_size(path), record_offset(51));
}

static void test_front_gap_is_not_damage(void **state)
{
    /* Retention deletes oldest first; a crash half-way leaves the oldest gone. */
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 1024;
    jb_store *s = open_ok(f, &o);
    append_n(s, 200, 0);
    close_wait(f, s);
    char names[64][32];
    size_t n = count_segments(f->dir, names, 64);
    assert_true(n > 5);
    qsort(names, n, sizeof(names[0]), cmp_name);
    for (int i = 0; i < 2; i++) {
        char p[128];
        snprintf(p, sizeof(p), "%s/%.31s", f->dir, names[i]);
        assert_int_equal(unlink(p), 0);
    }
    uint64_t third = strtoull(names[2], NULL, 10);
    s = open_ok(f, &o);
    assert_int_equal(jb_store_first_seq(s), third);
    assert_int_equal(check_all(s, third, 0), 201 - third);
    close_wait(f, s);
    assert_string_equal(f->warnings, "");
    jb_store_report r;
    assert_int_equal(jb_store_verify(f->dir, &r, NULL), JB_OK);
    assert_false(r.damaged);
    assert_int_equal(r.n_problems, 0);
    assert_int_equal(r.first_seq, third);
    assert_int_equal(r.next_seq, 201);
    jb_store_report_release(&r);
}

static void test_corrupt_older_segment(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 1024;
    jb_store *s = open_ok(f, &o);
    append_n(s, 100, 0);
    close_wait(f, s);
    char names[64][32];
    size_t nseg = count_segments(f->dir, names, 64);
    assert_true(nseg > 3);

    char path[128];
    snprintf(path, sizeof(path), "%s/00000000000000000001.seg", f->dir);
    off_t before = file_size(path);
    flip_byte(path, record_offset(3) + JB__REC_HEADER_BYTES + 1);

    jb_store *bad = NULL;
    jb_error err = {0};
    assert_int_equal(jb_store_open(&f->loop, &o, &bad, &err), JB_ECORRUPT);
    assert_null(bad);
    assert_non_null(strstr(err.message, "00000000000000000001.seg"));
    char want[64];
    snprintf(want, sizeof(want), "offset %lld", (long long)record_offset(3));
    assert_non_null(strstr(err.message, want));
    assert_non_null(strstr(err.message, "older"));
    /* Nothing was changed on disk. */
    assert_int_equal(file_size(path), before);
    assert_int_equal(count_segments(f->dir, NULL, 0), nseg);

    /* A missing segment in the middle is a gap, also refused. */
    flip_byte(path, record_offset(3) + JB__REC_HEADER_BYTES + 1);
    char second[128];
    qsort(names, nseg, sizeof(names[0]), cmp_name);
    snprintf(second, sizeof(second), "%s/%s", f->dir, names[1]);
    assert_int_equal(unlink(second), 0);
    assert_int_equal(jb_store_open(&f->loop, &o, &bad, &err), JB_ECORRUPT);
    assert_non_null(strstr(err.message, "missing"));
    jb_store_report r;
    assert_int_equal(jb_store_verify(f->dir, &r, &err), JB_OK);
    assert_true(r.damaged);
    assert_int_equal(r.n_problems, 1);
    assert_string_equal(r.problems[0].file, names[2]);
    assert_int_equal(r.problems[0].offset, 0);
    assert_non_null(strstr(r.problems[0].what, "missing"));
    jb_store_report_release(&r);
}

/* ---- segments and retention -------------------------------------------- */

static void test_segment_rollover(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 1024;
    jb_store *s = open_ok(f, &o);
    /* Roll inside one buffer, and across flushes. */
    append_n(s, 150, 0);
    assert_int_equal(flush_wait(f, s), 150);
    append_n(s, 150, 0);
    assert_int_equal(check_all(s, 1, 0), 300);
    assert_int_equal(flush_wait(f, s), 300);

    jb_store_stats st;
    jb_store_get_stats(s, &st);
    char names[128][32];
    size_t n = count_segments(f->dir, names, 128);
    assert_int_equal(st.segments, n);
    assert_true(n >= 10);
    qsort(names, n, sizeof(names[0]), cmp_name);
    assert_string_equal(names[0], "00000000000000000001.seg");
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s/%s", f->dir, names[i]);
        off_t sz = file_size(path);
        /* A segment passes the limit only when one record alone does. */
        assert_true(sz <= 1024);
        total += (uint64_t)sz;
    }
    assert_int_equal(st.bytes, total);
    close_wait(f, s);

    s = open_ok(f, &o);
    assert_int_equal(check_all(s, 1, 0), 300);
    assert_int_equal(check_all(s, 123, 0), 178);
    close_wait(f, s);
}

static void test_retention_by_size(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 1024;
    o.retention_max_bytes = 3000;
    jb_store *s = open_ok(f, &o);
    append_n(s, 200, 0);
    assert_int_equal(flush_wait(f, s), 200);
    jb_store_stats st;
    jb_store_get_stats(s, &st);
    /* No floor set yet: nothing goes. */
    assert_int_equal(jb_store_first_seq(s), 1);
    assert_true(st.bytes > 3000);

    size_t deleted = 0;
    jb_store_set_min_needed(s, 40);
    assert_int_equal(jb_store_retain(s, 0, &deleted, NULL), JB_OK);
    assert_true(deleted > 0);
    assert_true(jb_store_first_seq(s) <= 40);
    assert_true(jb_store_first_seq(s) > 1);
    assert_int_equal(check_all(s, jb_store_first_seq(s), 0), 201 - jb_store_first_seq(s));
    jb_error err = {0};
    count_state c = {0};
    assert_int_equal(jb_store_read(s, 1, 0, 0, count_visit, &c, NULL, &err), JB_ENOENT);

    jb_store_set_min_needed(s, UINT64_MAX);
    assert_int_equal(jb_store_retain(s, 0, &deleted, NULL), JB_OK);
    jb_store_get_stats(s, &st);
    assert_true(st.bytes <= 3000);
    assert_true(st.segments >= 2);
    assert_int_equal(jb_store_last_seq(s), 200);
    close_wait(f, s);
    /* The files are gone too, once the writer has run. */
    assert_int_equal(count_segments(f->dir, NULL, 0), st.segments);

    s = open_ok(f, &o);
    assert_int_equal(jb_store_last_seq(s), 200);
    assert_int_equal(check_all(s, jb_store_first_seq(s), 0), 201 - jb_store_first_seq(s));
    close_wait(f, s);
}

static void test_retention_by_age(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 1024;
    o.retention_max_age_ms = 1000;
    jb_store *s = open_ok(f, &o);
    /* Timestamps 10001..10100, then 50001..50100. */
    append_n(s, 100, 10000);
    append_n(s, 100, 49900);
    assert_int_equal(flush_wait(f, s), 200);
    jb_store_set_min_needed(s, UINT64_MAX);
    size_t deleted = 0;
    /* At 11000 even the oldest record (10001) is younger than 1000 ms. */
    assert_int_equal(jb_store_retain(s, 11000, &deleted, NULL), JB_OK);
    assert_int_equal(deleted, 0);
    assert_int_equal(jb_store_first_seq(s), 1);

    /* At 12000 segments with only old records go, not one holding a new one. */
    jb_store_set_min_needed(s, 50);
    assert_int_equal(jb_store_retain(s, 12000, &deleted, NULL), JB_OK);
    assert_true(deleted > 0);
    assert_true(jb_store_first_seq(s) <= 50);
    jb_store_set_min_needed(s, UINT64_MAX);
    assert_int_equal(jb_store_retain(s, 12000, &deleted, NULL), JB_OK);
    assert_true(jb_store_first_seq(s) > 50);
    assert_true(jb_store_first_seq(s) <= 101);
    uint64_t seq = 0;
    assert_int_equal(jb_store_seek_time(s, 0, &seq, NULL), JB_OK);
    assert_int_equal(seq, jb_store_first_seq(s));
    close_wait(f, s);
}

/* ---- seek -------------------------------------------------------------- */

static uint64_t brute_seek(jb_store *s, const int64_t *ts, uint64_t n, int64_t t)
{
    for (uint64_t i = jb_store_first_seq(s); i <= n; i++)
        if (ts[i] >= t)
            return i;
    return 0;
}

static void test_seek_time(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.segment_bytes = 4096;
    jb_store *s = open_ok(f, &o);
    enum { N = 1500 };
    static int64_t ts[N + 1];
    for (uint64_t i = 1; i <= N; i++) {
        /* Mostly increasing with jitter, and one early spike. */
        ts[i] = (int64_t)i * 10 + (int64_t)((i * 7919) % 23) - 11;
        if (i == 300)
            ts[i] = 9000;
        assert_int_equal(jb_store_append(s, ts[i], "p", 1, NULL, NULL), JB_OK);
    }
    for (int pass = 0; pass < 3; pass++) {
        for (int64_t t = -5; t <= N * 10 + 30; t += 37) {
            uint64_t want = brute_seek(s, ts, N, t), got = 0;
            jb_status st = jb_store_seek_time(s, t, &got, NULL);
            if (want == 0) {
                assert_int_equal(st, JB_ENOENT);
            } else {
                assert_int_equal(st, JB_OK);
                assert_int_equal(got, want);
            }
        }
        /* Pass 0 reads buffers, pass 1 the disk, pass 2 after a reopen. */
        if (pass == 0) {
            flush_wait(f, s);
        } else if (pass == 1) {
            close_wait(f, s);
            s = open_ok(f, &o);
        }
    }
    close_wait(f, s);
}

/* ---- durability policies, backpressure, coalescing --------------------- */

static void test_fsync_policies(void **state)
{
    fixture *f = *state;
    jb_store_fsync policies[] = {JB_STORE_FSYNC_ALWAYS, JB_STORE_FSYNC_BATCH, JB_STORE_FSYNC_NONE};
    for (int i = 0; i < 3; i++) {
        remove_dir(f->dir);
        jb_store_options o = disk_opts(f);
        o.fsync = policies[i];
        jb_store *s = open_ok(f, &o);
        append_n(s, 100, 0);
        assert_int_equal(flush_wait(f, s), 100);
        jb_store_stats st;
        jb_store_get_stats(s, &st);
        if (policies[i] == JB_STORE_FSYNC_NONE)
            assert_int_equal(st.fsyncs, 0);
        else
            assert_true(st.fsyncs >= 1);
        append_n(s, 50, 0);
        assert_int_equal(flush_wait(f, s), 150);
        close_wait(f, s);
        s = open_ok(f, &o);
        assert_int_equal(check_all(s, 1, 0), 150);
        close_wait(f, s);
    }
    jb_store_fsync p;
    assert_int_equal(jb_store_fsync_parse("none", &p, NULL), JB_OK);
    assert_int_equal(p, JB_STORE_FSYNC_NONE);
    assert_int_equal(jb_store_fsync_parse("always", &p, NULL), JB_OK);
    assert_int_equal(p, JB_STORE_FSYNC_ALWAYS);
    assert_int_equal(jb_store_fsync_parse("sometimes", &p, NULL), JB_EINVAL);
}

static void test_backpressure(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    o.max_unflushed_bytes = 4096;
    jb_store *s = open_ok(f, &o);
    jb__store_set_write_delay(s, 100);
    char big[5000] = {0};
    jb_error err = {0};
    assert_int_equal(jb_store_append(s, 0, big, sizeof(big), NULL, &err), JB_ETOOBIG);

    append_n(s, 20, 0);
    flush_rec r = {0};
    assert_int_equal(jb_store_flush(s, on_flush, &r), JB_OK);
    /* The writer sleeps with 20 records in flight; fill the other buffer. */
    jb_status st = JB_OK;
    uint64_t appended = 20;
    while (st == JB_OK && appended < 1000) {
        st = jb_store_append(s, 0, big, 100, NULL, &err);
        appended += st == JB_OK;
    }
    assert_int_equal(st, JB_EBACKPRESSURE);
    assert_non_null(strstr(err.message, "behind"));
    assert_int_equal(jb_store_last_seq(s), appended);
    jb_store_stats stats;
    jb_store_get_stats(s, &stats);
    assert_true(stats.buffered <= 4096);

    while (r.called == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(r.durable, 20);
    assert_int_equal(flush_wait(f, s), appended);
    assert_int_equal(jb_store_append(s, 0, big, 100, NULL, &err), JB_OK);
    close_wait(f, s);
}

static void test_flush_coalescing(void **state)
{
    fixture *f = *state;
    jb_store_options o = disk_opts(f);
    jb_store *s = open_ok(f, &o);
    jb__store_set_write_delay(s, 30);
    flush_rec r[6] = {{0}};
    flush_order_counter = 0;
    append_n(s, 10, 0);
    assert_int_equal(jb_store_flush(s, on_flush, &r[0]), JB_OK);
    for (int i = 1; i < 5; i++) {
        append_n(s, 10, 0);
        assert_int_equal(jb_store_flush(s, on_flush, &r[i]), JB_OK);
    }
    assert_int_equal(jb_store_flush(s, on_flush, &r[5]), JB_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(r[i].called, 0);
    while (r[5].called == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(r[i].called, 1);
        assert_int_equal(r[i].status, JB_OK);
        assert_int_equal(r[i].order, i + 1);
        assert_true(r[i].durable >= (uint64_t)(i < 5 ? 10 * (i + 1) : 50));
    }
    assert_int_equal(r[0].durable, 10);
    assert_int_equal(r[4].durable, 50);
    jb_store_stats st;
    jb_store_get_stats(s, &st);
    /* The first request's job, then one job for the other five. */
    assert_int_equal(st.writes, 2);
    assert_int_equal(st.fsyncs, 2);

    /* A flush with nothing new completes on a later loop turn. */
    assert_int_equal(flush_wait(f, s), 50);

    /* Close with requests pending: they complete before the close callback. */
    flush_rec last = {0};
    append_n(s, 5, 0);
    assert_int_equal(jb_store_flush(s, on_flush, &last), JB_OK);
    int done = 0;
    assert_int_equal(jb_store_close(s, on_closed, &done), JB_OK);
    assert_int_equal(jb_store_append(s, 0, "x", 1, NULL, NULL), JB_ECLOSED);
    assert_int_equal(jb_store_flush(s, on_flush, &last), JB_ECLOSED);
    assert_int_equal(jb_store_close(s, on_closed, &done), JB_ECLOSED);
    while (!done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(last.called, 1);
    assert_int_equal(last.durable, 55);
}

/* ---- crashes that lose the page cache ----------------------------------- */

/*
 * Under load (appends, flushes, background writes, segment rolls, retention)
 * the file system of faultfs.c crashes at a random call; everything not yet
 * synced is forgotten, the store is reopened, and every sequence a flush
 * callback reported durable must be there with its payload (above the
 * retention floor the test set), and no acknowledged sequence is handed out
 * again.
 */
#define CRASH_ROUNDS 40

typedef struct crash_load {
    fixture *f;
    jb_store *s;
    faultfs *fs;
    uv_timer_t timer;
    uint64_t rnd;
    unsigned epoch;
    unsigned *epoch_of; /* epoch_of[seq]: the round that appended it last */
    size_t epoch_cap;
    uint64_t acked;     /* highest sequence a flush callback reported durable */
    uint64_t floor_max; /* highest retention floor ever set */
    uint64_t acked_events, lost, reused, crashes, repairs;
    jb_store_fsync policy;
    int pending, stopped;
} crash_load;

typedef struct crash_flush {
    crash_load *l;
} crash_flush;

static uint64_t crash_rand(crash_load *l)
{
    l->rnd = l->rnd * 6364136223846793005ull + 1442695040888963407ull;
    return l->rnd >> 33;
}

static size_t crash_payload(uint64_t seq, unsigned epoch, char *buf)
{
    int n = snprintf(buf, 96, "round %u seq %llu ", epoch, (unsigned long long)seq);
    size_t len = (size_t)n + (size_t)(seq * 7 % 40);
    memset(buf + n, 'a' + (int)(seq % 26), len - (size_t)n);
    return len;
}

static void on_crash_flush(jb_status status, uint64_t durable, const jb_error *err, void *ud)
{
    crash_load *l = ud;
    l->pending--;
    /* A callback after the crash proves nothing: the machine is gone. */
    if (status == JB_OK && !faultfs_crashed(l->fs) && durable > l->acked) {
        l->acked_events += durable - l->acked;
        l->acked = durable;
    }
}

static void crash_append(crash_load *l)
{
    char buf[96];
    uint64_t seq = jb_store_last_seq(l->s) + 1;
    size_t len = crash_payload(seq, l->epoch, buf);
    if (jb_store_append(l->s, (int64_t)seq, buf, len, NULL, NULL) != JB_OK)
        return;
    if (seq >= l->epoch_cap) {
        size_t cap = l->epoch_cap ? l->epoch_cap * 2 : 4096;
        while (cap <= seq)
            cap *= 2;
        l->epoch_of = realloc(l->epoch_of, cap * sizeof(unsigned));
        assert_non_null(l->epoch_of);
        memset(l->epoch_of + l->epoch_cap, 0, (cap - l->epoch_cap) * sizeof(unsigned));
        l->epoch_cap = cap;
    }
    l->reused += seq <= l->acked;
    l->epoch_of[seq] = l->epoch;
}

static void crash_tick(uv_timer_t *t)
{
    crash_load *l = t->data;
    if (faultfs_crashed(l->fs)) {
        uv_timer_stop(t);
        l->stopped = 1;
        return;
    }
    for (uint64_t k = 1 + crash_rand(l) % 8; k > 0; k--)
        crash_append(l);
    if (crash_rand(l) % 2 == 0 && l->pending < 4 &&
        jb_store_flush(l->s, on_crash_flush, l) == JB_OK)
        l->pending++;
    if (crash_rand(l) % 32 == 0 && l->acked > 300) {
        jb_store_set_min_needed(l->s, l->acked - 300);
        if (l->acked - 300 > l->floor_max)
            l->floor_max = l->acked - 300;
    }
}

typedef struct crash_check {
    crash_load *l;
    uint64_t good;
} crash_check;

static int crash_check_visit(const jb_store_record *rec, void *userdata)
{
    crash_check *c = userdata;
    char buf[96];
    if (rec->seq > c->l->acked)
        return 1;
    size_t len = crash_payload(rec->seq, c->l->epoch_of[rec->seq], buf);
    c->good += rec->len == len && memcmp(rec->payload, buf, len) == 0;
    return 0;
}

/* Counts the acknowledged sequences (above the floor) missing after a reopen. */
static void crash_check_all(crash_load *l)
{
    uint64_t lo = l->floor_max > 1 ? l->floor_max : 1;
    if (lo > l->acked)
        return;
    crash_check c = {l, 0};
    uint64_t from = jb_store_first_seq(l->s) > lo ? jb_store_first_seq(l->s) : lo;
    jb_error err = {0};
    jb_status st = jb_store_read(l->s, from, 0, 0, crash_check_visit, &c, NULL, &err);
    if (st != JB_OK)
        fail_msg("read after a crash: %s", err.message);
    uint64_t lost = l->acked - lo + 1 - c.good;
    l->lost += lost;
    /* Counted once: what is lost stays lost, the next round starts from what survived. */
    if (lost > 0)
        l->acked = jb_store_last_seq(l->s);
}

static void crash_store_closed(jb_status status, void *userdata)
{
    *(int *)userdata = 1;
}

/* One round: open (a crash may come during recovery), check, load until the crash. */
static void crash_round(crash_load *l, const jb_store_options *o)
{
    l->fs = faultfs_new(l->f->dir);
    assert_non_null(l->fs);
    faultfs_crash_after(l->fs, 1 + (unsigned)(crash_rand(l) % 150));
    jb_error err = {0};
    jb_status st = jb__store_open_with(&l->f->loop, o, faultfs_ops(l->fs), &l->s, &err);
    if (st == JB_ECORRUPT && l->policy == JB_STORE_FSYNC_NONE) {
        /* Without fsync a power loss can damage the log; the way out is a repair. */
        jb_store_report r;
        assert_int_equal(jb_store_repair(l->f->dir, &r, &err), JB_OK);
        assert_true(r.repaired);
        jb_store_report_release(&r);
        l->repairs++;
        st = jb__store_open_with(&l->f->loop, o, faultfs_ops(l->fs), &l->s, &err);
    }
    if (st != JB_OK && !faultfs_crashed(l->fs))
        fail_msg("open after a crash: %s: %s", jb_status_name(st), err.message);
    if (st == JB_OK) {
        crash_check_all(l);
        l->epoch++;
        l->stopped = 0;
        uv_timer_start(&l->timer, crash_tick, 0, 1);
        while (!l->stopped)
            uv_run(&l->f->loop, UV_RUN_ONCE);
        int closed = 0;
        assert_int_equal(jb_store_close(l->s, crash_store_closed, &closed), JB_OK);
        while (!closed)
            uv_run(&l->f->loop, UV_RUN_ONCE);
        assert_int_equal(l->pending, 0);
    }
    l->crashes++;
    faultfs_restore(l->fs, crash_rand(l) % 2 ? crash_rand(l) | 1 : 0);
    faultfs_free(l->fs);
    l->fs = NULL;
}

static void crash_run(fixture *f, jb_store_fsync policy, crash_load *l)
{
    remove_dir(f->dir);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    *l = (crash_load){.f = f, .rnd = 0x9e3779b97f4a7c15ull + (uint64_t)policy, .policy = policy};
    jb_store_options o = disk_opts(f);
    o.fsync = policy;
    o.segment_bytes = 2048;
    o.write_trigger_bytes = 1024;
    o.retention_max_bytes = 8192;
    uv_timer_init(&f->loop, &l->timer);
    l->timer.data = l;
    for (int i = 0; i < CRASH_ROUNDS; i++)
        crash_round(l, &o);
    /* The last word: a clean open that finds every acknowledged event. */
    l->s = open_ok(f, &o);
    crash_check_all(l);
    close_wait(f, l->s);
    uv_close((uv_handle_t *)&l->timer, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    free(l->epoch_of);
    print_message("fsync %s: crashes=%llu acked=%llu lost=%llu reused=%llu repairs=%llu\n",
                  policy == JB_STORE_FSYNC_BATCH    ? "batch"
                  : policy == JB_STORE_FSYNC_ALWAYS ? "always"
                                                    : "none",
                  (unsigned long long)l->crashes, (unsigned long long)l->acked_events,
                  (unsigned long long)l->lost, (unsigned long long)l->reused,
                  (unsigned long long)l->repairs);
    f->warnings[0] = '\0';
}

static void test_crash_loses_page_cache(void **state)
{
    fixture *f = *state;
    crash_load l;
    crash_run(f, JB_STORE_FSYNC_BATCH, &l);
    assert_true(l.acked_events > 1000);
    assert_int_equal(l.lost, 0);
    assert_int_equal(l.reused, 0);
    crash_run(f, JB_STORE_FSYNC_ALWAYS, &l);
    assert_true(l.acked_events > 1000);
    assert_int_equal(l.lost, 0);
    assert_int_equal(l.reused, 0);
    /* Without fsync an acknowledgement means the page cache: the crash takes it. */
    crash_run(f, JB_STORE_FSYNC_NONE, &l);
    assert_true(l.lost > 0);
}

/* ---- in-memory mode ---------------------------------------------------- */

static void test_memory_mode(void **state)
{
    fixture *f = *state;
    jb_store_options o = {0};
    o.segment_bytes = 1024;
    o.retention_max_bytes = 4000;
    jb_store *s = open_ok(f, &o);
    append_n(s, 300, 7);
    assert_int_equal(jb_store_durable_seq(s), 300);
    assert_int_equal(check_all(s, 1, 7), 300);
    assert_int_equal(flush_wait(f, s), 300);
    uint64_t seq = 0;
    assert_int_equal(jb_store_seek_time(s, 7 + 150, &seq, NULL), JB_OK);
    assert_int_equal(seq, 150);

    jb_store_set_min_needed(s, UINT64_MAX);
    size_t deleted = 0;
    assert_int_equal(jb_store_retain(s, 0, &deleted, NULL), JB_OK);
    assert_true(deleted > 0);
    jb_store_stats st;
    jb_store_get_stats(s, &st);
    assert_true(st.bytes <= 4000);
    assert_int_equal(check_all(s, jb_store_first_seq(s), 7), 301 - jb_store_first_seq(s));
    assert_int_equal(count_segments(f->dir, NULL, 0), 0);
    close_wait(f, s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vectors),
        cmocka_unit_test_setup_teardown(test_append_flush_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte_in_last_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_older_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damage_refuses_then_repair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repair_older_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_header_with_records_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_front_gap_is_not_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_segment_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_by_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seek_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_policies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_coalescing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_loses_page_cache, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
