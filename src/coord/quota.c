/*
 * The API budget (include/jimbot/coord.h "The API budget";
 * docs/coordinator.md "The API budget").
 *
 * The window: every grant is a spend {at_ms, count, component}, at_ms on
 * the wall clock (so that it means the same after a restart). A spend
 * counts until at_ms + window_ms; the spends are kept sorted by at_ms, so
 * the ones that left the window are always at the front and are dropped
 * before every decision. A new spend is never stamped earlier than the
 * last one (a wall clock stepped back makes it count a little longer,
 * never shorter). Memory: the sum of the counts in the window is at most
 * the hourly limit in force when they were granted, so there are at most
 * that many entries (a grant of the same component in the same millisecond
 * joins the last one). Each component that has spends has a small record
 * with its total, for shares and the status.
 *
 * Requests: one jb_quota_wait per acquire, in exactly one of these lists:
 *
 *   waiters   waiting for budget: priority (higher first), then arrival
 *   durable   granted, spend added, waiting for jb__coord_persist
 *   answers   answered (not granted, or the waiting became void), to be
 *             delivered by the timer on a later loop turn
 *
 * Serving order: the waiters are served strictly in order. A waiter whose
 * own share is used up is passed over (its share frees only with its own
 * spends, which others do not delay), but a waiter that the whole budget
 * cannot serve blocks every one behind it, so a higher priority is never
 * overtaken by a lower one with a smaller count. A request without
 * wait_ms takes its place in that order too: it is granted only when it
 * would be served now.
 *
 * One timer (made lazily, freed in its close callback, independent of the
 * struct) delivers answers, wakes at the next moment a spend leaves the
 * window while someone waits, and at the next waiter's deadline.
 *
 * Loop thread only. No user callback runs inside acquire or cancel, and
 * none after jb__quota_close.
 */
#include "coord/coord_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct comp {
    char *name;
    uint32_t used;   /* the counts of its spends in the list */
    size_t n_spends; /* the record goes with its last spend */
    struct comp *next;
} comp;

typedef struct spend {
    int64_t at_ms;
    uint32_t count;
    uint64_t id;
    comp *c;
} spend;

typedef enum wait_state { W_WAITING, W_DURABLE, W_ANSWER, W_DONE } wait_state;

struct jb_quota_wait {
    jb__quota *q;
    wait_state state;
    jb_quota_cb cb; /* NULL once cancelled */
    void *ud;
    char component[JB_COORD_MAX_NAME + 1];
    uint32_t count;
    int32_t priority;
    uint64_t deadline; /* loop ms */
    uint64_t spend_id;
    uint64_t turn; /* the timer turn an answer was queued in */
    jb_quota_result r;
    jb_quota_wait *prev, *next;
};

typedef struct wait_list {
    jb_quota_wait *head, *tail;
    size_t n;
} wait_list;

struct jb__quota {
    jb_coord *co;
    spend *spends; /* [first, first + n) in use, sorted by at_ms */
    size_t first, n, cap;
    uint32_t used; /* sum of the counts in the list */
    comp *comps;
    uint64_t next_spend_id;
    uint64_t turn; /* timer runs, so that one delivers only older answers */
    wait_list waiters, durable, answers;
    uv_timer_t *timer; /* NULL until first needed */
    int closed;
};

/* ---- Lists --------------------------------------------------------------------- */

static void list_remove(wait_list *l, jb_quota_wait *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    w->prev = w->next = NULL;
    l->n--;
}

/* Inserts @w before @at (NULL: at the end). */
static void list_insert(wait_list *l, jb_quota_wait *at, jb_quota_wait *w)
{
    w->next = at;
    w->prev = at != NULL ? at->prev : l->tail;
    if (w->prev != NULL)
        w->prev->next = w;
    else
        l->head = w;
    if (at != NULL)
        at->prev = w;
    else
        l->tail = w;
    l->n++;
}

static wait_list *list_of(jb__quota *q, const jb_quota_wait *w)
{
    switch (w->state) {
    case W_WAITING:
        return &q->waiters;
    case W_DURABLE:
        return &q->durable;
    case W_ANSWER:
        return &q->answers;
    default:
        return NULL;
    }
}

static void move_to(jb__quota *q, jb_quota_wait *w, wait_state to)
{
    wait_list *from = list_of(q, w);
    if (from != NULL)
        list_remove(from, w);
    w->state = to;
    wait_list *dest = list_of(q, w);
    if (dest != NULL)
        list_insert(dest, NULL, w);
}

/* ---- The window -------------------------------------------------------------- */

static comp *comp_find(const jb__quota *q, const char *name)
{
    for (comp *c = q->comps; c != NULL; c = c->next) {
        if (strcmp(c->name, name) == 0)
            return c;
    }
    return NULL;
}

static comp *comp_get(jb__quota *q, const char *name)
{
    comp *c = comp_find(q, name);
    if (c != NULL)
        return c;
    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->name = strdup(name)) == NULL) {
        free(c);
        return NULL;
    }
    c->next = q->comps;
    q->comps = c;
    return c;
}

/* Takes @count off @c; @drop: one of its spends is gone (the last frees it). */
static void comp_put(jb__quota *q, comp *c, uint32_t count, int drop)
{
    c->used -= count;
    if (!drop || --c->n_spends > 0)
        return;
    for (comp **pp = &q->comps; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    free(c->name);
    free(c);
}

static spend *spend_at(const jb__quota *q, size_t i)
{
    return &q->spends[q->first + i];
}

/* Room for one more spend at the end. */
static jb_status spends_reserve(jb__quota *q)
{
    if (q->first > 0 && q->first + q->n == q->cap) {
        memmove(q->spends, q->spends + q->first, q->n * sizeof(*q->spends));
        q->first = 0;
    }
    if (q->first + q->n < q->cap)
        return JB_OK;
    size_t cap = q->cap > 0 ? q->cap * 2 : 16;
    spend *s = realloc(q->spends, cap * sizeof(*s));
    if (s == NULL)
        return JB_ENOMEM;
    q->spends = s;
    q->cap = cap;
    return JB_OK;
}

/*
 * Appends a spend (at_ms not before the last one; one of the same component
 * in the same millisecond joins it) and gives its id in *@id (may be NULL).
 * JB_ENOMEM leaves nothing changed.
 */
static jb_status spend_add(jb__quota *q, int64_t at_ms, uint32_t count, const char *component,
                           uint64_t *id)
{
    spend *last = q->n > 0 ? spend_at(q, q->n - 1) : NULL;
    if (last != NULL && at_ms < last->at_ms)
        at_ms = last->at_ms;
    if (last != NULL && at_ms == last->at_ms && strcmp(last->c->name, component) == 0) {
        last->count += count;
        last->c->used += count;
        q->used += count;
        if (id != NULL)
            *id = last->id;
        return JB_OK;
    }
    if (spends_reserve(q) != JB_OK)
        return JB_ENOMEM;
    comp *c = comp_get(q, component);
    if (c == NULL)
        return JB_ENOMEM;
    c->used += count;
    c->n_spends++;
    *spend_at(q, q->n) = (spend){at_ms, count, ++q->next_spend_id, c};
    q->n++;
    q->used += count;
    if (id != NULL)
        *id = q->next_spend_id;
    return JB_OK;
}

/* Takes @count back from spend @id (its write failed); a no-op once it left the window. */
static void spend_remove(jb__quota *q, uint64_t id, uint32_t count)
{
    for (size_t i = 0; i < q->n; i++) {
        spend *s = spend_at(q, i);
        if (s->id != id)
            continue;
        if (count > s->count)
            count = s->count;
        s->count -= count;
        q->used -= count;
        comp_put(q, s->c, count, s->count == 0);
        if (s->count == 0) {
            memmove(s, s + 1, (q->n - i - 1) * sizeof(*s));
            q->n--;
        }
        return;
    }
}

/* Drops the spends that left the window by @now (wall clock). */
static void expire(jb__quota *q, int64_t now)
{
    int64_t window = (int64_t)q->co->set.window_ms;
    while (q->n > 0 && q->spends[q->first].at_ms + window <= now) {
        spend *s = &q->spends[q->first];
        q->used -= s->count;
        comp_put(q, s->c, s->count, 1);
        q->first++;
        q->n--;
    }
    if (q->n == 0)
        q->first = 0;
}

static uint32_t comp_used(const jb__quota *q, const char *component)
{
    const comp *c = comp_find(q, component);
    return c != NULL ? c->used : 0;
}

/*
 * Milliseconds from @now until at least @need_all of all the spends and
 * @need_own of @component's have left the window; window_ms when the
 * spends in the window are not enough (waiters ahead will spend first).
 */
static uint64_t time_until_free(const jb__quota *q, int64_t now, uint64_t need_all,
                                uint64_t need_own, const char *component)
{
    uint64_t freed_all = 0, freed_own = 0;
    int64_t window = (int64_t)q->co->set.window_ms;
    for (size_t i = 0; i < q->n; i++) {
        if (freed_all >= need_all && freed_own >= need_own)
            break;
        const spend *s = spend_at(q, i);
        freed_all += s->count;
        if (strcmp(s->c->name, component) == 0)
            freed_own += s->count;
        if (freed_all >= need_all && freed_own >= need_own) {
            int64_t t = s->at_ms + window - now;
            return t > 0 ? (uint64_t)t : 1;
        }
    }
    if (freed_all >= need_all && freed_own >= need_own)
        return 1;
    return q->co->set.window_ms;
}

/* Whether @component's own share keeps @count from being spent now. */
static int share_blocked(const jb__quota *q, const char *component, uint32_t count)
{
    uint32_t share = jb__coord_share(q->co, component);
    return share > 0 && comp_used(q, component) + (uint64_t)count > share;
}

static int fits_budget(const jb__quota *q, uint32_t count)
{
    return (uint64_t)q->used + count <= q->co->set.hourly_limit;
}

/* What @component may still spend: the budget's remaining, capped by its share. */
static uint32_t remaining_for(const jb__quota *q, const char *component)
{
    uint32_t limit = q->co->set.hourly_limit;
    uint32_t left = q->used < limit ? limit - q->used : 0;
    uint32_t share = jb__coord_share(q->co, component);
    if (share > 0) {
        uint32_t used = comp_used(q, component);
        uint32_t own = used < share ? share - used : 0;
        if (own < left)
            left = own;
    }
    return left;
}

/*
 * How long until @w could be served: the budget must free its count plus
 * what the waiters ahead of it that are not held by their shares need,
 * and its share its count.
 */
static uint64_t retry_after(const jb__quota *q, const jb_quota_wait *w, int64_t now)
{
    uint64_t ahead = 0;
    for (const jb_quota_wait *a = w->prev; w->state == W_WAITING && a != NULL; a = a->prev) {
        if (!share_blocked(q, a->component, a->count))
            ahead += a->count;
    }
    uint64_t limit = q->co->set.hourly_limit;
    uint64_t want = (uint64_t)q->used + ahead + w->count;
    uint64_t need_all = want > limit ? want - limit : 0;
    uint64_t share = jb__coord_share(q->co, w->component);
    uint64_t own = (uint64_t)comp_used(q, w->component) + w->count;
    uint64_t need_own = share > 0 && own > share ? own - share : 0;
    return time_until_free(q, now, need_all, need_own, w->component);
}

/* ---- Serving ------------------------------------------------------------------ */

static void arm(jb__quota *q);

/* Answers @w "not granted" (delivered by the timer). */
static void refuse(jb__quota *q, jb_quota_wait *w, int64_t now, uint64_t retry)
{
    w->r = (jb_quota_result){.granted = 0,
                             .remaining = remaining_for(q, w->component),
                             .retry_after_ms = retry > 0 ? retry : retry_after(q, w, now),
                             .limit = q->co->set.hourly_limit};
    w->turn = q->turn;
    move_to(q, w, W_ANSWER);
}

static void on_durable(jb_status status, const jb_error *err, void *ud);

/* Spends @w's count and makes it durable; on JB_ENOMEM @w stays where it is. */
static jb_status grant(jb__quota *q, jb_quota_wait *w, int64_t now)
{
    if (spend_add(q, now, w->count, w->component, &w->spend_id) != JB_OK)
        return JB_ENOMEM;
    w->r = (jb_quota_result){.granted = 1,
                             .remaining = remaining_for(q, w->component),
                             .limit = q->co->set.hourly_limit};
    move_to(q, w, W_DURABLE);
    jb__coord_persist(q->co, on_durable, w);
    return JB_OK;
}

/* A waiter the settings in force could never serve (lowered limit or share). */
static int never_fits(const jb__quota *q, const jb_quota_wait *w)
{
    uint32_t share = jb__coord_share(q->co, w->component);
    return w->count > q->co->set.hourly_limit || (share > 0 && w->count > share);
}

/* Serves the waiters in order (see the top of the file). Calls no user callback. */
static void serve(jb__quota *q)
{
    int64_t now = jb__coord_wall_ms();
    expire(q, now);
    jb_quota_wait *w = q->waiters.head, *next_w;
    while (w != NULL) {
        jb_quota_wait *next = w->next;
        if (never_fits(q, w))
            refuse(q, w, now, q->co->set.window_ms);
        w = next;
    }
    for (w = q->waiters.head; w != NULL; w = next_w) {
        next_w = w->next;
        if (share_blocked(q, w->component, w->count))
            continue;
        if (!fits_budget(q, w->count) || grant(q, w, now) != JB_OK)
            break;
    }
}

static void deliver(jb_quota_wait *w, jb_status status, const jb_quota_result *r,
                    const jb_error *err)
{
    jb_quota_cb cb = w->cb;
    w->state = W_DONE;
    if (cb != NULL)
        cb(status, r, err, w->ud);
    free(w);
}

static void on_durable(jb_status status, const jb_error *err, void *ud)
{
    jb_quota_wait *w = ud;
    jb__quota *q = w->q;
    list_remove(&q->durable, w);
    w->state = W_DONE;
    if (q->closed) {
        free(w);
        return;
    }
    if (status == JB_OK) {
        deliver(w, JB_OK, &w->r, NULL);
        return;
    }
    /* Not durable: it was not spent, and the budget it held serves others. */
    spend_remove(q, w->spend_id, w->count);
    deliver(w, status, NULL, err);
    if (!q->closed) {
        serve(q);
        arm(q);
    }
}

/* ---- The timer ----------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void on_timer(uv_timer_t *t)
{
    jb__quota *q = t->data;
    serve(q);
    int64_t now = jb__coord_wall_ms();
    uint64_t mono = jb__coord_now_ms(q->co);
    int refused = 0;
    jb_quota_wait *w = q->waiters.head;
    while (w != NULL) {
        jb_quota_wait *next = w->next;
        if (w->deadline <= mono) {
            refuse(q, w, now, 0);
            refused = 1;
        }
        w = next;
    }
    if (refused)
        serve(q); /* the ones behind a head that gave up */
    /* Answers queued by the callbacks below wait for the next turn. */
    uint64_t turn = q->turn++;
    while (!q->closed && q->answers.head != NULL && q->answers.head->turn <= turn) {
        jb_quota_wait *a = q->answers.head;
        list_remove(&q->answers, a);
        deliver(a, JB_OK, &a->r, NULL);
    }
    if (!q->closed)
        arm(q);
}

/* When the timer must run next, in ms from now; UINT64_MAX: not needed. */
static uint64_t next_wake(const jb__quota *q)
{
    if (q->answers.head != NULL)
        return 0;
    if (q->waiters.head == NULL)
        return UINT64_MAX;
    uint64_t mono = jb__coord_now_ms(q->co), wake = UINT64_MAX;
    for (const jb_quota_wait *w = q->waiters.head; w != NULL; w = w->next) {
        uint64_t d = w->deadline > mono ? w->deadline - mono : 0;
        if (d < wake)
            wake = d;
    }
    if (q->n > 0) {
        int64_t t = q->spends[q->first].at_ms + (int64_t)q->co->set.window_ms - jb__coord_wall_ms();
        uint64_t d = t > 0 ? (uint64_t)t : 0;
        if (d < wake)
            wake = d;
    }
    return wake;
}

static void arm(jb__quota *q)
{
    uint64_t wake = next_wake(q);
    if (wake == UINT64_MAX) {
        if (q->timer != NULL)
            uv_timer_stop(q->timer);
        return;
    }
    if (q->timer == NULL) {
        q->timer = malloc(sizeof(*q->timer));
        if (q->timer == NULL)
            JB_BUG("out of memory");
        uv_timer_init(q->co->loop, q->timer);
        q->timer->data = q;
    }
    uv_timer_start(q->timer, on_timer, wake, 0);
}

/* ---- Life ------------------------------------------------------------------------ */

jb_status jb__quota_new(jb_coord *co, jb__quota **out, jb_error *err)
{
    jb__quota *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    q->co = co;
    *out = q;
    return JB_OK;
}

static int by_time(const void *a, const void *b)
{
    int64_t x = ((const jb__saved_spend *)a)->at_ms, y = ((const jb__saved_spend *)b)->at_ms;
    return (x > y) - (x < y);
}

/*
 * Takes the saved spends. Those that left the window are dropped at the
 * first decision, under the window then in force (the configuration is
 * applied after the restore).
 */
jb_status jb__quota_restore(jb__quota *q, const jb__state_image *img, jb_error *err)
{
    jb__saved_spend *sorted = NULL;
    if (img->n_spends > 0) {
        sorted = malloc(img->n_spends * sizeof(*sorted));
        if (sorted == NULL)
            return jb_error_set(err, JB_ENOMEM, "out of memory restoring the API budget");
        memcpy(sorted, img->spends, img->n_spends * sizeof(*sorted));
        qsort(sorted, img->n_spends, sizeof(*sorted), by_time);
    }
    jb_status s = JB_OK;
    for (size_t i = 0; i < img->n_spends && s == JB_OK; i++) {
        const jb__saved_spend *sp = &sorted[i];
        if (sp->count == 0 || sp->component == NULL || sp->component[0] == '\0')
            continue;
        if (spend_add(q, sp->at_ms, sp->count, sp->component, NULL) != JB_OK)
            s = jb_error_set(err, JB_ENOMEM, "out of memory restoring the API budget");
    }
    free(sorted);
    return s;
}

jb_status jb__quota_save(jb__quota *q, jb__state_image *img)
{
    if (q->n == 0)
        return JB_OK;
    jb__saved_spend *s = realloc(img->spends, (img->n_spends + q->n) * sizeof(*s));
    if (s == NULL)
        return JB_ENOMEM;
    img->spends = s;
    for (size_t i = 0; i < q->n; i++) {
        const spend *sp = spend_at(q, i);
        char *name = strdup(sp->c->name);
        if (name == NULL)
            return JB_ENOMEM;
        s[img->n_spends++] = (jb__saved_spend){sp->at_ms, sp->count, name};
    }
    return JB_OK;
}

uint64_t jb__quota_time_until(jb__quota *q, uint32_t count)
{
    int64_t now = jb__coord_wall_ms();
    expire(q, now);
    uint64_t want = (uint64_t)q->used + count;
    uint64_t limit = q->co->set.hourly_limit;
    if (want <= limit)
        return 0;
    return time_until_free(q, now, want - limit, 0, "");
}

void jb__quota_settings_changed(jb__quota *q)
{
    if (q == NULL || q->closed)
        return;
    serve(q);
    arm(q);
}

void jb__quota_close(jb__quota *q)
{
    if (q == NULL || q->closed)
        return;
    q->closed = 1;
    jb_error err;
    jb_error_set(&err, JB_ECLOSED, "the coordinator is closing");
    wait_list *lists[] = {&q->waiters, &q->answers};
    for (size_t i = 0; i < 2; i++) {
        while (lists[i]->head != NULL) {
            jb_quota_wait *w = lists[i]->head;
            list_remove(lists[i], w);
            deliver(w, JB_ECLOSED, NULL, &err);
        }
    }
    /* Grants being made durable stay spent; their holders hear JB_ECLOSED now. */
    for (jb_quota_wait *w = q->durable.head; w != NULL; w = w->next) {
        jb_quota_cb cb = w->cb;
        w->cb = NULL;
        if (cb != NULL)
            cb(JB_ECLOSED, NULL, &err, w->ud);
    }
    if (q->timer != NULL) {
        uv_close((uv_handle_t *)q->timer, on_timer_closed);
        q->timer = NULL;
    }
}

void jb__quota_free(jb__quota *q)
{
    if (q == NULL)
        return;
    wait_list *lists[] = {&q->waiters, &q->durable, &q->answers};
    for (size_t i = 0; i < 3; i++) {
        while (lists[i]->head != NULL) {
            jb_quota_wait *w = lists[i]->head;
            list_remove(lists[i], w);
            free(w);
        }
    }
    if (q->timer != NULL)
        uv_close((uv_handle_t *)q->timer, on_timer_closed);
    while (q->comps != NULL) {
        comp *c = q->comps;
        q->comps = c->next;
        free(c->name);
        free(c);
    }
    free(q->spends);
    free(q);
}

/* ---- The API ------------------------------------------------------------------------ */

static jb_status check_request(const jb_coord *co, const jb_quota_request *req, uint32_t count,
                               jb_error *err)
{
    jb_status s = jb__coord_check_component(req->component, err);
    if (s != JB_OK)
        return s;
    uint32_t limit = co->set.hourly_limit;
    if (count > limit)
        return jb_error_set(err, JB_EINVAL,
                            "count %u is above the hourly limit %u: it could never be granted",
                            count, limit);
    uint32_t share = jb__coord_share(co, req->component);
    if (share > 0 && count > share)
        return jb_error_set(err, JB_EINVAL,
                            "count %u is above the share %u of component '%s': it could never "
                            "be granted",
                            count, share, req->component);
    return JB_OK;
}

/* Places @w among the waiters: higher priority first, then arrival. */
static void enqueue(jb__quota *q, jb_quota_wait *w)
{
    jb_quota_wait *at = q->waiters.head;
    while (at != NULL && at->priority >= w->priority)
        at = at->next;
    w->state = W_WAITING;
    list_insert(&q->waiters, at, w);
}

jb_status jb_coord_quota_acquire(jb_coord *co, const jb_quota_request *req, jb_quota_cb cb,
                                 void *userdata, jb_quota_wait **out, jb_error *err)
{
    jb__quota *q = co->quota;
    if (co->closing || q->closed)
        return jb_error_set(err, JB_ECLOSED, "the coordinator is closing");
    uint32_t count = req->count > 0 ? req->count : 1;
    jb_status s = check_request(co, req, count, err);
    if (s != JB_OK)
        return s;
    jb_quota_wait *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    *w = (jb_quota_wait){
        .q = q, .cb = cb, .ud = userdata, .count = count, .priority = req->priority};
    memcpy(w->component, req->component, strlen(req->component) + 1);
    w->deadline = jb__coord_now_ms(co) + req->wait_ms;
    enqueue(q, w);
    serve(q);
    if (w->state == W_WAITING && req->wait_ms == 0) {
        refuse(q, w, jb__coord_wall_ms(), 0);
    } else if (w->state == W_WAITING && q->waiters.n > co->opts.max_waiters) {
        list_remove(&q->waiters, w);
        free(w);
        arm(q);
        return jb_error_set(err, JB_EBACKPRESSURE, "%u budget requests wait already",
                            co->opts.max_waiters);
    }
    arm(q);
    if (out != NULL)
        *out = w;
    return JB_OK;
}

void jb_coord_quota_cancel(jb_quota_wait *w)
{
    if (w == NULL)
        return;
    jb__quota *q = w->q;
    switch (w->state) {
    case W_WAITING:
        list_remove(&q->waiters, w);
        free(w);
        if (!q->closed) {
            /* A head that left may unblock the ones behind it. */
            serve(q);
            arm(q);
        }
        break;
    case W_ANSWER:
        list_remove(&q->answers, w);
        free(w);
        break;
    case W_DURABLE:
        w->cb = NULL; /* stays spent; on_durable frees it */
        break;
    case W_DONE:
        w->cb = NULL; /* inside its own callback */
        break;
    }
}

/* ---- Status ------------------------------------------------------------------------- */

void jb_coord_quota_info(jb_coord *co, jb_quota_info *out)
{
    jb__quota *q = co->quota;
    int64_t now = jb__coord_wall_ms();
    expire(q, now);
    uint32_t limit = co->set.hourly_limit;
    *out = (jb_quota_info){.limit = limit,
                           .used = q->used,
                           .remaining = q->used < limit ? limit - q->used : 0,
                           .waiting = (uint32_t)q->waiters.n,
                           .window_ms = (uint32_t)co->set.window_ms};
    if (out->remaining == 0) {
        uint64_t need = (uint64_t)q->used + 1 - limit;
        out->next_slot_ms = now + (int64_t)time_until_free(q, now, need, 0, "");
    }
}

void jb_coord_foreach_quota_component(jb_coord *co,
                                      void (*fn)(const jb_quota_component_info *c, void *ud),
                                      void *ud)
{
    jb__quota *q = co->quota;
    expire(q, jb__coord_wall_ms());
    for (const comp *c = q->comps; c != NULL; c = c->next) {
        jb_quota_component_info ci = {c->name, c->used, jb__coord_share(co, c->name)};
        fn(&ci, ud);
    }
    for (size_t i = 0; i < co->set.n_shares; i++) {
        const jb__share *sh = &co->set.shares[i];
        if (comp_find(q, sh->component) != NULL)
            continue;
        jb_quota_component_info ci = {sh->component, 0, sh->limit};
        fn(&ci, ud);
    }
}
