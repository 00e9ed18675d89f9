/*
 * jimbot/bus.h: the event bus engine.
 *
 * Topic publish/subscribe with consumer groups, batch windows, per-type
 * aggregation rules and at-least-once delivery, over a jb_store (the durable
 * log). The engine is owned by one libuv loop: every function here must be
 * called on that loop's thread and every callback runs there. jimbotd puts
 * gRPC in front of it; C and C++ programs may embed it directly.
 *
 * Delivery model
 *   - Every consumer group whose pattern matches an event's topic receives
 *     the event; the subscribers of one group share its events (a work
 *     queue). A group is created by its first subscriber and keeps its
 *     position (and its acks) across restarts.
 *   - Events are delivered only once durable, in batches: a subscriber gets
 *     one batch per window (event_bus.batch_window_ms) holding at most
 *     max_batch_size events, sooner when a full batch is ready; a window of
 *     0 delivers as soon as events are durable. Topic patterns may have a
 *     window and a size of their own (jb_bus_set_windows).
 *   - With a list of allowed topics (jb_bus_set_topics), other topics are
 *     refused as unknown.
 *   - A delivered event is in flight for its group until acked. A nack, or
 *     no ack within ack_wait_ms, makes it due again after a backoff; after
 *     max_deliver deliveries it is published to "dlq.<topic>" with the
 *     reason in its headers and counts as handled for the group.
 *   - A subscriber holds at most max_in_flight unacked events (its credits).
 *   - Aggregation rules run per event type over the events of one batch:
 *     "keep" (all), "last" (the newest per key), "count" (one summary event),
 *     or a C callback. Events an aggregation leaves out count as handled.
 *
 * Backpressure: nothing grows without bound. A publish fails with
 * JB_EBACKPRESSURE and a retry hint when the log's writer is behind or when
 * a group that the event would reach already holds max_group_pending
 * unhandled events.
 */
#ifndef JIMBOT_BUS_H
#define JIMBOT_BUS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "jimbot/event.h"
#include "jimbot/status.h"
#include "jimbot/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct jb_bus jb_bus;
typedef struct jb_bus_sub jb_bus_sub;

/* Where a new group starts (an existing group keeps its position). */
typedef enum jb_deliver_policy {
    JB_DELIVER_NEW = 0,           /* events published after the group exists */
    JB_DELIVER_ALL = 1,           /* everything still in the log */
    JB_DELIVER_FROM_SEQUENCE = 2, /* from start_sequence (inclusive) */
    JB_DELIVER_FROM_TIME = 3,     /* from the first event at or after start_time_ms */
} jb_deliver_policy;

typedef enum jb_aggregate_kind {
    JB_AGGREGATE_KEEP = 0,   /* deliver every event */
    JB_AGGREGATE_LAST = 1,   /* only the newest event per key in the batch */
    JB_AGGREGATE_COUNT = 2,  /* one summary event per batch carrying the count */
    JB_AGGREGATE_CUSTOM = 3, /* a C callback chooses */
} jb_aggregate_kind;

/*
 * A custom aggregation: sees the @n events of one type in one batch (in
 * sequence order) and sets keep[i] to 1 for those to deliver, 0 for those
 * to drop (dropped events count as handled). keep[] starts all 1.
 */
typedef void (*jb_aggregate_fn)(const jb_event *const *events, size_t n, uint8_t *keep,
                                void *userdata);

typedef struct jb_aggregate_rule {
    const char *type; /* the event type it applies to */
    jb_aggregate_kind kind;
    /* For LAST: the header whose value is the key (events without it are
     * kept); NULL means "key". */
    const char *key_header;
    jb_aggregate_fn fn; /* for CUSTOM */
    void *userdata;     /* for CUSTOM */
} jb_aggregate_rule;

/* Options, copied by jb_bus_new(); zero fields take the defaults shown. */
typedef struct jb_bus_options {
    /* The log. Borrowed: it must outlive the bus. NULL with test_mode. */
    jb_store *store;
    /* Where group positions and acks are kept; NULL keeps them in memory. */
    const char *state_path;
    uint32_t batch_window_ms;   /* 100; JB_BUS_WINDOW_IMMEDIATE for 0 */
    uint32_t max_batch_size;    /* 1000 */
    uint32_t ack_wait_ms;       /* 30000 */
    uint32_t max_deliver;       /* 5 */
    uint32_t dedup_window_ms;   /* 120000 */
    uint32_t max_event_bytes;   /* 1 MiB: payload plus envelope */
    uint32_t max_headers;       /* JB_EVENT_MAX_HEADERS: headers per event */
    uint32_t max_in_flight;     /* 1000: a subscriber's default credits */
    uint32_t max_group_pending; /* 1000000: unhandled events per group */
    uint32_t nack_backoff_ms;   /* 100: first redelivery delay, doubling */
    uint32_t max_backoff_ms;    /* 30000 */
    size_t cache_bytes;         /* 64 MiB of recent events kept in memory */
    uint32_t max_groups;        /* 10000 groups (private ones included) */
    /* A named group with no member for this long is deleted: 7 days;
     * JB_BUS_EXPIRY_NEVER keeps groups until they are deleted. */
    uint64_t group_idle_expiry_ms;
    const jb_aggregate_rule *rules; /* copied */
    size_t n_rules;
    /* Test mode: an in-memory log owned by the bus, window 0, and a record
     * of every event published (jb_bus_published()). */
    int test_mode;
    /*
     * The wall clock, in milliseconds since the epoch; NULL for the
     * system's. It stamps events, resolves JB_DELIVER_FROM_TIME and dates
     * what the state file keeps across a restart; every deadline, backoff
     * and expiry runs on the loop's monotonic clock (uv_now) instead, so a
     * step of the wall clock moves none of them. A seam for tests.
     */
    int64_t (*wall_clock_ms)(void *userdata);
    void *clock_userdata;
} jb_bus_options;

/* batch_window_ms value for immediate delivery (0 means "the default"). */
#define JB_BUS_WINDOW_IMMEDIATE UINT32_MAX

/* group_idle_expiry_ms value that never expires groups (0 means "the default"). */
#define JB_BUS_EXPIRY_NEVER UINT64_MAX

/* dedup_window_ms value that turns deduplication off (0 means "the default"). */
#define JB_BUS_DEDUP_OFF UINT32_MAX

/* Parses "keep", "last", "count". */
jb_status jb_aggregate_kind_parse(const char *name, jb_aggregate_kind *out, jb_error *err);

/*
 * Creates a bus on @loop over @opts->store and loads the groups saved at
 * @opts->state_path. The dedup index is rebuilt from the log's records of
 * the last dedup window. Free it with jb_bus_close().
 */
jb_status jb_bus_new(uv_loop_t *loop, const jb_bus_options *opts, jb_bus **out, jb_error *err);

/*
 * Changes the batch window and the batch size of a running bus (a
 * configuration reload): @batch_window_ms as in jb_bus_options (0: the
 * default, JB_BUS_WINDOW_IMMEDIATE: none), @max_batch_size 0 for the
 * default. The window open now closes on the old schedule.
 */
void jb_bus_set_window(jb_bus *bus, uint32_t batch_window_ms, uint32_t max_batch_size);

/*
 * The batch window and size of the events of the topics that @pattern
 * matches. An event takes the most specific matching pattern (the most
 * literal words, then no '>', then the most words, then the first in byte
 * order); without one, the bus's window and size. A batch for a subscriber
 * holds due events in sequence order, at most the smallest max_batch_size
 * among them, and goes when it reaches that size or when the window of any
 * of its events closes (each window closes every batch_window_ms on its own
 * schedule, at once for none).
 */
typedef struct jb_bus_window {
    const char *pattern;
    uint32_t batch_window_ms; /* 0: closes with the bus's window; JB_BUS_WINDOW_IMMEDIATE: none */
    uint32_t max_batch_size;  /* 0: the bus's max_batch_size */
} jb_bus_window;

/*
 * Replace, on a running bus (or right after jb_bus_new), the aggregation
 * rules (those of the options included), the windows per pattern, and the
 * allowed topics: with @n_topics > 0 only a topic equal to, or below, one of
 * @topics (or below "dlq") can be published, and only a pattern that can
 * match one can be subscribed; others fail with JB_EINVAL "unknown topic".
 * Everything is copied; on failure nothing changes. Batches delivered from
 * now on follow the new values; groups that exist are kept.
 */
jb_status jb_bus_set_rules(jb_bus *bus, const jb_aggregate_rule *rules, size_t n_rules,
                           jb_error *err);
jb_status jb_bus_set_windows(jb_bus *bus, const jb_bus_window *windows, size_t n_windows,
                             jb_error *err);
jb_status jb_bus_set_topics(jb_bus *bus, const char *const *topics, size_t n_topics, jb_error *err);

/*
 * Applies what a configuration snapshot says about a running bus, all or
 * nothing: event_bus.batch_window_ms and max_batch_size, aggregation,
 * windows and topics (what jimbotd does at start and on every reload).
 * @cfg is borrowed.
 */
struct jb_config;
jb_status jb_bus_apply_config(jb_bus *bus, const struct jb_config *cfg, jb_error *err);

/*
 * Delivers what the open batch window holds now, as if the window had
 * closed (a drain does this before it ends the subscriptions). Not from a
 * deliver callback; a no-op once the bus is closing.
 */
void jb_bus_flush_window(jb_bus *bus);

typedef void (*jb_bus_close_cb)(void *userdata);

/*
 * Starts closing: publishes are refused (JB_ECLOSED), the open window is
 * flushed to subscribers, pending publishes complete once durable, the
 * group state is saved, timers are closed; then @cb runs and the bus is
 * freed. Subscriptions end at once: their deliver callbacks are not called
 * again and their jb_bus_sub handles are freed, so callers must drop them
 * (and never pass them to jb_bus_unsubscribe()) once this is called. In
 * test mode the bus's own store is closed too. Must not be called from a
 * deliver callback.
 */
void jb_bus_close(jb_bus *bus, jb_bus_close_cb cb, void *userdata);

/*
 * Called once the events of a publish are durable (JB_OK) or could not be
 * stored (the error, detail in @err). @sequences[i] is event i's sequence;
 * @duplicates[i] is 1 when event i repeated a recent id and was not stored
 * again (its original sequence is given). Arguments are borrowed.
 */
typedef void (*jb_bus_publish_cb)(jb_status status, const uint64_t *sequences,
                                  const uint8_t *duplicates, size_t n, const jb_error *err,
                                  void *userdata);

/*
 * Publishes @n events, all or none. Checks everything first: a bad topic,
 * an oversized event or a bad header fails with JB_EINVAL / JB_ETOOBIG and
 * changes nothing; backpressure fails with JB_EBACKPRESSURE and sets
 * *@retry_after_ms (may be NULL). On failure @cb is never called. On success
 * @cb runs later, once the events are durable. The events are copied.
 */
jb_status jb_bus_publish(jb_bus *bus, const jb_event *events, size_t n, jb_bus_publish_cb cb,
                         void *userdata, uint32_t *retry_after_ms, jb_error *err);

/*
 * Receives a batch for @sub: @n events of its group, in sequence order, after
 * aggregation; each counts against the subscriber's credits until acked or
 * nacked. The events are borrowed until the callback returns.
 */
typedef void (*jb_bus_deliver_fn)(jb_bus_sub *sub, const jb_event *const *events, size_t n,
                                  void *userdata);

typedef struct jb_bus_sub_options {
    const char *pattern;
    /* The group; NULL or "" makes a private group removed with the subscription. */
    const char *group;
    uint32_t max_in_flight; /* 0: the bus's default */
    jb_deliver_policy deliver_policy;
    uint64_t start_sequence;
    int64_t start_time_ms;
    uint32_t ack_wait_ms; /* 0: the bus's default; applies to a new group */
    uint32_t max_deliver; /* 0: the bus's default; applies to a new group */
} jb_bus_sub_options;

/*
 * Subscribes: joins (or creates) the group and starts delivering to
 * @deliver. A group's pattern is fixed when it is created: joining with
 * another pattern fails with JB_EINVAL. Creating a group beyond max_groups
 * fails with JB_EBACKPRESSURE. The options' strings are copied. End it with
 * jb_bus_unsubscribe().
 */
jb_status jb_bus_subscribe(jb_bus *bus, const jb_bus_sub_options *opts, jb_bus_deliver_fn deliver,
                           void *userdata, jb_bus_sub **out, jb_error *err);

/*
 * Ends a subscription: its in-flight events go back to the group, due at
 * once for the other subscribers (their delivery attempt counted). @sub is
 * freed; the deliver callback is never called again. Safe from inside the
 * subscription's own deliver callback.
 */
void jb_bus_unsubscribe(jb_bus_sub *sub);

/* The group name of @sub (for a private group, the generated one). */
const char *jb_bus_sub_group(const jb_bus_sub *sub);

/* Unacked events that @sub holds now. */
uint32_t jb_bus_sub_in_flight(const jb_bus_sub *sub);

/*
 * Acks @n sequences for @group: each in-flight event becomes handled. A
 * sequence that was not in flight for the group is left alone and counted
 * in *@n_unknown (may be NULL); if @unknown is not NULL its first
 * *@n_unknown entries (at most @n) list them. JB_ENOENT for an unknown group.
 */
jb_status jb_bus_ack(jb_bus *bus, const char *group, const uint64_t *sequences, size_t n,
                     uint64_t *unknown, size_t *n_unknown, jb_error *err);

/*
 * Nacks @n sequences for @group: each becomes due again after @delay_ms, or
 * after the bus's backoff for its attempt when @delay_ms is 0; one that has
 * been delivered max_deliver times is dead-lettered instead. Unknown
 * sequences as for jb_bus_ack().
 */
jb_status jb_bus_nack(jb_bus *bus, const char *group, const uint64_t *sequences, size_t n,
                      uint32_t delay_ms, uint64_t *unknown, size_t *n_unknown, jb_error *err);

typedef struct jb_bus_stats {
    uint64_t published;  /* events stored */
    uint64_t duplicates; /* publishes answered from the dedup index */
    uint64_t delivered;  /* deliveries, redeliveries included */
    uint64_t redelivered;
    uint64_t acked;
    uint64_t dead_lettered;
    uint64_t aggregated_out; /* events left out by aggregation rules */
    uint64_t backpressured;  /* publishes refused with JB_EBACKPRESSURE */
    uint64_t groups_expired; /* named groups deleted after group_idle_expiry_ms without members */
    uint64_t groups_deleted; /* by jb_bus_delete_group() */
    uint64_t log_reads;      /* bulk reads of the log for groups behind the cache */
    uint64_t groups;
    uint64_t subscriptions;
    uint64_t pending_publishes; /* publishes waiting for durability */
    uint64_t cached_events;     /* events held in memory (cache, groups) */
    uint64_t cached_bytes;
    uint64_t last_sequence;
    uint64_t durable_sequence;
} jb_bus_stats;

void jb_bus_get_stats(const jb_bus *bus, jb_bus_stats *out);

/*
 * Per-group view, for status pages and tests. Returns JB_ENOENT for an
 * unknown group.
 */
typedef struct jb_bus_group_info {
    uint64_t ack_floor; /* every matching event below it is handled */
    /* Matching events stored but not yet handled; just after a restart it
     * is still growing while a pass over the log counts the backlog. */
    uint64_t pending;
    uint64_t in_flight;   /* delivered and unacked */
    uint64_t outstanding; /* taken from the log and tracked in memory */
    uint32_t subscribers;
    uint64_t lag;        /* log sequences past its read position, not yet examined */
    uint64_t idle_ms;    /* how long it has had no member; 0 while it has one */
    const char *pattern; /* borrowed: valid until the group is removed */
    uint32_t ack_wait_ms;
    uint32_t max_deliver;
    int private_group;
} jb_bus_group_info;

jb_status jb_bus_group_info_get(const jb_bus *bus, const char *group, jb_bus_group_info *out);

/*
 * Calls @fn once for each group (private ones included), in no particular
 * order, with its name and its view; both are borrowed until @fn returns.
 * @fn must not subscribe, unsubscribe or close the bus.
 */
typedef void (*jb_bus_group_fn)(const char *group, const jb_bus_group_info *info, void *userdata);
void jb_bus_foreach_group(const jb_bus *bus, jb_bus_group_fn fn, void *userdata);

/*
 * Deletes the named group @group: its position, acks and attempts are
 * forgotten, and it no longer holds back retention. JB_ENOENT for an
 * unknown group, JB_EINVAL for a private one, JB_EUNAVAILABLE while it has
 * members (end their subscriptions first: a group in use is never deleted
 * from under its consumers).
 */
jb_status jb_bus_delete_group(jb_bus *bus, const char *group, jb_error *err);

/*
 * Test mode only: the events published so far (in order, duplicates not
 * repeated); @i from 0. NULL past the end or outside test mode. Borrowed
 * until the bus closes.
 */
const jb_event *jb_bus_published(const jb_bus *bus, size_t i);
size_t jb_bus_published_count(const jb_bus *bus);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_BUS_H */
