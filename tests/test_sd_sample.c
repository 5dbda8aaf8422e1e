/* test_sd_sample.c - the latent family's DDIM step (engine/diffusion.c
 * ddim_step_pred, ddim_guide) and scheduler plan (engine/sd/pipeline.c):
 * epsilon and v predictions of the same state give the same step, x0
 * clipping re-derives eps as diffusers does, no clipping is the default,
 * guidance, and the plan of SD's config (951..1, the last step's prev
 * alpha per set_alpha_to_one). Parity with diffusers itself is
 * tests/test_sd_load.sh (plan) and tests/test_sd_sample.sh (sampling). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion.h"
#include "rng.h"
#include "sd/pipeline.h"
#include "t.h"

#define N 257

static void test_eps_v_same_step(void) {
    float x0[N], e[N], xt[N], v[N], z[N], xa[N], ma[N], xb[N], mb[N], xc[N], mc[N];
    d3_rng r;
    rng_init(&r, 7, 0);
    rng_normal(&r, x0, N);
    rng_normal(&r, e, N);
    rng_normal(&r, z, N);
    double at = 0.3, ap = 0.6;
    float sa = (float)sqrt(at), s1 = (float)sqrt(1 - at);
    for (int i = 0; i < N; i++) {
        x0[i] *= 3; /* latents are not in [-1, 1] */
        xt[i] = sa * x0[i] + s1 * e[i];
        v[i] = sa * e[i] - s1 * x0[i];
    }
    double sg1 = ddim_step_pred(xa, ma, xt, e, z, at, ap, 1.0, 0, 0, N);
    double sg2 = ddim_step_pred(xb, mb, xt, v, z, at, ap, 1.0, 1, 0, N);
    CHECK(sg1 == sg2 && fabs(sg1 - ddim_sigma(at, ap, 1.0)) < 1e-15, "sigma %g %g", sg1, sg2);
    double md = 0, mx0 = 0;
    for (int i = 0; i < N; i++) {
        md = fmax(md, fabs(xa[i] - xb[i]));
        /* the mean from x0 and eps by the formula, in double */
        double sigma = sg1, mu = sqrt(ap) * x0[i] + sqrt(1 - ap - sigma * sigma) * e[i];
        mx0 = fmax(mx0, fabs(ma[i] - mu));
    }
    /* float32 arithmetic on values of size ~10: 1e-5 absolute */
    CHECK(md < 1e-5, "eps vs v step differ by %g", md);
    CHECK(mx0 < 1e-5, "mean differs from the formula by %g", mx0);
    /* no clipping by default: x0 beyond 1 survives */
    int beyond = 0;
    for (int i = 0; i < N; i++) beyond += fabsf(x0[i]) > 1;
    CHECK(beyond > 50, "test data has only %d |x0| > 1", beyond);
    /* clipping: x0 clamped, eps re-derived from it */
    double sigma = ddim_step_pred(xc, mc, xt, e, NULL, at, ap, 0.0, 0, 1.0f, N);
    CHECK(sigma == 0, "eta 0 sigma %g", sigma);
    double mc_err = 0;
    for (int i = 0; i < N; i++) {
        double c = fmin(1, fmax(-1, ((double)xt[i] - sqrt(1 - at) * e[i]) / sqrt(at)));
        double ee = ((double)xt[i] - sqrt(at) * c) / sqrt(1 - at);
        double mu = sqrt(ap) * c + sqrt(1 - ap) * ee;
        mc_err = fmax(mc_err, fabs(mc[i] - mu));
        CHECK(xc[i] == mc[i], "eta 0: x_prev != mean at %d", i);
    }
    CHECK(mc_err < 1e-5, "clipped step differs from diffusers' formula by %g", mc_err);
}

static void test_guide(void) {
    float out[4 * 3] = {1, 2, 3, 4, 5, 6, /* cond rows */ 0, 0, 0, 1, 1, 1 /* uncond */}, eps[6];
    ddim_guide(eps, out, 2, 4, 3, 7.5f);
    CHECK(eps[0] == 7.5f && eps[2] == 22.5f && eps[3] == 1 + 7.5f * 3, "guided %g %g %g", eps[0], eps[2], eps[3]);
    ddim_guide(eps, out, 2, 2, 3, 7.5f);
    CHECK(eps[0] == 1 && eps[5] == 6, "one pass copies the conditional rows");
}

static void test_plan(void) {
    sd_sched s = sd_sched_sd1();
    int ts[20];
    double at[20], ap[20];
    char err[D3_ERRLEN];
    CHECK(sd_sched_plan(&s, 20, ts, at, ap, err) == 0, "%s", err);
    float abar[1000];
    sd_sched_abar(&s, abar);
    CHECK(ts[0] == 951 && ts[1] == 901 && ts[19] == 1, "ts %d %d .. %d", ts[0], ts[1], ts[19]);
    CHECK(at[0] == abar[951] && ap[0] == abar[901], "step 0 alphas");
    CHECK(ap[19] == abar[0], "set_alpha_to_one false: last prev is abar[0]: %g", ap[19]);
    /* scaled_linear: beta_0 = 0.00085 */
    CHECK(fabs(abar[0] - (1 - 0.00085)) < 1e-7, "abar[0] %.9g", abar[0]);
    s.set_alpha_to_one = 1;
    s.steps_offset = 0;
    CHECK(sd_sched_plan(&s, 20, ts, at, ap, err) == 0, "%s", err);
    CHECK(ts[0] == 950 && ts[19] == 0 && ap[19] == 1.0, "offset 0: %d..%d, last prev %g", ts[0], ts[19], ap[19]);
    s.steps_offset = 60;
    CHECK(sd_sched_plan(&s, 20, ts, at, ap, err) == -1 && strstr(err, "beyond num_train_timesteps"), "'%s'", err);
    CHECK(sd_sched_plan(&s, 0, ts, at, ap, err) == -1, "0 steps accepted");
}

static void test_sched_json(void) {
    char err[D3_ERRLEN];
    sd_sched s;
    json_error_t je;
    json_t *j = json_loads("{\"_class_name\":\"PNDMScheduler\",\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,"
                           "\"beta_end\":0.012,\"set_alpha_to_one\":false,\"steps_offset\":1,\"skip_prk_steps\":true,"
                           "\"trained_betas\":null}", 0, &je);
    CHECK(sd_sched_from_json(&s, j, "s.json", err) == 0, "%s", err);
    /* missing keys take DDIMScheduler's defaults, as from_config gives them */
    CHECK(s.clip_sample == 1 && s.prediction == SD_PRED_EPSILON && s.steps_offset == 1 &&
              !strcmp(s.class_name, "PNDMScheduler"),
          "defaults");
    json_decref(j);
    static const struct { const char *json, *want; } bad[] = {
        {"{\"beta_schedule\":\"squaredcos_cap_v2\"}", "s.json: key 'beta_schedule': 'squaredcos_cap_v2' is not supported"},
        {"{\"prediction_type\":\"sample\"}", "key 'prediction_type'"},
        {"{\"timestep_spacing\":\"trailing\"}", "key 'timestep_spacing'"},
        {"{\"trained_betas\":[0.1]}", "key 'trained_betas'"},
        {"{\"thresholding\":true}", "key 'thresholding'"},
        {"{\"steps_offset\":-1}", "key 'steps_offset'"},
        {"{\"beta_start\":\"x\"}", "key 'beta_start': expected a number"},
        {"{\"beta_start\":0.5,\"beta_end\":0.1}", "beta_start <= beta_end"},
        {"{\"num_train_timesteps\":1.5}", "key 'num_train_timesteps'"},
        {"{\"set_alpha_to_one\":1}", "key 'set_alpha_to_one': expected true or false"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        j = json_loads(bad[i].json, 0, &je);
        int rc = sd_sched_from_json(&s, j, "s.json", err);
        CHECK(rc == -1 && strstr(err, bad[i].want), "%s: '%s'", bad[i].json, err);
        json_decref(j);
    }
}

int main(void) {
    RUN(test_eps_v_same_step);
    RUN(test_guide);
    RUN(test_plan);
    RUN(test_sched_json);
    return t_done();
}
