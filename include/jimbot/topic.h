/*
 * jimbot/topic.h: topic names and subscription patterns.
 *
 * A topic is one or more tokens separated by '.': "game_events",
 * "game_events.hand_played". A token is 1..64 bytes of printable ASCII other
 * than '.', '*', '>' and space; a topic is at most 255 bytes and 16 tokens.
 *
 * A pattern is a topic whose tokens may also be '*' (exactly one token) or,
 * as the last token only, '>' (one or more remaining tokens), as NATS subjects
 * are: "game_events.*" matches "game_events.hand_played" but not
 * "game_events" nor "game_events.a.b"; "game_events.>" matches the last two
 * but not "game_events". A partial wildcard ("game*") is an ordinary
 * character sequence and therefore invalid.
 *
 * Stateless; safe on any thread.
 */
#ifndef JIMBOT_TOPIC_H
#define JIMBOT_TOPIC_H

#include "jimbot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JB_TOPIC_MAX_BYTES  255
#define JB_TOPIC_MAX_TOKENS 16
#define JB_TOKEN_MAX_BYTES  64

/* JB_OK if @topic is a valid topic (no wildcards); JB_EINVAL with the reason in @err. */
jb_status jb_topic_validate(const char *topic, jb_error *err);

/* JB_OK if @pattern is a valid pattern; JB_EINVAL with the reason in @err. */
jb_status jb_pattern_validate(const char *pattern, jb_error *err);

/* 1 if valid @pattern matches valid @topic, else 0. */
int jb_pattern_matches(const char *pattern, const char *topic);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_TOPIC_H */
