/*
 * tnd_events.c: stderr messages, the JSON-lines events channel
 * (--events-fd) and the single exit path of edge-tender.
 *
 * Every line is formatted into a stack buffer and written with one
 * write(): no stdio buffering and no allocation, so this works under the
 * seccomp allowlist. It does not decide exit statuses; callers do.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tnd.h"

int tnd_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *b = buf;

    while (len > 0) {
        ssize_t n = write(fd, b, len);
        if (n < 0) {
            if (errno == EINTR && !tnd_signal_pending)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                (void)ppoll(&pfd, 1, NULL, NULL);
                continue;
            }
            return -1;
        }
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

void tnd_json_escape(const char *s, char *out, size_t outlen)
{
    size_t o = 0;

    if (outlen == 0)
        return;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[8];
        size_t n;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || c == 0x7f) {
            n = (size_t)snprintf(tmp, sizeof(tmp), "\\u%04x", c);
        } else {
            tmp[0] = (char)c;
            n = 1;
        }
        if (o + n >= outlen)
            break;
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = '\0';
}

void tnd_event(int fd, const char *name, const char *fields, ...)
{
    char line[1024];
    struct timespec ts;
    va_list ap;
    int n, m;

    if (fd < 0)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    n = snprintf(line, sizeof(line), "{\"event\":\"%s\",\"t_ns\":%llu", name,
                 (unsigned long long)ts.tv_sec * 1000000000ull +
                     (unsigned long long)ts.tv_nsec);
    va_start(ap, fields);
    m = vsnprintf(line + n, sizeof(line) - (size_t)n - 2, fields, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    if ((size_t)(n + m) > sizeof(line) - 3)
        m = (int)(sizeof(line) - 3) - n; /* truncated: never happens */
    n += m;
    line[n++] = '}';
    line[n++] = '\n';
    (void)tnd_write_all(fd, line, (size_t)n);
}

void tnd_warnx(const char *fmt, ...)
{
    char line[TND_ERR_LEN + 32];
    va_list ap;
    int n = snprintf(line, sizeof(line), "edge-tender: ");

    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    (void)tnd_write_all(2, line, (size_t)n);
}

int tnd_stop_set(struct tnd_stop *stop, int status, const char *reason,
                 const char *fmt, ...)
{
    va_list ap;

    stop->status = status;
    stop->reason = reason;
    va_start(ap, fmt);
    vsnprintf(stop->message, sizeof(stop->message), fmt, ap);
    va_end(ap);
    return 1;
}

_Noreturn void tnd_finish(int events_fd, const struct tnd_stop *stop)
{
    char esc[2 * TND_ERR_LEN];

    if (strcmp(stop->reason, "halt") != 0)
        tnd_warnx("%s", stop->message);
    tnd_json_escape(stop->message, esc, sizeof(esc));
    tnd_event(events_fd, "exit", ",\"status\":%d,\"reason\":\"%s\","
              "\"message\":\"%s\"",
              stop->status, stop->reason, esc);
    _exit(stop->status);
}
