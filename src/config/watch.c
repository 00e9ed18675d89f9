/*
 * Hot reload: watch the configuration files on a libuv loop and swap in a
 * new snapshot when they change.
 *
 *   uv_fs_event on the FOLDER of the base file
 *        │  (a folder watch sees saves by rename, and files created later)
 *        ▼
 *   debounce timer: restarted by each event, so a burst of writes becomes
 *        │  one reload; it fires at the latest max_delay after the first
 *        ▼  event of the burst so that endless writes cannot starve it
 *   read the layers; same bytes as the last attempt? -> nothing to do
 *        ▼
 *   jb_config_load (all layers, validated whole)
 *        ├─ invalid: keep the snapshot in force, log each error, count it
 *        └─ valid: diff with the snapshot in force; restart-only keys keep
 *           their running value and are reported as pending; swap; bump the
 *           version if a value took effect; call the subscribers when
 *           something took effect or the set of pending keys changed
 *
 * Everything runs on the loop thread; the watcher holds one reference to
 * the snapshot in force and drops the old one after the subscribers have
 * seen it. Files named by ${file:} are not watched: SIGHUP (which calls
 * jb_config_watcher_reload) re-reads them.
 */
#include "config/internal.h"

#include "jimbot/log.h"

#include <stdlib.h>
#include <string.h>

#define JB__WATCH_FILE_MAX (1024 * 1024)

typedef struct subscriber {
    jb_config_change_fn fn;
    void *userdata;
} subscriber;

/* The bytes of one layer at the last attempt (NULL: absent). */
typedef struct seen_file {
    char *data;
    size_t len;
} seen_file;

struct jb_config_watcher {
    uv_loop_t *loop;
    jb_config_options opts;
    char *path;
    char *env;
    char *dir;
    char *env_path;
    jb_config *current;
    uv_fs_event_t fs;
    uv_timer_t timer;
    int watching;
    int burst;
    uint64_t burst_start;
    unsigned debounce_ms;
    unsigned max_delay_ms;
    jb_config_watcher_stats stats;
    seen_file seen[2];
    char **pending; /* restart-only keys last reported as pending */
    subscriber *subs;
    size_t sub_count;
    int notifying;
    int open_handles;
    void (*close_cb)(void *userdata);
    void *close_userdata;
};

static void seen_read(const char *path, seen_file *out)
{
    char why[128];
    out->data = NULL;
    out->len = 0;
    if (path != NULL &&
        jb__read_file(path, JB__WATCH_FILE_MAX, &out->data, &out->len, why, sizeof(why)) != JB_OK)
        out->data = NULL;
}

/* Reads the layers; returns 1 if they differ from the last attempt (and records them). */
static int files_changed(jb_config_watcher *w)
{
    seen_file now[2];
    seen_read(w->path, &now[0]);
    seen_read(w->env_path, &now[1]);
    int changed = 0;
    for (int i = 0; i < 2; i++) {
        seen_file *a = &w->seen[i], *b = &now[i];
        if ((a->data == NULL) != (b->data == NULL) ||
            (a->data != NULL && (a->len != b->len || memcmp(a->data, b->data, a->len) != 0)))
            changed = 1;
    }
    for (int i = 0; i < 2; i++) {
        free(w->seen[i].data);
        w->seen[i] = now[i];
    }
    return changed;
}

/* Joins @v with commas into @buf, "-" when empty. */
static const char *join(char *const *v, size_t n, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int r = snprintf(buf + o, size - o, "%s%s", i ? "," : "", v[i]);
        if (r < 0 || (size_t)r >= size - o) {
            if (size > 4)
                memcpy(buf + size - 4, "...", 4);
            break;
        }
        o += (size_t)r;
    }
    if (n == 0)
        snprintf(buf, size, "-");
    return buf;
}

/* Two NULL-terminated lists (NULL for empty) with the same names in the same order? */
static int strv_same(char *const *a, char *const *b)
{
    static char *const empty[] = {NULL};
    a = a != NULL ? a : empty;
    b = b != NULL ? b : empty;
    for (; *a != NULL && *b != NULL; a++, b++) {
        if (strcmp(*a, *b) != 0)
            return 0;
    }
    return *a == NULL && *b == NULL;
}

static void notify(jb_config_watcher *w, const jb_config_change *change)
{
    w->notifying = 1;
    for (size_t i = 0; i < w->sub_count; i++) {
        if (w->subs[i].fn != NULL)
            w->subs[i].fn(change, w->subs[i].userdata);
    }
    w->notifying = 0;
    size_t o = 0;
    for (size_t i = 0; i < w->sub_count; i++) {
        if (w->subs[i].fn != NULL)
            w->subs[o++] = w->subs[i];
    }
    w->sub_count = o;
}

static jb_status reload(jb_config_watcher *w, const char *why)
{
    w->stats.reloads++;
    jb_config_errors *errs = jb_config_errors_new();
    if (errs == NULL)
        return JB_ENOMEM;
    jb_config *next = NULL;
    jb_error err;
    jb_status st = jb_config_load(&w->opts, &next, errs, &err);
    if (st != JB_OK) {
        w->stats.reloads_failed++;
        size_t n = jb_config_errors_count(errs);
        jb_log(JB_LOG_ERROR, "config", "config reload failed, keeping the running configuration",
               "errors=%zu version=%llu failed_reloads=%llu trigger=%s", n,
               (unsigned long long)w->current->version, (unsigned long long)w->stats.reloads_failed,
               why);
        for (size_t i = 0; i < n; i++) {
            char line[1024], q[1100];
            jb_config_errors_format(errs, i, line, sizeof(line));
            jb_log(JB_LOG_ERROR, "config", "config error", "error=%s",
                   jb_log_quote(q, sizeof(q), line));
        }
        jb_config_errors_free(errs);
        return st;
    }
    jb_config_errors_free(errs);

    char **changed = NULL, **pending = NULL;
    size_t nc = 0, np = 0;
    st = jb__config_diff(w->current, next, &changed, &nc, &pending, &np);
    if (st != JB_OK) {
        jb_config_unref(next);
        jb_log(JB_LOG_ERROR, "config", "config reload failed: out of memory", NULL);
        return st;
    }
    jb_config *previous = w->current;
    char cbuf[1200], pbuf[600];
    join(pending, np, pbuf, sizeof(pbuf));
    int pending_news = !strv_same(w->pending, pending);
    if (nc == 0) {
        /* Nothing applies (maybe lines moved): take the new sources, same version. */
        next->version = previous->version;
        w->current = next;
        if (np > 0)
            jb_log(JB_LOG_WARN, "config", "configuration change needs a restart to take effect",
                   "version=%llu pending_restart=%s trigger=%s", (unsigned long long)next->version,
                   pbuf, why);
        else
            jb_log(JB_LOG_DEBUG, "config", "configuration reloaded, nothing changed",
                   "version=%llu trigger=%s", (unsigned long long)next->version, why);
    } else {
        next->version = previous->version + 1;
        w->current = next;
        jb_log(JB_LOG_INFO, "config", "config reloaded",
               "version=%llu changed=%s pending_restart=%s trigger=%s",
               (unsigned long long)next->version, join(changed, nc, cbuf, sizeof(cbuf)), pbuf, why);
        if (np > 0)
            jb_log(JB_LOG_WARN, "config", "some changes need a restart to take effect",
                   "pending_restart=%s", pbuf);
    }
    jb__strv_free(w->pending);
    w->pending = pending;
    if (nc == 0 && !pending_news) {
        jb_config_unref(previous);
        jb__strv_free(changed);
        return JB_OK;
    }

    jb_config_change change = {
        .version = next->version,
        .config = next,
        .previous = previous,
        .changed = (const char *const *)changed,
        .changed_count = nc,
        .pending_restart = (const char *const *)pending,
        .pending_count = np,
    };
    static const char *const none[] = {NULL};
    if (changed == NULL)
        change.changed = none;
    if (pending == NULL)
        change.pending_restart = none;
    notify(w, &change);
    jb_config_unref(previous);
    jb__strv_free(changed);
    return JB_OK;
}

static void on_timer(uv_timer_t *timer)
{
    jb_config_watcher *w = timer->data;
    w->burst = 0;
    if (!files_changed(w)) {
        jb_log(JB_LOG_DEBUG, "config", "file event, configuration files unchanged", NULL);
        return;
    }
    reload(w, "file");
}

static void on_fs_event(uv_fs_event_t *handle, const char *filename, int events, int status)
{
    jb_config_watcher *w = handle->data;
    if (status < 0) {
        jb_log(JB_LOG_WARN, "config", "watching the configuration folder failed", "dir=%s error=%s",
               w->dir, uv_strerror(status));
        return;
    }
    uint64_t now = uv_now(w->loop);
    if (!w->burst) {
        w->burst = 1;
        w->burst_start = now;
    }
    uint64_t deadline = w->burst_start + w->max_delay_ms;
    uint64_t delay = w->debounce_ms;
    if (now + delay > deadline)
        delay = deadline > now ? deadline - now : 0;
    uv_timer_start(&w->timer, on_timer, delay, 0);
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static void watcher_free(jb_config_watcher *w)
{
    jb_config_unref(w->current);
    free(w->path);
    free(w->env);
    free(w->dir);
    free(w->env_path);
    free(w->seen[0].data);
    free(w->seen[1].data);
    jb__strv_free(w->pending);
    free(w->subs);
    free(w);
}

jb_status jb_config_watcher_new(uv_loop_t *loop, const jb_config_options *opts,
                                const jb_config_watcher_options *wopts, jb_config *initial,
                                jb_config_watcher **out, jb_error *err)
{
    if (loop == NULL || opts == NULL || opts->path == NULL || initial == NULL || out == NULL)
        return jb_error_set(err, JB_EINVAL, "jb_config_watcher_new: missing argument");
    jb_config_watcher *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    w->loop = loop;
    w->path = strdup(opts->path);
    w->dir = dir_of(opts->path);
    int has_env = opts->env != NULL && opts->env[0] != '\0';
    if (has_env) {
        w->env = strdup(opts->env);
        /* The same name as the loader's, which is also the name in sources. */
        int r = strchr(opts->path, '/') == NULL
                    ? asprintf(&w->env_path, "%s.yaml", opts->env)
                    : asprintf(&w->env_path, "%s/%s.yaml", w->dir, opts->env);
        if (r < 0)
            w->env_path = NULL;
    }
    if (w->path == NULL || w->dir == NULL || (has_env && (w->env == NULL || w->env_path == NULL))) {
        watcher_free(w);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    w->opts = *opts;
    w->opts.path = w->path;
    w->opts.env = w->env;
    w->debounce_ms = wopts != NULL && wopts->debounce_ms ? wopts->debounce_ms : 150;
    w->max_delay_ms = wopts != NULL && wopts->max_delay_ms ? wopts->max_delay_ms : 1000;
    w->current = jb_config_ref(initial);
    files_changed(w);

    uv_fs_event_init(loop, &w->fs);
    uv_timer_init(loop, &w->timer);
    w->fs.data = w;
    w->timer.data = w;
    w->open_handles = 2;
    *out = w;
    return JB_OK;
}

jb_status jb_config_watcher_start(jb_config_watcher *w, jb_error *err)
{
    if (w->watching)
        return JB_OK;
    int rc = uv_fs_event_start(&w->fs, on_fs_event, w->dir, 0);
    if (rc != 0)
        return jb_error_set(err, JB_EIO, "cannot watch %s: %s", w->dir, uv_strerror(rc));
    w->watching = 1;
    jb_log(JB_LOG_DEBUG, "config", "watching the configuration folder", "dir=%s", w->dir);
    return JB_OK;
}

void jb_config_watcher_stop(jb_config_watcher *w)
{
    if (!w->watching)
        return;
    uv_fs_event_stop(&w->fs);
    uv_timer_stop(&w->timer);
    w->burst = 0;
    w->watching = 0;
}

static void on_handle_closed(uv_handle_t *handle)
{
    jb_config_watcher *w = handle->data;
    if (--w->open_handles > 0)
        return;
    void (*cb)(void *) = w->close_cb;
    void *ud = w->close_userdata;
    watcher_free(w);
    if (cb != NULL)
        cb(ud);
}

void jb_config_watcher_close(jb_config_watcher *w, void (*cb)(void *userdata), void *userdata)
{
    if (w == NULL)
        return;
    jb_config_watcher_stop(w);
    w->close_cb = cb;
    w->close_userdata = userdata;
    uv_close((uv_handle_t *)&w->fs, on_handle_closed);
    uv_close((uv_handle_t *)&w->timer, on_handle_closed);
}

jb_status jb_config_watcher_reload(jb_config_watcher *w)
{
    /* A pending debounced reload would only repeat this one. */
    uv_timer_stop(&w->timer);
    w->burst = 0;
    files_changed(w);
    return reload(w, "request");
}

jb_config *jb_config_watcher_current(const jb_config_watcher *w)
{
    return w->current;
}

void jb_config_watcher_stats_get(const jb_config_watcher *w, jb_config_watcher_stats *out)
{
    *out = w->stats;
    out->version = w->current->version;
}

jb_status jb_config_watcher_subscribe(jb_config_watcher *w, jb_config_change_fn fn, void *userdata)
{
    subscriber *s = realloc(w->subs, (w->sub_count + 1) * sizeof(*s));
    if (s == NULL)
        return JB_ENOMEM;
    w->subs = s;
    s[w->sub_count++] = (subscriber){fn, userdata};
    return JB_OK;
}

void jb_config_watcher_unsubscribe(jb_config_watcher *w, jb_config_change_fn fn, void *userdata)
{
    for (size_t i = 0; i < w->sub_count; i++) {
        if (w->subs[i].fn == fn && w->subs[i].userdata == userdata) {
            if (w->notifying) {
                w->subs[i].fn = NULL;
            } else {
                memmove(&w->subs[i], &w->subs[i + 1], (w->sub_count - i - 1) * sizeof(*w->subs));
                w->sub_count--;
            }
            return;
        }
    }
}
