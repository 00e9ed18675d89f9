/*
 * CRC32C (Castagnoli), internal to libjimbot: the checksum of the durable
 * log's records and segment headers.
 *
 * The usual convention: reflected polynomial 0x82F63B78, initial value and
 * final xor 0xFFFFFFFF, so CRC32C("123456789") == 0xE3069283.
 */
#ifndef JIMBOT_LOG_CRC32C_H
#define JIMBOT_LOG_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Extends @crc (0 for a fresh checksum, or a previous result) with @len bytes
 * at @buf and returns the new checksum. Uses the CPU's crc32 instruction when
 * it has one, the table otherwise; both give the same result.
 */
uint32_t jb__crc32c(uint32_t crc, const void *buf, size_t len);

/* The table-driven implementation, always available. */
uint32_t jb__crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* True when this CPU runs the hardware implementation (x86-64 with SSE4.2). */
bool jb__crc32c_hw_available(void);

/*
 * The hardware implementation. Only call it when jb__crc32c_hw_available()
 * says true; elsewhere it falls back to the table.
 */
uint32_t jb__crc32c_hw(uint32_t crc, const void *buf, size_t len);

#endif /* JIMBOT_LOG_CRC32C_H */
