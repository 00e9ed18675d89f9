/*
 * jimbot/coord.h: the resource coordinator engine: GPU leases and the LLM API
 * budget (docs/coordinator.md).
 *
 * The engine is owned by one libuv loop, like the bus: every function here
 * must be called on that loop's thread and every callback runs there, never
 * from inside the call that registered it. jimbotd puts gRPC in front of it
 * (Infrastructure.AcquireGpu, ReleaseGpu, AcquireApiQuota, GetResourceStatus).
 *
 * GPU leases
 *   - One lease per device at a time. The devices come from NVML (loaded at
 *     run time with dlopen, so neither the build nor a machine without a GPU
 *     needs it) or from the configured count.
 *   - Waiters are served in this order: components named in
 *     priority_components first, in that list's order; then higher priority;
 *     then first come. A waiter that has waited starvation_ms goes ahead of
 *     every waiter that has not (oldest first), which bounds its wait
 *     (docs/coordinator.md "Starvation").
 *   - A lease lasts at most max_allocation_ms. It sends EXPIRING once,
 *     expiry_warning_ms before the end, KEEPALIVE every keepalive_ms, and
 *     ENDED with JB_ELEASE_EXPIRED at the end. jb_coord_gpu_release() ends it
 *     with JB_OK; jb_coord_gpu_cancel() (the holder's stream ended) ends it
 *     without a callback. Either way the device goes to the next waiter at
 *     once, unless NVML shows that the holder's processes (its pid) still
 *     hold memory on the device: then only once that memory is freed, or
 *     after release_timeout_ms (logged).
 *   - A grant is made only once it is durable in the state file, so a
 *     restart never hands a device to a second holder while the first may
 *     still compute on it: leases found in the state file at start are
 *     restored for reattach_grace_ms, in which their holders re-attach with
 *     jb_gpu_request.lease_id; after that (or at their expiry) they end.
 *
 * The API budget
 *   - An exact sliding window: a request spent at time t counts until
 *     t + window_ms (an hour unless configured), never a fixed window.
 *   - A grant is answered only once the spend is durable in the state file,
 *     so a restart never refills the budget.
 *   - With wait_ms > 0 a request that cannot be granted now waits, at most
 *     that long, higher priority first, then first come; it is granted as
 *     soon as the window frees enough.
 *   - Optional shares: a component with a share may spend at most that many
 *     requests per window (others have no cap of their own).
 *
 * Persistence: one state file (jb_coord_options.state_path), written whole
 * to a temporary file, fsync'd, renamed and the folder fsync'd, on the
 * loop's threadpool; one write in flight at a time, the changes made
 * meanwhile ride the next one (group commit). It carries a CRC; a damaged
 * file stops the start (JB_ECORRUPT), never silently refills the budget.
 *
 * Request queues: see "Request queues" below. Shared Redis: see "Shared Redis".
 *
 * Must not depend on: gRPC, protobuf-c, the bus.
 */
#ifndef JIMBOT_COORD_H
#define JIMBOT_COORD_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "jimbot/config.h"
#include "jimbot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct jb_coord jb_coord;
typedef struct jb_gpu_lease jb_gpu_lease;
typedef struct jb_quota_wait jb_quota_wait;

/* The most devices the coordinator manages. */
#define JB_COORD_MAX_DEVICES 64
/* Longest component name, reason and lease id accepted, in bytes. */
#define JB_COORD_MAX_NAME   128
#define JB_COORD_MAX_REASON 256

/* Options, copied by jb_coord_new(); zero fields take the defaults shown. */
typedef struct jb_coord_options {
    /* The state file (jimbotd: <data-dir>/coord.state); NULL: nothing is
     * persisted (tests, embedding). */
    const char *state_path;
    /* The NVML library to dlopen ("libnvidia-ml.so.1"); "" : no NVML. */
    const char *nvml_library;
    /* Devices: 0 = auto (NVML's count, else 1), else this many (at most
     * JB_COORD_MAX_DEVICES; NVML, when present, names the first ones). */
    uint32_t devices;
    /* How long restored leases wait for their holders to re-attach: 15000. */
    uint32_t reattach_grace_ms;
    /* Waiters queued at once (GPU and budget each): 1024; more get
     * JB_EBACKPRESSURE. */
    uint32_t max_waiters;
    /* The request queues' cache file (jimbotd: <data-dir>/queue.cache),
     * loaded at start and written off the loop; NULL: memory only. */
    const char *cache_path;
    /* The Redis users' passwords (jimbotd: <data-dir>/redis.users), mode
     * 0600; NULL: kept in memory only (new passwords at each start). */
    const char *redis_users_path;
} jb_coord_options;

/*
 * Creates the coordinator on @loop: loads the state file (a missing file is
 * an empty state; a damaged one is JB_ECORRUPT with the reason), opens NVML
 * when configured and present (its absence is logged, never an error), and
 * restores saved leases for their re-attach grace. Apply the live settings
 * with jb_coord_apply_config() before use; until then the schema defaults
 * hold. Free it with jb_coord_close().
 */
jb_status jb_coord_new(uv_loop_t *loop, const jb_coord_options *opts, jb_coord **out,
                       jb_error *err);

/*
 * Applies the reloadable settings of @cfg (resource_coordinator.gpu.*,
 * resource_coordinator.claude.*): limits, warning, keepalive, priority
 * components, window, shares. Running leases keep their expiry; waiters are
 * re-ordered; a lower hourly limit does not take back what was granted.
 * On error nothing changes.
 */
jb_status jb_coord_apply_config(jb_coord *co, const jb_config *cfg, jb_error *err);

typedef void (*jb_coord_close_cb)(void *userdata);

/*
 * Starts closing: every waiter ends (GPU waiters with ENDED JB_ECLOSED, budget
 * waiters with JB_ECLOSED), leases stay in the state file (a restarted daemon
 * restores them), the state is written and fsync'd, timers and NVML are
 * closed; then @cb (may be NULL) runs and @co is freed. Leases' callbacks are
 * not called after this; their handles stay valid until cancelled or until
 * @cb. NULL @co: @cb is not called.
 */
void jb_coord_close(jb_coord *co, jb_coord_close_cb cb, void *userdata);

/* ---- GPU leases -------------------------------------------------------- */

typedef struct jb_gpu_request {
    const char *component; /* required, 1..JB_COORD_MAX_NAME bytes */
    int32_t priority;      /* higher first, within a component class */
    uint32_t duration_ms;  /* wanted length; 0 or above the cap: the cap */
    const char *reason;    /* may be NULL */
    uint32_t pid;          /* 0: unknown */
    /* Re-attach to this lease (NULL or "": a new lease). JB_ENOENT when no
     * such lease is held; JB_EINVAL when it belongs to another component;
     * JB_EEXIST when a live stream holds it still. */
    const char *lease_id;
} jb_gpu_request;

typedef enum jb_gpu_event_kind {
    JB_GPU_QUEUED,    /* position: 1 = next in line; again when it changes */
    JB_GPU_GRANTED,   /* lease_id, device, device_uuid, expires_ms, reattached */
    JB_GPU_KEEPALIVE, /* expires_ms */
    JB_GPU_EXPIRING,  /* expires_ms; once */
    JB_GPU_ENDED,     /* status: JB_OK (released), JB_ELEASE_EXPIRED, JB_ECLOSED */
} jb_gpu_event_kind;

/* What the lease callback is told. Borrowed until the callback returns. */
typedef struct jb_gpu_event {
    jb_gpu_event_kind kind;
    uint32_t position;
    const char *lease_id;
    uint32_t device;
    const char *device_uuid; /* "" without NVML */
    int64_t expires_ms;      /* wall clock, ms since epoch */
    int reattached;
    jb_status status;
} jb_gpu_event;

/*
 * Runs on the loop for each event of @lease. After ENDED the handle is
 * invalid (the engine frees it once the callback returns). The callback may
 * call jb_coord_gpu_cancel(@lease) (then no ENDED comes) and any other
 * function of this header.
 */
typedef void (*jb_gpu_cb)(jb_gpu_lease *lease, const jb_gpu_event *ev, void *userdata);

/*
 * Asks for a device. On JB_OK *@out is the handle and @cb will run (QUEUED
 * first when the request must wait, else GRANTED once durable), never from
 * inside this call. Fails with JB_EINVAL (empty or oversized component or
 * reason), JB_EBACKPRESSURE (max_waiters wait already), JB_ENOENT / JB_EEXIST
 * (a re-attach, see lease_id), JB_ECLOSED (closing); then @cb is never
 * called and nothing changed.
 */
jb_status jb_coord_gpu_acquire(jb_coord *co, const jb_gpu_request *req, jb_gpu_cb cb,
                               void *userdata, jb_gpu_lease **out, jb_error *err);

/*
 * The holder went away (its stream ended or broke): a waiter leaves the
 * queue, a lease is released at once (the device then follows the release
 * rules above). The callback is not called again; @lease is invalid when
 * this returns. NULL is a no-op.
 */
void jb_coord_gpu_cancel(jb_gpu_lease *lease);

/*
 * The holder's stream ended because the daemon is shutting down: the lease
 * stays held (and saved), waiting reattach_grace_ms for its holder to
 * re-attach (jb_gpu_request.lease_id), as a lease restored at start does.
 * A waiter simply leaves the queue. The callback is not called again;
 * @lease is invalid when this returns. NULL is a no-op.
 */
void jb_coord_gpu_detach(jb_gpu_lease *lease);

/* What a release reports. */
typedef struct jb_gpu_release_info {
    uint64_t held_ms;
    uint32_t device;
    /* With NVML and a pid: device memory the holder's processes still held. */
    uint64_t memory_held_bytes;
} jb_gpu_release_info;

/*
 * Releases lease @lease_id (ReleaseGpu): its callback gets ENDED with JB_OK,
 * later, on the loop. JB_ENOENT for an unknown lease id, JB_EINVAL for an
 * empty one; then nothing changed. @info may be NULL.
 */
jb_status jb_coord_gpu_release(jb_coord *co, const char *lease_id, jb_gpu_release_info *info,
                               jb_error *err);

/* ---- The API budget ---------------------------------------------------- */

typedef struct jb_quota_request {
    const char *component; /* required, 1..JB_COORD_MAX_NAME bytes */
    uint32_t count;        /* 0 means 1 */
    uint32_t wait_ms;      /* 0: answer at once */
    int32_t priority;      /* among waiters: higher first */
} jb_quota_request;

typedef struct jb_quota_result {
    int granted;
    uint32_t remaining;      /* left in the window after this call */
    uint64_t retry_after_ms; /* not granted: until enough budget frees up */
    uint32_t limit;          /* the hourly limit in force */
} jb_quota_result;

/*
 * The answer to a budget request, on the loop: JB_OK with @r (granted or
 * not), or JB_ECLOSED when the coordinator closed first, or the error that
 * kept the spend from becoming durable (nothing was spent then). Arguments
 * are borrowed.
 */
typedef void (*jb_quota_cb)(jb_status status, const jb_quota_result *r, const jb_error *err,
                            void *userdata);

/*
 * Asks for @req->count requests of budget. @cb runs exactly once, later
 * (never inside this call), unless the wait is cancelled. *@out (may be
 * NULL) is the handle to cancel it with. Fails with JB_EINVAL (empty or
 * oversized component; a count above the hourly limit or the component's
 * share, which could never be granted), JB_EBACKPRESSURE (max_waiters wait
 * already), JB_ECLOSED; then @cb is never called and nothing was spent.
 */
jb_status jb_coord_quota_acquire(jb_coord *co, const jb_quota_request *req, jb_quota_cb cb,
                                 void *userdata, jb_quota_wait **out, jb_error *err);

/*
 * The asker went away: its request is withdrawn (nothing is spent) and @cb
 * is not called. Valid until @cb has run; NULL is a no-op. A grant already
 * being made durable stays spent.
 */
void jb_coord_quota_cancel(jb_quota_wait *w);

/* ---- Request queues ---------------------------------------------------- */

/*
 * Named queues of requests (resource_coordinator.queues; `claude` by
 * default) that submitters put requests on and workers answer
 * (docs/coordinator.md "The request queue").
 *   - Each queue holds at most max_depth waiting requests, served by
 *     priority (higher first), then arrival.
 *   - A queue tied to the budget hands a request to a worker only once it
 *     took one unit of the API budget (made durable first); requests wait
 *     for units instead of failing, and one whose deadline comes before a
 *     unit could be its is refused at once (JB_ERATELIMITED).
 *   - A request equal to one answered within claude.cache_ttl (same queue,
 *     type and payload bytes) is answered from the cache; equal requests
 *     waiting or in flight share one delivery and every submitter gets the
 *     answer. Neither spends budget or reaches a worker again.
 *   - A worker holds at most max_outstanding requests; when it goes away
 *     its unanswered requests go back to the queue (at least once). A
 *     request handed out max_deliveries times to workers that all went
 *     away is answered JB_EIO and kept aside (poison).
 * With jb_coord_options.cache_path the cache survives a restart: it is
 * written there (on the threadpool, at most once a second, and at close)
 * and loaded at start; a damaged file is logged and ignored.
 */

typedef struct jb_queue_submit jb_queue_submit;
typedef struct jb_queue_worker jb_queue_worker;

/* Longest queue name, request id and type accepted, in bytes. */
#define JB_COORD_MAX_QUEUE      64
#define JB_COORD_MAX_REQUEST_ID 128
#define JB_COORD_MAX_TYPE       256
/* Poisoned requests kept aside per queue; older ones are dropped (still counted). */
#define JB_COORD_MAX_POISON_KEPT 64

/* A request to submit; every field is borrowed and copied by the call. */
typedef struct jb_queued_request {
    const char *request_id; /* NULL or "": one is assigned */
    const char *queue;      /* required */
    const char *type;       /* the payload's type; NULL means "" */
    const void *payload;
    size_t payload_len;
    int32_t priority;      /* higher first */
    uint32_t timeout_ms;   /* 0: the queue's timeout_ms */
    uint32_t max_wait_ms;  /* 0: none; else the wait is cut to this (the caller's deadline) */
    const char *submitter; /* who asks (logs, status); may be NULL */
    int bypass_cache;      /* neither read the cache nor join an equal request */
} jb_queued_request;

/*
 * A response: what a worker gives jb_coord_queue_respond(), and what a
 * submitter's callback is told. Borrowed until the call or callback returns.
 */
typedef struct jb_queued_response {
    const char *request_id;
    const char *type; /* NULL means "" */
    const void *payload;
    size_t payload_len;
    const char *error; /* non-empty: the worker could not answer (never cached) */
    int cached;        /* to submitters: answered from the cache */
} jb_queued_response;

/* A request handed to a worker. Borrowed until the callback returns. */
typedef struct jb_queued_task {
    const char *request_id; /* answer with this id */
    const char *queue;
    const char *type;
    const void *payload;
    size_t payload_len;
    int32_t priority;
    const char *submitter;   /* "" when none was given */
    int64_t enqueued_ms;     /* wall clock */
    uint32_t timeout_ms;     /* left until the latest submitter's deadline */
    uint32_t delivery_count; /* 1 the first time it is handed out */
} jb_queued_task;

/*
 * The answer to a submit, exactly once, on the loop (never inside the
 * submit): JB_OK with @resp (the worker's answer, which may carry an
 * error text, or the cache's); JB_ETIMEDOUT when none came before the
 * deadline; JB_EIO when the request was poisoned; JB_EUNAVAILABLE when
 * its queue was removed from the configuration while it waited;
 * JB_ECLOSED when the coordinator closed. @resp is NULL unless JB_OK.
 * Arguments are borrowed; the submit handle is invalid once it returns.
 */
typedef void (*jb_queue_submit_cb)(jb_status status, const jb_queued_response *resp,
                                   const jb_error *err, void *userdata);

/*
 * Submits @req. On JB_OK @cb will run once (see jb_queue_submit_cb) and
 * *@out (may be NULL) is the handle to cancel with. Fails, with @cb never
 * called and nothing queued, with JB_EINVAL (no or unknown-length queue,
 * oversized id or type), JB_ENOENT (no such queue), JB_EEXIST (the
 * request id is in use), JB_EUNAVAILABLE (no worker takes this queue; a
 * cache hit is still answered), JB_EBACKPRESSURE (max_depth requests
 * wait already), JB_ERATELIMITED (a budget queue: no unit could be this
 * request's before its deadline), JB_ECLOSED. On JB_EBACKPRESSURE and
 * JB_ERATELIMITED *@retry_after_ms (may be NULL) says when trying again
 * may succeed: for JB_ERATELIMITED, when a unit could be this request's.
 */
jb_status jb_coord_queue_submit(jb_coord *co, const jb_queued_request *req, jb_queue_submit_cb cb,
                                void *userdata, jb_queue_submit **out, uint64_t *retry_after_ms,
                                jb_error *err);

/*
 * The submitter went away: @cb is not called. A request no other
 * submitter waits for leaves the queue and never reaches a worker; one
 * already handed out stays with its worker (its answer is still cached).
 * Valid until @cb ran; NULL is a no-op.
 */
void jb_coord_queue_cancel(jb_queue_submit *s);

/*
 * Runs on the loop for each request handed to @w, never inside the call
 * that registered @w. The callback may call any function of this header,
 * jb_coord_queue_worker_free(@w) included.
 */
typedef void (*jb_queue_worker_cb)(jb_queue_worker *w, const jb_queued_task *task, void *userdata);

/*
 * Registers a worker taking @queue, holding at most @max_outstanding
 * (0 means 1) unanswered requests. Fails with JB_EINVAL (bad name),
 * JB_ENOENT (no such queue), JB_ECLOSED; then nothing changed. Free it
 * with jb_coord_queue_worker_free(); the handle stays valid until then,
 * or until the coordinator's close callback, which frees what is left.
 */
jb_status jb_coord_queue_worker_new(jb_coord *co, const char *queue, uint32_t max_outstanding,
                                    jb_queue_worker_cb cb, void *userdata, jb_queue_worker **out,
                                    jb_error *err);

/*
 * The worker went away: its unanswered requests go back to their queue
 * (or are poisoned after max_deliveries). @w is invalid when this returns;
 * NULL is a no-op.
 */
void jb_coord_queue_worker_free(jb_queue_worker *w);

/*
 * Answers the request @resp->request_id that a worker holds: every
 * submitter waiting for it gets @resp (later, on the loop), and without an
 * error text it is cached. JB_ENOENT when no worker holds such a request
 * (unknown, not handed out, or answered already), JB_EINVAL for an empty
 * id; then nothing changed.
 */
jb_status jb_coord_queue_respond(jb_coord *co, const jb_queued_response *resp, jb_error *err);

/* One queue. Strings are borrowed until the next call into the engine. */
typedef struct jb_queue_info {
    const char *name;
    const char *budget; /* "claude" or "none" */
    uint32_t max_depth;
    uint32_t depth;     /* waiting for a worker (or a unit) */
    uint32_t in_flight; /* held by workers */
    uint32_t workers;
    uint64_t oldest_wait_ms; /* how long the oldest waiting request waits; 0 if none */
    uint64_t submitted;      /* submits accepted */
    uint64_t cache_hits;
    uint64_t coalesced; /* submits that joined an equal request */
    uint64_t poisoned;
    uint64_t cache_bytes; /* this queue's share of the cache */
    uint32_t cache_entries;
} jb_queue_info;

/* The queues in the configuration, in name order. */
void jb_coord_foreach_queue(jb_coord *co, void (*fn)(const jb_queue_info *q, void *ud), void *ud);

/* The poisoned requests kept aside in @queue, oldest first (delivery_count as handed out). */
void jb_coord_foreach_queue_poison(jb_coord *co, const char *queue,
                                   void (*fn)(const jb_queued_task *t, void *ud), void *ud);

/* ---- Shared Redis -------------------------------------------------------- */

/*
 * The shared Redis (resource_coordinator.redis.*; docs/redis.md). With a url,
 * the coordinator keeps one connection to Redis on the loop (never blocking
 * it; reconnecting with backoff when Redis is down, which never stops the
 * rest of the coordinator) and:
 *   - creates or updates one ACL user per component of redis.namespaces,
 *     "jimbot-<component>", allowed keys <prefix>* read-write and the shared
 *     prefix as shared_access says, nothing else, dangerous commands denied;
 *     its password generated once, kept in jb_coord_options.redis_users_path
 *     (mode 0600), stable across restarts, changed by
 *     jb_coord_redis_rotate();
 *   - every check_interval_ms lists Redis's clients and ends a component's
 *     connections beyond its allowance, newest first, logging each.
 * Allowances: max_connections less one (jimbotd's own) is shared out; a
 * namespace's max_connections takes that many, the others split the rest
 * evenly (at least one each, else the configuration is refused).
 */

/* Longest Redis URL, user name, password and key prefix handled, in bytes. */
#define JB_COORD_MAX_REDIS_URL    256
#define JB_COORD_MAX_REDIS_USER   (JB_COORD_MAX_NAME + 8)
#define JB_COORD_MAX_REDIS_PASS   64
#define JB_COORD_MAX_REDIS_PREFIX 64

/* A component's credentials, copied out. */
typedef struct jb_redis_access {
    char url[JB_COORD_MAX_REDIS_URL + 1]; /* redis://HOST:PORT, no credentials */
    char username[JB_COORD_MAX_REDIS_USER + 1];
    char password[JB_COORD_MAX_REDIS_PASS + 1];
    char key_prefix[JB_COORD_MAX_REDIS_PREFIX + 1];
    char shared_prefix[JB_COORD_MAX_REDIS_PREFIX + 1]; /* "" when none is configured */
    const char *shared_access;                         /* "readwrite", "read", "none" */
    uint32_t max_connections;                          /* the allowance */
} jb_redis_access;

/*
 * @component's access. JB_EUNSUPPORTED: no Redis configured (url empty);
 * JB_ENOENT: no such namespace ("shared" is none); JB_EUNAVAILABLE: its ACL
 * user is not in place yet (Redis not reached since the start or since the
 * namespace was added). On error @out is untouched.
 */
jb_status jb_coord_redis_access(jb_coord *co, const char *component, jb_redis_access *out,
                                jb_error *err);

/*
 * Gives @component a new password (durable in the users file, then set in
 * Redis; connections already authenticated stay open) and answers the new
 * access through @cb, on the loop, never inside this call. Errors as
 * jb_coord_redis_access(), before anything changed.
 */
typedef void (*jb_redis_access_cb)(jb_status st, const jb_redis_access *access, const jb_error *err,
                                   void *userdata);
jb_status jb_coord_redis_rotate(jb_coord *co, const char *component, jb_redis_access_cb cb,
                                void *userdata, jb_error *err);

/* Redis as the coordinator sees it. Strings borrowed until the next call into the engine. */
typedef struct jb_redis_info {
    int configured;
    const char *url; /* without credentials */
    int reachable;   /* connected, authenticated, users in place */
    const char *error;
    int64_t checked_ms;   /* the last CLIENT LIST, wall clock; 0: none yet */
    uint32_t connections; /* every client it counted */
    uint32_t max_connections;
} jb_redis_info;

typedef struct jb_redis_component_info {
    const char *component;
    const char *username;
    const char *key_prefix;
    uint32_t connections; /* at the last check */
    uint32_t allowance;
    uint64_t connections_closed; /* ended beyond the allowance, since the start */
} jb_redis_component_info;

void jb_coord_redis_info(jb_coord *co, jb_redis_info *out);
/* The namespaces' components, in name order. */
void jb_coord_foreach_redis_component(jb_coord *co,
                                      void (*fn)(const jb_redis_component_info *c, void *ud),
                                      void *ud);

/* ---- Status ------------------------------------------------------------ */

/* One device. Strings are borrowed until the next call into the engine. */
typedef struct jb_gpu_device_info {
    uint32_t index;
    const char *name; /* "" without NVML */
    const char *uuid;
    int available;
    const char *holder; /* component, "" when free */
    const char *lease_id;
    const char *reason;
    uint32_t holder_pid;
    int64_t granted_ms, expires_ms; /* wall clock */
    uint64_t memory_total_bytes, memory_used_bytes;
    int releasing; /* waiting for the holder's memory to be freed */
    int restored;  /* waiting for the holder to re-attach */
} jb_gpu_device_info;

typedef struct jb_gpu_waiter_info {
    uint32_t position; /* 1 = next */
    const char *component;
    int32_t priority;
    int64_t since_ms; /* wall clock */
    const char *reason;
} jb_gpu_waiter_info;

typedef struct jb_quota_info {
    uint32_t limit;
    uint32_t used;        /* spent in the current window */
    uint32_t remaining;   /* limit - used, 0 at least */
    int64_t next_slot_ms; /* wall clock when one more frees up; 0 if remaining > 0 */
    uint32_t waiting;     /* budget requests waiting */
    uint32_t window_ms;
} jb_quota_info;

typedef struct jb_quota_component_info {
    const char *component;
    uint32_t used;
    uint32_t share; /* 0: no share of its own */
} jb_quota_component_info;

/* "nvml" or "config". */
const char *jb_coord_gpu_source(const jb_coord *co);

/* The devices in index order, and the waiters in serving order. */
void jb_coord_foreach_gpu(jb_coord *co, void (*fn)(const jb_gpu_device_info *d, void *ud),
                          void *ud);
void jb_coord_foreach_gpu_waiter(jb_coord *co, void (*fn)(const jb_gpu_waiter_info *w, void *ud),
                                 void *ud);

/* The budget now, and each component that spent or has a share. */
void jb_coord_quota_info(jb_coord *co, jb_quota_info *out);
void jb_coord_foreach_quota_component(jb_coord *co,
                                      void (*fn)(const jb_quota_component_info *c, void *ud),
                                      void *ud);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_COORD_H */
