/*
 * spawntime.c: time a command from process start to its first stdout byte
 * and to its exit, many times, with as little harness overhead as possible.
 *
 *   spawntime RUNS COMMAND [ARGS...]
 *
 * For each run it takes CLOCK_MONOTONIC, posix_spawn()s COMMAND with stdout
 * on a pipe (stdin and stderr on /dev/null), reads the pipe until EOF noting
 * when the first byte arrived, reaps the child, and prints one line:
 *
 *   <ns to first stdout byte, or -1> <ns to exit> <exit status, or -signal>
 *
 * bench/bench_tender.py runs it for edge-tender, QEMU and the KVM floor
 * program, so that all of them are measured by the same harness. It measures
 * nothing else and does no statistics.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spawntime RUNS COMMAND [ARGS...]\n");
        return 2;
    }
    long runs = strtol(argv[1], NULL, 10);
    char buf[65536];
    for (long i = 0; i < runs; i++) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0) {
            perror("pipe2");
            return 1;
        }
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        pid_t pid;
        int64_t t0 = now_ns();
        int rc = posix_spawn(&pid, argv[2], &fa, NULL, &argv[2], environ);
        posix_spawn_file_actions_destroy(&fa);
        if (rc != 0) {
            fprintf(stderr, "spawntime: cannot spawn %s\n", argv[2]);
            return 1;
        }
        close(fds[1]);
        int64_t first = -1;
        for (;;) {
            ssize_t n = read(fds[0], buf, sizeof(buf));
            if (n > 0 && first < 0)
                first = now_ns() - t0;
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
        }
        close(fds[0]);
        int status;
        waitpid(pid, &status, 0);
        int64_t done = now_ns() - t0;
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        printf("%lld %lld %d\n", (long long)first, (long long)done, code);
    }
    return 0;
}
