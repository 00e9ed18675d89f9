/*
 * GetRedisAccess in the client library (include/jimbot/client.h "the shared
 * Redis"): a component's Redis ACL user, password, key prefix and connection
 * allowance, as jimbotd provisioned them.
 *
 * The answer is one unpacked protobuf-c message kept inside the access
 * record; the public struct's strings point into it. The password is a
 * secret: jb_client_redis_access_free() and the blocking call wipe the copies
 * this file owns with explicit_bzero() before they go back to malloc (gRPC's
 * own buffers, and the async call's borrowed answer, are out of its reach).
 * Nothing here prints or logs it.
 *
 * The call itself is an ordinary unary call (jb__client_unary_call() and
 * jb__client_unary_start() in client.c); this file only packs the request
 * and unpacks the answer. It does not talk to Redis: connecting is the
 * caller's business (hiredis, redis-cli, anything), with these credentials.
 */
#include "client/internal.h"

#include "core/buf.h"

#include "jimbot/infra/v1/infrastructure.pb-c.h"

#include <stdlib.h>
#include <string.h>

#define M_REDIS_ACCESS "/jimbot.infra.v1.Infrastructure/GetRedisAccess"
#define M_REDIS_ROTATE "/jimbot.infra.v1.Infrastructure/RotateRedisPassword"

typedef struct access_impl {
    jb_client_redis_access pub;
    Jimbot__Infra__V1__RedisAccess *msg;
    char component[]; /* a copy of the component asked for */
} access_impl;

static jb_status pack_access(const char *component, uint8_t **buf, size_t *len, jb_error *err)
{
    if (component == NULL || component[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "GetRedisAccess: no component");
    Jimbot__Infra__V1__GetRedisAccessRequest r = JIMBOT__INFRA__V1__GET_REDIS_ACCESS_REQUEST__INIT;
    r.component = (char *)component;
    *buf = jb__client_pack(&r.base, len);
    return JB_OK;
}

static jb_status parse_access(const char *component, const uint8_t *resp, size_t len,
                              jb_client_redis_access **out, jb_error *err)
{
    Jimbot__Infra__V1__RedisAccess *m = jimbot__infra__v1__redis_access__unpack(NULL, len, resp);
    if (m == NULL)
        return jb_error_set(err, JB_EPARSE, "GetRedisAccess: malformed response (%zu bytes)", len);
    size_t n = strlen(component) + 1;
    access_impl *a = jb__xmalloc(sizeof(*a) + n);
    memcpy(a->component, component, n);
    a->msg = m;
    a->pub = (jb_client_redis_access){
        .component = a->component,
        .url = m->url,
        .username = m->username,
        .password = m->password,
        .key_prefix = m->key_prefix,
        .max_connections = m->max_connections,
        .shared_prefix = m->shared_prefix,
        .shared_access = m->shared_access[0] != '\0' ? m->shared_access : "none",
    };
    *out = &a->pub;
    return JB_OK;
}

/* Wipes a buffer that held the password (the answer as it came off the wire). */
static void wipe(uint8_t *p, size_t len)
{
    if (p != NULL)
        explicit_bzero(p, len);
}

/* GetRedisAccess or RotateRedisPassword (@method), waiting for the answer. */
static jb_status access_call_sync(jb_client *c, const char *method, const char *component,
                                  jb_client_redis_access **out, jb_error *err)
{
    uint8_t *buf = NULL, *resp = NULL;
    size_t len, resp_len = 0;
    jb_status st = pack_access(component, &buf, &len, err);
    if (st != JB_OK)
        return st;
    st = jb__client_unary_call(c, method, buf, len, 0, &resp, &resp_len, err);
    free(buf);
    if (st == JB_OK)
        st = parse_access(component, resp, resp_len, out, err);
    wipe(resp, resp_len);
    free(resp);
    return st;
}

jb_status jb_client_redis_access_get(jb_client *c, const char *component,
                                     jb_client_redis_access **out, jb_error *err)
{
    return access_call_sync(c, M_REDIS_ACCESS, component, out, err);
}

jb_status jb_client_redis_password_rotate(jb_client *c, const char *component,
                                          jb_client_redis_access **out, jb_error *err)
{
    return access_call_sync(c, M_REDIS_ROTATE, component, out, err);
}

typedef struct access_call {
    jb_client_redis_access_cb cb;
    void *userdata;
    char component[];
} access_call;

static void access_done(jb_client *c, jb_status status, const jb_error *err,
                        const uint8_t *response, size_t len, uint32_t retry_after_ms,
                        void *userdata)
{
    (void)c;
    (void)retry_after_ms;
    access_call *call = userdata;
    jb_client_redis_access *out = NULL;
    jb_error perr;
    if (status == JB_OK &&
        (status = parse_access(call->component, response, len, &out, &perr)) != JB_OK)
        err = &perr;
    call->cb(status, out, status == JB_OK ? NULL : err, call->userdata);
    free(call);
}

jb_status jb_client_redis_access_get_async(jb_client *c, const char *component,
                                           jb_client_redis_access_cb cb, void *userdata,
                                           jb_error *err)
{
    if (cb == NULL)
        return jb_error_set(err, JB_EINVAL, "GetRedisAccess: no callback");
    uint8_t *buf = NULL;
    size_t len;
    jb_status st = pack_access(component, &buf, &len, err);
    if (st != JB_OK)
        return st;
    size_t n = strlen(component) + 1;
    access_call *call = jb__xmalloc(sizeof(*call) + n);
    call->cb = cb;
    call->userdata = userdata;
    memcpy(call->component, component, n);
    st = jb__client_unary_start(c, M_REDIS_ACCESS, buf, len, 0, access_done, call, err);
    free(buf);
    if (st != JB_OK)
        free(call);
    return st;
}

void jb_client_redis_access_free(jb_client_redis_access *pub)
{
    if (pub == NULL)
        return;
    access_impl *a = (access_impl *)pub;
    if (a->msg->password != NULL)
        explicit_bzero(a->msg->password, strlen(a->msg->password));
    jimbot__infra__v1__redis_access__free_unpacked(a->msg, NULL);
    free(a);
}
