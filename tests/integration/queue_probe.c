/*
 * queue_probe: drives the request queue of the C client library
 * (jimbot/client.h, "Infrastructure: the request queue") for
 * test_cli_queue.py. Each verb is one scenario against a running jimbotd,
 * with its worker (if any) in this process, and prints plain lines:
 *
 *   queue_probe ADDR echo QUEUE N      a callback worker answering each task from its
 *                                      callback (respond_async) with type "echo" and
 *                                      the payload; N blocking submits of "p<i>" that
 *                                      bypass the cache: "response PAYLOAD type T
 *                                      cached C delivery D"; then "p0" again: the same
 *                                      line from the cache; then an asynchronous
 *                                      submit: "async PAYLOAD"
 *   queue_probe ADDR fail QUEUE TEXT   a pull worker answering with the error TEXT:
 *                                      "status OK error TEXT cached C"
 *   queue_probe ADDR refusals QUEUE    with no worker: "submit STATUS reason R"; to an
 *                                      unknown queue: "unknown STATUS"; a worker of an
 *                                      unknown queue: "worker STATUS"
 *   queue_probe ADDR full QUEUE DEPTH  a pull worker holds one task, DEPTH more wait:
 *                                      "full STATUS reason R retry-positive B"; then
 *                                      all are answered: "answered N"
 *   queue_probe ADDR timeout QUEUE     a worker that does not answer, a submit of
 *                                      300 ms: "timeout STATUS"
 *   queue_probe ADDR paced QUEUE       a callback worker, two submits on a queue paced
 *                                      by a budget of one: "first STATUS", "second
 *                                      STATUS reason R retry-positive B"
 *   queue_probe ADDR poison QUEUE      a worker that takes the task and goes away (the
 *                                      queue's max_deliveries is 1): "poison STATUS
 *                                      reason R"
 *   queue_probe ADDR args QUEUE        argument checks: "NAME STATUS" for a submit with
 *                                      no queue, an async one with no callback, a
 *                                      respond with no id and with an unknown id, a
 *                                      worker with no queue, worker_next on a callback
 *                                      worker, a blocking submit from a callback
 *                                      ("in-callback"); then the client is freed with
 *                                      the worker open: "ended STATUS"
 *
 * Statuses are printed by name (jb_status_name). Exit status 0, or 1 with
 * "error: NAME: message" when a step that must work did not.
 */
#include "jimbot/client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static jb_client *client;

static void die(jb_status st, const jb_error *err)
{
    printf("error: %s: %s\n", jb_status_name(st), err != NULL ? err->message : "");
    exit(1);
}

static void check(jb_status st, const jb_error *err)
{
    if (st != JB_OK)
        die(st, err);
}

/* A pull worker of @queue, registered. */
static jb_client_worker *pull_worker(const char *queue, uint32_t max_outstanding)
{
    jb_client_worker_options o = {.queue = queue, .max_outstanding = max_outstanding};
    jb_client_worker *w;
    jb_error err;
    check(jb_client_worker_start(client, &o, NULL, NULL, &w, &err), &err);
    check(jb_client_worker_wait_registered(w, 30000, &err), &err);
    return w;
}

static jb_status submit(const char *queue, const char *payload, uint32_t timeout_ms, int bypass,
                        jb_client_response **resp, jb_client_submit_refusal *why, jb_error *err)
{
    jb_client_request r = {.queue = queue,
                           .type = "text",
                           .payload = payload,
                           .payload_len = strlen(payload),
                           .timeout_ms = timeout_ms,
                           .submitter = "queue_probe",
                           .bypass_cache = bypass};
    return jb_client_submit(client, &r, resp, why, err);
}

/* ---- echo ------------------------------------------------------------------- */

static uint32_t last_delivery;

static void on_echo(jb_client_worker *w, const jb_client_worker_event *ev, void *userdata)
{
    (void)w;
    (void)userdata;
    if (ev->kind != JB_CLIENT_WORKER_TASK)
        return;
    last_delivery = ev->task->delivery_count;
    jb_client_response r = {.request_id = ev->task->request_id,
                            .type = "echo",
                            .payload = ev->task->payload,
                            .payload_len = ev->task->payload_len};
    jb_error err;
    check(jb_client_respond_async(client, &r, NULL, NULL, &err), &err);
}

static void print_response(const jb_client_response *r)
{
    printf("response %.*s type %s cached %d delivery %u\n", (int)r->payload_len,
           (const char *)r->payload, r->type, r->cached, last_delivery);
}

typedef struct async_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int left;
} async_wait;

static async_wait aw = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

/* The last asynchronous submit's end. */
static jb_status last_status;
static jb_client_submit_refusal last_why;

static void on_async(jb_status st, const jb_client_response *resp,
                     const jb_client_submit_refusal *why, const jb_error *err, void *userdata)
{
    if (userdata != NULL && st == JB_OK)
        printf("async %.*s\n", (int)resp->payload_len, (const char *)resp->payload);
    else if (userdata != NULL)
        die(st, err);
    pthread_mutex_lock(&aw.mu);
    last_status = st;
    if (why != NULL)
        last_why = *why;
    aw.left--;
    pthread_cond_broadcast(&aw.cv);
    pthread_mutex_unlock(&aw.mu);
}

static void async_submit(const char *queue, const char *payload, int print)
{
    jb_client_request r = {.queue = queue,
                           .payload = payload,
                           .payload_len = strlen(payload),
                           .timeout_ms = 20000,
                           .bypass_cache = 1};
    jb_error err;
    pthread_mutex_lock(&aw.mu);
    aw.left++;
    pthread_mutex_unlock(&aw.mu);
    check(jb_client_submit_async(client, &r, on_async, print ? &aw : NULL, &err), &err);
}

static void async_wait_all(void)
{
    pthread_mutex_lock(&aw.mu);
    while (aw.left > 0)
        pthread_cond_wait(&aw.cv, &aw.mu);
    pthread_mutex_unlock(&aw.mu);
}

static void verb_echo(const char *queue, int n)
{
    jb_client_worker_options o = {.queue = queue, .max_outstanding = 4, .name = "probe"};
    jb_client_worker *w;
    jb_error err;
    check(jb_client_worker_start(client, &o, on_echo, NULL, &w, &err), &err);
    check(jb_client_worker_wait_registered(w, 30000, &err), &err);
    char payload[32];
    for (int i = 0; i <= n; i++) {
        snprintf(payload, sizeof(payload), "p%d", i < n ? i : 0);
        jb_client_response *resp;
        check(submit(queue, payload, 0, i < n, &resp, NULL, &err), &err);
        print_response(resp);
        jb_client_response_free(resp);
    }
    async_submit(queue, "a1", 1);
    async_wait_all();
    jb_client_worker_free(w);
}

/* ---- fail, timeout, full, poison: pull workers --------------------------------- */

typedef struct answerer {
    jb_client_worker *w;
    const char *error;
    int n;
} answerer;

/* Takes @a->n tasks and answers each with @a->error (or an echo when NULL). */
static void *answer_thread(void *arg)
{
    answerer *a = arg;
    for (int i = 0; i < a->n; i++) {
        jb_client_task *t;
        jb_error err;
        check(jb_client_worker_next(a->w, 30000, &t, &err), &err);
        jb_client_response r = {.request_id = t->request_id,
                                .type = t->type,
                                .payload = t->payload,
                                .payload_len = t->payload_len,
                                .error = a->error};
        check(jb_client_respond(client, &r, &err), &err);
        jb_client_task_free(t);
    }
    return NULL;
}

static void verb_fail(const char *queue, const char *text)
{
    answerer a = {.w = pull_worker(queue, 1), .error = text, .n = 1};
    pthread_t th;
    pthread_create(&th, NULL, answer_thread, &a);
    jb_client_response *resp;
    jb_error err;
    check(submit(queue, "question", 0, 1, &resp, NULL, &err), &err);
    printf("status OK error %s cached %d\n", resp->error, resp->cached);
    jb_client_response_free(resp);
    pthread_join(th, NULL);
    jb_client_worker_free(a.w);
}

static void print_refusal(const char *what, jb_status st, const jb_client_submit_refusal *why)
{
    printf("%s %s reason %s retry-positive %d\n", what, jb_status_name(st), why->reason,
           why->retry_after_ms > 0);
}

static void verb_refusals(const char *queue)
{
    jb_client_response *resp;
    jb_client_submit_refusal why;
    jb_error err;
    jb_status st = submit(queue, "x", 0, 0, &resp, &why, &err);
    printf("submit %s reason %s\n", jb_status_name(st), why.reason);
    st = submit("no-such-queue", "x", 0, 0, &resp, &why, &err);
    printf("unknown %s\n", jb_status_name(st));
    jb_client_worker_options o = {.queue = "no-such-queue"};
    jb_client_worker *w;
    check(jb_client_worker_start(client, &o, NULL, NULL, &w, &err), &err);
    printf("worker %s\n", jb_status_name(jb_client_worker_wait_registered(w, 30000, &err)));
    jb_client_worker_free(w);
}

/* Waits until @queue has @depth waiting and @in_flight held. */
static void wait_depth(const char *queue, uint32_t depth, uint32_t in_flight)
{
    for (int tries = 0; tries < 3000; tries++) {
        jb_client_resource_status *s;
        jb_error err;
        check(jb_client_resource_status_get(client, &s, &err), &err);
        int ok = 0;
        for (size_t i = 0; i < s->n_request_queues; i++) {
            const jb_client_queue_status *q = &s->request_queues[i];
            ok |= strcmp(q->name, queue) == 0 && q->depth == depth && q->in_flight == in_flight;
        }
        jb_client_resource_status_free(s);
        if (ok)
            return;
        usleep(10000);
    }
    printf("error: %s never had %u waiting and %u held\n", queue, depth, in_flight);
    exit(1);
}

static void verb_full(const char *queue, int depth)
{
    answerer a = {.w = pull_worker(queue, 1), .n = depth + 1};
    async_submit(queue, "w0", 0);
    wait_depth(queue, 0, 1);
    char payload[32];
    for (int i = 1; i <= depth; i++) {
        snprintf(payload, sizeof(payload), "w%d", i);
        async_submit(queue, payload, 0);
    }
    wait_depth(queue, (uint32_t)depth, 1);
    jb_client_response *resp;
    jb_client_submit_refusal why;
    jb_error err;
    jb_status st = submit(queue, "one too many", 0, 1, &resp, &why, &err);
    print_refusal("full", st, &why);
    pthread_t th;
    pthread_create(&th, NULL, answer_thread, &a);
    pthread_join(th, NULL);
    async_wait_all();
    printf("answered %d\n", a.n);
    jb_client_worker_free(a.w);
}

static void verb_timeout(const char *queue)
{
    jb_client_worker *w = pull_worker(queue, 1);
    jb_client_response *resp;
    jb_client_submit_refusal why;
    jb_error err;
    jb_status st = submit(queue, "slow", 300, 1, &resp, &why, &err);
    printf("timeout %s\n", jb_status_name(st));
    jb_client_worker_free(w);
}

static void verb_paced(const char *queue)
{
    jb_client_worker_options o = {.queue = queue};
    jb_client_worker *w;
    jb_error err;
    check(jb_client_worker_start(client, &o, on_echo, NULL, &w, &err), &err);
    check(jb_client_worker_wait_registered(w, 30000, &err), &err);
    jb_client_response *resp = NULL;
    jb_client_submit_refusal why;
    jb_status st = submit(queue, "first", 0, 1, &resp, &why, &err);
    printf("first %s\n", jb_status_name(st));
    jb_client_response_free(resp);
    st = submit(queue, "second", 1000, 1, &resp, &why, &err);
    print_refusal("second", st, &why);
    jb_client_worker_free(w);
}

static void verb_poison(const char *queue)
{
    jb_client_worker *w = pull_worker(queue, 1);
    async_submit(queue, "bad", 0);
    jb_client_task *t;
    jb_error err;
    check(jb_client_worker_next(w, 30000, &t, &err), &err);
    jb_client_task_free(t);
    jb_client_worker_free(w);
    async_wait_all();
    printf("poison %s reason %s\n", jb_status_name(last_status), last_why.reason);
}

static void on_args_event(jb_client_worker *w, const jb_client_worker_event *ev, void *userdata)
{
    (void)w;
    const char *queue = userdata;
    if (ev->kind == JB_CLIENT_WORKER_REGISTERED) {
        jb_client_response *resp;
        jb_status st = submit(queue, "x", 0, 0, &resp, NULL, NULL);
        printf("in-callback %s\n", jb_status_name(st));
    } else if (ev->kind == JB_CLIENT_WORKER_ENDED) {
        printf("ended %s\n", jb_status_name(ev->status));
    }
}

static void verb_args(const char *queue)
{
    jb_client_response *resp;
    jb_client_request r = {.queue = NULL};
    jb_error err;
    printf("no-queue %s\n", jb_status_name(jb_client_submit(client, &r, &resp, NULL, &err)));
    r.queue = queue;
    printf("no-callback %s\n",
           jb_status_name(jb_client_submit_async(client, &r, NULL, NULL, &err)));
    jb_client_response a = {.request_id = ""};
    printf("respond-no-id %s\n", jb_status_name(jb_client_respond(client, &a, &err)));
    a.request_id = "no-such-request";
    printf("respond-unknown %s\n", jb_status_name(jb_client_respond(client, &a, &err)));
    jb_client_worker_options o = {.queue = ""};
    jb_client_worker *w;
    printf("worker-no-queue %s\n",
           jb_status_name(jb_client_worker_start(client, &o, NULL, NULL, &w, &err)));
    o.queue = queue;
    check(jb_client_worker_start(client, &o, on_args_event, (void *)queue, &w, &err), &err);
    check(jb_client_worker_wait_registered(w, 30000, &err), &err);
    jb_client_task *t;
    printf("next-with-callback %s\n", jb_status_name(jb_client_worker_next(w, 0, &t, &err)));
    jb_client_free(client); /* ends and frees the worker */
    client = NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: queue_probe ADDR VERB QUEUE [ARGS]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    jb_client_options o = {.addr = argv[1]};
    jb_error err;
    check(jb_client_new(&o, &client, &err), &err);
    const char *verb = argv[2], *queue = argv[3];
    if (strcmp(verb, "echo") == 0 && argc == 5)
        verb_echo(queue, atoi(argv[4]));
    else if (strcmp(verb, "fail") == 0 && argc == 5)
        verb_fail(queue, argv[4]);
    else if (strcmp(verb, "refusals") == 0)
        verb_refusals(queue);
    else if (strcmp(verb, "full") == 0 && argc == 5)
        verb_full(queue, atoi(argv[4]));
    else if (strcmp(verb, "timeout") == 0)
        verb_timeout(queue);
    else if (strcmp(verb, "paced") == 0)
        verb_paced(queue);
    else if (strcmp(verb, "poison") == 0)
        verb_poison(queue);
    else if (strcmp(verb, "args") == 0)
        verb_args(queue);
    else
        fprintf(stderr, "queue_probe: unknown verb or arguments\n");
    jb_client_free(client);
    return 0;
}
