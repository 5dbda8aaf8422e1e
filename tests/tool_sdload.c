/* tool_sdload.c - the C side of tests/test_sd_load.sh: opens SD-family
 * pipelines with engine/sd/pipeline.c and writes what it read, for Python
 * to compare with what diffusers/transformers load.
 *
 *   tool_sdload dump MODEL OUTDIR [TOKENIZER]
 *       every component's tensors as float32 under diffusers names, through
 *       sdw_fill with the component's own layout (from its config), or one
 *       made of the tensors the loader found (the ones diffusers would drop
 *       left out) for a component without one: OUTDIR/<part>.safetensors, and
 *       OUTDIR/info.json (family, scheduler, derived configs)
 *   tool_sdload fill REF MODEL
 *       fills MODEL's components with the layouts of REF's tensors (a
 *       wrong shape, a missing or extra tensor is an error)
 *   tool_sdload plan MODEL K
 *       the DDIM plan: one line "t abar_t abar_prev" per step
 *   tool_sdload sample MODEL PROMPT LATENTS K ETA CFG OUT
 *       latent DDIM from the x_T in LATENTS (one tensor [1,C,h,w]), the
 *       negative prompt "", step noise from seed 0 stream 1: OUT gets the
 *       trajectory "traj" [K+1,C,h,w] (and "logp" [K] when ETA > 0)
 *   tool_sdload logp MODEL PROMPT TRAJ K ETA CFG
 *       teacher-forced log-probs of the trajectory "traj" [K+1,C,h,w] in
 *       TRAJ: one line per step
 * Exit 0, 1 usage, 2 error (the one-line message on stderr). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rng.h"
#include "safetensors.h"
#include "sd/pipeline.h"
#include "sd/sdsample.h"

/* A layout of the tensors w holds (squeezed attention weights as [C,C]). */
static int layout_of(const sd_weights *w, sd_layout *L, char *err) {
    memset(L, 0, sizeof *L);
    for (int i = 0; i < w->n; i++) {
        const sdw_entry *e = &w->e[i];
        if (sdw_ignorable(w->part, e->name)) continue;
        int nd = e->squeeze && e->t->ndim > 2 ? 2 : e->t->ndim;
        if (!sd_layout_add(L, e->name, nd, e->t->shape))
            return d3_errf(err, "%s: tensor '%s': cannot add to a layout", w->what, e->name);
    }
    return 0;
}

static int dump(const char *model, const char *outdir, const char *tok, char *err) {
    sd_pipeline p;
    if (sd_pipeline_open(&p, model, tok, err)) return -1;
    int rc = 0;
    for (int k = 0; k < SD_NPARTS && !rc; k++) {
        /* the component's own layout when there is one */
        sd_layout L;
        if (p.L[k].n) L = p.L[k], memset(&p.L[k], 0, sizeof L);
        else if ((rc = layout_of(&p.weights[k], &L, err))) break;
        float *params = calloc(L.numel ? L.numel : 1, sizeof(float));
        rc = sdw_fill(&p.weights[k], &L, params, err);
        st_writer *wr = st_writer_new();
        for (int i = 0; i < L.n && !rc; i++)
            rc = st_writer_add(wr, L.p[i].name, ST_F32, L.p[i].ndim, L.p[i].shape,
                               params + L.p[i].off, err);
        char path[2048];
        snprintf(path, sizeof path, "%s/%s.safetensors", outdir, sd_part_name(k));
        if (!rc) rc = st_writer_save(wr, path, err);
        st_writer_free(wr);
        free(params);
        sd_layout_free(&L);
    }
    if (!rc) {
        json_t *o = json_object(), *cfg = json_object(), *dt = json_object();
        json_object_set_new(o, "family", json_string(p.family));
        json_object_set_new(o, "single", json_boolean(p.single));
        json_object_set_new(o, "tokenizer", json_string(p.tokenizer));
        json_object_set_new(o, "sched", json_pack("{s:i,s:f,s:f,s:i,s:i,s:b,s:i,s:b}",
                                                   "T", p.sched.num_train_timesteps,
                                                   "beta_start", p.sched.beta_start,
                                                   "beta_end", p.sched.beta_end,
                                                   "scaled", p.sched.beta_schedule == SD_BETA_SCALED_LINEAR,
                                                   "steps_offset", p.sched.steps_offset,
                                                   "set_alpha_to_one", p.sched.set_alpha_to_one,
                                                   "v", p.sched.prediction == SD_PRED_V,
                                                   "clip_sample", p.sched.clip_sample));
        for (int k = 0; k < SD_NPARTS; k++) {
            json_object_set(cfg, sd_part_name(k), p.config[k]);
            char d[64];
            sdw_dtype(&p.weights[k], d, sizeof d);
            json_object_set_new(dt, sd_part_name(k), json_string(d));
        }
        json_object_set_new(o, "config", cfg);
        json_object_set_new(o, "dtype", dt);
        char path[2048];
        snprintf(path, sizeof path, "%s/info.json", outdir);
        if (json_dump_file(o, path, JSON_INDENT(1) | JSON_SORT_KEYS)) rc = d3_errf(err, "%s: cannot write", path);
        json_decref(o);
    }
    sd_pipeline_close(&p);
    return rc;
}

static int fill(const char *ref, const char *model, char *err) {
    sd_pipeline r, p;
    if (sd_pipeline_open(&r, ref, NULL, err)) return -1;
    if (sd_pipeline_open(&p, model, NULL, err)) {
        sd_pipeline_close(&r);
        return -1;
    }
    int rc = 0;
    for (int k = 0; k < SD_NPARTS && !rc; k++) {
        sd_layout L;
        if ((rc = layout_of(&r.weights[k], &L, err))) break;
        float *params = calloc(L.numel ? L.numel : 1, sizeof(float));
        rc = sdw_fill(&p.weights[k], &L, params, err);
        free(params);
        sd_layout_free(&L);
    }
    sd_pipeline_close(&r);
    sd_pipeline_close(&p);
    return rc;
}

static int plan(const char *model, int K, char *err) {
    sd_pipeline p;
    if (sd_pipeline_open(&p, model, NULL, err)) return -1;
    int ts[1000];
    double at[1000], ap[1000];
    int rc = K > 1000 ? d3_errf(err, "K too large") : sd_sched_plan(&p.sched, K, ts, at, ap, err);
    for (int k = 0; k < K && !rc; k++) printf("%d %.9g %.9g\n", ts[k], at[k], ap[k]);
    sd_pipeline_close(&p);
    return rc;
}

/* The one tensor named name of path, as floats [numel] (malloc'd). */
static float *read_tensor(const char *path, const char *name, int64_t *shape, int *ndim, char *err) {
    st_file f;
    if (st_map(&f, path, err)) return NULL;
    const st_tensor *t = st_find(&f, name);
    float *x = NULL;
    if (!t) d3_errf(err, "%s: no tensor '%s'", path, name);
    else if ((x = malloc(st_numel(t) * sizeof(float))) && st_to_f32(t, x, path, err)) {
        free(x);
        x = NULL;
    }
    if (x) {
        *ndim = t->ndim;
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    }
    st_free(&f);
    return x;
}

static int run_sd(int logp_mode, char **a, char *err) {
    sd_model m;
    if (sd_model_load(&m, a[0], NULL, backend_cpu(), err)) return -1;
    int64_t sh[ST_MAX_DIMS];
    int nd, rc = -1, K = atoi(a[3]);
    ddim_opts o = {.steps = K, .eta = (float)atof(a[4]), .cfg = (float)atof(a[5])};
    float *x = read_tensor(a[2], logp_mode ? "traj" : "latents", sh, &nd, err);
    size_t Dc = sd_model_ctx_floats(&m);
    float *ctx = malloc(2 * Dc * sizeof(float));
    float *traj = NULL, *lp = malloc((size_t)(K > 0 ? K : 1) * sizeof(float));
    d3_tape *tp = tape_new(backend_cpu());
    const char *pr[2] = {a[1], ""};
    if (!x || sd_model_encode(&m, pr, 2, ctx, err)) goto out;
    if (nd != 4) {
        d3_errf(err, "%s: expected a 4-dim tensor", a[2]);
        goto out;
    }
    int h = (int)sh[2], w = (int)sh[3];
    size_t Dx = (size_t)sh[1] * h * w;
    if (logp_mode) {
        if (sh[0] != K + 1) {
            d3_errf(err, "%s: traj has %lld states, K+1 = %d expected", a[2], (long long)sh[0], K + 1);
            goto out;
        }
        if (sd_traj_logp(&m, tp, &o, ctx, ctx + Dc, x, h, w, lp, err)) goto out;
        for (int k = 0; k < K; k++) printf("%.9g\n", lp[k]);
        rc = 0;
        goto out;
    }
    d3_rng r;
    rng_init(&r, 0, 1);
    traj = malloc((size_t)(K + 1) * Dx * sizeof(float));
    if (sd_ddim_sample(&m, tp, &o, 1, ctx, ctx + Dc, x, h, w, &r, traj, o.eta > 0 ? lp : NULL, err))
        goto out;
    st_writer *wr = st_writer_new();
    int64_t ts[4] = {K + 1, sh[1], h, w}, ls[1] = {K};
    rc = st_writer_add(wr, "traj", ST_F32, 4, ts, traj, err);
    if (!rc && o.eta > 0) rc = st_writer_add(wr, "logp", ST_F32, 1, ls, lp, err);
    if (!rc) rc = st_writer_save(wr, a[6], err);
    st_writer_free(wr);
out:
    tape_free(tp);
    free(x);
    free(ctx);
    free(traj);
    free(lp);
    sd_model_free(&m);
    return rc;
}

int main(int argc, char **argv) {
    char err[D3_ERRLEN] = "";
    int rc;
    if (argc >= 4 && !strcmp(argv[1], "dump")) rc = dump(argv[2], argv[3], argc > 4 ? argv[4] : NULL, err);
    else if (argc == 4 && !strcmp(argv[1], "fill")) rc = fill(argv[2], argv[3], err);
    else if (argc == 4 && !strcmp(argv[1], "plan")) rc = plan(argv[2], atoi(argv[3]), err);
    else if (argc == 9 && !strcmp(argv[1], "sample")) rc = run_sd(0, argv + 2, err);
    else if (argc == 8 && !strcmp(argv[1], "logp")) rc = run_sd(1, argv + 2, err);
    else {
        fprintf(stderr, "usage: tool_sdload dump MODEL OUTDIR [TOKENIZER] | fill REF MODEL | plan MODEL K\n"
                        "       tool_sdload sample MODEL PROMPT LATENTS K ETA CFG OUT | logp MODEL PROMPT TRAJ K ETA CFG\n");
        return 1;
    }
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    return 0;
}
