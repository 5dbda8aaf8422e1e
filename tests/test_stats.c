/* test_stats.c - src/stats.c: the Wilson score interval on known counts
 * (values from the closed form, computed independently; tolerance 5e-5
 * because the references are rounded to 4 decimals) and the sparkline's
 * exact bytes. */
#include "stats.h"
#include "t.h"

#define TOL 5e-5 /* references below are rounded to 4 decimals */

static void check_wilson(double w, double n, double want_lo, double want_hi) {
    double lo, hi;
    stats_wilson(w, n, STATS_Z95, &lo, &hi);
    CHECK(fabs(lo - want_lo) < TOL && fabs(hi - want_hi) < TOL,
          "%g/%g: [%.5f, %.5f], wanted [%.4f, %.4f]", w, n, lo, hi, want_lo, want_hi);
}

static void test_wilson_known(void) {
    check_wilson(7, 10, 0.3968, 0.8922);
    check_wilson(0, 10, 0.0000, 0.2775);
    check_wilson(10, 10, 0.7225, 1.0000);
    check_wilson(50, 100, 0.4038, 0.5962);
    check_wilson(1, 1, 0.2065, 1.0000);
}

static void test_wilson_edges(void) {
    double lo, hi;
    stats_wilson(0, 0, STATS_Z95, &lo, &hi);
    CHECK(lo == 0 && hi == 1, "n = 0: [%g, %g]", lo, hi);
    /* symmetric: w/n and (n-w)/n mirror each other */
    double lo2, hi2;
    stats_wilson(3, 17, STATS_Z95, &lo, &hi);
    stats_wilson(14, 17, STATS_Z95, &lo2, &hi2);
    CHECK(fabs(lo - (1 - hi2)) < 1e-12 && fabs(hi - (1 - lo2)) < 1e-12, "mirror");
    /* the interval contains the rate */
    for (int w = 0; w <= 20; w++) {
        stats_wilson(w, 20, STATS_Z95, &lo, &hi);
        CHECK(lo <= w / 20.0 && w / 20.0 <= hi, "%d/20 outside [%g, %g]", w, lo, hi);
    }
}

static void test_win_rate(void) {
    CHECK(stats_win_rate(3, 1, 2) == 4.0 / 6, "ties count half: %g", stats_win_rate(3, 1, 2));
    CHECK(stats_win_rate(0, 0, 0) == 0.5, "empty");
}

static void test_sparkline(void) {
    char s[64];
    double v[] = {0, 1, 2, 3, 4, 5, 6, 7};
    size_t n = stats_sparkline(s, sizeof s, v, 8);
    CHECK(n == 24 && !strcmp(s, "▁▂▃▄▅▆▇█"), "%zu bytes: %s", n, s);
    double c[] = {2, 2, 2};
    stats_sparkline(s, sizeof s, c, 3);
    CHECK(!strcmp(s, "▄▄▄"), "constant: %s", s);
    double m[] = {1, NAN, 3};
    stats_sparkline(s, sizeof s, m, 3);
    CHECK(!strcmp(s, "▁ █"), "nan: %s", s);
    CHECK((unsigned char)s[0] == 0xE2 && (unsigned char)s[1] == 0x96 &&
              (unsigned char)s[2] == 0x81, "bytes %02x %02x %02x", (unsigned char)s[0],
          (unsigned char)s[1], (unsigned char)s[2]);
    /* truncates at a whole character */
    n = stats_sparkline(s, 8, v, 8);
    CHECK(n == 6 && strlen(s) == 6, "truncated to %zu", n);
    n = stats_sparkline(s, sizeof s, v, 0);
    CHECK(n == 0 && s[0] == 0, "empty");
}

int main(void) {
    RUN(test_wilson_known);
    RUN(test_wilson_edges);
    RUN(test_win_rate);
    RUN(test_sparkline);
    return t_done();
}
