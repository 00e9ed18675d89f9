/*
 * jb__strmap: a hash map from NUL-terminated strings to pointers, internal to
 * libjimbot (topic tokens, group names, event ids).
 *
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones), FNV-1a hashing, load factor at most 1/2. The map copies keys
 * on insert and frees them on delete; values are borrowed. Not thread-safe:
 * one owner (the loop thread).
 */
#ifndef JB_CORE_STRMAP_H
#define JB_CORE_STRMAP_H

#include <stddef.h>

typedef struct jb__strmap_slot {
    char *key; /* NULL: empty slot */
    void *value;
    size_t hash;
} jb__strmap_slot;

typedef struct jb__strmap {
    jb__strmap_slot *slots;
    size_t cap; /* power of two, or 0 */
    size_t len;
} jb__strmap;

void jb__strmap_init(jb__strmap *m);
/* Frees the keys and the table; values are the caller's. */
void jb__strmap_release(jb__strmap *m);

/* The value for @key, or NULL. */
void *jb__strmap_get(const jb__strmap *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *jb__strmap_put(jb__strmap *m, const char *key, void *value);
/* Removes @key; returns its value or NULL if absent. */
void *jb__strmap_del(jb__strmap *m, const char *key);

/*
 * Iteration: for (size_t i = 0; jb__strmap_next(m, &i, &key, &value);) ...
 * The map must not change during iteration.
 */
int jb__strmap_next(const jb__strmap *m, size_t *iter, const char **key, void **value);

#endif /* JB_CORE_STRMAP_H */
