/*
 * Internals of the durable log shared with its unit tests: the on-disk
 * constants (the format itself is described at the top of store.c) and the
 * test hooks. Nothing outside src/store/ and tests/unit/test_store.c uses this.
 */
#ifndef JIMBOT_LOG_STORE_INTERNAL_H
#define JIMBOT_LOG_STORE_INTERNAL_H

#include "jimbot/store.h"

#define JB__SEG_MAGIC        "JBLOGSEG"
#define JB__SEG_VERSION      1u
#define JB__SEG_HEADER_BYTES 32u
#define JB__REC_HEADER_BYTES 24u
/* "%020llu.seg": 20 digits, the suffix, the terminator. */
#define JB__SEG_NAME_SIZE 25u

/*
 * Test hook: makes the writer sleep @ms before each write job, so that a
 * test can fill the buffers and see JB_EBACKPRESSURE. Call it only while no
 * write is in flight (right after open, for instance).
 */
void jb__store_set_write_delay(jb_store *s, unsigned ms);

#endif /* JIMBOT_LOG_STORE_INTERNAL_H */
