/* session.c - the on-disk labeling session (format in session.h): creating
 * the layout, opening it under an flock with the journal replayed and the
 * checkpoint checked, appending labels durably (one write + fsync per
 * decision), pair files with a validated binary header, and per-round
 * checkpoints published through LATEST.
 *
 * Crash safety rests on two rules. Files that are replaced (session.json,
 * LATEST, checkpoints, pairs, PNGs) go through fs_write_atomic, so a reader
 * sees the old or the new file. The journal is only ever appended to, one
 * whole line per write, fsync'd before the caller is told it worked; a
 * crash can leave at most a torn last line, which was never acknowledged,
 * is ignored on open and cut off before the next append. */
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "image.h"
#include "safetensors.h"
#include "text.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "session.c writes float32 data in host order; the format is little-endian"
#endif

#define PATH_LEN 4096
#define TRAJ_MAGIC "D3POTRJ1"
#define TRAJ_MAGIC2 "D3POTRJ2"
#define TRAJ_MAX_K 100000
#define TRAJ_MAX_S 8192

static const char *const choice_names[] = {"A", "B", "tie", "skip"};

const char *session_choice_name(int c) {
    return c >= 0 && c < SESSION_NCHOICES ? choice_names[c] : "none";
}

/* ---- small helpers ---- */

void session_warn(d3_session *s, const char *fmt, ...) {
    if (s->nwarn >= SESSION_MAX_WARN) {
        s->nwarn_dropped++;
        return;
    }
    char *w = s->warn[s->nwarn++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w, D3_ERRLEN, fmt, ap);
    va_end(ap);
    text_escape_inplace(w, D3_ERRLEN);
}

/* snprintf into a PATH_LEN buffer; -1 with err when the path is too long. */
static int pathf(char *out, char *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int pathf(char *out, char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= PATH_LEN) return d3_errf(err, "%.200s...: path too long", out);
    return 0;
}

/* dir without trailing slashes ("a/b//" -> "a/b", "/" stays "/"). */
static char *clean_dir(const char *dir) {
    char *d = strdup(dir);
    if (!d) return NULL;
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') d[--n] = 0;
    return d;
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Parses a name of the form <digits><suffix> (at least `mindigits` digits)
 * into *id; 0 when it matches. */
static int parse_numbered(const char *name, const char *suffix, int mindigits, long max, long *id) {
    int nd = 0;
    long v = 0;
    while (name[nd] >= '0' && name[nd] <= '9') {
        v = v * 10 + (name[nd] - '0');
        if (++nd > 9) return -1;
    }
    if (nd < mindigits || strcmp(name + nd, suffix) || v >= max) return -1;
    *id = v;
    return 0;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}
static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Removes dir and the files in it and in its subdirectories (one level
 * deep is all a session has). Best effort: used to clean up a failed
 * session_create. */
static void remove_tree(const char *dir, int depth) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[PATH_LEN];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
                if (depth > 0) remove_tree(p, depth - 1);
            } else {
                unlink(p);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

/* fsync a directory (after a rename into it). EINVAL (not supported) is
 * accepted. */
static int sync_dir(const char *dir, char *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return d3_errf(err, "%s: open for fsync: %s", dir, strerror(errno));
    int rc = fsync(fd), e = errno;
    close(fd);
    if (rc && e != EINVAL) return d3_errf(err, "%s: fsync: %s", dir, strerror(e));
    return 0;
}

static int write_small(const char *path, const char *text, char *err) {
    const void *parts[1] = {text};
    size_t lens[1] = {strlen(text)};
    return fs_write_atomic(path, parts, lens, lens[0] ? 1 : 0, err);
}

/* ---- create ---- */

/* 0: dir missing or empty; -1 with err otherwise. */
static int check_empty_dir(const char *dir, char *err) {
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT) return 0;
        return d3_errf(err, "%s: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) return d3_errf(err, "%s: exists and is not a directory", dir);
    DIR *d = opendir(dir);
    if (!d) return d3_errf(err, "%s: %s", dir, strerror(errno));
    int empty = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { empty = 0; break; }
    closedir(d);
    if (empty) return 0;
    char p[PATH_LEN];
    if (pathf(p, err, "%s/session.json", dir)) return -1;
    if (is_file(p)) return d3_errf(err, "%s: already a d3po session (open it instead)", dir);
    return d3_errf(err, "%s: directory is not empty and is not a d3po session", dir);
}

/* session.json text: the settings object plus "format" and "created". */
static char *settings_text(const char *settings_json, char *err) {
    json_t *o;
    if (settings_json) {
        json_error_t je;
        o = json_loads(settings_json, JSON_REJECT_DUPLICATES, &je);
        if (!o || !json_is_object(o)) {
            if (o) d3_errf(err, "session settings: expected a JSON object");
            else d3_errf(err, "session settings: %s (column %d)", je.text, je.column);
            json_decref(o);
            return NULL;
        }
        if (json_object_get(o, "format") || json_object_get(o, "created")) {
            json_decref(o);
            d3_errf(err, "session settings: keys 'format' and 'created' are reserved");
            return NULL;
        }
    } else {
        o = json_object();
    }
    json_object_set_new(o, "format", json_integer(SESSION_FORMAT));
    json_object_set_new(o, "created", json_integer((json_int_t)time(NULL)));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(15));
    json_decref(o);
    if (!s) { d3_errf(err, "session settings: cannot encode"); return NULL; }
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) { free(s); d3_errf(err, "session settings: out of memory"); return NULL; }
    t[n] = '\n';
    t[n + 1] = 0;
    return t;
}

/* Builds the layout in a sibling temp directory and renames it into
 * place. model (pixel family): the base's bytes, written as
 * base.safetensors and rounds/0000.safetensors; NULL for the sd family.
 * extra/extra_len: written as extra_name (NULL: none). settings: the
 * settings object's text (consumed). */
static int create_layout(char *dir, char *settings, const unsigned char *model, size_t model_len,
                         const char *extra_name, const unsigned char *extra, size_t extra_len,
                         char *err) {
    char tmp[PATH_LEN], p[PATH_LEN];
    int rc = -1, made_tmp = 0;

    /* build DIR.new.<pid> beside DIR, then rename it into place */
    if (pathf(tmp, err, "%s.new.%ld", dir, (long)getpid())) goto out;
    {
        char *parent = strdup(dir), *slash = strrchr(parent, '/');
        int prc = 0;
        if (slash && slash != parent) {
            *slash = 0;
            prc = fs_mkdirs(parent, err);
        }
        free(parent);
        if (prc) goto out;
    }
    if (mkdir(tmp, 0777)) { d3_errf(err, "%s: mkdir: %s", tmp, strerror(errno)); goto out; }
    made_tmp = 1;
    const void *parts[1] = {model};
    size_t lens[1] = {model_len};
    static const char *const subdirs[] = {"pairs", "rounds"};
    for (int i = 0; i < 2; i++) {
        if (pathf(p, err, "%s/%s", tmp, subdirs[i])) goto out;
        if (mkdir(p, 0777)) { d3_errf(err, "%s: mkdir: %s", p, strerror(errno)); goto out; }
    }
    if (model && (pathf(p, err, "%s/base.safetensors", tmp) || fs_write_atomic(p, parts, lens, 1, err)))
        goto out;
    if (model &&
        (pathf(p, err, "%s/rounds/0000.safetensors", tmp) || fs_write_atomic(p, parts, lens, 1, err)))
        goto out;
    if (extra_name) {
        const void *xp[1] = {extra};
        size_t xl[1] = {extra_len};
        if (pathf(p, err, "%s/%s", tmp, extra_name) || fs_write_atomic(p, xp, xl, 1, err)) goto out;
    }
    if (pathf(p, err, "%s/LATEST", tmp) || write_small(p, "round 0 version 0\n", err)) goto out;
    if (pathf(p, err, "%s/labels.jsonl", tmp) || write_small(p, "", err)) goto out;
    if (pathf(p, err, "%s/lock", tmp) || write_small(p, "", err)) goto out;
    if (pathf(p, err, "%s/session.json", tmp) || write_small(p, settings, err)) goto out;
    if (rename(tmp, dir)) {
        int e = errno;
        if (e == ENOTEMPTY || e == EEXIST)
            d3_errf(err, "%s: directory is not empty (it changed while the session was made)", dir);
        else
            d3_errf(err, "%s: rename(%s): %s", dir, tmp, strerror(e));
        goto out;
    }
    made_tmp = 0;
    {
        char *parent = strdup(dir), *slash = strrchr(parent, '/');
        const char *pd = ".";
        if (slash) {
            if (slash == parent) slash[1] = 0;
            else *slash = 0;
            pd = parent;
        }
        rc = sync_dir(pd, err);
        free(parent);
    }
out:
    if (made_tmp) remove_tree(tmp, 1);
    return rc;
}

int session_create(const char *dir_in, const char *model_path, const char *settings_json,
                   char *err) {
    char *dir = clean_dir(dir_in), *settings = NULL;
    unsigned char *model = NULL;
    size_t model_len = 0;
    int rc = -1;
    if (!dir) return d3_errf(err, "%s: out of memory", dir_in);
    if (check_empty_dir(dir, err)) goto out;
    if (!(settings = settings_text(settings_json, err))) goto out;
    d3_model m;
    if (model_load(&m, model_path, NULL, err)) goto out;
    model_free(&m);
    if (fs_read_all(model_path, &model, &model_len, err)) goto out;
    rc = create_layout(dir, settings, model, model_len, NULL, NULL, 0, err);
out:
    free(model);
    free(settings);
    free(dir);
    return rc;
}

int session_create_sd(const char *dir_in, const char *model_path, int C, int h, int w,
                      const session_lora *lo, const char *lora_from, const char *settings_json,
                      char *err) {
    char *dir = clean_dir(dir_in), *settings = NULL, *text = NULL, abs[PATH_MAX];
    char hash[SESSION_HASH_LEN];
    unsigned char *start = NULL;
    size_t start_len = 0;
    json_t *o = NULL;
    int rc = -1;
    if (!dir) return d3_errf(err, "%s: out of memory", dir_in);
    if (check_empty_dir(dir, err)) goto out;
    if (!realpath(model_path, abs)) {
        d3_errf(err, "%s: %s", model_path, strerror(errno));
        goto out;
    }
    if (session_model_hash(abs, hash, err)) goto out;
    if (lo->start && (!lora_from || fs_read_all(lora_from, &start, &start_len, err))) {
        if (!lora_from) d3_errf(err, "%s: adapters to start from: no file given", dir);
        goto out;
    }
    json_error_t je;
    o = settings_json ? json_loads(settings_json, JSON_REJECT_DUPLICATES, &je) : json_object();
    if (!o || !json_is_object(o)) {
        d3_errf(err, "session settings: expected a JSON object");
        goto out;
    }
    json_t *tg = json_array();
    char list[SESSION_LORA_TARGETS];
    snprintf(list, sizeof list, "%s", lo->targets);
    for (char *sv, *t = strtok_r(list, ",", &sv); t; t = strtok_r(NULL, ",", &sv))
        json_array_append_new(tg, json_string(t));
    json_object_set_new(o, "family", json_string("sd"));
    json_object_set_new(o, "model", json_string(abs));
    json_object_set_new(o, "model_hash", json_string(hash));
    json_object_set_new(o, "latent", json_pack("[i,i,i]", C, h, w));
    json_object_set_new(o, "lora", json_pack("{s:i,s:f,s:I,s:o,s:b}", "rank", lo->rank, "alpha",
                                             (double)lo->alpha, "seed", (json_int_t)lo->seed,
                                             "targets", tg, "start", lo->start));
    if (!(text = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(9)))) {
        d3_errf(err, "session settings: cannot encode (the model path must be UTF-8)");
        goto out;
    }
    if (!(settings = settings_text(text, err))) goto out;
    rc = create_layout(dir, settings, NULL, 0, lo->start ? SESSION_LORA_START : NULL, start,
                       start_len, err);
out:
    json_decref(o);
    free(text);
    free(start);
    free(settings);
    free(dir);
    return rc;
}

/* ---- the model's content hash ---- */

#define HASH_EDGE (128 * 1024)

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static int hashed_name(const char *n) {
    size_t l = strlen(n);
    return (l > 5 && !strcmp(n + l - 5, ".json")) || (l > 4 && !strcmp(n + l - 4, ".txt")) ||
           (l > 12 && !strcmp(n + l - 12, ".safetensors"));
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Relative paths (malloc'd) of the hashed files under root/rel, depth-limited. */
static int list_hashed(const char *root, const char *rel, int depth, char ***v, int *n, int *cap,
                       char *err) {
    char dp[PATH_LEN];
    if (pathf(dp, err, "%s%s%s", root, rel[0] ? "/" : "", rel)) return -1;
    DIR *d = opendir(dp);
    if (!d) return d3_errf(err, "%s: %s", dp, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char r[PATH_LEN], full[PATH_LEN];
        if (pathf(r, err, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name) ||
            pathf(full, err, "%s/%s", root, r)) { rc = -1; break; }
        struct stat st;
        if (stat(full, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth > 0) rc = list_hashed(root, r, depth - 1, v, n, cap, err);
        } else if (S_ISREG(st.st_mode) && hashed_name(e->d_name)) {
            if (*n == *cap) {
                char **nv = realloc(*v, (size_t)(*cap = *cap ? 2 * *cap : 32) * sizeof *nv);
                if (!nv) { rc = d3_errf(err, "%s: out of memory", dp); break; }
                *v = nv;
            }
            if (!((*v)[*n] = strdup(r))) rc = d3_errf(err, "%s: out of memory", dp);
            else (*n)++;
        }
    }
    closedir(d);
    return rc;
}

/* Folds file path (shown as rel) into *h. */
static int hash_file(uint64_t *h, const char *path, const char *rel, unsigned char *buf, char *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return d3_errf(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) { close(fd); return d3_errf(err, "%s: %s", path, strerror(errno)); }
    uint8_t sz[8];
    put_u64(sz, (uint64_t)st.st_size);
    *h = fnv1a(*h, rel, strlen(rel) + 1);
    *h = fnv1a(*h, sz, 8);
    off_t size = st.st_size, offs[2] = {0, size > HASH_EDGE ? size - HASH_EDGE : 0};
    for (int k = 0; k < 2; k++) {
        size_t want = (size_t)(size - offs[k] < HASH_EDGE ? size - offs[k] : HASH_EDGE), got = 0;
        while (got < want) {
            ssize_t r = pread(fd, buf + got, want - got, offs[k] + (off_t)got);
            if (r <= 0) {
                close(fd);
                return d3_errf(err, "%s: read: %s", path, r ? strerror(errno) : "file shrank");
            }
            got += (size_t)r;
        }
        *h = fnv1a(*h, buf, want);
    }
    close(fd);
    return 0;
}

int session_model_hash(const char *model_path, char *out, char *err) {
    struct stat st;
    if (stat(model_path, &st)) return d3_errf(err, "%s: %s", model_path, strerror(errno));
    unsigned char *buf = malloc(HASH_EDGE);
    if (!buf) return d3_errf(err, "%s: out of memory", model_path);
    uint64_t h = 0xcbf29ce484222325ULL;
    int rc = 0;
    if (!S_ISDIR(st.st_mode)) {
        const char *base = strrchr(model_path, '/');
        rc = hash_file(&h, model_path, base ? base + 1 : model_path, buf, err);
    } else {
        char **v = NULL;
        int n = 0, cap = 0;
        rc = list_hashed(model_path, "", 2, &v, &n, &cap, err);
        if (!rc && !n) rc = d3_errf(err, "%s: no .json, .txt or .safetensors file to hash", model_path);
        if (!rc) qsort(v, (size_t)n, sizeof *v, cmp_str);
        for (int i = 0; i < n && !rc; i++) {
            char full[PATH_LEN];
            rc = pathf(full, err, "%s/%s", model_path, v[i]) || hash_file(&h, full, v[i], buf, err);
        }
        for (int i = 0; i < n; i++) free(v[i]);
        free(v);
    }
    free(buf);
    if (rc) return -1;
    snprintf(out, SESSION_HASH_LEN, "fnv1a64:%016llx", (unsigned long long)h);
    return 0;
}

/* ---- open ---- */

static int ensure_cap(d3_session *s, long n) {
    if (n <= s->cap) return 0;
    long cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    unsigned char *pr = realloc(s->present, (size_t)cap);
    if (!pr) return -1;
    s->present = pr;
    signed char *ch = realloc(s->choice, (size_t)cap);
    if (!ch) return -1;
    s->choice = ch;
    signed char *tr = realloc(s->trained, (size_t)cap);
    if (!tr) return -1;
    s->trained = tr;
    memset(s->present + s->cap, 0, (size_t)(cap - s->cap));
    memset(s->choice + s->cap, SESSION_NONE, (size_t)(cap - s->cap));
    memset(s->trained + s->cap, SESSION_NONE, (size_t)(cap - s->cap));
    s->cap = cap;
    return 0;
}

static int take_lock(d3_session *s, char *err) {
    char p[PATH_LEN];
    if (pathf(p, err, "%s/lock", s->dir)) return -1;
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return d3_errf(err, "%s: open: %s", p, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char buf[32] = {0};
            ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
            long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
            close(fd);
            if (pid > 0) return d3_errf(err, "%s is in use by another d3po (pid %ld)", s->dir, pid);
            return d3_errf(err, "%s is in use by another d3po (pid unknown)", s->dir);
        }
        close(fd);
        return d3_errf(err, "%s: flock: %s", p, strerror(e));
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) || pwrite(fd, buf, (size_t)n, 0) != n) {
        int e = errno;
        close(fd);
        return d3_errf(err, "%s: writing the pid: %s", p, strerror(e));
    }
    s->lock_fd = fd;
    return 0;
}

/* The model family and, for sd, the model, its hash, the latent shape and
 * the adapters' settings (layout in session.h). path: session.json. */
static int read_family(d3_session *s, json_t *o, const char *path, char *err) {
    json_t *fam = json_object_get(o, "family");
    if (!fam) return 0; /* sessions before the sd family: pixel */
    if (!json_is_string(fam) || session_family_code(json_string_value(fam)) < 0)
        return d3_errf(err, "%s: \"family\": expected \"pixel\" or \"sd\"", path);
    s->family = session_family_code(json_string_value(fam));
    if (s->family == SESSION_FAMILY_PIXEL) return 0;
    json_t *m = json_object_get(o, "model"), *h = json_object_get(o, "model_hash");
    json_t *lat = json_object_get(o, "latent"), *lo = json_object_get(o, "lora");
    if (!json_is_string(m) || !json_string_length(m))
        return d3_errf(err, "%s: \"model\": expected the model's path", path);
    if (!json_is_string(h) || json_string_length(h) >= SESSION_HASH_LEN)
        return d3_errf(err, "%s: \"model_hash\": expected \"fnv1a64:<16 hex>\"", path);
    json_int_t c = 0, lh = 0, lw = 0;
    if (json_unpack(lat, "[III]", &c, &lh, &lw) || c < 1 || c > 64 || lh < 1 || lh > 1024 ||
        lw < 1 || lw > 1024)
        return d3_errf(err, "%s: \"latent\": expected [C, h, w] (C 1..64, h and w 1..1024)", path);
    json_int_t rank = 0, seed = 0;
    double alpha = 0;
    int start = 0;
    json_t *tg = NULL;
    if (json_unpack(lo, "{s:I,s:F,s:I,s:o,s:b}", "rank", &rank, "alpha", &alpha, "seed", &seed,
                    "targets", &tg, "start", &start) ||
        rank < 1 || rank > 1024 || !(alpha > 0) || seed < 0 || !json_is_array(tg))
        return d3_errf(err, "%s: \"lora\": expected {\"rank\":1..1024, \"alpha\":>0, "
                       "\"seed\":N, \"targets\":[...], \"start\":bool}", path);
    size_t used = 0;
    for (size_t i = 0; i < json_array_size(tg); i++) {
        const char *t = json_string_value(json_array_get(tg, i));
        if (!t || !t[0] || strchr(t, ',') || used + strlen(t) + 2 > SESSION_LORA_TARGETS)
            return d3_errf(err, "%s: \"lora\": target %zu: expected a module name", path, i + 1);
        used += (size_t)snprintf(s->lora.targets + used, SESSION_LORA_TARGETS - used, "%s%s",
                                 i ? "," : "", t);
    }
    s->lora.rank = (int)rank;
    s->lora.alpha = (float)alpha;
    s->lora.seed = (uint64_t)seed;
    s->lora.start = start;
    s->lat_c = (int)c;
    s->lat_h = (int)lh;
    s->lat_w = (int)lw;
    snprintf(s->model_hash, sizeof s->model_hash, "%s", json_string_value(h));
    if (!(s->model_path = strdup(json_string_value(m)))) return d3_errf(err, "%s: out of memory", path);
    return 0;
}

static int read_settings(d3_session *s, char *err) {
    char p[PATH_LEN];
    unsigned char *buf;
    size_t len;
    if (pathf(p, err, "%s/session.json", s->dir) || fs_read_all(p, &buf, &len, err)) return -1;
    json_error_t je;
    json_t *o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
    int rc = -1;
    if (!o) d3_errf(err, "%s:%d: %s", p, je.line, je.text);
    else if (!json_is_object(o)) d3_errf(err, "%s: expected a JSON object", p);
    else if (!json_is_integer(json_object_get(o, "format")))
        d3_errf(err, "%s: no integer \"format\" (not a d3po session?)", p);
    else if (json_integer_value(json_object_get(o, "format")) != SESSION_FORMAT)
        d3_errf(err, "%s: format %lld, this d3po reads format %d", p,
                (long long)json_integer_value(json_object_get(o, "format")), SESSION_FORMAT);
    else if (read_family(s, o, p, err) == 0) {
        s->settings = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(15));
        rc = s->settings ? 0 : d3_errf(err, "%s: out of memory", p);
    }
    json_decref(o);
    free(buf);
    return rc;
}

/* Loads rounds/NNNN into s->policy/state. */
static int load_round(d3_session *s, int round, char *err) {
    char p[PATH_LEN];
    if (pathf(p, err, "%s/rounds/%04d.safetensors", s->dir, round)) return -1;
    if (model_load(&s->policy, p, &s->state, err)) return -1;
    s->have_policy = 1;
    s->round = s->version = round;
    s->arch = s->policy.L.arch;
    s->nclasses = s->policy.nclasses;
    return 0;
}

static int cmp_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* sd family: round r's adapters file is a safetensors file holding
 * lora.params (checked without the model; session_sd_load checks it
 * against the model). Round 0 may be missing (written at the first load). */
static int check_round_sd(d3_session *s, int round, char *err) {
    char p[PATH_LEN];
    if (pathf(p, err, "%s/rounds/%04d.safetensors", s->dir, round)) return -1;
    if (round == 0 && !is_file(p)) return 0;
    st_file f;
    if (st_map(&f, p, err)) return -1;
    int ok = st_find(&f, "lora.params") != NULL;
    st_free(&f);
    if (!ok) return d3_errf(err, "%s: no tensor 'lora.params' (not an sd session round)", p);
    s->round = s->version = round;
    return 0;
}

static int load_round_any(d3_session *s, int round, char *err) {
    return s->family == SESSION_FAMILY_PIXEL ? load_round(s, round, err) : check_round_sd(s, round, err);
}

/* LATEST, or the newest loading rounds/ file with a warning. */
static int load_checkpoint(d3_session *s, char *err) {
    char p[PATH_LEN], why[D3_ERRLEN], e2[D3_ERRLEN];
    unsigned char *buf = NULL;
    size_t len;
    int tried = -1;
    if (pathf(p, err, "%s/LATEST", s->dir)) return -1;
    if (fs_read_all(p, &buf, &len, e2)) {
        d3_errf(why, "%s", e2);
    } else {
        int r = -1, v = -1, n = 0;
        if (sscanf((char *)buf, "round %d version %d\n%n", &r, &v, &n) != 2 || (size_t)n != len ||
            r < 0 || r > SESSION_MAX_ROUND || v < 0) {
            int shown = (int)strcspn((char *)buf, "\n");
            d3_errf(why, "%s: expected \"round N version V\", got \"%.*s\"", p,
                    shown < 40 ? shown : 40, (char *)buf);
        } else if (load_round_any(s, r, e2)) {
            tried = r;
            d3_errf(why, "%s: round %d does not load: %s", p, r, e2);
        } else {
            s->version = v;
            free(buf);
            return 0;
        }
    }
    free(buf);
    /* fall back: the newest rounds/NNNN.safetensors that loads */
    char rd[PATH_LEN];
    if (pathf(rd, err, "%s/rounds", s->dir)) return -1;
    DIR *d = opendir(rd);
    if (!d) return d3_errf(err, "%s; and %s: %s", why, rd, strerror(errno));
    long *ids = NULL, n = 0, cap = 0, id;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (parse_numbered(e->d_name, ".safetensors", 4, SESSION_MAX_ROUND + 1, &id)) continue;
        if (n == cap) {
            long *t = realloc(ids, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *ids);
            if (!t) { free(ids); closedir(d); return d3_errf(err, "%s: out of memory", rd); }
            ids = t;
        }
        ids[n++] = id;
    }
    closedir(d);
    qsort(ids, (size_t)n, sizeof *ids, cmp_desc);
    for (long i = 0; i < n; i++) {
        if (ids[i] == tried || load_round_any(s, (int)ids[i], e2)) continue;
        session_warn(s, "%s; using rounds/%04ld.safetensors (round %ld): the rounds after it "
                     "are not in use, and their labels train again", why, ids[i], ids[i]);
        free(ids);
        return 0;
    }
    free(ids);
    if (s->family != SESSION_FAMILY_PIXEL) { /* the adapters before training */
        session_warn(s, "%s; using round 0 (the adapters before training): the labels train again",
                     why);
        s->round = s->version = 0;
        return 0;
    }
    return d3_errf(err, "%s; and no other checkpoint in %s loads", why, rd);
}

static int scan_pairs(d3_session *s, char *err) {
    char rd[PATH_LEN];
    if (pathf(rd, err, "%s/pairs", s->dir)) return -1;
    DIR *d = opendir(rd);
    if (!d) return d3_errf(err, "%s: %s", rd, strerror(errno));
    struct dirent *e;
    long id;
    while ((e = readdir(d))) {
        if (parse_numbered(e->d_name, ".traj", 6, SESSION_MAX_PAIRS, &id)) continue;
        if (ensure_cap(s, id + 1)) { closedir(d); return d3_errf(err, "%s: out of memory", rd); }
        s->present[id] = 1;
        s->npairs++;
        if (id + 1 > s->next_pair) s->next_pair = id + 1;
    }
    closedir(d);
    return 0;
}

/* Makes room for one more decision, so that a push after a successful
 * journal write cannot fail. */
static int reserve_decision(d3_session *s) {
    if (s->nstack < s->stack_cap) return 0;
    long cap = s->stack_cap ? 2 * s->stack_cap : 64;
    session_decision *t = realloc(s->stack, (size_t)cap * sizeof *t);
    if (!t) return -1;
    s->stack = t;
    s->stack_cap = cap;
    return 0;
}

static int push_decision(d3_session *s, long pair, int choice) {
    if (reserve_decision(s)) return -1;
    s->stack[s->nstack++] = (session_decision){pair, (signed char)choice, s->choice[pair]};
    s->choice[pair] = (signed char)choice;
    return 0;
}

static void pop_decision(d3_session *s) {
    session_decision *d = &s->stack[--s->nstack];
    s->choice[d->pair] = d->prev;
    s->undone++;
}

/* Applies one journal line; -1 with err "PATH:LINE: ...". */
/* dry: only checks the line (session_check_journal), changes nothing. */
static int replay_line(d3_session *s, const char *path, long lineno, const char *line, size_t len,
                       int dry, char *err) {
    json_error_t je;
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) return d3_errf(err, "%s:%ld: %s", path, lineno, je.text);
    int rc = -1;
    json_t *jp = json_object_get(o, "pair"), *jc = json_object_get(o, "choice"),
           *jt = json_object_get(o, "time"), *jv = json_object_get(o, "version");
    const char *c = json_string_value(jc);
    int choice = -2;
    if (c) {
        for (int i = 0; i < SESSION_NCHOICES; i++)
            if (!strcmp(c, choice_names[i])) choice = i;
        if (!strcmp(c, "undo")) choice = -1;
    }
    if (!json_is_object(o)) d3_errf(err, "%s:%ld: expected a JSON object", path, lineno);
    else if (!json_is_integer(jp) || json_integer_value(jp) < 0 ||
             json_integer_value(jp) >= SESSION_MAX_PAIRS)
        d3_errf(err, "%s:%ld: \"pair\": expected an integer from 0 to %ld", path, lineno,
                SESSION_MAX_PAIRS - 1);
    else if (choice == -2)
        d3_errf(err, "%s:%ld: \"choice\": expected \"A\", \"B\", \"tie\", \"skip\" or \"undo\"",
                path, lineno);
    else if (!json_is_number(jt))
        d3_errf(err, "%s:%ld: \"time\": expected a number", path, lineno);
    else if (!json_is_integer(jv) || json_integer_value(jv) < 0)
        d3_errf(err, "%s:%ld: \"version\": expected a non-negative integer", path, lineno);
    else {
        long pair = (long)json_integer_value(jp);
        if (choice == -1) {
            /* undo: cancels the newest decision not yet undone; our writer
             * never writes one with nothing to undo, and if one appears
             * there is nothing to cancel */
            if (s->nstack && !dry) pop_decision(s);
            rc = 0;
        } else if (pair >= s->cap || !s->present[pair]) {
            d3_errf(err, "%s:%ld: pair %ld has no pairs/%06ld.traj (journal and pairs/ differ)",
                    path, lineno, pair, pair);
        } else if (dry) {
            rc = 0;
        } else if (push_decision(s, pair, choice)) {
            d3_errf(err, "%s:%ld: out of memory", path, lineno);
        } else {
            rc = 0;
        }
    }
    json_decref(o);
    return rc;
}

static int replay_journal(d3_session *s, char *err) {
    char p[PATH_LEN];
    if (pathf(p, err, "%s/labels.jsonl", s->dir)) return -1;
    unsigned char *buf;
    size_t len;
    if (!is_file(p)) {
        /* no journal: no labels yet (session_create writes an empty one) */
    } else {
        if (fs_read_all(p, &buf, &len, err)) return -1;
        size_t start = 0;
        long lineno = 0;
        int rc = 0;
        while (start < len && !rc) {
            const unsigned char *nl = memchr(buf + start, '\n', len - start);
            lineno++;
            if (!nl) { /* torn last line: a write cut short, never acknowledged */
                session_warn(s,
                             "%s:%ld: torn last line (%zu bytes, a write cut short by a crash) ignored",
                             p, lineno, len - start);
                s->journal_torn = 1;
                break;
            }
            size_t end = (size_t)(nl - buf), l = end - start;
            if (l && buf[start + l - 1] == '\r') l--;
            if (l) {
                /* a bad line is skipped, not fatal: the rest of the session
                 * works, and `d3po session check --repair` moves it aside */
                char why[D3_ERRLEN];
                if (replay_line(s, p, lineno, (const char *)buf + start, l, 0, why))
                    session_warn(s, "%s; line skipped (d3po session check --repair moves it aside)",
                                 why);
                else
                    s->lines++;
            }
            start = end + 1;
            s->journal_len = start;
        }
        free(buf);
        if (rc) return -1;
    }
    if (s->readonly) return 0;
    s->journal_fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (s->journal_fd < 0) return d3_errf(err, "%s: open for appending: %s", p, strerror(errno));
    return 0;
}

static int check_writable(const d3_session *s, const char *what, char *err);

int session_check_journal(d3_session *s, int repair,
                          void (*report)(void *ctx, const char *problem), void *ctx, char *err) {
    char p[PATH_LEN], bp[PATH_LEN], why[D3_ERRLEN];
    if (pathf(p, err, "%s/labels.jsonl", s->dir) || pathf(bp, err, "%s/labels.jsonl.bad", s->dir))
        return -1;
    if (repair && check_writable(s, "repair", err)) return -1;
    unsigned char *buf;
    size_t len;
    if (!is_file(p)) return 0;
    if (fs_read_all(p, &buf, &len, err)) return -1;
    char *keep = malloc(len + 1), *bad = malloc(len + 2);
    size_t nk = 0, nb = 0, start = 0;
    long lineno = 0;
    int nbad = 0;
    if (!keep || !bad) {
        free(buf); free(keep); free(bad);
        return d3_errf(err, "%s: out of memory", p);
    }
    while (start < len) {
        const unsigned char *nl = memchr(buf + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - buf) : len, l = end - start;
        lineno++;
        int ok = 1;
        if (!nl) {
            d3_errf(why, "%s:%ld: torn last line (%zu bytes, a write cut short by a crash)", p,
                    lineno, l);
            ok = 0;
        } else {
            size_t lt = l && buf[start + l - 1] == '\r' ? l - 1 : l;
            if (lt && replay_line(s, p, lineno, (const char *)buf + start, lt, 1, why)) ok = 0;
        }
        if (ok) {
            memcpy(keep + nk, buf + start, l + 1);
            nk += l + 1;
        } else {
            text_escape_inplace(why, sizeof why);
            if (report) report(ctx, why);
            memcpy(bad + nb, buf + start, l);
            nb += l;
            bad[nb++] = '\n';
            nbad++;
        }
        start = end + 1;
    }
    free(buf);
    int rc = nbad;
    if (repair && nbad) {
        /* first the bad lines into labels.jsonl.bad (appended, fsync'd),
         * then the journal without them: a crash between the two leaves a
         * line in both, never in neither */
        int fd = open(bp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
        if (fd < 0 || write(fd, bad, nb) != (ssize_t)nb || fsync(fd)) {
            rc = d3_errf(err, "%s: %s", bp, strerror(errno));
        } else {
            const void *parts[1] = {keep};
            size_t lens[1] = {nk};
            if (fs_write_atomic(p, parts, lens, nk ? 1 : 0, err)) rc = -1;
        }
        if (fd >= 0) close(fd);
    }
    free(keep);
    free(bad);
    return rc;
}

int session_set_aside_pair(d3_session *s, long id, char *err) {
    if (check_writable(s, "set a pair aside", err)) return -1;
    char p[PATH_LEN], q[PATH_LEN];
    session_pair_path(s, id, "traj", p, sizeof p);
    if (pathf(q, err, "%s.bad", p)) return -1;
    if (rename(p, q)) return d3_errf(err, "%s: rename to %s: %s", p, q, strerror(errno));
    if (id >= 0 && id < s->cap && s->present[id]) {
        s->present[id] = 0;
        s->npairs--;
    }
    char d[PATH_LEN];
    return pathf(d, err, "%s/pairs", s->dir) ? -1 : sync_dir(d, err);
}

/* ---- trained labels (rounds/NNNN.labels) ---- */

/* The u32 at offset `at` of pair id's header (24: class, 28: version), or
 * -1 when the file is missing, short, not a pair file, or the value is
 * above INT32_MAX. */
static long traj_header_u32(const d3_session *s, long id, int at) {
    char path[PATH_LEN];
    unsigned char h[SESSION_TRAJ_HEADER];
    session_pair_path(s, id, "traj", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    if (n != (ssize_t)sizeof h || (memcmp(h, TRAJ_MAGIC, 8) && memcmp(h, TRAJ_MAGIC2, 8))) return -1;
    uint32_t v = get_u32(h + at);
    return v > INT32_MAX ? -1 : (long)v;
}

static int traj_version(const d3_session *s, long id) { return (int)traj_header_u32(s, id, 28); }

int session_pair_class(const d3_session *s, long id) {
    if (id < 0 || id >= s->cap || !s->present[id]) return -1;
    long c = traj_header_u32(s, id, 24);
    return c >= s->nclasses ? -1 : (int)c;
}

int session_pair_prompt(const d3_session *s, long id, char *out, size_t n) {
    if (id < 0 || id >= s->cap || !s->present[id] || !n) return -1;
    char path[PATH_LEN];
    unsigned char h[72 + SESSION_TRAJ_PROMPT_MAX];
    session_pair_path(s, id, "traj", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t got = read(fd, h, sizeof h);
    close(fd);
    if (got < 72 || memcmp(h, TRAJ_MAGIC2, 8)) return -1;
    uint32_t P = get_u32(h + 68);
    if (P > SESSION_TRAJ_PROMPT_MAX || 72 + (ssize_t)P > got) return -1;
    size_t k = P < n - 1 ? P : n - 1;
    memcpy(out, h + 72, k);
    out[k] = 0;
    return (int)P;
}

static int parse_choice(const char *c) {
    for (int i = 0; i < SESSION_NCHOICES; i++)
        if (c && !strcmp(c, choice_names[i])) return i;
    return -1;
}

/* Reads rounds/NNNN.labels of rounds 1..s->round into s->trained. A session
 * from before these files existed (rounds trained, no list) counts a
 * decided pair as trained when an earlier model version sampled it (the
 * rule `auto` used then). */
static int load_trained(d3_session *s, char *err) {
    int found = 0;
    for (int r = 1; r <= s->round; r++) {
        char p[PATH_LEN];
        unsigned char *buf;
        size_t len;
        if (pathf(p, err, "%s/rounds/%04d.labels", s->dir, r)) return -1;
        if (!is_file(p)) continue;
        found = 1;
        char why[D3_ERRLEN];
        if (fs_read_all(p, &buf, &len, why)) {
            session_warn(s, "%s; its labels count as not trained", why);
            continue;
        }
        size_t start = 0;
        long lineno = 0;
        while (start < len) {
            const unsigned char *nl = memchr(buf + start, '\n', len - start);
            size_t end = nl ? (size_t)(nl - buf) : len;
            lineno++;
            if (end > start) {
                json_t *o = json_loadb((const char *)buf + start, end - start, 0, NULL);
                json_t *jp = json_object_get(o, "pair");
                int ch = parse_choice(json_string_value(json_object_get(o, "choice")));
                long id = json_is_integer(jp) ? (long)json_integer_value(jp) : -1;
                if (id >= 0 && id < s->cap && !s->present[id] && ch >= 0)
                    ; /* a pair set aside since (session check --repair): nothing to mark */
                else if (id < 0 || id >= s->cap || ch < 0)
                    session_warn(s, "%s:%ld: expected {\"pair\":ID,\"choice\":C} of an existing pair; "
                                 "line skipped", p, lineno);
                else
                    s->trained[id] = (signed char)ch;
                json_decref(o);
            }
            start = end + 1;
        }
        free(buf);
    }
    if (!found && s->round > 0)
        for (long id = 0; id < s->cap; id++) {
            int c = s->choice[id];
            if (s->present[id] && c >= 0 && c != SESSION_SKIP) {
                int v = traj_version(s, id);
                if (v >= 0 && v < s->version) s->trained[id] = (signed char)c;
            }
        }
    return 0;
}

int session_label_trained(const d3_session *s, long id) {
    if (id < 0 || id >= s->cap || !s->present[id]) return 0;
    int c = s->choice[id];
    return c != SESSION_NONE && c != SESSION_SKIP && s->trained[id] == c;
}

int session_trained_choice(const d3_session *s, long id) {
    return id >= 0 && id < s->cap ? s->trained[id] : SESSION_NONE;
}

int session_label_pending(const d3_session *s, long id) {
    if (id < 0 || id >= s->cap || !s->present[id]) return 0;
    int c = s->choice[id];
    return c != SESSION_NONE && c != SESSION_SKIP && s->trained[id] != c;
}

int session_write_round_labels(d3_session *s, int round, const long *ids, const signed char *ch,
                               int n, char *err) {
    if (check_writable(s, "round labels", err)) return -1;
    char p[PATH_LEN];
    if (pathf(p, err, "%s/rounds/%04d.labels", s->dir, round)) return -1;
    size_t cap = (size_t)n * 48 + 1, len = 0;
    char *t = malloc(cap);
    if (!t) return d3_errf(err, "%s: out of memory", p);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(t + len, cap - len, "{\"pair\":%ld,\"choice\":\"%s\"}\n", ids[i],
                                session_choice_name(ch[i]));
    const void *parts[1] = {t};
    size_t lens[1] = {len};
    int rc = fs_write_atomic(p, parts, lens, len ? 1 : 0, err);
    free(t);
    return rc;
}

void session_mark_trained(d3_session *s, const long *ids, const signed char *ch, int n) {
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->cap) s->trained[ids[i]] = ch[i];
}

/* ---- stale temp files ---- */

/* "NAME.tmp.PID" -> PID, else -1. */
static long temp_pid(const char *name) {
    const char *t = strstr(name, ".tmp.");
    if (!t) return -1;
    t += 5;
    if (!*t) return -1;
    long pid = 0;
    for (; *t; t++) {
        if (*t < '0' || *t > '9' || pid > 99999999) return -1;
        pid = pid * 10 + (*t - '0');
    }
    return pid > 0 ? pid : -1;
}

int session_clean_temp(const char *dir, int remove, char *list, size_t n) {
    static const char *const sub[] = {"", "/pairs", "/rounds", "/groups"}; /* groups: groups.h */
    int count = 0;
    if (list && n) list[0] = 0;
    for (int k = 0; k < (int)(sizeof sub / sizeof sub[0]); k++) {
        char d[PATH_LEN], p[PATH_LEN];
        if (snprintf(d, sizeof d, "%s%s", dir, sub[k]) >= (int)sizeof d) continue;
        DIR *dd = opendir(d);
        if (!dd) continue;
        struct dirent *e;
        while ((e = readdir(dd))) {
            long pid = temp_pid(e->d_name);
            if (pid < 0 || pid == (long)getpid()) continue;
            if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* its writer still runs */
            if (snprintf(p, sizeof p, "%s/%s", d, e->d_name) >= (int)sizeof p) continue;
            if (remove && unlink(p)) continue;
            count++;
            if (list && strlen(list) + strlen(p) + 2 < n) {
                strcat(list, p);
                strcat(list, "\n");
            }
        }
        closedir(dd);
    }
    return count;
}

/* ---- prompts.json ---- */

static void free_prompts(d3_session *s) {
    for (int i = 0; i < s->nprompts; i++) free(s->prompts[i]);
    free(s->prompts);
    free(s->prompt_w);
    free(s->prompt_fixed);
    s->prompts = NULL;
    s->prompt_w = NULL;
    s->prompt_fixed = NULL;
    s->nprompts = 0;
}

/* Reads prompts.json; a bad file is a warning (the session then uses every
 * class) naming the file and what was expected. */
static void load_prompts(d3_session *s) {
    char p[PATH_LEN], why[D3_ERRLEN];
    if (snprintf(p, sizeof p, "%s/prompts.json", s->dir) >= (int)sizeof p || !is_file(p)) return;
    json_error_t je;
    json_t *o = json_load_file(p, JSON_REJECT_DUPLICATES, &je), *arr = json_object_get(o, "prompts"),
           *fx = json_object_get(o, "fixed");
    why[0] = 0;
    if (!o) d3_errf(why, "%s:%d: %s", p, je.line, je.text);
    else if (!json_is_array(arr) || json_array_size(arr) > SESSION_MAX_PROMPTS)
        d3_errf(why, "%s: \"prompts\": expected an array of at most %d entries", p,
                 SESSION_MAX_PROMPTS);
    else if (fx && !json_is_null(fx) && !json_is_string(fx))
        d3_errf(why, "%s: \"fixed\": expected a string or null", p);
    int n = why[0] ? 0 : (int)json_array_size(arr);
    s->prompts = calloc((size_t)n + 1, sizeof *s->prompts);
    s->prompt_w = calloc((size_t)n + 1, sizeof *s->prompt_w);
    for (int i = 0; i < n && !why[0]; i++) {
        json_t *e = json_array_get(arr, (size_t)i), *jt = json_object_get(e, "prompt"),
               *jw = json_object_get(e, "weight");
        const char *t = json_string_value(jt);
        if (!t || !t[0] || strlen(t) >= SESSION_PROMPT_LEN ||
            (jw && (!json_is_integer(jw) || json_integer_value(jw) < 1 ||
                    json_integer_value(jw) > 100)))
            d3_errf(why,
                     "%s: \"prompts\"[%d]: expected {\"prompt\": a string of 1 to %d bytes, "
                     "\"weight\": 1..100}", p, i, SESSION_PROMPT_LEN - 1);
        else {
            s->prompts[i] = strdup(t);
            s->prompt_w[i] = jw ? (int)json_integer_value(jw) : 1;
            s->nprompts = i + 1;
        }
    }
    if (!why[0] && json_is_string(fx)) s->prompt_fixed = strdup(json_string_value(fx));
    if (why[0]) {
        free_prompts(s);
        session_warn(s, "%s; using every class of the model as prompts", why);
    }
    json_decref(o);
}

int session_set_prompts(d3_session *s, const char *const *prompts, const int *weights, int n,
                        const char *fixed, char *err) {
    if (check_writable(s, "prompts", err)) return -1;
    char p[PATH_LEN];
    if (pathf(p, err, "%s/prompts.json", s->dir)) return -1;
    if (n < 0 || n > SESSION_MAX_PROMPTS)
        return d3_errf(err, "%s: %d prompts, expected at most %d", p, n, SESSION_MAX_PROMPTS);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        int w = weights ? weights[i] : 1;
        if (!prompts[i][0] || strlen(prompts[i]) >= SESSION_PROMPT_LEN || w < 1 || w > 100) {
            json_decref(arr);
            return d3_errf(err, "%s: prompt %d: expected 1 to %d bytes and a weight 1..100", p,
                           i + 1, SESSION_PROMPT_LEN - 1);
        }
        json_array_append_new(arr, json_pack("{s:s,s:i}", "prompt", prompts[i], "weight", w));
    }
    json_t *o = json_pack("{s:o,s:o}", "prompts", arr, "fixed",
                          fixed ? json_string(fixed) : json_null());
    char *t = o ? json_dumps(o, JSON_INDENT(1) | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    if (!t) return d3_errf(err, "%s: cannot encode (prompts must be UTF-8)", p);
    size_t len = strlen(t);
    char *t2 = realloc(t, len + 2);
    if (!t2) { free(t); return d3_errf(err, "%s: out of memory", p); }
    t2[len] = '\n';
    t2[len + 1] = 0;
    int rc = write_small(p, t2, err);
    free(t2);
    if (rc) return -1;
    /* the copy in memory follows the file */
    char **np = calloc((size_t)n + 1, sizeof *np);
    int *nw = calloc((size_t)n + 1, sizeof *nw);
    char *nf = fixed ? strdup(fixed) : NULL;
    if (!np || !nw || (fixed && !nf)) {
        free(np); free(nw); free(nf);
        return d3_errf(err, "%s: out of memory", p);
    }
    for (int i = 0; i < n; i++) {
        np[i] = strdup(prompts[i]);
        nw[i] = weights ? weights[i] : 1;
    }
    free_prompts(s);
    s->prompts = np;
    s->prompt_w = nw;
    s->prompt_fixed = nf;
    s->nprompts = n;
    return 0;
}

static int open_session(const char *dir, d3_session *s, int readonly, char *err) {
    memset(s, 0, sizeof *s);
    s->lock_fd = s->journal_fd = -1;
    s->readonly = readonly;
    if (!(s->dir = clean_dir(dir))) return d3_errf(err, "%s: out of memory", dir);
    char p[PATH_LEN];
    struct stat st;
    if (stat(s->dir, &st)) {
        d3_errf(err, "%s: %s", s->dir, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) { d3_errf(err, "%s: not a directory", s->dir); goto fail; }
    if (pathf(p, err, "%s/session.json", s->dir)) goto fail;
    if (!is_file(p)) {
        d3_errf(err, "%s: not a d3po session (no session.json)", s->dir);
        goto fail;
    }
    if ((!readonly && take_lock(s, err)) || read_settings(s, err)) goto fail;
    if (pathf(p, err, "%s/base.safetensors", s->dir)) goto fail;
    if (s->family == SESSION_FAMILY_PIXEL && !is_file(p)) {
        d3_errf(err, "%s: missing (the session's base model)", p);
        goto fail;
    }
    if (!readonly) {
        char list[1024];
        int n = session_clean_temp(s->dir, 1, list, sizeof list);
        if (n) {
            list[strcspn(list, "\n")] = 0;
            session_warn(s, "%s: removed %d temp file%s of interrupted writes (%s%s)", s->dir, n,
                         n == 1 ? "" : "s", list, n > 1 ? ", ..." : "");
        }
    }
    if (load_checkpoint(s, err) || scan_pairs(s, err) || replay_journal(s, err) ||
        load_trained(s, err))
        goto fail;
    load_prompts(s);
    return 0;
fail:
    session_close(s);
    return -1;
}

int session_open(const char *dir, d3_session *s, char *err) {
    return open_session(dir, s, 0, err);
}

int session_open_readonly(const char *dir, d3_session *s, char *err) {
    return open_session(dir, s, 1, err);
}

static int check_writable(const d3_session *s, const char *what, char *err) {
    if (s->readonly) return d3_errf(err, "%s: %s: session opened read-only", s->dir, what);
    return 0;
}

void session_close(d3_session *s) {
    if (s->have_policy) {
        model_free(&s->policy);
        state_free(&s->state);
    }
    if (s->journal_fd >= 0) close(s->journal_fd);
    if (s->lock_fd >= 0) close(s->lock_fd); /* releases the flock */
    free(s->dir);
    free(s->settings);
    free(s->model_path);
    free(s->present);
    free(s->choice);
    free(s->trained);
    free(s->stack);
    free_prompts(s);
    memset(s, 0, sizeof *s);
    s->lock_fd = s->journal_fd = -1;
}

int session_load_policy(d3_session *s, d3_model *m, d3_state *st, char *err) {
    if (s->family != SESSION_FAMILY_PIXEL)
        return d3_errf(err, "%s: a Stable Diffusion-family session (LoRA adapters, no model "
                       "checkpoint): this command handles pixel sessions only; d3po label and d3po "
                       "auto train it", s->dir);
    if (s->have_policy) {
        *m = s->policy;
        if (st) *st = s->state;
        else state_free(&s->state);
        s->have_policy = 0;
        memset(&s->policy, 0, sizeof s->policy);
        memset(&s->state, 0, sizeof s->state);
        return 0;
    }
    char p[PATH_LEN];
    session_round_path(s, s->round, p, sizeof p);
    return model_load(m, p, st, err);
}

char *session_base_path(const d3_session *s, char *out, size_t n) {
    snprintf(out, n, "%s/base.safetensors", s->dir);
    return out;
}
char *session_round_path(const d3_session *s, int round, char *out, size_t n) {
    snprintf(out, n, "%s/rounds/%04d.safetensors", s->dir, round);
    return out;
}
char *session_pair_path(const d3_session *s, long id, const char *what, char *out, size_t n) {
    if (!strcmp(what, "traj")) snprintf(out, n, "%s/pairs/%06ld.traj", s->dir, id);
    else snprintf(out, n, "%s/pairs/%06ld-%s.png", s->dir, id, what);
    return out;
}

/* ---- pairs ---- */

const char *session_family_name(int family) {
    return family == SESSION_FAMILY_PIXEL ? "pixel" : family == SESSION_FAMILY_SD ? "sd" : "?";
}

int session_family_code(const char *name) {
    if (name && !strcmp(name, "pixel")) return SESSION_FAMILY_PIXEL;
    if (name && !strcmp(name, "sd")) return SESSION_FAMILY_SD;
    return -1;
}

int session_write_traj(const char *path, const session_traj *t, char *err) {
    if (t->N < 1 || t->N > SESSION_MAX_N)
        return d3_errf(err, "%s: %d trajectories, expected 1..%d", path, t->N, SESSION_MAX_N);
    if (t->K < 1 || t->K > TRAJ_MAX_K)
        return d3_errf(err, "%s: K = %d steps, expected 1..%d", path, t->K, TRAJ_MAX_K);
    if (t->C < 1 || t->C > 64 || t->h < 1 || t->h > TRAJ_MAX_S || t->w < 1 || t->w > TRAJ_MAX_S)
        return d3_errf(err, "%s: trajectory shape %dx%dx%d out of range", path, t->C, t->h, t->w);
    if (t->family != SESSION_FAMILY_PIXEL && t->family != SESSION_FAMILY_SD)
        return d3_errf(err, "%s: unknown model family %d", path, t->family);
    if (t->version < 0) return d3_errf(err, "%s: negative model version", path);
    size_t P = t->prompt ? strlen(t->prompt) : 0;
    if (P > SESSION_TRAJ_PROMPT_MAX)
        return d3_errf(err, "%s: prompt of %zu bytes, at most %d", path, P, SESSION_TRAJ_PROMPT_MAX);
    size_t hb = (SESSION_TRAJ_HEADER2 + P + 7) & ~(size_t)7;
    uint8_t *h = calloc(1, hb);
    if (!h) return d3_errf(err, "%s: out of memory", path);
    memcpy(h, TRAJ_MAGIC2, 8);
    put_u32(h + 8, (uint32_t)hb);
    put_u32(h + 12, 2);
    put_u32(h + 16, (uint32_t)t->K);
    put_u32(h + 20, (uint32_t)t->N);
    put_u32(h + 24, (uint32_t)(t->cls < 0 ? -1 : t->cls));
    put_u32(h + 28, (uint32_t)t->version);
    put_u64(h + 32, t->seed);
    put_u32(h + 40, 0);
    put_u32(h + 44, f32_bits(t->cfg));
    put_u32(h + 48, f32_bits(t->eta));
    put_u32(h + 52, (uint32_t)t->C);
    put_u32(h + 56, (uint32_t)t->h);
    put_u32(h + 60, (uint32_t)t->w);
    put_u32(h + 64, (uint32_t)t->family);
    put_u32(h + 68, (uint32_t)P);
    if (P) memcpy(h + SESSION_TRAJ_HEADER2, t->prompt, P);
    size_t tn = ((size_t)t->K + 1) * t->C * (size_t)t->h * t->w * sizeof(float);
    size_t ln = (size_t)t->K * sizeof(float);
    const void *parts[1 + 2 * SESSION_MAX_N];
    size_t lens[1 + 2 * SESSION_MAX_N];
    parts[0] = h;
    lens[0] = hb;
    for (int i = 0; i < t->N; i++) {
        parts[1 + i] = t->traj[i];
        lens[1 + i] = tn;
        parts[1 + t->N + i] = t->logp[i];
        lens[1 + t->N + i] = ln;
    }
    int rc = fs_write_atomic(path, parts, lens, 1 + 2 * t->N, err);
    free(h);
    return rc;
}

int session_add_pair(d3_session *s, const session_pair *p, const uint8_t *rgb_a,
                     const uint8_t *rgb_b, long *id, char *err) {
    if (check_writable(s, "add pair", err)) return -1;
    long nid = s->next_pair;
    char path[PATH_LEN];
    if (nid >= SESSION_MAX_PAIRS)
        return d3_errf(err, "%s: session is full (%ld pairs)", s->dir, SESSION_MAX_PAIRS);
    if (p->K < 1 || p->K > TRAJ_MAX_K)
        return d3_errf(err, "pair %ld: K = %d steps, expected 1..%d", nid, p->K, TRAJ_MAX_K);
    int C = p->C ? p->C : 3, H = p->h ? p->h : p->S, W = p->w ? p->w : p->S;
    int ih = p->img_h ? p->img_h : H, iw = p->img_w ? p->img_w : W;
    if (s->family == SESSION_FAMILY_PIXEL) {
        if (p->family != SESSION_FAMILY_PIXEL || C != 3 || H != W)
            return d3_errf(err, "pair %ld: %s %dx%dx%d, the session's model is pixel", nid,
                           session_family_name(p->family), C, H, W);
        if (H != s->arch.size)
            return d3_errf(err, "pair %ld: image side %d, the session's model has %d", nid, H,
                           s->arch.size);
        if (p->cls < 0 || p->cls >= s->nclasses)
            return d3_errf(err, "pair %ld: class %d, the session's model has %d", nid, p->cls,
                           s->nclasses);
    } else if (p->family != s->family || C != s->lat_c || H != s->lat_h || W != s->lat_w) {
        return d3_errf(err, "pair %ld: %s %dx%dx%d, the session's model is %s %dx%dx%d", nid,
                       session_family_name(p->family), C, H, W, session_family_name(s->family),
                       s->lat_c, s->lat_h, s->lat_w);
    }
    if (p->version < 0) return d3_errf(err, "pair %ld: negative model version", nid);
    for (int i = 0; i < 2; i++) {
        const uint8_t *rgb = i ? rgb_b : rgb_a;
        if (!rgb) continue;
        session_pair_path(s, nid, i ? "b" : "a", path, sizeof path);
        if (png_write_rgb(path, rgb, iw, ih, err)) return -1;
    }
    session_traj t = {.N = 2, .K = p->K, .C = C, .h = H, .w = W, .family = p->family,
                      .cls = p->family == SESSION_FAMILY_PIXEL ? p->cls : -1,
                      .version = p->version, .seed = p->seed, .cfg = p->cfg, .eta = p->eta,
                      .prompt = p->prompt, .traj = {p->traj[0], p->traj[1]},
                      .logp = {p->logp[0], p->logp[1]}};
    session_pair_path(s, nid, "traj", path, sizeof path);
    if (ensure_cap(s, nid + 1)) return d3_errf(err, "%s: out of memory", path);
    if (session_write_traj(path, &t, err)) return -1;
    s->present[nid] = 1;
    s->choice[nid] = SESSION_NONE;
    s->npairs++;
    s->next_pair = nid + 1;
    *id = nid;
    return 0;
}

/* Checks the data of a read file (n floats after the header: N
 * trajectories of per floats, then N*K log-probs) for non-finite values. */
static int traj_finite(const char *path, const float *f, uint64_t nf, uint64_t per, int N, char *err) {
    uint64_t i = 0;
    while (i < nf && isfinite(f[i])) i++;
    if (i == nf) return 0;
    char where[32];
    if (i < (uint64_t)N * per) {
        if (N == 2) snprintf(where, sizeof where, "trajectory %c", i < per ? 'A' : 'B');
        else snprintf(where, sizeof where, "trajectory %llu", (unsigned long long)(i / per));
    } else {
        snprintf(where, sizeof where, "log-probs");
    }
    return d3_errf(err, "%s: %s holds a non-finite value (float %llu)", path, where,
                   (unsigned long long)i);
}

int session_read_traj_n(const char *path, session_traj *t, char *err) {
    memset(t, 0, sizeof *t);
    unsigned char *b;
    size_t len;
    if (fs_read_all(path, &b, &len, err)) return -1;
    int rc = -1, v2 = len >= 8 && !memcmp(b, TRAJ_MAGIC2, 8);
    uint32_t K, N = 2, C = 3, H, W, fam = SESSION_FAMILY_PIXEL, P = 0, dtype, hb;
    if (len < 16 || (memcmp(b, TRAJ_MAGIC, 8) && !v2)) {
        d3_errf(err, "%s: not a d3po pair file (magic \"%s\" or \"%s\" missing)", path, TRAJ_MAGIC2,
                TRAJ_MAGIC);
    } else if (!v2 && (hb = get_u32(b + 8)) != SESSION_TRAJ_HEADER) {
        d3_errf(err, "%s: header size %u, expected %d", path, hb, SESSION_TRAJ_HEADER);
    } else if (v2 && ((hb = get_u32(b + 8)) < SESSION_TRAJ_HEADER2 ||
                      hb > SESSION_TRAJ_HEADER2 + SESSION_TRAJ_PROMPT_MAX + 8 || hb % 8)) {
        d3_errf(err, "%s: header size %u, expected %d..%d, a multiple of 8", path, hb,
                SESSION_TRAJ_HEADER2, SESSION_TRAJ_HEADER2 + SESSION_TRAJ_PROMPT_MAX + 8);
    } else if (len < hb) {
        d3_errf(err, "%s: truncated header (%zu of %u bytes)", path, len, hb);
    } else if (get_u32(b + 12) != (v2 ? 2u : 1u)) {
        d3_errf(err, "%s: pair format %u under magic %.8s, this d3po reads formats 1 and 2", path,
                get_u32(b + 12), (const char *)b);
    } else if ((dtype = get_u32(b + 40)) != 0) {
        d3_errf(err, "%s: dtype %u, expected 0 (float32)", path, dtype);
    } else if ((K = get_u32(b + 16)) < 1 || K > TRAJ_MAX_K) {
        d3_errf(err, "%s: K = %u steps, expected 1..%d", path, K, TRAJ_MAX_K);
    } else if (v2 && ((N = get_u32(b + 20)) < 1 || N > SESSION_MAX_N)) {
        d3_errf(err, "%s: %u trajectories, expected 1..%d", path, N, SESSION_MAX_N);
    } else if (v2 && ((C = get_u32(b + 52)) < 1 || C > 64 || (H = get_u32(b + 56)) < 1 ||
                      H > TRAJ_MAX_S || (W = get_u32(b + 60)) < 1 || W > TRAJ_MAX_S)) {
        d3_errf(err, "%s: trajectory shape %ux%ux%u out of range", path, get_u32(b + 52),
                get_u32(b + 56), get_u32(b + 60));
    } else if (!v2 && ((H = W = get_u32(b + 20)) < 1 || H > TRAJ_MAX_S)) {
        d3_errf(err, "%s: image side %u, expected 1..%d", path, H, TRAJ_MAX_S);
    } else if (v2 && (fam = get_u32(b + 64)) != SESSION_FAMILY_PIXEL && fam != SESSION_FAMILY_SD) {
        d3_errf(err, "%s: model family %u, expected 0 (pixel) or 1 (sd)", path, fam);
    } else if (v2 && (P = get_u32(b + 68)) > hb - SESSION_TRAJ_HEADER2) {
        d3_errf(err, "%s: prompt of %u bytes does not fit the %u-byte header", path, P, hb);
    } else if (v2 && memchr(b + SESSION_TRAJ_HEADER2, 0, P)) {
        d3_errf(err, "%s: NUL byte in the prompt", path);
    } else {
        /* K <= 1e5, N <= 16, C <= 64 and sides <= 8192 keep this below 2^60 */
        uint64_t D = (uint64_t)C * H * W, per = (K + 1ull) * D, nf = N * per + (uint64_t)N * K;
        uint64_t want = hb + 4 * nf;
        uint32_t cls = get_u32(b + 24);
        if (len != want) {
            d3_errf(err, "%s: %zu bytes, but %u trajectories of K=%u steps of %ux%ux%u need %llu%s",
                    path, len, N, K, C, H, W, (unsigned long long)want,
                    len < want ? " (truncated)" : "");
        } else if (traj_finite(path, (float *)(b + hb), nf, per, (int)N, err)) {
        } else if ((cls > INT32_MAX && !(v2 && cls == UINT32_MAX)) || get_u32(b + 28) > INT32_MAX) {
            d3_errf(err, "%s: class or model version out of range", path);
        } else if (fam == SESSION_FAMILY_PIXEL && (C != 3 || H != W || cls > INT32_MAX)) {
            d3_errf(err, "%s: a pixel trajectory needs 3 channels, a square side and a class", path);
        } else {
            float *f = (float *)(b + hb); /* malloc'd + a multiple of 8: aligned */
            t->N = (int)N;
            t->K = (int)K;
            t->C = (int)C;
            t->h = (int)H;
            t->w = (int)W;
            t->family = (int)fam;
            t->cls = (int)cls;
            t->version = (int)get_u32(b + 28);
            t->seed = get_u64(b + 32);
            t->cfg = bits_f32(get_u32(b + 44));
            t->eta = bits_f32(get_u32(b + 48));
            for (uint32_t i = 0; i < N; i++) {
                t->traj[i] = f + i * per;
                t->logp[i] = f + N * per + (uint64_t)i * K;
            }
            /* the prompt, NUL-terminated, in its own block */
            if (v2 && P) {
                char *pr = malloc(P + 1);
                if (!pr) {
                    d3_errf(err, "%s: out of memory", path);
                } else {
                    memcpy(pr, b + SESSION_TRAJ_HEADER2, P);
                    pr[P] = 0;
                    t->prompt_buf = pr;
                    t->prompt = pr;
                    rc = 0;
                }
            } else {
                rc = 0;
            }
            t->buf = b;
        }
    }
    if (rc) {
        free(b);
        free(t->prompt_buf);
        memset(t, 0, sizeof *t);
    }
    return rc;
}

void session_traj_free(session_traj *t) {
    free(t->buf);
    free(t->prompt_buf);
    memset(t, 0, sizeof *t);
}

int session_read_traj(const char *path, session_pair *p, char *err) {
    memset(p, 0, sizeof *p);
    session_traj t;
    if (session_read_traj_n(path, &t, err)) return -1;
    if (t.N != 2) {
        int n = t.N;
        session_traj_free(&t);
        return d3_errf(err, "%s: %d trajectories, a pair file holds 2", path, n);
    }
    *p = (session_pair){.K = t.K, .S = t.h, .C = t.C, .h = t.h, .w = t.w, .family = t.family,
                        .cls = t.cls, .version = t.version, .seed = t.seed, .cfg = t.cfg,
                        .eta = t.eta, .prompt = t.prompt_buf, .traj = {t.traj[0], t.traj[1]},
                        .logp = {t.logp[0], t.logp[1]}, .buf = t.buf};
    return 0;
}

int session_load_pair(const d3_session *s, long id, session_pair *p, char *err) {
    char path[PATH_LEN];
    memset(p, 0, sizeof *p);
    session_pair_path(s, id, "traj", path, sizeof path);
    if (id < 0 || id >= s->cap || !s->present[id])
        return d3_errf(err, "%s: no such pair in the session", path);
    if (session_read_traj(path, p, err)) return -1;
    if (s->family == SESSION_FAMILY_PIXEL &&
        (p->family != SESSION_FAMILY_PIXEL || p->S != s->arch.size || p->cls >= s->nclasses)) {
        d3_errf(err, "%s: %s, side %d, class %d; the session's model is pixel with side %d and %d classes",
                path, session_family_name(p->family), p->S, p->cls, s->arch.size, s->nclasses);
        session_pair_free(p);
        return -1;
    }
    if (s->family != SESSION_FAMILY_PIXEL &&
        (p->family != s->family || p->C != s->lat_c || p->h != s->lat_h || p->w != s->lat_w)) {
        d3_errf(err, "%s: %s %dx%dx%d; the session's model is %s %dx%dx%d", path,
                session_family_name(p->family), p->C, p->h, p->w, session_family_name(s->family),
                s->lat_c, s->lat_h, s->lat_w);
        session_pair_free(p);
        return -1;
    }
    return 0;
}

void session_pair_free(session_pair *p) {
    free(p->buf);
    free(p->prompt);
    memset(p, 0, sizeof *p);
}

/* ---- labels ---- */

/* Appends one complete line to the journal and fsyncs it. On failure the
 * journal is cut back to its last complete line (best effort). */
static int journal_append(d3_session *s, const char *line, size_t len, char *err) {
    char p[PATH_LEN];
    snprintf(p, sizeof p, "%s/labels.jsonl", s->dir);
    if (fs_journal_append(s->journal_fd, p, &s->journal_len, &s->journal_torn, line, len, err)) return -1;
    s->lines++;
    return 0;
}

static int journal_record(d3_session *s, long pair, const char *choice, int version, char *err) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[160];
    int n = snprintf(line, sizeof line,
                     "{\"pair\":%ld,\"choice\":\"%s\",\"time\":%lld.%03ld,\"version\":%d}\n",
                     pair, choice, (long long)ts.tv_sec, ts.tv_nsec / 1000000, version);
    return journal_append(s, line, (size_t)n, err);
}

int session_label(d3_session *s, long id, int choice, int version, char *err) {
    if (check_writable(s, "label", err)) return -1;
    if (choice < 0 || choice >= SESSION_NCHOICES)
        return d3_errf(err, "%s: label: bad choice %d", s->dir, choice);
    if (id < 0 || id >= s->cap || !s->present[id])
        return d3_errf(err, "%s: label: no pair %ld in the session", s->dir, id);
    if (version < 0) return d3_errf(err, "%s: label: negative model version", s->dir);
    if (reserve_decision(s)) return d3_errf(err, "%s: label: out of memory", s->dir);
    if (journal_record(s, id, choice_names[choice], version, err)) return -1;
    push_decision(s, id, choice);
    return 0;
}

int session_undo(d3_session *s, long *id, char *err) {
    if (check_writable(s, "undo", err)) return -1;
    if (!s->nstack) return d3_errf(err, "%s/labels.jsonl: nothing to undo", s->dir);
    long pair = s->stack[s->nstack - 1].pair;
    if (journal_record(s, pair, "undo", s->version, err)) return -1;
    pop_decision(s);
    if (id) *id = pair;
    return 0;
}

int session_choice_of(const d3_session *s, long id) {
    return id >= 0 && id < s->cap ? s->choice[id] : SESSION_NONE;
}

long session_next_unlabeled(const d3_session *s, long from) {
    for (long i = from < 0 ? 0 : from; i < s->cap; i++)
        if (s->present[i] && s->choice[i] == SESSION_NONE) return i;
    return -1;
}

/* ---- rounds ---- */

int session_save_round(d3_session *s, const d3_model *policy, const d3_state *st, int round,
                       char *err) {
    if (check_writable(s, "save round", err)) return -1;
    char p[PATH_LEN], a[256], b[256];
    if (round <= s->round || round > SESSION_MAX_ROUND)
        return d3_errf(err, "%s: round %d: expected %d..%d", s->dir, round, s->round + 1,
                       SESSION_MAX_ROUND);
    unet_arch_format(&policy->L.arch, a, sizeof a);
    unet_arch_format(&s->arch, b, sizeof b);
    if (strcmp(a, b) || policy->nclasses != s->nclasses)
        return d3_errf(err, "%s: round %d: policy is %s, %d classes; the session's: %s, %d",
                       s->dir, round, a, policy->nclasses, b, s->nclasses);
    session_round_path(s, round, p, sizeof p);
    if (model_save(policy, p, st, err)) return -1;
    return session_set_latest(s, round, err);
}

int session_set_latest(d3_session *s, int round, char *err) {
    char p[PATH_LEN], line[64];
    if (check_writable(s, "LATEST", err)) return -1;
    snprintf(line, sizeof line, "round %d version %d\n", round, round);
    if (pathf(p, err, "%s/LATEST", s->dir) || write_small(p, line, err)) return -1;
    s->round = s->version = round;
    return 0;
}

void session_info(const d3_session *s, session_stats *in) {
    memset(in, 0, sizeof *in);
    for (long i = 0; i < s->cap; i++) {
        if (!s->present[i]) continue;
        in->pairs++;
        if (s->choice[i] == SESSION_NONE) {
            in->unlabeled++;
        } else {
            in->labeled++;
            in->by_choice[(int)s->choice[i]]++;
            if (session_label_trained(s, i)) in->trained++;
            else if (session_label_pending(s, i)) in->untrained++;
        }
    }
    in->undone = s->undone;
    in->journal_lines = s->lines;
    in->round = s->round;
    in->version = s->version;
}

#ifndef D3PO_DATADIR
#define D3PO_DATADIR "/usr/local/share/d3po"
#endif

const char *session_default_model(void) {
    static const char *cands[] = {"models/default.safetensors", D3PO_DATADIR "/default.safetensors"};
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++)
        if (access(cands[i], R_OK) == 0) return cands[i];
    return NULL;
}

int session_ensure(const char *dir, const char **model, const char *settings_json, char *err) {
    char p[PATH_LEN];
    struct stat st;
    if (pathf(p, err, "%s/session.json", dir)) return -1;
    if (stat(p, &st) == 0) return 0;
    if (!*model) *model = session_default_model();
    if (!*model) {
        d3_errf(err, "no model to start %s from: give --model FILE", dir);
        return -2;
    }
    snprintf(p, sizeof p, "%s", dir);
    char *slash = strrchr(p, '/');
    if (slash && slash != p) {
        *slash = 0;
        if (fs_mkdirs(p, err)) return -1;
    }
    return session_create(dir, *model, settings_json, err) ? -1 : 1;
}
