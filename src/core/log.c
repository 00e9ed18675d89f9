/*
 * Structured log lines (include/jimbot/log.h).
 *
 * The sink and the level are process-wide, set by the embedding program
 * before it starts threads; reads of them are relaxed atomics so a late
 * change is safe. Each line is built in a stack buffer and handed to the
 * sink in one call, so concurrent writers never interleave within a line.
 */
#include "jimbot/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Atomic(jb_log_sink_fn) log_sink;
static _Atomic(void *) log_sink_userdata;
static atomic_int log_threshold = JB_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void jb_log_set_sink(jb_log_sink_fn sink, void *userdata)
{
    atomic_store(&log_sink_userdata, userdata);
    atomic_store(&log_sink, sink);
}

void jb_log_set_level(jb_log_level level)
{
    atomic_store(&log_threshold, (int)level);
}

int jb_log_level_parse(const char *name, jb_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (jb_log_level)i;
            return 0;
        }
    }
    return -1;
}

void jb_log(jb_log_level level, const char *module, const char *message, const char *kv_fmt, ...)
{
    if ((int)level < atomic_load_explicit(&log_threshold, memory_order_relaxed))
        return;

    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %-7s %s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level], module, message);
    if (kv_fmt != NULL && n > 0 && (size_t)n < sizeof(line) - 1) {
        va_list ap;
        line[n++] = ' ';
        va_start(ap, kv_fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, kv_fmt, ap);
        va_end(ap);
    }

    jb_log_sink_fn sink = atomic_load(&log_sink);
    if (sink != NULL) {
        sink(level, line, atomic_load(&log_sink_userdata));
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

const char *jb_log_quote(char *buf, unsigned size, const char *value)
{
    int plain = value[0] != '\0';
    for (const char *p = value; *p && plain; p++) {
        if (*p == ' ' || *p == '"' || *p == '=' || (unsigned char)*p < 0x20)
            plain = 0;
    }
    if (plain) {
        snprintf(buf, size, "%s", value);
        return buf;
    }
    unsigned o = 0;
    if (size < 3) {
        buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (const char *p = value; *p && o + 3 < size; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else if (c < 0x20) {
            buf[o++] = '?';
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
