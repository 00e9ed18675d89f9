/*
 * jimbot/config.h: layered YAML configuration, validated against one schema
 * table, with secrets and hot reload.
 *
 * Invariants:
 *  - A jb_config is one immutable, fully validated snapshot. It never changes
 *    after jb_config_load() returns it; a reload builds a new snapshot and
 *    swaps. Snapshots are reference counted, so a reader may keep one across
 *    a reload (jb_config_ref/jb_config_unref). The count is atomic: a snapshot
 *    may be read and released from any thread.
 *  - Every key is declared in one table (jb_config_schema). A value comes out
 *    of a getter with the type the table gives it; asking for a key that is
 *    not in the table, or with the wrong getter, is a programming error
 *    (JB_BUG), never a runtime error.
 *  - Bad input (a file, an environment variable) is never a JB_BUG: it is a
 *    jb_config_errors entry "FILE:LINE: KEY: reason", all of them at once.
 *  - Secret values (keys flagged JB_CONFIG_SECRET, and anything read through
 *    ${file:PATH}) are masked as *** in every rendering, log line and error.
 *
 * Layers, lowest first: the schema default, the base file, the environment
 * file (config/<env>.yaml beside the base file), the component level
 * (components.<name>.<key>) and the feature level (features.<name>.<key>).
 * docs/configuration.md explains the merge rules; it is generated from the
 * table by jimbot-config-doc.
 */
#ifndef JIMBOT_CONFIG_H
#define JIMBOT_CONFIG_H

#include "jimbot/status.h"

#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- The schema table --------------------------------------------------- */

typedef enum jb_config_type {
    JB_CONFIG_INT,     /* int64_t, decimal */
    JB_CONFIG_FLOAT,   /* double, finite */
    JB_CONFIG_BOOL,    /* true/false (also yes/no, on/off) */
    JB_CONFIG_STRING,  /* any scalar, as text */
    JB_CONFIG_ENUM,    /* one of a fixed list of words; read with _get_string */
    JB_CONFIG_STRLIST, /* a sequence of strings */
    JB_CONFIG_MAP,     /* entries under names the user chooses; read with jb_config_get_map */
} jb_config_type;

/* Flags of a key. */
#define JB_CONFIG_SECRET     0x1u /* masked as *** everywhere */
#define JB_CONFIG_RELOADABLE 0x2u /* may change without a restart */
/* On a MAP: an entry may be written `NAME: VALUE`, short for `NAME: {FIELD: VALUE}`
 * with the map's first field. */
#define JB_CONFIG_SHORTHAND 0x4u

/*
 * An extra check for a string (or each item of a list): returns NULL when
 * @value is acceptable, else a static one-line reason ("not a topic name").
 */
typedef const char *(*jb_config_check_fn)(const char *value);

/*
 * One key of the table. Plain data, meant to be a static const array.
 * @def is the default written as YAML ("100", "1.0", "true", "'text'",
 * "[a, b]"); NULL makes the key required. The range [@min, @max] applies to
 * INT and FLOAT keys when @max > @min. @allowed is the NULL-terminated list of
 * the words of an ENUM. Restart-only keys (no JB_CONFIG_RELOADABLE) configure
 * the whole process and cannot be set at the component or feature level.
 *
 * A MAP key "a.b" holds entries under names the user chooses ("a.b.NAME"),
 * each a map of fields. Its fields are the rows "a.b.*.FIELD" right after it
 * in the table, each with its own type, range and check; a field's @def is
 * NULL when the field is required and "~" when it is optional with no value.
 * The map's own @check, when set, checks each name; its default is "{}".
 * Across layers the entries merge by name (a higher layer's entry replaces
 * the lower one's whole).
 */
typedef struct jb_config_key {
    const char *path;
    jb_config_type type;
    unsigned flags;
    const char *def;
    double min;
    double max;
    const char *const *allowed;
    jb_config_check_fn check;
    const char *description;
} jb_config_key;

typedef struct jb_config_schema {
    const jb_config_key *keys;
    size_t count;
} jb_config_schema;

/* The table of libjimbot's keys (src/config/schema.c). Static; never NULL. */
const jb_config_schema *jb_config_schema_builtin(void);

/* The entry of @path in @schema, or NULL. */
const jb_config_key *jb_config_schema_find(const jb_config_schema *schema, const char *path);

/* "int", "float", "bool", "string", "enum", "list" or "map". */
const char *jb_config_type_name(jb_config_type type);

/* ---- Errors: every problem of a load, with its place -------------------- */

/* A view of one error; every pointer is owned by the list. */
typedef struct jb_config_error {
    const char *file; /* never NULL */
    int line;         /* 1-based; 0 when the problem has no line */
    const char *key;  /* dotted key, or NULL (a YAML syntax error) */
    const char *reason;
} jb_config_error;

typedef struct jb_config_errors jb_config_errors;

/* A new empty list; NULL when out of memory. Free with jb_config_errors_free. */
jb_config_errors *jb_config_errors_new(void);
void jb_config_errors_free(jb_config_errors *errs);
/* Empties the list so that it can be reused. */
void jb_config_errors_clear(jb_config_errors *errs);
size_t jb_config_errors_count(const jb_config_errors *errs);
/* The @i-th error, in the order found (layer by layer, in document order, then
 * missing keys); valid until the list changes. */
const jb_config_error *jb_config_errors_at(const jb_config_errors *errs, size_t i);
/*
 * Writes the @i-th error as "FILE:LINE: KEY: reason" into @buf (truncated to
 * @size) and returns @buf.
 */
const char *jb_config_errors_format(const jb_config_errors *errs, size_t i, char *buf, size_t size);

/* ---- Loading a snapshot ------------------------------------------------- */

typedef struct jb_config_options {
    /* The base file, e.g. "config/infrastructure.yaml". Required. */
    const char *path;
    /*
     * The environment: the layer <dir of path>/<env>.yaml. NULL or "" for
     * none. A missing environment file is not an error.
     */
    const char *env;
    /* The table to validate against; NULL for jb_config_schema_builtin(). */
    const jb_config_schema *schema;
} jb_config_options;

typedef struct jb_config jb_config;

/*
 * Reads, merges and validates the layers of @opts. On success stores a new
 * snapshot (reference count 1) in *@out and returns JB_OK. On failure returns
 * JB_ECONFIG (invalid files; every problem is appended to @errs when not
 * NULL, and @err carries the first and the count), or JB_EIO/JB_ENOMEM, and
 * leaves *@out untouched. @opts is copied.
 */
jb_status jb_config_load(const jb_config_options *opts, jb_config **out, jb_config_errors *errs,
                         jb_error *err);

/* Takes one more reference; returns @cfg. */
jb_config *jb_config_ref(jb_config *cfg);
/* Drops one reference; the last one frees the snapshot. NULL is a no-op. */
void jb_config_unref(jb_config *cfg);

/* The number of the snapshot: 1 for a first load, +1 for each reload that
 * changed a value in force. */
uint64_t jb_config_version(const jb_config *cfg);

/*
 * Typed getters. @component and @feature (each may be NULL) select the
 * override levels: the feature's value wins over the component's, which wins
 * over the environment's and the base's, which win over the default.
 * A key missing from the table or of another type is a JB_BUG.
 * _get_string works for STRING and ENUM keys; the pointer, like the list of
 * _get_strlist, belongs to @cfg and stays valid while a reference is held.
 */
int64_t jb_config_get_int(const jb_config *cfg, const char *key, const char *component,
                          const char *feature);
double jb_config_get_double(const jb_config *cfg, const char *key, const char *component,
                            const char *feature);
int jb_config_get_bool(const jb_config *cfg, const char *key, const char *component,
                       const char *feature);
const char *jb_config_get_string(const jb_config *cfg, const char *key, const char *component,
                                 const char *feature);
const char *const *jb_config_get_strlist(const jb_config *cfg, const char *key,
                                         const char *component, const char *feature, size_t *count);

/*
 * The entries of a MAP key, sorted by name; borrowed from @cfg like a string.
 * Field getters take the field's last word ("rule") and JB_BUG on a field
 * that is not in the table or of another type.
 */
typedef struct jb_config_map jb_config_map;
const jb_config_map *jb_config_get_map(const jb_config *cfg, const char *key, const char *component,
                                       const char *feature);
size_t jb_config_map_count(const jb_config_map *map);
const char *jb_config_map_name(const jb_config_map *map, size_t i);
/* Whether field @field of entry @i has a value (given, or its default). */
int jb_config_map_has(const jb_config_map *map, size_t i, const char *field);
/* Field values of entry @i: 0 or NULL when unset. */
int64_t jb_config_map_get_int(const jb_config_map *map, size_t i, const char *field);
const char *jb_config_map_get_string(const jb_config_map *map, size_t i, const char *field);

/* One resolved value, as jb_config_foreach shows it; every pointer is borrowed. */
typedef struct jb_config_entry {
    const char *key;       /* "event_bus.batch_window_ms" */
    const char *component; /* the override level, or NULL */
    const char *feature;   /* the override level, or NULL */
    const char *value;     /* rendered as YAML flow text; "***" for secrets */
    const char *source;    /* "FILE:LINE", or "default" */
    const jb_config_key *spec;
    int secret;
} jb_config_entry;

/* Returns non-zero to stop the walk. */
typedef int (*jb_config_entry_fn)(const jb_config_entry *entry, void *userdata);

/*
 * Calls @fn for every key of the table (its resolved global value) in table
 * order, then for every value set at a component level, then at a feature
 * level. The entry is valid only during the call.
 */
void jb_config_foreach(const jb_config *cfg, jb_config_entry_fn fn, void *userdata);

/*
 * Writes the resolved configuration to @out, one "key = value  # source"
 * line per entry of jb_config_foreach, secrets masked.
 */
void jb_config_dump(const jb_config *cfg, FILE *out);

/* ---- Hot reload --------------------------------------------------------- */

/* What a reload changed; every pointer is borrowed until the callback returns. */
typedef struct jb_config_change {
    uint64_t version;
    const jb_config *config;   /* the snapshot now in force */
    const jb_config *previous; /* the one it replaced */
    /* Keys whose new value took effect; component and feature levels are
     * named "components.NAME.KEY" and "features.NAME.KEY". */
    const char *const *changed;
    size_t changed_count;
    /* Restart-only keys whose value in the files differs from the running
     * one; the running value stays until the process restarts. */
    const char *const *pending_restart;
    size_t pending_count;
} jb_config_change;

typedef void (*jb_config_change_fn)(const jb_config_change *change, void *userdata);

typedef struct jb_config_watcher jb_config_watcher;

typedef struct jb_config_watcher_options {
    /* Quiet time after the last file event before a reload; 0 means 150 ms. */
    unsigned debounce_ms;
    /* A reload happens at the latest this long after the first event of a
     * burst, even if writes go on; 0 means 1000 ms. */
    unsigned max_delay_ms;
} jb_config_watcher_options;

typedef struct jb_config_watcher_stats {
    uint64_t version;        /* of the snapshot in force */
    uint64_t reloads;        /* reloads attempted (file change or request) */
    uint64_t reloads_failed; /* of those, rejected as invalid */
} jb_config_watcher_stats;

/*
 * A watcher on @loop for the files of @opts (copied), starting from
 * @initial (the watcher takes a reference of its own). @wopts may be NULL.
 * Nothing is watched until jb_config_watcher_start(). Loop thread only.
 */
jb_status jb_config_watcher_new(uv_loop_t *loop, const jb_config_options *opts,
                                const jb_config_watcher_options *wopts, jb_config *initial,
                                jb_config_watcher **out, jb_error *err);

/*
 * Watches the folder of the base file (so that saves by rename, and an
 * environment file created later, are seen). A burst of events becomes one
 * reload after the debounce time.
 */
jb_status jb_config_watcher_start(jb_config_watcher *w, jb_error *err);

/* Stops watching; the snapshot in force stays. */
void jb_config_watcher_stop(jb_config_watcher *w);

/*
 * Closes the watcher's handles; @cb (may be NULL) runs once they are closed,
 * after which the watcher is freed. The watcher must not be used after this
 * call.
 */
void jb_config_watcher_close(jb_config_watcher *w, void (*cb)(void *userdata), void *userdata);

/*
 * Reloads now (what SIGHUP does): reads and validates every layer; if valid,
 * swaps the snapshot and notifies subscribers; if not, keeps the snapshot in
 * force, logs each error and counts a failed reload. Returns JB_OK,
 * JB_ECONFIG or JB_EIO.
 */
jb_status jb_config_watcher_reload(jb_config_watcher *w);

/* The snapshot in force, borrowed: jb_config_ref() it to keep it. */
jb_config *jb_config_watcher_current(const jb_config_watcher *w);

void jb_config_watcher_stats_get(const jb_config_watcher *w, jb_config_watcher_stats *out);

/*
 * Calls @fn after a reload that changed a value in force, or changed the set
 * of keys pending a restart. A reload that only re-reads the same values
 * calls nobody and keeps the version. Subscribers run in the order they
 * subscribed, on the loop thread.
 */
jb_status jb_config_watcher_subscribe(jb_config_watcher *w, jb_config_change_fn fn, void *userdata);
/* Removes the subscription made with the same @fn and @userdata. */
void jb_config_watcher_unsubscribe(jb_config_watcher *w, jb_config_change_fn fn, void *userdata);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_CONFIG_H */
