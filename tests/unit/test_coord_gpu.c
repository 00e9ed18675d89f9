/*
 * Unit tests for the GPU leases of the resource coordinator (src/coord/gpu.c,
 * src/coord/nvml.c): exclusivity, the serving order and the positions told,
 * the starvation bound, keepalive, the expiry warning and the expiry, cancel
 * and detach, re-attach, bad input, several devices, backpressure, the
 * restore and save of leases, close, and with the fake NVML
 * (tests/nvml/fake_nvml.c) device discovery, confirmed release, its timeout,
 * and the death of a holder's process.
 *
 * Each test runs a real libuv loop; tests never assert durations, they wait
 * for conditions with a generous deadline so that a bug fails instead of
 * hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord/coord_internal.h"
#include "jimbot/config.h"
#include "jimbot/coord.h"
#include "jimbot/log.h"

#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef JB_FAKE_NVML
#define JB_FAKE_NVML "libfake-nvml.so"
#endif

/* ---- harness ------------------------------------------------------------ */

#define MAX_EVENTS 64

typedef struct fixture {
    uv_loop_t loop;
    char dir[64];
    char script[128];
    jb_coord *co;
    int grants; /* GRANTED events so far, all leases together */
    char log[8192];
} fixture;

/* What one lease's callback saw. */
typedef struct rec {
    fixture *f;
    jb_gpu_lease *lease;
    size_t n;
    jb_gpu_event_kind kinds[MAX_EVENTS];
    int granted, expiring, keepalives, ended, queued;
    int grant_order; /* 1 = the first lease granted in the test */
    uint32_t position;
    jb_status status;
    char lease_id[JB_COORD_MAX_NAME + 1];
    char uuid[96];
    uint32_t device;
    int64_t expires_ms, keepalive_expires_ms;
    int reattached;
} rec;

static void on_event(jb_gpu_lease *lease, const jb_gpu_event *ev, void *ud)
{
    rec *r = ud;
    uv_stop(&r->f->loop); /* wait_for() looks at the counters without blocking first */
    if (r->n < MAX_EVENTS)
        r->kinds[r->n] = ev->kind;
    r->n++;
    switch (ev->kind) {
    case JB_GPU_QUEUED:
        r->queued++;
        r->position = ev->position;
        break;
    case JB_GPU_GRANTED:
        r->granted++;
        r->grant_order = ++r->f->grants;
        snprintf(r->lease_id, sizeof(r->lease_id), "%s", ev->lease_id);
        snprintf(r->uuid, sizeof(r->uuid), "%s", ev->device_uuid);
        r->device = ev->device;
        r->expires_ms = ev->expires_ms;
        r->reattached = ev->reattached;
        r->position = 0;
        break;
    case JB_GPU_KEEPALIVE:
        r->keepalives++;
        r->keepalive_expires_ms = ev->expires_ms;
        break;
    case JB_GPU_EXPIRING:
        r->expiring++;
        break;
    case JB_GPU_ENDED:
        r->ended++;
        r->status = ev->status;
        r->lease = NULL;
        break;
    }
    (void)lease;
}

static void on_log(jb_log_level level, const char *line, void *ud)
{
    fixture *f = ud;
    (void)level;
    size_t used = strlen(f->log);
    snprintf(f->log + used, sizeof(f->log) - used, "%s\n", line);
    if (strlen(f->log) > sizeof(f->log) - 512)
        f->log[0] = '\0'; /* keep the recent lines only */
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_coord_gpu_XXXXXX");
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    snprintf(f->script, sizeof(f->script), "%s/nvml.script", f->dir);
    setenv("FAKE_NVML_SCRIPT", f->script, 1);
    jb_log_set_sink(on_log, f);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void on_deadline(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void on_timer_closed(uv_handle_t *h)
{
    *(int *)h->data = 2;
}

/* Closes a timer that lives on the caller's stack, and waits until libuv is done with it. */
static void close_stack_timer(uv_loop_t *loop, uv_timer_t *t, int *flag)
{
    *flag = 0;
    t->data = flag;
    uv_close((uv_handle_t *)t, on_timer_closed);
    while (*flag != 2)
        uv_run(loop, UV_RUN_NOWAIT);
}

/* Runs the loop until *@value reaches @want, or fails after a generous deadline. */
#define wait_for(f, value, want) wait_for_at(f, value, want, __LINE__)
static void wait_for_at(fixture *f, const int *value, int want, int line)
{
    int expired = 0;
    uv_timer_t deadline;
    uv_timer_init(&f->loop, &deadline);
    deadline.data = &expired;
    uv_timer_start(&deadline, on_deadline, 20000, 0);
    while (*value < want && !expired)
        uv_run(&f->loop, UV_RUN_ONCE);
    close_stack_timer(&f->loop, &deadline, &expired);
    if (*value < want)
        fail_msg("line %d: timed out: got %d, wanted %d", line, *value, want);
}

/* Runs the loop for about @ms (to see that nothing happens meanwhile). */
static void run_for(fixture *f, unsigned ms)
{
    int expired = 0;
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &expired;
    uv_timer_start(&t, on_deadline, ms, 0);
    while (!expired)
        uv_run(&f->loop, UV_RUN_ONCE);
    close_stack_timer(&f->loop, &t, &expired);
}

static void on_closed(void *ud)
{
    (*(int *)ud)++;
}

static void close_coord(fixture *f)
{
    if (f->co == NULL)
        return;
    int closed = 0;
    jb_coord_close(f->co, on_closed, &closed);
    f->co = NULL;
    wait_for(f, &closed, 1);
}

static int teardown(void **state)
{
    fixture *f = *state;
    close_coord(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&f->loop);
    jb_log_set_sink(NULL, NULL);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void write_text(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, path), 0);
}

/* Applies a configuration made of @yaml (the resource_coordinator keys a test sets). */
static void apply_yaml(fixture *f, const char *yaml)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/infrastructure.yaml", f->dir);
    write_text(path, yaml);
    jb_config_options o = {.path = path};
    jb_config *cfg = NULL;
    jb_error err;
    if (jb_config_load(&o, &cfg, NULL, &err) != JB_OK)
        fail_msg("config: %s", err.message);
    assert_int_equal(jb_coord_apply_config(f->co, cfg, &err), JB_OK);
    jb_config_unref(cfg);
}

static void open_coord(fixture *f, const jb_coord_options *o, const char *yaml)
{
    jb_error err;
    if (jb_coord_new(&f->loop, o, &f->co, &err) != JB_OK)
        fail_msg("jb_coord_new: %s", err.message);
    if (yaml != NULL)
        apply_yaml(f, yaml);
}

static void open_devices(fixture *f, uint32_t devices, const char *yaml)
{
    jb_coord_options o = {.devices = devices, .nvml_library = ""};
    open_coord(f, &o, yaml);
}

static jb_status acquire_full(fixture *f, const jb_gpu_request *req, rec *r)
{
    r->f = f;
    jb_error err;
    jb_status st = jb_coord_gpu_acquire(f->co, req, on_event, r, &r->lease, &err);
    return st;
}

static void acquire(fixture *f, const char *component, int32_t priority, rec *r)
{
    jb_gpu_request req = {.component = component, .priority = priority, .reason = "test"};
    assert_int_equal(acquire_full(f, &req, r), JB_OK);
}

static void release(fixture *f, const rec *r, jb_gpu_release_info *info)
{
    jb_error err;
    jb_status st = jb_coord_gpu_release(f->co, r->lease_id, info, &err);
    if (st != JB_OK)
        fail_msg("release %s: %s", r->lease_id, err.message);
}

/* Status snapshots, copied out of the borrowed strings. */
typedef struct dev_snapshot {
    size_t n;
    jb_gpu_device_info d[8];
    char name[8][96], holder[8][64];
} dev_snapshot;

static void on_dev(const jb_gpu_device_info *d, void *ud)
{
    dev_snapshot *s = ud;
    if (s->n >= 8)
        return;
    s->d[s->n] = *d;
    snprintf(s->name[s->n], sizeof(s->name[0]), "%s", d->name);
    snprintf(s->holder[s->n], sizeof(s->holder[0]), "%s", d->holder);
    s->n++;
}

static dev_snapshot devices(fixture *f)
{
    dev_snapshot s = {0};
    jb_coord_foreach_gpu(f->co, on_dev, &s);
    return s;
}

typedef struct waiter_snapshot {
    size_t n;
    char component[16][32];
    uint32_t position[16];
} waiter_snapshot;

static void on_waiter(const jb_gpu_waiter_info *w, void *ud)
{
    waiter_snapshot *s = ud;
    if (s->n >= 16)
        return;
    snprintf(s->component[s->n], sizeof(s->component[0]), "%s", w->component);
    s->position[s->n] = w->position;
    s->n++;
}

static waiter_snapshot waiters(fixture *f)
{
    waiter_snapshot s = {0};
    jb_coord_foreach_gpu_waiter(f->co, on_waiter, &s);
    return s;
}

/* ---- tests -------------------------------------------------------------- */

static void test_exclusive(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    assert_string_equal(jb_coord_gpu_source(f->co), "config");
    rec a = {0}, b = {0};
    acquire(f, "training", 0, &a);
    assert_int_equal(a.n, 0); /* never from inside the call */
    wait_for(f, &a.granted, 1);
    assert_int_equal(a.kinds[0], JB_GPU_GRANTED); /* no QUEUED: it did not wait */
    assert_int_equal(a.device, 0);
    assert_int_equal(strlen(a.lease_id), 16);
    acquire(f, "inference", 0, &b);
    wait_for(f, &b.queued, 1);
    assert_int_equal(b.position, 1);
    assert_int_equal(b.granted, 0);
    dev_snapshot s = devices(f);
    assert_int_equal(s.n, 1);
    assert_false(s.d[0].available);
    assert_string_equal(s.holder[0], "training");

    jb_gpu_release_info info = {0};
    release(f, &a, &info);
    assert_int_equal(info.device, 0);
    assert_int_equal(info.memory_held_bytes, 0);
    assert_int_equal(a.ended, 0); /* later, not from inside the call */
    wait_for(f, &b.granted, 1);
    assert_int_equal(a.ended, 1);
    assert_int_equal(a.status, JB_OK);
    assert_int_equal(b.device, 0);
    assert_string_not_equal(a.lease_id, b.lease_id);
    release(f, &b, NULL);
    wait_for(f, &b.ended, 1);
    close_coord(f); /* before the recs on this stack go */
}

static void test_ordering(void **state)
{
    fixture *f = *state;
    open_devices(f, 1,
                 "resource_coordinator:\n  gpu:\n    priority_components: [training, inference]\n");
    rec holder = {0}, other = {0}, other_high = {0}, inference = {0}, training = {0};
    acquire(f, "holder", 0, &holder);
    wait_for(f, &holder.granted, 1);
    acquire(f, "other", 0, &other);
    wait_for(f, &other.queued, 1);
    assert_int_equal(other.position, 1);
    acquire(f, "other", 5, &other_high);
    wait_for(f, &other.queued, 2); /* moved back: told again */
    assert_int_equal(other.position, 2);
    assert_int_equal(other_high.position, 1);
    acquire(f, "inference", -3, &inference);
    acquire(f, "training", -7, &training);
    wait_for(f, &other.queued, 3);
    assert_int_equal(training.position, 1);
    assert_int_equal(inference.position, 2);
    assert_int_equal(other_high.position, 3);
    assert_int_equal(other.position, 4);
    waiter_snapshot w = waiters(f);
    assert_int_equal(w.n, 4);
    assert_string_equal(w.component[0], "training");
    assert_string_equal(w.component[1], "inference");
    assert_int_equal(w.position[3], 4);

    /* Each release hands the device to the next in that order. */
    rec *order[] = {&holder, &training, &inference, &other_high, &other};
    for (size_t i = 0; i + 1 < 5; i++) {
        release(f, order[i], NULL);
        wait_for(f, &order[i + 1]->granted, 1);
        assert_int_equal(order[i + 1]->grant_order, (int)i + 2);
    }
    assert_int_equal(other.position, 0);
    release(f, &other, NULL);
    wait_for(f, &other.ended, 1);
    close_coord(f); /* before the recs on this stack go */
}

static void test_settings_reorder(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec holder = {0}, a = {0}, b = {0};
    acquire(f, "holder", 0, &holder);
    wait_for(f, &holder.granted, 1);
    acquire(f, "alpha", 0, &a);
    acquire(f, "beta", 0, &b);
    wait_for(f, &b.queued, 1);
    assert_int_equal(a.position, 1);
    assert_int_equal(b.position, 2);
    int64_t expires = holder.expires_ms;
    apply_yaml(f, "resource_coordinator:\n  gpu:\n    priority_components: [beta]\n");
    wait_for(f, &b.queued, 2);
    assert_int_equal(b.position, 1);
    assert_int_equal(a.position, 2);
    assert_int_equal(devices(f).d[0].expires_ms, expires); /* leases keep their expiry */
    close_coord(f);                                        /* before the recs on this stack go */
}

static void test_starvation(void **state)
{
    fixture *f = *state;
    open_devices(f, 1,
                 "resource_coordinator:\n  gpu:\n    priority_components: [training]\n"
                 "    starvation_seconds: 2\n");
    rec holder = {0}, low = {0}, high = {0};
    acquire(f, "holder", 0, &holder);
    wait_for(f, &holder.granted, 1);
    acquire(f, "analytics", 0, &low);
    wait_for(f, &low.queued, 1);
    acquire(f, "training", 9, &high);
    wait_for(f, &low.queued, 2);
    assert_int_equal(low.position, 2);
    assert_int_equal(high.position, 1);
    /* Once it has waited starvation_seconds it goes ahead, and is told so. */
    wait_for(f, &low.queued, 3);
    assert_int_equal(low.position, 1);
    assert_int_equal(high.position, 2);
    release(f, &holder, NULL);
    wait_for(f, &low.granted, 1);
    assert_int_equal(high.granted, 0);
    close_coord(f); /* before the recs on this stack go */
}

static void test_expiry(void **state)
{
    fixture *f = *state;
    open_devices(f, 1,
                 "resource_coordinator:\n  gpu:\n    max_allocation_seconds: 1\n"
                 "    expiry_warning_seconds: 1\n    keepalive_ms: 100\n");
    rec a = {0}, b = {0};
    jb_gpu_request req = {.component = "training", .duration_ms = 60000};
    assert_int_equal(acquire_full(f, &req, &a), JB_OK);
    acquire(f, "inference", 0, &b);
    wait_for(f, &a.granted, 1);
    int64_t now = jb__coord_wall_ms();
    assert_true(a.expires_ms <= now + 1000); /* capped at max_allocation */
    wait_for(f, &a.ended, 1);
    assert_int_equal(a.status, JB_ELEASE_EXPIRED);
    assert_int_equal(a.expiring, 1);
    assert_int_equal(a.kinds[0], JB_GPU_GRANTED);
    size_t expiring_at = 0;
    for (size_t i = 0; i < a.n && i < MAX_EVENTS; i++) {
        if (a.kinds[i] == JB_GPU_EXPIRING)
            expiring_at = i;
    }
    assert_true(expiring_at > 0 && expiring_at < a.n - 1);
    assert_int_equal(a.kinds[a.n - 1], JB_GPU_ENDED);
    if (a.keepalives > 0)
        assert_int_equal(a.keepalive_expires_ms, a.expires_ms);
    /* The device is freed and handed on. */
    wait_for(f, &b.granted, 1);
    jb_gpu_release_info info;
    jb_error err;
    assert_int_equal(jb_coord_gpu_release(f->co, a.lease_id, &info, &err), JB_ENOENT);
    close_coord(f); /* before the recs on this stack go */
}

static void test_keepalive(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, "resource_coordinator:\n  gpu:\n    keepalive_ms: 100\n");
    rec a = {0};
    acquire(f, "training", 0, &a);
    wait_for(f, &a.granted, 1);
    wait_for(f, &a.keepalives, 3);
    assert_int_equal(a.keepalive_expires_ms, a.expires_ms);
    assert_int_equal(a.expiring, 0);
    assert_int_equal(a.ended, 0);
    close_coord(f); /* before the recs on this stack go */
}

static void test_cancel(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0}, b = {0}, c = {0};
    acquire(f, "training", 0, &a);
    wait_for(f, &a.granted, 1);
    acquire(f, "b", 0, &b);
    acquire(f, "c", 0, &c);
    wait_for(f, &c.queued, 1);
    assert_int_equal(c.position, 2);
    /* A waiter leaves: the one behind moves up. */
    jb_coord_gpu_cancel(b.lease);
    wait_for(f, &c.queued, 2);
    assert_int_equal(c.position, 1);
    /* The holder leaves: the device is handed on at once, with no callback. */
    size_t seen = a.n;
    jb_coord_gpu_cancel(a.lease);
    wait_for(f, &c.granted, 1);
    assert_int_equal(a.n, seen);
    assert_int_equal(b.n, 1);
    jb_gpu_release_info info;
    jb_error err;
    assert_int_equal(jb_coord_gpu_release(f->co, a.lease_id, &info, &err), JB_ENOENT);
    jb_coord_gpu_cancel(NULL);
    close_coord(f); /* before the recs on this stack go */
}

static void test_detach_reattach(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0}, waiter = {0};
    jb_gpu_request req = {.component = "training", .pid = (uint32_t)getpid()};
    assert_int_equal(acquire_full(f, &req, &a), JB_OK);
    wait_for(f, &a.granted, 1);
    acquire(f, "inference", 0, &waiter);
    wait_for(f, &waiter.queued, 1);
    size_t seen = a.n;
    jb_coord_gpu_detach(a.lease);
    run_for(f, 100);
    assert_int_equal(a.n, seen);
    assert_int_equal(waiter.granted, 0); /* the lease stays */
    dev_snapshot s = devices(f);
    assert_true(s.d[0].restored);
    assert_string_equal(s.holder[0], "training");

    rec r = {0}, other = {0};
    jb_gpu_request bad = {.component = "training", .lease_id = "0123456789abcdef"};
    jb_error err;
    assert_int_equal(jb_coord_gpu_acquire(f->co, &bad, on_event, &r, &r.lease, &err), JB_ENOENT);
    bad = (jb_gpu_request){.component = "inference", .lease_id = a.lease_id};
    assert_int_equal(jb_coord_gpu_acquire(f->co, &bad, on_event, &r, &r.lease, &err), JB_EINVAL);

    jb_gpu_request again = {.component = "training", .lease_id = a.lease_id};
    assert_int_equal(acquire_full(f, &again, &r), JB_OK);
    assert_int_equal(acquire_full(f, &again, &other), JB_EEXIST);
    wait_for(f, &r.granted, 1);
    assert_true(r.reattached);
    assert_string_equal(r.lease_id, a.lease_id);
    assert_int_equal(r.device, a.device);
    assert_int_equal(r.expires_ms, a.expires_ms);
    assert_false(devices(f).d[0].restored);
    assert_int_equal(waiter.granted, 0);
    release(f, &r, NULL);
    wait_for(f, &waiter.granted, 1);
    assert_int_equal(r.status, JB_OK);
    close_coord(f); /* before the recs on this stack go */
}

static void test_detach_grace_ends(void **state)
{
    fixture *f = *state;
    jb_coord_options o = {.devices = 1, .nvml_library = "", .reattach_grace_ms = 200};
    open_coord(f, &o, NULL);
    rec a = {0}, b = {0};
    acquire(f, "training", 0, &a);
    wait_for(f, &a.granted, 1);
    acquire(f, "inference", 0, &b);
    jb_coord_gpu_detach(a.lease);
    /* Not re-attached within the grace: the device goes to the next waiter. */
    wait_for(f, &b.granted, 1);
    rec r = {0};
    jb_gpu_request again = {.component = "training", .lease_id = a.lease_id};
    assert_int_equal(acquire_full(f, &again, &r), JB_ENOENT);
    close_coord(f); /* before the recs on this stack go */
}

static void test_bad_input(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0}, r = {0};
    acquire(f, "training", 0, &a);
    wait_for(f, &a.granted, 1);
    char big[JB_COORD_MAX_REASON + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    jb_gpu_request bad[] = {
        {.component = NULL},
        {.component = ""},
        {.component = big},
        {.component = "training", .reason = big},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(acquire_full(f, &bad[i], &r), JB_EINVAL);
    jb_error err;
    jb_gpu_release_info info;
    assert_int_equal(jb_coord_gpu_release(f->co, "nosuchlease", &info, &err), JB_ENOENT);
    assert_int_equal(jb_coord_gpu_release(f->co, "", &info, &err), JB_EINVAL);
    assert_int_equal(jb_coord_gpu_release(f->co, NULL, &info, &err), JB_EINVAL);
    run_for(f, 50);
    assert_int_equal(r.n, 0);
    assert_int_equal(a.ended, 0);
    dev_snapshot s = devices(f);
    assert_string_equal(s.holder[0], "training");
    assert_int_equal(waiters(f).n, 0);
    close_coord(f); /* before the recs on this stack go */
}

static void test_two_devices(void **state)
{
    fixture *f = *state;
    open_devices(f, 2, NULL);
    rec a = {0}, b = {0}, c = {0};
    acquire(f, "a", 0, &a);
    acquire(f, "b", 0, &b);
    acquire(f, "c", 0, &c);
    wait_for(f, &b.granted, 1);
    wait_for(f, &c.queued, 1);
    assert_int_equal(a.granted, 1);
    assert_int_not_equal(a.device, b.device);
    assert_int_equal(c.position, 1);
    assert_int_equal(devices(f).n, 2);
    release(f, &b, NULL);
    wait_for(f, &c.granted, 1);
    assert_int_equal(c.device, b.device);
    close_coord(f); /* before the recs on this stack go */
}

static void test_backpressure(void **state)
{
    fixture *f = *state;
    jb_coord_options o = {.devices = 1, .nvml_library = "", .max_waiters = 2};
    open_coord(f, &o, NULL);
    rec a = {0}, b = {0}, c = {0}, d = {0};
    acquire(f, "a", 0, &a);
    wait_for(f, &a.granted, 1);
    acquire(f, "b", 0, &b);
    acquire(f, "c", 0, &c);
    jb_gpu_request req = {.component = "d"};
    assert_int_equal(acquire_full(f, &req, &d), JB_EBACKPRESSURE);
    run_for(f, 50);
    assert_int_equal(d.n, 0);
    assert_int_equal(waiters(f).n, 2);
    close_coord(f); /* before the recs on this stack go */
}

static void saved_lease(jb__saved_lease *s, uint32_t device, const char *id, const char *component,
                        int64_t granted_ms, int64_t expires_ms)
{
    *s = (jb__saved_lease){.device = device,
                           .lease_id = strdup(id),
                           .component = strdup(component),
                           .reason = strdup("saved"),
                           .granted_ms = granted_ms,
                           .expires_ms = expires_ms};
}

static void test_restore_and_save(void **state)
{
    fixture *f = *state;
    open_devices(f, 2, NULL);
    int64_t now = jb__coord_wall_ms();
    jb__state_image img = {.leases = calloc(3, sizeof(jb__saved_lease)), .n_leases = 3};
    assert_non_null(img.leases);
    saved_lease(&img.leases[0], 1, "feedfacefeedface", "training", now - 1000, now + 60000);
    saved_lease(&img.leases[1], 0, "0000000000000000", "old", now - 9000,
                now - 1000); /* expired: dropped */
    saved_lease(&img.leases[2], 7, "1111111111111111", "x", now,
                now + 60000); /* no such device: dropped */
    jb_error err;
    assert_int_equal(jb__gpu_restore(f->co->gpu, &img, &err), JB_OK);
    jb__state_image_release(&img);
    dev_snapshot s = devices(f);
    assert_true(s.d[0].available);
    assert_true(s.d[1].restored);
    assert_int_equal(s.d[1].expires_ms, now + 60000);

    jb__state_image out = {0};
    assert_int_equal(jb__gpu_save(f->co->gpu, &out), JB_OK);
    assert_int_equal(out.n_leases, 1);
    assert_string_equal(out.leases[0].lease_id, "feedfacefeedface");
    assert_int_equal(out.leases[0].device, 1);
    assert_int_equal(out.leases[0].expires_ms, now + 60000);
    jb__state_image_release(&out);

    rec r = {0};
    jb_gpu_request again = {.component = "training", .lease_id = "feedfacefeedface"};
    assert_int_equal(acquire_full(f, &again, &r), JB_OK);
    wait_for(f, &r.granted, 1);
    assert_true(r.reattached);
    assert_int_equal(r.device, 1);
    assert_int_equal(r.expires_ms, now + 60000);
    close_coord(f); /* before the recs on this stack go */
}

static void test_close(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0}, b = {0};
    acquire(f, "a", 0, &a);
    wait_for(f, &a.granted, 1);
    acquire(f, "b", 0, &b);
    wait_for(f, &b.queued, 1);
    size_t seen = a.n;
    int closed = 0;
    jb_coord_close(f->co, on_closed, &closed);
    f->co = NULL;
    assert_int_equal(b.ended, 1);
    assert_int_equal(b.status, JB_ECLOSED);
    wait_for(f, &closed, 1);
    assert_int_equal(a.n, seen);
    close_coord(f); /* before the recs on this stack go */
}

/* Opens the coordinator on the state file of the fixture, with a short re-attach grace. */
static void open_with_state(fixture *f, uint32_t grace_ms)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/coord.state", f->dir);
    jb_coord_options o = {
        .devices = 1, .nvml_library = "", .state_path = path, .reattach_grace_ms = grace_ms};
    open_coord(f, &o, NULL);
}

static void test_restart_reattach(void **state)
{
    fixture *f = *state;
    open_with_state(f, 60000);
    rec a = {0};
    acquire(f, "training", 0, &a);
    wait_for(f, &a.granted, 1);
    close_coord(f); /* the lease stays in the state file */
    char path[128];
    snprintf(path, sizeof(path), "%s/coord.state", f->dir);
    if (access(path, F_OK) != 0)
        skip(); /* built with the placeholder state.c, which persists nothing */

    open_with_state(f, 60000);
    dev_snapshot s = devices(f);
    assert_true(s.d[0].restored);
    assert_string_equal(s.holder[0], "training");
    rec waiter = {0}, r = {0};
    acquire(f, "inference", 0, &waiter);
    wait_for(f, &waiter.queued, 1); /* the restored lease keeps the device */
    jb_gpu_request again = {.component = "training", .lease_id = a.lease_id};
    assert_int_equal(acquire_full(f, &again, &r), JB_OK);
    wait_for(f, &r.granted, 1);
    assert_true(r.reattached);
    assert_string_equal(r.lease_id, a.lease_id);
    assert_int_equal(r.device, a.device);
    assert_int_equal(r.expires_ms, a.expires_ms);
    close_coord(f);

    /* Restored again, nobody re-attaches: after the grace the device goes on. */
    open_with_state(f, 200);
    rec late = {0};
    acquire(f, "inference", 0, &late);
    wait_for(f, &late.granted, 1);
    assert_false(devices(f).d[0].restored);
    close_coord(f);
}

/* A lease callback that cancels its own handle on the event kind it is given. */
typedef struct self_cancel {
    rec r;
    jb_gpu_event_kind on;
} self_cancel;

static void on_event_cancel(jb_gpu_lease *lease, const jb_gpu_event *ev, void *ud)
{
    self_cancel *c = ud;
    on_event(lease, ev, &c->r);
    if (ev->kind == c->on)
        jb_coord_gpu_cancel(lease);
}

static void test_cancel_inside_callback(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    self_cancel holder = {.r.f = f, .on = JB_GPU_GRANTED};
    self_cancel waiter = {.r.f = f, .on = JB_GPU_QUEUED};
    rec next = {0};
    jb_gpu_request req = {.component = "a"};
    jb_error err;
    assert_int_equal(
        jb_coord_gpu_acquire(f->co, &req, on_event_cancel, &holder, &holder.r.lease, &err), JB_OK);
    req.component = "b";
    assert_int_equal(
        jb_coord_gpu_acquire(f->co, &req, on_event_cancel, &waiter, &waiter.r.lease, &err), JB_OK);
    acquire(f, "c", 0, &next);
    /* The holder leaves in its GRANTED, the waiter in its QUEUED: c gets the device. */
    wait_for(f, &next.granted, 1);
    assert_int_equal(holder.r.n, 1);
    assert_int_equal(waiter.r.n, 1);
    close_coord(f);
}

/* A waiter that cancels another lease when it is told its position. */
typedef struct canceller {
    rec r;
    rec *victim;
} canceller;

static void on_event_cancel_other(jb_gpu_lease *lease, const jb_gpu_event *ev, void *ud)
{
    canceller *c = ud;
    on_event(lease, ev, &c->r);
    if (ev->kind == JB_GPU_QUEUED && c->victim->lease != NULL) {
        jb_coord_gpu_cancel(c->victim->lease);
        c->victim->lease = NULL;
    }
}

static void test_cancel_before_durable(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0};
    canceller b = {.r.f = f, .victim = &a};
    acquire(f, "a", 0, &a);
    jb_gpu_request req = {.component = "b"};
    jb_error err;
    assert_int_equal(jb_coord_gpu_acquire(f->co, &req, on_event_cancel_other, &b, &b.r.lease, &err),
                     JB_OK);
    /* b hears its position in the turn a's grant is made, before it is durable, and
     * cancels a: a never hears GRANTED, and b gets the device. */
    wait_for(f, &b.r.granted, 1);
    assert_int_equal(b.r.queued, 1);
    assert_int_equal(a.n, 0);
    close_coord(f);
}

/* Closes the coordinator from inside a lease callback. */
typedef struct closer {
    rec r;
    int closed;
} closer;

static void on_event_close(jb_gpu_lease *lease, const jb_gpu_event *ev, void *ud)
{
    closer *c = ud;
    on_event(lease, ev, &c->r);
    if (ev->kind == JB_GPU_QUEUED)
        jb_coord_close(c->r.f->co, on_closed, &c->closed);
}

static void test_close_inside_callback(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0}, b = {0};
    closer c = {.r.f = f};
    acquire(f, "a", 0, &a);
    wait_for(f, &a.granted, 1);
    jb_gpu_request req = {.component = "c"};
    jb_error err;
    assert_int_equal(jb_coord_gpu_acquire(f->co, &req, on_event_close, &c, &c.r.lease, &err),
                     JB_OK);
    acquire(f, "b", 0, &b);
    wait_for(f, &c.closed, 1);
    f->co = NULL;
    assert_int_equal(c.r.ended, 1);
    assert_int_equal(c.r.status, JB_ECLOSED);
    /* b waited behind c: it ends too, the holder hears nothing more. */
    assert_int_equal(b.ended, 1);
    assert_int_equal(b.status, JB_ECLOSED);
    assert_int_equal(b.queued, 0);
    assert_int_equal(a.n, 1);
}

static void test_detach_waiter(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, NULL);
    rec a = {0}, b = {0}, c = {0};
    acquire(f, "a", 0, &a);
    wait_for(f, &a.granted, 1);
    acquire(f, "b", 0, &b);
    acquire(f, "c", 0, &c);
    wait_for(f, &c.queued, 1);
    jb_coord_gpu_detach(b.lease); /* a waiter simply leaves */
    wait_for(f, &c.queued, 2);
    assert_int_equal(c.position, 1);
    assert_int_equal(waiters(f).n, 1);
    close_coord(f);
}

/* ---- with the fake NVML ------------------------------------------------- */

static void open_nvml(fixture *f, const char *script, const char *yaml)
{
    write_text(f->script, script);
    jb_coord_options o = {.nvml_library = JB_FAKE_NVML};
    open_coord(f, &o, yaml);
}

static void test_nvml_discovery(void **state)
{
    fixture *f = *state;
    open_nvml(f,
              "device 0 name=NVIDIA-H200 uuid=GPU-0000 total=1000 used=10\n"
              "device 1 name=NVIDIA-H100 uuid=GPU-0001 total=2000 used=20\n",
              NULL);
    assert_string_equal(jb_coord_gpu_source(f->co), "nvml");
    dev_snapshot s = devices(f);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.name[0], "NVIDIA-H200");
    assert_string_equal(s.name[1], "NVIDIA-H100");
    assert_int_equal(s.d[1].memory_total_bytes, 2000);
    assert_int_equal(s.d[1].memory_used_bytes, 20);
    rec a = {0};
    acquire(f, "training", 0, &a);
    wait_for(f, &a.granted, 1);
    assert_string_equal(a.uuid, a.device == 0 ? "GPU-0000" : "GPU-0001");
    close_coord(f); /* before the recs on this stack go */
}

static void test_nvml_missing(void **state)
{
    fixture *f = *state;
    jb_coord_options o = {.nvml_library = "/nonexistent/libnvidia-ml.so.1"};
    open_coord(f, &o, NULL);
    assert_string_equal(jb_coord_gpu_source(f->co), "config");
    assert_int_equal(devices(f).n, 1);
    close_coord(f); /* before the recs on this stack go */
}

static void test_nvml_confirmed_release(void **state)
{
    fixture *f = *state;
    char script[256];
    snprintf(script, sizeof(script),
             "device 0 name=NVIDIA-H200 uuid=GPU-0000 total=1000 used=510\n"
             "process 0 pid=%d used=500\n",
             (int)getpid());
    open_nvml(f, script, NULL);
    rec a = {0}, b = {0};
    jb_gpu_request req = {.component = "training", .pid = (uint32_t)getpid()};
    assert_int_equal(acquire_full(f, &req, &a), JB_OK);
    wait_for(f, &a.granted, 1);
    acquire(f, "inference", 0, &b);
    jb_gpu_release_info info = {0};
    release(f, &a, &info);
    assert_int_equal(info.memory_held_bytes, 500);
    wait_for(f, &a.ended, 1);
    assert_true(devices(f).d[0].releasing);
    run_for(f, 500);
    assert_int_equal(b.granted, 0); /* not handed on while the memory is held */
    write_text(f->script, "device 0 name=NVIDIA-H200 uuid=GPU-0000 total=1000 used=10\n");
    wait_for(f, &b.granted, 1);
    assert_false(devices(f).d[0].releasing);
    close_coord(f); /* before the recs on this stack go */
}

static void test_nvml_release_timeout(void **state)
{
    fixture *f = *state;
    char script[256];
    snprintf(script, sizeof(script),
             "device 0 name=NVIDIA-H200 uuid=GPU-0000 total=1000 used=510\n"
             "graphics 0 pid=%d used=300\n",
             (int)getpid());
    open_nvml(f, script, "resource_coordinator:\n  gpu:\n    release_timeout_seconds: 1\n");
    rec a = {0}, b = {0};
    jb_gpu_request req = {.component = "training", .pid = (uint32_t)getpid()};
    assert_int_equal(acquire_full(f, &req, &a), JB_OK);
    wait_for(f, &a.granted, 1);
    acquire(f, "inference", 0, &b);
    jb_gpu_release_info info = {0};
    release(f, &a, &info);
    assert_int_equal(info.memory_held_bytes, 300);
    /* The memory is never freed: after release_timeout the device goes on, logged. */
    f->log[0] = '\0';
    wait_for(f, &b.granted, 1);
    assert_non_null(strstr(f->log, "release_timeout"));
    close_coord(f); /* before the recs on this stack go */
}

static void test_nvml_descendants(void **state)
{
    fixture *f = *state;
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        pause();
        _exit(0);
    }
    char script[256];
    snprintf(script, sizeof(script),
             "device 0 name=NVIDIA-H200 uuid=GPU-0000 total=1000 used=710\n"
             "process 0 pid=%d used=700\n"
             "process 0 pid=1 used=5\n",
             (int)child);
    open_nvml(f, script, NULL);
    rec a = {0};
    jb_gpu_request req = {.component = "training", .pid = (uint32_t)getpid()};
    assert_int_equal(acquire_full(f, &req, &a), JB_OK);
    wait_for(f, &a.granted, 1);
    jb_gpu_release_info info = {0};
    release(f, &a, &info);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    /* The child of the holder counts; another process on the device does not. */
    assert_int_equal(info.memory_held_bytes, 700);
    close_coord(f);
}

static void test_nvml_init_fails(void **state)
{
    fixture *f = *state;
    open_nvml(f, "init fail\ndevice 0 name=X uuid=GPU-X total=1 used=0\n", NULL);
    assert_string_equal(jb_coord_gpu_source(f->co), "config");
    assert_int_equal(devices(f).n, 1);
    close_coord(f);
}

static void test_holder_process_dies(void **state)
{
    fixture *f = *state;
    open_devices(f, 1, "resource_coordinator:\n  gpu:\n    keepalive_ms: 100\n");
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    rec a = {0}, b = {0};
    jb_gpu_request req = {.component = "training", .pid = (uint32_t)child};
    assert_int_equal(acquire_full(f, &req, &a), JB_OK);
    acquire(f, "inference", 0, &b);
    wait_for(f, &b.granted, 1);
    assert_int_equal(a.ended, 1);
    assert_int_equal(a.status, JB_OK);
    close_coord(f); /* before the recs on this stack go */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exclusive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ordering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settings_reorder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_starvation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_reattach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_grace_ends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_devices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_and_save, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_reattach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_waiter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nvml_discovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nvml_descendants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nvml_init_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nvml_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nvml_confirmed_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nvml_release_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_holder_process_dies, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
