/* fsutil.h - crash-safe file writing shared by checkpoints, sessions and
 * images: write to a temp file in the same directory, fsync it, rename it
 * over the destination, fsync the directory. A reader sees the old file or
 * the new one, never a torn mix. */
#ifndef D3PO_FSUTIL_H
#define D3PO_FSUTIL_H
#include <stddef.h>
#include "err.h"

/* Writes the concatenation of nparts buffers to path atomically.
 * Returns 0 or -1 with err naming the path and the failing call. */
int fs_write_atomic(const char *path, const void *const *parts, const size_t *lens,
                    int nparts, char *err);
/* Reads a whole file into a malloc'd buffer (plus a NUL byte not counted
 * in *len). Returns 0 or -1 with err naming the path. */
int fs_read_all(const char *path, unsigned char **buf, size_t *len, char *err);

/* Appends one complete line (len bytes) to the journal open as fd (named
 * path in errors) at offset *end, and fsyncs it: the durable record of a
 * decision. *end is the length of the journal's complete lines; *torn says a
 * failed append left a partial line past it, which is cut off first. On a
 * failed write or fsync the journal is cut back to *end (best effort: else
 * *torn is set). On success *end grows by len. */
int fs_journal_append(int fd, const char *path, size_t *end, int *torn, const char *line, size_t len,
                      char *err);
struct stat;
/* Opens path for reading and fstat's it into *st: the fd, or -1 with err
 * naming the path (open or fstat failed, a directory, too large). */
int fs_open_read(const char *path, struct stat *st, char *err);
/* mkdir -p. Returns 0 or -1 with err. */
int fs_mkdirs(const char *path, char *err);
#endif
