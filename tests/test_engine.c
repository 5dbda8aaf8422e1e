/* test_engine.c - the engine thread: pairs sampled off the caller's thread
 * with a shared x_T and the sampling model's version, a D3PO round that
 * bumps the version and calls the checkpoint hook, pairs after it coming
 * from the new model, the base model's log-probs of drift pairs computed
 * on the engine's backend, and a stop in the middle of training that
 * returns promptly and frees everything (checked under ASan by make
 * check-asan). */
#include <poll.h>
#include <stdlib.h>

#include "engine.h"
#include "t.h"

static d3_model *tiny(uint64_t seed) {
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    d3_model *m = malloc(sizeof *m);
    if (unet_arch_parse(&a, "base=8,mult=1.2,res=1,attn=4,size=8,classes=3", err) ||
        model_init(m, &a, NULL, seed, err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    /* non-zero output layers, so the two images of a pair differ visibly */
    for (size_t i = 0; i < m->L.numel; i++) m->params[i] += 0.01f * (float)((i * 2654435761u) % 1000) / 1000.0f;
    return m;
}

typedef struct { int calls, last_round; long last_version; } saves;
static int save_hook(void *ctx, const d3_model *m, const d3_state *st, int round, char *err) {
    saves *s = ctx;
    s->calls++;
    s->last_round = round;
    const char *v = model_get_meta(m, "d3po.model_version");
    s->last_version = v ? atol(v) : -1;
    return st->has_opt ? 0 : d3_errf(err, "no optimizer state");
}

/* waits for an event of kind k (others are counted), up to ~60 s */
static int wait_for(d3_engine *e, d3_event_kind k, d3_event *out, int *progress) {
    for (int spins = 0; spins < 600; spins++) {
        struct pollfd p = {engine_fd(e), POLLIN, 0};
        poll(&p, 1, 100);
        d3_event ev;
        while (engine_poll(e, &ev)) {
            if (ev.kind == k) { *out = ev; return 1; }
            if (ev.kind == EV_PROGRESS && progress) (*progress)++;
            if (ev.kind == EV_ERROR) fprintf(stderr, "  engine error: %s\n", ev.msg);
            engine_event_free(&ev);
        }
    }
    return 0;
}

static void test_sample_train_sample(void) {
    char err[D3_ERRLEN];
    saves sv = {0};
    engine_opts o = engine_opts_default();
    o.sample = (ddim_opts){.steps = 5, .eta = 1.0f, .cfg = 3.0f};
    o.train.epochs = 2;
    o.lr = 1e-3f;
    o.save_round = save_hook;
    o.save_ctx = &sv;
    d3_engine *e = engine_start(tiny(1), NULL, NULL, 0, &o, err);
    CHECK(e != NULL, "%s", err);
    if (!e) return;
    for (int i = 0; i < 3; i++) engine_sample(e, i % 3, 100 + i);
    d3_pair_sample *pairs[3];
    int progress = 0;
    for (int i = 0; i < 3; i++) {
        d3_event ev;
        CHECK(wait_for(e, EV_PAIR, &ev, &progress), "pair %d never came", i);
        pairs[i] = ev.pair;
    }
    size_t D = 3 * 8 * 8;
    for (int i = 0; i < 3; i++) {
        CHECK(pairs[i]->version == 0 && pairs[i]->K == 5 && pairs[i]->S == 8, "pair fields");
        CHECK(!memcmp(pairs[i]->traj[0], pairs[i]->traj[1], D * sizeof(float)), "x_T not shared");
        CHECK(memcmp(pairs[i]->traj[0] + 5 * D, pairs[i]->traj[1] + 5 * D, D * sizeof(float)),
              "the two images are identical");
    }
    CHECK(pairs[0]->seed == 100 && pairs[2]->cls == 2, "jobs ran in order");
    float h[3][2] = {{1, -1}, {-1, 1}, {0, 0}};
    engine_train(e, (const d3_pair_sample *const *)pairs, h, 3, 1);
    engine_sample(e, 0, 100); /* queued behind the training: from the new model */
    d3_event ev;
    CHECK(wait_for(e, EV_TRAINED, &ev, &progress), "training never finished");
    CHECK(ev.version == 1 && ev.round == 1, "version %ld round %d", ev.version, ev.round);
    CHECK(sv.calls == 1 && sv.last_round == 1 && sv.last_version == 1, "save hook %d %d %ld",
          sv.calls, sv.last_round, sv.last_version);
    CHECK(progress >= 3, "only %d progress events", progress);
    d3_event pe;
    CHECK(wait_for(e, EV_PAIR, &pe, NULL), "pair after training never came");
    if (pe.kind == EV_PAIR) {
        CHECK(pe.pair->version == 1, "pair after training has version %ld", pe.pair->version);
        /* same seed and class as pairs[0], other model: same x_T, other image */
        CHECK(!memcmp(pe.pair->traj[0], pairs[0]->traj[0], D * sizeof(float)), "x_T from the seed");
        CHECK(memcmp(pe.pair->traj[0] + 5 * D, pairs[0]->traj[0] + 5 * D, D * sizeof(float)),
              "the trained model sampled the same image");
        engine_event_free(&pe);
    }
    for (int i = 0; i < 3; i++) engine_pair_free(pairs[i]);
    engine_stop(e);
}

static void test_stop_mid_training(void) {
    char err[D3_ERRLEN];
    engine_opts o = engine_opts_default();
    o.sample = (ddim_opts){.steps = 5, .eta = 1.0f, .cfg = 3.0f};
    o.train.epochs = 100000; /* would run for hours */
    d3_engine *e = engine_start(tiny(2), tiny(3), NULL, 0, &o, err);
    CHECK(e != NULL, "%s", err);
    if (!e) return;
    engine_sample(e, 1, 7);
    d3_event ev;
    CHECK(wait_for(e, EV_PAIR, &ev, NULL), "no pair");
    const d3_pair_sample *p = ev.pair;
    float h[1][2] = {{1, -1}};
    engine_train(e, &p, h, 1, 1);
    for (int i = 0; i < 5; i++) engine_sample(e, 0, 50 + i); /* dropped by the stop */
    engine_event_free(&ev);
    d3_event pr;
    int got = 0;
    for (int spins = 0; spins < 600 && !got; spins++) {
        struct pollfd pf = {engine_fd(e), POLLIN, 0};
        poll(&pf, 1, 100);
        while (!got && engine_poll(e, &pr)) {
            got = pr.kind == EV_PROGRESS && !strcmp(pr.what, "training") && pr.i > 0;
            engine_event_free(&pr);
        }
    }
    CHECK(got, "training never reported progress");
    int s, t;
    engine_pending(e, &s, &t);
    CHECK(t == 1 && s == 5, "pending sampling %d training %d", s, t);
    engine_stop(e); /* must return at the next pair update, not after 100000 epochs */
    CHECK(1, "stopped");
}

/* engine_sample_drift: the pair carries the base model's log-probs of its
 * own trajectories; with base == policy they are the sampling log-probs. */
static void test_drift_logp(void) {
    char err[D3_ERRLEN];
    engine_opts o = engine_opts_default();
    o.sample = (ddim_opts){.steps = 4, .eta = 1.0f, .cfg = 3.0f};
    o.be = backend_cpu(); /* the backend the commands pass (device_backend) */
    d3_engine *e = engine_start(tiny(4), tiny(4), NULL, 0, &o, err);
    CHECK(e != NULL, "%s", err);
    if (!e) return;
    engine_sample_drift(e, 2, 11);
    engine_sample(e, 2, 11);
    d3_event a, b;
    CHECK(wait_for(e, EV_PAIR, &a, NULL) && wait_for(e, EV_PAIR, &b, NULL), "pairs never came");
    if (a.kind != EV_PAIR || b.kind != EV_PAIR) { engine_stop(e); return; }
    CHECK(a.pair->logp_base[0] && a.pair->logp_base[1], "drift pair without base log-probs");
    CHECK(!b.pair->logp_base[0] && !b.pair->logp_base[1], "plain pair with base log-probs");
    /* the same weights and steps; only the grouping of the forward passes
     * may differ, so float rounding: 1e-4 absolute + 1e-5 of |logp| (the
     * per-step log-probs here are of magnitude ~1; d3po auto's round-0
     * drift check allows 1e-3) */
    double worst = 0, maxd = 0;
    for (int i = 0; i < 2 && a.pair->logp_base[0]; i++)
        for (int t = 0; t < 4; t++) {
            double ref = a.pair->logp[i][t], got = a.pair->logp_base[i][t];
            double excess = fabs(got - ref) - (1e-4 + 1e-5 * fabs(ref));
            if (excess > worst) worst = excess;
            if (fabs(got - ref) > maxd) maxd = fabs(got - ref);
            if (i == 0 && t == 0) printf("    logp %.6f, base %.6f\n", ref, got);
        }
    printf("    max |logp - base| %g\n", maxd);
    CHECK(worst <= 0, "base log-probs differ from the sampling ones by %g over tolerance", worst);
    engine_event_free(&a);
    engine_event_free(&b);
    engine_stop(e);

    /* no base model: drift pairs come without base log-probs */
    e = engine_start(tiny(4), NULL, NULL, 0, &o, err);
    CHECK(e != NULL, "%s", err);
    if (!e) return;
    engine_sample_drift(e, 0, 3);
    CHECK(wait_for(e, EV_PAIR, &a, NULL), "pair never came");
    if (a.kind == EV_PAIR) {
        CHECK(!a.pair->logp_base[0], "base log-probs without a base model");
        engine_event_free(&a);
    }
    engine_stop(e);
}

int main(void) {
    RUN(test_sample_train_sample);
    RUN(test_drift_logp);
    RUN(test_stop_mid_training);
    return t_done();
}
