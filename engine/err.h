/* err.h - errors as values. Functions that can fail on input return 0 on
 * success and -1 on failure, after writing a one-line message into a
 * caller-provided buffer of D3_ERRLEN bytes. Messages name the file, the
 * field and what was expected ("model.safetensors: tensor 'conv_in.weight':
 * data_offsets [0, 12) hold 12 bytes, shape [16,3,3,3] needs 1728").
 * assert() is for programmer errors only, never for input. */
#ifndef D3PO_ERR_H
#define D3PO_ERR_H
#include <stdarg.h>
#include <stdio.h>

#define D3_ERRLEN 512

/* Formats into err (may be NULL) and returns -1, so a failing path reads
 * `return d3_errf(err, "%s: truncated", path);`. Control characters (from
 * a file name, a tensor key, a class name...) come out as \xNN, so no
 * message can carry a terminal escape sequence. */
static inline int d3_errf(char *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int d3_errf(char *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, D3_ERRLEN, fmt, ap);
        va_end(ap);
        int raw = 0;
        for (const char *p = err; *p; p++) raw |= (unsigned char)*p < 0x20 || *p == 0x7f;
        if (raw) {
            char t[D3_ERRLEN];
            size_t j = 0;
            for (const unsigned char *p = (const unsigned char *)err; *p && j + 5 < sizeof t; p++) {
                if (*p < 0x20 || *p == 0x7f) j += (size_t)snprintf(t + j, sizeof t - j, "\\x%02x", *p);
                else t[j++] = (char)*p;
            }
            t[j] = 0;
            snprintf(err, D3_ERRLEN, "%s", t);
        }
    }
    return -1;
}
#endif
