/*
 * Growable byte buffer (src/core/buf.h).
 *
 * Invariant: data is NULL and len == cap == 0, or data holds cap bytes of
 * which the first len are content and data[len] == '\0'.
 */
#include "core/buf.h"

#include "jimbot/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jb__buf_init(jb__buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void jb__buf_release(jb__buf *b)
{
    free(b->data);
    jb__buf_init(b);
}

void jb__buf_reset(jb__buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void jb__buf_grow(jb__buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        JB_BUG("out of memory growing a buffer to %zu bytes", cap);
    b->data = p;
    b->cap = cap;
}

void jb__buf_append(jb__buf *b, const void *data, size_t len)
{
    jb__buf_grow(b, len);
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void jb__buf_puts(jb__buf *b, const char *s)
{
    jb__buf_append(b, s, strlen(s));
}

void jb__buf_putc(jb__buf *b, char c)
{
    jb__buf_append(b, &c, 1);
}

void jb__buf_printf(jb__buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    jb__buf_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void *jb__xmalloc(size_t n)
{
    void *p = malloc(n > 0 ? n : 1);
    if (p == NULL)
        JB_BUG("out of memory allocating %zu bytes", n);
    return p;
}

void *jb__xcalloc(size_t count, size_t size)
{
    void *p = calloc(count > 0 ? count : 1, size > 0 ? size : 1);
    if (p == NULL)
        JB_BUG("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *jb__xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n > 0 ? n : 1);
    if (q == NULL)
        JB_BUG("out of memory growing to %zu bytes", n);
    return q;
}
