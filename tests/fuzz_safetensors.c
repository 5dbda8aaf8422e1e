/* fuzz_safetensors.c - libFuzzer target for the safetensors parser
 * (`make fuzz`; seeds in tests/data/fuzz_seed/).
 *
 * Parses the input; when the parser accepts it, every byte of every tensor
 * is read (so ASan reports any span that escapes the input), the parser's
 * invariants are checked (nbytes = numel * dtype size, spans inside the
 * data section, in offset order, tiling it exactly), and the names and
 * metadata are read back through st_find / st_meta; F32, F16 and BF16
 * tensors go through st_to_f32 (seeds f16/bf16.safetensors hold them, with
 * inf and NaN, which it must refuse). A violated invariant
 * aborts, which libFuzzer reports as a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

#define REQUIRE(c)                                                         \
    do {                                                                   \
        if (!(c)) {                                                        \
            fprintf(stderr, "fuzz_safetensors: invariant failed: %s\n", #c); \
            abort();                                                       \
        }                                                                  \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file f;
    char err[D3_ERRLEN];
    err[0] = '\0';
    if (st_parse(&f, data, size, "fuzz", err)) {
        REQUIRE(err[0] != '\0' && strlen(err) < D3_ERRLEN);
        REQUIRE(f.ntensors == 0 && f.tensors == NULL && f.nmeta == 0);
        return 0;
    }
    REQUIRE(size >= 8);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)data[i] << (8 * i);
    const uint8_t *ds = data + 8 + hl, *end = data + size;
    REQUIRE(hl <= size - 8);

    volatile uint8_t sink = 0;
    const uint8_t *pos = ds;
    for (int i = 0; i < f.ntensors; i++) {
        const st_tensor *t = &f.tensors[i];
        REQUIRE(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            REQUIRE(t->shape[d] >= 0);
            numel *= (size_t)t->shape[d]; /* cannot overflow: the parser checked */
        }
        REQUIRE(t->nbytes == numel * st_dtype_size(t->dtype));
        REQUIRE(t->data == pos); /* offset order, no holes, no overlaps */
        REQUIRE(t->data >= ds && t->nbytes <= (size_t)(end - t->data));
        for (size_t b = 0; b < t->nbytes; b++) sink ^= t->data[b];
        if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
            size_t n = st_numel(t);
            REQUIRE(n * st_dtype_size(t->dtype) == t->nbytes);
            float *out = malloc(n ? n * sizeof *out : 1);
            REQUIRE(out);
            err[0] = '\0';
            if (st_to_f32(t, out, "fuzz", err)) REQUIRE(strstr(err, "non-finite"));
            free(out);
        }
        pos = t->data + t->nbytes;
        REQUIRE(st_find(&f, t->name) == t);
        sink ^= (uint8_t)strlen(t->name);
    }
    REQUIRE(pos == end);
    for (int i = 0; i < f.nmeta; i++) {
        REQUIRE(st_meta(&f, f.meta_keys[i]) == f.meta_vals[i]);
        sink ^= (uint8_t)(strlen(f.meta_keys[i]) + strlen(f.meta_vals[i]));
    }
    (void)sink;
    st_free(&f);
    return 0;
}
