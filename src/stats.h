/* stats.h - small statistics for evaluation printouts: the Wilson score
 * interval of a win rate and a Unicode sparkline of a series.
 *
 * Win rates in d3po count a tie as half a win: rate = (wins + ties/2) / n
 * with n = wins + losses + ties (skipped pairs are not counted at all), and
 * the interval is the Wilson interval of that rate with that n. `d3po eval`
 * prints exactly these numbers.
 *
 *   double lo, hi;
 *   stats_wilson(7, 10, STATS_Z95, &lo, &hi);       // [0.3968, 0.8922]
 *   char line[256];
 *   stats_sparkline(line, sizeof line, scores, n);  // "▁▃▅█"
 */
#ifndef D3PO_STATS_H
#define D3PO_STATS_H
#include <stddef.h>

#define STATS_Z95 1.959964 /* two-sided 95% normal quantile */

/* Win rate with ties as half a win; 0.5 when n == 0. */
double stats_win_rate(long wins, long losses, long ties);

/* Wilson score interval for `wins` successes out of n trials (wins may be
 * fractional: ties as halves) at normal quantile z:
 *   centre = (p + z^2/2n) / (1 + z^2/n)
 *   half   = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n),   p = wins/n
 * clamped to [0, 1]. n <= 0 gives [0, 1] (nothing is known). */
void stats_wilson(double wins, double n, double z, double *lo, double *hi);

/* Writes a sparkline of v[0..n-1] into out (NUL-terminated UTF-8): one of
 * ▁▂▃▄▅▆▇█ (U+2581..U+2588, 3 bytes each) per value, scaled from the
 * series' minimum (▁) to its maximum (█); a constant series is all ▄ and a
 * non-finite value is a space. Stops at the last whole character that
 * fits. Returns the number of bytes written (without the NUL). */
size_t stats_sparkline(char *out, size_t cap, const double *v, int n);
#endif
