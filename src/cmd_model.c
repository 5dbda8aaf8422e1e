/* cmd_model.c - `d3po init`, `d3po sample` and `d3po info`: creating,
 * sampling from and describing model files, and `d3po info --devices`:
 * the compute devices and the one --device auto picks. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cmd_sd.h"
#include "config.h"
#include "device.h"
#include "diffusion.h"
#include "dmodel.h"
#include "fsutil.h"
#include "grid.h"
#include "image.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "sd/pipeline.h"
#include "session.h"
#include "session_sd.h"
#include "text.h"

/* ---- init ---- */

static const char init_help[] =
    "usage: d3po init --out FILE [--arch SPEC] [--seed N] [--class-names FILE]\n"
    "\n"
    "Writes a randomly initialised model (safetensors) so that everything works\n"
    "before a trained model exists.\n"
    "\n"
    "  --out FILE          model file to write (atomically)\n"
    "  --arch SPEC         base=32,mult=1.2.2,res=2,attn=8,size=32,classes=100\n"
    "                      (keys may be omitted; attn=none disables attention)\n"
    "  --seed N            initialisation seed (default 0)\n"
    "  --class-names FILE  one class name (prompt) per line; their count sets classes\n";

static int read_names(const char *path, char ***names, int *n, char *err) {
    unsigned char *buf;
    size_t len;
    if (fs_read_all(path, &buf, &len, err)) return -1;
    int cap = 16, cnt = 0, line = 0;
    char **v = malloc(cap * sizeof *v);
    char *save = NULL;
    for (char *s = strtok_r((char *)buf, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) {
        line++;
        size_t l = strlen(s);
        if (l && s[l - 1] == '\r') s[--l] = 0;
        if (!l) continue;
        for (size_t i = 0; i < l; i++)
            if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
                free(buf);
                for (int k = 0; k < cnt; k++) free(v[k]);
                free(v);
                return d3_errf(err, "%s:%d: class name contains a control character", path, line);
            }
        if (cnt == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[cnt++] = strdup(s);
    }
    free(buf);
    if (!cnt) { free(v); return d3_errf(err, "%s: no class names in file", path); }
    *names = v;
    *n = cnt;
    return 0;
}

int cmd_init(int argc, char **argv) {
    static const struct option opts[] = {{"out", 1, 0, 'o'}, {"arch", 1, 0, 'a'},
                                         {"seed", 1, 0, 's'}, {"class-names", 1, 0, 'c'},
                                         {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL, *arch = NULL, *names_path = NULL;
    uint64_t seed = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'a': arch = optarg; break;
        case 'c': names_path = optarg; break;
        case 's': if (cli_u64("init", "--seed", optarg, &seed)) return EXIT_USAGE; break;
        case 'h': fputs(init_help, stdout); return 0;
        default: fputs(init_help, stderr); return EXIT_USAGE;
        }
    }
    if (!out || optind < argc) {
        fprintf(stderr, "d3po init: %s\n%s", !out ? "--out FILE is required" : "unexpected argument",
                init_help);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    if (arch && unet_arch_parse(&a, arch, err)) {
        fprintf(stderr, "d3po init: --arch: %s\n", err);
        return EXIT_USAGE;
    }
    char **names = NULL;
    int nnames = 0;
    if (names_path) {
        if (read_names(names_path, &names, &nnames, err)) {
            fprintf(stderr, "d3po init: %s\n", err);
            return EXIT_FAIL;
        }
        if (arch && strstr(arch, "classes=") && nnames != a.classes) {
            fprintf(stderr, "d3po init: --arch says classes=%d but %s has %d names\n", a.classes,
                    names_path, nnames);
            return EXIT_USAGE;
        }
        a.classes = nnames;
    }
    d3_model m;
    int rc = 0;
    if (model_init(&m, &a, (const char *const *)names, seed, err) ||
        model_save(&m, out, NULL, err)) {
        fprintf(stderr, "d3po init: %s\n", err);
        rc = EXIT_FAIL;
    } else {
        char s[256];
        unet_arch_format(&a, s, sizeof s);
        printf("wrote %s: %s, %zu parameters\n", out, s, m.L.numel);
    }
    if (!rc) model_free(&m);
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(names);
    return rc;
}

/* ---- sample ---- */

static const char sample_help[] =
    "usage: d3po sample (--model FILE | --session DIR) --prompt NAME --seed N --count N --out DIR\n"
    "                   [--steps N] [--eta X] [--cfg X] [--threads N] [--config FILE]\n"
    "                   [--device auto|cpu|cuda] [--tf32]\n"
    "                   [--dtype fp32|fp16|bf16]\n"
    "       d3po sample --grid (--model FILE | --session DIR) --out FILE.png [--classes LIST] ...\n"
    "       d3po sample --model SD_DIR_OR_FILE --prompt TEXT --out DIR [--negative TEXT]\n"
    "                   [--size WxH] [--latents FILE] [--tokenizer DIR] [--seed N] [--count N]\n"
    "                   [--steps N] [--eta X] [--cfg X] [--threads N] [--device ...]\n"
    "\n"
    "Samples COUNT images of class NAME with DDIM and writes\n"
    "DIR/<prompt>-<seed>-<i>.png. The same arguments give byte-identical PNGs.\n"
    "With --grid, writes one PNG with a row of COUNT (default 8) samples per\n"
    "class and the class name under each row.\n"
    "\n"
    "  --model FILE   model (safetensors written by d3po)\n"
    "  --session DIR  sample from a session's latest checkpoint instead (the\n"
    "                 round named by DIR/LATEST; the session is opened read-only;\n"
    "                 a Stable Diffusion-family session: its model with that\n"
    "                 round's LoRA adapters, at the session's image size)\n"
    "  --prompt NAME  class name, or its number (an unknown one lists the classes)\n"
    "  --seed N       seed of the starting noise and the step noise (default 0)\n"
    "  --count N      number of images (default 1)\n"
    "  --out DIR      output directory (created)\n"
    "  --steps N      DDIM steps (default 20)\n"
    "  --eta X        DDIM eta, 0 deterministic .. 1 (default 1.0)\n"
    "  --cfg X        classifier-free guidance scale (default: the config's\n"
    "                 sampler.cfg; not set there: 2.0 on the default (pixel)\n"
    "                 model, 5.0 on Stable Diffusion models)\n"
    "  --threads N    CPU threads (default: the config's engine.threads, all cores)\n"
    "  --config FILE  settings: the engine group (device, threads, tf32) applies\n"
    "                 (default $XDG_CONFIG_HOME/d3po/d3po.conf, else built-in)\n"
    "  --device DEV   auto (a CUDA GPU when one works, else the CPU), cpu or cuda\n"
    "                 (default: the config's engine.device)\n"
    "  --tf32         allow TF32 tensor cores on the GPU (faster, ~1e-3 relative\n"
    "                 error; default: the config's engine.tf32)\n"
    "  --dtype T      fp32, fp16 or bf16: the frozen base's precision (default:\n"
    "                 the config's engine.dtype); the CPU computes in fp32 always\n"
    "  --grid         write a labeled grid to --out FILE.png\n"
    "  --classes LIST comma-separated class names or numbers for --grid\n"
    "                 (default: 16 classes spread over the model's)\n"
    "\n"
    "Stable Diffusion-family models (a diffusers pipeline folder, or a single-file\n"
    "SD 1.x checkpoint): --prompt is free text, sampled with latent DDIM from the\n"
    "model's scheduler config and decoded by its VAE; --cfg > 1 guides with the\n"
    "negative prompt (default \"\"), as diffusers does.\n"
    "  --negative TEXT  the unconditional prompt of guidance (default \"\")\n"
    "  --size WxH     image size in pixels (default: the model's; multiples of the\n"
    "                 VAE factor times the UNet's downsampling)\n"
    "  --latents FILE a safetensors file with one tensor [1,C,h,w] or [C,h,w]: x_T\n"
    "                 of every image (to compare with diffusers given the same latents)\n"
    "  --tokenizer DIR  CLIP's vocab.json + merges.txt for a single-file checkpoint\n"
    "                 (default: a tokenizer/ folder beside the file)\n"
    "  --lora FILE[:SCALE]  LoRA adapters on the UNet (kohya, diffusers or peft\n"
    "                 naming) at SCALE (default 1); repeatable, up to 8\n";

static void safe_name(char *dst, size_t n, const char *s) {
    size_t j = 0;
    for (; *s && j + 1 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        dst[j++] = (ch == '/' || ch == ' ' || ch < 0x20 || ch == 0x7f) ? '_' : (char)ch;
    }
    dst[j] = 0;
}

/* Image i of a grid or of `sample --count`: x_T from stream 2i, step noise
 * from stream 2i+1 of the seed. */
static void image_noise(float *x, d3_rng *step_rng, uint64_t seed, uint64_t i, size_t D) {
    d3_rng r;
    rng_init(&r, seed, 2 * i);
    rng_normal(&r, x, D);
    rng_init(step_rng, seed, 2 * i + 1);
}

static int sample_grid(const d3_model *m, const char *mpath, const char *out, const char *list,
                       int count, uint64_t seed, const ddim_opts *o, const d3_backend *be) {
    int ids[256], n = 0;
    char err[D3_ERRLEN];
    if (list) {
        char buf[8192];
        snprintf(buf, sizeof buf, "%s", list);
        char *save = NULL;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int c = model_find_class(m, t);
            if (c < 0) {
                char e1[256], e2[1024];
                fprintf(stderr, "d3po sample: --classes: %s has no class '%s' (see d3po info %s)\n",
                        text_escape(e2, sizeof e2, mpath), text_escape(e1, sizeof e1, t), e2);
                return EXIT_USAGE;
            }
            if (n == 256) { fprintf(stderr, "d3po sample: --classes: at most 256\n"); return EXIT_USAGE; }
            ids[n++] = c;
        }
    } else {
        n = m->nclasses < 16 ? m->nclasses : 16;
        for (int i = 0; i < n; i++) ids[i] = (int)((long)i * m->nclasses / n);
    }
    int S = m->L.arch.size;
    size_t D = 3 * (size_t)S * S;
    float *imgs = malloc((size_t)n * count * D * sizeof(float));
    d3_rng *rngs = malloc(count * sizeof(d3_rng));
    int *cls = malloc(count * sizeof(int));
    const char **labels = malloc(n * sizeof(char *));
    d3_tape *tp = tape_new(be);
    int rc = 0;
    for (int r = 0; r < n && !rc; r++) {
        float *row = imgs + (size_t)r * count * D;
        for (int i = 0; i < count; i++) {
            image_noise(row + i * D, &rngs[i], seed, (uint64_t)r * count + i, D);
            cls[i] = ids[r];
        }
        labels[r] = m->class_names[ids[r]];
        if (ddim_sample(m, tp, o, count, cls, row, rngs, NULL, NULL, err)) {
            fprintf(stderr, "d3po sample: %s\n", err);
            rc = EXIT_FAIL;
        }
    }
    if (!rc && grid_write_png(out, imgs, n, count, S, S < 64 ? 2 : 1, labels, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        rc = EXIT_FAIL;
    }
    if (!rc) printf("%s\n", out);
    tape_free(tp);
    free(imgs); free(rngs); free(cls); free(labels);
    return rc;
}

/* --size WxH in pixels (8..8192 each) into *w, *h; 0, or -1 after
 * printing "d3po CMD: --size 'x': ...". */
static int parse_size(const char *cmd, const char *arg, int *w, int *h) {
    char *e1, *e2;
    long W = strtol(arg, &e1, 10), H = *e1 == 'x' ? strtol(e1 + 1, &e2, 10) : 0;
    if (*e1 != 'x' || *e2 || W < 8 || H < 8 || W > 8192 || H > 8192) {
        fprintf(stderr, "d3po %s: --size '%s': expected WxH in pixels, 8..8192\n", cmd, st_show(arg).s);
        return -1;
    }
    *w = (int)W;
    *h = (int)H;
    return 0;
}

int cmd_sample(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"prompt", 1, 0, 'p'}, {"seed", 1, 0, 's'}, {"count", 1, 0, 'n'},
        {"out", 1, 0, 'o'},   {"steps", 1, 0, 'k'},  {"eta", 1, 0, 'e'},  {"cfg", 1, 0, 'g'},
        {"threads", 1, 0, 't'}, {"grid", 0, 0, 'G'}, {"classes", 1, 0, 'C'},
        {"session", 1, 0, 'S'}, {"config", 1, 0, 'c'}, {"device", 1, 0, 'D'},
        {"tf32", 0, 0, 'F'}, {"dtype", 1, 0, 'Y'},    {"help", 0, 0, 'h'},   {"negative", 1, 0, 'N'},
        {"size", 1, 0, 'Z'},    {"latents", 1, 0, 'L'}, {"tokenizer", 1, 0, 'T'},
        {"lora", 1, 0, 'R'},    {0, 0, 0, 0}};
    const char *loras[SD_MAX_LORAS];
    int nlora = 0;
    const char *session = NULL, *conf = NULL, *negative = NULL, *latents = NULL, *tokenizer = NULL;
    int width = 0, height = 0;
    const char *model = NULL, *prompt = NULL, *out = NULL, *classes = NULL;
    int grid = 0, count_set = 0, dev = -1, tf32 = 0;
    uint64_t seed = 0;
    long count = 1, steps = 20, threads = 0;
    double eta = 1.0, cfg = 5.0;
    int c, cfg_given = 0;
    optind = 1;
    int dtype = -1; /* -1: no --dtype, the config's engine.dtype */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': model = optarg; break;
        case 'S': session = optarg; break;
        case 'p': prompt = optarg; break;
        case 'o': out = optarg; break;
        case 's': bad = cli_u64("sample", "--seed", optarg, &seed); break;
        case 'n': bad = cli_int("sample", "--count", optarg, 1, 100000, &count); count_set = 1; break;
        case 'G': grid = 1; break;
        case 'C': classes = optarg; break;
        case 'k': bad = cli_int("sample", "--steps", optarg, 1, 1000, &steps); break;
        case 't': bad = cli_int("sample", "--threads", optarg, 1, 1024, &threads); break;
        case 'e': bad = cli_float("sample", "--eta", optarg, 0, 1, &eta); break;
        case 'g': bad = cli_float("sample", "--cfg", optarg, -100, 100, &cfg); cfg_given = 1; break;
        case 'c': conf = optarg; break;
        case 'Y':
            if (cli_dtype("sample", optarg, &dtype)) return EXIT_USAGE;
            break;
        case 'D': bad = cli_device("sample", optarg, &dev); break;
        case 'F': tf32 = 1; break;
        case 'N': negative = optarg; break;
        case 'L': latents = optarg; break;
        case 'T': tokenizer = optarg; break;
        case 'R':
            if (nlora == SD_MAX_LORAS) {
                fprintf(stderr, "d3po sample: at most %d --lora\n", SD_MAX_LORAS);
                bad = 1;
            } else {
                loras[nlora++] = optarg;
            }
            break;
        case 'Z':
            bad |= parse_size("sample", optarg, &width, &height);
            break;
        case 'h': fputs(sample_help, stdout); return 0;
        default: bad = 1; fputs(sample_help, stderr);
        }
        if (bad) return EXIT_USAGE;
    }
    if (model && session) {
        fprintf(stderr, "d3po sample: give --model FILE or --session DIR, not both\n");
        return EXIT_USAGE;
    }
    if ((!model && !session) || (!prompt && !grid) || !out || optind < argc) {
        fprintf(stderr, "d3po sample: %s\n%s",
                optind < argc ? "unexpected argument"
                              : grid ? "--model (or --session) and --out are required"
                                     : "--model (or --session), --prompt and --out are required",
                sample_help);
        return EXIT_USAGE;
    }
    /* an sd session: its model with the latest round's adapters as a LoRA
     * file (session_sd_sample_prep), then the sd path */
    char sess_model[4096], sess_lora[4200] = "", perr[D3_ERRLEN];
    if (session && !grid) {
        if (nlora >= SD_MAX_LORAS) {
            fprintf(stderr, "d3po sample: at most %d --lora files with --session\n", SD_MAX_LORAS - 1);
            return EXIT_USAGE;
        }
        int r = session_sd_sample_prep(session, sess_model, sizeof sess_model, sess_lora,
                                       sizeof sess_lora, &width, &height, perr);
        if (r < 0) {
            fprintf(stderr, "d3po sample: %s\n", perr);
            return EXIT_FAIL;
        }
        if (r == 1) {
            model = sess_model;
            session = NULL;
            loras[nlora++] = sess_lora;
        }
    }
    int sd = model && sd_pipeline_probe(model);
    if (!sd && (negative || latents || tokenizer || width || nlora)) {
        fprintf(stderr, "d3po sample: --negative, --size, --latents, --tokenizer and --lora apply to Stable Diffusion models only\n");
        return EXIT_USAGE;
    }
    if (sd && grid) {
        fprintf(stderr, "d3po sample: --grid is for the class-conditional models only\n");
        return EXIT_USAGE;
    }
    if (grid && !count_set) count = 8;
    if (eta == 0 && steps > 0) { /* eta 0 has sigma 0: fine for sampling, logp unused */ }
    char err[D3_ERRLEN];
    d3_config settings;
    if (config_load(&settings, conf, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        return EXIT_FAIL;
    }
    if (!threads) threads = settings.engine.threads;
    if (threads) ops_set_threads((int)threads);
    if (dtype >= 0) settings.engine.dtype = dtype;
    if (!cfg_given) cfg = config_cfg(&settings, sd);
    const d3_backend *be = cli_backend("sample", dev, tf32, &settings, NULL, 0);
    if (!be) return EXIT_FAIL; /* before anything is written */
    if (sd) {
        sd_sample_args sa = {.model = model, .prompt = prompt, .negative = negative, .out = out,
                             .latents = latents, .tokenizer = tokenizer, .width = width,
                             .height = height, .count = count, .steps = steps, .eta = eta,
                             .cfg = cfg, .seed = seed, .nlora = nlora};
        for (int i = 0; i < nlora; i++) sa.lora[i] = loras[i];
        int rc = sd_sample(&sa, be);
        if (sess_lora[0]) unlink(sess_lora);
        return rc;
    }
    d3_model m;
    char mpath[4096];
    if (session) {
        /* the session's latest checkpoint; model names it in messages */
        d3_session s;
        if (session_open_readonly(session, &s, err)) {
            fprintf(stderr, "d3po sample: %s\n", err);
            return EXIT_FAIL;
        }
        for (int i = 0; i < s.nwarn; i++) fprintf(stderr, "d3po sample: warning: %s\n", s.warn[i]);
        session_round_path(&s, s.round, mpath, sizeof mpath);
        int bad = session_load_policy(&s, &m, NULL, err);
        session_close(&s);
        if (bad) {
            fprintf(stderr, "d3po sample: %s\n", err);
            return EXIT_FAIL;
        }
        model = mpath;
    } else if (model_load(&m, model, NULL, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        return EXIT_FAIL;
    }
    if (grid) {
        ddim_opts go = {.steps = (int)steps, .eta = (float)eta, .cfg = (float)cfg};
        int rc = sample_grid(&m, model, out, classes, (int)count, seed, &go, be);
        model_free(&m);
        return rc;
    }
    int rc = 0;
    int cls = model_find_class(&m, prompt);
    if (cls < 0) {
        char e1[512], e2[1024];
        fprintf(stderr, "d3po sample: %s has no class '%s'; its %d classes are:\n",
                text_escape(e2, sizeof e2, model), text_escape(e1, sizeof e1, prompt), m.nclasses);
        for (int i = 0; i < m.nclasses; i++) {
            char n[512];
            fprintf(stderr, "  %3d  %s\n", i, text_escape(n, sizeof n, m.class_names[i]));
        }
        model_free(&m);
        return EXIT_USAGE;
    }
    ddim_opts o = {.steps = (int)steps, .eta = (float)eta, .cfg = (float)cfg};
    if (fs_mkdirs(out, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        model_free(&m);
        return EXIT_FAIL;
    }
    int S = m.L.arch.size;
    size_t D = 3 * (size_t)S * S;
    enum { CHUNK = 8 };
    float *x = malloc(CHUNK * D * sizeof(float));
    uint8_t *rgb = malloc((size_t)S * S * 3);
    d3_tape *tp = tape_new(be);
    char name[256];
    safe_name(name, sizeof name, m.class_names[cls]);
    for (long i0 = 0; i0 < count && !rc; i0 += CHUNK) {
        int n = count - i0 < CHUNK ? (int)(count - i0) : CHUNK;
        d3_rng rngs[CHUNK];
        int clsv[CHUNK];
        for (int j = 0; j < n; j++) {
            image_noise(x + j * D, &rngs[j], seed, (uint64_t)(i0 + j), D);
            clsv[j] = cls;
        }
        if (ddim_sample(&m, tp, &o, n, clsv, x, rngs, NULL, NULL, err)) {
            fprintf(stderr, "d3po sample: %s\n", err);
            rc = EXIT_FAIL;
            break;
        }
        for (int j = 0; j < n; j++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s-%llu-%ld.png", out, name, (unsigned long long)seed,
                     i0 + j);
            image_to_rgb(rgb, x + j * D, S, S);
            if (png_write_rgb(path, rgb, S, S, err)) {
                fprintf(stderr, "d3po sample: %s\n", err);
                rc = EXIT_FAIL;
                break;
            }
            char shown[8192];
            printf("%s\n", text_escape(shown, sizeof shown, path));
        }
    }
    tape_free(tp);
    free(x);
    free(rgb);
    model_free(&m);
    return rc;
}

/* ---- info ---- */

static const char info_help[] =
    "usage: d3po info FILE\n"
    "       d3po info SD_DIR_OR_FILE [--tokenizer DIR]\n"
    "       d3po info --devices\n"
    "       d3po info MODEL --train [--device auto|cpu|cuda] [--size WxH] [--steps N]\n"
    "                 [--config FILE]\n"
    "\n"
    "Prints a model file's architecture, parameter count, noise schedule,\n"
    "classes and metadata, and whether it holds training state.\n"
    "For a Stable Diffusion-family model (a diffusers pipeline folder or a\n"
    "single-file SD 1.x checkpoint) prints its family, image and latent\n"
    "sizes, the parameters and on-disk dtype of each part, the scheduler and\n"
    "the prediction type, after checking every file it reads.\n"
    "\n"
    "  --tokenizer DIR  CLIP's vocab.json + merges.txt for a single-file\n"
    "             checkpoint (default: a tokenizer/ folder beside the file)\n"
    "  --devices  list the compute devices instead: the CPU, each CUDA GPU (or\n"
    "             why there is none), the one --device auto uses, and why, and\n"
    "             the precision they compute in\n"
    "  --train    the expected peak memory and time per labeled pair of D3PO\n"
    "             (and Diffusion-DPO; LoRA on SD models) on this model and\n"
    "             device, from a\n"
    "             short calibration run of the training loop's parts at that\n"
    "             size: sampling steps, forward + backward, decode, AdamW\n"
    "  --device D, --size WxH, --steps N, --config FILE  with --train: the\n"
    "             device, image size (SD; default the model's), DDIM steps and\n"
    "             the config whose sampler, d3po.epochs and train settings\n"
    "             apply\n";

/* `info --devices`: device_describe()'s lines, then auto's choice. */
static int info_devices(void) {
    char buf[8192], why[D3_ERRLEN], err[D3_ERRLEN];
    device_describe(buf, sizeof buf);
    fputs(buf, stdout);
    if (buf[0] && buf[strlen(buf) - 1] != '\n') putchar('\n');
    const d3_backend *be = device_backend(D3_DEV_AUTO, 0, why, err);
    if (!be) printf("auto: none (%s)\n", err); /* auto always falls back: not expected */
    else if (why[0]) printf("auto: %s (%s)\n", be->name, why);
    else printf("auto: %s (the CUDA backend works: --device auto computes on the GPU)\n",
                be->name);
    printf("dtype: fp32 (the CPU computes in fp32 whatever --dtype or engine.dtype say; "
           "the CUDA backend holds weights in fp32 and refuses fp16 and bf16 until its half-precision path is built)\n");
    return 0;
}

/* `info --train`: the config's sampler and training settings, the
 * backend, then sd_info_train. */
static int info_train(const char *file, const char *tokenizer, const char *conf, int dev, int width,
                      int height, int steps) {
    char err[D3_ERRLEN], note[CLI_NOTE_LEN];
    d3_config cfg;
    if (config_load(&cfg, conf, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        return EXIT_FAIL;
    }
    if (cfg.engine.threads) ops_set_threads(cfg.engine.threads);
    const d3_backend *be = cli_backend("info", dev, 0, &cfg, note, sizeof note);
    if (!be) return EXIT_FAIL;
    sd_cost_args a = {.model = file, .tokenizer = tokenizer, .width = width, .height = height,
                      .steps = steps ? steps : cfg.sampler.steps, .cfg = config_cfg(&cfg, 1),
                      .epochs = cfg.d3po.epochs, .draws = cfg.train.dpo_draws,
                      .objective = cfg.train.objective, .device = note};
    if (sd_pipeline_probe(file)) return sd_info_train(&a, be);
    /* a pixel model: D3PO trains all its weights against a frozen copy */
    double base_mb = status_mb("VmRSS");
    d3_model m;
    if (model_load(&m, file, NULL, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        return EXIT_FAIL;
    }
    d3_dmodel dm;
    dm_open_pixel(&dm, &m, err);
    char what[200];
    snprintf(what, sizeof what, "all %zu weights of the UNet (AdamW on every weight), the reference "
             "a frozen copy", m.L.numel);
    int rc = info_train_report(&dm, &a, dm_count_backend(be), base_mb, what);
    dm_close(&dm);
    model_free(&m);
    return rc;
}

int cmd_info(int argc, char **argv) {
    const char *file = NULL, *tokenizer = NULL, *conf = NULL;
    int devices = 0, train = 0, dev = -1, width = 0, height = 0, trainopt = 0;
    long steps = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(info_help, stdout);
            return 0;
        }
        int val = !strcmp(argv[i], "--tokenizer") || !strcmp(argv[i], "--device") ||
                  !strcmp(argv[i], "--size") || !strcmp(argv[i], "--steps") ||
                  !strcmp(argv[i], "--config");
        if (val && i + 1 >= argc) {
            fprintf(stderr, "d3po info: %s needs a value\n%s", st_show(argv[i]).s, info_help);
            return EXIT_USAGE;
        }
        if (!strcmp(argv[i], "--devices")) {
            devices = 1;
        } else if (!strcmp(argv[i], "--train")) {
            train = 1;
        } else if (!strcmp(argv[i], "--device")) {
            if (cli_device("info", argv[++i], &dev)) return EXIT_USAGE;
            trainopt = 1;
        } else if (!strcmp(argv[i], "--size")) {
            if (parse_size("info", argv[++i], &width, &height)) return EXIT_USAGE;
            trainopt = 1;
        } else if (!strcmp(argv[i], "--steps")) {
            if (cli_int("info", "--steps", argv[++i], 1, D3_MAX_STEPS, &steps)) return EXIT_USAGE;
            trainopt = 1;
        } else if (!strcmp(argv[i], "--config")) {
            conf = argv[++i];
            trainopt = 1;
        } else if (!strcmp(argv[i], "--tokenizer")) {
            tokenizer = argv[++i];
        } else if (argv[i][0] == '-' || file) {
            fprintf(stderr, "d3po info: unexpected argument '%s'\n%s", argv[i], info_help);
            return EXIT_USAGE;
        } else {
            file = argv[i];
        }
    }
    if (devices && !file) return info_devices();
    if (!file) {
        fprintf(stderr, "d3po info: expected one model file (or --devices)\n%s", info_help);
        return EXIT_USAGE;
    }
    if (tokenizer && !sd_pipeline_probe(file)) {
        fprintf(stderr, "d3po info: --tokenizer applies to Stable Diffusion models only\n");
        return EXIT_USAGE;
    }
    if (trainopt && !train) {
        fprintf(stderr, "d3po info: --device, --size, --steps and --config go with --train\n");
        return EXIT_USAGE;
    }
    if (train && (width || height) && !sd_pipeline_probe(file)) {
        fprintf(stderr, "d3po info: --size: %s samples at its own size (--size is for Stable "
                        "Diffusion-family models)\n", st_show(file).s);
        return EXIT_USAGE;
    }
    if (train) return info_train(file, tokenizer, conf, dev, width, height, (int)steps);
    if (sd_pipeline_probe(file)) {
        int rc = sd_info(file, tokenizer);
        return rc || !devices ? rc : info_devices();
    }
    char err[D3_ERRLEN];
    d3_model m;
    d3_state st;
    if (model_load(&m, file, &st, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        return EXIT_FAIL;
    }
    char arch[256];
    unet_arch_format(&m.L.arch, arch, sizeof arch);
    char fshown[1024];
    printf("file:         %s\n", text_escape(fshown, sizeof fshown, file));
    printf("architecture: %s\n", arch);
    printf("parameters:   %zu (%d tensors, %.1f MB as float32)\n", m.L.numel, m.L.nparams,
           m.L.numel * 4.0 / 1e6);
    printf("schedule:     linear betas %g..%g over %d steps\n", m.sched.beta_start,
           m.sched.beta_end, m.sched.T);
    if (!st.has_opt && !st.has_ema) printf("training:     weights only\n");
    if (st.has_opt) printf("training:     AdamW state, step %ld, lr %g\n", st.opt.step, st.opt.lr);
    if (st.has_ema) printf("training:     EMA weights (decay %g)\n", st.ema_decay);
    if (st.has_rng)
        printf("training:     RNG seed %llu\n", (unsigned long long)st.rng.seed);
    state_free(&st);
    for (int i = 0; i < m.nmeta; i++) {
        char k[256], v[1024];
        printf("meta %s: %s\n", text_escape(k, sizeof k, m.meta_keys[i]),
               text_escape(v, sizeof v, m.meta_vals[i]));
    }
    printf("classes:      %d (+1 null class for guidance)\n", m.nclasses);
    for (int i = 0; i < m.nclasses; i++) {
        char n[512];
        printf("  %3d  %s\n", i, text_escape(n, sizeof n, m.class_names[i]));
    }
    model_free(&m);
    return devices ? info_devices() : 0;
}
