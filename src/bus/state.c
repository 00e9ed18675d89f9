/*
 * Saved group positions: what makes a group's place, its acks and its
 * delivery attempts survive a restart (include/jimbot/bus.h).
 *
 * One small text file, replaced atomically (write a temporary file, fsync,
 * rename over, fsync the directory: each step's result is checked), so a
 * crash leaves the old or the new version, never a mix:
 *
 *   jimbot-bus-groups 2
 *   group NAME PATTERN ACK_WAIT_MS MAX_DELIVER FLOOR N_ACKED N_ATTEMPTS IDLE_SINCE_MS
 *   acked SEQ SEQ ...            (N_ACKED sequences above FLOOR)
 *   attempts SEQ:N SEQ:N ...     (N_ATTEMPTS taken, unacked sequences and their deliveries)
 *   end
 *
 * FLOOR is the lowest sequence the group still needs, never above what is
 * durable, so a restart may redeliver what was acked after the last save
 * (at-least-once) but never skips an event; the attempts keep max_deliver
 * counting from where it was. IDLE_SINCE_MS is the wall-clock time its last
 * member left (0: it had members), turned into the monotonic clock at load
 * so that idle expiry survives a restart. Private groups are not saved.
 * Version 1 files (no attempts, no idle time) are still read. The groups'
 * backlog (floor to the end of the log) is counted into their pending by
 * one pass over the log in slices, after the start (group.c).
 *
 * Loading checks every number against the line it came from (a count
 * cannot exceed what the line can hold, a line is at most MAX_LINE bytes):
 * a truncated or hostile file is a clear error, never a huge allocation.
 *
 * Saving runs on libuv's threadpool, one save at a time; the buffer is
 * built on the loop thread, so the worker touches no engine state.
 */
#include "bus/bus_internal.h"

#include "core/buf.h"
#include "core/file.h"
#include "jimbot/log.h"
#include "jimbot/topic.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_MAGIC    "jimbot-bus-groups 2"
#define STATE_MAGIC_V1 "jimbot-bus-groups 1"
#define MAX_LINE       (4u << 20)

typedef struct jb__state_job jb__state_job;
struct jb__state_job {
    jb_bus *bus;
    jb__buf text;
    char *path;
    jb_status status;
    char error[256];
};

static int cmp_restored(const void *a, const void *b)
{
    uint64_t x = ((const jb__restored *)a)->seq, y = ((const jb__restored *)b)->seq;
    return x < y ? -1 : x > y;
}

/* The wall-clock time the group became idle, 0 while it has members. */
static int64_t idle_since_wall(const jb_bus *bus, const jb__group *g)
{
    if (g->n_subs > 0)
        return 0;
    int64_t idle = (int64_t)jb__bus_now_ms(bus) - g->idle_since_ms;
    int64_t wall = jb__bus_wall_ms(bus) - (idle > 0 ? idle : 0);
    return wall > 0 ? wall : 1;
}

static void serialize_group(jb_bus *bus, const jb__group *g, jb__buf *acked, jb__buf *tries,
                            jb__buf *out)
{
    uint64_t limit = bus->durable_seq + 1;
    uint64_t floor = jb__group_floor(g);
    if (floor > limit)
        floor = limit;
    size_t n_acked = 0, n_tries = 0;
    jb__buf_reset(acked);
    jb__buf_reset(tries);
    for (size_t i = 0; i < g->count; i++) {
        const jb__entry *en = &g->ring[(g->head + i) & (g->cap - 1)];
        if (en->seq < floor || en->seq >= limit)
            continue;
        if (en->state == JB__DONE && en->seq > floor) {
            jb__buf_printf(acked, " %llu", (unsigned long long)en->seq);
            n_acked++;
        } else if (en->state != JB__DONE && en->attempts > 0) {
            jb__buf_printf(tries, " %llu:%u", (unsigned long long)en->seq, en->attempts);
            n_tries++;
        }
    }
    /* What was restored at start and not yet reached by the cursor. */
    for (size_t i = g->restored_pos; i < g->n_restored; i++) {
        const jb__restored *r = &g->restored[i];
        if (r->seq < floor || (r->seq == floor && r->attempts == 0) || r->seq >= limit)
            continue;
        if (r->attempts == 0) {
            jb__buf_printf(acked, " %llu", (unsigned long long)r->seq);
            n_acked++;
        } else {
            jb__buf_printf(tries, " %llu:%u", (unsigned long long)r->seq, r->attempts);
            n_tries++;
        }
    }
    jb__buf_printf(out, "group %s %s %u %u %llu %zu %zu %lld\nacked%s\nattempts%s\n", g->name,
                   g->pattern, g->ack_wait_ms, g->max_deliver, (unsigned long long)floor, n_acked,
                   n_tries, (long long)idle_since_wall(bus, g), acked->data ? acked->data : "",
                   tries->data ? tries->data : "");
}

static void serialize(jb_bus *bus, jb__buf *out)
{
    jb__buf_puts(out, STATE_MAGIC "\n");
    size_t it = 0;
    const char *name;
    void *value;
    jb__buf acked, tries;
    jb__buf_init(&acked);
    jb__buf_init(&tries);
    while (jb__strmap_next(&bus->groups, &it, &name, &value)) {
        const jb__group *g = value;
        if (!g->private_group && !g->doomed)
            serialize_group(bus, g, &acked, &tries, out);
    }
    jb__buf_release(&acked);
    jb__buf_release(&tries);
    jb__buf_puts(out, "end\n");
}

static jb_status write_atomically(const char *path, const jb__buf *text, char *error,
                                  size_t error_size)
{
    jb_error err;
    jb_status st = jb__file_write_atomic(path, text->data, text->len, &err);
    if (st != JB_OK && error_size > 0) {
        size_t n = strnlen(err.message, error_size - 1);
        memcpy(error, err.message, n);
        error[n] = '\0';
    }
    return st;
}

static void save_work(uv_work_t *req)
{
    jb__state_job *job = req->data;
    job->status = write_atomically(job->path, &job->text, job->error, sizeof(job->error));
}

void jb__bus_maybe_finish_close(jb_bus *bus);

static void save_done(uv_work_t *req, int status)
{
    jb__state_job *job = req->data;
    jb_bus *bus = job->bus;
    bus->state_saving = 0;
    if (status != 0 || job->status != JB_OK) {
        bus->state_dirty = 1;
        jb_log(JB_LOG_ERROR, "bus", "could not save group positions", "error=\"%s\"",
               status != 0 ? uv_strerror(status) : job->error);
    }
    jb__buf_release(&job->text);
    free(job->path);
    free(job);
    jb__bus_maybe_finish_close(bus);
}

void jb__state_save(jb_bus *bus)
{
    if (bus->state_path == NULL) {
        bus->state_dirty = 0;
        return;
    }
    if (bus->state_saving || bus->closing)
        return;
    jb__state_job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return;
    job->bus = bus;
    job->path = strdup(bus->state_path);
    jb__buf_init(&job->text);
    serialize(bus, &job->text);
    bus->state_dirty = 0;
    bus->state_saving = 1;
    bus->state_work.data = job;
    if (job->path == NULL ||
        uv_queue_work(bus->loop, &bus->state_work, save_work, save_done) != 0) {
        bus->state_saving = 0;
        bus->state_dirty = 1;
        jb__buf_release(&job->text);
        free(job->path);
        free(job);
    }
}

jb_status jb__state_save_now(jb_bus *bus, jb_error *err)
{
    if (bus->state_path == NULL)
        return JB_OK;
    jb__buf text;
    jb__buf_init(&text);
    serialize(bus, &text);
    char error[256];
    jb_status st = write_atomically(bus->state_path, &text, error, sizeof(error));
    jb__buf_release(&text);
    if (st != JB_OK)
        return jb_error_set(err, st, "%s", error);
    bus->state_dirty = 0;
    return JB_OK;
}

/* ---- loading ------------------------------------------------------------ */

typedef struct loader {
    jb_bus *bus;
    FILE *f;
    char *line; /* MAX_LINE + 2 bytes */
    size_t len;
    int lineno;
    int version;
    jb_error *err;
} loader;

static jb_status parse_error(loader *l, const char *why)
{
    return jb_error_set(l->err, JB_ECORRUPT,
                        "%s:%d: %s (move the file away to start the groups afresh)",
                        l->bus->state_path, l->lineno, why);
}

/* Reads the next line without its newline; 0 at the end of the file, -1 if too long. */
static int next_line(loader *l)
{
    if (fgets(l->line, MAX_LINE + 2, l->f) == NULL)
        return 0;
    l->lineno++;
    l->len = strlen(l->line);
    if (l->len > 0 && l->line[l->len - 1] == '\n')
        l->line[--l->len] = '\0';
    else if (!feof(l->f))
        return -1;
    return 1;
}

static jb_status expect_line(loader *l, const char *word)
{
    int r = next_line(l);
    size_t n = strlen(word);
    if (r < 0)
        return parse_error(l, "line too long");
    if (r == 0 || strncmp(l->line, word, n) != 0 || (l->line[n] != ' ' && l->line[n] != '\0')) {
        char why[64];
        snprintf(why, sizeof(why), "missing %s line", word);
        return parse_error(l, why);
    }
    return JB_OK;
}

/*
 * Parses @n values after the line's first word into @out: plain
 * sequences (acked) or SEQ:N pairs (attempts).
 */
static jb_status parse_values(loader *l, size_t n, int pairs, jb__restored *out)
{
    char *p = l->line + strcspn(l->line, " ");
    for (size_t i = 0; i < n; i++) {
        char *end;
        errno = 0;
        unsigned long long seq = strtoull(p, &end, 10);
        if (end == p || errno != 0 || seq == 0)
            return parse_error(l, "bad sequence, or fewer values than announced");
        unsigned long tries = 0;
        if (pairs) {
            if (*end != ':')
                return parse_error(l, "attempts must be SEQ:N");
            p = end + 1;
            tries = strtoul(p, &end, 10);
            if (end == p || errno != 0 || tries == 0 || tries > 1000000)
                return parse_error(l, "bad attempt count");
        }
        out[i] = (jb__restored){.seq = seq, .attempts = (uint32_t)tries};
        p = end;
    }
    while (*p == ' ')
        p++;
    if (*p != '\0')
        return parse_error(l, "more values than announced");
    return JB_OK;
}

typedef struct group_line {
    char name[160], pattern[JB_TOPIC_MAX_BYTES + 1];
    unsigned ack_wait, max_deliver;
    unsigned long long floor;
    size_t n_acked, n_tries;
    long long idle_wall;
} group_line;

static jb_status parse_group_line(loader *l, group_line *gl)
{
    int want = l->version == 1 ? 6 : 8; /* and nothing after */
    char tail;
    gl->n_tries = 0;
    gl->idle_wall = 0;
    int got = sscanf(l->line, "group %159s %255s %u %u %llu %zu %zu %lld %c", gl->name, gl->pattern,
                     &gl->ack_wait, &gl->max_deliver, &gl->floor, &gl->n_acked, &gl->n_tries,
                     &gl->idle_wall, &tail);
    if (got != want || strlen(gl->name) > 128 || jb_pattern_validate(gl->pattern, NULL) != JB_OK ||
        gl->ack_wait == 0 || gl->max_deliver == 0)
        return parse_error(l, "malformed group line");
    if (gl->floor == 0 || gl->floor > (unsigned long long)INT64_MAX || gl->idle_wall < 0)
        return parse_error(l, "floor or idle time out of range");
    /* Each value takes at least two bytes of its line ("acked 1 2"). */
    if (gl->n_acked > MAX_LINE / 2 || gl->n_tries > MAX_LINE / 4)
        return parse_error(l, "more values announced than a line can hold");
    if (jb__strmap_get(&l->bus->groups, gl->name) != NULL)
        return parse_error(l, "a group appears twice");
    return JB_OK;
}

/*
 * Sorts, drops repeats and what is out of range (acks above @floor, attempts
 * from @floor on); an ack wins over attempts for the same sequence.
 */
static size_t tidy_restored(jb__restored *r, size_t n, uint64_t floor, uint64_t last)
{
    qsort(r, n, sizeof(*r), cmp_restored);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].seq < floor || (r[i].seq == floor && r[i].attempts == 0) || r[i].seq > last)
            continue;
        if (k > 0 && r[k - 1].seq == r[i].seq) {
            if (r[i].attempts == 0)
                r[k - 1].attempts = 0;
            continue;
        }
        r[k++] = r[i];
    }
    return k;
}

/* Turns a saved wall-clock idle time into the monotonic clock; a time in the future is now. */
static int64_t idle_since_mono(jb_bus *bus, long long idle_wall)
{
    int64_t now = (int64_t)jb__bus_now_ms(bus);
    if (idle_wall == 0)
        return now;
    int64_t age = jb__bus_wall_ms(bus) - (int64_t)idle_wall;
    return now - (age > 0 ? age : 0);
}

static jb_status load_group(loader *l)
{
    jb_bus *bus = l->bus;
    group_line gl;
    jb_status st = parse_group_line(l, &gl);
    if (st != JB_OK)
        return st;
    size_t n = gl.n_acked + gl.n_tries;
    jb__restored *r = n ? calloc(n, sizeof(*r)) : NULL;
    if (n > 0 && r == NULL)
        return jb_error_set(l->err, JB_ENOMEM, "out of memory loading group state");
    if ((st = expect_line(l, "acked")) == JB_OK)
        st = parse_values(l, gl.n_acked, 0, r);
    if (st == JB_OK && l->version > 1 && (st = expect_line(l, "attempts")) == JB_OK)
        st = parse_values(l, gl.n_tries, 1, r + gl.n_acked);
    if (st != JB_OK) {
        free(r);
        return st;
    }
    uint64_t last = bus->stats.last_sequence;
    if (gl.floor > last + 1) {
        jb_log(JB_LOG_WARN, "bus", "group position is past the end of the log; rewinding",
               "group=%s floor=%llu last_sequence=%llu", gl.name, gl.floor,
               (unsigned long long)last);
        gl.floor = last + 1;
    }
    jb__group *g = jb__group_new(bus, gl.name, gl.pattern, gl.ack_wait, gl.max_deliver);
    if (g == NULL) {
        free(r);
        return jb_error_set(l->err, JB_ENOMEM, "out of memory loading group '%s'", gl.name);
    }
    g->restored = r;
    g->n_restored = n ? tidy_restored(r, n, gl.floor, last) : 0;
    g->cursor = gl.floor;
    g->in_pass = 1;
    if (bus->count_end == 0 || gl.floor < bus->counted_to)
        bus->counted_to = gl.floor;
    bus->count_end = last;
    g->idle_since_ms = idle_since_mono(bus, gl.idle_wall);
    return JB_OK;
}

static jb_status load_lines(loader *l)
{
    int r = next_line(l);
    if (r == 0)
        return parse_error(l, "empty file");
    if (r > 0 && strcmp(l->line, STATE_MAGIC) == 0)
        l->version = 2;
    else if (r > 0 && strcmp(l->line, STATE_MAGIC_V1) == 0)
        l->version = 1;
    else
        return parse_error(l, "not a group state file");
    for (;;) {
        r = next_line(l);
        if (r < 0)
            return parse_error(l, "line too long");
        if (r == 0)
            return parse_error(l, "truncated (no end line)");
        if (strcmp(l->line, "end") == 0)
            return JB_OK;
        jb_status st = load_group(l);
        if (st != JB_OK)
            return st;
    }
}

jb_status jb__state_load(jb_bus *bus, jb_error *err)
{
    if (bus->state_path == NULL)
        return JB_OK;
    FILE *f = fopen(bus->state_path, "r");
    if (f == NULL) {
        if (errno == ENOENT)
            return JB_OK;
        return jb_error_set(err, JB_EIO, "cannot open %s: %s", bus->state_path, strerror(errno));
    }
    loader l = {.bus = bus, .f = f, .line = malloc(MAX_LINE + 2), .err = err};
    jb_status st = l.line != NULL ? load_lines(&l)
                                  : jb_error_set(err, JB_ENOMEM, "out of memory loading groups");
    free(l.line);
    fclose(f);
    if (st == JB_OK && bus->groups.len > 0)
        jb_log(JB_LOG_INFO, "bus", "group positions loaded", "groups=%zu file=%s", bus->groups.len,
               bus->state_path);
    return st;
}
