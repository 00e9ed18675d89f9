/*
 * The subscription index (src/bus/sublist.h).
 *
 * Invariant: every node other than the root holds at least one item or has
 * a child; removal prunes nodes that become empty, so the trie's size
 * follows the live subscriptions, not their history.
 */
#include "bus/sublist.h"

#include "core/strmap.h"
#include "jimbot/topic.h"

#include <stdlib.h>
#include <string.h>

typedef struct items {
    void **v;
    size_t n, cap;
} items;

typedef struct node {
    jb__strmap children; /* token -> struct node * */
    struct node *star;
    items gt;    /* patterns ending in '>' below this node */
    items exact; /* patterns ending at this node */
} node;

struct jb__sublist {
    node root;
    size_t count;
};

static void items_push(items *it, void *item)
{
    if (it->n == it->cap) {
        size_t cap = it->cap ? it->cap * 2 : 4;
        void **v = realloc(it->v, cap * sizeof(*v));
        if (v == NULL)
            JB_BUG("out of memory in the subscription index");
        it->v = v;
        it->cap = cap;
    }
    it->v[it->n++] = item;
}

static int items_remove(items *it, void *item)
{
    for (size_t i = 0; i < it->n; i++) {
        if (it->v[i] == item) {
            it->v[i] = it->v[--it->n];
            return 1;
        }
    }
    return 0;
}

static node *node_new(void)
{
    node *n = calloc(1, sizeof(*n));
    if (n == NULL)
        JB_BUG("out of memory in the subscription index");
    jb__strmap_init(&n->children);
    return n;
}

static void node_free_contents(node *n)
{
    size_t it = 0;
    const char *key;
    void *child;
    while (jb__strmap_next(&n->children, &it, &key, &child)) {
        node_free_contents(child);
        free(child);
    }
    jb__strmap_release(&n->children);
    if (n->star != NULL) {
        node_free_contents(n->star);
        free(n->star);
    }
    free(n->gt.v);
    free(n->exact.v);
}

static int node_empty(const node *n)
{
    return n->children.len == 0 && n->star == NULL && n->gt.n == 0 && n->exact.n == 0;
}

jb__sublist *jb__sublist_new(void)
{
    jb__sublist *sl = calloc(1, sizeof(*sl));
    if (sl == NULL)
        return NULL;
    jb__strmap_init(&sl->root.children);
    return sl;
}

void jb__sublist_free(jb__sublist *sl)
{
    if (sl == NULL)
        return;
    node_free_contents(&sl->root);
    free(sl);
}

/*
 * Splits a copy of @s (at most JB_TOPIC_MAX_BYTES) into NUL-terminated
 * tokens; returns their number, or -1 if there are more than
 * JB_TOPIC_MAX_TOKENS (the caller's array size).
 */
static int split(const char *s, char *buf, char **tokens)
{
    int n = 0;
    strcpy(buf, s);
    tokens[n++] = buf;
    for (char *p = buf; *p; p++) {
        if (*p == '.') {
            if (n == JB_TOPIC_MAX_TOKENS)
                return -1;
            *p = '\0';
            tokens[n++] = p + 1;
        }
    }
    return n;
}

jb_status jb__sublist_insert(jb__sublist *sl, const char *pattern, void *item, jb_error *err)
{
    jb_status st = jb_pattern_validate(pattern, err);
    if (st != JB_OK)
        return st;
    char buf[JB_TOPIC_MAX_BYTES + 1];
    char *tokens[JB_TOPIC_MAX_TOKENS];
    int n = split(pattern, buf, tokens);
    node *cur = &sl->root;
    for (int i = 0; i < n; i++) {
        if (strcmp(tokens[i], ">") == 0) {
            items_push(&cur->gt, item);
            sl->count++;
            return JB_OK;
        }
        node *next;
        if (strcmp(tokens[i], "*") == 0) {
            if (cur->star == NULL)
                cur->star = node_new();
            next = cur->star;
        } else {
            next = jb__strmap_get(&cur->children, tokens[i]);
            if (next == NULL) {
                next = node_new();
                jb__strmap_put(&cur->children, tokens[i], next);
            }
        }
        cur = next;
    }
    items_push(&cur->exact, item);
    sl->count++;
    return JB_OK;
}

jb_status jb__sublist_remove(jb__sublist *sl, const char *pattern, void *item)
{
    if (jb_pattern_validate(pattern, NULL) != JB_OK)
        return JB_ENOENT;
    char buf[JB_TOPIC_MAX_BYTES + 1];
    char *tokens[JB_TOPIC_MAX_TOKENS];
    int n = split(pattern, buf, tokens);
    node *path[JB_TOPIC_MAX_TOKENS + 1];
    int depth = 0;
    node *cur = &sl->root;
    path[depth++] = cur;
    int removed = 0;
    for (int i = 0; i < n && !removed; i++) {
        if (strcmp(tokens[i], ">") == 0) {
            if (!items_remove(&cur->gt, item))
                return JB_ENOENT;
            removed = 1;
            break;
        }
        cur = strcmp(tokens[i], "*") == 0 ? cur->star : jb__strmap_get(&cur->children, tokens[i]);
        if (cur == NULL)
            return JB_ENOENT;
        path[depth++] = cur;
    }
    if (!removed && !items_remove(&cur->exact, item))
        return JB_ENOENT;
    sl->count--;

    /* Prune nodes left empty, deepest first; path[k] is reached by tokens[k - 1]. */
    for (int k = depth - 1; k >= 1 && node_empty(path[k]); k--) {
        node *parent = path[k - 1];
        if (strcmp(tokens[k - 1], "*") == 0)
            parent->star = NULL;
        else
            jb__strmap_del(&parent->children, tokens[k - 1]);
        node_free_contents(path[k]);
        free(path[k]);
    }
    return JB_OK;
}

static size_t match(const node *n, char **tokens, int i, int count,
                    void (*fn)(void *item, void *userdata), void *userdata)
{
    size_t calls = 0;
    if (i < count) {
        for (size_t k = 0; k < n->gt.n; k++, calls++)
            fn(n->gt.v[k], userdata);
    }
    if (i == count) {
        for (size_t k = 0; k < n->exact.n; k++, calls++)
            fn(n->exact.v[k], userdata);
        return calls;
    }
    const node *lit = jb__strmap_get(&n->children, tokens[i]);
    if (lit != NULL)
        calls += match(lit, tokens, i + 1, count, fn, userdata);
    if (n->star != NULL)
        calls += match(n->star, tokens, i + 1, count, fn, userdata);
    return calls;
}

size_t jb__sublist_match(const jb__sublist *sl, const char *topic,
                         void (*fn)(void *item, void *userdata), void *userdata)
{
    if (strlen(topic) > JB_TOPIC_MAX_BYTES)
        return 0;
    char buf[JB_TOPIC_MAX_BYTES + 1];
    char *tokens[JB_TOPIC_MAX_TOKENS];
    int n = split(topic, buf, tokens);
    return n < 0 ? 0 : match(&sl->root, tokens, 0, n, fn, userdata);
}

size_t jb__sublist_count(const jb__sublist *sl)
{
    return sl->count;
}
