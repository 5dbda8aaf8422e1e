/* t.h - the tiny test runner used by every tests/test_*.c.
 *
 *   static void test_something(void) { CHECK(x == 1, "x is %d", x); }
 *   int main(void) { RUN(test_something); return t_done(); }
 *
 * A case passes when none of its CHECKs failed. t_done() prints
 * "<file>: N passed, N failed" and returns the exit status (1 on failure),
 * so a failing test fails the process. */
#ifndef D3PO_T_H
#define D3PO_T_H
#include <math.h>
#include <stdio.h>
#include <string.h>

static int t_cases_pass, t_cases_fail, t_case_failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            t_case_failed = 1;                                             \
        }                                                                  \
    } while (0)

#define RUN(fn)                                                            \
    do {                                                                   \
        t_case_failed = 0;                                                 \
        fn();                                                              \
        if (t_case_failed) { t_cases_fail++; printf("  not ok %s\n", #fn); } \
        else { t_cases_pass++; printf("  ok %s\n", #fn); }                 \
        fflush(stdout);                                                    \
    } while (0)

#define t_done() t_done_(__FILE__)
static inline int t_done_(const char *file) {
    printf("%s: %d passed, %d failed\n", file, t_cases_pass, t_cases_fail);
    return t_cases_fail ? 1 : 0;
}
#endif
