/*
 * Unit tests for the shared Redis's namespaces (src/coord/redis_ns.c): the
 * pure parts (allowances, CLIENT LIST parsing, the users file, the ACL
 * rule), the configuration checks, and then the whole against a real
 * redis-server that each such test starts on a free loopback port in its
 * own temporary folder (--save '' --appendonly no, a password for
 * jimbotd's own AUTH): ACL users and NOPERM, shared read-only, the
 * connection budget (CLIENT KILL of the newest), the users file across a
 * restart, rotation, removed namespaces, and Redis going away and coming
 * back empty.
 *
 * What the test checks in Redis it checks through redis-cli, or through
 * raw RESP on a socket where a connection must stay open. Tests never
 * assert durations: they poll for conditions with a generous deadline, so
 * that a bug fails instead of hanging. Without redis-server on PATH the
 * Redis tests are skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord/coord_internal.h"
#include "jimbot/config.h"
#include "jimbot/coord.h"
#include "jimbot/log.h"
#include "redis_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ADMIN_PASS "admin-secret"

/* ---- Pure logic ------------------------------------------------------------ */

static void test_allowances_even_split(void **state)
{
    (void)state;
    int64_t fixed[3] = {-1, -1, -1};
    uint32_t out[3];
    assert_int_equal(jb__redis_allowances(20, fixed, 3, out, NULL), JB_OK);
    /* 19 left besides jimbotd's own: 6 each, one unused. */
    assert_int_equal(out[0], 6);
    assert_int_equal(out[1], 6);
    assert_int_equal(out[2], 6);
}

static void test_allowances_fixed_and_rest(void **state)
{
    (void)state;
    int64_t fixed[3] = {10, -1, -1};
    uint32_t out[3];
    assert_int_equal(jb__redis_allowances(20, fixed, 3, out, NULL), JB_OK);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[1], 4);
    assert_int_equal(out[2], 4);
    /* Both sides of the boundary: exactly one each is fine, none is refused. */
    int64_t tight[3] = {17, -1, -1};
    assert_int_equal(jb__redis_allowances(20, tight, 3, out, NULL), JB_OK);
    assert_int_equal(out[1], 1);
    int64_t over[3] = {18, -1, -1};
    jb_error err;
    assert_int_equal(jb__redis_allowances(20, over, 3, out, &err), JB_ECONFIG);
    assert_non_null(strstr(err.message, "max_connections 20"));
    int64_t zero[1] = {0};
    assert_int_equal(jb__redis_allowances(20, zero, 1, out, NULL), JB_ECONFIG);
    int64_t all_fixed[2] = {10, 9};
    assert_int_equal(jb__redis_allowances(20, all_fixed, 2, out, NULL), JB_OK);
    assert_int_equal(jb__redis_allowances(19, all_fixed, 2, out, NULL), JB_ECONFIG);
    assert_int_equal(jb__redis_allowances(2, NULL, 0, out, NULL), JB_OK);
}

typedef struct clients {
    jb__redis_client c[8];
    size_t n;
} clients;

static void add_client(const jb__redis_client *c, void *ud)
{
    clients *cs = ud;
    if (cs->n < 8)
        cs->c[cs->n++] = *c;
}

static void test_client_list_parsed(void **state)
{
    (void)state;
    const char *list =
        "id=3 addr=127.0.0.1:50100 laddr=127.0.0.1:6379 fd=8 name= age=12 idle=0 flags=N db=0 "
        "sub=0 psub=0 ssub=0 multi=-1 qbuf=26 qbuf-free=20448 argv-mem=10 multi-mem=0 rbs=1024 "
        "rbp=0 obl=0 oll=0 omem=0 tot-mem=22298 events=r cmd=client|list user=default "
        "redir=-1 resp=2\n"
        "id=17 addr=127.0.0.1:50200 laddr=127.0.0.1:6379 fd=9 name=worker age=0 idle=0 "
        "user=jimbot-claude resp=2\r\n"
        "garbage without fields\n"
        "id=x addr=1 age=1 user=u\n"
        "id=18 addr=[::1]:50300 age=99999999999 user=jimbot-analytics";
    clients cs = {0};
    assert_int_equal(jb__redis_parse_client_list(list, strlen(list), add_client, &cs), 3);
    assert_int_equal(cs.n, 3);
    assert_int_equal(cs.c[0].id, 3);
    assert_int_equal(cs.c[0].age_s, 12);
    assert_string_equal(cs.c[0].user, "default");
    assert_string_equal(cs.c[0].addr, "127.0.0.1:50100");
    assert_int_equal(cs.c[1].id, 17);
    assert_string_equal(cs.c[1].user, "jimbot-claude");
    assert_int_equal(cs.c[2].age_s, 99999999999ull);
    assert_string_equal(cs.c[2].addr, "[::1]:50300");
    /* "laddr=" is not "addr=", "name=" may be empty. */
    assert_int_equal(jb__redis_parse_client_list("", 0, add_client, &cs), 0);
}

typedef struct users {
    char names[4][64];
    char passes[4][65];
    size_t n;
} users;

static void add_user(const char *component, const char *password, void *ud)
{
    users *u = ud;
    if (u->n < 4) {
        snprintf(u->names[u->n], sizeof(u->names[0]), "%s", component);
        snprintf(u->passes[u->n], sizeof(u->passes[0]), "%s", password);
        u->n++;
    }
}

#define PASS_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define PASS_B "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

static void test_users_file_round_trip(void **state)
{
    (void)state;
    const char *names[] = {"analytics", "claude"};
    const char *passes[] = {PASS_A, PASS_B};
    char *buf;
    size_t len;
    assert_int_equal(jb__redis_users_encode(names, passes, 2, &buf, &len), JB_OK);
    users u = {0};
    assert_int_equal(jb__redis_users_decode(buf, len, add_user, &u, NULL), JB_OK);
    free(buf);
    assert_int_equal(u.n, 2);
    assert_string_equal(u.names[0], "analytics");
    assert_string_equal(u.passes[0], PASS_A);
    assert_string_equal(u.names[1], "claude");
    assert_string_equal(u.passes[1], PASS_B);
    assert_int_equal(jb__redis_users_encode(NULL, NULL, 0, &buf, &len), JB_OK);
    assert_int_equal(jb__redis_users_decode(buf, len, add_user, &u, NULL), JB_OK);
    free(buf);
}

static void test_users_file_damage_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "claude " PASS_A,                      /* not ended */
        "claude\n",                            /* no password */
        " " PASS_A "\n",                       /* no name */
        "claude " PASS_A "0\n",                /* too long */
        "claude 0123456789ABCDEF" PASS_A "\n", /* upper case, too long */
        "claude zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        users u = {0};
        jb_error err;
        assert_int_equal(jb__redis_users_decode(bad[i], strlen(bad[i]), add_user, &u, &err),
                         JB_ECORRUPT);
        assert_non_null(strstr(err.message, "line 1"));
    }
}

static int has_arg(const char **argv, int argc, const char *want)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], want) == 0)
            return 1;
    }
    return 0;
}

static void test_acl_rule(void **state)
{
    (void)state;
    char bufs[4][160];
    const char *argv[32];
    int argc = jb__redis_acl_rule("jimbot-claude", PASS_A, "claude:", "shared:", 0, bufs, argv);
    assert_true(argc <= 32);
    assert_string_equal(argv[0], "ACL");
    assert_string_equal(argv[1], "SETUSER");
    assert_string_equal(argv[2], "jimbot-claude");
    assert_string_equal(argv[3], "reset");
    assert_true(has_arg(argv, argc, ">" PASS_A));
    assert_true(has_arg(argv, argc, "~claude:*"));
    assert_true(has_arg(argv, argc, "~shared:*"));
    assert_true(has_arg(argv, argc, "resetchannels"));
    assert_true(has_arg(argv, argc, "-@dangerous"));
    assert_true(has_arg(argv, argc, "-scan"));
    argc = jb__redis_acl_rule("jimbot-claude", PASS_A, "claude:", "shared:", 1, bufs, argv);
    assert_true(has_arg(argv, argc, "%R~shared:*"));
    assert_false(has_arg(argv, argc, "~shared:*"));
    argc = jb__redis_acl_rule("jimbot-claude", PASS_A, "claude:", "shared:", 2, bufs, argv);
    assert_false(has_arg(argv, argc, "%R~shared:*"));
    assert_false(has_arg(argv, argc, "~shared:*"));
    argc = jb__redis_acl_rule("jimbot-claude", PASS_A, "claude:", "", 0, bufs, argv);
    assert_false(has_arg(argv, argc, "~*"));
}

/* ---- Harness ----------------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    char dir[64];
    char users[128];  /* the users file */
    char config[128]; /* the configuration file */
    jb_config *cfg;
    jb_coord *co;
    int closed;
    pid_t redis;
    int port;
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/jb_test_coord_redis_XXXXXX");
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    snprintf(f->users, sizeof(f->users), "%s/redis.users", f->dir);
    snprintf(f->config, sizeof(f->config), "%s/infrastructure.yaml", f->dir);
    *state = f;
    return 0;
}

static void on_coord_closed(void *ud)
{
    ((fixture *)ud)->closed = 1;
}

static void close_coord(fixture *f)
{
    if (f->co == NULL)
        return;
    f->closed = 0;
    jb_coord_close(f->co, on_coord_closed, f);
    f->co = NULL;
    time_t deadline = time(NULL) + 20;
    while (!f->closed && time(NULL) < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->closed);
}

static void stop_redis(fixture *f)
{
    jbt_redis_stop(&f->redis);
}

static int teardown(void **state)
{
    fixture *f = *state;
    close_coord(f);
    stop_redis(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int busy = uv_loop_close(&f->loop);
    jb_config_unref(f->cfg);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    assert_int_equal(busy, 0);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until @cond(@f, @arg) holds, at most 20 s; returns whether it did. */
static int run_until(fixture *f, int (*cond)(fixture *f, const void *arg), const void *arg)
{
    uv_timer_t tick;
    uv_timer_init(&f->loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    time_t deadline = time(NULL) + 20;
    int ok;
    while (!(ok = cond(f, arg)) && time(NULL) < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    return ok;
}

static void load_config(fixture *f, const char *yaml)
{
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fprintf(fp, "resource_coordinator:\n  redis:\n%s", yaml);
    assert_int_equal(fclose(fp), 0);
    jb_config_unref(f->cfg);
    f->cfg = NULL;
    jb_config_errors *errs = jb_config_errors_new();
    jb_config_options o = {.path = f->config};
    jb_status s = jb_config_load(&o, &f->cfg, errs, NULL);
    char line[512];
    for (size_t i = 0; i < jb_config_errors_count(errs); i++)
        print_message("config: %s\n", jb_config_errors_format(errs, i, line, sizeof(line)));
    jb_config_errors_free(errs);
    assert_int_equal(s, JB_OK);
}

/* Loads "url: redis://127.0.0.1:PORT, password" plus @more (indented four spaces). */
static void load_redis_config(fixture *f, const char *more)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "    url: redis://127.0.0.1:%d\n    password: " ADMIN_PASS
             "\n    check_interval_ms: 100\n    connection_timeout: 2\n%s",
             f->port, more);
    load_config(f, yaml);
}

static jb_status open_coord(fixture *f, jb_error *err)
{
    jb_coord_options o = {.nvml_library = "", .devices = 1, .redis_users_path = f->users};
    jb_status s = jb_coord_new(&f->loop, &o, &f->co, err);
    if (s != JB_OK) {
        f->co = NULL;
        return s;
    }
    if (f->cfg != NULL)
        s = jb_coord_apply_config(f->co, f->cfg, err);
    return s;
}

/* ---- Configuration, without Redis ---------------------------------------------- */

static void test_no_url_no_redis(void **state)
{
    fixture *f = *state;
    load_config(f, "    shared_access: read\n");
    assert_int_equal(open_coord(f, NULL), JB_OK);
    jb_redis_access acc;
    jb_error err;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, &err), JB_EUNSUPPORTED);
    assert_int_equal(jb_coord_redis_rotate(f->co, "claude", NULL, NULL, NULL), JB_EUNSUPPORTED);
    jb_redis_info info;
    jb_coord_redis_info(f->co, &info);
    assert_false(info.configured);
    assert_string_equal(info.url, "");
    /* Nothing provisioned: no users file. */
    assert_int_equal(access(f->users, F_OK), -1);
}

static void test_bad_configs_refused(void **state)
{
    fixture *f = *state;
    f->port = 1;
    assert_int_equal(open_coord(f, NULL), JB_OK);
    static const char *const bad[] = {
        /* 3 allowances cannot come out of 3 connections less jimbotd's own. */
        "    max_connections: 3\n    namespaces: {a: 'a:', b: 'b:', c: 'c:'}\n",
        "    namespaces: {a: {prefix: 'a:', max_connections: 19}, b: 'b:'}\n",
        "    namespaces: {a: {prefix: 'a:', max_connections: 0}}\n",
        /* Overlapping prefixes would share keys. */
        "    namespaces: {a: 'app:', b: 'app:b:'}\n",
        "    namespaces: {a: 'shared:a:', shared: 'shared:'}\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        load_redis_config(f, bad[i]);
        jb_error err;
        assert_int_equal(jb_coord_apply_config(f->co, f->cfg, &err), JB_ECONFIG);
        print_message("refused: %s\n", err.message);
    }
    /* Nothing changed: no Redis was configured by the refused reloads. */
    jb_redis_info info;
    jb_coord_redis_info(f->co, &info);
    assert_false(info.configured);
}

static void test_damaged_users_file_refused(void **state)
{
    fixture *f = *state;
    FILE *fp = fopen(f->users, "w");
    assert_non_null(fp);
    fputs("claude not-a-password\n", fp);
    fclose(fp);
    jb_error err;
    assert_int_equal(open_coord(f, &err), JB_ECORRUPT);
    assert_non_null(strstr(err.message, f->users));
}

/* ---- A real redis-server ---------------------------------------------------------- */

/* A socket connected to the test's Redis, or -1. */
static int dial(const fixture *f)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)f->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(s);
        return -1;
    }
    return s;
}

/* Sends an inline command and reads the first reply line into @out. */
static int say(int s, const char *cmd, char *out, size_t cap)
{
    char line[512];
    snprintf(line, sizeof(line), "%s\r\n", cmd);
    if (write(s, line, strlen(line)) != (ssize_t)strlen(line))
        return -1;
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(s, out + n, 1);
        if (r <= 0)
            return -1;
        if (out[n++] == '\n')
            break;
    }
    out[n] = '\0';
    return 0;
}

static int redis_answers(fixture *f, const void *arg)
{
    (void)arg;
    int s = dial(f);
    if (s < 0)
        return 0;
    char reply[128];
    int ok = say(s, "PING", reply, sizeof(reply)) == 0;
    close(s);
    return ok;
}

static int have_redis(void)
{
    return system("command -v redis-server >/dev/null 2>&1 && "
                  "command -v redis-cli >/dev/null 2>&1") == 0;
}

static void start_redis(fixture *f)
{
    if (f->port == 0)
        f->port = jbt_free_port();
    f->redis = jbt_redis_start(f->dir, f->port, ADMIN_PASS, NULL);
    assert_true(run_until(f, redis_answers, NULL));
}

/* redis-cli's answer to @cmd as @user (NULL: jimbotd's admin), its first line. */
static void cli(const fixture *f, const char *user, const char *pass, const char *cmd, char *out,
                size_t cap)
{
    char line[1024];
    if (user != NULL)
        snprintf(line, sizeof(line),
                 "redis-cli -p %d --no-auth-warning --user %s --pass %s %s 2>&1", f->port, user,
                 pass, cmd);
    else
        snprintf(line, sizeof(line), "redis-cli -p %d --no-auth-warning -a %s %s 2>&1", f->port,
                 ADMIN_PASS, cmd);
    FILE *p = popen(line, "r");
    assert_non_null(p);
    out[0] = '\0';
    if (fgets(out, (int)cap, p) == NULL)
        out[0] = '\0';
    char rest[256];
    while (fgets(rest, sizeof(rest), p) != NULL)
        ;
    pclose(p);
    out[strcspn(out, "\r\n")] = '\0';
}

static int access_ok(fixture *f, const void *component)
{
    jb_redis_access acc;
    return jb_coord_redis_access(f->co, component, &acc, NULL) == JB_OK;
}

static int reachable(fixture *f, const void *want)
{
    jb_redis_info info;
    jb_coord_redis_info(f->co, &info);
    return info.reachable == *(const int *)want;
}

/* scripts/deps.sh installs both: without them the test fails, it does not pass by skipping. */
#define REQUIRE_REDIS()                                                               \
    do {                                                                              \
        if (!have_redis())                                                            \
            fail_msg("no redis-server or redis-cli: install them (scripts/deps.sh)"); \
    } while (0)

/* Opens the coordinator on a fresh Redis with @more settings; waits for @component's user. */
static void open_on_redis(fixture *f, const char *more, const char *component)
{
    start_redis(f);
    load_redis_config(f, more);
    assert_int_equal(open_coord(f, NULL), JB_OK);
    assert_true(run_until(f, access_ok, component));
}

static void test_users_and_noperm(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    open_on_redis(f, "", "claude");
    assert_true(run_until(f, access_ok, "analytics"));
    jb_redis_access acc;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_OK);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", f->port);
    assert_string_equal(acc.url, url);
    assert_string_equal(acc.username, "jimbot-claude");
    assert_int_equal(strlen(acc.password), 64);
    assert_string_equal(acc.key_prefix, "claude:");
    assert_string_equal(acc.shared_prefix, "shared:");
    assert_string_equal(acc.shared_access, "readwrite");
    assert_int_equal(acc.max_connections, 9); /* (20 - 1) / 2 */
    assert_int_equal(jb_coord_redis_access(f->co, "shared", &acc, NULL), JB_ENOENT);
    assert_int_equal(jb_coord_redis_access(f->co, "nobody", &acc, NULL), JB_ENOENT);
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_OK);

    char out[512];
    cli(f, acc.username, acc.password, "SET claude:x 1", out, sizeof(out));
    assert_string_equal(out, "OK");
    cli(f, acc.username, acc.password, "SET shared:x 1", out, sizeof(out));
    assert_string_equal(out, "OK");
    cli(f, acc.username, acc.password, "SET analytics:x 1", out, sizeof(out));
    assert_non_null(strstr(out, "NOPERM"));
    cli(f, acc.username, acc.password, "GET other", out, sizeof(out));
    assert_non_null(strstr(out, "NOPERM"));
    static const char *const denied[] = {
        "KEYS '*'",    "SCAN 0",   "RANDOMKEY", "FLUSHALL", "CONFIG GET maxmemory",
        "CLIENT LIST", "SELECT 1", "ACL LIST",  "DBSIZE",   "SUBSCRIBE claude:c"};
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
        cli(f, acc.username, acc.password, denied[i], out, sizeof(out));
        print_message("%s -> %s\n", denied[i], out);
        assert_non_null(strstr(out, "NOPERM"));
    }
    cli(f, acc.username, "wrong", "PING", out, sizeof(out));
    assert_non_null(strstr(out, "WRONGPASS"));

    jb_redis_info info;
    int yes = 1;
    assert_true(run_until(f, reachable, &yes));
    jb_coord_redis_info(f->co, &info);
    assert_true(info.configured);
    assert_int_equal(info.max_connections, 20);

    /* The users file is 0600 and holds both passwords. */
    struct stat st;
    assert_int_equal(stat(f->users, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_shared_read_only(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    open_on_redis(f, "    shared_access: read\n", "claude");
    jb_redis_access acc;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_OK);
    assert_string_equal(acc.shared_access, "read");
    char out[512];
    cli(f, NULL, NULL, "SET shared:k v", out, sizeof(out));
    assert_string_equal(out, "OK");
    cli(f, acc.username, acc.password, "GET shared:k", out, sizeof(out));
    assert_string_equal(out, "v");
    cli(f, acc.username, acc.password, "SET shared:k w", out, sizeof(out));
    assert_non_null(strstr(out, "NOPERM"));

    /* A reload to none takes the shared prefix away. */
    load_redis_config(f, "    shared_access: none\n");
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    int yes = 1;
    assert_true(run_until(f, reachable, &yes));
    cli(f, acc.username, acc.password, "GET shared:k", out, sizeof(out));
    assert_non_null(strstr(out, "NOPERM"));
}

static int is_closed(int s)
{
    char c;
    ssize_t r = recv(s, &c, 1, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

typedef struct conns {
    int s[4];
    int n;
    int want_closed;
} conns;

static int closed_count(fixture *f, const void *arg)
{
    (void)f;
    const conns *c = arg;
    int closed = 0;
    for (int i = 0; i < c->n; i++)
        closed += is_closed(c->s[i]);
    return closed >= c->want_closed;
}

static void count_closed(const jb_redis_component_info *c, void *ud)
{
    if (strcmp(c->component, "claude") == 0)
        *(uint64_t *)ud = c->connections_closed;
}

static void test_budget_enforced(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    /* 4 less jimbotd's own: claude 2, analytics 1. */
    open_on_redis(f,
                  "    max_connections: 4\n    namespaces: {claude: {prefix: 'claude:', "
                  "max_connections: 2}, analytics: 'analytics:'}\n",
                  "claude");
    jb_redis_access acc;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_OK);
    assert_int_equal(acc.max_connections, 2);
    conns c = {.n = 4, .want_closed = 2};
    char cmd[256], out[128];
    snprintf(cmd, sizeof(cmd), "AUTH %s %s", acc.username, acc.password);
    for (int i = 0; i < c.n; i++) {
        c.s[i] = dial(f);
        assert_true(c.s[i] >= 0);
        assert_int_equal(say(c.s[i], cmd, out, sizeof(out)), 0);
        assert_string_equal(out, "+OK\r\n");
        /* Each connection is a second newer at most in age; ids order them. */
    }
    assert_true(run_until(f, closed_count, &c));
    /* The oldest two stay, the newest two were closed. */
    assert_false(is_closed(c.s[0]));
    assert_false(is_closed(c.s[1]));
    assert_true(is_closed(c.s[2]));
    assert_true(is_closed(c.s[3]));
    for (int i = 0; i < c.n; i++)
        close(c.s[i]);
    uint64_t closed = 0;
    jb_coord_foreach_redis_component(f->co, count_closed, &closed);
    assert_int_equal(closed, 2);
}

static void on_rotated(jb_status st, const jb_redis_access *a, const jb_error *err, void *ud)
{
    (void)err;
    jb_redis_access *out = ud;
    assert_int_equal(st, JB_OK);
    *out = *a;
}

static int rotated(fixture *f, const void *arg)
{
    (void)f;
    return ((const jb_redis_access *)arg)->password[0] != '\0';
}

static void test_restart_keeps_password_and_rotate(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    open_on_redis(f, "", "claude");
    jb_redis_access before, after;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &before, NULL), JB_OK);
    close_coord(f);
    assert_int_equal(open_coord(f, NULL), JB_OK);
    assert_true(run_until(f, access_ok, "claude"));
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &after, NULL), JB_OK);
    assert_string_equal(before.password, after.password);

    /* An authenticated connection survives the rotation; the old password does not. */
    int s = dial(f);
    char cmd[256], out[512];
    snprintf(cmd, sizeof(cmd), "AUTH %s %s", before.username, before.password);
    assert_int_equal(say(s, cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "+OK\r\n");
    jb_redis_access fresh = {0};
    assert_int_equal(jb_coord_redis_rotate(f->co, "claude", on_rotated, &fresh, NULL), JB_OK);
    assert_string_equal(fresh.password, ""); /* never inside the call */
    assert_true(run_until(f, rotated, &fresh));
    assert_string_not_equal(fresh.password, before.password);
    cli(f, fresh.username, before.password, "PING", out, sizeof(out));
    assert_non_null(strstr(out, "WRONGPASS"));
    cli(f, fresh.username, fresh.password, "PING", out, sizeof(out));
    assert_string_equal(out, "PONG");
    assert_int_equal(say(s, "PING", out, sizeof(out)), 0);
    assert_string_equal(out, "+PONG\r\n");
    close(s);

    /* The rotated password is the one the next start reads. */
    close_coord(f);
    assert_int_equal(open_coord(f, NULL), JB_OK);
    assert_true(run_until(f, access_ok, "claude"));
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &after, NULL), JB_OK);
    assert_string_equal(after.password, fresh.password);
}

static int user_gone(fixture *f, const void *user)
{
    char cmd[128], out[512];
    snprintf(cmd, sizeof(cmd), "ACL GETUSER %s", (const char *)user);
    cli(f, NULL, NULL, cmd, out, sizeof(out));
    return out[0] == '\0';
}

static void test_removed_namespace_deleted(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    open_on_redis(f, "", "analytics");
    char out[512];
    cli(f, NULL, NULL, "ACL GETUSER jimbot-analytics", out, sizeof(out));
    assert_string_equal(out, "flags");
    load_redis_config(f, "    namespaces: {claude: 'claude:', shared: 'shared:'}\n");
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    assert_true(run_until(f, user_gone, "jimbot-analytics"));
    jb_redis_access acc;
    assert_int_equal(jb_coord_redis_access(f->co, "analytics", &acc, NULL), JB_ENOENT);
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_OK);
    assert_int_equal(acc.max_connections, 19);
}

static int file_has(fixture *f, const void *needle)
{
    char buf[4096] = {0};
    FILE *fp = fopen(f->users, "r");
    if (fp == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

static void test_added_namespace_provisioned(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    open_on_redis(f, "", "claude");
    load_redis_config(f, "    namespaces: {claude: 'claude:', advisor: 'advisor:', shared: "
                         "'shared:'}\n");
    assert_int_equal(jb_coord_apply_config(f->co, f->cfg, NULL), JB_OK);
    /* Not in place before the loop ran: no credentials that do not work yet. */
    jb_redis_access acc;
    jb_error err;
    assert_int_equal(jb_coord_redis_access(f->co, "advisor", &acc, &err), JB_EUNAVAILABLE);
    assert_true(run_until(f, access_ok, "advisor"));
    assert_int_equal(jb_coord_redis_access(f->co, "advisor", &acc, NULL), JB_OK);
    char line[128], out[512];
    snprintf(line, sizeof(line), "advisor %s\n", acc.password);
    assert_true(file_has(f, line));
    cli(f, acc.username, acc.password, "SET advisor:k 1", out, sizeof(out));
    assert_string_equal(out, "OK");
    cli(f, acc.username, acc.password, "GET claude:k", out, sizeof(out));
    assert_non_null(strstr(out, "NOPERM"));
}

static int error_says(fixture *f, const void *needle)
{
    jb_redis_info info;
    jb_coord_redis_info(f->co, &info);
    return strstr(info.error, needle) != NULL;
}

static void test_users_file_unwritable(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    /* A folder that does not exist: every write fails (also as root). */
    snprintf(f->users, sizeof(f->users), "%s/missing/redis.users", f->dir);
    start_redis(f);
    load_redis_config(f, "");
    assert_int_equal(open_coord(f, NULL), JB_OK);
    assert_true(run_until(f, error_says, "users file"));
    /* Passwords that could not be kept are never handed out nor set in Redis. */
    jb_redis_access acc;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_EUNAVAILABLE);
    char out[512];
    cli(f, NULL, NULL, "ACL GETUSER jimbot-claude", out, sizeof(out));
    assert_string_equal(out, "");
}

static void test_redis_restart(void **state)
{
    fixture *f = *state;
    REQUIRE_REDIS();
    open_on_redis(f, "", "claude");
    jb_redis_access acc;
    assert_int_equal(jb_coord_redis_access(f->co, "claude", &acc, NULL), JB_OK);
    int yes = 1, no = 0;
    assert_true(run_until(f, reachable, &yes));
    stop_redis(f);
    assert_true(run_until(f, reachable, &no));
    jb_redis_info info;
    jb_coord_redis_info(f->co, &info);
    assert_string_not_equal(info.error, "");
    print_message("down: %s\n", info.error);
    assert_int_equal(jb_coord_redis_rotate(f->co, "claude", NULL, NULL, NULL), JB_EUNAVAILABLE);

    /* Back empty (no persistence): the users are set again, same passwords. */
    start_redis(f);
    assert_true(run_until(f, reachable, &yes));
    char out[512];
    cli(f, acc.username, acc.password, "SET claude:again 1", out, sizeof(out));
    assert_string_equal(out, "OK");
}

int main(void)
{
    jb_log_set_level(JB_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowances_even_split),
        cmocka_unit_test(test_allowances_fixed_and_rest),
        cmocka_unit_test(test_client_list_parsed),
        cmocka_unit_test(test_users_file_round_trip),
        cmocka_unit_test(test_users_file_damage_refused),
        cmocka_unit_test(test_acl_rule),
        cmocka_unit_test_setup_teardown(test_no_url_no_redis, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_configs_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_users_file_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users_and_noperm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_enforced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_keeps_password_and_rotate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_removed_namespace_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_added_namespace_provisioned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users_file_unwritable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
