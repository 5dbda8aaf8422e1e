/* stats.c - Wilson score intervals and sparklines (see stats.h). Pure
 * functions with no state; tests/test_stats.c checks them on known
 * counts. */
#include "stats.h"

#include <math.h>
#include <string.h>

double stats_win_rate(long wins, long losses, long ties) {
    long n = wins + losses + ties;
    return n > 0 ? (wins + 0.5 * ties) / (double)n : 0.5;
}

void stats_wilson(double wins, double n, double z, double *lo, double *hi) {
    if (!(n > 0)) {
        *lo = 0;
        *hi = 1;
        return;
    }
    double p = wins / n, z2 = z * z;
    double den = 1 + z2 / n;
    double centre = (p + z2 / (2 * n)) / den;
    double half = z * sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / den;
    *lo = fmax(0.0, centre - half);
    *hi = fmin(1.0, centre + half);
}

size_t stats_sparkline(char *out, size_t cap, const double *v, int n) {
    if (!cap) return 0;
    double mn = INFINITY, mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) {
            mn = fmin(mn, v[i]);
            mx = fmax(mx, v[i]);
        }
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            if (len + 2 > cap) break;
            out[len++] = ' ';
            continue;
        }
        if (len + 4 > cap) break;
        int level = 3; /* ▄ for a constant series */
        if (mx > mn) {
            level = (int)floor((v[i] - mn) / (mx - mn) * 8);
            if (level > 7) level = 7;
            if (level < 0) level = 0;
        }
        out[len++] = (char)0xE2;
        out[len++] = (char)0x96;
        out[len++] = (char)(0x81 + level);
    }
    out[len] = 0;
    return len;
}
