/* safetensors.h - reading and writing the safetensors format
 * (8-byte little-endian header length N, N bytes of JSON header, raw
 * little-endian tensor data). Used for every d3po weight and checkpoint file.
 *
 * The parser trusts nothing: header length, JSON shape, dtype names, shapes
 * (and their products, with overflow checks), data_offsets (in bounds,
 * matching the shape's byte size, no overlaps) and __metadata__ (a map of
 * strings) are all checked, and a bad file gives a one-line error naming the
 * file and the problem.
 *
 *   st_file f;
 *   char err[D3_ERRLEN];
 *   if (st_load(&f, "m.safetensors", err)) { fprintf(stderr, "%s\n", err); ... }
 *   const st_tensor *t = st_find(&f, "conv_in.weight");
 *   const char *arch = st_meta(&f, "d3po.arch");
 *   st_free(&f);
 *
 * Large weight files (a Stable Diffusion UNet is 1.7-3.4 GB) are mapped
 * instead of read, and F32/F16/BF16 tensors are converted straight into
 * the caller's float buffer (one pass over the map, no second copy):
 *
 *   if (st_map(&f, "unet/diffusion_pytorch_model.fp16.safetensors", err)) ...;
 *   const st_tensor *t = st_find(&f, "conv_in.weight");
 *   if (st_to_f32(t, dst, "unet/...safetensors", err)) ...;  // non-finite: error
 *   st_free(&f);                                            // unmaps
 *
 *   st_writer *w = st_writer_new();
 *   st_writer_meta(w, "d3po.arch", "base=32,...");
 *   st_writer_add(w, "conv_in.weight", ST_F32, 4, shape, ptr);  // ptr borrowed until save
 *   if (st_writer_save(w, "m.safetensors", err)) ...;           // atomic
 *   st_writer_free(w);
 */
#ifndef D3PO_SAFETENSORS_H
#define D3PO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32,
    ST_F32, ST_F64, ST_I64, ST_U64, ST_DTYPE_COUNT
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;        /* = product(shape) * st_dtype_size(dtype) */
    const uint8_t *data;  /* points into the file's buffer (little-endian) */
} st_tensor;

typedef struct {
    uint8_t *buf;   /* whole file contents (owned when loaded by st_load) */
    size_t len;
    int owns_buf;
    int mapped;     /* buf is an mmap of len bytes (st_map); st_free unmaps */
    st_tensor *tensors;
    int ntensors;
    char **meta_keys, **meta_vals;
    int nmeta;
} st_file;

/* A string from a file made safe for a one-line message or the terminal:
 * control characters (C0, DEL, C1) become '?', more than 80 bytes are cut
 * at a character boundary with "...". Use st_show(x).s within one
 * expression, or keep the struct. */
typedef struct {
    char s[96];
} st_shown;
st_shown st_show(const char *in);

size_t st_dtype_size(st_dtype dt);
const char *st_dtype_name(st_dtype dt); /* "F32", ... */

/* Parses buf[0..len) (borrowed, must outlive f). `what` names the source in
 * error messages (a path). Returns 0 or -1 with err set. */
int st_parse(st_file *f, const uint8_t *buf, size_t len, const char *what, char *err);
/* Reads the whole file and parses it. Returns 0 or -1 with err naming path. */
int st_load(st_file *f, const char *path, char *err);
/* Maps the file read-only (mmap, MAP_PRIVATE) and parses it; tensors point
 * into the map, which lives until st_free. Same checks and messages as
 * st_load. (A file truncated by another process while mapped would fault
 * on access: the files read this way are the user's model files, which
 * nothing rewrites while d3po runs.) Returns 0 or -1 with err naming path. */
int st_map(st_file *f, const char *path, char *err);
void st_free(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key); /* NULL if absent */

/* IEEE half and bfloat16 bit patterns to float32, exactly (every half,
 * subnormals included, is a float32; inf and NaN stay inf and NaN). */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);
/* float32 to IEEE half and bfloat16 bit patterns, rounding to nearest,
 * ties to even (as numpy's astype(float16), PyTorch's .half() and
 * .bfloat16(), and the GPU's conversions): magnitudes from 65520 up become
 * inf in half (bfloat16 keeps float32's range; only values rounding past
 * its largest finite become inf), results below the smallest normal become
 * subnormals or +-0 with the sign kept; NaN stays a quiet NaN with the sign
 * kept and the top payload bits. The storage of the frozen base in half
 * precision (engine.dtype) goes through these (tests/test_half.c checks
 * them against numpy and PyTorch on every half and bfloat16 value, the
 * midpoints between them, and random floats). */
uint16_t st_f32_to_f16(float f);
uint16_t st_f32_to_bf16(float f);

/* Converts tensor t (F32, F16 or BF16) to float32 into dst[numel]; reads
 * the file bytes with unaligned-safe loads. A non-finite value or another
 * dtype is an error "<what>: tensor '<name>' ..." (what: the file). 0/-1. */
int st_to_f32(const st_tensor *t, float *dst, const char *what, char *err);
/* The tensor's data as floats without a copy, when it is F32 and 4-byte
 * aligned in memory (our writer's and the reference writer's files are);
 * NULL otherwise (use st_to_f32). Values are not checked. */
const float *st_f32_view(const st_tensor *t);
/* numel of t (product of its shape; 1 for a 0-dim scalar). */
size_t st_numel(const st_tensor *t);

typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
/* data is borrowed until st_writer_save returns; tensors are written in the
 * order added. Returns 0 or -1 (bad name, duplicate, too many dims). */
int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim,
                  const int64_t *shape, const void *data, char *err);
int st_writer_meta(st_writer *w, const char *key, const char *val, char *err);
/* Writes atomically: PATH.tmp.<pid>, fsync, rename over PATH, fsync dir. */
int st_writer_save(st_writer *w, const char *path, char *err);
void st_writer_free(st_writer *w);

#endif
