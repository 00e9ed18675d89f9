/*
 * The snapshot: typed getters, rendering, and the comparison a reload needs.
 *
 * A jb_config is immutable once jb__config_build() returns it, so any number
 * of threads may read one; only the reference count changes, atomically.
 * Scope 0 holds every key (defaults filled in); the other scopes hold only
 * what a components.NAME or features.NAME map set, sorted by kind and name.
 *
 * A getter resolves feature -> component -> global. A getter for a key that
 * the table lacks, or of the wrong type, is a bug in the caller: JB_BUG.
 * Rendering never shows a secret: it writes *** instead.
 */
#include "config/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Values -------------------------------------------------------------- */

static void map_free(jb_config_map *m);
static jb_config_map *map_copy(const jb_config_map *m);
static int map_equal(const jb_config_map *a, const jb_config_map *b);

static void value_release_typed(jb_config_type type, jb__value *v)
{
    if (v->set && type == JB_CONFIG_MAP) {
        map_free(v->u.map);
    } else if (v->set) {
        if (type == JB_CONFIG_STRING || type == JB_CONFIG_ENUM) {
            free(v->u.s);
        } else if (type == JB_CONFIG_STRLIST) {
            for (size_t i = 0; i < v->u.list.count; i++)
                free(v->u.list.items[i]);
            free(v->u.list.items);
        }
    }
    free(v->source);
    memset(v, 0, sizeof(*v));
}

static jb_status value_copy_typed(jb_config_type type, jb__value *dst, const jb__value *src)
{
    *dst = *src;
    dst->source = NULL;
    if (src->source != NULL && (dst->source = strdup(src->source)) == NULL)
        goto oom;
    if (!src->set)
        return JB_OK;
    if (type == JB_CONFIG_STRING || type == JB_CONFIG_ENUM) {
        if ((dst->u.s = strdup(src->u.s)) == NULL)
            goto oom;
    } else if (type == JB_CONFIG_MAP) {
        if ((dst->u.map = map_copy(src->u.map)) == NULL)
            goto oom;
    } else if (type == JB_CONFIG_STRLIST) {
        size_t n = src->u.list.count;
        dst->u.list.items = calloc(n + 1, sizeof(char *));
        if (dst->u.list.items == NULL)
            goto oom;
        for (size_t i = 0; i < n; i++) {
            if ((dst->u.list.items[i] = strdup(src->u.list.items[i])) == NULL) {
                dst->u.list.count = i;
                value_release_typed(type, dst);
                return JB_ENOMEM;
            }
        }
    }
    return JB_OK;
oom:
    free(dst->source);
    memset(dst, 0, sizeof(*dst));
    return JB_ENOMEM;
}

jb_status jb__value_copy(jb_config_type type, jb__value *dst, const jb__value *src)
{
    return value_copy_typed(type, dst, src);
}

void jb__value_release(jb_config_type type, jb__value *v)
{
    value_release_typed(type, v);
}

int jb__value_equal(jb_config_type type, const jb__value *a, const jb__value *b)
{
    if (a->set != b->set)
        return 0;
    if (!a->set)
        return 1;
    switch (type) {
    case JB_CONFIG_INT:
        return a->u.i == b->u.i;
    case JB_CONFIG_FLOAT:
        return a->u.f == b->u.f;
    case JB_CONFIG_BOOL:
        return a->u.b == b->u.b;
    case JB_CONFIG_STRING:
    case JB_CONFIG_ENUM:
        return strcmp(a->u.s, b->u.s) == 0;
    case JB_CONFIG_STRLIST:
        if (a->u.list.count != b->u.list.count)
            return 0;
        for (size_t i = 0; i < a->u.list.count; i++) {
            if (strcmp(a->u.list.items[i], b->u.list.items[i]) != 0)
                return 0;
        }
        return 1;
    case JB_CONFIG_MAP:
        return map_equal(a->u.map, b->u.map);
    }
    return 0;
}

/* ---- Maps ------------------------------------------------------------------ */

static const jb_config_key *field_spec(const jb_config_map *m, size_t f)
{
    return &m->schema->keys[m->key + 1 + f];
}

static void item_release(const jb_config_map *m, jb__map_item *it)
{
    for (size_t f = 0; f < m->n_fields && it->fields != NULL; f++)
        value_release_typed(field_spec(m, f)->type, &it->fields[f]);
    free(it->fields);
    free(it->name);
}

static void map_free(jb_config_map *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->count; i++)
        item_release(m, &m->items[i]);
    free(m->items);
    free(m);
}

jb_config_map *jb__map_new(const jb_config_schema *schema, size_t key, size_t cap)
{
    jb_config_map *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->schema = schema;
    m->key = key;
    m->n_fields = jb__schema_fields(schema, key);
    m->items = calloc(cap ? cap : 1, sizeof(*m->items));
    if (m->items == NULL) {
        free(m);
        return NULL;
    }
    return m;
}

/* Appends a deep copy of @src (an entry of a map of the same row) to @m, which has room. */
static jb_status item_copy_into(jb_config_map *m, const jb__map_item *src)
{
    jb__map_item *it = &m->items[m->count];
    it->name = strdup(src->name);
    it->fields = calloc(m->n_fields ? m->n_fields : 1, sizeof(jb__value));
    if (it->name == NULL || it->fields == NULL) {
        free(it->name);
        free(it->fields);
        return JB_ENOMEM;
    }
    m->count++;
    for (size_t f = 0; f < m->n_fields; f++) {
        if (value_copy_typed(field_spec(m, f)->type, &it->fields[f], &src->fields[f]) != JB_OK)
            return JB_ENOMEM;
    }
    return JB_OK;
}

static jb_config_map *map_copy(const jb_config_map *src)
{
    jb_config_map *m = jb__map_new(src->schema, src->key, src->count);
    for (size_t i = 0; m != NULL && i < src->count; i++) {
        if (item_copy_into(m, &src->items[i]) != JB_OK) {
            map_free(m);
            return NULL;
        }
    }
    return m;
}

static int map_equal(const jb_config_map *a, const jb_config_map *b)
{
    if (a->count != b->count)
        return 0;
    for (size_t i = 0; i < a->count; i++) {
        if (strcmp(a->items[i].name, b->items[i].name) != 0)
            return 0;
        for (size_t f = 0; f < a->n_fields; f++) {
            if (!jb__value_equal(field_spec(a, f)->type, &a->items[i].fields[f],
                                 &b->items[i].fields[f]))
                return 0;
        }
    }
    return 1;
}

static int item_cmp(const void *a, const void *b)
{
    return strcmp(((const jb__map_item *)a)->name, ((const jb__map_item *)b)->name);
}

void jb__map_sort(jb_config_map *m)
{
    if (m->count > 1)
        qsort(m->items, m->count, sizeof(*m->items), item_cmp);
}

jb_status jb__map_merge(jb_config_map *dst, const jb_config_map *src)
{
    jb__map_item *items = realloc(dst->items, (dst->count + src->count + 1) * sizeof(*items));
    if (items == NULL)
        return JB_ENOMEM;
    dst->items = items;
    size_t own = dst->count;
    for (size_t i = 0; i < src->count; i++) {
        int seen = 0;
        for (size_t j = 0; j < own && !seen; j++)
            seen = strcmp(dst->items[j].name, src->items[i].name) == 0;
        if (!seen && item_copy_into(dst, &src->items[i]) != JB_OK)
            return JB_ENOMEM;
    }
    jb__map_sort(dst);
    return JB_OK;
}

/* Appends @s double-quoted with YAML/JSON escapes at @buf+*@n. */
static void put_quoted(char *buf, size_t size, size_t *n, const char *s)
{
    char tmp[8];
    size_t o = *n;
#define PUT(c)                    \
    do {                          \
        if (o + 1 < size)         \
            buf[o++] = (char)(c); \
    } while (0)
    PUT('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            PUT('\\');
            PUT(*p);
        } else if (*p == '\n') {
            PUT('\\');
            PUT('n');
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
            for (const char *t = tmp; *t; t++)
                PUT(*t);
        } else {
            PUT(*p);
        }
    }
    PUT('"');
#undef PUT
    if (size > 0)
        buf[o < size ? o : size - 1] = '\0';
    *n = o;
}

/* Appends printf-style text at @buf + *@n, truncating at @size. */
static void put_text(char *buf, size_t size, size_t *n, const char *text)
{
    int w = snprintf(buf + *n, size - *n, "%s", text);
    if (w > 0)
        *n = *n + (size_t)w < size ? *n + (size_t)w : size - 1;
}

/* {"NAME": {field: value, ...}, ...}, fields without a value left out. */
static void render_map(const jb_config_map *m, char *buf, size_t size)
{
    size_t n = 0;
    char value[1024];
    put_text(buf, size, &n, "{");
    for (size_t i = 0; i < m->count; i++) {
        put_text(buf, size, &n, i > 0 ? ", " : "");
        put_quoted(buf, size, &n, m->items[i].name);
        put_text(buf, size, &n, ": {");
        int first = 1;
        for (size_t f = 0; f < m->n_fields; f++) {
            const jb__value *fv = &m->items[i].fields[f];
            if (!fv->set)
                continue;
            const jb_config_key *spec = field_spec(m, f);
            put_text(buf, size, &n, first ? "" : ", ");
            put_text(buf, size, &n, strrchr(spec->path, '.') + 1);
            put_text(buf, size, &n, ": ");
            put_text(buf, size, &n, jb__value_render(spec, fv, value, sizeof(value)));
            first = 0;
        }
        put_text(buf, size, &n, "}");
    }
    put_text(buf, size, &n, "}");
}

const char *jb__value_render(const jb_config_key *spec, const jb__value *v, char *buf, size_t size)
{
    size_t n = 0;
    if (size == 0)
        return buf;
    buf[0] = '\0';
    if (!v->set) {
        snprintf(buf, size, "null");
        return buf;
    }
    if (v->secret || (spec->flags & JB_CONFIG_SECRET)) {
        snprintf(buf, size, "***");
        return buf;
    }
    switch (spec->type) {
    case JB_CONFIG_INT:
        snprintf(buf, size, "%lld", (long long)v->u.i);
        break;
    case JB_CONFIG_FLOAT: {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.15g", v->u.f);
        if (strtod(tmp, NULL) != v->u.f)
            snprintf(tmp, sizeof(tmp), "%.17g", v->u.f);
        if (strpbrk(tmp, ".eEni") == NULL)
            strcat(tmp, ".0");
        snprintf(buf, size, "%s", tmp);
        break;
    }
    case JB_CONFIG_BOOL:
        snprintf(buf, size, "%s", v->u.b ? "true" : "false");
        break;
    case JB_CONFIG_ENUM:
        snprintf(buf, size, "%s", v->u.s);
        break;
    case JB_CONFIG_STRING:
        put_quoted(buf, size, &n, v->u.s);
        break;
    case JB_CONFIG_STRLIST:
        buf[n++] = '[';
        buf[n] = '\0';
        for (size_t i = 0; i < v->u.list.count && n + 3 < size; i++) {
            if (i > 0) {
                buf[n++] = ',';
                buf[n++] = ' ';
            }
            put_quoted(buf, size, &n, v->u.list.items[i]);
        }
        if (n + 1 < size)
            buf[n++] = ']';
        buf[n < size ? n : size - 1] = '\0';
        break;
    case JB_CONFIG_MAP:
        render_map(v->u.map, buf, size);
        break;
    }
    return buf;
}

/* ---- Snapshots -------------------------------------------------------------- */

static jb__scope *scope_new(const jb_config_schema *schema, jb__scope_kind kind, const char *name)
{
    jb__scope *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->kind = kind;
    s->values = calloc(schema->count ? schema->count : 1, sizeof(jb__value));
    s->name = name != NULL ? strdup(name) : NULL;
    if (s->values == NULL || (name != NULL && s->name == NULL)) {
        free(s->values);
        free(s->name);
        free(s);
        return NULL;
    }
    return s;
}

static void scope_free(const jb_config_schema *schema, jb__scope *s)
{
    if (s == NULL)
        return;
    for (size_t k = 0; k < schema->count; k++)
        value_release_typed(schema->keys[k].type, &s->values[k]);
    free(s->values);
    free(s->name);
    free(s);
}

jb_config *jb__config_alloc(const jb_config_schema *schema)
{
    jb_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL)
        return NULL;
    atomic_init(&cfg->refs, 1);
    cfg->version = 1;
    cfg->schema = schema;
    cfg->scopes = calloc(1, sizeof(*cfg->scopes));
    if (cfg->scopes == NULL ||
        (cfg->scopes[0] = scope_new(schema, JB__SCOPE_GLOBAL, NULL)) == NULL) {
        free(cfg->scopes);
        free(cfg);
        return NULL;
    }
    cfg->scope_count = 1;
    return cfg;
}

jb__scope *jb__config_scope(jb_config *cfg, jb__scope_kind kind, const char *name, int create)
{
    for (size_t i = 0; i < cfg->scope_count; i++) {
        jb__scope *s = cfg->scopes[i];
        if (s->kind == kind && (kind == JB__SCOPE_GLOBAL || strcmp(s->name, name) == 0))
            return s;
    }
    if (!create)
        return NULL;
    jb__scope **scopes = realloc(cfg->scopes, (cfg->scope_count + 1) * sizeof(*scopes));
    if (scopes == NULL)
        return NULL;
    cfg->scopes = scopes;
    jb__scope *s = scope_new(cfg->schema, kind, name);
    if (s == NULL)
        return NULL;
    scopes[cfg->scope_count++] = s;
    return s;
}

jb_config *jb_config_ref(jb_config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void jb_config_unref(jb_config *cfg)
{
    if (cfg == NULL)
        return;
    if (atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < cfg->scope_count; i++)
        scope_free(cfg->schema, cfg->scopes[i]);
    free(cfg->scopes);
    free(cfg);
}

uint64_t jb_config_version(const jb_config *cfg)
{
    return cfg->version;
}

/* ---- Getters ------------------------------------------------------------------ */

static const jb__value *lookup(const jb_config *cfg, const char *key, const char *component,
                               const char *feature, long *index)
{
    long idx = jb__schema_index(cfg->schema, key);
    if (idx < 0)
        JB_BUG("configuration key '%s' is not in the schema table", key);
    *index = idx;
    jb__scope *s;
    if (feature != NULL &&
        (s = jb__config_scope((jb_config *)cfg, JB__SCOPE_FEATURE, feature, 0)) != NULL &&
        s->values[idx].set)
        return &s->values[idx];
    if (component != NULL &&
        (s = jb__config_scope((jb_config *)cfg, JB__SCOPE_COMPONENT, component, 0)) != NULL &&
        s->values[idx].set)
        return &s->values[idx];
    return &cfg->scopes[0]->values[idx];
}

static const jb__value *typed(const jb_config *cfg, const char *key, const char *component,
                              const char *feature, jb_config_type type)
{
    long idx;
    const jb__value *v = lookup(cfg, key, component, feature, &idx);
    jb_config_type t = cfg->schema->keys[idx].type;
    if (t != type && !(type == JB_CONFIG_STRING && t == JB_CONFIG_ENUM))
        JB_BUG("configuration key '%s' is a %s, not a %s", key, jb_config_type_name(t),
               jb_config_type_name(type));
    return v;
}

int64_t jb_config_get_int(const jb_config *cfg, const char *key, const char *component,
                          const char *feature)
{
    return typed(cfg, key, component, feature, JB_CONFIG_INT)->u.i;
}

double jb_config_get_double(const jb_config *cfg, const char *key, const char *component,
                            const char *feature)
{
    return typed(cfg, key, component, feature, JB_CONFIG_FLOAT)->u.f;
}

int jb_config_get_bool(const jb_config *cfg, const char *key, const char *component,
                       const char *feature)
{
    return typed(cfg, key, component, feature, JB_CONFIG_BOOL)->u.b;
}

const char *jb_config_get_string(const jb_config *cfg, const char *key, const char *component,
                                 const char *feature)
{
    return typed(cfg, key, component, feature, JB_CONFIG_STRING)->u.s;
}

const char *const *jb_config_get_strlist(const jb_config *cfg, const char *key,
                                         const char *component, const char *feature, size_t *count)
{
    const jb__value *v = typed(cfg, key, component, feature, JB_CONFIG_STRLIST);
    if (count != NULL)
        *count = v->u.list.count;
    return (const char *const *)v->u.list.items;
}

const jb_config_map *jb_config_get_map(const jb_config *cfg, const char *key, const char *component,
                                       const char *feature)
{
    return typed(cfg, key, component, feature, JB_CONFIG_MAP)->u.map;
}

size_t jb_config_map_count(const jb_config_map *map)
{
    return map->count;
}

const char *jb_config_map_name(const jb_config_map *map, size_t i)
{
    if (i >= map->count)
        JB_BUG("jb_config_map_name: entry %zu of %zu", i, map->count);
    return map->items[i].name;
}

/* The value of @field of entry @i, which must be of @type unless @any_type. */
static const jb__value *map_field(const jb_config_map *map, size_t i, const char *field,
                                  int any_type, jb_config_type type)
{
    if (i >= map->count)
        JB_BUG("configuration map entry %zu of %zu", i, map->count);
    for (size_t f = 0; f < map->n_fields; f++) {
        const jb_config_key *spec = field_spec(map, f);
        if (strcmp(strrchr(spec->path, '.') + 1, field) != 0)
            continue;
        if (!any_type && type != spec->type &&
            !(type == JB_CONFIG_STRING && spec->type == JB_CONFIG_ENUM))
            JB_BUG("configuration field '%s' is a %s, not a %s", spec->path,
                   jb_config_type_name(spec->type), jb_config_type_name(type));
        return &map->items[i].fields[f];
    }
    JB_BUG("configuration map '%s' has no field '%s'", map->schema->keys[map->key].path, field);
    return NULL;
}

int jb_config_map_has(const jb_config_map *map, size_t i, const char *field)
{
    return map_field(map, i, field, 1, JB_CONFIG_INT)->set;
}

int64_t jb_config_map_get_int(const jb_config_map *map, size_t i, const char *field)
{
    const jb__value *v = map_field(map, i, field, 0, JB_CONFIG_INT);
    return v->set ? v->u.i : 0;
}

const char *jb_config_map_get_string(const jb_config_map *map, size_t i, const char *field)
{
    const jb__value *v = map_field(map, i, field, 0, JB_CONFIG_STRING);
    return v->set ? v->u.s : NULL;
}

/* ---- Walking and printing -------------------------------------------------------- */

void jb_config_foreach(const jb_config *cfg, jb_config_entry_fn fn, void *userdata)
{
    char value[4096];
    for (size_t s = 0; s < cfg->scope_count; s++) {
        const jb__scope *sc = cfg->scopes[s];
        for (size_t k = 0; k < cfg->schema->count; k++) {
            const jb__value *v = &sc->values[k];
            const jb_config_key *spec = &cfg->schema->keys[k];
            if (!v->set)
                continue;
            jb_config_entry e = {
                .key = spec->path,
                .component = sc->kind == JB__SCOPE_COMPONENT ? sc->name : NULL,
                .feature = sc->kind == JB__SCOPE_FEATURE ? sc->name : NULL,
                .value = jb__value_render(spec, v, value, sizeof(value)),
                .source = v->source != NULL ? v->source : "default",
                .spec = spec,
                .secret = v->secret || (spec->flags & JB_CONFIG_SECRET) != 0,
            };
            if (fn(&e, userdata) != 0)
                return;
        }
    }
}

static int dump_one(const jb_config_entry *e, void *userdata)
{
    FILE *out = userdata;
    if (e->component != NULL)
        fprintf(out, "components.%s.", e->component);
    else if (e->feature != NULL)
        fprintf(out, "features.%s.", e->feature);
    fprintf(out, "%s = %s  # %s\n", e->key, e->value, e->source);
    return 0;
}

void jb_config_dump(const jb_config *cfg, FILE *out)
{
    jb_config_foreach(cfg, dump_one, out);
}

/* ---- Comparing for a reload -------------------------------------------------------- */

void jb__strv_free(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p != NULL; p++)
        free(*p);
    free(v);
}

typedef struct strv {
    char **v;
    size_t n;
    int oom;
} strv;

static void strv_add(strv *l, const char *prefix, const char *name, const char *key)
{
    if (l->oom)
        return;
    char **v = realloc(l->v, (l->n + 2) * sizeof(*v));
    if (v == NULL) {
        l->oom = 1;
        return;
    }
    l->v = v;
    char buf[1024];
    if (prefix != NULL)
        snprintf(buf, sizeof(buf), "%s.%s.%s", prefix, name, key);
    else
        snprintf(buf, sizeof(buf), "%s", key);
    if ((v[l->n] = strdup(buf)) == NULL) {
        l->oom = 1;
        v[l->n] = NULL;
        return;
    }
    v[++l->n] = NULL;
}

static void diff_scope(const jb_config_schema *schema, const jb__scope *a, const jb__scope *b,
                       const jb__scope *named, strv *changed)
{
    static const jb__value unset;
    const char *prefix = named->kind == JB__SCOPE_COMPONENT ? "components" : "features";
    for (size_t k = 0; k < schema->count; k++) {
        const jb__value *x = a != NULL ? &a->values[k] : &unset;
        const jb__value *y = b != NULL ? &b->values[k] : &unset;
        if (!jb__value_equal(schema->keys[k].type, x, y))
            strv_add(changed, prefix, named->name, schema->keys[k].path);
    }
}

jb_status jb__config_diff(const jb_config *old, jb_config *new_cfg, char ***changed,
                          size_t *changed_count, char ***pending, size_t *pending_count)
{
    const jb_config_schema *schema = new_cfg->schema;
    strv ch = {0}, pe = {0};
    jb__scope *g_old = old->scopes[0], *g_new = new_cfg->scopes[0];
    for (size_t k = 0; k < schema->count && !pe.oom; k++) {
        const jb_config_key *spec = &schema->keys[k];
        if (jb__value_equal(spec->type, &g_old->values[k], &g_new->values[k]))
            continue;
        if (spec->flags & JB_CONFIG_RELOADABLE) {
            strv_add(&ch, NULL, NULL, spec->path);
            continue;
        }
        /* Not applied: the running value stays in the new snapshot. */
        strv_add(&pe, NULL, NULL, spec->path);
        jb__value keep;
        if (value_copy_typed(spec->type, &keep, &g_old->values[k]) != JB_OK) {
            pe.oom = 1;
            break;
        }
        value_release_typed(spec->type, &g_new->values[k]);
        g_new->values[k] = keep;
    }
    for (size_t i = 1; i < old->scope_count; i++) {
        const jb__scope *a = old->scopes[i];
        diff_scope(schema, a, jb__config_scope(new_cfg, a->kind, a->name, 0), a, &ch);
    }
    for (size_t i = 1; i < new_cfg->scope_count; i++) {
        const jb__scope *b = new_cfg->scopes[i];
        if (jb__config_scope((jb_config *)old, b->kind, b->name, 0) == NULL)
            diff_scope(schema, NULL, b, b, &ch);
    }
    if (ch.oom || pe.oom) {
        jb__strv_free(ch.v);
        jb__strv_free(pe.v);
        return JB_ENOMEM;
    }
    *changed = ch.v;
    *changed_count = ch.n;
    *pending = pe.v;
    *pending_count = pe.n;
    return JB_OK;
}
