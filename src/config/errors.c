/*
 * The list of configuration errors, and small text helpers of the module.
 *
 * A load reports every problem it finds, not only the first, so errors are
 * collected in a list that the caller owns and reads back as
 * "FILE:LINE: KEY: reason". The list stops growing at JB__ERRORS_MAX entries
 * (a fuzzed file could otherwise make millions) and then says so once.
 * Entries own their strings. No globals; a list belongs to one thread.
 */
#include "config/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jb__error_item {
    jb_config_error view;
    char *file;
    char *key;
    char *reason;
} jb__error_item;

struct jb_config_errors {
    jb__error_item *items;
    size_t count;
    size_t cap;
    int truncated;
};

jb_config_errors *jb_config_errors_new(void)
{
    return calloc(1, sizeof(jb_config_errors));
}

void jb_config_errors_clear(jb_config_errors *errs)
{
    if (errs == NULL)
        return;
    for (size_t i = 0; i < errs->count; i++) {
        free(errs->items[i].file);
        free(errs->items[i].key);
        free(errs->items[i].reason);
    }
    errs->count = 0;
    errs->truncated = 0;
}

void jb_config_errors_free(jb_config_errors *errs)
{
    if (errs == NULL)
        return;
    jb_config_errors_clear(errs);
    free(errs->items);
    free(errs);
}

size_t jb_config_errors_count(const jb_config_errors *errs)
{
    return errs == NULL ? 0 : errs->count;
}

const jb_config_error *jb_config_errors_at(const jb_config_errors *errs, size_t i)
{
    if (errs == NULL || i >= errs->count)
        JB_BUG("jb_config_errors_at: index %zu out of range", i);
    return &errs->items[i].view;
}

const char *jb_config_errors_format(const jb_config_errors *errs, size_t i, char *buf, size_t size)
{
    const jb_config_error *e = jb_config_errors_at(errs, i);
    char line[24] = "";
    if (e->line > 0)
        snprintf(line, sizeof(line), ":%d", e->line);
    if (e->key != NULL)
        snprintf(buf, size, "%s%s: %s: %s", e->file, line, e->key, e->reason);
    else
        snprintf(buf, size, "%s%s: %s", e->file, line, e->reason);
    return buf;
}

void jb__errors_add(jb_config_errors *errs, const char *file, int line, const char *key,
                    const char *fmt, ...)
{
    if (errs == NULL || errs->truncated)
        return;
    char reason[512];
    if (errs->count + 1 >= JB__ERRORS_MAX) {
        snprintf(reason, sizeof(reason), "too many errors; stopping here");
        key = NULL;
        errs->truncated = 1;
    } else {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
    }
    if (errs->count == errs->cap) {
        size_t cap = errs->cap ? errs->cap * 2 : 8;
        jb__error_item *items = realloc(errs->items, cap * sizeof(*items));
        if (items == NULL)
            return;
        errs->items = items;
        errs->cap = cap;
    }
    jb__error_item *it = &errs->items[errs->count];
    it->file = strdup(file != NULL ? file : "?");
    it->key = key != NULL ? strdup(key) : NULL;
    it->reason = strdup(reason);
    if (it->file == NULL || it->reason == NULL || (key != NULL && it->key == NULL)) {
        free(it->file);
        free(it->key);
        free(it->reason);
        return;
    }
    it->view = (jb_config_error){it->file, line, it->key, it->reason};
    errs->count++;
}

size_t jb__edit_distance(const char *a, const char *b, size_t cap)
{
    size_t la = strlen(a), lb = strlen(b);
    if ((la > lb ? la - lb : lb - la) > cap || lb > 255)
        return cap + 1;
    size_t row[256];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        size_t best = row[0];
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t v = diag + cost;
            if (up + 1 < v)
                v = up + 1;
            if (row[j - 1] + 1 < v)
                v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
            if (v < best)
                best = v;
        }
        if (best > cap)
            return cap + 1;
    }
    return row[lb] > cap ? cap + 1 : row[lb];
}
