/* tool_sdtrain.c - LoRA D3PO on a Stable Diffusion-family pipeline through
 * the model interface (engine/dmodel.h), for tests/test_lora_d3po.sh and
 * the cost measurements in bench/results/.
 *
 *   tool_sdtrain traj PIPE LORA K OUT
 *       a pair sampled by PIPE's UNet with LORA's adapters attached as the
 *       trainable set (prompt "a photo of a cat", negative "", eta 1, cfg
 *       7.5, seed 5, latents of the UNet's sample_size): OUT (safetensors)
 *       holds traj0, traj1 [K+1, C, h, w], cond, uncond [77, D] (the text
 *       states d3po computed) and the metadata K, cfg, eta
 *   tool_sdtrain d3po PIPE LORA TRAJ REF
 *       the reference log-probs (adapters off), the policy's, the D3PO loss
 *       of h = {+1, -1} (beta 0.1, clamp 0.1) and every adapter gradient,
 *       through dm_d3po_pair_backward, against REF (tests/sd/d3po_ref.py:
 *       the same loss on diffusers + peft by autograd); tolerances printed
 *   tool_sdtrain dpo PIPE LORA TRAJ REF
 *       Diffusion-DPO on the pair's final latents (image 0 preferred) with
 *       REF's draws (t, eps) and beta (tests/sd/d3po_ref.py --dpo: the
 *       same loss on diffusers + peft): the loss per draw and every adapter
 *       gradient through dm_dpo_pair_backward (reference: the same UNet
 *       with the adapters off) against REF; central differences of the
 *       loss in a few adapter entries against the gradient; then a few
 *       d3po_train_dm updates with objective Diffusion-DPO on the pair
 *       (policy = reference = the model) lower the loss on REF's draws
 *   tool_sdtrain pair PIPE K [--size S] [--seed N] [--rank R]
 *       one labeled pair of LoRA D3PO, measured: sampling (K steps, CFG),
 *       reference log-probs, the D3PO backward of the K steps (one backward
 *       per timestep, gradients accumulated), clipping and AdamW; process
 *       CPU seconds and wall seconds of each part, the tape's peak arena
 *       (one step's tensors), and the peak resident memory. Last line:
 *       "d3po lora-pair K S SAMPLE_S REF_S TRAIN_S TOTAL_S ARENA_MB PEAK_MB"
 *   tool_sdtrain round PIPE [--size S] [--pairs N] [--steps K] [--objective d3po|diffusion-dpo]
 *       a labeling round of LoRA D3PO as `d3po auto` runs it, with the
 *       default config's settings (config_defaults, config_train_opts:
 *       cfg, eta, epochs, KL, beta, AdamW lr, Diffusion-DPO draws): N
 *       pairs (8) of S x S latents sampled with one prompt and decoded,
 *       then d3po_train_dm over them (the reference: the same UNet with
 *       its adapters off). Last line: "d3po lora-round OBJECTIVE K S N
 *       SAMPLE_S TRAIN_S PER_PAIR_S PEAK_MB" (wall seconds; peak RSS of
 *       the process so far)
 *   tool_sdtrain logratio SESSION ROUND...
 *       what the rounds of an sd session (d3po auto) did to its TRAINED
 *       pairs: every pair whose choice a trained round used (A or B; ties
 *       carry nothing), its trajectories teacher-forced through the
 *       session's model (cfg, eta and K of the pair's file; the pair's
 *       prompt, negative "") with each ROUND's adapters (session_sd_load,
 *       session_sd_read_round; the reference: the adapters off). Per pair
 *       and round: the margin, mean over steps of (log p_theta - log
 *       p_ref) of the preferred trajectory minus the same of the other,
 *       and the D3PO loss of the pair (mean over steps, beta and clamp of
 *       d3po_opts_default, no KL term). Last line per round: "d3po
 *       logratio ROUND NPAIRS MEAN_MARGIN MEAN_LOSS"
 *   tool_sdtrain overlap PIPE [--size S]
 *       sampling while a round trains, on the sd family (engine_opts
 *       overlap): through the engine (engine_start_dm, LoRA adapters of
 *       seed 1, K = 4 steps, CFG 7.5), a pair (seed 1) is labeled, then a
 *       group of 4 (seed 50) keeps the engine busy while a round on that
 *       pair (4 epochs, lr 0.01) and an early pair request (seed 2) are
 *       queued behind it. With overlap the seed-2 pair must arrive before
 *       the round ends, carry version 0 and be bit for bit the pair of an
 *       untrained engine; the round's adapters must be bit for bit those
 *       of the same run without overlap (where the seed-2 pair comes after
 *       the round, from version 1, and differs). Last line: "d3po overlap
 *       ok"
 * Exit status 0 when everything matches, 1 on a mismatch or an error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "config.h"
#include "d3po.h"
#include "dmodel.h"
#include "engine.h"
#include "optim.h"
#include "safetensors.h"
#include "sd/sdsample.h"
#include "session.h"
#include "session_sd.h"

static const char *prompt = "a photo of a cat";

static void fail(const char *what, const char *err) {
    fprintf(stderr, "tool_sdtrain: %s: %s\n", what, err);
    exit(1);
}

/* Opens PIPE at its sample_size (or size > 0) with LORA (NULL: default
 * adapters of seed) as the trainable set, and encodes the prompts. */
static void open_model(d3_dmodel *dm, const char *pipe, const char *lora, int size, uint64_t seed,
                       int rank, float **cond) {
    char err[D3_ERRLEN];
    sd_pipeline p;
    if (sd_pipeline_open(&p, pipe, NULL, err)) fail(pipe, err);
    int s = size > 0 ? size : p.unet.sample_size;
    sd_pipeline_close(&p);
    if (dm_open_sd(dm, pipe, NULL, backend_cpu(), s, s, err)) fail(pipe, err);
    dm_lora_opts lo = dm_lora_opts_default();
    lo.from = lora;
    lo.seed = seed;
    lo.rank = rank;
    lo.alpha = (float)rank;
    if (dm_lora_attach(dm, &lo, err)) fail(lora ? lora : "adapters", err);
    *cond = malloc(2 * dm->cond_floats * sizeof(float));
    if (dm_condition(dm, prompt, *cond, err) || dm_condition(dm, "", *cond + dm->cond_floats, err))
        fail("prompt", err);
}

static ddim_opts opts(int K) {
    ddim_opts o = ddim_opts_default();
    o.steps = K;
    o.eta = 1.0;
    o.cfg = 7.5f;
    return o;
}

static int cmd_traj(const char *pipe, const char *lora, int K, const char *out) {
    char err[D3_ERRLEN], kbuf[16];
    d3_dmodel dm;
    float *c;
    open_model(&dm, pipe, lora, 0, 0, 4, &c);
    d3_tape *tp = tape_new(backend_cpu());
    ddim_opts o = opts(K);
    size_t D = dm.D;
    float *x = malloc(2 * D * sizeof(float)), *traj = malloc(2 * (K + 1) * D * sizeof(float));
    if (dm_sample_pair(&dm, tp, &o, c, c + dm.cond_floats, 5, 1, x, traj, NULL, err)) fail("sample", err);
    st_writer *w = st_writer_new();
    int64_t ts[4] = {K + 1, dm.C, dm.h, dm.w}, cs[2] = {77, (int64_t)dm.cond_floats / 77};
    snprintf(kbuf, sizeof kbuf, "%d", K);
    if (st_writer_add(w, "traj0", ST_F32, 4, ts, traj, err) ||
        st_writer_add(w, "traj1", ST_F32, 4, ts, traj + (K + 1) * D, err) ||
        st_writer_add(w, "cond", ST_F32, 2, cs, c, err) ||
        st_writer_add(w, "uncond", ST_F32, 2, cs, c + dm.cond_floats, err) ||
        st_writer_meta(w, "K", kbuf, err) || st_writer_meta(w, "cfg", "7.5", err) ||
        st_writer_meta(w, "eta", "1.0", err) || st_writer_save(w, out, err))
        fail(out, err);
    printf("tool_sdtrain traj: %s, %d steps, latents %dx%dx%d -> %s\n", pipe, K, dm.C, dm.h, dm.w, out);
    st_writer_free(w);
    free(x); free(traj); free(c);
    tape_free(tp);
    dm_close(&dm);
    return 0;
}

static const float *tensor(const st_file *f, const char *name, size_t n) {
    const st_tensor *t = st_find(f, name);
    if (!t || t->dtype != ST_F32 || t->nbytes != n * sizeof(float)) fail(name, "missing, not F32 or of another size");
    return (const float *)t->data;
}

/* Counts elements of a [n] beyond atol + rtol |b|, printing the worst. */
static int check(const char *what, const float *a, const float *b, size_t n, double atol, double rtol,
                 const char *why) {
    size_t bad = 0, wi = 0;
    double worst = 0, over = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]), lim = atol + rtol * fabs(b[i]);
        bad += !(d <= lim);
        if (d > worst) worst = d;
        if (!(d - lim <= over)) { over = d - lim; wi = i; }
    }
    printf("  %s (%zu): max |diff| %.3g; tolerance %.0e + %.0e |ref| (%s); worst [%zu] %.7g vs %.7g: %s\n",
           what, n, worst, atol, rtol, why, wi, a[wi], b[wi], bad ? "MISMATCH" : "ok");
    return bad != 0;
}

/* Every adapter gradient g (lora.h's layout) against REF's grad.<module>.
 * down / .up: each element within atol of the largest reference gradient
 * + rtol of its own. Prints the worst; nonzero on a mismatch or when every
 * reference gradient is 0 (nothing was compared). */
static int check_grads(const lora_set *s, const float *g, const st_file *rf, double atol, double rtol,
                       const char *why) {
    double gmax = 0, worst = 0;
    int bad = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < s->n; i++)
            for (int k = 0; k < 2; k++) {
                const lora_module *m = &s->m[i];
                char name[SD_NAME_MAX + 16];
                snprintf(name, sizeof name, "grad.%s.%s", m->name, k ? "up" : "down");
                size_t n = k ? (size_t)m->out * m->rank : (size_t)m->rank * m->in;
                const float *a = g + (k ? m->up : m->down), *b = tensor(rf, name, n);
                for (size_t e = 0; e < n; e++) {
                    double dd = fabs((double)a[e] - b[e]);
                    if (!pass) {
                        gmax = fmax(gmax, fabs(b[e]));
                        continue;
                    }
                    worst = fmax(worst, dd);
                    if (!(dd <= atol * gmax + rtol * fabs(b[e])) && bad++ < 5)
                        printf("    %s[%zu]: ours %.7g ref %.7g\n", name, e, a[e], b[e]);
                }
            }
    printf("  adapter gradients (%d matrices): max |ref| %.3g, max |diff| %.3g (%.2g of max |ref|); "
           "tolerance %.0e max|ref| + %.0e |ref| (%s): %s\n",
           2 * s->n, gmax, worst, worst / gmax, atol, rtol, why, bad ? "MISMATCH" : "ok");
    return bad != 0 || !(gmax > 0);
}

/* The parity commands' inputs: PIPE with LORA's adapters, the prompts'
 * text states in *c, the pair TRAJ (its step count K) and the reference
 * REF. */
static int open_parity(d3_dmodel *dm, float **c, st_file *tf, st_file *rf, const char *pipe,
                       const char *lora, const char *trajf, const char *reff) {
    char err[D3_ERRLEN];
    open_model(dm, pipe, lora, 0, 0, 4, c);
    if (st_load(tf, trajf, err)) fail(trajf, err);
    if (st_load(rf, reff, err)) fail(reff, err);
    const char *ks = st_meta(tf, "K");
    int K = ks ? atoi(ks) : 0;
    if (K < 1 || K > D3_MAX_STEPS) fail(trajf, "no K in the metadata");
    return K;
}

static int cmd_d3po(const char *pipe, const char *lora, const char *trajf, const char *reff) {
    char err[D3_ERRLEN];
    d3_dmodel dm;
    float *c;
    st_file tf, rf;
    int K = open_parity(&dm, &c, &tf, &rf, pipe, lora, trajf, reff);
    size_t D = dm.D, Dc = dm.cond_floats;
    const float *t0 = tensor(&tf, "traj0", (K + 1) * D), *t1 = tensor(&tf, "traj1", (K + 1) * D);
    const float *cond = tensor(&tf, "cond", Dc), *unc = tensor(&tf, "uncond", Dc);
    d3_tape *tp = tape_new(backend_cpu());
    ddim_opts o = opts(K);
    float ref[2 * D3_MAX_STEPS], lp[2 * D3_MAX_STEPS], lk[D3_MAX_STEPS];
    dm_adapters_on(&dm, 0);
    if (dm_traj_logp(&dm, tp, &o, 1, cond, unc, t0, ref, NULL, err) ||
        dm_traj_logp(&dm, tp, &o, 1, cond, unc, t1, ref + K, NULL, err))
        fail("reference log-probs", err);
    dm_adapters_on(&dm, 1);
    float *g = calloc(dm.train.numel, sizeof(float));
    d3po_opts d = d3po_opts_default();
    float h[2] = {1, -1};
    double loss = dm_d3po_pair_backward(&dm, tp, g, &o, &d, t0, t1, cond, unc, ref, ref + K, NULL, h,
                                        NULL, lk, lp, lp + K, err);
    if (!isfinite(loss)) fail("dm_d3po_pair_backward", err);
    printf("tool_sdtrain d3po: %s, %d steps, %d adapters, loss %.9g\n", pipe, K, dm_lora(&dm)->n, loss);
    int clamped = 0;
    for (int k = 0; k < 2 * K; k++) clamped += fabs(lp[k] - ref[k]) > log(1.1);
    printf("  log-ratios beyond the clamp: %d of %d\n", clamped, 2 * K);
    int bad = 0;
    /* log-probs: means over D of squares scaled by 1/sigma^2 (last step
     * sigma ~0.1 at K=4); float32 UNets in two summation orders differ by
     * ~1e-6 relative in eps, which moves a log-prob by ~1e-5 (measured
     * <= 7e-6 on the tiny sd1 and sd2 pipelines) */
    bad |= check("reference log-probs", ref, tensor(&rf, "ref", 2 * K), 2 * K, 5e-5, 1e-5,
                 "float32 UNet, 1/sigma^2 magnification");
    bad |= check("policy log-probs", lp, tensor(&rf, "logp", 2 * K), 2 * K, 5e-5, 1e-5, "as above");
    float lr[2 * D3_MAX_STEPS], rlr[2 * D3_MAX_STEPS];
    const float *rl = tensor(&rf, "logp", 2 * K), *rr = tensor(&rf, "ref", 2 * K);
    for (int k = 0; k < 2 * K; k++) {
        lr[k] = lp[k] - ref[k];
        rlr[k] = rl[k] - rr[k];
    }
    /* the log-ratios D3PO sees: the same errors, where they matter */
    bad |= check("log-ratios", lr, rlr, 2 * K, 5e-5, 1e-3, "the two log-prob errors above");
    /* the loss is -log sigmoid(beta (lr0 - lr1)) ~ log 2: beta times the
     * log-ratio errors above */
    bad |= check("loss per step", lk, tensor(&rf, "loss", K), K, 1e-5, 1e-5, "beta x log-ratio error");
    /* gradients: dloss/dlogp (~beta/2) x the UNet's backward through
     * 1/sigma^2-scaled residuals, float32 on both sides: each element
     * within 1e-4 of the largest reference gradient + 2e-3 of its own
     * (measured: ~5e-6 of the largest) */
    bad |= check_grads(dm_lora(&dm), g, &rf, 1e-4, 2e-3, "float32 UNet backward");
    st_free(&tf);
    st_free(&rf);
    free(g); free(c);
    tape_free(tp);
    dm_close(&dm);
    return bad;
}

/* The entries of g with the largest |g| in the first and last adapter's
 * down and up matrices: where a central difference is well above the
 * float32 noise of the loss. */
static int fd_entries(const lora_set *s, const float *g, size_t *idx) {
    int n = 0;
    const lora_module *ms[2] = {&s->m[0], &s->m[s->n - 1]};
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++) {
            const lora_module *m = ms[i];
            size_t o = k ? m->up : m->down, c = k ? (size_t)m->out * m->rank : (size_t)m->rank * m->in;
            size_t best = o;
            for (size_t e = o; e < o + c; e++)
                if (fabs(g[e]) > fabs(g[best])) best = e;
            idx[n++] = best;
        }
    return n;
}

static int cmd_dpo(const char *pipe, const char *lora, const char *trajf, const char *reff) {
    char err[D3_ERRLEN];
    d3_dmodel dm;
    float *c;
    st_file tf, rf;
    int K = open_parity(&dm, &c, &tf, &rf, pipe, lora, trajf, reff);
    const char *bs = st_meta(&rf, "beta");
    if (!bs) fail(reff, "no beta in the metadata");
    size_t D = dm.D, Dc = dm.cond_floats;
    const st_tensor *tt = st_find(&rf, "t");
    if (!tt || tt->dtype != ST_F32 || tt->nbytes < sizeof(float) || tt->nbytes > 64 * sizeof(float))
        fail(reff, "t: missing, not F32 or not 1..64 draws");
    int N = (int)(tt->nbytes / sizeof(float)), t[64];
    for (int j = 0; j < N; j++) t[j] = (int)((const float *)tt->data)[j];
    const float *eps = tensor(&rf, "eps", N * D), *rl = tensor(&rf, "loss", N);
    float *traj = malloc(2 * (K + 1) * D * sizeof(float));
    memcpy(traj, tensor(&tf, "traj0", (K + 1) * D), (K + 1) * D * sizeof(float));
    memcpy(traj + (K + 1) * D, tensor(&tf, "traj1", (K + 1) * D), (K + 1) * D * sizeof(float));
    memcpy(c, tensor(&tf, "cond", Dc), Dc * sizeof(float));
    const float *x0a = traj + K * D, *x0b = traj + (2 * K + 1) * D;
    d3_tape *tp = tape_new(backend_cpu());
    dpo_opts d = {.beta = strtof(bs, NULL)};
    float h[2] = {1, -1}, lj[64];
    size_t numel = dm.train.numel;
    float *g = calloc(numel, sizeof(float));
    double loss = dm_dpo_pair_backward(&dm, &dm, tp, g, &d, x0a, x0b, c, h, N, t, eps, lj, err);
    if (!isfinite(loss)) fail("dm_dpo_pair_backward", err);
    printf("tool_sdtrain dpo: %s, %d draws, beta T %g, %s, loss %.9g\n", pipe, N, d.beta * dm.T,
           dm.pred_v ? "v target" : "eps target", loss);
    int bad = 0;
    /* the loss: -log sigmoid(-beta T s), s a difference of mean squared
     * errors (~1) of float32 UNets summed in two orders (~1e-7 relative
     * each): beta T = 500 turns that into ~1e-4 of the loss */
    bad |= check("loss per draw", lj, rl, N, 5e-4, 1e-3, "beta T x float32 errors of the MSEs");
    /* measured ~6e-5 of the largest gradient on sd1 and sd2 */
    bad |= check_grads(dm_lora(&dm), g, &rf, 3e-4, 3e-3, "float32 UNet backward, beta T x MSE rounding");
    /* central differences of the loss (double sums of float32 UNet
     * outputs) in the largest-gradient entries of four matrices */
    size_t idx[4];
    int nf = fd_entries(dm_lora(&dm), g, idx), fbad = 0;
    double gmax = 0, worst = 0;
    for (size_t e = 0; e < numel; e++) gmax = fmax(gmax, fabs(g[e]));
    for (int f = 0; f < nf; f++) {
        float keep = dm.train.params[idx[f]];
        double hh = 2e-2 * fmax(fabs(keep), 1.0), lpm[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            dm.train.params[idx[f]] = (float)(keep + (sgn ? -hh : hh));
            dm_touch(&dm);
            lpm[sgn] = dm_dpo_pair_backward(&dm, &dm, tp, NULL, &d, x0a, x0b, c, h, N, t, eps, NULL, err);
        }
        dm.train.params[idx[f]] = keep;
        dm_touch(&dm);
        double num = (lpm[0] - lpm[1]) / (2 * hh), dd = fabs(num - g[idx[f]]);
        worst = fmax(worst, dd / fmax(fabs(num), 1e-30));
        int ok = dd <= 3e-2 * fabs(num) + 1e-3 * gmax;
        fbad += !ok;
        printf("    [%zu] analytic %.6g numeric %.6g (h %.3g)%s\n", idx[f], g[idx[f]], num, hh,
               ok ? "" : " MISMATCH");
    }
    printf("  central differences (%d entries): worst relative %.3g; tolerance 3e-2 relative + 1e-3 "
           "max|g| (float32 UNet in the loss): %s\n", nf, worst, fbad ? "MISMATCH" : "ok");
    bad |= fbad != 0;
    /* training: d3po_train_dm with the Diffusion-DPO objective on this
     * pair, the model its own reference (adapters off) */
    d3po_pair p = {.cls = -1, .cond = c, .traj = {traj, traj + (K + 1) * D}, .h = {1, -1}, .ref_tag = -1};
    d3po_train_opts to = d3po_train_opts_default();
    to.sample = opts(K);
    to.objective = D3PO_OBJ_DPO;
    to.dpo = d;
    to.dpo_draws = 4;
    to.epochs = 4;
    d3_adamw opt;
    adamw_init(&opt, numel);
    opt.lr = 1e-3f;
    d3_rng rng;
    rng_init(&rng, 7, 0);
    double tl = d3po_train_dm(&dm, &dm, 0, tp, &opt, &p, 1, &to, &rng, NULL, NULL, err);
    if (!isfinite(tl)) fail("d3po_train_dm (Diffusion-DPO)", err);
    double after = dm_dpo_pair_backward(&dm, &dm, tp, NULL, &d, x0a, x0b, c, h, N, t, eps, NULL, err);
    int moved = after < loss - 1e-3;
    printf("  d3po_train_dm (diffusion-dpo, 4 updates of 4 draws, lr 1e-3): mean loss %.6f; loss on "
           "REF's draws %.6f -> %.6f: %s\n", tl, loss, after, moved ? "ok" : "DID NOT DROP");
    bad |= !moved;
    adamw_free(&opt);
    d3po_pairs_free_cache(&p, 1);
    st_free(&tf);
    st_free(&rf);
    free(g); free(c); free(traj);
    tape_free(tp);
    dm_close(&dm);
    return bad;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double cpu(void) { return (double)clock() / CLOCKS_PER_SEC; }

static double peak_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

static int cmd_pair(const char *pipe, int K, int size, uint64_t seed, int rank) {
    char err[D3_ERRLEN];
    d3_dmodel dm;
    float *c;
    open_model(&dm, pipe, NULL, size, seed, rank, &c);
    double mb_loaded = peak_mb();
    d3_tape *tp = tape_new(backend_cpu());
    ddim_opts o = opts(K);
    size_t D = dm.D, Dc = dm.cond_floats;
    float *x = malloc(2 * D * sizeof(float)), *traj = malloc(2 * (K + 1) * D * sizeof(float));
    float ref[2 * D3_MAX_STEPS];
    double w0 = now(), c0 = cpu();
    if (dm_sample_pair(&dm, tp, &o, c, c + Dc, seed, 1, x, traj, NULL, err)) fail("sample", err);
    double w1 = now(), c1 = cpu();
    float *cc = malloc(2 * Dc * sizeof(float));
    memcpy(cc, c, Dc * sizeof(float));
    memcpy(cc + Dc, c, Dc * sizeof(float));
    dm_adapters_on(&dm, 0);
    if (dm_traj_logp(&dm, tp, &o, 2, cc, c + Dc, traj, ref, NULL, err)) fail("reference", err);
    dm_adapters_on(&dm, 1);
    double w2 = now(), c2 = cpu();
    size_t arena_inf = tape_arena_bytes(tp);
    float *g = calloc(dm.train.numel, sizeof(float));
    d3_adamw opt;
    adamw_init(&opt, dm.train.numel);
    d3po_opts d = d3po_opts_default();
    float h[2] = {1, -1}, *refs[2] = {ref, ref + K};
    double loss = dm_d3po_pair_backward(&dm, tp, g, &o, &d, traj, traj + (K + 1) * D, c, c + Dc,
                                        refs[0], refs[1], NULL, h, NULL, NULL, NULL, NULL, err);
    if (!isfinite(loss)) fail("dm_d3po_pair_backward", err);
    grad_clip(g, dm.train.numel, 1.0);
    adamw_step(&opt, dm.train.params, g);
    dm_touch(&dm);
    double w3 = now(), c3 = cpu();
    double arena = tape_arena_bytes(tp) / 1048576.0, peak = peak_mb();
    printf("tool_sdtrain pair: %s, latents %dx%dx%d, K=%d, %zu trainable floats, loss %.6f\n", pipe,
           dm.C, dm.h, dm.w, K, dm.train.numel, loss);
    printf("  sample %.3f s wall (%.3f s CPU), reference log-probs %.3f s (%.3f), D3PO backward + "
           "AdamW %.3f s (%.3f)\n", w1 - w0, c1 - c0, w2 - w1, c2 - c1, w3 - w2, c3 - c2);
    printf("  tape arena: %.1f MB inference, %.1f MB training step; peak RSS %.1f MB (%.1f MB after "
           "loading)\n", arena_inf / 1048576.0, arena, peak, mb_loaded);
    printf("d3po lora-pair %d %d %.4f %.4f %.4f %.4f %.1f %.1f\n", K, dm.h, w1 - w0, w2 - w1, w3 - w2,
           w3 - w0, arena, peak);
    adamw_free(&opt);
    free(g); free(c); free(cc); free(x); free(traj);
    tape_free(tp);
    dm_close(&dm);
    return 0;
}

static int cmd_round(const char *pipe, int size, int npairs, int K, int objective) {
    char err[D3_ERRLEN];
    d3_config cfg;
    config_defaults(&cfg);
    cfg.train.objective = objective;
    if (K > 0) cfg.sampler.steps = K;
    d3po_train_opts to = config_train_opts(&cfg);
    K = to.sample.steps;
    d3_dmodel dm;
    float *c;
    open_model(&dm, pipe, NULL, size, 1, 4, &c);
    d3_tape *tp = tape_new(backend_cpu());
    size_t D = dm.D;
    float *traj = malloc((size_t)npairs * 2 * (K + 1) * D * sizeof(float)), *x = malloc(2 * D * sizeof(float));
    uint8_t *rgb = malloc((size_t)2 * dm.img_h * dm.img_w * 3);
    d3po_pair *pairs = calloc(npairs, sizeof *pairs);
    double w0 = now();
    for (int i = 0; i < npairs; i++) {
        float *tr = traj + (size_t)i * 2 * (K + 1) * D;
        if (dm_sample_pair(&dm, tp, &to.sample, c, c + dm.cond_floats, 100 + i, 1, x, tr, NULL, err) ||
            dm_decode(&dm, tp, x, 2, rgb, err))
            fail("sample", err);
        pairs[i] = (d3po_pair){.cls = -1, .cond = c, .traj = {tr, tr + (K + 1) * D},
                               .h = {i % 2 ? -1.0f : 1.0f, i % 2 ? 1.0f : -1.0f}, .ref_tag = -1};
    }
    double w1 = now();
    d3_adamw opt;
    adamw_init(&opt, dm.train.numel);
    opt.lr = (float)cfg.d3po.lr;
    opt.wd = (float)cfg.d3po.weight_decay;
    d3_rng rng;
    rng_init(&rng, 3, 0);
    double loss = d3po_train_dm(&dm, &dm, 0, tp, &opt, pairs, npairs, &to, &rng, NULL, NULL, err);
    if (!isfinite(loss)) fail("d3po_train_dm", err);
    double w2 = now(), peak = peak_mb();
    const char *on = objective == D3PO_OBJ_DPO ? "diffusion-dpo" : "d3po";
    printf("tool_sdtrain round: %s, %s, latents %dx%dx%d (images %dx%d), K=%d, cfg %g, %d pairs, %d "
           "epochs, loss %.6f\n", pipe, on, dm.C, dm.h, dm.w, dm.img_w, dm.img_h, K, to.sample.cfg,
           npairs, to.epochs, loss);
    printf("  sampling + decoding %.3f s, training %.3f s: %.3f s per pair; tape arena %.1f MB, peak RSS "
           "%.1f MB\n", w1 - w0, w2 - w1, (w2 - w0) / npairs, tape_arena_bytes(tp) / 1048576.0, peak);
    printf("d3po lora-round %s %d %d %d %.4f %.4f %.4f %.1f\n", on, K, dm.h, npairs, w1 - w0, w2 - w1,
           (w2 - w0) / npairs, peak);
    adamw_free(&opt);
    d3po_pairs_free_cache(pairs, npairs);
    free(pairs); free(traj); free(x); free(rgb); free(c);
    tape_free(tp);
    dm_close(&dm);
    return 0;
}

/* tool_sdtrain logratio: see the top of the file. */
static int cmd_logratio(const char *dir, int nr, char **rounds) {
    char err[D3_ERRLEN], path[4096];
    d3_session s;
    if (session_open_readonly(dir, &s, err)) fail(dir, err);
    if (s.family != SESSION_FAMILY_SD) fail(dir, "not a Stable Diffusion-family session");
    d3_dmodel dm;
    if (session_sd_load(&s, backend_cpu(), 0, &dm, NULL, err)) fail(dir, err);
    size_t D = dm.D, Dc = dm.cond_floats;
    int n = 0;
    long *ids = malloc(s.next_pair * sizeof(long) + 1);
    for (long id = 0; id < s.next_pair; id++) {
        int c = session_trained_choice(&s, id);
        if (c == SESSION_A || c == SESSION_B) ids[n++] = id;
    }
    if (!n) fail(dir, "no trained pair labeled A or B");
    session_traj *tr = calloc(n, sizeof *tr);
    float *cond = malloc((size_t)n * Dc * sizeof(float)), *unc = malloc(Dc * sizeof(float));
    float *ref = malloc((size_t)n * 2 * D3_MAX_STEPS * sizeof(float));
    if (dm_condition(&dm, "", unc, err)) fail("the empty prompt", err);
    d3_tape *tp = tape_new(backend_cpu());
    /* the reference log-probs (adapters off), preferred trajectory first */
    dm_adapters_on(&dm, 0);
    for (int i = 0; i < n; i++) {
        session_traj *t = &tr[i];
        session_pair_path(&s, ids[i], "traj", path, sizeof path);
        if (session_read_traj_n(path, t, err)) fail(path, err);
        if (t->N != 2 || t->family != SESSION_FAMILY_SD || (size_t)t->C * t->h * t->w != D)
            fail(path, "not a pair of this session's latents");
        if (session_trained_choice(&s, ids[i]) == SESSION_B) {
            float *x = t->traj[0];
            t->traj[0] = t->traj[1];
            t->traj[1] = x;
        }
        if (dm_condition(&dm, t->prompt ? t->prompt : "", cond + (size_t)i * Dc, err)) fail(path, err);
        ddim_opts o = {.steps = t->K, .eta = t->eta, .cfg = t->cfg};
        for (int k = 0; k < 2; k++)
            if (dm_traj_logp(&dm, tp, &o, 1, cond + (size_t)i * Dc, unc, t->traj[k],
                             ref + ((size_t)i * 2 + k) * D3_MAX_STEPS, NULL, err))
                fail(path, err);
    }
    dm_adapters_on(&dm, 1);
    d3po_opts d = d3po_opts_default();
    float h[2] = {1, -1}, lp[2][D3_MAX_STEPS];
    for (int r = 0; r < nr; r++) {
        char *end;
        long round = strtol(rounds[r], &end, 10);
        if (*end || end == rounds[r] || round < 0 || round > s.round) fail(rounds[r], "not a trained round of the session");
        if (session_sd_read_round(&s, (int)round, &dm, NULL, err)) fail(rounds[r], err);
        dm_touch(&dm);
        double sm = 0, sl = 0;
        for (int i = 0; i < n; i++) {
            const session_traj *t = &tr[i];
            ddim_opts o = {.steps = t->K, .eta = t->eta, .cfg = t->cfg};
            const float *r0 = ref + (size_t)i * 2 * D3_MAX_STEPS, *r1 = r0 + D3_MAX_STEPS;
            double loss = dm_d3po_pair_backward(&dm, tp, NULL, &o, &d, t->traj[0], t->traj[1],
                                                cond + (size_t)i * Dc, unc, r0, r1, NULL, h, NULL,
                                                NULL, lp[0], lp[1], err);
            if (!isfinite(loss)) fail("dm_d3po_pair_backward", err);
            double m = 0;
            for (int k = 0; k < t->K; k++) m += ((double)lp[0][k] - r0[k]) - ((double)lp[1][k] - r1[k]);
            m /= t->K;
            loss /= t->K;
            printf("  round %ld pair %ld (%s preferred, K %d): margin %+.6g, loss %.6f\n", round, ids[i],
                   session_choice_name(session_trained_choice(&s, ids[i])), t->K, m, loss);
            sm += m;
            sl += loss;
        }
        printf("d3po logratio %ld %d %.9g %.9g\n", round, n, sm / n, sl / n);
    }
    for (int i = 0; i < n; i++) session_traj_free(&tr[i]);
    free(tr); free(ids); free(cond); free(unc); free(ref);
    tape_free(tp);
    dm_close(&dm);
    session_close(&s);
    return 0;
}

/* ---- overlap: see the top of the file ---- */

typedef struct {
    float *params; /* the trained round's adapters */
    size_t n;
    int saved;
} ov_save;

static int ov_save_round(void *ctx, d3_dmodel *policy, const d3_state *st, int round, char *err) {
    ov_save *s = ctx;
    if (policy->train.numel != s->n)
        return d3_errf(err, "adapters: %zu floats, wanted %zu", policy->train.numel, s->n);
    memcpy(s->params, policy->train.params, s->n * sizeof(float));
    s->saved = 1;
    return 0;
}

/* Waits for the engine's next event; fails after ~120 s without one (a hung
 * engine, not a slow one). */
static void ov_next(d3_engine *e, d3_event *ev) {
    for (int idle = 0; idle < 1200; idle++) {
        if (engine_poll(e, ev)) {
            if (ev->kind == EV_ERROR) fail("engine", ev->msg);
            return;
        }
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    fail("engine", "no event for 120 s");
}

/* One run: the labeled seed-1 pair, then (train) the blocker group, the
 * round and the early seed-2 request. *early: the seed-2 pair; *before:
 * whether it came before EV_TRAINED; sv: the round's adapters. */
static void ov_run(const char *pipe, int size, int overlap, int train, d3_pair_sample **early,
                   int *before, ov_save *sv) {
    char err[D3_ERRLEN];
    d3_dmodel *dm = malloc(sizeof *dm);
    float *c;
    open_model(dm, pipe, NULL, size, 1, 4, &c);
    free(c);
    d3_config cfg;
    config_defaults(&cfg);
    engine_opts o = engine_opts_default();
    o.sample = opts(4);
    o.train = config_train_opts(&cfg);
    o.train.sample = o.sample;
    o.train.epochs = 4;
    o.lr = 0.01f;
    o.threads = 1;
    o.overlap = overlap;
    o.save_round_dm = ov_save_round;
    o.save_ctx = sv;
    sv->n = dm->train.numel;
    sv->params = calloc(sv->n, sizeof(float));
    sv->saved = 0;
    d3_engine *e = engine_start_dm(dm, NULL, NULL, 0, &o, err);
    if (!e) fail("engine_start_dm", err);
    d3_event ev;
    *early = NULL;
    *before = 0;
    if (!train) {
        engine_sample_ex(e, &(engine_sample_req){.prompt = prompt, .seed = 2});
        do ov_next(e, &ev); while (ev.kind != EV_PAIR);
        *early = ev.pair;
        engine_stop(e);
        return;
    }
    engine_sample_ex(e, &(engine_sample_req){.prompt = prompt, .seed = 1});
    do ov_next(e, &ev); while (ev.kind != EV_PAIR);
    d3_pair_sample *p = ev.pair;
    engine_sample_ex(e, &(engine_sample_req){.prompt = prompt, .seed = 50, .n = 4});
    const d3_pair_sample *pp = p;
    float h[1][2] = {{1.0f, -1.0f}};
    engine_train(e, &pp, (const float(*)[2])h, 1, 1);
    engine_sample_ex(e, &(engine_sample_req){.prompt = prompt, .seed = 2, .early = 1});
    int trained = 0;
    while (!trained || !*early) {
        ov_next(e, &ev);
        if (ev.kind == EV_PAIR && ev.pair->seed == 2) {
            *early = ev.pair;
            *before = !trained;
            continue;
        }
        if (ev.kind == EV_TRAINED) trained = 1;
        engine_event_free(&ev);
    }
    engine_pair_free(p);
    engine_stop(e);
}

static int same_pair(const d3_pair_sample *a, const d3_pair_sample *b) {
    size_t n = (size_t)(a->K + 1) * a->C * a->h * a->w;
    if (a->K != b->K || a->C != b->C || a->h != b->h || a->w != b->w) return 0;
    for (int i = 0; i < 2; i++)
        if (memcmp(a->traj[i], b->traj[i], n * sizeof(float))) return 0;
    return 1;
}

static int cmd_overlap(const char *pipe, int size) {
    d3_pair_sample *pa, *pb, *pc;
    int ba, bb, bc;
    ov_save sa, sb, sc;
    ov_run(pipe, size, 1, 1, &pa, &ba, &sa);
    ov_run(pipe, size, 0, 1, &pb, &bb, &sb);
    ov_run(pipe, size, 0, 0, &pc, &bc, &sc);
    int bad = 0, same = sa.saved && sb.saved && !memcmp(sa.params, sb.params, sa.n * sizeof(float));
    printf("tool_sdtrain overlap: %s: with overlap the seed-2 pair came %s the round (version %ld); "
           "without, %s it (version %ld)\n",
           pipe, ba ? "before the end of" : "after", pa->version, bb ? "before the end of" : "after",
           pb->version);
    if (!ba || pa->version != 0) {
        printf("  MISMATCH: with overlap the pair waited for the round\n");
        bad = 1;
    }
    if (bb || pb->version != 1) {
        printf("  MISMATCH: without overlap the pair did not wait for the round\n");
        bad = 1;
    }
    if (!same_pair(pa, pc)) {
        printf("  MISMATCH: the early pair is not the untrained model's\n");
        bad = 1;
    }
    if (same_pair(pb, pc)) {
        printf("  MISMATCH: the round did not change the model's pair\n");
        bad = 1;
    }
    if (!same) {
        printf("  MISMATCH: the round's adapters differ with and without overlap\n");
        bad = 1;
    }
    double moved = 0;
    for (size_t i = 0; i < sa.n; i++) moved += fabs(sa.params[i]);
    printf("  adapters: %zu floats, sum |a| after the round %.6g, identical with and without "
           "overlap: %s\n", sa.n, moved, same ? "yes" : "no");
    engine_pair_free(pa);
    engine_pair_free(pb);
    engine_pair_free(pc);
    free(sa.params);
    free(sb.params);
    free(sc.params);
    if (!bad) printf("d3po overlap ok\n");
    return bad;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "traj")) return cmd_traj(argv[2], argv[3], atoi(argv[4]), argv[5]);
    if (argc == 6 && !strcmp(argv[1], "d3po")) return cmd_d3po(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 6 && !strcmp(argv[1], "dpo")) return cmd_dpo(argv[2], argv[3], argv[4], argv[5]);
    if (argc >= 4 && !strcmp(argv[1], "pair")) {
        int size = 0, rank = 4;
        uint64_t seed = 1;
        for (int i = 4; i + 1 < argc; i += 2) {
            if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
            else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
            else if (!strcmp(argv[i], "--rank")) rank = atoi(argv[i + 1]);
            else fail(argv[i], "unknown option");
        }
        return cmd_pair(argv[2], atoi(argv[3]), size, seed, rank);
    }
    if (argc >= 3 && !strcmp(argv[1], "round")) {
        int size = 0, n = 8, K = 0, obj = D3PO_OBJ_D3PO;
        for (int i = 3; i < argc; i++) {
            if (i + 1 >= argc) fail(argv[i], "needs a value");
            if (!strcmp(argv[i], "--size")) size = atoi(argv[++i]);
            else if (!strcmp(argv[i], "--pairs")) n = atoi(argv[++i]);
            else if (!strcmp(argv[i], "--steps")) K = atoi(argv[++i]);
            else if (!strcmp(argv[i], "--objective")) obj = !strcmp(argv[++i], "diffusion-dpo") ? D3PO_OBJ_DPO : D3PO_OBJ_D3PO;
            else fail(argv[i], "unknown option");
        }
        if (n < 1 || n > 1000) fail("--pairs", "expected 1..1000");
        return cmd_round(argv[2], size, n, K, obj);
    }
    if (argc >= 4 && !strcmp(argv[1], "logratio")) return cmd_logratio(argv[2], argc - 3, argv + 3);
    if (argc >= 3 && !strcmp(argv[1], "overlap")) {
        int size = 0;
        for (int i = 3; i + 1 < argc; i += 2) {
            if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
            else fail(argv[i], "unknown option");
        }
        return cmd_overlap(argv[2], size);
    }
    fprintf(stderr, "usage: tool_sdtrain traj PIPE LORA K OUT | d3po|dpo PIPE LORA TRAJ REF | "
                    "pair PIPE K [--size S] [--seed N] [--rank R] | round PIPE [--size S] [--pairs N] "
                    "[--steps K] [--objective d3po|diffusion-dpo] | logratio SESSION ROUND... | "
                    "overlap PIPE [--size S]\n");
    return 1;
}
