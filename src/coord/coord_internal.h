/*
 * Internals of the resource coordinator (include/jimbot/coord.h), shared by
 * coord.c (life, settings), gpu.c (leases and their queue), nvml.c (the NVML
 * adapter, dlopen'd), quota.c (the sliding-window budget), queue.c (the
 * request queues and their cache), cache_file.c (the cache's file) and
 * state.c (the state file and its group commit).
 *
 * Who owns what: struct jb_coord is coord.c's; gpu.c owns jb__gpu, quota.c
 * jb__quota, state.c jb__state. They talk only through the functions below.
 *
 * Persistence: a part that changed durable state (a grant, a release, a
 * spend) calls jb__coord_persist(); state.c then, on the loop, asks every
 * part for its image (jb__gpu_save, jb__quota_save), writes it on the
 * threadpool, and calls back once it is durable. At start state.c loads the
 * file and gives each part its image (jb__gpu_restore, jb__quota_restore).
 *
 * Loop thread only.
 */
#ifndef JB_COORD_INTERNAL_H
#define JB_COORD_INTERNAL_H

#include "jimbot/coord.h"

#include <stdint.h>
#include <uv.h>

typedef struct jb__gpu jb__gpu;
typedef struct jb__quota jb__quota;
typedef struct jb__state jb__state;
typedef struct jb__nvml jb__nvml;
typedef struct jb__queues jb__queues;
typedef struct jb__redis_ns jb__redis_ns;
typedef struct jb__redis_conf jb__redis_conf;

/* One configured request queue. */
typedef struct jb__queue_conf {
    char *name;
    uint32_t max_depth;
    uint32_t timeout_ms;
    int budget; /* tied to the Claude budget */
    uint32_t max_deliveries;
} jb__queue_conf;

/* One component's share of the budget. */
typedef struct jb__share {
    char *component;
    uint32_t limit;
} jb__share;

/* The live settings (jb_coord_apply_config); every time in milliseconds. */
typedef struct jb__coord_settings {
    uint64_t max_allocation_ms;
    uint64_t expiry_warning_ms;
    uint64_t keepalive_ms;
    uint64_t starvation_ms; /* 0: off */
    uint64_t release_timeout_ms;
    char **priority_components;
    size_t n_priority;
    uint32_t hourly_limit;
    uint64_t window_ms;
    jb__share *shares;
    size_t n_shares;
    uint64_t cache_ttl_ms;
    uint64_t cache_max_bytes;
    jb__queue_conf *queues; /* sorted by name */
    size_t n_queues;
} jb__coord_settings;

struct jb_coord {
    uv_loop_t *loop;
    jb_coord_options opts; /* strings owned (copied) */
    jb__coord_settings set;
    jb__nvml *nvml; /* NULL without NVML */
    jb__gpu *gpu;
    jb__quota *quota;
    jb__state *state;
    jb__queues *queues;
    jb__redis_ns *redis; /* always made; idle without a url */
    int closing;
    jb_coord_close_cb close_cb;
    void *close_ud;
};

/* Wall clock, ms since the epoch (what the state file and the API carry). */
int64_t jb__coord_wall_ms(void);

/* Monotonic ms (the loop's clock, uv_now): what deadlines run on. */
uint64_t jb__coord_now_ms(const jb_coord *co);

/*
 * The class of @component in the priority order: its index in
 * priority_components, or n_priority when it is not named (served after
 * every named one).
 */
size_t jb__coord_component_class(const jb_coord *co, const char *component);

/* The share of @component, 0 when it has none. */
uint32_t jb__coord_share(const jb_coord *co, const char *component);

/* Checks a component name from a request: 1..JB_COORD_MAX_NAME bytes. */
jb_status jb__coord_check_component(const char *component, jb_error *err);

/* ---- state.c -------------------------------------------------------------- */

/* A saved lease. Strings are copies owned by the image. */
typedef struct jb__saved_lease {
    uint32_t device;
    char *lease_id;
    char *component;
    char *reason;
    uint32_t pid;
    int64_t granted_ms, expires_ms; /* wall clock */
} jb__saved_lease;

/* A saved spend: @count requests by @component at @at_ms (wall clock). */
typedef struct jb__saved_spend {
    int64_t at_ms;
    uint32_t count;
    char *component;
} jb__saved_spend;

/* Everything the state file holds. */
typedef struct jb__state_image {
    jb__saved_lease *leases;
    size_t n_leases;
    jb__saved_spend *spends;
    size_t n_spends;
} jb__state_image;

void jb__state_image_release(jb__state_image *img);

/* Called once the state that included the change is durable (JB_OK) or could not be written. */
typedef void (*jb__persist_cb)(jb_status status, const jb_error *err, void *userdata);

/*
 * Opens the state: loads opts.state_path (missing: empty) into @img, which the
 * caller hands to the parts and releases. JB_ECORRUPT on a damaged file.
 */
jb_status jb__state_open(jb_coord *co, jb__state_image *img, jb_error *err);

/*
 * Asks for a durable write of the whole state as it will be once the
 * current loop iteration is over; @cb runs once it is durable (never from
 * inside this call). Without a state path @cb runs on the next loop turn.
 */
void jb__coord_persist(jb_coord *co, jb__persist_cb cb, void *userdata);

/* Writes what is pending, then runs @cb (closing). */
void jb__state_close(jb__state *st, void (*cb)(void *ud), void *ud);

/* ---- gpu.c ---------------------------------------------------------------- */

jb_status jb__gpu_new(jb_coord *co, jb__gpu **out, jb_error *err);
/* Takes the saved leases of @img (restored for the re-attach grace). */
jb_status jb__gpu_restore(jb__gpu *g, const jb__state_image *img, jb_error *err);
/* Adds the live leases to @img (their strings copied). */
jb_status jb__gpu_save(jb__gpu *g, jb__state_image *img);
/* The settings changed: re-order waiters, re-arm timers. */
void jb__gpu_settings_changed(jb__gpu *g);
/* Ends every waiter with ENDED JB_ECLOSED; leases stay (for the state file). */
void jb__gpu_close(jb__gpu *g);
void jb__gpu_free(jb__gpu *g);

/* ---- quota.c -------------------------------------------------------------- */

jb_status jb__quota_new(jb_coord *co, jb__quota **out, jb_error *err);
jb_status jb__quota_restore(jb__quota *q, const jb__state_image *img, jb_error *err);
jb_status jb__quota_save(jb__quota *q, jb__state_image *img);
void jb__quota_settings_changed(jb__quota *q);
/*
 * Milliseconds from now until the window has room for @count more units (0:
 * now; window_ms when the spends in it are too few to free that many).
 * Counts only the spends, not the budget's waiters or shares: the request
 * queues use it to refuse at once what their deadline cannot wait for.
 */
uint64_t jb__quota_time_until(jb__quota *q, uint32_t count);
/* Ends every waiter with JB_ECLOSED. */
void jb__quota_close(jb__quota *q);
void jb__quota_free(jb__quota *q);

/* ---- queue.c -------------------------------------------------------------- */

jb_status jb__queues_new(jb_coord *co, jb__queues **out, jb_error *err);
/*
 * The settings changed: queues are added, updated or retired (their
 * waiters answered JB_EUNAVAILABLE). Out of memory for a new queue is
 * logged and the queue is missing until the next reload.
 */
void jb__queues_settings_changed(jb__queues *qs);
/* Answers every submitter JB_ECLOSED and cancels the budget wait; workers stay until free. */
void jb__queues_close(jb__queues *qs);
void jb__queues_free(jb__queues *qs);

/* ---- redis_ns.c ---------------------------------------------------------- */

/* Loads opts.redis_users_path (missing: none yet; damaged: JB_ECORRUPT). */
jb_status jb__redis_ns_new(jb_coord *co, jb__redis_ns **out, jb_error *err);
/*
 * Reads resource_coordinator.redis.* into a new *@out and checks it whole
 * (allowances, overlapping prefixes: JB_ECONFIG); nothing changes yet.
 */
jb_status jb__redis_ns_prepare(jb__redis_ns *ns, const jb_config *cfg, jb__redis_conf **out,
                               jb_error *err);
/* Takes ownership of *@conf (NULLed) and applies it; cannot fail. */
void jb__redis_ns_apply(jb__redis_ns *ns, jb__redis_conf **conf);
void jb__redis_conf_free(jb__redis_conf *c);
/* Answers rotations JB_ECLOSED, closes the connection and the timer, then @cb; @ns is freed. */
void jb__redis_ns_close(jb__redis_ns *ns, void (*cb)(void *ud), void *ud);
/* Frees an @ns that was never closed (jb_coord_new's failure path only). NULL: no-op. */
void jb__redis_ns_free(jb__redis_ns *ns);

/* The pure parts, for the unit tests. */

/*
 * Shares @max_connections less one among @n namespaces: @fixed[i] >= 0 takes
 * that many, the others (-1) split the rest evenly (what is left over from
 * the division stays unused). JB_ECONFIG when one would get none.
 */
jb_status jb__redis_allowances(uint32_t max_connections, const int64_t *fixed, size_t n,
                               uint32_t *out, jb_error *err);

/* One line of CLIENT LIST, borrowed by the callback. */
typedef struct jb__redis_client {
    uint64_t id, age_s;
    char addr[64];
    char user[JB_COORD_MAX_REDIS_USER + 1];
} jb__redis_client;

/* Calls @fn for each line with id= and age=; returns how many. */
size_t jb__redis_parse_client_list(const char *s, size_t len,
                                   void (*fn)(const jb__redis_client *c, void *ud), void *ud);

/* The users file: a comment line, then one "COMPONENT PASSWORD" line each; *@out malloc'd. */
jb_status jb__redis_users_encode(const char *const *components, const char *const *passwords,
                                 size_t n, char **out, size_t *out_len);
/* JB_ECORRUPT (with the line) for anything but comments and COMPONENT 64-hex lines. */
jb_status jb__redis_users_decode(const char *s, size_t len,
                                 void (*fn)(const char *component, const char *password, void *ud),
                                 void *ud, jb_error *err);

/*
 * Fills @argv with ACL SETUSER @username's whole rule (@bufs holds the
 * formatted words; both must outlive the command's sending); returns argc
 * (at most 32). @shared_access: 0 readwrite, 1 read, 2 none.
 */
int jb__redis_acl_rule(const char *username, const char *password, const char *prefix,
                       const char *shared_prefix, int shared_access, char bufs[4][160],
                       const char **argv);

/* ---- cache_file.c ------------------------------------------------------------ */

/* One cached answer as the cache file holds it. Borrowed. */
typedef struct jb__cache_record {
    const char *queue, *type, *resp_type;
    const void *payload, *resp;
    size_t payload_len, resp_len;
    int64_t expires_ms; /* wall clock */
} jb__cache_record;

/* An image: begin (count), put each record, end (the CRC) into a buffer of image_size bytes. */
size_t jb__cache_record_size(const jb__cache_record *r);
size_t jb__cache_image_size(size_t records_bytes);
void jb__cache_image_begin(unsigned char *buf, uint32_t count);
/* Writes @r at @at; returns its size (jb__cache_record_size). */
size_t jb__cache_image_put(unsigned char *at, const jb__cache_record *r);
void jb__cache_image_end(unsigned char *buf, size_t len);

/*
 * Calls @fn for each record of the file at @path (strings borrowed until
 * it returns). Missing: nothing; damaged: logged, nothing. JB_ENOMEM only.
 */
jb_status jb__cache_file_load(const char *path, void (*fn)(const jb__cache_record *r, void *ud),
                              void *ud);

typedef struct jb__cache_writer jb__cache_writer;
/* NULL when out of memory. */
jb__cache_writer *jb__cache_writer_new(uv_loop_t *loop, const char *path);
/* Takes ownership of *@buf (NULLed): written on the threadpool, after the write in flight. */
void jb__cache_writer_submit(jb__cache_writer *w, unsigned char **buf, size_t len);
/* Frees @w once the writes it holds are done (the loop must run for them). NULL: no-op. */
void jb__cache_writer_free(jb__cache_writer *w);

/* ---- nvml.c --------------------------------------------------------------- */

typedef struct jb__nvml_device {
    char name[96];
    char uuid[96];
    uint64_t memory_total, memory_used;
} jb__nvml_device;

/* Loads @library; JB_ENOENT when it cannot be loaded, JB_EIO when nvmlInit fails. */
jb_status jb__nvml_open(const char *library, jb__nvml **out, jb_error *err);
uint32_t jb__nvml_count(const jb__nvml *n);
jb_status jb__nvml_device_info(jb__nvml *n, uint32_t index, jb__nvml_device *out, jb_error *err);
/*
 * The device memory that processes in @pids hold on device @index (compute
 * and graphics processes), in bytes, in *@bytes.
 */
jb_status jb__nvml_memory_of(jb__nvml *n, uint32_t index, const uint32_t *pids, size_t n_pids,
                             uint64_t *bytes, jb_error *err);
void jb__nvml_close(jb__nvml *n);

#endif /* JB_COORD_INTERNAL_H */
