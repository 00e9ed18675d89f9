/*
 * Status codes and error detail (include/jimbot/status.h).
 *
 * Everything here is generated from JB_STATUS_MAP so that a new code needs
 * one line. No state, no allocation: safe from any thread.
 */
#include "jimbot/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *jb_strerror(jb_status status)
{
    switch (status) {
#define JB__STATUS_TEXT(name, value, text) \
    case JB_##name:                        \
        return text;
        JB_STATUS_MAP(JB__STATUS_TEXT)
#undef JB__STATUS_TEXT
    }
    return "unknown status";
}

const char *jb_status_name(jb_status status)
{
    switch (status) {
#define JB__STATUS_NAME(name, value, text) \
    case JB_##name:                        \
        return #name;
        JB_STATUS_MAP(JB__STATUS_NAME)
#undef JB__STATUS_NAME
    }
    return "UNKNOWN";
}

jb_status jb_error_set(jb_error *err, jb_status code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return code;
}

void jb_error_clear(jb_error *err)
{
    if (err != NULL) {
        err->code = JB_OK;
        err->message[0] = '\0';
    }
}

void jb__bug(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "BUG at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
