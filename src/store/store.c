/*
 * The durable log (include/jimbot/store.h): segments, CRCs, group commit,
 * recovery, reads and retention.
 *
 * On disk
 * -------
 * A data directory holds segment files named after the first sequence they
 * hold, zero-padded to 20 digits so that names sort as numbers:
 *
 *   00000000000000000001.seg  00000000000000524289.seg  ...
 *
 * All integers are little-endian. A segment starts with a 32-byte header:
 *
 *   0  magic "JBLOGSEG"      8  u32 version (1)     12  u32 header size (32)
 *   16 u64 first sequence    24 u32 flags (0)       28  u32 CRC32C of bytes 0..27
 *
 * then records, back to back, each a 24-byte header and the payload:
 *
 *   0  u32 CRC32C of bytes 4..(24+length)   4  u32 payload length
 *   8  u64 sequence                          16 i64 timestamp (ms)     24 payload
 *
 * A segment's records are first, first+1, ..., and the next segment starts
 * where the previous one ends, or above the high-water mark: the file
 * "high-water" (magic "JBLOGHWM", u64 sequence, CRC32C of bytes 0..15), the
 * highest sequence ever dropped by a repair or a truncation that may have
 * held a durable record. No sequence at or below it is handed out again.
 * Only the newest segment is ever written; the others are sealed (fsync'd
 * before the next one is created, under the batch and always policies). The
 * directory is fsync'd when a segment is created and after each deletion, so
 * a crash in retention only ever leaves the oldest segments gone.
 *
 * Recovery (at open) scans every segment in order and checks every CRC. At a
 * bad record (short header, impossible length, record past the end of the
 * file, CRC mismatch) it looks further for any valid record (resync: a
 * header whose sequence fits and whose CRC matches). In the newest segment
 * with nothing valid after it, the bad bytes are a torn write: truncated,
 * with a warning naming the file and the offset (the mark is raised first
 * when a whole, correctly numbered record is among them). Anything else,
 * damage followed by valid records, damage in an older segment, a gap not
 * covered by the mark, a record whose CRC is right but whose sequence is
 * wrong, is refused with JB_ECORRUPT, naming the file, the offset and the
 * sequences around it, before anything is changed. jb_store_verify() walks
 * the same way past every problem; jb_store_repair() cuts at the first one.
 *
 * Every change to a file goes through a jb__store_fileops table (the system
 * calls, or a test's file system that forgets what was not synced).
 *
 * In memory
 * ---------
 * The loop thread owns everything here; there are no locks. Appends encode
 * the record (CRC included) into the *active* buffer and extend the logical
 * size of the newest segment, whose sparse index (one entry per 64 records
 * or 16 KiB) is therefore always complete. A buffer is a list of chunks, each
 * a byte range bound for one segment at one offset, so a segment roll inside
 * a buffer needs no special path. A write job takes the active buffer (the
 * other one, empty, becomes active, so appends never wait) and runs on
 * libuv's threadpool: it creates the segments the chunks ask for, pwrites
 * the chunks, fdatasyncs when the job is a sync job, unlinks the segments
 * that retention dropped. The job only reads the buffer and the job fields
 * below; its result is applied on the loop in after_write(). One job at a
 * time: flush requests that arrive meanwhile ride the next one.
 *
 * Each segment knows how many of its bytes are on disk ("written"); a read
 * of a record below that uses pread (through a small cache), above it the
 * bytes are found in the in-flight or the active buffer. In memory mode a
 * segment is simply a growing byte array in the same format, and every
 * append is durable at once.
 *
 * This file depends on libuv and the log/status modules only; it must not
 * know what a payload means.
 */
#include "jimbot/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jimbot/log.h"
#include "store/crc32c.h"
#include "store/store_internal.h"

#define DEFAULT_SEGMENT_BYTES (64ull * 1024 * 1024)
#define DEFAULT_MAX_UNFLUSHED ((size_t)64 * 1024 * 1024)
#define DEFAULT_WRITE_TRIGGER ((size_t)1024 * 1024)
#define MIN_SEGMENT_BYTES     256u
#define INDEX_EVERY_RECORDS   64u
#define INDEX_EVERY_BYTES     16384u
#define READ_CHUNK_BYTES      ((size_t)256 * 1024)
#define SCAN_CHUNK_BYTES      ((size_t)1024 * 1024)

typedef struct idx_entry {
    uint64_t seq;
    uint64_t off;
    /* The largest timestamp of every record before this one (INT64_MIN: none). */
    int64_t pmax;
} idx_entry;

typedef struct seg {
    uint64_t first_seq;
    uint64_t count;   /* records appended */
    uint64_t bytes;   /* logical size: header and every appended record */
    uint64_t written; /* bytes on disk; equals bytes in memory mode */
    int64_t max_ts;
    int fd;       /* -1 until the writer has created the file, or in memory mode */
    bool created; /* the file exists or a queued chunk creates it */
    uint8_t *mem; /* memory mode: the whole segment */
    size_t mem_cap;
    idx_entry *idx;
    size_t nidx, idx_cap;
} seg;

typedef struct wchunk {
    seg *seg; /* loop only */
    uint64_t seg_first_seq;
    uint64_t file_off;
    size_t buf_off, len;
    bool create;
    int out_fd; /* set by the writer when it created the file */
} wchunk;

typedef struct wbuf {
    uint8_t *data;
    size_t len, cap;
    wchunk *chunks;
    size_t nchunks, chunk_cap;
    uint64_t last_seq;
} wbuf;

typedef struct waiter {
    struct waiter *next;
    uint64_t target;
    jb_store_flush_cb cb;
    void *userdata;
} waiter;

struct jb_store {
    uv_loop_t *loop;
    jb_store_options opts;
    const jb__store_fileops *fops;
    char *dir;
    bool memory;
    int dirfd;
    uint64_t hwm; /* the persisted high-water mark: no sequence at or below is handed out again */

    seg **segs;
    size_t nsegs, segs_cap;
    uint64_t total_bytes;
    uint64_t next_seq, written_seq, durable_seq;
    int64_t pmax;
    uint64_t min_needed;

    wbuf bufs[2];
    wbuf *active;
    wbuf *inflight; /* the buffer of the running job (or of the failed one) */
    int disk_tail_fd;

    /* The write job: read by the worker, written by the loop between jobs. */
    uv_work_t work;
    bool job_running;
    bool job_sync;
    int job_tail_fd;
    uint64_t *job_unlinks;
    size_t job_n_unlinks;
    unsigned write_delay_ms;
    /* The job's result, written by the worker. */
    int job_errno;
    char job_what[160];
    unsigned job_fsyncs;

    uint64_t *unlinks; /* segments dropped by retention, to unlink */
    size_t n_unlinks, unlinks_cap;

    waiter *whead, *wtail;
    uv_timer_t timer;

    jb_status failed;
    jb_error fail_err;
    bool closing, close_synced, finishing;
    jb_store_close_cb close_cb;
    void *close_userdata;
    int reading;

    uint8_t *rbuf;
    size_t rbuf_cap;
    const seg *rbuf_seg;
    uint64_t rbuf_off;
    size_t rbuf_len;

    jb_store_stats stats;
};

/* ---- little-endian fields ---------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void encode_seg_header(uint8_t *h, uint64_t first_seq)
{
    memcpy(h, JB__SEG_MAGIC, 8);
    put32(h + 8, JB__SEG_VERSION);
    put32(h + 12, JB__SEG_HEADER_BYTES);
    put64(h + 16, first_seq);
    put32(h + 24, 0);
    put32(h + 28, jb__crc32c(0, h, 28));
}

/* Returns NULL when @h is a valid header for @first_seq, else why not. */
static const char *check_seg_header(const uint8_t *h, uint64_t first_seq)
{
    if (memcmp(h, JB__SEG_MAGIC, 8) != 0)
        return "bad magic";
    if (get32(h + 28) != jb__crc32c(0, h, 28))
        return "header checksum mismatch";
    if (get32(h + 8) != JB__SEG_VERSION || get32(h + 12) != JB__SEG_HEADER_BYTES)
        return "unsupported version";
    if (get64(h + 16) != first_seq)
        return "first sequence differs from the file name";
    return NULL;
}

static void encode_record(uint8_t *dst, uint64_t seq, int64_t ts, const void *payload, size_t len)
{
    put32(dst + 4, (uint32_t)len);
    put64(dst + 8, seq);
    put64(dst + 16, (uint64_t)ts);
    if (len > 0)
        memcpy(dst + JB__REC_HEADER_BYTES, payload, len);
    put32(dst, jb__crc32c(0, dst + 4, JB__REC_HEADER_BYTES - 4 + len));
}

static bool record_crc_ok(const uint8_t *rec)
{
    uint32_t len = get32(rec + 4);
    return get32(rec) == jb__crc32c(0, rec + 4, JB__REC_HEADER_BYTES - 4 + (size_t)len);
}

static void seg_name(char out[JB__SEG_NAME_SIZE], uint64_t first_seq)
{
    snprintf(out, JB__SEG_NAME_SIZE, "%020" PRIu64 ".seg", first_seq);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- growable arrays --------------------------------------------------- */

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 8;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (q == NULL)
        return false;
    *p = q;
    *cap = n;
    return true;
}

/* ---- segments and their index ------------------------------------------ */

static bool idx_add(seg *g, uint64_t seq, uint64_t off, int64_t pmax)
{
    if (g->nidx > 0) {
        const idx_entry *last = &g->idx[g->nidx - 1];
        if (seq - last->seq < INDEX_EVERY_RECORDS && off - last->off < INDEX_EVERY_BYTES)
            return true;
    }
    if (!grow((void **)&g->idx, &g->idx_cap, g->nidx + 1, sizeof(idx_entry)))
        return false;
    g->idx[g->nidx++] = (idx_entry){seq, off, pmax};
    return true;
}

static void seg_free(seg *g)
{
    if (g == NULL)
        return;
    if (g->fd >= 0)
        close(g->fd);
    free(g->mem);
    free(g->idx);
    free(g);
}

static seg *seg_new(uint64_t first_seq)
{
    seg *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->first_seq = first_seq;
    g->bytes = JB__SEG_HEADER_BYTES;
    g->max_ts = INT64_MIN;
    g->fd = -1;
    return g;
}

static bool push_seg(jb_store *s, seg *g)
{
    if (!grow((void **)&s->segs, &s->segs_cap, s->nsegs + 1, sizeof(seg *)))
        return false;
    s->segs[s->nsegs++] = g;
    s->total_bytes += g->bytes;
    return true;
}

static seg *tail_seg(const jb_store *s)
{
    return s->segs[s->nsegs - 1];
}

/* Index of the segment holding @seq, which must be stored. */
static size_t find_seg(const jb_store *s, uint64_t seq)
{
    size_t lo = 0, hi = s->nsegs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid]->first_seq <= seq)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* ---- the write job (threadpool) ---------------------------------------- */

/* ---- file operations (the seam a fault-injection test replaces) --------- */

static int sys_create(void *ctx, int dirfd, const char *name)
{
    return openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
}

static ssize_t sys_pwrite(void *ctx, int fd, const void *p, size_t len, off_t off)
{
    return pwrite(fd, p, len, off);
}

static int sys_fdatasync(void *ctx, int fd)
{
    return fdatasync(fd);
}

static int sys_fsync_dir(void *ctx, int dirfd)
{
    return fsync(dirfd);
}

static int sys_ftruncate(void *ctx, int fd, off_t len)
{
    return ftruncate(fd, len);
}

static int sys_unlinkat(void *ctx, int dirfd, const char *name)
{
    return unlinkat(dirfd, name, 0);
}

static int sys_renameat(void *ctx, int dirfd, const char *from, const char *to)
{
    return renameat(dirfd, from, dirfd, to);
}

static const jb__store_fileops sys_fileops = {
    sys_create,    sys_pwrite,   sys_fdatasync, sys_fsync_dir,
    sys_ftruncate, sys_unlinkat, sys_renameat,  NULL,
};

static int f_create(const jb_store *s, const char *name)
{
    return s->fops->create(s->fops->ctx, s->dirfd, name);
}

static bool f_fdatasync(const jb_store *s, int fd)
{
    return s->fops->fdatasync(s->fops->ctx, fd) == 0;
}

static bool f_fsync_dir(const jb_store *s)
{
    return s->fops->fsync_dir(s->fops->ctx, s->dirfd) == 0;
}

static bool f_unlink(const jb_store *s, const char *name)
{
    return s->fops->unlinkat(s->fops->ctx, s->dirfd, name) == 0 || errno == ENOENT;
}

static bool pwrite_all(const jb_store *s, int fd, const uint8_t *p, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = s->fops->pwrite(s->fops->ctx, fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return false;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return true;
}

static bool job_fail(jb_store *s, const char *what, uint64_t first_seq)
{
    s->job_errno = errno ? errno : EIO;
    snprintf(s->job_what, sizeof(s->job_what), "%020" PRIu64 ".seg: %s", first_seq, what);
    return false;
}

static bool job_sync_fd(jb_store *s, int fd, const char *what, uint64_t first_seq)
{
    if (!f_fdatasync(s, fd))
        return job_fail(s, what, first_seq);
    s->job_fsyncs++;
    return true;
}

static bool run_job(jb_store *s)
{
    bool syncing = s->opts.fsync != JB_STORE_FSYNC_NONE;
    int fd = s->job_tail_fd;
    uint64_t fd_first = 0;
    wbuf *b = s->inflight;

    for (size_t i = 0; b != NULL && i < b->nchunks; i++) {
        wchunk *c = &b->chunks[i];
        if (c->create) {
            if (fd >= 0 && syncing &&
                !job_sync_fd(s, fd, "fdatasync of the sealed segment", fd_first))
                return false;
            char name[JB__SEG_NAME_SIZE];
            seg_name(name, c->seg_first_seq);
            fd = f_create(s, name);
            if (fd < 0)
                return job_fail(s, "cannot create", c->seg_first_seq);
            c->out_fd = fd;
            uint8_t h[JB__SEG_HEADER_BYTES];
            encode_seg_header(h, c->seg_first_seq);
            if (!pwrite_all(s, fd, h, sizeof(h), 0))
                return job_fail(s, "cannot write the header", c->seg_first_seq);
            if (syncing) {
                if (!f_fsync_dir(s))
                    return job_fail(s, "fsync of the directory", c->seg_first_seq);
                s->job_fsyncs++;
            }
        }
        fd_first = c->seg_first_seq;
        if (!pwrite_all(s, fd, b->data + c->buf_off, c->len, c->file_off))
            return job_fail(s, "write", c->seg_first_seq);
    }
    if (s->job_sync && fd >= 0 && !job_sync_fd(s, fd, "fdatasync", fd_first))
        return false;

    /*
     * Oldest first, each unlink made durable before the next: whatever a
     * crash keeps, the segments left are contiguous, only the oldest gone.
     */
    for (size_t i = 0; i < s->job_n_unlinks; i++) {
        char name[JB__SEG_NAME_SIZE];
        seg_name(name, s->job_unlinks[i]);
        if (!f_unlink(s, name))
            return job_fail(s, "cannot delete", s->job_unlinks[i]);
        if (syncing) {
            if (!f_fsync_dir(s))
                return job_fail(s, "fsync of the directory", s->job_unlinks[i]);
            s->job_fsyncs++;
        }
    }
    return true;
}

static void write_work(uv_work_t *req)
{
    jb_store *s = req->data;
    if (s->write_delay_ms > 0)
        usleep(s->write_delay_ms * 1000u);
    s->job_errno = 0;
    s->job_fsyncs = 0;
    errno = 0;
    run_job(s);
}

/* ---- the loop side ----------------------------------------------------- */

static void drain_waiters(jb_store *s)
{
    while (s->whead != NULL) {
        waiter *w = s->whead;
        if (s->failed == JB_OK && w->target > s->durable_seq)
            break;
        s->whead = w->next;
        if (s->whead == NULL)
            s->wtail = NULL;
        w->cb(s->failed, s->durable_seq, s->failed ? &s->fail_err : NULL, w->userdata);
        free(w);
    }
}

static void set_failed(jb_store *s, jb_status code, const char *message)
{
    if (s->failed != JB_OK)
        return;
    s->failed = code;
    jb_error_set(&s->fail_err, code, "%s", message);
    jb_log(JB_LOG_ERROR, "store", "the durable log stopped", "dir=%s error=\"%s\"",
           s->dir ? s->dir : "(memory)", s->fail_err.message);
}

static void after_write(uv_work_t *req, int status);
static void finish_close_maybe(jb_store *s);

static void kick(jb_store *s)
{
    if (s->memory || s->job_running || s->failed != JB_OK || s->finishing)
        return;
    wbuf *b = s->active;
    bool waiting = s->wtail != NULL && s->wtail->target > s->durable_seq;
    bool closing_sync = s->closing && !s->close_synced;
    bool want_sync = closing_sync || (s->opts.fsync != JB_STORE_FSYNC_NONE && waiting);
    bool want_write =
        b->len > 0 && (waiting || closing_sync || b->len >= s->opts.write_trigger_bytes);
    if (!want_write && !want_sync && s->n_unlinks == 0)
        return;

    if (want_write) {
        s->inflight = b;
        s->active = (b == &s->bufs[0]) ? &s->bufs[1] : &s->bufs[0];
    } else {
        s->inflight = NULL;
    }
    s->job_sync = want_sync || (want_write && s->opts.fsync == JB_STORE_FSYNC_ALWAYS);
    s->job_tail_fd = s->disk_tail_fd;
    free(s->job_unlinks);
    s->job_unlinks = s->unlinks;
    s->job_n_unlinks = s->n_unlinks;
    s->unlinks = NULL;
    s->n_unlinks = s->unlinks_cap = 0;
    s->work.data = s;
    s->job_running = true;
    int rc = uv_queue_work(s->loop, &s->work, write_work, after_write);
    if (rc != 0)
        JB_BUG("uv_queue_work: %s", uv_strerror(rc));
}

static size_t apply_retention(jb_store *s, int64_t now_ms)
{
    size_t n = 0;
    if (s->reading > 0)
        return 0;
    while (s->nsegs > 1) {
        seg *g = s->segs[0];
        if (!s->memory && (g->written < g->bytes || g->fd < 0 || g->fd == s->disk_tail_fd))
            break;
        if (g->first_seq + g->count > s->min_needed)
            break;
        bool big = s->opts.retention_max_bytes > 0 && s->total_bytes > s->opts.retention_max_bytes;
        bool old = s->opts.retention_max_age_ms > 0 &&
                   (g->count == 0 || g->max_ts < now_ms - s->opts.retention_max_age_ms);
        if (!big && !old)
            break;
        if (!s->memory) {
            if (!grow((void **)&s->unlinks, &s->unlinks_cap, s->n_unlinks + 1, sizeof(uint64_t)))
                break;
            s->unlinks[s->n_unlinks++] = g->first_seq;
        }
        if (s->rbuf_seg == g)
            s->rbuf_seg = NULL;
        s->total_bytes -= g->bytes;
        seg_free(g);
        memmove(s->segs, s->segs + 1, (s->nsegs - 1) * sizeof(seg *));
        s->nsegs--;
        n++;
    }
    s->stats.deleted += n;
    if (n > 0)
        kick(s);
    return n;
}

static void after_write(uv_work_t *req, int status)
{
    jb_store *s = req->data;
    wbuf *b = s->inflight;
    bool ok = status == 0 && s->job_errno == 0;
    s->job_running = false;

    for (size_t i = 0; b != NULL && i < b->nchunks; i++) {
        wchunk *c = &b->chunks[i];
        if (c->out_fd >= 0) {
            c->seg->fd = c->out_fd;
            s->disk_tail_fd = c->out_fd;
        }
        if (ok)
            c->seg->written = c->file_off + c->len;
    }
    s->stats.writes++;
    s->stats.fsyncs += s->job_fsyncs;
    free(s->job_unlinks);
    s->job_unlinks = NULL;
    s->job_n_unlinks = 0;

    if (ok) {
        if (b != NULL) {
            s->written_seq = b->last_seq;
            b->len = 0;
            b->nchunks = 0;
            b->last_seq = 0;
            s->inflight = NULL;
        }
        if (s->job_sync || s->opts.fsync == JB_STORE_FSYNC_NONE)
            s->durable_seq = s->written_seq;
        if (s->closing && s->job_sync && s->active->len == 0)
            s->close_synced = true;
    } else {
        /* The failed buffer stays as inflight so that its records stay readable. */
        char msg[256];
        snprintf(msg, sizeof(msg), "%s/%s: %s", s->dir, s->job_what,
                 strerror(status != 0 ? EIO : s->job_errno));
        set_failed(s, JB_EIO, msg);
    }

    drain_waiters(s);
    if (s->failed == JB_OK && !s->closing)
        apply_retention(s, wall_ms());
    kick(s);
    finish_close_maybe(s);
}

static void on_timer(uv_timer_t *t)
{
    jb_store *s = t->data;
    drain_waiters(s);
    if (s->memory && s->failed == JB_OK && !s->closing)
        apply_retention(s, wall_ms());
    finish_close_maybe(s);
}

static void defer_drain(jb_store *s)
{
    if (!uv_is_active((uv_handle_t *)&s->timer))
        uv_timer_start(&s->timer, on_timer, 0, 0);
}

/* ---- teardown ---------------------------------------------------------- */

static void store_free(jb_store *s)
{
    for (size_t i = 0; i < s->nsegs; i++)
        seg_free(s->segs[i]);
    free(s->segs);
    for (int i = 0; i < 2; i++) {
        free(s->bufs[i].data);
        free(s->bufs[i].chunks);
    }
    while (s->whead != NULL) {
        waiter *w = s->whead;
        s->whead = w->next;
        free(w);
    }
    free(s->unlinks);
    free(s->job_unlinks);
    free(s->rbuf);
    if (s->dirfd >= 0)
        close(s->dirfd);
    free(s->dir);
    free(s);
}

static void on_timer_closed(uv_handle_t *h)
{
    jb_store *s = h->data;
    jb_store_close_cb cb = s->close_cb;
    void *userdata = s->close_userdata;
    jb_status status = s->failed;
    store_free(s);
    if (cb != NULL)
        cb(status, userdata);
}

static void finish_close_maybe(jb_store *s)
{
    if (!s->closing || s->finishing || s->job_running)
        return;
    if (s->failed == JB_OK && (!s->close_synced || s->active->len > 0 || s->n_unlinks > 0))
        return;
    s->finishing = true;
    drain_waiters(s);
    if (s->whead != NULL)
        JB_BUG("flush requests left after the final sync");
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

jb_status jb_store_close(jb_store *s, jb_store_close_cb cb, void *userdata)
{
    if (s->closing)
        return JB_ECLOSED;
    s->closing = true;
    s->close_cb = cb;
    s->close_userdata = userdata;
    if (s->memory || s->failed != JB_OK) {
        s->close_synced = true;
        defer_drain(s);
        return JB_OK;
    }
    kick(s);
    if (!s->job_running)
        defer_drain(s);
    return JB_OK;
}

/* ---- recovery ---------------------------------------------------------- */

static bool pread_all(int fd, uint8_t *p, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return false;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return true;
}

/* Makes rbuf hold [off, off+len) of @g's file (len <= what is on disk). */
static jb_status cache_load(jb_store *s, const seg *g, uint64_t off, size_t len, size_t chunk,
                            jb_error *err)
{
    if (s->rbuf_seg == g && off >= s->rbuf_off && off + len <= s->rbuf_off + s->rbuf_len)
        return JB_OK;
    size_t want = len > chunk ? len : chunk;
    if (want > g->written - off)
        want = (size_t)(g->written - off);
    if (!grow((void **)&s->rbuf, &s->rbuf_cap, want, 1))
        return jb_error_set(err, JB_ENOMEM, "out of memory reading a segment");
    s->rbuf_seg = NULL;
    if (!pread_all(g->fd, s->rbuf, want, off)) {
        char name[JB__SEG_NAME_SIZE];
        seg_name(name, g->first_seq);
        return jb_error_set(err, JB_EIO, "%s/%s: read at offset %" PRIu64 ": %s", s->dir, name, off,
                            strerror(errno));
    }
    s->rbuf_seg = g;
    s->rbuf_off = off;
    s->rbuf_len = want;
    return JB_OK;
}

/*
 * Checks the record at @off of @g (whose file holds g->written bytes): *@why
 * is NULL when it is whole and its CRC matches, *@rec then pointing at it
 * (valid until the next cache_load), else says what is wrong.
 */
static jb_status read_record(jb_store *s, const seg *g, uint64_t off, const uint8_t **rec,
                             const char **why, jb_error *err)
{
    *why = NULL;
    if (g->written - off < JB__REC_HEADER_BYTES) {
        *why = "partial record header";
        return JB_OK;
    }
    jb_status st = cache_load(s, g, off, JB__REC_HEADER_BYTES, SCAN_CHUNK_BYTES, err);
    if (st != JB_OK)
        return st;
    uint32_t len = get32(s->rbuf + (off - s->rbuf_off) + 4);
    if (len > JB_STORE_MAX_PAYLOAD) {
        *why = "impossible record length";
        return JB_OK;
    }
    if (g->written - off < JB__REC_HEADER_BYTES + (uint64_t)len) {
        *why = "record runs past the end of the file";
        return JB_OK;
    }
    st = cache_load(s, g, off, JB__REC_HEADER_BYTES + len, SCAN_CHUNK_BYTES, err);
    if (st != JB_OK)
        return st;
    *rec = s->rbuf + (off - s->rbuf_off);
    if (!record_crc_ok(*rec))
        *why = "checksum mismatch";
    return JB_OK;
}

/* The first bad bytes of a segment, and the first valid record after them. */
typedef struct damage {
    const char *why;   /* NULL: the segment is valid to its end */
    uint64_t off;      /* where the bad bytes start */
    uint64_t expected; /* the sequence a record there would have */
    bool misnumbered;  /* a whole record with a matching CRC but the wrong sequence */
    uint64_t next_off; /* the first valid record after them (0: none in the segment) */
    uint64_t next_seq;
} damage;

/*
 * Looks past the bad bytes of *@d for a valid record: whole, with a matching
 * CRC, and numbered as a record there could be (at least the expected
 * sequence, at most one more per record header that fits in between). Finding
 * one means the bad bytes are damage, not a torn write: a crash only tears
 * the end of what was being written.
 */
static jb_status resync(jb_store *s, const seg *g, damage *d, jb_error *err)
{
    for (uint64_t off = d->off + 1; off + JB__REC_HEADER_BYTES <= g->written; off++) {
        jb_status st = cache_load(s, g, off, JB__REC_HEADER_BYTES, SCAN_CHUNK_BYTES, err);
        if (st != JB_OK)
            return st;
        uint64_t seq = get64(s->rbuf + (off - s->rbuf_off) + 8);
        if (seq < d->expected || seq > d->expected + (off - d->off) / JB__REC_HEADER_BYTES)
            continue;
        const uint8_t *rec = NULL;
        const char *why = NULL;
        st = read_record(s, g, off, &rec, &why, err);
        if (st != JB_OK)
            return st;
        if (why == NULL) {
            d->next_off = off;
            d->next_seq = seq;
            break;
        }
    }
    s->rbuf_seg = NULL;
    return JB_OK;
}

/*
 * Reads @g's records from @off on, the first expected to be @expected, and
 * counts and indexes them (g->count, g->idx, timestamps) up to the first bad
 * record, which *@d describes (with the first valid record after it);
 * g->bytes becomes the end of the last good record.
 */
static jb_status scan_from(jb_store *s, seg *g, uint64_t off, uint64_t expected, damage *d,
                           jb_error *err)
{
    *d = (damage){0};
    while (off < g->written) {
        const uint8_t *rec = NULL;
        jb_status st = read_record(s, g, off, &rec, &d->why, err);
        if (st != JB_OK)
            return st;
        if (d->why == NULL && get64(rec + 8) != expected) {
            d->why = "unexpected sequence";
            d->misnumbered = true;
        }
        if (d->why != NULL) {
            d->off = off;
            d->expected = expected;
            break;
        }
        int64_t ts = (int64_t)get64(rec + 16);
        if (!idx_add(g, expected, off, s->pmax))
            return jb_error_set(err, JB_ENOMEM, "out of memory indexing a segment");
        if (ts > s->pmax)
            s->pmax = ts;
        if (ts > g->max_ts)
            g->max_ts = ts;
        g->count++;
        expected++;
        off += JB__REC_HEADER_BYTES + get32(rec + 4);
    }
    g->bytes = off;
    s->rbuf_seg = NULL;
    return d->why != NULL ? resync(s, g, d, err) : JB_OK;
}

/* Checks @g's header, then scans its records; *@d describes the first damage. */
static jb_status scan_segment(jb_store *s, seg *g, damage *d, jb_error *err)
{
    uint8_t h[JB__SEG_HEADER_BYTES];
    const char *why = NULL;
    if (g->written < JB__SEG_HEADER_BYTES)
        why = "partial segment header";
    else if (!pread_all(g->fd, h, sizeof(h), 0))
        why = "cannot read the segment header";
    else
        why = check_seg_header(h, g->first_seq);
    if (why == NULL)
        return scan_from(s, g, JB__SEG_HEADER_BYTES, g->first_seq, d, err);
    *d = (damage){.why = why, .expected = g->first_seq};
    g->bytes = JB__SEG_HEADER_BYTES;
    return resync(s, g, d, err);
}

/*
 * The highest sequence claimed by whole, correctly numbered record headers
 * from the bad record of *@d on (0: none). Their CRC fails, but a record whose
 * bytes are all there may have been durable before they went bad, so its
 * sequence must never be handed out again. A torn write leaves a short
 * record or zeros instead, which claim nothing.
 */
static jb_status tail_claims(jb_store *s, const seg *g, const damage *d, uint64_t *claimed,
                             jb_error *err)
{
    uint64_t off = d->off, seq = d->expected;
    *claimed = 0;
    while (!d->misnumbered && off >= JB__SEG_HEADER_BYTES &&
           g->written - off >= JB__REC_HEADER_BYTES) {
        jb_status st = cache_load(s, g, off, JB__REC_HEADER_BYTES, SCAN_CHUNK_BYTES, err);
        if (st != JB_OK)
            return st;
        const uint8_t *h = s->rbuf + (off - s->rbuf_off);
        uint32_t len = get32(h + 4);
        if (get64(h + 8) != seq || len > JB_STORE_MAX_PAYLOAD ||
            g->written - off - JB__REC_HEADER_BYTES < len)
            break;
        *claimed = seq++;
        off += JB__REC_HEADER_BYTES + len;
    }
    s->rbuf_seg = NULL;
    return JB_OK;
}

/* ---- the high-water mark ------------------------------------------------ */

/* Reads <dir>/high-water into s->hwm (0 when there is none). */
static jb_status hwm_load(jb_store *s, jb_error *err)
{
    uint8_t b[JB__HWM_BYTES + 1];
    int fd = openat(s->dirfd, JB__HWM_NAME, O_RDONLY | O_CLOEXEC);
    s->hwm = 0;
    if (fd < 0 && errno == ENOENT)
        return JB_OK;
    if (fd < 0)
        return jb_error_set(err, JB_EIO, "%s/%s: cannot open: %s", s->dir, JB__HWM_NAME,
                            strerror(errno));
    ssize_t n = pread(fd, b, sizeof(b), 0);
    close(fd);
    if (n != JB__HWM_BYTES || memcmp(b, JB__HWM_MAGIC, 8) != 0 ||
        get32(b + 16) != jb__crc32c(0, b, 16))
        return jb_error_set(err, JB_ECORRUPT,
                            "%s/%s: not a valid high-water mark (%zd bytes); refusing to open, "
                            "since the sequences it protects could be handed out again",
                            s->dir, JB__HWM_NAME, n);
    s->hwm = get64(b + 8);
    return JB_OK;
}

/*
 * Raises the persisted high-water mark to @seq, atomically and durably: a
 * temporary file, fdatasync, rename, directory fsync. Called before the bytes
 * that held sequences up to @seq are dropped.
 */
static jb_status hwm_raise(jb_store *s, uint64_t seq, jb_error *err)
{
    uint8_t b[JB__HWM_BYTES];
    if (seq <= s->hwm)
        return JB_OK;
    memcpy(b, JB__HWM_MAGIC, 8);
    put64(b + 8, seq);
    put32(b + 16, jb__crc32c(0, b, 16));
    int fd = -1;
    bool ok = f_unlink(s, JB__HWM_TMP_NAME) && (fd = f_create(s, JB__HWM_TMP_NAME)) >= 0 &&
              pwrite_all(s, fd, b, sizeof(b), 0) && f_fdatasync(s, fd);
    int e = errno;
    if (fd >= 0)
        close(fd);
    errno = e;
    if (!ok || s->fops->renameat(s->fops->ctx, s->dirfd, JB__HWM_TMP_NAME, JB__HWM_NAME) != 0 ||
        !f_fsync_dir(s))
        return jb_error_set(err, JB_EIO, "%s/%s: cannot write the high-water mark: %s", s->dir,
                            JB__HWM_NAME, strerror(errno));
    jb_log(JB_LOG_WARN, "store", "raised the high-water mark",
           "dir=%s from=%" PRIu64 " to=%" PRIu64, s->dir, s->hwm, seq);
    s->hwm = seq;
    return JB_OK;
}

/* ---- recovery ---------------------------------------------------------- */

static jb_status create_segment_file(jb_store *s, uint64_t first_seq, int *fd_out, jb_error *err)
{
    char name[JB__SEG_NAME_SIZE];
    uint8_t h[JB__SEG_HEADER_BYTES];
    seg_name(name, first_seq);
    int fd = f_create(s, name);
    if (fd < 0)
        return jb_error_set(err, JB_EIO, "%s/%s: cannot create: %s", s->dir, name, strerror(errno));
    encode_seg_header(h, first_seq);
    if (!pwrite_all(s, fd, h, sizeof(h), 0) || !f_fdatasync(s, fd) || !f_fsync_dir(s)) {
        int e = errno;
        close(fd);
        return jb_error_set(err, JB_EIO, "%s/%s: cannot write the header: %s", s->dir, name,
                            strerror(e));
    }
    *fd_out = fd;
    return JB_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists the segment files of the directory, sorted by first sequence. */
static jb_status list_segments(jb_store *s, uint64_t **out, size_t *n_out, jb_error *err)
{
    DIR *d = opendir(s->dir);
    if (d == NULL)
        return jb_error_set(err, JB_EIO, "%s: cannot list: %s", s->dir, strerror(errno));
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        if (strlen(nm) != JB__SEG_NAME_SIZE - 1 || strcmp(nm + 20, ".seg") != 0)
            continue;
        uint64_t first = 0;
        bool digits = true;
        for (int i = 0; i < 20 && digits; i++) {
            digits = nm[i] >= '0' && nm[i] <= '9';
            first = first * 10 + (uint64_t)(nm[i] - '0');
        }
        if (!digits || first == 0)
            continue;
        if (!grow((void **)&v, &cap, n + 1, sizeof(uint64_t))) {
            closedir(d);
            free(v);
            return jb_error_set(err, JB_ENOMEM, "out of memory listing %s", s->dir);
        }
        v[n++] = first;
    }
    closedir(d);
    if (n > 0)
        qsort(v, n, sizeof(uint64_t), cmp_u64);
    *out = v;
    *n_out = n;
    return JB_OK;
}

/* Makes the newest segment end at @off (a torn tail), durably. */
static jb_status truncate_tail(jb_store *s, seg *g, uint64_t off, const char *why, jb_error *err)
{
    char name[JB__SEG_NAME_SIZE];
    seg_name(name, g->first_seq);
    jb_log(JB_LOG_WARN, "store", "truncated a torn tail",
           "file=%s/%s offset=%" PRIu64 " dropped_bytes=%" PRIu64 " reason=\"%s\"", s->dir, name,
           off, g->written - off, why);
    if (off < JB__SEG_HEADER_BYTES) {
        uint8_t h[JB__SEG_HEADER_BYTES];
        encode_seg_header(h, g->first_seq);
        if (s->fops->ftruncate(s->fops->ctx, g->fd, 0) != 0 ||
            !pwrite_all(s, g->fd, h, sizeof(h), 0))
            goto fail;
        off = JB__SEG_HEADER_BYTES;
    } else if (s->fops->ftruncate(s->fops->ctx, g->fd, (off_t)off) != 0) {
        goto fail;
    }
    if (!f_fdatasync(s, g->fd))
        goto fail;
    g->written = g->bytes = off;
    return JB_OK;
fail:
    return jb_error_set(err, JB_EIO, "%s/%s: cannot truncate at %" PRIu64 ": %s", s->dir, name, off,
                        strerror(errno));
}

/* Opens the directory (creating it when @create) and locks it. */
static jb_status open_dir(jb_store *s, bool create, jb_error *err)
{
    if (create && mkdir(s->dir, 0755) != 0 && errno != EEXIST)
        return jb_error_set(err, JB_EIO, "%s: cannot create: %s", s->dir, strerror(errno));
    s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0)
        return jb_error_set(err, errno == ENOENT ? JB_ENOENT : JB_EIO, "%s: cannot open: %s",
                            s->dir, strerror(errno));
    if (flock(s->dirfd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return jb_error_set(err, JB_EUNAVAILABLE, "%s: in use by another open store", s->dir);
        return jb_error_set(err, JB_EIO, "%s: cannot lock: %s", s->dir, strerror(errno));
    }
    return hwm_load(s, err);
}

/* Opens the segment file starting at @first and appends it to the list. */
static jb_status open_segment(jb_store *s, uint64_t first, bool rw, seg **out, jb_error *err)
{
    char name[JB__SEG_NAME_SIZE];
    seg_name(name, first);
    seg *g = seg_new(first);
    if (g == NULL || !push_seg(s, g)) {
        seg_free(g);
        return jb_error_set(err, JB_ENOMEM, "out of memory opening %s", s->dir);
    }
    s->total_bytes -= g->bytes;
    g->created = true;
    g->fd = openat(s->dirfd, name, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    struct stat sb;
    if (g->fd < 0 || fstat(g->fd, &sb) != 0)
        return jb_error_set(err, JB_EIO, "%s/%s: cannot open: %s", s->dir, name, strerror(errno));
    g->written = (uint64_t)sb.st_size;
    *out = g;
    return JB_OK;
}

/* "between sequences 999 and 1001", or the half that exists. */
static void describe_around(char *out, size_t n, uint64_t before, uint64_t after)
{
    if (before > 0 && after > 0)
        snprintf(out, n, "between sequences %" PRIu64 " and %" PRIu64, before, after);
    else if (after > 0)
        snprintf(out, n, "before sequence %" PRIu64, after);
    else if (before > 0)
        snprintf(out, n, "after sequence %" PRIu64, before);
    else
        snprintf(out, n, "with no valid record around it");
}

/* The last valid sequence before the damage *@d of @g, when there is one. */
static uint64_t seq_before(const jb_store *s, const damage *d)
{
    return d->expected > s->segs[0]->first_seq ? d->expected - 1 : 0;
}

static jb_status refuse(jb_store *s, const seg *g, const damage *d, uint64_t after, bool newest,
                        jb_error *err)
{
    char name[JB__SEG_NAME_SIZE], around[96];
    seg_name(name, g->first_seq);
    describe_around(around, sizeof(around), seq_before(s, d), after);
    return jb_error_set(err, JB_ECORRUPT,
                        "%s/%s: offset %" PRIu64 ": %s, %s, in %s segment: damage, not a torn "
                        "write; refusing to open. See `jimbotd --verify`; `jimbotd --repair` "
                        "truncates the log there (dropping sequence %" PRIu64 " and later ones), "
                        "or restore the directory from a copy",
                        s->dir, name, d->off, d->why, around, newest ? "the newest" : "an older",
                        d->expected);
}

/* A segment must start where the previous one ends, or above a repair's gap. */
static jb_status check_gap(jb_store *s, const seg *p, const seg *g, jb_error *err)
{
    uint64_t end = p->first_seq + p->count;
    if (g->first_seq == end || (g->first_seq > end && g->first_seq - 1 <= s->hwm))
        return JB_OK;
    char name[JB__SEG_NAME_SIZE];
    seg_name(name, g->first_seq);
    return jb_error_set(
        err, JB_ECORRUPT,
        "%s/%s: starts at sequence %" PRIu64 " but the segment before it ends at %" PRIu64
        " (a segment is missing or damaged); refusing to open. See `jimbotd --verify`; "
        "`jimbotd --repair` drops this segment and the later ones, or restore the "
        "directory from a copy",
        s->dir, name, g->first_seq, end - 1);
}

/* Truncates the torn tail *@d of the newest segment, first raising the mark. */
static jb_status cut_torn_tail(jb_store *s, seg *g, const damage *d, jb_error *err)
{
    uint64_t claimed = 0;
    jb_status st = tail_claims(s, g, d, &claimed, err);
    if (st == JB_OK)
        st = hwm_raise(s, claimed, err);
    if (st == JB_OK)
        st = truncate_tail(s, g, d->off, d->why, err);
    return st;
}

/* Opens and checks one segment; @next_first is the next segment's first sequence (0: none). */
static jb_status recover_segment(jb_store *s, uint64_t first, uint64_t next_first, jb_error *err)
{
    bool newest = next_first == 0;
    seg *g = NULL;
    damage d = {0};
    jb_status st = open_segment(s, first, newest, &g, err);
    if (st == JB_OK && s->nsegs > 1)
        st = check_gap(s, s->segs[s->nsegs - 2], g, err);
    if (st == JB_OK)
        st = scan_segment(s, g, &d, err);
    if (st == JB_OK && d.why != NULL) {
        if (!newest || d.misnumbered || d.next_off != 0)
            st = refuse(s, g, &d, d.next_off != 0 ? d.next_seq : next_first, newest, err);
        else
            st = cut_torn_tail(s, g, &d, err);
    }
    if (g != NULL)
        s->total_bytes += g->bytes;
    return st;
}

/*
 * Makes the newest segment the one the next append goes to: a new one when
 * the high-water mark says the sequences after the last record were handed
 * out before (a repair or a truncation dropped them), or when there is none.
 */
static jb_status open_tail(jb_store *s, jb_error *err)
{
    uint64_t next = 1;
    if (s->nsegs > 0)
        next = tail_seg(s)->first_seq + tail_seg(s)->count;
    if (s->hwm >= next)
        next = s->hwm + 1;
    if (s->nsegs == 0 || next != tail_seg(s)->first_seq + tail_seg(s)->count) {
        seg *g = seg_new(next);
        if (g == NULL || !push_seg(s, g)) {
            seg_free(g);
            return jb_error_set(err, JB_ENOMEM, "out of memory opening %s", s->dir);
        }
        jb_status st = create_segment_file(s, next, &g->fd, err);
        if (st != JB_OK)
            return st;
        g->created = true;
        g->written = g->bytes;
    }
    seg *t = tail_seg(s);
    s->disk_tail_fd = t->fd;
    s->next_seq = next;
    s->written_seq = s->durable_seq = next - 1;
    return JB_OK;
}

static jb_status recover(jb_store *s, jb_error *err)
{
    uint64_t *firsts = NULL;
    size_t n = 0;
    jb_status st = open_dir(s, true, err);
    if (st == JB_OK)
        st = list_segments(s, &firsts, &n, err);
    for (size_t i = 0; i < n && st == JB_OK; i++)
        st = recover_segment(s, firsts[i], i + 1 < n ? firsts[i + 1] : 0, err);
    free(firsts);
    return st == JB_OK ? open_tail(s, err) : st;
}

/* ---- open -------------------------------------------------------------- */

jb_status jb_store_fsync_parse(const char *name, jb_store_fsync *out, jb_error *err)
{
    static const char *const names[] = {"batch", "always", "none"};
    for (int i = 0; i < 3; i++) {
        if (name != NULL && strcmp(name, names[i]) == 0) {
            *out = (jb_store_fsync)i;
            return JB_OK;
        }
    }
    return jb_error_set(err, JB_EINVAL, "fsync policy '%s': expected always, batch or none",
                        name ? name : "(null)");
}

jb_status jb_store_open(uv_loop_t *loop, const jb_store_options *opts, jb_store **out,
                        jb_error *err)
{
    return jb__store_open_with(loop, opts, NULL, out, err);
}

jb_status jb__store_open_with(uv_loop_t *loop, const jb_store_options *opts,
                              const jb__store_fileops *ops, jb_store **out, jb_error *err)
{
    if (loop == NULL || opts == NULL || out == NULL)
        return jb_error_set(err, JB_EINVAL, "jb_store_open: loop, options and out are required");
    if (opts->fsync != JB_STORE_FSYNC_BATCH && opts->fsync != JB_STORE_FSYNC_ALWAYS &&
        opts->fsync != JB_STORE_FSYNC_NONE)
        return jb_error_set(err, JB_EINVAL, "unknown fsync policy %d", (int)opts->fsync);
    if (opts->segment_bytes != 0 && opts->segment_bytes < MIN_SEGMENT_BYTES)
        return jb_error_set(err, JB_EINVAL, "segment size %" PRIu64 " is below the minimum %u",
                            opts->segment_bytes, MIN_SEGMENT_BYTES);
    if (opts->retention_max_age_ms < 0)
        return jb_error_set(err, JB_EINVAL, "negative retention age");

    jb_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    s->loop = loop;
    s->fops = ops != NULL ? ops : &sys_fileops;
    s->opts = *opts;
    s->opts.dir = NULL;
    if (s->opts.segment_bytes == 0)
        s->opts.segment_bytes = DEFAULT_SEGMENT_BYTES;
    if (s->opts.max_unflushed_bytes == 0)
        s->opts.max_unflushed_bytes = DEFAULT_MAX_UNFLUSHED;
    if (s->opts.write_trigger_bytes == 0)
        s->opts.write_trigger_bytes = DEFAULT_WRITE_TRIGGER;
    s->dirfd = -1;
    s->disk_tail_fd = -1;
    s->pmax = INT64_MIN;
    s->next_seq = 1;
    s->active = &s->bufs[0];
    s->memory = opts->dir == NULL;

    jb_status st = JB_OK;
    if (s->memory) {
        seg *g = seg_new(1);
        if (g == NULL || !push_seg(s, g) || (g->mem = malloc(JB__SEG_HEADER_BYTES)) == NULL) {
            if (s->nsegs == 0)
                seg_free(g);
            st = jb_error_set(err, JB_ENOMEM, "out of memory");
        } else {
            g->mem_cap = JB__SEG_HEADER_BYTES;
            encode_seg_header(g->mem, 1);
            g->written = g->bytes;
        }
    } else if ((s->dir = strdup(opts->dir)) == NULL) {
        st = jb_error_set(err, JB_ENOMEM, "out of memory");
    } else {
        st = recover(s, err);
    }
    if (st != JB_OK) {
        store_free(s);
        return st;
    }
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    *out = s;
    return JB_OK;
}

/* ---- append ------------------------------------------------------------ */

/* Starts a new segment at the next sequence. */
static bool roll(jb_store *s)
{
    seg *g = seg_new(s->next_seq);
    if (g == NULL)
        return false;
    if (s->memory) {
        g->mem = malloc(JB__SEG_HEADER_BYTES);
        if (g->mem == NULL) {
            seg_free(g);
            return false;
        }
        g->mem_cap = JB__SEG_HEADER_BYTES;
        encode_seg_header(g->mem, g->first_seq);
        g->written = g->bytes;
    }
    if (!push_seg(s, g)) {
        seg_free(g);
        return false;
    }
    return true;
}

/* Appends one validated record; false only when out of memory. */
static bool append_one(jb_store *s, int64_t ts, const void *payload, size_t len)
{
    size_t rec = JB__REC_HEADER_BYTES + len;
    seg *g = tail_seg(s);
    if (g->count > 0 && g->bytes + rec > s->opts.segment_bytes) {
        if (!roll(s))
            return false;
        g = tail_seg(s);
        if (s->memory)
            apply_retention(s, wall_ms());
    }
    uint64_t seq = s->next_seq;
    uint8_t *dst;
    if (!idx_add(g, seq, g->bytes, s->pmax))
        return false;
    if (s->memory) {
        if (!grow((void **)&g->mem, &g->mem_cap, g->bytes + rec, 1))
            return false;
        dst = g->mem + g->bytes;
    } else {
        wbuf *b = s->active;
        if (!grow((void **)&b->data, &b->cap, b->len + rec, 1))
            return false;
        wchunk *c = b->nchunks > 0 ? &b->chunks[b->nchunks - 1] : NULL;
        if (c == NULL || c->seg != g) {
            if (!grow((void **)&b->chunks, &b->chunk_cap, b->nchunks + 1, sizeof(wchunk)))
                return false;
            c = &b->chunks[b->nchunks++];
            *c = (wchunk){.seg = g,
                          .seg_first_seq = g->first_seq,
                          .file_off = g->bytes,
                          .buf_off = b->len,
                          .create = !g->created,
                          .out_fd = -1};
            g->created = true;
        }
        dst = b->data + b->len;
        c->len += rec;
        b->len += rec;
        b->last_seq = seq;
    }
    encode_record(dst, seq, ts, payload, len);
    g->bytes += rec;
    g->count++;
    if (ts > g->max_ts)
        g->max_ts = ts;
    if (ts > s->pmax)
        s->pmax = ts;
    s->total_bytes += rec;
    s->next_seq++;
    if (s->memory) {
        g->written = g->bytes;
        s->written_seq = s->durable_seq = seq;
    }
    return true;
}

static size_t buffered(const jb_store *s)
{
    return s->active->len + (s->inflight ? s->inflight->len : 0);
}

static jb_status append_check(jb_store *s, size_t total, jb_error *err)
{
    if (s->closing)
        return jb_error_set(err, JB_ECLOSED, "the store is closing");
    if (s->failed != JB_OK)
        return jb_error_set(err, s->failed, "%s", s->fail_err.message);
    if (s->memory)
        return JB_OK;
    if (total > s->opts.max_unflushed_bytes)
        return jb_error_set(err, JB_ETOOBIG, "%zu bytes exceed max_unflushed_bytes (%zu)", total,
                            s->opts.max_unflushed_bytes);
    if (buffered(s) + total > s->opts.max_unflushed_bytes)
        return jb_error_set(err, JB_EBACKPRESSURE,
                            "the writer is behind: %zu bytes buffered, limit %zu", buffered(s),
                            s->opts.max_unflushed_bytes);
    return JB_OK;
}

static jb_status append_done(jb_store *s, bool ok, jb_error *err)
{
    if (!ok) {
        set_failed(s, JB_ENOMEM, "out of memory while appending");
        return jb_error_set(err, JB_ENOMEM, "out of memory while appending; the store stopped");
    }
    if (!s->memory && !s->job_running && s->active->len >= s->opts.write_trigger_bytes)
        kick(s);
    return JB_OK;
}

jb_status jb_store_append(jb_store *s, int64_t timestamp_ms, const void *payload, size_t len,
                          uint64_t *seq, jb_error *err)
{
    if (len > JB_STORE_MAX_PAYLOAD)
        return jb_error_set(err, JB_ETOOBIG, "payload of %zu bytes exceeds %u", len,
                            JB_STORE_MAX_PAYLOAD);
    if (payload == NULL && len > 0)
        return jb_error_set(err, JB_EINVAL, "NULL payload");
    jb_status st = append_check(s, JB__REC_HEADER_BYTES + len, err);
    if (st != JB_OK)
        return st;
    uint64_t first = s->next_seq;
    st = append_done(s, append_one(s, timestamp_ms, payload, len), err);
    if (st == JB_OK && seq != NULL)
        *seq = first;
    return st;
}

jb_status jb_store_append_batch(jb_store *s, const jb_store_entry *entries, size_t n,
                                uint64_t *first_seq, jb_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (entries[i].len > JB_STORE_MAX_PAYLOAD)
            return jb_error_set(err, JB_ETOOBIG, "entry %zu: payload of %zu bytes exceeds %u", i,
                                entries[i].len, JB_STORE_MAX_PAYLOAD);
        if (entries[i].payload == NULL && entries[i].len > 0)
            return jb_error_set(err, JB_EINVAL, "entry %zu: NULL payload", i);
        total += JB__REC_HEADER_BYTES + entries[i].len;
    }
    jb_status st = append_check(s, total, err);
    if (st != JB_OK)
        return st;
    uint64_t first = s->next_seq;
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        ok = append_one(s, entries[i].timestamp_ms, entries[i].payload, entries[i].len);
    st = append_done(s, ok, err);
    if (st == JB_OK && first_seq != NULL)
        *first_seq = first;
    return st;
}

/* ---- flush ------------------------------------------------------------- */

jb_status jb_store_flush(jb_store *s, jb_store_flush_cb cb, void *userdata)
{
    if (cb == NULL)
        return JB_EINVAL;
    if (s->closing)
        return JB_ECLOSED;
    if (s->failed != JB_OK)
        return s->failed;
    waiter *w = malloc(sizeof(*w));
    if (w == NULL)
        return JB_ENOMEM;
    *w = (waiter){NULL, s->next_seq - 1, cb, userdata};
    if (s->wtail != NULL)
        s->wtail->next = w;
    else
        s->whead = w;
    s->wtail = w;
    if (w->target <= s->durable_seq)
        defer_drain(s);
    else
        kick(s);
    return JB_OK;
}

uint64_t jb_store_durable_seq(const jb_store *s)
{
    return s->durable_seq;
}

uint64_t jb_store_first_seq(const jb_store *s)
{
    return s->segs[0]->first_seq;
}

uint64_t jb_store_last_seq(const jb_store *s)
{
    return s->next_seq - 1;
}

/* ---- reads ------------------------------------------------------------- */

/*
 * Points *@rec at the whole record at @off of @g (header and payload). The
 * pointer is valid until the next fetch or append. Checks the CRC of
 * records read from disk when @verify.
 */
static jb_status fetch(jb_store *s, const seg *g, uint64_t off, bool verify, const uint8_t **rec,
                       jb_error *err)
{
    if (s->memory) {
        *rec = g->mem + off;
        return JB_OK;
    }
    if (off >= g->written) {
        const wbuf *bufs[2] = {s->inflight, s->active};
        for (int i = 0; i < 2; i++) {
            const wbuf *b = bufs[i];
            for (size_t k = 0; b != NULL && k < b->nchunks; k++) {
                const wchunk *c = &b->chunks[k];
                if (c->seg == g && off >= c->file_off && off < c->file_off + c->len) {
                    *rec = b->data + c->buf_off + (off - c->file_off);
                    return JB_OK;
                }
            }
        }
        JB_BUG("record at offset %" PRIu64 " of segment %" PRIu64 " is nowhere", off, g->first_seq);
    }
    char name[JB__SEG_NAME_SIZE];
    const char *why = NULL;
    jb_status st = JB_OK;
    if (g->written - off < JB__REC_HEADER_BYTES) {
        why = "partial record header";
    } else if ((st = cache_load(s, g, off, JB__REC_HEADER_BYTES, READ_CHUNK_BYTES, err)) != JB_OK) {
        return st;
    } else {
        uint32_t len = get32(s->rbuf + (off - s->rbuf_off) + 4);
        if (len > JB_STORE_MAX_PAYLOAD || g->written - off < JB__REC_HEADER_BYTES + (uint64_t)len)
            why = "impossible record length";
        else if ((st = cache_load(s, g, off, JB__REC_HEADER_BYTES + len, READ_CHUNK_BYTES, err)) !=
                 JB_OK)
            return st;
        else if (verify && !record_crc_ok(s->rbuf + (off - s->rbuf_off)))
            why = "checksum mismatch";
    }
    if (why != NULL) {
        seg_name(name, g->first_seq);
        return jb_error_set(err, JB_ECORRUPT, "%s/%s: offset %" PRIu64 ": %s", s->dir, name, off,
                            why);
    }
    *rec = s->rbuf + (off - s->rbuf_off);
    return JB_OK;
}

/* Finds the offset of @seq (stored) in segment @gi. */
static jb_status locate(jb_store *s, size_t gi, uint64_t seq, uint64_t *off_out, jb_error *err)
{
    const seg *g = s->segs[gi];
    size_t lo = 0, hi = g->nidx;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->idx[mid].seq <= seq)
            lo = mid;
        else
            hi = mid;
    }
    uint64_t at = g->idx[lo].seq, off = g->idx[lo].off;
    while (at < seq) {
        const uint8_t *rec;
        jb_status st = fetch(s, g, off, false, &rec, err);
        if (st != JB_OK)
            return st;
        off += JB__REC_HEADER_BYTES + get32(rec + 4);
        at++;
    }
    *off_out = off;
    return JB_OK;
}

static jb_status read_from(jb_store *s, uint64_t from_seq, size_t max_records, size_t max_bytes,
                           jb_store_visit_fn visit, void *userdata, size_t *n_visited,
                           jb_error *err)
{
    size_t n = 0, bytes = 0;
    uint64_t seq = from_seq, off = 0;
    size_t gi = 0;
    jb_status st = JB_OK;
    if (seq < s->next_seq) {
        gi = find_seg(s, seq);
        if (seq < s->segs[gi]->first_seq + s->segs[gi]->count)
            st = locate(s, gi, seq, &off, err);
    }
    s->reading++;
    while (st == JB_OK && seq < s->next_seq && (max_records == 0 || n < max_records)) {
        const seg *g = s->segs[gi];
        if (seq >= g->first_seq + g->count) {
            /* The next segment starts higher where a repair dropped sequences. */
            if (++gi == s->nsegs)
                break;
            off = JB__SEG_HEADER_BYTES;
            if (seq < s->segs[gi]->first_seq)
                seq = s->segs[gi]->first_seq;
            continue;
        }
        const uint8_t *p;
        st = fetch(s, g, off, true, &p, err);
        if (st != JB_OK)
            break;
        jb_store_record rec = {get64(p + 8), (int64_t)get64(p + 16), p + JB__REC_HEADER_BYTES,
                               get32(p + 4)};
        if (rec.seq != seq) {
            char name[JB__SEG_NAME_SIZE];
            seg_name(name, g->first_seq);
            st = jb_error_set(err, JB_ECORRUPT,
                              "%s/%s: offset %" PRIu64 ": sequence %" PRIu64 ", expected %" PRIu64,
                              s->dir ? s->dir : "(memory)", name, off, rec.seq, seq);
            break;
        }
        if (max_bytes > 0 && n > 0 && bytes + rec.len > max_bytes)
            break;
        n++;
        bytes += rec.len;
        off += JB__REC_HEADER_BYTES + rec.len;
        seq++;
        if (visit(&rec, userdata) != 0)
            break;
    }
    s->reading--;
    if (n_visited != NULL)
        *n_visited = n;
    return st;
}

jb_status jb_store_read(jb_store *s, uint64_t from_seq, size_t max_records, size_t max_bytes,
                        jb_store_visit_fn visit, void *userdata, size_t *n_visited, jb_error *err)
{
    if (visit == NULL)
        return jb_error_set(err, JB_EINVAL, "jb_store_read: a visitor is required");
    if (from_seq < jb_store_first_seq(s))
        return jb_error_set(err, JB_ENOENT,
                            "sequence %" PRIu64 " is gone: the store starts at %" PRIu64, from_seq,
                            jb_store_first_seq(s));
    return read_from(s, from_seq, max_records, max_bytes, visit, userdata, n_visited, err);
}

typedef struct seek_state {
    int64_t ts;
    uint64_t found;
} seek_state;

static int seek_visit(const jb_store_record *rec, void *userdata)
{
    seek_state *st = userdata;
    if (rec->timestamp_ms >= st->ts) {
        st->found = rec->seq;
        return 1;
    }
    return 0;
}

jb_status jb_store_seek_time(jb_store *s, int64_t timestamp_ms, uint64_t *seq, jb_error *err)
{
    /*
     * Index entries carry the largest timestamp before them, which never
     * decreases; the last entry whose maximum is still below the target is
     * where the first record at or after it can start, so the scan from there
     * is at most one index block long.
     */
    uint64_t start = jb_store_first_seq(s);
    for (size_t gi = s->nsegs; gi-- > 0;) {
        const seg *g = s->segs[gi];
        if (g->nidx == 0 || g->idx[0].pmax >= timestamp_ms)
            continue;
        size_t lo = 0, hi = g->nidx;
        while (hi - lo > 1) {
            size_t mid = lo + (hi - lo) / 2;
            if (g->idx[mid].pmax < timestamp_ms)
                lo = mid;
            else
                hi = mid;
        }
        start = g->idx[lo].seq;
        break;
    }
    seek_state st = {timestamp_ms, 0};
    jb_status rc = read_from(s, start, 0, 0, seek_visit, &st, NULL, err);
    if (rc != JB_OK)
        return rc;
    if (st.found == 0)
        return jb_error_set(err, JB_ENOENT, "no record at or after %" PRId64, timestamp_ms);
    *seq = st.found;
    return JB_OK;
}

/* ---- retention and stats ----------------------------------------------- */

void jb_store_set_min_needed(jb_store *s, uint64_t seq)
{
    s->min_needed = seq;
}

jb_status jb_store_retain(jb_store *s, int64_t now_ms, size_t *n_deleted, jb_error *err)
{
    if (s->reading > 0)
        return jb_error_set(err, JB_EINVAL, "jb_store_retain called from a read visitor");
    if (s->closing)
        return jb_error_set(err, JB_ECLOSED, "the store is closing");
    size_t n = apply_retention(s, now_ms);
    if (n_deleted != NULL)
        *n_deleted = n;
    return JB_OK;
}

void jb_store_get_stats(const jb_store *s, jb_store_stats *out)
{
    *out = s->stats;
    out->segments = s->nsegs;
    out->bytes = s->total_bytes;
    out->buffered = s->memory ? 0 : buffered(s);
}

/* ---- verify and repair -------------------------------------------------- */

/* What audit() learns beyond the report: where a repair would cut. */
typedef struct cut {
    size_t seg;   /* index of the first damaged segment (SIZE_MAX: none) */
    uint64_t off; /* where in it (0: the whole segment goes) */
} cut;

static jb_status report_add(jb_store_report *r, const seg *g, uint64_t off, const char *what,
                            uint64_t before, uint64_t after, bool torn, jb_error *err)
{
    jb_store_problem *p = realloc(r->problems, (r->n_problems + 1) * sizeof(*p));
    if (p == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory for the report");
    r->problems = p;
    p += r->n_problems++;
    *p = (jb_store_problem){
        .offset = off, .seq_before = before, .seq_after = after, .torn_tail = torn};
    seg_name(p->file, g->first_seq);
    snprintf(p->what, sizeof(p->what), "%s", what);
    return JB_OK;
}

/* Notes the damage at @off of segment @i unless an earlier one was noted. */
static void mark_cut(jb_store_report *r, cut *c, size_t i, uint64_t off, uint64_t first_dropped)
{
    if (r->damaged)
        return;
    r->damaged = 1;
    c->seg = i;
    c->off = off;
    r->dropped = r->records;
    r->dropped_first = first_dropped;
}

/* Counts the valid run @g's scan just added (sequences from..from+n-1). */
static void count_run(jb_store_report *r, uint64_t from, uint64_t n)
{
    if (n == 0)
        return;
    if (r->records == 0 || from < r->first_seq)
        r->first_seq = from;
    if (from + n - 1 > r->last_seq)
        r->last_seq = from + n - 1;
    r->records += n;
}

/* Walks every record of segment @i (already opened as @g), noting each problem. */
static jb_status audit_segment(jb_store *s, seg *g, size_t i, bool newest, jb_store_report *r,
                               cut *c, jb_error *err)
{
    damage d = {0};
    uint64_t before = i > 0 ? g->first_seq - 1 : 0;
    jb_status st = scan_segment(s, g, &d, err);
    count_run(r, g->first_seq, g->count);
    while (st == JB_OK && d.why != NULL) {
        bool torn = newest && !d.misnumbered && d.next_off == 0;
        uint64_t last_good = g->count > 0 ? d.expected - 1 : before;
        st = report_add(r, g, d.off, d.why, last_good, d.next_seq, torn, err);
        if (st != JB_OK || torn)
            break;
        mark_cut(r, c, i, d.off, d.expected);
        if (d.next_off == 0)
            break;
        uint64_t counted = g->count, from = d.next_seq;
        st = scan_from(s, g, d.next_off, d.next_seq, &d, err);
        count_run(r, from, g->count - counted);
    }
    return st;
}

/* A segment that does not start where the one before it ends, nor above a repair's gap. */
static jb_status audit_gap(jb_store *s, size_t i, jb_store_report *r, cut *c, jb_error *err)
{
    const seg *p = s->segs[i - 1], *g = s->segs[i];
    uint64_t end = p->first_seq + p->count;
    if (g->first_seq == end || (g->first_seq > end && g->first_seq - 1 <= s->hwm))
        return JB_OK;
    const char *what = g->first_seq > end ? "a segment is missing before this one"
                                          : "overlaps the segment before it";
    mark_cut(r, c, i, 0, end);
    return report_add(r, g, 0, what, end - 1, g->first_seq, false, err);
}

static jb_status audit(jb_store *s, jb_store_report *r, cut *c, jb_error *err)
{
    uint64_t *firsts = NULL;
    size_t n = 0;
    jb_status st = list_segments(s, &firsts, &n, err);
    c->seg = SIZE_MAX;
    for (size_t i = 0; i < n && st == JB_OK; i++) {
        seg *g = NULL;
        st = open_segment(s, firsts[i], false, &g, err);
        r->segments++;
        if (st == JB_OK && i > 0 && !r->damaged)
            st = audit_gap(s, i, r, c, err);
        if (st == JB_OK)
            st = audit_segment(s, g, i, i + 1 == n, r, c, err);
    }
    free(firsts);
    if (st != JB_OK)
        return st;
    r->high_water = s->hwm;
    if (r->damaged) {
        r->dropped = r->records - r->dropped;
        r->dropped_last = r->last_seq > r->dropped_first ? r->last_seq : r->dropped_first;
    } else {
        uint64_t next = s->nsegs > 0 ? tail_seg(s)->first_seq : 1;
        next = r->last_seq + 1 > next ? r->last_seq + 1 : next;
        r->next_seq = s->hwm + 1 > next ? s->hwm + 1 : next;
    }
    return JB_OK;
}

/* Opens @dir for a check without a loop; *@out is freed with store_free(). */
static jb_status audit_open(const char *dir, jb_store **out, jb_store_report *r, cut *c,
                            jb_error *err)
{
    *r = (jb_store_report){0};
    jb_store *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->dir = strdup(dir)) == NULL) {
        free(s);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    s->fops = &sys_fileops;
    s->dirfd = s->disk_tail_fd = -1;
    s->pmax = INT64_MIN;
    jb_status st = open_dir(s, false, err);
    if (st == JB_OK)
        st = audit(s, r, c, err);
    if (st != JB_OK) {
        store_free(s);
        jb_store_report_release(r);
        return st;
    }
    *out = s;
    return JB_OK;
}

jb_status jb_store_verify(const char *dir, jb_store_report *report, jb_error *err)
{
    jb_store *s = NULL;
    cut c;
    jb_status st = audit_open(dir, &s, report, &c, err);
    if (st == JB_OK)
        store_free(s);
    return st;
}

/* Deletes segment @i, or cuts it at @off, through the write file descriptor. */
static bool cut_segment(jb_store *s, size_t i, uint64_t off)
{
    char name[JB__SEG_NAME_SIZE];
    seg_name(name, s->segs[i]->first_seq);
    if (off < JB__SEG_HEADER_BYTES)
        return f_unlink(s, name);
    int fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
    bool ok =
        fd >= 0 && s->fops->ftruncate(s->fops->ctx, fd, (off_t)off) == 0 && f_fdatasync(s, fd);
    int e = errno;
    if (fd >= 0)
        close(fd);
    errno = e;
    return ok;
}

/*
 * The mark first, so that a crash half-way leaves the damage (and the next
 * repair) or a shorter log whose dropped sequences are never reused; then
 * the later segments, newest first; then the damaged one.
 */
static jb_status apply_repair(jb_store *s, jb_store_report *r, const cut *c, jb_error *err)
{
    jb_status st = hwm_raise(s, r->dropped_last, err);
    if (st != JB_OK)
        return st;
    bool ok = true;
    for (size_t i = s->nsegs; ok && i-- > c->seg + 1;) {
        char name[JB__SEG_NAME_SIZE];
        seg_name(name, s->segs[i]->first_seq);
        ok = f_unlink(s, name);
    }
    ok = ok && cut_segment(s, c->seg, c->off) && f_fsync_dir(s);
    if (!ok)
        return jb_error_set(err, JB_EIO, "%s: repair failed: %s; run it again", s->dir,
                            strerror(errno));
    jb_log(JB_LOG_WARN, "store", "repaired the log",
           "dir=%s dropped=%" PRIu64 " from=%" PRIu64 " to=%" PRIu64, s->dir, r->dropped,
           r->dropped_first, r->dropped_last);
    r->repaired = 1;
    r->high_water = s->hwm;
    r->next_seq = s->hwm + 1;
    return JB_OK;
}

jb_status jb_store_repair(const char *dir, jb_store_report *report, jb_error *err)
{
    jb_store *s = NULL;
    cut c;
    jb_status st = audit_open(dir, &s, report, &c, err);
    if (st != JB_OK)
        return st;
    if (report->damaged)
        st = apply_repair(s, report, &c, err);
    store_free(s);
    return st;
}

void jb_store_report_print(const jb_store_report *r, FILE *out)
{
    fprintf(out, "segments: %" PRIu64 "\nrecords: %" PRIu64 "\n", r->segments, r->records);
    if (r->records > 0)
        fprintf(out, "sequences: %" PRIu64 "..%" PRIu64 "\n", r->first_seq, r->last_seq);
    fprintf(out, "high-water mark: %" PRIu64 "\n", r->high_water);
    for (size_t i = 0; i < r->n_problems; i++) {
        const jb_store_problem *p = &r->problems[i];
        char around[96];
        describe_around(around, sizeof(around), p->seq_before, p->seq_after);
        fprintf(out, "%s: %s offset %" PRIu64 ": %s, %s%s\n", p->torn_tail ? "torn tail" : "DAMAGE",
                p->file, p->offset, p->what, around,
                p->torn_tail ? " (nothing valid after it: a crash during a write; the next start "
                               "truncates it)"
                             : "");
    }
    if (r->repaired)
        fprintf(out,
                "repaired: dropped %" PRIu64 " valid records, sequences %" PRIu64 "..%" PRIu64
                "; the next sequence is %" PRIu64 "\n",
                r->dropped, r->dropped_first, r->dropped_last, r->next_seq);
    else if (r->damaged)
        fprintf(out,
                "result: DAMAGED: jimbotd refuses to start. `jimbotd --repair` truncates at the "
                "first damage, dropping %" PRIu64 " valid records (sequences %" PRIu64 "..%" PRIu64
                "); or restore the directory from a copy\n",
                r->dropped, r->dropped_first, r->dropped_last);
    else
        fprintf(out, "result: clean; the next sequence is %" PRIu64 "\n", r->next_seq);
}

void jb_store_report_release(jb_store_report *r)
{
    free(r->problems);
    r->problems = NULL;
    r->n_problems = 0;
}

void jb__store_set_write_delay(jb_store *s, unsigned ms)
{
    s->write_delay_ms = ms;
}
