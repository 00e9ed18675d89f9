/*
 * The coordinator's state file (docs/coordinator.md "Persistence"): the
 * saved leases and spends, loaded once at start and rewritten whole after
 * every durable change.
 *
 * The file (all integers little-endian):
 *
 *   magic    8 bytes "JBCOORD\n"
 *   version  u32 (1)
 *   length   u32: the payload's size in bytes
 *   payload  length bytes
 *   crc      u32: CRC32C of every byte before it
 *
 *   payload: u32 n_leases, then per lease: u32 device, u32 pid,
 *            i64 granted_ms, i64 expires_ms, str lease_id, str component,
 *            str reason; u32 n_spends, then per spend: i64 at_ms,
 *            u32 count, str component.
 *   str: u32 byte length then the bytes (no NUL); length 0xFFFFFFFF is NULL.
 *
 * Loading: a missing file is an empty state; anything else that is not
 * exactly such a file (bad magic, wrong size, bad CRC, a payload that does
 * not parse to its last byte) is JB_ECORRUPT naming the file, never an
 * empty state, because an empty state would refill the budget and hand out
 * devices that may still be in use. A version this build does not know is
 * JB_EINCOMPATIBLE. A leftover "<path>.tmp" (a write cut short) is removed.
 *
 * Writing (group commit): jb__coord_persist() queues its callback and arms
 * a zero timer, so the image is taken on the loop once the current
 * iteration is over (jb__gpu_save, jb__quota_save), encoded there, and
 * written on the threadpool: "<path>.tmp", fsync, rename over <path>,
 * fsync of the folder. One write is in flight at a time; persists made
 * while it runs wait for it and then all ride the next write, whose image
 * is taken only when it starts. Each callback runs once its write is
 * durable, or with the write's error.
 *
 * Handles are made lazily (the first persist or the close), so a state
 * closed right after jb__state_open with no callback frees at once. A
 * close without a callback (jb_coord_new failing) writes nothing and drops
 * the pending callbacks unrun, because the parts go away at once. A close
 * with one writes the final image once (after any write in flight), closes
 * the timer and then calls back, always on a later loop turn. Without a
 * state path nothing is written and persist callbacks run on the next loop
 * turn.
 *
 * Loop thread only, except write_file(), which runs on the threadpool and
 * touches nothing but the encoded buffer and the paths.
 */
#include "coord/coord_internal.h"
#include "core/file.h"
#include "store/crc32c.h"

#include "jimbot/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_MAGIC     "JBCOORD\n"
#define STATE_MAGIC_LEN 8
#define STATE_VERSION   1
#define STATE_HEADER    (STATE_MAGIC_LEN + 4 + 4)
#define STATE_TRAILER   4
#define STATE_MAX_FILE  ((size_t)1 << 30)
#define STR_NULL        0xFFFFFFFFu

/* The smallest encoded records, to bound counts read from a file. */
#define LEASE_MIN (4 + 4 + 8 + 8 + 4 * 3)
#define SPEND_MIN (8 + 4 + 4)

typedef struct pending {
    jb__persist_cb cb;
    void *ud;
    struct pending *next;
} pending;

typedef struct pending_list {
    pending *head;
    pending **tail;
} pending_list;

struct jb__state {
    jb_coord *co;
    char *path;      /* NULL: nothing is persisted */
    char *tmp_path;  /* a leftover of a write cut short, removed at open */
    uv_timer_t kick; /* starts the next write on the next loop turn */
    int kick_ready;  /* uv_timer_init done */
    int kick_armed;
    uv_work_t work;
    int writing;
    unsigned char *buf; /* the encoded image being written */
    size_t len;
    jb_status wstatus;
    jb_error werr;
    pending_list next;     /* ride the next write */
    pending_list inflight; /* ride the write in flight */
    uint64_t writes;
    int closing;
    int final_started; /* a write whose image was taken after close began */
    int abandoned;     /* closed without a callback: nothing more is written or called */
    void (*close_cb)(void *ud);
    void *close_ud;
};

/* Completed writes (tests: group commit). */
uint64_t jb__state_writes(const jb_coord *co);

uint64_t jb__state_writes(const jb_coord *co)
{
    return co->state != NULL ? co->state->writes : 0;
}

void jb__state_image_release(jb__state_image *img)
{
    for (size_t i = 0; i < img->n_leases; i++) {
        free(img->leases[i].lease_id);
        free(img->leases[i].component);
        free(img->leases[i].reason);
    }
    free(img->leases);
    for (size_t i = 0; i < img->n_spends; i++)
        free(img->spends[i].component);
    free(img->spends);
    *img = (jb__state_image){0};
}

/* ---- Encoding ---------------------------------------------------------------- */

static size_t str_size(const char *s)
{
    return 4 + (s != NULL ? strlen(s) : 0);
}

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        *p++ = (unsigned char)(v >> (8 * i));
    return p;
}

static unsigned char *put_i64(unsigned char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        *p++ = (unsigned char)(u >> (8 * i));
    return p;
}

static unsigned char *put_str(unsigned char *p, const char *s)
{
    if (s == NULL)
        return put_u32(p, STR_NULL);
    size_t n = strlen(s);
    p = put_u32(p, (uint32_t)n);
    memcpy(p, s, n);
    return p + n;
}

static size_t payload_size(const jb__state_image *img)
{
    size_t n = 4 + 4;
    for (size_t i = 0; i < img->n_leases; i++) {
        const jb__saved_lease *l = &img->leases[i];
        n += 4 + 4 + 8 + 8 + str_size(l->lease_id) + str_size(l->component) + str_size(l->reason);
    }
    for (size_t i = 0; i < img->n_spends; i++)
        n += 8 + 4 + str_size(img->spends[i].component);
    return n;
}

/* The whole file for @img in a malloc'd buffer. */
static jb_status encode(const jb__state_image *img, unsigned char **out, size_t *out_len,
                        jb_error *err)
{
    size_t plen = payload_size(img);
    if (plen > STATE_MAX_FILE)
        return jb_error_set(err, JB_ETOOBIG, "the coordinator's state is %zu bytes", plen);
    size_t len = STATE_HEADER + plen + STATE_TRAILER;
    unsigned char *buf = malloc(len);
    if (buf == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory encoding the coordinator's state");
    memcpy(buf, STATE_MAGIC, STATE_MAGIC_LEN);
    unsigned char *p = put_u32(buf + STATE_MAGIC_LEN, STATE_VERSION);
    p = put_u32(p, (uint32_t)plen);
    p = put_u32(p, (uint32_t)img->n_leases);
    for (size_t i = 0; i < img->n_leases; i++) {
        const jb__saved_lease *l = &img->leases[i];
        p = put_u32(p, l->device);
        p = put_u32(p, l->pid);
        p = put_i64(p, l->granted_ms);
        p = put_i64(p, l->expires_ms);
        p = put_str(p, l->lease_id);
        p = put_str(p, l->component);
        p = put_str(p, l->reason);
    }
    p = put_u32(p, (uint32_t)img->n_spends);
    for (size_t i = 0; i < img->n_spends; i++) {
        p = put_i64(p, img->spends[i].at_ms);
        p = put_u32(p, img->spends[i].count);
        p = put_str(p, img->spends[i].component);
    }
    put_u32(p, jb__crc32c(0, buf, (size_t)(p - buf)));
    *out = buf;
    *out_len = len;
    return JB_OK;
}

/* ---- Decoding ---------------------------------------------------------------- */

typedef struct reader {
    const unsigned char *p;
    size_t left;
    int bad; /* ran past the end, or a malformed string */
} reader;

static uint32_t get_u32(reader *r)
{
    if (r->left < 4) {
        r->bad = 1;
        return 0;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)r->p[i] << (8 * i);
    r->p += 4;
    r->left -= 4;
    return v;
}

static int64_t get_i64(reader *r)
{
    if (r->left < 8) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    r->left -= 8;
    return (int64_t)v;
}

/* A malloc'd copy; NULL for a saved NULL (when @nullable) or on error. */
static char *get_str(reader *r, int nullable)
{
    uint32_t n = get_u32(r);
    if (r->bad)
        return NULL;
    if (n == STR_NULL) {
        r->bad = !nullable;
        return NULL;
    }
    if (n > r->left || memchr(r->p, '\0', n) != NULL) {
        r->bad = 1;
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        r->bad = 1;
        return NULL;
    }
    memcpy(s, r->p, n);
    s[n] = '\0';
    r->p += n;
    r->left -= n;
    return s;
}

static jb_status corrupt(const char *path, jb_error *err, const char *why)
{
    return jb_error_set(err, JB_ECORRUPT,
                        "state file %s is damaged: %s (move it aside to start with an empty "
                        "state: the GPU leases and the spent API budget it held are then lost)",
                        path, why);
}

static void decode_leases(reader *r, jb__state_image *img)
{
    uint32_t n = get_u32(r);
    if (r->bad || n > r->left / LEASE_MIN) {
        r->bad = 1;
        return;
    }
    img->leases = n > 0 ? calloc(n, sizeof(*img->leases)) : NULL;
    if (n > 0 && img->leases == NULL) {
        r->bad = 1;
        return;
    }
    for (; img->n_leases < n && !r->bad; img->n_leases++) {
        jb__saved_lease *l = &img->leases[img->n_leases];
        l->device = get_u32(r);
        l->pid = get_u32(r);
        l->granted_ms = get_i64(r);
        l->expires_ms = get_i64(r);
        l->lease_id = get_str(r, 0);
        l->component = get_str(r, 0);
        l->reason = get_str(r, 1);
    }
}

static void decode_spends(reader *r, jb__state_image *img)
{
    uint32_t n = get_u32(r);
    if (r->bad || n > r->left / SPEND_MIN) {
        r->bad = 1;
        return;
    }
    img->spends = n > 0 ? calloc(n, sizeof(*img->spends)) : NULL;
    if (n > 0 && img->spends == NULL) {
        r->bad = 1;
        return;
    }
    for (; img->n_spends < n && !r->bad; img->n_spends++) {
        jb__saved_spend *s = &img->spends[img->n_spends];
        s->at_ms = get_i64(r);
        s->count = get_u32(r);
        s->component = get_str(r, 0);
    }
}

static jb_status decode(const char *path, const unsigned char *buf, size_t len,
                        jb__state_image *img, jb_error *err)
{
    if (len < STATE_HEADER + STATE_TRAILER)
        return corrupt(path, err, "truncated (shorter than its header)");
    if (memcmp(buf, STATE_MAGIC, STATE_MAGIC_LEN) != 0)
        return corrupt(path, err, "bad magic (not a coordinator state file)");
    reader hr = {buf + STATE_MAGIC_LEN, 8, 0};
    uint32_t version = get_u32(&hr);
    uint32_t plen = get_u32(&hr);
    if ((size_t)plen != len - STATE_HEADER - STATE_TRAILER)
        return corrupt(path, err, "its size does not match its header (truncated or extended)");
    reader tr = {buf + len - STATE_TRAILER, STATE_TRAILER, 0};
    if (get_u32(&tr) != jb__crc32c(0, buf, len - STATE_TRAILER))
        return corrupt(path, err, "CRC mismatch");
    if (version != STATE_VERSION)
        return jb_error_set(err, JB_EINCOMPATIBLE,
                            "state file %s has version %u; this build reads version %d", path,
                            version, STATE_VERSION);
    reader r = {buf + STATE_HEADER, plen, 0};
    decode_leases(&r, img);
    decode_spends(&r, img);
    if (r.bad || r.left != 0) {
        jb__state_image_release(img);
        return corrupt(path, err, "its contents do not parse");
    }
    return JB_OK;
}

/* ---- Files ------------------------------------------------------------------- */

static jb_status io_error(jb_error *err, const char *what, const char *path, int e)
{
    return jb_error_set(err, JB_EIO, "cannot %s %s: %s", what, path, strerror(e));
}

static jb_status read_all(const char *path, unsigned char **out, size_t *out_len, jb_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? JB_ENOENT : io_error(err, "open", path, errno);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return io_error(err, "stat", path, e);
    }
    if ((uint64_t)sb.st_size > STATE_MAX_FILE) {
        close(fd);
        return corrupt(path, err, "larger than 1 GiB");
    }
    size_t len = (size_t)sb.st_size, got = 0;
    unsigned char *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL) {
        close(fd);
        return jb_error_set(err, JB_ENOMEM, "out of memory reading %s", path);
    }
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return io_error(err, "read", path, e);
        }
        got += (size_t)n;
    }
    close(fd);
    *out = buf;
    *out_len = len;
    return JB_OK;
}

/* Runs on the threadpool: the whole image, replaced atomically (core/file.h). */
static jb_status write_file(const jb__state *st, jb_error *err)
{
    return jb__file_write_atomic(st->path, st->buf, st->len, err);
}

/* ---- Open ---------------------------------------------------------------------- */

static void state_free(jb__state *st)
{
    free(st->path);
    free(st->tmp_path);
    free(st);
}

static jb_status set_paths(jb__state *st, const char *path, jb_error *err)
{
    size_t n = strlen(path);
    st->path = strdup(path);
    st->tmp_path = malloc(n + 5);
    if (st->path == NULL || st->tmp_path == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    memcpy(st->tmp_path, path, n);
    memcpy(st->tmp_path + n, ".tmp", 5);
    return JB_OK;
}

static void remove_leftover(const jb__state *st)
{
    if (unlink(st->tmp_path) == 0)
        jb_log(JB_LOG_WARN, "coord", "removed the leftover of a state write cut short", "path=%s",
               st->tmp_path);
}

static jb_status load(const jb__state *st, jb__state_image *img, jb_error *err)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    jb_status s = read_all(st->path, &buf, &len, err);
    if (s == JB_ENOENT)
        return JB_OK;
    if (s != JB_OK)
        return s;
    s = decode(st->path, buf, len, img, err);
    free(buf);
    return s;
}

jb_status jb__state_open(jb_coord *co, jb__state_image *img, jb_error *err)
{
    *img = (jb__state_image){0};
    co->state = NULL;
    jb__state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    st->co = co;
    st->next.tail = &st->next.head;
    st->inflight.tail = &st->inflight.head;
    const char *path = co->opts.state_path;
    if (path != NULL && path[0] != '\0') {
        jb_status s = set_paths(st, path, err);
        if (s == JB_OK) {
            remove_leftover(st);
            s = load(st, img, err);
        }
        if (s != JB_OK) {
            state_free(st);
            return s;
        }
    }
    co->state = st;
    return JB_OK;
}

/* ---- Group commit ------------------------------------------------------------ */

static void on_kick(uv_timer_t *t);

static void ensure_kick(jb__state *st)
{
    if (st->kick_ready)
        return;
    uv_timer_init(st->co->loop, &st->kick);
    st->kick.data = st;
    st->kick_ready = 1;
}

/* Starts the next write (or the next round of callbacks) on the next loop turn. */
static void arm(jb__state *st)
{
    ensure_kick(st);
    if (st->writing || st->kick_armed)
        return;
    st->kick_armed = 1;
    uv_timer_start(&st->kick, on_kick, 0, 0);
}

static pending_list take(pending_list *l)
{
    pending_list out = *l;
    if (out.head == NULL)
        out.tail = &out.head;
    l->head = NULL;
    l->tail = &l->head;
    return out;
}

/* Runs and frees every callback of @l. */
static void run_all(pending_list l, jb_status status, const jb_error *err)
{
    pending *p = l.head;
    while (p != NULL) {
        pending *next = p->next;
        p->cb(status, status == JB_OK ? NULL : err, p->ud);
        free(p);
        p = next;
    }
}

static pending *pending_new(jb__persist_cb cb, void *ud)
{
    pending *p = malloc(sizeof(*p));
    if (p == NULL)
        JB_BUG("out of memory queueing a state write");
    // cppcheck-suppress nullPointerRedundantCheck ; JB_BUG does not return
    *p = (pending){cb, ud, NULL};
    return p;
}

/* Frees the callbacks of @l without running them. */
static void drop_all(pending_list l)
{
    while (l.head != NULL) {
        pending *next = l.head->next;
        free(l.head);
        l.head = next;
    }
}

void jb__coord_persist(jb_coord *co, jb__persist_cb cb, void *userdata)
{
    jb__state *st = co->state;
    pending *p = pending_new(cb, userdata);
    *st->next.tail = p;
    st->next.tail = &p->next;
    arm(st);
}

static jb_status take_image(jb__state *st, jb_error *err)
{
    jb_coord *co = st->co;
    jb__state_image img = {0};
    jb_status s = co->gpu != NULL ? jb__gpu_save(co->gpu, &img) : JB_OK;
    if (s == JB_OK && co->quota != NULL)
        s = jb__quota_save(co->quota, &img);
    if (s != JB_OK)
        s = jb_error_set(err, s, "cannot take the coordinator's state: %s", jb_strerror(s));
    else
        s = encode(&img, &st->buf, &st->len, err);
    jb__state_image_release(&img);
    return s;
}

static void do_write(uv_work_t *w)
{
    jb__state *st = w->data;
    jb_error_clear(&st->werr);
    st->wstatus = write_file(st, &st->werr);
}

static void maybe_finish_close(jb__state *st);
static void on_kick_closed(uv_handle_t *h);

static void after_write(uv_work_t *w, int status)
{
    jb__state *st = w->data;
    (void)status; /* uv_cancel is never called on it */
    st->writing = 0;
    st->writes++;
    free(st->buf);
    st->buf = NULL;
    if (st->wstatus != JB_OK)
        jb_log(JB_LOG_ERROR, "coord", "cannot write the state file", "path=%s reason=\"%s\"",
               st->path, st->werr.message);
    if (st->abandoned) {
        drop_all(take(&st->inflight));
        uv_close((uv_handle_t *)&st->kick, on_kick_closed);
        return;
    }
    jb_error werr = st->werr;
    run_all(take(&st->inflight), st->wstatus, &werr);
    if (st->next.head != NULL || (st->closing && !st->final_started))
        arm(st);
    else
        maybe_finish_close(st);
}

static void start_write(jb__state *st)
{
    if (st->closing)
        st->final_started = 1;
    if (st->path == NULL) {
        run_all(take(&st->next), JB_OK, NULL);
        return;
    }
    jb_error err;
    jb_status s = take_image(st, &err);
    if (s != JB_OK) {
        jb_log(JB_LOG_ERROR, "coord", "cannot write the state file", "path=%s reason=\"%s\"",
               st->path, err.message);
        run_all(take(&st->next), s, &err);
        return;
    }
    st->inflight = take(&st->next);
    st->writing = 1;
    st->work.data = st;
    uv_queue_work(st->co->loop, &st->work, do_write, after_write);
}

static void on_kick(uv_timer_t *t)
{
    jb__state *st = t->data;
    st->kick_armed = 0;
    if (st->writing)
        return;
    if (st->next.head != NULL || (st->closing && !st->final_started))
        start_write(st);
    if (st->writing)
        return;
    if (st->next.head != NULL)
        arm(st);
    else
        maybe_finish_close(st);
}

/* ---- Close --------------------------------------------------------------------- */

static void on_kick_closed(uv_handle_t *h)
{
    jb__state *st = h->data;
    void (*cb)(void *) = st->close_cb;
    void *ud = st->close_ud;
    state_free(st);
    if (cb != NULL)
        cb(ud);
}

static void maybe_finish_close(jb__state *st)
{
    if (!st->closing || st->writing || st->kick_armed || st->next.head != NULL)
        return;
    if (st->path != NULL && !st->final_started)
        return;
    uv_close((uv_handle_t *)&st->kick, on_kick_closed);
}

void jb__state_close(jb__state *st, void (*cb)(void *ud), void *ud)
{
    if (st == NULL) {
        if (cb != NULL)
            cb(ud);
        return;
    }
    if (st->closing)
        JB_BUG("the state is closed twice");
    st->closing = 1;
    st->close_cb = cb;
    st->close_ud = ud;
    if (cb == NULL) {
        /* jb_coord_new failed: the parts are freed at once, nothing is written. */
        st->abandoned = 1;
        drop_all(take(&st->next));
        if (st->writing)
            return; /* after_write closes */
        if (!st->kick_ready) {
            state_free(st);
            return;
        }
        uv_timer_stop(&st->kick);
        st->kick_armed = 0;
        uv_close((uv_handle_t *)&st->kick, on_kick_closed);
        return;
    }
    if (st->path == NULL)
        st->final_started = 1;
    arm(st);
}
