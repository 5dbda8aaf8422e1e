/* test_dmodel.c - the model interface (engine/dmodel.h) against the code
 * it fronts, bit for bit: on the pixel family dm_sample_pair /
 * dm_traj_logp give exactly the trajectories, log-probs and means of the
 * pixel sampler as it was before the interface (kept below as the
 * reference: ref_sample, ref_traj_logp; ddim_sample and
 * ddim_traj_logp_mean are now views of the interface and are checked
 * against it too); prompts map to class ids and "" to
 * the null class; decode is image_to_rgb's mapping. With D3PO_SD_TINY
 * naming a tiny SD pipeline (tests/test_dmodel_sd.sh builds one), the sd
 * family gives exactly sd_ddim_sample's and sd_traj_logp's bits from the
 * same text states and latents, and reports no trainable set until LoRA
 * adapters are attached (test_sd_train: D3PO trains them, the base stays
 * bit-identical, adapters off give the base's bits, files round-trip). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dmodel.h"
#include "optim.h"
#include "sd/sdsample.h"
#include "t.h"

static void tiny(d3_model *m, const char *spec, uint64_t seed) {
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    if (unet_arch_parse(&a, spec, err) || model_init(m, &a, NULL, seed, err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
}

/* The pixel sampler before the interface (the reference). */
static void ref_sample(const d3_model *m, d3_tape *tp, const ddim_opts *o, int cls, uint64_t seed,
                       float *x, float *traj, float *logp) {
    int K = o->steps, ts[D3_MAX_STEPS], prev[D3_MAX_STEPS], c2[2] = {cls, cls};
    size_t D = 3 * (size_t)m->L.arch.size * m->L.arch.size;
    char err[D3_ERRLEN];
    ddim_timesteps(m->sched.T, K, ts, prev, err);
    d3_rng r, rngs[2];
    rng_init(&r, seed, 0);
    rng_normal(&r, x, D);
    memcpy(x + D, x, D * sizeof(float));
    rng_init(&rngs[0], seed, 1);
    rng_init(&rngs[1], seed, 2);
    float *eps = malloc(2 * D * sizeof(float)), *mean = malloc(D * sizeof(float));
    float *z = malloc(D * sizeof(float)), *xp = malloc(D * sizeof(float));
    for (int i = 0; i < 2; i++) memcpy(traj + (size_t)i * (K + 1) * D, x + i * D, D * sizeof(float));
    for (int k = 0; k < K; k++) {
        model_eps_cfg(m, tp, 2, x, ts[k], c2, o->cfg, eps);
        for (int i = 0; i < 2; i++) {
            rng_normal(&rngs[i], z, D);
            double sg = ddim_step(xp, mean, x + i * D, eps + i * D, z, m->sched.abar[ts[k]],
                                  m->sched.abar[prev[k]], o->eta, D);
            logp[i * K + k] = (float)ddim_logprob(xp, mean, sg, D);
            memcpy(x + i * D, xp, D * sizeof(float));
            memcpy(traj + ((size_t)i * (K + 1) + k + 1) * D, xp, D * sizeof(float));
        }
    }
    free(eps); free(mean); free(z); free(xp);
}

static void ref_traj_logp(const d3_model *m, d3_tape *tp, const ddim_opts *o, int cls,
                          const float *traj, float *logp, float *means) {
    int K = o->steps, ts[D3_MAX_STEPS], prev[D3_MAX_STEPS], c2[2] = {cls, cls};
    size_t D = 3 * (size_t)m->L.arch.size * m->L.arch.size;
    char err[D3_ERRLEN];
    ddim_timesteps(m->sched.T, K, ts, prev, err);
    float *x = malloc(2 * D * sizeof(float)), *eps = malloc(2 * D * sizeof(float));
    float *mean = malloc(D * sizeof(float)), *xp = malloc(D * sizeof(float));
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < 2; i++) memcpy(x + i * D, traj + ((size_t)i * (K + 1) + k) * D, D * sizeof(float));
        model_eps_cfg(m, tp, 2, x, ts[k], c2, o->cfg, eps);
        for (int i = 0; i < 2; i++) {
            double sg = ddim_step(xp, mean, x + i * D, eps + i * D, NULL, m->sched.abar[ts[k]],
                                  m->sched.abar[prev[k]], o->eta, D);
            logp[i * K + k] = (float)ddim_logprob(traj + ((size_t)i * (K + 1) + k + 1) * D, mean, sg, D);
            memcpy(means + ((size_t)i * K + k) * D, mean, D * sizeof(float));
        }
    }
    free(x); free(eps); free(mean); free(xp);
}

static void test_pixel_bit_identical(void) {
    char err[D3_ERRLEN];
    d3_model m;
    tiny(&m, "base=8,mult=1.2,res=1,attn=none,size=8,classes=3", 11);
    d3_tape *tp = tape_new(backend_cpu());
    d3_dmodel dm;
    CHECK(dm_open_pixel(&dm, &m, err) == 0, "%s", err);
    CHECK(dm.D == 3 * 8 * 8 && dm.cond_floats == 1 && dm.train.numel == m.L.numel, "sizes");
    CHECK(dm_can_train(&dm, err) == 1, "pixel cannot train");
    ddim_opts o = ddim_opts_default();
    o.steps = 5;
    size_t D = dm.D;
    int K = o.steps;
    float c[2];
    CHECK(dm_condition(&dm, "2", c, err) == 0 && c[0] == 2.0f, "class 2: %s", err);
    CHECK(dm_condition(&dm, "", c + 1, err) == 0 && c[1] == 3.0f, "null class %g", c[1]);
    CHECK(dm_condition(&dm, "nope", c + 1, err) == -1 && strstr(err, "nope"), "unknown prompt accepted");
    dm_condition(&dm, "", c + 1, err);
    float *xa = malloc(2 * D * sizeof(float)), *xb = malloc(2 * D * sizeof(float));
    float *ta = malloc(2 * (K + 1) * D * sizeof(float)), *tb = malloc(2 * (K + 1) * D * sizeof(float));
    float la[2 * 20], lb[2 * 20], ra[2 * 20], rb[2 * 20];
    float *ma = malloc(2 * K * D * sizeof(float)), *mb = malloc(2 * K * D * sizeof(float));
    for (int cfgi = 0; cfgi < 2; cfgi++) {
        o.cfg = cfgi ? 1.0f : 5.0f; /* one pass and guided */
        ref_sample(&m, tp, &o, 2, 77, xa, ta, la);
        CHECK(ddim_sample_pair(&m, tp, &o, 2, 77, 1, xb, tb, lb, err) == 0, "%s", err);
        CHECK(!memcmp(ta, tb, 2 * (K + 1) * D * sizeof(float)) && !memcmp(la, lb, 2 * K * sizeof(float)),
              "cfg %g: ddim_sample_pair differs from the reference", o.cfg);
        CHECK(dm_sample_pair(&dm, tp, &o, c, c + 1, 77, 1, xb, tb, lb, err) == 0, "%s", err);
        CHECK(!memcmp(xa, xb, 2 * D * sizeof(float)), "cfg %g: x_0 differ", o.cfg);
        CHECK(!memcmp(ta, tb, 2 * (K + 1) * D * sizeof(float)), "cfg %g: trajectories differ", o.cfg);
        CHECK(!memcmp(la, lb, 2 * K * sizeof(float)), "cfg %g: logp differ", o.cfg);
        int cls[2] = {2, 2};
        float cc[2] = {c[0], c[0]};
        ref_traj_logp(&m, tp, &o, 2, ta, ra, ma);
        CHECK(ddim_traj_logp_mean(&m, tp, &o, 2, cls, ta, rb, mb, err) == 0, "%s", err);
        CHECK(!memcmp(ra, rb, 2 * K * sizeof(float)) && !memcmp(ma, mb, 2 * K * D * sizeof(float)),
              "cfg %g: ddim_traj_logp_mean differs from the reference", o.cfg);
        CHECK(dm_traj_logp(&dm, tp, &o, 2, cc, c + 1, ta, rb, mb, err) == 0, "%s", err);
        CHECK(!memcmp(ra, rb, 2 * K * sizeof(float)), "cfg %g: teacher-forced logp differ", o.cfg);
        CHECK(!memcmp(ma, mb, 2 * K * D * sizeof(float)), "cfg %g: means differ", o.cfg);
        /* teacher forcing reproduces the sampled log-probs (same model) */
        CHECK(!memcmp(la, rb, 2 * K * sizeof(float)), "cfg %g: sampled vs forced logp", o.cfg);
    }
    uint8_t rgb[8 * 8 * 3];
    CHECK(dm_decode(&dm, tp, xa, 1, rgb, err) == 0, "%s", err);
    int bad = 0;
    for (int p = 0; p < 64; p++)
        for (int ch = 0; ch < 3; ch++) {
            float v = (xa[ch * 64 + p] + 1.0f) * 127.5f + 0.5f;
            uint8_t e = v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v;
            bad += rgb[p * 3 + ch] != e;
        }
    CHECK(bad == 0, "%d decoded bytes differ", bad);
    o.eta = 0;
    CHECK(dm_sample_pair(&dm, tp, &o, c, c + 1, 77, 1, xb, tb, lb, err) == -1 && strstr(err, "sigma 0"),
          "eta 0 with log-probs accepted");
    free(xa); free(xb); free(ta); free(tb); free(ma); free(mb);
    dm_close(&dm);
    tape_free(tp);
    model_free(&m);
}

/* Opens $D3PO_SD_TINY (dir) on the CPU for latents h x w: 1, or 0 when
 * unset (the sd tests are skipped) or failing (a failed check). */
static int open_tiny_sd(d3_dmodel *dm, const char *dir, int h, int w) {
    char err[D3_ERRLEN];
    if (!dir || !*dir) {
        printf("  (D3PO_SD_TINY unset: the sd family is tested by test_dmodel_sd.sh)\n");
        return 0;
    }
    int rc = dm_open_sd(dm, dir, NULL, backend_cpu(), h, w, err);
    CHECK(rc == 0, "dm_open_sd: %s", err);
    return rc == 0;
}

static void test_sd_bit_identical(void) {
    char err[D3_ERRLEN];
    const char *dir = getenv("D3PO_SD_TINY");
    const d3_backend *be = backend_cpu();
    d3_dmodel dm;
    int h = 8, w = 8;
    if (!open_tiny_sd(&dm, dir, h, w)) return;
    d3_tape *tp = tape_new(be);
    CHECK(strcmp(dm.family, "sd") == 0 && dm.h == h && dm.img_h == h * ((sd_model *)dm.impl)->factor, "sizes %d %d", dm.h, dm.img_h);
    CHECK(dm_can_train(&dm, err) == 0 && strstr(err, "LoRA"), "sd claims a trainable set");
    CHECK(dm_open_sd(&(d3_dmodel){0}, dir, NULL, be, 7, 7, err) == -1, "latents 7x7 accepted");
    sd_model *m = dm.impl;
    size_t D = dm.D, Dc = dm.cond_floats;
    float *c = malloc(2 * Dc * sizeof(float)), *c2 = malloc(2 * Dc * sizeof(float));
    const char *pr[2] = {"a photo of a cat", ""};
    /* one prompt per call, as dm_condition encodes (a batch of two may
     * sum in another order in the GEMMs) */
    CHECK(sd_model_encode(m, pr, 1, c, err) == 0 && sd_model_encode(m, pr + 1, 1, c + Dc, err) == 0, "%s", err);
    CHECK(dm_condition(&dm, pr[0], c2, err) == 0 && dm_condition(&dm, "", c2 + Dc, err) == 0, "%s", err);
    CHECK(!memcmp(c, c2, 2 * Dc * sizeof(float)), "text states differ");
    ddim_opts o = ddim_opts_default();
    o.steps = 4;
    o.cfg = 7.5f;
    int K = o.steps;
    float *xa = malloc(2 * D * sizeof(float)), *xb = malloc(2 * D * sizeof(float));
    float *ta = malloc(2 * (K + 1) * D * sizeof(float)), *tb = malloc(2 * (K + 1) * D * sizeof(float));
    float la[2 * 4], lb[2 * 4], fa[4], fb[4];
    d3_rng r, ra[2], rb[2];
    rng_init(&r, 5, 0);
    rng_normal(&r, xa, D);
    memcpy(xa + D, xa, D * sizeof(float));
    memcpy(xb, xa, 2 * D * sizeof(float));
    for (int i = 0; i < 2; i++) {
        rng_init(&ra[i], 5, 1 + i);
        rng_init(&rb[i], 5, 1 + i);
    }
    float *cc = malloc(2 * Dc * sizeof(float));
    memcpy(cc, c, Dc * sizeof(float));
    memcpy(cc + Dc, c, Dc * sizeof(float));
    CHECK(sd_ddim_sample(m, tp, &o, 2, cc, c + Dc, xa, h, w, ra, ta, la, err) == 0, "%s", err);
    CHECK(dm_sample(&dm, tp, &o, 2, cc, c + Dc, xb, rb, tb, lb, err) == 0, "%s", err);
    CHECK(!memcmp(xa, xb, 2 * D * sizeof(float)), "latents differ");
    CHECK(!memcmp(ta, tb, 2 * (K + 1) * D * sizeof(float)), "trajectories differ");
    CHECK(!memcmp(la, lb, 2 * K * sizeof(float)), "logp differ");
    CHECK(sd_traj_logp(m, tp, &o, c, c + Dc, ta, h, w, fa, err) == 0, "%s", err);
    CHECK(dm_traj_logp(&dm, tp, &o, 1, c, c + Dc, ta, fb, NULL, err) == 0, "%s", err);
    CHECK(!memcmp(fa, fb, K * sizeof(float)), "teacher-forced logp differ");
    /* D3PO on the sd family: no trainable set, so a gradient buffer is refused */
    float dummy = 0, ref[4] = {0}, hh[2] = {1, -1};
    d3po_opts dop = d3po_opts_default();
    double loss = dm_d3po_pair_backward(&dm, tp, &dummy, &o, &dop, ta, ta + (K + 1) * D, c, c + Dc, ref,
                                        ref, NULL, hh, NULL, NULL, NULL, NULL, err);
    CHECK(isnan(loss) && strstr(err, "no trainable set"), "D3PO on sd without adapters: %g %s", loss, err);
    size_t HW = (size_t)dm.img_h * dm.img_w;
    uint8_t *ia = malloc(HW * 3), *ib = malloc(HW * 3);
    CHECK(sd_model_decode(m, tp, xa, 1, h, w, ia, err) == 0, "%s", err);
    CHECK(dm_decode(&dm, tp, xb, 1, ib, err) == 0, "%s", err);
    CHECK(!memcmp(ia, ib, HW * 3), "decoded images differ");
    free(c); free(c2); free(cc); free(xa); free(xb); free(ta); free(tb); free(ia); free(ib);
    dm_close(&dm);
    tape_free(tp);
}

/* LoRA D3PO on the sd family: the adapters are the trainable set, D3PO
 * trains them (finite loss, non-zero adapter gradients, the loss falls
 * under a large learning rate), the base UNet and text encoder stay
 * bit-identical through AdamW steps, the adapters off give the base's
 * bits, a saved file starts a new set with the same numbers in both
 * namings, and a frozen --lora set equals the same adapters trainable. */
static void test_sd_train(void) {
    const char *dir = getenv("D3PO_SD_TINY");
    d3_dmodel dm;
    int h = 8, w = 8;
    if (!open_tiny_sd(&dm, dir, h, w)) return;
    char err[D3_ERRLEN], path[4096];
    const d3_backend *be = backend_cpu();
    d3_tape *tp = tape_new(be);
    sd_model *m = dm.impl;
    size_t D = dm.D, Dc = dm.cond_floats, nu = m->p.L[SD_UNET].numel, nt = m->p.L[SD_TEXT_ENCODER].numel;
    CHECK(dm_can_train(&dm, err) == 0 && dm_lora(&dm) == NULL, "a trainable set before attaching");
    float *c = malloc(2 * Dc * sizeof(float));
    CHECK(dm_condition(&dm, "a photo of a cat", c, err) == 0 && dm_condition(&dm, "", c + Dc, err) == 0, "%s", err);
    ddim_opts o = ddim_opts_default();
    o.steps = 4;
    o.cfg = 7.5f;
    int K = o.steps;
    float *x = malloc(2 * D * sizeof(float)), *traj = malloc(2 * (K + 1) * D * sizeof(float));
    float lp[8], base[8], ref[8], pol[8];
    CHECK(dm_sample_pair(&dm, tp, &o, c, c + Dc, 9, 1, x, traj, lp, err) == 0, "%s", err);
    float *cc = malloc(2 * Dc * sizeof(float));
    memcpy(cc, c, Dc * sizeof(float));
    memcpy(cc + Dc, c, Dc * sizeof(float));
    CHECK(dm_traj_logp(&dm, tp, &o, 2, cc, c + Dc, traj, base, NULL, err) == 0, "%s", err);
    float *u0 = malloc(nu * sizeof(float)), *t0 = malloc(nt * sizeof(float));
    memcpy(u0, m->params[SD_UNET], nu * sizeof(float));
    memcpy(t0, m->params[SD_TEXT_ENCODER], nt * sizeof(float));

    d3_model px;
    tiny(&px, "base=8,mult=1,res=1,attn=none,size=8,classes=2", 1);
    d3_dmodel dp;
    dm_open_pixel(&dp, &px, err);
    dm_lora_opts lo = dm_lora_opts_default();
    lo.seed = 3;
    CHECK(dm_lora_attach(&dp, &lo, err) == -1 && strstr(err, "pixel"), "adapters on a pixel model: %s", err);
    dm_close(&dp);
    model_free(&px);

    CHECK(dm_lora_attach(&dm, &lo, err) == 0, "%s", err);
    const lora_set *ls = dm_lora(&dm);
    CHECK(ls && ls->n > 0 && dm.train.numel == ls->numel && dm_can_train(&dm, err) == 1, "no trainable set");
    CHECK(dm_lora_attach(&dm, &lo, err) == -1 && strstr(err, "already"), "a second set attached");
    CHECK(dm_lora_frozen(&dm, "x.safetensors", 1, err) == -1 && strstr(err, "before"), "frozen after trainable");
    printf("  %d adapters, %zu trainable floats (base UNet %zu)\n", ls->n, dm.train.numel, nu);
    /* up = 0: the adapted model starts as the base, bit for bit */
    CHECK(dm_traj_logp(&dm, tp, &o, 2, cc, c + Dc, traj, pol, NULL, err) == 0, "%s", err);
    CHECK(!memcmp(pol, base, sizeof(float) * 2 * K), "zero-initialised adapters change the model");
    dm_adapters_on(&dm, 0);
    CHECK(dm_traj_logp(&dm, tp, &o, 2, cc, c + Dc, traj, ref, NULL, err) == 0, "%s", err);
    dm_adapters_on(&dm, 1);

    d3_adamw opt;
    adamw_init(&opt, dm.train.numel);
    opt.lr = 3e-3f; /* large, so that a few steps move the loss */
    float *g = calloc(dm.train.numel, sizeof(float));
    d3po_opts dop = d3po_opts_default();
    float hh[2] = {1, -1};
    double first = 0, last = 0;
    for (int step = 0; step < 4; step++) {
        memset(g, 0, dm.train.numel * sizeof(float));
        double loss = dm_d3po_pair_backward(&dm, tp, g, &o, &dop, traj, traj + (K + 1) * D, c, c + Dc, ref,
                                            ref + K, NULL, hh, NULL, NULL, NULL, NULL, err);
        CHECK(isfinite(loss), "step %d: loss %g %s", step, loss, err);
        double gd = 0, gu = 0;
        for (int i = 0; i < ls->n; i++) {
            const lora_module *q = &ls->m[i];
            for (size_t e = 0; e < (size_t)q->rank * q->in; e++) gd += fabs(g[q->down + e]);
            for (size_t e = 0; e < (size_t)q->out * q->rank; e++) gu += fabs(g[q->up + e]);
        }
        /* the first step has up = 0: the down matrices get no gradient yet */
        CHECK(gu > 0 && (step == 0 ? gd == 0 : gd > 0), "step %d: |g| down %g up %g", step, gd, gu);
        if (step == 0) first = loss;
        last = loss;
        adamw_step(&opt, dm.train.params, g);
        dm_touch(&dm);
        CHECK(!memcmp(u0, m->params[SD_UNET], nu * sizeof(float)) &&
              !memcmp(t0, m->params[SD_TEXT_ENCODER], nt * sizeof(float)),
              "step %d: base weights changed", step);
    }
    printf("  D3PO loss over %d steps: %.6f -> %.6f\n", K, first, last);
    CHECK(first > 0 && fabs(first - K * log(2.0)) < 1e-6, "loss at theta = ref %g, expected K log 2", first);
    CHECK(last < first, "the loss did not fall: %g -> %g", first, last);
    /* adapters off: the base's bits; on: the trained policy */
    dm_adapters_on(&dm, 0);
    CHECK(dm_traj_logp(&dm, tp, &o, 2, cc, c + Dc, traj, pol, NULL, err) == 0, "%s", err);
    CHECK(!memcmp(pol, base, sizeof(float) * 2 * K), "adapters off differ from the base");
    dm_adapters_on(&dm, 1);
    CHECK(dm_traj_logp(&dm, tp, &o, 2, cc, c + Dc, traj, pol, NULL, err) == 0, "%s", err);
    CHECK(pol[0] - base[0] > pol[K] - base[K] || pol[1] - base[1] > pol[K + 1] - base[K + 1],
          "the preferred image's log-ratio did not rise over the other's");
    CHECK(memcmp(pol, base, sizeof(float) * 2 * K), "trained adapters give the base's numbers");

    /* files: both namings start a new set with these numbers; as a frozen
     * set the same adapters give the same bits */
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    for (int nm = 0; nm < 2; nm++) {
        snprintf(path, sizeof path, "%s/test_dmodel_lora_%d_%d.safetensors", tmp, (int)getpid(), nm);
        CHECK(dm_lora_save(&dm, path, nm ? LORA_DIFFUSERS : LORA_KOHYA, err) == 0, "%s", err);
        d3_dmodel d2;
        CHECK(dm_open_sd(&d2, dir, NULL, be, h, w, err) == 0, "%s", err);
        dm_lora_opts lf = dm_lora_opts_default();
        lf.from = path;
        CHECK(dm_lora_attach(&d2, &lf, err) == 0, "%s", err);
        /* alpha = rank: the diffusers naming's folded up is the same */
        CHECK(d2.train.numel == dm.train.numel &&
                  !memcmp(d2.train.params, dm.train.params, dm.train.numel * sizeof(float)),
              "naming %d: the loaded adapters differ", nm);
        dm_close(&d2);
        if (nm) continue;
        CHECK(dm_open_sd(&d2, dir, NULL, be, h, w, err) == 0, "%s", err);
        CHECK(dm_lora_frozen(&d2, path, 1.0f, err) == 0, "%s", err);
        lo.seed = 4;
        CHECK(dm_lora_attach(&d2, &lo, err) == 0, "%s", err);
        dm_adapters_on(&d2, 0); /* the reference: base + the frozen set */
        CHECK(dm_traj_logp(&d2, tp, &o, 2, cc, c + Dc, traj, ref, NULL, err) == 0, "%s", err);
        CHECK(!memcmp(pol, ref, sizeof(float) * 2 * K), "the frozen set differs from the trainable one");
        dm_close(&d2);
        unlink(path);
    }
    adamw_free(&opt);
    free(g); free(c); free(cc); free(x); free(traj); free(u0); free(t0);
    dm_close(&dm);
    tape_free(tp);
}

/* ddim_logprob_backward_pred against central differences of
 * ddim_logprob(ddim_step_pred(out)) for eps and v, with and without x0
 * clipping (elements whose x0 clamp boundary lies inside the difference
 * step are skipped: there the finite difference means nothing). */
static void test_pred_backward_fd(void) {
    enum { n = 64 };
    float xt[n], o[n], z[n], xp[n], mean[n], d[n], xn[n], mn[n];
    uint64_t st = 3;
    struct { double at, ap; } steps[3] = {{0.05, 0.1}, {0.5, 0.6}, {0.99, 0.999}};
    for (int pv = 0; pv < 2; pv++)
        for (int cl = 0; cl < 2; cl++)
            for (int c = 0; c < 3; c++) {
                double at = steps[c].at, ap = steps[c].ap;
                float clip = cl ? 1.0f : 0.0f;
                d3_rng r;
                rng_init(&r, st++, 0);
                rng_normal(&r, xt, n);
                rng_normal(&r, o, n);
                rng_normal(&r, z, n);
                double sg = ddim_step_pred(xp, mean, xt, o, z, at, ap, 1.0, pv, clip, n);
                ddim_logprob_backward_pred(d, 1.0, xt, o, xp, mean, sg, at, ap, pv, clip, n);
                int bad = 0, checked = 0;
                for (int i = 0; i < n; i++) {
                    /* logp is quadratic in out between clamp boundaries:
                     * a large step has no truncation error */
                    double h = 0.01, l[2];
                    int crosses = 0;
                    for (int k = 0; k < 2; k++) {
                        float save = o[i];
                        o[i] = save + (float)(k ? -h : h);
                        double sg2 = ddim_step_pred(xn, mn, xt, o, NULL, at, ap, 1.0, pv, clip, n);
                        l[k] = ddim_logprob(xp, mn, sg2, n);
                        float sa = (float)sqrt(at), s1 = (float)sqrt(1 - at);
                        for (int e = -1; e <= 1; e += 2) {
                            float x0 = pv ? sa * xt[i] - s1 * (save + (float)(e * h))
                                          : (xt[i] - s1 * (save + (float)(e * h))) / sa;
                            float x0c = pv ? sa * xt[i] - s1 * save : (xt[i] - s1 * save) / sa;
                            if (clip > 0 && ((fabsf(x0) > clip) != (fabsf(x0c) > clip))) crosses = 1;
                        }
                        o[i] = save;
                    }
                    if (crosses) continue;
                    checked++;
                    double num = (l[0] - l[1]) / (2 * h);
                    /* float32 means of size ~1: 1e-6 absolute + 1e-3 relative */
                    if (fabs(num - d[i]) > 1e-6 + 1e-3 * fabs(num) && bad++ < 3)
                        fprintf(stderr, "  pred_v %d clip %g step %d i=%d analytic %g numeric %g\n", pv,
                                clip, c, i, d[i], num);
                }
                CHECK(bad == 0 && checked > n / 2, "pred_v %d clip %g step %d: %d bad of %d", pv, clip, c,
                      bad, checked);
            }
}

int main(void) {
    RUN(test_pred_backward_fd);
    RUN(test_pixel_bit_identical);
    RUN(test_sd_bit_identical);
    RUN(test_sd_train);
    return t_done();
}
