/*
 * The coordinator's life and settings (include/jimbot/coord.h): creates the
 * parts (the state file, NVML, the GPU leases, the budget, the request
 * queues, the shared Redis's namespaces), gives them what the state file
 * held, applies the configuration, and closes them in order.
 *
 * Order at start: state (load) -> NVML (optional) -> gpu -> quota -> queues
 * -> redis (the users file) -> restore gpu and quota from the image. Order
 * at close: waiters end (gpu, queues, then quota, which the queues wait
 * on), then Redis's connection closes, then the state is written a last
 * time, then everything is freed and the close callback runs.
 *
 * Settings are plain values copied out of a configuration snapshot; a
 * reload builds a new jb__coord_settings whole (and redis_ns.c its own
 * jb__redis_conf), then swaps both in, so a failing reload changes nothing.
 *
 * Loop thread only. Must not depend on gRPC or the bus.
 */
#include "coord/coord_internal.h"

#include "jimbot/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t jb__coord_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t jb__coord_now_ms(const jb_coord *co)
{
    return uv_now(co->loop);
}

size_t jb__coord_component_class(const jb_coord *co, const char *component)
{
    for (size_t i = 0; i < co->set.n_priority; i++) {
        if (strcmp(co->set.priority_components[i], component) == 0)
            return i;
    }
    return co->set.n_priority;
}

uint32_t jb__coord_share(const jb_coord *co, const char *component)
{
    for (size_t i = 0; i < co->set.n_shares; i++) {
        if (strcmp(co->set.shares[i].component, component) == 0)
            return co->set.shares[i].limit;
    }
    return 0;
}

jb_status jb__coord_check_component(const char *component, jb_error *err)
{
    if (component == NULL || component[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "a component is required");
    if (strlen(component) > JB_COORD_MAX_NAME)
        return jb_error_set(err, JB_EINVAL, "component name longer than %d bytes",
                            JB_COORD_MAX_NAME);
    return JB_OK;
}

/* ---- Settings ---------------------------------------------------------------- */

static void settings_release(jb__coord_settings *s)
{
    for (size_t i = 0; i < s->n_priority; i++)
        free(s->priority_components[i]);
    free(s->priority_components);
    for (size_t i = 0; i < s->n_shares; i++)
        free(s->shares[i].component);
    free(s->shares);
    for (size_t i = 0; i < s->n_queues; i++)
        free(s->queues[i].name);
    free(s->queues);
    memset(s, 0, sizeof(*s));
}

/* The schema's defaults, for a coordinator no configuration was applied to. */
static jb_status settings_defaults(jb__coord_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->max_allocation_ms = 300 * 1000;
    s->expiry_warning_ms = 30 * 1000;
    s->keepalive_ms = 5000;
    s->starvation_ms = 1800 * 1000;
    s->release_timeout_ms = 30 * 1000;
    s->hourly_limit = 100;
    s->window_ms = 3600 * 1000;
    s->cache_ttl_ms = 3600 * 1000;
    s->cache_max_bytes = 16 * 1024 * 1024;
    s->queues = calloc(1, sizeof(*s->queues));
    if (s->queues == NULL || (s->queues[0].name = strdup("claude")) == NULL) {
        free(s->queues);
        s->queues = NULL;
        return JB_ENOMEM;
    }
    s->queues[0].max_depth = 1000;
    s->queues[0].timeout_ms = 30000;
    s->queues[0].budget = 1;
    s->queues[0].max_deliveries = 3;
    s->n_queues = 1;
    return JB_OK;
}

static int by_queue_name(const void *a, const void *b)
{
    return strcmp(((const jb__queue_conf *)a)->name, ((const jb__queue_conf *)b)->name);
}

/* Reads resource_coordinator.queues into @s; JB_ECONFIG for a name too long. */
static jb_status queues_from(const jb_config *cfg, jb__coord_settings *s, jb_error *err)
{
    const jb_config_map *m = jb_config_get_map(cfg, "resource_coordinator.queues", NULL, NULL);
    size_t n = m != NULL ? jb_config_map_count(m) : 0;
    s->queues = n > 0 ? calloc(n, sizeof(*s->queues)) : NULL;
    if (n > 0 && s->queues == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory reading the queues");
    for (; s->n_queues < n; s->n_queues++) {
        const char *name = jb_config_map_name(m, s->n_queues);
        if (strlen(name) > JB_COORD_MAX_QUEUE)
            return jb_error_set(err, JB_ECONFIG, "queue name '%.*s...' longer than %d bytes", 16,
                                name, JB_COORD_MAX_QUEUE);
        jb__queue_conf *qc = &s->queues[s->n_queues];
        qc->max_depth = (uint32_t)jb_config_map_get_int(m, s->n_queues, "max_depth");
        qc->timeout_ms = (uint32_t)jb_config_map_get_int(m, s->n_queues, "timeout_ms");
        qc->max_deliveries = (uint32_t)jb_config_map_get_int(m, s->n_queues, "max_deliveries");
        qc->budget = strcmp(jb_config_map_get_string(m, s->n_queues, "budget"), "claude") == 0;
        qc->name = strdup(name);
        if (qc->name == NULL)
            return jb_error_set(err, JB_ENOMEM, "out of memory reading the queues");
    }
    if (s->n_queues > 1)
        qsort(s->queues, s->n_queues, sizeof(*s->queues), by_queue_name);
    return JB_OK;
}

static uint64_t cfg_ms(const jb_config *cfg, const char *key, uint64_t scale)
{
    int64_t v = jb_config_get_int(cfg, key, NULL, NULL);
    return v < 0 ? 0 : (uint64_t)v * scale;
}

static jb_status settings_from(const jb_config *cfg, jb__coord_settings *s, jb_error *err)
{
    memset(s, 0, sizeof(*s));
    s->max_allocation_ms = cfg_ms(cfg, "resource_coordinator.gpu.max_allocation_seconds", 1000);
    s->expiry_warning_ms = cfg_ms(cfg, "resource_coordinator.gpu.expiry_warning_seconds", 1000);
    s->keepalive_ms = cfg_ms(cfg, "resource_coordinator.gpu.keepalive_ms", 1);
    s->starvation_ms = cfg_ms(cfg, "resource_coordinator.gpu.starvation_seconds", 1000);
    s->release_timeout_ms = cfg_ms(cfg, "resource_coordinator.gpu.release_timeout_seconds", 1000);
    s->hourly_limit =
        (uint32_t)jb_config_get_int(cfg, "resource_coordinator.claude.hourly_limit", NULL, NULL);
    s->window_ms = cfg_ms(cfg, "resource_coordinator.claude.window_seconds", 1000);
    s->cache_ttl_ms = cfg_ms(cfg, "resource_coordinator.claude.cache_ttl", 1000);
    s->cache_max_bytes = cfg_ms(cfg, "resource_coordinator.claude.cache_max_bytes", 1);
    jb_status st = queues_from(cfg, s, err);
    if (st != JB_OK) {
        settings_release(s);
        return st;
    }

    size_t n = 0;
    const char *const *list =
        jb_config_get_strlist(cfg, "resource_coordinator.gpu.priority_components", NULL, NULL, &n);
    s->priority_components = n > 0 ? calloc(n, sizeof(char *)) : NULL;
    if (n > 0 && s->priority_components == NULL)
        goto oom;
    for (; s->n_priority < n; s->n_priority++) {
        s->priority_components[s->n_priority] = strdup(list[s->n_priority]);
        if (s->priority_components[s->n_priority] == NULL)
            goto oom;
    }

    const jb_config_map *m =
        jb_config_get_map(cfg, "resource_coordinator.claude.shares", NULL, NULL);
    n = m != NULL ? jb_config_map_count(m) : 0;
    s->shares = n > 0 ? calloc(n, sizeof(*s->shares)) : NULL;
    if (n > 0 && s->shares == NULL)
        goto oom;
    for (; s->n_shares < n; s->n_shares++) {
        jb__share *sh = &s->shares[s->n_shares];
        sh->limit = (uint32_t)jb_config_map_get_int(m, s->n_shares, "limit");
        sh->component = strdup(jb_config_map_name(m, s->n_shares));
        if (sh->component == NULL)
            goto oom;
    }
    return JB_OK;
oom:
    settings_release(s);
    return jb_error_set(err, JB_ENOMEM, "out of memory reading the coordinator's settings");
}

jb_status jb_coord_apply_config(jb_coord *co, const jb_config *cfg, jb_error *err)
{
    jb__coord_settings s;
    jb__redis_conf *rc = NULL;
    jb_status st = settings_from(cfg, &s, err);
    if (st != JB_OK)
        return st;
    st = jb__redis_ns_prepare(co->redis, cfg, &rc, err);
    if (st != JB_OK) {
        settings_release(&s);
        return st;
    }
    settings_release(&co->set);
    co->set = s;
    jb__redis_ns_apply(co->redis, &rc);
    jb__gpu_settings_changed(co->gpu);
    jb__quota_settings_changed(co->quota);
    jb__queues_settings_changed(co->queues);
    return JB_OK;
}

/* ---- Life ---------------------------------------------------------------------- */

static char *dup_opt(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static void coord_free(jb_coord *co)
{
    jb__redis_ns_free(co->redis);
    jb__queues_free(co->queues);
    jb__quota_free(co->quota);
    jb__gpu_free(co->gpu);
    jb__nvml_close(co->nvml);
    settings_release(&co->set);
    free((char *)co->opts.state_path);
    free((char *)co->opts.nvml_library);
    free((char *)co->opts.cache_path);
    free((char *)co->opts.redis_users_path);
    free(co);
}

static void open_nvml(jb_coord *co)
{
    const char *lib = co->opts.nvml_library;
    if (lib == NULL || lib[0] == '\0')
        return;
    jb_error err;
    if (jb__nvml_open(lib, &co->nvml, &err) != JB_OK) {
        co->nvml = NULL;
        jb_log(JB_LOG_INFO, "coord", "no NVML: GPU devices come from the configuration",
               "library=%s reason=\"%s\"", lib, err.message);
        return;
    }
    jb_log(JB_LOG_INFO, "coord", "NVML loaded", "library=%s devices=%u", lib,
           jb__nvml_count(co->nvml));
}

jb_status jb_coord_new(uv_loop_t *loop, const jb_coord_options *opts, jb_coord **out, jb_error *err)
{
    if (opts->devices > JB_COORD_MAX_DEVICES)
        return jb_error_set(err, JB_EINVAL, "%u GPU devices: at most %d", opts->devices,
                            JB_COORD_MAX_DEVICES);
    jb_coord *co = calloc(1, sizeof(*co));
    if (co == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    co->loop = loop;
    co->opts = *opts;
    co->opts.state_path = dup_opt(opts->state_path);
    co->opts.nvml_library = dup_opt(opts->nvml_library);
    co->opts.cache_path = dup_opt(opts->cache_path);
    co->opts.redis_users_path = dup_opt(opts->redis_users_path);
    if (co->opts.reattach_grace_ms == 0)
        co->opts.reattach_grace_ms = 15000;
    if (co->opts.max_waiters == 0)
        co->opts.max_waiters = 1024;
    if (settings_defaults(&co->set) != JB_OK) {
        coord_free(co);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }

    jb__state_image img = {0};
    jb_status st = jb__state_open(co, &img, err);
    if (st == JB_OK) {
        open_nvml(co);
        st = jb__gpu_new(co, &co->gpu, err);
    }
    if (st == JB_OK)
        st = jb__quota_new(co, &co->quota, err);
    if (st == JB_OK)
        st = jb__queues_new(co, &co->queues, err);
    if (st == JB_OK)
        st = jb__redis_ns_new(co, &co->redis, err);
    if (st == JB_OK)
        st = jb__gpu_restore(co->gpu, &img, err);
    if (st == JB_OK)
        st = jb__quota_restore(co->quota, &img, err);
    jb__state_image_release(&img);
    if (st != JB_OK) {
        if (co->state != NULL) {
            /* Nothing was changed yet: the state closes without a write. */
            jb__state_close(co->state, NULL, NULL);
            co->state = NULL;
        }
        coord_free(co);
        return st;
    }
    *out = co;
    return JB_OK;
}

static void on_state_closed(void *ud)
{
    jb_coord *co = ud;
    jb_coord_close_cb cb = co->close_cb;
    void *cb_ud = co->close_ud;
    co->state = NULL;
    coord_free(co);
    if (cb != NULL)
        cb(cb_ud);
}

static void on_redis_closed(void *ud)
{
    jb_coord *co = ud;
    co->redis = NULL;
    jb__state_close(co->state, on_state_closed, co);
}

void jb_coord_close(jb_coord *co, jb_coord_close_cb cb, void *userdata)
{
    if (co == NULL || co->closing)
        return;
    co->closing = 1;
    co->close_cb = cb;
    co->close_ud = userdata;
    jb__gpu_close(co->gpu);
    jb__queues_close(co->queues);
    jb__quota_close(co->quota);
    jb__redis_ns_close(co->redis, on_redis_closed, co);
}
