/* fsutil.c - crash-safe file writing and whole-file reading, shared by
 * checkpoints (safetensors), sessions and images.
 *
 * fs_write_atomic writes PATH.tmp.<pid> in the destination's directory,
 * fsyncs it, renames it over PATH and fsyncs the directory, so a crash leaves
 * either the old file or the new one. Because the temp name carries only the
 * pid, two threads of one process must not write the same PATH at once.
 * Every failure names the path, the system call and strerror(errno), and
 * leaves no temp file behind. */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* Writes all of buf to fd, retrying on EINTR and short writes. */
static int write_full(int fd, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) { errno = EIO; return -1; }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The directory holding path, malloc'd: "a/b/c" -> "a/b", "c" -> ".",
 * "/c" -> "/". NULL when out of memory. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

/* fsync a directory so a rename inside it is durable. Filesystems that do
 * not support fsync on directories (EINVAL) are accepted as they are. */
static int fsync_dir(const char *dir, const char *path, char *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return d3_errf(err, "%s: open(%s) for directory fsync: %s", path, dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL)
        return d3_errf(err, "%s: fsync(%s): %s", path, dir, strerror(e));
    return 0;
}

int fs_write_atomic(const char *path, const void *const *parts, const size_t *lens,
                    int nparts, char *err) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    char *dir = dir_of(path);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return d3_errf(err, "%s: out of memory", path);
    }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        d3_errf(err, "%s: open(%s): %s", path, tmp, strerror(errno));
        goto fail_noclose;
    }
    for (int i = 0; i < nparts; i++) {
        if (lens[i] == 0) continue;
        if (write_full(fd, parts[i], lens[i])) {
            d3_errf(err, "%s: write(%s): %s", path, tmp, strerror(errno));
            goto fail;
        }
    }
    if (fsync(fd)) {
        d3_errf(err, "%s: fsync(%s): %s", path, tmp, strerror(errno));
        goto fail;
    }
    if (close(fd)) {
        fd = -1;
        d3_errf(err, "%s: close(%s): %s", path, tmp, strerror(errno));
        goto fail_noclose;
    }
    fd = -1;
    if (rename(tmp, path)) {
        d3_errf(err, "%s: rename(%s): %s", path, tmp, strerror(errno));
        goto fail_noclose;
    }
    int rc = fsync_dir(dir, path, err);
    free(tmp);
    free(dir);
    return rc;

fail:
    close(fd);
fail_noclose:
    unlink(tmp);
    free(tmp);
    free(dir);
    return -1;
}

int fs_open_read(const char *path, struct stat *st, char *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return d3_errf(err, "%s: open: %s", path, strerror(errno));
    if (fstat(fd, st)) {
        int e = errno;
        close(fd);
        return d3_errf(err, "%s: fstat: %s", path, strerror(e));
    }
    if (S_ISDIR(st->st_mode)) {
        close(fd);
        return d3_errf(err, "%s: is a directory, expected a file", path);
    }
    if (S_ISREG(st->st_mode) && (uint64_t)st->st_size >= SIZE_MAX / 2) {
        close(fd);
        return d3_errf(err, "%s: file too large (%lld bytes)", path, (long long)st->st_size);
    }
    return fd;
}

int fs_read_all(const char *path, unsigned char **buf, size_t *len, char *err) {
    *buf = NULL;
    *len = 0;
    struct stat st;
    int fd = fs_open_read(path, &st, err);
    if (fd < 0) return -1;
    /* Regular files: allocate the size once; others (pipes) grow. The +2
     * leaves room for the NUL and for the read that sees EOF, so a file
     * that did not change needs no realloc. */
    size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 2 : 4096;
    unsigned char *b = malloc(cap);
    if (!b) {
        close(fd);
        return d3_errf(err, "%s: out of memory for %zu bytes", path, cap);
    }
    size_t n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            size_t ncap = cap * 2;
            unsigned char *nb = ncap > cap ? realloc(b, ncap) : NULL;
            if (!nb) {
                free(b);
                close(fd);
                return d3_errf(err, "%s: out of memory for %zu bytes", path, ncap);
            }
            b = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, b + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(b);
            close(fd);
            return d3_errf(err, "%s: read: %s", path, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
}

int fs_mkdirs(const char *path, char *err) {
    size_t n = strlen(path);
    if (n == 0) return d3_errf(err, "mkdir: empty path");
    char *p = strdup(path);
    if (!p) return d3_errf(err, "%s: out of memory", path);
    /* Create each prefix ending before a '/', then the whole path. */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && p[i] != '/') continue;
        if (i < n && p[i - 1] == '/') continue; /* "a//b" */
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, 0777) != 0) {
            int e = errno;
            struct stat st;
            if (e != EEXIST || stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
                if (e == EEXIST) d3_errf(err, "%s: mkdir(%s): exists and is not a directory", path, p);
                else d3_errf(err, "%s: mkdir(%s): %s", path, p, strerror(e));
                free(p);
                return -1;
            }
        }
        p[i] = saved;
    }
    free(p);
    return 0;
}

int fs_journal_append(int fd, const char *path, size_t *end, int *torn, const char *line, size_t len,
                      char *err) {
    if (*torn) {
        if (ftruncate(fd, (off_t)*end) || fsync(fd))
            return d3_errf(err, "%s: cutting off the torn last line: %s", path, strerror(errno));
        *torn = 0;
    }
    if (lseek(fd, (off_t)*end, SEEK_SET) < 0) return d3_errf(err, "%s: seek: %s", path, strerror(errno));
    size_t done = 0;
    while (done < len) { /* a short write (disk full...) is finished or undone */
        ssize_t n = write(fd, line + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            if (done && ftruncate(fd, (off_t)*end)) *torn = 1;
            return d3_errf(err, "%s: write: %s", path, strerror(e));
        }
        done += (size_t)n;
    }
    if (fsync(fd)) {
        int e = errno;
        if (ftruncate(fd, (off_t)*end)) *torn = 1;
        return d3_errf(err, "%s: fsync: %s", path, strerror(e));
    }
    *end += len;
    return 0;
}
