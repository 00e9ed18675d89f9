/*
 * jb__sublist: the subscription index. Maps patterns to items (the bus's
 * consumer groups) and finds every item whose pattern matches a topic.
 *
 * A trie keyed by token: each node has literal children (a hash map), one
 * '*' child, the items whose pattern ends with '>' there, and the items
 * whose pattern ends exactly there. Matching a topic of n tokens visits at
 * most the literal path plus the '*' branches, so its cost does not grow
 * with the number of subscriptions on unrelated topics.
 *
 * An item inserted under one pattern is reported at most once per match; an
 * item inserted under several patterns is reported once for each matching
 * pattern (callers that need a set deduplicate). Not thread-safe: the loop
 * thread owns it.
 */
#ifndef JB_BUS_SUBLIST_H
#define JB_BUS_SUBLIST_H

#include "jimbot/status.h"

#include <stddef.h>

typedef struct jb__sublist jb__sublist;

jb__sublist *jb__sublist_new(void);
/* Frees the index; items are the caller's. NULL is a no-op. */
void jb__sublist_free(jb__sublist *sl);

/* Adds @item under @pattern (validated; JB_EINVAL with the reason). */
jb_status jb__sublist_insert(jb__sublist *sl, const char *pattern, void *item, jb_error *err);

/* Removes one insertion of @item under @pattern; JB_ENOENT if there is none. */
jb_status jb__sublist_remove(jb__sublist *sl, const char *pattern, void *item);

/*
 * Calls @fn for each item whose pattern matches @topic (a valid topic);
 * returns how many calls were made. @fn must not change the index.
 */
size_t jb__sublist_match(const jb__sublist *sl, const char *topic,
                         void (*fn)(void *item, void *userdata), void *userdata);

/* Number of insertions currently held. */
size_t jb__sublist_count(const jb__sublist *sl);

#endif /* JB_BUS_SUBLIST_H */
