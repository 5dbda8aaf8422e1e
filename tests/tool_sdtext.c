/* tool_sdtext.c - the C side of tests/test_sd_text.sh: CLIP token ids (and,
 * with the text encoder, hidden states) for a file of prompts, and the
 * tokenizer's hostile-input checks.
 *
 *   tool_sdtext ids TOKDIR PROMPTS.jsonl    one line of ids per prompt
 *   tool_sdtext states PIPE PROMPTS.jsonl OUT.bin
 *                                           CLIP last_hidden_state, float32
 *                                           [P, 77, D] little endian, through
 *                                           sd_clip_encode (F32 pipelines: the
 *                                           weights are read here with
 *                                           engine/safetensors.h, by name)
 *   tool_sdtext hostile TOKDIR SCRATCHDIR   bad prompts and bad files: clean
 *                                           results or one-line errors; exit 0 when all hold
 *
 * PROMPTS.jsonl holds one JSON string per line (so any byte a prompt can
 * hold, newlines included, survives the trip from Python). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"
#include "safetensors.h"
#include "sd/clip.h"
#include "sd/tokenizer.h"

static int usage(void) {
    fprintf(stderr, "usage: tool_sdtext ids TOKDIR PROMPTS.jsonl | states PIPE PROMPTS.jsonl OUT.bin | "
                    "hostile TOKDIR SCRATCHDIR\n");
    return 1;
}

/* Calls fn(text, len, ctx) for each prompt line; returns -1 on a bad file. */
static int each_prompt(const char *path, int (*fn)(const char *, size_t, void *), void *ctx) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "tool_sdtext: %s: cannot open\n", path); return -1; }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        json_error_t je;
        json_t *j = json_loads(line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!json_is_string(j)) {
            fprintf(stderr, "tool_sdtext: %s: line %d: expected a JSON string\n", path, lineno);
            json_decref(j);
            rc = -1;
            break;
        }
        rc = fn(json_string_value(j), json_string_length(j), ctx);
        json_decref(j);
        if (rc) break;
    }
    free(line);
    fclose(f);
    return rc;
}

static int print_ids(const char *text, size_t len, void *ctx) {
    const sd_tokenizer *tk = ctx;
    int32_t ids[SD_TOKENS_MAX];
    char err[D3_ERRLEN];
    if (sd_tokenizer_encode_n(tk, text, len, ids, err) < 0) { fprintf(stderr, "tool_sdtext: %s\n", err); return -1; }
    for (int i = 0; i < sd_tokenizer_max_length(tk); i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    return 0;
}

static int failures;
#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) {                                            \
            fprintf(stderr, "tool_sdtext: FAIL: " __VA_ARGS__);   \
            fprintf(stderr, "\n");                                \
            failures++;                                           \
        }                                                         \
    } while (0)

static void write_file(const char *dir, const char *name, const char *text) {
    char p[8192 + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) { fprintf(stderr, "tool_sdtext: cannot write %s\n", p); exit(2); }
    fputs(text, f);
    fclose(f);
}

/* Loading dir must fail with a one-line message holding want. */
static void expect_load_error(const char *dir, const char *want) {
    char err[D3_ERRLEN] = "";
    sd_tokenizer *tk = sd_tokenizer_load(dir, err);
    CHECK(!tk, "%s: loaded, expected an error with '%s'", dir, want);
    CHECK(strstr(err, want) != NULL, "error '%s' lacks '%s'", err, want);
    CHECK(strchr(err, '\n') == NULL, "error '%s' is not one line", err);
    printf("hostile files: %s\n", err);
    sd_tokenizer_free(tk);
}

static int hostile(const char *tokdir, const char *scratch) {
    char err[D3_ERRLEN];
    sd_tokenizer *tk = sd_tokenizer_load(tokdir, err);
    if (!tk) { fprintf(stderr, "tool_sdtext: %s\n", err); return 2; }
    int L = sd_tokenizer_max_length(tk), bos = sd_tokenizer_bos_id(tk), eos = sd_tokenizer_eos_id(tk);
    int32_t ids[SD_TOKENS_MAX], ref[SD_TOKENS_MAX];

    /* invalid UTF-8 is dropped like the U+FFFD Python would have made of it */
    static const char *bad[] = {"\xff", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf", "\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "a%sb", bad[i]);
        int n = sd_tokenizer_encode(tk, text, ids, err), m = sd_tokenizer_encode(tk, "ab", ref, err);
        CHECK(n == m && memcmp(ids, ref, sizeof(int32_t) * L) == 0, "invalid UTF-8 case %zu is not dropped", i);
    }
    /* control characters vanish, NUL included */
    int n = sd_tokenizer_encode_n(tk, "a\0\x01\x1b\x7f" "b", 6, ids, err);
    int m = sd_tokenizer_encode(tk, "ab", ref, err);
    CHECK(n == m && memcmp(ids, ref, sizeof(int32_t) * L) == 0, "control characters are not dropped");
    /* 10k characters: one word, and many; truncated with the end token last */
    char *big = malloc(20001);
    for (int i = 0; i < 10000; i++) big[i] = (char)('a' + (i * 7919) % 26);
    big[10000] = 0;
    n = sd_tokenizer_encode(tk, big, ids, err);
    CHECK(n == L && ids[0] == bos && ids[L - 1] == eos, "10k-letter word: %d ids, ends %d", n, ids[L - 1]);
    for (int i = 0; i < 20000; i++) big[i] = i % 2 ? ' ' : (char)('a' + i % 26);
    big[20000] = 0;
    n = sd_tokenizer_encode(tk, big, ids, err);
    CHECK(n == L && ids[L - 1] == eos, "10k words: %d ids", n);
    for (int i = 0; i < 20000; i++) big[i] = "\xf0\x9f\x99\x82"[i % 4];
    n = sd_tokenizer_encode(tk, big, ids, err);
    CHECK(n == L && ids[L - 1] == eos, "5k emoji: %d ids", n);
    free(big);
    n = sd_tokenizer_encode(tk, "", ids, err);
    CHECK(n == 2 && ids[0] == bos && ids[1] == eos && ids[2] == sd_tokenizer_pad_id(tk), "empty prompt");
    /* truncation is reported from the first token past max_length - 2 */
    char *as = malloc(2 * (size_t)L + 8);
    for (int i = 0; i < 2 * (L - 2); i++) as[i] = i % 2 ? ' ' : 'a';
    as[2 * (L - 2)] = 0;
    CHECK(sd_tokenizer_truncates(tk, as, err) == 0 && sd_tokenizer_encode(tk, as, ids, err) == L,
          "%d words fit", L - 2);
    strcat(as, "a");
    CHECK(sd_tokenizer_truncates(tk, as, err) == 1, "%d words are truncated", L - 1);
    CHECK(sd_tokenizer_truncates(tk, "", err) == 0, "the empty prompt is not truncated");
    free(as);
    printf("hostile prompts: invalid UTF-8, controls, 10k characters, empty, truncation: ok\n");
    sd_tokenizer_free(tk);

    /* hostile files, each in its own copy of a folder */
    char d[8192], vocab[512];
    snprintf(d, sizeof d, "%s/missing", scratch);
    expect_load_error(d, "missing/vocab.json");
    snprintf(vocab, sizeof vocab, "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4, "
                                  "\"<|startoftext|>\": 5, \"<|endoftext|>\": 6}");
    static const struct { const char *name, *vocab, *merges, *config, *want; } cases[] = {
        {"vocab-array", "[1, 2]", "#v\na b\n", NULL, "vocab.json: expected a JSON object"},
        {"vocab-string-id", "{\"a\": \"x\"}", "#v\na b\n", NULL, "key \"a\": expected a non-negative integer"},
        {"vocab-truncated", "{\"a\": 0", "#v\na b\n", NULL, "vocab.json: line 1"},
        {"merges-one-token", NULL, "#v\na b\nab\n", NULL, "merges.txt: line 3: expected two symbols"},
        {"merges-three", NULL, "#v\na b c\n", NULL, "merges.txt: line 2: expected two symbols"},
        {"merges-missing", NULL, NULL, NULL, "merges.txt: No such file"},
        {"config-array", NULL, "#v\na b\n", "[]", "tokenizer_config.json: expected a JSON object"},
        {"config-maxlen", NULL, "#v\na b\n", "{\"model_max_length\": 1e30}", "key \"model_max_length\""},
        {"config-pad", NULL, "#v\na b\n", "{\"pad_token\": \"zz\"}", "key \"pad_token\": token \"zz\" is not in vocab.json"},
        {"config-pad-type", NULL, "#v\na b\n", "{\"pad_token\": 3}", "key \"pad_token\": expected a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[8192 + 64];
        snprintf(d, sizeof d, "%s/%s", scratch, cases[i].name);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
        if (system(cmd) != 0) return 2;
        write_file(d, "vocab.json", cases[i].vocab ? cases[i].vocab : vocab);
        if (cases[i].merges) write_file(d, "merges.txt", cases[i].merges);
        if (cases[i].config) write_file(d, "tokenizer_config.json", cases[i].config);
        expect_load_error(d, cases[i].want);
    }
    /* and a small valid one works */
    snprintf(d, sizeof d, "%s/valid", scratch);
    char cmd[8192 + 64];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
    if (system(cmd) != 0) return 2;
    write_file(d, "vocab.json", vocab);
    write_file(d, "merges.txt", "#version: 0.2\na b</w>\n");
    tk = sd_tokenizer_load(d, err);
    CHECK(tk != NULL, "small valid folder: %s", err);
    if (tk) {
        n = sd_tokenizer_encode(tk, "AB ba z", ids, err);
        /* "ab" -> ab</w>; "ba" -> b a</w>; "z" unknown -> unk (<|endoftext|>) */
        CHECK(n == 6 && ids[1] == 4 && ids[2] == 1 && ids[3] == 2 && ids[4] == 6 && ids[5] == 6,
              "small folder: %d ids %d %d %d %d %d", n, ids[1], ids[2], ids[3], ids[4], ids[5]);
        sd_tokenizer_free(tk);
    }
    return failures ? 1 : 0;
}

typedef struct {
    char **v;
    int n;
} strlist;

static int collect(const char *text, size_t len, void *ctx) {
    strlist *l = ctx;
    char **nv = realloc(l->v, sizeof(char *) * (size_t)(l->n + 1));
    if (!nv) return -1;
    l->v = nv;
    /* sd_clip_encode takes C strings: a NUL inside ends the prompt there */
    l->v[l->n] = strndup(text, len);
    return l->v[l->n++] ? 0 : -1;
}

static int states(const char *pipe, const char *prompts, const char *out) {
    char err[D3_ERRLEN], path[8192];
    snprintf(path, sizeof path, "%s/text_encoder/config.json", pipe);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) { fprintf(stderr, "tool_sdtext: %s: %s\n", path, je.text); return 2; }
    sd_clip_config c;
    sd_layout L = {0};
    int rc = sd_clip_config_from_json(&c, j, path, err) || sd_clip_layout(&c, &L, err);
    json_decref(j);
    if (rc) { fprintf(stderr, "tool_sdtext: %s\n", err); return 2; }
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", pipe);
    st_file f;
    if (st_load(&f, path, err)) { fprintf(stderr, "tool_sdtext: %s\n", err); return 2; }
    float *params = calloc(L.numel, sizeof(float));
    for (int i = 0; i < L.n; i++) {
        const sd_param *p = &L.p[i];
        const st_tensor *t = st_find(&f, p->name);
        int same = t && t->dtype == ST_F32 && t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
        if (!same) {
            fprintf(stderr, "tool_sdtext: %s: tensor %s missing, not F32 or of another shape\n", path, p->name);
            return 2;
        }
        memcpy(params + p->off, t->data, p->numel * sizeof(float));
    }
    st_free(&f);
    snprintf(path, sizeof path, "%s/tokenizer", pipe);
    sd_tokenizer *tk = sd_tokenizer_load(path, err);
    if (!tk) { fprintf(stderr, "tool_sdtext: %s\n", err); return 2; }
    strlist l = {NULL, 0};
    if (each_prompt(prompts, collect, &l)) return 2;
    size_t per = (size_t)sd_tokenizer_max_length(tk) * c.hidden_size;
    float *h = malloc(sizeof(float) * per * (size_t)l.n);
    if (sd_clip_encode(backend_cpu(), &c, &L, params, tk, (const char *const *)l.v, l.n, h, err)) {
        fprintf(stderr, "tool_sdtext: %s\n", err);
        return 2;
    }
    FILE *o = fopen(out, "wb");
    if (!o || fwrite(h, sizeof(float), per * (size_t)l.n, o) != per * (size_t)l.n || fclose(o)) {
        fprintf(stderr, "tool_sdtext: %s: write failed\n", out);
        return 2;
    }
    for (int i = 0; i < l.n; i++) free(l.v[i]);
    free(l.v);
    free(h);
    free(params);
    sd_layout_free(&L);
    sd_tokenizer_free(tk);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "states") == 0) return states(argv[2], argv[3], argv[4]);
    if (argc != 4) return usage();
    if (strcmp(argv[1], "ids") == 0) {
        char err[D3_ERRLEN];
        sd_tokenizer *tk = sd_tokenizer_load(argv[2], err);
        if (!tk) { fprintf(stderr, "tool_sdtext: %s\n", err); return 2; }
        int rc = each_prompt(argv[3], print_ids, tk);
        sd_tokenizer_free(tk);
        return rc ? 2 : 0;
    }
    if (strcmp(argv[1], "hostile") == 0) return hostile(argv[2], argv[3]);
    return usage();
}
