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
 * same text states and latents, and reports no trainable set. */
#include <stdlib.h>
#include <string.h>

#include "dmodel.h"
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

static void test_sd_bit_identical(void) {
    const char *dir = getenv("D3PO_SD_TINY");
    if (!dir || !*dir) {
        printf("  (D3PO_SD_TINY unset: the sd family is tested by test_dmodel_sd.sh)\n");
        return;
    }
    char err[D3_ERRLEN];
    const d3_backend *be = backend_cpu();
    d3_tape *tp = tape_new(be);
    d3_dmodel dm;
    int h = 8, w = 8;
    if (dm_open_sd(&dm, dir, NULL, be, h, w, err)) {
        CHECK(0, "dm_open_sd: %s", err);
        tape_free(tp);
        return;
    }
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
    return t_done();
}
