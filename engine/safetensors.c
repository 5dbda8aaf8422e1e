/* safetensors.c - the safetensors reader and writer behind every d3po weight
 * and checkpoint file.
 *
 * Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (maybe
 * padded with trailing spaces), then the data section. The JSON is an object
 * mapping tensor name -> {"dtype", "shape", "data_offsets": [begin, end)}
 * with offsets relative to the data section, plus an optional
 * "__metadata__" object of string -> string.
 *
 * The parser (st_parse) follows the reference implementation (the Rust
 * `safetensors` crate): header at most 100 MB, offsets sorted must tile the
 * data section exactly (no overlaps, no holes, nothing left over), and every
 * tensor's byte span must equal numel * dtype size with overflow-checked
 * products. Every failure is one line "<file>: <problem>" naming the tensor
 * or key. Tensors are returned in data-offset order and point into the
 * caller's buffer; they are aligned only as well as the file lays them out
 * (our writer and the reference one start the data section at a multiple of
 * 8, but a U8 tensor followed by an F32 one leaves the F32 unaligned), so
 * readers of odd layouts should memcpy.
 *
 * st_map maps a file instead of reading it, and st_to_f32 converts F32,
 * F16 and BF16 tensors from the map straight into a float buffer, so a
 * multi-gigabyte fp16 UNet is read once and stored once (as float32).
 *
 * The writer (st_writer_*) writes tensors in the order added, the header as
 * compact JSON with "__metadata__" first, padded with spaces so the data
 * starts at a multiple of 8, all through fs_write_atomic. */
#include "safetensors.h"

#include <errno.h>
#ifdef __F16C__
#include <immintrin.h>
#endif
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

/* Tensor bytes are copied between memory and file as-is: the format is
 * little-endian and so are the machines we build for (x86-64, aarch64). */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors.c copies tensor data as-is and needs a little-endian host");

/* The reference implementation's limit on the header length. */
#define ST_MAX_HEADER 100000000ull

static const struct {
    const char *name;
    size_t size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},   [ST_F64] = {"F64", 8},   [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},
};

size_t st_dtype_size(st_dtype dt) {
    return (unsigned)dt < ST_DTYPE_COUNT ? st_dtypes[dt].size : 0;
}

const char *st_dtype_name(st_dtype dt) {
    return (unsigned)dt < ST_DTYPE_COUNT ? st_dtypes[dt].name : "?";
}

static int dtype_from_name(const char *s) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) return i;
    return -1;
}

/* ---- message helpers ------------------------------------------------- */

/* A name or value made safe for a one-line message: control bytes (C0,
 * DEL, and the C1 controls U+0080..U+009F, which some terminals obey)
 * become '?', and anything past 80 bytes is cut (at a UTF-8 boundary) with
 * "...". SHOW(x) is only valid within one full expression (a function's
 * argument list); to keep it longer hold the `shown` value itself. */
typedef st_shown shown;

st_shown st_show(const char *in) {
    shown o;
    size_t n = 0, max = 80;
    const unsigned char *p = (const unsigned char *)in;
    for (; *p && n < max; p++, n++) {
        if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) { /* C1 control in UTF-8 */
            o.s[n] = '?';
            p++;
        } else {
            o.s[n] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
        }
    }
    if (*p) {
        if ((*p & 0xc0) == 0x80) { /* the cut splits a character: drop its start */
            while (n > 0 && ((unsigned char)o.s[n - 1] & 0xc0) == 0x80) n--;
            if (n > 0) n--;
        }
        memcpy(o.s + n, "...", 3);
        n += 3;
    }
    o.s[n] = '\0';
    return o;
}

static shown show(const char *in) { return st_show(in); }

#define SHOW(x) (show(x).s)

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* "[16,3,3,3]" */
static void fmt_shape(char *out, size_t cap, const int64_t *shape, int ndim) {
    size_t n = 0;
    n += (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* numel * dtype size with overflow checks. Returns 0 or -1 on overflow. */
static int shape_bytes(const int64_t *shape, int ndim, st_dtype dt, size_t *out) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(n, (size_t)shape[i], &n)) return -1;
    if (__builtin_mul_overflow(n, st_dtype_size(dt), &n)) return -1;
    *out = n;
    return 0;
}

/* ---- parser ------------------------------------------------------------ */

/* A tensor's data_offsets while the header is being checked. */
typedef struct {
    size_t begin, end;
    int idx; /* into the tensor array in header order */
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* A non-negative JSON integer, or -1 when v is anything else. */
static int64_t json_nonneg(const json_t *v) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

static int parse_meta(st_file *f, const json_t *meta, const char *what, char *err) {
    if (!json_is_object(meta))
        return d3_errf(err, "%s: __metadata__ is a JSON %s, expected an object of strings",
                       what, json_kind(meta));
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof(char *));
    f->meta_vals = calloc(n ? n : 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) return d3_errf(err, "%s: out of memory", what);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return d3_errf(err, "%s: __metadata__ key '%s': value is a JSON %s, expected a string",
                           what, SHOW(k), json_kind(v));
        char *ks = strdup(k), *vs = strdup(json_string_value(v));
        if (!ks || !vs) {
            free(ks);
            free(vs);
            return d3_errf(err, "%s: out of memory", what);
        }
        f->meta_keys[f->nmeta] = ks;
        f->meta_vals[f->nmeta] = vs;
        f->nmeta++;
    }
    return 0;
}

/* Checks one tensor entry and fills t (name excepted) and s. dlen is the
 * data section's length. */
static int parse_tensor(st_tensor *t, span *s, const char *name, const json_t *v,
                        size_t dlen, const char *what, char *err) {
    shown shn = show(name);
    const char *nm = shn.s;
    if (!json_is_object(v))
        return d3_errf(err, "%s: tensor '%s': entry is a JSON %s, expected an object", what, nm,
                       json_kind(v));

    const json_t *dt = json_object_get(v, "dtype");
    if (!dt) return d3_errf(err, "%s: tensor '%s': missing \"dtype\"", what, nm);
    if (!json_is_string(dt))
        return d3_errf(err, "%s: tensor '%s': dtype is a JSON %s, expected a string", what, nm,
                       json_kind(dt));
    int d = dtype_from_name(json_string_value(dt));
    if (d < 0)
        return d3_errf(err, "%s: tensor '%s': unknown dtype '%s'", what, nm,
                       SHOW(json_string_value(dt)));
    t->dtype = (st_dtype)d;

    const json_t *sh = json_object_get(v, "shape");
    if (!sh) return d3_errf(err, "%s: tensor '%s': missing \"shape\"", what, nm);
    if (!json_is_array(sh))
        return d3_errf(err, "%s: tensor '%s': shape is a JSON %s, expected an array of non-negative integers",
                       what, nm, json_kind(sh));
    size_t nd = json_array_size(sh);
    if (nd > ST_MAX_DIMS)
        return d3_errf(err, "%s: tensor '%s': shape has %zu dims, at most %d supported", what, nm,
                       nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        int64_t x = json_nonneg(json_array_get(sh, i));
        if (x < 0)
            return d3_errf(err, "%s: tensor '%s': shape[%zu] is not a non-negative integer", what,
                           nm, i);
        t->shape[i] = x;
    }
    char shs[ST_MAX_DIMS * 21 + 4];
    fmt_shape(shs, sizeof shs, t->shape, t->ndim);
    if (shape_bytes(t->shape, t->ndim, t->dtype, &t->nbytes))
        return d3_errf(err, "%s: tensor '%s': shape %s %s overflows the byte count", what, nm,
                       shs, st_dtype_name(t->dtype));

    const json_t *off = json_object_get(v, "data_offsets");
    if (!off) return d3_errf(err, "%s: tensor '%s': missing \"data_offsets\"", what, nm);
    int64_t b = json_nonneg(json_array_get(off, 0)), e = json_nonneg(json_array_get(off, 1));
    if (!json_is_array(off) || json_array_size(off) != 2 || b < 0 || e < 0)
        return d3_errf(err, "%s: tensor '%s': data_offsets is not two non-negative integers [begin, end]",
                       what, nm);
    if (b > e)
        return d3_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld) has begin > end", what, nm,
                       (long long)b, (long long)e);
    if ((uint64_t)e > dlen)
        return d3_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld) end beyond the data section (%zu bytes)",
                       what, nm, (long long)b, (long long)e, dlen);
    if ((uint64_t)(e - b) != t->nbytes)
        return d3_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld) hold %lld bytes, shape %s %s needs %zu",
                       what, nm, (long long)b, (long long)e, (long long)(e - b), shs,
                       st_dtype_name(t->dtype), t->nbytes);
    s->begin = (size_t)b;
    s->end = (size_t)e;
    return 0;
}

int st_parse(st_file *f, const uint8_t *buf, size_t len, const char *what, char *err) {
    memset(f, 0, sizeof *f);
    if (!what) what = "safetensors";
    if (len < 8)
        return d3_errf(err, "%s: file is %zu bytes, too short for the 8-byte header length", what,
                       len);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)buf[i] << (8 * i);
    if (n == 0) return d3_errf(err, "%s: header length is 0, expected a JSON header", what);
    if (n > ST_MAX_HEADER)
        return d3_errf(err, "%s: header length %llu exceeds the %llu-byte limit", what,
                       (unsigned long long)n, ST_MAX_HEADER);
    if (n > len - 8)
        return d3_errf(err, "%s: header length %llu runs past the end of the file (%zu bytes follow the length field)",
                       what, (unsigned long long)n, len - 8);
    const uint8_t *data = buf + 8 + n;
    size_t dlen = len - 8 - (size_t)n;

    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return d3_errf(err, "%s: header is not valid JSON: %s (line %d, column %d)", what, je.text,
                       je.line, je.column);
    span *spans = NULL;
    st_tensor *tmp = NULL;
    int rc = -1;
    if (!json_is_object(root)) {
        d3_errf(err, "%s: header is a JSON %s, expected an object", what, json_kind(root));
        goto out;
    }

    const json_t *meta = json_object_get(root, "__metadata__");
    size_t nt = json_object_size(root) - (meta ? 1 : 0);
    if (nt > (size_t)INT32_MAX) {
        d3_errf(err, "%s: %zu tensors, too many", what, nt);
        goto out;
    }
    tmp = calloc(nt ? nt : 1, sizeof *tmp);
    spans = calloc(nt ? nt : 1, sizeof *spans);
    f->tensors = calloc(nt ? nt : 1, sizeof *f->tensors);
    if (!tmp || !spans || !f->tensors) {
        d3_errf(err, "%s: out of memory for %zu tensors", what, nt);
        goto out;
    }
    if (meta && parse_meta(f, meta, what, err)) goto out;

    /* Check each entry in header order; names are owned by tmp until the
     * entries move to f->tensors in offset order. */
    int k = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        if (parse_tensor(&tmp[k], &spans[k], key, val, dlen, what, err)) goto out;
        tmp[k].name = strdup(key);
        if (!tmp[k].name) {
            d3_errf(err, "%s: out of memory", what);
            goto out;
        }
        spans[k].idx = k;
        k++;
    }

    /* Sorted by (begin, end), the spans must tile [0, dlen): each starts
     * where the previous one ended (empty tensors may sit anywhere on that
     * chain, as in the reference implementation). */
    qsort(spans, nt, sizeof *spans, span_cmp);
    size_t pos = 0;
    int prev = -1;
    for (size_t i = 0; i < nt; i++) {
        const span *s = &spans[i];
        if (s->begin < pos) {
            d3_errf(err, "%s: tensor '%s' data_offsets [%zu, %zu) overlap tensor '%s' [%zu, %zu)",
                    what, SHOW(tmp[s->idx].name), s->begin, s->end, SHOW(tmp[spans[prev].idx].name),
                    spans[prev].begin, spans[prev].end);
            goto out;
        }
        if (s->begin > pos) {
            d3_errf(err, "%s: bytes [%zu, %zu) of the data section belong to no tensor (hole before tensor '%s')",
                    what, pos, s->begin, SHOW(tmp[s->idx].name));
            goto out;
        }
        pos = s->end;
        prev = (int)i;
    }
    if (pos != dlen) {
        d3_errf(err, "%s: bytes [%zu, %zu) of the data section belong to no tensor (trailing data)",
                what, pos, dlen);
        goto out;
    }

    for (size_t i = 0; i < nt; i++) {
        st_tensor *t = &f->tensors[i];
        *t = tmp[spans[i].idx];
        tmp[spans[i].idx].name = NULL;
        t->data = data + spans[i].begin;
    }
    f->ntensors = (int)nt;
    f->buf = (uint8_t *)buf;
    f->len = len;
    f->owns_buf = 0;
    rc = 0;

out:
    if (tmp)
        for (size_t i = 0; i < nt; i++) free(tmp[i].name);
    free(tmp);
    free(spans);
    json_decref(root);
    if (rc) st_free(f);
    return rc;
}

int st_load(st_file *f, const char *path, char *err) {
    memset(f, 0, sizeof *f);
    unsigned char *buf;
    size_t len;
    if (fs_read_all(path, &buf, &len, err)) return -1;
    if (st_parse(f, buf, len, path, err)) {
        free(buf);
        return -1;
    }
    f->owns_buf = 1;
    return 0;
}

int st_map(st_file *f, const char *path, char *err) {
    memset(f, 0, sizeof *f);
    struct stat st;
    int fd = fs_open_read(path, &st, err);
    if (fd < 0) return -1;
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return d3_errf(err, "%s: not a regular file (a safetensors file is mapped, not streamed)",
                       path);
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) { /* mmap of 0 bytes fails; st_parse says what is wrong */
        close(fd);
        static const uint8_t none[8];
        return st_parse(f, none, len, path, err);
    }
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return d3_errf(err, "%s: mmap of %zu bytes: %s", path, len, strerror(e));
    if (st_parse(f, m, len, path, err)) {
        munmap(m, len);
        return -1;
    }
    f->mapped = 1;
    return 0;
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0x1f) { /* inf, NaN (payload kept) */
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e) { /* normal: rebias 15 -> 127 */
        bits = sign | ((e + 112) << 23) | (m << 13);
    } else if (m) { /* subnormal m * 2^-24: normalise into a float32 normal */
        e = 113;
        while (!(m & 0x400)) {
            m <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((m & 0x3ff) << 13);
    } else {
        bits = sign; /* +-0 */
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float st_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t st_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | (a >> 13 & 0x1ff)); /* NaN, quiet */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* 65520 and up, inf: inf */
    if (a >= 0x38800000u) { /* normal half (2^-14 and up): rebias 127 -> 15, round off 13 bits */
        uint32_t r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13)); /* a carry into the exponent is still right */
    }
    if (a <= 0x33000000u) return sign; /* up to 2^-25 (a tie, to even): +-0 */
    /* subnormal half: value m * 2^(e-150) in units of 2^-24 is m >> (126-e) */
    uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, s = 126 - e; /* s in 14..24 */
    uint32_t h = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (h & 1))) h++; /* 0x400 is the smallest normal: right */
    return (uint16_t)(sign | h);
}

uint16_t st_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN, quiet */
    u += 0x7fffu + ((u >> 16) & 1); /* overflow past the largest finite carries into inf */
    return (uint16_t)(u >> 16);
}

size_t st_numel(const st_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d]; /* st_parse checked overflow */
    return n;
}

const float *st_f32_view(const st_tensor *t) {
    if (t->dtype != ST_F32 || ((uintptr_t)t->data & 3)) return NULL;
    return (const float *)(const void *)t->data;
}

static uint16_t load16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2); /* unaligned-safe; little-endian host */
    return v;
}

/* n halves at p (any alignment) to floats. With F16C (-march=native on
 * x86-64 since 2012) eight at a time: vcvtph2ps converts every finite
 * half, subnormals included, exactly as st_f16_to_f32 (test_safetensors
 * checks all 65536 patterns through this path). */
static void f16_run(float *dst, const uint8_t *p, size_t n) {
    size_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i))));
#endif
    for (; i < n; i++) dst[i] = st_f16_to_f32(load16(p + 2 * i));
}

static void bf16_run(float *dst, const uint8_t *p, size_t n) {
    uint32_t *d = (uint32_t *)(void *)dst;
    for (size_t i = 0; i < n; i++) d[i] = (uint32_t)load16(p + 2 * i) << 16;
}

/* 1 when some float of x[n] is inf or NaN (all exponent bits set); a
 * branch-free loop the compiler vectorises. */
static int any_nonfinite(const float *x, size_t n) {
    const uint32_t *u = (const uint32_t *)(const void *)x;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
    return bad != 0;
}

int st_to_f32(const st_tensor *t, float *dst, const char *what, char *err) {
    size_t n = st_numel(t);
    const uint8_t *p = t->data;
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return d3_errf(err, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", what,
                       SHOW(t->name), st_dtype_name(t->dtype));
    /* chunks of 64K elements over the threads: converting is memory-bound,
     * and a multi-gigabyte UNet is read once */
    enum { CH = 1 << 16 };
    size_t nch = (n + CH - 1) / CH;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (nch > 16)
    for (size_t c = 0; c < nch; c++) {
        size_t i0 = c * CH, m = n - i0 < CH ? n - i0 : CH;
        if (t->dtype == ST_F32) memcpy(dst + i0, p + 4 * i0, m * 4);
        else if (t->dtype == ST_F16) f16_run(dst + i0, p + 2 * i0, m);
        else bf16_run(dst + i0, p + 2 * i0, m);
        bad |= any_nonfinite(dst + i0, m);
    }
    if (bad)
        for (size_t i = 0; i < n; i++)
            if (!isfinite(dst[i]))
                return d3_errf(err, "%s: tensor '%s' holds a non-finite value (%s) at index %zu", what,
                               SHOW(t->name), isnan(dst[i]) ? "nan" : "inf", i);
    return 0;
}

void st_free(st_file *f) {
    for (int i = 0; i < f->ntensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->mapped) munmap(f->buf, f->len);
    else if (f->owns_buf) free(f->buf);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* ---- writer ------------------------------------------------------------ */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} st_wtensor;

struct st_writer {
    st_wtensor *t;
    int nt, tcap;
    char **mkeys, **mvals;
    int nm, mcap;
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->nt; i++) free(w->t[i].name);
    free(w->t);
    for (int i = 0; i < w->nm; i++) {
        free(w->mkeys[i]);
        free(w->mvals[i]);
    }
    free(w->mkeys);
    free(w->mvals);
    free(w);
}

/* 1 when s is valid UTF-8 without NULs as far as jansson is concerned. */
static int valid_json_string(const char *s) {
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

static int grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, (size_t)nc * elem);
    if (!np) return -1;
    *p = np;
    *cap = nc;
    return 0;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim,
                  const int64_t *shape, const void *data, char *err) {
    if (!name || !*name) return d3_errf(err, "st_writer_add: empty tensor name");
    shown shn = show(name);
    const char *nm = shn.s;
    if (strcmp(name, "__metadata__") == 0)
        return d3_errf(err, "st_writer_add: tensor name '__metadata__' is reserved");
    if (!valid_json_string(name))
        return d3_errf(err, "st_writer_add: tensor '%s': name is not valid UTF-8", nm);
    if ((unsigned)dt >= ST_DTYPE_COUNT)
        return d3_errf(err, "st_writer_add: tensor '%s': bad dtype %d", nm, (int)dt);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return d3_errf(err, "st_writer_add: tensor '%s': %d dims, expected 0..%d", nm, ndim,
                       ST_MAX_DIMS);
    size_t nbytes;
    if (shape_bytes(shape, ndim, dt, &nbytes) || nbytes > (size_t)INT64_MAX)
        return d3_errf(err, "st_writer_add: tensor '%s': shape has a negative dim or overflows", nm);
    if (nbytes && !data) return d3_errf(err, "st_writer_add: tensor '%s': NULL data", nm);
    for (int i = 0; i < w->nt; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return d3_errf(err, "st_writer_add: tensor '%s' added twice", nm);
    if (grow((void **)&w->t, &w->tcap, w->nt + 1, sizeof *w->t))
        return d3_errf(err, "st_writer_add: out of memory");
    st_wtensor *t = &w->t[w->nt];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return d3_errf(err, "st_writer_add: out of memory");
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nbytes;
    t->data = data;
    w->nt++;
    return 0;
}

int st_writer_meta(st_writer *w, const char *key, const char *val, char *err) {
    if (!key || !val) return d3_errf(err, "st_writer_meta: NULL key or value");
    if (!valid_json_string(key) || !valid_json_string(val))
        return d3_errf(err, "st_writer_meta: key '%s': key or value is not valid UTF-8", SHOW(key));
    for (int i = 0; i < w->nm; i++)
        if (strcmp(w->mkeys[i], key) == 0)
            return d3_errf(err, "st_writer_meta: key '%s' set twice", SHOW(key));
    /* mvals is kept at mkeys' capacity. */
    if (grow((void **)&w->mkeys, &w->mcap, w->nm + 1, sizeof(char *)))
        return d3_errf(err, "st_writer_meta: out of memory");
    char **nv = realloc(w->mvals, (size_t)w->mcap * sizeof(char *));
    if (!nv) return d3_errf(err, "st_writer_meta: out of memory");
    w->mvals = nv;
    char *k = strdup(key), *v = strdup(val);
    if (!k || !v) {
        free(k);
        free(v);
        return d3_errf(err, "st_writer_meta: out of memory");
    }
    w->mkeys[w->nm] = k;
    w->mvals[w->nm] = v;
    w->nm++;
    return 0;
}

/* The header JSON (compact, __metadata__ first, tensors in order added),
 * malloc'd, or NULL when out of memory or offsets overflow. */
static char *build_header(const st_writer *w) {
    json_t *root = json_object();
    if (!root) return NULL;
    int bad = 0;
    if (w->nm) {
        json_t *m = json_object();
        bad |= json_object_set_new(root, "__metadata__", m);
        for (int i = 0; i < w->nm && !bad; i++)
            bad |= json_object_set_new(m, w->mkeys[i], json_string(w->mvals[i]));
    }
    size_t off = 0;
    for (int i = 0; i < w->nt && !bad; i++) {
        const st_wtensor *t = &w->t[i];
        size_t end;
        if (__builtin_add_overflow(off, t->nbytes, &end) || end > (size_t)INT64_MAX) {
            bad = 1;
            break;
        }
        json_t *o = json_object(), *sh = json_array();
        bad |= json_object_set_new(root, t->name, o);
        bad |= json_object_set_new(o, "dtype", json_string(st_dtype_name(t->dtype)));
        bad |= json_object_set_new(o, "shape", sh);
        for (int d = 0; d < t->ndim && !bad; d++)
            bad |= json_array_append_new(sh, json_integer((json_int_t)t->shape[d]));
        bad |= json_object_set_new(o, "data_offsets",
                                   json_pack("[II]", (json_int_t)off, (json_int_t)end));
        off = end;
    }
    char *s = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

int st_writer_save(st_writer *w, const char *path, char *err) {
    char *json = build_header(w);
    if (!json) return d3_errf(err, "%s: cannot build the header (out of memory or data too large)", path);
    size_t jl = strlen(json);
    size_t hl = (jl + 7) & ~(size_t)7; /* 8 + hl is a multiple of 8 */
    uint8_t *head = malloc(8 + hl);
    const void **parts = malloc(((size_t)w->nt + 1) * sizeof *parts);
    size_t *lens = malloc(((size_t)w->nt + 1) * sizeof *lens);
    int rc = -1;
    if (!head || !parts || !lens) {
        d3_errf(err, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < 8; i++) head[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(head + 8, json, jl);
    memset(head + 8 + jl, ' ', hl - jl);
    parts[0] = head;
    lens[0] = 8 + hl;
    for (int i = 0; i < w->nt; i++) {
        parts[i + 1] = w->t[i].data;
        lens[i + 1] = w->t[i].nbytes;
    }
    rc = fs_write_atomic(path, parts, lens, w->nt + 1, err);
out:
    free(json);
    free(head);
    free(parts);
    free(lens);
    return rc;
}
