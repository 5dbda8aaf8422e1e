/* labeler.c - an external program as the judge of pairs (protocol in
 * labeler.h): started once with `sh -c CMD`, fed one tab-separated line
 * per pair on its stdin, read one answer line back from its stdout within
 * a timeout (poll()). Its stderr is left as ours, so its own messages
 * reach the user. Every way it can fail - a garbage answer, exiting,
 * closing its output, hanging - is an error that names the command, the
 * pair and what it said (control characters replaced, truncated), so the
 * caller can stop with the labels already journaled intact. SIGPIPE is
 * ignored only while we write to it, so a labeler that died shows up as
 * EPIPE and an exit status instead of killing d3po. */
#include "labeler.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "session.h"

#define LAB_LINE_MAX 4096 /* longest answer line accepted */
#define LAB_QUOTE 60      /* bytes of an answer or command quoted in errors */
#define LAB_STOP_MS 1000  /* grace period after closing its stdin */

struct d3_labeler {
    pid_t pid;
    int in_fd;  /* its stdin (we write), -1 when closed */
    int out_fd; /* its stdout (we read), -1 when closed */
    int timeout_ms;
    int exited, status;         /* reaped, with its wait status */
    char cmd[LAB_QUOTE + 8];    /* sanitized, truncated: for messages */
    char buf[LAB_LINE_MAX + 1]; /* bytes read and not yet consumed */
    size_t len;
};

/* Copies src for an error message: control bytes as '?', at most LAB_QUOTE
 * bytes, "..." when cut. */
static void quote(char *dst, size_t n, const char *src, size_t len) {
    size_t j = 0, i = 0;
    for (; i < len && j + 4 < n && i < LAB_QUOTE; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[j++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (i < len && j + 4 <= n) {
        memcpy(dst + j, "...", 3);
        j += 3;
    }
    dst[j] = 0;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* moves fd above 2 with close-on-exec, so the child's dup2 onto 0/1 never
 * collides and no other child inherits it */
static int high_cloexec(int fd) {
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return h;
}

d3_labeler *labeler_start(const char *cmd, int timeout_ms, char *err) {
    if (!cmd || !cmd[0]) {
        d3_errf(err, "labeler: empty command");
        return NULL;
    }
    d3_labeler *l = calloc(1, sizeof *l);
    if (!l) {
        d3_errf(err, "labeler: out of memory");
        return NULL;
    }
    quote(l->cmd, sizeof l->cmd, cmd, strlen(cmd));
    l->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    int pin[2], pout[2];
    if (pipe(pin)) {
        d3_errf(err, "labeler '%s': pipe: %s", l->cmd, strerror(errno));
        free(l);
        return NULL;
    }
    if (pipe(pout)) {
        d3_errf(err, "labeler '%s': pipe: %s", l->cmd, strerror(errno));
        close(pin[0]);
        close(pin[1]);
        free(l);
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        pin[i] = high_cloexec(pin[i]);
        pout[i] = high_cloexec(pout[i]);
    }
    if (pin[0] < 0 || pin[1] < 0 || pout[0] < 0 || pout[1] < 0) {
        d3_errf(err, "labeler '%s': fcntl: %s", l->cmd, strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (pin[i] >= 0) close(pin[i]);
            if (pout[i] >= 0) close(pout[i]);
        }
        free(l);
        return NULL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        d3_errf(err, "labeler '%s': fork: %s", l->cmd, strerror(errno));
        for (int i = 0; i < 2; i++) {
            close(pin[i]);
            close(pout[i]);
        }
        free(l);
        return NULL;
    }
    if (pid == 0) {
        /* the child: default signal dispositions, pipes as stdin/stdout */
        signal(SIGPIPE, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        setpgid(0, 0); /* its own process group: stopping it stops its children too */
        if (dup2(pin[0], 0) < 0 || dup2(pout[1], 1) < 0) _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so the group exists before any kill (no race) */
    close(pin[0]);
    close(pout[1]);
    l->pid = pid;
    l->in_fd = pin[1];
    l->out_fd = pout[0];
    fcntl(l->in_fd, F_SETFL, fcntl(l->in_fd, F_GETFL) | O_NONBLOCK);
    fcntl(l->out_fd, F_SETFL, fcntl(l->out_fd, F_GETFL) | O_NONBLOCK);
    return l;
}

/* Reaps the child if it has exited, waiting at most wait_ms. 1 if reaped. */
static int reap(d3_labeler *l, int wait_ms) {
    if (l->exited) return 1;
    double end = now_ms() + wait_ms;
    for (;;) {
        pid_t r = waitpid(l->pid, &l->status, WNOHANG);
        if (r == l->pid) {
            l->exited = 1;
            return 1;
        }
        if (r < 0 && errno != EINTR) { /* not our child any more: treat as gone */
            l->exited = 1;
            l->status = 0;
            return 1;
        }
        if (now_ms() >= end) return 0;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* "exited with status 3" / "was killed by signal 9" / "closed its output" */
static void how_gone(d3_labeler *l, char *out, size_t n) {
    if (reap(l, 1000)) {
        if (WIFEXITED(l->status))
            snprintf(out, n, "exited with status %d", WEXITSTATUS(l->status));
        else if (WIFSIGNALED(l->status))
            snprintf(out, n, "was killed by signal %d", WTERMSIG(l->status));
        else
            snprintf(out, n, "stopped");
    } else {
        snprintf(out, n, "closed its output");
    }
}

static int gone_err(d3_labeler *l, long id, char *err) {
    char how[64], said[LAB_QUOTE + 8];
    how_gone(l, how, sizeof how);
    if (l->len) {
        quote(said, sizeof said, l->buf, l->len);
        return d3_errf(err, "labeler '%s' %s before answering pair %ld (it said '%s')", l->cmd, how,
                       id, said);
    }
    return d3_errf(err, "labeler '%s' %s before answering pair %ld", l->cmd, how, id);
}

/* Writes all of buf before the deadline; SIGPIPE ignored meanwhile. */
static int write_all(d3_labeler *l, const char *buf, size_t n, double deadline, long id,
                     char *err) {
    struct sigaction ign = {0}, old;
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old);
    int rc = 0;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(l->in_fd, buf + off, n - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) {
            rc = d3_errf(err, "labeler '%s': interrupted while sending pair %ld", l->cmd, id);
            break;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int left = (int)(deadline - now_ms());
            if (left <= 0) {
                rc = d3_errf(err, "labeler '%s' does not read its input (pair %ld, %.0f s)", l->cmd,
                             id, l->timeout_ms / 1000.0);
                break;
            }
            struct pollfd p = {l->in_fd, POLLOUT, 0};
            if (poll(&p, 1, left) < 0 && errno == EINTR) {
                rc = d3_errf(err, "labeler '%s': interrupted while sending pair %ld", l->cmd, id);
                break;
            }
            continue;
        }
        if (w < 0 && errno == EPIPE) {
            rc = gone_err(l, id, err);
            break;
        }
        rc = d3_errf(err, "labeler '%s': write: %s", l->cmd, strerror(errno));
        break;
    }
    sigaction(SIGPIPE, &old, NULL);
    return rc;
}

/* Trims blanks and a CR; returns the choice or SESSION_NONE. */
static int parse_answer(const char *line, size_t n) {
    while (n && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r')) n--;
    while (n && (*line == ' ' || *line == '\t')) {
        line++;
        n--;
    }
    static const struct {
        const char *w;
        int c;
    } words[] = {{"A", SESSION_A}, {"B", SESSION_B}, {"tie", SESSION_TIE}, {"skip", SESSION_SKIP}};
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        if (strlen(words[i].w) == n && !memcmp(words[i].w, line, n)) return words[i].c;
    return SESSION_NONE;
}

int labeler_ask(d3_labeler *l, long id, const char *prompt, const char *png_a, const char *png_b,
                int *choice, char *err) {
    if (l->in_fd < 0 || l->out_fd < 0)
        return d3_errf(err, "labeler '%s' is no longer running", l->cmd);
    /* fields must not contain the separators of the protocol */
    const char *fields[3] = {prompt, png_a, png_b};
    for (int i = 0; i < 3; i++)
        if (strpbrk(fields[i], "\t\n"))
            return d3_errf(err, "labeler: pair %ld: a tab or newline in '%.60s' cannot be sent", id,
                           fields[i]);
    size_t n = strlen(prompt) + strlen(png_a) + strlen(png_b) + 40;
    char *line = malloc(n);
    if (!line) return d3_errf(err, "labeler: out of memory");
    int len = snprintf(line, n, "%ld\t%s\t%s\t%s\n", id, prompt, png_a, png_b);
    double deadline = now_ms() + l->timeout_ms;
    /* a labeler may have answered ahead of the question: drop nothing, the
     * buffer is consumed line by line */
    int rc = write_all(l, line, (size_t)len, deadline, id, err);
    free(line);
    if (rc) return rc;
    for (;;) {
        char *nl = memchr(l->buf, '\n', l->len);
        if (nl) {
            size_t ln = (size_t)(nl - l->buf);
            int c = parse_answer(l->buf, ln);
            char said[LAB_QUOTE + 8];
            quote(said, sizeof said, l->buf, ln);
            memmove(l->buf, nl + 1, l->len - ln - 1);
            l->len -= ln + 1;
            if (c == SESSION_NONE)
                return d3_errf(
                    err, "labeler '%s' answered '%s' for pair %ld; expected A, B, tie or skip",
                    l->cmd, said, id);
            *choice = c;
            return 0;
        }
        if (l->len >= LAB_LINE_MAX) {
            char said[LAB_QUOTE + 8];
            quote(said, sizeof said, l->buf, l->len);
            return d3_errf(err,
                           "labeler '%s' answered '%s' for pair %ld (a line over %d bytes); "
                           "expected A, B, tie or skip",
                           l->cmd, said, id, LAB_LINE_MAX);
        }
        int left = (int)(deadline - now_ms());
        if (left <= 0) {
            if (l->len) {
                char said[LAB_QUOTE + 8];
                quote(said, sizeof said, l->buf, l->len);
                return d3_errf(err,
                               "labeler '%s' gave no answer within %g s for pair %ld (it said "
                               "'%s' without a newline)",
                               l->cmd, l->timeout_ms / 1000.0, id, said);
            }
            return d3_errf(err, "labeler '%s' gave no answer within %g s for pair %ld", l->cmd,
                           l->timeout_ms / 1000.0, id);
        }
        struct pollfd p = {l->out_fd, POLLIN, 0};
        int pr = poll(&p, 1, left);
        if (pr < 0) {
            if (errno == EINTR)
                return d3_errf(err, "labeler '%s': interrupted while waiting for pair %ld", l->cmd,
                               id);
            return d3_errf(err, "labeler '%s': poll: %s", l->cmd, strerror(errno));
        }
        if (pr == 0) continue;
        ssize_t r = read(l->out_fd, l->buf + l->len, LAB_LINE_MAX - l->len);
        if (r > 0) {
            l->len += (size_t)r;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        if (r < 0) return d3_errf(err, "labeler '%s': read: %s", l->cmd, strerror(errno));
        /* end of file: it exited or closed its stdout */
        close(l->out_fd);
        l->out_fd = -1;
        return gone_err(l, id, err);
    }
}

void labeler_stop(d3_labeler *l) {
    if (!l) return;
    if (l->in_fd >= 0) close(l->in_fd);
    if (l->out_fd >= 0) close(l->out_fd);
    l->in_fd = l->out_fd = -1;
    if (!reap(l, LAB_STOP_MS)) {
        /* the whole process group: a shell script's children (a hung
         * helper, a sleep) go with it instead of living on as orphans */
        kill(-l->pid, SIGTERM);
        if (!reap(l, 200)) {
            kill(-l->pid, SIGKILL);
            while (waitpid(l->pid, &l->status, 0) < 0 && errno == EINTR) {
            }
        }
        kill(-l->pid, SIGKILL); /* members that outlived the leader */
    }
    free(l);
}
