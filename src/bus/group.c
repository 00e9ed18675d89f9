/*
 * Consumer groups: subscribers, delivery in batches, aggregation, acks,
 * redelivery and dead letters (include/jimbot/bus.h).
 *
 * A group keeps, in a ring ordered by sequence, only the events it has
 * taken from the log (32 bytes each, no copy of the event): DUE (waiting,
 * maybe not before a backoff time), IN_FLIGHT (held by one subscriber until
 * an ack deadline), DYING (its dead-letter copy is being stored) or DONE.
 * Handled entries leave the ring from its head, so the head's sequence (or
 * the cursor, when the ring is empty) is the group's ack floor: everything
 * below it that matched the group is handled, which is what state.c saves.
 *
 * Events not yet taken cost the group nothing: publish only counts them
 * (`pending`), and a group reads them at its `cursor` when a subscriber has
 * credits, from the cache of recent events or, behind it, from a read-ahead
 * of the log that all the groups reading the same range share. A group
 * with nothing pending jumps its cursor to the end without reading. Reading
 * is bounded per delivery round (SCAN_BUDGET records for all groups
 * together); a round that used it up asks for another on the next loop
 * turn, so a long backlog never holds the loop, and a group without
 * subscribers reads nothing at all. Memory is thus bounded by the cache,
 * the read-ahead and the rings (at most JB__RING_CAP entries each, in
 * practice the subscribers' credits).
 *
 * Life cycle: a named group outlives its members; one idle for
 * group_idle_expiry_ms, or deleted without members, is marked doomed and
 * freed outside delivery, like a private group whose subscriber left.
 * Creation stops at max_groups. Every time here is the monotonic clock.
 *
 * Re-entrancy: deliver callbacks may ack, nack, subscribe and unsubscribe.
 * A nested delivery round is folded into the running one (in_deliver), and
 * subscribers and private groups that go away during a callback are freed
 * after it returns.
 */
#include "bus/bus_internal.h"

#include "jimbot/log.h"
#include "jimbot/topic.h"
#include "event/envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCAN_BUDGET     65536 /* log records all groups examine per delivery round */
#define DLQ_RETRY_MS    1000
#define MAX_GROUP_LEN   128
#define EXPIRY_CHECK_MS 1000 /* how often idle groups are looked for */

static jb__entry *at(const jb__group *g, size_t i)
{
    return &g->ring[(g->head + i) & (g->cap - 1)];
}

static uint64_t backoff_ms(const jb_bus *bus, uint32_t attempts)
{
    uint64_t d = bus->opts.nack_backoff_ms;
    for (uint32_t i = 1; i < attempts && d < bus->opts.max_backoff_ms; i++)
        d *= 2;
    return d < bus->opts.max_backoff_ms ? d : bus->opts.max_backoff_ms;
}

/* ---- the ring ----------------------------------------------------------- */

static int ring_push(jb__group *g, uint64_t seq, uint32_t attempts)
{
    if (g->count == g->cap) {
        if (g->cap >= JB__RING_CAP)
            return 0;
        size_t cap = g->cap ? g->cap * 2 : 64;
        jb__entry *ring = malloc(cap * sizeof(*ring));
        if (ring == NULL)
            return 0;
        for (size_t i = 0; i < g->count; i++)
            ring[i] = *at(g, i);
        free(g->ring);
        g->ring = ring;
        g->cap = cap;
        g->head = 0;
    }
    *at(g, g->count) = (jb__entry){.seq = seq, .attempts = attempts, .state = JB__DUE};
    g->count++;
    g->open++;
    return 1;
}

/* Index of @seq in the ring, or SIZE_MAX. */
static size_t ring_find(const jb__group *g, uint64_t seq)
{
    size_t lo = 0, hi = g->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t s = at(g, mid)->seq;
        if (s == seq)
            return mid;
        if (s < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return SIZE_MAX;
}

static void ring_pop_done(jb__group *g)
{
    int popped = 0;
    while (g->count > 0 && at(g, 0)->state == JB__DONE) {
        g->head = (g->head + 1) & (g->cap - 1);
        g->count--;
        if (g->first_due > 0)
            g->first_due--;
        popped = 1;
    }
    if (g->count == 0 && g->cap > 1024) {
        free(g->ring); /* A burst's ring goes back once it is handled. */
        g->ring = NULL;
        g->cap = g->head = g->first_due = 0;
    }
    if (popped)
        jb__bus_mark_dirty(g->bus);
}

static void mark_due(jb__group *g, size_t i, uint64_t when_ms)
{
    jb__entry *en = at(g, i);
    en->state = JB__DUE;
    en->when_ms = when_ms;
    en->holder = NULL;
    if (i < g->first_due)
        g->first_due = i;
}

/* An entry is handled: acked, aggregated out or dead-lettered. */
static void mark_done(jb__group *g, jb__entry *en)
{
    if (en->state == JB__IN_FLIGHT) {
        if (en->holder != NULL)
            en->holder->in_flight--;
        g->in_flight--;
    }
    en->state = JB__DONE;
    en->holder = NULL;
    g->open--;
    if (g->pending > 0)
        g->pending--;
}

uint64_t jb__group_floor(const jb__group *g)
{
    return g->count > 0 ? at(g, 0)->seq : g->cursor;
}

/* ---- groups ------------------------------------------------------------- */

jb__group *jb__group_new(jb_bus *bus, const char *name, const char *pattern, uint32_t ack_wait_ms,
                         uint32_t max_deliver)
{
    jb__group *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->name = strdup(name);
    g->pattern = strdup(pattern);
    if (g->name == NULL || g->pattern == NULL ||
        jb__sublist_insert(bus->routes, pattern, g, NULL) != JB_OK) {
        free(g->name);
        free(g->pattern);
        free(g);
        return NULL;
    }
    g->bus = bus;
    g->ack_wait_ms = ack_wait_ms;
    g->max_deliver = max_deliver;
    g->boundary = bus->stats.last_sequence + 1;
    g->cursor = g->boundary;
    g->idle_since_ms = jb__bus_now_ms(bus);
    jb__strmap_put(&bus->groups, name, g);
    return g;
}

void jb__group_drop_subs(jb__group *g)
{
    while (g->subs != NULL) {
        jb_bus_sub *s = g->subs;
        g->subs = s->next == s ? NULL : s->next;
        s->prev->next = s->next;
        s->next->prev = s->prev;
        free(s);
    }
    g->n_subs = 0;
}

void jb__group_free(jb__group *g)
{
    jb_bus *bus = g->bus;
    jb__sublist_remove(bus->routes, g->pattern, g);
    jb__group_drop_subs(g);
    free(g->ring);
    free(g->restored);
    free(g->name);
    free(g->pattern);
    free(g);
}

void jb__bus_reap_groups(jb_bus *bus)
{
    if (!bus->any_doomed || bus->in_deliver)
        return;
    bus->any_doomed = 0;
    for (;;) {
        jb__group *doomed = NULL;
        size_t it = 0;
        const char *name;
        void *value;
        while (jb__strmap_next(&bus->groups, &it, &name, &value)) {
            if (((jb__group *)value)->doomed) {
                doomed = value;
                break;
            }
        }
        if (doomed == NULL)
            return;
        jb__strmap_del(&bus->groups, doomed->name);
        jb__group_free(doomed);
    }
}

static void doom(jb__group *g)
{
    g->doomed = 1;
    g->bus->any_doomed = 1;
    if (!g->private_group)
        jb__bus_mark_dirty(g->bus);
}

void jb__bus_expire_groups(jb_bus *bus)
{
    uint64_t expiry = bus->opts.group_idle_expiry_ms;
    uint64_t now = jb__bus_now_ms(bus);
    if (expiry == JB_BUS_EXPIRY_NEVER || bus->in_deliver || now < bus->next_expiry_check)
        return;
    bus->next_expiry_check = now + EXPIRY_CHECK_MS;
    size_t it = 0;
    const char *name;
    void *value;
    while (jb__strmap_next(&bus->groups, &it, &name, &value)) {
        jb__group *g = value;
        int64_t idle = (int64_t)now - g->idle_since_ms;
        if (g->private_group || g->doomed || g->n_subs > 0 || idle < 0 || (uint64_t)idle < expiry)
            continue;
        jb_log(JB_LOG_INFO, "bus", "group deleted after being idle",
               "group=%s idle_s=%lld floor=%llu", g->name, (long long)(idle / 1000),
               (unsigned long long)jb__group_floor(g));
        bus->stats.groups_expired++;
        doom(g);
    }
    jb__bus_reap_groups(bus);
}

jb_status jb_bus_delete_group(jb_bus *bus, const char *group, jb_error *err)
{
    jb__group *g = group != NULL ? jb__strmap_get(&bus->groups, group) : NULL;
    if (g == NULL || g->doomed)
        return jb_error_set(err, JB_ENOENT, "unknown group '%s'", group ? group : "");
    if (g->private_group)
        return jb_error_set(err, JB_EINVAL,
                            "'%s' is a private group: it ends with its subscription", group);
    if (g->n_subs > 0)
        return jb_error_set(err, JB_EUNAVAILABLE,
                            "group '%s' has %u member(s); end their subscriptions first", group,
                            g->n_subs);
    jb_log(JB_LOG_INFO, "bus", "group deleted", "group=%s floor=%llu", g->name,
           (unsigned long long)jb__group_floor(g));
    bus->stats.groups_deleted++;
    doom(g);
    jb__bus_reap_groups(bus);
    return JB_OK;
}

/* ---- reading the log -------------------------------------------------- */

typedef struct jb__chunk {
    uint64_t first; /* the sequence of ev[0] */
    size_t len, bytes;
    uint64_t used; /* chunk_clock at its last use */
    jb__ev *ev[JB__CHUNK_RECORDS];
} jb__chunk;

static void chunk_empty(jb__chunk *c)
{
    for (size_t i = 0; i < c->len; i++)
        jb__ev_unref(c->ev[i]);
    c->len = c->bytes = 0;
}

void jb__readahead_clear(jb_bus *bus)
{
    for (size_t i = 0; i < JB__CHUNKS; i++) {
        if (bus->chunks[i] != NULL)
            chunk_empty(bus->chunks[i]);
        free(bus->chunks[i]);
        bus->chunks[i] = NULL;
    }
}

static int chunk_visit(const jb_store_record *rec, void *userdata)
{
    jb__chunk *c = userdata;
    if (rec->seq != c->first + c->len || c->len == JB__CHUNK_RECORDS)
        return 1; /* a gap: a chunk stays contiguous */
    jb__ev *e = jb__ev_from_record(rec->seq, rec->payload, rec->len, NULL);
    if (e == NULL)
        return 1;
    c->ev[c->len++] = e;
    c->bytes += e->size;
    return c->bytes >= JB__CHUNK_BYTES;
}

/* The chunk holding @seq, or NULL. */
static jb__chunk *chunk_find(jb_bus *bus, uint64_t seq)
{
    for (size_t i = 0; i < JB__CHUNKS; i++) {
        jb__chunk *c = bus->chunks[i];
        if (c != NULL && seq >= c->first && seq < c->first + c->len)
            return c;
    }
    return NULL;
}

/* An empty slot, else the least recently used chunk, emptied; NULL if out of memory. */
static jb__chunk *chunk_victim(jb_bus *bus)
{
    size_t v = 0;
    for (size_t i = 0; i < JB__CHUNKS; i++) {
        if (bus->chunks[i] == NULL || bus->chunks[i]->len == 0) {
            v = i;
            break;
        }
        if (bus->chunks[i]->used < bus->chunks[v]->used)
            v = i;
    }
    if (bus->chunks[v] == NULL && (bus->chunks[v] = calloc(1, sizeof(jb__chunk))) == NULL)
        return NULL;
    chunk_empty(bus->chunks[v]);
    return bus->chunks[v];
}

/*
 * Reads the chunk that holds @seq from the log, aligned to JB__CHUNK_RECORDS
 * so that groups a little apart share it. NULL with @err set if nothing of
 * it could be read.
 */
static jb__chunk *chunk_load(jb_bus *bus, uint64_t seq, jb_error *err)
{
    jb__chunk *c = chunk_victim(bus);
    if (c == NULL)
        return NULL;
    uint64_t start = seq - (seq - 1) % JB__CHUNK_RECORDS;
    uint64_t first = jb_store_first_seq(bus->store);
    c->first = start >= first ? start : first <= seq ? first : seq;
    size_t n = 0;
    bus->stats.log_reads++;
    jb_status st = jb_store_read(bus->store, c->first, JB__CHUNK_RECORDS, JB__CHUNK_BYTES,
                                 chunk_visit, c, &n, err);
    if (st != JB_OK && c->len == 0)
        return NULL;
    return c;
}

/*
 * The event with sequence @seq (a new reference): from the cache of recent
 * events, else from the shared read-ahead, loaded from the log when no chunk
 * holds it. NULL with @err set (JB_ENOENT: not in the log).
 */
static jb__ev *read_event(jb_bus *bus, uint64_t seq, jb_error *err)
{
    if (bus->cache_len > 0 && seq >= bus->cache_first && seq < bus->cache_first + bus->cache_len)
        return jb__bus_fetch(bus, seq, err);
    jb__chunk *c = chunk_find(bus, seq);
    if (c == NULL && chunk_load(bus, seq, err) != NULL)
        c = chunk_find(bus, seq);
    if (c == NULL)
        return jb__bus_fetch(bus, seq, err); /* not readable in bulk: one record, with its error */
    c->used = ++bus->chunk_clock;
    return jb__ev_ref(c->ev[seq - c->first]);
}

/* What the state file says of @seq: NULL, or its restored acks and attempts. */
static const jb__restored *restored_at(jb__group *g, uint64_t seq)
{
    while (g->restored_pos < g->n_restored && g->restored[g->restored_pos].seq < seq)
        g->restored_pos++;
    if (g->restored_pos < g->n_restored && g->restored[g->restored_pos].seq == seq)
        return &g->restored[g->restored_pos];
    return NULL;
}

/* Past the end of the log the restored acks are no longer needed. */
static void note_caught_up(jb__group *g)
{
    if (g->cursor > g->bus->stats.last_sequence && g->restored != NULL) {
        free(g->restored);
        g->restored = NULL;
        g->n_restored = g->restored_pos = 0;
    }
}

/* With nothing pending beyond its ring, a group has nothing to read: it jumps to the end. */
static void skip_if_nothing_new(jb__group *g)
{
    if (g->cursor >= g->boundary && g->pending == g->open)
        g->cursor = g->bus->stats.last_sequence + 1;
    note_caught_up(g);
}

/*
 * Every event from the cursor to the end matches: all of them are counted
 * pending and not taken yet (one topic per group, the common case), so
 * taking them needs no read of the log.
 */
static int all_match(const jb__group *g)
{
    uint64_t last = g->bus->stats.last_sequence;
    return g->cursor >= g->boundary && g->cursor <= last && g->pending >= g->open &&
           g->pending - g->open == last - g->cursor + 1;
}

/* The event at the cursor could not be read: 1 to go on (retention moved the cursor), 0 to stop. */
static int unreadable(jb__group *g, const jb_error *err)
{
    uint64_t first = jb_store_first_seq(g->bus->store);
    if (err->code == JB_ENOENT && g->cursor < first) {
        jb_log(JB_LOG_WARN, "bus", "events removed by retention before the group read them",
               "group=%s from=%llu to=%llu", g->name, (unsigned long long)g->cursor,
               (unsigned long long)(first - 1));
        g->cursor = first;
        return 1;
    }
    jb_log(JB_LOG_ERROR, "bus", "cannot read the log", "group=%s sequence=%llu error=%s", g->name,
           (unsigned long long)g->cursor, err->message);
    return 0;
}

/* The log skips sequences that a repair dropped (gone for every reader): so does the cursor. */
static void skip_repaired(jb__group *g, uint64_t next)
{
    jb_log(JB_LOG_WARN, "bus", "sequences dropped by a log repair skipped",
           "group=%s from=%llu to=%llu", g->name, (unsigned long long)g->cursor,
           (unsigned long long)(next - 1));
    g->cursor = next;
}

/*
 * Takes up to @want new matching events at the cursor into the ring (DUE),
 * within the round's budget of log records. Returns how many.
 */
static size_t take_new(jb__group *g, size_t want)
{
    jb_bus *bus = g->bus;
    size_t got = 0;
    skip_if_nothing_new(g);
    while (got < want && g->cursor <= bus->durable_seq && g->count < JB__RING_CAP) {
        if (bus->scan_budget == 0) {
            bus->scan_more = 1;
            break;
        }
        bus->scan_budget--;
        const jb__restored *r = NULL;
        int wanted = all_match(g);
        if (!wanted) {
            jb_error err;
            jb_error_clear(&err);
            jb__ev *e = read_event(bus, g->cursor, &err);
            if (e == NULL && unreadable(g, &err))
                continue;
            if (e == NULL)
                break;
            if (e->ev.sequence > g->cursor)
                skip_repaired(g, e->ev.sequence);
            wanted = jb_pattern_matches(g->pattern, e->ev.topic) &&
                     ((r = restored_at(g, g->cursor)) == NULL || r->attempts > 0);
            jb__ev_unref(e);
        }
        if (wanted && !ring_push(g, g->cursor, r != NULL ? r->attempts : 0))
            break; /* out of memory: try again next round */
        if (wanted && g->cursor < g->boundary && !(g->in_pass && g->cursor < bus->counted_to))
            g->pending++; /* (what the backlog pass went over it counted) */
        g->cursor++;
        got += wanted;
    }
    note_caught_up(g);
    return got;
}

/* ---- counting the backlog after a restart ------------------------------ */

/* Work per loop turn of the backlog pass: records read plus groups they matched. */
#define COUNT_SLICE 65536

static int restored_acked(const jb__group *g, uint64_t seq)
{
    size_t lo = 0, hi = g->n_restored;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->restored[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < g->n_restored && g->restored[lo].seq == seq && g->restored[lo].attempts == 0;
}

typedef struct count_ctx {
    uint64_t seq;
    size_t work;
} count_ctx;

/* A group the event matched counts it if it has not read that far yet (take_new counts the rest).
 */
static void count_one(void *item, void *userdata)
{
    jb__group *g = item;
    count_ctx *ctx = userdata;
    uint64_t seq = ctx->seq;
    ctx->work++;
    if (g->in_pass && seq >= g->cursor && seq < g->boundary && !restored_acked(g, seq))
        g->pending++;
}

int jb__bus_count_backlog(jb_bus *bus)
{
    if (bus->count_end == 0)
        return 0;
    count_ctx ctx = {0, 0};
    while (ctx.work < COUNT_SLICE && bus->counted_to <= bus->count_end) {
        jb_error err;
        jb__ev *e = read_event(bus, bus->counted_to, &err);
        ctx.seq = bus->counted_to++;
        ctx.work++;
        if (e != NULL)
            jb__sublist_match(bus->routes, e->ev.topic, count_one, &ctx);
        jb__ev_unref(e);
    }
    return bus->counted_to <= bus->count_end;
}

/* ---- dead letters ------------------------------------------------------- */

typedef struct dlq_ctx {
    jb_bus *bus;
    uint64_t seq;
    char group[];
} dlq_ctx;

static void on_dead_letter_stored(jb_status status, const uint64_t *sequences,
                                  const uint8_t *duplicates, size_t n, const jb_error *err,
                                  void *userdata)
{
    (void)sequences, (void)duplicates, (void)n;
    dlq_ctx *ctx = userdata;
    jb__group *g = jb__strmap_get(&ctx->bus->groups, ctx->group);
    size_t i = g != NULL ? ring_find(g, ctx->seq) : SIZE_MAX;
    if (i != SIZE_MAX && at(g, i)->state == JB__DYING) {
        jb__entry *en = at(g, i);
        if (status == JB_OK) {
            mark_done(g, en);
            ctx->bus->stats.dead_lettered++;
            ring_pop_done(g);
        } else {
            en->when_ms = jb__bus_now_ms(ctx->bus) + DLQ_RETRY_MS;
            jb_log(JB_LOG_WARN, "bus", "dead letter not stored; will retry",
                   "group=%s sequence=%llu error=%s", g->name, (unsigned long long)ctx->seq,
                   err ? err->message : jb_strerror(status));
        }
    }
    free(ctx);
}

static void dead_letter(jb__group *g, jb__entry *en, const char *reason)
{
    jb_bus *bus = g->bus;
    if (en->state == JB__IN_FLIGHT) {
        if (en->holder != NULL)
            en->holder->in_flight--;
        g->in_flight--;
    }
    en->state = JB__DYING;
    en->holder = NULL;
    en->when_ms = 0;

    jb_error rerr;
    jb__ev *orig = read_event(bus, en->seq, &rerr);
    if (orig == NULL) {
        en->when_ms = jb__bus_now_ms(bus) + DLQ_RETRY_MS;
        jb_log(JB_LOG_WARN, "bus", "dead letter not stored; will retry",
               "group=%s sequence=%llu error=%s", g->name, (unsigned long long)en->seq,
               rerr.message);
        return;
    }
    const jb_event *src = &orig->ev;
    char topic[JB_TOPIC_MAX_BYTES + 1];
    if ((size_t)snprintf(topic, sizeof(topic), "dlq.%s", src->topic) >= sizeof(topic))
        snprintf(topic, sizeof(topic), "dlq._topic_too_long");
    char seq[24], attempts[16];
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)en->seq);
    snprintf(attempts, sizeof(attempts), "%u", en->attempts);
    jb_header *headers = malloc((src->n_headers + 5) * sizeof(*headers));
    size_t glen = strlen(g->name);
    dlq_ctx *ctx = malloc(sizeof(*ctx) + glen + 1);
    if (headers == NULL || ctx == NULL) {
        free(headers);
        free(ctx);
        jb__ev_unref(orig);
        en->when_ms = jb__bus_now_ms(bus) + DLQ_RETRY_MS;
        return;
    }
    memcpy(headers, src->headers, src->n_headers * sizeof(*headers));
    size_t nh = src->n_headers;
    headers[nh++] = (jb_header){"jimbot-dlq-reason", reason};
    headers[nh++] = (jb_header){"jimbot-dlq-group", g->name};
    headers[nh++] = (jb_header){"jimbot-dlq-topic", src->topic};
    headers[nh++] = (jb_header){"jimbot-dlq-sequence", seq};
    headers[nh++] = (jb_header){"jimbot-dlq-attempts", attempts};
    jb_event dlq = *src;
    dlq.topic = topic;
    dlq.headers = headers;
    dlq.n_headers = nh;
    dlq.id = NULL; /* The copy must not be taken for a duplicate of the original. */
    ctx->bus = bus;
    ctx->seq = en->seq;
    memcpy(ctx->group, g->name, glen + 1);
    jb_error err;
    if (jb__bus_publish_internal(bus, &dlq, on_dead_letter_stored, ctx, &err) != JB_OK) {
        en->when_ms = jb__bus_now_ms(bus) + DLQ_RETRY_MS;
        jb_log(JB_LOG_WARN, "bus", "dead letter not stored; will retry",
               "group=%s sequence=%s error=%s", g->name, seq, err.message);
        free(ctx);
    }
    free(headers);
    jb__ev_unref(orig);
}

/* Ack deadlines and dead-letter retries: run at each window close or housekeeping tick. */
static void check_deadlines(jb__group *g, uint64_t now)
{
    for (size_t i = 0; i < g->count; i++) {
        jb__entry *en = at(g, i);
        if (en->state == JB__IN_FLIGHT && en->when_ms <= now) {
            en->holder->in_flight--;
            g->in_flight--;
            en->holder = NULL;
            if (en->attempts >= g->max_deliver) {
                en->state = JB__DUE; /* dead_letter() expects it out of flight */
                char reason[64];
                snprintf(reason, sizeof(reason), "no ack after %u deliveries", en->attempts);
                dead_letter(g, en, reason);
            } else {
                mark_due(g, i, now + backoff_ms(g->bus, en->attempts));
            }
        } else if (en->state == JB__DYING && en->when_ms != 0 && en->when_ms <= now) {
            dead_letter(g, en, "max deliveries reached (retried)");
        }
    }
}

/* ---- aggregation -------------------------------------------------------- */

static const char *header_value(const jb_event *ev, const char *key)
{
    for (size_t i = 0; i < ev->n_headers; i++) {
        if (strcmp(ev->headers[i].key, key) == 0)
            return ev->headers[i].value;
    }
    return NULL;
}

/*
 * A "count" summary: the newest event of the batch with two more headers.
 * Its encoded form is the original's with the two header entries appended
 * (map entries of a concatenated encoding add up). Returns an allocation
 * holding the jb_event, its headers, strings and encoding; NULL if out of
 * memory (the event is then delivered as is).
 */
static jb_event *count_summary(const jb_event *src, size_t count)
{
    char n[24];
    snprintf(n, sizeof(n), "%zu", count);
    jb_header extra[2] = {{"jimbot-aggregate", "count"}, {"jimbot-count", n}};
    jb_event tail = {.headers = extra, .n_headers = 2};
    size_t tail_len = jb__envelope_size(&tail);
    size_t size = sizeof(jb_event) + (src->n_headers + 2) * sizeof(jb_header) + src->encoded_len +
                  tail_len + sizeof(n);
    jb_event *out = malloc(size);
    if (out == NULL)
        return NULL;
    *out = *src;
    jb_header *h = (jb_header *)(out + 1);
    memcpy(h, src->headers, src->n_headers * sizeof(*h));
    char *count_copy = (char *)(h + src->n_headers + 2);
    memcpy(count_copy, n, sizeof(n));
    h[src->n_headers] = extra[0];
    h[src->n_headers + 1] = (jb_header){"jimbot-count", count_copy};
    uint8_t *enc = (uint8_t *)count_copy + sizeof(n);
    memcpy(enc, src->encoded, src->encoded_len);
    tail.headers = h + src->n_headers;
    jb__envelope_encode(&tail, enc + src->encoded_len);
    out->headers = h;
    out->n_headers = src->n_headers + 2;
    out->encoded = enc;
    out->encoded_len = src->encoded_len + tail_len;
    return out;
}

/*
 * Applies the rules to a batch: @evs are the events (by batch position),
 * keep[i] is set to 0 for those left out; summary[i] gets an allocated
 * replacement event for "count" carriers.
 */
static void aggregate(jb_bus *bus, jb__ev **evs, size_t n, uint8_t *keep, jb_event **summary)
{
    for (size_t r = 0; r < bus->opts.n_rules; r++) {
        const jb_aggregate_rule *rule = &bus->rules[r];
        if (rule->kind == JB_AGGREGATE_KEEP)
            continue;
        size_t matched = 0, last = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(evs[i]->ev.type, rule->type) == 0) {
                matched++;
                last = i;
            }
        }
        if (matched == 0)
            continue;
        if (rule->kind == JB_AGGREGATE_COUNT) {
            for (size_t i = 0; i < n; i++) {
                if (i != last && strcmp(evs[i]->ev.type, rule->type) == 0)
                    keep[i] = 0;
            }
            summary[last] = count_summary(&evs[last]->ev, matched);
        } else if (rule->kind == JB_AGGREGATE_LAST) {
            jb__strmap seen;
            jb__strmap_init(&seen);
            for (size_t i = n; i-- > 0;) {
                if (strcmp(evs[i]->ev.type, rule->type) != 0)
                    continue;
                const char *key = header_value(&evs[i]->ev, rule->key_header);
                if (key == NULL)
                    continue;
                if (jb__strmap_get(&seen, key) != NULL)
                    keep[i] = 0;
                else
                    jb__strmap_put(&seen, key, (void *)1);
            }
            jb__strmap_release(&seen);
        } else if (rule->kind == JB_AGGREGATE_CUSTOM) {
            const jb_event **sel = malloc(matched * sizeof(*sel));
            uint8_t *k = malloc(matched);
            size_t *pos = malloc(matched * sizeof(*pos));
            if (sel != NULL && k != NULL && pos != NULL) {
                size_t m = 0;
                for (size_t i = 0; i < n; i++) {
                    if (strcmp(evs[i]->ev.type, rule->type) == 0) {
                        sel[m] = &evs[i]->ev;
                        k[m] = 1;
                        pos[m++] = i;
                    }
                }
                rule->fn(sel, m, k, rule->userdata);
                for (size_t j = 0; j < m; j++)
                    keep[pos[j]] = k[j] != 0;
            }
            free(sel);
            free(k);
            free(pos);
        }
    }
}

/* ---- delivery ----------------------------------------------------------- */

static int scratch_reserve(jb_bus *bus, size_t n)
{
    if (n <= bus->scratch_cap)
        return 1;
    jb_event *ev = realloc(bus->scratch, n * sizeof(*ev));
    if (ev != NULL)
        bus->scratch = ev;
    const jb_event **ptrs = realloc(bus->scratch_ptrs, n * sizeof(*ptrs));
    if (ptrs != NULL)
        bus->scratch_ptrs = ptrs;
    jb__ev **evs = realloc(bus->scratch_evs, n * sizeof(*evs));
    if (evs != NULL)
        bus->scratch_evs = evs;
    size_t *idx = realloc(bus->scratch_idx, n * sizeof(*idx));
    if (idx != NULL)
        bus->scratch_idx = idx;
    uint8_t *keep = realloc(bus->scratch_keep, n);
    if (keep != NULL)
        bus->scratch_keep = keep;
    jb_event **summary = realloc(bus->scratch_summary, n * sizeof(*summary));
    if (summary != NULL)
        bus->scratch_summary = summary;
    if (ev == NULL || ptrs == NULL || evs == NULL || idx == NULL || keep == NULL || summary == NULL)
        return 0;
    bus->scratch_cap = n;
    return 1;
}

/* Restored attempts can reach max_deliver: such an entry is dead-lettered, not delivered. */
static int spent(jb__group *g, jb__entry *en)
{
    if (en->attempts < g->max_deliver)
        return 0;
    char reason[64];
    snprintf(reason, sizeof(reason), "%u deliveries before a restart", en->attempts);
    dead_letter(g, en, reason);
    return 1;
}

/*
 * Collects up to @limit deliverable entries into bus->scratch_idx (ring
 * positions): the DUE entries of the ring first, then new events taken at
 * the cursor. Returns how many.
 */
static size_t collect(jb__group *g, uint64_t now, size_t limit)
{
    jb_bus *bus = g->bus;
    while (g->first_due < g->count && at(g, g->first_due)->state != JB__DUE)
        g->first_due++;
    size_t n = 0;
    for (size_t i = g->first_due; i < g->count && n < limit; i++) {
        jb__entry *en = at(g, i);
        if (en->state == JB__DUE && en->when_ms <= now && !spent(g, en))
            bus->scratch_idx[n++] = i;
    }
    if (n == limit)
        return n;
    size_t from = g->count;
    size_t got = take_new(g, limit - n);
    for (size_t k = 0; k < got; k++) {
        if (!spent(g, at(g, from + k)))
            bus->scratch_idx[n++] = from + k;
    }
    return n;
}

/*
 * Reads the events of the @n collected entries into bus->scratch_evs
 * (references); an entry whose event cannot be read now is retried later.
 * Returns how many remain.
 */
static size_t read_collected(jb__group *g, size_t n, uint64_t now)
{
    jb_bus *bus = g->bus;
    size_t m = 0;
    for (size_t k = 0; k < n; k++) {
        jb__entry *en = at(g, bus->scratch_idx[k]);
        jb_error err;
        jb__ev *e = read_event(bus, en->seq, &err);
        if (e == NULL) {
            jb_log(JB_LOG_ERROR, "bus", "cannot read the log", "group=%s sequence=%llu error=%s",
                   g->name, (unsigned long long)en->seq, err.message);
            en->when_ms = now + DLQ_RETRY_MS;
            continue;
        }
        bus->scratch_idx[m] = bus->scratch_idx[k];
        bus->scratch_evs[m++] = e;
    }
    return m;
}

/* Drops the references read_collected() took. */
static void drop_read(jb_bus *bus, size_t n)
{
    for (size_t k = 0; k < n; k++)
        jb__ev_unref(bus->scratch_evs[k]);
}

/*
 * With windows per pattern (policy.c), a batch holds at most the smallest
 * max_batch_size among its events and goes once the window of any of them
 * closed (@window_closed: the bus's own). Cuts the @n read events to that
 * size (dropping the rest, which stay due) and says whether the batch goes.
 */
static int fit_windows(jb_bus *bus, size_t *n, int window_closed)
{
    size_t cap = SIZE_MAX, k = 0;
    int closed = 0;
    while (k < *n) {
        /* Event k joins only if the batch with it stays within its own size too. */
        size_t cap_k = cap;
        int closed_k = closed;
        jb__bus_window_take(bus, bus->scratch_evs[k]->ev.topic, window_closed, &cap_k, &closed_k);
        if (k > 0 && k + 1 > cap_k)
            break;
        cap = cap_k;
        closed = closed_k;
        k++;
    }
    for (size_t j = k; j < *n; j++)
        jb__ev_unref(bus->scratch_evs[j]);
    *n = k;
    return closed || k >= cap;
}

/*
 * Delivers one batch of @n entries (positions in bus->scratch_idx, their
 * events read into bus->scratch_evs by read_collected()) to @s.
 * Returns 0 when the group went away during the callback.
 */
static int deliver_batch(jb__group *g, jb_bus_sub *s, size_t n, uint64_t now)
{
    jb_bus *bus = g->bus;
    jb__ev **evs = bus->scratch_evs;
    uint8_t *keep = bus->scratch_keep;
    jb_event **summary = bus->scratch_summary;
    for (size_t k = 0; k < n; k++) {
        jb__entry *en = at(g, bus->scratch_idx[k]);
        en->state = JB__IN_FLIGHT;
        en->attempts++;
        en->holder = s;
        en->when_ms = now + g->ack_wait_ms;
        s->in_flight++;
        g->in_flight++;
        if (en->attempts > 1)
            bus->stats.redelivered++;
        keep[k] = 1;
        summary[k] = NULL;
    }
    if (bus->opts.n_rules > 0)
        aggregate(bus, evs, n, keep, summary);

    size_t out = 0;
    for (size_t k = 0; k < n; k++) {
        jb__entry *en = at(g, bus->scratch_idx[k]);
        if (!keep[k]) {
            mark_done(g, en);
            bus->stats.aggregated_out++;
            continue;
        }
        jb_event *copy = &bus->scratch[out];
        *copy = summary[k] != NULL ? *summary[k] : evs[k]->ev;
        copy->sequence = en->seq;
        copy->delivery_attempt = en->attempts;
        bus->scratch_ptrs[out++] = copy;
    }
    bus->stats.delivered += out;
    jb__bus_mark_dirty(bus); /* the attempts are saved */
    ring_pop_done(g);

    int group_alive = 1;
    if (out > 0) {
        s->delivering = 1;
        s->deliver(s, bus->scratch_ptrs, out, s->userdata);
        s->delivering = 0;
        if (s->dead) {
            free(s);
            group_alive = !g->doomed;
        }
    }
    for (size_t k = 0; k < n; k++) {
        free(summary[k]);
        jb__ev_unref(evs[k]);
    }
    return group_alive;
}

static void deliver_group(jb__group *g, uint64_t now, int window_closed)
{
    jb_bus *bus = g->bus;
    size_t batch = jb__bus_max_batch(bus);
    uint32_t idle = 0;
    while (g->n_subs > 0 && idle < g->n_subs && !bus->closing) {
        jb_bus_sub *s = g->subs;
        g->subs = s->next;
        uint32_t credits = s->max_in_flight > s->in_flight ? s->max_in_flight - s->in_flight : 0;
        size_t limit = credits < batch ? credits : batch;
        if (limit == 0) {
            idle++;
            continue;
        }
        if (!scratch_reserve(bus, batch))
            return;
        size_t n = collect(g, now, limit);
        if (n == 0)
            return; /* Nothing due for anyone. */
        int per_pattern = jb__bus_has_windows(bus);
        if (!per_pattern && !window_closed && n < bus->opts.max_batch_size)
            return; /* A partial batch waits for the window to close (nothing read). */
        n = read_collected(g, n, now);
        if (per_pattern && !fit_windows(bus, &n, window_closed)) {
            drop_read(bus, n);
            return; /* A partial batch waits for a window to close. */
        }
        idle = 0;
        if (!deliver_batch(g, s, n, now))
            return;
    }
}

static void deliver_round(jb_bus *bus, int window_closed)
{
    uint64_t now = jb__bus_now_ms(bus);
    size_t n = bus->groups.len;
    if (n > bus->snapshot_cap) {
        jb__group **v = realloc(bus->snapshot, n * sizeof(*v));
        if (v == NULL)
            return;
        bus->snapshot = v;
        bus->snapshot_cap = n;
    }
    size_t it = 0, k = 0;
    const char *name;
    void *value;
    while (k < n && jb__strmap_next(&bus->groups, &it, &name, &value))
        bus->snapshot[k++] = value;
    bus->scan_budget = SCAN_BUDGET;
    size_t start = k > 0 ? bus->round_start++ % k : 0;
    for (size_t j = 0; j < k && !bus->closing; j++) {
        jb__group *g = bus->snapshot[(start + j) % k];
        if (g->doomed)
            continue;
        skip_if_nothing_new(g);
        if (window_closed)
            check_deadlines(g, now);
        if (g->n_subs > 0)
            deliver_group(g, now, window_closed);
    }
}

void jb__bus_deliver_all(jb_bus *bus, int window_closed)
{
    if (bus->closing)
        return;
    if (bus->in_deliver) {
        bus->deliver_again = 1;
        bus->deliver_again_closed |= window_closed;
        return;
    }
    bus->in_deliver = 1;
    deliver_round(bus, window_closed);
    while (bus->deliver_again && !bus->closing) {
        int closed = bus->deliver_again_closed || bus->opts.batch_window_ms == 0;
        bus->deliver_again = 0;
        bus->deliver_again_closed = 0;
        deliver_round(bus, closed);
    }
    bus->in_deliver = 0;
    jb__bus_windows_reset(bus);
    jb__bus_reap_groups(bus);
    if (jb__bus_count_backlog(bus))
        bus->scan_more = 1;
    if (bus->scan_more) {
        bus->scan_more = 0;
        jb__bus_kick(bus); /* more to read: on the next loop turn, after I/O */
    }
}

/* ---- subscriptions ------------------------------------------------------ */

static jb_status validate_group_name(const char *name, jb_error *err)
{
    size_t n = strlen(name);
    if (n > MAX_GROUP_LEN)
        return jb_error_set(err, JB_EINVAL, "group name of %zu bytes (at most %d)", n,
                            MAX_GROUP_LEN);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-' || c == '.';
        if (!ok)
            return jb_error_set(err, JB_EINVAL,
                                "group name '%s' has an invalid character at byte %zu (letters, "
                                "digits, '_', '-' and '.' only)",
                                name, i);
    }
    if (name[0] == '_')
        return jb_error_set(err, JB_EINVAL, "group names starting with '_' are reserved");
    return JB_OK;
}

/* Where a new group's scan starts, per its deliver policy. */
static void set_start(jb_bus *bus, jb__group *g, const jb_bus_sub_options *o)
{
    uint64_t first = jb_store_first_seq(bus->store);
    uint64_t start = bus->stats.last_sequence + 1;
    switch (o->deliver_policy) {
    case JB_DELIVER_NEW:
        break;
    case JB_DELIVER_ALL:
        start = first;
        break;
    case JB_DELIVER_FROM_SEQUENCE:
        start = o->start_sequence > first ? o->start_sequence : first;
        break;
    case JB_DELIVER_FROM_TIME: {
        uint64_t seq;
        if (jb_store_seek_time(bus->store, o->start_time_ms, &seq, NULL) == JB_OK)
            start = seq;
        break;
    }
    }
    g->cursor = start;
}

jb_status jb_bus_subscribe(jb_bus *bus, const jb_bus_sub_options *opts, jb_bus_deliver_fn deliver,
                           void *userdata, jb_bus_sub **out, jb_error *err)
{
    if (bus->closing)
        return jb_error_set(err, JB_ECLOSED, "the bus is shutting down");
    if (deliver == NULL)
        return jb_error_set(err, JB_EINVAL, "subscribe needs a deliver callback");
    jb_status st = jb_pattern_validate(opts->pattern, err);
    if (st == JB_OK)
        st = jb__bus_pattern_allowed(bus, opts->pattern, err);
    if (st != JB_OK)
        return st;
    if ((unsigned)opts->deliver_policy > JB_DELIVER_FROM_TIME)
        return jb_error_set(err, JB_EINVAL, "unknown deliver policy %d", (int)opts->deliver_policy);
    char private_name[48];
    const char *name = opts->group;
    int private_group = name == NULL || name[0] == '\0';
    if (private_group) {
        snprintf(private_name, sizeof(private_name), "_private.%llu",
                 (unsigned long long)++bus->private_counter);
        name = private_name;
    } else if ((st = validate_group_name(name, err)) != JB_OK) {
        return st;
    }

    jb__group *g = jb__strmap_get(&bus->groups, name);
    if (g != NULL && g->doomed)
        return jb_error_set(err, JB_EUNAVAILABLE, "group '%s' is being removed", name);
    if (g != NULL && strcmp(g->pattern, opts->pattern) != 0)
        return jb_error_set(err, JB_EINVAL,
                            "group '%s' already exists with pattern '%s' (a group has one pattern)",
                            name, g->pattern);
    if (g == NULL && bus->groups.len >= bus->opts.max_groups)
        return jb_error_set(err, JB_EBACKPRESSURE,
                            "cannot create group '%s': %zu groups exist, the limit "
                            "(event_bus.max_groups) is %u; delete unused ones (jimbotctl group "
                            "delete NAME)",
                            name, bus->groups.len, bus->opts.max_groups);
    jb_bus_sub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory subscribing");
    if (g == NULL) {
        g = jb__group_new(bus, name, opts->pattern,
                          opts->ack_wait_ms ? opts->ack_wait_ms : bus->opts.ack_wait_ms,
                          opts->max_deliver ? opts->max_deliver : bus->opts.max_deliver);
        if (g == NULL) {
            free(s);
            return jb_error_set(err, JB_ENOMEM, "out of memory creating group '%s'", name);
        }
        g->private_group = private_group;
        set_start(bus, g, opts);
        if (!private_group)
            jb__bus_mark_dirty(bus);
        jb_log(JB_LOG_INFO, "bus", "group created", "group=%s pattern=%s from=%llu", g->name,
               g->pattern, (unsigned long long)g->cursor);
    }
    s->group = g;
    s->deliver = deliver;
    s->userdata = userdata;
    s->max_in_flight = opts->max_in_flight ? opts->max_in_flight : bus->opts.max_in_flight;
    if (g->subs == NULL) {
        s->next = s->prev = s;
        g->subs = s;
    } else {
        s->next = g->subs;
        s->prev = g->subs->prev;
        s->prev->next = s;
        g->subs->prev = s;
    }
    g->n_subs++;
    bus->stats.subscriptions++;
    jb__bus_kick(bus);
    *out = s;
    return JB_OK;
}

void jb_bus_unsubscribe(jb_bus_sub *s)
{
    if (s == NULL || s->dead)
        return;
    jb__group *g = s->group;
    jb_bus *bus = g->bus;
    uint64_t now = jb__bus_now_ms(bus);
    for (size_t i = 0; i < g->count; i++) {
        jb__entry *en = at(g, i);
        if (en->state == JB__IN_FLIGHT && en->holder == s) {
            g->in_flight--;
            mark_due(g, i, now);
        }
    }
    s->in_flight = 0;
    if (s->next == s) {
        g->subs = NULL;
    } else {
        s->prev->next = s->next;
        s->next->prev = s->prev;
        if (g->subs == s)
            g->subs = s->next;
    }
    g->n_subs--;
    bus->stats.subscriptions--;
    if (g->n_subs == 0)
        g->idle_since_ms = now;
    if (g->private_group && g->n_subs == 0)
        doom(g);
    int others = g->n_subs > 0; /* read now: reaping may free a private group */
    if (s->delivering) {
        s->dead = 1; /* freed by deliver_batch() once the callback returns */
    } else {
        free(s);
        jb__bus_reap_groups(bus);
    }
    if (others)
        jb__bus_kick(bus);
}

const char *jb_bus_sub_group(const jb_bus_sub *s)
{
    return s->group->name;
}

uint32_t jb_bus_sub_in_flight(const jb_bus_sub *s)
{
    return s->in_flight;
}

/* ---- acks --------------------------------------------------------------- */

static jb__group *find_group(jb_bus *bus, const char *name, jb_error *err)
{
    jb__group *g = name != NULL ? jb__strmap_get(&bus->groups, name) : NULL;
    if (g == NULL || g->doomed)
        jb_error_set(err, JB_ENOENT, "unknown group '%s'", name ? name : "");
    return g != NULL && !g->doomed ? g : NULL;
}

static void note_unknown(uint64_t seq, uint64_t *unknown, size_t *n_unknown)
{
    if (unknown != NULL)
        unknown[*n_unknown] = seq;
    (*n_unknown)++;
}

jb_status jb_bus_ack(jb_bus *bus, const char *group, const uint64_t *sequences, size_t n,
                     uint64_t *unknown, size_t *n_unknown, jb_error *err)
{
    jb__group *g = find_group(bus, group, err);
    if (g == NULL)
        return JB_ENOENT;
    size_t bad = 0;
    size_t next = SIZE_MAX; /* acks usually come in delivery order: try the next slot first */
    for (size_t k = 0; k < n; k++) {
        size_t i =
            next < g->count && at(g, next)->seq == sequences[k] ? next : ring_find(g, sequences[k]);
        next = i != SIZE_MAX ? i + 1 : SIZE_MAX;
        jb__entry *en = i != SIZE_MAX ? at(g, i) : NULL;
        /* A late ack of an event waiting for redelivery still counts. */
        if (en != NULL &&
            (en->state == JB__IN_FLIGHT || (en->state == JB__DUE && en->attempts > 0))) {
            mark_done(g, en);
            bus->stats.acked++;
        } else {
            note_unknown(sequences[k], unknown, &bad);
        }
    }
    if (n_unknown != NULL)
        *n_unknown = bad;
    ring_pop_done(g);
    jb__bus_mark_dirty(bus);
    /* Freed credits: deliver on the next loop turn, once for all the acks of this one. */
    jb__bus_kick(bus);
    return JB_OK;
}

jb_status jb_bus_nack(jb_bus *bus, const char *group, const uint64_t *sequences, size_t n,
                      uint32_t delay_ms, uint64_t *unknown, size_t *n_unknown, jb_error *err)
{
    jb__group *g = find_group(bus, group, err);
    if (g == NULL)
        return JB_ENOENT;
    uint64_t now = jb__bus_now_ms(bus);
    size_t bad = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = ring_find(g, sequences[k]);
        jb__entry *en = i != SIZE_MAX ? at(g, i) : NULL;
        if (en == NULL || en->state != JB__IN_FLIGHT) {
            note_unknown(sequences[k], unknown, &bad);
            continue;
        }
        en->holder->in_flight--;
        g->in_flight--;
        en->holder = NULL;
        if (en->attempts >= g->max_deliver) {
            en->state = JB__DUE;
            char reason[64];
            snprintf(reason, sizeof(reason), "nacked after %u deliveries", en->attempts);
            dead_letter(g, en, reason);
        } else {
            mark_due(g, i, now + (delay_ms ? delay_ms : backoff_ms(bus, en->attempts)));
        }
    }
    if (n_unknown != NULL)
        *n_unknown = bad;
    jb__bus_kick(bus);
    return JB_OK;
}

jb_status jb_bus_group_info_get(const jb_bus *bus, const char *group, jb_bus_group_info *out)
{
    const jb__group *g = group != NULL ? jb__strmap_get(&bus->groups, group) : NULL;
    if (g == NULL)
        return JB_ENOENT;
    uint64_t end = bus->stats.last_sequence + 1;
    int nothing_new = g->cursor >= g->boundary && g->pending == g->open;
    int64_t idle = (int64_t)jb__bus_now_ms(bus) - g->idle_since_ms;
    out->ack_floor = jb__group_floor(g);
    out->pending = g->pending;
    out->in_flight = g->in_flight;
    out->outstanding = g->count;
    out->subscribers = g->n_subs;
    out->lag = nothing_new || g->cursor >= end ? 0 : end - g->cursor;
    out->idle_ms = g->n_subs == 0 && idle > 0 ? (uint64_t)idle : 0;
    out->pattern = g->pattern;
    out->ack_wait_ms = g->ack_wait_ms;
    out->max_deliver = g->max_deliver;
    out->private_group = g->private_group;
    return JB_OK;
}

void jb_bus_foreach_group(const jb_bus *bus, jb_bus_group_fn fn, void *userdata)
{
    size_t it = 0;
    const char *name;
    void *value;
    while (jb__strmap_next(&bus->groups, &it, &name, &value)) {
        jb_bus_group_info info;
        if (jb_bus_group_info_get(bus, name, &info) == JB_OK)
            fn(name, &info, userdata);
    }
}
