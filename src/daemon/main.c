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
 * file changes and on SIGHUP; the daemon subscribes to apply log.level.
 */
#include "jimbot/config.h"
#include "jimbot/log.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct jbd_options {
    const char *config_path;
    const char *env;
    const char *listen;
    const char *data_dir;
    int check_config;
    int log_level_flag;
} jbd_options;

typedef struct jbd_daemon {
    uv_loop_t loop;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_signal_t sighup;
    jbd_options opts;
    jb_config_options config_opts;
    jb_config_watcher *watcher;
} jbd_daemon;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: jimbotd [-c FILE] [--env NAME] [--listen ADDR] [--data-dir DIR]\n"
            "               [--check-config] [--log-level LEVEL] [--help] [--version]\n"
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
            "      --data-dir DIR   durable log and state (default: ./var)\n"
            "      --check-config   validate the configuration, print it resolved (secrets\n"
            "                       masked) and exit 0, or print every error and exit 1\n"
            "      --log-level L    debug, info, warn or error (default: info)\n"
            "  -h, --help           show this help\n"
            "  -V, --version        print the version\n"
            "\n"
            "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the configuration.\n"
            "The configuration keys are listed in docs/configuration.md.\n");
}

static void on_close(uv_handle_t *handle)
{
    (void)handle;
}

static void daemon_stop(jbd_daemon *d, const char *why)
{
    jb_log(JB_LOG_INFO, "daemon", "shutting down", "reason=%s", why);
    jb_config_watcher_close(d->watcher, NULL, NULL);
    d->watcher = NULL;
    uv_close((uv_handle_t *)&d->sigterm, on_close);
    uv_close((uv_handle_t *)&d->sigint, on_close);
    uv_close((uv_handle_t *)&d->sighup, on_close);
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
    daemon_stop(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int parse_args(int argc, char **argv, jbd_options *o)
{
    enum { OPT_ENV = 256, OPT_LISTEN, OPT_DATA_DIR, OPT_CHECK, OPT_LOG_LEVEL };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"env", required_argument, NULL, OPT_ENV},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"data-dir", required_argument, NULL, OPT_DATA_DIR},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
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

/* log.level from the configuration, unless --log-level said otherwise. */
static void apply_log_level(const jbd_daemon *d, const jb_config *cfg)
{
    jb_log_level level;
    if (!d->opts.log_level_flag &&
        jb_log_level_parse(jb_config_get_string(cfg, "log.level", NULL, NULL), &level) == 0)
        jb_log_set_level(level);
}

static void on_config_change(const jb_config_change *change, void *userdata)
{
    apply_log_level(userdata, change->config);
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

int main(int argc, char **argv)
{
    static jbd_daemon d;
    int rc = parse_args(argc, argv, &d.opts);
    if (rc != 0)
        return rc;

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
    jb_log(JB_LOG_INFO, "daemon", "stopped", NULL);
    return 0;
}
