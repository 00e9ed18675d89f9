/*
 * The shared Redis's namespaces (include/jimbot/coord.h "Shared Redis";
 * docs/redis.md): one ACL user per component, its password in the users
 * file, and the connection budget. Redis itself is reached only through
 * the hiredis adapter (redis.h); this file never includes hiredis.
 *
 *   apply_config --prepare--> jb__redis_conf --apply--> ns->ents (by name)
 *        |                                                |
 *        |   a password added, rotated or dropped         | rule changed
 *        v                                                v
 *   users file (threadpool) --durable--> ACL SETUSER (once durable) -> in_place
 *   timer (check_interval_ms): CLIENT LIST -> CLIENT KILL ID the newest
 *        beyond a component's allowance; retries what failed before
 *
 * Invariants:
 *   - an entry's password reaches Redis only once the users file that holds
 *     it is durable (pass_gen <= durable_gen), so that a restart never
 *     forgets a password a component was given;
 *   - an entry is "dirty" while Redis may not have its current rule (a new
 *     rule, a new password, a reconnect: Redis may have restarted empty);
 *     "in_place" once Redis accepted a rule with its current password;
 *   - at most one users-file write and one CLIENT LIST are in flight.
 * Replies identify their entry by name and rule generation (copied into a
 * small request), never by pointer: a reload may free the entry first.
 *
 * Allowances are computed by jb__redis_allowances() at prepare time, so a
 * configuration that cannot give every component a connection is refused
 * before anything changes.
 *
 * Loop thread only; the users file is written on the threadpool. Must not
 * depend on hiredis (redis.c), gRPC or the bus.
 */
#include "coord/coord_internal.h"
#include "coord/redis.h"
#include "core/file.h"

#include "jimbot/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define USERS_HEADER "# jimbot redis users: COMPONENT PASSWORD, one a line; mode 0600\n"
#define PASS_HEX     64 /* 32 random bytes */

typedef struct ns_ent {
    char *component;
    char username[JB_COORD_MAX_REDIS_USER + 1];
    char prefix[JB_COORD_MAX_REDIS_PREFIX + 1];
    char password[PASS_HEX + 1];
    uint32_t allowance;
    uint64_t pass_gen; /* the users-file generation that holds the password */
    uint64_t rule_gen; /* bumped at each change of rule or password */
    int dirty, setting, in_place;
    uint32_t connections;
    uint64_t closed;
} ns_ent;

struct jb__redis_conf {
    ns_ent *ents; /* sorted by component */
    size_t n;
    char shared_prefix[JB_COORD_MAX_REDIS_PREFIX + 1];
    int shared_access;
    uint32_t max_connections, check_interval_ms, timeout_ms;
    char *url, *password;
    char **deletions; /* users of namespaces no longer configured */
    size_t n_deletions;
    int file_changed; /* a password was added or dropped */
};

typedef struct rotate_wait {
    char *component;
    uint64_t rule_gen, file_gen;
    jb_redis_access_cb cb;
    void *ud;
    struct rotate_wait *next;
} rotate_wait;

struct jb__redis_ns {
    jb_coord *co;
    char *users_path;
    jb__redis_conf c;    /* the live settings; ents are the live entries */
    jb__redis_conf seed; /* the users file as loaded, until the first apply */
    char *url_public;    /* without credentials */
    jb__redis *r;
    int up, listing;
    char error[640]; /* the last failure; a jb_error message fits whole */
    int64_t checked_ms;
    uint32_t counted;
    uv_timer_t timer; /* made at the first apply */
    int timer_made;
    uint64_t file_gen, durable_gen, writing_gen;
    int write_failed; /* cleared by the tick, which retries */
    int file_failing; /* since the last write that worked */
    uv_work_t work;
    char *work_buf;
    size_t work_len;
    jb_error work_err;
    jb_status work_st;
    rotate_wait *waits;
    int closing, pending;
    void (*close_cb)(void *ud);
    void *close_ud;
};

enum { SHARED_RW, SHARED_READ, SHARED_NONE };
static const char *const shared_names[] = {"readwrite", "read", "none"};

static void kick(jb__redis_ns *ns);

/* ---- Pure logic (unit-tested) ------------------------------------------------ */

jb_status jb__redis_allowances(uint32_t max_connections, const int64_t *fixed, size_t n,
                               uint32_t *out, jb_error *err)
{
    uint64_t budget = max_connections > 0 ? max_connections - 1 : 0, taken = 0;
    size_t n_even = 0;
    for (size_t i = 0; i < n; i++) {
        if (fixed[i] < 0) {
            n_even++;
            continue;
        }
        if (fixed[i] == 0)
            return jb_error_set(err, JB_ECONFIG, "a namespace's max_connections is at least 1");
        taken += (uint64_t)fixed[i];
    }
    if (taken + n_even > budget)
        return jb_error_set(err, JB_ECONFIG,
                            "the Redis allowances need %llu connections (every namespace at "
                            "least one) but max_connections %u leaves %llu besides jimbotd's own",
                            (unsigned long long)(taken + n_even), max_connections,
                            (unsigned long long)budget);
    uint32_t even = n_even > 0 ? (uint32_t)((budget - taken) / n_even) : 0;
    for (size_t i = 0; i < n; i++)
        out[i] = fixed[i] < 0 ? even : (uint32_t)fixed[i];
    return JB_OK;
}

/* Copies the value of " KEY=" in @line (up to a space) into @out; 0 when absent. */
static int field(const char *line, size_t len, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl < len; i++) {
        if ((i > 0 && line[i - 1] != ' ') || memcmp(line + i, key, kl) != 0 || line[i + kl] != '=')
            continue;
        size_t s = i + kl + 1, e = s;
        while (e < len && line[e] != ' ')
            e++;
        if (e - s >= cap)
            return 0;
        memcpy(out, line + s, e - s);
        out[e - s] = '\0';
        return 1;
    }
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0)
        return 0;
    *out = v;
    return 1;
}

size_t jb__redis_parse_client_list(const char *s, size_t len,
                                   void (*fn)(const jb__redis_client *c, void *ud), void *ud)
{
    size_t count = 0;
    while (len > 0) {
        const char *nl = memchr(s, '\n', len);
        size_t ll = nl != NULL ? (size_t)(nl - s) : len;
        size_t line_len = ll > 0 && s[ll - 1] == '\r' ? ll - 1 : ll;
        jb__redis_client c;
        char id[24], age[24];
        memset(&c, 0, sizeof(c));
        if (field(s, line_len, "id", id, sizeof(id)) && parse_u64(id, &c.id) &&
            field(s, line_len, "age", age, sizeof(age)) && parse_u64(age, &c.age_s)) {
            if (!field(s, line_len, "user", c.user, sizeof(c.user)))
                c.user[0] = '\0';
            if (!field(s, line_len, "addr", c.addr, sizeof(c.addr)))
                c.addr[0] = '\0';
            count++;
            fn(&c, ud);
        }
        if (nl == NULL)
            break;
        len -= ll + 1;
        s = nl + 1;
    }
    return count;
}

jb_status jb__redis_users_encode(const char *const *components, const char *const *passwords,
                                 size_t n, char **out, size_t *out_len)
{
    size_t cap = sizeof(USERS_HEADER);
    for (size_t i = 0; i < n; i++)
        cap += strlen(components[i]) + strlen(passwords[i]) + 2;
    char *buf = malloc(cap);
    if (buf == NULL)
        return JB_ENOMEM;
    size_t len = (size_t)snprintf(buf, cap, "%s", USERS_HEADER);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s %s\n", components[i], passwords[i]);
    *out = buf;
    *out_len = len;
    return JB_OK;
}

static int is_password(const char *p, size_t len)
{
    if (len != PASS_HEX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (strchr("0123456789abcdef", p[i]) == NULL || p[i] == '\0')
            return 0;
    }
    return 1;
}

jb_status jb__redis_users_decode(const char *s, size_t len,
                                 void (*fn)(const char *component, const char *password, void *ud),
                                 void *ud, jb_error *err)
{
    for (unsigned line = 1; len > 0; line++) {
        const char *nl = memchr(s, '\n', len);
        if (nl == NULL)
            return jb_error_set(err, JB_ECORRUPT, "line %u is not ended", line);
        size_t ll = (size_t)(nl - s);
        if (ll > 0 && s[0] != '#') {
            const char *sp = memchr(s, ' ', ll);
            size_t name_len = sp != NULL ? (size_t)(sp - s) : 0;
            if (name_len == 0 || name_len > JB_COORD_MAX_NAME ||
                !is_password(sp + 1, ll - name_len - 1) || memchr(s, '\0', ll) != NULL)
                return jb_error_set(err, JB_ECORRUPT, "line %u is not COMPONENT PASSWORD", line);
            char name[JB_COORD_MAX_NAME + 1], pass[PASS_HEX + 1];
            memcpy(name, s, name_len);
            name[name_len] = '\0';
            memcpy(pass, sp + 1, PASS_HEX);
            pass[PASS_HEX] = '\0';
            fn(name, pass, ud);
        }
        len -= ll + 1;
        s = nl + 1;
    }
    return JB_OK;
}

int jb__redis_acl_rule(const char *username, const char *password, const char *prefix,
                       const char *shared_prefix, int shared_access, char bufs[4][160],
                       const char **argv)
{
    static const char *const denied[] = {
        "-@dangerous", "-@admin", "-scan",   "-randomkey", "-select",       "-move",
        "-swapdb",     "-dbsize", "-pubsub", "-function",  "-script|flush", "-script|kill"};
    int n = 0;
    argv[n++] = "ACL";
    argv[n++] = "SETUSER";
    argv[n++] = username;
    argv[n++] = "reset";
    argv[n++] = "on";
    snprintf(bufs[0], sizeof(bufs[0]), ">%s", password);
    argv[n++] = bufs[0];
    snprintf(bufs[1], sizeof(bufs[1]), "~%s*", prefix);
    argv[n++] = bufs[1];
    if (shared_prefix[0] != '\0' && shared_access != SHARED_NONE) {
        snprintf(bufs[2], sizeof(bufs[2]), "%s~%s*", shared_access == SHARED_READ ? "%R" : "",
                 shared_prefix);
        argv[n++] = bufs[2];
    }
    argv[n++] = "resetchannels";
    argv[n++] = "+@all";
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++)
        argv[n++] = denied[i];
    return n;
}

/* ---- Settings ------------------------------------------------------------------ */

static void conf_release(jb__redis_conf *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->ents[i].component);
    free(c->ents);
    for (size_t i = 0; i < c->n_deletions; i++)
        free(c->deletions[i]);
    free(c->deletions);
    free(c->url);
    free(c->password);
    memset(c, 0, sizeof(*c));
}

void jb__redis_conf_free(jb__redis_conf *c)
{
    if (c == NULL)
        return;
    conf_release(c);
    free(c);
}

static ns_ent *find_in(const jb__redis_conf *c, const char *component)
{
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->ents[i].component, component) == 0)
            return &c->ents[i];
    }
    return NULL;
}

static void new_password(char out[PASS_HEX + 1])
{
    unsigned char raw[PASS_HEX / 2];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        JB_BUG("getrandom failed");
    for (size_t i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* Two prefixes overlap when one starts the other: their users would share keys. */
static jb_status check_overlap(const char *const *prefixes, const char *const *names, size_t n,
                               jb_error *err)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            if (i != j && strncmp(prefixes[j], prefixes[i], strlen(prefixes[i])) == 0)
                return jb_error_set(err, JB_ECONFIG,
                                    "redis namespaces %s ('%s') and %s ('%s') overlap", names[i],
                                    prefixes[i], names[j], prefixes[j]);
        }
    }
    return JB_OK;
}

static jb_status read_namespaces(const jb_config *cfg, jb__redis_conf *c, int64_t **fixed,
                                 jb_error *err)
{
    const jb_config_map *m =
        jb_config_get_map(cfg, "resource_coordinator.redis.namespaces", NULL, NULL);
    size_t n = m != NULL ? jb_config_map_count(m) : 0;
    c->ents = n > 0 ? calloc(n, sizeof(*c->ents)) : NULL;
    *fixed = n > 0 ? calloc(n, sizeof(**fixed)) : NULL;
    const char **prefixes = n > 0 ? calloc(n, sizeof(*prefixes)) : NULL;
    const char **names = n > 0 ? calloc(n, sizeof(*names)) : NULL;
    if (n > 0 && (c->ents == NULL || *fixed == NULL || prefixes == NULL || names == NULL)) {
        free(prefixes);
        free(names);
        return jb_error_set(err, JB_ENOMEM, "out of memory reading the redis namespaces");
    }
    jb_status st = JB_OK;
    for (size_t i = 0; i < n && st == JB_OK; i++) {
        const char *name = jb_config_map_name(m, i);
        const char *prefix = jb_config_map_get_string(m, i, "prefix");
        names[i] = name;
        prefixes[i] = prefix != NULL ? prefix : "";
        if (strcmp(name, "shared") == 0) {
            snprintf(c->shared_prefix, sizeof(c->shared_prefix), "%s", prefixes[i]);
            continue;
        }
        if (strlen(name) > JB_COORD_MAX_NAME || strlen(prefixes[i]) > JB_COORD_MAX_REDIS_PREFIX ||
            prefixes[i][0] == '\0') {
            st = jb_error_set(err, JB_ECONFIG, "redis namespace '%.32s': bad name or prefix", name);
            break;
        }
        ns_ent *e = &c->ents[c->n];
        (*fixed)[c->n] = jb_config_map_has(m, i, "max_connections")
                             ? jb_config_map_get_int(m, i, "max_connections")
                             : -1;
        e->component = strdup(name);
        if (e->component == NULL) {
            st = jb_error_set(err, JB_ENOMEM, "out of memory reading the redis namespaces");
            break;
        }
        c->n++;
        snprintf(e->username, sizeof(e->username), "jimbot-%s", name);
        snprintf(e->prefix, sizeof(e->prefix), "%s", prefixes[i]);
    }
    if (st == JB_OK)
        st = check_overlap(prefixes, names, n, err);
    free(prefixes);
    free(names);
    return st;
}

/* Carries each entry's password and counters over from the live entries or the users file. */
static void carry_over(jb__redis_ns *ns, jb__redis_conf *c)
{
    for (size_t i = 0; i < c->n; i++) {
        ns_ent *e = &c->ents[i];
        const ns_ent *old = find_in(&ns->c, e->component);
        const ns_ent *seed = find_in(&ns->seed, e->component);
        e->dirty = 1;
        if (old != NULL) {
            memcpy(e->password, old->password, sizeof(e->password));
            e->pass_gen = old->pass_gen;
            e->rule_gen = old->rule_gen;
            e->in_place = old->in_place;
            e->setting = old->setting;
            e->closed = old->closed;
            e->connections = old->connections;
            e->dirty = old->dirty || strcmp(old->prefix, e->prefix) != 0 ||
                       strcmp(ns->c.shared_prefix, c->shared_prefix) != 0 ||
                       ns->c.shared_access != c->shared_access;
        } else if (seed != NULL) {
            memcpy(e->password, seed->password, sizeof(e->password));
        } else {
            new_password(e->password);
            e->pass_gen = UINT64_MAX; /* set by apply: the next file generation */
            c->file_changed = 1;
        }
        if (e->dirty)
            e->rule_gen++;
    }
}

static jb_status list_deletions(const jb__redis_conf *from, jb__redis_conf *c)
{
    for (size_t i = 0; i < from->n; i++) {
        if (find_in(c, from->ents[i].component) != NULL)
            continue;
        char **d = realloc(c->deletions, (c->n_deletions + 1) * sizeof(*d));
        if (d == NULL)
            return JB_ENOMEM;
        c->deletions = d;
        if ((d[c->n_deletions] = strdup(from->ents[i].username)) == NULL)
            return JB_ENOMEM;
        c->n_deletions++;
        c->file_changed = 1;
    }
    return JB_OK;
}

static jb_status read_scalars(const jb_config *cfg, jb__redis_conf *c, jb_error *err)
{
    const char *access =
        jb_config_get_string(cfg, "resource_coordinator.redis.shared_access", NULL, NULL);
    c->shared_access = SHARED_RW;
    for (int i = 0; i < 3; i++) {
        if (access != NULL && strcmp(access, shared_names[i]) == 0)
            c->shared_access = i;
    }
    c->max_connections =
        (uint32_t)jb_config_get_int(cfg, "resource_coordinator.redis.max_connections", NULL, NULL);
    c->check_interval_ms = (uint32_t)jb_config_get_int(
        cfg, "resource_coordinator.redis.check_interval_ms", NULL, NULL);
    c->timeout_ms = 1000u * (uint32_t)jb_config_get_int(
                                cfg, "resource_coordinator.redis.connection_timeout", NULL, NULL);
    const char *url = jb_config_get_string(cfg, "resource_coordinator.redis.url", NULL, NULL);
    const char *pass = jb_config_get_string(cfg, "resource_coordinator.redis.password", NULL, NULL);
    c->url = strdup(url != NULL ? url : "");
    c->password = strdup(pass != NULL ? pass : "");
    if (c->url == NULL || c->password == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory reading the redis settings");
    if (strlen(c->url) > JB_COORD_MAX_REDIS_URL)
        return jb_error_set(err, JB_ECONFIG, "redis url longer than %d bytes",
                            JB_COORD_MAX_REDIS_URL);
    return JB_OK;
}

jb_status jb__redis_ns_prepare(jb__redis_ns *ns, const jb_config *cfg, jb__redis_conf **out,
                               jb_error *err)
{
    jb__redis_conf *c = calloc(1, sizeof(*c));
    int64_t *fixed = NULL;
    uint32_t *allow = NULL;
    if (c == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory reading the redis settings");
    jb_status st = read_scalars(cfg, c, err);
    if (st == JB_OK)
        st = read_namespaces(cfg, c, &fixed, err);
    if (st == JB_OK && c->n > 0 && (allow = calloc(c->n, sizeof(*allow))) == NULL)
        st = jb_error_set(err, JB_ENOMEM, "out of memory reading the redis settings");
    if (st == JB_OK)
        st = jb__redis_allowances(c->max_connections, fixed, c->n, allow, err);
    for (size_t i = 0; st == JB_OK && i < c->n; i++)
        c->ents[i].allowance = allow[i];
    if (st == JB_OK) {
        carry_over(ns, c);
        if (list_deletions(&ns->c, c) != JB_OK || list_deletions(&ns->seed, c) != JB_OK)
            st = jb_error_set(err, JB_ENOMEM, "out of memory reading the redis settings");
    }
    free(fixed);
    free(allow);
    if (st != JB_OK) {
        jb__redis_conf_free(c);
        return st;
    }
    *out = c;
    return JB_OK;
}

/* ---- The users file ------------------------------------------------------------ */

static void write_work(uv_work_t *w)
{
    jb__redis_ns *ns = w->data;
    ns->work_st = JB_OK;
    if (ns->users_path != NULL)
        ns->work_st =
            jb__file_write_atomic(ns->users_path, ns->work_buf, ns->work_len, &ns->work_err);
}

static void finish_close(jb__redis_ns *ns);
static void answer_waits(jb__redis_ns *ns, const char *component, uint64_t rule_gen, jb_status st,
                         const char *why);

static void after_write(uv_work_t *w, int status)
{
    jb__redis_ns *ns = w->data;
    free(ns->work_buf);
    ns->work_buf = NULL;
    ns->pending--;
    if (status == 0 && ns->work_st == JB_OK) {
        ns->durable_gen = ns->writing_gen;
        ns->write_failed = 0;
        if (ns->file_failing)
            jb_log(JB_LOG_INFO, "coord", "redis users file written again", "path=%s",
                   ns->users_path);
        ns->file_failing = 0;
    } else {
        ns->write_failed = 1;
        snprintf(ns->error, sizeof(ns->error), "users file: %s",
                 status != 0 ? uv_strerror(status) : ns->work_err.message);
        if (!ns->file_failing) /* once, not at every retry */
            jb_log(JB_LOG_ERROR, "coord", "redis users file not written", "path=%s reason=\"%s\"",
                   ns->users_path, ns->error);
        ns->file_failing = 1;
        answer_waits(ns, NULL, UINT64_MAX, JB_EIO, ns->error);
    }
    ns->writing_gen = 0;
    if (ns->closing)
        finish_close(ns);
    else
        kick(ns);
}

static void start_write(jb__redis_ns *ns)
{
    if (ns->writing_gen != 0 || ns->durable_gen >= ns->file_gen || ns->closing)
        return;
    const char **names = calloc(ns->c.n + 1, sizeof(*names));
    const char **passes = calloc(ns->c.n + 1, sizeof(*passes));
    jb_status st = JB_ENOMEM;
    if (names != NULL && passes != NULL) {
        for (size_t i = 0; i < ns->c.n; i++) {
            names[i] = ns->c.ents[i].component;
            passes[i] = ns->c.ents[i].password;
        }
        st = jb__redis_users_encode(names, passes, ns->c.n, &ns->work_buf, &ns->work_len);
    }
    free(names);
    free(passes);
    if (st != JB_OK) {
        ns->write_failed = 1;
        return;
    }
    ns->writing_gen = ns->file_gen;
    ns->work.data = ns;
    if (uv_queue_work(ns->co->loop, &ns->work, write_work, after_write) != 0)
        JB_BUG("uv_queue_work failed");
    ns->pending++;
}

static void seed_one(const char *component, const char *password, void *ud)
{
    jb__redis_conf *seed = ud;
    ns_ent *e = realloc(seed->ents, (seed->n + 1) * sizeof(*e));
    if (e == NULL)
        return;
    seed->ents = e;
    e = &seed->ents[seed->n];
    memset(e, 0, sizeof(*e));
    if ((e->component = strdup(component)) == NULL)
        return;
    snprintf(e->username, sizeof(e->username), "jimbot-%s", component);
    memcpy(e->password, password, sizeof(e->password));
    seed->n++;
}

/* Loads the users file at start (before the loop runs, as the state file is). */
static jb_status load_users(jb__redis_ns *ns, jb_error *err)
{
    FILE *f = ns->users_path != NULL ? fopen(ns->users_path, "rb") : NULL;
    if (f == NULL)
        return ns->users_path == NULL || errno == ENOENT
                   ? JB_OK
                   : jb_error_set(err, JB_EIO, "%s: %s", ns->users_path, strerror(errno));
    char buf[64 * 1024];
    size_t len = fread(buf, 1, sizeof(buf), f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    if (bad)
        return jb_error_set(err, JB_ECORRUPT, "%s: unreadable or over 64 KiB", ns->users_path);
    jb_error e2;
    if (jb__redis_users_decode(buf, len, seed_one, &ns->seed, &e2) != JB_OK)
        return jb_error_set(err, JB_ECORRUPT, "%s: %s", ns->users_path, e2.message);
    return JB_OK;
}

/* ---- Talking to Redis ---------------------------------------------------------- */

typedef struct req {
    jb__redis_ns *ns;
    char *component;
    uint64_t rule_gen;
} req;

static req *req_new(jb__redis_ns *ns, const char *component, uint64_t rule_gen)
{
    req *q = calloc(1, sizeof(*q));
    if (q == NULL || (component != NULL && (q->component = strdup(component)) == NULL)) {
        free(q);
        return NULL;
    }
    q->ns = ns;
    q->rule_gen = rule_gen;
    return q;
}

static void req_free(req *q)
{
    free(q->component);
    free(q);
}

static ns_ent *find(jb__redis_ns *ns, const char *component)
{
    return component != NULL ? find_in(&ns->c, component) : NULL;
}

static void fill_access(const jb__redis_ns *ns, const ns_ent *e, jb_redis_access *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->url, sizeof(out->url), "%s", ns->url_public);
    snprintf(out->username, sizeof(out->username), "%s", e->username);
    snprintf(out->password, sizeof(out->password), "%s", e->password);
    snprintf(out->key_prefix, sizeof(out->key_prefix), "%s", e->prefix);
    snprintf(out->shared_prefix, sizeof(out->shared_prefix), "%s", ns->c.shared_prefix);
    out->shared_access =
        ns->c.shared_prefix[0] != '\0' ? shared_names[ns->c.shared_access] : "none";
    out->max_connections = e->allowance;
}

/*
 * Answers the rotations of @component (NULL: all) whose rule generation is
 * at most @rule_gen. The waits leave the list before any callback runs.
 */
static void answer_waits(jb__redis_ns *ns, const char *component, uint64_t rule_gen, jb_status st,
                         const char *why)
{
    rotate_wait **pp = &ns->waits, *done = NULL;
    while (*pp != NULL) {
        rotate_wait *w = *pp;
        if ((component == NULL || strcmp(w->component, component) == 0) &&
            w->rule_gen <= rule_gen) {
            *pp = w->next;
            w->next = done;
            done = w;
        } else {
            pp = &w->next;
        }
    }
    while (done != NULL) {
        rotate_wait *w = done;
        done = w->next;
        const ns_ent *e = find(ns, w->component);
        jb_redis_access acc;
        jb_error err = {0};
        jb_status s = st;
        if (s == JB_OK && e == NULL)
            s = jb_error_set(&err, JB_ENOENT, "redis namespace %s was removed", w->component);
        else if (s != JB_OK)
            jb_error_set(&err, s, "%s", why);
        if (s == JB_OK)
            fill_access(ns, e, &acc);
        w->cb(s, s == JB_OK ? &acc : NULL, s == JB_OK ? NULL : &err, w->ud);
        free(w->component);
        free(w);
    }
}

static void on_setuser(jb__redis *r, const jb__redis_reply *reply, void *ud)
{
    (void)r;
    req *q = ud;
    jb__redis_ns *ns = q->ns;
    ns_ent *e = ns->closing ? NULL : find(ns, q->component);
    if (e != NULL && e->rule_gen == q->rule_gen) {
        e->setting = 0;
        if (reply->error == NULL) {
            e->dirty = 0;
            e->in_place = 1;
        } else {
            snprintf(ns->error, sizeof(ns->error), "ACL SETUSER %s: %s", e->username, reply->error);
            jb_log(JB_LOG_WARN, "coord", "redis user not set", "user=%s reason=\"%s\"", e->username,
                   reply->error);
        }
    } else if (e != NULL) {
        e->setting = 0;
    }
    if (!ns->closing)
        answer_waits(ns, q->component, q->rule_gen, reply->error == NULL ? JB_OK : JB_EUNAVAILABLE,
                     reply->error != NULL ? reply->error : "");
    req_free(q);
}

static void set_user(jb__redis_ns *ns, ns_ent *e)
{
    char bufs[4][160];
    const char *argv[32];
    int argc = jb__redis_acl_rule(e->username, e->password, e->prefix, ns->c.shared_prefix,
                                  ns->c.shared_access, bufs, argv);
    req *q = req_new(ns, e->component, e->rule_gen);
    if (q == NULL)
        return;
    if (jb__redis_command(ns->r, on_setuser, q, argc, argv, NULL) != 0) {
        req_free(q);
        return;
    }
    e->setting = 1;
}

static void on_deluser(jb__redis *r, const jb__redis_reply *reply, void *ud)
{
    (void)r;
    req *q = ud;
    if (reply->error != NULL && !q->ns->closing)
        jb_log(JB_LOG_WARN, "coord", "redis user not deleted", "user=%s reason=\"%s\"",
               q->component, reply->error);
    req_free(q);
}

static void delete_users(jb__redis_ns *ns)
{
    while (ns->c.n_deletions > 0) {
        const char *user = ns->c.deletions[ns->c.n_deletions - 1];
        const char *argv[] = {"ACL", "DELUSER", user};
        req *q = req_new(ns, user, 0);
        if (q == NULL || jb__redis_command(ns->r, on_deluser, q, 3, argv, NULL) != 0) {
            if (q != NULL)
                req_free(q);
            return;
        }
        jb_log(JB_LOG_INFO, "coord", "redis user deleted", "user=%s", user);
        free(ns->c.deletions[--ns->c.n_deletions]);
    }
}

/* ---- The connection budget ------------------------------------------------------ */

typedef struct over {
    uint64_t id, age_s;
    char addr[64];
} over;

typedef struct tally {
    jb__redis_ns *ns;
    over **per; /* per entry: its clients */
    size_t *n_per;
    int oom;
} tally;

static void count_client(const jb__redis_client *c, void *ud)
{
    tally *l = ud;
    for (size_t i = 0; i < l->ns->c.n; i++) {
        if (strcmp(c->user, l->ns->c.ents[i].username) != 0)
            continue;
        over *v = realloc(l->per[i], (l->n_per[i] + 1) * sizeof(*v));
        if (v == NULL) {
            l->oom = 1;
            return;
        }
        l->per[i] = v;
        v[l->n_per[i]].id = c->id;
        v[l->n_per[i]].age_s = c->age_s;
        snprintf(v[l->n_per[i]].addr, sizeof(v[0].addr), "%s", c->addr);
        l->n_per[i]++;
        return;
    }
}

/* Newest first: the youngest, then the highest id (ids only grow). */
static int newest_first(const void *a, const void *b)
{
    const over *x = a, *y = b;
    if (x->age_s != y->age_s)
        return x->age_s < y->age_s ? -1 : 1;
    return x->id > y->id ? -1 : x->id < y->id ? 1 : 0;
}

static void on_kill(jb__redis *r, const jb__redis_reply *reply, void *ud)
{
    (void)r;
    req *q = ud;
    ns_ent *e = q->ns->closing ? NULL : find(q->ns, q->component);
    if (e != NULL && reply->error == NULL && reply->integer > 0)
        e->closed += (uint64_t)reply->integer;
    req_free(q);
}

static void kill_over(jb__redis_ns *ns, ns_ent *e, over *v, size_t n)
{
    qsort(v, n, sizeof(*v), newest_first);
    for (size_t k = 0; k + e->allowance < n; k++) {
        char id[24];
        snprintf(id, sizeof(id), "%llu", (unsigned long long)v[k].id);
        const char *argv[] = {"CLIENT", "KILL", "ID", id};
        req *q = req_new(ns, e->component, 0);
        if (q == NULL || jb__redis_command(ns->r, on_kill, q, 4, argv, NULL) != 0) {
            if (q != NULL)
                req_free(q);
            return;
        }
        jb_log(JB_LOG_WARN, "coord", "redis connection over allowance closed",
               "component=%s id=%s addr=%s connections=%zu allowance=%u", e->component, id,
               v[k].addr, n, e->allowance);
    }
}

static void on_client_list(jb__redis *r, const jb__redis_reply *reply, void *ud)
{
    (void)r;
    req *q = ud;
    jb__redis_ns *ns = q->ns;
    req_free(q);
    ns->listing = 0;
    if (ns->closing)
        return;
    if (reply->error != NULL || reply->str == NULL) {
        snprintf(ns->error, sizeof(ns->error), "CLIENT LIST: %s",
                 reply->error != NULL ? reply->error : "nil reply");
        return;
    }
    tally l = {ns, calloc(ns->c.n + 1, sizeof(over *)), calloc(ns->c.n + 1, sizeof(size_t)), 0};
    if (l.per == NULL || l.n_per == NULL) {
        free(l.per);
        free(l.n_per);
        return;
    }
    ns->counted = (uint32_t)jb__redis_parse_client_list(reply->str, reply->len, count_client, &l);
    ns->checked_ms = jb__coord_wall_ms();
    for (size_t i = 0; i < ns->c.n; i++) {
        ns->c.ents[i].connections = (uint32_t)l.n_per[i];
        if (!l.oom && l.n_per[i] > ns->c.ents[i].allowance)
            kill_over(ns, &ns->c.ents[i], l.per[i], l.n_per[i]);
        free(l.per[i]);
    }
    free(l.per);
    free(l.n_per);
}

static void list_clients(jb__redis_ns *ns)
{
    const char *argv[] = {"CLIENT", "LIST", "TYPE", "normal"};
    req *q = ns->listing ? NULL : req_new(ns, NULL, 0);
    if (q == NULL)
        return;
    if (jb__redis_command(ns->r, on_client_list, q, 4, argv, NULL) != 0) {
        req_free(q);
        return;
    }
    ns->listing = 1;
}

/* ---- The loop --------------------------------------------------------------------- */

/* Does what can be done now: the file write, the users Redis lacks, removed users. */
static void kick(jb__redis_ns *ns)
{
    if (ns->closing || ns->c.url[0] == '\0')
        return; /* without Redis nothing is provisioned, not even the file */
    if (!ns->write_failed)
        start_write(ns);
    if (ns->r == NULL || !ns->up)
        return;
    delete_users(ns);
    for (size_t i = 0; i < ns->c.n; i++) {
        ns_ent *e = &ns->c.ents[i];
        if (e->dirty && !e->setting && e->pass_gen <= ns->durable_gen)
            set_user(ns, e);
    }
}

static void on_tick(uv_timer_t *t)
{
    jb__redis_ns *ns = t->data;
    ns->write_failed = 0; /* a failed write is retried once a tick */
    kick(ns);
    if (ns->r != NULL && ns->up)
        list_clients(ns);
}

static void on_state(jb__redis *r, int up, const char *error, void *ud)
{
    (void)r;
    jb__redis_ns *ns = ud;
    ns->up = up;
    if (!up) {
        snprintf(ns->error, sizeof(ns->error), "%s", error != NULL ? error : "down");
        jb_log(JB_LOG_WARN, "coord", "redis down", "url=%s reason=\"%s\"", ns->url_public,
               ns->error);
        answer_waits(ns, NULL, UINT64_MAX, JB_EUNAVAILABLE, ns->error);
        return;
    }
    ns->error[0] = '\0';
    jb_log(JB_LOG_INFO, "coord", "redis up", "url=%s", ns->url_public);
    /* Redis may have restarted without its users: set them all again. */
    for (size_t i = 0; i < ns->c.n; i++)
        ns->c.ents[i].dirty = 1;
    kick(ns);
    list_clients(ns);
}

/* redis://user:pass@host:port -> redis://host:port. */
static char *public_url(const char *url)
{
    const char *scheme = strstr(url, "://");
    const char *host = scheme != NULL ? scheme + 3 : url;
    const char *slash = strchr(host, '/');
    const char *at = strchr(host, '@');
    if (at == NULL || (slash != NULL && at > slash))
        return strdup(url);
    char *out = malloc(strlen(url) + 1);
    if (out == NULL)
        return NULL;
    size_t head = (size_t)(host - url);
    memcpy(out, url, head);
    strcpy(out + head, at + 1);
    return out;
}

static void connect_redis(jb__redis_ns *ns)
{
    if (ns->r != NULL || ns->c.url[0] == '\0')
        return;
    jb__redis_options o = {ns->c.url, ns->c.password, ns->c.timeout_ms};
    jb_error err;
    if (jb__redis_new(ns->co->loop, &o, on_state, ns, &ns->r, &err) != JB_OK) {
        ns->r = NULL;
        snprintf(ns->error, sizeof(ns->error), "%s", err.message);
        jb_log(JB_LOG_ERROR, "coord", "redis not started", "url=%s reason=\"%s\"", ns->url_public,
               err.message);
        return;
    }
    jb_log(JB_LOG_INFO, "coord", "redis connecting", "url=%s namespaces=%zu", ns->url_public,
           ns->c.n);
}

void jb__redis_ns_apply(jb__redis_ns *ns, jb__redis_conf **conf)
{
    jb__redis_conf *c = *conf;
    *conf = NULL;
    if (c->file_changed)
        ns->file_gen++;
    for (size_t i = 0; i < c->n; i++) {
        if (c->ents[i].pass_gen == UINT64_MAX)
            c->ents[i].pass_gen = ns->file_gen;
    }
    if (ns->r != NULL && strcmp(ns->c.url, c->url) != 0)
        jb_log(JB_LOG_WARN, "coord", "redis url change needs a restart", "url=%s", ns->url_public);
    /* The url and password take effect at the start only (not reloadable). */
    if (ns->r != NULL) {
        char *u = c->url, *p = c->password;
        c->url = ns->c.url, c->password = ns->c.password;
        ns->c.url = u, ns->c.password = p;
    }
    for (size_t i = 0; i < ns->c.n_deletions; i++) {
        char **d = realloc(c->deletions, (c->n_deletions + 1) * sizeof(*d));
        if (d == NULL)
            break;
        c->deletions = d;
        d[c->n_deletions++] = ns->c.deletions[i];
        ns->c.deletions[i] = NULL;
    }
    jb__redis_conf old = ns->c;
    ns->c = *c;
    free(c);
    conf_release(&old);
    conf_release(&ns->seed);
    if (ns->r == NULL) {
        char *pub = public_url(ns->c.url);
        if (pub != NULL) { /* else (out of memory) the old one stays */
            free(ns->url_public);
            ns->url_public = pub;
        }
    }
    connect_redis(ns);
    if (ns->c.url[0] == '\0')
        return;
    if (!ns->timer_made) {
        uv_timer_init(ns->co->loop, &ns->timer);
        ns->timer.data = ns;
        ns->timer_made = 1;
        ns->pending++; /* until the timer's close callback */
    }
    uv_timer_start(&ns->timer, on_tick, ns->c.check_interval_ms, ns->c.check_interval_ms);
    kick(ns);
}

/* ---- Life ------------------------------------------------------------------------ */

jb_status jb__redis_ns_new(jb_coord *co, jb__redis_ns **out, jb_error *err)
{
    jb__redis_ns *ns = calloc(1, sizeof(*ns));
    if (ns == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    ns->co = co;
    ns->c.url = strdup("");
    ns->c.password = strdup("");
    ns->url_public = strdup("");
    if (co->opts.redis_users_path != NULL)
        ns->users_path = strdup(co->opts.redis_users_path);
    if (ns->c.url == NULL || ns->c.password == NULL || ns->url_public == NULL ||
        (co->opts.redis_users_path != NULL && ns->users_path == NULL)) {
        jb__redis_ns_free(ns);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    jb_status st = load_users(ns, err);
    if (st != JB_OK) {
        jb__redis_ns_free(ns);
        return st;
    }
    *out = ns;
    return JB_OK;
}

void jb__redis_ns_free(jb__redis_ns *ns)
{
    if (ns == NULL)
        return;
    conf_release(&ns->c);
    conf_release(&ns->seed);
    free(ns->url_public);
    free(ns->users_path);
    free(ns);
}

static void finish_close(jb__redis_ns *ns)
{
    if (ns->pending > 0)
        return;
    void (*cb)(void *ud) = ns->close_cb;
    void *ud = ns->close_ud;
    jb__redis_ns_free(ns);
    if (cb != NULL)
        cb(ud);
}

static void on_timer_closed(uv_handle_t *h)
{
    jb__redis_ns *ns = h->data;
    ns->pending--;
    finish_close(ns);
}

static void on_redis_closed(void *ud)
{
    jb__redis_ns *ns = ud;
    ns->pending--;
    finish_close(ns);
}

void jb__redis_ns_close(jb__redis_ns *ns, void (*cb)(void *ud), void *ud)
{
    if (ns == NULL)
        return;
    ns->closing = 1;
    ns->close_cb = cb;
    ns->close_ud = ud;
    answer_waits(ns, NULL, UINT64_MAX, JB_ECLOSED, "the coordinator is closing");
    if (ns->timer_made)
        uv_close((uv_handle_t *)&ns->timer, on_timer_closed);
    if (ns->r != NULL) {
        ns->pending++;
        jb__redis_close(ns->r, on_redis_closed, ns);
        ns->r = NULL;
    }
    finish_close(ns); /* nothing was pending (never configured): done now */
}

/* ---- The API ----------------------------------------------------------------------- */

static jb_status lookup(jb_coord *co, const char *component, ns_ent **out, jb_error *err)
{
    jb__redis_ns *ns = co->redis;
    jb_status st = jb__coord_check_component(component, err);
    if (st != JB_OK)
        return st;
    if (ns->c.url[0] == '\0')
        return jb_error_set(err, JB_EUNSUPPORTED,
                            "no shared Redis is configured (resource_coordinator.redis.url)");
    ns_ent *e = find(ns, component);
    if (e == NULL)
        return jb_error_set(err, JB_ENOENT, "no redis namespace for component %s", component);
    if (!e->in_place)
        return jb_error_set(err, JB_EUNAVAILABLE, "the redis user %s is not in place yet%s%s",
                            e->username, ns->error[0] != '\0' ? ": " : "", ns->error);
    *out = e;
    return JB_OK;
}

jb_status jb_coord_redis_access(jb_coord *co, const char *component, jb_redis_access *out,
                                jb_error *err)
{
    ns_ent *e;
    jb_status st = lookup(co, component, &e, err);
    if (st == JB_OK)
        fill_access(co->redis, e, out);
    return st;
}

jb_status jb_coord_redis_rotate(jb_coord *co, const char *component, jb_redis_access_cb cb,
                                void *userdata, jb_error *err)
{
    jb__redis_ns *ns = co->redis;
    ns_ent *e;
    if (co->closing)
        return jb_error_set(err, JB_ECLOSED, "the coordinator is closing");
    jb_status st = lookup(co, component, &e, err);
    if (st != JB_OK)
        return st;
    if (!ns->up)
        return jb_error_set(err, JB_EUNAVAILABLE, "Redis is down: %s", ns->error);
    rotate_wait *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->component = strdup(component)) == NULL) {
        free(w);
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    }
    new_password(e->password);
    e->pass_gen = ++ns->file_gen;
    e->rule_gen++;
    e->dirty = 1;
    e->in_place = 0;
    w->rule_gen = e->rule_gen;
    w->file_gen = e->pass_gen;
    w->cb = cb;
    w->ud = userdata;
    w->next = ns->waits;
    ns->waits = w;
    jb_log(JB_LOG_INFO, "coord", "redis password rotated", "component=%s", component);
    ns->write_failed = 0;
    kick(ns);
    return JB_OK;
}

void jb_coord_redis_info(jb_coord *co, jb_redis_info *out)
{
    const jb__redis_ns *ns = co->redis;
    int all_in_place = 1;
    for (size_t i = 0; i < ns->c.n; i++)
        all_in_place = all_in_place && ns->c.ents[i].in_place && !ns->c.ents[i].dirty;
    memset(out, 0, sizeof(*out));
    out->configured = ns->c.url[0] != '\0';
    out->url = ns->url_public;
    out->reachable = out->configured && ns->up && all_in_place;
    out->error = ns->error;
    out->checked_ms = ns->checked_ms;
    out->connections = ns->counted;
    out->max_connections = ns->c.max_connections;
}

void jb_coord_foreach_redis_component(jb_coord *co,
                                      void (*fn)(const jb_redis_component_info *c, void *ud),
                                      void *ud)
{
    const jb__redis_ns *ns = co->redis;
    if (ns->c.url[0] == '\0')
        return;
    for (size_t i = 0; i < ns->c.n; i++) {
        const ns_ent *e = &ns->c.ents[i];
        jb_redis_component_info c = {e->component,   e->username,  e->prefix,
                                     e->connections, e->allowance, e->closed};
        fn(&c, ud);
    }
}
