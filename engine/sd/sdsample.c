/* sdsample.c - a Stable Diffusion-family model in memory and latent DDIM
 * on it (see sdsample.h). The step math is engine/diffusion.c's
 * (ddim_step_pred, ddim_logprob, ddim_guide); this file runs the UNet,
 * the text encoder and the VAE decoder through the tape and walks the
 * scheduler's plan. */
#include "sdsample.h"

#include <stdlib.h>
#include <string.h>

void sd_model_free(sd_model *m) {
    for (int k = 0; k < SD_NPARTS; k++)
        if (m->params[k] && m->be) m->be->free(m->params[k]);
    sd_tokenizer_free(m->tok);
    sd_pipeline_close(&m->p);
    memset(m, 0, sizeof *m);
}

int sd_model_load(sd_model *m, const char *path, const char *tokenizer, const d3_backend *be,
                  char *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    if (sd_pipeline_open(&m->p, path, tokenizer, err)) return -1;
    if (!(m->tok = sd_tokenizer_load(m->p.tokenizer, err))) goto fail;
    m->T = sd_tokenizer_max_length(m->tok);
    m->D = m->p.clip.hidden_size;
    if (m->T > m->p.clip.max_position_embeddings) {
        d3_errf(err, "%s: model_max_length %d exceeds the text encoder's %d positions",
                m->p.tokenizer, m->T, m->p.clip.max_position_embeddings);
        goto fail;
    }
    if (m->D != m->p.unet.cross_dim) {
        d3_errf(err, "%s: the UNet's cross_attention_dim %d differs from the text encoder's hidden_size %d",
                m->p.config_path[SD_UNET], m->p.unet.cross_dim, m->D);
        goto fail;
    }
    if (m->p.vae.latent_channels != m->p.unet.in_channels ||
        m->p.unet.out_channels != m->p.unet.in_channels) {
        d3_errf(err, "%s: the UNet's in/out channels %d/%d do not match the VAE's latent_channels %d",
                m->p.config_path[SD_UNET], m->p.unet.in_channels, m->p.unet.out_channels,
                m->p.vae.latent_channels);
        goto fail;
    }
    m->latent_c = m->p.vae.latent_channels;
    m->factor = 1 << (m->p.vae.nblocks - 1);
    for (int k = 0; k < SD_NPARTS; k++) {
        /* host backends: converted straight into the buffer the ops read */
        size_t n = m->p.L[k].numel;
        float *dev = be->alloc(n * sizeof(float));
        float *host = be->host ? dev : malloc(n * sizeof(float));
        if (!dev || !host) {
            if (dev) be->free(dev);
            if (host != dev) free(host);
            d3_errf(err, "%s: out of memory for the %s (%zu floats)", m->p.path, sd_part_name(k), n);
            goto fail;
        }
        m->params[k] = dev;
        int bad = sd_pipeline_fill(&m->p, k, host, err);
        if (!be->host) {
            if (!bad) be->upload(dev, host, n * sizeof(float));
            free(host);
        }
        if (bad) goto fail;
        /* the floats are in place: unmap the files (their pages leave the
         * process; only the float32 copy stays) */
        sdw_free(&m->p.weights[k]);
    }
    return 0;
fail:
    sd_model_free(m);
    return -1;
}

size_t sd_model_ctx_floats(const sd_model *m) { return (size_t)m->T * m->D; }

int sd_model_encode(sd_model *m, const char *const *prompts, int n, float *ctx, char *err) {
    return sd_clip_encode(m->be, &m->p.clip, &m->p.L[SD_TEXT_ENCODER], m->params[SD_TEXT_ENCODER],
                          m->tok, prompts, n, ctx, err);
}

d3_tensor *sd_unet_forward_cfg(sd_model *m, d3_tape *tp, float *grads, int n, const float *x, int h,
                               int w, int t, const float *cond, const float *uncond, float cfg,
                               int *nb_out) {
    const d3_backend *be = m->be;
    size_t Dx = (size_t)m->latent_c * h * w, Dc = sd_model_ctx_floats(m);
    int nb = cfg > 1.0f ? 2 * n : n;
    d3_tensor *xin = tape_input(tp, nb, m->latent_c, h, w);
    d3_tensor *ctx = tape_input(tp, nb, m->T, 1, m->D);
    float tb[64], *tv = nb <= 64 ? tb : malloc(nb * sizeof(float));
    for (int r = 0; r < nb; r++) {
        be->upload(xin->v + r * Dx, x + (size_t)(r % n) * Dx, Dx * sizeof(float));
        be->upload(ctx->v + r * Dc, r < n ? cond + (size_t)r * Dc : uncond, Dc * sizeof(float));
        tv[r] = (float)t;
    }
    d3_tensor *y = sd_unet_forward_lora(tp, &m->p.unet, &m->p.L[SD_UNET], m->params[SD_UNET], grads,
                                        xin, tv, ctx, m->lora);
    if (tv != tb) free(tv);
    *nb_out = nb;
    return y;
}

/* The guided model output for n latents x [n][Dx] at timestep t. */
static void unet_guided(sd_model *m, d3_tape *tp, int n, const float *x, int h, int w, int t,
                        const float *cond, const float *uncond, float cfg, float *out) {
    size_t Dx = (size_t)m->latent_c * h * w;
    int nb;
    tape_reset(tp);
    tape_set_grad(tp, 0);
    d3_tensor *y = sd_unet_forward_cfg(m, tp, NULL, n, x, h, w, t, cond, uncond, cfg, &nb);
    float *host = malloc(y->numel * sizeof(float));
    m->be->download(host, y->v, y->numel * sizeof(float));
    ddim_guide(out, host, n, nb, Dx, cfg);
    free(host);
    tape_set_grad(tp, 1);
}

/* The plan of o for this model, checked; with logp, every step must have
 * sigma > 0 (set_alpha_to_one makes the last one 0: no density). */
static int plan(const sd_model *m, const ddim_opts *o, int h, int w, int logp, int *ts, double *at,
                double *ap, char *err) {
    if (o->steps < 1 || o->steps > D3_MAX_STEPS)
        return d3_errf(err, "steps %d: expected 1..%d", o->steps, D3_MAX_STEPS);
    if (sd_unet_check_size(&m->p.unet, h, w, err)) return -1;
    if (sd_sched_plan(&m->p.sched, o->steps, ts, at, ap, err)) return -1;
    if (logp && !(o->eta > 0)) return d3_errf(err, "log-probabilities need eta > 0 (eta %g)", o->eta);
    for (int k = 0; logp && k < o->steps; k++)
        if (!(ddim_sigma(at[k], ap[k], o->eta) > 0))
            return d3_errf(err, "%s: step %d (t=%d) has sigma 0 (set_alpha_to_one true): no log-probability there; "
                           "D3PO needs set_alpha_to_one false", m->p.sched_path, k, ts[k]);
    return 0;
}

int sd_ddim_sample(sd_model *m, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
                   const float *uncond, float *x, int h, int w, d3_rng *rngs, float *traj,
                   float *logp, char *err) {
    int K = o->steps, ts[D3_MAX_STEPS];
    double at[D3_MAX_STEPS], ap[D3_MAX_STEPS];
    if (plan(m, o, h, w, logp != NULL, ts, at, ap, err)) return -1;
    size_t Dx = (size_t)m->latent_c * h * w;
    float *eps = malloc(n * Dx * sizeof(float)), *mean = malloc(Dx * sizeof(float));
    float *z = malloc(Dx * sizeof(float)), *xp = malloc(Dx * sizeof(float));
    if (!eps || !mean || !z || !xp) {
        free(eps); free(mean); free(z); free(xp);
        return d3_errf(err, "out of memory");
    }
    const sd_sched *s = &m->p.sched;
    float clip = s->clip_sample ? (float)s->clip_sample_range : 0.0f;
    if (traj)
        for (int i = 0; i < n; i++) memcpy(traj + (size_t)i * (K + 1) * Dx, x + i * Dx, Dx * sizeof(float));
    for (int k = 0; k < K; k++) {
        unet_guided(m, tp, n, x, h, w, ts[k], cond, uncond, o->cfg, eps);
        for (int i = 0; i < n; i++) {
            float *xi = x + i * Dx;
            if (o->eta > 0) rng_normal(&rngs[i], z, Dx);
            double sigma = ddim_step_pred(xp, mean, xi, eps + i * Dx, o->eta > 0 ? z : NULL, at[k],
                                          ap[k], o->eta, s->prediction == SD_PRED_V, clip, Dx);
            if (logp) logp[(size_t)i * K + k] = (float)ddim_logprob(xp, mean, sigma, Dx);
            memcpy(xi, xp, Dx * sizeof(float));
            if (traj) memcpy(traj + ((size_t)i * (K + 1) + k + 1) * Dx, xi, Dx * sizeof(float));
        }
    }
    free(eps); free(mean); free(z); free(xp);
    return 0;
}

int sd_traj_logp(sd_model *m, d3_tape *tp, const ddim_opts *o, const float *cond,
                 const float *uncond, const float *traj, int h, int w, float *logp, char *err) {
    int K = o->steps, ts[D3_MAX_STEPS];
    double at[D3_MAX_STEPS], ap[D3_MAX_STEPS];
    if (plan(m, o, h, w, 1, ts, at, ap, err)) return -1;
    size_t Dx = (size_t)m->latent_c * h * w;
    float *eps = malloc(Dx * sizeof(float)), *mean = malloc(Dx * sizeof(float));
    float *xp = malloc(Dx * sizeof(float));
    if (!eps || !mean || !xp) {
        free(eps); free(mean); free(xp);
        return d3_errf(err, "out of memory");
    }
    const sd_sched *s = &m->p.sched;
    float clip = s->clip_sample ? (float)s->clip_sample_range : 0.0f;
    for (int k = 0; k < K; k++) {
        const float *xt = traj + (size_t)k * Dx, *xn = traj + (size_t)(k + 1) * Dx;
        unet_guided(m, tp, 1, xt, h, w, ts[k], cond, uncond, o->cfg, eps);
        double sigma = ddim_step_pred(xp, mean, xt, eps, NULL, at[k], ap[k], o->eta,
                                      s->prediction == SD_PRED_V, clip, Dx);
        logp[k] = (float)ddim_logprob(xn, mean, sigma, Dx);
    }
    free(eps); free(mean); free(xp);
    return 0;
}

int sd_model_decode(sd_model *m, d3_tape *tp, const float *x, int n, int h, int w, uint8_t *rgb,
                    char *err) {
    (void)tp; /* the low-memory decode runs on scratch tapes of its own */
    const d3_backend *be = m->be;
    size_t Dx = (size_t)m->latent_c * h * w;
    int H = h * m->factor, W = w * m->factor, C = m->p.vae.out_channels;
    if (C != 3) return d3_errf(err, "%s: the VAE decodes %d channels, expected 3 (RGB)", m->p.config_path[SD_VAE], C);
    size_t Di = (size_t)C * H * W;
    float *img = malloc(Di * sizeof(float));
    float *zd = be->alloc(Dx * sizeof(float)), *yd = be->alloc(Di * sizeof(float));
    int rc = 0;
    if (!img || !zd || !yd) rc = d3_errf(err, "out of memory for a %dx%d image", W, H);
    /* one image at a time, two decoder stages' activations at a time (SD's
     * VAE holds ~8 GB at 512x512 on one tape): the same numbers as
     * sd_vae_decode */
    for (int i = 0; i < n && !rc; i++) {
        be->upload(zd, x + i * Dx, Dx * sizeof(float));
        rc = sd_vae_decode_lowmem(be, &m->p.vae, &m->p.L[SD_VAE], m->params[SD_VAE], zd, 1, h, w, yd, err);
        if (!rc) {
            be->download(img, yd, Di * sizeof(float));
            sd_vae_to_rgb8(rgb + (size_t)i * H * W * 3, img, C, H, W);
        }
    }
    free(img);
    if (zd) be->free(zd);
    if (yd) be->free(yd);
    return rc;
}
