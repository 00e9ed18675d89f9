/*
 * client_probe: drives the C client library (jimbot/client.h) for
 * test_client.py. Each verb does one thing and prints plain lines:
 *
 *   client_probe ADDR publish TOPIC N          N single publishes: "seq S dup D"
 *   client_probe ADDR batch TOPIC N            one request of N events: "seqs S1 S2 ..."
 *   client_probe ADDR async TOPIC N K          N publishes, K in flight at once: "ok N"
 *   client_probe ADDR buffered TOPIC N WIN MAX [FIRST_MS]
 *                                              N buffered events, then flush:
 *                                              "flushed N" or the error; with
 *                                              FIRST_MS, a flush bounded to that
 *                                              comes first: "first STATUS"
 *   client_probe ADDR error TOPIC              one publish: "status NAME retry MS" and
 *                                              the message line
 *   client_probe ADDR sub-cb PATTERN GROUP N   callback mode: "event SEQ TOPIC ATTEMPT
 *   client_probe ADDR sub-pull PATTERN GROUP N PAYLOAD" per event, acked, until N events;
 *                                              then "reconnects R"
 *   client_probe ADDR nack-once PATTERN GROUP  pull: nacks the first batch, prints the
 *                                              redelivered events' attempts
 *   client_probe ADDR health                   "health NAME"
 *   client_probe ADDR sub-watch PATTERN GROUP KEEPALIVE_MS TIMEOUT_MS [IDLE_MS]
 *                                              pull, keepalive KEEPALIVE_MS (0: off)
 *                                              with TIMEOUT_MS: "events N" per
 *                                              batch (acked), "reconnects R" when the
 *                                              stream is attempted again; with
 *                                              IDLE_MS, "idle reconnects R" and exit
 *                                              IDLE_MS after the first batch
 *   client_probe ADDR gpu COMPONENT SECONDS    blocking acquire (30 s at most): "granted LEASE
 *                                              DEVICE reattached R", then release:
 *                                              "released device D", then "ended STATUS"
 *   client_probe ADDR gpu-hold COMPONENT SECONDS
 *                                              blocking acquire, then every event until
 *                                              the lease ends: "granted LEASE DEVICE",
 *                                              "expiring", "ended STATUS message"
 *   client_probe ADDR gpu-async COMPONENT      callback mode: "queued P", "granted LEASE
 *                                              DEVICE"; releases from the callback:
 *                                              "release-cb STATUS" and "ended STATUS"
 *                                              (in either order)
 *   client_probe ADDR gpu-release LEASE        by id: "released device D" or the error
 *   client_probe ADDR quota COMPONENT COUNT WAIT_MS [DEADLINE_MS]
 *                                              "quota granted G remaining R retry MS limit L";
 *                                              DEADLINE_MS: the client's deadline_ms
 *   client_probe ADDR rstatus                  the status struct: "gpus N free F waiters W
 *                                              remaining R limit L", then "gpu I HOLDER
 *                                              LEASE" per device ("-" when free)
 *   client_probe ADDR redis-async COMPONENT    GetRedisAccess in callback mode: "redis URL
 *                                              USER PASSWORD PREFIX MAX SHARED_PREFIX
 *                                              SHARED_ACCESS COMPONENT", or the error
 *
 * Subscriptions start from everything the server holds (JB_CLIENT_START_ALL),
 * so that events published right after "subscribed" (printed once the
 * stream is started, not necessarily accepted) are not missed; each test
 * uses its own topics and groups. Output is flushed per line,
 * so that the test can act while a subscription runs. Exit status 0, or 1
 * with "error: NAME: message".
 */
#include "jimbot/client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(jb_status st, const jb_error *err)
{
    printf("error: %s: %s\n", jb_status_name(st), err != NULL ? err->message : "");
    fflush(stdout);
    return 1;
}

static jb_event make_event(const char *topic, char *payload, size_t i)
{
    snprintf(payload, 32, "payload-%zu", i);
    static const jb_header headers[] = {{"probe", "yes"}};
    return (jb_event){.topic = topic,
                      .type = "probe.Text",
                      .source = "client_probe",
                      .payload = payload,
                      .payload_len = strlen(payload),
                      .headers = headers,
                      .n_headers = 1};
}

typedef struct async_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t in_flight, ok, failed;
} async_state;

static void async_done(jb_status status, const uint64_t *sequences, const uint8_t *duplicates,
                       size_t n, uint32_t retry_after_ms, const jb_error *err, void *userdata)
{
    async_state *s = userdata;
    pthread_mutex_lock(&s->mu);
    s->in_flight--;
    if (status == JB_OK && n == 1 && sequences[0] > 0)
        s->ok++;
    else
        s->failed++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

typedef struct sub_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long want, got;
    jb_status ended;
} sub_state;

static void print_event(const jb_event *ev)
{
    printf("event %llu %s %u %.*s\n", (unsigned long long)ev->sequence, ev->topic,
           ev->delivery_attempt, (int)ev->payload_len, (const char *)ev->payload);
}

static void on_batch(jb_client_sub *sub, const jb_event *events, size_t n, void *userdata)
{
    sub_state *s = userdata;
    uint64_t seqs[1000];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        print_event(&events[i]);
        if (k < 1000)
            seqs[k++] = events[i].sequence;
    }
    fflush(stdout);
    jb_error err;
    if (jb_client_sub_ack_async(sub, seqs, k, NULL, NULL, &err) != JB_OK)
        printf("ack failed: %s\n", err.message);
    pthread_mutex_lock(&s->mu);
    s->got += (long)n;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void on_end(jb_client_sub *sub, jb_status status, const jb_error *err, void *userdata)
{
    sub_state *s = userdata;
    printf("ended %s: %s\n", jb_status_name(status), err->message);
    fflush(stdout);
    pthread_mutex_lock(&s->mu);
    s->ended = status;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int run_sub(jb_client *c, int pull, const char *pattern, const char *group, long want)
{
    sub_state s = {.want = want, .ended = JB_OK};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    jb_client_sub_options o = {
        .pattern = pattern, .group = group, .start = JB_CLIENT_START_ALL, .on_end = on_end};
    jb_client_sub *sub;
    jb_error err;
    jb_status st = jb_client_subscribe(c, &o, pull ? NULL : on_batch, &s, &sub, &err);
    if (st != JB_OK)
        return fail(st, &err);
    printf("subscribed\n");
    fflush(stdout);
    int rc = 0;
    if (pull) {
        while (s.got < want) {
            jb_client_batch *b;
            st = jb_client_sub_next(sub, 60000, &b, &err);
            if (st != JB_OK) {
                rc = fail(st, &err);
                break;
            }
            uint64_t seqs[1000];
            size_t k = 0;
            for (size_t i = 0; i < b->n; i++) {
                print_event(&b->events[i]);
                if (k < 1000)
                    seqs[k++] = b->events[i].sequence;
            }
            fflush(stdout);
            s.got += (long)b->n;
            jb_client_batch_free(b);
            st = jb_client_sub_ack(sub, seqs, k, &err);
            if (st == JB_EUNAVAILABLE) {
                /* The server went away: it will redeliver what was not acked. */
                printf("ack-lost %zu\n", k);
                fflush(stdout);
            } else if (st != JB_OK) {
                rc = fail(st, &err);
                break;
            }
        }
    } else {
        pthread_mutex_lock(&s.mu);
        while (s.got < want && s.ended == JB_OK)
            pthread_cond_wait(&s.cv, &s.mu);
        pthread_mutex_unlock(&s.mu);
        if (s.ended != JB_OK)
            rc = 1;
    }
    printf("reconnects %u\n", jb_client_sub_reconnects(sub));
    fflush(stdout);
    jb_client_unsubscribe(sub);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return rc;
}

static int nack_once(jb_client *c, const char *pattern, const char *group)
{
    jb_client_sub_options o = {.pattern = pattern, .group = group, .start = JB_CLIENT_START_ALL};
    jb_client_sub *sub;
    jb_error err;
    jb_status st = jb_client_subscribe(c, &o, NULL, NULL, &sub, &err);
    if (st != JB_OK)
        return fail(st, &err);
    printf("subscribed\n");
    fflush(stdout);
    jb_client_batch *b;
    if ((st = jb_client_sub_next(sub, 30000, &b, &err)) != JB_OK)
        return fail(st, &err);
    uint64_t seq = b->events[0].sequence;
    printf("first %llu attempt %u\n", (unsigned long long)seq, b->events[0].delivery_attempt);
    jb_client_batch_free(b);
    char g[256];
    if ((st = jb_client_nack(c, jb_client_sub_group(sub, g, sizeof(g)), &seq, 1, 0, &err)) != JB_OK)
        return fail(st, &err);
    if ((st = jb_client_sub_next(sub, 30000, &b, &err)) != JB_OK)
        return fail(st, &err);
    printf("again %llu attempt %u\n", (unsigned long long)b->events[0].sequence,
           b->events[0].delivery_attempt);
    uint64_t again = b->events[0].sequence;
    jb_client_batch_free(b);
    st = jb_client_sub_ack(sub, &again, 1, &err);
    jb_client_unsubscribe(sub);
    return st == JB_OK ? 0 : fail(st, &err);
}

static int sub_watch(jb_client *c, const char *pattern, const char *group, long idle_ms)
{
    jb_client_sub_options o = {.pattern = pattern, .group = group, .start = JB_CLIENT_START_ALL};
    jb_client_sub *sub;
    jb_error err;
    jb_status st = jb_client_subscribe(c, &o, NULL, NULL, &sub, &err);
    if (st != JB_OK)
        return fail(st, &err);
    printf("subscribed\n");
    fflush(stdout);
    uint32_t reconnects = 0;
    long idle = -1; /* ms waited since the first batch */
    while (idle_ms <= 0 || idle < idle_ms) {
        jb_client_batch *b;
        st = jb_client_sub_next(sub, 100, &b, &err);
        if (st == JB_OK) {
            printf("events %zu\n", b->n);
            uint64_t seq = b->n > 0 ? b->events[b->n - 1].sequence : 0;
            jb_client_batch_free(b);
            if (seq > 0)
                jb_client_sub_ack(sub, &seq, 1, &err);
            idle = idle < 0 ? 0 : idle;
        } else if (st == JB_ETIMEDOUT) {
            idle = idle < 0 ? idle : idle + 100;
        } else {
            return fail(st, &err);
        }
        if (jb_client_sub_reconnects(sub) != reconnects) {
            reconnects = jb_client_sub_reconnects(sub);
            printf("reconnects %u\n", reconnects);
        }
        fflush(stdout);
    }
    printf("idle reconnects %u\n", reconnects);
    fflush(stdout);
    jb_client_unsubscribe(sub);
    return 0;
}

/* ---- Infrastructure ------------------------------------------------------ */

static int gpu_blocking(jb_client *c, const char *component, uint32_t seconds)
{
    jb_client_gpu_options o = {.component = component, .duration_seconds = seconds};
    jb_client_gpu *g;
    jb_error err;
    jb_status st = jb_client_gpu_acquire(c, &o, 30000, &g, &err);
    if (st != JB_OK)
        return fail(st, &err);
    jb_client_gpu_event ev;
    jb_client_gpu_state(g, &ev);
    printf("granted %s %u reattached %d\n", ev.lease_id, ev.device, ev.reattached);
    fflush(stdout);
    jb_client_gpu_release_info info;
    st = jb_client_gpu_release(g, &info, &err);
    if (st != JB_OK) {
        jb_client_gpu_free(g);
        return fail(st, &err);
    }
    printf("released device %u\n", info.device);
    jb_client_gpu_state(g, &ev);
    printf("ended %s\n", ev.kind == JB_CLIENT_GPU_ENDED ? jb_status_name(ev.status) : "no");
    jb_client_gpu_free(g);
    return 0;
}

static int gpu_hold(jb_client *c, const char *component, uint32_t seconds)
{
    jb_client_gpu_options o = {.component = component, .duration_seconds = seconds};
    jb_client_gpu *g;
    jb_error err;
    jb_status st = jb_client_gpu_acquire(c, &o, 30000, &g, &err);
    if (st != JB_OK)
        return fail(st, &err);
    jb_client_gpu_event ev;
    jb_client_gpu_state(g, &ev);
    printf("granted %s %u\n", ev.lease_id, ev.device);
    fflush(stdout);
    for (;;) {
        if ((st = jb_client_gpu_wait(g, 60000, &ev, &err)) != JB_OK) {
            jb_client_gpu_free(g);
            return fail(st, &err);
        }
        if (ev.kind == JB_CLIENT_GPU_EXPIRING)
            printf("expiring\n");
        if (ev.kind == JB_CLIENT_GPU_ENDED)
            break;
        fflush(stdout);
    }
    printf("ended %s %s\n", jb_status_name(ev.status), ev.err.message);
    /* The end is sticky: asking again says the same. */
    jb_client_gpu_event again;
    jb_client_gpu_wait(g, 0, &again, NULL);
    printf("again %s\n", again.kind == JB_CLIENT_GPU_ENDED ? jb_status_name(again.status) : "?");
    jb_client_gpu_free(g);
    return 0;
}

typedef struct gpu_async_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ended;
    int released;
} gpu_async_state;

static void gpu_release_cb(jb_status status, const jb_client_gpu_release_info *info,
                           const jb_error *err, void *userdata)
{
    (void)info;
    gpu_async_state *s = userdata;
    printf("release-cb %s %s\n", jb_status_name(status), err != NULL ? err->message : "");
    fflush(stdout);
    pthread_mutex_lock(&s->mu);
    s->released = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void gpu_event_cb(jb_client_gpu *lease, const jb_client_gpu_event *ev, void *userdata)
{
    gpu_async_state *s = userdata;
    jb_error err;
    switch (ev->kind) {
    case JB_CLIENT_GPU_QUEUED:
        printf("queued %u\n", ev->position);
        break;
    case JB_CLIENT_GPU_GRANTED:
        printf("granted %s %u\n", ev->lease_id, ev->device);
        if (jb_client_gpu_release_async(lease, gpu_release_cb, s, &err) != JB_OK) {
            printf("release-async failed: %s\n", err.message);
            s->released = 1;
        }
        break;
    case JB_CLIENT_GPU_ENDED:
        printf("ended %s\n", jb_status_name(ev->status));
        pthread_mutex_lock(&s->mu);
        s->ended = 1;
        if (!s->released && ev->status != JB_OK)
            s->released = 1; /* ended before a grant: no release was asked */
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        break;
    default:
        break;
    }
    fflush(stdout);
}

static int gpu_async(jb_client *c, const char *component)
{
    gpu_async_state s = {.ended = 0, .released = 0};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    jb_client_gpu_options o = {.component = component};
    jb_client_gpu *g;
    jb_error err;
    jb_status st = jb_client_gpu_acquire_async(c, &o, gpu_event_cb, &s, &g, &err);
    if (st != JB_OK)
        return fail(st, &err);
    /* The release's callback and ENDED come in either order. */
    pthread_mutex_lock(&s.mu);
    while (!s.ended || !s.released)
        pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    jb_client_gpu_free(g);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return 0;
}

static int quota(jb_client *c, const char *component, uint32_t count, uint32_t wait_ms)
{
    jb_client_quota_request r = {.component = component, .count = count, .wait_ms = wait_ms};
    jb_client_quota q;
    jb_error err;
    jb_status st = jb_client_quota_acquire(c, &r, &q, &err);
    if (st != JB_OK)
        return fail(st, &err);
    printf("quota granted %d remaining %u retry %llu limit %u\n", q.granted, q.remaining,
           (unsigned long long)q.retry_after_ms, q.limit);
    return 0;
}

static int rstatus(jb_client *c)
{
    jb_client_resource_status *s;
    jb_error err;
    jb_status st = jb_client_resource_status_get(c, &s, &err);
    if (st != JB_OK)
        return fail(st, &err);
    size_t free_n = 0;
    for (size_t i = 0; i < s->n_gpus; i++)
        free_n += s->gpus[i].available ? 1 : 0;
    printf("gpus %zu free %zu waiters %zu remaining %u limit %u\n", s->n_gpus, free_n,
           s->n_gpu_waiters, s->budget_remaining, s->budget_limit);
    for (size_t i = 0; i < s->n_gpus; i++)
        printf("gpu %u %s %s\n", s->gpus[i].index, s->gpus[i].holder[0] ? s->gpus[i].holder : "-",
               s->gpus[i].lease_id[0] ? s->gpus[i].lease_id : "-");
    jb_client_resource_status_free(s);
    return 0;
}

typedef struct redis_async_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int rc;
} redis_async_state;

static void redis_access_cb(jb_status status, jb_client_redis_access *a, const jb_error *err,
                            void *userdata)
{
    redis_async_state *s = userdata;
    int rc = 0;
    if (status != JB_OK)
        rc = fail(status, err);
    else
        printf("redis %s %s %s %s %u %s %s %s\n", a->url, a->username, a->password, a->key_prefix,
               a->max_connections, a->shared_prefix, a->shared_access, a->component);
    fflush(stdout);
    jb_client_redis_access_free(a);
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    s->rc = rc;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int redis_async(jb_client *c, const char *component)
{
    redis_async_state s = {.done = 0};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    jb_error err;
    jb_status st = jb_client_redis_access_get_async(c, component, redis_access_cb, &s, &err);
    if (st != JB_OK)
        return fail(st, &err);
    pthread_mutex_lock(&s.mu);
    while (!s.done)
        pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return s.rc;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: client_probe ADDR VERB ARGS (see the source)\n");
        return 2;
    }
    const char *verb = argv[2];
    jb_client_options o = {.addr = argv[1], .backoff_min_ms = 50, .backoff_max_ms = 500};
    if (strcmp(verb, "sub-watch") == 0 && argc >= 7) {
        long ka = atol(argv[5]);
        o.keepalive_ms = ka > 0 ? (uint32_t)ka : JB_CLIENT_KEEPALIVE_OFF;
        o.keepalive_timeout_ms = (uint32_t)atol(argv[6]);
    }
    if (strcmp(verb, "quota") == 0 && argc >= 7)
        o.deadline_ms = (uint32_t)atol(argv[6]);
    if (strcmp(verb, "buffered") == 0 && argc >= 7) {
        o.batch_window_ms = (uint32_t)atoi(argv[5]);
        o.max_batch = (uint32_t)atoi(argv[6]);
    }
    jb_client *c;
    jb_error err;
    jb_status st = jb_client_new(&o, &c, &err);
    if (st != JB_OK)
        return fail(st, &err);
    int rc = 0;
    char payload[32];
    if (strcmp(verb, "publish") == 0 && argc >= 5) {
        long n = atol(argv[4]);
        for (long i = 0; i < n && rc == 0; i++) {
            jb_event ev = make_event(argv[3], payload, (size_t)i);
            uint64_t seq;
            uint8_t dup;
            st = jb_client_publish(c, &ev, 1, &seq, &dup, NULL, &err);
            if (st != JB_OK)
                rc = fail(st, &err);
            else
                printf("seq %llu dup %u\n", (unsigned long long)seq, dup);
        }
    } else if (strcmp(verb, "batch") == 0 && argc >= 5) {
        size_t n = (size_t)atol(argv[4]);
        jb_event *evs = calloc(n, sizeof(*evs));
        char(*pl)[32] = calloc(n, 32);
        uint64_t *seqs = calloc(n, sizeof(*seqs));
        for (size_t i = 0; i < n; i++)
            evs[i] = make_event(argv[3], pl[i], i);
        st = jb_client_publish(c, evs, n, seqs, NULL, NULL, &err);
        if (st != JB_OK) {
            rc = fail(st, &err);
        } else {
            printf("seqs");
            for (size_t i = 0; i < n; i++)
                printf(" %llu", (unsigned long long)seqs[i]);
            printf("\n");
        }
        free(evs);
        free(pl);
        free(seqs);
    } else if (strcmp(verb, "async") == 0 && argc >= 6) {
        long n = atol(argv[4]), k = atol(argv[5]);
        async_state s = {0};
        pthread_mutex_init(&s.mu, NULL);
        pthread_cond_init(&s.cv, NULL);
        for (long i = 0; i < n; i++) {
            pthread_mutex_lock(&s.mu);
            while ((long)s.in_flight >= k)
                pthread_cond_wait(&s.cv, &s.mu);
            s.in_flight++;
            pthread_mutex_unlock(&s.mu);
            jb_event ev = make_event(argv[3], payload, (size_t)i);
            st = jb_client_publish_async(c, &ev, 1, async_done, &s, &err);
            if (st != JB_OK) {
                rc = fail(st, &err);
                break;
            }
        }
        pthread_mutex_lock(&s.mu);
        while (s.in_flight > 0)
            pthread_cond_wait(&s.cv, &s.mu);
        pthread_mutex_unlock(&s.mu);
        printf("ok %zu failed %zu\n", s.ok, s.failed);
    } else if (strcmp(verb, "buffered") == 0 && argc >= 7) {
        long n = atol(argv[4]);
        for (long i = 0; i < n && rc == 0; i++) {
            jb_event ev = make_event(argv[3], payload, (size_t)i);
            if ((st = jb_client_publish_buffered(c, &ev, &err)) != JB_OK)
                rc = fail(st, &err);
        }
        if (rc == 0 && argc >= 8) {
            st = jb_client_flush(c, (uint32_t)atoi(argv[7]), &err);
            printf("first %s\n", jb_status_name(st));
            fflush(stdout);
        }
        if (rc == 0) {
            st = jb_client_flush(c, 30000, &err);
            if (st != JB_OK)
                rc = fail(st, &err);
            else
                printf("flushed %ld\n", n);
        }
    } else if (strcmp(verb, "error") == 0 && argc >= 4) {
        jb_event ev = make_event(argv[3], payload, 0);
        uint32_t retry = 0;
        st = jb_client_publish(c, &ev, 1, NULL, NULL, &retry, &err);
        printf("status %s retry %u\n%s\n", jb_status_name(st), retry,
               st == JB_OK ? "" : err.message);
    } else if ((strcmp(verb, "sub-cb") == 0 || strcmp(verb, "sub-pull") == 0) && argc >= 6) {
        rc = run_sub(c, strcmp(verb, "sub-pull") == 0, argv[3], argv[4], atol(argv[5]));
    } else if (strcmp(verb, "nack-once") == 0 && argc >= 5) {
        rc = nack_once(c, argv[3], argv[4]);
    } else if (strcmp(verb, "health") == 0) {
        jb_health h;
        st = jb_client_health(c, NULL, &h, &err);
        if (st != JB_OK)
            rc = fail(st, &err);
        else
            printf("health %s\n", jb_health_name(h));
    } else if (strcmp(verb, "sub-watch") == 0 && argc >= 7) {
        rc = sub_watch(c, argv[3], argv[4], argc >= 8 ? atol(argv[7]) : 0);
    } else if (strcmp(verb, "gpu") == 0 && argc >= 5) {
        rc = gpu_blocking(c, argv[3], (uint32_t)atol(argv[4]));
    } else if (strcmp(verb, "gpu-hold") == 0 && argc >= 5) {
        rc = gpu_hold(c, argv[3], (uint32_t)atol(argv[4]));
    } else if (strcmp(verb, "gpu-async") == 0 && argc >= 4) {
        rc = gpu_async(c, argv[3]);
    } else if (strcmp(verb, "gpu-release") == 0 && argc >= 4) {
        jb_client_gpu_release_info info;
        st = jb_client_gpu_release_id(c, argv[3], &info, &err);
        if (st != JB_OK)
            rc = fail(st, &err);
        else
            printf("released device %u\n", info.device);
    } else if (strcmp(verb, "quota") == 0 && argc >= 6) {
        rc = quota(c, argv[3], (uint32_t)atol(argv[4]), (uint32_t)atol(argv[5]));
    } else if (strcmp(verb, "rstatus") == 0) {
        rc = rstatus(c);
    } else if (strcmp(verb, "redis-async") == 0 && argc >= 4) {
        rc = redis_async(c, argv[3]);
    } else {
        fprintf(stderr, "client_probe: bad verb or arguments\n");
        rc = 2;
    }
    fflush(stdout);
    jb_client_free(c);
    return rc;
}
