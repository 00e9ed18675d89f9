/*
 * Topic and pattern validation and direct matching (include/jimbot/topic.h).
 *
 * jb_pattern_matches() walks both strings token by token without allocating;
 * the subscription index (sublist.c) is the fast path for many patterns, and
 * this function is its reference (the unit tests compare the two).
 */
#include "jimbot/topic.h"

#include <string.h>

static int token_char_ok(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '.' && c != '*' && c != '>';
}

static jb_status validate(const char *s, int allow_wildcards, jb_error *err)
{
    const char *what = allow_wildcards ? "pattern" : "topic";
    if (s == NULL || s[0] == '\0')
        return jb_error_set(err, JB_EINVAL, "empty %s", what);
    size_t len = strlen(s);
    if (len > JB_TOPIC_MAX_BYTES)
        return jb_error_set(err, JB_EINVAL, "%s is %zu bytes long (at most %d)", what, len,
                            JB_TOPIC_MAX_BYTES);
    int tokens = 0;
    const char *p = s;
    for (;;) {
        const char *end = strchr(p, '.');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        tokens++;
        if (n == 0)
            return jb_error_set(err, JB_EINVAL, "%s '%s' has an empty token at byte %zu", what, s,
                                (size_t)(p - s));
        if (n > JB_TOKEN_MAX_BYTES)
            return jb_error_set(err, JB_EINVAL, "%s '%s' has a token of %zu bytes (at most %d)",
                                what, s, n, JB_TOKEN_MAX_BYTES);
        int wildcard = n == 1 && (p[0] == '*' || p[0] == '>');
        if (wildcard && !allow_wildcards)
            return jb_error_set(err, JB_EINVAL,
                                "topic '%s' contains the wildcard '%c' (only patterns may)", s,
                                p[0]);
        if (wildcard && p[0] == '>' && end != NULL)
            return jb_error_set(err, JB_EINVAL, "pattern '%s': '>' must be the last token", s);
        if (!wildcard) {
            for (size_t i = 0; i < n; i++) {
                if (!token_char_ok((unsigned char)p[i]))
                    return jb_error_set(
                        err, JB_EINVAL, "%s '%s' has an invalid character 0x%02x at byte %zu%s",
                        what, s, (unsigned char)p[i], (size_t)(p - s) + i,
                        (p[i] == '*' || p[i] == '>') ? " (wildcards must be whole tokens)" : "");
            }
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    if (tokens > JB_TOPIC_MAX_TOKENS)
        return jb_error_set(err, JB_EINVAL, "%s '%s' has %d tokens (at most %d)", what, s, tokens,
                            JB_TOPIC_MAX_TOKENS);
    return JB_OK;
}

jb_status jb_topic_validate(const char *topic, jb_error *err)
{
    return validate(topic, 0, err);
}

jb_status jb_pattern_validate(const char *pattern, jb_error *err)
{
    return validate(pattern, 1, err);
}

int jb_pattern_matches(const char *pattern, const char *topic)
{
    const char *p = pattern;
    const char *t = topic;
    for (;;) {
        const char *pe = strchr(p, '.');
        const char *te = strchr(t, '.');
        size_t pn = pe ? (size_t)(pe - p) : strlen(p);
        size_t tn = te ? (size_t)(te - t) : strlen(t);
        if (pn == 1 && p[0] == '>')
            return 1; /* The topic has at least this one token left. */
        if (!(pn == 1 && p[0] == '*') && (pn != tn || memcmp(p, t, pn) != 0))
            return 0;
        if (pe == NULL || te == NULL)
            return pe == NULL && te == NULL;
        p = pe + 1;
        t = te + 1;
    }
}
