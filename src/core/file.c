/*
 * Atomic replacement of a small file (core/file.h): write to a temporary
 * file beside it, fsync, rename over, fsync the folder. Runs on whatever
 * thread calls it (the threadpool, in libjimbot); touches no shared state.
 */
#include "core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static jb_status failed(jb_error *err, const char *what, const char *path, int e)
{
    return jb_error_set(err, JB_EIO, "cannot %s %s: %s", what, path, strerror(e));
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static jb_status fsync_folder_of(const char *path, jb_error *err)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    const char *dir = dirname(copy);
    jb_status st = JB_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        st = failed(err, "fsync the folder", dir, errno);
    if (fd >= 0)
        close(fd);
    free(copy);
    return st;
}

jb_status jb__file_write_atomic(const char *path, const void *data, size_t len, jb_error *err)
{
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (tmp == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    jb_status st = JB_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        st = failed(err, "create", tmp, errno);
    } else {
        if (write_all(fd, data, len) != 0 || fsync(fd) != 0)
            st = failed(err, "write", tmp, errno);
        if (close(fd) != 0 && st == JB_OK)
            st = failed(err, "write", tmp, errno);
        if (st == JB_OK && rename(tmp, path) != 0)
            st = failed(err, "rename over", path, errno);
        if (st != JB_OK)
            unlink(tmp);
    }
    free(tmp);
    return st == JB_OK ? fsync_folder_of(path, err) : st;
}
