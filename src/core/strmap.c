/*
 * String-keyed hash map (src/core/strmap.h).
 *
 * Invariants: cap is 0 or a power of two with len * 2 <= cap; every key sits
 * at or after its home slot (hash & (cap - 1)) with no empty slot between
 * home and key (linear probing), which backward-shift deletion preserves.
 */
#include "core/strmap.h"

#include "jimbot/status.h"

#include <stdlib.h>
#include <string.h>

static size_t hash_key(const char *s)
{
    size_t h = 14695981039346656037ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

void jb__strmap_init(jb__strmap *m)
{
    m->slots = NULL;
    m->cap = 0;
    m->len = 0;
}

void jb__strmap_release(jb__strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    jb__strmap_init(m);
}

static jb__strmap_slot *find(const jb__strmap *m, const char *key, size_t h)
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        jb__strmap_slot *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->hash == h && strcmp(s->key, key) == 0)
            return s;
    }
}

void *jb__strmap_get(const jb__strmap *m, const char *key)
{
    jb__strmap_slot *s = find(m, key, hash_key(key));
    return s ? s->value : NULL;
}

static void place(jb__strmap_slot *slots, size_t cap, jb__strmap_slot item)
{
    size_t mask = cap - 1;
    size_t i = item.hash & mask;
    while (slots[i].key != NULL)
        i = (i + 1) & mask;
    slots[i] = item;
}

static void grow(jb__strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 16;
    jb__strmap_slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        JB_BUG("out of memory growing a map to %zu slots", cap);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key != NULL)
            place(slots, cap, m->slots[i]);
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
}

void *jb__strmap_put(jb__strmap *m, const char *key, void *value)
{
    size_t h = hash_key(key);
    jb__strmap_slot *s = find(m, key, h);
    if (s != NULL) {
        void *old = s->value;
        s->value = value;
        return old;
    }
    if ((m->len + 1) * 2 > m->cap)
        grow(m);
    char *copy = strdup(key);
    if (copy == NULL)
        JB_BUG("out of memory copying a map key");
    place(m->slots, m->cap, (jb__strmap_slot){.key = copy, .value = value, .hash = h});
    m->len++;
    /* The slot owns the copy now (cppcheck cannot follow it through place()). */
    // cppcheck-suppress memleak
    return NULL;
}

void *jb__strmap_del(jb__strmap *m, const char *key)
{
    jb__strmap_slot *s = find(m, key, hash_key(key));
    if (s == NULL)
        return NULL;
    void *value = s->value;
    free(s->key);
    size_t mask = m->cap - 1;
    size_t hole = (size_t)(s - m->slots);
    /* Backward shift: pull later entries of the probe run into the hole. */
    for (size_t i = (hole + 1) & mask; m->slots[i].key != NULL; i = (i + 1) & mask) {
        size_t home = m->slots[i].hash & mask;
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        int home_after_hole = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!home_after_hole) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole] = (jb__strmap_slot){0};
    m->len--;
    return value;
}

int jb__strmap_next(const jb__strmap *m, size_t *iter, const char **key, void **value)
{
    for (; *iter < m->cap; (*iter)++) {
        const jb__strmap_slot *s = &m->slots[*iter];
        if (s->key != NULL) {
            *key = s->key;
            *value = s->value;
            (*iter)++;
            return 1;
        }
    }
    return 0;
}
