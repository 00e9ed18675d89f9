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
 *
 * subscribe prints one JSON object per event on stdout and acks each batch
 * once it is written (at-least-once for a pipe consumer); SIGINT, SIGTERM
 * and a closed stdout end it cleanly with status 0.
 */
#include "core/buf.h"
#include "rpc/pb_json.h"

#include "jimbot/client.h"
#include "jimbot/infra/v1/event_bus.pb-c.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

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
            "  status             resource status (GPU, API budget, queues, breakers)\n"
            "  groups [--json]    consumer groups: pattern, members, pending, lag, ack floor\n"
            "  group delete NAME  delete a consumer group that has no members\n"
            "  version            print the version\n"
            "\n"
            "Options:\n"
            "  --addr ADDR        jimbotd's address, host:port or unix:PATH\n"
            "                     (default $JIMBOT_ADDR, else %s)\n"
            "  -h, --help         this help; COMMAND --help for a command's options\n"
            "\n"
            "Exit status: 0 success, 1 failure, 2 usage error, 3 jimbotd unreachable.\n",
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
    if (json != NULL) {
        if (type == NULL) {
            rc = bad_usage("--json needs --type");
        } else {
            jb_error err;
            jb_status st = jb__pb_json_to_bytes(type, json, strlen(json), &body, &err);
            if (st == JB_ENOENT)
                rc = fail(EXIT_USAGE,
                          "--type '%s' is not a known message type (--payload sends raw bytes)",
                          type);
            else if (st != JB_OK)
                rc = fail(EXIT_USAGE, "--json: %s", err.message);
        }
    } else if (payload != NULL) {
        jb__buf_puts(&body, payload);
    } else if (file != NULL && read_file(file, &body) != 0) {
        rc = fail(EXIT_FAILED, "--payload-file %s: %s", file, strerror(errno));
    }
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
    size_t mark = line->len;
    jb__buf_puts(line, "\"payload\":");
    if (jb__pb_bytes_to_json(type, ev->payload, ev->payload_len, line) != JB_OK) {
        line->len = mark;
        line->data[mark] = '\0';
        jb__buf_puts(line, "\"payload_base64\":");
        jb__json_put_base64(line, ev->payload, ev->payload_len);
    }
    jb__buf_puts(line, "}\n");
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
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

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

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

/* ---- health, status ------------------------------------------------------ */

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

static void status_usage(FILE *out)
{
    fprintf(out, "usage: jimbotctl status [--json]\n"
                 "\n"
                 "Prints jimbotd's resource status (Infrastructure/GetResourceStatus): GPU\n"
                 "lease, LLM requests remaining, queue depths, circuit breakers; indented, or\n"
                 "as one line of JSON with --json.\n");
}

/* Re-indents one line of JSON, two spaces per level. */
static void print_indented(const char *s)
{
    int depth = 0, in_str = 0;
    for (const char *p = s; *p; p++) {
        char ch = *p;
        if (in_str) {
            putchar(ch);
            if (ch == '\\' && p[1] != '\0')
                putchar(*++p);
            else if (ch == '"')
                in_str = 0;
            continue;
        }
        switch (ch) {
        case '"':
            in_str = 1;
            putchar(ch);
            break;
        case '{':
        case '[':
            if (p[1] == '}' || p[1] == ']') {
                printf("%c%c", ch, p[1]);
                p++;
                break;
            }
            depth++;
            printf("%c\n%*s", ch, depth * 2, "");
            break;
        case '}':
        case ']':
            depth--;
            printf("\n%*s%c", depth * 2, "", ch);
            break;
        case ',':
            printf(",\n%*s", depth * 2, "");
            break;
        case ':':
            printf(": ");
            break;
        default:
            putchar(ch);
        }
    }
    putchar('\n');
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

static int cmd_status(jb_client **client, const jb_client_options *copts, int argc, char **argv)
{
    static const char *const flags[] = {"--json", NULL};
    int json = 0;
    int rc = no_args(argc, argv, status_usage, flags, &json);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    void *resp = NULL;
    size_t len = 0;
    if ((rc = call_empty(client, copts, "/jimbot.infra.v1.Infrastructure/GetResourceStatus", &resp,
                         &len)) != 0)
        return rc;
    jb__buf out;
    jb__buf_init(&out);
    if (jb__pb_bytes_to_json("jimbot.infra.v1.ResourceStatus", resp, len, &out) != JB_OK) {
        rc = fail(EXIT_FAILED, "malformed ResourceStatus (%zu bytes)", len);
    } else if (json) {
        printf("%s\n", out.data);
    } else {
        print_indented(out.data);
    }
    jb__buf_release(&out);
    free(resp);
    return rc;
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
