/*
 * The request queues' cache file (jb_coord_options.cache_path): the cached
 * answers, so that a restart does not spend budget again on what was
 * answered within cache_ttl.
 *
 * Format (little endian):
 *
 *   "JBQCACHE1\n"  u32 count
 *   count x { u16 queue_len, queue, u16 type_len, type, u32 payload_len,
 *             payload, u16 resp_type_len, resp_type, u32 resp_len, resp,
 *             i64 expires_ms (wall clock) }
 *   u32 crc32c of everything before it
 *
 * Replaced whole (core/file.h: "<path>.tmp", fsync, rename, folder fsync), on the
 * loop's threadpool: one write in flight, a newer image waiting replaces
 * the one that waited before it (only the latest matters). Loaded once at
 * start, on the loop; a missing file is an empty cache, and a damaged one
 * is logged and ignored: it is a cache, never a reason not to start.
 *
 * Loop thread, except write_work on the threadpool, which touches only its
 * own buffer and paths. Must not depend on queue.c's structures.
 */
#include "coord/coord_internal.h"
#include "core/file.h"

#include "jimbot/log.h"
#include "store/crc32c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAGIC     "JBQCACHE1\n"
#define MAGIC_LEN 10
/* A file larger than this is not read (the cache holds at most 1 GiB). */
#define MAX_FILE_BYTES ((size_t)1 << 31)

struct jb__cache_writer {
    uv_loop_t *loop;
    char *path;
    uv_work_t work;
    unsigned char *buf; /* being written */
    size_t len;
    unsigned char *next; /* waiting for the write in flight */
    size_t next_len;
    int in_flight;
    int freed;
    int failed;   /* the last write failed: */
    jb_error err; /* why, for the log */
};

/* ---- Building an image --------------------------------------------------------- */

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

size_t jb__cache_record_size(const jb__cache_record *r)
{
    return 2 + strlen(r->queue) + 2 + strlen(r->type) + 4 + r->payload_len + 2 +
           strlen(r->resp_type) + 4 + r->resp_len + 8;
}

size_t jb__cache_image_size(size_t records_bytes)
{
    return MAGIC_LEN + 4 + records_bytes + 4;
}

void jb__cache_image_begin(unsigned char *buf, uint32_t count)
{
    memcpy(buf, MAGIC, MAGIC_LEN);
    put_u32(buf + MAGIC_LEN, count);
}

size_t jb__cache_image_put(unsigned char *at, const jb__cache_record *r)
{
    unsigned char *p = at;
    size_t n = strlen(r->queue);
    put_u16(p, (uint16_t)n);
    memcpy(p + 2, r->queue, n);
    p += 2 + n;
    n = strlen(r->type);
    put_u16(p, (uint16_t)n);
    memcpy(p + 2, r->type, n);
    p += 2 + n;
    put_u32(p, (uint32_t)r->payload_len);
    if (r->payload_len > 0)
        memcpy(p + 4, r->payload, r->payload_len);
    p += 4 + r->payload_len;
    n = strlen(r->resp_type);
    put_u16(p, (uint16_t)n);
    memcpy(p + 2, r->resp_type, n);
    p += 2 + n;
    put_u32(p, (uint32_t)r->resp_len);
    if (r->resp_len > 0)
        memcpy(p + 4, r->resp, r->resp_len);
    p += 4 + r->resp_len;
    put_u64(p, (uint64_t)r->expires_ms);
    return (size_t)(p + 8 - at);
}

void jb__cache_image_end(unsigned char *buf, size_t len)
{
    put_u32(buf + len - 4, jb__crc32c(0, buf, len - 4));
}

/* ---- Loading ---------------------------------------------------------------------- */

/* Reads a string with a u16 length prefix into @out (NUL-terminated, at most @max bytes). */
static int get_str(const unsigned char **p, const unsigned char *end, char *out, size_t max)
{
    if (end - *p < 2)
        return -1;
    size_t n = (size_t)get_u(*p, 2);
    if (n > max || (size_t)(end - *p - 2) < n)
        return -1;
    memcpy(out, *p + 2, n);
    out[n] = '\0';
    if (memchr(out, '\0', n) != NULL)
        return -1;
    *p += 2 + n;
    return 0;
}

static int get_bytes(const unsigned char **p, const unsigned char *end, const unsigned char **out,
                     size_t *len)
{
    if (end - *p < 4)
        return -1;
    size_t n = (size_t)get_u(*p, 4);
    if ((size_t)(end - *p - 4) < n)
        return -1;
    *out = *p + 4;
    *len = n;
    *p += 4 + n;
    return 0;
}

/*
 * Walks the records of @buf (its magic and CRC checked), calling @fn for
 * each when @fn is not NULL; -1 when it is damaged.
 */
static int walk(const unsigned char *buf, size_t len, void (*fn)(const jb__cache_record *, void *),
                void *ud)
{
    size_t count = (size_t)get_u(buf + MAGIC_LEN, 4);
    const unsigned char *p = buf + MAGIC_LEN + 4, *end = buf + len - 4;
    char queue[JB_COORD_MAX_QUEUE + 1], type[JB_COORD_MAX_TYPE + 1],
        resp_type[JB_COORD_MAX_TYPE + 1];
    for (size_t i = 0; i < count; i++) {
        jb__cache_record r = {.queue = queue, .type = type, .resp_type = resp_type};
        const unsigned char *payload, *resp;
        if (get_str(&p, end, queue, JB_COORD_MAX_QUEUE) != 0 ||
            get_str(&p, end, type, JB_COORD_MAX_TYPE) != 0 ||
            get_bytes(&p, end, &payload, &r.payload_len) != 0 ||
            get_str(&p, end, resp_type, JB_COORD_MAX_TYPE) != 0 ||
            get_bytes(&p, end, &resp, &r.resp_len) != 0 || end - p < 8)
            return -1;
        r.payload = payload;
        r.resp = resp;
        r.expires_ms = (int64_t)get_u(p, 8);
        p += 8;
        if (fn != NULL)
            fn(&r, ud);
    }
    return p == end ? 0 : -1;
}

jb_status jb__cache_file_load(const char *path, void (*fn)(const jb__cache_record *r, void *ud),
                              void *ud)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        if (errno != ENOENT)
            jb_log(JB_LOG_WARN, "coord", "the cache file could not be read: starting empty",
                   "path=%s errno=%d", path, errno);
        return JB_OK;
    }
    struct stat stt;
    unsigned char *buf = NULL;
    size_t len = 0;
    int ok =
        fstat(fileno(fp), &stt) == 0 && stt.st_size >= 0 && (size_t)stt.st_size <= MAX_FILE_BYTES;
    if (ok) {
        len = (size_t)stt.st_size;
        buf = malloc(len > 0 ? len : 1);
        ok = buf != NULL && fread(buf, 1, len, fp) == len;
        if (buf == NULL)
            len = 1;
    }
    fclose(fp);
    if (len > 0 && buf == NULL)
        return JB_ENOMEM;
    ok = ok && len >= MAGIC_LEN + 8 && memcmp(buf, MAGIC, MAGIC_LEN) == 0 &&
         (uint32_t)get_u(buf + len - 4, 4) == jb__crc32c(0, buf, len - 4) &&
         walk(buf, len, NULL, NULL) == 0;
    if (ok)
        walk(buf, len, fn, ud);
    else
        jb_log(JB_LOG_WARN, "coord", "the cache file is damaged: starting with an empty cache",
               "path=%s", path);
    free(buf);
    return JB_OK;
}

/* ---- Writing ------------------------------------------------------------------- */

/* On the threadpool: the image, replaced atomically (core/file.h). */
static void write_work(uv_work_t *req)
{
    jb__cache_writer *w = req->data;
    w->failed = jb__file_write_atomic(w->path, w->buf, w->len, &w->err) != JB_OK;
}

static void writer_release(jb__cache_writer *w)
{
    free(w->buf);
    free(w->next);
    free(w->path);
    free(w);
}

static void start_write(jb__cache_writer *w);

static void after_write(uv_work_t *req, int status)
{
    jb__cache_writer *w = req->data;
    w->in_flight = 0;
    if (status == 0 && w->failed)
        jb_log(JB_LOG_WARN, "coord", "the cache file could not be written", "error=\"%s\"",
               w->err.message);
    free(w->buf);
    w->buf = NULL;
    if (w->next != NULL) {
        w->buf = w->next;
        w->len = w->next_len;
        w->next = NULL;
        start_write(w);
        return;
    }
    if (w->freed)
        writer_release(w);
}

static void start_write(jb__cache_writer *w)
{
    w->work.data = w;
    if (uv_queue_work(w->loop, &w->work, write_work, after_write) != 0) {
        free(w->buf);
        w->buf = NULL;
        return;
    }
    w->in_flight = 1;
}

jb__cache_writer *jb__cache_writer_new(uv_loop_t *loop, const char *path)
{
    jb__cache_writer *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->loop = loop;
    w->path = strdup(path);
    if (w->path == NULL) {
        writer_release(w);
        return NULL;
    }
    return w;
}

void jb__cache_writer_submit(jb__cache_writer *w, unsigned char **buf, size_t len)
{
    unsigned char *b = *buf;
    *buf = NULL;
    if (w->in_flight) {
        free(w->next);
        w->next = b;
        w->next_len = len;
        return;
    }
    w->buf = b;
    w->len = len;
    start_write(w);
}

void jb__cache_writer_free(jb__cache_writer *w)
{
    if (w == NULL)
        return;
    if (w->in_flight) {
        w->freed = 1;
        return;
    }
    writer_release(w);
}
