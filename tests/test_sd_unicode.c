/* test_sd_unicode.c - engine/sd/unicode.c, the Unicode facts under the
 * CLIP tokenizer: NFC against every line of the Unicode Consortium's
 * NormalizationTest.txt (Debian's unicode-data, the same version the table
 * was generated from: c2 == NFC(c1) == NFC(c2) == NFC(c3), c4 == NFC(c4) ==
 * NFC(c5)), classes, lowercase and case properties on known characters,
 * and UTF-8 decoding of invalid input (one U+FFFD per maximal invalid
 * subsequence, as Python's errors="replace"). The tokenizer as a whole is
 * checked against transformers by tests/test_sd_text.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/unicode.h"
#include "t.h"

#define NORM_TEST "/usr/share/unicode/NormalizationTest.txt.bz2"

/* Parses "0044 0307" into cp; returns the count. */
static size_t parse_cps(const char *s, uint32_t *cp, size_t cap) {
    size_t n = 0;
    char *end;
    while (*s && n < cap) {
        unsigned long v = strtoul(s, &end, 16);
        if (end == s) break;
        cp[n++] = (uint32_t)v;
        s = end;
    }
    return n;
}

static int nfc_equals(const uint32_t *in, size_t n, const uint32_t *want, size_t nw) {
    uint32_t *o;
    size_t m;
    if (uni_nfc(in, n, &o, &m)) return 0;
    int eq = m == nw && memcmp(o, want, m * sizeof *o) == 0;
    free(o);
    return eq;
}

static void test_nfc_conformance(void) {
    FILE *f = popen("bzcat " NORM_TEST, "r");
    CHECK(f != NULL, "cannot run bzcat " NORM_TEST);
    if (!f) return;
    char line[4096], want[64];
    int lines = 0, bad = 0;
    /* the first line names the version: "# NormalizationTest-15.0.0.txt" */
    snprintf(want, sizeof want, "# NormalizationTest-%s.txt", uni_version());
    if (!fgets(line, sizeof line, f) || strncmp(line, want, strlen(want)) != 0) {
        /* another unicode-data than the table was generated from: its new
         * characters are unassigned here, so the test does not apply */
        line[strcspn(line, "\n")] = 0;
        printf("    NFC: %s is '%s', the table is Unicode %s (regenerate with engine/sd/gen_unicode.py): "
               "not compared\n", NORM_TEST, line, uni_version());
        pclose(f);
        return;
    }
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '@' || line[0] == '\n') continue;
        uint32_t c[5][32];
        size_t n[5];
        char *p = line;
        for (int k = 0; k < 5; k++) {
            char *semi = strchr(p, ';');
            if (!semi) break;
            *semi = 0;
            n[k] = parse_cps(p, c[k], 32);
            p = semi + 1;
        }
        lines++;
        int ok = nfc_equals(c[0], n[0], c[1], n[1]) && nfc_equals(c[1], n[1], c[1], n[1]) &&
                 nfc_equals(c[2], n[2], c[1], n[1]) && nfc_equals(c[3], n[3], c[3], n[3]) &&
                 nfc_equals(c[4], n[4], c[3], n[3]);
        if (!ok && bad++ < 5) CHECK(0, "NormalizationTest line %d: NFC of %04X... differs", lines, c[0][0]);
    }
    int rc = pclose(f);
    CHECK(rc == 0, "bzcat " NORM_TEST " failed (is unicode-data installed?)");
    CHECK(lines > 18000, "only %d test lines read", lines);
    printf("    NFC: %d NormalizationTest lines, %d wrong\n", lines, bad);
}

static void test_properties(void) {
    CHECK(uni_class('a') == UNI_L && uni_class(0x4E2D) == UNI_L && uni_class(0x01C5) == UNI_L, "letters");
    CHECK(uni_class('7') == UNI_N && uni_class(0x00BD) == UNI_N && uni_class(0x2167) == UNI_N, "numbers");
    CHECK(uni_class(0x01) == UNI_C && uni_class(0x200B) == UNI_C && uni_class(0xE000) == UNI_C &&
              uni_class(0x0378) == UNI_C && uni_class(0x110000) == UNI_C,
          "control, format, private use, unassigned, past the end");
    CHECK(uni_class(0x00A0) == UNI_ZS && uni_class(0x3000) == UNI_ZS && uni_class(0x2028) == UNI_ZLP, "spaces");
    CHECK(uni_class(0x0301) == UNI_OTHER && uni_class('!') == UNI_OTHER && uni_class(0x1F642) == UNI_OTHER,
          "marks, punctuation, symbols");
    CHECK(uni_lower1('A') == 'a' && uni_lower1(0x00C5) == 0x00E5 && uni_lower1(0x212A) == 'k' &&
              uni_lower1(0x03A3) == 0x03C3 && uni_lower1(0x10400) == 0x10428 && uni_lower1(0x017F) == 0x017F,
          "lowercase");
    CHECK(uni_ccc(0x0301) == 230 && uni_ccc(0x0323) == 220 && uni_ccc('a') == 0, "combining classes");
    CHECK(uni_is_cased('A') && !uni_is_cased('1') && uni_is_case_ignorable('\'') && uni_is_case_ignorable(0x0301) &&
              !uni_is_case_ignorable('a'),
          "Cased, Case_Ignorable");
    CHECK(uni_fold_ascii(0x017F) == 's' && uni_fold_ascii('S') == 's' && uni_fold_ascii(0x212A) == 'k' &&
              uni_fold_ascii(0x00DF) == 0,
          "ASCII case folding");
}

static void test_utf8(void) {
    static const struct { const char *in; uint32_t want[8]; size_t n; } cases[] = {
        {"a\xc3\xa9", {'a', 0xE9}, 2},
        {"\xf0\x9f\x99\x82", {0x1F642}, 1},
        {"\xff" "a", {0xFFFD, 'a'}, 2},
        {"\xe2\x82" "a", {0xFFFD, 'a'}, 2},               /* truncated: one replacement */
        {"\xed\xa0\x80", {0xFFFD, 0xFFFD, 0xFFFD}, 3},    /* surrogate: each byte */
        {"\xc0\xaf", {0xFFFD, 0xFFFD}, 2},                /* overlong */
        {"\xf4\x90\x80\x80", {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}, 4}, /* past U+10FFFF */
        {"\xe0\x80\x80", {0xFFFD, 0xFFFD, 0xFFFD}, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t *o;
        size_t n;
        CHECK(uni_from_utf8(cases[i].in, strlen(cases[i].in), &o, &n) == 0, "decode");
        CHECK(n == cases[i].n && memcmp(o, cases[i].want, n * sizeof *o) == 0, "case %zu: %zu code points", i, n);
        unsigned char b[4];
        for (size_t k = 0; k < n; k++)
            if (o[k] != 0xFFFD) CHECK(uni_to_utf8(o[k], b) >= 1, "encode");
        free(o);
    }
}

int main(void) {
    RUN(test_nfc_conformance);
    RUN(test_properties);
    RUN(test_utf8);
    return t_done();
}
