/*
 * Unit tests for the request queues (src/coord/queue.c): a round trip,
 * priority order, no worker, a full queue, cancel before hand-out, a worker
 * that goes away (redelivery with a delivery count), poison, the cache and
 * its expiry, coalescing, pacing by the budget (waiting and admission by
 * deadline), status and bad input.
 *
 * Each test runs a real libuv loop and a coordinator made with
 * jb_coord_new and a real configuration snapshot. Tests wait for conditions
 * with a generous deadline, so that a bug fails instead of hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord/coord_internal.h"
#include "jimbot/config.h"
#include "jimbot/coord.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- Harness ------------------------------------------------------------- */

#define MAX_TASKS 64

typedef struct answer_rec {
    int done;
    jb_status status;
    char payload[64];
    char error[160];
    char request_id[160];
    int cached;
} answer_rec;

typedef struct task_rec {
    char id[160];
    char payload[64];
    uint32_t delivery_count;
    uint32_t timeout_ms;
} task_rec;

typedef struct fixture {
    uv_loop_t loop;
    char dir[64];
    char config[128];
    char cache[128]; /* the cache file, when a test sets use_cache */
    int use_cache;
    jb_config *cfg;
    jb_coord *co;
    int closed;
    task_rec tasks[MAX_TASKS];
    int n_tasks;
    int auto_answer; /* the worker answers "re:<payload>" at once */
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_coord_queue_XXXXXX");
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    snprintf(f->config, sizeof(f->config), "%s/infrastructure.yaml", f->dir);
    snprintf(f->cache, sizeof(f->cache), "%s/queue.cache", f->dir);
    *state = f;
    return 0;
}

static void on_coord_closed(void *ud)
{
    ((fixture *)ud)->closed = 1;
}

static void close_coord(fixture *f)
{
    if (f->co == NULL)
        return;
    f->closed = 0;
    jb_coord_close(f->co, on_coord_closed, f);
    f->co = NULL;
    time_t deadline = time(NULL) + 20;
    while (!f->closed && time(NULL) < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->closed);
}

static int teardown(void **state)
{
    fixture *f = *state;
    close_coord(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int busy = uv_loop_close(&f->loop);
    jb_config_unref(f->cfg);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    assert_int_equal(busy, 0);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *@flag reaches @want, at most 20 s. */
static void run_until(fixture *f, const int *flag, int want)
{
    uv_timer_t tick;
    uv_timer_init(&f->loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    time_t deadline = time(NULL) + 20;
    while (*flag < want && time(NULL) < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(*flag, want);
}

/* Runs the loop for about @ms. */
static void run_for(fixture *f, uint64_t ms)
{
    uv_timer_t tick;
    uv_timer_init(&f->loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + ms;
    while (uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Opens the coordinator with a configuration whose resource_coordinator section is @yaml. */
static void open_coord(fixture *f, const char *yaml)
{
    jb_config_unref(f->cfg);
    f->cfg = NULL;
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fprintf(fp, "resource_coordinator:\n%s", yaml != NULL ? yaml : "  max_waiters: 1024\n");
    assert_int_equal(fclose(fp), 0);
    jb_config_errors *errs = jb_config_errors_new();
    jb_config_options o = {.path = f->config};
    jb_status s = jb_config_load(&o, &f->cfg, errs, NULL);
    char line[512];
    for (size_t i = 0; i < jb_config_errors_count(errs); i++)
        print_message("config: %s\n", jb_config_errors_format(errs, i, line, sizeof(line)));
    jb_config_errors_free(errs);
    assert_int_equal(s, JB_OK);
    jb_coord_options co = {
        .nvml_library = "", .devices = 1, .cache_path = f->use_cache ? f->cache : NULL};
    assert_int_equal(jb_coord_new(&f->loop, &co, &f->co, NULL), JB_OK);
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
}

/* A plain queue "q" (no budget), small bounds. */
#define PLAIN                                                                                  \
    "  queues:\n    q:\n      max_depth: 3\n      timeout_ms: 5000\n      max_deliveries: 2\n" \
    "      budget: none\n"

static void on_answer(jb_status status, const jb_queued_response *resp, const jb_error *err,
                      void *ud)
{
    answer_rec *a = ud;
    (void)err;
    a->done++;
    a->status = status;
    if (resp != NULL) {
        snprintf(a->payload, sizeof(a->payload), "%.*s", (int)resp->payload_len,
                 (const char *)resp->payload);
        snprintf(a->error, sizeof(a->error), "%s", resp->error);
        snprintf(a->request_id, sizeof(a->request_id), "%s", resp->request_id);
        a->cached = resp->cached;
    }
}

static void respond(fixture *f, const char *id, const char *payload, const char *error)
{
    jb_queued_response r = {.request_id = id,
                            .type = "t.Resp",
                            .payload = payload,
                            .payload_len = strlen(payload),
                            .error = error};
    assert_int_equal(jb_coord_queue_respond(f->co, &r, NULL), JB_OK);
}

static void on_task(jb_queue_worker *w, const jb_queued_task *t, void *ud)
{
    fixture *f = ud;
    (void)w;
    assert_true(f->n_tasks < MAX_TASKS);
    task_rec *r = &f->tasks[f->n_tasks++];
    snprintf(r->id, sizeof(r->id), "%s", t->request_id);
    snprintf(r->payload, sizeof(r->payload), "%.*s", (int)t->payload_len, (const char *)t->payload);
    r->delivery_count = t->delivery_count;
    r->timeout_ms = t->timeout_ms;
    if (f->auto_answer) {
        char out[80];
        snprintf(out, sizeof(out), "re:%s", r->payload);
        respond(f, t->request_id, out, NULL);
    }
}

static jb_status submit(fixture *f, const char *queue, const char *payload, int32_t priority,
                        uint32_t timeout_ms, answer_rec *a, jb_queue_submit **out, uint64_t *retry)
{
    jb_queued_request r = {.queue = queue,
                           .type = "t.Req",
                           .payload = payload,
                           .payload_len = strlen(payload),
                           .priority = priority,
                           .timeout_ms = timeout_ms,
                           .submitter = "test"};
    return jb_coord_queue_submit(f->co, &r, on_answer, a, out, retry, NULL);
}

static jb_queue_worker *worker(fixture *f, const char *queue, uint32_t max_outstanding)
{
    jb_queue_worker *w = NULL;
    assert_int_equal(jb_coord_queue_worker_new(f->co, queue, max_outstanding, on_task, f, &w, NULL),
                     JB_OK);
    return w;
}

typedef struct infos {
    jb_queue_info q[8];
    char names[8][80];
    int n;
} infos;

static void on_info(const jb_queue_info *q, void *ud)
{
    infos *i = ud;
    if (i->n < 8) {
        i->q[i->n] = *q;
        snprintf(i->names[i->n], sizeof(i->names[i->n]), "%s", q->name);
        i->q[i->n].name = i->names[i->n];
        i->q[i->n].budget = NULL;
        i->n++;
    }
}

static jb_queue_info info_of(fixture *f, const char *name)
{
    infos all = {0};
    jb_coord_foreach_queue(f->co, on_info, &all);
    for (int i = 0; i < all.n; i++) {
        if (strcmp(all.names[i], name) == 0)
            return all.q[i];
    }
    fail_msg("no queue %s", name);
    return all.q[0];
}

/* ---- Tests --------------------------------------------------------------- */

static void check_claude_budget(const jb_queue_info *q, void *ud)
{
    (*(int *)ud)++;
    assert_string_equal(q->name, "claude");
    assert_string_equal(q->budget, "claude");
}

static void test_default_claude_queue(void **state)
{
    fixture *f = *state;
    open_coord(f, NULL);
    int n = 0;
    jb_coord_foreach_queue(f->co, check_claude_budget, &n);
    assert_int_equal(n, 1);
    jb_queue_info i = info_of(f, "claude");
    assert_int_equal(i.max_depth, 1000);
    assert_int_equal(i.depth, 0);
    assert_int_equal(i.workers, 0);
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0};
    assert_int_equal(submit(f, "q", "hello", 0, 0, &a, NULL, NULL), JB_OK);
    /* Nothing is handed out or answered inside the calls. */
    assert_int_equal(f->n_tasks, 0);
    run_until(f, &f->n_tasks, 1);
    assert_string_equal(f->tasks[0].payload, "hello");
    assert_int_equal(f->tasks[0].delivery_count, 1);
    assert_int_equal(info_of(f, "q").in_flight, 1);
    respond(f, f->tasks[0].id, "world", NULL);
    assert_int_equal(a.done, 0);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_OK);
    assert_string_equal(a.payload, "world");
    assert_string_equal(a.request_id, f->tasks[0].id);
    assert_int_equal(a.cached, 0);
    /* Answered already: unknown now. */
    jb_queued_response r = {.request_id = f->tasks[0].id, .payload = "x", .payload_len = 1};
    assert_int_equal(jb_coord_queue_respond(f->co, &r, NULL), JB_ENOENT);
    jb_coord_queue_worker_free(w);
}

static void test_worker_error_text_reaches_submitter(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0}, b = {0};
    assert_int_equal(submit(f, "q", "p", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    respond(f, f->tasks[0].id, "", "model overloaded");
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_OK);
    assert_string_equal(a.error, "model overloaded");
    /* A failed answer is not cached: the same request reaches the worker again. */
    assert_int_equal(submit(f, "q", "p", 0, 0, &b, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 2);
    assert_int_equal(f->tasks[1].delivery_count, 1);
    jb_coord_queue_worker_free(w);
}

static void test_priority_order(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    answer_rec a[3] = {0};
    /* A worker busy with the first request while the others queue up. */
    jb_queue_worker *w = worker(f, "q", 1);
    assert_int_equal(submit(f, "q", "first", 0, 0, &a[0], NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    assert_int_equal(submit(f, "q", "low", 1, 0, &a[1], NULL, NULL), JB_OK);
    assert_int_equal(submit(f, "q", "high", 5, 0, &a[2], NULL, NULL), JB_OK);
    answer_rec c = {0};
    assert_int_equal(submit(f, "q", "low2", 1, 0, &c, NULL, NULL), JB_OK);
    run_for(f, 20);
    assert_int_equal(info_of(f, "q").depth, 3);
    f->auto_answer = 1;
    respond(f, f->tasks[0].id, "ok", NULL);
    run_until(f, &f->n_tasks, 4);
    assert_string_equal(f->tasks[1].payload, "high");
    assert_string_equal(f->tasks[2].payload, "low");
    assert_string_equal(f->tasks[3].payload, "low2");
    run_until(f, &c.done, 1);
    assert_string_equal(c.payload, "re:low2");
    jb_coord_queue_worker_free(w);
}

static void test_no_worker_fails_at_once(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    answer_rec a = {0};
    jb_error err;
    jb_queued_request r = {.queue = "q", .payload = "x", .payload_len = 1};
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, &err),
                     JB_EUNAVAILABLE);
    assert_non_null(strstr(err.message, "no worker"));
    run_for(f, 10);
    assert_int_equal(a.done, 0);
}

static void test_full_queue_backpressure(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a[5] = {0};
    assert_int_equal(submit(f, "q", "busy", 0, 0, &a[0], NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    for (int i = 1; i <= 3; i++) {
        char p[8];
        snprintf(p, sizeof(p), "p%d", i);
        assert_int_equal(submit(f, "q", p, 0, 0, &a[i], NULL, NULL), JB_OK);
    }
    uint64_t retry = 0;
    assert_int_equal(submit(f, "q", "p4", 0, 0, &a[4], NULL, &retry), JB_EBACKPRESSURE);
    assert_true(retry > 0);
    /* An equal request still joins the one waiting, even when full. */
    answer_rec dup = {0};
    assert_int_equal(submit(f, "q", "p1", 0, 0, &dup, NULL, NULL), JB_OK);
    jb_coord_queue_worker_free(w);
    close_coord(f);
    for (int i = 0; i < 4; i++)
        assert_int_equal(a[i].status, JB_ECLOSED);
    assert_int_equal(dup.status, JB_ECLOSED);
    assert_int_equal(a[4].done, 0);
}

static void test_cancel_before_hand_out(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0}, b = {0};
    jb_queue_submit *s = NULL;
    assert_int_equal(submit(f, "q", "gone", 0, 0, &a, &s, NULL), JB_OK);
    assert_int_equal(submit(f, "q", "stays", 0, 0, &b, NULL, NULL), JB_OK);
    jb_coord_queue_cancel(s);
    f->auto_answer = 1;
    run_until(f, &b.done, 1);
    assert_int_equal(f->n_tasks, 1);
    assert_string_equal(f->tasks[0].payload, "stays");
    assert_int_equal(a.done, 0);
    jb_coord_queue_cancel(NULL);
    jb_coord_queue_worker_free(w);
}

static void test_timeout(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0}, b = {0};
    assert_int_equal(submit(f, "q", "held", 0, 50, &a, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    /* Waiting behind a busy worker: it times out and never reaches a worker. */
    assert_int_equal(submit(f, "q", "waits", 0, 50, &b, NULL, NULL), JB_OK);
    run_until(f, &b.done, 1);
    assert_int_equal(b.status, JB_ETIMEDOUT);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_ETIMEDOUT);
    assert_int_equal(info_of(f, "q").depth, 0);
    /* The late answer is still accepted (and cached). */
    respond(f, f->tasks[0].id, "late", NULL);
    run_for(f, 20);
    assert_int_equal(f->n_tasks, 1);
    assert_int_equal(info_of(f, "q").cache_entries, 1);
    jb_coord_queue_worker_free(w);
}

/* The caller's deadline (max_wait_ms) cuts the queue's default timeout. */
static void test_wait_cut_to_the_callers_deadline(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0};
    jb_queued_request r = {.queue = "q", .payload = "cut", .payload_len = 3, .max_wait_ms = 40};
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    assert_in_range(f->tasks[0].timeout_ms, 0, 40);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_ETIMEDOUT);
    /* A longer max_wait_ms than the request's own timeout changes nothing. */
    answer_rec b = {0};
    jb_queued_request r2 = {
        .queue = "q", .payload = "own", .payload_len = 3, .timeout_ms = 30, .max_wait_ms = 60000};
    respond(f, f->tasks[0].id, "late", NULL);
    assert_int_equal(jb_coord_queue_submit(f->co, &r2, on_answer, &b, NULL, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 2);
    assert_in_range(f->tasks[1].timeout_ms, 0, 30);
    run_until(f, &b.done, 1);
    assert_int_equal(b.status, JB_ETIMEDOUT);
    jb_coord_queue_worker_free(w);
}

static void test_worker_gone_redelivers_then_poison(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w1 = worker(f, "q", 1);
    answer_rec a = {0};
    assert_int_equal(submit(f, "q", "crashy", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    assert_int_equal(f->tasks[0].delivery_count, 1);
    jb_coord_queue_worker_free(w1);
    assert_int_equal(info_of(f, "q").depth, 1);
    jb_queue_worker *w2 = worker(f, "q", 1);
    run_until(f, &f->n_tasks, 2);
    assert_string_equal(f->tasks[1].id, f->tasks[0].id);
    assert_int_equal(f->tasks[1].delivery_count, 2);
    /* max_deliveries 2: the second worker going away poisons it. */
    jb_coord_queue_worker_free(w2);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_EIO);
    jb_queue_info i = info_of(f, "q");
    assert_int_equal(i.poisoned, 1);
    assert_int_equal(i.depth, 0);
}

static void count_poison(const jb_queued_task *t, void *ud)
{
    int *n = ud;
    assert_int_equal(t->delivery_count, 2);
    assert_int_equal(t->payload_len, 6);
    (*n)++;
}

static void test_poison_kept_aside(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    answer_rec a = {0};
    jb_queue_worker *w = worker(f, "q", 1);
    assert_int_equal(submit(f, "q", "poison", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    jb_coord_queue_worker_free(w);
    w = worker(f, "q", 1);
    run_until(f, &f->n_tasks, 2);
    jb_coord_queue_worker_free(w);
    run_until(f, &a.done, 1);
    int n = 0;
    jb_coord_foreach_queue_poison(f->co, "q", count_poison, &n);
    assert_int_equal(n, 1);
    /* A new worker gets nothing: it is not retried. */
    w = worker(f, "q", 1);
    run_for(f, 20);
    assert_int_equal(f->n_tasks, 2);
    jb_coord_queue_worker_free(w);
}

static void test_cache_hit_and_expiry(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN "  claude:\n    cache_ttl: 1\n");
    jb_queue_worker *w = worker(f, "q", 1);
    f->auto_answer = 1;
    answer_rec a = {0}, b = {0}, c = {0}, d = {0};
    assert_int_equal(submit(f, "q", "same", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &a.done, 1);
    assert_int_equal(a.cached, 0);
    /* Within cache_ttl: from the cache, no worker, even with none connected. */
    jb_coord_queue_worker_free(w);
    assert_int_equal(submit(f, "q", "same", 0, 0, &b, NULL, NULL), JB_OK);
    assert_int_equal(b.done, 0);
    run_until(f, &b.done, 1);
    assert_int_equal(b.status, JB_OK);
    assert_int_equal(b.cached, 1);
    assert_string_equal(b.payload, "re:same");
    assert_int_equal(f->n_tasks, 1);
    jb_queue_info i = info_of(f, "q");
    assert_int_equal(i.cache_hits, 1);
    assert_true(i.cache_bytes > 0);
    /* Bypass: past the cache to a worker. */
    w = worker(f, "q", 1);
    jb_queued_request r = {
        .queue = "q", .type = "t.Req", .payload = "same", .payload_len = 4, .bypass_cache = 1};
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &c, NULL, NULL, NULL), JB_OK);
    run_until(f, &c.done, 1);
    assert_int_equal(c.cached, 0);
    assert_int_equal(f->n_tasks, 2);
    /* After cache_ttl it reaches a worker again. */
    run_for(f, 1100);
    assert_int_equal(submit(f, "q", "same", 0, 0, &d, NULL, NULL), JB_OK);
    run_until(f, &d.done, 1);
    assert_int_equal(d.cached, 0);
    assert_int_equal(f->n_tasks, 3);
    jb_coord_queue_worker_free(w);
}

static void test_cache_bounded_in_bytes(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN "  claude:\n    cache_max_bytes: 400\n");
    jb_queue_worker *w = worker(f, "q", 1);
    f->auto_answer = 1;
    for (int i = 0; i < 10; i++) {
        answer_rec a = {0};
        char p[16];
        snprintf(p, sizeof(p), "req%d", i);
        assert_int_equal(submit(f, "q", p, 0, 0, &a, NULL, NULL), JB_OK);
        run_until(f, &a.done, 1);
    }
    jb_queue_info i = info_of(f, "q");
    assert_true(i.cache_bytes <= 400);
    assert_true(i.cache_entries >= 1);
    assert_true(i.cache_entries < 10);
    jb_coord_queue_worker_free(w);
}

static void test_coalescing(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 4);
    answer_rec a[3] = {0};
    assert_int_equal(submit(f, "q", "eq", 0, 0, &a[0], NULL, NULL), JB_OK);
    assert_int_equal(submit(f, "q", "eq", 0, 0, &a[1], NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    /* Joins the one in flight too. */
    assert_int_equal(submit(f, "q", "eq", 0, 0, &a[2], NULL, NULL), JB_OK);
    run_for(f, 20);
    assert_int_equal(f->n_tasks, 1);
    respond(f, f->tasks[0].id, "shared", NULL);
    run_until(f, &a[2].done, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].done, 1);
        assert_int_equal(a[i].status, JB_OK);
        assert_string_equal(a[i].payload, "shared");
    }
    /* Each submitter is told its own request id. */
    assert_string_not_equal(a[0].request_id, a[1].request_id);
    assert_int_equal(info_of(f, "q").coalesced, 2);
    jb_coord_queue_worker_free(w);
}

#define PACED "  claude:\n    hourly_limit: 3\n    window_seconds: 1\n    cache_ttl: 0\n"

static void test_pacing_by_budget(void **state)
{
    fixture *f = *state;
    open_coord(f, PACED);
    jb_queue_worker *w = worker(f, "claude", 8);
    answer_rec a[5] = {0};
    for (int i = 0; i < 3; i++) {
        char p[8];
        snprintf(p, sizeof(p), "r%d", i);
        assert_int_equal(submit(f, "claude", p, 0, 10000, &a[i], NULL, NULL), JB_OK);
    }
    run_until(f, &f->n_tasks, 3);
    /* The fourth waits for a unit instead of failing. */
    assert_int_equal(submit(f, "claude", "r3", 0, 10000, &a[3], NULL, NULL), JB_OK);
    run_for(f, 100);
    assert_int_equal(f->n_tasks, 3);
    assert_int_equal(info_of(f, "claude").depth, 1);
    /* One whose deadline comes before a unit frees is refused at once. */
    uint64_t retry = 0;
    jb_error err;
    jb_queued_request r = {.queue = "claude", .payload = "r4", .payload_len = 2, .timeout_ms = 50};
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a[4], NULL, &retry, &err),
                     JB_ERATELIMITED);
    assert_true(retry > 0 && retry <= 1000);
    jb_quota_info qi;
    jb_coord_quota_info(f->co, &qi);
    assert_int_equal(qi.remaining, 0);
    /* Once the window frees a unit the fourth goes out. */
    run_until(f, &f->n_tasks, 4);
    assert_string_equal(f->tasks[3].payload, "r3");
    for (int i = 0; i < 4; i++)
        respond(f, f->tasks[i].id, "ok", NULL);
    run_until(f, &a[3].done, 1);
    assert_int_equal(a[4].done, 0);
    jb_coord_queue_worker_free(w);
}

static void test_bad_input(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0};
    jb_queued_request r = {.queue = NULL};
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_EINVAL);
    r.queue = "";
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_EINVAL);
    r.queue = "nope";
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_ENOENT);
    char long_name[300];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    r.queue = long_name;
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_EINVAL);
    r.queue = "q";
    r.type = long_name;
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_EINVAL);
    r.type = NULL;
    r.payload_len = 3;
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_EINVAL);
    r.payload_len = 0;
    r.request_id = "mine";
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &a, NULL, NULL, NULL), JB_OK);
    answer_rec b = {0};
    r.bypass_cache = 1;
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer, &b, NULL, NULL, NULL), JB_EEXIST);
    jb_queue_worker *w2 = NULL;
    assert_int_equal(jb_coord_queue_worker_new(f->co, "nope", 1, on_task, f, &w2, NULL), JB_ENOENT);
    assert_int_equal(jb_coord_queue_worker_new(f->co, "", 1, on_task, f, &w2, NULL), JB_EINVAL);
    assert_int_equal(jb_coord_queue_worker_new(f->co, "q", 1, NULL, f, &w2, NULL), JB_EINVAL);
    jb_queued_response resp = {.request_id = ""};
    assert_int_equal(jb_coord_queue_respond(f->co, &resp, NULL), JB_EINVAL);
    resp.request_id = "unknown";
    assert_int_equal(jb_coord_queue_respond(f->co, &resp, NULL), JB_ENOENT);
    run_until(f, &f->n_tasks, 1);
    assert_string_equal(f->tasks[0].id, "mine");
    respond(f, "mine", "done", NULL);
    run_until(f, &a.done, 1);
    assert_int_equal(b.done, 0);
    jb_coord_queue_worker_free(w);
    jb_coord_queue_worker_free(NULL);
}

static void test_queue_removed_by_reload(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0}, b = {0};
    assert_int_equal(submit(f, "q", "held", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    assert_int_equal(submit(f, "q", "waits", 0, 0, &b, NULL, NULL), JB_OK);
    /* The default configuration has only `claude`. */
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fprintf(fp, "resource_coordinator:\n  max_waiters: 1024\n");
    fclose(fp);
    jb_config_unref(f->cfg);
    jb_config_options o = {.path = f->config};
    assert_int_equal(jb_config_load(&o, &f->cfg, NULL, NULL), JB_OK);
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    run_until(f, &b.done, 1);
    assert_int_equal(b.status, JB_EUNAVAILABLE);
    /* The one held is still answered. */
    respond(f, f->tasks[0].id, "ok", NULL);
    run_until(f, &a.done, 1);
    assert_int_equal(a.status, JB_OK);
    answer_rec c = {0};
    assert_int_equal(submit(f, "q", "x", 0, 0, &c, NULL, NULL), JB_ENOENT);
    jb_coord_queue_worker_free(w);
}

static void test_close_with_workers_left(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    worker(f, "q", 1);
    answer_rec a = {0}, b = {0};
    assert_int_equal(submit(f, "q", "one", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &f->n_tasks, 1);
    assert_int_equal(submit(f, "q", "two", 0, 0, &b, NULL, NULL), JB_OK);
    /* Close answers both and frees the worker the test never freed. */
    close_coord(f);
    assert_int_equal(a.status, JB_ECLOSED);
    assert_int_equal(b.status, JB_ECLOSED);
}

static void test_cache_survives_restart(void **state)
{
    fixture *f = *state;
    f->use_cache = 1;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    f->auto_answer = 1;
    answer_rec a = {0}, b = {0};
    assert_int_equal(submit(f, "q", "keep", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &a.done, 1);
    jb_coord_queue_worker_free(w);
    close_coord(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(access(f->cache, F_OK), 0);
    /* A new coordinator, no worker: the answer comes from the file. */
    open_coord(f, PLAIN);
    assert_int_equal(submit(f, "q", "keep", 0, 0, &b, NULL, NULL), JB_OK);
    run_until(f, &b.done, 1);
    assert_int_equal(b.status, JB_OK);
    assert_int_equal(b.cached, 1);
    assert_string_equal(b.payload, "re:keep");
    answer_rec c = {0};
    assert_int_equal(submit(f, "q", "other", 0, 0, &c, NULL, NULL), JB_EUNAVAILABLE);
}

static void test_cache_file_expired_or_damaged(void **state)
{
    fixture *f = *state;
    f->use_cache = 1;
    open_coord(f, PLAIN "  claude:\n    cache_ttl: 1\n");
    jb_queue_worker *w = worker(f, "q", 1);
    f->auto_answer = 1;
    answer_rec a = {0};
    assert_int_equal(submit(f, "q", "brief", 0, 0, &a, NULL, NULL), JB_OK);
    run_until(f, &a.done, 1);
    jb_coord_queue_worker_free(w);
    close_coord(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    run_for(f, 1100);
    /* Expired while the daemon was down: not answered from the file. */
    open_coord(f, PLAIN);
    answer_rec b = {0};
    assert_int_equal(submit(f, "q", "brief", 0, 0, &b, NULL, NULL), JB_EUNAVAILABLE);
    close_coord(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    /* A damaged file is ignored: the start succeeds with an empty cache. */
    FILE *fp = fopen(f->cache, "wb");
    assert_non_null(fp);
    fputs("JBQCACHE1\n\x05\x00\x00\x00garbage", fp);
    fclose(fp);
    open_coord(f, PLAIN);
    assert_int_equal(info_of(f, "q").cache_entries, 0);
}

static void test_coalesced_cancel_keeps_the_others(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    answer_rec a = {0}, b = {0};
    jb_queue_submit *sa = NULL;
    assert_int_equal(submit(f, "q", "eq", 0, 0, &a, &sa, NULL), JB_OK);
    assert_int_equal(submit(f, "q", "eq", 0, 0, &b, NULL, NULL), JB_OK);
    /* The first submitter goes: the request stays for the second. */
    jb_coord_queue_cancel(sa);
    f->auto_answer = 1;
    run_until(f, &b.done, 1);
    assert_int_equal(b.status, JB_OK);
    assert_string_equal(b.payload, "re:eq");
    assert_int_equal(a.done, 0);
    assert_int_equal(f->n_tasks, 1);
    jb_coord_queue_worker_free(w);
}

typedef struct closer {
    fixture *f;
    answer_rec rec;
} closer;

static void on_answer_close(jb_status status, const jb_queued_response *resp, const jb_error *err,
                            void *ud)
{
    closer *c = ud;
    on_answer(status, resp, err, &c->rec);
    jb_coord_close(c->f->co, on_coord_closed, c->f);
    c->f->co = NULL;
}

static void test_close_from_a_submit_callback(void **state)
{
    fixture *f = *state;
    open_coord(f, PLAIN);
    jb_queue_worker *w = worker(f, "q", 1);
    (void)w; /* freed by the close */
    f->auto_answer = 1;
    closer c = {.f = f};
    answer_rec later = {0};
    jb_queued_request r = {.queue = "q", .payload = "x", .payload_len = 1};
    assert_int_equal(jb_coord_queue_submit(f->co, &r, on_answer_close, &c, NULL, NULL, NULL),
                     JB_OK);
    assert_int_equal(submit(f, "q", "y", 0, 0, &later, NULL, NULL), JB_OK);
    run_until(f, &c.rec.done, 1);
    assert_int_equal(c.rec.status, JB_OK);
    run_until(f, &f->closed, 1);
    assert_int_equal(later.done, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_default_claude_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_error_text_reaches_submitter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_priority_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_worker_fails_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_hand_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_cut_to_the_callers_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_gone_redelivers_then_poison, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poison_kept_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_hit_and_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_bounded_in_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_coalescing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pacing_by_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_removed_by_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_workers_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_survives_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_coalesced_cancel_keeps_the_others, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_a_submit_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_file_expired_or_damaged, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
