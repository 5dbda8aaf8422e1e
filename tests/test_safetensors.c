/* test_safetensors.c - tests for the safetensors reader/writer and the
 * atomic file helpers (engine/safetensors.c, engine/fsutil.c).
 *
 * Round trips every dtype, a 0-dim scalar, an empty tensor and metadata;
 * feeds the parser a table of hostile headers, each of which must fail with
 * a specific message; parses every prefix and many one-byte corruptions of a
 * valid file (run under ASan by `make check-asan`); and checks that atomic
 * writes leave no temp file behind. Files go to a fresh mkdtemp directory. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "safetensors.h"
#include "t.h"

static char tmpdir[256];

static void path_in(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* Number of directory entries (other than . and ..) whose name contains s. */
static int count_entries(const char *dir, const char *s) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, s)) n++;
    closedir(d);
    return n;
}

/* ---- round trip -------------------------------------------------------- */

static float w4[2 * 3 * 2 * 2];
static double b64[3];
static int64_t ids[4];
static uint16_t half[4];
static float scalar = 3.5f;
static uint8_t all_bytes[ST_DTYPE_COUNT][3 * 8];

typedef struct {
    const char *name;
    st_dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} spec;

static int make_specs(spec *s) {
    for (size_t i = 0; i < sizeof w4 / sizeof *w4; i++) w4[i] = (float)i * 0.25f - 1.0f;
    for (int i = 0; i < 3; i++) b64[i] = 1.0 / (i + 1);
    for (int i = 0; i < 4; i++) ids[i] = (int64_t)1 << (20 * i) | i;
    for (int i = 0; i < 4; i++) half[i] = (uint16_t)(0x3c00 + 0x111 * i);
    int n = 0;
    s[n++] = (spec){"model.conv_in.weight", ST_F32, 4, {2, 3, 2, 2}, w4};
    s[n++] = (spec){"model.conv_in.bias", ST_F64, 1, {3}, b64};
    s[n++] = (spec){"ids", ST_I64, 2, {2, 2}, ids};
    s[n++] = (spec){"half.bits", ST_F16, 1, {4}, half};
    s[n++] = (spec){"scalar", ST_F32, 0, {0}, &scalar};
    s[n++] = (spec){"empty", ST_F32, 3, {4, 0, 2}, NULL};
    static char names[ST_DTYPE_COUNT][32];
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        for (int i = 0; i < 24; i++) all_bytes[d][i] = (uint8_t)(d * 31 + i * 7);
        snprintf(names[d], sizeof names[d], "all.%s", st_dtype_name((st_dtype)d));
        s[n++] = (spec){names[d], (st_dtype)d, 1, {3}, all_bytes[d]};
    }
    return n;
}

static int write_sample(const char *path, char *err) {
    spec s[32];
    int n = make_specs(s);
    st_writer *w = st_writer_new();
    int rc = 0;
    rc |= st_writer_meta(w, "d3po.arch", "base=32,levels=2", err);
    rc |= st_writer_meta(w, "note", "quote \" backslash \\ \xc3\xbc\xe2\x9c\x93", err);
    for (int i = 0; i < n && !rc; i++)
        rc |= st_writer_add(w, s[i].name, s[i].dt, s[i].ndim, s[i].shape, s[i].data, err);
    if (!rc) rc = st_writer_save(w, path, err);
    st_writer_free(w);
    return rc;
}

static void test_round_trip(void) {
    char path[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "rt.safetensors");
    CHECK(write_sample(path, err) == 0, "%s", err);
    CHECK(count_entries(tmpdir, ".tmp.") == 0, "temp file left behind in %s", tmpdir);

    st_file f;
    CHECK(st_load(&f, path, err) == 0, "%s", err);
    if (f.ntensors == 0) return;
    spec s[32];
    int n = make_specs(s);
    CHECK(f.ntensors == n, "%d tensors, expected %d", f.ntensors, n);
    for (int i = 0; i < n && i < f.ntensors; i++) {
        const st_tensor *t = &f.tensors[i];
        CHECK(strcmp(t->name, s[i].name) == 0, "tensor %d is '%s', expected '%s' (order added)", i,
              t->name, s[i].name);
        CHECK(st_find(&f, s[i].name) == t, "st_find('%s')", s[i].name);
        CHECK(t->dtype == s[i].dt, "'%s' dtype %s", t->name, st_dtype_name(t->dtype));
        CHECK(t->ndim == s[i].ndim, "'%s' ndim %d", t->name, t->ndim);
        size_t numel = 1;
        for (int d = 0; d < s[i].ndim; d++) {
            CHECK(t->shape[d] == s[i].shape[d], "'%s' shape[%d] = %lld", t->name, d,
                  (long long)t->shape[d]);
            numel *= (size_t)s[i].shape[d];
        }
        CHECK(t->nbytes == numel * st_dtype_size(s[i].dt), "'%s' nbytes %zu", t->name, t->nbytes);
        CHECK(t->data >= f.buf && t->data + t->nbytes <= f.buf + f.len, "'%s' data outside buffer",
              t->name);
        if (t->nbytes) CHECK(memcmp(t->data, s[i].data, t->nbytes) == 0, "'%s' data differs", t->name);
    }
    const st_tensor *sc = st_find(&f, "scalar");
    CHECK(sc && sc->ndim == 0 && sc->nbytes == 4, "scalar tensor");
    if (sc) {
        float v;
        memcpy(&v, sc->data, 4);
        CHECK(v == 3.5f, "scalar is %g", v);
    }
    const st_tensor *em = st_find(&f, "empty");
    CHECK(em && em->nbytes == 0 && em->ndim == 3 && em->shape[1] == 0, "empty tensor");
    CHECK(st_find(&f, "model.conv_in") == NULL, "prefix of a name found");
    CHECK(f.nmeta == 2, "%d metadata entries", f.nmeta);
    const char *arch = st_meta(&f, "d3po.arch"), *note = st_meta(&f, "note");
    CHECK(arch && strcmp(arch, "base=32,levels=2") == 0, "d3po.arch = %s", arch ? arch : "(null)");
    CHECK(note && strcmp(note, "quote \" backslash \\ \xc3\xbc\xe2\x9c\x93") == 0, "note = %s",
          note ? note : "(null)");
    CHECK(st_meta(&f, "missing") == NULL, "missing metadata key found");

    /* Layout: compact header, __metadata__ first, data at a multiple of 8. */
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)f.buf[i] << (8 * i);
    CHECK((8 + hl) % 8 == 0, "data starts at %llu", (unsigned long long)(8 + hl));
    CHECK(memcmp(f.buf + 8, "{\"__metadata__\":{\"d3po.arch\"", 28) == 0, "header starts %.40s",
          (const char *)f.buf + 8);
    CHECK(f.tensors[0].data == f.buf + 8 + hl, "first tensor not at the data start");
    st_free(&f);

    /* Overwriting an existing file works and leaves no temp file. */
    CHECK(write_sample(path, err) == 0, "%s", err);
    CHECK(count_entries(tmpdir, ".tmp.") == 0, "temp file left behind after overwrite");
    unlink(path);
}

/* A file with no tensors and no metadata is "{}" padded to 8 bytes. */
static void test_empty_file(void) {
    char path[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "empty.safetensors");
    st_writer *w = st_writer_new();
    CHECK(st_writer_save(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    st_file f;
    CHECK(st_load(&f, path, err) == 0, "%s", err);
    CHECK(f.ntensors == 0 && f.nmeta == 0 && f.len == 16, "%d tensors, %zu bytes", f.ntensors, f.len);
    st_free(&f);
    unlink(path);
}

static void test_writer_rejects(void) {
    char err[D3_ERRLEN];
    float x[2] = {0};
    int64_t sh[9] = {2, 1, 1, 1, 1, 1, 1, 1, 1}, neg[1] = {-1};
    int64_t big[3] = {INT64_C(1) << 32, INT64_C(1) << 32, 16};
    st_writer *w = st_writer_new();
    CHECK(st_writer_add(w, "a", ST_F32, 1, sh, x, err) == 0, "%s", err);
#define REJECTS(call, want) \
    CHECK((call) == -1 && strstr(err, want), "%s: '%s', expected '%s'", #call, err, want)
    REJECTS(st_writer_add(w, "a", ST_F32, 1, sh, x, err), "tensor 'a' added twice");
    REJECTS(st_writer_add(w, "b", ST_F32, 9, sh, x, err), "9 dims");
    REJECTS(st_writer_add(w, "c", ST_F32, 1, neg, x, err), "negative");
    REJECTS(st_writer_add(w, "d", ST_F32, 3, big, x, err), "overflows");
    REJECTS(st_writer_add(w, "__metadata__", ST_F32, 1, sh, x, err), "reserved");
    REJECTS(st_writer_add(w, "bad\xff", ST_F32, 1, sh, x, err), "UTF-8");
    REJECTS(st_writer_add(w, "", ST_F32, 1, sh, x, err), "empty tensor name");
    REJECTS(st_writer_add(w, "e", ST_F32, 1, sh, NULL, err), "NULL data");
    REJECTS(st_writer_add(w, "f", ST_DTYPE_COUNT, 1, sh, x, err), "bad dtype");
    CHECK(st_writer_meta(w, "k", "v", err) == 0, "%s", err);
    REJECTS(st_writer_meta(w, "k", "w", err), "set twice");
    REJECTS(st_writer_meta(w, "k2", "\xc3", err), "UTF-8");
#undef REJECTS
    /* A NULL data pointer is fine for an empty tensor. */
    int64_t zero[1] = {0};
    CHECK(st_writer_add(w, "z", ST_F32, 1, zero, NULL, err) == 0, "%s", err);
    st_writer_free(w);
}

/* ---- hostile inputs ----------------------------------------------------- */

/* Builds a file in malloc'd memory of exactly *len bytes: the 8-byte header
 * length hl (which may lie), the JSON, then dlen data bytes 0, 1, 2... */
static uint8_t *mk(const char *json, uint64_t hl, size_t dlen, size_t *len) {
    size_t jl = strlen(json);
    *len = 8 + jl + dlen;
    uint8_t *b = malloc(*len ? *len : 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hl >> (8 * i));
    memcpy(b + 8, json, jl);
    for (size_t i = 0; i < dlen; i++) b[8 + jl + i] = (uint8_t)i;
    return b;
}

#define AUTO UINT64_MAX /* header length = strlen(json) */

typedef struct {
    const char *label, *json;
    uint64_t hl;
    size_t dlen;
    const char *want; /* substring of the message; NULL: must parse */
} hostile;

static const hostile cases[] = {
    {"garbage bytes", "\x01\x02garbage\xff", AUTO, 0, "header is not valid JSON"},
    {"json position", "{\"a\":", AUTO, 0, "(line 1, column"},
    {"header length 0", "{}", 0, 0, "header length is 0"},
    {"header length huge", "{}", UINT64_MAX - 1, 0, "exceeds the 100000000-byte limit"},
    {"header length 100MB+1", "{}", 100000001, 0, "exceeds"},
    {"header past end", "{}", 3, 0, "runs past the end of the file"},
    {"not an object", "[1,2]", AUTO, 0, "header is a JSON array, expected an object"},
    {"bare string", "\"x\"", AUTO, 0, "not valid JSON"},
    {"invalid utf-8", "{\"\xc3(\":1}", AUTO, 0, "not valid JSON"},
    {"NUL escape in name", "{\"a\\u0000b\":1}", AUTO, 0, "not valid JSON"},
    {"trailing junk", "{} x", AUTO, 0, "not valid JSON"},
    {"duplicate name",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
     AUTO, 0, "duplicate"},
    {"entry not object", "{\"a\":5}", AUTO, 0, "tensor 'a': entry is a JSON integer"},
    {"bad dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", AUTO, 4,
     "tensor 'a': unknown dtype 'F33'"},
    {"dtype not string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", AUTO, 4,
     "tensor 'a': dtype is a JSON integer"},
    {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", AUTO, 4,
     "tensor 'a': missing \"dtype\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", AUTO, 4,
     "tensor 'a': missing \"shape\""},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", AUTO, 4,
     "tensor 'a': missing \"data_offsets\""},
    {"shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", AUTO, 4,
     "shape is a JSON integer"},
    {"shape negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", AUTO, 4,
     "tensor 'a': shape[0] is not a non-negative integer"},
    {"shape real", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1.0],\"data_offsets\":[0,4]}}", AUTO, 4,
     "shape[1] is not a non-negative integer"},
    {"too many dims",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", AUTO, 4,
     "shape has 9 dims, at most 8"},
    {"shape overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,4]}}",
     AUTO, 4, "overflows the byte count"},
    {"shape overflow by dtype",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952,2],\"data_offsets\":[0,4]}}", AUTO,
     4, "overflows"},
    {"huge integer", "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}",
     AUTO, 4, "not valid JSON"},
    {"offsets one", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", AUTO, 4,
     "data_offsets is not two non-negative integers"},
    {"offsets three", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", AUTO, 4,
     "data_offsets is not two"},
    {"offsets negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", AUTO,
     4, "data_offsets is not two"},
    {"offsets object", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", AUTO, 4,
     "data_offsets is not two"},
    {"begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", AUTO, 8,
     "data_offsets [8, 4) has begin > end"},
    {"offsets out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     AUTO, 4, "tensor 'a': data_offsets [0, 8) end beyond the data section (4 bytes)"},
    {"offsets huge",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,9223372036854775807]}}",
     AUTO, 4, "end beyond the data section"},
    {"lying shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", AUTO, 4,
     "tensor 'a': data_offsets [0, 4) hold 4 bytes, shape [2] F32 needs 8"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     AUTO, 12, "tensor 'b' data_offsets [4, 12) overlap tensor 'a' [0, 8)"},
    {"same span twice",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     AUTO, 4, "overlap"},
    {"empty inside another",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
     AUTO, 8, "tensor 'e' data_offsets [4, 4) overlap tensor 'a'"},
    {"hole",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     AUTO, 12, "bytes [4, 8) of the data section belong to no tensor (hole before tensor 'b')"},
    {"hole at start", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", AUTO, 8,
     "bytes [0, 4) of the data section belong to no tensor"},
    {"trailing data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", AUTO, 8,
     "bytes [4, 8) of the data section belong to no tensor (trailing data)"},
    {"data but no tensors", "{}", AUTO, 3, "bytes [0, 3) of the data section belong to no tensor"},
    {"metadata non-string", "{\"__metadata__\":{\"k\":1}}", AUTO, 0,
     "__metadata__ key 'k': value is a JSON integer, expected a string"},
    {"metadata null", "{\"__metadata__\":{\"k\":\"v\",\"n\":null}}", AUTO, 0,
     "__metadata__ key 'n': value is a JSON null"},
    {"metadata not object", "{\"__metadata__\":[\"a\"]}", AUTO, 0,
     "__metadata__ is a JSON array, expected an object"},
    {"control chars in name", "{\"a\\nb\":5}", AUTO, 0, "tensor 'a?b': entry"},
    /* accepted edge cases */
    {"empty object", "{}", AUTO, 0, NULL},
    {"padded header", "{}      ", AUTO, 0, NULL},
    {"metadata only", "{\"__metadata__\":{}}", AUTO, 0, NULL},
    {"extra field ignored",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":1}}", AUTO, 2, NULL},
    {"empty tensors on the chain",
     "{\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"e2\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
     "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[4,5]}}",
     AUTO, 5, NULL},
    {"out of order offsets",
     "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
     "\"a\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[0,2]}}",
     AUTO, 3, NULL},
};

static void test_hostile(void) {
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const hostile *c = &cases[i];
        size_t len;
        uint64_t hl = c->hl == AUTO ? strlen(c->json) : c->hl;
        uint8_t *b = mk(c->json, hl, c->dlen, &len);
        st_file f;
        char err[D3_ERRLEN] = "";
        int rc = st_parse(&f, b, len, "x.safetensors", err);
        if (c->want) {
            CHECK(rc == -1, "%s: accepted", c->label);
            CHECK(strstr(err, c->want) != NULL, "%s: message '%s' lacks '%s'", c->label, err, c->want);
            CHECK(strncmp(err, "x.safetensors: ", 15) == 0, "%s: message '%s' lacks the file name",
                  c->label, err);
            CHECK(!strchr(err, '\n'), "%s: message has a newline", c->label);
            CHECK(f.ntensors == 0 && f.tensors == NULL, "%s: state left after failure", c->label);
        } else {
            CHECK(rc == 0, "%s: rejected: %s", c->label, err);
            if (rc == 0) st_free(&f);
        }
        free(b);
    }
    /* The accepted out-of-order file lists tensors in offset order. */
    size_t len;
    const char *j = cases[sizeof cases / sizeof *cases - 1].json;
    uint8_t *b = mk(j, strlen(j), 3, &len);
    st_file f;
    char err[D3_ERRLEN];
    CHECK(st_parse(&f, b, len, "x", err) == 0, "%s", err);
    CHECK(f.ntensors == 2 && strcmp(f.tensors[0].name, "a") == 0 && f.tensors[1].data == b + len - 1,
          "offset order");
    st_free(&f);
    free(b);

    uint8_t tiny[7] = {0};
    CHECK(st_parse(&f, tiny, 0, "x", err) == -1 && strstr(err, "x: file is 0 bytes, too short"), "%s",
          err);
    CHECK(st_parse(&f, tiny, 7, "x", err) == -1 && strstr(err, "file is 7 bytes"), "%s", err);
}

/* Every proper prefix of a valid file fails with the message for where it
 * was cut; one-byte corruptions never crash and never point out of bounds. */
static void test_truncated_and_corrupted(void) {
    char path[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "trunc.safetensors");
    CHECK(write_sample(path, err) == 0, "%s", err);
    unsigned char *buf;
    size_t len;
    CHECK(fs_read_all(path, &buf, &len, err) == 0, "%s", err);
    unlink(path);
    if (!buf) return;
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)buf[i] << (8 * i);
    int bad = 0;
    for (size_t n = 0; n < len && bad < 5; n++) {
        /* A fresh exact-size copy so ASan sees any read past n. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf, n);
        st_file f;
        int rc = st_parse(&f, p, n, "cut", err);
        const char *want = n < 8 ? "too short" : n < 8 + hl ? "runs past the end" : "end beyond the data section";
        if (rc != -1 || !strstr(err, want)) {
            bad++;
            CHECK(0, "prefix of %zu/%zu bytes: rc %d, '%s', expected '%s'", n, len, rc, err, want);
            if (rc == 0) st_free(&f);
        }
        free(p);
    }
    st_file f;
    CHECK(st_parse(&f, buf, len, "whole", err) == 0, "%s", err);
    st_free(&f);

    static const uint8_t subst[] = {0x00, 0xff, '"', '}', '[', '9', ' ', 0x80};
    int accepted = 0;
    for (size_t i = 0; i < len; i++) {
        for (size_t k = 0; k < sizeof subst; k++) {
            uint8_t *p = malloc(len);
            memcpy(p, buf, len);
            if (p[i] == subst[k]) { free(p); continue; }
            p[i] = subst[k];
            if (st_parse(&f, p, len, "flip", err) == 0) {
                accepted++;
                for (int t = 0; t < f.ntensors; t++)
                    CHECK(f.tensors[t].data >= p && f.tensors[t].data + f.tensors[t].nbytes <= p + len,
                          "byte %zu: tensor out of bounds", i);
                st_free(&f);
            } else {
                CHECK(err[0] != '\0', "byte %zu: empty message", i);
            }
            free(p);
        }
    }
    /* Flips in the data section are accepted; most header flips are not. */
    CHECK(accepted > 0, "no corrupted file accepted (data flips should be)");
    free(buf);
}

/* ---- half precision and mapped files ------------------------------------ */

/* Every one of the 65536 half bit patterns against the definition
 * (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024. */
static void test_f16_exhaustive(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536 && bad < 5; h++) {
        int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
        float got = st_f16_to_f32((uint16_t)h);
        if (e == 31) {
            int ok = m ? isnan(got) : (isinf(got) && (got < 0) == s);
            if (!ok) {
                bad++;
                CHECK(0, "half 0x%04x -> %g", h, got);
            }
            continue;
        }
        double want = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
        if (s) want = -want;
        uint32_t bits;
        memcpy(&bits, &got, 4);
        if ((double)got != want || (bits >> 31) != (uint32_t)s) {
            bad++;
            CHECK(0, "half 0x%04x -> %.10g, expected %.10g", h, got, want);
        }
    }
    /* bfloat16 is the top half of a float32. */
    CHECK(st_bf16_to_f32(0x3f80) == 1.0f && st_bf16_to_f32(0xc000) == -2.0f, "bf16 1, -2");
    CHECK(st_bf16_to_f32(0x0001) == ldexpf(1.0f, -133), "bf16 smallest subnormal");
    CHECK(isinf(st_bf16_to_f32(0x7f80)) && isnan(st_bf16_to_f32(0x7fc0)), "bf16 inf, nan");
}

/* The bulk conversion (vector F16C path where built, threads over chunks)
 * against the scalar definition for every finite half, stored at an odd
 * address (a 1-byte tensor first), and every bfloat16. */
static void test_bulk_convert(void) {
    char path[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "bulk.safetensors");
    enum { NF = 31 * 1024 * 2 }; /* exponents 0..30, both signs */
    static uint16_t h[NF], b[NF];
    static float out[NF];
    int n = 0;
    for (uint32_t x = 0; x < 65536; x++)
        if (((x >> 10) & 31) != 31) h[n++] = (uint16_t)x;
    CHECK(n == NF, "%d finite halves", n);
    for (int i = 0; i < NF; i++) b[i] = h[i]; /* finite bf16 too: exponent < 31 of 255 */
    uint8_t one = 7;
    int64_t s1[1] = {1}, sn[1] = {NF};
    st_writer *w = st_writer_new();
    CHECK(st_writer_add(w, "pad", ST_U8, 1, s1, &one, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "h", ST_F16, 1, sn, h, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "b", ST_BF16, 1, sn, b, err) == 0, "%s", err);
    CHECK(st_writer_save(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    st_file f;
    CHECK(st_map(&f, path, err) == 0, "%s", err);
    if (f.ntensors != 3) return;
    const st_tensor *th = st_find(&f, "h"), *tb = st_find(&f, "b");
    CHECK(((uintptr_t)th->data & 1) == 1, "the F16 data is not at an odd address");
    CHECK(st_to_f32(th, out, path, err) == 0, "%s", err);
    int bad = 0;
    for (int i = 0; i < NF && bad < 3; i++)
        if (memcmp(&out[i], &(float){st_f16_to_f32(h[i])}, 4)) {
            bad++;
            CHECK(0, "half 0x%04x: bulk %g, scalar %g", h[i], out[i], st_f16_to_f32(h[i]));
        }
    CHECK(st_to_f32(tb, out, path, err) == 0, "%s", err);
    for (int i = 0; i < NF && bad < 3; i++)
        if (out[i] != st_bf16_to_f32(b[i])) {
            bad++;
            CHECK(0, "bf16 0x%04x: bulk %g", b[i], out[i]);
        }
    st_free(&f);
    unlink(path);
}

/* Writes F32, F16, BF16 and I64 tensors, maps the file and converts. */
static void test_map_convert(void) {
    char path[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "half.safetensors");
    float f32[5] = {1.5f, -2.0f, 0.0f, 1e-30f, 65504.0f};
    uint16_t f16[5] = {0x3e00, 0xc000, 0x8000, 0x0001, 0x7bff}; /* 1.5 -2 -0 2^-24 65504 */
    uint16_t b16[5] = {0x3fc0, 0xc000, 0x0000, 0x0001, 0x477f}; /* 1.5 -2 0 2^-133 65280 */
    int64_t i64[2] = {1, 2}, sh[2] = {5, 1}, sh2[1] = {2};
    st_writer *w = st_writer_new();
    CHECK(st_writer_add(w, "b.f16", ST_F16, 2, sh, f16, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "a.f32", ST_F32, 2, sh, f32, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "c.bf16", ST_BF16, 1, sh, b16, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "d.ids", ST_I64, 1, sh2, i64, err) == 0, "%s", err);
    CHECK(st_writer_save(w, path, err) == 0, "%s", err);
    st_writer_free(w);

    st_file f;
    CHECK(st_map(&f, path, err) == 0, "%s", err);
    if (f.ntensors != 4) return;
    CHECK(f.mapped && !f.owns_buf, "not marked mapped");
    float out[5];
    const st_tensor *t = st_find(&f, "a.f32");
    CHECK(st_numel(t) == 5 && st_to_f32(t, out, path, err) == 0 && !memcmp(out, f32, sizeof out),
          "F32 copy: %s", err);
    /* the writer puts F32 after a 10-byte F16 tensor: offset 10 is not
     * 4-aligned, so there is no view; the reference writer's files are
     * ordered by dtype size and have one */
    CHECK(st_f32_view(t) == NULL || ((uintptr_t)t->data & 3) == 0, "misaligned view");
    t = st_find(&f, "b.f16");
    CHECK(st_to_f32(t, out, path, err) == 0, "%s", err);
    CHECK(out[0] == 1.5f && out[1] == -2.0f && out[2] == 0.0f && signbit(out[2]) &&
              out[3] == ldexpf(1.0f, -24) && out[4] == 65504.0f,
          "F16: %g %g %g %g %g", out[0], out[1], out[2], out[3], out[4]);
    CHECK(st_f32_view(t) == NULL, "view of an F16 tensor");
    t = st_find(&f, "c.bf16");
    CHECK(st_to_f32(t, out, path, err) == 0, "%s", err);
    CHECK(out[0] == 1.5f && out[1] == -2.0f && out[3] == ldexpf(1.0f, -133) && out[4] == 65280.0f,
          "BF16: %g %g %g %g %g", out[0], out[1], out[2], out[3], out[4]);
    t = st_find(&f, "d.ids");
    CHECK(st_to_f32(t, out, path, err) == -1 && strstr(err, path) && strstr(err, "tensor 'd.ids'") &&
              strstr(err, "dtype I64, expected F32, F16 or BF16"),
          "'%s'", err);
    st_free(&f);
    CHECK(f.buf == NULL && !f.mapped, "st_free left the map");

    /* An aligned F32 tensor is viewed in place. */
    w = st_writer_new();
    CHECK(st_writer_add(w, "a", ST_F32, 2, sh, f32, err) == 0, "%s", err);
    CHECK(st_writer_save(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    CHECK(st_map(&f, path, err) == 0, "%s", err);
    const float *v = f.ntensors ? st_f32_view(&f.tensors[0]) : NULL;
    CHECK(v && (const uint8_t *)v == f.tensors[0].data && v[4] == 65504.0f, "no aligned view");
    st_free(&f);

    /* Non-finite values are errors naming the file, the tensor, the index. */
    uint16_t inf16[3] = {0x3c00, 0x3c00, 0xfc00}, nan16[2] = {0x7e00, 0}, nanb[1] = {0x7fc1};
    int64_t s3[1] = {3}, s2[1] = {2}, s1[1] = {1};
    w = st_writer_new();
    CHECK(st_writer_add(w, "w.inf", ST_F16, 1, s3, inf16, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "w.nan", ST_F16, 1, s2, nan16, err) == 0, "%s", err);
    CHECK(st_writer_add(w, "w.bnan", ST_BF16, 1, s1, nanb, err) == 0, "%s", err);
    CHECK(st_writer_save(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    CHECK(st_map(&f, path, err) == 0, "%s", err);
    if (f.ntensors == 3) {
        CHECK(st_to_f32(st_find(&f, "w.inf"), out, "p.st", err) == -1 &&
                  !strcmp(err, "p.st: tensor 'w.inf' holds a non-finite value (inf) at index 2"),
              "'%s'", err);
        CHECK(st_to_f32(st_find(&f, "w.nan"), out, "p.st", err) == -1 &&
                  strstr(err, "'w.nan' holds a non-finite value (nan) at index 0"),
              "'%s'", err);
        CHECK(st_to_f32(st_find(&f, "w.bnan"), out, "p.st", err) == -1 && strstr(err, "(nan)"),
              "'%s'", err);
    }
    st_free(&f);

    /* A truncated or lying file is refused when mapped, as when read. */
    unsigned char *buf;
    size_t len;
    CHECK(fs_read_all(path, &buf, &len, err) == 0, "%s", err);
    const void *parts[1] = {buf};
    size_t lens[1] = {len - 1};
    CHECK(fs_write_atomic(path, parts, lens, 1, err) == 0, "%s", err);
    CHECK(st_map(&f, path, err) == -1 && strstr(err, path) && strstr(err, "end beyond the data section"),
          "'%s'", err);
    lens[0] = 5;
    CHECK(fs_write_atomic(path, parts, lens, 1, err) == 0, "%s", err);
    CHECK(st_map(&f, path, err) == -1 && strstr(err, "file is 5 bytes, too short"), "'%s'", err);
    lens[0] = 0;
    CHECK(fs_write_atomic(path, parts, lens, 1, err) == 0, "%s", err);
    CHECK(st_map(&f, path, err) == -1 && strstr(err, "file is 0 bytes"), "'%s'", err);
    free(buf);
    unlink(path);
    CHECK(st_map(&f, path, err) == -1 && strstr(err, "No such file"), "'%s'", err);
    CHECK(st_map(&f, tmpdir, err) == -1 && strstr(err, "directory"), "'%s'", err);
}

/* ---- files --------------------------------------------------------------- */

static void test_load_errors(void) {
    char path[512], err[D3_ERRLEN] = "";
    st_file f;
    path_in(path, sizeof path, "missing.safetensors");
    CHECK(st_load(&f, path, err) == -1, "missing file loaded");
    CHECK(strstr(err, path) && strstr(err, "No such file"), "'%s'", err);
    CHECK(st_load(&f, tmpdir, err) == -1, "directory loaded");
    CHECK(strstr(err, tmpdir) && strstr(err, "directory"), "'%s'", err);

    path_in(path, sizeof path, "junk.safetensors");
    const void *parts[1] = {"junk"};
    size_t lens[1] = {4};
    CHECK(fs_write_atomic(path, parts, lens, 1, err) == 0, "%s", err);
    CHECK(st_load(&f, path, err) == -1 && strstr(err, path) && strstr(err, "too short"), "'%s'", err);
    unlink(path);

    /* Saving into a missing directory names the path and the call. */
    path_in(path, sizeof path, "no/such/dir/m.safetensors");
    st_writer *w = st_writer_new();
    CHECK(st_writer_save(w, path, err) == -1, "saved into a missing directory");
    CHECK(strstr(err, path) && strstr(err, "open(") && strstr(err, "No such file"), "'%s'", err);
    st_writer_free(w);
}

static void test_fs_atomic(void) {
    char path[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "atomic.bin");
    const void *parts[3] = {"ab", "", "cdef"};
    size_t lens[3] = {2, 0, 4};
    CHECK(fs_write_atomic(path, parts, lens, 3, err) == 0, "%s", err);
    unsigned char *b;
    size_t n;
    CHECK(fs_read_all(path, &b, &n, err) == 0, "%s", err);
    CHECK(n == 6 && memcmp(b, "abcdef", 7) == 0, "read %zu bytes '%s'", n, b ? (char *)b : "");
    free(b);
    CHECK(count_entries(tmpdir, ".tmp.") == 0, "temp file left behind");
    unlink(path);

    /* rename fails over a non-empty directory: error names the call, and
     * the temp file is removed. */
    char dir[512], inner[600];
    path_in(dir, sizeof dir, "adir");
    snprintf(inner, sizeof inner, "%s/x", dir);
    CHECK(fs_mkdirs(inner, err) == 0, "%s", err);
    CHECK(fs_write_atomic(dir, parts, lens, 3, err) == -1, "wrote over a directory");
    CHECK(strstr(err, dir) && strstr(err, "rename("), "'%s'", err);
    CHECK(count_entries(tmpdir, ".tmp.") == 0, "temp file left behind after a failed rename");
    rmdir(inner);
    rmdir(dir);
}

static void test_fs_mkdirs(void) {
    char path[512], file[512], err[D3_ERRLEN] = "";
    path_in(path, sizeof path, "m1/m2//m3/");
    CHECK(fs_mkdirs(path, err) == 0, "%s", err);
    CHECK(fs_mkdirs(path, err) == 0, "second mkdirs: %s", err);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISDIR(st.st_mode), "%s not a directory", path);
    path_in(file, sizeof file, "m1/f");
    const void *parts[1] = {"x"};
    size_t lens[1] = {1};
    CHECK(fs_write_atomic(file, parts, lens, 1, err) == 0, "%s", err);
    path_in(path, sizeof path, "m1/f/sub");
    CHECK(fs_mkdirs(path, err) == -1 && strstr(err, "not a directory"), "'%s'", err);
    unlink(file);
    path_in(path, sizeof path, "m1/m2/m3");
    rmdir(path);
    path_in(path, sizeof path, "m1/m2");
    rmdir(path);
    path_in(path, sizeof path, "m1");
    rmdir(path);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/d3po-st-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp(%s): %s\n", tmpdir, strerror(errno));
        return 1;
    }
    RUN(test_round_trip);
    RUN(test_empty_file);
    RUN(test_writer_rejects);
    RUN(test_hostile);
    RUN(test_truncated_and_corrupted);
    RUN(test_f16_exhaustive);
    RUN(test_map_convert);
    RUN(test_bulk_convert);
    RUN(test_load_errors);
    RUN(test_fs_atomic);
    RUN(test_fs_mkdirs);
    if (rmdir(tmpdir)) fprintf(stderr, "  note: %s not empty, left in place\n", tmpdir);
    return t_done();
}
