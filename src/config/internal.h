/*
 * src/config/internal.h: what the files of the config module share.
 *
 *   yaml.c     libyaml -> a small tree of nodes with line numbers (the only
 *              file that includes <yaml.h>)
 *   schema.c   the table of keys, and the checks it names
 *   errors.c   the list of "FILE:LINE: KEY: reason" errors
 *   expand.c   ${VAR}, ${VAR:-default} and ${file:PATH}
 *   load.c     layers -> validated, typed values -> a snapshot
 *   config.c   the snapshot: getters, rendering, comparison
 *   watch.c    hot reload on a libuv loop
 */
#ifndef JB_CONFIG_INTERNAL_H
#define JB_CONFIG_INTERNAL_H

#include "jimbot/config.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* ---- YAML tree ----------------------------------------------------------- */

typedef enum jb__ynode_kind {
    JB__YNODE_SCALAR,
    JB__YNODE_MAP,
    JB__YNODE_SEQ,
} jb__ynode_kind;

typedef struct jb__ynode jb__ynode;
struct jb__ynode {
    jb__ynode_kind kind;
    int line;   /* 1-based */
    int quoted; /* scalar written quoted, as a block, or tagged !!str */
    char *text; /* scalar: NUL-terminated, without embedded NULs */
    size_t count;
    char **keys;       /* map: count keys */
    int *key_lines;    /* map: the line of each key */
    jb__ynode **items; /* map values or sequence items */
};

/*
 * Parses @len bytes of @buf (named @file in errors) into *@out. An empty
 * document gives an empty map. Returns JB_OK, or JB_EPARSE after appending
 * one error to @errs (syntax, not a map at the top, aliases, too deep...),
 * or JB_ENOMEM.
 */
jb_status jb__yaml_parse(const char *file, const char *buf, size_t len, jb__ynode **out,
                         jb_config_errors *errs);
void jb__ynode_free(jb__ynode *node);
/* A plain scalar that YAML reads as null: "", "~", "null". */
int jb__ynode_is_null(const jb__ynode *node);

/* ---- Errors --------------------------------------------------------------- */

/* Appends one error (printf-style reason). At most JB__ERRORS_MAX are kept. */
void jb__errors_add(jb_config_errors *errs, const char *file, int line, const char *key,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define JB__ERRORS_MAX 1000

/* ---- Values and snapshots -------------------------------------------------- */

typedef struct jb__value {
    int set;
    int secret; /* the key is secret, or the text came from ${file:} */
    union {
        int64_t i;
        double f;
        int b;
        char *s; /* STRING and ENUM */
        struct {
            char **items; /* NULL-terminated, count items */
            size_t count;
        } list;
        jb_config_map *map; /* MAP: never NULL when set */
    } u;
    char *source; /* "FILE:LINE", NULL for a default */
} jb__value;

/* One entry of a MAP value. */
typedef struct jb__map_item {
    char *name;
    jb__value *fields; /* n_fields values, in table order */
} jb__map_item;

struct jb_config_map {
    const jb_config_schema *schema;
    size_t key;          /* index of the MAP row */
    size_t n_fields;     /* its fields: rows key + 1 .. key + n_fields */
    jb__map_item *items; /* sorted by name, no name twice */
    size_t count;
};

/* An empty map for row @key of @schema with room for @cap entries; NULL if out of memory. */
jb_config_map *jb__map_new(const jb_config_schema *schema, size_t key, size_t cap);
/* Sorts the entries by name. */
void jb__map_sort(jb_config_map *m);
/* Adds to @dst (sorted) each entry of @src whose name it lacks. JB_OK or JB_ENOMEM. */
jb_status jb__map_merge(jb_config_map *dst, const jb_config_map *src);

typedef enum jb__scope_kind {
    JB__SCOPE_GLOBAL,
    JB__SCOPE_COMPONENT,
    JB__SCOPE_FEATURE,
} jb__scope_kind;

/* The values of one level: global (every key set) or one component/feature. */
typedef struct jb__scope {
    jb__scope_kind kind;
    char *name;        /* NULL for the global scope */
    jb__value *values; /* schema->count entries */
} jb__scope;

struct jb_config {
    atomic_uint refs;
    uint64_t version;
    const jb_config_schema *schema;
    jb__scope **scopes; /* scopes[0] is global; then components, then features, by name */
    size_t scope_count;
};

/* Frees what @v (of a key of type @type) owns and marks it unset. */
void jb__value_release(jb_config_type type, jb__value *v);
/* Deep copy of @src into @dst (which holds nothing). Returns JB_OK or JB_ENOMEM. */
jb_status jb__value_copy(jb_config_type type, jb__value *dst, const jb__value *src);
/* Equal values of a key of type @type (the sources are not compared). */
int jb__value_equal(jb_config_type type, const jb__value *a, const jb__value *b);
/* Renders @v as YAML flow text into @buf, "***" when secret. */
const char *jb__value_render(const jb_config_key *spec, const jb__value *v, char *buf, size_t size);

/* An empty snapshot of @schema with the global scope allocated; NULL if out of memory. */
jb_config *jb__config_alloc(const jb_config_schema *schema);
/* The scope (@kind, @name) of @cfg, creating it when @create; NULL if absent or no memory. */
jb__scope *jb__config_scope(jb_config *cfg, jb__scope_kind kind, const char *name, int create);
/* Index of @path in @schema, or -1. */
long jb__schema_index(const jb_config_schema *schema, const char *path);
/* A field row of a MAP key ("a.b.*.FIELD"): never a key of its own. */
int jb__schema_is_field(const jb_config_key *k);
/* The number of field rows that follow the MAP row @key. */
size_t jb__schema_fields(const jb_config_schema *schema, size_t key);
/*
 * The checks of an entry as a whole (fields that go together), for the maps
 * of the builtin table: NULL when entry @i of @m is fine, else a static
 * reason, with *@field set to the field it is about (or NULL).
 */
const char *jb__schema_check_entry(const jb_config_map *m, size_t i, const char **field);

/*
 * Compares @old with @new_cfg for a reload. Restart-only keys that differ get
 * @old's value back in @new_cfg and their names go to @pending; names of keys
 * whose values now differ go to @changed. Both lists are malloc'd, NULL
 * terminated, and freed with jb__strv_free.
 */
jb_status jb__config_diff(const jb_config *old, jb_config *new_cfg, char ***changed,
                          size_t *changed_count, char ***pending, size_t *pending_count);
void jb__strv_free(char **v);

/* ---- Layers ------------------------------------------------------------------ */

/* One layer's text, for jb__config_build. */
typedef struct jb__layer {
    const char *file; /* its name in errors and sources */
    const char *dir;  /* where relative ${file:PATH} are resolved */
    const char *buf;
    size_t len;
} jb__layer;

/*
 * Builds a snapshot from @n layers, lowest first (the loader's core, with no
 * file reading of its own but ${file:}). Returns JB_OK and *@out, or
 * JB_ECONFIG with every error in @errs, or JB_ENOMEM.
 */
jb_status jb__config_build(const jb_config_schema *schema, const jb__layer *layers, size_t n,
                           jb_config **out, jb_config_errors *errs);

/*
 * Expands ${VAR}, ${VAR:-default} and ${file:PATH} in @text. On success
 * returns JB_OK and a malloc'd string in *@out, and sets *@from_file when a
 * ${file:} was used. On failure returns JB_ECONFIG with a reason (never
 * containing a secret) in @why.
 */
jb_status jb__expand(const char *text, const char *dir, char **out, int *from_file, char *why,
                     size_t why_size);

/* Reads a whole regular file (at most @max bytes) into a malloc'd, NUL-terminated buffer. */
jb_status jb__read_file(const char *path, size_t max, char **out, size_t *len, char *why,
                        size_t why_size);

/* Levenshtein distance of @a and @b, capped at @cap + 1. */
size_t jb__edit_distance(const char *a, const char *b, size_t cap);

#endif /* JB_CONFIG_INTERNAL_H */
