/*
 * Saved group positions: what makes a group's place and its acks survive a
 * restart (include/jimbot/bus.h).
 *
 * One small text file, replaced atomically (write a temporary file, fsync,
 * rename over, fsync the directory), so a crash leaves the old or the new
 * version, never a mix:
 *
 *   jimbot-bus-groups 1
 *   group NAME PATTERN ACK_WAIT_MS MAX_DELIVER FLOOR N_ACKED
 *   acked SEQ SEQ ...            (N_ACKED sequences above FLOOR, ascending)
 *   end
 *
 * FLOOR is the lowest sequence the group still needs, never above what is
 * durable, so a restart may redeliver what was acked after the last save
 * (at-least-once) but never skips an event. Private groups are not saved.
 *
 * Saving runs on libuv's threadpool, one save at a time; the buffer is
 * built on the loop thread, so the worker touches no engine state.
 */
#include "bus/bus_internal.h"

#include "core/buf.h"
#include "jimbot/log.h"
#include "jimbot/topic.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATE_MAGIC "jimbot-bus-groups 1"

typedef struct jb__state_job {
    jb_bus *bus;
    jb__buf text;
    char *path;
    jb_status status;
    char error[256];
} jb__state_job;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void serialize(jb_bus *bus, jb__buf *out)
{
    jb__buf_puts(out, STATE_MAGIC "\n");
    uint64_t limit = bus->durable_seq + 1;
    size_t it = 0;
    const char *name;
    void *value;
    jb__buf acked;
    jb__buf_init(&acked);
    while (jb__strmap_next(&bus->groups, &it, &name, &value)) {
        jb__group *g = value;
        if (g->private_group || g->doomed)
            continue;
        uint64_t floor = jb__group_floor(g);
        if (floor > limit)
            floor = limit;
        size_t n_acked = 0;
        jb__buf_reset(&acked);
        for (size_t i = 0; i < g->count; i++) {
            const jb__entry *en = &g->ring[(g->head + i) & (g->cap - 1)];
            if (en->state == JB__DONE && en->seq > floor && en->seq < limit) {
                jb__buf_printf(&acked, " %llu", (unsigned long long)en->seq);
                n_acked++;
            }
        }
        /* Acks restored at start and not yet reached by the scan. */
        for (size_t i = g->restored_pos; i < g->n_restored; i++) {
            if (g->restored_acked[i] > floor && g->restored_acked[i] < limit) {
                jb__buf_printf(&acked, " %llu", (unsigned long long)g->restored_acked[i]);
                n_acked++;
            }
        }
        jb__buf_printf(out, "group %s %s %u %u %llu %zu\nacked%s\n", g->name, g->pattern,
                       g->ack_wait_ms, g->max_deliver, (unsigned long long)floor, n_acked,
                       acked.data ? acked.data : "");
    }
    jb__buf_release(&acked);
    jb__buf_puts(out, "end\n");
}

static jb_status write_atomically(const char *path, const jb__buf *text, char *error,
                                  size_t error_size)
{
    size_t n = strlen(path);
    char *tmp = malloc(n + 5);
    char *dir_copy = strdup(path);
    if (tmp == NULL || dir_copy == NULL) {
        free(tmp);
        free(dir_copy);
        snprintf(error, error_size, "out of memory");
        return JB_ENOMEM;
    }
    snprintf(tmp, n + 5, "%s.tmp", path);
    jb_status st = JB_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(error, error_size, "cannot create %s: %s", tmp, strerror(errno));
        st = JB_EIO;
        goto out;
    }
    size_t done = 0;
    while (done < text->len) {
        ssize_t w = write(fd, text->data + done, text->len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            snprintf(error, error_size, "cannot write %s: %s", tmp, strerror(errno));
            st = JB_EIO;
            break;
        }
        done += (size_t)w;
    }
    if (st == JB_OK && fsync(fd) != 0) {
        snprintf(error, error_size, "cannot fsync %s: %s", tmp, strerror(errno));
        st = JB_EIO;
    }
    close(fd);
    if (st == JB_OK && rename(tmp, path) != 0) {
        snprintf(error, error_size, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        st = JB_EIO;
    }
    if (st == JB_OK) {
        int dfd = open(dirname(dir_copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        unlink(tmp);
    }
out:
    free(tmp);
    free(dir_copy);
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

static jb_status parse_error(jb_error *err, const char *path, int line, const char *why)
{
    return jb_error_set(err, JB_ECORRUPT,
                        "%s:%d: %s (move the file away to start the groups "
                        "afresh)",
                        path, line, why);
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
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, ended = 0;
    jb_status st = JB_OK;
    uint64_t last = bus->stats.last_sequence;
    while (st == JB_OK && getline(&line, &cap, f) > 0) {
        lineno++;
        line[strcspn(line, "\n")] = '\0';
        if (lineno == 1) {
            if (strcmp(line, STATE_MAGIC) != 0)
                st = parse_error(err, bus->state_path, lineno, "not a group state file");
            continue;
        }
        if (strcmp(line, "end") == 0) {
            ended = 1;
            break;
        }
        char name[160], pattern[JB_TOPIC_MAX_BYTES + 1];
        unsigned ack_wait, max_deliver;
        unsigned long long floor;
        size_t n_acked;
        if (sscanf(line, "group %159s %255s %u %u %llu %zu", name, pattern, &ack_wait, &max_deliver,
                   &floor, &n_acked) != 6 ||
            jb_pattern_validate(pattern, NULL) != JB_OK || max_deliver == 0) {
            st = parse_error(err, bus->state_path, lineno, "malformed group line");
            break;
        }
        lineno++;
        if (getline(&line, &cap, f) <= 0 || strncmp(line, "acked", 5) != 0) {
            st = parse_error(err, bus->state_path, lineno, "missing acked line");
            break;
        }
        uint64_t *acked = n_acked ? malloc(n_acked * sizeof(*acked)) : NULL;
        if (n_acked > 0 && acked == NULL) {
            st = jb_error_set(err, JB_ENOMEM, "out of memory loading group state");
            break;
        }
        char *p = line + 5;
        size_t got = 0;
        for (; got < n_acked; got++) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(p, &end, 10);
            if (end == p || errno != 0)
                break;
            acked[got] = v;
            p = end;
        }
        if (got != n_acked) {
            free(acked);
            st = parse_error(err, bus->state_path, lineno, "acked line shorter than announced");
            break;
        }
        if (floor > last + 1) {
            jb_log(JB_LOG_WARN, "bus", "group position is past the end of the log; rewinding",
                   "group=%s floor=%llu last_sequence=%llu", name, floor, (unsigned long long)last);
            floor = last + 1;
        }
        jb__group *g = jb__group_new(bus, name, pattern, ack_wait, max_deliver);
        if (g == NULL) {
            free(acked);
            st = jb_error_set(err, JB_ENOMEM, "out of memory loading group '%s'", name);
            break;
        }
        if (n_acked > 0)
            qsort(acked, n_acked, sizeof(*acked), cmp_u64);
        g->restored_acked = acked;
        g->n_restored = n_acked;
        g->cursor = floor;
        g->live = floor > last;
    }
    free(line);
    fclose(f);
    if (st == JB_OK && !ended)
        st = parse_error(err, bus->state_path, lineno, "truncated (no end line)");
    if (st == JB_OK && bus->groups.len > 0)
        jb_log(JB_LOG_INFO, "bus", "group positions loaded", "groups=%zu file=%s", bus->groups.len,
               bus->state_path);
    return st;
}
