/*
 * The loader: YAML layers -> validated, typed values -> one snapshot.
 *
 *   base file ─┐   each layer is parsed (yaml.c) and validated on its own
 *   env file  ─┤── against the table, so that every error carries its own
 *              │   file and line; its values go into a partial snapshot
 *              ▼
 *   merge: for each scope (global, components.NAME, features.NAME) and each
 *   key, the highest layer that sets the key wins; global keys that no layer
 *   sets take the table's default; required keys left unset are errors.
 *
 * Consequences of merging leaf by leaf: maps merge key by key at any depth,
 * while scalars and lists replace the lower layer's value whole. A null
 * (`key:`, `key: ~`) sets nothing, so the lower layer shows through.
 *
 * Validation reports everything it finds in one pass (unknown keys with a
 * "did you mean", wrong types, out-of-range values, bad substitutions,
 * restart-only keys at a component or feature level, missing required keys),
 * and any error means no snapshot at all. Values of secret keys, and values
 * read through ${file:}, never appear in an error.
 *
 * Nothing here touches a loop or global state; it runs on any thread.
 */
#include "config/internal.h"

#include "jimbot/log.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define JB__CONFIG_FILE_MAX (1024 * 1024)

typedef struct vctx {
    const jb_config_schema *schema;
    const char *file;
    const char *dir;
    jb_config_errors *errs;
    jb_config *partial;
    int failed;
    int oom;
} vctx;

#define verr(c, line, key, ...)                                           \
    do {                                                                  \
        (c)->failed = 1;                                                  \
        jb__errors_add((c)->errs, (c)->file, (line), (key), __VA_ARGS__); \
    } while (0)

/* ---- Scalars ------------------------------------------------------------- */

/* Quotes @text for an error message, or *** for a secret. */
static const char *shown(const char *text, int secret, char *buf, size_t size)
{
    if (secret)
        snprintf(buf, size, "***");
    else if (strlen(text) > 60)
        snprintf(buf, size, "'%.57s...'", text);
    else
        snprintf(buf, size, "'%s'", text);
    return buf;
}

static int parse_int(const char *t, int64_t *out)
{
    const char *p = t;
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return -1;
    errno = 0;
    char *end;
    long long v = strtoll(t, &end, 10);
    if (*end != '\0')
        return -1;
    if (errno == ERANGE)
        return -2;
    *out = v;
    return 0;
}

static int parse_float(const char *t, double *out)
{
    const char *p = t;
    if (*p == '+' || *p == '-')
        p++;
    if (!(isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1]))))
        return -1;
    char *end;
    double v = strtod(t, &end);
    if (*end != '\0')
        return -1;
    if (!isfinite(v))
        return -2;
    *out = v;
    return 0;
}

static int parse_bool(const char *t, int *out)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(t, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(t, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static void fmt_range(const jb_config_key *k, char *buf, size_t size)
{
    if (k->type == JB_CONFIG_INT)
        snprintf(buf, size, "%.0f..%.0f", k->min, k->max);
    else
        snprintf(buf, size, "%g..%g", k->min, k->max);
}

/*
 * Expands and converts the scalar @node for key @k into @out. Returns 0, or
 * -1 after reporting the error.
 */
static int convert_scalar(vctx *c, const jb_config_key *k, const char *key, const jb__ynode *node,
                          jb__value *out)
{
    char why[512], show[80];
    char *text = NULL;
    int from_file = 0;
    int secret = (k->flags & JB_CONFIG_SECRET) != 0;
    jb_status st = jb__expand(node->text, c->dir, &text, &from_file, why, sizeof(why));
    if (st == JB_ENOMEM)
        c->oom = 1;
    if (st != JB_OK) {
        verr(c, node->line, key, "%s", why);
        return -1;
    }
    secret |= from_file;
    out->secret = secret;

    int rc = 0;
    switch (k->type) {
    case JB_CONFIG_INT: {
        int64_t v = 0;
        int r = parse_int(text, &v);
        if (r == -1) {
            verr(c, node->line, key, "expected an integer, got %s",
                 shown(text, secret, show, sizeof(show)));
            rc = -1;
        } else if (r == -2 || (k->max > k->min && ((double)v < k->min || (double)v > k->max))) {
            char range[64];
            fmt_range(k, range, sizeof(range));
            verr(c, node->line, key, "%s is out of range %s", secret ? "***" : text, range);
            rc = -1;
        } else {
            out->u.i = v;
        }
        break;
    }
    case JB_CONFIG_FLOAT: {
        double v = 0;
        int r = parse_float(text, &v);
        if (r == -1) {
            verr(c, node->line, key, "expected a number, got %s",
                 shown(text, secret, show, sizeof(show)));
            rc = -1;
        } else if (r == -2 || (k->max > k->min && (v < k->min || v > k->max))) {
            char range[64];
            fmt_range(k, range, sizeof(range));
            verr(c, node->line, key, "%s is out of range %s", secret ? "***" : text, range);
            rc = -1;
        } else {
            out->u.f = v;
        }
        break;
    }
    case JB_CONFIG_BOOL:
        if (parse_bool(text, &out->u.b) != 0) {
            verr(c, node->line, key, "expected true or false, got %s",
                 shown(text, secret, show, sizeof(show)));
            rc = -1;
        }
        break;
    case JB_CONFIG_ENUM: {
        int found = 0;
        for (const char *const *a = k->allowed; a != NULL && *a != NULL; a++)
            found |= strcmp(*a, text) == 0;
        if (!found) {
            char list[256] = "";
            size_t n = 0;
            for (const char *const *a = k->allowed; a != NULL && *a != NULL; a++) {
                int w = snprintf(list + n, sizeof(list) - n, "%s%s", n ? ", " : "", *a);
                if (w < 0 || (size_t)w >= sizeof(list) - n)
                    break;
                n += (size_t)w;
            }
            verr(c, node->line, key, "expected one of %s, got %s", list,
                 shown(text, secret, show, sizeof(show)));
            rc = -1;
            break;
        }
        out->u.s = text;
        text = NULL;
        break;
    }
    case JB_CONFIG_STRING: {
        const char *bad = k->check != NULL ? k->check(text) : NULL;
        if (bad != NULL) {
            verr(c, node->line, key, "%s: %s", bad, shown(text, secret, show, sizeof(show)));
            rc = -1;
            break;
        }
        out->u.s = text;
        text = NULL;
        break;
    }
    case JB_CONFIG_STRLIST:
    case JB_CONFIG_MAP:
        JB_BUG("convert_scalar: a list or map key");
    }
    free(text);
    return rc;
}

static int convert_list(vctx *c, const jb_config_key *k, const char *key, const jb__ynode *node,
                        jb__value *out)
{
    char **items = calloc(node->count + 1, sizeof(*items));
    if (items == NULL) {
        c->oom = 1;
        verr(c, node->line, key, "out of memory");
        return -1;
    }
    int rc = 0, secret = (k->flags & JB_CONFIG_SECRET) != 0;
    for (size_t i = 0; i < node->count; i++) {
        const jb__ynode *it = node->items[i];
        if (it->kind != JB__YNODE_SCALAR || jb__ynode_is_null(it)) {
            verr(c, it->line, key, "list item %zu: expected a string", i + 1);
            rc = -1;
            continue;
        }
        char why[512], show[80];
        int from_file = 0;
        jb_status st = jb__expand(it->text, c->dir, &items[i], &from_file, why, sizeof(why));
        if (st == JB_ENOMEM)
            c->oom = 1;
        if (st != JB_OK) {
            verr(c, it->line, key, "list item %zu: %s", i + 1, why);
            rc = -1;
            continue;
        }
        secret |= from_file;
        const char *bad = k->check != NULL ? k->check(items[i]) : NULL;
        if (bad != NULL) {
            verr(c, it->line, key, "list item %zu: %s: %s", i + 1, bad,
                 shown(items[i], secret, show, sizeof(show)));
            rc = -1;
        }
    }
    out->u.list.items = items;
    out->u.list.count = node->count;
    out->secret = secret;
    if (rc != 0) {
        out->set = 1; /* so that release frees the items */
        jb__value_release(JB_CONFIG_STRLIST, out);
    }
    return rc;
}

static int convert_map(vctx *c, const jb_config_key *k, const char *key, const jb__ynode *node,
                       jb__value *out);

/* Converts @node into @out (unset on error); 0 or -1. */
static int convert(vctx *c, const jb_config_key *k, const char *key, const jb__ynode *node,
                   jb__value *out)
{
    if (k->type == JB_CONFIG_MAP) {
        if (convert_map(c, k, key, node, out) != 0)
            return -1;
    } else if (k->type == JB_CONFIG_STRLIST) {
        if (node->kind != JB__YNODE_SEQ) {
            verr(c, node->line, key, "expected a list of strings, got %s",
                 node->kind == JB__YNODE_MAP ? "a map" : "a single value");
            return -1;
        }
        if (convert_list(c, k, key, node, out) != 0)
            return -1;
    } else {
        if (node->kind != JB__YNODE_SCALAR) {
            verr(c, node->line, key, "expected %s %s, got a %s",
                 k->type == JB_CONFIG_INT ? "an" : "a", jb_config_type_name(k->type),
                 node->kind == JB__YNODE_MAP ? "map" : "list");
            return -1;
        }
        if (convert_scalar(c, k, key, node, out) != 0)
            return -1;
    }
    out->set = 1;
    return 0;
}

/* ---- Maps with names the user chooses ------------------------------------------ */

static jb_status default_value(const jb_config_schema *schema, size_t idx, jb__value *out);

/* A field row whose default is "~": optional, with no value when not given. */
static int def_is_none(const jb_config_key *k)
{
    return k->def != NULL && strcmp(k->def, "~") == 0;
}

static const char *last_word(const char *path)
{
    return strrchr(path, '.') + 1;
}

/* The field of @m named @word (its index among the fields), or -1. */
static long field_of(const jb_config_map *m, const char *word)
{
    for (size_t f = 0; f < m->n_fields; f++) {
        if (strcmp(last_word(m->schema->keys[m->key + 1 + f].path), word) == 0)
            return (long)f;
    }
    return -1;
}

/* "unknown key", with the closest field name when one is close. */
static void unknown_field(vctx *c, const jb_config_map *m, const char *display, const char *word,
                          int line)
{
    size_t cap = strlen(word) / 4 < 1 ? 1 : 3, best = cap + 1;
    const char *hint = NULL;
    for (size_t f = 0; f < m->n_fields; f++) {
        const char *w = last_word(m->schema->keys[m->key + 1 + f].path);
        size_t d = jb__edit_distance(word, w, cap);
        if (d < best) {
            best = d;
            hint = w;
        }
    }
    if (hint != NULL)
        verr(c, line, display, "unknown key (did you mean %.*s%s?)",
             (int)(strrchr(display, '.') + 1 - display), display, hint);
    else
        verr(c, line, display, "unknown key");
}

/* Missing fields: an error when required, else the default (or nothing for "~"). */
static int fill_fields(vctx *c, jb_config_map *m, jb__map_item *it, const char *display, int line)
{
    int rc = 0;
    for (size_t f = 0; f < m->n_fields; f++) {
        const jb_config_key *spec = &m->schema->keys[m->key + 1 + f];
        if (it->fields[f].set || def_is_none(spec))
            continue;
        if (spec->def == NULL) {
            verr(c, line, display, "required key '%s' is missing", last_word(spec->path));
            rc = -1;
        } else if (default_value(m->schema, m->key + 1 + f, &it->fields[f]) != JB_OK) {
            c->oom = 1;
            rc = -1;
        }
    }
    return rc;
}

/* Converts one entry NAME: {FIELD: VALUE...} of a map into the next item of @m. */
static int convert_entry(vctx *c, jb_config_map *m, const char *key, const char *name, int line,
                         const jb__ynode *node)
{
    const jb_config_key *mk = &m->schema->keys[m->key];
    char display[600], fkey[720];
    snprintf(display, sizeof(display), "%s.%.200s", key, name);
    const char *bad = mk->check != NULL ? mk->check(name) : NULL;
    if (bad != NULL) {
        verr(c, line, display, "%s", bad);
        return -1;
    }
    int shorthand =
        node->kind == JB__YNODE_SCALAR && (mk->flags & JB_CONFIG_SHORTHAND) && m->n_fields > 0;
    if (node->kind != JB__YNODE_MAP && !shorthand) {
        verr(c, line, display, "expected a map of fields, got a %s",
             node->kind == JB__YNODE_SEQ ? "list" : "single value");
        return -1;
    }
    jb__map_item *it = &m->items[m->count];
    it->name = strdup(name);
    it->fields = calloc(m->n_fields ? m->n_fields : 1, sizeof(jb__value));
    if (it->name == NULL || it->fields == NULL) {
        free(it->name);
        free(it->fields);
        c->oom = 1;
        verr(c, line, display, "out of memory");
        return -1;
    }
    m->count++;
    int rc = 0;
    if (shorthand) {
        /* NAME: VALUE is NAME: {FIRST_FIELD: VALUE}. */
        const jb_config_key *first = &m->schema->keys[m->key + 1];
        snprintf(fkey, sizeof(fkey), "%s.%s", display, last_word(first->path));
        rc = convert(c, first, fkey, node, &it->fields[0]);
    }
    for (size_t j = 0; !shorthand && j < node->count; j++) {
        snprintf(fkey, sizeof(fkey), "%s.%.100s", display, node->keys[j]);
        long f = field_of(m, node->keys[j]);
        if (f < 0) {
            unknown_field(c, m, fkey, node->keys[j], node->key_lines[j]);
            rc = -1;
        } else if (!jb__ynode_is_null(node->items[j]) &&
                   convert(c, &m->schema->keys[m->key + 1 + (size_t)f], fkey, node->items[j],
                           &it->fields[f]) != 0) {
            rc = -1;
        }
    }
    if (rc == 0)
        rc = fill_fields(c, m, it, display, line);
    const char *field = NULL,
               *why = rc == 0 ? jb__schema_check_entry(m, m->count - 1, &field) : NULL;
    if (why != NULL) {
        snprintf(fkey, sizeof(fkey), "%s%s%s", display, field ? "." : "", field ? field : "");
        verr(c, line, fkey, "%s", why);
        rc = -1;
    }
    return rc;
}

static int convert_map(vctx *c, const jb_config_key *k, const char *key, const jb__ynode *node,
                       jb__value *out)
{
    if (node->kind != JB__YNODE_MAP) {
        verr(c, node->line, key, "expected a map of NAME: {FIELD: VALUE}, got a %s",
             node->kind == JB__YNODE_SEQ ? "list" : "single value");
        return -1;
    }
    jb_config_map *m = jb__map_new(c->schema, (size_t)(k - c->schema->keys), node->count);
    if (m == NULL) {
        c->oom = 1;
        verr(c, node->line, key, "out of memory");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < node->count; i++) {
        if (convert_entry(c, m, key, node->keys[i], node->key_lines[i], node->items[i]) != 0)
            rc = -1;
    }
    jb__map_sort(m);
    out->u.map = m;
    out->set = 1; /* so that release frees the map */
    if (rc != 0)
        jb__value_release(JB_CONFIG_MAP, out);
    return rc;
}

/* ---- Walking a layer ------------------------------------------------------ */

/* Is @path (without trailing dot) a section, that is a strict prefix of a key? */
static int is_section(const jb_config_schema *s, const char *path)
{
    size_t n = strlen(path);
    for (size_t i = 0; i < s->count; i++) {
        if (strncmp(s->keys[i].path, path, n) == 0 && s->keys[i].path[n] == '.')
            return 1;
    }
    return 0;
}

/*
 * A suggestion for the unknown word @word under @prefix ("" or "a.b."):
 * the closest name at the same level when it is close enough, else a key or
 * section elsewhere whose last word is @word. Writes the full path into @out.
 */
static int suggest(const jb_config_schema *s, const char *prefix, const char *word, char *out,
                   size_t size)
{
    size_t plen = strlen(prefix), wlen = strlen(word);
    size_t cap = wlen / 4 < 1 ? 1 : (wlen / 4 > 3 ? 3 : wlen / 4);
    size_t best = cap + 1;
    for (size_t i = 0; i < s->count; i++) {
        const char *p = s->keys[i].path;
        if (strncmp(p, prefix, plen) != 0)
            continue;
        char seg[128];
        const char *rest = p + plen;
        size_t seglen = strcspn(rest, ".");
        if (seglen >= sizeof(seg))
            continue;
        memcpy(seg, rest, seglen);
        seg[seglen] = '\0';
        size_t d = jb__edit_distance(word, seg, cap);
        if (d < best) {
            best = d;
            snprintf(out, size, "%s%s", prefix, seg);
        }
    }
    if (best <= cap)
        return 1;
    /* The right word at the wrong level: "gpu" or "batch_window_ms" at the top. */
    for (size_t i = 0; i < s->count; i++) {
        const char *p = s->keys[i].path;
        if (jb__schema_is_field(&s->keys[i]))
            continue;
        for (const char *q = p; q != NULL; q = strchr(q, '.')) {
            if (*q == '.')
                q++;
            size_t seglen = strcspn(q, ".");
            if (seglen == wlen && strncmp(q, word, wlen) == 0) {
                snprintf(out, size, "%.*s", (int)(q - p + (ptrdiff_t)seglen), p);
                return 1;
            }
        }
    }
    return 0;
}

static void walk(vctx *c, const jb__ynode *map, const char *prefix, const char *display,
                 jb__scope *scope, int top);

static int valid_level_name(const char *n)
{
    if (n[0] == '\0')
        return 0;
    for (const char *p = n; *p; p++) {
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-'))
            return 0;
    }
    return 1;
}

static void walk_levels(vctx *c, const char *what, jb__scope_kind kind, const jb__ynode *node,
                        int line)
{
    if (jb__ynode_is_null(node))
        return;
    if (node->kind != JB__YNODE_MAP) {
        verr(c, line, what, "expected a map of %s names", what);
        return;
    }
    for (size_t i = 0; i < node->count; i++) {
        const char *name = node->keys[i];
        char display[512];
        snprintf(display, sizeof(display), "%s.%.200s", what, name);
        if (!valid_level_name(name)) {
            verr(c, node->key_lines[i], display, "a %s name is letters, digits, '_' and '-'",
                 kind == JB__SCOPE_COMPONENT ? "component" : "feature");
            continue;
        }
        const jb__ynode *child = node->items[i];
        if (jb__ynode_is_null(child))
            continue;
        if (child->kind != JB__YNODE_MAP) {
            verr(c, node->key_lines[i], display, "expected a map of keys");
            continue;
        }
        jb__scope *scope = jb__config_scope(c->partial, kind, name, 1);
        if (scope == NULL) {
            c->oom = 1;
            verr(c, node->key_lines[i], display, "out of memory");
            return;
        }
        char dprefix[520];
        snprintf(dprefix, sizeof(dprefix), "%s.", display);
        walk(c, child, "", dprefix, scope, 0);
    }
}

static void walk(vctx *c, const jb__ynode *map, const char *prefix, const char *display,
                 jb__scope *scope, int top)
{
    for (size_t i = 0; i < map->count; i++) {
        const char *k = map->keys[i];
        const jb__ynode *child = map->items[i];
        int line = map->key_lines[i];
        if (top && strcmp(k, "components") == 0) {
            walk_levels(c, "components", JB__SCOPE_COMPONENT, child, line);
            continue;
        }
        if (top && strcmp(k, "features") == 0) {
            walk_levels(c, "features", JB__SCOPE_FEATURE, child, line);
            continue;
        }
        char path[512], shown_key[1024];
        snprintf(path, sizeof(path), "%s%.200s", prefix, k);
        snprintf(shown_key, sizeof(shown_key), "%s%s", display, path);
        long idx = jb__schema_index(c->schema, path);
        if (idx >= 0) {
            const jb_config_key *spec = &c->schema->keys[idx];
            if (scope->kind != JB__SCOPE_GLOBAL && !(spec->flags & JB_CONFIG_RELOADABLE)) {
                verr(c, line, shown_key,
                     "needs a restart to change, so it can only be set for the whole process, "
                     "not per %s",
                     scope->kind == JB__SCOPE_COMPONENT ? "component" : "feature");
                continue;
            }
            if (jb__ynode_is_null(child))
                continue;
            jb__value *v = &scope->values[idx];
            if (convert(c, spec, shown_key, child, v) != 0)
                continue;
            char src[600];
            snprintf(src, sizeof(src), "%s:%d", c->file, child->line);
            v->source = strdup(src);
            if (v->source == NULL)
                c->oom = 1;
        } else if (is_section(c->schema, path)) {
            if (jb__ynode_is_null(child))
                continue;
            if (child->kind != JB__YNODE_MAP) {
                verr(c, line, shown_key, "expected a map (a section of keys), got a %s",
                     child->kind == JB__YNODE_SEQ ? "list" : "single value");
                continue;
            }
            char sub[520];
            snprintf(sub, sizeof(sub), "%s.", path);
            walk(c, child, sub, display, scope, 0);
        } else {
            char hint[512];
            if (suggest(c->schema, prefix, k, hint, sizeof(hint)))
                verr(c, line, shown_key, "unknown key (did you mean %s%s?)", display, hint);
            else
                verr(c, line, shown_key, "unknown key");
        }
    }
}

/* ---- Defaults ---------------------------------------------------------------- */

static jb_status default_value(const jb_config_schema *schema, size_t idx, jb__value *out)
{
    const jb_config_key *k = &schema->keys[idx];
    char doc[1024];
    snprintf(doc, sizeof(doc), "v: %s\n", k->def);
    jb_config_errors *errs = jb_config_errors_new();
    if (errs == NULL)
        return JB_ENOMEM;
    jb__ynode *root = NULL;
    jb_status st = jb__yaml_parse("<default>", doc, strlen(doc), &root, errs);
    if (st == JB_OK) {
        vctx c = {.schema = schema, .file = "<default>", .errs = errs};
        if (root->count != 1 || jb__ynode_is_null(root->items[0]) ||
            convert(&c, k, k->path, root->items[0], out) != 0)
            st = c.oom ? JB_ENOMEM : JB_EBUG;
    }
    if (st == JB_EBUG || st == JB_EPARSE) {
        char msg[512] = "not a value";
        if (jb_config_errors_count(errs) > 0)
            jb_config_errors_format(errs, 0, msg, sizeof(msg));
        JB_BUG("schema: default of %s is invalid: %s", k->path, msg);
    }
    jb__ynode_free(root);
    jb_config_errors_free(errs);
    return st;
}

/* ---- Building ------------------------------------------------------------------ */

static int scope_cmp(const void *a, const void *b)
{
    const jb__scope *x = *(const jb__scope *const *)a, *y = *(const jb__scope *const *)b;
    if (x->kind != y->kind)
        return (int)x->kind - (int)y->kind;
    return strcmp(x->name, y->name);
}

/* Copies into @dst each value of @src that @dst does not have yet. */
static jb_status fill_from(const jb_config_schema *schema, jb__scope *dst, const jb__scope *src)
{
    for (size_t k = 0; k < schema->count; k++) {
        if (!dst->values[k].set && src->values[k].set) {
            if (jb__value_copy(schema->keys[k].type, &dst->values[k], &src->values[k]) != JB_OK)
                return JB_ENOMEM;
        } else if (schema->keys[k].type == JB_CONFIG_MAP && src->values[k].set) {
            /* Maps merge by entry name: the higher layer's entries are already there. */
            if (jb__map_merge(dst->values[k].u.map, src->values[k].u.map) != JB_OK)
                return JB_ENOMEM;
        }
    }
    return JB_OK;
}

jb_status jb__config_build(const jb_config_schema *schema, const jb__layer *layers, size_t n,
                           jb_config **out, jb_config_errors *errs)
{
    jb_config **partial = calloc(n ? n : 1, sizeof(*partial));
    jb_config *cfg = jb__config_alloc(schema);
    if (partial == NULL || cfg == NULL) {
        free(partial);
        jb_config_unref(cfg);
        return JB_ENOMEM;
    }
    int failed = 0, oom = 0;
    for (size_t i = 0; i < n; i++) {
        jb__ynode *root = NULL;
        jb_status st = jb__yaml_parse(layers[i].file, layers[i].buf, layers[i].len, &root, errs);
        if (st != JB_OK) {
            failed = 1;
            oom |= st == JB_ENOMEM;
            continue;
        }
        partial[i] = jb__config_alloc(schema);
        if (partial[i] == NULL) {
            jb__ynode_free(root);
            oom = 1;
            break;
        }
        vctx c = {.schema = schema,
                  .file = layers[i].file,
                  .dir = layers[i].dir,
                  .errs = errs,
                  .partial = partial[i]};
        walk(&c, root, "", "", partial[i]->scopes[0], 1);
        failed |= c.failed;
        oom |= c.oom;
        jb__ynode_free(root);
    }

    /* Merge, highest layer first: the first value found wins. */
    for (size_t i = n; i-- > 0 && !oom;) {
        if (partial[i] == NULL)
            continue;
        for (size_t s = 0; s < partial[i]->scope_count && !oom; s++) {
            const jb__scope *src = partial[i]->scopes[s];
            jb__scope *dst = jb__config_scope(cfg, src->kind, src->name, 1);
            if (dst == NULL || fill_from(schema, dst, src) != JB_OK)
                oom = 1;
        }
    }
    for (size_t k = 0; k < schema->count && !oom; k++) {
        jb__value *v = &cfg->scopes[0]->values[k];
        if (v->set || jb__schema_is_field(&schema->keys[k]))
            continue;
        if (schema->keys[k].def == NULL) {
            failed = 1;
            jb__errors_add(errs, n > 0 ? layers[0].file : "<none>", 0, schema->keys[k].path,
                           "required key is missing (it has no default)");
            continue;
        }
        if (default_value(schema, k, v) != JB_OK)
            oom = 1;
    }
    for (size_t i = 0; i < n; i++)
        jb_config_unref(partial[i]);
    free(partial);
    if (oom || failed) {
        jb_config_unref(cfg);
        return oom ? JB_ENOMEM : JB_ECONFIG;
    }
    if (cfg->scope_count > 2)
        qsort(cfg->scopes + 1, cfg->scope_count - 1, sizeof(cfg->scopes[0]), scope_cmp);
    *out = cfg;
    return JB_OK;
}

/* ---- Files ----------------------------------------------------------------------- */

static int valid_env_name(const char *env)
{
    for (const char *p = env; *p; p++) {
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-'))
            return 0;
    }
    return env[0] != '\0' && env[0] != '-';
}

static void dir_of(const char *path, char *dir, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, size, ".");
    else if (slash == path)
        snprintf(dir, size, "/");
    else
        snprintf(dir, size, "%.*s", (int)(slash - path), path);
}

jb_status jb_config_load(const jb_config_options *opts, jb_config **out, jb_config_errors *errs,
                         jb_error *err)
{
    if (opts == NULL || opts->path == NULL || out == NULL)
        return jb_error_set(err, JB_EINVAL, "jb_config_load: no configuration file given");
    const jb_config_schema *schema = opts->schema ? opts->schema : jb_config_schema_builtin();
    jb_config_errors *own = NULL;
    if (errs == NULL) {
        own = jb_config_errors_new();
        if (own == NULL)
            return jb_error_set(err, JB_ENOMEM, "out of memory");
        errs = own;
    }
    size_t errs_before = jb_config_errors_count(errs);

    char dir[4096], env_path[4200], why[256];
    dir_of(opts->path, dir, sizeof(dir));
    jb__layer layers[2];
    char *bufs[2] = {NULL, NULL};
    size_t n = 0;
    jb_status st = JB_OK;

    size_t len = 0;
    st = jb__read_file(opts->path, JB__CONFIG_FILE_MAX, &bufs[0], &len, why, sizeof(why));
    if (st != JB_OK) {
        jb__errors_add(errs, opts->path, 0, NULL, "cannot read the configuration: %s", why);
        st = st == JB_ENOMEM ? JB_ENOMEM : JB_EIO;
        goto done;
    }
    layers[n++] = (jb__layer){opts->path, dir, bufs[0], len};

    if (opts->env != NULL && opts->env[0] != '\0') {
        if (!valid_env_name(opts->env)) {
            jb__errors_add(errs, opts->path, 0, NULL,
                           "environment name '%.64s' must be letters, digits, '_' and '-'",
                           opts->env);
            st = JB_ECONFIG;
            goto done;
        }
        if (strchr(opts->path, '/') == NULL)
            snprintf(env_path, sizeof(env_path), "%s.yaml", opts->env);
        else
            snprintf(env_path, sizeof(env_path), "%s/%s.yaml", dir, opts->env);
        st = jb__read_file(env_path, JB__CONFIG_FILE_MAX, &bufs[1], &len, why, sizeof(why));
        if (st == JB_OK) {
            layers[n++] = (jb__layer){env_path, dir, bufs[1], len};
        } else if (st == JB_ENOENT) {
            jb_log(JB_LOG_DEBUG, "config", "no environment layer", "file=%s env=%s", env_path,
                   opts->env);
            st = JB_OK;
        } else {
            jb__errors_add(errs, env_path, 0, NULL, "cannot read the configuration: %s", why);
            st = st == JB_ENOMEM ? JB_ENOMEM : JB_EIO;
            goto done;
        }
    }
    st = jb__config_build(schema, layers, n, out, errs);

done:
    free(bufs[0]);
    free(bufs[1]);
    if (st != JB_OK) {
        size_t count = jb_config_errors_count(errs) - errs_before;
        char first[600] = "no detail";
        if (count > 0)
            jb_config_errors_format(errs, errs_before, first, sizeof(first));
        if (count > 1)
            jb_error_set(err, st, "%s (and %zu more)", first, count - 1);
        else
            jb_error_set(err, st, "%s", first);
    }
    jb_config_errors_free(own);
    return st;
}
