/*
 * The request queues (include/jimbot/coord.h "Request queues";
 * docs/coordinator.md "The request queue").
 *
 * A queue holds jobs. A job is one distinct request (queue, type, payload)
 * with one or more submits waiting for its answer: equal requests join the
 * job that is waiting or out (coalescing) unless they bypass the cache. A
 * job is in exactly one place:
 *
 *   queue->pending   waiting for a worker (and, tied to the budget, a
 *                    unit): priority (higher first), then arrival
 *   worker->out      handed to that worker, waiting for its answer
 *
 * A job with no submit left while pending is dropped (it never reaches a
 * worker); one that is out stays until its worker answers or goes away, so
 * that its answer is still cached. Submits whose deadline passed leave
 * their job and are answered JB_ETIMEDOUT.
 *
 * Answers are never given inside the call that caused them: a submit is
 * moved to the answers list with its status and response, and the timer
 * delivers it on a later loop turn; tasks go to workers from the timer too.
 * The one timer (made lazily, freed in its close callback) runs at once
 * after any change, at the next submit deadline, and when the budget frees
 * its next unit.
 *
 * Pacing: a queue tied to the budget asks jb_coord_quota_acquire() for one
 * unit (wait_ms 0, so it never blocks the budget's own waiters) when a job
 * and a worker with room are ready; at most one such ask is in flight per
 * queue. A granted unit is this queue's "token" until a job uses it; a
 * refusal wakes the queue when the budget says. A submit that could not
 * get a unit before its deadline (units needed = jobs ahead + 1, less the
 * token; jb__quota_time_until) is refused at once.
 *
 * The cache: entries keyed by (queue, type, payload), in a hash table of
 * chains and one list in insertion order; the oldest go first when the
 * bytes exceed cache_max_bytes, and expired ones as they are met. With a
 * cache path, a new entry marks the cache dirty and the timer hands
 * cache_file.c a whole image a second later (and at close); the file is
 * loaded at start, entries of queues not configured (yet) kept aside in
 * unconfigured queues until a reload names them.
 *
 * Request ids and lookups are linear scans over a queue's jobs: a queue
 * holds at most max_depth pending jobs and workers hold few.
 *
 * Loop thread only. Must not depend on gRPC, protobuf-c or the bus.
 */
#include "coord/coord_internal.h"

#include "jimbot/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_BUCKETS 1024

typedef struct queue queue;
typedef struct job job;

struct jb_queue_submit {
    job *job; /* NULL once answered */
    jb__queues *qs;
    jb_queue_submit_cb cb;
    void *ud;
    char *request_id;
    uint64_t deadline; /* loop ms */
    jb_status status;  /* the answer, once on the answers list */
    char *error_text;
    job *answer_from; /* kept alive for the response, or NULL */
    int cached;
    jb_queue_submit *prev, *next; /* in the job's list or the answers list */
};

typedef struct sub_list {
    jb_queue_submit *head, *tail;
    size_t n;
} sub_list;

struct job {
    queue *q;
    char *id; /* the first submit's id: what the worker answers */
    char *type;
    unsigned char *payload;
    size_t len;
    uint64_t hash;
    int32_t priority;
    uint64_t seq;
    uint64_t enqueued; /* loop ms */
    int64_t enqueued_wall;
    char *submitter;
    uint32_t deliveries;
    int bypass;
    jb_queue_worker *worker; /* NULL while pending */
    sub_list subs;
    /* The answer, once given: shared by the submits still to be told. */
    char *resp_type;
    unsigned char *resp_payload;
    size_t resp_len;
    size_t refs; /* submits on the answers list pointing here */
    job *prev, *next;
};

typedef struct job_list {
    job *head, *tail;
    size_t n;
} job_list;

struct jb_queue_worker {
    queue *q;
    jb_queue_worker_cb cb;
    void *ud;
    uint32_t max_outstanding;
    job_list out;
    jb_queue_worker *prev, *next;
};

typedef struct cache_entry {
    queue *q;
    uint64_t hash;
    char *type;
    unsigned char *payload;
    size_t len;
    char *resp_type;
    unsigned char *resp_payload;
    size_t resp_len;
    size_t bytes;
    uint64_t expires; /* loop ms */
    struct cache_entry *hnext;
    struct cache_entry *prev, *next; /* insertion order */
} cache_entry;

struct queue {
    jb__queues *qs;
    char name[JB_COORD_MAX_QUEUE + 1];
    jb__queue_conf conf; /* name not owned here */
    int configured;      /* 0: removed from the configuration */
    job_list pending;
    jb_queue_worker *workers;
    uint32_t n_workers;
    jb_quota_wait *unit_wait; /* the budget ask in flight */
    int token;                /* a unit taken and not yet used */
    uint64_t token_at;        /* loop ms */
    uint64_t unit_wake;       /* loop ms when to ask again; 0: now */
    uint64_t submitted, cache_hits, coalesced, poisoned;
    uint64_t cache_bytes;
    uint32_t cache_entries;
    job *poison_jobs[JB_COORD_MAX_POISON_KEPT];
    size_t n_poison, poison_first;
    queue *next; /* sorted by name */
};

struct jb__queues {
    jb_coord *co;
    queue *queues;
    sub_list answers;
    uint64_t next_seq;
    int64_t started_wall;
    cache_entry *buckets[CACHE_BUCKETS];
    cache_entry *cache_head, *cache_tail;
    uint64_t cache_bytes;
    jb__cache_writer *writer; /* NULL: memory only */
    int cache_dirty;          /* changed since the last image */
    uint64_t cache_flush_at;  /* loop ms of the next image when dirty */
    uv_timer_t *timer;
    int kicked; /* the timer is due on the next turn */
    int closed;
};

/* ---- Small helpers ----------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t key_hash(const char *qname, const char *type, const void *payload, size_t len)
{
    uint64_t h = 14695981039346656037ULL;
    h = fnv(h, qname, strlen(qname) + 1);
    h = fnv(h, type, strlen(type) + 1);
    return fnv(h, payload, len);
}

static unsigned char *dup_bytes(const void *p, size_t n)
{
    unsigned char *b = malloc(n > 0 ? n : 1);
    if (b != NULL && n > 0)
        memcpy(b, p, n);
    return b;
}

static void sub_remove(sub_list *l, jb_queue_submit *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        l->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        l->tail = s->prev;
    s->prev = s->next = NULL;
    l->n--;
}

static void sub_append(sub_list *l, jb_queue_submit *s)
{
    s->next = NULL;
    s->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
    l->n++;
}

static void job_remove(job_list *l, job *j)
{
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static void job_insert_before(job_list *l, job *at, job *j)
{
    j->next = at;
    j->prev = at != NULL ? at->prev : l->tail;
    if (j->prev != NULL)
        j->prev->next = j;
    else
        l->head = j;
    if (at != NULL)
        at->prev = j;
    else
        l->tail = j;
    l->n++;
}

/* Inserts @j into @q's pending list by priority, then arrival. */
static void pending_insert(queue *q, job *j)
{
    job *at = q->pending.head;
    while (at != NULL &&
           (at->priority > j->priority || (at->priority == j->priority && at->seq < j->seq)))
        at = at->next;
    job_insert_before(&q->pending, at, j);
}

static void job_free(job *j)
{
    free(j->id);
    free(j->type);
    free(j->payload);
    free(j->submitter);
    free(j->resp_type);
    free(j->resp_payload);
    free(j);
}

/* Frees @j once it is in no list, has no submit and no answer to deliver. */
static void job_maybe_free(job *j)
{
    if (j->subs.n == 0 && j->refs == 0 && j->worker == NULL && j->prev == NULL && j->next == NULL &&
        (j->q == NULL || j->q->pending.head != j))
        job_free(j);
}

static void arm(jb__queues *qs, uint64_t delay);

/* ---- The cache ----------------------------------------------------------------- */

static void cache_unlink(jb__queues *qs, cache_entry *e)
{
    cache_entry **pp = &qs->buckets[e->hash % CACHE_BUCKETS];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        qs->cache_head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        qs->cache_tail = e->prev;
    qs->cache_bytes -= e->bytes;
    e->q->cache_bytes -= e->bytes;
    e->q->cache_entries--;
    free(e->type);
    free(e->payload);
    free(e->resp_type);
    free(e->resp_payload);
    free(e);
}

static cache_entry *cache_find(jb__queues *qs, queue *q, uint64_t hash, const char *type,
                               const void *payload, size_t len)
{
    uint64_t now = jb__coord_now_ms(qs->co);
    cache_entry *e = qs->buckets[hash % CACHE_BUCKETS];
    while (e != NULL) {
        cache_entry *next = e->hnext;
        if (e->expires <= now) {
            cache_unlink(qs, e);
        } else if (e->hash == hash && e->q == q && e->len == len && strcmp(e->type, type) == 0 &&
                   (len == 0 || memcmp(e->payload, payload, len) == 0)) {
            return e;
        }
        e = next;
    }
    return NULL;
}

/* Drops expired entries at the front, then the oldest until the bytes fit @max. */
static void cache_trim(jb__queues *qs, uint64_t max)
{
    uint64_t now = jb__coord_now_ms(qs->co);
    while (qs->cache_head != NULL && (qs->cache_head->expires <= now || qs->cache_bytes > max))
        cache_unlink(qs, qs->cache_head);
}

/*
 * Adds an entry (replacing an equal one) that expires at @expires (loop
 * ms); out of memory or too big simply leaves it out.
 */
static void cache_insert(jb__queues *qs, queue *q, const jb__cache_record *r, uint64_t hash,
                         uint64_t expires)
{
    const jb__coord_settings *set = &qs->co->set;
    size_t bytes = sizeof(cache_entry) + strlen(r->type) + 1 + r->payload_len +
                   strlen(r->resp_type) + 1 + r->resp_len;
    if (set->cache_ttl_ms == 0 || set->cache_max_bytes == 0 || bytes > set->cache_max_bytes)
        return;
    cache_entry *old = cache_find(qs, q, hash, r->type, r->payload, r->payload_len);
    if (old != NULL)
        cache_unlink(qs, old);
    cache_entry *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return;
    e->type = strdup(r->type);
    e->payload = dup_bytes(r->payload, r->payload_len);
    e->resp_type = strdup(r->resp_type);
    e->resp_payload = dup_bytes(r->resp, r->resp_len);
    if (e->type == NULL || e->payload == NULL || e->resp_type == NULL || e->resp_payload == NULL) {
        free(e->type);
        free(e->payload);
        free(e->resp_type);
        free(e->resp_payload);
        free(e);
        return;
    }
    e->q = q;
    e->hash = hash;
    e->len = r->payload_len;
    e->resp_len = r->resp_len;
    e->bytes = bytes;
    e->expires = expires;
    cache_trim(qs, set->cache_max_bytes - bytes);
    e->hnext = qs->buckets[e->hash % CACHE_BUCKETS];
    qs->buckets[e->hash % CACHE_BUCKETS] = e;
    e->prev = qs->cache_tail;
    if (qs->cache_tail != NULL)
        qs->cache_tail->next = e;
    else
        qs->cache_head = e;
    qs->cache_tail = e;
    qs->cache_bytes += bytes;
    q->cache_bytes += bytes;
    q->cache_entries++;
}

/* Caches @j's answer for cache_ttl; the file follows within a second. */
static void cache_put(jb__queues *qs, job *j)
{
    jb__cache_record r = {.queue = j->q->name,
                          .type = j->type,
                          .resp_type = j->resp_type,
                          .payload = j->payload,
                          .resp = j->resp_payload,
                          .payload_len = j->len,
                          .resp_len = j->resp_len};
    uint64_t now = jb__coord_now_ms(qs->co);
    cache_insert(qs, j->q, &r, j->hash, now + qs->co->set.cache_ttl_ms);
    if (qs->writer != NULL && !qs->cache_dirty) {
        qs->cache_dirty = 1;
        qs->cache_flush_at = now + 1000;
    }
}

/* Hands the writer an image of the live entries (their expiry on the wall clock). */
static void cache_flush(jb__queues *qs)
{
    qs->cache_dirty = 0;
    uint64_t now = jb__coord_now_ms(qs->co);
    int64_t wall = jb__coord_wall_ms();
    size_t bytes = 0;
    uint32_t count = 0;
    for (const cache_entry *e = qs->cache_head; e != NULL; e = e->next) {
        if (e->expires <= now)
            continue;
        jb__cache_record r = {.queue = e->q->name,
                              .type = e->type,
                              .resp_type = e->resp_type,
                              .payload_len = e->len,
                              .resp_len = e->resp_len};
        bytes += jb__cache_record_size(&r);
        count++;
    }
    size_t len = jb__cache_image_size(bytes);
    unsigned char *buf = malloc(len);
    if (buf == NULL) {
        jb_log(JB_LOG_WARN, "coord", "out of memory writing the cache file", NULL);
        return;
    }
    jb__cache_image_begin(buf, count);
    unsigned char *p = buf + jb__cache_image_size(0) - 4;
    for (const cache_entry *e = qs->cache_head; e != NULL; e = e->next) {
        if (e->expires <= now)
            continue;
        jb__cache_record r = {.queue = e->q->name,
                              .type = e->type,
                              .resp_type = e->resp_type,
                              .payload = e->payload,
                              .resp = e->resp_payload,
                              .payload_len = e->len,
                              .resp_len = e->resp_len,
                              .expires_ms = wall + (int64_t)(e->expires - now)};
        p += jb__cache_image_put(p, &r);
    }
    jb__cache_image_end(buf, len);
    jb__cache_writer_submit(qs->writer, &buf, len);
}

/* ---- Answers ------------------------------------------------------------------- */

/*
 * Moves @s out of its job onto the answers list with @status; with @from
 * (JB_OK) the response is @from's answer, which stays alive until told.
 */
static void answer(jb__queues *qs, jb_queue_submit *s, jb_status status, job *from,
                   const char *error_text)
{
    if (s->job != NULL) {
        sub_remove(&s->job->subs, s);
        s->job = NULL;
    }
    s->status = status;
    s->answer_from = from;
    if (from != NULL)
        from->refs++;
    if (error_text != NULL)
        s->error_text = strdup(error_text);
    sub_append(&qs->answers, s);
    arm(qs, 0);
}

static void submit_free(jb_queue_submit *s)
{
    free(s->request_id);
    free(s->error_text);
    free(s);
}

/* Delivers one answer from the list (its callback may change anything). */
static void deliver(jb__queues *qs, jb_queue_submit *s)
{
    sub_remove(&qs->answers, s);
    job *from = s->answer_from;
    jb_queued_response resp = {.request_id = s->request_id, .error = "", .cached = s->cached};
    if (from != NULL) {
        resp.type = from->resp_type;
        resp.payload = from->resp_payload;
        resp.payload_len = from->resp_len;
        resp.error = s->error_text != NULL ? s->error_text : "";
    }
    jb_error err;
    const jb_error *errp = NULL;
    if (s->status != JB_OK) {
        jb_error_set(&err, s->status, "%s", s->error_text != NULL ? s->error_text : "");
        errp = &err;
    }
    if (s->cb != NULL)
        s->cb(s->status, s->status == JB_OK ? &resp : NULL, errp, s->ud);
    if (from != NULL) {
        from->refs--;
        job_maybe_free(from);
    }
    submit_free(s);
}

/* A job that answered keeps its response for the submits on the answers list. */
static jb_status job_set_answer(job *j, const jb_queued_response *r)
{
    j->resp_type = strdup(r->type != NULL ? r->type : "");
    j->resp_payload = dup_bytes(r->payload, r->payload_len);
    if (j->resp_type == NULL || j->resp_payload == NULL) {
        free(j->resp_type);
        free(j->resp_payload);
        j->resp_type = NULL;
        j->resp_payload = NULL;
        return JB_ENOMEM;
    }
    j->resp_len = r->payload_len;
    return JB_OK;
}

/* Answers every submit of @j with @status (no response). */
static void answer_all(jb__queues *qs, job *j, jb_status status, const char *text)
{
    while (j->subs.head != NULL)
        answer(qs, j->subs.head, status, NULL, text);
}

/* ---- Queues -------------------------------------------------------------------- */

static queue *queue_find(jb__queues *qs, const char *name)
{
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        if (strcmp(q->name, name) == 0)
            return q;
    }
    return NULL;
}

static queue *queue_add(jb__queues *qs, const char *name)
{
    queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->qs = qs;
    memcpy(q->name, name, strlen(name) + 1);
    queue **pp = &qs->queues;
    while (*pp != NULL && strcmp((*pp)->name, name) < 0)
        pp = &(*pp)->next;
    q->next = *pp;
    *pp = q;
    return q;
}

static void poison_clear(queue *q)
{
    for (size_t i = 0; i < q->n_poison; i++)
        job_free(q->poison_jobs[(q->poison_first + i) % JB_COORD_MAX_POISON_KEPT]);
    q->n_poison = 0;
    q->poison_first = 0;
}

/* Keeps @j aside (it is in no list and has no submit) and counts it. */
static void poison_keep(queue *q, job *j)
{
    q->poisoned++;
    if (q->n_poison == JB_COORD_MAX_POISON_KEPT) {
        job_free(q->poison_jobs[q->poison_first]);
        q->poison_first = (q->poison_first + 1) % JB_COORD_MAX_POISON_KEPT;
        q->n_poison--;
    }
    q->poison_jobs[(q->poison_first + q->n_poison) % JB_COORD_MAX_POISON_KEPT] = j;
    q->n_poison++;
}

void jb__queues_settings_changed(jb__queues *qs)
{
    if (qs == NULL)
        return;
    const jb__coord_settings *set = &qs->co->set;
    for (queue *q = qs->queues; q != NULL; q = q->next)
        q->configured = 0;
    for (size_t i = 0; i < set->n_queues; i++) {
        queue *q = queue_find(qs, set->queues[i].name);
        if (q == NULL && (q = queue_add(qs, set->queues[i].name)) == NULL) {
            jb_log(JB_LOG_ERROR, "coord", "out of memory: request queue missing", "queue=%s",
                   set->queues[i].name);
            continue;
        }
        q->conf = set->queues[i];
        q->conf.name = NULL;
        q->configured = 1;
    }
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        if (q->configured)
            continue;
        for (job *j = q->pending.head; j != NULL; j = q->pending.head) {
            job_remove(&q->pending, j);
            answer_all(qs, j, JB_EUNAVAILABLE, "the queue was removed from the configuration");
            job_maybe_free(j);
        }
    }
    cache_trim(qs, set->cache_max_bytes);
    arm(qs, 0);
}

/* ---- Pacing ---------------------------------------------------------------------- */

static void on_unit(jb_status status, const jb_quota_result *r, const jb_error *err, void *ud)
{
    queue *q = ud;
    jb__queues *qs = q->qs;
    q->unit_wait = NULL;
    if (qs->closed)
        return;
    uint64_t now = jb__coord_now_ms(qs->co);
    if (status == JB_OK && r->granted) {
        q->token = 1;
        q->token_at = now;
        q->unit_wake = 0;
    } else if (status == JB_OK) {
        q->unit_wake = now + (r->retry_after_ms > 0 ? r->retry_after_ms : 1);
    } else {
        jb_log(JB_LOG_WARN, "coord", "the request queue could not take a unit of budget",
               "queue=%s reason=\"%s\"", q->name, err != NULL ? err->message : "");
        q->unit_wake = now + 1000;
    }
    arm(qs, 0);
}

/* Whether @q may hand out a job now; asks the budget for a unit when not. */
static int have_unit(queue *q, uint64_t now)
{
    jb_coord *co = q->qs->co;
    if (!q->conf.budget)
        return 1;
    if (q->token && now - q->token_at >= co->set.window_ms)
        q->token = 0; /* it left the window unused */
    if (q->token)
        return 1;
    if (q->unit_wait != NULL || now < q->unit_wake)
        return 0;
    char component[JB_COORD_MAX_QUEUE + 8];
    snprintf(component, sizeof(component), "queue:%s", q->name);
    jb_quota_request req = {
        .component = component, .count = 1, .wait_ms = 0, .priority = q->pending.head->priority};
    jb_error err;
    if (jb_coord_quota_acquire(co, &req, on_unit, q, &q->unit_wait, &err) != JB_OK) {
        q->unit_wait = NULL;
        q->unit_wake = now + 1000;
        jb_log(JB_LOG_WARN, "coord", "the request queue could not ask for budget",
               "queue=%s reason=\"%s\"", q->name, err.message);
    }
    return 0;
}

/* ---- Dispatch and the timer ------------------------------------------------------ */

static jb_queue_worker *worker_with_room(queue *q)
{
    for (jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
        if (w->out.n < w->max_outstanding)
            return w;
    }
    return NULL;
}

static uint64_t job_deadline(const job *j)
{
    uint64_t d = 0;
    for (const jb_queue_submit *s = j->subs.head; s != NULL; s = s->next) {
        if (s->deadline > d)
            d = s->deadline;
    }
    return d;
}

/* Hands one job of @q to a worker; 0 when none could go. */
static int dispatch_one(queue *q, uint64_t now)
{
    if (!q->configured || q->pending.head == NULL)
        return 0;
    jb_queue_worker *w = worker_with_room(q);
    if (w == NULL || !have_unit(q, now))
        return 0;
    job *j = q->pending.head;
    job_remove(&q->pending, j);
    q->token = 0;
    j->worker = w;
    j->deliveries++;
    job_insert_before(&w->out, NULL, j);
    uint64_t deadline = job_deadline(j);
    jb_queued_task t = {.request_id = j->id,
                        .queue = q->name,
                        .type = j->type,
                        .payload = j->payload,
                        .payload_len = j->len,
                        .priority = j->priority,
                        .submitter = j->submitter,
                        .enqueued_ms = j->enqueued_wall,
                        .timeout_ms = deadline > now ? (uint32_t)(deadline - now) : 0,
                        .delivery_count = j->deliveries};
    w->cb(w, &t, w->ud);
    return 1;
}

/* Answers the submits whose deadline passed; drops pending jobs left without any. */
static void expire_submits(jb__queues *qs, uint64_t now)
{
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        job *next;
        for (job *j = q->pending.head; j != NULL; j = next) {
            next = j->next;
            for (jb_queue_submit *s = j->subs.head, *sn; s != NULL; s = sn) {
                sn = s->next;
                if (s->deadline <= now)
                    answer(qs, s, JB_ETIMEDOUT, NULL, "no response came in time");
            }
            if (j->subs.n == 0) {
                job_remove(&q->pending, j);
                job_maybe_free(j);
            }
        }
        for (jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
            for (job *j = w->out.head; j != NULL; j = j->next) {
                for (jb_queue_submit *s = j->subs.head, *sn; s != NULL; s = sn) {
                    sn = s->next;
                    if (s->deadline <= now)
                        answer(qs, s, JB_ETIMEDOUT, NULL, "no response came in time");
                }
            }
        }
    }
}

/* When the timer must run next (UINT64_MAX: not at all). */
static uint64_t next_wake(const jb__queues *qs, uint64_t now)
{
    if (qs->answers.head != NULL)
        return now;
    uint64_t wake = qs->cache_dirty ? qs->cache_flush_at : UINT64_MAX;
    for (const queue *q = qs->queues; q != NULL; q = q->next) {
        for (const job *j = q->pending.head; j != NULL; j = j->next) {
            for (const jb_queue_submit *s = j->subs.head; s != NULL; s = s->next)
                wake = s->deadline < wake ? s->deadline : wake;
        }
        for (const jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
            for (const job *j = w->out.head; j != NULL; j = j->next) {
                for (const jb_queue_submit *s = j->subs.head; s != NULL; s = s->next)
                    wake = s->deadline < wake ? s->deadline : wake;
            }
        }
        if (q->configured && q->conf.budget && q->pending.head != NULL && q->unit_wait == NULL &&
            !q->token && q->unit_wake < wake && worker_with_room((queue *)q) != NULL)
            wake = q->unit_wake;
    }
    return wake;
}

static void on_timer(uv_timer_t *t)
{
    jb__queues *qs = t->data;
    uint64_t now = jb__coord_now_ms(qs->co);
    qs->kicked = 0;
    expire_submits(qs, now);
    if (qs->cache_dirty && now >= qs->cache_flush_at)
        cache_flush(qs);
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        while (!qs->closed && dispatch_one(q, now)) {
        }
    }
    /* Only the answers queued before this run: a callback that submits waits a turn. */
    jb_queue_submit *last = qs->answers.tail;
    while (!qs->closed && last != NULL) {
        jb_queue_submit *s = qs->answers.head;
        int was_last = s == last;
        deliver(qs, s);
        if (was_last)
            break;
    }
    if (!qs->closed)
        arm(qs, UINT64_MAX);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

/*
 * Runs the timer after @delay ms (0: on the next turn; UINT64_MAX: at the
 * next deadline or unit). A run due on the next turn is never put off.
 */
static void arm(jb__queues *qs, uint64_t delay)
{
    if (qs->closed || qs->kicked)
        return;
    if (qs->timer == NULL) {
        qs->timer = malloc(sizeof(*qs->timer));
        if (qs->timer == NULL || uv_timer_init(qs->co->loop, qs->timer) != 0) {
            free(qs->timer);
            qs->timer = NULL;
            jb_log(JB_LOG_ERROR, "coord", "the request queues' timer could not start", NULL);
            return;
        }
        qs->timer->data = qs;
    }
    if (delay == UINT64_MAX) {
        uint64_t now = jb__coord_now_ms(qs->co);
        uint64_t wake = next_wake(qs, now);
        if (wake == UINT64_MAX) {
            uv_timer_stop(qs->timer);
            return;
        }
        delay = wake > now ? wake - now : 0;
    }
    qs->kicked = delay == 0;
    uv_timer_start(qs->timer, on_timer, delay, 0);
}

/* ---- Life ------------------------------------------------------------------------ */

/* A record of the cache file: kept when it has not expired (its queue made, unconfigured, if new).
 */
static void on_loaded(const jb__cache_record *r, void *ud)
{
    jb__queues *qs = ud;
    int64_t left = r->expires_ms - jb__coord_wall_ms();
    if (left <= 0 || r->queue[0] == '\0')
        return;
    queue *q = queue_find(qs, r->queue);
    if (q == NULL && (q = queue_add(qs, r->queue)) == NULL)
        return;
    if ((uint64_t)left > qs->co->set.cache_ttl_ms)
        left = (int64_t)qs->co->set.cache_ttl_ms;
    uint64_t hash = key_hash(q->name, r->type, r->payload, r->payload_len);
    cache_insert(qs, q, r, hash, jb__coord_now_ms(qs->co) + (uint64_t)left);
}

jb_status jb__queues_new(jb_coord *co, jb__queues **out, jb_error *err)
{
    jb__queues *qs = calloc(1, sizeof(*qs));
    if (qs == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    qs->co = co;
    qs->started_wall = jb__coord_wall_ms();
    *out = qs;
    jb__queues_settings_changed(qs);
    const char *path = co->opts.cache_path;
    if (path == NULL || path[0] == '\0')
        return JB_OK;
    qs->writer = jb__cache_writer_new(co->loop, path);
    if (qs->writer == NULL || jb__cache_file_load(path, on_loaded, qs) != JB_OK) {
        jb__queues_free(qs);
        *out = NULL;
        return jb_error_set(err, JB_ENOMEM, "out of memory loading the cache file");
    }
    return JB_OK;
}

void jb__queues_close(jb__queues *qs)
{
    if (qs == NULL || qs->closed)
        return;
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        if (q->unit_wait != NULL) {
            jb_coord_quota_cancel(q->unit_wait);
            q->unit_wait = NULL;
        }
    }
    /* Every submit still waiting is told, now: nothing runs after close. */
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        for (job *j = q->pending.head; j != NULL; j = j->next)
            answer_all(qs, j, JB_ECLOSED, "the coordinator is closing");
        for (jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
            for (job *j = w->out.head; j != NULL; j = j->next)
                answer_all(qs, j, JB_ECLOSED, "the coordinator is closing");
        }
    }
    if (qs->cache_dirty)
        cache_flush(qs);
    qs->closed = 1;
    while (qs->answers.head != NULL) {
        deliver(qs, qs->answers.head);
    }
    if (qs->timer != NULL) {
        uv_close((uv_handle_t *)qs->timer, on_timer_closed);
        qs->timer = NULL;
    }
}

void jb__queues_free(jb__queues *qs)
{
    if (qs == NULL)
        return;
    if (qs->timer != NULL) {
        /* Freed without a close (a failed start): the handle goes on its own. */
        uv_close((uv_handle_t *)qs->timer, on_timer_closed);
        qs->timer = NULL;
    }
    jb__cache_writer_free(qs->writer);
    while (qs->cache_head != NULL)
        cache_unlink(qs, qs->cache_head);
    queue *q = qs->queues;
    while (q != NULL) {
        queue *next = q->next;
        for (job *j = q->pending.head; j != NULL; j = q->pending.head) {
            job_remove(&q->pending, j);
            job_free(j);
        }
        jb_queue_worker *w = q->workers;
        while (w != NULL) {
            jb_queue_worker *wn = w->next;
            for (job *j = w->out.head; j != NULL; j = w->out.head) {
                job_remove(&w->out, j);
                job_free(j);
            }
            free(w);
            w = wn;
        }
        poison_clear(q);
        free(q);
        q = next;
    }
    free(qs);
}

/* ---- Submit ---------------------------------------------------------------------- */

static int id_in_use(const queue *q, const char *id)
{
    for (const job *j = q->pending.head; j != NULL; j = j->next) {
        for (const jb_queue_submit *s = j->subs.head; s != NULL; s = s->next) {
            if (strcmp(s->request_id, id) == 0)
                return 1;
        }
    }
    for (const jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
        for (const job *j = w->out.head; j != NULL; j = j->next) {
            if (strcmp(j->id, id) == 0)
                return 1;
            for (const jb_queue_submit *s = j->subs.head; s != NULL; s = s->next) {
                if (strcmp(s->request_id, id) == 0)
                    return 1;
            }
        }
    }
    return 0;
}

/* An equal job waiting or out that a new submit may join. */
static job *job_equal(queue *q, uint64_t hash, const char *type, const void *payload, size_t len)
{
    for (job *j = q->pending.head; j != NULL; j = j->next) {
        if (!j->bypass && j->hash == hash && j->len == len && strcmp(j->type, type) == 0 &&
            (len == 0 || memcmp(j->payload, payload, len) == 0))
            return j;
    }
    for (jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
        for (job *j = w->out.head; j != NULL; j = j->next) {
            if (!j->bypass && j->hash == hash && j->len == len && strcmp(j->type, type) == 0 &&
                (len == 0 || memcmp(j->payload, payload, len) == 0))
                return j;
        }
    }
    return NULL;
}

static jb_status check_submit(jb__queues *qs, const jb_queued_request *req, queue **out,
                              jb_error *err)
{
    if (qs->co->closing || qs->closed)
        return jb_error_set(err, JB_ECLOSED, "the coordinator is closing");
    if (req->queue == NULL || req->queue[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "a queue is required");
    if (strlen(req->queue) > JB_COORD_MAX_QUEUE)
        return jb_error_set(err, JB_EINVAL, "queue name longer than %d bytes", JB_COORD_MAX_QUEUE);
    if (req->request_id != NULL && strlen(req->request_id) > JB_COORD_MAX_REQUEST_ID)
        return jb_error_set(err, JB_EINVAL, "request id longer than %d bytes",
                            JB_COORD_MAX_REQUEST_ID);
    if (req->type != NULL && strlen(req->type) > JB_COORD_MAX_TYPE)
        return jb_error_set(err, JB_EINVAL, "type longer than %d bytes", JB_COORD_MAX_TYPE);
    if (req->submitter != NULL && strlen(req->submitter) > JB_COORD_MAX_NAME)
        return jb_error_set(err, JB_EINVAL, "submitter longer than %d bytes", JB_COORD_MAX_NAME);
    if (req->payload == NULL && req->payload_len > 0)
        return jb_error_set(err, JB_EINVAL, "a payload length without a payload");
    queue *q = queue_find(qs, req->queue);
    if (q == NULL || !q->configured)
        return jb_error_set(err, JB_ENOENT, "no queue '%s'", req->queue);
    if (req->request_id != NULL && req->request_id[0] != '\0' && id_in_use(q, req->request_id))
        return jb_error_set(err, JB_EEXIST, "request id '%s' is in use", req->request_id);
    *out = q;
    return JB_OK;
}

static jb_queue_submit *submit_alloc(jb__queues *qs, queue *q, const jb_queued_request *req,
                                     jb_queue_submit_cb cb, void *ud, uint64_t now)
{
    jb_queue_submit *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->qs = qs;
    s->cb = cb;
    s->ud = ud;
    uint32_t wait = req->timeout_ms > 0 ? req->timeout_ms : q->conf.timeout_ms;
    if (req->max_wait_ms > 0 && req->max_wait_ms < wait)
        wait = req->max_wait_ms;
    s->deadline = now + wait;
    if (req->request_id != NULL && req->request_id[0] != '\0') {
        s->request_id = strdup(req->request_id);
    } else {
        char id[JB_COORD_MAX_QUEUE + 48];
        snprintf(id, sizeof(id), "%s-%llx-%llu", q->name, (unsigned long long)qs->started_wall,
                 (unsigned long long)++qs->next_seq);
        s->request_id = strdup(id);
    }
    if (s->request_id == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

/* A cache hit: answered from @e on the next turn. */
static jb_status submit_cached(jb__queues *qs, queue *q, cache_entry *e, jb_queue_submit *s)
{
    job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return JB_ENOMEM;
    j->resp_type = strdup(e->resp_type);
    j->resp_payload = dup_bytes(e->resp_payload, e->resp_len);
    if (j->resp_type == NULL || j->resp_payload == NULL) {
        job_free(j);
        return JB_ENOMEM;
    }
    j->resp_len = e->resp_len;
    s->cached = 1;
    q->cache_hits++;
    answer(qs, s, JB_OK, j, NULL);
    return JB_OK;
}

/* Units a new job at @priority waits for, less what @q holds. */
static uint32_t units_needed(const queue *q, int32_t priority)
{
    uint32_t ahead = 0;
    for (const job *j = q->pending.head; j != NULL && j->priority >= priority; j = j->next)
        ahead++;
    uint32_t have = (uint32_t)q->token;
    return ahead + 1 > have ? ahead + 1 - have : 0;
}

jb_status jb_coord_queue_submit(jb_coord *co, const jb_queued_request *req, jb_queue_submit_cb cb,
                                void *userdata, jb_queue_submit **out, uint64_t *retry_after_ms,
                                jb_error *err)
{
    jb__queues *qs = co->queues;
    queue *q = NULL;
    jb_status st = check_submit(qs, req, &q, err);
    if (st != JB_OK)
        return st;
    const char *type = req->type != NULL ? req->type : "";
    uint64_t hash = key_hash(q->name, type, req->payload, req->payload_len);
    uint64_t now = jb__coord_now_ms(co);
    jb_queue_submit *s = submit_alloc(qs, q, req, cb, userdata, now);
    if (s == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");

    cache_entry *e = req->bypass_cache || co->set.cache_ttl_ms == 0
                         ? NULL
                         : cache_find(qs, q, hash, type, req->payload, req->payload_len);
    if (e != NULL) {
        if (submit_cached(qs, q, e, s) != JB_OK) {
            submit_free(s);
            return jb_error_set(err, JB_ENOMEM, "out of memory");
        }
        q->submitted++;
        if (out != NULL)
            *out = s;
        return JB_OK;
    }
    job *j = req->bypass_cache ? NULL : job_equal(q, hash, type, req->payload, req->payload_len);
    if (j != NULL) {
        s->job = j;
        sub_append(&j->subs, s);
        if (req->priority > j->priority && j->worker == NULL) {
            job_remove(&q->pending, j);
            j->priority = req->priority;
            pending_insert(q, j);
        }
        q->coalesced++;
        q->submitted++;
        arm(qs, UINT64_MAX);
        if (out != NULL)
            *out = s;
        return JB_OK;
    }
    if (q->n_workers == 0) {
        submit_free(s);
        return jb_error_set(err, JB_EUNAVAILABLE, "no worker takes queue '%s'", q->name);
    }
    if (q->pending.n >= q->conf.max_depth) {
        submit_free(s);
        if (retry_after_ms != NULL)
            *retry_after_ms = 1000;
        return jb_error_set(err, JB_EBACKPRESSURE, "queue '%s' holds %u requests already", q->name,
                            q->conf.max_depth);
    }
    if (q->conf.budget) {
        uint32_t need = units_needed(q, req->priority);
        uint64_t wait = need > 0 ? jb__quota_time_until(co->quota, need) : 0;
        if (wait > 0 && now + wait > s->deadline) {
            submit_free(s);
            if (retry_after_ms != NULL)
                *retry_after_ms = wait;
            return jb_error_set(err, JB_ERATELIMITED,
                                "no unit of budget before the deadline: one frees in %llu ms",
                                (unsigned long long)wait);
        }
    }
    j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->id = strdup(s->request_id);
        j->type = strdup(type);
        j->payload = dup_bytes(req->payload, req->payload_len);
        j->submitter = strdup(req->submitter != NULL ? req->submitter : "");
    }
    if (j == NULL || j->id == NULL || j->type == NULL || j->payload == NULL ||
        j->submitter == NULL) {
        if (j != NULL)
            job_free(j);
        submit_free(s);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    j->q = q;
    j->len = req->payload_len;
    j->hash = hash;
    j->priority = req->priority;
    j->seq = ++qs->next_seq;
    j->enqueued = now;
    j->enqueued_wall = jb__coord_wall_ms();
    j->bypass = req->bypass_cache;
    s->job = j;
    sub_append(&j->subs, s);
    pending_insert(q, j);
    q->submitted++;
    arm(qs, 0);
    if (out != NULL)
        *out = s;
    return JB_OK;
}

void jb_coord_queue_cancel(jb_queue_submit *s)
{
    if (s == NULL)
        return;
    jb__queues *qs = s->qs;
    job *j = s->job;
    if (j == NULL) {
        /* On the answers list: it is simply not told. */
        s->cb = NULL;
        return;
    }
    sub_remove(&j->subs, s);
    s->job = NULL;
    submit_free(s);
    if (j->subs.n == 0 && j->worker == NULL) {
        job_remove(&j->q->pending, j);
        job_maybe_free(j);
    }
    arm(qs, UINT64_MAX);
}

/* ---- Workers --------------------------------------------------------------------- */

jb_status jb_coord_queue_worker_new(jb_coord *co, const char *queue_name, uint32_t max_outstanding,
                                    jb_queue_worker_cb cb, void *userdata, jb_queue_worker **out,
                                    jb_error *err)
{
    jb__queues *qs = co->queues;
    if (co->closing || qs->closed)
        return jb_error_set(err, JB_ECLOSED, "the coordinator is closing");
    if (queue_name == NULL || queue_name[0] == '\0' || strlen(queue_name) > JB_COORD_MAX_QUEUE)
        return jb_error_set(err, JB_EINVAL, "a queue name of 1..%d bytes is required",
                            JB_COORD_MAX_QUEUE);
    if (cb == NULL)
        return jb_error_set(err, JB_EINVAL, "a worker needs a callback");
    queue *q = queue_find(qs, queue_name);
    if (q == NULL || !q->configured)
        return jb_error_set(err, JB_ENOENT, "no queue '%s'", queue_name);
    jb_queue_worker *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    w->q = q;
    w->cb = cb;
    w->ud = userdata;
    w->max_outstanding = max_outstanding > 0 ? max_outstanding : 1;
    w->next = q->workers;
    if (q->workers != NULL)
        q->workers->prev = w;
    q->workers = w;
    q->n_workers++;
    arm(qs, 0);
    *out = w;
    return JB_OK;
}

void jb_coord_queue_worker_free(jb_queue_worker *w)
{
    if (w == NULL)
        return;
    queue *q = w->q;
    jb__queues *qs = q->qs;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        q->workers = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    q->n_workers--;
    for (job *j = w->out.head; j != NULL; j = w->out.head) {
        job_remove(&w->out, j);
        j->worker = NULL;
        if (qs->closed) {
            job_maybe_free(j);
        } else if (j->deliveries >= q->conf.max_deliveries) {
            char text[128];
            snprintf(text, sizeof(text),
                     "poisoned: handed to %u workers that all went away without answering",
                     j->deliveries);
            jb_log(JB_LOG_WARN, "coord", "request poisoned", "queue=%s request_id=%s deliveries=%u",
                   q->name, j->id, j->deliveries);
            answer_all(qs, j, JB_EIO, text);
            poison_keep(q, j);
        } else if (j->subs.n == 0 || !q->configured) {
            answer_all(qs, j, JB_EUNAVAILABLE, "the queue was removed from the configuration");
            job_maybe_free(j);
        } else {
            pending_insert(q, j);
        }
    }
    free(w);
    arm(qs, 0);
}

jb_status jb_coord_queue_respond(jb_coord *co, const jb_queued_response *resp, jb_error *err)
{
    jb__queues *qs = co->queues;
    if (resp->request_id == NULL || resp->request_id[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "a request id is required");
    for (queue *q = qs->queues; q != NULL; q = q->next) {
        for (jb_queue_worker *w = q->workers; w != NULL; w = w->next) {
            for (job *j = w->out.head; j != NULL; j = j->next) {
                if (strcmp(j->id, resp->request_id) != 0)
                    continue;
                if (job_set_answer(j, resp) != JB_OK)
                    return jb_error_set(err, JB_ENOMEM, "out of memory");
                job_remove(&w->out, j);
                j->worker = NULL;
                int failed = resp->error != NULL && resp->error[0] != '\0';
                if (!failed)
                    cache_put(qs, j);
                while (j->subs.head != NULL)
                    answer(qs, j->subs.head, JB_OK, j, failed ? resp->error : NULL);
                job_maybe_free(j);
                arm(qs, 0);
                return JB_OK;
            }
        }
    }
    return jb_error_set(err, JB_ENOENT, "no worker holds request '%s'", resp->request_id);
}

/* ---- Status ---------------------------------------------------------------------- */

void jb_coord_foreach_queue(jb_coord *co, void (*fn)(const jb_queue_info *q, void *ud), void *ud)
{
    uint64_t now = jb__coord_now_ms(co);
    for (queue *q = co->queues->queues; q != NULL; q = q->next) {
        if (!q->configured)
            continue;
        jb_queue_info info = {.name = q->name,
                              .budget = q->conf.budget ? "claude" : "none",
                              .max_depth = q->conf.max_depth,
                              .depth = (uint32_t)q->pending.n,
                              .workers = q->n_workers,
                              .submitted = q->submitted,
                              .cache_hits = q->cache_hits,
                              .coalesced = q->coalesced,
                              .poisoned = q->poisoned,
                              .cache_bytes = q->cache_bytes,
                              .cache_entries = q->cache_entries};
        for (const job *j = q->pending.head; j != NULL; j = j->next) {
            if (now - j->enqueued > info.oldest_wait_ms)
                info.oldest_wait_ms = now - j->enqueued;
        }
        for (const jb_queue_worker *w = q->workers; w != NULL; w = w->next)
            info.in_flight += (uint32_t)w->out.n;
        fn(&info, ud);
    }
}

void jb_coord_foreach_queue_poison(jb_coord *co, const char *queue_name,
                                   void (*fn)(const jb_queued_task *t, void *ud), void *ud)
{
    queue *q = queue_name != NULL ? queue_find(co->queues, queue_name) : NULL;
    if (q == NULL)
        return;
    for (size_t i = 0; i < q->n_poison; i++) {
        const job *j = q->poison_jobs[(q->poison_first + i) % JB_COORD_MAX_POISON_KEPT];
        jb_queued_task t = {.request_id = j->id,
                            .queue = q->name,
                            .type = j->type,
                            .payload = j->payload,
                            .payload_len = j->len,
                            .priority = j->priority,
                            .submitter = j->submitter,
                            .enqueued_ms = j->enqueued_wall,
                            .delivery_count = j->deliveries};
        fn(&t, ud);
    }
}
