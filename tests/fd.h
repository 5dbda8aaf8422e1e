/* fd.h - the finite-difference gradient check shared by the tests of whole
 * models on the tape (test_tape_tx, test_sd_clip): central differences of
 * a scalar loss at up to 40 elements of a buffer, against the analytic
 * gradient, with atol = rtol = tol; the first three failures are CHECKed
 * (t.h), the largest |analytic - numeric| is returned.
 *
 *   static double loss(void *ctx) { ... forward, sum(out * r) in double ... }
 *   double mx = fd_check(loss, tp, "wq", params + off, n, grads + off, 1e-2f, 2e-3, urand);
 *
 * urand() in [-1, 1) picks the elements when n > 40. */
#ifndef D3PO_FD_H
#define D3PO_FD_H
#include <math.h>
#include <stddef.h>

#include "t.h"

static double fd_check(double (*loss)(void *), void *ctx, const char *what, float *buf, size_t n,
                       const float *g, float h, double tol, float (*urand)(void)) {
    double mx = 0;
    int bad = 0;
    for (size_t k = 0; k < 40 && k < n; k++) {
        size_t i = n <= 40 ? k : (size_t)((urand() + 1.0f) * 0.5f * n) % n;
        const float s = buf[i], xp = s + h, xm = s - h;
        buf[i] = xp;
        const double Lp = loss(ctx);
        buf[i] = xm;
        const double Lm = loss(ctx);
        buf[i] = s;
        const double num = (Lp - Lm) / ((double)xp - (double)xm), e = fabs(num - g[i]);
        if (!(e <= tol + tol * fabs(num)) && bad++ < 3)
            CHECK(0, "%s[%zu]: analytic %.7g numeric %.7g", what, i, g[i], num);
        if (!(e <= mx)) mx = e;
    }
    return mx;
}
#endif
