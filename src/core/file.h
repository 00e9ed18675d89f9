/*
 * jb__file_write_atomic: replaces a small file whole, so that a crash at any
 * moment leaves either the old contents or the new ones. Used for every
 * state file of libjimbot (groups.state, coord.state, queue.cache).
 * Blocks on the disk: call it from the threadpool, never the loop.
 */
#ifndef JB_CORE_FILE_H
#define JB_CORE_FILE_H

#include "jimbot/status.h"

#include <stddef.h>

/*
 * Writes @len bytes of @data to "<path>.tmp" (mode 0600), fsyncs it, renames
 * it over @path and fsyncs the folder. On failure the temporary file is
 * removed, @path is untouched (or, if only the folder's fsync failed,
 * renamed but perhaps not durable) and @err says which step failed, with
 * the file and strerror: JB_EIO, or JB_ENOMEM.
 */
jb_status jb__file_write_atomic(const char *path, const void *data, size_t len, jb_error *err);

#endif /* JB_CORE_FILE_H */
