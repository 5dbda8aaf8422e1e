/* config.h - the d3po settings: one plain struct with every setting and
 * its built-in default, filled from a libconfig file (config/d3po.conf
 * documents each key; man page d3po.conf(5)).
 *
 * Lookup order (the first that applies wins, nothing is merged across files):
 *   1. the --config FILE given on the command line (must exist),
 *   2. $XDG_CONFIG_HOME/d3po/d3po.conf ($HOME/.config when XDG_CONFIG_HOME is
 *      unset, empty or not absolute), skipped silently when missing,
 *   3. the built-in defaults.
 * A file only needs the keys it changes; the rest keep their defaults.
 * Validation is strict, to catch typos: an unknown group or key, a wrong
 * type, a value out of range, an unknown enum value, a bad key name or a key
 * bound to two actions is an error naming file:line, the key and what was
 * expected ("d3po.conf:4: sampler.steps: expected an integer from 1 to 1000,
 * got a string").
 *
 *   d3_config c;
 *   char err[D3_ERRLEN];
 *   if (config_load(&c, opt_config, err)) { fprintf(stderr, "d3po: %s\n", err); return 2; }
 *   ddim_opts so = config_ddim_opts(&c);
 *   int act = config_key_action(&c, "Left");   // D3_ACT_LEFT
 *
 * The struct holds no pointers: copy it freely (to the engine thread, into
 * a session). */
#ifndef D3PO_CONFIG_H
#define D3PO_CONFIG_H
#include <stdio.h>

#include "d3po.h"
#include "err.h"

#define D3_CFG_PATH_LEN 4096   /* config_source() buffer */
#define D3_CFG_MAX_PROMPTS 256 /* session.prompts entries */
#define D3_CFG_PROMPT_LEN 64   /* bytes per prompt, with the NUL */
#define D3_CFG_KEYS_PER_ACTION 4
#define D3_CFG_TARGETS_LEN 256 /* lora.targets, with the NUL */
#define D3_CFG_KEYNAME_LEN 16 /* "Backspace", "PageDown", "F12", "q" ... */

/* preset: which D3PO values the d3po group starts from. */
typedef enum { D3_PRESET_DEFAULT = 0, D3_PRESET_PAPER = 1 } d3_preset;
typedef enum { D3_GRAPHICS_AUTO = 0, D3_GRAPHICS_SIXEL = 1, D3_GRAPHICS_BLOCKS = 2 } d3_graphics;
typedef enum { D3_DEVICE_AUTO = 0, D3_DEVICE_CPU = 1, D3_DEVICE_CUDA = 2 } d3_device;
/* engine.dtype, --dtype: the precision the frozen base is held in */
typedef enum { D3_DTYPE_FP32 = 0, D3_DTYPE_FP16 = 1, D3_DTYPE_BF16 = 2 } d3_dtype;

/* Actions of the labeling screen that keys are bound to (ui.keys). */
typedef enum {
    D3_ACT_LEFT,    /* the left image is better */
    D3_ACT_RIGHT,   /* the right image is better */
    D3_ACT_TIE,     /* equally good or bad: no gradient */
    D3_ACT_SKIP,    /* no decision, next pair */
    D3_ACT_UNDO,    /* cancel the newest decision */
    D3_ACT_ZOOM,    /* larger view of the pair */
    D3_ACT_HISTORY, /* past decisions and rounds */
    D3_ACT_TRAIN,   /* run a D3PO round now */
    D3_ACT_PROMPT,  /* choose the prompt (class) */
    D3_ACT_HELP,    /* key help */
    D3_ACT_QUIT,
    D3_ACT_STATS,   /* session statistics */
    D3_ACT_LOG,     /* start-up warnings and messages */
    D3_ACT_COUNT
} d3_action;

typedef struct {
    d3_preset preset; /* "default" */
    struct {
        int steps;  /* DDIM steps K: 20, 1..1000 */
        double eta; /* DDIM eta: 1.0, (0, 1] (sigma > 0 for log-probs) */
        double cfg; /* classifier-free guidance scale w, [0, 100]; see cfg_set */
        int cfg_set; /* 1: cfg came from a file; 0: the model family's default
                        (D3_CFG_PIXEL, D3_CFG_SD), which cfg holds for pixel */
    } sampler;
    struct {
        int round_size;  /* labeled pairs per training round: 8, 1..1000 */
        int queue_depth; /* pairs sampled ahead of the screen: 4, 1..64 */
        int nprompts;    /* 0: every class of the model */
        char prompts[D3_CFG_MAX_PROMPTS][D3_CFG_PROMPT_LEN]; /* class names */
    } session;
    struct {
        double beta;             /* 0.1, (0, 100] */
        double clip_eps;         /* ratio clamp eps: 0.1, (0, 1) */
        double lr;               /* AdamW learning rate: 1e-4 (paper 3e-5), (0, 1] */
        int epochs;              /* passes over the round's labels: 2 (paper 1), 1..100 */
        double weight_decay;     /* AdamW decoupled weight decay: 1e-4, [0, 1] */
        double max_grad_norm;    /* global-norm clip: 1.0, [0, 1000], 0 = off */
        d3po_ref_mode reference; /* "base" (D3PO_REF_BASE; paper "round") */
        double kl;               /* KL penalty weight to the reference: 0.3 (paper 0), [0, 1000] */
    } d3po;
    struct {
        d3po_objective objective; /* "d3po" (D3PO_OBJ_D3PO) or "diffusion-dpo" */
        double dpo_beta;          /* Diffusion-DPO beta (times T in the loss): 2.5, (0, 1000] */
        int dpo_draws;            /* (t, eps) draws per pair per pass: 16, 1..1024 */
        int all_labels;           /* each round trains on every label so far: false (0) */
    } train;
    struct {
        d3_graphics graphics; /* "auto" */
        int colors;           /* sixel palette size: 256, 2..256 */
        int nkeys[D3_ACT_COUNT];
        char keys[D3_ACT_COUNT][D3_CFG_KEYS_PER_ACTION][D3_CFG_KEYNAME_LEN]; /* canonical names */
    } ui;
    struct {
        d3_device device; /* "auto"; same values as d3_device_kind (device.h) */
        int threads;      /* CPU threads: 0 = all cores, 0..1024 */
        int tf32;         /* allow TF32 tensor cores on the GPU: false (0) */
        d3_dtype dtype;   /* precision of the frozen base: "fp32" (the CPU computes in fp32) */
    } engine;
    struct {
        int rank;      /* LoRA rank of new adapters (sd family): 4, 1..1024 */
        double alpha;  /* LoRA alpha: 0 = the rank (alpha/rank = 1), [0, 1e6] */
        int seed;      /* seed of the down matrices: 0, 0..2^31-1 */
        char targets[D3_CFG_TARGETS_LEN]; /* comma-separated module name ends:
                                             "to_q,to_k,to_v,to_out.0" */
    } lora;
    struct {
        int grid; /* the labeling screen opens in grid mode with groups of this
                     many images: 0 (pairs), or 3..8 */
    } label;
    char source[D3_CFG_PATH_LEN]; /* the file read, or "built-in defaults" */
} d3_config;

/* Fills c with the built-in defaults (every byte set, so two default
 * structs compare equal with memcmp). */
void config_defaults(d3_config *c);

/* Applies a preset to the d3po group: "default" gives the small-model
 * values (lr 1e-4, epochs 2, reference base, kl 0.3), "paper" the D3PO
 * paper's (lr 3e-5, epochs 1, reference round, kl 0); both keep beta 0.1,
 * clip_eps 0.1, weight_decay 1e-4, max_grad_norm 1.0. Sets c->preset. */
void config_apply_preset(d3_config *c, d3_preset p);

/* Defaults, then the first file of the lookup order (explicit_path if not
 * NULL or empty, else the XDG file if it exists). Returns 0, or -1 with a
 * one-line message in err (D3_ERRLEN bytes); on error *c holds the
 * built-in defaults. */
int config_load(d3_config *c, const char *explicit_path, char *err);

/* Reads one file over the settings already in c (no lookup): what
 * config_load does with the file it found. 0/-1 with err; on error c may
 * be partly updated. */
int config_load_file(d3_config *c, const char *path, char *err);

/* The XDG path config_load looks at ($XDG_CONFIG_HOME/d3po/d3po.conf or
 * $HOME/.config/d3po/d3po.conf) into buf; 0, or -1 when neither variable
 * gives a usable directory or buf is too small. */
int config_user_path(char *buf, size_t n);

/* The file the settings came from, or "built-in defaults". */
const char *config_source(const d3_config *c);

/* Prints the effective settings in libconfig syntax, every key, loadable
 * again with config_load (used by `d3po config show`). */
void config_dump(const d3_config *c, FILE *f);

/* "left", "right", ... "quit": the key of an action in ui.keys; NULL when
 * out of range. */
const char *config_action_name(int action);

/* The action a key is bound to (D3_ACT_*), or -1. key is a key name as in
 * the file ("t", "Left", "left", "F5"). */
int config_key_action(const d3_config *c, const char *key);

/* Canonical spelling of a key name into out (D3_CFG_KEYNAME_LEN): a single
 * printable ASCII character other than space as is, a named key (Left
 * Right Up Down Space Backspace Enter Tab Escape F1..F12 PageUp PageDown
 * Home End, any letter case) in that spelling. Returns 0, or -1 when the
 * name is not a key. */
int config_key_canonical(const char *name, char *out);

/* "d3po" or "diffusion-dpo". */
const char *config_objective_name(d3po_objective o);
/* "fp32", "fp16" or "bf16". */
const char *config_dtype_name(d3_dtype t);

/* Conversions for the engine. config_train_opts also carries the train
 * group (objective, Diffusion-DPO beta and draws, all_labels) and sets the
 * reference to the base model for the Diffusion-DPO objective. */
ddim_opts config_ddim_opts(const d3_config *c);
d3po_train_opts config_train_opts(const d3_config *c);

/* Guidance when sampler.cfg is not in the config file, by model family:
 * the default (pixel) model's chosen by the emoji classifier measure
 * (bench/results/2026-12-06-sampler-defaults.txt: CFG 2 gives the most
 * recognisable samples; 5 and above saturate them into noise), Stable
 * Diffusion's the value its sessions have used (diffusers' pipelines
 * default to 7.5). */
#define D3_CFG_PIXEL 2.0
#define D3_CFG_SD 5.0

/* sampler.cfg for a model family (sd: a Stable Diffusion-family model):
 * the file's value when it has one, else the family's default; and the
 * DDIM / training options with it. */
double config_cfg(const d3_config *c, int sd);
ddim_opts config_ddim_opts_family(const d3_config *c, int sd);
d3po_train_opts config_train_opts_family(const d3_config *c, int sd);
#endif
