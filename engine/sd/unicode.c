/* unicode.c - code point classes, lowercase, NFC and UTF-8 decoding for the
 * CLIP tokenizer, over the generated tables of unicode_tab.h (see
 * unicode.h and gen_unicode.py). Everything is a bisection over sorted
 * tables; no state. */
#include "sd/unicode.h"

#include <stdlib.h>
#include <string.h>

#include "sd/unicode_tab.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const uni_range *find_range(uint32_t cp) {
    size_t lo = 0, hi = NELEM(uni_ranges);
    if (cp > 0x10FFFF) return NULL;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (uni_ranges[mid].hi < cp) lo = mid + 1;
        else if (uni_ranges[mid].lo > cp) hi = mid;
        else return &uni_ranges[mid];
    }
    return NULL;
}

const char *uni_version(void) { return UNI_TAB_VERSION; }

int uni_class(uint32_t cp) {
    const uni_range *r = find_range(cp);
    return r ? r->cls : UNI_C;
}
int uni_ccc(uint32_t cp) {
    const uni_range *r = find_range(cp);
    return r ? r->ccc : 0;
}
int uni_is_cased(uint32_t cp) {
    const uni_range *r = find_range(cp);
    return r && (r->flags & 1);
}
int uni_is_case_ignorable(uint32_t cp) {
    const uni_range *r = find_range(cp);
    return r && (r->flags & 2);
}

/* Bisection over a table whose rows start with the key code point. */
static const uint32_t *find_row(const uint32_t *tab, size_t rows, size_t width, uint32_t cp) {
    size_t lo = 0, hi = rows;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *r = tab + mid * width;
        if (r[0] < cp) lo = mid + 1;
        else if (r[0] > cp) hi = mid;
        else return r;
    }
    return NULL;
}

uint32_t uni_lower1(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    const uint32_t *r = find_row(&uni_lower[0][0], NELEM(uni_lower), 2, cp);
    return r ? r[1] : cp;
}

int uni_fold_ascii(uint32_t cp) {
    if (cp >= 'a' && cp <= 'z') return (int)cp;
    if (cp >= 'A' && cp <= 'Z') return (int)cp + 32;
    const uint32_t *r = find_row(&uni_fold_tab[0][0], NELEM(uni_fold_tab), 2, cp);
    return r ? (int)r[1] : 0;
}

int uni_from_utf8(const char *str, size_t n, uint32_t **out, size_t *outn) {
    const unsigned char *s = (const unsigned char *)str;
    uint32_t *o = malloc((n + 1) * sizeof(uint32_t));
    if (!o) return -1;
    size_t i = 0, k = 0;
    while (i < n) {
        unsigned c = s[i];
        int need;
        uint32_t cp, min;
        if (c < 0x80) { o[k++] = c; i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; min = 0x10000; }
        else { o[k++] = 0xFFFD; i++; continue; }
        size_t j = i + 1;
        int got = 0;
        for (; got < need && j < n && (s[j] & 0xC0) == 0x80; got++, j++) {
            cp = (cp << 6) | (s[j] & 0x3F);
            /* reject overlongs/surrogates/too large as soon as the second byte shows them */
            if (got == 0 && ((c == 0xE0 && s[j] < 0xA0) || (c == 0xED && s[j] > 0x9F) ||
                             (c == 0xF0 && s[j] < 0x90) || (c == 0xF4 && s[j] > 0x8F)))
                break;
        }
        if (got < need) { o[k++] = 0xFFFD; i = (j > i + 1 && got > 0) ? j : i + 1; continue; }
        o[k++] = cp < min ? 0xFFFD : cp;
        i = j;
    }
    *out = o;
    *outn = k;
    return 0;
}

int uni_to_utf8(uint32_t cp, unsigned char *b) {
    if (cp < 0x80) { b[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { b[0] = 0xC0 | (cp >> 6); b[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        b[0] = 0xE0 | (cp >> 12); b[1] = 0x80 | ((cp >> 6) & 0x3F); b[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    b[0] = 0xF0 | (cp >> 18); b[1] = 0x80 | ((cp >> 12) & 0x3F);
    b[2] = 0x80 | ((cp >> 6) & 0x3F); b[3] = 0x80 | (cp & 0x3F);
    return 4;
}

/* Hangul syllables decompose and compose by arithmetic (Unicode 3.12). */
enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7,
       LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

/* Appends the full canonical decomposition of cp; o has room for 4 more
 * per level (decompositions are at most 4 code points deep in practice). */
static void decompose(uint32_t cp, uint32_t *o, size_t *k) {
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE;
        o[(*k)++] = LBASE + s / NCOUNT;
        o[(*k)++] = VBASE + (s % NCOUNT) / TCOUNT;
        if (s % TCOUNT) o[(*k)++] = TBASE + s % TCOUNT;
        return;
    }
    const uint32_t *r = cp < 0xC0 ? NULL : find_row(&uni_decomp[0][0], NELEM(uni_decomp), 3, cp);
    if (!r) { o[(*k)++] = cp; return; }
    decompose(r[1], o, k);
    if (r[2]) decompose(r[2], o, k);
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = NELEM(uni_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *r = uni_comp[mid];
        if (r[0] < a || (r[0] == a && r[1] < b)) lo = mid + 1;
        else if (r[0] > a || r[1] > b) hi = mid;
        else return r[2];
    }
    return 0;
}

int uni_nfc(const uint32_t *s, size_t n, uint32_t **out, size_t *outn) {
    /* a canonical decomposition is at most 4 code points (Unicode's stability policy keeps it small) */
    uint32_t *d = malloc((4 * n + 1) * sizeof(uint32_t));
    if (!d) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) decompose(s[i], d, &k);
    /* canonical ordering: stable sort of each run of non-starters by class */
    for (size_t i = 1; i < k; i++) {
        for (size_t j = i; j > 0; j--) {
            int a = uni_ccc(d[j - 1]), b = uni_ccc(d[j]);
            if (b == 0 || a <= b) break;
            uint32_t t = d[j - 1]; d[j - 1] = d[j]; d[j] = t;
        }
    }
    /* canonical composition (UAX #15): a character combines with the last
     * starter unless a character between them blocks it */
    size_t m = 0;
    if (k > 0) {
        size_t sp = 0;
        int last = uni_ccc(d[0]) ? 256 : 0;
        m = 1;
        for (size_t i = 1; i < k; i++) {
            uint32_t c = d[i];
            int cc = uni_ccc(c);
            uint32_t comp = (last < cc || last == 0) ? compose(d[sp], c) : 0;
            if (comp) {
                d[sp] = comp;
                continue;
            }
            if (cc == 0) sp = m;
            last = cc;
            d[m++] = c;
        }
    }
    *out = d;
    *outn = m;
    return 0;
}
