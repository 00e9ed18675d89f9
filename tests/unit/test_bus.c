/*
 * Unit tests for the bus engine (src/bus/): routing to groups, sharing
 * within a group, batch windows, aggregation rules, acks, redelivery, dead
 * letters, deduplication, live window changes, windows per topic pattern,
 * the topic allow-list, rules from a configuration snapshot, backpressure,
 * saved positions across restarts, and bounded memory under a slow consumer.
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

#include "jimbot/bus.h"
#include "jimbot/config.h"
#include "jimbot/log.h"
#include "jimbot/store.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ---- harness ------------------------------------------------------------ */

typedef struct received {
    jb_bus *bus;
    char group[64];
    int auto_ack; /* ack every batch as it arrives */
    int nack;     /* nack every batch as it arrives */
    size_t batches;
    size_t events;
    size_t max_batch;
    size_t sizes[64]; /* of the first 64 batches */
    uint32_t max_in_flight_seen;
    uint64_t seqs[4096];
    uint32_t attempts[4096];
    char topics[64][64];
    char last_headers[512];
    unsigned char last_payload[128];
    size_t last_payload_len;
    jb_bus_sub *sub;
} received;

static void on_deliver(jb_bus_sub *sub, const jb_event *const *events, size_t n, void *userdata)
{
    received *r = userdata;
    if (r->batches < 64)
        r->sizes[r->batches] = n;
    r->batches++;
    if (n > r->max_batch)
        r->max_batch = n;
    uint64_t acks[4096];
    for (size_t i = 0; i < n; i++) {
        if (r->events < 4096) {
            r->seqs[r->events] = events[i]->sequence;
            r->attempts[r->events] = events[i]->delivery_attempt;
        }
        if (r->events < 64)
            snprintf(r->topics[r->events], sizeof(r->topics[0]), "%s", events[i]->topic);
        r->last_payload_len = events[i]->payload_len;
        if (events[i]->payload_len <= sizeof(r->last_payload))
            memcpy(r->last_payload, events[i]->payload, events[i]->payload_len);
        r->last_headers[0] = '\0';
        for (size_t h = 0; h < events[i]->n_headers; h++) {
            size_t used = strlen(r->last_headers);
            snprintf(r->last_headers + used, sizeof(r->last_headers) - used, "%s=%s;",
                     events[i]->headers[h].key, events[i]->headers[h].value);
        }
        r->events++;
        if (i < 4096)
            acks[i] = events[i]->sequence;
    }
    uint32_t held = jb_bus_sub_in_flight(sub);
    if (held > r->max_in_flight_seen)
        r->max_in_flight_seen = held;
    if (r->auto_ack)
        assert_int_equal(jb_bus_ack(r->bus, jb_bus_sub_group(sub), acks, n, NULL, NULL, NULL),
                         JB_OK);
    if (r->nack)
        assert_int_equal(jb_bus_nack(r->bus, jb_bus_sub_group(sub), acks, n, 1, NULL, NULL, NULL),
                         JB_OK);
}

typedef struct publish_result {
    size_t done;
    jb_status status;
    uint64_t seqs[1024];
    uint8_t dups[1024];
} publish_result;

static void on_published(jb_status status, const uint64_t *seqs, const uint8_t *dups, size_t n,
                         const jb_error *err, void *userdata)
{
    (void)err;
    publish_result *r = userdata;
    r->done++;
    r->status = status;
    for (size_t i = 0; i < n && i < 1024; i++) {
        r->seqs[i] = seqs[i];
        r->dups[i] = dups[i];
    }
}

static void on_deadline(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs @loop until *@flag becomes non-zero (or a counter reaches @want). */
static void run_until(uv_loop_t *loop, const size_t *value, size_t want)
{
    int expired = 0;
    uv_timer_t deadline;
    uv_timer_init(loop, &deadline);
    deadline.data = &expired;
    uv_timer_start(&deadline, on_deadline, 20000, 0);
    while (*value < want && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (*value < want)
        fail_msg("timed out: got %zu, wanted %zu", *value, want);
}

/* Runs @loop for about @ms (to let timers fire when nothing should happen). */
static void run_for(uv_loop_t *loop, unsigned ms)
{
    size_t flag = 0;
    int expired = 0;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, on_deadline, ms, 0);
    while (!expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    (void)flag;
}

static void on_closed(void *userdata)
{
    (*(size_t *)userdata)++;
}

static void close_bus(uv_loop_t *loop, jb_bus *bus)
{
    size_t closed = 0;
    jb_bus_close(bus, on_closed, &closed);
    run_until(loop, &closed, 1);
}

static void on_store_closed(jb_status st, void *userdata)
{
    (void)st;
    (*(size_t *)userdata)++;
}

static void close_store(uv_loop_t *loop, jb_store *store)
{
    size_t closed = 0;
    assert_int_equal(jb_store_close(store, on_store_closed, &closed), JB_OK);
    run_until(loop, &closed, 1);
}

static jb_status publish_one(jb_bus *bus, const char *topic, const char *type, const char *id,
                             publish_result *res)
{
    jb_event ev = {.topic = topic, .type = type, .id = id, .payload = "x", .payload_len = 1};
    return jb_bus_publish(bus, &ev, 1, on_published, res, NULL, NULL);
}

static jb_bus *test_bus(uv_loop_t *loop)
{
    jb_bus_options o = {.test_mode = 1};
    jb_bus *bus;
    jb_error err;
    if (jb_bus_new(loop, &o, &bus, &err) != JB_OK)
        fail_msg("jb_bus_new: %s", err.message);
    return bus;
}

static jb_bus_sub *subscribe(jb_bus *bus, const char *pattern, const char *group, received *r,
                             uint32_t max_in_flight)
{
    jb_bus_sub_options so = {.pattern = pattern, .group = group, .max_in_flight = max_in_flight};
    jb_bus_sub *sub;
    jb_error err;
    r->bus = bus;
    if (jb_bus_subscribe(bus, &so, on_deliver, r, &sub, &err) != JB_OK)
        fail_msg("subscribe: %s", err.message);
    r->sub = sub;
    return sub;
}

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/jb-bus-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(char *dir)
{
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

/*
 * A bus over a real log (on disk in a fresh folder, or in memory), for the
 * tests that need more than test mode: windows, rules, retention, memory.
 */
typedef struct log_bus {
    uv_loop_t loop;
    char *dir; /* NULL for an in-memory log */
    jb_store *store;
    jb_bus *bus;
} log_bus;

/* Opens @lb: @so.dir becomes a fresh folder when @on_disk; @o.store is set. */
static void log_bus_open(log_bus *lb, jb_store_options so, int on_disk, jb_bus_options o)
{
    uv_loop_init(&lb->loop);
    lb->dir = on_disk ? make_tmpdir() : NULL;
    so.dir = lb->dir;
    assert_int_equal(jb_store_open(&lb->loop, &so, &lb->store, NULL), JB_OK);
    o.store = lb->store;
    assert_int_equal(jb_bus_new(&lb->loop, &o, &lb->bus, NULL), JB_OK);
}

/* Closes the bus, then the log, checks the loop is left empty, removes the folder. */
static void log_bus_close(log_bus *lb)
{
    close_bus(&lb->loop, lb->bus);
    close_store(&lb->loop, lb->store);
    assert_int_equal(uv_loop_close(&lb->loop), 0);
    if (lb->dir != NULL)
        rm_tree(lb->dir);
}

/* ---- tests -------------------------------------------------------------- */

static void test_publish_deliver_ack_in_test_mode(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus *bus = test_bus(&loop);
    received r = {.auto_ack = 1};
    subscribe(bus, "game_events.>", "analytics", &r, 0);
    publish_result res = {0};
    assert_int_equal(
        publish_one(bus, "game_events.hand_played", "jimbot.GameStateUpdate", NULL, &res), JB_OK);
    run_until(&loop, &r.events, 1);
    assert_int_equal(res.status, JB_OK);
    assert_int_equal(res.seqs[0], 1);
    assert_int_equal(r.seqs[0], 1);
    assert_int_equal(r.attempts[0], 1);
    assert_string_equal(r.topics[0], "game_events.hand_played");
    assert_int_equal(jb_bus_published_count(bus), 1);
    assert_string_equal(jb_bus_published(bus, 0)->type, "jimbot.GameStateUpdate");
    assert_null(jb_bus_published(bus, 1));
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "analytics", &gi), JB_OK);
    assert_int_equal(gi.pending, 0);
    assert_int_equal(gi.in_flight, 0);
    assert_int_equal(gi.ack_floor, 2);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_fan_out_and_sharing(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus *bus = test_bus(&loop);
    received a1 = {.auto_ack = 1}, a2 = {.auto_ack = 1}, b = {.auto_ack = 1}, none = {0};
    subscribe(bus, "game_events.*", "trainer", &a1, 3);
    subscribe(bus, "game_events.*", "trainer", &a2, 3);
    subscribe(bus, "game_events.>", "analytics", &b, 0);
    subscribe(bus, "training_updates", "other", &none, 0);
    publish_result res = {0};
    for (int i = 0; i < 20; i++)
        assert_int_equal(publish_one(bus, "game_events.hand_played", "t", NULL, &res), JB_OK);
    publish_one(bus, "game_events.a.b", "t", NULL, &res); /* only '>' matches */
    run_until(&loop, &b.events, 21);
    run_until(&loop, &a2.events, 1);
    size_t shared = a1.events + a2.events;
    run_for(&loop, 50);
    shared = a1.events + a2.events;
    assert_int_equal(shared, 20);
    assert_true(a1.events > 0 && a2.events > 0);
    assert_int_equal(none.events, 0);
    /* Within a group no event is given to both members. */
    for (size_t i = 0; i < a1.events; i++)
        for (size_t k = 0; k < a2.events; k++)
            assert_true(a1.seqs[i] != a2.seqs[k]);
    assert_true(a1.max_in_flight_seen <= 3 && a2.max_in_flight_seen <= 3);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_window_batches_and_max_batch_size(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 1,
                 (jb_bus_options){.batch_window_ms = 200, .max_batch_size = 10});
    jb_bus *bus = lb.bus;
    received r = {.auto_ack = 1};
    subscribe(bus, ">", "g", &r, 100);
    jb_event evs[25];
    for (int i = 0; i < 25; i++)
        evs[i] = (jb_event){.topic = "game_events", .type = "t"};
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(bus, evs, 25, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 25);
    /* Two full batches of 10 went at once, the last 5 at the window's close. */
    assert_int_equal(r.batches, 3);
    assert_int_equal(r.max_batch, 10);
    assert_int_equal(res.seqs[24], 25);
    log_bus_close(&lb);
}

/*
 * A configuration reload changes the window and the batch size of a running
 * bus. The window is a minute, longer than run_until's deadline, so a batch
 * that arrives at all before it closes arrived because it was full.
 */
static void test_set_window_applies_live(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 1,
                 (jb_bus_options){.batch_window_ms = 60000, .max_batch_size = 10});
    jb_bus *bus = lb.bus;
    received r = {.auto_ack = 1};
    subscribe(bus, ">", "g", &r, 100);
    jb_event evs[10];
    for (int i = 0; i < 10; i++)
        evs[i] = (jb_event){.topic = "game_events", .type = "t"};
    publish_result res = {0};

    /* As configured: 10 events make one full batch. */
    assert_int_equal(jb_bus_publish(bus, evs, 10, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 10);
    assert_int_equal(r.batches, 1);
    assert_int_equal(r.sizes[0], 10);

    /* max_batch_size 10 -> 3, same window: the next 9 come as three full batches. */
    jb_bus_set_window(bus, 60000, 3);
    assert_int_equal(jb_bus_publish(bus, evs, 9, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 19);
    assert_int_equal(r.batches, 4);
    assert_int_equal(r.sizes[1], 3);
    assert_int_equal(r.sizes[2], 3);
    assert_int_equal(r.sizes[3], 3);

    /* A partial batch waits for the minute-long window... */
    assert_int_equal(jb_bus_publish(bus, evs, 1, on_published, &res, NULL, NULL), JB_OK);
    size_t published = res.done;
    run_until(&lb.loop, &res.done, published + 1); /* durable */
    run_for(&lb.loop, 100);
    assert_int_equal(r.events, 19);
    /* ...until the window becomes immediate: it goes at once, and so does
     * every later publish, in batches of at most 3. */
    jb_bus_set_window(bus, JB_BUS_WINDOW_IMMEDIATE, 3);
    run_until(&lb.loop, &r.events, 20);
    assert_int_equal(r.batches, 5);
    assert_int_equal(r.sizes[4], 1);
    assert_int_equal(jb_bus_publish(bus, evs, 2, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 22);
    assert_int_equal(r.batches, 6);
    assert_int_equal(r.sizes[5], 2);

    /* Back to the default size (0): 10 events again make one batch. */
    jb_bus_set_window(bus, JB_BUS_WINDOW_IMMEDIATE, 0);
    assert_int_equal(jb_bus_publish(bus, evs, 10, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 32);
    assert_int_equal(r.batches, 7);
    assert_int_equal(r.sizes[6], 10);
    log_bus_close(&lb);
}

/* Publishes @n events of @topic (type "t") and returns once they are durable. */
static void publish_durable(log_bus *lb, const char *topic, size_t n)
{
    jb_event evs[8];
    for (size_t i = 0; i < n; i++)
        evs[i] = (jb_event){.topic = topic, .type = "t"};
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(lb->bus, evs, n, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb->loop, &res.done, 1);
    assert_int_equal(res.status, JB_OK);
}

/*
 * Windows per pattern. The bus's own window is a minute, longer than
 * run_until's deadline, so a batch that arrives at all arrived because it was
 * full or because the window of one of its events closed.
 */
static void test_windows_per_pattern(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 0,
                 (jb_bus_options){.batch_window_ms = 60000, .max_batch_size = 1000});
    jb_bus_window w[] = {
        {.pattern = "fast.>", .batch_window_ms = JB_BUS_WINDOW_IMMEDIATE, .max_batch_size = 3},
        {.pattern = "fast.special", .batch_window_ms = 60000}, /* more specific than fast.> */
        {.pattern = "timed.*", .batch_window_ms = 20},
        {.pattern = "slow.>", .max_batch_size = 2}, /* the bus's window */
    };
    jb_error err;
    assert_int_equal(jb_bus_set_windows(lb.bus, w, 4, &err), JB_OK);
    received r = {.auto_ack = 1};
    subscribe(lb.bus, ">", "g", &r, 100);

    /* No window: at once, in batches of at most 3. */
    publish_durable(&lb, "fast.x", 5);
    run_until(&lb.loop, &r.events, 5);
    assert_int_equal(r.batches, 2);
    assert_int_equal(r.sizes[0], 3);
    assert_int_equal(r.sizes[1], 2);

    /* An event of the bus's window waits... */
    publish_durable(&lb, "other", 1);
    run_for(&lb.loop, 100);
    assert_int_equal(r.events, 5);
    /* ...until a batch it is in closes by another event's window. */
    publish_durable(&lb, "fast.y", 1);
    run_until(&lb.loop, &r.events, 7);
    assert_int_equal(r.batches, 3);
    assert_int_equal(r.sizes[2], 2);
    assert_string_equal(r.topics[5], "other");
    assert_string_equal(r.topics[6], "fast.y");

    /* The most specific pattern wins: fast.special keeps a minute-long window... */
    publish_durable(&lb, "fast.special", 1);
    run_for(&lb.loop, 100);
    assert_int_equal(r.events, 7);
    /* ...and goes with an event whose own 20 ms window closes. */
    publish_durable(&lb, "timed.a", 1);
    run_until(&lb.loop, &r.events, 9);
    assert_int_equal(r.batches, 4);
    assert_int_equal(r.sizes[3], 2);
    assert_string_equal(r.topics[8], "timed.a");

    /* A size of its own closes batches early under the bus's window. */
    publish_durable(&lb, "slow.x", 4);
    run_until(&lb.loop, &r.events, 13);
    assert_int_equal(r.batches, 6);
    assert_int_equal(r.sizes[4], 2);
    assert_int_equal(r.sizes[5], 2);

    /* A bad pattern changes nothing. */
    jb_bus_window bad = {.pattern = "a..b"};
    assert_int_equal(jb_bus_set_windows(lb.bus, &bad, 1, &err), JB_EINVAL);
    publish_durable(&lb, "fast.z", 1);
    run_until(&lb.loop, &r.events, 14);
    log_bus_close(&lb);
}

static jb_status subscribe_status(jb_bus *bus, const char *pattern, jb_error *err)
{
    static received r;
    jb_bus_sub_options so = {.pattern = pattern};
    jb_bus_sub *sub;
    jb_status st = jb_bus_subscribe(bus, &so, on_deliver, &r, &sub, err);
    if (st == JB_OK)
        jb_bus_unsubscribe(sub);
    return st;
}

static void test_topic_allow_list(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus *bus = test_bus(&loop);
    const char *topics[] = {"game_events", "training_updates.v1"};
    jb_error err;
    assert_int_equal(jb_bus_set_topics(bus, topics, 2, &err), JB_OK);
    publish_result res = {0};
    const char *ok[] = {"game_events", "game_events.hand_played", "training_updates.v1.a",
                        "dlq.game_events"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(publish_one(bus, ok[i], "t", NULL, &res), JB_OK);
    const char *refused[] = {"strategy_requests", "game_eventsx", "training_updates", "dlqx"};
    for (int i = 0; i < 4; i++) {
        jb_event ev = {.topic = refused[i], .type = "t"};
        assert_int_equal(jb_bus_publish(bus, &ev, 1, on_published, &res, NULL, &err), JB_EINVAL);
        char want[64];
        snprintf(want, sizeof(want), "unknown topic '%s'", refused[i]);
        assert_non_null(strstr(err.message, want));
    }
    /* All or none: one unknown topic refuses the whole request. */
    jb_event two[] = {{.topic = "game_events", .type = "t"}, {.topic = "nope", .type = "t"}};
    assert_int_equal(jb_bus_publish(bus, two, 2, on_published, &res, NULL, &err), JB_EINVAL);
    assert_non_null(strstr(err.message, "event 1: unknown topic 'nope'"));
    assert_int_equal(jb_bus_published_count(bus), 4);

    const char *can[] = {"game_events.>",        "*.hand_played",      ">",
                         "training_updates.*.x", "training_updates.>", "dlq.>"};
    for (int i = 0; i < 6; i++)
        assert_int_equal(subscribe_status(bus, can[i], &err), JB_OK);
    const char *cannot[] = {"strategy_requests.>", "training_updates", "game_eventsx.*"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(subscribe_status(bus, cannot[i], &err), JB_EINVAL);
        assert_non_null(strstr(err.message, "unknown topic"));
    }

    /* An empty list allows everything again. */
    assert_int_equal(jb_bus_set_topics(bus, NULL, 0, &err), JB_OK);
    assert_int_equal(publish_one(bus, "strategy_requests", "t", NULL, &res), JB_OK);
    assert_int_equal(subscribe_status(bus, "strategy_requests.>", &err), JB_OK);
    run_until(&loop, &res.done, 5);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Loads @yaml from a file in @dir as a configuration snapshot. */
static jb_config *load_config_text(const char *dir, const char *yaml)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/infrastructure.yaml", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(yaml, fp);
    assert_int_equal(fclose(fp), 0);
    jb_config_options o = {.path = path};
    jb_config *cfg = NULL;
    jb_error err;
    if (jb_config_load(&o, &cfg, NULL, &err) != JB_OK)
        fail_msg("config: %s", err.message);
    return cfg;
}

static void apply_yaml(log_bus *lb, const char *yaml)
{
    jb_config *cfg = load_config_text(lb->dir, yaml);
    jb_error err;
    if (jb_bus_apply_config(lb->bus, cfg, &err) != JB_OK)
        fail_msg("apply: %s", err.message);
    jb_config_unref(cfg);
}

static void publish_states(log_bus *lb, const char *topic)
{
    jb_header g1[] = {{"game_id", "g1"}}, g2[] = {{"game_id", "g2"}};
    const char *type = "jimbot.GameStateUpdate";
    jb_event evs[] = {
        {.topic = topic, .type = type, .headers = g1, .n_headers = 1},
        {.topic = topic, .type = type, .headers = g2, .n_headers = 1},
        {.topic = topic, .type = type, .headers = g1, .n_headers = 1},
        {.topic = topic, .type = "jimbot.Other"},
    };
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(lb->bus, evs, 4, on_published, &res, NULL, NULL), JB_OK);
}

/* What jimbotd does at start and on a reload: the bus follows a snapshot. */
static void test_rules_from_config_snapshot(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 1, (jb_bus_options){.batch_window_ms = 100});
    apply_yaml(&lb, "event_bus:\n"
                    "  batch_window_ms: 60000\n"
                    "  topics: [game_events]\n"
                    "  aggregation:\n"
                    "    jimbot.GameStateUpdate: {rule: last, key: game_id}\n"
                    "  windows:\n"
                    "    'game_events.>': {batch_window_ms: 0}\n");
    received r = {.auto_ack = 1};
    subscribe(lb.bus, ">", "g", &r, 100);
    publish_states(&lb, "game_events.state");
    run_until(&lb.loop, &r.events, 3);
    /* One batch at once (no window for game_events.>): the newest per game, and the other. */
    assert_int_equal(r.batches, 1);
    assert_int_equal(r.events, 3);
    assert_int_equal(r.seqs[0], 2);
    assert_int_equal(r.seqs[1], 3);
    assert_int_equal(r.seqs[2], 4);
    jb_event other = {.topic = "elsewhere", .type = "t"};
    jb_error err;
    assert_int_equal(jb_bus_publish(lb.bus, &other, 1, on_published, NULL, NULL, &err), JB_EINVAL);
    assert_non_null(strstr(err.message, "unknown topic 'elsewhere'"));

    /* The reload: count instead of last, every topic, no window at all. */
    apply_yaml(&lb, "event_bus:\n"
                    "  batch_window_ms: 0\n"
                    "  topics: []\n"
                    "  aggregation:\n"
                    "    jimbot.GameStateUpdate: {rule: count}\n");
    publish_states(&lb, "elsewhere");
    run_until(&lb.loop, &r.events, 5);
    assert_int_equal(r.batches, 2);
    assert_int_equal(r.seqs[3], 7); /* the summary is the newest of the three */
    assert_int_equal(r.seqs[4], 8);
    jb_bus_stats st;
    jb_bus_get_stats(lb.bus, &st);
    assert_int_equal(st.aggregated_out, 3);
    log_bus_close(&lb);
}

static void test_flush_window_delivers_at_once(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 1,
                 (jb_bus_options){.batch_window_ms = 60000, .max_batch_size = 10});
    received r = {.auto_ack = 1};
    subscribe(lb.bus, ">", "g", &r, 100);
    jb_event evs[2] = {{.topic = "game_events", .type = "t"},
                       {.topic = "game_events", .type = "t"}};
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(lb.bus, evs, 2, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &res.done, 1); /* durable, waiting for the minute-long window */
    run_for(&lb.loop, 100);
    assert_int_equal(r.events, 0);
    /* A drain flushes it: delivered before the call returns. */
    jb_bus_flush_window(lb.bus);
    assert_int_equal(r.events, 2);
    assert_int_equal(r.batches, 1);
    log_bus_close(&lb);
}

/* A drain's flush closes the windows per pattern too, not only the bus's own. */
static void test_flush_window_closes_pattern_windows(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 0,
                 (jb_bus_options){.batch_window_ms = 60000, .max_batch_size = 10});
    jb_bus_window w = {.pattern = "slow.>", .batch_window_ms = 60000};
    assert_int_equal(jb_bus_set_windows(lb.bus, &w, 1, NULL), JB_OK);
    received r = {.auto_ack = 1};
    subscribe(lb.bus, ">", "g", &r, 100);
    publish_durable(&lb, "slow.x", 2);
    run_for(&lb.loop, 100);
    assert_int_equal(r.events, 0);
    jb_bus_flush_window(lb.bus);
    assert_int_equal(r.events, 2);
    log_bus_close(&lb);
}

/*
 * An event whose window allows a batch of 3 does not join a batch already
 * larger than that: the batch holds at most the smallest size of its events.
 */
static void test_batch_never_exceeds_an_events_size(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 0,
                 (jb_bus_options){.batch_window_ms = 60000, .max_batch_size = 1000});
    jb_bus_window w = {
        .pattern = "small.>", .batch_window_ms = JB_BUS_WINDOW_IMMEDIATE, .max_batch_size = 3};
    assert_int_equal(jb_bus_set_windows(lb.bus, &w, 1, NULL), JB_OK);
    received r = {.auto_ack = 1};
    subscribe(lb.bus, ">", "g", &r, 100);
    publish_durable(&lb, "big.x", 5);
    publish_durable(&lb, "small.x", 1);
    run_for(&lb.loop, 100);
    assert_int_equal(r.events, 0); /* the five wait for their minute; small cannot join them */
    jb_bus_flush_window(lb.bus);
    assert_int_equal(r.events, 6);
    assert_int_equal(r.batches, 2);
    assert_int_equal(r.sizes[0], 5);
    assert_int_equal(r.sizes[1], 1);
    log_bus_close(&lb);
}

/* A dead letter carries its original's headers plus five of the bus's: never refused for them. */
static void test_dead_letter_of_an_event_at_the_header_limit(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .max_headers = 2};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received bad = {.nack = 1}, dlq = {.auto_ack = 1};
    subscribe(bus, "strategy_requests", "advisor", &bad, 0);
    subscribe(bus, "dlq.>", "dlq-watch", &dlq, 0);
    jb_header h[2] = {{"a", "1"}, {"b", "2"}};
    jb_event ev = {.topic = "strategy_requests", .type = "req", .headers = h, .n_headers = 2};
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(bus, &ev, 1, on_published, &res, NULL, NULL), JB_OK);
    run_until(&loop, &dlq.events, 1);
    assert_string_equal(dlq.topics[0], "dlq.strategy_requests");
    assert_non_null(strstr(dlq.last_headers, "a=1;b=2;"));
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void count_odd_only(const jb_event *const *events, size_t n, uint8_t *keep, void *ud)
{
    (*(int *)ud)++;
    for (size_t i = 0; i < n; i++)
        keep[i] = events[i]->sequence % 2 == 1;
}

static void test_aggregation_rules(void **state)
{
    (void)state;
    int custom_calls = 0;
    jb_aggregate_rule rules[] = {
        {.type = "state", .kind = JB_AGGREGATE_LAST, .key_header = "game_id"},
        {.type = "tick", .kind = JB_AGGREGATE_COUNT},
        {.type = "odd",
         .kind = JB_AGGREGATE_CUSTOM,
         .fn = count_odd_only,
         .userdata = &custom_calls},
    };
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 0,
                 (jb_bus_options){.batch_window_ms = 100, .rules = rules, .n_rules = 3});
    jb_bus *bus = lb.bus;
    received r = {.auto_ack = 1};
    subscribe(bus, ">", "g", &r, 0);
    jb_header g1[] = {{"game_id", "g1"}}, g2[] = {{"game_id", "g2"}};
    jb_event evs[] = {
        {.topic = "a", .type = "state", .headers = g1, .n_headers = 1}, /* 1: superseded */
        {.topic = "a", .type = "state", .headers = g2, .n_headers = 1}, /* 2: kept */
        {.topic = "a", .type = "tick"},                                 /* 3 */
        {.topic = "a", .type = "state", .headers = g1, .n_headers = 1}, /* 4: kept */
        {.topic = "a", .type = "tick"},                                 /* 5 */
        {.topic = "a", .type = "tick"},                                 /* 6: the summary */
        {.topic = "a", .type = "odd"},                                  /* 7: kept */
        {.topic = "a", .type = "odd"},                                  /* 8: dropped */
        {.topic = "a", .type = "other"},                                /* 9: kept */
    };
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(bus, evs, 9, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 5);
    run_for(&lb.loop, 250);
    assert_int_equal(r.events, 5);
    uint64_t want[] = {2, 4, 6, 7, 9};
    for (int i = 0; i < 5; i++)
        assert_int_equal(r.seqs[i], want[i]);
    assert_int_equal(custom_calls, 1);
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_int_equal(st.aggregated_out, 4);
    /* Everything is handled: aggregated-out events count as done. */
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "g", &gi), JB_OK);
    assert_int_equal(gi.pending, 0);
    assert_int_equal(gi.ack_floor, 10);
    log_bus_close(&lb);
}

static void test_count_summary_headers(void **state)
{
    (void)state;
    jb_aggregate_rule rule = {.type = "tick", .kind = JB_AGGREGATE_COUNT};
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){0}, 0,
                 (jb_bus_options){.batch_window_ms = 100, .rules = &rule, .n_rules = 1});
    jb_bus *bus = lb.bus;
    received r = {.auto_ack = 1};
    subscribe(bus, ">", "g", &r, 0);
    jb_header h[] = {{"game_id", "g7"}};
    jb_event evs[3];
    for (int i = 0; i < 3; i++)
        evs[i] = (jb_event){.topic = "a", .type = "tick", .headers = h, .n_headers = 1};
    publish_result res = {0};
    assert_int_equal(jb_bus_publish(bus, evs, 3, on_published, &res, NULL, NULL), JB_OK);
    run_until(&lb.loop, &r.events, 1);
    assert_string_equal(r.last_headers, "game_id=g7;jimbot-aggregate=count;jimbot-count=3;");
    log_bus_close(&lb);
}

static void test_nacked_five_times_goes_to_dead_letters(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus *bus = test_bus(&loop);
    received bad = {.nack = 1}, dlq = {.auto_ack = 1};
    subscribe(bus, "strategy_requests", "advisor", &bad, 0);
    subscribe(bus, "dlq.>", "dlq-watch", &dlq, 0);
    publish_result res = {0};
    assert_int_equal(publish_one(bus, "strategy_requests", "req", "r-1", &res), JB_OK);
    run_until(&loop, &dlq.events, 1);
    assert_int_equal(bad.events, 5); /* delivered max_deliver times, each nacked */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(bad.seqs[i], 1);
        assert_int_equal(bad.attempts[i], (uint32_t)i + 1);
    }
    assert_string_equal(dlq.topics[0], "dlq.strategy_requests");
    assert_non_null(strstr(dlq.last_headers, "jimbot-dlq-reason=nacked after 5 deliveries;"));
    assert_non_null(strstr(dlq.last_headers, "jimbot-dlq-group=advisor;"));
    assert_non_null(strstr(dlq.last_headers, "jimbot-dlq-sequence=1;"));
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "advisor", &gi), JB_OK);
    run_for(&loop, 50);
    assert_int_equal(jb_bus_group_info_get(bus, "advisor", &gi), JB_OK);
    assert_int_equal(gi.pending, 0);
    assert_int_equal(gi.ack_floor, 3); /* 1 dead-lettered, 2 is the copy (not matched) */
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_int_equal(st.dead_lettered, 1);
    assert_int_equal(bad.events, 5);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_ack_deadline_redelivers(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .nack_backoff_ms = 1};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received r = {0}; /* never acks */
    jb_bus_sub_options so = {.pattern = "a", .group = "g", .ack_wait_ms = 30};
    jb_bus_sub *sub;
    r.bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r, &sub, NULL), JB_OK);
    publish_result res = {0};
    publish_one(bus, "a", "t", NULL, &res);
    run_until(&loop, &r.events, 2);
    assert_int_equal(r.seqs[1], 1);
    assert_int_equal(r.attempts[1], 2);
    /* A late ack of the first delivery is still honoured. */
    uint64_t seq = 1;
    size_t unknown = 9;
    assert_int_equal(jb_bus_ack(bus, "g", &seq, 1, NULL, &unknown, NULL), JB_OK);
    assert_int_equal(unknown, 0);
    assert_int_equal(jb_bus_ack(bus, "g", &seq, 1, NULL, &unknown, NULL), JB_OK);
    assert_int_equal(unknown, 1);
    assert_int_equal(jb_bus_ack(bus, "nope", &seq, 1, NULL, &unknown, NULL), JB_ENOENT);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* The wall clock seen by the bus: the system's plus a step the test sets. */
static int64_t stepped_wall(void *userdata)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + *(int64_t *)userdata;
}

static jb_bus_sub *subscribe_wait(jb_bus *bus, const char *pattern, const char *group,
                                  uint32_t ack_wait_ms, received *r)
{
    jb_bus_sub_options so = {.pattern = pattern, .group = group, .ack_wait_ms = ack_wait_ms};
    jb_bus_sub *sub;
    r->bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, r, &sub, NULL), JB_OK);
    r->sub = sub;
    return sub;
}

/*
 * Ack deadlines run on the monotonic clock: a step of the wall clock by an
 * hour forward redelivers nothing early (which would burn max_deliver), and
 * a step back an hour does not freeze redelivery.
 */
static void test_wall_clock_steps_move_no_deadline(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int64_t step = 0;
    jb_bus_options o = {.test_mode = 1,
                        .nack_backoff_ms = 1,
                        .wall_clock_ms = stepped_wall,
                        .clock_userdata = &step};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received patient = {0}, quick = {0}; /* neither acks */
    subscribe_wait(bus, "a", "patient", 600000, &patient);
    publish_result res = {0};
    for (int i = 0; i < 10; i++)
        publish_one(bus, "a", "t", NULL, &res);
    run_until(&loop, &patient.events, 10);
    step = 3600 * 1000; /* +1 hour: the 10-minute deadlines are still far away */
    run_for(&loop, 500);
    assert_int_equal(patient.events, 10);

    subscribe_wait(bus, "b", "quick", 100, &quick);
    publish_one(bus, "b", "t", NULL, &res);
    run_until(&loop, &quick.events, 1);
    step = -3600 * 1000; /* -1 hour from the start: the 100 ms deadline still passes */
    run_until(&loop, &quick.events, 2);
    assert_int_equal(quick.attempts[1], 2);
    assert_int_equal(patient.events, 10);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_unsubscribe_returns_in_flight_to_group(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus *bus = test_bus(&loop);
    received a = {0}, b = {.auto_ack = 1};
    jb_bus_sub *sa = subscribe(bus, "a", "g", &a, 100);
    publish_result res = {0};
    for (int i = 0; i < 4; i++)
        publish_one(bus, "a", "t", NULL, &res);
    run_until(&loop, &a.events, 4);
    subscribe(bus, "a", "g", &b, 100);
    jb_bus_unsubscribe(sa);
    run_until(&loop, &b.events, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(b.attempts[i], 2);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_duplicate_ids_stored_once(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus *bus = test_bus(&loop);
    received r = {.auto_ack = 1};
    subscribe(bus, "a", "g", &r, 0);
    publish_result r1 = {0}, r2 = {0};
    jb_event evs[3] = {
        {.topic = "a", .id = "id-1"},
        {.topic = "a", .id = "id-2"},
        {.topic = "a", .id = "id-1"}, /* a repeat inside the request */
    };
    assert_int_equal(jb_bus_publish(bus, evs, 3, on_published, &r1, NULL, NULL), JB_OK);
    assert_int_equal(jb_bus_publish(bus, evs, 2, on_published, &r2, NULL, NULL), JB_OK);
    size_t done = 0;
    while (r1.done + r2.done < 2 && uv_run(&loop, UV_RUN_ONCE))
        done++;
    assert_int_equal(r1.seqs[0], 1);
    assert_int_equal(r1.seqs[1], 2);
    assert_int_equal(r1.seqs[2], 1);
    assert_int_equal(r1.dups[2], 1);
    assert_int_equal(r2.seqs[0], 1);
    assert_int_equal(r2.seqs[1], 2);
    assert_true(r2.dups[0] && r2.dups[1]);
    run_until(&loop, &r.events, 2);
    run_for(&loop, 30);
    assert_int_equal(r.events, 2);
    assert_int_equal(jb_bus_published_count(bus), 2);
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_int_equal(st.published, 2);
    assert_int_equal(st.duplicates, 3);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_dedup_can_be_turned_off(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .dedup_window_ms = JB_BUS_DEDUP_OFF};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    publish_result r1 = {0}, r2 = {0};
    assert_int_equal(publish_one(bus, "a", "t", "same-id", &r1), JB_OK);
    assert_int_equal(publish_one(bus, "a", "t", "same-id", &r2), JB_OK);
    size_t turns = 0;
    while (r1.done + r2.done < 2 && uv_run(&loop, UV_RUN_ONCE))
        turns++;
    assert_int_equal(r1.seqs[0], 1);
    assert_int_equal(r2.seqs[0], 2);
    assert_int_equal(r2.dups[0], 0);
    assert_int_equal(jb_bus_published_count(bus), 2);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_bad_input_changes_nothing(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .max_event_bytes = 200};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    jb_error err;
    char big[300];
    memset(big, 'x', sizeof(big));
    jb_event evs[2] = {{.topic = "ok"}, {.topic = "ok", .payload = big, .payload_len = 300}};
    assert_int_equal(jb_bus_publish(bus, evs, 2, on_published, NULL, NULL, &err), JB_ETOOBIG);
    assert_non_null(strstr(err.message, "event 1"));
    evs[1] = (jb_event){.topic = "bad..topic"};
    assert_int_equal(jb_bus_publish(bus, evs, 2, on_published, NULL, NULL, &err), JB_EINVAL);
    assert_non_null(strstr(err.message, "empty token"));
    jb_header empty_key = {"", "v"};
    evs[1] = (jb_event){.topic = "ok", .headers = &empty_key, .n_headers = 1};
    assert_int_equal(jb_bus_publish(bus, evs, 2, on_published, NULL, NULL, &err), JB_EINVAL);
    assert_int_equal(jb_bus_publish(bus, evs, 0, on_published, NULL, NULL, &err), JB_EINVAL);
    assert_int_equal(jb_bus_published_count(bus), 0);

    received r = {0};
    jb_bus_sub_options so = {.pattern = "a.*", .group = "g"};
    jb_bus_sub *sub;
    r.bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r, &sub, &err), JB_OK);
    so.pattern = "b";
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r, &sub, &err), JB_EINVAL);
    assert_non_null(strstr(err.message, "already exists with pattern 'a.*'"));
    so.pattern = "a.>.b";
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r, &sub, &err), JB_EINVAL);
    so = (jb_bus_sub_options){.pattern = "a", .group = "bad name"};
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r, &sub, &err), JB_EINVAL);
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_int_equal(st.groups, 1);
    assert_int_equal(st.last_sequence, 0);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_full_group_backpressures_publishers(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .max_group_pending = 3};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received r = {0}; /* holds everything, acks nothing */
    subscribe(bus, "a", "slow", &r, 0);
    publish_result res = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(publish_one(bus, "a", "t", NULL, &res), JB_OK);
    jb_error err;
    uint32_t retry = 0;
    jb_event ev = {.topic = "a"};
    assert_int_equal(jb_bus_publish(bus, &ev, 1, on_published, &res, &retry, &err),
                     JB_EBACKPRESSURE);
    assert_true(retry > 0);
    assert_non_null(strstr(err.message, "group 'slow'"));
    /* Topics the full group does not match are not held back. */
    ev.topic = "b";
    assert_int_equal(jb_bus_publish(bus, &ev, 1, on_published, &res, NULL, &err), JB_OK);
    run_until(&loop, &r.events, 3);
    uint64_t seqs[] = {1, 2};
    assert_int_equal(jb_bus_ack(bus, "slow", seqs, 2, NULL, NULL, NULL), JB_OK);
    ev.topic = "a";
    assert_int_equal(jb_bus_publish(bus, &ev, 1, on_published, &res, NULL, &err), JB_OK);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Publishes @n events on "game_events.tick" through @bus and waits for durability. */
static void publish_many(uv_loop_t *loop, jb_bus *bus, size_t n)
{
    static publish_result res;
    jb_event evs[1000];
    static char payload[100];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (char)('a' + i % 26);
    for (int i = 0; i < 1000; i++)
        evs[i] = (jb_event){.topic = "game_events.tick",
                            .type = "t",
                            .payload = payload,
                            .payload_len = sizeof(payload),
                            .timestamp_ms = 1};
    size_t sent = 0;
    res.done = 0;
    size_t batches = 0;
    while (sent < n) {
        size_t k = n - sent < 1000 ? n - sent : 1000;
        jb_status st = jb_bus_publish(bus, evs, k, on_published, &res, NULL, NULL);
        if (st == JB_EBACKPRESSURE) {
            uv_run(loop, UV_RUN_ONCE);
            continue;
        }
        assert_int_equal(st, JB_OK);
        sent += k;
        batches++;
        if (batches % 64 == 0)
            uv_run(loop, UV_RUN_NOWAIT);
    }
    size_t done = 0;
    while ((size_t)res.done < batches) {
        uv_run(loop, UV_RUN_ONCE);
        done++;
    }
    assert_int_equal(res.status, JB_OK);
}

static void test_restart_keeps_positions_and_acks(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char state_path[256];
    snprintf(state_path, sizeof(state_path), "%s/groups.state", dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_store_options so = {.dir = dir};
    jb_store *store;
    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    jb_bus_options o = {
        .store = store, .state_path = state_path, .batch_window_ms = JB_BUS_WINDOW_IMMEDIATE};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received r = {0};
    subscribe(bus, "game_events.>", "trainer", &r, 0);
    publish_many(&loop, bus, 10);
    run_until(&loop, &r.events, 10);
    /* Ack 1-4 and 7: a restart must redeliver 5, 6, 8, 9, 10 only. */
    uint64_t acks[] = {1, 2, 3, 4, 7};
    assert_int_equal(jb_bus_ack(bus, "trainer", acks, 5, NULL, NULL, NULL), JB_OK);
    close_bus(&loop, bus);
    close_store(&loop, store);

    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    o.store = store;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received again = {.auto_ack = 1};
    subscribe(bus, "game_events.>", "trainer", &again, 0);
    run_until(&loop, &again.events, 5);
    run_for(&loop, 50);
    uint64_t want[] = {5, 6, 8, 9, 10};
    assert_int_equal(again.events, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(again.seqs[i], want[i]);
    /* Read back from the log: the payload is intact. */
    assert_int_equal(again.last_payload_len, 100);
    for (size_t i = 0; i < 100; i++)
        assert_int_equal(again.last_payload[i], 'a' + i % 26);
    /* A new group can start from the whole log or from a sequence. */
    received all = {.auto_ack = 1}, from = {.auto_ack = 1};
    jb_bus_sub_options all_opts = {
        .pattern = ">", .group = "replay", .deliver_policy = JB_DELIVER_ALL};
    jb_bus_sub_options from_opts = {.pattern = ">",
                                    .group = "tail",
                                    .deliver_policy = JB_DELIVER_FROM_SEQUENCE,
                                    .start_sequence = 9};
    jb_bus_sub *s;
    all.bus = from.bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &all_opts, on_deliver, &all, &s, NULL), JB_OK);
    assert_int_equal(jb_bus_subscribe(bus, &from_opts, on_deliver, &from, &s, NULL), JB_OK);
    run_until(&loop, &all.events, 10);
    run_until(&loop, &from.events, 2);
    assert_int_equal(from.seqs[0], 9);
    close_bus(&loop, bus);
    close_store(&loop, store);
    assert_int_equal(uv_loop_close(&loop), 0);
    rm_tree(dir);
}

/* The slow consumer's pace: every tick it acks what it received since the last. */
static void ack_what_is_held(uv_timer_t *t)
{
    received *r = t->data;
    static size_t acked;
    if (acked > r->events)
        acked = 0; /* a new test */
    for (; acked < r->events && acked < 4096; acked++)
        jb_bus_ack(r->bus, "slow", &r->seqs[acked], 1, NULL, NULL, NULL);
    if (acked >= 4096) {
        /* Past the record buffer: ack the newest window generously. */
        jb_bus_group_info gi;
        if (jb_bus_group_info_get(r->bus, "slow", &gi) == JB_OK) {
            uint64_t seqs[8];
            for (int i = 0; i < 8; i++)
                seqs[i] = gi.ack_floor + (uint64_t)i;
            jb_bus_ack(r->bus, "slow", seqs, 8, NULL, NULL, NULL);
        }
    }
}

/*
 * Retention by size never removes what a group still needs: the bus tells
 * the log each group's floor, and segments below the lowest floor only go
 * once the group has acked past them.
 */
static void test_retention_waits_for_the_slowest_group(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb,
                 (jb_store_options){.fsync = JB_STORE_FSYNC_NONE,
                                    .segment_bytes = 64 * 1024,
                                    .retention_max_bytes = 128 * 1024},
                 1, (jb_bus_options){.batch_window_ms = JB_BUS_WINDOW_IMMEDIATE});
    jb_bus *bus = lb.bus;
    jb_store *store = lb.store;
    received slow = {0}; /* holds its first events, acks nothing */
    subscribe(bus, "game_events.>", "slow", &slow, 10);
    publish_many(&lb.loop, bus, 5000); /* ~1 MiB: far over the 128 KiB budget */
    run_until(&lb.loop, &slow.events, 10);
    run_for(&lb.loop, 250);          /* housekeeping ticks pass the floor to the log */
    publish_many(&lb.loop, bus, 10); /* a write: the log applies retention after each */
    run_for(&lb.loop, 50);
    jb_store_stats st;
    jb_store_get_stats(store, &st);
    assert_int_equal(jb_store_first_seq(store), 1); /* sequence 1 is still needed */
    assert_true(st.segments > 2);

    /* Once the group has handled everything, retention catches up. */
    jb_bus_sub_options all = {.pattern = "game_events.>", .group = "slow", .max_in_flight = 5000};
    received rest = {.auto_ack = 1};
    jb_bus_sub *s2;
    rest.bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &all, on_deliver, &rest, &s2, NULL), JB_OK);
    jb_bus_unsubscribe(slow.sub); /* its 10 go back to the group */
    run_until(&lb.loop, &rest.events, 5000);
    run_for(&lb.loop, 250);
    publish_many(&lb.loop, bus, 10); /* a write after the floor moved runs retention */
    run_for(&lb.loop, 250);
    jb_store_get_stats(store, &st);
    assert_true(jb_store_first_seq(store) > 1);
    assert_true(st.deleted > 0);
    log_bus_close(&lb);
}

static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/*
 * A slow consumer (a handful of credits, acking one batch per timer tick)
 * beside a fast group while 1,000,000 events flow: the slow one never holds
 * more than its credits, and the engine's memory stays bounded.
 */
static void test_slow_consumer_bounded_memory(void **state)
{
    (void)state;
    log_bus lb;
    log_bus_open(&lb, (jb_store_options){.fsync = JB_STORE_FSYNC_NONE}, 1,
                 (jb_bus_options){.batch_window_ms = JB_BUS_WINDOW_IMMEDIATE,
                                  .max_group_pending = 2000000,
                                  .cache_bytes = 8u << 20});
    jb_bus *bus = lb.bus;
    received fast = {.auto_ack = 1}, slow = {0};
    subscribe(bus, "game_events.>", "fast", &fast, 5000);
    subscribe(bus, "game_events.>", "slow", &slow, 8);
    uv_timer_t slow_acker;
    uv_timer_init(&lb.loop, &slow_acker);
    slow_acker.data = &slow;
    uv_timer_start(&slow_acker, ack_what_is_held, 5, 5);

    publish_many(&lb.loop, bus, 100000); /* warm up allocators and the cache */
    run_until(&lb.loop, &fast.events, 100000);
    long rss_before = max_rss_kb();
    publish_many(&lb.loop, bus, 900000);
    run_until(&lb.loop, &fast.events, 1000000);
    long rss_after = max_rss_kb();

    assert_true(slow.max_in_flight_seen <= 8);
    assert_true(slow.events < 1000000);
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "slow", &gi), JB_OK);
    assert_true(gi.outstanding <= 16384);
    assert_true(gi.in_flight <= 8);
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_true(st.cached_bytes <= (8u << 20));
    /* 900,000 more events through the bus grew the peak by less than 64 MiB
     * (they alone are ~200 MiB encoded). */
    print_message("peak RSS %ld KiB -> %ld KiB; slow group got %zu events\n", rss_before, rss_after,
                  slow.events);
#ifndef __SANITIZE_ADDRESS__
    /* (AddressSanitizer's quarantine keeps freed memory: no RSS bound there.) */
    assert_true(rss_after - rss_before < 64 * 1024);
#endif
    uv_close((uv_handle_t *)&slow_acker, NULL);
    log_bus_close(&lb);
}

/* Runs @loop until @group no longer exists (with a generous deadline). */
static void run_until_gone(uv_loop_t *loop, jb_bus *bus, const char *group)
{
    int expired = 0;
    uv_timer_t deadline;
    uv_timer_init(loop, &deadline);
    deadline.data = &expired;
    uv_timer_start(&deadline, on_deadline, 20000, 0);
    jb_bus_group_info gi;
    while (jb_bus_group_info_get(bus, group, &gi) == JB_OK && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (expired)
        fail_msg("timed out waiting for group '%s' to go", group);
}

/*
 * Pending events cost a group nothing: 5,000 groups without members and
 * 8,000 events matching all of them take no ring entry (before, each group
 * held a 40-byte entry and a reference per event: 1.6 GB), and a member
 * that joins later still gets every event, read at its cursor.
 */
static void test_groups_cost_nothing_per_pending_event(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    long rss_before = max_rss_kb();
    enum { GROUPS = 5000, EVENTS = 8000, PER_PUBLISH = 100 };
    for (int i = 0; i < GROUPS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "g%d", i);
        received r = {0};
        jb_bus_unsubscribe(subscribe(bus, "game_events.>", name, &r, 0));
    }
    publish_result res = {0};
    jb_event evs[PER_PUBLISH];
    for (int i = 0; i < PER_PUBLISH; i++)
        evs[i] =
            (jb_event){.topic = "game_events.hand", .type = "t", .payload = "x", .payload_len = 1};
    for (size_t i = 0; i < EVENTS / PER_PUBLISH; i++)
        assert_int_equal(jb_bus_publish(bus, evs, PER_PUBLISH, on_published, &res, NULL, NULL),
                         JB_OK);
    run_until(&loop, &res.done, EVENTS / PER_PUBLISH);
    run_for(&loop, 250); /* housekeeping rounds pass over every group */
    long rss_after = max_rss_kb();
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "g4999", &gi), JB_OK);
    assert_int_equal(gi.pending, EVENTS);
    assert_int_equal(gi.outstanding, 0);
    assert_int_equal(gi.lag, EVENTS);
    print_message("5,000 groups, 8,000 events: peak RSS %ld KiB -> %ld KiB\n", rss_before,
                  rss_after);
#ifndef __SANITIZE_ADDRESS__
    assert_true(rss_after - rss_before < 64 * 1024);
#endif
    received late = {.auto_ack = 1};
    subscribe(bus, "game_events.>", "g17", &late, 0);
    run_until(&loop, &late.events, EVENTS);
    assert_int_equal(late.seqs[0], 1);
    assert_int_equal(jb_bus_group_info_get(bus, "g17", &gi), JB_OK);
    assert_int_equal(gi.pending, 0);
    assert_int_equal(gi.lag, 0);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Per loop turn (after its poll for I/O): the most events delivered in one turn. */
typedef struct turn_meter {
    const received *r;
    size_t n_r;
    size_t last_total, max_per_turn;
} turn_meter;

static void count_turn(uv_check_t *h)
{
    turn_meter *m = h->data;
    size_t total = 0;
    for (size_t i = 0; i < m->n_r; i++)
        total += m->r[i].events;
    if (total - m->last_total > m->max_per_turn)
        m->max_per_turn = total - m->last_total;
    m->last_total = total;
}

/*
 * Groups behind the cache share their reads of the log: after a restart
 * (an empty cache), 100 groups catching up on 5,000 events read the log in
 * a handful of bulk reads, not once per group (nor once per event), and in
 * slices: the loop polls for I/O between them.
 */
static void test_lagging_groups_share_log_reads(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char state_path[256];
    snprintf(state_path, sizeof(state_path), "%s/groups.state", dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_store_options so = {.dir = dir, .fsync = JB_STORE_FSYNC_NONE};
    jb_store *store;
    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    jb_bus_options o = {
        .store = store, .state_path = state_path, .batch_window_ms = JB_BUS_WINDOW_IMMEDIATE};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    enum { GROUPS = 100, EVENTS = 5000 };
    static received r[GROUPS];
    memset(r, 0, sizeof(r));
    char names[GROUPS][16];
    for (int i = 0; i < GROUPS; i++) {
        snprintf(names[i], sizeof(names[i]), "lag%d", i);
        jb_bus_unsubscribe(subscribe(bus, "game_events.>", names[i], &r[i], 0));
    }
    publish_many(&loop, bus, EVENTS);
    close_bus(&loop, bus);
    close_store(&loop, store);

    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    o.store = store;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    turn_meter meter = {.r = r, .n_r = GROUPS};
    uv_check_t counter;
    uv_check_init(&loop, &counter);
    counter.data = &meter;
    uv_check_start(&counter, count_turn);
    for (int i = 0; i < GROUPS; i++) {
        r[i] = (received){.auto_ack = 1};
        subscribe(bus, "game_events.>", names[i], &r[i], EVENTS);
    }
    for (int i = 0; i < GROUPS; i++)
        run_until(&loop, &r[i].events, EVENTS);
    uv_close((uv_handle_t *)&counter, NULL);
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    print_message("%d groups caught up on %d events in %llu reads of the log, at most %zu "
                  "deliveries per loop turn\n",
                  GROUPS, EVENTS, (unsigned long long)st.log_reads, meter.max_per_turn);
    assert_true(st.log_reads <= 2 * (EVENTS / 1024 + 1));
    /* 500,000 records to examine, 65,536 a round (a turn may run a round from
     * each of the housekeeping timer, the kick and flushes): the loop polls
     * for I/O in between, instead of doing it all in one turn. */
    assert_true(meter.max_per_turn <= 4 * 65536);
    close_bus(&loop, bus);
    close_store(&loop, store);
    assert_int_equal(uv_loop_close(&loop), 0);
    rm_tree(dir);
}

/* Runs @loop until @group's pending count reaches @want (with a generous deadline). */
static void run_until_pending(uv_loop_t *loop, jb_bus *bus, const char *group, uint64_t want)
{
    int expired = 0;
    uv_timer_t deadline;
    uv_timer_init(loop, &deadline);
    deadline.data = &expired;
    uv_timer_start(&deadline, on_deadline, 20000, 0);
    jb_bus_group_info gi = {0};
    while (jb_bus_group_info_get(bus, group, &gi) == JB_OK && gi.pending < want && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (gi.pending < want)
        fail_msg("group '%s' pending %llu, wanted %llu", group, (unsigned long long)gi.pending,
                 (unsigned long long)want);
}

/*
 * After a restart a saved group's backlog is counted into its pending by
 * one pass over the log in slices, members or not, without counting an
 * event twice when the group reads it too.
 */
static void test_backlog_counted_after_restart(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char state_path[256];
    snprintf(state_path, sizeof(state_path), "%s/groups.state", dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_store_options so = {.dir = dir, .fsync = JB_STORE_FSYNC_NONE};
    jb_store *store;
    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    jb_bus_options o = {
        .store = store, .state_path = state_path, .batch_window_ms = JB_BUS_WINDOW_IMMEDIATE};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received r = {0};
    jb_bus_sub *sub = subscribe(bus, "game_events.>", "counted", &r, 0);
    received idle = {0};
    jb_bus_unsubscribe(subscribe(bus, "game_events.>", "idle", &idle, 0));
    publish_many(&loop, bus, 100);
    run_until(&loop, &r.events, 100);
    uint64_t acks[30];
    for (int i = 0; i < 30; i++)
        acks[i] = i < 20 ? (uint64_t)i + 1 : (uint64_t)i + 30; /* 1-20 and 50-59 */
    assert_int_equal(jb_bus_ack(bus, "counted", acks, 30, NULL, NULL, NULL), JB_OK);
    jb_bus_unsubscribe(sub);
    close_bus(&loop, bus);
    close_store(&loop, store);

    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    o.store = store;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    run_until_pending(&loop, bus, "counted", 70);
    run_until_pending(&loop, bus, "idle", 100);
    received again = {.auto_ack = 1};
    subscribe(bus, "game_events.>", "counted", &again, 0);
    run_until(&loop, &again.events, 70);
    run_for(&loop, 100);
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "counted", &gi), JB_OK);
    assert_int_equal(gi.pending, 0);
    assert_int_equal(again.events, 70);
    assert_int_equal(jb_bus_group_info_get(bus, "idle", &gi), JB_OK);
    assert_int_equal(gi.pending, 100);
    close_bus(&loop, bus);
    close_store(&loop, store);
    assert_int_equal(uv_loop_close(&loop), 0);
    rm_tree(dir);
}

/* A named group with no member for group_idle_expiry_ms is deleted and counted. */
static void test_idle_group_expires(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .group_idle_expiry_ms = 300};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received gone = {0}, kept = {0};
    jb_bus_unsubscribe(subscribe(bus, "a", "gone", &gone, 0));
    subscribe(bus, "a", "kept", &kept, 0);
    run_until_gone(&loop, bus, "gone");
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "kept", &gi), JB_OK); /* it has a member */
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_int_equal(st.groups_expired, 1);
    assert_int_equal(st.groups, 1);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* max_groups caps creation (JB_EBACKPRESSURE); deleting an unused group frees a place. */
static void test_group_cap_and_delete(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_bus_options o = {.test_mode = 1, .max_groups = 3};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received r[5] = {{0}};
    subscribe(bus, "a", "one", &r[0], 0);
    subscribe(bus, "a", "two", &r[1], 0);
    jb_bus_sub *three = subscribe(bus, "a", "three", &r[2], 0);
    jb_bus_sub_options so = {.pattern = "a", .group = "four"};
    jb_bus_sub *sub;
    jb_error err;
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r[3], &sub, &err), JB_EBACKPRESSURE);
    assert_non_null(strstr(err.message, "event_bus.max_groups"));
    so.group = NULL; /* a private group counts too */
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r[3], &sub, &err), JB_EBACKPRESSURE);
    so.group = "one"; /* joining an existing group is fine */
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r[3], &sub, &err), JB_OK);

    assert_int_equal(jb_bus_delete_group(bus, "three", &err), JB_EUNAVAILABLE);
    assert_non_null(strstr(err.message, "1 member"));
    assert_int_equal(jb_bus_delete_group(bus, "nope", &err), JB_ENOENT);
    jb_bus_unsubscribe(three);
    assert_int_equal(jb_bus_delete_group(bus, "three", &err), JB_OK);
    jb_bus_group_info gi;
    assert_int_equal(jb_bus_group_info_get(bus, "three", &gi), JB_ENOENT);
    so.group = "four";
    assert_int_equal(jb_bus_subscribe(bus, &so, on_deliver, &r[4], &sub, &err), JB_OK);
    jb_bus_stats st;
    jb_bus_get_stats(bus, &st);
    assert_int_equal(st.groups_deleted, 1);
    close_bus(&loop, bus);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Delivery attempts are saved: after a restart max_deliver goes on counting, not from 1. */
static void test_attempts_survive_restart(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char state_path[256];
    snprintf(state_path, sizeof(state_path), "%s/groups.state", dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_store_options so = {.dir = dir};
    jb_store *store;
    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    jb_bus_options o = {.store = store,
                        .state_path = state_path,
                        .batch_window_ms = JB_BUS_WINDOW_IMMEDIATE,
                        .nack_backoff_ms = 1};
    jb_bus *bus;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received r = {0};
    jb_bus_sub_options sub_opts = {.pattern = "jobs", .group = "worker", .max_deliver = 3};
    jb_bus_sub *sub;
    r.bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &sub_opts, on_deliver, &r, &sub, NULL), JB_OK);
    publish_result res = {0};
    publish_one(bus, "jobs", "t", NULL, &res);
    run_until(&loop, &r.events, 1);
    uint64_t seq = r.seqs[0];
    assert_int_equal(jb_bus_nack(bus, "worker", &seq, 1, 1, NULL, NULL, NULL), JB_OK);
    run_until(&loop, &r.events, 2); /* delivered twice; the second is held */
    assert_int_equal(r.attempts[1], 2);
    jb_bus_unsubscribe(sub);
    close_bus(&loop, bus);
    close_store(&loop, store);

    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    o.store = store;
    assert_int_equal(jb_bus_new(&loop, &o, &bus, NULL), JB_OK);
    received again = {.nack = 1}, dlq = {.auto_ack = 1};
    subscribe(bus, "dlq.>", "dlq-watch", &dlq, 0);
    again.bus = bus;
    assert_int_equal(jb_bus_subscribe(bus, &sub_opts, on_deliver, &again, &sub, NULL), JB_OK);
    run_until(&loop, &dlq.events, 1);
    assert_true(again.events >= 1);
    assert_int_equal(again.events, 1);
    assert_int_equal(again.attempts[0], 3); /* not 1: max_deliver goes on counting */
    assert_non_null(strstr(dlq.last_headers, "jimbot-dlq-attempts=3;"));
    close_bus(&loop, bus);
    close_store(&loop, store);
    assert_int_equal(uv_loop_close(&loop), 0);
    rm_tree(dir);
}

/* Opens a bus over @state_path holding @text; returns jb_bus_new's status, detail in @err. */
static jb_status open_with_state(const char *dir, const char *text, size_t len, jb_error *err)
{
    char state_path[256];
    snprintf(state_path, sizeof(state_path), "%s/groups.state", dir);
    FILE *f = fopen(state_path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
    uv_loop_t loop;
    uv_loop_init(&loop);
    jb_store_options so = {.dir = dir};
    jb_store *store;
    assert_int_equal(jb_store_open(&loop, &so, &store, NULL), JB_OK);
    jb_bus_options o = {.store = store, .state_path = state_path};
    jb_bus *bus;
    jb_status st = jb_bus_new(&loop, &o, &bus, err);
    if (st == JB_OK)
        close_bus(&loop, bus);
    close_store(&loop, store);
    assert_int_equal(uv_loop_close(&loop), 0);
    return st;
}

/* A truncated or hostile groups.state is refused with a reason: no crash, no huge allocation. */
static void test_damaged_state_file_refused(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    static const char *const bad[] = {
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 0 0 0\nacked\nattempts\n", /* no end */
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 4611686018427387904 0 0\nacked 1\n"
        "attempts\nend\n",                                                          /* huge count */
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 2 0 0\nacked 5\nattempts\nend\n", /* short */
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 1 0 0\nacked 5 6\nattempts\nend\n", /* long */
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 0 1 0\nacked\nattempts 5\nend\n",   /* no :N */
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 0 0 0\nacked\nattempts\n"
        "group g a 30000 5 1 0 0 0\nacked\nattempts\nend\n", /* twice */
        "jimbot-bus-groups 2\ngroup g a.. 30000 5 1 0 0 0\nacked\nattempts\nend\n",
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 0 0 0 extra\nacked\nattempts\nend\n",
        "jimbot-bus-groups 2\ngroup g a 30000 5 1 0 0\n", /* a truncated line */
        "garbage\n",
    };
    jb_error err;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        jb_error_clear(&err);
        jb_status st = open_with_state(dir, bad[i], strlen(bad[i]), &err);
        if (st != JB_ECORRUPT)
            fail_msg("case %zu: %s (%s)", i, jb_status_name(st), err.message);
        assert_non_null(strstr(err.message, "groups.state:"));
    }
    /* A line longer than any valid one (8 MiB of digits). */
    size_t big = 8u << 20;
    char *text = malloc(big + 128);
    assert_non_null(text);
    int head = snprintf(text, 128, "jimbot-bus-groups 2\ngroup g a 30000 5 1 1 0 0\nacked ");
    memset(text + head, '7', big);
    memcpy(text + head + big, "\nattempts\nend\n", 15);
    assert_int_equal(open_with_state(dir, text, strlen(text), &err), JB_ECORRUPT);
    assert_non_null(strstr(err.message, "too long"));
    free(text);
    /* Version 1 files still load. */
    const char *v1 = "jimbot-bus-groups 1\ngroup old a 30000 5 1 0\nacked\nend\n";
    assert_int_equal(open_with_state(dir, v1, strlen(v1), &err), JB_OK);
    rm_tree(dir);
}

int main(void)
{
    jb_log_set_level(JB_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_deliver_ack_in_test_mode),
        cmocka_unit_test(test_fan_out_and_sharing),
        cmocka_unit_test(test_window_batches_and_max_batch_size),
        cmocka_unit_test(test_set_window_applies_live),
        cmocka_unit_test(test_windows_per_pattern),
        cmocka_unit_test(test_topic_allow_list),
        cmocka_unit_test(test_rules_from_config_snapshot),
        cmocka_unit_test(test_flush_window_delivers_at_once),
        cmocka_unit_test(test_flush_window_closes_pattern_windows),
        cmocka_unit_test(test_batch_never_exceeds_an_events_size),
        cmocka_unit_test(test_dead_letter_of_an_event_at_the_header_limit),
        cmocka_unit_test(test_aggregation_rules),
        cmocka_unit_test(test_count_summary_headers),
        cmocka_unit_test(test_nacked_five_times_goes_to_dead_letters),
        cmocka_unit_test(test_ack_deadline_redelivers),
        cmocka_unit_test(test_wall_clock_steps_move_no_deadline),
        cmocka_unit_test(test_unsubscribe_returns_in_flight_to_group),
        cmocka_unit_test(test_duplicate_ids_stored_once),
        cmocka_unit_test(test_dedup_can_be_turned_off),
        cmocka_unit_test(test_bad_input_changes_nothing),
        cmocka_unit_test(test_full_group_backpressures_publishers),
        cmocka_unit_test(test_restart_keeps_positions_and_acks),
        cmocka_unit_test(test_retention_waits_for_the_slowest_group),
        cmocka_unit_test(test_slow_consumer_bounded_memory),
        cmocka_unit_test(test_groups_cost_nothing_per_pending_event),
        cmocka_unit_test(test_lagging_groups_share_log_reads),
        cmocka_unit_test(test_backlog_counted_after_restart),
        cmocka_unit_test(test_idle_group_expires),
        cmocka_unit_test(test_group_cap_and_delete),
        cmocka_unit_test(test_attempts_survive_restart),
        cmocka_unit_test(test_damaged_state_file_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
