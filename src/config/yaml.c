/*
 * The libyaml adapter: YAML text -> a tree of jb__ynode with line numbers.
 *
 * This is the only file of libjimbot that includes <yaml.h>. It reads the
 * event stream of libyaml's parser (not its document API, which loses the
 * difference between a plain and a quoted scalar that we need for nulls) and
 * builds maps, sequences and scalars, each with the 1-based line where it
 * starts.
 *
 * The input is untrusted (it is fuzzed): nesting deeper than JB__YAML_DEPTH,
 * more than JB__YAML_NODES nodes, aliases (which allow exponential blow-up),
 * duplicate keys, non-scalar keys, NUL bytes in scalars and several
 * documents are each a clean error, never an assert. On any error the whole
 * tree is discarded and exactly one error is reported: libyaml cannot go on
 * after a syntax error, and we keep the other cases the same for simplicity.
 */
#include "config/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define JB__YAML_DEPTH 64
#define JB__YAML_NODES 100000

typedef struct yparser {
    yaml_parser_t parser;
    const char *file;
    jb_config_errors *errs;
    size_t nodes;
    int failed;
} yparser;

static void yfail(yparser *p, int line, const char *key, const char *reason)
{
    if (!p->failed)
        jb__errors_add(p->errs, p->file, line, key, "%s", reason);
    p->failed = 1;
}

static int next_event(yparser *p, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&p->parser, ev)) {
        char reason[256];
        const char *problem = p->parser.problem ? p->parser.problem : "malformed YAML";
        if (p->parser.context != NULL)
            snprintf(reason, sizeof(reason), "YAML syntax error: %s %s", problem,
                     p->parser.context);
        else
            snprintf(reason, sizeof(reason), "YAML syntax error: %s", problem);
        yfail(p, (int)p->parser.problem_mark.line + 1, NULL, reason);
        return -1;
    }
    return 0;
}

void jb__ynode_free(jb__ynode *node)
{
    if (node == NULL)
        return;
    for (size_t i = 0; i < node->count; i++) {
        if (node->keys != NULL)
            free(node->keys[i]);
        jb__ynode_free(node->items[i]);
    }
    free(node->keys);
    free(node->key_lines);
    free(node->items);
    free(node->text);
    free(node);
}

int jb__ynode_is_null(const jb__ynode *node)
{
    if (node->kind != JB__YNODE_SCALAR || node->quoted)
        return 0;
    const char *t = node->text;
    return t[0] == '\0' || strcmp(t, "~") == 0 || strcmp(t, "null") == 0 ||
           strcmp(t, "Null") == 0 || strcmp(t, "NULL") == 0;
}

static jb__ynode *node_new(yparser *p, jb__ynode_kind kind, int line)
{
    if (++p->nodes > JB__YAML_NODES) {
        yfail(p, line, NULL, "document too large (more than 100000 nodes)");
        return NULL;
    }
    jb__ynode *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        yfail(p, line, NULL, "out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = line;
    return n;
}

/* Appends @child (and @key for maps, taking ownership of both). */
static int node_push(yparser *p, jb__ynode *n, char *key, int key_line, jb__ynode *child)
{
    size_t c = n->count + 1;
    jb__ynode **items = realloc(n->items, c * sizeof(*items));
    if (items != NULL)
        n->items = items;
    if (items != NULL && n->kind == JB__YNODE_MAP) {
        char **keys = realloc(n->keys, c * sizeof(*keys));
        if (keys != NULL)
            n->keys = keys;
        int *lines = realloc(n->key_lines, c * sizeof(*lines));
        if (lines != NULL)
            n->key_lines = lines;
        if (keys == NULL || lines == NULL)
            items = NULL;
        else {
            keys[n->count] = key;
            lines[n->count] = key_line;
        }
    }
    if (items == NULL) {
        free(key);
        jb__ynode_free(child);
        yfail(p, key_line, NULL, "out of memory");
        return -1;
    }
    n->items[n->count++] = child;
    return 0;
}

static jb__ynode *parse_node(yparser *p, yaml_event_t *ev, int depth, const char *path);

/*
 * Parses the events after a MAPPING_START or SEQUENCE_START into @n, whose
 * dotted path (for errors) is @path.
 */
static int parse_children(yparser *p, jb__ynode *n, int depth, const char *path)
{
    char child_path[512];
    snprintf(child_path, sizeof(child_path), "%s", path);
    yaml_event_t ev;
    for (;;) {
        if (next_event(p, &ev) != 0)
            return -1;
        int line = (int)ev.start_mark.line + 1;
        if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        char *key = NULL;
        int key_line = line;
        if (n->kind == JB__YNODE_MAP) {
            if (ev.type != YAML_SCALAR_EVENT) {
                yaml_event_delete(&ev);
                yfail(p, line, NULL, "a map key must be a plain word, not a map, list or alias");
                return -1;
            }
            const char *k = (const char *)ev.data.scalar.value;
            if (memchr(k, '\0', ev.data.scalar.length) != NULL) {
                yaml_event_delete(&ev);
                yfail(p, line, NULL, "a map key contains a NUL byte");
                return -1;
            }
            for (size_t i = 0; i < n->count; i++) {
                if (strcmp(n->keys[i], k) == 0) {
                    char reason[160], full[600];
                    snprintf(reason, sizeof(reason), "duplicate key (first at line %d)",
                             n->key_lines[i]);
                    snprintf(full, sizeof(full), "%s%s%.80s", path, path[0] ? "." : "", k);
                    yfail(p, line, full, reason);
                    yaml_event_delete(&ev);
                    return -1;
                }
            }
            key = strdup(k);
            yaml_event_delete(&ev);
            if (key == NULL) {
                yfail(p, line, NULL, "out of memory");
                return -1;
            }
            if (next_event(p, &ev) != 0) {
                free(key);
                return -1;
            }
        }
        if (key != NULL)
            snprintf(child_path, sizeof(child_path), "%s%s%.80s", path, path[0] ? "." : "", key);
        jb__ynode *child = parse_node(p, &ev, depth + 1, child_path);
        if (child == NULL) {
            free(key);
            return -1;
        }
        if (node_push(p, n, key, key_line, child) != 0)
            return -1;
    }
}

/* Builds the node that starts with @ev (which it deletes). */
static jb__ynode *parse_node(yparser *p, yaml_event_t *ev, int depth, const char *path)
{
    int line = (int)ev->start_mark.line + 1;
    jb__ynode *n = NULL;
    if (depth > JB__YAML_DEPTH) {
        yaml_event_delete(ev);
        yfail(p, line, NULL, "nesting deeper than 64 levels");
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length) != NULL) {
            yaml_event_delete(ev);
            yfail(p, line, NULL, "a value contains a NUL byte");
            return NULL;
        }
        n = node_new(p, JB__YNODE_SCALAR, line);
        if (n == NULL)
            break;
        const char *tag = (const char *)ev->data.scalar.tag;
        n->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
                    (tag != NULL && strcmp(tag, YAML_STR_TAG) == 0);
        n->text = strdup((const char *)ev->data.scalar.value);
        if (n->text == NULL) {
            yfail(p, line, NULL, "out of memory");
            jb__ynode_free(n);
            n = NULL;
        }
        break;
    }
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        n = node_new(p, ev->type == YAML_MAPPING_START_EVENT ? JB__YNODE_MAP : JB__YNODE_SEQ, line);
        if (n != NULL && parse_children(p, n, depth, path) != 0) {
            jb__ynode_free(n);
            n = NULL;
        }
        break;
    case YAML_ALIAS_EVENT:
        yfail(p, line, NULL, "YAML aliases (*name) are not supported; use the layers instead");
        break;
    default:
        yfail(p, line, NULL, "unexpected YAML event");
        break;
    }
    yaml_event_delete(ev);
    return n;
}

jb_status jb__yaml_parse(const char *file, const char *buf, size_t len, jb__ynode **out,
                         jb_config_errors *errs)
{
    yparser p = {.file = file, .errs = errs};
    if (!yaml_parser_initialize(&p.parser)) {
        jb__errors_add(errs, file, 0, NULL, "out of memory");
        return JB_ENOMEM;
    }
    yaml_parser_set_input_string(&p.parser, (const unsigned char *)buf, len);

    jb__ynode *root = NULL;
    int documents = 0;
    yaml_event_t ev;
    while (!p.failed) {
        if (next_event(&p, &ev) != 0)
            break;
        yaml_event_type_t type = ev.type;
        int line = (int)ev.start_mark.line + 1;
        if (type == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (type == YAML_DOCUMENT_START_EVENT) {
            yaml_event_delete(&ev);
            if (++documents > 1)
                yfail(&p, line, NULL, "only one YAML document is allowed per file");
            continue;
        }
        if (type == YAML_STREAM_START_EVENT || type == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        jb__ynode *n = parse_node(&p, &ev, 0, "");
        if (n == NULL)
            break;
        if (jb__ynode_is_null(n)) {
            jb__ynode_free(n); /* an empty document */
        } else if (n->kind != JB__YNODE_MAP) {
            jb__ynode_free(n);
            yfail(&p, line, NULL, "the top level must be a map of keys");
        } else {
            root = n;
        }
    }
    yaml_parser_delete(&p.parser);

    if (!p.failed && root == NULL) {
        p.nodes = 0;
        root = node_new(&p, JB__YNODE_MAP, 1);
    }
    if (p.failed) {
        jb__ynode_free(root);
        return JB_EPARSE;
    }
    *out = root;
    return JB_OK;
}
