/*
 * The bus engine's internal structures, shared by bus.c (publish, durability,
 * the cache, dedup), group.c (groups, subscribers, delivery, acks) and
 * state.c (saved group positions).
 *
 * Memory is bounded by construction:
 *   - jb__ev: one allocation per event held in memory, refcounted; held by
 *     the cache (at most cache_bytes), by group rings and by the test-mode
 *     record;
 *   - a group's ring holds at most JB__RING_CAP taken events, 32 bytes each;
 *   - the read-ahead of the log holds at most JB__CHUNKS chunks;
 *   - pending publishes are bounded by the store's unflushed-bytes limit.
 */
#ifndef JB_BUS_INTERNAL_H
#define JB_BUS_INTERNAL_H

#include "bus/sublist.h"
#include "core/strmap.h"
#include "jimbot/bus.h"

#include <stdint.h>
#include <uv.h>

/* An event held in memory. `ev` points into the same allocation. */
typedef struct jb__ev {
    uint32_t refs;
    uint32_t size; /* bytes of the allocation, for cache accounting */
    jb_event ev;   /* ev.encoded: the stored envelope (no sequence/attempt) */
} jb__ev;

jb__ev *jb__ev_ref(jb__ev *e);
void jb__ev_unref(jb__ev *e);

/* Builds an event from a stored envelope; NULL with @err set if malformed. */
jb__ev *jb__ev_from_record(uint64_t seq, const void *data, size_t len, jb_error *err);

/* The event with sequence @seq (a new reference), from the cache or the log. */
jb__ev *jb__bus_fetch(jb_bus *bus, uint64_t seq, jb_error *err);

enum jb__entry_state {
    JB__DUE = 0, /* waiting for delivery (not before when_ms) */
    JB__IN_FLIGHT = 1,
    JB__DONE = 2,  /* acked, aggregated out or dead-lettered */
    JB__DYING = 3, /* its dead-letter copy is being stored */
};

/* An event a group has taken from the log: 32 bytes, no copy of the event. */
typedef struct jb__entry {
    uint64_t seq;
    uint64_t when_ms; /* monotonic; DUE: not before; IN_FLIGHT: ack deadline */
    jb_bus_sub *holder;
    uint32_t attempts;
    uint8_t state;
} jb__entry;

/* From the state file: an acked sequence (attempts 0) or one delivered before. */
typedef struct jb__restored {
    uint64_t seq;
    uint32_t attempts;
} jb__restored;

#define JB__RING_CAP 16384

/* The read-ahead: at most JB__CHUNKS chunks of JB__CHUNK_RECORDS events and 1 MiB each. */
#define JB__CHUNKS        16
#define JB__CHUNK_RECORDS 1024
#define JB__CHUNK_BYTES   (1u << 20)

typedef struct jb__group {
    char *name;
    char *pattern;
    int private_group;
    uint32_t ack_wait_ms;
    uint32_t max_deliver;
    /* Taken events, in sequence order: ring[(head + i) % cap], all below
     * `cursor`. Events not yet taken cost nothing here: delivery reads them
     * from the cache or the log when a subscriber has credits. */
    jb__entry *ring;
    size_t cap; /* a power of two, at most JB__RING_CAP */
    size_t head, count;
    size_t open;      /* entries not DONE */
    size_t first_due; /* offset from head below which nothing is DUE */
    uint64_t cursor;  /* the next sequence to examine */
    /* Events at or after `boundary` were counted in `pending` at publish;
     * older ones (history, or from before a restart) when taken. */
    uint64_t boundary;
    uint64_t pending;
    uint64_t publish_tally; /* matches in the publish being checked (bus.c) */
    uint64_t in_flight;
    /* Acks and delivery attempts above the saved floor, from the state file. */
    jb__restored *restored;
    size_t n_restored, restored_pos;
    /* Subscribers, in a circular list for round-robin. */
    jb_bus_sub *subs; /* the next one to serve */
    uint32_t n_subs;
    int64_t idle_since_ms; /* monotonic: when its last member left (may be < 0) */
    int in_pass;           /* saved: its backlog is counted by the bus's pass */
    int doomed;            /* to remove once delivery is over */
    jb_bus *bus;
} jb__group;

struct jb_bus_sub {
    jb__group *group;
    jb_bus_deliver_fn deliver;
    void *userdata;
    uint32_t max_in_flight;
    uint32_t in_flight;
    int delivering; /* inside its deliver callback */
    int dead;       /* unsubscribed from inside its callback */
    jb_bus_sub *next, *prev;
};

typedef struct jb__pending_publish jb__pending_publish;
typedef struct jb__policy jb__policy; /* policy.c */

struct jb_bus {
    uv_loop_t *loop;
    jb_bus_options opts;
    jb_aggregate_rule *rules;
    jb__policy *policy; /* windows per pattern, allowed topics */
    jb_store *store;
    int owns_store;
    char *state_path;
    int closing;

    /* Durability. */
    jb__pending_publish *pending_head, *pending_tail;
    size_t flushes_waiting; /* store flush callbacks still to come */
    int store_failed;       /* the store's failure was logged */
    uint64_t durable_seq;

    /* Recent events by sequence: cache[(cache_start + i) % cache_cap] holds
     * sequence cache_first + i. */
    jb__ev **cache;
    size_t cache_cap, cache_start, cache_len;
    uint64_t cache_first;
    size_t cache_bytes;

    /* Deduplication: id -> sequence, expiring in publish order. */
    jb__strmap dedup;
    struct jb__dedup_item *dedup_head, *dedup_tail;

    /* Groups and routing. */
    jb__strmap groups; /* name -> jb__group */
    jb__sublist *routes;
    uint64_t private_counter;
    uint64_t next_expiry_check; /* monotonic */
    int state_dirty;
    int state_saving;
    uv_work_t state_work;
    struct jb__state_job *state_job;

    uv_timer_t timer; /* window close and housekeeping */
    uv_idle_t kick;   /* delivery on the next loop turn, outside the caller's stack */
    int in_deliver, deliver_again, deliver_again_closed, any_doomed;
    jb__group **snapshot; /* the groups being delivered to */
    size_t snapshot_cap;
    size_t round_start; /* rotates, so that no group always comes first */
    size_t scan_budget; /* log records the groups may still examine this round */
    int scan_more;      /* the budget ran out: go on next loop turn */
    /* Read-ahead from the log, shared by all the groups reading behind the
     * cache: chunks of consecutive events, least recently used replaced. */
    struct jb__chunk *chunks[JB__CHUNKS];
    uint64_t chunk_clock;
    /* After a restart, one pass over the backlog [counted_to, count_end]
     * counts each saved group's pending events (state.c starts it). */
    uint64_t counted_to, count_end;
    jb_event *scratch; /* per-delivery copies of events */
    const jb_event **scratch_ptrs;
    jb__ev **scratch_evs;
    size_t *scratch_idx;
    uint8_t *scratch_keep;
    jb_event **scratch_summary;
    size_t scratch_cap;

    /* Test mode: every published event, in order. */
    jb__ev **published;
    size_t n_published, published_cap;

    jb_bus_stats stats;
    jb_bus_close_cb close_cb;
    void *close_userdata;
    int handles_open;
};

/* Monotonic milliseconds (the loop's uv_now): every deadline, backoff and expiry. */
uint64_t jb__bus_now_ms(const jb_bus *bus);
/* Wall-clock milliseconds since the epoch: timestamps, replay by time, saved times. */
int64_t jb__bus_wall_ms(const jb_bus *bus);

/* group.c */
jb__group *jb__group_new(jb_bus *bus, const char *name, const char *pattern, uint32_t ack_wait_ms,
                         uint32_t max_deliver);
void jb__group_free(jb__group *g);
/* Frees the group's subscriptions without calling anyone (bus close). */
void jb__group_drop_subs(jb__group *g);
/* Drops the shared read-ahead (bus close). */
void jb__readahead_clear(jb_bus *bus);
/* Delivers what is due (reading the log in bounded slices), handles deadlines. */
void jb__bus_deliver_all(jb_bus *bus, int window_closed);
/* The lowest sequence the group still needs. */
uint64_t jb__group_floor(const jb__group *g);

/* Frees groups marked doomed (private groups whose subscriber left, expired, deleted). */
void jb__bus_reap_groups(jb_bus *bus);
/* Counts a slice of the backlog into the saved groups' pending; 1 while more remains. */
int jb__bus_count_backlog(jb_bus *bus);
/* Deletes the named groups idle for longer than group_idle_expiry_ms (housekeeping). */
void jb__bus_expire_groups(jb_bus *bus);
/* Asks for a delivery round on the next loop turn, not from the caller's stack. */
void jb__bus_kick(jb_bus *bus);

/* bus.c, used by group.c for dead letters. */
jb_status jb__bus_publish_internal(jb_bus *bus, const jb_event *ev, jb_bus_publish_cb cb,
                                   void *userdata, jb_error *err);
void jb__bus_mark_dirty(jb_bus *bus);

/* policy.c */
jb_status jb__policy_new(jb_bus *bus, jb_error *err);
void jb__policy_start(jb_bus *bus);                 /* its timer, once the bus exists */
void jb__policy_close(jb_bus *bus, uv_close_cb cb); /* closes that timer */
void jb__policy_free(jb_bus *bus);                  /* and the aggregation rules */
/* JB_EINVAL "unknown topic" unless @topic (or some topic @pattern matches) is allowed. */
jb_status jb__bus_topic_allowed(const jb_bus *bus, const char *topic, jb_error *err);
jb_status jb__bus_pattern_allowed(const jb_bus *bus, const char *pattern, jb_error *err);
/* The largest batch any window allows. */
size_t jb__bus_max_batch(const jb_bus *bus);
/*
 * One more event of @topic in a batch being collected: lowers *@size_cap to
 * its window's max_batch_size and sets *@closed when its window has closed
 * (@default_closed: the bus's own window has).
 */
/* Whether windows per pattern are set (else the bus's one window applies to every event). */
int jb__bus_has_windows(const jb_bus *bus);
void jb__bus_window_take(const jb_bus *bus, const char *topic, int default_closed, size_t *size_cap,
                         int *closed);
/* Window closes last one delivery round: forget them, or (bus close) close all. */
void jb__bus_windows_reset(jb_bus *bus);
void jb__bus_windows_close_all(jb_bus *bus);

/* state.c */
jb_status jb__state_load(jb_bus *bus, jb_error *err);
/* Saves the groups' positions in the background (one save at a time). */
void jb__state_save(jb_bus *bus);
/* Synchronous save, for close. */
jb_status jb__state_save_now(jb_bus *bus, jb_error *err);

#endif /* JB_BUS_INTERNAL_H */
