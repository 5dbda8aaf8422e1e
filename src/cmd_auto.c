/* cmd_auto.c - `d3po auto`: headless D3PO rounds on a session, judged by a
 * built-in oracle (oracle.h) or an external labeler program (labeler.h)
 * instead of a person. The round flow is the labeling screen's, the same
 * code (src/rounds.c) with the judge in place of the keyboard: pairs go to
 * disk before they are judged, each decision is journaled with fsync
 * before the next one, a round trains when round_size labels wait, and its
 * checkpoint goes to rounds/NNNN.safetensors. auto's rounds are on-policy
 * (the next round's pairs come from the model the round trained). After every round (and once before
 * the first, as the baseline) fixed-seed samples of the new model are
 * scored by the oracle and one JSON line goes to DIR/metrics.jsonl, so a
 * run's learning curve can be plotted and compared. Ctrl-C stops the
 * engine (a round in training is dropped; journaled labels stay) and
 * exits 130; a labeler error exits 2 with its labels so far saved. A
 * resumed session labels its unlabeled pairs first, and its first round
 * trains every label no round has used yet. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "engine.h"
#include "fsutil.h"
#include "groups.h"
#include "image.h"
#include "labeler.h"
#include "oracle.h"
#include "rounds.h"
#include "session.h"
#include "session_sd.h"
#include "text.h"

#ifndef D3PO_DATADIR
#define D3PO_DATADIR "/usr/local/share/d3po"
#endif

#define AUTO_MAX_ROUND_PAIRS ROUNDS_MAX_PAIRS
#define AUTO_EXIT_INTERRUPTED 130 /* 128 + SIGINT; SIGTERM gives 143 */

static const char auto_help[] =
    "usage: d3po auto --session DIR (--oracle NAME | --labeler CMD) --rounds N\n"
    "                 [--pairs N] [--model FILE] [--config FILE] [--eval-seeds N] [--seed S]\n"
    "                 [--prompts FILE] [--timeout SEC] [--objective d3po|diffusion-dpo]\n"
    "                 [--size WxH] [--steps N] [--lora FILE] [--grid K]\n"
    "                 [--device auto|cpu|cuda] [--tf32]\n"
    "                 [--dtype fp32|fp16|bf16]\n"
    "\n"
    "Runs D3PO rounds without a person: the engine samples pairs, a judge picks\n"
    "the better image of each, every decision is journaled in the session, and\n"
    "a D3PO round trains on each round's labels. After every round (and once\n"
    "before the first) fixed-seed samples of the model are scored by the oracle\n"
    "and one JSON line is appended to DIR/metrics.jsonl:\n"
    "  {\"round\":R,\"labels\":N,\"loss\":X,\"oracle\":NAME,\"score\":S,\"time\":SEC,\n"
    "   \"drift_logratio\":L,...,\"device\":\"cpu\",\"train\":{\"lr\":X,...}}\n"
    "(score: the oracle's mean over both images of N fixed-seed evaluation pairs;\n"
    "time: seconds since the previous line; drift_logratio: how far the policy\n"
    "has moved from the base model, the mean per-step log-ratio log p_policy -\n"
    "log p_base on the policy's own evaluation samples; a resumed session adds\n"
    "lines)\n"
    "\n"
    "  --session DIR     session directory; created when new, resumed when it exists\n"
    "  --oracle NAME     jpeg-compressibility, jpeg-incompressibility, brightness,\n"
    "                    realism (the data set folder: $D3PO_DATASET, else ./emoji),\n"
    "                    or noisy:NAME[:T] (NAME answering like an inconsistent\n"
    "                    person, Bradley-Terry temperature T). With --labeler it\n"
    "                    only scores the evaluation samples\n"
    "  --labeler CMD     external judge, run once with sh -c CMD: it reads\n"
    "                    'ID<TAB>PROMPT<TAB>PNG_A<TAB>PNG_B' lines and answers each\n"
    "                    with a line 'A', 'B', 'tie' or 'skip' (see d3po(1))\n"
    "  --rounds N        training rounds to run now (0: the baseline score only)\n"
    "  --pairs N         pairs per round (default: the config's session.round_size)\n"
    "  --model FILE      model a new session starts from (default\n"
    "                    models/default.safetensors); a Stable Diffusion-family\n"
    "                    folder or single file makes an sd session: LoRA adapters\n"
    "                    (the config's lora group) are trained, the model is\n"
    "                    referred to by path and content hash, not copied\n"
    "  --size WxH        sd: image size of a new session (default: the model's)\n"
    "  --steps N         DDIM steps of the pairs (default: the config's sampler.steps)\n"
    "  --lora FILE       sd: a new session's adapters start as this LoRA file\n"
    "                    (kohya, diffusers or peft naming)\n"
    "  --config FILE     settings (default $XDG_CONFIG_HOME/d3po/d3po.conf, else built-in)\n"
    "  --prompts FILE    the session's prompt set from now on: one prompt a line,\n"
    "                    optionally PROMPT<TAB>WEIGHT (1..100); '#' lines are\n"
    "                    comments (default: the set the session has, else the\n"
    "                    config's session.prompts, else every class)\n"
    "  --seed S          which training pairs: their noise seeds and hence the\n"
    "                    labels (default 0); independent runs use different S\n"
    "  --eval-seeds N    evaluation images per score: seeds 0..N-1 over the prompts,\n"
    "                    the same every round (default 16; 0: no scores)\n"
    "  --timeout SEC     how long the labeler may take per answer (default 30)\n"
    "  --grid K          judge groups of K images (3..8) of one prompt instead of\n"
    "                    pairs, as grid mode's person does: the oracle marks the\n"
    "                    K/2 best good and the K/2 worst bad, and the group trains\n"
    "                    as every (good, bad) pair; --pairs counts those pairs\n"
    "                    (--oracle only)\n"
    "  --objective OBJ   d3po or diffusion-dpo (default: the config's train.objective)\n"
    "  --device DEV      auto (a CUDA GPU when one works, else the CPU), cpu or cuda\n"
    "                    (default: the config's engine.device)\n"
    "  --tf32            allow TF32 tensor cores on the GPU (faster, ~1e-3 relative\n"
    "                    error; default: the config's engine.tf32)\n"
    "  --dtype T         fp32, fp16 or bf16: the frozen base's precision (default:\n"
    "                    the config's engine.dtype); the CPU computes in fp32 always\n"
    "\n"
    "Exit status: 0 done, 1 usage error, 2 any other error (a labeler error\n"
    "included: the labels it gave are kept), 130 interrupted (Ctrl-C).\n";

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

/* one round's progress; index k = rounds run in this invocation (0: baseline) */
typedef struct {
    int round;   /* the session round it trains (base_round + k) */
    int labels;  /* labels it trained on */
    int trained; /* RV_TRAINED seen (k = 0: trivially) */
    double loss;
    double esum; /* sum of oracle scores of eval images */
    int en;      /* eval images scored */
    int egot;    /* eval pairs received */
    double dsum; /* sum of per-pair mean log-ratios policy/base (drift) */
    int dn;
} round_state;

typedef struct {
    d3_session *s;
    const d3_config *c;
    rounds *d;         /* the round driver: prompts, pairs, journal, rounds */
    d3_oracle *oracle; /* judges (no labeler) and scores; may be NULL with a labeler */
    d3_labeler *lab;
    const char *dir;
    int rounds, neval;
    int base_round;
    round_state *r;  /* [rounds + 1] */
    int next_metric; /* the round index whose metrics line comes next */
    double start;
    double last_metric; /* when the previous metrics line was written */
    long labels_run;    /* decisions made by this invocation */
    int grid;           /* --grid K: groups of K instead of pairs (0: pairs) */
    const char *device; /* the backend's name, for the metrics */
} autorun;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Evaluation pairs of round index k: seeds 0..N-1 over the prompts, the
 * same every round; they come from the model after round k (the driver's
 * engine runs jobs in order). */
static void request_eval(autorun *a, int k) {
    for (int i = 0; i < a->neval; i++)
        rounds_extra(a->d, i, (uint64_t)i, 1, (uint64_t)k << 32 | (uint64_t)i);
}

/* Image i of a pair as shown (malloc'd, [img_h][img_w][3]): the engine's
 * decoded image, or (a pixel pair without it) its x_0. *W, *H: its size. */
static uint8_t *pair_rgb(const d3_pair_sample *p, int i, int *W, int *H) {
    if (p->rgb[i]) {
        size_t n = (size_t)p->img_h * p->img_w * 3;
        uint8_t *rgb = malloc(n);
        if (rgb) memcpy(rgb, p->rgb[i], n);
        *W = p->img_w;
        *H = p->img_h;
        return rgb;
    }
    size_t D = 3 * (size_t)p->S * p->S;
    uint8_t *rgb = malloc(D);
    if (rgb) image_to_rgb(rgb, p->traj[i] + (size_t)p->K * D, p->S, p->S);
    *W = *H = p->S;
    return rgb;
}

/* Appends one line to DIR/metrics.jsonl (single write, fsync). */
static int write_metrics(autorun *a, int k, char *err) {
    round_state *r = &a->r[k];
    session_stats st;
    session_info(a->s, &st);
    json_t *o = json_object();
    json_object_set_new(o, "round", json_integer(r->round));
    json_object_set_new(o, "labels", json_integer(k ? r->labels : 0));
    json_object_set_new(o, "loss", k && isfinite(r->loss) ? json_real(r->loss) : json_null());
    json_object_set_new(o, "oracle", a->oracle ? json_string(oracle_name(a->oracle)) : json_null());
    json_object_set_new(o, "score", a->neval && r->en ? json_real(r->esum / r->en) : json_null());
    double t = now_s();
    json_object_set_new(o, "time", json_real(round(1000 * (t - a->last_metric)) / 1000));
    json_object_set_new(o, "elapsed", json_real(round(1000 * (t - a->start)) / 1000));
    json_object_set_new(o, "version", json_integer(r->round));
    json_object_set_new(o, "eval_images", json_integer(r->en));
    /* drift: mean over the evaluation images and steps of
     * log p_policy(x_prev | x_t) - log p_base(x_prev | x_t) on the policy's
     * own fresh samples (0 at round 0; grows as the policy leaves the base) */
    json_object_set_new(o, "drift_logratio", r->dn ? json_real(r->dsum / r->dn) : json_null());
    json_object_set_new(o, "total_labels", json_integer(st.labeled));
    if (a->grid) { /* grid mode: the groups' (good, bad) pairs are the labels */
        d3_groups *g = rounds_groups(a->d);
        long gp = 0;
        int pr[GROUPS_MAX_PAIRS][2];
        for (long id = 0; id < g->next; id++) gp += groups_pairs(groups_marks(g, id), pr);
        json_object_set_new(o, "grid", json_integer(a->grid));
        json_object_set_new(o, "total_group_pairs", json_integer(gp));
    }
    json_object_set_new(o, "device", json_string(a->device));
    json_object_set_new(o, "train", cli_train_json(a->c));
    ddim_opts so = rounds_sampling(a->d);
    json_object_set_new(o, "sampler", json_pack("{s:i, s:f, s:f}", "steps", so.steps, "eta",
                                                 (double)so.eta, "cfg", (double)so.cfg));
    int rc = cli_metrics_append(a->dir, o, err);
    json_decref(o);
    a->last_metric = t;
    return rc;
}

/* Writes the metrics lines of every round that is complete, in order. */
static int flush_metrics(autorun *a, char *err) {
    while (a->next_metric <= a->rounds) {
        round_state *r = &a->r[a->next_metric];
        if (!r->trained || r->egot < a->neval) break;
        double dt = now_s() - a->last_metric;
        if (a->next_metric == 0 && !a->neval) {
            a->next_metric++;
            continue;
        } /* no baseline */
        if (write_metrics(a, a->next_metric, err)) return -1;
        if (a->next_metric == 0) {
            fprintf(stderr, "d3po auto: baseline (round %d): %s %.4f over %d images\n", r->round,
                    oracle_name(a->oracle), r->esum / r->en, r->en);
        } else {
            char score[128] = "";
            if (a->neval && r->en)
                snprintf(score, sizeof score, ", %s %.4f", oracle_name(a->oracle), r->esum / r->en);
            fprintf(stderr, "d3po auto: round %d done (%d/%d): %d labels, loss %.4f%s, %.1f s\n",
                    r->round, a->next_metric, a->rounds, r->labels, r->loss, score, dt);
        }
        a->next_metric++;
    }
    return 0;
}

/* Judges pair id (on disk) and journals the decision through the driver,
 * which starts a round when one is due. p is freed. 0; -1 with err (labeler
 * or journal error). */
static int judge_pair(autorun *a, long id, d3_pair_sample *p, char *err) {
    int choice;
    char prompt[256];
    const char *ptext = rounds_pair_prompt(a->d, p);
    text_escape(prompt, sizeof prompt, ptext);
    if (a->lab) {
        char pa[4200], pb[4200];
        session_pair_path(a->s, id, "a", pa, sizeof pa);
        session_pair_path(a->s, id, "b", pb, sizeof pb);
        if (labeler_ask(a->lab, id, ptext, pa, pb, &choice, err)) {
            engine_pair_free(p);
            return -1;
        }
    } else {
        int W, H;
        uint8_t *ra = pair_rgb(p, 0, &W, &H), *rb = pair_rgb(p, 1, &W, &H);
        if (!ra || !rb) {
            free(ra);
            free(rb);
            engine_pair_free(p);
            return d3_errf(err, "out of memory");
        }
        choice = oracle_set_prompt(a->oracle, ptext, W, err) ? -1 : oracle_judge(a->oracle, ra, rb, W, H);
        free(ra);
        free(rb);
        if (choice < 0) {
            engine_pair_free(p);
            return -1;
        }
    }
    rounds_status before, after;
    rounds_get_status(a->d, &before);
    int rc = rounds_decide(a->d, id, choice, (int)p->version, err);
    engine_pair_free(p);
    if (rc) return -1;
    a->labels_run++;
    fprintf(stderr, "d3po auto: round %d pair %d/%d (#%ld, %s): %s\n", before.round,
            before.pending + (choice != SESSION_SKIP), before.round_size, id, prompt,
            session_choice_name(choice));
    rounds_get_status(a->d, &after);
    if (after.training && !before.training)
        fprintf(stderr, "d3po auto: round %d: training on %d labels\n", after.train_round,
                after.train_nlabels);
    return 0;
}

/* Groups with a decision (marks or skip). */
static long count_decided(const d3_groups *g) {
    long n = 0;
    for (long id = 0; id < g->next; id++) n += groups_marks(g, id)[0] != 0;
    return n;
}

/* Marks group id (on disk; its k images in rgb) with the oracle and
 * journals the marks through the driver ("skip" when the oracle ties
 * them all). 0; -1 with err. */
static int mark_group(autorun *a, long id, const char *ptext, uint8_t *const *rgb, int k, int W,
                      int H, int version, char *err) {
    char marks[GROUPS_MARKS_LEN], prompt[256];
    if (oracle_set_prompt(a->oracle, ptext, W, err)) return -1;
    int n = oracle_mark_group(a->oracle, (const uint8_t *const *)rgb, k, W, H, marks);
    if (n < 0) return d3_errf(err, "group %ld: the oracle %s cannot score its images", id, oracle_name(a->oracle));
    if (n == 0) strcpy(marks, "skip");
    rounds_status before, after;
    rounds_get_status(a->d, &before);
    if (rounds_decide_group(a->d, id, marks, k, version, err)) return -1;
    a->labels_run++;
    int pr[GROUPS_MAX_PAIRS][2];
    int np = groups_pairs(marks, pr);
    fprintf(stderr, "d3po auto: round %d group #%ld (%s): %s, %d pair%s\n", before.round, id,
            text_escape(prompt, sizeof prompt, ptext), marks, np, np == 1 ? "" : "s");
    rounds_get_status(a->d, &after);
    if (after.training && !before.training)
        fprintf(stderr, "d3po auto: round %d: training on %d labels\n", after.train_round,
                after.train_nlabels);
    return 0;
}

/* A group the engine sampled (RV_GROUP): its images as shown, marked. p
 * is freed. */
static int judge_group(autorun *a, long id, d3_pair_sample *p, char *err) {
    uint8_t *rgb[GROUPS_MAX_K] = {0};
    int W = 0, H = 0, k = p->n, rc = 0;
    for (int i = 0; i < k && !rc; i++)
        if (!(rgb[i] = pair_rgb(p, i, &W, &H))) rc = d3_errf(err, "out of memory");
    if (!rc) rc = mark_group(a, id, rounds_pair_prompt(a->d, p), rgb, k, W, H, (int)p->version, err);
    for (int i = 0; i < k; i++) free(rgb[i]);
    engine_pair_free(p);
    return rc;
}

/* Resume in grid mode: groups sampled before and never decided are
 * marked first, from their PNGs as they were shown. A group whose files
 * do not read is left undecided with a warning. */
static int resume_groups(autorun *a, char *err) {
    d3_groups *g = rounds_groups(a->d);
    int done = 0;
    for (long id = groups_next_undecided(g, 0); id >= 0 && !interrupted;
         id = groups_next_undecided(g, id + 1)) {
        session_traj t;
        char why[D3_ERRLEN], path[4200];
        if (groups_load(g, id, &t, why)) {
            fprintf(stderr, "d3po auto: warning: %s; group left undecided\n", why);
            continue;
        }
        why[0] = 0;
        uint8_t *rgb[GROUPS_MAX_K] = {0};
        int W = 0, H = 0, ok = t.N >= GROUPS_MIN_K && t.N <= GROUPS_MAX_K;
        for (int i = 0; ok && i < t.N; i++) {
            int w, h;
            ok = !png_read_rgb(groups_path(g, id, i, path, sizeof path), &rgb[i], &w, &h, why) &&
                 (i == 0 || (w == W && h == H));
            W = w;
            H = h;
        }
        int rc = 0;
        if (!ok)
            fprintf(stderr, "d3po auto: warning: group %ld: %s; left undecided\n", id,
                    why[0] ? why : "images of different sizes");
        else
            rc = mark_group(a, id, t.cls >= 0 ? rounds_prompt_of(a->d, t.cls) : t.prompt, rgb, t.N,
                            W, H, t.version, err);
        for (int i = 0; i < GROUPS_MAX_K; i++) free(rgb[i]);
        int n = t.N;
        session_traj_free(&t);
        if (rc) return -1;
        done += ok && n;
    }
    if (done) fprintf(stderr, "d3po auto: marked %d groups from before\n", done);
    return 0;
}

static int on_eval_pair(autorun *a, int k, const d3_pair_sample *p) {
    a->r[k].egot++;
    /* the base model's log-probs come from the engine thread (the one
     * that computes, on the GPU too); NULL when that failed */
    double d = engine_pair_drift(p);
    if (!isnan(d)) {
        a->r[k].dsum += d;
        a->r[k].dn++;
    }
    /* both images of the pair: 2N samples of the model for the price of N x_T
     * (the prompts were checked at the start: no error here but NAN) */
    for (int i = 0; i < 2; i++) {
        int W, H;
        uint8_t *rgb = pair_rgb(p, i, &W, &H);
        if (!rgb) return -1;
        oracle_set_prompt(a->oracle, rounds_pair_prompt(a->d, p), W, NULL);
        double sc = oracle_score(a->oracle, rgb, W, H);
        free(rgb);
        if (isfinite(sc)) {
            a->r[k].esum += sc;
            a->r[k].en++;
        }
    }
    return 0;
}

/* Resume: the labels no round trained on count toward the first round
 * (the driver finds them); unlabeled pairs from before are judged into it
 * first. 0, or -1 with err. */
static int resume_pairs(autorun *a, char *err) {
    session_stats st;
    session_info(a->s, &st);
    if (st.untrained)
        fprintf(stderr, "d3po auto: resuming with %ld labeled pairs not trained yet\n",
                st.untrained);
    int queued = 0;
    for (long id = session_next_unlabeled(a->s, 0); id >= 0; id = session_next_unlabeled(a->s, id + 1)) {
        if (interrupted) return 0;
        char why[D3_ERRLEN];
        d3_pair_sample *p = rounds_load_pair(a->s, id, why);
        if (!p) { /* a damaged pair file: left out, the rest goes on */
            fprintf(stderr, "d3po auto: warning: %s; pair skipped\n", why);
            continue;
        }
        if (judge_pair(a, id, p, err)) return -1;
        queued++;
    }
    if (queued) fprintf(stderr, "d3po auto: judged %d queued pairs from before\n", queued);
    if (a->grid && resume_groups(a, err)) return -1;
    return rounds_check_due(a->d, err) < 0 ? -1 : 0;
}

static int fail(const char *err) {
    fprintf(stderr, "d3po auto: %s\n", err);
    return EXIT_FAIL;
}

/* The event loop: until every round's metrics line is written. */
static int run_loop(autorun *a, char *err) {
    int nwarn = a->s->nwarn;
    while (a->next_metric <= a->rounds) {
        if (interrupted) return AUTO_EXIT_INTERRUPTED;
        if (a->grid) rounds_top_up_groups(a->d, a->grid, 0);
        else rounds_top_up(a->d, 0);
        struct pollfd pf = {rounds_fd(a->d), POLLIN, 0};
        int pr = poll(&pf, 1, 250);
        if (pr < 0 && errno != EINTR) {
            d3_errf(err, "poll: %s", strerror(errno));
            return EXIT_FAIL;
        }
        rounds_event ev;
        while (!interrupted && rounds_poll(a->d, &ev)) {
            int rc = 0;
            switch (ev.kind) {
            case RV_PAIR:
                rc = judge_pair(a, ev.id, ev.pair, err);
                ev.pair = NULL;
                break;
            case RV_GROUP:
                rc = judge_group(a, ev.id, ev.pair, err);
                ev.pair = NULL;
                break;
            case RV_EXTRA: {
                int k = (int)(ev.tag >> 32);
                if (k >= 0 && k <= a->rounds && on_eval_pair(a, k, ev.pair))
                    rc = d3_errf(err, "out of memory");
                if (!rc) rc = flush_metrics(a, err);
                break;
            }
            case RV_TRAINED: {
                int k = ev.round - a->base_round;
                if (k >= 1 && k <= a->rounds) {
                    a->r[k].trained = 1;
                    a->r[k].loss = ev.loss;
                    a->r[k].labels = ev.nlabels;
                    request_eval(a, k);
                }
                rc = flush_metrics(a, err);
                break;
            }
            case RV_ERROR:
                rc = d3_errf(err, "%s", ev.msg);
                break;
            default:
                break;
            }
            rounds_event_free(&ev);
            for (; nwarn < a->s->nwarn; nwarn++)
                fprintf(stderr, "d3po auto: warning: %s\n", a->s->warn[nwarn]);
            if (rc) {
                if (interrupted) return AUTO_EXIT_INTERRUPTED;
                return EXIT_FAIL;
            }
        }
    }
    return 0;
}

int cmd_auto(int argc, char **argv) {
    static const struct option opts[] = {{"session", 1, 0, 's'},
                                         {"oracle", 1, 0, 'o'},
                                         {"labeler", 1, 0, 'l'},
                                         {"rounds", 1, 0, 'r'},
                                         {"pairs", 1, 0, 'p'},
                                         {"model", 1, 0, 'm'},
                                         {"config", 1, 0, 'c'},
                                         {"eval-seeds", 1, 0, 'e'},
                                         {"seed", 1, 0, 'S'},
                                         {"prompts", 1, 0, 'P'},
                                         {"timeout", 1, 0, 't'},
                                         {"objective", 1, 0, 'O'},
                                         {"device", 1, 0, 'D'},
                                         {"tf32", 0, 0, 'F'}, {"dtype", 1, 0, 'Y'},
                                         {"size", 1, 0, 'z'}, {"steps", 1, 0, 'k'},
                                         {"lora", 1, 0, 'L'},
                                         {"grid", 1, 0, 'g'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *oname = NULL, *lcmd = NULL, *model = NULL, *conf = NULL,
               *prompts_file = NULL, *lora_from = NULL;
    long rounds = -1, npairs = 0, neval = 16, steps = 0, grid = 0;
    int width = 0, height = 0;
    uint64_t seed = 0;
    double timeout = 30;
    int dev = -1, tf32 = 0, objective = -1;
    char err[D3_ERRLEN];
    int c;
    optind = 1;
    int dtype = -1; /* -1: no --dtype, the config's engine.dtype */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            dir = optarg;
            break;
        case 'o':
            oname = optarg;
            break;
        case 'l':
            lcmd = optarg;
            break;
        case 'm':
            model = optarg;
            break;
        case 'c':
            conf = optarg;
            break;
        case 'r':
            if (cli_int("auto", "--rounds", optarg, 0, SESSION_MAX_ROUND, &rounds))
                return EXIT_USAGE;
            break;
        case 'p':
            if (cli_int("auto", "--pairs", optarg, 1, AUTO_MAX_ROUND_PAIRS, &npairs))
                return EXIT_USAGE;
            break;
        case 'e':
            if (cli_int("auto", "--eval-seeds", optarg, 0, 100000, &neval)) return EXIT_USAGE;
            break;
        case 'P':
            prompts_file = optarg;
            break;
        case 'S':
            if (cli_u64("auto", "--seed", optarg, &seed)) return EXIT_USAGE;
            break;
        case 't':
            if (cli_float("auto", "--timeout", optarg, 0.001, 86400, &timeout)) return EXIT_USAGE;
            break;
        case 'Y':
            if (cli_dtype("auto", optarg, &dtype)) return EXIT_USAGE;
            break;
        case 'D':
            if (cli_device("auto", optarg, &dev)) return EXIT_USAGE;
            break;
        case 'O':
            if (cli_objective("auto", optarg, &objective)) return EXIT_USAGE;
            break;
        case 'F':
            tf32 = 1;
            break;
        case 'z':
            if (cli_size("auto", optarg, &width, &height)) return EXIT_USAGE;
            break;
        case 'k':
            if (cli_int("auto", "--steps", optarg, 1, D3_MAX_STEPS, &steps)) return EXIT_USAGE;
            break;
        case 'L':
            lora_from = optarg;
            break;
        case 'g':
            if (cli_int("auto", "--grid", optarg, GROUPS_MIN_K, GROUPS_MAX_K, &grid)) return EXIT_USAGE;
            break;
        case 'h':
            fputs(auto_help, stdout);
            return 0;
        default:
            fputs(auto_help, stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "d3po auto: unexpected argument '%s'\n%s", argv[optind], auto_help);
        return EXIT_USAGE;
    }
    if (!dir || rounds < 0 || (!oname && !lcmd)) {
        fprintf(stderr, "d3po auto: %s\n%s",
                !dir         ? "--session DIR is required"
                : rounds < 0 ? "--rounds N is required"
                             : "give --oracle NAME or --labeler CMD",
                auto_help);
        return EXIT_USAGE;
    }
    if (grid && lcmd) {
        fprintf(stderr, "d3po auto: --grid needs --oracle: an external labeler answers pairs, "
                        "not groups\n");
        return EXIT_USAGE;
    }
    d3_oracle *oracle = NULL;
    if (oname && !(oracle = oracle_new(oname, 0, err))) {
        fprintf(stderr, "d3po auto: --oracle: %s\n", err);
        return EXIT_USAGE;
    }
    if (!oracle) neval = 0; /* a labeler alone gives no scores */
    d3_config cfg;
    if (config_load(&cfg, conf, err)) {
        oracle_free(oracle);
        return fail(err);
    }
    if (!npairs) npairs = cfg.session.round_size;
    if (steps) cfg.sampler.steps = (int)steps;
    if (objective >= 0) cfg.train.objective = objective;
    char device[CLI_NOTE_LEN];
    if (dtype >= 0) cfg.engine.dtype = dtype;
    const d3_backend *be = cli_backend("auto", dev, tf32, &cfg, device, sizeof device);
    if (!be) { /* before the session is created or touched */
        oracle_free(oracle);
        return EXIT_FAIL;
    }

    /* create or resume the session */
    json_t *set = json_pack("{s:s}", "created_by", "d3po auto");
    if (oname) json_object_set_new(set, "oracle", json_string(oname));
    if (lcmd) json_object_set_new(set, "labeler", json_string(lcmd));
    json_object_set_new(set, "objective", json_string(config_objective_name(cfg.train.objective)));
    char *sj = json_dumps(set, JSON_COMPACT);
    json_decref(set);
    const char *given = model;
    int made = session_ensure_model(dir, &model, width, height, lora_from, &cfg, sj, err);
    free(sj);
    if (made < 0) {
        oracle_free(oracle);
        if (made == -2) {
            fprintf(stderr, "d3po auto: %s\n", err);
            return EXIT_USAGE;
        }
        return fail(err);
    }
    if (made) fprintf(stderr, "d3po auto: new session %s from %s\n", dir, model);
    else if (given)
        fprintf(stderr,
                "d3po auto: resuming %s (its own model; --model %s applies to new sessions)\n", dir,
                given);
    if (!made && (width || lora_from))
        fprintf(stderr, "%s: resuming %s: --size and --lora apply to new sessions (it keeps its own)\n",
                "d3po auto", dir);
    d3_session s;
    if (session_open(dir, &s, err)) {
        oracle_free(oracle);
        return fail(err);
    }
    if (s.round + rounds > SESSION_MAX_ROUND) {
        fprintf(stderr, "d3po auto: %s is at round %d; %ld more rounds pass the limit %d\n", dir,
                s.round, rounds, SESSION_MAX_ROUND);
        session_close(&s);
        oracle_free(oracle);
        return EXIT_USAGE;
    }

    if (prompts_file && rounds_prompts_file(&s, prompts_file, err)) {
        fprintf(stderr, "d3po auto: --prompts: %s\n", err);
        session_close(&s);
        oracle_free(oracle);
        return EXIT_USAGE;
    }

    autorun A = {0}, *a = &A;
    a->s = &s;
    a->c = &cfg;
    a->dir = dir;
    a->rounds = (int)rounds;
    a->neval = (int)neval;
    a->oracle = oracle;
    a->grid = (int)grid;
    a->base_round = s.round;
    a->device = be->name;
    a->start = a->last_metric = now_s();
    int rc = 0;
    a->r = calloc((size_t)rounds + 1, sizeof *a->r);
    if (!a->r) {
        fprintf(stderr, "d3po auto: out of memory\n");
        exit(EXIT_FAIL);
    }
    for (int k = 0; k <= rounds; k++) {
        a->r[k].round = a->base_round + k;
        a->r[k].trained = k == 0;
        a->r[k].loss = NAN;
    }
    /* the baseline line only when the metrics file has none yet */
    {
        char mp[4200];
        snprintf(mp, sizeof mp, "%s/metrics.jsonl", dir);
        struct stat ms;
        if (!stat(mp, &ms) && ms.st_size > 0) a->next_metric = 1;
    }
    if (a->neval == 0 && a->next_metric == 0) a->next_metric = 1;

    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    /* on-policy rounds: each round's pairs come from the model the round
     * before it trained, so learning curves do not depend on timing */
    rounds_opts ro = rounds_opts_default(&cfg);
    ro.round_size = ro.queue_depth = (int)npairs;
    ro.overlap = 0;
    ro.on_policy = 1;
    ro.drift_every = 0;
    ro.seed = seed;
    ro.max_rounds = (int)rounds;
    int nwarn = 0;
    a->d = rounds_start(&s, &cfg, be, &ro, err);
    for (; nwarn < s.nwarn; nwarn++) fprintf(stderr, "d3po auto: warning: %s\n", s.warn[nwarn]);
    if (!a->d) {
        rc = fail(err);
        goto out;
    }
    if (lcmd && !(a->lab = labeler_start(lcmd, (int)ceil(timeout * 1000), err))) {
        rc = fail(err);
        goto out;
    }
    if (oracle && !a->lab) {
        /* the noisy oracle's coin flips continue, not repeat, on resume */
        oracle_free(oracle);
        a->oracle = oracle = oracle_new(oname, (uint64_t)s.next_pair, err);
    }
    /* realism judges by each prompt's training images: check every prompt now */
    if (oracle && s.family != SESSION_FAMILY_PIXEL && oracle_needs_prompt(oracle)) {
        rc = fail("--oracle: realism judges by the emoji data set's classes: not for Stable "
                  "Diffusion-family sessions");
        goto out;
    }
    for (int i = 0; oracle && s.family == SESSION_FAMILY_PIXEL && i < rounds_nprompts(a->d); i++)
        if (oracle_set_prompt(oracle, rounds_prompt(a->d, i), s.arch.size, err)) {
            rc = fail(err);
            goto out;
        }
    {
        char lc[512];
        fprintf(stderr,
                "d3po auto: %s at round %d; %ld rounds of %ld pairs%s, judge %s%s%s; %d prompts; "
                "objective %s%s; device %s\n",
                dir, s.round, rounds, npairs, grid ? " from groups" : "", a->lab ? "labeler " : "oracle ",
                a->lab ? text_escape(lc, sizeof lc, lcmd) : oracle_name(oracle),
                a->neval ? "" : " (no evaluation scores)", rounds_nprompts(a->d),
                config_objective_name(cfg.train.objective),
                cfg.train.all_labels ? " over every label so far" : "", device);
    }

    if (a->next_metric == 0) request_eval(a, 0);
    if (rounds >= 1 && resume_pairs(a, err)) {
        rc = interrupted ? AUTO_EXIT_INTERRUPTED : fail(err);
        goto out;
    }
    if (interrupted) {
        rc = AUTO_EXIT_INTERRUPTED;
        goto out;
    }
    rc = run_loop(a, err);
    if (rc == EXIT_FAIL) fail(err);

out:
    if (interrupted) rc = 128 + interrupted;
    long decided = a->grid && a->d ? count_decided(rounds_groups(a->d)) : 0;
    rounds_stop(a->d); /* cancels a round in training; its labels train in the next run */
    if (a->lab) labeler_stop(a->lab);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    {
        session_stats ss;
        session_info(&s, &ss);
        if (interrupted)
            fprintf(stderr,
                    "d3po auto: interrupted (%s); the round in training, if any, is "
                    "dropped (its labels train in the next run)\n",
                    interrupted == SIGINT ? "Ctrl-C" : "SIGTERM");
        if (a->grid)
            fprintf(stderr, "d3po auto: %ld groups marked this run, %ld decided in %s (round %d, model v%d)\n",
                    a->labels_run, decided, dir, ss.round, ss.version);
        else
            fprintf(stderr, "d3po auto: %ld labels this run, %ld in %s (round %d, model v%d)\n",
                    a->labels_run, ss.labeled, dir, ss.round, ss.version);
    }
    free(a->r);
    oracle_free(oracle);
    session_close(&s);
    return rc;
}
