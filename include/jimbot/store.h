/*
 * jimbot/store.h: the durable log, an append-only store of opaque records.
 *
 * A record is (sequence, timestamp_ms, payload bytes). The store assigns the
 * sequences: one global, strictly increasing counter that starts at 1 and
 * survives restarts, and never hands out a sequence twice, even after a
 * damaged log was repaired. Sequences are gap-free except where a repair
 * (or the truncation of a record that may have been durable) dropped some:
 * the next sequence then starts above the highest one dropped. It does not know what the bytes mean
 * (the bus stores encoded events in them).
 *
 * Two modes with one API:
 *   - on disk (options.dir set): segment files with a CRC32C per record, a
 *     group-committing writer on libuv's threadpool, recovery at open. The
 *     format is described in src/store/store.c and docs/durable-log.md.
 *   - in memory (options.dir NULL): the same behaviour without files, for
 *     tests and test mode. Everything is "durable" as soon as it is appended.
 *
 * Threading: a jb_store belongs to the loop it was opened on. Every function
 * here must be called on that loop's thread, and every callback runs there.
 * The writes and fsyncs happen on libuv's threadpool, never on the loop.
 *
 * Durability: jb_store_append() only copies into memory. A record is durable
 * once jb_store_durable_seq() has reached its sequence, which the flush
 * callback reports; "durable" follows the fsync policy:
 *   JB_STORE_FSYNC_BATCH   (default) written and fdatasync'd, one fsync per
 *                          flush however many records it covers (group commit);
 *   JB_STORE_FSYNC_ALWAYS  the same, and every write the store issues (also
 *                          the background ones) is fsync'd;
 *   JB_STORE_FSYNC_NONE    written with write(), in the kernel's page cache:
 *                          survives a crash of the process, not of the host.
 *
 * Memory stays bounded: once max_unflushed_bytes are buffered and not yet
 * written, appends fail with JB_EBACKPRESSURE until the writer catches up.
 *
 * A store that hits an I/O error while writing stops: later appends and
 * flushes fail with JB_EIO (the detail was logged), records already written
 * stay readable, and reopening the directory recovers what reached the disk.
 */
#ifndef JIMBOT_STORE_H
#define JIMBOT_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <uv.h>

#include "jimbot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct jb_store jb_store;

typedef enum jb_store_fsync {
    JB_STORE_FSYNC_BATCH = 0,
    JB_STORE_FSYNC_ALWAYS = 1,
    JB_STORE_FSYNC_NONE = 2,
} jb_store_fsync;

/* The largest payload one record may carry. */
#define JB_STORE_MAX_PAYLOAD (64u * 1024u * 1024u)

/*
 * Options, copied by jb_store_open(); zero fields take the defaults, so a
 * zero-initialised struct is a valid in-memory store with no retention.
 */
typedef struct jb_store_options {
    /* Data directory (created if missing, parent must exist); NULL: in memory. */
    const char *dir;
    jb_store_fsync fsync;
    /* A segment is sealed and a new one started past this size (64 MiB). */
    uint64_t segment_bytes;
    /* Appended but not yet written bytes above which appends fail (64 MiB). */
    size_t max_unflushed_bytes;
    /* Start a background write once this much is buffered (1 MiB). */
    size_t write_trigger_bytes;
    /* Delete sealed segments whose newest timestamp is older (0: never). */
    int64_t retention_max_age_ms;
    /* Delete the oldest sealed segments while the total is larger (0: never). */
    uint64_t retention_max_bytes;
} jb_store_options;

/* Parses "always", "batch" or "none". */
jb_status jb_store_fsync_parse(const char *name, jb_store_fsync *out, jb_error *err);

/*
 * Opens (creating if needed) the store described by @opts on @loop and
 * stores the handle in *@out. Recovery runs here, synchronously: every
 * segment is scanned and its CRCs checked, the next sequence and the read
 * index are rebuilt. A torn tail of the newest segment (a bad record with no
 * valid record after it) is truncated at the bad record, with a warning
 * naming the file and the offset. Damage followed by valid records, damage in
 * an older segment, a missing segment or a record with the wrong sequence
 * fail with JB_ECORRUPT, a message naming the file, the offset and the
 * sequences around the damage, and nothing changed on disk: see
 * jb_store_verify() and jb_store_repair(). Oldest segments missing (an
 * interrupted retention delete) are not damage. Another open store on the
 * same directory (any process) gives JB_EUNAVAILABLE. @opts and its strings
 * are copied. The caller ends the store with jb_store_close().
 */
jb_status jb_store_open(uv_loop_t *loop, const jb_store_options *opts, jb_store **out,
                        jb_error *err);

typedef void (*jb_store_close_cb)(jb_status status, void *userdata);

/*
 * Starts closing @s: later appends and flushes fail with JB_ECLOSED; what was
 * appended is written and fsync'd (whatever the policy), pending flush
 * callbacks run, files and handles are closed, then @cb (may be NULL) runs
 * on the loop with JB_OK or the write error, and @s is freed after it
 * returns. Fails with JB_ECLOSED (and never calls @cb) when already closing.
 */
jb_status jb_store_close(jb_store *s, jb_store_close_cb cb, void *userdata);

/*
 * Appends one record and stores its sequence in *@seq (may be NULL). Copies
 * @payload; cheap (a CRC and a memcpy). JB_EBACKPRESSURE when the writer is
 * behind by more than max_unflushed_bytes, JB_ETOOBIG for a payload over
 * JB_STORE_MAX_PAYLOAD or max_unflushed_bytes, JB_ECLOSED while closing,
 * JB_EIO after a write error. A failed append changes nothing.
 */
jb_status jb_store_append(jb_store *s, int64_t timestamp_ms, const void *payload, size_t len,
                          uint64_t *seq, jb_error *err);

typedef struct jb_store_entry {
    int64_t timestamp_ms;
    const void *payload;
    size_t len;
} jb_store_entry;

/*
 * Appends @n records with consecutive sequences, all or none; the first
 * sequence goes to *@first_seq (may be NULL). Errors as jb_store_append().
 */
jb_status jb_store_append_batch(jb_store *s, const jb_store_entry *entries, size_t n,
                                uint64_t *first_seq, jb_error *err);

/*
 * Called once everything appended before the matching jb_store_flush() is
 * durable, with JB_OK and the durable sequence (which may be further), or
 * with the error that stopped the store (@err holds the detail; NULL on
 * success). Arguments are borrowed until the callback returns.
 */
typedef void (*jb_store_flush_cb)(jb_status status, uint64_t durable_seq, const jb_error *err,
                                  void *userdata);

/*
 * Asks for everything appended so far to become durable and calls @cb when
 * it is, never from inside this call. Requests coalesce: while one write and
 * fsync is in flight, every later request rides the next one; callbacks run
 * in the order of the requests. Fails (without calling @cb) with JB_ECLOSED
 * while closing, JB_EIO after a write error, JB_ENOMEM.
 */
jb_status jb_store_flush(jb_store *s, jb_store_flush_cb cb, void *userdata);

/* The highest sequence that is durable under the policy (0: none yet). */
uint64_t jb_store_durable_seq(const jb_store *s);

/* The lowest sequence still stored; first > last when the store is empty. */
uint64_t jb_store_first_seq(const jb_store *s);

/* The highest sequence appended (0 when nothing ever was). */
uint64_t jb_store_last_seq(const jb_store *s);

typedef struct jb_store_record {
    uint64_t seq;
    int64_t timestamp_ms;
    const void *payload;
    size_t len;
} jb_store_record;

/*
 * Visits one record; @rec and the payload are borrowed until it returns.
 * Return 0 to go on, anything else to stop. A visitor may append and flush,
 * but not close the store or run retention.
 */
typedef int (*jb_store_visit_fn)(const jb_store_record *rec, void *userdata);

/*
 * Visits, in order, the records from @from_seq on, at most @max_records (0:
 * no limit) and at most @max_bytes of payload (0: no limit; the first record
 * is always visited, however large). Records not yet durable are included:
 * a caller that must only see durable ones stops at jb_store_durable_seq().
 * *@n_visited (may be NULL) gets the count. Starting past the last sequence
 * visits nothing; starting below jb_store_first_seq() fails with JB_ENOENT
 * (retention deleted it). Where a repair dropped sequences the visit goes on
 * at the next record, whose sequence is higher (read rec->seq); a start
 * inside such a gap begins there. A record whose CRC no longer matches on
 * disk fails with JB_ECORRUPT. Synchronous: reads of written records use
 * pread().
 */
jb_status jb_store_read(jb_store *s, uint64_t from_seq, size_t max_records, size_t max_bytes,
                        jb_store_visit_fn visit, void *userdata, size_t *n_visited, jb_error *err);

/*
 * Finds the first record (lowest sequence) whose timestamp is at or after
 * @timestamp_ms and stores its sequence in *@seq. Timestamps need not be
 * monotonic. JB_ENOENT when no record is that recent.
 */
jb_status jb_store_seek_time(jb_store *s, int64_t timestamp_ms, uint64_t *seq, jb_error *err);

/*
 * Tells the store the lowest sequence any reader still needs: retention never
 * deletes a segment holding it or anything above it. Until the first call
 * nothing is deleted; pass UINT64_MAX when no reader needs anything.
 */
void jb_store_set_min_needed(jb_store *s, uint64_t seq);

/*
 * Applies retention now, with @now_ms as the wall-clock time (milliseconds
 * since the epoch, as the timestamps): deletes whole sealed segments, oldest
 * first, while they are older than retention_max_age_ms or the store is
 * larger than retention_max_bytes, and only below the floor set with
 * jb_store_set_min_needed(). The newest segment is never deleted. Segments
 * leave the store at once; their files are unlinked by the writer thread.
 * *@n_deleted (may be NULL) gets the count. The store also runs this after
 * every completed write. JB_EINVAL when called from a read visitor.
 */
jb_status jb_store_retain(jb_store *s, int64_t now_ms, size_t *n_deleted, jb_error *err);

typedef struct jb_store_stats {
    uint64_t segments; /* segments held */
    uint64_t bytes;    /* their total size, headers included */
    uint64_t buffered; /* appended bytes not yet written */
    uint64_t writes;   /* write jobs completed */
    uint64_t fsyncs;   /* fsync/fdatasync calls, directories included */
    uint64_t deleted;  /* segments removed by retention */
} jb_store_stats;

/* Fills *@out with the counters above. */
void jb_store_get_stats(const jb_store *s, jb_store_stats *out);

/* One damaged place found by jb_store_verify(). */
typedef struct jb_store_problem {
    char file[32];       /* the segment file's name, in the directory */
    uint64_t offset;     /* where the damage starts in it */
    char what[64];       /* why the bytes there are not a valid record */
    uint64_t seq_before; /* the last valid sequence before it (0: none) */
    uint64_t seq_after;  /* the first valid sequence after it (0: none) */
    int torn_tail;       /* nothing valid after it: what a crash leaves, not damage */
} jb_store_problem;

/* What jb_store_verify() and jb_store_repair() found and did. */
typedef struct jb_store_report {
    uint64_t segments;  /* segment files */
    uint64_t records;   /* valid records */
    uint64_t first_seq; /* lowest and highest valid sequence (0: none) */
    uint64_t last_seq;
    uint64_t high_water; /* the persisted high-water mark (0: none) */
    uint64_t next_seq;   /* what the next append gets after an open */
    jb_store_problem *problems;
    size_t n_problems;
    int damaged; /* a problem that makes jb_store_open() refuse */
    /* jb_store_repair() only: what it dropped. */
    int repaired;
    uint64_t dropped, dropped_first, dropped_last;
} jb_store_report;

/*
 * Checks every header and record CRC of every segment in @dir, without a
 * loop and without changing anything, and fills *@report (release it with
 * jb_store_report_release()). Returns JB_OK when the check ran, whatever it
 * found (report->damaged says); JB_ENOENT when @dir does not exist,
 * JB_EUNAVAILABLE when a store has it open, JB_EIO, JB_ENOMEM, JB_ECORRUPT
 * for an unreadable high-water mark.
 */
jb_status jb_store_verify(const char *dir, jb_store_report *report, jb_error *err);

/*
 * jb_store_verify(), then, when the log is damaged, truncates it knowingly
 * at the first damage: the segment holding it ends there, every later
 * segment is deleted, and the high-water mark is raised first so that no
 * dropped sequence is ever handed out again. report->dropped counts the
 * valid records dropped, dropped_first..dropped_last their sequences. A log
 * without damage is left alone (a torn tail is left for jb_store_open()).
 */
jb_status jb_store_repair(const char *dir, jb_store_report *report, jb_error *err);

/* Prints @r for a person: one summary, then a line per problem. */
void jb_store_report_print(const jb_store_report *r, FILE *out);

/* Frees what a report holds (not the struct); a zeroed report is fine. */
void jb_store_report_release(jb_store_report *r);

#ifdef __cplusplus
}
#endif

#endif /* JIMBOT_STORE_H */
