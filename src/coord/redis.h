/*
 * The hiredis adapter (redis.c): one asynchronous connection to Redis on
 * the coordinator's libuv loop, through hiredis's async API watched with the
 * loop's uv_poll (redis.c says why not hiredis's own libuv adapter). It is the
 * only file that includes hiredis; redis_ns.c (the namespaces, their ACL
 * users and the connection budget) talks to Redis through this header.
 *
 * Life: jb__redis_new() starts connecting at once and keeps the connection
 * up until jb__redis_close(): connect (bounded by timeout_ms), AUTH with the
 * password when one is set, PING; then the state callback says "up". A
 * failure (refused, timeout, a reply that does not come within timeout_ms,
 * the server closing the connection) says "down" with the reason, fails the
 * commands in flight, and retries after a backoff (100 ms doubling to 30 s,
 * with jitter), forever. Nothing here blocks the loop.
 *
 * Loop thread only.
 */
#ifndef JB_COORD_REDIS_H
#define JB_COORD_REDIS_H

#include "jimbot/status.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct jb__redis jb__redis;

/*
 * A reply, borrowed until the callback returns. Exactly one of:
 *   error != NULL   the command failed: Redis's error reply ("NOPERM ..."),
 *                   or the connection's ("connection lost", "timed out",
 *                   "closed"); nothing else is set;
 *   else            str/len (a status, simple or bulk string; NULL for nil)
 *                   or integer (an integer reply). Arrays are not handled
 *                   (no command used here returns one): error "unexpected
 *                   array reply".
 */
typedef struct jb__redis_reply {
    const char *error;
    const char *str;
    size_t len;
    long long integer;
} jb__redis_reply;

typedef void (*jb__redis_reply_cb)(jb__redis *r, const jb__redis_reply *reply, void *userdata);

/* @up: 1 connected and authenticated, 0 down (@error says why). */
typedef void (*jb__redis_state_cb)(jb__redis *r, int up, const char *error, void *userdata);

typedef struct jb__redis_options {
    const char *url;      /* redis://HOST:PORT or unix:PATH (rediss:// is refused: no TLS yet) */
    const char *password; /* NULL or "": no AUTH */
    uint32_t timeout_ms;  /* connect and each reply; 0: 5000 */
} jb__redis_options;

/* Starts connecting. JB_EINVAL for a URL it cannot parse; JB_ENOMEM. */
jb_status jb__redis_new(uv_loop_t *loop, const jb__redis_options *opts, jb__redis_state_cb cb,
                        void *userdata, jb__redis **out, jb_error *err);

/* Whether the connection is up now (the last state callback said so). */
int jb__redis_up(const jb__redis *r);

/*
 * Sends a command of @argc arguments (binary-safe: @lens[i] bytes of
 * @argv[i]; @lens NULL: NUL-terminated). @cb (may be NULL) runs once, on the
 * loop, never inside this call. Returns -1 when the connection is not up
 * (then @cb is never called), else 0.
 */
int jb__redis_command(jb__redis *r, jb__redis_reply_cb cb, void *userdata, int argc,
                      const char *const *argv, const size_t *lens);

/*
 * Ends the connection: commands in flight get error "closed", no state
 * callback runs any more, and once every handle is closed @done (may be
 * NULL) runs and @r is freed. NULL @r: @done is not called.
 */
void jb__redis_close(jb__redis *r, void (*done)(void *userdata), void *userdata);

#endif /* JB_COORD_REDIS_H */
