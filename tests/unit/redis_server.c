/*
 * redis_server.h: redis-server started and stopped for the unit tests.
 */
#include "redis_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static const char *redis_binary(void)
{
    const char *env = getenv("JB_REDIS_SERVER");
    return env != NULL && *env != '\0' ? env : "/usr/bin/redis-server";
}

int jbt_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

pid_t jbt_redis_start(const char *dir, int port, const char *password, const char *unix_socket)
{
    if (access(redis_binary(), X_OK) != 0)
        fail_msg("no %s: install redis-server (scripts/deps.sh)", redis_binary());
    char port_s[16], log[512];
    snprintf(port_s, sizeof(port_s), "%d", port);
    snprintf(log, sizeof(log), "%s/redis.log", dir);
    const char *argv[24] = {redis_binary(),
                            "--port",
                            port_s,
                            "--bind",
                            "127.0.0.1",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            dir,
                            "--logfile",
                            log,
                            "--daemonize",
                            "no"};
    int n = 15;
    if (password != NULL) {
        argv[n++] = "--requirepass";
        argv[n++] = password;
    }
    if (unix_socket != NULL) {
        argv[n++] = "--unixsocket";
        argv[n++] = unix_socket;
    }
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

void jbt_redis_stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}
