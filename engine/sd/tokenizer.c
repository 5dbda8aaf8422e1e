/* tokenizer.c - CLIP's BPE tokenizer (see tokenizer.h for what encode does,
 * step by step, and why each step is there: every one mirrors transformers'
 * CLIPTokenizer without ftfy, checked id for id by tests/test_sd_text.sh).
 *
 * Data: the vocabulary (token -> id) and the merge ranks ("a b" -> rank)
 * are two open-addressing hash tables keyed by UTF-8 bytes. BPE works on
 * one pre-token at a time: its symbols are contiguous spans of the
 * byte-mapped word, so a merge only widens a span, and the rank of each
 * adjacent pair is cached and recomputed only next to a merge (a
 * 10k-character word stays well under a second). */
#include "sd/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/unicode.h"

/* CLIPTokenizer reads merges.txt lines 1 .. 49152 - 256 - 2 (line 0 is the
 * "#version" header, whatever it holds). */
#define CLIP_MERGES (49152 - 256 - 2)
#define MAX_ADDED 64

/* ---- a string -> int hash table ---- */

typedef struct {
    char *key;   /* NUL-terminated, malloc'd; NULL = empty slot */
    size_t klen;
    int32_t val;
} hent;

typedef struct {
    hent *e;
    size_t cap, n;
} htab;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static hent *ht_slot(const htab *t, const char *k, size_t n) {
    size_t i = hash_bytes(k, n) & (t->cap - 1);
    for (;;) {
        hent *e = &t->e[i];
        if (!e->key || (e->klen == n && memcmp(e->key, k, n) == 0)) return e;
        i = (i + 1) & (t->cap - 1);
    }
}

/* Sets k -> v (a later value replaces an earlier one, as a Python dict
 * built from a list does). Returns -1 when memory runs out. */
static int ht_put(htab *t, const char *k, size_t n, int32_t v) {
    if (2 * (t->n + 1) > t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 1024;
        htab nt = {calloc(cap, sizeof(hent)), cap, t->n};
        if (!nt.e) return -1;
        for (size_t i = 0; i < t->cap; i++)
            if (t->e[i].key) *ht_slot(&nt, t->e[i].key, t->e[i].klen) = t->e[i];
        free(t->e);
        *t = nt;
    }
    hent *e = ht_slot(t, k, n);
    if (!e->key) {
        e->key = malloc(n + 1);
        if (!e->key) return -1;
        memcpy(e->key, k, n);
        e->key[n] = 0;
        e->klen = n;
        t->n++;
    }
    e->val = v;
    return 0;
}

static int ht_get(const htab *t, const char *k, size_t n, int32_t *v) {
    if (!t->cap) return 0;
    const hent *e = ht_slot(t, k, n);
    if (!e->key) return 0;
    *v = e->val;
    return 1;
}

static void ht_free(htab *t) {
    for (size_t i = 0; i < t->cap; i++) free(t->e[i].key);
    free(t->e);
    memset(t, 0, sizeof *t);
}

/* ---- the tokenizer ---- */

typedef struct {
    uint32_t *cp;  /* content as code points */
    size_t n;
    char *utf8;    /* and as UTF-8 */
    int32_t id;
    int lstrip, rstrip;
} added_tok;

struct sd_tokenizer {
    htab vocab, ranks;
    added_tok added[MAX_ADDED];
    int nadded;
    int32_t bos, eos, pad, unk;
    int max_len;
    unsigned char byte_enc[256][3]; /* GPT-2's byte -> printable character, UTF-8, NUL-ended */
};

/* A short printable rendering of file text for error messages: control
 * bytes escaped, cut at 48 bytes. */
static const char *shown(const char *s, char *buf, size_t cap) {
    size_t k = 0;
    for (; *s && k + 5 < cap && k < 48; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", c);
        else buf[k++] = (char)c;
    }
    buf[k] = 0;
    if (*s && k + 4 < cap) strcpy(buf + k, "...");
    return buf;
}

static void byte_table(sd_tokenizer *tk) {
    /* printable bytes map to themselves; the other 68 to U+0100.. in order */
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = keep ? (uint32_t)b : 256u + (uint32_t)n++;
        int k = uni_to_utf8(cp, tk->byte_enc[b]);
        tk->byte_enc[b][k] = 0;
    }
}

static int load_vocab(sd_tokenizer *tk, const char *path, char *err) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) {
        if (je.line < 1) return d3_errf(err, "%s: %s", path, je.text);
        return d3_errf(err, "%s: line %d: %s", path, je.line, je.text);
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return d3_errf(err, "%s: expected a JSON object of token -> id", path);
    }
    const char *k;
    json_t *v;
    char b[64];
    json_object_foreach(j, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            d3_errf(err, "%s: key \"%s\": expected a non-negative integer id", path, shown(k, b, sizeof b));
            json_decref(j);
            return -1;
        }
        if (ht_put(&tk->vocab, k, strlen(k), (int32_t)json_integer_value(v))) {
            json_decref(j);
            return d3_errf(err, "%s: out of memory", path);
        }
    }
    json_decref(j);
    if (tk->vocab.n == 0) return d3_errf(err, "%s: empty vocabulary", path);
    return 0;
}

static int load_merges(sd_tokenizer *tk, const char *path, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return d3_errf(err, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rank = 0, rc = 0, started = 0;
    char key[1024];
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        /* Python strips the whole file first: leading blank lines do not count */
        char *a = line;
        while (*a == ' ' || *a == '\t' || *a == '\r' || *a == '\n' || *a == '\v' || *a == '\f') a++;
        if (!started) {
            if (!*a) continue;
            started = 1;
            continue; /* the "#version" header line, skipped unread */
        }
        if (rank >= CLIP_MERGES) break;
        char *sa = strtok(a, " \t\r\n\v\f");
        char *sb = sa ? strtok(NULL, " \t\r\n\v\f") : NULL;
        char *sc = sb ? strtok(NULL, " \t\r\n\v\f") : NULL;
        if (!sa) { rank++; continue; } /* a blank line inside takes a rank and merges nothing */
        if (!sb || sc) {
            rc = d3_errf(err, "%s: line %d: expected two symbols separated by a space", path, lineno);
            break;
        }
        int n = snprintf(key, sizeof key, "%s %s", sa, sb);
        if (n >= (int)sizeof key) {
            rc = d3_errf(err, "%s: line %d: merge longer than %zu bytes", path, lineno, sizeof key - 1);
            break;
        }
        if (ht_put(&tk->ranks, key, (size_t)n, rank++)) {
            rc = d3_errf(err, "%s: out of memory", path);
            break;
        }
    }
    if (!rc && ferror(f)) rc = d3_errf(err, "%s: read error", path);
    free(line);
    fclose(f);
    if (!rc && tk->ranks.n == 0) rc = d3_errf(err, "%s: no merges", path);
    return rc;
}

/* A token setting in tokenizer_config.json / special_tokens_map.json: a
 * string, or an AddedToken object {"content", "lstrip", "rstrip", ...}
 * whose flags *strip gets (bit 1 lstrip, bit 2 rstrip). 0 = absent. */
static int token_value(json_t *j, const char *key, const char *path, const char **out, int *strip, char *err) {
    json_t *v = j ? json_object_get(j, key) : NULL;
    *strip = 0;
    if (!v || json_is_null(v)) return 0;
    if (json_is_object(v)) {
        if (json_is_true(json_object_get(v, "single_word")))
            return d3_errf(err, "%s: key \"%s\": single_word tokens are not supported", path, key);
        *strip = json_is_true(json_object_get(v, "lstrip")) | 2 * json_is_true(json_object_get(v, "rstrip"));
        v = json_object_get(v, "content");
    }
    if (!json_is_string(v))
        return d3_errf(err, "%s: key \"%s\": expected a string or an object with a string \"content\"", path, key);
    *out = json_string_value(v);
    return 1;
}

static int add_token(sd_tokenizer *tk, const char *content, int32_t id, int lstrip, int rstrip,
                     const char *path, char *err) {
    uint32_t *cp;
    size_t n;
    if (!*content) return d3_errf(err, "%s: an added token is empty", path);
    /* the same content listed twice (a special token also in added_tokens_decoder) is one token */
    for (int i = 0; i < tk->nadded; i++)
        if (strcmp(tk->added[i].utf8, content) == 0) return 0;
    if (tk->nadded == MAX_ADDED) return d3_errf(err, "%s: more than %d added tokens", path, MAX_ADDED);
    char *u = strdup(content);
    if (!u || uni_from_utf8(content, strlen(content), &cp, &n)) {
        free(u);
        return d3_errf(err, "%s: out of memory", path);
    }
    tk->added[tk->nadded++] = (added_tok){cp, n, u, id, lstrip, rstrip};
    return 0;
}

/* The id of a special token: its entry in added_tokens_decoder, else its
 * vocabulary id. */
static int special_id(sd_tokenizer *tk, const char *tok, int strip, const char *what, const char *path,
                      int32_t *id, char *err) {
    for (int i = 0; i < tk->nadded; i++) {
        if (strcmp(tk->added[i].utf8, tok) == 0) {
            *id = tk->added[i].id;
            return 0;
        }
    }
    char b[64];
    if (!ht_get(&tk->vocab, tok, strlen(tok), id))
        return d3_errf(err, "%s: key \"%s\": token \"%s\" is not in vocab.json", path, what, shown(tok, b, sizeof b));
    return add_token(tk, tok, *id, strip & 1, !!(strip & 2), path, err);
}

static json_t *load_optional_json(const char *path, int *missing, char *err) {
    json_error_t je;
    FILE *f = fopen(path, "rb");
    *missing = 0;
    if (!f) {
        if (errno == ENOENT) { *missing = 1; return NULL; }
        d3_errf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    json_t *j = json_loadf(f, 0, &je);
    fclose(f);
    if (!j) {
        d3_errf(err, "%s: line %d: %s", path, je.line, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        d3_errf(err, "%s: expected a JSON object", path);
        return NULL;
    }
    return j;
}

static int load_config(sd_tokenizer *tk, const char *dir, char *err) {
    char cpath[4096], spath[4096];
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    snprintf(spath, sizeof spath, "%s/special_tokens_map.json", dir);
    int cmiss, smiss, rc = -1;
    json_t *cfg = load_optional_json(cpath, &cmiss, err);
    if (!cfg && !cmiss) return -1;
    json_t *map = load_optional_json(spath, &smiss, err);
    if (!map && !smiss) { json_decref(cfg); return -1; }

    tk->max_len = 77;
    json_t *ml = cfg ? json_object_get(cfg, "model_max_length") : NULL;
    if (ml) {
        if (!json_is_number(ml) || json_number_value(ml) < 2 || json_number_value(ml) > SD_TOKENS_MAX ||
            json_number_value(ml) != (double)(int)json_number_value(ml)) {
            d3_errf(err, "%s: key \"model_max_length\": expected an integer in [2, %d]", cpath, SD_TOKENS_MAX);
            goto out;
        }
        tk->max_len = (int)json_number_value(ml);
    }
    /* added_tokens_decoder: {"id": {"content", "lstrip", "rstrip", "single_word", ...}} */
    json_t *atd = cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    if (atd && !json_is_object(atd)) {
        d3_errf(err, "%s: key \"added_tokens_decoder\": expected an object", cpath);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(atd, k, v) {
        char *end;
        long id = strtol(k, &end, 10);
        json_t *c = json_object_get(v, "content");
        char b[64];
        if (*end || end == k || id < 0 || id > INT32_MAX || !json_is_string(c)) {
            d3_errf(err, "%s: added_tokens_decoder \"%s\": expected an integer id and a string \"content\"", cpath,
                    shown(k, b, sizeof b));
            goto out;
        }
        if (json_is_true(json_object_get(v, "single_word"))) {
            d3_errf(err, "%s: added_tokens_decoder \"%s\": single_word tokens are not supported", cpath, k);
            goto out;
        }
        if (add_token(tk, json_string_value(c), (int32_t)id, json_is_true(json_object_get(v, "lstrip")),
                      json_is_true(json_object_get(v, "rstrip")), cpath, err))
            goto out;
    }
    static const struct { const char *key, *def; } special[4] = {
        {"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"},
        {"unk_token", "<|endoftext|>"}, {"pad_token", "<|endoftext|>"}};
    int32_t *ids[4] = {&tk->bos, &tk->eos, &tk->unk, &tk->pad};
    for (int i = 0; i < 4; i++) {
        const char *tok = special[i].def, *from = cpath;
        int strip, r = token_value(cfg, special[i].key, cpath, &tok, &strip, err);
        if (r < 0) goto out;
        if (r == 0) {
            from = spath;
            if ((r = token_value(map, special[i].key, spath, &tok, &strip, err)) < 0) goto out;
        }
        if (special_id(tk, tok, strip, special[i].key, from, ids[i], err)) goto out;
    }
    rc = 0;
out:
    json_decref(cfg);
    json_decref(map);
    return rc;
}

sd_tokenizer *sd_tokenizer_load(const char *dir, char *err) {
    sd_tokenizer *tk = calloc(1, sizeof *tk);
    if (!tk) { d3_errf(err, "%s: out of memory", dir); return NULL; }
    byte_table(tk);
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (load_vocab(tk, path, err)) goto fail;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (load_merges(tk, path, err)) goto fail;
    if (load_config(tk, dir, err)) goto fail;
    return tk;
fail:
    sd_tokenizer_free(tk);
    return NULL;
}

void sd_tokenizer_free(sd_tokenizer *tk) {
    if (!tk) return;
    ht_free(&tk->vocab);
    ht_free(&tk->ranks);
    for (int i = 0; i < tk->nadded; i++) {
        free(tk->added[i].cp);
        free(tk->added[i].utf8);
    }
    free(tk);
}

int sd_tokenizer_max_length(const sd_tokenizer *tk) { return tk->max_len; }
int sd_tokenizer_pad_id(const sd_tokenizer *tk) { return tk->pad; }
int sd_tokenizer_bos_id(const sd_tokenizer *tk) { return tk->bos; }
int sd_tokenizer_eos_id(const sd_tokenizer *tk) { return tk->eos; }
int sd_tokenizer_vocab_size(const sd_tokenizer *tk) { return (int)tk->vocab.n; }

/* ---- encoding ---- */

/* The ids collected so far; stops growing at cap (truncation). */
typedef struct {
    int32_t *v;
    int n, cap;
} idlist;

static void push_id(idlist *l, int32_t id) {
    if (l->n < l->cap) l->v[l->n++] = id;
}

/* Python's str.isspace() for the characters that survive cleaning. */
static int is_space(uint32_t c) {
    int k = uni_class(c);
    return c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || k == UNI_ZS || k == UNI_ZLP;
}

static int is_cjk(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B820 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Python's str.lower() of one whitespace-free word: the full mapping
 * (U+0130 -> i + U+0307) and capital sigma's final form. o has 2n room. */
static size_t lower_word(const uint32_t *w, size_t n, uint32_t *o) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = w[i];
        if (c == 0x130) { o[k++] = 'i'; o[k++] = 0x307; continue; }
        if (c == 0x3A3) {
            /* final when a cased letter precedes (past case-ignorables) and none follows */
            size_t j = i;
            while (j > 0 && uni_is_case_ignorable(w[j - 1])) j--;
            int fin = j > 0 && uni_is_cased(w[j - 1]);
            if (fin) {
                j = i + 1;
                while (j < n && uni_is_case_ignorable(w[j])) j++;
                fin = j == n || !uni_is_cased(w[j]);
            }
            o[k++] = fin ? 0x3C2 : 0x3C3;
            continue;
        }
        o[k++] = uni_lower1(c);
    }
    return k;
}

/* Steps 3 of tokenizer.h on s[0..n): BasicTokenizer's cleanup. Writes the
 * words joined by single spaces into *out (malloc'd). */
static int basic_clean(const uint32_t *s, size_t n, uint32_t **out, size_t *outn) {
    uint32_t *a = malloc((3 * n + 1) * sizeof *a);
    if (!a) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c == 0 || c == 0xFFFD) continue;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || uni_class(c) == UNI_ZS) { a[k++] = ' '; continue; }
        if (uni_class(c) == UNI_C) continue;
        if (is_cjk(c)) { a[k++] = ' '; a[k++] = c; a[k++] = ' '; continue; }
        a[k++] = c;
    }
    uint32_t *nf;
    size_t m;
    int rc = uni_nfc(a, k, &nf, &m);
    free(a);
    if (rc) return -1;
    uint32_t *o = malloc((2 * m + 1) * sizeof *o);
    if (!o) { free(nf); return -1; }
    size_t ok = 0;
    for (size_t i = 0; i < m;) {
        if (is_space(nf[i])) { i++; continue; }
        size_t j = i;
        while (j < m && !is_space(nf[j])) j++;
        if (ok) o[ok++] = ' ';
        ok += lower_word(nf + i, j - i, o + ok);
        i = j;
    }
    free(nf);
    *out = o;
    *outn = ok;
    return 0;
}

/* Does the pattern's literal lit (ASCII) match at s[i..n), letters
 * case-insensitively as the regex module folds them? */
static size_t match_lit(const uint32_t *s, size_t i, size_t n, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++) {
        if (i + k >= n) return 0;
        uint32_t c = s[i + k];
        int l = (unsigned char)lit[k];
        if (l >= 'a' && l <= 'z' ? uni_fold_ascii(c) != l : c != (uint32_t)l) return 0;
    }
    return k;
}

/* One pre-token's length at s[i] (step 4), or 0 when nothing matches
 * there (a space, or U+0345: its case variants are letters, so under
 * IGNORECASE the regex module counts it neither as \p{L} nor as
 * [^\s\p{L}\p{N}] and findall skips it). */
static size_t pretoken(const uint32_t *s, size_t i, size_t n) {
    static const char *lits[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    uint32_t c = s[i];
    if (is_space(c) || c == 0x345) return 0;
    for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
        size_t m = match_lit(s, i, n, lits[k]);
        if (m) return m;
    }
    int cls = uni_class(c);
    if (cls == UNI_N) return 1;
    size_t j = i + 1;
    if (cls == UNI_L) {
        while (j < n && uni_class(s[j]) == UNI_L) j++;
        return j - i;
    }
    while (j < n && !is_space(s[j]) && s[j] != 0x345) {
        int k = uni_class(s[j]);
        if (k == UNI_L || k == UNI_N) break;
        j++;
    }
    return j - i;
}

static int32_t token_id(const sd_tokenizer *tk, const char *s, size_t n) {
    int32_t id;
    /* transformers looks a token up among the added tokens first */
    for (int i = 0; i < tk->nadded; i++)
        if (strlen(tk->added[i].utf8) == n && memcmp(tk->added[i].utf8, s, n) == 0) return tk->added[i].id;
    return ht_get(&tk->vocab, s, n, &id) ? id : tk->unk;
}

/* Step 5 on one pre-token (UTF-8 bytes p[0..n)). */
static int bpe(const sd_tokenizer *tk, const unsigned char *p, size_t n, idlist *ids) {
    if ((n == 15 && memcmp(p, "<|startoftext|>", 15) == 0) || (n == 13 && memcmp(p, "<|endoftext|>", 13) == 0)) {
        /* CLIPTokenizer's cache holds these two as themselves, without </w> */
        push_id(ids, token_id(tk, (const char *)p, n));
        return 0;
    }
    /* the mapped word: 2 bytes per input byte at most, plus "</w>" */
    char *w = malloc(2 * n + 5);
    size_t *st = malloc((n + 1) * sizeof *st), *ln = malloc((n + 1) * sizeof *ln);
    int32_t *rk = malloc((n + 1) * sizeof *rk);
    char *key = malloc(4 * n + 16), *nw = malloc(n + 1);
    if (!w || !st || !ln || !rk || !key || !nw) {
        free(w); free(st); free(ln); free(rk); free(key); free(nw);
        return -1;
    }
    size_t wl = 0, ns = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen((const char *)tk->byte_enc[p[i]]);
        memcpy(w + wl, tk->byte_enc[p[i]], l);
        st[ns] = wl;
        ln[ns++] = l;
        wl += l;
    }
    memcpy(w + wl, "</w>", 4);
    ln[ns - 1] += 4;
    /* rk[i]: rank of the pair (symbol i, symbol i+1), INT32_MAX = no merge */
#define PAIR_RANK(i)                                                             \
    do {                                                                         \
        size_t kl = 0;                                                           \
        memcpy(key, w + st[i], ln[i]); kl += ln[i]; key[kl++] = ' ';              \
        memcpy(key + kl, w + st[(i) + 1], ln[(i) + 1]); kl += ln[(i) + 1];         \
        if (!ht_get(&tk->ranks, key, kl, &rk[i])) rk[i] = INT32_MAX;             \
    } while (0)
    for (size_t i = 0; i + 1 < ns; i++) PAIR_RANK(i);
    rk[ns - 1] = INT32_MAX;
    while (ns > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < ns; i++)
            if (rk[i] < rk[best]) best = i;
        if (rk[best] == INT32_MAX) break;
        /* merge every occurrence of this pair of strings, left to right */
        const char *fa = w + st[best], *fb = w + st[best + 1];
        size_t la = ln[best], lb = ln[best + 1];
        size_t o = 0;
        for (size_t i = 0; i < ns;) {
            if (i + 1 < ns && ln[i] == la && ln[i + 1] == lb && memcmp(w + st[i], fa, la) == 0 &&
                memcmp(w + st[i + 1], fb, lb) == 0) {
                st[o] = st[i];
                ln[o] = la + lb;
                nw[o] = 1;
                o++;
                i += 2;
            } else {
                st[o] = st[i];
                ln[o] = ln[i];
                rk[o] = rk[i];
                nw[o] = 0;
                o++;
                i++;
            }
        }
        ns = o;
        /* a pair's rank changes only where either side was just merged */
        for (size_t i = 0; i + 1 < ns; i++)
            if (nw[i] || nw[i + 1]) PAIR_RANK(i);
        rk[ns - 1] = INT32_MAX;
    }
#undef PAIR_RANK
    for (size_t i = 0; i < ns; i++) push_id(ids, token_id(tk, w + st[i], ln[i]));
    free(w); free(st); free(ln); free(rk); free(key); free(nw);
    return 0;
}

/* Steps 3-5 on one piece of text between added tokens. */
static int encode_piece(const sd_tokenizer *tk, const uint32_t *s, size_t n, idlist *ids) {
    uint32_t *t;
    size_t m;
    if (n == 0) return 0;
    if (basic_clean(s, n, &t, &m)) return -1;
    unsigned char *buf = malloc(4 * m + 4);
    if (!buf) { free(t); return -1; }
    for (size_t i = 0; i < m && ids->n < ids->cap;) {
        size_t l = pretoken(t, i, m);
        if (!l) { i++; continue; }
        size_t bl = 0;
        for (size_t j = i; j < i + l; j++) bl += (size_t)uni_to_utf8(t[j], buf + bl);
        if (bpe(tk, buf, bl, ids)) { free(buf); free(t); return -1; }
        i += l;
    }
    free(buf);
    free(t);
    return 0;
}

/* The added token starting at s[i] (the longest), or -1. */
static int added_at(const sd_tokenizer *tk, const uint32_t *s, size_t i, size_t n) {
    int best = -1;
    for (int a = 0; a < tk->nadded; a++) {
        const added_tok *t = &tk->added[a];
        if (i + t->n <= n && memcmp(s + i, t->cp, t->n * sizeof *s) == 0 && (best < 0 || t->n > tk->added[best].n))
            best = a;
    }
    return best;
}

/* The ids of text without start/end tokens, at most cap of them, into
 * body; returns how many, or -1 when memory runs out. */
static int encode_body(const sd_tokenizer *tk, const char *text, size_t len, int32_t *body, int cap) {
    uint32_t *s;
    size_t n;
    if (uni_from_utf8(text, len, &s, &n)) return -1;
    idlist ids = {body, 0, cap};
    /* step 2: pieces between added tokens; lstrip/rstrip eat the neighbours' whitespace */
    size_t start = 0, i = 0;
    int rstrip = 0;
    while (i <= n && ids.n < ids.cap) {
        int a = i < n ? added_at(tk, s, i, n) : -1;
        if (a < 0 && i < n) { i++; continue; }
        size_t b = start, e = i;
        if (rstrip) while (b < e && is_space(s[b])) b++;
        if (a >= 0 && tk->added[a].lstrip) while (e > b && is_space(s[e - 1])) e--;
        if (encode_piece(tk, s + b, e - b, &ids)) { free(s); return -1; }
        if (a < 0) break;
        push_id(&ids, tk->added[a].id);
        rstrip = tk->added[a].rstrip;
        i += tk->added[a].n;
        start = i;
    }
    free(s);
    return ids.n;
}

int sd_tokenizer_encode_n(const sd_tokenizer *tk, const char *text, size_t len, int32_t *out, char *err) {
    int32_t body[SD_TOKENS_MAX];
    int nb = encode_body(tk, text, len, body, tk->max_len - 2);
    if (nb < 0) return d3_errf(err, "tokenizer: out of memory");
    int k = 0;
    out[k++] = tk->bos;
    for (int j = 0; j < nb; j++) out[k++] = body[j];
    out[k++] = tk->eos;
    int used = k;
    while (k < tk->max_len) out[k++] = tk->pad;
    return used;
}

int sd_tokenizer_encode(const sd_tokenizer *tk, const char *text, int32_t *ids, char *err) {
    return sd_tokenizer_encode_n(tk, text, strlen(text), ids, err);
}

int sd_tokenizer_truncates(const sd_tokenizer *tk, const char *text, char *err) {
    int32_t body[SD_TOKENS_MAX];
    int nb = encode_body(tk, text, strlen(text), body, tk->max_len - 1);
    if (nb < 0) return d3_errf(err, "tokenizer: out of memory");
    return nb > tk->max_len - 2;
}
