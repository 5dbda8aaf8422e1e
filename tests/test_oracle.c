/* test_oracle.c - the judges of headless rounds: the built-in oracles
 * (JPEG sizes order a flat and a noise image the right way, brightness is
 * the mean byte, the noisy wrapper follows Bradley-Terry and is
 * reproducible from its seed, unknown names list the known ones, realism
 * prefers its class's images over noise, blurs, and names an unknown
 * class), group marking (the brighter half good, ties and an odd
 * group's middle unmarked, noisy groups compare pairwise by Bradley-Terry)
 * and the
 * external labeler protocol (a round trip with the shell labelers in
 * tests/data/labelers/, and the clear errors for a garbage answer, a
 * labeler that exits, one that hangs past the timeout, one that is not
 * there). Run from the repository root, like every test. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "groups.h"
#include "image.h"
#include "labeler.h"
#include "oracle.h"
#include "rng.h"
#include "session.h"
#include "t.h"

#define S 32

static void fill(uint8_t *img, int v) { memset(img, v, S * S * 3); }

static void noise(uint8_t *img, uint64_t seed) {
    d3_rng r;
    rng_init(&r, seed, 0);
    for (int i = 0; i < S * S * 3; i++) img[i] = (uint8_t)rng_below(&r, 256);
}

static void test_jpeg(void) {
    char err[D3_ERRLEN];
    uint8_t flat[S * S * 3], rnd[S * S * 3];
    fill(flat, 128);
    noise(rnd, 1);
    d3_oracle *c = oracle_new("jpeg-compressibility", 0, err);
    d3_oracle *i = oracle_new("jpeg-incompressibility", 0, err);
    CHECK(c && i, "%s", err);
    if (!c || !i) return;
    double sf = oracle_score(c, flat, S, S), sn = oracle_score(c, rnd, S, S);
    /* a 32x32 JPEG has ~600 bytes of headers and tables; a flat image adds
     * almost nothing, noise at quality 95 several KB */
    CHECK(sf < 0 && sn < 0, "compressibility scores are minus sizes: %g %g", sf, sn);
    CHECK(-sf > 100 && -sf < 1500, "flat JPEG %g bytes", -sf);
    CHECK(-sn > -sf + 1000, "noise JPEG %g bytes vs flat %g", -sn, -sf);
    CHECK(oracle_score(i, flat, S, S) == -sf, "incompressibility is the size itself");
    CHECK(oracle_judge(c, flat, rnd, S, S) == SESSION_A, "compressibility prefers flat (A)");
    CHECK(oracle_judge(c, rnd, flat, S, S) == SESSION_B, "compressibility prefers flat (B)");
    CHECK(oracle_judge(i, flat, rnd, S, S) == SESSION_B, "incompressibility prefers noise");
    CHECK(oracle_judge(c, flat, flat, S, S) == SESSION_TIE, "same image: a tie");
    CHECK(oracle_score(c, rnd, S, S) == sn, "the size is deterministic");
    CHECK(!strcmp(oracle_name(c), "jpeg-compressibility"), "name %s", oracle_name(c));
    /* a non-square image works too */
    CHECK(oracle_score(c, rnd, 16, 8) < 0, "16x8 encodes");
    oracle_free(c);
    oracle_free(i);
}

static void test_brightness(void) {
    char err[D3_ERRLEN];
    uint8_t a[S * S * 3], b[S * S * 3];
    d3_oracle *o = oracle_new("brightness", 0, err);
    CHECK(o, "%s", err);
    if (!o) return;
    fill(a, 200);
    CHECK(oracle_score(o, a, S, S) == 200, "flat 200 scores %g", oracle_score(o, a, S, S));
    for (int k = 0; k < S * S * 3; k++) b[k] = k % 2 ? 255 : 0;
    CHECK(fabs(oracle_score(o, b, S, S) - 127.5) < 1e-9, "half 0 half 255 scores %g",
          oracle_score(o, b, S, S));
    CHECK(oracle_judge(o, a, b, S, S) == SESSION_A, "brighter A wins");
    CHECK(oracle_judge(o, b, a, S, S) == SESSION_B, "brighter B wins");
    CHECK(oracle_judge(o, a, a, S, S) == SESSION_TIE, "equal: tie");
    oracle_free(o);
}

/* fraction of n judgments of (a, b) that say A */
static double frac_a(d3_oracle *o, const uint8_t *a, const uint8_t *b, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += oracle_judge(o, a, b, S, S) == SESSION_A;
    return (double)k / n;
}

static void test_noisy(void) {
    char err[D3_ERRLEN];
    uint8_t a[S * S * 3], b[S * S * 3];
    fill(a, 110);
    fill(b, 100); /* A is 10 units brighter */
    const int n = 4000;
    /* T = 1: P(A) = sigmoid(10) = 0.99995 */
    d3_oracle *lo = oracle_new("noisy:brightness:1", 7, err);
    CHECK(lo, "%s", err);
    if (lo) {
        double f = frac_a(lo, a, b, n);
        CHECK(f > 0.995, "low T agrees with the clean oracle %.4f of the time", f);
        CHECK(!strcmp(oracle_name(lo), "noisy:brightness:1"), "name %s", oracle_name(lo));
        /* the score is the noise-free one */
        CHECK(oracle_score(lo, a, S, S) == 110, "score %g", oracle_score(lo, a, S, S));
        oracle_free(lo);
    }
    /* T = 1e9: a coin; 4000 trials have sd 0.008, so 0.05 is 6 sd */
    d3_oracle *hi = oracle_new("noisy:brightness:1e9", 7, err);
    CHECK(hi, "%s", err);
    if (hi) {
        double f = frac_a(hi, a, b, n);
        CHECK(fabs(f - 0.5) < 0.05, "huge T is a coin: %.4f", f);
        oracle_free(hi);
    }
    /* T = 10: P(A) = sigmoid(1) = 0.7311 (sd 0.007; 0.04 is 5.7 sd) */
    d3_oracle *mid = oracle_new("noisy:brightness:10", 3, err);
    CHECK(mid, "%s", err);
    if (mid) {
        double f = frac_a(mid, a, b, n);
        CHECK(fabs(f - 0.7311) < 0.04, "Bradley-Terry at T = 10: %.4f, expected 0.7311", f);
        oracle_free(mid);
    }
    /* reproducible: the same seed gives the same answers, another seed others */
    d3_oracle *x = oracle_new("noisy:brightness:10", 11, err),
              *y = oracle_new("noisy:brightness:10", 11, err),
              *z = oracle_new("noisy:brightness:10", 12, err);
    CHECK(x && y && z, "%s", err);
    if (x && y && z) {
        int same = 1, differ = 0;
        for (int i = 0; i < 200; i++) {
            int cx = oracle_judge(x, a, b, S, S), cy = oracle_judge(y, a, b, S, S),
                cz = oracle_judge(z, a, b, S, S);
            same &= cx == cy;
            differ |= cx != cz;
        }
        CHECK(same, "the same seed repeats its answers");
        CHECK(differ, "another seed answers differently somewhere in 200");
    }
    oracle_free(x);
    oracle_free(y);
    oracle_free(z);
    /* the default temperature is named */
    d3_oracle *d = oracle_new("noisy:jpeg-compressibility", 0, err);
    CHECK(d && !strncmp(oracle_name(d), "noisy:jpeg-compressibility:", 27), "%s",
          d ? oracle_name(d) : err);
    oracle_free(d);
}

/* marks of a group of brightnesses v[0..k-1] by oracle o */
static int marks_of(d3_oracle *o, const int *v, int k, char *marks) {
    static uint8_t img[GROUPS_MAX_K + 1][S * S * 3];
    const uint8_t *p[GROUPS_MAX_K + 1];
    for (int i = 0; i < k; i++) {
        fill(img[i], v[i]);
        p[i] = img[i];
    }
    return oracle_mark_group(o, p, k, S, S, marks);
}

static void test_group_marks(void) {
    char err[D3_ERRLEN], m[GROUPS_MARKS_LEN];
    d3_oracle *o = oracle_new("brightness", 0, err);
    CHECK(marks_of(o, (int[]){10, 200, 50, 120}, 4, m) == 4 && !strcmp(m, "bgbg"), "k 4: %s", m);
    CHECK(marks_of(o, (int[]){10, 20, 30, 40, 50}, 5, m) == 4 && !strcmp(m, "bb-gg"), "k 5: %s", m);
    CHECK(marks_of(o, (int[]){5, 3, 3, 1}, 4, m) == 2 && !strcmp(m, "g--b"), "ties across the split: %s", m);
    CHECK(marks_of(o, (int[]){9, 9, 9}, 3, m) == 0 && !strcmp(m, "---"), "all tied: %s", m);
    CHECK(marks_of(o, (int[]){1, 2, 3, 4, 5, 6, 7, 8}, 8, m) == 8 && !strcmp(m, "bbbbgggg"), "k 8: %s", m);
    CHECK(marks_of(o, (int[]){1, 2}, 2, m) == -1, "k 2 refused");
    CHECK(marks_of(o, (int[]){1, 2, 3, 4, 5, 6, 7, 8, 9}, 9, m) == -1, "k 9 refused");
    oracle_free(o);
    /* noisy, T = 4: the two middle images (100 and 104) of a group with a
     * far brighter and a far darker one decide the split between them
     * alone, and the brighter is good with P = sigmoid(4 / 4) = 0.731,
     * as oracle_judge would prefer it */
    d3_oracle *n = oracle_new("noisy:brightness:4", 5, err);
    const int trials = 4000;
    int good = 0, other = 0;
    for (int t = 0; t < trials; t++) {
        marks_of(n, (int[]){100, 255, 104, 0}, 4, m);
        good += m[2] == 'g' && m[0] == 'b';
        other += m[1] != 'g' || m[3] != 'b';
    }
    double f = (double)good / trials;
    CHECK(f > 0.70 && f < 0.76, "noisy group: the brighter middle image good in %.3f (want 0.731)", f);
    CHECK(other == 0, "noisy group: the extremes flipped %d times", other);
    oracle_free(n);
}

static void test_unknown(void) {
    char err[D3_ERRLEN] = "";
    CHECK(!oracle_new("sharpness", 0, err), "unknown accepted");
    CHECK(strstr(err, "unknown oracle 'sharpness'") && strstr(err, "jpeg-compressibility") &&
              strstr(err, "jpeg-incompressibility") && strstr(err, "brightness") &&
              strstr(err, "noisy:"),
          "err: %s", err);
    CHECK(!oracle_new("noisy:sharpness:2", 0, err) && strstr(err, "'sharpness'"), "err: %s", err);
    CHECK(!oracle_new("noisy:brightness:-1", 0, err) && strstr(err, "> 0"), "err: %s", err);
    CHECK(!oracle_new("noisy:brightness:x", 0, err) && strstr(err, "temperature"), "err: %s", err);
    CHECK(!oracle_new("", 0, err) && strstr(err, "brightness"), "err: %s", err);
}

/* ---- the labeler protocol ---- */

#define LAB "tests/data/labelers/"

static void test_labeler_roundtrip(void) {
    char err[D3_ERRLEN];
    d3_labeler *l = labeler_start("sh " LAB "always_a.sh", 5000, err);
    CHECK(l, "%s", err);
    if (!l) return;
    for (long id = 0; id < 5; id++) {
        int c = -1;
        int rc = labeler_ask(l, id, "smiling face", "/tmp/a.png", "/tmp/b.png", &c, err);
        CHECK(rc == 0 && c == SESSION_A, "pair %ld: rc %d choice %d (%s)", id, rc, c,
              rc ? err : "");
    }
    labeler_stop(l);
}

/* the line's fields arrive as sent; blanks and CR around the answer are
 * ignored; every answer word is understood; answers arrive in order even
 * when they come in one burst */
static void test_labeler_fields(void) {
    char err[D3_ERRLEN];
    const char *cmd =
        "while IFS=\"$(printf '\\t')\" read -r id p a b; do "
        "if [ \"$p\" = 'smiling face' ] && [ \"$a\" = /x/a.png ] && [ \"$b\" = /x/b.png ]; then "
        "case $id in 1) printf ' B \\r\\n';; 2) echo tie;; 3) echo skip;; *) echo A;; esac; "
        "else echo \"bad $id\"; fi; done";
    d3_labeler *l = labeler_start(cmd, 5000, err);
    CHECK(l, "%s", err);
    if (!l) return;
    int want[] = {SESSION_A, SESSION_B, SESSION_TIE, SESSION_SKIP, SESSION_A};
    for (long id = 0; id < 5; id++) {
        int c = -1;
        int rc = labeler_ask(l, id, "smiling face", "/x/a.png", "/x/b.png", &c, err);
        CHECK(rc == 0 && c == want[id], "pair %ld: rc %d choice %d (%s)", id, rc, c, rc ? err : "");
    }
    labeler_stop(l);
    /* a tab inside a field cannot be sent */
    l = labeler_start("sh " LAB "always_a.sh", 5000, err);
    int c;
    CHECK(l && labeler_ask(l, 9, "a\tb", "/x/a.png", "/x/b.png", &c, err) && strstr(err, "tab"),
          "err: %s", err);
    labeler_stop(l);
}

static void test_labeler_garbage(void) {
    char err[D3_ERRLEN] = "";
    d3_labeler *l = labeler_start("sh " LAB "garbage.sh", 5000, err);
    CHECK(l, "%s", err);
    if (!l) return;
    int c;
    CHECK(!labeler_ask(l, 1, "cat", "a.png", "b.png", &c, err) && c == SESSION_A, "first: %s", err);
    CHECK(!labeler_ask(l, 2, "cat", "a.png", "b.png", &c, err) && c == SESSION_A, "second: %s",
          err);
    CHECK(labeler_ask(l, 3, "cat", "a.png", "b.png", &c, err) == -1, "garbage accepted");
    CHECK(strstr(err, "labeler 'sh " LAB "garbage.sh' answered 'maybe?[31m red' for pair 3; "
                      "expected A, B, tie or skip"),
          "err: %s", err);
    CHECK(!strchr(err, '\033'), "the escape is sanitized: %s", err);
    labeler_stop(l);
    /* a long answer is quoted truncated */
    l = labeler_start("read -r x; printf '%0300d\\n' 0", 5000, err);
    CHECK(l && labeler_ask(l, 4, "cat", "a.png", "b.png", &c, err) == -1 && strstr(err, "...'") &&
              strlen(err) < 200,
          "err: %s", err);
    labeler_stop(l);
}

static void test_labeler_exits(void) {
    char err[D3_ERRLEN] = "";
    d3_labeler *l = labeler_start("sh " LAB "exits.sh", 5000, err);
    CHECK(l, "%s", err);
    if (!l) return;
    int c;
    CHECK(!labeler_ask(l, 1, "cat", "a.png", "b.png", &c, err) && c == SESSION_B, "first: %s", err);
    CHECK(labeler_ask(l, 2, "cat", "a.png", "b.png", &c, err) == -1 &&
              strstr(err,
                     "labeler 'sh " LAB "exits.sh' exited with status 3 before answering pair 2"),
          "err: %s", err);
    /* asking again after it is gone: an error, not SIGPIPE */
    CHECK(labeler_ask(l, 3, "cat", "a.png", "b.png", &c, err) == -1, "asked a dead labeler");
    labeler_stop(l);
    /* a command that is not there */
    l = labeler_start("/nonexistent/judge --flag", 5000, err);
    CHECK(l, "%s", err);
    if (l) {
        CHECK(labeler_ask(l, 0, "cat", "a.png", "b.png", &c, err) == -1 &&
                  strstr(err, "exited with status 127"),
              "err: %s", err);
        labeler_stop(l);
    }
    /* partial output, then exit: quoted */
    l = labeler_start("read -r x; printf 'hmm'; exit 1", 5000, err);
    CHECK(l && labeler_ask(l, 5, "cat", "a.png", "b.png", &c, err) == -1 &&
              strstr(err, "exited with status 1") && strstr(err, "'hmm'"),
          "err: %s", err);
    labeler_stop(l);
    /* writing to a labeler that exited without reading: many pairs so that
     * a write meets the closed pipe */
    l = labeler_start("exit 4", 5000, err);
    int failed = 0;
    for (int i = 0; l && i < 3 && !failed; i++)
        failed = labeler_ask(l, i, "cat", "a", "b", &c, err) == -1;
    CHECK(failed && strstr(err, "exited with status 4"), "err: %s", err);
    labeler_stop(l);
}

static void test_labeler_hangs(void) {
    char err[D3_ERRLEN] = "";
    d3_labeler *l = labeler_start("sh " LAB "hang.sh", 1000, err);
    CHECK(l, "%s", err);
    if (!l) return;
    int c;
    CHECK(labeler_ask(l, 7, "cat", "a.png", "b.png", &c, err) == -1 &&
              strstr(err, "labeler 'sh " LAB "hang.sh' gave no answer within 1 s for pair 7"),
          "err: %s", err);
    labeler_stop(l); /* must not wait for the sleep */
}

/* realism: a data set folder made here (class "gray": flat 120, 127 and
 * 134; class "red": a red square on white), written as PNGs like `d3po
 * dataset` does (no classes.tsv: the folder names are the prompts). */
static void test_realism(void) {
    char err[D3_ERRLEN], dir[] = "/tmp/d3po-realism.XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    uint8_t img[S * S * 3], rnd[S * S * 3], checker[S * S * 3];
    snprintf(path, sizeof path, "%s/gray", dir);
    mkdir(path, 0777);
    snprintf(path, sizeof path, "%s/red", dir);
    mkdir(path, 0777);
    int grays[3] = {120, 127, 134};
    for (int i = 0; i < 3; i++) {
        fill(img, grays[i]);
        snprintf(path, sizeof path, "%s/gray/%d.png", dir, i);
        CHECK(png_write_rgb(path, img, S, S, err) == 0, "%s", err);
    }
    fill(img, 255);
    for (int y = 8; y < 24; y++)
        for (int x = 8; x < 24; x++) img[(y * S + x) * 3 + 1] = img[(y * S + x) * 3 + 2] = 0;
    snprintf(path, sizeof path, "%s/red/0.png", dir);
    CHECK(png_write_rgb(path, img, S, S, err) == 0, "%s", err);

    /* the folder: $D3PO_DATASET, and a missing one is an error naming it */
    setenv("D3PO_DATASET", "/nonexistent/d3po-data", 1);
    CHECK(!oracle_new("realism", 0, err) && strstr(err, "/nonexistent/d3po-data") &&
              strstr(err, "d3po dataset emoji"), "err: %s", err);
    setenv("D3PO_DATASET", dir, 1);
    d3_oracle *o = oracle_new("realism", 0, err);
    CHECK(o != NULL, "%s", err);
    if (!o) return;
    CHECK(oracle_needs_prompt(o), "realism needs a prompt");
    fill(img, 127);
    CHECK(isnan(oracle_score(o, img, S, S)), "a score without a class");
    CHECK(oracle_set_prompt(o, "gray", S, err) == 0, "%s", err);
    /* distances 7, 0, 7 to the three gray images (only 3 < 5 in the class) */
    double sg = oracle_score(o, img, S, S);
    CHECK(fabs(sg + 14.0 / 3) < 1e-4, "flat 127 scores %g, expected -14/3", sg);
    noise(rnd, 5);
    CHECK(oracle_judge(o, img, rnd, S, S) == SESSION_A, "an image of the class beats noise (A)");
    CHECK(oracle_judge(o, rnd, img, S, S) == SESSION_B, "an image of the class beats noise (B)");
    CHECK(oracle_score(o, rnd, 16, 16) != oracle_score(o, rnd, 16, 16), "a size other than S: NAN");
    /* the blur: a one-pixel checkerboard of 0 and 255 blurs to 127.5
     * inside (edges clamped: off by up to a half there), so it scores near
     * the gray images although every pixel is 127.5 away from them */
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) memset(checker + (y * S + x) * 3, (x + y) % 2 ? 255 : 0, 3);
    float bl[S * S * 3];
    oracle_blur(bl, checker, S, S);
    CHECK(bl[(5 * S + 7) * 3] == 127.5f && bl[(20 * S + 20) * 3 + 2] == 127.5f, "blurred %g %g",
          bl[(5 * S + 7) * 3], bl[(20 * S + 20) * 3 + 2]);
    double sc = oracle_score(o, checker, S, S);
    CHECK(sc > -40 && sc < sg, "checkerboard scores %g (flat 127: %g)", sc, sg);
    /* the class decides: the red square is realistic as "red", not as "gray" */
    snprintf(path, sizeof path, "%s/red/0.png", dir);
    uint8_t *red;
    int W, H;
    CHECK(png_read_rgb(path, &red, &W, &H, err) == 0, "%s", err);
    CHECK(oracle_set_prompt(o, "red", S, err) == 0, "%s", err);
    CHECK(oracle_judge(o, red, img, S, S) == SESSION_A, "red square as red");
    CHECK(oracle_set_prompt(o, "gray", S, err) == 0, "%s", err);
    CHECK(oracle_judge(o, red, img, S, S) == SESSION_B, "red square as gray");
    free(red);
    /* an unknown class is an error naming it (escaped) and the folder */
    CHECK(oracle_set_prompt(o, "purple\x1b[2J", S, err) == -1 && strstr(err, "'purple\\x1b[2J'") &&
              strstr(err, dir), "err: %s", err);
    CHECK(isnan(oracle_score(o, img, S, S)), "a score after an unknown class");
    /* another size reloads the folder */
    CHECK(oracle_set_prompt(o, "gray", 16, err) == 0, "%s", err);
    uint8_t small[16 * 16 * 3];
    memset(small, 127, sizeof small);
    CHECK(fabs(oracle_score(o, small, 16, 16) + 14.0 / 3) < 1e-4, "16x16 flat 127");
    oracle_free(o);
    d3_oracle *n = oracle_new("noisy:realism", 3, err);
    CHECK(n && !strcmp(oracle_name(n), "noisy:realism:2"), "noisy:realism: %s", n ? oracle_name(n) : err);
    if (n) {
        CHECK(oracle_set_prompt(n, "gray", S, err) == 0, "%s", err);
        int a = 0;
        for (int i = 0; i < 50; i++) a += oracle_judge(n, img, rnd, S, S) == SESSION_A;
        CHECK(a == 50, "noisy realism with a 60-unit gap: %d of 50", a);
        oracle_free(n);
    }
    unsetenv("D3PO_DATASET");
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/gray/%d.png", dir, i);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/red/0.png", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/gray", dir);
    rmdir(path);
    snprintf(path, sizeof path, "%s/red", dir);
    rmdir(path);
    rmdir(dir);
}

int main(void) {
    RUN(test_jpeg);
    RUN(test_brightness);
    RUN(test_noisy);
    RUN(test_group_marks);
    RUN(test_unknown);
    RUN(test_realism);
    RUN(test_labeler_roundtrip);
    RUN(test_labeler_fields);
    RUN(test_labeler_garbage);
    RUN(test_labeler_exits);
    RUN(test_labeler_hangs);
    return t_done();
}
