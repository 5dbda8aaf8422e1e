/* text.c - escaping untrusted text for terminals and logs (see text.h). */
#include "text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *text_escape(char *dst, size_t n, const char *src) {
    size_t j = 0;
    if (!n) return dst;
    for (const unsigned char *p = (const unsigned char *)src; p && *p; p++) {
        char e[8];
        size_t el;
        if (*p < 0x20 || *p == 0x7f) {
            if (*p == '\n') memcpy(e, "\\n", el = 2);
            else if (*p == '\t') memcpy(e, "\\t", el = 2);
            else if (*p == '\r') memcpy(e, "\\r", el = 2);
            else el = (size_t)snprintf(e, sizeof e, "\\x%02x", *p);
        } else {
            e[0] = (char)*p;
            el = 1;
        }
        if (j + el + 1 > n) break;
        memcpy(dst + j, e, el);
        j += el;
    }
    dst[j] = 0;
    return dst;
}

void text_escape_inplace(char *s, size_t n) {
    int clean = 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f) clean = 0;
    if (clean) return;
    char *t = strdup(s);
    if (!t) { /* out of memory: blank the bytes instead */
        for (unsigned char *p = (unsigned char *)s; *p; p++)
            if (*p < 0x20 || *p == 0x7f) *p = '?';
        return;
    }
    text_escape(s, n, t);
    free(t);
}
