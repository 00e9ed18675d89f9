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
 * A map (JB_CONFIG_MAP, names chosen by the user) is followed by its field
 * rows "MAP.*.FIELD"; a field's default NULL makes it required, "~" leaves it
 * unset; checks of an entry's fields together are in jb__schema_check_entry().
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

/* A topic pattern: words, '*' for one word, '>' (last) for the rest. */
static const char *check_pattern(const char *v)
{
    size_t tokens = 0;
    for (const char *p = v;; p++) {
        size_t len = strcspn(p, ".");
        if (len == 0)
            return "a pattern is dot-separated words, '*' or a final '>' (no empty word)";
        if (len > 64)
            return "a word of a pattern has at most 64 bytes";
        if (++tokens > 16)
            return "a pattern has at most 16 words";
        int wild = len == 1 && (*p == '*' || *p == '>');
        for (size_t i = 0; i < len && !wild; i++) {
            if (!is_word_char(p[i]))
                return "a pattern is dot-separated words of letters, digits, '_' and '-', '*' or "
                       "a final '>'";
        }
        if (*p == '>' && p[1] != '\0')
            return "'>' can only be the last word of a pattern";
        p += len;
        if (*p == '\0')
            return p - v > 255 ? "a pattern has at most 255 bytes" : NULL;
    }
}

/* An event type: 1 to 256 bytes of printable ASCII without spaces ("jimbot.GameStateUpdate"). */
static const char *check_event_type(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 256)
        return "an event type has 1 to 256 bytes";
    for (const char *p = v; *p; p++) {
        if (*p <= ' ' || *p > '~')
            return "an event type is printable ASCII without spaces";
    }
    return NULL;
}

static const char *check_header_key(const char *v)
{
    return v[0] == '\0' ? "a header key cannot be empty" : NULL;
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

static const char *check_devices(const char *v)
{
    if (strcmp(v, "auto") == 0)
        return NULL;
    char *end;
    long n = strtol(v, &end, 10);
    if (v[0] == '\0' || *end != '\0' || n < 1 || n > 64)
        return "expected auto or a number of devices from 1 to 64";
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

/* A key prefix: non-empty printable ASCII without glob characters or spaces
 * (it becomes an ACL key pattern PREFIX*). */
static const char *check_redis_prefix(const char *v)
{
    if (v[0] == '\0')
        return "a key prefix cannot be empty";
    if (strlen(v) > 64)
        return "a key prefix is at most 64 bytes";
    for (const char *p = v; *p; p++) {
        if (*p <= ' ' || *p > '~' || strchr("*?[]\\", *p) != NULL)
            return "a key prefix is printable ASCII without spaces, *, ?, [, ] or \\";
    }
    return NULL;
}

static const char *check_redis_url(const char *v)
{
    if (v[0] == '\0' || strncmp(v, "redis://", 8) == 0 || strncmp(v, "rediss://", 9) == 0 ||
        (strncmp(v, "unix:", 5) == 0 && v[5] != '\0'))
        return NULL;
    return "expected redis://HOST:PORT, rediss://HOST:PORT, unix:PATH or empty (no Redis)";
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
static const char *const aggregate_kinds[] = {"keep", "last", "count", NULL};

static const char *const queue_budgets[] = {"none", "claude", NULL};
static const char *const redis_shared_access[] = {"readwrite", "read", "none", NULL};

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
     0, 0, NULL, check_topic,
     "The topics that may be used: each entry allows itself and every topic below it "
     "(dlq.> always); any other topic is refused as unknown. Empty: every topic."},
    {"event_bus.aggregation", JB_CONFIG_MAP, R, "{}", 0, 0, NULL, check_event_type,
     "Aggregation rule per event type, applied to each batch: TYPE: {rule: keep|last|count, "
     "key: HEADER}."},
    {"event_bus.aggregation.*.rule", JB_CONFIG_ENUM, R, NULL, 0, 0, aggregate_kinds, NULL,
     "keep: every event; last: only the newest event per value of the header `key`; count: one "
     "summary event (the newest, with jimbot-count: N)."},
    {"event_bus.aggregation.*.key", JB_CONFIG_STRING, R, "~", 0, 0, NULL, check_header_key,
     "For rule last: the header whose value is the key (unset: `key`); events without it are "
     "all kept."},
    {"event_bus.windows", JB_CONFIG_MAP, R, "{}", 0, 0, NULL, check_pattern,
     "Batch window and size per topic pattern: PATTERN: {batch_window_ms: N, max_batch_size: N}. "
     "An event takes the most specific matching pattern's values."},
    {"event_bus.windows.*.batch_window_ms", JB_CONFIG_INT, R, "~", 0, 60000, NULL, NULL,
     "The window of the events of these topics (0: none); unset: event_bus.batch_window_ms."},
    {"event_bus.windows.*.max_batch_size", JB_CONFIG_INT, R, "~", 1, 100000, NULL, NULL,
     "A batch holding an event of these topics closes at this size; unset: "
     "event_bus.max_batch_size."},
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
    {"event_bus.max_events_per_request", JB_CONFIG_INT, 0, "10000", 1, 1000000, NULL, NULL,
     "Events one Publish may carry; a larger request is refused INVALID_ARGUMENT before it is "
     "decoded (an empty event is 2 bytes on the wire and about 108 decoded)."},
    {"event_bus.max_headers_per_event", JB_CONFIG_INT, 0, "64", 1, 4096, NULL, NULL,
     "Headers one event may carry; more are refused INVALID_ARGUMENT."},
    {"event_bus.max_request_memory_bytes", JB_CONFIG_INT, 0, "268435456", 16777216, 68719476736.0,
     NULL, NULL,
     "Memory that requests in flight may hold, all connections together: gRPC's resource quota "
     "plus the one request being decoded (at least 78.4 MB with the default limits); "
     "docs/grpc.md \"Memory\" says what it covers and what it does not."},
    {"event_bus.max_concurrent_streams", JB_CONFIG_INT, 0, "256", 1, 100000, NULL, NULL,
     "Calls one client connection may have open at once (HTTP/2 max concurrent streams)."},
    {"event_bus.drain_grace_ms", JB_CONFIG_INT, R, "5000", 100, 3600000, NULL, NULL,
     "At SIGTERM/SIGINT, how long each step of the drain may wait: for Publishes in flight to "
     "be answered, then for the last calls to end, before the rest is cancelled. A second "
     "signal ends the wait at once."},
    {"event_bus.retention.max_age_seconds", JB_CONFIG_INT, 0, "604800", 0, 315360000, NULL, NULL,
     "Log segments older than this are deleted (0: no age limit)."},
    {"event_bus.retention.max_bytes", JB_CONFIG_INT, 0, "1073741824", 0, 1125899906842624.0, NULL,
     NULL, "The oldest log segments are deleted above this total size (0: no size limit)."},

    /* Resource coordinator. */
    {"resource_coordinator.gpu.max_allocation_seconds", JB_CONFIG_INT, R, "300", 1, 86400, NULL,
     NULL, "Longest GPU lease; the lease ends when it expires."},
    {"resource_coordinator.gpu.priority_components", JB_CONFIG_STRLIST, R, "[training, inference]",
     0, 0, NULL, check_name, "Components served first when several wait for the GPU, in order."},
    {"resource_coordinator.gpu.devices", JB_CONFIG_STRING, 0, "auto", 0, 0, NULL, check_devices,
     "GPU devices leased, one lease each: auto (NVML's count, else 1) or a number from 1 to 64."},
    {"resource_coordinator.gpu.expiry_warning_seconds", JB_CONFIG_INT, R, "30", 0, 86400, NULL,
     NULL, "A lease's holder is sent `expiring` this long before the lease ends (0: no warning)."},
    {"resource_coordinator.gpu.keepalive_ms", JB_CONFIG_INT, R, "5000", 100, 600000, NULL, NULL,
     "Interval of the keepalive messages an AcquireGpu stream sends while it holds a lease."},
    {"resource_coordinator.gpu.starvation_seconds", JB_CONFIG_INT, R, "1800", 0, 604800, NULL, NULL,
     "A GPU waiter that has waited this long goes ahead of every waiter that has not (oldest "
     "first), so no waiter starves (0: strict priority order)."},
    {"resource_coordinator.gpu.release_timeout_seconds", JB_CONFIG_INT, R, "30", 0, 3600, NULL,
     NULL,
     "With NVML: after a release, how long the device waits for its holder's processes to free "
     "their memory before it goes to the next waiter anyway (logged)."},
    {"resource_coordinator.gpu.reattach_grace_seconds", JB_CONFIG_INT, 0, "15", 0, 3600, NULL, NULL,
     "After a restart, how long leases found in the state file wait for their holders to "
     "re-attach (AcquireGpu with the lease_id) before their devices are freed."},
    {"resource_coordinator.gpu.nvml_library", JB_CONFIG_STRING, 0, "'libnvidia-ml.so.1'", 0, 0,
     NULL, NULL,
     "The NVML library loaded at start (dlopen) to find the devices and their memory; empty: no "
     "NVML. Its absence is logged, never an error."},
    {"resource_coordinator.max_waiters", JB_CONFIG_INT, 0, "1024", 1, 1000000, NULL, NULL,
     "Requests that may wait at once for the GPU, and for budget; more get RESOURCE_EXHAUSTED."},
    {"resource_coordinator.claude.hourly_limit", JB_CONFIG_INT, R, "100", 0, 1000000, NULL, NULL,
     "Claude API requests allowed per hour, for all components together."},
    {"resource_coordinator.claude.window_seconds", JB_CONFIG_INT, R, "3600", 1, 86400, NULL, NULL,
     "Length of the sliding window that hourly_limit counts in (a request spent counts this "
     "long); the API's limit is per hour, so change it only for tests."},
    {"resource_coordinator.claude.shares", JB_CONFIG_MAP, R, "{}", 0, 0, NULL, check_name,
     "Per-component caps within the budget: COMPONENT: {limit: N}. A component with a share "
     "spends at most N requests per window; others have no cap of their own. Empty: off."},
    {"resource_coordinator.claude.shares.*.limit", JB_CONFIG_INT, R, NULL, 1, 1000000, NULL, NULL,
     "The most requests this component may spend in one window."},
    {"resource_coordinator.claude.cache_ttl", JB_CONFIG_INT, R, "3600", 0, 31536000, NULL, NULL,
     "Seconds a cached Claude response stays valid (0: no cache)."},
    {"resource_coordinator.claude.cache_max_bytes", JB_CONFIG_INT, R, "16777216", 0, 1073741824,
     NULL, NULL,
     "The most bytes the request queues' response cache holds (keys, payloads and responses); "
     "the oldest entries go first (0: no cache)."},
    {"resource_coordinator.claude.api_key", JB_CONFIG_STRING, R | S, "''", 0, 0, NULL, NULL,
     "Claude API key; write ${ANTHROPIC_API_KEY} or ${file:PATH}, never the key itself."},
    {"resource_coordinator.queues", JB_CONFIG_MAP, R, "{claude: {}}", 0, 0, NULL, check_name,
     "The request queues (SubmitRequest, TakeRequests): NAME: {max_depth, timeout_ms, budget, "
     "max_deliveries}. Replacing the map replaces the default `claude` queue."},
    {"resource_coordinator.queues.*.max_depth", JB_CONFIG_INT, R, "1000", 1, 1000000, NULL, NULL,
     "Requests that may wait in this queue at once; more get RESOURCE_EXHAUSTED."},
    {"resource_coordinator.queues.*.timeout_ms", JB_CONFIG_INT, R, "30000", 1, 3600000, NULL, NULL,
     "How long a submitter waits for a response when its request names no timeout."},
    {"resource_coordinator.queues.*.budget", JB_CONFIG_ENUM, R, "claude", 0, 0, queue_budgets, NULL,
     "claude: a request reaches a worker only when it takes one unit of the Claude budget "
     "(resource_coordinator.claude.hourly_limit); none: unpaced. The default spends nothing "
     "unpaced: a queue that calls no paid API says none."},
    {"resource_coordinator.queues.*.max_deliveries", JB_CONFIG_INT, R, "3", 1, 100, NULL, NULL,
     "Workers a request may be handed to; when that many went away without answering, it is "
     "answered with an error and kept aside (poison)."},
    {"resource_coordinator.redis.url", JB_CONFIG_STRING, 0, "''", 0, 0, NULL, check_redis_url,
     "The shared Redis server (redis://HOST:PORT); empty: no Redis (GetRedisAccess answers "
     "FAILED_PRECONDITION)."},
    {"resource_coordinator.redis.password", JB_CONFIG_STRING, S, "''", 0, 0, NULL, NULL,
     "The password jimbotd authenticates with (AUTH; its user must be allowed ACL and CLIENT); "
     "empty for none. Use ${VAR} or ${file:PATH}."},
    {"resource_coordinator.redis.max_connections", JB_CONFIG_INT, R, "20", 2, 10000, NULL, NULL,
     "Connections to Redis for everyone together: jimbotd's own one, and the components' "
     "allowances (which add up to at most this less one)."},
    {"resource_coordinator.redis.connection_timeout", JB_CONFIG_INT, R, "5", 1, 300, NULL, NULL,
     "Seconds to wait for a Redis connection or a reply before counting it a failure."},
    {"resource_coordinator.redis.namespaces", JB_CONFIG_MAP, R | JB_CONFIG_SHORTHAND,
     "{claude: 'claude:', analytics: 'analytics:', shared: 'shared:'}", 0, 0, NULL, check_name,
     "Components and their key prefixes: COMPONENT: PREFIX, or COMPONENT: {prefix, "
     "max_connections}. Each gets a Redis ACL user allowed only PREFIX* and the shared prefix. "
     "The entry `shared` names the common prefix, not a component."},
    {"resource_coordinator.redis.namespaces.*.prefix", JB_CONFIG_STRING, R, NULL, 0, 0, NULL,
     check_redis_prefix, "The component's key prefix (\"claude:\")."},
    {"resource_coordinator.redis.namespaces.*.max_connections", JB_CONFIG_INT, R, "~", 0, 10000,
     NULL, NULL,
     "The component's connection allowance; unset: an even share of what the others leave."},
    {"resource_coordinator.redis.shared_access", JB_CONFIG_ENUM, R, "readwrite", 0, 0,
     redis_shared_access, NULL,
     "What every component may do with keys under the shared prefix: readwrite, read or none."},
    {"resource_coordinator.redis.check_interval_ms", JB_CONFIG_INT, R, "1000", 100, 60000, NULL,
     NULL,
     "How often jimbotd lists Redis's clients (CLIENT LIST) and ends a component's connections "
     "beyond its allowance."},

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

int jb__schema_is_field(const jb_config_key *k)
{
    return strstr(k->path, ".*.") != NULL;
}

size_t jb__schema_fields(const jb_config_schema *schema, size_t key)
{
    size_t len = strlen(schema->keys[key].path), n = 0;
    while (key + 1 + n < schema->count) {
        const char *p = schema->keys[key + 1 + n].path;
        if (strncmp(p, schema->keys[key].path, len) != 0 || strncmp(p + len, ".*.", 3) != 0)
            break;
        n++;
    }
    return n;
}

const char *jb__schema_check_entry(const jb_config_map *m, size_t i, const char **field)
{
    if (m->schema != &builtin)
        return NULL;
    const char *map = m->schema->keys[m->key].path;
    if (strcmp(map, "event_bus.aggregation") == 0 && jb_config_map_has(m, i, "key") &&
        strcmp(jb_config_map_get_string(m, i, "rule"), "last") != 0) {
        *field = "key";
        return "only rule 'last' takes a key";
    }
    if (strcmp(map, "event_bus.windows") == 0 && !jb_config_map_has(m, i, "batch_window_ms") &&
        !jb_config_map_has(m, i, "max_batch_size")) {
        *field = NULL;
        return "sets neither batch_window_ms nor max_batch_size";
    }
    return NULL;
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
    case JB_CONFIG_MAP:
        return "map";
    }
    return "unknown";
}
