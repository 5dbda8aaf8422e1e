/* cmd_label.c - `d3po label` (and `d3po` alone): opens or creates a
 * session and runs the labeling screen (ui/label.c) on it. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "fsutil.h"
#include "label.h"
#include "rounds.h"
#include "session.h"
#include "session_sd.h"
#include "term.h"

#ifndef D3PO_DATADIR
#define D3PO_DATADIR "/usr/local/share/d3po"
#endif

static const char label_help[] =
    "usage: d3po [label] [--session DIR] [--model FILE] [--config FILE]\n"
    "                    [--graphics auto|sixel|blocks] [--round-size N]\n"
    "                    [--prompts FILE] [--objective d3po|diffusion-dpo]\n"
    "                    [--size WxH] [--steps N] [--lora FILE]\n"
    "                    [--device auto|cpu|cuda] [--tf32]\n"
    "                    [--dtype fp32|fp16|bf16] [--grid K]\n"
    "\n"
    "Opens the labeling screen: two images of one prompt from one starting\n"
    "noise; a key for the better one; D3PO trains between rounds.\n"
    "\n"
    "  --session DIR     session directory (default $XDG_DATA_HOME/d3po/sessions/default,\n"
    "                    i.e. ~/.local/share/d3po/sessions/default); created when new,\n"
    "                    resumed when it exists\n"
    "  --model FILE      model a new session starts from (default: the embedded\n"
    "                    default model, models/default.safetensors); a Stable\n"
    "                    Diffusion-family folder or single file makes an sd session\n"
    "                    that trains LoRA adapters (the config's lora group); the\n"
    "                    model is referred to by path and content hash, not copied\n"
    "  --size WxH        sd: image size of a new session (default: the model's)\n"
    "  --steps N         DDIM steps of the pairs (default: the config's sampler.steps)\n"
    "  --lora FILE       sd: a new session's adapters start as this LoRA file\n"
    "  --config FILE     settings (default $XDG_CONFIG_HOME/d3po/d3po.conf, else built-in)\n"
    "  --graphics MODE   auto (detect), sixel or blocks (half-block fallback)\n"
    "  --round-size N    labeled pairs per training round (default from the config: 8)\n"
    "  --prompts FILE    the session's prompt set from now on: one prompt a line,\n"
    "                    optionally PROMPT<TAB>WEIGHT (1..100); kept in the session\n"
    "                    (default: the set it has, else session.prompts, else every\n"
    "                    class of the model)\n"
    "  --objective OBJ   d3po or diffusion-dpo (default: the config's train.objective)\n"
    "  --device DEV      auto (a CUDA GPU when one works, else the CPU), cpu or cuda\n"
    "                    (default: the config's engine.device)\n"
    "  --tf32            allow TF32 tensor cores on the GPU (faster, ~1e-3 relative\n"
    "                    error; default: the config's engine.tf32)\n"
    "  --dtype T         fp32, fp16 or bf16: the frozen base's precision (default:\n"
    "                    the config's engine.dtype); the CPU computes in fp32 always\n"
    "  --grid K          open in grid mode: groups of K images (3..8) of one prompt\n"
    "                    from one starting noise, each marked good or bad; 0: pairs\n"
    "                    (default: the config's label.grid; the key G switches)\n";

static int default_session(char *buf, size_t n) {
    const char *x = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    if (x && x[0] == '/') snprintf(buf, n, "%s/d3po/sessions/default", x);
    else if (h && h[0]) snprintf(buf, n, "%s/.local/share/d3po/sessions/default", h);
    else return -1;
    return 0;
}

int cmd_label(int argc, char **argv) {
    static const struct option opts[] = {
        {"session", 1, 0, 's'}, {"model", 1, 0, 'm'}, {"config", 1, 0, 'c'},
        {"graphics", 1, 0, 'g'}, {"round-size", 1, 0, 'r'}, {"device", 1, 0, 'D'},
        {"tf32", 0, 0, 'F'}, {"dtype", 1, 0, 'Y'},     {"help", 0, 0, 'h'},       {"prompts", 1, 0, 'P'},
        {"objective", 1, 0, 'O'}, {"size", 1, 0, 'z'}, {"steps", 1, 0, 'k'},
        {"lora", 1, 0, 'L'}, {"grid", 1, 0, 'G'}, {0, 0, 0, 0}};
    const char *dir = NULL, *model = NULL, *conf = NULL, *graphics = NULL, *prompts = NULL,
               *lora_from = NULL;
    long round_size = 0, steps = 0, grid = -1;
    int width = 0, height = 0;
    char err[D3_ERRLEN], dbuf[4096];
    int c, dev = -1, tf32 = 0, objective = -1;
    optind = 1;
    int dtype = -1; /* -1: no --dtype, the config's engine.dtype */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': dir = optarg; break;
        case 'm': model = optarg; break;
        case 'c': conf = optarg; break;
        case 'g':
            if (term_override_check(optarg, err)) {
                fprintf(stderr, "d3po label: --graphics: %s\n", err);
                return EXIT_USAGE;
            }
            graphics = optarg;
            break;
        case 'r':
            if (cli_int("label", "--round-size", optarg, 1, 1000, &round_size)) return EXIT_USAGE;
            break;
        case 'Y':
            if (cli_dtype("label", optarg, &dtype)) return EXIT_USAGE;
            break;
        case 'D':
            if (cli_device("label", optarg, &dev)) return EXIT_USAGE;
            break;
        case 'F': tf32 = 1; break;
        case 'O':
            if (cli_objective("label", optarg, &objective)) return EXIT_USAGE;
            break;
        case 'P': prompts = optarg; break;
        case 'z':
            if (cli_size("label", optarg, &width, &height)) return EXIT_USAGE;
            break;
        case 'k':
            if (cli_int("label", "--steps", optarg, 1, D3_MAX_STEPS, &steps)) return EXIT_USAGE;
            break;
        case 'L': lora_from = optarg; break;
        case 'G':
            if (cli_int("label", "--grid", optarg, 0, 8, &grid)) return EXIT_USAGE;
            if (grid == 1 || grid == 2) {
                fprintf(stderr, "d3po label: --grid %ld: expected 0 (pairs) or 3 to 8 images\n", grid);
                return EXIT_USAGE;
            }
            break;
        case 'h': fputs(label_help, stdout); return 0;
        default: fputs(label_help, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "d3po label: unexpected argument '%s'\n%s", argv[optind], label_help);
        return EXIT_USAGE;
    }
    d3_config cfg;
    if (config_load(&cfg, conf, err)) {
        fprintf(stderr, "d3po label: %s\n", err);
        return EXIT_FAIL;
    }
    if (objective >= 0) cfg.train.objective = objective;
    if (steps) cfg.sampler.steps = (int)steps;
    if (grid >= 0) cfg.label.grid = (int)grid;
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "d3po label: the labeling screen needs a terminal (standard input and "
                        "output); for headless work see 'd3po --help'\n");
        return EXIT_FAIL;
    }
    if (label_term_check(err)) { /* before a session is made for nothing */
        fprintf(stderr, "d3po label: %s\n", err);
        return EXIT_FAIL;
    }
    char device[CLI_NOTE_LEN];
    if (dtype >= 0) cfg.engine.dtype = dtype;
    const d3_backend *be = cli_backend("label", dev, tf32, &cfg, device, sizeof device);
    if (!be) return EXIT_FAIL; /* before the session is created */
    if (!dir) {
        if (default_session(dbuf, sizeof dbuf)) {
            fprintf(stderr, "d3po label: neither XDG_DATA_HOME nor HOME is set; give --session DIR\n");
            return EXIT_USAGE;
        }
        dir = dbuf;
    }
    const char *given = model;
    char sj[96];
    snprintf(sj, sizeof sj, "{\"created_by\":\"d3po label\",\"objective\":\"%s\"}",
             config_objective_name(cfg.train.objective));
    int made = session_ensure_model(dir, &model, width, height, lora_from, &cfg, sj, err);
    if (made < 0) {
        fprintf(stderr, "d3po label: %s\n", err);
        return made == -2 ? EXIT_USAGE : EXIT_FAIL;
    }
    if (made) fprintf(stderr, "d3po: new session %s from %s\n", dir, model);
    else if (given)
        fprintf(stderr, "d3po: resuming %s (its own model; --model %s applies to new sessions)\n",
                dir, given);
    if (!made && (width || lora_from))
        fprintf(stderr, "%s: resuming %s: --size and --lora apply to new sessions (it keeps its own)\n",
                "d3po", dir);
    d3_session s;
    if (session_open(dir, &s, err)) {
        fprintf(stderr, "d3po label: %s\n", err);
        return EXIT_FAIL;
    }
    if (prompts && rounds_prompts_file(&s, prompts, err)) {
        fprintf(stderr, "d3po label: --prompts: %s\n", err);
        session_close(&s);
        return EXIT_USAGE;
    }
    /* start-up warnings go into the session's list, which the screen shows */
    if (strstr(device, "(cuda:")) session_warn(&s, "device %s", device);
    for (int i = 0; i < s.nwarn; i++) fprintf(stderr, "d3po: warning: %s\n", s.warn[i]);
    int rc = label_run(&s, &cfg, graphics, (int)round_size, be, device);
    session_close(&s);
    return rc;
}
