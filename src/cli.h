/* cli.h - subcommands of the d3po program and shared option parsing
 * helpers. Each cmd_* returns the process exit status (0 ok, 1 usage,
 * 2 other error). */
#ifndef D3PO_CLI_H
#define D3PO_CLI_H
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"

#define EXIT_USAGE 1
#define EXIT_FAIL 2

int cmd_init(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_dataset(int argc, char **argv);
int cmd_session(int argc, char **argv);
int cmd_label(int argc, char **argv);
int cmd_auto(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_classifier(int argc, char **argv);
int cmd_eval_model(int argc, char **argv);


/* Strict number parsing for option values; print "d3po CMD: --opt: ..." and
 * return -1 on a bad value. */
int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);
int cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);
/* --size WxH in pixels, 8..8192 each. */
int cli_size(const char *cmd, const char *s, int *width, int *height);

/* --device and --tf32, for the commands that compute with a model (label,
 * auto, train, eval, sample):
 *
 *   int dev = -1, tf32 = 0;                  // -1: no --device, use the config
 *   case 'D': if (cli_device("train", optarg, &dev)) return EXIT_USAGE; break;
 *   case 'F': tf32 = 1; break;
 *   ... config_load(&cfg, ...) ...
 *   char note[CLI_NOTE_LEN];
 *   const d3_backend *be = cli_backend("train", dev, tf32, &cfg, note, sizeof note);
 *   if (!be) return EXIT_FAIL;               // before anything is written
 *   d3_tape *tp = tape_new(be);
 */
#define CLI_NOTE_LEN 600

/* "auto", "cpu" or "cuda" into *dev (a d3_device_kind); prints
 * "d3po CMD: --device 'x': expected auto, cpu or cuda" and returns -1 on
 * any other value. */
int cli_device(const char *cmd, const char *s, int *dev);

/* The backend to compute with: dev from --device (-1: the config's
 * engine.device), TF32 when tf32 or the config's engine.tf32. NULL after
 * printing "d3po CMD: cuda: ..." when CUDA was asked for and cannot be used
 * (the caller exits with EXIT_FAIL). note (n bytes, may be NULL) receives
 * the choice for a setup line: "cuda", "cuda, tf32", "cpu", or, when
 * auto fell back to the CPU, "cpu (cuda: no GPU)" with the reason; with
 * engine.dtype fp16 or bf16 on the CPU, "cpu, fp32 compute (engine.dtype
 * fp16 is for the GPU)". */
const d3_backend *cli_backend(const char *cmd, int dev, int tf32, const d3_config *c, char *note,
                              size_t n);
/* --dtype fp32|fp16|bf16 (sample, label, auto, eval, train) into *dt (a
 * d3_dtype); prints "d3po CMD: --dtype 'x': expected fp32, fp16 or bf16"
 * and returns -1 on any other value. Apply it over the config before
 * cli_backend: if (dt >= 0) cfg.engine.dtype = dt. cli_backend then
 * checks it: the CPU computes in fp32 whatever engine.dtype says (the note
 * says so); the CUDA backend holds everything in fp32 today, so fp16 or
 * bf16 with CUDA is refused with a one-line error (issue 16: the
 * half-precision path awaits a GPU to be tested on) instead of being
 * silently ignored. */
int cli_dtype(const char *cmd, const char *s, int *dt);

/* --objective d3po|diffusion-dpo (label, auto, train) into *obj (a
 * d3po_objective); prints "d3po CMD: --objective 'x': expected d3po or
 * diffusion-dpo" and returns -1 on any other value. Apply it over the
 * config after loading: if (obj >= 0) cfg.train.objective = obj. */
int cli_objective(const char *cmd, const char *s, int *obj);

/* DIR/metrics.jsonl, one JSON line per trained round (`auto`, `train`).
 * cli_train_json: the training settings in force (lr, epochs, reference,
 * kl, beta, clip_eps, objective, all_labels, Diffusion-DPO's beta and
 * draws), the "train" object of a line, so curves from different configs
 * can be told apart. cli_metrics_append: o as one compact line appended to
 * DIR/metrics.jsonl in a single write, fsync'd (o stays the caller's).
 * 0/-1 with err naming the file. */
struct json_t;
struct json_t *cli_train_json(const d3_config *c);
int cli_metrics_append(const char *dir, struct json_t *o, char *err);

#endif
