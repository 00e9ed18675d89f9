/*
 * jimbot/status.h: status codes and error detail, shared by every module.
 *
 * Every fallible function in libjimbot returns a jb_status: JB_OK (0) on
 * success, a negative code otherwise. One X-macro, JB_STATUS_MAP, makes the
 * enum, jb_strerror() and jb_status_name(), so the three cannot drift.
 *
 * Detail travels in an optional jb_error out-parameter that the caller owns:
 * functions that fail fill it (when it is not NULL) and leave it untouched on
 * success. There is no thread-local "last error" and callers never read errno.
 */
#ifndef JIMBOT_STATUS_H
#define JIMBOT_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* XX(name, value, description) */
#define JB_STATUS_MAP(XX)                                   \
    XX(OK, 0, "success")                                    \
    XX(EINVAL, -1, "invalid argument")                      \
    XX(ENOMEM, -2, "out of memory")                         \
    XX(EIO, -3, "input/output error")                       \
    XX(ENOENT, -4, "not found")                             \
    XX(EEXIST, -5, "already exists")                        \
    XX(ECONFIG, -6, "invalid configuration")                \
    XX(EPARSE, -7, "malformed input")                       \
    XX(ETOOBIG, -8, "too large")                            \
    XX(EBACKPRESSURE, -9, "over capacity, try again later") \
    XX(ERATELIMITED, -10, "rate limit reached")             \
    XX(ELEASE_EXPIRED, -11, "lease expired")                \
    XX(EBREAKER_OPEN, -12, "circuit breaker open")          \
    XX(ECLOSED, -13, "shutting down or closed")             \
    XX(ETIMEDOUT, -14, "timed out")                         \
    XX(EUNAVAILABLE, -15, "unavailable")                    \
    XX(ECORRUPT, -16, "data corrupted")                     \
    XX(EINCOMPATIBLE, -17, "incompatible change")           \
    XX(EUNSUPPORTED, -18, "not supported")                  \
    XX(EBUG, -19, "internal error (a bug)")

typedef enum jb_status {
#define JB__STATUS_ENUM(name, value, text) JB_##name = (value),
    JB_STATUS_MAP(JB__STATUS_ENUM)
#undef JB__STATUS_ENUM
} jb_status;

/* A static description of @status ("invalid argument"); never NULL. */
const char *jb_strerror(jb_status status);

/* The code's name without prefix ("EINVAL"); never NULL. */
const char *jb_status_name(jb_status status);

/*
 * Error detail. Caller-owned storage, no allocation: declare one on the stack
 * and pass its address (or NULL when the detail is not wanted).
 */
typedef struct jb_error {
    jb_status code;
    char message[512];
} jb_error;

/*
 * Fills @err (when not NULL) with @code and a printf-formatted message, and
 * returns @code, so that a failing path can end with
 * `return jb_error_set(err, JB_EINVAL, "bad topic '%s'", t);`.
 * A message longer than the buffer is truncated.
 */
jb_status jb_error_set(jb_error *err, jb_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Resets @err to JB_OK with an empty message. */
void jb_error_clear(jb_error *err);

/*
 * JB_BUG: a broken invariant inside libjimbot (never bad input). Prints the
 * place and the message to stderr and aborts.
 */
#define JB_BUG(...) jb__bug(__FILE__, __LINE__, __VA_ARGS__)
#ifdef __cplusplus
[[noreturn]]
#else
_Noreturn
#endif
void jb__bug(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_STATUS_H */
