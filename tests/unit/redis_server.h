/*
 * A real redis-server for the unit tests of the Redis adapter and of the
 * namespaces (test_coord_redis.c, test_coord_redis_ns.c): started on
 * loopback with its files in the test's temporary folder, no persistence.
 * scripts/deps.sh installs redis-server, so a missing binary fails the test
 * rather than skipping it. Waiting until it answers is the caller's (each
 * test has its own client to ask with).
 */
#ifndef JB_TESTS_REDIS_SERVER_H
#define JB_TESTS_REDIS_SERVER_H

#include <sys/types.h>

/* A loopback TCP port nobody listens on now (the kernel's pick). */
int jbt_free_port(void);

/*
 * Starts redis-server on 127.0.0.1:@port with --dir @dir (its log in
 * @dir/redis.log), with --requirepass @password and --unixsocket @unix_socket
 * when not NULL. Returns its pid. $JB_REDIS_SERVER overrides the binary.
 */
pid_t jbt_redis_start(const char *dir, int port, const char *password, const char *unix_socket);

/* SIGTERM and reap *@pid, then set it to 0; 0 is a no-op. */
void jbt_redis_stop(pid_t *pid);

#endif /* JB_TESTS_REDIS_SERVER_H */
