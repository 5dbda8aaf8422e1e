/* unicode.h - the few Unicode facts the CLIP tokenizer (engine/sd/tokenizer.c)
 * needs, from a table generated out of Debian's unicode-data
 * (engine/sd/gen_unicode.py -> engine/sd/unicode_tab.h, committed, so the
 * runtime needs no package): the letter/number/control/space class of a
 * code point, simple lowercase, Cased and Case_Ignorable (Python's final
 * sigma rule), canonical combining classes and compositions (NFC), and
 * UTF-8 decoding that turns every invalid byte sequence into U+FFFD.
 *
 * Strings are arrays of code points (uint32_t) with a length. */
#ifndef D3PO_SD_UNICODE_H
#define D3PO_SD_UNICODE_H

#include <stddef.h>
#include <stdint.h>

enum { UNI_OTHER, UNI_L, UNI_N, UNI_C, UNI_ZS, UNI_ZLP };

typedef struct {
    uint32_t lo, hi;
    uint8_t cls;    /* UNI_* */
    uint8_t ccc;    /* canonical combining class */
    uint8_t flags;  /* 1 Cased, 2 Case_Ignorable */
} uni_range;

/* The Unicode version of the tables ("15.0.0"). */
const char *uni_version(void);
/* Class (UNI_*) of cp; code points past U+10FFFF are UNI_C. */
int uni_class(uint32_t cp);
int uni_ccc(uint32_t cp);
int uni_is_cased(uint32_t cp);
int uni_is_case_ignorable(uint32_t cp);
/* Simple lowercase mapping (cp itself when there is none). */
uint32_t uni_lower1(uint32_t cp);
/* The ASCII letter whose case folding cp shares (U+017F -> 's', Kelvin
 * sign -> 'k'; A-Z -> a-z; a-z -> itself), else 0. */
int uni_fold_ascii(uint32_t cp);

/* Decodes n bytes of UTF-8 into *out (malloc'd, *outn code points): each
 * maximal invalid subsequence (bad lead byte, truncated or overlong
 * sequence, surrogate, > U+10FFFF) becomes one U+FFFD, as Python's
 * errors="replace" does. Returns 0, or -1 when memory runs out. */
int uni_from_utf8(const char *s, size_t n, uint32_t **out, size_t *outn);
/* Appends cp as UTF-8 to buf (4 bytes room); returns the bytes written. */
int uni_to_utf8(uint32_t cp, unsigned char *buf);
/* Canonical composition (NFC) of s[0..n) into *out (malloc'd). Returns 0,
 * or -1 when memory runs out. */
int uni_nfc(const uint32_t *s, size_t n, uint32_t **out, size_t *outn);

#endif
