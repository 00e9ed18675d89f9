/*
 * jimbotd: the daemon that hosts the libjimbot engine.
 *
 * Thin by design: it parses the command line, owns the one libuv loop and the
 * daemon's root struct, wires signals, and hands everything else to the
 * library's modules. Shutdown order on SIGTERM/SIGINT: stop accepting, flush,
 * close every handle, run the loop until it is empty, exit 0.
 *
 * Configuration: loaded and validated whole before anything starts (every
 * error printed, exit 1); --check-config prints the resolved values with
 * secrets masked and exits. While running, a jb_config_watcher reloads on
 * file changes and on SIGHUP; the daemon subscribes to apply log.level and
 * the bus's live settings (windows, aggregation, allowed topics).
 *
 * The engine: the durable log in <data-dir>/log, the bus over it (group
 * positions in <data-dir>/groups.state), the resource coordinator (GPU
 * leases and the spent API budget in <data-dir>/coord.state) and the gRPC
 * server in front, all on the one loop. A port already taken, or a data dir in use by another
 * jimbotd, stops the start with one line and exit 1.
 *
 * Shutdown order (SIGTERM/SIGINT): the server drains (lame duck: health
 * NOT_SERVING, new calls answered UNAVAILABLE with retry-after-ms,
 * Publishes in flight answered once durable; then the open window is
 * flushed and streams end UNAVAILABLE, GPU leases detached for their holders
 * to re-attach after the restart); the coordinator closes (its state
 * saved); the bus closes (what is left is
 * answered once durable, positions saved); the log closes (fsync); the
 * server closes once no call is live; the watcher and the signals close;
 * the loop ends; exit 0. Each wait is bounded by event_bus.drain_grace_ms.
 * A second SIGTERM/SIGINT during that makes what the log buffers durable
 * (write and fsync) and exits at once with EXIT_FORCED.
 */
#include "jimbot/bus.h"
#include "jimbot/config.h"
#include "jimbot/coord.h"
#include "jimbot/log.h"
#include "jimbot/server.h"
#include "jimbot/store.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

/* The exit status after a second SIGTERM/SIGINT cut a drain short. */
#define EXIT_FORCED 3

typedef struct jbd_options {
    const char *config_path;
    const char *env;
    const char *listen;
    const char *data_dir;
    int check_config;
    int log_level_flag;
    int check_log; /* 1: --verify, 2: --repair */
} jbd_options;

typedef struct jbd_daemon {
    uv_loop_t loop;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_signal_t sighup;
    jbd_options opts;
    jb_config_options config_opts;
    jb_config_watcher *watcher;
    jb_store *store;
    jb_bus *bus;
    jb_coord *coord;
    jb_server *server;
    char *state_path;
    char *coord_path;
    int stopping;
    int forced;
    uint32_t grace_ms;
    int exit_code;
} jbd_daemon;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: jimbotd [-c FILE] [--env NAME] [--listen ADDR] [--data-dir DIR]\n"
            "               [--check-config] [--log-level LEVEL] [--help] [--version]\n"
            "       jimbotd [--data-dir DIR] --verify | --repair\n"
            "\n"
            "The JimBot infrastructure daemon: event bus, resource coordinator and\n"
            "configuration service behind gRPC.\n"
            "\n"
            "Options:\n"
            "  -c, --config FILE    base configuration (default: config/infrastructure.yaml)\n"
            "      --env NAME       environment layer config/NAME.yaml (default: $JIMBOT_ENV,\n"
            "                       else development)\n"
            "      --listen ADDR    gRPC address, host:port or unix:PATH\n"
            "                       (default: 127.0.0.1:<event_bus.grpc_port>)\n"
            "      --data-dir DIR   durable log (DIR/log), consumer groups (DIR/groups.state)\n"
            "                       and GPU leases and spent API budget (DIR/coord.state)\n"
            "                       (default: ./var)\n"
            "      --check-config   validate the configuration, print it resolved (secrets\n"
            "                       masked) and exit 0, or print every error and exit 1\n"
            "      --log-level L    debug, info, warn or error (default: info)\n"
            "      --verify         check every record's CRC in DIR/log without starting;\n"
            "                       print a report; exit 0 clean, 1 damaged, 2 cannot check\n"
            "      --repair         the same check, then truncate the log at the first damage\n"
            "                       and report what was dropped; exit 0 once repaired\n"
            "                       (see docs/durable-log.md before using it)\n"
            "  -h, --help           show this help\n"
            "  -V, --version        print the version\n"
            "\n"
            "Signals: SIGTERM/SIGINT drain (new calls get UNAVAILABLE, calls in flight are\n"
            "answered, at most event_bus.drain_grace_ms per step) and exit 0; a second\n"
            "SIGTERM/SIGINT fsyncs what is buffered and exits 3 at once. SIGHUP reloads\n"
            "the configuration.\n"
            "The configuration keys are listed in docs/configuration.md.\n");
}

static void on_close(uv_handle_t *handle)
{
    (void)handle;
}

/* The last step: nothing of the engine is left, close the rest. */
static void close_handles(jbd_daemon *d)
{
    jb_config_watcher_close(d->watcher, NULL, NULL);
    d->watcher = NULL;
    uv_close((uv_handle_t *)&d->sigterm, on_close);
    uv_close((uv_handle_t *)&d->sigint, on_close);
    uv_close((uv_handle_t *)&d->sighup, on_close);
}

static void on_server_closed(void *userdata)
{
    close_handles(userdata);
}

/* After a second signal: the log is durable (or could not be), leave now. */
static _Noreturn void exit_forced(void)
{
    jb_log(JB_LOG_WARN, "daemon", "drain cut short by a second signal: exiting", "status=%d",
           EXIT_FORCED);
    fflush(NULL);
    _exit(EXIT_FORCED);
}

static void on_forced_flush(jb_status status, uint64_t durable_seq, const jb_error *err,
                            void *userdata)
{
    (void)durable_seq;
    (void)userdata;
    if (status != JB_OK)
        jb_log(JB_LOG_ERROR, "daemon", "the log could not be made durable", "error=%s",
               err != NULL ? err->message : jb_status_name(status));
    exit_forced();
}

/* A second SIGTERM/SIGINT: fsync what the log holds, then exit. */
static void stop_now(jbd_daemon *d)
{
    if (d->forced)
        return;
    d->forced = 1;
    jb_log(JB_LOG_WARN, "daemon", "second signal: making the log durable, then exiting", NULL);
    if (d->store == NULL)
        exit_forced();
    jb_status st = jb_store_flush(d->store, on_forced_flush, d);
    /* JB_ECLOSED: the log is closing, which writes and fsyncs everything;
     * on_store_closed exits. */
    if (st != JB_OK && st != JB_ECLOSED)
        exit_forced();
}

static void on_store_closed(jb_status status, void *userdata)
{
    jbd_daemon *d = userdata;
    d->store = NULL;
    if (status != JB_OK) {
        jb_log(JB_LOG_ERROR, "daemon", "the log did not close cleanly", "error=%s",
               jb_status_name(status));
        d->exit_code = 1;
    }
    if (d->forced)
        exit_forced();
    if (d->server != NULL) {
        jb_server *srv = d->server;
        d->server = NULL;
        jb_server_close(srv, d->grace_ms, on_server_closed, d);
    } else {
        close_handles(d);
    }
}

static void close_store(jbd_daemon *d)
{
    if (d->store == NULL || jb_store_close(d->store, on_store_closed, d) != JB_OK)
        on_store_closed(JB_OK, d);
}

static void on_bus_closed(void *userdata)
{
    jbd_daemon *d = userdata;
    d->bus = NULL;
    close_store(d);
}

static void close_bus(jbd_daemon *d)
{
    if (d->bus != NULL)
        jb_bus_close(d->bus, on_bus_closed, d);
    else
        close_store(d);
}

static uint32_t cfg_u32(const jb_config *cfg, const char *key);

static void on_coord_closed(void *userdata)
{
    jbd_daemon *d = userdata;
    d->coord = NULL;
    close_bus(d);
}

/* The coordinator first (its leases are saved for the next start), then the bus. */
static void close_coord(jbd_daemon *d)
{
    if (d->coord != NULL)
        jb_coord_close(d->coord, on_coord_closed, d);
    else
        close_bus(d);
}

static void on_server_drained(void *userdata)
{
    close_coord(userdata);
}

static void daemon_stop(jbd_daemon *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    d->grace_ms = d->watcher != NULL
                      ? cfg_u32(jb_config_watcher_current(d->watcher), "event_bus.drain_grace_ms")
                      : 0;
    jb_log(JB_LOG_INFO, "daemon", "shutting down", "reason=%s grace_ms=%u", why, d->grace_ms);
    if (d->server != NULL)
        jb_server_drain(d->server, d->grace_ms, on_server_drained, d);
    else
        close_coord(d);
}

static void on_signal(uv_signal_t *handle, int signum)
{
    jbd_daemon *d = handle->data;
    if (signum == SIGHUP) {
        jb_log(JB_LOG_INFO, "daemon", "SIGHUP received: configuration reload requested", NULL);
        if (d->watcher != NULL)
            jb_config_watcher_reload(d->watcher);
        return;
    }
    if (d->stopping)
        stop_now(d);
    else
        daemon_stop(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int parse_args(int argc, char **argv, jbd_options *o)
{
    enum {
        OPT_ENV = 256,
        OPT_LISTEN,
        OPT_DATA_DIR,
        OPT_CHECK,
        OPT_LOG_LEVEL,
        OPT_VERIFY,
        OPT_REPAIR
    };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"env", required_argument, NULL, OPT_ENV},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"data-dir", required_argument, NULL, OPT_DATA_DIR},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"verify", no_argument, NULL, OPT_VERIFY},
        {"repair", no_argument, NULL, OPT_REPAIR},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *env = getenv("JIMBOT_ENV");
    *o = (jbd_options){
        .config_path = "config/infrastructure.yaml",
        .env = env != NULL && env[0] != '\0' ? env : "development",
        .data_dir = "var",
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            o->config_path = optarg;
            break;
        case OPT_ENV:
            o->env = optarg;
            break;
        case OPT_LISTEN:
            o->listen = optarg;
            break;
        case OPT_DATA_DIR:
            o->data_dir = optarg;
            break;
        case OPT_CHECK:
            o->check_config = 1;
            break;
        case OPT_VERIFY:
        case OPT_REPAIR:
            o->check_log = c == OPT_VERIFY ? 1 : 2;
            break;
        case OPT_LOG_LEVEL: {
            jb_log_level level;
            if (jb_log_level_parse(optarg, &level) != 0) {
                fprintf(stderr,
                        "jimbotd: --log-level: unknown level '%s' "
                        "(debug, info, warn, error)\n",
                        optarg);
                return 2;
            }
            jb_log_set_level(level);
            o->log_level_flag = 1;
            break;
        }
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("jimbotd %s\n", JB_VERSION);
            exit(0);
        default:
            fprintf(stderr, "jimbotd: see jimbotd --help\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "jimbotd: unexpected argument '%s' (see jimbotd --help)\n", argv[optind]);
        return 2;
    }
    return 0;
}

/* --verify and --repair: the log in DATA_DIR/log, checked without starting anything. */
static int check_log(const jbd_options *o)
{
    char path[4096];
    jb_store_report r;
    jb_error err;
    snprintf(path, sizeof(path), "%s/log", o->data_dir);
    jb_status st =
        o->check_log == 2 ? jb_store_repair(path, &r, &err) : jb_store_verify(path, &r, &err);
    if (st != JB_OK) {
        /* What the audit found before the failure is still the operator's to see. */
        if (r.n_problems > 0)
            jb_store_report_print(&r, stderr);
        fprintf(stderr, "jimbotd: cannot %s %s: %s\n", o->check_log == 2 ? "repair" : "verify",
                path, err.message);
        jb_store_report_release(&r);
        return 2;
    }
    printf("log: %s\n", path);
    jb_store_report_print(&r, stdout);
    int rc = r.damaged && !r.repaired ? 1 : 0;
    jb_store_report_release(&r);
    return rc;
}

/* log.level from the configuration, unless --log-level said otherwise. */
static void apply_log_level(const jbd_daemon *d, const jb_config *cfg)
{
    jb_log_level level;
    if (!d->opts.log_level_flag &&
        jb_log_level_parse(jb_config_get_string(cfg, "log.level", NULL, NULL), &level) == 0)
        jb_log_set_level(level);
}

static uint32_t cfg_u32(const jb_config *cfg, const char *key)
{
    int64_t v = jb_config_get_int(cfg, key, NULL, NULL);
    return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The bus's window in the configuration; 0 there means "none". */
static uint32_t cfg_window(const jb_config *cfg)
{
    uint32_t window = cfg_u32(cfg, "event_bus.batch_window_ms");
    return window == 0 ? JB_BUS_WINDOW_IMMEDIATE : window;
}

static void on_config_change(const jb_config_change *change, void *userdata)
{
    jbd_daemon *d = userdata;
    apply_log_level(d, change->config);
    jb_error err;
    if (d->bus != NULL && !d->stopping &&
        jb_bus_apply_config(d->bus, change->config, &err) != JB_OK)
        jb_log(JB_LOG_ERROR, "daemon", "the event bus kept its previous settings", "error=%s",
               err.message);
    if (d->coord != NULL && !d->stopping &&
        jb_coord_apply_config(d->coord, change->config, &err) != JB_OK)
        jb_log(JB_LOG_ERROR, "daemon", "the coordinator kept its previous settings", "error=%s",
               err.message);
}

/*
 * Opens the resource coordinator (<data-dir>/coord.state, the request
 * queues' cache <data-dir>/queue.cache, the Redis users' passwords
 * <data-dir>/redis.users) from @cfg.
 */
static int coord_start(jbd_daemon *d, const jb_config *cfg)
{
    char path[4096], cache_path[4096], users_path[4096];
    snprintf(path, sizeof(path), "%s/coord.state", d->opts.data_dir);
    snprintf(cache_path, sizeof(cache_path), "%s/queue.cache", d->opts.data_dir);
    snprintf(users_path, sizeof(users_path), "%s/redis.users", d->opts.data_dir);
    d->coord_path = strdup(path);
    const char *devices = jb_config_get_string(cfg, "resource_coordinator.gpu.devices", NULL, NULL);
    jb_coord_options co = {
        .state_path = d->coord_path,
        .nvml_library =
            jb_config_get_string(cfg, "resource_coordinator.gpu.nvml_library", NULL, NULL),
        /* The schema allows only "auto" or a number from 1 to 64. */
        .devices = strcmp(devices, "auto") == 0 ? 0 : (uint32_t)strtoul(devices, NULL, 10),
        .reattach_grace_ms = cfg_u32(cfg, "resource_coordinator.gpu.reattach_grace_seconds") * 1000,
        .max_waiters = cfg_u32(cfg, "resource_coordinator.max_waiters"),
        .cache_path = cache_path,
        .redis_users_path = users_path,
    };
    jb_error err;
    if (jb_coord_new(&d->loop, &co, &d->coord, &err) != JB_OK) {
        d->coord = NULL;
        fprintf(stderr, "jimbotd: cannot start the resource coordinator: %s\n", err.message);
        return -1;
    }
    if (jb_coord_apply_config(d->coord, cfg, &err) != JB_OK) {
        fprintf(stderr, "jimbotd: cannot configure the resource coordinator: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* Loads the configuration; on failure prints every error and returns NULL. */
static jb_config *load_config(jbd_daemon *d)
{
    d->config_opts = (jb_config_options){.path = d->opts.config_path, .env = d->opts.env};
    jb_config_errors *errs = jb_config_errors_new();
    jb_config *cfg = NULL;
    jb_error err;
    if (errs == NULL) {
        fprintf(stderr, "jimbotd: out of memory\n");
        return NULL;
    }
    if (jb_config_load(&d->config_opts, &cfg, errs, &err) != JB_OK) {
        size_t n = jb_config_errors_count(errs);
        for (size_t i = 0; i < n; i++) {
            char line[1024];
            fprintf(stderr, "%s\n", jb_config_errors_format(errs, i, line, sizeof(line)));
        }
        if (n == 0)
            fprintf(stderr, "jimbotd: %s\n", err.message);
        fprintf(stderr, "jimbotd: invalid configuration: %zu error%s\n", n, n == 1 ? "" : "s");
        cfg = NULL;
    }
    jb_config_errors_free(errs);
    return cfg;
}

/* mkdir -p: every missing folder of @path. */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -1;
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = c;
            if (c == '\0')
                return 0;
        }
    }
}

/*
 * Opens the log, the bus and the server from the configuration in force.
 * On failure prints one line and returns -1; what was opened stays in @d for
 * daemon_stop() to close.
 */
static int engine_start(jbd_daemon *d, const jb_config *cfg)
{
    jb_error err;
    char path[4096];
    if (make_dirs(d->opts.data_dir) != 0) {
        fprintf(stderr, "jimbotd: cannot create the data dir %s: %s\n", d->opts.data_dir,
                strerror(errno));
        return -1;
    }
    snprintf(path, sizeof(path), "%s/log", d->opts.data_dir);
    jb_store_options so = {
        .dir = path,
        .retention_max_age_ms =
            jb_config_get_int(cfg, "event_bus.retention.max_age_seconds", NULL, NULL) * 1000,
        .retention_max_bytes =
            (uint64_t)jb_config_get_int(cfg, "event_bus.retention.max_bytes", NULL, NULL),
    };
    if (jb_store_fsync_parse(jb_config_get_string(cfg, "event_bus.fsync", NULL, NULL), &so.fsync,
                             &err) != JB_OK ||
        jb_store_open(&d->loop, &so, &d->store, &err) != JB_OK) {
        fprintf(stderr, "jimbotd: cannot open the log in %s: %s\n", path, err.message);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/groups.state", d->opts.data_dir);
    d->state_path = strdup(path);
    uint32_t dedup = cfg_u32(cfg, "event_bus.dedup_window_ms");
    int64_t idle_expiry = jb_config_get_int(cfg, "event_bus.group_idle_expiry", NULL, NULL);
    jb_bus_options bo = {
        .store = d->store,
        .state_path = d->state_path,
        .batch_window_ms = cfg_window(cfg),
        .max_batch_size = cfg_u32(cfg, "event_bus.max_batch_size"),
        .ack_wait_ms = cfg_u32(cfg, "event_bus.ack_wait_ms"),
        .max_deliver = cfg_u32(cfg, "event_bus.max_deliver"),
        .dedup_window_ms = dedup == 0 ? JB_BUS_DEDUP_OFF : dedup,
        .max_event_bytes = cfg_u32(cfg, "event_bus.max_event_bytes"),
        .max_headers = cfg_u32(cfg, "event_bus.max_headers_per_event"),
        .max_in_flight = cfg_u32(cfg, "event_bus.max_in_flight"),
        .max_group_pending = cfg_u32(cfg, "event_bus.max_group_pending"),
        .max_groups = cfg_u32(cfg, "event_bus.max_groups"),
        .group_idle_expiry_ms = idle_expiry ? (uint64_t)idle_expiry * 1000 : JB_BUS_EXPIRY_NEVER,
    };
    if (jb_bus_new(&d->loop, &bo, &d->bus, &err) != JB_OK ||
        jb_bus_apply_config(d->bus, cfg, &err) != JB_OK) {
        fprintf(stderr, "jimbotd: cannot start the event bus: %s\n", err.message);
        return -1;
    }
    if (coord_start(d, cfg) != 0)
        return -1;
    const char *listen = d->opts.listen;
    if (listen == NULL || listen[0] == '\0')
        listen = jb_config_get_string(cfg, "event_bus.listen", NULL, NULL);
    if (listen == NULL || listen[0] == '\0') {
        snprintf(path, sizeof(path), "127.0.0.1:%d", (int)cfg_u32(cfg, "event_bus.grpc_port"));
        listen = path;
    }
    size_t max_event = bo.max_event_bytes;
    jb_server_options sv = {
        .listen = listen,
        .bus = d->bus,
        .config = d->watcher,
        .coord = d->coord,
        /* A request holds at least one event of up to max_event_bytes. */
        .max_receive_bytes = max_event + (1u << 20) > (16u << 20) ? max_event + (1u << 20) : 0,
        .max_stream_bytes =
            (size_t)jb_config_get_int(cfg, "event_bus.slow_consumer_bytes", NULL, NULL),
        .slow_consumer_ms = cfg_u32(cfg, "event_bus.slow_consumer_ms"),
        .max_request_memory_bytes =
            (size_t)jb_config_get_int(cfg, "event_bus.max_request_memory_bytes", NULL, NULL),
        .max_concurrent_streams = cfg_u32(cfg, "event_bus.max_concurrent_streams"),
        .max_events_per_request = cfg_u32(cfg, "event_bus.max_events_per_request"),
        .max_headers_per_event = bo.max_headers,
    };
    if (jb_server_new(&d->loop, &sv, &d->server, &err) != JB_OK) {
        fprintf(stderr, "jimbotd: %s\n", err.message);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static jbd_daemon d;
    int rc = parse_args(argc, argv, &d.opts);
    if (rc != 0)
        return rc;
    if (d.opts.check_log)
        return check_log(&d.opts);

    jb_config *cfg = load_config(&d);
    if (cfg == NULL)
        return 1;
    if (d.opts.check_config) {
        printf("# jimbotd configuration: %s, environment %s\n", d.opts.config_path, d.opts.env);
        jb_config_dump(cfg, stdout);
        jb_config_unref(cfg);
        return 0;
    }
    apply_log_level(&d, cfg);
    /* A peer gone mid-write (Redis, a log pipe) is an error of that write, not our end. */
    signal(SIGPIPE, SIG_IGN);

    if (uv_loop_init(&d.loop) != 0) {
        fprintf(stderr, "jimbotd: cannot create the event loop\n");
        jb_config_unref(cfg);
        return 1;
    }
    jb_error err;
    jb_status st = jb_config_watcher_new(&d.loop, &d.config_opts, NULL, cfg, &d.watcher, &err);
    jb_config_unref(cfg);
    if (st != JB_OK || jb_config_watcher_subscribe(d.watcher, on_config_change, &d) != JB_OK) {
        fprintf(stderr, "jimbotd: cannot set up configuration reload: %s\n", jb_strerror(st));
        return 1;
    }
    /* Without a folder watch the daemon still runs, and SIGHUP still reloads. */
    if (jb_config_watcher_start(d.watcher, &err) != JB_OK)
        jb_log(JB_LOG_WARN, "config", "configuration files are not watched; use SIGHUP", "error=%s",
               err.message);

    uv_signal_t *signals[] = {&d.sigterm, &d.sigint, &d.sighup};
    int signums[] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&d.loop, signals[i]);
        signals[i]->data = &d;
        uv_signal_start(signals[i], on_signal, signums[i]);
    }

    if (engine_start(&d, jb_config_watcher_current(d.watcher)) != 0) {
        d.exit_code = 1;
        daemon_stop(&d, "start failed");
        uv_run(&d.loop, UV_RUN_DEFAULT);
        uv_loop_close(&d.loop);
        free(d.state_path);
        free(d.coord_path);
        return 1;
    }
    jb_log(JB_LOG_INFO, "daemon", "started",
           "version=%s config=%s env=%s data_dir=%s config_version=%llu pid=%d", JB_VERSION,
           d.opts.config_path, d.opts.env, d.opts.data_dir,
           (unsigned long long)jb_config_version(jb_config_watcher_current(d.watcher)),
           (int)getpid());
    uv_run(&d.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&d.loop);
    if (rc != 0) {
        jb_log(JB_LOG_ERROR, "daemon", "loop closed with live handles", "error=%s",
               uv_strerror(rc));
        return 1;
    }
    free(d.state_path);
    free(d.coord_path);
    jb_log(JB_LOG_INFO, "daemon", "stopped", NULL);
    return d.exit_code;
}
