/*
 * The table of every configuration key of libjimbot.
 *
 * This table is the single source of truth: the loader validates against
 * it, the getters take their types from it, and jimbot-config-doc renders it
 * into docs/configuration.md (a test fails when the committed file differs).
 * A module that needs a new key adds one row here and nothing else.
 *
 * Rules for a row: the path is dotted lowercase words; the default is written
 * as YAML and must itself pass validation (the unit tests load an empty file
 * to prove it); a key without JB_CONFIG_RELOADABLE is read once at start and
 * a change is reported as pending until a restart; secrets get
 * JB_CONFIG_SECRET and an empty default (they come from ${VAR} or ${file:}).
 */
#include "config/internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* ---- Checks named by rows ------------------------------------------------- */

static int is_word_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

static const char *check_topic(const char *v)
{
    if (v[0] == '\0')
        return "a topic name cannot be empty";
    int token_len = 0;
    for (const char *p = v; *p; p++) {
        if (*p == '.') {
            if (token_len == 0)
                return "a topic name is dot-separated words (no empty word)";
            token_len = 0;
        } else if (is_word_char(*p)) {
            token_len++;
        } else {
            return "a topic name is dot-separated words of letters, digits, '_' and '-'";
        }
    }
    return token_len == 0 ? "a topic name cannot end with '.'" : NULL;
}

static const char *check_name(const char *v)
{
    if (v[0] == '\0')
        return "a component name cannot be empty";
    for (const char *p = v; *p; p++) {
        if (!is_word_char(*p))
            return "a component name is letters, digits, '_' and '-'";
    }
    return NULL;
}

static const char *check_http_url(const char *v)
{
    const char *host = NULL;
    if (strncmp(v, "http://", 7) == 0)
        host = v + 7;
    else if (strncmp(v, "https://", 8) == 0)
        host = v + 8;
    if (host == NULL || host[0] == '\0' || host[0] == '/')
        return "expected an http:// or https:// URL with a host";
    return NULL;
}

static const char *check_redis_url(const char *v)
{
    if (strncmp(v, "redis://", 8) == 0 || strncmp(v, "rediss://", 9) == 0 ||
        (strncmp(v, "unix:", 5) == 0 && v[5] != '\0'))
        return NULL;
    return "expected redis://HOST:PORT, rediss://HOST:PORT or unix:PATH";
}

static const char *check_listen(const char *v)
{
    if (v[0] == '\0')
        return NULL;
    if (strncmp(v, "unix:", 5) == 0)
        return v[5] != '\0' ? NULL : "unix: needs a path";
    const char *colon = strrchr(v, ':');
    if (colon == NULL || colon == v)
        return "expected HOST:PORT or unix:PATH";
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535)
        return "the port must be a number from 1 to 65535";
    return NULL;
}

/* ---- The table ------------------------------------------------------------- */

static const char *const fsync_values[] = {"always", "batch", "none", NULL};
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};

#define R JB_CONFIG_RELOADABLE
#define S JB_CONFIG_SECRET

static const jb_config_key builtin_keys[] = {
    /* Event bus. */
    {"event_bus.batch_window_ms", JB_CONFIG_INT, R, "100", 0, 60000, NULL, NULL,
     "How long a batch window stays open collecting events, in milliseconds (0: no batching)."},
    {"event_bus.max_batch_size", JB_CONFIG_INT, R, "1000", 1, 100000, NULL, NULL,
     "A batch is closed early when it holds this many events."},
    {"event_bus.grpc_port", JB_CONFIG_INT, 0, "50051", 1, 65535, NULL, NULL,
     "gRPC port on 127.0.0.1 when neither event_bus.listen nor --listen is given."},
    {"event_bus.listen", JB_CONFIG_STRING, 0, "''", 0, 0, NULL, check_listen,
     "gRPC address, HOST:PORT or unix:PATH; empty means 127.0.0.1:<grpc_port>. --listen wins."},
    {"event_bus.topics", JB_CONFIG_STRLIST, R, "[game_events, training_updates, strategy_requests]",
     0, 0, NULL, check_topic, "Topics that exist from the start (dot-separated words)."},
    {"event_bus.fsync", JB_CONFIG_ENUM, 0, "batch", 0, 0, fsync_values, NULL,
     "When the durable log is fsync'd: after every event, once per batch window, or never."},
    {"event_bus.ack_wait_ms", JB_CONFIG_INT, 0, "30000", 1, 3600000, NULL, NULL,
     "A delivered event that is not acked within this time is delivered again."},
    {"event_bus.max_deliver", JB_CONFIG_INT, 0, "5", 1, 1000, NULL, NULL,
     "Deliveries of one event to one group before it goes to the dead-letter topic."},
    {"event_bus.dedup_window_ms", JB_CONFIG_INT, 0, "120000", 0, 86400000, NULL, NULL,
     "Publishes of an event id already seen within this window are dropped (0: off)."},
    {"event_bus.max_event_bytes", JB_CONFIG_INT, 0, "1048576", 1, 67108864, NULL, NULL,
     "Largest accepted event (payload plus envelope), in bytes; larger publishes are refused."},
    {"event_bus.max_in_flight", JB_CONFIG_INT, 0, "1000", 1, 1000000, NULL, NULL,
     "Unacked events one subscriber may hold when its Subscribe asks for 0 (the default)."},
    {"event_bus.max_group_pending", JB_CONFIG_INT, 0, "1000000", 1, 100000000, NULL, NULL,
     "Unhandled events one consumer group may hold; publishes reaching a fuller group get "
     "RESOURCE_EXHAUSTED."},
    {"event_bus.max_groups", JB_CONFIG_INT, 0, "10000", 1, 1000000, NULL, NULL,
     "Consumer groups that may exist at once (private ones included); a Subscribe that would "
     "create one more gets RESOURCE_EXHAUSTED."},
    {"event_bus.group_idle_expiry", JB_CONFIG_INT, 0, "604800", 0, 315360000, NULL, NULL,
     "A named consumer group with no subscriber for this many seconds is deleted, which lets "
     "retention go past it (0: never)."},
    {"event_bus.slow_consumer_bytes", JB_CONFIG_INT, 0, "67108864", 65536, 1073741824, NULL, NULL,
     "Bytes queued for one Subscribe stream above which its client is a slow consumer and the "
     "stream is cancelled with RESOURCE_EXHAUSTED."},
    {"event_bus.slow_consumer_ms", JB_CONFIG_INT, 0, "30000", 100, 3600000, NULL, NULL,
     "A Subscribe stream whose oldest message has waited this long for the client to take it is "
     "a slow consumer, cancelled with RESOURCE_EXHAUSTED (checked once a second)."},
    {"event_bus.retention.max_age_seconds", JB_CONFIG_INT, 0, "604800", 0, 315360000, NULL, NULL,
     "Log segments older than this are deleted (0: no age limit)."},
    {"event_bus.retention.max_bytes", JB_CONFIG_INT, 0, "1073741824", 0, 1125899906842624.0, NULL,
     NULL, "The oldest log segments are deleted above this total size (0: no size limit)."},

    /* Resource coordinator. */
    {"resource_coordinator.gpu.max_allocation_seconds", JB_CONFIG_INT, R, "300", 1, 86400, NULL,
     NULL, "Longest GPU lease; the lease ends when it expires."},
    {"resource_coordinator.gpu.priority_components", JB_CONFIG_STRLIST, R, "[training, inference]",
     0, 0, NULL, check_name, "Components served first when several wait for the GPU, in order."},
    {"resource_coordinator.claude.hourly_limit", JB_CONFIG_INT, R, "100", 0, 1000000, NULL, NULL,
     "Claude API requests allowed per hour, for all components together."},
    {"resource_coordinator.claude.cache_ttl", JB_CONFIG_INT, R, "3600", 0, 31536000, NULL, NULL,
     "Seconds a cached Claude response stays valid (0: no cache)."},
    {"resource_coordinator.claude.api_key", JB_CONFIG_STRING, R | S, "''", 0, 0, NULL, NULL,
     "Claude API key; write ${ANTHROPIC_API_KEY} or ${file:PATH}, never the key itself."},
    {"resource_coordinator.redis.url", JB_CONFIG_STRING, 0, "'redis://127.0.0.1:6379'", 0, 0, NULL,
     check_redis_url, "The shared Redis server."},
    {"resource_coordinator.redis.password", JB_CONFIG_STRING, S, "''", 0, 0, NULL, NULL,
     "Redis password (AUTH); empty for none. Use ${VAR} or ${file:PATH}."},
    {"resource_coordinator.redis.max_connections", JB_CONFIG_INT, 0, "20", 1, 10000, NULL, NULL,
     "Size of the Redis connection pool."},
    {"resource_coordinator.redis.connection_timeout", JB_CONFIG_INT, R, "5", 1, 300, NULL, NULL,
     "Seconds to wait for a Redis connection."},

    /* Monitoring. */
    {"monitoring.metrics_flush_interval", JB_CONFIG_FLOAT, R, "1.0", 0.01, 3600, NULL, NULL,
     "Seconds between pushes of metrics to QuestDB."},
    {"monitoring.questdb_url", JB_CONFIG_STRING, R, "'http://localhost:9000'", 0, 0, NULL,
     check_http_url, "QuestDB HTTP endpoint that receives metrics as InfluxDB line protocol."},
    {"monitoring.enable_profiling", JB_CONFIG_BOOL, R, "false", 0, 0, NULL, NULL,
     "Record per-stage timings of the event path."},
    {"monitoring.metrics_listen", JB_CONFIG_STRING, 0, "'127.0.0.1:9464'", 0, 0, NULL, check_listen,
     "Address of the Prometheus /metrics endpoint; empty to disable it."},

    /* Logging. */
    {"log.level", JB_CONFIG_ENUM, R, "info", 0, 0, log_levels, NULL,
     "Lowest level written to the log; --log-level wins."},
};

#undef R
#undef S

static const jb_config_schema builtin = {
    builtin_keys,
    sizeof(builtin_keys) / sizeof(builtin_keys[0]),
};

const jb_config_schema *jb_config_schema_builtin(void)
{
    return &builtin;
}

long jb__schema_index(const jb_config_schema *schema, const char *path)
{
    for (size_t i = 0; i < schema->count; i++) {
        if (strcmp(schema->keys[i].path, path) == 0)
            return (long)i;
    }
    return -1;
}

const jb_config_key *jb_config_schema_find(const jb_config_schema *schema, const char *path)
{
    long i = jb__schema_index(schema, path);
    return i < 0 ? NULL : &schema->keys[i];
}

const char *jb_config_type_name(jb_config_type type)
{
    switch (type) {
    case JB_CONFIG_INT:
        return "int";
    case JB_CONFIG_FLOAT:
        return "float";
    case JB_CONFIG_BOOL:
        return "bool";
    case JB_CONFIG_STRING:
        return "string";
    case JB_CONFIG_ENUM:
        return "enum";
    case JB_CONFIG_STRLIST:
        return "list";
    }
    return "unknown";
}
