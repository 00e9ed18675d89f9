/*
 * Internals of the durable log shared with its unit tests: the on-disk
 * constants (the format itself is described at the top of store.c), the
 * file-operations seam and the test hooks. Nothing outside src/store/ and the
 * store's unit tests uses this.
 */
#ifndef JIMBOT_LOG_STORE_INTERNAL_H
#define JIMBOT_LOG_STORE_INTERNAL_H

#include <sys/types.h>

#include "jimbot/store.h"

#define JB__SEG_MAGIC        "JBLOGSEG"
#define JB__SEG_VERSION      1u
#define JB__SEG_HEADER_BYTES 32u
#define JB__REC_HEADER_BYTES 24u
/* "%020llu.seg": 20 digits, the suffix, the terminator. */
#define JB__SEG_NAME_SIZE 25u

/* The high-water mark file of a log directory, and its temporary name. */
#define JB__HWM_NAME     "high-water"
#define JB__HWM_TMP_NAME "high-water.tmp"
#define JB__HWM_MAGIC    "JBLOGHWM"
#define JB__HWM_BYTES    20u

/*
 * Every call through which the store changes a file or the directory. The
 * store uses the plain system calls; a test passes its own table to
 * jb__store_open_with() to see what was made durable and to forget the rest
 * at a simulated crash. The functions follow the system calls' conventions
 * (-1 and errno on failure) and may run on libuv's threadpool: one at a time,
 * but not always on the same thread. @ctx is the table's ctx.
 */
typedef struct jb__store_fileops {
    /* openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644). */
    int (*create)(void *ctx, int dirfd, const char *name);
    ssize_t (*pwrite)(void *ctx, int fd, const void *p, size_t len, off_t off);
    int (*fdatasync)(void *ctx, int fd);
    /* fsync of a directory. */
    int (*fsync_dir)(void *ctx, int dirfd);
    int (*ftruncate)(void *ctx, int fd, off_t len);
    int (*unlinkat)(void *ctx, int dirfd, const char *name);
    int (*renameat)(void *ctx, int dirfd, const char *from, const char *to);
    void *ctx;
} jb__store_fileops;

/*
 * jb_store_open() with @ops for every change to the files (NULL: the system
 * calls). @ops is borrowed and must outlive the store.
 */
jb_status jb__store_open_with(uv_loop_t *loop, const jb_store_options *opts,
                              const jb__store_fileops *ops, jb_store **out, jb_error *err);

/*
 * Test hook: makes the writer sleep @ms before each write job, so that a
 * test can fill the buffers and see JB_EBACKPRESSURE. Call it only while no
 * write is in flight (right after open, for instance).
 */
void jb__store_set_write_delay(jb_store *s, unsigned ms);

#endif /* JIMBOT_LOG_STORE_INTERNAL_H */
