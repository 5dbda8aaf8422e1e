/* test_half.c - float32 <-> IEEE half and bfloat16 conversions of
 * engine/safetensors.c (st_f16_to_f32, st_bf16_to_f32, st_f32_to_f16,
 * st_f32_to_bf16) against numpy and PyTorch (tests/half_ref.py run with
 * Debian's /usr/bin/python3): every half to float32, and to half and
 * bfloat16 every half and bfloat16 value, the midpoints between neighbours
 * (ties go to even) and a float32 ulp either side, the overflow and
 * underflow edges, and 300000 random float32 bit patterns. Bits must
 * agree exactly; NaN only has to stay NaN, with its sign in half (numpy
 * keeps a signalling payload, the GPU and we return a quiet NaN; PyTorch
 * 1.13's bfloat16 of any NaN is 0xffff). Skipped under
 * the sanitizer build (D3PO_ASAN), like the other python-backed tests. */
#include <stdint.h>
#include <stdlib.h>

#include "../engine/safetensors.h"
#include "t.h"

static uint32_t *ins;
static uint16_t *ref16, *refb16;
static uint32_t n, all16[65536];

static int is_nan16(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
static int is_nanb16(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }

static void test_f16_to_f32(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint32_t u;
        memcpy(&u, &f, 4);
        int ok = u == all16[h] || (isnan(f) && (all16[h] & 0x7fffffffu) > 0x7f800000u);
        if (!ok && bad++ < 5) CHECK(0, "half 0x%04x: 0x%08x, numpy 0x%08x", h, u, all16[h]);
    }
    CHECK(bad == 0, "%d of 65536 halves differ from numpy", bad);
}

static void test_f32_to_f16(void) {
    int bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, &ins[i], 4);
        uint16_t h = st_f32_to_f16(f);
        int ok = h == ref16[i] || (is_nan16(h) && is_nan16(ref16[i]) && (h >> 15) == (ref16[i] >> 15));
        if (!ok && bad++ < 5) CHECK(0, "float 0x%08x (%g): half 0x%04x, numpy 0x%04x", ins[i], f, h, ref16[i]);
    }
    CHECK(bad == 0, "%d of %u floats differ from numpy's float16", bad, n);
}

static void test_f32_to_bf16(void) {
    int bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, &ins[i], 4);
        uint16_t b = st_f32_to_bf16(f);
        int ok = b == refb16[i] || (is_nanb16(b) && is_nanb16(refb16[i])); /* torch: one NaN, 0xffff */
        if (!ok && bad++ < 5) CHECK(0, "float 0x%08x (%g): bf16 0x%04x, torch 0x%04x", ins[i], f, b, refb16[i]);
    }
    CHECK(bad == 0, "%d of %u floats differ from PyTorch's bfloat16", bad, n);
}

/* Without the reference: what the definitions alone say. */
static void test_edges(void) {
    CHECK(st_f32_to_f16(65504.0f) == 0x7bff && st_f32_to_f16(65520.0f) == 0x7c00, "half max, overflow");
    CHECK(st_f32_to_f16(nextafterf(65520.0f, 0)) == 0x7bff, "just below 65520 stays finite");
    CHECK(st_f32_to_f16(ldexpf(1, -25)) == 0 && st_f32_to_f16(ldexpf(1.5f, -25)) == 1, "underflow tie to even");
    CHECK(st_f32_to_f16(-0.0f) == 0x8000 && st_f32_to_f16(-INFINITY) == 0xfc00, "signed zero, -inf");
    CHECK(is_nan16(st_f32_to_f16(NAN)) && is_nanb16(st_f32_to_bf16(NAN)), "NaN stays NaN");
    CHECK(st_f32_to_bf16(1.0f) == 0x3f80 && st_f32_to_bf16(3.4028235e38f) == 0x7f80, "bf16 1, overflow");
    for (uint32_t h = 0; h < 65536; h++) /* every non-NaN half survives the round trip */
        if (!is_nan16((uint16_t)h) && st_f32_to_f16(st_f16_to_f32((uint16_t)h)) != h) {
            CHECK(0, "half 0x%04x does not round-trip", h);
            break;
        }
}

static void *read_all(FILE *f, size_t size) {
    void *p = malloc(size);
    if (!p || fread(p, 1, size, f) != size) {
        free(p);
        return NULL;
    }
    return p;
}

int main(void) {
    RUN(test_edges);
    if (getenv("D3PO_ASAN")) {
        printf("test_half: the numpy/PyTorch comparison is skipped under the sanitizers\n");
        return t_done();
    }
    FILE *f = popen("/usr/bin/python3 tests/half_ref.py", "r");
    if (!f || fread(all16, 4, 65536, f) != 65536 || fread(&n, 4, 1, f) != 1 || n == 0 || n > 1u << 24 ||
        !(ins = read_all(f, (size_t)n * 4)) || !(ref16 = read_all(f, (size_t)n * 2)) ||
        !(refb16 = read_all(f, (size_t)n * 2))) {
        fprintf(stderr, "test_half: tests/half_ref.py (with /usr/bin/python3, numpy, torch) gave no reference\n");
        if (f) pclose(f);
        return 1;
    }
    if (pclose(f) != 0) {
        fprintf(stderr, "test_half: tests/half_ref.py failed\n");
        return 1;
    }
    RUN(test_f16_to_f32);
    RUN(test_f32_to_f16);
    RUN(test_f32_to_bf16);
    free(ins);
    free(ref16);
    free(refb16);
    return t_done();
}
