/*
 * Substitutions in configuration values, and the one file reader.
 *
 *   ${VAR}            the environment variable VAR; an error if it is unset
 *   ${VAR:-default}   VAR, or `default` when VAR is unset or empty
 *   ${file:PATH}      the content of PATH (one trailing newline removed);
 *                     a relative PATH is taken from the folder of the YAML
 *                     file that names it
 *   $${               a literal "${"
 *
 * A value read through ${file:} is a secret whatever its key: the caller is
 * told so and masks it. Reasons written here name variables and paths, never
 * values. Only regular files are read (a FIFO or a device could block the
 * loop or never end), and at most JB__SECRET_MAX bytes of them.
 */
#include "config/internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JB__SECRET_MAX (64 * 1024)
#define JB__VALUE_MAX  (1024 * 1024)

jb_status jb__read_file(const char *path, size_t max, char **out, size_t *len, char *why,
                        size_t why_size)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, why_size, "%s", strerror(errno));
        return errno == ENOENT ? JB_ENOENT : JB_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(why, why_size, "not a regular file");
        return JB_EIO;
    }
    if ((size_t)st.st_size > max) {
        close(fd);
        snprintf(why, why_size, "larger than %zu bytes", max);
        return JB_ETOOBIG;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        snprintf(why, why_size, "out of memory");
        return JB_ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, why_size, "%s", strerror(errno));
            free(buf);
            close(fd);
            return JB_EIO;
        }
        if (r == 0)
            break; /* it shrank while we read: take what is there */
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return JB_OK;
}

typedef struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    int oom;
} sbuf;

static void sbuf_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static int valid_var_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++) {
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return 0;
    }
    return 1;
}

static jb_status read_secret(sbuf *b, const char *path, size_t n, const char *dir, char *why,
                             size_t why_size)
{
    if (n == 0) {
        snprintf(why, why_size, "${file:} needs a path");
        return JB_ECONFIG;
    }
    char full[4096];
    int w;
    if (path[0] == '/' || dir == NULL || dir[0] == '\0')
        w = snprintf(full, sizeof(full), "%.*s", (int)n, path);
    else
        w = snprintf(full, sizeof(full), "%s/%.*s", dir, (int)n, path);
    if (w < 0 || (size_t)w >= sizeof(full)) {
        snprintf(why, why_size, "secret file path too long");
        return JB_ECONFIG;
    }
    char *data = NULL;
    size_t len = 0;
    char reason[128];
    if (jb__read_file(full, JB__SECRET_MAX, &data, &len, reason, sizeof(reason)) != JB_OK) {
        snprintf(why, why_size, "cannot read secret file %.200s: %s", full, reason);
        return JB_ECONFIG;
    }
    if (memchr(data, '\0', len) != NULL) {
        free(data);
        snprintf(why, why_size, "secret file %.200s contains a NUL byte", full);
        return JB_ECONFIG;
    }
    if (len > 0 && data[len - 1] == '\n')
        len--;
    if (len > 0 && data[len - 1] == '\r')
        len--;
    sbuf_add(b, data, len);
    free(data);
    return JB_OK;
}

jb_status jb__expand(const char *text, const char *dir, char **out, int *from_file, char *why,
                     size_t why_size)
{
    sbuf b = {0};
    sbuf_add(&b, "", 0);
    *from_file = 0;
    const char *p = text;
    while (*p != '\0') {
        if (p[0] == '$' && p[1] == '$' && p[2] == '{') {
            sbuf_add(&b, "${", 2);
            p += 3;
            continue;
        }
        if (!(p[0] == '$' && p[1] == '{')) {
            const char *next = strchr(p + 1, '$');
            size_t n = next != NULL ? (size_t)(next - p) : strlen(p);
            sbuf_add(&b, p, n);
            p += n;
            continue;
        }
        const char *body = p + 2;
        const char *end = strchr(body, '}');
        if (end == NULL) {
            snprintf(why, why_size, "unterminated ${ (a literal one is written $${)");
            free(b.p);
            return JB_ECONFIG;
        }
        size_t n = (size_t)(end - body);
        if (n >= 5 && strncmp(body, "file:", 5) == 0) {
            jb_status st = read_secret(&b, body + 5, n - 5, dir, why, why_size);
            if (st != JB_OK) {
                free(b.p);
                return st;
            }
            *from_file = 1;
        } else {
            const char *dflt = NULL;
            size_t name_len = n;
            for (size_t i = 0; i + 1 < n; i++) {
                if (body[i] == ':' && body[i + 1] == '-') {
                    name_len = i;
                    dflt = body + i + 2;
                    break;
                }
            }
            if (!valid_var_name(body, name_len)) {
                snprintf(why, why_size,
                         "bad substitution: expected ${NAME}, ${NAME:-default} or "
                         "${file:PATH}");
                free(b.p);
                return JB_ECONFIG;
            }
            char name[256];
            snprintf(name, sizeof(name), "%.*s", (int)(name_len < 255 ? name_len : 255), body);
            const char *val = getenv(name);
            if (dflt != NULL && (val == NULL || val[0] == '\0')) {
                sbuf_add(&b, dflt, (size_t)(end - dflt));
            } else if (val == NULL) {
                snprintf(why, why_size, "environment variable %.200s is not set and has no default",
                         name);
                free(b.p);
                return JB_ECONFIG;
            } else {
                sbuf_add(&b, val, strlen(val));
            }
        }
        p = end + 1;
        if (b.len > JB__VALUE_MAX) {
            snprintf(why, why_size, "value longer than %d bytes after substitution", JB__VALUE_MAX);
            free(b.p);
            return JB_ECONFIG;
        }
    }
    if (b.oom) {
        free(b.p);
        snprintf(why, why_size, "out of memory");
        return JB_ENOMEM;
    }
    *out = b.p;
    return JB_OK;
}
