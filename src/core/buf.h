/*
 * jb__buf: a growable byte buffer, internal to libjimbot.
 *
 * Always NUL-terminated after its `len` bytes (so it doubles as a string
 * builder). Storage is caller-owned: jb__buf_init() before use,
 * jb__buf_release() after; jb__buf_reset() empties it and keeps the memory.
 * Allocation failure is fatal (JB_BUG): buffers hold bounded, small data
 * (messages, log lines, JSON of one event).
 */
#ifndef JB_CORE_BUF_H
#define JB_CORE_BUF_H

#include <stddef.h>

typedef struct jb__buf {
    char *data;
    size_t len;
    size_t cap;
} jb__buf;

void jb__buf_init(jb__buf *b);
void jb__buf_release(jb__buf *b);
void jb__buf_reset(jb__buf *b);
void jb__buf_grow(jb__buf *b, size_t extra);
void jb__buf_append(jb__buf *b, const void *data, size_t len);
void jb__buf_puts(jb__buf *b, const char *s);
void jb__buf_putc(jb__buf *b, char c);
void jb__buf_printf(jb__buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * malloc, calloc and realloc for small, bounded allocations whose failure
 * is fatal (JB_BUG) like the buffers' own: never NULL.
 */
void *jb__xmalloc(size_t n);
void *jb__xcalloc(size_t count, size_t size);
void *jb__xrealloc(void *p, size_t n);

#endif /* JB_CORE_BUF_H */
