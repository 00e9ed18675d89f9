/*
 * What the configuration decides about a running bus, and can change live:
 * the aggregation rules, the batch windows per topic pattern, and the list of
 * allowed topics (include/jimbot/bus.h: jb_bus_set_rules, _set_windows,
 * _set_topics, _apply_config).
 *
 * Windows. Each window of a pattern is a class of events with its own size
 * and its own closing schedule; events that no pattern matches are in the
 * bus's default class, closed by the bus's timer (bus.c). The classes are
 * kept most specific first, so the first pattern that matches a topic is its
 * class. One timer of ours closes the classes with a window of their own: it
 * fires at the earliest next close, marks the classes due as closed for one
 * delivery round (group.c takes them into account batch by batch) and re-arms.
 * A class of window 0 is always closed; one without a window of its own
 * closes with the default class.
 *
 * Every setter copies and validates everything before it changes anything.
 * Loop thread only, like the rest of the engine.
 */
#include "bus/bus_internal.h"

#include "jimbot/config.h"
#include "jimbot/topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jb__window {
    char *pattern;
    uint32_t window_ms; /* as given: 0 with the default class, JB_BUS_WINDOW_IMMEDIATE: none */
    uint32_t max_batch; /* 0: the bus's */
    uint64_t next_close_ms;
    int closed; /* during one delivery round */
} jb__window;

struct jb__policy {
    jb__window *windows; /* most specific first */
    size_t n_windows;
    char **topics;
    size_t n_topics;
    uv_timer_t timer;
};

/* ---- windows -------------------------------------------------------------- */

/* Literal words, then no '>', then words: a higher rank is more specific. */
static void pattern_rank(const char *p, int rank[3])
{
    rank[0] = rank[2] = 0;
    rank[1] = 1;
    for (; *p; p += *p == '.') {
        size_t n = strcspn(p, ".");
        int wild = n == 1 && (*p == '*' || *p == '>');
        rank[0] += !wild;
        if (n == 1 && *p == '>')
            rank[1] = 0;
        rank[2]++;
        p += n;
    }
}

static int window_cmp(const void *a, const void *b)
{
    const jb__window *x = a, *y = b;
    int rx[3], ry[3];
    pattern_rank(x->pattern, rx);
    pattern_rank(y->pattern, ry);
    for (int i = 0; i < 3; i++) {
        if (rx[i] != ry[i])
            return ry[i] - rx[i];
    }
    return strcmp(x->pattern, y->pattern);
}

static uint32_t window_max(const jb_bus *bus, const jb__window *w)
{
    return w->max_batch ? w->max_batch : bus->opts.max_batch_size;
}

int jb__bus_has_windows(const jb_bus *bus)
{
    return bus->policy != NULL && bus->policy->n_windows > 0;
}

size_t jb__bus_max_batch(const jb_bus *bus)
{
    size_t max = bus->opts.max_batch_size;
    for (size_t i = 0; bus->policy != NULL && i < bus->policy->n_windows; i++) {
        if (window_max(bus, &bus->policy->windows[i]) > max)
            max = window_max(bus, &bus->policy->windows[i]);
    }
    return max;
}

void jb__bus_window_take(const jb_bus *bus, const char *topic, int default_closed, size_t *size_cap,
                         int *closed)
{
    const jb__policy *p = bus->policy;
    int dflt = default_closed || bus->opts.batch_window_ms == 0;
    for (size_t i = 0; p != NULL && i < p->n_windows; i++) {
        const jb__window *w = &p->windows[i];
        if (!jb_pattern_matches(w->pattern, topic))
            continue;
        if (window_max(bus, w) < *size_cap)
            *size_cap = window_max(bus, w);
        *closed |=
            w->window_ms == JB_BUS_WINDOW_IMMEDIATE || w->closed || (w->window_ms == 0 && dflt);
        return;
    }
    if (bus->opts.max_batch_size < *size_cap)
        *size_cap = bus->opts.max_batch_size;
    *closed |= dflt;
}

void jb__bus_windows_reset(jb_bus *bus)
{
    for (size_t i = 0; bus->policy != NULL && i < bus->policy->n_windows; i++)
        bus->policy->windows[i].closed = 0;
}

void jb__bus_windows_close_all(jb_bus *bus)
{
    for (size_t i = 0; bus->policy != NULL && i < bus->policy->n_windows; i++)
        bus->policy->windows[i].closed = 1;
}

static int own_window(const jb__window *w)
{
    return w->window_ms != 0 && w->window_ms != JB_BUS_WINDOW_IMMEDIATE;
}

static void on_window(uv_timer_t *t);

/* Starts the timer for the earliest close of a class with a window of its own. */
static void arm(jb_bus *bus)
{
    jb__policy *p = bus->policy;
    uint64_t now = uv_now(bus->loop), next = UINT64_MAX;
    for (size_t i = 0; i < p->n_windows; i++) {
        jb__window *w = &p->windows[i];
        if (!own_window(w))
            continue;
        if (w->next_close_ms == 0)
            w->next_close_ms = now + w->window_ms;
        if (w->next_close_ms < next)
            next = w->next_close_ms;
    }
    if (next == UINT64_MAX)
        uv_timer_stop(&p->timer);
    else
        uv_timer_start(&p->timer, on_window, next > now ? next - now : 0, 0);
}

static void on_window(uv_timer_t *t)
{
    jb_bus *bus = t->data;
    uint64_t now = uv_now(bus->loop);
    for (size_t i = 0; i < bus->policy->n_windows; i++) {
        jb__window *w = &bus->policy->windows[i];
        if (own_window(w) && w->next_close_ms <= now) {
            w->closed = 1;
            w->next_close_ms = now + w->window_ms;
        }
    }
    jb__bus_deliver_all(bus, 0);
    arm(bus);
}

static void free_windows(jb__window *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(w[i].pattern);
    free(w);
}

static jb_status copy_windows(const jb_bus_window *windows, size_t n, jb__window **out,
                              jb_error *err)
{
    jb__window *w = calloc(n ? n : 1, sizeof(*w));
    if (w == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory copying batch windows");
    for (size_t i = 0; i < n; i++) {
        jb_error perr;
        if (jb_pattern_validate(windows[i].pattern, &perr) != JB_OK) {
            free_windows(w, i);
            return jb_error_set(err, JB_EINVAL, "batch window %zu: %s", i, perr.message);
        }
        w[i] = (jb__window){.pattern = strdup(windows[i].pattern),
                            .window_ms = windows[i].batch_window_ms,
                            .max_batch = windows[i].max_batch_size};
        if (w[i].pattern == NULL) {
            free_windows(w, i);
            return jb_error_set(err, JB_ENOMEM, "out of memory copying batch windows");
        }
    }
    qsort(w, n, sizeof(*w), window_cmp);
    *out = w;
    return JB_OK;
}

static void commit_windows(jb_bus *bus, jb__window *w, size_t n)
{
    free_windows(bus->policy->windows, bus->policy->n_windows);
    bus->policy->windows = w;
    bus->policy->n_windows = n;
    if (!bus->closing)
        arm(bus);
    /* What waited for an old window goes by the new ones. */
    jb__bus_kick(bus);
}

jb_status jb_bus_set_windows(jb_bus *bus, const jb_bus_window *windows, size_t n_windows,
                             jb_error *err)
{
    jb__window *w;
    jb_status st = copy_windows(windows, n_windows, &w, err);
    if (st == JB_OK)
        commit_windows(bus, w, n_windows);
    return st;
}

/* ---- aggregation rules ------------------------------------------------------ */

static void free_rules(jb_aggregate_rule *r, size_t n)
{
    for (size_t i = 0; i < n && r != NULL; i++) {
        free((char *)r[i].type);
        free((char *)r[i].key_header);
    }
    free(r);
}

static jb_status copy_rules(const jb_aggregate_rule *rules, size_t n, jb_aggregate_rule **out,
                            jb_error *err)
{
    jb_aggregate_rule *copy = calloc(n ? n : 1, sizeof(*copy));
    if (copy == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory copying aggregation rules");
    jb_status st = JB_OK;
    for (size_t i = 0; i < n && st == JB_OK; i++) {
        const jb_aggregate_rule *r = &rules[i];
        if (r->type == NULL || r->type[0] == '\0')
            st = jb_error_set(err, JB_EINVAL, "aggregation rule %zu has no event type", i);
        else if ((unsigned)r->kind > JB_AGGREGATE_CUSTOM)
            st = jb_error_set(err, JB_EINVAL, "aggregation rule for '%s': unknown kind %d", r->type,
                              (int)r->kind);
        else if (r->kind == JB_AGGREGATE_CUSTOM && r->fn == NULL)
            st = jb_error_set(err, JB_EINVAL, "custom aggregation for '%s' has no function",
                              r->type);
        if (st != JB_OK)
            break;
        copy[i] = *r;
        copy[i].type = strdup(r->type);
        copy[i].key_header = strdup(r->key_header ? r->key_header : "key");
        if (copy[i].type == NULL || copy[i].key_header == NULL)
            st = jb_error_set(err, JB_ENOMEM, "out of memory copying aggregation rules");
    }
    if (st != JB_OK) {
        free_rules(copy, n);
        return st;
    }
    *out = copy;
    return JB_OK;
}

static void commit_rules(jb_bus *bus, jb_aggregate_rule *rules, size_t n)
{
    free_rules(bus->rules, bus->opts.n_rules);
    bus->rules = rules;
    bus->opts.rules = rules;
    bus->opts.n_rules = n;
}

jb_status jb_bus_set_rules(jb_bus *bus, const jb_aggregate_rule *rules, size_t n_rules,
                           jb_error *err)
{
    jb_aggregate_rule *copy;
    jb_status st = copy_rules(rules, n_rules, &copy, err);
    if (st == JB_OK)
        commit_rules(bus, copy, n_rules);
    return st;
}

/* ---- allowed topics ---------------------------------------------------------- */

/* Is @topic @prefix itself or below it? */
static int under(const char *topic, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(topic, prefix, n) == 0 && (topic[n] == '\0' || topic[n] == '.');
}

/* Can @pattern match @prefix or a topic below it? */
static int reaches(const char *pattern, const char *prefix)
{
    const char *p = pattern, *r = prefix;
    for (;;) {
        size_t pl = strcspn(p, "."), rl = strcspn(r, ".");
        if (pl == 1 && *p == '>')
            return 1;
        if (!(pl == 1 && *p == '*') && (pl != rl || strncmp(p, r, pl) != 0))
            return 0;
        p += pl;
        r += rl;
        if (*r == '\0')
            return 1;
        if (*p == '\0')
            return 0;
        p++;
        r++;
    }
}

static jb_status unknown_topic(const jb_bus *bus, const char *what, const char *name, jb_error *err)
{
    char list[256] = "";
    size_t n = 0;
    for (size_t i = 0; i < bus->policy->n_topics && n < sizeof(list); i++) {
        int w = snprintf(list + n, sizeof(list) - n, "%s, ", bus->policy->topics[i]);
        n += w > 0 ? (size_t)w : 0;
    }
    return jb_error_set(err, JB_EINVAL, "unknown topic '%s'%s (allowed: %sdlq)", name, what, list);
}

jb_status jb__bus_topic_allowed(const jb_bus *bus, const char *topic, jb_error *err)
{
    const jb__policy *p = bus->policy;
    if (p->n_topics == 0 || under(topic, "dlq"))
        return JB_OK;
    for (size_t i = 0; i < p->n_topics; i++) {
        if (under(topic, p->topics[i]))
            return JB_OK;
    }
    return unknown_topic(bus, "", topic, err);
}

jb_status jb__bus_pattern_allowed(const jb_bus *bus, const char *pattern, jb_error *err)
{
    const jb__policy *p = bus->policy;
    if (p->n_topics == 0 || reaches(pattern, "dlq"))
        return JB_OK;
    for (size_t i = 0; i < p->n_topics; i++) {
        if (reaches(pattern, p->topics[i]))
            return JB_OK;
    }
    return unknown_topic(bus, ": the pattern matches no allowed topic", pattern, err);
}

static void free_topics(char **t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i]);
    free(t);
}

static jb_status copy_topics(const char *const *topics, size_t n, char ***out, jb_error *err)
{
    char **copy = calloc(n ? n : 1, sizeof(*copy));
    if (copy == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory copying the topics");
    for (size_t i = 0; i < n; i++) {
        jb_error terr;
        if (jb_topic_validate(topics[i], &terr) != JB_OK) {
            free_topics(copy, i);
            return jb_error_set(err, JB_EINVAL, "allowed topic %zu: %s", i, terr.message);
        }
        if ((copy[i] = strdup(topics[i])) == NULL) {
            free_topics(copy, i);
            return jb_error_set(err, JB_ENOMEM, "out of memory copying the topics");
        }
    }
    *out = copy;
    return JB_OK;
}

static void commit_topics(jb_bus *bus, char **topics, size_t n)
{
    free_topics(bus->policy->topics, bus->policy->n_topics);
    bus->policy->topics = topics;
    bus->policy->n_topics = n;
}

jb_status jb_bus_set_topics(jb_bus *bus, const char *const *topics, size_t n_topics, jb_error *err)
{
    char **copy;
    jb_status st = copy_topics(topics, n_topics, &copy, err);
    if (st == JB_OK)
        commit_topics(bus, copy, n_topics);
    return st;
}

/* ---- from a configuration snapshot ------------------------------------------- */

static uint32_t to_u32(int64_t v)
{
    return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The rules of event_bus.aggregation into @rules (n entries); names borrowed from @cfg. */
static jb_status config_rules(const jb_config_map *m, jb_aggregate_rule *rules, jb_error *err)
{
    for (size_t i = 0; i < jb_config_map_count(m); i++) {
        rules[i] = (jb_aggregate_rule){.type = jb_config_map_name(m, i),
                                       .key_header = jb_config_map_get_string(m, i, "key")};
        jb_status st =
            jb_aggregate_kind_parse(jb_config_map_get_string(m, i, "rule"), &rules[i].kind, err);
        if (st != JB_OK)
            return st;
    }
    return JB_OK;
}

static void config_windows(const jb_config_map *m, jb_bus_window *windows)
{
    for (size_t i = 0; i < jb_config_map_count(m); i++) {
        uint32_t ms = to_u32(jb_config_map_get_int(m, i, "batch_window_ms"));
        windows[i] = (jb_bus_window){
            .pattern = jb_config_map_name(m, i),
            .batch_window_ms = !jb_config_map_has(m, i, "batch_window_ms") ? 0
                               : ms == 0                                   ? JB_BUS_WINDOW_IMMEDIATE
                                                                           : ms,
            .max_batch_size = to_u32(jb_config_map_get_int(m, i, "max_batch_size")),
        };
    }
}

static uint32_t config_u32(const jb_config *cfg, const char *key)
{
    return to_u32(jb_config_get_int(cfg, key, NULL, NULL));
}

jb_status jb_bus_apply_config(jb_bus *bus, const jb_config *cfg, jb_error *err)
{
    const jb_config_map *agg = jb_config_get_map(cfg, "event_bus.aggregation", NULL, NULL);
    const jb_config_map *win = jb_config_get_map(cfg, "event_bus.windows", NULL, NULL);
    size_t n_topics = 0, n_rules = jb_config_map_count(agg), n_win = jb_config_map_count(win);
    const char *const *topics =
        jb_config_get_strlist(cfg, "event_bus.topics", NULL, NULL, &n_topics);
    jb_aggregate_rule *rules = calloc(n_rules + 1, sizeof(*rules)), *new_rules = NULL;
    jb_bus_window *windows = calloc(n_win + 1, sizeof(*windows));
    jb__window *new_windows = NULL;
    char **new_topics = NULL;
    jb_status st = rules != NULL && windows != NULL
                       ? JB_OK
                       : jb_error_set(err, JB_ENOMEM, "out of memory applying the configuration");
    if (st == JB_OK)
        st = config_rules(agg, rules, err);
    if (st == JB_OK) {
        config_windows(win, windows);
        st = copy_rules(rules, n_rules, &new_rules, err);
    }
    if (st == JB_OK && (st = copy_windows(windows, n_win, &new_windows, err)) != JB_OK)
        free_rules(new_rules, n_rules);
    if (st == JB_OK && (st = copy_topics(topics, n_topics, &new_topics, err)) != JB_OK) {
        free_rules(new_rules, n_rules);
        free_windows(new_windows, n_win);
    }
    free(rules);
    free(windows);
    if (st != JB_OK)
        return st;
    /* Nothing can fail from here on. */
    uint32_t window = config_u32(cfg, "event_bus.batch_window_ms");
    jb_bus_set_window(bus, window == 0 ? JB_BUS_WINDOW_IMMEDIATE : window,
                      config_u32(cfg, "event_bus.max_batch_size"));
    commit_rules(bus, new_rules, n_rules);
    commit_topics(bus, new_topics, n_topics);
    commit_windows(bus, new_windows, n_win);
    return JB_OK;
}

/* ---- lifecycle ------------------------------------------------------------------ */

jb_status jb__policy_new(jb_bus *bus, jb_error *err)
{
    bus->policy = calloc(1, sizeof(*bus->policy));
    if (bus->policy == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory creating the bus");
    return JB_OK;
}

void jb__policy_start(jb_bus *bus)
{
    uv_timer_init(bus->loop, &bus->policy->timer);
    bus->policy->timer.data = bus;
}

void jb__policy_close(jb_bus *bus, uv_close_cb cb)
{
    uv_close((uv_handle_t *)&bus->policy->timer, cb);
}

void jb__policy_free(jb_bus *bus)
{
    jb__policy *p = bus->policy;
    free_rules(bus->rules, bus->opts.n_rules);
    bus->rules = NULL;
    if (p == NULL)
        return;
    free_windows(p->windows, p->n_windows);
    free_topics(p->topics, p->n_topics);
    free(p);
}
