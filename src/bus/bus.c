/*
 * The bus engine: publish, durability, the event cache and deduplication
 * (include/jimbot/bus.h). Groups, delivery and acks are in group.c; saved
 * group positions in state.c.
 *
 * Publish path (all on the loop thread):
 *   validate every event -> answer duplicates from the dedup index ->
 *   match topics against the routes (the subscription trie) -> refuse if a
 *   matched group is full -> append the envelopes to the store (all or
 *   none) -> keep each event in the cache and count it pending for the
 *   groups it matched (they read it at delivery) -> queue the publish until
 *   the store reports it durable.
 *
 * Durability: each publish asks the store for a flush; the store runs one
 * write job at a time and the flushes asked for meanwhile ride the next one
 * (group commit lives in the store only). When a write completes, the
 * publishes it covers are answered in order, then delivery runs (at once
 * with a window of 0, else at the window's close or when a batch is full).
 *
 * Nothing here blocks: the store writes and fsyncs on libuv's threadpool,
 * and the group state is saved there too (state.c).
 */
#include "bus/bus_internal.h"

#include "core/buf.h"
#include "jimbot/log.h"
#include "jimbot/topic.h"
#include "event/envelope.h"

#include <stdlib.h>
#include <string.h>

#define DEDUP_MAX_IDS   1000000
#define HOUSEKEEPING_MS 100
#define RETRY_HINT_MS   50

struct jb__pending_publish {
    jb__pending_publish *next;
    jb_bus_publish_cb cb;
    void *userdata;
    uint64_t last_seq; /* durable once the store reaches it (0: nothing stored) */
    size_t n;
    uint64_t *seqs;
    uint8_t *dups;
};

typedef struct jb__dedup_item {
    struct jb__dedup_item *next;
    uint64_t seq;
    uint64_t at_ms;
    char id[];
} jb__dedup_item;

/* Monotonic: every deadline, backoff and expiry; a step of the wall clock moves none. */
uint64_t jb__bus_now_ms(const jb_bus *bus)
{
    return uv_now(bus->loop);
}

/* The wall clock: event timestamps, time-based replay and saved times only. */
int64_t jb__bus_wall_ms(const jb_bus *bus)
{
    if (bus->opts.wall_clock_ms != NULL)
        return bus->opts.wall_clock_ms(bus->opts.clock_userdata);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- events in memory ---------------------------------------------------- */

static char *copy_str(char **cursor, const char *s, size_t n)
{
    char *out = *cursor;
    if (n > 0)
        memcpy(out, s, n);
    out[n] = '\0';
    *cursor += n + 1;
    return out;
}

/*
 * One allocation: the jb__ev, the header array, the strings and the encoded
 * envelope (@encoded_len bytes), whose field 6 holds the payload: ev.payload
 * points there rather than at a second copy. @encoded may be NULL: then the
 * envelope is encoded here (publish); otherwise it is copied (events read
 * back from the log), and if its payload is not where this encoder puts it
 * (an envelope from elsewhere), the payload gets a copy of its own.
 */
static jb__ev *ev_build(const jb_event *src, uint64_t seq, const void *encoded, size_t encoded_len)
{
    enum { ID, TOPIC, TYPE, SOURCE, FIXED };
    const char *fixed[FIXED] = {src->id, src->topic, src->type, src->source};
    size_t len[FIXED];
    size_t size = sizeof(jb__ev) + src->n_headers * sizeof(jb_header);
    for (int k = 0; k < FIXED; k++) {
        len[k] = fixed[k] != NULL ? strlen(fixed[k]) : 0;
        size += len[k] + 1;
    }
    for (size_t i = 0; i < src->n_headers; i++)
        size += strlen(src->headers[i].key) + 1 +
                (src->headers[i].value ? strlen(src->headers[i].value) : 0) + 1;
    size_t at = jb__envelope_payload_offset(src);
    int inline_payload =
        encoded == NULL || (at + src->payload_len <= encoded_len &&
                            (src->payload_len == 0 || memcmp((const uint8_t *)encoded + at,
                                                             src->payload, src->payload_len) == 0));
    size += encoded_len + (inline_payload ? 0 : src->payload_len);

    jb__ev *e = malloc(size);
    if (e == NULL)
        return NULL;
    e->refs = 1;
    e->size = (uint32_t)size;
    jb_header *headers = (jb_header *)(e + 1);
    char *cursor = (char *)(headers + src->n_headers);
    jb_event *ev = &e->ev;
    ev->id = copy_str(&cursor, src->id, len[ID]);
    ev->topic = copy_str(&cursor, src->topic, len[TOPIC]);
    ev->type = copy_str(&cursor, src->type, len[TYPE]);
    ev->source = copy_str(&cursor, src->source, len[SOURCE]);
    for (size_t i = 0; i < src->n_headers; i++) {
        const char *k = src->headers[i].key, *v = src->headers[i].value;
        headers[i].key = copy_str(&cursor, k, strlen(k));
        headers[i].value = copy_str(&cursor, v, v ? strlen(v) : 0);
    }
    ev->headers = headers;
    ev->n_headers = src->n_headers;
    ev->timestamp_ms = src->timestamp_ms;
    ev->payload = src->payload; /* the caller's, until the envelope is in place */
    ev->payload_len = src->payload_len;
    ev->encoded = cursor;
    ev->encoded_len = encoded_len;
    if (encoded != NULL)
        memcpy(cursor, encoded, encoded_len);
    else
        jb__envelope_encode(ev, (uint8_t *)cursor);
    if (inline_payload) {
        ev->payload = cursor + at;
    } else {
        char *copy = cursor + encoded_len;
        if (src->payload_len > 0)
            memcpy(copy, src->payload, src->payload_len);
        ev->payload = copy;
    }
    ev->sequence = seq;
    ev->delivery_attempt = 0;
    return e;
}

jb__ev *jb__ev_ref(jb__ev *e)
{
    e->refs++;
    return e;
}

void jb__ev_unref(jb__ev *e)
{
    if (e != NULL && --e->refs == 0)
        free(e);
}

jb__ev *jb__ev_from_record(uint64_t seq, const void *data, size_t len, jb_error *err)
{
    jb__envelope *env;
    const jb_event *ev;
    if (jb__envelope_decode(data, len, &env, &ev, err) != JB_OK)
        return NULL;
    jb__ev *e = ev_build(ev, seq, data, len);
    jb__envelope_free(env);
    if (e == NULL)
        jb_error_set(err, JB_ENOMEM, "out of memory reading event %llu", (unsigned long long)seq);
    return e;
}

/* ---- the cache of recent events ----------------------------------------- */

static void cache_evict_to(jb_bus *bus, size_t limit)
{
    while (bus->cache_len > 0 && bus->cache_bytes > limit) {
        jb__ev *e = bus->cache[bus->cache_start];
        bus->cache[bus->cache_start] = NULL;
        bus->cache_start = (bus->cache_start + 1) & (bus->cache_cap - 1);
        bus->cache_len--;
        bus->cache_first++;
        bus->cache_bytes -= e->size;
        jb__ev_unref(e);
    }
}

static int cache_push(jb_bus *bus, jb__ev *e)
{
    if (bus->cache_len > 0 && e->ev.sequence != bus->cache_first + bus->cache_len)
        JB_BUG("cache out of order: %llu after %llu", (unsigned long long)e->ev.sequence,
               (unsigned long long)(bus->cache_first + bus->cache_len - 1));
    if (bus->cache_len == bus->cache_cap) {
        size_t cap = bus->cache_cap ? bus->cache_cap * 2 : 1024;
        jb__ev **c = malloc(cap * sizeof(*c));
        if (c == NULL)
            return -1;
        for (size_t i = 0; i < bus->cache_len; i++)
            c[i] = bus->cache[(bus->cache_start + i) & (bus->cache_cap - 1)];
        free(bus->cache);
        bus->cache = c;
        bus->cache_cap = cap;
        bus->cache_start = 0;
    }
    if (bus->cache_len == 0)
        bus->cache_first = e->ev.sequence;
    bus->cache[(bus->cache_start + bus->cache_len) & (bus->cache_cap - 1)] = jb__ev_ref(e);
    bus->cache_len++;
    bus->cache_bytes += e->size;
    cache_evict_to(bus, bus->opts.cache_bytes);
    return 0;
}

typedef struct fetch_ctx {
    jb__ev *e;
    jb_error *err;
} fetch_ctx;

static int fetch_visit(const jb_store_record *rec, void *userdata)
{
    fetch_ctx *ctx = userdata;
    ctx->e = jb__ev_from_record(rec->seq, rec->payload, rec->len, ctx->err);
    return 1;
}

jb__ev *jb__bus_fetch(jb_bus *bus, uint64_t seq, jb_error *err)
{
    if (bus->cache_len > 0 && seq >= bus->cache_first && seq < bus->cache_first + bus->cache_len)
        return jb__ev_ref(
            bus->cache[(bus->cache_start + (seq - bus->cache_first)) & (bus->cache_cap - 1)]);
    fetch_ctx ctx = {.e = NULL, .err = err};
    size_t n = 0;
    if (jb_store_read(bus->store, seq, 1, 0, fetch_visit, &ctx, &n, err) != JB_OK)
        return NULL;
    if (n == 0)
        jb_error_set(err, JB_ENOENT, "event %llu is not in the log", (unsigned long long)seq);
    return ctx.e;
}

/* ---- deduplication ------------------------------------------------------ */

static void dedup_expire(jb_bus *bus, uint64_t now_ms)
{
    uint64_t window = bus->opts.dedup_window_ms;
    while (bus->dedup_head != NULL &&
           (bus->dedup_head->at_ms + window < now_ms || bus->dedup.len > DEDUP_MAX_IDS)) {
        jb__dedup_item *it = bus->dedup_head;
        bus->dedup_head = it->next;
        if (bus->dedup_head == NULL)
            bus->dedup_tail = NULL;
        if ((uint64_t)(uintptr_t)jb__strmap_get(&bus->dedup, it->id) == it->seq)
            jb__strmap_del(&bus->dedup, it->id);
        free(it);
    }
}

static void dedup_add(jb_bus *bus, const char *id, uint64_t seq, uint64_t at_ms)
{
    if (bus->opts.dedup_window_ms == JB_BUS_DEDUP_OFF)
        return;
    size_t n = strlen(id);
    jb__dedup_item *it = malloc(sizeof(*it) + n + 1);
    if (it == NULL)
        return; /* Deduplication is best effort under memory pressure. */
    it->next = NULL;
    it->seq = seq;
    it->at_ms = at_ms;
    memcpy(it->id, id, n + 1);
    if (bus->dedup_tail != NULL)
        bus->dedup_tail->next = it;
    else
        bus->dedup_head = it;
    bus->dedup_tail = it;
    jb__strmap_put(&bus->dedup, id, (void *)(uintptr_t)seq);
}

typedef struct rebuild_ctx {
    jb_bus *bus;
    int64_t wall;
    uint64_t mono;
} rebuild_ctx;

/* A record's wall-clock age becomes a monotonic time, clamped to the window. */
static int dedup_rebuild_visit(const jb_store_record *rec, void *userdata)
{
    rebuild_ctx *ctx = userdata;
    jb__envelope *env;
    const jb_event *ev;
    if (jb__envelope_decode(rec->payload, rec->len, &env, &ev, NULL) != JB_OK)
        return 0;
    int64_t age = ctx->wall - rec->timestamp_ms;
    uint64_t a = age < 0 ? 0 : (uint64_t)age;
    if (a > ctx->bus->opts.dedup_window_ms)
        a = ctx->bus->opts.dedup_window_ms;
    if (ev->id != NULL && ev->id[0] != '\0')
        dedup_add(ctx->bus, ev->id, rec->seq, ctx->mono > a ? ctx->mono - a : 0);
    jb__envelope_free(env);
    return 0;
}

static void dedup_rebuild(jb_bus *bus)
{
    if (bus->opts.dedup_window_ms == JB_BUS_DEDUP_OFF)
        return;
    rebuild_ctx ctx = {bus, jb__bus_wall_ms(bus), jb__bus_now_ms(bus)};
    uint64_t seq;
    if (jb_store_seek_time(bus->store, ctx.wall - (int64_t)bus->opts.dedup_window_ms, &seq, NULL) !=
        JB_OK)
        return;
    size_t n = 0;
    jb_store_read(bus->store, seq, 0, 0, dedup_rebuild_visit, &ctx, &n, NULL);
    if (bus->dedup.len > 0)
        jb_log(JB_LOG_INFO, "bus", "dedup index rebuilt", "ids=%zu from_sequence=%llu",
               bus->dedup.len, (unsigned long long)seq);
}

/* Test mode keeps a reference to every published event, in order. */
static void record_published(jb_bus *bus, jb__ev *e)
{
    if (bus->n_published == bus->published_cap) {
        size_t cap = bus->published_cap ? bus->published_cap * 2 : 64;
        jb__ev **v = realloc(bus->published, cap * sizeof(*v));
        if (v == NULL)
            return;
        bus->published = v;
        bus->published_cap = cap;
    }
    bus->published[bus->n_published++] = jb__ev_ref(e);
}

/* ---- durability --------------------------------------------------------- */

void jb__bus_maybe_finish_close(jb_bus *bus);

static void complete_publish(jb__pending_publish *p, jb_status st, const jb_error *err)
{
    if (p->cb != NULL)
        p->cb(st, p->seqs, p->dups, p->n, err, p->userdata);
    free(p->seqs);
    free(p);
}

/*
 * One call per publish (the store answers its flush waiters in order, and
 * all those a write covers in one go): the first call of a go moves
 * durable_seq and answers every publish it covers, so the others find
 * nothing to do and delivery runs once per write, not once per publish.
 */
static void on_flushed(jb_status status, uint64_t durable_seq, const jb_error *err, void *userdata)
{
    jb_bus *bus = userdata;
    bus->flushes_waiting--;
    int advanced = status == JB_OK && durable_seq > bus->durable_seq;
    if (advanced)
        bus->durable_seq = durable_seq;
    while (bus->pending_head != NULL &&
           (status != JB_OK || bus->pending_head->last_seq <= bus->durable_seq)) {
        jb__pending_publish *p = bus->pending_head;
        bus->pending_head = p->next;
        if (bus->pending_head == NULL)
            bus->pending_tail = NULL;
        bus->stats.pending_publishes--;
        complete_publish(p, status, err);
    }
    if (status != JB_OK && !bus->store_failed) {
        bus->store_failed = 1;
        jb_log(JB_LOG_ERROR, "bus", "the log failed; publishes are refused", "error=%s detail=%s",
               jb_status_name(status), err ? err->message : "");
    }
    if (bus->closing) {
        jb__bus_maybe_finish_close(bus);
        return;
    }
    if (!advanced)
        return;
    jb__bus_deliver_all(bus, bus->opts.batch_window_ms == 0);
    if (bus->state_dirty)
        jb__state_save(bus);
}

/*
 * Asks the store to make everything appended so far durable. The store is
 * the one group-commit mechanism: one write job at a time, and the flushes
 * asked for meanwhile ride the next one.
 */
static void request_flush(jb_bus *bus)
{
    jb_error err;
    jb_status st = jb_store_flush(bus->store, on_flushed, bus);
    if (st != JB_OK) {
        /* The store is stopped or closing: answer everything pending with it. */
        jb_error_set(&err, st, "the log refused a flush: %s", jb_strerror(st));
        while (bus->pending_head != NULL) {
            jb__pending_publish *p = bus->pending_head;
            bus->pending_head = p->next;
            bus->stats.pending_publishes--;
            complete_publish(p, st, &err);
        }
        bus->pending_tail = NULL;
        return;
    }
    bus->flushes_waiting++;
}

/* ---- publish ------------------------------------------------------------ */

/*
 * Checks one event; @same_topic_as_previous skips the topic check when the
 * previous event of the request had the same, already checked, topic;
 * @internal (a dead letter) skips the header count and size limits.
 */
static jb_status validate_event(const jb_bus *bus, const jb_event *ev, size_t index,
                                int same_topic_as_previous, size_t envelope_size, int internal,
                                jb_error *err)
{
    jb_error terr;
    if (!same_topic_as_previous && (jb_topic_validate(ev->topic, &terr) != JB_OK ||
                                    jb__bus_topic_allowed(bus, ev->topic, &terr) != JB_OK))
        return jb_error_set(err, JB_EINVAL, "event %zu: %s", index, terr.message);
    if (ev->id != NULL && strlen(ev->id) > JB_EVENT_MAX_ID_BYTES)
        return jb_error_set(err, JB_EINVAL, "event %zu: id longer than %d bytes", index,
                            JB_EVENT_MAX_ID_BYTES);
    if ((ev->type != NULL && strlen(ev->type) > JB_EVENT_MAX_NAME_BYTES) ||
        (ev->source != NULL && strlen(ev->source) > JB_EVENT_MAX_NAME_BYTES))
        return jb_error_set(err, JB_EINVAL, "event %zu: type or source longer than %d bytes", index,
                            JB_EVENT_MAX_NAME_BYTES);
    if (ev->payload_len > 0 && ev->payload == NULL)
        return jb_error_set(err, JB_EINVAL, "event %zu: payload_len without payload", index);
    /* A dead letter is an accepted event plus the bus's own headers: the
     * limits held it once, and refusing it now would keep it stuck for good. */
    if (ev->n_headers > bus->opts.max_headers && !internal)
        return jb_error_set(err, JB_EINVAL, "event %zu: %zu headers (at most %u)", index,
                            ev->n_headers, bus->opts.max_headers);
    for (size_t i = 0; i < ev->n_headers; i++) {
        if (ev->headers[i].key == NULL || ev->headers[i].key[0] == '\0')
            return jb_error_set(err, JB_EINVAL, "event %zu: header %zu has an empty key", index, i);
    }
    if (envelope_size > bus->opts.max_event_bytes && !internal)
        return jb_error_set(err, JB_ETOOBIG, "event %zu: %zu bytes, over the limit of %u bytes",
                            index, envelope_size, bus->opts.max_event_bytes);
    return JB_OK;
}

/* Collects the groups matched by one topic, without repeats. */
typedef struct match_set {
    jb__group **v;
    size_t n, cap;
    int oom;
} match_set;

static int match_push(match_set *m, jb__group *g)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        jb__group **v = realloc(m->v, cap * sizeof(*v));
        if (v == NULL) {
            m->oom = 1;
            return -1;
        }
        m->v = v;
        m->cap = cap;
    }
    m->v[m->n++] = g;
    return 0;
}

/* One event of a publish request on its way in. */
typedef struct staged {
    jb_event ev;      /* the caller's event, timestamp filled in */
    size_t size;      /* its envelope's size */
    jb__ev *e;        /* the stored copy (NULL for duplicates) */
    size_t dup_of;    /* SIZE_MAX, or the earlier event of this request it repeats */
    size_t g_start;   /* its matched groups: matched.v[g_start .. next's g_start) */
    uint64_t dup_seq; /* for duplicates of earlier publishes: the original sequence */
} staged;

/* State of one publish call, released in one place. */
typedef struct publish_call {
    staged *st;
    size_t n_staged; /* entries of st[] initialised */
    jb_store_entry *entries;
    match_set matched;
    jb__strmap ids; /* id -> 1 + index of its first event in this request */
    jb__pending_publish *p;
} publish_call;

static void publish_call_release(publish_call *c)
{
    for (size_t k = 0; k < c->matched.n; k++)
        c->matched.v[k]->publish_tally = 0;
    for (size_t i = 0; i < c->n_staged; i++)
        jb__ev_unref(c->st[i].e);
    free(c->st);
    free(c->entries);
    free(c->matched.v);
    jb__strmap_release(&c->ids);
    if (c->p != NULL) {
        free(c->p->seqs);
        free(c->p);
    }
}

/* A group has one pattern, so the trie reports it at most once per topic. */
static void collect_match(void *item, void *userdata)
{
    match_push(userdata, item);
}

/* Phase 1: copies each event (timestamp filled in) and checks it. */
static jb_status stage_events(jb_bus *bus, publish_call *c, const jb_event *events, size_t n,
                              int64_t wall, int internal, jb_error *err)
{
    for (size_t i = 0; i < n; i++) {
        staged *s = &c->st[i];
        s->ev = events[i];
        if (s->ev.timestamp_ms == 0)
            s->ev.timestamp_ms = wall;
        s->size = jb__envelope_size(&s->ev);
        s->e = NULL;
        s->dup_of = SIZE_MAX;
        s->dup_seq = 0;
        s->g_start = 0;
        c->n_staged = i + 1;
        int same_topic = i > 0 && events[i].topic != NULL && events[i - 1].topic != NULL &&
                         strcmp(events[i].topic, events[i - 1].topic) == 0;
        jb_status st = validate_event(bus, &s->ev, i, same_topic, s->size, internal, err);
        if (st != JB_OK)
            return st;
    }
    return JB_OK;
}

/* Phase 2: marks duplicates of earlier publishes, then of earlier events of this request. */
static void find_duplicates(jb_bus *bus, publish_call *c, const jb_event *events, size_t n)
{
    jb__pending_publish *p = c->p;
    for (size_t i = 0; i < n && bus->opts.dedup_window_ms != JB_BUS_DEDUP_OFF; i++) {
        const char *id = events[i].id;
        if (id == NULL || id[0] == '\0')
            continue;
        void *hit = jb__strmap_get(&bus->dedup, id);
        if (hit != NULL) {
            p->dups[i] = 1;
            c->st[i].dup_seq = (uint64_t)(uintptr_t)hit;
            continue;
        }
        void *first = jb__strmap_get(&c->ids, id);
        if (first != NULL) {
            p->dups[i] = 1;
            c->st[i].dup_of = (size_t)(uintptr_t)first - 1;
        } else {
            jb__strmap_put(&c->ids, id, (void *)(uintptr_t)(i + 1));
        }
    }
}

/* Counts one more event for each newly matched group, refusing one that is full. */
static jb_status tally_groups(jb_bus *bus, publish_call *c, size_t from, int internal,
                              uint32_t *retry_after_ms, jb_error *err)
{
    for (size_t k = from; k < c->matched.n; k++) {
        jb__group *g = c->matched.v[k];
        if (!internal && g->pending + g->publish_tally + 1 > bus->opts.max_group_pending) {
            bus->stats.backpressured++;
            if (retry_after_ms != NULL)
                *retry_after_ms = g->ack_wait_ms < 1000 ? g->ack_wait_ms : 1000;
            return jb_error_set(err, JB_EBACKPRESSURE,
                                "group '%s' holds %llu unhandled events (limit %u); retry "
                                "after it catches up",
                                g->name, (unsigned long long)g->pending,
                                bus->opts.max_group_pending);
        }
        g->publish_tally++;
    }
    return JB_OK;
}

/*
 * Phase 3: routes each event (the previous event's route is reused for a
 * repeated topic, the common case of a batch) and checks the groups' limits.
 */
static jb_status route_events(jb_bus *bus, publish_call *c, const jb_event *events, size_t n,
                              int internal, uint32_t *retry_after_ms, jb_error *err)
{
    size_t prev = SIZE_MAX; /* the last routed event */
    for (size_t i = 0; i < n; i++) {
        staged *s = &c->st[i];
        s->g_start = c->matched.n;
        if (c->p->dups[i])
            continue;
        size_t from = c->matched.n;
        if (prev != SIZE_MAX && strcmp(events[i].topic, events[prev].topic) == 0) {
            size_t a = c->st[prev].g_start, b = from;
            for (size_t k = a; k < b; k++)
                match_push(&c->matched, c->matched.v[k]);
        } else {
            jb__sublist_match(bus->routes, events[i].topic, collect_match, &c->matched);
        }
        if (c->matched.oom)
            return jb_error_set(err, JB_ENOMEM, "out of memory routing an event");
        prev = i;
        jb_status st = tally_groups(bus, c, from, internal, retry_after_ms, err);
        if (st != JB_OK)
            return st;
    }
    return JB_OK;
}

/*
 * Phase 4: builds the copies kept in memory, whose envelopes are what the
 * store writes, and appends them all or none. *@first_seq, *@n_store: what was stored.
 */
static jb_status store_events(jb_bus *bus, publish_call *c, size_t n, uint64_t *first_seq,
                              size_t *n_store, uint32_t *retry_after_ms, jb_error *err)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (c->p->dups[i])
            continue;
        staged *s = &c->st[i];
        s->e = ev_build(&s->ev, 0, NULL, s->size);
        if (s->e == NULL)
            return jb_error_set(err, JB_ENOMEM, "out of memory copying an event");
        c->entries[k++] = (jb_store_entry){
            .timestamp_ms = s->ev.timestamp_ms, .payload = s->e->ev.encoded, .len = s->size};
    }
    *n_store = k;
    *first_seq = 0;
    if (k == 0)
        return JB_OK;
    jb_status st = jb_store_append_batch(bus->store, c->entries, k, first_seq, err);
    if (st == JB_EBACKPRESSURE) {
        bus->stats.backpressured++;
        if (retry_after_ms != NULL)
            *retry_after_ms = RETRY_HINT_MS;
    }
    return st;
}

/*
 * Phase 5, once stored (nothing can fail from here on): gives every event its
 * sequence (a duplicate the original's), remembers its id, caches it and counts
 * it pending for the groups it matched.
 */
static void commit_events(jb_bus *bus, publish_call *c, size_t n, uint64_t first_seq, uint64_t now)
{
    jb__pending_publish *p = c->p;
    uint64_t seq = first_seq;
    for (size_t i = 0; i < n; i++) {
        staged *s = &c->st[i];
        if (p->dups[i]) {
            bus->stats.duplicates++;
            p->seqs[i] = s->dup_of != SIZE_MAX ? p->seqs[s->dup_of] : s->dup_seq;
        } else {
            jb__ev *e = s->e;
            e->ev.sequence = seq;
            p->seqs[i] = seq;
            bus->stats.published++;
            if (e->ev.id[0] != '\0')
                dedup_add(bus, e->ev.id, seq, now);
            if (bus->opts.test_mode)
                record_published(bus, e);
            cache_push(bus, e);
            size_t end = i + 1 < n ? c->st[i + 1].g_start : c->matched.n;
            for (size_t k = s->g_start; k < end; k++)
                c->matched.v[k]->pending++; /* the group reads it at delivery */
            seq++;
        }
        /* A publish is answered once every sequence it names is durable. */
        if (p->seqs[i] > p->last_seq)
            p->last_seq = p->seqs[i];
    }
}

/* Phase 6: queues the publish until the store reports its last sequence durable. */
static void await_durable(jb_bus *bus, publish_call *c)
{
    jb__pending_publish *p = c->p;
    if (bus->pending_tail != NULL)
        bus->pending_tail->next = p;
    else
        bus->pending_head = p;
    bus->pending_tail = p;
    bus->stats.pending_publishes++;
    c->p = NULL; /* queued: no longer ours to free */
    request_flush(bus);
}

/* Allocates a publish call's arrays for @n events; JB_ENOMEM leaves @c releasable. */
static jb_status publish_call_init(publish_call *c, size_t n, jb_bus_publish_cb cb, void *userdata,
                                   jb_error *err)
{
    jb__strmap_init(&c->ids);
    c->st = malloc(n * sizeof(*c->st));
    c->entries = malloc(n * sizeof(*c->entries));
    c->p = calloc(1, sizeof(*c->p));
    uint64_t *seqs = calloc(n, sizeof(uint64_t) + 1);
    if (c->p != NULL)
        c->p->seqs = seqs;
    else
        free(seqs);
    if (c->st == NULL || c->entries == NULL || c->p == NULL || seqs == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory publishing %zu events", n);
    c->p->dups = (uint8_t *)(seqs + n);
    c->p->n = n;
    c->p->cb = cb;
    c->p->userdata = userdata;
    return JB_OK;
}

/*
 * The shared publish path, in the phases above: stage and check every event;
 * find duplicates; route and check the groups' limits; append all or none;
 * then commit (cache, count for the groups) and queue for durability.
 * @internal: dead letters, which skip the groups' pending limit (refusing
 * them would keep the original stuck).
 */
static jb_status publish(jb_bus *bus, const jb_event *events, size_t n, jb_bus_publish_cb cb,
                         void *userdata, int internal, uint32_t *retry_after_ms, jb_error *err)
{
    if (bus->closing)
        return jb_error_set(err, JB_ECLOSED, "the bus is shutting down");
    if (n == 0)
        return jb_error_set(err, JB_EINVAL, "a publish needs at least one event");

    publish_call c = {0};
    uint64_t now = jb__bus_now_ms(bus);
    uint64_t first_seq = 0;
    size_t n_store = 0;
    jb_status st = publish_call_init(&c, n, cb, userdata, err);
    if (st == JB_OK)
        st = stage_events(bus, &c, events, n, jb__bus_wall_ms(bus), internal, err);
    if (st == JB_OK) {
        dedup_expire(bus, now);
        find_duplicates(bus, &c, events, n);
        st = route_events(bus, &c, events, n, internal, retry_after_ms, err);
    }
    if (st == JB_OK)
        st = store_events(bus, &c, n, &first_seq, &n_store, retry_after_ms, err);
    if (st == JB_OK) {
        commit_events(bus, &c, n, first_seq, now);
        if (n_store > 0)
            bus->stats.last_sequence = first_seq + n_store - 1;
        await_durable(bus, &c);
    }
    publish_call_release(&c);
    return st;
}

jb_status jb_bus_publish(jb_bus *bus, const jb_event *events, size_t n, jb_bus_publish_cb cb,
                         void *userdata, uint32_t *retry_after_ms, jb_error *err)
{
    return publish(bus, events, n, cb, userdata, 0, retry_after_ms, err);
}

jb_status jb__bus_publish_internal(jb_bus *bus, const jb_event *ev, jb_bus_publish_cb cb,
                                   void *userdata, jb_error *err)
{
    return publish(bus, ev, 1, cb, userdata, 1, NULL, err);
}

void jb__bus_mark_dirty(jb_bus *bus)
{
    bus->state_dirty = 1;
}

/* ---- lifecycle ---------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    jb_bus *bus = t->data;
    uint64_t now = jb__bus_now_ms(bus);
    dedup_expire(bus, now);
    jb__bus_deliver_all(bus, 1);
    jb__bus_expire_groups(bus);
    /* Retention never removes what a group still needs. */
    uint64_t floor = UINT64_MAX;
    size_t it = 0;
    const char *name;
    void *value;
    while (jb__strmap_next(&bus->groups, &it, &name, &value)) {
        uint64_t f = jb__group_floor(value);
        if (f < floor)
            floor = f;
    }
    jb_store_set_min_needed(bus->store, floor);
    if (bus->state_dirty && bus->flushes_waiting == 0)
        jb__state_save(bus);
}

jb_status jb_aggregate_kind_parse(const char *name, jb_aggregate_kind *out, jb_error *err)
{
    static const char *const names[] = {"keep", "last", "count"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (jb_aggregate_kind)i;
            return JB_OK;
        }
    }
    return jb_error_set(err, JB_EINVAL, "unknown aggregation '%s' (keep, last or count)", name);
}

static void apply_defaults(jb_bus_options *o)
{
#define DEFAULT(field, value) \
    if (o->field == 0)        \
    o->field = (value)
    DEFAULT(batch_window_ms, 100);
    DEFAULT(max_batch_size, 1000);
    DEFAULT(ack_wait_ms, 30000);
    DEFAULT(max_deliver, 5);
    DEFAULT(dedup_window_ms, 120000);
    DEFAULT(max_event_bytes, 1024 * 1024);
    DEFAULT(max_headers, JB_EVENT_MAX_HEADERS);
    DEFAULT(max_in_flight, 1000);
    DEFAULT(max_group_pending, 1000000);
    DEFAULT(nack_backoff_ms, 100);
    DEFAULT(max_backoff_ms, 30000);
    DEFAULT(cache_bytes, (size_t)64 * 1024 * 1024);
    DEFAULT(max_groups, 10000);
    DEFAULT(group_idle_expiry_ms, (uint64_t)7 * 24 * 3600 * 1000);
#undef DEFAULT
    if (o->batch_window_ms == JB_BUS_WINDOW_IMMEDIATE || o->test_mode)
        o->batch_window_ms = 0;
}

static void bus_free(jb_bus *bus)
{
    size_t it = 0;
    const char *name;
    void *value;
    while (jb__strmap_next(&bus->groups, &it, &name, &value))
        jb__group_free(value);
    jb__strmap_release(&bus->groups);
    jb__sublist_free(bus->routes);
    cache_evict_to(bus, 0);
    free(bus->cache);
    jb__readahead_clear(bus);
    while (bus->dedup_head != NULL) {
        jb__dedup_item *d = bus->dedup_head;
        bus->dedup_head = d->next;
        free(d);
    }
    jb__strmap_release(&bus->dedup);
    for (size_t i = 0; i < bus->n_published; i++)
        jb__ev_unref(bus->published[i]);
    free(bus->published);
    free(bus->snapshot);
    free(bus->scratch);
    free(bus->scratch_ptrs);
    free(bus->scratch_evs);
    free(bus->scratch_idx);
    free(bus->scratch_keep);
    free(bus->scratch_summary);
    jb__policy_free(bus);
    free(bus->state_path);
    free(bus);
}

jb_status jb_bus_new(uv_loop_t *loop, const jb_bus_options *opts, jb_bus **out, jb_error *err)
{
    jb_bus *bus = calloc(1, sizeof(*bus));
    if (bus == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory creating the bus");
    bus->loop = loop;
    bus->opts = *opts;
    bus->opts.rules = NULL;
    bus->opts.n_rules = 0;
    bus->opts.state_path = NULL;
    apply_defaults(&bus->opts);
    jb__strmap_init(&bus->dedup);
    jb__strmap_init(&bus->groups);
    bus->routes = jb__sublist_new();
    jb_status st = jb__policy_new(bus, err);
    if (st == JB_OK)
        st = jb_bus_set_rules(bus, opts->rules, opts->n_rules, err);
    if (st == JB_OK && bus->routes == NULL)
        st = jb_error_set(err, JB_ENOMEM, "out of memory creating the bus");
    if (st == JB_OK && opts->state_path != NULL) {
        bus->state_path = strdup(opts->state_path);
        if (bus->state_path == NULL)
            st = jb_error_set(err, JB_ENOMEM, "out of memory creating the bus");
    }
    if (st == JB_OK && opts->test_mode) {
        jb_store_options so = {0};
        st = jb_store_open(loop, &so, &bus->store, err);
        bus->owns_store = st == JB_OK;
    } else if (st == JB_OK) {
        bus->store = opts->store;
        if (bus->store == NULL)
            st = jb_error_set(err, JB_EINVAL, "the bus needs a store (or test mode)");
    }
    if (st == JB_OK) {
        bus->durable_seq = jb_store_durable_seq(bus->store);
        bus->stats.last_sequence = jb_store_last_seq(bus->store);
        st = jb__state_load(bus, err);
    }
    if (st != JB_OK) {
        if (bus->owns_store)
            jb_store_close(bus->store, NULL, NULL);
        bus_free(bus);
        return st;
    }
    dedup_rebuild(bus);

    uv_timer_init(loop, &bus->timer);
    bus->timer.data = bus;
    uint64_t period = bus->opts.batch_window_ms ? bus->opts.batch_window_ms : HOUSEKEEPING_MS;
    uv_timer_start(&bus->timer, on_timer, period, period);
    uv_idle_init(loop, &bus->kick);
    bus->kick.data = bus;
    jb__policy_start(bus);
    bus->handles_open = 3;
    *out = bus;
    return JB_OK;
}

void jb_bus_set_window(jb_bus *bus, uint32_t batch_window_ms, uint32_t max_batch_size)
{
    if (bus->closing || bus->opts.test_mode)
        return;
    uint32_t window = batch_window_ms == 0                         ? 100
                      : batch_window_ms == JB_BUS_WINDOW_IMMEDIATE ? 0
                                                                   : batch_window_ms;
    bus->opts.max_batch_size = max_batch_size ? max_batch_size : 1000;
    if (window == bus->opts.batch_window_ms)
        return;
    bus->opts.batch_window_ms = window;
    uint64_t period = window ? window : HOUSEKEEPING_MS;
    uv_timer_start(&bus->timer, on_timer, period, period);
    /* What waited for the old window goes now. */
    jb__bus_kick(bus);
}

void jb_bus_flush_window(jb_bus *bus)
{
    if (bus->in_deliver)
        JB_BUG("jb_bus_flush_window() called from a deliver callback");
    jb__bus_windows_close_all(bus); /* the windows per pattern close too */
    jb__bus_deliver_all(bus, 1);
}

static void on_store_closed(jb_status status, void *userdata)
{
    jb_bus *bus = userdata;
    (void)status;
    jb_bus_close_cb cb = bus->close_cb;
    void *ud = bus->close_userdata;
    bus_free(bus);
    if (cb != NULL)
        cb(ud);
}

static void finish_close(jb_bus *bus)
{
    if (bus->handles_open > 0 || bus->flushes_waiting > 0 || bus->state_saving ||
        bus->pending_head != NULL)
        return;
    jb_error err;
    if (bus->state_path != NULL && jb__state_save_now(bus, &err) != JB_OK)
        jb_log(JB_LOG_ERROR, "bus", "could not save group positions", "error=%s", err.message);
    if (bus->owns_store && jb_store_close(bus->store, on_store_closed, bus) == JB_OK)
        return;
    on_store_closed(JB_OK, bus);
}

static void on_timer_closed(uv_handle_t *h)
{
    jb_bus *bus = h->data;
    bus->handles_open--;
    finish_close(bus);
}

/* Called by state.c when a background save ends, and by the flush callback. */
void jb__bus_maybe_finish_close(jb_bus *bus)
{
    if (bus->closing)
        finish_close(bus);
}

static void on_kick(uv_idle_t *h)
{
    jb_bus *bus = h->data;
    uv_idle_stop(h);
    jb__bus_deliver_all(bus, bus->opts.batch_window_ms == 0);
}

/*
 * An idle handle, not a 0 ms timer: libuv (1.44) runs a timer started from
 * a timer callback again in the same turn, so a round that asks for
 * another would never let the loop poll; an idle callback runs once a turn.
 */
void jb__bus_kick(jb_bus *bus)
{
    if (!bus->closing && !uv_is_active((uv_handle_t *)&bus->kick))
        uv_idle_start(&bus->kick, on_kick);
}

void jb_bus_close(jb_bus *bus, jb_bus_close_cb cb, void *userdata)
{
    if (bus->in_deliver)
        JB_BUG("jb_bus_close() called from a deliver callback");
    if (bus->closing)
        return;
    /* Flush the open windows to subscribers first. */
    jb__bus_windows_close_all(bus);
    jb__bus_deliver_all(bus, 1);
    bus->closing = 1;
    bus->close_cb = cb;
    bus->close_userdata = userdata;
    /* End subscriptions: no more callbacks. */
    size_t it = 0;
    const char *name;
    void *value;
    while (jb__strmap_next(&bus->groups, &it, &name, &value))
        jb__group_drop_subs(value);
    uv_close((uv_handle_t *)&bus->timer, on_timer_closed);
    uv_close((uv_handle_t *)&bus->kick, on_timer_closed);
    jb__policy_close(bus, on_timer_closed);
}

void jb_bus_get_stats(const jb_bus *bus, jb_bus_stats *out)
{
    *out = bus->stats;
    out->groups = bus->groups.len;
    out->cached_events = bus->cache_len;
    out->cached_bytes = bus->cache_bytes;
    out->durable_sequence = bus->durable_seq;
}

const jb_event *jb_bus_published(const jb_bus *bus, size_t i)
{
    return i < bus->n_published ? &bus->published[i]->ev : NULL;
}

size_t jb_bus_published_count(const jb_bus *bus)
{
    return bus->n_published;
}
