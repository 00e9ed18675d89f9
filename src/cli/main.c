/*
 * jimbotctl: the command line for people and scripts.
 *
 * Thin by design: argument parsing and output formatting only. Every call
 * goes through the C client library (include/jimbot/client.h); protobuf
 * payloads are read and shown as JSON by src/rpc/pb_json.c. Failures print
 * one line on stderr ("jimbotctl: ...") and exit non-zero:
 *
 *   0  success (health: SERVING)
 *   1  the call failed, or health is not SERVING
 *   2  usage error (bad option, bad --json, unknown --type)
 *   3  jimbotd could not be reached (UNAVAILABLE, deadline exceeded)
 *   4  not granted: quota --take found no budget, gpu acquire --timeout passed,
 *      queue submit was not answered for now (no worker, queue full, rate-limited,
 *      no answer in time)
 *   124  gpu acquire: the lease expired and COMMAND was stopped
 *  gpu acquire otherwise exits with COMMAND's status (128+N for signal N).
 *
 * subscribe prints one JSON object per event on stdout and acks each batch
 * once it is written (at-least-once for a pipe consumer); SIGINT, SIGTERM
 * and a closed stdout end it cleanly with status 0.
 *
 * gpu acquire runs a command holding a GPU lease, like flock(1) holds a lock:
 * the comment at the head of its section says how it waits and runs.
 */
#include "core/buf.h"
#include "rpc/pb_json.h"

#include "jimbot/client.h"
#include "jimbot/infra/v1/event_bus.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_UNREACHABLE = 3,
    EXIT_NOT_GRANTED = 4,
    EXIT_LEASE_EXPIRED = 124,
};

/* gpu acquire: SIGKILL this long after SIGTERM; re-attach for this long after a break. */
enum { KILL_AFTER_S = 5, REATTACH_S = 30 };

static const char *cmd_name = "jimbotctl";
static volatile sig_atomic_t stop_requested;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: jimbotctl [--addr ADDR] COMMAND [ARGS]\n"
            "\n"
            "Talks to a running jimbotd over gRPC.\n"
            "\n"
            "Commands:\n"
            "  publish TOPIC [--type T] [--json J | --payload S | --payload-file F]\n"
            "                     publish one event; prints its sequence\n"
            "  subscribe PATTERN [--group G] [--count N]\n"
            "                     print matching events as JSON lines\n"
            "  health             SERVING or not (exit 0 only when SERVING)\n"
            "  status [--json]    resource status: GPUs, GPU waiters, API budget, queues,\n"
            "                     breakers, Redis\n"
            "  gpu acquire [--component C] [--priority P] [--seconds S] [--timeout S]\n"
            "              -- COMMAND...\n"
            "                     run COMMAND holding a GPU lease (CUDA_VISIBLE_DEVICES set),\n"
            "                     release it when COMMAND exits; exit with its status\n"
            "  gpu release LEASE_ID\n"
            "                     release a lease held by anyone\n"
            "  gpu status [--json]\n"
            "                     GPU devices, holders, expiry, memory; the waiters in order\n"
            "  quota [--take N] [--component C] [--wait MS] [--json]\n"
            "                     the LLM API budget; --take N spends N from it\n"
            "  queue submit QUEUE [--type T] [--json J | --payload S | --payload-file F]\n"
            "                     put a request on a queue; print the worker's answer\n"
            "  queue take QUEUE (--echo | --reply-json J --type T | --fail TEXT) [--count N]\n"
            "                     be a worker: print each request as JSON and answer it\n"
            "  queue status [QUEUE] [--json]\n"
            "                     request queues: depth, workers, waits, cache, counters\n"
            "  redis access COMPONENT [--json] [--show-password | --uri]\n"
            "                     a component's credentials for the shared Redis\n"
            "  redis status [--json]\n"
            "                     the shared Redis: reachability, connections per component\n"
            "  groups [--json]    consumer groups: pattern, members, pending, lag, ack floor\n"
            "  group delete NAME  delete a consumer group that has no members\n"
            "  version            print the version\n"
            "\n"
            "Options:\n"
            "  --addr ADDR        jimbotd's address, host:port or unix:PATH\n"
            "                     (default $JIMBOT_ADDR, else %s)\n"
            "  -h, --help         this help; COMMAND --help for a command's options\n"
            "\n"
            "Exit status: 0 success, 1 failure, 2 usage error, 3 jimbotd unreachable,\n"
            "4 not granted (quota --take, gpu acquire --timeout; queue submit: not answered\n"
            "for now); gpu acquire: COMMAND's status, or 124 when the lease expired and\n"
            "COMMAND was stopped.\n",
            JB_CLIENT_DEFAULT_ADDR);
}

/* One line on stderr; newlines in @msg become spaces. */
static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++) {
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    }
    fprintf(stderr, "jimbotctl: %s: %s\n", cmd_name, msg);
    return code;
}

static int fail_status(jb_status st, const jb_error *err)
{
    int code = st == JB_EUNAVAILABLE || st == JB_ETIMEDOUT ? EXIT_UNREACHABLE : EXIT_FAILED;
    if (st == JB_EUNSUPPORTED)
        return fail(code, "not yet supported by this jimbotd (%s)", err->message);
    return fail(code, "%s", err->message);
}

static int bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int bad_usage(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return fail(EXIT_USAGE, "%s (see jimbotctl %s --help)", msg, cmd_name);
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (s == NULL || *s == '\0' || *s == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno != 0)
        return -1;
    *out = v;
    return 0;
}

static int read_file(const char *path, jb__buf *out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL)
        return -1;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        jb__buf_append(out, chunk, n);
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    return bad ? -1 : 0;
}

/*
 * Fills @body with the payload given as proto3 JSON of @type (the option
 * @json_flag: "--json", "--reply-json"), as the bytes of a string or of a
 * file (--payload-file); at most one is not NULL, none leaves @body empty.
 * Returns 0 or the exit status.
 */
static int build_payload(const char *json_flag, const char *type, const char *json,
                         const char *payload, const char *file, jb__buf *body)
{
    if (json != NULL) {
        if (type == NULL)
            return bad_usage("%s needs --type", json_flag);
        jb_error err;
        jb_status st = jb__pb_json_to_bytes(type, json, strlen(json), body, &err);
        if (st == JB_ENOENT)
            return fail(EXIT_USAGE, "--type '%s' is not a known message type (%s sends raw bytes)",
                        type, strcmp(json_flag, "--json") == 0 ? "--payload" : "--reply-payload");
        if (st != JB_OK)
            return fail(EXIT_USAGE, "%s: %s", json_flag, err.message);
    } else if (payload != NULL) {
        jb__buf_puts(body, payload);
    } else if (file != NULL && read_file(file, body) != 0) {
        return fail(EXIT_FAILED, "--payload-file %s: %s", file, strerror(errno));
    }
    return 0;
}

/*
 * Appends `"payload":` and the decoded message when @type is a known
 * protobuf type, else `"payload_base64":` and the bytes.
 */
static void put_payload(jb__buf *line, const char *type, const void *data, size_t len)
{
    size_t mark = line->len;
    jb__buf_puts(line, "\"payload\":");
    if (jb__pb_bytes_to_json(type != NULL ? type : "", data, len, line) != JB_OK) {
        line->len = mark;
        line->data[mark] = '\0';
        jb__buf_puts(line, "\"payload_base64\":");
        jb__json_put_base64(line, data, len);
    }
}

/* Appends `,"KEY":` and @s as a JSON string (NULL as ""). */
static void put_field(jb__buf *line, const char *key, const char *s)
{
    jb__buf_printf(line, ",\"%s\":", key);
    jb__json_put_string(line, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

/* ---- publish ------------------------------------------------------------- */

static void publish_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl publish TOPIC [OPTIONS]\n"
                 "\n"
                 "Publishes one event and prints its sequence (\"42\", or \"42 duplicate\" when\n"
                 "its --id was seen recently and it was not stored again).\n"
                 "\n"
                 "  --type T             the payload's type, e.g. jimbot.GameStateUpdate\n"
                 "  --json J             the payload as proto3 JSON of --type (a known type)\n"
                 "  --payload S          the payload as raw bytes (the string S)\n"
                 "  --payload-file F     the payload read from file F (- for stdin)\n"
                 "  --header K=V         a header; repeatable\n"
                 "  --id ID              an id for deduplication\n"
                 "  --source S           the publishing component (default jimbotctl)\n");
}

enum { MAX_HEADERS = 64 };

static int cmd_publish(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"type", required_argument, NULL, 't'},
        {"json", required_argument, NULL, 'j'},
        {"payload", required_argument, NULL, 'p'},
        {"payload-file", required_argument, NULL, 'f'},
        {"header", required_argument, NULL, 'H'},
        {"id", required_argument, NULL, 'i'},
        {"source", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *type = NULL, *json = NULL, *payload = NULL, *file = NULL, *id = NULL;
    const char *source = "jimbotctl";
    jb_header headers[MAX_HEADERS];
    char *header_copies[MAX_HEADERS];
    size_t n_headers = 0;
    int c, rc = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            type = optarg;
            break;
        case 'j':
            json = optarg;
            break;
        case 'p':
            payload = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        case 's':
            source = optarg;
            break;
        case 'H': {
            char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg) {
                rc = bad_usage("--header '%s': expected KEY=VALUE", optarg);
                goto out;
            }
            if (n_headers == MAX_HEADERS) {
                rc = bad_usage("more than %d headers", MAX_HEADERS);
                goto out;
            }
            char *copy = strdup(optarg);
            if (copy == NULL) {
                rc = fail(EXIT_FAILED, "out of memory");
                goto out;
            }
            copy[eq - optarg] = '\0';
            header_copies[n_headers] = copy;
            headers[n_headers++] = (jb_header){copy, copy + (eq - optarg) + 1};
            break;
        }
        case 'h':
            publish_usage(stdout);
            goto out;
        default:
            rc = bad_usage("bad option '%s'", argv[optind - 1]);
            goto out;
        }
    }
    if (optind + 1 != argc) {
        rc = bad_usage(optind >= argc ? "expected a TOPIC%s" : "unexpected argument '%s'",
                       optind >= argc ? "" : argv[optind + 1]);
        goto out;
    }
    if ((json != NULL) + (payload != NULL) + (file != NULL) > 1) {
        rc = bad_usage("give one of --json, --payload, --payload-file");
        goto out;
    }

    jb__buf body;
    jb__buf_init(&body);
    rc = build_payload("--json", type, json, payload, file, &body);
    if (rc == 0) {
        jb_event ev = {.id = id,
                       .topic = argv[optind],
                       .type = type,
                       .source = source,
                       .payload = body.data,
                       .payload_len = body.len,
                       .headers = headers,
                       .n_headers = n_headers};
        jb_error err;
        uint64_t seq = 0;
        uint8_t dup = 0;
        jb_status st = jb_client_new(copts, client, &err);
        if (st == JB_OK)
            st = jb_client_publish(*client, &ev, 1, &seq, &dup, NULL, &err);
        if (st != JB_OK)
            rc = fail_status(st, &err);
        else
            printf("%" PRIu64 "%s\n", seq, dup ? " duplicate" : "");
    }
    jb__buf_release(&body);
out:
    for (size_t i = 0; i < n_headers; i++)
        free(header_copies[i]);
    return rc;
}

/* ---- subscribe ----------------------------------------------------------- */

static void subscribe_usage(FILE *out)
{
    fprintf(out,
            "usage: jimbotctl subscribe PATTERN [OPTIONS]\n"
            "\n"
            "Prints each event of the topics matching PATTERN ('game_events.>', 'a.*.c') as\n"
            "one JSON object per line:\n"
            "  "
            "{\"sequence\":42,\"topic\":\"...\",\"type\":\"...\",\"timestamp_ms\":...,\"source\":"
            "\"...\",\n"
            "   \"headers\":{...},\"delivery_attempt\":1,\"payload\":{...}}\n"
            "where payload is the decoded message when type is a known protobuf type, else\n"
            "\"payload_base64\" holds the bytes. Each batch is acked once printed.\n"
            "\n"
            "  --group G            consumer group (default: a private group for this run)\n"
            "  --count N            exit 0 after N events\n"
            "  --from WHERE         where a new group starts: new (default), all, or a sequence\n"
            "  --max-in-flight N    unacked events at once (default: the server's)\n"
            "  --no-ack             do not ack (events come back after the group's ack wait)\n"
            "  --keepalive MS       ping the server after MS without traffic, so that a server\n"
            "                       that vanished is noticed in about MS + 3000 ms and the\n"
            "                       stream is subscribed again (default 2000, at least 1000;\n"
            "                       0: no pings); each new attempt is reported on stderr\n");
}

static void print_event(jb__buf *line, const jb_event *ev)
{
    jb__buf_reset(line);
    jb__buf_printf(line, "{\"sequence\":%" PRIu64 ",\"topic\":", ev->sequence);
    const char *topic = ev->topic != NULL ? ev->topic : "";
    const char *type = ev->type != NULL ? ev->type : "";
    const char *source = ev->source != NULL ? ev->source : "";
    jb__json_put_string(line, topic, strlen(topic));
    jb__buf_puts(line, ",\"type\":");
    jb__json_put_string(line, type, strlen(type));
    jb__buf_printf(line, ",\"timestamp_ms\":%" PRId64 ",\"source\":", ev->timestamp_ms);
    jb__json_put_string(line, source, strlen(source));
    if (ev->id != NULL && ev->id[0]) {
        jb__buf_puts(line, ",\"id\":");
        jb__json_put_string(line, ev->id, strlen(ev->id));
    }
    jb__buf_puts(line, ",\"headers\":{");
    for (size_t i = 0; i < ev->n_headers; i++) {
        if (i > 0)
            jb__buf_putc(line, ',');
        const char *k = ev->headers[i].key ? ev->headers[i].key : "";
        const char *v = ev->headers[i].value ? ev->headers[i].value : "";
        jb__json_put_string(line, k, strlen(k));
        jb__buf_putc(line, ':');
        jb__json_put_string(line, v, strlen(v));
    }
    jb__buf_printf(line, "},\"delivery_attempt\":%u,", ev->delivery_attempt);
    put_payload(line, type, ev->payload, ev->payload_len);
    jb__buf_puts(line, "}\n");
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* SIGINT and SIGTERM set stop_requested; a closed stdout is a write error, not SIGPIPE. */
static void catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int cmd_subscribe(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"group", required_argument, NULL, 'g'}, {"count", required_argument, NULL, 'n'},
        {"from", required_argument, NULL, 'F'},  {"max-in-flight", required_argument, NULL, 'm'},
        {"no-ack", no_argument, NULL, 'A'},      {"keepalive", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    jb_client_sub_options so = {0};
    jb_client_options co = *copts;
    uint64_t count = 0, v;
    int ack = 1, c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'g':
            so.group = optarg;
            break;
        case 'n':
            if (parse_u64(optarg, &count) != 0 || count == 0)
                return bad_usage("--count '%s': expected a positive number", optarg);
            break;
        case 'F':
            if (strcmp(optarg, "new") == 0) {
                so.start = JB_CLIENT_START_NEW;
            } else if (strcmp(optarg, "all") == 0) {
                so.start = JB_CLIENT_START_ALL;
            } else if (parse_u64(optarg, &so.start_sequence) == 0) {
                so.start = JB_CLIENT_START_FROM_SEQUENCE;
            } else {
                return bad_usage("--from '%s': expected new, all or a sequence", optarg);
            }
            break;
        case 'm':
            if (parse_u64(optarg, &v) != 0 || v > UINT32_MAX)
                return bad_usage("--max-in-flight '%s': expected a number", optarg);
            so.max_in_flight = (uint32_t)v;
            break;
        case 'A':
            ack = 0;
            break;
        case 'k':
            if (parse_u64(optarg, &v) != 0 || v >= UINT32_MAX)
                return bad_usage("--keepalive '%s': expected milliseconds", optarg);
            co.keepalive_ms = v == 0 ? JB_CLIENT_KEEPALIVE_OFF : (uint32_t)v;
            break;
        case 'h':
            subscribe_usage(stdout);
            return 0;
        default:
            return bad_usage("bad option '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        return bad_usage(optind >= argc ? "expected a PATTERN%s" : "unexpected argument '%s'",
                         optind >= argc ? "" : argv[optind + 1]);
    so.pattern = argv[optind];

    catch_stop_signals();

    jb_error err;
    jb_client_sub *sub = NULL;
    jb_status st = jb_client_new(&co, client, &err);
    if (st == JB_OK)
        st = jb_client_subscribe(*client, &so, NULL, NULL, &sub, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    jb__buf line;
    jb__buf_init(&line);
    uint64_t printed = 0;
    uint64_t *seqs = NULL;
    size_t seqs_cap = 0;
    int rc = 0;
    uint32_t reconnects = 0;
    while (!stop_requested && (count == 0 || printed < count)) {
        jb_client_batch *b;
        st = jb_client_sub_next(sub, 200, &b, &err);
        if (jb_client_sub_reconnects(sub) != reconnects) {
            reconnects = jb_client_sub_reconnects(sub);
            fprintf(stderr, "jimbotctl: the stream broke; subscribing again (attempt %u)\n",
                    reconnects);
        }
        if (st == JB_ETIMEDOUT)
            continue;
        if (st != JB_OK) {
            rc = fail_status(st, &err);
            break;
        }
        if (b->n > seqs_cap) {
            seqs_cap = b->n;
            seqs = jb__xrealloc(seqs, seqs_cap * sizeof(*seqs));
        }
        size_t k = 0;
        int closed = 0;
        for (size_t i = 0; i < b->n && (count == 0 || printed < count); i++) {
            print_event(&line, &b->events[i]);
            if (fwrite(line.data, 1, line.len, stdout) != line.len) {
                closed = 1;
                break;
            }
            seqs[k++] = b->events[i].sequence;
            printed++;
        }
        jb_client_batch_free(b);
        if (fflush(stdout) != 0 || closed)
            break; /* the reader went away: what it did not get stays unacked */
        st = ack && k > 0 ? jb_client_sub_ack(sub, seqs, k, &err) : JB_OK;
        if (st == JB_EUNAVAILABLE || st == JB_ETIMEDOUT) {
            /* The server went away: it delivers those events again. */
            fprintf(stderr, "jimbotctl: ack lost (%s); the events will come again\n", err.message);
        } else if (st != JB_OK) {
            rc = fail_status(st, &err);
            break;
        }
    }
    free(seqs);
    jb__buf_release(&line);
    jb_client_unsubscribe(sub);
    return rc;
}

/* ---- health ------------------------------------------------------ */

static int no_args(int argc, char **argv, void (*help)(FILE *), const char *const *flags,
                   int *flag_set)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            help(stdout);
            return -1;
        }
        int known = 0;
        for (int f = 0; flags != NULL && flags[f] != NULL; f++) {
            if (strcmp(argv[i], flags[f]) == 0) {
                flag_set[f] = 1;
                known = 1;
            }
        }
        if (!known)
            return bad_usage("unexpected argument '%s'", argv[i]);
    }
    return 0;
}

static void health_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl health\n"
                 "\n"
                 "Asks grpc.health.v1.Health/Check and prints SERVING, NOT_SERVING, UNKNOWN or\n"
                 "SERVICE_UNKNOWN. Exit status 0 only when SERVING.\n");
}

static int cmd_health(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    int rc = no_args(argc, argv, health_usage, NULL, NULL);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    jb_error err;
    jb_health h = JB_HEALTH_UNKNOWN;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_health(*client, "", &h, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    printf("%s\n", jb_health_name(h));
    return h == JB_HEALTH_SERVING ? 0 : EXIT_FAILED;
}

/*
 * Connects and calls @method with an empty request (all of whose fields are
 * optional); *@resp (malloc'd, the caller frees it) holds the answer. Returns 0,
 * or the exit status after printing why.
 */
static int call_empty(jb_client **client, const jb_client_options *copts, const char *method,
                      void **resp, size_t *len)
{
    jb_error err;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_call(*client, method, "", 0, resp, len, &err);
    return st == JB_OK ? 0 : fail_status(st, &err);
}

/* ---- groups, group delete ------------------------------------------------ */

static void groups_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl groups [--json]\n"
                 "\n"
                 "Lists the consumer groups (EventBus/ListGroups), one a line: NAME, PATTERN,\n"
                 "MEMBERS (subscribers now), PENDING (unhandled matching events), LAG (log\n"
                 "sequences past its read position), ACK_FLOOR (everything matching below it\n"
                 "is handled), IN_FLIGHT,\n"
                 "IDLE (seconds without a member; a named group idle for\n"
                 "event_bus.group_idle_expiry is deleted). Private groups show as '(private)'.\n"
                 "--json prints the ListGroupsResponse as one line of JSON.\n");
}

static void print_groups(const Jimbot__Infra__V1__ListGroupsResponse *r)
{
    printf("%-24s %-24s %7s %9s %9s %10s %9s %8s\n", "NAME", "PATTERN", "MEMBERS", "PENDING", "LAG",
           "ACK_FLOOR", "IN_FLIGHT", "IDLE_S");
    for (size_t i = 0; i < r->n_groups; i++) {
        const Jimbot__Infra__V1__GroupInfo *g = r->groups[i];
        printf("%-24s %-24s %7u %9" PRIu64 " %9" PRIu64 " %10" PRIu64 " %9" PRIu64 " %8" PRIu64
               "%s\n",
               g->name, g->pattern, g->members, g->pending, g->lag, g->ack_floor, g->in_flight,
               g->idle_ms / 1000, g->private_group ? " (private)" : "");
    }
}

static int cmd_groups(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const char *const flags[] = {"--json", NULL};
    int json = 0;
    int rc = no_args(argc, argv, groups_usage, flags, &json);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    void *resp = NULL;
    size_t len = 0;
    if ((rc = call_empty(client, copts, "/jimbot.infra.v1.EventBus/ListGroups", &resp, &len)) != 0)
        return rc;
    jb__buf out;
    jb__buf_init(&out);
    Jimbot__Infra__V1__ListGroupsResponse *r =
        jimbot__infra__v1__list_groups_response__unpack(NULL, len, resp);
    if (r == NULL) {
        rc = fail(EXIT_FAILED, "malformed ListGroupsResponse (%zu bytes)", len);
    } else if (json) {
        jb__pb_to_json(&r->base, &out);
        printf("%s\n", out.data);
    } else {
        print_groups(r);
    }
    if (r != NULL)
        jimbot__infra__v1__list_groups_response__free_unpacked(r, NULL);
    jb__buf_release(&out);
    free(resp);
    return rc;
}

static void group_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl group delete NAME\n"
                 "\n"
                 "Deletes the named consumer group (EventBus/DeleteGroup): its position, acks\n"
                 "and delivery attempts are forgotten and it no longer holds back retention.\n"
                 "A group that has members is not deleted (FAILED_PRECONDITION): stop its\n"
                 "subscribers first.\n");
}

static int cmd_group(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            group_usage(stdout);
            return 0;
        }
    }
    if (argc != 3 || strcmp(argv[1], "delete") != 0)
        return bad_usage("expected 'group delete NAME'");
    Jimbot__Infra__V1__DeleteGroupRequest req = JIMBOT__INFRA__V1__DELETE_GROUP_REQUEST__INIT;
    req.group = argv[2];
    size_t n = jimbot__infra__v1__delete_group_request__get_packed_size(&req);
    uint8_t *buf = jb__xmalloc(n ? n : 1);
    jimbot__infra__v1__delete_group_request__pack(&req, buf);
    jb_error err;
    void *resp = NULL;
    size_t len = 0;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_call(*client, "/jimbot.infra.v1.EventBus/DeleteGroup", buf, n, &resp, &len,
                            &err);
    free(buf);
    free(resp);
    if (st != JB_OK)
        return fail_status(st, &err);
    printf("deleted group %s\n", argv[2]);
    return 0;
}

/* ---- Coordinator commands: shared formatting ----------------------------- */

/* The component jimbotctl asks as: $JIMBOT_COMPONENT, else "jimbotctl". */
static const char *default_component(void)
{
    const char *c = getenv("JIMBOT_COMPONENT");
    return c != NULL && c[0] != '\0' ? c : "jimbotctl";
}

static int64_t wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A span of @ms as "1h02m", "3m05s", "42s" ("0s" when not positive). */
static const char *fmt_span(char *buf, size_t size, int64_t ms)
{
    int64_t s = ms > 0 ? (ms + 999) / 1000 : 0;
    if (s >= 3600)
        snprintf(buf, size, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(buf, size, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else
        snprintf(buf, size, "%" PRId64 "s", s);
    return buf;
}

static const char *fmt_gib(char *buf, size_t size, uint64_t bytes)
{
    snprintf(buf, size, "%.1f", (double)bytes / (1024.0 * 1024.0 * 1024.0));
    return buf;
}

static int parse_i32(const char *s, int32_t *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0' || errno != 0 || v < INT32_MIN || v > INT32_MAX)
        return -1;
    *out = (int32_t)v;
    return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
    uint64_t v;
    if (parse_u64(s, &v) != 0 || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static void print_gpus(const jb_client_resource_status *s)
{
    char exp[32], used[16], total[16], holder[200];
    int64_t now = wall_ms();
    printf("%-4s %-20s %-24s %-38s %-10s %s\n", "GPU", "NAME", "HOLDER", "LEASE", "EXPIRES_IN",
           "MEMORY_GIB");
    for (size_t i = 0; i < s->n_gpus; i++) {
        const jb_client_gpu_device *d = &s->gpus[i];
        if (d->holder[0] == '\0')
            snprintf(holder, sizeof(holder), "%s", d->releasing ? "(releasing)" : "(free)");
        else if (d->holder_pid != 0)
            snprintf(holder, sizeof(holder), "%s pid %u%s", d->holder, d->holder_pid,
                     d->restored ? " (restored)" : "");
        else
            snprintf(holder, sizeof(holder), "%s%s", d->holder, d->restored ? " (restored)" : "");
        const char *mem = "-";
        char membuf[40];
        if (d->memory_total_bytes > 0) {
            snprintf(membuf, sizeof(membuf), "%s/%s",
                     fmt_gib(used, sizeof(used), d->memory_used_bytes),
                     fmt_gib(total, sizeof(total), d->memory_total_bytes));
            mem = membuf;
        }
        printf("%-4u %-20s %-24s %-38s %-10s %s\n", d->index, d->name[0] ? d->name : "-", holder,
               d->lease_id[0] ? d->lease_id : "-",
               d->holder[0] ? fmt_span(exp, sizeof(exp), d->expires_ms - now) : "-", mem);
    }
    if (s->n_gpu_waiters == 0) {
        printf("no GPU waiters\n");
        return;
    }
    printf("\n%-4s %-24s %8s %-8s %s\n", "POS", "WAITER", "PRIORITY", "WAITING", "REASON");
    for (size_t i = 0; i < s->n_gpu_waiters; i++) {
        const jb_client_gpu_waiter *w = &s->gpu_waiters[i];
        printf("%-4u %-24s %8d %-8s %s\n", w->position, w->component, w->priority,
               fmt_span(exp, sizeof(exp), now - w->since_ms), w->reason[0] ? w->reason : "-");
    }
}

static void print_budget(const jb_client_resource_status *s)
{
    char next[32];
    int64_t wait = s->budget_next_slot_ms - wall_ms();
    printf("limit           %u per %u s\n", s->budget_limit, s->budget_window_seconds);
    printf("used            %u\n", s->budget_used);
    printf("remaining       %u\n", s->budget_remaining);
    printf("next free slot  %s%s\n", s->budget_next_slot_ms == 0 || wait <= 0 ? "now" : "in ",
           s->budget_next_slot_ms == 0 || wait <= 0 ? "" : fmt_span(next, sizeof(next), wait));
    printf("waiting         %u\n", s->budget_waiting);
    if (s->n_budget_components == 0)
        return;
    printf("%-24s %6s %6s\n", "COMPONENT", "USED", "SHARE");
    for (size_t i = 0; i < s->n_budget_components; i++) {
        const jb_client_quota_component *q = &s->budget_components[i];
        char share[16] = "-";
        if (q->share > 0)
            snprintf(share, sizeof(share), "%u", q->share);
        printf("%-24s %6u %6s\n", q->component, q->used, share);
    }
}

static const char *breaker_name(jb_client_breaker_state st)
{
    switch (st) {
    case JB_CLIENT_BREAKER_CLOSED:
        return "closed";
    case JB_CLIENT_BREAKER_OPEN:
        return "open";
    case JB_CLIENT_BREAKER_HALF_OPEN:
        return "half-open";
    }
    return "?";
}

static void print_queues(const jb_client_resource_status *s, const char *only)
{
    char wait[32];
    printf("%-16s %-6s %11s %9s %7s %-8s %9s %9s %9s %8s %s\n", "QUEUE", "BUDGET", "DEPTH/MAX",
           "IN_FLIGHT", "WORKERS", "OLDEST", "SUBMITTED", "CACHE_HIT", "COALESCED", "POISONED",
           "CACHED");
    for (size_t i = 0; i < s->n_request_queues; i++) {
        const jb_client_queue_status *q = &s->request_queues[i];
        if (only != NULL && strcmp(q->name, only) != 0)
            continue;
        char depth[32], cached[48];
        snprintf(depth, sizeof(depth), "%u/%u", q->depth, q->max_depth);
        snprintf(cached, sizeof(cached), "%u (%" PRIu64 " B)", q->cache_entries, q->cache_bytes);
        printf("%-16s %-6s %11s %9u %7u %-8s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %8" PRIu64
               " %s\n",
               q->name, q->budget, depth, q->in_flight, q->workers,
               q->depth > 0 ? fmt_span(wait, sizeof(wait), (int64_t)q->oldest_wait_ms) : "-",
               q->submitted, q->cache_hits, q->coalesced, q->poisoned, cached);
    }
}

static void put_queue_json(jb__buf *b, const jb_client_queue_status *q)
{
    jb__buf_puts(b, "{\"name\":");
    jb__json_put_string(b, q->name, strlen(q->name));
    put_field(b, "budget", q->budget);
    jb__buf_printf(b,
                   ",\"max_depth\":%u,\"depth\":%u,\"in_flight\":%u,\"workers\":%u,"
                   "\"oldest_wait_ms\":%" PRIu64 ",\"submitted\":%" PRIu64
                   ",\"cache_hits\":%" PRIu64 ",\"coalesced\":%" PRIu64 ",\"poisoned\":%" PRIu64
                   ",\"cache_bytes\":%" PRIu64 ",\"cache_entries\":%u}",
                   q->max_depth, q->depth, q->in_flight, q->workers, q->oldest_wait_ms,
                   q->submitted, q->cache_hits, q->coalesced, q->poisoned, q->cache_bytes,
                   q->cache_entries);
}

/* The shared Redis (`redis status`, and the last part of `status`). */
static void print_redis(const jb_client_resource_status *st)
{
    const jb_client_redis_status *r = &st->redis;
    if (!r->configured) {
        printf("not configured (resource_coordinator.redis.url is empty)\n");
        return;
    }
    char ago[32];
    printf("url             %s\n", r->url);
    if (r->reachable)
        printf("state           reachable%s%s\n", r->error[0] ? "; last error: " : "", r->error);
    else
        printf("state           unreachable: %s\n", r->error[0] ? r->error : "?");
    if (r->checked_ms == 0)
        printf("connections     not checked yet, max %u\n", r->max_connections);
    else
        printf("connections     %u of %u (checked %s ago)\n", r->connections, r->max_connections,
               fmt_span(ago, sizeof(ago), wall_ms() - r->checked_ms));
    if (r->n_components == 0)
        return;
    printf("%-20s %-24s %-16s %11s %7s\n", "COMPONENT", "USER", "PREFIX", "CONNECTIONS", "CLOSED");
    for (size_t i = 0; i < r->n_components; i++) {
        const jb_client_redis_component *c = &r->components[i];
        char used[32];
        snprintf(used, sizeof(used), "%u/%u", c->connections, c->allowance);
        printf("%-20s %-24s %-16s %11s %7" PRIu64 "\n", c->component, c->username, c->key_prefix,
               used, c->connections_closed);
    }
}

static void print_status_table(const jb_client_resource_status *s)
{
    printf("GPUs (%zu, from %s)\n", s->n_gpus, s->gpu_source[0] ? s->gpu_source : "?");
    print_gpus(s);
    printf("\nLLM API budget\n");
    print_budget(s);
    printf("\nRequest queues\n");
    if (s->n_request_queues > 0)
        print_queues(s, NULL);
    else if (s->n_queues == 0)
        printf("none\n");
    for (size_t i = 0; i < s->n_queues && s->n_request_queues == 0; i++)
        printf("%-24s %6u\n", s->queues[i].queue, s->queues[i].depth);
    printf("\nBreakers\n");
    if (s->n_breakers == 0)
        printf("none\n");
    int64_t now = wall_ms();
    for (size_t i = 0; i < s->n_breakers; i++) {
        const jb_client_breaker *b = &s->breakers[i];
        char in[32];
        printf("%-24s %-9s failures %u", b->name, breaker_name(b->state), b->failures);
        if (b->state == JB_CLIENT_BREAKER_OPEN)
            printf(", retry in %s", fmt_span(in, sizeof(in), b->retry_at_ms - now));
        printf("\n");
    }
    printf("\nRedis\n");
    print_redis(s);
}

/* Prints @s's message as one line of proto3 JSON. */
static int print_status_json(const jb_client_resource_status *s)
{
    jb__buf out;
    jb__buf_init(&out);
    int rc = 0;
    if (jb__pb_bytes_to_json("jimbot.infra.v1.ResourceStatus", s->encoded, s->encoded_len, &out) !=
        JB_OK)
        rc = fail(EXIT_FAILED, "malformed ResourceStatus (%zu bytes)", s->encoded_len);
    else
        printf("%s\n", out.data);
    jb__buf_release(&out);
    return rc;
}

/*
 * Connects, asks GetResourceStatus and prints the answer: with @print_json
 * when @json is set, else with @table. Returns 0 or the exit status.
 */
static int show_status(jb_client **client, const jb_client_options *copts, int json,
                       void (*table)(const jb_client_resource_status *s),
                       int (*print_json)(const jb_client_resource_status *s))
{
    jb_error err;
    jb_client_resource_status *s;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_resource_status_get(*client, &s, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    int rc = 0;
    if (json)
        rc = print_json(s);
    else
        table(s);
    jb_client_resource_status_free(s);
    return rc;
}

/*
 * The commands that print the resource status (status, gpu status): they take
 * --json (the whole message) or print it with @table; @help is their usage.
 */
static int status_command(jb_client **client, const jb_client_options *copts, int argc, char **argv,
                          void (*help)(FILE *out),
                          void (*table)(const jb_client_resource_status *s))
{
    static const char *const flags[] = {"--json", NULL};
    int json = 0;
    int rc = no_args(argc, argv, help, flags, &json);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    return show_status(client, copts, json, table, print_status_json);
}

/* ---- status ----------------------------------------------------------------- */

static void status_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl status [--json]\n"
                 "\n"
                 "Prints jimbotd's resource status (Infrastructure/GetResourceStatus) as tables:\n"
                 "the GPU devices (holder, lease, time left, memory), the GPU waiters in the\n"
                 "order they will be served, the LLM API budget (limit, used, remaining, next\n"
                 "free slot, waiting calls, per component), the request queues\n"
                 "(as `queue status` shows them), circuit breakers and the shared Redis (as\n"
                 "`redis status` shows it).\n"
                 "--json prints the ResourceStatus message as one line of proto3 JSON.\n");
}

static int cmd_status(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    return status_command(client, copts, argc, argv, status_usage, print_status_table);
}

/* ---- quota ------------------------------------------------------------------ */

static void quota_usage(FILE *out)
{
    fprintf(
        out,
        "usage: jimbotctl quota [--take N [--component C] [--wait MS] [--priority P]] [--json]\n"
        "\n"
        "Without --take, prints the LLM API budget: the hourly limit, the requests used in\n"
        "the sliding window, those remaining, when the next one frees up, the calls\n"
        "waiting for budget, and what each component spent (and its share, if any).\n"
        "\n"
        "With --take, spends N requests (Infrastructure/AcquireApiQuota) and prints\n"
        "\"granted N, remaining R of L\"; when the budget does not allow it, exits 4 with\n"
        "\"not granted: retry after MS ms\" on stderr.\n"
        "\n"
        "  --take N             requests to spend (at least 1)\n"
        "  --component C        who spends (default $JIMBOT_COMPONENT, else jimbotctl)\n"
        "  --wait MS            wait up to MS milliseconds for budget (default 0)\n"
        "  --priority P         among waiters, higher first (default 0)\n"
        "  --json               the answer (or the budget) as one line of JSON\n");
}

/* Prints @s's budget as one line of JSON; returns 0. */
static int print_budget_json(const jb_client_resource_status *s)
{
    jb__buf b;
    jb__buf_init(&b);
    jb__buf_printf(&b,
                   "{\"limit\":%u,\"used\":%u,\"remaining\":%u,\"waiting\":%u,"
                   "\"windowSeconds\":%u,\"nextSlotMs\":%" PRId64 ",\"components\":[",
                   s->budget_limit, s->budget_used, s->budget_remaining, s->budget_waiting,
                   s->budget_window_seconds, s->budget_next_slot_ms);
    for (size_t i = 0; i < s->n_budget_components; i++) {
        const jb_client_quota_component *q = &s->budget_components[i];
        jb__buf_puts(&b, i > 0 ? ",{\"component\":" : "{\"component\":");
        jb__json_put_string(&b, q->component, strlen(q->component));
        jb__buf_printf(&b, ",\"used\":%u,\"share\":%u}", q->used, q->share);
    }
    jb__buf_puts(&b, "]}");
    printf("%s\n", b.data);
    jb__buf_release(&b);
    return 0;
}

static int quota_take(jb_client **client, const jb_client_options *copts,
                      const jb_client_quota_request *req, int json)
{
    jb_error err;
    jb_client_quota q;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_quota_acquire(*client, req, &q, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    if (json)
        printf("{\"granted\":%s,\"remaining\":%u,\"retryAfterMs\":%" PRIu64 ",\"limit\":%u}\n",
               q.granted ? "true" : "false", q.remaining, q.retry_after_ms, q.limit);
    else if (q.granted)
        printf("granted %u, remaining %u of %u\n", req->count, q.remaining, q.limit);
    if (!q.granted)
        return fail(EXIT_NOT_GRANTED, "not granted: retry after %" PRIu64 " ms (%u of %u left)",
                    q.retry_after_ms, q.remaining, q.limit);
    return 0;
}

static int cmd_quota(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"take", required_argument, NULL, 't'},
        {"component", required_argument, NULL, 'c'},
        {"wait", required_argument, NULL, 'w'},
        {"priority", required_argument, NULL, 'p'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    jb_client_quota_request req = {.component = default_component()};
    int json = 0, take = 0, c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (parse_u32(optarg, &req.count) != 0 || req.count == 0)
                return bad_usage("--take '%s': expected a positive number", optarg);
            take = 1;
            break;
        case 'c':
            req.component = optarg;
            break;
        case 'w':
            if (parse_u32(optarg, &req.wait_ms) != 0)
                return bad_usage("--wait '%s': expected milliseconds", optarg);
            break;
        case 'p':
            if (parse_i32(optarg, &req.priority) != 0)
                return bad_usage("--priority '%s': expected a number", optarg);
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            quota_usage(stdout);
            return 0;
        default:
            return bad_usage("bad option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad_usage("unexpected argument '%s'", argv[optind]);
    if (take)
        return quota_take(client, copts, &req, json);
    return show_status(client, copts, json, print_budget, print_budget_json);
}

/* ---- gpu status, gpu release ------------------------------------------------ */

static void gpu_usage(FILE *out)
{
    fprintf(out,
            "usage: jimbotctl gpu acquire [OPTIONS] -- COMMAND [ARGS...]\n"
            "       jimbotctl gpu release LEASE_ID\n"
            "       jimbotctl gpu status [--json]\n"
            "\n"
            "acquire  waits for a GPU lease (printing \"waiting for a GPU: position N\" on\n"
            "         stderr as the position changes), then runs COMMAND holding it, with\n"
            "         CUDA_VISIBLE_DEVICES set to the device's index and JIMBOT_GPU_LEASE to the\n"
            "         lease id (JIMBOT_GPU_UUID too, with NVML), and releases it when COMMAND\n"
            "         exits, like flock(1). Exits with COMMAND's status (128+N for signal N).\n"
            "         SIGINT and SIGTERM are passed on to COMMAND. Shortly before the lease's\n"
            "         end a warning goes to stderr; at its end COMMAND gets SIGTERM (SIGKILL\n"
            "         %d s later) and jimbotctl exits 124. If jimbotctl dies, COMMAND gets\n"
            "         SIGTERM and the lease is released. When jimbotd restarts meanwhile, the\n"
            "         lease is re-attached (tried for %d s).\n"
            "  --component C        who asks (default $JIMBOT_COMPONENT, else jimbotctl);\n"
            "                       gpu.priority_components go first\n"
            "  --priority P         higher first among waiters of the same class (default 0)\n"
            "  --seconds S          wanted lease length (default: gpu.max_allocation_seconds)\n"
            "  --reason R           shown in status (default: COMMAND's words)\n"
            "  --timeout S          give up after waiting S seconds: exit 4 (default: wait)\n"
            "\n"
            "release  releases a lease held by anyone (Infrastructure/ReleaseGpu); its\n"
            "         holder's stream ends and the device goes to the next waiter.\n"
            "\n"
            "status   the devices (index, name, holder, lease, expires in, memory used/total\n"
            "         in GiB) and the waiters in the order they will be served; --json prints\n"
            "         the whole ResourceStatus as one line of proto3 JSON.\n",
            KILL_AFTER_S, REATTACH_S);
}

static int cmd_gpu_status(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    return status_command(client, copts, argc, argv, gpu_usage, print_gpus);
}

static int cmd_gpu_release(jb_client **client, const jb_client_options *copts, int argc,
                           char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            gpu_usage(stdout);
            return 0;
        }
    }
    if (argc != 2 || argv[1][0] == '-')
        return bad_usage(argc < 2 ? "expected a LEASE_ID%s" : "unexpected argument '%s'",
                         argc < 2 ? "" : argv[argc - 1]);
    jb_error err;
    jb_client_gpu_release_info info;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_gpu_release_id(*client, argv[1], &info, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    char held[32], mem[16];
    printf("released %s (device %u, held %s", argv[1], info.device,
           fmt_span(held, sizeof(held), (int64_t)info.held_ms));
    if (info.memory_held_bytes > 0)
        printf("; its processes still hold %s GiB, the device waits for it",
               fmt_gib(mem, sizeof(mem), info.memory_held_bytes));
    printf(")\n");
    return 0;
}

/* ---- gpu acquire ------------------------------------------------------------ */

/*
 * The command is forked first, before the client's thread exists, and waits
 * on a pipe for the grant ("DEVICE\nLEASE\nUUID\n"), then sets the
 * environment and execs; so the daemon is given the pid of the process that
 * will use the GPU. The lease runs in callback mode: its callback writes each
 * event (a plain struct, under PIPE_BUF) to a pipe, and the signal handlers
 * write a byte to another, so that the main thread sleeps in poll() and
 * reacts at once to an event, a signal or the command's exit (SIGCHLD).
 */

typedef struct gpu_run {
    pid_t child;
    int grant_fd;       /* write end of the child's pipe; -1 once written */
    int ev_fd[2];       /* lease events */
    int64_t wait_until; /* monotonic; 0: no --timeout */
    uint32_t timeout_s;
    int waited; /* printed a position */
    uint32_t position;
    int granted;
    jb_client_gpu_event end; /* the lease's end, while COMMAND runs */
    int lost;
    int64_t kill_at; /* monotonic: SIGKILL COMMAND then */
    int status;      /* COMMAND's wait status */
    int exited;
} gpu_run;

static int sig_fd[2] = {-1, -1};
static volatile sig_atomic_t last_signal;

static void on_gpu_signal(int sig)
{
    int saved = errno;
    if (sig != SIGCHLD)
        last_signal = sig;
    char b = (char)sig;
    if (write(sig_fd[1], &b, 1) < 0) {
        /* Full: a byte is waiting already, which is all poll() needs. */
    }
    errno = saved;
}

static void on_lease_event(jb_client_gpu *lease, const jb_client_gpu_event *ev, void *userdata)
{
    (void)lease;
    gpu_run *r = userdata;
    /* Under PIPE_BUF, so written whole or not at all; a full pipe drops it
     * (only keepalives come that fast). */
    if (write(r->ev_fd[1], ev, sizeof(*ev)) < 0) {
        /* dropped */
    }
}

/* In the child: waits for the grant, sets the environment, runs the command. */
static void child_exec(int fd, char **cmd)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    char buf[512];
    size_t n = 0;
    for (;;) {
        ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = '\0';
    char *lease = strchr(buf, '\n');
    char *uuid = lease != NULL ? strchr(lease + 1, '\n') : NULL;
    if (uuid == NULL)
        _exit(EXIT_FAILED); /* jimbotctl gave up before a grant */
    *lease++ = '\0';
    *uuid++ = '\0';
    char *end = strchr(uuid, '\n');
    if (end != NULL)
        *end = '\0';
    setenv("CUDA_VISIBLE_DEVICES", buf, 1);
    setenv("JIMBOT_GPU_LEASE", lease, 1);
    if (uuid[0] != '\0')
        setenv("JIMBOT_GPU_UUID", uuid, 1);
    execvp(cmd[0], cmd);
    int e = errno;
    fprintf(stderr, "jimbotctl: gpu acquire: cannot run '%s': %s\n", cmd[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

static int setup_pipes(gpu_run *r)
{
    if (pipe2(sig_fd, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(r->ev_fd, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_gpu_signal;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Reaps COMMAND if it has exited. */
static void reap(gpu_run *r)
{
    if (r->exited)
        return;
    int status;
    pid_t p = waitpid(r->child, &status, WNOHANG);
    if (p == r->child) {
        r->exited = 1;
        r->status = status;
    }
}

/* Sleeps in poll() until an event, a signal, or @ms (-1: none); drains the signal pipe. */
static int gpu_poll(gpu_run *r, int64_t ms, jb_client_gpu_event *ev)
{
    struct pollfd fds[2] = {{.fd = sig_fd[0], .events = POLLIN},
                            {.fd = r->ev_fd[0], .events = POLLIN}};
    int n = poll(fds, 2, ms < 0 ? -1 : ms > INT32_MAX ? INT32_MAX : (int)ms);
    if (n > 0 && (fds[0].revents & POLLIN)) {
        char b[64];
        while (read(sig_fd[0], b, sizeof(b)) > 0) {
        }
    }
    if (n > 0 && (fds[1].revents & POLLIN))
        return read(r->ev_fd[0], ev, sizeof(*ev)) == (ssize_t)sizeof(*ev);
    return 0;
}

static void stop_child(gpu_run *r)
{
    if (r->grant_fd >= 0) {
        close(r->grant_fd); /* not started: it exits */
        r->grant_fd = -1;
    }
    kill(r->child, SIGKILL);
    while (waitpid(r->child, NULL, 0) < 0 && errno == EINTR) {
    }
    r->exited = 1;
}

/* Waits for the grant; 0 once granted, else the exit status (COMMAND is stopped). */
static int gpu_wait_grant(gpu_run *r)
{
    for (;;) {
        int64_t left = r->wait_until ? r->wait_until - mono_ms() : -1;
        if (r->wait_until && left <= 0) {
            stop_child(r);
            return fail(EXIT_NOT_GRANTED, "no GPU within %u s (position %u)", r->timeout_s,
                        r->position);
        }
        jb_client_gpu_event ev;
        int got = gpu_poll(r, left, &ev);
        if (last_signal != 0) {
            stop_child(r);
            return fail(128 + last_signal, "interrupted while waiting for a GPU");
        }
        reap(r);
        if (r->exited)
            return fail(EXIT_FAILED, "COMMAND's process ended before the grant");
        if (!got)
            continue;
        if (ev.kind == JB_CLIENT_GPU_QUEUED && ev.position != r->position) {
            r->position = ev.position;
            r->waited = 1;
            fprintf(stderr, "jimbotctl: waiting for a GPU: position %u\n", ev.position);
        } else if (ev.kind == JB_CLIENT_GPU_GRANTED) {
            char msg[512];
            int n =
                snprintf(msg, sizeof(msg), "%u\n%s\n%s\n", ev.device, ev.lease_id, ev.device_uuid);
            int ok = write(r->grant_fd, msg, (size_t)n) == n;
            close(r->grant_fd);
            r->grant_fd = -1;
            if (!ok) {
                stop_child(r);
                return fail(EXIT_FAILED, "cannot hand the grant to COMMAND: %s", strerror(errno));
            }
            if (r->waited)
                fprintf(stderr, "jimbotctl: got GPU %u (lease %s)\n", ev.device, ev.lease_id);
            r->granted = 1;
            return 0;
        } else if (ev.kind == JB_CLIENT_GPU_ENDED) {
            stop_child(r);
            if (ev.status == JB_EBACKPRESSURE && ev.retry_after_ms > 0)
                return fail(EXIT_FAILED, "%s (retry after %u ms)", ev.err.message,
                            ev.retry_after_ms);
            return fail_status(ev.status, &ev.err);
        }
    }
}

/* One lease event while COMMAND runs. */
static void gpu_running_event(gpu_run *r, const jb_client_gpu_event *ev)
{
    char in[32];
    switch (ev->kind) {
    case JB_CLIENT_GPU_EXPIRING:
        fprintf(stderr,
                "jimbotctl: warning: the GPU lease %s ends in %s; COMMAND then gets SIGTERM\n",
                ev->lease_id, fmt_span(in, sizeof(in), ev->expires_ms - wall_ms()));
        break;
    case JB_CLIENT_GPU_DETACHED:
        fprintf(stderr, "jimbotctl: jimbotd went away (%s); re-attaching to lease %s\n",
                ev->err.message, ev->lease_id);
        break;
    case JB_CLIENT_GPU_GRANTED:
        if (ev->reattached)
            fprintf(stderr, "jimbotctl: re-attached to lease %s\n", ev->lease_id);
        break;
    case JB_CLIENT_GPU_ENDED:
        r->lost = 1;
        r->end = *ev;
        kill(r->child, SIGTERM);
        r->kill_at = mono_ms() + KILL_AFTER_S * 1000;
        break;
    default:
        break;
    }
}

/* Runs until COMMAND exits, passing signals on and stopping it if the lease ends. */
static void gpu_run_command(gpu_run *r)
{
    int killed = 0;
    while (!r->exited) {
        int64_t left = r->lost && !killed ? r->kill_at - mono_ms() : -1;
        if (r->lost && !killed && left <= 0) {
            kill(r->child, SIGKILL);
            killed = 1;
            continue;
        }
        jb_client_gpu_event ev;
        int got = gpu_poll(r, left, &ev);
        if (last_signal != 0) {
            kill(r->child, last_signal);
            last_signal = 0;
        }
        if (got)
            gpu_running_event(r, &ev);
        reap(r);
    }
}

/* The exit status once COMMAND exited: its own, or why the lease ended under it. */
static int gpu_finish(gpu_run *r, jb_client_gpu *lease)
{
    if (r->lost) {
        const jb_client_gpu_event *e = &r->end;
        if (e->status == JB_ELEASE_EXPIRED)
            return fail(EXIT_LEASE_EXPIRED, "the GPU lease %s expired; COMMAND was stopped",
                        e->lease_id);
        if (e->status == JB_OK)
            return fail(EXIT_FAILED, "the GPU lease %s was released elsewhere; COMMAND was stopped",
                        e->lease_id);
        return fail(e->status == JB_EUNAVAILABLE ? EXIT_UNREACHABLE : EXIT_FAILED,
                    "lost the GPU lease %s (%s); COMMAND was stopped", e->lease_id, e->err.message);
    }
    jb_error err;
    jb_status st = jb_client_gpu_release(lease, NULL, &err);
    if (st != JB_OK && st != JB_ENOENT)
        fprintf(stderr, "jimbotctl: gpu acquire: release: %s (the lease ends with this process)\n",
                err.message);
    if (WIFSIGNALED(r->status))
        return 128 + WTERMSIG(r->status);
    return WIFEXITED(r->status) ? WEXITSTATUS(r->status) : EXIT_FAILED;
}

/* COMMAND's words, for the lease's reason. */
static void join_words(char *buf, size_t size, char **words)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; words[i] != NULL && n + 1 < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%s", i > 0 ? " " : "", words[i]);
}

static int gpu_acquire_args(int argc, char **argv, jb_client_gpu_options *o, uint32_t *timeout_s)
{
    static const struct option longopts[] = {
        {"component", required_argument, NULL, 'c'},
        {"priority", required_argument, NULL, 'p'},
        {"seconds", required_argument, NULL, 's'},
        {"reason", required_argument, NULL, 'r'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            o->component = optarg;
            break;
        case 'p':
            if (parse_i32(optarg, &o->priority) != 0)
                return bad_usage("--priority '%s': expected a number", optarg);
            break;
        case 's':
            if (parse_u32(optarg, &o->duration_seconds) != 0)
                return bad_usage("--seconds '%s': expected seconds", optarg);
            break;
        case 'r':
            o->reason = optarg;
            break;
        case 't':
            if (parse_u32(optarg, timeout_s) != 0)
                return bad_usage("--timeout '%s': expected seconds", optarg);
            break;
        case 'h':
            gpu_usage(stdout);
            return -1;
        default:
            return bad_usage("bad option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return bad_usage("expected -- COMMAND [ARGS...] to run holding the GPU");
    return 0;
}

static int cmd_gpu_acquire(jb_client **client, const jb_client_options *copts, int argc,
                           char **argv)
{
    jb_client_gpu_options o = {.component = default_component(), .reattach_ms = REATTACH_S * 1000};
    uint32_t timeout_s = 0;
    int rc = gpu_acquire_args(argc, argv, &o, &timeout_s);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    char **cmd = argv + optind;
    char reason[200];
    if (o.reason == NULL) {
        join_words(reason, sizeof(reason), cmd);
        o.reason = reason;
    }
    gpu_run r = {.grant_fd = -1, .ev_fd = {-1, -1}, .timeout_s = timeout_s};
    int grant[2];
    if (pipe2(grant, O_CLOEXEC) != 0)
        return fail(EXIT_FAILED, "pipe: %s", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    r.child = fork();
    if (r.child < 0)
        return fail(EXIT_FAILED, "fork: %s", strerror(errno));
    if (r.child == 0) {
        close(grant[1]);
        child_exec(grant[0], cmd);
    }
    close(grant[0]);
    r.grant_fd = grant[1];
    if (setup_pipes(&r) != 0) {
        stop_child(&r);
        return fail(EXIT_FAILED, "pipe: %s", strerror(errno));
    }
    o.pid = (uint32_t)r.child;
    if (timeout_s > 0)
        r.wait_until = mono_ms() + (int64_t)timeout_s * 1000;
    jb_error err;
    jb_client_gpu *lease = NULL;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_gpu_acquire_async(*client, &o, on_lease_event, &r, &lease, &err);
    if (st != JB_OK) {
        stop_child(&r);
        return fail_status(st, &err);
    }
    rc = gpu_wait_grant(&r);
    if (rc == 0) {
        gpu_run_command(&r);
        rc = gpu_finish(&r, lease);
    }
    jb_client_gpu_free(lease);
    return rc;
}

/* A command's subcommand ("gpu acquire"): its word, its full name and what runs it. */
typedef struct subcommand {
    const char *word;
    const char *name;
    int (*run)(jb_client **client, const jb_client_options *copts, int argc, char **argv);
} subcommand;

/*
 * Runs the subcommand of @subs (@n of them) named by argv[1], with the
 * arguments after it; --help prints @help. The usage errors list the words.
 */
static int run_subcommand(jb_client **client, const jb_client_options *copts, int argc, char **argv,
                          const subcommand *subs, size_t n, void (*help)(FILE *out))
{
    const char *word = argc >= 2 ? argv[1] : "";
    if (strcmp(word, "-h") == 0 || strcmp(word, "--help") == 0) {
        help(stdout);
        return 0;
    }
    char words[128] = "";
    for (size_t i = 0; i < n; i++) {
        if (strcmp(word, subs[i].word) == 0) {
            cmd_name = subs[i].name;
            return subs[i].run(client, copts, argc - 1, argv + 1);
        }
        size_t len = strlen(words);
        snprintf(words + len, sizeof(words) - len, "%s%s", i > 0 ? ", " : "", subs[i].word);
    }
    if (argc < 2)
        return bad_usage("expected one of %s", words);
    return bad_usage("unknown subcommand '%s' (%s)", word, words);
}

static int cmd_gpu(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const subcommand subs[] = {
        {"acquire", "gpu acquire", cmd_gpu_acquire},
        {"release", "gpu release", cmd_gpu_release},
        {"status", "gpu status", cmd_gpu_status},
    };
    return run_subcommand(client, copts, argc, argv, subs, sizeof(subs) / sizeof(subs[0]),
                          gpu_usage);
}

/* ---- queue submit, queue take, queue status --------------------------------- */

static void queue_usage(FILE *out)
{
    fprintf(
        out,
        "usage: jimbotctl queue submit QUEUE [OPTIONS]\n"
        "       jimbotctl queue take QUEUE (--echo | --reply-json J --type T |\n"
        "                                   --reply-payload S | --fail TEXT) [OPTIONS]\n"
        "       jimbotctl queue status [QUEUE] [--json]\n"
        "\n"
        "submit puts one request on QUEUE (Infrastructure/SubmitRequest), waits for a\n"
        "worker's answer and prints its payload: as proto3 JSON when its type is a known\n"
        "message type, else as base64. It exits 4 when the request was not answered for\n"
        "now (no worker takes the queue, the queue is full, the API budget allows none\n"
        "before its timeout, no answer in time; the retry hint on stderr), 1 when the\n"
        "worker answered with an error or the request was poisoned.\n"
        "  --type T             the payload's type, e.g. jimbot.StrategyRequest\n"
        "  --json J             the payload as proto3 JSON of --type (a known type)\n"
        "  --payload S          the payload as raw bytes (the string S)\n"
        "  --payload-file F     the payload read from file F (- for stdin)\n"
        "  --priority P         higher first (default 0)\n"
        "  --timeout-ms N       wait at most N ms (default: the queue's timeout_ms)\n"
        "  --no-cache           neither answer from the cache nor join an equal request\n"
        "  --id ID              the request's id (default: jimbotd assigns one)\n"
        "  --submitter NAME     who asks (default $JIMBOT_COMPONENT, else jimbotctl)\n"
        "  --json-out           print one JSON line: {\"request_id\",\"type\",\"cached\",\n"
        "                       \"error\",\"payload\" or \"payload_base64\"}\n"
        "\n"
        "take registers as a worker of QUEUE (Infrastructure/TakeRequests), says so on\n"
        "stderr, prints each request as one JSON line {\"request_id\",\"queue\",\"type\",\n"
        "\"priority\",\"timeout_ms\",\"submitter\",\"enqueued_ms\",\"delivery_count\",\"payload\"\n"
        "or \"payload_base64\"} and answers it (Respond). SIGINT and SIGTERM end it with\n"
        "status 0; requests it did not answer go back to the queue.\n"
        "  --echo               answer with the request's own type and payload\n"
        "  --reply-json J       answer with J, proto3 JSON of --type\n"
        "  --reply-payload S    answer with the bytes of S (of --type, if given)\n"
        "  --fail TEXT          answer with the error TEXT\n"
        "  --type T             the answer's type\n"
        "  --count N            exit 0 after answering N requests\n"
        "  --max-outstanding N  requests held unanswered at once (default 1)\n"
        "  --worker NAME        the worker's name (default $JIMBOT_COMPONENT, else\n"
        "                       jimbotctl)\n"
        "\n"
        "status prints each request queue (or QUEUE only): its budget, waiting requests\n"
        "and the limit, those held by workers, workers, the oldest wait, and the counters\n"
        "since jimbotd started (submitted, cache hits, coalesced, poisoned) with the\n"
        "cache's entries and bytes; --json prints them as one line of JSON.\n");
}

/* Prints a response: its payload alone, or (@json) all of it as one JSON line. */
static void print_response(const jb_client_response *r, int json)
{
    jb__buf line;
    jb__buf_init(&line);
    if (json) {
        jb__buf_puts(&line, "{\"request_id\":");
        jb__json_put_string(&line, r->request_id, strlen(r->request_id));
        put_field(&line, "type", r->type);
        jb__buf_printf(&line, ",\"cached\":%s", r->cached ? "true" : "false");
        if (r->error[0] != '\0')
            put_field(&line, "error", r->error);
        jb__buf_putc(&line, ',');
        put_payload(&line, r->type, r->payload, r->payload_len);
        jb__buf_putc(&line, '}');
    } else if (r->error[0] == '\0' &&
               jb__pb_bytes_to_json(r->type, r->payload, r->payload_len, &line) != JB_OK) {
        jb__buf_reset(&line);
        jb__json_put_base64(&line, r->payload, r->payload_len);
        /* The bare base64, without the JSON string's quotes. */
        memmove(line.data, line.data + 1, line.len - 2);
        line.len -= 2;
        line.data[line.len] = '\0';
    }
    if (json || r->error[0] == '\0')
        printf("%s\n", line.data);
    jb__buf_release(&line);
}

/* The exit status of a refused submit, after its one line on stderr. */
static int submit_failed(jb_status st, const jb_client_submit_refusal *why, const jb_error *err)
{
    int later = st == JB_ETIMEDOUT || st == JB_EBACKPRESSURE || st == JB_ERATELIMITED ||
                (st == JB_EUNAVAILABLE && strcmp(why->reason, "no-worker") == 0);
    if (!later)
        return fail_status(st, err);
    if (why->retry_after_ms > 0)
        return fail(EXIT_NOT_GRANTED, "%s (retry after %u ms)", err->message, why->retry_after_ms);
    return fail(EXIT_NOT_GRANTED, "%s", err->message);
}

static int queue_submit(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"type", required_argument, NULL, 't'},
        {"json", required_argument, NULL, 'j'},
        {"payload", required_argument, NULL, 'p'},
        {"payload-file", required_argument, NULL, 'f'},
        {"priority", required_argument, NULL, 'P'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"no-cache", no_argument, NULL, 'n'},
        {"id", required_argument, NULL, 'i'},
        {"submitter", required_argument, NULL, 's'},
        {"json-out", no_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    jb_client_request req = {.submitter = default_component()};
    const char *json = NULL, *payload = NULL, *file = NULL;
    int json_out = 0, c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            req.type = optarg;
            break;
        case 'j':
            json = optarg;
            break;
        case 'p':
            payload = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'P':
            if (parse_i32(optarg, &req.priority) != 0)
                return bad_usage("--priority '%s': expected a number", optarg);
            break;
        case 'T':
            if (parse_u32(optarg, &req.timeout_ms) != 0 || req.timeout_ms == 0)
                return bad_usage("--timeout-ms '%s': expected positive milliseconds", optarg);
            break;
        case 'n':
            req.bypass_cache = 1;
            break;
        case 'i':
            req.request_id = optarg;
            break;
        case 's':
            req.submitter = optarg;
            break;
        case 'o':
            json_out = 1;
            break;
        case 'h':
            queue_usage(stdout);
            return 0;
        default:
            return bad_usage("bad option '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        return bad_usage(optind >= argc ? "expected a QUEUE%s" : "unexpected argument '%s'",
                         optind >= argc ? "" : argv[optind + 1]);
    if ((json != NULL) + (payload != NULL) + (file != NULL) > 1)
        return bad_usage("give one of --json, --payload, --payload-file");
    req.queue = argv[optind];
    jb__buf body;
    jb__buf_init(&body);
    int rc = build_payload("--json", req.type, json, payload, file, &body);
    if (rc == 0) {
        req.payload = body.data;
        req.payload_len = body.len;
        jb_error err;
        jb_client_response *resp = NULL;
        jb_client_submit_refusal why;
        jb_status st = jb_client_new(copts, client, &err);
        memset(&why, 0, sizeof(why));
        if (st == JB_OK)
            st = jb_client_submit(*client, &req, &resp, &why, &err);
        if (st != JB_OK) {
            rc = submit_failed(st, &why, &err);
        } else {
            print_response(resp, json_out);
            if (resp->error[0] != '\0')
                rc = fail(EXIT_FAILED, "the worker could not answer: %s", resp->error);
            jb_client_response_free(resp);
        }
    }
    jb__buf_release(&body);
    return rc;
}

/* How queue take answers. */
typedef struct take_reply {
    int echo;
    const char *type;
    jb__buf body;
    const char *error;
} take_reply;

static void print_task(jb__buf *line, const jb_client_task *t)
{
    jb__buf_reset(line);
    jb__buf_puts(line, "{\"request_id\":");
    jb__json_put_string(line, t->request_id, strlen(t->request_id));
    put_field(line, "queue", t->queue);
    put_field(line, "type", t->type);
    jb__buf_printf(line, ",\"priority\":%d,\"timeout_ms\":%u", t->priority, t->timeout_ms);
    put_field(line, "submitter", t->submitter);
    jb__buf_printf(line, ",\"enqueued_ms\":%" PRId64 ",\"delivery_count\":%u,", t->enqueued_ms,
                   t->delivery_count);
    put_payload(line, t->type, t->payload, t->payload_len);
    jb__buf_puts(line, "}\n");
}

/* Answers @t as @r says; 0 or the exit status. */
static int answer_task(jb_client *client, const jb_client_task *t, const take_reply *r)
{
    jb_client_response resp = {.request_id = t->request_id};
    if (r->echo) {
        resp.type = t->type;
        resp.payload = t->payload;
        resp.payload_len = t->payload_len;
    } else if (r->error != NULL) {
        resp.error = r->error;
    } else {
        resp.type = r->type;
        resp.payload = r->body.data;
        resp.payload_len = r->body.len;
    }
    jb_error err;
    jb_status st = jb_client_respond(client, &resp, &err);
    if (st == JB_ENOENT) {
        /* Given back meanwhile (its submitter left, or a reload): not this worker's any more. */
        fprintf(stderr, "jimbotctl: %s: %s\n", cmd_name, err.message);
        return 0;
    }
    return st == JB_OK ? 0 : fail_status(st, &err);
}

/* Takes and answers requests until @count (0: no limit), a signal or the stream's end. */
static int take_loop(jb_client *client, jb_client_worker *w, const char *queue, uint64_t count,
                     const take_reply *r)
{
    jb_error err;
    jb_status st = jb_client_worker_wait_registered(w, -1, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    fprintf(stderr, "jimbotctl: %s: registered as a worker of queue %s\n", cmd_name, queue);
    jb__buf line;
    jb__buf_init(&line);
    uint64_t answered = 0;
    int rc = 0;
    while (rc == 0 && !stop_requested && (count == 0 || answered < count)) {
        jb_client_task *t;
        st = jb_client_worker_next(w, 200, &t, &err);
        if (st == JB_ETIMEDOUT)
            continue;
        if (st != JB_OK) {
            rc = fail_status(st, &err);
            break;
        }
        print_task(&line, t);
        if (fwrite(line.data, 1, line.len, stdout) != line.len || fflush(stdout) != 0)
            stop_requested = 1; /* the reader went away: the request goes back */
        else if ((rc = answer_task(client, t, r)) == 0)
            answered++;
        jb_client_task_free(t);
    }
    jb__buf_release(&line);
    return rc;
}

static int queue_take(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"echo", no_argument, NULL, 'e'},
        {"reply-json", required_argument, NULL, 'j'},
        {"reply-payload", required_argument, NULL, 'p'},
        {"fail", required_argument, NULL, 'F'},
        {"type", required_argument, NULL, 't'},
        {"count", required_argument, NULL, 'n'},
        {"max-outstanding", required_argument, NULL, 'm'},
        {"worker", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    jb_client_worker_options wo = {.name = default_component()};
    take_reply r = {0};
    const char *json = NULL, *payload = NULL;
    uint64_t count = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            r.echo = 1;
            break;
        case 'j':
            json = optarg;
            break;
        case 'p':
            payload = optarg;
            break;
        case 'F':
            r.error = optarg;
            break;
        case 't':
            r.type = optarg;
            break;
        case 'n':
            if (parse_u64(optarg, &count) != 0 || count == 0)
                return bad_usage("--count '%s': expected a positive number", optarg);
            break;
        case 'm':
            if (parse_u32(optarg, &wo.max_outstanding) != 0 || wo.max_outstanding == 0)
                return bad_usage("--max-outstanding '%s': expected a positive number", optarg);
            break;
        case 'w':
            wo.name = optarg;
            break;
        case 'h':
            queue_usage(stdout);
            return 0;
        default:
            return bad_usage("bad option '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        return bad_usage(optind >= argc ? "expected a QUEUE%s" : "unexpected argument '%s'",
                         optind >= argc ? "" : argv[optind + 1]);
    if (r.echo + (json != NULL) + (payload != NULL) + (r.error != NULL) != 1)
        return bad_usage("give one of --echo, --reply-json, --reply-payload, --fail");
    wo.queue = argv[optind];
    jb__buf_init(&r.body);
    int rc = build_payload("--reply-json", r.type, json, payload, NULL, &r.body);
    if (rc == 0) {
        catch_stop_signals();
        jb_error err;
        jb_client_worker *w = NULL;
        jb_status st = jb_client_new(copts, client, &err);
        if (st == JB_OK)
            st = jb_client_worker_start(*client, &wo, NULL, NULL, &w, &err);
        rc = st == JB_OK ? take_loop(*client, w, wo.queue, count, &r) : fail_status(st, &err);
        jb_client_worker_free(w);
    }
    jb__buf_release(&r.body);
    return rc;
}

static int queue_status(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    const char *only = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            queue_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] != '-' && only == NULL)
            only = argv[i];
        else
            return bad_usage("unexpected argument '%s'", argv[i]);
    }
    jb_error err;
    jb_client_resource_status *s;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = jb_client_resource_status_get(*client, &s, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    int rc = 0, found = only == NULL;
    for (size_t i = 0; i < s->n_request_queues && !found; i++)
        found = strcmp(s->request_queues[i].name, only) == 0;
    if (!found) {
        rc = fail(EXIT_FAILED, "no queue '%s'", only);
    } else if (!json) {
        print_queues(s, only);
    } else {
        jb__buf b;
        jb__buf_init(&b);
        jb__buf_putc(&b, '[');
        for (size_t i = 0, n = 0; i < s->n_request_queues; i++) {
            if (only != NULL && strcmp(s->request_queues[i].name, only) != 0)
                continue;
            if (n++ > 0)
                jb__buf_putc(&b, ',');
            put_queue_json(&b, &s->request_queues[i]);
        }
        jb__buf_putc(&b, ']');
        printf("%s\n", b.data);
        jb__buf_release(&b);
    }
    jb_client_resource_status_free(s);
    return rc;
}

static int cmd_queue(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const subcommand subs[] = {
        {"submit", "queue submit", queue_submit},
        {"take", "queue take", queue_take},
        {"status", "queue status", queue_status},
    };
    return run_subcommand(client, copts, argc, argv, subs, sizeof(subs) / sizeof(subs[0]),
                          queue_usage);
}

/* ---- redis access, redis status ------------------------------------------ */

static void redis_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl redis access COMPONENT [--json] [--show-password | --uri]\n"
                 "       jimbotctl redis rotate COMPONENT [--json] [--show-password | --uri]\n"
                 "       jimbotctl redis status [--json]\n"
                 "\n"
                 "access asks Infrastructure/GetRedisAccess: the Redis ACL user that jimbotd made\n"
                 "for COMPONENT (allowed the keys KEY_PREFIX* and, as SHARED_ACCESS says,\n"
                 "SHARED_PREFIX*), and how many connections it may hold at once. The password is\n"
                 "shown as (hidden) unless --show-password; --uri prints only\n"
                 "redis://USER:PASSWORD@HOST:PORT, for `redis-cli -u`. --json prints one line of\n"
                 "JSON (the password only with --show-password). Fails when COMPONENT has no\n"
                 "namespace (NOT_FOUND), jimbotd has no Redis configured (FAILED_PRECONDITION)\n"
                 "or has not provisioned it yet (UNAVAILABLE, exit 3).\n"
                 "\n"
                 "rotate asks Infrastructure/RotateRedisPassword: COMPONENT's user gets a new\n"
                 "password (connections already open stay), printed as access prints it.\n"
                 "\n"
                 "status prints the Redis part of `jimbotctl status`: reachability, the\n"
                 "connections counted at the last check against max_connections, and per\n"
                 "component its connections, its allowance and those jimbotd closed beyond it.\n"
                 "--json prints the whole ResourceStatus message.\n");
}

/* Appends @s to @b percent-encoded, but for RFC 3986's unreserved characters. */
static void put_uri_part(jb__buf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~", *p) != NULL)
            jb__buf_putc(b, (char)*p);
        else
            jb__buf_printf(b, "%%%02X", *p);
    }
}

/* redis://USER:PASSWORD@HOST:PORT from @a's URL ("redis://HOST:PORT"). */
static void put_redis_uri(jb__buf *b, const jb_client_redis_access *a)
{
    const char *rest = strstr(a->url, "://");
    size_t scheme = rest != NULL ? (size_t)(rest - a->url) : 0;
    jb__buf_printf(b, "%.*s://", (int)(scheme > 0 ? scheme : 5), scheme > 0 ? a->url : "redis");
    put_uri_part(b, a->username);
    jb__buf_putc(b, ':');
    put_uri_part(b, a->password);
    jb__buf_printf(b, "@%s", rest != NULL ? rest + 3 : a->url);
}

static void print_access_json(const jb_client_redis_access *a, int show_password)
{
    jb__buf b;
    jb__buf_init(&b);
    jb__buf_puts(&b, "{\"component\":");
    jb__json_put_string(&b, a->component, strlen(a->component));
    put_field(&b, "url", a->url);
    put_field(&b, "username", a->username);
    if (show_password)
        put_field(&b, "password", a->password);
    put_field(&b, "keyPrefix", a->key_prefix);
    jb__buf_printf(&b, ",\"maxConnections\":%u", a->max_connections);
    put_field(&b, "sharedPrefix", a->shared_prefix);
    put_field(&b, "sharedAccess", a->shared_access);
    jb__buf_putc(&b, '}');
    printf("%s\n", b.data);
    if (show_password)
        explicit_bzero(b.data, b.len);
    jb__buf_release(&b);
}

static void print_access(const jb_client_redis_access *a, int show_password)
{
    printf("component        %s\n", a->component);
    printf("url              %s\n", a->url);
    printf("username         %s\n", a->username);
    printf("password         %s\n",
           show_password ? a->password : "(hidden; --show-password prints it)");
    printf("key_prefix       %s\n", a->key_prefix);
    printf("shared_prefix    %s\n", a->shared_prefix[0] ? a->shared_prefix : "-");
    printf("shared_access    %s\n", a->shared_access);
    printf("max_connections  %u\n", a->max_connections);
}

static int redis_access_or_rotate(jb_client **client, const jb_client_options *copts, int argc,
                                  char **argv, int rotate)
{
    const char *component = NULL;
    int json = 0, show_password = 0, uri = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            redis_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--show-password") == 0)
            show_password = 1;
        else if (strcmp(argv[i], "--uri") == 0)
            uri = 1;
        else if (argv[i][0] != '-' && component == NULL)
            component = argv[i];
        else
            return bad_usage("unexpected argument '%s'", argv[i]);
    }
    if (component == NULL)
        return bad_usage("expected a COMPONENT");
    if (uri && json)
        return bad_usage("--uri and --json do not go together");
    jb_error err;
    jb_client_redis_access *a;
    jb_status st = jb_client_new(copts, client, &err);
    if (st == JB_OK)
        st = rotate ? jb_client_redis_password_rotate(*client, component, &a, &err)
                    : jb_client_redis_access_get(*client, component, &a, &err);
    if (st != JB_OK)
        return fail_status(st, &err);
    if (uri && strncmp(a->url, "redis://", 8) != 0 && strncmp(a->url, "rediss://", 9) != 0) {
        rc = fail(EXIT_FAILED, "%s has no redis-cli URI form (use redis-cli -s PATH --user %s)",
                  a->url, a->username);
    } else if (uri) {
        jb__buf b;
        jb__buf_init(&b);
        put_redis_uri(&b, a);
        printf("%s\n", b.data);
        explicit_bzero(b.data, b.len);
        jb__buf_release(&b);
    } else if (json) {
        print_access_json(a, show_password);
    } else {
        print_access(a, show_password);
    }
    jb_client_redis_access_free(a);
    return rc;
}

static int redis_access(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    return redis_access_or_rotate(client, copts, argc, argv, 0);
}

static int redis_rotate(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    return redis_access_or_rotate(client, copts, argc, argv, 1);
}

static int redis_status(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    return status_command(client, copts, argc, argv, redis_usage, print_redis);
}

static int cmd_redis(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const subcommand subs[] = {
        {"access", "redis access", redis_access},
        {"rotate", "redis rotate", redis_rotate},
        {"status", "redis status", redis_status},
    };
    return run_subcommand(client, copts, argc, argv, subs, sizeof(subs) / sizeof(subs[0]),
                          redis_usage);
}

/* ---- main ---------------------------------------------------------------- */

/*
 * Takes --addr ADDR / --addr=ADDR out of a command's arguments (up to a
 * "--"), so that the global option also works after the command, as people
 * type it: `jimbotctl publish t --payload x --addr host:port`. Returns the
 * new argument count; 0 with *@bad set when --addr has no value.
 */
static int take_addr(int argc, char **argv, jb_client_options *copts, int *bad)
{
    int out = 0;
    *bad = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            while (i < argc)
                argv[out++] = argv[i++];
            break;
        }
        if (strncmp(argv[i], "--addr=", 7) == 0) {
            copts->addr = argv[i] + 7;
        } else if (strcmp(argv[i], "--addr") == 0) {
            if (i + 1 >= argc) {
                *bad = 1;
                return 0;
            }
            copts->addr = argv[++i];
        } else {
            argv[out++] = argv[i];
        }
    }
    argv[out] = NULL;
    return out;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"addr", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    jb_client_options copts = {0};
    copts.addr = getenv("JIMBOT_ADDR");
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (c) {
        case 'a':
            copts.addr = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("jimbotctl %s\n", JB_VERSION);
            return 0;
        default:
            fprintf(stderr, "jimbotctl: bad option '%s' (see jimbotctl --help)\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    cmd_name = argv[optind];
    char **cargv = argv + optind;
    int bad_addr;
    int cargc = take_addr(argc - optind, cargv, &copts, &bad_addr);
    if (bad_addr) {
        fprintf(stderr, "jimbotctl: --addr needs an address (host:port or unix:PATH)\n");
        return EXIT_USAGE;
    }
    optind = 0; /* glibc: start afresh on the command's arguments (which it may permute) */
    jb_client *client = NULL;
    int rc;
    if (strcmp(cmd_name, "publish") == 0) {
        rc = cmd_publish(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "subscribe") == 0) {
        rc = cmd_subscribe(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "health") == 0) {
        rc = cmd_health(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "status") == 0) {
        rc = cmd_status(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "gpu") == 0) {
        rc = cmd_gpu(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "quota") == 0) {
        rc = cmd_quota(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "queue") == 0) {
        rc = cmd_queue(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "redis") == 0) {
        rc = cmd_redis(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "groups") == 0) {
        rc = cmd_groups(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "group") == 0) {
        rc = cmd_group(&client, &copts, cargc, cargv);
    } else if (strcmp(cmd_name, "version") == 0) {
        printf("jimbotctl %s\n", JB_VERSION);
        rc = 0;
    } else {
        fprintf(stderr, "jimbotctl: unknown command '%s' (see jimbotctl --help)\n", cmd_name);
        rc = EXIT_USAGE;
    }
    jb_client_free(client);
    return rc;
}
