/*
 * The hiredis adapter (see redis.h): one connection to Redis, kept up on the
 * coordinator's libuv loop with hiredis's asynchronous API. The socket is
 * watched by this file's own event hooks over a uv_poll_t rather than
 * hiredis 0.14's <adapters/libuv.h>, which loses a refused connect (see
 * "The socket's watcher"). No other file includes hiredis.
 *
 * One attempt, from the retry timer:
 *
 *   connect ──► queue AUTH (when a password is set) and PING ──► PONG: "up"
 *      │              (hiredis writes them once the socket connects)
 *      └─ refused, timed out, AUTH or PING refused, connection lost
 *           ──► tear the context down ──► "down" ──► retry timer (backoff)
 *
 * Every command sent, ours (AUTH, PING) and the caller's, has a node in the
 * FIFO r->head..r->tail, in the order hiredis sends them; Redis answers in that
 * order, so hiredis's callbacks always pop the head. The deadline timer
 * watches the head only: a head older than timeout_ms means the server (or
 * the TCP connect) is stuck, and the whole connection goes, as the header
 * says. The connect is bounded the same way: the first command is queued
 * as the connect starts.
 *
 * Invariants:
 * - r->ac is the live context or NULL; it goes NULL before any teardown
 *   this file starts, so hiredis's connect and disconnect callbacks tell a
 *   context being torn down here (ignored) from one hiredis lost.
 * - redisAsyncFree() is never called from hiredis's connect or disconnect
 *   callbacks (hiredis frees the context itself after them); from a reply
 *   callback it is safe (hiredis defers it until the callback returns).
 * - Every node in that FIFO belongs to a hiredis callback that will run
 *   exactly once (with a reply, or NULL when the context goes away), so
 *   the FIFO drains by itself; a node's callback never runs inside
 *   jb__redis_command().
 * - The state callback runs when (up, error) changes: down to up, up to
 *   down, and down with a different reason (so the caller sees why it is
 *   not up without a call per retry).
 * - `handles` counts what libuv still holds of @r: the two timers, each
 *   context's uv_poll_t (the watch, below) until its close callback has
 *   run, and a name resolution in flight, so jb__redis_close()'s `done`
 *   runs only once nothing of hiredis's or libuv's is left.
 *
 * Host names are resolved on libuv's threadpool before each attempt (its
 * first IPv4 address, else its first), so hiredis only ever sees an
 * address and never calls getaddrinfo() on the loop.
 *
 * hiredis writes with write(2): its writes run with SIGPIPE blocked on the
 * loop thread (write_without_sigpipe), so a Redis gone mid-write is an
 * EPIPE and a reconnect, never a dead daemon, whatever the process's
 * SIGPIPE disposition.
 *
 * Loop thread only. Depends on hiredis, libuv and core only.
 */
#include "coord/redis.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JB__REDIS_BACKOFF_MIN_MS     100u
#define JB__REDIS_BACKOFF_MAX_MS     30000u
#define JB__REDIS_DEFAULT_TIMEOUT_MS 5000u

/* The errors a command gets when its connection goes (redis.h). */
static const char closed_text[] = "closed";
static const char timeout_text[] = "timed out";
static const char lost_text[] = "connection lost";

typedef struct cmd {
    struct cmd *next;
    jb__redis_reply_cb cb;
    void *userdata;
    uint64_t deadline; /* uv_now() + timeout_ms at sending */
} cmd;

struct jb__redis {
    uv_loop_t *loop;
    char *host; /* NULL for a Unix socket */
    char *path; /* NULL for TCP */
    int port;
    char *password; /* NULL: no AUTH */
    uint64_t timeout_ms;
    jb__redis_state_cb state_cb;
    void *userdata;

    redisAsyncContext *ac; /* the live context, or NULL */
    int connected;         /* the TCP (or Unix) connect has completed */
    int authed;            /* AUTH answered OK (or none needed) */
    int up;
    int closing;
    const char *fail_text; /* what in-flight commands get when the context goes */

    cmd *head, *tail; /* in flight, in sending order */

    uv_timer_t deadline; /* the head's reply deadline */
    uv_timer_t retry;    /* the next attempt */
    uint32_t backoff_ms;
    uint64_t rng;
    int handles;
    uv_getaddrinfo_t resolve;
    int resolving; /* resolve is in flight */

    int told;           /* a state callback has run */
    int told_up;        /* what it said */
    char told_err[256]; /* and why, when down */
    void (*done)(void *userdata);
    void *done_userdata;
};

static void start_attempt(jb__redis *r);
static void on_deadline(uv_timer_t *t);

/* ---- URL ----------------------------------------------------------------- */

static jb_status parse_port(const char *s, int *out, jb_error *err)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || (*end != '\0' && strcmp(end, "/") != 0) || v < 1 || v > 65535)
        return jb_error_set(err, JB_EINVAL, "redis url: bad port '%s'", s);
    *out = (int)v;
    return JB_OK;
}

/* Splits "HOST[:PORT][/]" (HOST may be "[v6]") into r->host and r->port. */
static jb_status parse_tcp(jb__redis *r, const char *hp, jb_error *err)
{
    const char *host = hp, *colon, *host_end;
    if (*hp == '[') {
        host = hp + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL)
            return jb_error_set(err, JB_EINVAL, "redis url: unclosed '[' in '%s'", hp);
        colon = host_end[1] == ':' ? host_end + 1 : NULL;
        if (colon == NULL && host_end[1] != '\0' && strcmp(host_end + 1, "/") != 0)
            return jb_error_set(err, JB_EINVAL, "redis url: junk after ']' in '%s'", hp);
    } else {
        colon = strchr(hp, ':');
        host_end = colon != NULL ? colon : hp + strcspn(hp, "/");
    }
    if (strchr(hp, '@') != NULL)
        return jb_error_set(err, JB_EINVAL,
                            "redis url: credentials belong in the password setting, not the URL");
    if (host_end == host)
        return jb_error_set(err, JB_EINVAL, "redis url: no host in '%s'", hp);
    r->port = 6379;
    if (colon != NULL) {
        jb_status st = parse_port(colon + 1, &r->port, err);
        if (st != JB_OK)
            return st;
    } else if (*host_end != '\0' && *host_end != ']' && strcmp(host_end, "/") != 0) {
        return jb_error_set(err, JB_EINVAL, "redis url: unexpected '%s' (no database numbers)",
                            host_end);
    }
    r->host = strndup(host, (size_t)(host_end - host));
    return r->host != NULL ? JB_OK : jb_error_set(err, JB_ENOMEM, "out of memory");
}

static jb_status parse_url(jb__redis *r, const char *url, jb_error *err)
{
    if (url == NULL || *url == '\0')
        return jb_error_set(err, JB_EINVAL, "redis url: empty");
    if (strncmp(url, "rediss://", 9) == 0)
        return jb_error_set(err, JB_EINVAL, "redis url '%s': TLS (rediss://) is not supported",
                            url);
    if (strncmp(url, "redis://", 8) == 0)
        return parse_tcp(r, url + 8, err);
    if (strncmp(url, "unix:", 5) == 0) {
        const char *p = url + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (*p == '\0')
            return jb_error_set(err, JB_EINVAL, "redis url '%s': no socket path", url);
        r->path = strdup(p);
        return r->path != NULL ? JB_OK : jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    return jb_error_set(err, JB_EINVAL, "redis url '%s': expected redis://HOST:PORT or unix:PATH",
                        url);
}

/* ---- State and backoff --------------------------------------------------- */

/* Tells the caller when (up, error) changed since it was last told. */
static void tell(jb__redis *r, int up, const char *error)
{
    if (r->closing)
        return;
    if (r->told && r->told_up == up && (up || strcmp(r->told_err, error) == 0))
        return;
    r->told = 1;
    r->told_up = up;
    snprintf(r->told_err, sizeof(r->told_err), "%s", up ? "" : error);
    if (r->state_cb != NULL)
        r->state_cb(r, up, up ? NULL : r->told_err, r->userdata);
}

static uint32_t next_random(jb__redis *r)
{
    /* xorshift64: jitter only, no secrets. */
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return (uint32_t)(r->rng >> 32);
}

static void on_retry(uv_timer_t *t)
{
    start_attempt((jb__redis *)t->data);
}

/* Schedules the next attempt: half the backoff plus up to as much again. */
static void schedule_retry(jb__redis *r)
{
    if (r->closing)
        return;
    uint32_t half = r->backoff_ms / 2;
    uint32_t delay = half + next_random(r) % (r->backoff_ms - half + 1);
    r->backoff_ms =
        r->backoff_ms * 2 > JB__REDIS_BACKOFF_MAX_MS ? JB__REDIS_BACKOFF_MAX_MS : r->backoff_ms * 2;
    uv_timer_start(&r->retry, on_retry, delay, 0);
}

/* ---- In-flight commands -------------------------------------------------- */

static void arm_deadline(jb__redis *r)
{
    if (r->closing)
        return;
    if (r->head == NULL) {
        uv_timer_stop(&r->deadline);
        return;
    }
    uint64_t now = uv_now(r->loop);
    uint64_t due = r->head->deadline > now ? r->head->deadline - now : 0;
    uv_timer_start(&r->deadline, on_deadline, due, 0);
}

/* Errors this file gives commands, as opposed to Redis's own error replies. */
static int is_connection_error(const char *error)
{
    return error == closed_text || error == timeout_text || error == lost_text;
}

static void convert(const redisReply *rep, const char *gone, jb__redis_reply *out)
{
    memset(out, 0, sizeof(*out));
    if (rep == NULL) {
        out->error = gone;
        return;
    }
    switch (rep->type) {
    case REDIS_REPLY_ERROR:
        out->error = rep->str != NULL ? rep->str : "ERR";
        break;
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_STRING:
        out->str = rep->str;
        out->len = rep->len;
        break;
    case REDIS_REPLY_NIL:
        break;
    case REDIS_REPLY_INTEGER:
        out->integer = rep->integer;
        break;
    default:
        out->error = "unexpected array reply";
        break;
    }
}

/*
 * hiredis's reply callback for every command: pops the head (Redis answers
 * in order) and hands the reply on. NULL @reply: the context is going, by
 * this file's doing (r->ac already NULL: r->fail_text says why) or hiredis's
 * (connection lost).
 */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    jb__redis *r = ac->data;
    cmd *c = privdata;
    if (r->head != c)
        JB_BUG("redis: a reply for a command that is not the oldest in flight");
    r->head = c->next;
    if (r->head == NULL)
        r->tail = NULL;
    if (reply == NULL && r->ac == ac)
        r->up = 0;
    jb__redis_reply out;
    convert(reply, r->ac == ac ? lost_text : r->fail_text, &out);
    if (c->cb != NULL)
        c->cb(r, &out, c->userdata);
    free(c);
    if (reply != NULL && r->ac == ac)
        arm_deadline(r);
}

/* Queues a command on the live context; -1 when hiredis refuses it. */
static int send_cmd(jb__redis *r, jb__redis_reply_cb cb, void *userdata, int argc,
                    const char *const *argv, const size_t *lens)
{
    cmd *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    c->cb = cb;
    c->userdata = userdata;
    c->deadline = uv_now(r->loop) + r->timeout_ms;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, (const char **)argv, lens) != REDIS_OK) {
        free(c);
        return -1;
    }
    if (r->tail != NULL)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    if (r->head == c)
        arm_deadline(r);
    return 0;
}

/* ---- Teardown ------------------------------------------------------------- */

/*
 * Ends the live context on this file's initiative: its commands fail with
 * @text, the caller hears "down" with @why, and the next attempt is
 * scheduled. Never from hiredis's connect or disconnect callbacks. @r stays
 * valid (it is freed only after jb__redis_close's handles are closed).
 */
static void drop(jb__redis *r, const char *text, const char *why)
{
    char reason[256];
    snprintf(reason, sizeof(reason), "%s", why);
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->up = 0;
    r->fail_text = text;
    uv_timer_stop(&r->deadline);
    if (ac != NULL)
        redisAsyncFree(ac);
    tell(r, 0, reason);
    schedule_retry(r);
}

/* hiredis lost @ac (it frees the context itself once this returns). */
static void lose(jb__redis *r, const redisAsyncContext *ac)
{
    char why[256];
    /* The context's own error: ac->err is copied from it only after onConnect. */
    snprintf(why, sizeof(why), "%s", ac->c.err != 0 ? ac->c.errstr : "connection closed");
    r->ac = NULL;
    r->up = 0;
    r->fail_text = lost_text;
    uv_timer_stop(&r->deadline);
    tell(r, 0, why);
    schedule_retry(r);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    jb__redis *r = ac->data;
    if (r->ac != ac)
        return;
    if (status == REDIS_OK)
        r->connected = 1;
    else
        lose(r, ac);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    jb__redis *r = ac->data;
    (void)status;
    if (r->ac == ac)
        lose(r, ac);
}

static void on_deadline(uv_timer_t *t)
{
    jb__redis *r = t->data;
    if (r->head == NULL || r->ac == NULL)
        return;
    if (r->head->deadline > uv_now(r->loop)) {
        arm_deadline(r);
        return;
    }
    char why[128];
    snprintf(why, sizeof(why), "%s within %llu ms", r->connected ? "no reply" : "could not connect",
             (unsigned long long)r->timeout_ms);
    drop(r, timeout_text, why);
}

/* ---- Handles ---------------------------------------------------------------- */

/* The last handle closed after jb__redis_close(): free @r, then say so. */
static void handle_closed(jb__redis *r)
{
    if (--r->handles > 0 || !r->closing)
        return;
    void (*done)(void *) = r->done;
    void *ud = r->done_userdata;
    free(r->host);
    free(r->path);
    free(r->password);
    free(r);
    if (done != NULL)
        done(ud);
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

/* ---- The socket's watcher ------------------------------------------------ */

/*
 * hiredis's event hooks over a uv_poll_t, one per context. This replaces
 * hiredis 0.14's <adapters/libuv.h>, whose poll callback drops libuv's
 * error status: libuv reports a refused connect (POLLERR) as UV_EBADF and
 * stops the handle, the adapter returns, and hiredis never learns that the
 * connect failed (it would wait for the connect timeout every time). Here
 * an error status runs the handlers hiredis asked for, and hiredis finds
 * the socket's error itself. The watch is freed in its close callback, and
 * that close counts as one of r->handles.
 */
typedef struct watch {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has let go (cleanup) */
    jb__redis *r;
    int events;
} watch;

/*
 * hiredis 0.14 writes with write(2), so a peer gone since the last read
 * raises SIGPIPE, which kills a process that does not ignore it. The
 * library must not change the process's signal dispositions, so the write
 * runs with SIGPIPE blocked on this thread, and a SIGPIPE it raised (none
 * was pending before) is taken off the pending set; write then just fails
 * with EPIPE and hiredis drops the connection.
 */
static void write_without_sigpipe(redisAsyncContext *ac)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    redisAsyncHandleWrite(ac);
    if (!was_pending) {
        const struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Reads first: a peer that closed is noticed before anything is written. */
static void on_poll(uv_poll_t *h, int status, int events)
{
    watch *w = h->data;
    int ev = status < 0 ? w->events : events;
    if (w->ac != NULL && (ev & UV_READABLE))
        redisAsyncHandleRead(w->ac);
    if (w->ac != NULL && (ev & UV_WRITABLE))
        write_without_sigpipe(w->ac);
}

static void watch_update(watch *w)
{
    if (w->events != 0)
        uv_poll_start(&w->poll, w->events, on_poll);
    else
        uv_poll_stop(&w->poll);
}

static void watch_add_read(void *privdata)
{
    watch *w = privdata;
    w->events |= UV_READABLE;
    watch_update(w);
}

static void watch_del_read(void *privdata)
{
    watch *w = privdata;
    w->events &= ~UV_READABLE;
    watch_update(w);
}

static void watch_add_write(void *privdata)
{
    watch *w = privdata;
    w->events |= UV_WRITABLE;
    watch_update(w);
}

static void watch_del_write(void *privdata)
{
    watch *w = privdata;
    w->events &= ~UV_WRITABLE;
    watch_update(w);
}

static void on_watch_closed(uv_handle_t *h)
{
    watch *w = h->data;
    jb__redis *r = w->r;
    free(w);
    handle_closed(r);
}

/* hiredis frees the context: the watch goes once its handle is closed. */
static void watch_cleanup(void *privdata)
{
    watch *w = privdata;
    w->ac = NULL;
    uv_close((uv_handle_t *)&w->poll, on_watch_closed);
}

static int watch_attach(jb__redis *r, redisAsyncContext *ac)
{
    watch *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return -1;
    if (uv_poll_init_socket(r->loop, &w->poll, ac->c.fd) != 0) {
        free(w);
        return -1;
    }
    w->poll.data = w;
    w->ac = ac;
    w->r = r;
    ac->ev.data = w;
    ac->ev.addRead = watch_add_read;
    ac->ev.delRead = watch_del_read;
    ac->ev.addWrite = watch_add_write;
    ac->ev.delWrite = watch_del_write;
    ac->ev.cleanup = watch_cleanup;
    r->handles++;
    return 0;
}

/* ---- The handshake ---------------------------------------------------------- */

static void on_auth(jb__redis *r, const jb__redis_reply *reply, void *userdata)
{
    (void)userdata;
    if (is_connection_error(reply->error))
        return;
    if (reply->error == NULL) {
        r->authed = 1;
        return;
    }
    char why[300];
    snprintf(why, sizeof(why), "AUTH refused: %s", reply->error);
    drop(r, lost_text, why);
}

static void on_ping(jb__redis *r, const jb__redis_reply *reply, void *userdata)
{
    (void)userdata;
    if (is_connection_error(reply->error) || r->ac == NULL)
        return;
    if (reply->error != NULL || !r->authed) {
        char why[300];
        snprintf(why, sizeof(why), "PING refused: %s", reply->error ? reply->error : "no AUTH");
        drop(r, lost_text, why);
        return;
    }
    r->up = 1;
    r->backoff_ms = JB__REDIS_BACKOFF_MIN_MS;
    tell(r, 1, NULL);
}

/* Queues AUTH (when a password is set) and PING; hiredis sends them on connect. */
static int send_handshake(jb__redis *r)
{
    if (r->password != NULL) {
        const char *auth[] = {"AUTH", r->password};
        if (send_cmd(r, on_auth, NULL, 2, auth, NULL) != 0)
            return -1;
    }
    const char *ping[] = {"PING"};
    return send_cmd(r, on_ping, NULL, 1, ping, NULL);
}

/* A context for @ip (NULL: the Unix socket), watched, with the handshake queued. */
static void connect_to(jb__redis *r, const char *ip)
{
    redisAsyncContext *ac =
        ip == NULL ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(ip, r->port);
    char why[256];
    if (ac == NULL || ac->err != 0) {
        snprintf(why, sizeof(why), "%s", ac != NULL ? ac->errstr : "out of memory");
        redisAsyncFree(ac);
        tell(r, 0, why);
        schedule_retry(r);
        return;
    }
    ac->data = r;
    if (watch_attach(r, ac) != 0) {
        redisAsyncFree(ac);
        tell(r, 0, "could not watch the socket");
        schedule_retry(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->connected = 0;
    r->authed = r->password == NULL;
    r->fail_text = lost_text;
    if (send_handshake(r) != 0)
        drop(r, lost_text, "could not queue the handshake");
}

/* The first IPv4 address, else the first: "localhost" often lists ::1 first. */
static const struct addrinfo *pick(const struct addrinfo *res)
{
    for (const struct addrinfo *a = res; a != NULL; a = a->ai_next)
        if (a->ai_family == AF_INET)
            return a;
    return res;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    jb__redis *r = req->data;
    r->resolving = 0;
    if (r->closing) {
        uv_freeaddrinfo(res);
        handle_closed(r);
        return;
    }
    r->handles--;
    char ip[INET6_ADDRSTRLEN] = "";
    const struct addrinfo *a = status == 0 ? pick(res) : NULL;
    if (a != NULL && a->ai_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)(const void *)a->ai_addr, ip, sizeof(ip));
    else if (a != NULL && a->ai_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)(const void *)a->ai_addr, ip, sizeof(ip));
    uv_freeaddrinfo(res);
    if (ip[0] != '\0') {
        connect_to(r, ip);
        return;
    }
    char why[300];
    snprintf(why, sizeof(why), "could not resolve '%s': %s", r->host,
             status < 0 ? uv_strerror(status) : "no address");
    tell(r, 0, why);
    schedule_retry(r);
}

/*
 * One attempt, from the retry timer. A host name is resolved on libuv's
 * threadpool (getaddrinfo blocks); the request counts as a handle, so a
 * close meanwhile waits for its callback.
 */
static void start_attempt(jb__redis *r)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (r->path != NULL) {
        connect_to(r, NULL);
        return;
    }
    if (inet_pton(AF_INET, r->host, buf) == 1 || inet_pton(AF_INET6, r->host, buf) == 1) {
        connect_to(r, r->host);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    r->resolve.data = r;
    if (uv_getaddrinfo(r->loop, &r->resolve, on_resolved, r->host, NULL, &hints) != 0) {
        tell(r, 0, "could not start resolving the host");
        schedule_retry(r);
        return;
    }
    r->handles++;
    r->resolving = 1;
}

/* ---- API ------------------------------------------------------------------ */

jb_status jb__redis_new(uv_loop_t *loop, const jb__redis_options *opts, jb__redis_state_cb cb,
                        void *userdata, jb__redis **out, jb_error *err)
{
    jb__redis *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    jb_status st = parse_url(r, opts->url, err);
    if (st == JB_OK && opts->password != NULL && *opts->password != '\0' &&
        (r->password = strdup(opts->password)) == NULL)
        st = jb_error_set(err, JB_ENOMEM, "out of memory");
    if (st != JB_OK) {
        free(r->host);
        free(r->path);
        free(r);
        return st;
    }
    r->loop = loop;
    r->timeout_ms = opts->timeout_ms != 0 ? opts->timeout_ms : JB__REDIS_DEFAULT_TIMEOUT_MS;
    r->state_cb = cb;
    r->userdata = userdata;
    r->backoff_ms = JB__REDIS_BACKOFF_MIN_MS;
    r->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)r) | 1;
    uv_timer_init(loop, &r->deadline);
    uv_timer_init(loop, &r->retry);
    r->deadline.data = r;
    r->retry.data = r;
    r->handles = 2;
    uv_timer_start(&r->retry, on_retry, 0, 0);
    *out = r;
    return JB_OK;
}

int jb__redis_up(const jb__redis *r)
{
    return r->up;
}

int jb__redis_command(jb__redis *r, jb__redis_reply_cb cb, void *userdata, int argc,
                      const char *const *argv, const size_t *lens)
{
    if (!r->up || r->closing || r->ac == NULL || argc < 1)
        return -1;
    return send_cmd(r, cb, userdata, argc, argv, lens);
}

void jb__redis_close(jb__redis *r, void (*done)(void *userdata), void *userdata)
{
    if (r == NULL)
        return;
    if (r->closing)
        JB_BUG("jb__redis_close called twice");
    r->closing = 1;
    r->done = done;
    r->done_userdata = userdata;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->up = 0;
    r->fail_text = closed_text;
    uv_close((uv_handle_t *)&r->deadline, on_timer_closed);
    uv_close((uv_handle_t *)&r->retry, on_timer_closed);
    if (r->resolving)
        uv_cancel((uv_req_t *)&r->resolve);
    if (ac != NULL)
        redisAsyncFree(ac);
}
