/* tool_parity.c - writes a dump of the C engine for bench/parity.py, which
 * compares it against the PyTorch twin (bench/twin.py).
 *
 *   tool_parity DIR [--arch SPEC] [--seed N]
 *
 * DIR (created if missing) receives, in the format documented at the top of
 * bench/parity.py:
 *   model.safetensors  a model whose every parameter is random and non-zero
 *                      (conv/linear U(+-1/sqrt(fan_in)) like PyTorch, also
 *                      conv_out/conv2/proj; GroupNorm weight U(0.7,1.3),
 *                      bias U(-0.3,0.3); class_embed N(0,1))
 *   fwd.safetensors    forward of a batch of 3 (different timesteps and
 *                      classes, one of them the null class), the MSE loss
 *                      against a random target and every parameter gradient
 *   ddim.safetensors   one image sampled by ddim_sample (K=20, cfg 3, eta 1)
 *                      with x_T, the per-step noise (re-drawn from a copy of
 *                      the image's rng stream), the trajectory and log-probs
 *   d3po.safetensors   two trajectories from one x_T with different noise
 *                      streams, reference log-probs = ddim_traj_logp of the
 *                      same model minus offsets (most ratios inside the clamp,
 *                      two far outside), KL-penalty reference means (the
 *                      model's means + 0.3 sigma noise, kl 0.5), h = {+1,-1},
 *                      the per-timestep losses
 *                      and the gradient of their sum from d3po_pair_backward
 *                      (timesteps visited in a shuffled order)
 *   dpo.safetensors    Diffusion-DPO of two random final images at five fixed
 *                      (t, eps) draws against a perturbed copy of the model
 *                      (dpo_ref.safetensors): per-draw losses and the
 *                      gradient of their mean from dpo_pair_backward
 * Exit status 0, or 1 with a message on stderr. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "diffusion.h"
#include "model.h"
#include "ops.h"
#include "rng.h"
#include "safetensors.h"
#include "tape.h"
#include "unet.h"

#define TINY_ARCH "base=16,mult=1.2,res=1,attn=8,size=16,classes=3"

static void die(const char *msg) {
    fprintf(stderr, "tool_parity: %s\n", msg);
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Random non-zero parameters: every gradient path must carry signal. */
static void randomize_params(d3_model *m, uint64_t seed) {
    d3_rng r;
    rng_init(&r, seed, 0x7a17);
    const unet_layout *L = &m->L;
    for (int i = 0; i < L->nparams; i++) {
        const unet_param *p = &L->params[i];
        float *x = m->params + p->offset;
        if (strstr(p->name, "norm")) {
            int w = ends_with(p->name, ".weight");
            rng_uniform(&r, x, p->numel);
            for (size_t k = 0; k < p->numel; k++)
                x[k] = w ? 0.7f + 0.6f * x[k] : -0.3f + 0.6f * x[k];
        } else if (!strcmp(p->name, "class_embed.weight")) {
            rng_normal(&r, x, p->numel);
        } else {
            const unet_param *w = ends_with(p->name, ".bias") ? p - 1 : p;
            size_t fan_in = w->numel / (size_t)w->shape[0];
            float bound = 1.0f / sqrtf((float)fan_in);
            rng_uniform(&r, x, p->numel);
            for (size_t k = 0; k < p->numel; k++) x[k] = (2.0f * x[k] - 1.0f) * bound;
        }
    }
}

static char errbuf[D3_ERRLEN];

static void add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                const void *data) {
    if (st_writer_add(w, name, dt, ndim, shape, data, errbuf)) die(errbuf);
}

static void meta(st_writer *w, const char *key, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.17g", v);
    if (st_writer_meta(w, key, buf, errbuf)) die(errbuf);
}

/* grad.<name> for every parameter, with the parameter's shape. */
static void add_grads(st_writer *w, const unet_layout *L, const float *grads, char (*names)[192]) {
    for (int i = 0; i < L->nparams; i++) {
        const unet_param *p = &L->params[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        snprintf(names[i], 192, "grad.%s", p->name);
        add(w, names[i], ST_F32, p->ndim, shape, grads + p->offset);
    }
}

static void save(st_writer *w, const char *dir, const char *file) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (st_writer_save(w, path, errbuf)) die(errbuf);
    st_writer_free(w);
}

static void dump_fwd(const d3_model *m, d3_tape *tp, const char *dir, d3_rng *rng) {
    const d3_backend *be = tape_backend(tp);
    const int N = 3, S = m->L.arch.size, NC = m->L.arch.classes;
    const size_t D = 3 * (size_t)S * S;
    float *x = xmalloc(N * D * sizeof(float)), *target = xmalloc(N * D * sizeof(float));
    float *out = xmalloc(N * D * sizeof(float));
    float *grads = xmalloc(m->L.numel * sizeof(float));
    float t[3] = {17.0f, 480.0f, 951.0f};
    int y[3] = {1 % NC, NC, NC - 1}; /* a real class, the null class, another class */
    rng_normal(rng, x, N * D);
    rng_normal(rng, target, N * D);

    tape_reset(tp);
    tape_set_grad(tp, 1);
    d3_tensor *in = tape_input(tp, N, 3, S, S);
    be->upload(in->v, x, N * D * sizeof(float));
    d3_tensor *o = unet_forward(tp, &m->L, m->params, grads, in, t, y);
    if (o->numel != N * D) die("unet_forward: unexpected output size");
    float *tg = tape_alloc(tp, o->numel), *dout = tape_alloc(tp, o->numel);
    be->upload(tg, target, N * D * sizeof(float));
    float loss = be->mse_forward(o->v, tg, o->numel);
    be->mse_backward(dout, 1.0f, o->v, tg, o->numel);
    be->download(out, o->v, N * D * sizeof(float));
    tape_backward(tp, o, dout);

    st_writer *w = st_writer_new();
    int64_t sh4[4] = {N, 3, S, S}, sh1[1] = {N};
    add(w, "x", ST_F32, 4, sh4, x);
    add(w, "t", ST_F32, 1, sh1, t);
    add(w, "y", ST_I32, 1, sh1, y);
    add(w, "target", ST_F32, 4, sh4, target);
    add(w, "out", ST_F32, 4, sh4, out);
    add(w, "loss", ST_F32, 0, NULL, &loss);
    char (*names)[192] = xmalloc((size_t)m->L.nparams * 192);
    add_grads(w, &m->L, grads, names);
    save(w, dir, "fwd.safetensors");
    printf("tool_parity: fwd N=%d loss %.6f\n", N, loss);
    free(names); free(x); free(target); free(out); free(grads);
}

static void dump_ddim(const d3_model *m, d3_tape *tp, const char *dir, uint64_t seed) {
    const int S = m->L.arch.size, NC = m->L.arch.classes;
    const size_t D = 3 * (size_t)S * S;
    ddim_opts o = ddim_opts_default();
    o.steps = 20; o.cfg = 3.0f; o.eta = 1.0f;
    const int K = o.steps;
    int ts[D3_MAX_STEPS], prev[D3_MAX_STEPS];
    if (ddim_timesteps(m->sched.T, K, ts, prev, errbuf)) die(errbuf);
    float *xT = xmalloc(D * sizeof(float)), *x = xmalloc(D * sizeof(float));
    float *noise = xmalloc(K * D * sizeof(float)), *traj = xmalloc((K + 1) * D * sizeof(float));
    float logp[D3_MAX_STEPS];
    int cls = 2 % NC;
    d3_rng rx, rs, copy;
    rng_init(&rx, seed, 101);
    rng_normal(&rx, xT, D);
    rng_init(&rs, seed, 102);
    copy = rs;
    memcpy(x, xT, D * sizeof(float));
    if (ddim_sample(m, tp, &o, 1, &cls, x, &rs, traj, logp, errbuf)) die(errbuf);
    for (int k = 0; k < K; k++) rng_normal(&copy, noise + k * D, D); /* the k-th draw */
    if (memcmp(traj + K * D, x, D * sizeof(float))) die("ddim_sample: x_0 differs from traj[K]");

    st_writer *w = st_writer_new();
    int64_t shx[4] = {1, 3, S, S}, shn[5] = {K, 1, 3, S, S}, sht[5] = {K + 1, 1, 3, S, S};
    int64_t shK[1] = {K}, sh1[1] = {1};
    add(w, "xT", ST_F32, 4, shx, xT);
    add(w, "noise", ST_F32, 5, shn, noise);
    add(w, "y", ST_I32, 1, sh1, &cls);
    add(w, "timesteps", ST_I32, 1, shK, ts);
    add(w, "traj", ST_F32, 5, sht, traj);
    add(w, "logp", ST_F32, 1, shK, logp);
    meta(w, "cfg", o.cfg);
    meta(w, "eta", o.eta);
    char ks[16];
    snprintf(ks, sizeof ks, "%d", K);
    if (st_writer_meta(w, "steps", ks, errbuf)) die(errbuf);
    save(w, dir, "ddim.safetensors");
    printf("tool_parity: ddim K=%d cfg %g eta %g logp[0] %.4f logp[K-1] %.4f\n", K, o.cfg, o.eta,
           logp[0], logp[K - 1]);
    free(xT); free(x); free(noise); free(traj);
}

static void dump_d3po(const d3_model *m, d3_tape *tp, const char *dir, uint64_t seed) {
    const int S = m->L.arch.size, NC = m->L.arch.classes;
    const size_t D = 3 * (size_t)S * S;
    ddim_opts o = ddim_opts_default();
    o.steps = 20; o.cfg = 3.0f; o.eta = 1.0f;
    d3po_opts dp = d3po_opts_default();
    const int K = o.steps;
    int ts[D3_MAX_STEPS], prev[D3_MAX_STEPS];
    if (ddim_timesteps(m->sched.T, K, ts, prev, errbuf)) die(errbuf);
    int cls[2] = {NC - 1, NC - 1};
    float *x = xmalloc(2 * D * sizeof(float)), *traj = xmalloc(2 * (K + 1) * D * sizeof(float));
    float lp[2 * D3_MAX_STEPS], ref[2][D3_MAX_STEPS], loss[D3_MAX_STEPS];
    d3_rng rx, rngs[2], ro;
    rng_init(&rx, seed, 201);
    rng_normal(&rx, x, D);
    memcpy(x + D, x, D * sizeof(float)); /* shared x_T */
    rng_init(&rngs[0], seed, 202);
    rng_init(&rngs[1], seed, 203);
    if (ddim_sample(m, tp, &o, 2, cls, x, rngs, traj, NULL, errbuf)) die(errbuf);
    /* the KL penalty's reference means: the model's own means moved by
     * 0.3 sigma per element, so every step has a KL term of ~0.05 */
    float *rmean = xmalloc(2 * (size_t)K * D * sizeof(float));
    if (ddim_traj_logp_mean(m, tp, &o, 2, cls, traj, lp, rmean, errbuf)) die(errbuf);
    d3_rng rm;
    rng_init(&rm, seed, 205);
    float *zz = xmalloc(D * sizeof(float));
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < K; k++) {
            double sg = ddim_sigma(m->sched.abar[ts[k]], m->sched.abar[prev[k]], o.eta);
            rng_normal(&rm, zz, D);
            for (size_t j = 0; j < D; j++) rmean[((size_t)i * K + k) * D + j] += (float)(0.3 * sg * zz[j]);
        }
    free(zz);
    dp.kl = 0.5f;
    const float *rmp[2] = {rmean, rmean + (size_t)K * D};
    /* ref = logp - off, so ratio = exp(off): |off| in [0.02, 0.06] keeps the
     * ratio well inside [0.9, 1.1]; +-0.5 puts it far outside (no gradient). */
    rng_init(&ro, seed, 204);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < K; k++) {
            float u;
            rng_uniform(&ro, &u, 1);
            double off = (0.02 + 0.04 * u) * ((k + i) % 2 ? -1.0 : 1.0);
            if (i == 0 && k == 3) off = 0.5;
            if (i == 1 && k == 11) off = -0.5;
            ref[i][k] = (float)(lp[i * K + k] - off);
        }
    /* a shuffled visiting order: the sum of the gradients must not depend on it */
    int order[D3_MAX_STEPS];
    for (int k = 0; k < K; k++) order[k] = k;
    for (int k = K - 1; k > 0; k--) {
        int j = (int)rng_below(&ro, (uint32_t)(k + 1)), tmp = order[k];
        order[k] = order[j];
        order[j] = tmp;
    }
    float h[2] = {1.0f, -1.0f};
    float *grads = xmalloc(m->L.numel * sizeof(float));
    double total = d3po_pair_backward(m, tp, grads, &o, &dp, traj, traj + (K + 1) * D, cls[0],
                                      ref[0], ref[1], rmp, h, order, loss, NULL, NULL, errbuf);
    if (isnan(total)) die(errbuf);

    st_writer *w = st_writer_new();
    int64_t sht[5] = {K + 1, 1, 3, S, S}, shK[1] = {K}, sh1[1] = {1}, sh2[1] = {2};
    int64_t shm[5] = {K, 1, 3, S, S};
    add(w, "traj0", ST_F32, 5, sht, traj);
    add(w, "traj1", ST_F32, 5, sht, traj + (K + 1) * D);
    add(w, "timesteps", ST_I32, 1, shK, ts);
    add(w, "y", ST_I32, 1, sh1, cls);
    add(w, "ref_logp0", ST_F32, 1, shK, ref[0]);
    add(w, "ref_logp1", ST_F32, 1, shK, ref[1]);
    add(w, "ref_mean0", ST_F32, 5, shm, rmean);
    add(w, "ref_mean1", ST_F32, 5, shm, rmean + (size_t)K * D);
    add(w, "h", ST_F32, 1, sh2, h);
    add(w, "loss", ST_F32, 1, shK, loss);
    char (*names)[192] = xmalloc((size_t)m->L.nparams * 192);
    add_grads(w, &m->L, grads, names);
    meta(w, "cfg", o.cfg);
    meta(w, "eta", o.eta);
    meta(w, "beta", dp.beta);
    meta(w, "clip_eps", dp.clip_eps);
    meta(w, "kl", dp.kl);
    save(w, dir, "d3po.safetensors");
    printf("tool_parity: d3po K=%d loss sum %.6f\n", K, total);
    free(names); free(x); free(traj); free(grads); free(rmean);
}

/* Diffusion-DPO: the model as policy, a perturbed copy (saved as
 * dpo_ref.safetensors) as reference, two random final images, five fixed
 * (t, eps) draws (t 0, 3, 480, 990 and 999 across the schedule), image B
 * preferred; beta 0.05 (beta T = 50) so that |beta T s| ~ 1 and the
 * sigmoid is neither flat nor saturated. */
static void dump_dpo(const d3_model *m, d3_tape *tp, const char *dir, uint64_t seed) {
    const int S = m->L.arch.size, NC = m->L.arch.classes, n = 5;
    const size_t D = 3 * (size_t)S * S;
    d3_model ref;
    if (model_copy(&ref, m, errbuf)) die(errbuf);
    d3_rng r;
    rng_init(&r, seed, 301);
    float *pert = xmalloc(m->L.numel * sizeof(float));
    rng_normal(&r, pert, m->L.numel);
    for (size_t i = 0; i < m->L.numel; i++) ref.params[i] += 0.02f * pert[i];
    free(pert);
    char path[4096];
    snprintf(path, sizeof path, "%s/dpo_ref.safetensors", dir);
    if (model_save(&ref, path, NULL, errbuf)) die(errbuf);
    float *x0 = xmalloc(2 * D * sizeof(float)), *eps = xmalloc(n * D * sizeof(float));
    rng_uniform(&r, x0, 2 * D);
    for (size_t i = 0; i < 2 * D; i++) x0[i] = 2 * x0[i] - 1;
    rng_normal(&r, eps, n * D);
    int t[5] = {0, 3, 480, 990, 999}, cls = 1 % NC;
    float h[2] = {-1.0f, 1.0f}, loss[5];
    dpo_opts d = {.beta = 0.05f};
    float *grads = xmalloc(m->L.numel * sizeof(float));
    double L = dpo_pair_backward(m, &ref, tp, grads, &d, x0, x0 + D, cls, h, n, t, eps, loss, errbuf);
    if (isnan(L)) die(errbuf);

    st_writer *w = st_writer_new();
    int64_t shx[4] = {1, 3, S, S}, she[5] = {n, 1, 3, S, S}, shn[1] = {n}, sh1[1] = {1}, sh2[1] = {2};
    add(w, "x0a", ST_F32, 4, shx, x0);
    add(w, "x0b", ST_F32, 4, shx, x0 + D);
    add(w, "t", ST_I32, 1, shn, t);
    add(w, "eps", ST_F32, 5, she, eps);
    add(w, "y", ST_I32, 1, sh1, &cls);
    add(w, "h", ST_F32, 1, sh2, h);
    add(w, "loss", ST_F32, 1, shn, loss);
    char (*names)[192] = xmalloc((size_t)m->L.nparams * 192);
    add_grads(w, &m->L, grads, names);
    meta(w, "beta", d.beta);
    save(w, dir, "dpo.safetensors");
    printf("tool_parity: diffusion-dpo %d draws, losses %.4f %.4f %.4f %.4f %.4f (mean %.6f)\n", n,
           loss[0], loss[1], loss[2], loss[3], loss[4], L);
    free(names); free(x0); free(eps); free(grads);
    model_free(&ref);
}

int main(int argc, char **argv) {
    const char *dir = NULL, *spec = TINY_ARCH;
    uint64_t seed = 20240601;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc) spec = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            fprintf(stderr, "usage: tool_parity DIR [--arch SPEC] [--seed N]\n");
            return 1;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: tool_parity DIR [--arch SPEC] [--seed N]\n");
        return 1;
    }
    if (mkdir(dir, 0777) && errno != EEXIST) {
        fprintf(stderr, "tool_parity: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    ops_set_threads(0); /* OpenBLAS single-threaded under OpenMP */
    unet_arch a = unet_arch_default();
    if (unet_arch_parse(&a, spec, errbuf) || unet_arch_check(&a, errbuf)) die(errbuf);
    d3_model m;
    if (model_init(&m, &a, NULL, seed, errbuf)) die(errbuf);
    randomize_params(&m, seed);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (model_save(&m, path, NULL, errbuf)) die(errbuf);
    char as[256];
    unet_arch_format(&m.L.arch, as, sizeof as);
    printf("tool_parity: %s, %zu parameters (%d tensors) -> %s\n", as, m.L.numel, m.L.nparams, dir);

    d3_tape *tp = tape_new(backend_cpu());
    if (!tp) die("tape_new failed");
    d3_rng rng;
    rng_init(&rng, seed, 100);
    dump_fwd(&m, tp, dir, &rng);
    dump_ddim(&m, tp, dir, seed);
    dump_d3po(&m, tp, dir, seed);
    dump_dpo(&m, tp, dir, seed);
    tape_free(tp);
    model_free(&m);
    return 0;
}
