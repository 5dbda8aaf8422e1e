/* test_session.c - the on-disk session store (src/session.h): create/open
 * round trip, pair files read back bit-exact, journal replay (undo, changed
 * choices), a torn last line tolerated and reported, a malformed middle
 * line named by file:line, the flock against a second opener, LATEST
 * falling back past a truncated checkpoint, truncated pair files named,
 * and kill -9 while labeling losing no acknowledged label.
 *
 * With `--make DIR` it instead writes a small session (3 pairs, a few
 * labels, one trained round) for tests/test_session.sh. Models are tiny
 * (base=8, size 8, 3 classes) so the suite stays cheap. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "image.h"
#include "model.h"
#include "session.h"
#include "t.h"

#define ARCH "base=8,mult=1.2,res=1,attn=none,size=8,classes=3"
#define TK 3             /* steps */
#define TS 8             /* image side */
#define TD (3 * TS * TS) /* floats per image */

static char root[256]; /* temp dir of this run */
static char model_path[512];

static void sh(const char *fmt, const char *arg) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, fmt, arg);
    if (system(cmd) != 0) fprintf(stderr, "  (command failed: %s)\n", cmd);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

/* A fresh session directory path under root. */
static const char *new_dir(const char *name) {
    static char d[8][512];
    static int next;
    char *p = d[next++ % 8];
    snprintf(p, sizeof d[0], "%s/%s", root, name);
    return p;
}

/* Fills a pair with values from seed (not a real sample: the store does
 * not care) and its two images. */
static float pair_data[2 * (TK + 1) * TD + 2 * TK];
static uint8_t rgb[2][TS * TS * 3];
static session_pair make_pair(uint64_t seed, int cls) {
    d3_rng r;
    rng_init(&r, seed, 0);
    rng_normal(&r, pair_data, sizeof pair_data / sizeof pair_data[0]);
    session_pair p = {.K = TK,
                      .S = TS,
                      .cls = cls,
                      .version = 0,
                      .seed = seed * 0x9E3779B97F4A7C15ull,
                      .cfg = 5.0f,
                      .eta = 1.0f};
    p.traj[0] = pair_data;
    p.traj[1] = pair_data + (TK + 1) * TD;
    p.logp[0] = pair_data + 2 * (TK + 1) * TD;
    p.logp[1] = p.logp[0] + TK;
    image_to_rgb(rgb[0], p.traj[0] + TK * TD, TS, TS);
    image_to_rgb(rgb[1], p.traj[1] + TK * TD, TS, TS);
    return p;
}

/* Creates a session at dir with n pairs; leaves it open in *s. */
static int make_session(const char *dir, int n, d3_session *s) {
    char err[D3_ERRLEN];
    if (session_create(dir, model_path, "{\"prompt\":\"cat\",\"beta\":0.1}", err) ||
        session_open(dir, s, err)) {
        fprintf(stderr, "  %s\n", err);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        session_pair p = make_pair(100 + i, i % 3);
        long id;
        if (session_add_pair(s, &p, rgb[0], rgb[1], &id, err)) {
            fprintf(stderr, "  %s\n", err);
            return -1;
        }
    }
    return 0;
}

static void test_create_open(void) {
    char err[D3_ERRLEN] = "", p[1024];
    const char *dir = new_dir("create");
    d3_session s;
    CHECK(session_create(dir, model_path, "{\"prompt\":\"cat\"}", err) == 0, "%s", err);
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(s.round == 0 && s.version == 0, "round %d version %d", s.round, s.version);
    CHECK(s.npairs == 0 && s.next_pair == 0 && s.nwarn == 0, "npairs %ld nwarn %d", s.npairs,
          s.nwarn);
    CHECK(s.arch.size == TS && s.nclasses == 3, "size %d classes %d", s.arch.size, s.nclasses);
    CHECK(strstr(s.settings, "\"prompt\":\"cat\"") && strstr(s.settings, "\"format\":1"), "%s",
          s.settings);
    d3_model m;
    d3_state st;
    CHECK(session_load_policy(&s, &m, &st, err) == 0, "%s", err);
    CHECK(m.L.arch.size == TS && !st.has_opt, "policy");
    model_free(&m);
    state_free(&st);
    CHECK(session_load_policy(&s, &m, NULL, err) == 0, "second load: %s", err); /* from disk */
    model_free(&m);
    session_close(&s);
    snprintf(p, sizeof p, "%s/LATEST", dir);
    unsigned char *buf;
    size_t len;
    CHECK(fs_read_all(p, &buf, &len, err) == 0 && !strcmp((char *)buf, "round 0 version 0\n"),
          "LATEST");
    free(buf);
    snprintf(p, sizeof p, "%s/rounds/0000.safetensors", dir);
    CHECK(file_size(p) > 0, "round 0 checkpoint");
    /* refusals */
    CHECK(session_create(dir, model_path, NULL, err) == -1 && strstr(err, "already a d3po session"),
          "%s", err);
    const char *other = new_dir("notsession");
    mkdir(other, 0777);
    snprintf(p, sizeof p, "%s/x", other);
    write_text(p, "x");
    CHECK(session_create(other, model_path, NULL, err) == -1 && strstr(err, "not empty"), "%s",
          err);
    CHECK(session_open(other, &s, err) == -1 && strstr(err, "not a d3po session"), "%s", err);
    CHECK(session_create(new_dir("badsettings"), model_path, "[1]", err) == -1 &&
              strstr(err, "JSON object"),
          "%s", err);
    CHECK(session_create(new_dir("badmodel"), p, NULL, err) == -1 && strstr(err, p), "%s", err);
    /* an empty existing directory is fine; so is a trailing slash */
    const char *empty = new_dir("empty/");
    mkdir(empty, 0777);
    CHECK(session_create(empty, model_path, NULL, err) == 0, "%s", err);
    CHECK(session_open(empty, &s, err) == 0, "%s", err);
    session_close(&s);
}

static void test_pair_roundtrip(void) {
    char err[D3_ERRLEN] = "", p[1024];
    const char *dir = new_dir("pairs");
    d3_session s;
    if (make_session(dir, 0, &s)) {
        CHECK(0, "make_session");
        return;
    }
    session_pair a = make_pair(7, 2);
    a.cfg = 3.25f;
    a.eta = 0.5f;
    a.version = 4;
    long id = -1;
    CHECK(session_add_pair(&s, &a, rgb[0], rgb[1], &id, err) == 0 && id == 0, "%s", err);
    snprintf(p, sizeof p, "%s/pairs/000000-a.png", dir);
    uint8_t *back;
    int w, h;
    CHECK(png_read_rgb(p, &back, &w, &h, err) == 0 && w == TS && h == TS &&
              !memcmp(back, rgb[0], sizeof rgb[0]),
          "png a: %s", err);
    free(back);
    session_close(&s);
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(s.npairs == 1 && s.next_pair == 1, "npairs %ld next %ld", s.npairs, s.next_pair);
    session_pair b;
    CHECK(session_load_pair(&s, 0, &b, err) == 0, "%s", err);
    CHECK(b.K == TK && b.S == TS && b.cls == 2 && b.version == 4 && b.seed == a.seed &&
              b.cfg == 3.25f && b.eta == 0.5f,
          "header fields");
    if (b.buf)
        CHECK(!memcmp(b.traj[0], a.traj[0], sizeof(float) * (TK + 1) * TD) &&
                  !memcmp(b.traj[1], a.traj[1], sizeof(float) * (TK + 1) * TD) &&
                  !memcmp(b.logp[0], a.logp[0], sizeof(float) * TK) &&
                  !memcmp(b.logp[1], a.logp[1], sizeof(float) * TK),
              "data bit-exact");
    session_pair_free(&b);
    CHECK(session_load_pair(&s, 1, &b, err) == -1 && strstr(err, "000001.traj"), "%s", err);
    a.S = 16;
    CHECK(session_add_pair(&s, &a, NULL, NULL, &id, err) == -1 && strstr(err, "side 16"), "%s",
          err);
    session_close(&s);
}

static void test_bad_traj(void) {
    char err[D3_ERRLEN] = "", p[1024];
    const char *dir = new_dir("badtraj");
    d3_session s;
    if (make_session(dir, 3, &s)) {
        CHECK(0, "make_session");
        return;
    }
    snprintf(p, sizeof p, "%s/pairs/000001.traj", dir);
    long full = file_size(p);
    CHECK(truncate(p, full - 10) == 0, "truncate");
    session_pair b;
    CHECK(session_load_pair(&s, 1, &b, err) == -1 && strstr(err, p) && strstr(err, "truncated"),
          "%s", err);
    printf("    truncated: %s\n", err);
    CHECK(truncate(p, 30) == 0, "truncate");
    CHECK(session_load_pair(&s, 1, &b, err) == -1 && strstr(err, p), "%s", err);
    snprintf(p, sizeof p, "%s/pairs/000002.traj", dir);
    int fd = open(p, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, "X", 1, 0) == 1, "corrupt magic");
    close(fd);
    CHECK(session_load_pair(&s, 2, &b, err) == -1 && strstr(err, p) && strstr(err, "magic"), "%s",
          err);
    fd = open(p, O_WRONLY);
    uint8_t dt[4] = {1, 0, 0, 0};
    CHECK(pwrite(fd, "D", 1, 0) == 1 && pwrite(fd, dt, 4, 40) == 4, "dtype");
    close(fd);
    CHECK(session_load_pair(&s, 2, &b, err) == -1 && strstr(err, "dtype 1"), "%s", err);
    CHECK(session_load_pair(&s, 0, &b, err) == 0, "intact pair: %s", err);
    session_pair_free(&b);
    session_close(&s);
}

/* A pair file of format 1 (sessions from before format 2), written byte by
 * byte as session.h documents it, still loads with its class and data. */
static void test_format1(void) {
    char err[D3_ERRLEN] = "", p[1024];
    const char *dir = new_dir("format1");
    d3_session s;
    if (make_session(dir, 1, &s)) {
        CHECK(0, "make_session");
        return;
    }
    session_pair a = make_pair(7, 2);
    uint8_t h[64] = {0};
    uint32_t u[5] = {64, 1, TK, TS, 2};
    memcpy(h, "D3POTRJ1", 8);
    memcpy(h + 8, u, sizeof u);
    uint32_t ver = 0;
    float ce[2] = {5.0f, 1.0f};
    memcpy(h + 28, &ver, 4);
    memcpy(h + 32, &a.seed, 8);
    memcpy(h + 44, ce, 8);
    snprintf(p, sizeof p, "%s/pairs/000000.traj", dir);
    const void *parts[2] = {h, pair_data};
    size_t lens[2] = {64, sizeof pair_data};
    CHECK(fs_write_atomic(p, parts, lens, 2, err) == 0, "%s", err);
    session_pair b;
    CHECK(session_load_pair(&s, 0, &b, err) == 0, "format 1 loads: %s", err);
    if (b.buf) {
        CHECK(b.cls == 2 && b.K == TK && b.S == TS && b.C == 3 && b.h == TS && b.w == TS &&
                  b.family == SESSION_FAMILY_PIXEL && !b.prompt && b.seed == a.seed,
              "format 1 header: cls %d K %d S %d C %d family %d", b.cls, b.K, b.S, b.C, b.family);
        CHECK(!memcmp(b.traj[0], a.traj[0], sizeof(float) * (TK + 1) * TD) &&
                  !memcmp(b.traj[1], a.traj[1], sizeof(float) * (TK + 1) * TD) &&
                  !memcmp(b.logp[1], a.logp[1], sizeof(float) * TK),
              "format 1 data bit-exact");
        session_pair_free(&b);
    }
    CHECK(session_pair_class(&s, 0) == 2, "session_pair_class on format 1");
    session_close(&s);
}

/* session_write_traj / session_read_traj_n with N = 4 latent trajectories
 * and a UTF-8 prompt round trip bit-exact; pairs are written as format 2
 * with the class name as the prompt; bad headers are named. */
static void test_format2_n(void) {
    char err[D3_ERRLEN] = "", p[1024];
    enum { N = 4, K = 2, C = 4, H = 3, W = 5, D = C * H * W };
    static float data[N * (K + 1) * D + N * K];
    d3_rng r;
    rng_init(&r, 9, 0);
    rng_normal(&r, data, sizeof data / sizeof data[0]);
    const char *prompt = "a caf\xc3\xa9 at night \xf0\x9f\x8c\x99, \"quoted\"";
    session_traj t = {.N = N, .K = K, .C = C, .h = H, .w = W, .family = SESSION_FAMILY_SD,
                      .cls = -1, .version = 3, .seed = 0xABCDEF0123456789ull, .cfg = 7.5f,
                      .eta = 1.0f, .prompt = prompt};
    for (int i = 0; i < N; i++) {
        t.traj[i] = data + i * (K + 1) * D;
        t.logp[i] = data + N * (K + 1) * D + i * K;
    }
    snprintf(p, sizeof p, "%s/group.traj", root);
    CHECK(session_write_traj(p, &t, err) == 0, "%s", err);
    long sz = file_size(p);
    long hb = (72 + (long)strlen(prompt) + 7) / 8 * 8;
    CHECK(sz == hb + (long)sizeof data, "size %ld, expected %ld", sz, hb + (long)sizeof data);
    session_traj u;
    CHECK(session_read_traj_n(p, &u, err) == 0, "%s", err);
    if (u.buf) {
        CHECK(u.N == N && u.K == K && u.C == C && u.h == H && u.w == W &&
                  u.family == SESSION_FAMILY_SD && u.cls == -1 && u.version == 3 &&
                  u.seed == t.seed && u.cfg == 7.5f && u.eta == 1.0f && u.prompt &&
                  !strcmp(u.prompt, prompt),
              "header round trip");
        int same = 1;
        for (int i = 0; i < N; i++)
            same &= !memcmp(u.traj[i], t.traj[i], sizeof(float) * (K + 1) * D) &&
                    !memcmp(u.logp[i], t.logp[i], sizeof(float) * K);
        CHECK(same, "data bit-exact");
        session_traj_free(&u);
    }
    session_pair sp;
    CHECK(session_read_traj(p, &sp, err) == -1 && strstr(err, "4 trajectories"), "%s", err);
    /* damage: family, N, the prompt length, a NaN */
    int fd = open(p, O_WRONLY);
    uint32_t bad = 7;
    CHECK(fd >= 0 && pwrite(fd, &bad, 4, 64) == 4, "write");
    CHECK(session_read_traj_n(p, &u, err) == -1 && strstr(err, p) && strstr(err, "family 7"), "%s", err);
    bad = 1;
    CHECK(pwrite(fd, &bad, 4, 64) == 4 && pwrite(fd, (uint32_t[]){0}, 4, 20) == 4, "write");
    CHECK(session_read_traj_n(p, &u, err) == -1 && strstr(err, "0 trajectories"), "%s", err);
    CHECK(pwrite(fd, (uint32_t[]){N}, 4, 20) == 4 && pwrite(fd, (uint32_t[]){4000}, 4, 68) == 4, "write");
    CHECK(session_read_traj_n(p, &u, err) == -1 && strstr(err, "prompt of 4000 bytes"), "%s", err);
    uint32_t pl = (uint32_t)strlen(prompt);
    float nan = NAN;
    CHECK(pwrite(fd, &pl, 4, 68) == 4 && pwrite(fd, &nan, 4, hb + 4 * ((K + 1) * D + 1)) == 4, "write");
    CHECK(session_read_traj_n(p, &u, err) == -1 && strstr(err, "trajectory 1 holds a non-finite"),
          "%s", err);
    close(fd);
    t.N = 0;
    CHECK(session_write_traj(p, &t, err) == -1 && strstr(err, "0 trajectories"), "%s", err);
    /* a session's pixel pair: format 2, the class name as the prompt */
    const char *dir = new_dir("format2");
    d3_session s;
    if (make_session(dir, 0, &s)) {
        CHECK(0, "make_session");
        return;
    }
    session_pair a = make_pair(5, 1);
    a.prompt = "dog";
    long id;
    CHECK(session_add_pair(&s, &a, NULL, NULL, &id, err) == 0, "%s", err);
    session_pair b;
    CHECK(session_load_pair(&s, id, &b, err) == 0, "%s", err);
    if (b.buf) {
        CHECK(b.cls == 1 && b.prompt && !strcmp(b.prompt, "dog") && b.family == SESSION_FAMILY_PIXEL,
              "pixel pair in format 2");
        session_pair_free(&b);
    }
    session_pair_path(&s, id, "traj", p, sizeof p);
    FILE *f = fopen(p, "rb");
    char magic[9] = {0};
    CHECK(f && fread(magic, 1, 8, f) == 8 && !strcmp(magic, "D3POTRJ2"), "written as format 2");
    if (f) fclose(f);
    a.family = SESSION_FAMILY_SD;
    CHECK(session_add_pair(&s, &a, NULL, NULL, &id, err) == -1 && strstr(err, "sd"), "%s", err);
    session_close(&s);
}

static void test_journal_replay(void) {
    char err[D3_ERRLEN] = "";
    const char *dir = new_dir("journal");
    d3_session s;
    if (make_session(dir, 3, &s)) {
        CHECK(0, "make_session");
        return;
    }
    long u = -1;
    CHECK(session_undo(&s, &u, err) == -1 && strstr(err, "nothing to undo"), "%s", err);
    CHECK(session_label(&s, 0, SESSION_A, 0, err) == 0, "%s", err);
    CHECK(session_label(&s, 1, SESSION_B, 0, err) == 0, "%s", err);
    CHECK(session_label(&s, 0, SESSION_TIE, 0, err) == 0, "%s", err); /* changed choice */
    CHECK(session_label(&s, 2, SESSION_SKIP, 0, err) == 0, "%s", err);
    CHECK(session_undo(&s, &u, err) == 0 && u == 2, "undo -> %ld %s", u, err);
    CHECK(session_label(&s, 7, SESSION_A, 0, err) == -1 && strstr(err, "no pair 7"), "%s", err);
    CHECK(session_choice_of(&s, 0) == SESSION_TIE && session_choice_of(&s, 2) == SESSION_NONE,
          "mem");
    CHECK(session_next_unlabeled(&s, 0) == 2, "next unlabeled %ld", session_next_unlabeled(&s, 0));
    session_close(&s);

    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(s.lines == 5 && s.nwarn == 0, "lines %ld nwarn %d", s.lines, s.nwarn);
    CHECK(session_choice_of(&s, 0) == SESSION_TIE && session_choice_of(&s, 1) == SESSION_B &&
              session_choice_of(&s, 2) == SESSION_NONE,
          "replayed %d %d %d", session_choice_of(&s, 0), session_choice_of(&s, 1),
          session_choice_of(&s, 2));
    /* the undo stack survives the reopen: the next undo takes back the tie */
    CHECK(session_undo(&s, &u, err) == 0 && u == 0 && session_choice_of(&s, 0) == SESSION_A,
          "undo after reopen -> %ld, choice %d", u, session_choice_of(&s, 0));
    session_stats in;
    session_info(&s, &in);
    CHECK(in.pairs == 3 && in.labeled == 2 && in.unlabeled == 1 && in.by_choice[SESSION_A] == 1 &&
              in.by_choice[SESSION_B] == 1 && in.undone == 2 && in.journal_lines == 6,
          "stats pairs %ld labeled %ld A %ld B %ld undone %ld lines %ld", in.pairs, in.labeled,
          in.by_choice[0], in.by_choice[1], in.undone, in.journal_lines);
    session_close(&s);
    CHECK(session_open(dir, &s, err) == 0 && session_choice_of(&s, 0) == SESSION_A, "%s", err);
    session_close(&s);
}

static void test_torn_and_malformed(void) {
    char err[D3_ERRLEN] = "", p[1024];
    const char *dir = new_dir("torn");
    d3_session s;
    if (make_session(dir, 3, &s)) {
        CHECK(0, "make_session");
        return;
    }
    session_label(&s, 0, SESSION_A, 0, err);
    session_label(&s, 1, SESSION_B, 0, err);
    long before = (long)s.journal_len;
    session_label(&s, 2, SESSION_TIE, 0, err);
    long after = (long)s.journal_len;
    session_close(&s);
    snprintf(p, sizeof p, "%s/labels.jsonl", dir);
    CHECK(truncate(p, (before + after) / 2) == 0, "truncate mid-line");
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(s.nwarn == 1 && strstr(s.warn[0], "labels.jsonl:3: torn last line"), "warn: %s",
          s.nwarn ? s.warn[0] : "(none)");
    if (s.nwarn) printf("    %s\n", s.warn[0]);
    CHECK(session_choice_of(&s, 0) == SESSION_A && session_choice_of(&s, 1) == SESSION_B &&
              session_choice_of(&s, 2) == SESSION_NONE,
          "earlier labels intact");
    /* the next label cuts the torn tail off first */
    CHECK(session_label(&s, 2, SESSION_SKIP, 0, err) == 0, "%s", err);
    session_close(&s);
    CHECK(session_open(dir, &s, err) == 0 && s.nwarn == 0 && s.lines == 3 &&
              session_choice_of(&s, 2) == SESSION_SKIP,
          "after repair: %s nwarn %d", err, s.nwarn);
    session_close(&s);

    /* a malformed line anywhere but last is skipped with a warning naming
     * file:line; the lines around it count and the session works */
    const char *good = "{\"pair\":0,\"choice\":\"A\",\"time\":1.5,\"version\":0}\n";
    const char *good2 = "{\"pair\":1,\"choice\":\"B\",\"time\":1.5,\"version\":0}\n";
    static const char *const bad[] = {
        "{\"pair\":0,\"choice\":\"A\",\"time\":1.5\n",                  /* not JSON */
        "{\"pair\":1,\"choice\":\"C\",\"time\":1.5,\"version\":0}\n",   /* choice */
        "{\"pair\":-1,\"choice\":\"A\",\"time\":1.5,\"version\":0}\n",  /* pair */
        "{\"pair\":9,\"choice\":\"A\",\"time\":1.5,\"version\":0}\n",   /* no such pair */
        "{\"pair\":1,\"choice\":\"A\",\"time\":\"x\",\"version\":0}\n", /* time */
        "[1,2]\n",
        "\x1b]0;pwned\x07\n", /* control characters: escaped in the warning */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512], want[1100];
        snprintf(text, sizeof text, "%s%s%s", good, bad[i], good2);
        write_text(p, text);
        snprintf(want, sizeof want, "%s:2: ", p);
        int rc = session_open(dir, &s, err);
        CHECK(rc == 0, "bad line %zu: %s", i, err);
        if (rc) continue;
        CHECK(s.nwarn == 1 && strstr(s.warn[0], want) && strstr(s.warn[0], "skipped") &&
                  !strchr(s.warn[0], 0x1b) && !strchr(s.warn[0], 0x07),
              "bad line %zu: warning '%s'", i, s.nwarn ? s.warn[0] : "(none)");
        CHECK(s.lines == 2 && session_choice_of(&s, 0) == SESSION_A &&
                  session_choice_of(&s, 1) == SESSION_B,
              "bad line %zu: lines %ld", i, s.lines);
        CHECK(session_label(&s, 2, SESSION_TIE, 0, err) == 0, "label after a bad line: %s", err);
        if (i == 0 || i + 1 == sizeof bad / sizeof bad[0]) printf("    malformed: %s\n", s.warn[0]);
        session_close(&s);
    }
}

static void test_lock(void) {
    char err[D3_ERRLEN] = "";
    const char *dir = new_dir("lock");
    d3_session s, r;
    if (make_session(dir, 1, &s)) {
        CHECK(0, "make_session");
        return;
    }
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        d3_session c;
        char e[D3_ERRLEN] = "";
        int rc = session_open(dir, &c, e);
        if (write(fds[1], e, strlen(e) + 1) < 0) _exit(3);
        _exit(rc == -1 ? 0 : 1);
    }
    close(fds[1]);
    char msg[D3_ERRLEN] = "", want[600];
    ssize_t n = read(fds[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = 0;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    snprintf(want, sizeof want, "%s is in use by another d3po (pid %ld)", dir, (long)getpid());
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "second open in a child succeeded");
    CHECK(strstr(msg, want), "child got '%s', wanted '%s'", msg, want);
    printf("    %s\n", msg);
    /* read-only opens need no lock and refuse to write */
    CHECK(session_open_readonly(dir, &r, err) == 0, "%s", err);
    CHECK(session_label(&r, 0, SESSION_A, 0, err) == -1 && strstr(err, "read-only"), "%s", err);
    session_close(&r);
    session_close(&s);
    CHECK(session_open(dir, &s, err) == 0, "reopen after close: %s", err);
    session_close(&s);
}

static void test_latest_fallback(void) {
    char err[D3_ERRLEN] = "", p[1024];
    const char *dir = new_dir("latest");
    d3_session s;
    if (make_session(dir, 1, &s)) {
        CHECK(0, "make_session");
        return;
    }
    d3_model m;
    d3_state st;
    CHECK(session_load_policy(&s, &m, &st, err) == 0, "%s", err);
    CHECK(adamw_init(&st.opt, m.L.numel) == 0, "adamw");
    st.has_opt = 1;
    st.opt.step = 5;
    rng_init(&st.rng, 42, 7);
    st.has_rng = 1;
    for (int r = 1; r <= 2; r++) {
        m.params[0] = (float)r;
        st.opt.step = 10 * r;
        CHECK(session_save_round(&s, &m, &st, r, err) == 0, "round %d: %s", r, err);
    }
    CHECK(s.round == 2 && s.version == 2, "round %d", s.round);
    CHECK(session_save_round(&s, &m, &st, 2, err) == -1, "same round twice");
    model_free(&m);
    state_free(&st);
    session_close(&s);

    CHECK(session_open(dir, &s, err) == 0 && s.round == 2 && s.nwarn == 0, "%s", err);
    CHECK(session_load_policy(&s, &m, &st, err) == 0 && m.params[0] == 2.0f && st.has_opt &&
              st.opt.step == 20 && st.has_rng && st.rng.seed == 42,
          "round 2 state: %s", err);
    model_free(&m);
    state_free(&st);
    session_close(&s);

    snprintf(p, sizeof p, "%s/rounds/0002.safetensors", dir);
    CHECK(truncate(p, file_size(p) / 2) == 0, "truncate checkpoint");
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(s.round == 1 && s.version == 1, "fell back to round %d", s.round);
    CHECK(s.nwarn == 1 && strstr(s.warn[0], "0002") && strstr(s.warn[0], "rounds/0001.safetensors"),
          "warn: %s", s.nwarn ? s.warn[0] : "(none)");
    if (s.nwarn) printf("    %s\n", s.warn[0]);
    CHECK(session_load_policy(&s, &m, NULL, err) == 0 && m.params[0] == 1.0f, "round 1 weights");
    model_free(&m);
    session_close(&s);

    /* LATEST missing / garbage: the newest loading round */
    snprintf(p, sizeof p, "%s/LATEST", dir);
    write_text(p, "garbage\n");
    CHECK(session_open(dir, &s, err) == 0 && s.round == 1 && s.nwarn == 1 &&
              strstr(s.warn[0], "round N version V"),
          "%s", s.nwarn ? s.warn[0] : err);
    session_close(&s);
    unlink(p);
    CHECK(session_open(dir, &s, err) == 0 && s.round == 1 && s.nwarn == 1, "%s", err);
    session_close(&s);
    /* nothing loads: an error */
    for (int r = 0; r <= 1; r++) {
        snprintf(p, sizeof p, "%s/rounds/%04d.safetensors", dir, r);
        write_text(p, "x");
    }
    CHECK(session_open(dir, &s, err) == -1 && strstr(err, "no other checkpoint"), "%s", err);
}

/* kill -9 while labeling: a child labels pair i % 3 with choice i % 4 in a
 * loop and reports each i on a pipe after session_label returned; the
 * parent kills it at a random moment. Every reported label must be in the
 * journal (at most one more, written but not yet reported). */
static void test_kill9(void) {
    char err[D3_ERRLEN] = "";
    const char *dir = new_dir("kill9");
    d3_session s;
    if (make_session(dir, 3, &s)) {
        CHECK(0, "make_session");
        return;
    }
    session_close(&s);
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    srand(seed);
    for (int trial = 0; trial < 3; trial++) {
        int fds[2];
        if (pipe(fds)) {
            CHECK(0, "pipe");
            return;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            d3_session c;
            char e[D3_ERRLEN];
            if (session_open(dir, &c, e)) _exit(2);
            for (long i = c.lines;; i++) {
                if (session_label(&c, i % 3, (int)(i % 4), 0, e)) _exit(3);
                if (write(fds[1], &i, sizeof i) != sizeof i) _exit(4);
            }
        }
        close(fds[1]);
        int want = 5 + rand() % 40; /* acknowledgements to wait for */
        long acked = -1, v;
        for (int n = 0; n < want && read(fds[0], &v, sizeof v) == sizeof v; n++) acked = v;
        usleep((useconds_t)(rand() % 3000));
        kill(pid, SIGKILL);
        while (read(fds[0], &v, sizeof v) == sizeof v) acked = v; /* reported before death */
        close(fds[0]);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child ended otherwise (%d)",
              status);
        CHECK(session_open(dir, &s, err) == 0, "%s", err);
        long L = s.lines;
        CHECK(L >= acked + 1 && L <= acked + 2, "seed %u: acknowledged up to %ld, journal has %ld",
              seed, acked, L);
        /* the effective choices are those of labels 0..L-1 */
        for (int pr = 0; pr < 3; pr++) {
            int want_c = SESSION_NONE;
            for (long i = 0; i < L; i++)
                if (i % 3 == pr) want_c = (int)(i % 4);
            CHECK(session_choice_of(&s, pr) == want_c, "pair %d: %d, wanted %d", pr,
                  session_choice_of(&s, pr), want_c);
        }
        printf("    trial %d: %ld acknowledged, %ld in the journal%s\n", trial, acked + 1, L,
               s.nwarn ? " (torn tail)" : "");
        session_close(&s);
    }
}

/* --make DIR: a small session for the shell test. */
static int make_for_shell(const char *dir) {
    d3_session s;
    char err[D3_ERRLEN];
    if (make_session(dir, 4, &s)) return 2;
    int rc = session_label(&s, 0, SESSION_A, 0, err) || session_label(&s, 1, SESSION_B, 0, err) ||
             session_label(&s, 2, SESSION_TIE, 0, err) ||
             session_label(&s, 3, SESSION_SKIP, 0, err) || session_undo(&s, NULL, err);
    d3_model m;
    if (!rc)
        rc = session_load_policy(&s, &m, NULL, err) || session_save_round(&s, &m, NULL, 1, err);
    if (!rc) model_free(&m);
    if (rc) fprintf(stderr, "%s\n", err);
    session_close(&s);
    return rc ? 2 : 0;
}

/* Writes n bytes of value v (a pattern) at off of path (created/extended). */
static void put_bytes(const char *path, long off, size_t n, int v) {
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    unsigned char buf[4096];
    memset(buf, v, sizeof buf);
    for (size_t k = 0; fd >= 0 && k < n; k += sizeof buf)
        if (pwrite(fd, buf, n - k < sizeof buf ? n - k : sizeof buf, off + (long)k) < 0) break;
    if (fd >= 0) close(fd);
}

/* session_model_hash (session.h): a folder's .json/.txt/.safetensors
 * files by relative path, size, first and last 128 KiB. Changes there
 * change it; other files, and bytes in the middle of a large file, do not
 * (the documented trade: milliseconds for gigabytes); a single file hashes
 * on its own. */
static void test_model_hash(void) {
    char err[D3_ERRLEN] = "", h0[SESSION_HASH_LEN], h[SESSION_HASH_LEN], p[1024], q[1024];
    const char *dir = new_dir("sdmodel");
    snprintf(p, sizeof p, "%s/unet", dir);
    CHECK(fs_mkdirs(p, err) == 0, "%s", err);
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    write_text(p, "{\"a\": 1}\n");
    snprintf(q, sizeof q, "%s/unet/w.safetensors", dir);
    put_bytes(q, 0, 600 * 1024, 7); /* 600 KiB: a middle beyond both 128 KiB ends */
    CHECK(session_model_hash(dir, h0, err) == 0, "%s", err);
    CHECK(!strncmp(h0, "fnv1a64:", 8) && strlen(h0) == 24, "'%s'", h0);
    CHECK(session_model_hash(dir, h, err) == 0 && !strcmp(h, h0), "not stable: %s %s", h, h0);
    put_bytes(q, 300 * 1024, 16, 9);
    CHECK(session_model_hash(dir, h, err) == 0 && !strcmp(h, h0), "middle bytes changed it");
    snprintf(p, sizeof p, "%s/README.md", dir);
    write_text(p, "other files do not count\n");
    CHECK(session_model_hash(dir, h, err) == 0 && !strcmp(h, h0), "a .md file changed it");
    put_bytes(q, 600 * 1024 - 3, 1, 1); /* the last 128 KiB */
    CHECK(session_model_hash(dir, h, err) == 0 && strcmp(h, h0), "tail edit not seen");
    char h1[SESSION_HASH_LEN];
    strcpy(h1, h);
    put_bytes(q, 600 * 1024, 1, 1); /* one byte longer */
    CHECK(session_model_hash(dir, h, err) == 0 && strcmp(h, h1), "size change not seen");
    strcpy(h1, h);
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    write_text(p, "{\"a\": 2}\n");
    CHECK(session_model_hash(dir, h, err) == 0 && strcmp(h, h1), "config edit not seen");
    strcpy(h1, h);
    snprintf(p, sizeof p, "%s/unet/vocab.txt", dir);
    write_text(p, "x\n");
    CHECK(session_model_hash(dir, h, err) == 0 && strcmp(h, h1), "a new .txt not seen");
    CHECK(session_model_hash(q, h, err) == 0 && strcmp(h, h1), "single file: %s", err);
    snprintf(p, sizeof p, "%s/none", dir);
    CHECK(session_model_hash(p, h, err) == -1 && strstr(err, "none"), "missing: '%s'", err);
}

int main(int argc, char **argv) {
    snprintf(root, sizeof root, "/tmp/d3po-test-session.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    d3_model m;
    const char *names[] = {"cat", "dog", "fish"};
    snprintf(model_path, sizeof model_path, "%s/tiny.safetensors", root);
    if (unet_arch_parse(&a, ARCH, err) || model_init(&m, &a, names, 1, err) ||
        model_save(&m, model_path, NULL, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    model_free(&m);
    int rc;
    if (argc == 3 && !strcmp(argv[1], "--make")) {
        rc = make_for_shell(argv[2]);
    } else {
        RUN(test_create_open);
        RUN(test_pair_roundtrip);
        RUN(test_bad_traj);
        RUN(test_format1);
        RUN(test_format2_n);
        RUN(test_journal_replay);
        RUN(test_torn_and_malformed);
        RUN(test_lock);
        RUN(test_latest_fallback);
        RUN(test_kill9);
        RUN(test_model_hash);
        rc = t_done();
    }
    sh("rm -rf '%s'", root);
    return rc;
}
