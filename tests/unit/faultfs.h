/*
 * A file system that forgets, for the store's crash tests (in the manner of
 * LevelDB's fault-injection Env): a jb__store_fileops table over one
 * directory that performs every call for real and remembers what was made
 * durable (a file's bytes at its last fdatasync, the directory's entries at
 * its last fsync). faultfs_restore() then puts the directory back to exactly
 * that, as a power loss would: unsynced bytes, created and deleted files go.
 *
 * A crash is armed with a count of calls: that call and every later one
 * fail with EIO and do nothing, so that the store stops where a machine
 * would. Thread-safe (the store calls it from libuv's threadpool).
 */
#ifndef JB_TEST_FAULTFS_H
#define JB_TEST_FAULTFS_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store_internal.h"

typedef struct faultfs faultfs;

/* Starts watching @dir, whose present contents count as durable; NULL if out of memory. */
faultfs *faultfs_new(const char *dir);
void faultfs_free(faultfs *f);

/* The table to pass to jb__store_open_with(); valid until faultfs_free(). */
const jb__store_fileops *faultfs_ops(faultfs *f);

/* Makes the @n-th call from now (1: the next one) and all later calls fail. */
void faultfs_crash_after(faultfs *f, unsigned n);
bool faultfs_crashed(faultfs *f);

/*
 * Puts the directory back to what was durable. With @keep_seed non-zero, a
 * file that only grew since its last sync keeps a random prefix of the
 * unsynced bytes (a torn write) instead of none. Call it once nothing uses
 * the directory any more (the store closed).
 */
void faultfs_restore(faultfs *f, uint64_t keep_seed);

#endif /* JB_TEST_FAULTFS_H */
