/* test_rounds.c - the round driver (src/rounds.h) on a tiny model: prompts
 * cycle through the set (every prompt within one cycle, weights honoured,
 * the pair sequence continuing across a resume), a half round journaled
 * before a stop trains with the next round after a resume, a cancelled
 * round's labels train later, a history edit of a trained pair goes into
 * the next round, and with overlap pairs keep coming from the model in
 * force while a round trains. No assertion on time: each check waits for
 * the events it needs. */
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend.h"
#include "config.h"
#include "model.h"
#include "rounds.h"
#include "session.h"
#include "t.h"

#define ARCH "base=8,mult=1.2,res=1,attn=none,size=8,classes=4"

static char root[256], model_path[512];
static d3_config cfg;

static const char *new_dir(const char *name) {
    static char d[8][512];
    static int next;
    char *p = d[next++ % 8];
    snprintf(p, sizeof d[0], "%s/%s", root, name);
    return p;
}

static int open_new(const char *dir, d3_session *s) {
    char err[D3_ERRLEN];
    if (session_create(dir, model_path, NULL, err) || session_open(dir, s, err)) {
        fprintf(stderr, "  %s\n", err);
        return -1;
    }
    return 0;
}

/* Waits for the next driver event of kind `want` (others are handled:
 * pairs freed, errors reported); 0, or -1 after 2000 empty polls of
 * 100 ms (a hung engine, not a slow one). *ev is the caller's to free. */
static int next_event(rounds *d, rounds_ev_kind want, rounds_event *ev) {
    for (int idle = 0; idle < 2000;) {
        if (!rounds_poll(d, ev)) {
            struct pollfd pf = {rounds_fd(d), POLLIN, 0};
            if (poll(&pf, 1, 100) == 0) idle++;
            continue;
        }
        if (ev->kind == want) return 0;
        if (ev->kind == RV_ERROR) fprintf(stderr, "  driver error: %s\n", ev->msg);
        rounds_event_free(ev);
    }
    return -1;
}

static rounds_opts opts(int round_size, int depth, int overlap) {
    rounds_opts o = rounds_opts_default(&cfg);
    o.round_size = round_size;
    o.queue_depth = depth;
    o.overlap = overlap;
    o.drift_every = 0;
    return o;
}

/* Takes n pairs; their ids into ids (may be NULL), classes counted. */
static int take_pairs(rounds *d, int n, long *ids, int *count) {
    rounds_top_up(d, 0);
    for (int i = 0; i < n; i++) {
        rounds_event ev;
        if (next_event(d, RV_PAIR, &ev)) return -1;
        if (ids) ids[i] = ev.id;
        if (count) count[ev.pair->cls]++;
        rounds_event_free(&ev);
    }
    return 0;
}

static void test_prompt_cycle(void) {
    char err[D3_ERRLEN];
    const char *dir = new_dir("cycle");
    d3_session s;
    if (open_new(dir, &s)) { CHECK(0, "session"); return; }
    rounds_opts o = opts(1000, 6, 0);
    rounds *d = rounds_start(&s, &cfg, backend_cpu(), &o, err);
    CHECK(d, "%s", err);
    if (!d) { session_close(&s); return; }
    int count[4] = {0};
    CHECK(take_pairs(d, 6, NULL, count) == 0, "6 pairs");
    rounds_stop(d);
    session_close(&s);
    /* resumed: the sequence continues where the pairs on disk end */
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    d = rounds_start(&s, &cfg, backend_cpu(), &o, err);
    CHECK(d, "%s", err);
    if (!d) { session_close(&s); return; }
    CHECK(take_pairs(d, 6, NULL, count) == 0, "6 more pairs");
    printf("    classes over 12 pairs: %d %d %d %d\n", count[0], count[1], count[2], count[3]);
    CHECK(count[0] == 3 && count[1] == 3 && count[2] == 3 && count[3] == 3,
          "every prompt 3 times in 12 pairs");
    rounds_stop(d);
    /* a weighted set: dog x2, owl x1 */
    const char *p[] = {"dog", "owl"};
    int w[] = {2, 1};
    CHECK(session_set_prompts(&s, p, w, 2, NULL, err) == 0, "%s", err);
    d = rounds_start(&s, &cfg, backend_cpu(), &o, err);
    CHECK(d, "%s", err);
    if (!d) { session_close(&s); return; }
    int c2[4] = {0};
    CHECK(take_pairs(d, 6, NULL, c2) == 0, "6 weighted pairs");
    CHECK(c2[1] == 4 && c2[3] == 2 && c2[0] == 0 && c2[2] == 0, "weights 2:1 -> %d dog %d owl",
          c2[1], c2[3]);
    /* a fixed prompt survives the restart */
    CHECK(rounds_fix_prompt(d, "cat", err) == 0, "%s", err);
    rounds_stop(d);
    session_close(&s);
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(s.prompt_fixed && !strcmp(s.prompt_fixed, "cat"), "fixed prompt stored");
    d = rounds_start(&s, &cfg, backend_cpu(), &o, err);
    if (d) {
        int c3[4] = {0};
        CHECK(take_pairs(d, 3, NULL, c3) == 0 && c3[0] == 3, "fixed prompt: cat x%d", c3[0]);
        CHECK(rounds_fix_prompt(d, "wolf", err) == -1 && strstr(err, "wolf"), "unknown prompt");
        rounds_stop(d);
    }
    session_close(&s);
}

static void test_half_round_resumed(void) {
    char err[D3_ERRLEN];
    const char *dir = new_dir("half");
    d3_session s;
    if (open_new(dir, &s)) { CHECK(0, "session"); return; }
    rounds_opts o = opts(4, 4, 0);
    rounds *d = rounds_start(&s, &cfg, backend_cpu(), &o, err);
    if (!d) { CHECK(0, "%s", err); session_close(&s); return; }
    long ids[8];
    CHECK(take_pairs(d, 4, ids, NULL) == 0, "4 pairs");
    CHECK(rounds_decide(d, ids[0], SESSION_A, 0, err) == 0, "%s", err);
    CHECK(rounds_decide(d, ids[1], SESSION_B, 0, err) == 0, "%s", err);
    CHECK(rounds_decide(d, ids[2], SESSION_SKIP, 0, err) == 0, "%s", err);
    rounds_status st;
    rounds_get_status(d, &st);
    CHECK(!st.training && st.pending == 2, "half a round: pending %d", st.pending);
    rounds_stop(d); /* quit in the middle of the round */
    session_close(&s);

    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    session_stats in;
    session_info(&s, &in);
    CHECK(in.untrained == 2 && in.trained == 0, "after resume: untrained %ld", in.untrained);
    d = rounds_start(&s, &cfg, backend_cpu(), &o, err);
    if (!d) { CHECK(0, "%s", err); session_close(&s); return; }
    rounds_get_status(d, &st);
    CHECK(st.pending == 2 && st.round == 1, "resumed pending %d round %d", st.pending, st.round);
    CHECK(rounds_decide(d, ids[3], SESSION_TIE, 0, err) == 0, "%s", err);
    long more[1];
    CHECK(take_pairs(d, 1, more, NULL) == 0, "one more pair");
    CHECK(rounds_decide(d, more[0], SESSION_A, 0, err) == 0, "%s", err);
    rounds_get_status(d, &st);
    CHECK(st.training && st.train_nlabels == 4, "round with the 2 resumed labels: %d labels",
          st.train_nlabels);
    rounds_event ev;
    CHECK(next_event(d, RV_TRAINED, &ev) == 0 && ev.nlabels == 4 && ev.round == 1,
          "round 1 trained on %d labels", ev.nlabels);
    long all[] = {ids[0], ids[1], ids[3], more[0]};
    for (int i = 0; i < 4; i++)
        CHECK(session_label_trained(&s, all[i]), "pair %ld trained", all[i]);
    CHECK(!session_label_trained(&s, ids[2]) && !session_label_pending(&s, ids[2]),
          "a skip neither trained nor pending");
    /* a history edit of a trained pair goes into the next round */
    CHECK(rounds_decide(d, ids[0], SESSION_B, 0, err) == 0, "%s", err);
    CHECK(!session_label_trained(&s, ids[0]) && session_trained_choice(&s, ids[0]) == SESSION_A &&
              session_label_pending(&s, ids[0]),
          "edited pair pending again");
    rounds_get_status(d, &st);
    CHECK(st.pending == 1 && st.round == 2, "edit pending for round 2: %d", st.pending);
    /* a cancelled round: its labels stay pending */
    CHECK(rounds_train_now(d, err) == 0, "%s", err);
    rounds_stop(d);
    session_close(&s);
    CHECK(session_open(dir, &s, err) == 0, "%s", err);
    CHECK(session_label_pending(&s, ids[0]) || s.round == 2,
          "cancelled round: the edit is pending (or the round finished before the stop)");
    session_info(&s, &in);
    CHECK(in.trained + in.untrained == 4, "trained %ld + untrained %ld", in.trained, in.untrained);
    session_close(&s);
}

static void test_overlap(void) {
    char err[D3_ERRLEN];
    const char *dir = new_dir("overlap");
    d3_session s;
    if (open_new(dir, &s)) { CHECK(0, "session"); return; }
    d3_config c2 = cfg;
    c2.d3po.epochs = 100; /* a round long enough to sample pairs in it */
    rounds_opts o = rounds_opts_default(&c2);
    o.round_size = 2;
    o.queue_depth = 2;
    o.drift_every = 0;
    rounds *d = rounds_start(&s, &c2, backend_cpu(), &o, err);
    if (!d) { CHECK(0, "%s", err); session_close(&s); return; }
    long ids[2];
    CHECK(take_pairs(d, 2, ids, NULL) == 0, "2 pairs");
    CHECK(rounds_decide(d, ids[0], SESSION_A, 0, err) == 0, "%s", err);
    CHECK(rounds_decide(d, ids[1], SESSION_B, 0, err) == 0, "%s", err);
    rounds_top_up(d, 0); /* two pairs asked for while the round trains */
    int before = 0, got = 0, trained = 0;
    while (got < 2) {
        rounds_event ev;
        if (!rounds_poll(d, &ev)) {
            struct pollfd pf = {rounds_fd(d), POLLIN, 0};
            if (poll(&pf, 1, 20000) == 0) break;
            continue;
        }
        if (ev.kind == RV_PAIR) {
            got++;
            if (!trained) {
                before++;
                CHECK(ev.pair->version == 0, "a pair during the round comes from v0");
            }
        }
        if (ev.kind == RV_TRAINED) trained = 1;
        rounds_event_free(&ev);
    }
    printf("    pairs delivered while round 1 trained: %d of %d\n", before, got);
    CHECK(before == 2, "both pairs came before the round ended (%d)", before);
    rounds_stop(d);
    session_close(&s);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/d3po-test-rounds.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    d3_model m;
    const char *names[] = {"cat", "dog", "fish", "owl"};
    snprintf(model_path, sizeof model_path, "%s/tiny.safetensors", root);
    if (unet_arch_parse(&a, ARCH, err) || model_init(&m, &a, names, 1, err) ||
        model_save(&m, model_path, NULL, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    model_free(&m);
    config_defaults(&cfg);
    cfg.sampler.steps = 3;
    cfg.engine.threads = 1;
    cfg.d3po.epochs = 1;
    RUN(test_prompt_cycle);
    RUN(test_half_round_resumed);
    RUN(test_overlap);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd)) fprintf(stderr, "  could not remove %s\n", root);
    return t_done();
}
