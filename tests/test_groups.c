/* test_groups.c - groups of k images on disk (src/groups.h): group files
 * read back bit-exact, the journal's round trip (marks, a changed
 * decision, skip, undo), the pairs a group's marks make (all good, all bad
 * and nothing marked make none), trained marks from rounds/NNNN.groups, a
 * torn tail ignored and cut off before the next append, a damaged middle
 * line named FILE:LINE in one line (a repair moving it to
 * groups.jsonl.bad with the marks unchanged), kill -9 while deciding losing no
 * acknowledged group, the engine sampling a group of k from one x_T
 * (trajectory i on noise stream 1 + i: the first two are the pair of the
 * same seed), the grid layout (ui/gridview.c) choosing the rows that make
 * the images largest, and a dead writer's temp file in groups/ cleaned.
 * The store tests use made-up trajectories: it does not care what they
 * are. */
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"
#include "fsutil.h"
#include "gridview.h"
#include "groups.h"
#include "rng.h"
#include "t.h"

#define TK 3
#define TS 4
#define TD (3 * TS * TS)

static char root[256];

static const char *new_dir(const char *name) {
    static char d[8][512];
    static int next;
    char *p = d[next++ % 8];
    snprintf(p, sizeof d[0], "%s/%s", root, name);
    char err[D3_ERRLEN];
    fs_mkdirs(p, err);
    return p;
}

static float data[GROUPS_MAX_K * ((TK + 1) * TD + TK)];
static uint8_t rgb[GROUPS_MAX_K][TS * TS * 3];

/* a group of k trajectories with values from seed */
static session_traj make_group(int k, uint64_t seed) {
    d3_rng r;
    rng_init(&r, seed, 0);
    rng_normal(&r, data, sizeof data / sizeof data[0]);
    session_traj t = {.N = k, .K = TK, .C = 3, .h = TS, .w = TS, .family = SESSION_FAMILY_PIXEL,
                      .cls = 1, .version = 2, .seed = seed, .cfg = 5.0f, .eta = 1.0f,
                      .prompt = "red apple"};
    for (int i = 0; i < k; i++) {
        t.traj[i] = data + i * (TK + 1) * TD;
        t.logp[i] = data + GROUPS_MAX_K * (TK + 1) * TD + i * TK;
        for (int j = 0; j < TS * TS * 3; j++) rgb[i][j] = (uint8_t)(i * 30 + j);
    }
    return t;
}

static long add_group(d3_groups *g, int k, uint64_t seed) {
    session_traj t = make_group(k, seed);
    const uint8_t *im[GROUPS_MAX_K];
    for (int i = 0; i < k; i++) im[i] = rgb[i];
    long id = -1;
    char err[D3_ERRLEN];
    int rc = groups_add(g, &t, im, TS, TS, &id, err);
    CHECK(rc == 0, "groups_add: %s", err);
    return id;
}

static void test_pairs_from_marks(void) {
    int p[GROUPS_MAX_PAIRS][2];
    int n = groups_pairs("gb-b", p);
    CHECK(n == 2 && p[0][0] == 0 && p[0][1] == 1 && p[1][0] == 0 && p[1][1] == 3,
          "gb-b: %d pairs (%d,%d) (%d,%d)", n, p[0][0], p[0][1], p[1][0], p[1][1]);
    n = groups_pairs("bgbg", p);
    CHECK(n == 4, "bgbg: %d pairs, expected 4", n);
    for (int i = 0; i < n; i++) CHECK(p[i][0] % 2 == 1 && p[i][1] % 2 == 0, "pair %d: good first", i);
    CHECK(groups_pairs("ggggg", p) == 0, "all good: no pairs");
    CHECK(groups_pairs("bbb", p) == 0, "all bad: no pairs");
    CHECK(groups_pairs("---", p) == 0, "nothing marked: no pairs");
    CHECK(groups_pairs("skip", p) == 0, "skip: no pairs");
    CHECK(groups_pairs("ggggbbbb", p) == 16, "4 good 4 bad: 16 pairs");
    CHECK(groups_pairs("gb", p) == 0, "two marks: not a group");
    CHECK(groups_pairs("gbx", p) == 0, "bad mark character");
}

static void test_files_round_trip(void) {
    const char *dir = new_dir("files");
    char err[D3_ERRLEN];
    d3_groups g;
    CHECK(groups_open(dir, 0, 0, &g, err) == 0, "open: %s", err);
    long a = add_group(&g, 4, 11), b = add_group(&g, 8, 12);
    CHECK(a == 0 && b == 1, "ids %ld %ld", a, b);
    groups_close(&g);
    CHECK(groups_open(dir, 0, 0, &g, err) == 0, "reopen: %s", err);
    CHECK(g.next == 2 && groups_next_undecided(&g, 0) == 0, "next %ld", g.next);
    session_traj t;
    CHECK(groups_load(&g, 1, &t, err) == 0, "load: %s", err);
    make_group(8, 12);
    int same = t.N == 8 && t.K == TK && t.cls == 1 && t.prompt && !strcmp(t.prompt, "red apple");
    for (int i = 0; same && i < 8; i++)
        same = !memcmp(t.traj[i], data + i * (TK + 1) * TD, (TK + 1) * TD * sizeof(float));
    CHECK(same, "group 1 read back bit-exact");
    session_traj_free(&t);
    char png[4300];
    struct stat st;
    CHECK(stat(groups_path(&g, 1, 7, png, sizeof png), &st) == 0, "%s written", png);
    CHECK(groups_load(&g, 5, &t, err) < 0 && strstr(err, "no group 5"), "missing group: %s", err);
    groups_close(&g);
    /* a temp file of a group write whose writer died is cleaned like the pairs' */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/groups/000002.traj.tmp.%d", dir, (int)dead);
    FILE *f = fopen(tmp, "w");
    if (f) fclose(f);
    char list[1024];
    int n = session_clean_temp(dir, 1, list, sizeof list);
    CHECK(n == 1 && access(tmp, F_OK) != 0, "stale groups/ temp file removed (%d): %s", n, list);
}

static void test_journal_round_trip(void) {
    const char *dir = new_dir("journal");
    char err[D3_ERRLEN];
    d3_groups g;
    groups_open(dir, 0, 0, &g, err);
    for (int i = 0; i < 4; i++) add_group(&g, 4, 20 + i);
    CHECK(groups_decide(&g, 0, "gbbg", 4, 0, err) == 0, "decide: %s", err);
    CHECK(groups_decide(&g, 1, "skip", 4, 0, err) == 0, "skip: %s", err);
    CHECK(groups_decide(&g, 2, "gggg", 4, 0, err) == 0, "all good: %s", err);
    CHECK(groups_decide(&g, 3, "gb-", 4, 0, err) < 0 && strstr(err, "group 3"),
          "3 marks for 4 images refused: %s", err);
    CHECK(groups_decide(&g, 3, "g-b-", 4, 0, err) == 0, "decide 3: %s", err);
    CHECK(groups_decide(&g, 0, "bggb", 4, 1, err) == 0, "change 0: %s", err);
    long id = -1;
    CHECK(groups_undo(&g, &id, err) == 0 && id == 0, "undo: group %ld", id);
    CHECK(!strcmp(groups_marks(&g, 0), "gbbg"), "undo gives the earlier marks back: %s",
          groups_marks(&g, 0));
    CHECK(groups_undo(&g, &id, err) == 0 && id == 3 && !groups_marks(&g, 3)[0], "undo 3");
    CHECK(groups_pending(&g, 0) && !groups_pending(&g, 1) && !groups_pending(&g, 2),
          "pending: only groups that make pairs");
    groups_stats st;
    groups_info(&g, &st);
    CHECK(st.groups == 4 && st.decided == 2 && st.skipped == 1 && st.undecided == 1 &&
              st.pairs == 4 && st.pairs_pending == 4 && st.undone == 2 && st.journal_lines == 7,
          "stats: %ld groups %ld decided %ld skipped %ld undecided %ld pairs %ld pending %ld undone "
          "%ld lines", st.groups, st.decided, st.skipped, st.undecided, st.pairs, st.pairs_pending,
          st.undone, st.journal_lines);
    /* a round trains on group 0 */
    long ids[1] = {0};
    CHECK(groups_write_round(&g, 1, ids, 1, err) == 0, "write round: %s", err);
    groups_close(&g);
    /* LATEST still at round 0: not trained */
    CHECK(groups_open(dir, 0, 0, &g, err) == 0, "reopen: %s", err);
    CHECK(!strcmp(groups_marks(&g, 0), "gbbg") && !strcmp(groups_marks(&g, 1), "skip") &&
              !strcmp(groups_marks(&g, 2), "gggg") && !groups_marks(&g, 3)[0],
          "replayed: %s %s %s %s", groups_marks(&g, 0), groups_marks(&g, 1), groups_marks(&g, 2),
          groups_marks(&g, 3));
    CHECK(g.nwarn == 0, "no warnings: %s", g.nwarn ? g.warn[0] : "");
    CHECK(groups_pending(&g, 0), "round 1 not saved yet: group 0 pending");
    groups_close(&g);
    CHECK(groups_open(dir, 1, 0, &g, err) == 0, "reopen at round 1: %s", err);
    CHECK(groups_trained(&g, 0) && !groups_pending(&g, 0), "round 1 saved: group 0 trained");
    CHECK(groups_decide(&g, 0, "gggb", 4, 1, err) == 0, "change: %s", err);
    CHECK(groups_pending(&g, 0) && !groups_trained(&g, 0), "changed after training: pending again");
    /* undo after a resume undoes the newest journaled decision */
    CHECK(groups_undo(&g, &id, err) == 0 && id == 0 && groups_trained(&g, 0), "undo after reopen");
    groups_close(&g);
}

typedef struct {
    int n;
    char first[D3_ERRLEN];
} problems;

static void report(void *ctx, const char *p) {
    problems *cx = ctx;
    if (!cx->n++) snprintf(cx->first, sizeof cx->first, "%s", p);
}

static void test_damaged_journal(void) {
    const char *dir = new_dir("damaged");
    char err[D3_ERRLEN], path[600];
    d3_groups g;
    groups_open(dir, 0, 0, &g, err);
    for (int i = 0; i < 3; i++) add_group(&g, 3, 30 + i);
    groups_decide(&g, 0, "gbb", 3, 0, err);
    groups_close(&g);
    snprintf(path, sizeof path, "%s/groups.jsonl", dir);
    FILE *f = fopen(path, "a");
    fputs("{\"group\":1,\"marks\":\"gxz\",\"time\":1,\"version\":0}\n", f); /* line 2: bad marks */
    fputs("{\"group\":2,\"marks\":\"bbg\",\"time\":1,\"version\":0}\n", f);
    fputs("{\"group\":2,\"marks\":\"g", f); /* torn */
    fclose(f);
    CHECK(groups_open(dir, 0, 0, &g, err) == 0, "open: %s", err);
    CHECK(g.nwarn == 2, "%d warnings", g.nwarn);
    CHECK(g.nwarn >= 1 && strstr(g.warn[0], "groups.jsonl:2: \"marks\"") && !strchr(g.warn[0], '\n'),
          "line 2 named in one line: %s", g.warn[0]);
    CHECK(g.nwarn >= 2 && strstr(g.warn[1], "groups.jsonl:4: torn last line"), "torn tail: %s",
          g.nwarn >= 2 ? g.warn[1] : "");
    CHECK(!strcmp(groups_marks(&g, 2), "bbg") && !groups_marks(&g, 1)[0], "good lines replayed");
    CHECK(groups_decide(&g, 1, "bgb", 3, 0, err) == 0, "append after a torn tail: %s", err);
    groups_close(&g);
    CHECK(groups_open(dir, 0, 0, &g, err) == 0 && g.nwarn == 1 && !strcmp(groups_marks(&g, 1), "bgb"),
          "torn tail cut off before the append: %d warnings", g.nwarn);
    groups_close(&g);
    problems cx = {0};
    int n = groups_check(dir, 0, report, &cx, err);
    CHECK(n == 1 && strstr(cx.first, "groups.jsonl:2:"), "check: %d problems: %s", n, cx.first);
    /* repair: the bad line moves to groups.jsonl.bad, the marks stay */
    problems cr = {0};
    n = groups_check(dir, 1, report, &cr, err);
    CHECK(n == 1, "repair: %d (%s)", n, err);
    CHECK(groups_check(dir, 0, report, &cr, err) == 0, "no problem after the repair");
    char badp[600];
    snprintf(badp, sizeof badp, "%s/groups.jsonl.bad", dir);
    unsigned char *bb;
    size_t bl;
    CHECK(fs_read_all(badp, &bb, &bl, err) == 0 && strstr((char *)bb, "\"gxz\""),
          "the bad line kept in groups.jsonl.bad");
    if (bl || bb) free(bb);
    CHECK(groups_open(dir, 0, 0, &g, err) == 0 && g.nwarn == 0 && !strcmp(groups_marks(&g, 1), "bgb") &&
              !strcmp(groups_marks(&g, 2), "bbg") && !strcmp(groups_marks(&g, 0), "gbb"),
          "after the repair the same marks replay, no warning (%d)", g.nwarn);
    groups_close(&g);
    /* the file of a group missing: its label is named and skipped */
    char traj[600];
    snprintf(traj, sizeof traj, "%s/groups/000002.traj", dir);
    unlink(traj);
    CHECK(groups_open(dir, 0, 0, &g, err) == 0, "open: %s", err);
    int named = 0;
    for (int i = 0; i < g.nwarn && i < GROUPS_MAX_WARN; i++)
        named |= strstr(g.warn[i], "groups.jsonl:2: group 2 has no file") != NULL;
    CHECK(named, "a decision on a missing group is named (%d warnings)", g.nwarn);
    groups_close(&g);
}

/* A child decides groups and reports each acknowledged one on a pipe; the
 * parent kills it with SIGKILL mid-stream; every acknowledged decision must
 * replay. */
static void test_kill9(void) {
    const char *dir = new_dir("kill9");
    char err[D3_ERRLEN];
    d3_groups g;
    groups_open(dir, 0, 0, &g, err);
    for (int i = 0; i < 40; i++) add_group(&g, 3, 40 + i);
    groups_close(&g);
    int fds[2];
    if (pipe(fds)) { CHECK(0, "pipe"); return; }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        d3_groups c;
        if (groups_open(dir, 0, 0, &c, err)) _exit(3);
        for (long id = 0; id < 40; id++) {
            if (groups_decide(&c, id, id % 2 ? "gbb" : "bgb", 3, 0, err)) _exit(4);
            if (write(fds[1], &id, sizeof id) != sizeof id) _exit(5);
            usleep(2000);
        }
        _exit(0);
    }
    close(fds[1]);
    long acked = -1, id;
    for (int i = 0; i < 10 && read(fds[0], &id, sizeof id) == sizeof id; i++) acked = id;
    kill(pid, SIGKILL);
    while (read(fds[0], &id, sizeof id) == sizeof id) acked = id;
    close(fds[0]);
    waitpid(pid, NULL, 0);
    CHECK(acked >= 9, "child acknowledged %ld", acked);
    CHECK(groups_open(dir, 0, 0, &g, err) == 0, "reopen: %s", err);
    int lost = 0;
    for (long i = 0; i <= acked; i++) lost += strcmp(groups_marks(&g, i), i % 2 ? "gbb" : "bgb") != 0;
    CHECK(lost == 0, "%d acknowledged decisions lost", lost);
    groups_close(&g);
}

/* The grid layout makes the images as large as the area allows. */
static void test_layout(void) {
    int r, c, side;
    /* 98 x 23 cells of half blocks (1 x 2 px): 1 x 4 tiles of 23 columns
     * beat 2 x 2 (images 20 px tall) */
    CHECK(gridview_layout(4, 98, 23, 1, 2, 16, 0, 2, &r, &c, &side) == 0 && r == 1 && c == 4 &&
              side == 23, "blocks 98x23, k=4: %dx%d side %d", r, c, side);
    /* sixel, 7x16 px cells, 138 x 38: 2 x 2 of 288 px (9 x 32) */
    CHECK(gridview_layout(4, 138, 38, 7, 16, 32, 1, 2, &r, &c, &side) == 0 && r == 2 && c == 2 &&
              side == 288, "sixel 138x38, k=4: %dx%d side %d", r, c, side);
    CHECK(gridview_layout(8, 138, 38, 7, 16, 32, 1, 2, &r, &c, &side) == 0 && r == 2 && c == 4 &&
              side % 32 == 0, "sixel 138x38, k=8: %dx%d side %d", r, c, side);
    /* a 512 px image (a Stable Diffusion sample) larger than any tile: scaled
     * down, not refused */
    CHECK(gridview_layout(4, 138, 38, 7, 16, 512, 1, 2, &r, &c, &side) == 0 && r == 2 && c == 2 &&
              side == 18 * 16, "sixel 138x38, S=512, k=4: %dx%d side %d", r, c, side);
    /* 46 x 12 cells of half blocks: 1 x 4 and 2 x 2 both give 10 px images;
     * the tie goes to the squarer 2 x 2 */
    CHECK(gridview_layout(4, 46, 12, 1, 2, 16, 0, 2, &r, &c, &side) == 0 && r == 2 && c == 2 &&
              side == 10, "blocks 46x12, k=4 (tie): %dx%d side %d", r, c, side);
    /* a tall narrow area stacks the images */
    CHECK(gridview_layout(3, 30, 60, 1, 2, 16, 0, 2, &r, &c, &side) == 0 && r == 3 && c == 1,
          "blocks 30x60, k=3: %dx%d", r, c);
    /* 5 images: never a row left empty (3 rows of 2 would leave one) */
    for (int k = GROUPS_MIN_K; k <= GROUPS_MAX_K; k++) {
        CHECK(gridview_layout(k, 80, 24, 1, 2, 16, 0, 2, &r, &c, &side) == 0 && r * c >= k &&
                  (r - 1) * c < k, "k=%d: %dx%d", k, r, c);
    }
    CHECK(gridview_layout(8, 10, 3, 1, 2, 16, 0, 2, &r, &c, &side) < 0, "too small: refused");
}

/* the next EV_PAIR of the engine, up to ~60 s; NULL on timeout */
static d3_pair_sample *next_sample(d3_engine *e) {
    for (int spins = 0; spins < 600; spins++) {
        struct pollfd p = {engine_fd(e), POLLIN, 0};
        poll(&p, 1, 100);
        d3_event ev;
        while (engine_poll(e, &ev)) {
            if (ev.kind == EV_PAIR) return ev.pair;
            if (ev.kind == EV_ERROR) fprintf(stderr, "  engine error: %s\n", ev.msg);
            engine_event_free(&ev);
        }
    }
    return NULL;
}

/* The engine samples a group of k from one x_T: every trajectory starts
 * at the same x_T, steps with its own noise (stream 1 + i, so the first
 * two are the pair of the same seed), and carries its decoded image. */
static void test_engine_group(void) {
    char err[D3_ERRLEN];
    d3_model *m = malloc(sizeof *m);
    unet_arch a = unet_arch_default();
    if (!m || unet_arch_parse(&a, "base=8,mult=1.2,res=1,attn=none,size=8,classes=3", err) ||
        model_init(m, &a, NULL, 5, err)) {
        CHECK(0, "tiny model: %s", err);
        free(m);
        return;
    }
    engine_opts o = engine_opts_default();
    o.sample = (ddim_opts){.steps = 4, .eta = 1.0f, .cfg = 3.0f};
    d3_engine *e = engine_start(m, NULL, NULL, 0, &o, err);
    CHECK(e != NULL, "%s", err);
    if (!e) return;
    engine_sample_ex(e, &(engine_sample_req){.cls = 1, .seed = 99, .n = 5});
    engine_sample_ex(e, &(engine_sample_req){.cls = 1, .seed = 99}); /* the pair of that seed */
    d3_pair_sample *g = next_sample(e), *p = next_sample(e);
    CHECK(g && p, "no samples");
    if (g && p) {
        size_t D = 3 * 8 * 8, K = 4;
        CHECK(g->n == 5 && p->n == 2, "n: group %d, pair %d", g->n, p->n);
        int shared = 1, differ = 0, imgs = 1, finite = 1;
        for (int i = 0; i < g->n; i++) {
            shared &= !memcmp(g->traj[i], g->traj[0], D * sizeof(float));
            if (i) differ += memcmp(g->traj[i] + K * D, g->traj[0] + K * D, D * sizeof(float)) != 0;
            imgs &= g->rgb[i] != NULL;
            for (size_t t = 0; t < K; t++) finite &= isfinite(g->logp[i][t]);
        }
        CHECK(shared, "every trajectory of the group starts at the one x_T");
        CHECK(differ == 4, "the images differ (%d of 4 differ from the first)", differ);
        CHECK(imgs && g->img_h == 8 && g->img_w == 8, "decoded images carried");
        CHECK(finite, "log-probs finite");
        /* batch 5 vs batch 2 may round differently in GEMM: within 1e-4 */
        double dmax = 0;
        for (int i = 0; i < 2; i++)
            for (size_t j = 0; j < (K + 1) * D; j++) dmax = fmax(dmax, fabs(g->traj[i][j] - p->traj[i][j]));
        CHECK(dmax < 1e-4, "the group's first two trajectories are the pair's (max diff %g)", dmax);
    }
    engine_pair_free(g);
    engine_pair_free(p);
    engine_stop(e);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/d3po_test_groups.%d", (int)getpid());
    char err[D3_ERRLEN];
    fs_mkdirs(root, err);
    RUN(test_pairs_from_marks);
    RUN(test_layout);
    RUN(test_engine_group);
    RUN(test_files_round_trip);
    RUN(test_journal_round_trip);
    RUN(test_damaged_journal);
    RUN(test_kill9);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd)) fprintf(stderr, "  (cleanup failed)\n");
    return t_done();
}
