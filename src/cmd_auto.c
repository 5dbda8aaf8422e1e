/* cmd_auto.c - `d3po auto`: headless D3PO rounds on a session, judged by a
 * built-in oracle (oracle.h) or an external labeler program (labeler.h)
 * instead of a person. It follows the labeling screen's flow (ui/label.c)
 * with the judge in place of the keyboard: the engine thread samples
 * pairs, each pair goes to disk (session_add_pair) before it is judged,
 * each decision is journaled with fsync (session_label) before the next
 * one, and a round of D3PO runs on the engine thread, whose checkpoint
 * hook writes rounds/NNNN.safetensors. After every round (and once before
 * the first, as the baseline) fixed-seed samples of the new model are
 * scored by the oracle and one JSON line goes to DIR/metrics.jsonl, so a
 * run's learning curve can be plotted and compared. Ctrl-C stops the
 * engine (a round in training is dropped; journaled labels stay) and
 * exits 130; a labeler error exits 2 with its labels so far saved. A
 * resumed session labels its unlabeled pairs first, and trains on the
 * labeled pairs the current model sampled that no round has used yet. */
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
#include "image.h"
#include "labeler.h"
#include "oracle.h"
#include "session.h"

#ifndef D3PO_DATADIR
#define D3PO_DATADIR "/usr/local/share/d3po"
#endif

#define AUTO_MAX_ROUND_PAIRS 4096
#define AUTO_EXIT_INTERRUPTED 130 /* 128 + SIGINT; SIGTERM gives 143 */

static const char auto_help[] =
    "usage: d3po auto --session DIR (--oracle NAME | --labeler CMD) --rounds N\n"
    "                 [--pairs N] [--model FILE] [--config FILE] [--eval-seeds N] [--seed S]\n"
    "                 [--timeout SEC] [--objective d3po|diffusion-dpo]\n"
    "                 [--device auto|cpu|cuda] [--tf32]\n"
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
    "                    models/default.safetensors)\n"
    "  --config FILE     settings (default $XDG_CONFIG_HOME/d3po/d3po.conf, else built-in)\n"
    "  --seed S          which training pairs: their noise seeds and hence the\n"
    "                    labels (default 0); independent runs use different S\n"
    "  --eval-seeds N    evaluation images per score: seeds 0..N-1 over the prompts,\n"
    "                    the same every round (default 16; 0: no scores)\n"
    "  --timeout SEC     how long the labeler may take per answer (default 30)\n"
    "  --objective OBJ   d3po or diffusion-dpo (default: the config's train.objective)\n"
    "  --device DEV      auto (a CUDA GPU when one works, else the CPU), cpu or cuda\n"
    "                    (default: the config's engine.device)\n"
    "  --tf32            allow TF32 tensor cores on the GPU (faster, ~1e-3 relative\n"
    "                    error; default: the config's engine.tf32)\n"
    "\n"
    "Exit status: 0 done, 1 usage error, 2 any other error (a labeler error\n"
    "included: the labels it gave are kept), 130 interrupted (Ctrl-C).\n";

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

enum { REQ_TRAIN, REQ_EVAL };

typedef struct {
    int purpose, k; /* REQ_*, round index (0 = baseline) */
} request;

/* one round's progress; index k = rounds run in this invocation (0: baseline) */
typedef struct {
    int round;  /* the session round it trains (base_round + k) */
    int target; /* pairs to judge */
    int judged; /* pairs judged so far (any choice) */
    int nkeep;  /* pairs to train on (A, B, tie) */
    d3_pair_sample **keep;
    float (*h)[2];
    int trained; /* EV_TRAINED seen (k = 0: trivially) */
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
    d3_engine *e;
    d3_oracle *oracle; /* judges (no labeler) and scores; may be NULL with a labeler */
    d3_labeler *lab;
    const char *dir;
    int rounds, npairs, neval;
    int base_round;
    int nclasses;
    char **names; /* class names */
    int *cls;     /* prompt cycle: class ids */
    int ncls;
    uint64_t seq; /* training pairs requested, for seeds and prompts */
    uint64_t seed; /* --seed: which training pairs (0: the default set) */
    request *req; /* sample requests in engine order (FIFO) */
    size_t rq_head, rq_n, rq_cap;
    round_state *r;  /* [rounds + 1] */
    int next_metric; /* the round index whose metrics line comes next */
    double start;
    double last_metric; /* when the previous metrics line was written */
    long labels_run;    /* decisions made by this invocation */
    const char *device; /* the backend's name, for the metrics */
} autorun;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int save_round(void *ctx, const d3_model *policy, const d3_state *st, int round, char *err) {
    return session_save_round(ctx, policy, st, round, err);
}

static int push_req(autorun *a, int purpose, int k) {
    if (a->rq_n == a->rq_cap) {
        size_t nc = a->rq_cap ? 2 * a->rq_cap : 64;
        request *nr = malloc(nc * sizeof *nr);
        if (!nr) return -1;
        for (size_t i = 0; i < a->rq_n; i++) nr[i] = a->req[(a->rq_head + i) % a->rq_cap];
        free(a->req);
        a->req = nr;
        a->rq_cap = nc;
        a->rq_head = 0;
    }
    a->req[(a->rq_head + a->rq_n) % a->rq_cap] = (request){purpose, k};
    a->rq_n++;
    return 0;
}

static request pop_req(autorun *a) {
    request q = {-1, -1};
    if (!a->rq_n) return q;
    q = a->req[a->rq_head];
    a->rq_head = (a->rq_head + 1) % a->rq_cap;
    a->rq_n--;
    return q;
}

static int request_train(autorun *a, int k, int n) {
    for (int i = 0; i < n; i++) {
        if (push_req(a, REQ_TRAIN, k)) return -1;
        uint64_t q = a->seq++;
        /* seeds far above the evaluation seeds 0..N-1; --seed S moves
         * the whole sequence (golden-ratio stride: runs do not overlap) */
        engine_sample(a->e, a->cls[q % (uint64_t)a->ncls],
                      (1ULL << 32) + a->seed * 0x9E3779B97F4A7C15ULL + q * 1000003ULL + 17);
    }
    return 0;
}

static int request_eval(autorun *a, int k) {
    for (int i = 0; i < a->neval; i++) {
        if (push_req(a, REQ_EVAL, k)) return -1;
        engine_sample_drift(a->e, a->cls[i % a->ncls], (uint64_t)i);
    }
    return 0;
}

static uint8_t *pair_rgb(const d3_pair_sample *p, int i) {
    size_t D = 3 * (size_t)p->S * p->S;
    uint8_t *rgb = malloc(D);
    if (rgb) image_to_rgb(rgb, p->traj[i] + (size_t)p->K * D, p->S, p->S);
    return rgb;
}

/* Appends one line to DIR/metrics.jsonl (single write, fsync). */
static int write_metrics(autorun *a, int k, char *err) {
    round_state *r = &a->r[k];
    session_stats st;
    session_info(a->s, &st);
    json_t *o = json_object();
    json_object_set_new(o, "round", json_integer(r->round));
    json_object_set_new(o, "labels", json_integer(k ? r->judged : 0));
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
    json_object_set_new(o, "device", json_string(a->device));
    /* the training settings in force, so curves from different configs can
     * be told apart */
    json_t *tr = json_object();
    json_object_set_new(tr, "lr", json_real(a->c->d3po.lr));
    json_object_set_new(tr, "epochs", json_integer(a->c->d3po.epochs));
    json_object_set_new(tr, "reference",
                        json_string(a->c->d3po.reference == D3PO_REF_BASE ? "base" : "round"));
    json_object_set_new(tr, "kl", json_real(a->c->d3po.kl));
    json_object_set_new(tr, "beta", json_real(a->c->d3po.beta));
    json_object_set_new(tr, "clip_eps", json_real(a->c->d3po.clip_eps));
    json_object_set_new(tr, "objective", json_string(config_objective_name(a->c->train.objective)));
    json_object_set_new(tr, "all_labels", json_boolean(a->c->train.all_labels));
    if (a->c->train.objective == D3PO_OBJ_DPO) {
        json_object_set_new(tr, "dpo_beta", json_real(a->c->train.dpo_beta));
        json_object_set_new(tr, "dpo_draws", json_integer(a->c->train.dpo_draws));
    }
    json_object_set_new(o, "train", tr);
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(o);
    if (!line) return d3_errf(err, "metrics: cannot encode the JSON line");
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", a->dir);
    size_t len = strlen(line);
    line[len] = '\n'; /* json_dumps' NUL becomes the newline; written by length */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int rc = 0;
    if (fd < 0) {
        rc = d3_errf(err, "%s: %s", path, strerror(errno));
    } else {
        ssize_t w = write(fd, line, len + 1);
        if (w != (ssize_t)(len + 1) || fsync(fd))
            rc = d3_errf(err, "%s: write: %s", path, strerror(errno));
        close(fd);
    }
    free(line);
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
                    r->round, a->next_metric, a->rounds, r->judged, r->loss, score, dt);
        }
        a->next_metric++;
    }
    return 0;
}

/* Queues round k's training on the engine, then its evaluation and the
 * next round's pairs (the engine runs them in that order). */
static int end_round(autorun *a, int k, char *err) {
    round_state *r = &a->r[k];
    engine_train(a->e, (const d3_pair_sample *const *)r->keep, (const float(*)[2])r->h, r->nkeep,
                 r->round);
    for (int i = 0; i < r->nkeep; i++) engine_pair_free(r->keep[i]); /* the engine copied them */
    free(r->keep);
    free(r->h);
    r->keep = NULL;
    r->h = NULL;
    r->nkeep = 0;
    fprintf(stderr, "d3po auto: round %d: training on %d labels\n", r->round, r->judged);
    if (request_eval(a, k)) return d3_errf(err, "out of memory");
    if (k < a->rounds) {
        if (request_train(a, k + 1, a->r[k + 1].target)) return d3_errf(err, "out of memory");
    }
    return 0;
}

/* Judges one pair already on disk as id and journals the decision; keeps
 * the pair for round k's training unless skipped (p is then owned by the
 * round or freed). 0; -1 with err (labeler or journal error). */
static int judge_pair(autorun *a, int k, long id, d3_pair_sample *p, char *err) {
    round_state *r = &a->r[k];
    int choice;
    const char *prompt = p->cls >= 0 && p->cls < a->nclasses ? a->names[p->cls] : "?";
    if (a->lab) {
        char pa[4200], pb[4200];
        session_pair_path(a->s, id, "a", pa, sizeof pa);
        session_pair_path(a->s, id, "b", pb, sizeof pb);
        if (labeler_ask(a->lab, id, prompt, pa, pb, &choice, err)) {
            engine_pair_free(p);
            return -1;
        }
    } else {
        uint8_t *ra = pair_rgb(p, 0), *rb = pair_rgb(p, 1);
        if (!ra || !rb) {
            free(ra);
            free(rb);
            engine_pair_free(p);
            return d3_errf(err, "out of memory");
        }
        choice = oracle_set_prompt(a->oracle, prompt, p->S, err)
                     ? -1 : oracle_judge(a->oracle, ra, rb, p->S, p->S);
        free(ra);
        free(rb);
        if (choice < 0) {
            engine_pair_free(p);
            return -1;
        }
    }
    if (session_label(a->s, id, choice, (int)p->version, err)) {
        engine_pair_free(p);
        return -1;
    }
    a->labels_run++;
    r->judged++;
    fprintf(stderr, "d3po auto: round %d pair %d/%d (#%ld, %s): %s\n", r->round, r->judged,
            r->target, id, prompt, session_choice_name(choice));
    if (choice == SESSION_SKIP || r->nkeep >= AUTO_MAX_ROUND_PAIRS) {
        engine_pair_free(p);
        return 0;
    }
    r->keep[r->nkeep] = p;
    r->h[r->nkeep][0] = choice == SESSION_A ? 1 : choice == SESSION_B ? -1 : 0;
    r->h[r->nkeep][1] = -r->h[r->nkeep][0];
    r->nkeep++;
    return 0;
}

/* A freshly sampled pair of round k: to disk, judged, journaled. */
static int on_train_pair(autorun *a, int k, d3_pair_sample *p, char *err) {
    session_pair sp = {.K = p->K,
                       .S = p->S,
                       .cls = p->cls,
                       .version = (int)p->version,
                       .seed = p->seed,
                       .cfg = p->cfg,
                       .eta = p->eta,
                       .traj = {p->traj[0], p->traj[1]},
                       .logp = {p->logp[0], p->logp[1]}};
    uint8_t *ra = pair_rgb(p, 0), *rb = pair_rgb(p, 1);
    long id;
    int rc =
        ra && rb ? session_add_pair(a->s, &sp, ra, rb, &id, err) : d3_errf(err, "out of memory");
    free(ra);
    free(rb);
    if (rc) {
        engine_pair_free(p);
        return -1;
    }
    if (judge_pair(a, k, id, p, err)) return -1;
    if (a->r[k].judged == a->r[k].target) return end_round(a, k, err);
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
    if (p->cls >= 0 && p->cls < a->nclasses) oracle_set_prompt(a->oracle, a->names[p->cls], p->S, NULL);
    for (int i = 0; i < 2; i++) {
        uint8_t *rgb = pair_rgb(p, i);
        if (!rgb) return -1;
        double sc = oracle_score(a->oracle, rgb, p->S, p->S);
        free(rgb);
        if (isfinite(sc)) {
            a->r[k].esum += sc;
            a->r[k].en++;
        }
    }
    return 0;
}

/* Reads a stored pair back as an engine pair sample. */
static d3_pair_sample *load_sample(autorun *a, long id, char *err) {
    session_pair sp;
    if (session_load_pair(a->s, id, &sp, err)) return NULL;
    d3_pair_sample *p = calloc(1, sizeof *p);
    size_t n = (size_t)(sp.K + 1) * 3 * sp.S * sp.S;
    if (p) {
        *p = (d3_pair_sample){.cls = sp.cls,
                              .seed = sp.seed,
                              .version = sp.version,
                              .K = sp.K,
                              .S = sp.S,
                              .cfg = sp.cfg,
                              .eta = sp.eta};
        for (int i = 0; i < 2; i++) {
            p->traj[i] = malloc(n * sizeof(float));
            p->logp[i] = malloc(sp.K * sizeof(float));
            if (p->traj[i]) memcpy(p->traj[i], sp.traj[i], n * sizeof(float));
            if (p->logp[i]) memcpy(p->logp[i], sp.logp[i], sp.K * sizeof(float));
        }
    }
    session_pair_free(&sp);
    if (!p || !p->traj[0] || !p->traj[1] || !p->logp[0] || !p->logp[1]) {
        engine_pair_free(p);
        d3_errf(err, "out of memory");
        return NULL;
    }
    return p;
}

/* The model version that sampled pair id, from its file's header (offset
 * 28, see session.h), or -1. */
static int pair_version(const d3_session *s, long id) {
    char path[4200];
    unsigned char h[SESSION_TRAJ_HEADER];
    session_pair_path(s, id, "traj", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    if (n != (ssize_t)sizeof h || memcmp(h, "D3POTRJ1", 8)) return -1;
    return (int)((uint32_t)h[28] | (uint32_t)h[29] << 8 | (uint32_t)h[30] << 16 |
                 (uint32_t)h[31] << 24);
}

/* Resume: labeled pairs the current model sampled (not trained yet) join
 * round 1; unlabeled pairs are judged into it first. Returns how many
 * pairs round 1 got, or -1 with err. */
static int resume_pairs(autorun *a, char *err) {
    round_state *r = &a->r[1];
    int got = 0;
    for (long id = 0; id < a->s->next_pair && r->nkeep < AUTO_MAX_ROUND_PAIRS; id++) {
        if (id >= a->s->cap || !a->s->present[id]) continue;
        int ch = session_choice_of(a->s, id);
        if (ch != SESSION_A && ch != SESSION_B && ch != SESSION_TIE) continue;
        if (pair_version(a->s, id) != a->s->version) continue;
        d3_pair_sample *p = load_sample(a, id, err);
        if (!p) return -1;
        r->keep[r->nkeep] = p;
        r->h[r->nkeep][0] = ch == SESSION_A ? 1 : ch == SESSION_B ? -1 : 0;
        r->h[r->nkeep][1] = -r->h[r->nkeep][0];
        r->nkeep++;
        r->judged++;
        got++;
    }
    if (got) fprintf(stderr, "d3po auto: resuming with %d labeled pairs not trained yet\n", got);
    int queued = 0;
    for (long id = session_next_unlabeled(a->s, 0); id >= 0 && r->nkeep < AUTO_MAX_ROUND_PAIRS;
         id = session_next_unlabeled(a->s, id + 1)) {
        if (interrupted) return got;
        d3_pair_sample *p = load_sample(a, id, err);
        if (!p) return -1;
        if (r->target < r->judged + 1) r->target = r->judged + 1;
        if (judge_pair(a, 1, id, p, err)) return -1;
        got++;
        queued++;
    }
    if (queued) fprintf(stderr, "d3po auto: judged %d queued pairs from before\n", queued);
    return got;
}

/* Prompt cycle: session.prompts mapped to classes, else every class. */
static int prompt_cycle(autorun *a, const d3_model *m) {
    a->cls = malloc(sizeof *a->cls * (size_t)(m->nclasses + a->c->session.nprompts + 1));
    if (!a->cls) return -1;
    a->ncls = 0;
    for (int i = 0; i < a->c->session.nprompts; i++) {
        int id = model_find_class(m, a->c->session.prompts[i]);
        if (id < 0 || id >= m->nclasses)
            fprintf(stderr,
                    "d3po auto: warning: session.prompts: '%s' is not a class of the model; "
                    "ignored\n",
                    a->c->session.prompts[i]);
        else
            a->cls[a->ncls++] = id;
    }
    if (!a->ncls)
        for (int i = 0; i < m->nclasses; i++) a->cls[a->ncls++] = i;
    return 0;
}

static int fail(const char *err) {
    fprintf(stderr, "d3po auto: %s\n", err);
    return EXIT_FAIL;
}

/* The event loop: until every round's metrics line is written. */
static int run_loop(autorun *a, char *err) {
    while (a->next_metric <= a->rounds) {
        if (interrupted) return AUTO_EXIT_INTERRUPTED;
        struct pollfd pf = {engine_fd(a->e), POLLIN, 0};
        int pr = poll(&pf, 1, 250);
        if (pr < 0 && errno != EINTR) {
            d3_errf(err, "poll: %s", strerror(errno));
            return EXIT_FAIL;
        }
        d3_event ev;
        while (!interrupted && engine_poll(a->e, &ev)) {
            int rc = 0;
            switch (ev.kind) {
            case EV_PAIR: {
                request q = pop_req(a);
                d3_pair_sample *p = ev.pair;
                ev.pair = NULL;
                if (q.purpose == REQ_TRAIN) {
                    rc = on_train_pair(a, q.k, p, err);
                } else if (q.purpose == REQ_EVAL) {
                    if (on_eval_pair(a, q.k, p)) rc = d3_errf(err, "out of memory");
                    engine_pair_free(p);
                    if (!rc) rc = flush_metrics(a, err);
                } else {
                    engine_pair_free(p); /* not ours: cannot happen */
                }
                break;
            }
            case EV_TRAINED:
                for (int k = 1; k <= a->rounds; k++)
                    if (a->r[k].round == ev.round) {
                        a->r[k].trained = 1;
                        a->r[k].loss = ev.loss;
                    }
                rc = flush_metrics(a, err);
                break;
            case EV_ERROR:
                rc = d3_errf(err, "engine: %s", ev.msg);
                break;
            default:
                break;
            }
            engine_event_free(&ev);
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
                                         {"timeout", 1, 0, 't'},
                                         {"objective", 1, 0, 'O'},
                                         {"device", 1, 0, 'D'},
                                         {"tf32", 0, 0, 'F'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *oname = NULL, *lcmd = NULL, *model = NULL, *conf = NULL;
    long rounds = -1, npairs = 0, neval = 16;
    uint64_t seed = 0;
    double timeout = 30;
    int dev = -1, tf32 = 0, objective = -1;
    char err[D3_ERRLEN];
    int c;
    optind = 1;
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
        case 'S':
            if (cli_u64("auto", "--seed", optarg, &seed)) return EXIT_USAGE;
            break;
        case 't':
            if (cli_float("auto", "--timeout", optarg, 0.001, 86400, &timeout)) return EXIT_USAGE;
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
    if (objective >= 0) cfg.train.objective = objective;
    char device[CLI_NOTE_LEN];
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
    int made = session_ensure(dir, &model, sj, err);
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
    d3_session s;
    if (session_open(dir, &s, err)) {
        oracle_free(oracle);
        return fail(err);
    }
    for (int i = 0; i < s.nwarn; i++) fprintf(stderr, "d3po auto: warning: %s\n", s.warn[i]);
    if (s.round + rounds > SESSION_MAX_ROUND) {
        fprintf(stderr, "d3po auto: %s is at round %d; %ld more rounds pass the limit %d\n", dir,
                s.round, rounds, SESSION_MAX_ROUND);
        session_close(&s);
        oracle_free(oracle);
        return EXIT_USAGE;
    }

    autorun A = {0}, *a = &A;
    a->s = &s;
    a->c = &cfg;
    a->dir = dir;
    a->rounds = (int)rounds;
    a->npairs = (int)npairs;
    a->neval = (int)neval;
    a->seed = seed;
    a->oracle = oracle;
    a->base_round = s.round;
    a->device = be->name;
    a->start = a->last_metric = now_s();
    int rc = 0;

    d3_model *policy = malloc(sizeof *policy), *base = NULL;
    d3_state st;
    memset(&st, 0, sizeof st);
    if (!policy || session_load_policy(&s, policy, &st, err)) {
        free(policy);
        session_close(&s);
        oracle_free(oracle);
        return fail(policy ? err : "out of memory");
    }
    /* the base model: the "base" reference, and the drift measure of the
     * evaluation pairs (the engine computes both) */
    if (cfg.d3po.reference == D3PO_REF_BASE || a->neval) {
        char bp[4200];
        base = malloc(sizeof *base);
        if (!base || model_load(base, session_base_path(&s, bp, sizeof bp), NULL, err)) {
            free(base);
            base = NULL;
            if (cfg.d3po.reference == D3PO_REF_BASE) {
                model_free(policy);
                free(policy);
                state_free(&st);
                session_close(&s);
                oracle_free(oracle);
                return fail(err);
            }
            fprintf(stderr, "d3po auto: no drift measure: %s\n", err);
        }
    }
    a->nclasses = policy->nclasses;
    a->names = calloc((size_t)policy->nclasses, sizeof *a->names);
    a->r = calloc((size_t)rounds + 1, sizeof *a->r);
    if (!a->names || !a->r || prompt_cycle(a, policy)) {
        fprintf(stderr, "d3po auto: out of memory\n");
        exit(EXIT_FAIL);
    }
    for (int i = 0; i < policy->nclasses; i++) a->names[i] = strdup(policy->class_names[i]);
    int img_size = policy->L.arch.size; /* the judged images' side (realism) */
    for (int k = 0; k <= rounds; k++) {
        a->r[k].round = a->base_round + k;
        a->r[k].target = k ? a->npairs : 0;
        a->r[k].trained = k == 0;
        a->r[k].loss = NAN;
    }
    if (rounds >= 1) {
        a->r[1].keep = malloc(AUTO_MAX_ROUND_PAIRS * sizeof *a->r[1].keep);
        a->r[1].h = malloc(AUTO_MAX_ROUND_PAIRS * sizeof *a->r[1].h);
        if (!a->r[1].keep || !a->r[1].h) {
            fprintf(stderr, "d3po auto: out of memory\n");
            exit(EXIT_FAIL);
        }
    }
    for (int k = 2; k <= rounds; k++) {
        a->r[k].keep = malloc((size_t)a->npairs * sizeof *a->r[k].keep);
        a->r[k].h = malloc((size_t)a->npairs * sizeof *a->r[k].h);
        if (!a->r[k].keep || !a->r[k].h) {
            fprintf(stderr, "d3po auto: out of memory\n");
            exit(EXIT_FAIL);
        }
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

    engine_opts eo = engine_opts_default();
    eo.sample = config_ddim_opts(&cfg);
    eo.train = config_train_opts(&cfg);
    eo.lr = (float)cfg.d3po.lr;
    eo.weight_decay = (float)cfg.d3po.weight_decay;
    eo.threads = cfg.engine.threads;
    eo.be = be;
    eo.save_round = save_round;
    eo.save_ctx = &s;
    a->e = engine_start(policy, base, &st, s.version, &eo, err);
    if (!a->e) {
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
    for (int i = 0; oracle && i < a->ncls; i++)
        if (oracle_set_prompt(oracle, a->names[a->cls[i]], img_size, err)) {
            rc = fail(err);
            goto out;
        }
    fprintf(stderr, "d3po auto: %s at round %d; %ld rounds of %ld pairs, judge %s%s%s; objective "
                    "%s%s; device %s\n",
            dir, s.round, rounds, npairs, a->lab ? "labeler " : "oracle ",
            a->lab ? lcmd : oracle_name(oracle), a->neval ? "" : " (no evaluation scores)",
            config_objective_name(cfg.train.objective),
            cfg.train.all_labels ? " over every label so far" : "", device);

    if (a->next_metric == 0 && request_eval(a, 0)) {
        rc = fail("out of memory");
        goto out;
    }
    if (rounds >= 1) {
        long nr = cli_remember_labels(&s, a->e, &cfg, 1, err);
        if (nr < 0) {
            rc = fail(err);
            goto out;
        }
        if (nr) fprintf(stderr, "d3po auto: train.all_labels: %ld earlier labels join every round\n", nr);
    }
    if (rounds >= 1) {
        int got = resume_pairs(a, err);
        if (got < 0) {
            rc = interrupted ? AUTO_EXIT_INTERRUPTED : fail(err);
            goto out;
        }
        if (interrupted) {
            rc = AUTO_EXIT_INTERRUPTED;
            goto out;
        }
        if (a->r[1].judged >= a->r[1].target) {
            a->r[1].target = a->r[1].judged;
            if (end_round(a, 1, err)) {
                rc = fail(err);
                goto out;
            }
        } else if (request_train(a, 1, a->r[1].target - a->r[1].judged)) {
            rc = fail("out of memory");
            goto out;
        }
    }
    rc = run_loop(a, err);
    if (rc == EXIT_FAIL) fail(err);

out:
    if (interrupted) rc = 128 + interrupted;
    if (a->e) engine_stop(a->e); /* cancels a round in training; the last checkpoint stays */
    if (a->lab) labeler_stop(a->lab);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    {
        session_stats ss;
        session_info(&s, &ss);
        if (interrupted)
            fprintf(stderr,
                    "d3po auto: interrupted (%s); the round in training, if any, is "
                    "dropped\n",
                    interrupted == SIGINT ? "Ctrl-C" : "SIGTERM");
        fprintf(stderr, "d3po auto: %ld labels this run, %ld in %s (round %d, model v%d)\n",
                a->labels_run, ss.labeled, dir, ss.round, ss.version);
    }
    for (int k = 0; k <= rounds; k++) {
        for (int i = 0; i < a->r[k].nkeep; i++) engine_pair_free(a->r[k].keep[i]);
        free(a->r[k].keep);
        free(a->r[k].h);
    }
    free(a->r);
    for (int i = 0; i < a->nclasses; i++) free(a->names[i]);
    free(a->names);
    free(a->cls);
    free(a->req);
    state_free(&st);
    oracle_free(oracle);
    session_close(&s);
    return rc;
}
