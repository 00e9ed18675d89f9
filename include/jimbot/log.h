/*
 * jimbot/log.h: structured log lines.
 *
 * One line per event, to stderr by default:
 *
 *   2026-11-27T23:40:01.123Z info  config  reloaded configuration file=config/x.yaml changed=3
 *
 * that is: UTC time with milliseconds, level, module, a human message, then
 * key=value pairs. Values containing spaces, quotes or '=' are quoted by
 * jb_log_kv-style callers with jb_log_quote(); keys are plain words.
 *
 * The sink and the threshold are the one process-wide setting of libjimbot
 * (like gpr_set_log_function in gRPC): an embedding program routes our lines
 * into its own logger with jb_log_set_sink(). Writing a line is thread-safe:
 * each line is formatted into a local buffer and handed to the sink at once.
 */
#ifndef JIMBOT_LOG_H
#define JIMBOT_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum jb_log_level {
    JB_LOG_DEBUG = 0,
    JB_LOG_INFO = 1,
    JB_LOG_WARN = 2,
    JB_LOG_ERROR = 3,
} jb_log_level;

/*
 * Receives each formatted line (without the trailing newline). @line is
 * borrowed until the call returns. Called on whichever thread logged.
 */
typedef void (*jb_log_sink_fn)(jb_log_level level, const char *line, void *userdata);

/* Routes lines to @sink (NULL restores the default: stderr). */
void jb_log_set_sink(jb_log_sink_fn sink, void *userdata);

/* Lines below @level are dropped. The default is JB_LOG_INFO. */
void jb_log_set_level(jb_log_level level);

/* Parses "debug", "info", "warn" or "error"; returns 0, or -1 if unknown. */
int jb_log_level_parse(const char *name, jb_log_level *out);

/*
 * Logs one line. @kv_fmt (may be NULL) is a printf format for the trailing
 * key=value pairs, e.g. jb_log(JB_LOG_INFO, "config", "reloaded", "changed=%d", n).
 */
void jb_log(jb_log_level level, const char *module, const char *message, const char *kv_fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Writes @value into @buf (of @size bytes) quoted for a key=value pair when
 * it needs quoting (empty, or containing spaces, quotes, '=' or control
 * characters), as is otherwise. Returns @buf.
 */
const char *jb_log_quote(char *buf, unsigned size, const char *value);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_LOG_H */
