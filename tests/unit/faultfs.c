/*
 * The forgetting file system of faultfs.h. Durable state is kept per inode
 * (the bytes at the last fdatasync) and per directory entry (name -> inode at
 * the last directory fsync; an entry whose inode was since unlinked or
 * replaced keeps a copy of that inode's durable bytes). Test code: simple
 * arrays, whole-file copies, one mutex.
 */
#include "faultfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct blob {
    uint8_t *data;
    size_t len;
} blob;

typedef struct inode {
    ino_t ino;
    blob durable;
} inode;

typedef struct entry {
    char name[64];
    ino_t ino; /* 0: detached, the bytes are in @copy */
    blob copy;
} entry;

struct faultfs {
    pthread_mutex_t mu;
    char dir[256];
    inode *inodes;
    size_t n_inodes;
    entry *entries;
    size_t n_entries;
    unsigned calls, crash_at;
    bool crashed;
    jb__store_fileops ops;
};

static void blob_read_fd(int fd, blob *b)
{
    struct stat sb;
    free(b->data);
    *b = (blob){0};
    if (fstat(fd, &sb) != 0 || sb.st_size == 0)
        return;
    b->data = malloc((size_t)sb.st_size);
    if (b->data == NULL)
        abort();
    ssize_t n = pread(fd, b->data, (size_t)sb.st_size, 0);
    b->len = n > 0 ? (size_t)n : 0;
}

static inode *inode_find(faultfs *f, ino_t ino)
{
    for (size_t i = 0; i < f->n_inodes; i++)
        if (f->inodes[i].ino == ino)
            return &f->inodes[i];
    return NULL;
}

/* The inode's record; a new one (never synced) holds nothing durable. */
static inode *inode_get(faultfs *f, ino_t ino)
{
    inode *n = inode_find(f, ino);
    if (n != NULL)
        return n;
    f->inodes = realloc(f->inodes, (f->n_inodes + 1) * sizeof(inode));
    if (f->inodes == NULL)
        abort();
    n = &f->inodes[f->n_inodes++];
    *n = (inode){.ino = ino};
    return n;
}

/* The inode @ino goes away: durable entries naming it keep its bytes. */
static void inode_drop(faultfs *f, ino_t ino)
{
    inode *n = inode_find(f, ino);
    for (size_t i = 0; i < f->n_entries; i++) {
        entry *e = &f->entries[i];
        if (e->ino != ino)
            continue;
        e->ino = 0;
        e->copy = (blob){0};
        if (n != NULL && n->durable.len > 0) {
            e->copy.data = malloc(n->durable.len);
            if (e->copy.data == NULL)
                abort();
            memcpy(e->copy.data, n->durable.data, n->durable.len);
            e->copy.len = n->durable.len;
        }
    }
    if (n != NULL) {
        free(n->durable.data);
        *n = f->inodes[--f->n_inodes];
    }
}

static void entries_clear(faultfs *f)
{
    for (size_t i = 0; i < f->n_entries; i++)
        free(f->entries[i].copy.data);
    free(f->entries);
    f->entries = NULL;
    f->n_entries = 0;
}

/* The directory as it is now becomes the durable one (@snapshot: with its bytes). */
static void sync_dir(faultfs *f, bool snapshot)
{
    entries_clear(f);
    DIR *d = opendir(f->dir);
    if (d == NULL)
        abort();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[512];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", f->dir, de->d_name);
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        f->entries = realloc(f->entries, (f->n_entries + 1) * sizeof(entry));
        if (f->entries == NULL)
            abort();
        entry *e = &f->entries[f->n_entries++];
        *e = (entry){.ino = sb.st_ino};
        snprintf(e->name, sizeof(e->name), "%.63s", de->d_name);
        inode *n = inode_get(f, sb.st_ino);
        if (snapshot) {
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                abort();
            blob_read_fd(fd, &n->durable);
            close(fd);
        }
    }
    closedir(d);
}

/* Counts a call; false (errno EIO) once the crash has come. Takes the lock on success. */
static bool call_begin(faultfs *f)
{
    pthread_mutex_lock(&f->mu);
    if (!f->crashed && f->crash_at > 0 && ++f->calls >= f->crash_at)
        f->crashed = true;
    if (f->crashed) {
        pthread_mutex_unlock(&f->mu);
        errno = EIO;
        return false;
    }
    return true;
}

static int call_end(faultfs *f, int rc)
{
    int e = errno;
    pthread_mutex_unlock(&f->mu);
    errno = e;
    return rc;
}

static int ff_create(void *ctx, int dirfd, const char *name)
{
    faultfs *f = ctx;
    if (!call_begin(f))
        return -1;
    return call_end(f, openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
}

static ssize_t ff_pwrite(void *ctx, int fd, const void *p, size_t len, off_t off)
{
    faultfs *f = ctx;
    if (!call_begin(f))
        return -1;
    ssize_t n = pwrite(fd, p, len, off);
    call_end(f, 0);
    return n;
}

static int ff_fdatasync(void *ctx, int fd)
{
    faultfs *f = ctx;
    struct stat sb;
    if (!call_begin(f))
        return -1;
    int rc = fdatasync(fd);
    if (rc == 0 && fstat(fd, &sb) == 0)
        blob_read_fd(fd, &inode_get(f, sb.st_ino)->durable);
    return call_end(f, rc);
}

static int ff_fsync_dir(void *ctx, int dirfd)
{
    faultfs *f = ctx;
    if (!call_begin(f))
        return -1;
    int rc = fsync(dirfd);
    if (rc == 0)
        sync_dir(f, false);
    return call_end(f, rc);
}

static int ff_ftruncate(void *ctx, int fd, off_t len)
{
    faultfs *f = ctx;
    if (!call_begin(f))
        return -1;
    return call_end(f, ftruncate(fd, len));
}

static void drop_name(faultfs *f, int dirfd, const char *name)
{
    struct stat sb;
    if (fstatat(dirfd, name, &sb, 0) == 0)
        inode_drop(f, sb.st_ino);
}

static int ff_unlinkat(void *ctx, int dirfd, const char *name)
{
    faultfs *f = ctx;
    if (!call_begin(f))
        return -1;
    drop_name(f, dirfd, name);
    return call_end(f, unlinkat(dirfd, name, 0));
}

static int ff_renameat(void *ctx, int dirfd, const char *from, const char *to)
{
    faultfs *f = ctx;
    if (!call_begin(f))
        return -1;
    drop_name(f, dirfd, to);
    return call_end(f, renameat(dirfd, from, dirfd, to));
}

faultfs *faultfs_new(const char *dir)
{
    faultfs *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    pthread_mutex_init(&f->mu, NULL);
    snprintf(f->dir, sizeof(f->dir), "%s", dir);
    f->ops = (jb__store_fileops){ff_create,    ff_pwrite,   ff_fdatasync, ff_fsync_dir,
                                 ff_ftruncate, ff_unlinkat, ff_renameat,  f};
    sync_dir(f, true);
    return f;
}

void faultfs_free(faultfs *f)
{
    if (f == NULL)
        return;
    entries_clear(f);
    for (size_t i = 0; i < f->n_inodes; i++)
        free(f->inodes[i].durable.data);
    free(f->inodes);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

const jb__store_fileops *faultfs_ops(faultfs *f)
{
    return &f->ops;
}

void faultfs_crash_after(faultfs *f, unsigned n)
{
    pthread_mutex_lock(&f->mu);
    f->calls = 0;
    f->crash_at = n;
    pthread_mutex_unlock(&f->mu);
}

bool faultfs_crashed(faultfs *f)
{
    pthread_mutex_lock(&f->mu);
    bool c = f->crashed;
    pthread_mutex_unlock(&f->mu);
    return c;
}

static bool is_durable_name(const faultfs *f, const char *name)
{
    for (size_t i = 0; i < f->n_entries; i++)
        if (strcmp(f->entries[i].name, name) == 0)
            return true;
    return false;
}

/* Deletes every file whose name the directory never made durable. */
static void forget_new_names(faultfs *f)
{
    DIR *d = opendir(f->dir);
    if (d == NULL)
        abort();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[512];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", f->dir, de->d_name);
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && !is_durable_name(f, de->d_name))
            unlink(path);
    }
    closedir(d);
}

/* Writes @keep (the durable bytes, then @extra more of what is there now) to @path. */
static void rewrite(const char *path, const blob *keep, size_t extra)
{
    uint8_t *tail = NULL;
    if (extra > 0) {
        int fd = open(path, O_RDONLY);
        tail = malloc(extra);
        if (fd < 0 || tail == NULL || pread(fd, tail, extra, (off_t)keep->len) != (ssize_t)extra)
            abort();
        close(fd);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || (keep->len > 0 && write(fd, keep->data, keep->len) != (ssize_t)keep->len) ||
        (extra > 0 && write(fd, tail, extra) != (ssize_t)extra))
        abort();
    close(fd);
    free(tail);
}

void faultfs_restore(faultfs *f, uint64_t keep_seed)
{
    pthread_mutex_lock(&f->mu);
    forget_new_names(f);
    for (size_t i = 0; i < f->n_entries; i++) {
        entry *e = &f->entries[i];
        char path[512];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", f->dir, e->name);
        const inode *n = e->ino != 0 ? inode_find(f, e->ino) : NULL;
        blob none = {0};
        const blob *keep = e->ino == 0 ? &e->copy : n != NULL ? &n->durable : &none;
        size_t extra = 0;
        bool present = stat(path, &sb) == 0, same = present && e->ino != 0 && sb.st_ino == e->ino;
        keep_seed =
            keep_seed == 0 ? 0 : keep_seed * 6364136223846793005ull + 1442695040888963407ull;
        /* Unsynced deletions reach the disk or not, each on its own. */
        if (keep_seed != 0 && e->ino == 0 && !present && (keep_seed >> 40) % 2 == 0)
            continue;
        if (keep_seed != 0 && same && (size_t)sb.st_size > keep->len)
            extra = (size_t)((keep_seed >> 33) % ((uint64_t)sb.st_size - keep->len + 1));
        rewrite(path, keep, extra);
    }
    pthread_mutex_unlock(&f->mu);
}
