/* rng.c - Philox4x32-10 and the distributions built on it (see rng.h). Each
 * call consumes whole 128-bit blocks, so the state is just a block counter. */
#include "rng.h"

#include <math.h>

static void philox(uint32_t ctr[4], const uint32_t key0[2]) {
    uint32_t k0 = key0[0], k1 = key0[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * ctr[0];
        uint64_t p1 = (uint64_t)0xCD9E8D57u * ctr[2];
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ ctr[1] ^ k0, n1 = lo1, n2 = hi0 ^ ctr[3] ^ k1, n3 = lo0;
        ctr[0] = n0; ctr[1] = n1; ctr[2] = n2; ctr[3] = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

static void block(d3_rng *r, uint32_t out[4]) {
    uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
    out[0] = (uint32_t)r->counter;
    out[1] = (uint32_t)(r->counter >> 32);
    out[2] = (uint32_t)r->stream;
    out[3] = (uint32_t)(r->stream >> 32);
    philox(out, key);
    r->counter++;
}

void rng_init(d3_rng *r, uint64_t seed, uint64_t stream) {
    r->seed = seed;
    r->stream = stream;
    r->counter = 0;
}

static float u01(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

void rng_uniform(d3_rng *r, float *out, size_t n) {
    uint32_t b[4];
    for (size_t i = 0; i < n; i += 4) {
        block(r, b);
        for (size_t k = 0; k < 4 && i + k < n; k++) out[i + k] = u01(b[k]);
    }
}

void rng_normal(d3_rng *r, float *out, size_t n) {
    uint32_t b[4];
    for (size_t i = 0; i < n; i += 4) {
        block(r, b);
        for (int k = 0; k < 4; k += 2) {
            /* u1 in (0, 1]: never log(0) */
            double u1 = ((double)(b[k] >> 8) + 1.0) / 16777216.0;
            double u2 = (double)(b[k + 1] >> 8) / 16777216.0;
            double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
            if (i + k < n) out[i + k] = (float)(rad * cos(th));
            if (i + k + 1 < n) out[i + k + 1] = (float)(rad * sin(th));
        }
    }
}

uint32_t rng_u32(d3_rng *r) {
    uint32_t b[4];
    block(r, b);
    return b[0];
}

uint32_t rng_below(d3_rng *r, uint32_t n) {
    /* 64-bit multiply-shift with two words: bias below 2^-32, negligible. */
    uint32_t b[4];
    block(r, b);
    uint64_t x = ((uint64_t)b[0] << 32) | b[1];
    return (uint32_t)(((unsigned __int128)x * n) >> 64);
}
