/* cmd_eval.c - `d3po eval`: a blind A/B test of a session's latest model
 * against the model it started from (DIR/base.safetensors).
 *
 * For pair i both models get the same prompt (the config's session.prompts
 * in turn, else every class in turn), the same starting noise x_T (stream
 * 2i of --seed) and the same step noise (stream 2i+1), so the images differ
 * only by the weights. Which model is shown as A is drawn from its own
 * stream of --seed and hidden from the judge: an oracle sees two RGB
 * buffers, an external labeler two PNGs named only "NNNN-A.png" and
 * "NNNN-B.png" in a fresh temp dir. A win is the tuned model preferred.
 * The win rate counts a tie as half a win and excludes skips, and its 95%
 * interval is Wilson's with the same n (src/stats.h). The session is opened
 * read-only, so eval can run while `d3po label` has it open.
 *
 * --plot draws the per-round oracle score of DIR/metrics.jsonl (lines with
 * "round" and "score", as headless rounds write them) and the win rate per
 * round (metrics' "win_rate" plus this eval's result with its interval). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "diffusion.h"
#include "evaltui.h"
#include "fsutil.h"
#include "image.h"
#include "labeler.h"
#include "oracle.h"
#include "ops.h"
#include "plot.h"
#include "rounds.h"
#include "session.h"
#include "session_sd.h"
#include "stats.h"

#define EVAL_SIDE_STREAM 0x5E1DE5ull /* the stream that shuffles sides (far above 2i+1) */

static const char eval_help[] =
    "usage: d3po eval --session DIR (--oracle NAME | --labeler CMD | --tui)\n"
    "                 [--pairs N] [--seed S] [--json] [--plot FILE.png]\n"
    "                 [--config FILE] [--steps N] [--timeout SEC] [--threads N]\n"
    "                 [--device auto|cpu|cuda] [--tf32]\n"
    "                 [--dtype fp32|fp16|bf16]\n"
    "\n"
    "Blind A/B test of the session's latest model against its base model\n"
    "(DIR/base.safetensors): N pairs, each with the same prompt, starting noise\n"
    "and step noise for both models (from --seed); which model is A is shuffled\n"
    "from --seed and hidden from the judge. Prints wins (tuned model preferred),\n"
    "losses, ties, skips, the win rate (a tie counts as half a win; skips are\n"
    "left out) and its 95% Wilson score interval.\n"
    "\n"
    "  --session DIR   the session (opened read-only)\n"
    "  --oracle NAME   judge with a built-in oracle: jpeg-compressibility,\n"
    "                  jpeg-incompressibility, brightness, noisy:NAME[:T]\n"
    "  --labeler CMD   judge with an external program (protocol in d3po(1)): it\n"
    "                  gets '<i>\\t<prompt>\\t<A.png>\\t<B.png>' lines, answers A, B,\n"
    "                  tie or skip; the PNGs are in a temp dir, removed afterwards\n"
    "  --tui           judge yourself on the labeling screen (its keys): all pairs\n"
    "                  are sampled first; the sides are revealed with the result;\n"
    "                  quitting early counts the pairs judged so far\n"
    "  --pairs N       pairs to judge (default 32)\n"
    "  --seed S        seed of the noise, the prompts' start and the sides (default 0)\n"
    "  --json          print one JSON object instead of text\n"
    "  --plot FILE     write a PNG chart: oracle score per round (DIR/metrics.jsonl)\n"
    "                  and win rate per round with this result and its interval\n"
    "  --config FILE   settings (sampler steps/eta/cfg, session.prompts)\n"
    "  --prompt P      every pair with prompt P\n"
    "  --prompts FILE  the prompts of FILE in turn (one a line, PROMPT<TAB>WEIGHT\n"
    "                  repeats it); default: the prompts the session labeled, else\n"
    "                  its prompt set, else session.prompts, else every class\n"
    "  --steps N       DDIM steps (default: the config's sampler.steps)\n"
    "  --timeout SEC   seconds a labeler may take per pair (default 300)\n"
    "  --threads N     CPU threads (default: the config's engine.threads)\n"
    "  --device DEV    auto (a CUDA GPU when one works, else the CPU), cpu or cuda\n"
    "                  (default: the config's engine.device)\n"
    "  --tf32          allow TF32 tensor cores on the GPU (faster, ~1e-3 relative\n"
    "                  error; default: the config's engine.tf32)\n"
    "  --dtype T       fp32, fp16 or bf16: the frozen base's precision (default:\n"
    "                  the config's engine.dtype); the CPU computes in fp32 always\n";

typedef struct {
    long wins, losses, ties, skips;
    double score_base, score_tuned; /* mean oracle scores (NAN with a labeler) */
    double rate, lo, hi;
} eval_result;

/* Reads DIR/metrics.jsonl: per line "round" and "score" (or "mean_score")
 * and "win_rate" when present. Missing file: n = 0. Bad lines are skipped. */
typedef struct {
    int n, cap;
    double *round, *score, *win;
} metrics;

static void metrics_read(const char *dir, metrics *m) {
    memset(m, 0, sizeof *m);
    char p[4200];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    FILE *f = fopen(p, "r");
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *r = o ? json_object_get(o, "round") : NULL;
        if (!json_is_number(r)) { json_decref(o); continue; }
        json_t *sc = json_object_get(o, "score");
        if (!json_is_number(sc)) sc = json_object_get(o, "mean_score");
        json_t *w = json_object_get(o, "win_rate");
        if (m->n == m->cap) {
            m->cap = m->cap ? 2 * m->cap : 16;
            m->round = realloc(m->round, m->cap * sizeof(double));
            m->score = realloc(m->score, m->cap * sizeof(double));
            m->win = realloc(m->win, m->cap * sizeof(double));
        }
        m->round[m->n] = json_number_value(r);
        m->score[m->n] = json_is_number(sc) ? json_number_value(sc) : NAN;
        m->win[m->n] = json_is_number(w) ? json_number_value(w) : NAN;
        m->n++;
        json_decref(o);
    }
    free(line);
    fclose(f);
}

static void metrics_free(metrics *m) {
    free(m->round); free(m->score); free(m->win);
}

/* Sorts points by x (insertion sort; lo/hi may be NULL), so the polyline
 * runs left to right when this eval's round falls between metrics rounds. */
static void sort_points(double *x, double *y, double *lo, double *hi, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && x[j - 1] > x[j]; j--) {
            double t;
            t = x[j], x[j] = x[j - 1], x[j - 1] = t;
            t = y[j], y[j] = y[j - 1], y[j - 1] = t;
            if (lo) t = lo[j], lo[j] = lo[j - 1], lo[j - 1] = t;
            if (hi) t = hi[j], hi[j] = hi[j - 1], hi[j - 1] = t;
        }
}

static int write_plot(const char *path, const metrics *mt, const eval_result *r, int round,
                      const char *judge, char *err) {
    int n = mt->n;
    double *x = malloc((n + 2) * sizeof(double)), *y = malloc((n + 2) * sizeof(double));
    double *wx = malloc((n + 1) * sizeof(double)), *wy = malloc((n + 1) * sizeof(double));
    double *wlo = malloc((n + 1) * sizeof(double)), *whi = malloc((n + 1) * sizeof(double));
    int ns = 0, nw = 0;
    char t1[256], t2[256];
    for (int i = 0; i < n; i++)
        if (isfinite(mt->score[i])) x[ns] = mt->round[i], y[ns++] = mt->score[i];
    if (ns) {
        snprintf(t1, sizeof t1, "oracle score per round (metrics.jsonl)");
    } else {
        /* no headless-round metrics: this eval's mean scores at round 0 and now */
        if (isfinite(r->score_base)) x[ns] = 0, y[ns++] = r->score_base;
        if (isfinite(r->score_tuned)) x[ns] = round, y[ns++] = r->score_tuned;
        snprintf(t1, sizeof t1, "mean %s score: base (round 0) and round %d (this eval)", judge,
                 round);
    }
    for (int i = 0; i < n; i++)
        if (isfinite(mt->win[i]) && (int)mt->round[i] != round)
            wx[nw] = mt->round[i], wy[nw] = mt->win[i], wlo[nw] = whi[nw] = NAN, nw++;
    wx[nw] = round, wy[nw] = r->rate, wlo[nw] = r->lo, whi[nw] = r->hi, nw++;
    snprintf(t2, sizeof t2, "win rate vs base per round (round %d: %ld pairs, 95%% Wilson)", round,
             r->wins + r->losses + r->ties);
    sort_points(x, y, NULL, NULL, ns);
    sort_points(wx, wy, wlo, whi, nw);
    plot_panel p[2] = {plot_panel_default(), plot_panel_default()};
    p[0].title = t1, p[0].xlabel = "round", p[0].n = ns, p[0].x = x, p[0].y = y;
    p[1].title = t2, p[1].xlabel = "round", p[1].n = nw, p[1].x = wx, p[1].y = wy;
    p[1].lo = wlo, p[1].hi = whi, p[1].ymin = 0, p[1].ymax = 1, p[1].ref = 0.5;
    p[1].color[0] = 214, p[1].color[1] = 39, p[1].color[2] = 40;
    int rc = plot_write_png(path, p, 2, err);
    free(x); free(y); free(wx); free(wy); free(wlo); free(whi);
    return rc;
}

/* x [n][D]: x_T of pair i0+j from stream 2(i0+j) of seed, step noise 2(i0+j)+1. */
static int sample_chunk(const d3_model *m, d3_tape *tp, const ddim_opts *o, uint64_t seed,
                        long i0, int n, const int *cls, float *x, char *err) {
    size_t D = 3 * (size_t)m->L.arch.size * m->L.arch.size;
    d3_rng rngs[8], r;
    for (int j = 0; j < n; j++) {
        rng_init(&r, seed, 2 * (uint64_t)(i0 + j));
        rng_normal(&r, x + j * D, D);
        rng_init(&rngs[j], seed, 2 * (uint64_t)(i0 + j) + 1);
    }
    return ddim_sample(m, tp, o, n, cls, x, rngs, NULL, NULL, err);
}

/* Where eval's pairs come from. Pixel sessions: the base model file and
 * the latest checkpoint, sampled 8 pairs at a time. Stable Diffusion-
 * family sessions: the model the session refers to, once, with the
 * latest round's LoRA adapters off (the base) and on (the tuned model).
 * Either way pair i of both models starts from x_T = stream 2i of seed
 * and steps with stream 2i+1, so the images differ only by the weights. */
enum { CHUNK = 8 };
typedef struct {
    int W, H;           /* image size */
    long npairs;
    uint64_t seed;
    ddim_opts so;
    d3_tape *tp;
    /* pixel */
    d3_model *base, *tuned;
    const int *cls;     /* [npairs] class of pair i */
    float *xb, *xt;     /* [CHUNK][D] */
    long chunk0;        /* first pair of the sampled chunk, -1: none */
    /* sd */
    d3_dmodel *dm;
    char **prompt;      /* [npairs] prompt of pair i (not owned) */
    const char *cond_of; /* the prompt cond holds */
    float *cond, *uncond, *x;
} eval_src;

static const char *src_prompt(const eval_src *e, long i) {
    return e->dm ? e->prompt[i] : e->tuned->class_names[e->cls[i]];
}

/* The images of pair i from both models: rb (base), rt (tuned), [H][W][3]. */
static int src_pair(eval_src *e, long i, uint8_t *rb, uint8_t *rt, char *err) {
    if (!e->dm) {
        size_t D = 3 * (size_t)e->W * e->H;
        long c0 = i / CHUNK * CHUNK;
        if (c0 != e->chunk0) {
            int n = e->npairs - c0 < CHUNK ? (int)(e->npairs - c0) : CHUNK;
            if (sample_chunk(e->base, e->tp, &e->so, e->seed, c0, n, e->cls + c0, e->xb, err) ||
                sample_chunk(e->tuned, e->tp, &e->so, e->seed, c0, n, e->cls + c0, e->xt, err))
                return -1;
            e->chunk0 = c0;
        }
        image_to_rgb(rb, e->xb + (i - c0) * D, e->W, e->H);
        image_to_rgb(rt, e->xt + (i - c0) * D, e->W, e->H);
        return 0;
    }
    d3_dmodel *dm = e->dm;
    if (!e->cond_of || strcmp(e->cond_of, e->prompt[i])) {
        if (dm_condition(dm, e->prompt[i], e->cond, err)) return -1;
        e->cond_of = e->prompt[i];
    }
    for (int tuned = 0; tuned < 2; tuned++) {
        d3_rng r;
        rng_init(&r, e->seed, 2 * (uint64_t)i);
        rng_normal(&r, e->x, dm->D);
        rng_init(&r, e->seed, 2 * (uint64_t)i + 1);
        dm_adapters_on(dm, tuned);
        int rc = dm_sample(dm, e->tp, &e->so, 1, e->cond, e->uncond, e->x, &r, NULL, NULL, err) ||
                 dm_decode(dm, e->tp, e->x, 1, tuned ? rt : rb, err);
        dm_adapters_on(dm, 1);
        if (rc) return -1;
    }
    return 0;
}

/* sd: the prompt of each pair: --prompt, the prompts of --prompts FILE in
 * turn (weights repeat), else the session's prompt set in turn. */
static int sd_prompts(const d3_session *s, const char *one, const char *file, long npairs,
                      uint64_t seed, char ***out, char ***owned, int *nowned, char *err) {
    char **t = NULL;
    int *w = NULL, nt = 0;
    if (one) {
        if (!(t = calloc(1, sizeof *t)) || !(t[0] = strdup(one))) { free(t); return d3_errf(err, "out of memory"); }
        nt = 1;
    } else if (file) {
        if (rounds_read_prompt_file(file, &t, &w, &nt, err)) return -1;
    } else {
        if (!s->nprompts) return d3_errf(err, "%s: the session has no prompts: give --prompt or --prompts", s->dir);
        if (!(t = calloc((size_t)s->nprompts, sizeof *t)) || !(w = calloc((size_t)s->nprompts, sizeof *w)))
            { free(t); return d3_errf(err, "out of memory"); }
        for (int i = 0; i < s->nprompts; i++) {
            t[i] = strdup(s->prompts[i]);
            w[i] = s->prompt_w[i];
        }
        nt = s->nprompts;
    }
    long ncyc = 0;
    for (int i = 0; i < nt; i++) ncyc += w ? w[i] : 1;
    char **cyc = malloc((size_t)ncyc * sizeof *cyc), **p = malloc((size_t)npairs * sizeof *p);
    if (!cyc || !p) {
        free(cyc); free(p); free(w);
        for (int i = 0; i < nt; i++) free(t[i]);
        free(t);
        return d3_errf(err, "out of memory");
    }
    long k = 0;
    for (int i = 0; i < nt; i++)
        for (int r = 0; r < (w ? w[i] : 1); r++) cyc[k++] = t[i];
    for (long i = 0; i < npairs; i++) p[i] = cyc[(i + seed % (uint64_t)ncyc) % (uint64_t)ncyc];
    free(cyc);
    free(w);
    fprintf(stderr, "d3po eval: %d prompt%s (%s)\n", nt, nt == 1 ? "" : "s",
            one ? "--prompt" : file ? "--prompts" : "the session's set");
    *out = p;
    *owned = t;
    *nowned = nt;
    return 0;
}

static void rmtree_flat(const char *dir, long n) {
    char p[4300];
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            snprintf(p, sizeof p, "%s/%04ld-%c.png", dir, i, "AB"[k]);
            unlink(p);
        }
    rmdir(dir);
}

/* The classes eval cycles through (see the caller). */
static int eval_prompts(const d3_session *s, const d3_model *m, const d3_config *cfg,
                        const char *one, const char *file, int **out, int *n, char *err) {
    int cap = m->nclasses * 100 + SESSION_MAX_PROMPTS + D3_CFG_MAX_PROMPTS + 1;
    int *p = malloc((size_t)cap * sizeof *p), k = 0;
    if (!p) return d3_errf(err, "out of memory");
    const char *what = NULL;
    if (one) {
        if ((p[k] = model_find_class(m, one)) < 0) {
            free(p);
            return d3_errf(err, "--prompt: the session's model has no class '%.200s'", one);
        }
        k++;
    } else if (file) {
        char **t;
        int *w, nt;
        if (rounds_read_prompt_file(file, &t, &w, &nt, err)) { free(p); return -1; }
        int rc = 0;
        for (int i = 0; i < nt && !rc; i++) {
            int c = model_find_class(m, t[i]);
            if (c < 0) rc = d3_errf(err, "%s: the session's model has no class '%.200s'", file, t[i]);
            for (int r = 0; r < w[i] && !rc && k < cap; r++) p[k++] = c;
        }
        for (int i = 0; i < nt; i++) free(t[i]);
        free(t);
        free(w);
        if (rc) { free(p); return -1; }
    } else {
        /* the prompts the session labeled, in class order */
        unsigned char *seen = calloc((size_t)m->nclasses, 1);
        for (long id = 0; seen && id < s->next_pair; id++) {
            int ch = session_choice_of(s, id);
            if (ch != SESSION_A && ch != SESSION_B && ch != SESSION_TIE) continue;
            int c = session_pair_class(s, id);
            if (c >= 0 && c < m->nclasses) seen[c] = 1;
        }
        for (int c = 0; seen && c < m->nclasses; c++)
            if (seen[c]) p[k++] = c;
        free(seen);
        what = "labeled";
        for (int i = 0; !k && i < s->nprompts; i++) {
            int c = model_find_class(m, s->prompts[i]);
            if (c >= 0) p[k++] = c;
            what = "the session's set";
        }
        for (int i = 0; !s->nprompts && !k && i < cfg->session.nprompts; i++) {
            int c = model_find_class(m, cfg->session.prompts[i]);
            if (c < 0) {
                free(p);
                return d3_errf(err, "%s: session.prompts: the session's model has no class '%.200s'",
                               config_source(cfg), cfg->session.prompts[i]);
            }
            p[k++] = c;
            what = "session.prompts";
        }
        if (!k) {
            for (int c = 0; c < m->nclasses; c++) p[k++] = c;
            what = "every class";
        }
        fprintf(stderr, "d3po eval: %d prompt%s (%s)\n", k, k == 1 ? "" : "s", what);
    }
    *out = p;
    *n = k;
    return 0;
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"session", 1, 0, 's'}, {"oracle", 1, 0, 'o'}, {"labeler", 1, 0, 'l'},
        {"tui", 0, 0, 'u'},     {"pairs", 1, 0, 'n'},  {"seed", 1, 0, 'S'},
        {"json", 0, 0, 'j'},    {"plot", 1, 0, 'p'},   {"config", 1, 0, 'c'},
        {"steps", 1, 0, 'k'},   {"timeout", 1, 0, 'T'}, {"threads", 1, 0, 't'},
        {"device", 1, 0, 'D'},  {"tf32", 0, 0, 'F'}, {"dtype", 1, 0, 'Y'},    {"help", 0, 0, 'h'},
        {"prompt", 1, 0, 'P'},  {"prompts", 1, 0, 'Q'}, {0, 0, 0, 0}};
    const char *dir = NULL, *oracle_spec = NULL, *labeler_cmd = NULL, *plot = NULL, *conf = NULL,
               *prompt1 = NULL, *prompts_file = NULL;
    int tui = 0, json = 0, dev = -1, tf32 = 0;
    long npairs = 32, steps = 0, timeout = 300, threads = -1;
    uint64_t seed = 0;
    int c;
    optind = 1;
    int dtype = -1; /* -1: no --dtype, the config's engine.dtype */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 's': dir = optarg; break;
        case 'o': oracle_spec = optarg; break;
        case 'l': labeler_cmd = optarg; break;
        case 'u': tui = 1; break;
        case 'n': bad = cli_int("eval", "--pairs", optarg, 1, 1000000, &npairs); break;
        case 'S': bad = cli_u64("eval", "--seed", optarg, &seed); break;
        case 'j': json = 1; break;
        case 'p': plot = optarg; break;
        case 'c': conf = optarg; break;
        case 'k': bad = cli_int("eval", "--steps", optarg, 1, 1000, &steps); break;
        case 'T': bad = cli_int("eval", "--timeout", optarg, 1, 86400, &timeout); break;
        case 't': bad = cli_int("eval", "--threads", optarg, 1, 1024, &threads); break;
        case 'Y':
            if (cli_dtype("eval", optarg, &dtype)) return EXIT_USAGE;
            break;
        case 'D': bad = cli_device("eval", optarg, &dev); break;
        case 'F': tf32 = 1; break;
        case 'P': prompt1 = optarg; break;
        case 'Q': prompts_file = optarg; break;
        case 'h': fputs(eval_help, stdout); return 0;
        default: bad = 1; fputs(eval_help, stderr);
        }
        if (bad) return EXIT_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, "d3po eval: unexpected argument '%s'\n%s", argv[optind], eval_help);
        return EXIT_USAGE;
    }
    if (!dir) {
        fprintf(stderr, "d3po eval: --session DIR is required\n%s", eval_help);
        return EXIT_USAGE;
    }
    if (!!oracle_spec + !!labeler_cmd + tui != 1) {
        fprintf(stderr, "d3po eval: give exactly one judge: --oracle NAME, --labeler CMD or --tui\n");
        return EXIT_USAGE;
    }
    char terr[D3_ERRLEN];
    if (tui && evaltui_available(terr)) {
        fprintf(stderr, "d3po eval: %s\n", terr);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    d3_config cfg;
    if (config_load(&cfg, conf, err)) {
        fprintf(stderr, "d3po eval: %s\n", err);
        return EXIT_FAIL;
    }
    ddim_opts so = config_ddim_opts(&cfg);
    if (steps) so.steps = (int)steps;
    if (threads < 0) threads = cfg.engine.threads;
    if (threads > 0) ops_set_threads((int)threads);
    if (dtype >= 0) cfg.engine.dtype = dtype;
    const d3_backend *be = cli_backend("eval", dev, tf32, &cfg, NULL, 0);
    if (!be) return EXIT_FAIL;

    d3_session s;
    if (session_open_readonly(dir, &s, err)) {
        fprintf(stderr, "d3po eval: %s\n", err);
        return EXIT_FAIL;
    }
    for (int i = 0; i < s.nwarn; i++) fprintf(stderr, "d3po eval: warning: %s\n", s.warn[i]);
    so.cfg = (float)config_cfg(&cfg, s.family == SESSION_FAMILY_SD);
    int rc = EXIT_FAIL, have_base = 0, have_tuned = 0, have_dm = 0, nowned = 0;
    d3_model base, tuned;
    d3_dmodel dm;
    eval_src src = {.npairs = npairs, .seed = seed, .so = so, .chunk0 = -1};
    char **owned = NULL;
    d3_oracle *orc = NULL;
    d3_labeler *lab = NULL;
    d3_tape *tp = NULL;
    uint8_t *rb = NULL, *rt = NULL;
    uint8_t *tui_rgb = NULL; /* --tui: [npairs][2][D] as shown (A, B) */
    int *tui_side = NULL, *tui_choice = NULL;
    int *cls = NULL;
    char tmp[4200] = "";
    char bp[4096];
    if (s.family == SESSION_FAMILY_SD) {
        /* the adapters of the latest round on the session's model; the base
         * is the same model with them off */
        if (session_sd_load(&s, be, session_sd_ignore_hash_env(), &dm, NULL, err)) goto fail;
        have_dm = 1;
        src.dm = &dm;
        src.W = dm.img_w;
        src.H = dm.img_h;
        src.cond = malloc(dm.cond_floats * sizeof(float));
        src.uncond = malloc(dm.cond_floats * sizeof(float));
        src.x = malloc(dm.D * sizeof(float));
        if (!src.cond || !src.uncond || !src.x) { d3_errf(err, "out of memory"); goto fail; }
        if (dm_condition(&dm, "", src.uncond, err) ||
            sd_prompts(&s, prompt1, prompts_file, npairs, seed, &src.prompt, &owned, &nowned, err))
            goto fail;
        goto judge;
    }
    if (model_load(&base, session_base_path(&s, bp, sizeof bp), NULL, err)) goto fail;
    have_base = 1;
    if (session_load_policy(&s, &tuned, NULL, err)) goto fail;
    have_tuned = 1;
    if (base.L.numel != tuned.L.numel || base.L.arch.size != tuned.L.arch.size ||
        base.nclasses != tuned.nclasses) {
        d3_errf(err, "%s: the base model and round %d differ in architecture", dir, s.round);
        goto fail;
    }
    /* prompts: --prompt, --prompts FILE (weights repeat a prompt), else the
     * prompts the session labeled, else its prompt set, else the config's
     * session.prompts, else every class; names of this model's classes */
    int nprom = 0;
    int *prom = NULL;
    if (eval_prompts(&s, &tuned, &cfg, prompt1, prompts_file, &prom, &nprom, err)) goto fail;
    cls = malloc(npairs * sizeof(int));
    for (long i = 0; i < npairs; i++) cls[i] = prom[(i + seed % nprom) % nprom];
    free(prom);
    src.base = &base;
    src.tuned = &tuned;
    src.cls = cls;
    src.W = src.H = tuned.L.arch.size;
    src.xb = malloc(CHUNK * 3 * (size_t)src.W * src.H * sizeof(float));
    src.xt = malloc(CHUNK * 3 * (size_t)src.W * src.H * sizeof(float));
    if (!src.xb || !src.xt) { d3_errf(err, "out of memory"); goto fail; }
judge:

    if (oracle_spec && !(orc = oracle_new(oracle_spec, seed, err))) {
        fprintf(stderr, "d3po eval: --oracle: %s\n", err);
        rc = EXIT_USAGE;
        goto out;
    }
    if (labeler_cmd) {
        const char *td = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/d3po-eval.XXXXXX", td && *td ? td : "/tmp");
        if (!mkdtemp(tmp)) {
            d3_errf(err, "%s: mkdtemp failed", tmp);
            tmp[0] = 0;
            goto fail;
        }
        if (!(lab = labeler_start(labeler_cmd, (int)timeout * 1000, err))) goto fail;
    }

    int W = src.W, H = src.H;
    size_t D = 3 * (size_t)W * H; /* bytes of one image */
    rb = malloc(D);
    rt = malloc(D);
    if (tui) {
        tui_rgb = malloc((size_t)npairs * 2 * D);
        tui_side = malloc(npairs * sizeof(int));
        tui_choice = malloc(npairs * sizeof(int));
        if (!tui_rgb || !tui_side || !tui_choice) { d3_errf(err, "out of memory"); goto fail; }
    }
    src.tp = tp = tape_new(be);
    if (!tp || !rb || !rt) { d3_errf(err, "out of memory"); goto fail; }
    d3_rng side;
    rng_init(&side, seed, EVAL_SIDE_STREAM);
    eval_result r = {0};
    double sum_b = 0, sum_t = 0;
    int verbose = isatty(STDERR_FILENO);
    if (tui) fprintf(stderr, "d3po eval: sampling %ld pairs from both models before the screen opens\n",
                     npairs);
    for (long i = 0; i < npairs; i++) {
        {
            if (verbose && i % CHUNK == 0)
                fprintf(stderr, "\rd3po eval: sampling pairs %ld-%ld of %ld ", i + 1,
                        i + CHUNK < npairs ? i + CHUNK : npairs, npairs);
            if (src_pair(&src, i, rb, rt, err)) goto fail;
            const char *prompt = src_prompt(&src, i);
            int tuned_is_a = (int)rng_below(&side, 2);
            const uint8_t *a = tuned_is_a ? rt : rb, *b = tuned_is_a ? rb : rt;
            int choice;
            if (tui) {
                memcpy(tui_rgb + (size_t)i * 2 * D, a, D);
                memcpy(tui_rgb + ((size_t)i * 2 + 1) * D, b, D);
                tui_side[i] = tuned_is_a;
                continue;
            }
            if (orc) {
                if (oracle_set_prompt(orc, prompt, W, err)) goto fail;
                sum_b += oracle_score(orc, rb, W, H);
                sum_t += oracle_score(orc, rt, W, H);
                choice = oracle_judge(orc, a, b, W, H);
            } else {
                char pa[4300], pb[4300];
                snprintf(pa, sizeof pa, "%s/%04ld-A.png", tmp, i);
                snprintf(pb, sizeof pb, "%s/%04ld-B.png", tmp, i);
                if (png_write_rgb(pa, a, W, H, err) || png_write_rgb(pb, b, W, H, err) ||
                    labeler_ask(lab, i, prompt, pa, pb, &choice, err))
                    goto fail;
            }
            if (choice == SESSION_TIE) r.ties++;
            else if (choice == SESSION_SKIP) r.skips++;
            else if ((choice == SESSION_A) == tuned_is_a) r.wins++;
            else r.losses++;
        }
    }
    if (verbose) fprintf(stderr, "\r%60s\r", "");
    if (tui) {
        evaltui_pair *tp_ = malloc(npairs * sizeof *tp_);
        if (!tp_) { d3_errf(err, "out of memory"); goto fail; }
        for (long i = 0; i < npairs; i++)
            tp_[i] = (evaltui_pair){.prompt = src_prompt(&src, i),
                                    .rgb = {tui_rgb + (size_t)i * 2 * D, tui_rgb + ((size_t)i * 2 + 1) * D}};
        int bad = evaltui_run(&cfg, NULL, tp_, (int)npairs, W, H, tui_side, tui_choice, err);
        free(tp_);
        if (bad) goto fail;
        evaltui_result er;
        evaltui_count(tui_choice, tui_side, (int)npairs, &er);
        r.wins = er.wins;
        r.losses = er.losses;
        r.ties = er.ties;
        r.skips = er.skips;
        long undecided = 0;
        for (long i = 0; i < npairs; i++) undecided += tui_choice[i] < 0;
        r.skips += undecided; /* left before judging them: counted as skipped */
    }
    long n = r.wins + r.losses + r.ties;
    r.rate = stats_win_rate(r.wins, r.losses, r.ties);
    stats_wilson(r.wins + 0.5 * r.ties, (double)n, STATS_Z95, &r.lo, &r.hi);
    r.score_base = orc ? sum_b / npairs : NAN;
    r.score_tuned = orc ? sum_t / npairs : NAN;
    const char *judge = orc ? oracle_spec : tui ? "person (--tui)" : labeler_cmd;

    metrics mt;
    metrics_read(dir, &mt);
    char spark[1024] = "";
    int nsc = 0;
    double *sc = malloc((mt.n + 1) * sizeof(double));
    for (int i = 0; i < mt.n; i++)
        if (isfinite(mt.score[i])) sc[nsc++] = mt.score[i];
    if (nsc) stats_sparkline(spark, sizeof spark, sc, nsc);
    free(sc);

    if (json) {
        json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:[f,f], "
                              "s:s, s:i}",
                              "session", dir, "round", s.round, "judge_kind",
                              orc ? "oracle" : "labeler", "judge", judge, "pairs",
                              (json_int_t)npairs, "seed", (json_int_t)seed, "wins",
                              (json_int_t)r.wins, "losses", (json_int_t)r.losses, "ties",
                              (json_int_t)r.ties, "skips", (json_int_t)r.skips, "win_rate", r.rate,
                              "ci95", r.lo, r.hi, "ties_count_as", "half", "steps", so.steps);
        if (orc) {
            json_object_set_new(o, "score_base", json_real(r.score_base));
            json_object_set_new(o, "score_tuned", json_real(r.score_tuned));
        }
        if (nsc) json_object_set_new(o, "metrics_sparkline", json_string(spark));
        if (plot) json_object_set_new(o, "plot", json_string(plot));
        json_object_set_new(o, "device", json_string(be->name));
        char *t = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
        json_decref(o);
        if (!t) { d3_errf(err, "cannot encode the JSON output"); metrics_free(&mt); goto fail; }
        printf("%s\n", t);
        free(t);
    } else {
        printf("eval:      %s, round %d vs base, %ld pairs, judge %s, seed %llu, %d steps, %s\n",
               dir, s.round, npairs, judge, (unsigned long long)seed, so.steps, be->name);
        printf("result:    %ld wins (round %d preferred), %ld losses, %ld ties, %ld skipped\n",
               r.wins, s.round, r.losses, r.ties, r.skips);
        printf("win rate:  %.3f (ties count half, skips left out; n = %ld)\n", r.rate, n);
        printf("95%% CI:    [%.3f, %.3f] (Wilson score interval)\n", r.lo, r.hi);
        if (orc)
            printf("score:     base %.4g, round %d %.4g (mean %s)\n", r.score_base, s.round,
                   r.score_tuned, oracle_spec);
        if (nsc) printf("metrics:   score per round %s (%d rounds, metrics.jsonl)\n", spark, nsc);
    }
    if (plot) {
        if (write_plot(plot, &mt, &r, s.round, judge, err)) { metrics_free(&mt); goto fail; }
        if (!json) printf("plot:      %s\n", plot);
    }
    metrics_free(&mt);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "d3po eval: %s\n", err);
    rc = EXIT_FAIL;
out:
    if (lab) labeler_stop(lab);
    if (tmp[0]) rmtree_flat(tmp, npairs);
    if (orc) oracle_free(orc);
    if (tp) tape_free(tp);
    free(src.xb); free(src.xt); free(rb); free(rt); free(cls);
    free(src.cond); free(src.uncond); free(src.x); free(src.prompt);
    for (int i = 0; i < nowned; i++) free(owned[i]);
    free(owned);
    if (have_dm) dm_close(&dm);
    free(tui_rgb); free(tui_side); free(tui_choice);
    if (have_base) model_free(&base);
    if (have_tuned) model_free(&tuned);
    session_close(&s);
    return rc;
}
