/*
 * GPU leases (include/jimbot/coord.h "GPU leases", docs/coordinator.md).
 *
 * The parts: a device table (one lease per device at a time), the waiters
 * (handles not yet granted), and one "pump" that does everything a change
 * may set off: it delivers the ENDED events of released leases, the GRANTED
 * events of re-attached ones, grants free devices to the first waiters and
 * tells waiters whose position changed. API calls only change the state and
 * schedule the pump, so no callback ever runs inside the call that caused it.
 *
 * A device is FREE, GRANTING (the lease is made and is being written to the
 * state file: no one else gets the device, the holder hears nothing yet),
 * HELD (GRANTED was sent; or the lease waits for a re-attach: detached at
 * shutdown, or restored at start, with no holder), or RELEASING (the lease
 * ended but NVML shows the holder's processes still hold memory on it).
 * Each device has one timer, armed for its next deadline: the next
 * keepalive, the expiry warning, the expiry, the end of a re-attach grace,
 * or the next NVML poll of a release. Deadlines run on the loop's monotonic
 * clock; the wall clock is only what clients see and what is saved.
 *
 * Serving order: waiters that have waited starvation_ms come first, oldest
 * first; then the class of the component (its place in priority_components,
 * unnamed last), then higher priority, then arrival. The order depends on
 * time, so the pump also wakes when the next waiter becomes starved.
 *
 * Callbacks may call anything in coord.h, also jb_coord_close(): after
 * each delivery the code checks whether its handle is gone (cancelled or
 * detached in the callback) and whether the coordinator started closing,
 * and touches nothing more then. At close the timers are closed with
 * uv_close(); struct jb__gpu lives on (freed by jb__gpu_free()) until the
 * last close callback and the last persist callback have run.
 *
 * Loop thread only. Must not depend on gRPC or the bus.
 */
#include "coord/coord_internal.h"

#include "jimbot/log.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define LEASE_ID_BYTES  8 /* 16 hex characters */
#define RELEASE_POLL_MS 200
#define NO_DEADLINE     UINT64_MAX

typedef enum dev_state { DEV_FREE, DEV_GRANTING, DEV_HELD, DEV_RELEASING } dev_state;

typedef struct gpu_dev {
    jb__gpu *g;
    uint32_t index;
    uv_timer_t timer;
    jb__nvml_device nv;
    int has_nv;
    dev_state state;
    uint64_t gen; /* grows whenever a lease starts or ends here */
    /* The lease (GRANTING and HELD). */
    char lease_id[JB_COORD_MAX_NAME + 1];
    char *component, *reason;
    uint32_t pid;
    int64_t granted_wall, expires_wall;
    uint64_t granted_mono, expires_mono;
    jb_gpu_lease *holder; /* NULL: waits for a re-attach until grace_mono */
    uint64_t grace_mono;
    int expiring_sent;
    uint64_t next_keepalive;
    /* A release waiting for NVML (RELEASING). */
    uint32_t *pids;
    size_t n_pids;
    uint64_t next_poll, release_deadline;
} gpu_dev;

typedef enum handle_state { H_WAITING, H_HOLDING, H_ENDING, H_ENDED } handle_state;

struct jb_gpu_lease {
    jb__gpu *g;
    jb_gpu_cb cb;
    void *ud;
    handle_state state;
    char *component, *reason;
    int32_t priority;
    uint32_t pid;
    uint32_t duration_ms;
    uint64_t arrived_mono, seq;
    int64_t since_wall;
    size_t cls;             /* component class, refreshed before each sort */
    uint32_t sent_position; /* the last QUEUED position told, 0: none */
    gpu_dev *dev;           /* H_HOLDING */
    int granted_pending;    /* a re-attach: GRANTED still to send */
    char lease_id[JB_COORD_MAX_NAME + 1];
    uint32_t device;
    jb_status end_status; /* H_ENDING */
    jb_gpu_lease *next_ended;
    int in_cb; /* callbacks of this handle running (nested when one closes) */
    int gone;
};

struct jb__gpu {
    jb_coord *co;
    uint32_t n_devices;
    gpu_dev *devs;
    const char *source;
    jb_gpu_lease **waiters;
    size_t n_waiters, cap_waiters;
    jb_gpu_lease *ended_head, *ended_tail;
    uv_timer_t pump;
    int dirty, in_pump, closing, freed;
    uint64_t seq;
    size_t open_handles; /* timers not closed yet */
    size_t tickets;      /* persists whose callback has not come yet */
};

/* What a persist callback needs to find its grant again. */
typedef struct ticket {
    jb__gpu *g;
    uint32_t device; /* UINT32_MAX: a persist after a release, nothing to do */
    uint64_t gen;
} ticket;

static void pump_schedule(jb__gpu *g);
static void dev_arm(gpu_dev *d);

static uint64_t now_ms(const jb__gpu *g)
{
    return jb__coord_now_ms(g->co);
}

static const jb__coord_settings *settings(const jb__gpu *g)
{
    return &g->co->set;
}

/* The keepalive interval; never under the schema's minimum, so the timer never spins. */
static uint64_t keepalive_ms(const jb__gpu *g)
{
    return settings(g)->keepalive_ms < 100 ? 100 : settings(g)->keepalive_ms;
}

/* ---- Handles ---------------------------------------------------------------- */

static void handle_free(jb_gpu_lease *h)
{
    free(h->component);
    free(h->reason);
    free(h);
}

/*
 * Runs @h's callback with @ev. Returns 0 when @h is gone after it (ENDED,
 * or cancelled or detached inside the callback): then it was freed, or will
 * be by the outer delivery when this one is nested in another callback of
 * @h (the callback closed the coordinator).
 */
static int deliver(jb_gpu_lease *h, const jb_gpu_event *ev)
{
    h->in_cb++;
    h->cb(h, ev, h->ud);
    h->in_cb--;
    if (h->gone || ev->kind == JB_GPU_ENDED) {
        h->gone = 1;
        if (h->in_cb == 0)
            handle_free(h);
        return 0;
    }
    return 1;
}

static void deliver_ended(jb_gpu_lease *h, jb_status status)
{
    jb_gpu_event ev = {.kind = JB_GPU_ENDED,
                       .lease_id = h->lease_id,
                       .device = h->device,
                       .device_uuid = "",
                       .status = status};
    h->state = H_ENDED;
    deliver(h, &ev);
}

static void ended_push(jb__gpu *g, jb_gpu_lease *h, jb_status status)
{
    h->state = H_ENDING;
    h->end_status = status;
    h->dev = NULL;
    h->next_ended = NULL;
    if (g->ended_tail != NULL)
        g->ended_tail->next_ended = h;
    else
        g->ended_head = h;
    g->ended_tail = h;
    pump_schedule(g);
}

static void ended_remove(jb__gpu *g, jb_gpu_lease *h)
{
    jb_gpu_lease **pp = &g->ended_head;
    jb_gpu_lease *prev = NULL;
    while (*pp != NULL && *pp != h) {
        prev = *pp;
        pp = &(*pp)->next_ended;
    }
    if (*pp == NULL)
        return;
    *pp = h->next_ended;
    if (g->ended_tail == h)
        g->ended_tail = prev;
}

/* ---- Waiters ---------------------------------------------------------------- */

static int starved(const jb__gpu *g, const jb_gpu_lease *w, uint64_t now)
{
    uint64_t s = settings(g)->starvation_ms;
    return s > 0 && now - w->arrived_mono >= s;
}

/* Whether @a is served before @b (the order in the file comment). */
static int serves_before(const jb__gpu *g, const jb_gpu_lease *a, const jb_gpu_lease *b,
                         uint64_t now)
{
    int sa = starved(g, a, now), sb = starved(g, b, now);
    if (sa != sb)
        return sa;
    if (!sa && a->cls != b->cls)
        return a->cls < b->cls;
    if (!sa && a->priority != b->priority)
        return a->priority > b->priority;
    return a->seq < b->seq;
}

/* Puts the waiters in serving order (insertion sort: the order rarely changes much). */
static void waiters_sort(jb__gpu *g)
{
    uint64_t now = now_ms(g);
    for (size_t i = 0; i < g->n_waiters; i++)
        g->waiters[i]->cls = jb__coord_component_class(g->co, g->waiters[i]->component);
    for (size_t i = 1; i < g->n_waiters; i++) {
        jb_gpu_lease *w = g->waiters[i];
        size_t j = i;
        for (; j > 0 && serves_before(g, w, g->waiters[j - 1], now); j--)
            g->waiters[j] = g->waiters[j - 1];
        g->waiters[j] = w;
    }
}

static jb_status waiter_add(jb__gpu *g, jb_gpu_lease *h, jb_error *err)
{
    if (g->n_waiters == g->cap_waiters) {
        size_t cap = g->cap_waiters > 0 ? g->cap_waiters * 2 : 16;
        jb_gpu_lease **w = realloc(g->waiters, cap * sizeof(*w));
        if (w == NULL)
            return jb_error_set(err, JB_ENOMEM, "out of memory");
        g->waiters = w;
        g->cap_waiters = cap;
    }
    g->waiters[g->n_waiters++] = h;
    h->state = H_WAITING;
    return JB_OK;
}

static void waiter_remove(jb__gpu *g, jb_gpu_lease *h)
{
    for (size_t i = 0; i < g->n_waiters; i++) {
        if (g->waiters[i] == h) {
            memmove(&g->waiters[i], &g->waiters[i + 1],
                    (g->n_waiters - i - 1) * sizeof(g->waiters[0]));
            g->n_waiters--;
            return;
        }
    }
}

/* ---- The pid set of a release ----------------------------------------------- */

typedef struct proc_entry {
    uint32_t pid, ppid;
} proc_entry;

/* Every process's parent, from /proc/<pid>/stat; *@n entries. NULL when unreadable. */
static proc_entry *read_process_table(size_t *n)
{
    DIR *dir = opendir("/proc");
    if (dir == NULL)
        return NULL;
    proc_entry *t = NULL;
    size_t cap = 0;
    *n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *fp = fopen(path, "r");
        if (fp == NULL)
            continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[len] = '\0';
        const char *close = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
        unsigned int ppid;
        char state;
        if (close == NULL || sscanf(close + 1, " %c %u", &state, &ppid) != 2)
            continue;
        if (*n == cap) {
            cap = cap > 0 ? cap * 2 : 256;
            proc_entry *grown = realloc(t, cap * sizeof(*t));
            if (grown == NULL)
                break;
            t = grown;
        }
        t[(*n)++] = (proc_entry){(uint32_t)strtoul(e->d_name, NULL, 10), ppid};
    }
    closedir(dir);
    return t;
}

static int pid_in(const uint32_t *set, size_t n, uint32_t pid)
{
    for (size_t i = 0; i < n; i++) {
        if (set[i] == pid)
            return 1;
    }
    return 0;
}

/* @root and its descendants now, into *@out (malloc'd); the count, 0 when out of memory. */
static size_t collect_pids(uint32_t root, uint32_t **out)
{
    size_t n_procs = 0;
    proc_entry *procs = read_process_table(&n_procs);
    uint32_t *set = malloc((n_procs + 1) * sizeof(*set));
    size_t n = 0;
    if (set != NULL) {
        set[n++] = root;
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n_procs; j++) {
                if (procs[j].ppid == set[i] && !pid_in(set, n, procs[j].pid))
                    set[n++] = procs[j].pid;
            }
        }
    }
    free(procs);
    *out = set;
    return n;
}

/* ---- Devices ---------------------------------------------------------------- */

static void on_persisted(jb_status status, const jb_error *err, void *ud);

static void persist(jb__gpu *g, uint32_t device, uint64_t gen)
{
    ticket *t = malloc(sizeof(*t));
    if (t == NULL) {
        JB_BUG("out of memory");
        return; /* for the analysers: JB_BUG does not return */
    }
    *t = (ticket){g, device, gen};
    g->tickets++;
    jb__coord_persist(g->co, on_persisted, t);
}

static void lease_clear(gpu_dev *d)
{
    free(d->component);
    free(d->reason);
    d->component = d->reason = NULL;
    d->lease_id[0] = '\0';
    d->holder = NULL;
    d->pid = 0;
}

static void dev_set_free(gpu_dev *d)
{
    free(d->pids);
    d->pids = NULL;
    d->n_pids = 0;
    d->state = DEV_FREE;
    uv_timer_stop(&d->timer);
    pump_schedule(d->g);
}

/* The device memory the pid set of @d holds now (0 without NVML or on error, logged). */
static uint64_t dev_memory_held(gpu_dev *d)
{
    jb__nvml *nv = d->g->co->nvml;
    if (nv == NULL || d->n_pids == 0 || !d->has_nv)
        return 0;
    uint64_t bytes = 0;
    jb_error err;
    if (jb__nvml_memory_of(nv, d->index, d->pids, d->n_pids, &bytes, &err) != JB_OK) {
        jb_log(JB_LOG_WARN, "coord", "cannot read the GPU memory of a released lease",
               "device=%u reason=\"%s\"", d->index, err.message);
        return 0;
    }
    return bytes;
}

/*
 * Ends the lease of @d (the caller detached its holder first): the device
 * becomes FREE, or RELEASING while NVML shows the holder's processes still
 * hold memory on it. Returns that memory, in bytes.
 */
static uint64_t dev_end_lease(gpu_dev *d, const char *why)
{
    jb__gpu *g = d->g;
    uint64_t now = now_ms(g);
    int was_held = d->state == DEV_HELD;
    uint64_t held_ms = was_held ? now - d->granted_mono : 0;
    uint64_t memory = 0;
    if (was_held && d->pid != 0 && g->co->nvml != NULL && d->has_nv) {
        d->n_pids = collect_pids(d->pid, &d->pids);
        memory = dev_memory_held(d);
    }
    jb_log(JB_LOG_INFO, "coord", "GPU lease ended",
           "device=%u lease=%s component=%s why=\"%s\" held_ms=%" PRIu64
           " memory_held_bytes=%" PRIu64,
           d->index, d->lease_id, d->component, why, held_ms, memory);
    lease_clear(d);
    d->gen++;
    uint64_t timeout = settings(g)->release_timeout_ms;
    if (memory > 0 && timeout > 0) {
        d->state = DEV_RELEASING;
        d->release_deadline = now + timeout;
        d->next_poll = now + RELEASE_POLL_MS;
        dev_arm(d);
    } else {
        dev_set_free(d);
    }
    persist(g, UINT32_MAX, 0);
    return memory;
}

/* A release waits for NVML: poll, and hand the device on when freed or timed out. */
static void release_poll(gpu_dev *d, uint64_t now)
{
    uint64_t memory = dev_memory_held(d);
    if (memory == 0) {
        jb_log(JB_LOG_INFO, "coord", "GPU memory of the released lease freed", "device=%u",
               d->index);
        dev_set_free(d);
    } else if (now >= d->release_deadline) {
        jb_log(JB_LOG_WARN, "coord",
               "GPU memory of the released lease still held after release_timeout: handing "
               "the device on",
               "device=%u memory_held_bytes=%" PRIu64, d->index, memory);
        dev_set_free(d);
    } else {
        d->next_poll = now + RELEASE_POLL_MS;
        dev_arm(d);
    }
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* When the timer of @d must fire next, NO_DEADLINE when not at all. */
static uint64_t dev_due(const gpu_dev *d)
{
    const jb__coord_settings *s = settings(d->g);
    if (d->state == DEV_RELEASING)
        return min_u64(d->next_poll, d->release_deadline);
    if (d->state != DEV_HELD)
        return NO_DEADLINE;
    if (d->holder == NULL)
        return min_u64(d->expires_mono, d->grace_mono);
    uint64_t due = min_u64(d->expires_mono, d->next_keepalive);
    if (s->expiry_warning_ms > 0 && !d->expiring_sent) {
        uint64_t warn =
            d->expires_mono > s->expiry_warning_ms ? d->expires_mono - s->expiry_warning_ms : 0;
        due = min_u64(due, warn);
    }
    return due;
}

static void on_dev_timer(uv_timer_t *t);

static void dev_arm(gpu_dev *d)
{
    if (d->g->closing)
        return;
    uint64_t due = dev_due(d), now = now_ms(d->g);
    if (due == NO_DEADLINE) {
        uv_timer_stop(&d->timer);
        return;
    }
    uv_timer_start(&d->timer, on_dev_timer, due > now ? due - now : 0, 0);
}

static void send_lease_event(gpu_dev *d, jb_gpu_event_kind kind)
{
    jb_gpu_event ev = {.kind = kind,
                       .lease_id = d->lease_id,
                       .device = d->index,
                       .device_uuid = d->has_nv ? d->nv.uuid : "",
                       .expires_ms = d->expires_wall};
    dev_arm(d);
    deliver(d->holder, &ev);
}

/* Ends the lease of @d and tells its holder, now (we are in a timer callback). */
static void end_and_tell(gpu_dev *d, const char *why, jb_status status)
{
    jb_gpu_lease *h = d->holder;
    d->holder = NULL;
    dev_end_lease(d, why);
    h->dev = NULL;
    deliver_ended(h, status);
}

static int process_gone(uint32_t pid)
{
    return pid != 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* One deadline of a held lease has come: one event at most, then re-armed. */
static void held_tick(gpu_dev *d, uint64_t now)
{
    const jb__coord_settings *s = settings(d->g);
    if (d->holder == NULL) {
        if (now >= d->expires_mono)
            dev_end_lease(d, "expired while waiting for a re-attach");
        else if (now >= d->grace_mono)
            dev_end_lease(d, "not re-attached within reattach_grace");
        else
            dev_arm(d);
        return;
    }
    if (s->expiry_warning_ms > 0 && !d->expiring_sent &&
        now + s->expiry_warning_ms >= d->expires_mono) {
        d->expiring_sent = 1;
        send_lease_event(d, JB_GPU_EXPIRING);
    } else if (now >= d->expires_mono) {
        end_and_tell(d, "expired", JB_ELEASE_EXPIRED);
    } else if (now >= d->next_keepalive) {
        d->next_keepalive = now + keepalive_ms(d->g);
        if (process_gone(d->pid)) {
            jb_log(JB_LOG_WARN, "coord", "GPU lease holder's process is gone: releasing",
                   "device=%u pid=%u", d->index, d->pid);
            end_and_tell(d, "holder process gone", JB_OK);
        } else {
            send_lease_event(d, JB_GPU_KEEPALIVE);
        }
    } else {
        dev_arm(d);
    }
}

static void on_dev_timer(uv_timer_t *t)
{
    gpu_dev *d = t->data;
    if (d->g->closing)
        return;
    uint64_t now = now_ms(d->g);
    if (d->state == DEV_RELEASING)
        release_poll(d, now);
    else if (d->state == DEV_HELD)
        held_tick(d, now);
}

/* ---- Grants ----------------------------------------------------------------- */

static int lease_id_taken(const jb__gpu *g, const char *id)
{
    for (uint32_t i = 0; i < g->n_devices; i++) {
        if (g->devs[i].lease_id[0] != '\0' && strcmp(g->devs[i].lease_id, id) == 0)
            return 1;
    }
    return 0;
}

/* A fresh lease id into @out (LEASE_ID_BYTES * 2 + 1 bytes), unlike every lease held. */
static void new_lease_id(const jb__gpu *g, char *out)
{
    do {
        unsigned char raw[LEASE_ID_BYTES];
        if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
            JB_BUG("getrandom failed");
        for (size_t i = 0; i < sizeof(raw); i++)
            snprintf(out + 2 * i, 3, "%02x", raw[i]);
    } while (lease_id_taken(g, out));
}

static char *dup_or_die(const char *s)
{
    char *c = strdup(s != NULL ? s : "");
    if (c == NULL)
        JB_BUG("out of memory");
    return c;
}

/* Makes the lease of @h on @d and starts writing it; GRANTED follows once it is durable. */
static void grant(jb__gpu *g, gpu_dev *d, jb_gpu_lease *h)
{
    const jb__coord_settings *s = settings(g);
    uint64_t dur = h->duration_ms == 0 || h->duration_ms > s->max_allocation_ms
                       ? s->max_allocation_ms
                       : h->duration_ms;
    uint64_t now = now_ms(g);
    waiter_remove(g, h);
    char id[LEASE_ID_BYTES * 2 + 1];
    new_lease_id(g, id);
    snprintf(d->lease_id, sizeof(d->lease_id), "%s", id);
    d->state = DEV_GRANTING;
    d->gen++;
    d->component = dup_or_die(h->component);
    d->reason = dup_or_die(h->reason);
    d->pid = h->pid;
    d->granted_wall = jb__coord_wall_ms();
    d->expires_wall = d->granted_wall + (int64_t)dur;
    d->granted_mono = now;
    d->expires_mono = now + dur;
    d->expiring_sent = 0;
    d->holder = h;
    h->state = H_HOLDING;
    h->dev = d;
    h->device = d->index;
    snprintf(h->lease_id, sizeof(h->lease_id), "%s", d->lease_id);
    persist(g, d->index, d->gen);
}

static void send_granted(gpu_dev *d, int reattached)
{
    jb_gpu_event ev = {.kind = JB_GPU_GRANTED,
                       .lease_id = d->lease_id,
                       .device = d->index,
                       .device_uuid = d->has_nv ? d->nv.uuid : "",
                       .expires_ms = d->expires_wall,
                       .reattached = reattached};
    deliver(d->holder, &ev);
}

/* A grant is durable (or failed to be): GRANTED, or ENDED with the error. */
static void grant_durable(gpu_dev *d, jb_status status, const jb_error *err)
{
    jb__gpu *g = d->g;
    if (status != JB_OK) {
        jb_log(JB_LOG_ERROR, "coord", "a GPU grant could not be made durable",
               "device=%u reason=\"%s\"", d->index,
               err != NULL ? err->message : jb_strerror(status));
        jb_gpu_lease *h = d->holder;
        d->holder = NULL;
        dev_end_lease(d, "the grant could not be written");
        if (h != NULL) {
            h->dev = NULL;
            deliver_ended(h, status);
        }
        return;
    }
    d->state = DEV_HELD;
    d->next_keepalive = now_ms(g) + keepalive_ms(g);
    jb_log(JB_LOG_INFO, "coord", "GPU lease granted",
           "device=%u lease=%s component=%s pid=%u expires_ms=%" PRId64, d->index, d->lease_id,
           d->component, d->pid, d->expires_wall);
    dev_arm(d);
    if (d->holder != NULL) {
        int reattached = d->holder->granted_pending;
        d->holder->granted_pending = 0;
        send_granted(d, reattached);
    }
}

static void gpu_maybe_free(jb__gpu *g);

static void on_persisted(jb_status status, const jb_error *err, void *ud)
{
    ticket *t = ud;
    jb__gpu *g = t->g;
    g->tickets--;
    if (!g->closing && t->device != UINT32_MAX) {
        gpu_dev *d = &g->devs[t->device];
        if (d->gen == t->gen && d->state == DEV_GRANTING)
            grant_durable(d, status, err);
    } else if (!g->closing && status != JB_OK) {
        jb_log(JB_LOG_ERROR, "coord", "the end of a GPU lease could not be written",
               "reason=\"%s\"", err != NULL ? err->message : jb_strerror(status));
    }
    free(t);
    gpu_maybe_free(g);
}

/* ---- The pump --------------------------------------------------------------- */

static void on_pump(uv_timer_t *t);

static void pump_schedule(jb__gpu *g)
{
    g->dirty = 1;
    if (!g->in_pump && !g->closing)
        uv_timer_start(&g->pump, on_pump, 0, 0);
}

/* Delivers the ENDED of released leases; 0 when the pump must stop (closing). */
static int pump_ended(jb__gpu *g)
{
    while (g->ended_head != NULL && !g->closing) {
        jb_gpu_lease *h = g->ended_head;
        g->ended_head = h->next_ended;
        if (g->ended_head == NULL)
            g->ended_tail = NULL;
        deliver_ended(h, h->end_status);
    }
    return !g->closing;
}

/* Delivers the GRANTED of re-attached leases. */
static int pump_reattached(jb__gpu *g)
{
    for (uint32_t i = 0; i < g->n_devices && !g->closing; i++) {
        gpu_dev *d = &g->devs[i];
        if (d->state == DEV_HELD && d->holder != NULL && d->holder->granted_pending) {
            d->holder->granted_pending = 0;
            send_granted(d, 1);
        }
    }
    return !g->closing;
}

static gpu_dev *free_device(jb__gpu *g)
{
    for (uint32_t i = 0; i < g->n_devices; i++) {
        if (g->devs[i].state == DEV_FREE)
            return &g->devs[i];
    }
    return NULL;
}

static void pump_grants(jb__gpu *g)
{
    gpu_dev *d;
    if (g->n_waiters == 0)
        return;
    waiters_sort(g);
    while (g->n_waiters > 0 && (d = free_device(g)) != NULL)
        grant(g, d, g->waiters[0]);
}

/* Tells each waiter whose position changed; stops early when a callback changed something. */
static void pump_positions(jb__gpu *g)
{
    waiters_sort(g);
    for (size_t i = 0; i < g->n_waiters && !g->dirty && !g->closing; i++) {
        jb_gpu_lease *w = g->waiters[i];
        if (w->sent_position == i + 1)
            continue;
        w->sent_position = (uint32_t)(i + 1);
        jb_gpu_event ev = {.kind = JB_GPU_QUEUED, .position = w->sent_position, .device_uuid = ""};
        deliver(w, &ev);
    }
}

/* Wakes the pump when the next waiter becomes starved (its position may change then). */
static void arm_starvation(jb__gpu *g)
{
    uint64_t s = settings(g)->starvation_ms, now = now_ms(g), due = NO_DEADLINE;
    for (size_t i = 0; s > 0 && i < g->n_waiters; i++) {
        uint64_t at = g->waiters[i]->arrived_mono + s;
        if (at > now)
            due = min_u64(due, at);
    }
    if (due != NO_DEADLINE)
        uv_timer_start(&g->pump, on_pump, due - now, 0);
    else
        uv_timer_stop(&g->pump);
}

static void on_pump(uv_timer_t *t)
{
    jb__gpu *g = t->data;
    if (g->closing)
        return;
    g->in_pump = 1;
    g->dirty = 1;
    while (g->dirty && !g->closing) {
        g->dirty = 0;
        if (!pump_ended(g) || !pump_reattached(g))
            break;
        pump_grants(g);
        pump_positions(g);
    }
    g->in_pump = 0;
    if (!g->closing)
        arm_starvation(g);
}

/* ---- Life ------------------------------------------------------------------- */

static void gpu_maybe_free(jb__gpu *g)
{
    if (!g->freed || g->open_handles > 0 || g->tickets > 0)
        return;
    free(g->devs);
    free(g);
}

static void on_pump_closed(uv_handle_t *h)
{
    jb__gpu *g = h->data;
    g->open_handles--;
    gpu_maybe_free(g);
}

static void on_dev_closed(uv_handle_t *h)
{
    jb__gpu *g = ((gpu_dev *)h->data)->g;
    g->open_handles--;
    gpu_maybe_free(g);
}

static void init_devices(jb__gpu *g)
{
    jb_coord *co = g->co;
    uint32_t nv_count = jb__nvml_count(co->nvml);
    g->n_devices = co->opts.devices > 0 ? co->opts.devices : nv_count > 0 ? nv_count : 1;
    if (g->n_devices > JB_COORD_MAX_DEVICES)
        g->n_devices = JB_COORD_MAX_DEVICES;
    g->source = nv_count > 0 ? "nvml" : "config";
    for (uint32_t i = 0; i < g->n_devices; i++) {
        gpu_dev *d = &g->devs[i];
        d->g = g;
        d->index = i;
        uv_timer_init(co->loop, &d->timer);
        d->timer.data = d;
        g->open_handles++;
        jb_error err;
        if (i < nv_count)
            d->has_nv = jb__nvml_device_info(co->nvml, i, &d->nv, &err) == JB_OK;
        if (d->has_nv)
            jb_log(JB_LOG_INFO, "coord", "GPU device", "index=%u name=\"%s\" uuid=%s", i,
                   d->nv.name, d->nv.uuid);
    }
}

jb_status jb__gpu_new(jb_coord *co, jb__gpu **out, jb_error *err)
{
    jb__gpu *g = calloc(1, sizeof(*g));
    gpu_dev *devs = calloc(JB_COORD_MAX_DEVICES, sizeof(*devs));
    if (g == NULL || devs == NULL) {
        free(g);
        free(devs);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    g->co = co;
    g->devs = devs;
    uv_timer_init(co->loop, &g->pump);
    g->pump.data = g;
    g->open_handles = 1;
    init_devices(g);
    *out = g;
    return JB_OK;
}

static void restore_one(jb__gpu *g, const jb__saved_lease *s, int64_t wall, uint64_t now)
{
    if (s->device >= g->n_devices || g->devs[s->device].state != DEV_FREE ||
        strlen(s->lease_id) > JB_COORD_MAX_NAME) {
        jb_log(JB_LOG_WARN, "coord", "saved GPU lease dropped: no such device, or a second one",
               "device=%u lease=%s", s->device, s->lease_id);
        return;
    }
    if (s->expires_ms <= wall) {
        jb_log(JB_LOG_INFO, "coord", "saved GPU lease expired while the daemon was down",
               "device=%u lease=%s component=%s", s->device, s->lease_id, s->component);
        return;
    }
    gpu_dev *d = &g->devs[s->device];
    d->state = DEV_HELD;
    d->gen++;
    snprintf(d->lease_id, sizeof(d->lease_id), "%s", s->lease_id);
    d->component = dup_or_die(s->component);
    d->reason = dup_or_die(s->reason);
    d->pid = s->pid;
    d->granted_wall = s->granted_ms;
    d->expires_wall = s->expires_ms;
    int64_t age = wall - s->granted_ms;
    d->granted_mono = age > 0 && (uint64_t)age < now ? now - (uint64_t)age : 0;
    d->expires_mono = now + (uint64_t)(s->expires_ms - wall);
    d->grace_mono = now + g->co->opts.reattach_grace_ms;
    jb_log(JB_LOG_INFO, "coord", "GPU lease restored: waiting for its holder to re-attach",
           "device=%u lease=%s component=%s grace_ms=%u", d->index, d->lease_id, d->component,
           g->co->opts.reattach_grace_ms);
    dev_arm(d);
}

jb_status jb__gpu_restore(jb__gpu *g, const jb__state_image *img, jb_error *err)
{
    (void)err;
    int64_t wall = jb__coord_wall_ms();
    uint64_t now = now_ms(g);
    for (size_t i = 0; i < img->n_leases; i++)
        restore_one(g, &img->leases[i], wall, now);
    return JB_OK;
}

jb_status jb__gpu_save(jb__gpu *g, jb__state_image *img)
{
    for (uint32_t i = 0; i < g->n_devices; i++) {
        const gpu_dev *d = &g->devs[i];
        if (d->state != DEV_GRANTING && d->state != DEV_HELD)
            continue;
        jb__saved_lease *grown = realloc(img->leases, (img->n_leases + 1) * sizeof(*img->leases));
        if (grown == NULL)
            return JB_ENOMEM;
        img->leases = grown;
        jb__saved_lease *s = &img->leases[img->n_leases];
        *s = (jb__saved_lease){.device = d->index,
                               .lease_id = strdup(d->lease_id),
                               .component = strdup(d->component),
                               .reason = strdup(d->reason),
                               .pid = d->pid,
                               .granted_ms = d->granted_wall,
                               .expires_ms = d->expires_wall};
        img->n_leases++;
        if (s->lease_id == NULL || s->component == NULL || s->reason == NULL)
            return JB_ENOMEM;
    }
    return JB_OK;
}

void jb__gpu_settings_changed(jb__gpu *g)
{
    if (g == NULL || g->closing)
        return;
    uint64_t now = now_ms(g);
    for (uint32_t i = 0; i < g->n_devices; i++) {
        gpu_dev *d = &g->devs[i];
        if (d->state == DEV_HELD)
            d->next_keepalive = min_u64(d->next_keepalive, now + keepalive_ms(g));
        dev_arm(d);
    }
    pump_schedule(g);
}

static void close_timers(jb__gpu *g)
{
    uv_close((uv_handle_t *)&g->pump, on_pump_closed);
    for (uint32_t i = 0; i < g->n_devices; i++)
        uv_close((uv_handle_t *)&g->devs[i].timer, on_dev_closed);
}

void jb__gpu_close(jb__gpu *g)
{
    if (g == NULL || g->closing)
        return;
    g->closing = 1;
    close_timers(g);
    /* The ENDED of released leases are not sent any more: their handles just go. */
    while (g->ended_head != NULL) {
        jb_gpu_lease *h = g->ended_head;
        g->ended_head = h->next_ended;
        handle_free(h);
    }
    g->ended_tail = NULL;
    while (g->n_waiters > 0 && !g->freed) {
        jb_gpu_lease *w = g->waiters[--g->n_waiters];
        deliver_ended(w, JB_ECLOSED);
    }
}

void jb__gpu_free(jb__gpu *g)
{
    if (g == NULL)
        return;
    if (!g->closing) {
        g->closing = 1;
        close_timers(g);
    }
    for (size_t i = 0; i < g->n_waiters; i++)
        handle_free(g->waiters[i]);
    free(g->waiters);
    g->waiters = NULL;
    g->n_waiters = 0;
    for (uint32_t i = 0; i < g->n_devices; i++) {
        gpu_dev *d = &g->devs[i];
        if (d->holder != NULL && d->holder->in_cb)
            d->holder->gone = 1; /* freed by deliver() once its callback returns */
        else if (d->holder != NULL)
            handle_free(d->holder);
        lease_clear(d);
        free(d->pids);
    }
    g->co = NULL;
    g->freed = 1;
    gpu_maybe_free(g);
}

/* ---- The API ---------------------------------------------------------------- */

static jb_status check_request(const jb__gpu *g, const jb_gpu_request *req, jb_error *err)
{
    if (g->closing || g->co->closing)
        return jb_error_set(err, JB_ECLOSED, "the coordinator is closing");
    jb_status st = jb__coord_check_component(req->component, err);
    if (st != JB_OK)
        return st;
    if (req->reason != NULL && strlen(req->reason) > JB_COORD_MAX_REASON)
        return jb_error_set(err, JB_EINVAL, "reason longer than %d bytes", JB_COORD_MAX_REASON);
    return JB_OK;
}

static gpu_dev *find_lease(jb__gpu *g, const char *lease_id)
{
    for (uint32_t i = 0; i < g->n_devices; i++) {
        gpu_dev *d = &g->devs[i];
        if ((d->state == DEV_GRANTING || d->state == DEV_HELD) &&
            strcmp(d->lease_id, lease_id) == 0)
            return d;
    }
    return NULL;
}

static jb_gpu_lease *handle_new(jb__gpu *g, const jb_gpu_request *req, jb_gpu_cb cb, void *ud)
{
    jb_gpu_lease *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->component = strdup(req->component);
    h->reason = strdup(req->reason != NULL ? req->reason : "");
    if (h->component == NULL || h->reason == NULL) {
        handle_free(h);
        return NULL;
    }
    h->g = g;
    h->cb = cb;
    h->ud = ud;
    h->priority = req->priority;
    h->pid = req->pid;
    h->duration_ms = req->duration_ms;
    h->arrived_mono = now_ms(g);
    h->since_wall = jb__coord_wall_ms();
    h->seq = ++g->seq;
    return h;
}

/* The handle @h takes over the lease of @d (re-attach); GRANTED follows from the pump. */
static void reattach(jb__gpu *g, gpu_dev *d, jb_gpu_lease *h)
{
    h->state = H_HOLDING;
    h->dev = d;
    h->device = d->index;
    h->granted_pending = 1;
    snprintf(h->lease_id, sizeof(h->lease_id), "%s", d->lease_id);
    d->holder = h;
    if (h->pid != 0)
        d->pid = h->pid;
    d->expiring_sent = 0;
    d->next_keepalive = now_ms(g) + keepalive_ms(g);
    jb_log(JB_LOG_INFO, "coord", "GPU lease re-attached", "device=%u lease=%s component=%s",
           d->index, d->lease_id, d->component);
    dev_arm(d);
    pump_schedule(g);
}

static jb_status check_reattach(jb__gpu *g, const jb_gpu_request *req, gpu_dev **out, jb_error *err)
{
    gpu_dev *d = find_lease(g, req->lease_id);
    if (d == NULL)
        return jb_error_set(err, JB_ENOENT, "no GPU lease %s is held", req->lease_id);
    if (strcmp(d->component, req->component) != 0)
        return jb_error_set(err, JB_EINVAL, "GPU lease %s belongs to another component",
                            req->lease_id);
    if (d->holder != NULL)
        return jb_error_set(err, JB_EEXIST, "GPU lease %s is held by a live stream", req->lease_id);
    *out = d;
    return JB_OK;
}

jb_status jb_coord_gpu_acquire(jb_coord *co, const jb_gpu_request *req, jb_gpu_cb cb,
                               void *userdata, jb_gpu_lease **out, jb_error *err)
{
    jb__gpu *g = co->gpu;
    jb_status st = check_request(g, req, err);
    if (st != JB_OK)
        return st;
    int is_reattach = req->lease_id != NULL && req->lease_id[0] != '\0';
    gpu_dev *d = NULL;
    if (is_reattach && (st = check_reattach(g, req, &d, err)) != JB_OK)
        return st;
    if (!is_reattach && g->n_waiters >= co->opts.max_waiters)
        return jb_error_set(err, JB_EBACKPRESSURE, "%zu wait for a GPU already", g->n_waiters);
    jb_gpu_lease *h = handle_new(g, req, cb, userdata);
    if (h == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    if (is_reattach) {
        reattach(g, d, h);
    } else if ((st = waiter_add(g, h, err)) != JB_OK) {
        handle_free(h);
        return st;
    }
    pump_schedule(g);
    *out = h;
    return JB_OK;
}

/* The handle leaves; the lease of a holder ends (@keep_lease 0) or waits for a re-attach. */
static void handle_leave(jb_gpu_lease *h, int keep_lease)
{
    jb__gpu *g = h->g;
    if (h->state == H_WAITING) {
        waiter_remove(g, h);
        pump_schedule(g);
    } else if (h->state == H_ENDING) {
        ended_remove(g, h);
    } else if (h->state == H_HOLDING && h->dev != NULL) {
        gpu_dev *d = h->dev;
        d->holder = NULL;
        if (keep_lease || g->closing) {
            d->grace_mono = now_ms(g) + g->co->opts.reattach_grace_ms;
            jb_log(JB_LOG_INFO, "coord", "GPU lease detached: waiting for a re-attach",
                   "device=%u lease=%s", d->index, d->lease_id);
            dev_arm(d);
        } else {
            dev_end_lease(d, "the holder went away");
        }
    }
    h->state = H_ENDED;
    h->dev = NULL;
    if (h->in_cb)
        h->gone = 1;
    else
        handle_free(h);
}

void jb_coord_gpu_cancel(jb_gpu_lease *lease)
{
    if (lease != NULL)
        handle_leave(lease, 0);
}

void jb_coord_gpu_detach(jb_gpu_lease *lease)
{
    if (lease != NULL)
        handle_leave(lease, 1);
}

jb_status jb_coord_gpu_release(jb_coord *co, const char *lease_id, jb_gpu_release_info *info,
                               jb_error *err)
{
    jb__gpu *g = co->gpu;
    if (lease_id == NULL || lease_id[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "a lease id is required");
    if (g->closing || co->closing)
        return jb_error_set(err, JB_ECLOSED, "the coordinator is closing");
    gpu_dev *d = find_lease(g, lease_id);
    if (d == NULL)
        return jb_error_set(err, JB_ENOENT, "no GPU lease %s is held", lease_id);
    jb_gpu_release_info ri = {.device = d->index};
    if (d->state == DEV_HELD)
        ri.held_ms = now_ms(g) - d->granted_mono;
    jb_gpu_lease *h = d->holder;
    d->holder = NULL;
    ri.memory_held_bytes = dev_end_lease(d, "released");
    if (h != NULL)
        ended_push(g, h, JB_OK);
    if (info != NULL)
        *info = ri;
    return JB_OK;
}

/* ---- Status ----------------------------------------------------------------- */

const char *jb_coord_gpu_source(const jb_coord *co)
{
    return co->gpu->source;
}

static void dev_info(jb__gpu *g, gpu_dev *d, jb_gpu_device_info *out)
{
    if (d->has_nv) {
        jb__nvml_device fresh;
        jb_error err;
        if (jb__nvml_device_info(g->co->nvml, d->index, &fresh, &err) == JB_OK) {
            d->nv.memory_total = fresh.memory_total;
            d->nv.memory_used = fresh.memory_used;
        }
    }
    int leased = d->state == DEV_GRANTING || d->state == DEV_HELD;
    *out = (jb_gpu_device_info){
        .index = d->index,
        .name = d->has_nv ? d->nv.name : "",
        .uuid = d->has_nv ? d->nv.uuid : "",
        .available = d->state == DEV_FREE,
        .holder = leased ? d->component : "",
        .lease_id = leased ? d->lease_id : "",
        .reason = leased ? d->reason : "",
        .holder_pid = leased ? d->pid : 0,
        .granted_ms = leased ? d->granted_wall : 0,
        .expires_ms = leased ? d->expires_wall : 0,
        .memory_total_bytes = d->has_nv ? d->nv.memory_total : 0,
        .memory_used_bytes = d->has_nv ? d->nv.memory_used : 0,
        .releasing = d->state == DEV_RELEASING,
        .restored = d->state == DEV_HELD && d->holder == NULL,
    };
}

void jb_coord_foreach_gpu(jb_coord *co, void (*fn)(const jb_gpu_device_info *d, void *ud), void *ud)
{
    jb__gpu *g = co->gpu;
    for (uint32_t i = 0; i < g->n_devices; i++) {
        jb_gpu_device_info info;
        dev_info(g, &g->devs[i], &info);
        fn(&info, ud);
    }
}

void jb_coord_foreach_gpu_waiter(jb_coord *co, void (*fn)(const jb_gpu_waiter_info *w, void *ud),
                                 void *ud)
{
    jb__gpu *g = co->gpu;
    waiters_sort(g);
    for (size_t i = 0; i < g->n_waiters; i++) {
        const jb_gpu_lease *w = g->waiters[i];
        jb_gpu_waiter_info info = {.position = (uint32_t)(i + 1),
                                   .component = w->component,
                                   .priority = w->priority,
                                   .since_ms = w->since_wall,
                                   .reason = w->reason};
        fn(&info, ud);
    }
}
