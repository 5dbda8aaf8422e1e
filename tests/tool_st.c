/* tool_st.c - the C side of the safetensors interop test
 * (tests/test_interop.sh, with tests/interop.py as the Python side).
 *
 *   tool_st write FILE   writes the fixed tensor set below with st_writer
 *   tool_st check FILE   loads FILE and compares it exactly with that set
 *   tool_st dump FILE    prints every tensor and metadata entry as text
 *
 * The tensor set and the dump format are defined twice, here and in
 * interop.py, and must stay identical:
 *
 *   tensor "<name>" dtype=<D> shape=[a,b] nbytes=<n> fnv1a64=<16 hex>
 *     values: <v0> <v1> ...
 *   meta "<key>" = "<value>"
 *
 * Tensors sorted by name, metadata by key (bytewise). Floats print as their
 * raw bits in hex (F16/BF16 4 digits, F32 8, F64 16), integers and BOOL in
 * decimal. In quoted strings '\' and '"' are backslash-escaped and control
 * bytes print as \xHH; other bytes (UTF-8) print as they are. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

/* ---- the fixed tensor set (mirror of interop.py make_tensors) ---------- */

#define NT 8

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    void *data;
} tensor_spec;

static const char *meta_keys[] = {"d3po.arch", "format", "note"};
static const char *meta_vals[] = {
    "base=32,levels=2",
    "np",
    "h\xc3\xa9llo \"w\xc3\xb6rld\" \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \\ back\nline\ttab",
};
#define NMETA 3

static int make_tensors(tensor_spec *t) {
    static float w[2 * 3 * 2 * 2], b[5], scalar[1];
    static int32_t counts[12];
    static int64_t steps[4];
    static uint8_t mask[7];
    static uint16_t half[6];
    for (int i = 0; i < 24; i++) w[i] = (float)((i * 37) % 101 - 50) / 8.0f;
    for (int i = 0; i < 5; i++) b[i] = (float)(i - 2) * 0.5f;
    for (int i = 0; i < 12; i++) counts[i] = i * 1000003 - 7000000;
    for (int i = 0; i < 4; i++) {
        int64_t v = ((int64_t)(i + 1) << 40) + i;
        steps[i] = i % 2 ? -v : v;
    }
    for (int i = 0; i < 7; i++) mask[i] = (uint8_t)((i * 53 + 11) & 0xff);
    for (int i = 0; i < 6; i++) half[i] = (uint16_t)(0x3c00 + i * 0x111);
    scalar[0] = 42.5f;
    int n = 0;
    t[n++] = (tensor_spec){"unet.conv_in.weight", ST_F32, 4, {2, 3, 2, 2}, 24, w};
    t[n++] = (tensor_spec){"unet.conv_in.bias", ST_F32, 1, {5}, 5, b};
    t[n++] = (tensor_spec){"counts", ST_I32, 2, {3, 4}, 12, counts};
    t[n++] = (tensor_spec){"steps", ST_I64, 1, {4}, 4, steps};
    t[n++] = (tensor_spec){"mask", ST_U8, 1, {7}, 7, mask};
    t[n++] = (tensor_spec){"half.bits", ST_F16, 2, {2, 3}, 6, half};
    t[n++] = (tensor_spec){"scalar", ST_F32, 0, {0}, 1, scalar};
    t[n++] = (tensor_spec){"empty", ST_F32, 2, {0, 3}, 0, NULL};
    return n;
}

/* ---- commands ------------------------------------------------------------ */

static int cmd_write(const char *path) {
    tensor_spec t[NT];
    int n = make_tensors(t);
    char err[D3_ERRLEN];
    st_writer *w = st_writer_new();
    int rc = 0;
    for (int i = 0; i < NMETA && !rc; i++) rc = st_writer_meta(w, meta_keys[i], meta_vals[i], err);
    for (int i = 0; i < n && !rc; i++)
        rc = st_writer_add(w, t[i].name, t[i].dtype, t[i].ndim, t[i].shape, t[i].data, err);
    if (!rc) rc = st_writer_save(w, path, err);
    st_writer_free(w);
    if (rc) fprintf(stderr, "tool_st write: %s\n", err);
    return rc ? 1 : 0;
}

static int cmd_check(const char *path) {
    st_file f;
    char err[D3_ERRLEN];
    if (st_load(&f, path, err)) {
        fprintf(stderr, "tool_st check: %s\n", err);
        return 1;
    }
    tensor_spec t[NT];
    int n = make_tensors(t), bad = 0;
    if (f.ntensors != n) {
        fprintf(stderr, "tool_st check: %s: %d tensors, expected %d\n", path, f.ntensors, n);
        bad++;
    }
    for (int i = 0; i < n; i++) {
        const st_tensor *s = st_find(&f, t[i].name);
        size_t nb = t[i].numel * st_dtype_size(t[i].dtype);
        int same = s && s->dtype == t[i].dtype && s->ndim == t[i].ndim && s->nbytes == nb &&
                   memcmp(s->shape, t[i].shape, (size_t)t[i].ndim * sizeof(int64_t)) == 0 &&
                   (nb == 0 || memcmp(s->data, t[i].data, nb) == 0);
        if (!same) {
            fprintf(stderr, "tool_st check: %s: tensor '%s' %s\n", path, t[i].name,
                    s ? "differs" : "missing");
            bad++;
        }
    }
    if (f.nmeta != NMETA) {
        fprintf(stderr, "tool_st check: %s: %d metadata entries, expected %d\n", path, f.nmeta, NMETA);
        bad++;
    }
    for (int i = 0; i < NMETA; i++) {
        const char *v = st_meta(&f, meta_keys[i]);
        if (!v || strcmp(v, meta_vals[i])) {
            fprintf(stderr, "tool_st check: %s: metadata '%s' %s\n", path, meta_keys[i],
                    v ? "differs" : "missing");
            bad++;
        }
    }
    if (!bad) printf("tool_st check: %s: %d tensors and %d metadata entries match\n", path, n, NMETA);
    st_free(&f);
    return bad ? 1 : 0;
}

static void put_quoted(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\' || *p == '"') printf("\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f) printf("\\x%02x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static void put_value(const uint8_t *p, st_dtype dt) {
    uint16_t u16; uint32_t u32; uint64_t u64;
    int16_t i16; int32_t i32; int64_t i64;
    switch (dt) {
    case ST_BOOL: case ST_U8: printf("%u", p[0]); break;
    case ST_I8: printf("%d", (int8_t)p[0]); break;
    case ST_F16: case ST_BF16: memcpy(&u16, p, 2); printf("%04x", u16); break;
    case ST_U16: memcpy(&u16, p, 2); printf("%u", u16); break;
    case ST_I16: memcpy(&i16, p, 2); printf("%d", i16); break;
    case ST_F32: memcpy(&u32, p, 4); printf("%08" PRIx32, u32); break;
    case ST_U32: memcpy(&u32, p, 4); printf("%" PRIu32, u32); break;
    case ST_I32: memcpy(&i32, p, 4); printf("%" PRId32, i32); break;
    case ST_F64: memcpy(&u64, p, 8); printf("%016" PRIx64, u64); break;
    case ST_U64: memcpy(&u64, p, 8); printf("%" PRIu64, u64); break;
    case ST_I64: memcpy(&i64, p, 8); printf("%" PRId64, i64); break;
    default: printf("?"); break;
    }
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

static int by_key(const void *a, const void *b) {
    return strcmp(**(const char *const *const *)a, **(const char *const *const *)b);
}

static int cmd_dump(const char *path) {
    st_file f;
    char err[D3_ERRLEN];
    if (st_load(&f, path, err)) {
        fprintf(stderr, "tool_st dump: %s\n", err);
        return 1;
    }
    const st_tensor **ts = malloc(((size_t)f.ntensors + 1) * sizeof *ts);
    for (int i = 0; i < f.ntensors; i++) ts[i] = &f.tensors[i];
    qsort(ts, (size_t)f.ntensors, sizeof *ts, by_name); /* strcmp: bytewise, like Python */
    for (int i = 0; i < f.ntensors; i++) {
        const st_tensor *t = ts[i];
        uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
        for (size_t b = 0; b < t->nbytes; b++) h = (h ^ t->data[b]) * 0x100000001b3ull;
        printf("tensor ");
        put_quoted(t->name);
        printf(" dtype=%s shape=[", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? "," : "", (long long)t->shape[d]);
        printf("] nbytes=%zu fnv1a64=%016" PRIx64 "\n  values:", t->nbytes, h);
        size_t es = st_dtype_size(t->dtype);
        for (size_t b = 0; b < t->nbytes; b += es) {
            putchar(' ');
            put_value(t->data + b, t->dtype);
        }
        putchar('\n');
    }
    free(ts);
    const char ***ks = malloc(((size_t)f.nmeta + 1) * sizeof *ks);
    for (int i = 0; i < f.nmeta; i++) ks[i] = (const char **)&f.meta_keys[i];
    qsort(ks, (size_t)f.nmeta, sizeof *ks, by_key);
    for (int i = 0; i < f.nmeta; i++) {
        int k = (int)(ks[i] - (const char **)f.meta_keys);
        printf("meta ");
        put_quoted(f.meta_keys[k]);
        printf(" = ");
        put_quoted(f.meta_vals[k]);
        putchar('\n');
    }
    free(ks);
    st_free(&f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "write") == 0) return cmd_write(argv[2]);
    if (argc == 3 && strcmp(argv[1], "check") == 0) return cmd_check(argv[2]);
    if (argc == 3 && strcmp(argv[1], "dump") == 0) return cmd_dump(argv[2]);
    fprintf(stderr, "usage: tool_st write|check|dump FILE\n");
    return 2;
}
