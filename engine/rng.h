/* rng.h - the seeded, counter-based random number generator of d3po
 * (Philox4x32-10, Salmon et al. 2011). A stream is (seed, stream id); its
 * whole state is (seed, stream, counter), three integers that go into
 * checkpoints, so a resumed run draws exactly the numbers an uninterrupted
 * one would. Counter-based means a GPU can draw the same numbers in
 * parallel. Normals use Box-Muller on pairs of uniforms.
 *
 *   d3_rng r; rng_init(&r, seed, RNG_STREAM_XT);
 *   rng_normal(&r, buf, n);
 */
#ifndef D3PO_RNG_H
#define D3PO_RNG_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t seed;
    uint64_t stream;
    uint64_t counter; /* number of 128-bit blocks consumed */
} d3_rng;

void rng_init(d3_rng *r, uint64_t seed, uint64_t stream);
/* uniform floats in [0, 1) with 24 random bits */
void rng_uniform(d3_rng *r, float *out, size_t n);
/* standard normal floats */
void rng_normal(d3_rng *r, float *out, size_t n);
/* a uniform integer in [0, n) (n > 0) */
uint32_t rng_below(d3_rng *r, uint32_t n);
/* one raw 32-bit draw */
uint32_t rng_u32(d3_rng *r);

#endif
