/* session_sd.h - the model side of a Stable Diffusion-family session
 * (layout in session.h): loading the pipeline the session refers to
 * (its content hash checked), the trainable LoRA adapters of the round in
 * use with their AdamW state and RNG, and writing round checkpoints that
 * hold only those. session.c stays free of the engine's model interface;
 * this file is where a session meets dmodel.h.
 *
 *   d3_dmodel dm; d3_state st;
 *   if (session_sd_load(&s, be, 0, &dm, &st, err)) ...;   // round s.round
 *   ... train (the engine) ...
 *   session_sd_save_round(&s, &dm, &st, s.round + 1, err);
 *   dm_lora_save(&dm, "out.safetensors", LORA_KOHYA, err);  // export
 *   dm_close(&dm); state_free(&st);
 */
#ifndef D3PO_SESSION_SD_H
#define D3PO_SESSION_SD_H

#include "config.h"
#include "dmodel.h"
#include "session.h"

/* Opens the session's model on backend be for its latent size, after
 * checking the model's content hash against session.json (a mismatch is a
 * one-line error naming both hashes, unless ignore_hash), attaches the
 * adapters (lora settings, or lora_start.safetensors) and loads round
 * s->round's adapters and, when st is not NULL, their training state
 * (st->has_opt, has_rng). Round 0 without a file: the fresh adapters,
 * written as rounds/0000.safetensors when the session is writable. On
 * failure dm is closed. 0/-1. */
int session_sd_load(d3_session *s, const d3_backend *be, int ignore_hash, d3_dmodel *dm,
                    d3_state *st, char *err);
/* The same for round `round` into an open dm with adapters attached (the
 * adapters' params and, st not NULL, the state). 0/-1. */
int session_sd_read_round(const d3_session *s, int round, d3_dmodel *dm, d3_state *st, char *err);
/* The session's adapters (layout from the model's UNet, read without its
 * weights; the hash checked) with their initial values. lora_free. 0/-1. */
int session_sd_adapters(const d3_session *s, int ignore_hash, lora_set *l, char *err);
/* Round `round`'s values into l (from session_sd_adapters) and, st not
 * NULL, its training state (state_free). Round 0 without a file leaves the
 * initial values. Errors name the file. 0/-1. */
int session_sd_read_adapters(const d3_session *s, int round, lora_set *l, d3_state *st, char *err);
/* Rollback: round `from`'s file, byte for byte, becomes round s->round + 1
 * (atomic copy, then LATEST). 0/-1. */
int session_sd_copy_round(d3_session *s, int from, char *err);
/* Writes round `round`'s adapters (round 0: those before training) as a
 * LoRA file in the naming chosen (lora_save), without loading the model's
 * weights (its layout only; hash checked as session_sd_load). 0/-1. */
int session_sd_export(const d3_session *s, int round, const char *out, lora_naming naming,
                      int ignore_hash, char *err);
/* Writes rounds/NNNN.safetensors (adapters + the parts of st whose has_*
 * flag is set; atomically, fsync'd) then LATEST. round must be greater
 * than s->round and at most SESSION_MAX_ROUND. 0/-1. */
int session_sd_save_round(d3_session *s, const d3_dmodel *dm, const d3_state *st, int round,
                          char *err);
/* Creates an sd session in dir (and its parent folders) unless dir
 * already is a session: the pipeline at model (opened to read its latent
 * channels, VAE factor and default size; weights not read), images of
 * width x height (0, 0: the model's own size; multiples of the VAE
 * factor), the adapters of the config's lora group, or starting as the
 * LoRA file lora_from (may be NULL). Returns 1 created, 0 existed, -1 with
 * err, -2 for a usage error (bad size). */
int session_sd_ensure(const char *dir, const char *model, int width, int height, int rank,
                      double alpha, int seed, const char *targets, const char *lora_from,
                      const char *settings_json, char *err);

/* The session of `d3po auto` and `d3po label`: creates it in dir unless
 * it exists, from *model (NULL: the default pixel model; set to the one
 * used): a Stable Diffusion-family model (sd_pipeline_probe) makes an sd
 * session (session_sd_ensure with the lora group of c), any other a pixel
 * session (session_ensure; width/height and lora_from are then a usage
 * error). Returns 1 created, 0 existed, -1 with err, -2 usage error. */
int session_ensure_model(const char *dir, const char **model, int width, int height,
                         const char *lora_from, const d3_config *c, const char *settings_json,
                         char *err);

/* `d3po sample --session DIR` on an sd session: copies the session's model
 * path into model[mn], writes the latest round's adapters as a LoRA file
 * (kohya naming; a new temp file in $TMPDIR or /tmp, its path into
 * lora[ln]: the caller unlinks it) and, when *W and *H are 0, sets them to
 * the session's image size. 1 done, 0 not an sd session (nothing done),
 * -1 with err. */
int session_sd_sample_prep(const char *dir, char *model, size_t mn, char *lora, size_t ln, int *W,
                           int *H, char *err);

/* 1 when ignore_hash is wanted: D3PO_IGNORE_MODEL_HASH=1 in the
 * environment (the override of a hash mismatch, for a model a person knows
 * is the same, e.g. re-saved in another dtype). */
int session_sd_ignore_hash_env(void);

#endif
