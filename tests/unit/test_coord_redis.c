/*
 * Unit tests for the hiredis adapter (src/coord/redis.c) against a real
 * redis-server that each test starts on a free loopback port in its own
 * temporary folder (no persistence): connect, commands and their reply
 * types, AUTH right and wrong, a NOPERM error reply, Redis stopped (down
 * with a reason) and started again (up again), a reply that never comes,
 * a peer that never answers, close with commands in flight and close from
 * a reply callback, Unix sockets, and URLs refused.
 *
 * Tests wait for conditions on a real libuv loop with a generous deadline
 * (a bug fails instead of hanging) and assert no durations. Every test
 * closes its loop cleanly. Without redis-server ($JB_REDIS_SERVER, else
 * /usr/bin/redis-server) the tests that need it are skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord/redis.h"
#include "redis_server.h"

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 20000

/* ---- Harness ------------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    uv_timer_t guard;
    int expired;
    char dir[64];
    char sock[128];
    int port;
    pid_t redis;
    const char *password; /* requirepass of the next start, or NULL */

    jb__redis *r;
    int ups, downs, closed;
    char error[256];  /* the last "down" reason */
    const char *want; /* wait_error()'s substring */
    int matched;
    int close_on; /* on_state closes: 1 on "down", 2 on "up" */
} fixture;

/* One command's outcome. */
typedef struct answer {
    int done;
    char error[256];
    int has_error, has_str;
    char str[256];
    size_t len;
    long long integer;
} answer;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void on_guard(uv_timer_t *t)
{
    ((fixture *)t->data)->expired = 1;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_coord_redis_XXXXXX");
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    snprintf(f->sock, sizeof(f->sock), "%s/redis.sock", f->dir);
    uv_timer_init(&f->loop, &f->guard);
    f->guard.data = f;
    f->port = jbt_free_port();
    *state = f;
    return 0;
}

/* Runs the loop until *@flag >= @want; fails the test after WAIT_MS. */
static void run_until(fixture *f, const int *flag, int want)
{
    f->expired = 0;
    uv_timer_start(&f->guard, on_guard, WAIT_MS, 0);
    while (*flag < want && !f->expired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    if (*flag < want)
        print_error("waited in vain; last error: %s\n", f->error);
    assert_true(*flag >= want);
}

static void start_redis(fixture *f)
{
    f->redis = jbt_redis_start(f->dir, f->port, f->password, f->sock);
}

static void stop_redis(fixture *f)
{
    jbt_redis_stop(&f->redis);
}

static void on_closed(void *userdata);

static void on_state(jb__redis *r, int up, const char *error, void *userdata)
{
    fixture *f = userdata;
    assert_ptr_equal(r, f->r);
    assert_int_equal(jb__redis_up(r), up);
    if (up) {
        assert_null(error);
        f->ups++;
    } else {
        assert_non_null(error);
        assert_true(*error != '\0');
        snprintf(f->error, sizeof(f->error), "%s", error);
        f->downs++;
        if (f->want != NULL && strstr(error, f->want) != NULL)
            f->matched = 1;
    }
    if (f->close_on == (up ? 2 : 1)) {
        jb__redis_close(r, on_closed, f);
        f->r = NULL;
    }
}

/* Runs the loop until the connection is down with an error containing @sub. */
static void wait_error(fixture *f, const char *sub)
{
    f->want = sub;
    f->matched = !jb__redis_up(f->r) && strstr(f->error, sub) != NULL;
    run_until(f, &f->matched, 1);
    f->want = NULL;
}

static void on_closed(void *userdata)
{
    ((fixture *)userdata)->closed++;
}

static void open_redis(fixture *f, const char *url, const char *password, uint32_t timeout_ms)
{
    jb__redis_options o = {.url = url, .password = password, .timeout_ms = timeout_ms};
    jb_error err;
    assert_int_equal(jb__redis_new(&f->loop, &o, on_state, f, &f->r, &err), JB_OK);
}

static void open_local(fixture *f, const char *password, uint32_t timeout_ms)
{
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", f->port);
    open_redis(f, url, password, timeout_ms);
}

static void close_redis(fixture *f)
{
    if (f->r == NULL)
        return;
    int want = f->closed + 1;
    jb__redis_close(f->r, on_closed, f);
    f->r = NULL;
    run_until(f, &f->closed, want);
}

static int teardown(void **state)
{
    fixture *f = *state;
    close_redis(f);
    stop_redis(f);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&f->loop);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void on_answer(jb__redis *r, const jb__redis_reply *reply, void *userdata)
{
    answer *a = userdata;
    (void)r;
    assert_int_equal(a->done, 0);
    if (reply->error != NULL) {
        a->has_error = 1;
        snprintf(a->error, sizeof(a->error), "%s", reply->error);
        assert_null(reply->str);
    } else if (reply->str != NULL) {
        a->has_str = 1;
        assert_true(reply->len < sizeof(a->str));
        memcpy(a->str, reply->str, reply->len);
        a->len = reply->len;
    }
    a->integer = reply->integer;
    a->done = 1;
}

/* Sends a NUL-terminated command and waits for its answer. */
static void call(fixture *f, answer *a, int argc, const char *const *argv)
{
    memset(a, 0, sizeof(*a));
    assert_int_equal(jb__redis_command(f->r, on_answer, a, argc, argv, NULL), 0);
    assert_int_equal(a->done, 0); /* never inside the call */
    run_until(f, &a->done, 1);
}

#define CALL(f, a, ...)                                                 \
    do {                                                                \
        const char *argv_[] = {__VA_ARGS__};                            \
        call((f), (a), (int)(sizeof(argv_) / sizeof(argv_[0])), argv_); \
    } while (0)

/* ---- Tests --------------------------------------------------------------- */

static void test_commands(void **state)
{
    fixture *f = *state;
    start_redis(f);
    open_local(f, NULL, 0);
    run_until(f, &f->ups, 1);
    assert_true(jb__redis_up(f->r));
    int downs = f->downs; /* refused while Redis was starting */

    answer a;
    CALL(f, &a, "SET", "k", "v");
    assert_true(a.has_str);
    assert_string_equal(a.str, "OK");
    CALL(f, &a, "GET", "k");
    assert_string_equal(a.str, "v");
    CALL(f, &a, "GET", "missing");
    assert_false(a.has_str);
    assert_false(a.has_error);
    CALL(f, &a, "INCR", "n");
    assert_int_equal(a.integer, 1);
    CALL(f, &a, "RPUSH", "list", "x");
    CALL(f, &a, "LRANGE", "list", "0", "-1");
    assert_string_equal(a.error, "unexpected array reply");
    CALL(f, &a, "NOSUCHCOMMAND");
    assert_true(a.has_error);
    assert_memory_equal(a.error, "ERR", 3);

    /* Binary-safe arguments. */
    const char *argv[] = {"SET", "bin", "a\0b"};
    const size_t lens[] = {3, 3, 3};
    memset(&a, 0, sizeof(a));
    assert_int_equal(jb__redis_command(f->r, on_answer, &a, 3, argv, lens), 0);
    run_until(f, &a.done, 1);
    CALL(f, &a, "GET", "bin");
    assert_int_equal(a.len, 3);
    assert_memory_equal(a.str, "a\0b", 3);

    /* A NULL callback is allowed. */
    const char *ping[] = {"PING"};
    assert_int_equal(jb__redis_command(f->r, NULL, NULL, 1, ping, NULL), 0);
    CALL(f, &a, "PING");
    assert_string_equal(a.str, "PONG");
    assert_int_equal(f->downs, downs);
}

static void test_auth(void **state)
{
    fixture *f = *state;
    f->password = "s3cret";
    start_redis(f);
    open_local(f, "s3cret", 0);
    run_until(f, &f->ups, 1);
    answer a;
    CALL(f, &a, "ACL", "WHOAMI");
    assert_string_equal(a.str, "default");
    close_redis(f);

    open_local(f, "wrong", 0);
    wait_error(f, "WRONGPASS");
    assert_non_null(strstr(f->error, "AUTH refused: WRONGPASS"));
    assert_false(jb__redis_up(f->r));
    close_redis(f);

    open_local(f, NULL, 0);
    wait_error(f, "NOAUTH");
    assert_non_null(strstr(f->error, "PING refused: NOAUTH"));
    assert_int_equal(f->ups, 1);
}

static void test_noperm(void **state)
{
    fixture *f = *state;
    f->password = "admin";
    start_redis(f);
    open_local(f, "admin", 0);
    run_until(f, &f->ups, 1);
    int downs = f->downs;
    answer a;
    CALL(f, &a, "ACL", "SETUSER", "claude", "on", ">pw", "~claude:*", "+@all");
    assert_string_equal(a.str, "OK");
    CALL(f, &a, "AUTH", "claude", "pw");
    assert_string_equal(a.str, "OK");
    CALL(f, &a, "SET", "claude:x", "1");
    assert_string_equal(a.str, "OK");
    CALL(f, &a, "SET", "analytics:x", "1");
    assert_true(a.has_error);
    assert_memory_equal(a.error, "NOPERM", 6);
    assert_true(jb__redis_up(f->r)); /* an error reply is no connection error */
    assert_int_equal(f->downs, downs);
}

static void test_restart(void **state)
{
    fixture *f = *state;
    open_local(f, NULL, 0); /* before Redis: refused */
    wait_error(f, "refused");
    start_redis(f);
    run_until(f, &f->ups, 1);

    answer a;
    CALL(f, &a, "SET", "k", "v");
    int downs = f->downs;
    answer blocked = {0};
    const char *blpop[] = {"BLPOP", "nothing", "0"};
    assert_int_equal(jb__redis_command(f->r, on_answer, &blocked, 3, blpop, NULL), 0);
    stop_redis(f);
    run_until(f, &f->downs, downs + 1);
    assert_false(jb__redis_up(f->r));
    assert_string_equal(blocked.error, "connection lost");
    const char *get[] = {"GET", "k"};
    assert_int_equal(jb__redis_command(f->r, on_answer, &a, 2, get, NULL), -1);

    start_redis(f);
    run_until(f, &f->ups, 2);
    CALL(f, &a, "PING");
    assert_string_equal(a.str, "PONG");
}

static void test_reply_timeout(void **state)
{
    fixture *f = *state;
    start_redis(f);
    open_local(f, NULL, 200);
    run_until(f, &f->ups, 1);
    int downs = f->downs;
    answer a;
    CALL(f, &a, "BLPOP", "nothing", "0"); /* blocks forever on the server */
    assert_string_equal(a.error, "timed out");
    assert_int_equal(f->downs, downs + 1);
    assert_non_null(strstr(f->error, "no reply within 200 ms"));
    run_until(f, &f->ups, 2); /* a new connection */
    CALL(f, &a, "PING");
    assert_string_equal(a.str, "PONG");
}

/* A peer that accepts TCP (the kernel does) and never answers. */
static void test_silent_peer(void **state)
{
    fixture *f = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)f->port)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    open_local(f, "pw", 100);
    wait_error(f, "no reply within 100 ms");
    assert_int_equal(f->ups, 0);
    close_redis(f);
    close(fd);
}

typedef struct closer {
    fixture *f;
    answer a;
} closer;

static void on_answer_close(jb__redis *r, const jb__redis_reply *reply, void *userdata)
{
    closer *c = userdata;
    on_answer(r, reply, &c->a);
    jb__redis_close(r, on_closed, c->f);
    c->f->r = NULL;
}

static void test_close_in_flight(void **state)
{
    fixture *f = *state;
    start_redis(f);
    open_local(f, NULL, 0);
    run_until(f, &f->ups, 1);

    enum { N = 8 };
    answer a[N];
    const char *blpop[] = {"BLPOP", "nothing", "0"};
    const char *ping[] = {"PING"};
    memset(a, 0, sizeof(a));
    assert_int_equal(jb__redis_command(f->r, on_answer, &a[0], 3, blpop, NULL), 0);
    for (int i = 1; i < N; i++)
        assert_int_equal(jb__redis_command(f->r, on_answer, &a[i], 1, ping, NULL), 0);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the commands go out */
    int downs = f->downs;
    jb__redis_close(f->r, on_closed, f);
    f->r = NULL;
    for (int i = 0; i < N; i++) {
        assert_true(a[i].done); /* failed synchronously by close */
        assert_string_equal(a[i].error, "closed");
    }
    assert_int_equal(f->closed, 0); /* done waits for the handles */
    run_until(f, &f->closed, 1);
    assert_int_equal(f->downs, downs); /* no state callback after close */

    /* Closing from a reply callback, with another command behind it. */
    open_local(f, NULL, 0);
    run_until(f, &f->ups, 2);
    closer c = {.f = f};
    answer behind = {0};
    assert_int_equal(jb__redis_command(f->r, on_answer_close, &c, 1, ping, NULL), 0);
    assert_int_equal(jb__redis_command(f->r, on_answer, &behind, 3, blpop, NULL), 0);
    run_until(f, &f->closed, 2);
    assert_string_equal(c.a.str, "PONG");
    assert_string_equal(behind.error, "closed");

    /* Closing while connecting, and closing NULL. */
    open_redis(f, "redis://127.0.0.1:1", NULL, 0);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the first attempt starts */
    close_redis(f);
    jb__redis_close(NULL, on_closed, f);
    assert_int_equal(f->closed, 3);
}

/* The state callback may close the connection, from hiredis's callbacks too. */
static void test_close_from_state_cb(void **state)
{
    fixture *f = *state;
    f->close_on = 1;
    open_local(f, NULL, 0); /* refused: hiredis's connect callback */
    run_until(f, &f->closed, 1);
    assert_int_equal(f->downs, 1);

    start_redis(f);
    f->close_on = 2;
    open_local(f, NULL, 0); /* up: inside PING's reply callback */
    run_until(f, &f->closed, 2);
    assert_int_equal(f->ups, 1);

    f->close_on = 1;
    open_local(f, NULL, 0);
    run_until(f, &f->ups, 2);
    stop_redis(f); /* down: hiredis's disconnect callback */
    run_until(f, &f->closed, 3);
}

/* A host name, resolved off the loop; closing while it resolves. */
static void test_host_name(void **state)
{
    fixture *f = *state;
    start_redis(f);
    char url[64];
    snprintf(url, sizeof(url), "redis://localhost:%d", f->port);
    open_redis(f, url, NULL, 0);
    run_until(f, &f->ups, 1);
    answer a;
    CALL(f, &a, "PING");
    assert_string_equal(a.str, "PONG");
    close_redis(f);

    open_redis(f, url, NULL, 0);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the resolution starts */
    close_redis(f);
    assert_int_equal(f->ups, 1);
}

static void test_unix_socket(void **state)
{
    fixture *f = *state;
    start_redis(f);
    char url[160];
    snprintf(url, sizeof(url), "unix:%s", f->sock);
    open_redis(f, url, NULL, 0);
    run_until(f, &f->ups, 1);
    answer a;
    CALL(f, &a, "PING");
    assert_string_equal(a.str, "PONG");
}

static void test_bad_urls(void **state)
{
    fixture *f = *state;
    static const char *const bad[] = {"",
                                      "rediss://h:1",
                                      "http://h:1",
                                      "redis://",
                                      "redis://h:0",
                                      "redis://h:70000",
                                      "redis://h:x",
                                      "redis://u:p@h:1",
                                      "redis://h:1/0",
                                      "redis://[::1",
                                      "unix:",
                                      "h:6379"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        jb__redis_options o = {.url = bad[i]};
        jb_error err = {0};
        jb__redis *r = NULL;
        assert_int_equal(jb__redis_new(&f->loop, &o, on_state, f, &r, &err), JB_EINVAL);
        assert_null(r);
        assert_true(err.message[0] != '\0');
    }
    static const char *const good[] = {"redis://[::1]:1", "redis://localhost", "redis://h:1/",
                                       "unix:///tmp/none.sock"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        open_redis(f, good[i], NULL, 0);
        close_redis(f);
    }
}

int main(void)
{
    /* SIGPIPE keeps its default: the adapter must not need it ignored. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_noperm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_peer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_state_cb, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_urls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
